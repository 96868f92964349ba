//! The Redis Streams queue against the real server (SERVICES.md: 127.0.0.1:6379, no auth):
//! the whole queue kit, the peer cases with two separate connections, the model test, the
//! trim rule (never drop what a group still has pending), and a fault test through a TCP
//! proxy that is cut and restored while publishers and consumers run.
//!
//! Each test works in a key namespace of its own (a unique `prefix`) and deletes every key of
//! it at the end (SCAN + DEL), whatever the outcome.
#![cfg(feature = "redis")]

mod support;

use cloud_abstraction::queue::{GroupOptions, Message, MessageQueue, ReceiveOptions};
use cloud_abstraction::testkit::{queue, unique_name};
use cloud_abstraction::{ErrorKind, Location};
use paas_components::queue::RedisStreamsQueue;
use redis::Value;
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::TcpProxy;
use support::queue_faults::{self, NothingPending, QueueFault};

const DEFAULT_URL: &str = "redis://127.0.0.1:6379/0";

async fn url() -> Option<String> {
    support::server_url("REDIS_TEST_URL", DEFAULT_URL, "127.0.0.1:6379").await
}

fn with_prefix(url: &str, ns: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}prefix={ns}")
}

/// Runs `test` in a fresh namespace and deletes the namespace afterwards, also on failure.
async fn in_namespace<F, Fut>(url: &str, test: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let ns = unique_name("mq-");
    let outcome = tokio::spawn(test(ns.clone())).await;
    support::redis_drop_namespace(url, &ns).await;
    outcome.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
}

