//! The MQTT 5 queue against the real Mosquitto: the conformance suite, the peer cases with
//! two handles, the model test, PUBACKs in receive order whatever order the application acks
//! in (seen on the wire), and a connection cut while publishers and consumers run.
#![cfg(feature = "mqtt")]

mod support;

use cloud_abstraction::ErrorKind;
use cloud_abstraction::queue::{GroupOptions, Message, MessageQueue, ReceiveOptions};
use cloud_abstraction::testkit::{assert_kind, queue};
use paas_components::queue::MqttQueue;
use std::sync::Arc;
use std::time::Duration;

const DEFAULT_URL: &str = "mqtt://127.0.0.1:1883";

async fn url() -> Option<String> {
    let url = std::env::var("MQTT_TEST_URL").unwrap_or_else(|_| DEFAULT_URL.to_string());
    support::server_url("MQTT_TEST_URL", DEFAULT_URL, &support::target_of(&url)).await
}

async fn open(url: &str) -> Arc<dyn MessageQueue> {
    Arc::new(
        MqttQueue::connect(url)
            .await
            .expect("connect to the MQTT broker"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    let Some(url) = url().await else { return };
    let report = queue::run_suite(open(&url).await).await;
    assert_eq!(report.passed.len(), queue::cases().len());
}

/// Two handles are two sets of connections (two client ids).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_conformance_two_clients() {
    let Some(url) = url().await else { return };
    let report = queue::run_peer_suite(open(&url).await, open(&url).await).await;
    assert_eq!(report.passed.len(), queue::peer_cases().len());
}

#[test]
fn model() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let Some(url) = runtime.block_on(url()) else {
        return;
    };
    drop(runtime);
    queue::run_model_test(|| {
        let url = url.clone();
        async move { open(&url).await }
    });
}

// ---------------------------------------------------------------------------------------------
// PUBACKs on the wire

/// What one MQTT connection carried, as seen by [`Sniffer`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// A QoS 1 PUBLISH from the broker: packet id, DUP flag, topic.
    Publish(u16, bool, String),
    /// A PUBACK from the client: packet id.
    PubAck(u16),
}

/// A loopback proxy that reads the MQTT packets passing through it: broker → client
/// PUBLISHes and client → broker PUBACKs, per connection. `cut()` drops every connection
/// (new ones are let through at once).
struct Sniffer {
    addr: std::net::SocketAddr,
    /// Per connection, in accept order: what it carried.
    log: Arc<std::sync::Mutex<Vec<Vec<Seen>>>>,
    tasks: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Sniffer {
    async fn start(target: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log: Arc<std::sync::Mutex<Vec<Vec<Seen>>>> = Arc::default();
        let tasks: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let accept = {
            let (log, tasks) = (Arc::clone(&log), Arc::clone(&tasks));
            tokio::spawn(async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else {
                        continue;
                    };
                    let conn = {
                        let mut log = log.lock().unwrap();
                        log.push(Vec::new());
                        log.len() - 1
                    };
                    let (client_read, client_write) = inbound.into_split();
                    let (broker_read, broker_write) = outbound.into_split();
                    let up = pipe(client_read, broker_write, Arc::clone(&log), conn, false);
                    let down = pipe(broker_read, client_write, Arc::clone(&log), conn, true);
                    let (up, down) = (tokio::spawn(up), tokio::spawn(down));
                    tasks.lock().unwrap().extend([up, down]);
                }
            })
        };
        Self {
            addr,
            log,
            tasks,
            accept,
        }
    }

    fn cut(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    /// What the connections carrying messages of `data` (a topic fragment) carried, each.
    fn data_connections(&self, data: &str) -> Vec<Vec<Seen>> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|seen| {
                seen.iter()
                    .any(|s| matches!(s, Seen::Publish(_, _, t) if t.contains(data)))
            })
            .cloned()
            .collect()
    }
}

