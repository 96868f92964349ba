//! Rollouts across clouds: a [`Placement`] applied region by region through one
//! [`Compute`] backend per region, in gated stages, with automatic rollback, every step
//! recorded in a [`DocumentStore`] so that a rollout survives a crash of its driver.
//!
//! The placement is a plain description (unit → region → replicas), so this module does not
//! depend on the placement solver; converting a solver plan (and re-planning with its
//! `resolve` after a region is lost) is the caller's business (see `examples/`).
//!
//! # Semantics
//!
//! - A [`RolloutRequest`] names a service, a version, who asks (`actor`), one
//!   [`WorkloadSpec`] template per unit (its `replicas` is replaced by the placement's count
//!   for each region) and the stages: lists of regions, e.g. `[["eu"], ["us", "asia"]]` (a
//!   canary region first, then the rest: [`canary_stages`]). Every region the rollout
//!   touches must be in exactly one stage; otherwise `InvalidArgument` before anything runs.
//! - The steps are fixed when the rollout starts: per stage, one *apply* step per
//!   (region, unit) whose desired count differs from zero (or, with
//!   [`RolloutRequest::previous`], only the pairs whose count changed: the difference after a
//!   re-plan), a *remove* step for pairs going to zero, then one *gate* step.
//! - The **gate** waits until each workload of the stage is ready
//!   ([`Gate::ready_timeout`]), then watches it for [`Gate::observe`]; the stage fails if a
//!   workload is not ready in time, fails, or spends more than [`Gate::error_budget`]
//!   restarts (summed over the stage's workloads) while watched.
//! - A failed gate **rolls back** the whole rollout: every step applied so far, in reverse
//!   order, re-applies the spec that was in force before it (recorded in its step) and
//!   waits until it is ready again (within [`Gate::ready_timeout`]), or deletes the
//!   workload if there was none. A failed rollout so leaves the previous version
//!   everywhere, not a mix of versions across clouds; stages after the failed one never run.
//!   A rollback step that fails does not stop the others; the rollout then ends as
//!   `rollback_failed` rather than `rolled_back`, since the previous version may not run.
//! - A region absent from the driver's targets is **lost**: its remove steps are recorded as
//!   skipped (there is nothing left to remove); an apply step to it is an error
//!   (`InvalidArgument`), since a plan must not place replicas there.
//!
//! # Record layout
//!
//! Two collections (names from [`Records`]; default `deploy_rollouts`, `deploy_steps`):
//!
//! - `deploy_rollouts/<rollout id>`: a [`RolloutRecord`]: the request, the planned steps,
//!   the state (`running`, `rolling_back`, `succeeded`, `rolled_back`,
//!   `rollback_failed`), a cursor (steps
//!   done), the driver that owns it, and times (unix milliseconds).
//! - `deploy_steps/<rollout id>:<seq, 4 digits>`: a [`StepRecord`] per step: kind, unit,
//!   region, cloud (the backend's provider), version, actor, start and end, outcome and
//!   detail, and for applies the previous spec.
//!
//! # Failure behaviour
//!
//! - **Crash of the driver.** Each step is written as `started` before it acts and updated
//!   with its outcome after; the rollout's cursor moves after that. [`Driver::run`] on a
//!   rollout that exists resumes at the cursor: steps before it are never redone. The step at
//!   the cursor keeps its outcome if it has one (a crash between the step's write and the
//!   cursor's); if it is only `started`, it is done again, which is safe because
//!   [`Compute::apply`] is idempotent and the previous spec is taken from the `started`
//!   record (not read again from a backend that may already run the new version).
//! - **Two drivers.** Every cursor move is a conditional write on the rollout document's
//!   revision, and a driver claims a rollout by such a write: a driver that lost the claim
//!   gets `PreconditionFailed` at its next write and stops. Step records are written
//!   conditionally too; the owner that meets a conflict on one (the loser wrote it in the
//!   meantime) does the step again from its record, so one driver finishes the rollout.
//! - **Backend errors** during apply or remove fail the step and, like a failed gate, roll
//!   the rollout back. Errors of the record store are returned as they are (retryable ones
//!   stay retryable): the rollout is then resumable from its records.
//!
//! Why records rather than asking the backends: a backend shows what runs, not what a
//! rollout meant to do nor who did it; the records are also what the delivery metrics
//! ([`metrics`]) are computed from.

