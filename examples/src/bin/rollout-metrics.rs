//! Rollout metrics: a scripted series of rollouts of one service over three clouds, then
//! the four delivery measures (DORA) per cloud, as a table and an SVG chart.
//!
//! ```text
//! rollout-metrics [--backend process|sim] [--svg FILE]
//! ```
//!
//! The script: the placement solver plans a survivable placement over three regions (one
//! per cloud); `v1` and `v2` roll out (canary region first); `v3` has a workload that exits
//! at once, fails the canary's gate and is rolled back; then the `gcp` cloud is lost, the
//! solver's `resolve` re-plans from the running plan and only the difference is applied;
//! `v4` rolls out over the two clouds left. Every step is a record in a document store, and
//! the measures are computed from those records. Each line of the table is
//! `service cloud deploys failures per_day lead_time cfr restore`.
//!
//! `process` (default) runs each replica as a local process (`sh -c 'exec sleep …'`); every
//! workload is deleted at the end.

use cloud_abstraction::Location;
use cloud_abstraction::compute::{Compute, RestartPolicy, WorkloadSpec};
use cloud_abstraction::database::DocumentStore;
use cloud_placement::model::{Model, Plan};
use cloud_placement::{ResolveOptions, SolveOptions, resolve, solve};
use paas_components::compute::{ProcessCompute, SimCompute};
use paas_components::database::MemoryDocumentStore;
use paas_components::deploy::metrics::{self, DoraRow};
use paas_components::deploy::{
    COMMIT_TIME_LABEL, Driver, Gate, Placement, Progress, Records, RolloutRequest, canary_stages,
};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const USAGE: &str = "usage: rollout-metrics [--backend process|sim] [--svg FILE]";

/// Three providers with one region each (gcp the cheapest); each unit spans two of them.
const MODEL: &str = r#"{
  "dimensions": ["cpu"],
  "providers": [
    {"id": "aws", "regions": [{"id": "aws-eu", "capacity": {"cpu": 8}, "price": {"cpu": 1.0}}]},
    {"id": "gcp", "regions": [{"id": "gcp-us", "capacity": {"cpu": 8}, "price": {"cpu": 0.9}}]},
    {"id": "azure", "regions": [{"id": "azure-asia", "capacity": {"cpu": 8}, "price": {"cpu": 1.2}}]}
  ],
  "units": [
    {"id": "api", "replicas": 3, "demand": {"cpu": 1}, "spread": {"min_providers": 2}, "migration_cost": 1},
    {"id": "worker", "replicas": 2, "demand": {"cpu": 1}, "spread": {"min_providers": 2}, "migration_cost": 1}
  ]
}"#;

/// The solver's plan (unit -> one region per replica) as the deploy module's placement.
fn placement_of(plan: &Plan) -> Placement {
    let mut placement = Placement::default();
    for (unit, regions) in &plan.placements {
        for region in regions {
            let n = placement.count(unit, region);
            placement = placement.with(unit, region, n + 1);
        }
    }
    placement
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn spec(unit: &str, version: &str, commit_s: u64, broken: bool) -> WorkloadSpec {
    let script = if broken { "exit 3" } else { "exec sleep 3600" };
    WorkloadSpec::command(unit, "sh")
        .with_args(["-c", script])
        .with_env("VERSION", version)
        .with_label(COMMIT_TIME_LABEL, commit_s.to_string())
        .with_restart(if broken {
            RestartPolicy::Never
        } else {
            RestartPolicy::Always
        })
}

fn request(
    id: &str,
    version: &str,
    placement: &Placement,
    commit_s: u64,
    broken: bool,
) -> RolloutRequest {
    let units = ["api", "worker"]
        .into_iter()
        .map(|u| {
            (
                u.to_string(),
                spec(u, version, commit_s, broken && u == "api"),
            )
        })
        .collect();
    RolloutRequest {
        id: id.into(),
        service: "shop".into(),
        version: version.into(),
        actor: "rollout-metrics".into(),
        units,
        placement: placement.clone(),
        previous: None,
        stages: canary_stages("aws-eu", placement),
        gate: Gate {
            ready_timeout: Duration::from_secs(10),
            observe: Duration::from_millis(300),
            error_budget: 0,
        },
    }
}

async fn run(driver: &Driver, request: &RolloutRequest) -> Result<(), String> {
    let progress = driver.run(request).await.map_err(|e| e.to_string())?;
    let Progress::Done(state) = progress else {
        return Err(format!("rollout {} did not finish", request.id));
    };
    let steps = driver.steps(&request.id).await.map_err(|e| e.to_string())?;
    println!(
        "rollout {:<12} {:<3} {:<11} {} steps",
        request.id,
        request.version,
        format!("{state:?}").to_lowercase(),
        steps.len()
    );
    Ok(())
}

/// One measure of a row, as drawn.
type Measure = fn(&DoraRow) -> f64;

/// Four panels (one per measure), one bar per (service, cloud).
fn svg(rows: &[DoraRow]) -> String {
    let panels: [(&str, Measure); 4] = [
        ("deployments / day", |r| r.deployments_per_day),
        ("lead time (s)", |r| r.lead_time_ms.unwrap_or(0.0) / 1000.0),
        ("change failure rate (%)", |r| {
            r.change_failure_rate.unwrap_or(0.0) * 100.0
        }),
        ("time to restore (s)", |r| {
            r.time_to_restore_ms.unwrap_or(0.0) / 1000.0
        }),
    ];
    let (pw, ph, bar_area) = (220.0, 260.0, 180.0);
    let colours = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2"];
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif" font-size="11">"#,
        pw * 4.0,
        ph + 20.0
    );
    out.push_str("\n<title>Delivery metrics per cloud</title>\n");
    for (p, (title, value)) in panels.iter().enumerate() {
        let x0 = p as f64 * pw;
        out.push_str(&format!(
            "<g class=\"panel\"><text x=\"{:.0}\" y=\"16\" font-weight=\"bold\">{title}</text>\n",
            x0 + 10.0
        ));
        let max = rows.iter().map(value).fold(0.0_f64, f64::max).max(1e-9);
        let bw = (pw - 40.0) / rows.len().max(1) as f64;
        for (i, r) in rows.iter().enumerate() {
            let v = value(r);
            let h = v / max * bar_area;
            let x = x0 + 20.0 + i as f64 * bw;
            let y = 30.0 + bar_area - h;
            out.push_str(&format!(
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{}\"><title>{}/{}: {v:.2}</title></rect>\n",
                bw * 0.8,
                colours[i % colours.len()],
                r.service,
                r.cloud
            ));
            out.push_str(&format!(
                "<text x=\"{x:.1}\" y=\"{:.1}\">{v:.1}</text><text x=\"{x:.1}\" y=\"{:.1}\">{}</text>\n",
                y - 3.0,
                30.0 + bar_area + 15.0,
                r.cloud
            ));
        }
        out.push_str("</g>\n");
    }
    out.push_str("</svg>\n");
    out
}

