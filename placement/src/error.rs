//! Typed errors: invalid input, infeasible models and search failures.

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Any error returned by this crate.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum PlacementError {
    /// The model text could not be parsed.
    #[error("cannot parse model: {0}")]
    Parse(String),
    /// A file could not be read.
    #[error("i/o error: {0}")]
    Io(String),
    /// The model is malformed (bad numbers, unknown references, duplicates...).
    #[error("invalid model: {0}")]
    Invalid(#[from] ModelError),
    /// The model is provably infeasible; the conflicts name the smallest set of
    /// constraints found to be in conflict.
    #[error("infeasible model: {}", join(.0))]
    Infeasible(Vec<Conflict>),
    /// No conflict could be proven, but the search found no feasible plan
    /// within its budget. The remaining violations of the best plan are listed.
    #[error("no feasible plan found within the budget; best plan still violates: {}", .violations.join("; "))]
    NoFeasiblePlanFound {
        /// Violations left in the best (infeasible) plan found.
        violations: Vec<String>,
    },
    /// A what-if or resolve request named a provider or region that does not exist.
    #[error("unknown provider or region `{0}`")]
    UnknownTarget(String),
}

fn join(c: &[Conflict]) -> String {
    c.iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// A malformed model.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ModelError {
    /// The model declares no resource dimension.
    #[error("the model declares no resource dimension")]
    NoDimensions,
    /// The model has no usable provider region.
    #[error("the model has no region")]
    NoRegions,
    /// Two objects of the same kind share an id.
    #[error("duplicate {kind} id `{id}`")]
    DuplicateId {
        /// Kind of object (provider, region, unit, dimension).
        kind: &'static str,
        /// The duplicated id.
        id: String,
    },
    /// A resource key is not a declared dimension.
    #[error("{context}: unknown resource dimension `{dimension}`")]
    UnknownDimension {
        /// Where the key appeared.
        context: String,
        /// The unknown key.
        dimension: String,
    },
    /// One (source, destination) region pair is listed twice under `egress`.
    #[error("egress price for `{from_region}` -> `{to_region}` is listed more than once")]
    DuplicateEgress {
        /// Source region of the pair.
        from_region: String,
        /// Destination region of the pair.
        to_region: String,
    },
    /// A number that must be non-negative is negative.
    #[error("{context}: negative value {value}")]
    Negative {
        /// Where the number appeared.
        context: String,
        /// The value.
        value: String,
    },
    /// A number is NaN or infinite.
    #[error("{context}: value is not finite")]
    NonFinite {
        /// Where the number appeared.
        context: String,
    },
    /// A unit has zero replicas.
    #[error("unit `{unit}` has zero replicas")]
    ZeroReplicas {
        /// The unit.
        unit: String,
    },
    /// A region id is referenced but not defined.
    #[error("{context}: unknown region `{region}`")]
    UnknownRegion {
        /// Where the reference appeared.
        context: String,
        /// The unknown region id.
        region: String,
    },
    /// A unit id is referenced but not defined.
    #[error("{context}: unknown unit `{unit}`")]
    UnknownUnit {
        /// Where the reference appeared.
        context: String,
        /// The unknown unit id.
        unit: String,
    },
    /// The constraints of a unit (or group) contradict each other.
    #[error("unit `{unit}`: contradictory constraints: {reason}")]
    Contradictory {
        /// The unit.
        unit: String,
        /// Why the constraints contradict each other.
        reason: String,
    },
}

/// One named conflict proving infeasibility.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Conflict {
    /// Every region was removed for a unit; each region is listed with the
    /// filters that removed it.
    NoAllowedRegion {
        /// The unit (or co-location group, written `group:<name>`).
        unit: String,
        /// (region, filters that removed it).
        removed_by: Vec<(String, Vec<String>)>,
    },
    /// Units restricted to a set of regions demand more of a dimension than
    /// those regions offer.
    DemandExceedsCapacity {
        /// Resource dimension.
        dimension: String,
        /// The regions considered (all regions if the list is long).
        regions: Vec<String>,
        /// Units whose allowed regions lie inside that set.
        units: Vec<String>,
        /// Minimum total demand of those units.
        demand: f64,
        /// Total capacity of the regions.
        capacity: f64,
    },
    /// Survivable mode: after this failure the model is infeasible by itself,
    /// so no plan can absorb it.
    Unsurvivable {
        /// The failure (`provider `x`` or `region `y``).
        failure: String,
        /// Why the model with that failure is infeasible.
        conflicts: Vec<Conflict>,
    },
    /// A spread requirement asks for more providers or regions than the unit may use.
    SpreadUnsatisfiable {
        /// The unit.
        unit: String,
        /// `providers` or `regions`.
        over: String,
        /// Required distinct count.
        required: u32,
        /// Distinct count available among the allowed regions.
        available: u32,
    },
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Conflict::NoAllowedRegion { unit, removed_by } => {
                write!(f, "unit `{unit}` has no allowed region (")?;
                for (i, (r, why)) in removed_by.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{r}: {}", why.join(" & "))?;
                }
                write!(f, ")")
            }
            Conflict::DemandExceedsCapacity {
                dimension,
                regions,
                units,
                demand,
                capacity,
            } => write!(
                f,
                "{} unit(s) [{}] need at least {demand} {dimension} but regions [{}] offer {capacity}",
                units.len(),
                abbreviate(units),
                abbreviate(regions)
            ),
            Conflict::Unsurvivable { failure, conflicts } => {
                write!(f, "if {failure} fails: ")?;
                if conflicts.is_empty() {
                    write!(f, "no region is left")
                } else {
                    write!(f, "{}", join(conflicts))
                }
            }
            Conflict::SpreadUnsatisfiable {
                unit,
                over,
                required,
                available,
            } => write!(
                f,
                "unit `{unit}` must spread over {required} {over} but only {available} are allowed"
            ),
        }
    }
}

fn abbreviate(v: &[String]) -> String {
    if v.len() <= 6 {
        v.join(", ")
    } else {
        format!("{}, ... ({} more)", v[..5].join(", "), v.len() - 5)
    }
}