pub mod metrics;

use cloud_abstraction::compute::{Compute, ComputeExt, Phase, WorkloadSpec};
use cloud_abstraction::database::{DocumentStore, DocumentStoreExt, PutDocumentOptions, Revision};
use cloud_abstraction::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const BACKEND: &str = "deploy";

/// The label of a [`WorkloadSpec`] carrying the commit time of its version, in unix
/// seconds; the lead time for changes is measured from it.
pub const COMMIT_TIME_LABEL: &str = "commit-time";

/// Where each unit's replicas go: unit → region → replica count.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Placement {
    /// Unit → region → replicas (a count of 0 is the same as an absent region).
    pub units: BTreeMap<String, BTreeMap<String, u32>>,
}

impl Placement {
    /// Replicas of `unit` in `region`.
    pub fn count(&self, unit: &str, region: &str) -> u32 {
        self.units
            .get(unit)
            .and_then(|r| r.get(region))
            .copied()
            .unwrap_or(0)
    }

    /// Sets the replicas of `unit` in `region`.
    pub fn with(mut self, unit: &str, region: &str, replicas: u32) -> Self {
        self.units
            .entry(unit.to_string())
            .or_default()
            .insert(region.to_string(), replicas);
        self
    }

    /// Every region with at least one replica.
    pub fn regions(&self) -> BTreeSet<String> {
        self.units
            .values()
            .flat_map(|r| r.iter().filter(|(_, n)| **n > 0).map(|(k, _)| k.clone()))
            .collect()
    }
}

/// Stages with `first` alone, then every other region of `placement` (sorted).
pub fn canary_stages(first: &str, placement: &Placement) -> Vec<Vec<String>> {
    let rest: Vec<String> = placement
        .regions()
        .into_iter()
        .filter(|r| r != first)
        .collect();
    let mut stages = vec![vec![first.to_string()]];
    if !rest.is_empty() {
        stages.push(rest);
    }
    stages
}

/// When a stage passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gate {
    /// How long each workload of the stage may take to be ready.
    pub ready_timeout: Duration,
    /// How long the ready workloads are watched.
    pub observe: Duration,
    /// Most restarts (summed over the stage's workloads) allowed while watched.
    pub error_budget: u32,
}

impl Default for Gate {
    fn default() -> Self {
        Self {
            ready_timeout: Duration::from_secs(30),
            observe: Duration::from_secs(1),
            error_budget: 0,
        }
    }
}

/// What to roll out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutRequest {
    /// Unique id of the rollout (the key of its records).
    pub id: String,
    /// The service the units belong to (metrics are per service).
    pub service: String,
    /// The version being rolled out.
    pub version: String,
    /// Who asks.
    pub actor: String,
    /// One spec template per unit; `replicas` is replaced per region. The unit's workload
    /// name is the spec's `name`.
    pub units: BTreeMap<String, WorkloadSpec>,
    /// Where the replicas go.
    pub placement: Placement,
    /// The placement in force before; when set, only pairs whose count changed are touched.
    #[serde(default)]
    pub previous: Option<Placement>,
    /// Regions per stage, in order.
    pub stages: Vec<Vec<String>>,
    /// The gate of every stage.
    pub gate: Gate,
}

/// What a step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// Apply the unit's spec with the region's replica count.
    Apply,
    /// Delete the unit's workload in the region.
    Remove,
    /// Check the stage's workloads.
    Gate,
    /// Undo an earlier apply or remove.
    Rollback,
}

