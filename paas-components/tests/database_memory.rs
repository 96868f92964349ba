//! The database conformance kit and model test on the in-memory store.
#![cfg(feature = "memory")]

use cloud_abstraction::Location;
use cloud_abstraction::database::{DocumentStore, PutDocumentOptions};
use cloud_abstraction::testkit::database as kit;
use paas_components::database::MemoryDocumentStore;
use serde_json::json;
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    let store: Arc<dyn DocumentStore> = Arc::new(MemoryDocumentStore::new());
    let report = kit::run_suite(store).await;
    assert_eq!(report.passed.len(), kit::cases().len());
}

#[test]
fn model() {
    kit::run_model_test(|| async {
        Arc::new(MemoryDocumentStore::new()) as Arc<dyn DocumentStore>
    });
}

#[tokio::test]
async fn clones_share_data_and_location_is_reported() {
    let eu = Location::new("aws", "eu-central-1").with_zone("eu-central-1a");
    let store = MemoryDocumentStore::new().with_location(eu.clone());
    assert_eq!(store.info().backend, "memory");
    assert_eq!(store.info().location, eu);
    let clone = store.clone();
    clone
        .put(
            "cars",
            "VIN1",
            json!({"km": 1}),
            PutDocumentOptions::create(),
        )
        .await
        .unwrap();
    assert_eq!(
        store.get("cars", "VIN1").await.unwrap().unwrap().value,
        json!({"km": 1})
    );
    let other = MemoryDocumentStore::new();
    assert!(
        other.get("cars", "VIN1").await.unwrap().is_none(),
        "separate stores are separate"
    );
}

/// Debug output of the store never shows documents (user data).
#[tokio::test]
async fn debug_does_not_show_documents() {
    let store = MemoryDocumentStore::new();
    store
        .put(
            "cars",
            "VIN1",
            json!({"owner": "secret-owner"}),
            PutDocumentOptions::create(),
        )
        .await
        .unwrap();
    let debug = format!("{store:?}");
    assert!(debug.contains("MemoryDocumentStore"));
    assert!(!debug.contains("secret-owner"), "{debug}");
}
