//! The Azure Blob backend against Azurite (started by `.ci/services/azurite.sh`): the whole
//! storage conformance kit, the model test, Azure-specific checks, and a fault test through a
//! TCP proxy that is cut and restored.
#![cfg(feature = "azure")]

mod support;

use bytes::Bytes;
use cloud_abstraction::storage::{BlobStoreExt, GetOptions, PresignMethod, PutOptions};
use cloud_abstraction::testkit::assert_kind;
use cloud_abstraction::testkit::storage::{cases, run_model_test, run_suite};
use cloud_abstraction::testkit::unique_name;
use cloud_abstraction::{BlobStore, ErrorKind};
use paas_components::storage::AzureBlobStore;
use std::sync::Arc;
use std::time::Duration;
use support::{TcpProxy, endpoint_addr, server_url, via_endpoint};

/// What `.ci/services/azurite.sh` prints with its defaults.
const DEFAULT_URL: &str =
    "azure://test-container?emulator=true&endpoint=http://127.0.0.1:10000/devstoreaccount1";

async fn test_url() -> Option<String> {
    let configured = std::env::var("AZURE_TEST_URL").unwrap_or_else(|_| DEFAULT_URL.to_string());
    server_url("AZURE_TEST_URL", DEFAULT_URL, &endpoint_addr(&configured)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_suite() {
    let Some(url) = test_url().await else { return };
    let store: Arc<dyn BlobStore> = Arc::new(AzureBlobStore::from_url(&url).unwrap());
    let report = run_suite(store).await;
    assert_eq!(report.passed.len(), cases().len());
}

#[test]
fn model_test() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Some(url) = rt.block_on(test_url()) else {
        return;
    };
    drop(rt);
    run_model_test(|| Arc::new(AzureBlobStore::from_url(&url).unwrap()));
}

#[tokio::test]
async fn metadata_names_are_sent_as_written() {
    // Portable names are lower-case C# identifiers, so Azure stores them unchanged (no
    // escaping), and other Azure tools see the same names.
    let Some(url) = test_url().await else { return };
    let store = AzureBlobStore::from_url(&url).unwrap();
    let key = format!("{}/meta", unique_name("azmeta-"));
    let options = PutOptions::default()
        .with_metadata("vehicle_id", "VIN9")
        .with_metadata("_lives9", "yes")
        .with_metadata("a_b_c", "d");
    store
        .put(&key, Bytes::from_static(b"x"), options.clone())
        .await
        .unwrap();
    let head = store.head(&key).await.unwrap();
    assert_eq!(head.metadata, options.metadata);
    store.delete(&key).await.unwrap();
}

#[tokio::test]
async fn multipart_parts_out_of_order_and_with_metadata() {
    let Some(url) = test_url().await else { return };
    let store = AzureBlobStore::from_url(&url).unwrap();
    let prefix = unique_name("azmulti-");
    // Without metadata: the block API takes parts in any order.
    let key = format!("{prefix}/plain");
    let upload = store
        .create_multipart(&key, PutOptions::default())
        .await
        .unwrap();
    let p1 = store
        .put_part(&key, &upload, 1, Bytes::from_static(b"world"))
        .await
        .unwrap();
    let p0 = store
        .put_part(&key, &upload, 0, Bytes::from_static(b"hello "))
        .await
        .unwrap();
    store
        .complete_multipart(&key, &upload, vec![p0, p1])
        .await
        .unwrap();
    assert_eq!(
        store.get_bytes(&key).await.unwrap(),
        Bytes::from_static(b"hello world")
    );
    // With metadata: in order only, and an out-of-order part is refused, not misplaced.
    let key = format!("{prefix}/meta");
    let options = PutOptions::default()
        .with_content_type("text/plain")
        .with_metadata("k", "v");
    let upload = store.create_multipart(&key, options).await.unwrap();
    assert_kind(
        store
            .put_part(&key, &upload, 1, Bytes::from_static(b"x"))
            .await,
        ErrorKind::InvalidArgument,
        "out-of-order part of an upload with metadata",
    );
    let p0 = store
        .put_part(&key, &upload, 0, Bytes::from_static(b"a"))
        .await
        .unwrap();
    let p1 = store
        .put_part(&key, &upload, 1, Bytes::from_static(b"b"))
        .await
        .unwrap();
    let done = store
        .complete_multipart(&key, &upload, vec![p0, p1])
        .await
        .unwrap();
    let got = store.get(&key, GetOptions::default()).await.unwrap();
    assert_eq!(got.data, Bytes::from_static(b"ab"));
    assert_eq!(got.meta.etag, done.etag);
    assert_eq!(got.meta.content_type.as_deref(), Some("text/plain"));
    assert_eq!(got.meta.metadata.get("k").map(String::as_str), Some("v"));
    // Presigning is not claimed.
    assert_kind(
        store
            .presign(PresignMethod::Get, &key, Duration::from_secs(60))
            .await,
        ErrorKind::Unsupported,
        "presign on azure",
    );
    for object in store.list_all(&format!("{prefix}/")).await.unwrap() {
        store.delete(&object.key).await.unwrap();
    }
}

/// Acknowledged writes survive a network cut (the shared scenario in
/// `support/blob_faults.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_is_retryable_and_acknowledged_writes_survive() {
    let Some(url) = test_url().await else { return };
    let proxy = TcpProxy::start(&endpoint_addr(&url)).await;
    let store = Arc::new(AzureBlobStore::from_url(&via_endpoint(&url, proxy.addr())).unwrap());
    let direct = Arc::new(AzureBlobStore::from_url(&url).unwrap());
    support::blob_faults::cut_and_restore_keeps_acknowledged_objects(&proxy, store, direct).await;
}

