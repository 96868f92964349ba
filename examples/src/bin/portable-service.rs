//! A small connected-vehicle command service that runs unchanged on any backends.
//!
//! Remote commands ("unlock", "lock", "start-climate") are stored as documents, queued for
//! workers, executed by workers started through the compute trait, and each execution writes
//! a telemetry blob. The main process waits until every command is done and prints a summary.
//!
//! Backends come from environment variables (URLs, see `paas_components::registry`):
//!
//! | variable | default |
//! |---|---|
//! | `DOCUMENTS_URL` | `sqlite://<tmp>/documents.db` |
//! | `QUEUE_URL` | `sqlite://<tmp>/queue.db` |
//! | `BLOBS_URL` | `file://<tmp>/blobs` |
//! | `COMPUTE_URL` | `process://` (workers are real child processes of this binary) |
//! | `COMMANDS` | `24` commands |
//! | `WORKERS` | `2` worker replicas |
//!
//! With a simulated compute backend (`sim://`) nothing runs there, so the workers run as tasks
//! of this process instead; with `process://` they are separate processes, so every other
//! backend must be shareable between processes (not `mem://`).

use bytes::Bytes;
use cloud_abstraction::compute::{ComputeExt, RestartPolicy, WorkloadSpec};
use cloud_abstraction::database::{
    DocumentStoreExt, Filter, PutDocumentOptions, Query, WriteCondition,
};
use cloud_abstraction::queue::{GroupOptions, Message, ReceiveOptions};
use cloud_abstraction::storage::BlobStoreExt;
use cloud_abstraction::{
    BlobStore, DocumentStore, Error, ErrorKind, MessageQueue, ResourceUrl, Result,
};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const COLLECTION: &str = "commands";
const TOPIC: &str = "vehicle-commands";
const GROUP: &str = "workers";
const VEHICLES: &[&str] = &[
    "WVW-0001", "WVW-0002", "WVW-0003", "WVW-0004", "WVW-0005", "WVW-0006",
];
const KINDS: &[&str] = &["unlock", "lock", "start-climate"];

struct Backends {
    documents: Arc<dyn DocumentStore>,
    queue: Arc<dyn MessageQueue>,
    blobs: Arc<dyn BlobStore>,
}

async fn open_backends(urls: &Urls) -> Result<Backends> {
    Ok(Backends {
        documents: paas_components::open_document_store(&urls.documents).await?,
        queue: paas_components::open_queue(&urls.queue).await?,
        blobs: paas_components::open_blob_store(&urls.blobs).await?,
    })
}

struct Urls {
    documents: String,
    queue: String,
    blobs: String,
    compute: String,
}

impl Urls {
    fn from_env(tmp: &std::path::Path) -> Self {
        let var = |name: &str, default: String| std::env::var(name).unwrap_or(default);
        Self {
            documents: var(
                "DOCUMENTS_URL",
                format!("sqlite://{}/documents.db", tmp.display()),
            ),
            queue: var("QUEUE_URL", format!("sqlite://{}/queue.db", tmp.display())),
            blobs: var("BLOBS_URL", format!("file://{}/blobs", tmp.display())),
            compute: var("COMPUTE_URL", "process://".to_string()),
        }
    }
}

fn redact(url: &str) -> String {
    ResourceUrl::parse(url)
        .map(|u| u.to_string())
        .unwrap_or_else(|_| "<invalid URL>".into())
}

fn env_number(name: &str, default: u32, max: u32) -> Result<u32> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(v) => match v.parse::<u32>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(Error::invalid(
                "portable-service",
                format!("{name} must be a number from 1 to {max}, got `{v}`"),
            )),
        },
    }
}

