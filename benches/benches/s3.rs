//! The S3 adapter's overhead: object put and get of 4 KiB and 4 MiB through
//! `paas_components::storage::S3BlobStore` against plain `object_store` (the baseline), on the
//! same S3 server in the same run. Ratio = adapter time / object_store time (target <= 1.05).
//!
//! The bench starts nothing: it reads the server URL from `S3_BENCH_URL` (else `S3_TEST_URL`,
//! as printed by `.ci/services/s3.sh`) and exits with a message if the server is not there.

use bytes::Bytes;
use cloud_abstraction::storage::{BlobStore, GetOptions, PutOptions};
use criterion::{Criterion, Throughput};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use paas_components::storage::S3BlobStore;
use std::time::Duration;

fn main() {
    let Some(url) = std::env::var("S3_BENCH_URL")
        .or_else(|_| std::env::var("S3_TEST_URL"))
        .ok()
    else {
        eprintln!(
            "s3 bench: no server configured; set S3_BENCH_URL or S3_TEST_URL \
             (eval \"$(.ci/services/s3.sh)\" starts one and prints it). Nothing was measured."
        );
        return;
    };
    let parsed = url::Url::parse(&url).expect("S3_BENCH_URL is a URL");
    let param = |name: &str| {
        parsed
            .query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    let bucket = parsed.host_str().expect("bucket").to_string();
    let endpoint = param("endpoint").expect("the bench URL names an endpoint");
    let endpoint_url = url::Url::parse(&endpoint).expect("endpoint is a URL");
    let addr = format!(
        "{}:{}",
        endpoint_url.host_str().unwrap_or("127.0.0.1"),
        endpoint_url.port_or_known_default().unwrap_or(80)
    );
    if std::net::TcpStream::connect_timeout(
        &addr.parse().expect("endpoint address"),
        Duration::from_secs(2),
    )
    .is_err()
    {
        eprintln!(
            "s3 bench: no S3 server answers at {addr}; start it with .ci/services/s3.sh. \
             Nothing was measured."
        );
        return;
    }

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let adapter = S3BlobStore::from_url(&url).expect("adapter");
    let baseline = AmazonS3Builder::new()
        .with_bucket_name(&bucket)
        .with_region(param("region").unwrap_or_else(|| "us-east-1".into()))
        .with_endpoint(&endpoint)
        .with_allow_http(true)
        .with_access_key_id(param("access_key_id").expect("access_key_id"))
        .with_secret_access_key(param("secret_access_key").expect("secret_access_key"))
        .build()
        .expect("object_store baseline");

    let mut c = Criterion::default()
        .sample_size(20)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1))
        .configure_from_args();
    let run = format!("bench-{}", std::process::id());
    for (label, size) in [("4KiB", 4 * 1024), ("4MiB", 4 * 1024 * 1024)] {
        let payload = Bytes::from(vec![7u8; size]);
        let key = format!("{run}/{label}");
        let path = Path::from(key.as_str());

        let mut group = c.benchmark_group(format!("s3/put_{label}"));
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function("object_store", |b| {
            b.to_async(&rt).iter(|| async {
                baseline
                    .put(&path, PutPayload::from(payload.clone()))
                    .await
                    .expect("put")
            })
        });
        group.bench_function("adapter", |b| {
            b.to_async(&rt).iter(|| async {
                adapter
                    .put(&key, payload.clone(), PutOptions::default())
                    .await
                    .expect("put")
            })
        });
        group.finish();

        let mut group = c.benchmark_group(format!("s3/get_{label}"));
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function("object_store", |b| {
            b.to_async(&rt).iter(|| async {
                baseline
                    .get(&path)
                    .await
                    .expect("get")
                    .bytes()
                    .await
                    .expect("body")
            })
        });
        group.bench_function("adapter", |b| {
            b.to_async(&rt)
                .iter(|| async { adapter.get(&key, GetOptions::default()).await.expect("get") })
        });
        group.finish();
        rt.block_on(adapter.delete(&key)).expect("cleanup");
    }
    c.final_summary();
}
