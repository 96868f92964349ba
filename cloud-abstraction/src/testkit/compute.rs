//! Conformance suite for the compute trait (in progress).
