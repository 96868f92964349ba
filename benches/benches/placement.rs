//! Placement solver benchmarks, each against the greedy (Karmada-like)
//! baseline in the same run.
//!
//! 1. OR-Library GAP instances gapa-gapd (minimisation), 1 s per instance;
//!    data from `$GAP_DATA_DIR`, else the repository's `placement/data/gap`.
//! 2. Synthetic instances (seeded generator of `cloud-placement`):
//!    1,000 / 10,000 / 100,000 units x 10 / 100 regions, 2 dimensions, spread
//!    over 2 providers, 85% of the capacity used. Time limits 1 s / 2 s / 20 s.
//!
//! 3. On time: every GAP instance and the synthetic instances solved once more
//!    with their time limit, the wall time of the whole `solve` call compared
//!    with the limit (worst and mean overrun printed), and the reported gap
//!    of the shipped connected-vehicle model.
//!
//! 4. Application-shaped family (`cloud_placement::family::family()`: six seeded
//!    instances, 150-400 units, 3 providers, 12-18 regions, residency,
//!    spread, co-location, anti-affinity, traffic; two re-placement
//!    instances with a region at half capacity and migration costs): the
//!    solver at 1 s and 10 s and the baseline, each plan priced by the
//!    checker (cost, bound, gap, moves), as `examples/family-report.rs`
//!    prints them; criterion times the 1 s solve and the baseline.
//!
//! Criterion only times; the gaps (to the optimum for GAP, to the lower bound
//! for synthetic instances) are printed on standard error once per instance
//! for both the solver and the baseline. Set `PLACEMENT_BENCH_QUICK=1` to skip
//! the 100,000-unit instances.

use std::time::{Duration, Instant};

use cloud_placement::checker::check;
use cloud_placement::family::{build, family};
use cloud_placement::gap::parse_gap;
use cloud_placement::greedy::greedy_baseline;
use cloud_placement::report::{gap_optimum, locate_gap_dir, solve_gap};
use cloud_placement::synthetic::{SyntheticSpec, generate};
use cloud_placement::{SolveOptions, solve};
use criterion::{Criterion, criterion_group, criterion_main};

fn gap(c: &mut Criterion) {
    let Some(dir) = locate_gap_dir() else {
        eprintln!("placement/gap: GAP data not found (set GAP_DATA_DIR); skipped");
        return;
    };
    let mut group = c.benchmark_group("placement/gap");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(100));
    group.measurement_time(Duration::from_secs(5));
    for t in ['a', 'b', 'c', 'd'] {
        let Ok(text) = std::fs::read_to_string(dir.join(format!("gap{t}.txt"))) else {
            continue;
        };
        let Ok(instances) = parse_gap(&text) else {
            continue;
        };
        let opts = SolveOptions::with_time_limit(Duration::from_secs(1));
        // Gap report (one run), solver and baseline.
        for (i, gi) in instances.iter().enumerate() {
            let name = format!("gap{t}-{}", i + 1);
            let opt = gap_optimum(&name).unwrap_or(f64::NAN);
            let s = solve_gap(&name, gi, &opts);
            let g = greedy_baseline(&gi.to_model());
            eprintln!(
                "placement/gap {name}: solver {} ({}), greedy {}",
                s.as_ref()
                    .map_or("failed".into(), |r| format!("{}", r.cost)),
                s.as_ref().map_or("-".into(), |r| format!(
                    "gap {:.3}%",
                    100.0 * (r.cost - opt) / opt
                )),
                g.as_ref().map_or("no feasible plan".into(), |b| format!(
                    "{} (gap {:.3}%)",
                    b.cost.total,
                    100.0 * (b.cost.total - opt) / opt
                )),
            );
        }
        group.bench_function(format!("solver-1s/gap{t}"), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    for (i, gi) in instances.iter().enumerate() {
                        let _ = solve_gap(&format!("gap{t}-{}", i + 1), gi, &opts);
                    }
                }
                start.elapsed()
            })
        });
        let models: Vec<_> = instances.iter().map(|gi| gi.to_model()).collect();
        group.bench_function(format!("greedy/gap{t}"), |b| {
            b.iter(|| {
                for m in &models {
                    let _ = greedy_baseline(m);
                }
            })
        });
    }
    group.finish();
}

fn synthetic(c: &mut Criterion) {
    let quick = std::env::var_os("PLACEMENT_BENCH_QUICK").is_some();
    let mut group = c.benchmark_group("placement/synthetic");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(100));
    for (units, regions, secs) in [
        (1_000, 10, 1.0),
        (1_000, 100, 1.0),
        (10_000, 10, 2.0),
        (10_000, 100, 2.0),
        (100_000, 10, 20.0),
        (100_000, 100, 20.0),
    ] {
        if quick && units >= 100_000 {
            continue;
        }
        let model = generate(&SyntheticSpec::new(units, regions, 7));
        let mut opts = SolveOptions::with_time_limit(Duration::from_secs_f64(secs));
        opts.explain = false;
        let t = Instant::now();
        let s = solve(&model, &opts);
        let st = t.elapsed().as_secs_f64();
        let g = greedy_baseline(&model);
        match &s {
            Ok(s) => eprintln!(
                "placement/synthetic {units}x{regions}: solver cost {:.2} bound {:.2} gap {:.3}% in {st:.2}s; greedy {}",
                s.cost.total,
                s.lower_bound,
                100.0 * s.gap,
                g.as_ref().map_or("no feasible plan".into(), |b| format!(
                    "cost {:.2} gap {:.3}%",
                    b.cost.total,
                    100.0 * (b.cost.total - s.lower_bound) / b.cost.total
                ))
            ),
            Err(e) => eprintln!("placement/synthetic {units}x{regions}: solver error {e}"),
        }
        group.measurement_time(Duration::from_secs_f64(secs * 11.0));
        group.bench_function(format!("solver/{units}x{regions}"), |b| {
            b.iter(|| solve(&model, &opts).map(|s| s.cost.total))
        });
        group.bench_function(format!("greedy/{units}x{regions}"), |b| {
            b.iter(|| greedy_baseline(&model).map(|s| s.cost.total))
        });
    }
    group.finish();
}

