//! The replicated document store over embedded members: the whole kit and model test, and
//! each guarantee on its own (hints before the ack, reads avoid a member that is behind,
//! replay, no resurrection, conflicts reported, repair, recovery after a crash).
#![cfg(all(feature = "memory", feature = "sqlite"))]

mod support;

use cloud_abstraction::database::{DocumentStore, PutDocumentOptions, Query, WriteCondition};
use cloud_abstraction::testkit::database;
use cloud_abstraction::{ErrorKind, Location};
use paas_components::database::{MemoryDocumentStore, SqliteDocumentStore};
use paas_components::layers::{self, CircuitBreakerConfig, FaultInjector};
use paas_components::multicloud::ReplicatedDocumentStore;
use paas_components::multicloud::replicate::{RepairCursor, ReplicationBuilder};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::jepsen::dump;

fn breaker() -> CircuitBreakerConfig {
    CircuitBreakerConfig {
        consecutive_failures: 2,
        open_for: Duration::from_millis(200),
        successes_to_close: 1,
        ..Default::default()
    }
}

struct Pair {
    store: ReplicatedDocumentStore,
    a: Arc<dyn DocumentStore>,
    b: Arc<dyn DocumentStore>,
    fa: FaultInjector,
    fb: FaultInjector,
}

async fn pair(background: bool) -> Pair {
    let a: Arc<dyn DocumentStore> =
        Arc::new(MemoryDocumentStore::new().with_location(Location::new("aws", "eu-central-1")));
    let b: Arc<dyn DocumentStore> =
        Arc::new(MemoryDocumentStore::new().with_location(Location::new("azure", "westeurope")));
    pair_over(a, b, background).await
}

async fn pair_over(a: Arc<dyn DocumentStore>, b: Arc<dyn DocumentStore>, background: bool) -> Pair {
    pair_as("test", a, b, background).await
}

async fn pair_as(
    origin: &str,
    a: Arc<dyn DocumentStore>,
    b: Arc<dyn DocumentStore>,
    background: bool,
) -> Pair {
    let fa = FaultInjector::new(1);
    let fb = FaultInjector::new(2);
    let mut builder = ReplicationBuilder::new()
        .member("a", layers::document_store(a.clone(), fa.layer()))
        .member("b", layers::document_store(b.clone(), fb.layer()))
        .breaker(breaker())
        .origin(origin);
    if !background {
        builder = builder.without_background_replay();
    }
    Pair {
        store: builder.build().await.unwrap(),
        a,
        b,
        fa,
        fb,
    }
}

