//! A circuit breaker for every trait: stop sending requests to a backend that is failing,
//! probe it after a cool-down, and let traffic back only after it has recovered.
//!
//! # States
//!
//! - **Closed**: calls pass; outcomes are recorded. The breaker opens on `N` consecutive
//!   failures, or when the failure rate (or the slow-call rate) over a sliding window reaches
//!   its threshold once the window holds at least `minimum_calls` calls.
//! - **Open**: every call fails at once with [`Unavailable`](ErrorKind::Unavailable), status
//!   [`Persistent`](ErrorStatus::Persistent) (an outer retry must not hammer it; a failover
//!   moves on), without reaching the backend.
//! - **Half-open**: after the cool-down, up to `half_open_probes` calls at a time go through
//!   as probes. `successes_to_close` successful probes close the breaker; one failed probe
//!   opens it again for another cool-down. This is the hysteresis that keeps a flapping link
//!   from bouncing traffic back and forth.
//!
//! The state lives behind an [`Arc`] in [`CircuitBreaker`]: every service the layer makes, and
//! every clone of those (the tower bridge clones a service per call), shares one breaker.
//! Anchors: resilience4j's `CircuitBreaker` and Polly v8's circuit-breaker strategy (tower has
//! none).
//!
//! # What counts as a failure
//!
//! By default an error of a retryable kind ([`Error::is_target_failure`]: unavailable,
//! deadline exceeded, resource exhausted): the backend's fault. `NotFound`,
//! `PreconditionFailed`, `InvalidArgument` and the like are answers, not failures, and count
//! as successes. [`CircuitBreakerConfig::failure_predicate`] changes the rule.
//!
//! # Observability
//!
//! [`CircuitBreaker::state`] and [`CircuitBreaker::snapshot`]; an optional transition callback
//! ([`CircuitBreaker::on_transition`]); and through the `metrics` facade the gauge
//! `circuit_breaker_state` (0 closed, 1 half-open, 2 open) and the counters
//! `circuit_breaker_transitions_total` (label `to`) and `circuit_breaker_rejected_total`, each
//! labelled `breaker` with the breaker's name.

use super::LayerRequest;
use cloud_abstraction::{Error, ErrorKind, ErrorStatus};
use futures::future::BoxFuture;
use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;
use tower::{Layer, Service};

/// The state of a [`CircuitBreaker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls pass.
    Closed,
    /// Calls fail at once.
    Open,
    /// A few probe calls pass; the rest fail at once.
    HalfOpen,
}

impl BreakerState {
    /// A short, stable name (`closed`, `open`, `half_open`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    fn gauge(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::HalfOpen => 1.0,
            Self::Open => 2.0,
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The sliding window over which failure and slow-call rates are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlidingWindow {
    /// The last `n` calls.
    Count(u32),
    /// The calls of the last `duration` (kept in 100 ms buckets).
    Time(Duration),
}

/// Decides whether an error counts as a failure of the backend.
pub type FailurePredicate = Arc<dyn Fn(&Error) -> bool + Send + Sync>;

/// When a [`CircuitBreaker`] opens and how it recovers.
#[derive(Clone)]
pub struct CircuitBreakerConfig {
    /// Open after this many consecutive failures (0: never on this rule). Default 5.
    pub consecutive_failures: u32,
    /// Open when the window's failure rate reaches this (0.0 to 1.0; above 1.0: never).
    /// Default 0.5.
    pub failure_rate: f64,
    /// The window of the rates. Default the last 20 calls.
    pub window: SlidingWindow,
    /// The rates are only judged once the window holds this many calls. Default 10.
    pub minimum_calls: u32,
    /// A call that takes longer than this counts as slow (even if it succeeds). Default none.
    pub slow_call_duration: Option<Duration>,
    /// Open when the window's slow-call rate reaches this. Default 1.0.
    pub slow_call_rate: f64,
    /// How long the breaker stays open before it lets probes through. Default 5 s.
    pub open_for: Duration,
    /// How many probes may be in flight at once while half-open. Default 1.
    pub half_open_probes: u32,
    /// How many successful probes close the breaker. Default 3.
    pub successes_to_close: u32,
    /// Which errors count as failures; default [`Error::is_target_failure`].
    pub failure_predicate: FailurePredicate,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_rate: 0.5,
            window: SlidingWindow::Count(20),
            minimum_calls: 10,
            slow_call_duration: None,
            slow_call_rate: 1.0,
            open_for: Duration::from_secs(5),
            half_open_probes: 1,
            successes_to_close: 3,
            failure_predicate: Arc::new(Error::is_target_failure),
        }
    }
}

