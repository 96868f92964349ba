//! The SQL document stores: one store, [`SqlDocumentStore`], over a small per-database
//! dialect ([`dialect::Dialect`]) for PostgreSQL ([`PostgresDocumentStore`], `postgres://` and
//! `postgresql://`, feature `postgres`), MariaDB / MySQL ([`MysqlDocumentStore`], `mysql://`
//! and `mariadb://`, feature `mysql`) and SQLite ([`SqliteDocumentStore`], `sqlite:`, feature
//! `sqlite`), all through sqlx.
//!
//! # Storage layout
//!
//! All collections of one store share **one table**, keyed by `(collection, id)`:
//!
//! | dialect | table (default) | `collection`, `id` | document | `expires_at` |
//! |---|---|---|---|---|
//! | PostgreSQL | `cloud_documents` | `TEXT COLLATE "C"` | `doc JSONB` | `TIMESTAMPTZ` |
//! | MariaDB / MySQL | `cloud_documents` | `VARBINARY(63)`, `VARBINARY(255)` | `doc JSON` | `BIGINT`, µs since the Unix epoch |
//! | SQLite | `documents` | `TEXT` (binary collation) | `value TEXT` (JSON text) | `INTEGER`, ms since the Unix epoch |
//!
//! plus `revision BIGINT` and the primary key `(collection, id)` (SQLite also has an index
//! on `expires_at`). One shared table rather than one table per collection, because
//! collections come into being with their first write: a table per collection would put DDL
//! (and its catalog locks and races between processes) on the write path, leave an empty
//! table behind for every short-lived collection, and need a cache that goes stale when
//! another process drops a table. With one table the schema is created once, at connect; the
//! collection name is a bound value, never part of the SQL text; and the primary key serves
//! both single-document access and id-ordered scans of one collection. The id columns sort
//! by their UTF-8 bytes on every dialect (`COLLATE "C"`, `VARBINARY`, SQLite's `BINARY`),
//! as the portable contract requires; on MariaDB `VARBINARY` also keeps `a` and `a ` apart
//! (no PAD SPACE). The table name is a [resource name](validate::resource_name), chosen with
//! [`connect_table`](SqlDocumentStore::connect_table).
//!
//! # Semantics
//!
//! - Conditional writes are single statements, so two racing writers never both win:
//!   revision-conditional puts and deletes are `UPDATE/DELETE … WHERE revision = ?` (the
//!   row count says whether the condition held). Unconditional and create-only puts are
//!   `INSERT … ON CONFLICT … DO UPDATE [… WHERE expired] RETURNING revision` on PostgreSQL
//!   and SQLite; MariaDB has no `RETURNING` for upserts, so there an unconditional put is
//!   `INSERT … ON DUPLICATE KEY UPDATE` with the new revision coming back through
//!   `LAST_INSERT_ID(expr)`, and a create-only put is a plain `INSERT` whose duplicate-key
//!   error means `AlreadyExists` (an expired row in the way is deleted and the insert retried
//!   once).
//! - A new document (or one whose TTL has passed) starts at revision 1; every write adds 1.
//! - TTL: `expires_at` is computed with the database's clock (the server's for PostgreSQL
//!   and MariaDB, so clients with skewed clocks agree), and every read and condition filters
//!   expired rows out, so they are absent at once; queries delete expired rows lazily (at
//!   most once a minute per collection and store, at most 1000 rows each time).
//! - [`write_batch`](DocumentStore::write_batch) runs in one transaction (SQLite: `BEGIN
//!   IMMEDIATE`, so the write lock is taken up front and a batch never fails half-way on a
//!   lock upgrade), rolled back at the first failing operation, whose error is returned.
//! - Queries are translated to parameterised SQL; no value, field name or collection name
//!   is written into the SQL text. Each distinct field path is extracted once, as a column of
//!   an inner select (PostgreSQL: `doc -> $1 -> $2`, with text keys, which only descend into
//!   objects like the reference [`lookup`](cloud_abstraction::database::paging::lookup);
//!   MariaDB: `JSON_EXTRACT(doc, ?)` with the path `$."a"."b"`; SQLite: `json_type` and
//!   `json_extract` with the same path; [`validate_field_path`](cloud_abstraction::database::validate_field_path) rejects `"` and `\`, so the
//!   quoting is sound). Comparisons first check the JSON type (no cross-type matches) and
//!   compare strings by bytes; numbers compare as `numeric` on PostgreSQL (exact), as
//!   `DOUBLE` on MariaDB (exact up to 2^53) and as SQLite's integers and reals. Arrays and
//!   objects compare with `jsonb` equality, `JSON_EQUALS` (MariaDB ≥ 10.7) and `json()` text
//!   equality. Ordering follows the reference total order (missing < null < bool < number <
//!   string < array < object), then the id.
//! - Cursors are [keyset cursors](cloud_abstraction::database::KeysetCursor) (the last
//!   document's order values and id, translated into a `WHERE` condition in the query order),
//!   on every dialect, so the paging contract of [`DocumentStore`] holds: a document left
//!   unchanged is returned exactly once while others are written between pages.
//!
//! # Failures
//!
//! Every pool acquisition times out (5 s) and every operation has an overall deadline
//! ([`with_operation_timeout`](SqlDocumentStore::with_operation_timeout), 30 s by default),
//! so a call never hangs when the server is gone: it fails with a retryable
//! [`Unavailable`](ErrorKind::Unavailable) or [`DeadlineExceeded`](ErrorKind::DeadlineExceeded),
//! and the same handle works again once the server is back (broken connections are tested
//! and replaced by the pool). Unique violations map to `AlreadyExists`; serialization
//! failures, deadlocks, lock wait timeouts and SQLite's `BUSY` (after its 10 s busy timeout)
//! to `Unavailable`; data errors (e.g. `\u0000` in a string, which `jsonb` cannot hold) to
//! `InvalidArgument`. The URL is never part of an error, a log or `Debug` output (it may
//! hold a password).
//!
//! # The escape hatch
//!
//! [`pool`](SqlDocumentStore::pool) gives the sqlx pool, **not portable**, for SQL the API
//! does not cover (reports, migrations, dropping the table). Writes made through it bypass
//! revision bookkeeping unless they maintain the `revision` column themselves.