/// One planned step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedStep {
    /// Position in the rollout.
    pub seq: u32,
    /// The stage (index into [`RolloutRequest::stages`]).
    pub stage: u32,
    /// What it does.
    pub kind: StepKind,
    /// Unit (empty for gates).
    pub unit: String,
    /// Region (empty for gates).
    pub region: String,
    /// Replicas to apply.
    pub replicas: u32,
    /// For rollbacks: the seq of the step undone.
    #[serde(default)]
    pub undoes: Option<u32>,
}

/// The state of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// Going forward.
    Running,
    /// A stage failed; undoing.
    RollingBack,
    /// Every stage passed.
    Succeeded,
    /// A stage failed and everything was undone.
    RolledBack,
    /// A stage failed and at least one rollback step failed too: the previous version may
    /// not run everywhere (see the step records); needs a person.
    RollbackFailed,
}

/// The document `deploy_rollouts/<id>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutRecord {
    /// The request.
    pub request: RolloutRequest,
    /// The steps, forward ones then (after a failure) the rollbacks.
    pub steps: Vec<PlannedStep>,
    /// Steps done.
    pub cursor: u32,
    /// State.
    pub state: RolloutState,
    /// The driver owning the rollout.
    pub driver: String,
    /// Creation time (unix ms).
    pub created_ms: u64,
    /// Commit time of the version (unix ms), from [`COMMIT_TIME_LABEL`].
    #[serde(default)]
    pub commit_ms: Option<u64>,
    /// When a gate failed (unix ms).
    #[serde(default)]
    pub failed_ms: Option<u64>,
    /// When the rollout ended (unix ms).
    #[serde(default)]
    pub finished_ms: Option<u64>,
    /// Rollback steps that failed.
    #[serde(default)]
    pub rollback_failures: u32,
}

/// The outcome of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepOutcome {
    /// Begun, not finished (a crash leaves this).
    Started,
    /// Done.
    Ok,
    /// Failed (the rollout rolls back).
    Failed,
    /// Nothing to do (remove in a lost region).
    Skipped,
}

/// The document `deploy_steps/<rollout>:<seq>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// The rollout.
    pub rollout: String,
    /// The service.
    pub service: String,
    /// The step.
    pub step: PlannedStep,
    /// The version rolled out.
    pub version: String,
    /// Who asked.
    pub actor: String,
    /// The cloud of the region's backend (its provider); empty for gates and lost regions.
    pub cloud: String,
    /// Start (unix ms).
    pub started_ms: u64,
    /// End (unix ms).
    #[serde(default)]
    pub finished_ms: Option<u64>,
    /// Outcome.
    pub outcome: StepOutcome,
    /// Why it failed or was skipped.
    #[serde(default)]
    pub detail: String,
    /// For applies and removes: the spec in force before (`None`: no workload).
    #[serde(default)]
    pub previous: Option<WorkloadSpec>,
}

/// Names of the two record collections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Records {
    /// Rollout documents.
    pub rollouts: String,
    /// Step documents.
    pub steps: String,
}

impl Default for Records {
    fn default() -> Self {
        Self {
            rollouts: "deploy_rollouts".into(),
            steps: "deploy_steps".into(),
        }
    }
}

/// How a [`Driver::run`] call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// The rollout ended in this state.
    Done(RolloutState),
    /// The step limit was reached; run again to go on.
    Paused {
        /// Steps done so far (the cursor).
        cursor: u32,
    },
}

/// Drives rollouts: one compute backend per region, one record store.
#[derive(Debug, Clone)]
pub struct Driver {
    id: String,
    targets: BTreeMap<String, Arc<dyn Compute>>,
    store: Arc<dyn DocumentStore>,
    records: Records,
    step_limit: Option<u32>,
}

/// Unix milliseconds now.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn step_id(rollout: &str, seq: u32) -> String {
    format!("{rollout}:{seq:04}")
}

