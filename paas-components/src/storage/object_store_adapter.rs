//! The one mapping from [`object_store`] to [`BlobStore`], shared by the S3 and Azure Blob
//! backends (object_store has one trait for both, so the semantics are mapped once here).
//!
//! What the mapping does beyond a 1:1 call:
//! - **Conditional reads** are sent to the server *and* checked again against the ETag of the
//!   response, so a server that ignores `If-Match` / `If-None-Match` still gives the portable
//!   answer.
//! - **Listing pages** use object_store's [`PaginatedListStore`] with our own page token (the
//!   last key or common prefix returned), so a token survives restarts and needs no server
//!   state; entries are filtered client-side as well, because not every server honours the
//!   start offset (Azurite ignores `startFrom`). Listed objects carry no content type or user
//!   metadata: the list APIs do not return them (use `head`).
//! - **Copy if not exists** is a read plus a create-only put, as neither s3s-fs nor every S3
//!   honours a condition on CopyObject; the create itself is atomic.
//! - **Errors** become portable kinds; connection failures, timeouts and 5xx are retryable
//!   ([`Unavailable`](ErrorKind::Unavailable) / [`DeadlineExceeded`](ErrorKind::DeadlineExceeded)).

use bytes::Bytes;
use cloud_abstraction::storage::{
    CopyOptions, DEFAULT_CONTENT_TYPE, GetOptions, GetRange, GetResult, ListOptions, ListPage,
    MultipartId, ObjectMeta, PartId, PresignMethod, PutMode, PutOptions, PutResult,
    StorageCapabilities,
};
use cloud_abstraction::{BackendInfo, Error, ErrorKind, Location, Result, validate};
use futures::StreamExt;
use object_store::MultipartUpload;
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::signer::{Method, Signer};
use object_store::{
    Attribute, AttributeValue, Attributes, ObjectStore, ObjectStoreExt, PutMultipartOptions,
    PutPayload, UpdateVersion,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tracing::Instrument;

/// Default and largest page of a listing.
const MAX_PAGE: usize = 1000;
/// Longest validity of a presigned URL (SigV4's limit).
const MAX_PRESIGN: Duration = Duration::from_secs(7 * 24 * 3600);

/// The settings that differ between the backends using the adapter.
#[derive(Debug, Clone)]
pub(crate) struct Flavor {
    /// Backend name in errors and [`BackendInfo`].
    pub(crate) backend: &'static str,
    /// What the backend claims.
    pub(crate) capabilities: StorageCapabilities,
    /// Whether the server honours a list start offset exclusively (S3 `start-after`).
    pub(crate) server_list_offset: bool,
    /// Whether the server drops an object whose key equals the list prefix (object_store's
    /// Azure listing does): then the listing asks for the parent "directory" and filters.
    pub(crate) list_from_parent: bool,
    /// Whether a write without a content type must send [`DEFAULT_CONTENT_TYPE`] because
    /// the server's default is another (S3); Azure's default is the same, and sending none
    /// keeps its multipart uploads on the block API.
    pub(crate) send_default_content_type: bool,
    /// Whether the server takes suffix ranges (`bytes=-N`); Azure does not.
    pub(crate) suffix_ranges: bool,
    /// The backend's low-level multipart API cannot carry content type and metadata (Azure's
    /// block API in object_store): such uploads go through object_store's upload handle,
    /// kept in this process (parts must then be sent in order).
    pub(crate) attributes_need_upload_handle: bool,
}

/// An upload driven through object_store's [`MultipartUpload`] handle.
struct HandleUpload {
    upload: Box<dyn MultipartUpload>,
    next_part: u32,
}

/// Upload ids of handle-driven uploads start with this.
const HANDLE_PREFIX: &str = "local-";

/// A [`BlobStore`](cloud_abstraction::BlobStore) over any object_store backend that also
/// offers the multipart and paginated-list APIs.
#[derive(Clone)]
pub(crate) struct ObjectStoreBlobStore {
    store: Arc<dyn ObjectStore>,
    multipart: Arc<dyn MultipartStore>,
    lister: Arc<dyn PaginatedListStore>,
    signer: Option<Arc<dyn Signer>>,
    flavor: Flavor,
    location: Location,
    /// What `Debug` shows: the bucket/container and endpoint, never credentials.
    description: String,
    handles: Arc<Mutex<HashMap<String, HandleUpload>>>,
}

impl std::fmt::Debug for ObjectStoreBlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStoreBlobStore")
            .field("backend", &self.flavor.backend)
            .field("target", &self.description)
            .field("location", &self.location)
            .finish()
    }
}

impl ObjectStoreBlobStore {
    /// Wraps `store`; `signer` enables presigning when the flavor claims it.
    pub(crate) fn new<S>(
        store: Arc<S>,
        signer: Option<Arc<dyn Signer>>,
        flavor: Flavor,
        location: Location,
        description: String,
    ) -> Self
    where
        S: ObjectStore + MultipartStore + PaginatedListStore,
    {
        Self {
            store: store.clone(),
            multipart: store.clone(),
            lister: store,
            signer,
            flavor,
            location,
            description,
            handles: Arc::default(),
        }
    }

    fn handles(&self) -> std::sync::MutexGuard<'_, HashMap<String, HandleUpload>> {
        // A panic while holding the lock cannot leave the map inconsistent (single inserts and
        // removes), so a poisoned lock is still usable.
        self.handles.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_handle_upload(&self, upload: &MultipartId) -> bool {
        self.flavor.attributes_need_upload_handle && upload.0.starts_with(HANDLE_PREFIX)
    }