pub mod dialect;
#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

use self::dialect::{Dialect, Param, RawDocument, Sql};
use super::common::{check_capabilities, check_document};
use async_trait::async_trait;
use cloud_abstraction::database::{
    DatabaseCapabilities, Direction, Document, DocumentStore, Filter, FilterOp, KeysetCursor,
    PutDocumentOptions, Query, QueryPage, Revision, WriteCondition, WriteOp, WriteOutcome,
    page_limit,
};
use cloud_abstraction::{BackendInfo, Error, ErrorKind, Location, Result, validate};
use serde_json::Value;
use sqlx::Pool;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};
use tracing::Instrument;

/// The PostgreSQL document store.
#[cfg(feature = "postgres")]
pub type PostgresDocumentStore = SqlDocumentStore<postgres::Postgres>;
/// The MariaDB / MySQL document store.
#[cfg(feature = "mysql")]
pub type MysqlDocumentStore = SqlDocumentStore<mysql::Mysql>;
/// The SQLite document store.
#[cfg(feature = "sqlite")]
pub type SqliteDocumentStore = SqlDocumentStore<sqlite::Sqlite>;

const PURGE_INTERVAL: Duration = Duration::from_secs(60);
/// Ids per `IN (…)` list of `get_many`, well below every database's parameter limit.
const GET_MANY_CHUNK: usize = 200;

/// A [`DocumentStore`] in one table of an SQL database (see the [module docs](self)).
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
pub struct SqlDocumentStore<D: Dialect> {
    pool: Pool<D::Db>,
    table: String,
    quoted: String,
    location: Location,
    operation_timeout: Duration,
    last_purge: Arc<Mutex<HashMap<String, Instant>>>,
    dialect: PhantomData<fn() -> D>,
}

impl<D: Dialect> Clone for SqlDocumentStore<D> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            table: self.table.clone(),
            quoted: self.quoted.clone(),
            location: self.location.clone(),
            operation_timeout: self.operation_timeout,
            last_purge: Arc::clone(&self.last_purge),
            dialect: PhantomData,
        }
    }
}

