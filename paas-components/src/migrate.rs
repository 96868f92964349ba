//! Portable copy / migrate: move a prefix of objects or a collection of documents from any
//! backend to any other of the same trait, the first step of moving a service between clouds.
//!
//! ```
//! # use std::sync::Arc;
//! # use cloud_abstraction::storage::BlobStoreExt;
//! # use paas_components::migrate::{copy_blobs, CopyOptions};
//! # use paas_components::storage::MemoryBlobStore;
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> cloud_abstraction::Result<()> {
//! let from = MemoryBlobStore::new();
//! let to = MemoryBlobStore::new();
//! from.put_bytes("telemetry/v1/a.json", "{}".into()).await?;
//! let report = copy_blobs(&from, &to, "telemetry/", CopyOptions::default(), |p| {
//!     eprintln!("{} copied, {} bytes", p.items, p.bytes);
//! })
//! .await?;
//! assert_eq!(report.copied, 1);
//! assert!(report.mismatches.is_empty());
//! # Ok(()) }
//! ```
//!
//! # Passes
//!
//! 1. **Pre-flight**: the source is paged through once and every item is checked against what
//!    the destination will refuse: keys and ids, content types and user metadata (what the
//!    destination can hold of attributes as another store wrote them:
//!    [`PutOptions::as_stored`], its `metadata_names` and `metadata` capabilities; an object
//!    boto3 wrote with the metadata name `my-key` copies to S3 or a file store, but not to
//!    Azure, which holds only portable names unchanged),
//!    sizes (`max_put_size` for objects that go up in one put, the multipart part limit for
//!    the others, `max_document_size`), and TTLs (the `ttl` capability). The first offending
//!    item fails the copy with [`InvalidArgument`](ErrorKind::InvalidArgument) naming it, and
//!    nothing has been written. Objects are headed for this pass (listings carry no metadata
//!    on S3 and Azure), so it costs one request per object.
//! 2. **Copy**, page by page, with a progress callback after each item.
//! 3. **Verification** (unless turned off), right after each page: every item of the page is
//!    read back from the destination and compared with what was read from the source
//!    (objects: size, a SHA-256 of the content computed while copying, content type if it was
//!    set, metadata if the destination stores it; documents: the value).
//!
//! # Memory
//!
//! The bound is **one page plus one chunk**, independent of the number and size of items:
//! one listing or query page (`page_size` entries; for the page being verified, a key, a
//! digest and the metadata per object, or the page's documents) plus one chunk of
//! [`CopyOptions::chunk_size`] bytes. Objects larger than the chunk are streamed: ranged reads
//! of one chunk each from the source (pinned to the ETag of the first read, so a source that
//! changes during the copy is an error rather than a mix of versions) go up as the parts of a
//! multipart upload, and verification reads the destination back chunk by chunk. Only if
//! the source has no ranged reads or the destination no multipart upload is an object read
//! whole (then it must fit `max_put_size`). Beyond that, the report's
//! [`mismatches`](MigrationReport::mismatches) keeps the keys that differ, and the backends
//! themselves may buffer (the in-memory store holds everything, by definition). The
//! `migrate_memory` test measures the peak of live heap bytes between on-disk embedded stores
//! (SQLite, file) and asserts it stays under 64 MiB: 20,000 documents peak at about 0.5 MiB,
//! a 256 MiB object at one chunk (8 MiB) with the default options.
//!
//! Documents keep their ids and values; revisions are the destination's own (a revision is only
//! meaningful within one store), and a remaining TTL is carried over.

use bytes::Bytes;
use cloud_abstraction::database::{Document, DocumentStore, PutDocumentOptions, Query};
use cloud_abstraction::storage::{
    BlobStore, GetOptions, GetRange, GetResult, ListOptions, ObjectMeta, PartId, PutOptions,
};
use cloud_abstraction::{Error, ErrorKind, Result, validate};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::SystemTime;

/// Options of a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyOptions {
    /// Replace items that already exist in the destination (default). When false, an existing
    /// destination item is left alone and counted as skipped.
    pub overwrite: bool,
    /// Read every copied item back and compare it with the source (default true).
    pub verify: bool,
    /// Page size for listing the source (default 500).
    pub page_size: usize,
    /// Objects larger than this are streamed in chunks of this size (default 8 MiB; raised to
    /// the destination's `multipart_min_part_size` where that is larger).
    pub chunk_size: usize,
}

/// The default [`CopyOptions::chunk_size`].
pub const DEFAULT_CHUNK_SIZE: usize = 8 * 1024 * 1024;

/// The most parts of one multipart upload (S3's and Azure's limit).
const MAX_PARTS: u64 = 10_000;

