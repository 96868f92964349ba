//! Active-active replication of documents over members in several clouds.
//!
//! [`ReplicatedDocumentStore`] is a [`DocumentStore`] over
//! two (or more) member stores, e.g. PostgreSQL in one cloud and MariaDB in the other. Every
//! write goes to every member; reads go to the first healthy member that is not behind.
//!
//! # Storage layout
//!
//! Each document is stored in each member, in the same collection and under the same id,
//! inside an envelope: `{"_wrapped": 1, "k": id, "rv": {"t": timestamp, "o": origin}, "p":
//! parent version, "n": revision, "del": tombstone, "v": document}`. The marker lets members
//! hold the one level of nesting the envelope adds
//! ([`WRAPPER_MARKER`](cloud_abstraction::validate::WRAPPER_MARKER)), so the replicated store
//! accepts every document a plain store does. `rv` is the **replication version** ([`version`]), independent
//! of the members' own revisions (which differ per backend); `n` is the portable revision the
//! store reports (1 for a new document, +1 per write, as the conformance kit requires).
//! Queries are translated (`a.b` becomes `v.a.b`, plus `del = false`), so they run on the
//! member. Hints live in the reserved collection [`ReplicationConfig::hints_collection`] of
//! each member ([`hints`]).
//!
//! # Writes and the acknowledgement rule
//!
//! 1. The key is read on every member at once. The key's **home** member
//!    ([`ReplicationBuilder::home`], default the first) decides: its state is what the write's
//!    condition (`create`, `if_revision`) is checked against. While the home is unreachable,
//!    the next member that answered decides. While the deciding member is **behind** (see
//!    Reads: back, but hinted writes not yet replayed), the condition is checked against the
//!    newest version any member answered with, not against its stale state.
//! 2. The new version is larger than every version read (hybrid logical clock, so causality
//!    survives clock skew).
//! 3. Unconditional writes go to every reachable member in parallel; conditional writes to
//!    the deciding member first, then to the others. Each member applies the write **only if
//!    newer** than what it holds, with a conditional write on the member's own revision, so a
//!    concurrent write there is never overwritten blindly (it is re-read and compared again).
//! 4. The write is **acknowledged** when every member has it; or, when some member missed it
//!    (unreachable, or failed), when at least one member has it *and a durable hint* for each
//!    member that missed it is stored in a member that has it. For a member already known to
//!    be down (its read failed), the hint goes into the same atomic `write_batch` as the write
//!    where the holder has transactions; otherwise right after the write, still before the
//!    ack. If no member takes the write, or no hint can be stored, the write fails with a
//!    retryable `Unavailable`: nothing acknowledged depends on a member that lacks it without a
//!    hint. Unlike Cassandra's hinted handoff, hints are written and synced before the ack, so
//!    a crash of the writer loses none.
//!
//! # Reads
//!
//! Reads go to the first member (in preference order) whose breaker admits calls and that is
//! not **behind**: a member is behind from the moment a hint for it is written (before the
//! ack) until a replay pass finds no hint for it, so every caller of this handle reads its own
//! acknowledged writes. When every member is behind or down, the reachable ones are asked
//! anyway (a possibly stale answer beats none). A query cursor names the member that issued it;
//! its later pages stay on that member (and fail with `Unavailable` if it goes down: start
//! the query again).
//!
//! # Deletes and tombstones
//!
//! A delete writes a tombstone (the envelope with `del: true`) with its version, replicated
//! and hinted like any write, so that a late replay or repair never resurrects the document.
//! Tombstones expire after [`ReplicationConfig::tombstone_grace`] (through the members' TTL),
//! which must be longer than any outage a member is expected to come back from without a full
//! [`repair`](ReplicatedDocumentStore::repair).
//!
//! # Conflicts
//!
//! Two writes of one key that did not see each other (e.g. one decided by each cloud during a
//! split, or two concurrent unconditional writes) are resolved by the larger version: last
//! writer wins, by the hybrid clocks. The losing version is **reported** through
//! [`ReplicatedDocumentStore::on_conflict`] and the `replication_conflicts_total` counter,
//! never dropped silently. In particular two conditional writes (e.g. two `create`s of one id)
//! that both succeed during a split, one in each cloud, are a conflict: one of them is kept,
//! the other reported. A conditional write is only as strong as its deciding member: during a
//! split each side decides alone.
//!
//! # Replay and repair
//!
//! Hints are replayed when a member's breaker closes, whenever a write recorded a hint, and at
//! least every [`ReplicationConfig::replay_interval`], in hint order, idempotently (see
//! [`hints`]); [`ReplicatedDocumentStore::replay_hints`] runs a pass on demand. A handle
//! built after a crash finds the hints its predecessor wrote ([`ReplicationBuilder::build`]
//! scans for them) and replays them. [`ReplicatedDocumentStore::repair`] is the
//! anti-entropy pass that makes members identical whatever happened ([`repair`]).
//!
//! # Failures
//!
//! Each member sits behind its own [`CircuitBreaker`]: a member that keeps failing is skipped
//! without being called until its cool-down ends, so writes are acknowledged at the speed of
//! the healthy cloud plus the hint. Errors name the member. With
//! [`ReplicationBuilder::probe_interval`] an active probe feeds the breakers too, so a member
//! that dies while idle is skipped before a request fails on it.
//!
//! The guarantees are checked against real servers in `tests/replication_documents.rs` (every
//! acknowledged write recorded and found after heal, replay and repair; members identical; no
//! resurrection; conflicts reported) and by the whole conformance kit and model test run on a
//! replicated store.

