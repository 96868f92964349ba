//! Lagrangian lower bound: the capacity constraints are relaxed with
//! multipliers, leaving one independent subproblem per block, solved exactly
//! or relaxed further; multipliers follow a subgradient method.
//!
//! The objective is compute + latency + migration + egress. The bound is the
//! sum of two lower bounds on separate terms (min of a sum >= sum of mins):
//!
//! - compute + latency + migration, capacity relaxed: each block's
//!   subproblem keeps its spread requirement (relaxed to providers or to
//!   regions) and its migration cost: a co-located block's migration is a
//!   per-region constant; a replicated unit pays `mig` for every replica not
//!   matched to a current one, solved exactly without spread (cheapest mix
//!   of "stay" slots and the best region) and, with spread, the larger of the
//!   spread and the migration relaxations. Anti-affine pairs of blocks
//!   without spread (matched greedily, each block in at most one pair) are
//!   solved jointly: the two cheapest distinct regions.
//! - egress: per traffic edge, the replica pairs that must end in different
//!   regions (or providers) times the cheapest price such a pair can have.
//!   How many pairs can share a region is bounded by the spread of both
//!   units (the most concentrated placement a spread allows, by
//!   rearrangement), the regions both may use, and anti-affinity (none);
//!   likewise for providers.
//!
//! Each is a relaxation of the true problem, so every value is a valid lower
//! bound (checked against brute force in `tests/properties.rs`).

use std::time::Instant;

use crate::validate::{Block, Edge, Instance};

/// Migration data of a block for its subproblem.
enum Mig {
    /// No migration cost.
    None,
    /// Co-located block: cost added per allowed position.
    PerPosition(Vec<f64>),
    /// Replicated unit: current replicas as (position, count) in the allowed
    /// list, cost per moved replica, and replicas that move at most.
    Replicas {
        cur: Vec<(u32, u32)>,
        mig: f64,
        base: f64,
    },
}

fn migration_data(inst: &Instance, b: &Block) -> Mig {
    if b.members.len() == 1 && b.members[0].1 == 1 {
        let uc = &inst.units[b.members[0].0 as usize];
        if uc.grouped || uc.cur_total == 0 || uc.mig <= 0.0 {
            return Mig::None;
        }
        let cur = uc
            .cur
            .iter()
            .filter_map(|&(r, c)| b.pos(r).map(|p| (p as u32, c)))
            .collect();
        return Mig::Replicas {
            cur,
            mig: uc.mig,
            base: uc.replicas.min(uc.cur_total) as f64,
        };
    }
    let mut add = vec![0.0; b.allowed.len()];
    let mut any = false;
    for &(u, _) in &b.members {
        let uc = &inst.units[u as usize];
        if uc.cur_total == 0 || uc.mig <= 0.0 {
            continue;
        }
        any = true;
        let n = uc.replicas;
        for (p, &r) in b.allowed.iter().enumerate() {
            let here = uc
                .cur
                .binary_search_by_key(&r, |x| x.0)
                .map_or(0, |i| uc.cur[i].1);
            add[p] += uc.mig * (n.min(uc.cur_total) - n.min(here)) as f64;
        }
    }
    if any {
        Mig::PerPosition(add)
    } else {
        Mig::None
    }
}

/// Exact minimum of a replicated unit's values plus migration, spread
/// ignored: each item either fills one of the current replicas' slots
/// (value - mig) or goes to the cheapest region.
fn migration_lb(
    v: &[f64],
    n: usize,
    cur: &[(u32, u32)],
    mig: f64,
    base: f64,
    chosen: &mut Vec<u32>,
) -> f64 {
    let (mut best, mut bp) = (f64::INFINITY, 0u32);
    for (p, &x) in v.iter().enumerate() {
        if x < best {
            best = x;
            bp = p as u32;
        }
    }
    let mut slots: Vec<(f64, u32)> = Vec::new();
    for &(p, c) in cur {
        let x = v[p as usize] - mig;
        if x < best {
            slots.extend(std::iter::repeat_n((x, p), (c as usize).min(n)));
        }
    }
    slots.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    slots.truncate(n);
    let mut total = mig * base;
    for &(x, p) in &slots {
        total += x;
        chosen.push(p);
    }
    total += best * (n - slots.len()) as f64;
    chosen.extend(std::iter::repeat_n(bp, n - slots.len()));
    total
}

