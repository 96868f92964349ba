//! Multi-cloud combinators: one service over backends in several clouds.
//!
//! Written against the traits only (through the tower bridge), so they work over every
//! backend, ours or a user's.
//!
//! | module | what | status |
//! |---|---|---|
//! | [`failover`] | ordered members of one trait, each behind a circuit breaker; idempotent requests move on at once; hedged reads | exists |
//! | [`replicate`] | active-active replication of documents and blobs with durable hints, tombstones, replay and repair | exists |
//! | [`cell`] | per-vehicle cell routing: routing table (entries, ranges, weighted rendezvous), home / standby per cell, failover and return with hysteresis; from a placement plan with feature `placement` | exists |
//! | [`cell_queue`] | publishing to a cell's cloud with failover; an idempotent consumer (message ids recorded with create-if-absent) | exists |
//!
//! The circuit breaker itself is a layer ([`crate::layers::CircuitBreaker`]), usable on its
//! own; a failover gives each member one.

pub mod cell;
pub mod cell_queue;
pub mod failover;
pub mod replicate;

pub use cell::{CellRouter, CloudHealth, RouterConfig, RoutingTable};
pub use cell_queue::{CellPublisher, Delivery, IdempotentConsumer};
pub use failover::{Failover, FailoverBuilder, FailoverHandle, HedgeConfig, MemberStatus};
pub use replicate::{ReplicatedBlobStore, ReplicatedDocumentStore, ReplicationBuilder};
