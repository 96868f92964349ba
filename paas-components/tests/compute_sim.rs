//! The simulated compute backend against the conformance kit.
#![cfg(feature = "sim")]

use cloud_abstraction::compute::{Compute, ComputeExt, Phase, RestartPolicy, WorkloadSpec};
use cloud_abstraction::testkit::compute as kit;
use paas_components::compute::SimCompute;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    let compute: Arc<dyn Compute> = Arc::new(SimCompute::new());
    let report = kit::run_suite(compute).await;
    assert_eq!(report.passed.len(), kit::cases().len());
}

#[test]
fn model() {
    kit::run_model_test(|| Arc::new(SimCompute::new()));
}

#[tokio::test]
async fn claims_to_be_a_simulation() {
    let compute = SimCompute::new();
    let caps = compute.capabilities();
    assert!(caps.simulated);
    assert!(caps.images && caps.commands);
    assert_eq!(compute.info().backend, "sim");
}

#[tokio::test]
async fn image_services_run_until_stopped() {
    let compute = SimCompute::new();
    let spec = WorkloadSpec::image("web", "nginx:1.27").with_replicas(3);
    compute.apply(spec).await.unwrap();
    let status = compute
        .wait_ready("web", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(status.phase, Phase::Running);
    assert_eq!(status.ready_replicas, 3);
    assert!(status.instances.iter().all(|i| i.id.starts_with("sim-")));
    assert!(compute.delete("web").await.unwrap());
}

#[tokio::test(start_paused = true)]
async fn restart_back_off_grows() {
    // Paused time: the simulated back-off (100 ms doubling) elapses instantly but in order.
    let compute = SimCompute::new();
    let spec = WorkloadSpec::command("crash", "sh")
        .with_args(["-c", "exit 1"])
        .with_restart(RestartPolicy::Always);
    compute.apply(spec).await.unwrap();
    // 100 + 200 + 400 + 800 ms of back-off fit in 1.6 s: at least 4 restarts, fewer than 16.
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    let status = compute.get("crash").await.unwrap().unwrap();
    let restarts = status.instances[0].restarts;
    assert!((4..16).contains(&restarts), "restarts: {restarts}");
    assert_eq!(status.instances[0].exit_code, Some(1));
}
