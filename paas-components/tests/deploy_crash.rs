//! A rollout driver killed with SIGKILL in the middle of a rollout over a real Docker Engine;
//! a driver in another process resumes it from the records (a SQLite file both processes
//! open) without redoing a finished step, and the engine ends with exactly the planned
//! containers.
//!
//! The test starts this test binary again, filtered to this test, as the driver to kill
//! (`DEPLOY_CRASH_ROLE=driver`). Three regions are three Docker handles on the one engine,
//! at three locations; each unit runs in one region only, so their containers cannot be
//! confused in the shared engine.
#![cfg(all(feature = "docker", feature = "sqlite"))]

mod support;

use bollard::query_parameters::ListContainersOptions;
use cloud_abstraction::compute::{Compute, WorkloadSpec};
use cloud_abstraction::database::DocumentStore;
use cloud_abstraction::testkit::unique_name;
use cloud_abstraction::{Location, ResourceUrl};
use paas_components::compute::DockerCompute;
use paas_components::database::SqliteDocumentStore;
use paas_components::deploy::{
    Driver, Gate, Placement, Progress, RolloutRequest, RolloutState, StepKind, StepOutcome,
    StepRecord, canary_stages,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ROLE: &str = "DEPLOY_CRASH_ROLE";
const DEFAULT_URL: &str = "docker:///var/run/docker.sock?default_image=multicloud-test/busybox:1";
const TEST_NAME: &str = "a_driver_killed_mid_rollout_is_resumed_by_another_process";
const REGIONS: [(&str, &str); 3] = [("eu", "aws"), ("us", "gcp"), ("asia", "azure")];

fn engine_url() -> String {
    std::env::var("DOCKER_TEST_URL").unwrap_or_else(|_| DEFAULT_URL.to_string())
}

async fn targets() -> cloud_abstraction::Result<BTreeMap<String, Arc<dyn Compute>>> {
    let url = ResourceUrl::parse(&engine_url())?;
    let mut targets = BTreeMap::new();
    for (region, cloud) in REGIONS {
        let compute = DockerCompute::from_url(&url)
            .await?
            .with_location(Location::new(cloud, region));
        targets.insert(region.to_string(), Arc::new(compute) as Arc<dyn Compute>);
    }
    Ok(targets)
}

/// The rollout: `api` (2 replicas) in eu as the canary stage, then `worker` in us and `cron`
/// in asia; each gate watches for 3 s, the window in which the driver is killed.
fn request(prefix: &str) -> RolloutRequest {
    let unit = |name: &str| {
        WorkloadSpec::command(format!("{prefix}-{name}"), "sh")
            .with_args(["-c", "exec sleep 3600"])
            .with_env("VERSION", "v1")
    };
    let placement = Placement::default()
        .with("api", "eu", 2)
        .with("worker", "us", 1)
        .with("cron", "asia", 1);
    RolloutRequest {
        id: format!("{prefix}-r1"),
        service: "shop".into(),
        version: "v1".into(),
        actor: "ci@example".into(),
        units: ["api", "worker", "cron"]
            .into_iter()
            .map(|u| (u.to_string(), unit(u)))
            .collect(),
        stages: canary_stages("eu", &placement),
        placement,
        previous: None,
        gate: Gate {
            ready_timeout: Duration::from_secs(60),
            observe: Duration::from_secs(3),
            error_budget: 0,
        },
    }
}

async fn records(db: &str) -> Arc<dyn DocumentStore> {
    Arc::new(
        SqliteDocumentStore::connect(&format!("sqlite://{db}"))
            .await
            .unwrap(),
    )
}

/// The containers of workload `name`, straight from the engine.
async fn containers_of(compute: &DockerCompute, name: &str) -> usize {
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
        .len()
}

/// The driver process: runs the rollout (the parent kills it during the first gate).
async fn driver(prefix: &str, db: &str) {
    let driver = Driver::new("doomed", targets().await.unwrap(), records(db).await);
    let progress = driver.run(&request(prefix)).await;
    // Only reached if the parent failed to kill in time; it then fails on the records.
    eprintln!("driver finished before it was killed: {progress:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_killed_mid_rollout_is_resumed_by_another_process() {
    if std::env::var(ROLE).as_deref() == Ok("driver") {
        let var = |k: &str| std::env::var(k).unwrap();
        driver(&var("DEPLOY_CRASH_PREFIX"), &var("DEPLOY_CRASH_DB")).await;
        return;
    }
    let engine = match DockerCompute::from_url(&ResourceUrl::parse(&engine_url()).unwrap()).await {
        Ok(engine) => engine,
        Err(e) => {
            return support::missing_server("DOCKER_TEST_URL", &format!("Docker Engine ({e})"));
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("deploy.db").display().to_string();
    let prefix = unique_name("crash-");
    let req = request(&prefix);
    let store = records(&db).await;

    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
        .env(ROLE, "driver")
        .env("DEPLOY_CRASH_PREFIX", &prefix)
        .env("DEPLOY_CRASH_DB", &db)
        .spawn()
        .unwrap();
    // Kill once the canary's apply is done and its gate is being watched.
    let watcher = Driver::new("watcher", targets().await.unwrap(), store.clone());
    let deadline = Instant::now() + Duration::from_secs(120);
    let before_kill: Vec<StepRecord> = loop {
        assert!(
            Instant::now() < deadline,
            "the driver never reached the first gate"
        );
        let steps = watcher.steps(&req.id).await.unwrap_or_default();
        let in_gate = steps.len() == 2
            && steps[1].step.kind == StepKind::Gate
            && steps[1].outcome == StepOutcome::Started;
        if in_gate {
            break steps;
        }
        assert!(
            steps.len() < 3,
            "the driver went past the first gate before the kill: {steps:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    child.kill().unwrap(); // SIGKILL on Unix
    let status = child.wait().unwrap();
    assert!(!status.success(), "the driver was killed, not finished");
    assert_eq!(before_kill[0].outcome, StepOutcome::Ok);
    let record = watcher.rollout(&req.id).await.unwrap().unwrap();
    assert_eq!(record.state, RolloutState::Running);
    assert_eq!(record.driver, "doomed");
    assert_eq!(record.cursor, 1, "killed inside the gate");

    // Another process's driver (here: this one, with fresh handles) takes the rollout over.
    let resumed = Driver::new("rescuer", targets().await.unwrap(), records(&db).await);
    let outcome = resumed.run(&req).await.unwrap();
    assert_eq!(outcome, Progress::Done(RolloutState::Succeeded));
    let steps = resumed.steps(&req.id).await.unwrap();
    let kinds: Vec<(StepKind, &str)> = steps
        .iter()
        .map(|s| (s.step.kind, s.step.region.as_str()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (StepKind::Apply, "eu"),
            (StepKind::Gate, ""),
            (StepKind::Apply, "asia"),
            (StepKind::Apply, "us"),
            (StepKind::Gate, ""),
        ]
    );
    assert!(
        steps.iter().all(|s| s.outcome == StepOutcome::Ok),
        "{steps:?}"
    );
    // The canary's apply was not redone (its record is the dead driver's), and the gate it
    // died in kept its first start.
    assert_eq!(steps[0], before_kill[0]);
    assert_eq!(steps[1].started_ms, before_kill[1].started_ms);
    assert_eq!(
        resumed.rollout(&req.id).await.unwrap().unwrap().driver,
        "rescuer"
    );

    // The engine holds exactly the planned containers, all ready, none twice.
    let t = targets().await.unwrap();
    for (unit, region, replicas) in [("api", "eu", 2), ("worker", "us", 1), ("cron", "asia", 1)] {
        let name = &req.units[unit].name;
        let status = t[region].get(name).await.unwrap().expect("workload exists");
        assert_eq!(
            (
                status.desired_replicas,
                status.ready_replicas,
                status.generation
            ),
            (replicas, replicas, 1),
            "{unit} in {region}"
        );
        assert_eq!(
            containers_of(&engine, name).await,
            replicas as usize,
            "{unit}"
        );
    }
    println!(
        "deploy_crash: driver killed with SIGKILL inside the canary gate; resumed by another \
         driver; {} steps, none redone; containers as planned",
        steps.len()
    );
    for (unit, region, _) in [("api", "eu", 0), ("worker", "us", 0), ("cron", "asia", 0)] {
        t[region].delete(&req.units[unit].name).await.unwrap();
    }
}
