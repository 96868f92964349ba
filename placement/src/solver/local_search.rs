//! Local search: a tabu search over shift and swap moves with adaptive
//! capacity penalties (strategic oscillation) for small and medium
//! instances, and penalised first-improvement sweeps for large ones.

use std::time::Instant;

use super::rng::Rng;
use super::state::State;

/// Limits of a search run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) deadline: Option<Instant>,
    /// Maximum number of item neighbourhood scans.
    pub(crate) max_scans: u64,
}

/// Best solution found.
#[derive(Debug, Clone)]
pub(crate) struct Best {
    pub(crate) apos: Vec<u32>,
    pub(crate) cost: f64,
    pub(crate) feasible: bool,
    pub(crate) scans: u64,
}

/// Deadline watch of a search loop. Besides the deadline itself it keeps
/// the longest gap seen between two consecutive reads (a slow step, or the
/// thread descheduled on a busy machine) and stops when less than that much
/// is left (capped at 5% of the remaining budget at the first read), so the
/// next step cannot carry the search past the deadline.
struct Clock {
    deadline: Option<Instant>,
    last: Option<Instant>,
    max_gap: std::time::Duration,
    cap: std::time::Duration,
}

impl Clock {
    fn new(l: &Limits) -> Self {
        let cap = l
            .deadline
            .map(|d| d.saturating_duration_since(Instant::now()) / 20)
            .unwrap_or_default();
        Clock {
            deadline: l.deadline,
            last: None,
            max_gap: std::time::Duration::ZERO,
            cap,
        }
    }

    fn up(&mut self) -> bool {
        let Some(d) = self.deadline else {
            return false;
        };
        let now = Instant::now();
        if let Some(last) = self.last {
            self.max_gap = self.max_gap.max(now - last).min(self.cap);
        }
        self.last = Some(now);
        now + self.max_gap >= d
    }
}

/// Runs the search from `st` and returns the best solution found.
pub(crate) fn search(st: &mut State<'_>, limits: Limits, rng: &mut Rng) -> Best {
    let n = st.inst.items.len();
    let work: usize = st
        .inst
        .items
        .iter()
        .map(|&b| st.inst.blocks[b as usize].allowed.len())
        .sum();
    if n <= 5000 && work <= 100_000 {
        tabu(st, limits, rng)
    } else {
        sweeps(st, limits, rng)
    }
}

fn snapshot(st: &State<'_>, scans: u64) -> Best {
    Best {
        apos: st.apos.clone(),
        cost: st.cost,
        feasible: st.feasible(),
        scans,
    }
}

fn better(st: &State<'_>, best: &Best) -> bool {
    st.feasible() && (!best.feasible || st.cost < best.cost - 1e-9 * best.cost.abs().max(1.0))
}

fn update_weights(st: &mut State<'_>, w0: &[f64], up: f64, down: f64) {
    if st.n_over > 0 {
        for x in 0..st.w.len() {
            if st.over(x) {
                st.w[x] *= up;
            }
        }
    } else {
        for x in 0..st.w.len() {
            st.w[x] = (st.w[x] * down).max(w0[x] * 0.05);
        }
    }
}

#[derive(Clone, Copy)]
enum Move {
    Shift(usize, usize),
    Swap(usize, usize),
}

