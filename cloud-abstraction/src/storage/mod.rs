//! Object storage: the [`BlobStore`] trait and its types.
//!
//! A blob store holds objects (bytes plus content type and user metadata) under `/`-separated
//! keys (see [`validate::object_key`](crate::validate::object_key)). Every object has an ETag
//! that changes whenever its content or metadata changes, and writes can be conditional on it.
//!
//! The required methods are what a backend must provide; [`BlobStoreExt`] adds conveniences
//! (whole-object helpers, listing as a [`Stream`](futures::Stream), multipart upload of a large
//! payload) on top of them for every store.

mod ext;
pub mod service;

pub use ext::{BlobStoreExt, list_stream};

use crate::{BackendInfo, Error, Result};
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::Range;
use std::time::{Duration, SystemTime};

/// The content type of an object that was written without one, on every store (RFC 9110's
/// type for bytes of unknown kind; S3 would otherwise answer `binary/octet-stream`, Azure
/// `application/octet-stream`, the embedded stores nothing).
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// What a blob store can do beyond the basics (put, get, head, delete, list, copy).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StorageCapabilities {
    /// [`PutMode::Create`] and [`PutMode::UpdateIfMatch`] are honoured atomically.
    pub conditional_put: bool,
    /// `if_match` / `if_none_match` on reads are honoured.
    pub conditional_get: bool,
    /// Byte-range reads ([`GetOptions::range`]).
    pub ranges: bool,
    /// Multipart uploads (`create_multipart` and friends).
    pub multipart: bool,
    /// The smallest size of every part but the last, when `multipart` is true.
    pub multipart_min_part_size: u64,
    /// Content type and user metadata are stored and returned.
    pub metadata: bool,
    /// Presigned URLs ([`BlobStore::presign`]).
    pub presign: bool,
    /// Largest object accepted by a single [`BlobStore::put`], if limited.
    pub max_put_size: Option<u64>,
    /// Which metadata names the store can hold when a put carries metadata
    /// [as stored](PutOptions::as_stored) by another store or tool. New objects always use the
    /// portable names of [`validate::metadata_name`](crate::validate::metadata_name).
    pub metadata_names: MetadataNames,
}

/// The metadata names a store can hold, beyond the portable ones (which every store with the
/// `metadata` capability holds). Each rule admits every portable name. It matters only for
/// [`PutOptions::as_stored`]: copying objects that another tool wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetadataNames {
    /// Only portable names: Azure Blob (names must be C# identifiers, and come back
    /// lower-cased through HTTP), and the safe answer for a store that does not say more.
    Portable,
    /// Lower-case HTTP header tokens (RFC 9110 `tchar`s, no upper-case letters): S3, which
    /// carries names as `x-amz-meta-*` headers and lower-cases them.
    LowercaseToken,
    /// Any HTTP header token, case kept: the embedded stores.
    Token,
}

impl MetadataNames {
    /// The names both rules admit (the rule of a store that writes to both).
    pub fn common(self, other: Self) -> Self {
        // Each rule admits every name of the one before it.
        use MetadataNames::*;
        let rank = |n: Self| match n {
            Portable => 0,
            LowercaseToken => 1,
            Token => 2,
        };
        if rank(self) <= rank(other) {
            self
        } else {
            other
        }
    }

    /// What a name under this rule looks like, for error messages.
    pub fn describe(self) -> &'static str {
        match self {
            MetadataNames::Portable => {
                "lower-case letters, digits and `_`, not starting with a digit (the portable \
                 rule; Azure's names are C# identifiers, read back lower-cased)"
            }
            MetadataNames::LowercaseToken => {
                "lower-case HTTP header tokens (S3 lower-cases metadata names)"
            }
            MetadataNames::Token => "HTTP header tokens",
        }
    }
}

impl StorageCapabilities {
    /// Everything but presigning, no size limit, 1-byte parts: what the embedded stores offer.
    pub fn full() -> Self {
        Self {
            conditional_put: true,
            conditional_get: true,
            ranges: true,
            multipart: true,
            multipart_min_part_size: 1,
            metadata: true,
            presign: false,
            max_put_size: None,
            metadata_names: MetadataNames::Token,
        }
    }

    /// Nothing optional.
    pub fn minimal() -> Self {
        Self {
            conditional_put: false,
            conditional_get: false,
            ranges: false,
            multipart: false,
            multipart_min_part_size: 1,
            metadata: false,
            presign: false,
            max_put_size: None,
            metadata_names: MetadataNames::Portable,
        }
    }
}

