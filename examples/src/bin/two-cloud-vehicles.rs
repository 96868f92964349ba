//! Two clouds, cells of vehicles, one cloud fails mid-run, and no remote command is lost or
//! executed twice.
//!
//! A car maker runs its command service on two clouds. A survivable placement plan
//! (`cloud-placement`) puts four cells on the clouds and names each cell's standby; that plan
//! configures the cell router (`paas_components::multicloud::cell`). Vehicles send commands
//! continuously; each command is published to its cell's home queue (failing over to the
//! standby's with the same message id), consumed in the cloud that holds it, and executed
//! through an idempotent consumer that records the message id in the replicated document
//! store (create-if-absent) before running it. Mid-run cloud A fails, later it recovers; the
//! run prints a timeline and a summary, and exits non-zero if any acknowledged command was
//! lost or executed twice, or if the clouds differ at the end.
//!
//! ```text
//! two-cloud-vehicles [--commands N] [--seconds S] [--outage-at S] [--outage-for S]
//!                    [--config FILE] [--svg FILE]
//! ```
//!
//! # Backends
//!
//! Every backend is opened by URL (`paas_components::registry`), so any scheme compiled in
//! works. Without configuration each cloud is embedded: its own SQLite document file and
//! SQLite queue file in a temporary folder, so the example runs on a fresh machine. Real
//! servers come from environment variables (or `NAME=value` lines of `--config FILE`):
//!
//! | variable | default |
//! |---|---|
//! | `CLOUD_A_DOCUMENTS` | `sqlite://<tmp>/cloud-a/documents.db` |
//! | `CLOUD_A_QUEUE` | `sqlite://<tmp>/cloud-a/queue.db` |
//! | `CLOUD_B_DOCUMENTS` | `sqlite://<tmp>/cloud-b/documents.db` |
//! | `CLOUD_B_QUEUE` | `sqlite://<tmp>/cloud-b/queue.db` |
//!
//! e.g. `CLOUD_A_DOCUMENTS=postgres://…`, `CLOUD_B_DOCUMENTS=mysql://…` (build with
//! `--features servers`).
//!
//! # The outage
//!
//! A backend of cloud A reached over TCP is reached through a loopback proxy
//! (`paas_components::testing::TcpProxy`) that the outage cuts; a file-based one through a
//! fault injector that the outage turns on. Either way every call to cloud A fails, as in a
//! real outage, and comes back when it ends. The injector's outage begins with 300 ms in
//! which calls still take effect but their replies are lost (as when a connection dies after
//! the server acted): publishes that landed in cloud A are then also sent to cloud B, so both
//! clouds deliver them, and the idempotent consumer must skip the second copy.

use cloud_abstraction::database::{DocumentStore, Query};
use cloud_abstraction::queue::{GroupOptions, Message, ReceiveOptions};
use cloud_abstraction::{Error, MessageQueue, ResourceUrl, Result};
use cloud_placement::model::{Model, Provider, Region, Unit};
use cloud_placement::{SolveOptions, solve};
use futures::StreamExt;
use paas_components::layers::{
    self, BreakerState, CircuitBreaker, CircuitBreakerConfig, FaultInjector, SlidingWindow,
    TimeoutLayer,
};
use paas_components::multicloud::cell::{self, CellPlacement};
use paas_components::multicloud::{
    CellPublisher, CellRouter, CloudHealth, Delivery, IdempotentConsumer, ReplicatedDocumentStore,
    ReplicationBuilder, RouterConfig, RoutingTable,
};
use paas_components::testing::{TcpProxy, target_of, via};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tower::ServiceBuilder;

const CLOUDS: [&str; 2] = ["cloud-a", "cloud-b"];
const VEHICLES: u32 = 120;
const KINDS: [&str; 3] = ["unlock", "lock", "start-climate"];
const NAME: &str = "two-cloud-vehicles";
/// How long the outage of cloud A starts as a brownout (calls act, replies are lost).
const BROWNOUT: Duration = Duration::from_millis(300);
/// Every call to a cloud fails after this long (a cut connection must not hang a request).
const CALL_DEADLINE: Duration = Duration::from_millis(1500);

struct Args {
    commands: u32,
    seconds: f64,
    outage_at: f64,
    outage_for: f64,
    config: Option<PathBuf>,
    svg: Option<PathBuf>,
}

const USAGE: &str = "usage: two-cloud-vehicles [--commands N] [--seconds S] [--outage-at S] \
[--outage-for S] [--config FILE] [--svg FILE]";

