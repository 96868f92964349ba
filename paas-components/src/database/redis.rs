//! Redis document store (`redis://host:port/db`, over TLS `rediss://`): see
//! [`RedisDocumentStore`].

use super::common::{check_capabilities, check_document};
use async_trait::async_trait;
use cloud_abstraction::database::paging::{KeysetCursor, paginate};
use cloud_abstraction::database::{
    DatabaseCapabilities, Document, DocumentStore, PutDocumentOptions, Query, QueryPage, Revision,
    WriteCondition, WriteOp, WriteOutcome, matches_filters, page_limit,
};
use cloud_abstraction::{BackendInfo, Error, ErrorKind, Location, Result, validate};
use redis::Script;
use redis::aio::ConnectionManager;
use serde_json::Value;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tracing::Instrument;

const BACKEND: &str = "redis";
/// The namespace of a store opened without one.
const DEFAULT_NAMESPACE: &str = "docs";
/// How many ids a query reads from the index (and documents it fetches) per round trip.
const QUERY_CHUNK: usize = 200;
/// The most operations in one batch: the batch script runs as one atomic step and blocks
/// the server while it runs.
const MAX_BATCH_OPS: usize = 1000;

// Conditions are passed to the scripts as a mode and an expected revision.
const MODE_ANY: &str = "any";
const MODE_ABSENT: &str = "absent";
const MODE_REVISION: &str = "rev";

// Script status codes.
const ST_OK: i64 = 0;
const ST_EXISTS: i64 = 1;
const ST_MISMATCH: i64 = 2;
const ST_DELETED: i64 = 3;

/// KEYS: document, index. ARGV: mode, expected revision, JSON, TTL in ms (`""`: none), id.
/// Returns `{status, revision}`.
const PUT_LUA: &str = r#"
local cur = redis.call('HGET', KEYS[1], 'r')
if ARGV[1] == 'absent' then
  if cur then return {1, 0} end
elseif ARGV[1] == 'rev' then
  if cur ~= ARGV[2] then return {2, 0} end
end
local rev = redis.call('HINCRBY', KEYS[1], 'r', 1)
redis.call('HSET', KEYS[1], 'v', ARGV[3])
if ARGV[4] == '' then
  redis.call('PERSIST', KEYS[1])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
redis.call('ZADD', KEYS[2], 0, ARGV[5])
return {0, rev}
"#;

/// KEYS: document, index. ARGV: mode, expected revision, id.
/// Returns 0 (was absent), 3 (deleted), 1 (present, condition Absent), 2 (revision mismatch).
const DELETE_LUA: &str = r#"
local cur = redis.call('HGET', KEYS[1], 'r')
if ARGV[1] == 'absent' then
  if cur then return 1 end
elseif ARGV[1] == 'rev' then
  if cur ~= ARGV[2] then return 2 end
end
redis.call('ZREM', KEYS[2], ARGV[3])
if cur then
  redis.call('DEL', KEYS[1])
  return 3
end
return 0
"#;

/// KEYS: (document, index) per op. ARGV: (kind `p`/`d`, mode, expected revision, JSON, TTL
/// in ms or `""`, id) per op. Checks every condition first, simulating the earlier ops of
/// the batch, then applies all. Returns `{0, outcome...}` (the new revision of a put; 1/0
/// for a delete that found / did not find the document), or `{op number, status}`.
const BATCH_LUA: &str = r#"
local n = #KEYS / 2
local state = {}
local outcome = {}
for i = 1, n do
  local k = KEYS[2 * i - 1]
  local a = 6 * (i - 1)
  local cur = state[k]
  if cur == nil then
    local r = redis.call('HGET', k, 'r')
    if r then cur = tonumber(r) else cur = false end
  end
  local mode = ARGV[a + 2]
  if mode == 'absent' and cur then return {i, 1} end
  if mode == 'rev' and ((not cur) or cur ~= tonumber(ARGV[a + 3])) then return {i, 2} end
  if ARGV[a + 1] == 'p' then
    if cur then cur = cur + 1 else cur = 1 end
    outcome[i] = cur
  else
    if cur then outcome[i] = 1 else outcome[i] = 0 end
    cur = false
  end
  state[k] = cur
