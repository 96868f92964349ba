//! compute backends.
