//! The MariaDB document store against the real server (SERVICES.md: 127.0.0.1:3306, root
//! without password, database `test`): the whole conformance kit, the model test, and a fault test
//! through a TCP proxy that is cut and restored.
//!
//! Each test works in a table of its own (`connect_table` with a unique name) and drops it.
#![cfg(feature = "mysql")]

mod support;

use cloud_abstraction::database::DocumentStore;
use cloud_abstraction::testkit::{database, unique_name};
use cloud_abstraction::{ErrorKind, Location};
use paas_components::database::MysqlDocumentStore;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::TcpProxy;

const DEFAULT_URL: &str = "mysql://root@127.0.0.1:3306/test";

async fn url() -> Option<String> {
    support::server_url("MYSQL_TEST_URL", DEFAULT_URL, "127.0.0.1:3306").await
}

fn table() -> String {
    unique_name("kit_docs_")
}

async fn drop_table(url: &str, table: &str) {
    let pool = sqlx::MySqlPool::connect(url).await.unwrap();
    sqlx::query(&format!("DROP TABLE IF EXISTS `{table}`"))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite() {
    let Some(url) = url().await else { return };
    let table = table();
    let store = MysqlDocumentStore::connect_table(&url, &table)
        .await
        .unwrap()
        .with_location(Location::new("onprem", "lab"));
    assert_eq!(store.info().backend, "mysql");
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
                MysqlDocumentStore::connect_table(&url, &table)
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
    let err = MysqlDocumentStore::connect("mysql://app:hunter2@[::1:3306/x")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(!format!("{err} {err:?}").contains("hunter2"));

    let err = MysqlDocumentStore::connect_table(DEFAULT_URL, "bad name")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);

    // Nothing listens on port 1: a retryable failure, quickly, and no password in it.
    let started = Instant::now();
    let err = MysqlDocumentStore::connect("mariadb://app:hunter2@127.0.0.1:1/test")
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
    let proxy = TcpProxy::start("127.0.0.1:3306").await;
    let proxied = format!("mariadb://root@{}/test", proxy.addr());
    let store = Arc::new(
        MysqlDocumentStore::connect_table(&proxied, &table)
            .await
            .unwrap()
            .with_operation_timeout(Duration::from_secs(8)),
    );
    let acked =
        support::document_faults::cut_and_restore_keeps_acknowledged_writes(&proxy, store).await;

    // Counted directly in the server too, bypassing the store.
    let direct = sqlx::MySqlPool::connect(&url).await.unwrap();
    let marks = vec!["?"; acked.ids.len()].join(", ");
    let sql = format!("SELECT count(*) FROM `{table}` WHERE collection = ? AND id IN ({marks})");
    let mut q = sqlx::query_scalar(&sql).bind(&acked.collection);
    for id in &acked.ids {
        q = q.bind(id.as_bytes());
    }
    let count: i64 = q.fetch_one(&direct).await.unwrap();
    assert_eq!(count as usize, acked.ids.len());
    direct.close().await;
    drop_table(&url, &table).await;
}

/// A database that does not exist is `NotFound` (ER_BAD_DB_ERROR), not `Internal`.
#[tokio::test]
async fn a_missing_database_is_not_found() {
    let Some(url) = url().await else { return };
    let mut missing = url::Url::parse(&url).unwrap();
    missing.set_path(&format!("/{}", unique_name("nodb")));
    let err = match MysqlDocumentStore::connect(missing.as_str()).await {
        Ok(_) => panic!("opened a database that does not exist"),
        Err(err) => err,
    };
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("Unknown database"), "{err}");
}
