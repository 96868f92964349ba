//! Property tests: on random instances every plan returned is feasible for
//! the independent checker, its cost matches the checker's, the bound is
//! below the cost, and the same input gives the same plan.

use std::collections::BTreeMap;

use cloud_placement::checker::{CheckOptions, Survival, check, check_survivable_with, check_with};
#[cfg(feature = "bench-support")]
use cloud_placement::gap::GapInstance;
use cloud_placement::model::*;
use cloud_placement::{PlacementError, ResolveOptions, SolveOptions, resolve, solve};
use proptest::prelude::*;

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn f(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * (self.next() as f64 / (1u64 << 31) as f64)
    }
}

fn random_model(seed: u64, np: usize, rpp: usize, nu: usize) -> Model {
    let mut g = Lcg(seed);
    let jur = ["eu", "us"];
    let providers = (0..np)
        .map(|p| Provider {
            id: format!("p{p}"),
            egress_inter_region: (g.f(0.0, 0.05) * 100.0).round() / 100.0,
            egress_internet: (g.f(0.05, 0.1) * 100.0).round() / 100.0,
            regions: (0..rpp)
                .map(|r| Region {
                    id: format!("p{p}r{r}"),
                    capacity: BTreeMap::from([
                        ("cpu".to_string(), g.below(24) as f64 + 4.0),
                        ("mem".to_string(), g.below(64) as f64 + 8.0),
                    ]),
                    price: BTreeMap::from([
                        ("cpu".to_string(), g.f(0.5, 2.0)),
                        ("mem".to_string(), g.f(0.05, 0.3)),
                    ]),
                    labels: BTreeMap::from([(
                        "jurisdiction".to_string(),
                        jur[g.below(2) as usize].to_string(),
                    )]),
                    latency_ms: BTreeMap::from([("users".to_string(), g.below(100) as f64)]),
                    ..Region::default()
                })
                .collect(),
            ..Provider::default()
        })
        .collect::<Vec<_>>();
    let all_regions: Vec<String> = providers
        .iter()
        .flat_map(|p| p.regions.iter().map(|r| r.id.clone()))
        .collect();
    let mut units = Vec::new();
    for i in 0..nu {
        let replicas = 1 + g.below(3) as u32;
        let mut u = Unit {
            id: format!("u{i}"),
            demand: BTreeMap::from([
                ("cpu".to_string(), g.below(6) as f64 + 1.0),
                ("mem".to_string(), g.below(12) as f64),
            ]),
            replicas,
            priority: g.below(3) as i32,
            ..Unit::default()
        };
        match g.below(8) {
            0 => u.require_labels = BTreeMap::from([("jurisdiction".into(), vec!["eu".into()])]),
            1 => {
                u.max_latency_ms = Some(60.0);
                u.user_regions = vec!["users".into()];
            }
            2 => u.colocate = Some(format!("g{}", g.below(2))),
            3 => {
                u.spread = Some(Spread {
                    min_providers: (replicas.min(np as u32)).min(2),
                    min_regions: replicas.min(2),
                })
            }
            4 if i > 0 => u.anti_affinity = vec![format!("u{}", g.below(i as u64))],
            5 => {
                u.current = (0..replicas)
                    .map(|_| all_regions[g.below(all_regions.len() as u64) as usize].clone())
                    .collect();
                u.migration_cost = g.f(0.0, 5.0);
            }
            _ => {}
        }
        units.push(u);
    }
    // Anti-affinity inside a co-location group would be contradictory: drop it.
    let groups: BTreeMap<String, Option<String>> = units
        .iter()
        .map(|u| (u.id.clone(), u.colocate.clone()))
        .collect();
    for u in &mut units {
        let me = u.colocate.clone();
        u.anti_affinity.retain(|a| me.is_none() || groups[a] != me);
    }
    let mut traffic = Vec::new();
    for _ in 0..nu / 2 {
        let a = g.below(nu as u64);
        let b = g.below(nu as u64);
        if a != b {
            traffic.push(Traffic {
                from: format!("u{a}"),
                to: format!("u{b}"),
                gb: g.below(100) as f64,
            });
        }
    }
    let mut overrides = Vec::new();
    if nu > 0 && !all_regions.is_empty() {
        let u = format!("u{}", g.below(nu as u64));
        let r = all_regions[g.below(all_regions.len() as u64) as usize].clone();
        overrides.push(Override {
            unit: u,
            region: r,
            cost: Some(g.f(0.0, 3.0)),
            demand: Some(BTreeMap::from([("cpu".to_string(), 1.0)])),
        });
    }
    Model {
        dimensions: vec!["cpu".into(), "mem".into()],
        providers,
        units,
        traffic,
        overrides,
        weights: Weights {
            latency: 0.01,
            ..Weights::default()
        },
        ..Model::default()
    }
}