impl<D: Dialect> std::fmt::Debug for SqlDocumentStore<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the URL or the connect options: they may hold a password.
        f.debug_struct("SqlDocumentStore")
            .field("backend", &D::BACKEND)
            .field("table", &self.table)
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl<D: Dialect> SqlDocumentStore<D> {
    /// The table used by [`connect`](Self::connect): `cloud_documents` on the servers,
    /// `documents` on SQLite.
    pub const DEFAULT_TABLE: &'static str = D::DEFAULT_TABLE;

    /// Connects to `url` and makes sure the [`DEFAULT_TABLE`](Self::DEFAULT_TABLE) exists.
    ///
    /// URLs: `postgres://user:password@host:port/database` (or `postgresql://`),
    /// `mysql://…` (or `mariadb://…`), `sqlite:///abs/path.db`, `sqlite://relative.db`,
    /// `sqlite::memory:` (SQLite optionally with `?mode=rwc`, the default, or `?mode=rw`: the
    /// file must exist). Server URLs are parsed by sqlx, so its parameters (e.g. `sslmode`)
    /// apply. Fails with `InvalidArgument` for a malformed URL or an empty PostgreSQL user
    /// name, `NotFound` when the named database does not exist, `Unauthenticated` for a
    /// refused login, `Unavailable` when the server cannot be reached (within the 5 s acquire
    /// timeout). For SQLite files, see the table in the SQLite dialect: a directory or a file
    /// as parent is `InvalidArgument`, a missing directory (or file under `mode=rw`)
    /// `NotFound`, a file that cannot be opened `PermissionDenied`. The URL never appears in
    /// an error.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_table(url, D::DEFAULT_TABLE).await
    }

    /// Like [`connect`](Self::connect), with the documents in `table` (a
    /// [resource name](validate::resource_name)), e.g. one table per application or test run.
    pub async fn connect_table(url: &str, table: &str) -> Result<Self> {
        validate::resource_name(D::BACKEND, "table", table)?;
        let span = tracing::debug_span!("document_store.connect", backend = D::BACKEND);
        async {
            let pool = D::open(url).await?;
            let quoted = D::quote(table);
            let store = Self {
                pool,
                table: table.to_string(),
                quoted,
                location: if D::EMBEDDED {
                    Location::local()
                } else {
                    Location::unknown()
                },
                operation_timeout: Duration::from_secs(30),
                last_purge: Arc::new(Mutex::new(HashMap::new())),
                dialect: PhantomData,
            };
            store.create_schema().await?;
            Ok(store)
        }
        .instrument(span)
        .await
    }

    /// Sets where the database runs (default: [`Location::unknown`] for a server,
    /// [`Location::local`] for SQLite).
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

    /// The underlying sqlx pool: a **non-portable** escape hatch (see the module docs).
    pub fn pool(&self) -> &Pool<D::Db> {
        &self.pool
    }

    /// Closes every connection after the operations in flight finish. Later calls fail with
    /// `Unavailable`.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn create_schema(&self) -> Result<()> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| map_err::<D>(e, "create table"))?;
        for ddl in D::schema(&self.quoted) {
            let mut sql = Sql::new::<D>();
            sql.push(&ddl);
            match D::execute(&mut conn, sql).await {
                Ok(_) => {}
                // Two processes creating the table at once: the loser may see a unique
                // violation on the catalog; the table is there either way.
                Err(e) => {
                    let e = map_err::<D>(e, "create table");
                    if e.kind() != ErrorKind::AlreadyExists {
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
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
                D::BACKEND,
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
            let mut sql = Sql::new::<D>();
            D::push_purge(&mut sql, &self.quoted, collection);
            let result = match self.pool.acquire().await {
                Ok(mut conn) => D::execute(&mut conn, sql).await.map(|_| ()),
                Err(e) => Err(e),
            };
            // Best effort: expired rows are invisible anyway.
            if let Err(e) = result {
                tracing::debug!(backend = D::BACKEND, error = %e, "purging expired documents failed");
            }
        }
    }
}

/// The pool of a server dialect: at most 10 connections, none kept when idle for 5 min,
/// acquisition bounded by 5 s so that a call fails (retryably) instead of hanging.
#[cfg(any(feature = "postgres", feature = "mysql"))]
async fn server_pool<D: Dialect>(
    options: <<D::Db as sqlx::Database>::Connection as sqlx::Connection>::Options,
) -> Result<Pool<D::Db>> {
    sqlx::pool::PoolOptions::<D::Db>::new()
        .max_connections(10)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(5))
        .idle_timeout(Some(Duration::from_secs(300)))
        .connect_with(options)
        .await
        .map_err(|e| map_err::<D>(e, "connect"))
}

// ---------------------------------------------------------------------------------------
// Statements

fn live<D: Dialect>() -> String {
    format!("(expires_at IS NULL OR expires_at > {})", D::now())
}

fn expired<D: Dialect>(qualifier: &str) -> String {
    format!(
        "({qualifier}expires_at IS NOT NULL AND {qualifier}expires_at <= {})",
        D::now()
    )
}

/// The selected columns of a document row.
fn columns<D: Dialect>() -> String {
    format!(
        "id, {} AS doc, revision, {} AS expires_us",
        D::doc_out(),
        D::expires_us("expires_at")
    )
}

/// `… WHERE collection = ? AND id = ?`
fn push_key<D: Dialect>(sql: &mut Sql, collection: &str, id: &str) {
    sql.push(" WHERE collection = ")
        .bind(Param::Text(collection.to_string()))
        .push(" AND id = ")
        .bind(D::id_param(id));
}

