//! The portable limits of [`MessageQueue`](crate::MessageQueue) input, called by every queue
//! backend so that they accept and reject the same messages, options and batches.
//!
//! The limits are the intersection of what the embedded queues, Pub/Sub, NATS JetStream
//! (headers: HTTP-style names) and SQS (attribute names `[A-Za-z0-9_.-]`) carry unchanged:
//!
//! - **Attribute names** ([`attribute_name`]): 1 to [`MAX_ATTRIBUTE_NAME_LEN`] bytes of ASCII
//!   letters, digits, `_`, `.` and `-`, starting with a letter; names of one message must
//!   differ in more than case (NATS headers and AMQP bridges compare them case-insensitively);
//!   prefixes that clouds reserve (`goog`, `aws.`, `amazon.`, any case) are refused.
//! - **Attribute values**: at most [`MAX_ATTRIBUTE_VALUE_LEN`] bytes (Pub/Sub's limit), UTF-8
//!   without control characters (header lines cannot carry them).
//! - At most [`MAX_ATTRIBUTES`] attributes (Pub/Sub's limit); body at most the backend's
//!   [`max_message_size`](crate::queue::QueueCapabilities::max_message_size).
//! - **Batches** ([`batch`]): at most [`MAX_BATCH`] messages and [`MAX_BATCH_BYTES`] of bodies
//!   (Pub/Sub's publish request limits); a receive asks for 1 to [`MAX_RECEIVE`] messages.
//! - Ids and ordering keys follow [`document_id`]; leases are more than
//!   zero and at most [`MAX_LEASE`]; delays at most [`MAX_DELAY`].

use super::{document_id, payload_size, resource_name};
use crate::queue::{GroupOptions, Message, QueueCapabilities, ReceiveOptions};
use crate::{Error, Result};
use std::collections::HashSet;
use std::time::Duration;

/// Longest ack deadline or lease extension.
pub const MAX_LEASE: Duration = Duration::from_secs(12 * 3600);
/// Longest publish or nack delay.
pub const MAX_DELAY: Duration = Duration::from_secs(15 * 24 * 3600);
/// Most attributes on one message.
pub const MAX_ATTRIBUTES: usize = 100;
/// Longest attribute name, in bytes.
pub const MAX_ATTRIBUTE_NAME_LEN: usize = 128;
/// Longest attribute value, in bytes.
pub const MAX_ATTRIBUTE_VALUE_LEN: usize = 1024;
/// Most messages in one [`publish_batch`](crate::MessageQueue::publish_batch).
pub const MAX_BATCH: usize = 1000;
/// Most body bytes in one batch of more than one message (a single message may be as large as
/// the backend's `max_message_size`).
pub const MAX_BATCH_BYTES: u64 = 10 * 1024 * 1024;
/// Most messages one [`receive`](crate::MessageQueue::receive) may ask for.
pub const MAX_RECEIVE: usize = 1000;

/// Attribute name prefixes reserved by clouds (compared ignoring case).
const RESERVED_PREFIXES: [&str; 3] = ["goog", "aws.", "amazon."];

/// Checks a topic name.
pub fn topic(backend: &'static str, topic: &str) -> Result<()> {
    resource_name(backend, "topic", topic)
}

/// Checks a topic and a group name.
pub fn topic_group(backend: &'static str, topic: &str, group: &str) -> Result<()> {
    resource_name(backend, "topic", topic)?;
    resource_name(backend, "group", group)
}

