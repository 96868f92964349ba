//! Portable copy / migrate: move a prefix of objects or a collection of documents from any
//! backend to any other of the same trait, the first step of moving a service between clouds.
//!
//! Both helpers stream page by page (memory use is one page plus one object), report progress
//! through a callback, and end with a verification pass that reads every copied item back
//! from the destination and compares it with the source.
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
//! Documents keep their ids and values; revisions are the destination's own (a revision is only
//! meaningful within one store), and a remaining TTL is carried over.

use cloud_abstraction::database::{Document, DocumentStore, PutDocumentOptions, Query};
use cloud_abstraction::storage::{BlobStore, GetOptions, ListOptions, PutOptions};
use cloud_abstraction::{Error, ErrorKind, Result};
use std::time::SystemTime;

/// Options of a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyOptions {
    /// Replace items that already exist in the destination (default). When false, an existing
    /// destination item is left alone and counted as skipped.
    pub overwrite: bool,
    /// Read every copied item back and compare it with the source (default true).
    pub verify: bool,
    /// Page size for listing the source.
    pub page_size: usize,
}

impl Default for CopyOptions {
    fn default() -> Self {
        Self {
            overwrite: true,
            verify: true,
            page_size: 500,
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

/// Copies every object under `prefix` from `from` to `to`, with content type and metadata.
pub async fn copy_blobs(
    from: &dyn BlobStore,
    to: &dyn BlobStore,
    prefix: &str,
    options: CopyOptions,
    mut progress: impl FnMut(&Progress),
) -> Result<MigrationReport> {
    let mut report = MigrationReport::default();
    let mut state = Progress::default();
    let mut copied_keys = Vec::new();
    let mut list = ListOptions {
        max_results: Some(options.page_size.max(1)),
        ..ListOptions::prefix(prefix)
    };
    loop {
        let page = from.list_page(list.clone()).await?;
        for meta in page.objects {
            let exists = !options.overwrite && head_exists(to, &meta.key).await?;
            if exists {
                report.skipped += 1;
            } else {
                let object = from.get(&meta.key, GetOptions::default()).await?;
                let put = PutOptions {
                    content_type: object.meta.content_type.clone(),
                    metadata: object.meta.metadata.clone(),
                    ..PutOptions::default()
                };
                let size = object.data.len() as u64;
                to.put(&meta.key, object.data, put).await?;
                report.copied += 1;
                report.bytes += size;
                state.bytes += size;
                copied_keys.push(meta.key.clone());
            }
            state.items += 1;
            state.last = meta.key;
            progress(&state);
        }
        match page.next_page_token {
            Some(token) => list.page_token = Some(token),
            None => break,
        }
    }
    if options.verify {
        for key in copied_keys {
            let a = from.get(&key, GetOptions::default()).await?;
            let b = match to.get(&key, GetOptions::default()).await {
                Ok(b) => b,
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    report.mismatches.push(key);
                    continue;
                }
                Err(e) => return Err(e),
            };
            // A source without a content type may get the destination's default one (Azure
            // answers `application/octet-stream`): only a content type that was set must match.
            let same_content_type =
                a.meta.content_type.is_none() || a.meta.content_type == b.meta.content_type;
            let same_metadata = !to.capabilities().metadata
                || (same_content_type && a.meta.metadata == b.meta.metadata);
            if a.data == b.data && same_metadata {
                report.verified += 1;
            } else {
                report.mismatches.push(key);
            }
        }
    }
    Ok(report)
}

async fn head_exists(store: &dyn BlobStore, key: &str) -> Result<bool> {
    match store.head(key).await {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Copies every document of `collection` from `from` to `to` (the source must support
/// queries, to enumerate the collection).
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
    let mut report = MigrationReport::default();
    let mut state = Progress::default();
    let mut copied: Vec<Document> = Vec::new();
    let mut query = Query::all().limit(options.page_size.max(1));
    loop {
        let page = from.query(collection, query.clone()).await?;
        for doc in page.documents {
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
                    copied.push(doc.clone());
                }
            }
            state.items += 1;
            state.last = doc.id;
            progress(&state);
        }
        match page.next_cursor {
            Some(cursor) => query.cursor = Some(cursor),
            None => break,
        }
    }
    for doc in copied {
        match to.get(collection, &doc.id).await? {
            Some(copy) if copy.value == doc.value => report.verified += 1,
            _ => report.mismatches.push(doc.id),
        }
    }
    Ok(report)
}
