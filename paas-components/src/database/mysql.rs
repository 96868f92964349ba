//! MariaDB / MySQL document store (`mysql://`, `mariadb://`), through sqlx.
//!
//! # Storage layout
//!
//! Like the PostgreSQL store (and for the same reasons: no DDL on the write path, no empty
//! table per short-lived collection, collection names bound rather than interpolated), all
//! collections share **one table** (default `cloud_documents`, see
//! [`MysqlDocumentStore::connect_table`]):
//!
//! ```sql
//! CREATE TABLE IF NOT EXISTS `cloud_documents` (
//!     collection VARBINARY(63)  NOT NULL,
//!     id         VARBINARY(255) NOT NULL,
//!     doc        JSON NOT NULL,
//!     revision   BIGINT NOT NULL,
//!     expires_at BIGINT NULL,          -- microseconds since the Unix epoch, server clock
//!     PRIMARY KEY (collection, id)
//! ) ENGINE=InnoDB
//! ```
//!
//! Ids are `VARBINARY`, so they are case-sensitive, compare byte-wise (no PAD SPACE
//! surprises: `a` and `a ` are different ids) and sort by their UTF-8 bytes.
//!
//! # Semantics
//!
//! The contract of [`DocumentStore`], as on PostgreSQL:
//! - unconditional puts are one `INSERT … ON DUPLICATE KEY UPDATE` (the new revision comes
//!   back through `LAST_INSERT_ID(expr)`); revision-conditional writes are one `UPDATE/DELETE
//!   … WHERE revision = ?`; create-only puts are a plain `INSERT` whose duplicate-key error
//!   means `AlreadyExists` (an expired row in the way is deleted and the insert retried once);
//! - a new (or expired) document starts at revision 1, every write adds 1;
//! - TTL uses the server's clock; expired rows are invisible to every read and condition, and
//!   deleted lazily by queries;
//! - [`write_batch`](DocumentStore::write_batch) runs in one InnoDB transaction, rolled back at
//!   the first failing operation;
//! - queries are parameterised SQL over `JSON_EXTRACT(doc, ?)` (the path `$."a"."b"` is a bound
//!   parameter; [`validate_field_path`] rejects `"` and `\`, so the quoting is sound).
//!   `JSON_TYPE` checks come first (no cross-type matches); numbers compare as `DOUBLE`
//!   (exact up to 2^53), strings as `BINARY` (byte order); arrays and objects compare with
//!   `JSON_EQUALS` (MariaDB ≥ 10.7). Ordering follows the reference total order, then the id;
//!   cursors are opaque keyset cursors.
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
//! [`Unauthenticated`](ErrorKind::Unauthenticated) ("TLS handshake failed: certificate not
//! trusted: …", "… name mismatch: the server's certificate is not valid for `HOST` …"): not
//! retryable, the configuration has to change. A server without TLS under a mode that needs
//! it is [`Unavailable`](ErrorKind::Unavailable). An unknown `ssl-mode` is `InvalidArgument`.
//!
//! # Failures
//!
//! Pool acquisition times out after 5 s and every operation has an overall deadline
//! ([`MysqlDocumentStore::with_operation_timeout`], 30 s by default): calls never hang when the
//! server is gone, they fail with a retryable kind, and the same handle recovers when it is
//! back. Duplicate keys map to `AlreadyExists`, deadlocks and lock wait timeouts to
//! `Unavailable`; the URL never appears in an error or a log.

use super::common::{check_capabilities, check_document, page_limit};
use async_trait::async_trait;
use cloud_abstraction::database::{
    DatabaseCapabilities, Direction, Document, DocumentStore, Filter, FilterOp, OrderBy,
    PutDocumentOptions, Query, QueryPage, Revision, WriteCondition, WriteOp, WriteOutcome,
    validate_field_path,
};
use cloud_abstraction::{BackendInfo, Error, ErrorKind, Location, Result, validate};
use serde_json::Value;
use sqlx::mysql::{
    MySqlArguments, MySqlConnectOptions, MySqlDatabaseError, MySqlPool, MySqlPoolOptions, MySqlRow,
};
use sqlx::query::Query as SqlxQuery;
use sqlx::{MySql, MySqlConnection, Row};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant, UNIX_EPOCH};
use tracing::Instrument;

const BACKEND: &str = "mysql";
const PURGE_INTERVAL: Duration = Duration::from_secs(60);

/// The server's clock in microseconds since the Unix epoch (sqlx sets the session time zone
/// to UTC, so `NOW(6)` converts exactly).
const NOW_US: &str = "CAST(UNIX_TIMESTAMP(NOW(6)) * 1000000 AS SIGNED)";

