//! Prints the GAP and synthetic gap tables (markdown) used in
//! `benches/README.md`.
//!
//! `cargo run --release -p cloud-placement --features bench-support --example gap-report -- [--gap-only] [--time-limit SECS]`

use std::time::{Duration, Instant};

use cloud_placement::gap::parse_gap;
use cloud_placement::greedy::greedy_baseline;
use cloud_placement::report::{gap_optimum, locate_gap_dir, solve_gap};
use cloud_placement::synthetic::{SyntheticSpec, generate};
use cloud_placement::{SolveOptions, solve};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let gap_only = args.iter().any(|a| a == "--gap-only");
    let synth_only = args.iter().any(|a| a == "--synthetic-only");
    let tl = args
        .iter()
        .position(|a| a == "--time-limit")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(1.0);
    let scans = args
        .iter()
        .position(|a| a == "--scans")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse::<u64>().ok());
    let types: String = args
        .iter()
        .position(|a| a == "--types")
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| "abcd".into());
    if !synth_only {
        gap_table(tl, scans, &types);
    }
    if !gap_only {
        synthetic_table();
    }
}

fn gap_table(tl: f64, scans: Option<u64>, types: &str) {
    let Some(dir) = locate_gap_dir() else {
        eprintln!("GAP data not found (set GAP_DATA_DIR)");
        return;
    };
    println!(
        "| instance | optimum | solver cost | gap to opt | bound | time (s) | greedy cost | greedy gap |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut sum = 0.0;
    let mut worst: f64 = 0.0;
    let mut count = 0;
    let mut gsum = 0.0;
    let mut gcount = 0;
    let mut per_type: Vec<(char, f64, usize)> = Vec::new();
    for t in types.chars() {
        let path = dir.join(format!("gap{t}.txt"));
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let Ok(insts) = parse_gap(&text) else {
            continue;
        };
        let mut tsum = 0.0;
        for (i, gi) in insts.iter().enumerate() {
            let name = format!("gap{t}-{}", i + 1);
            let mut opts = SolveOptions::with_time_limit(Duration::from_secs_f64(tl));
            opts.seed = 1;
            if let Some(n) = scans {
                opts.time_limit = None;
                opts.max_scans = n;
            }
            let Ok(run) = solve_gap(&name, gi, &opts) else {
                println!("| {name} | | failed | | | | | |");
                continue;
            };
            let opt = gap_optimum(&name).unwrap_or(f64::NAN);
            let g = 100.0 * (run.cost - opt) / opt;
            let greedy = greedy_baseline(&gi.to_model());
            let (gc, gg) = match &greedy {
                Ok(b) => {
                    let gg = 100.0 * (b.cost.total - opt) / opt;
                    gsum += gg;
                    gcount += 1;
                    (format!("{}", b.cost.total), format!("{gg:.2}%"))
                }
                Err(_) => ("no feasible plan".to_string(), "-".to_string()),
            };
            println!(
                "| {name} | {opt} | {} | {g:.2}% | {} | {:.2} | {gc} | {gg} |",
                run.cost, run.lower_bound, run.seconds
            );
            sum += g;
            tsum += g;
            worst = worst.max(g);
            count += 1;
        }
        per_type.push((t, tsum, insts.len()));
    }
    println!();
    for (t, s, n) in per_type {
        println!("type {t}: mean gap {:.3}%", s / n.max(1) as f64);
    }
    println!(
        "all: mean gap {:.3}% over {count} instances, worst {worst:.2}%; greedy: feasible on {gcount}, mean gap {:.2}%",
        sum / count.max(1) as f64,
        gsum / gcount.max(1) as f64
    );
}

fn synthetic_table() {
    println!();
    println!(
        "| units x regions | time limit (s) | solver cost | lower bound | solver gap | time (s) | greedy gap to bound | greedy time (s) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (n, r, tl) in [
        (1_000, 10, 1.0),
        (1_000, 100, 1.0),
        (10_000, 10, 2.0),
        (10_000, 100, 2.0),
        (100_000, 10, 20.0),
        (100_000, 100, 20.0),
    ] {
        let model = generate(&SyntheticSpec::new(n, r, 7));
        let mut opts = SolveOptions::with_time_limit(Duration::from_secs_f64(tl));
        opts.explain = false;
        let t = Instant::now();
        let sol = solve(&model, &opts);
        let secs = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let greedy = greedy_baseline(&model);
        let gsecs = t.elapsed().as_secs_f64();
        match sol {
            Ok(s) => {
                let gg = match &greedy {
                    Ok(b) => format!(
                        "{:.2}%",
                        100.0 * (b.cost.total - s.lower_bound) / b.cost.total
                    ),
                    Err(_) => "no feasible plan".into(),
                };
                println!(
                    "| {n} x {r} | {tl} | {:.1} | {:.1} | {:.3}% | {secs:.2} | {gg} | {gsecs:.2} |",
                    s.cost.total,
                    s.lower_bound,
                    100.0 * s.gap
                );
            }
            Err(e) => println!("| {n} x {r} | {tl} | error: {e} | | | {secs:.2} | | |"),
        }
    }
}
