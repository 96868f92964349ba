//! The Redis Streams queue (`redis://host:port/db`, over TLS `rediss://`): see
//! [`RedisStreamsQueue`].
//!
//! - **Layout.** Every key starts with `{<namespace>}:` (the `prefix` URL parameter, default
//!   `mq`): a Redis Cluster hash tag, so all keys of one queue live in one slot and the
//!   multi-key scripts also run on a cluster. Per topic `T`:
//!   - `{ns}:s:T`, the **stream**: one entry per message, fields `b` (body), `a:<name>` (one
//!     per attribute), `i` (the producer's message id, when given) and `p` (publish time in
//!     ms, only on dead-letter copies: otherwise the entry id's time is the publish time). The
//!     topic exists exactly while its stream does; an empty stream is kept (Redis keeps
//!     empty streams).
//!   - **Groups** are Redis consumer groups on the stream, created with `$` (a group sees
//!     what is published after its creation), all reading as one consumer name (`mq`):
//!     receipts, not consumer names, say which delivery is meant. Their options live in the
//!     hash `{ns}:g:T` (group → `"<ack deadline ms> <max attempts> <dead-letter topic>"`).
//!   - `{ns}:c:T`: each group's `XAUTOCLAIM` cursor, so that expired leases anywhere in a
//!     long pending list are found, not only at its start.
//!   - `{ns}:h:T`: the **holds**, a sorted set of `"<group> <entry id>"` scored by the time
//!     (ms) until which a nacked-with-delay or extended delivery must not be claimed. An ack
//!     leaves the hold to run out (it has no effect on an acknowledged entry) and a receive
//!     prunes the holds whose time has passed, so the ack stays one check and one `XACK`.
//!   - `{ns}:u:T`: **de-duplication**, a sorted set of message ids scored by when they leave
//!     the window (default 5 minutes).
//! - **Leases** are Redis' own: a delivered entry sits in the group's pending list (PEL), and
//!   a receive first claims entries idle for at least the ack deadline (`XAUTOCLAIM`
//!   min-idle-time), then reads new ones (`XREADGROUP >`). The delivery count is the PEL's
//!   (`XPENDING`): it is the [`attempt`](ReceivedMessage::attempt). A nack or an extension to
//!   `d` from now sets the entry's idle time to `deadline - d` (`XCLAIM … IDLE … JUSTID`,
//!   which keeps the count), so it becomes claimable exactly at `now + d`; Redis cannot set
//!   an idle time below zero, so for `d` longer than the deadline the hold set records the
//!   end and a claim before it puts the entry back (with its count restored by `RETRYCOUNT`
//!   and an idle time that makes it claimable when the hold ends). A long hold on a short
//!   deadline therefore costs one such put-back per deadline period.
//! - **Receipts** are `"<entry id>:<delivery count>"` and work on any handle (entry ids are
//!   the server's, not a connection's). An ack, nack or extension checks, in the same script,
//!   that the entry is pending with that delivery count: a receipt of an earlier delivery
//!   of an entry delivered again is [`PreconditionFailed`](ErrorKind::PreconditionFailed)
//!   and settles nothing; an ack of an entry no longer pending succeeds (acks are
//!   idempotent); a nack or an extension of one is `PreconditionFailed`.
//! - **Dead-lettering** after `max_attempts`: a nack (without delay) of the last attempt, or
//!   a claim that finds the count over the limit, copies the entry (fields, message id,
//!   publish time) to the dead-letter topic's stream and acknowledges it, in one script. A
//!   dead-letter topic that is gone or has no groups receives nothing.
//! - **Trimming.** A receive (and a group deletion) trims the stream to what every group has
//!   acknowledged: below the lowest of each group's oldest pending entry, or, with nothing
//!   pending, the entry after its last delivered one (`XTRIM MINID`). Trimming by length or
//!   age would drop entries still pending for a slow group: they would be lost (`XAUTOCLAIM`
//!   reports deleted entries and drops them from the PEL). A topic without groups keeps
//!   nothing.
//! - **Scripts.** Publishing with de-duplication, the receive's housekeeping (expired
//!   leases, holds, dead-lettering, the trim), ack, nack / extend and the group calls are Lua
//!   scripts (`EVALSHA`): each checks and writes in one atomic step on the server, with the
//!   server's clock, so handles on several machines agree. The dead-letter topic's stream key
//!   is built inside the scripts from the group's options; it carries the same hash tag, so
//!   it is in the same slot.
//! - **The hot path without Lua where Lua adds nothing.** Message bodies do not pass through
//!   Lua: converting a batch to Lua tables and back cost the server more than the stream
//!   commands themselves (measured: `benches/README.md`, Redis Streams queue). A batch
//!   without message ids (nothing to de-duplicate) is `XADD NOMKSTREAM` per message in one
//!   `MULTI`/`EXEC`: all of it or nothing, and nothing on a missing topic. A receive is one
//!   round trip: the housekeeping script, then, pipelined behind it, a plain `XREADGROUP >`
//!   for new entries. The read asks for the receive's maximum whatever the script claims
//!   (a pipeline cannot wait for the script's answer); in the rare look where expired leases
//!   were claimed too and the two together exceed the maximum, the surplus new entries are
//!   given back (`XCLAIM … IDLE <deadline> RETRYCOUNT 0`: claimable at once, as a first
//!   attempt). A give-back lost with the connection delays those entries by one ack
//!   deadline and counts one attempt too many; nothing is lost. The ack stays a script: the
//!   stale-receipt check (`XPENDING` of the entry) and the `XACK` must be one step, and no
//!   Redis command acknowledges conditionally.
//! - **Long polling.** A receive that finds nothing waits in `XREADGROUP … BLOCK` on a
//!   connection of its own (a blocked command holds its connection, and the shared
//!   connection's response timeout is shorter than a wait), in steps of at most 250 ms,
//!   re-running the receive script between steps so that expired leases are found too. The
//!   blocking connections are kept for reuse, and dropped after an error.
//! - **Not supported**, with [`Unsupported`](ErrorKind::Unsupported): ordering keys (a
//!   consumer group hands out entries in stream order to whoever asks, and cannot hold back
//!   the entries of one key behind a leased one), and delayed publishing (an entry is
//!   visible to every group once added; adding it later would show it to groups created
//!   after the publish).
//! - **Durability** is the server's: Redis acknowledges a write once it is in memory. With
//!   AOF and `appendfsync always` it survives a restart; the servers here keep nothing on
//!   disk, so the queue does not claim [`durable`](QueueCapabilities::durable).
//! - **Failures.** Every call is bounded (5 s unless [`RedisStreamsQueue::with_timeout`];
//!   a long poll by its wait plus that). A lost connection is
//!   [`Unavailable`](ErrorKind::Unavailable), a call without an answer in time
//!   [`DeadlineExceeded`](ErrorKind::DeadlineExceeded): both retryable. A publish whose
//!   answer is lost may or may not have been added (publish with an id to make the retry
//!   harmless); an ack whose answer is lost may be sent again. The shared connection
//!   reconnects by itself, so the same handle works again when the server is back. The URL
//!   (it may hold a password) is in no message. Connecting, TLS and the URL parameters are
//!   those of the Redis document store (one implementation, `redis_conn`): see
//!   [`RedisDocumentStore`](crate::database::RedisDocumentStore#tls).