/// A [`DocumentStore`] on MariaDB or MySQL (backend name `"mysql"`).
///
/// ```no_run
/// # async fn demo() -> cloud_abstraction::Result<()> {
/// use cloud_abstraction::database::{DocumentStore, PutDocumentOptions};
/// use paas_components::database::MysqlDocumentStore;
///
/// let store = MysqlDocumentStore::connect("mariadb://root@127.0.0.1:3306/test").await?;
/// store
///     .put("cars", "VIN1", serde_json::json!({"km": 12}), PutDocumentOptions::default())
///     .await?;
/// # Ok(()) }
/// ```
pub struct MysqlDocumentStore {
    pool: MySqlPool,
    table: String,
    sql: Statements,
    location: Location,
    operation_timeout: Duration,
    last_purge: Mutex<HashMap<String, Instant>>,
}

impl std::fmt::Debug for MysqlDocumentStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the URL or the connect options: they may hold a password.
        f.debug_struct("MysqlDocumentStore")
            .field("table", &self.table)
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

struct Statements {
    get: String,
    put_any: String,
    insert: String,
    delete_expired: String,
    put_revision: String,
    delete_live: String,
    delete_revision: String,
    exists: String,
    purge: String,
}

fn live() -> String {
    format!("(expires_at IS NULL OR expires_at > {NOW_US})")
}

impl Statements {
    fn new(t: &str) -> Self {
        let live = live();
        let expired = format!("(expires_at IS NOT NULL AND expires_at <= {NOW_US})");
        Self {
            get: format!(
                "SELECT id, doc, revision, expires_at FROM {t} \
                 WHERE collection = ? AND id = ? AND {live}"
            ),
            // Assignments run left to right: `revision` reads the old `expires_at`.
            put_any: format!(
                "INSERT INTO {t} (collection, id, doc, revision, expires_at) \
                 VALUES (?, ?, ?, 1, {NOW_US} + ?) ON DUPLICATE KEY UPDATE \
                 revision = LAST_INSERT_ID(IF({expired}, 1, revision + 1)), \
                 doc = VALUES(doc), expires_at = VALUES(expires_at)"
            ),
            insert: format!(
                "INSERT INTO {t} (collection, id, doc, revision, expires_at) \
                 VALUES (?, ?, ?, 1, {NOW_US} + ?)"
            ),
            delete_expired: format!(
                "DELETE FROM {t} WHERE collection = ? AND id = ? AND {expired}"
            ),
            put_revision: format!(
                "UPDATE {t} SET doc = ?, revision = revision + 1, expires_at = {NOW_US} + ? \
                 WHERE collection = ? AND id = ? AND revision = ? AND {live}"
            ),
            delete_live: format!("DELETE FROM {t} WHERE collection = ? AND id = ? AND {live}"),
            delete_revision: format!(
                "DELETE FROM {t} WHERE collection = ? AND id = ? AND revision = ? AND {live}"
            ),
            exists: format!("SELECT 1 FROM {t} WHERE collection = ? AND id = ? AND {live}"),
            purge: format!("DELETE FROM {t} WHERE collection = ? AND {expired} LIMIT 1000"),
        }
    }
}

impl MysqlDocumentStore {
    /// The table used by [`connect`](Self::connect).
    pub const DEFAULT_TABLE: &'static str = "cloud_documents";

