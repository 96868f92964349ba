//! Queue backends: implementations of [`MessageQueue`](cloud_abstraction::MessageQueue).
//!
//! | backend | feature | type | durable | notes |
//! |---|---|---|---|---|
//! | in-memory | `memory` | [`MemoryQueue`] | no | every capability except durability; for tests and single-process services |
//! | SQLite | `sqlite` | [`SqliteQueue`] | yes | every capability; several processes may share one file |
//! | MQTT 5 | `mqtt` | `MqttQueue` | broker's | shared subscriptions as groups; no nack, leases, dead letters, attempt counts, ids; receipts per handle |
//! | Redis Streams | `redis` | [`RedisStreamsQueue`] | server's | no ordering keys, no delayed publish; receipts work on every handle |
//! | RabbitMQ | `rabbitmq` | `RabbitMqQueue` | yes | no ordering keys, no de-duplication; leases kept by the client, receipts per handle; delays by TTL queues |
//! | Kafka | `kafka` | `KafkaQueue` | yes | consumer groups over offsets; client-side leases; nacks through a retry topic per group; no de-duplication or delayed publish |
//! | NATS JetStream | `nats` | `NatsQueue` | yes | no ordering keys, no delayed publish; a stream per topic, a durable pull consumer per group |
//!
//! The server backends' types exist when their feature is on. Each server backend runs the
//! whole kit, the peer case and the model test against its real server, plus a fault test
//! through a cut TCP proxy (`tests/queue_<backend>.rs`). What several of them must emulate
//! (receipts bound to a handle, client-side leases, acknowledged offsets, remembered
//! deliveries) is written once in `emulation/`.
//!
//! Both embedded queues implement the whole model of [`cloud_abstraction::queue`]: consumer
//! groups that see messages published after their creation, leases with an ack deadline,
//! nack with a delay, dead-lettering after `max_attempts`, de-duplication by message id within
//! a window, ordering keys (one message in flight per key and group) and delayed messages.
//!
//! Receipts are opaque strings. Acknowledging a delivery whose message is no longer pending
//! (already acknowledged, dead-lettered, or its group deleted) succeeds, so acks are
//! idempotent; acknowledging, nacking or extending with the receipt of an earlier delivery of
//! a message that has since been delivered again fails with
//! [`PreconditionFailed`](cloud_abstraction::ErrorKind::PreconditionFailed), as do nack and
//! extend of a message that is no longer pending.

pub(crate) mod emulation;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "memory")]
pub mod memory;
#[cfg(feature = "mqtt")]
pub mod mqtt;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;
#[cfg(feature = "redis")]
pub mod redis_streams;
#[cfg(feature = "sqlite")]
pub mod sqlite;

#[cfg(feature = "kafka")]
pub use kafka::KafkaQueue;
#[cfg(feature = "memory")]
pub use memory::MemoryQueue;
#[cfg(feature = "mqtt")]
pub use mqtt::MqttQueue;
#[cfg(feature = "nats")]
pub use nats::NatsQueue;
#[cfg(feature = "rabbitmq")]
pub use rabbitmq::RabbitMqQueue;
#[cfg(feature = "redis")]
pub use redis_streams::RedisStreamsQueue;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteQueue;

/// Input checks of the queue backends. The portable rules (names, message and batch limits,
/// leases, delays) are `cloud_abstraction::validate::queue`; what is specific to the embedded
/// backends (their receipt format, the long-poll clock) is here.
#[allow(dead_code)] // which helpers are used depends on the enabled features
pub(crate) mod checks {
    use cloud_abstraction::queue::ReceiveOptions;
    pub(crate) use cloud_abstraction::validate::queue::{
        batch, group_options, lease, nack_delay, receive, topic, topic_group,
    };
    use cloud_abstraction::{Error, Result};

    /// When a long poll of `options.wait` started now gives up. A wait too long to add to
    /// the clock (e.g. `Duration::MAX`) is `InvalidArgument` rather than an overflow panic.
    pub(crate) fn give_up_at(
        backend: &'static str,
        options: &ReceiveOptions,
    ) -> Result<tokio::time::Instant> {
        tokio::time::Instant::now()
            .checked_add(options.wait)
            .ok_or_else(|| Error::invalid(backend, "the receive wait is too long"))
    }

    /// Splits a receipt `"<sequence>.<token>"`.
    pub(crate) fn receipt<'a>(backend: &'static str, receipt: &'a str) -> Result<(i64, &'a str)> {
        receipt
            .split_once('.')
            .and_then(|(seq, token)| {
                let seq = seq.parse::<i64>().ok()?;
                (!token.is_empty() && token.len() <= 64).then_some((seq, token))
            })
            .ok_or_else(|| Error::invalid(backend, "malformed receipt"))
    }
}
