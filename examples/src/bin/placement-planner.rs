//! Placement planner: solves a placement model (JSON, YAML or TOML) and
//! prints the plan, its cost, bound, gap and explanations; or solves the
//! instances of an OR-Library GAP file.
//!
//! ```text
//! placement-planner MODEL [--time-limit SECS] [--seed N] [--survivable]
//!                         [--what-if-fail PROVIDER] [--svg FILE] [--greedy] [--json]
//! placement-planner --gap FILE [--time-limit SECS] [--seed N]
//! ```
//!
//! With `--json` the only output is one JSON object for other tools: `solution` (the plan,
//! its cost by term, the lower bound, the gap, the explanations and the run statistics) and
//! `checker` (the independent check's violations and recomputed cost). `--svg` draws the plan:
//! per region its cost, its capacity use per dimension, and its units coloured by cell.
//!
//! In `--gap` mode exactly one line per instance is printed on standard
//! output: `<file-stem>-<index> <cost> <lower-bound> <seconds>`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use cloud_placement::checker::{CheckOptions, check_with};
use cloud_placement::greedy::greedy_baseline;
use cloud_placement::model::Model;
use cloud_placement::report::{plan_table, render_solution, render_svg, solve_gap_file};
use cloud_placement::{Failure, SolveOptions, solve, what_if};

struct Args {
    model: Option<PathBuf>,
    gap: Option<PathBuf>,
    time_limit: Option<f64>,
    seed: u64,
    survivable: bool,
    what_if: Option<String>,
    svg: Option<PathBuf>,
    greedy: bool,
    json: bool,
}

const USAGE: &str = "usage: placement-planner MODEL [--time-limit SECS] [--seed N] [--survivable] \
[--what-if-fail PROVIDER] [--svg FILE] [--greedy] [--json]\n       placement-planner --gap FILE [--time-limit SECS] [--seed N]";

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        model: None,
        gap: None,
        time_limit: None,
        seed: 1,
        survivable: false,
        what_if: None,
        svg: None,
        greedy: false,
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match x.as_str() {
            "--gap" => a.gap = Some(PathBuf::from(value("--gap")?)),
            "--time-limit" => {
                let v = value("--time-limit")?;
                let t: f64 = v.parse().map_err(|_| format!("bad --time-limit `{v}`"))?;
                if !t.is_finite() || t <= 0.0 {
                    return Err(format!("bad --time-limit `{v}`"));
                }
                a.time_limit = Some(t);
            }
            "--seed" => {
                let v = value("--seed")?;
                a.seed = v.parse().map_err(|_| format!("bad --seed `{v}`"))?;
            }
            "--survivable" => a.survivable = true,
            "--what-if-fail" => a.what_if = Some(value("--what-if-fail")?),
            "--svg" => a.svg = Some(PathBuf::from(value("--svg")?)),
            "--greedy" => a.greedy = true,
            "--json" => a.json = true,
            "-h" | "--help" => return Err(USAGE.to_string()),
            s if s.starts_with("--") => return Err(format!("unknown option `{s}`\n{USAGE}")),
            s => {
                if a.model.is_some() {
                    return Err(format!("unexpected argument `{s}`\n{USAGE}"));
                }
                a.model = Some(PathBuf::from(s));
            }
        }
    }
    if a.model.is_none() && a.gap.is_none() {
        return Err(USAGE.to_string());
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(gap) = &args.gap {
        let tl = Duration::from_secs_f64(args.time_limit.unwrap_or(1.0));
        for r in solve_gap_file(gap, tl, args.seed)? {
            println!("{}", r.line());
        }
        return Ok(());
    }
    let Some(path) = &args.model else {
        return Err(USAGE.into());
    };
    let model = Model::from_path(path)?;
    let mut opts =
        SolveOptions::with_time_limit(Duration::from_secs_f64(args.time_limit.unwrap_or(2.0)));
    opts.seed = args.seed;
    opts.survivable = args.survivable;
    let sol = solve(&model, &opts)?;
    let rep = check_with(
        &model,
        &sol.plan,
        &CheckOptions {
            survivable: args.survivable,
            migration_budget: None,
        },
    );
    if args.json {
        if let Some(svg) = &args.svg {
            std::fs::write(svg, render_svg(&model, &sol.plan))?;
        }
        let out = serde_json::json!({ "solution": sol, "checker": rep });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("== plan for {}\n", path.display());
    print!("{}", render_solution(&model, &sol));
    println!(
        "\nchecker: {} (recomputed cost {:.4})",
        if rep.is_feasible() {
            "feasible"
        } else {
            "VIOLATIONS"
        },
        rep.cost.total
    );
    for v in &rep.violations {
        println!("  - {v}");
    }
    if args.greedy {
        match greedy_baseline(&model) {
            Ok(b) => println!(
                "\ngreedy baseline: cost {:.4} (gap to bound {:.3}%)\n{}",
                b.cost.total,
                100.0 * (b.cost.total - sol.lower_bound) / b.cost.total.max(1e-12),
                plan_table(&model, &b.plan)
            ),
            Err(e) => println!("\ngreedy baseline: {e}"),
        }
    }
    if let Some(svg) = &args.svg {
        std::fs::write(svg, render_svg(&model, &sol.plan))?;
        println!("\nSVG written to {}", svg.display());
    }
    if let Some(p) = &args.what_if {
        let failure = if model.providers.iter().any(|x| &x.id == p) {
            Failure::Provider(p.clone())
        } else {
            Failure::Region(p.clone())
        };
        println!("\n== what if {p} fails\n");
        let w = match what_if(&model, &failure, &opts) {
            Ok(w) => w,
            Err(e) => {
                println!("no re-plan possible: {e}");
                return Ok(());
            }
        };
        print!("{}", render_solution(&w.failed_model, &w.after));
        println!(
            "\ncost before {:.4}, after {:.4} (delta {:+.4}), {} replica(s) moved",
            w.before.cost.total,
            w.after.cost.total,
            w.after.cost.total - w.before.cost.total,
            w.after.stats.moved_replicas
        );
    }
    Ok(())
}