mod scripts;

use super::checks;
use super::emulation::receipt::Receipts;
use crate::redis_conn::{self, bounded};
use async_trait::async_trait;
use bytes::Bytes;
use cloud_abstraction::queue::{
    GroupOptions, Message, MessageQueue, QueueCapabilities, ReceiveOptions, ReceivedMessage,
};
use cloud_abstraction::{BackendInfo, Error, ErrorKind, Location, Result, validate};
use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Value};
use scripts::Scripts;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};
use tokio::time::Instant;
use tracing::{Instrument, debug};

const BACKEND: &str = "redis-streams";
/// The key namespace of a queue opened without `prefix`.
const DEFAULT_NAMESPACE: &str = "mq";
/// The one consumer name every handle reads as (receipts say which delivery is meant).
const CONSUMER: &str = "mq";
/// The longest step of a long poll between two looks for expired leases.
const POLL_STEP: Duration = Duration::from_millis(250);
/// Blocking connections kept for reuse.
const IDLE_BLOCKING: usize = 8;
/// Largest message body.
const MAX_MESSAGE: u64 = 1024 * 1024;

/// A [`MessageQueue`] on Redis Streams (`redis://host:port/db?prefix=NS`), through the
/// `redis` crate: consumer groups, leases by idle time (`XAUTOCLAIM`), delivery counts
/// (`XPENDING`), dead-lettering, de-duplication, nack with delay and lease extension, with
/// receipts valid on every handle. See the [module docs](self) for the key layout, the
/// scripts and the failure behaviour.
///
/// Cheap to clone: clones share one multiplexed, self-reconnecting connection and the
/// blocking connections of long polls.
///
/// ```no_run
/// # async fn demo() -> cloud_abstraction::Result<()> {
/// use cloud_abstraction::MessageQueue;
/// use cloud_abstraction::queue::{GroupOptions, Message, ReceiveOptions};
/// use paas_components::queue::RedisStreamsQueue;
///
/// let q = RedisStreamsQueue::connect("redis://127.0.0.1:6379/0?prefix=fleet").await?;
/// q.create_topic("commands").await?;
/// q.create_group("commands", "workers", GroupOptions::default()).await?;
/// q.publish("commands", Message::new("unlock")).await?;
/// let got = q.receive("commands", "workers", ReceiveOptions::default()).await?;
/// q.ack("commands", "workers", &got[0].receipt).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStreamsQueue {
    conn: ConnectionManager,
    client: redis::Client,
    /// Idle connections for blocking reads.
    blocking: Arc<Mutex<Vec<MultiplexedConnection>>>,
    namespace: String,
    location: Location,
    timeout: Duration,
    dedup_window: Duration,
    receipts: Receipts,
    scripts: Arc<Scripts>,
}

