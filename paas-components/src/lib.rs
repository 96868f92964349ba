//! Backends for the [`cloud_abstraction`] traits, the URL openers, tower middleware, and a
//! portable copy/migrate helper.
//!
//! ```
//! use cloud_abstraction::database::{DocumentStoreExt, PutDocumentOptions};
//! use cloud_abstraction::queue::{GroupOptions, Message, ReceiveOptions};
//! use cloud_abstraction::storage::BlobStoreExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> cloud_abstraction::Result<()> {
//! // The same code runs on `postgres://…`, `s3://…`, … by changing the URLs.
//! let docs = paas_components::open_document_store("sqlite::memory:").await?;
//! let queue = paas_components::open_queue("mem://").await?;
//! let blobs = paas_components::open_blob_store("mem://").await?;
//!
//! docs.put_as("commands", "c1", &serde_json::json!({"vehicle": "WVW-1", "kind": "unlock"}),
//!     PutDocumentOptions::create()).await?;
//! queue.create_topic("commands").await?;
//! queue.create_group("commands", "workers", GroupOptions::default()).await?;
//! queue.publish("commands", Message::new("c1").with_id("c1")).await?;
//!
//! let received = queue.receive("commands", "workers", ReceiveOptions::default()).await?;
//! for message in received {
//!     blobs.put_bytes("telemetry/WVW-1/c1.json", "{}".into()).await?;
//!     queue.ack("commands", "workers", &message.receipt).await?;
//! }
//! assert!(blobs.exists("telemetry/WVW-1/c1.json").await?);
//! # Ok(()) }
//! ```
//!
//! # Where things are
//!
//! - [`storage`], [`database`], [`queue`], [`compute`]: one file per backend, each behind a
//!   cargo feature;
//! - [`registry`]: `open_*` by URL, and registration of your own schemes;
//! - [`layers`]: tower middleware (metrics, retry, timeout, fault injection) for all traits;
//! - [`migrate`]: copy a prefix or a collection between any two backends of a trait;
//! - [`multicloud`]: combinators over backends in several clouds (failover today).
//!
//! # Features
//!
//! | feature | enables |
//! |---|---|
//! | `memory` (default) | in-memory blob store, document store and queue (`mem://`) |
//! | `local` (default) | local filesystem blob store (`file://`) |
//! | `sqlite` (default) | SQLite document store and durable queue (`sqlite://`) |
//! | `process` (default) | local processes as compute (`process://`) |
//! | `sim` (default) | compute simulator (`sim://`) |
//! | `postgres` | PostgreSQL document store (`postgres://`) |
//! | `mysql` | MariaDB / MySQL document store (`mysql://`, `mariadb://`) |
//! | `redis` | Redis document store (`redis://`) |
//! | `s3` | S3 blob store (`s3://`), through object_store |
//! | `azure` | Azure Blob store (`azure://`), through object_store |
//!
//! TLS, where a backend uses it, is rustls with the aws-lc-rs provider only.
#![deny(missing_docs)]
#![warn(unreachable_pub)]

pub mod compute;
pub mod database;
pub mod layers;
pub mod migrate;
pub mod multicloud;
pub mod queue;
pub mod registry;
pub mod storage;

pub use registry::{
    Opener, open_blob_store, open_compute, open_document_store, open_queue, register_blob_store,
    register_compute, register_document_store, register_queue,
};
