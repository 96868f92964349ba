//! The fault scenario every server-backed queue runs: the connection to the server goes
//! through a [`TcpProxy`] that is cut while publishers and a consumer run, then restored.
//!
//! Layout of a run, on a fresh topic and group:
//! 1. `ACKED_BEFORE` messages published, received and acknowledged (then a pause of
//!    [`QueueFault::ack_commit`] for backends that confirm acks in the background);
//! 2. `HELD` messages published and received, and left unacknowledged;
//! 3. `PUBLISHERS` publishers and one consumer (which acknowledges everything it gets) start;
//!    after a second the proxy is cut for [`QueueFault::cut_for`], then restored;
//! 4. the publishers stop once the same handle has published again; the consumer drains.
//!
//! What it checks (the contract): publishing fails with retryable errors during the cut,
//! within a bound (no hang); at most the publishes in flight at the cut succeed during it; the
//! same handle recovers; no acknowledged publish is lost; every message not acknowledged (the
//! held ones, the ones whose ack failed) is delivered again; a message acknowledged before the
//! cut is never delivered again, and with [`QueueFault::acks_final`] neither is any message
//! whose ack returned `Ok`; nothing is left to deliver at the end.
//!
//! An ack that failed may still have been applied by the server (only its answer was lost):
//! such a message is "ambiguous", and may be missing from the acknowledged ones. With a
//! [`QueueFault::nothing_pending`] probe the scenario then waits until the server holds
//! nothing pending for the group, which proves every ambiguous ack was applied (or the message
//! came again and was acknowledged); without one it keeps consuming for the redelivery bound
//! and then checks that a receive finds nothing.
//!
//! What differs per backend comes from the queue's capabilities (de-duplication: the
//! publisher retries under the same message id, else each attempt has a new body so that a
//! failed publish the server kept anyway is not mistaken for a redelivery; lease expiry:
//! whether the final check waits for the ack deadline) and from [`QueueFault`]. No nack is
//! used: MQTT has none, and the contract is about acks.

use super::TcpProxy;
use cloud_abstraction::ErrorKind;
use cloud_abstraction::MessageQueue;
use cloud_abstraction::queue::{GroupOptions, Message, ReceiveOptions};
use cloud_abstraction::testkit::unique_name;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Messages acknowledged before the cut.
const ACKED_BEFORE: usize = 10;
/// Messages received before the cut and never acknowledged by then.
const HELD: usize = 5;
/// Concurrent publishers: at most one publish each is in flight when the cut comes.
const PUBLISHERS: usize = 2;
/// The longest a single call may take to fail while the server is cut off.
const CALL_BOUND: Duration = Duration::from_secs(10);
/// A call that has not returned by then hangs.
const HANG: Duration = Duration::from_secs(30);

/// A backend's "the server holds nothing pending for this group" probe, given the topic and
/// the group; asked over a connection of its own (not through the proxy).
pub type NothingPending =
    Box<dyn Fn(String, String) -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

/// What differs per backend.
pub struct QueueFault<'a> {
    /// The queue under test, reaching its server through `proxy`.
    pub queue: Arc<dyn MessageQueue>,
    /// The proxy between `queue` and its server.
    pub proxy: &'a TcpProxy,
    /// Options of the scenario's group (its ack deadline is the lease).
    pub group_options: GroupOptions,
    /// How long the proxy stays cut.
    pub cut_for: Duration,
    /// How long an unacknowledged message may take to be delivered again after the restore
    /// (its lease, or the reconnect for backends that redeliver on a new channel or session).
    pub redelivery: Duration,
    /// Pause after the acks before the cut, for backends that confirm acks to the server in
    /// the background (a commit interval).
    pub ack_commit: Duration,
    /// An ack that returned `Ok` was confirmed by the server: the message is never delivered
    /// again, before or after the cut.
    pub acks_final: bool,
    /// A receive during the cut fails (rather than returning nothing).
    pub receive_fails_while_cut: bool,
    /// An ack during the cut fails (rather than being kept by the client for later); such an
    /// ack reached no server, so the message must come again.
    pub ack_fails_while_cut: bool,
    /// An ack may fail with `PreconditionFailed` after the cut (the delivery's channel or
    /// lease ended with it; the message is delivered again).
    pub acks_may_go_stale: bool,
    /// The server holds nothing pending for the group: settles the ambiguous acks.
    pub nothing_pending: Option<NothingPending>,
}