impl fmt::Debug for RedisStreamsQueue {
    // The client and connections (and so the URL, which may hold a password) are not shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStreamsQueue")
            .field("namespace", &self.namespace)
            .field("location", &self.location)
            .field("timeout", &self.timeout)
            .field("dedup_window", &self.dedup_window)
            .finish_non_exhaustive()
    }
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

fn stale() -> Error {
    Error::new(
        ErrorKind::PreconditionFailed,
        BACKEND,
        "receipt is stale: the message was delivered again since",
    )
}

fn not_pending() -> Error {
    Error::new(
        ErrorKind::PreconditionFailed,
        BACKEND,
        "the message of this receipt is no longer pending",
    )
}

fn bad_reply(operation: &str) -> Error {
    Error::internal(BACKEND, format!("{operation}: unexpected reply from Redis"))
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A receipt's entry id and delivery count: `"<ms>-<seq>:<count>"`.
fn parse_receipt<'a>(receipts: &Receipts, receipt: &'a str) -> Result<(&'a str, u64)> {
    let inner = receipts.open(receipt)?;
    let malformed = || Error::invalid(BACKEND, "malformed receipt");
    let (entry, count) = inner.split_once(':').ok_or_else(malformed)?;
    let (a, b) = entry.split_once('-').ok_or_else(malformed)?;
    let numeric = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|c| c.is_ascii_digit());
    if !numeric(a) || !numeric(b) || a.parse::<u64>().is_err() || b.parse::<u64>().is_err() {
        return Err(malformed());
    }
    let count = count
        .parse::<u64>()
        .ok()
        .filter(|c| *c >= 1)
        .ok_or_else(malformed)?;
    Ok((entry, count))
}

fn text(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => std::str::from_utf8(text(other)?).ok()?.parse().ok(),
    }
}

/// A stream entry (`id`, flat `fields`) delivered for the `count`th time.
fn message_of(id: &Value, count: i64, fields: &Value) -> Result<ReceivedMessage> {
    let err = || bad_reply("receive");
    let entry = std::str::from_utf8(text(id).ok_or_else(err)?).map_err(|_| err())?;
    let Value::Array(fields) = fields else {
        return Err(err());
    };
    let mut body = Bytes::new();
    let mut attributes = BTreeMap::new();
    let mut message_id = None;
    let mut published_ms = None;
    for pair in fields.chunks(2) {
        let [name, value] = pair else {
            return Err(err());
        };
        let name = text(name).ok_or_else(err)?;
        let value = text(value).ok_or_else(err)?;
        match name {
            b"b" => body = Bytes::copy_from_slice(value),
            b"i" => message_id = Some(String::from_utf8_lossy(value).into_owned()),
            b"p" => published_ms = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok()),
            _ => {
                if let Some(attr) = name.strip_prefix(b"a:") {
                    attributes.insert(
                        String::from_utf8_lossy(attr).into_owned(),
                        String::from_utf8_lossy(value).into_owned(),
                    );
                }
            }
        }
    }
    let published_ms: u64 = match published_ms {
        Some(p) => p,
        None => entry
            .split_once('-')
            .and_then(|(t, _)| t.parse().ok())
            .ok_or_else(err)?,
    };
    let count = u64::try_from(count)
        .ok()
        .filter(|c| *c >= 1)
        .ok_or_else(err)?;
    Ok(ReceivedMessage {
        id: message_id.unwrap_or_else(|| entry.to_string()),
        body,
        attributes,
        ordering_key: None,
        attempt: u32::try_from(count).unwrap_or(u32::MAX),
        published_at: UNIX_EPOCH + Duration::from_millis(published_ms),
        receipt: format!("{entry}:{count}"),
    })
}

