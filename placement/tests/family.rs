//! The benchmark instance family (`family`): deterministic for a seed, valid models, and
//! plans the checker accepts (or a clear "no feasible plan" from the greedy baseline).

use cloud_placement::checker::check;
use cloud_placement::family::{FamilySpec, build, family, generate, traffic_units};
use cloud_placement::greedy::greedy_baseline;
use cloud_placement::validate::validate;
use cloud_placement::{PlacementError, SolveOptions, solve};

fn on_grid(x: f64, step: f64) -> bool {
    ((x / step) - (x / step).round()).abs() < 1e-6
}

#[test]
fn the_family_is_deterministic_valid_and_of_the_stated_shape() {
    let specs = family();
    assert_eq!(specs.len(), 6);
    assert!(specs.iter().filter(|s| s.replacement).count() >= 2);
    for spec in &specs {
        let m = generate(spec);
        assert_eq!(m, generate(spec), "{}: same seed, same model", spec.name);
        validate(&m).unwrap_or_else(|e| panic!("{}: invalid model: {e}", spec.name));
        assert_eq!(m.units.len(), spec.units);
        assert_eq!(m.regions().count(), spec.regions);
        assert_eq!(m.providers.len(), 3);
        assert_eq!(m.dimensions.len(), 2);
        assert!((150..=400).contains(&m.units.len()));
        assert!((12..=18).contains(&spec.regions));
        // Every constraint kind is present.
        assert!(m.units.iter().any(|u| !u.require_labels.is_empty()));
        assert!(m.units.iter().any(|u| u.colocate.is_some()));
        assert!(m.units.iter().any(|u| !u.anti_affinity.is_empty()));
        assert!(
            m.units
                .iter()
                .any(|u| u.spread.is_some_and(|s| s.min_providers >= 2))
        );
        assert!(!m.traffic.is_empty());
        // The grids an exact solver relies on to scale to integers.
        for u in &m.units {
            assert!(u.demand.values().all(|&d| on_grid(d, 0.25)), "{}", u.id);
        }
        for (_, r) in m.regions() {
            assert!(r.capacity.values().all(|&c| on_grid(c, 0.01)), "{}", r.id);
        }
        // The greedy plan is accepted by the checker, or the baseline says it found none.
        match greedy_baseline(&m) {
            Ok(b) => {
                let rep = check(&m, &b.plan);
                assert!(rep.is_feasible(), "{}: {:?}", spec.name, rep.violations);
                assert!((rep.cost.total - b.cost.total).abs() < 1e-6 * b.cost.total.max(1.0));
            }
            Err(PlacementError::NoFeasiblePlanFound { violations }) => {
                assert!(
                    violations.iter().any(|v| v.contains("no region fits")),
                    "{violations:?}"
                );
            }
            Err(e) => panic!("{}: unexpected greedy error {e}", spec.name),
        }
    }
    let heavy = specs
        .iter()
        .find(|s| s.name.starts_with("traffic"))
        .unwrap();
    assert!(traffic_units(&generate(heavy)) >= 60);
    let mut other = specs[0].clone();
    other.seed += 1;
    assert_ne!(
        generate(&other),
        generate(&specs[0]),
        "another seed, another model"
    );
}

#[test]
fn a_replacement_instance_is_deterministic_and_solvable() {
    // Smaller than the family's, to keep the (iteration-limited) previous plan quick in a
    // debug build; same code path.
    let mut spec = FamilySpec::new("replace-small", 64, 12, 7);
    spec.replacement = true;
    let a = build(&spec).unwrap();
    assert_eq!(a, build(&spec).unwrap(), "same seed, same instance");
    let prev = a.previous.as_ref().expect("a previous plan");
    let halved = a.halved_region.as_ref().expect("a halved region");
    let base = generate(&spec);
    assert!(
        check(&base, prev).is_feasible(),
        "the previous plan fits the base model"
    );
    let cap = |m: &cloud_placement::Model| {
        m.regions()
            .find(|(_, r)| &r.id == halved)
            .map(|(_, r)| r.capacity["cpu"])
            .unwrap()
    };
    assert!((cap(&a.model) - cap(&base) / 2.0).abs() <= 0.01);
    assert!(
        a.model
            .units
            .iter()
            .all(|u| u.current.len() == u.replicas as usize)
    );
    let opts = SolveOptions {
        max_scans: 20_000,
        explain: false,
        ..SolveOptions::default()
    };
    let s = solve(&a.model, &opts).unwrap();
    let rep = check(&a.model, &s.plan);
    assert!(rep.is_feasible(), "{:?}", rep.violations);
    assert!((rep.cost.total - s.cost.total).abs() < 1e-6 * s.cost.total.max(1.0));
    assert!(s.lower_bound <= s.cost.total + 1e-9);
    assert_eq!(rep.moved_replicas, s.stats.moved_replicas);
}
