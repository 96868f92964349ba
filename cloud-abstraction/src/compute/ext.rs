use super::{Compute, Phase, WorkloadStatus};
use crate::{Error, ErrorKind, Result};
use async_trait::async_trait;
use std::time::{Duration, Instant};

/// Conveniences for every [`Compute`] backend.
#[async_trait]
pub trait ComputeExt: Compute {
    /// Polls until every desired replica is ready (or, for one-shot jobs, the workload has
    /// succeeded). Fails with [`DeadlineExceeded`](ErrorKind::DeadlineExceeded) after
    /// `timeout`, and with [`Internal`](ErrorKind::Internal) if the workload failed.
    async fn wait_ready(&self, name: &str, timeout: Duration) -> Result<WorkloadStatus> {
        // A timeout too large to add to the clock means "no deadline" in practice.
        let deadline = Instant::now().checked_add(timeout);
        loop {
            let status = self.get(name).await?.ok_or_else(|| {
                Error::not_found(self.info().backend, format!("workload `{name}`"))
            })?;
            match status.phase {
                Phase::Running | Phase::Succeeded | Phase::Stopped
                    if status.ready_replicas >= status.desired_replicas =>
                {
                    return Ok(status);
                }
                Phase::Failed => {
                    return Err(Error::new(
                        ErrorKind::Internal,
                        self.info().backend,
                        format!("workload `{name}` failed"),
                    ));
                }
                _ => {}
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::new(
                    ErrorKind::DeadlineExceeded,
                    self.info().backend,
                    format!(
                        "workload `{name}` not ready after {timeout:?} ({}/{} replicas)",
                        status.ready_replicas, status.desired_replicas
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls until the workload reaches `phase` or `timeout` passes.
    async fn wait_phase(
        &self,
        name: &str,
        phase: Phase,
        timeout: Duration,
    ) -> Result<WorkloadStatus> {
        // A timeout too large to add to the clock means "no deadline" in practice.
        let deadline = Instant::now().checked_add(timeout);
        loop {
            let status = self.get(name).await?.ok_or_else(|| {
                Error::not_found(self.info().backend, format!("workload `{name}`"))
            })?;
            if status.phase == phase {
                return Ok(status);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::new(
                    ErrorKind::DeadlineExceeded,
                    self.info().backend,
                    format!(
                        "workload `{name}` is {:?}, not {phase:?}, after {timeout:?}",
                        status.phase
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl<T: Compute + ?Sized> ComputeExt for T {}
