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
//!   in portable names, so the pair is unambiguous). A message's ordering key is its Kafka
//!   key (so a key's messages share a partition and keep their order); its id travels in the
//!   header `_id` and its attributes in headers of their own names (attribute names start with
//!   a letter, so they never collide with `_id`).
//! - **Groups and offsets.** Each topic `t` has a compacted state topic `t.paas-state` (one
//!   partition, created and deleted with `t`). It holds a record per group
//!   (`group/<g>` = `paas1;<ack deadline ms>;<max attempts>;<dead-letter topic>`: a group
//!   exists while its record does, and every handle in any process finds its options there)
//!   and the offsets each group acknowledged beyond its committed prefix
//!   (`acked/<g>/<partition>` = ranges such as `7-9,12`). The state lives in a topic rather
//!   than in the offset commits' metadata string because tansu keeps no commit metadata (it
//!   answers with an empty string). `create_group` of a new group commits the topic's
//!   current end offsets as the group's position, so it sees only messages published after
//!   its creation; `delete_group` writes a tombstone (and asks the broker to delete the Kafka
//!   group; tansu cannot, which is harmless: a group created again starts at the end).
//! - **Per-message ack over offsets.** A consumer (one per group per handle, joined on its
//!   first `receive`) reads its partitions ahead (at most [`READ_AHEAD`] undelivered
//!   messages; then it pauses the partitions) into in-process leases
//!   (`queue::emulation::leases`, crate-private). An ack settles one offset
//!   (`queue::emulation::offsets`); every [`COMMIT_INTERVAL`] the consumer
//!   writes the changed acknowledged-beyond ranges (up to 150 per partition) to the state
//!   topic and commits the contiguous settled prefix; synchronously when a partition is
//!   revoked or the consumer stops. A new owner of a partition (after a rebalance or a
//!   restart) reads both, so a message acknowledged out of order is not delivered again. An
//!   ack is durable once that commit has happened: a crash within the commit interval
//!   delivers the message again (at-least-once).
//! - **Leases are client-side.** Kafka has no per-message lease, so leases, nack (with or
//!   without delay), deadline extension and attempt counts live in the consumer's process:
//!   receipts are valid only on the handle that received them (`portable_receipts = false`),
//!   a receipt of an earlier delivery is refused with `PreconditionFailed`, a repeated ack
//!   succeeds. Attempt counts and pending nack delays restart when a partition moves to
//!   another consumer (rebalance, restart): `max_attempts` counts deliveries by one owner.
//!   A nacked message stays in the partition (it holds the committed prefix back until it is
//!   settled); it is not moved to a retry topic.
//! - **Rebalances.** When a partition is revoked (a consumer joins or leaves the group), the
//!   revoking consumer stops handing out its messages, waits until the leases it gave out on
//!   it are settled or have run out (at most [`REVOKE_WAIT`]), commits, and only then lets the
//!   group move on: so a message is not leased to two consumers at once within its lease, and
//!   nothing is lost. Acks of that partition after the revocation fail with
//!   `PreconditionFailed` (its new owner delivers the message again).
//! - **Dead-lettering.** A message delivered `max_attempts` times is, at its next turn,
//!   published to the dead-letter topic (same body, attributes, key and id; the attempt count
//!   starts again) and then settled; without a dead-letter topic it is dropped.
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
//!   or may not have been written. Metadata, admin and commit calls that time out are
//!   `Unavailable`. The handle recovers by itself when the broker comes back.
//!
//! URL parameters: `partitions` (1 to 1000, for topics this handle creates),
//! `session_timeout_ms` (consumer group session, 1000 to 300000, default 10000; a group join
//! takes about half of it on tansu), `publish_timeout_ms` (1000 to 600000).

use super::checks;
use super::emulation::leases::{Leased, Leases, Stale};
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
use std::collections::{BTreeMap, HashMap, HashSet};
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

/// The key of a group's record in the state topic.
fn group_key(group: &str) -> String {
    format!("group/{group}")
}

