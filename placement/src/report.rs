//! Text and SVG rendering of plans, and helpers to run the OR-Library GAP
//! instances (used by the `placement-planner` example and the benchmarks).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::PlacementError;
use crate::explain::{overrides, replica_cost};
use crate::gap::{GapInstance, parse_gap};
use crate::model::{Model, Plan};
use crate::solver::{Solution, SolveOptions, solve};

/// Per region: the weighted compute + latency cost of its replicas, and its load per
/// dimension.
struct RegionUse<'a> {
    cost: f64,
    load: BTreeMap<&'a str, f64>,
    /// Units there, with their replica counts.
    units: BTreeMap<&'a str, u32>,
}

fn region_use<'a>(model: &'a Model, plan: &'a Plan) -> BTreeMap<&'a str, RegionUse<'a>> {
    let regions: BTreeMap<&str, &crate::model::Region> =
        model.regions().map(|(_, r)| (r.id.as_str(), r)).collect();
    let ov = overrides(model);
    let mut out: BTreeMap<&str, RegionUse<'_>> = BTreeMap::new();
    for u in &model.units {
        for r in plan.placements.get(&u.id).into_iter().flatten() {
            let Some(reg) = regions.get(r.as_str()) else {
                continue;
            };
            let (cost, demand) = replica_cost(model, &ov, u, reg);
            let entry = out.entry(reg.id.as_str()).or_insert_with(|| RegionUse {
                cost: 0.0,
                load: BTreeMap::new(),
                units: BTreeMap::new(),
            });
            entry.cost += cost;
            for dim in &model.dimensions {
                *entry.load.entry(dim.as_str()).or_default() +=
                    demand.get(dim).copied().unwrap_or(0.0);
            }
            *entry.units.entry(u.id.as_str()).or_default() += 1;
        }
    }
    out
}

