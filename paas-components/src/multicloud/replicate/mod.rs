//! Active-active replication of documents and blobs over members in several clouds.
//!
//! The document store is described first; [blobs](#blobs) reuse the same versions, breakers,
//! acknowledgement rule, hint replay and repair, with the differences their section states.
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
//!
//! # Blobs
//!
//! [`ReplicatedBlobStore`] is a [`BlobStore`] over two (or more) member blob stores, e.g. S3
//! in one cloud and Azure Blob in the other, built with [`ReplicationBuilder::blobs`]. The
//! versions ([`version`]), breakers, home member, acknowledgement rule, reads that avoid a
//! member that is behind, background replay, conflict reports ([`Conflict`], with an empty
//! `collection`) and repair reports ([`RepairReport`], [`RepairCursor`]) are the ones above.
//!
//! ## Storage layout
//!
//! Each object is stored in each member under the same key, with its bytes, its content type
//! and the caller's metadata as they are, plus **reserved metadata** (names starting with
//! [`RESERVED_METADATA_PREFIX`](cloud_abstraction::validate::RESERVED_METADATA_PREFIX),
//! which has a budget of its own beside the caller's 2048 bytes; AWS S3 itself counts every
//! name against its 2 KiB, so on AWS the caller has the reserved entries' 100 to 250 bytes
//! less, and S3 refuses a put over that):
//! [`_repl_v`](blobs::META_VERSION) the replication version `TIMESTAMP.ORIGIN`,
//! [`_repl_p`](blobs::META_PARENT) the version it replaced, [`_repl_d`](blobs::META_DIGEST)
//! a content digest (16 bytes of SHA-256, hex), and [`_repl_del`](blobs::META_DELETED) on a
//! tombstone. The caller never sees these names (they are stripped from `head`, `get` and
//! listings) and cannot write them (`InvalidArgument`). The store reports its own **portable
//! ETag**, a hash of the replication version, so an ETag read from one member is honoured
//! by `if_match` on any other although the members' own ETags differ.
//!
//! Keys under [`RESERVED_PREFIX`](blobs::RESERVED_PREFIX) (`_replication/`) belong to the
//! store: callers can neither write nor list them. A **hint** is a small JSON object
//! `{"key", "rv"}` at `_replication/hints/TARGET/KEYHASH-TIMESTAMP-ORIGINHASH` on a member
//! that has the write: one per (target, key, version), never overwritten, because blob
//! stores have no conditional delete and a replay must only delete the hints it handled.
//!
//! A **tombstone** is the key itself overwritten by an empty object carrying `_repl_del`
//! and the delete's version: written with the member's conditional put like any version, so
//! a delete and a concurrent put on one member cannot both win blindly. `get`, `head` and
//! `list_page` hide tombstones (a "directory" that holds only tombstones is not listed);
//! listings head every listed object (S3 and Azure listings return no metadata), so a page
//! costs one request per object.
//!
//! ## Writes, the ack rule, and what a member without conditional put weakens
//!
//! As for documents: the key is headed on every member; the home (`home("", key)`) decides
//! `Create` and `UpdateIfMatch` against its state (the newest answered while it is behind);
//! the new version is larger than every one read; unconditional writes go to every member
//! in parallel, conditional ones to the deciding member first. Each member applies a write,
//! replay or repair **only if newer** (by version, then digest) with its own conditional put
//! (create when it has nothing, `if_match` on its own ETag otherwise), re-reading when it
//! changed. The write is **acknowledged** when every member has it, or when every member
//! that missed it has a hint stored in a member that has it; the hint is written right after
//! the write and before the ack (blob stores have no batch to make both one write), so a
//! crash between the two leaves an unacknowledged write that repair settles. A write that no
//! member takes fails with a retryable `Unavailable`.
//!
//! A member whose capabilities lack `conditional_put` (e.g. s3s-fs) is written with plain
//! overwrites after the newer-check: a concurrent write to that member between the head and
//! the put can be replaced by an older version there. Repair heals that from another member
//! that kept the newer version, but if every member raced the same way the newer version is
//! gone. Because any member may have to decide, the replicated store offers `conditional_put`
//! only if every member has it (`Create` and `if_match` are otherwise `Unsupported`).
//! Shown by `member_without_conditional_put_is_written_blindly` in
//! `tests/replication_blobs.rs`.
//!
//! ## Capabilities
//!
//! What every member supports ([`CommonCapabilities`](cloud_abstraction::capabilities::CommonCapabilities)),
//! except: `conditional_get` always (the store checks `if_match` / `if_none_match` against the
//! portable ETag itself, after reading the object); every member must keep metadata (the
//! version lives there), else `build` fails; **no multipart** and **no presign**, declared
//! through the capabilities (the calls answer `Unsupported`). Multipart is not offered
//! because the parts of an upload would have to be buffered and assembled before the object
//! could be replicated as one version, which is a single put of the whole object anyway, and
//! the members' part rules differ (S3 wants 5 MiB parts); a large object goes in one put up
//! to the smallest member's `max_put_size`. A presigned URL names one member and bypasses the
//! replication version, so a write through it would never be replicated.
//!
//! ## Replay, repair, tombstone grace
//!
//! Hint replay is the documents' (on a breaker closing, after a hinted write, every
//! `replay_interval`, on demand with [`ReplicatedBlobStore::replay_hints`]; a new handle
//! finds earlier hints): for each hint the holder's *current* version of the key is copied to
//! the target if newer, then the hint is deleted. [`ReplicatedBlobStore::repair`] walks each
//! member's keys under a prefix in order, heads the key everywhere, compares (key, version,
//! digest), copies the newest side (tombstones included) to every member with an older one,
//! and resumes from the [`RepairCursor`]'s key. Tombstones are kept for
//! [`ReplicationConfig::tombstone_grace`]; blob stores have no TTL, so repair removes a
//! tombstone past its grace from every member once all of them answered. Blob stores have no
//! conditional delete either: a put of the same key racing that removal on a member can be
//! undone there (a key deleted longer ago than the grace and written again in the same
//! instant); keep the grace longer than any outage and run repair when the key space is
//! quiet if that matters.
//!
//! ## Guarantees, limits, and their tests
//!
//! - No acknowledged write lost when either cloud is lost, members identical after heal,
//!   replay and repair, no resurrection, conflicts reported: `tests/replication_blob_servers.rs`
//!   (S3 server and Azurite through cut TCP proxies, a seeded nemesis, and a permanent-loss
//!   run), and the conformance kit and model test over two memory members, memory and
//!   local-file members (`tests/replication_blobs.rs`) and the two servers.
//! - Last writer wins by the hybrid clock: of two concurrent writes the one with the larger
//!   version is kept everywhere, the other reported (`concurrent_puts_keep_one_and_report_the_other`).
//!   Clock skew can only reorder writes that did not see each other ([`version`]).
//! - Conditional writes during a split: each side decides alone, so two `Create`s of one
//!   key can both succeed; after heal one is kept and the other reported as a conflict
//!   (`split_brain_creates_both_succeed_and_one_is_reported`).
//! - A late replay of an older version never resurrects a deleted key
//!   (`late_replay_does_not_resurrect_a_deleted_key`); reads avoid a member with pending
//!   hints (`hinted_write_is_acknowledged_and_reads_avoid_the_member_behind`).
pub mod blobs;
mod documents;
pub mod hints;
pub mod repair;
pub mod version;

