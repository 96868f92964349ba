//! Validation of a [`Model`] and compilation into the dense internal instance
//! used by the solver, plus the static infeasibility diagnosis.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::{Conflict, ModelError, PlacementError};
use crate::model::{Model, Region, Unit};

/// Checks a model for malformed input without solving it.
///
/// Returns the first problem found as a typed [`ModelError`]; a model that
/// passes may still be infeasible (see [`crate::solve`]).
pub fn validate(model: &Model) -> Result<(), ModelError> {
    check_model(model)
}

fn finite_nonneg(v: f64, ctx: impl Fn() -> String) -> Result<(), ModelError> {
    if !v.is_finite() {
        return Err(ModelError::NonFinite { context: ctx() });
    }
    if v < 0.0 {
        return Err(ModelError::Negative {
            context: ctx(),
            value: v.to_string(),
        });
    }
    Ok(())
}

fn check_resources(
    map: &BTreeMap<String, f64>,
    dims: &BTreeSet<&str>,
    ctx: &str,
) -> Result<(), ModelError> {
    for (k, v) in map {
        if !dims.contains(k.as_str()) {
            return Err(ModelError::UnknownDimension {
                context: ctx.to_string(),
                dimension: k.clone(),
            });
        }
        finite_nonneg(*v, || format!("{ctx}, dimension `{k}`"))?;
    }
    Ok(())
}