fn parse_args() -> std::result::Result<Args, String> {
    let mut a = Args {
        commands: 2000,
        seconds: 20.0,
        outage_at: 6.0,
        outage_for: 6.0,
        config: None,
        svg: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        let seconds = |v: String| -> std::result::Result<f64, String> {
            match v.parse::<f64>() {
                Ok(s) if (0.0..=3600.0).contains(&s) => Ok(s),
                _ => Err(format!("bad number of seconds `{v}`")),
            }
        };
        match x.as_str() {
            "--commands" => {
                let v = value("--commands")?;
                a.commands = match v.parse::<u32>() {
                    Ok(n) if (1..=1_000_000).contains(&n) => n,
                    _ => return Err(format!("bad --commands `{v}`")),
                }
            }
            "--seconds" => a.seconds = seconds(value("--seconds")?)?,
            "--outage-at" => a.outage_at = seconds(value("--outage-at")?)?,
            "--outage-for" => a.outage_for = seconds(value("--outage-for")?)?,
            "--config" => a.config = Some(PathBuf::from(value("--config")?)),
            "--svg" => a.svg = Some(PathBuf::from(value("--svg")?)),
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    if a.seconds < 1.0 || a.outage_at + a.outage_for > a.seconds {
        return Err("the outage must end within the run (--outage-at + --outage-for <= --seconds, --seconds >= 1)".into());
    }
    Ok(a)
}

/// The URLs of both clouds: environment, then `--config FILE`, then embedded defaults.
fn urls(config: Option<&Path>, tmp: &Path) -> Result<(BTreeMap<String, String>, bool)> {
    let mut file = BTreeMap::new();
    if let Some(path) = config {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::invalid(NAME, format!("cannot read {}: {e}", path.display())))?;
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| Error::invalid(NAME, "config lines are NAME=value".to_string()))?;
            file.insert(k.trim().to_string(), v.trim().to_string());
        }
    }
    let mut out = BTreeMap::new();
    let mut servers = false;
    for cloud in CLOUDS {
        for (what, file_name) in [("DOCUMENTS", "documents.db"), ("QUEUE", "queue.db")] {
            let var = format!("{}_{what}", cloud.to_uppercase().replace('-', "_"));
            let url = match std::env::var(&var).ok().or_else(|| file.get(&var).cloned()) {
                Some(url) => {
                    servers = true;
                    url
                }
                None => {
                    let dir = tmp.join(cloud);
                    std::fs::create_dir_all(&dir).map_err(|e| {
                        Error::internal(NAME, format!("cannot create {}: {e}", dir.display()))
                    })?;
                    format!("sqlite://{}/{file_name}", dir.display())
                }
            };
            out.insert(var, url);
        }
    }
    Ok((out, servers))
}

fn redact(url: &str) -> String {
    ResourceUrl::parse(url)
        .map(|u| u.to_string())
        .unwrap_or_else(|_| "<invalid URL>".into())
}

/// A placement model: two clouds, four cells of two units each; cells 1-2 serve northern
/// users (nearer cloud A), cells 3-4 southern users (nearer cloud B); each cloud has room for
/// all four, so the plan is survivable.
fn placement_model() -> Model {
    let region = |id: &str, north: f64, south: f64| Region {
        id: id.into(),
        capacity: BTreeMap::from([("cpu".into(), 100.0)]),
        price: BTreeMap::from([("cpu".into(), 1.0)]),
        latency_ms: BTreeMap::from([("north".into(), north), ("south".into(), south)]),
        ..Region::default()
    };
    let mut units = Vec::new();
    for (i, users) in ["north", "north", "south", "south"].iter().enumerate() {
        let cell = format!("cell-{}", i + 1);
        for kind in ["service", "database"] {
            units.push(Unit {
                id: format!("{cell}-{kind}"),
                cell: Some(cell.clone()),
                kind: Some(kind.into()),
                demand: BTreeMap::from([("cpu".into(), 10.0)]),
                replicas: 1,
                user_regions: vec![users.to_string()],
                colocate: Some(cell.clone()),
                ..Unit::default()
            });
        }
    }
    Model {
        dimensions: vec!["cpu".into()],
        providers: vec![
            Provider {
                id: CLOUDS[0].into(),
                regions: vec![region("a-eu-1", 10.0, 40.0)],
                ..Provider::default()
            },
            Provider {
                id: CLOUDS[1].into(),
                regions: vec![region("b-eu-1", 40.0, 10.0)],
                ..Provider::default()
            },
        ],
        units,
        weights: cloud_placement::model::Weights {
            latency: 1.0,
            ..Default::default()
        },
        ..Model::default()
    }
}

