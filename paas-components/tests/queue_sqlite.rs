//! The SQLite queue: the whole conformance suite, the model test, durability across reopen,
//! and two handles competing on one file.
#![cfg(feature = "sqlite")]

use cloud_abstraction::queue::{GroupOptions, Message, MessageQueue, ReceiveOptions};
use cloud_abstraction::testkit::{assert_kind, queue};
use cloud_abstraction::{ErrorKind, Location};
use paas_components::queue::SqliteQueue;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn url(dir: &tempfile::TempDir, name: &str) -> String {
    format!("sqlite://{}", dir.path().join(name).display())
}

fn now(max: usize) -> ReceiveOptions {
    ReceiveOptions {
        max_messages: max,
        wait: Duration::ZERO,
    }
}

fn deadline(ms: u64) -> GroupOptions {
    GroupOptions {
        ack_deadline: Duration::from_millis(ms),
        ..GroupOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_file() {
    let dir = tempfile::tempdir().unwrap();
    let q: Arc<dyn MessageQueue> =
        Arc::new(SqliteQueue::connect(&url(&dir, "q.db")).await.unwrap());
    let report = queue::run_suite(q).await;
    assert_eq!(report.passed.len(), queue::cases().len());
}

/// Two opens of one file are two handles to one queue: receipts work across them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_conformance_two_opens() {
    let dir = tempfile::tempdir().unwrap();
    let a: Arc<dyn MessageQueue> =
        Arc::new(SqliteQueue::connect(&url(&dir, "q.db")).await.unwrap());
    let b: Arc<dyn MessageQueue> =
        Arc::new(SqliteQueue::connect(&url(&dir, "q.db")).await.unwrap());
    let report = queue::run_peer_suite(a, b).await;
    assert_eq!(report.passed.len(), queue::peer_cases().len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_in_memory() {
    let q: Arc<dyn MessageQueue> = Arc::new(SqliteQueue::connect("sqlite::memory:").await.unwrap());
    queue::run_suite(q).await;
}

#[test]
fn model() {
    let dir = tempfile::tempdir().unwrap();
    let n = AtomicUsize::new(0);
    queue::run_model_test(|| {
        let url = url(
            &dir,
            &format!("model-{}.db", n.fetch_add(1, Ordering::Relaxed)),
        );
        async move { Arc::new(SqliteQueue::connect(&url).await.unwrap()) as Arc<dyn MessageQueue> }
    });
}

#[tokio::test]
async fn info_and_capabilities() {
    let q = SqliteQueue::connect("sqlite::memory:")
        .await
        .unwrap()
        .with_location(Location::new("azure", "westeurope"));
    assert_eq!(q.info().backend, "sqlite");
    assert_eq!(q.info().location, Location::new("azure", "westeurope"));
    assert!(q.capabilities().durable);
    assert_eq!(
        q.capabilities(),
        cloud_abstraction::queue::QueueCapabilities::full()
    );
}

#[tokio::test]
async fn bad_url_is_invalid_argument() {
    assert_kind(
        SqliteQueue::connect("postgres://nope").await,
        ErrorKind::InvalidArgument,
        "non-sqlite URL",
    );
}

#[tokio::test]
async fn unacked_messages_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let url = url(&dir, "durable.db");
    let (leased_id, acked_id, waiting_id);
    {
        let q = SqliteQueue::connect(&url).await.unwrap();
        q.create_topic("t").await.unwrap();
        q.create_group("t", "g", deadline(500)).await.unwrap();
        leased_id = q.publish("t", Message::new("leased")).await.unwrap();
        acked_id = q.publish("t", Message::new("acked")).await.unwrap();
        let got = q.receive("t", "g", now(2)).await.unwrap();
        assert_eq!(got.len(), 2);
        for m in &got {
            if m.id == acked_id {
                q.ack("t", "g", &m.receipt).await.unwrap();
            }
        }
        waiting_id = q
            .publish("t", Message::new("waiting").with_attribute("k", "v"))
            .await
            .unwrap();
        q.close().await;
    }
    let q = SqliteQueue::connect(&url).await.unwrap();
    // The never-received message is there at once; the leased one after its lease expires.
    let mut seen = Vec::new();
    let start = Instant::now();
    while seen.len() < 2 && start.elapsed() < Duration::from_secs(15) {
        let got = q
            .receive(
                "t",
                "g",
                ReceiveOptions {
                    max_messages: 10,
                    wait: Duration::from_millis(500),
                },
            )
            .await
            .unwrap();
        for m in got {
            if m.id == waiting_id {
                assert_eq!(m.attempt, 1);
                assert_eq!(m.attributes.get("k").map(String::as_str), Some("v"));
            } else {
                assert_eq!(m.id, leased_id, "the acknowledged message never comes back");
                assert_eq!(m.attempt, 2);
            }
            q.ack("t", "g", &m.receipt).await.unwrap();
            seen.push(m.id);
        }
    }
    seen.sort();
    let mut want = vec![leased_id, waiting_id];
    want.sort();
    assert_eq!(seen, want);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(q.receive("t", "g", now(10)).await.unwrap().is_empty());
    q.close().await;
    // And the acknowledgements are durable too.
    let q = SqliteQueue::connect(&url).await.unwrap();
    assert!(q.receive("t", "g", now(10)).await.unwrap().is_empty());
    // Topics, groups and options survive: publishing and receiving just works.
    q.publish("t", Message::new("after")).await.unwrap();
    assert_eq!(q.receive("t", "g", now(10)).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_handles_on_one_file_never_share_a_lease() {
    const N: usize = 60;
    let dir = tempfile::tempdir().unwrap();
    let url = url(&dir, "shared.db");
    let a = Arc::new(SqliteQueue::connect(&url).await.unwrap());
    let b = Arc::new(SqliteQueue::connect(&url).await.unwrap());
    a.create_topic("t").await.unwrap();
    a.create_group("t", "g", deadline(60_000)).await.unwrap();
    let ids: HashSet<String> = a
        .publish_batch("t", (0..N).map(|i| Message::new(format!("{i}"))).collect())
        .await
        .unwrap()
        .into_iter()
        .collect();
    let mut tasks = Vec::new();
    for q in [Arc::clone(&a), Arc::clone(&b), a, b] {
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let start = Instant::now();
            let mut empty_in_a_row = 0;
            while empty_in_a_row < 3 && start.elapsed() < Duration::from_secs(20) {
                let got = q
                    .receive(
                        "t",
                        "g",
                        ReceiveOptions {
                            max_messages: 4,
                            wait: Duration::from_millis(200),
                        },
                    )
                    .await
                    .unwrap();
                empty_in_a_row = if got.is_empty() {
                    empty_in_a_row + 1
                } else {
                    0
                };
                for m in got {
                    // Hold the lease a moment so the handles really overlap.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    q.ack("t", "g", &m.receipt).await.unwrap();
                    mine.push(m.id);
                }
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let unique: HashSet<String> = all.iter().cloned().collect();
    assert_eq!(unique.len(), all.len(), "a message was leased twice");
    assert_eq!(unique, ids);
}

#[tokio::test]
async fn stale_receipt_is_rejected() {
    let q = SqliteQueue::connect("sqlite::memory:").await.unwrap();
    q.create_topic("t").await.unwrap();
    q.create_group("t", "g", deadline(200)).await.unwrap();
    q.publish("t", Message::new("x")).await.unwrap();
    let first = q.receive("t", "g", now(1)).await.unwrap().remove(0);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let second = q.receive("t", "g", now(1)).await.unwrap().remove(0);
    assert_eq!(second.attempt, 2);
    assert_kind(
        q.ack("t", "g", &first.receipt).await,
        ErrorKind::PreconditionFailed,
        "ack with the first delivery's receipt",
    );
    assert_kind(
        q.extend_deadline("t", "g", &first.receipt, Duration::from_secs(5))
            .await,
        ErrorKind::PreconditionFailed,
        "extend with the first delivery's receipt",
    );
    q.ack("t", "g", &second.receipt).await.unwrap();
    q.ack("t", "g", &second.receipt).await.unwrap();
    assert_kind(
        q.nack("t", "g", &second.receipt, Duration::ZERO).await,
        ErrorKind::PreconditionFailed,
        "nack after ack",
    );
}

#[tokio::test]
async fn acked_messages_are_deleted_from_the_file() {
    // Garbage collection: nothing remains once every group acknowledged.
    let dir = tempfile::tempdir().unwrap();
    let q = SqliteQueue::connect(&url(&dir, "gc.db")).await.unwrap();
    q.create_topic("t").await.unwrap();
    q.create_group("t", "g1", GroupOptions::default())
        .await
        .unwrap();
    q.create_group("t", "g2", GroupOptions::default())
        .await
        .unwrap();
    q.publish("t", Message::new("x")).await.unwrap();
    for g in ["g1", "g2"] {
        let m = q.receive("t", g, now(1)).await.unwrap().remove(0);
        q.ack("t", g, &m.receipt).await.unwrap();
    }
    q.close().await;
    let pool = sqlx::SqlitePool::connect(&url(&dir, "gc.db"))
        .await
        .unwrap();
    let (messages,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM mq_messages")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(messages, 0);
}

/// A receive wait too long for the clock is `InvalidArgument`, not an overflow panic.
#[tokio::test]
async fn huge_receive_wait_is_invalid_argument() {
    let q = SqliteQueue::connect("sqlite::memory:").await.unwrap();
    q.create_topic("t").await.unwrap();
    q.create_group("t", "g", GroupOptions::default())
        .await
        .unwrap();
    let forever = ReceiveOptions {
        max_messages: 1,
        wait: Duration::MAX,
    };
    assert_kind(
        q.receive("t", "g", forever).await,
        ErrorKind::InvalidArgument,
        "receive with a wait of Duration::MAX",
    );
}

/// `synchronous` is per connection, so every connection the pool opens must run with
/// `FULL` (2): with `NORMAL` (1) an acknowledged publish or ack may be lost on power loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_fsyncs_each_commit() {
    let dir = tempfile::tempdir().unwrap();
    let q = SqliteQueue::connect(&url(&dir, "sync.db")).await.unwrap();
    q.create_topic("t").await.unwrap();
    // Hold connections at once so that the pool opens new ones up to its limit (4).
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(q.pool().acquire().await.unwrap());
    }
    for conn in &mut held {
        let (sync,): (i64,) = sqlx::query_as("PRAGMA synchronous")
            .fetch_one(&mut **conn)
            .await
            .unwrap();
        assert_eq!(sync, 2, "PRAGMA synchronous must be FULL (2)");
        let (mode,): (String,) = sqlx::query_as("PRAGMA journal_mode")
            .fetch_one(&mut **conn)
            .await
            .unwrap();
        assert_eq!(mode, "wal");
    }
    drop(held);
    q.close().await;
}

/// `sqlite://` names no file: sqlx would open a private temporary database (not durable). The
/// queue refuses it exactly as the SQLite document store does (one shared URL reading).
#[tokio::test]
async fn a_url_without_a_path_is_refused_like_the_document_store() {
    for url in ["sqlite://", "sqlite:", "sqlite://?mode=rwc"] {
        let queue_err = match paas_components::open_queue(url).await {
            Ok(_) => panic!("{url}: opened a queue"),
            Err(err) => err,
        };
        let store_err = match paas_components::open_document_store(url).await {
            Ok(_) => panic!("{url}: opened a document store"),
            Err(err) => err,
        };
        assert_eq!(
            queue_err.kind(),
            ErrorKind::InvalidArgument,
            "{url}: {queue_err}"
        );
        assert_eq!(
            store_err.kind(),
            ErrorKind::InvalidArgument,
            "{url}: {store_err}"
        );
        assert_eq!(queue_err.message(), store_err.message(), "{url}");
        for form in [
            "sqlite:///abs/path.db",
            "sqlite://relative.db",
            "sqlite::memory:",
        ] {
            assert!(queue_err.to_string().contains(form), "{queue_err}");
        }
    }
}

/// A database file that cannot be opened is a configuration error with a kind that says what
/// to fix, the same for the queue and the document store (the queue said `Internal`, the
/// store `Unavailable`). Mode 000 does not stop root, so the cases use the file system's
/// shape: a directory where the file should be and a regular file as a parent are
/// `InvalidArgument`; a missing directory, or a missing file under `mode=rw`, `NotFound`.
#[tokio::test]
async fn unopenable_files_are_configuration_errors_alike_for_queue_and_store() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("plain"), b"x").unwrap();
    std::fs::create_dir(dir.path().join("adir")).unwrap();
    let d = dir.path().display();
    for (url, kind) in [
        (format!("sqlite://{d}/adir"), ErrorKind::InvalidArgument),
        (
            format!("sqlite://{d}/plain/x.db"),
            ErrorKind::InvalidArgument,
        ),
        (format!("sqlite://{d}/nodir/x.db"), ErrorKind::NotFound),
        (
            format!("sqlite://{d}/absent.db?mode=rw"),
            ErrorKind::NotFound,
        ),
    ] {
        let queue_err = match paas_components::open_queue(&url).await {
            Ok(_) => panic!("{url}: opened a queue"),
            Err(err) => err,
        };
        let store_err = match paas_components::open_document_store(&url).await {
            Ok(_) => panic!("{url}: opened a document store"),
            Err(err) => err,
        };
        assert_eq!(queue_err.kind(), kind, "{url}: {queue_err}");
        assert_eq!(store_err.kind(), kind, "{url}: {store_err}");
        assert_eq!(queue_err.message(), store_err.message(), "{url}");
    }
    // Nothing was created on the way.
    assert!(!dir.path().join("nodir").exists());
    assert!(!dir.path().join("absent.db").exists());
}
