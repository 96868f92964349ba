//! Text and SVG rendering of plans, and helpers to run the OR-Library GAP
//! instances (used by the `placement-planner` example and the benchmarks).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::PlacementError;
use crate::gap::{GapInstance, parse_gap};
use crate::model::{Model, Plan};
use crate::solver::{Solution, SolveOptions, solve};

fn unit_costs(model: &Model, plan: &Plan) -> BTreeMap<String, f64> {
    let regions: BTreeMap<&str, &crate::model::Region> =
        model.regions().map(|(_, r)| (r.id.as_str(), r)).collect();
    let ov: BTreeMap<(&str, &str), &crate::model::Override> = model
        .overrides
        .iter()
        .map(|o| ((o.unit.as_str(), o.region.as_str()), o))
        .collect();
    let w = model.weights;
    let mut out = BTreeMap::new();
    for u in &model.units {
        let mut c = 0.0;
        for r in plan.placements.get(&u.id).into_iter().flatten() {
            let Some(reg) = regions.get(r.as_str()) else {
                continue;
            };
            let o = ov.get(&(u.id.as_str(), r.as_str()));
            let d = o.and_then(|o| o.demand.as_ref()).unwrap_or(&u.demand);
            let compute = o.and_then(|o| o.cost).unwrap_or_else(|| {
                d.iter()
                    .map(|(k, v)| v * reg.price.get(k).copied().unwrap_or(0.0))
                    .sum()
            });
            let lat = u
                .user_regions
                .iter()
                .filter_map(|x| reg.latency_ms.get(x).copied())
                .fold(0.0, f64::max);
            c += w.compute * compute + w.latency * lat;
        }
        out.insert(u.id.clone(), c);
    }
    out
}

/// Renders the plan as a table: unit, replicas per provider/region, and the
/// unit's compute (+ latency) cost.
pub fn plan_table(model: &Model, plan: &Plan) -> String {
    let prov: BTreeMap<&str, &str> = model
        .regions()
        .map(|(p, r)| (r.id.as_str(), p.id.as_str()))
        .collect();
    let costs = unit_costs(model, plan);
    let rows: Vec<(String, String, String)> = model
        .units
        .iter()
        .map(|u| {
            let mut per: BTreeMap<String, u32> = BTreeMap::new();
            for r in plan.placements.get(&u.id).into_iter().flatten() {
                let p = prov.get(r.as_str()).copied().unwrap_or("?");
                *per.entry(format!("{p}/{r}")).or_default() += 1;
            }
            let place = per
                .iter()
                .map(|(k, n)| format!("{k} x{n}"))
                .collect::<Vec<_>>()
                .join(", ");
            let c = costs.get(&u.id).copied().unwrap_or(0.0);
            (u.id.clone(), place, format!("{c:.2}"))
        })
        .collect();
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max(4);
    let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).max(9);
    let w2 = rows.iter().map(|r| r.2.len()).max().unwrap_or(0).max(4);
    let mut s = String::new();
    let _ = writeln!(s, "{:<w0$}  {:<w1$}  {:>w2$}", "unit", "placement", "cost");
    let _ = writeln!(
        s,
        "{}  {}  {}",
        "-".repeat(w0),
        "-".repeat(w1),
        "-".repeat(w2)
    );
    for (a, b, c) in rows {
        let _ = writeln!(s, "{a:<w0$}  {b:<w1$}  {c:>w2$}");
    }
    s
}

