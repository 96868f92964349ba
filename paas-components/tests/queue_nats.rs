//! The NATS JetStream queue against the real server (SERVICES.md: 127.0.0.1:4222, JetStream,
//! no auth): the whole conformance kit, the peer cases over two connections, the model test,
//! NATS-specific checks, and a fault test through a TCP proxy that is cut and restored.
//!
//! Each test works under a prefix of its own (`?prefix=…`, a random suffix) and deletes every
//! stream of that prefix at the end, whatever the outcome.
#![cfg(feature = "nats")]

mod support;

use cloud_abstraction::queue::{GroupOptions, Message, MessageQueue, ReceiveOptions};
use cloud_abstraction::testkit::{assert_kind, queue, unique_name};
use cloud_abstraction::{ErrorKind, Location};
use futures::{FutureExt, StreamExt};
use paas_components::queue::NatsQueue;
use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::TcpProxy;

const DEFAULT_URL: &str = "nats://127.0.0.1:4222";

async fn url() -> Option<String> {
    let url = std::env::var("NATS_TEST_URL").unwrap_or_else(|_| DEFAULT_URL.to_string());
    support::server_url("NATS_TEST_URL", DEFAULT_URL, &support::target_of(&url)).await
}

/// A prefix of its own for one test (letters and digits only).
fn prefix() -> String {
    unique_name("t").replace(['-', '_'], "")
}

fn with_prefix(url: &str, prefix: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}prefix={prefix}")
}

/// The streams of `prefix`, listed by an independent client.
async fn streams_of(url: &str, prefix: &str) -> Vec<String> {
    let client = async_nats::connect(url).await.expect("nats connect");
    let js = async_nats::jetstream::new(client);
    let head = format!("{}_", prefix.to_ascii_uppercase());
    let names: Vec<String> = js
        .stream_names()
        .filter_map(|n| async move { n.ok() })
        .collect()
        .await;
    names.into_iter().filter(|n| n.starts_with(&head)).collect()
}

/// Deletes every stream of `prefix` with an independent client and checks none is left.
async fn drop_streams(url: &str, prefix: &str) {
    let client = async_nats::connect(url).await.expect("nats connect");
    let js = async_nats::jetstream::new(client);
    for name in streams_of(url, prefix).await {
        let _ = js.delete_stream(&name).await;
    }
    assert!(
        streams_of(url, prefix).await.is_empty(),
        "streams of {prefix} cleaned"
    );
}

/// Runs `body` and then drops the prefix's streams, also when `body` panicked.
async fn with_cleanup<F: std::future::Future<Output = ()>>(url: &str, prefix: &str, body: F) {
    let outcome = AssertUnwindSafe(body).catch_unwind().await;
    drop_streams(url, prefix).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// A consumer's messages not yet delivered and delivered but not acknowledged, read by an
/// independent client.
async fn consumer_pending(url: &str, stream: &str, consumer: &str) -> (u64, usize) {
    let client = async_nats::connect(url).await.expect("nats connect");
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream(stream).await.expect("the topic's stream");
    let info = stream.consumer_info(consumer).await.expect("consumer info");
    (info.num_pending, info.num_ack_pending)
}

async fn open(url: &str, prefix: &str) -> Arc<dyn MessageQueue> {
    Arc::new(NatsQueue::connect(&with_prefix(url, prefix)).await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    let Some(url) = url().await else { return };
    let p = prefix();
    with_cleanup(&url, &p, async {
        let q = open(&url, &p).await;
        let report = queue::run_suite(q).await;
        assert_eq!(report.passed.len(), queue::cases().len());
        // The kit deletes what it creates: no stream is left behind.
        assert_eq!(streams_of(&url, &p).await, Vec::<String>::new());
    })
    .await;
}

/// Two connections to one server: a receipt from one acknowledges through the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_conformance_two_connections() {
    let Some(url) = url().await else { return };
    let p = prefix();
    with_cleanup(&url, &p, async {
        let report = queue::run_peer_suite(open(&url, &p).await, open(&url, &p).await).await;
        assert_eq!(report.passed.len(), queue::peer_cases().len());
    })
    .await;
}

#[test]
fn model() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Some(url) = rt.block_on(url()) else {
        return;
    };
    let p = prefix();
    let u = url.clone();
    let pp = p.clone();
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        queue::run_model_test(|| {
            let full = with_prefix(&u, &pp);
            async move { Arc::new(NatsQueue::connect(&full).await.unwrap()) as Arc<dyn MessageQueue> }
        })
    }));
    rt.block_on(drop_streams(&url, &p));
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

