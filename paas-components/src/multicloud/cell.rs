//! Cell routing: each partition key (a vehicle id) belongs to a cell, each cell has a home
//! cloud and a standby cloud, and a request for a key goes to the cloud that serves its cell
//! now.
//!
//! # The routing table
//!
//! [`RoutingTable`] maps a key to a cell by, in this order:
//!
//! 1. **explicit entries** (`key → cell`), e.g. a test fleet pinned to a canary cell;
//! 2. **key ranges** (`[start, end) → cell`, byte-wise order), e.g. VIN prefixes by plant;
//! 3. **weighted rendezvous hashing** over the cells with a weight above 0: each cell scores
//!    `-weight / ln(u)` with `u` a stable hash of (cell, key) in (0, 1), and the highest score
//!    wins. Adding a cell moves only the keys whose winner is the new cell (about
//!    `weight / total weight` of them); every other key stays where it was. The hash is our
//!    own (FNV-1a, then a 64-bit finalizer), fixed forever, so a table routes the same key to
//!    the same cell in every process and every release.
//!
//! The table comes from configuration ([`RoutingTable::new`], [`RoutingTable::cell`], …) or
//! from a placement plan ([`RoutingTable::from_placements`]; with the `placement` feature,
//! [`placement::cells_from_plan`] turns a survivable `cloud-placement` plan into those).
//!
//! # Serving, failover and return
//!
//! [`CellRouter`] holds one [`CircuitBreaker`] per cloud (share it with every backend of that
//! cloud, so each of their failures feeds it) and, per cloud, an optional **drained** check
//! (e.g. "no replication hints are pending for this cloud").
//!
//! - A cell is served by its home while the home's breaker is not open.
//! - When the home's breaker **opens**, the cell moves to its standby at once (the breaker's
//!   transition callback re-evaluates the cells, so the move does not wait for a request).
//! - It moves **back** only when the home's breaker has been closed without interruption for
//!   [`RouterConfig::settle`] *and* the home is drained. A flapping home (open, probe,
//!   open again) never stays closed long enough, so its cells stay on the standby instead of
//!   bouncing; a home that is back but still missing writes serves nothing until the hints
//!   are replayed, so readers of the cell never see older data than they wrote.
//! - While both clouds are open the cell stays where it is (nothing better to do).
//!
//! # Observability
//!
//! [`CellRouter::status`] returns, per cell, the serving cloud, since when and why;
//! [`CellRouter::on_move`] calls back on every move. Through the `metrics` facade: the gauge
//! `cell_serving` (labels `cell`, `cloud`; 1 for the cloud serving the cell, 0 for the other)
//! and the counter `cell_moves_total` (labels `cell`, `from`, `to`).

use crate::layers::{BreakerState, CircuitBreaker};
use cloud_abstraction::{Error, Result};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

const BACKEND: &str = "cell-router";

/// One cell of a routing table: its name, home and standby cloud, and rendezvous weight.
#[derive(Debug, Clone, PartialEq)]
pub struct CellSpec {
    /// The cell's name (unique in the table).
    pub name: String,
    /// The cloud that serves the cell normally.
    pub home: String,
    /// The cloud the cell moves to when its home fails.
    pub standby: String,
    /// Its share of the keys routed by rendezvous hashing (0: only explicit entries and
    /// ranges route to it).
    pub weight: f64,
}

/// Where a placement plan puts one cell (see [`RoutingTable::from_placements`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellPlacement {
    /// The cell.
    pub cell: String,
    /// The cloud (provider) where the cell's units run.
    pub home: String,
    /// The cloud they move to when the home fails.
    pub standby: String,
}

/// Maps partition keys to cells (see the [module docs](self)).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoutingTable {
    cells: Vec<CellSpec>,
    explicit: BTreeMap<String, usize>,
    ranges: Vec<(String, String, usize)>,
}

