//! Plumbing shared by the tower bridges of the four traits.

use crate::{Error, ErrorKind};
use std::future::poll_fn;
use tower_service::Service;

/// Boxed error, as tower middleware produces it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Turns a middleware error back into the API's [`Error`].
///
/// Our own errors pass through unchanged, except that an error raised by middleware that does
/// not know its backend ([`Error::UNNAMED`]) is named after `backend`. Errors raised by generic tower middleware (timeouts,
/// load shedding, a closed buffer) carry no kind; they become
/// [`Unavailable`](ErrorKind::Unavailable), which is retryable, with the original as source.
/// `paas_components::layers` maps tower's own error types to more precise kinds.
pub fn error_from_service(backend: &str, error: impl Into<BoxError>) -> Error {
    let error: BoxError = error.into();
    match error.downcast::<Error>() {
        Ok(error) => error.or_backend(backend),
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

/// What generic middleware needs to know about a request of any of the four traits.
///
/// Implemented by [`BlobRequest`](crate::storage::service::BlobRequest),
/// [`DocumentRequest`](crate::database::service::DocumentRequest),
/// [`QueueRequest`](crate::queue::service::QueueRequest) and
/// [`ComputeRequest`](crate::compute::service::ComputeRequest), so that one layer (metrics,
/// retry, fault injection) serves all four.
pub trait OperationRequest {
    /// The trait's module name: `"storage"`, `"database"`, `"queue"` or `"compute"`.
    const KIND: &'static str;

    /// The operation's name, e.g. `"put"`.
    fn operation(&self) -> &'static str;

    /// What the request is about: key, collection, topic or workload (for logs; never a
    /// secret, never a payload).
    fn resource(&self) -> &str;

    /// Whether sending the request twice has the same effect as sending it once, so that a
    /// retry after an ambiguous failure is safe.
    fn is_idempotent(&self) -> bool;

    /// Whether the request only reads (changes nothing anywhere), so that it may be sent to two
    /// replicas at once (a hedged read) and either answer used. `false` unless a trait says so.
    fn is_read(&self) -> bool {
        false
    }
}

mod operation_request_impls {
    use super::OperationRequest;
    use crate::compute::service::ComputeRequest;
    use crate::database::WriteCondition;
    use crate::database::service::DocumentRequest;
    use crate::queue::service::QueueRequest;
    use crate::storage::PutMode;
    use crate::storage::service::BlobRequest;

    impl OperationRequest for BlobRequest {
        const KIND: &'static str = "storage";
        fn operation(&self) -> &'static str {
            BlobRequest::operation(self)
        }
        fn resource(&self) -> &str {
            self.key()
        }
        fn is_idempotent(&self) -> bool {
            match self {
                // A create-only or if-match put that succeeded but whose answer was lost
                // fails on the retry: not idempotent. Multipart creation would leak uploads.
                BlobRequest::Put { options, .. } => options.mode == PutMode::Overwrite,
                BlobRequest::Copy { options, .. } => !options.if_not_exists,
                BlobRequest::CreateMultipart { .. } | BlobRequest::CompleteMultipart { .. } => {
                    false
                }
                _ => true,
            }
        }
        fn is_read(&self) -> bool {
            !self.is_write()
        }
    }

    impl OperationRequest for DocumentRequest {
        const KIND: &'static str = "database";
        fn operation(&self) -> &'static str {
            DocumentRequest::operation(self)
        }
        fn resource(&self) -> &str {
            self.collection()
        }
        fn is_idempotent(&self) -> bool {
            // Every write bumps the revision, so only reads are safe to repeat blindly.
            match self {
                DocumentRequest::Get { .. }
                | DocumentRequest::GetMany { .. }
                | DocumentRequest::Query { .. } => true,
                DocumentRequest::Delete { condition, .. } => *condition == WriteCondition::Any,
                DocumentRequest::Put { .. } | DocumentRequest::WriteBatch { .. } => false,
            }
        }
        fn is_read(&self) -> bool {
            matches!(
                self,
                DocumentRequest::Get { .. }
                    | DocumentRequest::GetMany { .. }
                    | DocumentRequest::Query { .. }
            )
        }
    }

    impl OperationRequest for QueueRequest {
        const KIND: &'static str = "queue";
        fn operation(&self) -> &'static str {
            QueueRequest::operation(self)
        }
        fn resource(&self) -> &str {
            self.topic()
        }
        fn is_idempotent(&self) -> bool {
            match self {
                // A publish with a producer id is de-duplicated by the queue.
                QueueRequest::Publish { message, .. } => message.id.is_some(),
                QueueRequest::PublishBatch { messages, .. } => {
                    messages.iter().all(|m| m.id.is_some())
                }
                // A lost receive answer leaves messages leased until their deadline: safe,
                // they come back.
                _ => true,
            }
        }
    }

    impl OperationRequest for ComputeRequest {
        const KIND: &'static str = "compute";
        fn operation(&self) -> &'static str {
            ComputeRequest::operation(self)
        }
        fn resource(&self) -> &str {
            self.name()
        }
        fn is_idempotent(&self) -> bool {
            // Desired-state operations are idempotent by design.
            true
        }
        fn is_read(&self) -> bool {
            matches!(
                self,
                ComputeRequest::Get { .. }
                    | ComputeRequest::List { .. }
                    | ComputeRequest::Logs { .. }
            )
        }
    }
}
