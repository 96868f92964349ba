//! The in-memory queue.

use super::checks;
use async_trait::async_trait;
use bytes::Bytes;
use cloud_abstraction::queue::{
    GroupOptions, Message, MessageQueue, QueueCapabilities, ReceiveOptions, ReceivedMessage,
};
use cloud_abstraction::{BackendInfo, Error, ErrorKind, Location, Result};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, instrument, warn};

const BACKEND: &str = "memory";
/// Longest de-duplication window (longer ones are clamped to it).
const MAX_DEDUP_WINDOW: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// An in-process [`MessageQueue`]: every capability except durability.
///
/// Leases are checked lazily: an expired lease makes its message available again at the next
/// receive. Long polling wakes on publish, nack and ack (an ack may unblock an ordering key)
/// through a [`Notify`], and otherwise when the next delayed or leased message becomes visible.
/// Clones share the same queue.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use cloud_abstraction::MessageQueue;
/// use cloud_abstraction::queue::{GroupOptions, Message, ReceiveOptions};
/// use paas_components::queue::MemoryQueue;
///
/// let q = MemoryQueue::new();
/// q.create_topic("commands").await?;
/// q.create_group("commands", "workers", GroupOptions::default()).await?;
/// q.publish("commands", Message::new("unlock")).await?;
/// let got = q.receive("commands", "workers", ReceiveOptions::default()).await?;
/// assert_eq!(&got[0].body[..], b"unlock");
/// q.ack("commands", "workers", &got[0].receipt).await?;
/// # Ok::<(), cloud_abstraction::Error>(()) }).unwrap();
/// ```
#[derive(Clone)]
pub struct MemoryQueue {
    inner: Arc<Inner>,
    location: Location,
    capabilities: QueueCapabilities,
}

impl std::fmt::Debug for MemoryQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the messages: bodies and attributes are user data.
        f.debug_struct("MemoryQueue")
            .field("location", &self.location)
            .field("dedup_window", &self.inner.dedup_window)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    /// Woken whenever something may have become receivable.
    changed: Notify,
    dedup_window: Duration,
}

#[derive(Debug, Default)]
struct State {
    topics: HashMap<String, Topic>,
    /// Sequence numbers for messages and lease tokens, unique within the queue.
    next_seq: i64,
}

#[derive(Debug, Default)]
struct Topic {
    groups: HashMap<String, Group>,
    /// Message id -> when it leaves the de-duplication window.
    dedup: HashMap<String, Instant>,
    /// The same ids in insertion order, to prune expired ones cheaply.
    dedup_order: VecDeque<(Instant, String)>,
}

#[derive(Debug)]
struct Group {
    options: GroupOptions,
    /// Pending messages by sequence number, i.e. in publish order.
    pending: BTreeMap<i64, Pending>,
}

#[derive(Debug)]
struct Pending {
    message: Arc<Stored>,
    /// Not deliverable before this (delay, lease, or nack delay).
    visible_at: Instant,
    /// Deliveries so far.
    attempts: u32,
    /// The token of the latest lease, if ever leased.
    lease: Option<i64>,
}

#[derive(Debug)]
struct Stored {
    id: String,
    body: Bytes,
    attributes: BTreeMap<String, String>,
    ordering_key: Option<String>,
    published_at: SystemTime,
}