    /// Connects to `url` (`mysql://user:password@host:port/database`, or `mariadb://…`) and
    /// makes sure the [`DEFAULT_TABLE`](Self::DEFAULT_TABLE) exists.
    ///
    /// Fails with `InvalidArgument` for a malformed URL, `Unavailable` when the server cannot
    /// be reached (within the 5 s acquire timeout). The URL never appears in an error.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_table(url, Self::DEFAULT_TABLE).await
    }

    /// Like [`connect`](Self::connect), with the documents in `table` (a
    /// [resource name](validate::resource_name)).
    pub async fn connect_table(url: &str, table: &str) -> Result<Self> {
        validate::resource_name(BACKEND, "table", table)?;
        let url = match url.strip_prefix("mariadb://") {
            Some(rest) => format!("mysql://{rest}"),
            None => url.to_string(),
        };
        let url = crate::tls::sql_url(BACKEND, &url, crate::tls::SqlDialect::Mysql)?;
        let options = MySqlConnectOptions::from_str(&url).map_err(|_| {
            // Not the parser's message: it may quote the URL.
            Error::invalid(BACKEND, "invalid MySQL/MariaDB URL")
        })?;
        let pool = MySqlPoolOptions::new()
            .max_connections(10)
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(5))
            .idle_timeout(Some(Duration::from_secs(300)))
            .connect_with(options)
            .await
            .map_err(|e| map_err(e, "connect"))?;
        let quoted = format!("`{table}`");
        let store = Self {
            pool,
            sql: Statements::new(&quoted),
            table: table.to_string(),
            location: Location::new("mysql", "local"),
            operation_timeout: Duration::from_secs(30),
            last_purge: Mutex::new(HashMap::new()),
        };
        let ddl = format!(
            "CREATE TABLE IF NOT EXISTS {quoted} (\
             collection VARBINARY(63) NOT NULL, \
             id VARBINARY(255) NOT NULL, \
             doc JSON NOT NULL, \
             revision BIGINT NOT NULL, \
             expires_at BIGINT NULL, \
             PRIMARY KEY (collection, id)) ENGINE=InnoDB"
        );
        sqlx::query(&ddl)
            .execute(&store.pool)
            .await
            .map_err(|e| map_err(e, "create table"))?;
        Ok(store)
    }

    /// Sets where the server runs (default: provider `mysql`, region `local`).
    pub fn with_location(mut self, location: Location) -> Self {
        self.location = location;
        self
    }

    /// Sets the overall deadline of one operation (default 30 s); past it the call fails
    /// with [`DeadlineExceeded`](ErrorKind::DeadlineExceeded) (a write may or may not have
    /// been applied).
    pub fn with_operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout;
        self
    }

    /// The table holding this store's documents.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The underlying sqlx pool: a **non-portable** escape hatch for SQL that the portable
    /// API does not cover. Writes made through it bypass revision bookkeeping unless they
    /// maintain the `revision` column themselves.
    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    async fn deadline<T>(
        &self,
        operation: &'static str,
        fut: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.operation_timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(Error::new(
                ErrorKind::DeadlineExceeded,
                BACKEND,
                format!(
                    "{operation} did not finish within {:?}",
                    self.operation_timeout
                ),
            )),
        }
    }

    async fn purge_expired(&self, collection: &str) {
        let due = {
            let Ok(mut map) = self.last_purge.lock() else {
                return;
            };
            let now = Instant::now();
            match map.get(collection) {
                Some(t) if now.duration_since(*t) < PURGE_INTERVAL => false,
                _ => {
                    if map.len() > 10_000 {
                        map.clear();
                    }
                    map.insert(collection.to_string(), now);
                    true
                }
            }
        };
        if due {
            // Best effort: expired rows are invisible anyway.
            if let Err(e) = sqlx::query(&self.sql.purge)
                .bind(collection)
                .execute(&self.pool)
                .await
            {
                tracing::debug!(backend = BACKEND, error = %e, "purging expired documents failed");
            }
        }
    }
}

fn capabilities() -> DatabaseCapabilities {
    DatabaseCapabilities::full()
}

fn ttl_micros(ttl: Option<Duration>) -> Result<Option<i64>> {
    ttl.map(|d| {
        i64::try_from(d.as_micros()).map_err(|_| Error::invalid(BACKEND, "ttl is too long"))
    })
    .transpose()
}

fn revision_from(rev: i64) -> Result<Revision> {
    u64::try_from(rev)
        .map(Revision)
        .map_err(|_| Error::internal(BACKEND, "negative revision in the table"))
}

fn revision_param(rev: Revision) -> Result<i64> {
    i64::try_from(rev.0).map_err(|_| {
        Error::new(
            ErrorKind::PreconditionFailed,
            BACKEND,
            "revision does not match",
        )
    })
}

fn row_to_document(row: &MySqlRow) -> Result<Document> {
    let decode = |e: sqlx::Error| map_err(e, "decode row");
    let id: Vec<u8> = row.try_get("id").map_err(decode)?;
    let id = String::from_utf8(id)
        .map_err(|_| Error::internal(BACKEND, "document id in the table is not UTF-8"))?;
    let doc: Vec<u8> = row.try_get("doc").map_err(decode)?;
    let value: Value = serde_json::from_slice(&doc)
        .map_err(|e| Error::internal(BACKEND, format!("stored document is not JSON: {e}")))?;
    let revision: i64 = row.try_get("revision").map_err(decode)?;
    let expires: Option<i64> = row.try_get("expires_at").map_err(decode)?;
    Ok(Document {
        id,
        value,
        revision: revision_from(revision)?,
        expires_at: expires
            .and_then(|us| UNIX_EPOCH.checked_add(Duration::from_micros(u64::try_from(us).ok()?))),
    })
}

/// Maps a sqlx error to the portable kinds; the message names the operation only.
fn map_err(e: sqlx::Error, operation: &str) -> Error {
    if let Some(tls) = crate::tls::failure(BACKEND, operation, &e) {
        return tls.with_source(e);
    }
    let kind = match &e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => ErrorKind::Unavailable,
        sqlx::Error::Configuration(_) => {
            return Error::invalid(BACKEND, format!("{operation}: invalid configuration"));
        }
        sqlx::Error::Database(db) => {
            let number = db
                .try_downcast_ref::<MySqlDatabaseError>()
                .map(|m| m.number())
                .unwrap_or(0);
            let state = db.code().map(|c| c.into_owned()).unwrap_or_default();
            match number {
                1062 | 1586 => ErrorKind::AlreadyExists,
                1205 | 1213 | 1927 | 2006 | 2013 | 1053 => ErrorKind::Unavailable,
                1040 | 1203 | 1226 => ErrorKind::ResourceExhausted,
                1045 => ErrorKind::Unauthenticated,
                1044 | 1142 | 1143 => ErrorKind::PermissionDenied,
                1153 => ErrorKind::InvalidArgument,
                1969 | 3024 => ErrorKind::DeadlineExceeded,
                _ if state.starts_with("08") || state == "40001" => ErrorKind::Unavailable,
                _ if state.starts_with("22") => ErrorKind::InvalidArgument,
                _ => ErrorKind::Internal,
            }
        }
        _ => ErrorKind::Internal,
    };
    Error::new(kind, BACKEND, format!("{operation} failed: {e}")).with_source(e)
}