fn planned_cells() -> Result<Vec<CellPlacement>> {
    let model = placement_model();
    let options = SolveOptions {
        survivable: true,
        explain: false,
        max_scans: 20_000,
        ..SolveOptions::default()
    };
    let solution = solve(&model, &options)
        .map_err(|e| Error::internal(NAME, format!("placement failed: {e}")))?;
    cell::placement::cells_from_plan(&model, &solution.plan)
}

/// What happened when (milliseconds since the start), for the timeline.
#[derive(Default)]
struct Timeline {
    events: Mutex<Vec<(u64, String)>>,
}

impl Timeline {
    fn push(&self, start: Instant, what: String) {
        let at = start.elapsed().as_millis() as u64;
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((at, what));
    }
}

/// One cloud's backends, as the service uses them and raw (to compare at the end).
struct Cloud {
    name: &'static str,
    documents: Arc<dyn DocumentStore>,
    raw_documents: Arc<dyn DocumentStore>,
    raw_queue: Arc<dyn MessageQueue>,
    fault: FaultInjector,
    proxies: Vec<TcpProxy>,
    /// The queue is cut by the fault injector (a file-based queue of the cut cloud).
    queue_injected: bool,
}

fn networked(url: &str) -> bool {
    !(url.starts_with("sqlite:") || url.starts_with("mem:") || url.starts_with("file:"))
}

/// Opens `name`'s backends. For the cloud to be cut (`cut`), a TCP backend is reached through
/// a proxy and a file-based one through the fault injector.
async fn open_cloud(
    name: &'static str,
    urls: &BTreeMap<String, String>,
    cut: bool,
) -> Result<Cloud> {
    let prefix = name.to_uppercase().replace('-', "_");
    let fault = FaultInjector::new(7);
    let mut proxies = Vec::new();
    let mut reach = Vec::new();
    for what in ["DOCUMENTS", "QUEUE"] {
        let url = urls[&format!("{prefix}_{what}")].clone();
        if !(cut && networked(&url)) {
            reach.push(url);
            continue;
        }
        let target = target_of(&url).ok_or_else(|| {
            Error::invalid(NAME, format!("{} has no host and port", redact(&url)))
        })?;
        let proxy = TcpProxy::start(&target)
            .await
            .map_err(|e| Error::internal(NAME, format!("cannot start a proxy: {e}")))?;
        reach.push(
            via(&url, proxy.addr())
                .ok_or_else(|| Error::invalid(NAME, format!("{} has no host", redact(&url))))?,
        );
        proxies.push(proxy);
    }
    let raw_documents = paas_components::open_document_store(&reach[0]).await?;
    let raw_queue = paas_components::open_queue(&reach[1]).await?;
    let docs_injected = cut && !networked(&reach[0]);
    let queue_injected = cut && !networked(&reach[1]);
    // A deadline on every call: a cut TCP connection must fail fast, not hang.
    let timeout = TimeoutLayer::new(CALL_DEADLINE);
    let documents = if docs_injected {
        layers::document_store(
            Arc::clone(&raw_documents),
            ServiceBuilder::new().layer(timeout).layer(fault.layer()),
        )
    } else {
        layers::document_store(Arc::clone(&raw_documents), timeout)
    };
    Ok(Cloud {
        name,
        documents,
        raw_documents,
        raw_queue,
        fault,
        proxies,
        queue_injected,
    })
}

/// The queue of a cloud as the service uses it: behind the cloud's breaker, a deadline, and
/// (for a file-based queue of the cut cloud) the fault injector.
fn service_queue(cloud: &Cloud, breaker: &CircuitBreaker) -> Arc<dyn MessageQueue> {
    let timeout = TimeoutLayer::new(CALL_DEADLINE);
    if cloud.queue_injected {
        layers::message_queue(
            Arc::clone(&cloud.raw_queue),
            ServiceBuilder::new()
                .layer(breaker.layer())
                .layer(timeout)
                .layer(cloud.fault.layer()),
        )
    } else {
        layers::message_queue(
            Arc::clone(&cloud.raw_queue),
            ServiceBuilder::new().layer(breaker.layer()).layer(timeout),
        )
    }
}

