//! [`MemoryDocumentStore`]: an in-process document store (`mem://`).

use super::common::{check_capabilities, check_document, expires_at};
use async_trait::async_trait;
use cloud_abstraction::database::paging::{KeysetCursor, paginate};
use cloud_abstraction::database::{
    DatabaseCapabilities, Document, DocumentStore, PutDocumentOptions, Query, QueryPage, Revision,
    WriteCondition, WriteOp, WriteOutcome, matches_filters, page_limit,
};
use cloud_abstraction::{BackendInfo, Error, Location, Result, validate};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

const BACKEND: &str = "memory";

/// One stored document.
#[derive(Debug, Clone)]
struct Entry {
    value: Value,
    revision: Revision,
    expires_at: Option<SystemTime>,
}

impl Entry {
    fn live(&self, now: SystemTime) -> bool {
        self.expires_at.is_none_or(|t| t > now)
    }

    fn document(&self, id: &str) -> Document {
        Document {
            id: id.to_string(),
            value: self.value.clone(),
            revision: self.revision,
            expires_at: self.expires_at,
        }
    }
}

/// collection -> id -> entry. Ids in a `BTreeMap` so that "all, in id order" needs no sort.
type Collections = HashMap<String, BTreeMap<String, Entry>>;

/// An in-process [`DocumentStore`]: all capabilities, nothing persisted.
///
/// Every operation takes one mutex for its whole duration, so single writes, conditional
/// writes and batches are trivially atomic and linearizable. Queries evaluate the reference
/// semantics ([`matches_filters`] and the reference order) over the collection; cursors are
/// keyset cursors ([`KeysetCursor`]), so a document left unchanged is returned exactly once
/// while others are written between pages.
/// Expired documents are treated as absent on every read and removed when next written.
///
/// Clones share the same data.
///
/// ```
/// use cloud_abstraction::DocumentStore;
/// use cloud_abstraction::database::PutDocumentOptions;
/// use paas_components::database::MemoryDocumentStore;
///
/// # tokio_test_block_on(async {
/// let store = MemoryDocumentStore::new();
/// let rev = store
///     .put("cars", "VIN1", serde_json::json!({"km": 10}), PutDocumentOptions::create())
///     .await?;
/// assert_eq!(store.get("cars", "VIN1").await?.unwrap().revision, rev);
/// # Ok::<(), cloud_abstraction::Error>(())
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Clone, Default)]
pub struct MemoryDocumentStore {
    data: Arc<Mutex<Collections>>,
    location: Location,
}

impl fmt::Debug for MemoryDocumentStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the documents: they are user data.
        f.debug_struct("MemoryDocumentStore")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl MemoryDocumentStore {
    /// An empty store at [`Location::local`].
    pub fn new() -> Self {
        Self::default()
    }

    /// The same store, reporting `location` as where it runs (for routing tests).
    pub fn with_location(mut self, location: Location) -> Self {
        self.location = location;
        self
    }

    fn lock(&self) -> MutexGuard<'_, Collections> {
        // A panic while holding the lock cannot leave an entry half-written (every mutation is
        // a single map operation), so the data behind a poisoned lock is still consistent.
        self.data.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The live entry of `id`, if any.
fn live<'a>(
    data: &'a Collections,
    collection: &str,
    id: &str,
    now: SystemTime,
) -> Option<&'a Entry> {
    data.get(collection)
        .and_then(|c| c.get(id))
        .filter(|e| e.live(now))
}

/// Applies one validated op to `data`, or fails without changing anything.
fn apply(data: &mut Collections, op: WriteOp, now: SystemTime) -> Result<WriteOutcome> {
    match op {
        WriteOp::Put {
            collection,
            id,
            value,
            options,
        } => {
            let current = live(data, &collection, &id, now).map(|e| e.revision);
            options.condition.check(BACKEND, current)?;
            let revision = Revision(current.map_or(1, |r| r.0.saturating_add(1)));
            let entry = Entry {
                value,
                revision,
                expires_at: expires_at(BACKEND, now, options.ttl)?,
            };
            data.entry(collection).or_default().insert(id, entry);
            Ok(WriteOutcome::Put(revision))
        }
        WriteOp::Delete {
            collection,
            id,
            condition,
        } => {
            let current = live(data, &collection, &id, now).map(|e| e.revision);
            condition.check(BACKEND, current)?;
            if let Some(c) = data.get_mut(&collection) {
                c.remove(&id);
                if c.is_empty() {
                    data.remove(&collection);
                }
            }
            Ok(WriteOutcome::Deleted(current.is_some()))
        }
    }
}

