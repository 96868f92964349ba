//! A seeded family of application-shaped placement instances (benchmarks).
//!
//! Unlike [`crate::synthetic`] (independent units, one constraint kind) and
//! the OR-Library GAP files (one replica, one dimension), these instances use
//! every part of the model the solver is for: two resource dimensions
//! (`cpu`, `memory`), three providers, regions labelled with a
//! `jurisdiction` (`eu`, `us`, `ap`), residency (a cell's units require its
//! jurisdiction), spread over providers or regions, co-location groups,
//! anti-affinity, traffic between units (priced by the providers' egress
//! rates) and, for re-placement instances, a current placement with
//! migration costs.
//!
//! Layout: units come in application cells of eight (`web`, `api`, `db`,
//! `db-backup`, `queue`, `search`, and the co-located `cache` + `worker`);
//! the last cell is cut short to reach the requested unit count. Region `i`
//! belongs to provider `(i / 3) % 3` and jurisdiction `i % 3`, so every
//! jurisdiction spans all three providers once there are at least 9
//! regions. Capacities are sized from the demand per jurisdiction at
//! [`FamilySpec::utilization`]. Traffic: the cells whose units are among the
//! first [`FamilySpec::traffic_units`] exchange traffic inside the cell and
//! between neighbouring cells' `api` units.
//!
//! Re-placement instances ([`FamilySpec::replacement`]): the base model is
//! planned first (deterministically: an iteration-limited [`crate::solve`],
//! the greedy baseline if that fails), that plan becomes every unit's
//! `current` placement, and the region with the largest cpu load in it loses
//! half its capacity (both dimensions), so replicas must move, each at its
//! unit's `migration_cost`. That is the situation [`crate::resolve`] handles
//! during a partial outage.
//!
//! Every number is drawn from the crate's xorshift generator seeded by
//! [`FamilySpec::seed`], so one spec always yields the same model (and, for
//! re-placement, the same previous plan). Demands lie on a 0.25 grid and
//! capacities on a 0.01 grid, so an exact solver can scale them to integers
//! without rounding.

use std::collections::BTreeMap;

use crate::error::PlacementError;
use crate::greedy::greedy_baseline;
use crate::model::{Model, Plan, Provider, Region, Spread, Traffic, Unit};
use crate::solver::rng::Rng;
use crate::solver::{SolveOptions, solve};

/// Parameters of one family instance.
#[derive(Debug, Clone, PartialEq)]
pub struct FamilySpec {
    /// Instance name (used for file names by the report example).
    pub name: String,
    /// Number of units.
    pub units: usize,
    /// Number of regions.
    pub regions: usize,
    /// Number of providers (3 in the family).
    pub providers: usize,
    /// Units (whole cells, from the first) that exchange traffic.
    pub traffic_units: usize,
    /// Mean volume of one traffic edge, in GB.
    pub traffic_gb: f64,
    /// Share of each jurisdiction's capacity used by its demand.
    pub utilization: f64,
    /// Re-placement instance: previous plan, one region at half capacity.
    pub replacement: bool,
    /// Seed.
    pub seed: u64,
}

impl FamilySpec {
    /// A base (not re-placement) spec with 3 providers, light traffic among
    /// the first 24 units and 70% utilization.
    pub fn new(name: &str, units: usize, regions: usize, seed: u64) -> Self {
        FamilySpec {
            name: name.to_string(),
            units,
            regions,
            providers: 3,
            traffic_units: 24,
            traffic_gb: 5.0,
            utilization: 0.7,
            replacement: false,
            seed,
        }
    }
}