/// The entries of an `XREADGROUP … >` reply (`[[stream, [[id, fields]...]]]`, a map in RESP3,
/// or nil when there were none), each a first delivery.
fn read_entries(reply: &Value) -> Result<Vec<ReceivedMessage>> {
    let entries = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => match streams.first() {
            Some(Value::Array(stream)) if stream.len() == 2 => &stream[1],
            _ => return Err(bad_reply("receive")),
        },
        Value::Map(streams) => match streams.first() {
            Some((_, entries)) => entries,
            None => return Err(bad_reply("receive")),
        },
        _ => return Err(bad_reply("receive")),
    };
    let Value::Array(entries) = entries else {
        return Err(bad_reply("receive"));
    };
    entries
        .iter()
        .map(|e| match e {
            Value::Array(parts) if parts.len() == 2 => message_of(&parts[0], 1, &parts[1]),
            _ => Err(bad_reply("receive")),
        })
        .collect()
}

impl RedisStreamsQueue {
    /// Connects to `url` (`redis://[user:password@]host:port/db`, or `rediss://…` for TLS).
    /// The query parameter `prefix` sets the key namespace (default `mq`); `ca_file`,
    /// `insecure` and the location parameters (`provider`, `region`, `zone`) are read as by
    /// the [Redis document store](crate::database::RedisDocumentStore::connect); other
    /// parameters go to the `redis` crate. A bad URL is
    /// [`InvalidArgument`](ErrorKind::InvalidArgument), an unreachable server
    /// [`Unavailable`](ErrorKind::Unavailable).
    pub async fn connect(url: &str) -> Result<Self> {
        let span = tracing::debug_span!("queue", backend = BACKEND, operation = "connect");
        async move {
            let connected = redis_conn::connect(BACKEND, url, DEFAULT_NAMESPACE).await?;
            Ok(Self {
                conn: connected.conn,
                client: connected.client,
                blocking: Arc::default(),
                namespace: connected.namespace,
                location: connected.location,
                timeout: redis_conn::DEFAULT_TIMEOUT,
                dedup_window: Duration::from_secs(300),
                receipts: Receipts::portable(BACKEND),
                scripts: Arc::new(Scripts::new()),
            })
        }
        .instrument(span)
        .await
    }

    /// The same queue under another key namespace (`[a-zA-Z][a-zA-Z0-9_-]*`, at most 63
    /// bytes): queues in different namespaces never see each other's topics.
    pub fn with_namespace(mut self, namespace: &str) -> Result<Self> {
        validate::resource_name(BACKEND, "key namespace", namespace)?;
        self.namespace = namespace.to_string();
        Ok(self)
    }

    /// Reports `location` as where this queue runs (default: the URL's location parameters,
    /// else [`Location::unknown`]).
    pub fn with_location(mut self, location: Location) -> Self {
        self.location = location;
        self
    }

    /// Bounds every call by `timeout` (default 5 s; a long poll by its wait plus this).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The same queue with this de-duplication window (default 5 minutes).
    pub fn with_dedup_window(mut self, window: Duration) -> Self {
        self.dedup_window = window;
        self
    }

    /// The key namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The key of `kind` (`s`, `g`, `c`, `h`, `u`: see the module docs) for `topic`.
    fn key(&self, kind: char, topic: &str) -> String {
        format!("{{{}}}:{kind}:{topic}", self.namespace)
    }

    /// What every stream key starts with (the scripts add a dead-letter topic's name).
    fn stream_prefix(&self) -> String {
        format!("{{{}}}:s:", self.namespace)
    }

