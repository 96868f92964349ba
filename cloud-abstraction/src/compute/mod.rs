//! Compute: the [`Compute`] trait of desired-state workloads.
//!
//! A workload is declared by a [`WorkloadSpec`]; [`Compute::apply`] makes reality match it
//! (create, or update in place), and is idempotent: applying the same spec twice changes
//! nothing and restarts nothing. Status reports a [`Phase`], desired and ready replicas, and
//! one [`Instance`] per replica with its endpoints.

mod ext;
pub mod service;

pub use ext::ComputeExt;

use crate::{BackendInfo, Result};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Debug;

/// What a compute backend can do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ComputeCapabilities {
    /// Runs container images ([`WorkloadSpec::image`]).
    pub images: bool,
    /// Runs host commands ([`WorkloadSpec::command`] without an image).
    pub commands: bool,
    /// Logs are kept and readable ([`Compute::logs`]).
    pub logs: bool,
    /// Replica count can change in place ([`Compute::scale`]).
    pub scale: bool,
    /// CPU and memory limits are enforced.
    pub resource_limits: bool,
    /// Ports are published and reported as endpoints.
    pub ports: bool,
    /// This backend only simulates workloads: nothing really runs.
    pub simulated: bool,
}

impl ComputeCapabilities {
    /// Nothing claimed. The struct is `#[non_exhaustive]`, so a backend in another crate
    /// starts from this and sets the fields it supports.
    pub fn minimal() -> Self {
        Self {
            images: false,
            commands: false,
            logs: false,
            scale: false,
            resource_limits: false,
            ports: false,
            simulated: false,
        }
    }
}

/// The largest replica count a portable spec may ask for; backends reject larger counts with
/// [`InvalidArgument`](crate::ErrorKind::InvalidArgument) (a typo such as `10000` should not
/// fork ten thousand processes).
pub const MAX_REPLICAS: u32 = 1000;

/// When an instance that exited is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartPolicy {
    /// Always (a long-running service).
    #[default]
    Always,
    /// Only after a non-zero exit (a job that retries).
    OnFailure,
    /// Never (a one-shot job).
    Never,
}

/// A port a workload listens on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    /// A name, e.g. `"http"`.
    pub name: String,
    /// The port inside the workload.
    pub port: u16,
}

/// The desired state of a workload.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct WorkloadSpec {
    /// Unique name (see [`validate::resource_name`](crate::validate::resource_name)).
    pub name: String,
    /// Container image, for backends with the `images` capability.
    #[serde(default)]
    pub image: Option<String>,
    /// Program to run (with an image: overrides its entry point).
    #[serde(default)]
    pub command: Option<String>,
    /// Arguments of the program.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// CPU limit in thousandths of a core.
    #[serde(default)]
    pub cpu_millis: Option<u32>,
    /// Memory limit in MiB.
    #[serde(default)]
    pub memory_mib: Option<u64>,
    /// Number of instances.
    pub replicas: u32,
    /// Ports the workload listens on.
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    /// Labels, for [`Compute::list`] selection.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// What happens when an instance exits.
    #[serde(default)]
    pub restart: RestartPolicy,
}

impl WorkloadSpec {
    /// A command workload with one replica.
    pub fn command(name: impl Into<String>, command: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            command: Some(command.into()),
            replicas: 1,
            ..Self::default()
        }
    }

    /// An image workload with one replica.
    pub fn image(name: impl Into<String>, image: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            image: Some(image.into()),
            replicas: 1,
            ..Self::default()
        }
    }

    /// Sets the arguments.
    pub fn with_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }

    /// Sets an environment variable.
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Sets a label.
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Sets the replica count.
    pub fn with_replicas(mut self, replicas: u32) -> Self {
        self.replicas = replicas;
        self
    }

    /// Sets the restart policy.
    pub fn with_restart(mut self, restart: RestartPolicy) -> Self {
        self.restart = restart;
        self
    }
}

/// The phase of a workload or of one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Being created or started.
    Pending,
    /// Running (for a workload: every desired instance is running).
    Running,
    /// Finished successfully (exit code 0) and not restarted.
    Succeeded,
    /// Finished with an error and not restarted (or cannot start).
    Failed,
    /// Scaled to zero.
    Stopped,
}

/// One instance (replica) of a workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Backend id of the instance (process id, container id, ...).
    pub id: String,
    /// The replica index, 0-based.
    pub index: u32,
    /// The instance's phase.
    pub phase: Phase,
    /// How often it has been restarted.
    pub restarts: u32,
    /// Exit code of the last run, if it exited.
    pub exit_code: Option<i32>,
    /// Addresses where its ports can be reached, by port name (e.g. `"http"` -> `"127.0.0.1:8080"`).
    pub endpoints: BTreeMap<String, String>,
}

/// The observed state of a workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadStatus {
    /// The workload's name.
    pub name: String,
    /// The workload's phase (see [`Phase`]).
    pub phase: Phase,
    /// Replicas asked for.
    pub desired_replicas: u32,
    /// Replicas running (or succeeded, for one-shot jobs).
    pub ready_replicas: u32,
    /// Incremented whenever the spec changes.
    pub generation: u64,
    /// The instances.
    pub instances: Vec<Instance>,
    /// The spec in force.
    pub spec: WorkloadSpec,
}

/// Which stream a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One line of a workload's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Position in the workload's log; strictly increasing.
    pub sequence: u64,
    /// The replica index that wrote it.
    pub instance: u32,
    /// stdout or stderr.
    pub stream: LogStream,
    /// The text, without the line break.
    pub line: String,
}

/// Options of a log read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogOptions {
    /// Only lines with a sequence number at or after this.
    pub since: u64,
    /// At most this many lines (`None`: all available).
    pub limit: Option<usize>,
}

/// A page of log lines.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogPage {
    /// The lines, in sequence order.
    pub lines: Vec<LogLine>,
    /// The `since` to pass for the lines after these.
    pub next_since: u64,
}

/// A desired-state compute backend: the small core every backend implements.
#[async_trait]
pub trait Compute: Debug + Send + Sync + 'static {
    /// The backend's name and location.
    fn info(&self) -> BackendInfo;

    /// What this backend supports.
    fn capabilities(&self) -> ComputeCapabilities;

    /// Creates the workload, or updates it to `spec` (idempotent).
    async fn apply(&self, spec: WorkloadSpec) -> Result<WorkloadStatus>;

    /// The workload's status; `None` if there is none of that name.
    async fn get(&self, name: &str) -> Result<Option<WorkloadStatus>>;

    /// Workloads whose labels include all of `selector`, by name.
    async fn list(&self, selector: &BTreeMap<String, String>) -> Result<Vec<WorkloadStatus>>;

    /// Changes the replica count.
    async fn scale(&self, name: &str, replicas: u32) -> Result<WorkloadStatus>;

    /// Stops and removes the workload; returns whether it existed.
    async fn delete(&self, name: &str) -> Result<bool>;

    /// Reads the workload's logs.
    async fn logs(&self, name: &str, options: LogOptions) -> Result<LogPage>;
}