end
local out = {0}
for i = 1, n do
  local k, idx = KEYS[2 * i - 1], KEYS[2 * i]
  local a = 6 * (i - 1)
  if ARGV[a + 1] == 'p' then
    redis.call('HSET', k, 'v', ARGV[a + 4], 'r', string.format('%d', outcome[i]))
    if ARGV[a + 5] == '' then
      redis.call('PERSIST', k)
    else
      redis.call('PEXPIRE', k, ARGV[a + 5])
    end
    redis.call('ZADD', idx, 0, ARGV[a + 6])
  else
    redis.call('DEL', k)
    redis.call('ZREM', idx, ARGV[a + 6])
  end
  out[i + 1] = outcome[i]
end
return out
"#;

/// KEYS: documents. Returns per key `{json, revision, pttl}` or nil, read atomically.
const READ_LUA: &str = r#"
local out = {}
for i, k in ipairs(KEYS) do
  local h = redis.call('HMGET', k, 'v', 'r')
  if h[1] then
    out[i] = {h[1], h[2], redis.call('PTTL', k)}
  else
    out[i] = false
  end
end
return out
"#;

/// KEYS: index, then documents. ARGV: the documents' ids. Removes from the index the ids
/// whose document is (still) absent.
const PRUNE_LUA: &str = r#"
local removed = 0
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then
    removed = removed + redis.call('ZREM', KEYS[1], ARGV[i - 1])
  end
end
return removed
"#;

struct Scripts {
    put: Script,
    delete: Script,
    batch: Script,
    read: Script,
    prune: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            put: Script::new(PUT_LUA),
            delete: Script::new(DELETE_LUA),
            batch: Script::new(BATCH_LUA),
            read: Script::new(READ_LUA),
            prune: Script::new(PRUNE_LUA),
        }
    }
}