impl Drop for Sniffer {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// Copies `from` to `to`, logging the QoS 1 PUBLISHes (from the broker, `down`) or the
/// PUBACKs (from the client) in the bytes.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    log: Arc<std::sync::Mutex<Vec<Vec<Seen>>>>,
    conn: usize,
    down: bool,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Log before forwarding, so a packet is in the log before the other side sees it.
        pending.extend_from_slice(&buf[..n]);
        while let Some((kind, flags, body, used)) = frame(&pending) {
            let seen = match kind {
                3 if down && (flags >> 1) & 3 == 1 => {
                    let len = u16::from_be_bytes([body[0], body[1]]) as usize;
                    let topic = String::from_utf8_lossy(&body[2..2 + len]).into_owned();
                    let pkid = u16::from_be_bytes([body[2 + len], body[3 + len]]);
                    Some(Seen::Publish(pkid, flags & 8 != 0, topic))
                }
                4 if !down => Some(Seen::PubAck(u16::from_be_bytes([body[0], body[1]]))),
                _ => None,
            };
            if let Some(seen) = seen {
                log.lock().unwrap()[conn].push(seen);
            }
            pending.drain(..used);
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// One whole MQTT packet at the start of `bytes`: (type, flags, body, bytes used).
fn frame(bytes: &[u8]) -> Option<(u8, u8, &[u8], usize)> {
    let first = *bytes.first()?;
    let (mut len, mut shift, mut i) = (0usize, 0, 1);
    loop {
        let b = *bytes.get(i)?;
        len |= ((b & 0x7f) as usize) << shift;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    let end = i.checked_add(len)?;
    (bytes.len() >= end).then(|| (first >> 4, first & 0x0f, &bytes[i..end], end))
}

/// Receives until `n` messages arrived (15 s at most).
async fn receive_n(
    q: &dyn MessageQueue,
    topic: &str,
    group: &str,
    n: usize,
) -> Vec<cloud_abstraction::queue::ReceivedMessage> {
    support::queue_faults::receive_n(q, topic, group, n, Duration::from_secs(15)).await
}

fn unique(prefix: &str) -> String {
    format!("{prefix}{:08x}", rand::random::<u32>())
}

fn pubacks(seen: &[Seen]) -> Vec<u16> {
    seen.iter()
        .filter_map(|s| match s {
            Seen::PubAck(p) => Some(*p),
            _ => None,
        })
        .collect()
}

fn publishes(seen: &[Seen], data: &str) -> Vec<(u16, bool)> {
    seen.iter()
        .filter_map(|s| match s {
            Seen::Publish(p, dup, t) if t.contains(data) => Some((*p, *dup)),
            _ => None,
        })
        .collect()
}

/// Polls `check` every 50 ms for up to 5 s.
async fn eventually(mut check: impl FnMut() -> bool) -> bool {
    for _ in 0..100 {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check()
}

/// The application acknowledges in any order; PUBACKs go out in receive order, each once,
/// and later acks wait for earlier ones. Held acks survive a reconnect: the broker sends the
/// messages again, and only the one not acknowledged is delivered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_out_of_receive_order() {
    let Some(url) = url().await else { return };
    let sniffer = Sniffer::start(support::target_of(&url)).await;
    let q = open(&support::via(&url, sniffer.addr)).await;
    let (topic, group) = (unique("ooo"), unique("g"));
    q.create_topic(&topic).await.unwrap();
    q.create_group(&topic, &group, GroupOptions::default())
        .await
        .unwrap();
    let data = format!("/data/{topic}/");
    let ids = q
        .publish_batch(
            &topic,
            (0..10).map(|i| Message::new(format!("{i}"))).collect(),
        )
        .await
        .unwrap();
    let got = receive_n(&*q, &topic, &group, 10).await;
    assert_eq!(got.len(), 10);
    let received: Vec<&str> = got.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(received, ids.iter().map(String::as_str).collect::<Vec<_>>());
    // Everything but the first, in a scrambled order: no PUBACK may go out yet.
    for i in [9, 7, 5, 3, 1, 8, 6, 4, 2] {
        q.ack(&topic, &group, &got[i].receipt).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let conns = sniffer.data_connections(&data);
    assert_eq!(conns.len(), 1, "one session connection");
    assert!(
        pubacks(&conns[0]).is_empty(),
        "a PUBACK went out before the first message was acknowledged: {:?}",
        pubacks(&conns[0])
    );
    // The first: all ten go out, in receive order, once each.
    q.ack(&topic, &group, &got[0].receipt).await.unwrap();
    assert!(eventually(|| pubacks(&sniffer.data_connections(&data)[0]).len() >= 10).await);
    q.ack(&topic, &group, &got[4].receipt).await.unwrap(); // idempotent, no second PUBACK
    tokio::time::sleep(Duration::from_millis(300)).await;
    let conn = &sniffer.data_connections(&data)[0];
    let order: Vec<u16> = publishes(conn, &data).iter().map(|(p, _)| *p).collect();
    assert_eq!(pubacks(conn), order, "PUBACKs in receive order, each once");

    // Three more; the last two acknowledged, the first not; then the connection drops.
    q.publish_batch(
        &topic,
        (10..13).map(|i| Message::new(format!("{i}"))).collect(),
    )
    .await
    .unwrap();
    let more = receive_n(&*q, &topic, &group, 3).await;
    assert_eq!(more.len(), 3);
    q.ack(&topic, &group, &more[2].receipt).await.unwrap();
    q.ack(&topic, &group, &more[1].receipt).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(pubacks(&sniffer.data_connections(&data)[0]).len(), 10);
    sniffer.cut();
    // The session comes back (same handle); the broker sends the three again, and only the
    // unacknowledged one is delivered again.
    let again = receive_n(&*q, &topic, &group, 1).await;
    assert_eq!(
        again.len(),
        1,
        "the unacknowledged message is delivered again"
    );
    assert_eq!(again[0].id, more[0].id);
    assert_ne!(again[0].receipt, more[0].receipt);
    assert_kind(
        q.ack(&topic, &group, &more[0].receipt).await,
        ErrorKind::PreconditionFailed,
        "ack with the receipt of the delivery before the reconnect",
    );
    q.ack(&topic, &group, &again[0].receipt).await.unwrap();
    let extra = q
        .receive(
            &topic,
            &group,
            ReceiveOptions {
                max_messages: 10,
                wait: Duration::from_millis(1000),
            },
        )
        .await
        .unwrap();
    assert!(
        extra.is_empty(),
        "acknowledged messages came back: {extra:?}"
    );
    let conns = sniffer.data_connections(&data);
    let resumed = conns.last().unwrap();
    let resent = publishes(resumed, &data);
    assert_eq!(
        resent.len(),
        3,
        "the broker resent the three unacknowledged"
    );
    assert!(resent.iter().all(|(_, dup)| *dup), "resent with DUP");
    assert!(
        eventually(|| pubacks(sniffer.data_connections(&data).last().unwrap()).len() >= 3).await
    );
    let resumed = sniffer.data_connections(&data).last().unwrap().clone();
    assert_eq!(
        pubacks(&resumed),
        resent.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        "PUBACKs after the reconnect in receive order"
    );
    q.delete_topic(&topic).await.unwrap();
}

/// Acks from several tasks at once, in scrambled orders: the PUBACKs still go out in receive
/// order, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_acks_keep_receive_order() {
    use rand::seq::SliceRandom;
    let Some(url) = url().await else { return };
    let sniffer = Sniffer::start(support::target_of(&url)).await;
    let q = open(&support::via(&url, sniffer.addr)).await;
    let (topic, group) = (unique("conc"), unique("g"));
    q.create_topic(&topic).await.unwrap();
    q.create_group(&topic, &group, GroupOptions::default())
        .await
        .unwrap();
    let data = format!("/data/{topic}/");
    const N: usize = 200;
    q.publish_batch(
        &topic,
        (0..N).map(|i| Message::new(format!("{i}"))).collect(),
    )
    .await
    .unwrap();
    let mut receipts: Vec<String> = receive_n(&*q, &topic, &group, N)
        .await
        .into_iter()
        .map(|m| m.receipt)
        .collect();
    assert_eq!(receipts.len(), N);
    receipts.shuffle(&mut rand::rng());
    let mut tasks = Vec::new();
    for chunk in receipts.chunks(N / 4) {
        let (q, topic, group, chunk) =
            (Arc::clone(&q), topic.clone(), group.clone(), chunk.to_vec());
        tasks.push(tokio::spawn(async move {
            for receipt in chunk {
                q.ack(&topic, &group, &receipt).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert!(eventually(|| pubacks(&sniffer.data_connections(&data)[0]).len() >= N).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let conn = &sniffer.data_connections(&data)[0];
    let order: Vec<u16> = publishes(conn, &data).iter().map(|(p, _)| *p).collect();
    assert_eq!(order.len(), N);
    assert_eq!(pubacks(conn), order, "PUBACKs in receive order, each once");
    q.delete_topic(&topic).await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// A cut while publishers and consumers run

/// The connection goes through a proxy that is cut while publishers and a consumer run, then
/// restored: the shared scenario (`support::queue_faults`). MQTT has no leases and no nack: a
/// message not acknowledged comes again when the session resumes after the reconnect, and an
/// ack is kept by the handle (its PUBACK goes out in receive order), so an ack does not fail
/// during the cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_while_publishing_and_consuming() {
    let Some(url) = url().await else { return };
    let proxy = support::TcpProxy::start(&support::target_of(&url)).await;
    let q = open(&support::via(&url, proxy.addr())).await;
    let report = support::queue_faults::cut_and_restore(support::queue_faults::QueueFault {
        queue: Arc::clone(&q),
        proxy: &proxy,
        group_options: GroupOptions::default(),
        cut_for: Duration::from_secs(2),
        redelivery: Duration::from_secs(3),
        ack_commit: Duration::ZERO,
        acks_final: true,
        receive_fails_while_cut: true,
        ack_fails_while_cut: false,
        acks_may_go_stale: false,
        nothing_pending: None,
    })
    .await;
    println!("{report}");
    // The handle keeps every ack (no lease, no round trip): none fails, so no message is
    // left unacknowledged in the session without being delivered again.
    assert_eq!(report.ack_errors, 0, "an MQTT ack failed");
    q.delete_topic(&report.topic).await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// URLs

/// Bad URLs are typed errors; `mqtts://` is `Unsupported` (no TLS without `ring` in rumqttc).
#[tokio::test]
async fn urls() {
    for (bad, kind) in [
        ("mqtt://", ErrorKind::InvalidArgument),
        (
            "mqtt://127.0.0.1:1883/some/path",
            ErrorKind::InvalidArgument,
        ),
        (
            "mqtt://127.0.0.1:1883?colour=blue",
            ErrorKind::InvalidArgument,
        ),
        (
            "mqtt://127.0.0.1:1883?prefix=a/%23",
            ErrorKind::InvalidArgument,
        ),
        (
            "mqtt://127.0.0.1:1883?prefix=$SYS",
            ErrorKind::InvalidArgument,
        ),
        (
            "mqtt://127.0.0.1:1883?client_id=a%20b",
            ErrorKind::InvalidArgument,
        ),
        (
            "mqtt://127.0.0.1:1883?session_expiry=0",
            ErrorKind::InvalidArgument,
        ),
        (
            "mqtt://127.0.0.1:1883?keep_alive=1",
            ErrorKind::InvalidArgument,
        ),
        ("mqtt://127.0.0.1:1883?region=", ErrorKind::InvalidArgument),
        ("mqtts://127.0.0.1:8883", ErrorKind::Unsupported),
    ] {
        assert_kind(MqttQueue::connect(bad).await, kind, bad);
        assert_kind(paas_components::open_queue(bad).await, kind, bad);
    }
    // Nothing listens on port 1 of loopback: retryable, and no password in the message.
    let err = MqttQueue::connect("mqtt://user:hunter2@127.0.0.1:1")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(!format!("{err} {err:?}").contains("hunter2"));
}

/// A URL with credentials and a location opens; neither Debug nor info() shows the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_by_url() {
    let Some(url) = url().await else { return };
    let mut with = url::Url::parse(&url).unwrap();
    with.set_username("vehicle").unwrap();
    with.set_password(Some("hunter2")).unwrap();
    with.set_query(Some(
        "provider=aws&region=eu-central-1&client_id=bench-a1&prefix=paas/t",
    ));
    let q = paas_components::open_queue(with.as_str()).await.unwrap();
    assert_eq!(q.info().backend, "mqtt");
    assert_eq!(q.info().location.region, "eu-central-1");
    assert!(!format!("{q:?}").contains("hunter2"));
    let topic = unique("url");
    q.create_topic(&topic).await.unwrap();
    q.delete_topic(&topic).await.unwrap();
}
