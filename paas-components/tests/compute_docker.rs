//! The Docker compute backend against a real Docker Engine (started by
//! `.ci/services/docker.sh`, which also builds the local busybox image the kit's programs run
//! in): the conformance kit, the model test, what only containers can show (limits in force,
//! published ports, log streams, missing images), and a fault test that stops the engine in
//! the middle of an apply.
//!
//! The fault test stops the engine every other test here uses, so the tests of this binary
//! take a lock: shared for the ordinary ones, exclusive for the fault test.
#![cfg(feature = "docker")]

use bollard::query_parameters::{InspectContainerOptions, ListContainersOptions};
use cloud_abstraction::compute::{Compute, ComputeExt, LogOptions, Phase, PortSpec, WorkloadSpec};
use cloud_abstraction::testkit::compute as kit;
use cloud_abstraction::testkit::unique_name;
use cloud_abstraction::{ErrorKind, ResourceUrl};
use futures::StreamExt;
use paas_components::compute::DockerCompute;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::sync::RwLock;

const WAIT: Duration = Duration::from_secs(60);
const DEFAULT_URL: &str = "docker:///var/run/docker.sock?default_image=multicloud-test/busybox:1";

/// Shared by the ordinary tests, exclusive for the one that stops the engine.
static ENGINE: RwLock<()> = RwLock::const_new(());

fn test_url() -> String {
    std::env::var("DOCKER_TEST_URL").unwrap_or_else(|_| DEFAULT_URL.to_string())
}

fn socket_of(url: &str) -> String {
    let url = ResourceUrl::parse(url).expect("DOCKER_TEST_URL");
    let path = url.path();
    if path.is_empty() || path == "/" {
        paas_components::compute::docker::DEFAULT_SOCKET.to_string()
    } else {
        path
    }
}

/// The engine's URL, like `support::server_url` but for a unix socket: `None` (after saying
/// so loudly) only on a developer machine without an engine; under CI a missing engine fails.
async fn engine_url() -> Option<String> {
    let url = test_url();
    let socket = socket_of(&url);
    if tokio::net::UnixStream::connect(&socket).await.is_ok() {
        return Some(url);
    }
    if std::env::var_os("CI").is_some() || std::env::var_os("REQUIRE_SERVERS").is_some() {
        panic!("DOCKER_TEST_URL: no Docker Engine at {socket}, and CI requires it");
    }
    eprintln!(
        "\n!!!!!!!! SKIPPED: no Docker Engine at {socket}; this suite did NOT run. \
         Start it (bash .ci/services.sh) or set CI=1 to make this a failure. !!!!!!!!\n"
    );
    None
}

async fn open(url: &str) -> DockerCompute {
    DockerCompute::from_url(&ResourceUrl::parse(url).unwrap())
        .await
        .expect("open the Docker backend")
}

/// The containers of `name` in the engine, straight from the engine.
async fn containers_of(
    compute: &DockerCompute,
    name: &str,
) -> Vec<bollard::models::ContainerSummary> {
    let options = ListContainersOptions {
        all: true,
        filters: Some(HashMap::from([(
            "label".to_string(),
            vec![format!("io.multicloud.workload={name}")],
        )])),
        ..ListContainersOptions::default()
    };
    compute
        .docker()
        .list_containers(Some(options))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    let Some(url) = engine_url().await else {
        return;
    };
    let _engine = ENGINE.read().await;
    let compute: Arc<dyn Compute> = paas_components::registry::open_compute(&url).await.unwrap();
    let caps = compute.capabilities();
    assert!(caps.images && caps.commands && caps.logs && caps.scale);
    assert!(caps.resource_limits && caps.ports && !caps.simulated);
    let report = kit::run_suite(compute).await;
    assert_eq!(report.passed.len(), kit::cases().len());
}