/// `INSERT INTO t (…) VALUES (…)` of a new document.
fn push_insert<D: Dialect>(sql: &mut Sql, t: &str, w: &PutArgs<'_>) {
    sql.push(&format!(
        "INSERT INTO {t} (collection, id, {}, revision, expires_at) VALUES (",
        D::DOC_COLUMN
    ))
    .bind(Param::Text(w.collection.to_string()))
    .push(", ")
    .bind(D::id_param(w.id));
    sql.push(", ");
    D::push_doc(sql, w.json.clone());
    sql.push(", 1, ");
    D::push_expires(sql, w.ttl_us);
    sql.push(")");
}

struct PutArgs<'a> {
    collection: &'a str,
    id: &'a str,
    json: String,
    ttl_us: Option<i64>,
}

fn ttl_micros(backend: &'static str, ttl: Option<Duration>) -> Result<Option<i64>> {
    ttl.map(|d| {
        i64::try_from(d.as_micros())
            .map_err(|_| Error::invalid(backend, "the document TTL is too long"))
    })
    .transpose()
}

fn revision_from(backend: &'static str, rev: i64) -> Result<Revision> {
    u64::try_from(rev)
        .map(Revision)
        .map_err(|_| Error::internal(backend, "negative revision in the table"))
}

fn document_from<D: Dialect>(raw: RawDocument) -> Result<Document> {
    let value: Value = serde_json::from_str(&raw.doc)
        .map_err(|e| Error::internal(D::BACKEND, format!("a stored document is not JSON: {e}")))?;
    Ok(Document {
        id: raw.id,
        value,
        revision: revision_from(D::BACKEND, raw.revision)?,
        expires_at: raw
            .expires_us
            .and_then(|us| UNIX_EPOCH.checked_add(Duration::from_micros(u64::try_from(us).ok()?))),
    })
}

fn decode_row<D: Dialect>(row: &<D::Db as sqlx::Database>::Row) -> Result<Document> {
    document_from::<D>(D::decode(row).map_err(|e| map_err::<D>(e, "decode row"))?)
}

/// Maps a sqlx error to the portable kinds. The message names the operation only: sqlx's
/// own text stays reachable as `source()` (it never holds the URL for runtime errors).
fn map_err<D: Dialect>(e: sqlx::Error, operation: &str) -> Error {
    #[cfg(any(feature = "postgres", feature = "mysql"))]
    if let Some(tls) = crate::tls::failure(D::BACKEND, operation, &e) {
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
            return Error::invalid(D::BACKEND, format!("{operation}: invalid configuration"));
        }
        sqlx::Error::Database(db) => D::error_kind(db.as_ref()),
        _ => ErrorKind::Internal,
    };
    Error::new(kind, D::BACKEND, format!("{operation} failed: {e}")).with_source(e)
}

