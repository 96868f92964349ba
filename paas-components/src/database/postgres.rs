//! PostgreSQL document store (`postgres://`), through sqlx.
//!
//! # Storage layout
//!
//! All collections of one store share **one table** (default `cloud_documents`, see
//! [`PostgresDocumentStore::connect_table`]), keyed by `(collection, id)`:
//!
//! ```sql
//! CREATE TABLE IF NOT EXISTS "cloud_documents" (
//!     collection TEXT COLLATE "C" NOT NULL,
//!     id         TEXT COLLATE "C" NOT NULL,
//!     doc        JSONB NOT NULL,
//!     revision   BIGINT NOT NULL,
//!     expires_at TIMESTAMPTZ NULL,
//!     PRIMARY KEY (collection, id)
//! )
//! ```
//!
//! One shared table rather than one table per collection, because collections come into
//! being with their first write: a table per collection would put DDL (and its catalog locks
//! and races between processes) on the write path, leave an empty table behind for every
//! short-lived collection, and need a cache that goes stale when another process drops a
//! table. With one table the schema is created once, at connect; the collection name is a
//! bound value, never part of the SQL text; and the primary key `(collection, id)` serves
//! both single-document access and id-ordered scans of one collection. `COLLATE "C"` makes
//! ids sort by their UTF-8 bytes, as the portable contract requires.
//!
//! # Semantics
//!
//! - Conditional writes are single statements: `INSERT … ON CONFLICT … DO UPDATE … WHERE`
//!   for create-only and unconditional puts, `UPDATE … WHERE revision = $n RETURNING
//!   revision` for revision-conditional ones, so two racing writers never both win.
//! - A new document (or one whose TTL has passed) starts at revision 1; every write adds 1.
//! - TTL: `expires_at` is computed with the server's clock (`now()`), and every read filters
//!   expired rows out, so they are absent at once; expired rows are deleted lazily by
//!   queries (at most once a minute per collection, in bounded batches).
//! - [`write_batch`](DocumentStore::write_batch) runs in one transaction that is rolled back
//!   at the first failing operation, whose error is returned.
//! - Queries are translated to parameterised SQL; no value, field name or collection name
//!   is ever written into the SQL text. A field path `a.b` becomes `doc -> $1 -> $2` with the
//!   segments as text parameters (`->` with a text key only descends into objects, exactly
//!   like the reference [`lookup`](cloud_abstraction::database::matches_filters); `#>` would
//!   also index arrays). Range filters check `jsonb_typeof` first (no cross-type matches);
//!   numbers compare as `numeric`, strings with `COLLATE "C"` (byte order). Ordering follows
//!   the reference total order (missing < null < bool < number < string < array < object),
//!   then the id.
//! - Cursors are opaque keyset cursors (the last document's sort key and id), so pages stay
//!   consistent while documents are written between pages.
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
//! [`Unauthenticated`](ErrorKind::Unauthenticated) ("TLS handshake failed: certificate not
//! trusted: …", "… name mismatch: the server's certificate is not valid for `HOST` …"): not
//! retryable, the configuration has to change. A server without TLS under a mode that needs
//! it is [`Unavailable`](ErrorKind::Unavailable). An unknown `sslmode` is `InvalidArgument`.
//!
//! # Failures
//!
//! Every pool acquisition times out (5 s by default) and every operation has an overall
//! deadline ([`PostgresDocumentStore::with_operation_timeout`], 30 s by default), so a call
//! never hangs when the server is gone: it fails with a retryable
//! [`Unavailable`](ErrorKind::Unavailable) or [`DeadlineExceeded`](ErrorKind::DeadlineExceeded),
//! and the same handle works again once the server is back (broken connections are tested
//! and replaced by the pool). Unique violations map to `AlreadyExists`, serialization
//! failures and deadlocks to `Unavailable`; the URL is never part of an error or a log.

