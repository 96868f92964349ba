//! Backends for the `cloud-abstraction` traits, the URL openers, and tower middleware.
//!
//! (Crate docs are completed as the backends land.)
#![deny(missing_docs)]
#![warn(unreachable_pub)]

pub mod compute;
pub mod database;
pub mod layers;
pub mod migrate;
pub mod queue;
pub mod registry;
pub mod storage;

pub use registry::{
    Opener, open_blob_store, open_compute, open_document_store, open_queue, register_blob_store,
    register_compute, register_document_store, register_queue,
};
