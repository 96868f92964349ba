//! [`ProcessCompute`]: every replica is a real child process on this machine.
//!
//! ```no_run
//! # async fn demo() -> cloud_abstraction::Result<()> {
//! use cloud_abstraction::compute::{Compute, ComputeExt, WorkloadSpec};
//! use paas_components::compute::ProcessCompute;
//! use std::time::Duration;
//!
//! let compute = ProcessCompute::new();
//! let spec = WorkloadSpec::command("ticker", "sh")
//!     .with_args(["-c", "while true; do echo tick; sleep 1; done"])
//!     .with_replicas(2);
//! compute.apply(spec).await?;
//! compute.wait_ready("ticker", Duration::from_secs(10)).await?;
//! compute.delete("ticker").await?;
//! # Ok(())
//! # }
//! ```
//!
//! - The command runs with `tokio::process`, with the spec's args, and the environment of this
//!   process plus the spec's env (which wins). Stdin is closed; stdout and stderr are captured
//!   line by line into the workload's log (lines longer than 16 KiB are split).
//! - Each replica runs in its own process group, so that stopping it also ends the processes
//!   it started. Stopping sends SIGTERM to the group, then SIGKILL after a grace period of
//!   5 s; when the main process of a replica exits, what is left of its group is killed (as a
//!   container runtime would).
//! - `delete` returns only after the replicas' processes have ended and been reaped. Dropping
//!   the last handle of a `ProcessCompute` kills every process group it started at once
//!   (SIGKILL); nothing is left running.
//! - Instance ids are the OS process ids (a restart gets a new one).
//! - Ports: nothing is published or proxied. A spec's ports are reported as endpoints
//!   `127.0.0.1:<port>` and passed to the program as `PORT` (the first port) and
//!   `PORT_<NAME>` (upper-cased, `-` as `_`); **the program must bind them itself**. All
//!   replicas get the same ports, so more than one replica can only share a port if the
//!   program uses `SO_REUSEPORT`.
//! - Not supported (`Unsupported`): images, and cpu/memory limits (no cgroups here).
//! - Unix only (process groups and signals).

use super::engine::{Attempt, Engine, RunContext, Runner, lock};
use super::spec::port_env;
use async_trait::async_trait;
use cloud_abstraction::compute::{
    Compute, ComputeCapabilities, LogOptions, LogPage, LogStream, WorkloadSpec, WorkloadStatus,
};
use cloud_abstraction::{BackendInfo, Location, Result};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::collections::{BTreeMap, HashSet};
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::sync::oneshot;

const BACKEND: &str = "process";
/// Time between SIGTERM and SIGKILL when a replica is stopped.
const GRACE: Duration = Duration::from_secs(5);
/// Longest log line; longer output without a line break is split.
const MAX_LINE: u64 = 16 * 1024;
/// How long the log readers may take to drain after the program exited.
const DRAIN: Duration = Duration::from_secs(2);

/// Local processes as a [`Compute`] backend (`"process"`): see the [module docs](self).
#[derive(Clone)]
pub struct ProcessCompute {
    engine: Arc<Engine<ProcessRunner>>,
    location: Location,
}

impl ProcessCompute {
    /// A backend at [`Location::local`] with no workloads.
    pub fn new() -> Self {
        let mut caps = ComputeCapabilities::minimal();
        caps.commands = true;
        caps.logs = true;
        caps.scale = true;
        caps.ports = true;
        Self {
            engine: Arc::new(Engine::new(BACKEND, caps, ProcessRunner::default())),
            location: Location::local(),
        }
    }

    /// The same backend, reporting `location` (e.g. the region of the machine it runs on).
    pub fn with_location(mut self, location: Location) -> Self {
        self.location = location;
        self
    }
}

impl Default for ProcessCompute {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for ProcessCompute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessCompute")
            .field("location", &self.location)
            .field("process_groups", &lock(&self.engine.runner().groups).len())
            .finish()
    }
}

// The operation spans (backend, workload; failures as debug events) are on the shared
// engine's methods, which these delegate to.
#[async_trait]
impl Compute for ProcessCompute {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            backend: BACKEND.to_string(),
            location: self.location.clone(),
        }
    }

    fn capabilities(&self) -> ComputeCapabilities {
        self.engine.capabilities()
    }

    async fn apply(&self, spec: WorkloadSpec) -> Result<WorkloadStatus> {
        self.engine.apply(spec).await
    }

    async fn get(&self, name: &str) -> Result<Option<WorkloadStatus>> {
        self.engine.get(name).await
    }

    async fn list(&self, selector: &BTreeMap<String, String>) -> Result<Vec<WorkloadStatus>> {
        self.engine.list(selector).await
    }

    async fn scale(&self, name: &str, replicas: u32) -> Result<WorkloadStatus> {
        self.engine.scale(name, replicas).await
    }

    async fn delete(&self, name: &str) -> Result<bool> {
        self.engine.delete(name).await
    }

    async fn logs(&self, name: &str, options: LogOptions) -> Result<LogPage> {
        self.engine.logs(name, options).await
    }
}

