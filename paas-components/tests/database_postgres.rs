//! The PostgreSQL document store against the real server (SERVICES.md: 127.0.0.1:5432, trust
//! auth, database `test`): the whole conformance kit, the model test, and a fault test
//! through a TCP proxy that is cut and restored.
//!
//! Each test works in a table of its own (`connect_table` with a unique name) and drops it.
#![cfg(feature = "postgres")]

mod support;

use cloud_abstraction::database::{Document, DocumentStore, PutDocumentOptions, Query};
use cloud_abstraction::testkit::{database, unique_name};
use cloud_abstraction::{ErrorKind, Location};
use paas_components::database::PostgresDocumentStore;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use support::TcpProxy;

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

async fn url() -> Option<String> {
    support::server_url("POSTGRES_TEST_URL", DEFAULT_URL, "127.0.0.1:5432").await
}

fn table() -> String {
    unique_name("kit_docs_")
}

async fn drop_table(url: &str, table: &str) {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    sqlx::query(&format!("DROP TABLE IF EXISTS \"{table}\""))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite() {
    let Some(url) = url().await else { return };
    let table = table();
    let store = PostgresDocumentStore::connect_table(&url, &table)
        .await
        .unwrap()
        .with_location(Location::new("onprem", "lab"));
    assert_eq!(store.info().backend, "postgres");
    assert_eq!(store.info().location.provider, "onprem");
    let store: Arc<dyn DocumentStore> = Arc::new(store);
    let outcome = tokio::spawn(database::run_suite(store)).await;
    drop_table(&url, &table).await;
    let report = outcome.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    assert!(report.failed.is_empty());
    assert_eq!(report.passed.len(), database::cases().len());
}

#[test]
fn model_test() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Some(url) = rt.block_on(url()) else {
        return;
    };
    let table = table();
    let outcome = std::panic::catch_unwind(|| {
        database::run_model_test(|| async {
            Arc::new(
                PostgresDocumentStore::connect_table(&url, &table)
                    .await
                    .unwrap(),
            ) as Arc<dyn DocumentStore>
        })
    });
    rt.block_on(drop_table(&url, &table));
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

#[tokio::test]
async fn bad_urls_fail_cleanly_without_echoing_secrets() {
    let err = PostgresDocumentStore::connect("postgres://app:hunter2@[::1:5432/x")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(!format!("{err} {err:?}").contains("hunter2"));

    let err = PostgresDocumentStore::connect_table(DEFAULT_URL, "bad name")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);

    // Nothing listens on port 1: a retryable failure, quickly, and no password in it.
    let started = Instant::now();
    let err = PostgresDocumentStore::connect("postgres://app:hunter2@127.0.0.1:1/test")
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(!format!("{err} {err:?}").contains("hunter2"));
}

/// Calls while the proxy is cut must fail with a retryable kind, within their timeout.
async fn assert_fails_retryably<T: std::fmt::Debug>(
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_cut_and_restore_keeps_acknowledged_writes() {
    let Some(url) = url().await else { return };
    let table = table();
    let proxy = TcpProxy::start("127.0.0.1:5432").await;
    let proxied = format!("postgres://postgres@{}/test", proxy.addr());
    let store = Arc::new(
        PostgresDocumentStore::connect_table(&proxied, &table)
            .await
            .unwrap()
            .with_operation_timeout(Duration::from_secs(8)),
    );
    let coll = unique_name("fault");

    // A writer that keeps writing through the cut, recording what was acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (store, coll, stop) = (Arc::clone(&store), coll.clone(), Arc::clone(&stop));
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

    // Every acknowledged write is there: through the same handle, and read directly.
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
    let direct = sqlx::PgPool::connect(&url).await.unwrap();
    let count: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM \"{table}\" WHERE collection = $1 AND id = ANY($2)"
    ))
    .bind(&coll)
    .bind(&ids)
    .fetch_one(&direct)
    .await
    .unwrap();
    assert_eq!(count as usize, ids.len());
    direct.close().await;
    drop_table(&url, &table).await;
}
