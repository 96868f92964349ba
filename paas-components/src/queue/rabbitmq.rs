//! The RabbitMQ queue (AMQP 0.9.1), through lapin.
//!
//! - **Layout.** Names start with `paas.` (topic and group names cannot contain `.` or `:`,
//!   so these never collide):
//!
//!   | what | RabbitMQ object | why |
//!   |---|---|---|
//!   | topic `T` | durable fanout exchange `paas.T` | every group bound to it gets every message |
//!   | group `G` of `T` | durable quorum queue `paas.T.G` bound to `paas.T` | replicated, counts deliveries (`x-delivery-count`) |
//!   | dead letters of `G` | fanout exchange `paas.T.G:dead` (the queue's `x-dead-letter-exchange`), bound to the dead-letter topic's exchange | queue arguments cannot change, bindings can: `create_group` re-points it |
//!   | options of `G` | classic queue `paas.T.G:options`, one JSON message (`x-max-length` 1) | AMQP cannot read a queue's arguments back, and every handle needs the ack deadline |
//!   | groups of `T` | classic queue `paas.T:groups`, one message per `create_group` | AMQP cannot list the queues bound to an exchange, and `delete_topic` must delete them |
//!   | delayed publish | classic queue `paas.T:delay.<ms>`: `x-message-ttl` ms, dead-letters to `paas.T` | no delayed-message plugin: a TTL queue per delay |
//!   | nack with delay | classic queue `paas.T.G:delay.<ms>`: dead-letters to `paas.T.G` only | the delay must not fan out to the other groups |
//!
//!   Delay queues expire by themselves (`x-expires`, a minute after their delay) rather than
//!   being deleted: AMQP cannot list them. Delays are rounded **up** to two significant
//!   digits (1234 ms waits 1300 ms), so that arbitrary backoffs make few queues. A delayed
//!   publish fans out when its delay ends, so a group created during the delay gets it too;
//!   a delayed nack still waiting when its group is deleted and re-created arrives in the
//!   new group.
//! - **Messages.** The id is the AMQP `message_id` (a fresh UUID; de-duplication is not
//!   supported: RabbitMQ has no de-duplication without a plugin), `published_at` is the AMQP
//!   `timestamp` (whole seconds), attributes are string headers. Header names starting with
//!   `x-` belong to the broker (and to this backend, `x-paas-…`), so an attribute named
//!   `x-…` (or `paas.…`, any case) travels as `paas.<name>` and is read back unchanged.
//!   Messages are persistent; every publish waits for the publisher confirm, so once
//!   `publish` returns `Ok` the message is stored in the quorum queues of the groups.
//! - **Receiving.** Each handle holds one channel and one consumer per group it receives
//!   from, with a prefetch of `prefetch` (URL parameter, default 32): up to that many
//!   messages may wait in a handle's buffer before a `receive` takes them. Leased messages
//!   also count against the prefetch; when they fill it, `receive` falls back to
//!   `basic.get`, which the prefetch does not limit, so every available message stays
//!   receivable however many are leased.
//! - **Leases** are kept by the client (the shared `queue/emulation/delivery_leases.rs`): RabbitMQ has
//!   no per-message ack deadline. A task of the handle gives back (`basic.nack`, requeue)
//!   every delivery whose deadline passed, so an unacknowledged message is delivered again
//!   after its group's ack deadline; `extend_deadline` moves it. A handle that dies gives
//!   its deliveries back when its connection closes (the broker requeues them).
//! - **Attempts.** `attempt` is the quorum queue's `x-delivery-count` plus one, plus the
//!   attempts carried through a delayed nack (the copy made by a delayed nack is a new
//!   message to the broker, so the count travels in the header `x-paas-redelivery`, valid
//!   only in the queue that wrote it; a copy keeps the message id, body and attributes).
//!   RabbitMQ 3.10 counts every return, also the messages
//!   a lost connection gives back, including ones still in the prefetch buffer that no
//!   caller saw: after a connection loss an attempt may be skipped.
//! - **Dead letters.** Every group queue dead-letters to its own exchange `paas.T.G:dead`;
//!   `dead_letter_topic` binds that exchange to the topic's exchange (no binding: dead
//!   letters are dropped). The handle enforces `max_attempts`: a nack or lease expiry of the
//!   last attempt, and a delivery already past it (e.g. returned by a lost connection), is
//!   rejected without requeue, which dead-letters it. The queue's `x-delivery-limit` is not
//!   used: RabbitMQ cannot change a queue's arguments, while `create_group` on an existing
//!   group must update its options (the ack deadline too; other handles see a change within
//!   10 s, when they re-read the options).
//! - **Receipts** are `<handle>~<channel generation>.<delivery tag>`: delivery tags are per
//!   channel, so a receipt works only on the handle that received it (`Unsupported`
//!   elsewhere). The handle remembers how each delivery ended, so a repeated ack succeeds
//!   without a second `basic.ack` (which would close the channel), and the receipt of a
//!   delivery given back (nack, expiry, lost connection) is `PreconditionFailed`.
//! - **Acks are confirmed**: AMQP has no answer to `basic.ack`, so `ack` follows it with a
//!   `basic.qos` round trip on the same channel; the broker handles a channel's methods in
//!   order, so once `ack` returns `Ok` the broker's channel has the ack and the message is
//!   not delivered again, even if the connection is lost right after (the fault test checks
//!   it). A caveat from the broker's side: a RabbitMQ 3.10 channel whose quorum queue is far
//!   behind may hold settlements back before passing them on; AMQP 0.9.1 cannot confirm past
//!   the channel.
//! - **Failures.** Lost connections and channels, timeouts (10 s per broker call) and
//!   broker-side resource errors are `Unavailable` (retryable); the same handle reconnects
//!   at its next call. A channel that the broker closes after an error (an unknown exchange
//!   or queue) is reopened by the next call. Deliveries of a lost channel are given back by
//!   the broker; their receipts become stale.
//! - **Not supported** (`Unsupported`, as the capabilities say): ordering keys (competing
//!   consumers of one quorum queue cannot keep per-key order; a single active consumer
//!   would serialise the whole group) and de-duplication by message id (no plugin here).
//! - **Secrets.** The URL's password is kept only to connect; `Debug`, errors and logs show
//!   the URL redacted.
//!
//! TLS: `amqps://` through lapin's rustls with the aws-lc-rs provider (no `ring`) and
//! Mozilla's roots (webpki-roots); no test runs it here (the local broker speaks plain AMQP).

