//! The Kafka queue (`kafka://host:port`), through rdkafka (librdkafka).
//!
//! - **Client.** rdkafka rather than rskafka: librdkafka implements the consumer group
//!   protocol (join, sync, heartbeats, rebalance callbacks), which rskafka leaves to the
//!   caller; writing group membership by hand is where Kafka clients
//!   get things wrong. The price is a C build: rdkafka-sys compiles the bundled librdkafka
//!   with `./configure` + `make` (gcc, make, perl: present here; about two minutes once on two
//!   cores). Only the `tokio` feature is enabled: no TLS, SASL or compression, so librdkafka
//!   links no OpenSSL beside the workspace's rustls (aws-lc-rs). The URL therefore takes no
//!   credentials and the connection is plain TCP. rdkafka is held at 0.36 (librdkafka
//!   2.3.0): librdkafka 2.4 to 2.12 (rdkafka 0.37 to 0.39) handle the `CurrentLeader` tags of a
//!   Fetch v12 answer (KIP-951) as a metadata update with a null topic name and crash in
//!   their metadata cache (`strcmp(NULL)`); tansu sends such tags, so the rebalance test
//!   died with SIGSEGV. 2.3.0 fetches with v11, which has no tags.
//! - **Layout.** A topic is a Kafka topic of the same name with `partitions` partitions
//!   (default 3). A group `g` of topic `t` is the Kafka consumer group `t.g` (`.` cannot occur
//!   in portable names, so the pair is unambiguous) and has a retry topic `t.g.retry` (same
//!   partition count as `t`; two dots, so it can be neither a user topic nor a state topic
//!   `t.paas-state`, which has one). A message's ordering key is its Kafka
//!   key (so a key's messages share a partition and keep their order); its id travels in the
//!   header `_id` and its attributes in headers of their own names (attribute names start with
//!   a letter, so they never collide with `_id` or the other `_` headers below).
//!   `create_group` creates the retry topic (before it writes the group's record, so a group
//!   that exists has one; a group from before retry topics gets it when a handle first joins
//!   it); `delete_group` deletes it after the group's tombstone, and `delete_topic` deletes
//!   every `t.*.retry` the broker lists (also one a failed `delete_group` left behind).
//! - **Groups and offsets.** Each topic `t` has a compacted state topic `t.paas-state` (one
//!   partition, created and deleted with `t`). It holds a record per group
//!   (`group/<g>` = `paas1;<ack deadline ms>;<max attempts>;<dead-letter topic>`: a group
//!   exists while its record does, and every handle in any process finds its options there)
//!   and the offsets each group acknowledged beyond its committed prefix
//!   (`acked/<g>/<partition>` = ranges such as `7-9,12`). The state lives in a topic rather
//!   than in the offset commits' metadata string because tansu keeps no commit metadata (it
//!   answers with an empty string). The retry topic's partitions are tracked the same way
//!   (`acked/<g>/retry/<partition>`). `create_group` of a new group commits the current end
//!   offsets of the topic and of the retry topic as the group's position, so it sees only
//!   messages published after its creation, and tombstones any `acked/<g>/…` records of an
//!   earlier group of the same name (their retry offsets would name the new retry topic's
//!   messages); `delete_group` writes a tombstone (and asks the broker to delete the Kafka
//!   group; tansu cannot, which is harmless: a group created again starts at the end).
//! - **Per-message ack over offsets.** A consumer (one per group per handle, joined on its
//!   first `receive`, subscribed to the topic and the retry topic in the one Kafka group `t.g`,
//!   so a rebalance moves partitions of both under the same protocol) reads its partitions
//!   ahead (per log at most [`READ_AHEAD`] messages it has not delivered yet; then it pauses
//!   that log's partitions, so retry copies waiting for their due time never stop the
//!   topic's new messages) into in-process leases
//!   (`queue::emulation::held_messages`, crate-private). An ack settles one offset
//!   (`queue::emulation::offsets`); every [`COMMIT_INTERVAL`] the consumer
//!   writes the changed acknowledged-beyond ranges (up to 150 per partition) to the state
//!   topic and commits the contiguous settled prefix; synchronously when a partition is
//!   revoked or the consumer stops. A new owner of a partition (after a rebalance or a
//!   restart) reads both, so a message acknowledged out of order is not delivered again. An
//!   ack is durable once that commit has happened: a crash within the commit interval
//!   delivers the message again (at-least-once).
//! - **Leases are client-side.** Kafka has no per-message lease, so leases, deadline
//!   extension and the attempt count of a message being held live in the consumer's process:
//!   receipts are valid only on the handle that received them (`portable_receipts = false`),
//!   a receipt of an earlier delivery is refused with `PreconditionFailed` (also the receipt
//!   of a delivery nacked to the retry topic, for the latest 10000 such), a repeated ack
//!   succeeds. A lease that simply runs out (no ack, no nack) redelivers in-process, as
//!   attempt `n + 1` by the same consumer; when the partition moves first (rebalance,
//!   restart) its next owner delivers the message from the committed position as attempt 1.
//! - **Nack through the retry topic.** `nack(delay)` of a message without an ordering key
//!   publishes a copy to the group's retry topic: same body, Kafka key, `_id` and attribute
//!   headers, plus `_due` (unix ms: now + delay), `_attempts` (deliveries so far) and
//!   `_published` (the original's publish time, so `published_at` stays the original's).
//!   Only once the broker has confirmed the copy (`acks=all`) is the original settled (its
//!   offset acknowledged, so the committed prefix moves past it at the next commit); the
//!   lease is held while the copy is written (its deadline moved to at least
//!   `publish_timeout_ms` + 5 s; a revocation waits for it), and ack, nack or extension of
//!   that delivery meanwhile fail with `PreconditionFailed`. A consumer holds a copy it reads until `_due`
//!   (held in its read-ahead, not delivered) and delivers it as attempt `_attempts + 1`,
//!   looking like the original (id, body, attributes, ordering key, `published_at`); it is
//!   acknowledged, nacked again or dead-lettered like any message, by its offset in the retry
//!   topic. So the delay and the attempt count survive a restart or a partition move, and
//!   `max_attempts` counts every nacked delivery across consumers. A nack with zero delay
//!   takes the same path (due at once): it costs a broker write before `nack` returns and a
//!   fetch before the copy comes back (tens of milliseconds), and in return a message nacked
//!   again and again is dead-lettered after `max_attempts` even when its consumers restart or
//!   the group rebalances in between, and it never holds the committed prefix back. Due times
//!   are wall-clock: a consumer whose clock runs behind the nacking one's delivers late,
//!   ahead delivers early. A message **with an ordering key** is nacked in place instead
//!   (its lease given back with the delay, in-process, holding its key and the committed
//!   prefix as before): on the retry topic the key's next message would overtake it. Its
//!   delay and attempt count are lost when its partition moves.
//!   *Failure:* when the copy is not confirmed within `publish_timeout_ms` the nack fails
//!   with `Unavailable` (retryable) and nothing changed for the caller: the delivery is still
//!   leased with its old deadline and its receipt still valid (ack it, nack again, or let the
//!   lease run out). The copy may still have been written; then the message comes back twice
//!   (once as the copy, once by the original's redelivery), at-least-once. A process that
//!   dies between the confirmed copy and the next commit delivers both as well. A retry topic
//!   that is gone (the group was deleted) fails the nack with `NotFound`.
//! - **Rebalances.** When a partition is revoked (a consumer joins or leaves the group), the
//!   revoking consumer stops handing out its messages, waits until the leases it gave out on
//!   it are settled or have run out (at most [`REVOKE_WAIT`]), commits, and only then lets the
//!   group move on: so a message is not leased to two consumers at once within its lease, and
//!   nothing is lost. Acks of that partition after the revocation fail with
//!   `PreconditionFailed` (its new owner delivers the message again).
//! - **Dead-lettering.** A message delivered `max_attempts` times is, at its next turn,
//!   published to the dead-letter topic (same body, attributes, key and id; the attempt count
//!   starts again) and then settled; without a dead-letter topic it is dropped. A nack of
//!   the last allowed delivery (no ordering key) does this at once instead of writing a
//!   retry copy (the copy's next turn would dead-letter it), and fails like a retry copy
//!   when the dead-letter topic does not confirm. The count
//!   includes the deliveries before each nack to the retry topic, so a message nacked
//!   `max_attempts` times is dead-lettered even across restarts; deliveries that ended in an
//!   expired lease, and those of messages with an ordering key, count only while their
//!   partition stays with one consumer.
//! - **What survives a restart or partition move.** Acks (once committed, within
//!   [`COMMIT_INTERVAL`]), nacks to the retry topic with their due time and attempt count,
//!   and the group's options survive; running leases, deadline extensions and the in-process
//!   attempt counts and nack delays of the bullets above do not (the message is delivered
//!   again by its partition's next owner).
//! - **Not supported** (`Unsupported`): message ids for de-duplication (Kafka keeps no id
//!   index; the idempotent producer only removes a producer's own retries) and delayed
//!   publishing (Kafka has no delayed visibility).
//! - **Producer.** `acks=all`, not idempotent, one request in flight per connection (so a
//!   retried batch cannot overtake a later one: ordering keys keep their order). Idempotence
//!   is off because after a delivery timeout librdkafka bumps the producer epoch (KIP-360)
//!   and tansu answers ProducerFenced, which is fatal to the producer: the handle would never
//!   publish again. A retried publish may therefore be written twice (at-least-once).
//! - **Failure behaviour.** librdkafka reconnects by itself (backing off at most 1 s). A publish that cannot be
//!   delivered within `publish_timeout_ms` (default 30000) fails with `Unavailable`; it may
//!   or may not have been written (a nack's retry copy likewise, with the outcome described
//!   under *Nack through the retry topic*). Metadata, admin and commit calls that time out are
//!   `Unavailable`. The handle recovers by itself when the broker comes back.
//!
//! URL parameters: `partitions` (1 to 1000, for topics this handle creates),
//! `session_timeout_ms` (consumer group session, 1000 to 300000, default 10000; a group join
//! takes about half of it on tansu), `publish_timeout_ms` (1000 to 600000).