/// One side of a traffic edge: the replica-count vector of the most
/// concentrated placement its constraints allow, over regions and providers.
struct Side<'a> {
    allowed: &'a [u32],
    block: u32,
    n: f64,
    by_region: Vec<f64>,
    by_provider: Vec<f64>,
}

fn concentrated(n: u32, k: u32) -> Vec<f64> {
    let k = k.clamp(1, n.max(1));
    let mut v = vec![1.0; k as usize];
    v[0] = (n - k + 1) as f64;
    v
}

fn side(inst: &Instance, u: u32) -> Side<'_> {
    let uc = &inst.units[u as usize];
    let b = &inst.blocks[uc.block as usize];
    let n = uc.replicas;
    let (kr, kp) = if uc.grouped {
        (1, 1)
    } else {
        (b.spread_r, b.spread_p)
    };
    Side {
        allowed: &b.allowed,
        block: uc.block,
        n: n as f64,
        by_region: concentrated(n, kr),
        by_provider: concentrated(n, kp),
    }
}

/// Most pairs that can share a bin when at most `m` bins are common: both
/// vectors are sorted descending, so by rearrangement the sum of the first
/// `m` products bounds every placement (the concentrated vectors majorise
/// every placement the spread allows).
fn shared(a: &[f64], b: &[f64], m: usize) -> f64 {
    a.iter().zip(b).take(m).map(|(x, y)| x * y).sum()
}

/// Cheapest price between distinct regions, (different providers, same provider).
fn min_prices(inst: &Instance, from: &[u32], to: &[u32]) -> (f64, f64) {
    let (mut other, mut same) = (f64::INFINITY, f64::INFINITY);
    for &a in from {
        let pa = inst.regions[a as usize].provider;
        for &b in to {
            if a == b {
                continue;
            }
            let p = inst.price(a, b);
            if inst.regions[b as usize].provider == pa {
                same = same.min(p);
            } else {
                other = other.min(p);
            }
        }
    }
    (other, same)
}

/// Unavoidable egress of one edge (weighted), see the module docs.
fn edge_floor(inst: &Instance, e: &Edge, all: &[u32], global: &mut Option<(f64, f64)>) -> f64 {
    let (a, b) = (side(inst, e.from), side(inst, e.to));
    let pairs = a.n * b.n;
    let anti = inst.blocks[a.block as usize].anti.contains(&b.block);
    let common_regions = if anti {
        0
    } else {
        a.allowed
            .iter()
            .filter(|r| b.allowed.binary_search(r).is_ok())
            .count()
    };
    let provs = |s: &Side<'_>| {
        let mut p: Vec<u32> = s
            .allowed
            .iter()
            .map(|&r| inst.regions[r as usize].provider)
            .collect();
        p.sort_unstable();
        p.dedup();
        p
    };
    let (pa, pb) = (provs(&a), provs(&b));
    let common_providers = pa.iter().filter(|p| pb.binary_search(p).is_ok()).count();
    let sp = shared(&a.by_provider, &b.by_provider, common_providers).min(pairs);
    let sr = shared(&a.by_region, &b.by_region, common_regions).min(sp);
    let (other, same) = if a.allowed.len() * b.allowed.len() <= 4096 {
        min_prices(inst, a.allowed, b.allowed)
    } else {
        *global.get_or_insert_with(|| min_prices(inst, all, all))
    };
    let floor = match (other.is_finite(), same.is_finite()) {
        (false, false) => 0.0,
        (false, true) => (pairs - sr) * same,
        (true, false) => (pairs - sr) * other,
        (true, true) => {
            let s2 = same.min(other);
            pairs * other - sp * (other - s2) - sr * s2
        }
    };
    e.factor * floor.max(0.0)
}

/// Sum of the unavoidable egress of every edge.
fn egress_floor(inst: &Instance) -> f64 {
    let all: Vec<u32> = (0..inst.regions.len() as u32).collect();
    let mut global = None;
    inst.edges
        .iter()
        .map(|e| edge_floor(inst, e, &all, &mut global))
        .sum()
}

/// Anti-affine pairs of blocks solved jointly: `partner[b]` is the other block
/// of b's pair (`u32::MAX` if none). Only blocks whose subproblem is "all
/// items in the cheapest region" (no spread, no per-replica migration).
fn anti_pairs(inst: &Instance, mig: &[Mig]) -> Vec<u32> {
    let simple = |b: usize| {
        let bl = &inst.blocks[b];
        bl.spread_p <= 1
            && bl.spread_r <= 1
            && !matches!(mig[b], Mig::Replicas { .. })
            && !bl.allowed.is_empty()
    };
    let mut partner = vec![u32::MAX; inst.blocks.len()];
    for b in 0..inst.blocks.len() {
        if partner[b] != u32::MAX || !simple(b) {
            continue;
        }
        if let Some(&o) = inst.blocks[b]
            .anti
            .iter()
            .find(|&&o| o as usize != b && partner[o as usize] == u32::MAX && simple(o as usize))
        {
            partner[b] = o;
            partner[o as usize] = b as u32;
        }
    }
    partner
}

