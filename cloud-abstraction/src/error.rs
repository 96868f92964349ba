//! The one error type of the portable API.

use std::borrow::Cow;
use std::fmt;

/// A portable classification of what went wrong.
///
/// Callers branch on the kind, never on the message. Whether a failure is worth retrying is a
/// property of the kind: see [`ErrorKind::is_retryable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The object, document, topic, group or workload does not exist.
    NotFound,
    /// A create-only write found the resource already present.
    AlreadyExists,
    /// A conditional operation's condition (ETag, revision) did not hold.
    PreconditionFailed,
    /// The request itself is malformed: bad key, name, URL, config or payload size.
    InvalidArgument,
    /// The caller is authenticated but not allowed to do this.
    PermissionDenied,
    /// The caller could not be authenticated.
    Unauthenticated,
    /// A quota, rate limit or capacity limit was hit; retrying later may succeed.
    ResourceExhausted,
    /// The backend could not be reached or is temporarily failing; retrying may succeed.
    Unavailable,
    /// The operation did not finish in time; retrying may succeed.
    DeadlineExceeded,
    /// The backend does not support this operation (see the capabilities).
    Unsupported,
    /// A bug or an unexpected state in the backend or in this library.
    Internal,
}

impl ErrorKind {
    /// True for the kinds where the same request may succeed when tried again:
    /// [`Unavailable`](Self::Unavailable), [`DeadlineExceeded`](Self::DeadlineExceeded) and
    /// [`ResourceExhausted`](Self::ResourceExhausted).
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::Unavailable | Self::DeadlineExceeded | Self::ResourceExhausted
        )
    }

    /// A short, stable, snake_case name (for metrics labels and logs).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::AlreadyExists => "already_exists",
            Self::PreconditionFailed => "precondition_failed",
            Self::InvalidArgument => "invalid_argument",
            Self::PermissionDenied => "permission_denied",
            Self::Unauthenticated => "unauthenticated",
            Self::ResourceExhausted => "resource_exhausted",
            Self::Unavailable => "unavailable",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::Unsupported => "unsupported",
            Self::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether trying the same request again may help, beside the [`ErrorKind`] (as OpenDAL's
/// error status): so that layers compose without multiplying retries.
///
/// A retry layer that gives up marks its last error [`Persistent`](Self::Persistent), and a
/// circuit breaker answers `Persistent` while open: an outer retry then does not retry the
/// same target again, but a failover may still send the request to *another* member, because
/// the kind (e.g. [`ErrorKind::Unavailable`]) still says the target, not the request, failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorStatus {
    /// Trying again may help now (the default of the retryable kinds).
    Temporary,
    /// Was temporary, but an inner layer already retried (or a breaker is open): retrying the
    /// same target now will not help.
    Persistent,
    /// Trying again can never help (the default of every other kind).
    Permanent,
}

impl ErrorStatus {
    /// A short, stable, snake_case name (for metrics labels and logs).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Temporary => "temporary",
            Self::Persistent => "persistent",
            Self::Permanent => "permanent",
        }
    }
}

impl fmt::Display for ErrorStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The error of every operation in this API.
///
/// It carries a portable [`ErrorKind`], the name of the backend that failed, a message that says
/// what failed (never a secret), and the backend's own error as [`source`](std::error::Error::source).
pub struct Error {
    kind: ErrorKind,
    status: ErrorStatus,
    backend: Cow<'static, str>,
    message: String,
    source: Option<BoxError>,
}