/// A [`DocumentStore`] on a Redis server (`redis://host:port/db`), through the `redis` crate.
///
/// Capabilities: transactions (at most 1000 writes per batch), TTL (native key expiry), and
/// every query operator and ordering, evaluated on the client (see the cost below). Documents
/// up to 1 MiB. Cheap to clone: clones share one multiplexed, self-reconnecting connection.
///
/// # Data layout
///
/// Every key of a store starts with `{<namespace>}:`. The braces are a Redis Cluster hash
/// tag: all keys of one store live in one slot, so the multi-key scripts below also run on a
/// cluster (at the price of one store not spreading over the cluster).
///
/// - `{ns}:d:<collection>:<id>`: one hash per document, with fields `v` (the JSON text) and
///   `r` (the revision). A TTL is the key's native expiry (`PEXPIRE`), so Redis itself drops
///   expired documents and every read and condition sees them as absent.
/// - `{ns}:i:<collection>`: the collection's id index, a sorted set of ids (all scored 0,
///   so Redis orders them by their bytes, the order queries use).
///
/// # Atomicity
///
/// Conditional puts and deletes and [`write_batch`](DocumentStore::write_batch) are Lua
/// scripts (`EVALSHA`), so each condition is checked and the write applied in one atomic
/// step on the server, never read-then-write from the client. The batch script checks every
/// condition first (each op seeing the effect of the ones before it) and writes only when all
/// hold; otherwise it returns which op failed and why. The id index is updated in the same
/// scripts.
///
/// # Queries: evaluated on the client
///
/// Redis has no secondary indexes over JSON fields here, so queries read documents through
/// the id index and evaluate filters with the reference semantics
/// ([`matches_filters`], and the order of [`sort_documents`](cloud_abstraction::database::sort_documents)) on the client. The cost:
/// - without `order_by`, the index is read in id order from the cursor on, in chunks, until a
///   page is full: O(page) for a query without filters, O(documents scanned) with filters,
///   which is up to O(collection) for a selective filter;
/// - with `order_by`, every query page reads and sorts the **whole collection**:
///   O(collection) round-trip volume and memory per page.
///
/// This is fine for small collections (thousands of documents); for large ones, query a
/// store with server-side indexes. A query is not a snapshot: documents written while a
/// query reads its chunks may or may not be seen. Cursors are keyset cursors (the last
/// document's order values and id), so paging neither skips nor repeats documents that stay
/// unchanged, even when others are written between pages.
///
/// Expired documents may linger in the id index until a query finds them gone and prunes
/// them (atomically, only if the document is still absent).
///
/// # Revisions
///
/// A new document starts at revision 1 and each write adds 1. A deleted document leaves no
/// tombstone, so a document created again starts at 1 again (as in the other backends).
///
/// # Failures
///
/// Every call is bounded by a timeout (5 s unless [`RedisDocumentStore::with_timeout`]): a
/// call never hangs when the server is gone. Lost connections and refused connects are
/// [`Unavailable`](ErrorKind::Unavailable), timeouts
/// [`DeadlineExceeded`](ErrorKind::DeadlineExceeded) (the write may or may not have been
/// applied); the [`ConnectionManager`] reconnects by itself, so the same handle works again
/// once the server is back. Error messages never contain the URL (it may hold a password).
///
/// # TLS
///
/// `rediss://` connects over TLS: rustls with the aws-lc-rs provider, compiled in with the
/// `redis` feature. The server's certificate must chain to a trusted CA and name the URL's
/// host (DNS name or IP address). Query parameters:
/// - `ca_file=FILE`: trust exactly the PEM CA certificates in `FILE` (they **replace** the
///   default trust set, Mozilla's roots from webpki-roots). Read at connect: a file that
///   cannot be read or holds no certificate is [`InvalidArgument`](ErrorKind::InvalidArgument).
/// - `insecure=true` (default `false`; the crate's `#insecure` fragment means the same):
///   checks neither the certificate nor the host name. For tests only; it cannot be combined
///   with `ca_file`.
///
/// `ca_file` or `insecure` on a `redis://` URL is `InvalidArgument`. An untrusted certificate
/// or a host name mismatch fails the connect with
/// [`Unauthenticated`](ErrorKind::Unauthenticated) ("TLS handshake failed: certificate not
/// trusted: …", "… name mismatch: the server's certificate is not valid for `HOST` …"), not
/// retryable. The `redis` crate builds its TLS configuration from rustls' process-default
/// provider: the first `rediss://` connect installs aws-lc-rs as that default unless the
/// application installed one before (which is then used).
///
/// # Example
///
/// ```no_run
/// # async fn demo() -> cloud_abstraction::Result<()> {
/// use cloud_abstraction::DocumentStore;
/// use cloud_abstraction::database::PutDocumentOptions;
/// use paas_components::database::RedisDocumentStore;
///
/// let store = RedisDocumentStore::connect("redis://127.0.0.1:6379/0?prefix=fleet").await?;
/// let rev = store
///     .put("vehicles", "VIN-1", serde_json::json!({"km": 12}), PutDocumentOptions::create())
///     .await?;
/// assert_eq!(rev.0, 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisDocumentStore {
    conn: ConnectionManager,
    namespace: String,
    location: Location,
    timeout: Duration,
    scripts: Arc<Scripts>,
}