/// How a put treats an existing object.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PutMode {
    /// Replace whatever is there.
    #[default]
    Overwrite,
    /// Succeed only if no object exists under the key; otherwise
    /// [`AlreadyExists`](crate::ErrorKind::AlreadyExists).
    Create,
    /// Succeed only if the current object's ETag equals this one; otherwise
    /// [`PreconditionFailed`](crate::ErrorKind::PreconditionFailed) (also when absent).
    UpdateIfMatch(String),
}

/// Options of a put.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PutOptions {
    /// Overwrite, create-only, or update-if-ETag-matches.
    pub mode: PutMode,
    /// MIME type stored with the object; `None` stores [`DEFAULT_CONTENT_TYPE`] (on a store
    /// with the `metadata` capability). Checked by
    /// [`validate::content_type`](crate::validate::content_type).
    pub content_type: Option<String>,
    /// User metadata stored with the object (names: lower-case ASCII letters, digits and `_`;
    /// values: printable ASCII; see [`validate::metadata`](crate::validate::metadata)).
    pub metadata: BTreeMap<String, String>,
    /// The content type and metadata are as another store holds them, not chosen by this
    /// program: a copy or migration of objects that other tools wrote. They are then checked
    /// against what this store can hold ([`StorageCapabilities::metadata_names`]; a content
    /// type of printable ASCII) instead of the portable rule, so whatever a store holds stays
    /// copyable. New objects should leave this `false`. Default `false`.
    pub as_stored: bool,
}

impl PutOptions {
    /// Create-only put.
    pub fn create() -> Self {
        Self {
            mode: PutMode::Create,
            ..Self::default()
        }
    }

    /// Put that succeeds only if the current ETag is `etag`.
    pub fn if_match(etag: impl Into<String>) -> Self {
        Self {
            mode: PutMode::UpdateIfMatch(etag.into()),
            ..Self::default()
        }
    }

    /// Sets the content type.
    pub fn with_content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = Some(content_type.into());
        self
    }

    /// Adds one user metadata entry.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }
}

/// The outcome of a successful write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutResult {
    /// The new object's ETag.
    pub etag: String,
}

/// A byte range of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GetRange {
    /// Bytes `start..end` (end exclusive; clamped to the object's size).
    Bounded(Range<u64>),
    /// Bytes from this offset to the end.
    Offset(u64),
    /// The last `n` bytes.
    Suffix(u64),
}

impl GetRange {
    /// Resolves the range against an object of `size` bytes. A range that starts at or past
    /// the end, or an empty bounded range, is [`InvalidArgument`](crate::ErrorKind::InvalidArgument).
    pub fn resolve(&self, backend: &'static str, size: u64) -> Result<Range<u64>> {
        let range = match self {
            GetRange::Bounded(r) => {
                if r.start >= r.end {
                    return Err(Error::invalid(
                        backend,
                        format!("empty byte range {}..{}", r.start, r.end),
                    ));
                }
                r.start..r.end.min(size)
            }
            GetRange::Offset(o) => *o..size,
            GetRange::Suffix(n) => size.saturating_sub(*n)..size,
        };
        if range.start >= size && !(size == 0 && matches!(self, GetRange::Suffix(_))) {
            return Err(Error::invalid(
                backend,
                format!(
                    "byte range starts at {} but the object has {size} bytes",
                    range.start
                ),
            ));
        }
        Ok(range)
    }
}

/// Options of a get.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GetOptions {
    /// Read only these bytes.
    pub range: Option<GetRange>,
    /// Fail with [`PreconditionFailed`](crate::ErrorKind::PreconditionFailed) unless the ETag
    /// equals this.
    pub if_match: Option<String>,
    /// Fail with [`PreconditionFailed`](crate::ErrorKind::PreconditionFailed) if the ETag equals
    /// this (the "not modified" case of a cache revalidation).
    pub if_none_match: Option<String>,
}

impl GetOptions {
    /// Read bytes `range`.
    pub fn range(range: Range<u64>) -> Self {
        Self {
            range: Some(GetRange::Bounded(range)),
            ..Self::default()
        }
    }
}

/// What a store knows about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The object's key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Entity tag; changes whenever content or metadata change.
    pub etag: String,
    /// When the object was last written.
    pub last_modified: SystemTime,
    /// MIME type: as written, or [`DEFAULT_CONTENT_TYPE`] if the put set none. `None` where
    /// the store has no `metadata` capability, and in listings of stores whose list API does
    /// not return it (S3, Azure).
    pub content_type: Option<String>,
    /// User metadata (empty if the store has no metadata capability).
    pub metadata: BTreeMap<String, String>,
}

/// An object's bytes (or the requested range of them) and its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetResult {
    /// The object's metadata.
    pub meta: ObjectMeta,
    /// Which bytes of the object `data` holds.
    pub range: Range<u64>,
    /// The bytes.
    pub data: Bytes,
}

