//! Per-unit explanations: the binding constraints of a placement and why
//! cheaper regions were not taken.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::model::{Model, Plan, Provider, Region, Unit};
use crate::validate::static_filters;

/// A cheaper region that the plan does not use for a unit, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rejected {
    /// Region id.
    pub region: String,
    /// Weighted compute + latency cost of one replica there.
    pub cost_per_replica: f64,
    /// How much cheaper one replica would be there than in the dearest chosen region
    /// (compute + latency only: egress and migration are what the reasons weigh against it).
    pub saving_per_replica: f64,
    /// Why the region was not taken: each reason once, each naming the constraint.
    pub reasons: Vec<String>,
}

/// Explanation of one unit's placement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    /// Unit id.
    pub unit: String,
    /// (region, replicas) chosen.
    pub placement: Vec<(String, u32)>,
    /// Highest weighted per-replica cost among the chosen regions.
    pub cost_per_replica: f64,
    /// Constraints that bind the placement.
    pub binding: Vec<String>,
    /// Cheaper regions not taken (at most five), cheapest first.
    pub rejected: Vec<Rejected>,
}

/// The overrides of `model` by (unit, region).
pub(crate) fn overrides(model: &Model) -> BTreeMap<(&str, &str), &crate::model::Override> {
    model
        .overrides
        .iter()
        .map(|o| ((o.unit.as_str(), o.region.as_str()), o))
        .collect()
}

/// Weighted compute + latency cost of one replica of `u` in `r`, and its demand there.
pub(crate) fn replica_cost(
    model: &Model,
    ov: &BTreeMap<(&str, &str), &crate::model::Override>,
    u: &Unit,
    r: &Region,
) -> (f64, BTreeMap<String, f64>) {
    let o = ov.get(&(u.id.as_str(), r.id.as_str()));
    let demand = o
        .and_then(|o| o.demand.clone())
        .unwrap_or_else(|| u.demand.clone());
    let compute = match o.and_then(|o| o.cost) {
        Some(c) => c,
        None => demand
            .iter()
            .map(|(k, v)| v * r.price.get(k).copied().unwrap_or(0.0))
            .sum(),
    };
    let lat = u
        .user_regions
        .iter()
        .filter_map(|x| r.latency_ms.get(x).copied())
        .fold(0.0, f64::max);
    (
        model.weights.compute * compute + model.weights.latency * lat,
        demand,
    )
}