#[tokio::test]
async fn info_capabilities_and_layout() {
    let Some(url) = url().await else { return };
    let p = prefix();
    with_cleanup(&url, &p, async {
        let q = NatsQueue::connect(&format!(
            "{}&region=eu-west-1&provider=aws",
            with_prefix(&url, &p)
        ))
        .await
        .unwrap();
        assert_eq!(q.info().backend, "nats");
        assert_eq!(q.info().location, Location::new("aws", "eu-west-1"));
        let caps = q.capabilities();
        assert!(caps.durable && caps.nack_delay && caps.dead_letter && caps.portable_receipts);
        assert!(!caps.ordering_keys && !caps.delayed_delivery);
        // The server's 1 MiB max_payload less 128 KiB kept for headers.
        assert_eq!(caps.max_message_size, Some(1024 * 1024 - 128 * 1024));
        q.create_topic("orders").await.unwrap();
        assert_eq!(
            q.stream_name("orders"),
            format!("{}_orders", p.to_ascii_uppercase())
        );
        assert_eq!(
            streams_of(&url, &p).await,
            vec![format!("{}_orders", p.to_ascii_uppercase())]
        );
        // The stream is what the module docs say.
        let client = async_nats::connect(&url).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream(q.stream_name("orders")).await.unwrap();
        let config = stream.info().await.unwrap().config.clone();
        assert_eq!(config.subjects, vec![q.subject("orders")]);
        assert_eq!(
            config.retention,
            async_nats::jetstream::stream::RetentionPolicy::Interest
        );
        assert_eq!(
            config.storage,
            async_nats::jetstream::stream::StorageType::File
        );
        q.create_group("orders", "billing", GroupOptions::default())
            .await
            .unwrap();
        let consumer: async_nats::jetstream::consumer::PullConsumer =
            stream.get_consumer("billing").await.unwrap();
        let info = consumer.cached_info();
        assert_eq!(info.config.ack_wait, Duration::from_secs(30));
        assert_eq!(
            info.config.deliver_policy,
            async_nats::jetstream::consumer::DeliverPolicy::New
        );
        q.delete_topic("orders").await.unwrap();
        assert!(streams_of(&url, &p).await.is_empty());
    })
    .await;
}

#[tokio::test]
async fn bad_urls_are_invalid_argument_and_never_echo_secrets() {
    for bad in [
        "nats://",
        "http://127.0.0.1:4222",
        "nats://127.0.0.1:4222?prefix=a_b",
        "nats://127.0.0.1:4222?prefix=",
        "nats://127.0.0.1:4222/path",
        "nats://u:hunter2@127.0.0.1:4222?secret=hunter2",
    ] {
        let e = NatsQueue::connect(bad).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad}: {e}");
        assert!(!e.to_string().contains("hunter2"), "{bad}: {e}");
    }
    // Nothing listens there: Unavailable, retryable, without the password.
    let e = NatsQueue::connect("nats://u:hunter2@127.0.0.1:1")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(!format!("{e} {e:?}").contains("hunter2"), "{e:?}");
}

#[tokio::test]
async fn opened_by_url_through_the_registry() {
    let Some(url) = url().await else { return };
    let p = prefix();
    with_cleanup(&url, &p, async {
        let q = paas_components::open_queue(&with_prefix(&url, &p))
            .await
            .unwrap();
        assert_eq!(q.info().backend, "nats");
        let topic = unique_name("t");
        q.create_topic(&topic).await.unwrap();
        q.create_group(&topic, "g", GroupOptions::default())
            .await
            .unwrap();
        q.publish(&topic, Message::new("via registry"))
            .await
            .unwrap();
        let got = q
            .receive(&topic, "g", ReceiveOptions::default())
            .await
            .unwrap();
        assert_eq!(&got[0].body[..], b"via registry");
        q.ack(&topic, "g", &got[0].receipt).await.unwrap();
        q.delete_topic(&topic).await.unwrap();
    })
    .await;
}