/// Per command: how often it was executed, and by which cloud first.
#[derive(Default)]
struct Ledger {
    executed: Mutex<BTreeMap<String, (u32, &'static str, u64)>>,
    duplicates_skipped: AtomicU64,
}

/// Everything a publish recorded.
struct Acked {
    cell: String,
    cloud: String,
    at_ms: u64,
}

fn svg(path: &Path, seconds: f64, outage: (f64, f64), acked: &[Acked]) -> std::io::Result<()> {
    let buckets = (seconds.ceil() as usize).max(1);
    let mut per: BTreeMap<&str, Vec<u32>> = CLOUDS.iter().map(|c| (*c, vec![0; buckets])).collect();
    for a in acked {
        let b = ((a.at_ms / 1000) as usize).min(buckets - 1);
        if let Some(v) = per.get_mut(a.cloud.as_str()) {
            v[b] += 1;
        }
    }
    let max = per.values().flatten().copied().max().unwrap_or(1).max(1) as f64;
    let (w, h, left, bottom, top) = (720.0, 300.0, 50.0, 30.0, 30.0);
    let x = |s: f64| left + s / seconds * (w - left - 20.0);
    let y = |n: f64| h - bottom - n / max * (h - bottom - top);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect x=\"{:.1}\" y=\"{top}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#f4c7c3\"/>\n\
         <text x=\"{:.1}\" y=\"{}\">cloud-a down</text>\n\
         <text x=\"{left}\" y=\"18\">acknowledged commands per second, per cloud</text>\n\
         <line x1=\"{left}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"black\"/>\n\
         <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{:.1}\" stroke=\"black\"/>\n\
         <text x=\"4\" y=\"{:.1}\">{max}</text><text x=\"4\" y=\"{:.1}\">0</text>\n\
         <text x=\"{:.1}\" y=\"{}\">{seconds} s</text>\n",
        x(outage.0),
        x(outage.1) - x(outage.0),
        h - bottom - top,
        x(outage.0) + 4.0,
        top + 14.0,
        h - bottom,
        w - 20.0,
        h - bottom,
        h - bottom,
        top + 4.0,
        h - bottom,
        w - 60.0,
        h - 8.0,
    );
    for (i, (cloud, counts)) in per.iter().enumerate() {
        let color = ["#1f77b4", "#ff7f0e"][i % 2];
        let points: Vec<String> = counts
            .iter()
            .enumerate()
            .map(|(s, n)| format!("{:.1},{:.1}", x(s as f64 + 0.5), y(f64::from(*n))))
            .collect();
        out.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n\
             <text x=\"{:.1}\" y=\"{}\" fill=\"{color}\">{cloud}</text>\n",
            points.join(" "),
            left + 420.0 + 90.0 * i as f64,
            18
        ));
    }
    out.push_str("</svg>\n");
    std::fs::write(path, out)
}

/// Every document of `collection` in a member, raw (envelopes), by id.
async fn dump(
    store: &dyn DocumentStore,
    collection: &str,
) -> Result<BTreeMap<String, serde_json::Value>> {
    let mut out = BTreeMap::new();
    let mut query = Query::all().limit(1000);
    loop {
        let page = store.query(collection, query.clone()).await?;
        for d in page.documents {
            out.insert(d.id, d.value);
        }
        match page.next_cursor {
            Some(c) => query.cursor = Some(c),
            None => return Ok(out),
        }
    }
}