/// Renders a full solution: plan table, cost breakdown, bound, gap and the
/// per-unit explanations.
pub fn render_solution(model: &Model, sol: &Solution) -> String {
    let mut s = plan_table(model, &sol.plan);
    let c = &sol.cost;
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "cost: total {:.4} = compute {:.4} + egress {:.4} + migration {:.4} + latency {:.4}",
        c.total, c.compute, c.egress, c.migration, c.latency
    );
    let _ = writeln!(
        s,
        "lower bound: {:.4}   gap: {:.3}%   moved replicas: {}",
        sol.lower_bound,
        100.0 * sol.gap,
        sol.stats.moved_replicas
    );
    if sol.stats.capacity_scale < 1.0 {
        let _ = writeln!(
            s,
            "survivable: planned within {:.0}% of capacity",
            100.0 * sol.stats.capacity_scale
        );
    }
    if !sol.explanations.is_empty() {
        let _ = writeln!(s, "\nexplanations:");
    }
    for e in &sol.explanations {
        let place = e
            .placement
            .iter()
            .map(|(r, n)| format!("{r} x{n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            s,
            "- {}: {place} ({:.2} per replica)",
            e.unit, e.cost_per_replica
        );
        for b in &e.binding {
            let _ = writeln!(s, "    binding: {b}");
        }
        for r in &e.rejected {
            let _ = writeln!(
                s,
                "    not {} ({:.2}): {}",
                r.region,
                r.cost_per_replica,
                r.reasons.join("; ")
            );
        }
    }
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Draws the plan as a hand-written SVG: one column per region, grouped by
/// provider, listing the units (with replica counts) placed there.
pub fn render_svg(model: &Model, plan: &Plan) -> String {
    let mut per_region: BTreeMap<&str, BTreeMap<&str, u32>> = BTreeMap::new();
    for (u, regs) in &plan.placements {
        for r in regs {
            *per_region
                .entry(r.as_str())
                .or_default()
                .entry(u.as_str())
                .or_default() += 1;
        }
    }
    let colw = 190.0;
    let line = 16.0;
    let palette = [
        "#fde2c8", "#d4e6f9", "#d9f2d0", "#f3d6f3", "#fff4b8", "#dddddd",
    ];
    let max_units = per_region.values().map(|m| m.len()).max().unwrap_or(0) as f64;
    let ncols = model.regions().count().max(1) as f64;
    let width = 20.0 + ncols * (colw + 10.0) + 10.0 * model.providers.len() as f64;
    let height = 110.0 + (max_units + 1.0) * line;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let mut x = 10.0;
    for (pi, p) in model.providers.iter().enumerate() {
        let n = p.regions.len() as f64;
        let pw = n * (colw + 10.0) + 10.0;
        let color = palette[pi % palette.len()];
        let _ = writeln!(
            s,
            r##"<rect x="{x}" y="10" width="{pw}" height="{}" fill="{color}" stroke="#555" rx="8"/>"##,
            height - 20.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="30" font-weight="bold" font-size="14">{}{}</text>"#,
            x + 10.0,
            esc(&p.id),
            if p.down { " (down)" } else { "" }
        );
        let mut cx = x + 10.0;
        for r in &p.regions {
            let units = per_region.get(r.id.as_str());
            let _ = writeln!(
                s,
                r##"<rect x="{cx}" y="42" width="{colw}" height="{}" fill="white" stroke="#888" rx="4"/>"##,
                height - 62.0
            );
            let _ = writeln!(
                s,
                r#"<text x="{}" y="60" font-weight="bold">{}</text>"#,
                cx + 6.0,
                esc(&r.id)
            );
            let mut y = 60.0 + line;
            for (u, c) in units.into_iter().flatten() {
                let _ = writeln!(
                    s,
                    r#"<text x="{}" y="{y}">{} x{c}</text>"#,
                    cx + 10.0,
                    esc(u)
                );
                y += line;
            }
            cx += colw + 10.0;
        }
        x += pw + 10.0;
    }
    let _ = writeln!(s, "</svg>");
    s
}

/// Result of solving one GAP instance.
#[derive(Debug, Clone, PartialEq)]
pub struct GapRun {
    /// `<file-stem>-<index>` (index from 1).
    pub name: String,
    /// Cost of the plan found.
    pub cost: f64,
    /// Lower bound.
    pub lower_bound: f64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

impl GapRun {
    /// The line printed by the planner's `--gap` mode:
    /// `<name> <cost> <lower-bound> <seconds>`.
    pub fn line(&self) -> String {
        format!(
            "{} {} {} {:.3}",
            self.name, self.cost, self.lower_bound, self.seconds
        )
    }
}

/// Solves one GAP instance (minimisation) with the given options.
pub fn solve_gap(
    name: &str,
    gi: &GapInstance,
    opts: &SolveOptions,
) -> Result<GapRun, PlacementError> {
    let t = Instant::now();
    let model = gi.to_model();
    let mut o = opts.clone();
    o.explain = false;
    let sol = solve(&model, &o)?;
    Ok(GapRun {
        name: name.to_string(),
        cost: sol.cost.total,
        lower_bound: sol.lower_bound,
        seconds: t.elapsed().as_secs_f64(),
    })
}

/// Reads an OR-Library GAP file and solves every instance with a wall-clock
/// budget per instance.
pub fn solve_gap_file(
    path: &Path,
    time_limit: Duration,
    seed: u64,
) -> Result<Vec<GapRun>, PlacementError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| PlacementError::Io(format!("{}: {e}", path.display())))?;
    let instances = parse_gap(&text).map_err(|e| PlacementError::Parse(e.to_string()))?;
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("gap")
        .to_string();
    // The solver checks its deadline between iterations and then builds the plan; a 3%
    // margin keeps each whole instance (model, solve, finish) within the budget.
    let mut opts = SolveOptions::with_time_limit(time_limit.mul_f64(0.97));
    opts.seed = seed;
    instances
        .iter()
        .enumerate()
        .map(|(i, gi)| solve_gap(&format!("{stem}-{}", i + 1), gi, &opts))
        .collect()
}

/// The in-repository copy of the OR-Library GAP files (`placement/data/gap`,
/// types A-D; source and optima in its `README.md`).
pub fn bundled_gap_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data")
        .join("gap")
}

/// Finds the folder of the OR-Library GAP files: `$GAP_DATA_DIR` if it is set
/// and a directory, else [`bundled_gap_dir`] (if present, as in a checkout).
pub fn locate_gap_dir() -> Option<PathBuf> {
    if let Ok(d) = std::env::var("GAP_DATA_DIR") {
        let p = PathBuf::from(d);
        if p.is_dir() {
            return Some(p);
        }
    }
    Some(bundled_gap_dir()).filter(|p| p.is_dir())
}

/// Best known (minimisation) values of the OR-Library instances gapa-1 ..
/// gapd-6, from `placement/data/gap/README.md`.
pub fn gap_optimum(name: &str) -> Option<f64> {
    const T: [(&str, f64); 24] = [
        ("gapa-1", 1698.0),
        ("gapa-2", 3235.0),
        ("gapa-3", 1360.0),
        ("gapa-4", 2623.0),
        ("gapa-5", 1158.0),
        ("gapa-6", 2339.0),
        ("gapb-1", 1843.0),
        ("gapb-2", 3552.0),
        ("gapb-3", 1407.0),
        ("gapb-4", 2827.0),
        ("gapb-5", 1166.0),
        ("gapb-6", 2339.0),
        ("gapc-1", 1931.0),
        ("gapc-2", 3456.0),
        ("gapc-3", 1402.0),
        ("gapc-4", 2806.0),
        ("gapc-5", 1243.0),
        ("gapc-6", 2391.0),
        ("gapd-1", 6353.0),
        ("gapd-2", 12742.0),
        ("gapd-3", 6347.0),
        ("gapd-4", 12430.0),
        ("gapd-5", 6185.0),
        ("gapd-6", 12235.0),
    ];
    T.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}
