//! [`DockerCompute`]: every replica is a container of a Docker Engine, reached over its unix
//! socket.
//!
//! ```no_run
//! # async fn demo() -> cloud_abstraction::Result<()> {
//! use cloud_abstraction::compute::{Compute, ComputeExt, WorkloadSpec};
//! use paas_components::compute::DockerCompute;
//! use std::time::Duration;
//!
//! let compute = DockerCompute::connect("/var/run/docker.sock")
//!     .await?
//!     .with_default_image("busybox:latest");
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
//! URL: `docker://` (the socket `/var/run/docker.sock`), `docker:///path/to/docker.sock` or
//! `unix:///path/to/docker.sock`, with the optional parameter `default_image` (below) and the
//! location parameters. Only unix sockets: no TCP and no TLS (so no TLS stack is compiled in).
//! The API version is negotiated with the engine when connecting, so the engine must be up
//! then ([`Unavailable`](cloud_abstraction::ErrorKind::Unavailable) otherwise).
//!
//! # Storage layout: everything lives in the engine
//!
//! The handle keeps no state of its own, so a second handle (or a restarted process) sees the
//! same workloads, and nothing is lost when the handle goes away:
//!
//! - **The workload record** (its spec in force and generation) is a Docker *volume* named
//!   `multicloud-wl-<workload>-g<generation>`, with labels `io.multicloud.workload`,
//!   `io.multicloud.generation` and `io.multicloud.spec` (the spec as JSON). Why a volume: a
//!   workload scaled to zero has no container to carry its spec, container labels cannot be
//!   changed (a label change must not restart anything), and an unused volume costs nothing.
//!   A new generation writes a new volume, then removes the older ones, so a crash in between
//!   leaves the newer record in force (the highest generation wins; older ones are removed
//!   on the next write). Nothing is ever mounted from it. `docker volume prune --all` removes
//!   these records; do not run it on an engine this backend manages.
//! - **Replicas** are containers named `multicloud-<workload>-<index>-<program>`, labelled
//!   `io.multicloud.workload`, `io.multicloud.replica` (the index),
//!   `io.multicloud.generation` (the generation that created it) and `io.multicloud.program`
//!   (a hash of everything that defines the program: image, command, args, env, limits,
//!   ports, restart policy). The name makes a duplicate impossible: two creations of the
//!   same replica of the same program collide in the engine (409) instead of running twice.
//!
//! # Semantics
//!
//! The rules of the embedded backends (see [the module docs](super)): validation, generations,
//! phases, and what a spec change does (labels only: new generation, containers kept;
//! replicas only: scale in place; anything else: every container removed, then new ones
//! created). `apply`, `scale` and `delete` reconcile: they list the workload's containers
//! and create what is missing, start what was created but never started (and what exited
//! under `Always`, e.g. after a `docker stop`), and remove what is surplus or runs another
//! program. An unchanged spec whose containers are all there touches nothing. Reads (`get`,
//! `list`, `logs`) never change anything.
//!
//! - **Commands and images.** A spec with an image runs it; the spec's command replaces the
//!   image's entry point, and its args are the command line (without a command, args replace
//!   the image's `CMD`). A command spec without an image runs in the handle's *default
//!   image* (`default_image=` in the URL, [`DockerCompute::with_default_image`]), which must
//!   have the command (the conformance kit needs `sh`); without a default image, command
//!   specs are `Unsupported` and `capabilities().commands` is false. **Images are not
//!   pulled**: one that is not in the engine fails `apply` with
//!   [`PreconditionFailed`](cloud_abstraction::ErrorKind::PreconditionFailed) before
//!   anything is written (pull with the engine's own tools, which can authenticate).
//! - **Restart policies are Docker's own**: `Always` is `always`, `OnFailure` is
//!   `on-failure` (no retry limit) and `Never` is `no`; the engine restarts with its own
//!   back-off (100 ms doubling, reset after 10 s of running) and also across its own restarts.
//!   `restarts` is the engine's restart count. A running instance that was restarted reports
//!   the exit code of its last run from the engine's event log (which holds the engine's
//!   last 256 events; after that, `None`).
//! - **Ports** are published on `127.0.0.1` with a port the engine picks per replica (so
//!   replicas never collide); the endpoint is `127.0.0.1:<host port>`, reported while the
//!   container runs. The program gets `PORT` and `PORT_<NAME>` with the container port, as
//!   with the process backend.
//! - **Limits**: `cpu_millis` is Docker's `NanoCpus`, `memory_mib` its `Memory` (hard).
//! - **Stopping** is `docker rm -f`: removal (delete, replacement, scale-down) kills at once,
//!   with no grace period. The engine itself stops them with a 5 s grace when it shuts down.
//! - **Logs** are the engine's (the `json-file` or `local` log driver must be in use): every
//!   line of every container of the workload, across restarts, merged in time order. A line's
//!   `sequence` is its engine timestamp in nanoseconds since the epoch (one more than the
//!   previous line's when two are equal), so it is stable across reads and handles. Logs of
//!   a removed container (after a replacement or scale-down) are gone with it.
//!   [`DockerCompute::log_stream`] follows the logs as they are written.
//!
//! # Failure behaviour
//!
//! An engine that cannot be reached (stopped, restarting, socket gone), a timeout and an
//! engine-side 5xx are [`Unavailable`](cloud_abstraction::ErrorKind::Unavailable); the same
//! handle works again once the engine is back (each request opens a new connection). An
//! `apply` cut off half-way leaves some containers created and some not: applying the same
//! spec again converges (creates the missing ones, never a second copy of one). When the
//! engine restarts, it restarts `always` and `on-failure` containers itself; a `no` container
//! that was running is left exited (code 137 or 143) and reports `Failed`. Other engine
//! errors: 404 is `NotFound`, 409 `AlreadyExists`, 400 `InvalidArgument`, 401/403
//! `PermissionDenied`.
//!
//! Concurrent writers: one handle serializes its own `apply`/`scale`/`delete`; two handles
//! writing the same workload at once may both write a record (the higher generation wins)
//! but never duplicate a container.