impl Error {
    /// A new error of `kind` raised by `backend`.
    pub fn new(
        kind: ErrorKind,
        backend: impl Into<Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            status: if kind.is_retryable() {
                ErrorStatus::Temporary
            } else {
                ErrorStatus::Permanent
            },
            backend: backend.into(),
            message: message.into(),
            source: None,
        }
    }

    /// Attaches the backend's own error, reachable through `source()`.
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Shorthand for an [`ErrorKind::InvalidArgument`] error.
    pub fn invalid(backend: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, backend, message)
    }

    /// Shorthand for an [`ErrorKind::NotFound`] error.
    pub fn not_found(backend: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, backend, message)
    }

    /// Shorthand for an [`ErrorKind::Unsupported`] error naming the operation.
    pub fn unsupported(backend: impl Into<Cow<'static, str>>, operation: &str) -> Self {
        Self::new(
            ErrorKind::Unsupported,
            backend,
            format!("{operation} is not supported by this backend"),
        )
    }

    /// Shorthand for an [`ErrorKind::Unavailable`] error.
    pub fn unavailable(backend: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, backend, message)
    }

    /// Shorthand for an [`ErrorKind::Internal`] error.
    pub fn internal(backend: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, backend, message)
    }

    /// The portable kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether retrying the same request against the same target may succeed now: the kind
    /// is retryable ([`ErrorKind::is_retryable`]) and the [status](Self::status) is still
    /// [`Temporary`](ErrorStatus::Temporary).
    pub fn is_retryable(&self) -> bool {
        self.kind.is_retryable() && self.status == ErrorStatus::Temporary
    }

    /// Whether the failure was the target's, not the request's (a retryable kind, whatever
    /// the status): another member of a failover or replica set may still serve the request.
    pub fn is_target_failure(&self) -> bool {
        self.kind.is_retryable()
    }

    /// The status: temporary, persistent or permanent (see [`ErrorStatus`]).
    pub fn status(&self) -> ErrorStatus {
        self.status
    }

    /// Marks a temporary error [`Persistent`](ErrorStatus::Persistent): retrying it here
    /// already happened (or cannot help now). Permanent errors stay permanent.
    pub fn persist(mut self) -> Self {
        if self.status == ErrorStatus::Temporary {
            self.status = ErrorStatus::Persistent;
        }
        self
    }

    /// Sets the status explicitly (e.g. a backend that knows a failure is final).
    pub fn with_status(mut self, status: ErrorStatus) -> Self {
        self.status = status;
        self
    }

    /// The same error reported by `backend`, if it names none yet ([`Error::UNNAMED`]).
    ///
    /// Middleware that does not know which backend it wraps (a timeout, a rate limit) raises
    /// unnamed errors; the bridge back to a trait names them after the backend underneath, so
    /// a timeout keeps the name of the backend it timed out on.
    pub fn or_backend(mut self, backend: &str) -> Self {
        if self.backend == Self::UNNAMED {
            self.backend = Cow::Owned(backend.to_string());
        }
        self
    }

    /// The backend name of an error raised by middleware that does not know its backend.
    pub const UNNAMED: &'static str = "";

    /// The name of the backend that raised the error (e.g. `"memory"`, `"postgres"`).
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// What failed, in words (without the backend name).
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let backend = if self.backend == Self::UNNAMED {
            "middleware"
        } else {
            &self.backend
        };
        write!(f, "{backend} ({}", self.kind)?;
        if self.status == ErrorStatus::Persistent {
            f.write_str(", persistent")?;
        }
        write!(f, "): {}", self.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind)
            .field("status", &self.status)
            .field("backend", &self.backend)
            .field("message", &self.message);
        if let Some(source) = &self.source {
            // Display, not Debug: a backend's Debug output may include connection settings.
            d.field("source", &source.to_string());
        }
        d.finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|e| e.as_ref() as &(dyn std::error::Error + 'static))
    }
}

/// The result type of every operation in this API.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_kinds() {
        assert!(ErrorKind::Unavailable.is_retryable());
        assert!(ErrorKind::DeadlineExceeded.is_retryable());
        assert!(ErrorKind::ResourceExhausted.is_retryable());
        assert!(!ErrorKind::NotFound.is_retryable());
        assert!(!ErrorKind::PreconditionFailed.is_retryable());
        assert!(!ErrorKind::Internal.is_retryable());
    }

    #[test]
    fn status_defaults_and_persist() {
        let e = Error::unavailable("pg", "down");
        assert_eq!(e.status(), ErrorStatus::Temporary);
        assert!(e.is_retryable() && e.is_target_failure());
        let e = e.persist();
        assert_eq!(e.status(), ErrorStatus::Persistent);
        assert!(!e.is_retryable(), "an exhausted retry is not retried again");
        assert!(
            e.is_target_failure(),
            "but another member may still serve it"
        );
        assert_eq!(e.to_string(), "pg (unavailable, persistent): down");
        let e = Error::not_found("pg", "x").persist();
        assert_eq!(e.status(), ErrorStatus::Permanent);
        assert!(!e.is_target_failure());
    }

    #[test]
    fn unnamed_errors_take_the_backend_name() {
        let e = Error::new(ErrorKind::DeadlineExceeded, Error::UNNAMED, "slow");
        assert_eq!(e.to_string(), "middleware (deadline_exceeded): slow");
        let e = e.or_backend("postgres");
        assert_eq!(e.backend(), "postgres");
        assert_eq!(e.or_backend("other").backend(), "postgres");
    }

    #[test]
    fn display_names_backend_and_kind() {
        let e = Error::not_found("memory", "object `a/b` not found");
        assert_eq!(e.to_string(), "memory (not_found): object `a/b` not found");
        assert!(std::error::Error::source(&e).is_none());
        let e = e.with_source(std::io::Error::other("disk"));
        assert_eq!(std::error::Error::source(&e).unwrap().to_string(), "disk");
    }
}