impl RoutingTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a cell with weight 1.
    pub fn cell(
        self,
        name: impl Into<String>,
        home: impl Into<String>,
        standby: impl Into<String>,
    ) -> Result<Self> {
        self.weighted_cell(name, home, standby, 1.0)
    }

    /// Adds a cell with a rendezvous weight (0 or more, finite).
    pub fn weighted_cell(
        mut self,
        name: impl Into<String>,
        home: impl Into<String>,
        standby: impl Into<String>,
        weight: f64,
    ) -> Result<Self> {
        let (name, home, standby) = (name.into(), home.into(), standby.into());
        if name.is_empty() || self.index(&name).is_some() {
            return Err(Error::invalid(
                BACKEND,
                format!("cell names must be non-empty and unique (`{name}`)"),
            ));
        }
        if home.is_empty() || standby.is_empty() || home == standby {
            return Err(Error::invalid(
                BACKEND,
                format!("cell `{name}` needs a home and a different standby cloud"),
            ));
        }
        if !(weight.is_finite() && weight >= 0.0) {
            return Err(Error::invalid(
                BACKEND,
                format!("cell `{name}`: weight must be a finite number of at least 0"),
            ));
        }
        self.cells.push(CellSpec {
            name,
            home,
            standby,
            weight,
        });
        Ok(self)
    }

    /// Routes `key` to `cell`, before ranges and hashing.
    pub fn explicit(mut self, key: impl Into<String>, cell: &str) -> Result<Self> {
        let index = self.known(cell)?;
        self.explicit.insert(key.into(), index);
        Ok(self)
    }

    /// Routes keys in `[start, end)` (byte-wise) to `cell`, before hashing; the first range
    /// added that holds a key wins.
    pub fn range(
        mut self,
        start: impl Into<String>,
        end: impl Into<String>,
        cell: &str,
    ) -> Result<Self> {
        let (start, end) = (start.into(), end.into());
        if start >= end {
            return Err(Error::invalid(
                BACKEND,
                format!("range `{start}`..`{end}` is empty"),
            ));
        }
        let index = self.known(cell)?;
        self.ranges.push((start, end, index));
        Ok(self)
    }

    /// A table with one cell (weight 1) per placement.
    pub fn from_placements(placements: impl IntoIterator<Item = CellPlacement>) -> Result<Self> {
        placements
            .into_iter()
            .try_fold(Self::new(), |t, p| t.cell(p.cell, p.home, p.standby))
    }

    /// The cells, in the order they were added.
    pub fn cells(&self) -> &[CellSpec] {
        &self.cells
    }

    /// The cell of `key`; `NotFound` if nothing routes it (no cell has a weight above 0 and
    /// no entry or range holds it).
    pub fn cell_of(&self, key: &str) -> Result<&CellSpec> {
        self.cell_index(key)
            .map(|i| &self.cells[i])
            .ok_or_else(|| Error::not_found(BACKEND, format!("no cell routes key `{key}`")))
    }

    fn cell_index(&self, key: &str) -> Option<usize> {
        if let Some(&i) = self.explicit.get(key) {
            return Some(i);
        }
        if let Some((_, _, i)) = self
            .ranges
            .iter()
            .find(|(start, end, _)| start.as_str() <= key && key < end.as_str())
        {
            return Some(*i);
        }
        self.cells
            .iter()
            .enumerate()
            .filter(|(_, c)| c.weight > 0.0)
            .map(|(i, c)| (rendezvous_score(&c.name, key, c.weight), i))
            // Ties (practically impossible) go to the earlier cell, deterministically.
            .max_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)))
            .map(|(_, i)| i)
    }

    fn index(&self, cell: &str) -> Option<usize> {
        self.cells.iter().position(|c| c.name == cell)
    }

    fn known(&self, cell: &str) -> Result<usize> {
        self.index(cell)
            .ok_or_else(|| Error::invalid(BACKEND, format!("unknown cell `{cell}`")))
    }

    /// Every cloud named as a home or standby, sorted.
    pub fn clouds(&self) -> Vec<String> {
        let mut clouds: Vec<String> = self
            .cells
            .iter()
            .flat_map(|c| [c.home.clone(), c.standby.clone()])
            .collect();
        clouds.sort();
        clouds.dedup();
        clouds
    }
}

/// FNV-1a over `cell`, a separator and `key`, then the splitmix64 finalizer (FNV alone mixes
/// the last bytes poorly). Fixed: changing it would move keys between cells.
fn stable_hash(cell: &str, key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in cell.bytes().chain([0xff]).chain(key.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Weighted rendezvous score: `-weight / ln(u)`, `u` in (0, 1) from the hash.
fn rendezvous_score(cell: &str, key: &str, weight: f64) -> f64 {
    // 53 bits: exactly representable; +0.5 keeps u away from 0 and 1.
    let u = ((stable_hash(cell, key) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -weight / u.ln()
}

/// Settings of a [`CellRouter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouterConfig {
    /// How long a home's breaker must stay closed, without interruption, before its cells
    /// return to it. Default 2 s.
    pub settle: Duration,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            settle: Duration::from_secs(2),
        }
    }
}

/// Where the requests for a key go now, as [`CellRouter::route`] answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The key's cell.
    pub cell: String,
    /// The cloud serving the cell now.
    pub cloud: String,
    /// The other cloud of the cell (where a request that fails on `cloud` may go).
    pub fallback: String,
    /// Whether `cloud` is the cell's home.
    pub at_home: bool,
}

