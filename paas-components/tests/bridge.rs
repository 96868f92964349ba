//! The tower bridge: every backend behind `Service` + a layer stack is a backend again, and
//! passes the same conformance suites; the layers themselves behave as documented.
#![cfg(all(feature = "memory", feature = "sim"))]

use bytes::Bytes;
use cloud_abstraction::database::PutDocumentOptions;
use cloud_abstraction::storage::{BlobStore, BlobStoreExt, PutOptions};
use cloud_abstraction::testkit::{assert_kind, compute, database, queue, storage};
use cloud_abstraction::{Compute, ErrorKind, MessageQueue};
use paas_components::compute::SimCompute;
use paas_components::database::MemoryDocumentStore;
use paas_components::layers::{self, FaultInjector, MetricsLayer, RetryLayer, TimeoutLayer};
use paas_components::queue::MemoryQueue;
use paas_components::storage::MemoryBlobStore;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::ServiceBuilder;
use tower::layer::util::{Identity, Stack};

/// Metrics outermost, then retry, then a per-attempt timeout.
type Resilience =
    ServiceBuilder<Stack<TimeoutLayer, Stack<RetryLayer, Stack<MetricsLayer, Identity>>>>;

fn stack() -> Resilience {
    ServiceBuilder::new()
        .layer(MetricsLayer::new())
        .layer(RetryLayer::new(2))
        .layer(TimeoutLayer::new(Duration::from_secs(20)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_kit_through_layers() {
    let store = layers::blob_store(Arc::new(MemoryBlobStore::new()), stack());
    let report = storage::run_suite(store).await;
    assert_eq!(report.passed.len(), storage::cases().len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_kit_through_layers() {
    let store = layers::document_store(Arc::new(MemoryDocumentStore::new()), stack());
    let report = database::run_suite(store).await;
    assert_eq!(report.passed.len(), database::cases().len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_kit_through_layers() {
    let q = layers::message_queue(Arc::new(MemoryQueue::new()), stack());
    let report = queue::run_suite(q).await;
    assert_eq!(report.passed.len(), queue::cases().len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compute_kit_through_layers() {
    let c = layers::compute(Arc::new(SimCompute::new()), stack());
    let report = compute::run_suite(c).await;
    assert_eq!(report.passed.len(), compute::cases().len());
}

#[test]
fn storage_model_through_layers() {
    storage::run_model_test(|| layers::blob_store(Arc::new(MemoryBlobStore::new()), stack()));
}

#[tokio::test]
async fn layered_backend_keeps_info_and_capabilities() {
    let inner = Arc::new(
        MemoryBlobStore::new().with_location(cloud_abstraction::Location::new("aws", "eu-west-1")),
    );
    let layered = layers::blob_store(inner.clone(), stack());
    assert_eq!(layered.info(), inner.info());
    assert_eq!(layered.capabilities(), inner.capabilities());
    let q: Arc<dyn MessageQueue> = layers::message_queue(Arc::new(MemoryQueue::new()), stack());
    assert_eq!(q.info().backend, "memory");
    let c: Arc<dyn Compute> = layers::compute(Arc::new(SimCompute::new()), stack());
    assert!(c.capabilities().simulated);
}

#[tokio::test]
async fn fault_injection_takes_a_backend_down_and_back() {
    let faults = FaultInjector::new(7);
    let inner = Arc::new(MemoryBlobStore::new());
    let store = layers::blob_store(inner.clone(), faults.layer());
    store
        .put_bytes("a", Bytes::from_static(b"1"))
        .await
        .unwrap();

    faults.set_down(true);
    let err = store
        .put_bytes("b", Bytes::from_static(b"2"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(err.is_retryable());
    // An injected failure never reached the backend: nothing was written.
    assert!(!inner.exists("b").await.unwrap());
    assert_eq!(faults.injected(), 1);

    faults.set_down(false);
    assert_eq!(store.get_bytes("a").await.unwrap(), "1");
}

#[tokio::test]
async fn retry_recovers_idempotent_calls_from_transient_faults() {
    let faults = FaultInjector::new(42);
    let store = layers::blob_store(
        Arc::new(MemoryBlobStore::new()),
        ServiceBuilder::new()
            .layer(
                RetryLayer::new(10)
                    .with_backoff(Duration::from_millis(1), Duration::from_millis(5)),
            )
            .layer(faults.layer()),
    );
    faults.set_error_rate(0.5);
    for i in 0..50 {
        // Overwrites and reads are idempotent: every one succeeds despite 50% failures.
        store
            .put_bytes(&format!("k{i}"), Bytes::from(vec![i as u8]))
            .await
            .unwrap();
        assert_eq!(
            store.get_bytes(&format!("k{i}")).await.unwrap(),
            vec![i as u8]
        );
    }
    assert!(
        faults.injected() > 20,
        "faults were injected: {}",
        faults.injected()
    );
}

#[tokio::test]
async fn retry_leaves_non_idempotent_writes_alone() {
    let faults = FaultInjector::new(1);
    let store = layers::blob_store(
        Arc::new(MemoryBlobStore::new()),
        ServiceBuilder::new()
            .layer(RetryLayer::new(5))
            .layer(faults.layer()),
    );
    faults.set_down(true);
    let err = store
        .put("once", Bytes::from_static(b"x"), PutOptions::create())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    // Exactly one attempt: a create-only put is not retried blindly.
    assert_eq!(faults.injected(), 1);

    let docs = layers::document_store(
        Arc::new(MemoryDocumentStore::new()),
        ServiceBuilder::new()
            .layer(RetryLayer::new(5))
            .layer(FaultInjector::new(2).layer()),
    );
    docs.put("c", "d", json!({"x": 1}), PutDocumentOptions::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn timeout_layer_gives_retryable_deadline_exceeded() {
    let faults = FaultInjector::new(3);
    faults.set_latency(Duration::from_secs(5));
    let store = layers::blob_store(
        Arc::new(MemoryBlobStore::new()),
        ServiceBuilder::new()
            .layer(TimeoutLayer::new(Duration::from_millis(100)))
            .layer(faults.layer()),
    );
    let started = Instant::now();
    let result = store.get_bytes("missing").await;
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_kind(result, ErrorKind::DeadlineExceeded, "slow call");
}

#[tokio::test]
async fn tower_middleware_errors_become_retryable_api_errors() {
    // tower's own timeout fails with its `Elapsed` type, not our `Error`: the bridge turns it
    // into a retryable Unavailable error instead of losing the kind.
    let faults = FaultInjector::new(5);
    faults.set_latency(Duration::from_secs(5));
    let store: Arc<dyn BlobStore> = layers::blob_store(
        Arc::new(MemoryBlobStore::new()),
        ServiceBuilder::new()
            .layer(tower::timeout::TimeoutLayer::new(Duration::from_millis(50)))
            .layer(faults.layer()),
    );
    let err = store.get_bytes("x").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.is_retryable());
    assert!(std::error::Error::source(&err).is_some());
}