use super::spec::{check_replicas, port_env, same_program, validate_spec, workload_phase};
use async_trait::async_trait;
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, ContainerSummary,
    HostConfig, PortBinding, RestartPolicy as DockerRestartPolicy, RestartPolicyNameEnum,
    VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptions, EventsOptions, ListContainersOptions, ListVolumesOptions, LogsOptions,
    RemoveContainerOptions, RemoveVolumeOptions,
};
use cloud_abstraction::compute::{
    Compute, ComputeCapabilities, Instance, LogLine, LogOptions, LogPage, LogStream, Phase,
    RestartPolicy, WorkloadSpec, WorkloadStatus,
};
use cloud_abstraction::{BackendInfo, Error, ErrorKind, Location, ResourceUrl, Result, validate};
use futures::stream::{BoxStream, StreamExt};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tokio::sync::Mutex;

const BACKEND: &str = "docker";
/// The socket of `docker://` without a path.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// Seconds a request to the engine may take (connecting included).
const REQUEST_TIMEOUT_SECS: u64 = 60;
/// Grace period the engine gives a container when it stops it (e.g. at its own shutdown).
const STOP_TIMEOUT_SECS: i64 = 5;

const LABEL_WORKLOAD: &str = "io.multicloud.workload";
const LABEL_GENERATION: &str = "io.multicloud.generation";
const LABEL_REPLICA: &str = "io.multicloud.replica";
const LABEL_PROGRAM: &str = "io.multicloud.program";
const LABEL_SPEC: &str = "io.multicloud.spec";

/// A Docker Engine as a [`Compute`] backend (`"docker"`): see the [module docs](self).
#[derive(Clone)]
pub struct DockerCompute {
    docker: Docker,
    socket: String,
    default_image: Option<String>,
    location: Location,
    /// Serializes this handle's writes (apply, scale, delete).
    writes: Arc<Mutex<()>>,
}

impl std::fmt::Debug for DockerCompute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerCompute")
            .field("socket", &self.socket)
            .field("default_image", &self.default_image)
            .field("location", &self.location)
            .finish()
    }
}

/// The workload record (see the module docs).
#[derive(Debug, Clone)]
struct Record {
    spec: WorkloadSpec,
    generation: u64,
}