use super::checks;
use super::emulation::held_messages::{Leased, Leases, Stale};
use super::emulation::offsets::AckedOffsets;
use super::emulation::receipt::Receipts;
use async_trait::async_trait;
use bytes::Bytes;
use cloud_abstraction::queue::{
    GroupOptions, Message, MessageQueue, QueueCapabilities, ReceiveOptions, ReceivedMessage,
};
use cloud_abstraction::{BackendInfo, Error, ErrorKind, Location, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, DefaultConsumerContext, Rebalance,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Message as _, Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, instrument, warn};

const BACKEND: &str = "kafka";
/// The header that carries the message id.
const ID_HEADER: &str = "_id";
/// The header of a retry copy: when it is due (unix ms).
const DUE_HEADER: &str = "_due";
/// The header of a retry copy: how often the message was delivered before it was nacked.
const ATTEMPTS_HEADER: &str = "_attempts";
/// The header of a retry copy: when the original was published (unix ms).
const PUBLISHED_HEADER: &str = "_published";
/// How many nacked-away deliveries a consumer remembers, to refuse their receipts.
const MOVED_REMEMBERED: usize = 10_000;
/// How long a nack holds the lease beyond the publish timeout while its copy is written.
const NACK_MARGIN: Duration = Duration::from_secs(5);
/// The first field of a group record (its format's version).
const STATE_VERSION: &str = "paas1";
/// Most messages a consumer reads ahead of what has been delivered.
pub const READ_AHEAD: usize = 2000;
/// How often a consumer commits its settled prefix (when something changed).
pub const COMMIT_INTERVAL: Duration = Duration::from_millis(100);
/// Longest a revoked partition waits for its running leases.
pub const REVOKE_WAIT: Duration = Duration::from_secs(120);
/// How long one blocking poll of the consumer thread waits.
const POLL_TIMEOUT: Duration = Duration::from_millis(50);
/// Metadata, admin and synchronous commit calls.
const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest message body (Kafka's usual 1 MB limit, as 1 MiB; producer and broker limits are
/// set above it to leave room for headers).
const MAX_MESSAGE: u64 = 1024 * 1024;

/// Settings from the URL.
#[derive(Debug, Clone)]
struct Settings {
    brokers: String,
    partitions: i32,
    session_timeout_ms: u64,
    publish_timeout_ms: u64,
}

impl Settings {
    fn parse(url: &str) -> Result<Self> {
        let bad = |m: &str| Error::invalid(BACKEND, format!("kafka URL: {m}"));
        let u = url::Url::parse(url).map_err(|_| bad("not a URL"))?;
        if u.scheme() != "kafka" {
            return Err(bad("the scheme must be `kafka`"));
        }
        if !u.username().is_empty() || u.password().is_some() {
            return Err(bad(
                "credentials are not supported (plain TCP only: no SASL or TLS is compiled in)",
            ));
        }
        let host = u
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("a host is required"))?;
        let port = u.port().unwrap_or(9092);
        if !matches!(u.path(), "" | "/") {
            return Err(bad("a path is not allowed"));
        }
        let mut s = Self {
            brokers: format!("{host}:{port}"),
            partitions: 3,
            session_timeout_ms: 10_000,
            publish_timeout_ms: 30_000,
        };
        let number = |name: &str, v: &str, lo: u64, hi: u64| -> Result<u64> {
            v.parse::<u64>()
                .ok()
                .filter(|n| (lo..=hi).contains(n))
                .ok_or_else(|| bad(&format!("`{name}` must be a number from {lo} to {hi}")))
        };
        for (k, v) in u.query_pairs() {
            match k.as_ref() {
                "partitions" => {
                    s.partitions = i32::try_from(number("partitions", &v, 1, 1000)?)
                        .map_err(|_| bad("partitions"))?;
                }
                "session_timeout_ms" => {
                    s.session_timeout_ms = number("session_timeout_ms", &v, 1000, 300_000)?;
                }
                "publish_timeout_ms" => {
                    s.publish_timeout_ms = number("publish_timeout_ms", &v, 1000, 600_000)?;
                }
                other => return Err(bad(&format!("unknown parameter `{other}`"))),
            }
        }
        Ok(s)
    }
}

/// A [`MessageQueue`] on a Kafka (or Kafka-compatible) broker. See the [module docs](self).
///
/// Clones share the producer, the admin client and the group consumers.
#[derive(Clone)]
pub struct KafkaQueue {
    inner: Arc<Inner>,
    location: Location,
}

struct Inner {
    settings: Settings,
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    /// A group-less client for metadata and watermarks (never auto-creates topics).
    meta: Arc<BaseConsumer>,
    /// Topics known to exist (forgotten on delete or when the broker says unknown).
    topics: Mutex<HashSet<String>>,
    /// The group consumers of this handle, by (topic, group).
    consumers: tokio::sync::Mutex<HashMap<(String, String), Arc<GroupConsumer>>>,
    receipts: Receipts,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The consumer threads commit, leave their groups and end by themselves.
        if let Ok(consumers) = self.consumers.try_lock() {
            for c in consumers.values() {
                c.shared.stop.store(true, Ordering::SeqCst);
                c.shared.settled.notify_all();
            }
        }
    }
}

impl fmt::Debug for KafkaQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaQueue")
            .field("brokers", &self.inner.settings.brokers)
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

fn unavailable(what: &str, e: impl fmt::Display) -> Error {
    Error::unavailable(BACKEND, format!("{what}: {e}"))
}

/// The portable kind of a Kafka error: a broker or network failure is `Unavailable`
/// (retryable), what the request itself got wrong is not.
fn map_err(what: &str, e: KafkaError) -> Error {
    use RDKafkaErrorCode as C;
    let kind = match e.rdkafka_error_code() {
        Some(C::UnknownTopicOrPartition | C::UnknownTopic | C::UnknownPartition) => {
            ErrorKind::NotFound
        }
        Some(C::MessageSizeTooLarge | C::InvalidMessageSize | C::InvalidRecord) => {
            ErrorKind::InvalidArgument
        }
        Some(C::QueueFull) => ErrorKind::ResourceExhausted,
        Some(C::InvalidConfig | C::InvalidArgument | C::UnsupportedFeature) => ErrorKind::Internal,
        _ => ErrorKind::Unavailable,
    };
    Error::new(kind, BACKEND, format!("{what}: {e}")).with_source(e)
}

fn topic_not_found(topic: &str) -> Error {
    Error::not_found(BACKEND, format!("topic `{topic}` not found"))
}

fn group_not_found(topic: &str, group: &str) -> Error {
    Error::not_found(
        BACKEND,
        format!("group `{group}` of topic `{topic}` not found"),
    )
}

fn stale(what: &str) -> Error {
    Error::new(ErrorKind::PreconditionFailed, BACKEND, what.to_string())
}

fn nack_in_progress() -> Error {
    stale("a nack of this delivery is writing its retry copy; its outcome decides")
}

/// The Kafka consumer group of `group` on `topic`.
fn kafka_group(topic: &str, group: &str) -> String {
    format!("{topic}.{group}")
}

/// The settings every client of this backend shares.
fn client_config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        // Back at work within a second of the broker's return (the default backs off to 10 s).
        .set("reconnect.backoff.max.ms", "1000")
        .set("log_level", "3");
    config
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(BACKEND, format!("blocking task failed: {e}")))?
}

/// The record of a group in its topic's state topic: its options.
fn encode_options(options: &GroupOptions) -> String {
    format!(
        "{STATE_VERSION};{};{};{}",
        options.ack_deadline.as_millis(),
        options
            .max_attempts
            .map(|n| n.to_string())
            .unwrap_or_default(),
        options.dead_letter_topic.as_deref().unwrap_or_default(),
    )
}