#[test]
fn model() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Some(url) = rt.block_on(engine_url()) else {
        return;
    };
    let _engine = ENGINE.blocking_read();
    // One client for every sequence: it holds no connection (each request opens one on the
    // runtime it runs on).
    let compute = rt.block_on(open(&url));
    // Real containers: few, short sequences.
    kit::run_model_test_with(12, 6, move || Arc::new(compute.clone()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_ports_and_labels_reach_the_engine() {
    let Some(url) = engine_url().await else {
        return;
    };
    let _engine = ENGINE.read().await;
    let compute = open(&url).await;
    let name = unique_name("dk-limits-");
    let mut spec = kit::program(
        &name,
        "while true; do echo hello-from-$PORT | nc -l -p $PORT; done",
    )
    .with_replicas(2);
    spec.cpu_millis = Some(250);
    spec.memory_mib = Some(64);
    spec.ports.push(PortSpec {
        name: "http".to_string(),
        port: 8080,
    });
    compute.apply(spec).await.unwrap();
    let status = compute.wait_ready(&name, WAIT).await.unwrap();

    let mut endpoints = BTreeSet::new();
    for instance in &status.instances {
        let inspected = compute
            .docker()
            .inspect_container(&instance.id, None::<InspectContainerOptions>)
            .await
            .unwrap();
        let host = inspected.host_config.unwrap();
        assert_eq!(host.memory, Some(64 * 1024 * 1024));
        assert_eq!(host.nano_cpus, Some(250_000_000));
        let labels = inspected.config.unwrap().labels.unwrap();
        assert_eq!(labels.get("io.multicloud.workload"), Some(&name));
        assert_eq!(
            labels.get("io.multicloud.replica"),
            Some(&instance.index.to_string())
        );
        assert_eq!(
            labels.get("io.multicloud.generation").map(String::as_str),
            Some("1")
        );

        // Published on loopback, one host port per replica, and really reachable.
        let endpoint = instance.endpoints.get("http").unwrap().clone();
        assert!(endpoint.starts_with("127.0.0.1:"), "{endpoint}");
        endpoints.insert(endpoint.clone());
        let deadline = Instant::now() + WAIT;
        loop {
            let mut text = String::new();
            if let Ok(mut stream) = tokio::net::TcpStream::connect(&endpoint).await {
                let mut buf = [0u8; 64];
                if let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await
                {
                    text = String::from_utf8_lossy(&buf[..n]).into_owned();
                }
            }
            if text.contains("hello-from-8080") {
                break;
            }
            assert!(Instant::now() < deadline, "nothing answered on {endpoint}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert_eq!(endpoints.len(), 2, "each replica has its own host port");
    assert!(compute.delete(&name).await.unwrap());
    assert!(
        containers_of(&compute, &name).await.is_empty(),
        "delete leaves no container"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_stream_follows_and_a_second_handle_sees_the_workload() {
    let Some(url) = engine_url().await else {
        return;
    };
    let _engine = ENGINE.read().await;
    let compute = open(&url).await;
    let name = unique_name("dk-stream-");
    let spec = kit::program(
        &name,
        "i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.2; done",
    );
    compute.apply(spec.clone()).await.unwrap();
    compute.wait_ready(&name, WAIT).await.unwrap();

    let stream = compute.log_stream(&name, 0).await.unwrap();
    let lines: Vec<_> = tokio::time::timeout(WAIT, stream.take(4).collect::<Vec<_>>())
        .await
        .expect("four lines within the wait");
    let lines: Vec<_> = lines.into_iter().map(Result::unwrap).collect();
    let text: Vec<&str> = lines.iter().map(|l| l.line.as_str()).collect();
    assert_eq!(text, ["tick-1", "tick-2", "tick-3", "tick-4"]);
    assert!(lines.windows(2).all(|w| w[0].sequence < w[1].sequence));
    // The paged read agrees with the stream.
    let page = compute
        .logs(
            &name,
            LogOptions {
                since: lines[1].sequence,
                limit: Some(2),
            },
        )
        .await
        .unwrap();
    assert_eq!(page.lines, lines[1..3]);

    // State lives in the engine: another handle sees the same workload, and an identical
    // apply through it touches nothing.
    let other = open(&url).await;
    let before = compute.get(&name).await.unwrap().unwrap();
    let seen = other.apply(spec).await.unwrap();
    assert_eq!(seen.generation, before.generation);
    assert_eq!(seen.instances[0].id, before.instances[0].id);
    assert!(other.delete(&name).await.unwrap());
    assert!(compute.get(&name).await.unwrap().is_none());
    assert!(matches!(
        compute.log_stream(&name, 0).await.map(|_| ()),
        Err(e) if e.kind() == ErrorKind::NotFound
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_images_and_bad_urls_are_typed_errors() {
    let Some(url) = engine_url().await else {
        return;
    };
    let _engine = ENGINE.read().await;
    let compute = open(&url).await;
    let name = unique_name("dk-noimage-");
    let spec = WorkloadSpec::image(&name, "multicloud-test/absent:never");
    let err = compute.apply(spec).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PreconditionFailed, "{err}");
    assert!(
        compute.get(&name).await.unwrap().is_none(),
        "nothing written"
    );

    // Without a default image, command specs are unsupported.
    let socket = socket_of(&url);
    let bare = paas_components::registry::open_compute(&format!("unix://{socket}"))
        .await
        .unwrap();
    assert!(!bare.capabilities().commands);
    let err = bare.apply(kit::sleeper(&name)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");

    for bad in [
        "docker://somehost/var/run/docker.sock",
        "docker:///var/run/docker.sock?default_imag=x",
        "docker:///var/run/docker.sock?default_image=",
        "docker:///var/run/docker.sock?password=s3cret",
    ] {
        let err = paas_components::registry::open_compute(bad)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{bad}: {err}");
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }
    if socket == paas_components::compute::docker::DEFAULT_SOCKET {
        let default = paas_components::registry::open_compute("docker://")
            .await
            .unwrap();
        assert_eq!(default.info().backend, "docker");
        assert!(default.get(&name).await.unwrap().is_none());
    }
    let err = paas_components::registry::open_compute("docker:///nonexistent/docker.sock")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
}

// ---------------------------------------------------------------------------------------------
// Fault test: the engine stops in the middle of an apply.

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

fn engine_pid() -> u32 {
    let file = std::env::var("DOCKERD_PID_FILE").unwrap_or_else(|_| "/var/run/docker.pid".into());
    let pid: u32 = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{file}: {e}"))
        .trim()
        .parse()
        .unwrap();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    assert_eq!(
        comm.trim(),
        "dockerd",
        "{file} names pid {pid}, which is not dockerd"
    );
    pid
}

/// Stops dockerd by its pid (SIGTERM: it stops its containers, then exits) and waits until
/// it is gone.
fn stop_engine() {
    let pid = engine_pid();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + WAIT;
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "dockerd {pid} did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts the engine the way CI does (idempotent: does nothing if it is up).
fn start_engine() {
    let status = std::process::Command::new("bash")
        .arg(repo_root().join(".ci/services/docker.sh"))
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run .ci/services/docker.sh");
    assert!(status.success(), ".ci/services/docker.sh failed");
}

/// Brings the engine back when the test ends, whatever the outcome.
struct RestartEngine;

impl Drop for RestartEngine {
    fn drop(&mut self) {
        // No panic here: this may run while the test is already unwinding.
        let started = std::process::Command::new("bash")
            .arg(repo_root().join(".ci/services/docker.sh"))
            .stdout(std::process::Stdio::null())
            .status();
        if !started.is_ok_and(|s| s.success()) {
            eprintln!("could not restart the Docker Engine: run .ci/services/docker.sh");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_stopped_mid_apply_recovers_without_duplicates() {
    let Some(url) = engine_url().await else {
        return;
    };
    let _engine = ENGINE.write().await;
    let _restart = RestartEngine;
    let compute = open(&url).await;
    let name = unique_name("dk-fault-");
    let replicas = 6;
    let spec = kit::sleeper(&name).with_replicas(replicas);

    let applying = {
        let compute = compute.clone();
        let spec = spec.clone();
        tokio::spawn(async move { compute.apply(spec).await })
    };
    // Stop the engine once the apply has created its first container.
    let deadline = Instant::now() + WAIT;
    while containers_of(&compute, &name).await.is_empty() {
        assert!(Instant::now() < deadline, "the apply created nothing");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::task::spawn_blocking(stop_engine).await.unwrap();
    let cut = applying.await.unwrap();
    match &cut {
        Ok(status) => println!("the apply finished before the engine stopped: {status:?}"),
        Err(e) => assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}"),
    }

    // Down: every call is a retryable Unavailable.
    for err in [
        compute.apply(spec.clone()).await.unwrap_err(),
        compute.get(&name).await.unwrap_err(),
        compute.delete(&name).await.unwrap_err(),
    ] {
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
        assert!(err.is_retryable());
    }

    tokio::task::spawn_blocking(start_engine).await.unwrap();
    // What the cut-off apply left (the engine restarts `always` containers itself).
    let left = containers_of(&compute, &name).await.len();
    println!(
        "after the engine restart: {left} of {replicas} containers (cut: {})",
        cut.is_err()
    );
    assert!(left >= 1 && left <= replicas as usize, "{left} containers");
    // The same handle recovers; applying the same spec again converges.
    let deadline = Instant::now() + WAIT;
    let status = loop {
        match compute.apply(spec.clone()).await {
            Ok(status) => break status,
            Err(e) if e.kind() == ErrorKind::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("apply after the engine came back: {e}"),
        }
    };
    assert_eq!(status.generation, 1, "the same spec, however often applied");
    let ready = compute.wait_ready(&name, WAIT).await.unwrap();
    assert_eq!(ready.phase, Phase::Running);
    assert_eq!(ready.instances.len(), replicas as usize);

    let containers = containers_of(&compute, &name).await;
    assert_eq!(
        containers.len(),
        replicas as usize,
        "no duplicates: {containers:?}"
    );
    let indexes: BTreeSet<String> = containers
        .iter()
        .map(|c| c.labels.as_ref().unwrap()["io.multicloud.replica"].clone())
        .collect();
    assert_eq!(indexes.len(), replicas as usize, "one container per index");

    // And converged means settled: another apply touches nothing.
    let again = compute.apply(spec).await.unwrap();
    let ids = |s: &cloud_abstraction::compute::WorkloadStatus| -> BTreeSet<String> {
        s.instances.iter().map(|i| i.id.clone()).collect()
    };
    assert_eq!(ids(&again), ids(&ready));
    assert!(compute.delete(&name).await.unwrap());
    assert!(containers_of(&compute, &name).await.is_empty());
}
