//! Conformance suite for [`BlobStore`]: [`cases`], [`run_suite`] and the proptest
//! [`run_model_test`].
//!
//! Every case works under its own unique key prefix and deletes what it wrote, so the suite can
//! run against a shared bucket. Cases for an optional capability that the store does not claim
//! assert that the operation fails with [`ErrorKind::Unsupported`] instead.
//!
//! Not checked (on purpose, because S3 and Azure legitimately differ): whether a metadata-only
//! change alters the ETag, and whether an overwrite with identical bytes keeps it.

use super::{Case, Report, assert_kind, proptest_cases, run_cases, unique_name};
use crate::storage::{
    BlobStore, BlobStoreExt, CopyOptions, GetOptions, GetRange, ListOptions, ListPage,
    PresignMethod, PutMode, PutOptions, StorageCapabilities,
};
use crate::{ErrorKind, Result, validate};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

type Store = Arc<dyn BlobStore>;

/// Every storage conformance case, in the order [`run_suite`] runs them.
pub fn cases() -> Vec<Case<dyn BlobStore>> {
    vec![
        crate::conformance_case!(put_get_head_delete_round_trip),
        crate::conformance_case!(empty_object_round_trip),
        crate::conformance_case!(delete_absent_key_succeeds),
        crate::conformance_case!(get_and_head_absent_key_not_found),
        crate::conformance_case!(etag_present_stable_and_changes_on_overwrite),
        crate::conformance_case!(content_type_and_metadata_round_trip),
        crate::conformance_case!(put_create_only),
        crate::conformance_case!(put_update_if_match),
        crate::conformance_case!(create_only_race_has_one_winner),
        crate::conformance_case!(update_if_match_race_has_one_winner),
        crate::conformance_case!(conditional_get),
        crate::conformance_case!(range_reads),
        crate::conformance_case!(list_with_prefix),
        crate::conformance_case!(list_with_delimiter),
        crate::conformance_case!(list_start_after),
        crate::conformance_case!(list_start_after_with_delimiter),
        crate::conformance_case!(list_pagination),
        crate::conformance_case!(list_pagination_with_delimiter),
        crate::conformance_case!(copy_object),
        crate::conformance_case!(multipart_upload),
        crate::conformance_case!(multipart_abort),
        crate::conformance_case!(large_object_round_trip),
        crate::conformance_case!(invalid_keys_rejected),
        crate::conformance_case!(metadata_and_content_type_rules),
        crate::conformance_case!(metadata_as_stored_rules),
        crate::conformance_case!(max_put_size_enforced),
        crate::conformance_case!(presign_unless_claimed_is_unsupported),
    ]
}

