//! The storage conformance kit and model test against [`LocalBlobStore`], plus what only a
//! filesystem store has: durability across reopen, interrupted writes, the on-disk layout.
#![cfg(feature = "local")]

use cloud_abstraction::storage::{BlobStore, BlobStoreExt, GetOptions, ListOptions, PutOptions};
use cloud_abstraction::testkit::storage::{cases, run_model_test, run_suite};
use cloud_abstraction::{ErrorKind, Location};
use paas_components::storage::LocalBlobStore;
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn BlobStore> = Arc::new(LocalBlobStore::open(dir.path()).unwrap());
    let report = run_suite(Arc::clone(&store)).await;
    assert_eq!(report.passed.len(), cases().len());
    assert_eq!(report.backend, "file");
    // Every case cleaned up after itself, and no temporary file or upload is left over.
    assert!(store.list_all("").await.unwrap().is_empty());
    let staging = dir.path().join(".staging");
    assert_eq!(std::fs::read_dir(staging.join("tmp")).unwrap().count(), 0);
    assert_eq!(
        std::fs::read_dir(staging.join("uploads")).unwrap().count(),
        0
    );
}

#[test]
fn model() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run_model_test(move || Arc::new(LocalBlobStore::open(root.clone()).unwrap()));
}

#[tokio::test]
async fn reopen_sees_same_objects_and_etags() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalBlobStore::open(dir.path()).unwrap();
    let options = PutOptions::default()
        .with_content_type("text/plain")
        .with_metadata("owner", "fleet");
    let a = store.put("v/a.txt", "alpha".into(), options).await.unwrap();
    let b = store.put_bytes("v/b/c", "beta".into()).await.unwrap();
    let before = store.list_all("").await.unwrap();
    drop(store);

    let store = LocalBlobStore::open(dir.path()).unwrap();
    let head = store.head("v/a.txt").await.unwrap();
    assert_eq!(head.etag, a.etag);
    assert_eq!(head.content_type.as_deref(), Some("text/plain"));
    assert_eq!(
        head.metadata.get("owner").map(String::as_str),
        Some("fleet")
    );
    assert_eq!(store.head("v/b/c").await.unwrap().etag, b.etag);
    assert_eq!(store.get_bytes("v/a.txt").await.unwrap(), "alpha");
    assert_eq!(store.list_all("").await.unwrap(), before);
    // A conditional write with the old process's etag still works.
    store
        .put("v/a.txt", "alpha 2".into(), PutOptions::if_match(a.etag))
        .await
        .unwrap();
}

#[tokio::test]
async fn interrupted_put_is_invisible_and_keeps_previous_version() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalBlobStore::open(dir.path()).unwrap();
    let v1 = store.put_bytes("k/obj", "version 1".into()).await.unwrap();
    // What a put killed before its rename leaves behind: a partial file in the staging dir.
    let leftover = dir
        .path()
        .join(".staging/tmp/0123456789abcdef0123456789abcdef");
    std::fs::write(&leftover, b"version 2, half writ").unwrap();

    let got = store.get("k/obj", GetOptions::default()).await.unwrap();
    assert_eq!(got.data, "version 1");
    assert_eq!(got.meta.etag, v1.etag);
    let keys: Vec<String> = store
        .list_all("")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(keys, vec!["k/obj".to_string()]);
    // A fresh leftover survives reopening (another process may still be writing it) and is
    // still invisible.
    let store = LocalBlobStore::open(dir.path()).unwrap();
    assert!(leftover.exists());
    assert_eq!(store.list_all("").await.unwrap().len(), 1);
}

#[tokio::test]
async fn corrupt_object_file_is_an_internal_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalBlobStore::open(dir.path()).unwrap();
    store.put_bytes("c", "content".into()).await.unwrap();
    std::fs::write(dir.path().join("c.blob"), b"truncated").unwrap();
    let err = store.get("c", GetOptions::default()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Internal, "{err}");
    assert_eq!(
        store.head("c").await.unwrap_err().kind(),
        ErrorKind::Internal
    );
}