/// The key of the offsets a group acknowledged beyond its committed prefix on a partition.
fn acked_key(group: &str, partition: i32) -> String {
    format!("acked/{group}/{partition}")
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

impl Stored {
    fn from_kafka(m: &BorrowedMessage<'_>) -> Self {
        let mut id = None;
        let mut attributes = BTreeMap::new();
        if let Some(headers) = m.headers() {
            for h in headers.iter() {
                let value = String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned();
                if h.key == ID_HEADER {
                    id = Some(value);
                } else if !h.key.starts_with('_') {
                    attributes.insert(h.key.to_string(), value);
                }
            }
        }
        let published_at = m
            .timestamp()
            .to_millis()
            .and_then(|ms| u64::try_from(ms).ok())
            .map_or_else(SystemTime::now, |ms| UNIX_EPOCH + Duration::from_millis(ms));
        Self {
            // A message from another producer has no id header: its position is its id.
            id: id.unwrap_or_else(|| format!("{}-{}", m.partition(), m.offset())),
            body: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
            attributes,
            ordering_key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            published_at,
        }
    }
}

/// Where a held message is in the log.
type Position = (i32, i64);

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
    partitions: HashMap<i32, PartitionState>,
    leases: Leases<Position, Arc<Stored>>,
    /// Something to commit (settled offsets or options).
    dirty: bool,
    /// The assignment is paused (read-ahead full).
    paused: bool,
    /// The acknowledged-beyond ranges last written to the state topic, per partition.
    written: HashMap<i32, String>,
}

