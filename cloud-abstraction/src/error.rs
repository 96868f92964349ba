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

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The error of every operation in this API.
///
/// It carries a portable [`ErrorKind`], the name of the backend that failed, a message that says
/// what failed (never a secret), and the backend's own error as [`source`](std::error::Error::source).
pub struct Error {
    kind: ErrorKind,
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

    /// Whether retrying the same request may succeed (see [`ErrorKind::is_retryable`]).
    pub fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }

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
        write!(f, "{} ({}): {}", self.backend, self.kind, self.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind)
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
    fn display_names_backend_and_kind() {
        let e = Error::not_found("memory", "object `a/b` not found");
        assert_eq!(e.to_string(), "memory (not_found): object `a/b` not found");
        assert!(std::error::Error::source(&e).is_none());
        let e = e.with_source(std::io::Error::other("disk"));
        assert_eq!(std::error::Error::source(&e).unwrap().to_string(), "disk");
    }
}