/// Checks one attribute name (see the [module docs](self)).
pub fn attribute_name(backend: &'static str, name: &str) -> Result<()> {
    let shown = || name.escape_debug().to_string();
    if name.is_empty() {
        return Err(Error::invalid(backend, "attribute name is empty"));
    }
    if name.len() > MAX_ATTRIBUTE_NAME_LEN {
        return Err(Error::invalid(
            backend,
            format!(
                "attribute name is {} bytes long; the limit is {MAX_ATTRIBUTE_NAME_LEN}",
                name.len()
            ),
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(Error::invalid(
            backend,
            format!("attribute name `{}` must start with a letter", shown()),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(Error::invalid(
            backend,
            format!(
                "attribute name `{}` contains {c:?}; allowed are ASCII letters, digits, `_`, \
                 `.` and `-`",
                shown()
            ),
        ));
    }
    let lower = name.to_ascii_lowercase();
    if let Some(p) = RESERVED_PREFIXES.iter().find(|p| lower.starts_with(*p)) {
        return Err(Error::invalid(
            backend,
            format!(
                "attribute name `{}` uses the reserved prefix `{p}`",
                shown()
            ),
        ));
    }
    Ok(())
}

/// Checks the value of attribute `name`.
pub fn attribute_value(backend: &'static str, name: &str, value: &str) -> Result<()> {
    if value.len() > MAX_ATTRIBUTE_VALUE_LEN {
        return Err(Error::invalid(
            backend,
            format!(
                "value of attribute `{name}` is {} bytes; the limit is {MAX_ATTRIBUTE_VALUE_LEN}",
                value.len()
            ),
        ));
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(Error::invalid(
            backend,
            format!("value of attribute `{name}` contains the control character {c:?}"),
        ));
    }
    Ok(())
}

/// Checks a message against the rules and the backend's capabilities (an optional feature
/// the backend lacks is [`Unsupported`](crate::ErrorKind::Unsupported)).
pub fn message(backend: &'static str, caps: &QueueCapabilities, message: &Message) -> Result<()> {
    payload_size(
        backend,
        "message body",
        message.body.len(),
        caps.max_message_size,
    )?;
    if let Some(id) = &message.id {
        if !caps.deduplication {
            return Err(Error::unsupported(backend, "message ids (de-duplication)"));
        }
        document_id(backend, id)
            .map_err(|e| Error::invalid(backend, format!("message id: {}", e.message())))?;
    }
    if let Some(key) = &message.ordering_key {
        if !caps.ordering_keys {
            return Err(Error::unsupported(backend, "ordering keys"));
        }
        document_id(backend, key)
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
            format!(
                "{} attributes; the limit is {MAX_ATTRIBUTES}",
                message.attributes.len()
            ),
        ));
    }
    let mut seen = HashSet::new();
    for (name, value) in &message.attributes {
        attribute_name(backend, name)?;
        attribute_value(backend, name, value)?;
        if !seen.insert(name.to_ascii_lowercase()) {
            return Err(Error::invalid(
                backend,
                format!("attribute names must differ in more than case (`{name}`)"),
            ));
        }
    }
    Ok(())
}

/// Checks a batch: its size, its total body bytes and every message.
pub fn batch(backend: &'static str, caps: &QueueCapabilities, messages: &[Message]) -> Result<()> {
    if messages.len() > MAX_BATCH {
        return Err(Error::invalid(
            backend,
            format!(
                "a batch of {} messages; the limit is {MAX_BATCH}",
                messages.len()
            ),
        ));
    }
    let mut total = 0u64;
    for (i, m) in messages.iter().enumerate() {
        message(backend, caps, m).map_err(|e| {
            Error::new(
                e.kind(),
                backend,
                format!("message {i} of the batch: {}", e.message()),
            )
        })?;
        total += m.body.len() as u64;
    }
    if messages.len() > 1 && total > MAX_BATCH_BYTES {
        return Err(Error::invalid(
            backend,
            format!("a batch of {total} body bytes; the limit is {MAX_BATCH_BYTES}"),
        ));
    }
    Ok(())
}

/// Checks group options; the dead-letter topic's existence is the backend's to check.
pub fn group_options(
    backend: &'static str,
    caps: &QueueCapabilities,
    topic: &str,
    options: &GroupOptions,
) -> Result<()> {
    lease(backend, "ack deadline", options.ack_deadline)?;
    if (options.max_attempts.is_some() || options.dead_letter_topic.is_some()) && !caps.dead_letter
    {
        return Err(Error::unsupported(backend, "dead-lettering"));
    }
    if options.max_attempts == Some(0) {
        return Err(Error::invalid(backend, "max_attempts must be at least 1"));
    }
    if let Some(dlq) = &options.dead_letter_topic {
        resource_name(backend, "dead-letter topic", dlq)?;
        if dlq == topic {
            return Err(Error::invalid(
                backend,
                "a topic cannot be its own dead-letter topic",
            ));
        }
    }
    Ok(())
}

/// Checks receive options: 1 to [`MAX_RECEIVE`] messages.
pub fn receive(backend: &'static str, options: &ReceiveOptions) -> Result<()> {
    if options.max_messages == 0 || options.max_messages > MAX_RECEIVE {
        return Err(Error::invalid(
            backend,
            format!(
                "max_messages is {}; it must be 1 to {MAX_RECEIVE}",
                options.max_messages
            ),
        ));
    }
    Ok(())
}

/// Checks a lease length (ack deadline or extension): more than zero, at most [`MAX_LEASE`].
pub fn lease(backend: &'static str, what: &str, lease: Duration) -> Result<()> {
    if lease.is_zero() || lease > MAX_LEASE {
        return Err(Error::invalid(
            backend,
            format!("{what} must be more than zero and at most {MAX_LEASE:?}"),
        ));
    }
    Ok(())
}

/// Checks a nack (the backend must claim [`nack`](QueueCapabilities::nack), and
/// [`nack_delay`](QueueCapabilities::nack_delay) for a delay) and its delay against
/// [`MAX_DELAY`].
pub fn nack_delay(backend: &'static str, caps: &QueueCapabilities, delay: Duration) -> Result<()> {
    if !caps.nack {
        return Err(Error::unsupported(backend, "nack"));
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn invalid(r: Result<()>) -> bool {
        r.is_err_and(|e| e.kind() == ErrorKind::InvalidArgument)
    }

    #[test]
    fn attribute_rules() {
        for good in ["vin", "Content-Type", "trace.id", "a_b", "A1"] {
            assert!(attribute_name("t", good).is_ok(), "{good:?}");
        }
        for bad in [
            "", "1a", "_a", "a b", "ünï", "a:b", "googkey", "AWS.x", "amazon.y",
        ] {
            assert!(invalid(attribute_name("t", bad)), "{bad:?}");
        }
        assert!(invalid(attribute_name("t", &"a".repeat(129))));
        assert!(attribute_value("t", "a", "värde ✓").is_ok());
        assert!(invalid(attribute_value("t", "a", "a\nb")));
        assert!(invalid(attribute_value("t", "a", &"v".repeat(1025))));
        let caps = QueueCapabilities::full();
        let twins = Message::new("x")
            .with_attribute("Key", "1")
            .with_attribute("key", "2");
        assert!(invalid(message("t", &caps, &twins)));
        let many: Vec<Message> = (0..=MAX_BATCH).map(|_| Message::new("x")).collect();
        assert!(invalid(batch("t", &caps, &many)));
        assert!(batch("t", &caps, &many[1..]).is_ok());
        let big = vec![Message::new(vec![0u8; 1024 * 1024]); 11];
        assert!(invalid(batch("t", &caps, &big)));
    }
}