/// The routing state of one cell, as [`CellRouter::status`] reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct CellStatus {
    /// The cell.
    pub cell: String,
    /// Its home cloud.
    pub home: String,
    /// Its standby cloud.
    pub standby: String,
    /// The cloud serving it now.
    pub serving: String,
    /// Since when (wall clock).
    pub since: SystemTime,
    /// Why it is served there (e.g. `home`, `home breaker open: …`, `home recovered and drained`).
    pub reason: String,
    /// How many times it moved.
    pub moves: u64,
}

/// A cell changed clouds, as given to [`CellRouter::on_move`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellMove {
    /// The cell.
    pub cell: String,
    /// The cloud it left.
    pub from: String,
    /// The cloud now serving it.
    pub to: String,
    /// Why.
    pub reason: String,
}

/// One cloud of a router: its breaker and its drained check.
pub struct CloudHealth {
    name: String,
    breaker: CircuitBreaker,
    drained: Arc<dyn Fn() -> bool + Send + Sync>,
}

impl fmt::Debug for CloudHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloudHealth")
            .field("name", &self.name)
            .field("breaker", &self.breaker.name())
            .finish_non_exhaustive()
    }
}

impl CloudHealth {
    /// Cloud `name`, healthy as long as `breaker` is not open; always drained.
    pub fn new(name: impl Into<String>, breaker: CircuitBreaker) -> Self {
        Self {
            name: name.into(),
            breaker,
            drained: Arc::new(|| true),
        }
    }

    /// Cells return to this cloud only while `drained()` is true (e.g. no replication hints
    /// for it are pending: `move || !store.is_behind(index)`).
    pub fn drained(mut self, drained: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        self.drained = Arc::new(drained);
        self
    }
}

struct CellState {
    serving_home: bool,
    since: SystemTime,
    reason: String,
    moves: u64,
}

/// When each cloud's breaker was last seen closed without a break.
struct CloudState {
    closed_since: Option<Instant>,
}

type MoveCallback = Arc<dyn Fn(&CellMove) + Send + Sync>;

struct RouterInner {
    table: RoutingTable,
    config: RouterConfig,
    clouds: BTreeMap<String, CloudHealth>,
    state: Mutex<(Vec<CellState>, BTreeMap<String, CloudState>)>,
    callbacks: Mutex<Vec<MoveCallback>>,
}

/// Routes keys to the cloud serving their cell (see the [module docs](self)). Clones share
/// the state.
///
/// ```
/// use paas_components::layers::{CircuitBreaker, CircuitBreakerConfig};
/// use paas_components::multicloud::cell::{CellRouter, CloudHealth, RouterConfig, RoutingTable};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> cloud_abstraction::Result<()> {
/// let table = RoutingTable::new()
///     .cell("eu-1", "aws", "azure")?
///     .cell("eu-2", "azure", "aws")?
///     .explicit("WVW-1", "eu-1")?;
/// let aws = CircuitBreaker::new("aws", CircuitBreakerConfig::default())?;
/// let azure = CircuitBreaker::new("azure", CircuitBreakerConfig::default())?;
/// let router = CellRouter::new(
///     table,
///     vec![CloudHealth::new("aws", aws.clone()), CloudHealth::new("azure", azure)],
///     RouterConfig::default(),
/// )?;
/// let home = router.route("WVW-1")?;
/// assert_eq!((home.cell.as_str(), home.cloud.as_str(), home.at_home), ("eu-1", "aws", true));
/// // The home cloud fails: its cells move to their standby at once.
/// aws.trip("outage");
/// let moved = router.route("WVW-1")?;
/// assert_eq!((moved.cloud.as_str(), moved.at_home), ("azure", false));
/// assert!(router.status().iter().any(|s| s.serving == "azure" && s.reason.contains("outage")));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct CellRouter {
    inner: Arc<RouterInner>,
}

impl fmt::Debug for CellRouter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CellRouter")
            .field("cells", &self.status())
            .finish()
    }
}

