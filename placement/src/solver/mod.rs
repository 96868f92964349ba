//! The solver: Lagrangian bound, construction, local search, and the public
//! operations [`solve`], [`resolve`] and [`what_if`].
//!
//! Determinism: with `time_limit: None` the result depends only on the model,
//! the seed and the iteration limits. With a wall-clock limit, the search
//! stops when the time is up, so the plan may depend on machine speed (it is
//! still always a checked feasible plan, with a valid bound).

pub(crate) mod bound;
pub(crate) mod construct;
pub(crate) mod local_search;
pub(crate) mod rng;
pub(crate) mod state;

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Conflict, PlacementError};
use crate::explain::{Explanation, explain};
use crate::model::{CostBreakdown, Model, Plan};
use crate::validate::{Instance, compile};
use local_search::{Best, Limits};
use rng::Rng;
use state::{State, evaluate};

/// Options of the solver.
#[derive(Debug, Clone, PartialEq)]
pub struct SolveOptions {
    /// Wall-clock budget; `None` for a purely iteration-limited (fully
    /// deterministic) run.
    pub time_limit: Option<Duration>,
    /// Maximum number of item-neighbourhood scans of the local search.
    pub max_scans: u64,
    /// Maximum number of subgradient iterations of the lower bound.
    pub bound_iterations: u32,
    /// Seed of the pseudo-random generator.
    pub seed: u64,
    /// Return only a plan that survives the loss of any one provider: its
    /// replicas there can be re-placed with every hard constraint met (exact,
    /// see [`crate::checker::check_survivable_with`]).
    pub survivable: bool,
    /// With `survivable`: also any single region can fail.
    pub survive_regions: bool,
    /// Compute per-unit explanations (costly on very large models).
    pub explain: bool,
}

impl Default for SolveOptions {
    fn default() -> Self {
        SolveOptions {
            time_limit: None,
            max_scans: 2_000_000,
            bound_iterations: 300,
            seed: 1,
            survivable: false,
            survive_regions: false,
            explain: true,
        }
    }
}

impl SolveOptions {
    /// Options with a wall-clock budget (iteration limits effectively lifted).
    pub fn with_time_limit(limit: Duration) -> Self {
        SolveOptions {
            time_limit: Some(limit),
            max_scans: u64::MAX,
            ..SolveOptions::default()
        }
    }
}

/// Statistics of a run.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SolveStats {
    /// Subgradient iterations done for the bound.
    pub bound_iterations: u32,
    /// Item-neighbourhood scans done by the local search.
    pub scans: u64,
    /// Wall-clock seconds spent (not deterministic).
    pub seconds: f64,
    /// Capacity scale used to obtain a survivable plan (1 = full capacity).
    pub capacity_scale: f64,
    /// Existing replicas whose region changed.
    pub moved_replicas: u64,
    /// The relaxation's value before [`Solution::lower_bound`] caps it at the
    /// plan's cost (tests compare it with brute-force optima).
    pub relaxation_bound: f64,
}

/// A solved placement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Solution {
    /// The plan: every replica's region.
    pub plan: Plan,
    /// Cost of the plan, by term.
    pub cost: CostBreakdown,
    /// A provable lower bound on the optimal cost (of the model without the
    /// survivability reservation).
    pub lower_bound: f64,
    /// Relative gap `(cost - lower_bound) / cost` (0 when the cost is 0).
    pub gap: f64,
    /// Per-unit explanations (empty if disabled).
    pub explanations: Vec<Explanation>,
    /// Run statistics.
    pub stats: SolveStats,
}

/// Options of [`resolve`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ResolveOptions {
    /// Maximum number of replicas of existing units that may move, forced
    /// moves (out of regions that are down or gone) excluded. `None`: no limit.
    pub migration_budget: Option<u64>,
    /// Search-only penalty per voluntary move; `None` picks one larger than
    /// any single-replica saving, so replicas move only when needed.
    pub move_penalty: Option<f64>,
    /// Solver options.
    pub solve: SolveOptions,
}

/// A failure scenario for [`what_if`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Failure {
    /// A whole provider fails.
    Provider(String),
    /// One region fails.
    Region(String),
}

/// Result of [`what_if`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WhatIf {
    /// The plan before the failure.
    pub before: Solution,
    /// The re-plan after the failure.
    pub after: Solution,
    /// The model after the failure (with current placement = `before`).
    pub failed_model: Model,
}

