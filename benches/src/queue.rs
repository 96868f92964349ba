//! The queue throughput workload, run the same way through every adapter: publish `messages`
//! in batches of `batch`, then receive and acknowledge them with up to `batch` in flight.
//! Each queue bench runs this through our adapter and the same work through the broker's
//! native client on the same server, alternating, so the ratio is what gets reported.

use cloud_abstraction::MessageQueue;
use cloud_abstraction::queue::{GroupOptions, Message, ReceiveOptions};
use std::time::{Duration, Instant};

/// Publishes `messages` bodies of `body_len` bytes in batches of `batch`, then receives and
/// acknowledges all of them (receives of up to `batch`); returns the wall time.
///
/// Panics if a message is missing after 30 s: a benchmark that loses messages measures nothing.
pub async fn publish_receive_ack(
    q: &dyn MessageQueue,
    topic: &str,
    group: &str,
    messages: usize,
    batch: usize,
    body_len: usize,
) -> Duration {
    let body = bytes::Bytes::from(vec![b'x'; body_len]);
    let start = Instant::now();
    let mut sent = 0;
    while sent < messages {
        let n = batch.min(messages - sent);
        q.publish_batch(topic, (0..n).map(|_| Message::new(body.clone())).collect())
            .await
            .expect("publish");
        sent += n;
    }
    let mut received = 0;
    while received < messages {
        let got = q
            .receive(
                topic,
                group,
                ReceiveOptions {
                    max_messages: batch,
                    wait: Duration::from_millis(200),
                },
            )
            .await
            .expect("receive");
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "only {received} of {messages} messages arrived"
        );
        for m in &got {
            q.ack(topic, group, &m.receipt).await.expect("ack");
        }
        received += got.len();
    }
    start.elapsed()
}

/// A fresh topic and group for one benchmark, with a lease long enough for any iteration.
pub async fn fresh_topic(q: &dyn MessageQueue, prefix: &str) -> (String, String) {
    let topic = format!("{prefix}{:08x}", rand_u32());
    let group = format!("{topic}g");
    q.create_topic(&topic).await.expect("create topic");
    q.create_group(
        &topic,
        &group,
        GroupOptions {
            ack_deadline: Duration::from_secs(120),
            ..GroupOptions::default()
        },
    )
    .await
    .expect("create group");
    (topic, group)
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now()) as u32
}

/// CPU time this process has used so far, all its threads (from `/proc/self/task/*/schedstat`,
/// nanoseconds on a CPU): around a round, with the round's wall time, the client's CPU per
/// message, which the other loads on a shared machine disturb much less than wall time.
/// Zero without `/proc`. Threads that ended are not counted (the runtime's workers live
/// through the bench).
pub fn cpu_time() -> Duration {
    threads_cpu_time("self").unwrap_or_default()
}

/// CPU time used so far by the process whose command name (`/proc/<pid>/comm`) is `comm`,
/// e.g. the broker's (`redis-server`, `beam.smp`, `nats-server`), summed over its threads as
/// in [`cpu_time`]. `None` when there is no such process (or no `/proc`).
pub fn process_cpu_time(comm: &str) -> Option<Duration> {
    let pid = std::fs::read_dir("/proc").ok()?.find_map(|e| {
        let e = e.ok()?;
        let name = std::fs::read_to_string(e.path().join("comm")).ok()?;
        (name.trim_end() == comm).then(|| e.file_name())
    })?;
    threads_cpu_time(&pid.to_string_lossy())
}

fn threads_cpu_time(pid: &str) -> Option<Duration> {
    let mut ns = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let Ok(task) = task else { continue };
        // `<ns on cpu> <ns waiting> <timeslices>`; a thread that just ended has none.
        if let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) {
            ns += stat
                .split(' ')
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Some(Duration::from_nanos(ns))
}

/// Wall and CPU time of the rounds of one side of a comparison.
#[derive(Debug, Default, Clone)]
pub struct Side {
    /// Each round's wall time.
    pub walls: Vec<Duration>,
    /// This process's CPU time over all rounds.
    pub cpu: Duration,
    /// The server's CPU time over all rounds, when it could be read.
    pub server_cpu: Option<Duration>,
}

impl Side {
    /// Runs one round (a future returning its wall time), adding its wall and CPU time; the
    /// server's CPU is read through `server` (e.g. [`process_cpu_time`]) before and after.
    pub async fn round<F: std::future::Future<Output = Duration>>(
        &mut self,
        server: &dyn Fn() -> Option<Duration>,
        round: F,
    ) {
        let (cpu0, server0) = (cpu_time(), server());
        let wall = round.await;
        self.cpu += cpu_time().saturating_sub(cpu0);
        self.server_cpu = match (server0, server(), self.server_cpu) {
            (Some(a), Some(b), Some(sum)) => Some(sum + b.saturating_sub(a)),
            (Some(a), Some(b), None) if self.walls.is_empty() => Some(b.saturating_sub(a)),
            _ => None,
        };
        self.walls.push(wall);
    }

    /// The median round's wall time.
    pub fn median(&self) -> Duration {
        let mut v = self.walls.clone();
        v.sort();
        v.get(v.len() / 2).copied().unwrap_or_default()
    }

    fn per_message(d: Duration, messages: usize) -> f64 {
        d.as_secs_f64() * 1e6 / messages.max(1) as f64
    }

    /// One line: median wall time, throughput, and CPU µs per message (client, server).
    pub fn describe(&self, messages_per_round: usize) -> String {
        let total = messages_per_round * self.walls.len();
        let m = self.median();
        let server = self.server_cpu.map_or_else(
            || "-".to_string(),
            |s| format!("{:.1}", Self::per_message(s, total)),
        );
        format!(
            "median {m:?} ({:.0} msg/s), client CPU {:.1} us/msg, server CPU {server} us/msg",
            messages_per_round as f64 / m.as_secs_f64(),
            Self::per_message(self.cpu, total),
        )
    }
}

/// Prints the comparison of `adapter` and `native` (same messages per round): each side's
/// line and the throughput ratio adapter / native of the median rounds (target >= 0.9).
pub fn report(name: &str, messages_per_round: usize, adapter: &Side, native: &Side) {
    println!(
        "{name}: {} alternating rounds of {messages_per_round} messages",
        adapter.walls.len()
    );
    println!("  adapter: {}", adapter.describe(messages_per_round));
    println!("  native:  {}", native.describe(messages_per_round));
    println!(
        "  ratio adapter/native throughput (median rounds) = {:.3}; client CPU adapter/native = {:.2}",
        native.median().as_secs_f64() / adapter.median().as_secs_f64(),
        adapter.cpu.as_secs_f64() / native.cpu.as_secs_f64().max(1e-9),
    );
}
