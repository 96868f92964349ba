//! Multi-cloud combinators: one service over backends in several clouds.
//!
//! Written against the traits only (through the tower bridge), so they work over every
//! backend, ours or a user's.
//!
//! | module | what | status |
//! |---|---|---|
//! | [`failover`] | ordered members of one trait, each behind a circuit breaker; idempotent requests move on at once; hedged reads | exists |
//! | [`replicate`] | active-active replication of documents with durable hints, tombstones, replay and repair | documents exist; blobs planned |
//! | `cell` | per-vehicle cell routing from a placement plan | planned |
//!
//! The circuit breaker itself is a layer ([`crate::layers::CircuitBreaker`]), usable on its
//! own; a failover gives each member one.

pub mod failover;
pub mod replicate;

pub use failover::{Failover, FailoverBuilder, FailoverHandle, HedgeConfig, MemberStatus};
pub use replicate::{ReplicatedDocumentStore, ReplicationBuilder};
