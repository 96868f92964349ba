//! Portable copy / migrate across real backends: a collection from PostgreSQL to Redis and
//! from SQLite to PostgreSQL, and a prefix of objects from the local filesystem to S3 and on to
//! Azure Blob, each with progress reporting and the verification pass.
#![cfg(all(
    feature = "postgres",
    feature = "redis",
    feature = "sqlite",
    feature = "s3",
    feature = "azure",
    feature = "local"
))]

mod support;

use bytes::Bytes;
use cloud_abstraction::database::{DocumentStore, DocumentStoreExt, PutDocumentOptions, Query};
use cloud_abstraction::storage::{BlobStore, BlobStoreExt, PutOptions};
use cloud_abstraction::testkit::unique_name;
use paas_components::database::{PostgresDocumentStore, RedisDocumentStore, SqliteDocumentStore};
use paas_components::migrate::{CopyOptions, copy_blobs, copy_collection};
use paas_components::storage::{AzureBlobStore, LocalBlobStore, S3BlobStore};
use serde_json::json;
use std::time::Duration;

const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";
const REDIS: &str = "redis://127.0.0.1:6379/0";
const S3: &str = "s3://test-bucket?endpoint=http://127.0.0.1:9000&region=us-east-1\
    &access_key_id=ciaccesskey&secret_access_key=cisecretkey&conditional_put=disabled";
const AZURE: &str =
    "azure://test-container?emulator=true&endpoint=http://127.0.0.1:10000/devstoreaccount1";

