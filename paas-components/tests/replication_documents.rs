//! Active-active replication against real servers, in the manner of Jepsen.
//!
//! Cloud A and cloud B are real servers, each reached through a TCP proxy that the test cuts
//! and restores (SQLite, which has no network, through a fault injector). Eight writers run
//! puts, conditional updates and deletes over 200 keys while a seeded nemesis cuts A, heals,
//! cuts B, heals, and cuts both for a moment. Every operation is recorded. After heal, hint
//! replay and repair the checker asserts: no acknowledged write lost, both members identical
//! (full dumps of the envelopes, member revisions aside), no deleted key back.
//!
//! The seed is printed; set `REPLICATION_SEED` to replay a run, and `REPLICATION_SECONDS` to
//! change the workload's length (default 30 s).
#![cfg(all(
    feature = "postgres",
    feature = "mysql",
    feature = "redis",
    feature = "sqlite"
))]

mod support;

use cloud_abstraction::DocumentStore;
use cloud_abstraction::database::PutDocumentOptions;
use cloud_abstraction::testkit::{database, unique_name};
use futures::FutureExt;
use paas_components::database::{
    MysqlDocumentStore, PostgresDocumentStore, RedisDocumentStore, SqliteDocumentStore,
};
use paas_components::layers::{self, FaultInjector};
use paas_components::multicloud::ReplicatedDocumentStore;
use paas_components::multicloud::replicate::ReplicationBuilder;
use serde_json::Value;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::jepsen::{self, Target, Workload, breaker, duration, seed};
use support::{TcpProxy, target_of, via};

const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const MYSQL_URL: &str = "mysql://root@127.0.0.1:3306/test";
const REDIS_URL: &str = "redis://127.0.0.1:6379/0";
const COLLECTION: &str = "vehicles";

/// A way to take one member away and bring it back.
enum Cut {
    Proxy(TcpProxy),
    Faults(FaultInjector),
}

impl Cut {
    async fn set(&self, cut: bool) {
        match (self, cut) {
            (Cut::Proxy(p), true) => p.cut().await,
            (Cut::Proxy(p), false) => p.restore(),
            (Cut::Faults(f), down) => f.set_down(down),
        }
    }
}

struct Cloud {
    name: &'static str,
    /// The member as the replicated store sees it (through the cut).
    member: Arc<dyn DocumentStore>,
    /// The same data, reached directly, for dumps.
    direct: Arc<dyn DocumentStore>,
    cut: Cut,
}

async fn replicated(a: &Cloud, b: &Cloud, origin: &str) -> ReplicatedDocumentStore {
    ReplicationBuilder::new()
        .member(a.name, Arc::clone(&a.member))
        .member(b.name, Arc::clone(&b.member))
        .breaker(breaker())
        .origin(origin)
        .replay_interval(Duration::from_millis(200))
        .build()
        .await
        .unwrap()
}

async fn drained(store: &ReplicatedDocumentStore) -> Duration {
    let started = Instant::now();
    while store.is_behind(0) || store.is_behind(1) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "hints did not drain"
        );
        // Reads probe the healed members; the breakers close and the replay runs.
        let _ = store.get(COLLECTION, "probe").await;
        store.replay_hints().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    started.elapsed()
}