#[tokio::test]
async fn copy_if_not_exists_copies_metadata_written_by_other_tools() {
    use object_store::{Attribute, AttributeValue, Attributes, ObjectStore};
    let Some(url) = test_url().await else { return };
    let store = AzureBlobStore::from_url(&url).unwrap();
    let prefix = unique_name("azforeign-");
    let from = format!("{prefix}/from");
    // Another Azure tool may write what the portable rule does not let a caller write (here a
    // content type that is not `type/subtype`, and a mixed-case metadata name); a copy inside
    // the store must still take the object along as it is.
    let endpoint = url::Url::parse(&url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "endpoint")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    let raw = object_store::azure::MicrosoftAzureBuilder::new()
        .with_use_emulator(true)
        .with_container_name("test-container")
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .build()
        .unwrap();
    let mut attributes = Attributes::new();
    attributes.insert(
        Attribute::Metadata("MyKey".into()),
        AttributeValue::from("v"),
    );
    attributes.insert(Attribute::ContentType, AttributeValue::from("weird"));
    raw.put_opts(
        &object_store::path::Path::from(from.as_str()),
        object_store::PutPayload::from_static(b"x"),
        object_store::PutOptions {
            attributes,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let source = store.head(&from).await.unwrap();
    assert_eq!(source.content_type.as_deref(), Some("weird"));
    assert!(!source.metadata.is_empty());
    let to = format!("{prefix}/to");
    store
        .copy(
            &from,
            &to,
            cloud_abstraction::storage::CopyOptions {
                if_not_exists: true,
            },
        )
        .await
        .unwrap();
    let copy = store.head(&to).await.unwrap();
    assert_eq!(copy.content_type, source.content_type);
    assert_eq!(copy.metadata, source.metadata);
    for key in [&from, &to] {
        store.delete(key).await.unwrap();
    }
}

/// The same endpoint rule as S3 (shared in the object_store adapter): an endpoint that is
/// no absolute http(s) URL with a host is refused at open, not a panic at the first call.
#[tokio::test]
async fn unusable_endpoints_are_refused_at_open() {
    for endpoint in ["127.0.0.1:10000", "localhost", ""] {
        let url = format!("azure://c?emulator=true&endpoint={endpoint}");
        let err = match paas_components::open_blob_store(&url).await {
            Ok(_) => panic!("{endpoint:?}: opened"),
            Err(err) => err,
        };
        assert_eq!(
            err.kind(),
            ErrorKind::InvalidArgument,
            "{endpoint:?}: {err}"
        );
        assert!(
            err.to_string().contains("`endpoint`"),
            "{endpoint:?}: {err}"
        );
    }
}
