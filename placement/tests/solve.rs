//! Functional tests of solve, resolve, what-if, survivable mode and explanations.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use cloud_placement::checker::{CheckOptions, check, check_survivable, check_with};
use cloud_placement::model::*;
use cloud_placement::{Failure, ResolveOptions, SolveOptions, resolve, solve, what_if};
use common::*;

fn opts() -> SolveOptions {
    SolveOptions {
        max_scans: 10_000,
        ..SolveOptions::default()
    }
}

fn assert_consistent(model: &Model, sol: &cloud_placement::Solution) {
    let rep = check(model, &sol.plan);
    assert!(rep.is_feasible(), "violations: {:?}", rep.violations);
    let tol = 1e-6 * sol.cost.total.abs().max(1.0);
    assert!(
        (rep.cost.total - sol.cost.total).abs() <= tol,
        "{:?} vs {:?}",
        rep.cost,
        sol.cost
    );
    assert!(sol.lower_bound <= sol.cost.total + tol);
}

#[test]
fn cheapest_region_is_chosen() {
    let mut m = base_model();
    m.units.push(unit("api", 2.0, 1));
    let s = solve(&m, &opts()).unwrap();
    assert_eq!(s.plan.placements["api"], vec!["aws-us"]);
    assert_consistent(&m, &s);
    assert!(
        s.gap <= 1e-9,
        "single unit must be solved to optimality: {}",
        s.gap
    );
}

#[test]
fn residency_latency_and_certifications_are_respected() {
    let mut m = base_model();
    let mut u = unit("eu-api", 2.0, 2);
    u.require_labels = BTreeMap::from([("jurisdiction".into(), vec!["eu".into()])]);
    u.max_latency_ms = Some(20.0);
    u.user_regions = vec!["eu-users".into()];
    u.require_certifications = vec!["iso27001".into()];
    m.units.push(u);
    let s = solve(&m, &opts()).unwrap();
    for r in &s.plan.placements["eu-api"] {
        assert!(r.ends_with("-eu"), "{r}");
    }
    assert_consistent(&m, &s);
    let e = &s.explanations[0];
    assert!(
        e.rejected
            .iter()
            .any(|r| r.region == "aws-us" && r.reasons.iter().any(|x| x.contains("jurisdiction"))),
        "{e:?}"
    );
}

#[test]
fn spread_over_providers() {
    let mut m = base_model();
    let mut db = unit("db", 4.0, 3);
    db.spread = Some(Spread {
        min_providers: 3,
        min_regions: 3,
    });
    m.units.push(db);
    let s = solve(&m, &opts()).unwrap();
    let provs: std::collections::BTreeSet<_> = s.plan.placements["db"]
        .iter()
        .map(|r| r.split('-').next().unwrap().to_string())
        .collect();
    assert_eq!(provs.len(), 3);
    assert_consistent(&m, &s);
    assert!(
        s.explanations[0]
            .binding
            .iter()
            .any(|b| b.contains("spread"))
    );
}

#[test]
fn colocation_and_anti_affinity() {
    let mut m = base_model();
    let mut a = unit("ingest", 4.0, 2);
    a.colocate = Some("path".into());
    let mut q = unit("queue", 2.0, 2);
    q.colocate = Some("path".into());
    let mut x = unit("x", 1.0, 1);
    x.anti_affinity = vec!["ingest".into()];
    m.units.extend([a, q, x]);
    let s = solve(&m, &opts()).unwrap();
    let r = &s.plan.placements["ingest"][0];
    assert!(s.plan.placements["ingest"].iter().all(|x| x == r));
    assert!(s.plan.placements["queue"].iter().all(|x| x == r));
    assert_ne!(&s.plan.placements["x"][0], r);
    assert_consistent(&m, &s);
}

