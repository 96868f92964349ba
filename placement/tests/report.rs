//! What the planner shows people: explanations without repeated reasons and with the cost
//! difference, and an SVG with each region's cost, capacity use and cells.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use cloud_placement::explain::explain;
use cloud_placement::model::*;
use cloud_placement::{SolveOptions, solve};
use common::*;

#[test]
fn a_reason_is_given_once_per_region_with_the_saving() {
    let mut m = base_model();
    // Anti-affinity named on both sides: one constraint, so one reason.
    let mut u = unit("u", 1.0, 1);
    u.anti_affinity = vec!["v".into()];
    let mut v = unit("v", 1.0, 1);
    v.anti_affinity = vec!["u".into()];
    m.units.extend([u, v]);
    let plan = Plan {
        placements: BTreeMap::from([
            ("u".to_string(), vec!["aws-eu".to_string()]),
            ("v".to_string(), vec!["aws-us".to_string()]),
        ]),
    };
    let explanations = explain(&m, &plan);
    let u = explanations.iter().find(|e| e.unit == "u").unwrap();
    let us = u
        .rejected
        .iter()
        .find(|r| r.region == "aws-us")
        .expect("the cheaper aws-us is explained");
    let anti: Vec<&String> = us
        .reasons
        .iter()
        .filter(|r| r.contains("anti-affinity"))
        .collect();
    assert_eq!(anti, vec!["anti-affinity: `v` runs there"], "{us:?}");
    // 1 cpu + 2 memory at 1.0 / 0.1 in aws-eu against 0.9 / 0.09 in aws-us.
    assert!((us.saving_per_replica - 0.12).abs() < 1e-9, "{us:?}");
    assert!((u.cost_per_replica - us.cost_per_replica - us.saving_per_replica).abs() < 1e-9);
}

#[test]
fn explanations_of_the_shipped_model_never_repeat_a_reason() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/models/connected-vehicle.yaml");
    let m = Model::from_path(&path).unwrap();
    let s = solve(
        &m,
        &SolveOptions::with_time_limit(std::time::Duration::from_millis(500)),
    )
    .unwrap();
    assert!(!s.explanations.is_empty());
    for e in &s.explanations {
        let unique: BTreeSet<&String> = e.binding.iter().collect();
        assert_eq!(unique.len(), e.binding.len(), "{e:?}");
        for r in &e.rejected {
            let unique: BTreeSet<&String> = r.reasons.iter().collect();
            assert_eq!(unique.len(), r.reasons.len(), "{}: {r:?}", e.unit);
            assert!(r.saving_per_replica > 0.0, "only cheaper regions: {r:?}");
        }
    }
}

#[cfg(feature = "bench-support")]
#[test]
fn the_svg_shows_cost_capacity_use_and_cells_per_region() {
    use cloud_placement::report::render_svg;
    let mut m = base_model();
    let mut a = unit("a", 8.0, 2);
    a.cell = Some("cell-1".into());
    let mut b = unit("b", 1.0, 1);
    b.cell = Some("cell-2".into());
    let c = unit("c", 2.0, 1);
    m.units.extend([a, b, c]);
    let plan = Plan {
        placements: BTreeMap::from([
            // 16 of 16 cpus: full, drawn red.
            (
                "a".to_string(),
                vec!["aws-us".to_string(), "aws-us".to_string()],
            ),
            ("b".to_string(), vec!["gcp-eu".to_string()]),
            ("c".to_string(), vec!["gcp-eu".to_string()]),
        ]),
    };
    let svg = render_svg(&m, &plan);
    let regions = m.regions().count();
    assert_eq!(
        svg.matches(r#"class="use""#).count(),
        regions * m.dimensions.len(),
        "a capacity bar per region and dimension"
    );
    assert_eq!(svg.matches(r#"class="cost""#).count(), regions);
    // aws-us: 2 replicas of 8 cpu at 0.9 and 16 memory at 0.09.
    assert!(svg.contains(">cost 17.28<"), "{svg}");
    assert!(svg.contains(">cpu 100%<") && svg.contains("#d62728"));
    assert!(svg.contains(">cpu 19%<"), "gcp-eu: 3 of 16 cpus");
    // A legend entry per cell, each its own colour; the unit without a cell is grey.
    let legend: Vec<&str> = svg
        .lines()
        .filter(|l| l.contains(r#"class="cell""#))
        .collect();
    assert_eq!(legend.len(), 2);
    assert!(legend[0].contains("cell-1") && legend[1].contains("cell-2"));
    let colour = |l: &str| l.split("fill=\"").nth(1).unwrap()[..7].to_string();
    assert_ne!(colour(legend[0]), colour(legend[1]));
    assert!(svg.contains("#bbbbbb"), "c has no cell");
    assert!(svg.trim_end().ends_with("</svg>"));
}
