//! Solves the application-shaped instance family (`cloud_placement::family`)
//! with the greedy baseline and the solver at each time limit, and prints
//! markdown tables (the ones in `benches/README.md`).
//!
//! `cargo run --release -p cloud-placement --features bench-support --example family-report -- [--time-limits 1,10] [--only NAME] [--export DIR] [--import DIR]`
//!
//! Every plan is priced and checked by `checker::check` (independent of the
//! solver), so all rows are comparable. Re-placement instances get one more
//! row: `resolve` with its default move penalty (few moves, not the cheapest
//! plan), at the first time limit.
//!
//! `--export DIR` writes each instance's model as `DIR/<name>.json`
//! (readable by `Model::from_path`, and by `benches/cpsat/solve_model.py`),
//! and each solver plan as `DIR/<name>.solver-<secs>s.plan.json` (a start
//! for the script's `--hint-suffix`).
//! `--import DIR` reads plans written back by that script
//! (every `DIR/<name>.cpsat-<tag>.json`, tag `<secs>s` or
//! `from-<start>-<secs>s`: `plan`, `objective`, `bound`, `status`,
//! `seconds`), prices them with the checker and adds them as rows; their
//! bounds count in the "best bound" the gaps are measured against.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cloud_placement::checker::check;
use cloud_placement::family::{build, family, traffic_units};
use cloud_placement::greedy::greedy_baseline;
use cloud_placement::model::{Model, Plan};
use cloud_placement::{ResolveOptions, SolveOptions, resolve, solve};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// One priced plan.
struct Row {
    method: String,
    feasible: bool,
    cost: cloud_placement::CostBreakdown,
    moves: u64,
    bound: Option<f64>,
    seconds: f64,
}

