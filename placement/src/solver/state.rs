//! Incremental search state: assignment, loads, cost and penalties, with
//! O(degree) move evaluation.

use crate::model::CostBreakdown;
use crate::validate::{Block, Instance};

/// Change of the objective and of the penalties caused by a move.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Delta {
    /// Change of the true (weighted) cost.
    pub(crate) cost: f64,
    /// Change of the weighted capacity penalty plus search-only move penalty.
    pub(crate) pen: f64,
    /// Change of the hard violation count (spread, anti-affinity, budget).
    pub(crate) hard: i64,
}

impl Delta {
    #[inline]
    pub(crate) fn add(self, o: Delta) -> Delta {
        Delta {
            cost: self.cost + o.cost,
            pen: self.pen + o.pen,
            hard: self.hard + o.hard,
        }
    }
}

/// Search state.
#[derive(Debug, Clone)]
pub(crate) struct State<'a> {
    pub(crate) inst: &'a Instance,
    pub(crate) cap: Vec<f64>,
    tol: Vec<f64>,
    /// item -> region.
    pub(crate) assign: Vec<u32>,
    /// item -> position in its block's `allowed`.
    pub(crate) apos: Vec<u32>,
    pub(crate) load: Vec<f64>,
    /// Capacity penalty weight per (region, dimension).
    pub(crate) w: Vec<f64>,
    /// Weight of one hard violation.
    pub(crate) w_hard: f64,
    pub(crate) cost: f64,
    pub(crate) hard: i64,
    pub(crate) n_over: usize,
    moved: Vec<u32>,
    budget_used: i64,
    move_penalty: f64,
}

#[inline]
fn exc(load: f64, cap: f64) -> f64 {
    (load - cap).max(0.0)
}

impl<'a> State<'a> {
    /// Builds a state from item positions (index into the block's allowed list).
    pub(crate) fn new(
        inst: &'a Instance,
        cap: Vec<f64>,
        apos: Vec<u32>,
        move_penalty: f64,
    ) -> Self {
        let d = inst.dims;
        let nr = inst.regions.len();
        let tol = cap.iter().map(|c| 1e-9 * c.abs().max(1.0)).collect();
        let assign = apos
            .iter()
            .enumerate()
            .map(|(i, &p)| inst.blocks[inst.items[i] as usize].allowed[p as usize])
            .collect();
        // Initial capacity weights: average cost per unit of resource.
        let mut w = vec![1.0; nr * d];
        for k in 0..d {
            let mut cs = 0.0;
            let mut ds = 0.0;
            for b in &inst.blocks {
                if b.allowed.is_empty() {
                    continue;
                }
                let n = b.allowed.len() as f64;
                cs += b.n_items as f64 * b.cost.iter().sum::<f64>() / n;
                ds += b.n_items as f64
                    * (0..b.allowed.len())
                        .map(|p| b.demand[p * d + k])
                        .sum::<f64>()
                    / n;
            }
            let v = if ds > 0.0 && cs > 0.0 { cs / ds } else { 1.0 };
            for r in 0..nr {
                w[r * d + k] = v;
            }
        }
        let max_spread = inst
            .blocks
            .iter()
            .map(|b| {
                let lo = b.cost.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = b.cost.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                if lo.is_finite() { hi - lo } else { 0.0 }
            })
            .fold(0.0, f64::max);
        let mut s = State {
            inst,
            cap,
            tol,
            assign,
            apos,
            load: vec![0.0; nr * d],
            w,
            w_hard: 0.0,
            cost: 0.0,
            hard: 0,
            n_over: 0,
            moved: vec![0; inst.units.len()],
            budget_used: 0,
            move_penalty,
        };
        let egress_scale: f64 = inst.edges.iter().map(|e| e.factor).sum::<f64>()
            * inst.egress.iter().copied().fold(0.0, f64::max)
            * 4.0;
        let mig_scale = inst.units.iter().map(|u| u.mig).fold(0.0, f64::max);
        s.w_hard = 10.0 * (max_spread + egress_scale + mig_scale + move_penalty) + 10.0;
        s.recompute();
        s
    }