async fn script(backend: &str, svg_path: &PathBuf) -> Result<(), String> {
    let model = Model::from_json(MODEL).map_err(|e| e.to_string())?;
    // A model of five replicas: a short deterministic search is plenty (and quick in a
    // debug build).
    let opts = SolveOptions {
        survivable: true,
        max_scans: 20_000,
        ..SolveOptions::default()
    };
    let first = solve(&model, &opts).map_err(|e| e.to_string())?;
    let placement = placement_of(&first.plan);
    println!("plan: {:?}", placement.units);

    let mut targets: BTreeMap<String, Arc<dyn Compute>> = BTreeMap::new();
    for provider in &model.providers {
        for region in &provider.regions {
            let location = Location::new(provider.id.clone(), region.id.clone());
            let compute: Arc<dyn Compute> = match backend {
                "process" => Arc::new(ProcessCompute::new().with_location(location)),
                _ => Arc::new(SimCompute::new().with_location(location)),
            };
            targets.insert(region.id.clone(), compute);
        }
    }
    let all_targets = targets.clone();
    let store: Arc<dyn DocumentStore> = Arc::new(MemoryDocumentStore::new());
    let start_s = now_s();
    let driver = Driver::new("rollout-metrics", targets.clone(), store.clone());
    run(
        &driver,
        &request("shop-v1", "v1", &placement, start_s - 3600, false),
    )
    .await?;
    run(
        &driver,
        &request("shop-v2", "v2", &placement, start_s - 1800, false),
    )
    .await?;
    run(
        &driver,
        &request("shop-v3", "v3", &placement, start_s - 900, true),
    )
    .await?;

    // The gcp cloud is lost: re-plan from the running plan, apply only the difference. Not
    // survivable any more: with two clouds left, a unit spread over two providers cannot
    // survive the loss of a second one (the solver says so rather than pretend).
    let down = model.with_provider_down("gcp");
    let resolve_opts = ResolveOptions {
        solve: SolveOptions {
            survivable: false,
            ..opts.clone()
        },
        ..ResolveOptions::default()
    };
    let replan = resolve(&down, &first.plan, &resolve_opts).map_err(|e| e.to_string())?;
    let new_placement = placement_of(&replan.plan);
    println!("re-plan without gcp: {:?}", new_placement.units);
    targets.remove("gcp-us");
    let driver = Driver::new("rollout-metrics", targets.clone(), store.clone());
    let mut r = request("shop-replan", "v2", &new_placement, start_s - 1800, false);
    r.previous = Some(placement.clone());
    r.stages = vec![
        vec!["aws-eu".into()],
        vec!["azure-asia".into(), "gcp-us".into()],
    ];
    run(&driver, &r).await?;
    run(
        &driver,
        &request("shop-v4", "v4", &new_placement, start_s - 600, false),
    )
    .await?;

    let (rollouts, steps) = metrics::load(store.as_ref(), &Records::default())
        .await
        .map_err(|e| e.to_string())?;
    let end_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
        + 1;
    let rows = metrics::dora(&rollouts, &steps, end_ms.saturating_sub(86_400_000), end_ms);
    print!("{}", metrics::table(&rows));
    std::fs::write(svg_path, svg(&rows)).map_err(|e| format!("{}: {e}", svg_path.display()))?;
    println!("chart: {}", svg_path.display());

    for compute in all_targets.values() {
        for unit in ["api", "worker"] {
            // gcp's backend is "lost" only for the driver; its processes are still ours.
            compute.delete(unit).await.map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut backend = "process".to_string();
    let mut svg_path = PathBuf::from("rollout-metrics.svg");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--backend", Some(b)) if b == "process" || b == "sim" => backend = b,
            ("--svg", Some(p)) => svg_path = PathBuf::from(p),
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    match script(&backend, &svg_path).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rollout-metrics: {e}");
            ExitCode::FAILURE
        }
    }
}
