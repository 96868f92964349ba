//! Conformance suite and model test for [`Compute`] backends.
//!
//! ```ignore
//! #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
//! async fn conformance() {
//!     let compute: Arc<dyn Compute> = Arc::new(MyCompute::new());
//!     cloud_abstraction::testkit::compute::run_suite(compute).await;
//! }
//!
//! #[test]
//! fn model() {
//!     cloud_abstraction::testkit::compute::run_model_test(|| Arc::new(MyCompute::new()));
//! }
//! ```
//!
//! # The program vocabulary
//!
//! A case needs a workload that every backend can run, a real process runner as well as a
//! simulator. So every workload of the suite is a command spec (no image) of the form
//! `sh -c '<script>'` (see [`program`]), and the scripts use only this tiny subset of the
//! shell, which a simulator must interpret and a real runner gets for free:
//!
//! | statement | meaning |
//! |---|---|
//! | `echo WORDS` | writes one line to stdout; `$VAR` and `${VAR}` expand from the spec's env; words may be `'single'` or `"double"` quoted |
//! | `echo WORDS >&2` | the same line on stderr |
//! | `sleep N` / `exec sleep N` | keeps running for N seconds (the suite uses 3600 for "forever") |
//! | `exit N` | ends the run with exit code N |
//!
//! Statements are separated by `;`. A script that reaches its end exits with 0 (the last
//! statement's status). A backend that runs images and not host commands (e.g. Docker) runs
//! these command specs in a small default image of its own choice that has `sh`.
//!
//! # What is checked
//!
//! Creation and readiness (ready replicas, distinct instance ids), idempotent re-apply, spec
//! changes that replace instances, scaling up and down, the three restart policies, logs in
//! order with paging, env reaching the program, delete, list by labels, absent workloads,
//! invalid input, and that every capability the backend does not claim fails with
//! [`ErrorKind::Unsupported`]. Backend-specific promises (such as "no OS process is left after
//! delete") belong in the backend's own tests.

use super::{Case, Report, assert_kind, proptest_cases, run_cases, unique_name};
use crate::compute::{
    Compute, ComputeExt, LogOptions, LogStream, MAX_REPLICAS, Phase, PortSpec, RestartPolicy,
    WorkloadSpec, WorkloadStatus,
};
use crate::{ErrorKind, conformance_case};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a case waits for a workload to become ready or reach a phase. Generous: CI
/// machines are slow and run many suites at once.
const WAIT: Duration = Duration::from_secs(30);

/// A workload running `sh -c script` with one replica and the default restart policy.
pub fn program(name: &str, script: &str) -> WorkloadSpec {
    WorkloadSpec::command(name, "sh").with_args(["-c", script])
}

/// A long-running workload: prints `started`, then sleeps for an hour.
pub fn sleeper(name: &str) -> WorkloadSpec {
    program(name, "echo started; exec sleep 3600")
}

/// A one-shot job: prints `hello`, then exits with `exit_code` (restart policy
/// [`Never`](RestartPolicy::Never)).
pub fn job(name: &str, exit_code: i32) -> WorkloadSpec {
    program(name, &format!("echo hello; exit {exit_code}")).with_restart(RestartPolicy::Never)
}

/// Every case of the suite.
pub fn cases() -> Vec<Case<dyn Compute>> {
    vec![
        conformance_case!(info_and_capabilities),
        conformance_case!(apply_creates_and_becomes_ready),
        conformance_case!(apply_same_spec_is_idempotent),
        conformance_case!(apply_changed_spec_replaces_instances),
        conformance_case!(labels_change_keeps_instances),
        conformance_case!(scale_up_and_down),
        conformance_case!(scale_absent_is_not_found),
        conformance_case!(restart_always_restarts),
        conformance_case!(restart_on_failure),
        conformance_case!(restart_never),
        conformance_case!(logs_in_order_and_paged),
        conformance_case!(logs_of_absent_is_not_found),
        conformance_case!(env_reaches_program),
        conformance_case!(delete_removes_workload),
        conformance_case!(list_by_labels),
        conformance_case!(get_absent_is_none),
        conformance_case!(invalid_arguments),
        conformance_case!(ports_and_endpoints),
        conformance_case!(images),
        conformance_case!(resource_limits),
    ]
}

