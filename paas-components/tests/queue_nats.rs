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
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::TcpProxy;
use support::queue_faults::{self, NothingPending, QueueFault};

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

/// The connection goes through a proxy that is cut while publishers and a consumer run, then
/// restored: the shared scenario (`support::queue_faults`), with the consumer's pending counts
/// on the server settling acks that failed but may have been applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_connection_cut() {
    let Some(url) = url().await else { return };
    let p = prefix();
    let proxy = TcpProxy::start(&support::target_of(&url)).await;
    let proxied = with_prefix(&support::via(&url, proxy.addr()), &p);
    with_cleanup(&url, &p, async {
        let q: Arc<dyn MessageQueue> = Arc::new(NatsQueue::connect(&proxied).await.unwrap());
        let (direct, stream_prefix) = (url.clone(), p.to_ascii_uppercase());
        let nothing_pending: NothingPending = Box::new(move |topic, group| {
            let (direct, stream) = (direct.clone(), format!("{stream_prefix}_{topic}"));
            Box::pin(async move { consumer_pending(&direct, &stream, &group).await == (0, 0) })
        });
        let report = queue_faults::cut_and_restore(QueueFault {
            queue: Arc::clone(&q),
            proxy: &proxy,
            group_options: GroupOptions {
                ack_deadline: Duration::from_secs(2),
                ..GroupOptions::default()
            },
            cut_for: Duration::from_secs(3),
            redelivery: Duration::from_secs(2),
            ack_commit: Duration::ZERO,
            acks_final: true,
            receive_fails_while_cut: false,
            ack_fails_while_cut: false,
            acks_may_go_stale: false,
            nothing_pending: Some(nothing_pending),
        })
        .await;
        println!("{report}");
        q.delete_topic(&report.topic).await.unwrap();
    })
    .await;
}
