//! Runs the `rollout-metrics` binary (real processes) and checks its table and chart.

use std::process::Command;

/// One table row: `service cloud deploys failures per_day lead_time cfr restore`.
#[derive(Debug)]
struct Row {
    deploys: u32,
    failures: u32,
    cfr: String,
    restore: String,
}

fn rows(stdout: &str) -> std::collections::BTreeMap<String, Row> {
    stdout
        .lines()
        .filter(|l| l.starts_with("shop "))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 8, "{l}");
            (
                f[1].to_string(),
                Row {
                    deploys: f[2].parse().unwrap(),
                    failures: f[3].parse().unwrap(),
                    cfr: f[6].to_string(),
                    restore: f[7].to_string(),
                },
            )
        })
        .collect()
}

#[test]
fn scripted_rollouts_print_the_four_measures_and_draw_them() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("chart.svg");
    let out = Command::new(env!("CARGO_BIN_EXE_rollout-metrics"))
        .args(["--backend", "process", "--svg"])
        .arg(&svg)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("rollout shop-v3"), "{stdout}");
    let v3 = stdout
        .lines()
        .find(|l| l.starts_with("rollout shop-v3"))
        .unwrap();
    assert!(v3.contains("rolledback"), "{v3}");
    for id in ["shop-v1", "shop-v2", "shop-v4"] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("rollout {id} ")))
            .unwrap();
        assert!(line.contains("succeeded"), "{line}");
    }

    let rows = rows(&stdout);
    // The canary cloud saw the failed v3 and its rollback.
    let aws = &rows["aws"];
    assert_eq!(aws.failures, 1, "{stdout}");
    assert!(aws.deploys >= 3, "{stdout}");
    assert_eq!(
        aws.cfr,
        format!("{:.1}%", 100.0 / f64::from(aws.deploys + 1))
    );
    assert!(aws.restore.ends_with('s'), "{stdout}");
    // The other clouds never got v3; gcp is lost before v4.
    for cloud in ["gcp", "azure"] {
        if let Some(r) = rows.get(cloud) {
            assert_eq!(r.failures, 0, "{stdout}");
            assert_eq!(r.cfr, "0.0%");
            assert_eq!(r.restore, "-");
        }
    }
    let gcp_deploys = rows.get("gcp").map_or(0, |r| r.deploys);
    assert!(gcp_deploys <= 2, "{stdout}");

    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(chart.starts_with("<svg"), "{chart}");
    assert!(chart.trim_end().ends_with("</svg>"));
    assert_eq!(chart.matches("<g class=\"panel\"").count(), 4);
    assert_eq!(chart.matches("<rect").count(), 4 * rows.len());
    assert!(chart.contains("change failure rate"));
}
