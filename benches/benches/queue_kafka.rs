//! The Kafka adapter's throughput: `benches::queue::publish_receive_ack` (publish in batches,
//! receive, ack each message) through `paas_components::queue::KafkaQueue`, against the same
//! work done with rdkafka directly (the baseline): a `FutureProducer` publishing the same
//! batches and awaiting their delivery, and a `StreamConsumer` in a group reading them and
//! committing the consumed offsets after each batch. Both on the same broker, in the same run;
//! besides criterion's two groups, a final loop alternates the two and prints the ratio
//! (adapter time / native time; target <= 1 / 0.9, i.e. >= 0.9x native throughput).
//!
//! The broker is `KAFKA_BENCH_URL`, else `KAFKA_TEST_URL`, else `kafka://127.0.0.1:19092`
//! (`.ci/services/kafka.sh` starts tansu there); without a broker the bench says so and exits.

use benches::queue::{fresh_topic, publish_receive_ack};
use cloud_abstraction::MessageQueue;
use criterion::{Criterion, Throughput};
use paas_components::queue::KafkaQueue;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message as _};
use std::time::{Duration, Instant};

const MESSAGES: usize = 200;
const BATCH: usize = 50;
const BODY: usize = 256;

struct Native {
    producer: FutureProducer,
    consumer: StreamConsumer,
    topic: String,
}

impl Native {
    async fn run(&self) -> Duration {
        let body = vec![b'x'; BODY];
        let start = Instant::now();
        let mut sent = 0;
        while sent < MESSAGES {
            let n = BATCH.min(MESSAGES - sent);
            let pending: Vec<_> = (0..n)
                .map(|_| {
                    self.producer
                        .send_result(FutureRecord::<str, [u8]>::to(&self.topic).payload(&body[..]))
                        .map_err(|(e, _)| e)
                        .expect("enqueue")
                })
                .collect();
            for p in futures::future::join_all(pending).await {
                p.expect("delivery").map_err(|(e, _)| e).expect("delivered");
            }
            sent += n;
        }
        let mut received = 0;
        while received < MESSAGES {
            let mut in_batch = 0;
            while in_batch < BATCH && received < MESSAGES {
                let m = tokio::time::timeout(Duration::from_secs(30), self.consumer.recv())
                    .await
                    .expect("message in time")
                    .expect("recv");
                let _ = m.payload();
                self.consumer.store_offset_from_message(&m).expect("store");
                in_batch += 1;
                received += 1;
            }
            self.consumer
                .commit_consumer_state(CommitMode::Async)
                .expect("commit");
        }
        start.elapsed()
    }
}

fn main() {
    let url = std::env::var("KAFKA_BENCH_URL")
        .or_else(|_| std::env::var("KAFKA_TEST_URL"))
        .unwrap_or_else(|_| "kafka://127.0.0.1:19092".to_string());
    let brokers = url::Url::parse(&url)
        .ok()
        .and_then(|u| Some(format!("{}:{}", u.host_str()?, u.port()?)))
        .expect("KAFKA_BENCH_URL is kafka://host:port");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let adapter = match rt.block_on(KafkaQueue::connect(&format!(
        "{url}{}session_timeout_ms=6000",
        if url.contains('?') { '&' } else { '?' }
    ))) {
        Ok(q) => q,
        Err(e) => {
            eprintln!(
                "kafka bench: no broker ({e}); start it with .ci/services/kafka.sh. Nothing was measured."
            );
            return;
        }
    };
    let (topic, group) = rt.block_on(fresh_topic(&adapter, "benchkafka"));
    let (native_topic, _) = rt.block_on(fresh_topic(&adapter, "benchnative"));
    // The StreamConsumer spawns its wake-up task on the current runtime.
    let _runtime = rt.enter();
    let native = Native {
        producer: ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("acks", "all")
            // The adapter's producer settings (see queue/kafka.rs), so only the adapter differs.
            .set("enable.idempotence", "false")
            .set("max.in.flight.requests.per.connection", "1")
            .set("reconnect.backoff.max.ms", "1000")
            .set("linger.ms", "2")
            .create()
            .expect("producer"),
        consumer: ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", format!("{native_topic}.native"))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000")
            .set("fetch.wait.max.ms", "100")
            .create()
            .expect("consumer"),
        topic: native_topic.clone(),
    };
    native
        .consumer
        .subscribe(&[&native_topic])
        .expect("subscribe");
    // Both join their groups before anything is measured.
    rt.block_on(async {
        publish_receive_ack(&adapter, &topic, &group, MESSAGES, BATCH, BODY).await;
        native.run().await;
    });

    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10))
        .configure_from_args();
    {
        let mut g = c.benchmark_group("kafka_publish_receive_ack");
        g.throughput(Throughput::Elements(MESSAGES as u64));
        g.bench_function("adapter", |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let (adapter, topic, group) = (&adapter, &topic, &group);
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total +=
                            publish_receive_ack(adapter, topic, group, MESSAGES, BATCH, BODY).await;
                    }
                    total
                }
            })
        });
        g.bench_function("rdkafka", |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let native = &native;
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += native.run().await;
                    }
                    total
                }
            })
        });
        g.finish();
    }
    // Alternating rounds: each side in turn, so drift of the machine hits both alike.
    let (mut a, mut n) = (Duration::ZERO, Duration::ZERO);
    rt.block_on(async {
        for _ in 0..10 {
            a += publish_receive_ack(&adapter, &topic, &group, MESSAGES, BATCH, BODY).await;
            n += native.run().await;
        }
    });
    let ratio = a.as_secs_f64() / n.as_secs_f64();
    println!(
        "kafka alternating, 10 rounds of {MESSAGES} messages: adapter {:.1} msg/s, rdkafka {:.1} msg/s, \
         adapter/native time {ratio:.3} (throughput {:.2}x native)",
        (10 * MESSAGES) as f64 / a.as_secs_f64(),
        (10 * MESSAGES) as f64 / n.as_secs_f64(),
        1.0 / ratio
    );
    rt.block_on(async {
        let _ = adapter.delete_topic(&topic).await;
        let _ = adapter.delete_topic(&native_topic).await;
    });
}