fn is_duplicate(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

fn check_names(collection: &str, id: &str) -> Result<()> {
    validate::resource_name(BACKEND, "collection", collection)?;
    validate::document_id(BACKEND, id)
}

fn precondition(collection: &str, id: &str) -> Error {
    Error::new(
        ErrorKind::PreconditionFailed,
        BACKEND,
        format!("document `{id}` in `{collection}` is not at the expected revision"),
    )
}

fn already_exists(collection: &str, id: &str) -> Error {
    Error::new(
        ErrorKind::AlreadyExists,
        BACKEND,
        format!("document `{id}` already exists in `{collection}`"),
    )
}

fn to_json_text(value: &Value) -> Result<String> {
    serde_json::to_string(value)
        .map_err(|e| Error::invalid(BACKEND, format!("document is not valid JSON: {e}")))
}

async fn put_on(
    sql: &Statements,
    conn: &mut MySqlConnection,
    collection: &str,
    id: &str,
    value: &Value,
    options: &PutDocumentOptions,
) -> Result<Revision> {
    check_document(BACKEND, &capabilities(), value, options)?;
    let doc = to_json_text(value)?;
    let ttl = ttl_micros(options.ttl)?;
    let err = |e| map_err(e, "put");
    match options.condition {
        WriteCondition::Any => {
            let done = sqlx::query(&sql.put_any)
                .bind(collection)
                .bind(id.as_bytes())
                .bind(&doc)
                .bind(ttl)
                .execute(&mut *conn)
                .await
                .map_err(err)?;
            // 1 row: inserted; 2 rows: updated, the new revision set by LAST_INSERT_ID(expr).
            if done.rows_affected() == 1 {
                Ok(Revision(1))
            } else {
                Ok(Revision(done.last_insert_id()))
            }
        }
        WriteCondition::Absent => {
            let insert = || {
                sqlx::query(&sql.insert)
                    .bind(collection)
                    .bind(id.as_bytes())
                    .bind(&doc)
                    .bind(ttl)
            };
            match insert().execute(&mut *conn).await {
                Ok(_) => Ok(Revision(1)),
                Err(e) if is_duplicate(&e) => {
                    // An expired document is absent: remove it and try once more. A racing
                    // creator may still win, and then this one reports AlreadyExists.
                    let removed = sqlx::query(&sql.delete_expired)
                        .bind(collection)
                        .bind(id.as_bytes())
                        .execute(&mut *conn)
                        .await
                        .map_err(err)?;
                    if removed.rows_affected() == 0 {
                        return Err(already_exists(collection, id));
                    }
                    match insert().execute(&mut *conn).await {
                        Ok(_) => Ok(Revision(1)),
                        Err(e) if is_duplicate(&e) => Err(already_exists(collection, id)),
                        Err(e) => Err(err(e)),
                    }
                }
                Err(e) => Err(err(e)),
            }
        }
        WriteCondition::Revision(r) => {
            let done = sqlx::query(&sql.put_revision)
                .bind(&doc)
                .bind(ttl)
                .bind(collection)
                .bind(id.as_bytes())
                .bind(revision_param(r)?)
                .execute(&mut *conn)
                .await
                .map_err(err)?;
            if done.rows_affected() == 1 {
                Ok(Revision(r.0 + 1))
            } else {
                Err(precondition(collection, id))
            }
        }
    }
}

async fn delete_on(
    sql: &Statements,
    conn: &mut MySqlConnection,
    collection: &str,
    id: &str,
    condition: WriteCondition,
) -> Result<bool> {
    let err = |e| map_err(e, "delete");
    match condition {
        WriteCondition::Any => {
            // An expired row stays for the purge; it is absent either way.
            let done = sqlx::query(&sql.delete_live)
                .bind(collection)
                .bind(id.as_bytes())
                .execute(&mut *conn)
                .await
                .map_err(err)?;
            Ok(done.rows_affected() > 0)
        }
        WriteCondition::Absent => {
            let row = sqlx::query(&sql.exists)
                .bind(collection)
                .bind(id.as_bytes())
                .fetch_optional(&mut *conn)
                .await
                .map_err(err)?;
            match row {
                Some(_) => Err(already_exists(collection, id)),
                None => Ok(false),
            }
        }
        WriteCondition::Revision(r) => {
            let done = sqlx::query(&sql.delete_revision)
                .bind(collection)
                .bind(id.as_bytes())
                .bind(revision_param(r)?)
                .execute(&mut *conn)
                .await
                .map_err(err)?;
            if done.rows_affected() > 0 {
                Ok(true)
            } else {
                Err(precondition(collection, id))
            }
        }
    }
}

fn check_op(op: &WriteOp) -> Result<()> {
    match op {
        WriteOp::Put {
            collection,
            id,
            value,
            options,
        } => {
            check_names(collection, id)?;
            check_document(BACKEND, &capabilities(), value, options)?;
            ttl_micros(options.ttl)?;
            Ok(())
        }
        WriteOp::Delete { collection, id, .. } => check_names(collection, id),
    }
}

#[async_trait]
impl DocumentStore for MysqlDocumentStore {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            backend: BACKEND.to_string(),
            location: self.location.clone(),
        }
    }

    fn capabilities(&self) -> DatabaseCapabilities {
        capabilities()
    }

    async fn get(&self, collection: &str, id: &str) -> Result<Option<Document>> {
        check_names(collection, id)?;
        let span = tracing::debug_span!("document_store.get", backend = BACKEND, collection);
        self.deadline("get", async {
            let row = sqlx::query(&self.sql.get)
                .bind(collection)
                .bind(id.as_bytes())
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| map_err(e, "get"))?;
            row.as_ref().map(row_to_document).transpose()
        })
        .instrument(span)
        .await
    }

    async fn get_many(&self, collection: &str, ids: &[String]) -> Result<Vec<Option<Document>>> {
        validate::resource_name(BACKEND, "collection", collection)?;
        for id in ids {
            validate::document_id(BACKEND, id)?;
        }
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let span = tracing::debug_span!(
            "document_store.get_many",
            backend = BACKEND,
            collection,
            count = ids.len()
        );
        self.deadline("get_many", async {
            let mut found = HashMap::with_capacity(ids.len());
            // Bounded IN lists: a very long list would hit the server's placeholder limit.
            for chunk in ids.chunks(500) {
                let marks = vec!["?"; chunk.len()].join(", ");
                let sql = format!(
                    "SELECT id, doc, revision, expires_at FROM `{}` \
                     WHERE collection = ? AND id IN ({marks}) AND {}",
                    self.table,
                    live()
                );
                let mut q = sqlx::query(&sql).bind(collection);
                for id in chunk {
                    q = q.bind(id.as_bytes());
                }
                let rows = q
                    .fetch_all(&self.pool)
                    .await
                    .map_err(|e| map_err(e, "get_many"))?;
                for row in &rows {
                    let doc = row_to_document(row)?;
                    found.insert(doc.id.clone(), doc);
                }
            }
            Ok(ids.iter().map(|id| found.get(id).cloned()).collect())
        })
        .instrument(span)
        .await
    }

    async fn put(
        &self,
        collection: &str,
        id: &str,
        value: Value,
        options: PutDocumentOptions,
    ) -> Result<Revision> {
        check_names(collection, id)?;
        let span = tracing::debug_span!("document_store.put", backend = BACKEND, collection);
        self.deadline("put", async {
            let mut conn = self.pool.acquire().await.map_err(|e| map_err(e, "put"))?;
            put_on(&self.sql, &mut conn, collection, id, &value, &options).await
        })
        .instrument(span)
        .await
    }

    async fn delete(&self, collection: &str, id: &str, condition: WriteCondition) -> Result<bool> {
        check_names(collection, id)?;
        let span = tracing::debug_span!("document_store.delete", backend = BACKEND, collection);
        self.deadline("delete", async {
            let mut conn = self
                .pool
                .acquire()
                .await
                .map_err(|e| map_err(e, "delete"))?;
            delete_on(&self.sql, &mut conn, collection, id, condition).await
        })
        .instrument(span)
        .await
    }

    async fn write_batch(&self, ops: Vec<WriteOp>) -> Result<Vec<WriteOutcome>> {
        for op in &ops {
            check_op(op)?;
        }
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let span = tracing::debug_span!(
            "document_store.write_batch",
            backend = BACKEND,
            count = ops.len()
        );
        self.deadline("write_batch", async {
            let mut tx = self
                .pool
                .begin()
                .await
                .map_err(|e| map_err(e, "write_batch"))?;
            let mut outcomes = Vec::with_capacity(ops.len());
            for op in &ops {
                let outcome = match op {
                    WriteOp::Put {
                        collection,
                        id,
                        value,
                        options,
                    } => put_on(&self.sql, &mut tx, collection, id, value, options)
                        .await
                        .map(WriteOutcome::Put),
                    WriteOp::Delete {
                        collection,
                        id,
                        condition,
                    } => delete_on(&self.sql, &mut tx, collection, id, *condition)
                        .await
                        .map(WriteOutcome::Deleted),
                };
                match outcome {
                    Ok(o) => outcomes.push(o),
                    Err(e) => {
                        // If the rollback fails the connection is dropped, which aborts too.
                        let _ = tx.rollback().await;
                        return Err(e);
                    }
                }
            }
            tx.commit().await.map_err(|e| map_err(e, "write_batch"))?;
            Ok(outcomes)
        })
        .instrument(span)
        .await
    }

    async fn query(&self, collection: &str, query: Query) -> Result<QueryPage> {
        validate::resource_name(BACKEND, "collection", collection)?;
        check_capabilities(BACKEND, &capabilities(), &query)?;
        let limit = page_limit(BACKEND, &query)?;
        let cursor = query
            .cursor
            .as_deref()
            .map(|c| Cursor::decode(c, query.order_by.len()))
            .transpose()?;

        // Each distinct field path is extracted once, as a column of a derived table, so
        // that filters and sort keys refer to it by alias (MySQL placeholders cannot repeat).
        let mut paths: Vec<String> = Vec::new();
        let mut alias = |field: &str| -> Result<String> {
            validate_field_path(BACKEND, field)?;
            let i = match paths.iter().position(|p| p == field) {
                Some(i) => i,
                None => {
                    paths.push(field.to_string());
                    paths.len() - 1
                }
            };
            Ok(format!("f{i}"))
        };
        let mut where_binds = Vec::new();
        let mut conditions = Vec::new();
        for filter in &query.filters {
            let f = alias(&filter.field)?;
            conditions.push(filter_sql(&f, filter, &mut where_binds));
        }
        let keys: Vec<SortKey> = query
            .order_by
            .iter()
            .map(|o| Ok(SortKey::new(&alias(&o.field)?, o.direction)))
            .collect::<Result<_>>()?;
        if let Some(cursor) = &cursor {
            conditions.push(after_cursor(&keys, cursor, &mut where_binds));
        }

        let mut binds: Vec<Bind> = Vec::new();
        let mut sql = String::from(
            "SELECT id, doc, revision, expires_at FROM (SELECT id, doc, revision, expires_at",
        );
        for (i, path) in paths.iter().enumerate() {
            sql.push_str(&format!(", JSON_EXTRACT(doc, ?) AS f{i}"));
            let quoted: Vec<String> = path.split('.').map(|s| format!("\"{s}\"")).collect();
            binds.push(Bind::Text(format!("$.{}", quoted.join("."))));
        }
        sql.push_str(&format!(
            " FROM `{}` WHERE collection = ? AND {}) AS d",
            self.table,
            live()
        ));
        binds.push(Bind::Text(collection.to_string()));
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        binds.extend(where_binds);
        sql.push_str(" ORDER BY ");
        for key in &keys {
            let dir = key.dir();
            sql.push_str(&format!(
                "{} {dir}, {} {dir}, {} {dir}, {} {dir}, ",
                key.rank, key.num, key.text, key.boolean
            ));
        }
        sql.push_str("id ASC LIMIT ?");
        binds.push(Bind::I64(i64::try_from(limit + 1).unwrap_or(i64::MAX)));

        let span = tracing::debug_span!(
            "document_store.query",
            backend = BACKEND,
            collection,
            filters = query.filters.len()
        );
        self.deadline("query", async {
            self.purge_expired(collection).await;
            let mut q = sqlx::query(&sql);
            for b in binds {
                q = b.bind_to(q);
            }
            let rows = q
                .fetch_all(&self.pool)
                .await
                .map_err(|e| map_err(e, "query"))?;
            let mut documents = rows
                .iter()
                .map(row_to_document)
                .collect::<Result<Vec<_>>>()?;
            let next_cursor = if documents.len() > limit {
                documents.truncate(limit);
                documents
                    .last()
                    .map(|d| Cursor::after(d, &query.order_by).encode())
            } else {
                None
            };
            Ok(QueryPage {
                documents,
                next_cursor,
            })
        })
        .instrument(span)
        .await
    }
}