/// The options in a group record written by [`encode_options`].
fn decode_options(record: &str) -> Option<GroupOptions> {
    let mut parts = record.splitn(4, ';');
    if parts.next()? != STATE_VERSION {
        return None;
    }
    let deadline: u64 = parts.next()?.parse().ok()?;
    let max_attempts = match parts.next()? {
        "" => None,
        n => Some(n.parse().ok()?),
    };
    let dead_letter_topic = match parts.next()? {
        "" => None,
        t => Some(t.to_string()),
    };
    Some(GroupOptions {
        ack_deadline: Duration::from_millis(deadline),
        max_attempts,
        dead_letter_topic,
    })
}

/// The state topic of `topic` (`.` cannot occur in portable names: no user topic has it).
fn state_topic(topic: &str) -> String {
    format!("{topic}.paas-state")
}

/// The retry topic of `group` on `topic`: two dots, so it is neither a user topic nor a state
/// topic (one dot), and `topic`/`group` (without dots) are unambiguous in it.
fn retry_topic(topic: &str, group: &str) -> String {
    format!("{topic}.{group}.retry")
}

/// Whether `name` is the retry topic of some group of `topic`.
fn is_retry_topic_of(name: &str, topic: &str) -> bool {
    name.strip_prefix(topic)
        .and_then(|rest| rest.strip_prefix('.'))
        .and_then(|rest| rest.strip_suffix(".retry"))
        .is_some_and(|group| !group.is_empty() && !group.contains('.'))
}

/// The key of a group's record in the state topic.
fn group_key(group: &str) -> String {
    format!("group/{group}")
}

/// The key of the offsets a group acknowledged beyond its committed prefix on a partition
/// of its topic (`acked/<g>/<p>`) or of its retry topic (`acked/<g>/retry/<p>`).
fn acked_key(group: &str, (log, partition): Part) -> String {
    match log {
        Log::Main => format!("acked/{group}/{partition}"),
        Log::Retry => format!("acked/{group}/retry/{partition}"),
    }
}

/// Reads the state topic of `topic` to its end: the latest value of every key (a tombstone
/// removes it). A topic without a state topic has no groups. Blocking.
fn read_state(brokers: &str, topic: &str) -> Result<HashMap<String, String>> {
    let state = state_topic(topic);
    let reader: BaseConsumer = client_config(brokers)
        .set("group.id", format!("{state}.reader"))
        .set("enable.auto.commit", "false")
        .set("allow.auto.create.topics", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .map_err(|e| map_err("creating a state reader", e))?;
    let (low, high) = match reader.fetch_watermarks(&state, 0, OP_TIMEOUT) {
        Ok(w) => w,
        Err(e) if map_err("", e.clone()).kind() == ErrorKind::NotFound => {
            return Ok(HashMap::new());
        }
        Err(e) => return Err(map_err("reading the state topic", e)),
    };
    let mut out = HashMap::new();
    if high <= low {
        return Ok(out);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&state, 0, Offset::Offset(low))
        .map_err(|e| map_err("reading the state topic", e))?;
    reader
        .assign(&tpl)
        .map_err(|e| map_err("reading the state topic", e))?;
    let give_up = std::time::Instant::now() + OP_TIMEOUT;
    loop {
        if std::time::Instant::now() >= give_up {
            return Err(unavailable("reading the state topic", "timed out"));
        }
        match reader.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                if let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) {
                    match m.payload() {
                        Some(v) if !v.is_empty() => {
                            out.insert(key.to_string(), String::from_utf8_lossy(v).into_owned());
                        }
                        _ => {
                            out.remove(key);
                        }
                    }
                }
                if m.offset() >= high - 1 {
                    return Ok(out);
                }
            }
            Some(Err(e)) => return Err(map_err("reading the state topic", e)),
            None => {}
        }
    }
}

/// Enqueues a record of the state topic of `topic` (`None`: a tombstone).
fn send_state(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    value: Option<&str>,
) -> Result<rdkafka::producer::DeliveryFuture> {
    let state = state_topic(topic);
    let mut record = FutureRecord::<str, str>::to(&state).key(key);
    if let Some(v) = value {
        record = record.payload(v);
    }
    producer
        .send_result(record)
        .map_err(|(e, _)| map_err("writing the state topic", e))
}

/// Waits for a state record to be written.
async fn state_written(future: rdkafka::producer::DeliveryFuture) -> Result<()> {
    match future.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(map_err("writing the state topic", e)),
        Err(_) => Err(unavailable(
            "writing the state topic",
            "the producer was closed",
        )),
    }
}

/// A message as read from the log.
#[derive(Debug)]
struct Stored {
    id: String,
    body: Bytes,
    attributes: BTreeMap<String, String>,
    ordering_key: Option<String>,
    published_at: SystemTime,
}

/// What the headers of a retry copy say (nothing for a message of the topic itself).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct RetryHeaders {
    /// Not deliverable before this (unix ms).
    due_ms: Option<u64>,
    /// Deliveries before the nack that made the copy.
    attempts: u32,
}

impl Stored {
    fn from_kafka(m: &BorrowedMessage<'_>) -> (Self, RetryHeaders) {
        let mut id = None;
        let mut attributes = BTreeMap::new();
        let mut retry = RetryHeaders::default();
        let mut published_ms = None;
        if let Some(headers) = m.headers() {
            for h in headers.iter() {
                let value = String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned();
                match h.key {
                    ID_HEADER => id = Some(value),
                    // Malformed values (another producer) count as absent: due now, no
                    // earlier attempts, published when written.
                    DUE_HEADER => retry.due_ms = value.parse().ok(),
                    ATTEMPTS_HEADER => retry.attempts = value.parse().unwrap_or(0),
                    PUBLISHED_HEADER => published_ms = value.parse::<u64>().ok(),
                    k if !k.starts_with('_') => {
                        attributes.insert(k.to_string(), value);
                    }
                    _ => {}
                }
            }
        }
        // A retry copy carries the original's publish time; the log's timestamp is the copy's.
        let published_at = published_ms
            .or_else(|| {
                m.timestamp()
                    .to_millis()
                    .and_then(|ms| u64::try_from(ms).ok())
            })
            .map_or_else(SystemTime::now, |ms| UNIX_EPOCH + Duration::from_millis(ms));
        let stored = Self {
            // A message from another producer has no id header: its position is its id.
            id: id.unwrap_or_else(|| format!("{}-{}", m.partition(), m.offset())),
            body: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
            attributes,
            ordering_key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            published_at,
        };
        (stored, retry)
    }
}

/// Which log of a group a held message was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Log {
    /// The group's retry topic. Ordered first: a due retry was published before the topic's
    /// messages read with it, so it goes out first.
    Retry,
    /// The topic itself.
    Main,
}

impl Log {
    /// Its letter in a receipt.
    fn tag(self) -> char {
        match self {
            Self::Retry => 'r',
            Self::Main => 'm',
        }
    }

    fn from_tag(tag: &str) -> Option<Self> {
        match tag {
            "r" => Some(Self::Retry),
            "m" => Some(Self::Main),
            _ => None,
        }
    }
}

/// A partition of one of a group's logs.
type Part = (Log, i32);

/// Where a held message is: log, partition, offset.
type Position = (Log, i32, i64);

fn part_of(&(log, partition, _): &Position) -> Part {
    (log, partition)
}

/// The receipts of the deliveries this consumer settled by nacking them to the retry topic
/// (the latest [`MOVED_REMEMBERED`]), so that a later ack with one is refused rather than
/// taken for a repeated ack.
#[derive(Debug, Default)]
struct Moved {
    set: HashSet<Position>,
    order: VecDeque<Position>,
}

