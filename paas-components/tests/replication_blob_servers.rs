//! The replicated blob store against real servers: cloud A is the S3 server (moto, which
//! checks conditional writes atomically) and cloud B is Azurite, each reached through a TCP
//! proxy that the test cuts and restores.
//!
//! - the whole storage conformance kit over the two;
//! - in the manner of Jepsen: eight writers run puts, conditional updates, deletes and
//!   inserts over 200 keys while a seeded nemesis cuts A, heals, cuts B, heals, and cuts both
//!   for a moment; every operation is recorded. After heal, hint replay and repair the checker
//!   asserts: no acknowledged write lost (on each member alone after replay, too), both
//!   members identical (full dumps of bytes, content types and metadata, member ETags aside),
//!   no deleted key back, every provable conflict reported;
//! - a permanent-loss run: A is cut for good mid-workload; everything acknowledged is
//!   readable from B.
//!
//! The seed is printed; `REPLICATION_SEED` replays a run, `REPLICATION_SECONDS` changes the
//! workload's length (default 30 s).
#![cfg(all(feature = "s3", feature = "azure"))]

mod support;

use cloud_abstraction::BlobStore;
use cloud_abstraction::storage::BlobStoreExt;
use cloud_abstraction::testkit::{storage, unique_name};
use futures::FutureExt;
use paas_components::multicloud::ReplicatedBlobStore;
use paas_components::multicloud::replicate::ReplicationBuilder;
use paas_components::multicloud::replicate::blobs::{
    RESERVED_PREFIX, ReplicationMeta, etag_timestamp,
};
use paas_components::storage::{AzureBlobStore, S3BlobStore};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::jepsen::{self, Blobs, Target, Workload, breaker, duration, seed};
use support::{TcpProxy, endpoint_addr, ensure_moto_bucket, server_url, via_endpoint};

const MOTO_DEFAULT_URL: &str = "s3://test-bucket?endpoint=http://127.0.0.1:9010&region=us-east-1\
    &access_key_id=motoaccesskey&secret_access_key=motosecretkey&conditional_put=etag";
const AZURE_DEFAULT_URL: &str =
    "azure://test-container?emulator=true&endpoint=http://127.0.0.1:10000/devstoreaccount1";

struct Cloud {
    name: String,
    /// The member as the replicated store sees it (through the proxy).
    member: Arc<dyn BlobStore>,
    /// The same bucket, reached directly, for dumps.
    direct: Arc<dyn BlobStore>,
    proxy: TcpProxy,
}

type Open = fn(&str) -> Arc<dyn BlobStore>;

/// The server named by `var` (else `default`), as a member through a fresh proxy and
/// directly.
async fn cloud(name: String, var: &str, default: &str, open: Open) -> Option<Cloud> {
    let configured = std::env::var(var).unwrap_or_else(|_| default.to_string());
    let url = server_url(var, default, &endpoint_addr(&configured)).await?;
    let proxy = TcpProxy::start(&endpoint_addr(&url)).await;
    Some(Cloud {
        name,
        member: open(&via_endpoint(&url, proxy.addr())),
        direct: open(&url),
        proxy,
    })
}

/// The scenarios of this file run one at a time: each loads both servers, and each must stay
/// within its time bound however the test harness schedules them.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Both clouds, with member names unique to this run (hints are kept per member name, so
/// runs sharing a bucket never see each other's).
async fn clouds() -> Option<(Cloud, Cloud)> {
    let run = unique_name("");
    let s3: Open = |url| Arc::new(S3BlobStore::from_url(url).unwrap());
    let azure: Open = |url| Arc::new(AzureBlobStore::from_url(url).unwrap());
    let a = cloud(
        format!("s3-{run}"),
        "S3_MOTO_TEST_URL",
        MOTO_DEFAULT_URL,
        s3,
    )
    .await?;
    ensure_moto_bucket(
        &std::env::var("S3_MOTO_TEST_URL").unwrap_or_else(|_| MOTO_DEFAULT_URL.into()),
    )
    .await;
    let b = cloud(
        format!("azure-{run}"),
        "AZURE_TEST_URL",
        AZURE_DEFAULT_URL,
        azure,
    )
    .await?;
    Some((a, b))
}

async fn replicated(a: &Cloud, b: &Cloud, origin: &str) -> ReplicatedBlobStore {
    ReplicationBuilder::blobs()
        .member(&a.name, Arc::clone(&a.member))
        .member(&b.name, Arc::clone(&b.member))
        .breaker(breaker())
        .origin(origin)
        .replay_interval(Duration::from_millis(200))
        .build()
        .await
        .unwrap()
}

async fn cut(cloud: &Cloud, cut: bool) {
    if cut {
        cloud.proxy.cut().await;
    } else {
        cloud.proxy.restore();
    }
}

