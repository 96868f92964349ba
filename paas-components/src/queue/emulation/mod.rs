//! What several server queues must emulate because their broker does not do it, written once.
//!
//! Each piece is a file, used by every backend that needs it:
//! - [`deliveries`]: what a handle remembers of the deliveries it received and settled, to
//!   refuse stale receipts where the broker settles a message by position alone (JetStream).
//! - [`receipt`]: receipts that name the handle that received them, so a receipt used on
//!   another handle is refused (`Unsupported`) where the broker's handle is per connection,
//!   and malformed ones are `InvalidArgument`.
//! - [`delivery_leases`]: leases kept by the client over deliveries the broker holds for
//!   the connection (deadlines, expiry, settle-once, idempotent acks, stale receipts), where
//!   the broker has no per-message ack deadline (AMQP).
//! - [`held_messages`]: messages a consumer has read ahead and holds itself, leased in
//!   process with deadlines, nack delays, attempt counts and one message in flight per
//!   ordering key, for brokers that hand out whole partitions (Kafka).
//! - [`offsets`]: per-message acks over a log's offsets: the contiguous acknowledged prefix
//!   to commit, and what is acknowledged beyond it, encoded for the commit's metadata.

#![allow(dead_code)] // which pieces are used depends on the enabled backends

pub(crate) mod deliveries;
pub(crate) mod delivery_leases;
pub(crate) mod held_messages;
pub(crate) mod offsets;
pub(crate) mod receipt;
