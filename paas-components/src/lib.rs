//! Backends for the `cloud-abstraction` traits, the URL openers, and tower middleware.
//!
//! (Crate docs are completed as the backends land.)
#![deny(missing_docs)]
#![warn(unreachable_pub)]

pub mod compute;
pub mod database;
pub mod queue;
pub mod storage;