use super::checks;
use super::emulation::delivery_leases::{Leases, Outcome, Settle};
use super::emulation::receipt::Receipts;
use async_trait::async_trait;
use bytes::Bytes;
use cloud_abstraction::queue::{
    GroupOptions, Message, MessageQueue, QueueCapabilities, ReceiveOptions, ReceivedMessage,
};
use cloud_abstraction::{BackendInfo, Error, ErrorKind, Location, ResourceUrl, Result};
use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions, ExchangeBindOptions,
    ExchangeDeclareOptions, ExchangeDeleteOptions, ExchangeUnbindOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as SyncMutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::{debug, instrument, warn};

const BACKEND: &str = "rabbitmq";
const PREFIX: &str = "paas";
/// Every broker call gives up after this long.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Default prefetch per group consumer.
const DEFAULT_PREFETCH: u16 = 32;
/// How often the lease task looks for expired leases.
const LEASE_TICK: Duration = Duration::from_millis(50);
/// How often a starved receive polls with `basic.get`.
const GET_POLL: Duration = Duration::from_millis(50);
/// How long a handle trusts the group options it read.
const OPTIONS_TTL: Duration = Duration::from_secs(10);
/// Largest body: RabbitMQ's own limit is 128 MiB, but quorum queues keep bodies in memory.
const MAX_MESSAGE_SIZE: u64 = 16 * 1024 * 1024;
/// Query parameters of an AMQP URL besides the location: ours, then lapin's.
const URL_PARAMS: [&str; 6] = [
    "prefetch",
    "heartbeat",
    "connection_timeout",
    "channel_max",
    "frame_max",
    "auth_mechanism",
];
/// Header with the attempts a delayed nack carried: `"<attempts> <queue>"`.
const REDELIVERY_HEADER: &str = "x-paas-redelivery";
/// Prefix of attributes whose names would collide with the broker's headers.
const ESCAPE: &str = "paas.";

fn exchange_name(topic: &str) -> String {
    format!("{PREFIX}.{topic}")
}
fn queue_name(topic: &str, group: &str) -> String {
    format!("{PREFIX}.{topic}.{group}")
}
fn options_queue(topic: &str, group: &str) -> String {
    format!("{PREFIX}.{topic}.{group}:options")
}
fn dead_letter_exchange(topic: &str, group: &str) -> String {
    format!("{PREFIX}.{topic}.{group}:dead")
}
fn directory_queue(topic: &str) -> String {
    format!("{PREFIX}.{topic}:groups")
}

/// Rounds a delay up to two significant digits of milliseconds (at least 1 ms).
fn delay_bucket(delay: Duration) -> u64 {
    let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX).max(1);
    let mut step = 1u64;
    while ms / step >= 100 {
        step *= 10;
    }
    ms.div_ceil(step).saturating_mul(step)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Maps a lapin error: lost connections and channels are retryable, the broker's reply codes
/// keep their meaning.
fn amqp_error(operation: &str, e: lapin::Error) -> Error {
    use lapin::ErrorKind as L;
    let (kind, detail) = match e.kind() {
        L::ProtocolError(p) => {
            let kind = match p.get_id() {
                404 => ErrorKind::NotFound,
                406 => ErrorKind::PreconditionFailed,
                403 => ErrorKind::PermissionDenied,
                311 => ErrorKind::InvalidArgument,
                506 => ErrorKind::ResourceExhausted,
                _ => ErrorKind::Unavailable,
            };
            (kind, p.get_message().as_str().to_string())
        }
        L::IOError(_)
        | L::InvalidChannelState(..)
        | L::InvalidConnectionState(_)
        | L::InvalidChannel(_)
        | L::MissingHeartbeatError
        | L::ChannelsLimitReached => (ErrorKind::Unavailable, "connection or channel lost".into()),
        _ => (ErrorKind::Internal, "client error".into()),
    };
    Error::new(kind, BACKEND, format!("{operation} failed: {detail}")).with_source(e)
}

fn is_channel_error(e: &lapin::Error) -> bool {
    e.is_amqp_soft_error()
}

/// Runs one broker call with [`CALL_TIMEOUT`].
async fn call<T>(
    operation: &str,
    fut: impl Future<Output = lapin::Result<T>>,
) -> std::result::Result<T, CallError> {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(CallError::Broker(e)),
        Err(_) => Err(CallError::Timeout(operation.to_string())),
    }
}

enum CallError {
    Broker(lapin::Error),
    Timeout(String),
    /// Failed before the call: no connection or channel.
    Other(Error),
}

impl CallError {
    fn into_error(self, operation: &str) -> Error {
        match self {
            Self::Broker(e) => amqp_error(operation, e),
            Self::Timeout(op) => Error::new(
                ErrorKind::Unavailable,
                BACKEND,
                format!("{op} timed out after {CALL_TIMEOUT:?}"),
            ),
            Self::Other(e) => e,
        }
    }
    fn is_channel_error(&self) -> bool {
        matches!(self, Self::Broker(e) if is_channel_error(e))
    }
    fn is_not_found(&self) -> bool {
        matches!(self, Self::Broker(e) if matches!(e.kind(), lapin::ErrorKind::ProtocolError(p) if p.get_id() == 404))
    }
}

/// The options of a group as stored in its options queue.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct StoredOptions {
    ack_deadline_ms: u64,
    max_attempts: Option<u32>,
    dead_letter_topic: Option<String>,
}

impl StoredOptions {
    fn of(options: &GroupOptions) -> Self {
        Self {
            ack_deadline_ms: u64::try_from(options.ack_deadline.as_millis()).unwrap_or(u64::MAX),
            max_attempts: options.max_attempts,
            dead_letter_topic: options.dead_letter_topic.clone(),
        }
    }
    fn ack_deadline(&self) -> Duration {
        Duration::from_millis(self.ack_deadline_ms.max(1))
    }
}

/// What a live lease remembers about its delivery.
struct Leased {
    via_consumer: bool,
    attempt: u32,
    body: Bytes,
    properties: BasicProperties,
}

/// The consumer of one group on this handle.
struct LiveConsumer {
    generation: u64,
    consumer: Consumer,
}

/// One group as this handle sees it.
struct Group {
    topic: String,
    group: String,
    queue: String,
    options: SyncMutex<Option<(StoredOptions, Instant)>>,
    consumer: Mutex<Option<LiveConsumer>>,
    /// The consumer's channel with its generation, for acks without the consumer lock.
    channel: SyncMutex<Option<(u64, Channel)>>,
    leases: SyncMutex<Leases<(u64, u64), Leased>>,
}

