//! Failover over two members: the whole kit through it, moving on when a member fails,
//! not moving non-idempotent writes blindly, returning after the breaker's hysteresis, and
//! hedged reads.
#![cfg(all(feature = "memory", feature = "sim"))]

use bytes::Bytes;
use cloud_abstraction::database::PutDocumentOptions;
use cloud_abstraction::storage::{BlobStore, BlobStoreExt, PutOptions};
use cloud_abstraction::testkit::{compute, database, queue, storage};
use cloud_abstraction::{ErrorKind, ErrorStatus, Location};
use paas_components::compute::SimCompute;
use paas_components::database::MemoryDocumentStore;
use paas_components::layers::{self, BreakerState, CircuitBreakerConfig, FaultInjector};
use paas_components::multicloud::{FailoverBuilder, HedgeConfig};
use paas_components::queue::MemoryQueue;
use paas_components::storage::MemoryBlobStore;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn cloud(provider: &str) -> Location {
    Location::new(provider, "eu")
}

/// Two memory blob stores; the first behind a fault injector.
fn two_blob_stores(
    faults: &FaultInjector,
) -> (Arc<dyn BlobStore>, Arc<dyn BlobStore>, Arc<dyn BlobStore>) {
    let a_inner: Arc<dyn BlobStore> = Arc::new(MemoryBlobStore::new().with_location(cloud("aws")));
    let a = layers::blob_store(a_inner.clone(), faults.layer());
    let b: Arc<dyn BlobStore> = Arc::new(MemoryBlobStore::new().with_location(cloud("azure")));
    (a, a_inner, b)
}

