//! Queues across clouds: publish to the cell's serving cloud, fail over to the other with the
//! same message id, and execute each message once although delivery is at least once.
//!
//! # Publishing
//!
//! [`CellPublisher::publish`] routes the partition key through a [`CellRouter`] and
//! publishes to the queue of the cloud serving the key's cell. When that fails with a failure
//! of the target ([`Error::is_target_failure`]), it publishes to the cell's other cloud at
//! once, **with the same message id** (one is generated before the first attempt when the
//! message has none). A publish that timed out may still have landed in the first cloud, so
//! the message can then exist in both clouds' queues: that is why consumers must be
//! idempotent (below). Each cloud's queue should sit behind that cloud's breaker (the one the
//! router watches), so that the failures of the publishes open it and move the cell.
//!
//! # Consuming exactly once in effect
//!
//! Consumers run in every cloud and read their own cloud's queue. [`IdempotentConsumer`]
//! records each message id in a (replicated) document store with **create-if-absent** before
//! running the handler, so a redelivery, or the copy of a message published to both clouds,
//! finds the record and is skipped:
//!
//! 1. `create` of `collection/<message id>` with `{"state": "running", "owner", "at_ms"}`.
//!    The first consumer to create it runs the effect; the record is then updated to
//!    `{"state": "done", "result"}` (conditional on the record's revision).
//! 2. Anyone else finds the record: `done` is a [`Delivery::Duplicate`] (ack it);
//!    `running` is another consumer at work: `Unavailable` (nack it with a delay) unless the
//!    claim is older than [`IdempotentConsumer::lease`], when it is taken over (its consumer
//!    is presumed dead) with a conditional write, so only one taker wins.
//! 3. A handler that fails releases the claim (a conditional delete), so a redelivery runs it
//!    again.
//!
//! Each claim carries a token of its own (`"claim"`), because a create whose answer was lost
//! may still have been stored: left alone, that claim would look like another consumer at
//! work, and the message would wait for the whole lease (or, with a long lease, never run:
//! an acknowledged command lost in effect; the two-cloud example found it). So:
//! - a create that reports `AlreadyExists` although the record holds *this* attempt's token
//!   (a retry layer repeated a create that had landed) is this attempt's claim: it goes on;
//! - a create that fails otherwise puts its token on a process-wide list of abandoned claims
//!   (the effect did not run); whoever in this process finds such a claim later takes it over
//!   at once, with a conditional write. Across processes the lease still decides.
//!
//! What this does not cover: a consumer that dies after its effect but before marking the
//! record `done` (or whose `done` write fails: the effect is still reported as executed)
//! leaves a `running` claim that is taken over after the lease, and the effect
//! runs again. Effects that write to the same store keyed by the message id (or that are
//! idempotent themselves) close that gap. With a [replicated store](super::replicate) the
//! create is decided by the id's home member (see
//! [`ReplicationBuilder::home`](super::ReplicationBuilder::home)); during a split in which
//! each side runs consumers of the same message, both creates can succeed, and the replicated
//! store reports that as a conflict.

use super::cell::CellRouter;
use cloud_abstraction::database::{DocumentStore, PutDocumentOptions, WriteCondition};
use cloud_abstraction::queue::Message;
use cloud_abstraction::{Error, ErrorKind, MessageQueue, Result};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const BACKEND: &str = "cell-queue";

/// How many abandoned claim tokens the process remembers (oldest forgotten first: their
/// claims then wait for the lease, as across processes).
const ABANDONED_CLAIMS: usize = 10_000;

/// Tokens of claims whose create failed in this process, so their effect never ran (see the
/// [module docs](self)). Tokens are random, so one list serves every consumer.
#[derive(Default)]
struct AbandonedClaims {
    order: VecDeque<String>,
    tokens: HashSet<String>,
}

fn abandoned_claims() -> std::sync::MutexGuard<'static, AbandonedClaims> {
    static CLAIMS: OnceLock<Mutex<AbandonedClaims>> = OnceLock::new();
    CLAIMS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