impl fmt::Debug for RedisDocumentStore {
    // The connection (and its URL, which may hold a password) is not shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisDocumentStore")
            .field("namespace", &self.namespace)
            .field("location", &self.location)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

fn mode_of(condition: WriteCondition) -> (&'static str, String) {
    match condition {
        WriteCondition::Any => (MODE_ANY, String::new()),
        WriteCondition::Absent => (MODE_ABSENT, String::new()),
        WriteCondition::Revision(r) => (MODE_REVISION, r.0.to_string()),
    }
}

/// The TTL argument of the scripts: `""` for none, else whole milliseconds (at least 1).
fn ttl_arg(ttl: Option<Duration>) -> Result<String> {
    let Some(ttl) = ttl else {
        return Ok(String::new());
    };
    let ms = ttl.as_millis().max(1);
    // PEXPIRE takes a signed 64-bit count; Redis also rejects when now + ttl overflows.
    if ms > (i64::MAX as u128) / 2 {
        return Err(Error::invalid(BACKEND, "the document TTL is too long"));
    }
    Ok(ms.to_string())
}

fn parse_stored(id: &str, json: &str, revision: u64, pttl: i64) -> Result<Document> {
    let value = serde_json::from_str(json).map_err(|e| {
        Error::internal(BACKEND, format!("document `{id}` holds invalid JSON")).with_source(e)
    })?;
    let expires_at = u64::try_from(pttl)
        .ok()
        .and_then(|ms| SystemTime::now().checked_add(Duration::from_millis(ms)));
    Ok(Document {
        id: id.to_string(),
        value,
        revision: Revision(revision),
        expires_at,
    })
}

fn check_collection(collection: &str) -> Result<()> {
    validate::resource_name(BACKEND, "collection", collection)
}

fn check_id(id: &str) -> Result<()> {
    validate::document_id(BACKEND, id)
}

impl RedisDocumentStore {
    /// Connects to `url` (`redis://[user:password@]host:port/db`, or `rediss://…` for TLS).
    /// The query parameter `prefix` sets the key namespace (default `docs`; see
    /// [`with_namespace`]), `ca_file` and `insecure` configure TLS (see [the type's
    /// docs](Self#tls)); `provider`, `region` and `zone` set the reported location (see
    /// [`Location::from_url`]; default [`Location::unknown`], since a server address does not
    /// say where it runs); other parameters go to the `redis` crate. Fails with
    /// [`InvalidArgument`](ErrorKind::InvalidArgument) for a bad URL and
    /// [`Unavailable`](ErrorKind::Unavailable) when the server cannot be reached.
    ///
    /// [`with_namespace`]: Self::with_namespace
    pub async fn connect(url: &str) -> Result<Self> {
        let span = tracing::debug_span!("database", backend = BACKEND, operation = "connect");
        async move {
            let crate::redis_conn::Connected {
                conn,
                namespace,
                location,
                ..
            } = crate::redis_conn::connect(BACKEND, url, DEFAULT_NAMESPACE).await?;
            Ok(Self {
                conn,
                namespace,
                location,
                timeout: crate::redis_conn::DEFAULT_TIMEOUT,
                scripts: Arc::new(Scripts::new()),
            })
        }
        .instrument(span)
        .await
    }

    /// The same store under another key namespace (`[a-zA-Z][a-zA-Z0-9_-]*`, at most 63
    /// bytes): stores in different namespaces never see each other's documents.
    pub fn with_namespace(mut self, namespace: &str) -> Result<Self> {
        validate::resource_name(BACKEND, "key namespace", namespace)?;
        self.namespace = namespace.to_string();
        Ok(self)
    }

    /// Reports `location` as where this store runs (default: the URL's location parameters,
    /// else [`Location::unknown`]).
    pub fn with_location(mut self, location: Location) -> Self {
        self.location = location;
        self
    }

    /// Bounds every call by `timeout` (default 5 s); a call over it fails with
    /// [`DeadlineExceeded`](ErrorKind::DeadlineExceeded).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The key namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Deletes every key of this store's namespace (all collections), with `SCAN` and
    /// `DEL`; returns how many keys were deleted. Not atomic: writes during the purge may
    /// survive it.
    pub async fn purge(&self) -> Result<u64> {
        let span = tracing::debug_span!("database", backend = BACKEND, operation = "purge");
        async move {
            let pattern = format!("{{{}}}:*", self.namespace);
            let mut cursor: u64 = 0;
            let mut deleted = 0u64;
            loop {
                let (next, keys): (u64, Vec<String>) = self
                    .call(
                        "purge",
                        redis::cmd("SCAN")
                            .arg(cursor)
                            .arg("MATCH")
                            .arg(&pattern)
                            .arg("COUNT")
                            .arg(500),
                    )
                    .await?;
                if !keys.is_empty() {
                    let n: u64 = self.call("purge", redis::cmd("DEL").arg(&keys)).await?;
                    deleted += n;
                }
                if next == 0 {
                    return Ok(deleted);
                }
                cursor = next;
            }
        }
        .instrument(span)
        .await
    }

    fn doc_key(&self, collection: &str, id: &str) -> String {
        format!("{{{}}}:d:{collection}:{id}", self.namespace)
    }

    fn index_key(&self, collection: &str) -> String {
        format!("{{{}}}:i:{collection}", self.namespace)
    }