// ---------------------------------------------------------------------------------------
// Query translation

enum Bind {
    Text(String),
    Bytes(Vec<u8>),
    F64(f64),
    I64(i64),
    Bool(bool),
}

impl Bind {
    fn bind_to<'q>(
        self,
        q: SqlxQuery<'q, MySql, MySqlArguments>,
    ) -> SqlxQuery<'q, MySql, MySqlArguments> {
        match self {
            Bind::Text(v) => q.bind(v),
            Bind::Bytes(v) => q.bind(v),
            Bind::F64(v) => q.bind(v),
            Bind::I64(v) => q.bind(v),
            Bind::Bool(v) => q.bind(v),
        }
    }
}

const NUMBER_TYPES: &str = "('INTEGER', 'DOUBLE', 'DECIMAL', 'UNSIGNED INTEGER')";

fn num_expr(f: &str) -> String {
    format!("(CASE WHEN JSON_TYPE({f}) IN {NUMBER_TYPES} THEN CAST({f} AS DOUBLE) END)")
}

fn text_expr(f: &str) -> String {
    format!("(CASE WHEN JSON_TYPE({f}) = 'STRING' THEN CAST(JSON_UNQUOTE({f}) AS BINARY) END)")
}

fn bool_expr(f: &str) -> String {
    format!("(CASE WHEN JSON_TYPE({f}) = 'BOOLEAN' THEN ({f} = 'true') END)")
}