impl Group {
    fn new(topic: &str, group: &str) -> Self {
        Self {
            topic: topic.to_string(),
            group: group.to_string(),
            queue: queue_name(topic, group),
            options: SyncMutex::new(None),
            consumer: Mutex::new(None),
            channel: SyncMutex::new(None),
            leases: SyncMutex::new(Leases::new(BACKEND)),
        }
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, Leases<(u64, u64), Leased>> {
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn options(&self) -> Option<StoredOptions> {
        self.options
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(o, _)| o.clone())
    }

    fn set_options(&self, options: StoredOptions) {
        *self.options.lock().unwrap_or_else(|e| e.into_inner()) = Some((options, Instant::now()));
    }

    fn options_fresh(&self) -> bool {
        self.options
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|(_, at)| at.elapsed() < OPTIONS_TTL)
    }

    /// The channel of `generation`, if it is still the live one.
    fn channel_of(&self, generation: u64) -> Option<Channel> {
        self.channel
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .filter(|(g, ch)| *g == generation && ch.status().connected())
            .map(|(_, ch)| ch.clone())
    }

    fn take_channel(&self) -> Option<Channel> {
        self.channel
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .map(|(_, ch)| ch)
    }
}

struct Inner {
    /// The full URL (with the password): only for connecting.
    uri: lapin::uri::AMQPUri,
    shown: String,
    prefetch: u16,
    receipts: Receipts,
    connection: Mutex<Option<Arc<Connection>>>,
    control: Mutex<Option<Channel>>,
    publisher: Mutex<Option<Channel>>,
    groups: SyncMutex<HashMap<String, Arc<Group>>>,
    generations: AtomicU64,
}

/// A [`MessageQueue`] on RabbitMQ: fanout exchanges for topics, quorum queues for groups,
/// publisher confirms, leases kept by the client (see the [module docs](self)).
///
/// ```no_run
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use cloud_abstraction::MessageQueue;
/// use cloud_abstraction::queue::{GroupOptions, Message, ReceiveOptions};
/// use paas_components::queue::RabbitMqQueue;
///
/// let q = RabbitMqQueue::connect("amqp://guest:guest@127.0.0.1:5672/%2f").await?;
/// q.create_topic("commands").await?;
/// q.create_group("commands", "workers", GroupOptions::default()).await?;
/// q.publish("commands", Message::new("unlock")).await?;
/// let got = q.receive("commands", "workers", ReceiveOptions::default()).await?;
/// q.ack("commands", "workers", &got[0].receipt).await?;
/// # Ok::<(), cloud_abstraction::Error>(()) }).unwrap();
/// ```
#[derive(Clone)]
pub struct RabbitMqQueue {
    inner: Arc<Inner>,
    location: Location,
}

impl fmt::Debug for RabbitMqQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitMqQueue")
            .field("url", &self.inner.shown)
            .field("prefetch", &self.inner.prefetch)
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl RabbitMqQueue {
    /// Connects to `url`: `amqp://user:password@host:port/vhost` or `amqps://…` (TLS), with
    /// optional parameters `prefetch` (1 to 65535, default 32), `provider`, `region`, `zone`
    /// and lapin's own (`heartbeat`, `connection_timeout`, `frame_max`, `channel_max`).
    #[instrument(level = "debug", skip_all, fields(backend = BACKEND), err(level = "debug"))]
    pub async fn connect(url: &str) -> Result<Self> {
        let parsed = ResourceUrl::parse(url)?;
        if !matches!(parsed.scheme(), "amqp" | "amqps") {
            return Err(Error::invalid(
                BACKEND,
                format!(
                    "a RabbitMQ URL starts with amqp:// or amqps://, not `{}://`",
                    parsed.scheme()
                ),
            ));
        }
        let (location, rest) = Location::split_url(&parsed)?;
        let prefetch = match rest.query_param("prefetch") {
            None => DEFAULT_PREFETCH,
            Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                Error::invalid(BACKEND, "`prefetch` must be a number from 1 to 65535")
            })?,
        };
        if let Some((name, _)) = rest
            .query_params()
            .into_iter()
            .find(|(name, _)| !URL_PARAMS.contains(&name.as_str()))
        {
            // The name only: the value may be a secret.
            return Err(Error::invalid(
                BACKEND,
                format!("unknown parameter `{name}` in an AMQP URL"),
            ));
        }
        let rest = rest.without_query_params(&["prefetch"]);
        // lapin's parse error repeats the URL (with its password): say only what failed.
        let uri = lapin::uri::AMQPUri::from_str(rest.expose())
            .map_err(|_| Error::invalid(BACKEND, "malformed AMQP URL (or unknown parameter)"))?;
        let inner = Arc::new(Inner {
            uri,
            shown: parsed.redacted(),
            prefetch,
            receipts: Receipts::per_handle(BACKEND),
            connection: Mutex::new(None),
            control: Mutex::new(None),
            publisher: Mutex::new(None),
            groups: SyncMutex::new(HashMap::new()),
            generations: AtomicU64::new(1),
        });
        inner.connection().await?;
        tokio::spawn(expire_leases(Arc::downgrade(&inner)));
        Ok(Self {
            inner,
            location: location.unwrap_or_else(Location::unknown),
        })
    }

    /// The same queue, reporting `location` in its [`BackendInfo`].
    pub fn with_location(mut self, location: Location) -> Self {
        self.location = location;
        self
    }

    /// The handle's lapin connection, reconnecting if it was lost: a **non-portable** escape
    /// hatch (e.g. for tooling); objects are named as the [module docs](self) say.
    pub async fn connection(&self) -> Result<Arc<Connection>> {
        self.inner.connection().await
    }
}

/// Drops a group's consumer whose channel or stream ended: the broker gave its deliveries
/// back, so their leases are released (their receipts become stale).
fn drop_consumer(g: &Group, slot: &mut Option<LiveConsumer>) {
    if let Some(old) = slot.take() {
        g.leases()
            .release_where(|(generation, _)| *generation == old.generation);
        g.take_channel();
    }
}

/// Gives back the deliveries whose lease ran out, until the handle is dropped.
async fn expire_leases(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(LEASE_TICK).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let groups: Vec<Arc<Group>> = inner
            .groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let now = Instant::now();
        for g in groups {
            let expired = g.leases().expired(now);
            for ((generation, tag), leased) in expired {
                debug!(queue = %g.queue, tag, "lease expired; giving the delivery back");
                let _ = inner.give_back(&g, generation, tag, &leased).await;
            }
        }
    }
}

