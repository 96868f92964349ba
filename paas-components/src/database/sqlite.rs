//! [`SqliteDocumentStore`]: a durable, embedded document store on SQLite through sqlx
//! (`sqlite:///abs/path.db`, `sqlite://relative.db`, `sqlite::memory:`).

use super::common::{
    check_capabilities, check_document, decode_offset_cursor, encode_offset_cursor, page_limit,
};
use async_trait::async_trait;
use cloud_abstraction::database::{
    DatabaseCapabilities, Direction, Document, DocumentStore, FilterOp, PutDocumentOptions, Query,
    QueryPage, Revision, WriteCondition, WriteOp, WriteOutcome,
};
use cloud_abstraction::{BackendInfo, Error, ErrorKind, Location, Result, validate};
use serde_json::Value;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, Sqlite};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const BACKEND: &str = "sqlite";

/// How long a statement waits for another connection's write lock before failing with
/// `Unavailable`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often (at most) a write also purges expired documents.
const PURGE_INTERVAL_MS: i64 = 60_000;
/// Ids per `IN (...)` list in `get_many`, well below SQLite's parameter limit.
const GET_MANY_CHUNK: usize = 200;

const SCHEMA: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS documents (
        collection TEXT NOT NULL,
        id TEXT NOT NULL,
        value TEXT NOT NULL,
        revision INTEGER NOT NULL,
        expires_at INTEGER,
        PRIMARY KEY (collection, id)
    )",
    "CREATE INDEX IF NOT EXISTS documents_expires_at
        ON documents (expires_at) WHERE expires_at IS NOT NULL",
];

/// A [`DocumentStore`] in one SQLite database, through an sqlx pool: all capabilities.
///
/// # Storage
///
/// One table, `documents(collection, id, value, revision, expires_at)` with the primary key
/// `(collection, id)`; `value` is the document's JSON text, `expires_at` milliseconds since the
/// Unix epoch. Collection names and ids are checked with `cloud_abstraction::validate` and
/// always bound as parameters, never written into SQL.
///
/// # Durability and concurrency
///
/// A file database runs in WAL mode with `synchronous = FULL`: every commit is fsynced
/// before the call returns, so an acknowledged write survives a power cut, not only a crash
/// of the process (with `NORMAL`, WAL commits since the last checkpoint may be lost on power
/// loss; the trait promises that an `Ok` write is stored, so we pay one fsync per commit).
/// Readers never block the writer in WAL mode; writers queue on SQLite's lock for up to 10 s,
/// then fail with `Unavailable`.
///
/// Every single-document write is one SQL statement (`INSERT … ON CONFLICT DO UPDATE … WHERE`,
/// `UPDATE … WHERE revision = ?`, `DELETE … WHERE revision = ?`, each `RETURNING` what it
/// changed), so conditions are checked and applied atomically by SQLite. A batch runs in one
/// `BEGIN IMMEDIATE` transaction: the write lock is taken up front, so a batch never fails
/// half-way on a lock upgrade, and any failing condition rolls the whole batch back.
///
/// `sqlite::memory:` gives a private in-memory database held by a pool of exactly one
/// connection that is never recycled (each SQLite connection to `:memory:` would otherwise
/// see its own empty database); it is lost when the store is dropped.
///
/// # Queries and TTL
///
/// Filters, ordering, limit and the cursor (an opaque offset) are pushed down as
/// parameterised SQL using `json_type` / `json_extract`, written to give exactly the semantics
/// of `cloud_abstraction::database`: a comparison matches only a field of the operand's JSON
/// type, numbers compare numerically, strings by their bytes (SQLite's `BINARY` collation),
/// and ordering ranks types (missing < null < bool < number < string < array < object) before
/// comparing values, then breaks ties by id. An offset cursor may skip or repeat documents
/// when the collection changes between pages.
///
/// Expired documents are filtered out by every read and count as absent for every condition;
/// a write purges expired rows at most once a minute, so they do not pile up.
#[derive(Clone)]
pub struct SqliteDocumentStore {
    pool: SqlitePool,
    location: Location,
    last_purge_ms: Arc<AtomicI64>,
}

impl fmt::Debug for SqliteDocumentStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteDocumentStore")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