use super::common::{check_capabilities, check_document, page_limit};
use async_trait::async_trait;
use cloud_abstraction::database::{
    DatabaseCapabilities, Direction, Document, DocumentStore, Filter, FilterOp, OrderBy,
    PutDocumentOptions, Query, QueryPage, Revision, WriteCondition, WriteOp, WriteOutcome,
    validate_field_path,
};
use cloud_abstraction::{BackendInfo, Error, ErrorKind, Location, Result, validate};
use serde_json::Value;
use sqlx::postgres::{PgArguments, PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::types::Json;
use sqlx::{Arguments, PgConnection, Row};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tracing::Instrument;

const BACKEND: &str = "postgres";
const PURGE_INTERVAL: Duration = Duration::from_secs(60);
const PURGE_BATCH: i64 = 1000;

/// A [`DocumentStore`] on PostgreSQL (backend name `"postgres"`).
///
/// ```no_run
/// # async fn demo() -> cloud_abstraction::Result<()> {
/// use cloud_abstraction::database::{DocumentStore, PutDocumentOptions};
/// use paas_components::database::PostgresDocumentStore;
///
/// let store = PostgresDocumentStore::connect("postgres://postgres@127.0.0.1/test").await?;
/// let rev = store
///     .put("cars", "VIN1", serde_json::json!({"km": 12}), PutDocumentOptions::create())
///     .await?;
/// assert_eq!(rev.0, 1);
/// # Ok(()) }
/// ```
pub struct PostgresDocumentStore {
    pool: PgPool,
    table: String,
    sql: Statements,
    location: Location,
    operation_timeout: Duration,
    last_purge: Mutex<HashMap<String, Instant>>,
}

impl std::fmt::Debug for PostgresDocumentStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the URL or the connect options: they may hold a password.
        f.debug_struct("PostgresDocumentStore")
            .field("table", &self.table)
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

/// The fixed statements, formatted once with the (validated, quoted) table name.
struct Statements {
    get: String,
    get_many: String,
    put_any: String,
    put_absent: String,
    put_revision: String,
    delete_any: String,
    delete_revision: String,
    exists: String,
    purge: String,
}

/// Rows are live when they have no TTL or it has not passed yet.
const LIVE: &str = "(expires_at IS NULL OR expires_at > now())";
/// `expires_at` as microseconds since the Unix epoch (sqlx is built without a time crate).
const EXPIRES_US: &str = "(extract(epoch from expires_at) * 1000000)::bigint";

impl Statements {
    fn new(t: &str) -> Self {
        // $5: TTL in microseconds or NULL.
        let expires = "now() + $5::bigint * interval '1 microsecond'";
        let expired = format!("({t}.expires_at IS NOT NULL AND {t}.expires_at <= now())");
        Self {
            get: format!(
                "SELECT id, doc, revision, {EXPIRES_US} AS expires_us FROM {t} \
                 WHERE collection = $1 AND id = $2 AND {LIVE}"
            ),
            get_many: format!(
                "SELECT id, doc, revision, {EXPIRES_US} AS expires_us FROM {t} \
                 WHERE collection = $1 AND id = ANY($2) AND {LIVE}"
            ),
            put_any: format!(
                "INSERT INTO {t} AS {t} (collection, id, doc, revision, expires_at) \
                 VALUES ($1, $2, $3, 1, {expires}) \
                 ON CONFLICT (collection, id) DO UPDATE SET doc = EXCLUDED.doc, \
                 revision = CASE WHEN {expired} THEN 1 ELSE {t}.revision + 1 END, \
                 expires_at = EXCLUDED.expires_at \
                 RETURNING revision, {EXPIRES_US}"
            ),
            put_absent: format!(
                "INSERT INTO {t} AS {t} (collection, id, doc, revision, expires_at) \
                 VALUES ($1, $2, $3, 1, {expires}) \
                 ON CONFLICT (collection, id) DO UPDATE SET doc = EXCLUDED.doc, revision = 1, \
                 expires_at = EXCLUDED.expires_at WHERE {expired} \
                 RETURNING revision, {EXPIRES_US}"
            ),
            put_revision: format!(
                "UPDATE {t} SET doc = $3, revision = revision + 1, expires_at = {expires} \
                 WHERE collection = $1 AND id = $2 AND revision = $4 AND {LIVE} \
                 RETURNING revision, {EXPIRES_US}"
            ),
            delete_any: format!(
                "DELETE FROM {t} WHERE collection = $1 AND id = $2 RETURNING {LIVE} AS live"
            ),
            delete_revision: format!(
                "DELETE FROM {t} WHERE collection = $1 AND id = $2 AND revision = $3 AND {LIVE} \
                 RETURNING true AS live"
            ),
            exists: format!("SELECT 1 FROM {t} WHERE collection = $1 AND id = $2 AND {LIVE}"),
            purge: format!(
                "DELETE FROM {t} WHERE ctid IN (SELECT ctid FROM {t} WHERE collection = $1 \
                 AND expires_at IS NOT NULL AND expires_at <= now() LIMIT $2)"
            ),
        }
    }
}

impl PostgresDocumentStore {
    /// The table used by [`connect`](Self::connect).
    pub const DEFAULT_TABLE: &'static str = "cloud_documents";

    /// Connects to `url` (`postgres://user:password@host:port/database`) and makes sure the
    /// [`DEFAULT_TABLE`](Self::DEFAULT_TABLE) exists.
    ///
    /// Fails with `InvalidArgument` for a malformed URL, `Unavailable` when the server cannot
    /// be reached (within the 5 s acquire timeout). The URL never appears in an error.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_table(url, Self::DEFAULT_TABLE).await
    }

    /// Like [`connect`](Self::connect), with the documents in `table` (a
    /// [resource name](validate::resource_name)), e.g. one table per application or test run.
    pub async fn connect_table(url: &str, table: &str) -> Result<Self> {
        validate::resource_name(BACKEND, "table", table)?;
        let url = crate::tls::sql_url(BACKEND, url, crate::tls::SqlDialect::Postgres)?;
        let options = PgConnectOptions::from_str(&url).map_err(|_| {
            // Not the parser's message: it may quote the URL.
            Error::invalid(BACKEND, "invalid PostgreSQL URL")
        })?;
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(5))
            .idle_timeout(Some(Duration::from_secs(300)))
            .connect_with(options)
            .await
            .map_err(|e| map_err(e, "connect"))?;
        let quoted = format!("\"{table}\"");
        let store = Self {
            pool,
            sql: Statements::new(&quoted),
            table: table.to_string(),
            location: Location::new("postgres", "local"),
            operation_timeout: Duration::from_secs(30),
            last_purge: Mutex::new(HashMap::new()),
        };
        store.create_schema().await?;
        Ok(store)
    }

    /// Sets where the server runs (default: provider `postgres`, region `local`).
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
    /// API does not cover (reports, migrations, dropping the table). Writes made through it
    /// bypass revision bookkeeping unless they maintain the `revision` column themselves.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn create_schema(&self) -> Result<()> {
        let t = format!("\"{}\"", self.table);
        let ddl = format!(
            "CREATE TABLE IF NOT EXISTS {t} (\
             collection TEXT COLLATE \"C\" NOT NULL, \
             id TEXT COLLATE \"C\" NOT NULL, \
             doc JSONB NOT NULL, \
             revision BIGINT NOT NULL, \
             expires_at TIMESTAMPTZ NULL, \
             PRIMARY KEY (collection, id))"
        );
        match sqlx::query(&ddl).execute(&self.pool).await {
            Ok(_) => Ok(()),
            // Two processes creating the table at once: the loser sees a unique violation on
            // the catalog, or "already exists"; either way the table is there.
            Err(sqlx::Error::Database(db))
                if matches!(db.code().as_deref(), Some("23505" | "42P07")) =>
            {
                Ok(())
            }
            Err(e) => Err(map_err(e, "create table")),
        }
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
                .bind(PURGE_BATCH)
                .execute(&self.pool)
                .await
            {
                tracing::debug!(backend = BACKEND, error = %e, "purging expired documents failed");
            }
        }
    }
}

