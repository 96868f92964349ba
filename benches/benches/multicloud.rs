//! Two clouds at once, measured on the real servers (PostgreSQL = cloud A, MariaDB = cloud B,
//! each behind a loopback TCP proxy that the bench cuts):
//!
//! 1. **Replicated write latency** against each member's own on the same servers in the same
//!    run (criterion; the members alone are the baselines). Target: at most 1.1 times the
//!    slower member's.
//! 2. **Failover time**: with writes running, cloud A is cut; the time from the cut to the
//!    first successful write that started after it, p50 / p99 over 20 cuts, for the
//!    replicated store (acknowledged on B with a hint) and for a failover store (moves to B
//!    once A's breaker opens). Target: p99 under 1 s.
//! 3. **Hint replay throughput** after a 10,000-write outage of cloud B.
//!
//! URLs: `POSTGRES_TEST_URL` / `MYSQL_TEST_URL`, else the defaults of the services list.
//! Without the servers the bench says so and measures nothing. Set `MULTICLOUD_BENCH_CUTS`
//! and `MULTICLOUD_BENCH_HINTS` to change 2 and 3.

use cloud_abstraction::DocumentStore;
use cloud_abstraction::database::PutDocumentOptions;
use criterion::Criterion;
use paas_components::database::{MysqlDocumentStore, PostgresDocumentStore};
use paas_components::layers::CircuitBreakerConfig;
use paas_components::multicloud::replicate::ReplicationBuilder;
use paas_components::multicloud::{FailoverBuilder, ReplicatedDocumentStore};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