impl Default for CopyOptions {
    fn default() -> Self {
        Self {
            overwrite: true,
            verify: true,
            page_size: 500,
            chunk_size: DEFAULT_CHUNK_SIZE,
        }
    }
}

/// Progress so far, handed to the callback after each item.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// Items copied or skipped so far.
    pub items: u64,
    /// Payload bytes copied so far (objects: content; documents: serialized JSON).
    pub bytes: u64,
    /// The key or id just handled.
    pub last: String,
}

/// What a copy did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// Items written to the destination.
    pub copied: u64,
    /// Items left alone because they existed (with `overwrite: false`).
    pub skipped: u64,
    /// Payload bytes written.
    pub bytes: u64,
    /// Items read back and found equal.
    pub verified: u64,
    /// Keys or ids that differ between source and destination after the copy.
    pub mismatches: Vec<String>,
}

/// The part of an object copy that verification needs.
struct CopiedObject {
    key: String,
    size: u64,
    digest: [u8; 32],
    content_type: Option<String>,
    metadata: BTreeMap<String, String>,
}

/// How one object moves: in one piece, or in chunks of this many bytes.
fn plan(from: &dyn BlobStore, to: &dyn BlobStore, size: u64, options: &CopyOptions) -> Option<u64> {
    let (src, dst) = (from.capabilities(), to.capabilities());
    let chunk = (options.chunk_size.max(1) as u64).max(dst.multipart_min_part_size);
    // Enough parts for any size within the part limit.
    let chunk = chunk.max(size.div_ceil(MAX_PARTS));
    (size > chunk && src.ranges && dst.multipart).then_some(chunk)
}

fn refused(to: &dyn BlobStore, what: &str, e: Error) -> Error {
    Error::invalid(
        to.info().backend,
        format!(
            "pre-flight: {what} would be refused by the destination `{}`: {}; nothing was copied",
            to.info().backend,
            e.message()
        ),
    )
}