impl Moved {
    fn insert(&mut self, key: Position) {
        if self.set.insert(key) {
            self.order.push_back(key);
            if self.order.len() > MOVED_REMEMBERED {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }

    fn contains(&self, key: &Position) -> bool {
        self.set.contains(key)
    }
}

/// One assigned partition of a group consumer.
#[derive(Debug)]
struct PartitionState {
    acked: AckedOffsets,
    /// Being revoked: its messages are not handed out any more.
    revoking: bool,
}

#[derive(Debug)]
struct GroupState {
    options: GroupOptions,
    partitions: HashMap<Part, PartitionState>,
    leases: Leases<Position, Arc<Stored>>,
    /// Something to commit (settled offsets or options).
    dirty: bool,
    /// The logs whose partitions are paused (their read-ahead is full).
    paused: HashSet<Log>,
    /// The acknowledged-beyond ranges last written to the state topic, per partition.
    written: HashMap<Part, String>,
    /// Deliveries whose nack is writing its retry copy now.
    nacking: HashSet<Position>,
    /// Deliveries settled by a nack to the retry topic.
    moved: Moved,
}

impl GroupState {
    /// Settles the offset of `key` (after its lease was settled).
    fn settle_offset(&mut self, key: &Position) {
        if let Some(ps) = self.partitions.get_mut(&part_of(key)) {
            if ps.acked.ack(key.2) {
                self.dirty = true;
            }
        }
    }
}

/// What the consumer thread, the rebalance callbacks and the async calls share.
struct GroupShared {
    topic: String,
    group: String,
    /// The group's retry topic.
    retry: String,
    brokers: String,
    /// Writes the acknowledged-beyond records to the state topic.
    producer: FutureProducer,
    /// The consumer, for the rebalance callbacks (weak: the consumer owns its context, which
    /// owns this).
    consumer: std::sync::OnceLock<std::sync::Weak<BaseConsumer<GroupContext>>>,
    state: Mutex<GroupState>,
    /// Signalled when a lease is settled or given back (a revocation waits on it).
    settled: Condvar,
    /// Woken when something may have become receivable.
    changed: Notify,
    stop: AtomicBool,
}

impl GroupShared {
    /// The Kafka topic of `log`.
    fn topic_of(&self, log: Log) -> &str {
        match log {
            Log::Main => &self.topic,
            Log::Retry => &self.retry,
        }
    }

    /// The log a Kafka topic of this group is (`None` for anything else).
    fn log_of(&self, topic: &str) -> Option<Log> {
        if topic == self.topic {
            Some(Log::Main)
        } else if topic == self.retry {
            Some(Log::Retry)
        } else {
            None
        }
    }

    /// The partitions of this group's logs in `tpl`.
    fn parts(&self, tpl: &TopicPartitionList) -> Vec<Part> {
        tpl.elements()
            .iter()
            .filter_map(|e| self.log_of(e.topic()).map(|log| (log, e.partition())))
            .collect()
    }

    /// The consumer, while it lives (not while it is being closed).
    fn consumer(&self) -> Option<Arc<BaseConsumer<GroupContext>>> {
        self.consumer.get().and_then(std::sync::Weak::upgrade)
    }

    fn lock(&self) -> MutexGuard<'_, GroupState> {
        // A poisoned lock means a panic mid-update elsewhere; the state is still consistent
        // enough to go on (each update is a few assignments), and panicking here would take
        // the consumer thread down with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The commit of every assigned partition (or only `only`), if there is something to
    /// commit (or `force`), and the acknowledged-beyond ranges that changed since written.
    fn commit_list(
        &self,
        only: Option<&[Part]>,
        force: bool,
    ) -> Option<(TopicPartitionList, Vec<(Part, String)>)> {
        let mut st = self.lock();
        if !st.dirty && !force {
            return None;
        }
        st.dirty = false;
        let st = &mut *st;
        let mut tpl = TopicPartitionList::new();
        let mut records = Vec::new();
        for (&p, ps) in &st.partitions {
            if only.is_some_and(|o| !o.contains(&p)) || (only.is_none() && ps.revoking) {
                continue;
            }
            if tpl
                .add_partition_offset(
                    self.topic_of(p.0),
                    p.1,
                    Offset::Offset(ps.acked.commit_offset()),
                )
                .is_err()
            {
                continue;
            }
            let ranges = ps.acked.encode();
            if st
                .written
                .get(&p)
                .map_or(!ranges.is_empty(), |w| *w != ranges)
            {
                st.written.insert(p, ranges.clone());
                records.push((p, ranges));
            }
        }
        (tpl.count() > 0).then_some((tpl, records))
    }

    /// Writes what changed to the state topic (waiting for it when `mode` is `Sync`), then
    /// commits the settled prefixes.
    fn commit(
        &self,
        consumer: &BaseConsumer<GroupContext>,
        only: Option<&[Part]>,
        mode: CommitMode,
    ) {
        let Some((tpl, records)) = self.commit_list(only, only.is_some()) else {
            return;
        };
        let mut writes = Vec::new();
        for (p, ranges) in records {
            let value = (!ranges.is_empty()).then_some(ranges.as_str());
            match send_state(
                &self.producer,
                &self.topic,
                &acked_key(&self.group, p),
                value,
            ) {
                Ok(w) => writes.push(w),
                Err(e) => {
                    debug!(topic = %self.topic, error = %e, "writing acknowledged offsets failed");
                    self.lock().written.remove(&p);
                }
            }
        }
        if matches!(mode, CommitMode::Sync) {
            for w in writes {
                let _ = futures::executor::block_on(w);
            }
        }
        if let Err(e) = consumer.commit(&tpl, mode) {
            debug!(topic = %self.topic, error = %e, "commit failed; retried");
            self.lock().dirty = true;
        }
    }

    /// Takes a newly read message into the leases: one of the topic deliverable now, a retry
    /// copy at its due time with its earlier attempts counted.
    fn add(&self, m: &BorrowedMessage<'_>) {
        let Some(log) = self.log_of(m.topic()) else {
            return;
        };
        let (p, o) = (m.partition(), m.offset());
        let mut st = self.lock();
        let st = &mut *st;
        let ps = st
            .partitions
            .entry((log, p))
            .or_insert_with(|| PartitionState {
                acked: AckedOffsets::new(o),
                revoking: false,
            });
        if ps.revoking {
            return;
        }
        let before = ps.acked.commit_offset();
        ps.acked.fetched(o);
        if ps.acked.commit_offset() != before {
            st.dirty = true;
        }
        if ps.acked.is_acked(o) {
            // Acknowledged beyond the prefix before a restart or rebalance.
            return;
        }
        let (stored, retry) = Stored::from_kafka(m);
        let key = stored.ordering_key.clone();
        let now = Instant::now();
        // The due time crosses processes as wall-clock time; here it becomes an instant again.
        let visible_at = retry
            .due_ms
            .map(|due| UNIX_EPOCH + Duration::from_millis(due))
            .and_then(|due| due.duration_since(SystemTime::now()).ok())
            .map_or(now, |wait| now + wait);
        st.leases.insert_retried(
            (log, p, o),
            Arc::new(stored),
            key,
            visible_at,
            retry.attempts,
        );
        self.changed.notify_waiters();
    }

    /// Before partitions are taken away: hand out nothing more from them, wait for their
    /// running leases, commit them, forget them.
    fn revoke(&self, consumer: &BaseConsumer<GroupContext>, tpl: &TopicPartitionList) {
        let parts = self.parts(tpl);
        let give_up = Instant::now() + REVOKE_WAIT;
        {
            let mut st = self.lock();
            for p in &parts {
                if let Some(ps) = st.partitions.get_mut(p) {
                    ps.revoking = true;
                }
            }
            loop {
                let now = Instant::now();
                if self.stop.load(Ordering::SeqCst) || now >= give_up {
                    break;
                }
                let Some(until) = st
                    .leases
                    .running_until(now, |k| parts.contains(&part_of(k)))
                else {
                    break;
                };
                let wait = until.min(give_up) - now;
                st = self
                    .settled
                    .wait_timeout(st, wait)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
        }
        self.commit(consumer, Some(&parts), CommitMode::Sync);
        let mut st = self.lock();
        st.leases.drop_where(|k| parts.contains(&part_of(k)));
        st.partitions.retain(|p, _| !parts.contains(p));
        debug!(topic = %self.topic, partitions = ?parts, "partitions revoked");
    }

    /// After partitions were assigned: restore what was acknowledged beyond their committed
    /// offsets (and the group's options) from the state topic.
    fn assign(&self, consumer: &BaseConsumer<GroupContext>, tpl: &TopicPartitionList) {
        let committed = consumer.committed_offsets(tpl.clone(), OP_TIMEOUT);
        let state = read_state(&self.brokers, &self.topic).unwrap_or_else(|e| {
            warn!(topic = %self.topic, error = %e, "reading the state topic failed after an assignment");
            HashMap::new()
        });
        let mut st = self.lock();
        st.paused.clear();
        if let Some(options) = state
            .get(&group_key(&self.group))
            .and_then(|r| decode_options(r))
        {
            st.options = options;
        }
        let Ok(committed) = committed else {
            // Started lazily from the first offset read: acknowledged-beyond state is lost,
            // which redelivers, never loses.
            warn!(topic = %self.topic, "reading committed offsets failed after an assignment");
            return;
        };
        for e in committed.elements() {
            let (Some(log), Offset::Offset(start)) = (self.log_of(e.topic()), e.offset()) else {
                continue;
            };
            let part = (log, e.partition());
            let ranges = state.get(&acked_key(&self.group, part));
            let acked = ranges
                .and_then(|r| AckedOffsets::decode(start, r))
                .unwrap_or_else(|| AckedOffsets::new(start));
            if let Some(r) = ranges {
                st.written.insert(part, r.clone());
            }
            st.partitions.insert(
                part,
                PartitionState {
                    acked,
                    revoking: false,
                },
            );
        }
        debug!(topic = %self.topic, partitions = committed.count(), "partitions assigned");
    }
}

/// Marks a delivery as being nacked until dropped.
struct Nacking<'a> {
    shared: &'a GroupShared,
    key: Position,
}

impl Drop for Nacking<'_> {
    fn drop(&mut self) {
        self.shared.lock().nacking.remove(&self.key);
    }
}

/// The librdkafka context of a group consumer: routes rebalances to [`GroupShared`].
struct GroupContext {
    shared: Arc<GroupShared>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, rebalance: &Rebalance<'_>) {
        if let (Rebalance::Revoke(tpl), Some(consumer)) = (rebalance, self.shared.consumer()) {
            self.shared.revoke(&consumer, tpl);
        }
    }