/// The connect options and whether the database is in memory.
fn parse_url(url: &str) -> Result<(SqliteConnectOptions, bool)> {
    let rest = url
        .strip_prefix("sqlite:")
        .ok_or_else(|| Error::invalid(BACKEND, "a SQLite URL starts with `sqlite:`"))?;
    let (rest, params) = match rest.split_once('?') {
        Some((rest, params)) => (rest, Some(params)),
        None => (rest, None),
    };
    let path = rest.strip_prefix("//").unwrap_or(rest);
    let mut create = true;
    for param in params.into_iter().flat_map(|p| p.split('&')) {
        match param {
            "" | "mode=rwc" => create = true,
            "mode=rw" => create = false,
            _ => {
                return Err(Error::invalid(
                    BACKEND,
                    "unsupported SQLite URL parameter; supported are `mode=rwc` and `mode=rw`",
                ));
            }
        }
    }
    if path == ":memory:" {
        return Ok((SqliteConnectOptions::new().in_memory(true), true));
    }
    if path.is_empty() {
        return Err(Error::invalid(
            BACKEND,
            "the SQLite URL has no database path",
        ));
    }
    if path.chars().any(char::is_control) {
        return Err(Error::invalid(
            BACKEND,
            "the SQLite database path contains a control character",
        ));
    }
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(create)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full);
    Ok((options, false))
}