#[test]
fn capacity_forces_use_of_other_regions() {
    let mut m = base_model();
    for i in 0..6 {
        m.units.push(unit(&format!("u{i}"), 10.0, 1));
    }
    let s = solve(&m, &opts()).unwrap();
    assert_consistent(&m, &s);
    let mut used = std::collections::BTreeSet::new();
    for v in s.plan.placements.values() {
        used.extend(v.iter().cloned());
    }
    assert_eq!(
        used.len(),
        6,
        "each 10-cpu unit needs its own 16-cpu region"
    );
}

#[test]
fn egress_pulls_talking_units_together() {
    let mut m = base_model();
    m.units.push(unit("a", 1.0, 1));
    let mut b = unit("b", 1.0, 1);
    b.forbidden_regions = vec!["aws-us".into()];
    m.units.push(b);
    m.traffic.push(Traffic {
        from: "a".into(),
        to: "b".into(),
        gb: 1000.0,
    });
    let s = solve(&m, &opts()).unwrap();
    assert_eq!(
        s.plan.placements["a"], s.plan.placements["b"],
        "co-located to avoid egress"
    );
    assert_consistent(&m, &s);
    assert_eq!(s.cost.egress, 0.0);
}

// Synthetic models, rendering and the greedy baseline are `bench-support` scaffolding.
#[cfg(feature = "bench-support")]
#[test]
fn deterministic_for_same_seed() {
    let m = cloud_placement::synthetic::generate(&cloud_placement::synthetic::SyntheticSpec::new(
        60, 8, 3,
    ));
    let a = solve(&m, &opts()).unwrap();
    let b = solve(&m, &opts()).unwrap();
    assert_eq!(a.plan, b.plan);
    assert_eq!(a.cost, b.cost);
    assert_eq!(a.lower_bound, b.lower_bound);
    assert_consistent(&m, &a);
}

#[test]
fn resolve_moves_few_replicas_after_region_loss() {
    let mut m = base_model();
    for i in 0..8 {
        let mut u = unit(&format!("s{i}"), 2.0, 2);
        u.spread = Some(Spread {
            min_providers: 2,
            min_regions: 0,
        });
        u.migration_cost = 5.0;
        m.units.push(u);
    }
    let s = solve(&m, &opts()).unwrap();
    let down = m.with_region_down("aws-us");
    let ro = ResolveOptions {
        solve: opts(),
        ..ResolveOptions::default()
    };
    let r = resolve(&down, &s.plan, &ro).unwrap();
    let in_lost = s
        .plan
        .placements
        .values()
        .flatten()
        .filter(|r| *r == "aws-us")
        .count() as u64;
    let checked_model = down.with_current_placement(&s.plan);
    let rep = check_with(
        &checked_model,
        &r.plan,
        &CheckOptions {
            survivable: false,
            migration_budget: Some(0),
        },
    );
    assert!(rep.is_feasible(), "{:?}", rep.violations);
    assert_eq!(
        rep.moved_replicas, in_lost,
        "only the replicas of the lost region move"
    );
    assert!((rep.cost.total - r.cost.total).abs() < 1e-6 * r.cost.total.max(1.0));
    assert!(r.plan.placements.values().flatten().all(|x| x != "aws-us"));
}

#[test]
fn resolve_respects_migration_budget() {
    let mut m = base_model();
    for i in 0..4 {
        let mut u = unit(&format!("s{i}"), 2.0, 1);
        u.current = vec!["gcp-eu".into()];
        m.units.push(u);
    }
    let prev = Plan {
        placements: m
            .units
            .iter()
            .map(|u| (u.id.clone(), vec!["gcp-eu".to_string()]))
            .collect(),
    };
    let ro = ResolveOptions {
        migration_budget: Some(1),
        move_penalty: Some(0.0),
        solve: opts(),
    };
    let r = resolve(&m, &prev, &ro).unwrap();
    let mm = m.with_current_placement(&prev);
    let rep = check_with(
        &mm,
        &r.plan,
        &CheckOptions {
            survivable: false,
            migration_budget: Some(1),
        },
    );
    assert!(rep.is_feasible(), "{:?}", rep.violations);
    assert_eq!(
        rep.moved_replicas, 1,
        "the one move allowed is worth taking"
    );
}

