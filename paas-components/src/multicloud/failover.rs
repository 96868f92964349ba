//! Failover: ordered members of one trait, each behind its own circuit breaker.
//!
//! # Semantics
//!
//! - A request goes to the first member whose breaker lets it through (closed, or half-open
//!   with a free probe slot). A member whose breaker is open is skipped without being called,
//!   so even a non-idempotent request moves on: it was never sent.
//! - When a member fails with a failure of the target ([`Error::is_target_failure`]:
//!   unavailable, deadline exceeded, resource exhausted), an **idempotent** request
//!   ([`OperationRequest::is_idempotent`](cloud_abstraction::service_util::OperationRequest::is_idempotent)) goes to the next member at once. A non-idempotent
//!   one (a create-only put, a revision-conditional write) gets the error back: it may have
//!   taken effect on the failed member, and sending it elsewhere could apply it twice. The
//!   breaker learns from the failure, so after a few of them the member is skipped and those
//!   requests move too. Answers (`NotFound`, `PreconditionFailed`, …) are returned as they
//!   are.
//! - Traffic returns to a preferred member through its breaker's hysteresis: after the
//!   cool-down a few probe requests go to it, and only after `successes_to_close` of them
//!   succeed is it used for everything again (see [`CircuitBreaker`]).
//! - **Hedged reads** (optional, [`HedgeConfig`]): a read ([`OperationRequest::is_read`](cloud_abstraction::service_util::OperationRequest::is_read))
//!   that has not answered within a percentile of recent latencies is sent to the next
//!   available member as well, and the first success wins; hedges are bounded by a budget
//!   (a fraction of requests), so a slow cloud cannot double the load on the other.
//! - When every member fails, the error is `Unavailable` from backend `failover`, listing
//!   each member's error; its status is temporary if any member's was.
//!
//! Failover does not copy data between members: for stores that must hold the same data in
//! both clouds, use the replicated document store (`multicloud::replicate`) or give each
//! member its own copy. On its own it suits read-mostly data, queues whose messages carry ids
//! (publishing with an id is idempotent), and compute.
//!
//! # Observability
//!
//! [`FailoverHandle::members`] says which member serves, each breaker's state and how many
//! requests each member answered; `metrics` counters `failover_served_total` (label `member`)
//! and `failover_moved_total` (label `from`) count the same.

use crate::layers::{CircuitBreaker, CircuitBreakerConfig, LayerRequest, Permit};
use cloud_abstraction::capabilities::CommonCapabilities;
use cloud_abstraction::compute::service::{ComputeService, ServiceCompute};
use cloud_abstraction::database::service::{DocumentStoreService, ServiceDocumentStore};
use cloud_abstraction::queue::service::{MessageQueueService, ServiceMessageQueue};
use cloud_abstraction::storage::service::{BlobStoreService, ServiceBlobStore};
use cloud_abstraction::{
    BackendInfo, BlobStore, Compute, DocumentStore, Error, ErrorKind, ErrorStatus, Location,
    MessageQueue,
};
use futures::future::{BoxFuture, Either, select};
use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tower::Service;
use tower::retry::budget::{Budget, TpsBudget};

const BACKEND: &str = "failover";
const LATENCY_SAMPLES: usize = 512;
const MIN_SAMPLES_TO_HEDGE: usize = 20;

/// When a read is sent to a second member too.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HedgeConfig {
    /// The latency percentile (0.0 to 1.0) of recent calls after which a read is hedged.
    /// Default 0.95.
    pub percentile: f64,
    /// Never hedge earlier than this. Default 10 ms.
    pub min_delay: Duration,
    /// Hedges may be at most this fraction of requests (0.0 to 1.0), over the last 10 s.
    /// Default 0.1.
    pub max_fraction: f32,
}

impl Default for HedgeConfig {
    fn default() -> Self {
        Self {
            percentile: 0.95,
            min_delay: Duration::from_millis(10),
            max_fraction: 0.1,
        }
    }
}

struct Hedge {
    config: HedgeConfig,
    budget: TpsBudget,
    latencies: Mutex<VecDeque<Duration>>,
}

impl Hedge {
    fn record(&self, latency: Duration) {
        let mut samples = self.latencies.lock().unwrap_or_else(|e| e.into_inner());
        if samples.len() == LATENCY_SAMPLES {
            samples.pop_front();
        }
        samples.push_back(latency);
    }