pub(crate) struct RunResult {
    pub(crate) best: Best,
    pub(crate) bound: f64,
    pub(crate) bound_iterations: u32,
}

/// Full pipeline on a compiled instance with capacities `cap`.
pub(crate) fn run(
    model: &Model,
    inst: &Instance,
    cap: &[f64],
    opts: &SolveOptions,
    warm: bool,
    move_penalty: f64,
    deadline: Option<Instant>,
) -> RunResult {
    let start = Instant::now();
    let mut rng = Rng::new(opts.seed);
    let nrd = inst.regions.len() * inst.dims;
    let zeros = vec![0.0; nrd];
    let a0 = construct::construct(inst, cap, &zeros, warm);
    let s0 = State::new(inst, cap.to_vec(), a0, move_penalty);
    let ub0 = s0.feasible().then_some(s0.cost);
    // What follows the search (building the plan, explanations, the
    // survivability check) is not interruptible: time it once on the first
    // plan and end the search early by three times that (it also stands for
    // freeing the instance) plus 1% of the budget
    // (scheduling jitter on a loaded machine), so that the call as a whole
    // returns within its time limit.
    let deadline = deadline.map(|d| {
        let t = Instant::now();
        let assign = assign_of(inst, &s0.apos);
        let _ = evaluate(inst, &assign);
        let plan = plan_of(inst, &assign);
        if opts.explain {
            let _ = explain(model, &plan);
        }
        if opts.survivable {
            let _ = crate::checker::check_survivable_with(model, &plan, &survival(opts));
        }
        drop(plan);
        let budget = d.saturating_duration_since(start);
        let reserve = (t.elapsed() * 3 + budget / 100).min(budget / 3);
        d.checked_sub(reserve).unwrap_or(d)
    });
    // Large instances (sweep search) profit more from a tight bound and its
    // multipliers than from search time: give the bound 40% there (70% with
    // many allowed regions per item, see below), 25% else.
    let work: usize = inst
        .blocks
        .iter()
        .map(|b| b.allowed.len() * b.n_items as usize)
        .sum();
    // With many allowed regions per item (x100 models) the search rarely
    // improves on the price-guided construction: the bound (and the
    // multipliers the construction uses) gets 70% there.
    let avg_allowed = work as f64
        / inst
            .blocks
            .iter()
            .map(|b| b.n_items as f64)
            .sum::<f64>()
            .max(1.0);
    let share = match (work > 100_000, avg_allowed >= 20.0) {
        (true, true) => 0.7,
        (true, false) => 0.4,
        _ => 0.25,
    };
    let bound_deadline =
        deadline.map(|d| start + d.saturating_duration_since(start).mul_f64(share));
    let bnd = bound::lagrangian(inst, ub0, opts.bound_iterations, bound_deadline);
    let a1 = construct::construct(inst, cap, &bnd.lambda, warm);
    let s1 = State::new(inst, cap.to_vec(), a1, move_penalty);
    // On large models the price-guided construction may overflow a little
    // while being much cheaper; the penalised sweeps then repair it. The
    // feasible zero-price construction is kept as a fallback.
    let repair = work > 100_000 && s0.feasible() && !s1.feasible() && s1.cost < s0.cost;
    let pick1 = match (s0.feasible(), s1.feasible()) {
        _ if repair => true,
        (true, false) => false,
        (false, true) => true,
        _ => s1.cost + s1.penalty() <= s0.cost + s0.penalty(),
    };
    let fallback = repair.then(|| (s0.apos.clone(), s0.cost));
    let mut st = if pick1 { s1 } else { s0 };
    if repair {
        // Start with stiffer capacity penalties so the first sweeps repair.
        st.w.iter_mut().for_each(|w| *w *= 4.0);
    }
    let mut best = local_search::search(
        &mut st,
        Limits {
            deadline,
            max_scans: opts.max_scans,
        },
        &mut rng,
    );
    if let Some((apos, cost)) = fallback {
        if !best.feasible || cost < best.cost {
            best.apos = apos;
            best.cost = cost;
            best.feasible = true;
        }
    }
    RunResult {
        best,
        bound: bnd.value,
        bound_iterations: bnd.iterations,
    }
}

