//! The queue throughput workload, run the same way through every adapter: publish `messages`
//! in batches of `batch`, then receive and acknowledge them with up to `batch` in flight.
//! Each queue bench runs this through our adapter and the same work through the broker's
//! native client on the same server, alternating, so the ratio is what gets reported.

use cloud_abstraction::MessageQueue;
use cloud_abstraction::queue::{GroupOptions, Message, ReceiveOptions};
use std::time::{Duration, Instant};

/// Publishes `messages` bodies of `body_len` bytes in batches of `batch`, then receives and
/// acknowledges all of them (receives of up to `batch`); returns the wall time.
///
/// Panics if a message is missing after 30 s: a benchmark that loses messages measures nothing.
pub async fn publish_receive_ack(
    q: &dyn MessageQueue,
    topic: &str,
    group: &str,
    messages: usize,
    batch: usize,
    body_len: usize,
) -> Duration {
    let body = bytes::Bytes::from(vec![b'x'; body_len]);
    let start = Instant::now();
    let mut sent = 0;
    while sent < messages {
        let n = batch.min(messages - sent);
        q.publish_batch(topic, (0..n).map(|_| Message::new(body.clone())).collect())
            .await
            .expect("publish");
        sent += n;
    }
    let mut received = 0;
    while received < messages {
        let got = q
            .receive(
                topic,
                group,
                ReceiveOptions {
                    max_messages: batch,
                    wait: Duration::from_millis(200),
                },
            )
            .await
            .expect("receive");
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "only {received} of {messages} messages arrived"
        );
        for m in &got {
            q.ack(topic, group, &m.receipt).await.expect("ack");
        }
        received += got.len();
    }
    start.elapsed()
}

/// A fresh topic and group for one benchmark, with a lease long enough for any iteration.
pub async fn fresh_topic(q: &dyn MessageQueue, prefix: &str) -> (String, String) {
    let topic = format!("{prefix}{:08x}", rand_u32());
    let group = format!("{topic}g");
    q.create_topic(&topic).await.expect("create topic");
    q.create_group(
        &topic,
        &group,
        GroupOptions {
            ack_deadline: Duration::from_secs(120),
            ..GroupOptions::default()
        },
    )
    .await
    .expect("create group");
    (topic, group)
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now()) as u32
}
