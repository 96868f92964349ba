//! The resilience layers through the bridge (which clones a service per call): a breaker's,
//! a budget's and a limit's state is shared by every clone; errors carry their status.
#![cfg(feature = "memory")]

use bytes::Bytes;
use cloud_abstraction::storage::{BlobStore, BlobStoreExt};
use cloud_abstraction::{ErrorKind, ErrorStatus};
use paas_components::layers::{
    self, BreakerState, CircuitBreaker, CircuitBreakerConfig, ConcurrencyLimitLayer, FaultInjector,
    RateLimitLayer, RetryLayer, TimeoutLayer,
};
use paas_components::storage::MemoryBlobStore;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tower::ServiceBuilder;

fn memory() -> Arc<dyn BlobStore> {
    Arc::new(MemoryBlobStore::new())
}

#[tokio::test]
async fn breaker_state_is_shared_by_the_clones_of_the_bridge() {
    let breaker = CircuitBreaker::new(
        "blobs",
        CircuitBreakerConfig {
            consecutive_failures: 4,
            ..Default::default()
        },
    )
    .unwrap();
    let transitions = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&transitions);
    breaker.on_transition(move |_| {
        seen.fetch_add(1, Ordering::SeqCst);
    });
    let faults = FaultInjector::new(1);
    let store = layers::blob_store(
        memory(),
        ServiceBuilder::new()
            .layer(breaker.layer())
            .layer(faults.layer()),
    );
    faults.set_down(true);
    for _ in 0..4 {
        store.get_bytes("k").await.unwrap_err();
    }
    // Four calls, each through its own clone of the service, opened one breaker.
    assert_eq!(breaker.state(), BreakerState::Open);
    assert_eq!(transitions.load(Ordering::SeqCst), 1);
    let err = store.get_bytes("k").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert_eq!(err.status(), ErrorStatus::Persistent);
    assert_eq!(
        err.backend(),
        "memory",
        "named after the backend underneath"
    );
    assert_eq!(faults.injected(), 4);
    assert_eq!(breaker.snapshot().rejected, 1);
}

#[tokio::test]
async fn an_exhausted_inner_retry_is_not_retried_by_an_outer_one() {
    let faults = FaultInjector::new(2);
    let store = layers::blob_store(
        memory(),
        ServiceBuilder::new()
            .layer(
                RetryLayer::new(5).with_backoff(Duration::from_millis(1), Duration::from_millis(1)),
            )
            .layer(
                RetryLayer::new(2).with_backoff(Duration::from_millis(1), Duration::from_millis(1)),
            )
            .layer(faults.layer()),
    );
    faults.set_down(true);
    let err = store.get_bytes("k").await.unwrap_err();
    assert_eq!(err.status(), ErrorStatus::Persistent);
    assert!(!err.is_retryable() && err.is_target_failure());
    // 1 + 2 inner retries; the outer layer saw a persistent error and stopped: not 3 × 6.
    assert_eq!(faults.injected(), 3);
}

#[tokio::test]
async fn the_retry_budget_bounds_retries_during_an_outage() {
    let faults = FaultInjector::new(3);
    let store = layers::blob_store(
        memory(),
        ServiceBuilder::new()
            .layer(
                RetryLayer::new(10)
                    .with_budget(Duration::from_secs(10), 0, 0.2)
                    .with_backoff(Duration::from_micros(10), Duration::from_micros(10)),
            )
            .layer(faults.layer()),
    );
    faults.set_down(true);
    for _ in 0..100 {
        store.get_bytes("k").await.unwrap_err();
    }
    let attempts = faults.injected();
    // 100 requests; retries are at most 20% of them (plus rounding), not 10 per request.
    assert!((100..=125).contains(&attempts), "{attempts} attempts");
}

#[tokio::test]
async fn the_default_retry_recovers_scattered_failures() {
    let faults = FaultInjector::new(4);
    let store = layers::blob_store(
        memory(),
        ServiceBuilder::new()
            .layer(
                RetryLayer::default()
                    .with_backoff(Duration::from_millis(1), Duration::from_millis(2)),
            )
            .layer(faults.layer()),
    );
    faults.set_error_rate(0.2);
    for i in 0..50 {
        store
            .put_bytes(&format!("k{i}"), Bytes::from_static(b"v"))
            .await
            .unwrap();
    }
    assert!(faults.injected() > 0);
}

#[tokio::test]
async fn a_timeout_keeps_the_backend_name() {
    let faults = FaultInjector::new(5);
    faults.set_latency(Duration::from_secs(2));
    let store = layers::blob_store(
        memory(),
        ServiceBuilder::new()
            .layer(TimeoutLayer::new(Duration::from_millis(50)))
            .layer(faults.layer()),
    );
    let err = store.get_bytes("k").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DeadlineExceeded);
    assert_eq!(err.backend(), "memory");
    assert!(
        err.to_string().starts_with("memory (deadline_exceeded)"),
        "{err}"
    );
}

#[tokio::test]
async fn the_rate_limit_holds_across_clones() {
    let store = layers::blob_store(
        memory(),
        RateLimitLayer::new(10.0, 5, Duration::ZERO).unwrap(),
    );
    let mut ok = 0;
    let mut exhausted = 0;
    for _ in 0..20 {
        match store.put_bytes("k", Bytes::from_static(b"v")).await {
            Ok(_) => ok += 1,
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::ResourceExhausted, "{e}");
                assert_eq!(e.backend(), "memory");
                exhausted += 1;
            }
        }
    }
    // A burst of 5 (plus at most one more if the loop took over 100 ms), then refusals.
    assert!((5..=7).contains(&ok), "{ok} passed");
    assert_eq!(ok + exhausted, 20);

    // With a wait allowed, calls are spaced instead of refused.
    let store = layers::blob_store(
        memory(),
        RateLimitLayer::new(50.0, 1, Duration::from_secs(1)).unwrap(),
    );
    let started = tokio::time::Instant::now();
    for _ in 0..6 {
        store
            .put_bytes("k", Bytes::from_static(b"v"))
            .await
            .unwrap();
    }
    assert!(
        started.elapsed() >= Duration::from_millis(90),
        "{:?}",
        started.elapsed()
    );
    assert!(RateLimitLayer::new(f64::NAN, 1, Duration::ZERO).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_concurrency_limit_holds_across_clones() {
    let faults = FaultInjector::new(6);
    faults.set_latency(Duration::from_millis(200));
    let limit = ConcurrencyLimitLayer::new(2, Duration::from_millis(50));
    let store = layers::blob_store(
        memory(),
        ServiceBuilder::new()
            .layer(limit.clone())
            .layer(faults.layer()),
    );
    let calls: Vec<_> = (0..5)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                store
                    .put_bytes(&format!("k{i}"), Bytes::from_static(b"v"))
                    .await
            })
        })
        .collect();
    let mut ok = 0;
    let mut exhausted = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::ResourceExhausted, "{e}");
                exhausted += 1;
            }
        }
    }
    assert_eq!((ok, exhausted), (2, 3));
    assert_eq!(limit.available(), 2);
}
