//! The RabbitMQ queue against the real server (SERVICES.md: 127.0.0.1:5672, guest/guest):
//! the whole conformance kit, the peer cases with two handles, the model test, the
//! delayed-nack attempt count, and a fault test through a TCP proxy that is cut and restored.
//!
//! Every test uses topics with random names and deletes them (which deletes their groups'
//! queues) at the end; a separate connection checks that nothing is left.
#![cfg(feature = "rabbitmq")]

mod support;

use cloud_abstraction::queue::{GroupOptions, Message, MessageQueue, ReceiveOptions};
use cloud_abstraction::testkit::{queue, unique_name};
use cloud_abstraction::{ErrorKind, Location};
use paas_components::queue::RabbitMqQueue;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::TcpProxy;
use support::queue_faults::{self, QueueFault};

const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

async fn url() -> Option<String> {
    let url = std::env::var("RABBITMQ_TEST_URL").unwrap_or_else(|_| DEFAULT_URL.to_string());
    support::server_url("RABBITMQ_TEST_URL", DEFAULT_URL, &support::target_of(&url)).await
}

async fn open(url: &str) -> Arc<dyn MessageQueue> {
    Arc::new(RabbitMqQueue::connect(url).await.expect("connect"))
}

/// Whether a queue exists, asked over a connection of its own.
async fn queue_exists(url: &str, name: &str) -> bool {
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let exists = ch
        .queue_declare(
            name.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .is_ok();
    let _ = conn.close(200, "bye".into()).await;
    exists
}

fn opts(max: usize, wait_ms: u64) -> ReceiveOptions {
    ReceiveOptions {
        max_messages: max,
        wait: Duration::from_millis(wait_ms),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite() {
    let _serial = SERIAL.lock().await;
    let Some(url) = url().await else { return };
    let q = RabbitMqQueue::connect(&url)
        .await
        .unwrap()
        .with_location(Location::new("onprem", "lab"));
    assert_eq!(q.info().backend, "rabbitmq");
    assert_eq!(q.info().location.provider, "onprem");
    let report = queue::run_suite(Arc::new(q)).await;
    assert!(report.failed.is_empty());
    assert_eq!(report.passed.len(), queue::cases().len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_suite() {
    let _serial = SERIAL.lock().await;
    let Some(url) = url().await else { return };
    let report = queue::run_peer_suite(open(&url).await, open(&url).await).await;
    assert_eq!(report.passed.len(), queue::peer_cases().len());
}

#[test]
fn model_test() {
    let _serial = SERIAL.blocking_lock();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Some(url) = rt.block_on(url()) else {
        return;
    };
    queue::run_model_test(|| {
        let url = url.clone();
        async move { open(&url).await }
    });
}

/// A delayed nack republishes the message through a TTL queue (a new message to the broker,
/// whose own delivery count starts again at 0): the attempts travel with the copy, so the
/// attempt count goes on and dead-lettering after `max_attempts` still happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_with_delay_keeps_the_delivery_count() {
    let _serial = SERIAL.lock().await;
    let Some(url) = url().await else { return };
    let q = open(&url).await;
    let (topic, dlq) = (unique_name("rt"), unique_name("rdlq"));
    let (group, dlq_group) = (unique_name("rg"), unique_name("rg"));
    q.create_topic(&topic).await.unwrap();
    q.create_topic(&dlq).await.unwrap();
    q.create_group(&dlq, &dlq_group, GroupOptions::default())
        .await
        .unwrap();
    q.create_group(
        &topic,
        &group,
        GroupOptions {
            max_attempts: Some(3),
            dead_letter_topic: Some(dlq.clone()),
            ..GroupOptions::default()
        },
    )
    .await
    .unwrap();
    q.publish(&topic, Message::new("poison").with_attribute("kind", "bad"))
        .await
        .unwrap();
    let receive_one = |q: Arc<dyn MessageQueue>, topic: String, group: String| async move {
        let start = Instant::now();
        loop {
            let mut got = q.receive(&topic, &group, opts(1, 500)).await.unwrap();
            if let Some(m) = got.pop() {
                return m;
            }
            assert!(start.elapsed() < Duration::from_secs(15), "no message");
        }
    };
    let first = receive_one(Arc::clone(&q), topic.clone(), group.clone()).await;
    assert_eq!(first.attempt, 1);
    // Attempt 1 -> 2 through the broker's count, 2 -> 3 through a delayed copy.
    q.nack(&topic, &group, &first.receipt, Duration::ZERO)
        .await
        .unwrap();
    let second = receive_one(Arc::clone(&q), topic.clone(), group.clone()).await;
    assert_eq!(second.attempt, 2);
    let nacked_at = Instant::now();
    q.nack(&topic, &group, &second.receipt, Duration::from_millis(700))
        .await
        .unwrap();
    let third = receive_one(Arc::clone(&q), topic.clone(), group.clone()).await;
    assert!(
        nacked_at.elapsed() >= Duration::from_millis(650),
        "delay kept"
    );
    assert_eq!(third.id, first.id, "the copy keeps the message id");
    assert_eq!(
        third.attributes.get("kind").map(String::as_str),
        Some("bad")
    );
    assert_eq!(
        third.attempt, 3,
        "the attempts travel with the delayed copy"
    );
    // The last attempt: a delayed nack dead-letters it instead of delaying it again.
    q.nack(&topic, &group, &third.receipt, Duration::from_millis(300))
        .await
        .unwrap();
    let dead = receive_one(Arc::clone(&q), dlq.clone(), dlq_group.clone()).await;
    assert_eq!(dead.body, first.body);
    assert_eq!(dead.attempt, 1, "first delivery on the dead-letter topic");
    assert_eq!(dead.attributes.get("kind").map(String::as_str), Some("bad"));
    q.ack(&dlq, &dlq_group, &dead.receipt).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        q.receive(&topic, &group, opts(10, 300))
            .await
            .unwrap()
            .is_empty()
    );
    q.delete_topic(&topic).await.unwrap();
    q.delete_topic(&dlq).await.unwrap();
    assert!(!queue_exists(&url, &format!("paas.{topic}.{group}")).await);
    assert!(!queue_exists(&url, &format!("paas.{dlq}.{dlq_group}")).await);
    assert!(!queue_exists(&url, &format!("paas.{topic}:groups")).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_survive_broker_errors() {
    let _serial = SERIAL.lock().await;
    let Some(url) = url().await else { return };
    let q = open(&url).await;
    let topic = unique_name("rt");
    let group = unique_name("rg");
    q.create_topic(&topic).await.unwrap();
    q.create_group(&topic, &group, GroupOptions::default())
        .await
        .unwrap();
    // After the broker closed channels over errors, the same handle still works.
    let missing = unique_name("rt");
    for _ in 0..3 {
        let e = q.publish(&missing, Message::new("x")).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        let e = q.receive(&missing, &group, opts(1, 0)).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
    }
    q.publish(&topic, Message::new("still here")).await.unwrap();
    let got = q.receive(&topic, &group, opts(1, 3000)).await.unwrap();
    assert_eq!(&got[0].body[..], b"still here");
    q.ack(&topic, &group, &got[0].receipt).await.unwrap();
    q.delete_topic(&topic).await.unwrap();
}

#[tokio::test]
async fn secrets_stay_out_of_debug_and_errors() {
    let Some(url) = url().await else { return };
    let mut wrong = url::Url::parse(&url).unwrap();
    wrong.set_password(Some("hunter2-secret")).unwrap();
    let err = RabbitMqQueue::connect(wrong.as_str()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{err}");
    let shown = format!("{err} {err:?} {:?}", std::error::Error::source(&err));
    assert!(!shown.contains("hunter2"), "{shown}");
    for bad in [
        "amqp://u:hunter2-secret@127.0.0.1:5672/%2f?prefetch=0",
        "amqp://u:hunter2-secret@127.0.0.1:5672/%2f?nonsense=1",
        "amqp://u:hunter2-secret@[::1:5672/",
    ] {
        let err = RabbitMqQueue::connect(bad).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{bad}: {err}");
        assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");
    }
    // Nothing listens on port 1: retryable, and no password in it.
    let err = RabbitMqQueue::connect("amqp://u:hunter2-secret@127.0.0.1:1/%2f")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(!format!("{err} {err:?}").contains("hunter2"));
    let q = RabbitMqQueue::connect(&url).await.unwrap();
    let password = url::Url::parse(&url)
        .unwrap()
        .password()
        .map(str::to_string);
    if let Some(p) = password {
        assert!(!format!("{q:?}").contains(&format!(":{p}@")), "{q:?}");
    }
    assert!(format!("{q:?}").contains("RabbitMqQueue"));
}

/// The server tests share one broker and run one at a time, so that the fault test's timing
/// is not the other suites' load.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What the consumer of the fault test saw.
/// The connection goes through a proxy that is cut while publishers and a consumer run, then
/// restored: the shared scenario (`support::queue_faults`). The group's lease is 60 s, longer
/// than the scenario waits: the held messages come again because their channel died with the
/// cut, not because their lease ran out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_cut_connection() {
    let _alone = SERIAL.lock().await;
    let Some(url) = url().await else { return };
    let proxy = TcpProxy::start(&support::target_of(&url)).await;
    let q = open(&support::via(&url, proxy.addr())).await;
    let report = queue_faults::cut_and_restore(QueueFault {
        queue: Arc::clone(&q),
        proxy: &proxy,
        group_options: GroupOptions {
            ack_deadline: Duration::from_secs(60),
            ..GroupOptions::default()
        },
        cut_for: Duration::from_secs(2),
        redelivery: Duration::from_secs(3),
        ack_commit: Duration::ZERO,
        acks_final: true,
        receive_fails_while_cut: true,
        ack_fails_while_cut: true,
        acks_may_go_stale: true,
        nothing_pending: None,
    })
    .await;
    println!("{report}");
    q.delete_topic(&report.topic).await.unwrap();
    assert!(!queue_exists(&url, &format!("paas.{}.{}", report.topic, report.group)).await);
}

#[tokio::test]
async fn opens_by_url_with_its_location() {
    let Some(url) = url().await else { return };
    let sep = if url.contains('?') { '&' } else { '?' };
    let q = paas_components::open_queue(&format!(
        "{url}{sep}provider=aws&region=eu-west-1&prefetch=8"
    ))
    .await
    .unwrap();
    assert_eq!(q.info().backend, "rabbitmq");
    assert_eq!(q.info().location, Location::new("aws", "eu-west-1"));
    let topic = unique_name("rt");
    q.create_topic(&topic).await.unwrap();
    q.delete_topic(&topic).await.unwrap();
}
