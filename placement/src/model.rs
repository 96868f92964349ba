//! The placement model: providers, regions, units, traffic, overrides and weights.
//!
//! Every type here is plain data (serde), readable from JSON, YAML or TOML with
//! [`Model::from_json`], [`Model::from_yaml`], [`Model::from_toml`] or
//! [`Model::from_path`]. Validation is separate (see [`crate::validate`]).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::PlacementError;

/// A complete placement problem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Model {
    /// Names of the resource dimensions (e.g. `cpu`, `memory`, `gpu`). Every
    /// capacity, price and demand key must be one of these.
    pub dimensions: Vec<String>,
    /// Cloud providers and their regions.
    pub providers: Vec<Provider>,
    /// Application units to place.
    #[serde(default)]
    pub units: Vec<Unit>,
    /// Traffic between units (GB per billing period).
    #[serde(default)]
    pub traffic: Vec<Traffic>,
    /// Egress prices between specific region pairs, overriding the provider defaults.
    #[serde(default)]
    pub egress: Vec<EgressPrice>,
    /// Per (unit, region) overrides of cost and demand.
    #[serde(default)]
    pub overrides: Vec<Override>,
    /// Weights of the objective terms.
    #[serde(default)]
    pub weights: Weights,
}

/// A cloud provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    /// Unique provider id (e.g. `aws`).
    pub id: String,
    /// Egress price per GB between two regions of this provider.
    #[serde(default)]
    pub egress_inter_region: f64,
    /// Egress price per GB from a region of this provider to another provider.
    #[serde(default)]
    pub egress_internet: f64,
    /// `true` when the whole provider is unavailable (used by what-if and resolve).
    #[serde(default)]
    pub down: bool,
    /// Regions of the provider.
    pub regions: Vec<Region>,
}

/// A region of a provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Region {
    /// Region id, unique over all providers (e.g. `aws-eu-west-1`).
    pub id: String,
    /// Availability zones (informational).
    #[serde(default)]
    pub zones: Vec<String>,
    /// Capacity per resource dimension; a missing dimension has capacity 0.
    #[serde(default)]
    pub capacity: BTreeMap<String, f64>,
    /// Price per unit of each resource dimension; a missing dimension is free.
    #[serde(default)]
    pub price: BTreeMap<String, f64>,
    /// Labels such as `jurisdiction: eu` or `tier: premium`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Certifications held by the region (e.g. `iso27001`, `hipaa`).
    #[serde(default)]
    pub certifications: Vec<String>,
    /// Latency in milliseconds from this region to named user regions.
    #[serde(default)]
    pub latency_ms: BTreeMap<String, f64>,
    /// `true` when the region is unavailable (used by what-if and resolve).
    #[serde(default)]
    pub down: bool,
}

/// Spread requirement: the replicas of a unit cover at least this many
/// distinct providers and regions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Spread {
    /// Minimum number of distinct providers.
    #[serde(default)]
    pub min_providers: u32,
    /// Minimum number of distinct regions.
    #[serde(default)]
    pub min_regions: u32,
}