/// Maps an sqlx error to the portable kind; the message names the operation, never the URL.
fn map_err(operation: &'static str, e: sqlx::Error) -> Error {
    let kind = match &e {
        sqlx::Error::Database(db) => {
            let code = db.code().and_then(|c| c.parse::<i32>().ok()).unwrap_or(0);
            match code {
                // SQLITE_CONSTRAINT_PRIMARYKEY, SQLITE_CONSTRAINT_UNIQUE
                1555 | 2067 => ErrorKind::AlreadyExists,
                _ => match code & 0xff {
                    // BUSY, LOCKED, IOERR, CANTOPEN, PROTOCOL
                    5 | 6 | 10 | 14 | 15 => ErrorKind::Unavailable,
                    // NOMEM, FULL
                    7 | 13 => ErrorKind::ResourceExhausted,
                    // PERM, READONLY, AUTH
                    3 | 8 | 23 => ErrorKind::PermissionDenied,
                    // TOOBIG, RANGE
                    18 | 25 => ErrorKind::InvalidArgument,
                    _ => ErrorKind::Internal,
                },
            }
        }
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::WorkerCrashed => ErrorKind::Unavailable,
        sqlx::Error::Configuration(_) => ErrorKind::InvalidArgument,
        _ => ErrorKind::Internal,
    };
    let message = format!("{operation} failed ({kind})");
    if matches!(e, sqlx::Error::Configuration(_)) {
        // A configuration error may quote the connection string.
        Error::new(kind, BACKEND, message)
    } else {
        Error::new(kind, BACKEND, message).with_source(e)
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn expires_ms(now: i64, ttl: Option<Duration>) -> Result<Option<i64>> {
    ttl.map(|ttl| {
        i64::try_from(ttl.as_millis())
            .ok()
            .and_then(|ms| now.checked_add(ms))
            .ok_or_else(|| Error::invalid(BACKEND, "the document TTL is too long"))
    })
    .transpose()
}

fn to_system_time(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn revision_from(rev: i64) -> Result<Revision> {
    u64::try_from(rev)
        .map(Revision)
        .map_err(|_| Error::internal(BACKEND, "a stored revision is negative"))
}

fn precondition_failed(want: Revision) -> Error {
    Error::new(
        ErrorKind::PreconditionFailed,
        BACKEND,
        format!("the document is absent or not at revision {want}"),
    )
}

fn already_exists() -> Error {
    Error::new(
        ErrorKind::AlreadyExists,
        BACKEND,
        "the document already exists",
    )
}

/// Decodes a row of `id, value, revision, expires_at`.
fn document_from(row: &SqliteRow) -> Result<Document> {
    let decode = |e: sqlx::Error| map_err("decoding a row", e);
    let id: String = row.try_get("id").map_err(decode)?;
    let text: String = row.try_get("value").map_err(decode)?;
    let revision: i64 = row.try_get("revision").map_err(decode)?;
    let expires_at: Option<i64> = row.try_get("expires_at").map_err(decode)?;
    let value = serde_json::from_str(&text)
        .map_err(|e| Error::internal(BACKEND, format!("a stored document is not JSON: {e}")))?;
    Ok(Document {
        id,
        value,
        revision: revision_from(revision)?,
        expires_at: expires_at.map(to_system_time),
    })
}

/// A validated write, ready for SQL.
struct Write {
    collection: String,
    id: String,
    kind: WriteKind,
}

enum WriteKind {
    Put {
        text: String,
        condition: WriteCondition,
        expires_at: Option<i64>,
    },
    Delete {
        condition: WriteCondition,
    },
}

fn prepare(op: WriteOp, caps: &DatabaseCapabilities, now: i64) -> Result<Write> {
    match op {
        WriteOp::Put {
            collection,
            id,
            value,
            options,
        } => {
            validate::resource_name(BACKEND, "collection", &collection)?;
            validate::document_id(BACKEND, &id)?;
            check_document(BACKEND, caps, &value, &options)?;
            let text = serde_json::to_string(&value)
                .map_err(|e| Error::invalid(BACKEND, format!("the document is not JSON: {e}")))?;
            Ok(Write {
                collection,
                id,
                kind: WriteKind::Put {
                    text,
                    condition: options.condition,
                    expires_at: expires_ms(now, options.ttl)?,
                },
            })
        }
        WriteOp::Delete {
            collection,
            id,
            condition,
        } => {
            validate::resource_name(BACKEND, "collection", &collection)?;
            validate::document_id(BACKEND, &id)?;
            Ok(Write {
                collection,
                id,
                kind: WriteKind::Delete { condition },
            })
        }
    }
}

/// Applies one write as a single atomic statement on `conn`.
async fn apply(conn: &mut SqliteConnection, write: &Write, now: i64) -> Result<WriteOutcome> {
    let err = |e| map_err("write", e);
    match &write.kind {
        WriteKind::Put {
            text,
            condition,
            expires_at,
        } => {
            let sql = match condition {
                // An expired row counts as absent: it restarts at revision 1.
                WriteCondition::Any => {
                    "INSERT INTO documents (collection, id, value, revision, expires_at)
                     VALUES (?1, ?2, ?3, 1, ?4)
                     ON CONFLICT (collection, id) DO UPDATE SET
                        value = excluded.value,
                        revision = CASE WHEN documents.expires_at IS NOT NULL
                                         AND documents.expires_at <= ?5
                                   THEN 1 ELSE documents.revision + 1 END,
                        expires_at = excluded.expires_at
                     RETURNING revision"
                }
                WriteCondition::Absent => {
                    "INSERT INTO documents (collection, id, value, revision, expires_at)
                     VALUES (?1, ?2, ?3, 1, ?4)
                     ON CONFLICT (collection, id) DO UPDATE SET
                        value = excluded.value, revision = 1, expires_at = excluded.expires_at
                     WHERE documents.expires_at IS NOT NULL AND documents.expires_at <= ?5
                     RETURNING revision"
                }
                WriteCondition::Revision(_) => {
                    "UPDATE documents SET value = ?3, revision = revision + 1, expires_at = ?4
                     WHERE collection = ?1 AND id = ?2 AND revision = ?6
                       AND (expires_at IS NULL OR expires_at > ?5)
                     RETURNING revision"
                }
            };
            let mut query = sqlx::query_scalar::<Sqlite, i64>(sql)
                .bind(&write.collection)
                .bind(&write.id)
                .bind(text)
                .bind(expires_at)
                .bind(now);
            if let WriteCondition::Revision(want) = condition {
                let Ok(want_i64) = i64::try_from(want.0) else {
                    return Err(precondition_failed(*want));
                };
                query = query.bind(want_i64);
            }
            match query.fetch_optional(&mut *conn).await.map_err(err)? {
                Some(rev) => Ok(WriteOutcome::Put(revision_from(rev)?)),
                None => match condition {
                    WriteCondition::Revision(want) => Err(precondition_failed(*want)),
                    _ => Err(already_exists()),
                },
            }
        }
        WriteKind::Delete { condition } => match condition {
            WriteCondition::Any => {
                // Also removes an expired row, which reports as "was absent".
                let live: Option<bool> = sqlx::query_scalar(
                    "DELETE FROM documents WHERE collection = ?1 AND id = ?2
                     RETURNING (expires_at IS NULL OR expires_at > ?3)",
                )
                .bind(&write.collection)
                .bind(&write.id)
                .bind(now)
                .fetch_optional(&mut *conn)
                .await
                .map_err(err)?;
                Ok(WriteOutcome::Deleted(live.unwrap_or(false)))
            }
            WriteCondition::Absent => {
                let present: Option<i64> = sqlx::query_scalar(
                    "SELECT 1 FROM documents WHERE collection = ?1 AND id = ?2
                       AND (expires_at IS NULL OR expires_at > ?3)",
                )
                .bind(&write.collection)
                .bind(&write.id)
                .bind(now)
                .fetch_optional(&mut *conn)
                .await
                .map_err(err)?;
                match present {
                    Some(_) => Err(already_exists()),
                    None => Ok(WriteOutcome::Deleted(false)),
                }
            }
            WriteCondition::Revision(want) => {
                let Ok(want_i64) = i64::try_from(want.0) else {
                    return Err(precondition_failed(*want));
                };
                let deleted: Option<i64> = sqlx::query_scalar(
                    "DELETE FROM documents WHERE collection = ?1 AND id = ?2 AND revision = ?4
                       AND (expires_at IS NULL OR expires_at > ?3)
                     RETURNING 1",
                )
                .bind(&write.collection)
                .bind(&write.id)
                .bind(now)
                .bind(want_i64)
                .fetch_optional(&mut *conn)
                .await
                .map_err(err)?;
                match deleted {
                    Some(_) => Ok(WriteOutcome::Deleted(true)),
                    None => Err(precondition_failed(*want)),
                }
            }
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Query translation

/// A bound SQL parameter.
enum Param {
    Text(String),
    Int(i64),
    Real(f64),
}

/// SQL text with its parameters, in order.
#[derive(Default)]
struct Sql {
    text: String,
    params: Vec<Param>,
}

impl Sql {
    fn push(&mut self, s: &str) {
        self.text.push_str(s);
    }

    fn bind(&mut self, p: Param) {
        self.text.push('?');
        self.params.push(p);
    }

    /// `json_type(value, '<path>')`
    fn json_type(&mut self, path: &str) {
        self.push("json_type(value, ");
        self.bind(Param::Text(path.to_string()));
        self.push(")");
    }

    /// `json_extract(value, '<path>')`
    fn json_extract(&mut self, path: &str) {
        self.push("json_extract(value, ");
        self.bind(Param::Text(path.to_string()));
        self.push(")");
    }
}

/// The SQLite JSON path of a validated field path: `a.b` -> `$."a"."b"`. Quoting each
/// segment keeps characters such as `[`, `$` or spaces literal; `"` and `\` were rejected
/// by the validation.
fn json_path(field: &str) -> String {
    let mut path = String::from("$");
    for segment in field.split('.') {
        path.push_str(".\"");
        path.push_str(segment);
        path.push('"');
    }
    path
}

fn number_param(n: &serde_json::Number) -> Param {
    match n.as_i64() {
        Some(i) => Param::Int(i),
        None => Param::Real(n.as_f64().unwrap_or(f64::NAN)),
    }
}

/// `field == operand` with JSON equality (numbers numerically; never across types).
fn push_eq(sql: &mut Sql, path: &str, operand: &Value) {
    sql.push("(");
    match operand {
        Value::Number(n) => {
            sql.json_type(path);
            sql.push(" IN ('integer', 'real') AND ");
            sql.json_extract(path);
            sql.push(" = ");
            sql.bind(number_param(n));
        }
        Value::String(s) => {
            sql.json_type(path);
            sql.push(" = 'text' AND ");
            sql.json_extract(path);
            sql.push(" = ");
            sql.bind(Param::Text(s.clone()));
        }
        Value::Bool(b) => {
            sql.json_type(path);
            sql.push(if *b { " = 'true'" } else { " = 'false'" });
        }
        Value::Null => {
            sql.json_type(path);
            sql.push(" = 'null'");
        }
        Value::Array(_) | Value::Object(_) => {
            // Both sides are compact JSON text with the same key order (serde_json's), so
            // text equality is JSON equality.
            sql.json_type(path);
            sql.push(if operand.is_array() {
                " = 'array' AND json("
            } else {
                " = 'object' AND json("
            });
            sql.json_extract(path);
            sql.push(") = json(");
            sql.bind(Param::Text(operand.to_string()));
            sql.push(")");
        }
    }
    sql.push(")");
}

/// `field <op> operand` for a range operator; only a field of the operand's type matches.
fn push_range(sql: &mut Sql, path: &str, op: &str, operand: &Value) {
    let (types, param) = match operand {
        Value::Number(n) => ("IN ('integer', 'real')", number_param(n)),
        Value::String(s) => ("= 'text'", Param::Text(s.clone())),
        // json_extract gives 0 and 1 for false and true.
        Value::Bool(b) => ("IN ('true', 'false')", Param::Int(i64::from(*b))),
        Value::Null | Value::Array(_) | Value::Object(_) => {
            sql.push("0");
            return;
        }
    };
    sql.push("(");
    sql.json_type(path);
    sql.push(" ");
    sql.push(types);
    sql.push(" AND ");
    sql.json_extract(path);
    sql.push(" ");
    sql.push(op);
    sql.push(" ");
    sql.bind(param);
    sql.push(")");
}

fn push_filter(sql: &mut Sql, path: &str, op: &FilterOp) {
    match op {
        FilterOp::Eq(v) => push_eq(sql, path, v),
        FilterOp::Ne(v) => {
            sql.push("(");
            sql.json_type(path);
            sql.push(" IS NOT NULL AND NOT ");
            push_eq(sql, path, v);
            sql.push(")");
        }
        FilterOp::Lt(v) => push_range(sql, path, "<", v),
        FilterOp::Le(v) => push_range(sql, path, "<=", v),
        FilterOp::Gt(v) => push_range(sql, path, ">", v),
        FilterOp::Ge(v) => push_range(sql, path, ">=", v),
        FilterOp::In(vs) if vs.is_empty() => sql.push("0"),
        FilterOp::In(vs) => {
            sql.push("(");
            for (i, v) in vs.iter().enumerate() {
                if i > 0 {
                    sql.push(" OR ");
                }
                push_eq(sql, path, v);
            }
            sql.push(")");
        }
        FilterOp::Prefix(p) if p.is_empty() => {
            // Every string starts with "" (substr of an empty blob is not an empty blob).
            sql.push("(");
            sql.json_type(path);
            sql.push(" = 'text')");
        }
        FilterOp::Prefix(p) => {
            // Byte-wise on blobs: no LIKE wildcards, no collation, exact UTF-8 prefix.
            sql.push("(");
            sql.json_type(path);
            sql.push(" = 'text' AND substr(CAST(");
            sql.json_extract(path);
            sql.push(" AS BLOB), 1, ");
            sql.bind(Param::Int(i64::try_from(p.len()).unwrap_or(i64::MAX)));
            sql.push(") = CAST(");
            sql.bind(Param::Text(p.clone()));
            sql.push(" AS BLOB))");
        }
    }
}

/// The SELECT of one page (fetching one row more than the page, to know whether more follow).
fn build_query(collection: &str, query: &Query, now: i64, limit: usize, offset: usize) -> Sql {
    let mut sql = Sql::default();
    sql.push("SELECT id, value, revision, expires_at FROM documents WHERE collection = ");
    sql.bind(Param::Text(collection.to_string()));
    sql.push(" AND (expires_at IS NULL OR expires_at > ");
    sql.bind(Param::Int(now));
    sql.push(")");
    for filter in &query.filters {
        sql.push(" AND ");
        push_filter(&mut sql, &json_path(&filter.field), &filter.op);
    }
    sql.push(" ORDER BY ");
    for key in &query.order_by {
        let path = json_path(&key.field);
        let dir = match key.direction {
            Direction::Asc => " ASC, ",
            Direction::Desc => " DESC, ",
        };
        // The reference order: first the type's rank, then the value within the type.
        sql.push("CASE ");
        sql.json_type(&path);
        sql.push(
            " WHEN 'null' THEN 1 WHEN 'true' THEN 2 WHEN 'false' THEN 2 WHEN 'integer' THEN 3 \
             WHEN 'real' THEN 3 WHEN 'text' THEN 4 WHEN 'array' THEN 5 WHEN 'object' THEN 6 \
             ELSE 0 END",
        );
        sql.push(dir);
        sql.push("CASE WHEN ");
        sql.json_type(&path);
        sql.push(" IN ('array', 'object') THEN NULL ELSE ");
        sql.json_extract(&path);
        sql.push(" END");
        sql.push(dir);
    }
    sql.push("id ASC LIMIT ");
    sql.bind(Param::Int(
        i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX),
    ));
    sql.push(" OFFSET ");
    sql.bind(Param::Int(i64::try_from(offset).unwrap_or(i64::MAX)));
    sql
}

// ---------------------------------------------------------------------------------------------

impl SqliteDocumentStore {
    /// Opens (creating if missing) the database at `url` and its schema.
    ///
    /// Accepted URLs: `sqlite:///abs/path.db`, `sqlite://relative.db` (relative to the working
    /// directory), `sqlite::memory:`, optionally with `?mode=rwc` (the default: create if
    /// missing) or `?mode=rw` (the file must exist). Errors never quote the URL.
    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND), err(level = "debug"))]
    pub async fn connect(url: &str) -> Result<Self> {
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
        }
        .map_err(|e| map_err("opening the SQLite database", e))?;
        for statement in SCHEMA {
            sqlx::query(statement)
                .execute(&pool)
                .await
                .map_err(|e| map_err("creating the schema", e))?;
        }
        Ok(Self {
            pool,
            location: Location::local(),
            last_purge_ms: Arc::new(AtomicI64::new(0)),
        })
    }

    /// The same store, reporting `location` as where it runs.
    pub fn with_location(mut self, location: Location) -> Self {
        self.location = location;
        self
    }

    /// The underlying sqlx pool: an escape hatch for SQL of your own. **Not portable**: code
    /// that uses it runs on SQLite only; the table layout is described on the type.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Closes every connection after the operations in flight finish. Later calls fail with
    /// `Unavailable`.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Deletes expired rows, at most once per [`PURGE_INTERVAL_MS`] across clones.
    async fn maybe_purge(&self, now: i64) {
        let last = self.last_purge_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < PURGE_INTERVAL_MS
            || self
                .last_purge_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let result =
            sqlx::query("DELETE FROM documents WHERE expires_at IS NOT NULL AND expires_at <= ?")
                .bind(now)
                .execute(&self.pool)
                .await;
        match result {
            Ok(done) => tracing::debug!(purged = done.rows_affected(), "purged expired documents"),
            // Only housekeeping: reads filter expired rows anyway.
            Err(e) => tracing::warn!(error = %e, "purging expired documents failed"),
        }
    }

    async fn write_one(&self, op: WriteOp) -> Result<WriteOutcome> {
        let now = now_ms();
        let write = prepare(op, &self.capabilities(), now)?;
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| map_err("acquiring a connection", e))?;
        let outcome = apply(&mut conn, &write, now).await;
        drop(conn);
        self.maybe_purge(now).await;
        outcome
    }
}

