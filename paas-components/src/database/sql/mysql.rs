//! The MariaDB / MySQL dialect of the [SQL document store](super) (`mysql://`, `mariadb://`).
//!
//! Differences from the other dialects: ids are `VARBINARY` and bound as bytes; documents are
//! MariaDB's `JSON` (text checked on write); expiry is `BIGINT` microseconds on the server's
//! clock (`NOW(6)`; sqlx sets the session time zone to UTC, so the conversion is exact);
//! placeholders are positional `?`; numbers compare as `DOUBLE` (exact up to 2^53); arrays
//! and objects with `JSON_EQUALS` (MariaDB ≥ 10.7). There is no `RETURNING` for upserts, so
//! the generic store uses `ON DUPLICATE KEY UPDATE` with `LAST_INSERT_ID(expr)` and a plain
//! `INSERT` for create-only puts (the module docs of [`super`] say how).
//!
//! # TLS
//!
//! rustls with the aws-lc-rs provider, compiled in with the `mysql` feature (shared option
//! handling in the crate's `tls` module). URL parameters, sqlx's MySQL names (the PostgreSQL
//! spellings `sslmode`, `sslrootcert` and their values are accepted too and rewritten):
//! - `ssl-mode`: `DISABLED`; `PREFERRED`, the default (TLS when the server offers it,
//!   without checking the certificate, else plain TCP); `REQUIRED` (TLS, certificate not
//!   checked); `VERIFY_CA` (meant to check the chain only, but sqlx 0.8 also checks the host
//!   name, a known sqlx issue with current rustls, so it is as strict as `VERIFY_IDENTITY`);
//!   `VERIFY_IDENTITY` (chain and host name, DNS name or IP address, checked). Managed cloud
//!   databases: `ssl-mode=VERIFY_IDENTITY`.
//! - `ssl-ca=FILE`: PEM CA certificates trusted in addition to Mozilla's root set
//!   (webpki-roots), which is always trusted. Read at connect: a file that cannot be read or
//!   holds no certificate is `InvalidArgument`. (`ssl-cert`/`ssl-key`, a client certificate,
//!   go to sqlx unchanged; untested here.)
//!
//! An untrusted server certificate or a host name mismatch fails the connect with
//! [`Unauthenticated`](cloud_abstraction::ErrorKind::Unauthenticated) ("TLS handshake failed: certificate not
//! trusted: …", "… name mismatch: the server's certificate is not valid for `HOST` …"): not
//! retryable, the configuration has to change. A server without TLS under a mode that needs
//! it is [`Unavailable`](cloud_abstraction::ErrorKind::Unavailable). An unknown `ssl-mode` is `InvalidArgument`.

use super::dialect::{Dialect, Param, RawDocument, Sql};
use cloud_abstraction::{Error, ErrorKind, Result};
use futures::future::BoxFuture;
use serde_json::Number;
use sqlx::mysql::{MySqlConnectOptions, MySqlDatabaseError, MySqlQueryResult, MySqlRow};
use sqlx::{Pool, Row};
use std::str::FromStr;

/// The server's clock in microseconds since the Unix epoch.
const NOW_US: &str = "CAST(UNIX_TIMESTAMP(NOW(6)) * 1000000 AS SIGNED)";

const NUMBER_TYPES: &str = "('INTEGER', 'DOUBLE', 'DECIMAL', 'UNSIGNED INTEGER')";

/// The MariaDB / MySQL dialect (backend name `"mysql"`), see [`MysqlDocumentStore`](super::MysqlDocumentStore).
#[derive(Debug, Clone, Copy)]
pub struct Mysql;

impl Dialect for Mysql {
    type Db = sqlx::MySql;
    const BACKEND: &'static str = "mysql";
    const DEFAULT_TABLE: &'static str = "cloud_documents";
    const DOC_COLUMN: &'static str = "doc";
    const EMBEDDED: bool = false;
    const ON_CONFLICT_RETURNING: bool = false;

    fn placeholder(_n: usize) -> String {
        "?".to_string()
    }

    fn quote(name: &str) -> String {
        format!("`{name}`")
    }