/// Pass 1 of [`copy_blobs`]: fails on the first object the destination would refuse.
async fn preflight_blobs(
    from: &dyn BlobStore,
    to: &dyn BlobStore,
    prefix: &str,
    options: &CopyOptions,
) -> Result<()> {
    // Errors name the destination in their message; their backend is this module.
    let backend = "migrate";
    let caps = to.capabilities();
    let mut list = ListOptions {
        max_results: Some(options.page_size.max(1)),
        ..ListOptions::prefix(prefix)
    };
    loop {
        let page = from.list_page(list.clone()).await?;
        for listed in page.objects {
            let what = format!("object `{}`", listed.key);
            validate::object_key(backend, &listed.key).map_err(|e| refused(to, &what, e))?;
            let meta = match from.head(&listed.key).await {
                Ok(meta) => meta,
                // Deleted since the listing: the copy pass will not see it either.
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let has_attributes = meta.content_type.is_some() || !meta.metadata.is_empty();
            if has_attributes && !caps.metadata {
                return Err(refused(
                    to,
                    &what,
                    Error::invalid(
                        backend,
                        "it has a content type or metadata, which the destination does not store",
                    ),
                ));
            }
            let put = PutOptions {
                content_type: meta.content_type.clone(),
                metadata: meta.metadata.clone(),
                as_stored: true,
                ..PutOptions::default()
            };
            validate::put_options(backend, &put, caps.metadata_names)
                .map_err(|e| refused(to, &what, e))?;
            if plan(from, to, meta.size, options).is_none() {
                let len = usize::try_from(meta.size).unwrap_or(usize::MAX);
                validate::payload_size(backend, "the object", len, caps.max_put_size)
                    .map_err(|e| refused(to, &what, e))?;
            }
        }
        match page.next_page_token {
            Some(token) => list.page_token = Some(token),
            None => return Ok(()),
        }
    }
}

/// Copies every object under `prefix` from `from` to `to`, with content type and metadata.
///
/// See the [module docs](self) for the passes and the memory bound.
pub async fn copy_blobs(
    from: &dyn BlobStore,
    to: &dyn BlobStore,
    prefix: &str,
    options: CopyOptions,
    mut progress: impl FnMut(&Progress),
) -> Result<MigrationReport> {
    preflight_blobs(from, to, prefix, &options).await?;
    let mut report = MigrationReport::default();
    let mut state = Progress::default();
    let mut list = ListOptions {
        max_results: Some(options.page_size.max(1)),
        ..ListOptions::prefix(prefix)
    };
    loop {
        let page = from.list_page(list.clone()).await?;
        let mut copied = Vec::new();
        for meta in page.objects {
            let exists = !options.overwrite && head_exists(to, &meta.key).await?;
            if exists {
                report.skipped += 1;
            } else {
                let object = copy_object(from, to, &meta, &options).await?;
                report.copied += 1;
                report.bytes += object.size;
                state.bytes += object.size;
                if options.verify {
                    copied.push(object);
                }
            }
            state.items += 1;
            state.last = meta.key;
            progress(&state);
        }
        for object in copied {
            if verify_object(to, &object, &options).await? {
                report.verified += 1;
            } else {
                report.mismatches.push(object.key);
            }
        }
        match page.next_page_token {
            Some(token) => list.page_token = Some(token),
            None => return Ok(report),
        }
    }
}

/// Copies one object, streamed in chunks when [`plan`] says so.
async fn copy_object(
    from: &dyn BlobStore,
    to: &dyn BlobStore,
    listed: &ObjectMeta,
    options: &CopyOptions,
) -> Result<CopiedObject> {
    let key = listed.key.as_str();
    let Some(chunk) = plan(from, to, listed.size, options) else {
        let object = from.get(key, GetOptions::default()).await?;
        let put = PutOptions {
            content_type: object.meta.content_type.clone(),
            metadata: object.meta.metadata.clone(),
            as_stored: true,
            ..PutOptions::default()
        };
        let copied = CopiedObject {
            key: key.to_string(),
            size: object.data.len() as u64,
            digest: Sha256::digest(&object.data).into(),
            content_type: object.meta.content_type,
            metadata: object.meta.metadata,
        };
        to.put(key, object.data, put).await?;
        return Ok(copied);
    };
    let pin = from.capabilities().conditional_get;
    let first = from.get(key, GetOptions::range(0..chunk)).await?;
    let meta = first.meta.clone();
    let put = PutOptions {
        content_type: meta.content_type.clone(),
        metadata: meta.metadata.clone(),
        as_stored: true,
        ..PutOptions::default()
    };
    let upload = to.create_multipart(key, put).await?;
    let mut hasher = Sha256::new();
    let streamed: Result<Vec<PartId>> = async {
        let mut parts = Vec::new();
        let mut data = first.data;
        let mut offset = 0u64;
        loop {
            hasher.update(&data);
            offset += data.len() as u64;
            let part = to
                .put_part(key, &upload, parts.len() as u32, std::mem::take(&mut data))
                .await?;
            parts.push(part);
            if offset >= meta.size {
                return Ok(parts);
            }
            let next = GetOptions {
                range: Some(GetRange::Bounded(offset..(offset + chunk).min(meta.size))),
                if_match: pin.then(|| meta.etag.clone()),
                ..GetOptions::default()
            };
            data = match from.get(key, next).await {
                Ok(got) => got.data,
                Err(e) if e.kind() == ErrorKind::PreconditionFailed => {
                    return Err(Error::new(
                        ErrorKind::Unavailable,
                        "migrate",
                        format!("object `{key}` changed during the copy; try again"),
                    ));
                }
                Err(e) => return Err(e),
            };
            if data.is_empty() {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    "migrate",
                    format!("object `{key}` shrank during the copy; try again"),
                ));
            }
        }
    }
    .await;
    let parts = match streamed {
        Ok(parts) => parts,
        Err(e) => {
            // Best effort: the copy error is what the caller needs to see.
            let _ = to.abort_multipart(key, &upload).await;
            return Err(e);
        }
    };
    to.complete_multipart(key, &upload, parts).await?;
    Ok(CopiedObject {
        key: key.to_string(),
        size: meta.size,
        digest: hasher.finalize().into(),
        content_type: meta.content_type,
        metadata: meta.metadata,
    })
}

/// Reads one copied object back from the destination (chunk by chunk when it is large) and
/// compares it with what was copied.
async fn verify_object(
    to: &dyn BlobStore,
    copied: &CopiedObject,
    options: &CopyOptions,
) -> Result<bool> {
    let caps = to.capabilities();
    let chunk = (options.chunk_size.max(1) as u64).max(1);
    let not_found = |e: &Error| e.kind() == ErrorKind::NotFound;
    let mut hasher = Sha256::new();
    let meta = if copied.size > chunk && caps.ranges {
        let first = match to.get(&copied.key, GetOptions::range(0..chunk)).await {
            Ok(first) => first,
            Err(e) if not_found(&e) => return Ok(false),
            Err(e) => return Err(e),
        };
        if first.meta.size != copied.size {
            return Ok(false);
        }
        let GetResult { meta, data, .. } = first;
        hasher.update(&data);
        let mut offset = data.len() as u64;
        // Only the metadata is kept: one chunk in memory at a time.
        drop(data);
        let pin = caps.conditional_get.then(|| meta.etag.clone());
        while offset < copied.size {
            let next = GetOptions {
                range: Some(GetRange::Bounded(offset..(offset + chunk).min(copied.size))),
                if_match: pin.clone(),
                ..GetOptions::default()
            };
            let data: Bytes = to.get(&copied.key, next).await?.data;
            if data.is_empty() {
                return Ok(false);
            }
            offset += data.len() as u64;
            hasher.update(&data);
        }
        meta
    } else {
        match to.get(&copied.key, GetOptions::default()).await {
            Ok(got) => {
                hasher.update(&got.data);
                got.meta
            }
            Err(e) if not_found(&e) => return Ok(false),
            Err(e) => return Err(e),
        }
    };
    let digest: [u8; 32] = hasher.finalize().into();
    // Every store answers the same default content type for an object written without one;
    // a source without the `metadata` capability has none, and the destination its default.
    let same_content_type =
        copied.content_type.is_none() || copied.content_type == meta.content_type;
    let same_metadata = !caps.metadata || (same_content_type && copied.metadata == meta.metadata);
    Ok(meta.size == copied.size && digest == copied.digest && same_metadata)
}