fn unit_costs(model: &Model, plan: &Plan) -> BTreeMap<String, f64> {
    let regions: BTreeMap<&str, &crate::model::Region> =
        model.regions().map(|(_, r)| (r.id.as_str(), r)).collect();
    let ov = overrides(model);
    let mut out = BTreeMap::new();
    for u in &model.units {
        let c = plan
            .placements
            .get(&u.id)
            .into_iter()
            .flatten()
            .filter_map(|r| regions.get(r.as_str()))
            .map(|reg| replica_cost(model, &ov, u, reg).0)
            .sum();
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
                "    not {} ({:.2}, {:.2} cheaper per replica): {}",
                r.region,
                r.cost_per_replica,
                r.saving_per_replica,
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

/// Colours of cells in the SVG, in order of first appearance (units without a cell are grey).
const CELL_COLOURS: [&str; 8] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#76b7b2", "#edc948", "#9c755f",
];
const NO_CELL: &str = "#bbbbbb";

/// Draws the plan as a hand-written SVG, to be read at a glance: one column per region,
/// grouped by provider; in each, the region's cost (weighted compute + latency of its
/// replicas), a bar per resource dimension with the share of capacity in use (red from 99%),
/// and the units placed there with their replica counts, each marked with its cell's colour
/// (legend at the bottom).
pub fn render_svg(model: &Model, plan: &Plan) -> String {
    let used = region_use(model, plan);
    let mut cells: Vec<&str> = Vec::new();
    for u in &model.units {
        if let Some(c) = u.cell.as_deref() {
            if !cells.contains(&c) {
                cells.push(c);
            }
        }
    }
    let colours: BTreeMap<&str, &str> = model
        .units
        .iter()
        .map(|u| {
            let colour = u
                .cell
                .as_deref()
                .and_then(|c| cells.iter().position(|x| *x == c))
                .map_or(NO_CELL, |i| CELL_COLOURS[i % CELL_COLOURS.len()]);
            (u.id.as_str(), colour)
        })
        .collect();
    let colour_of = |unit: &str| colours.get(unit).copied().unwrap_or(NO_CELL);
    let colw = 200.0;
    let line = 16.0;
    let bar_w = colw - 90.0;
    let dims = model.dimensions.len() as f64;
    let max_units = used.values().map(|m| m.units.len()).max().unwrap_or(0) as f64;
    let ncols = model.regions().count().max(1) as f64;
    let width = 20.0 + ncols * (colw + 10.0) + 10.0 * model.providers.len() as f64;
    let units_top = 96.0 + dims * line;
    let legend_top = units_top + (max_units + 1.0) * line + 30.0;
    let legend_rows = (cells.len() as f64 / 4.0).ceil().max(1.0);
    let height = legend_top + legend_rows * line + 10.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let mut x = 10.0;
    for p in &model.providers {
        let pw = p.regions.len() as f64 * (colw + 10.0) + 10.0;
        let _ = writeln!(
            s,
            r##"<rect x="{x}" y="10" width="{pw}" height="{}" fill="#f2f2f2" stroke="#555" rx="8"/>"##,
            legend_top - 30.0
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
            let region = used.get(r.id.as_str());
            let _ = writeln!(
                s,
                r##"<rect x="{cx}" y="42" width="{colw}" height="{}" fill="white" stroke="#888" rx="4"/>"##,
                legend_top - 82.0
            );
            let _ = writeln!(
                s,
                r#"<text x="{}" y="60" font-weight="bold">{}{}</text>"#,
                cx + 6.0,
                esc(&r.id),
                if r.down { " (down)" } else { "" }
            );
            let _ = writeln!(
                s,
                r#"<text x="{}" y="76" class="cost">cost {:.2}</text>"#,
                cx + 6.0,
                region.map_or(0.0, |u| u.cost)
            );
            let mut y = 92.0;
            for dim in &model.dimensions {
                let load = region
                    .and_then(|u| u.load.get(dim.as_str()))
                    .copied()
                    .unwrap_or(0.0);
                let cap = r.capacity.get(dim).copied().unwrap_or(0.0);
                let share = if cap > 0.0 { load / cap } else { 0.0 };
                let fill = if share >= 0.99 { "#d62728" } else { "#2ca02c" };
                let _ = writeln!(
                    s,
                    r#"<text x="{}" y="{}" class="use">{} {:.0}%</text>"#,
                    cx + 6.0,
                    y + 10.0,
                    esc(dim),
                    100.0 * share
                );
                let _ = writeln!(
                    s,
                    r##"<rect x="{}" y="{}" width="{bar_w}" height="10" fill="#e6e6e6"/>"##,
                    cx + 84.0,
                    y + 1.0
                );
                let _ = writeln!(
                    s,
                    r#"<rect x="{}" y="{}" width="{:.1}" height="10" fill="{fill}"/>"#,
                    cx + 84.0,
                    y + 1.0,
                    bar_w * share.min(1.0)
                );
                y += line;
            }
            let mut y = units_top + line;
            for (u, c) in region.map(|r| &r.units).into_iter().flatten() {
                let _ = writeln!(
                    s,
                    r#"<rect x="{}" y="{}" width="10" height="10" fill="{}"/>"#,
                    cx + 8.0,
                    y - 9.0,
                    colour_of(u)
                );
                let _ = writeln!(
                    s,
                    r#"<text x="{}" y="{y}">{} x{c}</text>"#,
                    cx + 24.0,
                    esc(u)
                );
                y += line;
            }
            cx += colw + 10.0;
        }
        x += pw + 10.0;
    }
    if !cells.is_empty() {
        let _ = writeln!(
            s,
            r#"<text x="10" y="{}" font-weight="bold">cells</text>"#,
            legend_top
        );
    }
    for (i, cell) in cells.iter().enumerate() {
        let lx = 60.0 + (i % 4) as f64 * 160.0;
        let ly = legend_top + (i / 4) as f64 * line;
        let _ = writeln!(
            s,
            r#"<rect x="{lx}" y="{}" width="10" height="10" fill="{}"/><text x="{}" y="{ly}" class="cell">{}</text>"#,
            ly - 9.0,
            CELL_COLOURS[i % CELL_COLOURS.len()],
            lx + 16.0,
            esc(cell)
        );
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