    fn unknown_upload(&self, key: &str, upload: &MultipartId) -> Error {
        Error::not_found(
            self.backend(),
            format!(
                "no multipart upload `{}` for `{key}` in this process",
                upload.0
            ),
        )
    }

    /// The same store, reported at `location`.
    pub(crate) fn set_location(&mut self, location: Location) {
        self.location = location;
    }

    fn backend(&self) -> &'static str {
        self.flavor.backend
    }

    fn path(&self, key: &str) -> Result<Path> {
        validate::object_key(self.backend(), key)?;
        Path::parse(key).map_err(|e| {
            Error::invalid(
                self.backend(),
                format!("object key `{key}` is not valid here"),
            )
            .with_source(e)
        })
    }

    fn err(&self, op: &'static str, key: &str, e: object_store::Error) -> Error {
        map_error(self.backend(), op, key, e)
    }

    /// Content type and user metadata as object_store attributes, after validation against
    /// the portable rule (see [`validate::put_options`]).
    fn attributes(&self, options: &PutOptions) -> Result<Attributes> {
        if !self.flavor.capabilities.metadata
            && (options.content_type.is_some() || !options.metadata.is_empty())
        {
            return Err(Error::unsupported(
                self.backend(),
                "content type and metadata",
            ));
        }
        validate::put_options(
            self.backend(),
            options,
            self.flavor.capabilities.metadata_names,
        )?;
        Ok(self.attributes_as_stored(options))
    }

    /// Content type and user metadata as object_store attributes, as they are: for copying what
    /// the store already holds (whichever tool wrote it), which the server accepted once.
    fn attributes_as_stored(&self, options: &PutOptions) -> Attributes {
        let mut attributes = Attributes::new();
        let content_type = match &options.content_type {
            Some(ct) => Some(ct.clone()),
            // The portable default, where the server's own default differs (S3's
            // `binary/octet-stream`).
            None if self.flavor.send_default_content_type && self.flavor.capabilities.metadata => {
                Some(DEFAULT_CONTENT_TYPE.to_string())
            }
            None => None,
        };
        if let Some(content_type) = content_type {
            attributes.insert(Attribute::ContentType, AttributeValue::from(content_type));
        }
        for (name, value) in &options.metadata {
            attributes.insert(
                Attribute::Metadata(name.clone().into()),
                AttributeValue::from(value.clone()),
            );
        }
        attributes
    }

    fn meta(
        &self,
        key: &str,
        meta: &object_store::ObjectMeta,
        attributes: Option<&Attributes>,
    ) -> ObjectMeta {
        let mut content_type = None;
        let mut metadata = BTreeMap::new();
        for (attribute, value) in attributes.into_iter().flat_map(|a| a.iter()) {
            match attribute {
                Attribute::ContentType => content_type = Some(value.to_string()),
                Attribute::Metadata(name) => {
                    metadata.insert(name.to_string(), value.to_string());
                }
                _ => {}
            }
        }
        ObjectMeta {
            key: key.to_string(),
            size: meta.size,
            etag: meta.e_tag.as_deref().map(quoted).unwrap_or_default(),
            last_modified: SystemTime::from(meta.last_modified),
            content_type,
            metadata,
        }
    }

    fn etag(
        &self,
        op: &'static str,
        key: &str,
        result: object_store::PutResult,
    ) -> Result<PutResult> {
        match result.e_tag {
            Some(etag) => Ok(PutResult {
                etag: quoted(&etag),
            }),
            None => Err(Error::internal(
                self.backend(),
                format!("{op} of `{key}`: the server returned no ETag"),
            )),
        }
    }

    fn span(&self, op: &'static str, key: &str) -> tracing::Span {
        tracing::debug_span!("blob_store", backend = self.backend(), op, key)
    }

    pub(crate) fn info(&self) -> BackendInfo {
        BackendInfo {
            backend: self.backend().to_string(),
            location: self.location.clone(),
        }
    }

    pub(crate) fn capabilities(&self) -> StorageCapabilities {
        self.flavor.capabilities.clone()
    }

    pub(crate) async fn put(
        &self,
        key: &str,
        payload: Bytes,
        options: PutOptions,
    ) -> Result<PutResult> {
        self.put_with(key, payload, options, true).await
    }

    /// A put; `check_attributes: false` writes content type and metadata as they are (a copy
    /// of an object the store holds).
    async fn put_with(
        &self,
        key: &str,
        payload: Bytes,
        options: PutOptions,
        check_attributes: bool,
    ) -> Result<PutResult> {
        let span = self.span("put", key);
        async {
            let path = self.path(key)?;
            validate::payload_size(
                self.backend(),
                "object",
                payload.len(),
                self.flavor.capabilities.max_put_size,
            )?;
            let attributes = match check_attributes {
                true => self.attributes(&options)?,
                false => self.attributes_as_stored(&options),
            };
            let mode = match &options.mode {
                PutMode::Overwrite => object_store::PutMode::Overwrite,
                PutMode::Create | PutMode::UpdateIfMatch(_)
                    if !self.flavor.capabilities.conditional_put =>
                {
                    return Err(Error::unsupported(self.backend(), "conditional put"));
                }
                PutMode::Create => object_store::PutMode::Create,
                PutMode::UpdateIfMatch(etag) => object_store::PutMode::Update(UpdateVersion {
                    e_tag: Some(etag.clone()),
                    version: None,
                }),
            };
            let opts = object_store::PutOptions {
                mode,
                attributes,
                ..Default::default()
            };
            let result = self
                .store
                .put_opts(&path, PutPayload::from(payload), opts)
                .await
                .map_err(|e| self.err("put", key, e))
                .map_err(|e| conditional_put_error(&options.mode, e))?;
            self.etag("put", key, result)
        }
        .instrument(span)
        .await
    }

    pub(crate) async fn get(&self, key: &str, options: GetOptions) -> Result<GetResult> {
        let span = self.span("get", key);
        async {
            match &options.range {
                Some(GetRange::Suffix(n))
                    if *n > 0 && !self.flavor.suffix_ranges && self.flavor.capabilities.ranges =>
                {
                    self.get_suffix(key, &options, *n).await
                }
                _ => self.get_once(key, &options).await,
            }
        }
        .instrument(span)
        .await
    }

    /// A suffix read on a server without suffix ranges (Azure): the size from a head, then a
    /// bounded read pinned to the head's ETag, so both describe the same object version.
    async fn get_suffix(&self, key: &str, options: &GetOptions, n: u64) -> Result<GetResult> {
        for _ in 0..3 {
            let meta = self.head(key).await?;
            check_get_preconditions(self.backend(), key, options, &meta.etag)?;
            let range = GetRange::Suffix(n).resolve(self.backend(), meta.size)?;
            if range.is_empty() {
                return Ok(GetResult {
                    meta,
                    range,
                    data: Bytes::new(),
                });
            }
            let pinned = GetOptions {
                range: Some(GetRange::Bounded(range)),
                if_match: Some(meta.etag.clone()),
                if_none_match: None,
            };
            match self.get_once(key, &pinned).await {
                // Overwritten between the head and the read: start again.
                Err(e) if e.kind() == ErrorKind::PreconditionFailed => continue,
                other => return other,
            }
        }
        Err(Error::unavailable(
            self.backend(),
            format!("object `{key}` kept changing during a suffix read; try again"),
        ))
    }

    async fn get_once(&self, key: &str, options: &GetOptions) -> Result<GetResult> {
        {
            let options = options.clone();
            let path = self.path(key)?;
            if !self.flavor.capabilities.conditional_get
                && (options.if_match.is_some() || options.if_none_match.is_some())
            {
                return Err(Error::unsupported(self.backend(), "conditional get"));
            }
            let range = match &options.range {
                None => None,
                Some(_) if !self.flavor.capabilities.ranges => {
                    return Err(Error::unsupported(self.backend(), "byte ranges"));
                }
                Some(GetRange::Bounded(r)) if r.start >= r.end => {
                    return Err(Error::invalid(
                        self.backend(),
                        format!("empty byte range {}..{}", r.start, r.end),
                    ));
                }
                // HTTP cannot ask for zero bytes: resolve `bytes=-0` against the size instead.
                Some(GetRange::Suffix(0)) => {
                    return self.get_empty_range(key, &options).await;
                }
                Some(GetRange::Bounded(r)) => Some(object_store::GetRange::Bounded(r.clone())),
                Some(GetRange::Offset(o)) => Some(object_store::GetRange::Offset(*o)),
                Some(GetRange::Suffix(n)) => Some(object_store::GetRange::Suffix(*n)),
            };
            let opts = object_store::GetOptions {
                if_match: options.if_match.clone(),
                if_none_match: options.if_none_match.clone(),
                range,
                ..Default::default()
            };
            let result = match self.store.get_opts(&path, opts).await {
                Ok(result) => result,
                // 416: the range starts at or past the end (also every range of an empty
                // object); let the portable rule decide what that means.
                Err(e) if options.range.is_some() && is_range_not_satisfiable(&e) => {
                    return self.get_empty_range(key, &options).await;
                }
                Err(e) => {
                    let e = self.err("get", key, e);
                    // Azure answers a failed If-Match on an absent blob with 412, not 404.
                    if e.kind() == ErrorKind::PreconditionFailed && options.if_match.is_some() {
                        if let Err(absent) = self.head(key).await {
                            if absent.kind() == ErrorKind::NotFound {
                                return Err(absent);
                            }
                        }
                    }
                    return Err(e);
                }
            };
            let meta = self.meta(key, &result.meta, Some(&result.attributes));
            check_get_preconditions(self.backend(), key, &options, &meta.etag)?;
            let range = result.range.clone();
            let data = result.bytes().await.map_err(|e| self.err("get", key, e))?;
            Ok(GetResult { meta, range, data })
        }
    }

    /// A ranged read the server cannot express: decided from the object's size alone.
    async fn get_empty_range(&self, key: &str, options: &GetOptions) -> Result<GetResult> {
        let meta = self.head(key).await?;
        check_get_preconditions(self.backend(), key, options, &meta.etag)?;
        let range = match &options.range {
            Some(range) => range.resolve(self.backend(), meta.size)?,
            None => 0..meta.size,
        };
        if range.start != range.end {
            // The object changed between the failed read and the head: let the caller retry.
            return Err(Error::unavailable(
                self.backend(),
                format!("object `{key}` changed while reading a range; try again"),
            ));
        }
        Ok(GetResult {
            meta,
            range,
            data: Bytes::new(),
        })
    }

    pub(crate) async fn head(&self, key: &str) -> Result<ObjectMeta> {
        let span = self.span("head", key);
        async {
            let path = self.path(key)?;
            // A HEAD through get_opts returns the attributes, which ObjectStore::head drops.
            let opts = object_store::GetOptions {
                head: true,
                ..Default::default()
            };
            let result = self
                .store
                .get_opts(&path, opts)
                .await
                .map_err(|e| self.err("head", key, e))?;
            Ok(self.meta(key, &result.meta, Some(&result.attributes)))
        }
        .instrument(span)
        .await
    }

    pub(crate) async fn delete(&self, key: &str) -> Result<()> {
        let span = self.span("delete", key);
        async {
            let path = self.path(key)?;
            match self.store.delete(&path).await {
                Ok(()) => Ok(()),
                // Azure answers 404 for an absent blob; deleting is idempotent here.
                Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(self.err("delete", key, e)),
            }
        }
        .instrument(span)
        .await
    }

    pub(crate) async fn list_page(&self, options: ListOptions) -> Result<ListPage> {
        let span = self.span("list", &options.prefix);
        async {
            validate::key_prefix(self.backend(), &options.prefix)?;
            let limit = match options.max_results {
                None => MAX_PAGE,
                Some(0) => {
                    return Err(Error::invalid(
                        self.backend(),
                        "max_results must be at least 1",
                    ));
                }
                Some(n) => n.min(MAX_PAGE),
            };
            // Entries strictly after this key are wanted: the later of start_after and the
            // page token (the last entry of the previous page).
            // With a delimiter, a start_after under a "directory" must not hide that
            // directory (it is listed if a later key is in it), so the server starts at the
            // page token only and the filter below decides.
            let start_after = options.start_after.as_ref().filter(|s| {
                !(options.delimiter
                    && s.strip_prefix(options.prefix.as_str())
                        .is_none_or(|rest| rest.contains('/')))
            });
            let after = match (start_after, &options.page_token) {
                (Some(a), Some(b)) => Some(a.max(b).clone()),
                (a, b) => a.cloned().or_else(|| b.clone()),
            };
            let server_prefix = if self.flavor.list_from_parent {
                // Up to and including the last `/`: no `/` is cut off, so delimiter grouping
                // is unchanged; the client-side filter below applies the full prefix.
                match options.prefix.rfind('/') {
                    Some(i) => &options.prefix[..=i],
                    None => "",
                }
            } else {
                options.prefix.as_str()
            };
            let prefix = (!server_prefix.is_empty()).then_some(server_prefix);
            let mut objects = Vec::new();
            let mut common_prefixes = Vec::new();
            let mut entries = 0usize;
            let mut more = false;
            let mut server_token: Option<String> = None;
            loop {
                let opts = PaginatedListOptions {
                    offset: if self.flavor.server_list_offset && server_token.is_none() {
                        after.clone()
                    } else {
                        None
                    },
                    delimiter: options.delimiter.then_some("/".into()),
                    // One more than needed tells whether another page follows.
                    max_keys: Some((limit + 1 - entries).min(MAX_PAGE)),
                    page_token: server_token.clone(),
                    ..Default::default()
                };
                let page = self
                    .lister
                    .list_paginated(prefix, opts)
                    .await
                    .map_err(|e| self.err("list", &options.prefix, e))?;
                // Merge objects and prefixes in key order, as one sequence of entries.
                let mut batch: Vec<(String, Option<ObjectMeta>)> = Vec::new();
                for o in &page.result.objects {
                    let key = o.location.as_ref().to_string();
                    batch.push((key.clone(), Some(self.meta(&key, o, None))));
                }
                for p in &page.result.common_prefixes {
                    batch.push((format!("{}/", p.as_ref()), None));
                }
                batch.sort_by(|a, b| a.0.cmp(&b.0));
                for (key, meta) in batch {
                    if !key.starts_with(options.prefix.as_str())
                        || options
                            .page_token
                            .as_ref()
                            .is_some_and(|t| key.as_str() <= t.as_str())
                    {
                        continue;
                    }
                    if let Some(start_after) = &options.start_after {
                        // start_after selects keys, which are then grouped: a common prefix
                        // that sorts before start_after is listed if a key under it is after.
                        let wanted = match meta {
                            Some(_) => key.as_str() > start_after.as_str(),
                            None if key.as_str() > start_after.as_str() => true,
                            None if start_after.starts_with(key.as_str()) => {
                                self.has_key_after(&key, start_after).await?
                            }
                            None => false,
                        };
                        if !wanted {
                            continue;
                        }
                    }
                    if entries == limit {
                        more = true;
                        break;
                    }
                    entries += 1;
                    match meta {
                        Some(meta) => objects.push(meta),
                        None => common_prefixes.push(key),
                    }
                }
                server_token = page.page_token;
                if more || server_token.is_none() {
                    break;
                }
            }
            // Paging is decided on the listed keys (the token is the last one shown); a
            // server that lists no ETags (s3s-fs) gets them filled in from heads.
            let last = objects
                .last()
                .map(|o: &ObjectMeta| o.key.clone())
                .into_iter()
                .chain(common_prefixes.last().cloned())
                .max();
            let objects = self.fill_missing_etags(objects).await?;
            Ok(ListPage {
                objects,
                common_prefixes,
                next_page_token: if more { last } else { None },
            })
        }
        .instrument(span)
        .await
    }

    /// Whether some key under `prefix` is strictly after `start_after`.
    async fn has_key_after(&self, prefix: &str, start_after: &str) -> Result<bool> {
        let options = ListOptions {
            prefix: prefix.to_string(),
            start_after: Some(start_after.to_string()),
            max_results: Some(1),
            ..ListOptions::default()
        };
        let page = Box::pin(self.list_page(options)).await?;
        Ok(!page.objects.is_empty())
    }

    /// Heads the listed objects that came without an ETag; one deleted in between is left
    /// out, as a listing taken a moment later would.
    async fn fill_missing_etags(&self, objects: Vec<ObjectMeta>) -> Result<Vec<ObjectMeta>> {
        if objects.iter().all(|o| !o.etag.is_empty()) {
            return Ok(objects);
        }
        let filled: Vec<Result<Option<ObjectMeta>>> = futures::stream::iter(objects)
            .map(|object| async move {
                if !object.etag.is_empty() {
                    return Ok(Some(object));
                }
                match self.head(&object.key).await {
                    Ok(head) => Ok(Some(ObjectMeta {
                        // Listings carry no content type or metadata, headed or not.
                        content_type: None,
                        metadata: BTreeMap::new(),
                        ..head
                    })),
                    Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .buffered(8)
            .collect()
            .await;
        filled.into_iter().filter_map(Result::transpose).collect()
    }

    pub(crate) async fn copy(
        &self,
        from: &str,
        to: &str,
        options: CopyOptions,
    ) -> Result<PutResult> {
        let span = self.span("copy", from);
        async {
            let from_path = self.path(from)?;
            let to_path = self.path(to)?;
            if options.if_not_exists {
                if !self.flavor.capabilities.conditional_put {
                    return Err(Error::unsupported(self.backend(), "copy if not exists"));
                }
                // Read, then create-only put: the create is atomic, which is what matters.
                let source = self.get(from, GetOptions::default()).await?;
                let put = PutOptions {
                    mode: PutMode::Create,
                    content_type: source.meta.content_type,
                    metadata: source.meta.metadata,
                    as_stored: true,
                };
                // What the store holds is copied as it is, whichever tool wrote it.
                return self.put_with(to, source.data, put, false).await;
            }
            self.store
                .copy(&from_path, &to_path)
                .await
                .map_err(|e| self.err("copy", from, e))?;
            // CopyObject's result is not surfaced by object_store: read the new ETag back.
            Ok(PutResult {
                etag: self.head(to).await?.etag,
            })
        }
        .instrument(span)
        .await
    }

    pub(crate) async fn create_multipart(
        &self,
        key: &str,
        options: PutOptions,
    ) -> Result<MultipartId> {
        let span = self.span("create_multipart", key);
        async {
            let path = self.path(key)?;
            if !self.flavor.capabilities.multipart {
                return Err(Error::unsupported(self.backend(), "multipart upload"));
            }
            if options.mode != PutMode::Overwrite {
                // object_store's multipart API completes unconditionally.
                return Err(Error::unsupported(
                    self.backend(),
                    "conditional multipart upload",
                ));
            }
            let attributes = self.attributes(&options)?;
            let needs_handle = self.flavor.attributes_need_upload_handle && !attributes.is_empty();
            let opts = PutMultipartOptions {
                attributes,
                ..Default::default()
            };
            if needs_handle {
                let upload = self
                    .store
                    .put_multipart_opts(&path, opts)
                    .await
                    .map_err(|e| self.err("create_multipart", key, e))?;
                let id = format!("{HANDLE_PREFIX}{}", uuid::Uuid::new_v4().simple());
                self.handles().insert(
                    id.clone(),
                    HandleUpload {
                        upload,
                        next_part: 0,
                    },
                );
                return Ok(MultipartId(id));
            }
            let id = self
                .multipart
                .create_multipart_opts(&path, opts)
                .await
                .map_err(|e| self.err("create_multipart", key, e))?;
            // Azure has no upload id (blocks belong to the blob): give the caller a unique one.
            let id = if id.is_empty() {
                format!("blocks-{}", uuid::Uuid::new_v4().simple())
            } else {
                id
            };
            Ok(MultipartId(id))
        }
        .instrument(span)
        .await
    }

    pub(crate) async fn put_part(
        &self,
        key: &str,
        upload: &MultipartId,
        part_number: u32,
        data: Bytes,
    ) -> Result<PartId> {
        let span = self.span("put_part", key);
        async {
            let path = self.path(key)?;
            if !self.flavor.capabilities.multipart {
                return Err(Error::unsupported(self.backend(), "multipart upload"));
            }
            if part_number >= 10_000 {
                return Err(Error::invalid(
                    self.backend(),
                    format!("part number {part_number} is out of range (0..10000)"),
                ));
            }
            if self.is_handle_upload(upload) {
                let sending = {
                    let mut handles = self.handles();
                    let Some(entry) = handles.get_mut(&upload.0) else {
                        return Err(self.unknown_upload(key, upload));
                    };
                    if part_number != entry.next_part {
                        return Err(Error::invalid(
                            self.backend(),
                            format!(
                                "part {part_number} sent out of order: an upload with content \
                                 type or metadata takes parts in order, next is {}",
                                entry.next_part
                            ),
                        ));
                    }
                    entry.next_part += 1;
                    entry.upload.put_part(PutPayload::from(data))
                };
                sending.await.map_err(|e| self.err("put_part", key, e))?;
                return Ok(PartId {
                    part_number,
                    token: part_number.to_string(),
                });
            }
            let part = self
                .multipart
                .put_part(
                    &path,
                    &upload.0,
                    part_number as usize,
                    PutPayload::from(data),
                )
                .await
                .map_err(|e| self.err("put_part", key, e))?;
            Ok(PartId {
                part_number,
                token: part.content_id,
            })
        }
        .instrument(span)
        .await
    }

    pub(crate) async fn complete_multipart(
        &self,
        key: &str,
        upload: &MultipartId,
        parts: Vec<PartId>,
    ) -> Result<PutResult> {
        let span = self.span("complete_multipart", key);
        async {
            let path = self.path(key)?;
            if !self.flavor.capabilities.multipart {
                return Err(Error::unsupported(self.backend(), "multipart upload"));
            }
            if parts.is_empty() {
                return Err(Error::invalid(
                    self.backend(),
                    "a multipart upload needs at least one part",
                ));
            }
            if let Some((i, p)) = parts
                .iter()
                .enumerate()
                .find(|(i, p)| p.part_number as usize != *i)
            {
                return Err(Error::invalid(
                    self.backend(),
                    format!(
                        "part {i} has number {}; parts must be 0, 1, 2, ... in order",
                        p.part_number
                    ),
                ));
            }
            if self.is_handle_upload(upload) {
                let Some(mut entry) = self.handles().remove(&upload.0) else {
                    return Err(self.unknown_upload(key, upload));
                };
                if parts.len() != entry.next_part as usize {
                    let _ = entry.upload.abort().await;
                    return Err(Error::invalid(
                        self.backend(),
                        format!(
                            "{} parts given but {} were uploaded; the upload is aborted",
                            parts.len(),
                            entry.next_part
                        ),
                    ));
                }
                let result = entry
                    .upload
                    .complete()
                    .await
                    .map_err(|e| self.err("complete_multipart", key, e))?;
                return match result.e_tag {
                    Some(etag) => Ok(PutResult {
                        etag: quoted(&etag),
                    }),
                    None => Ok(PutResult {
                        etag: self.head(key).await?.etag,
                    }),
                };
            }
            let parts = parts
                .into_iter()
                .map(|p| object_store::multipart::PartId {
                    content_id: p.token,
                })
                .collect();
            let result = self
                .multipart
                .complete_multipart(&path, &upload.0, parts)
                .await
                .map_err(|e| self.err("complete_multipart", key, e))?;
            match result.e_tag {
                Some(etag) => Ok(PutResult {
                    etag: quoted(&etag),
                }),
                // Some servers omit it from CompleteMultipartUpload: read it back.
                None => Ok(PutResult {
                    etag: self.head(key).await?.etag,
                }),
            }
        }
        .instrument(span)
        .await
    }

    pub(crate) async fn abort_multipart(&self, key: &str, upload: &MultipartId) -> Result<()> {
        let span = self.span("abort_multipart", key);
        async {
            let path = self.path(key)?;
            if !self.flavor.capabilities.multipart {
                return Err(Error::unsupported(self.backend(), "multipart upload"));
            }
            if self.is_handle_upload(upload) {
                let entry = self.handles().remove(&upload.0);
                if let Some(mut entry) = entry {
                    entry
                        .upload
                        .abort()
                        .await
                        .map_err(|e| self.err("abort_multipart", key, e))?;
                }
                return Ok(());
            }
            match self.multipart.abort_multipart(&path, &upload.0).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(self.err("abort_multipart", key, e)),
            }
        }
        .instrument(span)
        .await
    }

    pub(crate) async fn presign(
        &self,
        method: PresignMethod,
        key: &str,
        expires_in: Duration,
    ) -> Result<String> {
        let span = self.span("presign", key);
        async {
            let path = self.path(key)?;
            let Some(signer) = self
                .signer
                .as_ref()
                .filter(|_| self.flavor.capabilities.presign)
            else {
                return Err(Error::unsupported(self.backend(), "presign"));
            };
            if expires_in.is_zero() || expires_in > MAX_PRESIGN {
                return Err(Error::invalid(
                    self.backend(),
                    "presigned URL lifetime must be between 1 s and 7 days",
                ));
            }
            let method = match method {
                PresignMethod::Get => Method::GET,
                PresignMethod::Put => Method::PUT,
            };
            let url = signer
                .signed_url(method, &path, expires_in)
                .await
                .map_err(|e| self.err("presign", key, e))?;
            Ok(url.to_string())
        }
        .instrument(span)
        .await
    }
}

/// Generates the [`BlobStore`](cloud_abstraction::BlobStore) impl of a wrapper type whose
/// field `inner` is an [`ObjectStoreBlobStore`].
macro_rules! delegate_blob_store {
    ($ty:ty) => {
        #[async_trait::async_trait]
        impl cloud_abstraction::BlobStore for $ty {
            fn info(&self) -> cloud_abstraction::BackendInfo {
                self.inner.info()
            }
            fn capabilities(&self) -> cloud_abstraction::storage::StorageCapabilities {
                self.inner.capabilities()
            }
            async fn put(
                &self,
                key: &str,
                payload: bytes::Bytes,
                options: cloud_abstraction::storage::PutOptions,
            ) -> cloud_abstraction::Result<cloud_abstraction::storage::PutResult> {
                self.inner.put(key, payload, options).await
            }
            async fn get(
                &self,
                key: &str,
                options: cloud_abstraction::storage::GetOptions,
            ) -> cloud_abstraction::Result<cloud_abstraction::storage::GetResult> {
                self.inner.get(key, options).await
            }
            async fn head(
                &self,
                key: &str,
            ) -> cloud_abstraction::Result<cloud_abstraction::storage::ObjectMeta> {
                self.inner.head(key).await
            }
            async fn delete(&self, key: &str) -> cloud_abstraction::Result<()> {
                self.inner.delete(key).await
            }
            async fn list_page(
                &self,
                options: cloud_abstraction::storage::ListOptions,
            ) -> cloud_abstraction::Result<cloud_abstraction::storage::ListPage> {
                self.inner.list_page(options).await
            }
            async fn copy(
                &self,
                from: &str,
                to: &str,
                options: cloud_abstraction::storage::CopyOptions,
            ) -> cloud_abstraction::Result<cloud_abstraction::storage::PutResult> {
                self.inner.copy(from, to, options).await
            }
            async fn create_multipart(
                &self,
                key: &str,
                options: cloud_abstraction::storage::PutOptions,
            ) -> cloud_abstraction::Result<cloud_abstraction::storage::MultipartId> {
                self.inner.create_multipart(key, options).await
            }
            async fn put_part(
                &self,
                key: &str,
                upload: &cloud_abstraction::storage::MultipartId,
                part_number: u32,
                data: bytes::Bytes,
            ) -> cloud_abstraction::Result<cloud_abstraction::storage::PartId> {
                self.inner.put_part(key, upload, part_number, data).await
            }
            async fn complete_multipart(
                &self,
                key: &str,
                upload: &cloud_abstraction::storage::MultipartId,
                parts: Vec<cloud_abstraction::storage::PartId>,
            ) -> cloud_abstraction::Result<cloud_abstraction::storage::PutResult> {
                self.inner.complete_multipart(key, upload, parts).await
            }
            async fn abort_multipart(
                &self,
                key: &str,
                upload: &cloud_abstraction::storage::MultipartId,
            ) -> cloud_abstraction::Result<()> {
                self.inner.abort_multipart(key, upload).await
            }
            async fn presign(
                &self,
                method: cloud_abstraction::storage::PresignMethod,
                key: &str,
                expires_in: std::time::Duration,
            ) -> cloud_abstraction::Result<String> {
                self.inner.presign(method, key, expires_in).await
            }
        }
    };
}
pub(crate) use delegate_blob_store;

/// The read's preconditions, checked against the ETag that was actually read.
fn check_get_preconditions(
    backend: &'static str,
    key: &str,
    options: &GetOptions,
    etag: &str,
) -> Result<()> {
    if let Some(expected) = &options.if_match {
        if !etag_eq(expected, etag) {
            return Err(Error::new(
                ErrorKind::PreconditionFailed,
                backend,
                format!("object `{key}` does not have the ETag required by if_match"),
            ));
        }
    }
    if let Some(unwanted) = &options.if_none_match {
        if etag_eq(unwanted, etag) {
            return Err(Error::new(
                ErrorKind::PreconditionFailed,
                backend,
                format!("object `{key}` has the ETag given in if_none_match (not modified)"),
            ));
        }
    }
    Ok(())
}

/// An ETag in its HTTP form, with quotes: Azure's listing returns them bare while its
/// headers quote them, and one object must show one ETag everywhere.
fn quoted(etag: &str) -> String {
    if etag.starts_with('"') || etag.starts_with("W/") {
        etag.to_string()
    } else {
        format!("\"{etag}\"")
    }
}

/// ETags compare without their quotes, and `*` matches any.
fn etag_eq(condition: &str, etag: &str) -> bool {
    condition == "*" || condition.trim_matches('"') == etag.trim_matches('"')
}

/// Rewrites the kind of a failed conditional put into the portable one.
fn conditional_put_error(mode: &PutMode, e: Error) -> Error {
    let kind = match (mode, e.kind()) {
        (PutMode::Create, ErrorKind::PreconditionFailed) => ErrorKind::AlreadyExists,
        // Absent, or a concurrent writer won (409): the condition did not hold.
        (PutMode::UpdateIfMatch(_), ErrorKind::NotFound | ErrorKind::AlreadyExists) => {
            ErrorKind::PreconditionFailed
        }
        _ => return e,
    };
    let message = e.message().to_string();
    Error::new(kind, e.backend().to_string(), message).with_source(e)
}

fn is_range_not_satisfiable(e: &object_store::Error) -> bool {
    // 416 from the server, or object_store's own (private) range check when the server
    // answered the whole object instead (Azurite does).
    http_status(e) == Some(416) || error_chain(e).any(|s| s.contains("Wanted range starting at"))
}

fn error_chain(e: &object_store::Error) -> impl Iterator<Item = String> + '_ {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    std::iter::from_fn(move || {
        let current = next?;
        next = current.source();
        Some(current.to_string())
    })
}

