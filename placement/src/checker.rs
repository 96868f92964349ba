//! Independent plan checker.
//!
//! This module does not use the solver's compiled instance: it recomputes
//! every constraint and every cost term directly from the [`Model`] (by ids)
//! and the [`Plan`], so that it can be used to verify the solver.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::model::{CostBreakdown, Model, Plan, Provider, Region, Unit};

/// Options of [`check_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CheckOptions {
    /// Also verify that every single-provider failure can be absorbed.
    pub survivable: bool,
    /// Maximum number of voluntary replica moves (forced moves excluded).
    pub migration_budget: Option<u64>,
}

/// Result of a check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct CheckReport {
    /// Every hard-constraint violation found (empty: the plan is feasible).
    pub violations: Vec<String>,
    /// The recomputed cost.
    pub cost: CostBreakdown,
    /// Existing replicas that changed region.
    pub moved_replicas: u64,
    /// Moves out of regions that are down or gone (not counted in a budget).
    pub forced_moves: u64,
}

impl CheckReport {
    /// True when no violation was found.
    pub fn is_feasible(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Checks every hard constraint of `plan` and recomputes its cost.
pub fn check(model: &Model, plan: &Plan) -> CheckReport {
    check_with(model, plan, &CheckOptions::default())
}

struct Ctx<'a> {
    regions: BTreeMap<&'a str, (&'a Provider, &'a Region)>,
    egress: crate::model::EgressPrices<'a>,
    overrides: BTreeMap<(&'a str, &'a str), &'a crate::model::Override>,
}

impl<'a> Ctx<'a> {
    fn new(model: &'a Model) -> Self {
        let mut regions = BTreeMap::new();
        for p in &model.providers {
            for r in &p.regions {
                regions.insert(r.id.as_str(), (p, r));
            }
        }
        let overrides = model
            .overrides
            .iter()
            .map(|o| ((o.unit.as_str(), o.region.as_str()), o))
            .collect();
        Ctx {
            regions,
            egress: crate::model::EgressPrices::new(model),
            overrides,
        }
    }

