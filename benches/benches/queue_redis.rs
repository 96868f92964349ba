//! The Redis Streams queue adapter's throughput: publish, receive and acknowledge through
//! `paas_components::queue::RedisStreamsQueue` (`benches::queue::publish_receive_ack`)
//! against the native `redis` crate doing the same stream work with the same batching
//! (a pipeline of XADD per batch, XREADGROUP of up to a batch, one XACK per message, each
//! awaited) on the same server, over the same kind of connection (a `ConnectionManager`).
//! Ratio = native time / adapter time, i.e. adapter throughput relative to native (target
//! >= 0.9).
//!
//! Criterion measures both, then an explicit loop alternates adapter and native rounds and
//! prints the ratio of the median round times. The server URL is `REDIS_BENCH_URL`, else
//! `REDIS_TEST_URL`, else the SERVICES.md default `redis://127.0.0.1:6379/0`; without a
//! server the bench says so and exits. Everything lives under a namespace of its own, deleted
//! at the end.

use cloud_abstraction::MessageQueue;
use criterion::{Criterion, Throughput};
use paas_components::queue::RedisStreamsQueue;
use redis::Value;
use redis::aio::ConnectionManager;
use std::time::{Duration, Instant};

const DEFAULT_URL: &str = "redis://127.0.0.1:6379/0";
const MESSAGES: usize = 1000;
const BATCH: usize = 100;
const BODY: usize = 256;

/// The check-and-ack the adapter's ack script does (see `redis_streams/scripts.rs`), for the
/// diagnostic round that acks through it: how much of the gap is the script on the server.
const CHECKED_ACK: &str = r#"
local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if p.err then return -2 end
if #p == 0 then return 0 end
if tonumber(p[1][4]) ~= tonumber(ARGV[3]) then return 2 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return 1
"#;

/// The adapter's work done with the native client: returns the wall time of one round. With
/// `checked`, each ack goes through [`CHECKED_ACK`] instead of a plain XACK.
async fn native_round(
    conn: &mut ConnectionManager,
    key: &str,
    group: &str,
    checked: Option<&redis::Script>,
) -> Duration {
    let body = vec![b'x'; BODY];
    let start = Instant::now();
    let mut sent = 0;
    while sent < MESSAGES {
        let n = BATCH.min(MESSAGES - sent);
        let mut pipe = redis::pipe();
        for _ in 0..n {
            pipe.cmd("XADD").arg(key).arg("*").arg("b").arg(&body[..]);
        }
        let ids: Vec<String> = pipe.query_async(conn).await.expect("xadd");
        assert_eq!(ids.len(), n);
        sent += n;
    }
    let mut received = 0;
    while received < MESSAGES {
        let reply: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(group)
            .arg("c")
            .arg("COUNT")
            .arg(BATCH)
            .arg("STREAMS")
            .arg(key)
            .arg(">")
            .query_async(conn)
            .await
            .expect("xreadgroup");
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "only {received} of {MESSAGES} messages arrived"
        );
        for (id, body) in entries(reply) {
            assert_eq!(body.len(), BODY);
            let _: i64 = match checked {
                None => redis::cmd("XACK")
                    .arg(key)
                    .arg(group)
                    .arg(&id)
                    .query_async(conn)
                    .await
                    .expect("xack"),
                Some(script) => script
                    .key(key)
                    .arg(group)
                    .arg(&id)
                    .arg(1)
                    .invoke_async(conn)
                    .await
                    .expect("checked ack"),
            };
            received += 1;
        }
    }
    start.elapsed()
}

