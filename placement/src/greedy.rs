//! Greedy baseline in the style of multi-cluster schedulers (Karmada-like):
//! filter the regions each unit may use, score them by price, and place the
//! largest units first, each replica in the cheapest region that still fits.
//! It ignores egress and never revisits a decision. For comparison only.

use serde::{Deserialize, Serialize};

use crate::error::PlacementError;
use crate::model::{CostBreakdown, Model, Plan};
use crate::solver::plan_of;
use crate::solver::state::evaluate;
use crate::validate::compile;

/// A plan produced by the greedy baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselinePlan {
    /// The plan.
    pub plan: Plan,
    /// Its cost.
    pub cost: CostBreakdown,
}

/// Runs the greedy baseline. Fails with
/// [`PlacementError::NoFeasiblePlanFound`] when a replica finds no region.
pub fn greedy_baseline(model: &Model) -> Result<BaselinePlan, PlacementError> {
    let inst = compile(model)?;
    let d = inst.dims;
    let nr = inst.regions.len();
    let mut load = vec![0.0f64; nr * d];
    let cap: Vec<f64> = inst
        .regions
        .iter()
        .flat_map(|r| r.cap.iter().map(move |&c| if r.down { 0.0 } else { c }))
        .collect();
    let total: Vec<f64> = (0..d)
        .map(|k| {
            inst.regions
                .iter()
                .map(|r| r.cap[k])
                .sum::<f64>()
                .max(1e-12)
        })
        .collect();
    let size = |bi: usize| {
        let b = &inst.blocks[bi];
        (0..b.allowed.len())
            .flat_map(|p| (0..d).map(move |k| (p, k)))
            .map(|(p, k)| b.demand[p * d + k] / total[k])
            .fold(0.0, f64::max)
    };
    let mut order: Vec<usize> = (0..inst.blocks.len()).collect();
    order.sort_by(|&a, &b| {
        inst.blocks[b]
            .priority
            .cmp(&inst.blocks[a].priority)
            .then(size(b).total_cmp(&size(a)))
            .then(a.cmp(&b))
    });
    let mut assign = vec![u32::MAX; inst.items.len()];
    for bi in order {
        let b = &inst.blocks[bi];
        let mut ranked: Vec<usize> = (0..b.allowed.len()).collect();
        ranked.sort_by(|&x, &y| b.cost[x].total_cmp(&b.cost[y]).then(x.cmp(&y)));
        for it in b.first_item..b.first_item + b.n_items {
            let it = it as usize;
            let placed = &assign[b.first_item as usize..it];
            let remaining = (b.n_items as usize - placed.len() - 1) as i64;
            let mut provs: Vec<u32> = placed
                .iter()
                .map(|&r| inst.regions[r as usize].provider)
                .collect();
            provs.sort_unstable();
            provs.dedup();
            let mut regs: Vec<u32> = placed.to_vec();
            regs.sort_unstable();
            regs.dedup();
            let pick = ranked.iter().copied().find(|&p| {
                let r = b.allowed[p];
                let prov = inst.regions[r as usize].provider;
                let np = provs.len() as i64 + i64::from(!provs.contains(&prov));
                let nreg = regs.len() as i64 + i64::from(!regs.contains(&r));
                if np + remaining < b.spread_p as i64 || nreg + remaining < b.spread_r as i64 {
                    return false;
                }
                if b.anti.iter().any(|&o| {
                    let ob = &inst.blocks[o as usize];
                    (ob.first_item..ob.first_item + ob.n_items).any(|x| assign[x as usize] == r)
                }) {
                    return false;
                }
                (0..d).all(|k| {
                    let x = r as usize * d + k;
                    load[x] + b.demand[p * d + k] <= cap[x] + 1e-9 * cap[x].abs().max(1.0)
                })
            });
            let Some(p) = pick else {
                return Err(PlacementError::NoFeasiblePlanFound {
                    violations: vec![format!(
                        "greedy baseline: no region fits a replica of `{}`",
                        b.name
                    )],
                });
            };
            let r = b.allowed[p];
            assign[it] = r;
            for k in 0..d {
                load[r as usize * d + k] += b.demand[p * d + k];
            }
        }
    }
    Ok(BaselinePlan {
        plan: plan_of(&inst, &assign),
        cost: evaluate(&inst, &assign),
    })
}
