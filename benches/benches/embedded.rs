//! Throughput of each embedded backend (one operation per iteration; ops/s = 1 / time).
//! The in-memory backend of each trait is the baseline the durable ones are read against.

use bytes::Bytes;
use cloud_abstraction::Compute;
use cloud_abstraction::compute::WorkloadSpec;
use cloud_abstraction::database::{DocumentStore, PutDocumentOptions};
use cloud_abstraction::queue::{GroupOptions, Message, MessageQueue, ReceiveOptions};
use cloud_abstraction::storage::{BlobStore, BlobStoreExt};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use paas_components::compute::SimCompute;
use paas_components::database::{MemoryDocumentStore, SqliteDocumentStore};
use paas_components::queue::{MemoryQueue, SqliteQueue};
use paas_components::storage::{LocalBlobStore, MemoryBlobStore};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

fn storage(c: &mut Criterion, rt: &tokio::runtime::Runtime, dir: &std::path::Path) {
    let payload = Bytes::from(vec![1u8; 4096]);
    let stores: Vec<(&str, Arc<dyn BlobStore>)> = vec![
        ("memory", Arc::new(MemoryBlobStore::new())),
        (
            "file",
            Arc::new(LocalBlobStore::open(dir.join("blobs")).expect("local store")),
        ),
    ];
    let mut group = c.benchmark_group("embedded/blob_4KiB");
    group.throughput(Throughput::Elements(1));
    for (name, store) in &stores {
        rt.block_on(store.put_bytes("bench/object", payload.clone()))
            .expect("seed");
        group.bench_function(format!("{name}/put"), |b| {
            b.to_async(rt).iter(|| async {
                store
                    .put_bytes("bench/object", payload.clone())
                    .await
                    .expect("put")
            })
        });
        group.bench_function(format!("{name}/get"), |b| {
            b.to_async(rt)
                .iter(|| async { store.get_bytes("bench/object").await.expect("get") })
        });
    }
    group.finish();
}

fn database(c: &mut Criterion, rt: &tokio::runtime::Runtime, dir: &std::path::Path) {
    let sqlite_url = format!("sqlite://{}", dir.join("docs.db").display());
    let stores: Vec<(&str, Arc<dyn DocumentStore>)> = vec![
        ("memory", Arc::new(MemoryDocumentStore::new())),
        (
            "sqlite",
            Arc::new(
                rt.block_on(SqliteDocumentStore::connect(&sqlite_url))
                    .expect("sqlite"),
            ),
        ),
    ];
    let doc = json!({"vehicle": "WVW-0001", "kind": "unlock", "status": "queued", "seq": 1});
    let mut group = c.benchmark_group("embedded/document");
    group.throughput(Throughput::Elements(1));
    for (name, store) in &stores {
        rt.block_on(store.put("bench", "doc", doc.clone(), PutDocumentOptions::default()))
            .expect("seed");
        group.bench_function(format!("{name}/put"), |b| {
            b.to_async(rt).iter(|| async {
                store
                    .put("bench", "doc", doc.clone(), PutDocumentOptions::default())
                    .await
                    .expect("put")
            })
        });
        group.bench_function(format!("{name}/get"), |b| {
            b.to_async(rt)
                .iter(|| async { store.get("bench", "doc").await.expect("get") })
        });
    }
    group.finish();
}

fn queue(c: &mut Criterion, rt: &tokio::runtime::Runtime, dir: &std::path::Path) {
    let sqlite_url = format!("sqlite://{}", dir.join("queue.db").display());
    let queues: Vec<(&str, Arc<dyn MessageQueue>)> = vec![
        ("memory", Arc::new(MemoryQueue::new())),
        (
            "sqlite",
            Arc::new(
                rt.block_on(SqliteQueue::connect(&sqlite_url))
                    .expect("sqlite"),
            ),
        ),
    ];
    let mut group = c.benchmark_group("embedded/queue_publish_receive_ack");
    group.throughput(Throughput::Elements(1));
    for (name, queue) in &queues {
        rt.block_on(async {
            queue.create_topic("bench").await?;
            queue
                .create_group("bench", "workers", GroupOptions::default())
                .await
        })
        .expect("topic");
        group.bench_function(*name, |b| {
            b.to_async(rt).iter(|| async {
                queue
                    .publish(
                        "bench",
                        Message::new(Bytes::from_static(b"unlock WVW-0001")),
                    )
                    .await
                    .expect("publish");
                let got = queue
                    .receive(
                        "bench",
                        "workers",
                        ReceiveOptions {
                            max_messages: 1,
                            wait: Duration::from_secs(1),
                        },
                    )
                    .await
                    .expect("receive");
                for m in got {
                    queue
                        .ack("bench", "workers", &m.receipt)
                        .await
                        .expect("ack");
                }
            })
        });
    }
    group.finish();
}

fn compute(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    let sim = SimCompute::new();
    let n = AtomicU64::new(0);
    let mut group = c.benchmark_group("embedded/compute");
    group.throughput(Throughput::Elements(1));
    group.bench_function("sim/apply", |b| {
        b.to_async(rt).iter(|| async {
            let i = n.fetch_add(1, Ordering::Relaxed) % 64;
            sim.apply(
                WorkloadSpec::command(format!("w{i}"), "sh").with_args(["-c", "exec sleep 3600"]),
            )
            .await
            .expect("apply")
        })
    });
    group.finish();
}

fn embedded(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    storage(c, &rt, dir.path());
    database(c, &rt, dir.path());
    queue(c, &rt, dir.path());
    compute(c, &rt);
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1)).sample_size(30);
    targets = embedded
}
criterion_main!(benches);