    /// Recomputes loads, cost and violation counters from the assignment.
    pub(crate) fn recompute(&mut self) {
        let inst = self.inst;
        let d = inst.dims;
        self.load.iter_mut().for_each(|x| *x = 0.0);
        for (i, &b) in inst.items.iter().enumerate() {
            let blk = &inst.blocks[b as usize];
            let p = self.apos[i] as usize;
            let r = self.assign[i] as usize;
            for k in 0..d {
                self.load[r * d + k] += blk.demand[p * d + k];
            }
        }
        self.cost = evaluate(inst, &self.assign).total;
        self.n_over = (0..self.load.len())
            .filter(|&x| self.load[x] > self.cap[x] + self.tol[x])
            .count();
        let mut hard = 0i64;
        for (bi, b) in inst.blocks.iter().enumerate() {
            hard += self.spread_short(b, None);
            for &o in &b.anti {
                if (o as usize) > bi {
                    for it in self.items_of(b) {
                        hard += self.count_in(&inst.blocks[o as usize], self.assign[it]);
                    }
                }
            }
        }
        self.budget_used = 0;
        for (ui, u) in inst.units.iter().enumerate() {
            let m = moved_replicas(inst, &self.assign, ui);
            self.moved[ui] = m;
            self.budget_used += (m as i64 - u.forced as i64).max(0);
        }
        if let Some(bud) = inst.budget {
            hard += (self.budget_used - bud as i64).max(0);
        }
        self.hard = hard;
    }

