//! The Redis Streams queue adapter's throughput: publish, receive and acknowledge through
//! `paas_components::queue::RedisStreamsQueue` (`benches::queue::publish_receive_ack`)
//! against the native `redis` crate doing the same stream work with the same batching
//! (a pipeline of XADD per batch, XREADGROUP of up to a batch, one XACK per message, each
//! awaited) on the same server, over the same kind of connection (a `ConnectionManager`).
//! Ratio = native time / adapter time, i.e. adapter throughput relative to native (target
//! >= 0.9).
//!
//! What each side guarantees: the plain native side acknowledges with a bare `XACK`, which
//! would also settle a *later* delivery of the same entry (a stale receipt); the adapter's
//! ack checks the delivery count first, atomically (a script). A third side, native with
//! that check-and-ack script instead of `XACK` ([`CHECKED_ACK`]), is the native client
//! with the adapter's ack guarantee; both ratios are printed. (The adapter's receive also
//! claims expired leases and trims acknowledged entries, which neither native side does.)
//!
//! Criterion measures adapter and plain native, then an explicit loop alternates the three
//! (the adapter's place swapped every round) and prints median round times, throughput and
//! CPU per message: this process's and the server's (`INFO cpu`); then the
//! server's time per command (`INFO commandstats`) for one round of each side. The server URL
//! is `REDIS_BENCH_URL`, else `REDIS_TEST_URL`, else the SERVICES.md default
//! `redis://127.0.0.1:6379/0`; without a server the bench says so and exits. Everything lives
//! under a namespace of its own, deleted at the end.

use benches::queue::Side;
use cloud_abstraction::MessageQueue;
use criterion::{Criterion, Throughput};
use paas_components::queue::RedisStreamsQueue;
use redis::Value;
use redis::aio::ConnectionManager;
use std::collections::BTreeMap;
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

    // Alternating rounds (the order swapped every round), so both sides see the same machine
    // load; this process's CPU from /proc, the server's by `INFO cpu` on a connection of its own.
    let rounds = 15;
    let info = redis::Client::open(url.as_str())
        .and_then(|c| c.get_connection())
        .ok()
        .map(std::cell::RefCell::new);
    let server_cpu = || -> Option<Duration> {
        let text: String = redis::cmd("INFO")
            .arg("cpu")
            .query(&mut *info.as_ref()?.borrow_mut())
            .ok()?;
        let field = |name: &str| -> Option<f64> {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?
                .trim()
                .parse()
                .ok()
        };
        Some(Duration::from_secs_f64(
            field("used_cpu_user")? + field("used_cpu_sys")?,
        ))
    };
    let checked = redis::Script::new(CHECKED_ACK);
    let (mut a, mut n, mut s) = (Side::default(), Side::default(), Side::default());
    rt.block_on(async {
        for round in 0..rounds {
            if round % 2 == 0 {
                a.round(&server_cpu, adapter_round()).await;
            }
            n.round(
                &server_cpu,
                native_round(&mut native, &native_key, native_group, None),
            )
            .await;
            if round % 2 == 1 {
                a.round(&server_cpu, adapter_round()).await;
            }
            s.round(
                &server_cpu,
                native_round(&mut native, &native_key, native_group, Some(&checked)),
            )
            .await;
        }
    });
    benches::queue::report(
        &format!("redis_streams (batch {BATCH}, {BODY} B), native with plain XACK"),
        MESSAGES,
        &a,
        &n,
    );
    benches::queue::report(
        &format!("redis_streams (batch {BATCH}, {BODY} B), native with the check-and-ack script"),
        MESSAGES,
        &a,
        &s,
    );

    // Where the server's time goes: `INFO commandstats` around one round of each side
    // (the commands a script runs are counted under their own names too, and are included in
    // `evalsha`'s time). Other clients of the server add to these figures.
    let commandstats = || -> BTreeMap<String, (u64, u64)> {
        let Some(info) = info.as_ref() else {
            return BTreeMap::new();
        };
        let text: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut *info.borrow_mut())
            .unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
                let num = |key: &str| -> Option<u64> {
                    rest.split(',')
                        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))?
                        .parse()
                        .ok()
                };
                Some((name.to_string(), (num("calls")?, num("usec")?)))
            })
            .collect()
    };
    for side in ["adapter", "native"] {
        let before = commandstats();
        rt.block_on(async {
            if side == "adapter" {
                adapter_round().await;
            } else {
                native_round(&mut native, &native_key, native_group, None).await;
            }
        });
        let after = commandstats();
        let mut lines: Vec<(u64, String)> = after
            .iter()
            .filter_map(|(name, (calls, usec))| {
                let (c0, u0) = before.get(name).copied().unwrap_or_default();
                let (calls, usec) = (calls.saturating_sub(c0), usec.saturating_sub(u0));
                (calls > 0 && name != "info")
                    .then(|| (usec, format!("{name} {calls} calls {usec} us")))
            })
            .collect();
        lines.sort_by_key(|l| std::cmp::Reverse(l.0));
        println!(
            "  server time, one {side} round: {}",
            lines
                .into_iter()
                .map(|l| l.1)
                .collect::<Vec<_>>()
                .join("; ")
        );
    }

    rt.block_on(async {
        let _ = adapter.delete_topic(&topic).await;
        let _: redis::RedisResult<i64> = redis::cmd("DEL")
            .arg(&native_key)
            .query_async(&mut native)
            .await;
    });
}
