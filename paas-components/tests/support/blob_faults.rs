//! The fault scenario every server-backed blob store runs: acknowledged puts, the connection
//! cut while writers are busy, retryable errors within a bound, recovery of the same handle,
//! and every acknowledged object intact (read through the proxy and directly).

use super::TcpProxy;
use bytes::Bytes;
use cloud_abstraction::BlobStore;
use cloud_abstraction::storage::{BlobStoreExt, GetOptions, PutOptions};
use cloud_abstraction::testkit::unique_name;
use std::sync::Arc;
use std::time::Duration;

/// Runs the scenario: `store` reaches its server through `proxy`, `direct` without it.
pub async fn cut_and_restore_keeps_acknowledged_objects(
    proxy: &TcpProxy,
    store: Arc<dyn BlobStore>,
    direct: Arc<dyn BlobStore>,
) {
    let backend = store.info().backend;
    let backend = backend.as_str();
    let prefix = unique_name("fault-");
    let payload = |i: usize| Bytes::from(format!("object {i} ").repeat(50 + i));

    let mut acknowledged = Vec::new();
    for i in 0..10 {
        let key = format!("{prefix}/before-{i}");
        store
            .put(&key, payload(i), PutOptions::default())
            .await
            .unwrap();
        acknowledged.push((key, payload(i)));
    }

    // Writers keep going while the cut happens; whatever they got acknowledged must survive.
    let writer = {
        let store = Arc::clone(&store);
        let prefix = prefix.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut failures = Vec::new();
            for i in 100..140 {
                let key = format!("{prefix}/during-{i}");
                let started = std::time::Instant::now();
                match store.put(&key, payload(i), PutOptions::default()).await {
                    Ok(_) => acked.push((key, payload(i))),
                    Err(e) => failures.push((e.kind(), started.elapsed(), e.to_string())),
                }
            }
            (acked, failures)
        })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    proxy.cut().await;

    // While cut: every operation fails, retryably, and within a bound (no hang).
    for op in 0..3 {
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(
            Duration::from_secs(60),
            store.get(&acknowledged[0].0, GetOptions::default()),
        )
        .await
        .expect("an operation during the outage hung");
        let err = result.expect_err("the server is cut off");
        assert!(err.is_retryable(), "op {op}: {err} is not retryable");
        assert_eq!(err.backend(), backend);
        eprintln!(
            "outage op {op}: {} after {:?}",
            err.kind(),
            started.elapsed()
        );
    }
    let (acked, failures) = tokio::time::timeout(Duration::from_secs(120), writer)
        .await
        .expect("the writer hung")
        .unwrap();
    for (kind, took, error) in &failures {
        assert!(kind.is_retryable(), "a write failed with {error}");
        assert!(
            *took < Duration::from_secs(60),
            "a write took {took:?} to fail"
        );
    }
    eprintln!(
        "during the cut: {} writes acknowledged, {} failed retryably",
        acked.len(),
        failures.len()
    );
    acknowledged.extend(acked);

    proxy.restore();
    // The same handle recovers (pooled connections were dropped: allow a few attempts).
    let mut recovered = false;
    for _ in 0..60 {
        if store
            .put(
                &format!("{prefix}/after"),
                Bytes::from_static(b"back"),
                PutOptions::default(),
            )
            .await
            .is_ok()
        {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(recovered, "the handle did not recover after restore");
    for (key, data) in &acknowledged {
        assert_eq!(
            &store.get_bytes(key).await.unwrap(),
            data,
            "{key} via proxy"
        );
        assert_eq!(&direct.get_bytes(key).await.unwrap(), data, "{key} direct");
    }
    for object in direct.list_all(&format!("{prefix}/")).await.unwrap() {
        direct.delete(&object.key).await.unwrap();
    }
}