impl Driver {
    /// A driver named `id` (recorded as the rollout's owner).
    pub fn new(
        id: impl Into<String>,
        targets: BTreeMap<String, Arc<dyn Compute>>,
        store: Arc<dyn DocumentStore>,
    ) -> Self {
        Self {
            id: id.into(),
            targets,
            store,
            records: Records::default(),
            step_limit: None,
        }
    }

    /// Other collection names.
    pub fn with_records(mut self, records: Records) -> Self {
        self.records = records;
        self
    }

    /// Stops each [`run`](Self::run) after `steps` steps ([`Progress::Paused`]): to drive a
    /// rollout step by step, or to stop a driver mid-rollout as a crash would.
    pub fn with_step_limit(mut self, steps: u32) -> Self {
        self.step_limit = Some(steps);
        self
    }

    /// Reads a rollout's record.
    pub async fn rollout(&self, id: &str) -> Result<Option<RolloutRecord>> {
        Ok(self
            .store
            .get_as::<RolloutRecord>(&self.records.rollouts, id)
            .await?
            .map(|(r, _)| r))
    }

    /// Reads a rollout's step records, in order.
    pub async fn steps(&self, id: &str) -> Result<Vec<StepRecord>> {
        let record = self
            .rollout(id)
            .await?
            .ok_or_else(|| Error::not_found(BACKEND, format!("rollout `{id}`")))?;
        let ids: Vec<String> = (0..record.steps.len() as u32)
            .map(|s| step_id(id, s))
            .collect();
        let docs = self.store.get_many(&self.records.steps, &ids).await?;
        docs.into_iter()
            .flatten()
            .map(|d| {
                serde_json::from_value(d.value)
                    .map_err(|e| Error::internal(BACKEND, format!("bad step record: {e}")))
            })
            .collect()
    }

