//! The S3 backend against real S3 servers. On s3s-fs (started by `.ci/services/s3.sh`): the
//! whole storage conformance kit, the model test, presigned URLs used over plain HTTP, and a
//! fault test through a TCP proxy that is cut and restored. On moto (started by
//! `.ci/services/moto.sh`, which checks conditional writes atomically): the whole kit and the
//! model test, strict (every case must pass) and with `conditional_put=etag`.
#![cfg(feature = "s3")]

mod support;

use bytes::Bytes;
use cloud_abstraction::storage::{BlobStoreExt, PresignMethod, PutOptions};
use cloud_abstraction::testkit::storage::{cases, run_model_test, run_suite};
use cloud_abstraction::testkit::{assert_kind, run_cases, unique_name};
use cloud_abstraction::{BlobStore, ErrorKind};
use paas_components::storage::S3BlobStore;
use std::sync::Arc;
use std::time::Duration;
use support::{TcpProxy, endpoint_addr, server_url, via_endpoint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What `.ci/services/s3.sh` prints with its defaults.
const DEFAULT_URL: &str = "s3://test-bucket?endpoint=http://127.0.0.1:9000&region=us-east-1\
    &access_key_id=ciaccesskey&secret_access_key=cisecretkey&conditional_put=disabled";

async fn test_url() -> Option<String> {
    let configured = std::env::var("S3_TEST_URL").unwrap_or_else(|_| DEFAULT_URL.to_string());
    server_url("S3_TEST_URL", DEFAULT_URL, &endpoint_addr(&configured)).await
}

/// Cases s3s-fs cannot pass because it stores each key as a file: a key cannot be both an
/// object and a "directory" (`p/ab` beside `p/ab/x` fails with 500), and a head of a
/// directory answers 500 instead of 404. Against a real S3 (`S3_STRICT=1`) every case must
/// pass.
const S3S_FS_LIMITS: &[&str] = &["get_and_head_absent_key_not_found", "list_with_prefix"];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_suite() {
    let Some(url) = test_url().await else { return };
    let store: Arc<dyn BlobStore> = Arc::new(S3BlobStore::from_url(&url).unwrap());
    if std::env::var_os("S3_STRICT").is_some() {
        let report = run_suite(store).await;
        assert_eq!(report.passed.len(), cases().len());
        return;
    }
    let report = run_cases("storage", "s3", store, &cases()).await;
    let unexpected: Vec<_> = report
        .failed
        .iter()
        .filter(|(name, _)| !S3S_FS_LIMITS.contains(name))
        .collect();
    assert!(
        unexpected.is_empty(),
        "failed beyond s3s-fs's known limits: {unexpected:#?}"
    );
    assert!(report.passed.len() + S3S_FS_LIMITS.len() >= cases().len());
    eprintln!(
        "s3 on s3s-fs: {} of {} cases passed; known server limits failed: {:?}",
        report.passed.len(),
        cases().len(),
        report.failed.iter().map(|(n, _)| *n).collect::<Vec<_>>()
    );
}

/// The conditional-put mapping against the server with `conditional_put=etag` (sequential:
/// s3s-fs checks the condition before writing, so it is right but not atomic under races).
#[tokio::test]
async fn conditional_put_kinds() {
    let Some(url) = test_url().await else { return };
    let url = url.replace("conditional_put=disabled", "conditional_put=etag");
    let store = S3BlobStore::from_url(&url).unwrap();
    assert!(store.capabilities().conditional_put);
    let key = format!("{}/cas", unique_name("cond-"));
    let first = store
        .put(&key, Bytes::from_static(b"one"), PutOptions::create())
        .await
        .unwrap();
    assert_kind(
        store
            .put(&key, Bytes::from_static(b"two"), PutOptions::create())
            .await,
        ErrorKind::AlreadyExists,
        "create on a present key",
    );
    assert_kind(
        store
            .put(
                &key,
                Bytes::from_static(b"two"),
                PutOptions::if_match("\"nope\""),
            )
            .await,
        ErrorKind::PreconditionFailed,
        "stale if-match",
    );
    let second = store
        .put(
            &key,
            Bytes::from_static(b"two"),
            PutOptions::if_match(first.etag),
        )
        .await
        .unwrap();
    assert_eq!(store.head(&key).await.unwrap().etag, second.etag);
    assert_kind(
        store
            .put(
                &format!("{key}-absent"),
                Bytes::from_static(b"x"),
                PutOptions::if_match(second.etag),
            )
            .await,
        ErrorKind::PreconditionFailed,
        "if-match on an absent key",
    );
    store.delete(&key).await.unwrap();
}

/// What `.ci/services/moto.sh` prints with its defaults.
const MOTO_DEFAULT_URL: &str = "s3://test-bucket?endpoint=http://127.0.0.1:9010&region=us-east-1\
    &access_key_id=motoaccesskey&secret_access_key=motosecretkey&conditional_put=etag";

/// The moto URL, with its bucket made sure of: moto keeps everything in memory, so a server
/// restarted since `.ci/services/moto.sh` ran has no bucket. moto does not check signatures,
/// so a plain CreateBucket does (200 when created, 409 when already owned).
async fn moto_url() -> Option<String> {
    let configured =
        std::env::var("S3_MOTO_TEST_URL").unwrap_or_else(|_| MOTO_DEFAULT_URL.to_string());
    let addr = endpoint_addr(&configured);
    let url = server_url("S3_MOTO_TEST_URL", MOTO_DEFAULT_URL, &addr).await?;
    let bucket = url::Url::parse(&url)
        .unwrap()
        .host_str()
        .expect("the URL names a bucket")
        .to_string();
    let (status, body) = http(&addr, "PUT", &format!("http://{addr}/{bucket}"), b"").await;
    assert!(
        status == 200 || status == 409,
        "creating bucket {bucket} on moto: {status} {}",
        String::from_utf8_lossy(&body)
    );
    Some(url)
}

/// Every case of the kit passes on moto, conditional puts included.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn moto_conformance_suite_strict() {
    let Some(url) = moto_url().await else { return };
    assert!(
        url.contains("conditional_put=etag"),
        "the moto suite runs with conditional puts"
    );
    let store = S3BlobStore::from_url(&url).unwrap();
    assert!(store.capabilities().conditional_put);
    let report = run_suite(Arc::new(store)).await;
    assert_eq!(report.passed.len(), cases().len());
    eprintln!(
        "s3 on moto: {} of {} cases passed",
        report.passed.len(),
        cases().len()
    );
}

