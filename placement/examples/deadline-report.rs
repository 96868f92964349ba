//! Measures how far past its time limit `solve` returns, over many runs
//! (the figure behind "at most 1% over" in `benches/README.md`).
//!
//! `cargo run --release -p cloud-placement --features bench-support --example deadline-report -- [--limit SECS] [--reps N] [--big]`
//!
//! Each run times the whole `solve` call (compilation, bound, search,
//! plan building, explanations when enabled) against its `time_limit`.
//! Instances: the 24 OR-Library GAP instances, synthetic 1,000 x 10 / 100,
//! 10,000 x 100, the shipped connected-vehicle model (with explanations,
//! plain and survivable); `--big` adds 100,000 x 100 at 20 s.

use std::path::Path;
use std::time::{Duration, Instant};

use cloud_placement::gap::parse_gap;
use cloud_placement::model::Model;
use cloud_placement::report::locate_gap_dir;
use cloud_placement::synthetic::{SyntheticSpec, generate};
use cloud_placement::{SolveOptions, solve};

fn arg<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
}

struct Tally {
    runs: usize,
    worst: f64,
    sum: f64,
    over_1pct: usize,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let limit: f64 = arg(&args, "--limit").unwrap_or(0.5);
    let reps: usize = arg(&args, "--reps").unwrap_or(1);
    let mut cases: Vec<(String, Model, f64, bool, bool)> = Vec::new();
    if let Some(dir) = locate_gap_dir() {
        for t in ['a', 'b', 'c', 'd'] {
            let Ok(text) = std::fs::read_to_string(dir.join(format!("gap{t}.txt"))) else {
                continue;
            };
            for (i, gi) in parse_gap(&text).unwrap_or_default().iter().enumerate() {
                cases.push((
                    format!("gap{t}-{}", i + 1),
                    gi.to_model(),
                    limit,
                    false,
                    false,
                ));
            }
        }
    }
    for (u, r) in [(1_000, 10), (1_000, 100), (10_000, 100)] {
        let m = generate(&SyntheticSpec::new(u, r, 7));
        cases.push((format!("synthetic {u}x{r}"), m, limit * 2.0, false, false));
    }
    let cv =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/models/connected-vehicle.yaml");
    if let Ok(m) = Model::from_path(&cv) {
        cases.push(("connected-vehicle".into(), m.clone(), limit, true, false));
        cases.push(("connected-vehicle survivable".into(), m, limit, true, true));
    }
    if args.iter().any(|a| a == "--big") {
        let m = generate(&SyntheticSpec::new(100_000, 100, 7));
        cases.push(("synthetic 100000x100".into(), m, 20.0, false, false));
    }
    let mut all = Tally {
        runs: 0,
        worst: 0.0,
        sum: 0.0,
        over_1pct: 0,
    };
    for (name, model, tl, explain, survivable) in &cases {
        let mut opts = SolveOptions::with_time_limit(Duration::from_secs_f64(*tl));
        opts.explain = *explain;
        opts.survivable = *survivable;
        let mut worst: f64 = f64::NEG_INFINITY;
        let mut last = String::new();
        for rep in 0..reps {
            opts.seed = 1 + rep as u64;
            let t = Instant::now();
            let r = solve(model, &opts);
            let secs = t.elapsed().as_secs_f64();
            let over = 100.0 * (secs - tl) / tl;
            worst = worst.max(over);
            all.runs += 1;
            all.sum += over.max(0.0);
            all.worst = all.worst.max(over);
            all.over_1pct += usize::from(over > 1.0);
            last = match r {
                Ok(s) => format!(
                    "cost {:.2} bound {:.2} gap {:.3}%",
                    s.cost.total,
                    s.lower_bound,
                    100.0 * s.gap
                ),
                Err(e) => format!("error {e}"),
            };
        }
        println!("{name}: limit {tl} s, worst overrun {worst:+.2}% over {reps} run(s); {last}");
    }
    println!(
        "all: {} runs, worst overrun {:+.2}%, mean overrun {:.3}%, runs over 1%: {}",
        all.runs,
        all.worst,
        all.sum / all.runs.max(1) as f64,
        all.over_1pct
    );
}