fn capabilities() -> DatabaseCapabilities {
    // Everything, with documents up to 1 MiB serialized (jsonb could hold more; the limit
    // keeps the backends alike).
    DatabaseCapabilities::full()
}

fn ttl_micros(ttl: Option<Duration>) -> Result<Option<i64>> {
    match ttl {
        None => Ok(None),
        Some(d) => i64::try_from(d.as_micros())
            .map(Some)
            .map_err(|_| Error::invalid(BACKEND, "ttl is too long")),
    }
}

fn expires_from_micros(us: Option<i64>) -> Option<SystemTime> {
    us.and_then(|us| {
        let us = u64::try_from(us).ok()?;
        UNIX_EPOCH.checked_add(Duration::from_micros(us))
    })
}

fn revision_from(rev: i64) -> Result<Revision> {
    u64::try_from(rev)
        .map(Revision)
        .map_err(|_| Error::internal(BACKEND, "negative revision in the table"))
}

fn revision_param(rev: Revision) -> Result<i64> {
    // A revision beyond i64 cannot be stored, so it cannot be current either.
    i64::try_from(rev.0).map_err(|_| {
        Error::new(
            ErrorKind::PreconditionFailed,
            BACKEND,
            "revision does not match",
        )
    })
}

fn row_to_document(row: &PgRow) -> Result<Document> {
    let decode = |e: sqlx::Error| map_err(e, "decode row");
    let id: String = row.try_get("id").map_err(decode)?;
    let Json(value): Json<Value> = row.try_get("doc").map_err(decode)?;
    let revision: i64 = row.try_get("revision").map_err(decode)?;
    let expires: Option<i64> = row.try_get("expires_us").map_err(decode)?;
    Ok(Document {
        id,
        value,
        revision: revision_from(revision)?,
        expires_at: expires_from_micros(expires),
    })
}

