//! Conformance suite for [`DocumentStore`].
//!
//! ```ignore
//! #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
//! async fn conformance() {
//!     let store: Arc<dyn DocumentStore> = Arc::new(MyStore::new());
//!     cloud_abstraction::testkit::database::run_suite(store).await;
//! }
//!
//! #[test]
//! fn model() {
//!     cloud_abstraction::testkit::database::run_model_test(|| async {
//!         Arc::new(MyStore::new()) as Arc<dyn DocumentStore>
//!     });
//! }
//! ```
//!
//! Every case works in collections of its own ([`unique_name`]) and deletes the documents it
//! wrote, so the suite can run against a shared, long-lived server. Expected query results are
//! computed with the reference semantics of [`matches_filters`] and [`sort_documents`], and a
//! few are also spelled out, so that the reference itself is checked too.

use super::{Case, Report, assert_kind, proptest_cases, run_cases, unique_name};
use crate::ErrorKind;
use crate::database::{
    DatabaseCapabilities, Direction, Document, DocumentStore, Filter, FilterOp, PutDocumentOptions,
    Query, Revision, WriteCondition, WriteOp, WriteOutcome, matches_filters, sort_documents,
};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

type Store = Arc<dyn DocumentStore>;

/// Every case of the database suite.
pub fn cases() -> Vec<Case<dyn DocumentStore>> {
    vec![
        crate::conformance_case!(put_get_round_trip),
        crate::conformance_case!(get_absent),
        crate::conformance_case!(value_types_round_trip),
        crate::conformance_case!(numbers_round_trip),
        crate::conformance_case!(collections_are_isolated),
        crate::conformance_case!(put_create_conflict),
        crate::conformance_case!(put_revision_conditions),
        crate::conformance_case!(delete_conditions),
        crate::conformance_case!(update_race_one_winner),
        crate::conformance_case!(create_race_one_winner),
        crate::conformance_case!(get_many_order_and_missing),
        crate::conformance_case!(batch_all_or_nothing),
        crate::conformance_case!(batch_across_collections),
        crate::conformance_case!(batch_sequential_same_document),
        crate::conformance_case!(query_operators_numbers),
        crate::conformance_case!(query_operators_strings),
        crate::conformance_case!(query_nested_fields),
        crate::conformance_case!(query_cross_type),
        crate::conformance_case!(query_unusual_field_names),
        crate::conformance_case!(query_order),
        crate::conformance_case!(query_paging),
        crate::conformance_case!(query_paging_under_concurrent_writes),
        crate::conformance_case!(query_invalid_input),
        crate::conformance_case!(ttl_expiry),
        crate::conformance_case!(invalid_collection_names),
        crate::conformance_case!(invalid_ids),
        crate::conformance_case!(oversized_document),
        crate::conformance_case!(nesting_depth_limit),
        crate::conformance_case!(unclaimed_capabilities),
    ]
}

/// Runs every case against `target`, panics listing the failures, and returns the report.
pub async fn run_suite(target: Arc<dyn DocumentStore>) -> Report {
    let backend = target.info().backend;
    let report = run_cases("database", &backend, target, &cases()).await;
    report.assert_passed();
    report
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn collection() -> String {
    unique_name("kit")
}

async fn put(store: &Store, c: &str, id: &str, value: Value) -> Revision {
    match store.put(c, id, value, PutDocumentOptions::default()).await {
        Ok(r) => r,
        Err(e) => panic!("put `{id}` in `{c}` failed: {e}"),
    }
}

async fn get(store: &Store, c: &str, id: &str) -> Option<Document> {
    match store.get(c, id).await {
        Ok(d) => d,
        Err(e) => panic!("get `{id}` in `{c}` failed: {e}"),
    }
}

/// Deletes the given ids (best effort is not enough: cleanup failures are failures too).
async fn cleanup(store: &Store, c: &str, ids: impl IntoIterator<Item = impl AsRef<str>>) {
    for id in ids {
        let id = id.as_ref();
        if let Err(e) = store.delete(c, id, WriteCondition::Any).await {
            panic!("cleanup: delete `{id}` in `{c}` failed: {e}");
        }
    }
}

fn put_op(c: &str, id: &str, value: Value, options: PutDocumentOptions) -> WriteOp {
    WriteOp::Put {
        collection: c.into(),
        id: id.into(),
        value,
        options,
    }
}

fn delete_op(c: &str, id: &str, condition: WriteCondition) -> WriteOp {
    WriteOp::Delete {
        collection: c.into(),
        id: id.into(),
        condition,
    }
}

/// The capability a query needs that `caps` lacks, if any.
fn missing_capability(caps: &DatabaseCapabilities, query: &Query) -> Option<&'static str> {
    if !caps.query {
        return Some("query");
    }
    for f in &query.filters {
        match f.op {
            FilterOp::Lt(_) | FilterOp::Le(_) | FilterOp::Gt(_) | FilterOp::Ge(_)
                if !caps.query_range =>
            {
                return Some("query_range");
            }
            FilterOp::In(_) | FilterOp::Prefix(_) if !caps.query_in_prefix => {
                return Some("query_in_prefix");
            }
            _ => {}
        }
    }
    if !query.order_by.is_empty() && !caps.query_order {
        return Some("query_order");
    }
    None
}

/// Runs a query to its end (bounded), checking page sizes; returns the documents.
async fn query_all(store: &Store, c: &str, mut query: Query) -> Vec<Document> {
    let mut out = Vec::new();
    for _ in 0..1000 {
        let page = match store.query(c, query.clone()).await {
            Ok(p) => p,
            Err(e) => panic!("query {query:?} on `{c}` failed: {e}"),
        };
        if let Some(limit) = query.limit {
            assert!(
                page.documents.len() <= limit,
                "a page of {} documents exceeds the limit {limit}",
                page.documents.len()
            );
        }
        out.extend(page.documents);
        match page.next_cursor {
            Some(cursor) => query.cursor = Some(cursor),
            None => return out,
        }
    }
    panic!("query {query:?} did not end after 1000 pages");
}

/// The ids the reference semantics give for `query` over `docs`.
fn reference_ids(docs: &[(&str, Value)], query: &Query) -> Vec<String> {
    let mut matching: Vec<Document> = docs
        .iter()
        .filter(|(_, v)| matches_filters(v, &query.filters))
        .map(|(id, v)| Document {
            id: id.to_string(),
            value: v.clone(),
            revision: Revision(1),
            expires_at: None,
        })
        .collect();
    sort_documents(&mut matching, &query.order_by);
    matching.into_iter().map(|d| d.id).collect()
}

/// The ids of `docs` (a named function, not a closure: futures holding closures over
/// references trip the compiler's higher-ranked `Send` check).
fn doc_ids(docs: &[(&str, Value)]) -> Vec<String> {
    docs.iter().map(|(id, _)| id.to_string()).collect()
}

fn ids(docs: &[Document]) -> Vec<String> {
    docs.iter().map(|d| d.id.clone()).collect()
}

async fn insert_all(store: &Store, c: &str, docs: &[(&str, Value)]) {
    for (id, value) in docs {
        put(store, c, id, value.clone()).await;
    }
}

/// Checks `query` against the reference (or Unsupported when a needed capability is missing);
/// with `explicit`, also against that spelled-out answer. Returns whether it ran.
async fn check_query(
    store: &Store,
    c: &str,
    docs: &[(&str, Value)],
    query: Query,
    explicit: Option<&[&str]>,
) -> bool {
    let caps = store.capabilities();
    if let Some(cap) = missing_capability(&caps, &query) {
        assert_kind(
            store.query(c, query.clone()).await,
            ErrorKind::Unsupported,
            &format!("query {query:?} without the `{cap}` capability"),
        );
        return false;
    }
    let expected = reference_ids(docs, &query);
    if let Some(explicit) = explicit {
        assert_eq!(
            expected, explicit,
            "the reference semantics disagree with the kit for {query:?}"
        );
    }
    let got = query_all(store, c, query.clone()).await;
    assert_eq!(ids(&got), expected, "query {query:?}");
    for d in &got {
        let want = docs.iter().find(|(id, _)| *id == d.id).map(|(_, v)| v);
        assert_eq!(
            Some(&d.value),
            want,
            "query returned a wrong value for `{}`",
            d.id
        );
    }
    true
}

async fn check_filter(
    store: &Store,
    c: &str,
    docs: &[(&str, Value)],
    filter: Filter,
    explicit: &[&str],
) {
    check_query(store, c, docs, Query::all().filter(filter), Some(explicit)).await;
}