fn check_model(model: &Model) -> Result<(), ModelError> {
    if model.dimensions.is_empty() {
        return Err(ModelError::NoDimensions);
    }
    let mut dims = BTreeSet::new();
    for d in &model.dimensions {
        if !dims.insert(d.as_str()) {
            return Err(ModelError::DuplicateId {
                kind: "dimension",
                id: d.clone(),
            });
        }
    }
    let w = &model.weights;
    for (name, v) in [
        ("compute", w.compute),
        ("egress", w.egress),
        ("migration", w.migration),
        ("latency", w.latency),
    ] {
        finite_nonneg(v, || format!("weight `{name}`"))?;
    }
    let mut providers = BTreeSet::new();
    let mut regions = BTreeSet::new();
    for p in &model.providers {
        if !providers.insert(p.id.as_str()) {
            return Err(ModelError::DuplicateId {
                kind: "provider",
                id: p.id.clone(),
            });
        }
        finite_nonneg(p.egress_inter_region, || {
            format!("provider `{}` egress_inter_region", p.id)
        })?;
        finite_nonneg(p.egress_internet, || {
            format!("provider `{}` egress_internet", p.id)
        })?;
        for r in &p.regions {
            if !regions.insert(r.id.as_str()) {
                return Err(ModelError::DuplicateId {
                    kind: "region",
                    id: r.id.clone(),
                });
            }
            check_resources(&r.capacity, &dims, &format!("region `{}` capacity", r.id))?;
            check_resources(&r.price, &dims, &format!("region `{}` price", r.id))?;
            for (k, v) in &r.latency_ms {
                finite_nonneg(*v, || format!("region `{}` latency to `{k}`", r.id))?;
            }
        }
    }
    if regions.is_empty() {
        return Err(ModelError::NoRegions);
    }
    let mut units: BTreeMap<&str, &Unit> = BTreeMap::new();
    for u in &model.units {
        if units.insert(u.id.as_str(), u).is_some() {
            return Err(ModelError::DuplicateId {
                kind: "unit",
                id: u.id.clone(),
            });
        }
    }
    let region_ref = |ctx: String, r: &str| -> Result<(), ModelError> {
        if regions.contains(r) {
            Ok(())
        } else {
            Err(ModelError::UnknownRegion {
                context: ctx,
                region: r.to_string(),
            })
        }
    };
    for u in &model.units {
        if u.replicas == 0 {
            return Err(ModelError::ZeroReplicas { unit: u.id.clone() });
        }
        check_resources(&u.demand, &dims, &format!("unit `{}` demand", u.id))?;
        for r in &u.allowed_regions {
            region_ref(format!("unit `{}` allowed_regions", u.id), r)?;
        }
        for r in &u.forbidden_regions {
            region_ref(format!("unit `{}` forbidden_regions", u.id), r)?;
        }
        for r in &u.current {
            region_ref(format!("unit `{}` current", u.id), r)?;
        }
        if let Some(l) = u.max_latency_ms {
            finite_nonneg(l, || format!("unit `{}` max_latency_ms", u.id))?;
        }
        finite_nonneg(u.migration_cost, || {
            format!("unit `{}` migration_cost", u.id)
        })?;
        for a in &u.anti_affinity {
            let Some(other) = units.get(a.as_str()) else {
                return Err(ModelError::UnknownUnit {
                    context: format!("unit `{}` anti_affinity", u.id),
                    unit: a.clone(),
                });
            };
            if *a == u.id {
                return Err(ModelError::Contradictory {
                    unit: u.id.clone(),
                    reason: "anti-affinity with itself".into(),
                });
            }
            if u.colocate.is_some() && u.colocate == other.colocate {
                return Err(ModelError::Contradictory {
                    unit: u.id.clone(),
                    reason: format!(
                        "anti-affinity with `{a}` but both are in co-location group `{}`",
                        u.colocate.as_deref().unwrap_or_default()
                    ),
                });
            }
        }
        if let Some(s) = u.spread {
            if s.min_providers > u.replicas || s.min_regions > u.replicas {
                return Err(ModelError::Contradictory {
                    unit: u.id.clone(),
                    reason: format!(
                        "spread over {} providers / {} regions needs more than its {} replica(s)",
                        s.min_providers, s.min_regions, u.replicas
                    ),
                });
            }
            if u.colocate.is_some() && (s.min_providers > 1 || s.min_regions > 1) {
                return Err(ModelError::Contradictory {
                    unit: u.id.clone(),
                    reason:
                        "a co-located unit keeps all replicas in one region, so it cannot spread"
                            .into(),
                });
            }
        }
        for (k, vals) in &u.require_labels {
            if let Some(f) = u.forbid_labels.get(k) {
                if vals.iter().all(|v| f.contains(v)) {
                    return Err(ModelError::Contradictory {
                        unit: u.id.clone(),
                        reason: format!(
                            "label `{k}` is both required in {vals:?} and forbidden in {f:?}"
                        ),
                    });
                }
            }
        }
        if !u.allowed_regions.is_empty()
            && u.allowed_regions
                .iter()
                .all(|r| u.forbidden_regions.contains(r))
        {
            return Err(ModelError::Contradictory {
                unit: u.id.clone(),
                reason: "every allowed region is also forbidden".into(),
            });
        }
    }
    for t in &model.traffic {
        for x in [&t.from, &t.to] {
            if !units.contains_key(x.as_str()) {
                return Err(ModelError::UnknownUnit {
                    context: "traffic".into(),
                    unit: x.clone(),
                });
            }
        }
        if t.from == t.to {
            return Err(ModelError::Contradictory {
                unit: t.from.clone(),
                reason: "traffic from a unit to itself".into(),
            });
        }
        finite_nonneg(t.gb, || format!("traffic `{}` -> `{}`", t.from, t.to))?;
    }
    let mut pairs = BTreeSet::new();
    for e in &model.egress {
        region_ref("egress".into(), &e.from_region)?;
        region_ref("egress".into(), &e.to_region)?;
        finite_nonneg(e.price_per_gb, || {
            format!("egress `{}` -> `{}`", e.from_region, e.to_region)
        })?;
        // Two prices for one pair leave the cost undefined: refuse them.
        if !pairs.insert((e.from_region.as_str(), e.to_region.as_str())) {
            return Err(ModelError::DuplicateEgress {
                from_region: e.from_region.clone(),
                to_region: e.to_region.clone(),
            });
        }
    }
    let mut seen = BTreeSet::new();
    for o in &model.overrides {
        if !units.contains_key(o.unit.as_str()) {
            return Err(ModelError::UnknownUnit {
                context: "override".into(),
                unit: o.unit.clone(),
            });
        }
        region_ref(format!("override for unit `{}`", o.unit), &o.region)?;
        if !seen.insert((o.unit.as_str(), o.region.as_str())) {
            return Err(ModelError::DuplicateId {
                kind: "override",
                id: format!("{}@{}", o.unit, o.region),
            });
        }
        if let Some(c) = o.cost {
            finite_nonneg(c, || format!("override `{}`@`{}` cost", o.unit, o.region))?;
        }
        if let Some(d) = &o.demand {
            check_resources(
                d,
                &dims,
                &format!("override `{}`@`{}` demand", o.unit, o.region),
            )?;
        }
    }
    Ok(())
}