/// Wall time of each `solve` against its limit; no criterion timing (the
/// figure is the overrun, printed on standard error).
fn on_time(_c: &mut Criterion) {
    let quick = std::env::var_os("PLACEMENT_BENCH_QUICK").is_some();
    let mut runs: Vec<(String, cloud_placement::Model, f64)> = Vec::new();
    if let Some(dir) = locate_gap_dir() {
        for t in ['a', 'b', 'c', 'd'] {
            let Ok(text) = std::fs::read_to_string(dir.join(format!("gap{t}.txt"))) else {
                continue;
            };
            for (i, gi) in parse_gap(&text).unwrap_or_default().iter().enumerate() {
                runs.push((format!("gap{t}-{}", i + 1), gi.to_model(), 1.0));
            }
        }
    }
    for (units, regions, secs) in [(1_000, 100, 1.0), (10_000, 100, 2.0), (100_000, 100, 20.0)] {
        if quick && units >= 100_000 {
            continue;
        }
        let m = generate(&SyntheticSpec::new(units, regions, 7));
        runs.push((format!("synthetic {units}x{regions}"), m, secs));
    }
    let (mut worst, mut sum, mut over) = (f64::NEG_INFINITY, 0.0, 0);
    for (name, model, secs) in &runs {
        let mut opts = SolveOptions::with_time_limit(Duration::from_secs_f64(*secs));
        opts.explain = false;
        let t = Instant::now();
        let r = solve(model, &opts);
        let pct = 100.0 * (t.elapsed().as_secs_f64() - secs) / secs;
        worst = worst.max(pct);
        sum += pct.max(0.0);
        over += usize::from(pct > 1.0);
        if let Ok(s) = r {
            eprintln!(
                "placement/on-time {name}: {pct:+.2}% of {secs} s, gap to bound {:.3}%",
                100.0 * s.gap
            );
        }
    }
    eprintln!(
        "placement/on-time: {} runs, worst overrun {worst:+.2}%, mean {:.3}%, over 1%: {over}",
        runs.len(),
        sum / runs.len().max(1) as f64
    );
    let cv = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/models/connected-vehicle.yaml");
    if let Ok(m) = cloud_placement::Model::from_path(&cv) {
        if let Ok(s) = solve(&m, &SolveOptions::with_time_limit(Duration::from_secs(1))) {
            eprintln!(
                "placement/connected-vehicle: cost {:.2} bound {:.2} reported gap {:.3}%",
                s.cost.total,
                s.lower_bound,
                100.0 * s.gap
            );
        }
    }
}

/// The instance family: the comparison of `examples/family-report.rs` on standard error
/// (gap to the best bound either solver run reported), then criterion timing.
fn family_group(c: &mut Criterion) {
    let mut group = c.benchmark_group("placement/family");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(100));
    group.measurement_time(Duration::from_secs(12));
    for spec in family() {
        let inst = match build(&spec) {
            Ok(i) => i,
            Err(e) => {
                eprintln!("placement/family {}: not built: {e}", spec.name);
                continue;
            }
        };
        let m = &inst.model;
        let name = &spec.name;
        let mut rows: Vec<(String, f64, u64, bool, Option<f64>)> = Vec::new();
        if let Ok(b) = greedy_baseline(m) {
            let rep = check(m, &b.plan);
            rows.push((
                "greedy".into(),
                rep.cost.total,
                rep.moved_replicas,
                rep.is_feasible(),
                None,
            ));
        } else {
            eprintln!("placement/family {name}: greedy: no feasible plan");
        }
        for secs in [1.0, 10.0] {
            let mut opts = SolveOptions::with_time_limit(Duration::from_secs_f64(secs));
            opts.explain = false;
            if let Ok(s) = solve(m, &opts) {
                let rep = check(m, &s.plan);
                rows.push((
                    format!("solver {secs} s"),
                    rep.cost.total,
                    rep.moved_replicas,
                    rep.is_feasible(),
                    Some(s.lower_bound),
                ));
            }
        }
        let best = rows
            .iter()
            .filter_map(|r| r.4)
            .fold(f64::NEG_INFINITY, f64::max);
        for (method, cost, moves, ok, bound) in &rows {
            eprintln!(
                "placement/family {name} {method}: cost {cost:.2} (checker {}) bound {} gap to best bound {:.3}% moves {moves}",
                if *ok { "ok" } else { "INFEASIBLE" },
                bound.map_or("-".into(), |b| format!("{b:.2}")),
                100.0 * (cost - best) / cost
            );
        }
        let mut opts = SolveOptions::with_time_limit(Duration::from_secs(1));
        opts.explain = false;
        group.bench_function(format!("solver-1s/{name}"), |b| {
            b.iter(|| solve(m, &opts).map(|s| s.cost.total))
        });
        group.bench_function(format!("greedy/{name}"), |b| {
            b.iter(|| greedy_baseline(m).map(|s| s.cost.total))
        });
    }
    group.finish();
}

criterion_group!(benches, gap, synthetic, on_time, family_group);
criterion_main!(benches);