#[test]
fn moto_model_test() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Some(url) = rt.block_on(moto_url()) else {
        return;
    };
    drop(rt);
    run_model_test(|| Arc::new(S3BlobStore::from_url(&url).unwrap()));
}

#[test]
fn model_test() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Some(url) = rt.block_on(test_url()) else {
        return;
    };
    drop(rt);
    run_model_test(|| Arc::new(S3BlobStore::from_url(&url).unwrap()));
}

/// Sends one raw HTTP/1.1 request and returns the status code and body.
async fn http(addr: &str, method: &str, url: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let parsed = url::Url::parse(url).unwrap();
    let target = match parsed.query() {
        Some(q) => format!("{}?{q}", parsed.path()),
        None => parsed.path().to_string(),
    };
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        parsed.host_str().unwrap().to_string()
            + &parsed.port().map(|p| format!(":{p}")).unwrap_or_default(),
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut response))
        .await
        .expect("presigned request timed out")
        .unwrap();
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP response");
    let status_line = String::from_utf8_lossy(&response[..split]).to_string();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    let headers = status_line.to_ascii_lowercase();
    let mut body = response[split + 4..].to_vec();
    if headers.contains("transfer-encoding: chunked") {
        // Decode the chunked body.
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let line_end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap().trim(), 16)
                    .unwrap();
            rest = &rest[line_end + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        body = out;
    }
    (status, body)
}