async fn drained(store: &ReplicatedBlobStore) -> Duration {
    let started = Instant::now();
    while store.is_behind(0) || store.is_behind(1) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "hints did not drain"
        );
        // Reads probe the healed members; the breakers close and the replay runs.
        let _ = store.head("probe").await;
        store.replay_hints().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    started.elapsed()
}

/// Each key's final version and its parent, as timestamps.
fn finals(dump: &[jepsen::BlobEntry], prefix: &str) -> HashMap<usize, (u64, Option<u64>)> {
    dump.iter()
        .filter_map(|(key, md, _, _)| {
            let n = key.strip_prefix(prefix)?.strip_prefix('k')?.parse().ok()?;
            let meta = ReplicationMeta::from_metadata(md)?;
            Some((n, (meta.rv.timestamp, meta.parent.map(|p| p.timestamp))))
        })
        .collect()
}

async fn hints_left(cloud: &Cloud, names: &[&str]) -> usize {
    let mut n = 0;
    for name in names {
        n += cloud
            .direct
            .list_all(&format!("{RESERVED_PREFIX}hints/{name}/"))
            .await
            .unwrap()
            .len();
    }
    n
}

async fn cleanup(cloud: &Cloud, prefix: &str) {
    for object in cloud.direct.list_all(prefix).await.unwrap_or_default() {
        let _ = cloud.direct.delete(&object.key).await;
    }
}

/// Heals both clouds and deletes what the run left: its keys and its members' hints.
async fn finish(a: &Cloud, b: &Cloud, prefix: &str) {
    cut(a, false).await;
    cut(b, false).await;
    for cloud in [a, b] {
        cleanup(cloud, prefix).await;
        for name in [&a.name, &b.name] {
            cleanup(cloud, &format!("{RESERVED_PREFIX}hints/{name}/")).await;
        }
    }
}

/// The kit and the model test delete what they wrote, which leaves tombstones: removes
/// every object under `prefix` written by `origin` (this run's handle).
async fn remove_written_by(a: &Cloud, b: &Cloud, prefix: &str, origin: &str) {
    for cloud in [a, b] {
        for object in cloud.direct.list_all(prefix).await.unwrap_or_default() {
            let head = cloud.direct.head(&object.key).await;
            let meta = head
                .ok()
                .and_then(|m| ReplicationMeta::from_metadata(&m.metadata));
            if meta.is_some_and(|m| m.rv.origin == origin) {
                let _ = cloud.direct.delete(&object.key).await;
            }
        }
    }
    finish(a, b, "unused/").await;
}

#[test]
fn model_test_over_s3_and_azurite() {
    let _serial = ONE_AT_A_TIME.blocking_lock();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let Some((a, b)) = runtime.block_on(clouds()) else {
        return;
    };
    let origin = unique_name("model");
    let store = runtime.block_on(async {
        ReplicationBuilder::blobs()
            .member(&a.name, Arc::clone(&a.member))
            .member(&b.name, Arc::clone(&b.member))
            .breaker(breaker())
            .origin(&origin)
            .without_background_replay()
            .build()
            .await
            .unwrap()
    });
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        storage::run_model_test(|| Arc::new(store.clone()) as Arc<dyn BlobStore>)
    }));
    runtime.block_on(remove_written_by(&a, &b, "model-", &origin));
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kit_over_s3_and_azurite() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Some((a, b)) = clouds().await else { return };
    let origin = unique_name("kit");
    let store = replicated(&a, &b, &origin).await;
    let outcome = AssertUnwindSafe(async {
        let report = storage::run_suite(Arc::new(store.clone())).await;
        assert_eq!(report.passed.len(), storage::cases().len());
        // What the kit writes is replicated: the same object on both.
        let key = format!("{}/x", unique_name("kit-check-"));
        store.put_bytes(&key, "x".into()).await.unwrap();
        let dump_a = jepsen::dump_blobs(&a.direct, &key).await;
        assert_eq!(dump_a.len(), 1);
        assert_eq!(dump_a, jepsen::dump_blobs(&b.direct, &key).await);
    })
    .catch_unwind()
    .await;
    remove_written_by(&a, &b, "kit-", &origin).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Runs the nemesis scenario and checks everything; prints the figures.
