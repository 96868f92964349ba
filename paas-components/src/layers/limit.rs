//! Rate and concurrency limits that hold across clones.
//!
//! tower's `RateLimit` keeps its state in the service value and is not `Clone`, so it cannot
//! sit under the bridge (which clones a service per call); its `ConcurrencyLimit` acquires in
//! `poll_ready`. These limits keep their state behind an [`Arc`] shared by every service of
//! the layer and every clone, and decide in `call`: a call waits at most `max_wait` for its
//! turn, then fails with [`ResourceExhausted`](ErrorKind::ResourceExhausted) (retryable), so
//! an overloaded client sheds load instead of queueing without bound.

use super::LayerRequest;
use cloud_abstraction::{Error, ErrorKind};
use futures::future::BoxFuture;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::{Layer, Service};

#[derive(Debug)]
struct Bucket {
    /// Time between two calls at the steady rate.
    interval: Duration,
    /// How far ahead of the steady rate a burst may run.
    tolerance: Duration,
    max_wait: Duration,
    /// The theoretical arrival time of the next call (GCRA).
    next: Mutex<Option<Instant>>,
}

impl Bucket {
    /// How long the caller must wait for its turn, or `None` when that is over `max_wait`.
    fn reserve(&self) -> Option<Duration> {
        let now = Instant::now();
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let tat = next.map_or(now, |t| t.max(now));
        let ahead = tat.duration_since(now);
        let wait = ahead.saturating_sub(self.tolerance);
        if wait > self.max_wait {
            return None;
        }
        *next = Some(tat + self.interval);
        Some(wait)
    }
}

/// Allows at most `per_second` calls per second on average, with bursts of `burst`; shared by
/// every clone (a generic cell rate algorithm, so no timer task runs).
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    bucket: Arc<Bucket>,
}

impl RateLimitLayer {
    /// `per_second` calls per second (at least 1 per hour), bursts of up to `burst` (at least
    /// 1); a call that would wait longer than `max_wait` fails with `ResourceExhausted`.
    pub fn new(per_second: f64, burst: u32, max_wait: Duration) -> Result<Self, Error> {
        if !(per_second.is_finite() && per_second >= 1.0 / 3600.0) {
            return Err(Error::invalid(
                "rate-limit",
                "the rate must be a number of at least one call per hour",
            ));
        }
        let interval = Duration::from_secs_f64(1.0 / per_second);
        let tolerance = interval.saturating_mul(burst.max(1) - 1);
        Ok(Self {
            bucket: Arc::new(Bucket {
                interval,
                tolerance,
                max_wait,
                next: Mutex::new(None),
            }),
        })
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            bucket: Arc::clone(&self.bucket),
        }
    }
}

/// The service of [`RateLimitLayer`].
#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    inner: S,
    bucket: Arc<Bucket>,
}

impl<S, Req> Service<Req> for RateLimit<S>
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
        let Some(wait) = self.bucket.reserve() else {
            let message = format!(
                "rate limit reached: {} `{}` would wait longer than {:?}",
                Req::KIND,
                request.operation(),
                self.bucket.max_wait
            );
            return Box::pin(async move {
                Err(Error::new(
                    ErrorKind::ResourceExhausted,
                    Error::UNNAMED,
                    message,
                ))
            });
        };
        // The inner call is created now (the service was readied for it) and awaited after
        // the wait: a future does nothing until polled.
        let call = self.inner.call(request);
        Box::pin(async move {
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            call.await
        })
    }
}

/// Allows at most `max` calls in flight at once, shared by every clone.
#[derive(Debug, Clone)]
pub struct ConcurrencyLimitLayer {
    permits: Arc<Semaphore>,
    max_wait: Duration,
}

impl ConcurrencyLimitLayer {
    /// At most `max` (at least 1) concurrent calls; a call that waits longer than `max_wait`
    /// for a slot fails with `ResourceExhausted`.
    pub fn new(max: usize, max_wait: Duration) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max.clamp(1, Semaphore::MAX_PERMITS))),
            max_wait,
        }
    }

    /// Free slots right now.
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }
}

impl<S> Layer<S> for ConcurrencyLimitLayer {
    type Service = ConcurrencyLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ConcurrencyLimit {
            inner,
            limit: self.clone(),
        }
    }
}

/// The service of [`ConcurrencyLimitLayer`].
#[derive(Debug, Clone)]
pub struct ConcurrencyLimit<S> {
    inner: S,
    limit: ConcurrencyLimitLayer,
}

impl<S, Req> Service<Req> for ConcurrencyLimit<S>
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
        let permits = Arc::clone(&self.limit.permits);
        let max_wait = self.limit.max_wait;
        let operation = request.operation();
        let call = self.inner.call(request);
        Box::pin(async move {
            let permit = match tokio::time::timeout(max_wait, permits.acquire_owned()).await {
                Ok(Ok(permit)) => permit,
                _ => {
                    return Err(Error::new(
                        ErrorKind::ResourceExhausted,
                        Error::UNNAMED,
                        format!(
                            "concurrency limit reached: {} `{operation}` waited {max_wait:?} for a slot",
                            Req::KIND
                        ),
                    ));
                }
            };
            let result = call.await;
            drop(permit);
            result
        })
    }
}