impl DockerCompute {
    /// Connects to the engine at the unix socket `socket` (a path, or `unix://path`) and
    /// negotiates the API version; no default image, at [`Location::local`].
    pub async fn connect(socket: &str) -> Result<Self> {
        let path = socket.strip_prefix("unix://").unwrap_or(socket);
        if !path.starts_with('/') {
            return Err(Error::invalid(
                BACKEND,
                "the Docker socket must be an absolute path, e.g. /var/run/docker.sock",
            ));
        }
        let docker =
            Docker::connect_with_unix(path, REQUEST_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
                .map_err(|e| engine_error(e, "connecting"))?
                .negotiate_version()
                .await
                .map_err(|e| engine_error(e, "negotiating the API version"))?;
        Ok(Self {
            docker,
            socket: path.to_string(),
            default_image: None,
            location: Location::local(),
            writes: Arc::default(),
        })
    }

    /// Opens `docker://[/socket]?default_image=…` or `unix:///socket?…` (see the module
    /// docs); location parameters are honoured, any other parameter is an error.
    pub async fn from_url(url: &ResourceUrl) -> Result<Self> {
        if url.host().is_some_and(|h| !h.is_empty()) || url.port().is_some() {
            return Err(Error::invalid(
                BACKEND,
                "Docker URLs name a unix socket, not a host: docker:///var/run/docker.sock",
            ));
        }
        let mut default_image = None;
        for (name, value) in url.query_params() {
            match name.as_str() {
                "default_image" if !value.is_empty() => default_image = Some(value),
                "default_image" => {
                    return Err(Error::invalid(BACKEND, "`default_image` is empty"));
                }
                n if Location::URL_PARAMS.contains(&n) => {}
                // The name only: the value may be a secret.
                other => {
                    return Err(Error::invalid(
                        BACKEND,
                        format!(
                            "Docker URLs take default_image, provider, region and zone, not `{other}`"
                        ),
                    ));
                }
            }
        }
        let path = url.path();
        let socket = if path.is_empty() || path == "/" {
            DEFAULT_SOCKET.to_string()
        } else {
            path
        };
        let mut compute = Self::connect(&socket).await?;
        if let Some(location) = Location::from_url(url)? {
            compute.location = location;
        }
        compute.default_image = default_image;
        Ok(compute)
    }

    /// The same backend, running command specs without an image in `image` (which must be in
    /// the engine and have the command).
    pub fn with_default_image(mut self, image: impl Into<String>) -> Self {
        self.default_image = Some(image.into());
        self
    }

    /// The same backend, reporting `location`.
    pub fn with_location(mut self, location: Location) -> Self {
        self.location = location;
        self
    }

    /// The engine client, for what the trait does not cover.
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// Follows the logs of the workload's containers as they are now (containers created
    /// later are not followed), from `since` (a [`LogLine::sequence`], i.e. nanoseconds since
    /// the epoch; 0 for everything). Lines of different replicas come in the order they
    /// arrive; each line's `sequence` is its engine timestamp. The stream ends when every
    /// followed container has stopped, or with an `Unavailable` item if the engine goes away.
    pub async fn log_stream(
        &self,
        name: &str,
        since: u64,
    ) -> Result<BoxStream<'static, Result<LogLine>>> {
        self.check_name(name)?;
        if self.read_record(name).await?.is_none() {
            return Err(self.not_found(name));
        }
        let containers = self.containers(name).await?;
        let streams = containers.into_iter().map(|c| {
            let options = logs_options(since, true);
            let index = c.index;
            self.docker
                .logs(&c.id, Some(options))
                .filter_map(move |item| {
                    let line = match item {
                        Ok(output) => parse_log(output, index)
                            .filter(|l| l.sequence >= since)
                            .map(Ok),
                        Err(e) => Some(Err(engine_error(e, "following logs"))),
                    };
                    futures::future::ready(line)
                })
                .boxed()
        });
        Ok(futures::stream::select_all(streams).boxed())
    }

    fn capabilities_now(&self) -> ComputeCapabilities {
        let mut caps = ComputeCapabilities::minimal();
        caps.images = true;
        caps.commands = self.default_image.is_some();
        caps.logs = true;
        caps.scale = true;
        caps.resource_limits = true;
        caps.ports = true;
        caps
    }

    fn check_name(&self, name: &str) -> Result<()> {
        validate::resource_name(BACKEND, "workload", name)
    }

    fn not_found(&self, name: &str) -> Error {
        Error::not_found(BACKEND, format!("workload `{name}` not found"))
    }

    /// The image a spec runs in.
    fn image_of<'a>(&'a self, spec: &'a WorkloadSpec) -> Result<&'a str> {
        spec.image
            .as_deref()
            .or(self.default_image.as_deref())
            .ok_or_else(|| Error::unsupported(BACKEND, "running commands without a default image"))
    }

    // -- records -----------------------------------------------------------------------------

    /// Every record of `name` (all generations), or of every workload when `None`.
    async fn records(&self, name: Option<&str>) -> Result<Vec<(String, Record)>> {
        let filter = match name {
            Some(n) => format!("{LABEL_WORKLOAD}={n}"),
            None => LABEL_WORKLOAD.to_string(),
        };
        let options = ListVolumesOptions {
            filters: Some(HashMap::from([("label".to_string(), vec![filter])])),
        };
        let listed = self
            .docker
            .list_volumes(Some(options))
            .await
            .map_err(|e| engine_error(e, "listing workload records"))?;
        let mut out = Vec::new();
        for volume in listed.volumes.unwrap_or_default() {
            let labels = &volume.labels;
            let (Some(generation), Some(spec)) = (
                labels
                    .get(LABEL_GENERATION)
                    .and_then(|g| g.parse::<u64>().ok()),
                labels
                    .get(LABEL_SPEC)
                    .and_then(|s| serde_json::from_str::<WorkloadSpec>(s).ok()),
            ) else {
                tracing::warn!(volume = %volume.name, "ignoring a malformed workload record");
                continue;
            };
            out.push((volume.name.clone(), Record { spec, generation }));
        }
        Ok(out)
    }

