//! Compute backends: implementations of [`cloud_abstraction::Compute`].
//!
//! | backend | feature | what runs | notes |
//! |---|---|---|---|
//! | [`ProcessCompute`] (`"process"`) | `process` | each replica is a local child process | commands only, no images, no resource limits |
//! | [`SimCompute`] (`"sim"`) | `sim` | **nothing**: a simulation | for planning and demos; `capabilities().simulated` is true |
//! | `DockerCompute` (`"docker"`) | `docker` | each replica is a container of a Docker Engine | state lives in the engine; command specs run in a default image; images are not pulled (see [its docs](self#docker)) |
//!
//! Both embedded backends share one desired-state engine (private to this module): a map of
//! workloads, each with its spec in force, its generation, a bounded log ring with global
//! sequence numbers, and one supervisor task per replica that starts the program, waits for
//! it, and applies the [`RestartPolicy`](cloud_abstraction::compute::RestartPolicy) with a
//! back-off of 100 ms doubling up to 5 s (reset after a run of 10 s or more). They differ
//! only in how one run of a program happens.
//!
//! Semantics common to all three (the Docker backend applies the same rules, from
//! `spec.rs`, to the state it keeps in the engine):
//!
//! - `apply` of an identical spec changes nothing. A change of labels only bumps the
//!   generation. A change of replicas only scales in place (keeps the running instances). Any
//!   other change (command, args, env, image, ports, limits, restart policy) bumps the
//!   generation and replaces every instance (stop all, then start all: not a rolling update).
//! - The workload's phase: `Stopped` at 0 replicas; `Failed` if any instance failed for good
//!   (or could not start); `Succeeded` if all instances succeeded; `Running` if every desired
//!   instance is running or succeeded; `Pending` otherwise (starting, or in restart back-off).
//!   `ready_replicas` counts instances that are running or succeeded.
//! - Specs are validated before anything happens: names, at most
//!   [`MAX_REPLICAS`](cloud_abstraction::compute::MAX_REPLICAS), a non-empty command or image,
//!   env names without `=`/NUL, no NUL in args or values, port names valid and unique, ports
//!   not 0; a field the backend cannot honour (an image, limits, ports) is
//!   [`Unsupported`](cloud_abstraction::ErrorKind::Unsupported), never silently ignored.
//! - The embedded backends' logs keep the last 10 000 lines per workload (across restarts and replacements) and go
//!   away with the workload.
//!
//! # Docker
//!
//! `DockerCompute` (feature `docker`, module `docker`) reaches a Docker Engine over its unix
//! socket with bollard; its module docs describe the storage layout (workload records as
//! volumes, replicas as labelled containers), the semantics and the failure behaviour.
//!
//! # Kubernetes (not built)
//!
//! No Kubernetes API server can run on the machines this crate is tested on, so there is no
//! Kubernetes backend (a faked API server would test nothing). Where a cluster exists, one
//! maps onto [`Compute`](cloud_abstraction::Compute) like this, and is tested with the same
//! kit:
//!
//! - **Workload**: a `Deployment` named after it for `RestartPolicy::Always`; a `Job` with
//!   `completions = parallelism = replicas` for `OnFailure`/`Never` (Kubernetes allows
//!   those pod `restartPolicy` values only on Jobs). `apply` is server-side apply with one
//!   field manager, so an identical spec changes nothing. The spec in force is recorded in
//!   an annotation (`multicloud/spec`) as JSON; the generation is an annotation
//!   `multicloud/generation` bumped on every spec change (Kubernetes' own
//!   `metadata.generation` does not move on label changes, which this trait counts).
//! - **Labels**: the user's labels go on the Deployment's `metadata.labels` (a change there
//!   restarts nothing); `multicloud/workload=<name>` goes on the pod template and is the
//!   Deployment's selector. `list` is a label-selector list of Deployments (and Jobs).
//! - **Scale**: the `scale` subresource (`PATCH .../deployments/<name>/scale`), which keeps
//!   the running pods. Any other spec change is a new ReplicaSet; `strategy: Recreate`
//!   matches the "stop all, then start all" of the other backends.
//! - **Instances** are the pods with `multicloud/workload=<name>`, indexed in creation order
//!   (outside StatefulSets pods have no stable index); `restarts` is the container's
//!   `restartCount`, `exit_code` its `lastState.terminated.exitCode` (or
//!   `state.terminated.exitCode`), running means the pod's `Ready` condition. Ports are
//!   `containerPort`s; endpoints are pod IPs (or a Service's address).
//! - **Limits**: `resources.limits` (`cpu: <millis>m`, `memory: <mib>Mi`). Command specs
//!   without an image run in a default image, as with Docker.
//! - **Logs**: `GET .../pods/<pod>/log?timestamps=true&sinceTime=…` per pod, merged by
//!   timestamp with the timestamp as the sequence, as the Docker backend does; `follow=true`
//!   for a stream.
//! - **Delete**: delete the Deployment with `propagationPolicy=Foreground` (returns once the
//!   pods are gone). An unreachable API server, 429 and 5xx are `Unavailable`; 409 on apply
//!   (a conflict between field managers) is `PreconditionFailed`.

