//! The tower bridge for [`DocumentStore`]: every store is a [`Service`], and every such
//! service (with layers on it) is a store again. See [`crate::storage::service`] for the pattern.

use super::{
    DatabaseCapabilities, Document, DocumentStore, PutDocumentOptions, Query, QueryPage, Revision,
    WriteCondition, WriteOp, WriteOutcome,
};
use crate::service_util::{BoxError, call_service, unexpected_response};
use crate::{BackendInfo, Error, Result};
use async_trait::async_trait;
use futures::future::BoxFuture;
use serde_json::Value;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower_service::Service;

/// One [`DocumentStore`] call as a value.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)] // the fields are the trait methods' parameters
pub enum DocumentRequest {
    Get {
        collection: String,
        id: String,
    },
    GetMany {
        collection: String,
        ids: Vec<String>,
    },
    Put {
        collection: String,
        id: String,
        value: Value,
        options: PutDocumentOptions,
    },
    Delete {
        collection: String,
        id: String,
        condition: WriteCondition,
    },
    WriteBatch {
        ops: Vec<WriteOp>,
    },
    Query {
        collection: String,
        query: Query,
    },
}

impl DocumentRequest {
    /// The operation's name, for logs and metrics.
    pub fn operation(&self) -> &'static str {
        match self {
            Self::Get { .. } => "get",
            Self::GetMany { .. } => "get_many",
            Self::Put { .. } => "put",
            Self::Delete { .. } => "delete",
            Self::WriteBatch { .. } => "write_batch",
            Self::Query { .. } => "query",
        }
    }

    /// The collection the request is about (a batch: its first write's collection).
    pub fn collection(&self) -> &str {
        match self {
            Self::Get { collection, .. }
            | Self::GetMany { collection, .. }
            | Self::Put { collection, .. }
            | Self::Delete { collection, .. }
            | Self::Query { collection, .. } => collection,
            Self::WriteBatch { ops } => match ops.first() {
                Some(WriteOp::Put { collection, .. } | WriteOp::Delete { collection, .. }) => {
                    collection
                }
                None => "",
            },
        }
    }

    /// Whether the request changes the store.
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Self::Put { .. } | Self::Delete { .. } | Self::WriteBatch { .. }
        )
    }
}

/// The result of a [`DocumentRequest`].
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum DocumentResponse {
    Document(Option<Document>),
    Documents(Vec<Option<Document>>),
    Revision(Revision),
    Deleted(bool),
    Batch(Vec<WriteOutcome>),
    Page(QueryPage),
}

/// Any [`DocumentStore`] as a [`tower_service::Service`].
#[derive(Clone)]
pub struct DocumentStoreService {
    store: Arc<dyn DocumentStore>,
}

impl DocumentStoreService {
    /// Wraps a store.
    pub fn new(store: Arc<dyn DocumentStore>) -> Self {
        Self { store }
    }

    /// The wrapped store.
    pub fn store(&self) -> &Arc<dyn DocumentStore> {
        &self.store
    }
}

impl fmt::Debug for DocumentStoreService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DocumentStoreService")
            .field(&self.store)
            .finish()
    }
}

impl Service<DocumentRequest> for DocumentStoreService {
    type Response = DocumentResponse;
    type Error = Error;
    type Future = BoxFuture<'static, Result<DocumentResponse>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: DocumentRequest) -> Self::Future {
        let store = Arc::clone(&self.store);
        Box::pin(async move {
            Ok(match request {
                DocumentRequest::Get { collection, id } => {
                    DocumentResponse::Document(store.get(&collection, &id).await?)
                }
                DocumentRequest::GetMany { collection, ids } => {
                    DocumentResponse::Documents(store.get_many(&collection, &ids).await?)
                }
                DocumentRequest::Put {
                    collection,
                    id,
                    value,
                    options,
                } => DocumentResponse::Revision(store.put(&collection, &id, value, options).await?),
                DocumentRequest::Delete {
                    collection,
                    id,
                    condition,
                } => DocumentResponse::Deleted(store.delete(&collection, &id, condition).await?),
                DocumentRequest::WriteBatch { ops } => {
                    DocumentResponse::Batch(store.write_batch(ops).await?)
                }
                DocumentRequest::Query { collection, query } => {
                    DocumentResponse::Page(store.query(&collection, query).await?)
                }
            })
        })
    }
}

/// Any `Service<DocumentRequest>` as a [`DocumentStore`] again.
#[derive(Clone)]
pub struct ServiceDocumentStore<S> {
    service: S,
    info: BackendInfo,
    capabilities: DatabaseCapabilities,
}

impl<S> ServiceDocumentStore<S> {
    /// Wraps `service`, reporting `info` and `capabilities` as the store's own.
    pub fn new(service: S, info: BackendInfo, capabilities: DatabaseCapabilities) -> Self {
        Self {
            service,
            info,
            capabilities,
        }
    }
}

impl<S> fmt::Debug for ServiceDocumentStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceDocumentStore")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

macro_rules! expect {
    ($self:ident, $response:expr, $variant:ident, $op:literal) => {
        match $response {
            DocumentResponse::$variant(value) => Ok(value),
            _ => Err(unexpected_response(&$self.info.backend, $op)),
        }
    };
}

#[async_trait]
impl<S> DocumentStore for ServiceDocumentStore<S>
where
    S: Service<DocumentRequest, Response = DocumentResponse> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    fn info(&self) -> BackendInfo {
        self.info.clone()
    }

    fn capabilities(&self) -> DatabaseCapabilities {
        self.capabilities.clone()
    }

    async fn get(&self, collection: &str, id: &str) -> Result<Option<Document>> {
        let request = DocumentRequest::Get {
            collection: collection.into(),
            id: id.into(),
        };
        expect!(
            self,
            call_service(&self.service, &self.info.backend, request).await?,
            Document,
            "get"
        )
    }

    async fn get_many(&self, collection: &str, ids: &[String]) -> Result<Vec<Option<Document>>> {
        let request = DocumentRequest::GetMany {
            collection: collection.into(),
            ids: ids.to_vec(),
        };
        expect!(
            self,
            call_service(&self.service, &self.info.backend, request).await?,
            Documents,
            "get_many"
        )
    }

    async fn put(
        &self,
        collection: &str,
        id: &str,
        value: Value,
        options: PutDocumentOptions,
    ) -> Result<Revision> {
        let request = DocumentRequest::Put {
            collection: collection.into(),
            id: id.into(),
            value,
            options,
        };
        expect!(
            self,
            call_service(&self.service, &self.info.backend, request).await?,
            Revision,
            "put"
        )
    }

    async fn delete(&self, collection: &str, id: &str, condition: WriteCondition) -> Result<bool> {
        let request = DocumentRequest::Delete {
            collection: collection.into(),
            id: id.into(),
            condition,
        };
        expect!(
            self,
            call_service(&self.service, &self.info.backend, request).await?,
            Deleted,
            "delete"
        )
    }

    async fn write_batch(&self, ops: Vec<WriteOp>) -> Result<Vec<WriteOutcome>> {
        let request = DocumentRequest::WriteBatch { ops };
        expect!(
            self,
            call_service(&self.service, &self.info.backend, request).await?,
            Batch,
            "write_batch"
        )
    }

    async fn query(&self, collection: &str, query: Query) -> Result<QueryPage> {
        let request = DocumentRequest::Query {
            collection: collection.into(),
            query,
        };
        expect!(
            self,
            call_service(&self.service, &self.info.backend, request).await?,
            Page,
            "query"
        )
    }
}