/// Cost of the best plan of `m` by brute force (every multiset of regions per
/// unit, judged by the independent checker); `None` when no plan is feasible
/// or there are more than `limit` plans.
fn brute_force_optimum(m: &Model, limit: u64) -> Option<Option<f64>> {
    let regions: Vec<String> = m.regions().map(|(_, r)| r.id.clone()).collect();
    let multisets = |k: usize| -> Vec<Vec<String>> {
        let mut out = Vec::new();
        let mut cur = vec![0usize; k];
        loop {
            out.push(cur.iter().map(|&i| regions[i].clone()).collect());
            // Next non-decreasing index vector.
            let mut i = k;
            loop {
                if i == 0 {
                    return out;
                }
                i -= 1;
                if cur[i] + 1 < regions.len() {
                    let v = cur[i] + 1;
                    cur[i..].iter_mut().for_each(|x| *x = v);
                    break;
                }
            }
        }
    };
    let options: Vec<Vec<Vec<String>>> = m
        .units
        .iter()
        .map(|u| multisets(u.replicas as usize))
        .collect();
    let count = options
        .iter()
        .try_fold(1u64, |acc, o| acc.checked_mul(o.len() as u64))?;
    if count > limit {
        return None;
    }
    let mut best: Option<f64> = None;
    let mut idx = vec![0usize; options.len()];
    'all: loop {
        let plan = Plan {
            placements: m
                .units
                .iter()
                .zip(&idx)
                .enumerate()
                .map(|(u, (unit, &i))| (unit.id.clone(), options[u][i].clone()))
                .collect(),
        };
        let rep = check(m, &plan);
        if rep.is_feasible() {
            best = Some(best.map_or(rep.cost.total, |b: f64| b.min(rep.cost.total)));
        }
        for k in 0..idx.len() {
            idx[k] += 1;
            if idx[k] < options[k].len() {
                continue 'all;
            }
            idx[k] = 0;
        }
        break;
    }
    Some(best)
}

/// `random_model` with heavier traffic and some region-pair egress prices,
/// so that egress weighs in the optimum.
fn traffic_model(seed: u64, nu: usize) -> Model {
    let mut m = random_model(seed, 2, 2, nu);
    let mut g = Lcg(seed ^ 0x9e37);
    for t in &mut m.traffic {
        t.gb *= 1.0 + g.below(40) as f64;
    }
    let regions: Vec<String> = m.regions().map(|(_, r)| r.id.clone()).collect();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..g.below(3) {
        let a = regions[g.below(regions.len() as u64) as usize].clone();
        let b = regions[g.below(regions.len() as u64) as usize].clone();
        if seen.insert((a.clone(), b.clone())) {
            m.egress.push(EgressPrice {
                from_region: a,
                to_region: b,
                price_per_gb: g.below(3) as f64 * 0.05,
            });
        }
    }
    m
}

/// Survivability by brute force: for each failure (provider, or also region),
/// every assignment of the displaced replicas to the other regions (a
/// co-location group's as one), survivors fixed, judged by the plain checker
/// on the model with the failure applied. `None` when too many to try.
fn brute_force_survivable(m: &Model, plan: &Plan, regions_too: bool) -> Option<bool> {
    let mut failures: Vec<(Model, Vec<String>)> = m
        .providers
        .iter()
        .map(|p| {
            let lost = p.regions.iter().map(|r| r.id.clone()).collect();
            (m.with_provider_down(&p.id), lost)
        })
        .collect();
    if regions_too {
        for (_, r) in m.regions() {
            failures.push((m.with_region_down(&r.id), vec![r.id.clone()]));
        }
    }
    let all: Vec<String> = m.regions().map(|(_, r)| r.id.clone()).collect();
    for (fm, lost) in failures {
        let targets: Vec<&String> = all.iter().filter(|r| !lost.contains(r)).collect();
        // Slots to choose: (unit ids sharing the choice, replicas each).
        let mut slots: Vec<Vec<(String, usize)>> = Vec::new();
        let mut groups: BTreeMap<String, usize> = BTreeMap::new();
        let mut base = plan.clone();
        for u in &m.units {
            let regs = base.placements.get_mut(&u.id)?;
            let n = regs.iter().filter(|r| lost.contains(r)).count();
            regs.retain(|r| !lost.contains(r));
            if n == 0 {
                continue;
            }
            match &u.colocate {
                Some(g) => {
                    let i = *groups.entry(g.clone()).or_insert_with(|| {
                        slots.push(Vec::new());
                        slots.len() - 1
                    });
                    slots[i].push((u.id.clone(), n));
                }
                None => slots.extend((0..n).map(|_| vec![(u.id.clone(), 1)])),
            }
        }
        if slots.is_empty() {
            continue;
        }
        if targets.is_empty() {
            return Some(false);
        }
        let total = (targets.len() as u64).checked_pow(slots.len() as u32)?;
        if total > 20_000 {
            return None;
        }
        let mut ok = false;
        for code in 0..total {
            let mut c = code;
            let mut p = base.clone();
            for slot in &slots {
                let r = targets[(c % targets.len() as u64) as usize];
                c /= targets.len() as u64;
                for (u, n) in slot {
                    let v = p.placements.get_mut(u)?;
                    v.extend(std::iter::repeat_n(r.clone(), *n));
                }
            }
            for v in p.placements.values_mut() {
                v.sort();
            }
            if check(&fm, &p).is_feasible() {
                ok = true;
                break;
            }
        }
        if !ok {
            return Some(false);
        }
    }
    Some(true)
}

