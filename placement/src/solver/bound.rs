//! Lagrangian lower bound: the capacity constraints are relaxed with
//! multipliers, leaving one independent subproblem per block (with its spread
//! requirement kept), solved exactly; multipliers follow a subgradient method.
//!
//! Egress, migration and anti-affinity terms are dropped (egress and migration
//! costs are non-negative), so every value computed is a valid lower bound.

use std::time::Instant;

use crate::validate::{Block, Instance};

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
        let mut total = 0.0;
        // g = scaled load - scaled cap
        for x in 0..nr * d {
            g[x] = -inst.regions[x / d].cap[x % d] / scale[x % d];
            total -= lambda[x] * inst.regions[x / d].cap[x % d];
        }
        for b in &inst.blocks {
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
            if v.is_empty() {
                continue;
            }
            chosen.clear();
            total += block_lb(inst, b, &v, &mut chosen, &mut scratch);
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