/// A header with an out-of-range time (damaged or hand-edited file) must not panic.
#[tokio::test]
async fn out_of_range_time_in_header_does_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalBlobStore::open(dir.path()).unwrap();
    let header = br#"{"size":1,"etag":"e","metadata":{},"modified_secs":18446744073709551615,"modified_nanos":999999999}"#;
    let mut file = b"x".to_vec();
    file.extend_from_slice(header);
    file.extend_from_slice(&(header.len() as u64).to_le_bytes());
    file.extend_from_slice(b"CABLOB1\n");
    std::fs::write(dir.path().join("t.blob"), file).unwrap();
    let meta = store.head("t").await.unwrap();
    assert_eq!(meta.size, 1);
    assert_eq!(meta.last_modified, std::time::UNIX_EPOCH);
    assert_eq!(store.get_bytes("t").await.unwrap(), "x");
}

#[tokio::test]
async fn key_may_be_an_object_and_a_prefix_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalBlobStore::open(dir.path()).unwrap();
    store.put_bytes("a", "file a".into()).await.unwrap();
    store.put_bytes("a/b", "file a/b".into()).await.unwrap();
    store.put_bytes("a.d", "dot d".into()).await.unwrap();
    store
        .put_bytes("a.blob/x", "dot blob".into())
        .await
        .unwrap();
    assert_eq!(store.get_bytes("a").await.unwrap(), "file a");
    assert_eq!(store.get_bytes("a/b").await.unwrap(), "file a/b");
    assert_eq!(store.get_bytes("a.d").await.unwrap(), "dot d");
    assert_eq!(store.get_bytes("a.blob/x").await.unwrap(), "dot blob");
    let page = store
        .list_page(ListOptions {
            delimiter: true,
            ..ListOptions::default()
        })
        .await
        .unwrap();
    let objects: Vec<&str> = page.objects.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(objects, vec!["a", "a.d"]);
    assert_eq!(page.common_prefixes, vec!["a.blob/", "a/"]);
    store.delete("a").await.unwrap();
    assert_eq!(store.get_bytes("a/b").await.unwrap(), "file a/b");
    store.delete("a/b").await.unwrap();
    assert!(
        !dir.path().join("a.d").exists(),
        "empty directories are pruned"
    );
    assert_eq!(store.get_bytes("a.d").await.unwrap(), "dot d");
}

#[tokio::test]
async fn unicode_spaces_and_reserved_looking_keys() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalBlobStore::open(dir.path()).unwrap();
    let keys = [
        "ünï cödé/with space/file name.txt",
        "日本/データ",
        ".staging",
        "x/.staging/y",
        "emoji 🚗/ok",
    ];
    for key in keys {
        store
            .put_bytes(key, key.as_bytes().to_vec().into())
            .await
            .unwrap();
    }
    for key in keys {
        assert_eq!(store.get_bytes(key).await.unwrap(), key.as_bytes());
    }
    let mut expect: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    expect.sort();
    let listed: Vec<String> = store
        .list_all("")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(listed, expect);
    // The reserved staging directory is still intact and unlisted.
    assert!(dir.path().join(".staging/tmp").is_dir());
}

#[tokio::test]
async fn overlong_segment_is_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalBlobStore::open(dir.path()).unwrap();
    let key = format!("ok/{}", "s".repeat(251));
    let err = store.put_bytes(&key, "x".into()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    store
        .put_bytes(&format!("ok/{}", "s".repeat(250)), "x".into())
        .await
        .unwrap();
}