    /// The hedge delay, or `None` while there are too few samples to know what is slow.
    fn delay(&self) -> Option<Duration> {
        let mut sorted: Vec<Duration> = {
            let samples = self.latencies.lock().unwrap_or_else(|e| e.into_inner());
            if samples.len() < MIN_SAMPLES_TO_HEDGE {
                return None;
            }
            samples.iter().copied().collect()
        };
        sorted.sort_unstable();
        let rank = ((sorted.len() - 1) as f64 * self.config.percentile).round() as usize;
        Some(sorted[rank.min(sorted.len() - 1)].max(self.config.min_delay))
    }
}

/// One member of a failover: a name, a service, and its breaker.
struct Member<S> {
    name: String,
    location: Location,
    service: S,
    breaker: CircuitBreaker,
    served: AtomicU64,
}

struct Shared<S> {
    members: Vec<Member<S>>,
    hedge: Option<Hedge>,
}

/// The failover service over member services `S` (for example [`BlobStoreService`]s, with
/// any layers around them). Clones share the members, breakers and counters.
pub struct Failover<S> {
    shared: Arc<Shared<S>>,
}

impl<S> Clone for Failover<S> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S> fmt::Debug for Failover<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Failover")
            .field(
                "members",
                &self
                    .shared
                    .members
                    .iter()
                    .map(|m| &m.name)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// The state of one member, as [`FailoverHandle::members`] reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberStatus {
    /// The member's name (`<index>:<backend>@<location>` unless given).
    pub name: String,
    /// Where the member runs.
    pub location: Location,
    /// Its breaker's state and counters.
    pub breaker: crate::layers::BreakerSnapshot,
    /// Requests this member answered successfully.
    pub served: u64,
}

/// A view of a failover's members, for observability and tests.
#[derive(Clone)]
pub struct FailoverHandle {
    members: Arc<dyn Fn() -> Vec<MemberStatus> + Send + Sync>,
    breakers: Vec<CircuitBreaker>,
}

impl fmt::Debug for FailoverHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailoverHandle")
            .field("members", &self.members())
            .finish()
    }
}

impl FailoverHandle {
    /// Every member's state, in preference order.
    pub fn members(&self) -> Vec<MemberStatus> {
        (self.members)()
    }

    /// The breaker of member `index` (in preference order), e.g. to trip it by hand.
    pub fn breaker(&self, index: usize) -> Option<&CircuitBreaker> {
        self.breakers.get(index)
    }

    /// The name of the member that new requests go to first: the first whose breaker is not
    /// open.
    pub fn active(&self) -> Option<String> {
        self.members()
            .into_iter()
            .find(|m| m.breaker.state != crate::layers::BreakerState::Open)
            .map(|m| m.name)
    }
}

/// Builds failovers of any of the four traits.
///
/// ```
/// use std::sync::Arc;
/// use cloud_abstraction::storage::{BlobStore, BlobStoreExt};
/// use cloud_abstraction::Location;
/// use paas_components::multicloud::FailoverBuilder;
/// use paas_components::storage::MemoryBlobStore;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> cloud_abstraction::Result<()> {
/// let a: Arc<dyn BlobStore> = Arc::new(MemoryBlobStore::new().with_location(Location::new("aws", "eu-central-1")));
/// let b: Arc<dyn BlobStore> = Arc::new(MemoryBlobStore::new().with_location(Location::new("azure", "westeurope")));
/// b.put_bytes("firmware/v1", "image".into()).await?;
/// let (store, handle) = FailoverBuilder::new().blob_store(vec![a, b])?;
/// // `a` answers NotFound (an answer, not a failure): no failover.
/// assert!(store.get_bytes("firmware/v1").await.is_err());
/// assert_eq!(handle.active().as_deref(), Some("0:memory@aws/eu-central-1"));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct FailoverBuilder {
    breaker: CircuitBreakerConfig,
    hedge: Option<HedgeConfig>,
    names: Vec<String>,
}

impl FailoverBuilder {
    /// Default breakers ([`CircuitBreakerConfig::default`]) and no hedging.
    pub fn new() -> Self {
        Self::default()
    }

    /// The breaker configuration of every member.
    pub fn breaker(mut self, config: CircuitBreakerConfig) -> Self {
        self.breaker = config;
        self
    }

    /// Hedges reads (see [`HedgeConfig`]).
    pub fn hedge(mut self, config: HedgeConfig) -> Self {
        self.hedge = Some(config);
        self
    }

    /// Names the members (in order) instead of `<index>:<backend>@<location>`.
    pub fn names(mut self, names: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.names = names.into_iter().map(Into::into).collect();
        self
    }