impl Inner {
    async fn connection(&self) -> Result<Arc<Connection>> {
        let mut slot = self.connection.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| c.status().connected()) {
            return Ok(Arc::clone(c));
        }
        let properties =
            ConnectionProperties::default().with_connection_name("paas-components".into());
        let connection = match call(
            "connecting",
            Connection::connect_uri(self.uri.clone(), properties),
        )
        .await
        {
            Ok(c) => Arc::new(c),
            Err(CallError::Broker(e)) => {
                let err = amqp_error("connecting", e);
                // A refused login is the caller's to fix, not a reason to retry.
                return Err(
                    if matches!(
                        err.kind(),
                        ErrorKind::PermissionDenied | ErrorKind::PreconditionFailed
                    ) {
                        Error::new(
                            ErrorKind::Unauthenticated,
                            BACKEND,
                            "the broker refused the login",
                        )
                    } else {
                        Error::unavailable(BACKEND, format!("cannot connect to {}", self.shown))
                            .with_source(err)
                    },
                );
            }
            Err(e) => return Err(e.into_error("connecting")),
        };
        *slot = Some(Arc::clone(&connection));
        Ok(connection)
    }

    async fn open_channel(&self, confirm: bool) -> Result<Channel> {
        let connection = self.connection().await?;
        let channel = call("opening a channel", connection.create_channel())
            .await
            .map_err(|e| e.into_error("opening a channel"))?;
        if confirm {
            call(
                "enabling publisher confirms",
                channel.confirm_select(ConfirmSelectOptions::default()),
            )
            .await
            .map_err(|e| e.into_error("enabling publisher confirms"))?;
        }
        Ok(channel)
    }

    async fn slot_channel(&self, slot: &Mutex<Option<Channel>>, confirm: bool) -> Result<Channel> {
        let mut guard = slot.lock().await;
        if let Some(ch) = guard.as_ref().filter(|ch| ch.status().connected()) {
            return Ok(ch.clone());
        }
        let ch = self.open_channel(confirm).await?;
        *guard = Some(ch.clone());
        Ok(ch)
    }

    /// Runs `f` on the control channel; a channel the broker closed after an error is
    /// dropped, so the next call opens a new one.
    async fn control<T, F, Fut>(&self, operation: &str, f: F) -> std::result::Result<T, CallError>
    where
        F: FnOnce(Channel) -> Fut,
        Fut: Future<Output = lapin::Result<T>>,
    {
        let ch = self
            .slot_channel(&self.control, false)
            .await
            .map_err(CallError::Other)?;
        let result = call(operation, f(ch)).await;
        if let Err(e) = &result {
            if e.is_channel_error() {
                *self.control.lock().await = None;
            }
        }
        result
    }

    async fn exchange_exists(&self, exchange: &str) -> Result<bool> {
        let name = exchange.to_string();
        let result = self
            .control("checking the topic", |ch| async move {
                ch.exchange_declare(
                    name.as_str().into(),
                    lapin::ExchangeKind::Fanout,
                    ExchangeDeclareOptions {
                        passive: true,
                        ..ExchangeDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
            })
            .await;
        match result {
            Ok(()) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e.into_error("checking the topic")),
        }
    }

    async fn queue_exists(&self, queue: &str) -> Result<bool> {
        let name = queue.to_string();
        let result = self
            .control("checking the group", |ch| async move {
                ch.queue_declare(
                    name.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
            })
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e.into_error("checking the group")),
        }
    }

    async fn require_topic(&self, topic: &str) -> Result<()> {
        if self.exchange_exists(&exchange_name(topic)).await? {
            Ok(())
        } else {
            Err(Error::not_found(
                BACKEND,
                format!("topic `{topic}` not found"),
            ))
        }
    }

    /// `NotFound` naming the topic or the group, whichever is missing.
    async fn require_group(&self, topic: &str, group: &str) -> Result<()> {
        if self.queue_exists(&queue_name(topic, group)).await? {
            return Ok(());
        }
        self.require_topic(topic).await?;
        Err(Error::not_found(
            BACKEND,
            format!("group `{group}` of topic `{topic}` not found"),
        ))
    }

    async fn delete_queue(&self, queue: &str) -> Result<()> {
        let name = queue.to_string();
        match self
            .control("deleting a queue", |ch| async move {
                ch.queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                    .await
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e.into_error("deleting a queue")),
        }
    }

    /// Deletes a group's queue, options queue and dead-letter exchange.
    async fn delete_group_objects(&self, topic: &str, group: &str) -> Result<()> {
        self.delete_queue(&queue_name(topic, group)).await?;
        self.delete_queue(&options_queue(topic, group)).await?;
        let name = dead_letter_exchange(topic, group);
        match self
            .control("deleting the group", |ch| async move {
                ch.exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
                    .await
            })
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e.into_error("deleting the group")),
        }
    }

    /// Publishes `bodies` (exchange, routing key, body, properties) on the confirm channel
    /// and waits for every confirm.
    async fn publish_confirmed(
        &self,
        operation: &str,
        items: Vec<(String, String, Bytes, BasicProperties)>,
    ) -> Result<()> {
        let ch = self.slot_channel(&self.publisher, true).await?;
        let result = async {
            let mut confirms = Vec::with_capacity(items.len());
            for (exchange, key, body, properties) in items {
                let confirm = ch
                    .basic_publish(
                        exchange.as_str().into(),
                        key.as_str().into(),
                        BasicPublishOptions::default(),
                        &body,
                        properties,
                    )
                    .await?;
                confirms.push(confirm);
            }
            let mut nacked = false;
            for confirm in confirms {
                if let Confirmation::Nack(_) = confirm.await? {
                    nacked = true;
                }
            }
            Ok::<bool, lapin::Error>(nacked)
        };
        match call(operation, result).await {
            Ok(false) => Ok(()),
            Ok(true) => Err(Error::unavailable(
                BACKEND,
                format!("{operation}: the broker refused to store a message (nack)"),
            )),
            Err(e) => {
                if e.is_channel_error() {
                    *self.publisher.lock().await = None;
                }
                Err(e.into_error(operation))
            }
        }
    }

    fn group(&self, topic: &str, group: &str) -> Arc<Group> {
        let queue = queue_name(topic, group);
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(
            groups
                .entry(queue)
                .or_insert_with(|| Arc::new(Group::new(topic, group))),
        )
    }

    /// Forgets a group on this handle: its consumer's channel is closed (the broker gives its
    /// deliveries back), its leases are released.
    async fn forget_group(&self, queue: &str) {
        let removed = self
            .groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(queue);
        if let Some(g) = removed {
            g.leases().release_where(|_| true);
            if let Some(ch) = g.take_channel() {
                let _ = call("closing a channel", ch.close(200, "group deleted".into())).await;
            }
        }
    }

    /// Reads a group's options from its options queue (get and requeue).
    async fn read_options(&self, g: &Group) -> Result<StoredOptions> {
        let queue = options_queue(&g.topic, &g.group);
        for _ in 0..40 {
            let name = queue.clone();
            let got = self
                .control("reading the group options", |ch| async move {
                    let got = ch
                        .basic_get(name.as_str().into(), BasicGetOptions { no_ack: false })
                        .await?;
                    if let Some(m) = &got {
                        ch.basic_reject(
                            m.delivery.delivery_tag,
                            BasicRejectOptions { requeue: true },
                        )
                        .await?;
                    }
                    Ok(got.map(|m| m.delivery.data))
                })
                .await
                .map_err(|e| e.into_error("reading the group options"))?;
            match got {
                Some(data) => {
                    return serde_json::from_slice(&data).map_err(|e| {
                        Error::internal(BACKEND, "unreadable group options").with_source(e)
                    });
                }
                // Another handle holds the message for a moment (it requeues it at once).
                None => tokio::time::sleep(Duration::from_millis(25)).await,
            }
        }
        warn!(queue = %g.queue, "group options not found; using the default ack deadline");
        Ok(StoredOptions::of(&GroupOptions::default()))
    }

    /// Makes sure `g` has a live consumer (opening one if needed) and returns its generation.
    async fn ensure_consumer(&self, g: &Group, slot: &mut Option<LiveConsumer>) -> Result<u64> {
        if let Some(live) = slot.as_ref() {
            if g.channel_of(live.generation).is_some() {
                return Ok(live.generation);
            }
        }
        drop_consumer(g, slot);
        self.require_group(&g.topic, &g.group).await?;
        if !g.options_fresh() {
            let options = self.read_options(g).await?;
            g.set_options(options);
        }
        let ch = self.open_channel(false).await?;
        call(
            "setting the prefetch",
            ch.basic_qos(self.prefetch, BasicQosOptions::default()),
        )
        .await
        .map_err(|e| e.into_error("setting the prefetch"))?;
        let consumer = call(
            "starting a consumer",
            ch.basic_consume(
                g.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
        .map_err(|e| e.into_error("starting a consumer"))?;
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        *g.channel.lock().unwrap_or_else(|e| e.into_inner()) = Some((generation, ch));
        *slot = Some(LiveConsumer {
            generation,
            consumer,
        });
        Ok(generation)
    }

    /// Turns a delivery into a leased message; `None` if it was out of attempts (then it is
    /// dead-lettered here).
    async fn accept(
        &self,
        g: &Group,
        generation: u64,
        delivery: lapin::message::Delivery,
        via_consumer: bool,
    ) -> Result<Option<ReceivedMessage>> {
        let options = g
            .options()
            .unwrap_or_else(|| StoredOptions::of(&GroupOptions::default()));
        let tag = delivery.delivery_tag;
        let properties = delivery.properties;
        let headers = properties.headers().clone().unwrap_or_default();
        let attempt = attempt_of(&headers, &g.queue);
        if options.max_attempts.is_some_and(|max| attempt > max) {
            // Only copies from delayed nacks get here: the broker counts its own returns.
            if let Some(ch) = g.channel_of(generation) {
                let _ = call(
                    "dead-lettering",
                    ch.basic_reject(tag, BasicRejectOptions { requeue: false }),
                )
                .await;
            }
            return Ok(None);
        }
        let body = Bytes::from(delivery.data);
        let message = ReceivedMessage {
            id: properties
                .message_id()
                .as_ref()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
            body: body.clone(),
            attributes: attributes_of(&headers),
            ordering_key: None,
            attempt,
            published_at: properties
                .timestamp()
                .map_or(UNIX_EPOCH, |s| UNIX_EPOCH + Duration::from_secs(s)),
            receipt: self.receipts.make(&format!("{generation}.{tag}")),
        };
        g.leases().insert(
            (generation, tag),
            Instant::now() + options.ack_deadline(),
            Leased {
                via_consumer,
                attempt,
                body,
                properties,
            },
        );
        Ok(Some(message))
    }

    /// Gives a delivery back: requeued, or dead-lettered when it was the last attempt.
    async fn give_back(&self, g: &Group, generation: u64, tag: u64, leased: &Leased) -> Result<()> {
        let Some(ch) = g.channel_of(generation) else {
            // The channel is gone: the broker gave the delivery back already.
            return Ok(());
        };
        let last = g
            .options()
            .and_then(|o| o.max_attempts)
            .is_some_and(|max| leased.attempt >= max);
        let result = if last {
            call(
                "dead-lettering",
                ch.basic_reject(tag, BasicRejectOptions { requeue: false }),
            )
            .await
        } else {
            call(
                "nacking",
                ch.basic_nack(
                    tag,
                    BasicNackOptions {
                        multiple: false,
                        requeue: true,
                    },
                ),
            )
            .await
        };
        result.map_err(|e| e.into_error("nacking"))
    }

    /// The group and lease key of a receipt.
    fn open_receipt(
        &self,
        topic: &str,
        group: &str,
        receipt: &str,
    ) -> Result<(Arc<Group>, (u64, u64))> {
        let inner = self.receipts.open(receipt)?;
        let key = inner
            .split_once('.')
            .and_then(|(g, t)| Some((g.parse::<u64>().ok()?, t.parse::<u64>().ok()?)))
            .ok_or_else(|| Error::invalid(BACKEND, "malformed receipt"))?;
        Ok((self.group(topic, group), key))
    }

    async fn declare_delay_queue(
        &self,
        name: &str,
        ttl_ms: u64,
        dlx: &str,
        dlk: Option<&str>,
    ) -> Result<()> {
        let mut args = FieldTable::default();
        args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(ttl_ms as i64),
        );
        args.insert(
            "x-expires".into(),
            AMQPValue::LongLongInt(ttl_ms.saturating_add(60_000) as i64),
        );
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(dlx.into()),
        );
        if let Some(key) = dlk {
            args.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(key.into()),
            );
        }
        let name = name.to_string();
        self.control("declaring a delay queue", |ch| async move {
            ch.queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                args,
            )
            .await
        })
        .await
        .map(|_| ())
        .map_err(|e| e.into_error("declaring a delay queue"))
    }
}