    #[inline]
    pub(crate) fn block(&self, i: usize) -> &'a Block {
        &self.inst.blocks[self.inst.items[i] as usize]
    }

    #[inline]
    fn items_of(&self, b: &Block) -> std::ops::Range<usize> {
        b.first_item as usize..(b.first_item + b.n_items) as usize
    }

    #[inline]
    fn count_in(&self, b: &Block, r: u32) -> i64 {
        self.items_of(b).filter(|&it| self.assign[it] == r).count() as i64
    }

    /// True when no capacity or hard constraint is violated.
    #[inline]
    pub(crate) fn feasible(&self) -> bool {
        self.n_over == 0 && self.hard == 0
    }

    /// Total capacity excess weighted by the current weights.
    pub(crate) fn penalty(&self) -> f64 {
        let mut p = 0.0;
        for x in 0..self.load.len() {
            p += self.w[x] * exc(self.load[x], self.cap[x]);
        }
        p + self.w_hard * self.hard as f64
    }

    /// Is (region, dim) over capacity?
    #[inline]
    pub(crate) fn over(&self, x: usize) -> bool {
        self.load[x] > self.cap[x] + self.tol[x]
    }

    fn spread_short(&self, b: &Block, moved: Option<(usize, u32)>) -> i64 {
        if b.spread_p <= 1 && b.spread_r <= 1 {
            return 0;
        }
        let mut regs: [u32; 16] = [0; 16];
        let mut provs: [u32; 16] = [0; 16];
        let (mut nr, mut np) = (0usize, 0usize);
        let mut big_r: Vec<u32> = Vec::new();
        let mut big_p: Vec<u32> = Vec::new();
        for it in self.items_of(b) {
            let r = match moved {
                Some((mi, mr)) if mi == it => mr,
                _ => self.assign[it],
            };
            let p = self.inst.regions[r as usize].provider;
            if nr < 16 {
                if !regs[..nr].contains(&r) {
                    regs[nr] = r;
                    nr += 1;
                }
            } else if !regs.contains(&r) && !big_r.contains(&r) {
                big_r.push(r);
            }
            if np < 16 {
                if !provs[..np].contains(&p) {
                    provs[np] = p;
                    np += 1;
                }
            } else if !provs.contains(&p) && !big_p.contains(&p) {
                big_p.push(p);
            }
        }
        let dr = (nr + big_r.len()) as i64;
        let dp = (np + big_p.len()) as i64;
        (b.spread_p as i64 - dp).max(0) + (b.spread_r as i64 - dr).max(0)
    }

    /// Change of the spread shortfall of block `b` when item `i` moves r1 -> r2
    /// (single pass over the other items of the block).
    fn spread_delta(&self, b: &Block, i: usize, r1: u32, r2: u32) -> i64 {
        let n = b.n_items as usize;
        if n > 16 {
            return self.spread_short(b, Some((i, r2))) - self.spread_short(b, None);
        }
        let p1 = self.inst.regions[r1 as usize].provider;
        let p2 = self.inst.regions[r2 as usize].provider;
        let mut regs = [u32::MAX; 16];
        let mut provs = [u32::MAX; 16];
        let (mut nr, mut np) = (0usize, 0usize);
        let (mut in_r1, mut in_r2, mut in_p1, mut in_p2) = (false, false, false, false);
        for it in self.items_of(b) {
            if it == i {
                continue;
            }
            let r = self.assign[it];
            let p = self.inst.regions[r as usize].provider;
            in_r1 |= r == r1;
            in_r2 |= r == r2;
            in_p1 |= p == p1;
            in_p2 |= p == p2;
            if !regs[..nr].contains(&r) {
                regs[nr] = r;
                nr += 1;
            }
            if !provs[..np].contains(&p) {
                provs[np] = p;
                np += 1;
            }
        }
        let short = |have: usize, need: u32| (need as i64 - have as i64).max(0);
        let (rb, ra) = (nr + usize::from(!in_r1), nr + usize::from(!in_r2));
        let (pb, pa) = (np + usize::from(!in_p1), np + usize::from(!in_p2));
        short(pa, b.spread_p) + short(ra, b.spread_r)
            - short(pb, b.spread_p)
            - short(rb, b.spread_r)
    }

    /// Change of moved replicas of unit `u` (carrying `m` replicas per item)
    /// when item `i` of its block moves r1 -> r2.
    fn mig_delta(&self, b: &Block, u: u32, r1: u32, r2: u32) -> i64 {
        let uc = &self.inst.units[u as usize];
        if uc.cur_total == 0 {
            return 0;
        }
        let cur = |r: u32| {
            uc.cur
                .binary_search_by_key(&r, |x| x.0)
                .map_or(0, |p| uc.cur[p].1) as i64
        };
        let dmatched = if uc.grouped {
            let n = uc.replicas as i64;
            cur(r2).min(n) - cur(r1).min(n)
        } else {
            let c1 = self.count_in(b, r1);
            let c2 = self.count_in(b, r2);
            let a = if c1 <= cur(r1) { 1 } else { 0 };
            let bb = if c2 < cur(r2) { 1 } else { 0 };
            bb - a
        };
        -dmatched
    }

    /// Replica regions (region, multiplicity) of unit `v`.
    #[inline]
    fn for_replicas(&self, v: u32, mut f: impl FnMut(u32, f64)) {
        let vc = &self.inst.units[v as usize];
        let b = &self.inst.blocks[vc.block as usize];
        if vc.grouped {
            f(self.assign[b.first_item as usize], vc.replicas as f64);
        } else {
            for it in self.items_of(b) {
                f(self.assign[it], 1.0);
            }
        }
    }

    /// Delta of moving item `i` to position `q` of its block's allowed list.
    pub(crate) fn delta_shift(&self, i: usize, q: usize) -> Delta {
        let inst = self.inst;
        let b = self.block(i);
        let p = self.apos[i] as usize;
        if p == q {
            return Delta::default();
        }
        let d = inst.dims;
        let r1 = b.allowed[p] as usize;
        let r2 = b.allowed[q] as usize;
        let mut dl = Delta {
            cost: b.cost[q] - b.cost[p],
            pen: 0.0,
            hard: 0,
        };
        for k in 0..d {
            let x1 = r1 * d + k;
            let x2 = r2 * d + k;
            let d1 = b.demand[p * d + k];
            let d2 = b.demand[q * d + k];
            let l1 = self.load[x1];
            let l2 = self.load[x2];
            dl.pen += self.w[x1] * (exc(l1 - d1, self.cap[x1]) - exc(l1, self.cap[x1]))
                + self.w[x2] * (exc(l2 + d2, self.cap[x2]) - exc(l2, self.cap[x2]));
        }
        if !b.coupled {
            return dl;
        }
        self.coupled_delta(i, b, r1 as u32, r2 as u32, &mut dl, &mut Vec::new());
        dl
    }

    /// Adds the coupling terms of moving item `i` (block `b`) r1 -> r2; pushes
    /// (unit, dmoved) to `mig`.
    fn coupled_delta(
        &self,
        i: usize,
        b: &Block,
        r1: u32,
        r2: u32,
        dl: &mut Delta,
        mig: &mut Vec<(u32, i64)>,
    ) {
        let inst = self.inst;
        if b.spread_p > 1 || b.spread_r > 1 {
            dl.hard += self.spread_delta(b, i, r1, r2);
        }
        for &o in &b.anti {
            let ob = &inst.blocks[o as usize];
            dl.hard += self.count_in(ob, r2) - self.count_in(ob, r1);
        }
        let mut dbud = 0i64;
        for &(u, m) in &b.members {
            let uc = &inst.units[u as usize];
            let m = m as f64;
            for &e in &uc.edges {
                let e = &inst.edges[e as usize];
                let mut s = 0.0;
                if e.from == u {
                    self.for_replicas(e.to, |rb, mb| {
                        s += mb * (inst.price(r2, rb) - inst.price(r1, rb));
                    });
                } else {
                    self.for_replicas(e.from, |rb, mb| {
                        s += mb * (inst.price(rb, r2) - inst.price(rb, r1));
                    });
                }
                dl.cost += e.factor * m * s;
            }
            let dm = self.mig_delta(b, u, r1, r2);
            if dm != 0 {
                dl.cost += uc.mig * dm as f64;
                let before = self.moved[u as usize] as i64;
                let f = uc.forced as i64;
                let db = (before + dm - f).max(0) - (before - f).max(0);
                dbud += db;
                dl.pen += self.move_penalty * db as f64;
                mig.push((u, dm));
            }
        }
        if let Some(bud) = inst.budget {
            let bud = bud as i64;
            dl.hard += (self.budget_used + dbud - bud).max(0) - (self.budget_used - bud).max(0);
        }
    }

    /// Applies the move of item `i` to position `q`; returns its delta.
    pub(crate) fn apply_shift(&mut self, i: usize, q: usize) -> Delta {
        let inst = self.inst;
        let b = self.block(i);
        let p = self.apos[i] as usize;
        if p == q {
            return Delta::default();
        }
        let mut dl = self.delta_shift(i, q);
        let r1 = b.allowed[p] as usize;
        let r2 = b.allowed[q] as usize;
        if b.coupled {
            let mut mig = Vec::new();
            let mut tmp = Delta::default();
            self.coupled_delta(i, b, r1 as u32, r2 as u32, &mut tmp, &mut mig);
            for (u, dm) in mig {
                let uc = &inst.units[u as usize];
                let f = uc.forced as i64;
                let before = self.moved[u as usize] as i64;
                self.budget_used += (before + dm - f).max(0) - (before - f).max(0);
                self.moved[u as usize] = (before + dm) as u32;
            }
        }
        let d = inst.dims;
        for k in 0..d {
            for (x, dv) in [
                (r1 * d + k, -b.demand[p * d + k]),
                (r2 * d + k, b.demand[q * d + k]),
            ] {
                let was = self.over(x);
                self.load[x] += dv;
                let now = self.over(x);
                if was && !now {
                    self.n_over -= 1;
                } else if !was && now {
                    self.n_over += 1;
                }
            }
        }
        self.assign[i] = r2 as u32;
        self.apos[i] = q as u32;
        self.cost += dl.cost;
        self.hard += dl.hard;
        dl.pen = dl.pen.max(f64::MIN);
        dl
    }

    /// Delta of exchanging the regions of items `i` and `j`; `None` if one of
    /// them may not go to the other's region.
    pub(crate) fn delta_swap(&mut self, i: usize, j: usize) -> Option<Delta> {
        let bi = self.block(i);
        let bj = self.block(j);
        let ri = self.assign[i];
        let rj = self.assign[j];
        if ri == rj {
            return None;
        }
        let qi = bi.pos(rj)?;
        let qj = bj.pos(ri)?;
        if !bi.coupled && !bj.coupled {
            let pi = self.apos[i] as usize;
            let pj = self.apos[j] as usize;
            let d = self.inst.dims;
            let mut dl = Delta {
                cost: bi.cost[qi] - bi.cost[pi] + bj.cost[qj] - bj.cost[pj],
                pen: 0.0,
                hard: 0,
            };
            let (ri, rj) = (ri as usize, rj as usize);
            for k in 0..d {
                let xi = ri * d + k;
                let xj = rj * d + k;
                let li = self.load[xi];
                let lj = self.load[xj];
                let ni = li - bi.demand[pi * d + k] + bj.demand[qj * d + k];
                let nj = lj - bj.demand[pj * d + k] + bi.demand[qi * d + k];
                dl.pen += self.w[xi] * (exc(ni, self.cap[xi]) - exc(li, self.cap[xi]))
                    + self.w[xj] * (exc(nj, self.cap[xj]) - exc(lj, self.cap[xj]));
            }
            return Some(dl);
        }
        let pi = self.apos[i] as usize;
        let saved_cost = self.cost;
        let d1 = self.apply_shift(i, qi);
        let d2 = self.delta_shift(j, qj);
        self.apply_shift(i, pi);
        self.cost = saved_cost;
        Some(d1.add(d2))
    }

    /// Penalized value of a delta.
    #[inline]
    pub(crate) fn value(&self, d: Delta) -> f64 {
        d.cost + d.pen + self.w_hard * d.hard as f64
    }

    /// Human-readable list of the violations left in the state.
    pub(crate) fn violations(&self) -> Vec<String> {
        let inst = self.inst;
        let d = inst.dims;
        let mut v = Vec::new();
        for x in 0..self.load.len() {
            if self.over(x) {
                v.push(format!(
                    "region {} {} load {} > capacity {}",
                    inst.regions[x / d].id,
                    inst.dim_names[x % d],
                    self.load[x],
                    self.cap[x]
                ));
            }
        }
        for b in &inst.blocks {
            let s = self.spread_short(b, None);
            if s > 0 {
                v.push(format!("unit {} spread short by {s}", b.name));
            }
            for &o in &b.anti {
                let ob = &inst.blocks[o as usize];
                if self
                    .items_of(b)
                    .any(|it| self.count_in(ob, self.assign[it]) > 0)
                {
                    v.push(format!("anti-affinity {} / {}", b.name, ob.name));
                }
            }
        }
        if let Some(bud) = inst.budget {
            if self.budget_used > bud as i64 {
                v.push(format!(
                    "migration budget {bud} exceeded ({} moves)",
                    self.budget_used
                ));
            }
        }
        v
    }
}

