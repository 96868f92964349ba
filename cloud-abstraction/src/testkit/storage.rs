//! Conformance suite for the storage trait (in progress).