mod documents;
pub mod hints;
pub mod repair;
pub mod version;

pub use documents::ReplicatedDocumentStore;
pub use hints::ReplayReport;
pub use repair::{RepairCursor, RepairReport};
pub use version::{HybridClock, Version};

use crate::layers::{BreakerState, CircuitBreaker, CircuitBreakerConfig};
use cloud_abstraction::{DocumentStore, Error, Result};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Chooses the home member of `(collection, id)`.
pub(crate) type HomeFn = Arc<dyn Fn(&str, &str) -> usize + Send + Sync>;

/// Settings of a replicated store.
#[derive(Clone)]
pub struct ReplicationConfig {
    /// How long tombstones are kept. Default 7 days.
    pub tombstone_grace: Duration,
    /// The reserved member collection that holds hints. Default `replication_hints`.
    pub hints_collection: String,
    /// How often the background task replays hints even without a signal. Default 1 s.
    pub replay_interval: Duration,
    pub(crate) home: HomeFn,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self {
            tombstone_grace: Duration::from_secs(7 * 24 * 3600),
            hints_collection: "replication_hints".into(),
            replay_interval: Duration::from_secs(1),
            home: Arc::new(|_, _| 0),
        }
    }
}

impl fmt::Debug for ReplicationConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicationConfig")
            .field("tombstone_grace", &self.tombstone_grace)
            .field("hints_collection", &self.hints_collection)
            .field("replay_interval", &self.replay_interval)
            .finish_non_exhaustive()
    }
}

/// A conflict: two versions of one item that did not see each other; `winner` is kept
/// everywhere, `loser` is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The collection.
    pub collection: String,
    /// The document id.
    pub id: String,
    /// The member on which the two versions met.
    pub member: String,
    /// The version kept.
    pub winner: Version,
    /// The version that lost.
    pub loser: Version,
}

type ConflictCallback = Arc<dyn Fn(&Conflict) + Send + Sync>;

/// Where conflicts go: callbacks, a count and a metric.
#[derive(Default)]
pub(crate) struct ConflictSink {
    callbacks: Mutex<Vec<ConflictCallback>>,
    count: AtomicU64,
    /// Conflicts reported lately, so that one meeting of two versions seen on several members
    /// (or by a write and then a repair) is reported once by this handle.
    recent: Mutex<std::collections::VecDeque<(String, String, Version, Version)>>,
}

const RECENT_CONFLICTS: usize = 1024;

impl ConflictSink {
    /// Reports a conflict if the two envelopes of one item did not see each other: the larger
    /// version's parent (what its write replaced) is older than the smaller version. A member
    /// that is merely behind holds an ancestor, and reports nothing.
    pub(crate) fn check(
        &self,
        collection: &str,
        member: &str,
        current: &documents::Envelope,
        incoming: &documents::Envelope,
    ) {
        let (winner, loser) = if current.rv >= incoming.rv {
            (current, incoming)
        } else {
            (incoming, current)
        };
        if winner.rv == loser.rv || winner.p.as_ref() >= Some(&loser.rv) {
            return;
        }
        let key = (
            collection.to_string(),
            winner.k.clone(),
            winner.rv.clone(),
            loser.rv.clone(),
        );
        {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            if recent.contains(&key) {
                return;
            }
            if recent.len() == RECENT_CONFLICTS {
                recent.pop_front();
            }
            recent.push_back(key);
        }
        self.report(Conflict {
            collection: collection.to_string(),
            id: winner.k.clone(),
            member: member.to_string(),
            winner: winner.rv.clone(),
            loser: loser.rv.clone(),
        });
    }

