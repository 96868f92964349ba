//! The SQLite dialect of the [SQL document store](super) (`sqlite:///abs/path.db`,
//! `sqlite://relative.db`, `sqlite::memory:`).
//!
//! Differences from the server dialects:
//!
//! - **Durability.** A file database runs in WAL mode with `synchronous = FULL`: every
//!   commit is fsynced before the call returns, so an acknowledged write survives a power
//!   cut, not only a crash of the process (with `NORMAL`, WAL commits since the last
//!   checkpoint may be lost on power loss; the trait promises that an `Ok` write is stored,
//!   so we pay one fsync per commit). Readers never block the writer in WAL mode; writers
//!   queue on SQLite's lock for up to 10 s (the busy timeout), then fail with `Unavailable`.
//! - **In memory.** `sqlite::memory:` gives a private in-memory database held by a pool of
//!   exactly one connection that is never recycled (each SQLite connection to `:memory:`
//!   would otherwise see its own empty database); it is lost when the store is dropped.
//! - **Opening.** The URL forms and the checks on the file before SQLite opens it are
//!   shared with the SQLite queue: a path that is a directory, or has a regular file as a
//!   parent, is `InvalidArgument`; a missing parent directory (or a missing file under
//!   `mode=rw`) is `NotFound`; a file that cannot be opened (permissions) is
//!   `PermissionDenied`. SQLite's own result codes map to the same kinds for both.
//! - **Layout.** The table is `documents` by default, the document column `value` (JSON
//!   text) and `expires_at` milliseconds since the Unix epoch, on the process's clock (the
//!   database is embedded: there is no other clock to agree with). Database files written
//!   by earlier versions of this store have the same layout.
//! - **Types.** `json_type` tells the JSON type (`json_extract` alone maps JSON `null` to SQL
//!   `NULL` and booleans to 0/1); numbers compare as SQLite integers and reals, strings and
//!   prefixes by bytes (the `BINARY` collation, `substr` on blobs), arrays and objects by
//!   their minified `json()` text (both sides come from serde_json, with the same key order).

use super::dialect::{Dialect, Param, RawDocument, Sql};
use cloud_abstraction::{ErrorKind, Result};
use futures::future::BoxFuture;
use serde_json::Number;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Pool, Row};
use std::time::Duration;

/// How long a statement waits for another connection's write lock before failing with
/// `Unavailable`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The database's clock in milliseconds since the Unix epoch.
const NOW_MS: &str = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";

/// The SQLite dialect (backend name `"sqlite"`), see [`SqliteDocumentStore`](super::SqliteDocumentStore).
#[derive(Debug, Clone, Copy)]
pub struct Sqlite;

/// The connect options (the shared URL reading, plus this store's durability) and whether
/// the database is in memory.
fn parse_url(url: &str) -> Result<(SqliteConnectOptions, bool)> {
    let (options, in_memory) = crate::sqlite_open::parse(Sqlite::BACKEND, url)?;
    if in_memory {
        return Ok((options, true));
    }
    let options = options
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full);
    Ok((options, false))
}

impl Dialect for Sqlite {
    type Db = sqlx::Sqlite;
    const BACKEND: &'static str = "sqlite";
    const DEFAULT_TABLE: &'static str = "documents";
    const DOC_COLUMN: &'static str = "value";
    const EMBEDDED: bool = true;
    const ON_CONFLICT_RETURNING: bool = true;
    // The write lock up front: a batch never fails half-way on a lock upgrade.
    const BEGIN: &'static str = "BEGIN IMMEDIATE";

    fn placeholder(_n: usize) -> String {
        "?".to_string()
    }

    fn quote(name: &str) -> String {
        format!("\"{name}\"")
    }

