//! A Jepsen-style harness for replicated stores: a seeded workload of concurrent writers that
//! records every operation, a seeded nemesis that cuts and heals members, and a checker that
//! finds every acknowledged write afterwards; for replicated document and blob stores alike
//! (a [`Subject`] of the workload).

use bytes::Bytes;
use cloud_abstraction::Result;
use cloud_abstraction::database::{DocumentStore, PutDocumentOptions, Query, WriteCondition};
use cloud_abstraction::storage::{BlobStore, PutOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The run's seed: `REPLICATION_SEED` if set (to replay a run), else random; printed by
/// every scenario.
pub fn seed() -> u64 {
    std::env::var("REPLICATION_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random)
}

/// The workload's length: `REPLICATION_SECONDS` (2 to 85), default 30 s.
pub fn duration() -> Duration {
    let secs = std::env::var("REPLICATION_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30u64);
    Duration::from_secs(secs.clamp(2, 85))
}

/// The members' breakers in the scenarios: open after 3 failures, probe after 500 ms.
pub fn breaker() -> paas_components::layers::CircuitBreakerConfig {
    paas_components::layers::CircuitBreakerConfig {
        consecutive_failures: 3,
        open_for: Duration::from_millis(500),
        successes_to_close: 2,
        ..Default::default()
    }
}

/// What an operation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Put,
    /// A create of a fresh key that is never written again (a command with its own id): an
    /// acknowledged one that a member misses stays missed, unlike a hot key that a later
    /// write would paper over.
    Insert,
    ConditionalUpdate,
    Delete,
}

/// One operation of the workload, as the client saw it.
#[derive(Debug, Clone)]
pub struct Op {
    pub key: usize,
    pub kind: OpKind,
    /// The value written (`None` for a delete); unique per operation.
    pub value: Option<Value>,
    /// The version tag the store returned for an acknowledged write, where it has one.
    pub tag: Option<String>,
    pub start: Instant,
    pub end: Instant,
    pub acknowledged: bool,
}

/// Which members the nemesis acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    A,
    B,
    Both,
}

/// One nemesis step: at `at` after the start, cut (`true`) or heal (`false`) `target`.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    pub at: Duration,
    pub target: Target,
    pub cut: bool,
}

/// Cut A, heal, cut B, heal, cut both for a moment, heal: at seeded random times within
/// `duration` (the last heal well before the end).
pub fn nemesis_plan(seed: u64, duration: Duration) -> Vec<Step> {
    let mut rng = StdRng::seed_from_u64(seed);
    let slot = duration.as_secs_f64() / 6.0;
    let mut at = |i: f64, min: f64, max: f64| {
        Duration::from_secs_f64(slot * i + slot * rng.random_range(min..max))
    };
    vec![
        Step {
            at: at(0.0, 0.3, 0.7),
            target: Target::A,
            cut: true,
        },
        Step {
            at: at(1.0, 0.3, 0.9),
            target: Target::A,
            cut: false,
        },
        Step {
            at: at(2.0, 0.1, 0.5),
            target: Target::B,
            cut: true,
        },
        Step {
            at: at(3.0, 0.1, 0.6),
            target: Target::B,
            cut: false,
        },
        Step {
            at: at(4.0, 0.0, 0.4),
            target: Target::Both,
            cut: true,
        },
        Step {
            at: at(4.0, 0.5, 0.7),
            target: Target::Both,
            cut: false,
        },
    ]
}

/// The workload's shape.
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    pub writers: usize,
    pub keys: usize,
    pub duration: Duration,
    pub seed: u64,
}

/// Keys from here on are inserted once each.
pub const INSERT_KEYS: usize = 1_000_000;

pub fn key_id(key: usize) -> String {
    format!("k{key:04}")
}

/// What the workload writes to: a replicated document collection or a key prefix of a
/// replicated blob store. Each write returns the store's version tag where it has one (the
/// blob store's portable ETag), for the checker.
pub trait Subject: Send + Sync + 'static {
    /// An unconditional write.
    fn put(&self, id: &str, value: &Value) -> impl Future<Output = Result<Option<String>>> + Send;
    /// A create-if-absent.
    fn create(
        &self,
        id: &str,
        value: &Value,
    ) -> impl Future<Output = Result<Option<String>>> + Send;
    /// Read, then write only if nobody wrote in between (create if absent).
    fn update(
        &self,
        id: &str,
        value: &Value,
    ) -> impl Future<Output = Result<Option<String>>> + Send;
    fn delete(&self, id: &str) -> impl Future<Output = Result<()>> + Send;
}