    async fn invoke<T: redis::FromRedisValue>(
        &self,
        operation: &str,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T> {
        let mut conn = self.conn.clone();
        bounded(
            BACKEND,
            self.timeout,
            operation,
            invocation.invoke_async(&mut conn),
        )
        .await
    }

    /// Publishes a batch without message ids (nothing to de-duplicate) without the publish
    /// script: `XADD NOMKSTREAM` per message and `HLEN` of the groups in one `MULTI`/`EXEC`,
    /// so the batch is still all or nothing and a missing topic adds nothing (every `XADD`
    /// answers nil). A topic without groups keeps nothing: then the entries just added, and
    /// any before them, are trimmed (`XTRIM MINID` past the last one); a group created since
    /// starts after them (`$`), so none of it can see them.
    async fn publish_plain(&self, topic: &str, messages: &[Message]) -> Result<Vec<String>> {
        let stream = self.key('s', topic);
        let mut pipe = redis::pipe();
        pipe.atomic();
        for m in messages {
            let cmd = pipe
                .cmd("XADD")
                .arg(&stream)
                .arg("NOMKSTREAM")
                .arg("*")
                .arg("b")
                .arg(m.body.as_ref());
            for (name, value) in &m.attributes {
                cmd.arg(format!("a:{name}")).arg(value.as_str());
            }
        }
        pipe.cmd("HLEN").arg(self.key('g', topic));
        let mut conn = self.conn.clone();
        let mut replies: Vec<Value> = bounded(
            BACKEND,
            self.timeout,
            "publish",
            pipe.query_async(&mut conn),
        )
        .await?;
        let groups = replies.pop().as_ref().and_then(int);
        if replies.len() != messages.len() || groups.is_none() {
            return Err(bad_reply("publish"));
        }
        let ids = replies
            .iter()
            .map(|v| match v {
                Value::Nil => Ok(None),
                v => text(v)
                    .and_then(|t| std::str::from_utf8(t).ok())
                    .map(|t| Some(t.to_string()))
                    .ok_or_else(|| bad_reply("publish")),
            })
            .collect::<Result<Option<Vec<String>>>>()?
            .ok_or_else(|| topic_not_found(topic))?;
        if groups == Some(0) {
            // Past the last id added: `<ms>-<seq + 1>`.
            let past = ids
                .last()
                .and_then(|id| id.split_once('-'))
                .and_then(|(ms, seq)| {
                    Some(format!("{ms}-{}", seq.parse::<u64>().ok()?.checked_add(1)?))
                })
                .ok_or_else(|| bad_reply("publish"))?;
            // The publish is done either way: what a failed trim leaves, no group can see, and
            // the next trim (any publish without groups, any receive) removes it.
            if let Err(e) = bounded::<i64>(
                BACKEND,
                self.timeout,
                "publish",
                redis::cmd("XTRIM")
                    .arg(&stream)
                    .arg("MINID")
                    .arg(past)
                    .query_async(&mut conn),
            )
            .await
            {
                debug!(topic, error = %e, "trimming a topic without groups failed");
            }
        }
        Ok(ids)
    }

    /// One look, in one round trip: the receive script (expired leases, the trim) and, in
    /// the same pipeline, `XREADGROUP >` for new entries, as a plain command (see
    /// `scripts::RECEIVE` for why). The read asks for `max` whatever the script claims, since
    /// the pipeline cannot wait for the script's answer; when both together found more than
    /// `max`, the new entries past `max` are given back (see [`Self::give_back`]).
    async fn claim(&self, topic: &str, group: &str, max: usize) -> Result<Vec<ReceivedMessage>> {
        let stream = self.key('s', topic);
        let script = &self.scripts.receive;
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        pipe.cmd("EVALSHA")
            .arg(script.get_hash())
            .arg(4)
            .arg(&stream)
            .arg(self.key('g', topic))
            .arg(self.key('c', topic))
            .arg(self.key('h', topic))
            .arg(group)
            .arg(max)
            .arg(CONSUMER)
            .arg(self.stream_prefix());
        pipe.cmd("XREADGROUP")
            .arg("GROUP")
            .arg(group)
            .arg(CONSUMER)
            .arg("COUNT")
            .arg(max)
            .arg("STREAMS")
            .arg(&stream)
            .arg(">");
        let mut conn = self.conn.clone();
        let (housekeeping, read): (redis::RedisResult<Value>, redis::RedisResult<Value>) = bounded(
            BACKEND,
            self.timeout,
            "receive",
            pipe.query_async(&mut conn),
        )
        .await?;
        // New entries are the caller's whatever the script said: once read they are pending,
        // and returning them is the only way not to strand them until their deadline.
        let fresh = match read {
            Ok(reply) => read_entries(&reply)?,
            // The group (or the stream) is gone, or was never there: the script says which.
            Err(e) if e.code() == Some("NOGROUP") => Vec::new(),
            Err(e) => return Err(redis_conn::map_err(BACKEND, "receive", e)),
        };
        let (deadline, mut got) = match housekeeping {
            Ok(Value::Array(items)) => {
                match items.first().and_then(int) {
                    Some(0) => {}
                    Some(1) if fresh.is_empty() => return Err(topic_not_found(topic)),
                    Some(2) if fresh.is_empty() => return Err(group_not_found(topic, group)),
                    Some(1 | 2) => return Ok(fresh),
                    _ => return Err(bad_reply("receive")),
                }
                let deadline = items
                    .get(1)
                    .and_then(int)
                    .ok_or_else(|| bad_reply("receive"))?;
                let claimed = items[2..]
                    .iter()
                    .map(|item| match item {
                        Value::Array(parts) if parts.len() == 3 => {
                            let count = int(&parts[1]).ok_or_else(|| bad_reply("receive"))?;
                            message_of(&parts[0], count, &parts[2])
                        }
                        _ => Err(bad_reply("receive")),
                    })
                    .collect::<Result<Vec<_>>>()?;
                (deadline, claimed)
            }
            // The server lost its script cache (a restart, SCRIPT FLUSH): load it for the next
            // look; this one had no housekeeping, and the new entries read are still returned.
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                let _ = bounded(
                    BACKEND,
                    self.timeout,
                    "receive",
                    script.prepare_invoke().load_async(&mut conn),
                )
                .await?;
                return Ok(fresh);
            }
            Err(e) => {
                if !fresh.is_empty() {
                    // Rare (the script failed, the read did not): the new entries must not be
                    // stranded; the next look does the housekeeping.
                    debug!(
                        topic,
                        group, "receive script failed; returning the new entries"
                    );
                    return Ok(fresh);
                }
                return Err(redis_conn::map_err(BACKEND, "receive", e));
            }
            Ok(_) => return Err(bad_reply("receive")),
        };
        let room = max.saturating_sub(got.len());
        if fresh.len() > room {
            self.give_back(&stream, group, deadline, &fresh[room..])
                .await;
        }
        got.extend(fresh.into_iter().take(room));
        Ok(got)
    }