async fn spawn_all<T: Send + 'static>(
    futures: Vec<impl Future<Output = T> + Send + 'static>,
) -> Vec<T> {
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        match h.await {
            Ok(v) => out.push(v),
            Err(e) => panic!("a concurrent task failed: {e}"),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Basic reads and writes

async fn put_get_round_trip(store: Store) {
    let c = collection();
    let r1 = put(&store, &c, "doc", json!({"name": "first", "n": 1})).await;
    assert_eq!(r1, Revision(1), "a new document starts at revision 1");
    let d = get(&store, &c, "doc").await.expect("document just written");
    assert_eq!(d.id, "doc");
    assert_eq!(d.value, json!({"name": "first", "n": 1}));
    assert_eq!(d.revision, Revision(1));
    assert_eq!(d.expires_at, None);

    let r2 = put(&store, &c, "doc", json!({"name": "second"})).await;
    assert_eq!(r2, Revision(2), "the second write is revision 2");
    let d = get(&store, &c, "doc").await.expect("document just written");
    assert_eq!(
        d.value,
        json!({"name": "second"}),
        "a put replaces the whole document"
    );
    assert_eq!(d.revision, Revision(2));
    cleanup(&store, &c, ["doc"]).await;
    assert!(get(&store, &c, "doc").await.is_none(), "deleted");
}

async fn get_absent(store: Store) {
    let c = collection();
    assert!(
        get(&store, &c, "nothing-here").await.is_none(),
        "unknown collection"
    );
    put(&store, &c, "present", json!({})).await;
    assert!(get(&store, &c, "absent").await.is_none(), "unknown id");
    assert!(get(&store, &c, "present").await.is_some());
    cleanup(&store, &c, ["present"]).await;
}

async fn value_types_round_trip(store: Store) {
    let c = collection();
    let values = [
        json!({"s": "ünïcödé ✓ \"quoted\" \\ back", "i": -42, "big": 9_007_199_254_740_993i64,
               "f": 1.5, "t": true, "z": null, "arr": [1, "two", {"three": 3}],
               "nested": {"deep": {"deeper": [[]]}}}),
        json!([1, 2, 3]),
        json!("just a string"),
        json!(12.25),
        json!(null),
        json!({}),
    ];
    for (i, value) in values.iter().enumerate() {
        let id = format!("v{i}");
        put(&store, &c, &id, value.clone()).await;
        let d = get(&store, &c, &id).await.expect("document just written");
        assert_eq!(&d.value, value, "value {i} must round-trip unchanged");
    }
    // Ids are opaque strings: slashes, spaces, dots and non-ASCII are all fine.
    for id in ["VIN-1/command 7", "a.b", "ünï", "x".repeat(255).as_str()] {
        put(&store, &c, id, json!({"id": id})).await;
        assert_eq!(
            get(&store, &c, id).await.map(|d| d.value),
            Some(json!({"id": id})),
            "id {id:?}"
        );
        cleanup(&store, &c, [id]).await;
    }
    cleanup(&store, &c, (0..values.len()).map(|i| format!("v{i}"))).await;
}

/// Numbers come back exactly as written (the same `serde_json::Number`), and an `eq` filter
/// on the written value finds them: no rounding through a shorter decimal form.
async fn numbers_round_trip(store: Store) {
    let c = collection();
    let numbers = [
        json!(123_456_789.123_456_79_f64),
        json!(0.1_f64),
        json!(1.0_f64 / 3.0),
        json!(-2.225_073_858_507_201_4e-308_f64),
        json!(5e-324_f64),
        json!(f64::MAX),
        json!(f64::MIN),
        json!(i64::MIN),
        json!(i64::MAX),
        json!(u64::MAX),
        json!(2.5_f64),
    ];
    for (i, n) in numbers.iter().enumerate() {
        let id = format!("n{i:02}");
        let doc = json!({"x": n, "nested": {"list": [n]}});
        put(&store, &c, &id, doc.clone()).await;
        assert_eq!(
            get(&store, &c, &id).await.map(|d| d.value),
            Some(doc),
            "the number {n} read back"
        );
    }
    if store.capabilities().query {
        for (i, n) in numbers.iter().enumerate() {
            let got = query_all(&store, &c, Query::all().filter(Filter::eq("x", n.clone()))).await;
            assert_eq!(
                ids(&got),
                [format!("n{i:02}")],
                "an eq filter on the written number {n}"
            );
        }
        if store.capabilities().query_order {
            let docs: Vec<(String, Value)> = numbers
                .iter()
                .enumerate()
                .map(|(i, n)| (format!("n{i:02}"), json!({"x": n})))
                .collect();
            let docs: Vec<(&str, Value)> =
                docs.iter().map(|(i, v)| (i.as_str(), v.clone())).collect();
            let q = Query::all().order_by("x", Direction::Asc).limit(4);
            let got = query_all(&store, &c, q.clone()).await;
            assert_eq!(
                ids(&got),
                reference_ids(&docs, &q),
                "ordered by the numbers"
            );
        }
    }
    let all: Vec<String> = (0..numbers.len()).map(|i| format!("n{i:02}")).collect();
    cleanup(&store, &c, all).await;
}

async fn collections_are_isolated(store: Store) {
    let (a, b) = (collection(), collection());
    put(&store, &a, "same", json!({"in": "a"})).await;
    assert!(
        get(&store, &b, "same").await.is_none(),
        "b must not see a's document"
    );
    put(&store, &b, "same", json!({"in": "b"})).await;
    assert_eq!(
        get(&store, &a, "same").await.unwrap().value,
        json!({"in": "a"})
    );
    assert_eq!(
        get(&store, &b, "same").await.unwrap().value,
        json!({"in": "b"})
    );
    assert_eq!(get(&store, &b, "same").await.unwrap().revision, Revision(1));
    cleanup(&store, &a, ["same"]).await;
    assert!(
        get(&store, &b, "same").await.is_some(),
        "deleting in a leaves b alone"
    );
    cleanup(&store, &b, ["same"]).await;
}

async fn put_create_conflict(store: Store) {
    let c = collection();
    let r = store
        .put(&c, "doc", json!({"v": 1}), PutDocumentOptions::create())
        .await;
    assert_eq!(r.ok(), Some(Revision(1)), "create of an absent document");
    assert_kind(
        store
            .put(&c, "doc", json!({"v": 2}), PutDocumentOptions::create())
            .await,
        ErrorKind::AlreadyExists,
        "create of a present document",
    );
    let d = get(&store, &c, "doc").await.unwrap();
    assert_eq!(
        (d.value, d.revision),
        (json!({"v": 1}), Revision(1)),
        "unchanged"
    );
    cleanup(&store, &c, ["doc"]).await;
    let r = store
        .put(&c, "doc", json!({"v": 3}), PutDocumentOptions::create())
        .await;
    assert!(r.is_ok(), "create after delete: {r:?}");
    cleanup(&store, &c, ["doc"]).await;
}

async fn put_revision_conditions(store: Store) {
    let c = collection();
    let r1 = put(&store, &c, "doc", json!({"v": 1})).await;
    let r2 = store
        .put(
            &c,
            "doc",
            json!({"v": 2}),
            PutDocumentOptions::if_revision(r1),
        )
        .await
        .expect("update at the right revision");
    assert!(r2 > r1, "revisions grow: {r1} then {r2}");
    assert_kind(
        store
            .put(
                &c,
                "doc",
                json!({"v": 3}),
                PutDocumentOptions::if_revision(r1),
            )
            .await,
        ErrorKind::PreconditionFailed,
        "update at a stale revision",
    );
    assert_kind(
        store
            .put(
                &c,
                "doc",
                json!({"v": 3}),
                PutDocumentOptions::if_revision(Revision(r2.0 + 100)),
            )
            .await,
        ErrorKind::PreconditionFailed,
        "update at a future revision",
    );
    let d = get(&store, &c, "doc").await.unwrap();
    assert_eq!(
        (d.value, d.revision),
        (json!({"v": 2}), r2),
        "failed updates change nothing"
    );
    assert_kind(
        store
            .put(
                &c,
                "absent",
                json!({}),
                PutDocumentOptions::if_revision(Revision(1)),
            )
            .await,
        ErrorKind::PreconditionFailed,
        "update of an absent document",
    );
    assert!(
        get(&store, &c, "absent").await.is_none(),
        "not created by a failed update"
    );
    cleanup(&store, &c, ["doc"]).await;
}

async fn delete_conditions(store: Store) {
    let c = collection();
    let r = put(&store, &c, "doc", json!({"v": 1})).await;
    assert_kind(
        store
            .delete(&c, "doc", WriteCondition::Revision(Revision(r.0 + 1)))
            .await,
        ErrorKind::PreconditionFailed,
        "delete at a wrong revision",
    );
    assert_kind(
        store.delete(&c, "doc", WriteCondition::Absent).await,
        ErrorKind::AlreadyExists,
        "delete on condition Absent of a present document",
    );
    assert!(
        get(&store, &c, "doc").await.is_some(),
        "failed deletes leave it"
    );
    assert_eq!(
        store
            .delete(&c, "doc", WriteCondition::Revision(r))
            .await
            .ok(),
        Some(true),
        "delete at the right revision"
    );
    assert!(get(&store, &c, "doc").await.is_none());
    assert_eq!(
        store.delete(&c, "doc", WriteCondition::Any).await.ok(),
        Some(false),
        "delete of an absent document"
    );
    assert_eq!(
        store.delete(&c, "doc", WriteCondition::Absent).await.ok(),
        Some(false),
        "delete on condition Absent of an absent document"
    );
    assert_kind(
        store.delete(&c, "doc", WriteCondition::Revision(r)).await,
        ErrorKind::PreconditionFailed,
        "delete at a revision of an absent document",
    );
    put(&store, &c, "doc", json!({})).await;
    assert_eq!(
        store.delete(&c, "doc", WriteCondition::Any).await.ok(),
        Some(true),
        "unconditional delete of a present document"
    );
    assert!(get(&store, &c, "doc").await.is_none());
}

// ---------------------------------------------------------------------------------------------
// Races

const RACERS: usize = 8;

async fn update_race_one_winner(store: Store) {
    let c = collection();
    let r = put(&store, &c, "doc", json!({"winner": null})).await;
    let tasks = (0..RACERS)
        .map(|i| {
            let (store, c) = (Arc::clone(&store), c.clone());
            async move {
                store
                    .put(
                        &c,
                        "doc",
                        json!({"winner": i}),
                        PutDocumentOptions::if_revision(r),
                    )
                    .await
            }
        })
        .collect();
    let results = spawn_all(tasks).await;
    let mut winners = Vec::new();
    for (i, result) in results.into_iter().enumerate() {
        match result {
            Ok(rev) => winners.push((i, rev)),
            Err(e) => assert_eq!(
                e.kind(),
                ErrorKind::PreconditionFailed,
                "a losing conditional update must fail with PreconditionFailed: {e}"
            ),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one racer must win: {winners:?}");
    let (i, rev) = winners[0];
    assert!(rev > r);
    let d = get(&store, &c, "doc").await.unwrap();
    assert_eq!(
        (d.value, d.revision),
        (json!({"winner": i}), rev),
        "the winner's write"
    );
    cleanup(&store, &c, ["doc"]).await;
}

async fn create_race_one_winner(store: Store) {
    let c = collection();
    let tasks = (0..RACERS)
        .map(|i| {
            let (store, c) = (Arc::clone(&store), c.clone());
            async move {
                store
                    .put(
                        &c,
                        "doc",
                        json!({"winner": i}),
                        PutDocumentOptions::create(),
                    )
                    .await
            }
        })
        .collect();
    let results = spawn_all(tasks).await;
    let mut winners = Vec::new();
    for (i, result) in results.into_iter().enumerate() {
        match result {
            Ok(rev) => winners.push((i, rev)),
            Err(e) => assert_eq!(
                e.kind(),
                ErrorKind::AlreadyExists,
                "a losing create must fail with AlreadyExists: {e}"
            ),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one creator must win: {winners:?}"
    );
    let (i, rev) = winners[0];
    assert_eq!(rev, Revision(1));
    let d = get(&store, &c, "doc").await.unwrap();
    assert_eq!(
        (d.value, d.revision),
        (json!({"winner": i}), rev),
        "the winner's write"
    );
    cleanup(&store, &c, ["doc"]).await;
}

// ---------------------------------------------------------------------------------------------
// get_many and batches

async fn get_many_order_and_missing(store: Store) {
    let c = collection();
    put(&store, &c, "a", json!({"v": "a"})).await;
    put(&store, &c, "b", json!({"v": "b"})).await;
    put(&store, &c, "b", json!({"v": "b2"})).await;
    let ids: Vec<String> = ["b", "missing", "a", "b"].map(String::from).into();
    let got = store.get_many(&c, &ids).await.expect("get_many");
    let got: Vec<_> = got
        .into_iter()
        .map(|d| d.map(|d| (d.id, d.value, d.revision)))
        .collect();
    assert_eq!(
        got,
        vec![
            Some(("b".into(), json!({"v": "b2"}), Revision(2))),
            None,
            Some(("a".into(), json!({"v": "a"}), Revision(1))),
            Some(("b".into(), json!({"v": "b2"}), Revision(2))),
        ],
        "results in the order of the ids, None for missing ones"
    );
    assert_eq!(store.get_many(&c, &[]).await.ok(), Some(vec![]), "no ids");
    let other = collection();
    assert_eq!(
        store.get_many(&other, &ids[..2]).await.ok(),
        Some(vec![None, None]),
        "unknown collection"
    );
    cleanup(&store, &c, ["a", "b"]).await;
}

async fn batch_all_or_nothing(store: Store) {
    let c = collection();
    if !store.capabilities().transactions {
        assert_kind(
            store
                .write_batch(vec![put_op(
                    &c,
                    "x",
                    json!({}),
                    PutDocumentOptions::default(),
                )])
                .await,
            ErrorKind::Unsupported,
            "write_batch without the `transactions` capability",
        );
        assert!(get(&store, &c, "x").await.is_none(), "nothing written");
        return;
    }
    let existing = put(&store, &c, "existing", json!({"v": 0})).await;

    // The third op fails on a wrong revision: the first two must not be written.
    let ops = vec![
        put_op(&c, "new1", json!({"v": 1}), PutDocumentOptions::create()),
        put_op(
            &c,
            "existing",
            json!({"v": 1}),
            PutDocumentOptions::if_revision(existing),
        ),
        put_op(
            &c,
            "existing",
            json!({"v": 2}),
            PutDocumentOptions::if_revision(Revision(existing.0 + 50)),
        ),
        put_op(&c, "new2", json!({"v": 1}), PutDocumentOptions::default()),
    ];
    assert_kind(
        store.write_batch(ops).await,
        ErrorKind::PreconditionFailed,
        "batch whose third op has a wrong revision",
    );
    assert!(
        get(&store, &c, "new1").await.is_none(),
        "first op rolled back"
    );
    assert!(
        get(&store, &c, "new2").await.is_none(),
        "fourth op not applied"
    );
    let d = get(&store, &c, "existing").await.unwrap();
    assert_eq!(
        (d.value, d.revision),
        (json!({"v": 0}), existing),
        "second op rolled back"
    );

    // The third op fails on create of a present document: the error is AlreadyExists.
    let ops = vec![
        put_op(&c, "other", json!({}), PutDocumentOptions::default()),
        put_op(&c, "new1", json!({"v": 1}), PutDocumentOptions::default()),
        put_op(&c, "existing", json!({}), PutDocumentOptions::create()),
        put_op(&c, "new1", json!({"v": 2}), PutDocumentOptions::default()),
    ];
    assert_kind(
        store.write_batch(ops).await,
        ErrorKind::AlreadyExists,
        "batch whose third op creates a present document",
    );
    assert!(
        get(&store, &c, "other").await.is_none(),
        "first op rolled back"
    );
    assert!(
        get(&store, &c, "new1").await.is_none(),
        "second op rolled back"
    );

    // A failing delete condition aborts the batch the same way.
    let ops = vec![
        delete_op(&c, "existing", WriteCondition::Any),
        delete_op(&c, "missing", WriteCondition::Revision(Revision(1))),
    ];
    assert_kind(
        store.write_batch(ops).await,
        ErrorKind::PreconditionFailed,
        "batch whose delete condition fails",
    );
    let d = get(&store, &c, "existing").await.unwrap();
    assert_eq!(d.revision, existing, "the delete was rolled back");

    // An invalid op anywhere makes the whole batch invalid.
    let ops = vec![
        put_op(&c, "new1", json!({}), PutDocumentOptions::default()),
        put_op("1bad", "x", json!({}), PutDocumentOptions::default()),
    ];
    assert_kind(
        store.write_batch(ops).await,
        ErrorKind::InvalidArgument,
        "batch with an invalid collection name",
    );
    assert!(get(&store, &c, "new1").await.is_none(), "nothing written");

    assert_eq!(
        store.write_batch(vec![]).await.ok(),
        Some(vec![]),
        "empty batch"
    );
    cleanup(&store, &c, ["existing"]).await;
}

async fn batch_across_collections(store: Store) {
    if !store.capabilities().transactions {
        return; // `batch_all_or_nothing` asserts Unsupported.
    }
    let (a, b) = (collection(), collection());
    let gone = put(&store, &a, "gone", json!({"v": 0})).await;
    let kept = put(&store, &b, "kept", json!({"v": 0})).await;
    let ops = vec![
        put_op(&a, "one", json!({"v": 1}), PutDocumentOptions::create()),
        put_op(&b, "two", json!({"v": 2}), PutDocumentOptions::default()),
        delete_op(&a, "gone", WriteCondition::Revision(gone)),
        put_op(
            &b,
            "kept",
            json!({"v": 1}),
            PutDocumentOptions::if_revision(kept),
        ),
        delete_op(&b, "never", WriteCondition::Any),
    ];
    let outcomes = store
        .write_batch(ops)
        .await
        .expect("batch over two collections");
    assert_eq!(outcomes.len(), 5, "one outcome per op: {outcomes:?}");
    assert_eq!(outcomes[0], WriteOutcome::Put(Revision(1)));
    assert_eq!(outcomes[1], WriteOutcome::Put(Revision(1)));
    assert_eq!(outcomes[2], WriteOutcome::Deleted(true));
    let WriteOutcome::Put(kept2) = outcomes[3] else {
        panic!("outcome of a put: {:?}", outcomes[3]);
    };
    assert!(kept2 > kept);
    assert_eq!(outcomes[4], WriteOutcome::Deleted(false));

    assert_eq!(
        get(&store, &a, "one").await.map(|d| d.value),
        Some(json!({"v": 1}))
    );
    assert_eq!(
        get(&store, &b, "two").await.map(|d| d.value),
        Some(json!({"v": 2}))
    );
    assert!(get(&store, &a, "gone").await.is_none());
    let d = get(&store, &b, "kept").await.unwrap();
    assert_eq!((d.value, d.revision), (json!({"v": 1}), kept2));
    assert!(
        get(&store, &a, "two").await.is_none(),
        "each op in its own collection"
    );

    // A failure in the second collection rolls back the first as well.
    let ops = vec![
        put_op(&a, "three", json!({}), PutDocumentOptions::default()),
        put_op(&b, "two", json!({}), PutDocumentOptions::create()),
    ];
    assert_kind(
        store.write_batch(ops).await,
        ErrorKind::AlreadyExists,
        "batch failing in its second collection",
    );
    assert!(get(&store, &a, "three").await.is_none(), "rolled back");
    cleanup(&store, &a, ["one"]).await;
    cleanup(&store, &b, ["two", "kept"]).await;
}

async fn batch_sequential_same_document(store: Store) {
    if !store.capabilities().transactions {
        return; // `batch_all_or_nothing` asserts Unsupported.
    }
    let c = collection();
    // Ops apply in order: each sees the effect of the ones before it.
    let ops = vec![
        put_op(&c, "doc", json!({"v": 1}), PutDocumentOptions::create()),
        put_op(
            &c,
            "doc",
            json!({"v": 2}),
            PutDocumentOptions::if_revision(Revision(1)),
        ),
        delete_op(&c, "doc", WriteCondition::Revision(Revision(2))),
        put_op(&c, "doc", json!({"v": 3}), PutDocumentOptions::create()),
    ];
    let outcomes = store.write_batch(ops).await.expect("sequential batch");
    assert_eq!(outcomes[0], WriteOutcome::Put(Revision(1)));
    assert_eq!(outcomes[1], WriteOutcome::Put(Revision(2)));
    assert_eq!(outcomes[2], WriteOutcome::Deleted(true));
    assert!(matches!(outcomes[3], WriteOutcome::Put(_)), "{outcomes:?}");
    assert_eq!(
        get(&store, &c, "doc").await.map(|d| d.value),
        Some(json!({"v": 3}))
    );
    cleanup(&store, &c, ["doc"]).await;
}

// ---------------------------------------------------------------------------------------------
// Queries

/// Documents with number, string, missing, null and boolean fields under the same names, so
/// that every operator meets every type.
fn mixed_docs() -> Vec<(&'static str, Value)> {
    vec![
        (
            "d01",
            json!({"n": 1, "s": "apple", "a": {"b": 10, "c": "x"}}),
        ),
        (
            "d02",
            json!({"n": 2, "s": "banana", "a": {"b": 20, "c": "xy"}}),
        ),
        (
            "d03",
            json!({"n": 2.5, "s": "cherry", "a": {"b": "20", "c": "y"}}),
        ),
        ("d04", json!({"n": "3", "s": "apricot", "a": {"b": 30.0}})),
        ("d05", json!({"n": 10, "s": "Zebra", "a": 5})),
        ("d06", json!({"s": "ápple", "a": {"c": "x%y"}})),
        ("d07", json!({"n": -4, "s": 7})),
        ("d08", json!({"n": null, "s": null})),
        ("d09", json!({"n": true, "s": false})),
        ("d10", json!({"n": 2.0, "s": "a%b_c"})),
        ("d11", json!({"n": 1e3, "s": ""})),
        ("d12", json!({"n": [1, 2], "s": {"x": "apple"}})),
    ]
}

async fn with_mixed_docs(store: &Store) -> (String, Vec<(&'static str, Value)>) {
    let c = collection();
    let docs = mixed_docs();
    if store.capabilities().query {
        insert_all(store, &c, &docs).await;
    }
    (c, docs)
}

async fn finish_mixed(store: &Store, c: &str, docs: &[(&str, Value)]) {
    if store.capabilities().query {
        cleanup(store, c, doc_ids(docs)).await;
    }
}

async fn query_operators_numbers(store: Store) {
    let (c, docs) = with_mixed_docs(&store).await;
    let s = &store;
    // Numbers compare numerically, integers and floats alike; other types never match.
    check_filter(s, &c, &docs, Filter::eq("n", 2), &["d02", "d10"]).await;
    check_filter(s, &c, &docs, Filter::eq("n", 2.5), &["d03"]).await;
    check_filter(s, &c, &docs, Filter::eq("n", 1000), &["d11"]).await;
    check_filter(
        s,
        &c,
        &docs,
        Filter::ne("n", 2),
        &[
            "d01", "d03", "d04", "d05", "d07", "d08", "d09", "d11", "d12",
        ],
    )
    .await;
    check_filter(s, &c, &docs, Filter::lt("n", 2), &["d01", "d07"]).await;
    check_filter(
        s,
        &c,
        &docs,
        Filter::le("n", 2),
        &["d01", "d02", "d07", "d10"],
    )
    .await;
    check_filter(s, &c, &docs, Filter::gt("n", 2), &["d03", "d05", "d11"]).await;
    check_filter(s, &c, &docs, Filter::ge("n", 2.5), &["d03", "d05", "d11"]).await;
    check_filter(
        s,
        &c,
        &docs,
        Filter::gt("n", -10.5),
        &["d01", "d02", "d03", "d05", "d07", "d10", "d11"],
    )
    .await;
    check_filter(
        s,
        &c,
        &docs,
        Filter::is_in("n", vec![json!(1), json!(10), json!(-4.0), json!(99)]),
        &["d01", "d05", "d07"],
    )
    .await;
    check_filter(s, &c, &docs, Filter::is_in("n", vec![]), &[]).await;
    // Both bounds: a range.
    check_query(
        s,
        &c,
        &docs,
        Query::all()
            .filter(Filter::gt("n", 1))
            .filter(Filter::le("n", 10)),
        Some(&["d02", "d03", "d05", "d10"]),
    )
    .await;
    finish_mixed(&store, &c, &docs).await;
}

async fn query_operators_strings(store: Store) {
    let (c, docs) = with_mixed_docs(&store).await;
    let s = &store;
    // Strings compare by their UTF-8 bytes: "Zebra" < "apple" < "ápple".
    check_filter(s, &c, &docs, Filter::eq("s", "apple"), &["d01"]).await;
    check_filter(s, &c, &docs, Filter::eq("s", ""), &["d11"]).await;
    check_filter(
        s,
        &c,
        &docs,
        Filter::ne("s", "apple"),
        &[
            "d02", "d03", "d04", "d05", "d06", "d07", "d08", "d09", "d10", "d11", "d12",
        ],
    )
    .await;
    check_filter(
        s,
        &c,
        &docs,
        Filter::lt("s", "apple"),
        &["d05", "d10", "d11"],
    )
    .await;
    check_filter(
        s,
        &c,
        &docs,
        Filter::le("s", "apple"),
        &["d01", "d05", "d10", "d11"],
    )
    .await;
    check_filter(s, &c, &docs, Filter::gt("s", "b"), &["d02", "d03", "d06"]).await;
    check_filter(
        s,
        &c,
        &docs,
        Filter::ge("s", "banana"),
        &["d02", "d03", "d06"],
    )
    .await;
    check_filter(
        s,
        &c,
        &docs,
        Filter::gt("s", "apple"),
        &["d02", "d03", "d04", "d06"],
    )
    .await;
    check_filter(
        s,
        &c,
        &docs,
        Filter::is_in("s", vec![json!("cherry"), json!("Zebra"), json!("nope")]),
        &["d03", "d05"],
    )
    .await;
    check_filter(s, &c, &docs, Filter::prefix("s", "ap"), &["d01", "d04"]).await;
    check_filter(s, &c, &docs, Filter::prefix("s", "Ap"), &[]).await;
    check_filter(s, &c, &docs, Filter::prefix("s", "á"), &["d06"]).await;
    // SQL wildcards in a prefix are plain characters.
    check_filter(s, &c, &docs, Filter::prefix("s", "a%"), &["d10"]).await;
    check_filter(s, &c, &docs, Filter::prefix("s", "a_"), &[]).await;
    check_filter(s, &c, &docs, Filter::prefix("s", "%"), &[]).await;
    check_filter(
        s,
        &c,
        &docs,
        Filter::prefix("s", ""),
        &["d01", "d02", "d03", "d04", "d05", "d06", "d10", "d11"],
    )
    .await;
    finish_mixed(&store, &c, &docs).await;
}

async fn query_nested_fields(store: Store) {
    let (c, docs) = with_mixed_docs(&store).await;
    let s = &store;
    check_filter(s, &c, &docs, Filter::eq("a.b", 20), &["d02"]).await;
    check_filter(s, &c, &docs, Filter::eq("a.b", "20"), &["d03"]).await;
    check_filter(s, &c, &docs, Filter::ge("a.b", 20), &["d02", "d04"]).await;
    check_filter(s, &c, &docs, Filter::lt("a.b", 30), &["d01", "d02"]).await;
    check_filter(s, &c, &docs, Filter::ne("a.b", 10), &["d02", "d03", "d04"]).await;
    check_filter(
        s,
        &c,
        &docs,
        Filter::prefix("a.c", "x"),
        &["d01", "d02", "d06"],
    )
    .await;
    check_filter(s, &c, &docs, Filter::gt("a.c", "x"), &["d02", "d03", "d06"]).await;
    check_filter(
        s,
        &c,
        &docs,
        Filter::is_in("a.c", vec![json!("y"), json!("x%y")]),
        &["d03", "d06"],
    )
    .await;
    // A path through a non-object, or deeper than the document, matches nothing.
    check_filter(s, &c, &docs, Filter::eq("a.b.c", 10), &[]).await;
    check_filter(s, &c, &docs, Filter::eq("s.x", "apple"), &["d12"]).await;
    check_filter(s, &c, &docs, Filter::ne("missing.field", 1), &[]).await;
    // Filters combine with AND.
    check_query(
        s,
        &c,
        &docs,
        Query::all()
            .filter(Filter::prefix("a.c", "x"))
            .filter(Filter::lt("n", 2)),
        Some(&["d01"]),
    )
    .await;
    finish_mixed(&store, &c, &docs).await;
}

async fn query_cross_type(store: Store) {
    let (c, docs) = with_mixed_docs(&store).await;
    let s = &store;
    // A number operand never matches a string field and vice versa, also for `=`.
    check_filter(s, &c, &docs, Filter::eq("n", "3"), &["d04"]).await;
    check_filter(s, &c, &docs, Filter::eq("n", 3), &[]).await;
    check_filter(s, &c, &docs, Filter::gt("n", "0"), &["d04"]).await;
    check_filter(s, &c, &docs, Filter::eq("s", 7), &["d07"]).await;
    check_filter(s, &c, &docs, Filter::eq("s", "7"), &[]).await;
    check_filter(s, &c, &docs, Filter::lt("s", 100), &["d07"]).await;
    // JSON true is not the number 1, and null is not a missing field.
    check_filter(s, &c, &docs, Filter::eq("n", 1), &["d01"]).await;
    check_filter(s, &c, &docs, Filter::eq("n", true), &["d09"]).await;
    check_filter(s, &c, &docs, Filter::eq("s", false), &["d09"]).await;
    check_filter(s, &c, &docs, Filter::eq("n", 0), &[]).await;
    check_filter(s, &c, &docs, Filter::eq("n", Value::Null), &["d08"]).await;
    check_filter(s, &c, &docs, Filter::ge("n", Value::Null), &[]).await;
    check_filter(s, &c, &docs, Filter::prefix("n", "3"), &["d04"]).await;
    check_filter(
        s,
        &c,
        &docs,
        Filter::is_in("n", vec![json!("3"), json!(10), json!(null)]),
        &["d04", "d05", "d08"],
    )
    .await;
    finish_mixed(&store, &c, &docs).await;
}

/// Documents for ordering and paging: ties in `num` and `str`, broken by id.
fn order_docs() -> Vec<(String, Value)> {
    let names = ["kiwi", "Apple", "fig", "apple", "fig", "banana", "kiwi"];
    (0..23)
        .map(|i| {
            (
                format!("o{:02}", (i * 7) % 23),
                json!({"num": (i % 5) as i64 - 2, "f": i as f64 / 4.0, "str": names[i % names.len()],
                       "g": {"h": (i % 3)}}),
            )
        })
        .collect()
}

async fn query_order(store: Store) {
    let c = collection();
    let owned = order_docs();
    let docs: Vec<(&str, Value)> = owned.iter().map(|(i, v)| (i.as_str(), v.clone())).collect();
    let caps = store.capabilities();
    if caps.query {
        insert_all(&store, &c, &docs).await;
    }
    let s = &store;
    // No order: by id.
    let all: Vec<&str> = {
        let mut v: Vec<&str> = docs.iter().map(|(i, _)| *i).collect();
        v.sort();
        v
    };
    check_query(s, &c, &docs, Query::all(), Some(&all)).await;
    for dir in [Direction::Asc, Direction::Desc] {
        for field in ["num", "str", "f", "g.h"] {
            check_query(s, &c, &docs, Query::all().order_by(field, dir), None).await;
        }
        check_query(
            s,
            &c,
            &docs,
            Query::all()
                .order_by("str", dir)
                .order_by("num", Direction::Desc),
            None,
        )
        .await;
    }
    // Spelled out once: ties of `str` broken by id, bytes order (`A` < `a`).
    let q = Query::all()
        .filter(Filter::prefix("str", "A"))
        .order_by("str", Direction::Desc);
    let mut expected: Vec<&str> = docs
        .iter()
        .filter(|(_, v)| v["str"] == "Apple")
        .map(|(i, _)| *i)
        .collect();
    expected.sort();
    check_query(s, &c, &docs, q, Some(&expected)).await;
    // Filter and order together.
    check_query(
        s,
        &c,
        &docs,
        Query::all()
            .filter(Filter::ge("num", 0))
            .order_by("num", Direction::Desc),
        None,
    )
    .await;
    if caps.query {
        cleanup(&store, &c, doc_ids(&docs)).await;
    }
}

async fn query_paging(store: Store) {
    let c = collection();
    let owned = order_docs();
    let docs: Vec<(&str, Value)> = owned.iter().map(|(i, v)| (i.as_str(), v.clone())).collect();
    let caps = store.capabilities();
    if !caps.query {
        assert_kind(
            store.query(&c, Query::all().limit(5)).await,
            ErrorKind::Unsupported,
            "query without the `query` capability",
        );
        return;
    }
    insert_all(&store, &c, &docs).await;
    let mut queries = vec![Query::all()];
    if caps.query_order {
        queries.push(Query::all().order_by("num", Direction::Desc));
        queries.push(Query::all().order_by("str", Direction::Asc));
        queries.push(
            Query::all()
                .order_by("str", Direction::Asc)
                .order_by("f", Direction::Desc),
        );
    }
    if caps.query_range {
        queries.push(Query::all().filter(Filter::gt("num", -2)));
    }
    for base in queries {
        let full = reference_ids(&docs, &base);
        for limit in [1, 4, 5, 23, 100] {
            let q = Query {
                limit: Some(limit),
                ..base.clone()
            };
            let got = ids(&query_all(&store, &c, q.clone()).await);
            assert_eq!(got, full, "pages of {limit} of {base:?}");
            let unique: HashSet<_> = got.iter().collect();
            assert_eq!(unique.len(), got.len(), "no duplicates across pages");
        }
        // The first page is the head of the full result.
        let page = store
            .query(
                &c,
                Query {
                    limit: Some(3),
                    ..base.clone()
                },
            )
            .await
            .unwrap();
        assert_eq!(
            ids(&page.documents),
            full[..3.min(full.len())],
            "first page of {base:?}"
        );
        assert_eq!(
            page.next_cursor.is_some(),
            full.len() > 3,
            "a cursor while more remain"
        );
    }
    // Without a limit, the default page size (100) holds all 23.
    let page = store.query(&c, Query::all()).await.unwrap();
    assert_eq!(page.documents.len(), docs.len());
    assert!(page.next_cursor.is_none(), "one page holds everything");
    cleanup(&store, &c, doc_ids(&docs)).await;
    let page = store.query(&c, Query::all()).await.unwrap();
    assert!(page.documents.is_empty(), "everything deleted");
}

/// The ids the concurrent writer of [`query_paging_under_concurrent_writes`] works on: some
/// sort before every stable id, some after, some between two stable ids.
fn writer_ids() -> Vec<String> {
    let mut ids: Vec<String> = (0..4).map(|i| format!("a{i}")).collect();
    ids.extend((0..4).map(|i| format!("z{i}")));
    ids.extend((0..20).step_by(3).map(|i| format!("s{i:02}x")));
    ids
}

fn stable_documents() -> Vec<(String, Value)> {
    (0..20)
        .map(|i| (format!("s{i:02}"), json!({"n": i, "kind": "stable"})))
        .collect()
}

fn stable_ids(stable: &[(String, Value)]) -> Vec<String> {
    stable.iter().map(|(id, _)| id.clone()).collect()
}

/// What a paging of `base` that returned `seen` did wrong with the `stable` documents.
fn check_stable_paging(
    round: usize,
    base: &Query,
    seen: &[Document],
    stable: &[(String, Value)],
) -> Option<String> {
    let stable_seen: Vec<String> = seen
        .iter()
        .filter(|d| d.id.len() == 3 && d.id.starts_with('s'))
        .map(|d| d.id.clone())
        .collect();
    let stable_docs: Vec<(&str, Value)> = stable
        .iter()
        .map(|(i, v)| (i.as_str(), v.clone()))
        .collect();
    let expected = reference_ids(&stable_docs, base);
    if stable_seen != expected {
        return Some(format!(
            "round {round}, {base:?}: the stable documents came as {stable_seen:?}, \
             not exactly once each in query order {expected:?}"
        ));
    }
    for d in seen {
        if let Some((_, v)) = stable.iter().find(|(id, _)| *id == d.id) {
            if &d.value != v {
                return Some(format!("stable document `{}` read as {}", d.id, d.value));
            }
        }
    }
    if base.order_by.is_empty() {
        let unique: HashSet<&str> = seen.iter().map(|d| d.id.as_str()).collect();
        if unique.len() != seen.len() {
            return Some(format!(
                "in id order a document came twice: {:?}",
                ids(seen)
            ));
        }
    }
    None
}

/// The paging contract of [`DocumentStore`]: while others insert, update and delete
/// documents (before and after the cursor, in id order and in the query order), every
/// document that stays unchanged is returned exactly once, in query order.
async fn query_paging_under_concurrent_writes(store: Store) {
    let caps = store.capabilities();
    if !caps.query {
        return; // `unclaimed_capabilities` asserts Unsupported.
    }
    let c = collection();
    let stable = stable_documents();
    for (id, v) in &stable {
        put(&store, &c, id, v.clone()).await;
    }
    let mut queries = vec![Query::all()];
    if caps.query_order {
        queries.push(Query::all().order_by("n", Direction::Asc));
        queries.push(Query::all().order_by("n", Direction::Desc));
        queries.push(
            Query::all()
                .order_by("kind", Direction::Desc)
                .order_by("n", Direction::Asc),
        );
    }
    // A writer that keeps inserting, updating and deleting other documents, with order
    // values among the stable ones', while the reader pages.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU32::new(0));
    let writer = {
        let (store, c, stop) = (Arc::clone(&store), c.clone(), Arc::clone(&stop));
        let written = Arc::clone(&written);
        tokio::spawn(async move {
            let ids = writer_ids();
            let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
            let mut next = move || {
                seed = seed
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                seed >> 33
            };
            let mut writes = 0u32;
            while !stop.load(Ordering::Relaxed) && writes < 5000 {
                let id = &ids[(next() as usize) % ids.len()];
                let n = (next() % 26) as i64 - 3;
                let result = if next() % 3 == 0 {
                    store.delete(&c, id, WriteCondition::Any).await.map(|_| ())
                } else {
                    store
                        .put(
                            &c,
                            id,
                            json!({"n": n, "kind": "writer"}),
                            PutDocumentOptions::default(),
                        )
                        .await
                        .map(|_| ())
                };
                if let Err(e) = result {
                    panic!("concurrent write of `{id}` failed: {e}");
                }
                writes += 1;
                written.store(writes, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
            writes
        })
    };
    // The reader starts once the writer is writing.
    for _ in 0..500 {
        if written.load(Ordering::Relaxed) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut failure = None;
    for (round, base) in queries.iter().enumerate() {
        let mut query = Query {
            limit: Some(3),
            ..base.clone()
        };
        let mut seen: Vec<Document> = Vec::new();
        for page_no in 0..200 {
            let page = match store.query(&c, query.clone()).await {
                Ok(p) => p,
                Err(e) => {
                    failure = Some(format!("query {query:?} failed: {e}"));
                    break;
                }
            };
            seen.extend(page.documents);
            // Deterministic interference too: between two pages, a document that sorts
            // before the cursor (in id and in `n` order) appears and one after it goes.
            let before = format!("a{}", page_no % 4);
            let after = format!("z{}", (page_no + 1) % 4);
            let n = if page_no % 2 == 0 { -100 } else { 100 };
            put(&store, &c, &before, json!({"n": n, "kind": "writer"})).await;
            cleanup(&store, &c, [after]).await;
            // Let the writer in between pages, also on a backend that never waits.
            tokio::task::yield_now().await;
            match page.next_cursor {
                Some(cursor) => query.cursor = Some(cursor),
                None => break,
            }
        }
        if failure.is_none() {
            failure = check_stable_paging(round, base, &seen, &stable);
        }
        if failure.is_some() {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let writes = match writer.await {
        Ok(n) => n,
        Err(e) => panic!("the concurrent writer failed: {e}"),
    };
    cleanup(&store, &c, writer_ids()).await;
    cleanup(&store, &c, stable_ids(&stable)).await;
    if let Some(failure) = failure {
        panic!("{failure}");
    }
    assert!(writes > 0, "the writer wrote while the reader paged");
}

/// Field names with characters that mean something in JSON-path syntaxes are queried
/// literally on every backend; names the portable rule refuses (a segment starting with
/// `-`) are `InvalidArgument` everywhere, never a silent empty result.
async fn query_unusual_field_names(store: Store) {
    let caps = store.capabilities();
    if !caps.query {
        return; // `unclaimed_capabilities` asserts Unsupported.
    }
    let c = collection();
    let names = [
        "a-b", "1", "0", "x y", "$", "*", "**", "[0]", "é", "日本", "@#", "'q'", "`b`", "a/b",
        "+1", "a-", "_", "%", "(x)", "{}", "<>", "=", ",;",
    ];
    let mut docs: Vec<(String, Value)> = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let mut obj = serde_json::Map::new();
        obj.insert((*name).to_string(), json!(i));
        let mut inner = serde_json::Map::new();
        inner.insert((*name).to_string(), json!(i));
        obj.insert("in".into(), Value::Object(inner));
        docs.push((format!("u{i:02}"), Value::Object(obj)));
    }
    for (id, v) in &docs {
        put(&store, &c, id, v.clone()).await;
    }
    for (i, name) in names.iter().enumerate() {
        for path in [name.to_string(), format!("in.{name}")] {
            let got = query_all(&store, &c, Query::all().filter(Filter::eq(&path, i))).await;
            assert_eq!(
                ids(&got),
                [format!("u{i:02}")],
                "an eq filter on the field {path:?}"
            );
        }
    }
    if caps.query_order {
        let refs: Vec<(&str, Value)> = docs.iter().map(|(i, v)| (i.as_str(), v.clone())).collect();
        let q = Query::all().order_by("$", Direction::Desc);
        let got = query_all(&store, &c, q.clone()).await;
        assert_eq!(
            ids(&got),
            reference_ids(&refs, &q),
            "ordered by the field `$`"
        );
    }
    for bad in ["-1", "->", "-", "in.-1"] {
        assert_kind(
            store
                .query(&c, Query::all().filter(Filter::eq(bad, 1)))
                .await,
            ErrorKind::InvalidArgument,
            &format!("a filter on the field {bad:?}"),
        );
    }
    let all: Vec<String> = docs.iter().map(|(id, _)| id.clone()).collect();
    cleanup(&store, &c, all).await;
}

async fn query_invalid_input(store: Store) {
    let c = collection();
    if !store.capabilities().query {
        return; // `unclaimed_capabilities` asserts Unsupported.
    }
    put(&store, &c, "doc", json!({"n": 1})).await;
    let bad_cursor = Query {
        cursor: Some("\u{1}not a cursor\u{2}".into()),
        ..Query::all()
    };
    assert_kind(
        store.query(&c, bad_cursor).await,
        ErrorKind::InvalidArgument,
        "a cursor the store did not issue",
    );
    for path in ["", "a..b", ".a", "a.", "a\"b"] {
        assert_kind(
            store
                .query(&c, Query::all().filter(Filter::eq(path, 1)))
                .await,
            ErrorKind::InvalidArgument,
            &format!("filter on field path {path:?}"),
        );
    }
    if store.capabilities().query_order {
        assert_kind(
            store
                .query(&c, Query::all().order_by("", Direction::Asc))
                .await,
            ErrorKind::InvalidArgument,
            "order by an empty field path",
        );
    }
    assert_kind(
        store.query(&c, Query::all().limit(0)).await,
        ErrorKind::InvalidArgument,
        "limit 0",
    );
    cleanup(&store, &c, ["doc"]).await;
}

// ---------------------------------------------------------------------------------------------
// TTL

async fn ttl_expiry(store: Store) {
    let c = collection();
    let caps = store.capabilities();
    let short = PutDocumentOptions {
        ttl: Some(Duration::from_secs(1)),
        ..PutDocumentOptions::default()
    };
    if !caps.ttl {
        assert_kind(
            store.put(&c, "ttl", json!({}), short).await,
            ErrorKind::Unsupported,
            "put with a TTL without the `ttl` capability",
        );
        assert!(get(&store, &c, "ttl").await.is_none(), "not written");
        return;
    }
    let before = SystemTime::now();
    store
        .put(&c, "short", json!({"k": "v"}), short)
        .await
        .expect("put with a TTL");
    let long = PutDocumentOptions {
        ttl: Some(Duration::from_secs(3600)),
        ..PutDocumentOptions::default()
    };
    store
        .put(&c, "long", json!({"k": "v"}), long)
        .await
        .expect("put with a long TTL");
    put(&store, &c, "forever", json!({"k": "v"})).await;

    let d = get(&store, &c, "long")
        .await
        .expect("an hour has not passed");
    let expires = d
        .expires_at
        .expect("a document with a TTL reports when it expires");
    let from = before + Duration::from_secs(3590);
    let to = SystemTime::now() + Duration::from_secs(3610);
    assert!(
        expires > from && expires < to,
        "expires_at about an hour from now"
    );
    assert_eq!(get(&store, &c, "forever").await.unwrap().expires_at, None);

    // Gone from get and from queries within a generous bound; no exact timing.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let from_get = get(&store, &c, "short").await.is_none();
        let from_query = if caps.query {
            let all = query_all(&store, &c, Query::all().filter(Filter::eq("k", "v"))).await;
            !all.iter().any(|d| d.id == "short")
        } else {
            true
        };
        let from_many = store
            .get_many(&c, &["short".to_string()])
            .await
            .expect("get_many")
            .first()
            .is_some_and(Option::is_none);
        if from_get && from_query && from_many {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a document with a 1 s TTL is still visible after 20 s \
             (get: {from_get}, query: {from_query}, get_many: {from_many})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(get(&store, &c, "forever").await.is_some(), "no TTL: stays");
    assert!(get(&store, &c, "long").await.is_some(), "long TTL: stays");
    if caps.query {
        let all = query_all(&store, &c, Query::all()).await;
        assert_eq!(
            ids(&all),
            ["forever", "long"],
            "query sees the live documents"
        );
    }
    // An expired document is absent for conditional writes too.
    let r = store
        .put(
            &c,
            "short",
            json!({"k": "again"}),
            PutDocumentOptions::create(),
        )
        .await;
    assert!(r.is_ok(), "create over an expired document: {r:?}");
    assert_eq!(get(&store, &c, "short").await.unwrap().expires_at, None);
    // A put without TTL clears an earlier TTL.
    put(&store, &c, "long", json!({"k": "v"})).await;
    assert_eq!(get(&store, &c, "long").await.unwrap().expires_at, None);
    cleanup(&store, &c, ["short", "long", "forever"]).await;
}

// ---------------------------------------------------------------------------------------------
// Validation

async fn invalid_collection_names(store: Store) {
    let long = "a".repeat(64);
    let caps = store.capabilities();
    for name in [
        "",
        "1abc",
        "a b",
        "a;drop",
        "a.b",
        "a/b",
        "ä",
        long.as_str(),
    ] {
        let what = |op: &str| format!("{op} in collection {name:?}");
        assert_kind(
            store.get(name, "id").await,
            ErrorKind::InvalidArgument,
            &what("get"),
        );
        assert_kind(
            store
                .put(name, "id", json!({}), PutDocumentOptions::default())
                .await,
            ErrorKind::InvalidArgument,
            &what("put"),
        );
        assert_kind(
            store.delete(name, "id", WriteCondition::Any).await,
            ErrorKind::InvalidArgument,
            &what("delete"),
        );
        assert_kind(
            store.get_many(name, &["id".to_string()]).await,
            ErrorKind::InvalidArgument,
            &what("get_many"),
        );
        if caps.query {
            assert_kind(
                store.query(name, Query::all()).await,
                ErrorKind::InvalidArgument,
                &what("query"),
            );
        }
        if caps.transactions {
            assert_kind(
                store
                    .write_batch(vec![delete_op(name, "id", WriteCondition::Any)])
                    .await,
                ErrorKind::InvalidArgument,
                &what("write_batch"),
            );
        }
    }
    // The longest valid name works.
    let c = format!("{}{}", unique_name("m"), "x".repeat(52));
    assert_eq!(c.len(), 63);
    put(&store, &c, "id", json!({})).await;
    assert!(get(&store, &c, "id").await.is_some());
    cleanup(&store, &c, ["id"]).await;
}

async fn invalid_ids(store: Store) {
    let c = collection();
    let long = "x".repeat(256);
    let caps = store.capabilities();
    for id in ["", long.as_str(), "a\u{0}b", "a\nb", "tab\t", "\u{7f}"] {
        let what = |op: &str| format!("{op} of id {id:?}");
        assert_kind(
            store.get(&c, id).await,
            ErrorKind::InvalidArgument,
            &what("get"),
        );
        assert_kind(
            store
                .put(&c, id, json!({}), PutDocumentOptions::default())
                .await,
            ErrorKind::InvalidArgument,
            &what("put"),
        );
        assert_kind(
            store.delete(&c, id, WriteCondition::Any).await,
            ErrorKind::InvalidArgument,
            &what("delete"),
        );
        assert_kind(
            store
                .get_many(&c, &["ok".to_string(), id.to_string()])
                .await,
            ErrorKind::InvalidArgument,
            &what("get_many"),
        );
        if caps.transactions {
            assert_kind(
                store
                    .write_batch(vec![put_op(
                        &c,
                        id,
                        json!({}),
                        PutDocumentOptions::default(),
                    )])
                    .await,
                ErrorKind::InvalidArgument,
                &what("write_batch"),
            );
        }
    }
    if caps.query {
        let all = query_all(&store, &c, Query::all()).await;
        assert!(all.is_empty(), "nothing written: {:?}", ids(&all));
    }
}

async fn oversized_document(store: Store) {
    let c = collection();
    let Some(max) = store.capabilities().max_document_size else {
        // No limit claimed: a 256 KiB document must simply work.
        let big = json!({"pad": "x".repeat(256 * 1024)});
        put(&store, &c, "big", big.clone()).await;
        assert_eq!(get(&store, &c, "big").await.map(|d| d.value), Some(big));
        cleanup(&store, &c, ["big"]).await;
        return;
    };
    let max = usize::try_from(max)
        .unwrap_or(usize::MAX)
        .min(64 * 1024 * 1024);
    // `{"pad":"…"}` is 10 bytes more than the padding.
    let fits = json!({"pad": "x".repeat(max.saturating_sub(100))});
    let too_big = json!({"pad": "x".repeat(max)});
    put(&store, &c, "fits", fits.clone()).await;
    assert_eq!(
        get(&store, &c, "fits").await.map(|d| d.value),
        Some(fits),
        "just under the limit"
    );
    assert_kind(
        store
            .put(&c, "big", too_big.clone(), PutDocumentOptions::default())
            .await,
        ErrorKind::InvalidArgument,
        "a document over max_document_size",
    );
    assert!(get(&store, &c, "big").await.is_none());
    if store.capabilities().transactions {
        assert_kind(
            store
                .write_batch(vec![put_op(
                    &c,
                    "big",
                    too_big,
                    PutDocumentOptions::default(),
                )])
                .await,
            ErrorKind::InvalidArgument,
            "a batch with a document over max_document_size",
        );
    }
    cleanup(&store, &c, ["fits"]).await;
}

/// `levels` arrays and objects nested in one another, alternating, around a number.
fn nested_document(levels: usize) -> Value {
    let mut v = json!(7);
    for i in 0..levels {
        v = if i % 2 == 0 {
            json!({"k": v})
        } else {
            json!([v])
        };
    }
    v
}

/// Documents nesting up to [`MAX_DOCUMENT_DEPTH`](crate::validate::MAX_DOCUMENT_DEPTH)
/// arrays and objects are stored and read back; deeper ones are `InvalidArgument` at write
/// time, by `put` and `write_batch` alike, and leave the collection readable.
async fn nesting_depth_limit(store: Store) {
    let c = collection();
    let max = crate::validate::MAX_DOCUMENT_DEPTH;
    let deepest = nested_document(max);
    put(&store, &c, "deepest", deepest.clone()).await;
    assert_eq!(
        get(&store, &c, "deepest").await.map(|d| d.value),
        Some(deepest),
        "a document of {max} levels"
    );
    for levels in [max + 1, 200] {
        assert_kind(
            store
                .put(
                    &c,
                    "deeper",
                    nested_document(levels),
                    PutDocumentOptions::default(),
                )
                .await,
            ErrorKind::InvalidArgument,
            &format!("a document of {levels} levels"),
        );
    }
    if store.capabilities().transactions {
        let batch = vec![
            put_op(&c, "fine", json!({"a": 1}), PutDocumentOptions::default()),
            put_op(
                &c,
                "deeper",
                nested_document(max + 1),
                PutDocumentOptions::default(),
            ),
        ];
        assert_kind(
            store.write_batch(batch).await,
            ErrorKind::InvalidArgument,
            "a batch with a document too deep",
        );
        assert!(
            get(&store, &c, "fine").await.is_none(),
            "nothing of the batch"
        );
    }
    assert!(get(&store, &c, "deeper").await.is_none());
    if store.capabilities().query {
        let got = query_all(&store, &c, Query::all()).await;
        assert_eq!(ids(&got), ["deepest"], "the collection stays readable");
        let got = query_all(&store, &c, Query::all().filter(Filter::eq("k.x", 1))).await;
        assert!(got.is_empty(), "a filter over the deep document");
    }
    cleanup(&store, &c, ["deepest"]).await;
}

async fn unclaimed_capabilities(store: Store) {
    let c = collection();
    let caps = store.capabilities();
    put(&store, &c, "doc", json!({"n": 1, "s": "x"})).await;
    let probes = [
        Query::all(),
        Query::all().filter(Filter::eq("n", 1)),
        Query::all().filter(Filter::lt("n", 2)),
        Query::all().filter(Filter::le("n", 2)),
        Query::all().filter(Filter::gt("n", 0)),
        Query::all().filter(Filter::ge("n", 0)),
        Query::all().filter(Filter::is_in("n", vec![json!(1)])),
        Query::all().filter(Filter::prefix("s", "x")),
        Query::all().order_by("n", Direction::Asc),
    ];
    let docs = [("doc", json!({"n": 1, "s": "x"}))];
    for q in probes {
        // Asserts Unsupported exactly when a needed capability is not claimed.
        check_query(&store, &c, &docs, q, None).await;
    }
    if !caps.transactions {
        assert_kind(
            store
                .write_batch(vec![delete_op(&c, "doc", WriteCondition::Any)])
                .await,
            ErrorKind::Unsupported,
            "write_batch without the `transactions` capability",
        );
        assert!(get(&store, &c, "doc").await.is_some(), "nothing deleted");
    }
    if !caps.ttl {
        let opts = PutDocumentOptions {
            ttl: Some(Duration::from_secs(60)),
            ..PutDocumentOptions::default()
        };
        assert_kind(
            store.put(&c, "doc", json!({}), opts).await,
            ErrorKind::Unsupported,
            "put with a TTL without the `ttl` capability",
        );
        assert_eq!(
            get(&store, &c, "doc").await.unwrap().revision,
            Revision(1),
            "unchanged"
        );
    }
    cleanup(&store, &c, ["doc"]).await;
}

// ---------------------------------------------------------------------------------------------
// Model test

/// The condition of a put or delete in the model test, relative to the model's state.
#[derive(Debug, Clone, Copy)]
enum ModelCondition {
    Any,
    Absent,
    RightRevision,
    WrongRevision,
}

#[derive(Debug, Clone)]
enum ModelOp {
    Put {
        id: u8,
        n: i64,
        condition: ModelCondition,
    },
    Delete {
        id: u8,
        condition: ModelCondition,
    },
    Get {
        id: u8,
    },
    Query {
        greater: bool,
        n: i64,
        descending: bool,
        limit: usize,
    },
}

fn model_op() -> impl proptest::strategy::Strategy<Value = ModelOp> {
    use proptest::prelude::*;
    let condition = prop_oneof![
        Just(ModelCondition::Any),
        Just(ModelCondition::Absent),
        Just(ModelCondition::RightRevision),
        Just(ModelCondition::WrongRevision),
    ];
    prop_oneof![
        4 => (0..6u8, 0..5i64, condition.clone())
            .prop_map(|(id, n, condition)| ModelOp::Put { id, n, condition }),
        2 => (0..6u8, condition).prop_map(|(id, condition)| ModelOp::Delete { id, condition }),
        2 => (0..6u8).prop_map(|id| ModelOp::Get { id }),
        2 => (any::<bool>(), 0..5i64, any::<bool>(), 1..4usize).prop_map(
            |(greater, n, descending, limit)| ModelOp::Query { greater, n, descending, limit }
        ),
    ]
}

/// The reference: id -> (value, revision), plus the ids that ever existed.
#[derive(Default)]
struct Model {
    docs: BTreeMap<String, (Value, Revision)>,
    ever: BTreeSet<String>,
}

fn kind_of<T: std::fmt::Debug>(r: &crate::Result<T>) -> Result<(), ErrorKind> {
    match r {
        Ok(_) => Ok(()),
        Err(e) => Err(e.kind()),
    }
}

impl Model {
    fn condition(&self, id: &str, c: ModelCondition) -> WriteCondition {
        let current = self.docs.get(id).map(|(_, r)| *r);
        match (c, current) {
            (ModelCondition::Any, _) => WriteCondition::Any,
            (ModelCondition::Absent, _) => WriteCondition::Absent,
            (ModelCondition::RightRevision, Some(r)) => WriteCondition::Revision(r),
            // "Right" for an absent document is still a revision: it must fail.
            (ModelCondition::RightRevision, None) => WriteCondition::Revision(Revision(1)),
            (ModelCondition::WrongRevision, Some(r)) => WriteCondition::Revision(Revision(r.0 + 7)),
            (ModelCondition::WrongRevision, None) => WriteCondition::Revision(Revision(3)),
        }
    }

    /// The error kind the condition gives, or `None` when it holds.
    fn check(&self, id: &str, condition: WriteCondition) -> Option<ErrorKind> {
        let current = self.docs.get(id).map(|(_, r)| *r);
        match (condition, current) {
            (WriteCondition::Any, _) | (WriteCondition::Absent, None) => None,
            (WriteCondition::Absent, Some(_)) => Some(ErrorKind::AlreadyExists),
            (WriteCondition::Revision(want), Some(r)) if want == r => None,
            (WriteCondition::Revision(_), _) => Some(ErrorKind::PreconditionFailed),
        }
    }
}

async fn run_model_ops(store: &Store, ops: &[ModelOp]) -> Result<(), String> {
    let c = unique_name("model");
    let caps = store.capabilities();
    let mut model = Model::default();
    let result = run_model_steps(store, &c, &caps, ops, &mut model).await;
    // Clean up whatever the sequence left, also after a mismatch.
    for id in model.docs.keys().chain(model.ever.iter()) {
        let _ = store.delete(&c, id, WriteCondition::Any).await;
    }
    result
}

async fn run_model_steps(
    store: &Store,
    c: &str,
    caps: &DatabaseCapabilities,
    ops: &[ModelOp],
    model: &mut Model,
) -> Result<(), String> {
    for (step, op) in ops.iter().enumerate() {
        let at = |msg: String| format!("step {step} ({op:?}): {msg}");
        match *op {
            ModelOp::Put { id, n, condition } => {
                let id = format!("id{id}");
                let condition = model.condition(&id, condition);
                let value = json!({"n": n, "step": step});
                let options = PutDocumentOptions {
                    condition,
                    ttl: None,
                };
                let got = store.put(c, &id, value.clone(), options).await;
                match (model.check(&id, condition), got) {
                    (Some(kind), got) => {
                        if kind_of(&got) != Err(kind) {
                            return Err(at(format!("expected {kind}, got {got:?}")));
                        }
                    }
                    (None, Ok(rev)) => {
                        let ok = match model.docs.get(&id) {
                            Some((_, old)) => rev > *old,
                            None if !model.ever.contains(&id) => rev == Revision(1),
                            None => rev >= Revision(1),
                        };
                        if !ok {
                            return Err(at(format!("unexpected revision {rev}")));
                        }
                        model.docs.insert(id.clone(), (value, rev));
                        model.ever.insert(id);
                    }
                    (None, Err(e)) => return Err(at(format!("expected success, got {e}"))),
                }
            }
            ModelOp::Delete { id, condition } => {
                let id = format!("id{id}");
                let condition = model.condition(&id, condition);
                let got = store.delete(c, &id, condition).await;
                match (model.check(&id, condition), got) {
                    (Some(kind), got) => {
                        if kind_of(&got) != Err(kind) {
                            return Err(at(format!("expected {kind}, got {got:?}")));
                        }
                    }
                    (None, Ok(existed)) => {
                        let expected = model.docs.remove(&id).is_some();
                        if existed != expected {
                            return Err(at(format!(
                                "delete returned {existed}, expected {expected}"
                            )));
                        }
                    }
                    (None, Err(e)) => return Err(at(format!("expected success, got {e}"))),
                }
            }
            ModelOp::Get { id } => {
                let id = format!("id{id}");
                let got = store
                    .get(c, &id)
                    .await
                    .map_err(|e| at(format!("get failed: {e}")))?;
                let got = got.map(|d| (d.value, d.revision));
                let expected = model.docs.get(&id).cloned();
                if got != expected {
                    return Err(at(format!("got {got:?}, expected {expected:?}")));
                }
            }
            ModelOp::Query {
                greater,
                n,
                descending,
                limit,
            } => {
                if !caps.query {
                    continue;
                }
                let filter = if greater && caps.query_range {
                    Filter::gt("n", n)
                } else {
                    Filter::eq("n", n)
                };
                let mut query = Query::all().filter(filter).limit(limit);
                if caps.query_order {
                    let dir = if descending {
                        Direction::Desc
                    } else {
                        Direction::Asc
                    };
                    query = query.order_by("n", dir);
                }
                let mut expected: Vec<Document> = model
                    .docs
                    .iter()
                    .filter(|(_, (v, _))| matches_filters(v, &query.filters))
                    .map(|(id, (v, r))| Document {
                        id: id.clone(),
                        value: v.clone(),
                        revision: *r,
                        expires_at: None,
                    })
                    .collect();
                sort_documents(&mut expected, &query.order_by);
                let mut got = Vec::new();
                let mut q = query.clone();
                for _ in 0..100 {
                    let page = store
                        .query(c, q.clone())
                        .await
                        .map_err(|e| at(format!("query failed: {e}")))?;
                    if page.documents.len() > limit {
                        return Err(at(format!("page of {} over limit", page.documents.len())));
                    }
                    got.extend(page.documents);
                    match page.next_cursor {
                        Some(cursor) => q.cursor = Some(cursor),
                        None => break,
                    }
                }
                let got: Vec<_> = got
                    .into_iter()
                    .map(|d| (d.id, d.value, d.revision))
                    .collect();
                let expected: Vec<_> = expected
                    .into_iter()
                    .map(|d| (d.id, d.value, d.revision))
                    .collect();
                if got != expected {
                    return Err(at(format!("query got {got:?}, expected {expected:?}")));
                }
            }
        }
    }
    Ok(())
}

/// Runs random sequences of puts (unconditional, create, right and wrong revision), deletes,
/// gets and paged queries against a store from `make`, comparing every result with a
/// `BTreeMap` model that tracks revisions. Panics with the minimal failing sequence.
///
/// Synchronous: it builds its own current-thread tokio runtime (call it from a plain
/// `#[test]`), and calls `make` once inside it; each sequence works in a fresh collection.
/// The number of sequences is [`proptest_cases`]`(48)`.
pub fn run_model_test<F, Fut>(make: F)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Arc<dyn DocumentStore>>,
{
    use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("cannot build a tokio runtime: {e}"),
    };
    let store = runtime.block_on(make());
    let config = Config {
        cases: proptest_cases(48),
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let strategy = proptest::collection::vec(model_op(), 1..40);
    let result = runner.run(&strategy, |ops| {
        runtime
            .block_on(run_model_ops(&store, &ops))
            .map_err(TestCaseError::fail)
    });
    match result {
        Ok(()) => {}
        Err(TestError::Fail(why, ops)) => panic!(
            "database model test failed on `{}`: {why}\nminimal sequence: {ops:#?}",
            store.info().backend
        ),
        Err(TestError::Abort(why)) => panic!("database model test aborted: {why}"),
    }
}