/// Number of existing replicas of unit `u` that changed region.
pub(crate) fn moved_replicas(inst: &Instance, assign: &[u32], u: usize) -> u32 {
    let uc = &inst.units[u];
    if uc.cur_total == 0 {
        return 0;
    }
    let b = &inst.blocks[uc.block as usize];
    let items = b.first_item as usize..(b.first_item + b.n_items) as usize;
    let mut matched = 0u32;
    for &(r, c) in &uc.cur {
        let n = if uc.grouped {
            if assign[b.first_item as usize] == r {
                uc.replicas
            } else {
                0
            }
        } else {
            items.clone().filter(|&it| assign[it] == r).count() as u32
        };
        matched += n.min(c);
    }
    uc.replicas.min(uc.cur_total) - matched
}

/// Recomputes the cost of an assignment from the compiled instance.
pub(crate) fn evaluate(inst: &Instance, assign: &[u32]) -> CostBreakdown {
    let mut c = CostBreakdown::default();
    for (i, &b) in inst.items.iter().enumerate() {
        let blk = &inst.blocks[b as usize];
        if let Some(p) = blk.pos(assign[i]) {
            c.compute += blk.cost[p] - blk.lat[p];
            c.latency += blk.lat[p];
        }
    }
    let regions_of = |u: u32| -> Vec<(u32, f64)> {
        let uc = &inst.units[u as usize];
        let b = &inst.blocks[uc.block as usize];
        if uc.grouped {
            vec![(assign[b.first_item as usize], uc.replicas as f64)]
        } else {
            (b.first_item..b.first_item + b.n_items)
                .map(|it| (assign[it as usize], 1.0))
                .collect()
        }
    };
    for e in &inst.edges {
        let a = regions_of(e.from);
        let bb = regions_of(e.to);
        let mut s = 0.0;
        for &(ra, ma) in &a {
            for &(rb, mb) in &bb {
                s += ma * mb * inst.price(ra, rb);
            }
        }
        c.egress += e.factor * s;
    }
    for (u, uc) in inst.units.iter().enumerate() {
        c.migration += uc.mig * moved_replicas(inst, assign, u) as f64;
    }
    c.total = c.compute + c.egress + c.migration + c.latency;
    c
}
