//! The topics and groups that exist, kept as retained messages on meta topics.
//!
//! MQTT has no topics to create: any name can be published to, and a publish nobody
//! subscribed to vanishes. The kit's rules (publishing to an unknown topic is `NotFound`, a
//! deleted topic's groups are gone) need a record of what exists, shared by every handle on
//! the broker. Each topic is a retained message on `<prefix>/meta/topic/<topic>` whose payload
//! is the topic's *generation* (random, new at every creation), each group one on
//! `<prefix>/meta/group/<topic>/<group>` with the topic's generation, its own and its ack
//! deadline. Deleting publishes an empty retained message, which clears it.
//!
//! Every handle subscribes to `<prefix>/meta/#` and keeps a view. A lookup that misses sends
//! a *barrier* (a message to `<prefix>/meta/barrier/<handle>`) and looks again once the
//! barrier came back: the broker forwards messages to one subscriber in the order it handled
//! them, so every registry change acknowledged before the barrier was sent has arrived by
//! then. A handle thus sees another handle's completed `create_*` at once; the other
//! direction (a deletion not seen yet) lasts one broker hop. On every reconnect the view is
//! rebuilt from the retained messages (again closed by a barrier), so deletions made while a
//! handle was cut off are not missed.

use super::BACKEND;
use super::link::{Link, LinkHandler};
use cloud_abstraction::{Error, Result};
use rumqttc::v5::mqttbytes::v5::{ConnAck, Publish};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;
use tokio::sync::{Notify, oneshot};

/// How long a lookup waits for the registry (first view, barrier) before `Unavailable`.
const REGISTRY_WAIT: Duration = Duration::from_secs(10);

/// A group as the registry records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct GroupEntry {
    pub(super) topic_generation: String,
    pub(super) generation: String,
    pub(super) ack_deadline_ms: u64,
}

impl GroupEntry {
    fn encode(&self) -> String {
        format!(
            "{} {} {}",
            self.topic_generation, self.generation, self.ack_deadline_ms
        )
    }

    fn decode(payload: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(payload).ok()?;
        let mut parts = text.split(' ');
        let entry = Self {
            topic_generation: parts.next()?.to_string(),
            generation: parts.next()?.to_string(),
            ack_deadline_ms: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(entry)
    }
}

#[derive(Debug, Default, Clone)]
struct View {
    topics: HashMap<String, String>,
    groups: HashMap<(String, String), GroupEntry>,
}

/// Told when a group this handle may hold a session for is gone.
pub(super) trait GroupRemoved: Send + Sync {
    fn group_removed(&self, topic: &str, group: &str, generation: &str);
}

/// One handle's view of the registry.
pub(super) struct Registry {
    prefix: String,
    handle: String,
    view: Mutex<View>,
    /// The view being rebuilt after a (re)connect, until its barrier arrives.
    rebuilding: Mutex<Option<View>>,
    ready: Mutex<bool>,
    ready_changed: Notify,
    barriers: Mutex<HashMap<u64, (oneshot::Sender<()>, bool)>>,
    /// Weak: the link's task holds this registry, which must not keep the link alive.
    link: OnceLock<Weak<Link>>,
    removed: OnceLock<Weak<dyn GroupRemoved>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("prefix", &self.prefix)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Registry {
    pub(super) fn new(prefix: &str, handle: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
            handle: handle.to_string(),
            view: Mutex::default(),
            rebuilding: Mutex::default(),
            ready: Mutex::new(false),
            ready_changed: Notify::new(),
            barriers: Mutex::default(),
            link: OnceLock::new(),
            removed: OnceLock::new(),
        }
    }

    pub(super) fn set_link(&self, link: &Arc<Link>) {
        let _ = self.link.set(Arc::downgrade(link));
    }

    pub(super) fn set_removed(&self, removed: Weak<dyn GroupRemoved>) {
        let _ = self.removed.set(removed);
    }

    pub(super) fn topic_key(&self, topic: &str) -> String {
        format!("{}/meta/topic/{topic}", self.prefix)
    }

    pub(super) fn group_key(&self, topic: &str, group: &str) -> String {
        format!("{}/meta/group/{topic}/{group}", self.prefix)
    }

    pub(super) fn encode_group(entry: &GroupEntry) -> String {
        entry.encode()
    }

    fn barrier_topic(&self) -> String {
        format!("{}/meta/barrier/{}", self.prefix, self.handle)
    }

    /// The generation of `topic`, if it exists.
    pub(super) async fn topic(&self, topic: &str) -> Result<Option<String>> {
        self.wait_ready().await?;
        if let Some(generation) = lock(&self.view).topics.get(topic) {
            return Ok(Some(generation.clone()));
        }
        self.sync().await?;
        Ok(lock(&self.view).topics.get(topic).cloned())
    }

    /// The group, if it exists on the current generation of its topic; also the topic's.
    pub(super) async fn group(
        &self,
        topic: &str,
        group: &str,
    ) -> Result<(Option<String>, Option<GroupEntry>)> {
        self.wait_ready().await?;
        let found = |view: &View| {
            let generation = view.topics.get(topic).cloned();
            let entry = view
                .groups
                .get(&(topic.to_string(), group.to_string()))
                .filter(|e| Some(&e.topic_generation) == generation.as_ref())
                .cloned();
            (generation, entry)
        };
        let first = found(&lock(&self.view));
        if first.1.is_some() {
            return Ok(first);
        }
        self.sync().await?;
        Ok(found(&lock(&self.view)))
    }