pub use blobs::ReplicatedBlobStore;
pub use documents::ReplicatedDocumentStore;
pub use hints::ReplayReport;
pub use repair::{RepairCursor, RepairReport};
pub use version::{HybridClock, Version};

use crate::layers::{BreakerState, CircuitBreaker, CircuitBreakerConfig, Permit, ProbeGuard};
use cloud_abstraction::{BlobStore, DocumentStore, Error, Location, Result};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

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

/// The outcome of applying one replicated version to one member.
#[derive(Debug)]
pub(crate) enum Applied {
    /// Written (the member had an older version or nothing).
    Written,
    /// The member already had this version or a newer one; nothing written.
    AlreadyNewer,
}

/// Re-reads after a member changed under a write, before giving up with `Unavailable`.
const MAX_ATTEMPTS: usize = 8;

/// A member's state of one item, as the shared apply loop sees it.
pub(crate) trait Held {
    /// Its version and parent.
    fn lineage(&self) -> Lineage<'_>;
}

/// The item [`apply_if_newer`] writes: where, and the incoming version.
pub(crate) struct Incoming<'a> {
    pub(crate) member: &'a str,
    pub(crate) collection: &'a str,
    pub(crate) id: &'a str,
    pub(crate) lineage: Lineage<'a>,
    /// `document` or `object`, for messages.
    pub(crate) what: &'static str,
}

