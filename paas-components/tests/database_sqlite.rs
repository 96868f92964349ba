//! The database conformance kit and model test on SQLite (file and in-memory), plus
//! durability across reopening.
#![cfg(feature = "sqlite")]

use cloud_abstraction::database::{
    DocumentStore, Filter, PutDocumentOptions, Query, Revision, WriteCondition, WriteOp,
};
use cloud_abstraction::testkit::database as kit;
use cloud_abstraction::{ErrorKind, Location};
use paas_components::database::SqliteDocumentStore;
use serde_json::json;
use std::sync::Arc;

fn file_url(dir: &tempfile::TempDir, name: &str) -> String {
    format!("sqlite://{}", dir.path().join(name).display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteDocumentStore::connect(&file_url(&dir, "kit.db"))
        .await
        .unwrap();
    let report = kit::run_suite(Arc::new(store)).await;
    assert_eq!(report.passed.len(), kit::cases().len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_memory() {
    let store = SqliteDocumentStore::connect("sqlite::memory:")
        .await
        .unwrap();
    let report = kit::run_suite(Arc::new(store)).await;
    assert_eq!(report.passed.len(), kit::cases().len());
}

#[test]
fn model_file() {
    let dir = tempfile::tempdir().unwrap();
    let url = file_url(&dir, "model.db");
    kit::run_model_test(|| async move {
        Arc::new(SqliteDocumentStore::connect(&url).await.unwrap()) as Arc<dyn DocumentStore>
    });
}

#[test]
fn model_memory() {
    kit::run_model_test(|| async {
        Arc::new(
            SqliteDocumentStore::connect("sqlite::memory:")
                .await
                .unwrap(),
        ) as Arc<dyn DocumentStore>
    });
}

#[tokio::test]
async fn data_and_revisions_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    // The absolute form: `sqlite://` followed by `/tmp/...`.
    let url = file_url(&dir, "durable.db");
    assert!(url.starts_with("sqlite:///"));
    let (r_a, r_b) = {
        let store = SqliteDocumentStore::connect(&url).await.unwrap();
        store
            .put("cars", "a", json!({"km": 1}), PutDocumentOptions::default())
            .await
            .unwrap();
        let r_a = store
            .put("cars", "a", json!({"km": 2}), PutDocumentOptions::default())
            .await
            .unwrap();
        let r_b = store
            .write_batch(vec![
                WriteOp::Put {
                    collection: "trucks".into(),
                    id: "b".into(),
                    value: json!({"axles": 3}),
                    options: PutDocumentOptions::create(),
                },
                WriteOp::Put {
                    collection: "cars".into(),
                    id: "gone".into(),
                    value: json!({}),
                    options: PutDocumentOptions::default(),
                },
            ])
            .await
            .unwrap();
        assert!(
            store
                .delete("cars", "gone", WriteCondition::Any)
                .await
                .unwrap()
        );
        // Dropped without `close`: every acknowledged commit must already be on disk.
        (r_a, r_b)
    };
    assert_eq!(r_a, Revision(2));
    let store = SqliteDocumentStore::connect(&url).await.unwrap();
    let a = store
        .get("cars", "a")
        .await
        .unwrap()
        .expect("survives reopening");
    assert_eq!((a.value, a.revision), (json!({"km": 2}), Revision(2)));
    let b = store
        .get("trucks", "b")
        .await
        .unwrap()
        .expect("batch survives reopening");
    assert_eq!(b.value, json!({"axles": 3}));
    assert_eq!(r_b.len(), 2);
    assert!(
        store.get("cars", "gone").await.unwrap().is_none(),
        "the delete survives too"
    );
    // Revisions continue from where they were.
    let r = store
        .put(
            "cars",
            "a",
            json!({"km": 3}),
            PutDocumentOptions::if_revision(Revision(2)),
        )
        .await
        .unwrap();
    assert_eq!(r, Revision(3));
    store.close().await;

    // A third open, after a clean close, sees the latest write.
    let store = SqliteDocumentStore::connect(&url).await.unwrap();
    let page = store
        .query("cars", Query::all().filter(Filter::ge("km", 3)))
        .await
        .unwrap();
    assert_eq!(page.documents.len(), 1);
    assert_eq!(page.documents[0].revision, Revision(3));
}

#[tokio::test]
async fn url_forms_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let abs = dir.path().join("sub.db");
    let store = SqliteDocumentStore::connect(&format!("sqlite://{}?mode=rwc", abs.display()))
        .await
        .unwrap()
        .with_location(Location::new("aws", "eu-west-1"));
    assert_eq!(store.info().backend, "sqlite");
    assert_eq!(store.info().location.region, "eu-west-1");
    assert!(abs.exists(), "the file is created when missing");

    let missing = dir.path().join("missing.db");
    let err = SqliteDocumentStore::connect(&format!("sqlite://{}?mode=rw", missing.display()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(
        !err.to_string().contains("missing.db"),
        "no URL in the message: {err}"
    );

    let err = SqliteDocumentStore::connect("mysql://user:secret@host/db")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(!err.to_string().contains("secret"));
}

#[tokio::test]
async fn relative_url_creates_the_file_in_the_working_directory() {
    // Cargo runs integration tests with the package directory as working directory; use a
    // unique name there and remove it afterwards.
    let name = format!("target-reltest-{}.db", std::process::id());
    let store = SqliteDocumentStore::connect(&format!("sqlite://{name}"))
        .await
        .unwrap();
    store
        .put("c", "x", json!(1), PutDocumentOptions::default())
        .await
        .unwrap();
    store.close().await;
    let exists = std::path::Path::new(&name).exists();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{name}{suffix}"));
    }
    assert!(
        exists,
        "relative path resolved against the working directory"
    );
}

#[tokio::test]
async fn separate_in_memory_databases_are_separate() {
    let a = SqliteDocumentStore::connect("sqlite::memory:")
        .await
        .unwrap();
    let b = SqliteDocumentStore::connect("sqlite::memory:")
        .await
        .unwrap();
    a.put("c", "x", json!(1), PutDocumentOptions::default())
        .await
        .unwrap();
    assert!(a.get("c", "x").await.unwrap().is_some());
    assert!(b.get("c", "x").await.unwrap().is_none());
}