/// JSON equality of the field `f` with `v` (numbers numerically), never NULL.
fn eq_sql(f: &str, v: &Value, binds: &mut Vec<Bind>) -> String {
    match v {
        Value::Number(n) => {
            binds.push(Bind::F64(n.as_f64().unwrap_or(f64::NAN)));
            format!("COALESCE({} = ?, FALSE)", num_expr(f))
        }
        Value::String(s) => {
            binds.push(Bind::Bytes(s.as_bytes().to_vec()));
            format!("COALESCE({} = CAST(? AS BINARY), FALSE)", text_expr(f))
        }
        Value::Bool(b) => {
            binds.push(Bind::Bool(*b));
            format!("COALESCE({} = ?, FALSE)", bool_expr(f))
        }
        Value::Null => format!("COALESCE(JSON_TYPE({f}) = 'NULL', FALSE)"),
        Value::Array(_) | Value::Object(_) => {
            let ty = if v.is_array() { "ARRAY" } else { "OBJECT" };
            binds.push(Bind::Text(v.to_string()));
            format!("COALESCE(JSON_TYPE({f}) = '{ty}' AND JSON_EQUALS({f}, ?), FALSE)")
        }
    }
}

fn filter_sql(f: &str, filter: &Filter, binds: &mut Vec<Bind>) -> String {
    let cmp = |op: &str, v: &Value, binds: &mut Vec<Bind>| -> String {
        match v {
            Value::Number(n) => {
                binds.push(Bind::F64(n.as_f64().unwrap_or(f64::NAN)));
                format!("COALESCE({} {op} ?, FALSE)", num_expr(f))
            }
            Value::String(s) => {
                binds.push(Bind::Bytes(s.as_bytes().to_vec()));
                format!("COALESCE({} {op} CAST(? AS BINARY), FALSE)", text_expr(f))
            }
            Value::Bool(b) => {
                binds.push(Bind::Bool(*b));
                format!("COALESCE({} {op} ?, FALSE)", bool_expr(f))
            }
            // No order is defined for null, arrays and objects: nothing matches.
            _ => "FALSE".to_string(),
        }
    };
    match &filter.op {
        FilterOp::Eq(v) => eq_sql(f, v, binds),
        FilterOp::Ne(v) => format!("({f} IS NOT NULL AND NOT {})", eq_sql(f, v, binds)),
        FilterOp::Lt(v) => cmp("<", v, binds),
        FilterOp::Le(v) => cmp("<=", v, binds),
        FilterOp::Gt(v) => cmp(">", v, binds),
        FilterOp::Ge(v) => cmp(">=", v, binds),
        FilterOp::In(vs) if vs.is_empty() => "FALSE".to_string(),
        FilterOp::In(vs) => {
            let any: Vec<String> = vs.iter().map(|v| eq_sql(f, v, binds)).collect();
            format!("({})", any.join(" OR "))
        }
        FilterOp::Prefix(p) => {
            binds.push(Bind::I64(i64::try_from(p.len()).unwrap_or(i64::MAX)));
            binds.push(Bind::Bytes(p.as_bytes().to_vec()));
            format!(
                "COALESCE(LEFT({}, ?) = CAST(? AS BINARY), FALSE)",
                text_expr(f)
            )
        }
    }
}