fn opts(seed: u64) -> SolveOptions {
    SolveOptions {
        max_scans: 3_000,
        bound_iterations: 60,
        seed,
        ..SolveOptions::default()
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1.0)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn solver_plans_are_feasible_and_costed_right(seed in any::<u64>(), np in 1usize..4, rpp in 1usize..4, nu in 1usize..9) {
        let m = random_model(seed, np, rpp, nu);
        match solve(&m, &opts(seed)) {
            Ok(s) => {
                let rep = check(&m, &s.plan);
                prop_assert!(rep.is_feasible(), "{:?}", rep.violations);
                prop_assert!(close(rep.cost.total, s.cost.total), "{:?} vs {:?}", rep.cost, s.cost);
                prop_assert!(close(rep.cost.egress, s.cost.egress));
                prop_assert!(close(rep.cost.migration, s.cost.migration));
                prop_assert!(s.lower_bound <= s.cost.total + 1e-6 * s.cost.total.abs().max(1.0));
                prop_assert!(s.gap >= 0.0);
                let again = solve(&m, &opts(seed)).unwrap();
                prop_assert_eq!(&again.plan, &s.plan);
                prop_assert_eq!(again.cost, s.cost);
                // Re-planning after a region loss keeps the plan checkable.
                let lost = &m.providers[0].regions[0].id;
                let down = m.with_region_down(lost);
                let ro = ResolveOptions { solve: opts(seed), ..ResolveOptions::default() };
                if let Ok(r) = resolve(&down, &s.plan, &ro) {
                    let mm = down.with_current_placement(&s.plan);
                    let rep = check_with(&mm, &r.plan, &CheckOptions::default());
                    prop_assert!(rep.is_feasible(), "{:?}", rep.violations);
                    prop_assert!(close(rep.cost.total, r.cost.total));
                }
            }
            Err(PlacementError::Infeasible(c)) => prop_assert!(!c.is_empty()),
            Err(PlacementError::NoFeasiblePlanFound { violations }) => prop_assert!(!violations.is_empty()),
            Err(PlacementError::Invalid(_)) => {}
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }

    /// The bound (the relaxation's value, before it is capped at the plan's
    /// cost) never exceeds the brute-force optimum, on models with traffic,
    /// egress overrides, current placements with migration costs,
    /// anti-affinity, co-location and spread; and re-planning after a region
    /// loss (migration against the previous plan) keeps it below too.
    #[test]
    fn bound_never_exceeds_the_brute_force_optimum(seed in any::<u64>(), nu in 1usize..5) {
        let m = traffic_model(seed, nu);
        let Some(opt) = brute_force_optimum(&m, 6_000) else { return Ok(()) };
        match (solve(&m, &opts(seed)), opt) {
            (Ok(s), Some(opt)) => {
                let tol = 1e-6 * opt.abs().max(1.0);
                prop_assert!(s.stats.relaxation_bound <= opt + tol, "bound {} > optimum {opt}", s.stats.relaxation_bound);
                prop_assert!(s.cost.total >= opt - tol);
                let lost = &m.providers[0].regions[0].id;
                let down = m.with_region_down(lost);
                let ro = ResolveOptions { solve: opts(seed), ..ResolveOptions::default() };
                let mm = down.with_current_placement(&s.plan);
                if let (Ok(r), Some(Some(opt2))) = (resolve(&down, &s.plan, &ro), brute_force_optimum(&mm, 6_000)) {
                    prop_assert!(r.stats.relaxation_bound <= opt2 + 1e-6 * opt2.abs().max(1.0), "re-plan bound {} > optimum {opt2}", r.stats.relaxation_bound);
                }
            }
            (Ok(s), None) => prop_assert!(false, "plan for an infeasible model: {:?}", s.plan),
            (Err(_), _) => {}
        }
    }

    /// The checker's survivability verdict (exact search) agrees with brute
    /// force on the plans the solver returns, for provider failures and for
    /// provider-or-region failures.
    #[test]
    fn survivability_check_matches_brute_force(seed in any::<u64>(), nu in 1usize..6) {
        let m = random_model(seed, 3, 2, nu);
        let Ok(s) = solve(&m, &opts(seed)) else { return Ok(()) };
        for regions in [false, true] {
            let Some(expected) = brute_force_survivable(&m, &s.plan, regions) else { continue };
            let found = check_survivable_with(&m, &s.plan, &Survival { regions, ..Survival::default() });
            prop_assert_eq!(found.is_empty(), expected, "regions {}: {:?}", regions, found);
        }
    }

    /// Survivable plans (provider, and provider-or-region failures) pass the
    /// exact check, and brute force confirms them.
    #[test]
    fn survivable_plans_survive_by_brute_force(seed in any::<u64>(), nu in 1usize..5) {
        let m = random_model(seed, 3, 2, nu);
        for regions in [false, true] {
            let o = SolveOptions { survivable: true, survive_regions: regions, ..opts(seed) };
            match solve(&m, &o) {
                Ok(s) => {
                    let found = check_survivable_with(&m, &s.plan, &Survival { regions, ..Survival::default() });
                    prop_assert!(found.is_empty(), "{:?}", found);
                    prop_assert!(check(&m, &s.plan).is_feasible());
                    if let Some(ok) = brute_force_survivable(&m, &s.plan, regions) {
                        prop_assert!(ok, "brute force finds a failure the plan cannot absorb");
                    }
                }
                Err(PlacementError::Infeasible(c)) => prop_assert!(!c.is_empty()),
                Err(PlacementError::NoFeasiblePlanFound { violations }) => prop_assert!(!violations.is_empty()),
                Err(e) => prop_assert!(false, "unexpected error {e}"),
            }
        }
    }

    #[test]
    fn survivable_plans_pass_the_checker(seed in any::<u64>(), nu in 1usize..7) {
        let m = random_model(seed, 3, 2, nu);
        let o = SolveOptions { survivable: true, ..opts(seed) };
        if let Ok(s) = solve(&m, &o) {
            let rep = check_with(&m, &s.plan, &CheckOptions { survivable: true, migration_budget: None });
            prop_assert!(rep.is_feasible(), "{:?}", rep.violations);
        }
    }

    // GAP instances come from the `bench-support` scaffolding.
    #[cfg(feature = "bench-support")]
    #[test]
    fn small_gap_bound_and_cost_bracket_the_optimum(seed in any::<u64>(), m in 2usize..4, n in 2usize..7) {
        let mut g = Lcg(seed);
        let cost: Vec<Vec<i64>> = (0..m).map(|_| (0..n).map(|_| g.below(50) as i64).collect()).collect();
        let demand: Vec<Vec<i64>> = (0..m).map(|_| (0..n).map(|_| 1 + g.below(10) as i64).collect()).collect();
        let capacity: Vec<i64> = (0..m).map(|_| 5 + g.below(20) as i64).collect();
        let gi = GapInstance { agents: m, jobs: n, cost, demand, capacity };
        // Brute force.
        let mut best: Option<i64> = None;
        let total = (m as u64).pow(n as u32);
        for code in 0..total {
            let mut c = code;
            let a: Vec<usize> = (0..n).map(|_| { let x = (c % m as u64) as usize; c /= m as u64; x }).collect();
            if let Some(v) = gi.assignment_cost(&a) {
                best = Some(best.map_or(v, |b: i64| b.min(v)));
            }
        }
        let model = gi.to_model();
        match (solve(&model, &opts(seed)), best) {
            (Ok(s), Some(opt)) => {
                prop_assert!(s.lower_bound <= opt as f64 + 1e-9, "bound {} > opt {opt}", s.lower_bound);
                prop_assert!(s.cost.total >= opt as f64 - 1e-9);
                prop_assert!(check(&model, &s.plan).is_feasible());
            }
            (Ok(s), None) => prop_assert!(false, "solver returned a plan for an infeasible instance: {:?}", s.plan),
            (Err(_), _) => {}
        }
    }
}
