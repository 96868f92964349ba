//! The NATS JetStream adapter's throughput against native async-nats doing the same work on
//! the same server: publish 200 messages of 256 bytes in batches of 20 (each message with a
//! `Nats-Msg-Id`, all 20 stream acks awaited together), then pull them 20 at a time and
//! acknowledge each with a confirmed ack (native: `double_ack`), 20 in flight at most.
//!
//! Both sides use a stream and a consumer of the same configuration (made by the adapter's
//! `create_topic` / `create_group`, each side its own). criterion measures each side, then an
//! alternating pass (adapter, native, native, adapter, …) gives the ratio quoted in
//! benches/README.md: adapter throughput / native throughput (target >= 0.9).
//!
//! The server is `NATS_BENCH_URL`, else `NATS_TEST_URL`, else `nats://127.0.0.1:4222`; without
//! a server the bench says so and exits. Its streams are deleted at the end.

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer::PullConsumer};
use benches::queue::{Side, fresh_topic, publish_receive_ack};
use cloud_abstraction::MessageQueue;
use criterion::{Criterion, Throughput};
use futures::StreamExt;
use paas_components::queue::NatsQueue;
use std::time::{Duration, Instant};

const DEFAULT_URL: &str = "nats://127.0.0.1:4222";
const MESSAGES: usize = 200;
const BATCH: usize = 20;
const BODY: usize = 256;

/// The native side: the same work with async-nats' JetStream API.
async fn native_publish_receive_ack(
    js: &jetstream::Context,
    subject: &str,
    consumer: &PullConsumer,
) -> Duration {
    let body = bytes::Bytes::from(vec![b'x'; BODY]);
    let start = Instant::now();
    let mut sent = 0;
    while sent < MESSAGES {
        let n = BATCH.min(MESSAGES - sent);
        let mut acks = Vec::with_capacity(n);
        for _ in 0..n {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", uuid::Uuid::new_v4().to_string().as_str());
            acks.push(
                js.publish_with_headers(subject.to_string(), headers, body.clone())
                    .await
                    .expect("publish"),
            );
        }
        for ack in acks {
            ack.await.expect("stream ack");
        }
        sent += n;
    }
    let mut received = 0;
    while received < MESSAGES {
        let mut batch = consumer
            .fetch()
            .max_messages(BATCH)
            .messages()
            .await
            .expect("fetch");
        while let Some(m) = batch.next().await {
            m.expect("message").double_ack().await.expect("ack");
            received += 1;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "only {received} of {MESSAGES} messages arrived"
        );
    }
    start.elapsed()
}

fn main() {
    let url = std::env::var("NATS_BENCH_URL")
        .or_else(|_| std::env::var("NATS_TEST_URL"))
        .unwrap_or_else(|_| DEFAULT_URL.to_string());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let prefix = format!("bench{}", std::process::id());
    let sep = if url.contains('?') { '&' } else { '?' };
    let adapter = match rt.block_on(NatsQueue::connect(&format!("{url}{sep}prefix={prefix}"))) {
        Ok(q) => q,
        Err(e) => {
            eprintln!("nats bench: no server ({e}); see SERVICES.md. Nothing was measured.");
            return;
        }
    };
    let (topic, group) = rt.block_on(fresh_topic(&adapter, "a"));
    let (native_topic, native_group) = rt.block_on(fresh_topic(&adapter, "n"));
    let client = rt
        .block_on(async_nats::connect(&url))
        .expect("native connect");
    // The context spawns its acker task: it must be made inside the runtime.
    let js = {
        let _runtime = rt.enter();
        jetstream::new(client)
    };
    let subject = adapter.subject(&native_topic);
    let consumer: PullConsumer = rt
        .block_on(async {
            js.get_stream(adapter.stream_name(&native_topic))
                .await?
                .get_consumer(&native_group)
                .await
        })
        .expect("native consumer");

    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(10))
        .configure_from_args();
    {
        let mut g = c.benchmark_group(format!("nats/publish_receive_ack_{MESSAGES}x{BATCH}"));
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
        g.bench_function("native", |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let (js, subject, consumer) = (&js, &subject, &consumer);
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += native_publish_receive_ack(js, subject, consumer).await;
                    }
                    total
                }
            })
        });
        g.finish();
    }
    c.final_summary();

    // The ratio: alternating rounds, each order equally often. CPU from /proc: this
    // process's and the server's.
    let rounds = 30;
    let server_cpu = || benches::queue::process_cpu_time("nats-server");
    let (mut ours, mut theirs) = (Side::default(), Side::default());
    rt.block_on(async {
        for round in 0..rounds {
            let adapter_first = round % 2 == 0;
            if adapter_first {
                ours.round(
                    &server_cpu,
                    publish_receive_ack(&adapter, &topic, &group, MESSAGES, BATCH, BODY),
                )
                .await;
            }
            theirs
                .round(
                    &server_cpu,
                    native_publish_receive_ack(&js, &subject, &consumer),
                )
                .await;
            if !adapter_first {
                ours.round(
                    &server_cpu,
                    publish_receive_ack(&adapter, &topic, &group, MESSAGES, BATCH, BODY),
                )
                .await;
            }
        }
    });
    benches::queue::report(
        &format!("nats (batch {BATCH}, {BODY} B)"),
        MESSAGES,
        &ours,
        &theirs,
    );
    rt.block_on(async {
        let _ = adapter.delete_topic(&topic).await;
        let _ = adapter.delete_topic(&native_topic).await;
    });
}
