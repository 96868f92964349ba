//! The MQTT adapter's throughput: publish, receive and acknowledge through
//! `paas_components::queue::MqttQueue` (`benches::queue::publish_receive_ack`) against plain
//! rumqttc v5 doing the same QoS 1 work on the same broker in the same run: 1,000 messages of
//! 100 bytes published in batches of 50 (each batch waits for its 50 PUBACKs, so 50 publishes
//! are in flight on both sides), then received in batches of up to 50 from a persistent
//! session with a shared subscription (Receive Maximum 65,535 on both) and acknowledged one
//! by one with manual PUBACKs. The two alternate, twice. Ratio = native time / adapter time
//! (throughput of the adapter relative to native; target >= 0.9).
//!
//! The broker is `MQTT_BENCH_URL`, else `MQTT_TEST_URL`, else `mqtt://127.0.0.1:1883`;
//! without one the bench says so and exits.

use bytes::Bytes;
use cloud_abstraction::MessageQueue;
use criterion::{Criterion, Throughput};
use paas_components::queue::MqttQueue;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{ConnectProperties, Packet, Publish};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc};

const MESSAGES: usize = 1000;
const BATCH: usize = 50;
const BODY: usize = 100;

/// Plain rumqttc: one publisher connection, one persistent subscriber session.
struct Native {
    publisher: AsyncClient,
    acked: Arc<(AtomicU64, Notify)>,
    subscriber: AsyncClient,
    deliveries: tokio::sync::Mutex<mpsc::UnboundedReceiver<Publish>>,
    topic: String,
}

fn options(id: &str, host: &str, port: u16, persistent: bool) -> MqttOptions {
    let mut o = MqttOptions::new(id, host, port);
    o.set_keep_alive(Duration::from_secs(10));
    o.set_clean_start(!persistent);
    o.set_manual_acks(persistent);
    o.set_max_packet_size(Some(268_435_460));
    let mut p = ConnectProperties::new();
    p.max_packet_size = Some(268_435_460);
    if persistent {
        p.session_expiry_interval = Some(600);
        p.receive_maximum = Some(u16::MAX);
    }
    o.set_connect_properties(p);
    o
}

impl Native {
    async fn start(host: &str, port: u16) -> Native {
        let run = format!("{:08x}", std::process::id());
        let topic = format!("benchnative/{run}");
        let (publisher, mut events) =
            AsyncClient::new(options(&format!("bn-pub-{run}"), host, port, false), 10_000);
        let acked = Arc::new((AtomicU64::new(0), Notify::new()));
        {
            let acked = Arc::clone(&acked);
            tokio::spawn(async move {
                loop {
                    match events.poll().await {
                        Ok(Event::Incoming(Packet::PubAck(_))) => {
                            acked.0.fetch_add(1, Ordering::SeqCst);
                            acked.1.notify_waiters();
                        }
                        Ok(_) => {}
                        Err(e) => panic!("native publisher: {e}"),
                    }
                }
            });
        }
        let (subscriber, mut events) =
            AsyncClient::new(options(&format!("bn-sub-{run}"), host, port, true), 10_000);
        let (tx, rx) = mpsc::unbounded_channel();
        let subscribed = Arc::new(Notify::new());
        {
            let subscribed = Arc::clone(&subscribed);
            tokio::spawn(async move {
                loop {
                    match events.poll().await {
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            let _ = tx.send(p);
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => subscribed.notify_one(),
                        Ok(_) => {}
                        Err(e) => panic!("native subscriber: {e}"),
                    }
                }
            });
        }
        subscriber
            .subscribe(format!("$share/bench/{topic}"), QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        subscribed.notified().await;
        Native {
            publisher,
            acked,
            subscriber,
            deliveries: tokio::sync::Mutex::new(rx),
            topic,
        }
    }

    /// The workload of `benches::queue::publish_receive_ack`, natively.
    async fn run(&self) -> Duration {
        let body = Bytes::from(vec![b'x'; BODY]);
        let start = Instant::now();
        let mut sent = 0;
        while sent < MESSAGES {
            let n = BATCH.min(MESSAGES - sent);
            let target = self.acked.0.load(Ordering::SeqCst) + n as u64;
            for _ in 0..n {
                self.publisher
                    .publish(self.topic.clone(), QoS::AtLeastOnce, false, body.clone())
                    .await
                    .expect("publish");
            }
            loop {
                let notified = self.acked.1.notified();
                if self.acked.0.load(Ordering::SeqCst) >= target {
                    break;
                }
                notified.await;
            }
            sent += n;
        }
        let mut deliveries = self.deliveries.lock().await;
        let mut received = 0;
        while received < MESSAGES {
            let mut got = Vec::with_capacity(BATCH);
            if let Ok(Some(p)) =
                tokio::time::timeout(Duration::from_millis(200), deliveries.recv()).await
            {
                got.push(p);
                while got.len() < BATCH {
                    match deliveries.try_recv() {
                        Ok(p) => got.push(p),
                        Err(_) => break,
                    }
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "native lost messages"
            );
            for p in &got {
                self.subscriber.ack(p).await.expect("ack");
            }
            received += got.len();
        }
        start.elapsed()
    }
}

fn main() {
    let url = std::env::var("MQTT_BENCH_URL")
        .or_else(|_| std::env::var("MQTT_TEST_URL"))
        .unwrap_or_else(|_| "mqtt://127.0.0.1:1883".to_string());
    let parsed = url::Url::parse(&url).expect("MQTT URL");
    let (host, port) = (
        parsed.host_str().unwrap_or("127.0.0.1").to_string(),
        parsed.port().unwrap_or(1883),
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let adapter = match rt.block_on(MqttQueue::connect(&url)) {
        Ok(q) => q,
        Err(e) => {
            eprintln!("mqtt bench: no broker ({e}); see SERVICES.md. Nothing was measured.");
            return;
        }
    };
    let (topic, group) = rt.block_on(benches::queue::fresh_topic(&adapter, "benchmqtt"));
    let native = rt.block_on(Native::start(&host, port));

    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8))
        .configure_from_args();
    for round in 1..=2 {
        let mut g = c.benchmark_group(format!("mqtt_publish_receive_ack_round{round}"));
        g.throughput(Throughput::Elements(MESSAGES as u64));
        let order: [&str; 2] = if round == 1 {
            ["adapter", "native"]
        } else {
            ["native", "adapter"]
        };
        for name in order {
            g.bench_function(name, |b| {
                b.to_async(&rt).iter_custom(|iters| {
                    let (adapter, native, topic, group) = (&adapter, &native, &topic, &group);
                    async move {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            total += if name == "adapter" {
                                benches::queue::publish_receive_ack(
                                    adapter as &dyn MessageQueue,
                                    topic,
                                    group,
                                    MESSAGES,
                                    BATCH,
                                    BODY,
                                )
                                .await
                            } else {
                                native.run().await
                            };
                        }
                        total
                    }
                })
            });
        }
        g.finish();
    }
    rt.block_on(async {
        let _ = adapter.delete_topic(&topic).await;
        adapter.close().await;
    });
}