/// A collection of a document store.
pub struct Documents {
    pub store: Arc<dyn DocumentStore>,
    pub collection: String,
}

impl Subject for Documents {
    async fn put(&self, id: &str, value: &Value) -> Result<Option<String>> {
        self.store
            .put(
                &self.collection,
                id,
                value.clone(),
                PutDocumentOptions::default(),
            )
            .await
            .map(|_| None)
    }
    async fn create(&self, id: &str, value: &Value) -> Result<Option<String>> {
        self.store
            .put(
                &self.collection,
                id,
                value.clone(),
                PutDocumentOptions::create(),
            )
            .await
            .map(|_| None)
    }
    async fn update(&self, id: &str, value: &Value) -> Result<Option<String>> {
        let options = match self.store.get(&self.collection, id).await? {
            Some(doc) => PutDocumentOptions::if_revision(doc.revision),
            None => PutDocumentOptions::create(),
        };
        self.store
            .put(&self.collection, id, value.clone(), options)
            .await
            .map(|_| None)
    }
    async fn delete(&self, id: &str) -> Result<()> {
        self.store
            .delete(&self.collection, id, WriteCondition::Any)
            .await
            .map(|_| ())
    }
}

/// The keys under `prefix` of a blob store; values are stored as JSON bytes.
pub struct Blobs {
    pub store: Arc<dyn BlobStore>,
    pub prefix: String,
}

impl Blobs {
    async fn write(&self, id: &str, value: &Value, options: PutOptions) -> Result<Option<String>> {
        let body = Bytes::from(serde_json::to_vec(value).expect("json"));
        let key = format!("{}{id}", self.prefix);
        self.store
            .put(&key, body, options)
            .await
            .map(|r| Some(r.etag))
    }
}

impl Subject for Blobs {
    async fn put(&self, id: &str, value: &Value) -> Result<Option<String>> {
        self.write(id, value, PutOptions::default()).await
    }
    async fn create(&self, id: &str, value: &Value) -> Result<Option<String>> {
        self.write(id, value, PutOptions::create()).await
    }
    async fn update(&self, id: &str, value: &Value) -> Result<Option<String>> {
        let options = match self.store.head(&format!("{}{id}", self.prefix)).await {
            Ok(meta) => PutOptions::if_match(meta.etag),
            Err(e) if e.kind() == cloud_abstraction::ErrorKind::NotFound => PutOptions::create(),
            Err(e) => return Err(e),
        };
        self.write(id, value, options).await
    }
    async fn delete(&self, id: &str) -> Result<()> {
        self.store.delete(&format!("{}{id}", self.prefix)).await
    }
}

/// Runs the workload against `store` in `collection`; returns every operation.
pub async fn run_workload(store: Arc<dyn DocumentStore>, collection: &str, w: Workload) -> Vec<Op> {
    let subject = Documents {
        store,
        collection: collection.to_string(),
    };
    run(Arc::new(subject), w).await
}

