//! Retries of temporary failures, bounded by a retry budget.
//!
//! A fixed retry count multiplies load during an outage: with three retries at every layer of
//! a stack, one failing call becomes dozens. A **retry budget** (Finagle's, tower's
//! [`TpsBudget`]) allows retries only up to a fraction of recent requests, so retries help with
//! scattered failures and fade away during a real outage. [`RetryLayer::default`] uses a budget
//! (20% of the requests of the last 10 s, plus 10 retries per second) and at most 3 retries per
//! request; [`RetryLayer::new`] keeps a plain per-request count.
//!
//! When the layer gives up on a temporary error, it marks the error
//! [`Persistent`](cloud_abstraction::ErrorStatus::Persistent), so that an outer retry does not
//! retry it again ([`Error::is_retryable`] is false) while a failover can still move it to
//! another member ([`Error::is_target_failure`] stays true).

use super::LayerRequest;
use cloud_abstraction::Error;
use futures::future::BoxFuture;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::retry::budget::{Budget, TpsBudget};
use tower::{Layer, Service};

/// Retries retryable failures ([`Error::is_retryable`]) with exponential back-off and full
/// jitter, within a per-request count and an optional shared [budget](TpsBudget).
///
/// Only idempotent requests are retried by default
/// ([`OperationRequest::is_idempotent`](cloud_abstraction::service_util::OperationRequest::is_idempotent)):
/// a create-only put whose success answer was lost would otherwise come back as
/// `AlreadyExists`. [`RetryLayer::retry_all`] lifts that for callers who handle it.
///
/// The budget is shared by every service the layer makes and all their clones.
#[derive(Clone)]
pub struct RetryLayer {
    max_retries: u32,
    backoff: Duration,
    max_backoff: Duration,
    retry_all: bool,
    budget: Option<Arc<TpsBudget>>,
}

impl fmt::Debug for RetryLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("max_retries", &self.max_retries)
            .field("backoff", &self.backoff)
            .field("max_backoff", &self.max_backoff)
            .field("retry_all", &self.retry_all)
            .field("budget", &self.budget.is_some())
            .finish()
    }
}

impl Default for RetryLayer {
    /// At most 3 retries per request, within a budget of 20% of the requests of the last
    /// 10 s plus 10 retries per second.
    fn default() -> Self {
        Self::new(3).with_budget(Duration::from_secs(10), 10, 0.2)
    }
}

impl RetryLayer {
    /// Up to `max_retries` retries per request and no budget; first back-off 50 ms,
    /// doubling to at most 2 s.
    pub fn new(max_retries: u32) -> Self {
        Self {
            max_retries,
            backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            retry_all: false,
            budget: None,
        }
    }

    /// Bounds retries by a budget: over the last `ttl`, retries may be at most
    /// `retry_percent` (0.0 to 1000.0) of the requests, plus `min_per_sec` per second.
    pub fn with_budget(mut self, ttl: Duration, min_per_sec: u32, retry_percent: f32) -> Self {
        let ttl = ttl.clamp(Duration::from_secs(1), Duration::from_secs(60));
        let percent = if retry_percent.is_finite() {
            retry_percent.clamp(0.0, 1000.0)
        } else {
            0.0
        };
        // TpsBudget asserts its ranges; clamping keeps a bad number from becoming a panic.
        let min_per_sec = min_per_sec.min(i32::MAX as u32 - 1);
        self.budget = Some(Arc::new(TpsBudget::new(ttl, min_per_sec, percent)));
        self
    }

    /// Sets the first back-off (it doubles on each retry).
    pub fn with_backoff(mut self, first: Duration, max: Duration) -> Self {
        self.backoff = first;
        self.max_backoff = max;
        self
    }

    /// Retries non-idempotent requests too.
    pub fn retry_all(mut self) -> Self {
        self.retry_all = true;
        self
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Retry {
            inner,
            config: self.clone(),
        }
    }
}

/// The service of [`RetryLayer`].
#[derive(Debug, Clone)]
pub struct Retry<S> {
    inner: S,
    config: RetryLayer,
}

impl<S, Req> Service<Req> for Retry<S>
where
    S: Service<Req, Error = Error> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    Req: LayerRequest,
{
    type Response = S::Response;
    type Error = Error;
    type Future = BoxFuture<'static, Result<S::Response, Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let config = self.config.clone();
        // The ready service answers the first attempt; clones (readied again) the retries.
        let mut inner = self.inner.clone();
        std::mem::swap(&mut inner, &mut self.inner);
        let spare = self.inner.clone();
        Box::pin(async move {
            if let Some(budget) = &config.budget {
                budget.deposit();
            }
            let retryable_request = config.retry_all || request.is_idempotent();
            let mut backoff = config.backoff;
            let mut attempt = 0u32;
            let mut result = inner.call(request.clone()).await;
            loop {
                let error = match &result {
                    Ok(_) => return result,
                    Err(e) if !e.is_retryable() => return result,
                    Err(e) => e,
                };
                let out_of_retries = attempt >= config.max_retries
                    || !retryable_request
                    || config.budget.as_ref().is_some_and(|b| !b.withdraw());
                if out_of_retries {
                    // Retried here (or not allowed to be): no outer layer should retry it.
                    return result.map_err(|e| if retryable_request { e.persist() } else { e });
                }
                attempt += 1;
                let delay = backoff.mul_f64(rand::random::<f64>());
                backoff = (backoff * 2).min(config.max_backoff);
                tracing::debug!(
                    kind = Req::KIND,
                    operation = request.operation(),
                    error = %error,
                    attempt,
                    ?delay,
                    "retrying"
                );
                tokio::time::sleep(delay).await;
                let mut service = spare.clone();
                result = match std::future::poll_fn(|cx| service.poll_ready(cx)).await {
                    Ok(()) => service.call(request.clone()).await,
                    Err(e) => Err(e),
                };
            }
        })
    }
}