fn is_duplicate(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

fn check_names(backend: &'static str, collection: &str, id: &str) -> Result<()> {
    validate::resource_name(backend, "collection", collection)?;
    validate::document_id(backend, id)
}

fn precondition(backend: &'static str, collection: &str, id: &str) -> Error {
    Error::new(
        ErrorKind::PreconditionFailed,
        backend,
        format!("document `{id}` in `{collection}` is not at the expected revision"),
    )
}

fn already_exists(backend: &'static str, collection: &str, id: &str) -> Error {
    Error::new(
        ErrorKind::AlreadyExists,
        backend,
        format!("document `{id}` already exists in `{collection}`"),
    )
}

/// Checks a put before any I/O; returns its JSON text and TTL.
fn prepare_put(
    backend: &'static str,
    collection: &str,
    id: &str,
    value: &Value,
    options: &PutDocumentOptions,
) -> Result<(String, Option<i64>)> {
    check_names(backend, collection, id)?;
    check_document(backend, &DatabaseCapabilities::full(), value, options)?;
    let json = serde_json::to_string(value)
        .map_err(|e| Error::invalid(backend, format!("the document is not JSON: {e}")))?;
    Ok((json, ttl_micros(backend, options.ttl)?))
}

fn check_op(backend: &'static str, op: &WriteOp) -> Result<()> {
    match op {
        WriteOp::Put {
            collection,
            id,
            value,
            options,
        } => prepare_put(backend, collection, id, value, options).map(|_| ()),
        WriteOp::Delete { collection, id, .. } => check_names(backend, collection, id),
    }
}

async fn put_on<D: Dialect>(
    t: &str,
    conn: &mut dialect::Conn<D>,
    collection: &str,
    id: &str,
    value: &Value,
    options: &PutDocumentOptions,
) -> Result<Revision> {
    let (json, ttl_us) = prepare_put(D::BACKEND, collection, id, value, options)?;
    let w = PutArgs {
        collection,
        id,
        json,
        ttl_us,
    };
    let err = |e| map_err::<D>(e, "put");
    match options.condition {
        WriteCondition::Revision(r) => {
            // A revision beyond i64 cannot be stored, so it cannot be current either.
            let want = i64::try_from(r.0).map_err(|_| precondition(D::BACKEND, collection, id))?;
            let mut sql = Sql::new::<D>();
            sql.push(&format!("UPDATE {t} SET {} = ", D::DOC_COLUMN));
            D::push_doc(&mut sql, w.json.clone());
            sql.push(", revision = revision + 1, expires_at = ");
            D::push_expires(&mut sql, w.ttl_us);
            push_key::<D>(&mut sql, collection, id);
            sql.push(" AND revision = ")
                .bind(Param::I64(want))
                .push(&format!(" AND {}", live::<D>()));
            let done = D::execute(conn, sql).await.map_err(err)?;
            if done.rows == 1 {
                Ok(Revision(r.0 + 1))
            } else {
                Err(precondition(D::BACKEND, collection, id))
            }
        }
        condition if D::ON_CONFLICT_RETURNING => {
            let dc = D::DOC_COLUMN;
            let mut sql = Sql::new::<D>();
            push_insert::<D>(&mut sql, t, &w);
            sql.push(&format!(
                " ON CONFLICT (collection, id) DO UPDATE SET {dc} = excluded.{dc}, \
                 expires_at = excluded.expires_at, "
            ));
            if condition == WriteCondition::Absent {
                // Only an expired row may be replaced; it restarts at revision 1.
                sql.push(&format!(
                    "revision = 1 WHERE {}",
                    expired::<D>(&format!("{t}."))
                ));
            } else {
                sql.push(&format!(
                    "revision = CASE WHEN {} THEN 1 ELSE {t}.revision + 1 END",
                    expired::<D>(&format!("{t}."))
                ));
            }
            sql.push(" RETURNING revision");
            match D::fetch_optional(conn, sql).await.map_err(err)? {
                Some(row) => revision_from(D::BACKEND, D::first_i64(&row).map_err(err)?),
                None => Err(already_exists(D::BACKEND, collection, id)),
            }
        }
        WriteCondition::Any => {
            let mut sql = Sql::new::<D>();
            push_insert::<D>(&mut sql, t, &w);
            D::push_upsert_duplicate_key(&mut sql, t);
            let done = D::execute(conn, sql).await.map_err(err)?;
            // 1 row: inserted; 2 rows: updated, the new revision set by LAST_INSERT_ID(expr).
            Ok(Revision(if done.rows == 1 { 1 } else { done.last_id }))
        }
        WriteCondition::Absent => {
            let insert = |w: &PutArgs<'_>| {
                let mut sql = Sql::new::<D>();
                push_insert::<D>(&mut sql, t, w);
                sql
            };
            match D::execute(conn, insert(&w)).await {
                Ok(_) => Ok(Revision(1)),
                Err(e) if is_duplicate(&e) => {
                    // An expired document is absent: remove it and try once more. A racing
                    // creator may still win, and then this one reports AlreadyExists.
                    let mut sql = Sql::new::<D>();
                    sql.push(&format!("DELETE FROM {t}"));
                    push_key::<D>(&mut sql, collection, id);
                    sql.push(&format!(" AND {}", expired::<D>("")));
                    let removed = D::execute(conn, sql).await.map_err(err)?;
                    if removed.rows == 0 {
                        return Err(already_exists(D::BACKEND, collection, id));
                    }
                    match D::execute(conn, insert(&w)).await {
                        Ok(_) => Ok(Revision(1)),
                        Err(e) if is_duplicate(&e) => {
                            Err(already_exists(D::BACKEND, collection, id))
                        }
                        Err(e) => Err(err(e)),
                    }
                }
                Err(e) => Err(err(e)),
            }
        }
    }
}