/// Best and second best (value, position) of `v`.
fn two_best(v: &[f64]) -> [(f64, usize); 2] {
    let mut t = [(f64::INFINITY, usize::MAX); 2];
    for (p, &x) in v.iter().enumerate() {
        if x < t[0].0 {
            t[1] = t[0];
            t[0] = (x, p);
        } else if x < t[1].0 {
            t[1] = (x, p);
        }
    }
    t
}

/// Joint minimum of two anti-affine simple blocks (items of each all in one
/// region, the two regions distinct); `None` if they cannot be separated.
fn joint_lb(
    b1: &Block,
    v1: &[f64],
    b2: &Block,
    v2: &[f64],
    chosen1: &mut Vec<u32>,
    chosen2: &mut Vec<u32>,
) -> Option<f64> {
    let (n1, n2) = (b1.n_items as f64, b2.n_items as f64);
    let (t1, t2) = (two_best(v1), two_best(v2));
    let region = |b: &Block, p: usize| b.allowed[p];
    let mut best: Option<(f64, usize, usize)> = None;
    for &(x1, p1) in &t1 {
        for &(x2, p2) in &t2 {
            if p1 == usize::MAX || p2 == usize::MAX || region(b1, p1) == region(b2, p2) {
                continue;
            }
            let val = n1 * x1 + n2 * x2;
            if best.is_none_or(|(bv, _, _)| val < bv) {
                best = Some((val, p1, p2));
            }
        }
    }
    let (val, p1, p2) = best?;
    chosen1.extend(std::iter::repeat_n(p1 as u32, b1.n_items as usize));
    chosen2.extend(std::iter::repeat_n(p2 as u32, b2.n_items as usize));
    Some(val)
}

/// Result of the bound computation.
#[derive(Debug, Clone)]
pub(crate) struct Bound {
    /// Best (largest) Lagrangian value found: a valid lower bound.
    pub(crate) value: f64,
    /// Multipliers (per region x dimension, in original units) at the best value.
    pub(crate) lambda: Vec<f64>,
    /// Subgradient iterations done.
    pub(crate) iterations: u32,
}

/// Solves a block's subproblem for item values `v` (parallel to `allowed`);
/// returns the value and pushes the chosen positions (one per item).
fn block_lb(
    inst: &Instance,
    b: &Block,
    v: &[f64],
    chosen: &mut Vec<u32>,
    scratch: &mut Vec<(f64, u32)>,
) -> f64 {
    let n = b.n_items as usize;
    let (mut best, mut bp) = (f64::INFINITY, 0usize);
    for (p, &x) in v.iter().enumerate() {
        if x < best {
            best = x;
            bp = p;
        }
    }
    if b.spread_p <= 1 && b.spread_r <= 1 {
        chosen.extend(std::iter::repeat_n(bp as u32, n));
        return best * n as f64;
    }
    // Provider relaxation: best region per provider.
    let mut lb_p = f64::NEG_INFINITY;
    let start = chosen.len();
    if b.spread_p > 1 {
        scratch.clear();
        scratch.resize(inst.providers.len(), (f64::INFINITY, u32::MAX));
        for (p, &x) in v.iter().enumerate() {
            let prov = inst.regions[b.allowed[p] as usize].provider as usize;
            if x < scratch[prov].0 {
                scratch[prov] = (x, p as u32);
            }
        }
        scratch.retain(|e| e.1 != u32::MAX);
        scratch.sort_by(|a, c| a.0.total_cmp(&c.0).then(a.1.cmp(&c.1)));
        let k = (b.spread_p as usize).min(scratch.len());
        lb_p = scratch[..k].iter().map(|x| x.0).sum::<f64>() + (n - k) as f64 * best;
        chosen.extend(scratch[..k].iter().map(|x| x.1));
        chosen.extend(std::iter::repeat_n(bp as u32, n - k));
    }
    if b.spread_r > 1 {
        scratch.clear();
        scratch.extend(v.iter().enumerate().map(|(p, &x)| (x, p as u32)));
        scratch.sort_by(|a, c| a.0.total_cmp(&c.0).then(a.1.cmp(&c.1)));
        let k = (b.spread_r as usize).min(scratch.len());
        let lb_r = scratch[..k].iter().map(|x| x.0).sum::<f64>() + (n - k) as f64 * best;
        if lb_r > lb_p {
            chosen.truncate(start);
            chosen.extend(scratch[..k].iter().map(|x| x.1));
            chosen.extend(std::iter::repeat_n(bp as u32, n - k));
            return lb_r;
        }
    }
    lb_p
}

