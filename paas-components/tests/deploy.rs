//! Rollouts across three regions (three compute backends), with gates, rollback, resume from
//! records and re-planning; and the delivery metrics over hand-made records.
#![cfg(all(feature = "sim", feature = "sqlite", feature = "process"))]

use async_trait::async_trait;
use cloud_abstraction::compute::{
    Compute, ComputeCapabilities, LogOptions, LogPage, RestartPolicy, WorkloadSpec, WorkloadStatus,
};
use cloud_abstraction::database::{DocumentStore, DocumentStoreExt, PutDocumentOptions};
use cloud_abstraction::{BackendInfo, Error, ErrorKind, Location, Result};
use paas_components::compute::{ProcessCompute, SimCompute};
use paas_components::database::{MemoryDocumentStore, SqliteDocumentStore};
use paas_components::deploy::metrics::{self, DoraRow};
use paas_components::deploy::{
    COMMIT_TIME_LABEL, Driver, Gate, Placement, PlannedStep, Progress, Records, RolloutRecord,
    RolloutRequest, RolloutState, StepKind, StepOutcome, StepRecord, canary_stages,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

type Targets = BTreeMap<String, Arc<dyn Compute>>;

const REGIONS: [(&str, &str); 3] = [("eu", "aws"), ("us", "gcp"), ("asia", "azure")];

fn sim_targets() -> Targets {
    REGIONS
        .iter()
        .map(|(region, cloud)| {
            let c: Arc<dyn Compute> =
                Arc::new(SimCompute::new().with_location(Location::new(*cloud, *region)));
            (region.to_string(), c)
        })
        .collect()
}

fn placement() -> Placement {
    Placement::default()
        .with("api", "eu", 2)
        .with("api", "us", 1)
        .with("api", "asia", 1)
        .with("worker", "asia", 2)
}

fn service(name: &str, version: &str) -> WorkloadSpec {
    WorkloadSpec::command(name, "sh")
        .with_args(["-c", "exec sleep 3600"])
        .with_env("VERSION", version)
        .with_label(COMMIT_TIME_LABEL, "1700000000")
}

fn broken(name: &str, version: &str) -> WorkloadSpec {
    WorkloadSpec::command(name, "sh")
        .with_args(["-c", "exit 3"])
        .with_env("VERSION", version)
        .with_restart(RestartPolicy::Never)
}

fn gate() -> Gate {
    Gate {
        ready_timeout: Duration::from_secs(10),
        observe: Duration::from_millis(200),
        error_budget: 0,
    }
}

fn request(id: &str, version: &str, api: WorkloadSpec, worker: WorkloadSpec) -> RolloutRequest {
    let placement = placement();
    RolloutRequest {
        id: id.into(),
        service: "shop".into(),
        version: version.into(),
        actor: "ci@example".into(),
        units: BTreeMap::from([("api".into(), api), ("worker".into(), worker)]),
        stages: canary_stages("eu", &placement),
        placement,
        previous: None,
        gate: gate(),
    }
}

fn v1() -> RolloutRequest {
    request("r1", "v1", service("api", "v1"), service("worker", "v1"))
}

async fn version_in(targets: &Targets, region: &str, name: &str) -> Option<(String, u32, u64)> {
    let s = targets[region].get(name).await.unwrap()?;
    Some((
        s.spec.env.get("VERSION").cloned().unwrap_or_default(),
        s.desired_replicas,
        s.generation,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_region_plan_is_applied_in_stages() {
    let targets = sim_targets();
    let store: Arc<dyn DocumentStore> = Arc::new(MemoryDocumentStore::new());
    let driver = Driver::new("d1", targets.clone(), store.clone());
    assert_eq!(
        driver.run(&v1()).await.unwrap(),
        Progress::Done(RolloutState::Succeeded)
    );
    assert_eq!(
        version_in(&targets, "eu", "api").await,
        Some(("v1".into(), 2, 1))
    );
    assert_eq!(
        version_in(&targets, "us", "api").await,
        Some(("v1".into(), 1, 1))
    );
    assert_eq!(
        version_in(&targets, "asia", "worker").await,
        Some(("v1".into(), 2, 1))
    );
    assert_eq!(version_in(&targets, "eu", "worker").await, None);

    let steps = driver.steps("r1").await.unwrap();
    // Stage 0: api@eu, gate; stage 1: api@asia, worker@asia, api@us, gate.
    let kinds: Vec<(StepKind, &str, &str)> = steps
        .iter()
        .map(|s| (s.step.kind, s.step.unit.as_str(), s.step.region.as_str()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (StepKind::Apply, "api", "eu"),
            (StepKind::Gate, "", ""),
            (StepKind::Apply, "api", "asia"),
            (StepKind::Apply, "worker", "asia"),
            (StepKind::Apply, "api", "us"),
            (StepKind::Gate, "", ""),
        ]
    );
    assert!(steps.iter().all(|s| s.outcome == StepOutcome::Ok));
    assert_eq!(steps[0].cloud, "aws");
    assert_eq!(steps[4].cloud, "gcp");
    assert!(
        steps
            .iter()
            .all(|s| s.actor == "ci@example" && s.version == "v1")
    );
    let record = driver.rollout("r1").await.unwrap().unwrap();
    assert_eq!(record.commit_ms, Some(1_700_000_000_000));
    assert!(record.finished_ms.unwrap() >= record.created_ms);

    // Running it again does nothing: the rollout is done.
    assert_eq!(
        driver.run(&v1()).await.unwrap(),
        Progress::Done(RolloutState::Succeeded)
    );
    assert_eq!(
        version_in(&targets, "eu", "api").await,
        Some(("v1".into(), 2, 1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_canary_is_rolled_back_and_later_stages_never_run() {
    let targets = sim_targets();
    let store: Arc<dyn DocumentStore> = Arc::new(MemoryDocumentStore::new());
    let driver = Driver::new("d1", targets.clone(), store);
    driver.run(&v1()).await.unwrap();
    let r2 = request("r2", "v2", broken("api", "v2"), service("worker", "v2"));
    assert_eq!(
        driver.run(&r2).await.unwrap(),
        Progress::Done(RolloutState::RolledBack)
    );
    // The previous version runs again in eu (a new generation: applied twice); the other
    // regions were never touched.
    let (version, replicas, generation) = version_in(&targets, "eu", "api").await.unwrap();
    assert_eq!((version.as_str(), replicas), ("v1", 2));
    assert_eq!(generation, 3);
    targets["eu"]
        .get("api")
        .await
        .unwrap()
        .filter(|s| s.ready_replicas == 2)
        .expect("v1 ready again in eu");
    assert_eq!(
        version_in(&targets, "us", "api").await,
        Some(("v1".into(), 1, 1))
    );
    assert_eq!(
        version_in(&targets, "asia", "worker").await,
        Some(("v1".into(), 2, 1))
    );
    let steps = Driver::new("d1", targets, Arc::new(MemoryDocumentStore::new()))
        .steps("r2")
        .await;
    assert_eq!(steps.unwrap_err().kind(), ErrorKind::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_second_stage_rolls_back_the_canary_too() {
    let targets = sim_targets();
    let store: Arc<dyn DocumentStore> = Arc::new(MemoryDocumentStore::new());
    let driver = Driver::new("d1", targets.clone(), store);
    driver.run(&v1()).await.unwrap();
    // The worker only runs in asia (stage 1): the canary stage (api@eu) passes.
    let r2 = request("r2", "v2", service("api", "v2"), broken("worker", "v2"));
    assert_eq!(
        driver.run(&r2).await.unwrap(),
        Progress::Done(RolloutState::RolledBack)
    );
    for (region, unit) in [
        ("eu", "api"),
        ("us", "api"),
        ("asia", "api"),
        ("asia", "worker"),
    ] {
        let (version, _, _) = version_in(&targets, region, unit).await.unwrap();
        assert_eq!(version, "v1", "{unit} in {region}");
    }
    let steps = driver.steps("r2").await.unwrap();
    let gate = steps
        .iter()
        .find(|s| s.outcome == StepOutcome::Failed)
        .unwrap();
    assert_eq!((gate.step.kind, gate.step.stage), (StepKind::Gate, 1));
    assert!(gate.detail.contains("worker"), "{}", gate.detail);
    let undone: Vec<(u32, &str, &str)> = steps
        .iter()
        .filter(|s| s.step.kind == StepKind::Rollback)
        .map(|s| {
            assert_eq!(s.outcome, StepOutcome::Ok);
            (
                s.step.undoes.unwrap(),
                s.step.unit.as_str(),
                s.step.region.as_str(),
            )
        })
        .collect();
    // Latest first, every apply of both stages.
    assert_eq!(
        undone,
        vec![
            (4, "api", "us"),
            (3, "worker", "asia"),
            (2, "api", "asia"),
            (0, "api", "eu")
        ]
    );
    let record = driver.rollout("r2").await.unwrap().unwrap();
    assert!(record.failed_ms.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_over_the_error_budget_fail_the_gate() {
    let targets = sim_targets();
    let store: Arc<dyn DocumentStore> = Arc::new(MemoryDocumentStore::new());
    let driver = Driver::new("d1", targets.clone(), store);
    let crashing = WorkloadSpec::command("api", "sh").with_args(["-c", "sleep 0.3; exit 1"]);
    let mut r = request("r1", "v1", crashing, service("worker", "v1"));
    r.gate.observe = Duration::from_millis(1500);
    assert_eq!(
        driver.run(&r).await.unwrap(),
        Progress::Done(RolloutState::RolledBack)
    );
    let steps = driver.steps("r1").await.unwrap();
    assert!(
        steps[1].detail.contains("error budget"),
        "{}",
        steps[1].detail
    );
    // No previous version: the rollback removed the new workload.
    assert_eq!(version_in(&targets, "eu", "api").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_driver_is_resumed_from_the_records_without_redoing_steps() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("deploy.db").display());
    let targets = sim_targets();
    {
        let store: Arc<dyn DocumentStore> =
            Arc::new(SqliteDocumentStore::connect(&url).await.unwrap());
        let first = Driver::new("d1", targets.clone(), store).with_step_limit(3);
        assert_eq!(
            first.run(&v1()).await.unwrap(),
            Progress::Paused { cursor: 3 }
        );
        // The driver and its store are dropped here, as by a crash after step 3.
    }
    // The canary and the first apply of stage 1 are done; api@us is not.
    assert!(version_in(&targets, "asia", "api").await.is_some());
    assert_eq!(version_in(&targets, "us", "api").await, None);

    let store: Arc<dyn DocumentStore> = Arc::new(SqliteDocumentStore::connect(&url).await.unwrap());
    let before: Vec<StepRecord> = Driver::new("x", targets.clone(), store.clone())
        .steps("r1")
        .await
        .unwrap();
    assert_eq!(before.len(), 3);
    // A crash in the middle of step 3 leaves its `started` record: fake it, with a
    // start time and previous spec the resumed driver must keep.
    let rec = StepRecord {
        rollout: "r1".into(),
        service: "shop".into(),
        step: PlannedStep {
            seq: 3,
            stage: 1,
            kind: StepKind::Apply,
            unit: "worker".into(),
            region: "asia".into(),
            replicas: 2,
            undoes: None,
        },
        version: "v1".into(),
        actor: "ci@example".into(),
        cloud: "azure".into(),
        started_ms: 42,
        finished_ms: None,
        outcome: StepOutcome::Started,
        detail: String::new(),
        previous: None,
    };
    store
        .put_as(
            "deploy_steps",
            "r1:0003",
            &rec,
            PutDocumentOptions::create(),
        )
        .await
        .unwrap();

    let second = Driver::new("d2", targets.clone(), store.clone());
    assert_eq!(
        second.run(&v1()).await.unwrap(),
        Progress::Done(RolloutState::Succeeded)
    );
    let after = second.steps("r1").await.unwrap();
    assert_eq!(after.len(), 6);
    assert_eq!(&after[..3], &before[..], "completed steps are not redone");
    assert_eq!(after[3].started_ms, 42);
    assert_eq!(after[3].outcome, StepOutcome::Ok);
    // Applied once each: generation 1 everywhere.
    for (region, unit) in [
        ("eu", "api"),
        ("us", "api"),
        ("asia", "api"),
        ("asia", "worker"),
    ] {
        assert_eq!(
            version_in(&targets, region, unit).await,
            Some(("v1".into(), placement().count(unit, region), 1)),
            "{unit} in {region}"
        );
    }
    assert_eq!(second.rollout("r1").await.unwrap().unwrap().driver, "d2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_drivers_on_one_rollout_do_not_both_go_on() {
    let targets = sim_targets();
    let store: Arc<dyn DocumentStore> = Arc::new(MemoryDocumentStore::new());
    let a = Driver::new("a", targets.clone(), store.clone());
    let b = Driver::new("b", targets.clone(), store.clone());
    let request = v1();
    let (ra, rb) = tokio::join!(a.run(&request), b.run(&request));
    let mut done = 0;
    let errors: Vec<String> = [&ra, &rb]
        .iter()
        .filter_map(|r| r.as_ref().err().map(|e| e.to_string()))
        .collect();
    for r in [ra, rb] {
        match r {
            Ok(p) => {
                assert_eq!(p, Progress::Done(RolloutState::Succeeded));
                done += 1;
            }
            // The one that lost the claim stops at its next step.
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    ErrorKind::PreconditionFailed | ErrorKind::AlreadyExists
                ),
                "{e}"
            ),
        }
    }
    assert!(done >= 1, "{errors:?}");
    // Each workload applied once (idempotent even when a step was taken over).
    for (region, unit) in [
        ("eu", "api"),
        ("us", "api"),
        ("asia", "api"),
        ("asia", "worker"),
    ] {
        assert_eq!(
            version_in(&targets, region, unit).await.unwrap().2,
            1,
            "{unit} in {region}"
        );
    }
}

#[tokio::test]
async fn a_step_finished_before_the_cursor_moved_keeps_its_outcome() {
    let targets = sim_targets();
    let store: Arc<dyn DocumentStore> = Arc::new(MemoryDocumentStore::new());
    let first = Driver::new("d1", targets.clone(), store.clone()).with_step_limit(1);
    assert_eq!(
        first.run(&v1()).await.unwrap(),
        Progress::Paused { cursor: 1 }
    );
    // A crash after step 1 (the gate) was recorded as failed but before the cursor moved.
    let mut gate = first.steps("r1").await.unwrap()[0].clone();
    gate.step = PlannedStep {
        seq: 1,
        stage: 0,
        kind: StepKind::Gate,
        unit: String::new(),
        region: String::new(),
        replicas: 0,
        undoes: None,
    };
    gate.outcome = StepOutcome::Failed;
    gate.detail = "recorded before the crash".into();
    store
        .put_as(
            "deploy_steps",
            "r1:0001",
            &gate,
            PutDocumentOptions::create(),
        )
        .await
        .unwrap();
    let second = Driver::new("d2", targets.clone(), store);
    assert_eq!(
        second.run(&v1()).await.unwrap(),
        Progress::Done(RolloutState::RolledBack)
    );
    assert_eq!(
        second.steps("r1").await.unwrap()[1].detail,
        "recorded before the crash"
    );
    assert_eq!(version_in(&targets, "eu", "api").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_is_resumed_too() {
    let targets = sim_targets();
    let store: Arc<dyn DocumentStore> = Arc::new(MemoryDocumentStore::new());
    Driver::new("d1", targets.clone(), store.clone())
        .run(&v1())
        .await
        .unwrap();
    let r2 = request("r2", "v2", service("api", "v2"), broken("worker", "v2"));
    // 6 forward steps (the last one the failing gate), then one of the 4 rollbacks.
    let first = Driver::new("d1", targets.clone(), store.clone()).with_step_limit(7);
    assert_eq!(
        first.run(&r2).await.unwrap(),
        Progress::Paused { cursor: 7 }
    );
    let record = first.rollout("r2").await.unwrap().unwrap();
    assert_eq!(record.state, RolloutState::RollingBack);
    assert_eq!(version_in(&targets, "eu", "api").await.unwrap().0, "v2");
    let second = Driver::new("d2", targets.clone(), store);
    assert_eq!(
        second.run(&r2).await.unwrap(),
        Progress::Done(RolloutState::RolledBack)
    );
    assert_eq!(version_in(&targets, "eu", "api").await.unwrap().0, "v1");
    assert_eq!(second.steps("r2").await.unwrap().len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_region_is_replanned_and_only_the_difference_applied() {
    let mut targets = sim_targets();
    let store: Arc<dyn DocumentStore> = Arc::new(MemoryDocumentStore::new());
    Driver::new("d1", targets.clone(), store.clone())
        .run(&v1())
        .await
        .unwrap();
    // "us" is lost; its api replica moves to eu. (The plan would come from the solver's
    // `resolve`; see examples/.)
    targets.remove("us");
    let mut r = v1();
    r.id = "r1-replan".into();
    r.previous = Some(placement());
    r.placement = placement().with("api", "us", 0).with("api", "eu", 3);
    r.stages = vec![vec!["eu".into()], vec!["asia".into(), "us".into()]];
    let driver = Driver::new("d1", targets.clone(), store);
    assert_eq!(
        driver.run(&r).await.unwrap(),
        Progress::Done(RolloutState::Succeeded)
    );
    let steps = driver.steps("r1-replan").await.unwrap();
    let kinds: Vec<(StepKind, &str, StepOutcome)> = steps
        .iter()
        .map(|s| (s.step.kind, s.step.region.as_str(), s.outcome))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (StepKind::Apply, "eu", StepOutcome::Ok),
            (StepKind::Gate, "", StepOutcome::Ok),
            (StepKind::Remove, "us", StepOutcome::Skipped),
            (StepKind::Gate, "", StepOutcome::Ok),
        ]
    );
    // eu scaled (a replica count is part of the spec: generation 2), asia untouched.
    assert_eq!(
        version_in(&targets, "eu", "api").await,
        Some(("v1".into(), 3, 2))
    );
    assert_eq!(
        version_in(&targets, "asia", "worker").await,
        Some(("v1".into(), 2, 1))
    );
}

#[tokio::test]
async fn bad_requests_are_typed_errors_before_anything_runs() {
    let targets = sim_targets();
    let store: Arc<dyn DocumentStore> = Arc::new(MemoryDocumentStore::new());
    let driver = Driver::new("d1", targets.clone(), store.clone());
    let mut no_stage = v1();
    no_stage.stages = vec![vec!["eu".into()]];
    let mut twice = v1();
    twice.stages = vec![
        vec!["eu".into(), "us".into()],
        vec!["us".into(), "asia".into()],
    ];
    let mut no_spec = v1();
    no_spec.units.remove("worker");
    let mut bad_id = v1();
    bad_id.id = "has space".into();
    let mut targets2 = targets.clone();
    targets2.remove("asia");
    for r in [no_stage, twice, no_spec, bad_id] {
        let e = driver.run(&r).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    }
    let e = Driver::new("d1", targets2, store.clone())
        .run(&v1())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(driver.rollout("r1").await.unwrap().is_none());
    for region in ["eu", "us", "asia"] {
        assert!(targets[region].get("api").await.unwrap().is_none());
    }
}

/// A simulator whose `apply` of one version fails as an unreachable cloud would: a fault
/// injected at the backend's edge.
#[derive(Debug)]
struct RefusesVersion {
    inner: SimCompute,
    version: &'static str,
}

#[async_trait]
impl Compute for RefusesVersion {
    fn info(&self) -> BackendInfo {
        self.inner.info()
    }
    fn capabilities(&self) -> ComputeCapabilities {
        self.inner.capabilities()
    }
    async fn apply(&self, spec: WorkloadSpec) -> Result<WorkloadStatus> {
        if spec.env.get("VERSION").map(String::as_str) == Some(self.version) {
            return Err(Error::unavailable("sim", "cloud unreachable"));
        }
        self.inner.apply(spec).await
    }
    async fn get(&self, name: &str) -> Result<Option<WorkloadStatus>> {
        self.inner.get(name).await
    }
    async fn list(&self, selector: &BTreeMap<String, String>) -> Result<Vec<WorkloadStatus>> {
        self.inner.list(selector).await
    }
    async fn scale(&self, name: &str, replicas: u32) -> Result<WorkloadStatus> {
        self.inner.scale(name, replicas).await
    }
    async fn delete(&self, name: &str) -> Result<bool> {
        self.inner.delete(name).await
    }
    async fn logs(&self, name: &str, options: LogOptions) -> Result<LogPage> {
        self.inner.logs(name, options).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_rollback_step_is_reported_and_the_others_still_run() {
    let mut targets = sim_targets();
    let eu = SimCompute::new().with_location(Location::new("aws", "eu"));
    let store: Arc<dyn DocumentStore> = Arc::new(MemoryDocumentStore::new());
    targets.insert("eu".into(), Arc::new(eu.clone()));
    Driver::new("d1", targets.clone(), store.clone())
        .run(&v1())
        .await
        .unwrap();
    // From now on eu refuses v1: the rollback of api@eu fails.
    targets.insert(
        "eu".into(),
        Arc::new(RefusesVersion {
            inner: eu,
            version: "v1",
        }),
    );
    let driver = Driver::new("d1", targets.clone(), store.clone());
    let r2 = request("r2", "v2", service("api", "v2"), broken("worker", "v2"));
    assert_eq!(
        driver.run(&r2).await.unwrap(),
        Progress::Done(RolloutState::RollbackFailed)
    );
    let record = driver.rollout("r2").await.unwrap().unwrap();
    assert_eq!(record.rollback_failures, 1);
    let last = driver.steps("r2").await.unwrap().pop().unwrap();
    assert_eq!(
        (last.step.kind, last.step.region.as_str()),
        (StepKind::Rollback, "eu")
    );
    assert_eq!(last.outcome, StepOutcome::Failed);
    assert!(last.detail.contains("unreachable"), "{}", last.detail);
    assert_eq!(version_in(&targets, "eu", "api").await.unwrap().0, "v2");
    assert_eq!(version_in(&targets, "us", "api").await.unwrap().0, "v1");
    assert_eq!(
        version_in(&targets, "asia", "worker").await.unwrap().0,
        "v1"
    );
    // A failure everywhere it went out; restored in gcp, not in aws (its rollback failed).
    let (rollouts, steps) = metrics::load(store.as_ref(), &Records::default())
        .await
        .unwrap();
    let rows = metrics::dora(&rollouts, &steps, 0, u64::MAX);
    let aws = rows.iter().find(|r| r.cloud == "aws").unwrap();
    assert_eq!((aws.deployments, aws.failures), (1, 1));
    assert_eq!(aws.time_to_restore_ms, None);
    let gcp = rows.iter().find(|r| r.cloud == "gcp").unwrap();
    assert_eq!((gcp.deployments, gcp.failures), (1, 1));
    assert!(gcp.time_to_restore_ms.is_some());
}

/// Real processes: three `process://` backends, a good and a failing rollout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_backends_apply_and_roll_back() {
    let targets: Targets = REGIONS
        .iter()
        .map(|(region, cloud)| {
            let c: Arc<dyn Compute> =
                Arc::new(ProcessCompute::new().with_location(Location::new(*cloud, *region)));
            (region.to_string(), c)
        })
        .collect();
    let store: Arc<dyn DocumentStore> = Arc::new(MemoryDocumentStore::new());
    let driver = Driver::new("d1", targets.clone(), store);
    assert_eq!(
        driver.run(&v1()).await.unwrap(),
        Progress::Done(RolloutState::Succeeded)
    );
    let r2 = request("r2", "v2", broken("api", "v2"), service("worker", "v2"));
    assert_eq!(
        driver.run(&r2).await.unwrap(),
        Progress::Done(RolloutState::RolledBack)
    );
    let eu = targets["eu"].get("api").await.unwrap().unwrap();
    assert_eq!(eu.spec.env["VERSION"], "v1");
    for (region, _) in REGIONS {
        for unit in ["api", "worker"] {
            targets[region].delete(unit).await.unwrap();
        }
    }
}

// --- metrics over hand-made records ---

const H: u64 = 3_600_000;

fn rollout(
    id: &str,
    service: &str,
    state: RolloutState,
    commit_ms: u64,
    finished_ms: u64,
) -> RolloutRecord {
    let mut req = v1();
    req.id = id.into();
    req.service = service.into();
    RolloutRecord {
        request: req,
        steps: vec![],
        cursor: 0,
        state,
        driver: "d".into(),
        created_ms: finished_ms - H,
        commit_ms: Some(commit_ms),
        failed_ms: None,
        finished_ms: Some(finished_ms),
        rollback_failures: 0,
    }
}

fn step(
    rollout: &str,
    kind: StepKind,
    cloud: &str,
    started_ms: u64,
    finished_ms: u64,
) -> StepRecord {
    StepRecord {
        rollout: rollout.into(),
        service: "shop".into(),
        step: PlannedStep {
            seq: 0,
            stage: 0,
            kind,
            unit: "api".into(),
            region: "r".into(),
            replicas: 1,
            undoes: None,
        },
        version: "v".into(),
        actor: "a".into(),
        cloud: cloud.into(),
        started_ms,
        finished_ms: Some(finished_ms),
        outcome: StepOutcome::Ok,
        detail: String::new(),
        previous: None,
    }
}

#[test]
fn dora_measures_from_hand_made_records() {
    let day = 24 * H;
    let rollouts = vec![
        // aws and gcp: ok, lead 2h.
        rollout("a", "shop", RolloutState::Succeeded, 10 * H, 12 * H),
        // aws only: ok, lead 5h.
        rollout("b", "shop", RolloutState::Succeeded, 20 * H, 25 * H),
        // aws only: failed; bad version reached aws at 30h, restored at 30.5h.
        rollout("c", "shop", RolloutState::RolledBack, 29 * H, 31 * H),
        // aws: ok, lead 1h.
        rollout("d", "shop", RolloutState::Succeeded, 40 * H, 41 * H),
        // Outside the window (ends at 3 days).
        rollout("e", "shop", RolloutState::Succeeded, 0, 3 * day + H),
        // Another service.
        rollout("f", "cart", RolloutState::RolledBack, 0, 5 * H),
    ];
    let mut steps = vec![
        step("a", StepKind::Apply, "aws", 11 * H, 11 * H + 1),
        step("a", StepKind::Gate, "", 11 * H, 11 * H + 2),
        step("a", StepKind::Apply, "gcp", 11 * H + 10, 11 * H + 20),
        step("b", StepKind::Apply, "aws", 24 * H, 24 * H + 1),
        step("c", StepKind::Apply, "aws", 30 * H, 30 * H + 5),
        step("c", StepKind::Rollback, "aws", 30 * H + 10, 30 * H + H / 2),
        step("d", StepKind::Apply, "aws", 40 * H, 40 * H + 1),
        step("e", StepKind::Apply, "aws", 3 * day, 3 * day + 1),
        step("f", StepKind::Apply, "azure", 4 * H, 4 * H + 1),
        step("f", StepKind::Rollback, "azure", 4 * H + 2, 4 * H + H / 4),
    ];
    // A skipped step does not make a rollout count for its cloud.
    let mut skipped = step("d", StepKind::Remove, "azure", 40 * H, 40 * H);
    skipped.outcome = StepOutcome::Skipped;
    steps.push(skipped);

    let rows = metrics::dora(&rollouts, &steps, 0, 3 * day);
    let row = |service: &str, cloud: &str| -> DoraRow {
        rows.iter()
            .find(|r| r.service == service && r.cloud == cloud)
            .cloned()
            .unwrap_or_else(|| panic!("no row {service}/{cloud} in {rows:?}"))
    };
    assert_eq!(rows.len(), 3, "{rows:?}");
    let aws = row("shop", "aws");
    assert_eq!((aws.deployments, aws.failures), (3, 1));
    assert!((aws.deployments_per_day - 1.0).abs() < 1e-9);
    // Lead times 2h, 5h, 1h: median 2h.
    assert_eq!(aws.lead_time_ms, Some((2 * H) as f64));
    assert_eq!(aws.change_failure_rate, Some(0.25));
    assert_eq!(aws.time_to_restore_ms, Some((H / 2) as f64));
    let gcp = row("shop", "gcp");
    assert_eq!((gcp.deployments, gcp.failures), (1, 0));
    assert_eq!(gcp.lead_time_ms, Some((2 * H) as f64));
    assert_eq!(gcp.change_failure_rate, Some(0.0));
    assert_eq!(gcp.time_to_restore_ms, None);
    let cart = row("cart", "azure");
    assert_eq!((cart.deployments, cart.failures), (0, 1));
    assert_eq!(cart.lead_time_ms, None);
    assert_eq!(cart.change_failure_rate, Some(1.0));
    assert_eq!(cart.time_to_restore_ms, Some((H / 4) as f64));
    assert!(metrics::table(&rows).contains("25.0%"));

    assert_eq!(metrics::median(vec![]), None);
    assert_eq!(metrics::median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_load_real_rollout_records() {
    let targets = sim_targets();
    let store: Arc<dyn DocumentStore> = Arc::new(MemoryDocumentStore::new());
    let driver = Driver::new("d1", targets, store.clone());
    driver.run(&v1()).await.unwrap();
    let r2 = request("r2", "v2", broken("api", "v2"), service("worker", "v2"));
    driver.run(&r2).await.unwrap();
    let (rollouts, steps) = metrics::load(store.as_ref(), &Records::default())
        .await
        .unwrap();
    assert_eq!(rollouts.len(), 2);
    let rows = metrics::dora(&rollouts, &steps, 0, u64::MAX);
    let aws = rows.iter().find(|r| r.cloud == "aws").unwrap();
    assert_eq!((aws.deployments, aws.failures), (1, 1));
    assert_eq!(aws.change_failure_rate, Some(0.5));
    assert!(aws.time_to_restore_ms.is_some());
    let gcp = rows.iter().find(|r| r.cloud == "gcp").unwrap();
    assert_eq!((gcp.deployments, gcp.failures), (1, 0));
}