#[tokio::test]
async fn presigned_urls_work_over_plain_http() {
    let Some(url) = test_url().await else { return };
    let addr = endpoint_addr(&url);
    let store = S3BlobStore::from_url(&url).unwrap();
    let prefix = unique_name("presign-");
    let key = format!("{prefix}/report.txt");
    store
        .put(
            &key,
            Bytes::from_static(b"signed bytes"),
            PutOptions::default(),
        )
        .await
        .unwrap();

    let get_url = store
        .presign(PresignMethod::Get, &key, Duration::from_secs(300))
        .await
        .unwrap();
    assert!(get_url.contains("X-Amz-Signature="), "{get_url}");
    let (status, body) = http(&addr, "GET", &get_url, b"").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body, b"signed bytes");

    // The signature covers the path: the same query on another key is refused.
    let other = get_url.replace("report.txt", "other.txt");
    let (status, _) = http(&addr, "GET", &other, b"").await;
    assert_eq!(status, 403, "a signature for one key does not open another");

    let put_key = format!("{prefix}/upload.bin");
    let put_url = store
        .presign(PresignMethod::Put, &put_key, Duration::from_secs(300))
        .await
        .unwrap();
    let (status, body) = http(&addr, "PUT", &put_url, b"uploaded without credentials").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        store.get_bytes(&put_key).await.unwrap(),
        Bytes::from_static(b"uploaded without credentials")
    );

    let err = store
        .presign(PresignMethod::Get, &key, Duration::from_secs(8 * 24 * 3600))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    store.delete(&key).await.unwrap();
    store.delete(&put_key).await.unwrap();
}

#[tokio::test]
async fn errors_never_show_credentials() {
    let Some(url) = test_url().await else { return };
    let secret = url::Url::parse(&url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "secret_access_key")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    // A wrong secret: the server refuses the signature.
    let wrong = url.replace(&secret, "wrong-secret-value");
    let store = S3BlobStore::from_url(&wrong).unwrap();
    let err = store.head("some/key").await.unwrap_err();
    assert!(
        matches!(
            err.kind(),
            ErrorKind::PermissionDenied | ErrorKind::Unauthenticated
        ),
        "{err}"
    );
    let shown = format!("{err} {err:?} {store:?}");
    assert!(!shown.contains("wrong-secret-value"), "{shown}");
    assert!(!shown.contains(&secret), "{shown}");
}

/// Acknowledged writes survive a network cut (the shared scenario in
/// `support/blob_faults.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_is_retryable_and_acknowledged_writes_survive() {
    let Some(url) = test_url().await else { return };
    let proxy = TcpProxy::start(&endpoint_addr(&url)).await;
    let store = Arc::new(S3BlobStore::from_url(&via_endpoint(&url, proxy.addr())).unwrap());
    let direct = Arc::new(S3BlobStore::from_url(&url).unwrap());
    support::blob_faults::cut_and_restore_keeps_acknowledged_objects(&proxy, store, direct).await;
}

/// An endpoint object_store cannot turn into a request URI used to open fine and panic at
/// the first call; it is refused at open, naming the parameter. No server needed.
#[tokio::test]
async fn unusable_endpoints_are_refused_at_open() {
    for endpoint in [
        "127.0.0.1:9000",
        "localhost",
        "localhost:9000",
        "",
        "ftp://h",
    ] {
        let url = format!("s3://b?endpoint={endpoint}&access_key_id=k&secret_access_key=s");
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
    // A usable endpoint still opens; the call fails cleanly (port 9 on loopback: nothing
    // listens), it does not panic.
    let store = paas_components::open_blob_store(
        "s3://b?endpoint=http://127.0.0.1:9&access_key_id=k&secret_access_key=s",
    )
    .await
    .unwrap();
    assert!(store.head("k").await.is_err());
}
