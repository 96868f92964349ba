//! Solves one synthetic instance and prints its figures (development aid).
//!
//! `cargo run --release -p cloud-placement --features bench-support --example synth-debug -- UNITS REGIONS SECONDS`
use std::time::{Duration, Instant};

use cloud_placement::synthetic::{SyntheticSpec, generate};
use cloud_placement::{SolveOptions, solve};

fn main() {
    let a: Vec<f64> = std::env::args()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let (n, r, tl) = (
        a.first().copied().unwrap_or(1000.0),
        a.get(1).copied().unwrap_or(10.0),
        a.get(2).copied().unwrap_or(1.0),
    );
    let t = Instant::now();
    let model = generate(&SyntheticSpec::new(n as usize, r as usize, 7));
    eprintln!("generated in {:.3}s", t.elapsed().as_secs_f64());
    let mut opts = SolveOptions::with_time_limit(Duration::from_secs_f64(tl));
    opts.explain = false;
    if let Some(b) = a.get(3) {
        opts.bound_iterations = *b as u32;
    }
    let t = Instant::now();
    match solve(&model, &opts) {
        Ok(s) => println!(
            "cost {} bound {} gap {:.3}% time {:.2}s bound_iters {} scans {}",
            s.cost.total,
            s.lower_bound,
            100.0 * s.gap,
            t.elapsed().as_secs_f64(),
            s.stats.bound_iterations,
            s.stats.scans
        ),
        Err(e) => println!("error {e}"),
    }
}