/// Runs the nemesis scenario on two clouds and checks everything; prints the figures.
async fn scenario(label: &str, a: Cloud, b: Cloud) {
    let seed = seed();
    let duration = duration();
    println!("[{label}] seed {seed}, {} s", duration.as_secs());
    let store = replicated(&a, &b, "jepsen").await;
    let plan = jepsen::nemesis_plan(seed, duration);
    let workload = Workload {
        writers: 8,
        keys: 200,
        duration,
        seed,
    };
    let writer: Arc<dyn DocumentStore> = Arc::new(store.clone());
    let ops = tokio::spawn(jepsen::run_workload(writer, COLLECTION, workload));
    jepsen::run_nemesis(&plan, async |target, cut| {
        println!(
            "[{label}] {:?} {target:?}",
            if cut { "cut" } else { "heal" }
        );
        if matches!(target, Target::A | Target::Both) {
            a.cut.set(cut).await;
        }
        if matches!(target, Target::B | Target::Both) {
            b.cut.set(cut).await;
        }
    })
    .await;
    let ops = ops.await.unwrap();
    a.cut.set(false).await;
    b.cut.set(false).await;
    let drain = drained(&store).await;
    // RPO 0: after the hints are replayed, and before any repair, losing either cloud now
    // would lose nothing: each member alone holds every acknowledged write.
    for cloud in [&a, &b] {
        let alone = jepsen::check(
            &ops,
            &jepsen::live_state(&jepsen::dump(&cloud.direct, COLLECTION).await),
        );
        assert_eq!(
            alone.lost,
            Vec::<String>::new(),
            "{} alone lacks acknowledged writes after replay (seed {seed})",
            cloud.name
        );
    }
    let repaired = store.repair_all(COLLECTION).await.unwrap();
    let dump_a = jepsen::dump(&a.direct, COLLECTION).await;
    let dump_b = jepsen::dump(&b.direct, COLLECTION).await;
    let verdict = jepsen::check(&ops, &jepsen::live_state(&dump_a));
    jepsen::Outcome {
        label,
        seed,
        verdict: &verdict,
        hints: store.hint_counts(),
        drain,
        repaired: &repaired,
        conflicts: store.conflict_count(),
        extra: String::new(),
        dump_a: &dump_a,
        dump_b: &dump_b,
    }
    .assert();
    // Nothing left to replay on either side.
    for cloud in [&a, &b] {
        let hints = jepsen::dump(&cloud.direct, "replication_hints").await;
        assert!(
            hints.is_empty(),
            "{} still holds {} hints",
            cloud.name,
            hints.len()
        );
    }
}

async fn pg_cloud(table: &str) -> Option<Cloud> {
    let url = support::server_url("POSTGRES_TEST_URL", PG_URL, "127.0.0.1:5432").await?;
    let proxy = TcpProxy::start(&target_of(&url)).await;
    let member = PostgresDocumentStore::connect_table(&via(&url, proxy.addr()), table)
        .await
        .unwrap()
        .with_operation_timeout(Duration::from_secs(2));
    let direct = PostgresDocumentStore::connect_table(&url, table)
        .await
        .unwrap();
    Some(Cloud {
        name: "postgres",
        member: Arc::new(member),
        direct: Arc::new(direct),
        cut: Cut::Proxy(proxy),
    })
}

async fn mysql_cloud(table: &str) -> Option<Cloud> {
    let url = support::server_url("MYSQL_TEST_URL", MYSQL_URL, "127.0.0.1:3306").await?;
    let proxy = TcpProxy::start(&target_of(&url)).await;
    let member = MysqlDocumentStore::connect_table(&via(&url, proxy.addr()), table)
        .await
        .unwrap()
        .with_operation_timeout(Duration::from_secs(2));
    let direct = MysqlDocumentStore::connect_table(&url, table)
        .await
        .unwrap();
    Some(Cloud {
        name: "mariadb",
        member: Arc::new(member),
        direct: Arc::new(direct),
        cut: Cut::Proxy(proxy),
    })
}

async fn drop_pg(table: &str) {
    let url = std::env::var("POSTGRES_TEST_URL").unwrap_or_else(|_| PG_URL.into());
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query(&format!("DROP TABLE IF EXISTS \"{table}\""))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}

