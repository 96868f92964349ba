//! The in-memory blob store.

use super::embedded::{self, check_put_options, digest, same_etag, select_page};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use cloud_abstraction::storage::{
    BlobStore, CopyOptions, GetOptions, GetResult, ListOptions, ListPage, MultipartId, ObjectMeta,
    PartId, PutMode, PutOptions, PutResult, StorageCapabilities,
};
use cloud_abstraction::{BackendInfo, Error, ErrorKind, Location, Result, validate};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

const BACKEND: &str = "memory";

/// An in-process [`BlobStore`]: objects live in a `BTreeMap` behind a mutex.
///
/// Every capability but presigning; no size limit; conditional writes are atomic (checked and
/// applied under the same lock); multipart uploads are held in memory until completed or
/// aborted. ETags are a hash of content, content type and metadata. Clones share the same
/// objects. Nothing survives the process.
///
/// ```
/// # tokio_test_block_on(async {
/// use cloud_abstraction::storage::BlobStoreExt;
/// use paas_components::storage::MemoryBlobStore;
///
/// let store = MemoryBlobStore::new();
/// store.put_bytes("a/b", "hello".into()).await.unwrap();
/// assert_eq!(store.get_bytes("a/b").await.unwrap(), "hello");
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Clone)]
pub struct MemoryBlobStore {
    location: Location,
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Object>,
    uploads: HashMap<String, Upload>,
}

#[derive(Clone)]
struct Object {
    data: Bytes,
    meta: ObjectMeta,
}

struct Upload {
    key: String,
    options: PutOptions,
    parts: BTreeMap<u32, (Bytes, String)>,
}