/// Runs every case against `target`, panics listing the failures if any, and returns the report.
pub async fn run_suite(target: Arc<dyn BlobStore>) -> Report {
    let backend = target.info().backend;
    let report = run_cases("storage", &backend, target, &cases()).await;
    report.assert_passed();
    report
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn caps(store: &Store) -> StorageCapabilities {
    store.capabilities()
}

fn prefix() -> String {
    format!("{}/", unique_name("kit-"))
}

fn bytes(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// Deterministic pseudo-random payload (xorshift), so that a mismatch is reproducible.
fn payload(len: usize, seed: u64) -> Bytes {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

/// FNV-1a, for a short checksum in failure messages.
fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[track_caller]
fn ok<T>(result: Result<T>, what: &str) -> T {
    match result {
        Ok(v) => v,
        Err(e) => panic!("{what}: unexpected error {e}"),
    }
}

async fn cleanup(store: &Store, prefix: &str) {
    if let Ok(objects) = store.list_all(prefix).await {
        for object in objects {
            let _ = store.delete(&object.key).await;
        }
    }
}

async fn put(store: &Store, key: &str, data: &str) -> String {
    ok(
        store.put(key, bytes(data), PutOptions::default()).await,
        &format!("put {key}"),
    )
    .etag
}

async fn all_pages(store: &Store, mut options: ListOptions) -> (Vec<String>, Vec<String>) {
    let mut keys = Vec::new();
    let mut prefixes = Vec::new();
    let max = options.max_results;
    for _ in 0..10_000 {
        let page: ListPage = ok(store.list_page(options.clone()).await, "list_page");
        if let Some(max) = max {
            assert!(
                page.objects.len() + page.common_prefixes.len() <= max,
                "a page holds {} entries but max_results is {max}",
                page.objects.len() + page.common_prefixes.len()
            );
        }
        keys.extend(page.objects.into_iter().map(|o| o.key));
        prefixes.extend(page.common_prefixes);
        match page.next_page_token {
            Some(token) => options.page_token = Some(token),
            None => return (keys, prefixes),
        }
    }
    panic!("listing did not end after 10000 pages");
}

fn sorted(v: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    out.sort();
    out
}

// ---------------------------------------------------------------------------------------------
// Cases

async fn put_get_head_delete_round_trip(store: Store) {
    let p = prefix();
    let key = format!("{p}dir/object.bin");
    let data = payload(1000, 7);
    let put = ok(
        store.put(&key, data.clone(), PutOptions::default()).await,
        "put",
    );
    let got = ok(store.get(&key, GetOptions::default()).await, "get");
    assert_eq!(got.data, data, "get returns what was put");
    assert_eq!(got.range, 0..1000, "a whole-object get covers every byte");
    assert_eq!(got.meta.key, key);
    assert_eq!(got.meta.size, 1000);
    assert_eq!(got.meta.etag, put.etag, "get's etag is the put's");
    let head = ok(store.head(&key).await, "head");
    assert_eq!(head.key, key);
    assert_eq!(head.size, 1000);
    assert_eq!(head.etag, put.etag, "head's etag is the put's");
    assert!(ok(store.exists(&key).await, "exists"));
    ok(store.delete(&key).await, "delete");
    assert_kind(
        store.get(&key, GetOptions::default()).await,
        ErrorKind::NotFound,
        "get after delete",
    );
    assert_kind(
        store.head(&key).await,
        ErrorKind::NotFound,
        "head after delete",
    );
    assert!(!ok(store.exists(&key).await, "exists after delete"));
    cleanup(&store, &p).await;
}

async fn empty_object_round_trip(store: Store) {
    let p = prefix();
    let key = format!("{p}empty");
    ok(
        store.put(&key, Bytes::new(), PutOptions::default()).await,
        "put empty",
    );
    let got = ok(store.get(&key, GetOptions::default()).await, "get empty");
    assert!(got.data.is_empty(), "empty object reads back empty");
    assert_eq!(got.meta.size, 0);
    assert_eq!(ok(store.head(&key).await, "head").size, 0);
    let listed = ok(store.list_all(&p).await, "list");
    assert_eq!(listed.len(), 1, "the empty object is listed");
    ok(store.delete(&key).await, "delete");
    cleanup(&store, &p).await;
}

async fn delete_absent_key_succeeds(store: Store) {
    let p = prefix();
    ok(
        store.delete(&format!("{p}never-written")).await,
        "delete absent",
    );
    let key = format!("{p}once");
    put(&store, &key, "x").await;
    ok(store.delete(&key).await, "first delete");
    ok(store.delete(&key).await, "second delete of the same key");
    cleanup(&store, &p).await;
}

async fn get_and_head_absent_key_not_found(store: Store) {
    let p = prefix();
    let key = format!("{p}absent");
    assert_kind(
        store.get(&key, GetOptions::default()).await,
        ErrorKind::NotFound,
        "get absent",
    );
    assert_kind(store.head(&key).await, ErrorKind::NotFound, "head absent");
    // A "directory" that only exists as a prefix of other keys is not an object.
    put(&store, &format!("{p}dir/child"), "x").await;
    assert_kind(
        store.head(&format!("{p}dir")).await,
        ErrorKind::NotFound,
        "head of a bare prefix",
    );
    cleanup(&store, &p).await;
}

async fn etag_present_stable_and_changes_on_overwrite(store: Store) {
    let p = prefix();
    let key = format!("{p}etag");
    let first = put(&store, &key, "version one").await;
    assert!(!first.is_empty(), "etag is not empty");
    let h1 = ok(store.head(&key).await, "head 1").etag;
    let h2 = ok(store.head(&key).await, "head 2").etag;
    assert_eq!(h1, first, "head reports the put's etag");
    assert_eq!(h1, h2, "etag is stable while the object is unchanged");
    let second = put(&store, &key, "version two, longer").await;
    assert_ne!(first, second, "etag changes when the content changes");
    assert_eq!(ok(store.head(&key).await, "head 3").etag, second);
    let listed = ok(store.list_all(&p).await, "list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].etag, second, "listing reports the current etag");
    assert_eq!(listed[0].size, "version two, longer".len() as u64);
    cleanup(&store, &p).await;
}

async fn content_type_and_metadata_round_trip(store: Store) {
    let p = prefix();
    let key = format!("{p}meta.json");
    let options = PutOptions::default()
        .with_content_type("application/json")
        .with_metadata("vehicle_id", "VIN123")
        .with_metadata("schema", "v2");
    let result = store.put(&key, bytes("{}"), options).await;
    if caps(&store).metadata {
        ok(result, "put with metadata");
        let head = ok(store.head(&key).await, "head");
        assert_eq!(head.content_type.as_deref(), Some("application/json"));
        assert_eq!(
            head.metadata.get("vehicle_id").map(String::as_str),
            Some("VIN123")
        );
        assert_eq!(head.metadata.get("schema").map(String::as_str), Some("v2"));
        assert_eq!(
            head.metadata.len(),
            2,
            "no extra user metadata: {:?}",
            head.metadata
        );
        let got = ok(store.get(&key, GetOptions::default()).await, "get");
        assert_eq!(
            got.meta.content_type, head.content_type,
            "get returns the content type"
        );
        assert_eq!(got.meta.metadata, head.metadata, "get returns the metadata");
        // An overwrite replaces the metadata rather than merging it.
        ok(
            store
                .put(
                    &key,
                    bytes("{}"),
                    PutOptions::default().with_metadata("schema", "v3"),
                )
                .await,
            "overwrite",
        );
        let head = ok(store.head(&key).await, "head after overwrite");
        assert_eq!(
            head.metadata.len(),
            1,
            "overwrite replaced metadata: {:?}",
            head.metadata
        );
        assert_eq!(head.metadata.get("schema").map(String::as_str), Some("v3"));
    } else {
        // Without the capability the store may refuse metadata or drop it, never keep half.
        match result {
            Ok(_) => {
                let head = ok(store.head(&key).await, "head");
                assert!(
                    head.metadata.is_empty(),
                    "metadata not claimed but returned"
                );
            }
            Err(e) => assert_eq!(e.kind(), ErrorKind::Unsupported, "put with metadata: {e}"),
        }
    }
    cleanup(&store, &p).await;
}

async fn put_create_only(store: Store) {
    let p = prefix();
    let key = format!("{p}create");
    let first = store.put(&key, bytes("first"), PutOptions::create()).await;
    if !caps(&store).conditional_put {
        assert_kind(
            first,
            ErrorKind::Unsupported,
            "create-only put without conditional_put",
        );
        cleanup(&store, &p).await;
        return;
    }
    let first = ok(first, "create on an absent key");
    assert_kind(
        store.put(&key, bytes("second"), PutOptions::create()).await,
        ErrorKind::AlreadyExists,
        "create on a present key",
    );
    let got = ok(store.get(&key, GetOptions::default()).await, "get");
    assert_eq!(
        got.data,
        bytes("first"),
        "the failed create changed nothing"
    );
    assert_eq!(got.meta.etag, first.etag);
    // After a delete the key is absent again.
    ok(store.delete(&key).await, "delete");
    ok(
        store.put(&key, bytes("third"), PutOptions::create()).await,
        "create after delete",
    );
    cleanup(&store, &p).await;
}

async fn put_update_if_match(store: Store) {
    let p = prefix();
    let key = format!("{p}cas");
    let absent = store
        .put(&key, bytes("x"), PutOptions::if_match("\"no-such-etag\""))
        .await;
    if !caps(&store).conditional_put {
        assert_kind(
            absent,
            ErrorKind::Unsupported,
            "if-match put without conditional_put",
        );
        cleanup(&store, &p).await;
        return;
    }
    assert_kind(
        absent,
        ErrorKind::PreconditionFailed,
        "if-match on an absent key",
    );
    let v1 = put(&store, &key, "v1").await;
    let v2 = ok(
        store
            .put(&key, bytes("v2"), PutOptions::if_match(v1.clone()))
            .await,
        "if-match with the right etag",
    )
    .etag;
    assert_ne!(v1, v2, "etag changed");
    assert_kind(
        store
            .put(&key, bytes("v3"), PutOptions::if_match(v1.clone()))
            .await,
        ErrorKind::PreconditionFailed,
        "if-match with a stale etag",
    );
    assert_kind(
        store
            .put(&key, bytes("v3"), PutOptions::if_match("\"garbage\""))
            .await,
        ErrorKind::PreconditionFailed,
        "if-match with a wrong etag",
    );
    let got = ok(store.get(&key, GetOptions::default()).await, "get");
    assert_eq!(got.data, bytes("v2"), "failed updates changed nothing");
    assert_eq!(got.meta.etag, v2);
    cleanup(&store, &p).await;
}

const RACERS: usize = 8;

async fn create_only_race_has_one_winner(store: Store) {
    let p = prefix();
    let key = format!("{p}race");
    if !caps(&store).conditional_put {
        assert_kind(
            store.put(&key, bytes("x"), PutOptions::create()).await,
            ErrorKind::Unsupported,
            "create-only put without conditional_put",
        );
        return;
    }
    let mut handles = Vec::new();
    for i in 0..RACERS {
        let store = Arc::clone(&store);
        let key = key.clone();
        handles.push(tokio::spawn(async move {
            let data = Bytes::from(format!("racer {i}"));
            (i, store.put(&key, data, PutOptions::create()).await)
        }));
    }
    let mut winners = Vec::new();
    for handle in handles {
        let (i, result) = handle.await.unwrap_or_else(|e| panic!("racer task: {e}"));
        match result {
            Ok(r) => winners.push((i, r.etag)),
            Err(e) => assert_eq!(e.kind(), ErrorKind::AlreadyExists, "losing racer {i}: {e}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one create wins: {winners:?}");
    let (winner, etag) = &winners[0];
    let got = ok(store.get(&key, GetOptions::default()).await, "get");
    assert_eq!(
        got.data,
        Bytes::from(format!("racer {winner}")),
        "the winner's bytes"
    );
    assert_eq!(&got.meta.etag, etag);
    cleanup(&store, &p).await;
}

async fn update_if_match_race_has_one_winner(store: Store) {
    let p = prefix();
    let key = format!("{p}race");
    let base = put(&store, &key, "base").await;
    if !caps(&store).conditional_put {
        assert_kind(
            store
                .put(&key, bytes("x"), PutOptions::if_match(base))
                .await,
            ErrorKind::Unsupported,
            "if-match put without conditional_put",
        );
        cleanup(&store, &p).await;
        return;
    }
    let mut handles = Vec::new();
    for i in 0..RACERS {
        let store = Arc::clone(&store);
        let key = key.clone();
        let base = base.clone();
        handles.push(tokio::spawn(async move {
            let data = Bytes::from(format!("racer {i}"));
            (i, store.put(&key, data, PutOptions::if_match(base)).await)
        }));
    }
    let mut winners = Vec::new();
    for handle in handles {
        let (i, result) = handle.await.unwrap_or_else(|e| panic!("racer task: {e}"));
        match result {
            Ok(r) => winners.push((i, r.etag)),
            Err(e) => assert_eq!(
                e.kind(),
                ErrorKind::PreconditionFailed,
                "losing racer {i}: {e}"
            ),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one update wins: {winners:?}");
    let (winner, etag) = &winners[0];
    let got = ok(store.get(&key, GetOptions::default()).await, "get");
    assert_eq!(
        got.data,
        Bytes::from(format!("racer {winner}")),
        "the winner's bytes"
    );
    assert_eq!(&got.meta.etag, etag);
    cleanup(&store, &p).await;
}

async fn conditional_get(store: Store) {
    let p = prefix();
    let key = format!("{p}cond");
    let etag = put(&store, &key, "content").await;
    let if_match = |etag: &str| GetOptions {
        if_match: Some(etag.to_string()),
        ..GetOptions::default()
    };
    let if_none_match = |etag: &str| GetOptions {
        if_none_match: Some(etag.to_string()),
        ..GetOptions::default()
    };
    if !caps(&store).conditional_get {
        assert_kind(
            store.get(&key, if_match(&etag)).await,
            ErrorKind::Unsupported,
            "if_match get without conditional_get",
        );
        assert_kind(
            store.get(&key, if_none_match("\"other\"")).await,
            ErrorKind::Unsupported,
            "if_none_match get without conditional_get",
        );
        cleanup(&store, &p).await;
        return;
    }
    let got = ok(
        store.get(&key, if_match(&etag)).await,
        "if_match right etag",
    );
    assert_eq!(got.data, bytes("content"));
    assert_kind(
        store.get(&key, if_match("\"wrong\"")).await,
        ErrorKind::PreconditionFailed,
        "if_match wrong etag",
    );
    assert_kind(
        store.get(&key, if_none_match(&etag)).await,
        ErrorKind::PreconditionFailed,
        "if_none_match current etag",
    );
    let got = ok(
        store.get(&key, if_none_match("\"other\"")).await,
        "if_none_match other etag",
    );
    assert_eq!(got.data, bytes("content"));
    assert_kind(
        store.get(&format!("{p}absent"), if_match(&etag)).await,
        ErrorKind::NotFound,
        "if_match on an absent key",
    );
    cleanup(&store, &p).await;
}

async fn range_reads(store: Store) {
    let p = prefix();
    let key = format!("{p}range");
    let data = payload(100, 3);
    ok(
        store.put(&key, data.clone(), PutOptions::default()).await,
        "put",
    );
    let get = |range: GetRange| {
        let store = Arc::clone(&store);
        let key = key.clone();
        async move {
            store
                .get(
                    &key,
                    GetOptions {
                        range: Some(range),
                        ..GetOptions::default()
                    },
                )
                .await
        }
    };
    if !caps(&store).ranges {
        assert_kind(
            get(GetRange::Bounded(0..10)).await,
            ErrorKind::Unsupported,
            "range get without ranges",
        );
        cleanup(&store, &p).await;
        return;
    }
    let r = ok(get(GetRange::Bounded(10..20)).await, "bounded");
    assert_eq!(r.data, data.slice(10..20));
    assert_eq!(r.range, 10..20);
    assert_eq!(r.meta.size, 100, "meta.size is the whole object's size");
    let r = ok(
        get(GetRange::Bounded(90..1000)).await,
        "bounded past the end",
    );
    assert_eq!(r.data, data.slice(90..100), "bounded end is clamped");
    assert_eq!(r.range, 90..100);
    let r = ok(get(GetRange::Offset(95)).await, "offset");
    assert_eq!(r.data, data.slice(95..100));
    assert_eq!(r.range, 95..100);
    let r = ok(get(GetRange::Suffix(7)).await, "suffix");
    assert_eq!(r.data, data.slice(93..100));
    assert_eq!(r.range, 93..100);
    let r = ok(
        get(GetRange::Suffix(1000)).await,
        "suffix longer than the object",
    );
    assert_eq!(r.data, data, "an oversized suffix is the whole object");
    let r = ok(
        store.get(&key, GetOptions::range(0..1)).await,
        "GetOptions::range",
    );
    assert_eq!(r.data, data.slice(0..1));
    assert_kind(
        get(GetRange::Bounded(100..110)).await,
        ErrorKind::InvalidArgument,
        "bounded range starting at the end",
    );
    assert_kind(
        get(GetRange::Offset(150)).await,
        ErrorKind::InvalidArgument,
        "offset past the end",
    );
    assert_kind(
        get(GetRange::Bounded(std::ops::Range { start: 20, end: 10 })).await,
        ErrorKind::InvalidArgument,
        "reversed range",
    );
    cleanup(&store, &p).await;
}

async fn list_with_prefix(store: Store) {
    let p = prefix();
    for k in ["ab", "abc", "ab/x", "ab/y/z", "b", "b/ab"] {
        put(&store, &format!("{p}{k}"), k).await;
    }
    let keys = |list: Vec<crate::storage::ObjectMeta>| -> Vec<String> {
        list.into_iter().map(|o| o.key).collect()
    };
    let all = keys(ok(store.list_all(&p).await, "list all"));
    let expect: Vec<String> = sorted(&["ab", "abc", "ab/x", "ab/y/z", "b", "b/ab"])
        .into_iter()
        .map(|k| format!("{p}{k}"))
        .collect();
    assert_eq!(all, expect, "everything under the prefix, sorted");
    // A prefix need not end at a `/`.
    let partial = keys(ok(store.list_all(&format!("{p}ab")).await, "list partial"));
    let expect: Vec<String> = sorted(&["ab", "abc", "ab/x", "ab/y/z"])
        .into_iter()
        .map(|k| format!("{p}{k}"))
        .collect();
    assert_eq!(partial, expect, "partial-segment prefix");
    let dir = keys(ok(store.list_all(&format!("{p}ab/")).await, "list dir"));
    assert_eq!(dir, vec![format!("{p}ab/x"), format!("{p}ab/y/z")]);
    let none = ok(store.list_all(&format!("{p}zzz")).await, "list nothing");
    assert!(none.is_empty(), "no keys under an unused prefix");
    assert_kind(
        store.list_page(ListOptions::prefix("/")).await,
        ErrorKind::InvalidArgument,
        "invalid prefix",
    );
    cleanup(&store, &p).await;
}

async fn list_with_delimiter(store: Store) {
    let p = prefix();
    for k in ["a", "b/c", "b/d", "e/f/g", "h"] {
        put(&store, &format!("{p}{k}"), k).await;
    }
    let page = ok(
        store
            .list_page(ListOptions {
                prefix: p.clone(),
                delimiter: true,
                ..ListOptions::default()
            })
            .await,
        "list with delimiter",
    );
    let objects: Vec<&str> = page.objects.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(objects, vec![format!("{p}a"), format!("{p}h")]);
    assert_eq!(
        page.common_prefixes,
        vec![format!("{p}b/"), format!("{p}e/")]
    );
    assert!(page.next_page_token.is_none(), "one page");
    let page = ok(
        store
            .list_page(ListOptions {
                prefix: format!("{p}e/"),
                delimiter: true,
                ..ListOptions::default()
            })
            .await,
        "list a sub-directory",
    );
    assert!(page.objects.is_empty());
    assert_eq!(page.common_prefixes, vec![format!("{p}e/f/")]);
    cleanup(&store, &p).await;
}

async fn list_start_after(store: Store) {
    let p = prefix();
    for k in ["k1", "k2", "k3", "k4"] {
        put(&store, &format!("{p}{k}"), k).await;
    }
    let (keys, _) = all_pages(
        &store,
        ListOptions {
            prefix: p.clone(),
            start_after: Some(format!("{p}k2")),
            ..ListOptions::default()
        },
    )
    .await;
    assert_eq!(
        keys,
        vec![format!("{p}k3"), format!("{p}k4")],
        "strictly after"
    );
    let (keys, _) = all_pages(
        &store,
        ListOptions {
            prefix: p.clone(),
            start_after: Some(format!("{p}k25")),
            ..ListOptions::default()
        },
    )
    .await;
    assert_eq!(
        keys,
        vec![format!("{p}k3"), format!("{p}k4")],
        "start_after need not exist"
    );
    cleanup(&store, &p).await;
}

/// With a delimiter, `start_after` selects keys and the selected keys are then grouped: a
/// common prefix is listed if any key under it is after `start_after`, even when the prefix
/// itself sorts before it (`b/` for `start_after = "b/1"` and a key `b/2`).
async fn list_start_after_with_delimiter(store: Store) {
    let p = prefix();
    for k in ["a/1", "b/1", "b/2", "c/1", "d"] {
        put(&store, &format!("{p}{k}"), k).await;
    }
    let listing = |start_after: &str, max: Option<usize>| ListOptions {
        prefix: p.clone(),
        delimiter: true,
        start_after: Some(format!("{p}{start_after}")),
        max_results: max,
        ..ListOptions::default()
    };
    for max in [None, Some(1)] {
        let (keys, prefixes) = all_pages(&store, listing("b/1", max)).await;
        assert_eq!(
            prefixes,
            vec![format!("{p}b/"), format!("{p}c/")],
            "b/ holds b/2, which is after b/1 (page size {max:?})"
        );
        assert_eq!(keys, vec![format!("{p}d")], "page size {max:?}");
        let (keys, prefixes) = all_pages(&store, listing("b/2", max)).await;
        assert_eq!(
            prefixes,
            vec![format!("{p}c/")],
            "nothing under b/ is after b/2 (page size {max:?})"
        );
        assert_eq!(keys, vec![format!("{p}d")], "page size {max:?}");
    }
    cleanup(&store, &p).await;
}

async fn list_pagination(store: Store) {
    let p = prefix();
    let names = ["a", "b/1", "b/2", "c", "d/e/f", "g", "h", "i/j"];
    for k in names {
        put(&store, &format!("{p}{k}"), k).await;
    }
    let expect: Vec<String> = sorted(&names)
        .into_iter()
        .map(|k| format!("{p}{k}"))
        .collect();
    for max in [1, 3, 8, 100] {
        let (keys, _) = all_pages(
            &store,
            ListOptions {
                prefix: p.clone(),
                max_results: Some(max),
                ..ListOptions::default()
            },
        )
        .await;
        assert_eq!(keys, expect, "all pages with max_results {max}");
    }
    cleanup(&store, &p).await;
}

async fn list_pagination_with_delimiter(store: Store) {
    let p = prefix();
    for k in ["a", "b/1", "b/2", "c", "d/e", "f", "g/h/i"] {
        put(&store, &format!("{p}{k}"), k).await;
    }
    for max in [1, 2, 100] {
        let (keys, prefixes) = all_pages(
            &store,
            ListOptions {
                prefix: p.clone(),
                delimiter: true,
                max_results: Some(max),
                ..ListOptions::default()
            },
        )
        .await;
        let expect_keys: Vec<String> = ["a", "c", "f"].iter().map(|k| format!("{p}{k}")).collect();
        let expect_prefixes: Vec<String> = ["b/", "d/", "g/"]
            .iter()
            .map(|k| format!("{p}{k}"))
            .collect();
        assert_eq!(keys, expect_keys, "objects over pages of {max}");
        assert_eq!(
            prefixes, expect_prefixes,
            "common prefixes over pages of {max}"
        );
    }
    cleanup(&store, &p).await;
}

async fn copy_object(store: Store) {
    let p = prefix();
    let from = format!("{p}from");
    let to = format!("{p}to");
    let metadata = caps(&store).metadata;
    let options = if metadata {
        PutOptions::default()
            .with_content_type("text/plain")
            .with_metadata("origin", "kit")
    } else {
        PutOptions::default()
    };
    ok(
        store.put(&from, bytes("copied"), options).await,
        "put source",
    );
    let copied = ok(store.copy(&from, &to, CopyOptions::default()).await, "copy");
    let got = ok(store.get(&to, GetOptions::default()).await, "get copy");
    assert_eq!(got.data, bytes("copied"));
    assert_eq!(
        got.meta.etag, copied.etag,
        "copy returns the new object's etag"
    );
    if metadata {
        assert_eq!(got.meta.content_type.as_deref(), Some("text/plain"));
        assert_eq!(
            got.meta.metadata.get("origin").map(String::as_str),
            Some("kit")
        );
    }
    assert_eq!(
        ok(store.get_bytes(&from).await, "source after copy"),
        bytes("copied"),
        "the source is unchanged"
    );
    // Overwriting copy.
    put(&store, &from, "newer").await;
    ok(
        store.copy(&from, &to, CopyOptions::default()).await,
        "overwriting copy",
    );
    assert_eq!(ok(store.get_bytes(&to).await, "get"), bytes("newer"));
    // Create-only copy.
    let exclusive = CopyOptions {
        if_not_exists: true,
    };
    let onto_existing = store.copy(&from, &to, exclusive.clone()).await;
    if caps(&store).conditional_put {
        assert_kind(
            onto_existing,
            ErrorKind::AlreadyExists,
            "if_not_exists copy onto existing",
        );
        let fresh = format!("{p}fresh");
        ok(
            store.copy(&from, &fresh, exclusive.clone()).await,
            "if_not_exists copy to new",
        );
        assert_eq!(ok(store.get_bytes(&fresh).await, "get"), bytes("newer"));
    } else {
        match onto_existing {
            Err(e) => assert!(
                matches!(e.kind(), ErrorKind::AlreadyExists | ErrorKind::Unsupported),
                "if_not_exists copy without conditional_put: {e}"
            ),
            Ok(r) => panic!("if_not_exists copy onto an existing key succeeded: {r:?}"),
        }
    }
    assert_kind(
        store
            .copy(
                &format!("{p}absent"),
                &format!("{p}x"),
                CopyOptions::default(),
            )
            .await,
        ErrorKind::NotFound,
        "copy of an absent source",
    );
    assert_kind(
        store.head(&format!("{p}x")).await,
        ErrorKind::NotFound,
        "a failed copy creates nothing",
    );
    cleanup(&store, &p).await;
}

/// Part size used by the multipart cases: the store's minimum, but at least 64 KiB.
fn part_size(caps: &StorageCapabilities) -> usize {
    usize::try_from(caps.multipart_min_part_size.max(64 * 1024)).unwrap_or(64 * 1024)
}

async fn multipart_upload(store: Store) {
    let p = prefix();
    let key = format!("{p}multi.bin");
    let c = caps(&store);
    let options = if c.metadata {
        PutOptions::default()
            .with_content_type("application/octet-stream")
            .with_metadata("parts", "3")
    } else {
        PutOptions::default()
    };
    let upload = store.create_multipart(&key, options).await;
    if !c.multipart {
        assert_kind(
            upload,
            ErrorKind::Unsupported,
            "multipart without the capability",
        );
        return;
    }
    let upload = ok(upload, "create_multipart");
    let size = part_size(&c);
    let data = payload(size * 2 + size / 2, 11);
    let mut parts = Vec::new();
    for (n, chunk) in data.chunks(size).enumerate() {
        let part = ok(
            store
                .put_part(&key, &upload, n as u32, data.slice_ref(chunk))
                .await,
            "put_part",
        );
        parts.push(part);
    }
    assert_eq!(parts.len(), 3, "2.5 parts of data make 3 parts");
    assert_kind(
        store.head(&key).await,
        ErrorKind::NotFound,
        "invisible before complete",
    );
    assert!(
        ok(store.list_all(&p).await, "list before complete").is_empty(),
        "nothing listed before complete"
    );
    let done = ok(
        store.complete_multipart(&key, &upload, parts).await,
        "complete",
    );
    let got = ok(store.get(&key, GetOptions::default()).await, "get");
    assert_eq!(got.meta.size, data.len() as u64);
    assert!(got.data == data, "multipart content matches");
    assert_eq!(
        got.meta.etag, done.etag,
        "complete returns the object's etag"
    );
    if c.metadata {
        assert_eq!(
            got.meta.content_type.as_deref(),
            Some("application/octet-stream")
        );
        assert_eq!(
            got.meta.metadata.get("parts").map(String::as_str),
            Some("3")
        );
    }
    let listed = ok(store.list_all(&p).await, "list after complete");
    assert_eq!(listed.len(), 1, "exactly the completed object is listed");
    cleanup(&store, &p).await;
}

async fn multipart_abort(store: Store) {
    let p = prefix();
    let key = format!("{p}aborted");
    let c = caps(&store);
    let upload = store.create_multipart(&key, PutOptions::default()).await;
    if !c.multipart {
        assert_kind(
            upload,
            ErrorKind::Unsupported,
            "multipart without the capability",
        );
        return;
    }
    let upload = ok(upload, "create_multipart");
    let size = part_size(&c);
    ok(
        store.put_part(&key, &upload, 0, payload(size, 5)).await,
        "put_part",
    );
    ok(store.abort_multipart(&key, &upload).await, "abort");
    assert_kind(
        store.head(&key).await,
        ErrorKind::NotFound,
        "nothing after abort",
    );
    assert!(
        ok(store.list_all(&p).await, "list after abort").is_empty(),
        "nothing listed after abort"
    );
    cleanup(&store, &p).await;
}

async fn large_object_round_trip(store: Store) {
    let p = prefix();
    let key = format!("{p}large.bin");
    let c = caps(&store);
    let data = payload(8 * 1024 * 1024, 42);
    let etag = if c.multipart {
        let size =
            usize::try_from(c.multipart_min_part_size.max(1024 * 1024)).unwrap_or(1024 * 1024);
        ok(
            store
                .put_multipart_bytes(&key, data.clone(), size, PutOptions::default())
                .await,
            "put_multipart_bytes",
        )
        .etag
    } else if c.max_put_size.is_none_or(|max| max >= data.len() as u64) {
        ok(
            store.put(&key, data.clone(), PutOptions::default()).await,
            "put",
        )
        .etag
    } else {
        // Neither multipart nor a large single put: nothing this store can hold.
        return;
    };
    let got = ok(store.get(&key, GetOptions::default()).await, "get");
    assert_eq!(got.meta.etag, etag);
    assert_eq!(got.data.len(), data.len(), "size");
    assert_eq!(
        checksum(&got.data),
        checksum(&data),
        "checksum of an 8 MiB object"
    );
    assert!(got.data == data, "content of an 8 MiB object");
    cleanup(&store, &p).await;
}

async fn invalid_keys_rejected(store: Store) {
    let p = prefix();
    let long = "k".repeat(crate::validate::MAX_KEY_LEN + 1);
    let bad: Vec<String> = vec![
        String::new(),
        "/a".into(),
        "a//b".into(),
        "../x".into(),
        format!("{p}../x"),
        format!("{p}a/./b"),
        format!("{p}nul\0byte"),
        format!("{p}back\\slash"),
        long,
    ];
    let invalid = ErrorKind::InvalidArgument;
    for key in &bad {
        let shown = key.escape_debug().to_string();
        let shown = &shown[..shown.len().min(40)];
        assert_kind(
            store.put(key, bytes("x"), PutOptions::default()).await,
            invalid,
            &format!("put {shown}"),
        );
        assert_kind(
            store.get(key, GetOptions::default()).await,
            invalid,
            &format!("get {shown}"),
        );
        assert_kind(store.head(key).await, invalid, &format!("head {shown}"));
        assert_kind(store.delete(key).await, invalid, &format!("delete {shown}"));
        assert_kind(
            store
                .copy(key, &format!("{p}ok"), CopyOptions::default())
                .await,
            invalid,
            &format!("copy from {shown}"),
        );
        assert_kind(
            store
                .copy(&format!("{p}ok"), key, CopyOptions::default())
                .await,
            invalid,
            &format!("copy to {shown}"),
        );
        if caps(&store).multipart {
            assert_kind(
                store.create_multipart(key, PutOptions::default()).await,
                invalid,
                &format!("create_multipart {shown}"),
            );
        }
    }
    assert!(
        ok(store.list_all(&p).await, "list").is_empty(),
        "no invalid key left anything behind"
    );
}

/// One row of [`put_option_table`]: what is written besides the bytes, and whether the portable
/// rule accepts it.
struct PutOptionCase {
    what: &'static str,
    content_type: Option<String>,
    metadata: Vec<(String, String)>,
    valid: bool,
}

/// Unusual and bad content types and metadata, with the portable verdict (see
/// [`validate`](crate::validate)): every store must give the same one.
fn put_option_table() -> Vec<PutOptionCase> {
    let row = |what, ct: Option<&str>, md: &[(&str, &str)], valid| PutOptionCase {
        what,
        content_type: ct.map(str::to_string),
        metadata: md
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        valid,
    };
    let long_name = "n".repeat(crate::validate::MAX_METADATA_NAME_LEN);
    let too_long_name = "n".repeat(crate::validate::MAX_METADATA_NAME_LEN + 1);
    // Names and values together at the limit, and one byte over it.
    let full = "v".repeat(crate::validate::MAX_METADATA_SIZE - 1);
    let over = "v".repeat(crate::validate::MAX_METADATA_SIZE);
    let long_ct = format!(
        "a/{}",
        "b".repeat(crate::validate::MAX_CONTENT_TYPE_LEN - 2)
    );
    let too_long_ct = format!(
        "a/{}",
        "b".repeat(crate::validate::MAX_CONTENT_TYPE_LEN - 1)
    );
    let mut table = vec![
        row("plain name and value", None, &[("owner", "fleet")], true),
        row("name with `_`", None, &[("vehicle_id", "VIN1")], true),
        row("name starting with `_`", None, &[("_private", "1")], true),
        row("name with digits", None, &[("schema2", "v2")], true),
        row("empty value", None, &[("empty", "")], true),
        row(
            "value with spaces and punctuation",
            None,
            &[("note", "a b=c; d/e ~!")],
            true,
        ),
        row("name with `-`", None, &[("vehicle-id", "VIN1")], false),
        row("upper-case name", None, &[("Owner", "fleet")], false),
        row(
            "names differing in case",
            None,
            &[("owner", "a"), ("OWNER", "b")],
            false,
        ),
        row("empty name", None, &[("", "v")], false),
        row(
            "name starting with a digit",
            None,
            &[("9lives", "yes")],
            false,
        ),
        row("name with a space", None, &[("a b", "v")], false),
        row("name with `.`", None, &[("a.b", "v")], false),
        row("non-ASCII name", None, &[("größe", "v")], false),
        row("non-ASCII value", None, &[("city", "café")], false),
        row("value with a newline", None, &[("a", "x\ny")], false),
        row("value with a tab", None, &[("a", "x\ty")], false),
        row("value with a leading space", None, &[("a", " x")], false),
        row("value with a trailing space", None, &[("a", "x ")], false),
        row("simple content type", Some("application/json"), &[], true),
        row(
            "content type with a parameter",
            Some("text/plain; charset=utf-8"),
            &[],
            true,
        ),
        row(
            "content type with a quoted parameter",
            Some("multipart/mixed; boundary=\"a b\""),
            &[],
            true,
        ),
        row(
            "structured-syntax content type",
            Some("application/vnd.api+json"),
            &[],
            true,
        ),
        row("empty content type", Some(""), &[], false),
        row("content type without subtype", Some("text"), &[], false),
        row(
            "content type with an empty subtype",
            Some("text/"),
            &[],
            false,
        ),
        row("content type with a space", Some("text /plain"), &[], false),
        row(
            "content type with a bad parameter",
            Some("text/plain; charset"),
            &[],
            false,
        ),
        row(
            "content type with a newline",
            Some("text/plain\r\nx-evil: 1"),
            &[],
            false,
        ),
        row("non-ASCII content type", Some("text/plän"), &[], false),
    ];
    table.push(PutOptionCase {
        what: "longest name",
        content_type: None,
        metadata: vec![(long_name, "v".into())],
        valid: true,
    });
    table.push(PutOptionCase {
        what: "overlong name",
        content_type: None,
        metadata: vec![(too_long_name, "v".into())],
        valid: false,
    });
    table.push(PutOptionCase {
        what: "metadata of exactly the size limit",
        content_type: None,
        metadata: vec![("a".into(), full)],
        valid: true,
    });
    table.push(PutOptionCase {
        what: "overlong value",
        content_type: None,
        metadata: vec![("a".into(), over)],
        valid: false,
    });
    table.push(PutOptionCase {
        what: "longest content type",
        content_type: Some(long_ct),
        metadata: vec![],
        valid: true,
    });
    table.push(PutOptionCase {
        what: "overlong content type",
        content_type: Some(too_long_ct),
        metadata: vec![],
        valid: false,
    });
    table
}

/// The number of rows of the metadata / content type table that
/// `metadata_and_content_type_rules` runs against every store.
pub fn put_option_table_len() -> usize {
    put_option_table().len()
}

async fn metadata_and_content_type_rules(store: Store) {
    let p = prefix();
    let c = caps(&store);
    for (i, row) in put_option_table().into_iter().enumerate() {
        let key = format!("{p}row-{i}");
        let options = PutOptions {
            content_type: row.content_type.clone(),
            metadata: row.metadata.iter().cloned().collect(),
            ..PutOptions::default()
        };
        let what = format!("put with {}", row.what);
        let result = store.put(&key, bytes("x"), options.clone()).await;
        if !c.metadata {
            // Without the capability any content type or metadata is refused: as
            // unsupported, or (if the input is bad anyway) as invalid.
            match result {
                Err(e)
                    if e.kind() == ErrorKind::Unsupported
                        || (!row.valid && e.kind() == ErrorKind::InvalidArgument) => {}
                other => panic!("{what}: expected Unsupported, got {other:?}"),
            }
            continue;
        }
        if row.valid {
            ok(result, &what);
            let head = ok(store.head(&key).await, "head");
            // A put without a content type stores the portable default everywhere.
            let content_type = options
                .content_type
                .clone()
                .unwrap_or_else(|| crate::storage::DEFAULT_CONTENT_TYPE.to_string());
            assert_eq!(
                head.content_type.as_deref(),
                Some(content_type.as_str()),
                "{what}: content type"
            );
            assert_eq!(head.metadata, options.metadata, "{what}: metadata");
        } else {
            assert_kind(result, ErrorKind::InvalidArgument, &what);
            assert_kind(
                store.head(&key).await,
                ErrorKind::NotFound,
                &format!("{what}: nothing stored"),
            );
        }
        if c.multipart {
            let what = format!("create_multipart with {}", row.what);
            let upload = store.create_multipart(&key, options).await;
            match (row.valid, upload) {
                (true, Ok(upload)) => ok(store.abort_multipart(&key, &upload).await, "abort"),
                // A backend may refuse attributes on multipart uploads as a whole.
                (true, Err(e)) if e.kind() == ErrorKind::Unsupported => {}
                (true, Err(e)) => panic!("{what}: unexpected error {e}"),
                (false, result) => assert_kind(result, ErrorKind::InvalidArgument, &what),
            }
        }
    }
    cleanup(&store, &p).await;
}

/// Attributes as another tool wrote them ([`PutOptions::as_stored`]): each name the store's
/// [`metadata_names`](StorageCapabilities::metadata_names) rule admits must read back exactly
/// (in a put and through a multipart upload); each it refuses must fail with
/// `InvalidArgument` and store nothing. So a store cannot claim names it would change.
async fn metadata_as_stored_rules(store: Store) {
    let p = prefix();
    let c = caps(&store);
    let rows: [(&str, Option<&str>); 9] = [
        ("my-key", None),
        ("MyKey", None),
        ("my.key", None),
        ("1st", None),
        ("x_y", None),
        ("a b", None),
        ("a:b", None),
        ("x_y", Some("weird")),
        ("x_y", Some(" weird")),
    ];
    for (i, (name, content_type)) in rows.into_iter().enumerate() {
        let key = format!("{p}stored-{i}");
        let options = PutOptions {
            content_type: content_type.map(str::to_string),
            metadata: [(name.to_string(), "v".to_string())].into(),
            as_stored: true,
            ..PutOptions::default()
        };
        let what = format!("as-stored put with name {name:?}, content type {content_type:?}");
        let result = store.put(&key, bytes("x"), options.clone()).await;
        if !c.metadata {
            assert_kind(result, ErrorKind::Unsupported, &what);
            continue;
        }
        let admitted = validate::stored_metadata_name("kit", name, c.metadata_names).is_ok()
            && content_type.is_none_or(|ct| validate::stored_content_type("kit", ct).is_ok());
        if !admitted {
            assert_kind(result, ErrorKind::InvalidArgument, &what);
            assert_kind(
                store.head(&key).await,
                ErrorKind::NotFound,
                &format!("{what}: nothing stored"),
            );
            continue;
        }
        ok(result, &what);
        let head = ok(store.head(&key).await, "head");
        assert_eq!(
            head.metadata, options.metadata,
            "{what}: metadata read back"
        );
        if let Some(ct) = content_type {
            assert_eq!(
                head.content_type.as_deref(),
                Some(ct),
                "{what}: content type"
            );
        }
        if c.multipart {
            let key = format!("{key}-multipart");
            let upload = ok(
                store.create_multipart(&key, options.clone()).await,
                &format!("{what}: create_multipart"),
            );
            let part = ok(
                store.put_part(&key, &upload, 0, bytes("x")).await,
                "put_part",
            );
            ok(
                store.complete_multipart(&key, &upload, vec![part]).await,
                &format!("{what}: complete_multipart"),
            );
            let head = ok(store.head(&key).await, "head");
            assert_eq!(
                head.metadata, options.metadata,
                "{what}: multipart metadata"
            );
        }
    }
    // The portable rule still holds for what a caller writes.
    let key = format!("{p}portable");
    let options = PutOptions::default().with_metadata("my-key", "v");
    assert_kind(
        store.put(&key, bytes("x"), options).await,
        if c.metadata {
            ErrorKind::InvalidArgument
        } else {
            ErrorKind::Unsupported
        },
        "a non-portable name without as_stored",
    );
    cleanup(&store, &p).await;
}

async fn max_put_size_enforced(store: Store) {
    let p = prefix();
    let key = format!("{p}too-big");
    match caps(&store).max_put_size {
        // Only limits small enough to test cheaply; larger ones are the provider's own.
        Some(max) if max < 64 * 1024 * 1024 => {
            let len = usize::try_from(max + 1).unwrap_or(usize::MAX);
            assert_kind(
                store
                    .put(&key, Bytes::from(vec![0u8; len]), PutOptions::default())
                    .await,
                ErrorKind::InvalidArgument,
                "put over max_put_size",
            );
            assert_kind(
                store.head(&key).await,
                ErrorKind::NotFound,
                "nothing stored",
            );
        }
        _ => {
            // No (small) limit: a 1 MiB put must work.
            ok(
                store
                    .put(&key, payload(1024 * 1024, 9), PutOptions::default())
                    .await,
                "1 MiB put",
            );
            assert_eq!(ok(store.head(&key).await, "head").size, 1024 * 1024);
        }
    }
    cleanup(&store, &p).await;
}

async fn presign_unless_claimed_is_unsupported(store: Store) {
    let p = prefix();
    let key = format!("{p}presigned");
    let result = store
        .presign(PresignMethod::Get, &key, Duration::from_secs(60))
        .await;
    if caps(&store).presign {
        let url = ok(result, "presign");
        assert!(!url.is_empty(), "a presigned URL is not empty");
    } else {
        assert_kind(
            result,
            ErrorKind::Unsupported,
            "presign without the capability",
        );
        assert_kind(
            store
                .presign(PresignMethod::Put, &key, Duration::from_secs(60))
                .await,
            ErrorKind::Unsupported,
            "presign put without the capability",
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Model test

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// The keys the model test writes (relative to its run's unique prefix).
const MODEL_KEYS: [&str; 6] = ["a/1", "a/2", "a/sub/3", "b/1", "b/2", "b/3"];
/// The prefixes it lists (relative to the same).
const MODEL_PREFIXES: [&str; 4] = ["", "a/", "b/", "a/s"];

#[derive(Debug, Clone)]
enum Mode {
    Overwrite,
    Create,
    IfMatchCurrent,
    IfMatchWrong,
}

#[derive(Debug, Clone)]
enum Op {
    Put {
        key: usize,
        data: Vec<u8>,
        mode: Mode,
    },
    Get {
        key: usize,
    },
    Head {
        key: usize,
    },
    Delete {
        key: usize,
    },
    List {
        prefix: usize,
    },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let key = 0..MODEL_KEYS.len();
    let mode = prop_oneof![
        Just(Mode::Overwrite),
        Just(Mode::Create),
        Just(Mode::IfMatchCurrent),
        Just(Mode::IfMatchWrong),
    ];
    prop_oneof![
        4 => (key.clone(), proptest::collection::vec(any::<u8>(), 0..12), mode)
            .prop_map(|(key, data, mode)| Op::Put { key, data, mode }),
        2 => key.clone().prop_map(|key| Op::Get { key }),
        1 => key.clone().prop_map(|key| Op::Head { key }),
        2 => key.prop_map(|key| Op::Delete { key }),
        1 => (0..MODEL_PREFIXES.len()).prop_map(|prefix| Op::List { prefix }),
    ]
}

/// The reference model: key -> (bytes, the etag the store returned for the write).
type Model = BTreeMap<String, (Bytes, String)>;

fn check(cond: bool, message: impl FnOnce() -> String) -> Result<(), TestCaseError> {
    if cond {
        Ok(())
    } else {
        Err(TestCaseError::fail(message()))
    }
}

fn expect_kind<T: std::fmt::Debug>(
    result: Result<T>,
    kind: ErrorKind,
    what: &str,
) -> Result<(), TestCaseError> {
    match result {
        Err(e) if e.kind() == kind => Ok(()),
        other => Err(TestCaseError::fail(format!(
            "{what}: expected {kind}, got {other:?}"
        ))),
    }
}

fn expect_ok<T>(result: Result<T>, what: &str) -> Result<T, TestCaseError> {
    result.map_err(|e| TestCaseError::fail(format!("{what}: unexpected error {e}")))
}

async fn apply(
    store: &Store,
    caps: &StorageCapabilities,
    base: &str,
    model: &mut Model,
    op: &Op,
) -> Result<(), TestCaseError> {
    match op {
        Op::Put { key, data, mode } => {
            let key = format!("{base}{}", MODEL_KEYS[*key]);
            let current = model.get(&key).cloned();
            let data = Bytes::copy_from_slice(data);
            let (options, should_succeed, fail_kind) = match mode {
                Mode::Overwrite => (PutOptions::default(), true, ErrorKind::Internal),
                Mode::Create => (
                    PutOptions::create(),
                    current.is_none(),
                    ErrorKind::AlreadyExists,
                ),
                Mode::IfMatchCurrent => match &current {
                    Some((_, etag)) => (
                        PutOptions::if_match(etag.clone()),
                        true,
                        ErrorKind::Internal,
                    ),
                    None => (
                        PutOptions::if_match("\"model-absent\""),
                        false,
                        ErrorKind::PreconditionFailed,
                    ),
                },
                Mode::IfMatchWrong => (
                    PutOptions::if_match("\"model-wrong\""),
                    false,
                    ErrorKind::PreconditionFailed,
                ),
            };
            let conditional = options.mode != PutMode::Overwrite;
            let result = store.put(&key, data.clone(), options).await;
            if conditional && !caps.conditional_put {
                return expect_kind(result, ErrorKind::Unsupported, "conditional put unclaimed");
            }
            if should_succeed {
                let etag = expect_ok(result, &format!("put {key} ({mode:?})"))?.etag;
                if let Some((old, old_etag)) = &current {
                    if *old != data {
                        check(etag != *old_etag, || {
                            format!("put {key}: etag unchanged although the content changed")
                        })?;
                    }
                }
                model.insert(key, (data, etag));
                Ok(())
            } else {
                expect_kind(result, fail_kind, &format!("put {key} ({mode:?})"))
            }
        }
        Op::Get { key } => {
            let key = format!("{base}{}", MODEL_KEYS[*key]);
            let result = store.get(&key, GetOptions::default()).await;
            match model.get(&key) {
                None => expect_kind(result, ErrorKind::NotFound, &format!("get {key}")),
                Some((data, etag)) => {
                    let got = expect_ok(result, &format!("get {key}"))?;
                    check(got.data == *data, || {
                        format!("get {key}: {:?}, model has {:?}", got.data, data)
                    })?;
                    check(got.meta.etag == *etag, || {
                        format!(
                            "get {key}: etag {} but the write returned {etag}",
                            got.meta.etag
                        )
                    })
                }
            }
        }
        Op::Head { key } => {
            let key = format!("{base}{}", MODEL_KEYS[*key]);
            let result = store.head(&key).await;
            match model.get(&key) {
                None => expect_kind(result, ErrorKind::NotFound, &format!("head {key}")),
                Some((data, etag)) => {
                    let meta = expect_ok(result, &format!("head {key}"))?;
                    check(meta.size == data.len() as u64 && meta.etag == *etag, || {
                        format!(
                            "head {key}: {meta:?}, model has {} bytes, etag {etag}",
                            data.len()
                        )
                    })
                }
            }
        }
        Op::Delete { key } => {
            let key = format!("{base}{}", MODEL_KEYS[*key]);
            expect_ok(store.delete(&key).await, &format!("delete {key}"))?;
            model.remove(&key);
            Ok(())
        }
        Op::List { prefix } => {
            let prefix = format!("{base}{}", MODEL_PREFIXES[*prefix]);
            let listed = expect_ok(store.list_all(&prefix).await, &format!("list {prefix}"))?;
            let got: Vec<(String, u64, String)> = listed
                .into_iter()
                .map(|o| (o.key, o.size, o.etag))
                .collect();
            let want: Vec<(String, u64, String)> = model
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
                .map(|(k, (d, e))| (k.clone(), d.len() as u64, e.clone()))
                .collect();
            check(got == want, || {
                format!("list {prefix}: {got:?}, model has {want:?}")
            })
        }
    }
}

/// Proptest model test: random sequences of puts (overwrite, create-only, if-match with the
/// current or a wrong ETag), gets, heads, deletes and listings over six keys under two
/// prefixes, each compared with a `BTreeMap` model.
///
/// `make` is called once; every generated sequence runs under its own unique prefix of that
/// store and deletes what it wrote. Synchronous: it builds its own tokio runtime, so call it
/// from a plain `#[test]`. Panics with the minimal failing sequence on a mismatch.
/// `PROPTEST_CASES` overrides the number of sequences (default 48).
pub fn run_model_test(make: impl Fn() -> Arc<dyn BlobStore>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("cannot build a tokio runtime: {e}"),
    };
    let store = {
        let _guard = runtime.enter();
        make()
    };
    let caps = store.capabilities();
    let mut runner = TestRunner::new(Config {
        cases: proptest_cases(48),
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = proptest::collection::vec(op_strategy(), 1..40);
    let result = runner.run(&strategy, |ops| {
        runtime.block_on(async {
            let base = format!("{}/", unique_name("model-"));
            let mut model = Model::new();
            let mut outcome = Ok(());
            for op in &ops {
                outcome = apply(&store, &caps, &base, &mut model, op).await;
                if outcome.is_err() {
                    break;
                }
            }
            if outcome.is_ok() {
                // The final listing must equal the model, too.
                outcome = apply(&store, &caps, &base, &mut model, &Op::List { prefix: 0 }).await;
            }
            cleanup(&store, &base).await;
            outcome
        })
    });
    if let Err(e) = result {
        panic!(
            "storage model test failed on `{}`: {e}",
            store.info().backend
        );
    }
}
