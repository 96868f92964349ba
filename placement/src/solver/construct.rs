//! Construction heuristic: blocks in priority / size order, each item to the
//! region with the lowest Lagrangian-adjusted cost that fits and keeps the
//! spread, anti-affinity and co-location constraints satisfiable.

use crate::validate::Instance;

const UNPLACED: u32 = u32::MAX;

/// Builds an initial assignment (positions into each block's allowed list).
///
/// `lambda` are capacity prices (region x dimension); with `warm`, replicas
/// stay in their current region when it is allowed and fits.
pub(crate) fn construct(inst: &Instance, cap: &[f64], lambda: &[f64], warm: bool) -> Vec<u32> {
    let d = inst.dims;
    let nr = inst.regions.len();
    let mut load = vec![0.0f64; nr * d];
    let mut assign = vec![UNPLACED; inst.items.len()];
    let mut apos = vec![0u32; inst.items.len()];
    // Average capacity per dimension, to compare sizes across dimensions.
    let avg: Vec<f64> = (0..d)
        .map(|k| {
            let s = inst.regions.iter().map(|r| r.cap[k]).sum::<f64>() / nr.max(1) as f64;
            if s > 0.0 { s } else { 1.0 }
        })
        .collect();
    let mut order: Vec<usize> = (0..inst.blocks.len()).collect();
    let size: Vec<f64> = inst
        .blocks
        .iter()
        .map(|b| {
            let na = b.allowed.len().max(1);
            (0..d)
                .map(|k| {
                    (0..b.allowed.len())
                        .map(|p| b.demand[p * d + k])
                        .sum::<f64>()
                        / na as f64
                        / avg[k]
                })
                .fold(0.0, f64::max)
                * (1.0 + 1.0 / na as f64)
        })
        .collect();
    order.sort_by(|&a, &b| {
        inst.blocks[b]
            .priority
            .cmp(&inst.blocks[a].priority)
            .then(size[b].total_cmp(&size[a]))
            .then(a.cmp(&b))
    });
    let mut provs: Vec<u32> = Vec::new();
    let mut regs: Vec<u32> = Vec::new();
    for &bi in &order {
        let b = &inst.blocks[bi];
        if b.allowed.is_empty() {
            continue;
        }
        // Current placement counts left to reuse (warm start).
        let mut cur_left: Vec<(u32, u32)> = Vec::new();
        if b.members.len() == 1 {
            let uc = &inst.units[b.members[0].0 as usize];
            cur_left = uc.cur.clone();
        }
        for it in b.first_item..b.first_item + b.n_items {
            let it = it as usize;
            let placed = (it - b.first_item as usize) as i64;
            let remaining = b.n_items as i64 - placed - 1;
            provs.clear();
            regs.clear();
            for o in b.first_item as usize..it {
                let r = assign[o];
                if !regs.contains(&r) {
                    regs.push(r);
                }
                let p = inst.regions[r as usize].provider;
                if !provs.contains(&p) {
                    provs.push(p);
                }
            }
            let mut best: Option<(f64, usize)> = None;
            let mut fallback: Option<(f64, usize)> = None;
            for (p, &r) in b.allowed.iter().enumerate() {
                let ru = r as usize;
                // spread feasibility
                let np =
                    provs.len() as i64 + i64::from(!provs.contains(&inst.regions[ru].provider));
                let nreg = regs.len() as i64 + i64::from(!regs.contains(&r));
                let mut hard = 0i64;
                if np + remaining < b.spread_p as i64 {
                    hard += 1;
                }
                if nreg + remaining < b.spread_r as i64 {
                    hard += 1;
                }
                for &o in &b.anti {
                    let ob = &inst.blocks[o as usize];
                    if (ob.first_item..ob.first_item + ob.n_items).any(|x| assign[x as usize] == r)
                    {
                        hard += 1;
                    }
                }
                let mut score = b.cost[p];
                let mut over = 0.0;
                for k in 0..d {
                    let dv = b.demand[p * d + k];
                    score += lambda[ru * d + k] * dv;
                    let nl = load[ru * d + k] + dv;
                    let c = cap[ru * d + k];
                    if nl > c + 1e-9 * c.abs().max(1.0) {
                        over += (nl - c) / avg[k];
                    }
                }
                // egress to placed partners
                for &(u, m) in &b.members {
                    let uc = &inst.units[u as usize];
                    for &e in &uc.edges {
                        let e = &inst.edges[e as usize];
                        let (v, out) = if e.from == u {
                            (e.to, true)
                        } else {
                            (e.from, false)
                        };
                        let vc = &inst.units[v as usize];
                        let vb = &inst.blocks[vc.block as usize];
                        let mult = if vc.grouped { vc.replicas as f64 } else { 1.0 };
                        for x in vb.first_item..vb.first_item + vb.n_items {
                            let rb = assign[x as usize];
                            if rb == UNPLACED {
                                continue;
                            }
                            let pr = if out {
                                inst.price(r, rb)
                            } else {
                                inst.price(rb, r)
                            };
                            score += e.factor * m as f64 * mult * pr;
                        }
                    }
                }
                if warm {
                    if let Some(c) = cur_left.iter().find(|c| c.0 == r && c.1 > 0) {
                        let _ = c;
                        let uc = &inst.units[b.members[0].0 as usize];
                        score -= uc.mig + 1e-6 + b.cost[p].abs() * 1e-3;
                    }
                }
                let cand = (score, p);
                if hard == 0 && over == 0.0 {
                    if best.is_none_or(|(s, _)| score < s) {
                        best = Some(cand);
                    }
                } else {
                    let f = score.abs() + 1.0;
                    let key = hard as f64 * 1e6 * f + over * 1e3 * f + score;
                    if fallback.is_none_or(|(s, _)| key < s) {
                        fallback = Some((key, p));
                    }
                }
            }
            let p = best.or(fallback).map_or(0, |x| x.1);
            let r = b.allowed[p];
            if let Some(c) = cur_left.iter_mut().find(|c| c.0 == r && c.1 > 0) {
                c.1 -= 1;
            }
            assign[it] = r;
            apos[it] = p as u32;
            for k in 0..d {
                load[r as usize * d + k] += b.demand[p * d + k];
            }
        }
    }
    apos
}
