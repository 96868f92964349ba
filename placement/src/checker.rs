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
    /// Also verify that every single-provider failure can be absorbed
    /// (exactly, see [`check_survivable`]).
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

/// Checks that `plan` survives the loss of any one provider: for each
/// provider, the replicas placed there can be re-placed in the other
/// providers' regions, the surviving replicas staying where they are, so that
/// every hard constraint holds again (filters, capacity of the spare room,
/// spread, co-location, anti-affinity). Returns one message per failure that
/// cannot be absorbed, naming a unit and the constraint that blocks it.
/// Exact, see [`check_survivable_with`].
pub fn check_survivable(model: &Model, plan: &Plan) -> Vec<String> {
    check_survivable_with(model, plan, &Survival::default())
}

/// Which single failures [`check_survivable_with`] tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Survival {
    /// Also the loss of any one region (not only of any one provider).
    pub regions: bool,
    /// Search nodes per failure; a failure not decided within them is
    /// reported as not absorbed (conservative).
    pub max_nodes: u64,
}

impl Default for Survival {
    fn default() -> Self {
        Survival {
            regions: false,
            max_nodes: 200_000,
        }
    }
}

/// A displaced item: one replica of a unit, or a whole co-location group
/// (its replicas all share one region).
struct Item<'a> {
    units: Vec<(&'a Unit, u64)>,
    label: String,
}

/// Exact survivability check: for each failure (every provider, and with
/// `opts.regions` every region), a depth-first search re-places the displaced
/// replicas (largest first, identical replicas in non-decreasing region
/// order, pruning on capacity, filters, anti-affinity and spread still
/// reachable). Returns one message per failure that cannot be absorbed.
pub fn check_survivable_with(model: &Model, plan: &Plan, opts: &Survival) -> Vec<String> {
    let mut failures: Vec<(String, BTreeSet<&str>)> = Vec::new();
    for p in &model.providers {
        if !p.down {
            let rs = p.regions.iter().map(|r| r.id.as_str()).collect();
            failures.push((format!("provider `{}`", p.id), rs));
        }
    }
    if opts.regions {
        for (p, r) in model.regions() {
            if !p.down && !r.down {
                failures.push((
                    format!("region `{}`", r.id),
                    BTreeSet::from([r.id.as_str()]),
                ));
            }
        }
    }
    let mut out = Vec::new();
    for (name, lost) in &failures {
        if let Err(why) = absorb(model, plan, lost, opts.max_nodes) {
            out.push(format!("if {name} fails, {why}"));
        }
    }
    out
}

struct Search<'a> {
    ctx: &'a Ctx<'a>,
    items: Vec<Item<'a>>,
    /// Candidate regions per item (filters passed, not lost).
    cands: Vec<Vec<&'a str>>,
    load: BTreeMap<(&'a str, &'a str), f64>,
    /// Final regions per unit (survivors + re-placed so far), with counts.
    placed: BTreeMap<&'a str, BTreeMap<&'a str, u64>>,
    /// Items of each unit still to place.
    left: BTreeMap<&'a str, u64>,
    anti: BTreeMap<&'a str, BTreeSet<&'a str>>,
    /// Candidate index chosen per placed item.
    chosen: Vec<usize>,
    nodes: u64,
    max_nodes: u64,
    /// Deepest failure seen, for the message.
    blocked: Option<(usize, String)>,
}

impl<'a> Search<'a> {
    fn fits(&self, it: &Item<'a>, r: &'a str) -> Result<(), String> {
        let (_, reg) = self.ctx.regions[r];
        let mut need: BTreeMap<&str, f64> = BTreeMap::new();
        for (u, n) in &it.units {
            for (k, v) in self.ctx.demand(u, r) {
                *need.entry(k.as_str()).or_default() += v * *n as f64;
            }
        }
        for (k, v) in need {
            let c = reg.capacity.get(k).copied().unwrap_or(0.0);
            let l = self.load.get(&(r, k)).copied().unwrap_or(0.0);
            if l + v > c + 1e-9 * c.abs().max(1.0) {
                return Err(format!("capacity ({k} in `{r}`)"));
            }
        }
        for (u, _) in &it.units {
            if let Some(others) = self.anti.get(u.id.as_str()) {
                for o in others {
                    if self.placed.get(o).is_some_and(|m| m.contains_key(r)) {
                        return Err(format!("anti-affinity with `{o}` in `{r}`"));
                    }
                }
            }
        }
        Ok(())
    }