/// Writes an incoming version to one member only if it is newer than what the member holds,
/// with a write conditional on the member's own revision / ETag (`write` gets what was read),
/// re-reading when the member changed under it. `known` is what the caller already read
/// (saves a round trip); `covers` says whether a held state is at least as new as the
/// incoming one.
///
/// Where the held and the incoming version did not see each other, the loser is reported to
/// `conflicts` ([`ConflictSink::check`]). With `strict` (a conditional write on its deciding
/// member), a change of the member under the write is not re-compared but returned as
/// `PreconditionFailed` (named after the member), so that the caller decides the condition
/// again.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn apply_if_newer<St, R, RF, W, WF>(
    incoming: Incoming<'_>,
    conflicts: &ConflictSink,
    strict: bool,
    mut known: Option<Option<St>>,
    read: R,
    covers: impl Fn(&St) -> bool,
    write: W,
) -> Result<Applied>
where
    St: Held,
    R: Fn() -> RF,
    RF: Future<Output = Result<Option<St>>>,
    W: Fn(Option<&St>) -> WF,
    WF: Future<Output = Result<()>>,
{
    let check = |held: &St| {
        conflicts.check(
            incoming.collection,
            incoming.member,
            incoming.id,
            held.lineage(),
            incoming.lineage,
        )
    };
    for _ in 0..MAX_ATTEMPTS {
        let current = match known.take() {
            Some(state) => state,
            None => read().await?,
        };
        if let Some(state) = &current {
            if covers(state) {
                check(state);
                return Ok(Applied::AlreadyNewer);
            }
        }
        match write(current.as_ref()).await {
            Ok(()) => {
                if let Some(state) = &current {
                    check(state);
                }
                return Ok(Applied::Written);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    cloud_abstraction::ErrorKind::PreconditionFailed
                        | cloud_abstraction::ErrorKind::AlreadyExists
                ) =>
            {
                if strict {
                    return Err(Error::new(
                        cloud_abstraction::ErrorKind::PreconditionFailed,
                        incoming.member.to_string(),
                        format!(
                            "the {} changed on the deciding member under a conditional write",
                            incoming.what
                        ),
                    ));
                }
                // Someone wrote the key on this member meanwhile: read again, compare again.
                continue;
            }
            Err(e) => return Err(e.or_backend(incoming.member)),
        }
    }
    Err(Error::unavailable(
        incoming.member.to_string(),
        format!(
            "kept changing {} `{}` under the write",
            incoming.what, incoming.id
        ),
    ))
}

/// A conflict: two versions of one item that did not see each other; `winner` is kept
/// everywhere, `loser` is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The collection (empty for a blob).
    pub collection: String,
    /// The document id, or the blob's key.
    pub id: String,
    /// The member on which the two versions met.
    pub member: String,
    /// The version kept.
    pub winner: Version,
    /// The version that lost.
    pub loser: Version,
}

type ConflictCallback = Arc<dyn Fn(&Conflict) + Send + Sync>;