/// A member's raw envelope of `(collection, id)`, without the member's own revision.
async fn raw(member: &Arc<dyn DocumentStore>, collection: &str, id: &str) -> Option<Value> {
    member.get(collection, id).await.unwrap().map(|d| d.value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kit_over_two_memory_members() {
    let p = pair(true).await;
    let report = database::run_suite(Arc::new(p.store)).await;
    assert_eq!(
        report.passed.len(),
        database::cases().len(),
        "{:?}",
        report.failed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kit_over_two_sqlite_members() {
    let dir = tempfile::tempdir().unwrap();
    let a = SqliteDocumentStore::connect(&format!("sqlite://{}/a.db", dir.path().display()))
        .await
        .unwrap();
    let b = SqliteDocumentStore::connect(&format!("sqlite://{}/b.db", dir.path().display()))
        .await
        .unwrap();
    let p = pair_over(Arc::new(a), Arc::new(b), true).await;
    let report = database::run_suite(Arc::new(p.store)).await;
    assert_eq!(
        report.passed.len(),
        database::cases().len(),
        "{:?}",
        report.failed
    );
}

#[test]
fn model_test_over_two_memory_members() {
    database::run_model_test(|| async {
        Arc::new(pair(false).await.store) as Arc<dyn DocumentStore>
    });
}

#[tokio::test]
async fn writes_reach_both_members_with_one_version() {
    let p = pair(false).await;
    let rev = p
        .store
        .put("cars", "v1", json!({"km": 1}), PutDocumentOptions::create())
        .await
        .unwrap();
    assert_eq!(rev.0, 1);
    let ea = raw(&p.a, "cars", "v1").await.unwrap();
    let eb = raw(&p.b, "cars", "v1").await.unwrap();
    assert_eq!(ea, eb, "the same envelope on both members");
    assert_eq!(ea["v"], json!({"km": 1}));
    assert_eq!(ea["rv"]["o"], "test");
    assert_eq!(p.store.info().backend, "replicated");
    assert_eq!(
        p.store.info().location,
        Location::new("aws", "eu-central-1")
    );
}

#[tokio::test]
async fn a_write_while_one_member_is_down_is_acknowledged_with_a_durable_hint() {
    let p = pair(false).await;
    p.fb.set_down(true);
    p.store
        .put(
            "cars",
            "v1",
            json!({"km": 2}),
            PutDocumentOptions::default(),
        )
        .await
        .unwrap();
    // The hint is on A before the ack; B is behind and serves no reads.
    let hints = dump(&p.a, "replication_hints").await;
    assert_eq!(hints.len(), 1, "{hints:?}");
    assert_eq!(hints[0].1["target"], "b");
    assert!(p.store.is_behind(1));
    assert_eq!(p.store.hint_counts().0, 1);

    // A write while A is the one that is down is decided by B and hinted for A.
    p.fb.set_down(false);
    p.fa.set_down(true);
    p.store
        .put("cars", "v2", json!({"km": 3}), PutDocumentOptions::create())
        .await
        .unwrap();
    assert!(raw(&p.b, "cars", "v2").await.is_some());
    assert_eq!(dump(&p.b, "replication_hints").await.len(), 1);

    // Both down: nothing is acknowledged.
    p.fb.set_down(true);
    let err = p
        .store
        .put("cars", "v3", json!({}), PutDocumentOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(err.is_target_failure());

    // Heal and replay: both members identical, no hints left, nobody behind.
    p.fa.set_down(false);
    p.fb.set_down(false);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let report = p.store.replay_hints().await;
    assert_eq!(report.copied, 2, "{report:?}");
    assert!(report.pending.is_empty(), "{report:?}");
    assert!(!p.store.is_behind(0) && !p.store.is_behind(1));
    assert_eq!(dump(&p.a, "cars").await, dump(&p.b, "cars").await);
    assert!(dump(&p.a, "replication_hints").await.is_empty());
    assert!(dump(&p.b, "replication_hints").await.is_empty());
}

#[tokio::test]
async fn reads_avoid_a_member_that_is_behind() {
    let p = pair(false).await;
    p.store
        .put("cars", "v1", json!({"n": 1}), PutDocumentOptions::default())
        .await
        .unwrap();
    p.fa.set_down(true);
    p.store
        .put("cars", "v1", json!({"n": 2}), PutDocumentOptions::default())
        .await
        .unwrap();
    // A is back but has the old value and a pending hint: reads must not go to it.
    p.fa.set_down(false);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(p.store.is_behind(0));
    let doc = p.store.get("cars", "v1").await.unwrap().unwrap();
    assert_eq!(
        doc.value,
        json!({"n": 2}),
        "read-your-writes while A is behind"
    );
    assert_eq!(doc.revision.0, 2);
    p.store.replay_hints().await;
    assert!(!p.store.is_behind(0));
    assert_eq!(raw(&p.a, "cars", "v1").await.unwrap()["v"], json!({"n": 2}));
}

#[tokio::test]
async fn a_delete_during_an_outage_never_comes_back() {
    let p = pair(false).await;
    p.store
        .put(
            "cars",
            "gone",
            json!({"x": 1}),
            PutDocumentOptions::default(),
        )
        .await
        .unwrap();
    p.fb.set_down(true);
    assert!(
        p.store
            .delete("cars", "gone", WriteCondition::Any)
            .await
            .unwrap()
    );
    // B still has the old document; A has a tombstone.
    assert_eq!(raw(&p.a, "cars", "gone").await.unwrap()["del"], true);
    p.fb.set_down(false);
    tokio::time::sleep(Duration::from_millis(250)).await;
    // Repair before the replay: B's live copy is older than A's tombstone, so the tombstone
    // wins and nothing is resurrected on A.
    let report = p.store.repair_all("cars").await.unwrap();
    assert_eq!(report.tombstones_copied, 1, "{report:?}");
    p.store.replay_hints().await;
    assert!(p.store.get("cars", "gone").await.unwrap().is_none());
    assert_eq!(raw(&p.b, "cars", "gone").await.unwrap()["del"], true);
    assert_eq!(dump(&p.a, "cars").await, dump(&p.b, "cars").await);
    assert!(
        p.store
            .query("cars", Query::all())
            .await
            .unwrap()
            .documents
            .is_empty()
    );
}

/// A batch delete of a document its deciding member does not have, but another member does
/// (a write that failed for its caller but landed there), leaves a tombstone everywhere:
/// otherwise repair would copy that copy back and the deleted document would return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_delete_of_a_copy_only_another_member_holds_leaves_a_tombstone() {
    use cloud_abstraction::database::{WriteOp, WriteOutcome};
    let p = pair(false).await;
    p.store
        .put(
            "cars",
            "template",
            json!({"x": 1}),
            PutDocumentOptions::default(),
        )
        .await
        .unwrap();
    // Plant on B alone the envelope of a write to `ghost` that never reached A.
    let mut envelope = raw(&p.b, "cars", "template").await.unwrap();
    envelope["k"] = json!("ghost");
    p.b.put("cars", "ghost", envelope, PutDocumentOptions::default())
        .await
        .unwrap();
    assert!(raw(&p.a, "cars", "ghost").await.is_none());
    let outcomes = p
        .store
        .write_batch(vec![WriteOp::Delete {
            collection: "cars".into(),
            id: "ghost".into(),
            condition: WriteCondition::Any,
        }])
        .await
        .unwrap();
    // Decided by A, which had nothing: reported as nothing deleted, yet tombstoned.
    assert_eq!(outcomes, vec![WriteOutcome::Deleted(false)]);
    assert_eq!(raw(&p.a, "cars", "ghost").await.unwrap()["del"], true);
    assert_eq!(raw(&p.b, "cars", "ghost").await.unwrap()["del"], true);
    p.store.repair_all("cars").await.unwrap();
    assert!(p.store.get("cars", "ghost").await.unwrap().is_none());
    assert_eq!(dump(&p.a, "cars").await, dump(&p.b, "cars").await);
}

#[tokio::test]
async fn two_creates_during_a_split_are_a_reported_conflict() {
    // Two processes, one in each cloud, each seeing only its own member during the split.
    let a: Arc<dyn DocumentStore> = Arc::new(MemoryDocumentStore::new());
    let b: Arc<dyn DocumentStore> = Arc::new(MemoryDocumentStore::new());
    let left = pair_as("left", a.clone(), b.clone(), false).await;
    let right = pair_as("right", a.clone(), b.clone(), false).await;
    let conflicts = Arc::new(Mutex::new(Vec::new()));
    for store in [&left.store, &right.store] {
        let seen = Arc::clone(&conflicts);
        store.on_conflict(move |c| seen.lock().unwrap().push(c.clone()));
    }
    left.fb.set_down(true); // left sees only A
    right.fa.set_down(true); // right sees only B
    left.store
        .put(
            "cmds",
            "c1",
            json!({"from": "left"}),
            PutDocumentOptions::create(),
        )
        .await
        .unwrap();
    right
        .store
        .put(
            "cmds",
            "c1",
            json!({"from": "right"}),
            PutDocumentOptions::create(),
        )
        .await
        .unwrap();
    // Heal; both sides replay their hints.
    for p in [&left, &right] {
        p.fa.set_down(false);
        p.fb.set_down(false);
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    left.store.replay_hints().await;
    right.store.replay_hints().await;
    left.store.repair_all("cmds").await.unwrap();
    // One write won everywhere; the other was reported, not dropped silently.
    assert_eq!(dump(&a, "cmds").await, dump(&b, "cmds").await);
    let winner = raw(&a, "cmds", "c1").await.unwrap();
    let conflicts = conflicts.lock().unwrap().clone();
    assert!(
        !conflicts.is_empty(),
        "the split-brain create was not reported"
    );
    assert!(conflicts.iter().all(|c| c.id == "c1"));
    assert_eq!(winner["rv"]["t"], json!(conflicts[0].winner.timestamp));
}

#[tokio::test]
async fn conditional_writes_are_decided_by_the_home_member() {
    let p = pair(false).await;
    let rev = p
        .store
        .put("cars", "v", json!({"n": 1}), PutDocumentOptions::create())
        .await
        .unwrap();
    let err = p
        .store
        .put("cars", "v", json!({"n": 9}), PutDocumentOptions::create())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    p.store
        .put(
            "cars",
            "v",
            json!({"n": 2}),
            PutDocumentOptions::if_revision(rev),
        )
        .await
        .unwrap();
    let err = p
        .store
        .put(
            "cars",
            "v",
            json!({"n": 3}),
            PutDocumentOptions::if_revision(rev),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PreconditionFailed);
    // With the home down, the standby decides.
    p.fa.set_down(true);
    p.store
        .put("cars", "w", json!({}), PutDocumentOptions::create())
        .await
        .unwrap();
    let err = p
        .store
        .put("cars", "w", json!({}), PutDocumentOptions::create())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
}

#[tokio::test]
async fn a_new_process_finds_the_hints_of_a_crashed_one() {
    let a: Arc<dyn DocumentStore> = Arc::new(MemoryDocumentStore::new());
    let b: Arc<dyn DocumentStore> = Arc::new(MemoryDocumentStore::new());
    let first = pair_over(a.clone(), b.clone(), false).await;
    first.fb.set_down(true);
    for i in 0..20 {
        first
            .store
            .put(
                "cars",
                &format!("v{i}"),
                json!({"i": i}),
                PutDocumentOptions::default(),
            )
            .await
            .unwrap();
    }
    drop(first); // the writer is gone; its hints are on A
    let second = pair_over(a.clone(), b.clone(), false).await;
    assert!(second.store.is_behind(1), "hints found at start");
    let report = second.store.replay_hints().await;
    assert_eq!(report.copied, 20, "{report:?}");
    assert_eq!(dump(&a, "cars").await, dump(&b, "cars").await);
}

#[tokio::test]
async fn background_replay_drains_hints_after_the_member_returns() {
    let p = pair(true).await;
    write_while_b_is_down(&p, 10).await;
    let mut waited = Duration::ZERO;
    while p.store.is_behind(1) && waited < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += Duration::from_millis(50);
        // Writes probe B: its breaker closes and the replay starts.
        let _ = p.store.get("cars", "v0000").await;
        let _ = p
            .store
            .put("cars", "probe", json!({}), PutDocumentOptions::default())
            .await;
    }
    assert!(!p.store.is_behind(1), "still behind after {waited:?}");
    assert_eq!(dump(&p.a, "cars").await, dump(&p.b, "cars").await);
}

/// Writes documents `v0000`.. `v{n-1}` (in id order) while B is down, then brings B back.
async fn write_while_b_is_down(p: &Pair, n: usize) {
    p.fb.set_down(true);
    for i in 0..n {
        p.store
            .put(
                "cars",
                &format!("v{i:04}"),
                json!({"i": i}),
                PutDocumentOptions::default(),
            )
            .await
            .unwrap();
    }
    p.fb.set_down(false);
}

#[tokio::test]
async fn repair_resumes_from_its_cursor() {
    let p = pair(false).await;
    // Write 30 documents to A only, behind the store's back (as a member restored from an
    // old backup would differ).
    write_while_b_is_down(&p, 30).await;
    // Drop the hints: only repair can fix B now.
    for (id, _) in dump(&p.a, "replication_hints").await {
        p.a.delete("replication_hints", &id, WriteCondition::Any)
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    let first = p
        .store
        .repair("cars", RepairCursor::default(), 10)
        .await
        .unwrap();
    assert_eq!((first.compared, first.copied), (10, 10));
    let next = first.next.clone().unwrap();
    let rest = p.store.repair("cars", next, 1000).await.unwrap();
    assert_eq!(rest.copied, 20, "{rest:?}");
    assert_eq!(dump(&p.a, "cars").await, dump(&p.b, "cars").await);
}

#[tokio::test]
async fn the_hints_collection_is_reserved() {
    let p = pair(false).await;
    let err = p
        .store
        .put(
            "replication_hints",
            "x",
            json!({}),
            PutDocumentOptions::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    let err = ReplicationBuilder::new()
        .member("a", Arc::new(MemoryDocumentStore::new()))
        .member("a", Arc::new(MemoryDocumentStore::new()))
        .build()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
}

#[tokio::test]
async fn replay_pages_through_a_large_backlog() {
    let p = pair(false).await;
    write_while_b_is_down(&p, 700).await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    let mut copied = 0;
    while p.store.is_behind(1) {
        copied += p.store.replay_hints().await.copied;
    }
    assert_eq!(copied, 700);
    assert_eq!(dump(&p.a, "cars").await, dump(&p.b, "cars").await);
}

#[tokio::test]
async fn an_active_probe_notices_an_idle_member_going_down_and_coming_back() {
    let a: Arc<dyn DocumentStore> = Arc::new(MemoryDocumentStore::new());
    let b: Arc<dyn DocumentStore> = Arc::new(MemoryDocumentStore::new());
    let fb = FaultInjector::new(9);
    let store = ReplicationBuilder::new()
        .member("a", a.clone())
        .member("b", layers::document_store(b.clone(), fb.layer()))
        .breaker(breaker())
        .probe_interval(Duration::from_millis(50))
        .build()
        .await
        .unwrap();
    let state = |s: &ReplicatedDocumentStore| s.breaker(1).unwrap().state();
    assert_eq!(state(&store), paas_components::layers::BreakerState::Closed);
    // B dies while nobody calls it: the probe alone opens its breaker (without the probe it
    // would stay closed until a request failed on it).
    fb.set_down(true);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_ne!(state(&store), paas_components::layers::BreakerState::Closed);
    assert!(fb.injected() >= 2, "the probe called B");
    store
        .put("cars", "v", json!({}), PutDocumentOptions::default())
        .await
        .unwrap();
    assert!(store.is_behind(1), "the write was hinted for B");
    // B comes back: the probe closes the breaker, still without client traffic.
    fb.set_down(false);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(state(&store), paas_components::layers::BreakerState::Closed);
}