/// The six instances of the benchmark family: three base sizes, one
/// traffic-heavy instance (traffic among 64 units, eight cells) and two
/// re-placement instances.
pub fn family() -> Vec<FamilySpec> {
    let mut v = vec![
        FamilySpec::new("app-150x12", 150, 12, 101),
        FamilySpec::new("app-250x15", 250, 15, 102),
        FamilySpec::new("app-400x18", 400, 18, 103),
    ];
    let mut heavy = FamilySpec::new("traffic-200x15", 200, 15, 104);
    heavy.traffic_units = 64;
    heavy.traffic_gb = 40.0;
    v.push(heavy);
    let mut r1 = FamilySpec::new("replace-250x15", 250, 15, 105);
    r1.replacement = true;
    v.push(r1);
    let mut r2 = FamilySpec::new("replace-400x18", 400, 18, 106);
    r2.replacement = true;
    r2.traffic_units = 48;
    r2.traffic_gb = 20.0;
    v.push(r2);
    v
}

/// One generated instance.
#[derive(Debug, Clone, PartialEq)]
pub struct FamilyInstance {
    /// The spec it was generated from.
    pub spec: FamilySpec,
    /// The model (for re-placement: with `current` set and the lost capacity).
    pub model: Model,
    /// Re-placement: the plan before the capacity loss.
    pub previous: Option<Plan>,
    /// Re-placement: the region that lost half its capacity.
    pub halved_region: Option<String>,
}

/// Generates the instance of `spec`. Errors only for re-placement specs
/// whose base model has no feasible plan (neither the solver's
/// iteration-limited run nor the greedy baseline finds one).
pub fn build(spec: &FamilySpec) -> Result<FamilyInstance, PlacementError> {
    let base = generate(spec);
    if !spec.replacement {
        return Ok(FamilyInstance {
            spec: spec.clone(),
            model: base,
            previous: None,
            halved_region: None,
        });
    }
    // The previous plan: a deterministic (iteration-limited) solve.
    let opts = SolveOptions {
        max_scans: 20_000,
        bound_iterations: 50,
        seed: spec.seed,
        explain: false,
        ..SolveOptions::default()
    };
    let previous = match solve(&base, &opts) {
        Ok(s) => s.plan,
        Err(_) => greedy_baseline(&base)?.plan,
    };
    let mut cpu: BTreeMap<&str, f64> = BTreeMap::new();
    for u in &base.units {
        let d = u.demand.get("cpu").copied().unwrap_or(0.0);
        for r in previous.placements.get(&u.id).into_iter().flatten() {
            *cpu.entry(r.as_str()).or_default() += d;
        }
    }
    // Largest load, ties to the smallest id (BTreeMap order, strict `>`).
    let halved = cpu
        .iter()
        .fold(None::<(&str, f64)>, |best, (r, l)| match best {
            Some((_, bl)) if *l <= bl => best,
            _ => Some((r, *l)),
        })
        .map(|(r, _)| r.to_string());
    let mut model = base.with_current_placement(&previous);
    if let Some(h) = &halved {
        for p in &mut model.providers {
            for r in &mut p.regions {
                if &r.id == h {
                    for c in r.capacity.values_mut() {
                        *c = (*c * 50.0).floor() / 100.0;
                    }
                }
            }
        }
    }
    Ok(FamilyInstance {
        spec: spec.clone(),
        model,
        previous: Some(previous),
        halved_region: halved,
    })
}

const JURISDICTIONS: [&str; 3] = ["eu", "us", "ap"];