async fn drop_mysql(table: &str) {
    let url = std::env::var("MYSQL_TEST_URL").unwrap_or_else(|_| MYSQL_URL.into());
    let pool = sqlx::MySqlPool::connect(&url).await.unwrap();
    sqlx::query(&format!("DROP TABLE IF EXISTS `{table}`"))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_and_mariadb_under_a_nemesis_lose_nothing() {
    let table = unique_name("repl_");
    let (Some(a), Some(b)) = (pg_cloud(&table).await, mysql_cloud(&table).await) else {
        return;
    };
    let outcome = AssertUnwindSafe(scenario("postgres+mariadb", a, b))
        .catch_unwind()
        .await;
    drop_pg(&table).await;
    drop_mysql(&table).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_and_sqlite_under_a_nemesis_lose_nothing() {
    let Some(url) = support::server_url("REDIS_TEST_URL", REDIS_URL, "127.0.0.1:6379").await else {
        return;
    };
    let ns = unique_name("repl");
    let proxy = TcpProxy::start(&target_of(&url)).await;
    let sep = |u: &str| if u.contains('?') { '&' } else { '?' };
    let proxied = via(&url, proxy.addr());
    let redis_member =
        RedisDocumentStore::connect(&format!("{proxied}{}prefix={ns}", sep(&proxied)))
            .await
            .unwrap();
    let redis_direct = RedisDocumentStore::connect(&format!("{url}{}prefix={ns}", sep(&url)))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sqlite: Arc<dyn DocumentStore> = Arc::new(
        SqliteDocumentStore::connect(&format!("sqlite://{}/b.db", dir.path().display()))
            .await
            .unwrap(),
    );
    let faults = FaultInjector::new(11);
    let a = Cloud {
        name: "redis",
        member: Arc::new(redis_member),
        direct: Arc::new(redis_direct),
        cut: Cut::Proxy(proxy),
    };
    let b = Cloud {
        name: "sqlite",
        member: layers::document_store(Arc::clone(&sqlite), faults.layer()),
        direct: sqlite,
        cut: Cut::Faults(faults),
    };
    let outcome = AssertUnwindSafe(scenario("redis+sqlite", a, b))
        .catch_unwind()
        .await;
    support::redis_drop_namespace(&url, &ns).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_one_cloud_for_good_loses_no_acknowledged_write() {
    let table = unique_name("repl_");
    let (Some(a), Some(b)) = (pg_cloud(&table).await, mysql_cloud(&table).await) else {
        return;
    };
    let run = async move {
        let store = replicated(&a, &b, "loss").await;
        let duration = Duration::from_secs(8);
        let writer: Arc<dyn DocumentStore> = Arc::new(store.clone());
        let workload = Workload {
            writers: 8,
            keys: 200,
            duration,
            seed: seed(),
        };
        let ops = tokio::spawn(jepsen::run_workload(writer, COLLECTION, workload));
        tokio::time::sleep(duration / 3).await;
        a.cut.set(true).await; // cloud A is gone and never comes back
        let ops = ops.await.unwrap();
        // Everything acknowledged is readable from B, through the store.
        let mut state = HashMap::new();
        let keys: std::collections::BTreeSet<usize> = ops.iter().map(|o| o.key).collect();
        for key in keys {
            if let Some(doc) = store.get(COLLECTION, &jepsen::key_id(key)).await.unwrap() {
                state.insert(key, doc.value);
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
        let dump_b: HashMap<usize, Value> =
            jepsen::live_state(&jepsen::dump(&b.direct, COLLECTION).await);
        assert_eq!(dump_b, state);
    };
    let outcome = AssertUnwindSafe(run).catch_unwind().await;
    drop_pg(&table).await;
    drop_mysql(&table).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kit_over_postgres_and_mariadb() {
    let table = unique_name("repl_");
    let (Some(a), Some(b)) = (pg_cloud(&table).await, mysql_cloud(&table).await) else {
        return;
    };
    let run = async move {
        let store = replicated(&a, &b, "kit").await;
        let report = database::run_suite(Arc::new(store.clone())).await;
        assert!(report.failed.is_empty(), "{:?}", report.failed);
        assert_eq!(report.passed.len(), database::cases().len());
        // The kit's documents are on both members, identical.
        store
            .put(
                "kitcheck",
                "x",
                serde_json::json!({"a": 1}),
                PutDocumentOptions::create(),
            )
            .await
            .unwrap();
        assert_eq!(
            jepsen::dump(&a.direct, "kitcheck").await,
            jepsen::dump(&b.direct, "kitcheck").await
        );
    };
    let outcome = AssertUnwindSafe(run).catch_unwind().await;
    drop_pg(&table).await;
    drop_mysql(&table).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