struct SortKey {
    rank: String,
    num: String,
    text: String,
    boolean: String,
    direction: Direction,
}

impl SortKey {
    fn new(f: &str, direction: Direction) -> Self {
        Self {
            rank: format!(
                "(CASE WHEN {f} IS NULL THEN 0 ELSE CASE JSON_TYPE({f}) \
                 WHEN 'NULL' THEN 1 WHEN 'BOOLEAN' THEN 2 WHEN 'STRING' THEN 4 \
                 WHEN 'ARRAY' THEN 5 WHEN 'OBJECT' THEN 6 ELSE 3 END END)"
            ),
            num: num_expr(f),
            text: text_expr(f),
            boolean: bool_expr(f),
            direction,
        }
    }

    fn dir(&self) -> &'static str {
        match self.direction {
            Direction::Asc => "ASC",
            Direction::Desc => "DESC",
        }
    }
}

/// Rows strictly after the cursor position in the query order. Binds are pushed in the
/// textual order of their placeholders.
fn after_cursor(keys: &[SortKey], cursor: &Cursor, binds: &mut Vec<Bind>) -> String {
    // Each alternative is "equal on keys 0..j, after on key j"; built as (sql, binds) pairs
    // so placeholders and binds stay in step.
    let mut alternatives: Vec<(String, Vec<Bind>)> = Vec::new();
    for j in 0..=keys.len() {
        let mut parts = Vec::new();
        let mut part_binds = Vec::new();
        for (key, (rank, value)) in keys.iter().zip(&cursor.keys).take(j) {
            let (sql, b) = key_equal(key, *rank, value);
            parts.push(sql);
            part_binds.extend(b);
        }
        if let (Some(key), Some((rank, value))) = (keys.get(j), cursor.keys.get(j)) {
            let (sql, b) = key_after(key, *rank, value);
            parts.push(sql);
            part_binds.extend(b);
        } else {
            parts.push("id > ?".to_string());
            part_binds.push(Bind::Bytes(cursor.id.as_bytes().to_vec()));
        }
        alternatives.push((format!("({})", parts.join(" AND ")), part_binds));
    }
    let mut sql = Vec::new();
    for (s, b) in alternatives {
        sql.push(s);
        binds.extend(b);
    }
    format!("({})", sql.join(" OR "))
}