/// Options of one page of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListOptions {
    /// Only keys that start with this string (not necessarily at a `/`).
    pub prefix: String,
    /// Group keys by the next `/` after the prefix into
    /// [`common_prefixes`](ListPage::common_prefixes), like a directory listing.
    pub delimiter: bool,
    /// Only keys strictly greater than this one.
    pub start_after: Option<String>,
    /// Largest page size; the store may return fewer. `None`: the store's default (1000).
    pub max_results: Option<usize>,
    /// The [`next_page_token`](ListPage::next_page_token) of the previous page.
    pub page_token: Option<String>,
}

impl ListOptions {
    /// Everything under `prefix`, recursively.
    pub fn prefix(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            ..Self::default()
        }
    }
}

/// One page of a listing, in ascending key order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListPage {
    /// Objects on this page.
    pub objects: Vec<ObjectMeta>,
    /// With a delimiter: the "directories" (each ends with `/`), in ascending order.
    pub common_prefixes: Vec<String>,
    /// Pass this as [`ListOptions::page_token`] for the next page; `None` on the last page.
    pub next_page_token: Option<String>,
}

/// Options of a copy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CopyOptions {
    /// Fail with [`AlreadyExists`](crate::ErrorKind::AlreadyExists) if the destination exists.
    pub if_not_exists: bool,
}

/// The id of a multipart upload in progress.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MultipartId(pub String);

/// A part that was uploaded, to be handed to `complete_multipart` in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartId {
    /// The part's number (0-based, consecutive).
    pub part_number: u32,
    /// The backend's token for the part (often its ETag).
    pub token: String,
}

/// The HTTP method a presigned URL allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresignMethod {
    /// Download.
    Get,
    /// Upload.
    Put,
}

/// An object store: the small core every backend implements.
///
/// Semantics every backend must honour (the conformance kit checks them):
/// - reads after a successful write see that write (strong read-after-write);
/// - a reader never sees a partially written object;
/// - deleting an absent key succeeds (idempotent delete);
/// - invalid keys are [`InvalidArgument`](crate::ErrorKind::InvalidArgument);
/// - an operation outside the [capabilities](BlobStore::capabilities) returns
///   [`Unsupported`](crate::ErrorKind::Unsupported).
#[async_trait]
pub trait BlobStore: Debug + Send + Sync + 'static {
    /// The backend's name and location.
    fn info(&self) -> BackendInfo;

    /// What this store supports.
    fn capabilities(&self) -> StorageCapabilities;

    /// Writes `payload` under `key` according to `options.mode`.
    async fn put(&self, key: &str, payload: Bytes, options: PutOptions) -> Result<PutResult>;

    /// Reads an object, or a range of it. A missing key is
    /// [`NotFound`](crate::ErrorKind::NotFound).
    async fn get(&self, key: &str, options: GetOptions) -> Result<GetResult>;

    /// Reads an object's metadata.
    async fn head(&self, key: &str) -> Result<ObjectMeta>;

    /// Deletes an object; deleting an absent key succeeds.
    async fn delete(&self, key: &str) -> Result<()>;

    /// Lists one page of keys (see [`list_stream`] for a stream over all pages, and
    /// [`BlobStoreExt::list_all`] to collect them).
    async fn list_page(&self, options: ListOptions) -> Result<ListPage>;

    /// Copies an object within the store (content, content type and metadata).
    async fn copy(&self, from: &str, to: &str, options: CopyOptions) -> Result<PutResult>;

    /// Starts a multipart upload to `key`. Nothing is visible under `key` until
    /// [`complete_multipart`](Self::complete_multipart).
    async fn create_multipart(&self, key: &str, options: PutOptions) -> Result<MultipartId>;

    /// Uploads part `part_number` (0-based). Every part but the last must be at least
    /// [`multipart_min_part_size`](StorageCapabilities::multipart_min_part_size) bytes.
    async fn put_part(
        &self,
        key: &str,
        upload: &MultipartId,
        part_number: u32,
        data: Bytes,
    ) -> Result<PartId>;

    /// Makes the object from `parts` (in order) visible under `key`, atomically.
    async fn complete_multipart(
        &self,
        key: &str,
        upload: &MultipartId,
        parts: Vec<PartId>,
    ) -> Result<PutResult>;

    /// Abandons an upload and frees its parts.
    async fn abort_multipart(&self, key: &str, upload: &MultipartId) -> Result<()>;

    /// A URL that allows `method` on `key` without credentials until `expires_in` has passed.
    ///
    /// The default returns [`Unsupported`](crate::ErrorKind::Unsupported).
    async fn presign(
        &self,
        method: PresignMethod,
        key: &str,
        expires_in: Duration,
    ) -> Result<String> {
        let _ = (method, key, expires_in);
        Err(Error::unsupported(self.info().backend, "presign"))
    }
}
