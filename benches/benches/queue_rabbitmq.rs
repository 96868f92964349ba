//! The RabbitMQ adapter's throughput: publish + receive + ack of 1000 messages (256 bytes) in
//! batches of 32 through `paas_components::queue::RabbitMqQueue`
//! ([`benches::queue::publish_receive_ack`]) against plain lapin doing the same work on the
//! same server in the same run: the same exchange and quorum queue, batches of 32 published
//! with publisher confirms, one consumer with prefetch 32, and each ack confirmed by a
//! `basic.qos` round trip on its channel (the adapter's guarantee that an acknowledged message
//! is not delivered again; see its module docs). Adapter and native alternate, twice.
//! Ratio = native time / adapter time (target >= 0.9).
//!
//! The server URL is `RABBITMQ_BENCH_URL`, else `RABBITMQ_TEST_URL`, else the SERVICES.md
//! default `amqp://guest:guest@127.0.0.1:5672/%2f`; without a server the bench says so and
//! exits. It deletes its topic at the end.

use benches::queue::Side;
use cloud_abstraction::MessageQueue;
use criterion::Criterion;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use paas_components::queue::RabbitMqQueue;
use std::time::{Duration, Instant};

const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const MESSAGES: usize = 1000;
const BATCH: usize = 32;
const BODY: usize = 256;
const PREFETCH: u16 = 32;

/// The adapter's work done with plain lapin: returns the wall time of one round.
async fn native_round(
    publisher: &Channel,
    ch: &Channel,
    consumer: &mut Consumer,
    exchange: &str,
    body: &[u8],
) -> Duration {
    let start = Instant::now();
    let mut sent = 0;
    while sent < MESSAGES {
        let n = BATCH.min(MESSAGES - sent);
        let mut confirms = Vec::with_capacity(n);
        for _ in 0..n {
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id(uuid::Uuid::new_v4().simple().to_string().into());
            confirms.push(
                publisher
                    .basic_publish(
                        exchange.into(),
                        "".into(),
                        BasicPublishOptions::default(),
                        body,
                        properties,
                    )
                    .await
                    .expect("publish"),
            );
        }
        for confirm in confirms {
            assert!(confirm.await.expect("confirm").is_ack());
        }
        sent += n;
    }
    let mut received = 0;
    while received < MESSAGES {
        let d = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .expect("delivery in time")
            .expect("consumer open")
            .expect("delivery");
        ch.basic_ack(d.delivery_tag, BasicAckOptions::default())
            .await
            .expect("ack");
        ch.basic_qos(PREFETCH, BasicQosOptions::default())
            .await
            .expect("ack confirmation");
        received += 1;
    }
    start.elapsed()
}

fn main() {
    let url = std::env::var("RABBITMQ_BENCH_URL")
        .or_else(|_| std::env::var("RABBITMQ_TEST_URL"))
        .unwrap_or_else(|_| DEFAULT_URL.to_string());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let adapter_url = format!("{url}?prefetch={PREFETCH}");
    let adapter = match rt.block_on(RabbitMqQueue::connect(&adapter_url)) {
        Ok(q) => q,
        Err(e) => {
            eprintln!("rabbitmq bench: no server ({e}); see SERVICES.md. Nothing was measured.");
            return;
        }
    };
    let (topic, group) = rt.block_on(benches::queue::fresh_topic(&adapter, "bench"));
    let native_group = format!("{group}n");
    rt.block_on(adapter.create_group(
        &topic,
        &native_group,
        cloud_abstraction::queue::GroupOptions::default(),
    ))
    .expect("native group");
    // The native side: its own connection, a confirm channel, and a consumer on the native
    // group's quorum queue (created by the adapter, so the topology is identical).
    let (publisher, consume_channel, consumer, _conn) = rt.block_on(async {
        let conn = Connection::connect(&url, ConnectionProperties::default())
            .await
            .expect("native connection");
        let publisher = conn.create_channel().await.expect("channel");
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        let ch = conn.create_channel().await.expect("channel");
        ch.basic_qos(PREFETCH, BasicQosOptions::default())
            .await
            .expect("qos");
        let consumer = ch
            .basic_consume(
                format!("paas.{topic}.{native_group}").as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        (publisher, ch, consumer, conn)
    });
    // Behind a lock only because criterion's closure is `FnMut`; uncontended.
    let consumer = tokio::sync::Mutex::new(consumer);
    let exchange = format!("paas.{topic}");
    let body = vec![b'x'; BODY];

    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8))
        .configure_from_args();
    {
        let mut g = c.benchmark_group("rabbitmq_publish_receive_ack_1000");
        for round in 1..=1 {
            g.bench_function(format!("adapter/{round}"), |b| {
                b.to_async(&rt).iter_custom(|iters| {
                    let (adapter, topic, group) = (&adapter, &topic, &group);
                    async move {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            total += benches::queue::publish_receive_ack(
                                adapter, topic, group, MESSAGES, BATCH, BODY,
                            )
                            .await;
                        }
                        total
                    }
                })
            });
            g.bench_function(format!("native/{round}"), |b| {
                b.to_async(&rt).iter_custom(|iters| {
                    let (publisher, ch, consumer, exchange, body) =
                        (&publisher, &consume_channel, &consumer, &exchange, &body);
                    async move {
                        let mut consumer = consumer.lock().await;
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            total +=
                                native_round(publisher, ch, &mut consumer, exchange, body).await;
                        }
                        total
                    }
                })
            });
        }
        g.finish();
    }
    c.final_summary();

    // Alternating rounds (the order swapped every round): the figure to quote. CPU from
    // /proc: this process's, and the broker's (the Erlang VM, `beam.smp`).
    let rounds = 16;
    let broker_cpu = || benches::queue::process_cpu_time("beam.smp");
    let (mut a, mut n) = (Side::default(), Side::default());
    rt.block_on(async {
        let mut consumer = consumer.lock().await;
        for round in 0..rounds {
            if round % 2 == 0 {
                a.round(
                    &broker_cpu,
                    benches::queue::publish_receive_ack(
                        &adapter, &topic, &group, MESSAGES, BATCH, BODY,
                    ),
                )
                .await;
            }
            n.round(
                &broker_cpu,
                native_round(
                    &publisher,
                    &consume_channel,
                    &mut consumer,
                    &exchange,
                    &body,
                ),
            )
            .await;
            if round % 2 == 1 {
                a.round(
                    &broker_cpu,
                    benches::queue::publish_receive_ack(
                        &adapter, &topic, &group, MESSAGES, BATCH, BODY,
                    ),
                )
                .await;
            }
        }
    });
    benches::queue::report(
        &format!("rabbitmq (batch {BATCH}, prefetch {PREFETCH}, {BODY} B)"),
        MESSAGES,
        &a,
        &n,
    );
    rt.block_on(adapter.delete_topic(&topic)).expect("cleanup");
}