fn typed(key: &SortKey, rank: u8, value: &Value) -> Option<(String, Bind, &'static str)> {
    match (rank, value) {
        (2, Value::Bool(b)) => Some((key.boolean.clone(), Bind::Bool(*b), "?")),
        (3, Value::Number(n)) => Some((
            key.num.clone(),
            Bind::F64(n.as_f64().unwrap_or(f64::NAN)),
            "?",
        )),
        (4, Value::String(s)) => Some((
            key.text.clone(),
            Bind::Bytes(s.as_bytes().to_vec()),
            "CAST(? AS BINARY)",
        )),
        _ => None,
    }
}

fn key_equal(key: &SortKey, rank: u8, value: &Value) -> (String, Vec<Bind>) {
    match typed(key, rank, value) {
        Some((expr, b, mark)) => (
            format!(
                "({} = {rank} AND COALESCE({expr} = {mark}, FALSE))",
                key.rank
            ),
            vec![b],
        ),
        None => (format!("({} = {rank})", key.rank), Vec::new()),
    }
}

fn key_after(key: &SortKey, rank: u8, value: &Value) -> (String, Vec<Bind>) {
    let op = match key.direction {
        Direction::Asc => ">",
        Direction::Desc => "<",
    };
    match typed(key, rank, value) {
        Some((expr, b, mark)) => (
            format!(
                "({r} {op} {rank} OR ({r} = {rank} AND COALESCE({expr} {op} {mark}, FALSE)))",
                r = key.rank
            ),
            vec![b],
        ),
        None => (format!("({} {op} {rank})", key.rank), Vec::new()),
    }
}

// ---------------------------------------------------------------------------------------
// Cursors

/// A keyset cursor: the last document's (type rank, value) per order key, and its id.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Cursor {
    #[serde(rename = "k")]
    keys: Vec<(u8, Value)>,
    id: String,
}

fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |v, segment| v.get(segment))
}

impl Cursor {
    fn after(doc: &Document, order_by: &[OrderBy]) -> Self {
        let keys = order_by
            .iter()
            .map(|o| match lookup(&doc.value, &o.field) {
                None => (0, Value::Null),
                Some(Value::Null) => (1, Value::Null),
                Some(v @ Value::Bool(_)) => (2, v.clone()),
                Some(v @ Value::Number(_)) => (3, v.clone()),
                Some(v @ Value::String(_)) => (4, v.clone()),
                Some(Value::Array(_)) => (5, Value::Null),
                Some(Value::Object(_)) => (6, Value::Null),
            })
            .collect();
        Self {
            keys,
            id: doc.id.clone(),
        }
    }

    fn encode(&self) -> String {
        hex::encode(serde_json::to_vec(self).unwrap_or_default())
    }

    fn decode(text: &str, order_keys: usize) -> Result<Self> {
        let invalid = || Error::invalid(BACKEND, "invalid query cursor");
        let bytes = hex::decode(text).map_err(|_| invalid())?;
        let cursor: Cursor = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
        let consistent = cursor.keys.len() == order_keys
            && cursor.keys.iter().all(|(rank, v)| match rank {
                0 | 1 | 5 | 6 => v.is_null(),
                2 => v.is_boolean(),
                3 => v.is_number(),
                4 => v.is_string(),
                _ => false,
            });
        if !consistent || validate::document_id(BACKEND, &cursor.id).is_err() {
            return Err(invalid());
        }
        Ok(cursor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let doc = Document {
            id: "x".into(),
            value: serde_json::json!({"a": 1, "b": "s"}),
            revision: Revision(1),
            expires_at: None,
        };
        let order = vec![
            OrderBy {
                field: "a".into(),
                direction: Direction::Asc,
            },
            OrderBy {
                field: "missing".into(),
                direction: Direction::Desc,
            },
        ];
        let c = Cursor::after(&doc, &order).encode();
        let back = Cursor::decode(&c, 2).unwrap();
        assert_eq!(back.id, "x");
        assert_eq!(back.keys[0].0, 3);
        assert_eq!(back.keys[1].0, 0);
        assert!(Cursor::decode(&c, 1).is_err());
        assert!(Cursor::decode("zz", 0).is_err());
    }
}