#[async_trait]
impl DocumentStore for SqliteDocumentStore {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            backend: BACKEND.to_string(),
            location: self.location.clone(),
        }
    }

    fn capabilities(&self) -> DatabaseCapabilities {
        DatabaseCapabilities::full()
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, collection = %collection), err(level = "debug"))]
    async fn get(&self, collection: &str, id: &str) -> Result<Option<Document>> {
        validate::resource_name(BACKEND, "collection", collection)?;
        validate::document_id(BACKEND, id)?;
        let row = sqlx::query(
            "SELECT id, value, revision, expires_at FROM documents
             WHERE collection = ? AND id = ? AND (expires_at IS NULL OR expires_at > ?)",
        )
        .bind(collection)
        .bind(id)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| map_err("get", e))?;
        row.as_ref().map(document_from).transpose()
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, collection = %collection, count = ids.len()), err(level = "debug"))]
    async fn get_many(&self, collection: &str, ids: &[String]) -> Result<Vec<Option<Document>>> {
        validate::resource_name(BACKEND, "collection", collection)?;
        for id in ids {
            validate::document_id(BACKEND, id)?;
        }
        let now = now_ms();
        let mut found: HashMap<String, Document> = HashMap::new();
        for chunk in ids.chunks(GET_MANY_CHUNK) {
            let placeholders = vec!["?"; chunk.len()].join(", ");
            let sql = format!(
                "SELECT id, value, revision, expires_at FROM documents
                 WHERE collection = ? AND (expires_at IS NULL OR expires_at > ?)
                   AND id IN ({placeholders})"
            );
            let mut query = sqlx::query(&sql).bind(collection).bind(now);
            for id in chunk {
                query = query.bind(id);
            }
            let rows = query
                .fetch_all(&self.pool)
                .await
                .map_err(|e| map_err("get_many", e))?;
            for row in &rows {
                let doc = document_from(row)?;
                found.insert(doc.id.clone(), doc);
            }
        }
        Ok(ids.iter().map(|id| found.get(id).cloned()).collect())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, collection = %collection), err(level = "debug"))]
    async fn put(
        &self,
        collection: &str,
        id: &str,
        value: Value,
        options: PutDocumentOptions,
    ) -> Result<Revision> {
        let op = WriteOp::Put {
            collection: collection.to_string(),
            id: id.to_string(),
            value,
            options,
        };
        match self.write_one(op).await? {
            WriteOutcome::Put(revision) => Ok(revision),
            WriteOutcome::Deleted(_) => Err(Error::internal(BACKEND, "a put reported a delete")),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, collection = %collection), err(level = "debug"))]
    async fn delete(&self, collection: &str, id: &str, condition: WriteCondition) -> Result<bool> {
        let op = WriteOp::Delete {
            collection: collection.to_string(),
            id: id.to_string(),
            condition,
        };
        match self.write_one(op).await? {
            WriteOutcome::Deleted(existed) => Ok(existed),
            WriteOutcome::Put(_) => Err(Error::internal(BACKEND, "a delete reported a put")),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, count = ops.len()), err(level = "debug"))]
    async fn write_batch(&self, ops: Vec<WriteOp>) -> Result<Vec<WriteOutcome>> {
        let now = now_ms();
        let caps = self.capabilities();
        let writes = ops
            .into_iter()
            .map(|op| prepare(op, &caps, now))
            .collect::<Result<Vec<_>>>()?;
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| map_err("beginning a transaction", e))?;
        let mut outcomes = Vec::with_capacity(writes.len());
        for write in &writes {
            match apply(&mut tx, write, now).await {
                Ok(outcome) => outcomes.push(outcome),
                Err(e) => {
                    if let Err(rollback) = tx.rollback().await {
                        // The connection is discarded by the pool; nothing was committed.
                        tracing::warn!(error = %rollback, "rollback failed");
                    }
                    return Err(e);
                }
            }
        }
        tx.commit()
            .await
            .map_err(|e| map_err("committing a transaction", e))?;
        self.maybe_purge(now).await;
        Ok(outcomes)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, collection = %collection), err(level = "debug"))]
    async fn query(&self, collection: &str, query: Query) -> Result<QueryPage> {
        validate::resource_name(BACKEND, "collection", collection)?;
        check_capabilities(BACKEND, &self.capabilities(), &query)?;
        let limit = page_limit(BACKEND, &query)?;
        let offset = decode_offset_cursor(BACKEND, query.cursor.as_deref())?;
        let sql = build_query(collection, &query, now_ms(), limit, offset);
        let mut q = sqlx::query(&sql.text);
        for param in sql.params {
            q = match param {
                Param::Text(s) => q.bind(s),
                Param::Int(i) => q.bind(i),
                Param::Real(f) => q.bind(f),
            };
        }
        let rows = q
            .fetch_all(&self.pool)
            .await
            .map_err(|e| map_err("query", e))?;
        let more = rows.len() > limit;
        let documents = rows
            .iter()
            .take(limit)
            .map(document_from)
            .collect::<Result<Vec<_>>>()?;
        let next_cursor =
            more.then(|| encode_offset_cursor(offset.saturating_add(documents.len())));
        Ok(QueryPage {
            documents,
            next_cursor,
        })
    }
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
            "sqlite://",
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

    #[test]
    fn json_paths_quote_segments() {
        assert_eq!(json_path("a"), "$.\"a\"");
        assert_eq!(json_path("a.b c.$"), "$.\"a\".\"b c\".\"$\"");
    }
}
