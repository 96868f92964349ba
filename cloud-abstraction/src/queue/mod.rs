//! Message queues: the [`MessageQueue`] trait and its types.
//!
//! The model is topics with consumer groups (like Pub/Sub subscriptions or Kafka groups):
//! - a group receives every message published to its topic **after the group was created**;
//!   every group sees every such message, and consumers within a group compete for them;
//! - delivery is at-least-once: a received message is leased to its consumer until its ack
//!   deadline; if it is not acknowledged by then (or is nacked) it is delivered again, with a
//!   higher [`attempt`](ReceivedMessage::attempt);
//! - after [`GroupOptions::max_attempts`] deliveries without an ack, a message is moved to the
//!   group's dead-letter topic (if one is set) and is not delivered to the group again;
//! - a message published with an [`id`](Message::id) already seen on the topic within the
//!   de-duplication window is accepted but not delivered again;
//! - messages with the same [`ordering_key`](Message::ordering_key) are delivered to a group in
//!   publish order, one at a time: the next is not delivered while an earlier one is leased.
//!
//! The core trait is pull-based ([`MessageQueue::receive`]) so that every request is a plain
//! value (see [`service`]); [`subscribe`] turns it into a [`Stream`](futures::Stream) of
//! [`Delivery`] handles that ack and nack themselves.

pub mod service;
mod subscribe;

pub use subscribe::{Delivery, SubscribeOptions, subscribe};

use crate::{BackendInfo, Error, Result};
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::{Duration, SystemTime};

/// What a queue can do beyond publish / receive / ack.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueCapabilities {
    /// Negative acknowledgement with a redelivery delay.
    pub nack_delay: bool,
    /// Delayed publishing ([`Message::delay`]).
    pub delayed_delivery: bool,
    /// Ordered delivery per [`Message::ordering_key`].
    pub ordering_keys: bool,
    /// Dead-lettering after [`GroupOptions::max_attempts`].
    pub dead_letter: bool,
    /// De-duplication by [`Message::id`].
    pub deduplication: bool,
    /// Extending a lease ([`MessageQueue::extend_deadline`]).
    pub extend_deadline: bool,
    /// Negative acknowledgement ([`MessageQueue::nack`]): a delivery given back is delivered
    /// again without reconnecting. Without it `nack` fails with
    /// [`Unsupported`](crate::ErrorKind::Unsupported) (MQTT redelivers only on a new session).
    pub nack: bool,
    /// A lease that runs out (no ack within the group's ack deadline) makes the message
    /// deliverable again by itself. Without it an unacknowledged message stays with its
    /// consumer until that consumer's session ends (MQTT).
    pub lease_expiry: bool,
    /// [`ReceivedMessage::attempt`] counts the deliveries; without it every delivery says 1.
    pub attempt_count: bool,
    /// A receipt may be used from another handle (another connection or process) to the same
    /// queue. Without it, a receipt from another handle fails with
    /// [`Unsupported`](crate::ErrorKind::Unsupported) rather than touching some other
    /// delivery (AMQP delivery tags are per channel; leases kept by the client are per process).
    pub portable_receipts: bool,
    /// Messages survive a restart of the process / server.
    pub durable: bool,
    /// Largest message body, in bytes.
    pub max_message_size: Option<u64>,
}

impl QueueCapabilities {
    /// Everything, with a 1 MiB message limit.
    pub fn full() -> Self {
        Self {
            nack_delay: true,
            delayed_delivery: true,
            ordering_keys: true,
            dead_letter: true,
            deduplication: true,
            extend_deadline: true,
            nack: true,
            lease_expiry: true,
            attempt_count: true,
            portable_receipts: true,
            durable: true,
            max_message_size: Some(1024 * 1024),
        }
    }

    /// Only publish / receive / ack / nack without delay, with leases that expire, receipts
    /// valid only on the handle that received them.
    pub fn minimal() -> Self {
        Self {
            nack_delay: false,
            delayed_delivery: false,
            ordering_keys: false,
            dead_letter: false,
            deduplication: false,
            extend_deadline: false,
            nack: true,
            lease_expiry: true,
            attempt_count: true,
            portable_receipts: false,
            durable: false,
            max_message_size: Some(1024 * 1024),
        }
    }
}

/// A message to publish.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    /// The payload.
    pub body: Bytes,
    /// String attributes (headers).
    pub attributes: BTreeMap<String, String>,
    /// Producer-chosen id for de-duplication; generated when `None`.
    pub id: Option<String>,
    /// Messages with the same key are delivered in order.
    pub ordering_key: Option<String>,
    /// Deliver no earlier than this long after publishing.
    pub delay: Option<Duration>,
}

impl Message {
    /// A message with this body.
    pub fn new(body: impl Into<Bytes>) -> Self {
        Self {
            body: body.into(),
            ..Self::default()
        }
    }

