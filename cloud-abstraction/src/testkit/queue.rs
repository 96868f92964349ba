//! Conformance suite and model test for [`MessageQueue`] backends.
//!
//! ```ignore
//! #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
//! async fn conformance() {
//!     let queue: Arc<dyn MessageQueue> = Arc::new(MyQueue::new());
//!     cloud_abstraction::testkit::queue::run_suite(queue).await;
//! }
//!
//! #[test]
//! fn model() {
//!     cloud_abstraction::testkit::queue::run_model_test(|| async {
//!         Arc::new(MyQueue::new()) as Arc<dyn MessageQueue>
//!     });
//! }
//! ```
//!
//! The cases use short ack deadlines (1 s) and bounded polling with generous timeouts, so the
//! suite takes some seconds of wall-clock time but does not depend on the machine's speed:
//! time bounds are only ever checked in the "not before" direction, or very loosely.

use super::{Case, Report, assert_kind, proptest_cases, run_cases, unique_name};
use crate::ErrorKind;
use crate::conformance_case;
use crate::queue::{
    GroupOptions, Message, MessageQueue, ReceiveOptions, ReceivedMessage, SubscribeOptions,
    subscribe,
};
use bytes::Bytes;
use futures::StreamExt;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

type Q = Arc<dyn MessageQueue>;

/// Every case of the queue suite.
pub fn cases() -> Vec<Case<dyn MessageQueue>> {
    vec![
        conformance_case!(unknown_topic_and_group_not_found),
        conformance_case!(create_is_idempotent),
        conformance_case!(delete_group_and_topic),
        conformance_case!(invalid_names_rejected),
        conformance_case!(invalid_options_rejected),
        conformance_case!(oversized_body_rejected),
        conformance_case!(attributes_round_trip),
        conformance_case!(message_rules),
        conformance_case!(group_sees_only_later_messages),
        conformance_case!(fan_out_to_groups),
        conformance_case!(competing_consumers),
        conformance_case!(ack_is_final),
        conformance_case!(redelivered_after_deadline),
        conformance_case!(nack_redelivers),
        conformance_case!(nack_with_delay),
        conformance_case!(extend_deadline_keeps_lease),
        conformance_case!(dead_letter_after_max_attempts),
        conformance_case!(deduplication_by_id),
        conformance_case!(ordering_keys),
        conformance_case!(delayed_publish),
        conformance_case!(publish_batch_in_order),
        conformance_case!(subscribe_stream),
        conformance_case!(long_polling_returns_early),
        conformance_case!(bogus_receipt_rejected),
        conformance_case!(stale_receipt_rejected),
    ]
}

/// Two handles to the same queue: for a server backend two connections, for a file backend
/// two opens of the same file.
pub type Peers = (Arc<dyn MessageQueue>, Arc<dyn MessageQueue>);

/// The cases that need two handles to the same queue: see [`run_peer_suite`].
pub fn peer_cases() -> Vec<Case<Peers>> {
    vec![conformance_case!(receipt_from_another_handle)]
}

/// Runs the [`peer_cases`] with `a` and `b`, two handles to the same queue, and panics
/// listing the failures, if any.
pub async fn run_peer_suite(a: Q, b: Q) -> Report {
    let backend = a.info().backend;
    let report = run_cases("queue-peer", &backend, Arc::new((a, b)), &peer_cases()).await;
    report.assert_passed();
    report
}