fn assign_of(inst: &Instance, apos: &[u32]) -> Vec<u32> {
    apos.iter()
        .enumerate()
        .map(|(i, &p)| inst.blocks[inst.items[i] as usize].allowed[p as usize])
        .collect()
}

pub(crate) fn plan_of(inst: &Instance, assign: &[u32]) -> Plan {
    let mut plan = Plan::default();
    for u in &inst.units {
        let b = &inst.blocks[u.block as usize];
        let mut v: Vec<String> = if u.grouped {
            vec![
                inst.regions[assign[b.first_item as usize] as usize]
                    .id
                    .clone();
                u.replicas as usize
            ]
        } else {
            (b.first_item..b.first_item + b.n_items)
                .map(|it| inst.regions[assign[it as usize] as usize].id.clone())
                .collect()
        };
        v.sort();
        plan.placements.insert(u.id.clone(), v);
    }
    plan
}

/// The failures a survivable plan must absorb.
fn survival(opts: &SolveOptions) -> crate::checker::Survival {
    crate::checker::Survival {
        regions: opts.survive_regions,
        ..crate::checker::Survival::default()
    }
}

/// Failures that no plan can absorb: the model with the failed provider (or
/// region) down is infeasible by itself (its conflicts name the units and
/// constraints).
fn impossible_failures(model: &Model, opts: &SolveOptions) -> Vec<Conflict> {
    let mut failures: Vec<(String, Model)> = model
        .providers
        .iter()
        .filter(|p| !p.down)
        .map(|p| {
            (
                format!("provider `{}`", p.id),
                model.with_provider_down(&p.id),
            )
        })
        .collect();
    if opts.survive_regions {
        failures.extend(
            model
                .regions()
                .filter(|(p, r)| !p.down && !r.down)
                .map(|(_, r)| (format!("region `{}`", r.id), model.with_region_down(&r.id))),
        );
    }
    let mut out = Vec::new();
    for (failure, m) in failures {
        match compile(&m) {
            Err(PlacementError::Infeasible(conflicts)) => {
                out.push(Conflict::Unsurvivable { failure, conflicts })
            }
            Err(PlacementError::Invalid(crate::error::ModelError::NoRegions)) => {
                out.push(Conflict::Unsurvivable {
                    failure,
                    conflicts: Vec::new(),
                })
            }
            _ => {}
        }
    }
    out
}

fn finish(
    model: &Model,
    inst: &Instance,
    r: RunResult,
    opts: &SolveOptions,
    start: Instant,
    scale: f64,
    violations: impl FnOnce() -> Vec<String>,
) -> Result<Solution, PlacementError> {
    if !r.best.feasible {
        return Err(PlacementError::NoFeasiblePlanFound {
            violations: violations(),
        });
    }
    let assign = assign_of(inst, &r.best.apos);
    let cost = evaluate(inst, &assign);
    let plan = plan_of(inst, &assign);
    let lb = r.bound.min(cost.total);
    let gap = if cost.total.abs() > 1e-12 {
        ((cost.total - lb) / cost.total.abs()).max(0.0)
    } else {
        0.0
    };
    let moved = (0..inst.units.len())
        .map(|u| state::moved_replicas(inst, &assign, u) as u64)
        .sum();
    let explanations = if opts.explain {
        explain(model, &plan)
    } else {
        Vec::new()
    };
    Ok(Solution {
        plan,
        cost,
        lower_bound: lb,
        gap,
        explanations,
        stats: SolveStats {
            bound_iterations: r.bound_iterations,
            scans: r.best.scans,
            seconds: start.elapsed().as_secs_f64(),
            capacity_scale: scale,
            moved_replicas: moved,
            relaxation_bound: r.bound,
        },
    })
}