/// Item values of block `b` under multipliers `lambda`: cost + priced
/// demand (+ the per-position migration of a co-located block).
fn values(b: &Block, lambda: &[f64], d: usize, mig: &Mig, v: &mut Vec<f64>) {
    v.clear();
    // Hot loop: iterators (no bounds checks, accumulator in a register).
    if d == 2 {
        v.extend(
            b.allowed
                .iter()
                .zip(&b.cost)
                .zip(b.demand.chunks_exact(2))
                .map(|((&r, &c), dm)| {
                    let l = &lambda[r as usize * 2..r as usize * 2 + 2];
                    c + l[0] * dm[0] + l[1] * dm[1]
                }),
        );
    } else if d == 0 {
        v.extend_from_slice(&b.cost);
    } else {
        v.extend(
            b.allowed
                .iter()
                .zip(&b.cost)
                .zip(b.demand.chunks_exact(d))
                .map(|((&r, &c), dm)| {
                    let l = &lambda[r as usize * d..r as usize * d + d];
                    l.iter().zip(dm).fold(c, |x, (a, b)| x + a * b)
                }),
        );
    }
    if let Mig::PerPosition(add) = mig {
        v.iter_mut().zip(add).for_each(|(x, a)| *x += a);
    }
}

/// Lower bound of one block's subproblem (values `v`), with its migration.
fn block_value(
    inst: &Instance,
    b: &Block,
    v: &[f64],
    mig: &Mig,
    chosen: &mut Vec<u32>,
    scratch: &mut Vec<(f64, u32)>,
) -> f64 {
    let Mig::Replicas { cur, mig, base } = mig else {
        return block_lb(inst, b, v, chosen, scratch);
    };
    let n = b.n_items as usize;
    if b.spread_p <= 1 && b.spread_r <= 1 {
        return migration_lb(v, n, cur, *mig, *base, chosen);
    }
    // Spread and migration: the larger of the two relaxations.
    let start = chosen.len();
    let with_spread = block_lb(inst, b, v, chosen, scratch);
    let mut alt = Vec::new();
    let with_mig = migration_lb(v, n, cur, *mig, *base, &mut alt);
    if with_mig > with_spread {
        chosen.truncate(start);
        chosen.extend(alt);
        with_mig
    } else {
        with_spread
    }
}