/// A receipt of one group is refused by another (it would settle that group's message), and
/// attribute names in the server's `Nats-` namespace round-trip without reaching the server.
#[tokio::test]
async fn receipts_are_bound_to_their_group_and_reserved_headers_are_escaped() {
    let Some(url) = url().await else { return };
    let p = prefix();
    with_cleanup(&url, &p, async {
        let q = open(&url, &p).await;
        let topic = unique_name("t");
        q.create_topic(&topic).await.unwrap();
        for g in ["g1", "g2"] {
            q.create_group(&topic, g, GroupOptions::default())
                .await
                .unwrap();
        }
        // `Nats-Expected-Last-Sequence` would make the server refuse the publish if it were
        // sent as the server's header.
        let m = Message::new("x")
            .with_attribute("Nats-Expected-Last-Sequence", "999")
            .with_attribute("padded", " spaced ");
        q.publish(&topic, m.clone()).await.unwrap();
        let got = q
            .receive(&topic, "g1", ReceiveOptions::default())
            .await
            .unwrap();
        assert_eq!(got[0].attributes, m.attributes);
        assert_kind(
            q.ack(&topic, "g2", &got[0].receipt).await,
            ErrorKind::InvalidArgument,
            "ack through another group",
        );
        assert_kind(
            q.ack(&unique_name("t"), "g1", &got[0].receipt).await,
            ErrorKind::InvalidArgument,
            "ack through another topic",
        );
        assert_kind(
            q.ack(&topic, "g1", "$JS.API.STREAM.DELETE.X").await,
            ErrorKind::InvalidArgument,
            "a JetStream API subject as receipt",
        );
        q.ack(&topic, "g1", &got[0].receipt).await.unwrap();
        q.delete_topic(&topic).await.unwrap();
    })
    .await;
}

/// A message whose last lease runs out (no nack) is dead-lettered all the same, by the next
/// receive that gets it: the server's one-shot max-deliveries advisory is not relied on.
#[tokio::test]
async fn dead_lettered_after_leases_run_out() {
    let Some(url) = url().await else { return };
    let p = prefix();
    with_cleanup(&url, &p, async {
        let q = open(&url, &p).await;
        let (topic, dlq) = (unique_name("t"), unique_name("d"));
        q.create_topic(&topic).await.unwrap();
        q.create_topic(&dlq).await.unwrap();
        q.create_group(&dlq, "dg", GroupOptions::default())
            .await
            .unwrap();
        let options = GroupOptions {
            ack_deadline: Duration::from_millis(500),
            max_attempts: Some(2),
            dead_letter_topic: Some(dlq.clone()),
        };
        q.create_group(&topic, "g", options).await.unwrap();
        let id = q
            .publish(&topic, Message::new("slow").with_id("slow-1"))
            .await
            .unwrap();
        let wait = ReceiveOptions {
            max_messages: 10,
            wait: Duration::from_secs(3),
        };
        for attempt in 1..=2 {
            let got = q.receive(&topic, "g", wait).await.unwrap();
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].attempt, attempt);
            // Not acknowledged: the lease runs out.
        }
        let start = Instant::now();
        let mut dead = Vec::new();
        while dead.is_empty() && start.elapsed() < Duration::from_secs(15) {
            assert!(
                q.receive(
                    &topic,
                    "g",
                    ReceiveOptions {
                        max_messages: 10,
                        wait: Duration::from_millis(300)
                    }
                )
                .await
                .unwrap()
                .is_empty()
            );
            dead = q
                .receive(
                    &dlq,
                    "dg",
                    ReceiveOptions {
                        max_messages: 10,
                        wait: Duration::ZERO,
                    },
                )
                .await
                .unwrap();
        }
        assert_eq!(dead.len(), 1, "dead-lettered once");
        assert_eq!(
            (dead[0].id.as_str(), &dead[0].body[..]),
            (id.as_str(), &b"slow"[..])
        );
        q.ack(&dlq, "dg", &dead[0].receipt).await.unwrap();
        q.delete_topic(&topic).await.unwrap();
        q.delete_topic(&dlq).await.unwrap();
    })
    .await;
}