    /// The record in force of `name` (the highest generation).
    async fn read_record(&self, name: &str) -> Result<Option<Record>> {
        Ok(self
            .records(Some(name))
            .await?
            .into_iter()
            .filter(|(_, r)| r.spec.name == name)
            .map(|(_, r)| r)
            .max_by_key(|r| r.generation))
    }

    /// Writes a new record, then removes the older ones.
    async fn write_record(&self, record: &Record) -> Result<()> {
        let name = &record.spec.name;
        let spec = serde_json::to_string(&record.spec)
            .map_err(|e| Error::internal(BACKEND, format!("cannot encode the spec: {e}")))?;
        let request = VolumeCreateRequest {
            name: Some(format!("multicloud-wl-{name}-g{}", record.generation)),
            labels: Some(HashMap::from([
                (LABEL_WORKLOAD.to_string(), name.clone()),
                (LABEL_GENERATION.to_string(), record.generation.to_string()),
                (LABEL_SPEC.to_string(), spec),
            ])),
            ..VolumeCreateRequest::default()
        };
        self.docker
            .create_volume(request)
            .await
            .map_err(|e| engine_error(e, "writing the workload record"))?;
        for (volume, old) in self.records(Some(name)).await? {
            if old.generation < record.generation {
                self.remove_volume(&volume).await?;
            }
        }
        Ok(())
    }