impl AbandonedClaims {
    fn insert(&mut self, token: String) {
        if self.tokens.insert(token.clone()) {
            self.order.push_back(token);
            while self.order.len() > ABANDONED_CLAIMS {
                if let Some(old) = self.order.pop_front() {
                    self.tokens.remove(&old);
                }
            }
        }
    }

    fn contains(&self, token: &str) -> bool {
        self.tokens.contains(token)
    }

    fn remove(&mut self, token: &str) {
        if self.tokens.remove(token) {
            self.order.retain(|t| t != token);
        }
    }
}

/// Where a publish landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The key's cell.
    pub cell: String,
    /// The cloud whose queue holds the message.
    pub cloud: String,
    /// The message id (the same in every cloud it was sent to).
    pub id: String,
    /// Whether the serving cloud failed and the other one took it.
    pub failed_over: bool,
}

/// Publishes each key's messages to the queue of the cloud serving its cell (see the
/// [module docs](self)).
#[derive(Clone)]
pub struct CellPublisher {
    router: CellRouter,
    queues: BTreeMap<String, Arc<dyn MessageQueue>>,
}

impl fmt::Debug for CellPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CellPublisher")
            .field("clouds", &self.queues.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl CellPublisher {
    /// A publisher over one queue per cloud of the router's table.
    pub fn new(
        router: CellRouter,
        queues: impl IntoIterator<Item = (String, Arc<dyn MessageQueue>)>,
    ) -> Result<Self> {
        let queues: BTreeMap<_, _> = queues.into_iter().collect();
        for cloud in router.table().clouds() {
            if !queues.contains_key(&cloud) {
                return Err(Error::invalid(
                    BACKEND,
                    format!("no queue for cloud `{cloud}`"),
                ));
            }
        }
        Ok(Self { router, queues })
    }

    /// The router.
    pub fn router(&self) -> &CellRouter {
        &self.router
    }

    /// Publishes `message` for partition key `key` to `topic` in the cloud serving the key's
    /// cell, or in the cell's other cloud when that fails.
    pub async fn publish(&self, key: &str, topic: &str, mut message: Message) -> Result<Published> {
        let route = self.router.route(key)?;
        let id = message
            .id
            .get_or_insert_with(|| uuid::Uuid::new_v4().simple().to_string())
            .clone();
        let first = self.queues[&route.cloud]
            .publish(topic, message.clone())
            .await;
        match first {
            Ok(_) => Ok(Published {
                cell: route.cell,
                cloud: route.cloud,
                id,
                failed_over: false,
            }),
            Err(e) if e.is_target_failure() => {
                metrics::counter!("cell_publish_failed_over_total", "cell" => route.cell.clone(), "from" => route.cloud.clone())
                    .increment(1);
                match self.queues[&route.fallback].publish(topic, message).await {
                    Ok(_) => Ok(Published {
                        cell: route.cell,
                        cloud: route.fallback,
                        id,
                        failed_over: true,
                    }),
                    Err(second) => Err(Error::new(
                        ErrorKind::Unavailable,
                        BACKEND,
                        format!(
                            "publish for cell `{}` failed in `{}` ({e}) and in `{}` ({second})",
                            route.cell, route.cloud, route.fallback
                        ),
                    )
                    .with_source(second)),
                }
            }
            Err(e) => Err(e),
        }
    }
}

/// What [`IdempotentConsumer::run`] did with a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery<T> {
    /// The effect ran now (the first delivery), with its result.
    Executed(T),
    /// The message was already executed: nothing ran (ack it). Holds the recorded result.
    Duplicate(Value),
}