/// Explains every unit of `plan` (which should be a feasible plan of `model`).
pub fn explain(model: &Model, plan: &Plan) -> Vec<Explanation> {
    let ov = overrides(model);
    let regions: Vec<(&Provider, &Region)> = model.regions().collect();
    let by_id: BTreeMap<&str, (&Provider, &Region)> = regions
        .iter()
        .map(|(p, r)| (r.id.as_str(), (*p, *r)))
        .collect();
    let units: BTreeMap<&str, &Unit> = model.units.iter().map(|u| (u.id.as_str(), u)).collect();
    // Loads and occupants.
    let mut load: BTreeMap<(&str, &str), f64> = BTreeMap::new();
    let mut occupants: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (uid, regs) in &plan.placements {
        let Some(u) = units.get(uid.as_str()) else {
            continue;
        };
        for r in regs {
            let Some((_, reg)) = by_id.get(r.as_str()) else {
                continue;
            };
            let (_, d) = replica_cost(model, &ov, u, reg);
            for (k, v) in d {
                *load
                    .entry((
                        reg.id.as_str(),
                        model
                            .dimensions
                            .iter()
                            .find(|x| **x == k)
                            .map_or("", |x| x.as_str()),
                    ))
                    .or_default() += v;
            }
            occupants
                .entry(reg.id.as_str())
                .or_default()
                .insert(u.id.as_str());
        }
    }
    let used = |r: &Region, k: &str| load.get(&(r.id.as_str(), k)).copied().unwrap_or(0.0);
    let mut out = Vec::new();
    for u in &model.units {
        let Some(regs) = plan.placements.get(&u.id) else {
            continue;
        };
        let mut placement: BTreeMap<String, u32> = BTreeMap::new();
        for r in regs {
            *placement.entry(r.clone()).or_default() += 1;
        }
        let mut binding = Vec::new();
        let mut chosen_cost: f64 = 0.0;
        let mut chosen_providers = BTreeSet::new();
        for r in placement.keys() {
            let Some((p, reg)) = by_id.get(r.as_str()) else {
                continue;
            };
            chosen_providers.insert(p.id.as_str());
            let (c, _) = replica_cost(model, &ov, u, reg);
            chosen_cost = chosen_cost.max(c);
            for k in &model.dimensions {
                let cap = reg.capacity.get(k).copied().unwrap_or(0.0);
                if cap > 0.0 && used(reg, k) >= 0.99 * cap {
                    binding.push(format!(
                        "capacity: {k} in {r} is {:.0}% used",
                        100.0 * used(reg, k) / cap
                    ));
                }
            }
        }
        if let Some(s) = u.spread {
            if s.min_providers > 1 {
                binding.push(format!(
                    "spread: at least {} providers (uses {})",
                    s.min_providers,
                    chosen_providers.len()
                ));
            }
            if s.min_regions > 1 {
                binding.push(format!(
                    "spread: at least {} regions (uses {})",
                    s.min_regions,
                    placement.len()
                ));
            }
        }
        if let Some(g) = &u.colocate {
            binding.push(format!("co-location group `{g}`"));
        }
        if !u.anti_affinity.is_empty() {
            binding.push(format!("anti-affinity with {}", u.anti_affinity.join(", ")));
        }
        if !u.require_labels.is_empty() {
            binding.push(format!("requires labels {:?}", u.require_labels));
        }
        if let Some(l) = u.max_latency_ms {
            binding.push(format!(
                "latency <= {l} ms to {}",
                u.user_regions.join(", ")
            ));
        }
        if !u.current.is_empty() && u.migration_cost > 0.0 {
            binding.push(format!(
                "migration cost {} per moved replica",
                u.migration_cost
            ));
        }
        let has_traffic = model.traffic.iter().any(|t| t.from == u.id || t.to == u.id);
        let mut rejected = Vec::new();
        let mut cands: Vec<(f64, &Provider, &Region)> = regions
            .iter()
            .filter(|(_, r)| !placement.contains_key(&r.id))
            .map(|(p, r)| (replica_cost(model, &ov, u, r).0, *p, *r))
            .filter(|(c, _, _)| *c < chosen_cost - 1e-9 * chosen_cost.abs().max(1.0))
            .collect();
        cands.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.2.id.cmp(&b.2.id)));
        for (c, p, r) in cands.into_iter().take(5) {
            let mut reasons = static_filters(u, r, p.down);
            if reasons.is_empty() {
                let (_, d) = replica_cost(model, &ov, u, r);
                for (k, v) in &d {
                    let cap = r.capacity.get(k).copied().unwrap_or(0.0);
                    let free = cap - used(r, k);
                    if *v > free + 1e-9 * cap.abs().max(1.0) {
                        reasons.push(format!("capacity: needs {v} {k}, {free:.3} free"));
                    }
                }
                if let Some(occ) = occupants.get(r.id.as_str()) {
                    for a in &u.anti_affinity {
                        if occ.contains(a.as_str()) {
                            reasons.push(format!("anti-affinity: `{a}` runs there"));
                        }
                    }
                    for o in &model.units {
                        if o.anti_affinity.contains(&u.id) && occ.contains(o.id.as_str()) {
                            reasons.push(format!("anti-affinity: `{}` runs there", o.id));
                        }
                    }
                }
                if u.colocate.is_some() {
                    reasons.push("co-location: the group as a whole is cheaper where it is".into());
                }
                if let Some(s) = u.spread {
                    if s.min_providers > 1
                        && chosen_providers.len() as u32 <= s.min_providers
                        && !chosen_providers.contains(p.id.as_str())
                    {
                        reasons.push(format!(
                            "spread: moving a replica to {} would drop below {} providers",
                            p.id, s.min_providers
                        ));
                    }
                }
                if has_traffic {
                    reasons.push("egress: traffic with its peers costs more from there".into());
                }
                if !u.current.is_empty() && u.migration_cost > 0.0 {
                    reasons.push("migration: moving costs more than it saves".into());
                }
                if reasons.is_empty() {
                    reasons.push(
                        "other units use that capacity more profitably (global optimum trade-off)"
                            .into(),
                    );
                }
            }
            rejected.push(Rejected {
                region: r.id.clone(),
                cost_per_replica: c,
                saving_per_replica: chosen_cost - c,
                reasons: once_each(reasons),
            });
        }
        out.push(Explanation {
            unit: u.id.clone(),
            placement: placement.into_iter().collect(),
            cost_per_replica: chosen_cost,
            binding: once_each(binding),
            rejected,
        });
    }
    out
}

/// `reasons` without repeats, in first-seen order (a unit named in both anti-affinity lists,
/// say, is one reason, not two).
fn once_each(reasons: Vec<String>) -> Vec<String> {
    let mut seen = BTreeSet::new();
    reasons
        .into_iter()
        .filter(|r| seen.insert(r.clone()))
        .collect()
}