/// The HTTP status of a failed request, if the error carries one. object_store keeps its
/// request error type private, so the status is read from its message
/// ("... status code: 503 Service Unavailable ...").
fn http_status(e: &object_store::Error) -> Option<u16> {
    error_chain(e).find_map(|s| {
        let rest = s.split("status code: ").nth(1)?;
        rest.get(..3)?.parse().ok()
    })
}

/// The transport failure kind, if the error came from the HTTP client.
fn http_error_kind(e: &object_store::Error) -> Option<object_store::client::HttpErrorKind> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(current) = next {
        if let Some(http) = current.downcast_ref::<object_store::client::HttpError>() {
            return Some(http.kind());
        }
        next = current.source();
    }
    None
}

/// Maps an object_store error to the portable kinds. The message names the operation and the
/// key; the object_store error (whose text has the request URL, never credentials) is the
/// source.
pub(crate) fn map_error(
    backend: &'static str,
    op: &str,
    key: &str,
    e: object_store::Error,
) -> Error {
    use object_store::Error as E;
    use object_store::client::HttpErrorKind as H;
    let (kind, what) = match &e {
        E::NotFound { .. } => (ErrorKind::NotFound, "not found"),
        E::AlreadyExists { .. } => (ErrorKind::AlreadyExists, "already exists"),
        E::Precondition { .. } | E::NotModified { .. } => {
            (ErrorKind::PreconditionFailed, "precondition failed")
        }
        E::NotSupported { .. } | E::NotImplemented { .. } => (
            ErrorKind::Unsupported,
            "not supported by this server configuration",
        ),
        E::InvalidPath { .. } => (ErrorKind::InvalidArgument, "invalid path"),
        E::PermissionDenied { .. } => (ErrorKind::PermissionDenied, "permission denied"),
        E::Unauthenticated { .. } => (ErrorKind::Unauthenticated, "not authenticated"),
        E::UnknownConfigurationKey { .. } => (ErrorKind::InvalidArgument, "bad configuration"),
        _ => match (http_error_kind(&e), http_status(&e)) {
            (Some(H::Timeout), _) => (ErrorKind::DeadlineExceeded, "timed out"),
            // Any failure of the HTTP exchange itself (no complete response): the server or
            // the network is the problem, and a retry may succeed.
            (Some(H::Connect | H::Request | H::Interrupted | H::Decode | H::Unknown), _) => (
                ErrorKind::Unavailable,
                "server unreachable or connection lost",
            ),
            (_, Some(429)) => (ErrorKind::ResourceExhausted, "throttled"),
            (_, Some(416)) => (ErrorKind::InvalidArgument, "range not satisfiable"),
            (_, Some(s)) if s >= 500 => (ErrorKind::Unavailable, "server error"),
            (_, Some(400 | 411 | 413 | 414)) => (ErrorKind::InvalidArgument, "request rejected"),
            _ => (ErrorKind::Internal, "failed"),
        },
    };
    let message = if kind == ErrorKind::Internal {
        // Unclassified: keep the client's own words (request URL and server reply; requests
        // are signed in headers, and object_store redacts URLs that carry a SAS token).
        format!("{op} `{key}`: {what}: {e}")
    } else {
        format!("{op} `{key}`: {what}")
    };
    Error::new(kind, backend, message).with_source(e)
}

