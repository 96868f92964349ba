//! The NATS JetStream queue, through async-nats.
//!
//! - **Layout.** A topic is a stream named `<PREFIX>_<topic>` capturing the one subject
//!   `<prefix>.<topic>` (the prefix is the URL's `prefix`, default `mq`, ASCII letters and
//!   digits only, so that no two (prefix, topic) pairs share a stream name). File storage,
//!   **interest retention** (a message is removed once every group has acknowledged it, and a
//!   message published while the topic has no group is not kept: no group could ever see it),
//!   a de-duplication window of 2 minutes. A group is a durable pull consumer named as the
//!   group, with explicit acks, `DeliverPolicy::New` (a group sees only what is published after
//!   it was created), `ack_wait` = the ack deadline, unlimited `max_deliver` and
//!   `max_ack_pending`; its `max_attempts` and dead-letter topic are written into the
//!   consumer's description (`paas-components queue group; max_attempts=N;
//!   dead_letter_topic=T`), so every handle reads the same settings from the server.
//! - **Messages.** The body is the payload. The id travels as `Nats-Msg-Id` (generated when the
//!   caller gives none), so the server de-duplicates by it. Attributes are headers named as the
//!   attribute; a name starting with `Nats-` (the server's namespace) or `Attr-` is written with
//!   an `Attr-` prefix, and a value that starts with `"` or starts or ends with a space is
//!   wrapped in `"…"` (header values lose surrounding spaces on the wire). `published_at` is the
//!   stream's timestamp, `attempt` the delivery count, both from the ack subject.
//! - **Receipts** are the ack subjects the server gave (`$JS.ACK.<stream>.<consumer>.<delivery
//!   count>.<stream seq>.…`): any connection may publish to them, so receipts are portable. A
//!   receipt is checked to be an ack subject of the topic's stream and the group's consumer
//!   before anything is sent (a malformed one, or one of another group, is `InvalidArgument`).
//!
//! # Semantics
//!
//! - **Lease.** `ack_wait` is the lease; the server redelivers after it by itself.
//! - **Ack** is `+ACK` sent as a request: it returns once the server answered, so an
//!   acknowledged ack is applied (a double ack, AckSync). Repeating it succeeds.
//! - **Nack** is `-NAK`, with a delay `-NAK {"delay": ns}`: the message is not delivered again
//!   before the delay ends.
//! - **Extend** is a `-NAK` with the extension as its delay, not `+WPI`: the server handles a
//!   delayed nak by moving the pending message's timer to now + delay without redelivering it
//!   meanwhile, which is exactly "the lease ends `extension` from now"; `+WPI` restarts the
//!   timer for `ack_wait` only, whatever extension was asked for.
//! - **Stale receipts.** The server applies an ack, nak or term of an *earlier* delivery to the
//!   pending one (it keys them by stream sequence only). So each handle remembers the deliveries
//!   it received and settled (`queue::emulation::deliveries`, shared with other backends): a
//!   receipt whose delivery count is lower than one this handle has received since is
//!   `PreconditionFailed`, as is a nack or an extension of a delivery this handle acknowledged or
//!   nacked. Limit: when the later delivery went to *another* handle, this handle cannot know,
//!   and the stale receipt settles the message the other consumer is working on (an ack: the
//!   message was processed by the first consumer; a nack: it is delivered once more). No
//!   server call tells deliveries apart (the consumer's pending state is not readable per
//!   message), and keeping lease records in the server would cost a write per delivery.
//! - **Dead-lettering.** JetStream's own `max_deliver` is not used: once reached, the server
//!   stops delivering the message and publishes one advisory, which can be missed, so the
//!   message would be stuck. Instead a delivery whose count exceeds `max_attempts` is not handed
//!   to the caller: the handle that receives it publishes it to the dead-letter topic (same
//!   body, attributes and id; the id de-duplicates a repeated dead-lettering) and then
//!   terminates it (`+TERM`). If the publish fails, the message is left leased and comes back
//!   after the ack deadline, to be tried again; without a dead-letter topic it is terminated
//!   (dropped). The group settings a handle uses are re-read from the server every 5 s, and
//!   before dead-lettering.
//! - **Long polling.** A receive first pulls without waiting (`no_wait`); if that finds nothing
//!   it pulls one message with `expires` = the wait, and then the rest without waiting. A pull
//!   for many messages with an expiry would keep delivering into a receive that has already
//!   returned, leasing messages nobody holds.
//! - **Not supported** (return `Unsupported`): ordering keys (JetStream cannot hold back one key
//!   while delivering others within one consumer) and delayed publishing (per-message schedules
//!   need NATS 2.12; the servers here run 2.9).
//! - **Sizes.** `max_message_size` is the server's `max_payload` less 128 KiB kept for the
//!   headers (the most that 100 attributes and an id can take), so that every body up to the
//!   limit fits with any valid attributes.
//!
//! # Failure behaviour
//!
//! The client reconnects by itself (every 100 ms at first, then every second), and the same
//! handle works again once the server is back. While the connection is down every call fails
//! at once with [`Unavailable`](ErrorKind::Unavailable) rather than queueing in the client's
//! buffer; a call whose answer does not come within 5 s is
//! [`DeadlineExceeded`](ErrorKind::DeadlineExceeded). Both are retryable. A publish that failed
//! may still have been stored (its answer was lost): retry it with the same message id and the
//! server drops the copy. A `publish_batch` is not atomic: on failure a prefix of it may be
//! stored. A receive cut off mid-way returns what it got; messages delivered to it after that
//! come back after their ack deadline. An ack that failed may or may not have been applied;
//! repeating it is safe.