/// What the consumer thread, the rebalance callbacks and the async calls share.
struct GroupShared {
    topic: String,
    group: String,
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
        only: Option<&[i32]>,
        force: bool,
    ) -> Option<(TopicPartitionList, Vec<(i32, String)>)> {
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
                .add_partition_offset(&self.topic, p, Offset::Offset(ps.acked.commit_offset()))
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
        only: Option<&[i32]>,
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

    /// Takes a newly read message into the leases.
    fn add(&self, m: &BorrowedMessage<'_>) {
        let (p, o) = (m.partition(), m.offset());
        let mut st = self.lock();
        let st = &mut *st;
        let ps = st.partitions.entry(p).or_insert_with(|| PartitionState {
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
        let stored = Stored::from_kafka(m);
        let key = stored.ordering_key.clone();
        st.leases
            .insert((p, o), Arc::new(stored), key, Instant::now());
        self.changed.notify_waiters();
    }

    /// Before partitions are taken away: hand out nothing more from them, wait for their
    /// running leases, commit them, forget them.
    fn revoke(&self, consumer: &BaseConsumer<GroupContext>, tpl: &TopicPartitionList) {
        let parts: Vec<i32> = tpl
            .elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect();
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
                let Some(until) = st.leases.running_until(now, |(p, _)| parts.contains(p)) else {
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
        st.leases.drop_where(|(p, _)| parts.contains(p));
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
        st.paused = false;
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
        for e in committed.elements_for_topic(&self.topic) {
            let Offset::Offset(start) = e.offset() else {
                continue;
            };
            let ranges = state.get(&acked_key(&self.group, e.partition()));
            let acked = ranges
                .and_then(|r| AckedOffsets::decode(start, r))
                .unwrap_or_else(|| AckedOffsets::new(start));
            if let Some(r) = ranges {
                st.written.insert(e.partition(), r.clone());
            }
            st.partitions.insert(
                e.partition(),
                PartitionState {
                    acked,
                    revoking: false,
                },
            );
        }
        debug!(topic = %self.topic, partitions = committed.count(), "partitions assigned");
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

impl GroupConsumer {
    /// Joins the group of `topic`/`group` if the group exists (it has a record in the state
    /// topic), else `NotFound`.
    fn start(
        settings: &Settings,
        producer: FutureProducer,
        topic: &str,
        group: &str,
    ) -> Result<Self> {
        let options = read_state(&settings.brokers, topic)?
            .get(&group_key(group))
            .and_then(|r| decode_options(r))
            .ok_or_else(|| group_not_found(topic, group))?;
        let shared = Arc::new(GroupShared {
            topic: topic.to_string(),
            group: group.to_string(),
            brokers: settings.brokers.clone(),
            producer,
            consumer: std::sync::OnceLock::new(),
            state: Mutex::new(GroupState {
                options,
                partitions: HashMap::new(),
                leases: Leases::new(),
                dirty: false,
                paused: false,
                written: HashMap::new(),
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
        consumer
            .subscribe(&[topic])
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
            let mut st = shared.lock();
            let full = st.leases.undelivered() >= READ_AHEAD;
            if full != st.paused {
                if let Ok(assignment) = consumer.assignment() {
                    let r = if full {
                        consumer.pause(&assignment)
                    } else {
                        consumer.resume(&assignment)
                    };
                    if r.is_ok() {
                        st.paused = full;
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
        self.partitions(topic).await?;
        let settings = self.inner.settings.clone();
        let producer = self.inner.producer.clone();
        let (t, g) = key.clone();
        let c =
            Arc::new(blocking(move || GroupConsumer::start(&settings, producer, &t, &g)).await?);
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

    /// The position and lease token inside a receipt.
    fn open_receipt(&self, receipt: &str) -> Result<(Position, u64)> {
        let inner = self.inner.receipts.open(receipt)?;
        let mut parts = inner.splitn(3, '.');
        let parsed = (|| {
            let p = parts.next()?.parse().ok()?;
            let o = parts.next()?.parse().ok()?;
            let t = parts.next()?.parse().ok()?;
            Some(((p, o), t))
        })();
        parsed.ok_or_else(|| Error::invalid(BACKEND, "malformed receipt"))
    }

    /// Enqueues `messages` in order and waits for all of them; returns their ids.
    async fn produce(&self, topic: &str, messages: Vec<(String, Message)>) -> Result<Vec<String>> {
        let mut pending = Vec::with_capacity(messages.len());
        let mut ids = Vec::with_capacity(messages.len());
        for (id, m) in &messages {
            let mut headers =
                OwnedHeaders::new_with_capacity(m.attributes.len() + 1).insert(Header {
                    key: ID_HEADER,
                    value: Some(id.as_bytes()),
                });
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
            if let Err(e) = self.produce(dlq, vec![(d.message.id.clone(), m)]).await {
                warn!(topic = %c.shared.topic, dead_letter_topic = %dlq, error = %e, "dead-lettering failed; tried again later");
                return;
            }
            debug!(topic = %c.shared.topic, dead_letter_topic = %dlq, "message dead-lettered");
        } else {
            debug!(topic = %c.shared.topic, "message dropped after max_attempts");
        }
        let mut st = c.shared.lock();
        if st.leases.settle(&d.key, d.token).is_ok() {
            if let Some(ps) = st.partitions.get_mut(&d.key.0) {
                if ps.acked.ack(d.key.1) {
                    st.dirty = true;
                }
            }
        }
        c.shared.settled.notify_all();
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
        let start = Instant::now();
        loop {
            match self.partitions(topic).await {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == ErrorKind::NotFound && start.elapsed() < OP_TIMEOUT => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e),
            }
        }
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
        let state = state_topic(topic);
        let opts = AdminOptions::new().operation_timeout(Some(OP_TIMEOUT));
        let results = self
            .inner
            .admin
            .delete_topics(&[topic, state.as_str()], &opts)
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
        Ok(())
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
        let record = encode_options(&options);
        if let Some(c) = self.existing_consumer(topic, group).await {
            c.shared.lock().options = options;
        }
        let (settings, meta) = (self.inner.settings.clone(), Arc::clone(&self.inner.meta));
        let (t, g) = (topic.to_string(), group.to_string());
        let exists = blocking(move || {
            if read_state(&settings.brokers, &t)?.contains_key(&group_key(&g)) {
                return Ok(true);
            }
            // A new group starts at the topic's end: it sees only later messages.
            let consumer: BaseConsumer = client_config(&settings.brokers)
                .set("group.id", kafka_group(&t, &g))
                .set("enable.auto.commit", "false")
                .create()
                .map_err(|e| map_err("creating a consumer", e))?;
            let mut commit = TopicPartitionList::new();
            for p in &partitions {
                let (_, high) = meta
                    .fetch_watermarks(&t, *p, OP_TIMEOUT)
                    .map_err(|e| map_err("reading the topic's end offsets", e))?;
                commit
                    .add_partition_offset(&t, *p, Offset::Offset(high))
                    .map_err(|e| map_err("creating a group", e))?;
            }
            consumer
                .commit(&commit, CommitMode::Sync)
                .map_err(|e| map_err("creating a group", e))?;
            Ok(false)
        })
        .await?;
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
        match self.partitions(topic).await {
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            r => r?,
        };
        let write = send_state(&self.inner.producer, topic, &group_key(group), None)?;
        state_written(write).await?;
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
        self.produce(topic, with_ids).await
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
                    |(p, _)| partitions.get(p).is_none_or(|ps| ps.revoking),
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
                        receipt: self
                            .inner
                            .receipts
                            .make(&format!("{}.{}.{}", d.key.0, d.key.1, d.token)),
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
        match st.leases.settle(&key, token) {
            Ok(_) => {
                if let Some(ps) = st.partitions.get_mut(&key.0) {
                    if ps.acked.ack(key.1) {
                        st.dirty = true;
                    }
                }
                c.shared.settled.notify_all();
                c.shared.changed.notify_waiters();
                Ok(())
            }
            Err(Stale::NotHeld)
                if st
                    .partitions
                    .get(&key.0)
                    .is_some_and(|ps| ps.acked.is_acked(key.1)) =>
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
        let r = c
            .shared
            .lock()
            .leases
            .release(&key, token, Instant::now() + delay);
        r.map_err(|_| stale("the delivery of this receipt is no longer leased"))?;
        c.shared.settled.notify_all();
        c.shared.changed.notify_waiters();
        Ok(())
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
        let r = c
            .shared
            .lock()
            .leases
            .extend(&key, token, Instant::now() + extension);
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