/// Builder settings shared by both backends: short connect timeout, bounded request time and
/// a few quick retries, so that an outage surfaces as a retryable error within seconds
/// instead of object_store's default of minutes.
pub(crate) fn client_options() -> object_store::ClientOptions {
    object_store::ClientOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(30))
}

/// See [`client_options`].
pub(crate) fn retry_config() -> object_store::RetryConfig {
    object_store::RetryConfig {
        backoff: object_store::BackoffConfig {
            init_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
            base: 2.0,
        },
        max_retries: 2,
        retry_timeout: Duration::from_secs(10),
    }
}

/// Checks an `endpoint` URL parameter before it reaches object_store, whose request builder
/// panics on a URI it cannot use (`127.0.0.1:9000`, `localhost`, an empty value). The
/// endpoint must be an absolute `http`/`https` URL with a host; plain `http` only on
/// loopback unless `allow_http`. Returns whether it is plain `http`. Errors name the
/// parameter, never the value (it is the caller's input and may carry credentials).
pub(crate) fn check_endpoint(
    backend: &'static str,
    endpoint: &str,
    allow_http: bool,
) -> Result<bool> {
    let invalid = || {
        Error::invalid(
            backend,
            "URL parameter `endpoint` must be an absolute http(s) URL with a host, \
             such as `https://s3.example.com` or `http://127.0.0.1:9000`",
        )
    };
    let parsed = url::Url::parse(endpoint).map_err(|_| invalid())?;
    let http = match parsed.scheme() {
        "http" => true,
        "https" => false,
        _ => return Err(invalid()),
    };
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(invalid());
    }
    if http && !allow_http && !is_loopback_http(endpoint) {
        return Err(Error::invalid(
            backend,
            "plain http endpoints are allowed only on loopback (or with allow_http=true)",
        ));
    }
    Ok(http)
}