/// What a run did, for the test to print and to check further.
#[derive(Debug)]
pub struct QueueFaultReport {
    /// The scenario's topic (left for the test's own checks; the test deletes it).
    pub topic: String,
    /// The scenario's group.
    pub group: String,
    /// Publishes acknowledged before the cut.
    pub published_before: usize,
    /// Publishes acknowledged during the cut.
    pub published_during: usize,
    /// Publishes acknowledged after the restore.
    pub published_after: usize,
    /// Publishes that failed.
    pub publish_errors: usize,
    /// Receives of the consumer that failed.
    pub receive_errors: usize,
    /// Acks of the consumer that failed.
    pub ack_errors: usize,
    /// Messages whose ack returned `Ok`.
    pub acknowledged: usize,
    /// Messages that must have arrived whose only ack failed and that never came again: the
    /// server applied the ack (proved by the probe where the backend has one).
    pub ambiguous: usize,
    /// Deliveries to the consumer, repeats included.
    pub deliveries: usize,
}

impl std::fmt::Display for QueueFaultReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "fault test: {} published before the cut, {} during, {} after; {} publish errors, \
             {} receive and {} ack errors; {} acknowledged, {} ambiguous (ack failed, never delivered again); \
             {} deliveries",
            self.published_before,
            self.published_during,
            self.published_after,
            self.publish_errors,
            self.receive_errors,
            self.ack_errors,
            self.acknowledged,
            self.ambiguous,
            self.deliveries
        )
    }
}

