//! The tower bridge for [`BlobStore`]: every store is a [`Service`], and every such service
//! (with layers on it) is a store again.
//!
//! ```
//! # use std::sync::Arc;
//! # use cloud_abstraction::storage::{BlobStore, service::{BlobStoreService, ServiceBlobStore}};
//! fn wrap(store: Arc<dyn BlobStore>) -> ServiceBlobStore<BlobStoreService> {
//!     let info = store.info();
//!     let capabilities = store.capabilities();
//!     // Any tower layers go around `BlobStoreService::new(store)` here.
//!     ServiceBlobStore::new(BlobStoreService::new(store), info, capabilities)
//! }
//! ```

use super::{
    BlobStore, CopyOptions, GetOptions, GetResult, ListOptions, ListPage, MultipartId, ObjectMeta,
    PartId, PresignMethod, PutOptions, PutResult, StorageCapabilities,
};
use crate::service_util::{BoxError, call_service, unexpected_response};
use crate::{BackendInfo, Error, Result};
use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tower_service::Service;

/// One [`BlobStore`] call as a value (cheap to clone, so retry layers can resend it).
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)] // the fields are the trait methods' parameters
pub enum BlobRequest {
    Put {
        key: String,
        payload: Bytes,
        options: PutOptions,
    },
    Get {
        key: String,
        options: GetOptions,
    },
    Head {
        key: String,
    },
    Delete {
        key: String,
    },
    ListPage {
        options: ListOptions,
    },
    Copy {
        from: String,
        to: String,
        options: CopyOptions,
    },
    CreateMultipart {
        key: String,
        options: PutOptions,
    },
    PutPart {
        key: String,
        upload: MultipartId,
        part_number: u32,
        data: Bytes,
    },
    CompleteMultipart {
        key: String,
        upload: MultipartId,
        parts: Vec<PartId>,
    },
    AbortMultipart {
        key: String,
        upload: MultipartId,
    },
    Presign {
        method: PresignMethod,
        key: String,
        expires_in: Duration,
    },
}

impl BlobRequest {
    /// The operation's name, for logs and metrics (`"put"`, `"get"`, ...).
    pub fn operation(&self) -> &'static str {
        match self {
            Self::Put { .. } => "put",
            Self::Get { .. } => "get",
            Self::Head { .. } => "head",
            Self::Delete { .. } => "delete",
            Self::ListPage { .. } => "list",
            Self::Copy { .. } => "copy",
            Self::CreateMultipart { .. } => "create_multipart",
            Self::PutPart { .. } => "put_part",
            Self::CompleteMultipart { .. } => "complete_multipart",
            Self::AbortMultipart { .. } => "abort_multipart",
            Self::Presign { .. } => "presign",
        }
    }

    /// The key the request is about (for a copy: the destination; for a listing: the prefix).
    pub fn key(&self) -> &str {
        match self {
            Self::Put { key, .. }
            | Self::Get { key, .. }
            | Self::Head { key }
            | Self::Delete { key }
            | Self::CreateMultipart { key, .. }
            | Self::PutPart { key, .. }
            | Self::CompleteMultipart { key, .. }
            | Self::AbortMultipart { key, .. }
            | Self::Presign { key, .. } => key,
            Self::Copy { to, .. } => to,
            Self::ListPage { options } => &options.prefix,
        }
    }

    /// Whether the request changes the store (puts, deletes, copies, multipart steps).
    pub fn is_write(&self) -> bool {
        !matches!(
            self,
            Self::Get { .. } | Self::Head { .. } | Self::ListPage { .. } | Self::Presign { .. }
        )
    }
}

/// The result of a [`BlobRequest`], one variant per kind of answer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum BlobResponse {
    Put(PutResult),
    Get(GetResult),
    Head(ObjectMeta),
    Deleted,
    ListPage(ListPage),
    MultipartCreated(MultipartId),
    Part(PartId),
    Aborted,
    Presigned(String),
}

/// Any [`BlobStore`] as a [`tower_service::Service`].
#[derive(Clone)]
pub struct BlobStoreService {
    store: Arc<dyn BlobStore>,
}

impl BlobStoreService {
    /// Wraps a store.
    pub fn new(store: Arc<dyn BlobStore>) -> Self {
        Self { store }
    }

    /// The wrapped store.
    pub fn store(&self) -> &Arc<dyn BlobStore> {
        &self.store
    }
}

impl fmt::Debug for BlobStoreService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BlobStoreService")
            .field(&self.store)
            .finish()
    }
}

impl Service<BlobRequest> for BlobStoreService {
    type Response = BlobResponse;
    type Error = Error;
    type Future = BoxFuture<'static, Result<BlobResponse>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: BlobRequest) -> Self::Future {
        let store = Arc::clone(&self.store);
        Box::pin(async move {
            Ok(match request {
                BlobRequest::Put {
                    key,
                    payload,
                    options,
                } => BlobResponse::Put(store.put(&key, payload, options).await?),
                BlobRequest::Get { key, options } => {
                    BlobResponse::Get(store.get(&key, options).await?)
                }
                BlobRequest::Head { key } => BlobResponse::Head(store.head(&key).await?),
                BlobRequest::Delete { key } => {
                    store.delete(&key).await?;
                    BlobResponse::Deleted
                }
                BlobRequest::ListPage { options } => {
                    BlobResponse::ListPage(store.list_page(options).await?)
                }
                BlobRequest::Copy { from, to, options } => {
                    BlobResponse::Put(store.copy(&from, &to, options).await?)
                }
                BlobRequest::CreateMultipart { key, options } => {
                    BlobResponse::MultipartCreated(store.create_multipart(&key, options).await?)
                }
                BlobRequest::PutPart {
                    key,
                    upload,
                    part_number,
                    data,
                } => BlobResponse::Part(store.put_part(&key, &upload, part_number, data).await?),
                BlobRequest::CompleteMultipart { key, upload, parts } => {
                    BlobResponse::Put(store.complete_multipart(&key, &upload, parts).await?)
                }
                BlobRequest::AbortMultipart { key, upload } => {
                    store.abort_multipart(&key, &upload).await?;
                    BlobResponse::Aborted
                }
                BlobRequest::Presign {
                    method,
                    key,
                    expires_in,
                } => BlobResponse::Presigned(store.presign(method, &key, expires_in).await?),
            })
        })
    }
}

