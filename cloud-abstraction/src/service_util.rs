//! Plumbing shared by the tower bridges of the four traits.

use crate::{Error, ErrorKind};
use std::future::poll_fn;
use tower_service::Service;

/// Boxed error, as tower middleware produces it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Turns a middleware error back into the API's [`Error`].
///
/// Our own errors pass through unchanged. Errors raised by generic tower middleware (timeouts,
/// load shedding, a closed buffer) carry no kind; they become
/// [`Unavailable`](ErrorKind::Unavailable), which is retryable, with the original as source.
/// `paas_components::layers` maps tower's own error types to more precise kinds.
pub fn error_from_service(backend: &str, error: impl Into<BoxError>) -> Error {
    let error: BoxError = error.into();
    match error.downcast::<Error>() {
        Ok(error) => *error,
        Err(other) => Error::new(
            ErrorKind::Unavailable,
            backend.to_string(),
            format!("middleware failed: {other}"),
        )
        .with_source(other),
    }
}

/// Waits until `service` is ready, then calls it; the service is cloned so `&self` suffices.
pub(crate) async fn call_service<S, Req>(
    service: &S,
    backend: &str,
    request: Req,
) -> Result<S::Response, Error>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
{
    let mut service = service.clone();
    poll_fn(|cx| service.poll_ready(cx))
        .await
        .map_err(|e| error_from_service(backend, e))?;
    service
        .call(request)
        .await
        .map_err(|e| error_from_service(backend, e))
}

/// The error for a response of the wrong variant (a middleware bug).
pub(crate) fn unexpected_response(backend: &str, operation: &str) -> Error {
    Error::internal(
        backend.to_string(),
        format!("service returned the wrong response variant for {operation}"),
    )
}