#[cfg(unix)]
#[tokio::test]
async fn symlinks_out_of_the_root_are_refused() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.blob"), b"secret").unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("evil.d")).unwrap();
    let store = LocalBlobStore::open(dir.path()).unwrap();
    assert!(
        store.list_all("").await.unwrap().is_empty(),
        "links are not followed"
    );
    let err = store
        .get("evil/secret", GetOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    let err = store.put_bytes("evil/new", "x".into()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(!outside.path().join("new.blob").exists());
}

/// A put through a link out of the root is refused before anything is created outside:
/// `create_dir_all` used to make `outside/sub.d/deeper.d` first, then refuse.
#[cfg(unix)]
#[tokio::test]
async fn a_refused_put_creates_nothing_outside_the_root() {
    let outside = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("evil.d")).unwrap();
    let store = LocalBlobStore::open(dir.path()).unwrap();
    for key in ["evil/sub/deeper/x", "evil/x", "evil/sub/x"] {
        let err = store.put_bytes(key, "x".into()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{key}: {err}");
        let left: Vec<_> = std::fs::read_dir(outside.path()).unwrap().collect();
        assert!(left.is_empty(), "{key}: created outside the root: {left:?}");
    }
    // Puts inside the root still create their directories.
    store
        .put_bytes("ok/sub/deeper/x", "x".into())
        .await
        .unwrap();
    assert!(dir.path().join("ok.d/sub.d/deeper.d").is_dir());
}

#[tokio::test]
async fn open_rejects_a_file_root_and_reports_location() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain");
    std::fs::write(&file, b"x").unwrap();
    let err = LocalBlobStore::open(&file).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    let store = LocalBlobStore::open(dir.path().join("nested/root"))
        .unwrap()
        .with_location(Location::new("azure", "westeurope"));
    assert_eq!(store.info().backend, "file");
    assert_eq!(store.info().location.provider, "azure");
    assert!(store.root().join(".staging").is_dir());
}

#[tokio::test]
async fn abandoned_multipart_uploads_are_removed_on_open() {
    use paas_components::storage::local::STALE_UPLOAD;
    let dir = tempfile::tempdir().unwrap();
    let store = LocalBlobStore::open(dir.path()).unwrap();
    let old = store
        .create_multipart("a/old", PutOptions::default())
        .await
        .unwrap();
    store
        .put_part("a/old", &old, 0, "part".into())
        .await
        .unwrap();
    let fresh = store
        .create_multipart("a/fresh", PutOptions::default())
        .await
        .unwrap();
    let uploads = dir.path().join(".staging").join("uploads");
    // The old upload's last part was written longer ago than the limit.
    let old_dir = uploads.join(&old.0);
    std::fs::File::open(&old_dir)
        .unwrap()
        .set_modified(
            std::time::SystemTime::now() - STALE_UPLOAD - std::time::Duration::from_secs(60),
        )
        .unwrap();
    drop(store);

    let store = LocalBlobStore::open(dir.path()).unwrap();
    assert!(!old_dir.exists(), "the abandoned upload's parts are gone");
    assert_eq!(
        store
            .put_part("a/old", &old, 1, "more".into())
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
    // A recent upload is kept and still completes.
    let part = store
        .put_part("a/fresh", &fresh, 0, "x".into())
        .await
        .unwrap();
    store
        .complete_multipart("a/fresh", &fresh, vec![part])
        .await
        .unwrap();
    assert_eq!(store.get_bytes("a/fresh").await.unwrap(), "x");
}

/// `file:` URLs are read strictly: a host (other than `localhost`) used to be dropped, and a
/// relative path was read from `/`; both now fail without creating anything.
#[tokio::test]
async fn file_urls_with_a_host_or_a_relative_path_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let abs = dir.path().display().to_string();
    // The same directory written relative to `/`: the old parse opened exactly `abs`.
    let rel = abs.trim_start_matches('/');
    for url in [
        format!("file://data{abs}/x"),
        format!("file://127.0.0.1{abs}/x"),
        format!("file:{rel}/x"),
    ] {
        let err = match paas_components::open_blob_store(&url).await {
            Ok(_) => panic!("{url}: opened"),
            Err(err) => err,
        };
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{url}: {err}");
        assert!(err.to_string().contains("file:///abs/path"), "{url}: {err}");
        assert!(
            !dir.path().join("x").exists(),
            "{url} created the directory"
        );
    }
    for (url, sub) in [
        (format!("file://{abs}/a"), "a"),
        (format!("file://localhost{abs}/b"), "b"),
        (format!("file:{abs}/c"), "c"),
    ] {
        let store = paas_components::open_blob_store(&url).await.unwrap();
        store
            .put("k", "v".into(), PutOptions::default())
            .await
            .unwrap();
        assert!(dir.path().join(sub).is_dir(), "{url}");
    }
}