fn solve_compiled(
    model: &Model,
    inst: &Instance,
    opts: &SolveOptions,
    warm: bool,
    move_penalty: f64,
    start: Instant,
) -> Result<Solution, PlacementError> {
    let deadline = opts.time_limit.map(|t| start + t);
    let cap0: Vec<f64> = inst
        .regions
        .iter()
        .flat_map(|r| r.cap.iter().map(move |&c| if r.down { 0.0 } else { c }))
        .collect();
    if !opts.survivable {
        let r = run(model, inst, &cap0, opts, warm, move_penalty, deadline);
        let apos = r.best.apos.clone();
        let viol = move || {
            let st = State::new(inst, cap0, apos, move_penalty);
            st.violations()
        };
        return finish(model, inst, r, opts, start, 1.0, viol);
    }
    // Survivable: a failure that leaves the model infeasible by itself cannot be
    // absorbed by any plan: say which (the conflicts name units and constraints).
    let impossible = impossible_failures(model, opts);
    if !impossible.is_empty() {
        return Err(PlacementError::Infeasible(impossible));
    }
    // Shrink the usable capacity until the exact check (the checker's: every
    // failure re-solved with the survivors in place) passes.
    let scales = [
        1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5, 0.45, 0.4, 0.35,
    ];
    let mut last_bound = f64::NEG_INFINITY;
    let mut last_problems = Vec::new();
    for (t, &s) in scales.iter().enumerate() {
        let sub_deadline = deadline.map(|d| {
            let left = d.saturating_duration_since(Instant::now());
            Instant::now() + left / (scales.len() - t).min(4) as u32
        });
        let mut o = opts.clone();
        o.max_scans = opts.max_scans / 4;
        let cap: Vec<f64> = cap0.iter().map(|c| c * s).collect();
        let r = run(model, inst, &cap, &o, warm, move_penalty, sub_deadline);
        if s == 1.0 {
            last_bound = r.bound;
        }
        if r.best.feasible {
            let assign = assign_of(inst, &r.best.apos);
            let problems = crate::checker::check_survivable_with(
                model,
                &plan_of(inst, &assign),
                &survival(opts),
            );
            if problems.is_empty() {
                let r = RunResult {
                    bound: last_bound,
                    ..r
                };
                return finish(model, inst, r, opts, start, s, Vec::new);
            }
            last_problems = problems;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
    }
    let mut violations = vec![
        "no plan found whose spare capacity absorbs the failure of every single provider".into(),
    ];
    violations.extend(last_problems);
    Err(PlacementError::NoFeasiblePlanFound { violations })
}

/// Solves a placement model.
///
/// Returns a feasible plan with its cost breakdown, a lower bound and the
/// gap, or a typed error: [`PlacementError::Invalid`] for malformed input,
/// [`PlacementError::Infeasible`] with the conflicting constraints when
/// infeasibility is proven, [`PlacementError::NoFeasiblePlanFound`] when the
/// search ran out of budget without a feasible plan.
pub fn solve(model: &Model, opts: &SolveOptions) -> Result<Solution, PlacementError> {
    let start = Instant::now();
    let inst = compile(model)?;
    let warm = model.units.iter().any(|u| !u.current.is_empty());
    solve_compiled(model, &inst, opts, warm, 0.0, start)
}

/// Re-plans after a change (capacity loss, provider or region down, units
/// added or removed), starting from `previous` and moving as few replicas as
/// needed, within an optional migration budget.
///
/// The returned cost includes the migration cost of the moves, computed
/// against `previous` (the model used is `model.with_current_placement(previous)`).
pub fn resolve(
    model: &Model,
    previous: &Plan,
    opts: &ResolveOptions,
) -> Result<Solution, PlacementError> {
    let start = Instant::now();
    let m = model.with_current_placement(previous);
    let mut inst = compile(&m)?;
    inst.budget = opts.migration_budget;
    let mp = match opts.move_penalty {
        Some(p) if p.is_finite() && p >= 0.0 => p,
        Some(_) => {
            return Err(crate::error::ModelError::NonFinite {
                context: "move_penalty".into(),
            }
            .into());
        }
        None => {
            let spread = inst
                .blocks
                .iter()
                .map(|b| {
                    let lo = b.cost.iter().copied().fold(f64::INFINITY, f64::min);
                    let hi = b.cost.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    if lo.is_finite() { hi - lo } else { 0.0 }
                })
                .fold(0.0, f64::max);
            2.0 * spread + 1.0
        }
    };
    if opts.migration_budget.is_some() || mp > 0.0 {
        for b in &mut inst.blocks {
            if b.members
                .iter()
                .any(|&(u, _)| inst.units[u as usize].cur_total > 0)
            {
                b.coupled = true;
            }
        }
    }
    solve_compiled(&m, &inst, &opts.solve, true, mp, start)
}

/// Plans the model, then re-plans it as if `failure` happened (the failed
/// provider or region is marked down and the replicas there must move).
pub fn what_if(
    model: &Model,
    failure: &Failure,
    opts: &SolveOptions,
) -> Result<WhatIf, PlacementError> {
    let failed = match failure {
        Failure::Provider(p) => {
            if !model.providers.iter().any(|x| &x.id == p) {
                return Err(PlacementError::UnknownTarget(p.clone()));
            }
            model.with_provider_down(p)
        }
        Failure::Region(r) => {
            if !model.regions().any(|(_, x)| &x.id == r) {
                return Err(PlacementError::UnknownTarget(r.clone()));
            }
            model.with_region_down(r)
        }
    };
    let before = solve(model, opts)?;
    let ro = ResolveOptions {
        solve: opts.clone(),
        ..ResolveOptions::default()
    };
    let after = resolve(&failed, &before.plan, &ro)?;
    Ok(WhatIf {
        failed_model: failed.with_current_placement(&before.plan),
        before,
        after,
    })
}

#[cfg(test)]
mod tests {
    use super::rng::Rng;
    use super::state::{State, evaluate};
    use crate::model::{Model, Traffic};
    use crate::synthetic::{SyntheticSpec, generate};
    use crate::validate::compile;

    fn coupled_model() -> Model {
        let mut m = generate(&SyntheticSpec::new(12, 6, 9));
        let ids: Vec<String> = m.units.iter().map(|u| u.id.clone()).collect();
        for i in 0..ids.len() - 1 {
            m.traffic.push(Traffic {
                from: ids[i].clone(),
                to: ids[i + 1].clone(),
                gb: 10.0 + i as f64,
            });
        }
        let regions: Vec<String> = m.regions().map(|(_, r)| r.id.clone()).collect();
        m.units[0].current = vec![regions[0].clone(), regions[1].clone()];
        m.units[0].migration_cost = 3.0;
        m.units[1].anti_affinity = vec![ids[2].clone()];
        m.units[3].colocate = Some("g".into());
        m.units[3].spread = None;
        m.units[4].colocate = Some("g".into());
        m.units[4].spread = None;
        m.units[4].require_labels = m.units[3].require_labels.clone();
        m.units[3].replicas = 1;
        m.units[4].replicas = 1;
        m
    }

    #[test]
    fn incremental_deltas_match_full_recomputation() {
        let m = coupled_model();
        let inst = compile(&m).expect("valid model");
        let cap: Vec<f64> = inst.regions.iter().flat_map(|r| r.cap.clone()).collect();
        let apos = vec![0u32; inst.items.len()];
        let mut st = State::new(&inst, cap, apos, 0.5);
        let mut rng = Rng::new(5);
        for _ in 0..400 {
            let i = rng.below(inst.items.len());
            let na = st.block(i).allowed.len();
            let q = rng.below(na);
            let before_cost = st.cost;
            let before_hard = st.hard;
            let d = st.apply_shift(i, q);
            let full = evaluate(&inst, &st.assign).total;
            assert!(
                (before_cost + d.cost - full).abs() < 1e-6,
                "cost delta mismatch"
            );
            let mut fresh = st.clone();
            fresh.recompute();
            assert_eq!(fresh.hard, before_hard + d.hard, "hard delta mismatch");
            assert_eq!(fresh.hard, st.hard);
            st.cost = full;
            let j = rng.below(inst.items.len());
            if let Some(ds) = st.delta_swap(i, j) {
                let mut t = st.clone();
                let (ri, rj) = (t.assign[i], t.assign[j]);
                let qi = t.block(i).pos(rj).expect("allowed");
                let qj = t.block(j).pos(ri).expect("allowed");
                t.apply_shift(i, qi);
                t.apply_shift(j, qj);
                let after = evaluate(&inst, &t.assign).total;
                assert!(
                    (st.cost + ds.cost - after).abs() < 1e-6,
                    "swap delta mismatch"
                );
            }
        }
    }

    #[test]
    fn rng_is_deterministic_and_in_range() {
        let mut a = Rng::new(42);
        let mut b = Rng::new(42);
        for _ in 0..1000 {
            let x = a.below(7);
            assert_eq!(x, b.below(7));
            assert!(x < 7);
            let u = a.unit();
            assert_eq!(u, b.unit());
            assert!((0.0..1.0).contains(&u));
        }
    }
}