#[cfg(feature = "docker")]
pub mod docker;
#[cfg(feature = "process")]
pub mod process;
#[cfg(feature = "sim")]
pub mod sim;

#[cfg(feature = "docker")]
pub use docker::DockerCompute;
#[cfg(feature = "process")]
pub use process::ProcessCompute;
#[cfg(feature = "sim")]
pub use sim::SimCompute;

#[cfg(any(feature = "process", feature = "sim", feature = "docker"))]
mod spec;

/// The desired-state engine shared by the embedded backends. (Inline because the module's
/// file list is fixed; it is private to this module.)
#[cfg(any(feature = "process", feature = "sim"))]
mod engine {
    use async_trait::async_trait;
    use cloud_abstraction::compute::{
        ComputeCapabilities, Instance, LogLine, LogOptions, LogPage, LogStream, Phase,
        RestartPolicy, WorkloadSpec, WorkloadStatus,
    };
    use cloud_abstraction::{Error, Result, validate};
    use std::collections::{BTreeMap, VecDeque};
    use std::sync::{Arc, Mutex as StdMutex, MutexGuard, PoisonError};
    use std::time::{Duration, Instant};
    use tokio::sync::{Mutex, oneshot};
    use tokio::task::JoinHandle;
    use tracing::Instrument;

    use super::spec::{check_replicas, same_program, validate_spec, workload_phase};

    /// Lines kept per workload.
    pub(crate) const LOG_CAPACITY: usize = 10_000;
    /// First restart delay; doubles per restart up to [`BACKOFF_MAX`].
    const BACKOFF_START: Duration = Duration::from_millis(100);
    const BACKOFF_MAX: Duration = Duration::from_secs(5);
    /// A run at least this long resets the back-off (the program was healthy for a while).
    const BACKOFF_RESET: Duration = Duration::from_secs(10);
    /// How long a stop may take before the supervisor task is aborted.
    const STOP_TIMEOUT: Duration = Duration::from_secs(15);

    /// Locks a std mutex; a poisoned lock still holds consistent plain data here.
    pub(crate) fn lock<T>(m: &StdMutex<T>) -> MutexGuard<'_, T> {
        m.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The observed state of one replica, written by its supervisor and runner.
    #[derive(Debug, Clone)]
    pub(crate) struct InstanceState {
        pub(crate) id: String,
        pub(crate) phase: Phase,
        pub(crate) restarts: u32,
        pub(crate) exit_code: Option<i32>,
    }

    /// The end of one run of a program.
    #[derive(Debug)]
    pub(crate) enum Attempt {
        /// It exited with this code (128 + signal when killed by a signal).
        Exited(i32),
        /// The stop signal fired, and everything the run started has ended.
        Stopped,
        /// It could not start (or could not be waited for); a terminal failure.
        // Only real processes fail to start.
        #[cfg_attr(not(feature = "process"), allow(dead_code))]
        CannotStart(String),
    }

    /// Everything a run needs.
    pub(crate) struct RunContext {
        pub(crate) spec: Arc<WorkloadSpec>,
        pub(crate) index: u32,
        pub(crate) logs: Arc<LogRing>,
        pub(crate) instance: Arc<StdMutex<InstanceState>>,
    }

    impl RunContext {
        /// Marks the instance as running under `id`.
        pub(crate) fn started(&self, id: String) {
            let mut s = lock(&self.instance);
            s.id = id;
            s.phase = Phase::Running;
        }
    }