    fn open(url: &str) -> BoxFuture<'_, Result<Pool<Self::Db>>> {
        Box::pin(async move {
            let (options, in_memory) = parse_url(url)?;
            let options = options.busy_timeout(BUSY_TIMEOUT);
            let pool = if in_memory {
                // One connection, never closed: it *is* the database.
                SqlitePoolOptions::new()
                    .max_connections(1)
                    .min_connections(1)
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .connect_with(options)
                    .await
            } else {
                SqlitePoolOptions::new()
                    .max_connections(4)
                    .connect_with(options)
                    .await
            };
            pool.map_err(|e| super::map_err::<Self>(e, "opening the SQLite database"))
        })
    }

    fn schema(t: &str) -> Vec<String> {
        let index = format!("\"{}_expires_at\"", t.trim_matches('"'));
        vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {t} (collection TEXT NOT NULL, id TEXT NOT NULL, \
                 value TEXT NOT NULL, revision INTEGER NOT NULL, expires_at INTEGER, \
                 PRIMARY KEY (collection, id))"
            ),
            format!(
                "CREATE INDEX IF NOT EXISTS {index} ON {t} (expires_at) \
                 WHERE expires_at IS NOT NULL"
            ),
        ]
    }

    fn error_kind(db: &dyn sqlx::error::DatabaseError) -> ErrorKind {
        crate::sqlite_open::error_kind(db)
    }

    fn now() -> &'static str {
        NOW_MS
    }

    fn push_expires(sql: &mut Sql, ttl_us: Option<i64>) {
        sql.push(&format!("{NOW_MS} + "))
            .bind(Param::OptI64(ttl_us.map(|us| us / 1000)));
    }

    fn expires_us(column: &str) -> String {
        format!("({column} * 1000)")
    }

    fn push_purge(sql: &mut Sql, t: &str, collection: &str) {
        sql.push(&format!(
            "DELETE FROM {t} WHERE rowid IN (SELECT rowid FROM {t} WHERE collection = "
        ))
        .bind(Param::Text(collection.to_string()))
        .push(&format!(
            " AND expires_at IS NOT NULL AND expires_at <= {NOW_MS} LIMIT 1000)"
        ));
    }

    fn field_columns(sql: &mut Sql, path: &str, alias: &str) {
        // `$."a"."b"`: quoting each segment keeps `[`, `$` or spaces literal.
        let mut json_path = String::from("$");
        for segment in path.split('.') {
            json_path.push_str(&format!(".\"{segment}\""));
        }
        sql.push(", json_type(value, ")
            .bind(Param::Text(json_path.clone()))
            .push(&format!(") AS {alias}t, json_extract(value, "))
            .bind(Param::Text(json_path))
            .push(&format!(") AS {alias}v"));
    }

    fn rank(f: &str) -> String {
        format!(
            "(CASE {f}t WHEN 'null' THEN 1 WHEN 'true' THEN 2 WHEN 'false' THEN 2 \
             WHEN 'integer' THEN 3 WHEN 'real' THEN 3 WHEN 'text' THEN 4 WHEN 'array' THEN 5 \
             WHEN 'object' THEN 6 ELSE 0 END)"
        )
    }

    fn number(f: &str) -> String {
        format!("(CASE WHEN {f}t IN ('integer', 'real') THEN {f}v END)")
    }

    fn string(f: &str) -> String {
        format!("(CASE WHEN {f}t = 'text' THEN {f}v END)")
    }

    fn boolean(f: &str) -> String {
        // json_extract gives 0 and 1 for false and true.
        format!("(CASE WHEN {f}t IN ('true', 'false') THEN {f}v END)")
    }

    fn number_param(sql: &mut Sql, n: &Number) {
        sql.bind(match n.as_i64() {
            Some(i) => Param::I64(i),
            None => Param::F64(n.as_f64().unwrap_or(f64::NAN)),
        });
    }

    fn string_param(sql: &mut Sql, s: &str) {
        sql.bind(Param::Text(s.to_string()));
    }

    fn bool_param(sql: &mut Sql, b: bool) {
        sql.bind(Param::I64(i64::from(b)));
    }

    fn composite_eq(sql: &mut Sql, f: &str, json: String, is_array: bool) {
        let ty = if is_array { "array" } else { "object" };
        sql.push(&format!("({f}t = '{ty}' AND json({f}v) = json("))
            .bind(Param::Text(json))
            .push("))");
    }

    fn prefix(sql: &mut Sql, f: &str, prefix: &str) {
        if prefix.is_empty() {
            // Every string starts with "" (substr of an empty blob is not an empty blob).
            sql.push(&format!("({f}t = 'text')"));
            return;
        }
        // Byte-wise on blobs: no LIKE wildcards, no collation, exact UTF-8 prefix.
        sql.push(&format!(
            "({f}t = 'text' AND substr(CAST({f}v AS BLOB), 1, "
        ))
        .bind(Param::I64(i64::try_from(prefix.len()).unwrap_or(i64::MAX)))
        .push(") = CAST(")
        .bind(Param::Text(prefix.to_string()))
        .push(" AS BLOB))");
    }

    fn decode(row: &SqliteRow) -> sqlx::Result<RawDocument> {
        Ok(RawDocument {
            id: row.try_get(0)?,
            doc: row.try_get(1)?,
            revision: row.try_get(2)?,
            expires_us: row.try_get(3)?,
        })
    }

    crate::sqlx_execution!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(parse_url("sqlite::memory:").unwrap().1);
        assert!(parse_url("sqlite://:memory:").unwrap().1);
        let (o, mem) = parse_url("sqlite:///tmp/x.db?mode=rwc").unwrap();
        assert!(!mem);
        assert_eq!(o.get_filename(), std::path::Path::new("/tmp/x.db"));
        let (o, _) = parse_url("sqlite://rel.db").unwrap();
        assert_eq!(o.get_filename(), std::path::Path::new("rel.db"));
        for bad in [
            "postgres://x",
            "sqlite:///a.db?cache=shared",
            "sqlite://a\nb",
        ] {
            let e = parse_url(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad:?}");
            assert!(
                !e.to_string().contains(bad),
                "the message must not quote the URL"
            );
        }
    }
}