async fn head_exists(store: &dyn BlobStore, key: &str) -> Result<bool> {
    match store.head(key).await {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Pass 1 of [`copy_collection`]: fails on the first document the destination would refuse.
async fn preflight_documents(
    from: &dyn DocumentStore,
    to: &dyn DocumentStore,
    collection: &str,
    options: &CopyOptions,
) -> Result<()> {
    let caps = to.capabilities();
    let destination = to.info().backend;
    let refused = |id: &str, why: String| {
        Error::invalid(
            "migrate",
            format!(
                "pre-flight: document `{id}` would be refused by the destination \
                 `{destination}`: {why}; nothing was copied"
            ),
        )
    };
    let mut query = Query::all().limit(options.page_size.max(1));
    loop {
        let page = from.query(collection, query.clone()).await?;
        for doc in &page.documents {
            validate::document_id("migrate", &doc.id)
                .map_err(|e| refused(&doc.id, e.message().to_string()))?;
            if doc.expires_at.is_some() && !caps.ttl {
                return Err(refused(
                    &doc.id,
                    "it has a TTL, which the destination does not support".into(),
                ));
            }
            if let Some(max) = caps.max_document_size {
                let size = serde_json::to_vec(&doc.value).map(|v| v.len()).unwrap_or(0);
                validate::payload_size("migrate", "the document", size, Some(max))
                    .map_err(|e| refused(&doc.id, e.message().to_string()))?;
            }
        }
        match page.next_cursor {
            Some(cursor) => query.cursor = Some(cursor),
            None => return Ok(()),
        }
    }
}

/// Copies every document of `collection` from `from` to `to` (the source must support
/// queries, to enumerate the collection).
///
/// See the [module docs](self) for the passes and the memory bound.
pub async fn copy_collection(
    from: &dyn DocumentStore,
    to: &dyn DocumentStore,
    collection: &str,
    options: CopyOptions,
    mut progress: impl FnMut(&Progress),
) -> Result<MigrationReport> {
    if !from.capabilities().query {
        return Err(Error::new(
            ErrorKind::Unsupported,
            from.info().backend,
            "copying a collection needs a source that can enumerate it (the `query` capability)",
        ));
    }
    preflight_documents(from, to, collection, &options).await?;
    let mut report = MigrationReport::default();
    let mut state = Progress::default();
    let mut query = Query::all().limit(options.page_size.max(1));
    loop {
        let page = from.query(collection, query.clone()).await?;
        // Indexes into the page of the documents written, for verification.
        let mut copied: Vec<usize> = Vec::new();
        for (i, doc) in page.documents.iter().enumerate() {
            if !options.overwrite && to.get(collection, &doc.id).await?.is_some() {
                report.skipped += 1;
            } else {
                let ttl = match doc.expires_at {
                    None => None,
                    Some(at) => match at.duration_since(SystemTime::now()) {
                        Ok(left) => Some(left),
                        // Expired between the read and now: nothing to carry over.
                        Err(_) => continue,
                    },
                };
                let size = serde_json::to_vec(&doc.value)
                    .map(|v| v.len() as u64)
                    .unwrap_or(0);
                to.put(
                    collection,
                    &doc.id,
                    doc.value.clone(),
                    PutDocumentOptions {
                        ttl,
                        ..PutDocumentOptions::default()
                    },
                )
                .await?;
                report.copied += 1;
                report.bytes += size;
                state.bytes += size;
                if options.verify {
                    copied.push(i);
                }
            }
            state.items += 1;
            state.last = doc.id.clone();
            progress(&state);
        }
        for i in copied {
            let doc: &Document = &page.documents[i];
            match to.get(collection, &doc.id).await? {
                Some(copy) if copy.value == doc.value => report.verified += 1,
                _ => report.mismatches.push(doc.id.clone()),
            }
        }
        match page.next_cursor {
            Some(cursor) => query.cursor = Some(cursor),
            None => return Ok(report),
        }
    }
}
