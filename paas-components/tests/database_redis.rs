//! The Redis document store against the real server (SERVICES.md: 127.0.0.1:6379, no auth):
//! the whole conformance kit, the model test, Redis-specific checks, and a fault test through
//! a TCP proxy that is cut and restored.
//!
//! Each test works in a key namespace of its own (a unique `prefix`) and deletes every key of
//! it at the end (SCAN + DEL), whatever the outcome.
#![cfg(feature = "redis")]

mod support;

use cloud_abstraction::database::{
    Direction, DocumentStore, DocumentStoreExt, PutDocumentOptions, Query, Revision,
    WriteCondition, WriteOp,
};
use cloud_abstraction::testkit::{database, unique_name};
use cloud_abstraction::{ErrorKind, Location};
use paas_components::database::RedisDocumentStore;
use serde_json::json;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use support::TcpProxy;

const DEFAULT_URL: &str = "redis://127.0.0.1:6379/0";

async fn url() -> Option<String> {
    support::server_url("REDIS_TEST_URL", DEFAULT_URL, "127.0.0.1:6379").await
}

fn namespace() -> String {
    unique_name("kit-")
}

fn with_prefix(url: &str, ns: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}prefix={ns}")
}

/// The keys of namespace `ns`, found with SCAN by an independent client.
async fn keys_of(url: &str, ns: &str) -> Vec<String> {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut cursor: u64 = 0;
    let mut out = Vec::new();
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{{{ns}}}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .unwrap();
        out.extend(keys);
        if next == 0 {
            return out;
        }
        cursor = next;
    }
}

/// Deletes every key of namespace `ns` (SCAN + DEL) with an independent client.
async fn drop_namespace(url: &str, ns: &str) {
    let keys = keys_of(url, ns).await;
    if keys.is_empty() {
        return;
    }
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: u64 = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(keys_of(url, ns).await.is_empty(), "namespace {ns} cleaned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite() {
    let Some(url) = url().await else { return };
    let ns = namespace();
    let store = RedisDocumentStore::connect(&with_prefix(&url, &ns))
        .await
        .unwrap()
        .with_location(Location::new("onprem", "lab"));
    assert_eq!(store.namespace(), ns);
    assert_eq!(store.info().backend, "redis");
    assert_eq!(store.info().location.provider, "onprem");
    let store: Arc<dyn DocumentStore> = Arc::new(store);
    let outcome = tokio::spawn(database::run_suite(store)).await;
    // The kit deletes what it wrote; only emptied id indexes may remain (none, in fact,
    // since Redis drops an empty sorted set).
    let left = keys_of(&url, &ns).await;
    drop_namespace(&url, &ns).await;
    let report = outcome.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    assert!(report.failed.is_empty());
    assert_eq!(report.passed.len(), database::cases().len());
    assert!(left.is_empty(), "the suite left keys behind: {left:?}");
}

#[test]
fn model_test() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Some(url) = rt.block_on(url()) else {
        return;
    };
    let ns = namespace();
    let outcome = std::panic::catch_unwind(|| {
        database::run_model_test(|| async {
            Arc::new(
                RedisDocumentStore::connect(&url)
                    .await
                    .unwrap()
                    .with_namespace(&ns)
                    .unwrap(),
            ) as Arc<dyn DocumentStore>
        })
    });
    rt.block_on(drop_namespace(&url, &ns));
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

#[tokio::test]
async fn bad_urls_fail_cleanly_without_echoing_secrets() {
    for bad in [
        "redis://app:hunter2@[::1:6379/0",
        "postgres://app:hunter2@127.0.0.1:6379/0",
        "redis://app:hunter2@127.0.0.1:6379/0?prefix=bad%20name",
        "redis://app:hunter2@127.0.0.1:6379/notadb",
    ] {
        let err = RedisDocumentStore::connect(bad).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{bad}: {err}");
        assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");
    }
    // Nothing listens on port 1: a retryable failure, quickly, and no password in it.
    let started = Instant::now();
    let err = RedisDocumentStore::connect("redis://app:hunter2@127.0.0.1:1/0")
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");
}

#[tokio::test]
async fn a_silent_server_gives_a_bounded_retryable_error() {
    // Accepts connections and never answers: neither connect nor calls may hang.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let started = Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(15),
        RedisDocumentStore::connect(&format!("redis://{addr}/0")),
    )
    .await
    .expect("connect to a silent server hung");
    let elapsed = started.elapsed();
    match result {
        Err(err) => assert!(err.is_retryable(), "{err}"),
        // If the client sends nothing at connect, the first call must time out instead.
        Ok(store) => {
            let store = store.with_timeout(Duration::from_secs(2));
            assert_fails_retryably("get on a silent server", store.get("c", "id")).await;
        }
    }
    assert!(
        elapsed < Duration::from_secs(10),
        "connect took {elapsed:?}"
    );
    holder.abort();
}

