use super::LayerRequest;
use cloud_abstraction::Error;
use futures::future::BoxFuture;
use std::task::{Context, Poll};
use std::time::Instant;
use tower::{Layer, Service};
use tracing::Instrument;

/// Records every call as a `tracing` span and as `metrics` facade series:
///
/// - `cloud_requests_total{kind, operation, outcome}` (counter; outcome is `ok` or the error kind),
/// - `cloud_request_duration_seconds{kind, operation}` (histogram).
///
/// Only the operation and the resource name (key, collection, topic, workload) are recorded,
/// never payloads or credentials. The library installs no recorder or subscriber: the
/// application chooses them.
#[derive(Debug, Clone, Copy, Default)]
pub struct MetricsLayer {
    _private: (),
}

impl MetricsLayer {
    /// A new layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;
    fn layer(&self, inner: S) -> MetricsService<S> {
        MetricsService { inner }
    }
}

/// The service of [`MetricsLayer`].
#[derive(Debug, Clone)]
pub struct MetricsService<S> {
    inner: S,
}

impl<S, Req> Service<Req> for MetricsService<S>
where
    S: Service<Req, Error = Error>,
    S::Future: Send + 'static,
    Req: LayerRequest,
{
    type Response = S::Response;
    type Error = Error;
    type Future = BoxFuture<'static, Result<S::Response, Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let operation = request.operation();
        let span = tracing::debug_span!(
            "cloud_call",
            kind = Req::KIND,
            operation,
            resource = request.resource()
        );
        let started = Instant::now();
        let call = self.inner.call(request);
        Box::pin(
            async move {
                let result = call.await;
                let outcome = match &result {
                    Ok(_) => "ok",
                    Err(e) => {
                        tracing::debug!(error = %e, "call failed");
                        e.kind().as_str()
                    }
                };
                metrics::counter!("cloud_requests_total", "kind" => Req::KIND, "operation" => operation, "outcome" => outcome)
                    .increment(1);
                metrics::histogram!("cloud_request_duration_seconds", "kind" => Req::KIND, "operation" => operation)
                    .record(started.elapsed().as_secs_f64());
                result
            }
            .instrument(span),
        )
    }
}