    /// Undoes the delivery of new entries read past a receive's `max` (only when expired
    /// leases were claimed in the same look): their delivery count goes back to 0 and their
    /// idle time to the ack deadline, so the next look claims them at once as a first
    /// attempt. If this fails (a lost connection), they are delivered again after the ack
    /// deadline, as a second attempt: one attempt is skipped, nothing is lost.
    async fn give_back(
        &self,
        stream: &str,
        group: &str,
        deadline: i64,
        entries: &[ReceivedMessage],
    ) {
        let mut cmd = redis::cmd("XCLAIM");
        cmd.arg(stream).arg(group).arg(CONSUMER).arg(0);
        for m in entries {
            // The receipt of a new entry is `<entry id>:1`.
            let entry = m
                .receipt
                .split_once(':')
                .map_or(m.receipt.as_str(), |(e, _)| e);
            cmd.arg(entry);
        }
        cmd.arg("IDLE")
            .arg(deadline.max(0))
            .arg("RETRYCOUNT")
            .arg(0)
            .arg("JUSTID");
        let mut conn = self.conn.clone();
        if let Err(e) =
            bounded::<Value>(BACKEND, self.timeout, "receive", cmd.query_async(&mut conn)).await
        {
            debug!(error = %e, "giving back entries read past the receive's maximum failed");
        }
    }

    /// A connection for a blocking read: an idle one, or a new one.
    async fn blocking_conn(&self) -> Result<MultiplexedConnection> {
        let idle = self.blocking.lock().ok().and_then(|mut idle| idle.pop());
        if let Some(conn) = idle {
            return Ok(conn);
        }
        // No response timeout of its own: each read is bounded by its wait plus `timeout`.
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(redis_conn::CONNECT_TIMEOUT))
            .set_response_timeout(None);
        bounded(
            BACKEND,
            self.timeout,
            "receive",
            self.client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await
        .map_err(|e| redis_conn::unreachable_if_internal(BACKEND, e))
    }

    /// Waits up to `block` for new entries on a blocking connection. `None`: the topic or
    /// group went away meanwhile (the next look reports which).
    async fn wait_for_new(
        &self,
        topic: &str,
        group: &str,
        max: usize,
        block: Duration,
    ) -> Result<Option<Vec<ReceivedMessage>>> {
        let mut conn = self.blocking_conn().await?;
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(group)
            .arg(CONSUMER)
            .arg("COUNT")
            .arg(max)
            .arg("BLOCK")
            .arg(ms(block).max(1))
            .arg("STREAMS")
            .arg(self.key('s', topic))
            .arg(">");
        let reply =
            match tokio::time::timeout(block + self.timeout, cmd.query_async::<Value>(&mut conn))
                .await
            {
                Ok(Ok(reply)) => reply,
                Ok(Err(e)) if matches!(e.code(), Some("NOGROUP" | "UNBLOCKED")) => {
                    self.keep_blocking(conn);
                    return Ok(None);
                }
                // The connection is dropped: after a timeout it may still be blocked.
                Ok(Err(e)) => return Err(redis_conn::map_err(BACKEND, "receive", e)),
                Err(_) => {
                    return Err(Error::new(
                        ErrorKind::DeadlineExceeded,
                        BACKEND,
                        "receive: the Redis server did not answer in time",
                    ));
                }
            };
        self.keep_blocking(conn);
        read_entries(&reply).map(Some)
    }

    fn keep_blocking(&self, conn: MultiplexedConnection) {
        if let Ok(mut idle) = self.blocking.lock() {
            if idle.len() < IDLE_BLOCKING {
                idle.push(conn);
            }
        }
    }

