//! The tower bridge for [`Compute`]: every backend is a [`Service`], and every such service
//! (with layers on it) is a backend again. See [`crate::storage::service`] for the pattern.

use super::{Compute, ComputeCapabilities, LogOptions, LogPage, WorkloadSpec, WorkloadStatus};
use crate::service_util::{BoxError, call_service, unexpected_response};
use crate::{BackendInfo, Error, Result};
use async_trait::async_trait;
use futures::future::BoxFuture;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower_service::Service;

/// One [`Compute`] call as a value.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)] // the fields are the trait methods' parameters
pub enum ComputeRequest {
    Apply { spec: WorkloadSpec },
    Get { name: String },
    List { selector: BTreeMap<String, String> },
    Scale { name: String, replicas: u32 },
    Delete { name: String },
    Logs { name: String, options: LogOptions },
}

impl ComputeRequest {
    /// The operation's name, for logs and metrics.
    pub fn operation(&self) -> &'static str {
        match self {
            Self::Apply { .. } => "apply",
            Self::Get { .. } => "get",
            Self::List { .. } => "list",
            Self::Scale { .. } => "scale",
            Self::Delete { .. } => "delete",
            Self::Logs { .. } => "logs",
        }
    }

    /// The workload the request is about (empty for a listing).
    pub fn name(&self) -> &str {
        match self {
            Self::Apply { spec } => &spec.name,
            Self::Get { name }
            | Self::Scale { name, .. }
            | Self::Delete { name }
            | Self::Logs { name, .. } => name,
            Self::List { .. } => "",
        }
    }
}

/// The result of a [`ComputeRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum ComputeResponse {
    Status(WorkloadStatus),
    MaybeStatus(Option<WorkloadStatus>),
    List(Vec<WorkloadStatus>),
    Deleted(bool),
    Logs(LogPage),
}

/// Any [`Compute`] backend as a [`tower_service::Service`].
#[derive(Clone)]
pub struct ComputeService {
    compute: Arc<dyn Compute>,
}

impl ComputeService {
    /// Wraps a backend.
    pub fn new(compute: Arc<dyn Compute>) -> Self {
        Self { compute }
    }

    /// The wrapped backend.
    pub fn compute(&self) -> &Arc<dyn Compute> {
        &self.compute
    }
}

impl fmt::Debug for ComputeService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ComputeService")
            .field(&self.compute)
            .finish()
    }
}

impl Service<ComputeRequest> for ComputeService {
    type Response = ComputeResponse;
    type Error = Error;
    type Future = BoxFuture<'static, Result<ComputeResponse>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: ComputeRequest) -> Self::Future {
        let c = Arc::clone(&self.compute);
        Box::pin(async move {
            Ok(match request {
                ComputeRequest::Apply { spec } => ComputeResponse::Status(c.apply(spec).await?),
                ComputeRequest::Get { name } => ComputeResponse::MaybeStatus(c.get(&name).await?),
                ComputeRequest::List { selector } => {
                    ComputeResponse::List(c.list(&selector).await?)
                }
                ComputeRequest::Scale { name, replicas } => {
                    ComputeResponse::Status(c.scale(&name, replicas).await?)
                }
                ComputeRequest::Delete { name } => ComputeResponse::Deleted(c.delete(&name).await?),
                ComputeRequest::Logs { name, options } => {
                    ComputeResponse::Logs(c.logs(&name, options).await?)
                }
            })
        })
    }
}

/// Any `Service<ComputeRequest>` as a [`Compute`] backend again.
#[derive(Clone)]
pub struct ServiceCompute<S> {
    service: S,
    info: BackendInfo,
    capabilities: ComputeCapabilities,
}

impl<S> ServiceCompute<S> {
    /// Wraps `service`, reporting `info` and `capabilities` as the backend's own.
    pub fn new(service: S, info: BackendInfo, capabilities: ComputeCapabilities) -> Self {
        Self {
            service,
            info,
            capabilities,
        }
    }
}

impl<S> fmt::Debug for ServiceCompute<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceCompute")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

macro_rules! expect {
    ($self:ident, $response:expr, $variant:ident, $op:literal) => {
        match $response {
            ComputeResponse::$variant(value) => Ok(value),
            _ => Err(unexpected_response(&$self.info.backend, $op)),
        }
    };
}

#[async_trait]
impl<S> Compute for ServiceCompute<S>
where
    S: Service<ComputeRequest, Response = ComputeResponse> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    fn info(&self) -> BackendInfo {
        self.info.clone()
    }

    fn capabilities(&self) -> ComputeCapabilities {
        self.capabilities.clone()
    }

    async fn apply(&self, spec: WorkloadSpec) -> Result<WorkloadStatus> {
        let r = call_service(
            &self.service,
            &self.info.backend,
            ComputeRequest::Apply { spec },
        )
        .await?;
        expect!(self, r, Status, "apply")
    }

    async fn get(&self, name: &str) -> Result<Option<WorkloadStatus>> {
        let r = call_service(
            &self.service,
            &self.info.backend,
            ComputeRequest::Get { name: name.into() },
        )
        .await?;
        expect!(self, r, MaybeStatus, "get")
    }

    async fn list(&self, selector: &BTreeMap<String, String>) -> Result<Vec<WorkloadStatus>> {
        let request = ComputeRequest::List {
            selector: selector.clone(),
        };
        let r = call_service(&self.service, &self.info.backend, request).await?;
        expect!(self, r, List, "list")
    }

    async fn scale(&self, name: &str, replicas: u32) -> Result<WorkloadStatus> {
        let request = ComputeRequest::Scale {
            name: name.into(),
            replicas,
        };
        let r = call_service(&self.service, &self.info.backend, request).await?;
        expect!(self, r, Status, "scale")
    }

    async fn delete(&self, name: &str) -> Result<bool> {
        let r = call_service(
            &self.service,
            &self.info.backend,
            ComputeRequest::Delete { name: name.into() },
        )
        .await?;
        expect!(self, r, Deleted, "delete")
    }

    async fn logs(&self, name: &str, options: LogOptions) -> Result<LogPage> {
        let request = ComputeRequest::Logs {
            name: name.into(),
            options,
        };
        let r = call_service(&self.service, &self.info.backend, request).await?;
        expect!(self, r, Logs, "logs")
    }
}