/// Fast check of the static filters (no reasons collected).
pub(crate) fn statically_allowed(unit: &Unit, region: &Region, provider_down: bool) -> bool {
    if provider_down || region.down {
        return false;
    }
    if !unit.allowed_regions.is_empty() && !unit.allowed_regions.contains(&region.id) {
        return false;
    }
    if unit.forbidden_regions.contains(&region.id) {
        return false;
    }
    for (k, vals) in &unit.require_labels {
        if !region.labels.get(k).is_some_and(|v| vals.contains(v)) {
            return false;
        }
    }
    for (k, vals) in &unit.forbid_labels {
        if region.labels.get(k).is_some_and(|v| vals.contains(v)) {
            return false;
        }
    }
    if !unit
        .require_certifications
        .iter()
        .all(|c| region.certifications.contains(c))
    {
        return false;
    }
    if let Some(max) = unit.max_latency_ms {
        for ur in &unit.user_regions {
            if !region.latency_ms.get(ur).is_some_and(|l| *l <= max) {
                return false;
            }
        }
    }
    true
}

/// Reasons why `region` (of a provider that is `provider_down`) is excluded for
/// `unit` by its static filters; empty if the region is allowed.
pub(crate) fn static_filters(unit: &Unit, region: &Region, provider_down: bool) -> Vec<String> {
    let mut why = Vec::new();
    if provider_down {
        why.push("provider down".to_string());
    }
    if region.down {
        why.push("region down".to_string());
    }
    if !unit.allowed_regions.is_empty() && !unit.allowed_regions.contains(&region.id) {
        why.push("not in allowed_regions".to_string());
    }
    if unit.forbidden_regions.contains(&region.id) {
        why.push("in forbidden_regions".to_string());
    }
    for (k, vals) in &unit.require_labels {
        match region.labels.get(k) {
            Some(v) if vals.contains(v) => {}
            Some(v) => why.push(format!("label {k}={v} not in {vals:?}")),
            None => why.push(format!("label {k} missing (required {vals:?})")),
        }
    }
    for (k, vals) in &unit.forbid_labels {
        if let Some(v) = region.labels.get(k) {
            if vals.contains(v) {
                why.push(format!("label {k}={v} forbidden"));
            }
        }
    }
    for c in &unit.require_certifications {
        if !region.certifications.contains(c) {
            why.push(format!("certification {c} missing"));
        }
    }
    if let Some(max) = unit.max_latency_ms {
        for ur in &unit.user_regions {
            match region.latency_ms.get(ur) {
                Some(l) if *l <= max => {}
                Some(l) => why.push(format!("latency to {ur} {l} ms > {max} ms")),
                None => why.push(format!("no latency data to {ur}")),
            }
        }
    }
    why
}

/// Compiled region.
#[derive(Debug, Clone)]
pub(crate) struct RegionC {
    pub(crate) id: String,
    pub(crate) provider: u32,
    pub(crate) cap: Vec<f64>,
    pub(crate) down: bool,
}