    async fn remove_volume(&self, volume: &str) -> Result<()> {
        match self
            .docker
            .remove_volume(volume, Some(RemoveVolumeOptions { force: true }))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e) => Err(engine_error(e, "removing a workload record")),
        }
    }

    // -- containers --------------------------------------------------------------------------

    /// Every container of `name`, whatever its program or state.
    async fn containers(&self, name: &str) -> Result<Vec<Replica>> {
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([(
                "label".to_string(),
                vec![format!("{LABEL_WORKLOAD}={name}")],
            )])),
            ..ListContainersOptions::default()
        };
        let listed = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| engine_error(e, "listing containers"))?;
        Ok(listed
            .into_iter()
            .filter_map(Replica::from_summary)
            .collect())
    }

    async fn remove_container(&self, id: &str) -> Result<()> {
        let options = RemoveContainerOptions {
            force: true,
            v: false,
            link: false,
        };
        match self.docker.remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e) => Err(engine_error(e, "removing a container")),
        }
    }

    async fn start_container(&self, id: &str) -> Result<()> {
        match self.docker.start_container(id, None).await {
            Ok(()) => Ok(()),
            // 304: already started.
            Err(e) if status_of(&e) == Some(304) => Ok(()),
            Err(e) => Err(engine_error(e, "starting a container")),
        }
    }

    /// The container definition of replica `index` of `record`'s spec.
    fn container_body(
        &self,
        record: &Record,
        index: u32,
        program: &str,
    ) -> Result<ContainerCreateBody> {
        let spec = &record.spec;
        let image = self.image_of(spec)?.to_string();
        let (entrypoint, cmd) = match &spec.command {
            Some(command) => (Some(vec![command.clone()]), Some(spec.args.clone())),
            None if spec.args.is_empty() => (None, None),
            None => (None, Some(spec.args.clone())),
        };
        let env: Vec<String> = port_env(spec)
            .into_iter()
            .chain(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let ports: Vec<String> = spec
            .ports
            .iter()
            .map(|p| format!("{}/tcp", p.port))
            .collect();
        let bindings = ports
            .iter()
            .map(|p| {
                let binding = PortBinding {
                    host_ip: Some("127.0.0.1".to_string()),
                    host_port: Some(String::new()),
                };
                (p.clone(), Some(vec![binding]))
            })
            .collect();
        let restart = match spec.restart {
            RestartPolicy::Always => RestartPolicyNameEnum::ALWAYS,
            RestartPolicy::OnFailure => RestartPolicyNameEnum::ON_FAILURE,
            RestartPolicy::Never => RestartPolicyNameEnum::NO,
        };
        let host_config = HostConfig {
            restart_policy: Some(DockerRestartPolicy {
                name: Some(restart),
                maximum_retry_count: None,
            }),
            nano_cpus: spec.cpu_millis.map(|m| i64::from(m) * 1_000_000),
            memory: spec
                .memory_mib
                .map(|m| i64::try_from(m.saturating_mul(1024 * 1024)).unwrap_or(i64::MAX)),
            port_bindings: Some(bindings),
            ..HostConfig::default()
        };
        Ok(ContainerCreateBody {
            image: Some(image),
            entrypoint,
            cmd,
            env: Some(env),
            exposed_ports: Some(ports),
            labels: Some(HashMap::from([
                (LABEL_WORKLOAD.to_string(), spec.name.clone()),
                (LABEL_GENERATION.to_string(), record.generation.to_string()),
                (LABEL_REPLICA.to_string(), index.to_string()),
                (LABEL_PROGRAM.to_string(), program.to_string()),
            ])),
            stop_timeout: Some(STOP_TIMEOUT_SECS),
            host_config: Some(host_config),
            ..ContainerCreateBody::default()
        })
    }

    /// Creates and starts replica `index`; a container of that name already there (a retry
    /// after a cut-off apply, or another writer) is started instead of duplicated.
    async fn create_replica(&self, record: &Record, index: u32, program: &str) -> Result<()> {
        let name = container_name(&record.spec.name, index, program);
        let body = self.container_body(record, index, program)?;
        let options = CreateContainerOptions {
            name: Some(name.clone()),
            platform: String::new(),
        };
        let id = match self.docker.create_container(Some(options), body).await {
            Ok(created) => created.id,
            Err(e) if status_of(&e) == Some(409) => name,
            Err(e) => return Err(engine_error(e, "creating a container")),
        };
        self.start_container(&id).await
    }

    /// Makes the containers match `record` (see the module docs).
    async fn reconcile(&self, record: &Record) -> Result<()> {
        let spec = &record.spec;
        let program = self.program_hash(spec)?;
        let mut kept: BTreeMap<u32, Replica> = BTreeMap::new();
        for c in self.containers(&spec.name).await? {
            if c.program != program || c.index >= spec.replicas || kept.contains_key(&c.index) {
                self.remove_container(&c.id).await?;
            } else {
                kept.insert(c.index, c);
            }
        }
        for index in 0..spec.replicas {
            match kept.get(&index) {
                None => self.create_replica(record, index, &program).await?,
                Some(c) if c.state == "created" => self.start_container(&c.id).await?,
                Some(c) if c.state == "exited" && spec.restart == RestartPolicy::Always => {
                    self.start_container(&c.id).await?
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// A hash of everything that defines the program (see [`same_program`]), with the image
    /// resolved.
    fn program_hash(&self, spec: &WorkloadSpec) -> Result<String> {
        let image = self.image_of(spec)?;
        let program = serde_json::json!({
            "image": image,
            "command": spec.command,
            "args": spec.args,
            "env": spec.env,
            "cpu_millis": spec.cpu_millis,
            "memory_mib": spec.memory_mib,
            "ports": spec.ports,
            "restart": spec.restart,
        });
        let digest = Sha256::digest(program.to_string().as_bytes());
        Ok(hex::encode(&digest[..6]))
    }

    async fn check_image(&self, spec: &WorkloadSpec) -> Result<()> {
        let image = self.image_of(spec)?;
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Err(Error::new(
                ErrorKind::PreconditionFailed,
                BACKEND,
                format!("image `{image}` is not in the engine (this backend does not pull images)"),
            )),
            Err(e) => Err(engine_error(e, "inspecting the image")),
        }
    }

    // -- status ------------------------------------------------------------------------------

    async fn status(&self, record: Record) -> Result<WorkloadStatus> {
        let spec = record.spec;
        let program = self.program_hash(&spec)?;
        let mut current: BTreeMap<u32, Replica> = BTreeMap::new();
        for c in self.containers(&spec.name).await? {
            if c.program == program && c.index < spec.replicas {
                current.entry(c.index).or_insert(c);
            }
        }
        let mut instances = Vec::with_capacity(current.len());
        for (index, c) in current {
            let inspected = match self.docker.inspect_container(&c.id, None).await {
                Ok(i) => i,
                // Removed meanwhile (by another writer): not an instance any more.
                Err(e) if status_of(&e) == Some(404) => continue,
                Err(e) => return Err(engine_error(e, "inspecting a container")),
            };
            instances.push(self.instance(index, &spec, &inspected).await?);
        }
        let ready = instances
            .iter()
            .filter(|i| matches!(i.phase, Phase::Running | Phase::Succeeded))
            .count() as u32;
        Ok(WorkloadStatus {
            name: spec.name.clone(),
            phase: workload_phase(spec.replicas, &instances),
            desired_replicas: spec.replicas,
            ready_replicas: ready,
            generation: record.generation,
            instances,
            spec,
        })
    }

    async fn instance(
        &self,
        index: u32,
        spec: &WorkloadSpec,
        inspected: &ContainerInspectResponse,
    ) -> Result<Instance> {
        let id = inspected.id.clone().unwrap_or_default();
        let state = inspected.state.clone().unwrap_or_default();
        let restarts = inspected
            .restart_count
            .and_then(|r| u32::try_from(r).ok())
            .unwrap_or(0);
        let code = state.exit_code.and_then(|c| i32::try_from(c).ok());
        let status = state.status.unwrap_or(ContainerStateStatusEnum::EMPTY);
        let (phase, exit_code) = match status {
            ContainerStateStatusEnum::RUNNING => {
                // The engine resets the exit code when it starts a run again.
                let last = if restarts > 0 {
                    self.last_exit_code(&id).await?
                } else {
                    None
                };
                (Phase::Running, last)
            }
            ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::DEAD => {
                let phase = match (spec.restart, code) {
                    (_, Some(0)) if spec.restart != RestartPolicy::Always => Phase::Succeeded,
                    (RestartPolicy::Never, _) => Phase::Failed,
                    // The engine restarts it (on-failure), or the next apply starts it.
                    _ => Phase::Pending,
                };
                (phase, code)
            }
            ContainerStateStatusEnum::RESTARTING => (Phase::Pending, code),
            _ => (Phase::Pending, None),
        };
        let mut endpoints = BTreeMap::new();
        if phase == Phase::Running {
            let published = inspected
                .network_settings
                .as_ref()
                .and_then(|n| n.ports.as_ref());
            for p in &spec.ports {
                let host_port = published
                    .and_then(|m| m.get(&format!("{}/tcp", p.port)))
                    .and_then(|b| b.as_ref())
                    .and_then(|b| b.iter().find_map(|b| b.host_port.clone()))
                    .filter(|port| !port.is_empty());
                if let Some(port) = host_port {
                    endpoints.insert(p.name.clone(), format!("127.0.0.1:{port}"));
                }
            }
        }
        Ok(Instance {
            id,
            index,
            phase,
            restarts,
            exit_code,
            endpoints,
        })
    }

    /// The exit code of the container's last `die` event still in the engine's event log.
    async fn last_exit_code(&self, id: &str) -> Result<Option<i32>> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let options = EventsOptions {
            since: Some("1".to_string()),
            until: Some((now + 1).to_string()),
            filters: Some(HashMap::from([
                ("container".to_string(), vec![id.to_string()]),
                ("event".to_string(), vec!["die".to_string()]),
            ])),
        };
        let events: Vec<_> = self.docker.events(Some(options)).collect().await;
        let mut last = None;
        for event in events {
            let event = event.map_err(|e| engine_error(e, "reading events"))?;
            if let Some(code) = event
                .actor
                .and_then(|a| a.attributes)
                .and_then(|a| a.get("exitCode").and_then(|c| c.parse().ok()))
            {
                last = Some(code);
            }
        }
        Ok(last)
    }
}

/// What a container's labels and summary say about it.
#[derive(Debug, Clone)]
struct Replica {
    id: String,
    index: u32,
    program: String,
    /// The engine's state name (`created`, `running`, `exited`, ...).
    state: String,
}

impl Replica {
    fn from_summary(c: ContainerSummary) -> Option<Self> {
        let labels = c.labels?;
        Some(Self {
            id: c.id?,
            index: labels.get(LABEL_REPLICA)?.parse().ok()?,
            program: labels.get(LABEL_PROGRAM)?.clone(),
            state: c.state.map(|s| s.to_string()).unwrap_or_default(),
        })
    }
}

fn container_name(workload: &str, index: u32, program: &str) -> String {
    format!("multicloud-{workload}-{index}-{program}")
}

fn logs_options(since: u64, follow: bool) -> LogsOptions {
    LogsOptions {
        follow,
        stdout: true,
        stderr: true,
        // Whole seconds (the API's unit); the exact cut is made on the timestamps.
        since: i32::try_from(since / 1_000_000_000).unwrap_or(i32::MAX),
        until: 0,
        timestamps: true,
        tail: "all".to_string(),
    }
}

/// One frame of `docker logs --timestamps` as a line (`sequence` = the timestamp).
fn parse_log(output: LogOutput, instance: u32) -> Option<LogLine> {
    let (stream, message) = match output {
        LogOutput::StdOut { message } => (LogStream::Stdout, message),
        LogOutput::StdErr { message } => (LogStream::Stderr, message),
        LogOutput::Console { message } => (LogStream::Stdout, message),
        LogOutput::StdIn { .. } => return None,
    };
    let text = String::from_utf8_lossy(&message);
    let (timestamp, line) = text.split_once(' ').unwrap_or((&text, ""));
    let sequence = rfc3339_nanos(timestamp)?;
    let line = line.strip_suffix('\n').unwrap_or(line);
    let line = line.strip_suffix('\r').unwrap_or(line);
    Some(LogLine {
        sequence,
        instance,
        stream,
        line: line.to_string(),
    })
}

/// Nanoseconds since the epoch of an RFC 3339 UTC timestamp as the engine writes it
/// (`2026-12-01T13:49:16.207382346Z`; the fraction has 0 to 9 digits).
fn rfc3339_nanos(s: &str) -> Option<u64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (d.next()??, d.next()??, d.next()??);
    let (clock, fraction) = time.split_once('.').unwrap_or((time, ""));
    let mut t = clock.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (hour, minute, second) = (t.next()??, t.next()??, t.next()??);
    if fraction.len() > 9 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let nanos: i64 = format!("{fraction:0<9}").parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = (month + 9) % 12;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second;
    u64::try_from(secs.checked_mul(1_000_000_000)?.checked_add(nanos)?).ok()
}

fn status_of(e: &DockerError) -> Option<u16> {
    match e {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// The portable error of an engine failure while `doing` something.
fn engine_error(e: DockerError, doing: &str) -> Error {
    let kind = match &e {
        DockerError::DockerResponseServerError { status_code, .. } => match status_code {
            400 => ErrorKind::InvalidArgument,
            401 | 403 => ErrorKind::PermissionDenied,
            404 => ErrorKind::NotFound,
            409 => ErrorKind::AlreadyExists,
            500..=599 => ErrorKind::Unavailable,
            _ => ErrorKind::Internal,
        },
        DockerError::RequestTimeoutError
        | DockerError::IOError { .. }
        | DockerError::HyperLegacyError { .. }
        | DockerError::HyperResponseError { .. }
        | DockerError::SocketNotFoundError(_)
        | DockerError::DockerStreamError { .. } => ErrorKind::Unavailable,
        _ => ErrorKind::Internal,
    };
    let message = match kind {
        ErrorKind::Unavailable => format!("{doing}: the Docker Engine is unavailable: {e}"),
        _ => format!("{doing}: {e}"),
    };
    Error::new(kind, BACKEND, message).with_source(e)
}

#[async_trait]
impl Compute for DockerCompute {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            backend: BACKEND.to_string(),
            location: self.location.clone(),
        }
    }

    fn capabilities(&self) -> ComputeCapabilities {
        self.capabilities_now()
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, workload = %spec.name), err(level = "debug"))]
    async fn apply(&self, spec: WorkloadSpec) -> Result<WorkloadStatus> {
        validate_spec(BACKEND, &self.capabilities_now(), &spec)?;
        let _writing = self.writes.lock().await;
        let record = match self.read_record(&spec.name).await? {
            Some(old) if old.spec == spec => old,
            old => {
                if old.as_ref().is_none_or(|o| !same_program(&o.spec, &spec)) {
                    self.check_image(&spec).await?;
                }
                let record = Record {
                    generation: old.map_or(1, |o| o.generation + 1),
                    spec,
                };
                self.write_record(&record).await?;
                record
            }
        };
        self.reconcile(&record).await?;
        self.status(record).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, workload = %name), err(level = "debug"))]
    async fn get(&self, name: &str) -> Result<Option<WorkloadStatus>> {
        self.check_name(name)?;
        match self.read_record(name).await? {
            None => Ok(None),
            Some(record) => Ok(Some(self.status(record).await?)),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND), err(level = "debug"))]
    async fn list(&self, selector: &BTreeMap<String, String>) -> Result<Vec<WorkloadStatus>> {
        let mut latest: BTreeMap<String, Record> = BTreeMap::new();
        for (_, record) in self.records(None).await? {
            let name = record.spec.name.clone();
            if latest
                .get(&name)
                .is_none_or(|r| r.generation < record.generation)
            {
                latest.insert(name, record);
            }
        }
        let mut out = Vec::new();
        for record in latest.into_values() {
            if selector
                .iter()
                .all(|(k, v)| record.spec.labels.get(k) == Some(v))
            {
                out.push(self.status(record).await?);
            }
        }
        Ok(out)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, workload = %name, replicas), err(level = "debug"))]
    async fn scale(&self, name: &str, replicas: u32) -> Result<WorkloadStatus> {
        self.check_name(name)?;
        check_replicas(BACKEND, replicas)?;
        let _writing = self.writes.lock().await;
        let mut record = self
            .read_record(name)
            .await?
            .ok_or_else(|| self.not_found(name))?;
        if record.spec.replicas != replicas {
            record.spec.replicas = replicas;
            record.generation += 1;
            self.write_record(&record).await?;
        }
        self.reconcile(&record).await?;
        self.status(record).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, workload = %name), err(level = "debug"))]
    async fn delete(&self, name: &str) -> Result<bool> {
        self.check_name(name)?;
        let _writing = self.writes.lock().await;
        let records = self.records(Some(name)).await?;
        let containers = self.containers(name).await?;
        // Containers first: a delete cut off half-way leaves the record, so the workload is
        // still visible and a second delete finishes it.
        for c in &containers {
            self.remove_container(&c.id).await?;
        }
        for (volume, _) in &records {
            self.remove_volume(volume).await?;
        }
        Ok(!records.is_empty() || !containers.is_empty())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, workload = %name), err(level = "debug"))]
    async fn logs(&self, name: &str, options: LogOptions) -> Result<LogPage> {
        self.check_name(name)?;
        if self.read_record(name).await?.is_none() {
            return Err(self.not_found(name));
        }
        let since = options.since;
        let limit = options.limit.unwrap_or(usize::MAX);
        let mut lines: Vec<(LogLine, usize)> = Vec::new();
        for c in self.containers(name).await? {
            let mut stream = self.docker.logs(&c.id, Some(logs_options(since, false)));
            let mut at_or_after = 0;
            while let Some(item) = stream.next().await {
                let output = match item {
                    Ok(output) => output,
                    // Removed meanwhile: its logs are gone with it.
                    Err(e) if status_of(&e) == Some(404) => break,
                    Err(e) => return Err(engine_error(e, "reading logs")),
                };
                let Some(line) = parse_log(output, c.index) else {
                    continue;
                };
                // Lines before `since` (from its whole second) still count for the tie
                // breaking below; at most `limit` lines at or after it are needed.
                if line.sequence >= since {
                    at_or_after += 1;
                }
                let position = lines.len();
                lines.push((line, position));
                if at_or_after >= limit {
                    break;
                }
            }
        }
        lines.sort_by_key(|(l, position)| (l.sequence, l.instance, *position));
        let mut previous: Option<u64> = None;
        let mut page = Vec::new();
        for (mut line, _) in lines {
            if let Some(p) = previous {
                line.sequence = line.sequence.max(p + 1);
            }
            previous = Some(line.sequence);
            if line.sequence >= since && page.len() < limit {
                page.push(line);
            }
        }
        let next_since = page.last().map_or(since, |l| l.sequence + 1);
        Ok(LogPage {
            lines: page,
            next_since,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse_to_nanoseconds() {
        assert_eq!(rfc3339_nanos("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(rfc3339_nanos("1970-01-01T00:00:01.5Z"), Some(1_500_000_000));
        assert_eq!(
            rfc3339_nanos("2026-12-01T13:49:16.207382346Z"),
            // date -d 2026-12-01T13:49:16Z +%s
            Some(1_796_132_956 * 1_000_000_000 + 207_382_346)
        );
        assert_eq!(
            rfc3339_nanos("2024-02-29T00:00:00Z"),
            Some(1_709_164_800 * 1_000_000_000)
        );
        for bad in [
            "",
            "2026-12-01",
            "2026-12-01T13:49:16",
            "2026-12-01T13:49:16.1234567890Z",
            "x-y-zTa:b:cZ",
        ] {
            assert_eq!(rfc3339_nanos(bad), None, "{bad}");
        }
    }

    #[test]
    fn log_frames_become_lines() {
        let frame = |s: &str| bytes::Bytes::from(s.to_string());
        let line = parse_log(
            LogOutput::StdErr {
                message: frame("1970-01-01T00:00:02Z oops  spaced\n"),
            },
            3,
        )
        .unwrap();
        assert_eq!(line.sequence, 2_000_000_000);
        assert_eq!(line.instance, 3);
        assert_eq!(line.stream, LogStream::Stderr);
        assert_eq!(line.line, "oops  spaced");
        let empty = parse_log(
            LogOutput::StdOut {
                message: frame("1970-01-01T00:00:02.000000001Z \n"),
            },
            0,
        )
        .unwrap();
        assert_eq!(empty.line, "");
        assert_eq!(empty.sequence, 2_000_000_001);
    }
}