impl CellRouter {
    /// A router over `table` whose clouds are `clouds`; every home and standby of the table
    /// must be among them. Needs no runtime; breakers' transitions re-evaluate the cells.
    pub fn new(
        table: RoutingTable,
        clouds: Vec<CloudHealth>,
        config: RouterConfig,
    ) -> Result<Self> {
        let mut by_name = BTreeMap::new();
        for cloud in clouds {
            if by_name.contains_key(&cloud.name) {
                return Err(Error::invalid(
                    BACKEND,
                    format!("cloud `{}` is given twice", cloud.name),
                ));
            }
            by_name.insert(cloud.name.clone(), cloud);
        }
        for name in table.clouds() {
            if !by_name.contains_key(&name) {
                return Err(Error::invalid(
                    BACKEND,
                    format!("the table names cloud `{name}`, which the router was not given"),
                ));
            }
        }
        if table.cells.is_empty() {
            return Err(Error::invalid(BACKEND, "a router needs at least one cell"));
        }
        let now = SystemTime::now();
        let cells = table
            .cells
            .iter()
            .map(|_| CellState {
                serving_home: true,
                since: now,
                reason: "home".into(),
                moves: 0,
            })
            .collect();
        let clouds_state = by_name
            .keys()
            .map(|n| {
                (
                    n.clone(),
                    CloudState {
                        closed_since: Some(Instant::now()),
                    },
                )
            })
            .collect();
        let router = Self {
            inner: Arc::new(RouterInner {
                table,
                config,
                clouds: by_name,
                state: Mutex::new((cells, clouds_state)),
                callbacks: Mutex::new(Vec::new()),
            }),
        };
        for cell in &router.inner.table.cells {
            metrics::gauge!("cell_serving", "cell" => cell.name.clone(), "cloud" => cell.home.clone()).set(1.0);
            metrics::gauge!("cell_serving", "cell" => cell.name.clone(), "cloud" => cell.standby.clone()).set(0.0);
        }
        let weak: Weak<RouterInner> = Arc::downgrade(&router.inner);
        for cloud in router.inner.clouds.values() {
            let weak = weak.clone();
            cloud.breaker.on_transition(move |t| {
                if let Some(inner) = weak.upgrade() {
                    CellRouter { inner }.evaluate(Some(&t.reason));
                }
            });
        }
        router.evaluate(None);
        Ok(router)
    }

    /// The table.
    pub fn table(&self) -> &RoutingTable {
        &self.inner.table
    }

    /// The breaker of cloud `name`.
    pub fn breaker(&self, cloud: &str) -> Option<&CircuitBreaker> {
        self.inner.clouds.get(cloud).map(|c| &c.breaker)
    }

    /// Where requests for `key` go now.
    pub fn route(&self, key: &str) -> Result<Route> {
        self.evaluate(None);
        let index = self
            .inner
            .table
            .cell_index(key)
            .ok_or_else(|| Error::not_found(BACKEND, format!("no cell routes key `{key}`")))?;
        let cell = &self.inner.table.cells[index];
        let at_home = self.lock().0[index].serving_home;
        let (cloud, fallback) = if at_home {
            (&cell.home, &cell.standby)
        } else {
            (&cell.standby, &cell.home)
        };
        Ok(Route {
            cell: cell.name.clone(),
            cloud: cloud.clone(),
            fallback: fallback.clone(),
            at_home,
        })
    }

    /// Every cell's routing state, in table order.
    pub fn status(&self) -> Vec<CellStatus> {
        self.evaluate(None);
        let state = self.lock();
        self.inner
            .table
            .cells
            .iter()
            .zip(state.0.iter())
            .map(|(spec, s)| CellStatus {
                cell: spec.name.clone(),
                home: spec.home.clone(),
                standby: spec.standby.clone(),
                serving: if s.serving_home {
                    spec.home.clone()
                } else {
                    spec.standby.clone()
                },
                since: s.since,
                reason: s.reason.clone(),
                moves: s.moves,
            })
            .collect()
    }