/// The base model of `spec` (no current placement, full capacity).
pub fn generate(spec: &FamilySpec) -> Model {
    let mut rng = Rng::new(spec.seed ^ 0x00FA_3117);
    let np = spec.providers.max(2);
    let nr = spec.regions.max(3);
    let nj = JURISDICTIONS.len();
    // Demand per jurisdiction and dimension (cpu, memory).
    let mut dem = vec![[0.0f64; 2]; nj];
    let mut units: Vec<Unit> = Vec::with_capacity(spec.units);
    let mut cells: Vec<Vec<usize>> = Vec::new();
    // Draws a demand: cpu on a 0.5 grid in [lo, hi], memory per cpu in
    // [m_lo, m_hi) on a 0.25 grid.
    let quarter = |x: f64| (x * 4.0).round().max(1.0) / 4.0;
    let mut cell = 0usize;
    while units.len() < spec.units {
        let jur = match rng.below(20) {
            0..=7 => Some(0),
            8..=13 => Some(1),
            14..=16 => Some(2),
            _ => None,
        };
        let c = format!("c{cell}");
        let mut members = Vec::new();
        for kind in [
            "web",
            "api",
            "db",
            "db-backup",
            "queue",
            "search",
            "cache",
            "worker",
        ] {
            if units.len() == spec.units {
                break;
            }
            let (cpu_lo, cpu_hi, mem_lo, mem_hi) = match kind {
                "web" => (0.5, 2.0, 1.0, 3.0),
                "api" => (1.0, 4.0, 2.0, 4.0),
                "db" | "db-backup" => (2.0, 8.0, 4.0, 8.0),
                "queue" => (0.5, 2.0, 2.0, 4.0),
                "search" => (1.0, 6.0, 3.0, 6.0),
                "cache" => (0.5, 2.0, 4.0, 8.0),
                _ => (1.0, 4.0, 1.0, 3.0),
            };
            let steps = ((cpu_hi - cpu_lo) / 0.5) as usize + 1;
            let cpu = cpu_lo + 0.5 * rng.below(steps) as f64;
            let mem = quarter(cpu * (mem_lo + (mem_hi - mem_lo) * rng.unit()));
            let (replicas, spread, colocate, anti): (u32, Option<Spread>, Option<String>, Vec<_>) =
                match kind {
                    "web" => (3, Some(spread(2, 0)), None, vec![]),
                    "api" => (2 + rng.below(2) as u32, Some(spread(2, 0)), None, vec![]),
                    "db" => (2, Some(spread(1, 2)), None, vec![format!("{c}-db-backup")]),
                    "db-backup" => (1, None, None, vec![]),
                    "queue" => (2, Some(spread(2, 0)), None, vec![]),
                    "search" => (2, Some(spread(0, 2)), None, vec![]),
                    _ => (
                        1 + rng.below(2) as u32,
                        None,
                        Some(format!("{c}-batch")),
                        vec![],
                    ),
                };
            let anti = if kind == "db" && units.len() + 1 < spec.units {
                anti
            } else {
                Vec::new()
            };
            let mut require_labels = BTreeMap::new();
            if let Some(j) = jur {
                require_labels.insert(
                    "jurisdiction".to_string(),
                    vec![JURISDICTIONS[j].to_string()],
                );
            }
            for j in 0..nj {
                let share = match jur {
                    Some(x) if x == j => 1.0,
                    Some(_) => 0.0,
                    None => 1.0 / nj as f64,
                };
                dem[j][0] += share * cpu * f64::from(replicas);
                dem[j][1] += share * mem * f64::from(replicas);
            }
            // Moving a replica costs about one to three periods of its
            // compute at the mean price (rounded to a cent).
            let migration_cost =
                ((0.03 * cpu + 0.004 * mem) * (1.0 + 2.0 * rng.unit()) * 100.0).round() / 100.0;
            members.push(units.len());
            units.push(Unit {
                id: format!("{c}-{kind}"),
                cell: Some(c.clone()),
                kind: Some(kind.to_string()),
                demand: BTreeMap::from([("cpu".to_string(), cpu), ("memory".to_string(), mem)]),
                replicas,
                require_labels,
                spread,
                colocate,
                anti_affinity: anti,
                migration_cost,
                priority: i32::from(kind == "db"),
                ..Unit::default()
            });
        }
        cells.push(members);
        cell += 1;
    }
    // A cut-short last cell may hold only one unit of its co-location group:
    // harmless (a group of one). Its `db` only names `db-backup` if present
    // (handled above).
    let base_cpu = [0.031, 0.028, 0.034, 0.030];
    let base_mem = [0.0042, 0.0046, 0.0038, 0.0044];
    let inter = [0.02, 0.01, 0.02, 0.015];
    let internet = [0.09, 0.08, 0.12, 0.10];
    let mut providers: Vec<Provider> = (0..np)
        .map(|p| Provider {
            id: format!("p{p}"),
            egress_inter_region: inter[p % inter.len()],
            egress_internet: internet[p % internet.len()],
            ..Provider::default()
        })
        .collect();
    let weights: Vec<f64> = (0..nr).map(|_| 0.6 + 0.8 * rng.unit()).collect();
    let mut wsum = vec![0.0f64; nj];
    for (i, w) in weights.iter().enumerate() {
        wsum[i % nj] += w;
    }
    let util = spec.utilization.clamp(0.05, 1.0);
    for i in 0..nr {
        let j = i % nj;
        let p = (i / nj) % np;
        let share = weights[i] / wsum[j];
        let f = 0.85 + 0.4 * rng.unit();
        let cap = |d: f64| (d * share / util * 100.0).ceil() / 100.0;
        providers[p].regions.push(Region {
            id: format!("p{p}-{}{}", JURISDICTIONS[j], i / nj),
            capacity: BTreeMap::from([
                ("cpu".to_string(), cap(dem[j][0])),
                ("memory".to_string(), cap(dem[j][1])),
            ]),
            price: BTreeMap::from([
                ("cpu".to_string(), base_cpu[p % base_cpu.len()] * f),
                (
                    "memory".to_string(),
                    base_mem[p % base_mem.len()] * (0.9 + 0.2 * rng.unit()),
                ),
            ]),
            labels: BTreeMap::from([("jurisdiction".to_string(), JURISDICTIONS[j].to_string())]),
            ..Region::default()
        });
    }
    // Traffic: inside each of the first cells, and api to api between
    // neighbouring traffic cells.
    let mut traffic = Vec::new();
    let mut seen = 0usize;
    let mut apis: Vec<String> = Vec::new();
    for members in &cells {
        if seen >= spec.traffic_units {
            break;
        }
        seen += members.len();
        let id = |k: &str| {
            members
                .iter()
                .map(|&i| &units[i].id)
                .find(|id| id.ends_with(&format!("-{k}")))
                .cloned()
        };
        for (from, to, f) in [
            ("web", "api", 1.0),
            ("api", "db", 0.8),
            ("api", "queue", 0.5),
            ("api", "cache", 0.6),
            ("api", "search", 0.4),
            ("worker", "queue", 0.5),
            ("worker", "db", 0.3),
            ("db", "db-backup", 0.2),
        ] {
            if let (Some(a), Some(b)) = (id(from), id(to)) {
                let gb = (spec.traffic_gb * f * (0.5 + rng.unit()) * 10.0).round() / 10.0;
                traffic.push(Traffic { from: a, to: b, gb });
            }
        }
        if let Some(a) = id("api") {
            apis.push(a);
        }
    }
    for w in apis.windows(2) {
        let gb = (spec.traffic_gb * 0.3 * (0.5 + rng.unit()) * 10.0).round() / 10.0;
        traffic.push(Traffic {
            from: w[0].clone(),
            to: w[1].clone(),
            gb,
        });
    }
    Model {
        dimensions: vec!["cpu".to_string(), "memory".to_string()],
        providers,
        units,
        traffic,
        ..Model::default()
    }
}

fn spread(min_providers: u32, min_regions: u32) -> Spread {
    Spread {
        min_providers,
        min_regions,
    }
}

/// Units that send or receive traffic in `model`.
pub fn traffic_units(model: &Model) -> usize {
    let mut s: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
    for t in &model.traffic {
        s.insert(t.from.as_str());
        s.insert(t.to.as_str());
    }
    s.len()
}
