//! The cost of the tower bridge: a direct trait call vs the same call through
//! `Service` + a layer stack (metrics, retry, timeout), on the in-memory backends, where the
//! backend itself costs least and the overhead shows most.

use bytes::Bytes;
use cloud_abstraction::database::{DocumentStore, PutDocumentOptions};
use cloud_abstraction::storage::{BlobStore, BlobStoreExt};
use criterion::{Criterion, criterion_group, criterion_main};
use paas_components::database::MemoryDocumentStore;
use paas_components::layers::{self, MetricsLayer, RetryLayer, TimeoutLayer};
use paas_components::storage::MemoryBlobStore;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceBuilder;
use tower::layer::util::{Identity, Stack};

/// Metrics outermost, then retry, then a per-attempt timeout.
type Resilience =
    ServiceBuilder<Stack<TimeoutLayer, Stack<RetryLayer, Stack<MetricsLayer, Identity>>>>;

fn stack() -> Resilience {
    ServiceBuilder::new()
        .layer(MetricsLayer::new())
        .layer(RetryLayer::new(3))
        .layer(TimeoutLayer::new(Duration::from_secs(5)))
}

fn bridge(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let payload = Bytes::from(vec![7u8; 4096]);

    let direct: Arc<dyn BlobStore> = Arc::new(MemoryBlobStore::new());
    let bare_bridge = layers::blob_store(
        Arc::new(MemoryBlobStore::new()),
        tower::layer::util::Identity::new(),
    );
    let layered = layers::blob_store(Arc::new(MemoryBlobStore::new()), stack());
    for store in [&direct, &bare_bridge, &layered] {
        rt.block_on(store.put_bytes("vehicles/v1/state", payload.clone()))
            .expect("seed");
    }

    let mut group = c.benchmark_group("bridge/blob_get_4KiB");
    for (name, store) in [
        ("direct", &direct),
        ("service", &bare_bridge),
        ("service+metrics+retry+timeout", &layered),
    ] {
        group.bench_function(name, |b| {
            b.to_async(&rt)
                .iter(|| async { store.get_bytes("vehicles/v1/state").await.expect("get") })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("bridge/blob_put_4KiB");
    for (name, store) in [
        ("direct", &direct),
        ("service", &bare_bridge),
        ("service+metrics+retry+timeout", &layered),
    ] {
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                store
                    .put_bytes("vehicles/v1/state", payload.clone())
                    .await
                    .expect("put")
            })
        });
    }
    group.finish();

    let docs_direct: Arc<dyn DocumentStore> = Arc::new(MemoryDocumentStore::new());
    let docs_layered = layers::document_store(Arc::new(MemoryDocumentStore::new()), stack());
    let doc = json!({"vehicle": "WVW-0001", "kind": "unlock", "status": "queued"});
    for store in [&docs_direct, &docs_layered] {
        rt.block_on(store.put("commands", "c1", doc.clone(), PutDocumentOptions::default()))
            .expect("seed");
    }
    let mut group = c.benchmark_group("bridge/document_get");
    for (name, store) in [
        ("direct", &docs_direct),
        ("service+metrics+retry+timeout", &docs_layered),
    ] {
        group.bench_function(name, |b| {
            b.to_async(&rt)
                .iter(|| async { store.get("commands", "c1").await.expect("get") })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bridge
}
criterion_main!(benches);