/// An application unit: a service, database or queue of an application cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Unit {
    /// Unique unit id.
    pub id: String,
    /// Application cell the unit belongs to (informational).
    #[serde(default)]
    pub cell: Option<String>,
    /// Kind of unit (`service`, `database`, `queue`, ...; informational).
    #[serde(default)]
    pub kind: Option<String>,
    /// Demand of one replica per resource dimension.
    #[serde(default)]
    pub demand: BTreeMap<String, f64>,
    /// Number of replicas (at least 1).
    pub replicas: u32,
    /// If non-empty, only these regions are allowed.
    #[serde(default)]
    pub allowed_regions: Vec<String>,
    /// Regions that are never allowed.
    #[serde(default)]
    pub forbidden_regions: Vec<String>,
    /// Label selector: for each key, the region's label must be one of the values.
    #[serde(default)]
    pub require_labels: BTreeMap<String, Vec<String>>,
    /// Label selector: for each key, the region's label must not be one of the values.
    #[serde(default)]
    pub forbid_labels: BTreeMap<String, Vec<String>>,
    /// Certifications every chosen region must hold.
    #[serde(default)]
    pub require_certifications: Vec<String>,
    /// Maximum latency (ms) from a chosen region to each of `user_regions`.
    #[serde(default)]
    pub max_latency_ms: Option<f64>,
    /// User regions the unit serves (keys of [`Region::latency_ms`]).
    #[serde(default)]
    pub user_regions: Vec<String>,
    /// Spread requirement over providers / regions.
    #[serde(default)]
    pub spread: Option<Spread>,
    /// Co-location group: all replicas of all units of a group share one region.
    #[serde(default)]
    pub colocate: Option<String>,
    /// Units that must not share any region with this unit.
    #[serde(default)]
    pub anti_affinity: Vec<String>,
    /// Current placement (one region id per existing replica).
    #[serde(default)]
    pub current: Vec<String>,
    /// Cost of moving one existing replica to another region.
    #[serde(default)]
    pub migration_cost: f64,
    /// Priority: higher priorities are placed first by the heuristics.
    #[serde(default)]
    pub priority: i32,
}

/// Traffic from one unit to another.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Traffic {
    /// Sending unit.
    pub from: String,
    /// Receiving unit.
    pub to: String,
    /// Volume in GB per billing period, spread evenly over replica pairs.
    pub gb: f64,
}

/// Egress price for a specific (source region, destination region) pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct EgressPrice {
    /// Source region.
    pub from_region: String,
    /// Destination region.
    pub to_region: String,
    /// Price per GB.
    pub price_per_gb: f64,
}

/// Override of the cost and/or demand of one unit in one region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Override {
    /// Unit id.
    pub unit: String,
    /// Region id.
    pub region: String,
    /// Compute cost of one replica in that region (replaces demand x price).
    #[serde(default)]
    pub cost: Option<f64>,
    /// Demand of one replica in that region (replaces the unit's demand).
    #[serde(default)]
    pub demand: Option<BTreeMap<String, f64>>,
}

/// Weights of the objective terms; total = sum of weight x term.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Weights {
    /// Weight of compute cost.
    #[serde(default = "one")]
    pub compute: f64,
    /// Weight of egress cost.
    #[serde(default = "one")]
    pub egress: f64,
    /// Weight of migration cost.
    #[serde(default = "one")]
    pub migration: f64,
    /// Cost per millisecond of worst user latency, per replica.
    #[serde(default)]
    pub latency: f64,
}

fn one() -> f64 {
    1.0
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            compute: 1.0,
            egress: 1.0,
            migration: 1.0,
            latency: 0.0,
        }
    }
}

/// A plan: for every unit, the region of each replica (sorted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Plan {
    /// Unit id -> one region id per replica.
    pub placements: BTreeMap<String, Vec<String>>,
}

impl Plan {
    /// Number of replicas of `unit` placed in `region`.
    pub fn count(&self, unit: &str, region: &str) -> usize {
        self.placements
            .get(unit)
            .map_or(0, |v| v.iter().filter(|r| *r == region).count())
    }
}

/// Objective value broken down by term (each term already weighted).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct CostBreakdown {
    /// Weighted compute cost.
    pub compute: f64,
    /// Weighted egress cost.
    pub egress: f64,
    /// Weighted migration cost.
    pub migration: f64,
    /// Weighted latency penalty.
    pub latency: f64,
    /// Sum of the four terms.
    pub total: f64,
}

/// The egress price of every ordered region pair of a model, as both the
/// solver (compiled into its price matrix) and the [`crate::checker`] read it,
/// so the two can never price a pair differently.
///
/// Rule: 0 within one region; else an `egress[]` entry for the pair (the
/// first one: validation refuses a pair listed twice); else the source
/// provider's `egress_inter_region` when both regions belong to it, and its
/// `egress_internet` otherwise. A region the model does not define costs 0
/// (validated models never ask).
#[derive(Debug, Clone)]
pub struct EgressPrices<'a> {
    provider_of: BTreeMap<&'a str, &'a Provider>,
    pairs: BTreeMap<(&'a str, &'a str), f64>,
}