/// The connection goes through a proxy that is cut while a publisher and a consumer run, then
/// restored: publishing fails with retryable errors during the cut, the same handle recovers,
/// no acknowledged publish is lost, what was not acknowledged is delivered again, and what was
/// acknowledged before the cut is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_connection_cut() {
    let Some(url) = url().await else { return };
    let p = prefix();
    let proxy = TcpProxy::start(&support::target_of(&url)).await;
    let proxied = with_prefix(&support::via(&url, proxy.addr()), &p);
    with_cleanup(&url, &p, async {
        let q: Arc<dyn MessageQueue> = Arc::new(NatsQueue::connect(&proxied).await.unwrap());
        let topic = unique_name("t");
        let group = "g".to_string();
        q.create_topic(&topic).await.unwrap();
        let options = GroupOptions {
            ack_deadline: Duration::from_secs(2),
            ..GroupOptions::default()
        };
        q.create_group(&topic, &group, options).await.unwrap();
        let now = |max| ReceiveOptions {
            max_messages: max,
            wait: Duration::from_secs(2),
        };

        // Acknowledged before the cut (the server confirmed each ack).
        let acked_before: HashSet<String> = q
            .publish_batch(
                &topic,
                (0..20).map(|i| Message::new(format!("a{i}"))).collect(),
            )
            .await
            .unwrap()
            .into_iter()
            .collect();
        let mut seen = HashSet::new();
        while seen.len() < acked_before.len() {
            for m in q.receive(&topic, &group, now(20)).await.unwrap() {
                q.ack(&topic, &group, &m.receipt).await.unwrap();
                seen.insert(m.id);
            }
        }
        assert_eq!(seen, acked_before);
        // Received before the cut and never acknowledged: must come back.
        let held: HashSet<String> = q
            .publish_batch(
                &topic,
                (0..10).map(|i| Message::new(format!("h{i}"))).collect(),
            )
            .await
            .unwrap()
            .into_iter()
            .collect();
        let mut got_held = HashSet::new();
        while got_held.len() < held.len() {
            for m in q.receive(&topic, &group, now(10)).await.unwrap() {
                got_held.insert(m.id);
            }
        }

        let stop = Arc::new(AtomicBool::new(false));
        let published = Arc::new(Mutex::new(HashSet::<String>::new()));
        let publish_errors = Arc::new(Mutex::new(Vec::<ErrorKind>::new()));
        let publisher = {
            let (q, topic, stop) = (Arc::clone(&q), topic.clone(), Arc::clone(&stop));
            let (published, errors) = (Arc::clone(&published), Arc::clone(&publish_errors));
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    // The same id until it is acknowledged: a retry is de-duplicated.
                    let id = format!("p{i}");
                    match q
                        .publish(&topic, Message::new(id.clone()).with_id(id.clone()))
                        .await
                    {
                        Ok(_) => {
                            published.lock().unwrap().insert(id);
                            i += 1;
                        }
                        Err(e) => errors.lock().unwrap().push(e.kind()),
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        let received = Arc::new(Mutex::new(HashSet::<String>::new()));
        let acked = Arc::new(Mutex::new(HashSet::<String>::new()));
        // Acks that failed: the server may have applied them (only the answer was lost).
        let ambiguous = Arc::new(Mutex::new(HashSet::<String>::new()));
        let consume_errors = Arc::new(Mutex::new(Vec::<ErrorKind>::new()));
        let consumer_stop = Arc::new(AtomicBool::new(false));
        let consumer = {
            let (q, topic, group) = (Arc::clone(&q), topic.clone(), group.clone());
            let (received, acked, ambiguous, errors, stop) = (
                Arc::clone(&received),
                Arc::clone(&acked),
                Arc::clone(&ambiguous),
                Arc::clone(&consume_errors),
                Arc::clone(&consumer_stop),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let opts = ReceiveOptions {
                        max_messages: 10,
                        wait: Duration::from_millis(200),
                    };
                    match q.receive(&topic, &group, opts).await {
                        Ok(batch) => {
                            for m in batch {
                                received.lock().unwrap().insert(m.id.clone());
                                match q.ack(&topic, &group, &m.receipt).await {
                                    Ok(()) => {
                                        acked.lock().unwrap().insert(m.id);
                                    }
                                    Err(e) => {
                                        errors.lock().unwrap().push(e.kind());
                                        ambiguous.lock().unwrap().insert(m.id);
                                    }
                                }
                            }
                        }
                        Err(e) => {
                            errors.lock().unwrap().push(e.kind());
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            })
        };

        tokio::time::sleep(Duration::from_secs(1)).await;
        proxy.cut().await;
        let published_at_cut = published.lock().unwrap().len();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let published_in_cut = published.lock().unwrap().len() - published_at_cut;
        proxy.restore();
        tokio::time::sleep(Duration::from_secs(4)).await;
        stop.store(true, Ordering::SeqCst);
        publisher.await.unwrap();
        let published_after = published.lock().unwrap().len() - published_at_cut - published_in_cut;

        // Drain: every acknowledged publish and every held message gets acknowledged, or its
        // ack failed after the server applied it (then the server holds nothing for it).
        let mut must: HashSet<String> = published.lock().unwrap().clone();
        must.extend(held.iter().cloned());
        let settled = |acked: &HashSet<String>| {
            let ambiguous = ambiguous.lock().unwrap();
            must.iter()
                .all(|m| acked.contains(m) || ambiguous.contains(m))
        };
        let start = Instant::now();
        while !settled(&acked.lock().unwrap()) && start.elapsed() < Duration::from_secs(40) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // An ambiguous ack that was not applied is delivered again after the lease (2 s):
        // keep consuming until the server holds nothing pending for the group.
        let stream = format!("{}_{}", p.to_ascii_uppercase(), topic);
        let (pending, ack_pending) = loop {
            let (pending, ack_pending) = consumer_pending(&url, &stream, &group).await;
            if (pending == 0 && ack_pending == 0) || start.elapsed() > Duration::from_secs(50) {
                break (pending, ack_pending);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        consumer_stop.store(true, Ordering::SeqCst);
        consumer.await.unwrap();
        assert_eq!(
            (pending, ack_pending),
            (0, 0),
            "the server still holds messages for the group"
        );
        let acked = acked.lock().unwrap().clone();
        let ambiguous = ambiguous.lock().unwrap().clone();
        eprintln!(
            "fault test: {} published before the cut, {published_in_cut} during, {published_after} \
             after; {} publish errors, {} receive/ack errors; {} acknowledged, {} acks failed \
             and applied by the server",
            published_at_cut,
            publish_errors.lock().unwrap().len(),
            consume_errors.lock().unwrap().len(),
            acked.len(),
            must.iter()
                .filter(|m| !acked.contains(*m) && ambiguous.contains(*m))
                .count()
        );
        // Missing from `acked` only where the ack failed and the server applied it anyway
        // (it holds nothing pending, checked above).
        let missing: Vec<&String> = must
            .difference(&acked)
            .filter(|m| !ambiguous.contains(*m))
            .collect();
        assert!(missing.is_empty(), "lost: {missing:?}");
        let errors = publish_errors.lock().unwrap().clone();
        assert!(!errors.is_empty(), "publishing during the cut failed");
        assert!(
            errors.iter().all(|k| k.is_retryable()),
            "publish errors are retryable: {errors:?}"
        );
        let consume_errors = consume_errors.lock().unwrap().clone();
        assert!(
            consume_errors.iter().all(|k| k.is_retryable()),
            "receive/ack errors are retryable: {consume_errors:?}"
        );
        assert!(
            published_after > 0,
            "the same handle publishes again after the cut"
        );
        assert!(
            published_in_cut <= 1,
            "at most the publish in flight at the cut succeeded"
        );
        let received = received.lock().unwrap().clone();
        let again: Vec<&String> = acked_before.intersection(&received).collect();
        assert!(
            again.is_empty(),
            "acknowledged before the cut, delivered again: {again:?}"
        );
        // Nothing is left pending past the lease.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(q.receive(&topic, &group, now(10)).await.unwrap().is_empty());
        q.delete_topic(&topic).await.unwrap();
    })
    .await;
}