fn priced(model: &Model, method: String, plan: &Plan, bound: Option<f64>, seconds: f64) -> Row {
    let rep = check(model, plan);
    Row {
        method,
        feasible: rep.is_feasible(),
        cost: rep.cost,
        moves: rep.moved_replicas,
        bound,
        seconds,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let limits: Vec<f64> = arg(&args, "--time-limits")
        .unwrap_or_else(|| "1,10".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let only = arg(&args, "--only");
    let export = arg(&args, "--export").map(PathBuf::from);
    let import = arg(&args, "--import").map(PathBuf::from);
    if let Some(d) = &export {
        if let Err(e) = std::fs::create_dir_all(d) {
            eprintln!("cannot create {}: {e}", d.display());
            std::process::exit(2);
        }
    }
    let specs: Vec<_> = family()
        .into_iter()
        .filter(|s| only.as_ref().is_none_or(|o| &s.name == o))
        .collect();
    let mut instances = Vec::new();
    println!(
        "| instance | seed | units | replicas | regions | providers | traffic edges | units with traffic | utilization | re-placement |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for spec in &specs {
        let inst = match build(spec) {
            Ok(i) => i,
            Err(e) => {
                println!(
                    "| {} | {} | error: {e} | | | | | | | |",
                    spec.name, spec.seed
                );
                continue;
            }
        };
        let m = &inst.model;
        let replicas: u32 = m.units.iter().map(|u| u.replicas).sum();
        println!(
            "| {} | {} | {} | {replicas} | {} | {} | {} | {} | {:.2} | {} |",
            spec.name,
            spec.seed,
            m.units.len(),
            m.regions().count(),
            m.providers.len(),
            m.traffic.len(),
            traffic_units(m),
            spec.utilization,
            inst.halved_region
                .as_ref()
                .map_or("no".to_string(), |r| format!("`{r}` at half capacity")),
        );
        if let Some(d) = &export {
            let path = d.join(format!("{}.json", spec.name));
            let text = serde_json::to_string_pretty(m).unwrap_or_default();
            if let Err(e) = std::fs::write(&path, text) {
                eprintln!("cannot write {}: {e}", path.display());
            }
        }
        instances.push(inst);
    }
    println!();
    println!(
        "| instance | method | checker | cost | compute | egress | migration | moves | own bound | gap to best bound | time (s) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut summary = Vec::new();
    for inst in &instances {
        let m = &inst.model;
        let name = &inst.spec.name;
        let mut rows: Vec<Row> = Vec::new();
        let t = Instant::now();
        match greedy_baseline(m) {
            Ok(b) => rows.push(priced(
                m,
                "greedy".into(),
                &b.plan,
                None,
                t.elapsed().as_secs_f64(),
            )),
            Err(e) => eprintln!("{name}: greedy: {e}"),
        }
        for &tl in &limits {
            let mut opts = SolveOptions::with_time_limit(Duration::from_secs_f64(tl));
            opts.explain = false;
            let t = Instant::now();
            match solve(m, &opts) {
                Ok(s) => {
                    rows.push(priced(
                        m,
                        format!("solver {tl} s"),
                        &s.plan,
                        Some(s.lower_bound),
                        t.elapsed().as_secs_f64(),
                    ));
                    if let Some(d) = &export {
                        // A start for `solve_model.py --hint-suffix solver-<secs>s`.
                        let path = d.join(format!("{name}.solver-{tl}s.plan.json"));
                        let text = serde_json::to_string(&s.plan).unwrap_or_default();
                        if let Err(e) = std::fs::write(&path, text) {
                            eprintln!("cannot write {}: {e}", path.display());
                        }
                    }
                }
                Err(e) => eprintln!("{name}: solver {tl} s: {e}"),
            }
        }
        if let (Some(prev), Some(&tl)) = (&inst.previous, limits.first()) {
            let mut opts = SolveOptions::with_time_limit(Duration::from_secs_f64(tl));
            opts.explain = false;
            let ro = ResolveOptions {
                solve: opts,
                ..ResolveOptions::default()
            };
            let t = Instant::now();
            match resolve(m, prev, &ro) {
                Ok(s) => rows.push(priced(
                    m,
                    format!("resolve (few moves) {tl} s"),
                    &s.plan,
                    Some(s.lower_bound),
                    t.elapsed().as_secs_f64(),
                )),
                Err(e) => eprintln!("{name}: resolve {tl} s: {e}"),
            }
        }
        if let Some(d) = &import {
            // Every `<name>.cpsat-<tag>.json` in the folder, in name order.
            let prefix = format!("{name}.cpsat-");
            let mut files: Vec<(String, PathBuf)> = std::fs::read_dir(d)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| {
                    let f = e.file_name().to_string_lossy().into_owned();
                    let tag = f.strip_prefix(&prefix)?.strip_suffix(".json")?.to_string();
                    Some((tag, e.path()))
                })
                .collect();
            files.sort_by_key(|(tag, _)| (tag.len(), tag.clone()));
            for (tl, path) in files {
                let Ok(text) = std::fs::read_to_string(&path) else {
                    continue;
                };
                let v: serde_json::Value = match serde_json::from_str(&text) {
                    Ok(v) => v,
                    Err(e) => {
                        eprintln!("{}: {e}", path.display());
                        continue;
                    }
                };
                let bound = v.get("bound").and_then(|b| b.as_f64());
                let secs = v
                    .get("seconds")
                    .and_then(|b| b.as_f64())
                    .unwrap_or(f64::NAN);
                let status = v.get("status").and_then(|s| s.as_str()).unwrap_or("?");
                match v.get("plan").cloned().map(serde_json::from_value::<Plan>) {
                    Some(Ok(plan)) if !plan.placements.is_empty() => {
                        let row = priced(m, format!("CP-SAT {tl} ({status})"), &plan, bound, secs);
                        if let Some(obj) = v.get("objective").and_then(|o| o.as_f64()) {
                            // The script's objective, recomputed by our checker.
                            eprintln!(
                                "{name}: CP-SAT {tl} objective {obj:.4}, checker {:.4} (difference {:.2e}), checker feasible: {}",
                                row.cost.total,
                                row.cost.total - obj,
                                row.feasible
                            );
                        }
                        rows.push(row);
                    }
                    _ => {
                        // No plan: keep the bound (a valid one) in a row of its own.
                        println!(
                            "| {name} | CP-SAT {tl} ({status}) | no plan | | | | | | {} | | {secs:.2} |",
                            bound.map_or("-".into(), |b| format!("{b:.2}"))
                        );
                        if let Some(b) = bound {
                            rows.push(Row {
                                method: String::new(),
                                feasible: false,
                                cost: Default::default(),
                                moves: 0,
                                bound: Some(b),
                                seconds: secs,
                            });
                        }
                    }
                }
            }
        }
        let best_bound = rows
            .iter()
            .filter_map(|r| r.bound)
            .fold(f64::NEG_INFINITY, f64::max);
        for r in rows.iter().filter(|r| !r.method.is_empty()) {
            let gap = if best_bound.is_finite() && r.cost.total > 0.0 {
                format!("{:.3}%", 100.0 * (r.cost.total - best_bound) / r.cost.total)
            } else {
                "-".into()
            };
            println!(
                "| {name} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {gap} | {:.2} |",
                r.method,
                if r.feasible { "ok" } else { "INFEASIBLE" },
                r.cost.total,
                r.cost.compute,
                r.cost.egress,
                r.cost.migration,
                if inst.previous.is_some() {
                    r.moves.to_string()
                } else {
                    "-".into()
                },
                r.bound.map_or("-".into(), |b| format!("{b:.2}")),
                r.seconds
            );
            if r.feasible && best_bound.is_finite() && r.cost.total > 0.0 {
                summary.push((
                    r.method.split(" (").next().unwrap_or("").to_string(),
                    100.0 * (r.cost.total - best_bound) / r.cost.total,
                ));
            }
        }
    }
    println!();
    let mut methods: Vec<String> = summary.iter().map(|(m, _)| m.clone()).collect();
    methods.dedup();
    methods.sort();
    methods.dedup();
    for meth in methods {
        let g: Vec<f64> = summary
            .iter()
            .filter(|(m, _)| *m == meth)
            .map(|(_, g)| *g)
            .collect();
        println!(
            "{meth}: mean gap to best bound {:.3}% over {} instance(s), worst {:.3}%",
            g.iter().sum::<f64>() / g.len().max(1) as f64,
            g.len(),
            g.iter().copied().fold(0.0, f64::max)
        );
    }
}