    /// How a backend performs one run of one replica.
    #[async_trait]
    pub(crate) trait Runner: Send + Sync + 'static {
        /// Runs the program once: calls [`RunContext::started`] once it runs, and returns
        /// when it exits, or, when `stop` fires (or its sender is dropped), after ending
        /// everything the run started.
        async fn run(&self, ctx: &RunContext, stop: &mut oneshot::Receiver<()>) -> Attempt;

        /// The address of `port` of replica `index`.
        fn endpoint(&self, spec: &WorkloadSpec, index: u32, port: u16) -> String;

        /// Called synchronously when the engine is dropped: end everything now.
        fn shutdown(&self) {}
    }

    /// A bounded ring of log lines with global sequence numbers (starting at 1).
    #[derive(Debug)]
    pub(crate) struct LogRing {
        inner: StdMutex<(VecDeque<LogLine>, u64)>,
    }

    impl LogRing {
        fn new() -> Self {
            Self {
                inner: StdMutex::new((VecDeque::new(), 1)),
            }
        }

        /// Appends a line, dropping the oldest beyond [`LOG_CAPACITY`].
        pub(crate) fn push(&self, instance: u32, stream: LogStream, line: String) {
            let mut guard = lock(&self.inner);
            let (lines, next) = &mut *guard;
            if lines.len() >= LOG_CAPACITY {
                lines.pop_front();
            }
            lines.push_back(LogLine {
                sequence: *next,
                instance,
                stream,
                line,
            });
            *next += 1;
        }

        fn read(&self, options: LogOptions) -> LogPage {
            let guard = lock(&self.inner);
            let lines = &guard.0;
            let start = lines.partition_point(|l| l.sequence < options.since);
            let out: Vec<LogLine> = lines
                .range(start..)
                .take(options.limit.unwrap_or(usize::MAX))
                .cloned()
                .collect();
            let next_since = out.last().map_or(options.since, |l| l.sequence + 1);
            LogPage {
                lines: out,
                next_since,
            }
        }
    }

    struct Replica {
        instance: Arc<StdMutex<InstanceState>>,
        stop: oneshot::Sender<()>,
        task: JoinHandle<()>,
    }

    struct Workload {
        spec: Arc<WorkloadSpec>,
        generation: u64,
        replicas: Vec<Replica>,
        logs: Arc<LogRing>,
    }

    /// Workloads, their supervisors, and the validation and status rules.
    pub(crate) struct Engine<R: Runner> {
        backend: &'static str,
        caps: ComputeCapabilities,
        runner: Arc<R>,
        workloads: Mutex<BTreeMap<String, Workload>>,
    }

    impl<R: Runner> std::fmt::Debug for Engine<R> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Engine")
                .field("backend", &self.backend)
                .finish_non_exhaustive()
        }
    }

    impl<R: Runner> Drop for Engine<R> {
        fn drop(&mut self) {
            // Dropping the stop senders would end the runs too, but asynchronously (and not
            // at all once the runtime is gone): end them now.
            self.runner.shutdown();
        }
    }

    impl<R: Runner> Engine<R> {
        pub(crate) fn new(backend: &'static str, caps: ComputeCapabilities, runner: R) -> Self {
            Self {
                backend,
                caps,
                runner: Arc::new(runner),
                workloads: Mutex::new(BTreeMap::new()),
            }
        }

        pub(crate) fn capabilities(&self) -> ComputeCapabilities {
            self.caps.clone()
        }

        #[cfg(feature = "process")]
        pub(crate) fn runner(&self) -> &Arc<R> {
            &self.runner
        }

        fn check_name(&self, name: &str) -> Result<()> {
            validate::resource_name(self.backend, "workload", name)
        }

        fn not_found(&self, name: &str) -> Error {
            Error::not_found(self.backend, format!("workload `{name}` not found"))
        }

        fn status(&self, w: &Workload) -> WorkloadStatus {
            let instances: Vec<Instance> = w
                .replicas
                .iter()
                .enumerate()
                .map(|(index, r)| {
                    let s = lock(&r.instance).clone();
                    let index = index as u32;
                    Instance {
                        id: s.id,
                        index,
                        phase: s.phase,
                        restarts: s.restarts,
                        exit_code: s.exit_code,
                        endpoints: w
                            .spec
                            .ports
                            .iter()
                            .map(|p| (p.name.clone(), self.runner.endpoint(&w.spec, index, p.port)))
                            .collect(),
                    }
                })
                .collect();
            let ready = instances
                .iter()
                .filter(|i| matches!(i.phase, Phase::Running | Phase::Succeeded))
                .count() as u32;
            WorkloadStatus {
                name: w.spec.name.clone(),
                phase: workload_phase(w.spec.replicas, &instances),
                desired_replicas: w.spec.replicas,
                ready_replicas: ready,
                generation: w.generation,
                instances,
                spec: (*w.spec).clone(),
            }
        }

        fn start_replica(
            &self,
            spec: &Arc<WorkloadSpec>,
            index: u32,
            logs: &Arc<LogRing>,
        ) -> Replica {
            let instance = Arc::new(StdMutex::new(InstanceState {
                id: format!("{}-{index}-pending", spec.name),
                phase: Phase::Pending,
                restarts: 0,
                exit_code: None,
            }));
            let (stop, stop_rx) = oneshot::channel();
            let ctx = RunContext {
                spec: Arc::clone(spec),
                index,
                logs: Arc::clone(logs),
                instance: Arc::clone(&instance),
            };
            let span = tracing::debug_span!(
                "compute_replica",
                backend = self.backend,
                workload = %spec.name,
                index
            );
            let task =
                tokio::spawn(supervise(Arc::clone(&self.runner), ctx, stop_rx).instrument(span));
            Replica {
                instance,
                stop,
                task,
            }
        }

        /// Brings the replica count to `spec.replicas`: starts missing replicas with `spec`,
        /// stops the highest indexes beyond it.
        async fn resize(&self, w: &mut Workload) {
            let want = w.spec.replicas as usize;
            if w.replicas.len() > want {
                let extra = w.replicas.split_off(want);
                stop_all(extra).await;
            }
            while w.replicas.len() < want {
                let index = w.replicas.len() as u32;
                let replica = self.start_replica(&w.spec, index, &w.logs);
                w.replicas.push(replica);
            }
        }

        #[tracing::instrument(level = "debug", skip_all, fields(backend = self.backend, workload = %spec.name), err(level = "debug"))]
        pub(crate) async fn apply(&self, spec: WorkloadSpec) -> Result<WorkloadStatus> {
            validate_spec(self.backend, &self.caps, &spec)?;
            let mut workloads = self.workloads.lock().await;
            let spec = Arc::new(spec);
            match workloads.get_mut(&spec.name) {
                None => {
                    let mut w = Workload {
                        spec: Arc::clone(&spec),
                        generation: 1,
                        replicas: Vec::new(),
                        logs: Arc::new(LogRing::new()),
                    };
                    self.resize(&mut w).await;
                    tracing::debug!(replicas = spec.replicas, "workload created");
                    let status = self.status(&w);
                    workloads.insert(spec.name.clone(), w);
                    Ok(status)
                }
                Some(w) if *w.spec == *spec => Ok(self.status(w)),
                Some(w) => {
                    w.generation += 1;
                    if !same_program(&w.spec, &spec) {
                        // A new program: replace every instance.
                        let old = std::mem::take(&mut w.replicas);
                        stop_all(old).await;
                        tracing::debug!(generation = w.generation, "workload replaced");
                    }
                    w.spec = spec;
                    self.resize(w).await;
                    Ok(self.status(w))
                }
            }
        }

        #[tracing::instrument(level = "debug", skip_all, fields(backend = self.backend, workload = %name), err(level = "debug"))]
        pub(crate) async fn get(&self, name: &str) -> Result<Option<WorkloadStatus>> {
            self.check_name(name)?;
            let workloads = self.workloads.lock().await;
            Ok(workloads.get(name).map(|w| self.status(w)))
        }

        #[tracing::instrument(level = "debug", skip_all, fields(backend = self.backend), err(level = "debug"))]
        pub(crate) async fn list(
            &self,
            selector: &BTreeMap<String, String>,
        ) -> Result<Vec<WorkloadStatus>> {
            let workloads = self.workloads.lock().await;
            Ok(workloads
                .values()
                .filter(|w| {
                    selector
                        .iter()
                        .all(|(k, v)| w.spec.labels.get(k) == Some(v))
                })
                .map(|w| self.status(w))
                .collect())
        }

        #[tracing::instrument(level = "debug", skip_all, fields(backend = self.backend, workload = %name, replicas = replicas), err(level = "debug"))]
        pub(crate) async fn scale(&self, name: &str, replicas: u32) -> Result<WorkloadStatus> {
            if !self.caps.scale {
                return Err(Error::unsupported(self.backend, "scale"));
            }
            self.check_name(name)?;
            check_replicas(self.backend, replicas)?;
            let mut workloads = self.workloads.lock().await;
            let w = workloads
                .get_mut(name)
                .ok_or_else(|| self.not_found(name))?;
            if w.spec.replicas != replicas {
                let mut spec = (*w.spec).clone();
                spec.replicas = replicas;
                w.spec = Arc::new(spec);
                w.generation += 1;
                self.resize(w).await;
            }
            Ok(self.status(w))
        }

        #[tracing::instrument(level = "debug", skip_all, fields(backend = self.backend, workload = %name), err(level = "debug"))]
        pub(crate) async fn delete(&self, name: &str) -> Result<bool> {
            self.check_name(name)?;
            let mut workloads = self.workloads.lock().await;
            match workloads.remove(name) {
                None => Ok(false),
                Some(w) => {
                    stop_all(w.replicas).await;
                    tracing::debug!("workload deleted");
                    Ok(true)
                }
            }
        }

        #[tracing::instrument(level = "debug", skip_all, fields(backend = self.backend, workload = %name), err(level = "debug"))]
        pub(crate) async fn logs(&self, name: &str, options: LogOptions) -> Result<LogPage> {
            if !self.caps.logs {
                return Err(Error::unsupported(self.backend, "logs"));
            }
            self.check_name(name)?;
            let logs = {
                let workloads = self.workloads.lock().await;
                let w = workloads.get(name).ok_or_else(|| self.not_found(name))?;
                Arc::clone(&w.logs)
            };
            Ok(logs.read(options))
        }
    }

    /// Signals every replica to stop, then waits for each (bounded; aborts stragglers).
    async fn stop_all(replicas: Vec<Replica>) {
        let tasks: Vec<JoinHandle<()>> = replicas
            .into_iter()
            .map(|r| {
                // An error means the supervisor already finished.
                let _ = r.stop.send(());
                r.task
            })
            .collect();
        for mut task in tasks {
            if tokio::time::timeout(STOP_TIMEOUT, &mut task).await.is_err() {
                tracing::warn!("a replica did not stop in time; aborting its supervisor");
                task.abort();
            }
        }
    }

    /// One replica's supervisor: runs the program and applies the restart policy.
    async fn supervise<R: Runner>(
        runner: Arc<R>,
        ctx: RunContext,
        mut stop: oneshot::Receiver<()>,
    ) {
        let mut backoff = BACKOFF_START;
        loop {
            let started = Instant::now();
            let code = match runner.run(&ctx, &mut stop).await {
                Attempt::Stopped => return,
                Attempt::CannotStart(why) => {
                    tracing::warn!(%why, "replica cannot start");
                    ctx.logs.push(ctx.index, LogStream::Stderr, why);
                    lock(&ctx.instance).phase = Phase::Failed;
                    return;
                }
                Attempt::Exited(code) => code,
            };
            let restart = match ctx.spec.restart {
                RestartPolicy::Always => true,
                RestartPolicy::OnFailure => code != 0,
                RestartPolicy::Never => false,
            };
            {
                let mut s = lock(&ctx.instance);
                s.exit_code = Some(code);
                s.phase = match (restart, code) {
                    (true, _) => Phase::Pending,
                    (false, 0) => Phase::Succeeded,
                    (false, _) => Phase::Failed,
                };
            }
            tracing::debug!(code, restart, "replica exited");
            if !restart {
                return;
            }
            if started.elapsed() >= BACKOFF_RESET {
                backoff = BACKOFF_START;
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = &mut stop => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
            {
                let mut s = lock(&ctx.instance);
                s.restarts = s.restarts.saturating_add(1);
            }
        }
    }
}