    /// Runs `fut` within the timeout, mapping its error.
    async fn bounded<T>(
        &self,
        operation: &str,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T> {
        crate::redis_conn::bounded(BACKEND, self.timeout, operation, fut).await
    }

    async fn call<T: redis::FromRedisValue>(&self, operation: &str, cmd: &redis::Cmd) -> Result<T> {
        let mut conn = self.conn.clone();
        self.bounded(operation, cmd.query_async(&mut conn)).await
    }

    async fn invoke<T: redis::FromRedisValue>(
        &self,
        operation: &str,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T> {
        let mut conn = self.conn.clone();
        self.bounded(operation, invocation.invoke_async(&mut conn))
            .await
    }

    /// Reads documents of one collection atomically; `None` for absent (or expired) ones.
    async fn read(&self, collection: &str, ids: &[String]) -> Result<Vec<Option<Document>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = self.scripts.read.prepare_invoke();
        for id in ids {
            inv.key(self.doc_key(collection, id));
        }
        let raw: Vec<Option<(String, u64, i64)>> = self.invoke("read", &inv).await?;
        if raw.len() != ids.len() {
            return Err(Error::internal(
                BACKEND,
                "read: the server answered for other keys",
            ));
        }
        ids.iter()
            .zip(raw)
            .map(|(id, r)| {
                r.map(|(json, rev, pttl)| parse_stored(id, &json, rev, pttl))
                    .transpose()
            })
            .collect()
    }

    /// Removes from the index the ids of `ids` whose documents are gone (expired).
    async fn prune(&self, collection: &str, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut inv = self.scripts.prune.prepare_invoke();
        inv.key(self.index_key(collection));
        for id in ids {
            inv.key(self.doc_key(collection, id)).arg(id);
        }
        let _: i64 = self.invoke("query", &inv).await?;
        Ok(())
    }

    /// Reads the next chunk of the index after `after` (exclusive; from the start if
    /// `None`): the live documents and whether the index has more.
    async fn next_chunk(
        &self,
        collection: &str,
        after: Option<&str>,
    ) -> Result<(Vec<Document>, Option<String>)> {
        let min = match after {
            Some(id) => format!("({id}"),
            None => "-".to_string(),
        };
        let ids: Vec<String> = self
            .call(
                "query",
                redis::cmd("ZRANGEBYLEX")
                    .arg(self.index_key(collection))
                    .arg(min)
                    .arg("+")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(QUERY_CHUNK),
            )
            .await?;
        let last = (ids.len() == QUERY_CHUNK).then(|| ids[ids.len() - 1].clone());
        let docs = self.read(collection, &ids).await?;
        let mut live = Vec::with_capacity(docs.len());
        let mut gone = Vec::new();
        for (id, doc) in ids.into_iter().zip(docs) {
            match doc {
                Some(d) => live.push(d),
                None => gone.push(id),
            }
        }
        self.prune(collection, &gone).await?;
        Ok((live, last))
    }

    async fn run_query(&self, collection: &str, query: Query) -> Result<QueryPage> {
        check_collection(collection)?;
        check_capabilities(BACKEND, &self.capabilities(), &query)?;
        let limit = page_limit(BACKEND, &query)?;
        let cursor = query
            .cursor
            .as_deref()
            .map(|c| KeysetCursor::decode(BACKEND, c, &query.order_by))
            .transpose()?;
        let mut page: Vec<Document> = Vec::new();
        let mut more = false;
        if query.order_by.is_empty() {
            // Id order is the index order: read from the cursor on until the page is full.
            let mut after = cursor.as_ref().map(|c| c.id().to_string());
            'scan: loop {
                let (docs, next) = self.next_chunk(collection, after.as_deref()).await?;
                for doc in docs {
                    if matches_filters(&doc.value, &query.filters) {
                        if page.len() == limit {
                            more = true;
                            break 'scan;
                        }
                        page.push(doc);
                    }
                }
                match next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
        } else {
            // Any other order needs the whole collection, sorted here.
            let mut all = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let (docs, next) = self.next_chunk(collection, after.as_deref()).await?;
                all.extend(
                    docs.into_iter()
                        .filter(|d| matches_filters(&d.value, &query.filters)),
                );
                match next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
            return Ok(paginate(all, &query.order_by, cursor.as_ref(), limit));
        }
        let next_cursor = if more {
            page.last()
                .map(|d| KeysetCursor::after(d, &query.order_by).encode())
        } else {
            None
        };
        Ok(QueryPage {
            documents: page,
            next_cursor,
        })
    }
}

#[async_trait]
impl DocumentStore for RedisDocumentStore {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            backend: BACKEND.to_string(),
            location: self.location.clone(),
        }
    }