/// Compiled unit.
#[derive(Debug, Clone)]
pub(crate) struct UnitC {
    pub(crate) id: String,
    pub(crate) replicas: u32,
    pub(crate) block: u32,
    pub(crate) grouped: bool,
    /// Edges (indices into `Instance::edges`) touching the unit.
    pub(crate) edges: Vec<u32>,
    /// Current placement as (region, count), regions that are up or down.
    pub(crate) cur: Vec<(u32, u32)>,
    pub(crate) cur_total: u32,
    /// Current replicas in regions that are down (forced moves).
    pub(crate) forced: u32,
    /// Weighted migration cost per moved replica.
    pub(crate) mig: f64,
}

/// Compiled block: an ungrouped unit (one item per replica) or a co-location
/// group (a single item carrying all replicas of its units).
#[derive(Debug, Clone)]
pub(crate) struct Block {
    pub(crate) name: String,
    /// (unit, replicas of the unit carried by each item of the block).
    pub(crate) members: Vec<(u32, u32)>,
    pub(crate) n_items: u32,
    pub(crate) first_item: u32,
    pub(crate) allowed: Vec<u32>,
    /// Weighted compute + latency cost of one item, parallel to `allowed`.
    pub(crate) cost: Vec<f64>,
    /// Weighted latency part of `cost`.
    pub(crate) lat: Vec<f64>,
    /// Demand of one item, `allowed.len() x dims`.
    pub(crate) demand: Vec<f64>,
    pub(crate) spread_p: u32,
    pub(crate) spread_r: u32,
    pub(crate) anti: Vec<u32>,
    pub(crate) coupled: bool,
    pub(crate) priority: i32,
    /// Dense region -> position map (empty on very large instances).
    pub(crate) posmap: Vec<u32>,
}

impl Block {
    /// Index of `region` in `allowed`.
    #[inline]
    pub(crate) fn pos(&self, region: u32) -> Option<usize> {
        if let Some(&p) = self.posmap.get(region as usize) {
            return (p != u32::MAX).then_some(p as usize);
        }
        self.allowed.binary_search(&region).ok()
    }
}

/// Compiled traffic edge between units.
#[derive(Debug, Clone)]
pub(crate) struct Edge {
    pub(crate) from: u32,
    pub(crate) to: u32,
    /// weight x volume / (replicas(from) x replicas(to)).
    pub(crate) factor: f64,
}

/// Dense internal form of a validated model.
#[derive(Debug, Clone)]
pub(crate) struct Instance {
    pub(crate) dims: usize,
    pub(crate) dim_names: Vec<String>,
    pub(crate) providers: Vec<String>,
    pub(crate) regions: Vec<RegionC>,
    pub(crate) units: Vec<UnitC>,
    pub(crate) blocks: Vec<Block>,
    /// item -> block.
    pub(crate) items: Vec<u32>,
    /// Egress price matrix (unweighted), regions x regions.
    pub(crate) egress: Vec<f64>,
    pub(crate) edges: Vec<Edge>,
    /// True when every achievable cost is an integer (used to round the bound up).
    pub(crate) integral: bool,
    /// Migration budget (replica moves, forced moves excluded), if any.
    pub(crate) budget: Option<u64>,
}

impl Instance {
    #[inline]
    pub(crate) fn price(&self, a: u32, b: u32) -> f64 {
        self.egress[a as usize * self.regions.len() + b as usize]
    }
}

fn res_vec(map: &BTreeMap<String, f64>, dims: &[String]) -> Vec<f64> {
    dims.iter()
        .map(|d| map.get(d).copied().unwrap_or(0.0))
        .collect()
}

