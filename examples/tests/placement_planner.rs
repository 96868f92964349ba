//! Runs the `placement-planner` binary on the shipped model: `--json` is one JSON object
//! whose plan the checker agrees with, and `--svg` draws it.

use std::process::Command;

#[test]
fn json_output_is_the_plan_its_costs_bound_and_explanations() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("plan.svg");
    let model = concat!(env!("CARGO_MANIFEST_DIR"), "/models/connected-vehicle.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_placement-planner"))
        .args([model, "--time-limit", "0.5", "--json", "--svg"])
        .arg(&svg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("stdout is one JSON object");
    let sol = &v["solution"];
    let placements = sol["plan"]["placements"].as_object().unwrap();
    assert!(!placements.is_empty());
    let total = sol["cost"]["total"].as_f64().unwrap();
    let bound = sol["lower_bound"].as_f64().unwrap();
    assert!(bound <= total + 1e-6, "bound {bound} > cost {total}");
    assert!(sol["gap"].as_f64().unwrap() >= 0.0);
    assert!(!sol["explanations"].as_array().unwrap().is_empty());
    // The independent checker finds the plan feasible at the same cost.
    assert_eq!(v["checker"]["violations"], serde_json::json!([]));
    let checked = v["checker"]["cost"]["total"].as_f64().unwrap();
    assert!((checked - total).abs() <= 1e-6 * total.abs().max(1.0));
    let drawn = std::fs::read_to_string(&svg).unwrap();
    assert!(drawn.starts_with("<svg") && drawn.contains(r#"class="use""#));
}
