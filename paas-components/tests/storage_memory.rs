//! The storage conformance kit and model test against [`MemoryBlobStore`].
#![cfg(feature = "memory")]

use cloud_abstraction::storage::{BlobStore, BlobStoreExt, GetOptions, PutOptions};
use cloud_abstraction::testkit::storage::{cases, run_model_test, run_suite};
use cloud_abstraction::{ErrorKind, Location};
use paas_components::storage::MemoryBlobStore;
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    let store: Arc<dyn BlobStore> = Arc::new(MemoryBlobStore::new());
    let report = run_suite(store).await;
    assert_eq!(report.passed.len(), cases().len());
    assert_eq!(report.backend, "memory");
}

#[test]
fn model() {
    run_model_test(|| Arc::new(MemoryBlobStore::new()));
}

#[tokio::test]
async fn location_and_capabilities() {
    let store = MemoryBlobStore::new().with_location(Location::new("aws", "eu-west-1"));
    let info = store.info();
    assert_eq!(info.backend, "memory");
    assert_eq!(info.location, Location::new("aws", "eu-west-1"));
    let caps = store.capabilities();
    assert!(caps.conditional_put && caps.multipart && caps.ranges && !caps.presign);
    assert_eq!(caps.max_put_size, None);
}

#[tokio::test]
async fn clones_share_objects_and_debug_hides_contents() {
    let a = MemoryBlobStore::new();
    let b = a.clone();
    a.put_bytes("k", "secret-payload".into()).await.unwrap();
    assert_eq!(b.get_bytes("k").await.unwrap(), "secret-payload");
    assert!(!format!("{a:?}").contains("secret-payload"));
}

#[tokio::test]
async fn bad_metadata_and_foreign_upload_rejected() {
    let store = MemoryBlobStore::new();
    let err = store
        .put(
            "k",
            "x".into(),
            PutOptions::default().with_metadata("Bad Key", "v"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    let upload = store
        .create_multipart("k", PutOptions::default())
        .await
        .unwrap();
    // The upload belongs to `k`, not to `other`.
    let err = store
        .put_part("other", &upload, 0, "x".into())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let part = store.put_part("k", &upload, 0, "x".into()).await.unwrap();
    let mut wrong = part.clone();
    wrong.token = "nope".into();
    let err = store
        .complete_multipart("k", &upload, vec![wrong])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    store
        .complete_multipart("k", &upload, vec![part])
        .await
        .unwrap();
    let got = store.get("k", GetOptions::default()).await.unwrap();
    assert_eq!(got.data, "x");
}