/// Runs the subgradient method. `ub` is an upper bound estimate (a feasible
/// cost if known), used by the Polyak step size.
pub(crate) fn lagrangian(
    inst: &Instance,
    ub: Option<f64>,
    max_iter: u32,
    deadline: Option<Instant>,
) -> Bound {
    let d = inst.dims;
    let nr = inst.regions.len();
    // Scale per dimension so that multipliers are comparable.
    let scale: Vec<f64> = (0..d)
        .map(|k| {
            let s: f64 = inst.regions.iter().map(|r| r.cap[k]).sum::<f64>() / nr as f64;
            if s > 0.0 { s } else { 1.0 }
        })
        .collect();
    let mut mu = vec![0.0f64; nr * d]; // scaled multipliers
    let mut best = Bound {
        value: f64::NEG_INFINITY,
        lambda: vec![0.0; nr * d],
        iterations: 0,
    };
    // Step-size schedule (Polyak factor halved after `patience` iterations
    // without progress); shortened when the time budget allows only a few
    // iterations (estimated from the first one).
    let mut step = 2.0f64;
    let mut patience = 20u32;
    let t0 = Instant::now();
    let mut since = 0u32;
    let mut v = Vec::new();
    let mut chosen = Vec::new();
    let mut scratch = Vec::new();
    let mut g = vec![0.0f64; nr * d];
    let mut dir = vec![0.0f64; nr * d];
    let mut deflect = 0.0f64;
    let mut ub = ub;
    let mig: Vec<Mig> = inst
        .blocks
        .iter()
        .map(|b| migration_data(inst, b))
        .collect();
    let pair = anti_pairs(inst, &mig);
    let mut v2 = Vec::new();
    let mut chosen2 = Vec::new();
    // Egress is bounded apart (it does not depend on the multipliers).
    let egress = egress_floor(inst);
    for it in 0..max_iter.max(1) {
        if it > 0 {
            if let Some(dl) = deadline {
                if Instant::now() >= dl {
                    break;
                }
            }
        }
        best.iterations = it + 1;
        let lambda: Vec<f64> = (0..nr * d).map(|x| mu[x] / scale[x % d]).collect();
        let mut total = egress;
        // g = scaled load - scaled cap
        for x in 0..nr * d {
            g[x] = -inst.regions[x / d].cap[x % d] / scale[x % d];
            total -= lambda[x] * inst.regions[x / d].cap[x % d];
        }
        for (bi, b) in inst.blocks.iter().enumerate() {
            let partner = pair[bi] as usize;
            if partner < bi {
                continue; // solved with its partner
            }
            values(b, &lambda, d, &mig[bi], &mut v);
            if v.is_empty() {
                continue;
            }
            chosen.clear();
            let mut joint = None;
            if partner != u32::MAX as usize {
                let ob = &inst.blocks[partner];
                values(ob, &lambda, d, &mig[partner], &mut v2);
                chosen2.clear();
                joint = joint_lb(b, &v, ob, &v2, &mut chosen, &mut chosen2);
                if joint.is_none() {
                    chosen.clear();
                    chosen2.clear();
                }
            }
            match joint {
                Some(val) => {
                    total += val;
                    let ob = &inst.blocks[partner];
                    for &p in &chosen2 {
                        let r = ob.allowed[p as usize] as usize;
                        for k in 0..d {
                            g[r * d + k] += ob.demand[p as usize * d + k] / scale[k];
                        }
                    }
                }
                None => {
                    total += block_value(inst, b, &v, &mig[bi], &mut chosen, &mut scratch);
                    if partner != u32::MAX as usize {
                        // Not separable (then infeasible): solve both alone.
                        let ob = &inst.blocks[partner];
                        values(ob, &lambda, d, &mig[partner], &mut v2);
                        chosen2.clear();
                        total +=
                            block_value(inst, ob, &v2, &mig[partner], &mut chosen2, &mut scratch);
                        for &p in &chosen2 {
                            let r = ob.allowed[p as usize] as usize;
                            for k in 0..d {
                                g[r * d + k] += ob.demand[p as usize * d + k] / scale[k];
                            }
                        }
                    }
                }
            }
            for &p in &chosen {
                let r = b.allowed[p as usize] as usize;
                for k in 0..d {
                    g[r * d + k] += b.demand[p as usize * d + k] / scale[k];
                }
            }
        }
        if it == 0 {
            if let Some(dl) = deadline {
                let per = t0.elapsed().as_secs_f64().max(1e-9);
                let est = (dl.saturating_duration_since(t0).as_secs_f64() / per) as u32;
                if est < max_iter && est < 300 {
                    patience = (est / 15).clamp(3, 20);
                    step = 1.0;
                    // Few iterations: deflect each step with half the
                    // previous direction, which damps zig-zagging.
                    deflect = 0.5;
                }
            }
        }
        if total > best.value {
            if total > best.value + 1e-9 * total.abs().max(1.0) {
                since = 0;
            }
            best.value = total;
            best.lambda = lambda;
        } else {
            since += 1;
        }
        if since >= patience {
            step *= 0.5;
            since = 0;
            if step < 1e-4 {
                break;
            }
        }
        let mut norm = 0.0;
        for x in 0..nr * d {
            // Deflected subgradient: damp zig-zagging with the previous direction.
            g[x] += deflect * dir[x];
            if mu[x] <= 0.0 && g[x] < 0.0 {
                g[x] = 0.0;
            }
            dir[x] = g[x];
            norm += g[x] * g[x];
        }
        if norm <= 1e-18 {
            break; // relaxed solution is feasible: bound is optimal for the relaxation
        }
        let target = match ub {
            Some(u) if u > best.value + 1e-9 => u,
            _ => {
                let t = best.value.abs() * 0.05 + 1.0 + best.value;
                ub = None;
                t
            }
        };
        let t = step * (target - total) / norm;
        for x in 0..nr * d {
            mu[x] = (mu[x] + t * g[x]).max(0.0);
        }
    }
    if inst.integral && best.value.is_finite() {
        best.value = (best.value - 1e-6).ceil();
    }
    best
}
