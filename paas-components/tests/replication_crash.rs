//! The crash run: a writer process is killed with SIGKILL in the middle of a workload while
//! cloud B is cut; a new process, built over the same members, finds the dead writer's hints,
//! replays them, and nothing the dead writer had acknowledged is lost.
//!
//! This test binary has no libtest harness: run without arguments it is the test (it starts
//! itself again as the writer, with `REPLICATION_CRASH_ROLE=writer`). The writer logs each
//! operation's start and acknowledgement to a file as it goes (appended and flushed before
//! the next step, so a SIGKILL loses nothing written before it).

#[cfg(all(feature = "postgres", feature = "mysql"))]
mod support;

#[cfg(all(feature = "postgres", feature = "mysql"))]
mod crash {
    use super::support::{self, TcpProxy, jepsen, target_of, via};
    use cloud_abstraction::DocumentStore;
    use cloud_abstraction::database::{PutDocumentOptions, WriteCondition};
    use cloud_abstraction::testkit::unique_name;
    use paas_components::database::{MysqlDocumentStore, PostgresDocumentStore};
    use paas_components::layers::CircuitBreakerConfig;
    use paas_components::multicloud::ReplicatedDocumentStore;
    use paas_components::multicloud::replicate::ReplicationBuilder;
    use rand::{Rng, SeedableRng};
    use serde_json::json;
    use std::io::Write;
    use std::sync::Arc;
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
    const MYSQL_URL: &str = "mysql://root@127.0.0.1:3306/test";
    const COLLECTION: &str = "vehicles";
    const KEYS: usize = 200;

    fn now_ms() -> u128 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_micros()
    }

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
            .breaker(CircuitBreakerConfig {
                consecutive_failures: 3,
                open_for: Duration::from_millis(500),
                successes_to_close: 2,
                ..Default::default()
            })
            .origin(format!("crash-{}", std::process::id()))
            .build()
            .await
            .unwrap()
    }

    /// The writer: puts and deletes until killed, logging `S key seq kind micros` before and
    /// `A key seq micros` after each acknowledged operation.
    pub(crate) async fn writer() {
        let var = |k: &str| std::env::var(k).unwrap();
        let store = store(&var("CRASH_PG"), &var("CRASH_MYSQL"), &var("CRASH_TABLE")).await;
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(var("CRASH_LOG"))
            .unwrap();
        let log = Arc::new(std::sync::Mutex::new(log));
        let tasks: Vec<_> = (0..8)
            .map(|w| {
                let store = store.clone();
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
                            now_ms()
                        )
                        .unwrap();
                        let ok = if delete {
                            store
                                .delete(COLLECTION, &id, WriteCondition::Any)
                                .await
                                .is_ok()
                        } else {
                            store
                                .put(
                                    COLLECTION,
                                    &id,
                                    json!({"w": w, "s": tag}),
                                    PutDocumentOptions::default(),
                                )
                                .await
                                .is_ok()
                        };
                        if ok {
                            writeln!(log.lock().unwrap(), "A {key} {tag} {}", now_ms()).unwrap();
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
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("ops.log");
        std::fs::write(&log_path, "").unwrap();
        let base = Instant::now();
        let base_us = now_ms();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .env("REPLICATION_CRASH_ROLE", "writer")
            .env("CRASH_PG", &pg)
            .env("CRASH_MYSQL", &proxied)
            .env("CRASH_TABLE", &table)
            .env("CRASH_LOG", &log_path)
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        proxy.cut().await;
        println!("crash_run: cloud B cut");
        tokio::time::sleep(Duration::from_secs(3)).await;
        child.kill().unwrap(); // SIGKILL on Unix
        let killed = Instant::now();
        let _ = child.wait();
        println!("crash_run: writer killed with SIGKILL");
        proxy.restore();

        let outcome = async {
            let store = store(&pg, &mysql, &table).await;
            if !store.is_behind(1) {
                return Err("the new process did not find the dead writer's hints".to_string());
            }
            let started = Instant::now();
            let mut replayed = 0;
            while store.is_behind(1) {
                if started.elapsed() > Duration::from_secs(60) {
                    return Err("hints did not drain".into());
                }
                replayed += store.replay_hints().await.copied;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let repaired = store.repair_all(COLLECTION).await.map_err(|e| e.to_string())?;
            let a: Arc<dyn DocumentStore> = Arc::new(PostgresDocumentStore::connect_table(&pg, &table).await.unwrap());
            let b: Arc<dyn DocumentStore> = Arc::new(MysqlDocumentStore::connect_table(&mysql, &table).await.unwrap());
            let dump_a = jepsen::dump(&a, COLLECTION).await;
            let dump_b = jepsen::dump(&b, COLLECTION).await;
            let log = std::fs::read_to_string(&log_path).unwrap();
            let ops = history(&log, base, base_us, killed);
            let verdict = jepsen::check(&ops, &jepsen::live_state(&dump_a));
            println!(
                "crash_run: operations {}, acknowledged {}, copied by replay {replayed}, repaired {}, lost {}",
                verdict.operations,
                verdict.acknowledged,
                repaired.copied,
                verdict.lost.len()
            );
            if verdict.acknowledged < 50 {
                return Err(format!("too little progress: {verdict:?}"));
            }
            if !verdict.lost.is_empty() {
                return Err(format!("acknowledged writes lost: {:?}", verdict.lost));
            }
            if dump_a != dump_b {
                return Err("members differ after replay and repair".into());
            }
            Ok(true)
        }
        .await;
        drop_tables(&pg, &mysql, &table).await;
        outcome
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

fn main() {
    #[cfg(all(feature = "postgres", feature = "mysql"))]
    {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        if std::env::var("REPLICATION_CRASH_ROLE").as_deref() == Ok("writer") {
            runtime.block_on(crash::writer());
            return;
        }
        // libtest's flags (e.g. `--list`, a name filter) are not meaningful here.
        if std::env::args().any(|a| a == "--list") {
            println!("crash_run: test");
            return;
        }
        match runtime.block_on(crash::run()) {
            Ok(true) => println!("crash_run: 1 passed, 0 failed"),
            Ok(false) => println!("crash_run: SKIPPED (no servers), 0 passed, 0 failed"),
            Err(e) => {
                println!("crash_run: 0 passed, 1 failed");
                eprintln!("crash_run FAILED: {e}");
                std::process::exit(1);
            }
        }
    }
}