use super::checks;
use super::emulation::deliveries::{DeliveryLog, Settle, Verdict};
use super::emulation::receipt::Receipts;
use async_nats::connection::State;
use async_nats::jetstream::{self, AckKind};
use async_nats::{HeaderMap, HeaderValue, StatusCode};
use async_trait::async_trait;
use bytes::Bytes;
use cloud_abstraction::queue::{
    GroupOptions, Message, MessageQueue, QueueCapabilities, ReceiveOptions, ReceivedMessage,
};
use cloud_abstraction::{BackendInfo, Error, ErrorKind, Location, ResourceUrl, Result};
use futures::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};
use tracing::{instrument, warn};

const BACKEND: &str = "nats";
const DEFAULT_PREFIX: &str = "mq";
const MAX_PREFIX_LEN: usize = 32;
/// The stream's de-duplication window (`Nats-Msg-Id`).
const DEDUP_WINDOW: Duration = Duration::from_secs(120);
/// Kept off `max_payload` for headers: 100 attributes of 128 + 1024 bytes (+ escapes) and an id.
const HEADER_RESERVE: u64 = 128 * 1024;
/// How long any request may wait for the server's answer.
const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long past a pull's own expiry its terminating status may take.
const PULL_GRACE: Duration = Duration::from_secs(2);
/// How long a handle uses the group settings it read before reading them again.
const GROUP_TTL: Duration = Duration::from_secs(5);
/// Header prefix that escapes attribute names the server or this module would read.
const ATTR_ESCAPE: &str = "Attr-";
const NATS_MSG_ID: &str = "Nats-Msg-Id";
const GROUP_DESCRIPTION: &str = "paas-components queue group";
/// JetStream API error codes.
const STREAM_NOT_FOUND: u64 = 10059;
const CONSUMER_NOT_FOUND: u64 = 10014;
const STREAM_NAME_EXISTS: u64 = 10058;

/// A [`MessageQueue`] on NATS JetStream: a stream per topic, a durable pull consumer per group
/// (see the [module docs](self) for the layout and how each capability maps).
///
/// Cheap to clone; clones share the connection and what the handle knows of its deliveries.
///
/// ```no_run
/// # async fn demo() -> cloud_abstraction::Result<()> {
/// use cloud_abstraction::MessageQueue;
/// use cloud_abstraction::queue::{GroupOptions, Message, ReceiveOptions};
/// use paas_components::queue::NatsQueue;
///
/// let q = NatsQueue::connect("nats://127.0.0.1:4222?prefix=fleet").await?;
/// q.create_topic("commands").await?;
/// q.create_group("commands", "workers", GroupOptions::default()).await?;
/// q.publish("commands", Message::new("unlock")).await?;
/// let got = q.receive("commands", "workers", ReceiveOptions::default()).await?;
/// q.ack("commands", "workers", &got[0].receipt).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct NatsQueue {
    inner: Arc<Inner>,
    location: Location,
}

struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    prefix: String,
    max_message_size: u64,
    groups: Mutex<HashMap<(String, String), Group>>,
    deliveries: Mutex<DeliveryLog>,
    receipts: Receipts,
    /// Counts the connection's losses, so that a call waiting for an answer fails at once.
    disconnects: tokio::sync::watch::Receiver<u64>,
}

impl fmt::Debug for NatsQueue {
    // The client (and the URL it was given, which may hold credentials) is not shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsQueue")
            .field("prefix", &self.inner.prefix)
            .field("location", &self.location)
            .field("max_message_size", &self.inner.max_message_size)
            .finish_non_exhaustive()
    }
}

/// A group's settings as the server has them.
#[derive(Debug, Clone)]
struct Group {
    ack_wait: Duration,
    max_attempts: Option<u64>,
    dead_letter_topic: Option<String>,
    read_at: Instant,
}

/// The parts of an ack subject this module uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AckSubject<'a> {
    stream: &'a str,
    consumer: &'a str,
    delivery: u64,
    stream_seq: u64,
    timestamp_ns: u64,
}

/// Parses `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>` and the
/// newer form with `<domain>.<account hash>` before the stream and a token after `pending`.
fn parse_ack_subject(subject: &str) -> Option<AckSubject<'_>> {
    let rest = subject.strip_prefix("$JS.ACK.")?;
    let tokens: Vec<&str> = rest.split('.').collect();
    let t = match tokens.len() {
        7 => &tokens[..],
        9 | 10 => &tokens[2..9],
        _ => return None,
    };
    let number = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    if !name_ok(t[0]) || !name_ok(t[1]) {
        return None;
    }
    number(t[4])?;
    number(t[6])?;
    Some(AckSubject {
        stream: t[0],
        consumer: t[1],
        delivery: number(t[2])?,
        stream_seq: number(t[3])?,
        timestamp_ns: number(t[5])?,
    })
}

/// The header name of attribute `name` (see the module docs).
fn attribute_header(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    if lower.starts_with("nats-") || lower.starts_with(&ATTR_ESCAPE.to_ascii_lowercase()) {
        format!("{ATTR_ESCAPE}{name}")
    } else {
        name.to_string()
    }
}

/// The attribute a header carries, if it carries one.
fn header_attribute(header: &str) -> Option<&str> {
    if let Some(name) = header.strip_prefix(ATTR_ESCAPE) {
        return Some(name);
    }
    (!header.to_ascii_lowercase().starts_with("nats-")).then_some(header)
}

/// A header value that reads back as `value` (the wire trims surrounding spaces).
fn encode_value(value: &str) -> String {
    if value.starts_with('"') || value.starts_with(' ') || value.ends_with(' ') {
        format!("\"{value}\"")
    } else {
        value.to_string()
    }
}

fn decode_value(value: &str) -> &str {
    if value.len() >= 2 && value.starts_with('"') && value.ends_with('"') {
        &value[1..value.len() - 1]
    } else {
        value
    }
}

