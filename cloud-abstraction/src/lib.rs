//! Cloud-neutral async traits for **object storage, document databases, message queues and
//! compute**, so that a service runs unchanged on embedded defaults, on one cloud, or on two
//! clouds at once.
//!
//! ```
//! use cloud_abstraction::{ErrorKind, ResourceUrl, validate};
//!
//! // Every bad input is a typed error, never a panic.
//! let err = validate::object_key("memory", "../etc/passwd").unwrap_err();
//! assert_eq!(err.kind(), ErrorKind::InvalidArgument);
//!
//! // Backend URLs never print their secrets.
//! let url = ResourceUrl::parse("postgres://app:hunter2@db:5432/cars").unwrap();
//! assert_eq!(url.to_string(), "postgres://app:***@db:5432/cars");
//! ```
//!
//! Backends live in the `paas-components` crate; this crate holds only the portable API:
//!
//! | module | trait | conveniences | tower bridge |
//! |---|---|---|---|
//! | [`storage`] | [`BlobStore`] | [`BlobStoreExt`](storage::BlobStoreExt) | [`storage::service`] |
//! | [`database`] | [`DocumentStore`] | [`DocumentStoreExt`](database::DocumentStoreExt) | [`database::service`] |
//! | [`queue`] | [`MessageQueue`] | [`subscribe`](queue::subscribe) | [`queue::service`] |
//! | [`compute`] | [`Compute`] | [`ComputeExt`](compute::ComputeExt) | [`compute::service`] |
//!
//! Each trait is small (what a backend must provide) and object-safe (`Arc<dyn BlobStore>`).
//! Each reports its [capabilities](storage::StorageCapabilities) and its
//! [location](Location); an operation outside the capabilities fails with
//! [`ErrorKind::Unsupported`], never silently. Every failure is an [`Error`] with a portable
//! [`ErrorKind`]; [`Error::is_retryable`] tells whether trying again may help.
//!
//! # Tower
//!
//! Each trait has a request enum and a response enum. Any backend is a
//! [`tower_service::Service`] (e.g. [`storage::service::BlobStoreService`]), and any such
//! service, with any layers around it, is a backend again
//! ([`storage::service::ServiceBlobStore`]). So tower's generic middleware (timeouts,
//! concurrency limits, load shedding) and the layers of `paas-components` (metrics, retry with
//! a budget, timeout, circuit breaker, rate and concurrency limits, fault injection) apply to
//! every trait alike. Errors carry a [status](ErrorStatus) beside their kind, so that layers
//! compose: a retry that gave up marks its error persistent, and an outer retry leaves it be.
//!
//! # Features
//!
//! - `testkit`: the [`testkit`] module, the conformance suites every backend runs.
#![deny(missing_docs)]
#![warn(unreachable_pub)]

pub mod capabilities;
pub mod compute;
pub mod database;
mod error;
mod location;
pub mod queue;
pub mod service_util;
pub mod storage;
mod url;
pub mod validate;

#[cfg(feature = "testkit")]
pub mod testkit;

pub use compute::Compute;
pub use database::DocumentStore;
pub use error::{Error, ErrorKind, ErrorStatus, Result};
pub use location::{BackendInfo, Location};
pub use queue::MessageQueue;
pub use storage::BlobStore;
pub use url::{PathForm, ResourceUrl};