async fn scenario(a: &Cloud, b: &Cloud, prefix: &str) {
    let started = Instant::now();
    let seed = seed();
    let duration = duration();
    println!("[s3+azurite] seed {seed}, {} s", duration.as_secs());
    let store = replicated(a, b, "jepsen").await;
    let conflicted = Arc::new(Mutex::new(BTreeSet::new()));
    {
        let conflicted = Arc::clone(&conflicted);
        store.on_conflict(move |c| {
            conflicted.lock().unwrap().insert(c.id.clone());
        });
    }
    let plan = jepsen::nemesis_plan(seed, duration);
    let workload = Workload {
        writers: 8,
        keys: 200,
        duration,
        seed,
    };
    let subject = Blobs {
        store: Arc::new(store.clone()),
        prefix: prefix.to_string(),
    };
    let ops = tokio::spawn(jepsen::run(Arc::new(subject), workload));
    jepsen::run_nemesis(&plan, async |target, c| {
        println!("[s3+azurite] {} {target:?}", if c { "cut" } else { "heal" });
        if matches!(target, Target::A | Target::Both) {
            cut(a, c).await;
        }
        if matches!(target, Target::B | Target::Both) {
            cut(b, c).await;
        }
    })
    .await;
    let ops = ops.await.unwrap();
    cut(a, false).await;
    cut(b, false).await;
    let drain = drained(&store).await;
    // RPO 0: after replay and before any repair, each member alone holds every
    // acknowledged write.
    for cloud in [a, b] {
        let alone = jepsen::check(
            &ops,
            &jepsen::live_blob_state(&jepsen::dump_blobs(&cloud.direct, prefix).await, prefix),
        );
        assert_eq!(
            alone.lost,
            Vec::<String>::new(),
            "{} alone lacks acknowledged writes after replay (seed {seed})",
            cloud.name
        );
    }
    let repaired = store.repair_all(prefix).await.unwrap();
    let dump_a = jepsen::dump_blobs(&a.direct, prefix).await;
    let dump_b = jepsen::dump_blobs(&b.direct, prefix).await;
    let verdict = jepsen::check(&ops, &jepsen::live_blob_state(&dump_a, prefix));
    let provable = jepsen::provable_conflicts(&ops, &finals(&dump_a, prefix), etag_timestamp);
    let reported = conflicted.lock().unwrap().clone();
    jepsen::Outcome {
        label: "s3+azurite",
        seed,
        verdict: &verdict,
        hints: store.hint_counts(),
        drain,
        repaired: &repaired,
        conflicts: store.conflict_count(),
        extra: format!(" (provable {})", provable.len()),
        dump_a: &dump_a,
        dump_b: &dump_b,
    }
    .assert();
    let unreported: Vec<String> = provable
        .iter()
        .map(|k| format!("{prefix}{}", jepsen::key_id(*k)))
        .filter(|k| !reported.contains(k))
        .collect();
    assert_eq!(
        unreported,
        Vec::<String>::new(),
        "conflicts not reported (seed {seed})"
    );
    println!("[s3+azurite] scenario took {:?}", started.elapsed());
    let names = [a.name.as_str(), b.name.as_str()];
    for cloud in [a, b] {
        assert_eq!(
            hints_left(cloud, &names).await,
            0,
            "{} still holds hints",
            cloud.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_and_azurite_under_a_nemesis_lose_nothing() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Some((a, b)) = clouds().await else { return };
    let prefix = format!("{}/", unique_name("jepsen-"));
    let outcome = AssertUnwindSafe(scenario(&a, &b, &prefix))
        .catch_unwind()
        .await;
    finish(&a, &b, &prefix).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_s3_for_good_loses_no_acknowledged_write() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Some((a, b)) = clouds().await else { return };
    let prefix = format!("{}/", unique_name("loss-"));
    let run = async {
        let store = replicated(&a, &b, "loss").await;
        let duration = Duration::from_secs(8);
        let workload = Workload {
            writers: 8,
            keys: 200,
            duration,
            seed: seed(),
        };
        let subject = Blobs {
            store: Arc::new(store.clone()),
            prefix: prefix.clone(),
        };
        let ops = tokio::spawn(jepsen::run(Arc::new(subject), workload));
        tokio::time::sleep(duration / 3).await;
        cut(&a, true).await; // cloud A is gone and never comes back
        let ops = ops.await.unwrap();
        // Everything acknowledged is readable from B, through the store.
        let mut state = HashMap::new();
        let keys: BTreeSet<usize> = ops.iter().map(|o| o.key).collect();
        for key in keys {
            match store
                .get_bytes(&format!("{prefix}{}", jepsen::key_id(key)))
                .await
            {
                Ok(data) => {
                    state.insert(key, serde_json::from_slice::<Value>(&data).unwrap());
                }
                Err(e) if e.kind() == cloud_abstraction::ErrorKind::NotFound => {}
                Err(e) => panic!("read through the store with A gone: {e}"),
            }
        }
        let verdict = jepsen::check(&ops, &state);
        println!(
            "[permanent loss] operations {}, acknowledged {}, hints {}, lost {}",
            verdict.operations,
            verdict.acknowledged,
            store.hint_counts().0,
            verdict.lost.len()
        );
        assert!(verdict.acknowledged > 50);
        assert_eq!(verdict.lost, Vec::<String>::new());
        // B alone holds every value the store reads.
        assert_eq!(
            jepsen::live_blob_state(&jepsen::dump_blobs(&b.direct, &prefix).await, &prefix),
            state
        );
    };
    let outcome = AssertUnwindSafe(run).catch_unwind().await;
    finish(&a, &b, &prefix).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
