//! Deterministic synthetic instance generator (seeded) for benchmarks and tests.

use std::collections::BTreeMap;

use crate::model::{Model, Provider, Region, Spread, Unit};
use crate::solver::rng::Rng;

/// Parameters of a synthetic instance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SyntheticSpec {
    /// Number of units (each with 2 or 3 replicas).
    pub units: usize,
    /// Number of regions (alternating EU / US jurisdiction).
    pub regions: usize,
    /// Number of providers (at least 2).
    pub providers: usize,
    /// Fraction of the capacity used by the demand, per jurisdiction and dimension.
    pub utilization: f64,
    /// Seed.
    pub seed: u64,
}

impl SyntheticSpec {
    /// A spec with 4 providers and 85% utilization.
    pub fn new(units: usize, regions: usize, seed: u64) -> Self {
        SyntheticSpec {
            units,
            regions,
            providers: 4,
            utilization: 0.85,
            seed,
        }
    }
}

/// Generates a model: 2 resource dimensions (`cpu`, `memory`), every unit
/// spread over at least 2 providers, 40% of the units restricted to EU
/// regions, 40% to US regions, the rest free.
pub fn generate(spec: &SyntheticSpec) -> Model {
    let mut rng = Rng::new(spec.seed ^ 0x5EED);
    let np = spec.providers.max(2);
    let nr = spec.regions.max(4);
    let base_cpu = [0.031, 0.029, 0.034, 0.027, 0.033, 0.030];
    let base_mem = [0.0042, 0.0045, 0.0038, 0.0047, 0.0040, 0.0044];
    let mut units = Vec::with_capacity(spec.units);
    // demand per jurisdiction (0 = eu, 1 = us) and dimension
    let mut dem = [[0.0f64; 2]; 2];
    for i in 0..spec.units {
        let replicas = 2 + (rng.below(2) as u32);
        let cpu = 0.5 * (1 + rng.below(16)) as f64;
        let mem = (cpu * (2.0 + 6.0 * rng.unit()) * 4.0).round() / 4.0;
        let class = rng.below(10);
        let mut require_labels = BTreeMap::new();
        let share: [f64; 2] = match class {
            0..=3 => {
                require_labels.insert("jurisdiction".to_string(), vec!["eu".to_string()]);
                [1.0, 0.0]
            }
            4..=7 => {
                require_labels.insert("jurisdiction".to_string(), vec!["us".to_string()]);
                [0.0, 1.0]
            }
            _ => [0.5, 0.5],
        };
        for j in 0..2 {
            dem[j][0] += share[j] * cpu * replicas as f64;
            dem[j][1] += share[j] * mem * replicas as f64;
        }
        units.push(Unit {
            id: format!("u{i}"),
            demand: BTreeMap::from([("cpu".to_string(), cpu), ("memory".to_string(), mem)]),
            replicas,
            require_labels,
            spread: Some(Spread {
                min_providers: 2,
                min_regions: 0,
            }),
            priority: (rng.below(3)) as i32,
            ..Unit::default()
        });
    }
    // Region weights per jurisdiction.
    let weights: Vec<f64> = (0..nr).map(|_| 0.5 + rng.unit()).collect();
    let mut wsum = [0.0f64; 2];
    for (i, w) in weights.iter().enumerate() {
        wsum[i % 2] += w;
    }
    let util = spec.utilization.clamp(0.05, 1.0);
    let mut providers: Vec<Provider> = (0..np)
        .map(|p| Provider {
            id: format!("p{p}"),
            egress_inter_region: 0.02,
            egress_internet: 0.09,
            ..Provider::default()
        })
        .collect();
    for i in 0..nr {
        let j = i % 2;
        let p = (i / 2) % np;
        let f = 0.85 + 0.4 * rng.unit();
        let share = weights[i] / wsum[j];
        providers[p].regions.push(Region {
            id: format!("p{p}-r{i}"),
            capacity: BTreeMap::from([
                (
                    "cpu".to_string(),
                    (dem[j][0] * share / util * 100.0).ceil() / 100.0,
                ),
                (
                    "memory".to_string(),
                    (dem[j][1] * share / util * 100.0).ceil() / 100.0,
                ),
            ]),
            price: BTreeMap::from([
                ("cpu".to_string(), base_cpu[p % base_cpu.len()] * f),
                (
                    "memory".to_string(),
                    base_mem[p % base_mem.len()] * (0.9 + 0.2 * rng.unit()),
                ),
            ]),
            labels: BTreeMap::from([(
                "jurisdiction".to_string(),
                if j == 0 { "eu" } else { "us" }.to_string(),
            )]),
            ..Region::default()
        });
    }
    Model {
        dimensions: vec!["cpu".to_string(), "memory".to_string()],
        providers,
        units,
        ..Model::default()
    }
}
