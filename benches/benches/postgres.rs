//! The PostgreSQL adapter's overhead: document get and put through
//! `paas_components::database::PostgresDocumentStore` against plain sqlx running the same
//! statement (the baseline), on the same server in the same run, each on a pool with the same
//! settings. Ratio = adapter time / sqlx time (target <= 1.05).
//!
//! The server URL is `POSTGRES_BENCH_URL`, else `POSTGRES_TEST_URL`, else the SERVICES.md default
//! `postgres://postgres@127.0.0.1:5432/test`; without a server the bench says so and exits.
//! It works in a table of its own and drops it at the end.

use cloud_abstraction::database::{DocumentStore, PutDocumentOptions};
use criterion::Criterion;
use paas_components::database::PostgresDocumentStore;
use serde_json::{Value, json};
use sqlx::Row;
use sqlx::postgres::PgPoolOptions;
use sqlx::types::Json;
use std::time::Duration;

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

fn main() {
    let url = std::env::var("POSTGRES_BENCH_URL")
        .or_else(|_| std::env::var("POSTGRES_TEST_URL"))
        .unwrap_or_else(|_| DEFAULT_URL.to_string());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let table = format!("bench_docs_{}", std::process::id());
    let adapter = match rt.block_on(PostgresDocumentStore::connect_table(&url, &table)) {
        Ok(store) => store,
        Err(e) => {
            eprintln!("postgres bench: no server ({e}); see SERVICES.md. Nothing was measured.");
            return;
        }
    };
    // The baseline pool has the adapter's settings, so only the adapter's own work differs.
    let baseline = rt
        .block_on(
            PgPoolOptions::new()
                .max_connections(10)
                .acquire_timeout(Duration::from_secs(5))
                .idle_timeout(Some(Duration::from_secs(300)))
                .connect(&url),
        )
        .expect("baseline pool");

    let collection = "bench";
    let doc = json!({"vin": "WVW00000000000001", "km": 12345, "owner": {"country": "DE"},
                     "tags": ["a", "b"], "battery": 0.87});
    rt.block_on(adapter.put(
        collection,
        "get-me",
        doc.clone(),
        PutDocumentOptions::default(),
    ))
    .expect("seed");

    // The statements the adapter runs (see the module docs of postgres.rs).
    let get_sql = format!(
        "SELECT id, doc, revision, (extract(epoch from expires_at) * 1000000)::bigint \
         AS expires_us FROM \"{table}\" WHERE collection = $1 AND id = $2 \
         AND (expires_at IS NULL OR expires_at > now())"
    );
    let put_sql = format!(
        "INSERT INTO \"{table}\" AS t (collection, id, doc, revision, expires_at) \
         VALUES ($1, $2, $3, 1, now() + $5::bigint * interval '1 microsecond') \
         ON CONFLICT (collection, id) DO UPDATE SET doc = EXCLUDED.doc, \
         revision = CASE WHEN (t.expires_at IS NOT NULL AND t.expires_at <= now()) THEN 1 \
         ELSE t.revision + 1 END, expires_at = EXCLUDED.expires_at \
         RETURNING revision, (extract(epoch from expires_at) * 1000000)::bigint"
    );

    let mut c = Criterion::default()
        .sample_size(60)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    {
        let mut g = c.benchmark_group("postgres_get");
        g.bench_function("adapter", |b| {
            b.to_async(&rt).iter(|| async {
                let d = adapter.get(collection, "get-me").await.expect("get");
                assert!(d.is_some());
            })
        });
        g.bench_function("sqlx", |b| {
            b.to_async(&rt).iter(|| async {
                let row = sqlx::query(&get_sql)
                    .bind(collection)
                    .bind("get-me")
                    .fetch_optional(&baseline)
                    .await
                    .expect("get")
                    .expect("row");
                let _id: String = row.get(0);
                let Json(_v): Json<Value> = row.get(1);
                let _rev: i64 = row.get(2);
                let _exp: Option<i64> = row.get(3);
            })
        });
        g.finish();
    }
    {
        let mut g = c.benchmark_group("postgres_put");
        g.bench_function("adapter", |b| {
            b.to_async(&rt).iter(|| async {
                adapter
                    .put(
                        collection,
                        "put-a",
                        doc.clone(),
                        PutDocumentOptions::default(),
                    )
                    .await
                    .expect("put");
            })
        });
        g.bench_function("sqlx", |b| {
            b.to_async(&rt).iter(|| async {
                let row = sqlx::query(&put_sql)
                    .bind(collection)
                    .bind("put-s")
                    .bind(Json(doc.clone()))
                    .bind(None::<i64>)
                    .bind(None::<i64>)
                    .fetch_one(&baseline)
                    .await
                    .expect("put");
                let _rev: i64 = row.get(0);
            })
        });
        g.finish();
    }
    c.final_summary();
    rt.block_on(async {
        let _ = sqlx::query(&format!("DROP TABLE IF EXISTS \"{table}\""))
            .execute(&baseline)
            .await;
    });
}
