//! The crash runs: a writer process is killed with SIGKILL in the middle of a workload while
//! cloud B is cut; a new process, built over the same members, finds the dead writer's hints,
//! replays them, and nothing the dead writer had acknowledged is lost. Once for replicated
//! documents (A = PostgreSQL, B = MariaDB) and once for replicated blobs (A = the S3 server
//! moto, B = Azurite).
//!
//! This test binary has no libtest harness: run without arguments it is the test (it starts
//! itself again as the writer, with `REPLICATION_CRASH_ROLE=writer` and `CRASH_KIND`). The
//! writer logs each operation's start and acknowledgement to a file as it goes (appended and
//! flushed before the next step, so a SIGKILL loses nothing written before it).

mod support;

#[cfg(any(
    all(feature = "postgres", feature = "mysql"),
    all(feature = "s3", feature = "azure")
))]
mod crash {
    use super::support::{TcpProxy, jepsen};
    use rand::{Rng, SeedableRng};
    use serde_json::json;
    use std::io::Write;
    use std::sync::Arc;
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    pub(crate) const KEYS: usize = 200;

    fn now_us() -> u128 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_micros()
    }

    pub(crate) fn var(k: &str) -> String {
        std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set"))
    }

    /// The writer: puts and deletes until killed, logging `S key seq kind micros` before and
    /// `A key seq micros` after each acknowledged operation.
    pub(crate) async fn write_until_killed<S: jepsen::Subject>(subject: Arc<S>) {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(var("CRASH_LOG"))
            .unwrap();
        let log = Arc::new(std::sync::Mutex::new(log));
        let tasks: Vec<_> = (0..8)
            .map(|w| {
                let subject = Arc::clone(&subject);
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(w);
                    for seq in 0u64.. {
                        let key = rng.random_range(0..KEYS);
                        let id = jepsen::key_id(key);
                        let delete = rng.random::<f64>() < 0.2;
                        let tag = w * 1_000_000_000 + seq;
                        writeln!(
                            log.lock().unwrap(),
                            "S {key} {tag} {} {}",
                            u8::from(delete),
                            now_us()
                        )
                        .unwrap();
                        let ok = if delete {
                            subject.delete(&id).await.is_ok()
                        } else {
                            subject.put(&id, &json!({"w": w, "s": tag})).await.is_ok()
                        };
                        if ok {
                            writeln!(log.lock().unwrap(), "A {key} {tag} {}", now_us()).unwrap();
                        } else {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    }

    /// Reads the dead writer's log back into the checker's history.
    fn history(log: &str, base: Instant, base_us: u128, killed: Instant) -> Vec<jepsen::Op> {
        let at = |us: u128| base + Duration::from_micros(us.saturating_sub(base_us) as u64);
        let mut ops: std::collections::HashMap<u64, jepsen::Op> = Default::default();
        for line in log.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            match f.as_slice() {
                ["S", key, tag, delete, us] => {
                    let tag: u64 = tag.parse().unwrap();
                    let w = tag / 1_000_000_000;
                    let delete = *delete == "1";
                    ops.insert(
                        tag,
                        jepsen::Op {
                            key: key.parse().unwrap(),
                            kind: if delete {
                                jepsen::OpKind::Delete
                            } else {
                                jepsen::OpKind::Put
                            },
                            value: (!delete).then(|| json!({"w": w, "s": tag})),
                            tag: None,
                            start: at(us.parse().unwrap()),
                            // Unacknowledged: may have taken effect at any time until the kill.
                            end: killed,
                            acknowledged: false,
                        },
                    );
                }
                ["A", _, tag, us] => {
                    if let Some(op) = ops.get_mut(&tag.parse().unwrap()) {
                        op.acknowledged = true;
                        op.end = at(us.parse().unwrap());
                    }
                }
                // The last line may be cut short by the kill.
                _ => {}
            }
        }
        ops.into_values().collect()
    }

    /// A writer killed while B is cut: what the recovering side needs.
    pub(crate) struct Killed {
        pub(crate) log: String,
        base: Instant,
        base_us: u128,
        killed: Instant,
        _dir: tempfile::TempDir,
    }

    impl Killed {
        pub(crate) fn history(&self) -> Vec<jepsen::Op> {
            history(&self.log, self.base, self.base_us, self.killed)
        }
    }

    /// Starts this binary as a writer of `kind` with `env`, cuts `proxy` (cloud B) after
    /// 3 s, kills the writer with SIGKILL 3 s later, and restores the proxy.
    pub(crate) async fn run_and_kill(kind: &str, env: &[(&str, &str)], proxy: &TcpProxy) -> Killed {
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("ops.log");
        std::fs::write(&log_path, "").unwrap();
        let base = Instant::now();
        let base_us = now_us();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap());
        child
            .env("REPLICATION_CRASH_ROLE", "writer")
            .env("CRASH_KIND", kind)
            .env("CRASH_LOG", &log_path);
        for (k, v) in env {
            child.env(k, v);
        }
        let mut child = child.spawn().unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        proxy.cut().await;
        println!("crash_run {kind}: cloud B cut");
        tokio::time::sleep(Duration::from_secs(3)).await;
        child.kill().unwrap(); // SIGKILL on Unix
        let killed = Instant::now();
        let _ = child.wait();
        println!("crash_run {kind}: writer killed with SIGKILL");
        proxy.restore();
        Killed {
            log: std::fs::read_to_string(&log_path).unwrap(),
            base,
            base_us,
            killed,
            _dir: dir,
        }
    }

    /// Replays until member 1 (cloud B) is no longer behind; the number of items copied.
    pub(crate) async fn drain(
        is_behind: impl Fn() -> bool,
        replay: impl AsyncFn() -> u64,
    ) -> Result<u64, String> {
        if !is_behind() {
            return Err("the new process did not find the dead writer's hints".into());
        }
        let started = Instant::now();
        let mut replayed = 0;
        while is_behind() {
            if started.elapsed() > Duration::from_secs(60) {
                return Err("hints did not drain".into());
            }
            replayed += replay().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(replayed)
    }

    /// The verdict on one crash run: progress, nothing lost, members identical.
    pub(crate) fn judge(
        kind: &str,
        verdict: &jepsen::Verdict,
        replayed: u64,
        repaired: u64,
        identical: bool,
    ) -> Result<(), String> {
        println!(
            "crash_run {kind}: operations {}, acknowledged {}, copied by replay {replayed}, repaired {repaired}, lost {}",
            verdict.operations,
            verdict.acknowledged,
            verdict.lost.len()
        );
        if verdict.acknowledged < 50 {
            return Err(format!("{kind}: too little progress: {verdict:?}"));
        }
        if !verdict.lost.is_empty() {
            return Err(format!(
                "{kind}: acknowledged writes lost: {:?}",
                verdict.lost
            ));
        }
        if !identical {
            return Err(format!("{kind}: members differ after replay and repair"));
        }
        Ok(())
    }
}

#[cfg(all(feature = "postgres", feature = "mysql"))]
mod documents {
    use super::crash::{self, var};
    use super::support::{self, TcpProxy, jepsen, target_of, via};
    use cloud_abstraction::DocumentStore;
    use cloud_abstraction::testkit::unique_name;
    use paas_components::database::{MysqlDocumentStore, PostgresDocumentStore};
    use paas_components::multicloud::ReplicatedDocumentStore;
    use paas_components::multicloud::replicate::ReplicationBuilder;
    use std::sync::Arc;
    use std::time::Duration;

    const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
    const MYSQL_URL: &str = "mysql://root@127.0.0.1:3306/test";
    const COLLECTION: &str = "vehicles";

    async fn store(pg: &str, mysql: &str, table: &str) -> ReplicatedDocumentStore {
        let a = PostgresDocumentStore::connect_table(pg, table)
            .await
            .unwrap()
            .with_operation_timeout(Duration::from_secs(2));
        let b = MysqlDocumentStore::connect_table(mysql, table)
            .await
            .unwrap()
            .with_operation_timeout(Duration::from_secs(2));
        ReplicationBuilder::new()
            .member("postgres", Arc::new(a))
            .member("mariadb", Arc::new(b))
            .breaker(jepsen::breaker())
            .origin(format!("crash-{}", std::process::id()))
            .build()
            .await
            .unwrap()
    }

    pub(crate) async fn writer() {
        let store = store(&var("CRASH_PG"), &var("CRASH_MYSQL"), &var("CRASH_TABLE")).await;
        let subject = jepsen::Documents {
            store: Arc::new(store),
            collection: COLLECTION.into(),
        };
        crash::write_until_killed(Arc::new(subject)).await;
    }

    /// `Ok(false)`: skipped (no servers on a developer machine; `server_url` said so).
    pub(crate) async fn run() -> Result<bool, String> {
        let Some(pg) = support::server_url("POSTGRES_TEST_URL", PG_URL, "127.0.0.1:5432").await
        else {
            return Ok(false);
        };
        let Some(mysql) = support::server_url("MYSQL_TEST_URL", MYSQL_URL, "127.0.0.1:3306").await
        else {
            return Ok(false);
        };
        let table = unique_name("crash_");
        let proxy = TcpProxy::start(&target_of(&mysql)).await;
        let proxied = via(&mysql, proxy.addr());
        let killed = crash::run_and_kill(
            "documents",
            &[
                ("CRASH_PG", &pg),
                ("CRASH_MYSQL", &proxied),
                ("CRASH_TABLE", &table),
            ],
            &proxy,
        )
        .await;
        let outcome = async {
            let store = store(&pg, &mysql, &table).await;
            let replayed = crash::drain(
                || store.is_behind(1),
                async || store.replay_hints().await.copied,
            )
            .await?;
            let repaired = store
                .repair_all(COLLECTION)
                .await
                .map_err(|e| e.to_string())?;
            let a: Arc<dyn DocumentStore> = Arc::new(
                PostgresDocumentStore::connect_table(&pg, &table)
                    .await
                    .unwrap(),
            );
            let b: Arc<dyn DocumentStore> = Arc::new(
                MysqlDocumentStore::connect_table(&mysql, &table)
                    .await
                    .unwrap(),
            );
            let dump_a = jepsen::dump(&a, COLLECTION).await;
            let dump_b = jepsen::dump(&b, COLLECTION).await;
            let verdict = jepsen::check(&killed.history(), &jepsen::live_state(&dump_a));
            crash::judge(
                "documents",
                &verdict,
                replayed,
                repaired.copied,
                dump_a == dump_b,
            )
        }
        .await;
        drop_tables(&pg, &mysql, &table).await;
        outcome.map(|()| true)
    }

    async fn drop_tables(pg: &str, mysql: &str, table: &str) {
        let pool = sqlx::PgPool::connect(pg).await.unwrap();
        sqlx::query(&format!("DROP TABLE IF EXISTS \"{table}\""))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
        let pool = sqlx::MySqlPool::connect(mysql).await.unwrap();
        sqlx::query(&format!("DROP TABLE IF EXISTS `{table}`"))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }
}

#[cfg(all(feature = "s3", feature = "azure"))]
mod blobs {
    use super::crash::{self, var};
    use super::support::{self, TcpProxy, endpoint_addr, jepsen, via_endpoint};
    use cloud_abstraction::BlobStore;
    use cloud_abstraction::storage::BlobStoreExt;
    use cloud_abstraction::testkit::unique_name;
    use paas_components::multicloud::ReplicatedBlobStore;
    use paas_components::multicloud::replicate::ReplicationBuilder;
    use paas_components::multicloud::replicate::blobs::RESERVED_PREFIX;
    use paas_components::storage::{AzureBlobStore, S3BlobStore};
    use std::sync::Arc;

    const MOTO_URL: &str = "s3://test-bucket?endpoint=http://127.0.0.1:9010&region=us-east-1\
        &access_key_id=motoaccesskey&secret_access_key=motosecretkey&conditional_put=etag";
    const AZURE_URL: &str =
        "azure://test-container?emulator=true&endpoint=http://127.0.0.1:10000/devstoreaccount1";

    fn s3(url: &str) -> Arc<dyn BlobStore> {
        Arc::new(S3BlobStore::from_url(url).unwrap())
    }

    fn azure(url: &str) -> Arc<dyn BlobStore> {
        Arc::new(AzureBlobStore::from_url(url).unwrap())
    }

    /// Member names are the run's own (hints are kept per member name), the same in the
    /// writer and in the process that recovers.
    async fn store(a: Arc<dyn BlobStore>, b: Arc<dyn BlobStore>, run: &str) -> ReplicatedBlobStore {
        ReplicationBuilder::blobs()
            .member(format!("s3-{run}"), a)
            .member(format!("azure-{run}"), b)
            .breaker(jepsen::breaker())
            .origin(format!("crash-{}", std::process::id()))
            .build()
            .await
            .unwrap()
    }

    pub(crate) async fn writer() {
        let run = var("CRASH_RUN");
        let store = store(s3(&var("CRASH_S3")), azure(&var("CRASH_AZURE")), &run).await;
        let subject = jepsen::Blobs {
            store: Arc::new(store),
            prefix: format!("{run}/"),
        };
        crash::write_until_killed(Arc::new(subject)).await;
    }

    pub(crate) async fn run() -> Result<bool, String> {
        let moto_configured = std::env::var("S3_MOTO_TEST_URL").unwrap_or_else(|_| MOTO_URL.into());
        let Some(moto) = support::server_url(
            "S3_MOTO_TEST_URL",
            MOTO_URL,
            &endpoint_addr(&moto_configured),
        )
        .await
        else {
            return Ok(false);
        };
        support::ensure_moto_bucket(&moto).await;
        let azure_configured = std::env::var("AZURE_TEST_URL").unwrap_or_else(|_| AZURE_URL.into());
        let Some(az) = support::server_url(
            "AZURE_TEST_URL",
            AZURE_URL,
            &endpoint_addr(&azure_configured),
        )
        .await
        else {
            return Ok(false);
        };
        let run = unique_name("crash");
        let prefix = format!("{run}/");
        let proxy = TcpProxy::start(&endpoint_addr(&az)).await;
        let proxied = via_endpoint(&az, proxy.addr());
        let killed = crash::run_and_kill(
            "blobs",
            &[
                ("CRASH_S3", &moto),
                ("CRASH_AZURE", &proxied),
                ("CRASH_RUN", &run),
            ],
            &proxy,
        )
        .await;
        let (a, b) = (s3(&moto), azure(&az));
        let outcome = async {
            let store = store(Arc::clone(&a), Arc::clone(&b), &run).await;
            let replayed = crash::drain(
                || store.is_behind(1),
                async || store.replay_hints().await.copied,
            )
            .await?;
            let repaired = store.repair_all(&prefix).await.map_err(|e| e.to_string())?;
            let dump_a = jepsen::dump_blobs(&a, &prefix).await;
            let dump_b = jepsen::dump_blobs(&b, &prefix).await;
            let verdict = jepsen::check(
                &killed.history(),
                &jepsen::live_blob_state(&dump_a, &prefix),
            );
            crash::judge(
                "blobs",
                &verdict,
                replayed,
                repaired.copied,
                dump_a == dump_b,
            )
        }
        .await;
        for store in [&a, &b] {
            for p in [prefix.clone(), format!("{RESERVED_PREFIX}hints/")] {
                for object in store.list_all(&p).await.unwrap_or_default() {
                    if object.key.starts_with(&prefix) || object.key.contains(&run) {
                        let _ = store.delete(&object.key).await;
                    }
                }
            }
        }
        outcome.map(|()| true)
    }
}

#[allow(clippy::vec_init_then_push)] // the pushes depend on features
fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if std::env::var("REPLICATION_CRASH_ROLE").as_deref() == Ok("writer") {
        let kind = std::env::var("CRASH_KIND").unwrap_or_default();
        #[cfg(all(feature = "postgres", feature = "mysql"))]
        if kind == "documents" {
            runtime.block_on(documents::writer());
            return;
        }
        #[cfg(all(feature = "s3", feature = "azure"))]
        if kind == "blobs" {
            runtime.block_on(blobs::writer());
            return;
        }
        panic!("unknown CRASH_KIND {kind:?}");
    }
    // libtest's flags (e.g. `--list`, a name filter) are not meaningful here.
    if std::env::args().any(|a| a == "--list") {
        println!("crash_run: test");
        return;
    }
    // One entry per store whose servers' features are on.
    #[allow(unused_mut)]
    let mut runs: Vec<(&str, Result<bool, String>)> = Vec::new();
    #[cfg(all(feature = "postgres", feature = "mysql"))]
    runs.push(("documents", runtime.block_on(documents::run())));
    #[cfg(all(feature = "s3", feature = "azure"))]
    runs.push(("blobs", runtime.block_on(blobs::run())));
    let (mut passed, mut failed) = (0, 0);
    for (kind, result) in runs {
        match result {
            Ok(true) => passed += 1,
            Ok(false) => println!("crash_run {kind}: SKIPPED (no servers)"),
            Err(e) => {
                failed += 1;
                eprintln!("crash_run {kind} FAILED: {e}");
            }
        }
    }
    drop(runtime);
    println!("crash_run: {passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}