/// Runs each message's effect once per message id, recording ids in a document store with
/// create-if-absent (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct IdempotentConsumer {
    store: Arc<dyn DocumentStore>,
    collection: String,
    owner: String,
    lease: Duration,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl IdempotentConsumer {
    /// Records message ids in `collection` of `store`; `owner` names this consumer in the
    /// records. Lease: 60 s.
    pub fn new(
        store: Arc<dyn DocumentStore>,
        collection: impl Into<String>,
        owner: impl Into<String>,
    ) -> Result<Self> {
        let collection = collection.into();
        cloud_abstraction::validate::resource_name(BACKEND, "collection", &collection)?;
        Ok(Self {
            store,
            collection,
            owner: owner.into(),
            lease: Duration::from_secs(60),
        })
    }

    /// After how long a `running` claim is presumed abandoned and taken over.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Runs `effect` if message `id` was not executed yet; its result (JSON) is recorded.
    /// Errors of the store are returned as they are (retryable ones: nack and retry); an
    /// `Unavailable` also comes back while another consumer holds a live claim.
    pub async fn run<T, F, Fut>(&self, id: &str, effect: F) -> Result<Delivery<T>>
    where
        T: serde::Serialize,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let claim =
            json!({"state": "running", "owner": self.owner, "at_ms": now_ms(), "claim": token});
        let revision = match self
            .store
            .put(
                &self.collection,
                id,
                claim.clone(),
                PutDocumentOptions::create(),
            )
            .await
        {
            Ok(revision) => revision,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::AlreadyExists | ErrorKind::PreconditionFailed
                ) =>
            {
                let Some(existing) = self.store.get(&self.collection, id).await? else {
                    // Released between our create and our read: let the redelivery retry.
                    return Err(Error::unavailable(
                        BACKEND,
                        format!("message `{id}` was released by another consumer; retry"),
                    ));
                };
                if existing.value["state"] == "done" {
                    metrics::counter!("idempotent_duplicates_total").increment(1);
                    return Ok(Delivery::Duplicate(existing.value["result"].clone()));
                }
                let holder = existing.value["claim"].as_str().unwrap_or_default();
                if holder == token {
                    // Our own create landed and a retry of it reported the record.
                    existing.revision
                } else {
                    let abandoned = !holder.is_empty() && abandoned_claims().contains(holder);
                    let at = existing.value["at_ms"].as_u64().unwrap_or(0);
                    if !abandoned && now_ms().saturating_sub(at) < self.lease.as_millis() as u64 {
                        return Err(Error::unavailable(
                            BACKEND,
                            format!("message `{id}` is being executed by another consumer"),
                        ));
                    }
                    // Conditional: of several takers, one wins.
                    let taken = self
                        .store
                        .put(
                            &self.collection,
                            id,
                            claim,
                            PutDocumentOptions::if_revision(existing.revision),
                        )
                        .await;
                    match taken {
                        Ok(revision) => {
                            abandoned_claims().remove(holder);
                            revision
                        }
                        Err(e) => {
                            if e.kind() != ErrorKind::PreconditionFailed {
                                abandoned_claims().insert(token);
                            }
                            return Err(e);
                        }
                    }
                }
            }
            Err(e) => {
                // The create may have been stored although it failed: if so, that claim is
                // abandoned (nothing ran), and its message must not wait for the lease.
                abandoned_claims().insert(token);
                return Err(e);
            }
        };
        match effect().await {
            Ok(result) => {
                let value = serde_json::to_value(&result)
                    .map_err(|e| Error::invalid(BACKEND, format!("the result is not JSON: {e}")))?;
                let done = json!({"state": "done", "owner": self.owner, "at_ms": now_ms(), "result": value});
                if let Err(e) = self
                    .store
                    .put(
                        &self.collection,
                        id,
                        done,
                        PutDocumentOptions::if_revision(revision),
                    )
                    .await
                {
                    // The effect ran: report it (the caller acks). The record stays
                    // `running` until the lease ends; only a redelivery after that runs it
                    // again.
                    tracing::warn!(id, error = %e, "effect executed but its record not marked done");
                }
                Ok(Delivery::Executed(result))
            }
            Err(e) => {
                // Best effort: if the release fails, the claim expires after the lease.
                let _ = self
                    .store
                    .delete(&self.collection, id, WriteCondition::Revision(revision))
                    .await;
                Err(e)
            }
        }
    }
}