/// One worker: takes commands from the queue until none arrive for `idle_exit`.
async fn run_worker(backends: &Backends, worker: &str, idle_exit: Duration) -> Result<u32> {
    let mut done = 0;
    let mut idle_since = Instant::now();
    loop {
        let batch = backends
            .queue
            .receive(
                TOPIC,
                GROUP,
                ReceiveOptions {
                    max_messages: 4,
                    wait: Duration::from_millis(500),
                },
            )
            .await?;
        if batch.is_empty() {
            if idle_since.elapsed() > idle_exit {
                return Ok(done);
            }
            continue;
        }
        idle_since = Instant::now();
        for message in batch {
            let command_id = String::from_utf8_lossy(&message.body).to_string();
            let Some(doc) = backends.documents.get(COLLECTION, &command_id).await? else {
                // A command whose document is gone was cancelled: nothing to do.
                backends.queue.ack(TOPIC, GROUP, &message.receipt).await?;
                continue;
            };
            if doc.value["status"] == "done" {
                // At-least-once delivery: a redelivered command was already executed.
                backends.queue.ack(TOPIC, GROUP, &message.receipt).await?;
                continue;
            }
            let vehicle = doc.value["vehicle"]
                .as_str()
                .unwrap_or("unknown")
                .to_string();
            let telemetry = json!({
                "command": command_id,
                "vehicle": vehicle,
                "kind": doc.value["kind"],
                "executed_by": worker,
                "battery_pct": 40 + (command_id.len() % 50),
                "at_ms": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
            });
            let key = format!("telemetry/{vehicle}/{command_id}.json");
            backends
                .blobs
                .put_bytes(&key, Bytes::from(telemetry.to_string()))
                .await?;
            let mut value = doc.value.clone();
            value["status"] = json!("done");
            value["executed_by"] = json!(worker);
            value["telemetry"] = json!(key);
            match backends
                .documents
                .put(
                    COLLECTION,
                    &command_id,
                    value,
                    PutDocumentOptions::if_revision(doc.revision),
                )
                .await
            {
                Ok(_) => done += 1,
                // Another worker finished it first (a redelivery raced us): fine.
                Err(e) if e.kind() == ErrorKind::PreconditionFailed => {}
                Err(e) => return Err(e),
            }
            backends.queue.ack(TOPIC, GROUP, &message.receipt).await?;
        }
    }
}

async fn worker_main() -> Result<()> {
    let tmp = std::env::temp_dir();
    let urls = Urls::from_env(&tmp);
    let backends = open_backends(&urls).await?;
    let name =
        std::env::var("WORKER_NAME").unwrap_or_else(|_| format!("worker-{}", std::process::id()));
    let done = run_worker(&backends, &name, Duration::from_secs(3600)).await?;
    println!("{name}: executed {done} commands");
    Ok(())
}