async fn seed_documents(store: &dyn DocumentStore, collection: &str, n: usize) {
    for i in 0..n {
        let doc = json!({"vin": format!("WVW{i:05}"), "km": i * 100, "owner": {"country": if i % 2 == 0 { "DE" } else { "FR" }}});
        store
            .put(
                collection,
                &format!("car-{i:03}"),
                doc,
                PutDocumentOptions::default(),
            )
            .await
            .unwrap();
    }
    // One document with a TTL: the copy carries the remaining lifetime over.
    store
        .put(
            collection,
            "session",
            json!({"token": "t"}),
            PutDocumentOptions {
                ttl: Some(Duration::from_secs(600)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
}

async fn assert_same_collection(a: &dyn DocumentStore, b: &dyn DocumentStore, collection: &str) {
    let left = a.query_all(collection, Query::all()).await.unwrap();
    let right = b.query_all(collection, Query::all()).await.unwrap();
    assert_eq!(left.len(), right.len());
    for (x, y) in left.iter().zip(&right) {
        assert_eq!(x.id, y.id);
        assert_eq!(x.value, y.value);
        assert_eq!(x.expires_at.is_some(), y.expires_at.is_some(), "{}", x.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collection_moves_between_real_databases() {
    let Some(pg_url) = support::server_url("POSTGRES_TEST_URL", POSTGRES, "127.0.0.1:5432").await
    else {
        return;
    };
    let Some(redis_url) = support::server_url("REDIS_TEST_URL", REDIS, "127.0.0.1:6379").await
    else {
        return;
    };
    let table = unique_name("migrate_");
    let postgres = PostgresDocumentStore::connect_table(&pg_url, &table)
        .await
        .unwrap();
    let redis = RedisDocumentStore::connect(&redis_url)
        .await
        .unwrap()
        .with_namespace(&unique_name("migrate-"))
        .unwrap();
    let sqlite = SqliteDocumentStore::connect("sqlite::memory:")
        .await
        .unwrap();
    let collection = "vehicles";

    // SQLite (embedded) -> PostgreSQL -> Redis: the path of a service moving to a cloud and on.
    seed_documents(&sqlite, collection, 120).await;
    let mut calls = 0;
    let report = copy_collection(
        &sqlite,
        &postgres,
        collection,
        CopyOptions {
            page_size: 50,
            ..Default::default()
        },
        |p| {
            calls += 1;
            assert_eq!(p.items, calls);
        },
    )
    .await
    .unwrap();
    assert_eq!(
        (report.copied, report.verified, report.skipped),
        (121, 121, 0)
    );
    assert!(report.mismatches.is_empty());
    assert!(report.bytes > 0);
    assert_eq!(calls, 121);
    assert_same_collection(&sqlite, &postgres, collection).await;

    let report = copy_collection(
        &postgres,
        &redis,
        collection,
        CopyOptions::default(),
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!((report.copied, report.verified), (121, 121));
    assert_same_collection(&postgres, &redis, collection).await;

    // A second pass without overwrite leaves the destination alone.
    redis
        .put(
            collection,
            "car-000",
            json!({"changed": true}),
            PutDocumentOptions::default(),
        )
        .await
        .unwrap();
    let report = copy_collection(
        &postgres,
        &redis,
        collection,
        CopyOptions {
            overwrite: false,
            ..Default::default()
        },
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!((report.copied, report.skipped), (0, 121));
    assert_eq!(
        redis
            .get(collection, "car-000")
            .await
            .unwrap()
            .unwrap()
            .value,
        json!({"changed": true})
    );

    redis.purge().await.unwrap();
    let pool = sqlx::PgPool::connect(&pg_url).await.unwrap();
    sqlx::query(&format!("DROP TABLE IF EXISTS \"{table}\""))
        .execute(&pool)
        .await
        .unwrap();
}

fn endpoint_of(url: &str, default: &str) -> String {
    let url = url::Url::parse(url).unwrap();
    let endpoint = url
        .query_pairs()
        .find(|(k, _)| k == "endpoint")
        .map(|(_, v)| v.into_owned());
    match endpoint {
        Some(e) => {
            let e = url::Url::parse(&e).unwrap();
            format!(
                "{}:{}",
                e.host_str().unwrap(),
                e.port_or_known_default().unwrap()
            )
        }
        None => default.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_move_between_real_stores() {
    let Some((s3_url, az_url)) = object_servers().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let local = LocalBlobStore::open(dir.path()).unwrap();
    let s3 = S3BlobStore::from_url(&s3_url).unwrap();
    let azure = AzureBlobStore::from_url(&az_url).unwrap();
    let prefix = format!("{}/", unique_name("migrate-"));

    // Small objects with metadata, one object larger than a list page, and one outside the prefix.
    for i in 0..30 {
        let options = PutOptions::default()
            .with_content_type("application/json")
            .with_metadata("vin", format!("wvw{i}"));
        local
            .put(
                &format!("{prefix}telemetry/{i:03}.json"),
                Bytes::from(format!("{{\"seq\":{i}}}")),
                options,
            )
            .await
            .unwrap();
    }
    let big = Bytes::from(
        (0..3 * 1024 * 1024)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    local
        .put_bytes(&format!("{prefix}firmware/image.bin"), big.clone())
        .await
        .unwrap();
    local
        .put_bytes("elsewhere/not-copied", Bytes::from_static(b"x"))
        .await
        .unwrap();

    let mut last = String::new();
    let report = copy_blobs(
        &local,
        &s3,
        &prefix,
        CopyOptions {
            page_size: 7,
            ..Default::default()
        },
        |p| last = p.last.clone(),
    )
    .await
    .unwrap();
    assert_eq!((report.copied, report.verified), (31, 31));
    assert!(report.mismatches.is_empty(), "{:?}", report.mismatches);
    assert_eq!(
        report.bytes,
        local
            .list_all(&prefix)
            .await
            .unwrap()
            .iter()
            .map(|m| m.size)
            .sum::<u64>()
    );
    assert!(last.starts_with(&prefix));
    assert_eq!(
        s3.get_bytes(&format!("{prefix}firmware/image.bin"))
            .await
            .unwrap(),
        big
    );
    let meta = s3
        .head(&format!("{prefix}telemetry/007.json"))
        .await
        .unwrap();
    assert_eq!(meta.content_type.as_deref(), Some("application/json"));
    assert_eq!(meta.metadata.get("vin").map(String::as_str), Some("wvw7"));
    assert!(!s3.exists("elsewhere/not-copied").await.unwrap());

    let report = copy_blobs(&s3, &azure, &prefix, CopyOptions::default(), |_| {})
        .await
        .unwrap();
    assert_eq!((report.copied, report.verified), (31, 31));
    assert!(report.mismatches.is_empty(), "{:?}", report.mismatches);
    assert_eq!(
        azure
            .get_bytes(&format!("{prefix}firmware/image.bin"))
            .await
            .unwrap(),
        big
    );

    for store in [&s3 as &dyn BlobStore, &azure] {
        for meta in store.list_all(&prefix).await.unwrap() {
            store.delete(&meta.key).await.unwrap();
        }
    }
}

/// The URLs of the S3 server and Azurite, `None` (after saying so) on a developer machine
/// without them.
async fn object_servers() -> Option<(String, String)> {
    let s3_configured = std::env::var("S3_TEST_URL").unwrap_or_else(|_| S3.to_string());
    let s3_url = support::server_url(
        "S3_TEST_URL",
        S3,
        &endpoint_of(&s3_configured, "127.0.0.1:9000"),
    )
    .await?;
    let az_configured = std::env::var("AZURE_TEST_URL").unwrap_or_else(|_| AZURE.to_string());
    let az_url = support::server_url(
        "AZURE_TEST_URL",
        AZURE,
        &endpoint_of(&az_configured, "127.0.0.1:10000"),
    )
    .await?;
    Some((s3_url, az_url))
}

/// An S3 client that bypasses the portable rules, like another tool (boto3, the AWS CLI)
/// writing to the same bucket.
fn raw_s3(url: &str) -> object_store::aws::AmazonS3 {
    let parsed = url::Url::parse(url).unwrap();
    let param = |name: &str| {
        parsed
            .query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(parsed.host_str().unwrap())
        .with_endpoint(param("endpoint").unwrap())
        .with_region(param("region").unwrap_or_else(|| "us-east-1".into()))
        .with_access_key_id(param("access_key_id").unwrap())
        .with_secret_access_key(param("secret_access_key").unwrap())
        .with_allow_http(true)
        .build()
        .unwrap()
}

/// Objects other tools wrote copy as they are where the destination can hold them, and a
/// destination that cannot is refused by the pre-flight, before anything is copied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_other_tools_wrote_copy_as_stored_or_are_refused_before_copying() {
    use object_store::{Attribute, AttributeValue, Attributes, ObjectStore};
    let Some((s3_url, az_url)) = object_servers().await else {
        return;
    };
    let s3 = S3BlobStore::from_url(&s3_url).unwrap();
    let azure = AzureBlobStore::from_url(&az_url).unwrap();
    let prefix = format!("{}/", unique_name("preflight-"));
    for i in 0..5 {
        s3.put_bytes(&format!("{prefix}a-{i}"), Bytes::from_static(b"ok"))
            .await
            .unwrap();
    }
    // Written by another tool: a metadata name with `-` (as boto3 may write), which the
    // portable rule does not let a caller write, and a content type that is not
    // `type/subtype`; listed after the good objects.
    let foreign = format!("{prefix}z-foreign");
    let mut attributes = Attributes::new();
    attributes.insert(
        Attribute::Metadata("my-key".into()),
        AttributeValue::from("v"),
    );
    attributes.insert(Attribute::ContentType, AttributeValue::from("weird"));
    raw_s3(&s3_url)
        .put_opts(
            &object_store::path::Path::from(foreign.as_str()),
            object_store::PutPayload::from_static(b"x"),
            object_store::PutOptions {
                attributes,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let source = s3.head(&foreign).await.unwrap();
    assert_eq!(source.metadata.get("my-key").map(String::as_str), Some("v"));

    // A file store holds any header-token name: everything is copied and verified.
    let dir = tempfile::tempdir().unwrap();
    let local = LocalBlobStore::open(dir.path()).unwrap();
    let report = copy_blobs(&s3, &local, &prefix, CopyOptions::default(), |_| {})
        .await
        .unwrap();
    assert_eq!((report.copied, report.verified), (6, 6), "{report:?}");
    assert!(report.mismatches.is_empty());
    let copy = local.head(&foreign).await.unwrap();
    assert_eq!(copy.metadata, source.metadata);
    assert_eq!(copy.content_type.as_deref(), Some("weird"));

    // Azure holds only portable names unchanged (C# identifiers, read back lower-cased):
    // refused by the pre-flight, naming the object and the name, and nothing is copied.
    let err = copy_blobs(&s3, &azure, &prefix, CopyOptions::default(), |_| {})
        .await
        .unwrap_err();
    assert_eq!(err.kind(), cloud_abstraction::ErrorKind::InvalidArgument);
    assert!(err.message().contains(&foreign), "names the item: {err}");
    assert!(
        err.message().contains("my-key") && err.message().contains("lower-case"),
        "names the name and the rule: {err}"
    );
    assert!(
        azure.list_all(&prefix).await.unwrap().is_empty(),
        "nothing was copied"
    );
    for meta in s3.list_all(&prefix).await.unwrap() {
        s3.delete(&meta.key).await.unwrap();
    }
}