    /// Sets the de-duplication id.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Sets an attribute.
    pub fn with_attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.attributes.insert(key.into(), value.into());
        self
    }

    /// Sets the ordering key.
    pub fn with_ordering_key(mut self, key: impl Into<String>) -> Self {
        self.ordering_key = Some(key.into());
        self
    }

    /// Sets a delivery delay.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }
}

/// Settings of a consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupOptions {
    /// How long a received message stays leased before it is delivered again.
    pub ack_deadline: Duration,
    /// Deliveries without an ack after which a message is dead-lettered; `None`: never.
    pub max_attempts: Option<u32>,
    /// Topic that receives dead-lettered messages (must exist); `None`: they are dropped.
    pub dead_letter_topic: Option<String>,
}

impl Default for GroupOptions {
    fn default() -> Self {
        Self {
            ack_deadline: Duration::from_secs(30),
            max_attempts: None,
            dead_letter_topic: None,
        }
    }
}

/// Options of one receive call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiveOptions {
    /// At most this many messages.
    pub max_messages: usize,
    /// Wait up to this long for at least one message (long polling); zero: return at once.
    pub wait: Duration,
}

impl Default for ReceiveOptions {
    fn default() -> Self {
        Self {
            max_messages: 10,
            wait: Duration::from_secs(1),
        }
    }
}

/// A message as received by a consumer, with the receipt that acknowledges it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// The message id (the producer's, or a generated one).
    pub id: String,
    /// The payload.
    pub body: Bytes,
    /// String attributes.
    pub attributes: BTreeMap<String, String>,
    /// The ordering key, if any.
    pub ordering_key: Option<String>,
    /// Which delivery this is: 1 for the first.
    pub attempt: u32,
    /// When the message was published.
    pub published_at: SystemTime,
    /// Opaque handle for ack / nack / extend of this delivery.
    pub receipt: String,
}

/// A queue with topics and consumer groups: the small core every backend implements.
#[async_trait]
pub trait MessageQueue: Debug + Send + Sync + 'static {
    /// The backend's name and location.
    fn info(&self) -> BackendInfo;

    /// What this queue supports.
    fn capabilities(&self) -> QueueCapabilities;

    /// Creates a topic; creating an existing topic succeeds.
    async fn create_topic(&self, topic: &str) -> Result<()>;

    /// Deletes a topic, its groups and their messages; deleting an absent topic succeeds.
    async fn delete_topic(&self, topic: &str) -> Result<()>;

    /// Creates a consumer group on an existing topic (else
    /// [`NotFound`](crate::ErrorKind::NotFound)); creating an existing group updates its options.
    async fn create_group(&self, topic: &str, group: &str, options: GroupOptions) -> Result<()>;

    /// Deletes a group and its pending messages; deleting an absent group succeeds.
    async fn delete_group(&self, topic: &str, group: &str) -> Result<()>;

    /// Publishes one message to an existing topic; returns its id.
    async fn publish(&self, topic: &str, message: Message) -> Result<String>;

    /// Receives up to `options.max_messages` messages for `group`, leasing them.
    async fn receive(
        &self,
        topic: &str,
        group: &str,
        options: ReceiveOptions,
    ) -> Result<Vec<ReceivedMessage>>;

    /// Acknowledges a delivery: the message is not delivered to this group again.
    ///
    /// Receipts are per delivery: a backend may reject the receipt of an earlier delivery of a
    /// message that has since been delivered again with
    /// [`PreconditionFailed`](crate::ErrorKind::PreconditionFailed) (the embedded backends do),
    /// and a malformed receipt with [`InvalidArgument`](crate::ErrorKind::InvalidArgument).
    async fn ack(&self, topic: &str, group: &str, receipt: &str) -> Result<()>;

    /// Gives a delivery back, to be delivered again after `delay` (zero: at once).
    async fn nack(&self, topic: &str, group: &str, receipt: &str, delay: Duration) -> Result<()>;

    /// Extends a delivery's lease to `extension` from now.
    ///
    /// The default returns [`Unsupported`](crate::ErrorKind::Unsupported).
    async fn extend_deadline(
        &self,
        topic: &str,
        group: &str,
        receipt: &str,
        extension: Duration,
    ) -> Result<()> {
        let _ = (topic, group, receipt, extension);
        Err(Error::unsupported(self.info().backend, "extend_deadline"))
    }

    /// Publishes several messages, in order; returns their ids.
    ///
    /// The default publishes one by one; backends override it with one round trip.
    async fn publish_batch(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<String>> {
        let mut ids = Vec::with_capacity(messages.len());
        for message in messages {
            ids.push(self.publish(topic, message).await?);
        }
        Ok(ids)
    }
}
