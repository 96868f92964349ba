//! Tower middleware for every trait, written once per concern.
//!
//! Every layer works on the request enum of any of the four traits (through
//! [`OperationRequest`]), so the same stack serves storage, database, queue and compute:
//!
//! ```
//! use std::{sync::Arc, time::Duration};
//! use cloud_abstraction::storage::{BlobStore, BlobStoreExt};
//! use paas_components::layers::{self, MetricsLayer, RetryLayer, TimeoutLayer};
//! use paas_components::storage::MemoryBlobStore;
//! use tower::ServiceBuilder;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> cloud_abstraction::Result<()> {
//! let store: Arc<dyn BlobStore> = Arc::new(MemoryBlobStore::new());
//! let resilient = layers::blob_store(
//!     store,
//!     ServiceBuilder::new()
//!         .layer(MetricsLayer::new())
//!         .layer(RetryLayer::new(3))
//!         .layer(TimeoutLayer::new(Duration::from_secs(5))),
//! );
//! resilient.put_bytes("hello", "world".into()).await?;
//! assert_eq!(resilient.get_bytes("hello").await?, "world");
//! # Ok(()) }
//! ```
//!
//! | layer | module | what it does |
//! |---|---|---|
//! | [`MetricsLayer`] | `metrics` | a tracing span, a counter and a latency histogram per call |
//! | [`RetryLayer`] | `retry` | retries temporary failures of idempotent calls within a retry budget |
//! | [`TimeoutLayer`] | `timeout` | `DeadlineExceeded` after a limit, naming the backend |
//! | [`CircuitBreaker`] | `circuit_breaker` | stops calling a failing backend; half-open probes; hysteresis |
//! | [`RateLimitLayer`], [`ConcurrencyLimitLayer`] | `limit` | shared limits; over the limit: `ResourceExhausted` |
//! | [`FaultInjector`] | `fault` | takes a backend down, fails a fraction of calls, adds latency (tests, game days) |
//!
//! Every layer's state that must outlive a clone (breaker, budget, limits, faults) lives
//! behind an `Arc`, because the bridge clones a service for each call. Errors raised by a
//! layer that does not know its backend are named after the backend underneath when they come
//! out of the bridge ([`cloud_abstraction::Error::or_backend`]).
//!
//! Tower's own middleware (load shedding, buffers) stacks in the same way; their errors come
//! back as retryable [`Unavailable`](cloud_abstraction::ErrorKind::Unavailable) errors (see
//! [`cloud_abstraction::service_util::error_from_service`]).

mod circuit_breaker;
mod fault;
mod limit;
mod metrics;
mod retry;
mod timeout;

pub use circuit_breaker::{
    BreakerSnapshot, BreakerState, CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer,
    CircuitBreakerService, FailurePredicate, Permit, ProbeGuard, SlidingWindow, Transition,
};
pub use fault::{FaultInjector, FaultLayer, FaultService};
pub use limit::{ConcurrencyLimit, ConcurrencyLimitLayer, RateLimit, RateLimitLayer};
pub use metrics::{MetricsLayer, MetricsService};
pub use retry::{Retry, RetryLayer};
pub use timeout::{Timeout, TimeoutLayer};

use cloud_abstraction::compute::service::{
    ComputeRequest, ComputeResponse, ComputeService, ServiceCompute,
};
use cloud_abstraction::database::service::{
    DocumentRequest, DocumentResponse, DocumentStoreService, ServiceDocumentStore,
};
use cloud_abstraction::queue::service::{
    MessageQueueService, QueueRequest, QueueResponse, ServiceMessageQueue,
};
use cloud_abstraction::service_util::{BoxError, OperationRequest};
use cloud_abstraction::storage::service::{
    BlobRequest, BlobResponse, BlobStoreService, ServiceBlobStore,
};
use cloud_abstraction::{BlobStore, Compute, DocumentStore, MessageQueue};
use std::sync::Arc;
use tower::{Layer, Service};

macro_rules! layered_constructor {
    ($(#[$doc:meta])* $fn:ident, $dyn:ident, $svc:ident, $wrapper:ident, $req:ty, $resp:ty) => {
        $(#[$doc])*
        pub fn $fn<L>(inner: Arc<dyn $dyn>, layer: L) -> Arc<dyn $dyn>
        where
            L: Layer<$svc>,
            L::Service: Service<$req, Response = $resp> + Clone + Send + Sync + 'static,
            <L::Service as Service<$req>>::Error: Into<BoxError>,
            <L::Service as Service<$req>>::Future: Send,
        {
            let info = inner.info();
            let capabilities = inner.capabilities();
            Arc::new($wrapper::new(layer.layer($svc::new(inner)), info, capabilities))
        }
    };
}

layered_constructor!(
    /// Wraps a blob store in `layer` and returns the result as a blob store again.
    blob_store, BlobStore, BlobStoreService, ServiceBlobStore, BlobRequest, BlobResponse
);
layered_constructor!(
    /// Wraps a document store in `layer` and returns the result as a document store again.
    document_store, DocumentStore, DocumentStoreService, ServiceDocumentStore, DocumentRequest, DocumentResponse
);
layered_constructor!(
    /// Wraps a queue in `layer` and returns the result as a queue again.
    message_queue, MessageQueue, MessageQueueService, ServiceMessageQueue, QueueRequest, QueueResponse
);
layered_constructor!(
    /// Wraps a compute backend in `layer` and returns the result as a compute backend again.
    compute, Compute, ComputeService, ServiceCompute, ComputeRequest, ComputeResponse
);

/// Marker bound of the request types the layers accept.
pub trait LayerRequest: OperationRequest + Clone + Send + 'static {}
impl<T: OperationRequest + Clone + Send + 'static> LayerRequest for T {}