/// Runs every case against `target` and panics listing the failures, if any.
pub async fn run_suite(target: Arc<dyn MessageQueue>) -> Report {
    let backend = target.info().backend;
    let report = run_cases("queue", &backend, target, &cases()).await;
    report.assert_passed();
    report
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// How long a positive wait ("the message arrives") may take before the case fails.
const PATIENCE: Duration = Duration::from_secs(15);

fn deadline(secs: f64) -> GroupOptions {
    GroupOptions {
        ack_deadline: Duration::from_secs_f64(secs),
        ..GroupOptions::default()
    }
}

fn now_opts(max: usize) -> ReceiveOptions {
    ReceiveOptions {
        max_messages: max,
        wait: Duration::ZERO,
    }
}

/// A fresh topic with one group.
async fn setup(q: &Q, options: GroupOptions) -> (String, String) {
    let topic = unique_name("kt");
    let group = unique_name("kg");
    q.create_topic(&topic).await.unwrap();
    q.create_group(&topic, &group, options).await.unwrap();
    (topic, group)
}

/// Receives until `n` messages arrived or [`PATIENCE`] ran out.
async fn receive_n(q: &Q, topic: &str, group: &str, n: usize) -> Vec<ReceivedMessage> {
    let start = Instant::now();
    let mut got = Vec::new();
    while got.len() < n && start.elapsed() < PATIENCE {
        let batch = q
            .receive(
                topic,
                group,
                ReceiveOptions {
                    max_messages: n - got.len(),
                    wait: Duration::from_millis(500),
                },
            )
            .await
            .unwrap();
        got.extend(batch);
    }
    got
}

/// One receive of up to `max` messages that waits up to `wait` for the first.
async fn receive_within(
    q: &Q,
    topic: &str,
    group: &str,
    max: usize,
    wait: Duration,
) -> Vec<ReceivedMessage> {
    q.receive(
        topic,
        group,
        ReceiveOptions {
            max_messages: max,
            wait,
        },
    )
    .await
    .unwrap()
}

/// Receives exactly one message (within [`PATIENCE`]).
async fn receive_one(q: &Q, topic: &str, group: &str) -> ReceivedMessage {
    let mut got = receive_n(q, topic, group, 1).await;
    assert_eq!(got.len(), 1, "expected one message on {topic}/{group}");
    got.remove(0)
}

/// A receive that returns at once.
async fn receive_now(q: &Q, topic: &str, group: &str) -> Vec<ReceivedMessage> {
    q.receive(topic, group, now_opts(100)).await.unwrap()
}

/// Asserts the delivery count where the backend claims to count deliveries.
fn assert_attempt(q: &Q, m: &ReceivedMessage, want: u32) {
    if q.capabilities().attempt_count {
        assert_eq!(m.attempt, want, "attempt of {:?}", m.id);
    } else {
        assert_eq!(
            m.attempt, 1,
            "a backend that does not count deliveries says 1"
        );
    }
}

fn body_str(m: &ReceivedMessage) -> String {
    String::from_utf8_lossy(&m.body).into_owned()
}

/// Polls (wait 0) until `until`, asserting that nothing is delivered meanwhile. Only receives
/// that *return* before `until` count, so a slow machine cannot make this fail spuriously.
async fn assert_nothing_until(q: &Q, topic: &str, group: &str, until: Instant, what: &str) {
    loop {
        let got = receive_now(q, topic, group).await;
        if Instant::now() >= until {
            return;
        }
        assert!(
            got.is_empty(),
            "{what}: delivered too early: {:?}",
            got.iter().map(body_str).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Cases

async fn unknown_topic_and_group_not_found(q: Q) {
    let topic = unique_name("kt");
    assert_kind(
        q.publish(&topic, Message::new("x")).await,
        ErrorKind::NotFound,
        "publish to an unknown topic",
    );
    assert_kind(
        q.publish_batch(&topic, vec![Message::new("x")]).await,
        ErrorKind::NotFound,
        "publish_batch to an unknown topic",
    );
    assert_kind(
        q.create_group(&topic, "g", GroupOptions::default()).await,
        ErrorKind::NotFound,
        "create_group on an unknown topic",
    );
    assert_kind(
        q.receive(&topic, "g", now_opts(1)).await,
        ErrorKind::NotFound,
        "receive on an unknown topic",
    );
    q.create_topic(&topic).await.unwrap();
    assert_kind(
        q.receive(&topic, "nogroup", now_opts(1)).await,
        ErrorKind::NotFound,
        "receive on an unknown group",
    );
    q.delete_topic(&topic).await.unwrap();
}

async fn create_is_idempotent(q: Q) {
    let (topic, group) = setup(&q, deadline(30.0)).await;
    q.create_topic(&topic).await.unwrap();
    // Re-creating the group keeps its pending messages and updates the options.
    q.publish(&topic, Message::new("kept")).await.unwrap();
    q.create_group(&topic, &group, deadline(1.0)).await.unwrap();
    let m = receive_one(&q, &topic, &group).await;
    assert_eq!(body_str(&m), "kept");
    assert_eq!(m.attempt, 1);
    if !q.capabilities().lease_expiry {
        q.ack(&topic, &group, &m.receipt).await.unwrap();
        q.delete_topic(&topic).await.unwrap();
        q.delete_topic(&topic).await.unwrap();
        return;
    }
    // The new 1 s deadline applies: unacknowledged, it comes back.
    let again = receive_one(&q, &topic, &group).await;
    assert_eq!(again.id, m.id);
    assert_attempt(&q, &again, 2);
    q.ack(&topic, &group, &again.receipt).await.unwrap();
    q.delete_topic(&topic).await.unwrap();
    q.delete_topic(&topic).await.unwrap();
}

async fn delete_group_and_topic(q: Q) {
    let (topic, group) = setup(&q, deadline(30.0)).await;
    q.publish(&topic, Message::new("a")).await.unwrap();
    q.delete_group(&topic, &group).await.unwrap();
    q.delete_group(&topic, &group).await.unwrap();
    assert_kind(
        q.receive(&topic, &group, now_opts(1)).await,
        ErrorKind::NotFound,
        "receive on a deleted group",
    );
    // A re-created group starts empty: it only sees later messages.
    q.create_group(&topic, &group, deadline(30.0))
        .await
        .unwrap();
    assert!(receive_now(&q, &topic, &group).await.is_empty());
    q.delete_topic(&topic).await.unwrap();
    assert_kind(
        q.publish(&topic, Message::new("b")).await,
        ErrorKind::NotFound,
        "publish to a deleted topic",
    );
    assert_kind(
        q.receive(&topic, &group, now_opts(1)).await,
        ErrorKind::NotFound,
        "receive on a deleted topic's group",
    );
}

async fn invalid_names_rejected(q: Q) {
    let (topic, group) = setup(&q, deadline(30.0)).await;
    for bad in ["", "1topic", "a b", "a/b", "a.b", "ä", &"t".repeat(64)] {
        assert_kind(
            q.create_topic(bad).await,
            ErrorKind::InvalidArgument,
            "create_topic with a bad name",
        );
        assert_kind(
            q.publish(bad, Message::new("x")).await,
            ErrorKind::InvalidArgument,
            "publish with a bad topic",
        );
        assert_kind(
            q.create_group(&topic, bad, GroupOptions::default()).await,
            ErrorKind::InvalidArgument,
            "create_group with a bad group",
        );
        assert_kind(
            q.receive(&topic, bad, now_opts(1)).await,
            ErrorKind::InvalidArgument,
            "receive with a bad group",
        );
        assert_kind(
            q.receive(bad, &group, now_opts(1)).await,
            ErrorKind::InvalidArgument,
            "receive with a bad topic",
        );
    }
    q.delete_topic(&topic).await.unwrap();
}

async fn invalid_options_rejected(q: Q) {
    let (topic, group) = setup(&q, deadline(30.0)).await;
    assert_kind(
        q.create_group(&topic, &group, deadline(0.0)).await,
        ErrorKind::InvalidArgument,
        "zero ack deadline",
    );
    assert_kind(
        q.receive(&topic, &group, now_opts(0)).await,
        ErrorKind::InvalidArgument,
        "receive of zero messages",
    );
    let caps = q.capabilities();
    let dlq = GroupOptions {
        max_attempts: Some(3),
        dead_letter_topic: Some(unique_name("kmissing")),
        ..deadline(30.0)
    };
    if caps.dead_letter {
        assert_kind(
            q.create_group(&topic, &group, dlq).await,
            ErrorKind::NotFound,
            "dead-letter topic that does not exist",
        );
        let zero = GroupOptions {
            max_attempts: Some(0),
            ..deadline(30.0)
        };
        assert_kind(
            q.create_group(&topic, &group, zero).await,
            ErrorKind::InvalidArgument,
            "max_attempts of zero",
        );
    } else {
        assert_kind(
            q.create_group(&topic, &group, dlq).await,
            ErrorKind::Unsupported,
            "dead-letter options without the capability",
        );
    }
    q.delete_topic(&topic).await.unwrap();
}

async fn oversized_body_rejected(q: Q) {
    let (topic, group) = setup(&q, deadline(30.0)).await;
    match q.capabilities().max_message_size {
        Some(max) => {
            let max = usize::try_from(max).unwrap();
            let over = Bytes::from(vec![7u8; max + 1]);
            assert_kind(
                q.publish(&topic, Message::new(over.clone())).await,
                ErrorKind::InvalidArgument,
                "body over max_message_size",
            );
            assert_kind(
                q.publish_batch(&topic, vec![Message::new("ok"), Message::new(over)])
                    .await,
                ErrorKind::InvalidArgument,
                "batch with a body over max_message_size",
            );
            let limit = Bytes::from(vec![9u8; max.min(4 * 1024 * 1024)]);
            q.publish(&topic, Message::new(limit.clone()))
                .await
                .unwrap();
            let m = receive_one(&q, &topic, &group).await;
            assert_eq!(m.body, limit, "a body of exactly the limit round-trips");
            q.ack(&topic, &group, &m.receipt).await.unwrap();
        }
        None => {
            let big = Bytes::from(vec![3u8; 256 * 1024]);
            q.publish(&topic, Message::new(big.clone())).await.unwrap();
            let m = receive_one(&q, &topic, &group).await;
            assert_eq!(m.body, big);
            q.ack(&topic, &group, &m.receipt).await.unwrap();
        }
    }
    q.delete_topic(&topic).await.unwrap();
}

async fn attributes_round_trip(q: Q) {
    let (topic, group) = setup(&q, deadline(30.0)).await;
    let body: Vec<u8> = (0..=255u8).collect();
    let message = Message::new(body.clone())
        .with_attribute("vin", "WVW-123")
        .with_attribute("unicode", "värde ✓")
        .with_attribute("empty", "");
    let before = SystemTime::now();
    let id = q.publish(&topic, message.clone()).await.unwrap();
    assert!(!id.is_empty(), "publish returns an id");
    let empty_id = q.publish(&topic, Message::new("")).await.unwrap();
    assert_ne!(id, empty_id, "generated ids are distinct");
    let got = receive_n(&q, &topic, &group, 2).await;
    assert_eq!(got.len(), 2);
    let m = got.iter().find(|m| m.id == id).expect("message by id");
    assert_eq!(m.body, Bytes::from(body));
    assert_eq!(m.attributes, message.attributes);
    assert_eq!(m.ordering_key, None);
    assert_eq!(m.attempt, 1);
    let skew = Duration::from_secs(60);
    assert!(
        m.published_at + skew >= before && m.published_at <= SystemTime::now() + skew,
        "published_at is about now"
    );
    let e = got
        .iter()
        .find(|m| m.id == empty_id)
        .expect("empty message");
    assert!(e.body.is_empty() && e.attributes.is_empty());
    for m in &got {
        q.ack(&topic, &group, &m.receipt).await.unwrap();
    }
    q.delete_topic(&topic).await.unwrap();
}

/// Unusual and bad messages with the portable verdict (see
/// [`validate::queue`](crate::validate::queue)): every queue must give the same one.
fn message_table(caps: &crate::queue::QueueCapabilities) -> Vec<(&'static str, Message, bool)> {
    use crate::validate::queue::{MAX_ATTRIBUTE_NAME_LEN, MAX_ATTRIBUTE_VALUE_LEN, MAX_ATTRIBUTES};
    let m = || Message::new("x");
    let many = |n: usize| (0..n).fold(m(), |m, i| m.with_attribute(format!("a{i}"), "v"));
    let mut table = vec![
        (
            "attribute name with `-`, `_` and `.`",
            m().with_attribute("trace-id_x.y", "1"),
            true,
        ),
        (
            "upper-case attribute name",
            m().with_attribute("Content-Type", "text/plain"),
            true,
        ),
        (
            "non-ASCII attribute value",
            m().with_attribute("city", "Zürich ✓"),
            true,
        ),
        (
            "empty attribute value",
            m().with_attribute("empty", ""),
            true,
        ),
        (
            "longest attribute name",
            m().with_attribute("n".repeat(MAX_ATTRIBUTE_NAME_LEN), "v"),
            true,
        ),
        (
            "longest attribute value",
            m().with_attribute("v", "v".repeat(MAX_ATTRIBUTE_VALUE_LEN)),
            true,
        ),
        ("most attributes", many(MAX_ATTRIBUTES), true),
        ("empty attribute name", m().with_attribute("", "v"), false),
        (
            "attribute name starting with a digit",
            m().with_attribute("1a", "v"),
            false,
        ),
        (
            "attribute name with a space",
            m().with_attribute("a b", "v"),
            false,
        ),
        (
            "attribute name with `:`",
            m().with_attribute("a:b", "v"),
            false,
        ),
        (
            "non-ASCII attribute name",
            m().with_attribute("ünïcode", "v"),
            false,
        ),
        (
            "reserved attribute prefix",
            m().with_attribute("googclient", "v"),
            false,
        ),
        (
            "attribute names differing in case",
            m().with_attribute("key", "1").with_attribute("KEY", "2"),
            false,
        ),
        (
            "overlong attribute name",
            m().with_attribute("n".repeat(MAX_ATTRIBUTE_NAME_LEN + 1), "v"),
            false,
        ),
        (
            "overlong attribute value",
            m().with_attribute("v", "v".repeat(MAX_ATTRIBUTE_VALUE_LEN + 1)),
            false,
        ),
        (
            "attribute value with a newline",
            m().with_attribute("a", "x\ny"),
            false,
        ),
        ("too many attributes", many(MAX_ATTRIBUTES + 1), false),
    ];
    if caps.deduplication {
        table.push(("empty message id", m().with_id(""), false));
        table.push((
            "message id with a control character",
            m().with_id("a\u{1}"),
            false,
        ));
    }
    if caps.ordering_keys {
        table.push(("empty ordering key", m().with_ordering_key(""), false));
    }
    if let Some(max) = caps.max_message_size {
        let over = usize::try_from(max).unwrap_or(usize::MAX - 1) + 1;
        table.push(("oversized body", Message::new(vec![0u8; over]), false));
    }
    table
}

/// The number of rows of the message table that `message_rules` runs against `caps`.
pub fn message_table_len(caps: &crate::queue::QueueCapabilities) -> usize {
    message_table(caps).len()
}

async fn message_rules(q: Q) {
    use crate::validate::queue::{MAX_BATCH, MAX_RECEIVE};
    let (topic, group) = setup(&q, deadline(30.0)).await;
    let mut expected = Vec::new();
    for (what, message, valid) in message_table(&q.capabilities()) {
        let result = q.publish(&topic, message.clone()).await;
        if valid {
            let id = result.unwrap_or_else(|e| panic!("publish with {what}: unexpected error {e}"));
            expected.push((what, id, message));
        } else {
            assert_kind(
                result,
                ErrorKind::InvalidArgument,
                &format!("publish with {what}"),
            );
            // In a batch, one bad message refuses the whole batch.
            assert_kind(
                q.publish_batch(&topic, vec![Message::new("batched"), message])
                    .await,
                ErrorKind::InvalidArgument,
                &format!("batch with {what}"),
            );
        }
    }
    let too_many: Vec<Message> = (0..=MAX_BATCH).map(|_| Message::new("x")).collect();
    assert_kind(
        q.publish_batch(&topic, too_many).await,
        ErrorKind::InvalidArgument,
        "batch over the message limit",
    );
    assert_kind(
        q.receive(&topic, &group, now_opts(MAX_RECEIVE + 1)).await,
        ErrorKind::InvalidArgument,
        "receive over the message limit",
    );
    // Only the valid messages arrived, with their attributes unchanged.
    let got = receive_n(&q, &topic, &group, expected.len()).await;
    assert_eq!(
        got.len(),
        expected.len(),
        "only the accepted messages are delivered"
    );
    for (what, id, message) in &expected {
        let m = got
            .iter()
            .find(|m| &m.id == id)
            .unwrap_or_else(|| panic!("{what}: message not delivered"));
        assert_eq!(m.attributes, message.attributes, "{what}: attributes");
    }
    for m in &got {
        q.ack(&topic, &group, &m.receipt).await.unwrap();
    }
    assert!(
        receive_now(&q, &topic, &group).await.is_empty(),
        "nothing else was queued"
    );
    q.delete_topic(&topic).await.unwrap();
}

async fn group_sees_only_later_messages(q: Q) {
    let topic = unique_name("kt");
    q.create_topic(&topic).await.unwrap();
    q.publish(&topic, Message::new("before")).await.unwrap();
    let group = unique_name("kg");
    q.create_group(&topic, &group, deadline(30.0))
        .await
        .unwrap();
    q.publish(&topic, Message::new("after")).await.unwrap();
    let m = receive_one(&q, &topic, &group).await;
    assert_eq!(body_str(&m), "after");
    q.ack(&topic, &group, &m.receipt).await.unwrap();
    assert!(
        receive_now(&q, &topic, &group).await.is_empty(),
        "the message published before the group exists is not delivered to it"
    );
    q.delete_topic(&topic).await.unwrap();
}

async fn fan_out_to_groups(q: Q) {
    let (topic, g1) = setup(&q, deadline(30.0)).await;
    let g2 = unique_name("kg");
    q.create_group(&topic, &g2, deadline(30.0)).await.unwrap();
    let sent: BTreeSet<String> = (0..5).map(|i| format!("m{i}")).collect();
    for body in &sent {
        q.publish(&topic, Message::new(body.clone())).await.unwrap();
    }
    for group in [&g1, &g2] {
        let got = receive_n(&q, &topic, group, sent.len()).await;
        let bodies: BTreeSet<String> = got.iter().map(body_str).collect();
        assert_eq!(bodies, sent, "group {group} gets every message");
        assert_eq!(got.len(), sent.len(), "no duplicates in group {group}");
        for m in &got {
            q.ack(&topic, group, &m.receipt).await.unwrap();
        }
    }
    q.delete_topic(&topic).await.unwrap();
}

async fn competing_consumers(q: Q) {
    const N: usize = 40;
    let (topic, group) = setup(&q, deadline(60.0)).await;
    let ids: Vec<String> = q
        .publish_batch(
            &topic,
            (0..N).map(|i| Message::new(format!("c{i}"))).collect(),
        )
        .await
        .unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (q, topic, group, seen) = (
            Arc::clone(&q),
            topic.clone(),
            group.clone(),
            Arc::clone(&seen),
        );
        tasks.push(tokio::spawn(async move {
            let start = Instant::now();
            while seen.lock().unwrap().len() < N && start.elapsed() < PATIENCE {
                let batch = receive_within(&q, &topic, &group, 3, Duration::from_millis(200)).await;
                for m in batch {
                    q.ack(&topic, &group, &m.receipt).await.unwrap();
                    seen.lock().unwrap().push(m.id);
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let seen = seen.lock().unwrap().clone();
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no message delivered twice");
    assert_eq!(
        unique,
        ids.iter().collect::<HashSet<_>>(),
        "every message delivered once"
    );
    q.delete_topic(&topic).await.unwrap();
}

async fn ack_is_final(q: Q) {
    let (topic, group) = setup(&q, deadline(1.0)).await;
    q.publish(&topic, Message::new("once")).await.unwrap();
    let m = receive_one(&q, &topic, &group).await;
    q.ack(&topic, &group, &m.receipt).await.unwrap();
    // Well past the ack deadline: an acknowledged message never comes back.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let again = receive_within(&q, &topic, &group, 10, Duration::from_millis(300)).await;
    assert!(again.is_empty(), "acknowledged message redelivered");
    q.delete_topic(&topic).await.unwrap();
}

async fn redelivered_after_deadline(q: Q) {
    let (topic, group) = setup(&q, deadline(1.0)).await;
    let id = q.publish(&topic, Message::new("lease")).await.unwrap();
    let m = receive_one(&q, &topic, &group).await;
    let leased_at = Instant::now();
    assert_eq!((m.id.as_str(), m.attempt), (id.as_str(), 1));
    let during = receive_now(&q, &topic, &group).await;
    if leased_at.elapsed() < Duration::from_millis(800) {
        assert!(during.is_empty(), "a leased message is not delivered twice");
    }
    if !q.capabilities().lease_expiry {
        // As claimed: the message stays with this consumer past its deadline.
        let later = receive_within(&q, &topic, &group, 10, Duration::from_millis(1500)).await;
        assert!(
            later.is_empty(),
            "a backend without lease expiry redelivered a leased message"
        );
        q.ack(&topic, &group, &m.receipt).await.unwrap();
        q.delete_topic(&topic).await.unwrap();
        return;
    }
    let again = receive_one(&q, &topic, &group).await;
    assert_eq!(again.id, id);
    assert_eq!(again.body, m.body);
    assert_attempt(&q, &again, 2);
    assert_ne!(
        again.receipt, m.receipt,
        "each delivery has its own receipt"
    );
    q.ack(&topic, &group, &again.receipt).await.unwrap();
    q.delete_topic(&topic).await.unwrap();
}

async fn nack_redelivers(q: Q) {
    let (topic, group) = setup(&q, deadline(60.0)).await;
    q.publish(&topic, Message::new("retry")).await.unwrap();
    let m = receive_one(&q, &topic, &group).await;
    if !q.capabilities().nack {
        assert_kind(
            q.nack(&topic, &group, &m.receipt, Duration::ZERO).await,
            ErrorKind::Unsupported,
            "nack without the capability",
        );
        q.ack(&topic, &group, &m.receipt).await.unwrap();
        q.delete_topic(&topic).await.unwrap();
        return;
    }
    q.nack(&topic, &group, &m.receipt, Duration::ZERO)
        .await
        .unwrap();
    let again = receive_one(&q, &topic, &group).await;
    assert_eq!(again.id, m.id);
    assert_attempt(&q, &again, m.attempt + 1);
    q.ack(&topic, &group, &again.receipt).await.unwrap();
    q.delete_topic(&topic).await.unwrap();
}

async fn nack_with_delay(q: Q) {
    let (topic, group) = setup(&q, deadline(60.0)).await;
    q.publish(&topic, Message::new("later")).await.unwrap();
    let m = receive_one(&q, &topic, &group).await;
    if !q.capabilities().nack_delay {
        assert_kind(
            q.nack(&topic, &group, &m.receipt, Duration::from_millis(1500))
                .await,
            ErrorKind::Unsupported,
            "nack with a delay without the capability",
        );
        q.ack(&topic, &group, &m.receipt).await.unwrap();
        q.delete_topic(&topic).await.unwrap();
        return;
    }
    let nacked_at = Instant::now();
    q.nack(&topic, &group, &m.receipt, Duration::from_millis(1500))
        .await
        .unwrap();
    assert_nothing_until(
        &q,
        &topic,
        &group,
        nacked_at + Duration::from_secs(1),
        "nack with delay",
    )
    .await;
    let again = receive_one(&q, &topic, &group).await;
    assert_eq!(again.id, m.id);
    assert_attempt(&q, &again, 2);
    q.ack(&topic, &group, &again.receipt).await.unwrap();
    q.delete_topic(&topic).await.unwrap();
}

async fn extend_deadline_keeps_lease(q: Q) {
    let (topic, group) = setup(&q, deadline(1.0)).await;
    q.publish(&topic, Message::new("long job")).await.unwrap();
    let m = receive_one(&q, &topic, &group).await;
    if !q.capabilities().extend_deadline {
        assert_kind(
            q.extend_deadline(&topic, &group, &m.receipt, Duration::from_secs(10))
                .await,
            ErrorKind::Unsupported,
            "extend_deadline without the capability",
        );
        q.delete_topic(&topic).await.unwrap();
        return;
    }
    let extended_at = Instant::now();
    q.extend_deadline(&topic, &group, &m.receipt, Duration::from_secs(30))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during = receive_now(&q, &topic, &group).await;
    if extended_at.elapsed() < Duration::from_secs(25) {
        assert!(
            during.is_empty(),
            "extended lease still holds past the original deadline"
        );
    }
    q.ack(&topic, &group, &m.receipt).await.unwrap();
    q.delete_topic(&topic).await.unwrap();
}

async fn dead_letter_after_max_attempts(q: Q) {
    let caps = q.capabilities();
    let (topic, group) = setup(&q, deadline(60.0)).await;
    let dlq_topic = unique_name("kdlq");
    let dlq_group = unique_name("kg");
    q.create_topic(&dlq_topic).await.unwrap();
    q.create_group(&dlq_topic, &dlq_group, deadline(60.0))
        .await
        .unwrap();
    let options = GroupOptions {
        max_attempts: Some(2),
        dead_letter_topic: Some(dlq_topic.clone()),
        ..deadline(60.0)
    };
    if !caps.dead_letter {
        assert_kind(
            q.create_group(&topic, &group, options).await,
            ErrorKind::Unsupported,
            "dead-letter options without the capability",
        );
    } else {
        q.create_group(&topic, &group, options).await.unwrap();
        let poison = Message::new("poison").with_attribute("kind", "bad");
        q.publish(&topic, poison.clone()).await.unwrap();
        q.publish(&topic, Message::new("fine")).await.unwrap();
        let mut fine_seen = false;
        for attempt in 1..=2 {
            let got = receive_n(&q, &topic, &group, if fine_seen { 1 } else { 2 }).await;
            for m in got {
                if body_str(&m) == "fine" {
                    fine_seen = true;
                    q.ack(&topic, &group, &m.receipt).await.unwrap();
                } else {
                    assert_attempt(&q, &m, attempt);
                    q.nack(&topic, &group, &m.receipt, Duration::ZERO)
                        .await
                        .unwrap();
                }
            }
        }
        assert!(fine_seen);
        // The next receive finds the message out of attempts (backends may dead-letter lazily).
        let rest = receive_within(&q, &topic, &group, 10, Duration::from_millis(300)).await;
        assert!(
            rest.is_empty(),
            "dead-lettered message gone from its group: {:?}",
            rest.iter().map(body_str).collect::<Vec<_>>()
        );
        let dead = receive_one(&q, &dlq_topic, &dlq_group).await;
        assert_eq!(dead.body, poison.body, "dead letter keeps the body");
        assert_eq!(dead.attributes.get("kind").map(String::as_str), Some("bad"));
        assert_eq!(dead.attempt, 1, "first delivery on the dead-letter topic");
        q.ack(&dlq_topic, &dlq_group, &dead.receipt).await.unwrap();
        assert!(receive_now(&q, &topic, &group).await.is_empty());
    }
    q.delete_topic(&topic).await.unwrap();
    q.delete_topic(&dlq_topic).await.unwrap();
}

async fn deduplication_by_id(q: Q) {
    let (topic, group) = setup(&q, deadline(60.0)).await;
    let dup_id = unique_name("id");
    if !q.capabilities().deduplication {
        assert_kind(
            q.publish(&topic, Message::new("x").with_id(dup_id)).await,
            ErrorKind::Unsupported,
            "message id without the deduplication capability",
        );
        q.delete_topic(&topic).await.unwrap();
        return;
    }
    let first = q
        .publish(&topic, Message::new("one").with_id(dup_id.clone()))
        .await
        .unwrap();
    let second = q
        .publish(&topic, Message::new("two").with_id(dup_id.clone()))
        .await
        .unwrap();
    assert_eq!(
        (first.as_str(), second.as_str()),
        (dup_id.as_str(), dup_id.as_str())
    );
    let other = q
        .publish(&topic, Message::new("other").with_id(unique_name("id")))
        .await
        .unwrap();
    let got = receive_n(&q, &topic, &group, 2).await;
    let mut extra = receive_within(&q, &topic, &group, 10, Duration::from_millis(300)).await;
    extra.extend(got);
    let mut ids: Vec<&str> = extra.iter().map(|m| m.id.as_str()).collect();
    ids.sort_unstable();
    let mut want = vec![dup_id.as_str(), other.as_str()];
    want.sort_unstable();
    assert_eq!(ids, want, "a duplicate id is delivered once");
    let dup = extra.iter().find(|m| m.id == dup_id).unwrap();
    assert_eq!(body_str(dup), "one", "the first publish wins");
    for m in &extra {
        q.ack(&topic, &group, &m.receipt).await.unwrap();
    }
    // Also after the first copy was acknowledged (still within the window).
    q.publish(&topic, Message::new("three").with_id(dup_id))
        .await
        .unwrap();
    assert!(receive_now(&q, &topic, &group).await.is_empty());
    q.delete_topic(&topic).await.unwrap();
}

async fn ordering_keys(q: Q) {
    let (topic, group) = setup(&q, deadline(60.0)).await;
    if !q.capabilities().ordering_keys {
        assert_kind(
            q.publish(&topic, Message::new("x").with_ordering_key("k"))
                .await,
            ErrorKind::Unsupported,
            "ordering key without the capability",
        );
        q.delete_topic(&topic).await.unwrap();
        return;
    }
    let plan = [
        ("a", "a1"),
        ("b", "b1"),
        ("a", "a2"),
        ("", "c1"),
        ("a", "a3"),
        ("b", "b2"),
        ("", "c2"),
    ];
    for (key, body) in plan {
        let mut m = Message::new(body);
        if !key.is_empty() {
            m = m.with_ordering_key(key);
        }
        q.publish(&topic, m).await.unwrap();
    }
    // The heads of both keys and the unordered messages; nothing behind a leased head.
    let first = receive_n(&q, &topic, &group, 4).await;
    let mut bodies: Vec<String> = first.iter().map(body_str).collect();
    bodies.sort();
    assert_eq!(bodies, ["a1", "b1", "c1", "c2"]);
    let a1 = first.iter().find(|m| body_str(m) == "a1").unwrap();
    assert_eq!(a1.ordering_key.as_deref(), Some("a"));
    assert!(
        receive_now(&q, &topic, &group).await.is_empty(),
        "no second message of a key while the first is leased"
    );
    for m in &first {
        if body_str(m) != "b1" {
            q.ack(&topic, &group, &m.receipt).await.unwrap();
        }
    }
    // Key `a` moves on; key `b` is still blocked by b1.
    let a2 = receive_one(&q, &topic, &group).await;
    assert_eq!(body_str(&a2), "a2");
    assert!(receive_now(&q, &topic, &group).await.is_empty());
    // A nacked head is delivered again before the rest of its key.
    let a2 = if q.capabilities().nack {
        q.nack(&topic, &group, &a2.receipt, Duration::ZERO)
            .await
            .unwrap();
        let a2 = receive_one(&q, &topic, &group).await;
        assert_eq!(body_str(&a2), "a2");
        assert_attempt(&q, &a2, 2);
        a2
    } else {
        a2
    };
    q.ack(&topic, &group, &a2.receipt).await.unwrap();
    let a3 = receive_one(&q, &topic, &group).await;
    assert_eq!(body_str(&a3), "a3");
    q.ack(&topic, &group, &a3.receipt).await.unwrap();
    let b1 = first.iter().find(|m| body_str(m) == "b1").unwrap();
    q.ack(&topic, &group, &b1.receipt).await.unwrap();
    let b2 = receive_one(&q, &topic, &group).await;
    assert_eq!(body_str(&b2), "b2");
    q.ack(&topic, &group, &b2.receipt).await.unwrap();
    assert!(receive_now(&q, &topic, &group).await.is_empty());
    q.delete_topic(&topic).await.unwrap();
}

async fn delayed_publish(q: Q) {
    let (topic, group) = setup(&q, deadline(60.0)).await;
    let delayed = Message::new("delayed").with_delay(Duration::from_millis(1500));
    if !q.capabilities().delayed_delivery {
        assert_kind(
            q.publish(&topic, delayed).await,
            ErrorKind::Unsupported,
            "delayed publish without the capability",
        );
        q.delete_topic(&topic).await.unwrap();
        return;
    }
    let published_at = Instant::now();
    q.publish(&topic, delayed).await.unwrap();
    q.publish(&topic, Message::new("now")).await.unwrap();
    let now = receive_one(&q, &topic, &group).await;
    assert_eq!(
        body_str(&now),
        "now",
        "undelayed messages pass the delayed one"
    );
    q.ack(&topic, &group, &now.receipt).await.unwrap();
    assert_nothing_until(
        &q,
        &topic,
        &group,
        published_at + Duration::from_secs(1),
        "delayed publish",
    )
    .await;
    let m = receive_one(&q, &topic, &group).await;
    assert_eq!((body_str(&m).as_str(), m.attempt), ("delayed", 1));
    q.ack(&topic, &group, &m.receipt).await.unwrap();
    q.delete_topic(&topic).await.unwrap();
}

async fn publish_batch_in_order(q: Q) {
    let (topic, group) = setup(&q, deadline(60.0)).await;
    let ordered = q.capabilities().ordering_keys;
    let messages: Vec<Message> = (0..10)
        .map(|i| {
            let m = Message::new(format!("{i}"));
            if ordered {
                m.with_ordering_key("batch")
            } else {
                m
            }
        })
        .collect();
    let ids = q.publish_batch(&topic, messages).await.unwrap();
    assert_eq!(ids.len(), 10);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 10, "distinct ids");
    assert!(
        q.publish_batch(&topic, Vec::new())
            .await
            .unwrap()
            .is_empty()
    );
    let mut order = Vec::new();
    let start = Instant::now();
    while order.len() < 10 && start.elapsed() < PATIENCE {
        // One receive at a time, acking at once: with an ordering key only one is in flight.
        let batch = q
            .receive(
                &topic,
                &group,
                ReceiveOptions {
                    max_messages: 10 - order.len(),
                    wait: Duration::from_millis(500),
                },
            )
            .await
            .unwrap();
        for m in batch {
            // The returned ids are in publish order.
            let index: usize = body_str(&m).parse().unwrap();
            assert_eq!(ids[index], m.id, "id of message {index}");
            order.push(index);
            q.ack(&topic, &group, &m.receipt).await.unwrap();
        }
    }
    if ordered {
        assert_eq!(
            order,
            (0..10).collect::<Vec<_>>(),
            "batch delivered in order"
        );
    } else {
        order.sort_unstable();
        assert_eq!(order, (0..10).collect::<Vec<_>>());
    }
    q.delete_topic(&topic).await.unwrap();
}

async fn subscribe_stream(q: Q) {
    let (topic, group) = setup(&q, deadline(60.0)).await;
    let mut stream = subscribe(
        Arc::clone(&q),
        &topic,
        &group,
        SubscribeOptions {
            batch_size: 5,
            wait: Duration::from_millis(300),
        },
    );
    for i in 0..3 {
        q.publish(&topic, Message::new(format!("s{i}")))
            .await
            .unwrap();
    }
    let mut bodies = BTreeSet::new();
    let mut retried = false;
    while bodies.len() < 3 {
        let delivery = tokio::time::timeout(PATIENCE, stream.next())
            .await
            .expect("delivery in time")
            .expect("endless stream")
            .unwrap();
        let body = body_str(&delivery.message);
        if body == "s1" && !retried && q.capabilities().nack {
            // Nack through the handle once: it comes back on the stream.
            retried = true;
            delivery.nack(Duration::ZERO).await.unwrap();
            continue;
        }
        if body == "s1" && retried {
            assert_attempt(&q, &delivery.message, 2);
        }
        delivery.ack().await.unwrap();
        assert!(bodies.insert(body), "no duplicate deliveries");
    }
    assert_eq!(retried, q.capabilities().nack);
    drop(stream);
    assert!(receive_now(&q, &topic, &group).await.is_empty());
    q.delete_topic(&topic).await.unwrap();
}

async fn long_polling_returns_early(q: Q) {
    let (topic, group) = setup(&q, deadline(60.0)).await;
    let publisher = {
        let (q, topic) = (Arc::clone(&q), topic.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            q.publish(&topic, Message::new("wake up")).await.unwrap();
        })
    };
    let start = Instant::now();
    let got = receive_within(&q, &topic, &group, 1, Duration::from_secs(5)).await;
    let elapsed = start.elapsed();
    publisher.await.unwrap();
    assert_eq!(got.len(), 1, "the long poll got the message");
    assert!(
        elapsed < Duration::from_secs(4),
        "long poll returned when the message arrived, not at the end of the wait ({elapsed:?})"
    );
    q.ack(&topic, &group, &got[0].receipt).await.unwrap();
    q.delete_topic(&topic).await.unwrap();
}

async fn bogus_receipt_rejected(q: Q) {
    let (topic, group) = setup(&q, deadline(60.0)).await;
    for bogus in ["", "not-a-receipt", "0:0:0"] {
        let r = q.ack(&topic, &group, bogus).await;
        assert!(
            matches!(
                r.as_ref().map_err(|e| e.kind()),
                Err(ErrorKind::InvalidArgument
                    | ErrorKind::NotFound
                    | ErrorKind::PreconditionFailed)
            ),
            "ack with a bogus receipt {bogus:?}: {r:?}"
        );
        let r = q.nack(&topic, &group, bogus, Duration::ZERO).await;
        assert!(r.is_err(), "nack with a bogus receipt {bogus:?}");
    }
    q.delete_topic(&topic).await.unwrap();
}

async fn stale_receipt_rejected(q: Q) {
    let caps = q.capabilities();
    let (topic, group) = setup(&q, deadline(if caps.nack { 60.0 } else { 1.0 })).await;
    q.publish(&topic, Message::new("twice")).await.unwrap();
    let first = receive_one(&q, &topic, &group).await;
    if caps.nack {
        q.nack(&topic, &group, &first.receipt, Duration::ZERO)
            .await
            .unwrap();
    } else if !caps.lease_expiry {
        // Nothing is ever delivered again without a new session: acks are idempotent.
        q.ack(&topic, &group, &first.receipt).await.unwrap();
        q.ack(&topic, &group, &first.receipt).await.unwrap();
        q.delete_topic(&topic).await.unwrap();
        return;
    }
    let second = receive_one(&q, &topic, &group).await;
    assert_eq!(second.id, first.id);
    assert_ne!(
        second.receipt, first.receipt,
        "each delivery has its own receipt"
    );
    // The receipt of the first delivery must not settle the second one.
    assert_kind(
        q.ack(&topic, &group, &first.receipt).await,
        ErrorKind::PreconditionFailed,
        "ack with the receipt of an earlier delivery",
    );
    if caps.nack {
        assert_kind(
            q.nack(&topic, &group, &first.receipt, Duration::ZERO).await,
            ErrorKind::PreconditionFailed,
            "nack with the receipt of an earlier delivery",
        );
    }
    if caps.lease_expiry && caps.nack {
        // The second delivery is still leased (its 60 s deadline has not passed).
        assert!(
            receive_now(&q, &topic, &group).await.is_empty(),
            "a stale receipt released the current delivery"
        );
    }
    q.ack(&topic, &group, &second.receipt).await.unwrap();
    // Acks are idempotent: a client that lost the answer may send the ack again.
    q.ack(&topic, &group, &second.receipt).await.unwrap();
    q.delete_topic(&topic).await.unwrap();
}

async fn receipt_from_another_handle(peers: Arc<Peers>) {
    let (a, b) = (Arc::clone(&peers.0), Arc::clone(&peers.1));
    let caps = a.capabilities();
    let (topic, group) = setup(&a, deadline(if caps.lease_expiry { 2.0 } else { 60.0 })).await;
    a.publish(&topic, Message::new("handed over"))
        .await
        .unwrap();
    let m = receive_one(&a, &topic, &group).await;
    if !caps.portable_receipts {
        assert_kind(
            b.ack(&topic, &group, &m.receipt).await,
            ErrorKind::Unsupported,
            "ack from another handle without portable receipts",
        );
        a.ack(&topic, &group, &m.receipt).await.unwrap();
        a.delete_topic(&topic).await.unwrap();
        return;
    }
    b.ack(&topic, &group, &m.receipt).await.unwrap();
    if caps.lease_expiry {
        // Acknowledged through `b`: past the 2 s deadline it does not come back on either.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        for (who, q) in [("a", &a), ("b", &b)] {
            let got = receive_within(q, &topic, &group, 10, Duration::from_millis(300)).await;
            assert!(
                got.is_empty(),
                "acknowledged through b, redelivered to {who}"
            );
        }
    }
    a.delete_topic(&topic).await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Model test

#[derive(Debug, Clone)]
enum Op {
    Publish(usize),
    Receive(usize),
    Ack(usize),
    Nack(usize),
}

fn op_strategy() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        3 => (1..4usize).prop_map(Op::Publish),
        3 => (1..5usize).prop_map(Op::Receive),
        2 => any::<usize>().prop_map(Op::Ack),
        1 => any::<usize>().prop_map(Op::Nack),
    ]
}

/// The reference model: message numbers available (in publish order) and leased.
#[derive(Default)]
struct Model {
    next: usize,
    ids: HashMap<usize, String>,
    available: BTreeSet<usize>,
    /// Leased message number -> its receipt.
    leased: BTreeMap<usize, String>,
    /// Deliveries so far per message number.
    attempts: HashMap<usize, u32>,
    acked: HashSet<usize>,
}

async fn run_ops(q: Q, ops: Vec<Op>) -> Result<(), String> {
    let topic = unique_name("km");
    let group = unique_name("kg");
    q.create_topic(&topic).await.map_err(|e| e.to_string())?;
    let result = run_ops_on(&q, &topic, &group, ops).await;
    let _ = q.delete_topic(&topic).await;
    result
}

async fn run_ops_on(q: &Q, topic: &str, group: &str, ops: Vec<Op>) -> Result<(), String> {
    let fail = |what: String| Err::<(), String>(what);
    q.create_group(topic, group, deadline(600.0))
        .await
        .map_err(|e| e.to_string())?;
    let mut model = Model::default();
    let caps = q.capabilities();
    let (nacks, counts_attempts) = (caps.nack, caps.attempt_count);
    for (step, op) in ops.into_iter().enumerate() {
        match op {
            Op::Publish(n) => {
                let messages = (0..n)
                    .map(|i| Message::new(format!("{}", model.next + i)))
                    .collect();
                let ids = q
                    .publish_batch(topic, messages)
                    .await
                    .map_err(|e| format!("step {step}: publish: {e}"))?;
                if ids.len() != n {
                    return fail(format!("step {step}: {} ids for {n} messages", ids.len()));
                }
                for id in ids {
                    model.ids.insert(model.next, id);
                    model.available.insert(model.next);
                    model.next += 1;
                }
            }
            Op::Receive(max) => {
                let can = max.min(model.available.len());
                let mut got = q
                    .receive(topic, group, now_opts(max))
                    .await
                    .map_err(|e| format!("step {step}: receive: {e}"))?;
                if got.is_empty() && can > 0 {
                    // A broker may take a moment to make a publish or a nack visible: wait
                    // for it once, with a generous bound, before calling it missing.
                    got = q
                        .receive(
                            topic,
                            group,
                            ReceiveOptions {
                                max_messages: max,
                                wait: Duration::from_secs(3),
                            },
                        )
                        .await
                        .map_err(|e| format!("step {step}: receive: {e}"))?;
                }
                if got.len() > can || (can > 0 && got.is_empty()) {
                    return fail(format!(
                        "step {step}: receive({max}) returned {} messages with {} available",
                        got.len(),
                        model.available.len()
                    ));
                }
                for m in got {
                    let n: usize = body_str(&m)
                        .parse()
                        .map_err(|_| format!("step {step}: unexpected body {:?}", m.body))?;
                    if model.acked.contains(&n) {
                        return fail(format!("step {step}: acknowledged message {n} came back"));
                    }
                    if !model.available.remove(&n) {
                        return fail(format!(
                            "step {step}: message {n} delivered while not available (leased or unknown)"
                        ));
                    }
                    if model.ids.get(&n) != Some(&m.id) {
                        return fail(format!("step {step}: message {n} has the wrong id"));
                    }
                    let attempts = model.attempts.entry(n).or_insert(0);
                    *attempts += 1;
                    let want = if counts_attempts { *attempts } else { 1 };
                    if m.attempt != want {
                        return fail(format!(
                            "step {step}: message {n} attempt {} but model says {attempts}",
                            m.attempt
                        ));
                    }
                    model.leased.insert(n, m.receipt);
                }
            }
            Op::Ack(i) | Op::Nack(i) => {
                if model.leased.is_empty() {
                    continue;
                }
                let n = *model
                    .leased
                    .keys()
                    .nth(i % model.leased.len())
                    .unwrap_or(&0);
                let receipt = model.leased.remove(&n).unwrap_or_default();
                if matches!(op, Op::Ack(_)) || !nacks {
                    q.ack(topic, group, &receipt)
                        .await
                        .map_err(|e| format!("step {step}: ack of {n}: {e}"))?;
                    model.acked.insert(n);
                } else {
                    q.nack(topic, group, &receipt, Duration::ZERO)
                        .await
                        .map_err(|e| format!("step {step}: nack of {n}: {e}"))?;
                    model.available.insert(n);
                }
            }
        }
    }
    // Give back what is still leased (without nack: settle it), then drain: exactly the
    // unacknowledged messages remain.
    for (n, receipt) in std::mem::take(&mut model.leased) {
        if nacks {
            q.nack(topic, group, &receipt, Duration::ZERO)
                .await
                .map_err(|e| format!("final nack of {n}: {e}"))?;
            model.available.insert(n);
        } else {
            q.ack(topic, group, &receipt)
                .await
                .map_err(|e| format!("final ack of {n}: {e}"))?;
            model.acked.insert(n);
        }
    }
    let mut drained = BTreeSet::new();
    let start = Instant::now();
    loop {
        let got = q
            .receive(topic, group, now_opts(50))
            .await
            .map_err(|e| format!("drain: {e}"))?;
        if got.is_empty() && (drained.len() >= model.available.len() || start.elapsed() > PATIENCE)
        {
            break;
        }
        for m in got {
            let n: usize = body_str(&m).parse().map_err(|_| "drain: bad body")?;
            if !drained.insert(n) {
                return fail(format!("drain: message {n} delivered twice"));
            }
            q.ack(topic, group, &m.receipt)
                .await
                .map_err(|e| format!("drain ack: {e}"))?;
        }
        if drained.len() < model.available.len() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    if drained != model.available {
        return fail(format!(
            "drain returned {drained:?}, the model expects the unacknowledged {:?}",
            model.available
        ));
    }
    Ok(())
}

/// Runs random sequences of publish / receive / ack / nack against queues made by `make`
/// (one per sequence) and compares every result with a reference model; panics with the
/// minimal failing sequence.
///
/// Synchronous: it builds its own tokio runtime, so call it from a plain `#[test]`.
pub fn run_model_test<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn MessageQueue>>,
{
    use proptest::collection::vec;
    use proptest::test_runner::{Config, TestCaseError, TestRunner};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime for the model test");
    let mut runner = TestRunner::new(Config {
        cases: proptest_cases(48),
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&vec(op_strategy(), 1..40), |ops| {
        runtime.block_on(async {
            let queue = make().await;
            run_ops(queue, ops).await.map_err(TestCaseError::fail)
        })
    });
    if let Err(e) = result {
        panic!("queue model test failed: {e}");
    }
}