/// A loopback proxy that can be cut (drops open connections, refuses new ones) and restored.
struct Proxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let up = Arc::new(AtomicBool::new(true));
        let open: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (up2, open2) = (Arc::clone(&up), Arc::clone(&open));
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    continue;
                }
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut out) = TcpStream::connect(&target).await {
                        let _ = copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                open2.lock().await.push(task);
            }
        });
        Self { addr, up, open }
    }

    async fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for t in self.open.lock().await.drain(..) {
            t.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

fn via(url: &str, addr: SocketAddr) -> String {
    let mut u = url::Url::parse(url).expect("url");
    let _ = u.set_host(Some(&addr.ip().to_string()));
    let _ = u.set_port(Some(addr.port()));
    u.to_string()
}

fn target(url: &str) -> String {
    let u = url::Url::parse(url).expect("url");
    format!(
        "{}:{}",
        u.host_str().unwrap_or("127.0.0.1"),
        u.port_or_known_default().unwrap_or(0)
    )
}

fn breaker() -> CircuitBreakerConfig {
    CircuitBreakerConfig {
        consecutive_failures: 3,
        open_for: Duration::from_millis(500),
        successes_to_close: 2,
        ..Default::default()
    }
}

struct Clouds {
    a: Arc<dyn DocumentStore>,
    b: Arc<dyn DocumentStore>,
    proxy_a: Proxy,
    proxy_b: Proxy,
}

async fn clouds(pg: &str, mysql: &str, table: &str) -> cloud_abstraction::Result<Clouds> {
    let proxy_a = Proxy::start(target(pg)).await;
    let proxy_b = Proxy::start(target(mysql)).await;
    let a = PostgresDocumentStore::connect_table(&via(pg, proxy_a.addr), table)
        .await?
        .with_operation_timeout(Duration::from_secs(2));
    let b = MysqlDocumentStore::connect_table(&via(mysql, proxy_b.addr), table)
        .await?
        .with_operation_timeout(Duration::from_secs(2));
    Ok(Clouds {
        a: Arc::new(a),
        b: Arc::new(b),
        proxy_a,
        proxy_b,
    })
}

async fn replicated(c: &Clouds, origin: &str) -> ReplicatedDocumentStore {
    ReplicationBuilder::new()
        .member("postgres", Arc::clone(&c.a))
        .member("mariadb", Arc::clone(&c.b))
        .breaker(breaker())
        .origin(origin)
        .replay_interval(Duration::from_millis(100))
        .build()
        .await
        .expect("replicated store")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[rank]
}

/// Writes continuously; after each cut, records when the first write started after the cut
/// succeeded.
async fn failover_times(
    store: Arc<dyn DocumentStore>,
    proxy: &Proxy,
    cuts: usize,
    healthy: impl Fn() -> bool,
) -> Vec<Duration> {
    let stop = Arc::new(AtomicBool::new(false));
    let cut_at_us = Arc::new(AtomicU64::new(u64::MAX));
    let first_ok_us = Arc::new(AtomicU64::new(u64::MAX));
    let origin = Instant::now();
    let writer = {
        let (stop, cut_at_us, first_ok_us) = (stop.clone(), cut_at_us.clone(), first_ok_us.clone());
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let started = origin.elapsed().as_micros() as u64;
                let ok = store
                    .put(
                        "failover",
                        &format!("k{}", i % 100),
                        json!({"i": i}),
                        PutDocumentOptions::default(),
                    )
                    .await
                    .is_ok();
                if ok && started >= cut_at_us.load(Ordering::SeqCst) {
                    let _ = first_ok_us.compare_exchange(
                        u64::MAX,
                        origin.elapsed().as_micros() as u64,
                        Ordering::SeqCst,
                        Ordering::SeqCst,
                    );
                }
                if !ok {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        })
    };
    let mut times = Vec::with_capacity(cuts);
    for _ in 0..cuts {
        // Healthy again (breakers closed) before the next cut.
        let wait = Instant::now();
        while !healthy() && wait.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        first_ok_us.store(u64::MAX, Ordering::SeqCst);
        let cut = origin.elapsed().as_micros() as u64;
        cut_at_us.store(cut, Ordering::SeqCst);
        proxy.cut().await;
        let wait = Instant::now();
        while first_ok_us.load(Ordering::SeqCst) == u64::MAX
            && wait.elapsed() < Duration::from_secs(30)
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let ok = first_ok_us.load(Ordering::SeqCst);
        if ok != u64::MAX {
            times.push(Duration::from_micros(ok - cut));
        }
        cut_at_us.store(u64::MAX, Ordering::SeqCst);
        proxy.restore();
    }
    stop.store(true, Ordering::SeqCst);
    let _ = writer.await;
    times.sort();
    times
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let pg = std::env::var("POSTGRES_TEST_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let mysql = std::env::var("MYSQL_TEST_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let table = format!("bench_mc_{}", std::process::id());
    let c = match rt.block_on(clouds(&pg, &mysql, &table)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("multicloud bench: no servers ({e}). Nothing was measured.");
            return;
        }
    };
    let store = rt.block_on(replicated(&c, "bench"));

    // 1. Latency: each member alone and the replicated store, alternated twice.
    let mut criterion = Criterion::default()
        .configure_from_args()
        .sample_size(30)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    let doc = json!({"vin": "WVW00000000000001", "km": 12345, "locked": true});
    for round in 1..=2 {
        let mut group = criterion.benchmark_group(format!("replicated_put_round{round}"));
        for (name, target) in [
            ("postgres_alone", Arc::clone(&c.a)),
            ("mariadb_alone", Arc::clone(&c.b)),
            (
                "replicated",
                Arc::new(store.clone()) as Arc<dyn DocumentStore>,
            ),
        ] {
            let mut i = 0u64;
            group.bench_function(name, |b| {
                b.to_async(&rt).iter(|| {
                    i += 1;
                    let target = Arc::clone(&target);
                    let doc = doc.clone();
                    let id = format!("{name}-{}", i % 200);
                    async move {
                        target
                            .put("latency", &id, doc, PutDocumentOptions::default())
                            .await
                            .expect("put")
                    }
                })
            });
        }
        group.finish();
    }

    // 2. Failover time.
    let cuts = env_usize("MULTICLOUD_BENCH_CUTS", 20);
    let replicated_store: Arc<dyn DocumentStore> = Arc::new(store.clone());
    let s2 = store.clone();
    let times = rt.block_on(failover_times(
        replicated_store,
        &c.proxy_a,
        cuts,
        move || {
            s2.breaker(0)
                .is_some_and(|b| b.state() == paas_components::layers::BreakerState::Closed)
                && !s2.is_behind(0)
        },
    ));
    report(
        "replicated store (write acknowledged on B + hint)",
        &times,
        cuts,
    );
    let (failover, handle) = FailoverBuilder::new()
        .breaker(breaker())
        .document_store(vec![Arc::clone(&c.a), Arc::clone(&c.b)])
        .expect("failover");
    let times = rt.block_on(failover_times(failover, &c.proxy_a, cuts, move || {
        handle
            .breaker(0)
            .is_some_and(|b| b.state() == paas_components::layers::BreakerState::Closed)
    }));
    report(
        "failover store (moves to B when A's breaker opens)",
        &times,
        cuts,
    );

    // 3. Hint replay throughput after an outage of B.
    let writes = env_usize("MULTICLOUD_BENCH_HINTS", 10_000);
    rt.block_on(async {
        let quiet = ReplicationBuilder::new()
            .member("postgres", Arc::clone(&c.a))
            .member("mariadb", Arc::clone(&c.b))
            .breaker(breaker())
            .origin("bench-replay")
            .without_background_replay()
            .build()
            .await
            .expect("store");
        c.proxy_b.cut().await;
        let started = Instant::now();
        let next = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let quiet = quiet.clone();
                let next = Arc::clone(&next);
                tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst) as usize;
                        if i >= writes {
                            return;
                        }
                        quiet
                            .put(
                                "replay",
                                &format!("h{i:06}"),
                                json!({"i": i}),
                                PutDocumentOptions::default(),
                            )
                            .await
                            .expect("write during the outage");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("writer");
        }
        let outage = started.elapsed();
        c.proxy_b.restore();
        tokio::time::sleep(Duration::from_millis(600)).await;
        let _ = quiet.get("replay", "h000000").await;
        let started = Instant::now();
        let mut copied = 0;
        while quiet.is_behind(1) && started.elapsed() < Duration::from_secs(600) {
            copied += quiet.replay_hints().await.copied;
        }
        let took = started.elapsed();
        println!(
            "hint replay: {writes} writes during the outage ({:.0} writes/s with hints), \
             {copied} items replayed in {took:.2?}: {:.0} items/s",
            writes as f64 / outage.as_secs_f64(),
            copied as f64 / took.as_secs_f64()
        );
    });

    rt.block_on(async {
        if let Ok(pool) = sqlx::PgPool::connect(&pg).await {
            let _ = sqlx::query(&format!("DROP TABLE IF EXISTS \"{table}\""))
                .execute(&pool)
                .await;
        }
        if let Ok(pool) = sqlx::MySqlPool::connect(&mysql).await {
            let _ = sqlx::query(&format!("DROP TABLE IF EXISTS `{table}`"))
                .execute(&pool)
                .await;
        }
    });
    criterion.final_summary();
}

fn report(what: &str, times: &[Duration], cuts: usize) {
    if times.is_empty() {
        println!("failover, {what}: no successful write after any of {cuts} cuts");
        return;
    }
    println!(
        "failover, {what}: {} of {cuts} cuts, p50 {:.1?}, p99 {:.1?}, max {:.1?}",
        times.len(),
        percentile(times, 0.5),
        percentile(times, 0.99),
        times[times.len() - 1]
    );
}