    fn capabilities(&self) -> DatabaseCapabilities {
        DatabaseCapabilities::full()
    }

    async fn get(&self, collection: &str, id: &str) -> Result<Option<Document>> {
        let span = tracing::debug_span!(
            "database",
            backend = BACKEND,
            operation = "get",
            collection,
            id
        );
        async move {
            check_collection(collection)?;
            check_id(id)?;
            let mut docs = self.read(collection, &[id.to_string()]).await?;
            Ok(docs.pop().flatten())
        }
        .instrument(span)
        .await
    }

    async fn get_many(&self, collection: &str, ids: &[String]) -> Result<Vec<Option<Document>>> {
        let span = tracing::debug_span!(
            "database",
            backend = BACKEND,
            operation = "get_many",
            collection,
            count = ids.len()
        );
        async move {
            check_collection(collection)?;
            for id in ids {
                check_id(id)?;
            }
            self.read(collection, ids).await
        }
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
        let span = tracing::debug_span!(
            "database",
            backend = BACKEND,
            operation = "put",
            collection,
            id
        );
        async move {
            check_collection(collection)?;
            check_id(id)?;
            check_document(BACKEND, &self.capabilities(), &value, &options)?;
            let ttl = ttl_arg(options.ttl)?;
            let json = serde_json::to_string(&value)
                .map_err(|e| Error::invalid(BACKEND, format!("value does not serialize: {e}")))?;
            let (mode, want) = mode_of(options.condition);
            let mut inv = self.scripts.put.prepare_invoke();
            inv.key(self.doc_key(collection, id))
                .key(self.index_key(collection))
                .arg(mode)
                .arg(want)
                .arg(json)
                .arg(ttl)
                .arg(id);
            let (status, rev): (i64, u64) = self.invoke("put", &inv).await?;
            match status {
                ST_OK => Ok(Revision(rev)),
                ST_EXISTS => Err(Error::new(
                    ErrorKind::AlreadyExists,
                    BACKEND,
                    format!("document `{id}` already exists in `{collection}`"),
                )),
                ST_MISMATCH => Err(Error::new(
                    ErrorKind::PreconditionFailed,
                    BACKEND,
                    format!("document `{id}` in `{collection}` is not at the expected revision"),
                )),
                other => Err(Error::internal(
                    BACKEND,
                    format!("put: unexpected script status {other}"),
                )),
            }
        }
        .instrument(span)
        .await
    }

    async fn delete(&self, collection: &str, id: &str, condition: WriteCondition) -> Result<bool> {
        let span = tracing::debug_span!(
            "database",
            backend = BACKEND,
            operation = "delete",
            collection,
            id
        );
        async move {
            check_collection(collection)?;
            check_id(id)?;
            let (mode, want) = mode_of(condition);
            let mut inv = self.scripts.delete.prepare_invoke();
            inv.key(self.doc_key(collection, id))
                .key(self.index_key(collection))
                .arg(mode)
                .arg(want)
                .arg(id);
            let status: i64 = self.invoke("delete", &inv).await?;
            match status {
                ST_OK => Ok(false),
                ST_DELETED => Ok(true),
                ST_EXISTS => Err(Error::new(
                    ErrorKind::AlreadyExists,
                    BACKEND,
                    format!("document `{id}` exists in `{collection}` (condition: absent)"),
                )),
                ST_MISMATCH => Err(Error::new(
                    ErrorKind::PreconditionFailed,
                    BACKEND,
                    format!("document `{id}` in `{collection}` is not at the expected revision"),
                )),
                other => Err(Error::internal(
                    BACKEND,
                    format!("delete: unexpected script status {other}"),
                )),
            }
        }
        .instrument(span)
        .await
    }

