//! Document database backends for [`DocumentStore`](cloud_abstraction::DocumentStore).
//!
//! | backend | type | feature | URL |
//! |---|---|---|---|
//! | in-process | [`MemoryDocumentStore`] | `memory` | `mem://` |
//! | SQLite (sqlx) | [`SqliteDocumentStore`] | `sqlite` | `sqlite:///abs/path.db`, `sqlite://relative.db`, `sqlite::memory:` |
//! | PostgreSQL (sqlx, JSONB) | [`PostgresDocumentStore`] | `postgres` | `postgres://user@host/db`, `postgresql://…` |
//! | MariaDB / MySQL (sqlx, JSON) | [`MysqlDocumentStore`] | `mysql` | `mysql://user@host/db`, `mariadb://…` |
//! | Redis (Lua scripts; queries evaluated in the client) | [`RedisDocumentStore`] | `redis` | `redis://host:6379/0`, `rediss://…` |
//!
//! The three SQL stores are one generic store over a per-database dialect ([`sql`]).
//!
//! Every backend passes the conformance kit `cloud_abstraction::testkit::database` (suite and
//! model test). Shared rules, so that backends answer alike:
//! - collections and ids are checked with `cloud_abstraction::validate`, field paths with
//!   [`validate_field_path`](cloud_abstraction::database::validate_field_path);
//! - a serialized document over `max_document_size` (1 MiB), or one nesting more than
//!   [`MAX_DOCUMENT_DEPTH`](cloud_abstraction::validate::MAX_DOCUMENT_DEPTH) arrays and
//!   objects, is `InvalidArgument`;
//! - a query page holds at most `limit` documents
//!   ([`page_limit`](cloud_abstraction::database::page_limit): default 100, at most 1000; 0
//!   is `InvalidArgument`); cursors are keyset cursors
//!   ([`KeysetCursor`](cloud_abstraction::database::KeysetCursor)), so the paging contract of
//!   [`DocumentStore`](cloud_abstraction::DocumentStore) holds; a cursor the store did not
//!   issue is `InvalidArgument`;
//! - expired documents are absent for every read and every condition.

// One line per backend; each backend is one file (or folder) named after it.
#[cfg(feature = "memory")]
pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
pub mod sql;

#[cfg(feature = "redis")]
pub use self::redis::RedisDocumentStore;
#[cfg(feature = "memory")]
pub use memory::MemoryDocumentStore;
#[cfg(feature = "mysql")]
pub use sql::MysqlDocumentStore;
#[cfg(feature = "postgres")]
pub use sql::PostgresDocumentStore;
#[cfg(feature = "sqlite")]
pub use sql::SqliteDocumentStore;

/// Checks shared by the backends of this module.
// Each backend uses a different subset, and a build may include none of them.
#[allow(dead_code)]
pub(crate) mod common {
    use cloud_abstraction::database::{
        DatabaseCapabilities, FilterOp, PutDocumentOptions, Query, validate_field_path,
    };
    use cloud_abstraction::{Error, Result, validate};
    use serde_json::Value;
    use std::time::{Duration, SystemTime};

    /// Checks a document about to be written: its serialized size against the limit, and a
    /// TTL against the `ttl` capability.
    pub(crate) fn check_document(
        backend: &'static str,
        caps: &DatabaseCapabilities,
        value: &Value,
        options: &PutDocumentOptions,
    ) -> Result<()> {
        if options.ttl.is_some() && !caps.ttl {
            return Err(Error::unsupported(backend, "a document TTL"));
        }
        // Before measuring: serializing a very deep value would recurse as deep.
        validate::document_depth(backend, value)?;
        if let Some(max) = caps.max_document_size {
            let len = serialized_len(value);
            validate::payload_size(backend, "the serialized document", len, Some(max))?;
        }
        Ok(())
    }

    /// The length of `value` serialized as compact JSON, without allocating it.
    pub(crate) fn serialized_len(value: &Value) -> usize {
        struct Counter(usize);
        impl std::io::Write for Counter {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0 += buf.len();
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut counter = Counter(0);
        // Serializing a `Value` into an infallible writer cannot fail.
        let _ = serde_json::to_writer(&mut counter, value);
        counter.0
    }

    /// Checks the field paths of a query and that the store claims every capability it uses.
    pub(crate) fn check_capabilities(
        backend: &'static str,
        caps: &DatabaseCapabilities,
        query: &Query,
    ) -> Result<()> {
        if !caps.query {
            return Err(Error::unsupported(backend, "query"));
        }
        for filter in &query.filters {
            validate_field_path(backend, &filter.field)?;
            match filter.op {
                FilterOp::Lt(_) | FilterOp::Le(_) | FilterOp::Gt(_) | FilterOp::Ge(_)
                    if !caps.query_range =>
                {
                    return Err(Error::unsupported(backend, "a range filter"));
                }
                FilterOp::In(_) | FilterOp::Prefix(_) if !caps.query_in_prefix => {
                    return Err(Error::unsupported(backend, "an `in` or `prefix` filter"));
                }
                _ => {}
            }
        }
        for key in &query.order_by {
            validate_field_path(backend, &key.field)?;
        }
        if !query.order_by.is_empty() && !caps.query_order {
            return Err(Error::unsupported(backend, "ordering by fields"));
        }
        Ok(())
    }

    /// When a document written at `now` with `ttl` expires.
    pub(crate) fn expires_at(
        backend: &'static str,
        now: SystemTime,
        ttl: Option<Duration>,
    ) -> Result<Option<SystemTime>> {
        ttl.map(|ttl| {
            now.checked_add(ttl)
                .ok_or_else(|| Error::invalid(backend, "the document TTL is too long"))
        })
        .transpose()
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use serde_json::json;

        #[test]
        fn serialized_len_matches_to_vec() {
            let v = json!({"a": [1, "ü", null], "b": {"c": 1.5}});
            assert_eq!(serialized_len(&v), serde_json::to_vec(&v).unwrap().len());
        }
    }
}
