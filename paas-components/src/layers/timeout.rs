use super::LayerRequest;
use cloud_abstraction::{Error, ErrorKind};
use futures::future::BoxFuture;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::{Layer, Service};

/// Fails a call with [`DeadlineExceeded`](ErrorKind::DeadlineExceeded) (retryable) when it
/// takes longer than the limit. Unlike `tower::timeout`, the error is the API's own [`Error`].
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer {
    limit: Duration,
}

impl TimeoutLayer {
    /// A layer that allows each call `limit`.
    pub fn new(limit: Duration) -> Self {
        Self { limit }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;
    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            inner,
            limit: self.limit,
        }
    }
}

/// The service of [`TimeoutLayer`].
#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
    limit: Duration,
}

impl<S, Req> Service<Req> for Timeout<S>
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
        let limit = self.limit;
        let call = self.inner.call(request);
        Box::pin(async move {
            match tokio::time::timeout(limit, call).await {
                Ok(result) => result,
                Err(_) => Err(Error::new(
                    ErrorKind::DeadlineExceeded,
                    Error::UNNAMED,
                    format!(
                        "{} `{operation}` did not finish within {limit:?}",
                        Req::KIND
                    ),
                )),
            }
        })
    }
}