impl fmt::Debug for CircuitBreakerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerConfig")
            .field("consecutive_failures", &self.consecutive_failures)
            .field("failure_rate", &self.failure_rate)
            .field("window", &self.window)
            .field("minimum_calls", &self.minimum_calls)
            .field("slow_call_duration", &self.slow_call_duration)
            .field("slow_call_rate", &self.slow_call_rate)
            .field("open_for", &self.open_for)
            .field("half_open_probes", &self.half_open_probes)
            .field("successes_to_close", &self.successes_to_close)
            .finish_non_exhaustive()
    }
}

impl CircuitBreakerConfig {
    /// Checks the numbers; a bad config is [`InvalidArgument`](ErrorKind::InvalidArgument).
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |what: &str| Err(Error::invalid("circuit-breaker", what.to_string()));
        if !(self.failure_rate.is_finite() && self.failure_rate > 0.0) {
            return bad("failure_rate must be a number above 0");
        }
        if !(self.slow_call_rate.is_finite() && self.slow_call_rate > 0.0) {
            return bad("slow_call_rate must be a number above 0");
        }
        match self.window {
            SlidingWindow::Count(0) => return bad("a count window needs at least 1 call"),
            SlidingWindow::Time(d) if d < BUCKET => {
                return bad("a time window must be at least 100 ms");
            }
            _ => {}
        }
        if self.half_open_probes == 0 || self.successes_to_close == 0 {
            return bad("half_open_probes and successes_to_close must be at least 1");
        }
        Ok(())
    }
}

/// What a [`CircuitBreaker`] looks like right now.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerSnapshot {
    /// The breaker's name.
    pub name: String,
    /// The current state.
    pub state: BreakerState,
    /// When the current state began (wall clock).
    pub since: SystemTime,
    /// Failures in a row (closed state).
    pub consecutive_failures: u32,
    /// Calls in the sliding window.
    pub window_calls: u64,
    /// Failed calls in the sliding window.
    pub window_failures: u64,
    /// Slow calls in the sliding window.
    pub window_slow: u64,
    /// Calls rejected without reaching the backend, since the breaker was made.
    pub rejected: u64,
    /// State changes since the breaker was made.
    pub transitions: u64,
}

/// A state change, as given to [`CircuitBreaker::on_transition`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The breaker's name.
    pub breaker: String,
    /// The state before.
    pub from: BreakerState,
    /// The state after.
    pub to: BreakerState,
    /// Why, in words (e.g. "5 consecutive failures").
    pub reason: String,
}

type TransitionCallback = Arc<dyn Fn(&Transition) + Send + Sync>;

const BUCKET: Duration = Duration::from_millis(100);

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    calls: u64,
    failures: u64,
    slow: u64,
}

#[derive(Debug)]
enum Window {
    Count {
        size: usize,
        outcomes: VecDeque<(bool, bool)>,
        tally: Tally,
    },
    Time {
        span: Duration,
        buckets: VecDeque<(Instant, Tally)>,
    },
}

impl Window {
    fn new(kind: SlidingWindow) -> Self {
        match kind {
            SlidingWindow::Count(n) => Window::Count {
                size: n.max(1) as usize,
                outcomes: VecDeque::new(),
                tally: Tally::default(),
            },
            SlidingWindow::Time(span) => Window::Time {
                span,
                buckets: VecDeque::new(),
            },
        }
    }

