//! Conformance suite for the database trait (in progress).