async fn delete_on<D: Dialect>(
    t: &str,
    conn: &mut dialect::Conn<D>,
    collection: &str,
    id: &str,
    condition: WriteCondition,
) -> Result<bool> {
    let err = |e| map_err::<D>(e, "delete");
    let mut sql = Sql::new::<D>();
    if condition == WriteCondition::Absent {
        // "Delete if absent" deletes nothing; it only checks that the document is absent.
        sql.push(&format!("SELECT 1 FROM {t}"));
        push_key::<D>(&mut sql, collection, id);
        sql.push(&format!(" AND {}", live::<D>()));
        return match D::fetch_optional(conn, sql).await.map_err(err)? {
            Some(_) => Err(already_exists(D::BACKEND, collection, id)),
            None => Ok(false),
        };
    }
    // Only a live row counts; an expired one stays for the purge and is absent either way.
    sql.push(&format!("DELETE FROM {t}"));
    push_key::<D>(&mut sql, collection, id);
    if let WriteCondition::Revision(r) = condition {
        let want = i64::try_from(r.0).map_err(|_| precondition(D::BACKEND, collection, id))?;
        sql.push(" AND revision = ").bind(Param::I64(want));
    }
    sql.push(&format!(" AND {}", live::<D>()));
    let done = D::execute(conn, sql).await.map_err(err)?;
    match condition {
        WriteCondition::Revision(_) if done.rows == 0 => {
            Err(precondition(D::BACKEND, collection, id))
        }
        _ => Ok(done.rows > 0),
    }
}