/// Whether `endpoint` is a loopback HTTP URL (allowed without TLS).
pub(crate) fn is_loopback_http(endpoint: &str) -> bool {
    url::Url::parse(endpoint).is_ok_and(|u| {
        u.scheme() == "http"
            && match u.host() {
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                Some(url::Host::Domain(d)) => d == "localhost",
                None => false,
            }
    })
}

/// Parses a boolean URL parameter.
pub(crate) fn parse_bool(backend: &'static str, name: &str, value: &str) -> Result<bool> {
    match value {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(Error::invalid(
            backend,
            format!("URL parameter `{name}` must be true or false"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_compare_without_quotes() {
        assert!(etag_eq("\"abc\"", "abc"));
        assert!(etag_eq("abc", "\"abc\""));
        assert!(etag_eq("*", "\"x\""));
        assert!(!etag_eq("\"abc\"", "\"abd\""));
    }

    #[test]
    fn loopback_detection() {
        assert!(is_loopback_http("http://127.0.0.1:9000"));
        assert!(is_loopback_http("http://localhost:9000"));
        assert!(is_loopback_http("http://[::1]:9000"));
        assert!(!is_loopback_http("http://10.0.0.1:9000"));
        assert!(!is_loopback_http("https://127.0.0.1:9000"));
    }

    #[test]
    fn endpoints_must_be_absolute_http_urls() {
        for bad in [
            "",
            "127.0.0.1:9000",
            "localhost",
            "localhost:9000",
            "ftp://127.0.0.1",
            "http://",
            "file:///tmp",
            "unix:/var/run/s3.sock",
            "http://10.0.0.1:9000",
        ] {
            let err = check_endpoint("s3", bad, false).unwrap_err();
            assert_eq!(
                err.kind(),
                cloud_abstraction::ErrorKind::InvalidArgument,
                "{bad:?}"
            );
            assert!(err.to_string().contains("endpoint"), "{bad:?}: {err}");
        }
        assert!(check_endpoint("s3", "http://127.0.0.1:9000", false).unwrap());
        assert!(check_endpoint("s3", "http://10.0.0.1:9000", true).unwrap());
        assert!(!check_endpoint("s3", "https://s3.example.com/acct", false).unwrap());
    }
}