/// The consumer's record, by body.
#[derive(Default)]
struct Ledger {
    /// Bodies whose ack returned `Ok`.
    acked: HashSet<String>,
    /// Bodies whose ack failed: the server may or may not have applied it.
    ambiguous: HashSet<String>,
    /// Deliveries per body.
    delivered: HashMap<String, usize>,
    /// Deliveries of a body after its ack returned `Ok`.
    after_ack: Vec<String>,
    /// Failed receives and acks: (what, kind, message).
    errors: Vec<(&'static str, ErrorKind, String)>,
    deliveries: usize,
}

/// One publisher's record.
#[derive(Default)]
struct Published {
    /// Bodies acknowledged, with when.
    acked: Vec<(String, Instant)>,
    /// Failed publishes: kind, time taken, message.
    errors: Vec<(ErrorKind, Duration, String)>,
}

fn body(m: &cloud_abstraction::queue::ReceivedMessage) -> String {
    String::from_utf8_lossy(&m.body).into_owned()
}

fn opts(max: usize, wait_ms: u64) -> ReceiveOptions {
    ReceiveOptions {
        max_messages: max,
        wait: Duration::from_millis(wait_ms),
    }
}

/// `call` fails retryably within [`CALL_BOUND`] (the server is cut off).
async fn assert_fails_retryably<T: std::fmt::Debug>(
    what: &str,
    call: impl Future<Output = cloud_abstraction::Result<T>>,
) {
    let started = Instant::now();
    let result = tokio::time::timeout(HANG, call)
        .await
        .unwrap_or_else(|_| panic!("{what} hung while the server was cut off"));
    let err = result.expect_err(what);
    assert!(err.is_retryable(), "{what} while cut: {err}");
    assert!(
        started.elapsed() < CALL_BOUND,
        "{what} took {:?} to fail",
        started.elapsed()
    );
}

/// Receives until `n` messages arrived or `patience` ran out (receives of 300 ms each).
pub async fn receive_n(
    q: &dyn MessageQueue,
    topic: &str,
    group: &str,
    n: usize,
    patience: Duration,
) -> Vec<cloud_abstraction::queue::ReceivedMessage> {
    let start = Instant::now();
    let mut got = Vec::new();
    while got.len() < n && start.elapsed() < patience {
        got.extend(
            q.receive(topic, group, opts(n - got.len(), 300))
                .await
                .unwrap(),
        );
    }
    got
}

/// Runs the scenario (see the module docs); panics on any broken promise.
pub async fn cut_and_restore(fault: QueueFault<'_>) -> QueueFaultReport {
    let QueueFault {
        queue: q,
        proxy,
        group_options,
        cut_for,
        redelivery,
        ack_commit,
        acks_final,
        receive_fails_while_cut,
        ack_fails_while_cut,
        acks_may_go_stale,
        nothing_pending,
    } = fault;
    let caps = q.capabilities();
    let lease = group_options.ack_deadline;
    let topic = unique_name("ft");
    let group = unique_name("fg");
    q.create_topic(&topic).await.unwrap();
    q.create_group(&topic, &group, group_options).await.unwrap();

    // 1. Acknowledged before the cut, and confirmed.
    let acked_before: HashSet<String> = (0..ACKED_BEFORE).map(|i| format!("acked{i}")).collect();
    q.publish_batch(
        &topic,
        (0..ACKED_BEFORE)
            .map(|i| Message::new(format!("acked{i}")))
            .collect(),
    )
    .await
    .unwrap();
    let got = receive_n(
        q.as_ref(),
        &topic,
        &group,
        ACKED_BEFORE,
        Duration::from_secs(20),
    )
    .await;
    let mut seen = HashSet::new();
    for m in &got {
        q.ack(&topic, &group, &m.receipt).await.unwrap();
        seen.insert(body(m));
    }
    assert_eq!(seen, acked_before, "the acknowledged ones were received");
    tokio::time::sleep(ack_commit).await;

    // 2. Received before the cut and never acknowledged by then.
    let held_bodies: HashSet<String> = (0..HELD).map(|i| format!("held{i}")).collect();
    q.publish_batch(
        &topic,
        (0..HELD)
            .map(|i| Message::new(format!("held{i}")))
            .collect(),
    )
    .await
    .unwrap();
    let held = receive_n(q.as_ref(), &topic, &group, HELD, Duration::from_secs(20)).await;
    assert_eq!(
        held.iter().map(body).collect::<HashSet<_>>(),
        held_bodies,
        "the held ones were received (and nothing acknowledged came again)"
    );

    // 3. Publishers and a consumer run through the cut.
    let stop = Arc::new(AtomicBool::new(false));
    let (mut publishers, mut records) = (Vec::new(), Vec::new());
    for p in 0..PUBLISHERS {
        let (q, topic, stop) = (Arc::clone(&q), topic.clone(), Arc::clone(&stop));
        let record = Arc::new(Mutex::new(Published::default()));
        records.push(Arc::clone(&record));
        publishers.push(tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(Ordering::SeqCst) {
                let text = format!("p{p}-{n}");
                let message = if caps.deduplication {
                    // The same id until acknowledged: a retry of a publish the server kept is
                    // de-duplicated.
                    Message::new(text.clone()).with_id(text.clone())
                } else {
                    // A new body per attempt: a failed publish may still have been kept, and
                    // a retry under its body would look like a redelivery.
                    n += 1;
                    Message::new(text.clone())
                };
                let started = Instant::now();
                let result = tokio::time::timeout(HANG, q.publish(&topic, message))
                    .await
                    .unwrap_or_else(|_| panic!("publish {text} hung"));
                match result {
                    Ok(_) => {
                        record.lock().unwrap().acked.push((text, Instant::now()));
                        if caps.deduplication {
                            n += 1;
                        }
                    }
                    Err(e) => {
                        let error = (e.kind(), started.elapsed(), e.to_string());
                        record.lock().unwrap().errors.push(error);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let consumer_stop = Arc::new(AtomicBool::new(false));
    let consumer = {
        let (q, topic, group) = (Arc::clone(&q), topic.clone(), group.clone());
        let (ledger, stop) = (Arc::clone(&ledger), Arc::clone(&consumer_stop));
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let result = tokio::time::timeout(HANG, q.receive(&topic, &group, opts(10, 200)))
                    .await
                    .expect("receive hung");
                let batch = match result {
                    Ok(batch) => batch,
                    Err(e) => {
                        let error = ("receive", e.kind(), e.to_string());
                        ledger.lock().unwrap().errors.push(error);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                for m in batch {
                    let text = body(&m);
                    {
                        let mut l = ledger.lock().unwrap();
                        l.deliveries += 1;
                        *l.delivered.entry(text.clone()).or_default() += 1;
                        if l.acked.contains(&text) {
                            l.after_ack.push(text.clone());
                        }
                    }
                    let result = tokio::time::timeout(HANG, q.ack(&topic, &group, &m.receipt))
                        .await
                        .expect("ack hung");
                    let mut l = ledger.lock().unwrap();
                    match result {
                        Ok(()) => {
                            l.acked.insert(text);
                        }
                        Err(e) => {
                            l.errors.push(("ack", e.kind(), e.to_string()));
                            l.ambiguous.insert(text);
                        }
                    }
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.cut().await;
    let cut_at = Instant::now();
    assert_fails_retryably("publish", q.publish(&topic, Message::new("during"))).await;
    if receive_fails_while_cut {
        assert_fails_retryably("receive", q.receive(&topic, &group, opts(1, 100))).await;
    }
    if ack_fails_while_cut {
        // Retryable, or stale where the backend gave the delivery back with its connection.
        let started = Instant::now();
        let err = tokio::time::timeout(HANG, q.ack(&topic, &group, &held[0].receipt))
            .await
            .expect("ack hung while the server was cut off")
            .expect_err("ack while cut");
        let stale = acks_may_go_stale && err.kind() == ErrorKind::PreconditionFailed;
        assert!(err.is_retryable() || stale, "ack while cut: {err}");
        assert!(
            started.elapsed() < CALL_BOUND,
            "ack took {:?} to fail",
            started.elapsed()
        );
    }
    while cut_at.elapsed() < cut_for {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let restored_at = Instant::now();
    proxy.restore();

    // 4. The same handle recovers: the publishers publish again (bounded), a little longer.
    let published_since = |at: Instant| -> usize {
        records
            .iter()
            .map(|r| {
                r.lock()
                    .unwrap()
                    .acked
                    .iter()
                    .filter(|(_, t)| *t >= at)
                    .count()
            })
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while published_since(restored_at) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::SeqCst);
    for p in publishers {
        p.await.unwrap();
    }

    let (mut published_before, mut published_during, mut published_after) = (0, 0, 0);
    let mut published: HashSet<String> = HashSet::new();
    let mut publish_errors = Vec::new();
    for r in &records {
        let r = r.lock().unwrap();
        for (text, at) in &r.acked {
            if *at < cut_at {
                published_before += 1;
            } else if *at < restored_at {
                published_during += 1;
            } else {
                published_after += 1;
            }
            published.insert(text.clone());
        }
        publish_errors.extend(r.errors.iter().cloned());
    }

    // Drain: every acknowledged publish and every held message is acknowledged, or its ack
    // failed (ambiguous, settled below).
    let mut must = published.clone();
    must.extend(held_bodies.iter().cloned());
    let settled = || {
        let l = ledger.lock().unwrap();
        must.iter()
            .all(|m| l.acked.contains(m) || l.ambiguous.contains(m))
    };
    let drain_bound = redelivery + Duration::from_secs(30);
    let start = Instant::now();
    while !settled() && start.elapsed() < drain_bound {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // An ambiguous ack that was not applied is delivered again after `redelivery`: keep
    // consuming until the server holds nothing pending, or for that long.
    let pending_left = match &nothing_pending {
        Some(probe) => {
            let deadline = Instant::now() + redelivery + Duration::from_secs(20);
            loop {
                if probe(topic.clone(), group.clone()).await {
                    break false;
                }
                if Instant::now() > deadline {
                    break true;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        None => {
            tokio::time::sleep(redelivery).await;
            false
        }
    };
    consumer_stop.store(true, Ordering::SeqCst);
    consumer.await.unwrap();
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());

    let report = QueueFaultReport {
        topic: topic.clone(),
        group: group.clone(),
        published_before,
        published_during,
        published_after,
        publish_errors: publish_errors.len(),
        receive_errors: ledger.errors.iter().filter(|e| e.0 == "receive").count(),
        ack_errors: ledger.errors.iter().filter(|e| e.0 == "ack").count(),
        acknowledged: ledger.acked.len(),
        ambiguous: must
            .iter()
            .filter(|m| !ledger.acked.contains(*m) && ledger.ambiguous.contains(*m))
            .count(),
        deliveries: ledger.deliveries,
    };

    // Publishing failed during the cut, retryably and within the bound.
    assert!(
        !publish_errors.is_empty(),
        "publishing failed during the cut"
    );
    for (kind, took, error) in &publish_errors {
        assert!(kind.is_retryable(), "a publish failed for good: {error}");
        assert!(
            *took < CALL_BOUND,
            "a publish took {took:?} to fail: {error}"
        );
    }
    assert!(
        published_during <= PUBLISHERS,
        "at most the publishes in flight at the cut succeeded: {published_during}"
    );
    assert!(published_before > 0, "the publishers ran before the cut");
    assert!(
        published_after > 0,
        "the publishers published again after the restore"
    );
    // The consumer's failures are retryable (or a stale receipt where the backend says so).
    for (what, kind, error) in &ledger.errors {
        let stale = *what == "ack" && acks_may_go_stale && *kind == ErrorKind::PreconditionFailed;
        assert!(
            kind.is_retryable() || stale,
            "{what} failed for good: {error}"
        );
    }
    // Nothing acknowledged is lost: missing from the acks only where an ack failed and the
    // server applied it anyway (it holds nothing pending, when the backend can tell).
    assert!(
        !pending_left,
        "the server still holds messages for the group"
    );
    let mut missing: Vec<&String> = must
        .iter()
        .filter(|m| !ledger.acked.contains(*m) && !ledger.ambiguous.contains(*m))
        .collect();
    missing.sort();
    assert!(missing.is_empty(), "lost: {missing:?}");
    // Every held message came again.
    let mut not_again: Vec<&String> = held_bodies
        .iter()
        .filter(|b| !ledger.delivered.contains_key(*b))
        .collect();
    not_again.sort();
    assert!(
        not_again.is_empty(),
        "unacknowledged before the cut, not delivered again: {not_again:?}"
    );
    // Acknowledged before the cut: never again.
    let mut again: Vec<&String> = acked_before
        .iter()
        .filter(|b| ledger.delivered.contains_key(*b))
        .collect();
    again.sort();
    assert!(
        again.is_empty(),
        "acknowledged before the cut, delivered again: {again:?}"
    );
    if acks_final {
        assert!(
            ledger.after_ack.is_empty(),
            "acknowledged (Ok), yet delivered again: {:?}",
            ledger.after_ack
        );
    }
    // Nothing is left to deliver, past the lease where there is one.
    if caps.lease_expiry {
        tokio::time::sleep(lease.min(redelivery) + Duration::from_millis(500)).await;
    }
    let left = q.receive(&topic, &group, opts(10, 1000)).await.unwrap();
    let left: Vec<String> = left.iter().map(body).collect();
    assert!(left.is_empty(), "still delivered after the drain: {left:?}");
    report
}
