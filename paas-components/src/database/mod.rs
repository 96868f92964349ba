//! database backends.