/// Runs every case against `target` and panics with all failures listed.
pub async fn run_suite(target: Arc<dyn Compute>) -> Report {
    let backend = target.info().backend;
    let report = run_cases("compute", &backend, target, &cases()).await;
    report.assert_passed();
    report
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn name(prefix: &str) -> String {
    unique_name(&format!("ck-{prefix}-"))
}

/// The backend runs the suite's programs (command specs); if not, asserts that applying one
/// is refused as unsupported and returns false.
async fn runs_programs(c: &Arc<dyn Compute>) -> bool {
    if c.capabilities().commands {
        return true;
    }
    let n = name("nocmd");
    assert_kind(
        c.apply(sleeper(&n)).await,
        ErrorKind::Unsupported,
        "apply of a command spec without the `commands` capability",
    );
    assert!(c.get(&n).await.unwrap().is_none());
    false
}

async fn apply_ok(c: &Arc<dyn Compute>, spec: WorkloadSpec) -> WorkloadStatus {
    let what = spec.name.clone();
    match c.apply(spec).await {
        Ok(status) => status,
        Err(e) => panic!("apply `{what}` failed: {e}"),
    }
}

async fn ready(c: &Arc<dyn Compute>, name: &str) -> WorkloadStatus {
    match c.wait_ready(name, WAIT).await {
        Ok(status) => status,
        Err(e) => panic!("wait_ready `{name}` failed: {e}"),
    }
}

async fn phase(c: &Arc<dyn Compute>, name: &str, phase: Phase) -> WorkloadStatus {
    match c.wait_phase(name, phase, WAIT).await {
        Ok(status) => status,
        Err(e) => panic!("wait_phase `{name}` {phase:?} failed: {e}"),
    }
}

async fn get_some(c: &Arc<dyn Compute>, name: &str) -> WorkloadStatus {
    match c.get(name).await {
        Ok(Some(status)) => status,
        Ok(None) => panic!("workload `{name}` vanished"),
        Err(e) => panic!("get `{name}` failed: {e}"),
    }
}

/// Polls `get` until `pred` holds (bounded by [`WAIT`]); panics with `what` and the last
/// status otherwise.
async fn until<F>(c: &Arc<dyn Compute>, name: &str, what: &str, pred: F) -> WorkloadStatus
where
    F: Fn(&WorkloadStatus) -> bool,
{
    let deadline = Instant::now() + WAIT;
    loop {
        let status = get_some(c, name).await;
        if pred(&status) {
            return status;
        }
        if Instant::now() >= deadline {
            panic!("`{name}`: {what} did not happen within {WAIT:?}; last status: {status:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn cleanup(c: &Arc<dyn Compute>, name: &str) {
    let _ = c.delete(name).await;
}

fn ids(status: &WorkloadStatus) -> BTreeSet<String> {
    status.instances.iter().map(|i| i.id.clone()).collect()
}

fn indexes(status: &WorkloadStatus) -> Vec<u32> {
    let mut v: Vec<u32> = status.instances.iter().map(|i| i.index).collect();
    v.sort_unstable();
    v
}

/// Reads every log line available now, following `next_since`.
async fn all_logs(c: &Arc<dyn Compute>, name: &str) -> Vec<crate::compute::LogLine> {
    let mut lines = Vec::new();
    let mut since = 0;
    for _ in 0..1000 {
        let page = c
            .logs(
                name,
                LogOptions {
                    since,
                    limit: Some(100),
                },
            )
            .await
            .unwrap();
        if page.lines.is_empty() {
            return lines;
        }
        assert!(page.next_since > since, "next_since must advance");
        since = page.next_since;
        lines.extend(page.lines);
    }
    panic!("`{name}`: log paging did not end");
}

/// Polls the logs until `pred` holds on all lines so far.
async fn until_logs<F>(c: &Arc<dyn Compute>, name: &str, what: &str, pred: F)
where
    F: Fn(&[crate::compute::LogLine]) -> bool,
{
    let deadline = Instant::now() + WAIT;
    loop {
        let lines = all_logs(c, name).await;
        if pred(&lines) {
            return;
        }
        if Instant::now() >= deadline {
            panic!("`{name}`: {what} not in the logs within {WAIT:?}; lines: {lines:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Cases

async fn info_and_capabilities(c: Arc<dyn Compute>) {
    let info = c.info();
    assert!(!info.backend.is_empty(), "backend name is empty");
    assert!(!info.location.provider.is_empty(), "provider is empty");
    let caps = c.capabilities();
    assert!(
        caps.commands || caps.images,
        "a compute backend must run commands or images: {caps:?}"
    );
}

async fn apply_creates_and_becomes_ready(c: Arc<dyn Compute>) {
    if !runs_programs(&c).await {
        return;
    }
    let n = name("create");
    let spec = sleeper(&n).with_replicas(2).with_label("suite", "compute");
    let created = apply_ok(&c, spec.clone()).await;
    assert_eq!(created.name, n);
    assert_eq!(created.desired_replicas, 2);
    assert!(created.generation >= 1, "generation starts at 1 or more");
    assert_eq!(created.spec, spec, "status carries the spec in force");

    let status = ready(&c, &n).await;
    assert_eq!(status.phase, Phase::Running);
    assert_eq!(status.ready_replicas, 2);
    assert_eq!(status.desired_replicas, 2);
    assert_eq!(status.instances.len(), 2, "{status:?}");
    assert_eq!(
        ids(&status).len(),
        2,
        "instance ids are distinct: {status:?}"
    );
    assert_eq!(indexes(&status), vec![0, 1]);
    for i in &status.instances {
        assert_eq!(i.phase, Phase::Running);
        assert!(!i.id.is_empty());
    }
    assert_eq!(status.generation, created.generation);
    assert!(c.delete(&n).await.unwrap());
    assert!(c.get(&n).await.unwrap().is_none());
}

async fn apply_same_spec_is_idempotent(c: Arc<dyn Compute>) {
    if !runs_programs(&c).await {
        return;
    }
    let n = name("idem");
    let spec = sleeper(&n).with_replicas(2).with_env("MODE", "a");
    apply_ok(&c, spec.clone()).await;
    let before = ready(&c, &n).await;

    let again = apply_ok(&c, spec.clone()).await;
    assert_eq!(
        again.generation, before.generation,
        "same spec: same generation"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = ready(&c, &n).await;
    assert_eq!(after.generation, before.generation);
    assert_eq!(ids(&after), ids(&before), "same spec: instances kept");
    assert!(
        after.instances.iter().all(|i| i.restarts == 0),
        "same spec: nothing restarted: {after:?}"
    );
    cleanup(&c, &n).await;
}

async fn apply_changed_spec_replaces_instances(c: Arc<dyn Compute>) {
    if !runs_programs(&c).await {
        return;
    }
    let n = name("change");
    apply_ok(&c, sleeper(&n).with_env("MODE", "a")).await;
    let first = ready(&c, &n).await;

    // A changed env is a new program: new generation, new instances.
    let changed = sleeper(&n).with_env("MODE", "b");
    let status = apply_ok(&c, changed.clone()).await;
    assert!(
        status.generation > first.generation,
        "env change must bump the generation"
    );
    assert_eq!(status.spec, changed);
    let second = until(&c, &n, "instance replaced after env change", |s| {
        s.ready_replicas == 1 && s.instances.len() == 1 && ids(s).is_disjoint(&ids(&first))
    })
    .await;
    assert_eq!(second.phase, Phase::Running);

    // So are changed args.
    let args = program(&n, "echo other; exec sleep 3600").with_env("MODE", "b");
    let status = apply_ok(&c, args).await;
    assert!(
        status.generation > second.generation,
        "args change bumps it"
    );
    until(&c, &n, "instance replaced after args change", |s| {
        s.ready_replicas == 1 && s.instances.len() == 1 && ids(s).is_disjoint(&ids(&second))
    })
    .await;
    cleanup(&c, &n).await;
}

async fn labels_change_keeps_instances(c: Arc<dyn Compute>) {
    if !runs_programs(&c).await {
        return;
    }
    let n = name("labels");
    apply_ok(&c, sleeper(&n).with_label("v", "1")).await;
    let first = ready(&c, &n).await;
    let status = apply_ok(&c, sleeper(&n).with_label("v", "2")).await;
    assert!(
        status.generation > first.generation,
        "a label change is a spec change"
    );
    assert_eq!(status.spec.labels.get("v").map(String::as_str), Some("2"));
    let after = ready(&c, &n).await;
    assert_eq!(
        ids(&after),
        ids(&first),
        "labels alone do not restart the program"
    );
    cleanup(&c, &n).await;
}

async fn scale_up_and_down(c: Arc<dyn Compute>) {
    if !runs_programs(&c).await {
        return;
    }
    let n = name("scale");
    apply_ok(&c, sleeper(&n)).await;
    let one = ready(&c, &n).await;
    if !c.capabilities().scale {
        assert_kind(c.scale(&n, 3).await, ErrorKind::Unsupported, "scale");
        cleanup(&c, &n).await;
        return;
    }
    let status = c.scale(&n, 3).await.unwrap();
    assert_eq!(status.desired_replicas, 3);
    assert_eq!(status.spec.replicas, 3);
    let three = ready(&c, &n).await;
    assert_eq!(three.ready_replicas, 3);
    assert_eq!(three.instances.len(), 3);
    assert_eq!(ids(&three).len(), 3);
    assert_eq!(indexes(&three), vec![0, 1, 2]);
    assert!(
        ids(&one).is_subset(&ids(&three)),
        "scaling up keeps the running instance"
    );

    let status = c.scale(&n, 1).await.unwrap();
    assert_eq!(status.desired_replicas, 1);
    let down = until(&c, &n, "scale down to 1", |s| {
        s.instances.len() == 1 && s.ready_replicas == 1
    })
    .await;
    assert_eq!(down.phase, Phase::Running);
    assert_eq!(indexes(&down), vec![0]);

    c.scale(&n, 0).await.unwrap();
    let stopped = phase(&c, &n, Phase::Stopped).await;
    assert_eq!(stopped.desired_replicas, 0);
    assert!(
        stopped.instances.iter().all(|i| i.phase != Phase::Running),
        "{stopped:?}"
    );
    cleanup(&c, &n).await;
}

async fn scale_absent_is_not_found(c: Arc<dyn Compute>) {
    let n = name("scale-absent");
    let kind = if c.capabilities().scale {
        ErrorKind::NotFound
    } else {
        ErrorKind::Unsupported
    };
    assert_kind(c.scale(&n, 2).await, kind, "scale of an absent workload");
    assert!(c.get(&n).await.unwrap().is_none(), "scale must not create");
}

async fn restart_always_restarts(c: Arc<dyn Compute>) {
    if !runs_programs(&c).await {
        return;
    }
    let n = name("always");
    let spec = program(&n, "echo started; sleep 1; exit 3").with_restart(RestartPolicy::Always);
    apply_ok(&c, spec).await;
    let status = until(&c, &n, "a restart and the instance running again", |s| {
        s.instances
            .iter()
            .any(|i| i.index == 0 && i.restarts >= 1 && i.phase == Phase::Running)
    })
    .await;
    let i = &status.instances[0];
    assert_eq!(
        i.exit_code,
        Some(3),
        "exit code of the last run: {status:?}"
    );
    assert_ne!(status.phase, Phase::Failed);
    cleanup(&c, &n).await;
}

async fn restart_on_failure(c: Arc<dyn Compute>) {
    if !runs_programs(&c).await {
        return;
    }
    let failing = name("onfail-1");
    let passing = name("onfail-0");
    apply_ok(&c, job(&failing, 1).with_restart(RestartPolicy::OnFailure)).await;
    apply_ok(&c, job(&passing, 0).with_restart(RestartPolicy::OnFailure)).await;

    until(&c, &failing, "a restart after exit 1", |s| {
        s.instances.iter().any(|i| i.restarts >= 1)
    })
    .await;
    let failing_status = get_some(&c, &failing).await;
    assert_ne!(failing_status.phase, Phase::Succeeded);

    let done = phase(&c, &passing, Phase::Succeeded).await;
    assert_eq!(done.ready_replicas, done.desired_replicas);
    assert_eq!(done.instances.len(), 1);
    assert_eq!(done.instances[0].exit_code, Some(0));
    assert_eq!(done.instances[0].restarts, 0, "exit 0 is not restarted");
    assert_eq!(done.instances[0].phase, Phase::Succeeded);
    // wait_ready accepts a finished job.
    assert_eq!(ready(&c, &passing).await.phase, Phase::Succeeded);
    cleanup(&c, &failing).await;
    cleanup(&c, &passing).await;
}

async fn restart_never(c: Arc<dyn Compute>) {
    if !runs_programs(&c).await {
        return;
    }
    let failing = name("never-1");
    let passing = name("never-0");
    apply_ok(&c, job(&failing, 1)).await;
    apply_ok(&c, job(&passing, 0)).await;

    let failed = phase(&c, &failing, Phase::Failed).await;
    assert_eq!(failed.instances.len(), 1);
    assert_eq!(failed.instances[0].exit_code, Some(1));
    assert_eq!(failed.instances[0].phase, Phase::Failed);
    assert_kind(
        c.wait_ready(&failing, WAIT).await,
        ErrorKind::Internal,
        "wait_ready of a failed job",
    );

    let done = phase(&c, &passing, Phase::Succeeded).await;
    assert_eq!(done.instances[0].exit_code, Some(0));

    // Give a wrong backend the chance to restart them anyway.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let failed = get_some(&c, &failing).await;
    assert_eq!(failed.phase, Phase::Failed);
    assert_eq!(failed.instances[0].restarts, 0, "Never means never");
    let done = get_some(&c, &passing).await;
    assert_eq!(done.phase, Phase::Succeeded);
    assert_eq!(done.instances[0].restarts, 0);
    cleanup(&c, &failing).await;
    cleanup(&c, &passing).await;
}

async fn logs_in_order_and_paged(c: Arc<dyn Compute>) {
    if !runs_programs(&c).await {
        return;
    }
    let n = name("logs");
    let spec = program(
        &n,
        "echo one; echo two; echo 'three  spaced'; echo oops >&2; exit 0",
    )
    .with_restart(RestartPolicy::Never);
    if !c.capabilities().logs {
        apply_ok(&c, spec).await;
        assert_kind(
            c.logs(&n, LogOptions::default()).await,
            ErrorKind::Unsupported,
            "logs",
        );
        cleanup(&c, &n).await;
        return;
    }
    apply_ok(&c, spec).await;
    phase(&c, &n, Phase::Succeeded).await;
    until_logs(&c, &n, "all four lines", |lines| lines.len() >= 4).await;

    let lines = all_logs(&c, &n).await;
    let stdout: Vec<&str> = lines
        .iter()
        .filter(|l| l.stream == LogStream::Stdout)
        .map(|l| l.line.as_str())
        .collect();
    assert_eq!(stdout, vec!["one", "two", "three  spaced"], "{lines:?}");
    let stderr: Vec<&str> = lines
        .iter()
        .filter(|l| l.stream == LogStream::Stderr)
        .map(|l| l.line.as_str())
        .collect();
    assert_eq!(stderr, vec!["oops"], "{lines:?}");
    assert!(lines.iter().all(|l| l.instance == 0));
    assert!(
        lines.windows(2).all(|w| w[0].sequence < w[1].sequence),
        "sequences strictly increase: {lines:?}"
    );

    // Paging: `since` is inclusive, `limit` cuts, `next_since` continues.
    let two = lines.iter().find(|l| l.line == "two").unwrap();
    let page = c
        .logs(
            &n,
            LogOptions {
                since: two.sequence,
                limit: Some(1),
            },
        )
        .await
        .unwrap();
    assert_eq!(page.lines.len(), 1);
    assert_eq!(page.lines[0], *two);
    assert_eq!(page.next_since, two.sequence + 1);
    let rest = c
        .logs(
            &n,
            LogOptions {
                since: page.next_since,
                limit: None,
            },
        )
        .await
        .unwrap();
    assert!(rest.lines.iter().all(|l| l.sequence > two.sequence));
    assert!(rest.lines.iter().any(|l| l.line == "three  spaced"));
    assert!(
        !rest
            .lines
            .iter()
            .any(|l| l.line == "one" || l.line == "two")
    );

    // Past the end: nothing, and next_since does not go backwards.
    let last = lines.last().unwrap().sequence;
    let empty = c
        .logs(
            &n,
            LogOptions {
                since: last + 1,
                limit: None,
            },
        )
        .await
        .unwrap();
    assert!(empty.lines.is_empty(), "{empty:?}");
    assert!(empty.next_since > last);
    cleanup(&c, &n).await;
}

async fn logs_of_absent_is_not_found(c: Arc<dyn Compute>) {
    let n = name("logs-absent");
    let kind = if c.capabilities().logs {
        ErrorKind::NotFound
    } else {
        ErrorKind::Unsupported
    };
    assert_kind(
        c.logs(&n, LogOptions::default()).await,
        kind,
        "logs of an absent workload",
    );
}

async fn env_reaches_program(c: Arc<dyn Compute>) {
    if !runs_programs(&c).await {
        return;
    }
    let n = name("env");
    let spec = program(
        &n,
        "echo \"greeting=$GREETING\"; echo \"${OTHER}!\"; exec sleep 3600",
    )
    .with_env("GREETING", "hello-env")
    .with_env("OTHER", "x y");
    apply_ok(&c, spec).await;
    ready(&c, &n).await;
    if c.capabilities().logs {
        until_logs(&c, &n, "the env values", |lines| {
            lines.iter().any(|l| l.line == "greeting=hello-env")
                && lines.iter().any(|l| l.line == "x y!")
        })
        .await;
    } else {
        assert_kind(
            c.logs(&n, LogOptions::default()).await,
            ErrorKind::Unsupported,
            "logs",
        );
    }
    cleanup(&c, &n).await;
}

async fn delete_removes_workload(c: Arc<dyn Compute>) {
    if !runs_programs(&c).await {
        return;
    }
    let n = name("delete");
    apply_ok(&c, sleeper(&n).with_replicas(2)).await;
    ready(&c, &n).await;
    assert!(c.delete(&n).await.unwrap(), "delete of a present workload");
    assert!(c.get(&n).await.unwrap().is_none());
    assert!(!c.delete(&n).await.unwrap(), "delete of an absent workload");
    let all = c.list(&BTreeMap::new()).await.unwrap();
    assert!(all.iter().all(|s| s.name != n), "deleted workload listed");
    if c.capabilities().logs {
        assert_kind(
            c.logs(&n, LogOptions::default()).await,
            ErrorKind::NotFound,
            "logs after delete",
        );
    }
    // The name is free again.
    apply_ok(&c, sleeper(&n)).await;
    ready(&c, &n).await;
    assert!(c.delete(&n).await.unwrap());
}

async fn list_by_labels(c: Arc<dyn Compute>) {
    if !runs_programs(&c).await {
        return;
    }
    let app = unique_name("app");
    let names: Vec<String> = (0..3).map(|i| name(&format!("list{i}"))).collect();
    let tiers = ["a", "b", "a"];
    for (n, tier) in names.iter().zip(tiers) {
        apply_ok(
            &c,
            sleeper(n).with_label("app", &app).with_label("tier", tier),
        )
        .await;
    }
    let selector = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let listed: Vec<String> = c
        .list(&selector(&[("app", &app)]))
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    let mut expected = names.clone();
    expected.sort();
    assert_eq!(listed, expected, "list is by name");

    let tier_a: Vec<String> = c
        .list(&selector(&[("app", &app), ("tier", "a")]))
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    let mut expected_a = vec![names[0].clone(), names[2].clone()];
    expected_a.sort();
    assert_eq!(tier_a, expected_a);

    let none = c
        .list(&selector(&[("app", &app), ("tier", "c")]))
        .await
        .unwrap();
    assert!(none.is_empty());

    let everything = c.list(&BTreeMap::new()).await.unwrap();
    for n in &names {
        assert!(
            everything.iter().any(|s| &s.name == n),
            "empty selector lists all"
        );
    }
    assert!(
        everything.windows(2).all(|w| w[0].name < w[1].name),
        "list is sorted by name"
    );
    for n in &names {
        cleanup(&c, n).await;
    }
}

async fn get_absent_is_none(c: Arc<dyn Compute>) {
    let n = name("absent");
    assert!(c.get(&n).await.unwrap().is_none());
    assert!(!c.delete(&n).await.unwrap());
}

async fn invalid_arguments(c: Arc<dyn Compute>) {
    let caps = c.capabilities();
    // A spec the backend would otherwise accept, so only the broken field is wrong.
    let base = |n: &str| {
        if caps.commands {
            sleeper(n)
        } else {
            WorkloadSpec::image(n, "busybox").with_args(["sleep", "3600"])
        }
    };
    let long = "a".repeat(64);
    for bad in ["", "Bad Name", long.as_str(), "1abc", "a/b"] {
        assert_kind(
            c.apply(base(bad)).await,
            ErrorKind::InvalidArgument,
            &format!("apply with name {bad:?}"),
        );
        assert_kind(c.get(bad).await, ErrorKind::InvalidArgument, "get bad name");
        assert_kind(
            c.delete(bad).await,
            ErrorKind::InvalidArgument,
            "delete bad name",
        );
        if caps.scale {
            assert_kind(
                c.scale(bad, 1).await,
                ErrorKind::InvalidArgument,
                "scale bad name",
            );
        }
        if caps.logs {
            assert_kind(
                c.logs(bad, LogOptions::default()).await,
                ErrorKind::InvalidArgument,
                "logs bad name",
            );
        }
    }

    let n = name("invalid");
    let mut too_many = base(&n);
    too_many.replicas = MAX_REPLICAS + 1;
    assert_kind(
        c.apply(too_many).await,
        ErrorKind::InvalidArgument,
        "more than MAX_REPLICAS",
    );
    let mut absurd = base(&n);
    absurd.replicas = u32::MAX;
    assert_kind(
        c.apply(absurd).await,
        ErrorKind::InvalidArgument,
        "u32::MAX replicas",
    );

    let nothing = WorkloadSpec {
        name: n.clone(),
        replicas: 1,
        ..WorkloadSpec::default()
    };
    assert_kind(
        c.apply(nothing).await,
        ErrorKind::InvalidArgument,
        "neither command nor image",
    );
    let mut empty_command = base(&n);
    empty_command.command = Some(String::new());
    if caps.commands {
        empty_command.image = None;
    }
    assert_kind(
        c.apply(empty_command).await,
        ErrorKind::InvalidArgument,
        "empty command",
    );
    assert_kind(
        c.apply(base(&n).with_env("", "x")).await,
        ErrorKind::InvalidArgument,
        "empty env name",
    );
    assert_kind(
        c.apply(base(&n).with_env("A=B", "x")).await,
        ErrorKind::InvalidArgument,
        "env name with `=`",
    );
    assert_kind(
        c.apply(base(&n).with_env("A", "nul\0")).await,
        ErrorKind::InvalidArgument,
        "env value with NUL",
    );
    assert!(
        c.get(&n).await.unwrap().is_none(),
        "a rejected spec must not create anything"
    );
    if caps.scale {
        apply_ok(&c, base(&n)).await;
        assert_kind(
            c.scale(&n, MAX_REPLICAS + 1).await,
            ErrorKind::InvalidArgument,
            "scale beyond MAX_REPLICAS",
        );
        assert_eq!(get_some(&c, &n).await.desired_replicas, 1);
        cleanup(&c, &n).await;
    }
}

async fn ports_and_endpoints(c: Arc<dyn Compute>) {
    if !runs_programs(&c).await {
        return;
    }
    let n = name("ports");
    // A port number unlikely to be taken; the program does not need to bind it.
    let port = 20_000 + (rand_u16() % 20_000);
    let mut spec = sleeper(&n);
    spec.ports.push(PortSpec {
        name: "http".to_string(),
        port,
    });
    if !c.capabilities().ports {
        assert_kind(c.apply(spec).await, ErrorKind::Unsupported, "ports");
        assert!(c.get(&n).await.unwrap().is_none());
        return;
    }
    let mut dup = spec.clone();
    dup.ports.push(PortSpec {
        name: "http".to_string(),
        port: port + 1,
    });
    assert_kind(
        c.apply(dup).await,
        ErrorKind::InvalidArgument,
        "duplicate port name",
    );
    let mut zero = sleeper(&n);
    zero.ports.push(PortSpec {
        name: "http".to_string(),
        port: 0,
    });
    assert_kind(c.apply(zero).await, ErrorKind::InvalidArgument, "port 0");

    apply_ok(&c, spec).await;
    let status = ready(&c, &n).await;
    for i in &status.instances {
        let endpoint = i.endpoints.get("http");
        assert!(
            endpoint.is_some_and(|e| !e.is_empty()),
            "endpoint `http` reported: {status:?}"
        );
    }
    cleanup(&c, &n).await;
}

async fn images(c: Arc<dyn Compute>) {
    let n = name("image");
    let spec = WorkloadSpec::image(&n, "busybox").with_args(["sleep", "3600"]);
    if !c.capabilities().images {
        assert_kind(c.apply(spec).await, ErrorKind::Unsupported, "image spec");
        assert!(c.get(&n).await.unwrap().is_none());
        return;
    }
    let status = apply_ok(&c, spec).await;
    assert_eq!(status.spec.image.as_deref(), Some("busybox"));
    ready(&c, &n).await;
    cleanup(&c, &n).await;
}

async fn resource_limits(c: Arc<dyn Compute>) {
    if !runs_programs(&c).await {
        return;
    }
    let n = name("limits");
    let mut spec = sleeper(&n);
    spec.cpu_millis = Some(250);
    spec.memory_mib = Some(64);
    if !c.capabilities().resource_limits {
        assert_kind(
            c.apply(spec).await,
            ErrorKind::Unsupported,
            "cpu/memory limits",
        );
        assert!(c.get(&n).await.unwrap().is_none());
        return;
    }
    let mut zero = spec.clone();
    zero.memory_mib = Some(0);
    assert_kind(c.apply(zero).await, ErrorKind::InvalidArgument, "0 MiB");
    let status = apply_ok(&c, spec).await;
    assert_eq!(status.spec.cpu_millis, Some(250));
    ready(&c, &n).await;
    cleanup(&c, &n).await;
}

fn rand_u16() -> u16 {
    use rand::Rng;
    rand::rng().random()
}

// ---------------------------------------------------------------------------------------------
// Model test

#[derive(Debug, Clone)]
enum Op {
    Apply(usize, u32),
    Scale(usize, u32),
    Delete(usize),
    Get(usize),
}

fn op_strategy(names: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..names, 0..=3u32).prop_map(|(n, k)| Op::Apply(n, k)),
        2 => (0..names, 0..=3u32).prop_map(|(n, k)| Op::Scale(n, k)),
        2 => (0..names).prop_map(Op::Delete),
        1 => (0..names).prop_map(Op::Get),
    ]
}

/// [`run_model_test_with`] with 32 cases of up to 8 steps.
pub fn run_model_test(make: impl Fn() -> Arc<dyn Compute>) {
    run_model_test_with(32, 8, make);
}

/// Runs `cases` random sequences of at most `max_steps` apply / scale / delete / get
/// operations over three workload names (sleeper programs) and compares, after every step,
/// each workload's existence and desired replicas with a map model. `make` is called once
/// per sequence, inside the test's own tokio runtime; `PROPTEST_CASES` overrides `cases`.
///
/// Synchronous: call it from a plain `#[test]`.
pub fn run_model_test_with(cases: u32, max_steps: usize, make: impl Fn() -> Arc<dyn Compute>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut runner = TestRunner::new(Config {
        cases: proptest_cases(cases),
        failure_persistence: None,
        ..Config::default()
    });
    let names = 3;
    let strategy = proptest::collection::vec(op_strategy(names), 1..=max_steps.max(1));
    let result = runner.run(&strategy, |ops| {
        let compute = {
            let _guard = rt.enter();
            make()
        };
        let outcome = rt.block_on(check_sequence(Arc::clone(&compute), names, &ops));
        {
            // Drop inside the runtime so that backends can clean up their tasks.
            let _guard = rt.enter();
            drop(compute);
        }
        outcome
    });
    if let Err(e) = result {
        panic!("compute model test failed: {e}");
    }
}

async fn check_sequence(
    c: Arc<dyn Compute>,
    count: usize,
    ops: &[Op],
) -> Result<(), TestCaseError> {
    let names: Vec<String> = (0..count).map(|i| name(&format!("model{i}"))).collect();
    let outcome = run_ops(&c, &names, ops).await;
    for n in &names {
        let _ = c.delete(n).await;
    }
    outcome
}

async fn run_ops(c: &Arc<dyn Compute>, names: &[String], ops: &[Op]) -> Result<(), TestCaseError> {
    let can_scale = c.capabilities().scale;
    let mut model: BTreeMap<usize, u32> = BTreeMap::new();
    for (step, op) in ops.iter().enumerate() {
        match *op {
            Op::Apply(i, k) => {
                let status = c
                    .apply(sleeper(&names[i]).with_replicas(k))
                    .await
                    .map_err(|e| TestCaseError::fail(format!("step {step} {op:?}: {e}")))?;
                prop_assert_eq!(status.desired_replicas, k, "step {} {:?}", step, op);
                model.insert(i, k);
            }
            Op::Scale(i, k) => {
                let result = c.scale(&names[i], k).await;
                match (can_scale, model.contains_key(&i), result) {
                    (false, _, Err(e)) => {
                        prop_assert_eq!(e.kind(), ErrorKind::Unsupported, "step {}", step)
                    }
                    (true, false, Err(e)) => {
                        prop_assert_eq!(e.kind(), ErrorKind::NotFound, "step {}", step)
                    }
                    (true, true, Ok(status)) => {
                        prop_assert_eq!(status.desired_replicas, k, "step {} {:?}", step, op);
                        model.insert(i, k);
                    }
                    (_, exists, result) => {
                        return Err(TestCaseError::fail(format!(
                            "step {step} {op:?}: scale (exists: {exists}) returned {result:?}"
                        )));
                    }
                }
            }
            Op::Delete(i) => {
                let existed = c
                    .delete(&names[i])
                    .await
                    .map_err(|e| TestCaseError::fail(format!("step {step} {op:?}: {e}")))?;
                prop_assert_eq!(
                    existed,
                    model.remove(&i).is_some(),
                    "step {} {:?}",
                    step,
                    op
                );
            }
            Op::Get(i) => {
                let got = c
                    .get(&names[i])
                    .await
                    .map_err(|e| TestCaseError::fail(format!("step {step} {op:?}: {e}")))?;
                prop_assert_eq!(
                    got.map(|s| s.desired_replicas),
                    model.get(&i).copied(),
                    "step {} {:?}",
                    step,
                    op
                );
            }
        }
        // After every step, every name matches the model.
        for (i, n) in names.iter().enumerate() {
            let got = c
                .get(n)
                .await
                .map_err(|e| TestCaseError::fail(format!("step {step} get: {e}")))?;
            match (model.get(&i), got) {
                (None, None) => {}
                (Some(&k), Some(status)) => {
                    prop_assert_eq!(
                        status.desired_replicas,
                        k,
                        "step {} {:?} name {}",
                        step,
                        op,
                        i
                    );
                    prop_assert_eq!(status.spec.replicas, k);
                    if k == 0 {
                        prop_assert!(
                            status.ready_replicas == 0,
                            "step {} {:?}: ready replicas with 0 desired",
                            step,
                            op
                        );
                    }
                }
                (want, got) => {
                    return Err(TestCaseError::fail(format!(
                        "step {step} {op:?}: name {i}: model says {want:?}, backend says {got:?}"
                    )));
                }
            }
        }
        let listed = c
            .list(&BTreeMap::new())
            .await
            .map_err(|e| TestCaseError::fail(format!("step {step} list: {e}")))?;
        for (i, n) in names.iter().enumerate() {
            prop_assert_eq!(
                listed.iter().any(|s| &s.name == n),
                model.contains_key(&i),
                "step {} {:?}: list disagrees for name {}",
                step,
                op,
                i
            );
        }
    }
    Ok(())
}
