//! Conformance suite for the queue trait (in progress).