/// Maps a sqlx error to the portable kinds. The message names the operation only: sqlx's
/// own text stays reachable as `source()` (it never holds the URL for runtime errors).
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
            // Its text may quote connection settings: keep it out entirely.
            return Error::invalid(BACKEND, format!("{operation}: invalid configuration"));
        }
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            match code.as_str() {
                "23505" => ErrorKind::AlreadyExists,
                "40001" | "40P01" => ErrorKind::Unavailable,
                "57014" => ErrorKind::DeadlineExceeded,
                "42501" => ErrorKind::PermissionDenied,
                c if c.starts_with("08") || c.starts_with("57P") => ErrorKind::Unavailable,
                c if c.starts_with("53") => ErrorKind::ResourceExhausted,
                c if c.starts_with("28") => ErrorKind::Unauthenticated,
                // Data exceptions: e.g. `\u0000` in a string, which jsonb cannot hold.
                c if c.starts_with("22") => ErrorKind::InvalidArgument,
                _ => ErrorKind::Internal,
            }
        }
        _ => ErrorKind::Internal,
    };
    Error::new(kind, BACKEND, format!("{operation} failed: {e}")).with_source(e)
}

fn check_names(collection: &str, id: &str) -> Result<()> {
    validate::resource_name(BACKEND, "collection", collection)?;
    validate::document_id(BACKEND, id)
}

fn precondition(message: &str) -> Error {
    Error::new(ErrorKind::PreconditionFailed, BACKEND, message.to_string())
}