/// Validates `model`, diagnoses static infeasibility and compiles it.
pub(crate) fn compile(model: &Model) -> Result<Instance, PlacementError> {
    check_model(model)?;
    let dims = model.dimensions.len();
    let dim_names = model.dimensions.clone();
    let mut providers = Vec::new();
    let mut regions = Vec::new();
    let mut region_idx: BTreeMap<&str, u32> = BTreeMap::new();
    let mut region_refs: Vec<(&Region, bool)> = Vec::new();
    for (pi, p) in model.providers.iter().enumerate() {
        providers.push(p.id.clone());
        for r in &p.regions {
            region_idx.insert(r.id.as_str(), regions.len() as u32);
            regions.push(RegionC {
                id: r.id.clone(),
                provider: pi as u32,
                cap: res_vec(&r.capacity, &dim_names),
                down: r.down || p.down,
            });
            region_refs.push((r, p.down));
        }
    }
    let nr = regions.len();
    // Egress matrix, read through the function the checker uses.
    let prices = crate::model::EgressPrices::new(model);
    let mut egress = vec![0.0; nr * nr];
    for a in 0..nr {
        for b in 0..nr {
            egress[a * nr + b] = prices.price(&regions[a].id, &regions[b].id);
        }
    }
    let unit_idx: BTreeMap<&str, u32> = model
        .units
        .iter()
        .enumerate()
        .map(|(i, u)| (u.id.as_str(), i as u32))
        .collect();
    // Overrides by unit.
    type RegionOverrides = BTreeMap<u32, (Option<f64>, Option<Vec<f64>>)>;
    let mut ov: BTreeMap<u32, RegionOverrides> = BTreeMap::new();
    for o in &model.overrides {
        let u = unit_idx[o.unit.as_str()];
        let r = region_idx[o.region.as_str()];
        ov.entry(u).or_default().insert(
            r,
            (o.cost, o.demand.as_ref().map(|d| res_vec(d, &dim_names))),
        );
    }
    let w = model.weights;
    // Per-unit allowed regions, per-replica cost and demand.
    struct UnitTable {
        allowed: Vec<u32>,
        cost: Vec<f64>,
        lat: Vec<f64>,
        demand: Vec<f64>,
        removed: Vec<(String, Vec<String>)>,
    }
    let mut tables = Vec::with_capacity(model.units.len());
    let mut integral = w.egress == 0.0 || model.traffic.is_empty();
    for (ui, u) in model.units.iter().enumerate() {
        let base = res_vec(&u.demand, &dim_names);
        let uov = ov.get(&(ui as u32));
        let mut t = UnitTable {
            allowed: Vec::new(),
            cost: Vec::new(),
            lat: Vec::new(),
            demand: Vec::new(),
            removed: Vec::new(),
        };
        let single = if u.colocate.is_some() {
            u.replicas as f64
        } else {
            1.0
        };
        let reasons = |ri: usize, r: &Region, pdown: bool, d: &[f64]| {
            let mut why = static_filters(u, r, pdown);
            for (k, dv) in d.iter().enumerate() {
                if dv * single > regions[ri].cap[k] * (1.0 + 1e-9) + 1e-9 {
                    why.push(format!(
                        "{} demand {} > capacity {}",
                        dim_names[k],
                        dv * single,
                        regions[ri].cap[k]
                    ));
                }
            }
            why
        };
        let demand_at = |ri: usize| -> &[f64] {
            match uov.and_then(|m| m.get(&(ri as u32))) {
                Some((_, Some(d))) => d,
                _ => &base,
            }
        };
        for (ri, (r, pdown)) in region_refs.iter().enumerate() {
            let o = uov.and_then(|m| m.get(&(ri as u32)));
            let d = demand_at(ri);
            if !statically_allowed(u, r, *pdown)
                || d.iter()
                    .enumerate()
                    .any(|(k, dv)| dv * single > regions[ri].cap[k] * (1.0 + 1e-9) + 1e-9)
            {
                continue;
            }
            let compute = match o {
                Some((Some(c), _)) => *c,
                _ => d
                    .iter()
                    .zip(&dim_names)
                    .map(|(dv, dn)| dv * r.price.get(dn).copied().unwrap_or(0.0))
                    .sum(),
            };
            let lat = u
                .user_regions
                .iter()
                .filter_map(|ur| r.latency_ms.get(ur).copied())
                .fold(0.0, f64::max);
            let c = w.compute * compute + w.latency * lat;
            if !c.is_finite() {
                return Err(ModelError::NonFinite {
                    context: format!("cost of unit `{}` in region `{}`", u.id, r.id),
                }
                .into());
            }
            t.allowed.push(ri as u32);
            t.cost.push(c);
            t.lat.push(w.latency * lat);
            t.demand.extend_from_slice(d);
        }
        if t.allowed.is_empty() || u.colocate.is_some() {
            for (ri, (r, pdown)) in region_refs.iter().enumerate() {
                let why = reasons(ri, r, *pdown, demand_at(ri));
                if !why.is_empty() {
                    t.removed.push((r.id.clone(), why));
                }
            }
        }
        tables.push(t);
    }
    // Blocks.
    let mut groups: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for (ui, u) in model.units.iter().enumerate() {
        if let Some(g) = &u.colocate {
            groups.entry(g.as_str()).or_default().push(ui as u32);
        }
    }
    let mut conflicts = Vec::new();
    let mut blocks: Vec<Block> = Vec::new();
    let mut unit_block = vec![0u32; model.units.len()];
    let mut items = Vec::new();
    for (ui, u) in model.units.iter().enumerate() {
        if u.colocate.is_some() {
            continue;
        }
        let t = &tables[ui];
        if t.allowed.is_empty() {
            conflicts.push(Conflict::NoAllowedRegion {
                unit: u.id.clone(),
                removed_by: t.removed.clone(),
            });
        }
        let s = u.spread.unwrap_or_default();
        let provs: BTreeSet<u32> = t
            .allowed
            .iter()
            .map(|&r| regions[r as usize].provider)
            .collect();
        if !t.allowed.is_empty() && s.min_providers as usize > provs.len() {
            conflicts.push(Conflict::SpreadUnsatisfiable {
                unit: u.id.clone(),
                over: "providers".into(),
                required: s.min_providers,
                available: provs.len() as u32,
            });
        }
        if !t.allowed.is_empty() && s.min_regions as usize > t.allowed.len() {
            conflicts.push(Conflict::SpreadUnsatisfiable {
                unit: u.id.clone(),
                over: "regions".into(),
                required: s.min_regions,
                available: t.allowed.len() as u32,
            });
        }
        let b = blocks.len() as u32;
        unit_block[ui] = b;
        let first = items.len() as u32;
        items.extend(std::iter::repeat_n(b, u.replicas as usize));
        blocks.push(Block {
            name: u.id.clone(),
            members: vec![(ui as u32, 1)],
            n_items: u.replicas,
            first_item: first,
            allowed: t.allowed.clone(),
            cost: t.cost.clone(),
            lat: t.lat.clone(),
            demand: t.demand.clone(),
            spread_p: s.min_providers,
            spread_r: s.min_regions,
            anti: Vec::new(),
            coupled: s.min_providers > 1 || s.min_regions > 1,
            priority: u.priority,
            posmap: Vec::new(),
        });
    }
    for (g, members) in &groups {
        // Intersection of allowed regions; cost and demand summed.
        let mut allowed = Vec::new();
        let mut cost = Vec::new();
        let mut lat = Vec::new();
        let mut demand = Vec::new();
        let mut removed: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for t in members.iter().map(|&m| &tables[m as usize]) {
            for (r, why) in &t.removed {
                removed
                    .entry(r.clone())
                    .or_default()
                    .extend(why.iter().cloned());
            }
        }
        for ri in 0..nr as u32 {
            let mut c = 0.0;
            let mut l = 0.0;
            let mut d = vec![0.0; dims];
            let mut ok = true;
            for &m in members {
                let t = &tables[m as usize];
                let n = model.units[m as usize].replicas as f64;
                match t.allowed.binary_search(&ri) {
                    Ok(p) => {
                        c += n * t.cost[p];
                        l += n * t.lat[p];
                        for k in 0..dims {
                            d[k] += n * t.demand[p * dims + k];
                        }
                    }
                    Err(_) => ok = false,
                }
            }
            if !ok {
                continue;
            }
            let mut why = Vec::new();
            for k in 0..dims {
                if d[k] > regions[ri as usize].cap[k] * (1.0 + 1e-9) + 1e-9 {
                    why.push(format!(
                        "group {} demand {} > capacity {}",
                        dim_names[k], d[k], regions[ri as usize].cap[k]
                    ));
                }
            }
            if !why.is_empty() {
                removed.insert(regions[ri as usize].id.clone(), why);
                continue;
            }
            allowed.push(ri);
            cost.push(c);
            lat.push(l);
            demand.extend_from_slice(&d);
        }
        let name = format!("group:{g}");
        if allowed.is_empty() {
            let mut removed_by: Vec<(String, Vec<String>)> = removed.into_iter().collect();
            for (r, why) in &mut removed_by {
                let _ = r;
                why.sort();
                why.dedup();
            }
            conflicts.push(Conflict::NoAllowedRegion {
                unit: name.clone(),
                removed_by,
            });
        }
        let b = blocks.len() as u32;
        for &m in members {
            unit_block[m as usize] = b;
        }
        let first = items.len() as u32;
        items.push(b);
        let priority = members
            .iter()
            .map(|&m| model.units[m as usize].priority)
            .max()
            .unwrap_or(0);
        blocks.push(Block {
            name,
            members: members
                .iter()
                .map(|&m| (m, model.units[m as usize].replicas))
                .collect(),
            n_items: 1,
            first_item: first,
            allowed,
            cost,
            lat,
            demand,
            spread_p: 0,
            spread_r: 0,
            anti: Vec::new(),
            coupled: false,
            priority,
            posmap: Vec::new(),
        });
    }
    // Units.
    let mut units: Vec<UnitC> = model
        .units
        .iter()
        .enumerate()
        .map(|(ui, u)| {
            let mut cur: BTreeMap<u32, u32> = BTreeMap::new();
            let mut forced = 0;
            for r in &u.current {
                let ri = region_idx[r.as_str()];
                *cur.entry(ri).or_default() += 1;
                if regions[ri as usize].down {
                    forced += 1;
                }
            }
            UnitC {
                id: u.id.clone(),
                replicas: u.replicas,
                block: unit_block[ui],
                grouped: u.colocate.is_some(),
                edges: Vec::new(),
                cur: cur.into_iter().collect(),
                cur_total: u.current.len() as u32,
                forced,
                mig: w.migration * u.migration_cost,
            }
        })
        .collect();
    for u in &units {
        if u.cur_total > 0 && u.mig > 0.0 {
            blocks[u.block as usize].coupled = true;
            if (u.mig - u.mig.round()).abs() > 1e-9 {
                integral = false;
            }
        }
    }
    // Anti-affinity (symmetric, block level).
    for (ui, u) in model.units.iter().enumerate() {
        for a in &u.anti_affinity {
            let b1 = unit_block[ui];
            let b2 = unit_block[unit_idx[a.as_str()] as usize];
            if b1 != b2 {
                blocks[b1 as usize].anti.push(b2);
                blocks[b2 as usize].anti.push(b1);
            }
        }
    }
    for b in &mut blocks {
        b.anti.sort_unstable();
        b.anti.dedup();
        if !b.anti.is_empty() {
            b.coupled = true;
        }
    }
    // Traffic edges.
    let mut edges = Vec::new();
    if w.egress > 0.0 {
        for t in &model.traffic {
            if t.gb <= 0.0 {
                continue;
            }
            let f = unit_idx[t.from.as_str()];
            let to = unit_idx[t.to.as_str()];
            if unit_block[f as usize] == unit_block[to as usize] && units[f as usize].grouped {
                continue; // same region always: no egress
            }
            let factor = w.egress * t.gb
                / (units[f as usize].replicas as f64 * units[to as usize].replicas as f64);
            let e = edges.len() as u32;
            edges.push(Edge {
                from: f,
                to,
                factor,
            });
            units[f as usize].edges.push(e);
            units[to as usize].edges.push(e);
            blocks[unit_block[f as usize] as usize].coupled = true;
            blocks[unit_block[to as usize] as usize].coupled = true;
        }
    }
    if blocks.len().saturating_mul(nr) <= 1 << 22 {
        for b in &mut blocks {
            b.posmap = vec![u32::MAX; nr];
            for (p, &r) in b.allowed.iter().enumerate() {
                b.posmap[r as usize] = p as u32;
            }
        }
    }
    if integral {
        integral = blocks
            .iter()
            .all(|b| b.cost.iter().all(|c| (c - c.round()).abs() < 1e-9));
    }
    let inst = Instance {
        dims,
        dim_names,
        providers,
        regions,
        units,
        blocks,
        items,
        egress,
        edges,
        integral,
        budget: None,
    };
    if conflicts.is_empty() {
        capacity_conflicts(&inst, &mut conflicts);
    }
    if !conflicts.is_empty() {
        return Err(PlacementError::Infeasible(conflicts));
    }
    Ok(inst)
}