fn validate_op(op: &WriteOp, caps: &DatabaseCapabilities) -> Result<()> {
    match op {
        WriteOp::Put {
            collection,
            id,
            value,
            options,
        } => {
            validate::resource_name(BACKEND, "collection", collection)?;
            validate::document_id(BACKEND, id)?;
            check_document(BACKEND, caps, value, options)
        }
        WriteOp::Delete { collection, id, .. } => {
            validate::resource_name(BACKEND, "collection", collection)?;
            validate::document_id(BACKEND, id)
        }
    }
}

#[async_trait]
impl DocumentStore for MemoryDocumentStore {
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
        let data = self.lock();
        Ok(live(&data, collection, id, SystemTime::now()).map(|e| e.document(id)))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, collection = %collection, count = ids.len()), err(level = "debug"))]
    async fn get_many(&self, collection: &str, ids: &[String]) -> Result<Vec<Option<Document>>> {
        validate::resource_name(BACKEND, "collection", collection)?;
        for id in ids {
            validate::document_id(BACKEND, id)?;
        }
        let data = self.lock();
        let now = SystemTime::now();
        Ok(ids
            .iter()
            .map(|id| live(&data, collection, id, now).map(|e| e.document(id)))
            .collect())
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
        validate_op(&op, &self.capabilities())?;
        let mut data = self.lock();
        match apply(&mut data, op, SystemTime::now())? {
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
        validate_op(&op, &self.capabilities())?;
        let mut data = self.lock();
        match apply(&mut data, op, SystemTime::now())? {
            WriteOutcome::Deleted(existed) => Ok(existed),
            WriteOutcome::Put(_) => Err(Error::internal(BACKEND, "a delete reported a put")),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, count = ops.len()), err(level = "debug"))]
    async fn write_batch(&self, ops: Vec<WriteOp>) -> Result<Vec<WriteOutcome>> {
        let caps = self.capabilities();
        for op in &ops {
            validate_op(op, &caps)?;
        }
        let mut data = self.lock();
        let now = SystemTime::now();
        // Apply to a copy of the touched collections only, and swap them in on success:
        // all or nothing without cloning the whole store.
        let mut staged: Collections = HashMap::new();
        for op in &ops {
            let (WriteOp::Put { collection, .. } | WriteOp::Delete { collection, .. }) = op;
            if !staged.contains_key(collection) {
                let copy = data.get(collection).cloned().unwrap_or_default();
                staged.insert(collection.clone(), copy);
            }
        }
        let mut outcomes = Vec::with_capacity(ops.len());
        for op in ops {
            outcomes.push(apply(&mut staged, op, now)?);
        }
        for (collection, docs) in staged {
            if docs.is_empty() {
                data.remove(&collection);
            } else {
                data.insert(collection, docs);
            }
        }
        Ok(outcomes)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, collection = %collection), err(level = "debug"))]
    async fn query(&self, collection: &str, query: Query) -> Result<QueryPage> {
        validate::resource_name(BACKEND, "collection", collection)?;
        check_capabilities(BACKEND, &self.capabilities(), &query)?;
        let limit = page_limit(BACKEND, &query)?;
        let cursor = query
            .cursor
            .as_deref()
            .map(|c| KeysetCursor::decode(BACKEND, c, &query.order_by))
            .transpose()?;
        let matching: Vec<Document> = {
            let data = self.lock();
            let now = SystemTime::now();
            data.get(collection)
                .into_iter()
                .flatten()
                .filter(|(_, e)| e.live(now) && matches_filters(&e.value, &query.filters))
                .map(|(id, e)| e.document(id))
                .collect()
        };
        Ok(paginate(matching, &query.order_by, cursor.as_ref(), limit))
    }
}