async fn service_main() -> Result<()> {
    let started = Instant::now();
    let tmp = std::env::temp_dir().join(format!("portable-service-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| {
        Error::internal(
            "portable-service",
            format!("cannot create {}: {e}", tmp.display()),
        )
    })?;
    let urls = Urls::from_env(&tmp);
    let commands = env_number("COMMANDS", 24, 10_000)?;
    let workers = env_number("WORKERS", 2, 64)?;

    let backends = open_backends(&urls).await?;
    let compute = paas_components::open_compute(&urls.compute).await?;
    let simulated = compute.capabilities().simulated;
    if !simulated {
        for (name, url) in [
            ("DOCUMENTS_URL", &urls.documents),
            ("QUEUE_URL", &urls.queue),
            ("BLOBS_URL", &urls.blobs),
        ] {
            if url.starts_with("mem:") {
                return Err(Error::invalid(
                    "portable-service",
                    format!(
                        "{name}=mem:// cannot be shared with worker processes; use sqlite:// / file:// or COMPUTE_URL=sim://"
                    ),
                ));
            }
        }
    }

    println!("portable-service: connected-vehicle commands");
    println!(
        "  documents: {}  ({})",
        redact(&urls.documents),
        backends.documents.info().location
    );
    println!(
        "  queue:     {}  ({})",
        redact(&urls.queue),
        backends.queue.info().location
    );
    println!(
        "  blobs:     {}  ({})",
        redact(&urls.blobs),
        backends.blobs.info().location
    );
    println!(
        "  compute:   {}{}",
        redact(&urls.compute),
        if simulated {
            "  (simulated: workers run in-process)"
        } else {
            ""
        }
    );

    backends.queue.create_topic(TOPIC).await?;
    backends
        .queue
        .create_group(
            TOPIC,
            GROUP,
            GroupOptions {
                ack_deadline: Duration::from_secs(10),
                max_attempts: Some(5),
                dead_letter_topic: None,
            },
        )
        .await?;

    // A run id keeps repeated runs against shared servers apart.
    let run = format!(
        "{:x}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );
    let mut ids = Vec::new();
    for i in 0..commands as usize {
        let id = format!("cmd-{run}-{i:04}");
        let vehicle = VEHICLES[i % VEHICLES.len()];
        let doc = json!({"run": run, "vehicle": vehicle, "kind": KINDS[i % KINDS.len()], "status": "queued", "seq": i});
        backends
            .documents
            .put(COLLECTION, &id, doc, PutDocumentOptions::create())
            .await?;
        backends
            .queue
            .publish(
                TOPIC,
                Message::new(id.clone())
                    .with_id(id.clone())
                    .with_attribute("vehicle", vehicle),
            )
            .await?;
        ids.push(id);
    }
    println!("issued {commands} commands for {} vehicles", VEHICLES.len());

    let mut local_workers = Vec::new();
    let workload = format!("command-worker-{run}");
    if simulated {
        for w in 0..workers {
            let backends = open_backends(&urls).await?;
            local_workers.push(tokio::spawn(async move {
                run_worker(&backends, &format!("task-{w}"), Duration::from_secs(2)).await
            }));
        }
    } else {
        let exe = std::env::current_exe().map_err(|e| {
            Error::internal("portable-service", format!("cannot find own binary: {e}"))
        })?;
        let spec = WorkloadSpec::command(&workload, exe.to_string_lossy())
            .with_args(["worker"])
            .with_env("DOCUMENTS_URL", &urls.documents)
            .with_env("QUEUE_URL", &urls.queue)
            .with_env("BLOBS_URL", &urls.blobs)
            .with_label("app", "portable-service")
            .with_replicas(workers)
            .with_restart(RestartPolicy::OnFailure);
        compute.apply(spec).await?;
        let status = compute
            .wait_ready(&workload, Duration::from_secs(30))
            .await?;
        println!(
            "started {} worker processes through {}",
            status.ready_replicas,
            compute.info().backend
        );
    }

    // Wait until every command document says done.
    let deadline = Instant::now() + Duration::from_secs(120);
    let done = loop {
        let done = backends
            .documents
            .query_all(
                COLLECTION,
                Query::all()
                    .filter(Filter::eq("run", run.clone()))
                    .filter(Filter::eq("status", "done")),
            )
            .await?;
        if done.len() == ids.len() || Instant::now() > deadline {
            break done;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let mut per_worker: BTreeMap<String, usize> = BTreeMap::new();
    for doc in &done {
        *per_worker
            .entry(doc.value["executed_by"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    let mut blobs = 0;
    for vehicle in VEHICLES {
        blobs += backends
            .blobs
            .list_all(&format!("telemetry/{vehicle}/cmd-{run}"))
            .await?
            .len();
    }

    if simulated {
        for task in local_workers {
            task.await.map_err(|e| {
                Error::internal("portable-service", format!("worker task failed: {e}"))
            })??;
        }
    } else {
        compute.delete(&workload).await?;
    }
    // Leave shared servers as we found them.
    for id in &ids {
        backends
            .documents
            .delete(COLLECTION, id, WriteCondition::Any)
            .await?;
    }

    println!("summary:");
    println!("  commands issued:    {}", ids.len());
    println!("  commands executed:  {}", done.len());
    for (worker, n) in &per_worker {
        println!("    by {worker}: {n}");
    }
    println!("  telemetry blobs:    {blobs}");
    println!(
        "  elapsed:            {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&tmp);
    if done.len() != ids.len() || blobs != ids.len() {
        return Err(Error::new(
            ErrorKind::DeadlineExceeded,
            "portable-service",
            format!("only {} of {} commands completed", done.len(), ids.len()),
        ));
    }
    println!("ok");
    Ok(())
}

#[tokio::main]
async fn main() {
    let worker = std::env::args().nth(1).as_deref() == Some("worker");
    let result = if worker {
        worker_main().await
    } else {
        service_main().await
    };
    if let Err(e) = result {
        eprintln!("portable-service: {e}");
        std::process::exit(1);
    }
}