    fn post_rebalance(&self, rebalance: &Rebalance<'_>) {
        if let (Rebalance::Assign(tpl), Some(consumer)) = (rebalance, self.shared.consumer()) {
            self.shared.assign(&consumer, tpl);
        }
        self.shared.changed.notify_waiters();
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        _offsets: &TopicPartitionList,
    ) {
        if let Err(e) = result {
            debug!(topic = %self.shared.topic, error = %e, "async commit failed; retried");
            self.shared.lock().dirty = true;
        }
    }
}

/// One member of a Kafka consumer group, with its own thread polling the consumer.
struct GroupConsumer {
    shared: Arc<GroupShared>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// The options of `group` on `topic` from the state topic (`NotFound` without a record).
/// Blocking.
fn group_options(brokers: &str, topic: &str, group: &str) -> Result<GroupOptions> {
    read_state(brokers, topic)?
        .get(&group_key(group))
        .and_then(|r| decode_options(r))
        .ok_or_else(|| group_not_found(topic, group))
}

impl GroupConsumer {
    /// Joins the group of `topic`/`group` (which exists, with `options`), subscribed to the
    /// topic and the group's retry topic.
    fn start(
        settings: &Settings,
        producer: FutureProducer,
        topic: &str,
        group: &str,
        options: GroupOptions,
    ) -> Result<Self> {
        let retry = retry_topic(topic, group);
        let shared = Arc::new(GroupShared {
            topic: topic.to_string(),
            group: group.to_string(),
            retry: retry.clone(),
            brokers: settings.brokers.clone(),
            producer,
            consumer: std::sync::OnceLock::new(),
            state: Mutex::new(GroupState {
                options,
                partitions: HashMap::new(),
                leases: Leases::new(),
                dirty: false,
                paused: HashSet::new(),
                written: HashMap::new(),
                nacking: HashSet::new(),
                moved: Moved::default(),
            }),
            settled: Condvar::new(),
            changed: Notify::new(),
            stop: AtomicBool::new(false),
        });
        let session = settings.session_timeout_ms;
        let consumer: BaseConsumer<GroupContext> = client_config(&settings.brokers)
            .set("group.id", kafka_group(topic, group))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("allow.auto.create.topics", "false")
            .set("session.timeout.ms", session.to_string())
            .set("heartbeat.interval.ms", (session / 3).max(100).to_string())
            .set("fetch.wait.max.ms", "100")
            .create_with_context(GroupContext {
                shared: Arc::clone(&shared),
            })
            .map_err(|e| map_err("creating a consumer", e))?;
        let consumer = Arc::new(consumer);
        let _ = shared.consumer.set(Arc::downgrade(&consumer));
        // One consumer, one Kafka group for both: a rebalance moves a partition of the topic
        // and of the retry topic alike, under the same revocation protocol.
        consumer
            .subscribe(&[topic, retry.as_str()])
            .map_err(|e| map_err("joining the group", e))?;
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("kafka-{topic}"))
                .spawn(move || poll_loop(&consumer, &shared))
                .map_err(|e| Error::internal(BACKEND, format!("consumer thread: {e}")))?
        };
        Ok(Self {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Stops the consumer: commits, leaves the group, ends the thread.
    async fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.settled.notify_all();
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// The consumer thread: reads messages into the leases, pauses when far ahead, commits.
fn poll_loop(consumer: &BaseConsumer<GroupContext>, shared: &GroupShared) {
    let mut last_commit = std::time::Instant::now();
    while !shared.stop.load(Ordering::SeqCst) {
        {
            // Each log has its own read-ahead: retry copies waiting for their due time must
            // not stop the topic's new messages, nor the reverse.
            let mut st = shared.lock();
            let (main, retry) = st.leases.undelivered(|k| k.0 == Log::Main);
            for (log, held) in [(Log::Main, main), (Log::Retry, retry)] {
                let full = held >= READ_AHEAD;
                if full == st.paused.contains(&log) {
                    continue;
                }
                let Ok(assignment) = consumer.assignment() else {
                    continue;
                };
                let mut tpl = TopicPartitionList::new();
                let name = shared.topic_of(log);
                for e in assignment.elements_for_topic(name) {
                    tpl.add_partition(name, e.partition());
                }
                let r = if full {
                    consumer.pause(&tpl)
                } else {
                    consumer.resume(&tpl)
                };
                if r.is_ok() {
                    if full {
                        st.paused.insert(log);
                    } else {
                        st.paused.remove(&log);
                    }
                }
            }
        }
        match consumer.poll(POLL_TIMEOUT) {
            Some(Ok(m)) => shared.add(&m),
            Some(Err(e)) => debug!(topic = %shared.topic, error = %e, "consumer error"),
            None => {}
        }
        if last_commit.elapsed() >= COMMIT_INTERVAL {
            shared.commit(consumer, None, CommitMode::Async);
            last_commit = std::time::Instant::now();
        }
    }
    shared.commit(consumer, None, CommitMode::Sync);
    consumer.unsubscribe();
    // Serve the revocation of the unsubscribe (its wait ends at once: `stop` is set).
    let _ = consumer.poll(Duration::from_millis(100));
}

impl KafkaQueue {
    /// Connects to the broker at `url` (`kafka://host:port[?partitions=N&session_timeout_ms=MS&publish_timeout_ms=MS]`):
    /// fails with `InvalidArgument` on a bad URL and `Unavailable` when the broker does not
    /// answer.
    pub async fn connect(url: &str) -> Result<Self> {
        let settings = Settings::parse(url)?;
        let producer: FutureProducer = client_config(&settings.brokers)
            .set(
                "message.timeout.ms",
                settings.publish_timeout_ms.to_string(),
            )
            .set("acks", "all")
            // Not idempotent: after a delivery timeout librdkafka bumps the producer epoch
            // (KIP-360), which tansu answers with ProducerFenced, a fatal error that would
            // leave the handle unable to publish. One request in flight per connection keeps
            // a key's messages in order across retries instead.
            .set("enable.idempotence", "false")
            .set("max.in.flight.requests.per.connection", "1")
            .set("allow.auto.create.topics", "false")
            .set("linger.ms", "2")
            .set("message.max.bytes", (2 * MAX_MESSAGE + 65_536).to_string())
            .create()
            .map_err(|e| map_err("creating the producer", e))?;
        let admin: AdminClient<DefaultClientContext> = client_config(&settings.brokers)
            .create()
            .map_err(|e| map_err("creating the admin client", e))?;
        let meta: BaseConsumer<DefaultConsumerContext> = client_config(&settings.brokers)
            .set("allow.auto.create.topics", "false")
            .create()
            .map_err(|e| map_err("creating the metadata client", e))?;
        let meta = Arc::new(meta);
        {
            let meta = Arc::clone(&meta);
            blocking(move || {
                meta.fetch_metadata(None, OP_TIMEOUT)
                    .map(|_| ())
                    .map_err(|e| map_err("connecting", e))
            })
            .await?;
        }
        Ok(Self {
            inner: Arc::new(Inner {
                settings,
                producer,
                admin,
                meta,
                topics: Mutex::new(HashSet::new()),
                consumers: tokio::sync::Mutex::new(HashMap::new()),
                receipts: Receipts::per_handle(BACKEND),
            }),
            location: Location::unknown(),
        })
    }

    /// The same queue, reporting `location` in its [`BackendInfo`].
    pub fn with_location(mut self, location: Location) -> Self {
        self.location = location;
        self
    }

    fn known(&self) -> MutexGuard<'_, HashSet<String>> {
        self.inner.topics.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The partitions of `topic`, asked of the broker (`NotFound` when it has none).
    async fn partitions(&self, topic: &str) -> Result<Vec<i32>> {
        let meta = Arc::clone(&self.inner.meta);
        let name = topic.to_string();
        let found = blocking(move || {
            let md = meta
                .fetch_metadata(Some(&name), OP_TIMEOUT)
                .map_err(|e| map_err("reading topic metadata", e))?;
            Ok(md
                .topics()
                .iter()
                .find(|t| t.name() == name && t.error().is_none())
                .map(|t| t.partitions().iter().map(|p| p.id()).collect::<Vec<_>>())
                .filter(|p| !p.is_empty()))
        })
        .await?;
        match found {
            Some(p) => {
                self.known().insert(topic.to_string());
                Ok(p)
            }
            None => {
                self.known().remove(topic);
                Err(topic_not_found(topic))
            }
        }
    }

    /// Creates a Kafka topic; one that exists already is fine.
    async fn create_kafka_topic(&self, name: &str, partitions: i32, compact: bool) -> Result<()> {
        let mut new = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        if compact {
            // Only the latest record per key matters.
            new = new.set("cleanup.policy", "compact");
        }
        let opts = AdminOptions::new().operation_timeout(Some(OP_TIMEOUT));
        let results = self
            .inner
            .admin
            .create_topics(&[new], &opts)
            .await
            .map_err(|e| map_err("creating a topic", e))?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => {
                    return Err(map_err("creating a topic", KafkaError::AdminOp(code)));
                }
            }
        }
        Ok(())
    }

    /// Waits until a topic just created is in the metadata (at most [`OP_TIMEOUT`]); returns
    /// its partitions.
    async fn visible(&self, topic: &str) -> Result<Vec<i32>> {
        let start = Instant::now();
        loop {
            match self.partitions(topic).await {
                Ok(p) => return Ok(p),
                Err(e) if e.kind() == ErrorKind::NotFound && start.elapsed() < OP_TIMEOUT => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Creates the retry topic of a group (same partition count as its topic) and waits
    /// until it is visible; one that exists already is fine.
    async fn create_retry_topic(&self, retry: &str, partitions: usize) -> Result<Vec<i32>> {
        let count = i32::try_from(partitions)
            .map_err(|_| Error::internal(BACKEND, "too many partitions"))?;
        self.create_kafka_topic(retry, count, false).await?;
        self.visible(retry).await
    }

    /// Deletes Kafka topics; ones that do not exist are fine.
    async fn delete_kafka_topics(&self, names: &[&str]) -> Result<()> {
        let opts = AdminOptions::new().operation_timeout(Some(OP_TIMEOUT));
        let results = self
            .inner
            .admin
            .delete_topics(names, &opts)
            .await
            .map_err(|e| map_err("deleting a topic", e))?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((_, code)) => {
                    return Err(map_err("deleting a topic", KafkaError::AdminOp(code)));
                }
            }
        }
        for name in names {
            self.known().remove(*name);
        }
        Ok(())
    }

    /// `NotFound` unless `topic` exists (cached once seen).
    async fn ensure_topic(&self, topic: &str) -> Result<()> {
        if self.known().contains(topic) {
            return Ok(());
        }
        self.partitions(topic).await.map(|_| ())
    }

    /// This handle's consumer of the group, joining it if needed.
    async fn consumer(&self, topic: &str, group: &str) -> Result<Arc<GroupConsumer>> {
        let key = (topic.to_string(), group.to_string());
        let mut consumers = self.inner.consumers.lock().await;
        if let Some(c) = consumers.get(&key) {
            return Ok(Arc::clone(c));
        }
        let partitions = self.partitions(topic).await?;
        let settings = self.inner.settings.clone();
        let (t, g) = key.clone();
        let options = blocking(move || group_options(&settings.brokers, &t, &g)).await?;
        // A group created before retry topics existed gets its retry topic now (a nack needs
        // it, and the subscription should find it at once).
        let retry = retry_topic(topic, group);
        if !self.known().contains(&retry) {
            match self.partitions(&retry).await {
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    self.create_retry_topic(&retry, partitions.len()).await?;
                }
                r => {
                    r?;
                }
            }
        }
        let settings = self.inner.settings.clone();
        let producer = self.inner.producer.clone();
        let (t, g) = key.clone();
        let c = Arc::new(
            blocking(move || GroupConsumer::start(&settings, producer, &t, &g, options)).await?,
        );
        consumers.insert(key, Arc::clone(&c));
        Ok(c)
    }

    /// This handle's consumer of the group, if it has one.
    async fn existing_consumer(&self, topic: &str, group: &str) -> Option<Arc<GroupConsumer>> {
        self.inner
            .consumers
            .lock()
            .await
            .get(&(topic.to_string(), group.to_string()))
            .cloned()
    }

    /// The receipt of delivery `token` of the message at `key`.
    fn make_receipt(&self, (log, p, o): Position, token: u64) -> String {
        self.inner
            .receipts
            .make(&format!("{}.{p}.{o}.{token}", log.tag()))
    }

    /// The position and lease token inside a receipt.
    fn open_receipt(&self, receipt: &str) -> Result<(Position, u64)> {
        let inner = self.inner.receipts.open(receipt)?;
        let mut parts = inner.splitn(4, '.');
        let parsed = (|| {
            let log = Log::from_tag(parts.next()?)?;
            let p = parts.next()?.parse().ok()?;
            let o = parts.next()?.parse().ok()?;
            let t = parts.next()?.parse().ok()?;
            Some(((log, p, o), t))
        })();
        parsed.ok_or_else(|| Error::invalid(BACKEND, "malformed receipt"))
    }

    /// Enqueues `messages` in order, each with the headers `extra` beside its id and
    /// attributes, and waits for all of them; returns their ids.
    async fn produce(
        &self,
        topic: &str,
        messages: Vec<(String, Message)>,
        extra: &[(&str, String)],
    ) -> Result<Vec<String>> {
        let mut pending = Vec::with_capacity(messages.len());
        let mut ids = Vec::with_capacity(messages.len());
        for (id, m) in &messages {
            let mut headers = OwnedHeaders::new_with_capacity(m.attributes.len() + 1 + extra.len())
                .insert(Header {
                    key: ID_HEADER,
                    value: Some(id.as_bytes()),
                });
            for (k, v) in extra {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_bytes()),
                });
            }
            for (k, v) in &m.attributes {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_bytes()),
                });
            }
            let mut record = FutureRecord::<str, [u8]>::to(topic)
                .payload(&m.body[..])
                .headers(headers);
            if let Some(key) = &m.ordering_key {
                record = record.key(key.as_str());
            }
            let future = self
                .inner
                .producer
                .send_result(record)
                .map_err(|(e, _)| map_err("publishing", e))?;
            pending.push(future);
            ids.push(id.clone());
        }
        for result in futures::future::join_all(pending).await {
            match result {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => {
                    let err = map_err("publishing", e);
                    if err.kind() == ErrorKind::NotFound {
                        self.known().remove(topic);
                        return Err(topic_not_found(topic));
                    }
                    return Err(err);
                }
                Err(_) => return Err(unavailable("publishing", "the producer was closed")),
            }
        }
        Ok(ids)
    }

    /// Moves an exhausted message to the group's dead-letter topic (or drops it), then
    /// settles it. On a publish failure it stays leased and is tried again when its lease runs
    /// out.
    async fn dead_letter(
        &self,
        c: &GroupConsumer,
        options: &GroupOptions,
        d: Leased<Position, Arc<Stored>>,
    ) {
        if let Some(dlq) = &options.dead_letter_topic {
            let m = Message {
                body: d.message.body.clone(),
                attributes: d.message.attributes.clone(),
                id: None,
                ordering_key: d.message.ordering_key.clone(),
                delay: None,
            };
            if let Err(e) = self
                .produce(dlq, vec![(d.message.id.clone(), m)], &[])
                .await
            {
                warn!(topic = %c.shared.topic, dead_letter_topic = %dlq, error = %e, "dead-lettering failed; tried again later");
                return;
            }
            debug!(topic = %c.shared.topic, dead_letter_topic = %dlq, "message dead-lettered");
        } else {
            debug!(topic = %c.shared.topic, "message dropped after max_attempts");
        }
        let mut st = c.shared.lock();
        if st.leases.settle(&d.key, d.token).is_ok() {
            st.settle_offset(&d.key);
        }
        c.shared.settled.notify_all();
    }

    /// Nacks a delivery through the retry topic: publishes the copy (with its due time and
    /// attempt count), and only once the broker confirmed it settles the original. A delivery
    /// that was the last of `max_attempts` goes to the dead-letter topic at once instead (or
    /// is dropped without one). The lease is held meanwhile (so the message is not delivered
    /// again while the copy is written); when the copy fails, the lease gets its old deadline
    /// back and the error is returned.
    async fn nack_to_retry(
        &self,
        c: &GroupConsumer,
        key: Position,
        token: u64,
        delay: Duration,
    ) -> Result<()> {
        let hold = Duration::from_millis(self.inner.settings.publish_timeout_ms) + NACK_MARGIN;
        let (message, attempts, deadline, dead_letter) = {
            let mut st = c.shared.lock();
            if st.nacking.contains(&key) {
                return Err(nack_in_progress());
            }
            let (m, attempts, deadline) = st
                .leases
                .leased(&key, token)
                .map_err(|_| stale("the delivery of this receipt is no longer leased"))?;
            let m = Arc::clone(m);
            // Its next turn would dead-letter it: do it now, saving the round trip.
            let exhausted = st.options.max_attempts.is_some_and(|n| attempts >= n);
            let dead_letter = exhausted.then(|| st.options.dead_letter_topic.clone());
            let held_until = Instant::now() + hold;
            if held_until > deadline {
                let _ = st.leases.extend(&key, token, held_until);
            }
            st.nacking.insert(key);
            (m, attempts, deadline, dead_letter)
        };
        // Also when the caller drops this future mid-write: the delivery must not stay
        // marked as being nacked (its lease then runs out as extended).
        let _nacking = Nacking {
            shared: &c.shared,
            key,
        };
        let unix_ms = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        };
        let now = SystemTime::now();
        let due = now.checked_add(delay).unwrap_or(now);
        let extra = [
            (DUE_HEADER, unix_ms(due).to_string()),
            (ATTEMPTS_HEADER, attempts.to_string()),
            (PUBLISHED_HEADER, unix_ms(message.published_at).to_string()),
        ];
        let copy = Message {
            body: message.body.clone(),
            attributes: message.attributes.clone(),
            id: None,
            ordering_key: message.ordering_key.clone(),
            delay: None,
        };
        let written = match &dead_letter {
            None => {
                self.produce(&c.shared.retry, vec![(message.id.clone(), copy)], &extra)
                    .await
            }
            Some(Some(dlq)) => {
                let r = self
                    .produce(dlq, vec![(message.id.clone(), copy)], &[])
                    .await;
                if r.is_ok() {
                    debug!(topic = %c.shared.topic, dead_letter_topic = %dlq, "message dead-lettered at its last nack");
                }
                r
            }
            Some(None) => Ok(Vec::new()),
        };
        let mut st = c.shared.lock();
        st.nacking.remove(&key);
        let result = match written {
            Ok(_) => {
                if st.leases.settle(&key, token).is_ok() {
                    st.settle_offset(&key);
                    if dead_letter.is_none() {
                        st.moved.insert(key);
                    }
                } else {
                    // Its partition moved on meanwhile (revocation waited for the held lease
                    // as long as it could): the next owner delivers the original too.
                    debug!(topic = %c.shared.topic, "nacked message lost its partition while its retry copy was written");
                }
                Ok(())
            }
            Err(e) => {
                let _ = st.leases.extend(&key, token, deadline);
                Err(e)
            }
        };
        drop(st);
        c.shared.settled.notify_all();
        c.shared.changed.notify_waiters();
        result
    }
}