    /// Calls `callback` on every move of a cell (outside the router's lock).
    pub fn on_move(&self, callback: impl Fn(&CellMove) + Send + Sync + 'static) {
        self.inner
            .callbacks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::new(callback));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Vec<CellState>, BTreeMap<String, CloudState>)> {
        // A poisoned lock only means a panic elsewhere in a short update of plain fields.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Re-decides every cell from the clouds' breakers, drained checks and settle times.
    /// `why` is the breaker transition's reason when a transition triggered it.
    fn evaluate(&self, why: Option<&str>) {
        let inner = &self.inner;
        let now = Instant::now();
        let states: BTreeMap<&str, BreakerState> = inner
            .clouds
            .iter()
            .map(|(n, c)| (n.as_str(), c.breaker.state()))
            .collect();
        let mut moves = Vec::new();
        {
            let mut guard = self.lock();
            let (cells, clouds) = &mut *guard;
            for (name, cloud) in clouds.iter_mut() {
                match states.get(name.as_str()) {
                    Some(BreakerState::Closed) => {
                        cloud.closed_since.get_or_insert(now);
                    }
                    _ => cloud.closed_since = None,
                }
            }
            for (spec, cell) in inner.table.cells.iter().zip(cells.iter_mut()) {
                let home_state = states[spec.home.as_str()];
                let standby_state = states[spec.standby.as_str()];
                let decision = if cell.serving_home {
                    (home_state == BreakerState::Open && standby_state != BreakerState::Open).then(
                        || {
                            format!(
                                "home breaker open: {}",
                                why.unwrap_or("failures of the home cloud")
                            )
                        },
                    )
                } else {
                    let settled = clouds[&spec.home]
                        .closed_since
                        .is_some_and(|t| now.duration_since(t) >= inner.config.settle);
                    if settled && (inner.clouds[&spec.home].drained)() {
                        Some("home recovered and drained".to_string())
                    } else if standby_state == BreakerState::Open
                        && home_state != BreakerState::Open
                    {
                        Some("standby breaker open; home is better than nothing".to_string())
                    } else {
                        None
                    }
                };
                if let Some(reason) = decision {
                    let (from, to) = if cell.serving_home {
                        (&spec.home, &spec.standby)
                    } else {
                        (&spec.standby, &spec.home)
                    };
                    cell.serving_home = !cell.serving_home;
                    cell.since = SystemTime::now();
                    cell.reason = reason.clone();
                    cell.moves += 1;
                    moves.push(CellMove {
                        cell: spec.name.clone(),
                        from: from.clone(),
                        to: to.clone(),
                        reason,
                    });
                }
            }
        }
        if moves.is_empty() {
            return;
        }
        let callbacks = inner
            .callbacks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for m in &moves {
            tracing::info!(cell = %m.cell, from = %m.from, to = %m.to, reason = %m.reason, "cell moved");
            metrics::counter!("cell_moves_total", "cell" => m.cell.clone(), "from" => m.from.clone(), "to" => m.to.clone()).increment(1);
            metrics::gauge!("cell_serving", "cell" => m.cell.clone(), "cloud" => m.to.clone())
                .set(1.0);
            metrics::gauge!("cell_serving", "cell" => m.cell.clone(), "cloud" => m.from.clone())
                .set(0.0);
            for callback in &callbacks {
                callback(m);
            }
        }
    }
}

#[cfg(feature = "placement")]
pub mod placement {
    //! From a survivable `cloud-placement` plan to cell placements (feature `placement`).
    //!
    //! A unit's [`cell`](cloud_placement::model::Unit::cell) names the cell it belongs to. A
    //! cell's **home** is the provider holding most of its units' replicas in the plan; its
    //! **standby** is the provider most of those replicas move to when the home provider is
    //! down, as the solver re-plans it ([`cloud_placement::resolve`] from the plan, with the
    //! home marked down, so only the displaced replicas move). The plan must be survivable
    //! ([`cloud_placement::checker::check_survivable`]): otherwise the standby could not
    //! absorb the cell, and the conversion refuses it.

    use super::CellPlacement;
    use cloud_abstraction::{Error, Result};
    use cloud_placement::model::{Model, Plan};
    use cloud_placement::{ResolveOptions, SolveOptions};
    use std::collections::BTreeMap;

    const BACKEND: &str = "cell-router";

    fn provider_of(model: &Model) -> BTreeMap<&str, &str> {
        model
            .regions()
            .map(|(p, r)| (r.id.as_str(), p.id.as_str()))
            .collect()
    }