    /// The groups of `topic` in the view (for deleting a topic).
    pub(super) fn groups_of(&self, topic: &str) -> Vec<(String, GroupEntry)> {
        lock(&self.view)
            .groups
            .iter()
            .filter(|((t, _), _)| t == topic)
            .map(|((_, g), e)| (g.clone(), e.clone()))
            .collect()
    }

    /// Records a change this handle made (and the broker acknowledged), before its echo.
    pub(super) fn apply_local(&self, key: &str, payload: &[u8]) {
        self.apply(key, payload);
    }

    async fn wait_ready(&self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + REGISTRY_WAIT;
        loop {
            let notified = self.ready_changed.notified();
            if *lock(&self.ready) {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(self.unavailable());
            }
        }
    }

    fn unavailable(&self) -> Error {
        match self.link.get().and_then(Weak::upgrade) {
            Some(link) => link.unavailable(),
            None => Error::unavailable(BACKEND, "the MQTT registry connection is not up"),
        }
    }

    /// Waits until every registry change the broker acknowledged before now has arrived.
    pub(super) async fn sync(&self) -> Result<()> {
        let link = self
            .link
            .get()
            .and_then(Weak::upgrade)
            .ok_or_else(|| self.unavailable())?;
        let arrived = self.barrier(&link, false)?;
        match tokio::time::timeout(REGISTRY_WAIT, arrived).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(self.unavailable()),
        }
    }

    /// Sends a barrier; the receiver fires when it came back.
    fn barrier(&self, link: &Link, rebuild: bool) -> Result<oneshot::Receiver<()>> {
        let nonce = rand::random::<u64>();
        let (tx, rx) = oneshot::channel();
        lock(&self.barriers).insert(nonce, (tx, rebuild));
        // The acknowledgement does not matter: the barrier's arrival is what is awaited.
        let acked = link.publish(
            self.barrier_topic(),
            false,
            bytes::Bytes::from(nonce.to_string()),
            None,
        );
        if let Err(e) = acked {
            lock(&self.barriers).remove(&nonce);
            return Err(e);
        }
        Ok(rx)
    }

    /// Applies a retained registry message (or its deletion) to the view(s).
    fn apply(&self, key: &str, payload: &[u8]) {
        let Some(rest) = key
            .strip_prefix(self.prefix.as_str())
            .and_then(|k| k.strip_prefix("/meta/"))
        else {
            return;
        };
        let mut removed = Vec::new();
        let mut change = |view: &mut View, report: bool| {
            if let Some(topic) = rest.strip_prefix("topic/") {
                if payload.is_empty() {
                    view.topics.remove(topic);
                } else if let Ok(generation) = std::str::from_utf8(payload) {
                    view.topics
                        .insert(topic.to_string(), generation.to_string());
                }
            } else if let Some((topic, group)) =
                rest.strip_prefix("group/").and_then(|r| r.split_once('/'))
            {
                let key = (topic.to_string(), group.to_string());
                let old = if payload.is_empty() {
                    view.groups.remove(&key)
                } else if let Some(entry) = GroupEntry::decode(payload) {
                    view.groups
                        .insert(key, entry.clone())
                        .filter(|old| old.generation != entry.generation)
                } else {
                    None
                };
                if let (Some(old), true) = (old, report) {
                    removed.push((topic.to_string(), group.to_string(), old.generation));
                }
            }
        };
        change(&mut lock(&self.view), true);
        if let Some(view) = lock(&self.rebuilding).as_mut() {
            change(view, false);
        }
        if let Some(target) = self.removed.get().and_then(Weak::upgrade) {
            for (topic, group, generation) in removed {
                target.group_removed(&topic, &group, &generation);
            }
        }
    }
}

impl LinkHandler for Registry {
    fn connected(&self, link: &Arc<Link>, _epoch: u64, _connack: &ConnAck) {
        *lock(&self.rebuilding) = Some(View::default());
        // The subscription is queued before the barrier, so the barrier comes back after the
        // retained messages the subscription brings. A failure here is a failing connection:
        // the next connect starts again.
        let _ = link.subscribe(format!("{}/meta/#", self.prefix));
        let _ = self.barrier(link, true);
    }

    fn publish(&self, _link: &Arc<Link>, _epoch: u64, publish: Publish) {
        let Ok(key) = std::str::from_utf8(&publish.topic) else {
            return;
        };
        if key == self.barrier_topic() {
            let nonce = std::str::from_utf8(&publish.payload)
                .ok()
                .and_then(|n| n.parse::<u64>().ok());
            let Some((tx, rebuild)) = nonce.and_then(|n| lock(&self.barriers).remove(&n)) else {
                return;
            };
            if rebuild {
                if let Some(view) = lock(&self.rebuilding).take() {
                    let old = std::mem::replace(&mut *lock(&self.view), view.clone());
                    // Groups deleted (or re-created) while this handle was cut off.
                    if let Some(target) = self.removed.get().and_then(Weak::upgrade) {
                        for ((topic, group), entry) in old.groups {
                            let now = view.groups.get(&(topic.clone(), group.clone()));
                            if now.is_none_or(|e| e.generation != entry.generation) {
                                target.group_removed(&topic, &group, &entry.generation);
                            }
                        }
                    }
                }
                *lock(&self.ready) = true;
                self.ready_changed.notify_waiters();
            }
            let _ = tx.send(());
            return;
        }
        self.apply(key, &publish.payload);
    }

    fn disconnected(&self, _epoch: u64) {
        *lock(&self.rebuilding) = None;
        lock(&self.barriers).clear();
    }
}
