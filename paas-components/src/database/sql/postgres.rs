//! The PostgreSQL dialect of the [SQL document store](super) (`postgres://`,
//! `postgresql://`).
//!
//! Differences from the other dialects: documents are `jsonb` (so JSON equality is `jsonb`
//! equality, numbers compare exactly as `numeric`, strings with `COLLATE "C"`), expiry is a
//! `timestamptz` on the server's clock (`now()`, the transaction's start), and placeholders
//! are numbered (`$1`). A field path `a.b` is `doc -> $1::text -> $2::text`: `->` with a
//! text key only descends into objects, as the reference lookup does (`#>` would also index
//! arrays).
//!
//! # TLS
//!
//! rustls with the aws-lc-rs provider, compiled in with the `postgres` feature (shared option
//! handling in the crate's `tls` module). URL parameters, libpq's names (the MySQL spellings
//! `ssl-mode`, `ssl-ca` and their values are accepted too and rewritten):
//! - `sslmode`: `disable`; `allow` (sqlx treats it as `disable`); `prefer`, the default (TLS
//!   when the server offers it, without checking the certificate, else plain TCP); `require`
//!   (TLS, certificate not checked); `verify-ca` (meant to check the chain only, but sqlx 0.8
//!   also checks the host name, a known sqlx issue with current rustls, so it is as strict as
//!   `verify-full`); `verify-full` (chain and host name, DNS name or IP address, checked).
//!   Managed cloud databases: `sslmode=verify-full`.
//! - `sslrootcert=FILE`: PEM CA certificates trusted in addition to Mozilla's root set
//!   (webpki-roots), which is always trusted. Read at connect: a file that cannot be read or
//!   holds no certificate is `InvalidArgument`. (`sslcert`/`sslkey`, a client certificate, go
//!   to sqlx unchanged; untested here.)
//!
//! An untrusted server certificate or a host name mismatch fails the connect with
//! [`Unauthenticated`](cloud_abstraction::ErrorKind::Unauthenticated) ("TLS handshake failed: certificate not
//! trusted: …", "… name mismatch: the server's certificate is not valid for `HOST` …"): not
//! retryable, the configuration has to change. A server without TLS under a mode that needs
//! it is [`Unavailable`](cloud_abstraction::ErrorKind::Unavailable). An unknown `sslmode` is `InvalidArgument`.

use super::dialect::{Dialect, Param, RawDocument, Sql};
use cloud_abstraction::{Error, ErrorKind, Result};
use futures::future::BoxFuture;
use serde_json::Number;
use sqlx::postgres::{PgConnectOptions, PgRow};
use sqlx::{Pool, Row};
use std::str::FromStr;

/// The PostgreSQL dialect (backend name `"postgres"`), see [`PostgresDocumentStore`](super::PostgresDocumentStore).
#[derive(Debug, Clone, Copy)]
pub struct Postgres;

impl Dialect for Postgres {
    type Db = sqlx::Postgres;
    const BACKEND: &'static str = "postgres";
    const DEFAULT_TABLE: &'static str = "cloud_documents";
    const DOC_COLUMN: &'static str = "doc";
    const EMBEDDED: bool = false;
    const ON_CONFLICT_RETURNING: bool = true;

    fn placeholder(n: usize) -> String {
        format!("${n}")
    }

    fn quote(name: &str) -> String {
        format!("\"{name}\"")
    }