/// Runs replicas as child processes and remembers their process groups.
#[derive(Debug, Default)]
struct ProcessRunner {
    /// The process groups (= leader pids) of the runs alive now.
    groups: Arc<StdMutex<HashSet<i32>>>,
}

/// One run's process group: registered while alive, killed when dropped (so that even an
/// aborted supervisor leaves nothing behind).
struct Group {
    pgid: i32,
    groups: Arc<StdMutex<HashSet<i32>>>,
}

impl Group {
    fn new(pgid: i32, groups: &Arc<StdMutex<HashSet<i32>>>) -> Self {
        lock(groups).insert(pgid);
        Self {
            pgid,
            groups: Arc::clone(groups),
        }
    }

    fn signal(&self, signal: Signal) {
        // ESRCH (the group is already gone) is the expected outcome after an exit.
        let _ = killpg(Pid::from_raw(self.pgid), signal);
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
        lock(&self.groups).remove(&self.pgid);
    }
}

fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Copies a stream into the log ring, line by line.
async fn pump<Rd>(reader: Rd, ctx_logs: Arc<super::engine::LogRing>, index: u32, stream: LogStream)
where
    Rd: AsyncRead + Unpin,
{
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match (&mut reader)
            .take(MAX_LINE)
            .read_until(b'\n', &mut buf)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if buf.last() == Some(&b'\n') {
                    buf.pop();
                    if buf.last() == Some(&b'\r') {
                        buf.pop();
                    }
                }
                ctx_logs.push(index, stream, String::from_utf8_lossy(&buf).into_owned());
            }
        }
    }
}

#[async_trait]
impl Runner for ProcessRunner {
    async fn run(&self, ctx: &RunContext, stop: &mut oneshot::Receiver<()>) -> Attempt {
        let spec = &ctx.spec;
        let Some(program) = spec.command.as_deref() else {
            return Attempt::CannotStart("the spec has no command".to_string());
        };
        let mut command = tokio::process::Command::new(program);
        command
            .args(&spec.args)
            .envs(port_env(spec))
            .envs(&spec.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => return Attempt::CannotStart(format!("cannot start `{program}`: {e}")),
        };
        let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) else {
            return Attempt::CannotStart(format!("`{program}` has no process id"));
        };
        let group = Group::new(pid, &self.groups);
        let mut pumps = Vec::new();
        if let Some(out) = child.stdout.take() {
            pumps.push(tokio::spawn(pump(
                out,
                Arc::clone(&ctx.logs),
                ctx.index,
                LogStream::Stdout,
            )));
        }
        if let Some(err) = child.stderr.take() {
            pumps.push(tokio::spawn(pump(
                err,
                Arc::clone(&ctx.logs),
                ctx.index,
                LogStream::Stderr,
            )));
        }
        ctx.started(pid.to_string());
        tracing::debug!(pid, "replica started");

        tokio::select! {
            status = child.wait() => {
                // What the program left behind in its group goes with it; then the pipes close.
                drop(group);
                for mut p in pumps {
                    if tokio::time::timeout(DRAIN, &mut p).await.is_err() {
                        p.abort();
                    }
                }
                match status {
                    Ok(status) => Attempt::Exited(exit_code(status)),
                    Err(e) => Attempt::CannotStart(format!("cannot wait for `{program}`: {e}")),
                }
            }
            _ = &mut *stop => {
                group.signal(Signal::SIGTERM);
                if tokio::time::timeout(GRACE, child.wait()).await.is_err() {
                    group.signal(Signal::SIGKILL);
                    let _ = child.wait().await;
                }
                drop(group);
                for p in pumps {
                    p.abort();
                }
                tracing::debug!(pid, "replica stopped");
                Attempt::Stopped
            }
        }
    }

    fn endpoint(&self, _spec: &WorkloadSpec, _index: u32, port: u16) -> String {
        format!("127.0.0.1:{port}")
    }

    fn shutdown(&self) {
        for pgid in lock(&self.groups).iter() {
            let _ = killpg(Pid::from_raw(*pgid), Signal::SIGKILL);
        }
    }
}
