//! # cloud-placement
//!
//! Decides which cloud provider and region every application unit runs in.
//! Pure Rust, synchronous and deterministic (same input and seed, same plan
//! when the search is iteration-limited).
//!
//! The [`model`] describes providers, regions (capacity, prices, labels,
//! latency), units (demand, replicas, filters, spread, co-location,
//! anti-affinity, current placement), traffic and per-(unit, region)
//! overrides. [`solve`] returns a plan with its cost by term, a provable
//! lower bound and per-unit explanations; [`resolve`] re-plans after a
//! change with few moves; [`what_if`] shows the re-plan after a failure. The
//! [`checker`] verifies plans independently of the solver.
//!
//! ```
//! use std::collections::BTreeMap;
//! use cloud_placement::{model::*, solve, SolveOptions, checker};
//!
//! let region = |id: &str, cpu_price: f64| Region {
//!     id: id.into(),
//!     capacity: BTreeMap::from([("cpu".into(), 8.0)]),
//!     price: BTreeMap::from([("cpu".into(), cpu_price)]),
//!     ..Region::default()
//! };
//! let model = Model {
//!     dimensions: vec!["cpu".into()],
//!     providers: vec![
//!         Provider { id: "aws".into(), regions: vec![region("aws-eu", 1.0)], ..Provider::default() },
//!         Provider { id: "gcp".into(), regions: vec![region("gcp-eu", 2.0)], ..Provider::default() },
//!     ],
//!     units: vec![Unit {
//!         id: "db".into(),
//!         demand: BTreeMap::from([("cpu".into(), 4.0)]),
//!         replicas: 2,
//!         spread: Some(Spread { min_providers: 2, min_regions: 0 }),
//!         ..Unit::default()
//!     }],
//!     ..Model::default()
//! };
//! let solution = solve(&model, &SolveOptions::default()).unwrap();
//! assert_eq!(solution.plan.placements["db"], vec!["aws-eu", "gcp-eu"]);
//! assert_eq!(solution.cost.total, 12.0);
//! assert!(solution.lower_bound <= solution.cost.total);
//! assert!(checker::check(&model, &solution.plan).is_feasible());
//! ```
//!
//! Algorithms: a Lagrangian relaxation of the capacity constraints
//! (subgradient) gives the lower bound and capacity prices; a construction
//! heuristic guided by those prices builds a start; a tabu search over shift
//! and swap moves with adaptive capacity penalties (or penalised sweeps on
//! very large models) improves it until the iteration or time budget ends.
//!
//! Benchmark and report scaffolding (the OR-Library GAP reader `gap`, the
//! synthetic model generator `synthetic`, the application-shaped instance
//! family `family`, the Karmada-like greedy baseline `greedy`, text / SVG
//! rendering and GAP run helpers in `report`) is not part of the solver API:
//! it is compiled only with the non-default cargo feature `bench-support`,
//! which the workspace's `examples` and `benches` crates enable.

#![deny(missing_docs)]
// Dense numeric code indexes several parallel arrays with one index.
#![allow(clippy::needless_range_loop)]

pub mod checker;
pub mod error;
pub mod explain;
#[cfg(feature = "bench-support")]
pub mod family;
#[cfg(feature = "bench-support")]
pub mod gap;
#[cfg(feature = "bench-support")]
pub mod greedy;
pub mod model;
#[cfg(feature = "bench-support")]
pub mod report;
pub mod solver;
// Also compiled for the crate's own unit tests, which build models with it.
#[cfg(any(test, feature = "bench-support"))]
pub mod synthetic;
pub mod validate;

pub use error::{Conflict, ModelError, PlacementError};
pub use model::{CostBreakdown, Model, Plan};
pub use solver::{
    Failure, ResolveOptions, Solution, SolveOptions, WhatIf, resolve, solve, what_if,
};
