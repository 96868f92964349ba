//! Opening backends by URL: built-in schemes, shared `mem://` names, user schemes, and the
//! errors for bad or unknown URLs.
#![cfg(all(
    feature = "memory",
    feature = "local",
    feature = "sqlite",
    feature = "sim"
))]

use bytes::Bytes;
use cloud_abstraction::storage::BlobStoreExt;
use cloud_abstraction::{BlobStore, ErrorKind};
use paas_components::storage::MemoryBlobStore;
use std::sync::Arc;

#[tokio::test]
async fn embedded_schemes_open() {
    let dir = tempfile::tempdir().unwrap();
    let file = paas_components::open_blob_store(&format!("file://{}/blobs", dir.path().display()))
        .await
        .unwrap();
    assert_eq!(file.info().backend, "file");
    file.put_bytes("a/b", Bytes::from_static(b"x"))
        .await
        .unwrap();

    let docs =
        paas_components::open_document_store(&format!("sqlite://{}/d.db", dir.path().display()))
            .await
            .unwrap();
    assert_eq!(docs.info().backend, "sqlite");
    let docs = paas_components::open_document_store("sqlite::memory:")
        .await
        .unwrap();
    assert_eq!(docs.info().backend, "sqlite");
    let q = paas_components::open_queue(&format!("sqlite://{}/q.db", dir.path().display()))
        .await
        .unwrap();
    assert_eq!(q.info().backend, "sqlite");
    let q = paas_components::open_queue("mem://").await.unwrap();
    assert_eq!(q.info().backend, "memory");
    let c = paas_components::open_compute("sim://").await.unwrap();
    assert!(c.capabilities().simulated);
}

#[tokio::test]
async fn named_memory_instances_are_shared_and_unnamed_are_not() {
    let a = paas_components::open_blob_store("mem://registry-test-shared")
        .await
        .unwrap();
    let b = paas_components::open_blob_store("mem://registry-test-shared")
        .await
        .unwrap();
    a.put_bytes("k", Bytes::from_static(b"v")).await.unwrap();
    assert_eq!(b.get_bytes("k").await.unwrap(), "v");

    let c = paas_components::open_blob_store("mem://").await.unwrap();
    let d = paas_components::open_blob_store("mem://").await.unwrap();
    c.put_bytes("k", Bytes::from_static(b"v")).await.unwrap();
    assert!(!d.exists("k").await.unwrap());
}

#[tokio::test]
async fn bad_urls_are_invalid_argument_without_secrets() {
    for url in [
        "",
        "not a url",
        "gopher://x",
        "file://",
        "postgres://u:s3cret@[::1",
    ] {
        let err = paas_components::open_blob_store(url).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{url}: {err}");
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }
    let err = paas_components::open_queue("kafka://broker:9092")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.to_string().contains("known schemes"), "{err}");
}

#[cfg(not(feature = "postgres"))]
#[tokio::test]
async fn scheme_without_its_feature_names_the_feature() {
    let err = paas_components::open_document_store("postgres://app:s3cret@db/cars")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    assert!(err.to_string().contains("`postgres`"), "{err}");
    assert!(!err.to_string().contains("s3cret"), "{err}");
}

#[tokio::test]
async fn user_schemes_can_be_registered() {
    let shared = Arc::new(MemoryBlobStore::new());
    let handle = shared.clone();
    paas_components::register_blob_store(
        "vehicle-cache",
        Arc::new(move |_url| {
            let store: Arc<dyn BlobStore> = handle.clone();
            Box::pin(async move { Ok(store) })
        }),
    );
    let store = paas_components::open_blob_store("vehicle-cache://anything")
        .await
        .unwrap();
    store
        .put_bytes("k", Bytes::from_static(b"v"))
        .await
        .unwrap();
    assert_eq!(shared.get_bytes("k").await.unwrap(), "v");
}