#[cfg(all(test, feature = "memory"))]
mod tests {
    use super::*;
    use crate::database::MemoryDocumentStore;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn a_publish_fails_over_to_the_standby_with_its_id() {
        use crate::layers::{self, CircuitBreaker, CircuitBreakerConfig, FaultInjector};
        use crate::multicloud::cell::{CloudHealth, RouterConfig, RoutingTable};
        use crate::queue::MemoryQueue;
        use cloud_abstraction::queue::{GroupOptions, ReceiveOptions};
        let breaker_a = CircuitBreaker::new("a", CircuitBreakerConfig::default()).unwrap();
        let breaker_b = CircuitBreaker::new("b", CircuitBreakerConfig::default()).unwrap();
        let raw_a: Arc<dyn MessageQueue> = Arc::new(MemoryQueue::new());
        let raw_b: Arc<dyn MessageQueue> = Arc::new(MemoryQueue::new());
        for q in [&raw_a, &raw_b] {
            q.create_topic("t").await.unwrap();
            q.create_group("t", "g", GroupOptions::default())
                .await
                .unwrap();
        }
        let fault = FaultInjector::new(1);
        let a = layers::message_queue(
            Arc::clone(&raw_a),
            tower::ServiceBuilder::new()
                .layer(breaker_a.layer())
                .layer(fault.layer()),
        );
        let b = layers::message_queue(Arc::clone(&raw_b), breaker_b.layer());
        let table = RoutingTable::new()
            .weighted_cell("c", "a", "b", 0.0)
            .unwrap()
            .explicit("WVW-1", "c")
            .unwrap();
        let router = CellRouter::new(
            table,
            vec![
                CloudHealth::new("a", breaker_a.clone()),
                CloudHealth::new("b", breaker_b),
            ],
            RouterConfig::default(),
        )
        .unwrap();
        let publisher =
            CellPublisher::new(router.clone(), [("a".to_string(), a), ("b".to_string(), b)])
                .unwrap();
        let home = publisher
            .publish("WVW-1", "t", Message::new("x"))
            .await
            .unwrap();
        assert_eq!((home.cloud.as_str(), home.failed_over), ("a", false));
        fault.set_down(true);
        let moved = publisher
            .publish("WVW-1", "t", Message::new("y").with_id("cmd-2"))
            .await
            .unwrap();
        assert_eq!(
            (moved.cloud.as_str(), moved.id.as_str(), moved.failed_over),
            ("b", "cmd-2", true)
        );
        let got = raw_b
            .receive("t", "g", ReceiveOptions::default())
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].id, "cmd-2");
        // Enough failures open a's breaker: the cell moves, publishes go to b directly.
        for _ in 0..5 {
            publisher
                .publish("WVW-1", "t", Message::new("z"))
                .await
                .unwrap();
        }
        assert_eq!(router.route("WVW-1").unwrap().cloud, "b");
        assert!(
            publisher
                .publish("nobody", "t", Message::new("z"))
                .await
                .is_err()
        );
    }

    /// A message executed in cloud B while cloud A (the id's home) was down, then delivered
    /// again in cloud A after it came back but before its hints were replayed: the record
    /// must be found, not created a second time by the stale home.
    #[tokio::test]
    async fn a_home_that_is_behind_does_not_run_a_message_again() {
        use crate::layers::{self, CircuitBreakerConfig, FaultInjector};
        use crate::multicloud::ReplicationBuilder;
        let fault = FaultInjector::new(1);
        let a = layers::document_store(Arc::new(MemoryDocumentStore::new()), fault.layer());
        let store = ReplicationBuilder::new()
            .member("a", a)
            .member("b", Arc::new(MemoryDocumentStore::new()))
            .breaker(CircuitBreakerConfig {
                consecutive_failures: 1,
                ..CircuitBreakerConfig::default()
            })
            .without_background_replay()
            .build()
            .await
            .unwrap();
        let shared: Arc<dyn DocumentStore> = Arc::new(store.clone());
        let in_b = IdempotentConsumer::new(Arc::clone(&shared), "executed", "b").unwrap();
        let in_a = IdempotentConsumer::new(shared, "executed", "a").unwrap();
        let runs = AtomicU32::new(0);
        let effect = || async {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Error>("done")
        };
        fault.set_down(true);
        assert_eq!(
            in_b.run("m1", effect).await.unwrap(),
            Delivery::Executed("done")
        );
        fault.set_down(false);
        store.breaker(0).unwrap().reset();
        assert!(store.is_behind(0), "a's hints are not replayed yet");
        assert_eq!(
            in_a.run("m1", effect).await.unwrap(),
            Delivery::Duplicate(json!("done"))
        );
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(store.conflict_count(), 0);
    }

    /// A create whose reply was lost stored its claim: the redelivery (to the same consumer
    /// or another one in the process) must run the effect at once, not wait for the lease.
    #[tokio::test]
    async fn a_claim_whose_create_lost_its_reply_is_taken_over_at_once() {
        use crate::layers::{self, FaultInjector};
        let raw: Arc<dyn DocumentStore> = Arc::new(MemoryDocumentStore::new());
        let fault = FaultInjector::new(1);
        let store = layers::document_store(Arc::clone(&raw), fault.layer());
        let first = IdempotentConsumer::new(Arc::clone(&store), "executed", "c1").unwrap();
        let second = IdempotentConsumer::new(store, "executed", "c2").unwrap();
        let runs = AtomicU32::new(0);
        let effect = || async {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Error>("ok")
        };
        for (id, redelivered_to) in [("m1", &first), ("m2", &second)] {
            fault.set_lose_replies(true);
            assert!(first.run(id, effect).await.is_err(), "the reply was lost");
            fault.set_lose_replies(false);
            let claim = raw
                .get("executed", id)
                .await
                .unwrap()
                .expect("claim stored");
            assert_eq!(claim.value["state"], "running");
            let before = runs.load(Ordering::SeqCst);
            assert_eq!(
                redelivered_to.run(id, effect).await.unwrap(),
                Delivery::Executed("ok"),
                "{id}: the abandoned claim is taken over within the 60 s lease"
            );
            assert_eq!(runs.load(Ordering::SeqCst), before + 1);
            assert_eq!(
                first.run(id, effect).await.unwrap(),
                Delivery::Duplicate(json!("ok"))
            );
        }
        assert_eq!(runs.load(Ordering::SeqCst), 2, "each id ran once");
    }

    #[tokio::test]
    async fn each_id_runs_once_and_failures_release_the_claim() {
        let store: Arc<dyn DocumentStore> = Arc::new(MemoryDocumentStore::new());
        let consumer = IdempotentConsumer::new(Arc::clone(&store), "executed", "c1").unwrap();
        let runs = AtomicU32::new(0);
        let effect = || async {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Error>(7)
        };
        assert_eq!(
            consumer.run("m1", effect).await.unwrap(),
            Delivery::Executed(7)
        );
        assert_eq!(
            consumer.run("m1", effect).await.unwrap(),
            Delivery::Duplicate(json!(7))
        );
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        let failing = consumer
            .run("m2", || async {
                Err::<u32, _>(Error::unavailable("t", "boom"))
            })
            .await;
        assert!(failing.is_err());
        assert!(
            store.get("executed", "m2").await.unwrap().is_none(),
            "claim released"
        );
        assert_eq!(
            consumer.run("m2", effect).await.unwrap(),
            Delivery::Executed(7)
        );
        // A live claim of another consumer is not taken over; an expired one is.
        store
            .put(
                "executed",
                "m3",
                json!({"state": "running", "owner": "dead", "at_ms": now_ms()}),
                PutDocumentOptions::create(),
            )
            .await
            .unwrap();
        let busy = consumer.run("m3", effect).await.unwrap_err();
        assert_eq!(busy.kind(), ErrorKind::Unavailable);
        let impatient = consumer.clone().lease(Duration::ZERO);
        assert_eq!(
            impatient.run("m3", effect).await.unwrap(),
            Delivery::Executed(7)
        );
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }
}
