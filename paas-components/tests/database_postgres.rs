//! The PostgreSQL document store against the real server (SERVICES.md: 127.0.0.1:5432, trust
//! auth, database `test`): the whole conformance kit, the model test, and a fault test
//! through a TCP proxy that is cut and restored.
//!
//! Each test works in a table of its own (`connect_table` with a unique name) and drops it.
#![cfg(feature = "postgres")]

mod support;

use cloud_abstraction::database::DocumentStore;
use cloud_abstraction::testkit::{database, unique_name};
use cloud_abstraction::{ErrorKind, Location};
use paas_components::database::PostgresDocumentStore;
use std::sync::Arc;
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
    let acked =
        support::document_faults::cut_and_restore_keeps_acknowledged_writes(&proxy, store).await;

    // Counted directly in the server too, bypassing the store.
    let direct = sqlx::PgPool::connect(&url).await.unwrap();
    let count: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM \"{table}\" WHERE collection = $1 AND id = ANY($2)"
    ))
    .bind(&acked.collection)
    .bind(&acked.ids)
    .fetch_one(&direct)
    .await
    .unwrap();
    assert_eq!(count as usize, acked.ids.len());
    direct.close().await;
    drop_table(&url, &table).await;
}

/// Configuration errors of the caller get their own kind, not `Internal`: a database that
/// does not exist is `NotFound`, an empty user name `InvalidArgument` (checked before
/// connecting).
#[tokio::test]
async fn a_missing_database_or_an_empty_user_is_a_clear_configuration_error() {
    let Some(url) = url().await else { return };
    let mut missing = url::Url::parse(&url).unwrap();
    missing.set_path(&format!("/{}", unique_name("nodb")));
    let err = match PostgresDocumentStore::connect(missing.as_str()).await {
        Ok(_) => panic!("opened a database that does not exist"),
        Err(err) => err,
    };
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("does not exist"), "{err}");

    let mut empty_user = url::Url::parse(&url).unwrap();
    empty_user.set_username("").unwrap();
    empty_user.query_pairs_mut().append_pair("user", "");
    let err = match PostgresDocumentStore::connect(empty_user.as_str()).await {
        Ok(_) => panic!("opened with an empty user name"),
        Err(err) => err,
    };
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(err.to_string().contains("user name is empty"), "{err}");
}