    fn open(url: &str) -> BoxFuture<'_, Result<Pool<Self::Db>>> {
        Box::pin(async move {
            // sqlx knows the `mysql` scheme only; MariaDB speaks the same protocol.
            let url = match url.strip_prefix("mariadb://") {
                Some(rest) => format!("mysql://{rest}"),
                None => url.to_string(),
            };
            let url = crate::tls::sql_url(Self::BACKEND, &url, crate::tls::SqlDialect::Mysql)?;
            let options = MySqlConnectOptions::from_str(&url).map_err(|_| {
                // Not the parser's message: it may quote the URL.
                Error::invalid(Self::BACKEND, "invalid MySQL/MariaDB URL")
            })?;
            super::server_pool::<Self>(options).await
        })
    }

    fn schema(t: &str) -> Vec<String> {
        vec![format!(
            "CREATE TABLE IF NOT EXISTS {t} (\
             collection VARBINARY(63) NOT NULL, \
             id VARBINARY(255) NOT NULL, \
             doc JSON NOT NULL, \
             revision BIGINT NOT NULL, \
             expires_at BIGINT NULL, \
             PRIMARY KEY (collection, id)) ENGINE=InnoDB"
        )]
    }

    fn error_kind(db: &dyn sqlx::error::DatabaseError) -> ErrorKind {
        let number = db
            .try_downcast_ref::<MySqlDatabaseError>()
            .map(|m| m.number())
            .unwrap_or(0);
        let state = db.code().map(|c| c.into_owned()).unwrap_or_default();
        match number {
            1062 | 1586 | 1050 => ErrorKind::AlreadyExists,
            1205 | 1213 | 1927 | 2006 | 2013 | 1053 => ErrorKind::Unavailable,
            1040 | 1203 | 1226 => ErrorKind::ResourceExhausted,
            1045 => ErrorKind::Unauthenticated,
            1044 | 1142 | 1143 => ErrorKind::PermissionDenied,
            // ER_BAD_DB_ERROR: the database named in the URL does not exist.
            1049 => ErrorKind::NotFound,
            1153 => ErrorKind::InvalidArgument,
            1969 | 3024 => ErrorKind::DeadlineExceeded,
            _ if state.starts_with("08") || state == "40001" => ErrorKind::Unavailable,
            _ if state.starts_with("22") => ErrorKind::InvalidArgument,
            _ => ErrorKind::Internal,
        }
    }

    fn now() -> &'static str {
        NOW_US
    }

    fn push_expires(sql: &mut Sql, ttl_us: Option<i64>) {
        sql.push(&format!("{NOW_US} + "))
            .bind(Param::OptI64(ttl_us));
    }

    fn expires_us(column: &str) -> String {
        column.to_string()
    }

    fn id_param(id: &str) -> Param {
        Param::Bytes(id.as_bytes().to_vec())
    }

    fn push_upsert_duplicate_key(sql: &mut Sql, _t: &str) {
        // Assignments run left to right: `revision` reads the old `expires_at`.
        sql.push(&format!(
            " ON DUPLICATE KEY UPDATE revision = LAST_INSERT_ID(IF(\
             expires_at IS NOT NULL AND expires_at <= {NOW_US}, 1, revision + 1)), \
             doc = VALUES(doc), expires_at = VALUES(expires_at)"
        ));
    }

    fn push_purge(sql: &mut Sql, t: &str, collection: &str) {
        sql.push(&format!("DELETE FROM {t} WHERE collection = "))
            .bind(Param::Text(collection.to_string()))
            .push(&format!(
                " AND expires_at IS NOT NULL AND expires_at <= {NOW_US} LIMIT 1000"
            ));
    }

    fn field_columns(sql: &mut Sql, path: &str, alias: &str) {
        let quoted: Vec<String> = path.split('.').map(|s| format!("\"{s}\"")).collect();
        sql.push(", JSON_EXTRACT(doc, ")
            .bind(Param::Text(format!("$.{}", quoted.join("."))))
            .push(&format!(") AS {alias}"));
    }

    fn rank(f: &str) -> String {
        format!(
            "(CASE WHEN {f} IS NULL THEN 0 ELSE CASE JSON_TYPE({f}) \
             WHEN 'NULL' THEN 1 WHEN 'BOOLEAN' THEN 2 WHEN 'STRING' THEN 4 \
             WHEN 'ARRAY' THEN 5 WHEN 'OBJECT' THEN 6 ELSE 3 END END)"
        )
    }

    fn number(f: &str) -> String {
        format!("(CASE WHEN JSON_TYPE({f}) IN {NUMBER_TYPES} THEN CAST({f} AS DOUBLE) END)")
    }

    fn string(f: &str) -> String {
        format!("(CASE WHEN JSON_TYPE({f}) = 'STRING' THEN CAST(JSON_UNQUOTE({f}) AS BINARY) END)")
    }

    fn boolean(f: &str) -> String {
        format!("(CASE WHEN JSON_TYPE({f}) = 'BOOLEAN' THEN ({f} = 'true') END)")
    }

    fn number_param(sql: &mut Sql, n: &Number) {
        sql.bind(Param::F64(n.as_f64().unwrap_or(f64::NAN)));
    }

    fn string_param(sql: &mut Sql, s: &str) {
        sql.push("CAST(")
            .bind(Param::Bytes(s.as_bytes().to_vec()))
            .push(" AS BINARY)");
    }

    fn bool_param(sql: &mut Sql, b: bool) {
        sql.bind(Param::Bool(b));
    }

    fn composite_eq(sql: &mut Sql, f: &str, json: String, is_array: bool) {
        let ty = if is_array { "ARRAY" } else { "OBJECT" };
        sql.push(&format!("(JSON_TYPE({f}) = '{ty}' AND JSON_EQUALS({f}, "))
            .bind(Param::Text(json))
            .push("))");
    }

    fn prefix(sql: &mut Sql, f: &str, prefix: &str) {
        sql.push(&format!("(LEFT({}, ", Self::string(f)))
            .bind(Param::I64(i64::try_from(prefix.len()).unwrap_or(i64::MAX)))
            .push(") = CAST(")
            .bind(Param::Bytes(prefix.as_bytes().to_vec()))
            .push(" AS BINARY))");
    }

    fn decode(row: &MySqlRow) -> sqlx::Result<RawDocument> {
        let text = |i: usize| -> sqlx::Result<String> {
            let bytes: Vec<u8> = row.try_get(i)?;
            String::from_utf8(bytes).map_err(|e| sqlx::Error::Decode(Box::new(e)))
        };
        Ok(RawDocument {
            id: text(0)?,
            doc: text(1)?,
            revision: row.try_get(2)?,
            expires_us: row.try_get(3)?,
        })
    }

    fn last_insert_id(result: &MySqlQueryResult) -> u64 {
        result.last_insert_id()
    }

    crate::sqlx_execution!();
}