/// The attempt of a delivery in `queue`: the broker's count, plus what a delayed nack carried.
fn attempt_of(headers: &FieldTable, queue: &str) -> u32 {
    let mut attempt = 1u32;
    for (name, value) in headers.inner() {
        match name.as_str() {
            "x-delivery-count" => {
                let n = match value {
                    AMQPValue::LongLongInt(n) => *n,
                    AMQPValue::LongInt(n) => i64::from(*n),
                    AMQPValue::LongUInt(n) => i64::from(*n),
                    AMQPValue::ShortInt(n) => i64::from(*n),
                    AMQPValue::ShortUInt(n) => i64::from(*n),
                    AMQPValue::ShortShortInt(n) => i64::from(*n),
                    AMQPValue::ShortShortUInt(n) => i64::from(*n),
                    _ => 0,
                };
                attempt = attempt.saturating_add(u32::try_from(n.max(0)).unwrap_or(u32::MAX));
            }
            REDELIVERY_HEADER => {
                if let AMQPValue::LongString(s) = value {
                    let s = String::from_utf8_lossy(s.as_bytes());
                    if let Some((n, q)) = s.split_once(' ') {
                        if q == queue {
                            attempt = attempt.saturating_add(n.parse().unwrap_or(0));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    attempt
}

/// Whether an attribute name must travel escaped (it would look like a broker header).
fn needs_escape(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.starts_with("x-") || lower.starts_with(ESCAPE)
}

fn headers_of(attributes: &BTreeMap<String, String>) -> FieldTable {
    let mut headers = FieldTable::default();
    for (name, value) in attributes {
        let key = if needs_escape(name) {
            format!("{ESCAPE}{name}")
        } else {
            name.clone()
        };
        headers.insert(
            key.into(),
            AMQPValue::LongString(LongString::from(value.as_bytes())),
        );
    }
    headers
}

fn attributes_of(headers: &FieldTable) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (name, value) in headers.inner() {
        let name = name.as_str();
        let name = if let Some(escaped) = name.strip_prefix(ESCAPE) {
            escaped
        } else if name.to_ascii_lowercase().starts_with("x-") {
            continue;
        } else {
            name
        };
        let value = match value {
            AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            AMQPValue::ShortString(s) => s.as_str().to_string(),
            _ => continue,
        };
        out.insert(name.to_string(), value);
    }
    out
}

/// The headers of a copy: the user's attributes and the attempts so far in `queue`.
fn redelivery_headers(original: &BasicProperties, attempt: u32, queue: &str) -> FieldTable {
    let mut headers = FieldTable::default();
    if let Some(h) = original.headers() {
        for (name, value) in h.inner() {
            if !name.as_str().to_ascii_lowercase().starts_with("x-") {
                headers.insert(name.clone(), value.clone());
            }
        }
    }
    headers.insert(
        REDELIVERY_HEADER.into(),
        AMQPValue::LongString(format!("{attempt} {queue}").into()),
    );
    headers
}

/// The group queue's arguments: the same for every group, so that re-creating a group with
/// other options never meets RabbitMQ's "inequivalent arguments".
fn group_args(topic: &str, group: &str) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(dead_letter_exchange(topic, group).into()),
    );
    args
}

fn persistent(properties: BasicProperties) -> BasicProperties {
    properties.with_delivery_mode(2)
}

#[async_trait]
impl MessageQueue for RabbitMqQueue {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            backend: BACKEND.to_string(),
            location: self.location.clone(),
        }
    }

    fn capabilities(&self) -> QueueCapabilities {
        // Why each: see the module docs.
        let mut caps = QueueCapabilities::full();
        caps.ordering_keys = false;
        caps.deduplication = false;
        caps.portable_receipts = false;
        caps.max_message_size = Some(MAX_MESSAGE_SIZE);
        caps
    }

    #[instrument(level = "debug", skip_all, fields(backend = BACKEND, topic = %topic), err(level = "debug"))]
    async fn create_topic(&self, topic: &str) -> Result<()> {
        checks::topic(BACKEND, topic)?;
        let name = exchange_name(topic);
        self.inner
            .control("creating the topic", |ch| async move {
                ch.exchange_declare(
                    name.as_str().into(),
                    lapin::ExchangeKind::Fanout,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..ExchangeDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
            })
            .await
            .map_err(|e| e.into_error("creating the topic"))
    }

    #[instrument(level = "debug", skip_all, fields(backend = BACKEND, topic = %topic), err(level = "debug"))]
    async fn delete_topic(&self, topic: &str) -> Result<()> {
        checks::topic(BACKEND, topic)?;
        let name = exchange_name(topic);
        match self
            .inner
            .control("deleting the topic", |ch| async move {
                ch.exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
                    .await
            })
            .await
        {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into_error("deleting the topic")),
        }
        // The groups: those in the directory, and those this handle knows.
        let directory = directory_queue(topic);
        let mut groups: Vec<String> = self
            .inner
            .groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|g| g.topic == topic)
            .map(|g| g.group.clone())
            .collect();
        loop {
            let name = directory.clone();
            let got = self
                .inner
                .control("reading the topic's groups", |ch| async move {
                    ch.basic_get(name.as_str().into(), BasicGetOptions { no_ack: true })
                        .await
                })
                .await;
            match got {
                Ok(Some(m)) => groups.push(String::from_utf8_lossy(&m.delivery.data).into_owned()),
                Ok(None) => break,
                Err(e) if e.is_not_found() => break,
                Err(e) => return Err(e.into_error("reading the topic's groups")),
            }
        }
        groups.sort();
        groups.dedup();
        for group in groups {
            if checks::topic_group(BACKEND, topic, &group).is_err() {
                continue;
            }
            let queue = queue_name(topic, &group);
            self.inner.forget_group(&queue).await;
            self.inner.delete_group_objects(topic, &group).await?;
        }
        self.inner.delete_queue(&directory).await
    }

    #[instrument(level = "debug", skip_all, fields(backend = BACKEND, topic = %topic, group = %group), err(level = "debug"))]
    async fn create_group(&self, topic: &str, group: &str, options: GroupOptions) -> Result<()> {
        checks::topic_group(BACKEND, topic, group)?;
        checks::group_options(BACKEND, &self.capabilities(), topic, &options)?;
        self.inner.require_topic(topic).await?;
        if let Some(dlq) = &options.dead_letter_topic {
            if !self.inner.exchange_exists(&exchange_name(dlq)).await? {
                return Err(Error::not_found(
                    BACKEND,
                    format!("dead-letter topic `{dlq}` not found"),
                ));
            }
        }
        let queue = queue_name(topic, group);
        let args = group_args(topic, group);
        let (q, exchange, dead) = (
            queue.clone(),
            exchange_name(topic),
            dead_letter_exchange(topic, group),
        );
        self.inner
            .control("creating the group", |ch| async move {
                ch.exchange_declare(
                    dead.as_str().into(),
                    lapin::ExchangeKind::Fanout,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..ExchangeDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
                ch.queue_declare(
                    q.as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..QueueDeclareOptions::default()
                    },
                    args,
                )
                .await?;
                ch.queue_bind(
                    q.as_str().into(),
                    exchange.as_str().into(),
                    "".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
            })
            .await
            .map_err(|e| e.into_error("creating the group"))?;
        // The dead-letter route: the group's own exchange, bound to the dead-letter topic's
        // exchange; re-pointed when the options change (queue arguments cannot change).
        let previous = match self
            .inner
            .queue_exists(&options_queue(topic, group))
            .await?
        {
            true => self
                .inner
                .read_options(&Group::new(topic, group))
                .await
                .ok()
                .and_then(|o| o.dead_letter_topic),
            false => None,
        };
        let dead = dead_letter_exchange(topic, group);
        if let Some(old) = previous.filter(|old| Some(old) != options.dead_letter_topic.as_ref()) {
            let (dead, old) = (dead.clone(), exchange_name(&old));
            match self
                .inner
                .control("re-pointing dead letters", |ch| async move {
                    ch.exchange_unbind(
                        old.as_str().into(),
                        dead.as_str().into(),
                        "".into(),
                        ExchangeUnbindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                })
                .await
            {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into_error("re-pointing dead letters")),
            }
        }
        if let Some(dlq) = &options.dead_letter_topic {
            let (dead, target) = (dead.clone(), exchange_name(dlq));
            self.inner
                .control("routing dead letters", |ch| async move {
                    ch.exchange_bind(
                        target.as_str().into(),
                        dead.as_str().into(),
                        "".into(),
                        ExchangeBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                })
                .await
                .map_err(|e| e.into_error("routing dead letters"))?;
        }
        let stored = StoredOptions::of(&options);
        let mut max_one = FieldTable::default();
        max_one.insert("x-max-length".into(), AMQPValue::LongLongInt(1));
        let (oq, dq) = (options_queue(topic, group), directory_queue(topic));
        let (oq2, dq2) = (oq.clone(), dq.clone());
        self.inner
            .control("creating the group", |ch| async move {
                ch.queue_declare(
                    oq2.as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..QueueDeclareOptions::default()
                    },
                    max_one,
                )
                .await?;
                ch.queue_declare(
                    dq2.as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
            })
            .await
            .map_err(|e| e.into_error("creating the group"))?;
        let json = serde_json::to_vec(&stored)
            .map_err(|e| Error::internal(BACKEND, "group options").with_source(e))?;
        self.inner
            .publish_confirmed(
                "storing the group options",
                vec![
                    (
                        String::new(),
                        oq,
                        Bytes::from(json),
                        persistent(BasicProperties::default()),
                    ),
                    (
                        String::new(),
                        dq,
                        Bytes::from(group.to_string()),
                        persistent(BasicProperties::default()),
                    ),
                ],
            )
            .await?;
        self.inner.group(topic, group).set_options(stored);
        Ok(())
    }

    #[instrument(level = "debug", skip_all, fields(backend = BACKEND, topic = %topic, group = %group), err(level = "debug"))]
    async fn delete_group(&self, topic: &str, group: &str) -> Result<()> {
        checks::topic_group(BACKEND, topic, group)?;
        let queue = queue_name(topic, group);
        self.inner.forget_group(&queue).await;
        self.inner.delete_group_objects(topic, group).await
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
        if messages.is_empty() {
            self.inner.require_topic(topic).await?;
            return Ok(Vec::new());
        }
        let exchange = exchange_name(topic);
        let delayed = messages
            .iter()
            .any(|m| m.delay.is_some_and(|d| !d.is_zero()));
        if delayed {
            // The default exchange takes anything: check the topic first.
            self.inner.require_topic(topic).await?;
        }
        let mut declared = Vec::new();
        let mut ids = Vec::with_capacity(messages.len());
        let mut items = Vec::with_capacity(messages.len());
        let timestamp = now_secs();
        for m in messages {
            let id = uuid::Uuid::new_v4().simple().to_string();
            let properties = persistent(
                BasicProperties::default()
                    .with_message_id(id.as_str().into())
                    .with_timestamp(timestamp)
                    .with_headers(headers_of(&m.attributes)),
            );
            match m.delay.filter(|d| !d.is_zero()) {
                Some(delay) => {
                    let ms = delay_bucket(delay);
                    let queue = format!("{PREFIX}.{topic}:delay.{ms}");
                    if !declared.contains(&ms) {
                        self.inner
                            .declare_delay_queue(&queue, ms, &exchange, None)
                            .await?;
                        declared.push(ms);
                    }
                    items.push((String::new(), queue, m.body, properties));
                }
                None => items.push((exchange.clone(), String::new(), m.body, properties)),
            }
            ids.push(id);
        }
        match self.inner.publish_confirmed("publishing", items).await {
            Err(e) if e.kind() == ErrorKind::NotFound => Err(Error::not_found(
                BACKEND,
                format!("topic `{topic}` not found"),
            )),
            other => other.map(|()| ids),
        }
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
        let inner = &self.inner;
        let g = inner.group(topic, group);
        if !g.options_fresh() {
            if let Ok(o) = inner.read_options(&g).await {
                g.set_options(o);
            }
        }
        let mut slot = g.consumer.lock().await;
        let mut out = Vec::new();
        let mut lost = 0;
        loop {
            let generation = inner.ensure_consumer(&g, &mut slot).await?;
            let starved = g.leases().count(|l| l.via_consumer) >= usize::from(inner.prefetch);
            let mut ended = false;
            // What is already here, without waiting.
            while out.len() < options.max_messages {
                let Some(live) = slot.as_mut() else { break };
                match live.consumer.next().now_or_never() {
                    Some(Some(Ok(d))) => {
                        if let Some(m) = inner.accept(&g, generation, d, true).await? {
                            out.push(m);
                        }
                    }
                    Some(_) => {
                        ended = true;
                        break;
                    }
                    None => break,
                }
            }
            if !out.is_empty() {
                return Ok(out);
            }
            if starved && !ended {
                // The prefetch is full of leased messages: fetch past it.
                let ch = g.channel_of(generation);
                if let Some(ch) = ch {
                    let queue = g.queue.clone();
                    while out.len() < options.max_messages {
                        let got = call(
                            "receiving",
                            ch.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false }),
                        )
                        .await
                        .map_err(|e| e.into_error("receiving"))?;
                        let Some(got) = got else { break };
                        if let Some(m) = inner.accept(&g, generation, got.delivery, false).await? {
                            out.push(m);
                        }
                    }
                    if !out.is_empty() {
                        return Ok(out);
                    }
                }
            }
            let now = Instant::now();
            if ended {
                // Cancelled by the broker (group deleted) or channel lost: reopen, which
                // reports a missing group as NotFound.
                drop_consumer(&g, &mut slot);
                lost += 1;
                if lost > 2 {
                    return Err(Error::unavailable(BACKEND, "the consumer keeps being lost"));
                }
                continue;
            }
            if now >= give_up {
                return Ok(out);
            }
            let wait = if starved {
                GET_POLL.min(give_up - now)
            } else {
                give_up - now
            };
            let Some(live) = slot.as_mut() else { continue };
            match tokio::time::timeout(wait, live.consumer.next()).await {
                Ok(Some(Ok(d))) => {
                    if let Some(m) = inner.accept(&g, generation, d, true).await? {
                        out.push(m);
                    }
                }
                Ok(_) => {
                    drop_consumer(&g, &mut slot);
                    lost += 1;
                    if lost > 2 {
                        return Err(Error::unavailable(BACKEND, "the consumer keeps being lost"));
                    }
                }
                Err(_) => {}
            }
        }
    }

    #[instrument(level = "debug", skip_all, fields(backend = BACKEND, topic = %topic, group = %group), err(level = "debug"))]
    async fn ack(&self, topic: &str, group: &str, receipt: &str) -> Result<()> {
        checks::topic_group(BACKEND, topic, group)?;
        let (g, key) = self.inner.open_receipt(topic, group, receipt)?;
        let settled = g.leases().settle(&key, Outcome::Acked)?;
        if let Settle::AlreadyAcked = settled {
            return Ok(());
        }
        let Some(ch) = g.channel_of(key.0) else {
            g.leases().mark(key, Outcome::Released);
            return Err(Error::unavailable(
                BACKEND,
                "the channel of this delivery was lost; the message will be delivered again",
            ));
        };
        // The qos round trip confirms the ack: the broker handles a channel's methods in order.
        let prefetch = self.inner.prefetch;
        let result = call("acknowledging", async {
            ch.basic_ack(key.1, BasicAckOptions::default()).await?;
            ch.basic_qos(prefetch, BasicQosOptions::default()).await
        })
        .await;
        result.map_err(|e| {
            g.leases().mark(key, Outcome::Released);
            e.into_error("acknowledging")
        })
    }

    #[instrument(level = "debug", skip_all, fields(backend = BACKEND, topic = %topic, group = %group), err(level = "debug"))]
    async fn nack(&self, topic: &str, group: &str, receipt: &str, delay: Duration) -> Result<()> {
        checks::topic_group(BACKEND, topic, group)?;
        checks::nack_delay(BACKEND, &self.capabilities(), delay)?;
        let (g, key) = self.inner.open_receipt(topic, group, receipt)?;
        let leased = match g.leases().settle(&key, Outcome::Released)? {
            Settle::Live(leased) => leased,
            Settle::AlreadyAcked => {
                return Err(Error::new(
                    ErrorKind::PreconditionFailed,
                    BACKEND,
                    "the delivery of this receipt was already acknowledged",
                ));
            }
        };
        let last = g
            .options()
            .and_then(|o| o.max_attempts)
            .is_some_and(|max| leased.attempt >= max);
        if delay.is_zero() || last {
            return self.inner.give_back(&g, key.0, key.1, &leased).await;
        }
        // A copy through a TTL queue that dead-letters into this group's queue only, carrying
        // the attempts so far; then the original is acknowledged.
        let ms = delay_bucket(delay);
        let delay_queue = format!("{}:delay.{ms}", g.queue);
        self.inner
            .declare_delay_queue(&delay_queue, ms, "", Some(&g.queue))
            .await?;
        let properties = leased.properties.clone().with_headers(redelivery_headers(
            &leased.properties,
            leased.attempt,
            &g.queue,
        ));
        self.inner
            .publish_confirmed(
                "nacking with a delay",
                vec![(String::new(), delay_queue, leased.body.clone(), properties)],
            )
            .await?;
        let Some(ch) = g.channel_of(key.0) else {
            // Lost meanwhile: the broker gives the original back too (a duplicate).
            return Ok(());
        };
        call(
            "nacking with a delay",
            ch.basic_ack(key.1, BasicAckOptions::default()),
        )
        .await
        .map_err(|e| e.into_error("nacking with a delay"))
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
        let (g, key) = self.inner.open_receipt(topic, group, receipt)?;
        g.leases().extend(&key, Instant::now() + extension)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_round_up_to_two_digits() {
        assert_eq!(delay_bucket(Duration::ZERO), 1);
        assert_eq!(delay_bucket(Duration::from_millis(97)), 97);
        assert_eq!(delay_bucket(Duration::from_millis(1500)), 1500);
        assert_eq!(delay_bucket(Duration::from_millis(1234)), 1300);
        assert_eq!(delay_bucket(Duration::from_millis(99_001)), 100_000);
    }

    #[test]
    fn attributes_survive_the_header_escape() {
        let attributes: BTreeMap<String, String> = [
            ("vin", "1"),
            ("x-death", "mine"),
            ("X-Custom", "2"),
            ("paas.thing", "3"),
            ("Paas.Other", "4"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut headers = headers_of(&attributes);
        headers.insert("x-delivery-count".into(), AMQPValue::LongLongInt(2));
        assert_eq!(attributes_of(&headers), attributes);
        assert_eq!(attempt_of(&headers, "q"), 3);
    }
}
