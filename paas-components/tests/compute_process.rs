//! The local-process compute backend against the conformance kit, plus what only real
//! processes can show: nothing is left running after delete or drop.
#![cfg(feature = "process")]

use cloud_abstraction::compute::{Compute, ComputeExt, LogOptions, PortSpec, WorkloadSpec};
use cloud_abstraction::testkit::compute as kit;
use paas_components::compute::ProcessCompute;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    let compute: Arc<dyn Compute> = Arc::new(ProcessCompute::new());
    let report = kit::run_suite(compute).await;
    assert_eq!(report.passed.len(), kit::cases().len());
}

#[test]
fn model() {
    // Real processes: few, short sequences.
    kit::run_model_test_with(16, 6, || Arc::new(ProcessCompute::new()));
}

/// Whether a process exists and is not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(true),
        Err(_) => false,
    }
}

/// Polls until every pid is gone (bounded).
async fn until_gone(pids: &[u32]) {
    let deadline = Instant::now() + WAIT;
    while pids.iter().any(|p| alive(*p)) {
        assert!(
            Instant::now() < deadline,
            "processes still alive: {:?}",
            pids.iter().filter(|p| alive(**p)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And really gone, not just zombies waiting to be reaped.
    let deadline = Instant::now() + WAIT;
    while pids
        .iter()
        .any(|p| Path::new(&format!("/proc/{p}")).exists())
    {
        assert!(Instant::now() < deadline, "processes not reaped: {pids:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A workload whose replicas each start a grandchild, so that the whole process group matters.
fn family(name: &str, replicas: u32) -> WorkloadSpec {
    WorkloadSpec::command(name, "sh")
        .with_args(["-c", "sleep 3600 & echo child=$!; wait"])
        .with_replicas(replicas)
}

/// The pids of the replicas and of the grandchildren they reported in their logs.
async fn pids_of(compute: &dyn Compute, name: &str) -> Vec<u32> {
    let status = compute.wait_ready(name, WAIT).await.unwrap();
    let mut pids: Vec<u32> = status
        .instances
        .iter()
        .map(|i| i.id.parse().unwrap())
        .collect();
    let deadline = Instant::now() + WAIT;
    loop {
        let page = compute.logs(name, LogOptions::default()).await.unwrap();
        let children: Vec<u32> = page
            .lines
            .iter()
            .filter_map(|l| l.line.strip_prefix("child="))
            .map(|p| p.parse().unwrap())
            .collect();
        if children.len() == status.instances.len() {
            pids.extend(children);
            return pids;
        }
        assert!(Instant::now() < deadline, "children not reported");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_leaves_no_process() {
    let compute = ProcessCompute::new();
    compute.apply(family("fam-delete", 2)).await.unwrap();
    let pids = pids_of(&compute, "fam-delete").await;
    assert_eq!(pids.len(), 4);
    assert!(pids.iter().all(|p| alive(*p)), "all started: {pids:?}");
    assert!(compute.delete("fam-delete").await.unwrap());
    // delete returns after the replicas were reaped; grandchildren die with their group.
    until_gone(&pids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_down_leaves_no_process() {
    let compute = ProcessCompute::new();
    compute.apply(family("fam-scale", 3)).await.unwrap();
    let status = compute.wait_ready("fam-scale", WAIT).await.unwrap();
    let last: u32 = status.instances[2].id.parse().unwrap();
    compute.scale("fam-scale", 1).await.unwrap();
    until_gone(&[last]).await;
    compute.delete("fam-scale").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_leaves_no_process() {
    let compute: Arc<dyn Compute> = Arc::new(ProcessCompute::new());
    compute.apply(family("fam-drop-a", 2)).await.unwrap();
    compute.apply(family("fam-drop-b", 1)).await.unwrap();
    let mut pids = pids_of(compute.as_ref(), "fam-drop-a").await;
    pids.extend(pids_of(compute.as_ref(), "fam-drop-b").await);
    assert_eq!(pids.len(), 6);
    assert!(pids.iter().all(|p| alive(*p)));
    let clone = Arc::clone(&compute);
    drop(compute);
    // Another handle keeps everything running.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(pids.iter().all(|p| alive(*p)), "a live handle remains");
    drop(clone);
    until_gone(&pids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_and_ports_reach_the_program() {
    let compute = ProcessCompute::new();
    let mut spec = WorkloadSpec::command("envy", "sh")
        .with_args([
            "-c",
            "echo \"secret=$APP_SETTING port=$PORT admin=$PORT_ADMIN_API\"; exec sleep 3600",
        ])
        .with_env("APP_SETTING", "s3cr3t value");
    spec.ports = vec![
        PortSpec {
            name: "http".into(),
            port: 18_080,
        },
        PortSpec {
            name: "admin-api".into(),
            port: 18_081,
        },
    ];
    compute.apply(spec).await.unwrap();
    let status = compute.wait_ready("envy", WAIT).await.unwrap();
    assert_eq!(
        status.instances[0]
            .endpoints
            .get("http")
            .map(String::as_str),
        Some("127.0.0.1:18080")
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let page = compute.logs("envy", LogOptions::default()).await.unwrap();
        if page
            .lines
            .iter()
            .any(|l| l.line == "secret=s3cr3t value port=18080 admin=18081")
        {
            break;
        }
        assert!(Instant::now() < deadline, "env not seen: {page:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    compute.delete("envy").await.unwrap();
}

#[tokio::test]
async fn a_missing_program_fails() {
    let compute = ProcessCompute::new();
    compute
        .apply(WorkloadSpec::command("ghost", "/nonexistent/program"))
        .await
        .unwrap();
    let status = compute
        .wait_phase("ghost", cloud_abstraction::compute::Phase::Failed, WAIT)
        .await
        .unwrap();
    assert_eq!(status.instances[0].restarts, 0);
    let page = compute.logs("ghost", LogOptions::default()).await.unwrap();
    assert!(page.lines.iter().any(|l| l.line.contains("cannot start")));
    compute.delete("ghost").await.unwrap();
}