/// Any `Service<BlobRequest>` (for example a [`BlobStoreService`] under tower layers) as a
/// [`BlobStore`] again.
#[derive(Clone)]
pub struct ServiceBlobStore<S> {
    service: S,
    info: BackendInfo,
    capabilities: StorageCapabilities,
}

impl<S> ServiceBlobStore<S> {
    /// Wraps `service`; `info` and `capabilities` are reported as the store's own (usually
    /// those of the innermost store).
    pub fn new(service: S, info: BackendInfo, capabilities: StorageCapabilities) -> Self {
        Self {
            service,
            info,
            capabilities,
        }
    }
}

impl<S> fmt::Debug for ServiceBlobStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceBlobStore")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl<S> ServiceBlobStore<S>
where
    S: Service<BlobRequest, Response = BlobResponse> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    async fn call(&self, request: BlobRequest) -> Result<BlobResponse> {
        call_service(&self.service, &self.info.backend, request).await
    }
}

macro_rules! expect {
    ($self:ident, $response:expr, $variant:ident, $op:literal) => {
        match $response {
            BlobResponse::$variant(value) => Ok(value),
            _ => Err(unexpected_response(&$self.info.backend, $op)),
        }
    };
}

#[async_trait]
impl<S> BlobStore for ServiceBlobStore<S>
where
    S: Service<BlobRequest, Response = BlobResponse> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    fn info(&self) -> BackendInfo {
        self.info.clone()
    }

    fn capabilities(&self) -> StorageCapabilities {
        self.capabilities.clone()
    }

    async fn put(&self, key: &str, payload: Bytes, options: PutOptions) -> Result<PutResult> {
        let r = self
            .call(BlobRequest::Put {
                key: key.into(),
                payload,
                options,
            })
            .await?;
        expect!(self, r, Put, "put")
    }

    async fn get(&self, key: &str, options: GetOptions) -> Result<GetResult> {
        let r = self
            .call(BlobRequest::Get {
                key: key.into(),
                options,
            })
            .await?;
        expect!(self, r, Get, "get")
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        let r = self.call(BlobRequest::Head { key: key.into() }).await?;
        expect!(self, r, Head, "head")
    }

    async fn delete(&self, key: &str) -> Result<()> {
        match self.call(BlobRequest::Delete { key: key.into() }).await? {
            BlobResponse::Deleted => Ok(()),
            _ => Err(unexpected_response(&self.info.backend, "delete")),
        }
    }

    async fn list_page(&self, options: ListOptions) -> Result<ListPage> {
        let r = self.call(BlobRequest::ListPage { options }).await?;
        expect!(self, r, ListPage, "list")
    }

    async fn copy(&self, from: &str, to: &str, options: CopyOptions) -> Result<PutResult> {
        let r = self
            .call(BlobRequest::Copy {
                from: from.into(),
                to: to.into(),
                options,
            })
            .await?;
        expect!(self, r, Put, "copy")
    }

    async fn create_multipart(&self, key: &str, options: PutOptions) -> Result<MultipartId> {
        let r = self
            .call(BlobRequest::CreateMultipart {
                key: key.into(),
                options,
            })
            .await?;
        expect!(self, r, MultipartCreated, "create_multipart")
    }

    async fn put_part(
        &self,
        key: &str,
        upload: &MultipartId,
        part_number: u32,
        data: Bytes,
    ) -> Result<PartId> {
        let r = self
            .call(BlobRequest::PutPart {
                key: key.into(),
                upload: upload.clone(),
                part_number,
                data,
            })
            .await?;
        expect!(self, r, Part, "put_part")
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload: &MultipartId,
        parts: Vec<PartId>,
    ) -> Result<PutResult> {
        let r = self
            .call(BlobRequest::CompleteMultipart {
                key: key.into(),
                upload: upload.clone(),
                parts,
            })
            .await?;
        expect!(self, r, Put, "complete_multipart")
    }

    async fn abort_multipart(&self, key: &str, upload: &MultipartId) -> Result<()> {
        match self
            .call(BlobRequest::AbortMultipart {
                key: key.into(),
                upload: upload.clone(),
            })
            .await?
        {
            BlobResponse::Aborted => Ok(()),
            _ => Err(unexpected_response(&self.info.backend, "abort_multipart")),
        }
    }

    async fn presign(
        &self,
        method: PresignMethod,
        key: &str,
        expires_in: Duration,
    ) -> Result<String> {
        let r = self
            .call(BlobRequest::Presign {
                method,
                key: key.into(),
                expires_in,
            })
            .await?;
        expect!(self, r, Presigned, "presign")
    }
}