    /// The generic failover over already-built member services, with their infos.
    pub fn build<S>(
        self,
        members: Vec<(BackendInfo, S)>,
    ) -> cloud_abstraction::Result<Failover<S>> {
        if members.is_empty() {
            return Err(Error::invalid(
                BACKEND,
                "a failover needs at least one member",
            ));
        }
        if let Some(h) = &self.hedge {
            if !(h.percentile.is_finite() && (0.0..=1.0).contains(&h.percentile)) {
                return Err(Error::invalid(
                    BACKEND,
                    "hedge percentile must be within 0 to 1",
                ));
            }
            if !(h.max_fraction.is_finite() && (0.0..=1.0).contains(&h.max_fraction)) {
                return Err(Error::invalid(
                    BACKEND,
                    "hedge max_fraction must be within 0 to 1",
                ));
            }
        }
        let mut built = Vec::with_capacity(members.len());
        for (index, (info, service)) in members.into_iter().enumerate() {
            let name = self
                .names
                .get(index)
                .cloned()
                .unwrap_or_else(|| format!("{index}:{}@{}", info.backend, info.location));
            let breaker = CircuitBreaker::new(name.clone(), self.breaker.clone())?;
            built.push(Member {
                name,
                location: info.location,
                service,
                breaker,
                served: AtomicU64::new(0),
            });
        }
        let hedge = self.hedge.map(|config| Hedge {
            budget: TpsBudget::new(Duration::from_secs(10), 0, config.max_fraction),
            config,
            latencies: Mutex::new(VecDeque::with_capacity(LATENCY_SAMPLES)),
        });
        Ok(Failover {
            shared: Arc::new(Shared {
                members: built,
                hedge,
            }),
        })
    }
}

impl<S: Send + Sync + 'static> Failover<S> {
    /// A handle for observing the members.
    pub fn handle(&self) -> FailoverHandle {
        let shared = Arc::clone(&self.shared);
        FailoverHandle {
            breakers: self
                .shared
                .members
                .iter()
                .map(|m| m.breaker.clone())
                .collect(),
            members: Arc::new(move || {
                shared
                    .members
                    .iter()
                    .map(|m| MemberStatus {
                        name: m.name.clone(),
                        location: m.location.clone(),
                        breaker: m.breaker.snapshot(),
                        served: m.served.load(Ordering::Relaxed),
                    })
                    .collect()
            }),
        }
    }
}

