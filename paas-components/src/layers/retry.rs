use super::LayerRequest;
use cloud_abstraction::Error;
use futures::future::BoxFuture;
use std::time::Duration;
use tower::Layer;
use tower::retry::{Policy, Retry};

/// Retries retryable failures ([`Error::is_retryable`]) with exponential back-off and jitter.
///
/// Only idempotent requests are retried by default
/// ([`OperationRequest::is_idempotent`](cloud_abstraction::service_util::OperationRequest::is_idempotent)):
/// a create-only put whose success answer was lost would otherwise come back as
/// `AlreadyExists`. [`RetryLayer::retry_all`] lifts that for callers who handle it.
#[derive(Debug, Clone)]
pub struct RetryLayer {
    policy: RetryPolicy,
}

impl RetryLayer {
    /// Up to `max_retries` retries, first back-off 50 ms, doubling to at most 2 s.
    pub fn new(max_retries: u32) -> Self {
        Self {
            policy: RetryPolicy {
                remaining: max_retries,
                backoff: Duration::from_millis(50),
                max_backoff: Duration::from_secs(2),
                retry_all: false,
            },
        }
    }

    /// Sets the first back-off (it doubles on each retry).
    pub fn with_backoff(mut self, first: Duration, max: Duration) -> Self {
        self.policy.backoff = first;
        self.policy.max_backoff = max;
        self
    }

    /// Retries non-idempotent requests too.
    pub fn retry_all(mut self) -> Self {
        self.policy.retry_all = true;
        self
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<RetryPolicy, S>;
    fn layer(&self, inner: S) -> Self::Service {
        Retry::new(self.policy.clone(), inner)
    }
}

/// The [`tower::retry::Policy`] of [`RetryLayer`]; a fresh copy is used per request.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    remaining: u32,
    backoff: Duration,
    max_backoff: Duration,
    retry_all: bool,
}

impl<Req: LayerRequest, Res> Policy<Req, Res, Error> for RetryPolicy {
    type Future = BoxFuture<'static, ()>;

    fn retry(
        &mut self,
        request: &mut Req,
        result: &mut Result<Res, Error>,
    ) -> Option<Self::Future> {
        let error = result.as_ref().err()?;
        if self.remaining == 0 || !error.is_retryable() {
            return None;
        }
        if !self.retry_all && !request.is_idempotent() {
            return None;
        }
        self.remaining -= 1;
        // Full jitter: spread retries of many clients after a shared outage.
        let delay = self.backoff.mul_f64(rand::random::<f64>());
        self.backoff = (self.backoff * 2).min(self.max_backoff);
        tracing::debug!(
            kind = Req::KIND,
            operation = request.operation(),
            error = %error,
            ?delay,
            "retrying"
        );
        Some(Box::pin(tokio::time::sleep(delay)))
    }

    fn clone_request(&mut self, request: &Req) -> Option<Req> {
        Some(request.clone())
    }
}