fn tabu(st: &mut State<'_>, limits: Limits, rng: &mut Rng) -> Best {
    let inst = st.inst;
    let n = inst.items.len();
    let mut off = Vec::with_capacity(n + 1);
    let mut acc = 0usize;
    for &b in &inst.items {
        off.push(acc);
        acc += inst.blocks[b as usize].allowed.len();
    }
    off.push(acc);
    let mut tabu_until = vec![0u64; acc];
    let w0 = st.w.clone();
    let mut best = snapshot(st, 0);
    let mut scans = 0u64;
    let mut iter = 0u64;
    let mut last_improve = 0u64;
    let avg_allowed = (acc as f64 / n.max(1) as f64).max(1.0);
    let tenure_lo = 3 + (n as f64).sqrt() as u64 / 4;
    let tenure_span = 1 + (n as f64 * avg_allowed).sqrt() as u64 / 3;
    // Tuned on the OR-Library GAP instances (types C and D).
    let (up, down) = (1.02, 0.98);
    let stall = (5 * n as u64).max(500);
    let tenure_lo = tenure_lo / 2;
    let tenure_span = (tenure_span / 2).max(1);
    let kick = 0.05;
    let full_swaps = n <= 400;
    let swap_samples = 4 * n;
    let eps = 1e-9;
    let mut clock = Clock::new(&limits);
    while scans < limits.max_scans {
        // Every iteration: one costs up to a few ms on large inputs, a clock read ~20 ns.
        if clock.up() {
            break;
        }
        iter += 1;
        scans += n as u64;
        let cur_pen = st.penalty();
        let aspire = |st: &State<'_>, v: f64, best: &Best| {
            best.feasible && st.cost + cur_pen + v < best.cost - eps
        };
        let mut bm: Option<(f64, Move)> = None;
        let mut ties = 0u32;
        let mut consider = |v: f64, m: Move, rng: &mut Rng, bm: &mut Option<(f64, Move)>| match bm {
            Some((bv, _)) if v > *bv + eps => {}
            Some((bv, _)) if v >= *bv - eps => {
                ties += 1;
                if rng.below(ties as usize + 1) == 0 {
                    *bm = Some((v, m));
                }
            }
            _ => {
                ties = 0;
                *bm = Some((v, m));
            }
        };
        for i in 0..n {
            let b = st.block(i);
            let p = st.apos[i] as usize;
            for q in 0..b.allowed.len() {
                if q == p {
                    continue;
                }
                let v = st.value(st.delta_shift(i, q));
                if tabu_until[off[i] + q] > iter && !aspire(st, v, &best) {
                    continue;
                }
                consider(v, Move::Shift(i, q), rng, &mut bm);
            }
        }
        let mut eval_swap = |i: usize,
                             j: usize,
                             st: &mut State<'_>,
                             rng: &mut Rng,
                             bm: &mut Option<(f64, Move)>| {
            let Some(dl) = st.delta_swap(i, j) else {
                return;
            };
            let v = st.value(dl);
            if let Some((bv, _)) = bm {
                if v > *bv + eps {
                    return;
                }
            }
            let (Some(qi), Some(qj)) =
                (st.block(i).pos(st.assign[j]), st.block(j).pos(st.assign[i]))
            else {
                return;
            };
            let is_tabu = tabu_until[off[i] + qi] > iter || tabu_until[off[j] + qj] > iter;
            if is_tabu && !aspire(st, v, &best) {
                return;
            }
            consider(v, Move::Swap(i, j), rng, bm);
        };
        if full_swaps {
            for i in 0..n {
                for j in i + 1..n {
                    if st.assign[i] != st.assign[j] {
                        eval_swap(i, j, st, rng, &mut bm);
                    }
                }
            }
        } else {
            for _ in 0..swap_samples {
                let i = rng.below(n);
                let j = rng.below(n);
                if i != j && st.assign[i] != st.assign[j] {
                    eval_swap(i, j, st, rng, &mut bm);
                }
            }
        }
        let Some((_, m)) = bm else { break };
        let tenure = |rng: &mut Rng| tenure_lo + rng.below(tenure_span as usize) as u64;
        match m {
            Move::Shift(i, q) => {
                let p = st.apos[i] as usize;
                st.apply_shift(i, q);
                tabu_until[off[i] + p] = iter + tenure(rng);
            }
            Move::Swap(i, j) => {
                let pi = st.apos[i] as usize;
                let pj = st.apos[j] as usize;
                let qi = st.block(i).pos(st.assign[j]).unwrap_or(pi);
                let qj = st.block(j).pos(st.assign[i]).unwrap_or(pj);
                st.apply_shift(i, qi);
                st.apply_shift(j, qj);
                tabu_until[off[i] + pi] = iter + tenure(rng);
                tabu_until[off[j] + pj] = iter + tenure(rng);
            }
        }
        if better(st, &best) {
            st.recompute();
            if better(st, &best) {
                best = snapshot(st, scans);
                last_improve = iter;
            }
        }
        update_weights(st, &w0, up, down);
        if iter - last_improve > stall && best.feasible {
            // Restart from the best solution with a random kick.
            st.apos.clone_from(&best.apos);
            for (i, a) in st.assign.iter_mut().enumerate() {
                *a = inst.blocks[inst.items[i] as usize].allowed[st.apos[i] as usize];
            }
            st.recompute();
            for _ in 0..((n as f64 * kick) as usize).max(2) {
                let i = rng.below(n);
                let na = st.block(i).allowed.len();
                if na > 1 {
                    let q = rng.below(na);
                    st.apply_shift(i, q);
                }
            }
            st.w.clone_from(&w0);
            tabu_until.iter_mut().for_each(|t| *t = 0);
            last_improve = iter;
        }
    }
    best.scans = scans;
    best
}

fn sweeps(st: &mut State<'_>, limits: Limits, rng: &mut Rng) -> Best {
    let n = st.inst.items.len();
    let w0 = st.w.clone();
    let mut best = snapshot(st, 0);
    let mut scans = 0u64;
    let mut order: Vec<usize> = (0..n).collect();
    let mut quiet = 0;
    let mut clock = Clock::new(&limits);
    'outer: while scans < limits.max_scans {
        rng.shuffle(&mut order);
        let mut moves = 0u64;
        for (c, &i) in order.iter().enumerate() {
            if scans >= limits.max_scans || (c % 1024 == 0 && clock.up()) {
                break 'outer;
            }
            scans += 1;
            let b = st.block(i);
            let p = st.apos[i] as usize;
            let mut bq = p;
            let mut bv = -1e-9;
            for q in 0..b.allowed.len() {
                if q == p {
                    continue;
                }
                let v = st.value(st.delta_shift(i, q));
                if v < bv {
                    bv = v;
                    bq = q;
                }
            }
            if bq != p {
                st.apply_shift(i, bq);
                moves += 1;
            }
        }
        st.recompute();
        if better(st, &best) {
            best = snapshot(st, scans);
        }
        if st.feasible() {
            if moves == 0 {
                quiet += 1;
                if quiet >= 30 {
                    break;
                }
                // Local optimum: relax the penalties to let the search cross
                // the capacity boundary (strategic oscillation).
                for x in 0..st.w.len() {
                    st.w[x] = (st.w[x] * 0.5).max(w0[x] * 1e-3);
                }
            } else {
                for x in 0..st.w.len() {
                    st.w[x] = (st.w[x] * 0.8).max(w0[x] * 1e-3);
                }
            }
        } else {
            let f = if moves == 0 { 2.0 } else { 1.3 };
            for x in 0..st.w.len() {
                if st.over(x) {
                    st.w[x] *= f;
                }
            }
            if st.hard > 0 && moves == 0 {
                st.w_hard *= 2.0;
            }
        }
        let _ = &mut quiet;
    }
    if better(st, &best) {
        best = snapshot(st, scans);
    }
    best.scans = scans;
    best
}