impl Default for MemoryBlobStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryBlobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the contents: they are user data.
        f.debug_struct("MemoryBlobStore")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl MemoryBlobStore {
    /// An empty store at [`Location::local`].
    pub fn new() -> Self {
        Self {
            location: Location::local(),
            state: Arc::default(),
        }
    }

    /// The same store reporting `location` (to simulate a store in another region or cloud).
    pub fn with_location(mut self, location: Location) -> Self {
        self.location = location;
        self
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-applied write (each write is one
        // map operation), so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn make_object(key: &str, data: Bytes, options: &PutOptions) -> Object {
    let etag = embedded::etag(
        &digest(&data),
        options.content_type.as_deref(),
        &options.metadata,
    );
    Object {
        meta: ObjectMeta {
            key: key.to_string(),
            size: data.len() as u64,
            etag,
            last_modified: SystemTime::now(),
            content_type: options.content_type.clone(),
            metadata: options.metadata.clone(),
        },
        data,
    }
}

impl State {
    /// Checks `mode` against the current object and stores `object`: the atomic step of
    /// every write.
    fn write(&mut self, key: &str, mode: &PutMode, object: Object) -> Result<PutResult> {
        match (mode, self.objects.get(key)) {
            (PutMode::Overwrite, _) | (PutMode::Create, None) => {}
            (PutMode::Create, Some(_)) => {
                return Err(Error::new(
                    ErrorKind::AlreadyExists,
                    BACKEND,
                    format!("object `{key}` already exists"),
                ));
            }
            (PutMode::UpdateIfMatch(expected), current) => {
                if !current.is_some_and(|o| same_etag(&o.meta.etag, expected)) {
                    return Err(Error::new(
                        ErrorKind::PreconditionFailed,
                        BACKEND,
                        format!("object `{key}` does not have the expected etag"),
                    ));
                }
            }
        }
        let etag = object.meta.etag.clone();
        self.objects.insert(key.to_string(), object);
        Ok(PutResult { etag })
    }
}

fn not_found(key: &str) -> Error {
    Error::not_found(BACKEND, format!("object `{key}` not found"))
}

fn no_upload(upload: &MultipartId) -> Error {
    Error::not_found(
        BACKEND,
        format!(
            "no multipart upload `{}` for this key",
            upload.0.escape_debug()
        ),
    )
}

#[async_trait]
impl BlobStore for MemoryBlobStore {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            backend: BACKEND.to_string(),
            location: self.location.clone(),
        }
    }

    fn capabilities(&self) -> StorageCapabilities {
        StorageCapabilities::full()
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key, size = payload.len()), err(level = "debug"))]
    async fn put(&self, key: &str, payload: Bytes, mut options: PutOptions) -> Result<PutResult> {
        validate::object_key(BACKEND, key)?;
        check_put_options(BACKEND, &mut options)?;
        let object = make_object(key, payload, &options);
        self.state().write(key, &options.mode, object)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key), err(level = "debug"))]
    async fn get(&self, key: &str, options: GetOptions) -> Result<GetResult> {
        validate::object_key(BACKEND, key)?;
        let object = self
            .state()
            .objects
            .get(key)
            .cloned()
            .ok_or_else(|| not_found(key))?;
        if let Some(expected) = &options.if_match {
            if !same_etag(&object.meta.etag, expected) {
                return Err(Error::new(
                    ErrorKind::PreconditionFailed,
                    BACKEND,
                    format!("object `{key}` does not match if_match"),
                ));
            }
        }
        if let Some(unwanted) = &options.if_none_match {
            if same_etag(&object.meta.etag, unwanted) {
                return Err(Error::new(
                    ErrorKind::PreconditionFailed,
                    BACKEND,
                    format!("object `{key}` is not modified (if_none_match)"),
                ));
            }
        }
        let size = object.meta.size;
        let range = match &options.range {
            Some(r) => r.resolve(BACKEND, size)?,
            None => 0..size,
        };
        // Both ends are within `size`, which is the length of `data`.
        let data = object.data.slice(range.start as usize..range.end as usize);
        Ok(GetResult {
            meta: object.meta,
            range,
            data,
        })
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key), err(level = "debug"))]
    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        validate::object_key(BACKEND, key)?;
        self.state()
            .objects
            .get(key)
            .map(|o| o.meta.clone())
            .ok_or_else(|| not_found(key))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key), err(level = "debug"))]
    async fn delete(&self, key: &str) -> Result<()> {
        validate::object_key(BACKEND, key)?;
        self.state().objects.remove(key);
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, prefix = %options.prefix), err(level = "debug"))]
    async fn list_page(&self, options: ListOptions) -> Result<ListPage> {
        let state = self.state();
        let selected = select_page(
            BACKEND,
            &options,
            state
                .objects
                .range(options.prefix.clone()..)
                .map(|(k, _)| k.as_str()),
        )?;
        let objects = selected
            .objects
            .iter()
            .filter_map(|k| state.objects.get(k).map(|o| o.meta.clone()))
            .collect();
        Ok(ListPage {
            objects,
            common_prefixes: selected.common_prefixes,
            next_page_token: selected.next_page_token,
        })
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, from = %from, to = %to), err(level = "debug"))]
    async fn copy(&self, from: &str, to: &str, options: CopyOptions) -> Result<PutResult> {
        validate::object_key(BACKEND, from)?;
        validate::object_key(BACKEND, to)?;
        let mut state = self.state();
        let source = state.objects.get(from).ok_or_else(|| not_found(from))?;
        let mut object = source.clone();
        object.meta.key = to.to_string();
        object.meta.last_modified = SystemTime::now();
        let mode = if options.if_not_exists {
            PutMode::Create
        } else {
            PutMode::Overwrite
        };
        state.write(to, &mode, object)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key), err(level = "debug"))]
    async fn create_multipart(&self, key: &str, mut options: PutOptions) -> Result<MultipartId> {
        validate::object_key(BACKEND, key)?;
        check_put_options(BACKEND, &mut options)?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        self.state().uploads.insert(
            id.clone(),
            Upload {
                key: key.to_string(),
                options,
                parts: BTreeMap::new(),
            },
        );
        Ok(MultipartId(id))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key, part = part_number), err(level = "debug"))]
    async fn put_part(
        &self,
        key: &str,
        upload: &MultipartId,
        part_number: u32,
        data: Bytes,
    ) -> Result<PartId> {
        validate::object_key(BACKEND, key)?;
        let token = hex::encode(&digest(&data)[..16]);
        let mut state = self.state();
        let entry = state
            .uploads
            .get_mut(&upload.0)
            .filter(|u| u.key == key)
            .ok_or_else(|| no_upload(upload))?;
        entry.parts.insert(part_number, (data, token.clone()));
        Ok(PartId { part_number, token })
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key, parts = parts.len()), err(level = "debug"))]
    async fn complete_multipart(
        &self,
        key: &str,
        upload: &MultipartId,
        parts: Vec<PartId>,
    ) -> Result<PutResult> {
        validate::object_key(BACKEND, key)?;
        let mut state = self.state();
        let entry = state
            .uploads
            .get(&upload.0)
            .filter(|u| u.key == key)
            .ok_or_else(|| no_upload(upload))?;
        if parts.is_empty() {
            return Err(Error::invalid(BACKEND, "a multipart upload needs a part"));
        }
        let mut data = BytesMut::new();
        for (i, part) in parts.iter().enumerate() {
            let stored = entry.parts.get(&part.part_number);
            match stored {
                Some((bytes, token)) if part.part_number as usize == i && *token == part.token => {
                    if bytes.is_empty() && i + 1 < parts.len() {
                        return Err(Error::invalid(
                            BACKEND,
                            format!("part {i} is empty but is not the last part"),
                        ));
                    }
                    data.extend_from_slice(bytes);
                }
                _ => {
                    return Err(Error::invalid(
                        BACKEND,
                        format!(
                            "part {} (position {i}) was not uploaded to this upload, is out of \
                             order, or its token does not match",
                            part.part_number
                        ),
                    ));
                }
            }
        }
        let object = make_object(key, data.freeze(), &entry.options);
        let mode = entry.options.mode.clone();
        let result = state.write(key, &mode, object)?;
        state.uploads.remove(&upload.0);
        Ok(result)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key), err(level = "debug"))]
    async fn abort_multipart(&self, key: &str, upload: &MultipartId) -> Result<()> {
        validate::object_key(BACKEND, key)?;
        // Aborting an unknown (or already finished) upload succeeds, like deleting an absent key.
        let mut state = self.state();
        if state.uploads.get(&upload.0).is_some_and(|u| u.key == key) {
            state.uploads.remove(&upload.0);
        }
        Ok(())
    }
}