    /// Can unit `u` still meet its spread with `left` items to place?
    fn spread_reachable(&self, u: &Unit) -> bool {
        let Some(s) = u.spread else { return true };
        let left = self.left.get(u.id.as_str()).copied().unwrap_or(0);
        let regs = self.placed.get(u.id.as_str());
        let nr = regs.map_or(0, |m| m.len()) as u64;
        let np = regs.map_or(0, |m| {
            m.keys()
                .map(|r| self.ctx.regions[r].0.id.as_str())
                .collect::<BTreeSet<_>>()
                .len()
        }) as u64;
        nr + left >= s.min_regions as u64 && np + left >= s.min_providers as u64
    }

    fn apply(&mut self, i: usize, r: &'a str, sign: f64) {
        let units: Vec<(&'a Unit, u64)> = self.items[i].units.clone();
        for (u, n) in units {
            for (k, v) in self.ctx.demand(u, r) {
                *self.load.entry((r, k.as_str())).or_default() += sign * v * n as f64;
            }
            let m = self.placed.entry(u.id.as_str()).or_default();
            let left = self.left.entry(u.id.as_str()).or_default();
            if sign > 0.0 {
                *m.entry(r).or_default() += n;
                *left -= if u.colocate.is_some() { *left } else { 1 };
            } else {
                let c = m.entry(r).or_default();
                *c -= n;
                if *c == 0 {
                    m.remove(r);
                }
                *left += if u.colocate.is_some() { n } else { 1 };
            }
        }
    }

    fn dfs(&mut self, i: usize) -> Result<bool, ()> {
        if i == self.items.len() {
            return Ok(true);
        }
        self.nodes += 1;
        if self.nodes > self.max_nodes {
            return Err(());
        }
        // Identical replicas of one unit: non-decreasing candidate index.
        let floor = if i > 0 && self.items[i].label == self.items[i - 1].label {
            self.chosen_index(i - 1)
        } else {
            0
        };
        let cands = self.cands[i].clone();
        for (ci, r) in cands.iter().enumerate().skip(floor) {
            if let Err(why) = self.fits(&self.items[i], r) {
                self.note(i, why);
                continue;
            }
            self.apply(i, r, 1.0);
            self.chosen.push(ci);
            let ok = self.items[i]
                .units
                .iter()
                .all(|(u, _)| self.spread_reachable(u));
            if ok {
                if self.dfs(i + 1)? {
                    return Ok(true);
                }
            } else {
                let u = self.items[i].units[0].0;
                self.note(i, format!("spread of `{}`", u.id));
            }
            self.chosen.pop();
            self.apply(i, r, -1.0);
        }
        if self.cands[i].is_empty() {
            self.note(i, "no region its filters allow".into());
        }
        Ok(false)
    }

    fn chosen_index(&self, i: usize) -> usize {
        self.chosen.get(i).copied().unwrap_or(0)
    }

    fn note(&mut self, i: usize, why: String) {
        if self.blocked.as_ref().is_none_or(|(d, _)| i >= *d) {
            self.blocked = Some((i, format!("{}: {why}", self.items[i].label)));
        }
    }
}
/// Re-places the replicas lost with the regions `lost`, or says what blocks.
fn absorb(model: &Model, plan: &Plan, lost: &BTreeSet<&str>, max_nodes: u64) -> Result<(), String> {
    let ctx = Ctx::new(model);
    let mut load: BTreeMap<(&str, &str), f64> = BTreeMap::new();
    let mut placed: BTreeMap<&str, BTreeMap<&str, u64>> = BTreeMap::new();
    let mut left: BTreeMap<&str, u64> = BTreeMap::new();
    let mut items: Vec<Item<'_>> = Vec::new();
    let mut groups: BTreeMap<&str, Vec<(&Unit, u64)>> = BTreeMap::new();
    for u in &model.units {
        let Some(regs) = plan.placements.get(&u.id) else {
            continue;
        };
        let mut displaced = 0u64;
        for r in regs {
            let Some((_, reg)) = ctx.regions.get(r.as_str()) else {
                continue; // reported by `check`
            };
            if lost.contains(r.as_str()) {
                displaced += 1;
                continue;
            }
            for (k, v) in ctx.demand(u, r) {
                *load.entry((reg.id.as_str(), k.as_str())).or_default() += v;
            }
            *placed
                .entry(u.id.as_str())
                .or_default()
                .entry(reg.id.as_str())
                .or_default() += 1;
        }
        if displaced == 0 {
            continue;
        }
        left.insert(u.id.as_str(), displaced);
        match &u.colocate {
            Some(g) => groups.entry(g.as_str()).or_default().push((u, displaced)),
            None => items.extend((0..displaced).map(|_| Item {
                units: vec![(u, 1)],
                label: format!("a replica of `{}`", u.id),
            })),
        }
    }
    for (g, units) in groups {
        items.push(Item {
            units,
            label: format!("co-location group `{g}`"),
        });
    }
    if items.is_empty() {
        return Ok(());
    }
    // Largest first (share of the total capacity, worst dimension); identical
    // replicas stay adjacent for the symmetry rule.
    let total: BTreeMap<&str, f64> = model
        .dimensions
        .iter()
        .map(|d| {
            let c: f64 = model
                .regions()
                .map(|(_, r)| r.capacity.get(d).copied().unwrap_or(0.0))
                .sum();
            (d.as_str(), c.max(1e-12))
        })
        .collect();
    let size = |it: &Item<'_>| {
        let mut need: BTreeMap<&str, f64> = BTreeMap::new();
        for (u, n) in &it.units {
            for (k, v) in &u.demand {
                *need.entry(k.as_str()).or_default() += v * *n as f64;
            }
        }
        need.iter()
            .map(|(k, v)| v / total.get(k).copied().unwrap_or(1.0))
            .fold(0.0, f64::max)
    };
    items.sort_by(|a, b| size(b).total_cmp(&size(a)).then(a.label.cmp(&b.label)));
    let cands: Vec<Vec<&str>> = items
        .iter()
        .map(|it| {
            let mut c: Vec<(f64, &str)> = model
                .regions()
                .filter(|(p, r)| {
                    !lost.contains(r.id.as_str())
                        && it.units.iter().all(|(u, _)| filter(u, p, r).is_empty())
                })
                .map(|(_, r)| {
                    let cost: f64 = it
                        .units
                        .iter()
                        .map(|(u, n)| ctx.compute_cost(u, r) * *n as f64)
                        .sum();
                    (cost, r.id.as_str())
                })
                .collect();
            c.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(b.1)));
            c.into_iter().map(|x| x.1).collect()
        })
        .collect();
    let mut anti: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for u in &model.units {
        for a in &u.anti_affinity {
            anti.entry(u.id.as_str()).or_default().insert(a.as_str());
            anti.entry(a.as_str()).or_default().insert(u.id.as_str());
        }
    }
    let mut search = Search {
        ctx: &ctx,
        items,
        cands,
        load,
        placed,
        left,
        anti,
        chosen: Vec::new(),
        nodes: 0,
        max_nodes,
        blocked: None,
    };
    match search.dfs(0) {
        Ok(true) => Ok(()),
        Ok(false) => Err(search.blocked.map_or_else(
            || "its replicas cannot be re-placed".to_string(),
            |(_, why)| format!("{why} blocks the re-placement"),
        )),
        Err(()) => Err(format!(
            "re-placement undecided within {max_nodes} search nodes"
        )),
    }
}