async fn put_on(
    sql: &Statements,
    conn: &mut PgConnection,
    collection: &str,
    id: &str,
    value: &Value,
    options: &PutDocumentOptions,
) -> Result<Revision> {
    check_document(BACKEND, &capabilities(), value, options)?;
    let json = Json(value);
    let ttl = ttl_micros(options.ttl)?;
    let (statement, rev) = match options.condition {
        WriteCondition::Any => (&sql.put_any, None),
        WriteCondition::Absent => (&sql.put_absent, None),
        WriteCondition::Revision(r) => (&sql.put_revision, Some(revision_param(r)?)),
    };
    // Every put statement takes the same five parameters ($4 is unused by the inserts; its
    // type is sent explicitly, so the server accepts it).
    let row = sqlx::query(statement)
        .bind(collection)
        .bind(id)
        .bind(json)
        .bind(rev)
        .bind(ttl)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| map_err(e, "put"))?;
    match row {
        Some(row) => {
            let rev: i64 = row.try_get(0).map_err(|e| map_err(e, "put"))?;
            revision_from(rev)
        }
        None => Err(match options.condition {
            WriteCondition::Absent => Error::new(
                ErrorKind::AlreadyExists,
                BACKEND,
                format!("document `{id}` already exists in `{collection}`"),
            ),
            _ => precondition(&format!(
                "document `{id}` in `{collection}` is not at the expected revision"
            )),
        }),
    }
}