/// Hall-type capacity check: for each distinct allowed-region set S (up to a
/// limit), the units whose allowed regions lie inside S must fit in S.
fn capacity_conflicts(inst: &Instance, out: &mut Vec<Conflict>) {
    let dims = inst.dims;
    let mut sets: BTreeMap<&[u32], ()> = BTreeMap::new();
    for b in &inst.blocks {
        sets.insert(&b.allowed, ());
        if sets.len() > 64 {
            break;
        }
    }
    let all: Vec<u32> = (0..inst.regions.len() as u32)
        .filter(|&r| !inst.regions[r as usize].down)
        .collect();
    let mut candidates: Vec<Vec<u32>> = sets.keys().map(|s| s.to_vec()).collect();
    candidates.push(all);
    candidates.sort_by_key(|s| s.len());
    candidates.dedup();
    let mut found: Vec<(usize, Vec<u32>)> = Vec::new();
    for s in &candidates {
        let inside: Vec<&Block> = inst
            .blocks
            .iter()
            .filter(|b| b.allowed.iter().all(|r| s.binary_search(r).is_ok()))
            .collect();
        for k in 0..dims {
            // Skip if a smaller conflicting set for this dimension is inside s.
            if found
                .iter()
                .any(|(fk, fs)| *fk == k && fs.iter().all(|r| s.binary_search(r).is_ok()))
            {
                continue;
            }
            let demand: f64 = inside
                .iter()
                .map(|b| {
                    let m = (0..b.allowed.len())
                        .map(|p| b.demand[p * dims + k])
                        .fold(f64::INFINITY, f64::min);
                    b.n_items as f64 * if m.is_finite() { m } else { 0.0 }
                })
                .sum();
            let cap: f64 = s.iter().map(|&r| inst.regions[r as usize].cap[k]).sum();
            if demand > cap * (1.0 + 1e-9) + 1e-9 {
                found.push((k, s.clone()));
                out.push(Conflict::DemandExceedsCapacity {
                    dimension: inst.dim_names[k].clone(),
                    regions: s
                        .iter()
                        .map(|&r| inst.regions[r as usize].id.clone())
                        .collect(),
                    units: inside.iter().map(|b| b.name.clone()).collect(),
                    demand,
                    capacity: cap,
                });
            }
        }
    }
}