    fn record(&mut self, now: Instant, failed: bool, slow: bool) {
        match self {
            Window::Count {
                size,
                outcomes,
                tally,
            } => {
                if outcomes.len() == *size {
                    if let Some((f, s)) = outcomes.pop_front() {
                        tally.calls -= 1;
                        tally.failures -= u64::from(f);
                        tally.slow -= u64::from(s);
                    }
                }
                outcomes.push_back((failed, slow));
                tally.calls += 1;
                tally.failures += u64::from(failed);
                tally.slow += u64::from(slow);
            }
            Window::Time { buckets, .. } => {
                let fresh = buckets
                    .back()
                    .is_none_or(|(start, _)| now.duration_since(*start) >= BUCKET);
                if fresh {
                    buckets.push_back((now, Tally::default()));
                }
                if let Some((_, t)) = buckets.back_mut() {
                    t.calls += 1;
                    t.failures += u64::from(failed);
                    t.slow += u64::from(slow);
                }
            }
        }
    }

    fn tally(&mut self, now: Instant) -> Tally {
        match self {
            Window::Count { tally, .. } => *tally,
            Window::Time { span, buckets } => {
                while buckets
                    .front()
                    .is_some_and(|(start, _)| now.duration_since(*start) > *span)
                {
                    buckets.pop_front();
                }
                buckets.iter().fold(Tally::default(), |a, (_, t)| Tally {
                    calls: a.calls + t.calls,
                    failures: a.failures + t.failures,
                    slow: a.slow + t.slow,
                })
            }
        }
    }

    fn clear(&mut self) {
        match self {
            Window::Count {
                outcomes, tally, ..
            } => {
                outcomes.clear();
                *tally = Tally::default();
            }
            Window::Time { buckets, .. } => buckets.clear(),
        }
    }
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    since: Instant,
    since_wall: SystemTime,
    consecutive_failures: u32,
    window: Window,
    probes_in_flight: u32,
    probe_successes: u32,
    rejected: u64,
    transitions: u64,
}

struct Shared {
    name: String,
    config: CircuitBreakerConfig,
    inner: Mutex<Inner>,
    on_transition: Mutex<Vec<TransitionCallback>>,
}

/// A circuit breaker shared by every service of its [`CircuitBreakerLayer`] and every clone.
///
/// ```
/// use std::{sync::Arc, time::Duration};
/// use cloud_abstraction::storage::BlobStoreExt;
/// use paas_components::layers::{self, BreakerState, CircuitBreaker, CircuitBreakerConfig, FaultInjector};
/// use paas_components::storage::MemoryBlobStore;
/// use tower::ServiceBuilder;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let breaker = CircuitBreaker::new("blobs-eu", CircuitBreakerConfig {
///     consecutive_failures: 3,
///     ..Default::default()
/// }).unwrap();
/// let faults = FaultInjector::new(1);
/// let store = layers::blob_store(
///     Arc::new(MemoryBlobStore::new()),
///     ServiceBuilder::new().layer(breaker.layer()).layer(faults.layer()),
/// );
/// faults.set_down(true);
/// for _ in 0..3 {
///     assert!(store.get_bytes("k").await.is_err());
/// }
/// assert_eq!(breaker.state(), BreakerState::Open);
/// // While open, calls fail at once without reaching the backend.
/// let injected = faults.injected();
/// assert!(store.get_bytes("k").await.is_err());
/// assert_eq!(faults.injected(), injected);
/// # }
/// ```
#[derive(Clone)]
pub struct CircuitBreaker {
    shared: Arc<Shared>,
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.shared.name)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

/// Leave to make one call through a [`CircuitBreaker`]; report its outcome with
/// [`Permit::record`]. A permit dropped without an outcome (a cancelled call) records
/// nothing, and frees its probe slot.
#[must_use = "a permit records nothing unless its outcome is reported"]
pub struct Permit {
    breaker: CircuitBreaker,
    started: Instant,
    probe: bool,
    done: bool,
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("breaker", &self.breaker.shared.name)
            .field("probe", &self.probe)
            .finish()
    }
}

impl Permit {
    /// Reports the call's outcome (`Err` values are judged by the failure predicate).
    pub fn record<T>(mut self, outcome: &Result<T, Error>) {
        let failed = match outcome {
            Ok(_) => false,
            Err(e) => (self.breaker.shared.config.failure_predicate)(e),
        };
        self.done = true;
        let elapsed = self.started.elapsed();
        self.breaker.on_outcome(self.probe, failed, elapsed);
    }