async fn delete_on(
    sql: &Statements,
    conn: &mut PgConnection,
    collection: &str,
    id: &str,
    condition: WriteCondition,
) -> Result<bool> {
    match condition {
        WriteCondition::Any => {
            let row = sqlx::query(&sql.delete_any)
                .bind(collection)
                .bind(id)
                .fetch_optional(&mut *conn)
                .await
                .map_err(|e| map_err(e, "delete"))?;
            match row {
                Some(row) => row.try_get::<bool, _>(0).map_err(|e| map_err(e, "delete")),
                None => Ok(false),
            }
        }
        WriteCondition::Absent => {
            // "Delete if absent" deletes nothing; it only checks that the document is absent.
            let row = sqlx::query(&sql.exists)
                .bind(collection)
                .bind(id)
                .fetch_optional(&mut *conn)
                .await
                .map_err(|e| map_err(e, "delete"))?;
            if row.is_some() {
                Err(Error::new(
                    ErrorKind::AlreadyExists,
                    BACKEND,
                    format!("document `{id}` exists in `{collection}`"),
                ))
            } else {
                Ok(false)
            }
        }
        WriteCondition::Revision(r) => {
            let row = sqlx::query(&sql.delete_revision)
                .bind(collection)
                .bind(id)
                .bind(revision_param(r)?)
                .fetch_optional(&mut *conn)
                .await
                .map_err(|e| map_err(e, "delete"))?;
            match row {
                Some(_) => Ok(true),
                None => Err(precondition(&format!(
                    "document `{id}` in `{collection}` is not at the expected revision"
                ))),
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
impl DocumentStore for PostgresDocumentStore {
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
                .bind(id)
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
            let rows = sqlx::query(&self.sql.get_many)
                .bind(collection)
                .bind(ids)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| map_err(e, "get_many"))?;
            let mut found = HashMap::with_capacity(rows.len());
            for row in &rows {
                let doc = row_to_document(row)?;
                found.insert(doc.id.clone(), doc);
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
                        // Nothing of the batch may stay; if the rollback itself fails the
                        // connection is dropped, which aborts the transaction too.
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
        let mut b = SqlBuilder::default();
        let coll = b.bind(Bind::Text(collection.to_string()));
        let mut sql = format!(
            "SELECT id, doc, revision, {EXPIRES_US} AS expires_us FROM \"{}\" \
             WHERE collection = {coll} AND {LIVE}",
            self.table
        );
        for filter in &query.filters {
            let cond = b.filter(filter)?;
            sql.push_str(" AND ");
            sql.push_str(&cond);
        }
        let keys: Vec<SortKey> = query
            .order_by
            .iter()
            .map(|o| b.sort_key(o))
            .collect::<Result<_>>()?;
        if let Some(cursor) = &cursor {
            let cond = b.after_cursor(&keys, cursor);
            sql.push_str(" AND ");
            sql.push_str(&cond);
        }
        sql.push_str(" ORDER BY ");
        for key in &keys {
            let dir = key.dir();
            sql.push_str(&format!(
                "{} {dir}, {} {dir}, {} {dir}, {} {dir}, ",
                key.rank, key.num, key.text, key.boolean
            ));
        }
        let lim = b.bind(Bind::I64(i64::try_from(limit + 1).unwrap_or(i64::MAX)));
        sql.push_str(&format!("id ASC LIMIT {lim}"));

        let span = tracing::debug_span!(
            "document_store.query",
            backend = BACKEND,
            collection,
            filters = query.filters.len()
        );
        self.deadline("query", async {
            self.purge_expired(collection).await;
            let rows = sqlx::query_with(&sql, b.args)
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
    Json(Value),
    I64(i64),
    Bool(bool),
}

#[derive(Default)]
struct SqlBuilder {
    args: PgArguments,
    n: usize,
    paths: HashMap<String, String>,
}

/// The four sort expressions of one order key (only one of num/text/boolean is non-NULL
/// for a row; `rank` orders the JSON types like the reference).
struct SortKey {
    rank: String,
    num: String,
    text: String,
    boolean: String,
    direction: Direction,
}

impl SortKey {
    fn dir(&self) -> &'static str {
        match self.direction {
            Direction::Asc => "ASC",
            Direction::Desc => "DESC",
        }
    }
}

impl SqlBuilder {
    fn bind(&mut self, value: Bind) -> String {
        // Encoding into PgArguments only fails for values too large for the protocol; such a
        // value then fails the statement, which reports it.
        let r = match value {
            Bind::Text(s) => self.args.add(s),
            Bind::Json(v) => self.args.add(Json(v)),
            Bind::I64(v) => self.args.add(v),
            Bind::Bool(v) => self.args.add(v),
        };
        if let Err(e) = r {
            tracing::debug!(backend = BACKEND, error = %e, "binding a query parameter failed");
        }
        self.n += 1;
        format!("${}", self.n)
    }

    /// `doc -> $a -> $b`, binding each segment once per distinct path.
    fn path(&mut self, field: &str) -> Result<String> {
        validate_field_path(BACKEND, field)?;
        if let Some(p) = self.paths.get(field) {
            return Ok(p.clone());
        }
        let mut expr = String::from("doc");
        for segment in field.split('.') {
            let p = self.bind(Bind::Text(segment.to_string()));
            expr = format!("({expr} -> {p}::text)");
        }
        self.paths.insert(field.to_string(), expr.clone());
        Ok(expr)
    }

    fn filter(&mut self, filter: &Filter) -> Result<String> {
        let f = self.path(&filter.field)?;
        let cmp = |b: &mut Self, op: &str, v: &Value| -> String {
            match v {
                Value::Number(n) => {
                    let p = b.bind(Bind::Text(n.to_string()));
                    // CASE, not AND: SQL does not promise to short-circuit, and the cast
                    // of a non-number would fail.
                    format!(
                        "((CASE WHEN jsonb_typeof({f}) = 'number' THEN ({f})::numeric END) \
                         {op} {p}::text::numeric)"
                    )
                }
                Value::String(s) => {
                    let p = b.bind(Bind::Text(s.clone()));
                    format!(
                        "(jsonb_typeof({f}) = 'string' AND \
                         (({f}) #>> '{{}}') COLLATE \"C\" {op} {p}::text COLLATE \"C\")"
                    )
                }
                Value::Bool(x) => {
                    let p = b.bind(Bind::Bool(*x));
                    format!(
                        "((CASE WHEN jsonb_typeof({f}) = 'boolean' THEN ({f})::boolean END) \
                         {op} {p}::boolean)"
                    )
                }
                // No order is defined for null, arrays and objects: nothing matches.
                _ => "FALSE".to_string(),
            }
        };
        Ok(match &filter.op {
            // jsonb equality is JSON equality, numbers numerically.
            FilterOp::Eq(v) => {
                let p = self.bind(Bind::Json(v.clone()));
                format!("(({f}) = {p}::jsonb)")
            }
            FilterOp::Ne(v) => {
                let p = self.bind(Bind::Json(v.clone()));
                format!("(({f}) IS NOT NULL AND ({f}) <> {p}::jsonb)")
            }
            FilterOp::Lt(v) => cmp(self, "<", v),
            FilterOp::Le(v) => cmp(self, "<=", v),
            FilterOp::Gt(v) => cmp(self, ">", v),
            FilterOp::Ge(v) => cmp(self, ">=", v),
            FilterOp::In(vs) => {
                let p = self.bind(Bind::Json(Value::Array(vs.clone())));
                format!("(({f}) IN (SELECT value FROM jsonb_array_elements({p}::jsonb)))")
            }
            FilterOp::Prefix(prefix) => {
                let p = self.bind(Bind::Text(prefix.clone()));
                format!(
                    "(jsonb_typeof({f}) = 'string' AND starts_with(({f}) #>> '{{}}', {p}::text))"
                )
            }
        })
    }

    fn sort_key(&mut self, order: &OrderBy) -> Result<SortKey> {
        let f = self.path(&order.field)?;
        Ok(SortKey {
            rank: format!(
                "(CASE WHEN ({f}) IS NULL THEN 0 ELSE CASE jsonb_typeof({f}) \
                 WHEN 'null' THEN 1 WHEN 'boolean' THEN 2 WHEN 'number' THEN 3 \
                 WHEN 'string' THEN 4 WHEN 'array' THEN 5 ELSE 6 END END)"
            ),
            num: format!("(CASE WHEN jsonb_typeof({f}) = 'number' THEN ({f})::numeric END)"),
            text: format!(
                "((CASE WHEN jsonb_typeof({f}) = 'string' THEN ({f}) #>> '{{}}' END) COLLATE \"C\")"
            ),
            boolean: format!("(CASE WHEN jsonb_typeof({f}) = 'boolean' THEN ({f})::boolean END)"),
            direction: order.direction,
        })
    }

    /// Rows strictly after the cursor position in the query order.
    fn after_cursor(&mut self, keys: &[SortKey], cursor: &Cursor) -> String {
        let mut alternatives = Vec::new();
        let mut equal_so_far: Vec<String> = Vec::new();
        for (key, (rank, value)) in keys.iter().zip(&cursor.keys) {
            let after = match key.direction {
                Direction::Asc => ">",
                Direction::Desc => "<",
            };
            let r = self.bind(Bind::I64(i64::from(*rank)));
            let typed = match (rank, value) {
                (2, Value::Bool(x)) => Some((key.boolean.clone(), self.bind(Bind::Bool(*x)), "")),
                (3, Value::Number(n)) => Some((
                    key.num.clone(),
                    self.bind(Bind::Text(n.to_string())),
                    "::text::numeric",
                )),
                (4, Value::String(s)) => Some((
                    key.text.clone(),
                    self.bind(Bind::Text(s.clone())),
                    "::text COLLATE \"C\"",
                )),
                _ => None,
            };
            let (key_after, key_equal) = match typed {
                Some((expr, p, cast)) => (
                    format!(
                        "({rk} {after} {r}::int OR ({rk} = {r}::int AND {expr} {after} {p}{cast}))",
                        rk = key.rank
                    ),
                    format!("({rk} = {r}::int AND {expr} = {p}{cast})", rk = key.rank),
                ),
                None => (
                    format!("({} {after} {r}::int)", key.rank),
                    format!("({} = {r}::int)", key.rank),
                ),
            };
            let mut conj = equal_so_far.clone();
            conj.push(key_after);
            alternatives.push(format!("({})", conj.join(" AND ")));
            equal_so_far.push(key_equal);
        }
        let id = self.bind(Bind::Text(cursor.id.clone()));
        let mut conj = equal_so_far;
        conj.push(format!("id COLLATE \"C\" > {id}::text COLLATE \"C\""));
        alternatives.push(format!("({})", conj.join(" AND ")));
        format!("({})", alternatives.join(" OR "))
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