#[test]
fn what_if_provider_failure() {
    let mut m = base_model();
    for i in 0..4 {
        m.units.push(unit(&format!("s{i}"), 3.0, 2));
    }
    let w = what_if(&m, &Failure::Provider("aws".into()), &opts()).unwrap();
    assert!(
        w.after
            .plan
            .placements
            .values()
            .flatten()
            .all(|r| !r.starts_with("aws"))
    );
    assert!(check(&w.failed_model, &w.after.plan).is_feasible());
    assert!(w.after.cost.total >= w.before.cost.total - w.before.cost.migration);
    assert!(what_if(&m, &Failure::Provider("nope".into()), &opts()).is_err());
}

#[test]
fn survivable_plan_absorbs_any_provider_failure() {
    let mut m = base_model();
    for i in 0..10 {
        let mut u = unit(&format!("s{i}"), 3.0, 2);
        u.spread = Some(Spread {
            min_providers: 2,
            min_regions: 0,
        });
        m.units.push(u);
    }
    // EU-only units can only be absorbed by EU regions.
    for u in m.units.iter_mut().take(4) {
        u.require_labels = BTreeMap::from([("jurisdiction".into(), vec!["eu".into()])]);
    }
    let plain = solve(&m, &opts()).unwrap();
    let _ = check_survivable(&m, &plain.plan);
    let o = SolveOptions {
        survivable: true,
        ..opts()
    };
    let s = solve(&m, &o).unwrap();
    let rep = check_with(
        &m,
        &s.plan,
        &CheckOptions {
            survivable: true,
            migration_budget: None,
        },
    );
    assert!(rep.is_feasible(), "{:?}", rep.violations);
    assert!(s.cost.total >= plain.cost.total - 1e-9);
    assert!(s.lower_bound <= s.cost.total);
}

#[test]
fn connected_vehicle_example_model_solves() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/models/connected-vehicle.yaml");
    let m = Model::from_path(&path).unwrap();
    let s = solve(&m, &opts()).unwrap();
    assert_consistent(&m, &s);
    for (u, regs) in &s.plan.placements {
        if u.starts_with("eu-") {
            assert!(
                regs.iter()
                    .all(|r| r.contains("eu") || r.contains("europe")),
                "{u}: {regs:?}"
            );
        }
    }
    // The bound sees egress: the reported gap was 6.1% (bound 4,903 against the
    // optimum 5,222, almost all of it the egress the bound left out).
    assert!(
        s.lower_bound > 5_100.0 && s.gap < 0.02,
        "bound {} gap {}",
        s.lower_bound,
        s.gap
    );
    // Round trips through JSON and TOML.
    let json = serde_json::to_string(&m).unwrap();
    assert_eq!(Model::from_json(&json).unwrap(), m);
    let toml_text = toml::to_string(&m).unwrap();
    assert_eq!(Model::from_toml(&toml_text).unwrap(), m);
    #[cfg(feature = "bench-support")]
    {
        let text = cloud_placement::report::render_solution(&m, &s);
        assert!(text.contains("lower bound"));
        let svg = cloud_placement::report::render_svg(&m, &s.plan);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    }
}

#[cfg(feature = "bench-support")]
#[test]
fn greedy_baseline_is_feasible_when_it_answers() {
    let m = cloud_placement::synthetic::generate(&cloud_placement::synthetic::SyntheticSpec::new(
        80, 8, 5,
    ));
    if let Ok(b) = cloud_placement::greedy::greedy_baseline(&m) {
        let rep = check(&m, &b.plan);
        assert!(rep.is_feasible(), "{:?}", rep.violations);
        assert!((rep.cost.total - b.cost.total).abs() < 1e-6 * b.cost.total.max(1.0));
        let s = solve(&m, &opts()).unwrap();
        assert!(s.cost.total <= b.cost.total + 1e-6);
    }
}