    /// Reports a failure of the backend that did not come as an [`Error`].
    pub fn record_failure(mut self) {
        self.done = true;
        let elapsed = self.started.elapsed();
        self.breaker.on_outcome(self.probe, true, elapsed);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.done && self.probe {
            let mut inner = self.breaker.lock();
            inner.probes_in_flight = inner.probes_in_flight.saturating_sub(1);
        }
    }
}

impl CircuitBreaker {
    /// A closed breaker named `name` (used in errors, logs and metric labels).
    pub fn new(name: impl Into<String>, config: CircuitBreakerConfig) -> Result<Self, Error> {
        config.validate()?;
        let name = name.into();
        let window = Window::new(config.window);
        let breaker = Self {
            shared: Arc::new(Shared {
                name,
                config,
                inner: Mutex::new(Inner {
                    state: BreakerState::Closed,
                    since: Instant::now(),
                    since_wall: SystemTime::now(),
                    consecutive_failures: 0,
                    window,
                    probes_in_flight: 0,
                    probe_successes: 0,
                    rejected: 0,
                    transitions: 0,
                }),
                on_transition: Mutex::new(Vec::new()),
            }),
        };
        metrics::gauge!("circuit_breaker_state", "breaker" => breaker.shared.name.clone())
            .set(BreakerState::Closed.gauge());
        Ok(breaker)
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The breaker's configuration.
    pub fn config(&self) -> &CircuitBreakerConfig {
        &self.shared.config
    }

    /// A layer whose services share this breaker.
    pub fn layer(&self) -> CircuitBreakerLayer {
        CircuitBreakerLayer {
            breaker: self.clone(),
        }
    }

    /// Calls `callback` on every state change (after the change, outside the breaker's lock).
    pub fn on_transition(&self, callback: impl Fn(&Transition) + Send + Sync + 'static) {
        self.shared
            .on_transition
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::new(callback));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock only means a panic elsewhere in a short update of plain fields.
        self.shared.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current state. An open breaker whose cool-down has passed reports
    /// [`HalfOpen`](BreakerState::HalfOpen): the next call will be a probe.
    pub fn state(&self) -> BreakerState {
        let inner = self.lock();
        match inner.state {
            BreakerState::Open if inner.since.elapsed() >= self.shared.config.open_for => {
                BreakerState::HalfOpen
            }
            state => state,
        }
    }

    /// The state and its counters.
    pub fn snapshot(&self) -> BreakerSnapshot {
        let state = self.state();
        let mut inner = self.lock();
        let tally = inner.window.tally(Instant::now());
        BreakerSnapshot {
            name: self.shared.name.clone(),
            state,
            since: inner.since_wall,
            consecutive_failures: inner.consecutive_failures,
            window_calls: tally.calls,
            window_failures: tally.failures,
            window_slow: tally.slow,
            rejected: inner.rejected,
            transitions: inner.transitions,
        }
    }

    /// Asks to make one call: a [`Permit`] if the breaker lets it through, else the
    /// `Unavailable` (persistent) error the call gets while the breaker is open.
    pub fn try_acquire(&self) -> Result<Permit, Error> {
        let mut transition = None;
        let result = {
            let mut inner = self.lock();
            let config = &self.shared.config;
            if inner.state == BreakerState::Open && inner.since.elapsed() >= config.open_for {
                transition = Some(self.transition(
                    &mut inner,
                    BreakerState::HalfOpen,
                    "cool-down over".into(),
                ));
            }
            match inner.state {
                BreakerState::Closed => Ok(false),
                BreakerState::HalfOpen if inner.probes_in_flight < config.half_open_probes => {
                    inner.probes_in_flight += 1;
                    Ok(true)
                }
                state => {
                    inner.rejected += 1;
                    let wait = match state {
                        BreakerState::Open => config.open_for.saturating_sub(inner.since.elapsed()),
                        _ => Duration::ZERO,
                    };
                    Err((state, wait))
                }
            }
        };
        if let Some(t) = transition {
            self.notify(&t);
        }
        match result {
            Ok(probe) => Ok(Permit {
                breaker: self.clone(),
                started: Instant::now(),
                probe,
                done: false,
            }),
            Err((state, wait)) => {
                metrics::counter!("circuit_breaker_rejected_total", "breaker" => self.shared.name.clone())
                    .increment(1);
                let message = match state {
                    BreakerState::Open => format!(
                        "circuit breaker `{}` is open; it probes again in {} ms",
                        self.shared.name,
                        wait.as_millis()
                    ),
                    _ => format!(
                        "circuit breaker `{}` is half-open and its probe slots are taken",
                        self.shared.name
                    ),
                };
                Err(Error::new(ErrorKind::Unavailable, Error::UNNAMED, message)
                    .with_status(ErrorStatus::Persistent))
            }
        }
    }

    /// Feeds the breaker from an active probe as well as from calls: every `interval`, `probe`
    /// runs through the breaker like a call (so while the breaker is open it runs only once
    /// the cool-down is over, as a half-open probe) and its outcome is recorded. A backend
    /// that comes back is then noticed without waiting for client traffic, and one that dies
    /// while idle is noticed before the next request. The task stops when the returned guard
    /// is dropped (or the runtime ends); needs a tokio runtime.
    pub fn spawn_probe<F, Fut>(&self, interval: Duration, probe: F) -> ProbeGuard
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), Error>> + Send + 'static,
    {
        let breaker = self.clone();
        let interval = interval.max(Duration::from_millis(10));
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                if let Ok(permit) = breaker.try_acquire() {
                    let outcome = probe().await;
                    permit.record(&outcome);
                }
            }
        });
        ProbeGuard { task }
    }

    /// Forces the breaker open (e.g. an operator draining a cloud, or an active probe that
    /// failed). It probes again after the cool-down as usual.
    pub fn trip(&self, reason: &str) {
        let t = {
            let mut inner = self.lock();
            self.transition(&mut inner, BreakerState::Open, reason.to_string())
        };
        self.notify(&t);
    }

    /// Forces the breaker closed and clears its window.
    pub fn reset(&self) {
        let t = {
            let mut inner = self.lock();
            (inner.state != BreakerState::Closed)
                .then(|| self.transition(&mut inner, BreakerState::Closed, "reset".into()))
        };
        if let Some(t) = t {
            self.notify(&t);
        }
    }

    fn on_outcome(&self, probe: bool, failed: bool, elapsed: Duration) {
        let config = &self.shared.config;
        let slow = config.slow_call_duration.is_some_and(|d| elapsed > d);
        let transition = {
            let mut inner = self.lock();
            let now = Instant::now();
            if probe {
                inner.probes_in_flight = inner.probes_in_flight.saturating_sub(1);
            }
            match inner.state {
                BreakerState::HalfOpen if probe => {
                    if failed || slow {
                        Some(self.transition(
                            &mut inner,
                            BreakerState::Open,
                            "a probe failed".into(),
                        ))
                    } else {
                        inner.probe_successes += 1;
                        (inner.probe_successes >= config.successes_to_close).then(|| {
                            let reason = format!("{} probes succeeded", inner.probe_successes);
                            self.transition(&mut inner, BreakerState::Closed, reason)
                        })
                    }
                }
                BreakerState::Closed => {
                    inner.window.record(now, failed, slow);
                    if failed {
                        inner.consecutive_failures += 1;
                    } else {
                        inner.consecutive_failures = 0;
                    }
                    let tally = inner.window.tally(now);
                    let reason = if config.consecutive_failures > 0
                        && inner.consecutive_failures >= config.consecutive_failures
                    {
                        Some(format!(
                            "{} consecutive failures",
                            inner.consecutive_failures
                        ))
                    } else if tally.calls >= u64::from(config.minimum_calls)
                        && tally.calls > 0
                        && tally.failures as f64 / tally.calls as f64 >= config.failure_rate
                    {
                        Some(format!(
                            "{} of the last {} calls failed",
                            tally.failures, tally.calls
                        ))
                    } else if tally.calls >= u64::from(config.minimum_calls)
                        && tally.calls > 0
                        && tally.slow as f64 / tally.calls as f64 >= config.slow_call_rate
                    {
                        Some(format!(
                            "{} of the last {} calls were slow",
                            tally.slow, tally.calls
                        ))
                    } else {
                        None
                    };
                    reason.map(|r| self.transition(&mut inner, BreakerState::Open, r))
                }
                // Late answers of calls admitted before the breaker opened change nothing.
                _ => None,
            }
        };
        if let Some(t) = transition {
            self.notify(&t);
        }
    }

    fn transition(&self, inner: &mut Inner, to: BreakerState, reason: String) -> Transition {
        let from = inner.state;
        inner.state = to;
        inner.since = Instant::now();
        inner.since_wall = SystemTime::now();
        inner.consecutive_failures = 0;
        inner.probe_successes = 0;
        inner.transitions += 1;
        if to != BreakerState::HalfOpen {
            inner.probes_in_flight = 0;
        }
        inner.window.clear();
        Transition {
            breaker: self.shared.name.clone(),
            from,
            to,
            reason,
        }
    }

    fn notify(&self, t: &Transition) {
        tracing::info!(breaker = %t.breaker, from = %t.from, to = %t.to, reason = %t.reason, "circuit breaker changed state");
        metrics::gauge!("circuit_breaker_state", "breaker" => t.breaker.clone()).set(t.to.gauge());
        metrics::counter!("circuit_breaker_transitions_total", "breaker" => t.breaker.clone(), "to" => t.to.as_str())
            .increment(1);
        let callbacks = self
            .shared
            .on_transition
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for callback in callbacks {
            callback(t);
        }
    }
}