#[async_trait]
impl<D: Dialect> DocumentStore for SqlDocumentStore<D> {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            backend: D::BACKEND.to_string(),
            location: self.location.clone(),
        }
    }

    fn capabilities(&self) -> DatabaseCapabilities {
        // Everything, with documents up to 1 MiB serialized (the databases could hold more;
        // the limit keeps the backends alike).
        DatabaseCapabilities::full()
    }

    async fn get(&self, collection: &str, id: &str) -> Result<Option<Document>> {
        check_names(D::BACKEND, collection, id)?;
        let span = tracing::debug_span!("document_store.get", backend = D::BACKEND, collection);
        self.deadline("get", async {
            let mut sql = Sql::new::<D>();
            sql.push(&format!("SELECT {} FROM {}", columns::<D>(), self.quoted));
            push_key::<D>(&mut sql, collection, id);
            sql.push(&format!(" AND {}", live::<D>()));
            let mut conn = self
                .pool
                .acquire()
                .await
                .map_err(|e| map_err::<D>(e, "get"))?;
            let row = D::fetch_optional(&mut conn, sql)
                .await
                .map_err(|e| map_err::<D>(e, "get"))?;
            row.as_ref().map(decode_row::<D>).transpose()
        })
        .instrument(span)
        .await
    }

    async fn get_many(&self, collection: &str, ids: &[String]) -> Result<Vec<Option<Document>>> {
        validate::resource_name(D::BACKEND, "collection", collection)?;
        for id in ids {
            validate::document_id(D::BACKEND, id)?;
        }
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let span = tracing::debug_span!(
            "document_store.get_many",
            backend = D::BACKEND,
            collection,
            count = ids.len()
        );
        self.deadline("get_many", async {
            let err = |e| map_err::<D>(e, "get_many");
            let mut conn = self.pool.acquire().await.map_err(err)?;
            let mut found = HashMap::with_capacity(ids.len());
            for chunk in ids.chunks(GET_MANY_CHUNK) {
                let mut sql = Sql::new::<D>();
                sql.push(&format!(
                    "SELECT {} FROM {} WHERE collection = ",
                    columns::<D>(),
                    self.quoted
                ))
                .bind(Param::Text(collection.to_string()))
                .push(&format!(" AND {} AND id IN (", live::<D>()));
                for (i, id) in chunk.iter().enumerate() {
                    if i > 0 {
                        sql.push(", ");
                    }
                    sql.bind(D::id_param(id));
                }
                sql.push(")");
                for row in &D::fetch_all(&mut conn, sql).await.map_err(err)? {
                    let doc = decode_row::<D>(row)?;
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
        prepare_put(D::BACKEND, collection, id, &value, &options)?;
        let span = tracing::debug_span!("document_store.put", backend = D::BACKEND, collection);
        self.deadline("put", async {
            let mut conn = self
                .pool
                .acquire()
                .await
                .map_err(|e| map_err::<D>(e, "put"))?;
            put_on::<D>(&self.quoted, &mut conn, collection, id, &value, &options).await
        })
        .instrument(span)
        .await
    }

    async fn delete(&self, collection: &str, id: &str, condition: WriteCondition) -> Result<bool> {
        check_names(D::BACKEND, collection, id)?;
        let span = tracing::debug_span!("document_store.delete", backend = D::BACKEND, collection);
        self.deadline("delete", async {
            let mut conn = self
                .pool
                .acquire()
                .await
                .map_err(|e| map_err::<D>(e, "delete"))?;
            delete_on::<D>(&self.quoted, &mut conn, collection, id, condition).await
        })
        .instrument(span)
        .await
    }

    async fn write_batch(&self, ops: Vec<WriteOp>) -> Result<Vec<WriteOutcome>> {
        for op in &ops {
            check_op(D::BACKEND, op)?;
        }
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let span = tracing::debug_span!(
            "document_store.write_batch",
            backend = D::BACKEND,
            count = ops.len()
        );
        self.deadline("write_batch", async {
            let err = |e| map_err::<D>(e, "write_batch");
            let mut tx = self.pool.begin_with(D::BEGIN).await.map_err(err)?;
            let mut outcomes = Vec::with_capacity(ops.len());
            for op in &ops {
                let t = &self.quoted;
                let outcome = match op {
                    WriteOp::Put {
                        collection,
                        id,
                        value,
                        options,
                    } => put_on::<D>(t, &mut tx, collection, id, value, options)
                        .await
                        .map(WriteOutcome::Put),
                    WriteOp::Delete {
                        collection,
                        id,
                        condition,
                    } => delete_on::<D>(t, &mut tx, collection, id, *condition)
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
            tx.commit().await.map_err(err)?;
            Ok(outcomes)
        })
        .instrument(span)
        .await
    }

    async fn query(&self, collection: &str, query: Query) -> Result<QueryPage> {
        validate::resource_name(D::BACKEND, "collection", collection)?;
        check_capabilities(D::BACKEND, &self.capabilities(), &query)?;
        let limit = page_limit(D::BACKEND, &query)?;
        let cursor = query
            .cursor
            .as_deref()
            .map(|c| KeysetCursor::decode(D::BACKEND, c, &query.order_by))
            .transpose()?;
        let sql = build_query::<D>(&self.quoted, collection, &query, cursor.as_ref(), limit);
        let span = tracing::debug_span!(
            "document_store.query",
            backend = D::BACKEND,
            collection,
            filters = query.filters.len()
        );
        self.deadline("query", async {
            self.purge_expired(collection).await;
            let err = |e| map_err::<D>(e, "query");
            let mut conn = self.pool.acquire().await.map_err(err)?;
            let rows = D::fetch_all(&mut conn, sql).await.map_err(err)?;
            let mut documents = rows
                .iter()
                .map(decode_row::<D>)
                .collect::<Result<Vec<_>>>()?;
            let next_cursor = if documents.len() > limit {
                documents.truncate(limit);
                documents
                    .last()
                    .map(|d| KeysetCursor::after(d, &query.order_by).encode())
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

/// The SELECT of one page (one row more than the page, to know whether more follow).
fn build_query<D: Dialect>(
    t: &str,
    collection: &str,
    query: &Query,
    cursor: Option<&KeysetCursor>,
    limit: usize,
) -> Sql {
    // Each distinct field path becomes columns of the inner select, named `f<i>`.
    let mut paths: Vec<String> = Vec::new();
    let mut alias = |field: &str| -> String {
        let i = paths.iter().position(|p| p == field).unwrap_or_else(|| {
            paths.push(field.to_string());
            paths.len() - 1
        });
        format!("f{i}")
    };
    let filters: Vec<(String, &Filter)> =
        query.filters.iter().map(|f| (alias(&f.field), f)).collect();
    let keys: Vec<(String, Direction)> = query
        .order_by
        .iter()
        .map(|o| (alias(&o.field), o.direction))
        .collect();

    let mut sql = Sql::new::<D>();
    sql.push(&format!(
        "SELECT {} FROM (SELECT id, {}, revision, expires_at",
        columns::<D>(),
        D::DOC_COLUMN
    ));
    for (i, path) in paths.iter().enumerate() {
        D::field_columns(&mut sql, path, &format!("f{i}"));
    }
    sql.push(&format!(" FROM {t} WHERE collection = "))
        .bind(Param::Text(collection.to_string()))
        .push(&format!(" AND {}) AS d WHERE 1 = 1", live::<D>()));
    for (f, filter) in &filters {
        sql.push(" AND ");
        push_filter::<D>(&mut sql, f, &filter.op);
    }
    if let Some(cursor) = cursor {
        sql.push(" AND ");
        push_after_cursor::<D>(&mut sql, &keys, cursor);
    }
    sql.push(" ORDER BY ");
    for (f, direction) in &keys {
        let dir = match direction {
            Direction::Asc => "ASC",
            Direction::Desc => "DESC",
        };
        // The reference order: the type's rank, then the value within the type (only one
        // of the typed values is non-NULL for a row).
        sql.push(&format!(
            "{} {dir}, {} {dir}, {} {dir}, {} {dir}, ",
            D::rank(f),
            D::number(f),
            D::string(f),
            D::boolean(f)
        ));
    }
    sql.push("id ASC LIMIT ").bind(Param::I64(
        i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX),
    ));
    sql
}

/// The typed value expression of `f` for a scalar operand, with the operand appended by
/// `push_operand`; `None` for null, arrays and objects.
/// Appends an operand to a statement.
type Operand<'a> = Box<dyn Fn(&mut Sql) + 'a>;

fn typed<'a, D: Dialect>(f: &str, v: &'a Value) -> Option<(String, Operand<'a>)> {
    match v {
        Value::Number(n) => Some((D::number(f), Box::new(move |s| D::number_param(s, n)))),
        Value::String(x) => Some((D::string(f), Box::new(move |s| D::string_param(s, x)))),
        Value::Bool(b) => Some((D::boolean(f), Box::new(move |s| D::bool_param(s, *b)))),
        _ => None,
    }
}

/// `f <op> v` for a scalar `v`, never NULL; FALSE for other operands.
fn push_compare<D: Dialect>(sql: &mut Sql, f: &str, op: &str, v: &Value) {
    match typed::<D>(f, v) {
        Some((expr, operand)) => {
            sql.push(&format!("COALESCE({expr} {op} "));
            operand(sql);
            sql.push(", FALSE)");
        }
        // No order is defined for null, arrays and objects: nothing matches.
        None => {
            sql.push("1 = 0");
        }
    }
}

/// JSON equality of the field with `v` (numbers numerically), never NULL.
fn push_eq<D: Dialect>(sql: &mut Sql, f: &str, v: &Value) {
    match v {
        Value::Null => {
            sql.push(&format!("({} = 1)", D::rank(f)));
        }
        Value::Array(_) | Value::Object(_) => {
            sql.push("COALESCE(");
            D::composite_eq(sql, f, v.to_string(), v.is_array());
            sql.push(", FALSE)");
        }
        _ => push_compare::<D>(sql, f, "=", v),
    }
}

fn push_filter<D: Dialect>(sql: &mut Sql, f: &str, op: &FilterOp) {
    match op {
        FilterOp::Eq(v) => push_eq::<D>(sql, f, v),
        FilterOp::Ne(v) => {
            sql.push(&format!("({} > 0 AND NOT ", D::rank(f)));
            push_eq::<D>(sql, f, v);
            sql.push(")");
        }
        FilterOp::Lt(v) => push_compare::<D>(sql, f, "<", v),
        FilterOp::Le(v) => push_compare::<D>(sql, f, "<=", v),
        FilterOp::Gt(v) => push_compare::<D>(sql, f, ">", v),
        FilterOp::Ge(v) => push_compare::<D>(sql, f, ">=", v),
        FilterOp::In(vs) if vs.is_empty() => {
            sql.push("1 = 0");
        }
        FilterOp::In(vs) => {
            sql.push("(");
            for (i, v) in vs.iter().enumerate() {
                if i > 0 {
                    sql.push(" OR ");
                }
                push_eq::<D>(sql, f, v);
            }
            sql.push(")");
        }
        FilterOp::Prefix(p) => {
            sql.push("COALESCE(");
            D::prefix(sql, f, p);
            sql.push(", FALSE)");
        }
    }
}

/// Rows strictly after the cursor in the query order: for some key j, equal on the keys
/// before j and after on key j; or equal on all keys and a greater id.
fn push_after_cursor<D: Dialect>(sql: &mut Sql, keys: &[(String, Direction)], c: &KeysetCursor) {
    sql.push("(");
    for j in 0..=keys.len() {
        if j > 0 {
            sql.push(" OR ");
        }
        sql.push("(");
        for ((f, _), (rank, v)) in keys.iter().zip(c.keys()).take(j) {
            sql.push(&format!("({} = {rank}", D::rank(f)));
            if let Some((expr, operand)) = typed::<D>(f, v) {
                sql.push(&format!(" AND COALESCE({expr} = "));
                operand(sql);
                sql.push(", FALSE)");
            }
            sql.push(") AND ");
        }
        match (keys.get(j), c.keys().get(j)) {
            (Some((f, direction)), Some((rank, v))) => {
                let op = match direction {
                    Direction::Asc => ">",
                    Direction::Desc => "<",
                };
                let r = D::rank(f);
                sql.push(&format!("({r} {op} {rank}"));
                if let Some((expr, operand)) = typed::<D>(f, v) {
                    sql.push(&format!(" OR ({r} = {rank} AND COALESCE({expr} {op} "));
                    operand(sql);
                    sql.push(", FALSE))");
                }
                sql.push(")");
            }
            _ => {
                sql.push("id > ").bind(D::id_param(c.id()));
            }
        }
        sql.push(")");
    }
    sql.push(")");
}
