//! Delivery metrics (the four DORA measures) from rollout records, per service and cloud.
//!
//! Over a window `[from_ms, to_ms)` of unix milliseconds, a rollout counts if it ended
//! (`finished_ms`) in the window; it counts for a cloud if one of its apply or remove steps
//! ran there (a step record whose `cloud` is that cloud and whose outcome is not
//! `skipped`). For each (service, cloud):
//!
//! - **deployment frequency**: succeeded rollouts per day of the window;
//! - **lead time for changes**: median of `finished_ms - commit_ms` over the succeeded
//!   rollouts that carry a commit time ([`COMMIT_TIME_LABEL`](super::COMMIT_TIME_LABEL));
//! - **change failure rate**: failed rollouts (rolled back, or whose rollback failed) over
//!   all ended rollouts;
//! - **time to restore**: median, over the failed rollouts whose rollback steps in that
//!   cloud all succeeded (a failed rollback has restored nothing there), of the time from
//!   the first step of the rollout in that cloud starting (the bad version reaching it) to
//!   the last rollback step there finishing (the previous version back).
//!
//! Medians rather than means: one stuck rollout should not hide the usual figure (DORA
//! reports medians too). A measure without data is `None`, never 0.

use super::{Records, RolloutRecord, RolloutState, StepKind, StepOutcome, StepRecord};
use cloud_abstraction::Result;
use cloud_abstraction::database::{DocumentStore, DocumentStoreExt, Query};
use std::collections::BTreeMap;
use std::fmt::Write as _;

const DAY_MS: f64 = 86_400_000.0;

/// The four measures of one service in one cloud.
#[derive(Debug, Clone, PartialEq)]
pub struct DoraRow {
    /// The service.
    pub service: String,
    /// The cloud (a backend's provider).
    pub cloud: String,
    /// Succeeded rollouts in the window.
    pub deployments: u32,
    /// Failed rollouts in the window (rolled back or rollback failed).
    pub failures: u32,
    /// Succeeded rollouts per day.
    pub deployments_per_day: f64,
    /// Median lead time for changes, in milliseconds.
    pub lead_time_ms: Option<f64>,
    /// Failed over ended rollouts.
    pub change_failure_rate: Option<f64>,
    /// Median time to restore, in milliseconds.
    pub time_to_restore_ms: Option<f64>,
}

/// The median; `None` for no values.
pub fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}

/// The measures per (service, cloud), sorted by service then cloud.
pub fn dora(
    rollouts: &[RolloutRecord],
    steps: &[StepRecord],
    from_ms: u64,
    to_ms: u64,
) -> Vec<DoraRow> {
    let days = (to_ms.saturating_sub(from_ms) as f64 / DAY_MS).max(f64::MIN_POSITIVE);
    // rollout id -> cloud -> its steps there
    let mut by_rollout: BTreeMap<&str, BTreeMap<&str, Vec<&StepRecord>>> = BTreeMap::new();
    for s in steps {
        if s.cloud.is_empty() || s.outcome == StepOutcome::Skipped {
            continue;
        }
        by_rollout
            .entry(&s.rollout)
            .or_default()
            .entry(&s.cloud)
            .or_default()
            .push(s);
    }
    #[derive(Default)]
    struct Acc {
        ok: u32,
        failed: u32,
        lead: Vec<f64>,
        restore: Vec<f64>,
    }
    let mut acc: BTreeMap<(String, String), Acc> = BTreeMap::new();
    for r in rollouts {
        let Some(end) = r.finished_ms else { continue };
        if end < from_ms || end >= to_ms {
            continue;
        }
        let Some(clouds) = by_rollout.get(r.request.id.as_str()) else {
            continue;
        };
        for (cloud, cloud_steps) in clouds {
            let changed = cloud_steps
                .iter()
                .any(|s| matches!(s.step.kind, StepKind::Apply | StepKind::Remove));
            if !changed {
                continue;
            }
            let a = acc
                .entry((r.request.service.clone(), cloud.to_string()))
                .or_default();
            match r.state {
                RolloutState::Succeeded => {
                    a.ok += 1;
                    if let Some(c) = r.commit_ms {
                        a.lead.push(end.saturating_sub(c) as f64);
                    }
                }
                RolloutState::RolledBack | RolloutState::RollbackFailed => {
                    a.failed += 1;
                    let rollbacks = cloud_steps
                        .iter()
                        .filter(|s| s.step.kind == StepKind::Rollback);
                    // Restored in this cloud only if every rollback there succeeded.
                    if rollbacks.clone().any(|s| s.outcome != StepOutcome::Ok) {
                        continue;
                    }
                    let start = cloud_steps.iter().map(|s| s.started_ms).min();
                    let restored = rollbacks.filter_map(|s| s.finished_ms).max();
                    if let (Some(s), Some(e)) = (start, restored) {
                        a.restore.push(e.saturating_sub(s) as f64);
                    }
                }
                _ => {}
            }
        }
    }
    acc.into_iter()
        .map(|((service, cloud), a)| DoraRow {
            service,
            cloud,
            deployments: a.ok,
            failures: a.failed,
            deployments_per_day: f64::from(a.ok) / days,
            lead_time_ms: median(a.lead),
            change_failure_rate: (a.ok + a.failed > 0)
                .then(|| f64::from(a.failed) / f64::from(a.ok + a.failed)),
            time_to_restore_ms: median(a.restore),
        })
        .collect()
}

/// Reads every rollout and step record of `store`.
pub async fn load(
    store: &dyn DocumentStore,
    records: &Records,
) -> Result<(Vec<RolloutRecord>, Vec<StepRecord>)> {
    let decode = |what: &str, e: serde_json::Error| {
        cloud_abstraction::Error::internal("deploy", format!("bad {what} record: {e}"))
    };
    let rollouts = store
        .query_all(&records.rollouts, Query::all())
        .await?
        .into_iter()
        .map(|d| serde_json::from_value(d.value).map_err(|e| decode("rollout", e)))
        .collect::<Result<_>>()?;
    let steps = store
        .query_all(&records.steps, Query::all())
        .await?
        .into_iter()
        .map(|d| serde_json::from_value(d.value).map_err(|e| decode("step", e)))
        .collect::<Result<_>>()?;
    Ok((rollouts, steps))
}

/// A plain-text table of the rows (`-` for a measure without data; durations under 10 s
/// in milliseconds, others in seconds).
pub fn table(rows: &[DoraRow]) -> String {
    let duration = |v: Option<f64>| match v {
        None => "-".to_string(),
        Some(ms) if ms < 10_000.0 => format!("{ms:.0}ms"),
        Some(ms) => format!("{:.1}s", ms / 1000.0),
    };
    let mut out = format!(
        "{:<12} {:<8} {:>7} {:>8} {:>9} {:>12} {:>8} {:>12}\n",
        "service", "cloud", "deploys", "failures", "per_day", "lead_time", "cfr", "restore"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<12} {:<8} {:>7} {:>8} {:>9.2} {:>12} {:>8} {:>12}",
            r.service,
            r.cloud,
            r.deployments,
            r.failures,
            r.deployments_per_day,
            duration(r.lead_time_ms),
            r.change_failure_rate
                .map_or("-".to_string(), |v| format!("{:.1}%", v * 100.0)),
            duration(r.time_to_restore_ms),
        );
    }
    out
}