impl<'a> EgressPrices<'a> {
    /// Indexes the model's providers and egress overrides.
    pub fn new(model: &'a Model) -> Self {
        let provider_of = model.regions().map(|(p, r)| (r.id.as_str(), p)).collect();
        let mut pairs = BTreeMap::new();
        for e in &model.egress {
            pairs
                .entry((e.from_region.as_str(), e.to_region.as_str()))
                .or_insert(e.price_per_gb);
        }
        EgressPrices { provider_of, pairs }
    }

    /// Price per GB sent from region `from` to region `to` (unweighted).
    pub fn price(&self, from: &str, to: &str) -> f64 {
        if from == to {
            return 0.0;
        }
        if let Some(p) = self.pairs.get(&(from, to)) {
            return *p;
        }
        match (self.provider_of.get(from), self.provider_of.get(to)) {
            (Some(pa), Some(pb)) if pa.id == pb.id => pa.egress_inter_region,
            (Some(pa), Some(_)) => pa.egress_internet,
            _ => 0.0,
        }
    }
}

impl Model {
    /// Parses a model from JSON.
    pub fn from_json(text: &str) -> Result<Model, PlacementError> {
        serde_json::from_str(text).map_err(|e| PlacementError::Parse(e.to_string()))
    }

    /// Parses a model from YAML.
    pub fn from_yaml(text: &str) -> Result<Model, PlacementError> {
        serde_yaml::from_str(text).map_err(|e| PlacementError::Parse(e.to_string()))
    }

    /// Parses a model from TOML.
    pub fn from_toml(text: &str) -> Result<Model, PlacementError> {
        toml::from_str(text).map_err(|e| PlacementError::Parse(e.to_string()))
    }

    /// Reads a model file, choosing the format by extension
    /// (`.json`, `.yaml`/`.yml`, `.toml`).
    pub fn from_path(path: &Path) -> Result<Model, PlacementError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| PlacementError::Io(format!("{}: {e}", path.display())))?;
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => Model::from_json(&text),
            Some("yaml") | Some("yml") => Model::from_yaml(&text),
            Some("toml") => Model::from_toml(&text),
            other => Err(PlacementError::Parse(format!(
                "unknown model file extension {other:?} (expected json, yaml, yml or toml)"
            ))),
        }
    }

    /// Iterates over all regions with their provider.
    pub fn regions(&self) -> impl Iterator<Item = (&Provider, &Region)> {
        self.providers
            .iter()
            .flat_map(|p| p.regions.iter().map(move |r| (p, r)))
    }

    /// Returns a copy whose units' `current` placement is taken from `plan`
    /// (units absent from the plan get no current placement; regions that no
    /// longer exist are dropped, which makes those replicas forced moves).
    pub fn with_current_placement(&self, plan: &Plan) -> Model {
        let known: std::collections::BTreeSet<&str> =
            self.regions().map(|(_, r)| r.id.as_str()).collect();
        let mut m = self.clone();
        for u in &mut m.units {
            u.current = plan
                .placements
                .get(&u.id)
                .map(|v| {
                    v.iter()
                        .filter(|r| known.contains(r.as_str()))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
        }
        m
    }

    /// Returns a copy in which the given provider is marked down.
    pub fn with_provider_down(&self, provider: &str) -> Model {
        let mut m = self.clone();
        for p in &mut m.providers {
            if p.id == provider {
                p.down = true;
            }
        }
        m
    }

    /// Returns a copy in which the given region is marked down.
    pub fn with_region_down(&self, region: &str) -> Model {
        let mut m = self.clone();
        for p in &mut m.providers {
            for r in &mut p.regions {
                if r.id == region {
                    r.down = true;
                }
            }
        }
        m
    }
}
