//! The in-memory queue: the whole conformance suite, the model test, and its own behaviour.
#![cfg(feature = "memory")]

use cloud_abstraction::queue::{
    GroupOptions, Message, MessageQueue, QueueCapabilities, ReceiveOptions,
};
use cloud_abstraction::testkit::{assert_kind, queue};
use cloud_abstraction::{ErrorKind, Location};
use paas_components::queue::MemoryQueue;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    let q: Arc<dyn MessageQueue> = Arc::new(MemoryQueue::new());
    let report = queue::run_suite(q).await;
    assert_eq!(report.passed.len(), queue::cases().len());
}

/// The kit's `Unsupported` branches: the same suite against a queue claiming nothing optional.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_with_minimal_capabilities() {
    let q = MemoryQueue::new().with_capabilities(QueueCapabilities::minimal());
    assert_eq!(q.capabilities(), QueueCapabilities::minimal());
    queue::run_suite(Arc::new(q)).await;
}

#[test]
fn model() {
    queue::run_model_test(|| async { Arc::new(MemoryQueue::new()) as Arc<dyn MessageQueue> });
}

#[test]
fn info_and_capabilities() {
    let q = MemoryQueue::new().with_location(Location::new("aws", "eu-central-1"));
    let info = q.info();
    assert_eq!(info.backend, "memory");
    assert_eq!(info.location, Location::new("aws", "eu-central-1"));
    let caps = q.capabilities();
    assert!(!caps.durable);
    assert!(caps.nack_delay && caps.delayed_delivery && caps.ordering_keys);
    assert!(caps.dead_letter && caps.deduplication && caps.extend_deadline);
}

fn now(max: usize) -> ReceiveOptions {
    ReceiveOptions {
        max_messages: max,
        wait: Duration::ZERO,
    }
}

#[tokio::test]
async fn stale_receipt_is_rejected() {
    let q = MemoryQueue::new();
    q.create_topic("t").await.unwrap();
    let short = GroupOptions {
        ack_deadline: Duration::from_millis(200),
        ..GroupOptions::default()
    };
    q.create_group("t", "g", short).await.unwrap();
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
        q.nack("t", "g", &first.receipt, Duration::ZERO).await,
        ErrorKind::PreconditionFailed,
        "nack with the first delivery's receipt",
    );
    q.ack("t", "g", &second.receipt).await.unwrap();
    // Acks are idempotent; nack of a gone message is not.
    q.ack("t", "g", &second.receipt).await.unwrap();
    assert_kind(
        q.nack("t", "g", &second.receipt, Duration::ZERO).await,
        ErrorKind::PreconditionFailed,
        "nack after ack",
    );
}

#[tokio::test]
async fn dedup_window_expires() {
    let q = MemoryQueue::new().with_dedup_window(Duration::from_millis(200));
    q.create_topic("t").await.unwrap();
    q.create_group("t", "g", GroupOptions::default())
        .await
        .unwrap();
    q.publish("t", Message::new("a").with_id("m1"))
        .await
        .unwrap();
    q.publish("t", Message::new("b").with_id("m1"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    q.publish("t", Message::new("c").with_id("m1"))
        .await
        .unwrap();
    let got = q.receive("t", "g", now(10)).await.unwrap();
    let bodies: Vec<&[u8]> = got.iter().map(|m| &m.body[..]).collect();
    assert_eq!(bodies, [&b"a"[..], &b"c"[..]]);
}

#[tokio::test]
async fn expired_leases_dead_letter_without_nack() {
    let q = MemoryQueue::new();
    q.create_topic("t").await.unwrap();
    q.create_topic("dlq").await.unwrap();
    q.create_group("dlq", "g", GroupOptions::default())
        .await
        .unwrap();
    let options = GroupOptions {
        ack_deadline: Duration::from_millis(100),
        max_attempts: Some(1),
        dead_letter_topic: Some("dlq".into()),
    };
    q.create_group("t", "g", options).await.unwrap();
    q.publish("t", Message::new("x")).await.unwrap();
    assert_eq!(q.receive("t", "g", now(1)).await.unwrap().len(), 1);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(q.receive("t", "g", now(1)).await.unwrap().is_empty());
    let dead = q.receive("dlq", "g", now(1)).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(&dead[0].body[..], b"x");
}

#[tokio::test]
async fn clones_share_state() {
    let a = MemoryQueue::new();
    let b = a.clone();
    a.create_topic("t").await.unwrap();
    b.create_group("t", "g", GroupOptions::default())
        .await
        .unwrap();
    a.publish("t", Message::new("x")).await.unwrap();
    assert_eq!(b.receive("t", "g", now(5)).await.unwrap().len(), 1);
}

/// Huge caller durations are an error or clamped, never a clock-overflow panic; Debug output
/// never shows message bodies.
#[tokio::test]
async fn huge_durations_do_not_panic() {
    let q = MemoryQueue::new().with_dedup_window(Duration::MAX);
    q.create_topic("t").await.unwrap();
    q.create_group("t", "g", GroupOptions::default())
        .await
        .unwrap();
    q.publish("t", Message::new("body-xyz").with_id("m1"))
        .await
        .unwrap();
    q.publish("t", Message::new("dup").with_id("m1"))
        .await
        .unwrap();
    let forever = ReceiveOptions {
        max_messages: 10,
        wait: Duration::MAX,
    };
    assert_kind(
        q.receive("t", "g", forever).await,
        ErrorKind::InvalidArgument,
        "receive with a wait of Duration::MAX",
    );
    assert!(!format!("{q:?}").contains("body-xyz"));
    let got = q.receive("t", "g", now(10)).await.unwrap();
    assert_eq!(got.len(), 1, "the duplicate is still suppressed");
}