fn quick_breaker() -> CircuitBreakerConfig {
    CircuitBreakerConfig {
        consecutive_failures: 3,
        open_for: Duration::from_millis(300),
        successes_to_close: 2,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kits_pass_through_a_failover_of_two_members() {
    let (blobs, _) = FailoverBuilder::new()
        .blob_store(vec![
            Arc::new(MemoryBlobStore::new()),
            Arc::new(MemoryBlobStore::new()),
        ])
        .unwrap();
    let report = storage::run_suite(blobs).await;
    assert_eq!(report.passed.len(), storage::cases().len());

    let (docs, _) = FailoverBuilder::new()
        .document_store(vec![
            Arc::new(MemoryDocumentStore::new()),
            Arc::new(MemoryDocumentStore::new()),
        ])
        .unwrap();
    let report = database::run_suite(docs).await;
    assert_eq!(report.passed.len(), database::cases().len());

    let (q, _) = FailoverBuilder::new()
        .message_queue(vec![
            Arc::new(MemoryQueue::new()),
            Arc::new(MemoryQueue::new()),
        ])
        .unwrap();
    let report = queue::run_suite(q).await;
    assert_eq!(report.passed.len(), queue::cases().len());

    let (c, _) = FailoverBuilder::new()
        .compute(vec![
            Arc::new(SimCompute::new()),
            Arc::new(SimCompute::new()),
        ])
        .unwrap();
    let report = compute::run_suite(c).await;
    assert_eq!(report.passed.len(), compute::cases().len());
}

#[test]
fn storage_model_through_a_failover() {
    storage::run_model_test(|| {
        FailoverBuilder::new()
            .blob_store(vec![
                Arc::new(MemoryBlobStore::new()),
                Arc::new(MemoryBlobStore::new()),
            ])
            .unwrap()
            .0
    });
}

#[tokio::test]
async fn idempotent_requests_move_on_at_once_and_writes_follow_the_breaker() {
    let faults = FaultInjector::new(1);
    let (a, a_inner, b) = two_blob_stores(&faults);
    let (store, handle) = FailoverBuilder::new()
        .breaker(quick_breaker())
        .blob_store(vec![a, b.clone()])
        .unwrap();
    assert_eq!(store.info().backend, "failover");
    assert_eq!(store.info().location, cloud("aws"));

    store
        .put_bytes("k", Bytes::from_static(b"a"))
        .await
        .unwrap();
    assert!(a_inner.exists("k").await.unwrap());
    b.put_bytes("k", Bytes::from_static(b"b")).await.unwrap();

    faults.set_down(true);
    // An overwrite put and a get are idempotent: they move to B at once.
    assert_eq!(store.get_bytes("k").await.unwrap(), "b");
    store
        .put_bytes("o", Bytes::from_static(b"1"))
        .await
        .unwrap();
    assert!(b.exists("o").await.unwrap());

    // A create-only put is not idempotent: while A's breaker is still closed, it gets A's
    // error back and B is not written behind the caller's back.
    let err = store
        .put("c", Bytes::from_static(b"x"), PutOptions::create())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(!b.exists("c").await.unwrap());

    // Three failures in a row opened A's breaker: now A is skipped without being called,
    // so even a create-only put goes to B.
    assert_eq!(handle.members()[0].breaker.state, BreakerState::Open);
    let injected = faults.injected();
    store
        .put("c", Bytes::from_static(b"x"), PutOptions::create())
        .await
        .unwrap();
    assert!(b.exists("c").await.unwrap());
    assert_eq!(
        faults.injected(),
        injected,
        "an open breaker does not call A"
    );
    assert_eq!(handle.active().as_deref(), Some("1:memory@azure/eu"));
}

#[tokio::test]
async fn traffic_returns_only_after_the_hysteresis() {
    let faults = FaultInjector::new(2);
    let (a, _, b) = two_blob_stores(&faults);
    let (store, handle) = FailoverBuilder::new()
        .breaker(quick_breaker())
        .blob_store(vec![a, b])
        .unwrap();
    faults.set_down(true);
    for _ in 0..3 {
        store
            .put_bytes("k", Bytes::from_static(b"x"))
            .await
            .unwrap();
    }
    assert_eq!(handle.members()[0].breaker.state, BreakerState::Open);
    let served_b = handle.members()[1].served;

    // A is back, but stays skipped until the cool-down is over.
    faults.set_down(false);
    store
        .put_bytes("k", Bytes::from_static(b"x"))
        .await
        .unwrap();
    assert_eq!(handle.members()[1].served, served_b + 1);

    tokio::time::sleep(Duration::from_millis(350)).await;
    // Half-open: the next calls are probes to A; two successes close it.
    let served_a = handle.members()[0].served;
    store
        .put_bytes("k", Bytes::from_static(b"x"))
        .await
        .unwrap();
    assert_eq!(handle.members()[0].breaker.state, BreakerState::HalfOpen);
    store
        .put_bytes("k", Bytes::from_static(b"x"))
        .await
        .unwrap();
    assert_eq!(handle.members()[0].breaker.state, BreakerState::Closed);
    assert_eq!(handle.members()[0].served, served_a + 2);
    assert_eq!(handle.active().as_deref(), Some("0:memory@aws/eu"));
}

#[tokio::test]
async fn a_flapping_member_does_not_bounce_traffic() {
    let faults = FaultInjector::new(3);
    let (a, _, b) = two_blob_stores(&faults);
    let (store, handle) = FailoverBuilder::new()
        .breaker(quick_breaker())
        .blob_store(vec![a, b])
        .unwrap();
    faults.set_down(true);
    for _ in 0..3 {
        store.get_bytes("missing").await.unwrap_err();
    }
    assert_eq!(handle.members()[0].breaker.state, BreakerState::Open);
    // A flaps: up for a moment while the breaker is open; nothing goes to it.
    faults.set_down(false);
    for _ in 0..20 {
        store
            .put_bytes("k", Bytes::from_static(b"x"))
            .await
            .unwrap();
    }
    assert_eq!(handle.members()[0].served, 0);
    // After the cool-down a probe fails (A is down again): open for another cool-down.
    faults.set_down(true);
    tokio::time::sleep(Duration::from_millis(350)).await;
    store
        .put_bytes("k", Bytes::from_static(b"x"))
        .await
        .unwrap();
    assert_eq!(handle.members()[0].breaker.state, BreakerState::Open);
    assert_eq!(handle.members()[0].served, 0);
}

#[tokio::test]
async fn answers_are_not_failovers_and_all_failed_is_unavailable() {
    let fa = FaultInjector::new(4);
    let fb = FaultInjector::new(5);
    let a = layers::document_store(Arc::new(MemoryDocumentStore::new()), fa.layer());
    let b = layers::document_store(Arc::new(MemoryDocumentStore::new()), fb.layer());
    let (docs, _) = FailoverBuilder::new()
        .document_store(vec![a, b.clone()])
        .unwrap();
    b.put("c", "d", json!({"on": "b"}), PutDocumentOptions::default())
        .await
        .unwrap();
    // NotFound on A is an answer: B is not asked.
    assert!(docs.get("c", "d").await.unwrap().is_none());

    fa.set_down(true);
    fb.set_down(true);
    let err = docs.get("c", "d").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert_eq!(err.backend(), "failover");
    assert_eq!(err.status(), ErrorStatus::Temporary);
    assert!(err.message().contains("0:memory@local/local"), "{err}");
    assert!(err.message().contains("1:memory@local/local"), "{err}");
}

#[tokio::test]
async fn slow_reads_are_hedged_to_the_other_member_within_budget() {
    let faults = FaultInjector::new(6);
    let (a, a_inner, b) = two_blob_stores(&faults);
    a_inner
        .put_bytes("k", Bytes::from_static(b"v"))
        .await
        .unwrap();
    b.put_bytes("k", Bytes::from_static(b"v")).await.unwrap();
    let (store, handle) = FailoverBuilder::new()
        .hedge(HedgeConfig {
            percentile: 0.9,
            min_delay: Duration::from_millis(20),
            max_fraction: 0.5,
        })
        .blob_store(vec![a, b])
        .unwrap();
    // Warm-up: fast answers from A teach the latency distribution.
    for _ in 0..30 {
        store.get_bytes("k").await.unwrap();
    }
    faults.set_latency(Duration::from_millis(500));
    let started = Instant::now();
    assert_eq!(store.get_bytes("k").await.unwrap(), "v");
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(400),
        "hedged read took {took:?}"
    );
    assert!(handle.members()[1].served >= 1);

    // The budget bounds hedges: of 40 more slow reads at most half plus the earlier
    // deposits can be hedged; the rest wait for A.
    let before = handle.members()[1].served;
    let mut slow = 0;
    for _ in 0..40 {
        let started = Instant::now();
        store.get_bytes("k").await.unwrap();
        if started.elapsed() >= Duration::from_millis(450) {
            slow += 1;
        }
    }
    let hedged = handle.members()[1].served - before;
    assert!(
        hedged < 40,
        "every read was hedged: the budget did not hold"
    );
    assert!(slow > 0 && hedged > 0, "hedged {hedged}, slow {slow}");
}

#[test]
fn an_empty_failover_is_invalid() {
    let err = FailoverBuilder::new().blob_store(Vec::new()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    let err = FailoverBuilder::new()
        .hedge(HedgeConfig {
            percentile: 2.0,
            ..Default::default()
        })
        .blob_store(vec![Arc::new(MemoryBlobStore::new())])
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
}