/// Stops the active probe of [`CircuitBreaker::spawn_probe`] when dropped.
#[derive(Debug)]
pub struct ProbeGuard {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The layer of a [`CircuitBreaker`]: every service it makes shares the breaker.
#[derive(Debug, Clone)]
pub struct CircuitBreakerLayer {
    breaker: CircuitBreaker,
}

impl<S> Layer<S> for CircuitBreakerLayer {
    type Service = CircuitBreakerService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreakerService {
            inner,
            breaker: self.breaker.clone(),
        }
    }
}

/// The service of [`CircuitBreakerLayer`].
#[derive(Debug, Clone)]
pub struct CircuitBreakerService<S> {
    inner: S,
    breaker: CircuitBreaker,
}

impl<S> CircuitBreakerService<S> {
    /// The shared breaker.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }
}

impl<S, Req> Service<Req> for CircuitBreakerService<S>
where
    S: Service<Req, Error = Error>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    Req: LayerRequest,
{
    type Response = S::Response;
    type Error = Error;
    type Future = BoxFuture<'static, Result<S::Response, Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let permit = match self.breaker.try_acquire() {
            Ok(permit) => permit,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let call = self.inner.call(request);
        Box::pin(async move {
            let result = call.await;
            permit.record(&result);
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail() -> Result<(), Error> {
        Err(Error::unavailable("t", "down"))
    }

    fn breaker(config: CircuitBreakerConfig) -> CircuitBreaker {
        CircuitBreaker::new("t", config).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn opens_on_consecutive_failures_and_recovers_with_hysteresis() {
        let b = breaker(CircuitBreakerConfig {
            consecutive_failures: 3,
            failure_rate: 2.0,
            open_for: Duration::from_secs(1),
            successes_to_close: 2,
            ..Default::default()
        });
        for _ in 0..2 {
            b.try_acquire().unwrap().record(&fail());
        }
        assert_eq!(b.state(), BreakerState::Closed);
        // A success resets the run.
        b.try_acquire().unwrap().record(&Ok::<_, Error>(()));
        for _ in 0..3 {
            b.try_acquire().unwrap().record(&fail());
        }
        assert_eq!(b.state(), BreakerState::Open);
        let err = b.try_acquire().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert_eq!(err.status(), ErrorStatus::Persistent);
        assert!(!err.is_retryable() && err.is_target_failure());

        tokio::time::advance(Duration::from_millis(1001)).await;
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let probe = b.try_acquire().unwrap();
        // One probe at a time.
        assert!(b.try_acquire().is_err());
        probe.record(&Ok::<_, Error>(()));
        assert_eq!(
            b.state(),
            BreakerState::HalfOpen,
            "one success is not enough"
        );
        b.try_acquire().unwrap().record(&Ok::<_, Error>(()));
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.snapshot().transitions, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_opens_again() {
        let b = breaker(CircuitBreakerConfig {
            consecutive_failures: 1,
            open_for: Duration::from_secs(1),
            ..Default::default()
        });
        b.try_acquire().unwrap().record(&fail());
        tokio::time::advance(Duration::from_secs(2)).await;
        b.try_acquire().unwrap().record(&fail());
        assert_eq!(b.state(), BreakerState::Open);
        // A dropped probe frees its slot.
        tokio::time::advance(Duration::from_secs(2)).await;
        drop(b.try_acquire().unwrap());
        assert!(b.try_acquire().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn opens_on_failure_rate_only_after_minimum_calls() {
        let b = breaker(CircuitBreakerConfig {
            consecutive_failures: 0,
            failure_rate: 0.5,
            window: SlidingWindow::Count(10),
            minimum_calls: 6,
            ..Default::default()
        });
        // Alternate: never two failures in a row, but a 50% rate.
        for i in 0..5 {
            let p = b.try_acquire().unwrap();
            if i % 2 == 0 {
                p.record(&fail());
            } else {
                p.record(&Ok::<_, Error>(()));
            }
        }
        assert_eq!(b.state(), BreakerState::Closed, "5 calls < minimum 6");
        let reasons = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&reasons);
        b.on_transition(move |t| seen.lock().unwrap().push(t.reason.clone()));
        // The 6th call succeeds, but 3 of 6 failed: 50% reaches the threshold.
        b.try_acquire().unwrap().record(&Ok::<_, Error>(()));
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(*reasons.lock().unwrap(), ["3 of the last 6 calls failed"]);
    }

    #[tokio::test(start_paused = true)]
    async fn answers_are_not_failures_and_slow_calls_count() {
        let b = breaker(CircuitBreakerConfig {
            consecutive_failures: 2,
            ..Default::default()
        });
        for _ in 0..10 {
            b.try_acquire()
                .unwrap()
                .record(&Err::<(), _>(Error::not_found("t", "x")));
        }
        assert_eq!(b.state(), BreakerState::Closed);

        let b = breaker(CircuitBreakerConfig {
            consecutive_failures: 0,
            failure_rate: 2.0,
            window: SlidingWindow::Time(Duration::from_secs(10)),
            minimum_calls: 4,
            slow_call_duration: Some(Duration::from_millis(100)),
            slow_call_rate: 0.75,
            ..Default::default()
        });
        for _ in 0..4 {
            let p = b.try_acquire().unwrap();
            tokio::time::advance(Duration::from_millis(150)).await;
            p.record(&Ok::<_, Error>(()));
        }
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn an_active_probe_closes_and_opens_without_client_traffic() {
        let b = breaker(CircuitBreakerConfig {
            consecutive_failures: 2,
            open_for: Duration::from_secs(1),
            successes_to_close: 2,
            ..Default::default()
        });
        let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let up = Arc::clone(&healthy);
        let _guard = b.spawn_probe(Duration::from_millis(100), move || {
            let up = up.load(std::sync::atomic::Ordering::SeqCst);
            async move { if up { Ok(()) } else { fail() } }
        });
        // The backend is down and idle: the probe alone opens the breaker.
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(b.state(), BreakerState::Open);
        // It comes back: after the cool-down, two probe successes close the breaker.
        healthy.store(true, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn bad_configs_are_invalid_argument() {
        for config in [
            CircuitBreakerConfig {
                failure_rate: f64::NAN,
                ..Default::default()
            },
            CircuitBreakerConfig {
                window: SlidingWindow::Count(0),
                ..Default::default()
            },
            CircuitBreakerConfig {
                successes_to_close: 0,
                ..Default::default()
            },
        ] {
            let err = CircuitBreaker::new("t", config).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        }
    }
}