    fn open(url: &str) -> BoxFuture<'_, Result<Pool<Self::Db>>> {
        Box::pin(async move {
            let url = crate::tls::sql_url(Self::BACKEND, url, crate::tls::SqlDialect::Postgres)?;
            let options = PgConnectOptions::from_str(&url).map_err(|_| {
                // Not the parser's message: it may quote the URL.
                Error::invalid(Self::BACKEND, "invalid PostgreSQL URL")
            })?;
            // `?user=` (or an empty `PGUSER`): the server would refuse the startup with a
            // bare authentication error.
            if options.get_username().is_empty() {
                return Err(Error::invalid(
                    Self::BACKEND,
                    "the PostgreSQL user name is empty (`user=` or PGUSER)",
                ));
            }
            super::server_pool::<Self>(options).await
        })
    }

    fn schema(t: &str) -> Vec<String> {
        vec![format!(
            "CREATE TABLE IF NOT EXISTS {t} (\
             collection TEXT COLLATE \"C\" NOT NULL, \
             id TEXT COLLATE \"C\" NOT NULL, \
             doc JSONB NOT NULL, \
             revision BIGINT NOT NULL, \
             expires_at TIMESTAMPTZ NULL, \
             PRIMARY KEY (collection, id))"
        )]
    }

    fn error_kind(db: &dyn sqlx::error::DatabaseError) -> ErrorKind {
        let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
        match code.as_str() {
            // 42P07: a table created concurrently ("already exists").
            "23505" | "42P07" => ErrorKind::AlreadyExists,
            "40001" | "40P01" => ErrorKind::Unavailable,
            "57014" => ErrorKind::DeadlineExceeded,
            "42501" => ErrorKind::PermissionDenied,
            // invalid_catalog_name: the database named in the URL does not exist.
            "3D000" => ErrorKind::NotFound,
            c if c.starts_with("08") || c.starts_with("57P") => ErrorKind::Unavailable,
            c if c.starts_with("53") => ErrorKind::ResourceExhausted,
            c if c.starts_with("28") => ErrorKind::Unauthenticated,
            // Data exceptions: e.g. `\u0000` in a string, which jsonb cannot hold.
            c if c.starts_with("22") => ErrorKind::InvalidArgument,
            _ => ErrorKind::Internal,
        }
    }

    fn now() -> &'static str {
        "now()"
    }

    fn push_expires(sql: &mut Sql, ttl_us: Option<i64>) {
        sql.push("now() + ")
            .bind(Param::OptI64(ttl_us))
            .push("::bigint * interval '1 microsecond'");
    }

    fn expires_us(column: &str) -> String {
        // sqlx is built without a time crate: the timestamp travels as microseconds.
        format!("(extract(epoch from {column}) * 1000000)::bigint")
    }

    fn push_doc(sql: &mut Sql, json: String) {
        sql.bind(Param::Text(json)).push("::text::jsonb");
    }

    fn doc_out() -> String {
        "doc::text".to_string()
    }

    fn push_purge(sql: &mut Sql, t: &str, collection: &str) {
        sql.push(&format!(
            "DELETE FROM {t} WHERE ctid IN (SELECT ctid FROM {t} WHERE collection = "
        ))
        .bind(Param::Text(collection.to_string()))
        .push(" AND expires_at IS NOT NULL AND expires_at <= now() LIMIT 1000)");
    }

    fn field_columns(sql: &mut Sql, path: &str, alias: &str) {
        sql.push(", (doc");
        for segment in path.split('.') {
            sql.push(" -> ")
                .bind(Param::Text(segment.to_string()))
                .push("::text");
        }
        sql.push(&format!(") AS {alias}"));
    }

    fn rank(f: &str) -> String {
        format!(
            "(CASE WHEN {f} IS NULL THEN 0 ELSE CASE jsonb_typeof({f}) \
             WHEN 'null' THEN 1 WHEN 'boolean' THEN 2 WHEN 'number' THEN 3 \
             WHEN 'string' THEN 4 WHEN 'array' THEN 5 ELSE 6 END END)"
        )
    }

    fn number(f: &str) -> String {
        // CASE, not AND: SQL does not promise to short-circuit, and the cast of a
        // non-number would fail.
        format!("(CASE WHEN jsonb_typeof({f}) = 'number' THEN ({f})::numeric END)")
    }

    fn string(f: &str) -> String {
        format!("((CASE WHEN jsonb_typeof({f}) = 'string' THEN {f} #>> '{{}}' END) COLLATE \"C\")")
    }

    fn boolean(f: &str) -> String {
        format!("(CASE WHEN jsonb_typeof({f}) = 'boolean' THEN ({f})::boolean END)")
    }

    fn number_param(sql: &mut Sql, n: &Number) {
        // As text, so that the number arrives exactly (`numeric`), not through f64.
        sql.bind(Param::Text(n.to_string())).push("::text::numeric");
    }

    fn string_param(sql: &mut Sql, s: &str) {
        sql.bind(Param::Text(s.to_string()))
            .push("::text COLLATE \"C\"");
    }

    fn bool_param(sql: &mut Sql, b: bool) {
        sql.bind(Param::Bool(b)).push("::boolean");
    }

    fn composite_eq(sql: &mut Sql, f: &str, json: String, _is_array: bool) {
        // jsonb equality is JSON equality, numbers numerically.
        sql.push(&format!("({f} = "))
            .bind(Param::Text(json))
            .push("::text::jsonb)");
    }

    fn prefix(sql: &mut Sql, f: &str, prefix: &str) {
        sql.push(&format!(
            "(jsonb_typeof({f}) = 'string' AND starts_with({f} #>> '{{}}', "
        ))
        .bind(Param::Text(prefix.to_string()))
        .push("::text))");
    }

    fn decode(row: &PgRow) -> sqlx::Result<RawDocument> {
        Ok(RawDocument {
            id: row.try_get(0)?,
            doc: row.try_get(1)?,
            revision: row.try_get(2)?,
            expires_us: row.try_get(3)?,
        })
    }

    crate::sqlx_execution!();
}