#[tokio::test]
async fn namespaces_isolate_and_use_native_expiry() {
    let Some(url) = url().await else { return };
    let (ns_a, ns_b) = (namespace(), namespace());
    let a = RedisDocumentStore::connect(&with_prefix(&url, &ns_a))
        .await
        .unwrap();
    let b = a.clone().with_namespace(&ns_b).unwrap();
    assert!(a.clone().with_namespace("bad name").is_err());
    a.put(
        "cars",
        "v1",
        json!({"in": "a"}),
        PutDocumentOptions::default(),
    )
    .await
    .unwrap();
    assert!(
        b.get("cars", "v1").await.unwrap().is_none(),
        "b sees nothing of a"
    );
    b.put(
        "cars",
        "v1",
        json!({"in": "b"}),
        PutDocumentOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        a.get("cars", "v1").await.unwrap().unwrap().value,
        json!({"in": "a"})
    );

    // The layout documented in the module docs, with the TTL as the key's own expiry.
    let ttl = PutDocumentOptions {
        ttl: Some(Duration::from_secs(600)),
        ..PutDocumentOptions::default()
    };
    a.put("cars", "v2", json!({}), ttl).await.unwrap();
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let pttl: i64 = redis::cmd("PTTL")
        .arg(format!("{{{ns_a}}}:d:cars:v2"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(pttl > 590_000 && pttl <= 600_000, "native expiry: {pttl}");
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(format!("{{{ns_a}}}:i:cars"))
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(members, ["v1", "v2"], "the id index");

    // An expired document lingering in the index is pruned by a query.
    a.put(
        "cars",
        "short",
        json!({}),
        PutDocumentOptions {
            ttl: Some(Duration::from_millis(50)),
            ..PutDocumentOptions::default()
        },
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let all = a.query_all("cars", Query::all()).await.unwrap();
    let ids: Vec<_> = all.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["v1", "v2"]);
    let card: u64 = redis::cmd("ZCARD")
        .arg(format!("{{{ns_a}}}:i:cars"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(card, 2, "the expired id was pruned from the index");

    // `purge` removes every key of the namespace, and only those.
    assert!(a.purge().await.unwrap() >= 2);
    assert!(keys_of(&url, &ns_a).await.is_empty());
    assert!(b.get("cars", "v1").await.unwrap().is_some(), "b untouched");
    drop_namespace(&url, &ns_b).await;
}

#[tokio::test]
async fn keyset_cursors_survive_writes_between_pages() {
    let Some(url) = url().await else { return };
    let ns = namespace();
    let store = RedisDocumentStore::connect(&with_prefix(&url, &ns))
        .await
        .unwrap();
    for i in 0..30 {
        store
            .put(
                "c",
                &format!("k{i:02}"),
                json!({"g": i % 4}),
                PutDocumentOptions::default(),
            )
            .await
            .unwrap();
    }
    for order in [None, Some(Direction::Desc)] {
        let mut query = Query::all().limit(4);
        if let Some(dir) = order {
            query = query.order_by("g", dir);
        }
        let mut seen = Vec::new();
        let mut page_no = 0;
        loop {
            let page = store.query("c", query.clone()).await.unwrap();
            seen.extend(page.documents.iter().map(|d| d.id.clone()));
            // Between pages: new documents everywhere in the order, and one deleted.
            page_no += 1;
            store
                .put(
                    "c",
                    &format!("n{page_no:02}"),
                    json!({"g": page_no % 4}),
                    PutDocumentOptions::default(),
                )
                .await
                .unwrap();
            store
                .put(
                    "c",
                    &format!("a{page_no:02}"),
                    json!({"g": 9}),
                    PutDocumentOptions::default(),
                )
                .await
                .unwrap();
            match page.next_cursor {
                Some(c) => query.cursor = Some(c),
                None => break,
            }
        }
        let unchanged: Vec<String> = (0..30).map(|i| format!("k{i:02}")).collect();
        for id in &unchanged {
            assert_eq!(
                seen.iter().filter(|s| *s == id).count(),
                1,
                "{id} seen exactly once with order {order:?}: {seen:?}"
            );
        }
        let unique: std::collections::HashSet<_> = seen.iter().collect();
        assert_eq!(unique.len(), seen.len(), "no repeats: {seen:?}");
    }

    // A failing batch names the failing op, and nothing is written.
    let err = store
        .write_batch(vec![
            WriteOp::Put {
                collection: "c".into(),
                id: "fresh".into(),
                value: json!({}),
                options: PutDocumentOptions::default(),
            },
            WriteOp::Delete {
                collection: "c".into(),
                id: "k00".into(),
                condition: WriteCondition::Revision(Revision(7)),
            },
        ])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PreconditionFailed);
    assert!(err.message().contains("batch op 1"), "{err}");
    assert!(store.get("c", "fresh").await.unwrap().is_none());
    drop_namespace(&url, &ns).await;
}

/// Calls while the proxy is cut must fail with a retryable kind, within a bound.
async fn assert_fails_retryably<T: std::fmt::Debug>(
    what: &str,
    call: impl Future<Output = cloud_abstraction::Result<T>>,
) {
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(15), call)
        .await
        .unwrap_or_else(|_| panic!("{what} hung while the server was cut off"));
    let err = result.expect_err(what);
    println!(
        "while cut: {what} failed with {} after {:?}",
        err.kind(),
        started.elapsed()
    );
    assert!(err.is_retryable(), "{what}: {err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{what} took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_cut_and_restore_keeps_acknowledged_writes() {
    let Some(url) = url().await else { return };
    let ns = namespace();
    let proxy = TcpProxy::start("127.0.0.1:6379").await;
    let proxied = format!("redis://{}/0?prefix={ns}", proxy.addr());
    let store = Arc::new(
        RedisDocumentStore::connect(&proxied)
            .await
            .unwrap()
            .with_timeout(Duration::from_secs(4)),
    );
    let coll = unique_name("fault");
    let outcome = tokio::spawn(fault_scenario(Arc::clone(&store), proxy, coll)).await;
    drop_namespace(&url, &ns).await;
    outcome.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
}

async fn fault_scenario(store: Arc<RedisDocumentStore>, proxy: TcpProxy, coll: String) {
    // A writer that keeps writing through the cut, recording what was acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (store, coll, stop) = (Arc::clone(&store), coll.clone(), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut failures = 0u32;
            let mut n = 0u32;
            while !stop.load(Ordering::SeqCst) {
                let id = format!("w{n:05}");
                n += 1;
                let started = Instant::now();
                let r = tokio::time::timeout(
                    Duration::from_secs(15),
                    store.put(&coll, &id, json!({"n": n}), PutDocumentOptions::create()),
                )
                .await
                .unwrap_or_else(|_| panic!("put {id} hung"));
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "put {id} took {:?}",
                    started.elapsed()
                );
                match r {
                    Ok(rev) => {
                        assert_eq!(rev, Revision(1));
                        acked.push(id);
                    }
                    Err(e) => {
                        assert!(e.is_retryable(), "put {id} during the cut: {e}");
                        failures += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            (acked, failures)
        })
    };

    // Acknowledged writes before the cut, including a batch.
    for i in 0..20 {
        store
            .put(
                &coll,
                &format!("pre{i:02}"),
                json!({"i": i}),
                PutDocumentOptions::default(),
            )
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    proxy.cut().await;
    // Every kind of call fails retryably and within the bound while the server is away.
    for round in 0..2 {
        assert_fails_retryably(&format!("get #{round}"), store.get(&coll, "pre00")).await;
        assert_fails_retryably(
            "put",
            store.put(&coll, "during", json!({}), PutDocumentOptions::default()),
        )
        .await;
        assert_fails_retryably("delete", store.delete(&coll, "pre01", WriteCondition::Any)).await;
        assert_fails_retryably("query", store.query(&coll, Query::all())).await;
        assert_fails_retryably("get_many", store.get_many(&coll, &["pre00".to_string()])).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.restore();

    // The same handle works again without reopening (bounded polling for the reconnect).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match store.get(&coll, "pre00").await {
            Ok(Some(_)) => break,
            Ok(None) => panic!("an acknowledged document is missing after the cut"),
            Err(e) => {
                assert!(e.is_retryable(), "after restore: {e}");
                assert!(Instant::now() < deadline, "no recovery within 30 s: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let (acked, failures) = writer.await.unwrap();
    println!(
        "fault test: {} acknowledged writes, {failures} failed during the cut",
        acked.len()
    );
    assert!(failures > 0, "the writer saw the cut");
    assert!(!acked.is_empty(), "the writer got acknowledgements");

    // Every acknowledged write is there, with its content.
    let ids: Vec<String> = acked.clone();
    let got = store.get_many(&coll, &ids).await.unwrap();
    for (id, doc) in ids.iter().zip(&got) {
        assert!(doc.is_some(), "acknowledged write {id} lost");
    }
    for i in 0..20 {
        let d = store.get(&coll, &format!("pre{i:02}")).await.unwrap();
        assert_eq!(d.map(|d| d.value), Some(json!({"i": i})), "pre{i:02}");
    }
    // Writes and queries work again on the same handle.
    store
        .put(
            &coll,
            "after",
            json!({"ok": true}),
            PutDocumentOptions::create(),
        )
        .await
        .unwrap();
    let all = store.query_all(&coll, Query::all()).await.unwrap();
    assert!(all.len() >= acked.len() + 21, "query sees everything");
    assert!(all.iter().any(|d| d.id == "after"));
}