/// Runs the workload against `subject`: each writer picks puts (45 %), conditional updates
/// (15 %), deletes (15 %) over `w.keys` hot keys, and inserts of fresh keys (25 %); returns
/// every operation, acknowledged or not (refused conditions are left out: they did nothing).
pub async fn run<S: Subject>(subject: Arc<S>, w: Workload) -> Vec<Op> {
    let started = Instant::now();
    let tasks: Vec<_> = (0..w.writers)
        .map(|writer| {
            let subject = Arc::clone(&subject);
            tokio::spawn(async move {
                let mut rng =
                    StdRng::seed_from_u64(w.seed ^ (writer as u64).wrapping_mul(0x9E37_79B9));
                let mut ops = Vec::new();
                let mut seq = 0u64;
                while started.elapsed() < w.duration {
                    seq += 1;
                    let roll: f64 = rng.random();
                    let key = if roll >= 0.75 {
                        INSERT_KEYS + writer * 1_000_000 + seq as usize
                    } else {
                        rng.random_range(0..w.keys)
                    };
                    let id = key_id(key);
                    let value = json!({"w": writer, "s": seq});
                    let start = Instant::now();
                    let (kind, result, value) = if roll >= 0.75 {
                        (
                            OpKind::Insert,
                            subject.create(&id, &value).await,
                            Some(value),
                        )
                    } else if roll < 0.45 {
                        (OpKind::Put, subject.put(&id, &value).await, Some(value))
                    } else if roll < 0.6 {
                        let r = subject.update(&id, &value).await;
                        (OpKind::ConditionalUpdate, r, Some(value))
                    } else {
                        let r = subject.delete(&id).await.map(|()| None);
                        (OpKind::Delete, r, None)
                    };
                    let acknowledged = result.is_ok();
                    if let Err(e) = &result {
                        // Refused conditions are answers; everything else must be retryable.
                        use cloud_abstraction::ErrorKind::*;
                        assert!(
                            matches!(e.kind(), PreconditionFailed | AlreadyExists)
                                || e.is_target_failure(),
                            "writer {writer}: unexpected error {e}"
                        );
                        if !e.is_target_failure() {
                            // Not applied anywhere: leave it out of the history.
                            continue;
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    ops.push(Op {
                        key,
                        kind,
                        value,
                        tag: result.ok().flatten(),
                        start,
                        end: Instant::now(),
                        acknowledged,
                    });
                }
                ops
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("writer task"));
    }
    all
}

/// Runs the nemesis plan, calling `act(target, cut)` at each step.
pub async fn run_nemesis(plan: &[Step], mut act: impl AsyncFnMut(Target, bool)) {
    let started = Instant::now();
    for step in plan {
        let wait = step.at.saturating_sub(started.elapsed());
        tokio::time::sleep(wait).await;
        act(step.target, step.cut).await;
    }
}

/// What the checker found.
#[derive(Debug, Default)]
pub struct Verdict {
    pub operations: usize,
    pub acknowledged: usize,
    pub lost: Vec<String>,
}

/// Checks the final state (`key -> value`, absent for deleted or never written) against the
/// history: the final state of each key must come from an operation that is not
/// *definitely before* (ended before the start of) any acknowledged operation on that key.
/// Within one process the hybrid clock orders versions like real time, so an acknowledged
/// write that started after another ended must win over it: if it does not, it was lost.
pub fn check(ops: &[Op], final_state: &HashMap<usize, Value>) -> Verdict {
    let mut verdict = Verdict {
        operations: ops.len(),
        acknowledged: ops.iter().filter(|o| o.acknowledged).count(),
        lost: Vec::new(),
    };
    let mut by_key: HashMap<usize, Vec<&Op>> = HashMap::new();
    for op in ops {
        by_key.entry(op.key).or_default().push(op);
    }
    for (key, history) in by_key {
        let last_acked_start = history
            .iter()
            .filter(|o| o.acknowledged)
            .map(|o| o.start)
            .max();
        let Some(last_acked_start) = last_acked_start else {
            continue;
        };
        let final_value = final_state.get(&key);
        // Candidates: operations that could have produced the final state.
        let producers: Vec<&&Op> = history
            .iter()
            .filter(|o| match (&o.value, final_value) {
                (Some(v), Some(f)) => v == f,
                (None, None) => o.kind == OpKind::Delete,
                _ => false,
            })
            .collect();
        let explained = producers.iter().any(|o| o.end >= last_acked_start);
        if !explained {
            let last = history
                .iter()
                .filter(|o| o.acknowledged && o.start == last_acked_start)
                .map(|o| format!("{:?} {:?}", o.kind, o.value))
                .next()
                .unwrap_or_default();
            verdict.lost.push(format!(
                "{}: final state {final_value:?} but an acknowledged {last} started after it",
                key_id(key)
            ));
        }
    }
    verdict
}

/// Every document of `collection` in a member, as `(id, envelope without member metadata)`.
pub async fn dump(member: &Arc<dyn DocumentStore>, collection: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = member
            .query(
                collection,
                Query {
                    cursor,
                    limit: Some(500),
                    ..Query::all()
                },
            )
            .await
            .expect("dump a member");
        out.extend(page.documents.into_iter().map(|d| (d.id, d.value)));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return out,
        }
    }
}

/// The user-visible final state from a member dump: live documents' values by key number.
pub fn live_state(dump: &[(String, Value)]) -> HashMap<usize, Value> {
    dump.iter()
        .filter(|(_, env)| env["del"] != json!(true))
        .filter_map(|(id, env)| {
            let key = id.strip_prefix('k')?.parse().ok()?;
            Some((key, env["v"].clone()))
        })
        .collect()
}

/// One object of a blob member, as dumps compare them: key, metadata (reserved names
/// included), bytes and content type; the member's own ETag and times are left out.
pub type BlobEntry = (
    String,
    std::collections::BTreeMap<String, String>,
    Bytes,
    Option<String>,
);

/// Every object under `prefix` of a blob member, tombstones included, in key order.
pub async fn dump_blobs(member: &Arc<dyn BlobStore>, prefix: &str) -> Vec<BlobEntry> {
    use cloud_abstraction::storage::{BlobStoreExt, GetOptions};
    let mut out = Vec::new();
    for object in member.list_all(prefix).await.expect("list a member") {
        let got = member
            .get(&object.key, GetOptions::default())
            .await
            .expect("read a member");
        out.push((
            object.key,
            got.meta.metadata,
            got.data,
            got.meta.content_type,
        ));
    }
    out
}

/// Keys on which a conflict provably happened: the final version `(timestamp, parent
/// timestamp)` of a key replaced, without having seen it, an acknowledged write whose
/// version lies between its parent and itself. `timestamp_of` reads a write's timestamp from
/// its tag. (One origin: versions order by timestamp.) Each of these must have been
/// reported.
pub fn provable_conflicts(
    ops: &[Op],
    finals: &HashMap<usize, (u64, Option<u64>)>,
    timestamp_of: impl Fn(&str) -> Option<u64>,
) -> std::collections::BTreeSet<usize> {
    let mut keys = std::collections::BTreeSet::new();
    for op in ops.iter().filter(|o| o.acknowledged) {
        let (Some(tag), Some((last, parent))) = (&op.tag, finals.get(&op.key)) else {
            continue;
        };
        let Some(t) = timestamp_of(tag) else { continue };
        if t < *last && parent.is_none_or(|p| p < t) {
            keys.insert(op.key);
        }
    }
    keys
}

/// What a scenario ends with, after heal, replay and repair: printed as the run's figures
/// and checked by [`Outcome::assert`].
pub struct Outcome<'a, D> {
    pub label: &'a str,
    pub seed: u64,
    pub verdict: &'a Verdict,
    /// Hints written and replayed.
    pub hints: (u64, u64),
    pub drain: Duration,
    pub repaired: &'a paas_components::multicloud::replicate::RepairReport,
    pub conflicts: u64,
    /// Extra figures for the printed line.
    pub extra: String,
    pub dump_a: &'a [D],
    pub dump_b: &'a [D],
}

impl<D: PartialEq> Outcome<'_, D> {
    /// Prints the figures; asserts progress, hints written, nothing lost, identical members
    /// and a repair that reached every member.
    pub fn assert(&self) {
        let (label, seed, v) = (self.label, self.seed, self.verdict);
        println!(
            "[{label}] operations {}, acknowledged {}, hints written {}, replayed {}, \
             drained in {:?}, repaired {} (of {} compared), conflicts {}{}, lost {}",
            v.operations,
            v.acknowledged,
            self.hints.0,
            self.hints.1,
            self.drain,
            self.repaired.copied,
            self.repaired.compared,
            self.conflicts,
            self.extra,
            v.lost.len()
        );
        assert!(v.acknowledged > 100, "the workload made progress: {v:?}");
        assert!(
            self.hints.0 > 0,
            "the nemesis cut a member while writes were acknowledged"
        );
        assert_eq!(
            v.lost,
            Vec::<String>::new(),
            "acknowledged writes lost (seed {seed})"
        );
        assert_eq!(
            self.dump_a.len(),
            self.dump_b.len(),
            "same number of items on both members (seed {seed})"
        );
        assert!(
            self.dump_a == self.dump_b,
            "members differ after heal, replay and repair (seed {seed})"
        );
        assert_eq!(self.repaired.failed, 0, "repair reached every member");
    }
}

/// The user-visible state of a replicated blob member's dump: live objects' JSON values by
/// key number (tombstones left out).
pub fn live_blob_state(dump: &[BlobEntry], prefix: &str) -> HashMap<usize, Value> {
    use paas_components::multicloud::replicate::blobs::ReplicationMeta;
    dump.iter()
        .filter(|(_, md, _, _)| {
            !ReplicationMeta::from_metadata(md)
                .expect("replicated")
                .deleted
        })
        .filter_map(|(key, _, data, _)| {
            let n = key.strip_prefix(prefix)?.strip_prefix('k')?.parse().ok()?;
            Some((n, serde_json::from_slice(data).expect("a JSON value")))
        })
        .collect()
}
