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
//! - [`registry`]: `open_*` by URL (location parameters included), registration of your own
//!   schemes, and [`Registry`] values beside the process-wide registry;
//! - [`layers`]: tower middleware for all traits (metrics, retry with a budget, timeout, circuit
//!   breaker, rate and concurrency limits, fault injection);
//! - [`migrate`]: copy a prefix or a collection between any two backends of a trait;
//! - [`multicloud`]: combinators over backends in several clouds: failover for every trait,
//!   active-active replicated documents, cell routing and queues across clouds;
//! - [`testing`] (feature `testing`): a cuttable TCP proxy for fault tests and game days.
//! - [`deploy`]: staged, gated rollouts of a placement over one compute backend per region,
//!   with rollback, resumable records in a document store, and delivery (DORA) metrics.
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
//! | `redis` | Redis document store and Redis Streams queue (`redis://`) |
//! | `s3` | S3 blob store (`s3://`), through object_store |
//! | `azure` | Azure Blob store (`azure://`), through object_store |
//! | `placement` | cell placements from a survivable `cloud-placement` plan |
//! | `testing` | [`testing::TcpProxy`], to cut a server's connections in fault tests |
//!
//! # TLS
//!
//! Every backend that speaks TLS uses rustls with the **aws-lc-rs** crypto provider, the
//! only one compiled in (never `ring`); TLS comes with the `postgres`, `mysql`, `redis`, `s3`
//! and `azure` features, no extra feature needed. The options are URL parameters:
//!
//! | backend | turn on / verify | CA file | details |
//! |---|---|---|---|
//! | PostgreSQL | `sslmode=disable\|prefer\|require\|verify-ca\|verify-full` (default `prefer`) | `sslrootcert=FILE` | [`database::sql::postgres`] |
//! | MariaDB / MySQL | `ssl-mode=DISABLED\|PREFERRED\|REQUIRED\|VERIFY_CA\|VERIFY_IDENTITY` (default `PREFERRED`) | `ssl-ca=FILE` | [`database::sql::mysql`] |
//! | Redis | `rediss://` (always verifies; `insecure=true` to not) | `ca_file=FILE` | [`database::RedisDocumentStore`] |
//!
//! The SQL backends accept either spelling of mode and CA file (`sslmode=verify-full` works
//! on MariaDB, `ssl-ca=` on PostgreSQL). For a managed cloud database use the verifying mode
//! (`verify-full`, `VERIFY_IDENTITY`, `rediss://`) with the provider's CA file. A rejected
//! server certificate (not trusted, host name mismatch) is
//! [`Unauthenticated`](cloud_abstraction::ErrorKind::Unauthenticated) with the cause in the
//! message; a bad mode or an unreadable CA file is `InvalidArgument`; no error shows the URL.
//!
//! Crypto provider: sqlx passes aws-lc-rs to rustls explicitly; object_store (through
//! reqwest) takes the process-default provider if one is installed, else aws-lc-rs. The
//! `redis` crate needs a process default, so the first `rediss://` connect installs aws-lc-rs
//! as the process default unless the application installed one before. An
//! application that adds a crate enabling `ring` should install its choice once at start
//! (`rustls::crypto::aws_lc_rs::default_provider().install_default()`) before any TLS
//! connection, since rustls cannot pick a default when two providers are compiled in.
#![deny(missing_docs)]
#![warn(unreachable_pub)]

pub mod compute;
pub mod database;
pub mod deploy;
pub mod layers;
pub mod migrate;
pub mod multicloud;
pub mod queue;
#[cfg(feature = "redis")]
mod redis_conn;
pub mod registry;
#[cfg(feature = "sqlite")]
mod sqlite_open;
pub mod storage;
#[cfg(feature = "testing")]
pub mod testing;
#[cfg(any(
    feature = "postgres",
    feature = "mysql",
    feature = "redis",
    feature = "nats"
))]
mod tls;

pub use registry::{
    Opener, Registry, open_blob_store, open_compute, open_document_store, open_queue,
    register_blob_store, register_compute, register_document_store, register_queue,
};