    pub(crate) fn report(&self, conflict: Conflict) {
        self.count.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("replication_conflicts_total", "collection" => conflict.collection.clone())
            .increment(1);
        tracing::warn!(
            collection = %conflict.collection,
            id = %conflict.id,
            member = %conflict.member,
            winner = %conflict.winner,
            loser = %conflict.loser,
            "replication conflict: last writer wins"
        );
        let callbacks = self
            .callbacks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for callback in callbacks {
            callback(&conflict);
        }
    }

    pub(crate) fn subscribe(&self, callback: impl Fn(&Conflict) + Send + Sync + 'static) {
        self.callbacks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::new(callback));
    }

    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// Builds a [`ReplicatedDocumentStore`].
///
/// ```
/// use std::sync::Arc;
/// use cloud_abstraction::database::{DocumentStore, DocumentStoreExt, PutDocumentOptions};
/// use paas_components::database::MemoryDocumentStore;
/// use paas_components::multicloud::replicate::ReplicationBuilder;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> cloud_abstraction::Result<()> {
/// let aws = Arc::new(MemoryDocumentStore::new());
/// let azure = Arc::new(MemoryDocumentStore::new());
/// let store = ReplicationBuilder::new()
///     .member("aws", aws.clone())
///     .member("azure", azure.clone())
///     .origin("service-1")
///     .build()
///     .await?;
/// store.put("vehicles", "WVW-1", serde_json::json!({"locked": true}), PutDocumentOptions::create()).await?;
/// // Both clouds hold it (inside the replication envelope).
/// assert!(aws.get("vehicles", "WVW-1").await?.is_some());
/// assert!(azure.get("vehicles", "WVW-1").await?.is_some());
/// # Ok(()) }
/// ```
#[derive(Debug, Default)]
pub struct ReplicationBuilder {
    members: Vec<(String, Arc<dyn DocumentStore>)>,
    breaker: CircuitBreakerConfig,
    config: ReplicationConfig,
    origin: Option<String>,
    background: bool,
    probe_interval: Option<Duration>,
}

impl ReplicationBuilder {
    /// No members yet; default breakers and settings; background replay on.
    pub fn new() -> Self {
        Self {
            background: true,
            ..Default::default()
        }
    }

    /// Adds a member named `name` (stable across restarts: hints name their target by it).
    pub fn member(mut self, name: impl Into<String>, store: Arc<dyn DocumentStore>) -> Self {
        self.members.push((name.into(), store));
        self
    }

    /// The breaker configuration of every member.
    pub fn breaker(mut self, config: CircuitBreakerConfig) -> Self {
        self.breaker = config;
        self
    }

    /// The id of this process in versions (default: a random id). Give each process its own.
    pub fn origin(mut self, origin: impl Into<String>) -> Self {
        self.origin = Some(origin.into());
        self
    }

    /// How long tombstones are kept.
    pub fn tombstone_grace(mut self, grace: Duration) -> Self {
        self.config.tombstone_grace = grace;
        self
    }

    /// The background replay interval.
    pub fn replay_interval(mut self, interval: Duration) -> Self {
        self.config.replay_interval = interval;
        self
    }

    /// Chooses each key's home member (index into the members, modulo their count): the
    /// member that decides conditional writes of that key while it is reachable. Cell routing
    /// sets it from the cell's home cloud.
    pub fn home(mut self, home: impl Fn(&str, &str) -> usize + Send + Sync + 'static) -> Self {
        self.config.home = Arc::new(home);
        self
    }

    /// Probes every member actively every `interval` (a read of the hints collection through
    /// its breaker, see [`CircuitBreaker::spawn_probe`]): a member that comes back closes its
    /// breaker, and its hints are replayed, without waiting for client traffic. Off by
    /// default (the breakers then learn from calls only).
    pub fn probe_interval(mut self, interval: Duration) -> Self {
        self.probe_interval = Some(interval);
        self
    }

    /// No background replay task (replay only through
    /// [`ReplicatedDocumentStore::replay_hints`]); for tests that control every step.
    pub fn without_background_replay(mut self) -> Self {
        self.background = false;
        self
    }