    /// The provider holding most replicas of `cell`'s units in `plan` (ties: the smaller id).
    fn majority<'a>(
        model: &Model,
        plan: &Plan,
        cell: &str,
        providers: &BTreeMap<&str, &'a str>,
        exclude: Option<&str>,
    ) -> Option<&'a str> {
        let mut count: BTreeMap<&str, usize> = BTreeMap::new();
        for unit in model
            .units
            .iter()
            .filter(|u| u.cell.as_deref() == Some(cell))
        {
            for region in plan.placements.get(&unit.id).into_iter().flatten() {
                if let Some(p) = providers.get(region.as_str()) {
                    if Some(*p) != exclude {
                        *count.entry(p).or_default() += 1;
                    }
                }
            }
        }
        count
            .into_iter()
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)))
            .map(|(p, _)| p)
    }

    /// One [`CellPlacement`] per cell named by the model's units, in cell-name order.
    pub fn cells_from_plan(model: &Model, plan: &Plan) -> Result<Vec<CellPlacement>> {
        let problems = cloud_placement::checker::check_survivable(model, plan);
        if !problems.is_empty() {
            return Err(Error::invalid(
                BACKEND,
                format!(
                    "the plan is not survivable, so standbys could not absorb cells: {}",
                    problems.join("; ")
                ),
            ));
        }
        let providers = provider_of(model);
        let mut cells: Vec<&str> = model
            .units
            .iter()
            .filter_map(|u| u.cell.as_deref())
            .collect();
        cells.sort_unstable();
        cells.dedup();
        let mut replans: BTreeMap<String, Plan> = BTreeMap::new();
        let mut out = Vec::with_capacity(cells.len());
        for cell in cells {
            let home = majority(model, plan, cell, &providers, None).ok_or_else(|| {
                Error::invalid(BACKEND, format!("cell `{cell}` has no replica in the plan"))
            })?;
            if !replans.contains_key(home) {
                let options = ResolveOptions {
                    solve: SolveOptions {
                        explain: false,
                        max_scans: 50_000,
                        ..SolveOptions::default()
                    },
                    ..ResolveOptions::default()
                };
                let after =
                    cloud_placement::resolve(&model.with_provider_down(home), plan, &options)
                        .map_err(|e| {
                            Error::invalid(
                                BACKEND,
                                format!("re-planning without `{home}` failed: {e}"),
                            )
                        })?;
                replans.insert(home.to_string(), after.plan);
            }
            let standby = majority(model, &replans[home], cell, &providers, Some(home))
                .ok_or_else(|| {
                    Error::invalid(
                        BACKEND,
                        format!("cell `{cell}` has nowhere to go when `{home}` fails"),
                    )
                })?;
            out.push(CellPlacement {
                cell: cell.to_string(),
                home: home.to_string(),
                standby: standby.to_string(),
            });
        }
        Ok(out)
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use cloud_placement::model::{Provider, Region, Unit};
        use cloud_placement::solve;

        fn model(capacity: f64) -> Model {
            let region = |id: &str, near: &str| Region {
                id: id.into(),
                capacity: BTreeMap::from([("cpu".into(), capacity)]),
                price: BTreeMap::from([("cpu".into(), 1.0)]),
                latency_ms: BTreeMap::from([
                    ("north".into(), if near == "north" { 10.0 } else { 40.0 }),
                    ("south".into(), if near == "south" { 10.0 } else { 40.0 }),
                ]),
                ..Region::default()
            };
            let provider = |id: &str, region_id: &str, near: &str| Provider {
                id: id.into(),
                regions: vec![region(region_id, near)],
                ..Provider::default()
            };
            let units = ["north", "north", "south"]
                .iter()
                .enumerate()
                .flat_map(|(i, users)| {
                    ["api", "db"].map(|kind| Unit {
                        id: format!("cell-{i}-{kind}"),
                        cell: Some(format!("cell-{i}")),
                        demand: BTreeMap::from([("cpu".into(), 10.0)]),
                        replicas: 1,
                        user_regions: vec![users.to_string()],
                        colocate: Some(format!("cell-{i}")),
                        ..Unit::default()
                    })
                })
                .collect();
            Model {
                dimensions: vec!["cpu".into()],
                providers: vec![
                    provider("aws", "aws-1", "north"),
                    provider("azure", "azure-1", "south"),
                ],
                units,
                weights: cloud_placement::model::Weights {
                    latency: 1.0,
                    ..Default::default()
                },
                ..Model::default()
            }
        }

        #[test]
        fn a_survivable_plan_gives_each_cell_its_home_and_standby() {
            let m = model(100.0);
            let options = SolveOptions {
                survivable: true,
                explain: false,
                ..SolveOptions::default()
            };
            let plan = solve(&m, &options).unwrap().plan;
            let cells = cells_from_plan(&m, &plan).unwrap();
            let pairs: Vec<(&str, &str, &str)> = cells
                .iter()
                .map(|c| (c.cell.as_str(), c.home.as_str(), c.standby.as_str()))
                .collect();
            assert_eq!(
                pairs,
                [
                    ("cell-0", "aws", "azure"),
                    ("cell-1", "aws", "azure"),
                    ("cell-2", "azure", "aws")
                ]
            );
            let table = super::super::RoutingTable::from_placements(cells).unwrap();
            assert_eq!(table.cells().len(), 3);
        }

        #[test]
        fn a_plan_that_cannot_survive_a_provider_is_refused() {
            // Room for the cells of one side only: losing either cloud cannot be absorbed.
            let m = model(45.0);
            let plan = solve(
                &m,
                &SolveOptions {
                    explain: false,
                    ..SolveOptions::default()
                },
            )
            .unwrap()
            .plan;
            let error = cells_from_plan(&m, &plan).unwrap_err();
            assert!(error.message().contains("not survivable"), "{error}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::CircuitBreakerConfig;

    fn table(cells: usize) -> RoutingTable {
        (0..cells).fold(RoutingTable::new(), |t, i| {
            let (h, s) = if i % 2 == 0 { ("a", "b") } else { ("b", "a") };
            t.cell(format!("cell-{i}"), h, s).unwrap()
        })
    }

    #[test]
    fn rendezvous_adding_a_cell_moves_about_one_nth_of_the_keys() {
        let keys: Vec<String> = (0..20_000).map(|i| format!("WVW-{i:06}")).collect();
        let before = table(4);
        let after = table(5);
        let mut moved = 0;
        for k in &keys {
            let b = &before.cell_of(k).unwrap().name;
            let a = &after.cell_of(k).unwrap().name;
            if a != b {
                // Only to the new cell, never between old ones.
                assert_eq!(a, "cell-4", "key {k} moved between old cells");
                moved += 1;
            }
        }
        let share = moved as f64 / keys.len() as f64;
        assert!(
            (share - 0.2).abs() < 0.02,
            "moved {share:.3}, expected about 1/5"
        );
        // And the cells are balanced.
        let mut count: BTreeMap<String, usize> = BTreeMap::new();
        for k in &keys {
            *count
                .entry(after.cell_of(k).unwrap().name.clone())
                .or_default() += 1;
        }
        for (cell, n) in count {
            assert!((3_600..=4_400).contains(&n), "{cell} holds {n} of 20000");
        }
    }

    #[test]
    fn weights_explicit_entries_and_ranges() {
        let t = RoutingTable::new()
            .weighted_cell("big", "a", "b", 3.0)
            .unwrap()
            .weighted_cell("small", "b", "a", 1.0)
            .unwrap()
            .weighted_cell("canary", "a", "b", 0.0)
            .unwrap()
            .range("TEST-", "TEST-~", "small")
            .unwrap()
            .explicit("WVW-42", "canary")
            .unwrap();
        assert_eq!(t.cell_of("WVW-42").unwrap().name, "canary");
        assert_eq!(t.cell_of("TEST-7").unwrap().name, "small");
        let big = (0..10_000)
            .filter(|i| t.cell_of(&format!("V{i}")).unwrap().name == "big")
            .count();
        assert!((7_200..=7_800).contains(&big), "big holds {big} of 10000");
        assert!(
            (0..10_000).all(|i| t.cell_of(&format!("V{i}")).unwrap().name != "canary"),
            "a weight-0 cell gets no hashed keys"
        );
        assert!(t.clone().cell("big", "a", "b").is_err());
        assert!(t.clone().cell("x", "a", "a").is_err());
        assert!(t.clone().weighted_cell("x", "a", "b", f64::NAN).is_err());
        assert!(t.clone().explicit("k", "nope").is_err());
        assert!(t.clone().range("b", "a", "big").is_err());
        assert!(RoutingTable::new().cell_of("k").is_err());
    }

    fn breaker(name: &str) -> CircuitBreaker {
        CircuitBreaker::new(
            name,
            CircuitBreakerConfig {
                consecutive_failures: 1,
                open_for: Duration::from_millis(100),
                successes_to_close: 2,
                ..CircuitBreakerConfig::default()
            },
        )
        .unwrap()
    }

    fn fail(b: &CircuitBreaker) {
        if let Ok(p) = b.try_acquire() {
            p.record_failure();
        }
    }

    fn succeed(b: &CircuitBreaker) {
        if let Ok(p) = b.try_acquire() {
            p.record(&Ok::<(), Error>(()));
        }
    }

    fn router(drained: Arc<std::sync::atomic::AtomicBool>) -> (CellRouter, CircuitBreaker) {
        let a = breaker("a");
        let b = breaker("b");
        let t = RoutingTable::new()
            .cell("c1", "a", "b")
            .unwrap()
            .cell("c2", "b", "a")
            .unwrap()
            .explicit("k1", "c1")
            .unwrap()
            .explicit("k2", "c2")
            .unwrap();
        let r = CellRouter::new(
            t,
            vec![
                CloudHealth::new("a", a.clone())
                    .drained(move || drained.load(std::sync::atomic::Ordering::SeqCst)),
                CloudHealth::new("b", b),
            ],
            RouterConfig {
                settle: Duration::from_millis(500),
            },
        )
        .unwrap();
        (r, a)
    }

    #[tokio::test(start_paused = true)]
    async fn a_flapping_home_does_not_bounce_cells() {
        let drained = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (r, a) = router(drained);
        let moves = Arc::new(Mutex::new(Vec::new()));
        let m = Arc::clone(&moves);
        r.on_move(move |mv| m.lock().unwrap().push(mv.clone()));
        assert_eq!(r.route("k1").unwrap().cloud, "a");
        fail(&a);
        assert_eq!(
            r.route("k1").unwrap().cloud,
            "b",
            "moved when the home opened"
        );
        assert_eq!(
            r.route("k2").unwrap().cloud,
            "b",
            "the other cell stays home"
        );
        // Flapping: each cool-down ends, a probe or two succeed, then it fails again; the
        // breaker even closes for a moment sometimes, but never for the settle time.
        for round in 0..10 {
            tokio::time::advance(Duration::from_millis(120)).await;
            succeed(&a);
            if round % 2 == 0 {
                succeed(&a); // closed now
                assert_eq!(a.state(), BreakerState::Closed);
            }
            tokio::time::advance(Duration::from_millis(200)).await;
            assert_eq!(
                r.route("k1").unwrap().cloud,
                "b",
                "bounced in round {round}"
            );
            fail(&a);
        }
        assert_eq!(
            moves.lock().unwrap().len(),
            1,
            "one move only while flapping"
        );
        // Stable again: back after the settle time.
        tokio::time::advance(Duration::from_millis(120)).await;
        succeed(&a);
        succeed(&a);
        tokio::time::advance(Duration::from_millis(400)).await;
        assert_eq!(
            r.route("k1").unwrap().cloud,
            "b",
            "not before the settle time"
        );
        tokio::time::advance(Duration::from_millis(150)).await;
        let back = r.route("k1").unwrap();
        assert_eq!(back.cloud, "a");
        assert!(back.at_home);
        let status = r.status();
        assert_eq!(status[0].moves, 2);
        assert_eq!(status[0].reason, "home recovered and drained");
        assert_eq!(status[1].moves, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn return_to_home_waits_until_its_hints_are_drained() {
        let drained = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (r, a) = router(Arc::clone(&drained));
        a.trip("cloud a outage");
        let s = &r.status()[0];
        assert_eq!(s.serving, "b");
        assert!(s.reason.contains("cloud a outage"), "{}", s.reason);
        drained.store(false, std::sync::atomic::Ordering::SeqCst);
        tokio::time::advance(Duration::from_millis(120)).await;
        succeed(&a);
        succeed(&a);
        assert_eq!(a.state(), BreakerState::Closed);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(
            r.route("k1").unwrap().cloud,
            "b",
            "hints pending: stays on standby"
        );
        drained.store(true, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(r.route("k1").unwrap().cloud, "a", "drained: back home");
    }

    #[test]
    fn router_refuses_unknown_clouds_and_empty_tables() {
        let t = table(2);
        assert!(
            CellRouter::new(
                t.clone(),
                vec![CloudHealth::new("a", breaker("a"))],
                RouterConfig::default()
            )
            .is_err()
        );
        assert!(CellRouter::new(RoutingTable::new(), vec![], RouterConfig::default()).is_err());
        let dup = vec![
            CloudHealth::new("a", breaker("a")),
            CloudHealth::new("a", breaker("a2")),
            CloudHealth::new("b", breaker("b")),
        ];
        assert!(CellRouter::new(t, dup, RouterConfig::default()).is_err());
    }
}