impl Default for MemoryQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryQueue {
    /// A new, empty queue at [`Location::local`] with a 5-minute de-duplication window.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                changed: Notify::new(),
                dedup_window: Duration::from_secs(300),
            }),
            location: Location::local(),
            capabilities: {
                let mut caps = QueueCapabilities::full();
                caps.durable = false;
                caps.portable_receipts = false;
                caps
            },
        }
    }

    /// The same queue, reporting `location` in its [`BackendInfo`].
    pub fn with_location(mut self, location: Location) -> Self {
        self.location = location;
        self
    }

    /// A new, empty queue with this de-duplication window (default 5 minutes; windows over
    /// 100 years count as 100 years).
    pub fn with_dedup_window(self, window: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                changed: Notify::new(),
                // Bounded so that `now + window` cannot overflow the clock at publish time.
                dedup_window: window.min(MAX_DEDUP_WINDOW),
            }),
            location: self.location,
            capabilities: self.capabilities,
        }
    }

    /// The same queue, claiming (and enforcing) only `capabilities`: operations outside them
    /// fail with [`Unsupported`](ErrorKind::Unsupported). For testing code against the
    /// limits of smaller backends. `durable` and `portable_receipts` are always false (the
    /// queue lives in one process); leases always expire and attempts are always counted.
    pub fn with_capabilities(mut self, mut capabilities: QueueCapabilities) -> Self {
        capabilities.durable = false;
        capabilities.portable_receipts = false;
        capabilities.lease_expiry = true;
        capabilities.attempt_count = true;
        self.capabilities = capabilities;
        self
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>> {
        // A poisoned lock means a bug panicked mid-update; report it instead of panicking again.
        self.inner
            .state
            .lock()
            .map_err(|_| Error::internal(BACKEND, "queue state lock poisoned"))
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

impl State {
    fn next(&mut self) -> i64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn group_mut(&mut self, topic: &str, group: &str) -> Result<&mut Group> {
        self.topics
            .get_mut(topic)
            .ok_or_else(|| topic_not_found(topic))?
            .groups
            .get_mut(group)
            .ok_or_else(|| group_not_found(topic, group))
    }

    /// Appends `message` to every group of `topic` (which must exist).
    fn deliver(&mut self, topic: &str, message: Arc<Stored>, visible_at: Instant) {
        let seq = self.next();
        if let Some(t) = self.topics.get_mut(topic) {
            for g in t.groups.values_mut() {
                g.pending.insert(
                    seq,
                    Pending {
                        message: Arc::clone(&message),
                        visible_at,
                        attempts: 0,
                        lease: None,
                    },
                );
            }
        }
    }

    /// Removes a message from its group and republishes it on the group's dead-letter topic.
    fn dead_letter(&mut self, topic: &str, group: &str, seq: i64, now: Instant) {
        let Ok(g) = self.group_mut(topic, group) else {
            return;
        };
        let Some(p) = g.pending.remove(&seq) else {
            return;
        };
        let dlq = g.options.dead_letter_topic.clone();
        match dlq {
            Some(dlq) if self.topics.contains_key(&dlq) => {
                debug!(topic, group, dead_letter_topic = %dlq, "message dead-lettered");
                self.deliver(&dlq, p.message, now);
            }
            Some(dlq) => {
                warn!(topic, group, dead_letter_topic = %dlq, "dead-letter topic is gone; message dropped");
            }
            None => debug!(topic, group, "message dropped after max_attempts"),
        }
    }

    /// Leases up to `max` deliverable messages of a group; returns them, or when to look again.
    fn claim(
        &mut self,
        topic: &str,
        group: &str,
        max: usize,
        now: Instant,
    ) -> Result<(Vec<ReceivedMessage>, Option<Instant>)> {
        loop {
            let g = self.group_mut(topic, group)?;
            let max_attempts = g.options.max_attempts;
            let mut out_seqs = Vec::new();
            let mut dead = Vec::new();
            let mut heads = HashSet::new();
            let mut next_visible: Option<Instant> = None;
            for (&seq, p) in &g.pending {
                if out_seqs.len() >= max {
                    break;
                }
                // Only the oldest pending message of an ordering key may be delivered.
                if let Some(key) = &p.message.ordering_key {
                    if !heads.insert(key.as_str()) {
                        continue;
                    }
                }
                if p.visible_at > now {
                    next_visible = Some(next_visible.map_or(p.visible_at, |n| n.min(p.visible_at)));
                    continue;
                }
                if max_attempts.is_some_and(|m| p.attempts >= m) {
                    dead.push(seq);
                } else {
                    out_seqs.push(seq);
                }
            }
            let deadline = g.options.ack_deadline;
            let mut out = Vec::with_capacity(out_seqs.len());
            for seq in out_seqs {
                let token = self.next();
                let g = self.group_mut(topic, group)?;
                if let Some(p) = g.pending.get_mut(&seq) {
                    p.attempts = p.attempts.saturating_add(1);
                    p.lease = Some(token);
                    p.visible_at = now + deadline;
                    out.push(ReceivedMessage {
                        id: p.message.id.clone(),
                        body: p.message.body.clone(),
                        attributes: p.message.attributes.clone(),
                        ordering_key: p.message.ordering_key.clone(),
                        attempt: p.attempts,
                        published_at: p.message.published_at,
                        receipt: format!("{seq}.{token}"),
                    });
                }
            }
            if dead.is_empty() {
                return Ok((out, next_visible));
            }
            for seq in dead {
                self.dead_letter(topic, group, seq, now);
            }
            if !out.is_empty() {
                return Ok((out, Some(now)));
            }
            // Dead-lettering may have unblocked an ordering key: look again.
        }
    }

    /// The pending delivery that `receipt` currently leases.
    fn leased(&mut self, topic: &str, group: &str, receipt: &str) -> Result<Option<&mut Pending>> {
        let (seq, token) = checks::receipt(BACKEND, receipt)?;
        let token: i64 = token
            .parse()
            .map_err(|_| Error::invalid(BACKEND, "malformed receipt"))?;
        let g = self.group_mut(topic, group)?;
        match g.pending.get_mut(&seq) {
            None => Ok(None),
            Some(p) if p.lease == Some(token) => Ok(Some(p)),
            Some(_) => Err(Error::new(
                ErrorKind::PreconditionFailed,
                BACKEND,
                "receipt is stale: the message was delivered again since",
            )),
        }
    }
}

fn stale_nack() -> Error {
    Error::new(
        ErrorKind::PreconditionFailed,
        BACKEND,
        "the message of this receipt is no longer pending",
    )
}

#[async_trait]
impl MessageQueue for MemoryQueue {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            backend: BACKEND.to_string(),
            location: self.location.clone(),
        }
    }

    fn capabilities(&self) -> QueueCapabilities {
        self.capabilities.clone()
    }

    #[instrument(level = "debug", skip_all, fields(backend = BACKEND, topic = %topic), err(level = "debug"))]
    async fn create_topic(&self, topic: &str) -> Result<()> {
        checks::topic(BACKEND, topic)?;
        self.lock()?.topics.entry(topic.to_string()).or_default();
        Ok(())
    }

    #[instrument(level = "debug", skip_all, fields(backend = BACKEND, topic = %topic), err(level = "debug"))]
    async fn delete_topic(&self, topic: &str) -> Result<()> {
        checks::topic(BACKEND, topic)?;
        self.lock()?.topics.remove(topic);
        // Waiting receivers find out that the topic is gone.
        self.inner.changed.notify_waiters();
        Ok(())
    }

    #[instrument(level = "debug", skip_all, fields(backend = BACKEND, topic = %topic, group = %group), err(level = "debug"))]
    async fn create_group(&self, topic: &str, group: &str, options: GroupOptions) -> Result<()> {
        checks::topic_group(BACKEND, topic, group)?;
        checks::group_options(BACKEND, &self.capabilities(), topic, &options)?;
        let mut state = self.lock()?;
        if let Some(dlq) = &options.dead_letter_topic {
            if !state.topics.contains_key(dlq) {
                return Err(Error::not_found(
                    BACKEND,
                    format!("dead-letter topic `{dlq}` not found"),
                ));
            }
        }
        let t = state
            .topics
            .get_mut(topic)
            .ok_or_else(|| topic_not_found(topic))?;
        match t.groups.get_mut(group) {
            Some(g) => g.options = options,
            None => {
                t.groups.insert(
                    group.to_string(),
                    Group {
                        options,
                        pending: BTreeMap::new(),
                    },
                );
            }
        }
        Ok(())
    }

    #[instrument(level = "debug", skip_all, fields(backend = BACKEND, topic = %topic, group = %group), err(level = "debug"))]
    async fn delete_group(&self, topic: &str, group: &str) -> Result<()> {
        checks::topic_group(BACKEND, topic, group)?;
        if let Some(t) = self.lock()?.topics.get_mut(topic) {
            t.groups.remove(group);
        }
        self.inner.changed.notify_waiters();
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
        let caps = self.capabilities();
        checks::batch(BACKEND, &caps, &messages)?;
        let now = Instant::now();
        let window = self.inner.dedup_window;
        let mut state = self.lock()?;
        let t = state
            .topics
            .get_mut(topic)
            .ok_or_else(|| topic_not_found(topic))?;
        while let Some((expires, _)) = t.dedup_order.front() {
            if *expires > now {
                break;
            }
            if let Some((expires, id)) = t.dedup_order.pop_front() {
                if t.dedup.get(&id) == Some(&expires) {
                    t.dedup.remove(&id);
                }
            }
        }
        let mut ids = Vec::with_capacity(messages.len());
        let mut to_deliver = Vec::with_capacity(messages.len());
        for m in messages {
            let id = match m.id {
                Some(id) => {
                    if t.dedup.get(&id).is_some_and(|e| *e > now) {
                        debug!(topic, "duplicate message id; not delivered again");
                        ids.push(id);
                        continue;
                    }
                    let expires = now + window;
                    t.dedup.insert(id.clone(), expires);
                    t.dedup_order.push_back((expires, id.clone()));
                    id
                }
                None => uuid::Uuid::new_v4().simple().to_string(),
            };
            ids.push(id.clone());
            let visible_at = now + m.delay.unwrap_or_default();
            to_deliver.push((
                Arc::new(Stored {
                    id,
                    body: m.body,
                    attributes: m.attributes,
                    ordering_key: m.ordering_key,
                    published_at: SystemTime::now(),
                }),
                visible_at,
            ));
        }
        for (stored, visible_at) in to_deliver {
            state.deliver(topic, stored, visible_at);
        }
        drop(state);
        self.inner.changed.notify_waiters();
        Ok(ids)
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
        loop {
            // Registered before looking, so a publish between the look and the wait is not lost.
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let now = Instant::now();
            let (got, next_visible) =
                self.lock()?
                    .claim(topic, group, options.max_messages, now)?;
            if !got.is_empty() || now >= give_up {
                debug!(topic, group, count = got.len(), "received");
                return Ok(got);
            }
            let wake = next_visible.map_or(give_up, |n| n.min(give_up));
            tokio::select! {
                () = &mut changed => {}
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    #[instrument(level = "debug", skip_all, fields(backend = BACKEND, topic = %topic, group = %group), err(level = "debug"))]
    async fn ack(&self, topic: &str, group: &str, receipt: &str) -> Result<()> {
        checks::topic_group(BACKEND, topic, group)?;
        let mut state = self.lock()?;
        if state.leased(topic, group, receipt)?.is_some() {
            let (seq, _) = checks::receipt(BACKEND, receipt)?;
            let g = state.group_mut(topic, group)?;
            let unblocks = g
                .pending
                .remove(&seq)
                .is_some_and(|p| p.message.ordering_key.is_some());
            drop(state);
            if unblocks {
                self.inner.changed.notify_waiters();
            }
        }
        Ok(())
    }

    #[instrument(level = "debug", skip_all, fields(backend = BACKEND, topic = %topic, group = %group), err(level = "debug"))]
    async fn nack(&self, topic: &str, group: &str, receipt: &str, delay: Duration) -> Result<()> {
        checks::topic_group(BACKEND, topic, group)?;
        checks::nack_delay(BACKEND, &self.capabilities(), delay)?;
        let now = Instant::now();
        let mut state = self.lock()?;
        let p = state
            .leased(topic, group, receipt)?
            .ok_or_else(stale_nack)?;
        p.visible_at = now + delay;
        let attempts = p.attempts;
        let (seq, _) = checks::receipt(BACKEND, receipt)?;
        // Out of attempts: dead-letter now rather than at the next receive.
        let max = state.group_mut(topic, group)?.options.max_attempts;
        if delay.is_zero() && max.is_some_and(|m| attempts >= m) {
            state.dead_letter(topic, group, seq, now);
        }
        drop(state);
        self.inner.changed.notify_waiters();
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
        if !self.capabilities.extend_deadline {
            return Err(Error::unsupported(BACKEND, "extend_deadline"));
        }
        checks::lease(BACKEND, "lease extension", extension)?;
        let now = Instant::now();
        let mut state = self.lock()?;
        let p = state
            .leased(topic, group, receipt)?
            .ok_or_else(stale_nack)?;
        p.visible_at = now + extension;
        Ok(())
    }
}