    async fn write_batch(&self, ops: Vec<WriteOp>) -> Result<Vec<WriteOutcome>> {
        let span = tracing::debug_span!(
            "database",
            backend = BACKEND,
            operation = "write_batch",
            count = ops.len()
        );
        async move {
            if ops.is_empty() {
                return Ok(Vec::new());
            }
            if ops.len() > MAX_BATCH_OPS {
                return Err(Error::invalid(
                    BACKEND,
                    format!("a batch of {} writes; the limit is {MAX_BATCH_OPS}", ops.len()),
                ));
            }
            let caps = self.capabilities();
            // Validate everything before anything reaches the server.
            let mut inv = self.scripts.batch.prepare_invoke();
            for op in &ops {
                match op {
                    WriteOp::Put {
                        collection,
                        id,
                        value,
                        options,
                    } => {
                        check_collection(collection)?;
                        check_id(id)?;
                        check_document(BACKEND, &caps, value, options)?;
                        let ttl = ttl_arg(options.ttl)?;
                        let json = serde_json::to_string(value).map_err(|e| {
                            Error::invalid(BACKEND, format!("value does not serialize: {e}"))
                        })?;
                        let (mode, want) = mode_of(options.condition);
                        inv.key(self.doc_key(collection, id))
                            .key(self.index_key(collection))
                            .arg("p")
                            .arg(mode)
                            .arg(want)
                            .arg(json)
                            .arg(ttl)
                            .arg(id.as_str());
                    }
                    WriteOp::Delete {
                        collection,
                        id,
                        condition,
                    } => {
                        check_collection(collection)?;
                        check_id(id)?;
                        let (mode, want) = mode_of(*condition);
                        inv.key(self.doc_key(collection, id))
                            .key(self.index_key(collection))
                            .arg("d")
                            .arg(mode)
                            .arg(want)
                            .arg("")
                            .arg("")
                            .arg(id.as_str());
                    }
                }
            }
            let reply: Vec<u64> = self.invoke("write_batch", &inv).await?;
            let Some((&status, outcomes)) = reply.split_first() else {
                return Err(Error::internal(BACKEND, "write_batch: empty script reply"));
            };
            if status == 0 {
                if outcomes.len() != ops.len() {
                    return Err(Error::internal(BACKEND, "write_batch: short script reply"));
                }
                return Ok(ops
                    .iter()
                    .zip(outcomes)
                    .map(|(op, &n)| match op {
                        WriteOp::Put { .. } => WriteOutcome::Put(Revision(n)),
                        WriteOp::Delete { .. } => WriteOutcome::Deleted(n == 1),
                    })
                    .collect());
            }
            // `status` is the failing op's 1-based number, the next value why.
            let index = usize::try_from(status - 1).unwrap_or(usize::MAX);
            let (collection, id) = match ops.get(index) {
                Some(WriteOp::Put { collection, id, .. } | WriteOp::Delete { collection, id, .. }) => {
                    (collection.as_str(), id.as_str())
                }
                None => return Err(Error::internal(BACKEND, "write_batch: bad script reply")),
            };
            match outcomes.first().map(|&s| s as i64) {
                Some(ST_EXISTS) => Err(Error::new(
                    ErrorKind::AlreadyExists,
                    BACKEND,
                    format!(
                        "batch op {index}: document `{id}` already exists in `{collection}`; nothing was written"
                    ),
                )),
                Some(ST_MISMATCH) => Err(Error::new(
                    ErrorKind::PreconditionFailed,
                    BACKEND,
                    format!(
                        "batch op {index}: document `{id}` in `{collection}` is not at the expected revision; nothing was written"
                    ),
                )),
                _ => Err(Error::internal(BACKEND, "write_batch: bad script reply")),
            }
        }
        .instrument(span)
        .await
    }

    async fn query(&self, collection: &str, query: Query) -> Result<QueryPage> {
        let span = tracing::debug_span!(
            "database",
            backend = BACKEND,
            operation = "query",
            collection
        );
        self.run_query(collection, query).instrument(span).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_args() {
        assert_eq!(ttl_arg(None).unwrap(), "");
        assert_eq!(ttl_arg(Some(Duration::from_micros(10))).unwrap(), "1");
        assert_eq!(ttl_arg(Some(Duration::from_secs(2))).unwrap(), "2000");
        assert!(ttl_arg(Some(Duration::MAX)).is_err());
    }
}