    fn demand(&self, u: &'a Unit, region: &str) -> &'a BTreeMap<String, f64> {
        match self.overrides.get(&(u.id.as_str(), region)) {
            Some(o) if o.demand.is_some() => o.demand.as_ref().unwrap_or(&u.demand),
            _ => &u.demand,
        }
    }

    fn compute_cost(&self, u: &Unit, region: &Region) -> f64 {
        if let Some(o) = self.overrides.get(&(u.id.as_str(), region.id.as_str())) {
            if let Some(c) = o.cost {
                return c;
            }
        }
        let d = match self.overrides.get(&(u.id.as_str(), region.id.as_str())) {
            Some(o) => o.demand.as_ref().unwrap_or(&u.demand),
            None => &u.demand,
        };
        d.iter()
            .map(|(k, v)| v * region.price.get(k).copied().unwrap_or(0.0))
            .sum()
    }
}

/// Reasons (from the unit's filters) why the unit may not run in `region`.
fn filter(u: &Unit, p: &Provider, r: &Region) -> Vec<String> {
    let mut v = Vec::new();
    if p.down || r.down {
        v.push("down".to_string());
    }
    if !u.allowed_regions.is_empty() && !u.allowed_regions.contains(&r.id) {
        v.push("not allowed".to_string());
    }
    if u.forbidden_regions.contains(&r.id) {
        v.push("forbidden".to_string());
    }
    for (k, vals) in &u.require_labels {
        if !r.labels.get(k).is_some_and(|x| vals.contains(x)) {
            v.push(format!("label {k}"));
        }
    }
    for (k, vals) in &u.forbid_labels {
        if r.labels.get(k).is_some_and(|x| vals.contains(x)) {
            v.push(format!("forbidden label {k}"));
        }
    }
    for c in &u.require_certifications {
        if !r.certifications.contains(c) {
            v.push(format!("certification {c}"));
        }
    }
    if let Some(max) = u.max_latency_ms {
        for ur in &u.user_regions {
            if !r.latency_ms.get(ur).is_some_and(|l| *l <= max) {
                v.push(format!("latency to {ur}"));
            }
        }
    }
    v
}

/// Checks `plan` against `model` with options.
pub fn check_with(model: &Model, plan: &Plan, opts: &CheckOptions) -> CheckReport {
    let ctx = Ctx::new(model);
    let mut rep = CheckReport::default();
    let w = model.weights;
    let units: BTreeMap<&str, &Unit> = model.units.iter().map(|u| (u.id.as_str(), u)).collect();
    for id in plan.placements.keys() {
        if !units.contains_key(id.as_str()) {
            rep.violations
                .push(format!("plan places unknown unit `{id}`"));
        }
    }
    let mut load: BTreeMap<(&str, &str), f64> = BTreeMap::new();
    let mut ok_units = BTreeMap::new();
    for u in &model.units {
        let Some(regs) = plan.placements.get(&u.id) else {
            rep.violations
                .push(format!("unit `{}` is not placed", u.id));
            continue;
        };
        if regs.len() != u.replicas as usize {
            rep.violations.push(format!(
                "unit `{}` has {} placed replicas, expected {}",
                u.id,
                regs.len(),
                u.replicas
            ));
        }
        let mut all_known = true;
        for r in regs {
            let Some((p, reg)) = ctx.regions.get(r.as_str()) else {
                rep.violations
                    .push(format!("unit `{}` placed in unknown region `{r}`", u.id));
                all_known = false;
                continue;
            };
            let why = filter(u, p, reg);
            if !why.is_empty() {
                rep.violations.push(format!(
                    "unit `{}` may not run in `{r}`: {}",
                    u.id,
                    why.join(", ")
                ));
            }
            for (k, v) in ctx.demand(u, r) {
                *load.entry((reg.id.as_str(), k.as_str())).or_default() += v;
            }
            rep.cost.compute += w.compute * ctx.compute_cost(u, reg);
            let lat = u
                .user_regions
                .iter()
                .filter_map(|ur| reg.latency_ms.get(ur).copied())
                .fold(0.0, f64::max);
            rep.cost.latency += w.latency * lat;
        }
        if !all_known {
            continue;
        }
        ok_units.insert(u.id.as_str(), regs);
        if let Some(s) = u.spread {
            let provs: BTreeSet<&str> = regs
                .iter()
                .map(|r| ctx.regions[r.as_str()].0.id.as_str())
                .collect();
            let rs: BTreeSet<&str> = regs.iter().map(|r| r.as_str()).collect();
            if (provs.len() as u32) < s.min_providers {
                rep.violations.push(format!(
                    "unit `{}` spans {} provider(s), needs {}",
                    u.id,
                    provs.len(),
                    s.min_providers
                ));
            }
            if (rs.len() as u32) < s.min_regions {
                rep.violations.push(format!(
                    "unit `{}` spans {} region(s), needs {}",
                    u.id,
                    rs.len(),
                    s.min_regions
                ));
            }
        }
        // Migration.
        if !u.current.is_empty() {
            let mut cur: BTreeMap<&str, u64> = BTreeMap::new();
            let mut forced = 0u64;
            for r in &u.current {
                *cur.entry(r.as_str()).or_default() += 1;
                match ctx.regions.get(r.as_str()) {
                    Some((p, reg)) if !p.down && !reg.down => {}
                    _ => forced += 1,
                }
            }
            let mut new: BTreeMap<&str, u64> = BTreeMap::new();
            for r in regs {
                *new.entry(r.as_str()).or_default() += 1;
            }
            let matched: u64 = cur
                .iter()
                .map(|(r, c)| (*c).min(new.get(r).copied().unwrap_or(0)))
                .sum();
            let moved = (u.replicas as u64).min(u.current.len() as u64) - matched;
            rep.moved_replicas += moved;
            rep.forced_moves += forced.min(moved);
            rep.cost.migration += w.migration * u.migration_cost * moved as f64;
        }
    }
    // Capacity.
    for ((r, k), l) in &load {
        let (_, reg) = ctx.regions[r];
        let c = reg.capacity.get(*k).copied().unwrap_or(0.0);
        if *l > c + 1e-9 * c.abs().max(1.0) {
            rep.violations
                .push(format!("region `{r}` {k} load {l} exceeds capacity {c}"));
        }
    }
    // Co-location.
    let mut groups: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for u in &model.units {
        if let (Some(g), Some(regs)) = (&u.colocate, ok_units.get(u.id.as_str())) {
            groups
                .entry(g.as_str())
                .or_default()
                .extend(regs.iter().map(|r| r.as_str()));
        }
    }
    for (g, rs) in &groups {
        if rs.len() > 1 {
            rep.violations
                .push(format!("co-location group `{g}` spans regions {rs:?}"));
        }
    }
    // Anti-affinity.
    for u in &model.units {
        for a in &u.anti_affinity {
            if let (Some(x), Some(y)) = (ok_units.get(u.id.as_str()), ok_units.get(a.as_str())) {
                if let Some(r) = x.iter().find(|r| y.contains(r)) {
                    rep.violations.push(format!(
                        "anti-affine units `{}` and `{a}` share region `{r}`",
                        u.id
                    ));
                }
            }
        }
    }
    // Egress.
    for t in &model.traffic {
        let (Some(a), Some(b)) = (ok_units.get(t.from.as_str()), ok_units.get(t.to.as_str()))
        else {
            continue;
        };
        if a.is_empty() || b.is_empty() {
            continue;
        }
        let mut s = 0.0;
        for ra in a.iter() {
            for rb in b.iter() {
                s += ctx.egress.price(ra, rb);
            }
        }
        rep.cost.egress += w.egress * t.gb * s / (a.len() as f64 * b.len() as f64);
    }
    rep.cost.total = rep.cost.compute + rep.cost.egress + rep.cost.migration + rep.cost.latency;
    if let Some(bud) = opts.migration_budget {
        let voluntary = rep.moved_replicas - rep.forced_moves;
        if voluntary > bud {
            rep.violations.push(format!(
                "{voluntary} voluntary replica moves exceed the migration budget {bud}"
            ));
        }
    }
    if opts.survivable && rep.violations.is_empty() {
        rep.violations.extend(check_survivable(model, plan));
    }
    rep
}

/// Simulates the failure of each provider: the replicas placed there must
/// fit (first fit decreasing, cheapest region first) into the spare capacity
/// of the other providers' regions that their filters allow. Returns one
/// message per provider whose failure cannot be absorbed.
pub fn check_survivable(model: &Model, plan: &Plan) -> Vec<String> {
    let ctx = Ctx::new(model);
    let units: BTreeMap<&str, &Unit> = model.units.iter().map(|u| (u.id.as_str(), u)).collect();
    let mut load: BTreeMap<(&str, &str), f64> = BTreeMap::new();
    for (uid, regs) in &plan.placements {
        let Some(u) = units.get(uid.as_str()) else {
            continue;
        };
        for r in regs {
            if !ctx.regions.contains_key(r.as_str()) {
                continue;
            }
            for (k, v) in ctx.demand(u, r) {
                *load.entry((r.as_str(), k.as_str())).or_default() += v;
            }
        }
    }
    let total_cap: BTreeMap<&str, f64> = model
        .dimensions
        .iter()
        .map(|d| {
            (
                d.as_str(),
                model
                    .regions()
                    .map(|(_, r)| r.capacity.get(d).copied().unwrap_or(0.0))
                    .sum::<f64>()
                    .max(1e-12),
            )
        })
        .collect();
    let mut out = Vec::new();
    for p in &model.providers {
        if p.down {
            continue;
        }
        let mut displaced: Vec<(&Unit, &str)> = Vec::new();
        for (uid, regs) in &plan.placements {
            let Some(u) = units.get(uid.as_str()) else {
                continue;
            };
            for r in regs {
                if ctx
                    .regions
                    .get(r.as_str())
                    .is_some_and(|(pp, _)| pp.id == p.id)
                {
                    displaced.push((u, r.as_str()));
                }
            }
        }
        let size = |u: &Unit, r: &str| {
            ctx.demand(u, r)
                .iter()
                .map(|(k, v)| v / total_cap.get(k.as_str()).copied().unwrap_or(1.0))
                .fold(0.0, f64::max)
        };
        displaced.sort_by(|a, b| {
            size(b.0, b.1)
                .total_cmp(&size(a.0, a.1))
                .then(a.0.id.cmp(&b.0.id))
        });
        let mut l = load.clone();
        let mut failed = None;
        for (u, _) in &displaced {
            let mut cands: Vec<(f64, &Region)> = model
                .regions()
                .filter(|(pp, r)| pp.id != p.id && filter(u, pp, r).is_empty())
                .map(|(_, r)| (ctx.compute_cost(u, r), r))
                .collect();
            cands.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.id.cmp(&b.1.id)));
            let fit = cands.into_iter().find(|(_, r)| {
                ctx.demand(u, &r.id).iter().all(|(k, v)| {
                    let c = r.capacity.get(k).copied().unwrap_or(0.0);
                    l.get(&(r.id.as_str(), k.as_str())).copied().unwrap_or(0.0) + v
                        <= c + 1e-9 * c.abs().max(1.0)
                })
            });
            match fit {
                Some((_, r)) => {
                    for (k, v) in ctx.demand(u, &r.id) {
                        *l.entry((r.id.as_str(), k.as_str())).or_default() += v;
                    }
                }
                None => {
                    failed = Some(u.id.clone());
                    break;
                }
            }
        }
        if let Some(uid) = failed {
            out.push(format!(
                "if provider `{}` fails, a replica of `{uid}` finds no spare capacity elsewhere",
                p.id
            ));
        }
    }
    out
}