    /// Starts the rollout, or resumes it from its records if it exists (the request must
    /// then have the same id; its other fields are taken from the record).
    pub async fn run(&self, request: &RolloutRequest) -> Result<Progress> {
        let (mut record, mut revision) = self.claim(request).await?;
        let mut done_here = 0u32;
        let mut conflicts = 0u32;
        loop {
            match record.state {
                RolloutState::Succeeded
                | RolloutState::RolledBack
                | RolloutState::RollbackFailed => {
                    return Ok(Progress::Done(record.state));
                }
                _ => {}
            }
            if self.step_limit.is_some_and(|l| done_here >= l) {
                return Ok(Progress::Paused {
                    cursor: record.cursor,
                });
            }
            let Some(step) = record.steps.get(record.cursor as usize).cloned() else {
                record.state = match record.state {
                    RolloutState::Running => RolloutState::Succeeded,
                    _ if record.rollback_failures > 0 => RolloutState::RollbackFailed,
                    _ => RolloutState::RolledBack,
                };
                record.finished_ms = Some(now_ms());
                revision = self.save(&record, revision).await?;
                continue;
            };
            let ok = match self.do_step(&record, &step).await {
                Ok(ok) => ok,
                Err(e) if is_conflict(&e) => {
                    // Another driver wrote this step's record. If it has taken the rollout
                    // over, stop; if not (it lost the claim to us mid-step), it stops at its
                    // next write, so do the step again from its record.
                    let owner = self.rollout(&record.request.id).await?.map(|r| r.driver);
                    conflicts += 1;
                    if owner.as_deref() != Some(self.id.as_str()) || conflicts > 3 {
                        return Err(e);
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            conflicts = 0;
            done_here += 1;
            record.cursor += 1;
            if !ok && record.state == RolloutState::RollingBack {
                // Go on undoing the rest: each rollback is independent of the others.
                record.rollback_failures += 1;
            } else if !ok {
                record.state = RolloutState::RollingBack;
                record.failed_ms = Some(now_ms());
                let undo = rollback_steps(&record.steps[..record.cursor as usize]);
                record.steps.truncate(record.cursor as usize);
                let base = record.steps.len() as u32;
                record
                    .steps
                    .extend(undo.into_iter().enumerate().map(|(i, mut s)| {
                        s.seq = base + i as u32;
                        s
                    }));
            }
            revision = self.save(&record, revision).await?;
        }
    }

    /// Creates the rollout's record, or takes over an existing one.
    async fn claim(&self, request: &RolloutRequest) -> Result<(RolloutRecord, Revision)> {
        let col = &self.records.rollouts;
        if let Some((mut record, rev)) =
            self.store.get_as::<RolloutRecord>(col, &request.id).await?
        {
            record.driver = self.id.clone();
            let rev = self.save(&record, rev).await?;
            return Ok((record, rev));
        }
        let steps = plan_steps(request, &self.targets)?;
        let commit_ms = request
            .units
            .values()
            .filter_map(|s| s.labels.get(COMMIT_TIME_LABEL))
            .filter_map(|v| v.parse::<u64>().ok())
            .min()
            .map(|s| s * 1000);
        let record = RolloutRecord {
            request: request.clone(),
            steps,
            cursor: 0,
            state: RolloutState::Running,
            driver: self.id.clone(),
            created_ms: now_ms(),
            commit_ms,
            failed_ms: None,
            finished_ms: None,
            rollback_failures: 0,
        };
        let rev = self
            .store
            .put_as(col, &request.id, &record, PutDocumentOptions::create())
            .await?;
        Ok((record, rev))
    }

    async fn save(&self, record: &RolloutRecord, revision: Revision) -> Result<Revision> {
        self.store
            .put_as(
                &self.records.rollouts,
                &record.request.id,
                record,
                PutDocumentOptions::if_revision(revision),
            )
            .await
    }

    /// Does one step and records it; `Ok(false)` if it failed (the rollout rolls back).
    async fn do_step(&self, record: &RolloutRecord, step: &PlannedStep) -> Result<bool> {
        let req = &record.request;
        let id = step_id(&req.id, step.seq);
        let col = &self.records.steps;
        let target = self.targets.get(&step.region);
        let existing = self.store.get_as::<StepRecord>(col, &id).await?;
        // A step started before a crash keeps its first start and its previous spec.
        let (mut rec, rev) = match existing {
            // Finished before the cursor moved (a crash between the two writes): its outcome
            // stands, the step is not done again.
            Some((rec, _)) if rec.outcome != StepOutcome::Started => {
                return Ok(rec.outcome != StepOutcome::Failed);
            }
            Some((rec, rev)) => (rec, Some(rev)),
            None => {
                let previous = match (step.kind, target) {
                    (StepKind::Apply | StepKind::Remove, Some(t)) => {
                        let name = &req.units[&step.unit].name;
                        match t.get(name).await {
                            Ok(s) => s.map(|s| s.spec),
                            Err(e) => return self.fail_new(record, step, &id, e).await,
                        }
                    }
                    _ => None,
                };
                let rec = StepRecord {
                    rollout: req.id.clone(),
                    service: req.service.clone(),
                    step: step.clone(),
                    version: req.version.clone(),
                    actor: req.actor.clone(),
                    cloud: target
                        .map(|t| t.info().location.provider)
                        .unwrap_or_default(),
                    started_ms: now_ms(),
                    finished_ms: None,
                    outcome: StepOutcome::Started,
                    detail: String::new(),
                    previous,
                };
                (rec, None)
            }
        };
        let rev = match rev {
            Some(rev) => rev,
            None => {
                self.store
                    .put_as(col, &id, &rec, PutDocumentOptions::create())
                    .await?
            }
        };
        let result = self.act(record, step, &rec).await;
        rec.finished_ms = Some(now_ms());
        let ok = match result {
            Ok(skipped) => {
                rec.outcome = if skipped {
                    StepOutcome::Skipped
                } else {
                    StepOutcome::Ok
                };
                if skipped {
                    rec.detail = format!("region `{}` is lost", step.region);
                }
                true
            }
            Err(e) => {
                rec.outcome = StepOutcome::Failed;
                rec.detail = e.to_string();
                false
            }
        };
        self.store
            .put_as(col, &id, &rec, PutDocumentOptions::if_revision(rev))
            .await?;
        Ok(ok)
    }

    /// Records a step that failed before it could start.
    async fn fail_new(
        &self,
        record: &RolloutRecord,
        step: &PlannedStep,
        id: &str,
        error: Error,
    ) -> Result<bool> {
        let req = &record.request;
        let now = now_ms();
        let rec = StepRecord {
            rollout: req.id.clone(),
            service: req.service.clone(),
            step: step.clone(),
            version: req.version.clone(),
            actor: req.actor.clone(),
            cloud: self
                .targets
                .get(&step.region)
                .map(|t| t.info().location.provider)
                .unwrap_or_default(),
            started_ms: now,
            finished_ms: Some(now),
            outcome: StepOutcome::Failed,
            detail: error.to_string(),
            previous: None,
        };
        self.store
            .put_as(&self.records.steps, id, &rec, PutDocumentOptions::create())
            .await?;
        Ok(false)
    }

    /// Acts; `Ok(true)` if skipped.
    async fn act(
        &self,
        record: &RolloutRecord,
        step: &PlannedStep,
        rec: &StepRecord,
    ) -> Result<bool> {
        let req = &record.request;
        let target = |region: &str| {
            self.targets.get(region).ok_or_else(|| {
                Error::invalid(BACKEND, format!("region `{region}` has no compute backend"))
            })
        };
        match step.kind {
            StepKind::Apply => {
                let spec = req.units[&step.unit].clone().with_replicas(step.replicas);
                target(&step.region)?.apply(spec).await?;
                Ok(false)
            }
            StepKind::Remove => match self.targets.get(&step.region) {
                None => Ok(true),
                Some(t) => {
                    t.delete(&req.units[&step.unit].name).await?;
                    Ok(false)
                }
            },
            StepKind::Gate => self.gate(req, step.stage).await.map(|()| false),
            StepKind::Rollback => {
                let undone = step
                    .undoes
                    .ok_or_else(|| Error::internal(BACKEND, "rollback step without a target"))?;
                let Some((orig, _)) = self
                    .store
                    .get_as::<StepRecord>(&self.records.steps, &step_id(&req.id, undone))
                    .await?
                else {
                    return Ok(true);
                };
                let Some(t) = self.targets.get(&step.region) else {
                    return Ok(true);
                };
                let _ = rec;
                match orig.previous {
                    Some(spec) => {
                        // Restored means the previous version runs again, not merely that it
                        // was asked for: the time-to-restore measure ends when this step does.
                        let name = spec.name.clone();
                        t.apply(spec).await?;
                        t.wait_ready(&name, req.gate.ready_timeout).await?;
                    }
                    None => {
                        t.delete(&req.units[&step.unit].name).await?;
                    }
                }
                Ok(false)
            }
        }
    }

    /// The gate of one stage: readiness, then the error budget over the watch.
    async fn gate(&self, req: &RolloutRequest, stage: u32) -> Result<()> {
        let regions = &req.stages[stage as usize];
        let mut watched = Vec::new();
        for region in regions {
            let Some(t) = self.targets.get(region) else {
                continue;
            };
            for (unit, spec) in &req.units {
                if req.placement.count(unit, region) == 0 {
                    continue;
                }
                let status = t.wait_ready(&spec.name, req.gate.ready_timeout).await?;
                let restarts: u32 = status.instances.iter().map(|i| i.restarts).sum();
                watched.push((t.clone(), spec.name.clone(), region.clone(), restarts));
            }
        }
        tokio::time::sleep(req.gate.observe).await;
        let mut spent = 0u32;
        for (t, name, region, before) in &watched {
            let status = t
                .get(name)
                .await?
                .ok_or_else(|| Error::not_found(BACKEND, format!("workload `{name}` vanished")))?;
            if status.phase == Phase::Failed {
                return Err(Error::new(
                    ErrorKind::Internal,
                    BACKEND,
                    format!("workload `{name}` in `{region}` failed"),
                ));
            }
            let now: u32 = status.instances.iter().map(|i| i.restarts).sum();
            spent += now.saturating_sub(*before);
        }
        if spent > req.gate.error_budget {
            return Err(Error::new(
                ErrorKind::Internal,
                BACKEND,
                format!(
                    "{spent} restarts while watched, over the error budget of {}",
                    req.gate.error_budget
                ),
            ));
        }
        Ok(())
    }
}

/// A conditional write lost to another writer.
fn is_conflict(e: &Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::AlreadyExists | ErrorKind::PreconditionFailed
    )
}

/// The forward steps of a request.
fn plan_steps(
    req: &RolloutRequest,
    targets: &BTreeMap<String, Arc<dyn Compute>>,
) -> Result<Vec<PlannedStep>> {
    cloud_abstraction::validate::resource_name(BACKEND, "rollout id", &req.id)?;
    let mut staged = BTreeSet::new();
    for region in req.stages.iter().flatten() {
        if !staged.insert(region.clone()) {
            return Err(Error::invalid(
                BACKEND,
                format!("region `{region}` is in two stages"),
            ));
        }
    }
    for unit in req.placement.units.keys() {
        if !req.units.contains_key(unit) {
            return Err(Error::invalid(
                BACKEND,
                format!("unit `{unit}` has no spec"),
            ));
        }
    }
    let mut regions = req.placement.regions();
    if let Some(prev) = &req.previous {
        regions.extend(prev.regions());
    }
    if let Some(r) = regions.iter().find(|r| !staged.contains(*r)) {
        return Err(Error::invalid(
            BACKEND,
            format!("region `{r}` is in no stage"),
        ));
    }
    let mut steps = Vec::new();
    for (stage, stage_regions) in req.stages.iter().enumerate() {
        let before = steps.len();
        for region in stage_regions {
            for unit in req.units.keys() {
                let want = req.placement.count(unit, region);
                let had = req.previous.as_ref().map(|p| p.count(unit, region));
                if had == Some(want) || (had.is_none() && want == 0) {
                    continue;
                }
                let kind = if want == 0 {
                    StepKind::Remove
                } else {
                    if !targets.contains_key(region) {
                        return Err(Error::invalid(
                            BACKEND,
                            format!(
                                "unit `{unit}` is placed in `{region}`, which has no compute backend"
                            ),
                        ));
                    }
                    StepKind::Apply
                };
                steps.push(PlannedStep {
                    seq: steps.len() as u32,
                    stage: stage as u32,
                    kind,
                    unit: unit.clone(),
                    region: region.clone(),
                    replicas: want,
                    undoes: None,
                });
            }
        }
        if steps.len() > before {
            steps.push(PlannedStep {
                seq: steps.len() as u32,
                stage: stage as u32,
                kind: StepKind::Gate,
                unit: String::new(),
                region: String::new(),
                replicas: 0,
                undoes: None,
            });
        }
    }
    Ok(steps)
}

/// The rollbacks of the applies and removes in `done`, latest first (seq set by the caller).
fn rollback_steps(done: &[PlannedStep]) -> Vec<PlannedStep> {
    done.iter()
        .rev()
        .filter(|s| matches!(s.kind, StepKind::Apply | StepKind::Remove))
        .map(|s| PlannedStep {
            seq: 0,
            stage: s.stage,
            kind: StepKind::Rollback,
            unit: s.unit.clone(),
            region: s.region.clone(),
            replicas: 0,
            undoes: Some(s.seq),
        })
        .collect()
}