macro_rules! trait_failover {
    ($(#[$doc:meta])* $fn:ident, $dyn:ident, $svc:ident, $wrapper:ident, $caps:ty) => {
        $(#[$doc])*
        pub fn $fn(
            self,
            members: Vec<Arc<dyn $dyn>>,
        ) -> cloud_abstraction::Result<(Arc<dyn $dyn>, FailoverHandle)> {
            let capabilities = <$caps>::common_of(members.iter().map(|m| m.capabilities()));
            let members: Vec<_> = members
                .into_iter()
                .map(|m| (m.info(), $svc::new(m)))
                .collect();
            let location = members
                .first()
                .map(|(info, _)| info.location.clone())
                .unwrap_or_else(Location::unknown);
            let failover = self.build(members)?;
            let handle = failover.handle();
            let info = BackendInfo {
                backend: BACKEND.into(),
                location,
            };
            // `build` refused an empty member list, so there are capabilities.
            let capabilities = capabilities.ok_or_else(|| Error::internal(BACKEND, "no members"))?;
            Ok((Arc::new($wrapper::new(failover, info, capabilities)), handle))
        }
    };
}

impl FailoverBuilder {
    trait_failover!(
        /// A blob store that fails over between `members` (in preference order).
        blob_store, BlobStore, BlobStoreService, ServiceBlobStore,
        cloud_abstraction::storage::StorageCapabilities
    );
    trait_failover!(
        /// A document store that fails over between `members` (in preference order).
        document_store, DocumentStore, DocumentStoreService, ServiceDocumentStore,
        cloud_abstraction::database::DatabaseCapabilities
    );
    trait_failover!(
        /// A queue that fails over between `members` (in preference order). Publish with
        /// message ids, so that a publish moved to another member stays idempotent.
        message_queue, MessageQueue, MessageQueueService, ServiceMessageQueue,
        cloud_abstraction::queue::QueueCapabilities
    );
    trait_failover!(
        /// A compute backend that fails over between `members` (in preference order).
        compute, Compute, ComputeService, ServiceCompute,
        cloud_abstraction::compute::ComputeCapabilities
    );
}

/// Sends `request` to member `m` under `permit`, recording the outcome and latency.
async fn call_member<S, Req>(
    shared: &Shared<S>,
    m: &Member<S>,
    permit: Permit,
    request: Req,
) -> Result<S::Response, Error>
where
    S: Service<Req, Error = Error> + Clone,
{
    let started = tokio::time::Instant::now();
    let mut service = m.service.clone();
    let result = match std::future::poll_fn(|cx| service.poll_ready(cx)).await {
        Ok(()) => service.call(request).await,
        Err(e) => Err(e),
    };
    permit.record(&result);
    match &result {
        Ok(_) => {
            m.served.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("failover_served_total", "member" => m.name.clone()).increment(1);
            if let Some(hedge) = &shared.hedge {
                hedge.record(started.elapsed());
            }
        }
        Err(e) if e.is_target_failure() => {
            metrics::counter!("failover_moved_total", "from" => m.name.clone()).increment(1);
        }
        Err(_) => {}
    }
    result.map_err(|e| e.or_backend(&m.name))
}

/// The first member from `from` on whose breaker admits a call.
fn next_admitted<S>(
    members: &[Member<S>],
    from: usize,
    errors: &mut Vec<(String, Error)>,
) -> Option<(usize, Permit)> {
    for (i, m) in members.iter().enumerate().skip(from) {
        match m.breaker.try_acquire() {
            Ok(permit) => return Some((i, permit)),
            Err(e) => errors.push((m.name.clone(), e)),
        }
    }
    None
}

fn all_failed(errors: Vec<(String, Error)>) -> Error {
    let temporary = errors
        .iter()
        .any(|(_, e)| e.status() == ErrorStatus::Temporary);
    let listed: Vec<String> = errors
        .iter()
        .map(|(name, e)| format!("{name}: {e}"))
        .collect();
    let error = Error::new(
        ErrorKind::Unavailable,
        BACKEND,
        format!("every member failed ({})", listed.join("; ")),
    );
    let mut errors = errors;
    let error = match errors.pop() {
        Some((_, last)) => error.with_source(last),
        None => error,
    };
    if temporary { error } else { error.persist() }
}

impl<S, Req> Service<Req> for Failover<S>
where
    S: Service<Req, Error = Error> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    Req: LayerRequest + Sync,
{
    type Response = S::Response;
    type Error = Error;
    type Future = BoxFuture<'static, Result<S::Response, Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        // Each member is readied when it is called.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        Box::pin(async move {
            let members = &shared.members;
            let idempotent = request.is_idempotent();
            let mut errors: Vec<(String, Error)> = Vec::new();
            let mut next = 0;
            if let Some(hedge) = &shared.hedge {
                hedge.budget.deposit();
            }
            while let Some((i, permit)) = next_admitted(members, next, &mut errors) {
                next = i + 1;
                let primary = call_member(&shared, &members[i], permit, request.clone());
                let hedge_delay = shared
                    .hedge
                    .as_ref()
                    .filter(|_| request.is_read() && next < members.len())
                    .and_then(Hedge::delay);
                let result = match hedge_delay {
                    None => primary.await,
                    Some(delay) => {
                        let primary = Box::pin(primary);
                        match select(primary, Box::pin(tokio::time::sleep(delay))).await {
                            Either::Left((result, _)) => result,
                            Either::Right(((), primary)) => {
                                let second = shared
                                    .hedge
                                    .as_ref()
                                    .is_some_and(|h| h.budget.withdraw())
                                    .then(|| next_admitted(members, next, &mut errors))
                                    .flatten();
                                match second {
                                    None => primary.await,
                                    Some((j, permit)) => {
                                        next = j + 1;
                                        metrics::counter!("failover_hedged_total").increment(1);
                                        let second = Box::pin(call_member(
                                            &shared,
                                            &members[j],
                                            permit,
                                            request.clone(),
                                        ));
                                        first_success(
                                            primary,
                                            second,
                                            &members[i].name,
                                            &mut errors,
                                        )
                                        .await
                                    }
                                }
                            }
                        }
                    }
                };
                match result {
                    Ok(response) => return Ok(response),
                    Err(e) if e.is_target_failure() && idempotent => {
                        errors.push((members[i].name.clone(), e));
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(all_failed(errors))
        })
    }
}

/// The first successful answer of two racing calls; if both fail, the second error (the
/// first is kept in `errors`).
async fn first_success<T>(
    a: impl std::future::Future<Output = Result<T, Error>> + Unpin,
    b: impl std::future::Future<Output = Result<T, Error>> + Unpin,
    a_name: &str,
    errors: &mut Vec<(String, Error)>,
) -> Result<T, Error> {
    match select(a, b).await {
        Either::Left((Ok(v), _)) | Either::Right((Ok(v), _)) => Ok(v),
        Either::Left((Err(e), other)) => {
            let result = other.await;
            if result.is_err() {
                errors.push((a_name.to_string(), e));
            }
            result
        }
        Either::Right((Err(e), other)) => match other.await {
            Ok(v) => Ok(v),
            Err(first) => {
                errors.push((a_name.to_string(), first));
                Err(e)
            }
        },
    }
}