async fn run(args: Args) -> Result<bool> {
    let start = Instant::now();
    let tmp = std::env::temp_dir().join(format!("{NAME}-{}", std::process::id()));
    let (urls, servers) = urls(args.config.as_deref(), &tmp)?;
    let run_id = format!(
        "r{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
            & 0xff_ffff_ffff
    );
    let executions = format!("executions_{run_id}");
    let topic = format!("vehicle-commands-{run_id}");
    let group = "executors";

    println!(
        "{NAME}: connected-vehicle commands on two clouds ({} mode)",
        if servers { "servers" } else { "embedded" }
    );
    for (var, url) in &urls {
        println!("  {var:18} {}", redact(url));
    }

    // 1. The placement plan configures the routing.
    let placements = planned_cells()?;
    println!("  survivable placement plan:");
    for p in &placements {
        println!("    {}: home {}, standby {}", p.cell, p.home, p.standby);
    }
    let table = RoutingTable::from_placements(placements.clone())?;

    // 2. The clouds.
    let a = open_cloud(CLOUDS[0], &urls, true).await?;
    let b = open_cloud(CLOUDS[1], &urls, false).await?;
    let breaker = CircuitBreakerConfig {
        consecutive_failures: 5,
        failure_rate: 0.5,
        window: SlidingWindow::Count(20),
        minimum_calls: 10,
        open_for: Duration::from_millis(500),
        half_open_probes: 1,
        successes_to_close: 3,
        ..CircuitBreakerConfig::default()
    };
    let home_table = table.clone();
    let store: ReplicatedDocumentStore = ReplicationBuilder::new()
        .member(a.name, Arc::clone(&a.documents))
        .member(b.name, Arc::clone(&b.documents))
        .breaker(breaker.clone())
        .origin(format!("{NAME}-{run_id}"))
        .replay_interval(Duration::from_millis(200))
        .probe_interval(Duration::from_millis(250))
        // A command's record is decided by its cell's home cloud (the id starts with the
        // vehicle id).
        .home(move |_, id| {
            let vehicle = id.rsplit_once('-').map_or(id, |(v, _)| v);
            match home_table.cell_of(vehicle) {
                Ok(c) if c.home == CLOUDS[1] => 1,
                _ => 0,
            }
        })
        .build()
        .await?;
    // One breaker per cloud, shared by its document member and its queue.
    let breakers = [
        store
            .breaker(0)
            .cloned()
            .ok_or_else(|| Error::internal(NAME, "no member 0"))?,
        store
            .breaker(1)
            .cloned()
            .ok_or_else(|| Error::internal(NAME, "no member 1"))?,
    ];
    let queues: Vec<Arc<dyn MessageQueue>> = vec![
        service_queue(&a, &breakers[0]),
        service_queue(&b, &breakers[1]),
    ];
    for q in [&a.raw_queue, &b.raw_queue] {
        q.create_topic(&topic).await?;
        q.create_group(
            &topic,
            group,
            GroupOptions {
                ack_deadline: Duration::from_secs(2),
                max_attempts: None,
                dead_letter_topic: None,
            },
        )
        .await?;
    }
    let timeline = Arc::new(Timeline::default());
    let router = CellRouter::new(
        table.clone(),
        vec![
            CloudHealth::new(CLOUDS[0], breakers[0].clone()).drained({
                let s = store.clone();
                move || !s.is_behind(0)
            }),
            CloudHealth::new(CLOUDS[1], breakers[1].clone()).drained({
                let s = store.clone();
                move || !s.is_behind(1)
            }),
        ],
        RouterConfig {
            settle: Duration::from_millis(1500),
        },
    )?;
    let moves: Arc<Mutex<Vec<(u64, cell::CellMove)>>> = Arc::default();
    {
        let (timeline, moves) = (Arc::clone(&timeline), Arc::clone(&moves));
        router.on_move(move |m| {
            timeline.push(
                start,
                format!("{} moved {} -> {} ({})", m.cell, m.from, m.to, m.reason),
            );
            moves
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((start.elapsed().as_millis() as u64, m.clone()));
        });
    }
    for (i, b) in breakers.iter().enumerate() {
        let timeline = Arc::clone(&timeline);
        b.on_transition(move |t| {
            // Re-openings after a failed probe are noise here: only the edges.
            if t.from == BreakerState::Closed && t.to == BreakerState::Open {
                timeline.push(
                    start,
                    format!("outage detected: {} breaker open ({})", CLOUDS[i], t.reason),
                );
            } else if t.to == BreakerState::Closed {
                timeline.push(
                    start,
                    format!("{} recovered: breaker closed ({})", CLOUDS[i], t.reason),
                );
            }
        });
    }
    let publisher = CellPublisher::new(
        router.clone(),
        CLOUDS
            .iter()
            .map(|c| c.to_string())
            .zip(queues.iter().cloned()),
    )?;

    // 3. Consumers in both clouds, idempotent through the replicated store.
    let ledger = Arc::new(Ledger::default());
    let stop = Arc::new(tokio::sync::Notify::new());
    let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut consumers = Vec::new();
    for (i, cloud) in CLOUDS.iter().enumerate() {
        for worker in 0..2 {
            let queue = Arc::clone(&queues[i]);
            let idem = IdempotentConsumer::new(
                Arc::new(store.clone()),
                executions.clone(),
                format!("{cloud}-{worker}"),
            )?
            .lease(Duration::from_secs(600));
            let (ledger, topic, stopping) =
                (Arc::clone(&ledger), topic.clone(), Arc::clone(&stopping));
            let cloud: &'static str = cloud;
            consumers.push(tokio::spawn(async move {
                while !stopping.load(Ordering::SeqCst) {
                    let batch = match queue
                        .receive(
                            &topic,
                            group,
                            ReceiveOptions {
                                max_messages: 16,
                                wait: Duration::from_millis(200),
                            },
                        )
                        .await
                    {
                        Ok(batch) => batch,
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    for message in batch {
                        let id = message
                            .attributes
                            .get("command-id")
                            .cloned()
                            .unwrap_or_else(|| message.id.clone());
                        let ledger2 = Arc::clone(&ledger);
                        let id2 = id.clone();
                        let outcome = idem
                            .run(&id, || async move {
                                let mut executed =
                                    ledger2.executed.lock().unwrap_or_else(|e| e.into_inner());
                                let entry = executed.entry(id2).or_insert((
                                    0,
                                    cloud,
                                    start.elapsed().as_millis() as u64,
                                ));
                                entry.0 += 1;
                                Ok::<_, Error>(cloud)
                            })
                            .await;
                        match outcome {
                            Ok(delivery) => {
                                if matches!(delivery, Delivery::Duplicate(_)) {
                                    ledger.duplicates_skipped.fetch_add(1, Ordering::Relaxed);
                                }
                                let _ = queue.ack(&topic, group, &message.receipt).await;
                            }
                            Err(_) => {
                                // Redelivered later (after the nack delay, or the lease).
                                let _ = queue
                                    .nack(
                                        &topic,
                                        group,
                                        &message.receipt,
                                        Duration::from_millis(200),
                                    )
                                    .await;
                            }
                        }
                    }
                }
            }));
        }
    }

    // 4. Hint backlog and drain watcher.
    let peak_backlog = Arc::new(AtomicU64::new(0));
    let caught_up_ms = Arc::new(AtomicU64::new(0));
    let watcher = {
        let (store, peak, timeline, stop, caught_up) = (
            store.clone(),
            Arc::clone(&peak_backlog),
            Arc::clone(&timeline),
            Arc::clone(&stop),
            Arc::clone(&caught_up_ms),
        );
        tokio::spawn(async move {
            let mut was_behind = false;
            loop {
                let (written, replayed) = store.hint_counts();
                peak.fetch_max(written.saturating_sub(replayed), Ordering::Relaxed);
                let behind = store.is_behind(0) || store.is_behind(1);
                if was_behind && !behind {
                    caught_up.store(start.elapsed().as_millis() as u64, Ordering::SeqCst);
                    timeline.push(
                        start,
                        format!("hints replayed: clouds caught up ({replayed} hints replayed)"),
                    );
                }
                was_behind = behind;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = stop.notified() => return,
                }
            }
        })
    };

    // 5. The outage.
    let outage_at = Duration::from_secs_f64(args.outage_at);
    let outage_end = Duration::from_secs_f64(args.outage_at + args.outage_for);
    let outage = {
        let timeline = Arc::clone(&timeline);
        let fault = a.fault.clone();
        async move {
            tokio::time::sleep_until(start + outage_at).await;
            // The outage begins as a brownout: calls still act, but their replies are lost,
            // so publishes that landed are sent again to the standby (duplicates follow).
            fault.set_lose_replies(true);
            timeline.push(
                start,
                format!(
                    "OUTAGE begins: cloud-a loses replies ({} ms)",
                    BROWNOUT.as_millis()
                ),
            );
            tokio::time::sleep(BROWNOUT).await;
            fault.set_lose_replies(false);
            fault.set_down(true);
            for p in &a.proxies {
                p.cut().await;
            }
            timeline.push(start, "OUTAGE: cloud-a cut".into());
            tokio::time::sleep_until(start + outage_end).await;
            fault.set_down(false);
            for p in &a.proxies {
                p.restore();
            }
            timeline.push(start, "cloud-a restored".into());
            a
        }
    };

    // 6. The vehicles' commands.
    let acked: Arc<Mutex<Vec<(String, Acked)>>> = Arc::default();
    let issued = Arc::new(AtomicU64::new(0));
    let rejected = Arc::new(AtomicU64::new(0));
    let drive = {
        let (acked, issued, rejected) = (
            Arc::clone(&acked),
            Arc::clone(&issued),
            Arc::clone(&rejected),
        );
        let topic = topic.clone();
        async move {
            let limit = Arc::new(tokio::sync::Semaphore::new(64));
            let interval = Duration::from_secs_f64(args.seconds / f64::from(args.commands));
            let mut tasks = Vec::new();
            let mut rng: u64 = 0x2545_f491_4f6c_dd1d;
            for n in 0..args.commands {
                tokio::time::sleep_until(start + interval * n).await;
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let vehicle = format!("WVW{:05}", rng % u64::from(VEHICLES));
                let kind = KINDS[(rng >> 20) as usize % KINDS.len()];
                let id = format!("{vehicle}-{n:07}");
                let permit = Arc::clone(&limit).acquire_owned().await;
                let (publisher, acked, issued, rejected, topic) = (
                    publisher.clone(),
                    Arc::clone(&acked),
                    Arc::clone(&issued),
                    Arc::clone(&rejected),
                    topic.clone(),
                );
                tasks.push(tokio::spawn(async move {
                    let _permit = permit;
                    issued.fetch_add(1, Ordering::Relaxed);
                    let message =
                        Message::new(format!("{{\"vehicle\":\"{vehicle}\",\"kind\":\"{kind}\"}}"))
                            .with_id(id.clone())
                            .with_attribute("command-id", id.clone());
                    // The driver's app retries a command that was not acknowledged.
                    for attempt in 0..4 {
                        match publisher.publish(&vehicle, &topic, message.clone()).await {
                            Ok(p) => {
                                acked.lock().unwrap_or_else(|e| e.into_inner()).push((
                                    id,
                                    Acked {
                                        cell: p.cell,
                                        cloud: p.cloud,
                                        at_ms: start.elapsed().as_millis() as u64,
                                    },
                                ));
                                return;
                            }
                            Err(_) if attempt < 3 => {
                                tokio::time::sleep(Duration::from_millis(200)).await
                            }
                            Err(_) => {}
                        }
                    }
                    rejected.fetch_add(1, Ordering::Relaxed);
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        }
    };
    let ((), a) = tokio::join!(drive, outage);
    timeline.push(start, format!("all {} commands sent", args.commands));

    // 7. Drain: every acknowledged command executed, hints replayed, cells home.
    let acked_ids: BTreeSet<String> = acked
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(id, _)| id.clone())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done = {
            let executed = ledger.executed.lock().unwrap_or_else(|e| e.into_inner());
            acked_ids.iter().all(|id| executed.contains_key(id))
        };
        let home = router.status().iter().all(|s| s.serving == s.home);
        if (done && home && !store.is_behind(0) && !store.is_behind(1)) || Instant::now() > deadline
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stopping.store(true, Ordering::SeqCst);
    for c in consumers {
        let _ = c.await;
    }
    let repair = store.repair_all(&executions).await?;
    timeline.push(
        start,
        format!(
            "repair done: compared {}, copied {}",
            repair.compared, repair.copied
        ),
    );
    let left_a = dump(a.raw_documents.as_ref(), &executions).await?;
    let left_b = dump(b.raw_documents.as_ref(), &executions).await?;
    let identical = left_a == left_b;
    // Identical since the hints were drained if the repair found nothing to copy; else since
    // the repair.
    let identical_at_ms = if repair.copied == 0 && repair.tombstones_copied == 0 {
        caught_up_ms.load(Ordering::SeqCst)
    } else {
        start.elapsed().as_millis() as u64
    };
    timeline.push(
        start,
        format!(
            "clouds {} ({} records each side)",
            if identical { "identical" } else { "DIFFER" },
            left_a.len()
        ),
    );
    stop.notify_one();
    let _ = watcher.await;
    if servers {
        // Shared servers: leave nothing of this run behind (raw deletes, no tombstones).
        for (store, ids) in [(&a.raw_documents, &left_a), (&b.raw_documents, &left_b)] {
            futures::stream::iter(ids.keys())
                .for_each_concurrent(16, |id| {
                    let (store, collection) = (Arc::clone(store), executions.clone());
                    async move {
                        let _ = store
                            .delete(
                                &collection,
                                id,
                                cloud_abstraction::database::WriteCondition::Any,
                            )
                            .await;
                    }
                })
                .await;
        }
    }

    // 8. Report.
    let mut events = timeline
        .events
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    events.sort_by_key(|(t, _)| *t);
    println!("\ntimeline (seconds since start):");
    for (t, e) in &events {
        println!("  {:7.3}  {e}", *t as f64 / 1000.0);
    }
    let executed = ledger.executed.lock().unwrap_or_else(|e| e.into_inner());
    let lost: Vec<&String> = acked_ids
        .iter()
        .filter(|id| !executed.contains_key(*id))
        .collect();
    let twice = executed.values().filter(|(n, _, _)| *n > 1).count();
    let once = acked_ids
        .iter()
        .filter(|id| executed.get(*id).is_some_and(|(n, _, _)| *n == 1))
        .count();
    let unacked_executed = executed
        .keys()
        .filter(|id| !acked_ids.contains(*id))
        .count();
    let acked = acked.lock().unwrap_or_else(|e| e.into_inner());
    let outage_ms = outage_at.as_millis() as u64;
    println!("\nsummary:");
    println!(
        "  commands issued:                    {}",
        issued.load(Ordering::Relaxed)
    );
    println!("  acknowledged:                       {}", acked_ids.len());
    println!(
        "  not acknowledged (driver told):     {}",
        rejected.load(Ordering::Relaxed)
    );
    println!("  executed exactly once:              {once}");
    println!("  lost (acknowledged, not executed):  {}", lost.len());
    println!("  executed twice:                     {twice}");
    println!("  executed without an ack:            {unacked_executed}");
    println!(
        "  redeliveries skipped as duplicates: {}",
        ledger.duplicates_skipped.load(Ordering::Relaxed)
    );
    println!("  failover per cell (after the outage began):");
    let moves = moves.lock().unwrap_or_else(|e| e.into_inner());
    for p in &placements {
        if p.home != CLOUDS[0] {
            println!("    {}: home {} unaffected", p.cell, p.home);
            continue;
        }
        let first_standby = acked
            .iter()
            .filter(|(_, x)| x.cell == p.cell && x.cloud == p.standby && x.at_ms >= outage_ms)
            .map(|(_, x)| x.at_ms)
            .min();
        let moved = moves
            .iter()
            .find(|(t, m)| m.cell == p.cell && m.to == p.standby && *t >= outage_ms)
            .map(|(t, _)| *t);
        let back = moves
            .iter()
            .find(|(t, m)| m.cell == p.cell && m.to == p.home && *t >= outage_ms)
            .map(|(t, _)| *t);
        let ms = |t: Option<u64>| {
            t.map_or("never".to_string(), |t| {
                format!("{} ms", t.saturating_sub(outage_ms))
            })
        };
        println!(
            "    {}: first command acknowledged on {} after {}; routing moved after {}; back home {}",
            p.cell,
            p.standby,
            ms(first_standby),
            ms(moved),
            back.map_or("never".to_string(), |t| format!(
                "{:.1} s after the recovery",
                t.saturating_sub(outage_end.as_millis() as u64) as f64 / 1000.0
            ))
        );
    }
    println!(
        "  peak hint backlog (hints pending):  {}",
        peak_backlog.load(Ordering::Relaxed)
    );
    println!(
        "  both clouds identical:              {} ({:.1} s after the recovery; repair copied {})",
        if identical { "yes" } else { "NO" },
        identical_at_ms.saturating_sub(outage_end.as_millis() as u64) as f64 / 1000.0,
        repair.copied + repair.tombstones_copied,
    );
    if !lost.is_empty() {
        // What the execution records say of each: a claim left `running` points at the
        // idempotent consumer, no record at all at the queue.
        println!("  lost commands (first 10, with their record in cloud A):");
        for id in lost.iter().take(10) {
            let record = left_a.get(*id).map_or_else(
                || "no record".to_string(),
                |v| format!("{} by {}", v["state"], v["owner"]),
            );
            println!("    {id}: {record}");
        }
    }
    if let Some(path) = &args.svg {
        let list: Vec<Acked> = acked
            .iter()
            .map(|(_, x)| Acked {
                cell: x.cell.clone(),
                cloud: x.cloud.clone(),
                at_ms: x.at_ms,
            })
            .collect();
        svg(
            path,
            args.seconds,
            (args.outage_at, args.outage_at + args.outage_for),
            &list,
        )
        .map_err(|e| Error::internal(NAME, format!("cannot write {}: {e}", path.display())))?;
        println!("  timeline drawn to {}", path.display());
    }
    let ok = lost.is_empty() && twice == 0 && identical;
    println!(
        "  result: {}",
        if ok {
            "OK: nothing lost, nothing executed twice"
        } else {
            "FAILED"
        }
    );
    drop(a);
    if !servers {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(ok)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("{NAME}: {e}");
            ExitCode::FAILURE
        }
    }
}
