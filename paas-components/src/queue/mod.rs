//! queue backends.