    /// Builds the store, finds hints left by an earlier process (those members start
    /// behind), and starts the background replay (needs a tokio runtime).
    pub async fn build(self) -> Result<ReplicatedDocumentStore> {
        let mut names = std::collections::BTreeSet::new();
        for (name, _) in &self.members {
            if name.is_empty() || !names.insert(name.clone()) {
                return Err(Error::invalid(
                    documents::BACKEND,
                    format!("member names must be non-empty and unique (`{name}`)"),
                ));
            }
        }
        cloud_abstraction::validate::resource_name(
            documents::BACKEND,
            "hints collection",
            &self.config.hints_collection,
        )?;
        let origin = self
            .origin
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        let mut members = Vec::with_capacity(self.members.len());
        for (name, store) in self.members {
            let breaker = CircuitBreaker::new(format!("replica {name}"), self.breaker.clone())?;
            members.push((name, store, breaker));
        }
        let store = ReplicatedDocumentStore::build(members, origin, self.config)?;
        store.recover().await;
        if self.background {
            store.start_background_replay();
        }
        if let (Some(interval), Ok(_)) =
            (self.probe_interval, tokio::runtime::Handle::try_current())
        {
            let collection = store.inner.config.hints_collection.clone();
            let guards = store
                .inner
                .members
                .iter()
                .map(|m| {
                    let member = Arc::clone(&m.store);
                    let collection = collection.clone();
                    m.breaker.spawn_probe(interval, move || {
                        let member = Arc::clone(&member);
                        let collection = collection.clone();
                        async move { member.get(&collection, "probe").await.map(|_| ()) }
                    })
                })
                .collect();
            *store.inner.probes.lock().unwrap_or_else(|e| e.into_inner()) = guards;
        }
        Ok(store)
    }
}

impl ReplicatedDocumentStore {
    /// Marks members behind for which any reachable member holds hints.
    async fn recover(&self) {
        let inner = &self.inner;
        for target in &inner.members {
            for holder in inner.members.iter().filter(|h| h.name != target.name) {
                let found = hints::count_for(inner, holder, &target.name, 1).await;
                // Unknown (holder unreachable) counts as behind: better no reads than stale.
                if found != Some(0) {
                    target.behind.store(true, Ordering::Release);
                }
            }
        }
    }

    fn start_background_replay(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = self.downgrade();
        let interval = self.inner.config.replay_interval;
        // A breaker closing is the signal that a member is back.
        for member in &self.inner.members {
            let weak = weak.clone();
            member.breaker.on_transition(move |t| {
                if t.to == BreakerState::Closed {
                    if let Some(inner) = weak.upgrade() {
                        inner.replay_wanted.notify_one();
                    }
                }
            });
        }
        let wake = Arc::clone(&self.inner.replay_wanted);
        runtime.spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let any_behind = inner
                    .members
                    .iter()
                    .any(|m| m.behind.load(Ordering::Acquire));
                if any_behind {
                    let report = hints::replay(&inner).await;
                    if report.copied > 0 || !report.drained.is_empty() {
                        tracing::info!(?report, "hint replay pass");
                    }
                }
                // Hold only a weak reference while waiting, so a dropped store ends the task.
                drop(inner);
                let _ = tokio::time::timeout(interval, wake.notified()).await;
            }
        });
    }

    /// Runs one hint replay pass now.
    pub async fn replay_hints(&self) -> ReplayReport {
        hints::replay(&self.inner).await
    }

    /// One repair pass over `collection` (see [`repair`]), comparing at most `max_documents`
    /// ids from `from`; resume with the report's `next`.
    pub async fn repair(
        &self,
        collection: &str,
        from: RepairCursor,
        max_documents: u64,
    ) -> Result<RepairReport> {
        cloud_abstraction::validate::resource_name(documents::BACKEND, "collection", collection)?;
        repair::repair(&self.inner, collection, from, max_documents.max(1), 200).await
    }

    /// Repairs `collection` completely.
    pub async fn repair_all(&self, collection: &str) -> Result<RepairReport> {
        let mut total = RepairReport::default();
        let mut cursor = RepairCursor::default();
        loop {
            let r = self.repair(collection, cursor, 10_000).await?;
            total.compared += r.compared;
            total.copied += r.copied;
            total.tombstones_copied += r.tombstones_copied;
            total.failed += r.failed;
            match r.next {
                Some(next) => cursor = next,
                None => return Ok(total),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    #[test]
    fn futures_are_send() {
        let store =
            ReplicatedDocumentStore::build(Vec::new(), "o".into(), ReplicationConfig::default());
        assert!(store.is_err());
        let builder = ReplicationBuilder::new();
        assert_send(&builder.build());
    }

    #[allow(dead_code)]
    fn store_futures_are_send(store: &ReplicatedDocumentStore) {
        assert_send(&store.replay_hints());
        assert_send(&store.repair_all("c"));
        assert_send(&store.repair("c", RepairCursor::default(), 1));
    }
}
