//! The fault scenario every server-backed document store runs: acknowledged writes, the
//! connection cut mid-work, retryable errors within a bound, recovery of the same handle, and
//! every acknowledged write still there.

use super::TcpProxy;
use cloud_abstraction::ErrorKind;
use cloud_abstraction::database::{Document, DocumentStore, PutDocumentOptions, Query};
use cloud_abstraction::testkit::unique_name;
use serde_json::json;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Calls while the proxy is cut must fail with a retryable kind, within their timeout.
pub async fn assert_fails_retryably<T: std::fmt::Debug>(
    what: &str,
    call: impl Future<Output = cloud_abstraction::Result<T>>,
) {
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(15), call)
        .await
        .unwrap_or_else(|_| panic!("{what} hung while the server was cut off"));
    let err = result.expect_err(what);
    assert!(
        matches!(
            err.kind(),
            ErrorKind::Unavailable | ErrorKind::DeadlineExceeded
        ),
        "{what}: {err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "{what} took {:?}",
        started.elapsed()
    );
}

/// What the scenario acknowledged: the collection and every acknowledged id, so the caller
/// can also count them directly in the server, bypassing the store.
pub struct Acknowledged {
    /// The collection written to.
    pub collection: String,
    /// Ids of every write that was acknowledged.
    pub ids: Vec<String>,
}

/// Runs the cut-and-restore scenario on `store`, which must reach its server through `proxy`.
pub async fn cut_and_restore_keeps_acknowledged_writes(
    proxy: &TcpProxy,
    store: Arc<dyn DocumentStore>,
) -> Acknowledged {
    let coll = unique_name("fault");

    // A writer that keeps writing through the cut, recording what was acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let writer_failures = Arc::new(AtomicU32::new(0));
    let writer = {
        let (store, coll, stop) = (Arc::clone(&store), coll.clone(), Arc::clone(&stop));
        let writer_failures = Arc::clone(&writer_failures);
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut failures = 0u32;
            let mut n = 0u32;
            while !stop.load(Ordering::SeqCst) {
                let id = format!("w{n:05}");
                n += 1;
                let started = Instant::now();
                let r = tokio::time::timeout(
                    Duration::from_secs(15),
                    store.put(&coll, &id, json!({"n": n}), PutDocumentOptions::default()),
                )
                .await
                .expect("put hung");
                assert!(started.elapsed() < Duration::from_secs(12));
                match r {
                    Ok(rev) => acked.push((id, rev)),
                    Err(e) => {
                        assert!(e.is_retryable(), "writer saw {e}");
                        failures += 1;
                        writer_failures.fetch_add(1, Ordering::SeqCst);
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (acked, failures)
        })
    };

    // Some acknowledged work first.
    for i in 0..10 {
        store
            .put(
                &coll,
                &format!("a{i}"),
                json!({"i": i}),
                PutDocumentOptions::create(),
            )
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    proxy.cut().await;
    assert_fails_retryably("get", store.get(&coll, "a1")).await;
    assert_fails_retryably(
        "put",
        store.put(&coll, "during", json!({}), PutDocumentOptions::default()),
    )
    .await;
    assert_fails_retryably("query", store.query(&coll, Query::all())).await;
    // Those calls can fail within a few milliseconds; keep the server away until the
    // background writer has met the outage too (bounded), so the test covers writes in flight.
    let outage_deadline = Instant::now() + Duration::from_secs(10);
    while writer_failures.load(Ordering::SeqCst) == 0 && Instant::now() < outage_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.restore();

    // The same handle recovers without being reopened (bounded polling).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match store.get(&coll, "a1").await {
            Ok(Some(doc)) => {
                assert_eq!(doc.value, json!({"i": 1}));
                break;
            }
            Ok(None) => panic!("acknowledged document a1 is gone"),
            Err(e) => {
                assert!(e.is_retryable(), "{e}");
                assert!(Instant::now() < deadline, "store did not recover: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let (acked, failures) = writer.await.unwrap();
    assert!(failures > 0, "the writer never saw the cut");
    assert!(!acked.is_empty());

    // Every acknowledged write is there, at its acknowledged revision, through the same handle.
    let mut ids: Vec<String> = (0..10).map(|i| format!("a{i}")).collect();
    ids.extend(acked.iter().map(|(id, _)| id.clone()));
    let docs = store.get_many(&coll, &ids).await.unwrap();
    for (id, doc) in ids.iter().zip(&docs) {
        assert!(doc.is_some(), "acknowledged {id} missing after the cut");
    }
    for (id, rev) in &acked {
        let doc: &Document = docs
            .iter()
            .flatten()
            .find(|d| &d.id == id)
            .expect("acked doc");
        assert_eq!(doc.revision, *rev);
    }
    Acknowledged {
        collection: coll,
        ids,
    }
}