fn description(options: &GroupOptions) -> String {
    let mut d = GROUP_DESCRIPTION.to_string();
    if let Some(n) = options.max_attempts {
        d.push_str(&format!("; max_attempts={n}"));
    }
    if let Some(t) = &options.dead_letter_topic {
        d.push_str(&format!("; dead_letter_topic={t}"));
    }
    d
}

fn parse_description(description: Option<&str>) -> (Option<u64>, Option<String>) {
    let (mut max, mut dlq) = (None, None);
    for part in description.unwrap_or_default().split(';').map(str::trim) {
        if let Some(n) = part.strip_prefix("max_attempts=") {
            max = n.parse().ok();
        } else if let Some(t) = part.strip_prefix("dead_letter_topic=") {
            dlq = Some(t.to_string());
        }
    }
    (max, dlq)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The JetStream API's answer: the value, or the server's error.
enum Api<T> {
    Ok(T),
    Err(jetstream::Error),
}

fn api_error(operation: &str, e: &jetstream::Error) -> Error {
    let code = e.error_code().0;
    let kind = match (code, e.code()) {
        (STREAM_NOT_FOUND | CONSUMER_NOT_FOUND, _) | (_, 404) => ErrorKind::NotFound,
        (_, 503) => ErrorKind::Unavailable,
        (_, 429) => ErrorKind::ResourceExhausted,
        (_, 400) => ErrorKind::InvalidArgument,
        _ => ErrorKind::Internal,
    };
    // The server's description names the rule that was broken, never a secret.
    Error::new(kind, BACKEND, format!("{operation}: {e}"))
}

fn request_error(operation: &str, e: async_nats::RequestError) -> Error {
    use async_nats::RequestErrorKind;
    match e.kind() {
        RequestErrorKind::TimedOut => Error::new(
            ErrorKind::DeadlineExceeded,
            BACKEND,
            format!("{operation}: the NATS server did not answer in time"),
        ),
        RequestErrorKind::NoResponders => Error::new(
            ErrorKind::NotFound,
            BACKEND,
            format!("{operation}: nothing answers (JetStream resource absent)"),
        ),
        RequestErrorKind::Other => Error::unavailable(
            BACKEND,
            format!("{operation}: the NATS server is not reachable"),
        ),
    }
    .with_source(e)
}

fn stream_not_found(topic: &str) -> Error {
    Error::not_found(BACKEND, format!("topic `{topic}` not found"))
}

fn group_not_found(topic: &str, group: &str) -> Error {
    Error::not_found(
        BACKEND,
        format!("group `{group}` of topic `{topic}` not found"),
    )
}

impl NatsQueue {
    /// Connects to `url`: `nats://[user:password@]host[:port]`. Query parameters: `prefix`
    /// (the namespace of streams and subjects, default `mq`; ASCII letters and digits, at most
    /// 32) and `provider`, `region`, `zone` for the reported location (see
    /// [`Location::from_url`]; default [`Location::unknown`]). Any other parameter is
    /// [`InvalidArgument`](ErrorKind::InvalidArgument), naming the parameter only. A server that
    /// cannot be reached, or without JetStream, is [`Unavailable`](ErrorKind::Unavailable).
    #[instrument(level = "debug", skip_all, fields(backend = BACKEND), err(level = "debug"))]
    pub async fn connect(url: &str) -> Result<Self> {
        // The URL may hold a password: no message quotes it.
        let mut parsed = url::Url::parse(url)
            .map_err(|e| Error::invalid(BACKEND, format!("malformed NATS URL: {e}")))?;
        if parsed.scheme() != "nats" {
            return Err(Error::invalid(
                BACKEND,
                format!(
                    "a NATS URL starts with `nats://`, not `{}://`",
                    parsed.scheme()
                ),
            ));
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(Error::invalid(BACKEND, "the NATS URL names no host"));
        }
        let location = ResourceUrl::parse(url)
            .and_then(|u| Location::from_url(&u))
            .map_err(|e| Error::invalid(BACKEND, e.message()))?
            .unwrap_or_else(Location::unknown);
        let mut prefix = DEFAULT_PREFIX.to_string();
        for (k, v) in parsed.query_pairs() {
            match k.as_ref() {
                "prefix" => prefix = v.into_owned(),
                k if Location::URL_PARAMS.contains(&k) => {}
                other => {
                    return Err(Error::invalid(
                        BACKEND,
                        format!(
                            "unknown NATS URL parameter `{other}` (known: prefix, provider, region, zone)"
                        ),
                    ));
                }
            }
        }
        if prefix.is_empty()
            || prefix.len() > MAX_PREFIX_LEN
            || !prefix.starts_with(|c: char| c.is_ascii_alphabetic())
            || !prefix.chars().all(|c| c.is_ascii_alphanumeric())
        {
            return Err(Error::invalid(
                BACKEND,
                format!(
                    "the prefix must be 1 to {MAX_PREFIX_LEN} ASCII letters and digits, starting \
                     with a letter"
                ),
            ));
        }
        if !parsed.path().is_empty() && parsed.path() != "/" {
            return Err(Error::invalid(BACKEND, "a NATS URL has no path"));
        }
        parsed.set_query(None);
        parsed.set_fragment(None);
        // A server that asks for TLS is answered with rustls, which needs a process default
        // provider when more than one is compiled into the application.
        crate::tls::ensure_default_provider();
        let (lost, disconnects) = tokio::sync::watch::channel(0u64);
        let options = async_nats::ConnectOptions::new()
            .name("paas-components")
            .event_callback(move |event| {
                if matches!(event, async_nats::Event::Disconnected) {
                    lost.send_modify(|n| *n += 1);
                    warn!(
                        backend = BACKEND,
                        "connection to the NATS server lost; reconnecting"
                    );
                }
                async {}
            })
            .connection_timeout(Duration::from_secs(3))
            .request_timeout(Some(OP_TIMEOUT))
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((attempts as u64).saturating_mul(100).clamp(100, 1000))
            });
        let client = options.connect(parsed.as_str()).await.map_err(|e| {
            use async_nats::ConnectErrorKind as K;
            let kind = match e.kind() {
                K::ServerParse | K::Dns => ErrorKind::InvalidArgument,
                K::Authentication | K::AuthorizationViolation => ErrorKind::Unauthenticated,
                _ => ErrorKind::Unavailable,
            };
            Error::new(
                kind,
                BACKEND,
                format!("connect to the NATS server: {}", e.kind()),
            )
            .with_source(e)
        })?;
        let max_payload = client.server_info().max_payload as u64;
        let max_message_size = max_payload.checked_sub(HEADER_RESERVE).ok_or_else(|| {
            Error::internal(
                BACKEND,
                format!(
                    "the server's max_payload of {max_payload} bytes leaves no room for headers"
                ),
            )
        })?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(OP_TIMEOUT);
        let queue = Self {
            inner: Arc::new(Inner {
                client,
                js,
                prefix,
                max_message_size,
                groups: Mutex::default(),
                deliveries: Mutex::default(),
                receipts: Receipts::portable(BACKEND),
                disconnects,
            }),
            location,
        };
        // Fail here, not at the first call, when the server has no JetStream.
        match queue
            .api::<serde_json::Value>("connect", "INFO".to_string(), &serde_json::json!({}))
            .await
        {
            Ok(Api::Ok(_)) => Ok(queue),
            Ok(Api::Err(e)) => Err(api_error("connect: JetStream account info", &e)),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(Error::unavailable(
                BACKEND,
                "the NATS server has no JetStream (start it with -js)",
            )),
            Err(e) => Err(e),
        }
    }

    /// Reports `location` in [`info`](MessageQueue::info).
    pub fn with_location(mut self, location: Location) -> Self {
        self.location = location;
        self
    }

    /// The async-nats client: **non-portable**; what is done through it may break the queue's
    /// invariants.
    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }

    /// The stream that holds `topic`.
    pub fn stream_name(&self, topic: &str) -> String {
        format!("{}_{topic}", self.inner.prefix.to_ascii_uppercase())
    }

    /// The subject `topic`'s messages are published on.
    pub fn subject(&self, topic: &str) -> String {
        format!("{}.{topic}", self.inner.prefix)
    }

    fn connected(&self, operation: &str) -> Result<()> {
        if self.inner.client.connection_state() == State::Connected {
            Ok(())
        } else {
            Err(Error::unavailable(
                BACKEND,
                format!("{operation}: not connected to the NATS server (reconnecting)"),
            ))
        }
    }

    /// Runs `call`, failing with `Unavailable` as soon as the connection is lost meanwhile: the
    /// client would keep waiting for an answer that may come after the reconnect, or never.
    async fn unless_disconnected<T>(
        &self,
        operation: &str,
        call: impl std::future::Future<Output = T>,
    ) -> Result<T> {
        let mut lost = self.inner.disconnects.clone();
        lost.borrow_and_update();
        tokio::select! {
            value = call => Ok(value),
            () = async {
                if lost.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            } => Err(Error::unavailable(
                BACKEND,
                format!(
                    "{operation}: the connection to the NATS server was lost; it may or may not \
                     have been applied"
                ),
            )),
        }
    }

    /// One JetStream API request (`$JS.API.<subject>`).
    async fn api<T: DeserializeOwned>(
        &self,
        operation: &str,
        subject: String,
        payload: &impl Serialize,
    ) -> Result<Api<T>> {
        use async_nats::jetstream::context::RequestErrorKind as K;
        use async_nats::jetstream::response::Response;
        self.connected(operation)?;
        match self
            .unless_disconnected(operation, self.inner.js.request(subject, payload))
            .await?
        {
            Ok(Response::Ok(value)) => Ok(Api::Ok(value)),
            Ok(Response::Err { error }) => Ok(Api::Err(error)),
            Err(e) => {
                let (kind, what) = match e.kind() {
                    K::TimedOut => (
                        ErrorKind::DeadlineExceeded,
                        "the NATS server did not answer in time",
                    ),
                    K::NoResponders => (ErrorKind::NotFound, "JetStream does not answer"),
                    K::Other => (ErrorKind::Unavailable, "the NATS server is not reachable"),
                };
                Err(Error::new(kind, BACKEND, format!("{operation}: {what}")).with_source(e))
            }
        }
    }

    /// The group's settings: cached for [`GROUP_TTL`], else read from the server (`NotFound`
    /// for an unknown topic or group).
    async fn group(&self, topic: &str, group: &str, fresh: bool) -> Result<Group> {
        let key = (topic.to_string(), group.to_string());
        if !fresh {
            if let Some(g) = self.lock_groups()?.get(&key) {
                if g.read_at.elapsed() < GROUP_TTL {
                    return Ok(g.clone());
                }
            }
        }
        let stream = self.stream_name(topic);
        let info = match self
            .api::<jetstream::consumer::Info>(
                "read group",
                format!("CONSUMER.INFO.{stream}.{group}"),
                &serde_json::json!({}),
            )
            .await?
        {
            Api::Ok(info) => info,
            Api::Err(e) => {
                self.lock_groups()?.remove(&key);
                return Err(match e.error_code().0 {
                    STREAM_NOT_FOUND => stream_not_found(topic),
                    CONSUMER_NOT_FOUND => group_not_found(topic, group),
                    _ => api_error("read group", &e),
                });
            }
        };
        let (max_attempts, dead_letter_topic) =
            parse_description(info.config.description.as_deref());
        let g = Group {
            ack_wait: info.config.ack_wait,
            max_attempts,
            dead_letter_topic,
            read_at: Instant::now(),
        };
        self.lock_groups()?.insert(key, g.clone());
        Ok(g)
    }

    fn lock_groups(&self) -> Result<std::sync::MutexGuard<'_, HashMap<(String, String), Group>>> {
        self.inner
            .groups
            .lock()
            .map_err(|_| Error::internal(BACKEND, "group cache lock poisoned"))
    }

    fn lock_deliveries(&self) -> Result<std::sync::MutexGuard<'_, DeliveryLog>> {
        self.inner
            .deliveries
            .lock()
            .map_err(|_| Error::internal(BACKEND, "delivery log lock poisoned"))
    }

    fn headers(&self, id: &str, attributes: &BTreeMap<String, String>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(NATS_MSG_ID, id);
        for (name, value) in attributes {
            headers.insert(attribute_header(name).as_str(), encode_value(value));
        }
        headers
    }

    /// Publishes already checked messages, pipelined, and waits for every stream ack.
    async fn publish_checked(
        &self,
        operation: &str,
        topic: &str,
        messages: Vec<(String, Bytes, HeaderMap)>,
    ) -> Result<Vec<String>> {
        use async_nats::jetstream::context::PublishErrorKind as K;
        let map = |e: async_nats::jetstream::context::PublishError| {
            let (kind, what) = match e.kind() {
                K::StreamNotFound => return stream_not_found(topic).with_source(e),
                K::TimedOut => (
                    ErrorKind::DeadlineExceeded,
                    "the NATS server did not confirm in time; the message may be stored",
                ),
                K::BrokenPipe => (
                    ErrorKind::Unavailable,
                    "the connection to the NATS server broke",
                ),
                K::MaxAckPending => (
                    ErrorKind::ResourceExhausted,
                    "too many publishes wait for their confirmation",
                ),
                _ => (ErrorKind::Unavailable, "the NATS server refused or lost it"),
            };
            Error::new(kind, BACKEND, format!("{operation}: {what}")).with_source(e)
        };
        self.connected(operation)?;
        let subject = self.subject(topic);
        let stream = self.stream_name(topic);
        let mut pending = Vec::with_capacity(messages.len());
        let mut ids = Vec::with_capacity(messages.len());
        for (id, body, headers) in messages {
            let ack = self
                .inner
                .js
                .publish_with_headers(subject.clone(), headers, body)
                .await
                .map_err(map)?;
            pending.push(ack);
            ids.push(id);
        }
        for ack in pending {
            let ack = self
                .unless_disconnected(operation, ack.into_future())
                .await?
                .map_err(map)?;
            if ack.stream != stream {
                return Err(Error::internal(
                    BACKEND,
                    format!(
                        "{operation}: stream `{}` stored a message for topic `{topic}`",
                        ack.stream
                    ),
                ));
            }
        }
        Ok(ids)
    }

    /// One pull request: `batch` messages, without waiting (`expires` `None`) or waiting up to
    /// `expires`. Reads until the batch is full or the server ends the request.
    async fn pull(
        &self,
        topic: &str,
        group: &str,
        batch: usize,
        expires: Option<Duration>,
    ) -> Result<Vec<async_nats::Message>> {
        let client = &self.inner.client;
        let unreachable =
            |e: &dyn std::fmt::Display| Error::unavailable(BACKEND, format!("receive: {e}"));
        self.connected("receive")?;
        let inbox = client.new_inbox();
        let mut sub = client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| unreachable(&e))?;
        let request = match expires {
            None => serde_json::json!({ "batch": batch, "no_wait": true }),
            Some(wait) => serde_json::json!({ "batch": batch, "expires": nanos(wait) }),
        };
        let subject = format!(
            "$JS.API.CONSUMER.MSG.NEXT.{}.{group}",
            self.stream_name(topic)
        );
        client
            .publish_with_reply(subject, inbox, request.to_string().into())
            .await
            .map_err(|e| unreachable(&e))?;
        let give_up = tokio::time::Instant::now() + expires.unwrap_or(Duration::ZERO) + PULL_GRACE;
        let mut got = Vec::with_capacity(batch);
        while got.len() < batch {
            let next = tokio::time::timeout_at(give_up, sub.next());
            let message = match self.unless_disconnected("receive", next).await {
                Ok(Ok(Some(message))) => message,
                Ok(Ok(None) | Err(_)) => {
                    if got.is_empty() {
                        self.connected("receive")?;
                    }
                    break;
                }
                // What arrived before the loss is leased to this caller: hand it out.
                Err(e) if got.is_empty() => return Err(e),
                Err(_) => break,
            };
            match message.status {
                None | Some(StatusCode::OK) => got.push(message),
                // No messages (no_wait) / the request expired / heartbeat.
                Some(StatusCode::NOT_FOUND) | Some(StatusCode::TIMEOUT) => break,
                Some(StatusCode::IDLE_HEARTBEAT) => continue,
                Some(StatusCode::NO_RESPONDERS) => {
                    // Nothing serves the consumer's subject: the group (or topic) is gone.
                    self.lock_groups()?
                        .remove(&(topic.to_string(), group.to_string()));
                    if got.is_empty() {
                        return Err(group_not_found(topic, group));
                    }
                    break;
                }
                Some(status) => {
                    let text = message.description.clone().unwrap_or_default();
                    if text.to_ascii_lowercase().contains("deleted") {
                        self.lock_groups()?
                            .remove(&(topic.to_string(), group.to_string()));
                        if got.is_empty() {
                            return Err(group_not_found(topic, group));
                        }
                        break;
                    }
                    if got.is_empty() {
                        return Err(Error::unavailable(
                            BACKEND,
                            format!("receive: the server ended the pull with {status} {text}"),
                        ));
                    }
                    break;
                }
            }
        }
        Ok(got)
    }

    /// A settle request (`+ACK`, `-NAK`, `+TERM`) to an ack subject, waiting for the server's
    /// answer. `Ok(false)`: nothing answered (the consumer is gone).
    async fn settle_request(&self, operation: &str, subject: &str, kind: AckKind) -> Result<bool> {
        self.connected(operation)?;
        let request = self
            .inner
            .client
            .request(subject.to_string(), Bytes::from(kind));
        match self.unless_disconnected(operation, request).await? {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => Ok(false),
            Err(e) => Err(request_error(operation, e)),
        }
    }

    /// Opens a receipt of `topic`/`group`: `InvalidArgument` unless it is an ack subject of
    /// the topic's stream and the group's consumer.
    fn open_receipt<'a>(
        &self,
        topic: &str,
        group: &str,
        receipt: &'a str,
    ) -> Result<AckSubject<'a>> {
        let subject = self.inner.receipts.open(receipt)?;
        let ack = parse_ack_subject(subject)
            .ok_or_else(|| Error::invalid(BACKEND, "malformed receipt"))?;
        if ack.stream != self.stream_name(topic) || ack.consumer != group {
            return Err(Error::invalid(
                BACKEND,
                format!("the receipt is not of group `{group}` of topic `{topic}`"),
            ));
        }
        Ok(ack)
    }

    /// Ack, nack or extend through a receipt, with the stale-receipt check.
    async fn settle(
        &self,
        topic: &str,
        group: &str,
        receipt: &str,
        op: Settle,
        lease: Duration,
    ) -> Result<()> {
        let operation = match op {
            Settle::Ack => "ack",
            Settle::Nack => "nack",
            Settle::Extend => "extend_deadline",
        };
        checks::topic_group(BACKEND, topic, group)?;
        let ack = self.open_receipt(topic, group, receipt)?;
        let scope = format!("{}.{}", ack.stream, ack.consumer);
        let verdict =
            self.lock_deliveries()?
                .check(BACKEND, &scope, ack.stream_seq, ack.delivery, op)?;
        if verdict == Verdict::AlreadyAcked {
            return Ok(());
        }
        let kind = match op {
            Settle::Ack => AckKind::Ack,
            Settle::Nack if lease.is_zero() => AckKind::Nak(None),
            Settle::Nack | Settle::Extend => AckKind::Nak(Some(lease)),
        };
        if !self.settle_request(operation, receipt, kind).await? {
            // The group is gone: nothing can be delivered to it again.
            self.lock_groups()?
                .remove(&(topic.to_string(), group.to_string()));
            return match op {
                Settle::Ack => Ok(()),
                _ => Err(group_not_found(topic, group)),
            };
        }
        self.lock_deliveries()?
            .settled(&scope, ack.stream_seq, ack.delivery, op, lease);
        Ok(())
    }

    /// Turns a pulled message into a delivery for the caller, or dead-letters it (`None`).
    async fn deliver(
        &self,
        topic: &str,
        group: &str,
        settings: &mut Group,
        message: async_nats::Message,
    ) -> Result<Option<ReceivedMessage>> {
        let Some(reply) = message.reply.as_ref().map(|r| r.to_string()) else {
            return Err(Error::internal(
                BACKEND,
                "receive: a message without an ack subject",
            ));
        };
        let ack = parse_ack_subject(&reply).ok_or_else(|| {
            Error::internal(BACKEND, "receive: the server sent an unknown ack subject")
        })?;
        let mut id = None;
        let mut attributes = BTreeMap::new();
        if let Some(headers) = &message.headers {
            for (name, values) in headers.iter() {
                let name: &str = name.as_ref();
                let value = values.first().map(HeaderValue::as_str).unwrap_or_default();
                if name == NATS_MSG_ID {
                    id = Some(value.to_string());
                } else if let Some(attribute) = header_attribute(name) {
                    attributes.insert(attribute.to_string(), decode_value(value).to_string());
                }
            }
        }
        let id = id.unwrap_or_else(|| ack.stream_seq.to_string());
        if let Some(max) = settings.max_attempts {
            if ack.delivery > max {
                // Settings may have changed on another handle: decide on fresh ones.
                *settings = self.group(topic, group, true).await?;
                if settings.max_attempts.is_some_and(|max| ack.delivery > max) {
                    self.dead_letter(topic, group, settings, &reply, &id, &message, &attributes)
                        .await;
                    return Ok(None);
                }
            }
        }
        let scope = format!("{}.{}", ack.stream, ack.consumer);
        self.lock_deliveries()?
            .received(&scope, ack.stream_seq, ack.delivery, settings.ack_wait);
        Ok(Some(ReceivedMessage {
            id,
            body: message.payload,
            attributes,
            ordering_key: None,
            attempt: u32::try_from(ack.delivery).unwrap_or(u32::MAX),
            published_at: UNIX_EPOCH + Duration::from_nanos(ack.timestamp_ns),
            receipt: reply,
        }))
    }

    /// Publishes a message out of attempts to the dead-letter topic, then terminates it. A
    /// failure leaves it leased: it comes back after the ack deadline and is tried again.
    #[allow(clippy::too_many_arguments)]
    async fn dead_letter(
        &self,
        topic: &str,
        group: &str,
        settings: &Group,
        reply: &str,
        id: &str,
        message: &async_nats::Message,
        attributes: &BTreeMap<String, String>,
    ) {
        if let Some(dlq) = &settings.dead_letter_topic {
            let headers = self.headers(id, attributes);
            let published = self
                .publish_checked(
                    "dead-letter",
                    dlq,
                    vec![(id.to_string(), message.payload.clone(), headers)],
                )
                .await;
            if let Err(e) = published {
                warn!(backend = BACKEND, topic, group, dead_letter_topic = %dlq, error = %e,
                      "dead-lettering failed; the message comes back after its ack deadline");
                return;
            }
        }
        if let Err(e) = self
            .settle_request("dead-letter", reply, AckKind::Term)
            .await
        {
            warn!(backend = BACKEND, topic, group, error = %e,
                  "terminating a dead-lettered message failed; it comes back and is dead-lettered again (the id de-duplicates it)");
        }
    }

    async fn receive_inner(
        &self,
        topic: &str,
        group: &str,
        options: ReceiveOptions,
    ) -> Result<Vec<ReceivedMessage>> {
        checks::topic_group(BACKEND, topic, group)?;
        checks::receive(BACKEND, &options)?;
        let give_up = checks::give_up_at(BACKEND, &options)?;
        let mut settings = self.group(topic, group, false).await?;
        let mut out = Vec::new();
        let want = options.max_messages;
        for m in self.pull(topic, group, want, None).await? {
            out.extend(self.deliver(topic, group, &mut settings, m).await?);
        }
        // Long poll: one message with the wait as expiry, then the rest without waiting.
        while out.is_empty() {
            let left = give_up.saturating_duration_since(tokio::time::Instant::now());
            if left < Duration::from_millis(10) {
                break;
            }
            let first = self.pull(topic, group, 1, Some(left)).await?;
            if first.is_empty() {
                continue;
            }
            for m in first {
                out.extend(self.deliver(topic, group, &mut settings, m).await?);
            }
            if want > 1 {
                for m in self.pull(topic, group, want - 1, None).await? {
                    out.extend(self.deliver(topic, group, &mut settings, m).await?);
                }
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl MessageQueue for NatsQueue {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            backend: BACKEND.to_string(),
            location: self.location.clone(),
        }
    }

    fn capabilities(&self) -> QueueCapabilities {
        let mut caps = QueueCapabilities::full();
        caps.delayed_delivery = false;
        caps.ordering_keys = false;
        caps.max_message_size = Some(self.inner.max_message_size);
        caps
    }

    #[instrument(level = "debug", skip_all, fields(backend = BACKEND, topic = %topic), err(level = "debug"))]
    async fn create_topic(&self, topic: &str) -> Result<()> {
        use jetstream::stream::{Config, DiscardPolicy, RetentionPolicy, StorageType};
        checks::topic(BACKEND, topic)?;
        let name = self.stream_name(topic);
        let config = Config {
            name: name.clone(),
            subjects: vec![self.subject(topic)],
            retention: RetentionPolicy::Interest,
            storage: StorageType::File,
            discard: DiscardPolicy::Old,
            duplicate_window: DEDUP_WINDOW,
            num_replicas: 1,
            ..Config::default()
        };
        match self
            .api::<jetstream::stream::Info>(
                "create topic",
                format!("STREAM.CREATE.{name}"),
                &config,
            )
            .await?
        {
            Api::Ok(_) => Ok(()),
            // The stream exists (with other settings, e.g. changed by an operator): keep it.
            Api::Err(e) if e.error_code().0 == STREAM_NAME_EXISTS => Ok(()),
            Api::Err(e) => Err(api_error("create topic", &e)),
        }
    }

    #[instrument(level = "debug", skip_all, fields(backend = BACKEND, topic = %topic), err(level = "debug"))]
    async fn delete_topic(&self, topic: &str) -> Result<()> {
        checks::topic(BACKEND, topic)?;
        let name = self.stream_name(topic);
        let answer = self
            .api::<serde_json::Value>(
                "delete topic",
                format!("STREAM.DELETE.{name}"),
                &serde_json::json!({}),
            )
            .await?;
        self.lock_groups()?.retain(|(t, _), _| t != topic);
        match answer {
            Api::Ok(_) => Ok(()),
            Api::Err(e) if e.error_code().0 == STREAM_NOT_FOUND => Ok(()),
            Api::Err(e) => Err(api_error("delete topic", &e)),
        }
    }

    #[instrument(level = "debug", skip_all, fields(backend = BACKEND, topic = %topic, group = %group), err(level = "debug"))]
    async fn create_group(&self, topic: &str, group: &str, options: GroupOptions) -> Result<()> {
        use jetstream::consumer::{AckPolicy, Config, DeliverPolicy, ReplayPolicy};
        checks::topic_group(BACKEND, topic, group)?;
        checks::group_options(BACKEND, &self.capabilities(), topic, &options)?;
        if let Some(dlq) = &options.dead_letter_topic {
            let dlq_stream = self.stream_name(dlq);
            match self
                .api::<serde_json::Value>(
                    "create group",
                    format!("STREAM.INFO.{dlq_stream}"),
                    &serde_json::json!({}),
                )
                .await?
            {
                Api::Ok(_) => {}
                Api::Err(e) if e.error_code().0 == STREAM_NOT_FOUND => {
                    return Err(Error::not_found(
                        BACKEND,
                        format!("dead-letter topic `{dlq}` not found"),
                    ));
                }
                Api::Err(e) => return Err(api_error("create group", &e)),
            }
        }
        let stream = self.stream_name(topic);
        let config = Config {
            durable_name: Some(group.to_string()),
            description: Some(description(&options)),
            deliver_policy: DeliverPolicy::New,
            ack_policy: AckPolicy::Explicit,
            ack_wait: options.ack_deadline,
            max_deliver: -1,
            max_ack_pending: -1,
            replay_policy: ReplayPolicy::Instant,
            ..Config::default()
        };
        let request = serde_json::json!({ "stream_name": stream, "config": config });
        match self
            .api::<jetstream::consumer::Info>(
                "create group",
                format!("CONSUMER.DURABLE.CREATE.{stream}.{group}"),
                &request,
            )
            .await?
        {
            Api::Ok(info) => {
                let (max_attempts, dead_letter_topic) =
                    parse_description(info.config.description.as_deref());
                self.lock_groups()?.insert(
                    (topic.to_string(), group.to_string()),
                    Group {
                        ack_wait: info.config.ack_wait,
                        max_attempts,
                        dead_letter_topic,
                        read_at: Instant::now(),
                    },
                );
                Ok(())
            }
            Api::Err(e) if e.error_code().0 == STREAM_NOT_FOUND => Err(stream_not_found(topic)),
            Api::Err(e) => Err(api_error("create group", &e)),
        }
    }

    #[instrument(level = "debug", skip_all, fields(backend = BACKEND, topic = %topic, group = %group), err(level = "debug"))]
    async fn delete_group(&self, topic: &str, group: &str) -> Result<()> {
        checks::topic_group(BACKEND, topic, group)?;
        let stream = self.stream_name(topic);
        let answer = self
            .api::<serde_json::Value>(
                "delete group",
                format!("CONSUMER.DELETE.{stream}.{group}"),
                &serde_json::json!({}),
            )
            .await?;
        self.lock_groups()?
            .remove(&(topic.to_string(), group.to_string()));
        self.lock_deliveries()?
            .forget_scope(&format!("{stream}.{group}"));
        match answer {
            Api::Ok(_) => Ok(()),
            Api::Err(e) if matches!(e.error_code().0, STREAM_NOT_FOUND | CONSUMER_NOT_FOUND) => {
                Ok(())
            }
            Api::Err(e) => Err(api_error("delete group", &e)),
        }
    }

    #[instrument(level = "debug", skip_all, fields(backend = BACKEND, topic = %topic), err(level = "debug"))]
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
            return Ok(Vec::new());
        }
        let prepared = messages
            .into_iter()
            .map(|m| {
                let id = m.id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
                let headers = self.headers(&id, &m.attributes);
                (id, m.body, headers)
            })
            .collect();
        self.publish_checked("publish", topic, prepared).await
    }

    #[instrument(level = "debug", skip_all, fields(backend = BACKEND, topic = %topic, group = %group), err(level = "debug"))]
    async fn receive(
        &self,
        topic: &str,
        group: &str,
        options: ReceiveOptions,
    ) -> Result<Vec<ReceivedMessage>> {
        self.receive_inner(topic, group, options).await
    }

    #[instrument(level = "debug", skip_all, fields(backend = BACKEND, topic = %topic, group = %group), err(level = "debug"))]
    async fn ack(&self, topic: &str, group: &str, receipt: &str) -> Result<()> {
        self.settle(topic, group, receipt, Settle::Ack, Duration::ZERO)
            .await
    }

    #[instrument(level = "debug", skip_all, fields(backend = BACKEND, topic = %topic, group = %group), err(level = "debug"))]
    async fn nack(&self, topic: &str, group: &str, receipt: &str, delay: Duration) -> Result<()> {
        checks::nack_delay(BACKEND, &self.capabilities(), delay)?;
        self.settle(topic, group, receipt, Settle::Nack, delay)
            .await
    }

    #[instrument(level = "debug", skip_all, fields(backend = BACKEND, topic = %topic, group = %group), err(level = "debug"))]
    async fn extend_deadline(
        &self,
        topic: &str,
        group: &str,
        receipt: &str,
        extension: Duration,
    ) -> Result<()> {
        checks::lease(BACKEND, "lease extension", extension)?;
        self.settle(topic, group, receipt, Settle::Extend, extension)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_subjects_parse_in_both_forms() {
        let v1 = "$JS.ACK.MQ_t.g.2.17.40.1700000000000000000.3";
        let a = parse_ack_subject(v1).unwrap();
        assert_eq!(
            (a.stream, a.consumer, a.delivery, a.stream_seq),
            ("MQ_t", "g", 2, 17)
        );
        assert_eq!(a.timestamp_ns, 1_700_000_000_000_000_000);
        let v2 = "$JS.ACK._.HASH.MQ_t.g.2.17.40.1700000000000000000.3.tok";
        assert_eq!(parse_ack_subject(v2), Some(a));
        for bad in [
            "",
            "not-a-receipt",
            "0:0:0",
            "$JS.ACK.MQ_t.g.x.17.40.1.3",
            "$JS.ACK.MQ_t.g.2.17.40.1",
            "$JS.ACK.MQ t.g.2.17.40.1.3",
            "$JS.API.STREAM.DELETE.MQ_t.g.2.17.40.1.3",
        ] {
            assert_eq!(parse_ack_subject(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn attribute_names_and_values_round_trip() {
        for name in [
            "vin",
            "Nats-Msg-Id",
            "nats-x",
            "Attr-y",
            "attr-z",
            "Content-Type",
        ] {
            let header = attribute_header(name);
            assert_eq!(header_attribute(&header), Some(name), "{name}");
        }
        assert_eq!(header_attribute("Nats-Msg-Id"), None);
        for value in ["", "x", " a", "b ", "\"", "\"q\"", "  ", "Zürich ✓"] {
            assert_eq!(decode_value(&encode_value(value)), value, "{value:?}");
            let encoded = encode_value(value);
            assert_eq!(encoded.trim(), encoded, "{value:?} survives trimming");
        }
    }

    #[test]
    fn group_settings_round_trip_through_the_description() {
        let options = GroupOptions {
            max_attempts: Some(3),
            dead_letter_topic: Some("dlq".into()),
            ..GroupOptions::default()
        };
        assert_eq!(
            parse_description(Some(&description(&options))),
            (Some(3), Some("dlq".into()))
        );
        assert_eq!(
            parse_description(Some(&description(&GroupOptions::default()))),
            (None, None)
        );
        assert_eq!(parse_description(None), (None, None));
    }
}