    /// Nack or extension: the delivery of `receipt` is deliverable again `after` from now.
    async fn lease(
        &self,
        operation: &'static str,
        topic: &str,
        group: &str,
        receipt: &str,
        after: Duration,
    ) -> Result<()> {
        let (entry, count) = parse_receipt(&self.receipts, receipt)?;
        let mut inv = self.scripts.lease.prepare_invoke();
        inv.key(self.key('s', topic))
            .key(self.key('g', topic))
            .key(self.key('h', topic))
            .arg(group)
            .arg(entry)
            .arg(count)
            .arg(ms(after))
            .arg(CONSUMER)
            .arg(operation)
            .arg(self.stream_prefix());
        let status: i64 = self.invoke(operation, &inv).await?;
        match status {
            0 => Ok(()),
            1 => {
                debug!(topic, group, "message dead-lettered after its last attempt");
                Ok(())
            }
            2 => Err(stale()),
            3 => Err(not_pending()),
            -1 => Err(topic_not_found(topic)),
            -2 => Err(group_not_found(topic, group)),
            _ => Err(bad_reply(operation)),
        }
    }
}

#[async_trait]
impl MessageQueue for RedisStreamsQueue {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            backend: BACKEND.to_string(),
            location: self.location.clone(),
        }
    }

    fn capabilities(&self) -> QueueCapabilities {
        let mut caps = QueueCapabilities::full();
        // Not honest on streams (see the module docs): Unsupported.
        caps.delayed_delivery = false;
        caps.ordering_keys = false;
        // The server's persistence decides; the servers here keep nothing on disk.
        caps.durable = false;
        caps.max_message_size = Some(MAX_MESSAGE);
        caps
    }

    async fn create_topic(&self, topic: &str) -> Result<()> {
        let span = tracing::debug_span!(
            "queue",
            backend = BACKEND,
            operation = "create_topic",
            topic
        );
        async move {
            checks::topic(BACKEND, topic)?;
            let mut inv = self.scripts.create_topic.prepare_invoke();
            inv.key(self.key('s', topic));
            let _: i64 = self.invoke("create_topic", &inv).await?;
            Ok(())
        }
        .instrument(span)
        .await
    }

    async fn delete_topic(&self, topic: &str) -> Result<()> {
        let span = tracing::debug_span!(
            "queue",
            backend = BACKEND,
            operation = "delete_topic",
            topic
        );
        async move {
            checks::topic(BACKEND, topic)?;
            let mut cmd = redis::cmd("DEL");
            for kind in ['s', 'g', 'c', 'h', 'u'] {
                cmd.arg(self.key(kind, topic));
            }
            let mut conn = self.conn.clone();
            let _: i64 = bounded(
                BACKEND,
                self.timeout,
                "delete_topic",
                cmd.query_async(&mut conn),
            )
            .await?;
            Ok(())
        }
        .instrument(span)
        .await
    }

    async fn create_group(&self, topic: &str, group: &str, options: GroupOptions) -> Result<()> {
        let span = tracing::debug_span!(
            "queue",
            backend = BACKEND,
            operation = "create_group",
            topic,
            group
        );
        async move {
            checks::topic_group(BACKEND, topic, group)?;
            checks::group_options(BACKEND, &self.capabilities(), topic, &options)?;
            let encoded = format!(
                "{} {} {}",
                ms(options.ack_deadline).max(1),
                options.max_attempts.unwrap_or(0),
                options.dead_letter_topic.as_deref().unwrap_or("")
            );
            let mut inv = self.scripts.create_group.prepare_invoke();
            inv.key(self.key('s', topic)).key(self.key('g', topic));
            if let Some(dlq) = &options.dead_letter_topic {
                inv.key(self.key('s', dlq));
            }
            inv.arg(group).arg(encoded);
            let status: i64 = self.invoke("create_group", &inv).await?;
            match status {
                0 => Ok(()),
                1 => Err(topic_not_found(topic)),
                2 => Err(Error::not_found(
                    BACKEND,
                    format!(
                        "dead-letter topic `{}` not found",
                        options.dead_letter_topic.as_deref().unwrap_or_default()
                    ),
                )),
                _ => Err(bad_reply("create_group")),
            }
        }
        .instrument(span)
        .await
    }

    async fn delete_group(&self, topic: &str, group: &str) -> Result<()> {
        let span = tracing::debug_span!(
            "queue",
            backend = BACKEND,
            operation = "delete_group",
            topic,
            group
        );
        async move {
            checks::topic_group(BACKEND, topic, group)?;
            let mut inv = self.scripts.delete_group.prepare_invoke();
            inv.key(self.key('s', topic))
                .key(self.key('g', topic))
                .key(self.key('c', topic))
                .key(self.key('h', topic))
                .arg(group);
            let _: i64 = self.invoke("delete_group", &inv).await?;
            Ok(())
        }
        .instrument(span)
        .await
    }

    async fn publish(&self, topic: &str, message: Message) -> Result<String> {
        let mut ids = self.publish_batch(topic, vec![message]).await?;
        ids.pop()
            .ok_or_else(|| Error::internal(BACKEND, "publish returned no id"))
    }

    async fn publish_batch(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<String>> {
        let span = tracing::debug_span!(
            "queue",
            backend = BACKEND,
            operation = "publish",
            topic,
            count = messages.len()
        );
        async move {
            checks::topic(BACKEND, topic)?;
            checks::batch(BACKEND, &self.capabilities(), &messages)?;
            if !messages.is_empty() && messages.iter().all(|m| m.id.is_none()) {
                return self.publish_plain(topic, &messages).await;
            }
            let mut inv = self.scripts.publish.prepare_invoke();
            inv.key(self.key('s', topic))
                .key(self.key('u', topic))
                .key(self.key('g', topic))
                .arg(ms(self.dedup_window));
            for m in &messages {
                inv.arg(m.id.as_deref().unwrap_or(""))
                    .arg(1 + m.attributes.len())
                    .arg("b")
                    .arg(m.body.as_ref());
                for (name, value) in &m.attributes {
                    inv.arg(format!("a:{name}")).arg(value.as_str());
                }
            }
            let ids: Option<Vec<String>> = self.invoke("publish", &inv).await?;
            let ids = ids.ok_or_else(|| topic_not_found(topic))?;
            if ids.len() != messages.len() {
                return Err(bad_reply("publish"));
            }
            Ok(ids)
        }
        .instrument(span)
        .await
    }

    async fn receive(
        &self,
        topic: &str,
        group: &str,
        options: ReceiveOptions,
    ) -> Result<Vec<ReceivedMessage>> {
        let span = tracing::debug_span!(
            "queue",
            backend = BACKEND,
            operation = "receive",
            topic,
            group,
            max = options.max_messages
        );
        async move {
            checks::topic_group(BACKEND, topic, group)?;
            checks::receive(BACKEND, &options)?;
            let give_up = checks::give_up_at(BACKEND, &options)?;
            loop {
                let got = self.claim(topic, group, options.max_messages).await?;
                if !got.is_empty() {
                    return Ok(got);
                }
                let now = Instant::now();
                if now >= give_up {
                    return Ok(got);
                }
                let block = (give_up - now).min(POLL_STEP);
                if let Some(got) = self
                    .wait_for_new(topic, group, options.max_messages, block)
                    .await?
                {
                    if !got.is_empty() {
                        return Ok(got);
                    }
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn ack(&self, topic: &str, group: &str, receipt: &str) -> Result<()> {
        let span =
            tracing::debug_span!("queue", backend = BACKEND, operation = "ack", topic, group);
        async move {
            checks::topic_group(BACKEND, topic, group)?;
            let (entry, count) = parse_receipt(&self.receipts, receipt)?;
            let mut inv = self.scripts.ack.prepare_invoke();
            inv.key(self.key('s', topic))
                .arg(group)
                .arg(entry)
                .arg(count);
            let status: i64 = self.invoke("ack", &inv).await?;
            match status {
                0 | 1 => Ok(()),
                2 => Err(stale()),
                -1 => Err(topic_not_found(topic)),
                -2 => Err(group_not_found(topic, group)),
                _ => Err(bad_reply("ack")),
            }
        }
        .instrument(span)
        .await
    }

    async fn nack(&self, topic: &str, group: &str, receipt: &str, delay: Duration) -> Result<()> {
        let span =
            tracing::debug_span!("queue", backend = BACKEND, operation = "nack", topic, group);
        async move {
            checks::topic_group(BACKEND, topic, group)?;
            checks::nack_delay(BACKEND, &self.capabilities(), delay)?;
            self.lease("nack", topic, group, receipt, delay).await
        }
        .instrument(span)
        .await
    }

    async fn extend_deadline(
        &self,
        topic: &str,
        group: &str,
        receipt: &str,
        extension: Duration,
    ) -> Result<()> {
        let span = tracing::debug_span!(
            "queue",
            backend = BACKEND,
            operation = "extend_deadline",
            topic,
            group
        );
        async move {
            checks::topic_group(BACKEND, topic, group)?;
            checks::lease(BACKEND, "lease extension", extension)?;
            self.lease("extend", topic, group, receipt, extension).await
        }
        .instrument(span)
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_parse_strictly() {
        let r = Receipts::portable(BACKEND);
        assert_eq!(parse_receipt(&r, "1-0:1").unwrap(), ("1-0", 1));
        assert_eq!(
            parse_receipt(&r, "1796133030675-12:3").unwrap(),
            ("1796133030675-12", 3)
        );
        for bad in [
            "", "x", "0:0:0", "1-0", "1-0:0", "1-0:", "-1:1", "1-:1", "a-b:1", "1-0:x", "1-0-0:1",
            "1-0:1:1",
        ] {
            assert_eq!(
                parse_receipt(&r, bad).unwrap_err().kind(),
                ErrorKind::InvalidArgument,
                "{bad:?}"
            );
        }
    }
}