async fn direct(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn xlen(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> u64 {
    redis::cmd("XLEN").arg(key).query_async(conn).await.unwrap()
}

fn opts(max: usize, wait_ms: u64) -> ReceiveOptions {
    ReceiveOptions {
        max_messages: max,
        wait: Duration::from_millis(wait_ms),
    }
}

fn body(m: &cloud_abstraction::queue::ReceivedMessage) -> String {
    String::from_utf8_lossy(&m.body).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite() {
    let Some(url) = url().await else { return };
    let u = url.clone();
    in_namespace(&url, |ns| async move {
        let q = RedisStreamsQueue::connect(&with_prefix(&u, &ns))
            .await
            .unwrap()
            .with_location(Location::new("onprem", "lab"));
        assert_eq!(q.namespace(), ns);
        assert_eq!(q.info().backend, "redis-streams");
        let report = queue::run_suite(Arc::new(q)).await;
        assert!(report.failed.is_empty());
        assert_eq!(report.passed.len(), queue::cases().len());
        // The kit deletes its topics: nothing of the namespace is left.
        let mut conn = direct(&u).await;
        let left: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{{{ns}}}:*"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(left.is_empty(), "the suite left keys behind: {left:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_suite_on_two_connections() {
    let Some(url) = url().await else { return };
    let u = url.clone();
    in_namespace(&url, |ns| async move {
        let a = RedisStreamsQueue::connect(&with_prefix(&u, &ns))
            .await
            .unwrap();
        let b = RedisStreamsQueue::connect(&with_prefix(&u, &ns))
            .await
            .unwrap();
        let report = queue::run_peer_suite(Arc::new(a), Arc::new(b)).await;
        assert_eq!(report.passed.len(), queue::peer_cases().len());
    })
    .await;
}

#[test]
fn model_test() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Some(url) = rt.block_on(url()) else {
        return;
    };
    let ns = unique_name("mq-");
    let outcome = std::panic::catch_unwind(|| {
        queue::run_model_test(|| async {
            Arc::new(
                RedisStreamsQueue::connect(&url)
                    .await
                    .unwrap()
                    .with_namespace(&ns)
                    .unwrap(),
            ) as Arc<dyn MessageQueue>
        })
    });
    rt.block_on(support::redis_drop_namespace(&url, &ns));
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

#[tokio::test]
async fn bad_urls_fail_cleanly_without_echoing_secrets() {
    for bad in [
        "redis://app:hunter2@[::1:6379/0",
        "nats://app:hunter2@127.0.0.1:6379/0",
        "redis://app:hunter2@127.0.0.1:6379/0?prefix=bad%20name",
        "redis://app:hunter2@127.0.0.1:6379/0?ca_file=/etc/hosts",
    ] {
        let err = RedisStreamsQueue::connect(bad).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{bad}: {err}");
        assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");
    }
    let err = RedisStreamsQueue::connect("redis://app:hunter2@127.0.0.1:1/0")
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opened_by_url_through_the_registry() {
    let Some(url) = url().await else { return };
    let u = url.clone();
    in_namespace(&url, |ns| async move {
        let q = paas_components::registry::open_queue(&format!(
            "{}&region=eu-1&provider=onprem",
            with_prefix(&u, &ns)
        ))
        .await
        .unwrap();
        assert_eq!(q.info().backend, "redis-streams");
        assert_eq!(q.info().location.region, "eu-1");
        q.create_topic("t").await.unwrap();
        q.create_group("t", "g", GroupOptions::default())
            .await
            .unwrap();
        q.publish("t", Message::new("via registry")).await.unwrap();
        let got = q.receive("t", "g", opts(1, 2000)).await.unwrap();
        assert_eq!(body(&got[0]), "via registry");
        // The documented layout: the topic is the stream `{ns}:s:t`.
        let mut conn = direct(&u).await;
        assert_eq!(xlen(&mut conn, &format!("{{{ns}}}:s:t")).await, 1);
        q.ack("t", "g", &got[0].receipt).await.unwrap();
    })
    .await;
}

/// A slow group keeps the entries a fast group has acknowledged: the trim only removes what
/// every group has acknowledged, and the slow group gets every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimming_never_drops_pending_entries() {
    let Some(url) = url().await else { return };
    let u = url.clone();
    in_namespace(&url, |ns| async move {
        let q = RedisStreamsQueue::connect(&with_prefix(&u, &ns))
            .await
            .unwrap();
        let mut conn = direct(&u).await;
        let stream = format!("{{{ns}}}:s:trim");
        q.create_topic("trim").await.unwrap();
        // Without groups a topic keeps nothing.
        q.publish("trim", Message::new("nobody")).await.unwrap();
        assert_eq!(xlen(&mut conn, &stream).await, 0);
        let long = GroupOptions {
            ack_deadline: Duration::from_secs(1),
            ..GroupOptions::default()
        };
        q.create_group("trim", "fast", long.clone()).await.unwrap();
        q.create_group("trim", "slow", long).await.unwrap();
        let sent: Vec<String> = (0..50).map(|i| format!("m{i:02}")).collect();
        q.publish_batch(
            "trim",
            sent.iter().map(|s| Message::new(s.clone())).collect(),
        )
        .await
        .unwrap();
        // The fast group takes and acknowledges everything.
        let mut fast = Vec::new();
        while fast.len() < 50 {
            let got = q.receive("trim", "fast", opts(50, 500)).await.unwrap();
            for m in got {
                q.ack("trim", "fast", &m.receipt).await.unwrap();
                fast.push(body(&m));
            }
        }
        assert_eq!(xlen(&mut conn, &stream).await, 50, "slow has read nothing");
        // The slow group reads 20, acknowledges the first 10 and leaves 10 pending.
        let slow_first = q.receive("trim", "slow", opts(20, 500)).await.unwrap();
        assert_eq!(slow_first.len(), 20);
        for m in &slow_first[..10] {
            q.ack("trim", "slow", &m.receipt).await.unwrap();
        }
        // A receive trims: to the slow group's oldest pending entry, no further.
        assert!(
            q.receive("trim", "fast", opts(10, 0))
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(xlen(&mut conn, &stream).await, 40);
        // Past the 1 s deadline the pending 10 come back, intact, then the other 30.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert!(
            q.receive("trim", "fast", opts(10, 0))
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(xlen(&mut conn, &stream).await, 40, "pending entries kept");
        let mut slow: BTreeSet<String> = slow_first[..10].iter().map(body).collect();
        let start = Instant::now();
        while slow.len() < 50 && start.elapsed() < Duration::from_secs(15) {
            for m in q.receive("trim", "slow", opts(50, 500)).await.unwrap() {
                q.ack("trim", "slow", &m.receipt).await.unwrap();
                slow.insert(body(&m));
            }
        }
        assert_eq!(slow, sent.iter().cloned().collect::<BTreeSet<_>>());
        assert!(
            q.receive("trim", "slow", opts(10, 0))
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            xlen(&mut conn, &stream).await,
            0,
            "all acknowledged: trimmed"
        );
        // Deleting the last group lets the topic drop what only that group still had.
        q.publish("trim", Message::new("late")).await.unwrap();
        q.delete_group("trim", "fast").await.unwrap();
        assert_eq!(xlen(&mut conn, &stream).await, 1, "slow has not read it");
        q.delete_group("trim", "slow").await.unwrap();
        assert_eq!(xlen(&mut conn, &stream).await, 0);
        q.delete_topic("trim").await.unwrap();
    })
    .await;
}

/// A receive is the housekeeping script with a plain `XREADGROUP` pipelined behind it, which
/// asks for the receive's maximum whatever the script claims: when expired leases and new
/// entries together exceed it, the new ones past it are given back, and come again as first
/// attempts (not lost, not counted as delivered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_entries_read_past_the_maximum_are_given_back() {
    let Some(url) = url().await else { return };
    let u = url.clone();
    in_namespace(&url, |ns| async move {
        let q = RedisStreamsQueue::connect(&with_prefix(&u, &ns))
            .await
            .unwrap();
        q.create_topic("back").await.unwrap();
        let short = GroupOptions {
            ack_deadline: Duration::from_secs(1),
            ..GroupOptions::default()
        };
        q.create_group("back", "g", short).await.unwrap();
        for name in ["m0", "m1", "m2"] {
            q.publish("back", Message::new(name)).await.unwrap();
        }
        let first = q.receive("back", "g", opts(2, 500)).await.unwrap();
        assert_eq!(first.iter().map(body).collect::<Vec<_>>(), ["m0", "m1"]);
        // Their leases run out; two more are published.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        for name in ["n0", "n1"] {
            q.publish("back", Message::new(name)).await.unwrap();
        }
        // The two expired come first, as second attempts; m2 and n0, read in the same look,
        // are given back.
        let again = q.receive("back", "g", opts(2, 0)).await.unwrap();
        assert_eq!(again.iter().map(body).collect::<Vec<_>>(), ["m0", "m1"]);
        assert!(again.iter().all(|m| m.attempt == 2), "{again:?}");
        // The old receipts of m0 and m1 are stale, not applied to the new deliveries.
        for m in &first {
            assert_eq!(
                q.ack("back", "g", &m.receipt).await.unwrap_err().kind(),
                ErrorKind::PreconditionFailed
            );
        }
        for m in &again {
            q.ack("back", "g", &m.receipt).await.unwrap();
        }
        let mut rest = Vec::new();
        while rest.len() < 3 {
            let got = q.receive("back", "g", opts(10, 500)).await.unwrap();
            assert!(!got.is_empty(), "only {rest:?} came back");
            rest.extend(got);
        }
        let mut names: Vec<String> = rest.iter().map(body).collect();
        names.sort();
        assert_eq!(names, ["m2", "n0", "n1"]);
        assert!(rest.iter().all(|m| m.attempt == 1), "{rest:?}");
        for m in &rest {
            q.ack("back", "g", &m.receipt).await.unwrap();
        }
        assert!(
            q.receive("back", "g", opts(10, 0))
                .await
                .unwrap()
                .is_empty()
        );
        q.delete_topic("back").await.unwrap();
    })
    .await;
}

/// The number of entries pending for `group` of `topic` in namespace `ns` (XPENDING), asked
/// over a connection of its own.
async fn pending_count(url: &str, ns: &str, topic: &str, group: &str) -> Value {
    let mut conn = direct(url).await;
    let pending: Value = redis::cmd("XPENDING")
        .arg(format!("{{{ns}}}:s:{topic}"))
        .arg(group)
        .query_async(&mut conn)
        .await
        .unwrap();
    let Value::Array(summary) = pending else {
        panic!("XPENDING summary: {pending:?}")
    };
    summary.into_iter().next().expect("XPENDING count")
}

/// The connection goes through a proxy that is cut while publishers and a consumer run, then
/// restored: the shared scenario (`support::queue_faults`), with XPENDING settling acks that
/// failed but may have been applied, and checked again at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_cut_and_restore_loses_nothing() {
    let Some(url) = url().await else { return };
    let u = url.clone();
    in_namespace(&url, |ns| async move {
        let proxy = TcpProxy::start(&support::target_of(&u)).await;
        let q: Arc<dyn MessageQueue> = Arc::new(
            RedisStreamsQueue::connect(&with_prefix(&support::via(&u, proxy.addr()), &ns))
                .await
                .unwrap()
                .with_timeout(Duration::from_secs(2)),
        );
        let (direct_url, namespace) = (u.clone(), ns.clone());
        let nothing_pending: NothingPending = Box::new(move |topic, group| {
            let (url, ns) = (direct_url.clone(), namespace.clone());
            Box::pin(async move { pending_count(&url, &ns, &topic, &group).await == Value::Int(0) })
        });
        let report = queue_faults::cut_and_restore(QueueFault {
            queue: Arc::clone(&q),
            proxy: &proxy,
            group_options: GroupOptions {
                ack_deadline: Duration::from_secs(2),
                ..GroupOptions::default()
            },
            cut_for: Duration::from_secs(2),
            redelivery: Duration::from_secs(2),
            ack_commit: Duration::ZERO,
            acks_final: true,
            receive_fails_while_cut: true,
            ack_fails_while_cut: true,
            acks_may_go_stale: false,
            nothing_pending: Some(nothing_pending),
        })
        .await;
        println!("{report}");
        assert_eq!(
            pending_count(&u, &ns, &report.topic, &report.group).await,
            Value::Int(0),
            "nothing left pending"
        );
        q.delete_topic(&report.topic).await.unwrap();
    })
    .await;
}