/// `(entry id, body)` of an XREADGROUP reply (`[[stream, [[id, [field, value...]]...]]]`).
fn entries(reply: Value) -> Vec<(String, Vec<u8>)> {
    let Value::Array(mut streams) = reply else {
        return Vec::new();
    };
    let Some(Value::Array(mut stream)) = streams.pop() else {
        return Vec::new();
    };
    let Some(Value::Array(items)) = stream.pop() else {
        return Vec::new();
    };
    items
        .into_iter()
        .filter_map(|item| {
            let Value::Array(mut parts) = item else {
                return None;
            };
            let Value::Array(fields) = parts.pop()? else {
                return None;
            };
            let Value::BulkString(id) = parts.pop()? else {
                return None;
            };
            let body = fields.chunks(2).find_map(|pair| match pair {
                [Value::BulkString(f), Value::BulkString(v)] if f == b"b" => Some(v.clone()),
                _ => None,
            })?;
            Some((String::from_utf8(id).ok()?, body))
        })
        .collect()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let url = std::env::var("REDIS_BENCH_URL")
        .or_else(|_| std::env::var("REDIS_TEST_URL"))
        .unwrap_or_else(|_| DEFAULT_URL.to_string());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let ns = format!("bench-{}", std::process::id());
    let sep = if url.contains('?') { '&' } else { '?' };
    let adapter = match rt.block_on(RedisStreamsQueue::connect(&format!(
        "{url}{sep}prefix={ns}"
    ))) {
        Ok(q) => q,
        Err(e) => {
            eprintln!("redis queue bench: no server ({e}); see SERVICES.md. Nothing was measured.");
            return;
        }
    };
    let client = redis::Client::open(url.as_str()).expect("redis url");
    let mut native = rt
        .block_on(ConnectionManager::new(client))
        .expect("native connection");
    let (topic, group) = rt.block_on(benches::queue::fresh_topic(&adapter, "bench"));
    let native_key = format!("{{{ns}}}:native");
    let native_group = "g";
    let _: () = rt
        .block_on(
            redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&native_key)
                .arg(native_group)
                .arg("$")
                .arg("MKSTREAM")
                .query_async(&mut native),
        )
        .expect("native group");
    let adapter_round =
        || benches::queue::publish_receive_ack(&adapter, &topic, &group, MESSAGES, BATCH, BODY);

    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8))
        .configure_from_args();
    {
        let mut g = c.benchmark_group("redis_streams/publish_receive_ack");
        g.throughput(Throughput::Elements(MESSAGES as u64));
        g.bench_function("adapter", |b| {
            b.to_async(&rt).iter_custom(|iters| async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += adapter_round().await;
                }
                total
            })
        });
        g.bench_function("native", |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let mut conn = native.clone();
                let key = native_key.clone();
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += native_round(&mut conn, &key, native_group, None).await;
                    }
                    total
                }
            })
        });
        g.finish();
    }
    c.final_summary();

    // Alternating rounds, so both sides see the same machine load.
    let rounds = 15;
    let checked = redis::Script::new(CHECKED_ACK);
    let (mut a, mut n, mut s) = (Vec::new(), Vec::new(), Vec::new());
    rt.block_on(async {
        for _ in 0..rounds {
            a.push(adapter_round().await);
            n.push(native_round(&mut native, &native_key, native_group, None).await);
            s.push(native_round(&mut native, &native_key, native_group, Some(&checked)).await);
        }
    });
    let (a, n, s) = (median(a), median(n), median(s));
    let per_s = |d: Duration| MESSAGES as f64 / d.as_secs_f64();
    println!(
        "redis_streams alternating, {rounds} rounds of {MESSAGES} messages (batch {BATCH}, \
         {BODY} B): adapter median {a:?} ({:.0} msg/s), native median {n:?} ({:.0} msg/s), \
         ratio native/adapter = {:.3}",
        per_s(a),
        per_s(n),
        n.as_secs_f64() / a.as_secs_f64()
    );
    println!(
        "diagnostic: native with the adapter's check-and-ack script instead of XACK: median \
         {s:?} ({:.0} msg/s), ratio native/that = {:.3}; adapter vs that = {:.3}",
        per_s(s),
        n.as_secs_f64() / s.as_secs_f64(),
        s.as_secs_f64() / a.as_secs_f64()
    );

    rt.block_on(async {
        let _ = adapter.delete_topic(&topic).await;
        let _: redis::RedisResult<i64> = redis::cmd("DEL")
            .arg(&native_key)
            .query_async(&mut native)
            .await;
    });
}