/// A version and the version its write replaced (its parent), as conflicts are judged by.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lineage<'a> {
    pub(crate) rv: &'a Version,
    pub(crate) parent: Option<&'a Version>,
}

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
    /// Reports a conflict if two versions of one item did not see each other: the larger
    /// version's parent (what its write replaced) is older than the smaller version. A member
    /// that is merely behind holds an ancestor, and reports nothing.
    pub(crate) fn check(
        &self,
        collection: &str,
        member: &str,
        id: &str,
        current: Lineage<'_>,
        incoming: Lineage<'_>,
    ) {
        let (winner, loser) = if current.rv >= incoming.rv {
            (current, incoming)
        } else {
            (incoming, current)
        };
        if winner.rv == loser.rv || winner.parent >= Some(loser.rv) {
            return;
        }
        let key = (
            collection.to_string(),
            id.to_string(),
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
            id: id.to_string(),
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

/// One member of a replicated store: the store, its breaker, and whether it is behind.
pub(crate) struct Member<S: ?Sized> {
    pub(crate) name: String,
    pub(crate) store: Arc<S>,
    pub(crate) breaker: CircuitBreaker,
    /// Hints for this member may exist: it serves no reads until a replay drains them.
    pub(crate) behind: AtomicBool,
}

impl<S: ?Sized> Member<S> {
    /// Runs `call` on this member through its breaker.
    pub(crate) async fn call<T, F>(&self, call: impl FnOnce(Arc<S>) -> F) -> Result<T>
    where
        F: Future<Output = Result<T>>,
    {
        let permit: Permit = self
            .breaker
            .try_acquire()
            .map_err(|e| e.or_backend(&self.name))?;
        let result = call(Arc::clone(&self.store)).await;
        permit.record(&result);
        result
    }

    pub(crate) fn admits(&self) -> bool {
        self.breaker.state() != BreakerState::Open
    }

    pub(crate) fn is_behind(&self) -> bool {
        self.behind.load(Ordering::Acquire)
    }
}

/// What every replicated store has, whatever it replicates: the members, the clock, the
/// settings, the conflict sink, the replay signal and the hint counters.
pub(crate) struct Replicas<S: ?Sized> {
    pub(crate) members: Vec<Member<S>>,
    pub(crate) clock: HybridClock,
    pub(crate) config: ReplicationConfig,
    pub(crate) conflicts: ConflictSink,
    pub(crate) location: Location,
    pub(crate) replay_wanted: Arc<Notify>,
    pub(crate) hints_written: AtomicU64,
    pub(crate) hints_replayed: AtomicU64,
    /// Active probes of the members, stopped with the store.
    pub(crate) probes: Mutex<Vec<ProbeGuard>>,
}

impl<S: ?Sized> Replicas<S> {
    pub(crate) fn new(
        members: Vec<(String, Arc<S>, CircuitBreaker)>,
        origin: String,
        config: ReplicationConfig,
        location: Location,
    ) -> Self {
        Self {
            members: members
                .into_iter()
                .map(|(name, store, breaker)| Member {
                    name,
                    store,
                    breaker,
                    behind: AtomicBool::new(false),
                })
                .collect(),
            clock: HybridClock::new(origin),
            config,
            conflicts: ConflictSink::default(),
            location,
            replay_wanted: Arc::new(Notify::new()),
            hints_written: AtomicU64::new(0),
            hints_replayed: AtomicU64::new(0),
            probes: Mutex::new(Vec::new()),
        }
    }

    /// Member indexes in the order a write of `(collection, id)` is decided: the key's home
    /// first, then the others in preference order.
    pub(crate) fn decision_order(&self, collection: &str, id: &str) -> Vec<usize> {
        let n = self.members.len();
        let home = (self.config.home)(collection, id) % n;
        std::iter::once(home)
            .chain((0..n).filter(|&i| i != home))
            .collect()
    }

    /// The members to read from, best first: those that are not behind and whose breaker
    /// admits calls, in preference order; then the rest (better a possibly stale answer than
    /// none, when nothing else answers).
    pub(crate) fn read_order(&self) -> Vec<usize> {
        let (good, rest): (Vec<usize>, Vec<usize>) = (0..self.members.len())
            .partition(|&i| self.members[i].admits() && !self.members[i].is_behind());
        good.into_iter().chain(rest).collect()
    }

    /// The deciding member for a key whose reads are `reads`: the first in `order` that
    /// answered.
    pub(crate) fn decider<T>(
        &self,
        backend: &'static str,
        order: &[usize],
        reads: &[Result<T>],
    ) -> Result<usize> {
        order
            .iter()
            .copied()
            .find(|&i| reads[i].is_ok())
            .ok_or_else(|| self.none_reachable(backend, reads))
    }

    /// The error of a request that no member answered: persistent unless some member's
    /// failure was temporary.
    pub(crate) fn none_reachable<T>(&self, backend: &'static str, reads: &[Result<T>]) -> Error {
        let listed: Vec<String> = reads
            .iter()
            .zip(&self.members)
            .filter_map(|(r, m)| r.as_ref().err().map(|e| format!("{}: {e}", m.name)))
            .collect();
        let temporary = reads.iter().any(|r| {
            r.as_ref()
                .is_err_and(|e| e.status() == cloud_abstraction::ErrorStatus::Temporary)
        });
        let e = Error::unavailable(
            backend,
            format!("no member answered ({})", listed.join("; ")),
        );
        if temporary { e } else { e.persist() }
    }

    /// Runs a read on the members in [`read_order`](Self::read_order) until one answers
    /// (an answer includes a request error such as `NotFound`; only a member's failure moves
    /// on to the next).
    pub(crate) async fn read_from_any<'a, T, F, Fut>(
        &'a self,
        backend: &'static str,
        call: F,
    ) -> Result<T>
    where
        F: Fn(usize, &'a Member<S>) -> Fut,
        Fut: Future<Output = Result<T>> + 'a,
    {
        let mut errors = Vec::new();
        for i in self.read_order() {
            let member = &self.members[i];
            match call(i, member).await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_target_failure() => errors.push(format!("{}: {e}", member.name)),
                Err(e) => return Err(e),
            }
        }
        Err(Error::unavailable(
            backend,
            format!("no member answered ({})", errors.join("; ")),
        ))
    }

    /// Splits a cursor (query cursor, page token) that this store issued into the member that
    /// issued the inner one and that inner cursor: later pages stay on that member.
    pub(crate) fn unpin_cursor(
        &self,
        backend: &'static str,
        prefix: &str,
        cursor: Option<&str>,
    ) -> Result<(Option<usize>, Option<String>)> {
        let Some(c) = cursor else {
            return Ok((None, None));
        };
        let (index, rest) = c
            .strip_prefix(prefix)
            .and_then(|r| r.split_once(':'))
            .and_then(|(i, rest)| i.parse::<usize>().ok().map(|i| (i, rest)))
            .filter(|(i, _)| *i < self.members.len())
            .ok_or_else(|| Error::invalid(backend, "the cursor was not issued by this store"))?;
        Ok((Some(index), Some(rest.to_string())))
    }

    /// Counts `count` hints written for member `target`.
    pub(crate) fn count_hints_written(&self, target: usize, count: u64) {
        self.hints_written.fetch_add(count, Ordering::Relaxed);
        metrics::counter!("replication_hints_written_total", "member" => self.members[target].name.clone())
            .increment(count);
    }

    /// Counts one hint replayed to `target`.
    pub(crate) fn count_hint_replayed(&self, target: &str) {
        self.hints_replayed.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("replication_hints_replayed_total", "member" => target.to_string())
            .increment(1);
    }

    /// Probes every member every `interval` through its breaker (see
    /// [`ReplicationBuilder::probe_interval`]).
    pub(crate) fn start_probes<F, Fut>(&self, interval: Duration, probe: F)
    where
        F: Fn(Arc<S>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
        S: Send + Sync + 'static,
    {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let guards = self
            .members
            .iter()
            .map(|m| {
                let member = Arc::clone(&m.store);
                let probe = probe.clone();
                m.breaker
                    .spawn_probe(interval, move || probe(Arc::clone(&member)))
            })
            .collect();
        *self.probes.lock().unwrap_or_else(|e| e.into_inner()) = guards;
    }
}

/// A replicated store's hint log, as the shared recovery and replay use it.
pub(crate) trait HintLog: Send + Sync + 'static {
    type Store: ?Sized + Send + Sync + 'static;
    fn replicas(&self) -> &Replicas<Self::Store>;
    /// Replays the hints `holder` keeps for `target`.
    fn replay_from(
        &self,
        holder: &Member<Self::Store>,
        target: &Member<Self::Store>,
        report: &mut ReplayReport,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Whether `holder` holds hints for `target` (`None` if it cannot be asked).
    fn holds_hints(
        &self,
        holder: &Member<Self::Store>,
        target: &str,
    ) -> impl Future<Output = Option<bool>> + Send;

    /// One replay pass over every member whose breaker admits calls: a member stops being
    /// behind when no reachable holder has a hint for it left.
    fn replay(&self) -> impl Future<Output = ReplayReport> + Send {
        async move {
            let members = &self.replicas().members;
            let mut report = ReplayReport::default();
            for target in members {
                if !target.admits() {
                    if target.is_behind() {
                        report.pending.push(target.name.clone());
                    }
                    continue;
                }
                let mut remaining = false;
                for holder in members.iter().filter(|h| h.name != target.name) {
                    if !holder.admits()
                        || self.replay_from(holder, target, &mut report).await.is_err()
                    {
                        remaining = true;
                    }
                }
                if remaining {
                    report.pending.push(target.name.clone());
                } else if target.behind.swap(false, Ordering::AcqRel) {
                    tracing::info!(member = %target.name, "hint backlog drained; member serves reads again");
                    report.drained.push(target.name.clone());
                }
            }
            report
        }
    }
}

/// Marks members behind for which any reachable member holds hints (left by an earlier
/// process, which may have crashed).
pub(crate) async fn recover<I: HintLog>(inner: &I) {
    let replicas = inner.replicas();
    for target in &replicas.members {
        for holder in replicas.members.iter().filter(|h| h.name != target.name) {
            // Unknown (holder unreachable) counts as behind: better no reads than stale.
            if inner.holds_hints(holder, &target.name).await != Some(false) {
                target.behind.store(true, Ordering::Release);
            }
        }
    }
}

/// Starts the background replay: a pass whenever a breaker closes, a write recorded a hint,
/// or `replay_interval` passed, while any member is behind. Ends with the store.
pub(crate) fn start_background_replay<I: HintLog>(inner: &Arc<I>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let weak = Arc::downgrade(inner);
    let replicas = inner.replicas();
    let interval = replicas.config.replay_interval;
    // A breaker closing is the signal that a member is back.
    for member in &replicas.members {
        let wake = Arc::clone(&replicas.replay_wanted);
        member.breaker.on_transition(move |t| {
            if t.to == BreakerState::Closed {
                wake.notify_one();
            }
        });
    }
    let wake = Arc::clone(&replicas.replay_wanted);
    runtime.spawn(async move {
        loop {
            let Some(inner) = weak.upgrade() else { return };
            if inner.replicas().members.iter().any(Member::is_behind) {
                let report = inner.replay().await;
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

/// The methods every replicated store handle offers about its members, hints and conflicts
/// (`self.inner` derefs to [`Replicas`]).
macro_rules! replica_handle_methods {
    () => {
        /// The members' names, in preference order.
        pub fn member_names(&self) -> Vec<String> {
            self.inner.members.iter().map(|m| m.name.clone()).collect()
        }

        /// The breaker of member `index`.
        pub fn breaker(&self, index: usize) -> Option<&$crate::layers::CircuitBreaker> {
            self.inner.members.get(index).map(|m| &m.breaker)
        }

        /// Whether member `index` may lack acknowledged writes (hints for it may be pending),
        /// so that it serves no reads.
        pub fn is_behind(&self, index: usize) -> bool {
            self.inner.members.get(index).is_some_and(|m| m.is_behind())
        }

        /// Hints this handle wrote, and replayed, since it was built.
        pub fn hint_counts(&self) -> (u64, u64) {
            use std::sync::atomic::Ordering;
            (
                self.inner.hints_written.load(Ordering::Relaxed),
                self.inner.hints_replayed.load(Ordering::Relaxed),
            )
        }

        /// The origin id of this handle's versions.
        pub fn origin(&self) -> &str {
            self.inner.clock.origin()
        }

        /// Registers a callback for every conflict (see [`Conflict`](super::Conflict)).
        pub fn on_conflict(&self, callback: impl Fn(&super::Conflict) + Send + Sync + 'static) {
            self.inner.conflicts.subscribe(callback);
        }

        /// Conflicts reported so far by this handle.
        pub fn conflict_count(&self) -> u64 {
            self.inner.conflicts.count()
        }

        /// Runs one hint replay pass now.
        pub async fn replay_hints(&self) -> super::ReplayReport {
            super::HintLog::replay(&*self.inner).await
        }
    };
}
pub(crate) use replica_handle_methods;

/// Builds a replicated store: a [`ReplicatedDocumentStore`] over document stores
/// ([`ReplicationBuilder::new`]), or a [`ReplicatedBlobStore`] over blob stores
/// ([`ReplicationBuilder::blobs`]).
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
pub struct ReplicationBuilder<S: ?Sized = dyn DocumentStore> {
    members: Vec<(String, Arc<S>)>,
    breaker: CircuitBreakerConfig,
    config: ReplicationConfig,
    origin: Option<String>,
    background: bool,
    probe_interval: Option<Duration>,
}

impl<S: ?Sized> fmt::Debug for ReplicationBuilder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicationBuilder")
            .field(
                "members",
                &self.members.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("breaker", &self.breaker)
            .field("config", &self.config)
            .field("origin", &self.origin)
            .field("background", &self.background)
            .field("probe_interval", &self.probe_interval)
            .finish()
    }
}

impl Default for ReplicationBuilder {
    fn default() -> Self {
        Self::empty()
    }
}

impl ReplicationBuilder {
    /// A builder of a [`ReplicatedDocumentStore`]: no members yet; default breakers and
    /// settings; background replay on.
    pub fn new() -> Self {
        Self::empty()
    }
}

impl ReplicationBuilder<dyn BlobStore> {
    /// A builder of a [`ReplicatedBlobStore`]: no members yet; default breakers and
    /// settings; background replay on.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use cloud_abstraction::storage::{BlobStore, BlobStoreExt};
    /// use paas_components::multicloud::replicate::ReplicationBuilder;
    /// use paas_components::storage::MemoryBlobStore;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> cloud_abstraction::Result<()> {
    /// let aws: Arc<dyn BlobStore> = Arc::new(MemoryBlobStore::new());
    /// let azure: Arc<dyn BlobStore> = Arc::new(MemoryBlobStore::new());
    /// let store = ReplicationBuilder::blobs()
    ///     .member("aws", aws.clone())
    ///     .member("azure", azure.clone())
    ///     .origin("service-1")
    ///     .build()
    ///     .await?;
    /// let put = store.put_bytes("vehicles/WVW-1", "locked".into()).await?;
    /// // Both clouds hold it; the store's ETag is the same whichever member answers.
    /// assert_eq!(aws.get_bytes("vehicles/WVW-1").await?, "locked");
    /// assert_eq!(azure.get_bytes("vehicles/WVW-1").await?, "locked");
    /// assert_eq!(store.head("vehicles/WVW-1").await?.etag, put.etag);
    /// # Ok(()) }
    /// ```
    pub fn blobs() -> Self {
        Self::empty()
    }
}

impl<S: ?Sized> ReplicationBuilder<S> {
    fn empty() -> Self {
        Self {
            members: Vec::new(),
            breaker: CircuitBreakerConfig::default(),
            config: ReplicationConfig::default(),
            origin: None,
            background: true,
            probe_interval: None,
        }
    }

    /// Adds a member named `name` (stable across restarts: hints name their target by it).
    pub fn member(mut self, name: impl Into<String>, store: Arc<S>) -> Self {
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
    /// member that decides conditional writes of that key while it is reachable. Called
    /// with `(collection, id)` for documents and `("", key)` for blobs. Cell routing sets it
    /// from the cell's home cloud.
    pub fn home(mut self, home: impl Fn(&str, &str) -> usize + Send + Sync + 'static) -> Self {
        self.config.home = Arc::new(home);
        self
    }

    /// Probes every member actively every `interval` (a small read through its breaker, see
    /// [`CircuitBreaker::spawn_probe`]): a member that comes back closes its breaker, and its
    /// hints are replayed, without waiting for client traffic. Off by default (the breakers
    /// then learn from calls only).
    pub fn probe_interval(mut self, interval: Duration) -> Self {
        self.probe_interval = Some(interval);
        self
    }

    /// No background replay task (replay only through `replay_hints`); for tests that
    /// control every step.
    pub fn without_background_replay(mut self) -> Self {
        self.background = false;
        self
    }

    /// Checks the member names and gives each member its breaker; returns them with the
    /// origin.
    #[allow(clippy::type_complexity)]
    fn prepare(
        &mut self,
        backend: &'static str,
    ) -> Result<(Vec<(String, Arc<S>, CircuitBreaker)>, String)> {
        let mut names = std::collections::BTreeSet::new();
        for (name, _) in &self.members {
            if name.is_empty() || !names.insert(name.clone()) {
                return Err(Error::invalid(
                    backend,
                    format!("member names must be non-empty and unique (`{name}`)"),
                ));
            }
        }
        let origin = self
            .origin
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        let mut members = Vec::with_capacity(self.members.len());
        for (name, store) in std::mem::take(&mut self.members) {
            let breaker = CircuitBreaker::new(format!("replica {name}"), self.breaker.clone())?;
            members.push((name, store, breaker));
        }
        Ok((members, origin))
    }
}

impl ReplicationBuilder {
    /// Builds the store, finds hints left by an earlier process (those members start
    /// behind), and starts the background replay (needs a tokio runtime).
    pub async fn build(mut self) -> Result<ReplicatedDocumentStore> {
        let (members, origin) = self.prepare(documents::BACKEND)?;
        cloud_abstraction::validate::resource_name(
            documents::BACKEND,
            "hints collection",
            &self.config.hints_collection,
        )?;
        let store = ReplicatedDocumentStore::build(members, origin, self.config)?;
        recover(&*store.inner).await;
        if self.background {
            start_background_replay(&store.inner);
        }
        if let Some(interval) = self.probe_interval {
            let collection = store.inner.config.hints_collection.clone();
            store
                .inner
                .start_probes(interval, move |member: Arc<dyn DocumentStore>| {
                    let collection = collection.clone();
                    async move { member.get(&collection, "probe").await.map(|_| ()) }
                });
        }
        Ok(store)
    }
}

impl ReplicationBuilder<dyn BlobStore> {
    /// Builds the store, finds hints left by an earlier process (those members start
    /// behind), and starts the background replay (needs a tokio runtime).
    pub async fn build(mut self) -> Result<ReplicatedBlobStore> {
        let (members, origin) = self.prepare(blobs::BACKEND)?;
        let store = ReplicatedBlobStore::build(members, origin, self.config)?;
        recover(&*store.inner).await;
        if self.background {
            start_background_replay(&store.inner);
        }
        if let Some(interval) = self.probe_interval {
            let key = blobs::probe_key();
            store
                .inner
                .start_probes(interval, move |member: Arc<dyn BlobStore>| {
                    let key = key.clone();
                    async move {
                        match member.head(&key).await {
                            Err(e) if e.kind() != cloud_abstraction::ErrorKind::NotFound => Err(e),
                            _ => Ok(()),
                        }
                    }
                });
        }
        Ok(store)
    }
}

impl ReplicatedDocumentStore {
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
        RepairReport::run_to_end(|cursor| self.repair(collection, cursor, 10_000)).await
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
