//! Queue backends: implementations of [`MessageQueue`](cloud_abstraction::MessageQueue).
//!
//! | backend | feature | type | durable | notes |
//! |---|---|---|---|---|
//! | in-memory | `memory` | [`MemoryQueue`] | no | every capability except durability; for tests and single-process services |
//! | SQLite | `sqlite` | [`SqliteQueue`] | yes | every capability; several processes may share one file |
//!
//! Server-backed queues (NATS, RabbitMQ, Redis Streams, MQTT, Kafka) are planned, not built:
//! today `open_queue` knows `mem://` and `sqlite://` only.
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

#[cfg(feature = "memory")]
pub mod memory;
#[cfg(feature = "sqlite")]
pub mod sqlite;

#[cfg(feature = "memory")]
pub use memory::MemoryQueue;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteQueue;

/// Input checks shared by the queue backends, so that they reject the same input the same way.
#[allow(dead_code)] // which helpers are used depends on the enabled features
pub(crate) mod checks {
    use cloud_abstraction::queue::{GroupOptions, Message, QueueCapabilities, ReceiveOptions};
    use cloud_abstraction::{Error, Result, validate};
    use std::time::Duration;

    /// Longest ack deadline or lease extension (Pub/Sub's limit is 10 minutes; we are lenient).
    pub(crate) const MAX_LEASE: Duration = Duration::from_secs(12 * 3600);
    /// Longest publish or nack delay.
    pub(crate) const MAX_DELAY: Duration = Duration::from_secs(15 * 24 * 3600);
    /// Most attributes on one message.
    pub(crate) const MAX_ATTRIBUTES: usize = 100;

    pub(crate) fn topic(backend: &'static str, topic: &str) -> Result<()> {
        validate::resource_name(backend, "topic", topic)
    }

    pub(crate) fn topic_group(backend: &'static str, topic: &str, group: &str) -> Result<()> {
        validate::resource_name(backend, "topic", topic)?;
        validate::resource_name(backend, "group", group)
    }

    /// Checks a message against the rules and the backend's capabilities.
    pub(crate) fn message(
        backend: &'static str,
        caps: &QueueCapabilities,
        message: &Message,
    ) -> Result<()> {
        validate::payload_size(
            backend,
            "message body",
            message.body.len(),
            caps.max_message_size,
        )?;
        if let Some(id) = &message.id {
            if !caps.deduplication {
                return Err(Error::unsupported(backend, "message ids (de-duplication)"));
            }
            validate::document_id(backend, id)?;
        }
        if let Some(key) = &message.ordering_key {
            if !caps.ordering_keys {
                return Err(Error::unsupported(backend, "ordering keys"));
            }
            validate::document_id(backend, key)
                .map_err(|e| Error::invalid(backend, format!("ordering key: {}", e.message())))?;
        }
        if let Some(delay) = message.delay.filter(|d| !d.is_zero()) {
            if !caps.delayed_delivery {
                return Err(Error::unsupported(backend, "delayed delivery"));
            }
            if delay > MAX_DELAY {
                return Err(Error::invalid(
                    backend,
                    format!("delay of {delay:?} is over the limit of {MAX_DELAY:?}"),
                ));
            }
        }
        if message.attributes.len() > MAX_ATTRIBUTES {
            return Err(Error::invalid(
                backend,
                format!("more than {MAX_ATTRIBUTES} attributes"),
            ));
        }
        for key in message.attributes.keys() {
            validate::document_id(backend, key)
                .map_err(|e| Error::invalid(backend, format!("attribute name: {}", e.message())))?;
        }
        Ok(())
    }

    /// Checks group options; the dead-letter topic's existence is the backend's to check.
    pub(crate) fn group_options(
        backend: &'static str,
        caps: &QueueCapabilities,
        topic: &str,
        options: &GroupOptions,
    ) -> Result<()> {
        lease(backend, "ack deadline", options.ack_deadline)?;
        if (options.max_attempts.is_some() || options.dead_letter_topic.is_some())
            && !caps.dead_letter
        {
            return Err(Error::unsupported(backend, "dead-lettering"));
        }
        if options.max_attempts == Some(0) {
            return Err(Error::invalid(backend, "max_attempts must be at least 1"));
        }
        if let Some(dlq) = &options.dead_letter_topic {
            validate::resource_name(backend, "dead-letter topic", dlq)?;
            if dlq == topic {
                return Err(Error::invalid(
                    backend,
                    "a topic cannot be its own dead-letter topic",
                ));
            }
        }
        Ok(())
    }

    pub(crate) fn receive(backend: &'static str, options: &ReceiveOptions) -> Result<()> {
        if options.max_messages == 0 {
            return Err(Error::invalid(backend, "max_messages must be at least 1"));
        }
        Ok(())
    }

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

    /// A lease length (ack deadline or extension): more than zero, at most [`MAX_LEASE`].
    pub(crate) fn lease(backend: &'static str, what: &str, lease: Duration) -> Result<()> {
        if lease.is_zero() || lease > MAX_LEASE {
            return Err(Error::invalid(
                backend,
                format!("{what} must be more than zero and at most {MAX_LEASE:?}"),
            ));
        }
        Ok(())
    }

    pub(crate) fn nack_delay(
        backend: &'static str,
        caps: &QueueCapabilities,
        delay: Duration,
    ) -> Result<()> {
        if !delay.is_zero() && !caps.nack_delay {
            return Err(Error::unsupported(backend, "nack with a delay"));
        }
        if delay > MAX_DELAY {
            return Err(Error::invalid(
                backend,
                format!("nack delay of {delay:?} is over the limit of {MAX_DELAY:?}"),
            ));
        }
        Ok(())
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