#[async_trait]
impl MessageQueue for KafkaQueue {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            backend: BACKEND.to_string(),
            location: self.location.clone(),
        }
    }

    fn capabilities(&self) -> QueueCapabilities {
        let mut caps = QueueCapabilities::full();
        // Kafka keeps no id index and has no delayed visibility.
        caps.deduplication = false;
        caps.delayed_delivery = false;
        // Leases live in the consumer's process.
        caps.portable_receipts = false;
        caps.max_message_size = Some(MAX_MESSAGE);
        caps
    }

    #[instrument(level = "debug", skip_all, fields(backend = BACKEND, topic = %topic), err(level = "debug"))]
    async fn create_topic(&self, topic: &str) -> Result<()> {
        checks::topic(BACKEND, topic)?;
        // The state topic first: a topic that exists always has one.
        self.create_kafka_topic(&state_topic(topic), 1, true)
            .await?;
        self.create_kafka_topic(topic, self.inner.settings.partitions, false)
            .await?;
        // Visible in the metadata before the call returns (a publish right after must find it).
        self.visible(topic).await.map(|_| ())
    }

    #[instrument(level = "debug", skip_all, fields(backend = BACKEND, topic = %topic), err(level = "debug"))]
    async fn delete_topic(&self, topic: &str) -> Result<()> {
        checks::topic(BACKEND, topic)?;
        let mine: Vec<Arc<GroupConsumer>> = {
            let mut consumers = self.inner.consumers.lock().await;
            let keys: Vec<_> = consumers
                .keys()
                .filter(|(t, _)| t == topic)
                .cloned()
                .collect();
            keys.into_iter()
                .filter_map(|k| consumers.remove(&k))
                .collect()
        };
        for c in &mine {
            c.stop().await;
        }
        self.known().remove(topic);
        // The retry topics of all its groups, found by name in the broker's topic list (so
        // one left behind by a failed delete_group goes too).
        let meta = Arc::clone(&self.inner.meta);
        let t = topic.to_string();
        let mut names = blocking(move || {
            let md = meta
                .fetch_metadata(None, OP_TIMEOUT)
                .map_err(|e| map_err("listing topics", e))?;
            Ok(md
                .topics()
                .iter()
                .map(|m| m.name().to_string())
                .filter(|n| is_retry_topic_of(n, &t))
                .collect::<Vec<_>>())
        })
        .await?;
        names.push(topic.to_string());
        names.push(state_topic(topic));
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        self.delete_kafka_topics(&names).await
    }

    #[instrument(level = "debug", skip_all, fields(backend = BACKEND, topic = %topic, group = %group), err(level = "debug"))]
    async fn create_group(&self, topic: &str, group: &str, options: GroupOptions) -> Result<()> {
        checks::topic_group(BACKEND, topic, group)?;
        checks::group_options(BACKEND, &self.capabilities(), topic, &options)?;
        let partitions = self.partitions(topic).await?;
        if let Some(dlq) = &options.dead_letter_topic {
            self.partitions(dlq).await.map_err(|_| {
                Error::not_found(BACKEND, format!("dead-letter topic `{dlq}` not found"))
            })?;
        }
        // A topic made by other tools gets its state topic now.
        self.create_kafka_topic(&state_topic(topic), 1, true)
            .await?;
        // The retry topic before the record: a group that exists has one.
        let retry = retry_topic(topic, group);
        let retry_partitions = self.create_retry_topic(&retry, partitions.len()).await?;
        let record = encode_options(&options);
        if let Some(c) = self.existing_consumer(topic, group).await {
            c.shared.lock().options = options;
        }
        let (settings, meta) = (self.inner.settings.clone(), Arc::clone(&self.inner.meta));
        let (t, g) = (topic.to_string(), group.to_string());
        let stale_acked = blocking(move || {
            let state = read_state(&settings.brokers, &t)?;
            if state.contains_key(&group_key(&g)) {
                return Ok(None);
            }
            // A new group starts at the end of its topic (it sees only later messages) and
            // of its retry topic (a group of the same name before, whose committed offsets
            // the broker may keep, must not skip the new retry topic's first copies).
            let consumer: BaseConsumer = client_config(&settings.brokers)
                .set("group.id", kafka_group(&t, &g))
                .set("enable.auto.commit", "false")
                .create()
                .map_err(|e| map_err("creating a consumer", e))?;
            let mut commit = TopicPartitionList::new();
            let logs = [
                (t.as_str(), &partitions),
                (retry.as_str(), &retry_partitions),
            ];
            for (name, parts) in logs {
                for p in parts {
                    let (_, high) = meta
                        .fetch_watermarks(name, *p, OP_TIMEOUT)
                        .map_err(|e| map_err("reading the topic's end offsets", e))?;
                    commit
                        .add_partition_offset(name, *p, Offset::Offset(high))
                        .map_err(|e| map_err("creating a group", e))?;
                }
            }
            consumer
                .commit(&commit, CommitMode::Sync)
                .map_err(|e| map_err("creating a group", e))?;
            // Acknowledged-beyond records of a group of the same name before: offsets of its
            // retry topic would name messages of the new one.
            let prefix = format!("acked/{g}/");
            Ok(Some(
                state
                    .into_keys()
                    .filter(|k| k.starts_with(&prefix))
                    .collect::<Vec<_>>(),
            ))
        })
        .await?;
        let exists = stale_acked.is_none();
        for key in stale_acked.unwrap_or_default() {
            state_written(send_state(&self.inner.producer, topic, &key, None)?).await?;
        }
        debug!(topic, group, exists, "group record written");
        let write = send_state(
            &self.inner.producer,
            topic,
            &group_key(group),
            Some(&record),
        )?;
        state_written(write).await
    }

    #[instrument(level = "debug", skip_all, fields(backend = BACKEND, topic = %topic, group = %group), err(level = "debug"))]
    async fn delete_group(&self, topic: &str, group: &str) -> Result<()> {
        checks::topic_group(BACKEND, topic, group)?;
        let mine = self
            .inner
            .consumers
            .lock()
            .await
            .remove(&(topic.to_string(), group.to_string()));
        if let Some(c) = mine {
            c.stop().await;
        }
        let retry = retry_topic(topic, group);
        match self.partitions(topic).await {
            Err(e) if e.kind() == ErrorKind::NotFound => {
                // Gone with its topic, or left behind by an earlier failure.
                return self.delete_kafka_topics(&[retry.as_str()]).await;
            }
            r => r?,
        };
        let write = send_state(&self.inner.producer, topic, &group_key(group), None)?;
        state_written(write).await?;
        // After the tombstone: while the group exists, it has its retry topic. Gone from the
        // metadata before returning, so a create_group of the same name right after makes a
        // new one rather than finding the old one still being deleted.
        self.delete_kafka_topics(&[retry.as_str()]).await?;
        let start = Instant::now();
        while start.elapsed() < OP_TIMEOUT {
            match self.partitions(&retry).await {
                Err(e) if e.kind() == ErrorKind::NotFound => break,
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        // The group's committed offsets are left to the broker's retention: a group created
        // again under the name starts at the topic's end anyway.
        let name = kafka_group(topic, group);
        let opts = AdminOptions::new().operation_timeout(Some(OP_TIMEOUT));
        if let Err(e) = self
            .inner
            .admin
            .delete_groups(&[name.as_str()], &opts)
            .await
        {
            debug!(topic, group, error = %e, "deleting the Kafka group failed; left to retention");
        }
        Ok(())
    }

    // No `err` here: publish_batch, inside this span, reports the failure.
    #[instrument(level = "debug", skip_all, fields(backend = BACKEND, topic = %topic))]
    async fn publish(&self, topic: &str, message: Message) -> Result<String> {
        let mut ids = self.publish_batch(topic, vec![message]).await?;
        ids.pop()
            .ok_or_else(|| Error::internal(BACKEND, "publish returned no id"))
    }

    #[instrument(level = "debug", skip_all, fields(backend = BACKEND, topic = %topic, count = messages.len()), err(level = "debug"))]
    async fn publish_batch(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<String>> {
        checks::topic(BACKEND, topic)?;
        checks::batch(BACKEND, &self.capabilities(), &messages)?;
        self.ensure_topic(topic).await?;
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let with_ids = messages
            .into_iter()
            .map(|m| (uuid::Uuid::new_v4().simple().to_string(), m))
            .collect();
        self.produce(topic, with_ids, &[]).await
    }

    #[instrument(level = "debug", skip_all, fields(backend = BACKEND, topic = %topic, group = %group, max = options.max_messages), err(level = "debug"))]
    async fn receive(
        &self,
        topic: &str,
        group: &str,
        options: ReceiveOptions,
    ) -> Result<Vec<ReceivedMessage>> {
        checks::topic_group(BACKEND, topic, group)?;
        checks::receive(BACKEND, &options)?;
        let give_up = checks::give_up_at(BACKEND, &options)?;
        let c = self.consumer(topic, group).await?;
        loop {
            // Registered before looking, so a message arriving in between is not missed.
            let changed = c.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let now = Instant::now();
            let (claimed, group_options) = {
                let mut st = c.shared.lock();
                let st = &mut *st;
                let partitions = &st.partitions;
                let claimed = st.leases.claim(
                    options.max_messages,
                    now,
                    st.options.ack_deadline,
                    st.options.max_attempts,
                    |k| partitions.get(&part_of(k)).is_none_or(|ps| ps.revoking),
                );
                (claimed, st.options.clone())
            };
            let retry_soon = !claimed.exhausted.is_empty();
            for d in claimed.exhausted {
                self.dead_letter(&c, &group_options, d).await;
            }
            if !claimed.delivered.is_empty() || (now >= give_up && !retry_soon) {
                let out: Vec<ReceivedMessage> = claimed
                    .delivered
                    .into_iter()
                    .map(|d| ReceivedMessage {
                        id: d.message.id.clone(),
                        body: d.message.body.clone(),
                        attributes: d.message.attributes.clone(),
                        ordering_key: d.message.ordering_key.clone(),
                        attempt: d.attempt,
                        published_at: d.message.published_at,
                        receipt: self.make_receipt(d.key, d.token),
                    })
                    .collect();
                debug!(topic, group, count = out.len(), "received");
                return Ok(out);
            }
            if retry_soon {
                // Dead-lettering may have unblocked an ordering key: look again.
                continue;
            }
            let wake = claimed.next_visible.map_or(give_up, |n| n.min(give_up));
            tokio::select! {
                () = &mut changed => {}
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    #[instrument(level = "debug", skip_all, fields(backend = BACKEND, topic = %topic, group = %group), err(level = "debug"))]
    async fn ack(&self, topic: &str, group: &str, receipt: &str) -> Result<()> {
        checks::topic_group(BACKEND, topic, group)?;
        let (key, token) = self.open_receipt(receipt)?;
        let c = self
            .existing_consumer(topic, group)
            .await
            .ok_or_else(|| stale("no consumer of this group holds the message on this handle"))?;
        let mut st = c.shared.lock();
        let st = &mut *st;
        if st.nacking.contains(&key) {
            return Err(nack_in_progress());
        }
        match st.leases.settle(&key, token) {
            Ok(_) => {
                st.settle_offset(&key);
                c.shared.settled.notify_all();
                c.shared.changed.notify_waiters();
                Ok(())
            }
            Err(Stale::NotHeld) if st.moved.contains(&key) => Err(stale(
                "receipt is stale: the message was nacked (to the retry topic) since; its next \
                 delivery has a receipt of its own",
            )),
            Err(Stale::NotHeld)
                if st
                    .partitions
                    .get(&part_of(&key))
                    .is_some_and(|ps| ps.acked.is_acked(key.2)) =>
            {
                // Acknowledged before: acks are idempotent.
                Ok(())
            }
            Err(Stale::NotHeld) => Err(stale(
                "the message of this receipt is no longer held by this consumer (its partition \
                 moved to another consumer)",
            )),
            Err(Stale::OtherLease) => Err(stale(
                "receipt is stale: the message was delivered again since",
            )),
        }
    }

    #[instrument(level = "debug", skip_all, fields(backend = BACKEND, topic = %topic, group = %group), err(level = "debug"))]
    async fn nack(&self, topic: &str, group: &str, receipt: &str, delay: Duration) -> Result<()> {
        checks::topic_group(BACKEND, topic, group)?;
        checks::nack_delay(BACKEND, &self.capabilities(), delay)?;
        let (key, token) = self.open_receipt(receipt)?;
        let c = self
            .existing_consumer(topic, group)
            .await
            .ok_or_else(|| stale("no consumer of this group holds the message on this handle"))?;
        {
            let mut st = c.shared.lock();
            if st.nacking.contains(&key) {
                return Err(nack_in_progress());
            }
            let (m, _, _) = st
                .leases
                .leased(&key, token)
                .map_err(|_| stale("the delivery of this receipt is no longer leased"))?;
            if m.ordering_key.is_some() {
                // In place: a copy on the retry topic would let the key's next message
                // overtake it.
                let r = st.leases.release(&key, token, Instant::now() + delay);
                drop(st);
                r.map_err(|_| stale("the delivery of this receipt is no longer leased"))?;
                c.shared.settled.notify_all();
                c.shared.changed.notify_waiters();
                return Ok(());
            }
        }
        self.nack_to_retry(&c, key, token, delay).await
    }

    #[instrument(level = "debug", skip_all, fields(backend = BACKEND, topic = %topic, group = %group), err(level = "debug"))]
    async fn extend_deadline(
        &self,
        topic: &str,
        group: &str,
        receipt: &str,
        extension: Duration,
    ) -> Result<()> {
        checks::topic_group(BACKEND, topic, group)?;
        checks::lease(BACKEND, "lease extension", extension)?;
        let (key, token) = self.open_receipt(receipt)?;
        let c = self
            .existing_consumer(topic, group)
            .await
            .ok_or_else(|| stale("no consumer of this group holds the message on this handle"))?;
        let mut st = c.shared.lock();
        if st.nacking.contains(&key) {
            return Err(nack_in_progress());
        }
        let r = st.leases.extend(&key, token, Instant::now() + extension);
        r.map_err(|_| stale("the delivery of this receipt is no longer leased"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let s = Settings::parse("kafka://127.0.0.1:19092?partitions=2&session_timeout_ms=6000")
            .unwrap();
        assert_eq!(s.brokers, "127.0.0.1:19092");
        assert_eq!((s.partitions, s.session_timeout_ms), (2, 6000));
        assert_eq!(Settings::parse("kafka://h").unwrap().brokers, "h:9092");
        for bad in [
            "nats://h:1",
            "kafka://u:p@h:1",
            "kafka://h:1/path",
            "kafka://h:1?partitions=0",
            "kafka://h:1?nope=1",
            "kafka://h:1?session_timeout_ms=x",
        ] {
            assert_eq!(
                Settings::parse(bad).unwrap_err().kind(),
                ErrorKind::InvalidArgument,
                "{bad}"
            );
        }
    }

    #[test]
    fn retry_topic_names_are_unambiguous() {
        assert_eq!(retry_topic("t", "g"), "t.g.retry");
        assert!(is_retry_topic_of("t.g.retry", "t"));
        assert!(is_retry_topic_of(
            &retry_topic("orders", "billing-1"),
            "orders"
        ));
        for other in [
            "t",
            "t.paas-state",
            "t.retry",
            "t..retry",
            "tt.g.retry",
            "t.g.h.retry",
            "u.g.retry",
        ] {
            assert!(!is_retry_topic_of(other, "t"), "{other}");
        }
        // A state topic is never a retry topic, whatever the names.
        assert!(!is_retry_topic_of(&state_topic("t"), "t"));
        assert_eq!(
            Log::from_tag(&Log::Retry.tag().to_string()),
            Some(Log::Retry)
        );
        assert_eq!(Log::from_tag(&Log::Main.tag().to_string()), Some(Log::Main));
        assert_eq!(Log::from_tag("x"), None);
    }

    #[test]
    fn group_records_round_trip() {
        let options = GroupOptions {
            ack_deadline: Duration::from_millis(1500),
            max_attempts: Some(3),
            dead_letter_topic: Some("dlq".into()),
        };
        assert_eq!(decode_options(&encode_options(&options)), Some(options));
        let plain = encode_options(&GroupOptions::default());
        assert_eq!(decode_options(&plain), Some(GroupOptions::default()));
        assert!(decode_options("").is_none());
        assert!(decode_options("other;1;;").is_none());
    }
}
