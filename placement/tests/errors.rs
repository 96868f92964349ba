//! Bad input gives typed errors, never panics; infeasible input names the conflict.

mod common;

use std::collections::BTreeMap;

use cloud_placement::model::*;
use cloud_placement::{Conflict, ModelError, PlacementError, SolveOptions, solve};
use common::*;

fn err(m: &Model) -> PlacementError {
    solve(m, &SolveOptions::default()).expect_err("must fail")
}

fn invalid(m: &Model) -> ModelError {
    match err(m) {
        PlacementError::Invalid(e) => e,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

fn with_unit(u: Unit) -> Model {
    let mut m = base_model();
    m.units.push(u);
    m
}

#[test]
fn negative_demand() {
    let mut u = unit("a", 1.0, 1);
    u.demand.insert("cpu".into(), -1.0);
    assert!(matches!(
        invalid(&with_unit(u)),
        ModelError::Negative { .. }
    ));
}

#[test]
fn nan_and_infinite_prices() {
    let mut m = with_unit(unit("a", 1.0, 1));
    m.providers[0].regions[0]
        .price
        .insert("cpu".into(), f64::NAN);
    assert!(matches!(invalid(&m), ModelError::NonFinite { .. }));
    let mut m = with_unit(unit("a", 1.0, 1));
    m.providers[0].regions[0]
        .price
        .insert("cpu".into(), f64::INFINITY);
    assert!(matches!(invalid(&m), ModelError::NonFinite { .. }));
    let mut m = with_unit(unit("a", 1.0, 1));
    m.providers[1].egress_internet = f64::NAN;
    assert!(matches!(invalid(&m), ModelError::NonFinite { .. }));
}

#[test]
fn zero_replicas() {
    assert!(matches!(
        invalid(&with_unit(unit("a", 1.0, 0))),
        ModelError::ZeroReplicas { .. }
    ));
}

#[test]
fn duplicate_ids() {
    let mut m = with_unit(unit("a", 1.0, 1));
    m.units.push(unit("a", 2.0, 1));
    assert!(matches!(
        invalid(&m),
        ModelError::DuplicateId { kind: "unit", .. }
    ));
    let mut m = with_unit(unit("a", 1.0, 1));
    let r = m.providers[0].regions[0].clone();
    m.providers[1].regions.push(r);
    assert!(matches!(
        invalid(&m),
        ModelError::DuplicateId { kind: "region", .. }
    ));
    let mut m = with_unit(unit("a", 1.0, 1));
    let p = m.providers[0].clone();
    m.providers.push(p);
    assert!(matches!(
        invalid(&m),
        ModelError::DuplicateId {
            kind: "provider",
            ..
        }
    ));
}

#[test]
fn unknown_references() {
    let mut u = unit("a", 1.0, 1);
    u.allowed_regions = vec!["mars-1".into()];
    assert!(matches!(
        invalid(&with_unit(u)),
        ModelError::UnknownRegion { .. }
    ));
    let mut u = unit("a", 1.0, 1);
    u.current = vec!["mars-1".into()];
    assert!(matches!(
        invalid(&with_unit(u)),
        ModelError::UnknownRegion { .. }
    ));
    let mut m = with_unit(unit("a", 1.0, 1));
    m.traffic.push(Traffic {
        from: "a".into(),
        to: "ghost".into(),
        gb: 1.0,
    });
    assert!(matches!(invalid(&m), ModelError::UnknownUnit { .. }));
    let mut u = unit("a", 1.0, 1);
    u.demand.insert("gpu".into(), 1.0);
    assert!(matches!(
        invalid(&with_unit(u)),
        ModelError::UnknownDimension { .. }
    ));
    let mut m = with_unit(unit("a", 1.0, 1));
    m.overrides.push(Override {
        unit: "a".into(),
        region: "nowhere".into(),
        cost: Some(1.0),
        demand: None,
    });
    assert!(matches!(invalid(&m), ModelError::UnknownRegion { .. }));
}

#[test]
fn contradictory_constraints() {
    let mut u = unit("a", 1.0, 2);
    u.spread = Some(Spread {
        min_providers: 3,
        min_regions: 0,
    });
    assert!(matches!(
        invalid(&with_unit(u)),
        ModelError::Contradictory { .. }
    ));
    let mut a = unit("a", 1.0, 2);
    a.colocate = Some("g".into());
    a.spread = Some(Spread {
        min_providers: 2,
        min_regions: 0,
    });
    assert!(matches!(
        invalid(&with_unit(a)),
        ModelError::Contradictory { .. }
    ));
    let mut m = base_model();
    let mut a = unit("a", 1.0, 1);
    a.colocate = Some("g".into());
    a.anti_affinity = vec!["b".into()];
    let mut b = unit("b", 1.0, 1);
    b.colocate = Some("g".into());
    m.units.extend([a, b]);
    assert!(matches!(invalid(&m), ModelError::Contradictory { .. }));
    let mut u = unit("a", 1.0, 1);
    u.require_labels = BTreeMap::from([("jurisdiction".into(), vec!["eu".into()])]);
    u.forbid_labels = BTreeMap::from([("jurisdiction".into(), vec!["eu".into()])]);
    assert!(matches!(
        invalid(&with_unit(u)),
        ModelError::Contradictory { .. }
    ));
    let mut m = with_unit(unit("a", 1.0, 1));
    m.traffic.push(Traffic {
        from: "a".into(),
        to: "a".into(),
        gb: 1.0,
    });
    assert!(matches!(invalid(&m), ModelError::Contradictory { .. }));
}

#[test]
fn no_dimensions_or_regions() {
    let mut m = with_unit(unit("a", 1.0, 1));
    m.dimensions.clear();
    assert!(matches!(invalid(&m), ModelError::NoDimensions));
    let mut m = with_unit(unit("a", 1.0, 1));
    m.providers.clear();
    assert!(matches!(invalid(&m), ModelError::NoRegions));
}

#[test]
fn unit_with_no_allowed_region_names_the_filters() {
    let mut u = unit("a", 1.0, 1);
    u.require_labels = BTreeMap::from([("jurisdiction".into(), vec!["eu".into()])]);
    u.forbidden_regions = vec!["aws-eu".into(), "azure-eu".into()];
    u.max_latency_ms = Some(10.0);
    u.user_regions = vec!["eu-users".into()];
    match err(&with_unit(u)) {
        PlacementError::Infeasible(c) => {
            assert_eq!(c.len(), 1);
            let Conflict::NoAllowedRegion { unit, removed_by } = &c[0] else {
                panic!("{c:?}")
            };
            assert_eq!(unit, "a");
            assert_eq!(removed_by.len(), 6);
            let gcp = removed_by.iter().find(|(r, _)| r == "gcp-eu").unwrap();
            assert!(gcp.1.iter().any(|w| w.contains("latency")), "{gcp:?}");
            let aws_us = removed_by.iter().find(|(r, _)| r == "aws-us").unwrap();
            assert!(aws_us.1.iter().any(|w| w.contains("jurisdiction")));
            let msg = PlacementError::Infeasible(c.clone()).to_string();
            assert!(msg.contains("no allowed region"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn total_demand_exceeds_capacity() {
    let mut m = base_model();
    for i in 0..10 {
        m.units.push(unit(&format!("u{i}"), 10.0, 1)); // 100 cpu > 96
    }
    match err(&m) {
        PlacementError::Infeasible(c) => {
            assert!(c.iter().any(|c| matches!(c, Conflict::DemandExceedsCapacity { dimension, .. } if dimension == "cpu")), "{c:?}");
        }
        other => panic!("{other:?}"),
    }
    // Restricted to EU: 3 x 16 = 48 cpu for 50 cpu of EU units.
    let mut m = base_model();
    for i in 0..5 {
        let mut u = unit(&format!("u{i}"), 10.0, 1);
        u.require_labels = BTreeMap::from([("jurisdiction".into(), vec!["eu".into()])]);
        m.units.push(u);
    }
    match err(&m) {
        PlacementError::Infeasible(c) => {
            let Conflict::DemandExceedsCapacity { regions, units, .. } = &c[0] else {
                panic!("{c:?}")
            };
            assert_eq!(regions.len(), 3);
            assert_eq!(units.len(), 5);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn spread_larger_than_available_providers() {
    let mut u = unit("db", 1.0, 3);
    u.allowed_regions = vec!["aws-eu".into(), "aws-us".into(), "gcp-eu".into()];
    u.spread = Some(Spread {
        min_providers: 3,
        min_regions: 0,
    });
    match err(&with_unit(u)) {
        PlacementError::Infeasible(c) => assert!(matches!(
            &c[0],
            Conflict::SpreadUnsatisfiable {
                required: 3,
                available: 2,
                ..
            }
        )),
        other => panic!("{other:?}"),
    }
}

#[test]
fn replica_too_big_for_every_region() {
    match err(&with_unit(unit("huge", 100.0, 1))) {
        PlacementError::Infeasible(c) => {
            let Conflict::NoAllowedRegion { removed_by, .. } = &c[0] else {
                panic!("{c:?}")
            };
            assert!(
                removed_by
                    .iter()
                    .all(|(_, w)| w.iter().any(|x| x.contains("capacity")))
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unparsable_text_is_an_error() {
    assert!(matches!(
        Model::from_json("{"),
        Err(PlacementError::Parse(_))
    ));
    assert!(matches!(
        Model::from_yaml("dimensions: [cpu"),
        Err(PlacementError::Parse(_))
    ));
    assert!(matches!(
        Model::from_toml("dimensions = "),
        Err(PlacementError::Parse(_))
    ));
    assert!(matches!(
        Model::from_json(r#"{"dimensions":["cpu"],"providers":[],"bogus":1}"#),
        Err(PlacementError::Parse(_))
    ));
    assert!(matches!(
        Model::from_path(std::path::Path::new("/nonexistent/model.yaml")),
        Err(PlacementError::Io(_))
    ));
    assert!(matches!(
        Model::from_path(std::path::Path::new("model.txt")),
        Err(PlacementError::Io(_)) | Err(PlacementError::Parse(_))
    ));
}

/// The issue's two-unit model: `a-1 -> b-1` priced at 0.5 and again at 0.0.
/// Before the fix it was accepted; the solver priced the pair with the last
/// entry (cost 2.0) and the checker with the first (502.0).
fn duplicate_egress_model() -> Model {
    let one = |id: &str| Provider {
        id: id.into(),
        egress_internet: 1.0,
        regions: vec![Region {
            id: format!("{id}-1"),
            capacity: res(&[("cpu", 1.0)]),
            price: res(&[("cpu", 1.0)]),
            ..Region::default()
        }],
        ..Provider::default()
    };
    let a = Unit {
        id: "x".into(),
        demand: res(&[("cpu", 1.0)]),
        replicas: 1,
        allowed_regions: vec!["a-1".into()],
        ..Unit::default()
    };
    let mut b = a.clone();
    b.id = "y".into();
    b.allowed_regions = vec!["b-1".into()];
    let price = |p: f64| EgressPrice {
        from_region: "a-1".into(),
        to_region: "b-1".into(),
        price_per_gb: p,
    };
    Model {
        dimensions: vec!["cpu".into()],
        providers: vec![one("a"), one("b")],
        units: vec![a, b],
        traffic: vec![Traffic {
            from: "x".into(),
            to: "y".into(),
            gb: 1000.0,
        }],
        egress: vec![price(0.5), price(0.0)],
        ..Model::default()
    }
}

#[test]
fn duplicate_egress_pair_is_refused_naming_the_pair() {
    let m = duplicate_egress_model();
    let e = invalid(&m);
    assert_eq!(
        e,
        ModelError::DuplicateEgress {
            from_region: "a-1".into(),
            to_region: "b-1".into()
        }
    );
    assert!(e.to_string().contains("`a-1` -> `b-1`"), "{e}");
    assert_eq!(cloud_placement::validate::validate(&m), Err(e));
    // The reverse direction is another pair, not a duplicate.
    let mut m = duplicate_egress_model();
    m.egress[1] = EgressPrice {
        from_region: "b-1".into(),
        to_region: "a-1".into(),
        price_per_gb: 0.0,
    };
    let s = solve(&m, &SolveOptions::default()).expect("valid");
    let rep = cloud_placement::checker::check(&m, &s.plan);
    assert!(rep.is_feasible());
    assert_eq!(s.cost.total, 502.0);
    assert_eq!(rep.cost, s.cost, "solver and checker price alike");
}

#[test]
fn solver_and_checker_share_the_egress_price_rule() {
    let m = duplicate_egress_model();
    let prices = EgressPrices::new(&m);
    // First entry (validation refuses the second), the reverse direction falls
    // back to the provider's internet price, and a region to itself is free.
    assert_eq!(prices.price("a-1", "b-1"), 0.5);
    assert_eq!(prices.price("b-1", "a-1"), 1.0);
    assert_eq!(prices.price("a-1", "a-1"), 0.0);
    assert_eq!(prices.price("a-1", "nowhere"), 0.0);
}

#[test]
fn impossible_survivability_names_the_failure_unit_and_constraint() {
    let mut u = unit("db", 1.0, 2);
    u.allowed_regions = vec!["aws-eu".into(), "azure-eu".into()];
    u.spread = Some(Spread {
        min_providers: 2,
        min_regions: 0,
    });
    let m = with_unit(u);
    let quick = SolveOptions {
        max_scans: 20_000,
        ..SolveOptions::default()
    };
    // Solvable as such...
    assert!(solve(&m, &quick).is_ok());
    // ...but losing aws (or azure) leaves one provider for a two-provider spread.
    let o = SolveOptions {
        survivable: true,
        ..quick
    };
    let PlacementError::Infeasible(c) = solve(&m, &o).expect_err("not survivable") else {
        panic!("expected Infeasible");
    };
    assert_eq!(c.len(), 2, "{c:?}");
    match &c[0] {
        Conflict::Unsurvivable { failure, conflicts } => {
            assert_eq!(failure, "provider `aws`");
            assert!(matches!(
                &conflicts[..],
                [Conflict::SpreadUnsatisfiable { unit, required: 2, available: 1, .. }] if unit == "db"
            ));
        }
        other => panic!("expected Unsurvivable, got {other:?}"),
    }
    let text = PlacementError::Infeasible(c).to_string();
    assert!(
        text.contains("if provider `aws` fails: unit `db` must spread over 2 providers"),
        "{text}"
    );
}

#[test]
fn survivability_check_names_what_blocks_the_re_placement() {
    // Capacity is plenty, but anti-affinity forbids the only region left for
    // `b`'s replica when aws fails, and `a` may run nowhere but gcp.
    let mut m = base_model();
    let mut a = unit("a", 1.0, 1);
    a.allowed_regions = vec!["gcp-eu".into()];
    let mut b = unit("b", 1.0, 1);
    b.allowed_regions = vec!["aws-eu".into(), "gcp-eu".into()];
    b.anti_affinity = vec!["a".into()];
    m.units = vec![a, b];
    let plan = Plan {
        placements: BTreeMap::from([
            ("a".to_string(), vec!["gcp-eu".to_string()]),
            ("b".to_string(), vec!["aws-eu".to_string()]),
        ]),
    };
    assert!(cloud_placement::checker::check(&m, &plan).is_feasible());
    let v = cloud_placement::checker::check_survivable(&m, &plan);
    assert_eq!(
        v,
        vec![
            "if provider `aws` fails, a replica of `b`: anti-affinity with `a` in `gcp-eu` \
             blocks the re-placement",
            "if provider `gcp` fails, a replica of `a`: no region its filters allow blocks \
             the re-placement",
        ]
    );
}
