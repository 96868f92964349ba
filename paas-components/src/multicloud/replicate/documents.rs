//! The replicated document store: one [`DocumentStore`] over members in several clouds.
//!
//! See the [module docs](super) for the guarantees; this file is the write and read paths.

use super::hints::{self, Hint};
use super::version::Version;
use super::{Applied, ConflictSink, Lineage, Member, ReplayReport, Replicas, ReplicationConfig};
use crate::layers::CircuitBreaker;
use async_trait::async_trait;
use cloud_abstraction::capabilities::CommonCapabilities;
use cloud_abstraction::database::{
    DatabaseCapabilities, Document, DocumentStore, Filter, OrderBy, PutDocumentOptions, Query,
    QueryPage, Revision, WriteCondition, WriteOp, WriteOutcome,
};
use cloud_abstraction::{BackendInfo, Error, ErrorKind, Result, validate};
use futures::future::join_all;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

pub(crate) const BACKEND: &str = "replicated";
/// Room kept for the envelope inside a member's document size limit.
const ENVELOPE_OVERHEAD: u64 = 512;
use super::MAX_ATTEMPTS;

/// How a replicated item is stored in each member: the user's document inside an envelope
/// that carries the replication version, the portable revision and the tombstone flag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Envelope {
    /// Marks the document as a wrapper ([`validate::WRAPPER_MARKER`]), so that members accept
    /// the one extra level of nesting the envelope adds.
    #[serde(rename = "_wrapped", default = "wrapper_marker")]
    pub(crate) wrapped: u8,
    /// The document id again, so that repair can page by it with a range filter.
    pub(crate) k: String,
    /// The replication version.
    pub(crate) rv: Version,
    /// The version this write replaced where it was decided (its parent), so that two
    /// versions that did not see each other can be told from a member that is just behind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) p: Option<Version>,
    /// The portable revision the store reports (1 for a new document, +1 per write).
    pub(crate) n: u64,
    /// A tombstone: the document was deleted at `rv`.
    #[serde(default)]
    pub(crate) del: bool,
    /// The user's document (null in a tombstone).
    #[serde(default)]
    pub(crate) v: Value,
}

fn wrapper_marker() -> u8 {
    1
}

impl Envelope {
    pub(crate) fn to_value(&self) -> Value {
        // Serializing plain data into a Value cannot fail.
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    pub(crate) fn from_document(member: &str, doc: &Document) -> Result<Self> {
        serde_json::from_value(doc.value.clone()).map_err(|e| {
            Error::internal(
                BACKEND,
                format!(
                    "member `{member}` holds document `{}` that the replicated store did not write ({e})",
                    doc.id
                ),
            )
        })
    }

    fn live(&self) -> bool {
        !self.del
    }

    pub(crate) fn lineage(&self) -> Lineage<'_> {
        Lineage {
            rv: &self.rv,
            parent: self.p.as_ref(),
        }
    }
}

/// What one member holds for one key: its own revision and the envelope.
#[derive(Debug, Clone)]
pub(crate) struct MemberState {
    pub(crate) revision: Revision,
    pub(crate) envelope: Envelope,
    pub(crate) expires_at: Option<SystemTime>,
}

impl MemberState {
    pub(crate) fn from_document(member: &str, doc: &Document) -> Result<Self> {
        Ok(Self {
            revision: doc.revision,
            envelope: Envelope::from_document(member, doc)?,
            expires_at: doc.expires_at,
        })
    }

    /// The TTL a copy written now needs to expire at the same moment; `Err` if already gone.
    pub(crate) fn remaining_ttl(&self) -> std::result::Result<Option<Duration>, ()> {
        match self.expires_at {
            None => Ok(None),
            Some(at) => match at.duration_since(SystemTime::now()) {
                Ok(left) if !left.is_zero() => Ok(Some(left)),
                _ => Err(()),
            },
        }
    }
}

/// A member document store.
pub(crate) type DocMember = Member<dyn DocumentStore>;

impl DocMember {
    /// Whether the member has atomic `write_batch` (a hint can go with its write).
    pub(crate) fn transactions(&self) -> bool {
        self.store.capabilities().transactions
    }

    pub(crate) async fn read(&self, collection: &str, id: &str) -> Result<Option<MemberState>> {
        let doc = self
            .call(|s| async move { s.get(collection, id).await })
            .await?;
        doc.map(|d| MemberState::from_document(&self.name, &d))
            .transpose()
    }
}

pub(crate) struct Inner {
    pub(crate) replicas: Replicas<dyn DocumentStore>,
    pub(crate) capabilities: DatabaseCapabilities,
}

impl std::ops::Deref for Inner {
    type Target = Replicas<dyn DocumentStore>;
    fn deref(&self) -> &Self::Target {
        &self.replicas
    }
}

impl super::HintLog for Inner {
    type Store = dyn DocumentStore;
    fn replicas(&self) -> &Replicas<dyn DocumentStore> {
        &self.replicas
    }
    async fn replay_from(
        &self,
        holder: &DocMember,
        target: &DocMember,
        report: &mut ReplayReport,
    ) -> Result<()> {
        hints::replay_from(self, holder, target, report).await
    }
    async fn holds_hints(&self, holder: &DocMember, target: &str) -> Option<bool> {
        hints::count_for(self, holder, target, 1)
            .await
            .map(|n| n > 0)
    }
}

/// A [`DocumentStore`] replicated active-active over several members (see the
/// [module docs](super)). Clones share everything.
#[derive(Clone)]
pub struct ReplicatedDocumentStore {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for ReplicatedDocumentStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicatedDocumentStore")
            .field(
                "members",
                &self
                    .inner
                    .members
                    .iter()
                    .map(|m| &m.name)
                    .collect::<Vec<_>>(),
            )
            .field("origin", &self.inner.clock.origin())
            .finish_non_exhaustive()
    }
}

/// Per-member view of a key, as read at the start of a write.
type Reads = Vec<Result<Option<MemberState>>>;

impl super::Held for MemberState {
    fn lineage(&self) -> Lineage<'_> {
        self.envelope.lineage()
    }
}

/// Writes `envelope` to `member` only if it is newer (see [`super::apply_if_newer`]), with a
/// write conditional on the member's revision; `extra_ops` go into the same atomic batch
/// where the member has transactions.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn apply_if_newer(
    member: &DocMember,
    collection: &str,
    envelope: &Envelope,
    ttl: Option<Duration>,
    known: Option<Option<MemberState>>,
    extra_ops: &[WriteOp],
    conflicts: &ConflictSink,
    strict: bool,
) -> Result<Applied> {
    let incoming = super::Incoming {
        member: &member.name,
        collection,
        id: &envelope.k,
        lineage: envelope.lineage(),
        what: "document",
    };
    super::apply_if_newer(
        incoming,
        conflicts,
        strict,
        known,
        || member.read(collection, &envelope.k),
        |state: &MemberState| state.envelope.rv >= envelope.rv,
        |current: Option<&MemberState>| {
            let condition = match current {
                None => WriteCondition::Absent,
                Some(state) => WriteCondition::Revision(state.revision),
            };
            let options = PutDocumentOptions { condition, ttl };
            let value = envelope.to_value();
            let batch = (!extra_ops.is_empty() && member.transactions()).then(|| {
                let mut ops = extra_ops.to_vec();
                ops.push(WriteOp::Put {
                    collection: collection.to_string(),
                    id: envelope.k.clone(),
                    value: value.clone(),
                    options: options.clone(),
                });
                ops
            });
            async move {
                match batch {
                    Some(ops) => {
                        member
                            .call(|s| async move { s.write_batch(ops).await.map(|_| ()) })
                            .await
                    }
                    None => {
                        member
                            .call(|s| async move {
                                s.put(collection, &envelope.k, value, options)
                                    .await
                                    .map(|_| ())
                            })
                            .await
                    }
                }
            }
        },
    )
    .await
}

/// Checks `condition` against the deciding member's envelope (a tombstone is absent).
fn check_condition(base: Option<&Envelope>, condition: WriteCondition) -> Result<()> {
    let current = base.filter(|e| e.live()).map(|e| Revision(e.n));
    condition.check(BACKEND, current)
}

/// What a write does to one key: a new value (with its TTL) or a delete.
struct Change {
    delete: bool,
    value: Value,
    ttl: Option<Duration>,
}

/// One key's planned change within a write.
struct Planned {
    collection: String,
    envelope: Envelope,
    ttl: Option<Duration>,
    /// What each member held when the write began.
    reads: Reads,
}

impl ReplicatedDocumentStore {
    super::replica_handle_methods!();

    fn check_collection(&self, collection: &str) -> Result<()> {
        validate::resource_name(BACKEND, "collection", collection)?;
        if collection == self.inner.config.hints_collection {
            return Err(Error::invalid(
                BACKEND,
                format!("collection `{collection}` is reserved for replication hints"),
            ));
        }
        Ok(())
    }

    fn check_put(
        &self,
        collection: &str,
        id: &str,
        value: &Value,
        options: &PutDocumentOptions,
    ) -> Result<()> {
        self.check_collection(collection)?;
        validate::document_id(BACKEND, id)?;
        validate::document_depth(BACKEND, value)?;
        if options.ttl.is_some() && !self.inner.capabilities.ttl {
            return Err(Error::unsupported(BACKEND, "a document TTL"));
        }
        if let Some(max) = self.inner.capabilities.max_document_size {
            let len = serde_json::to_vec(value)
                .map(|v| v.len())
                .unwrap_or(usize::MAX);
            validate::payload_size(BACKEND, "the serialized document", len, Some(max))?;
        }
        Ok(())
    }

    /// Reads `(collection, id)` from every member at once.
    async fn read_all(&self, collection: &str, id: &str) -> Reads {
        join_all(self.inner.members.iter().map(|m| m.read(collection, id))).await
    }

    /// The state a write of a key is decided on: the deciding member's; but while that member
    /// is behind (back after an outage, hinted writes not yet replayed), the newest envelope
    /// any member answered with. Otherwise a home that is back but stale would check a
    /// condition (e.g. create-if-absent) against a state older than what was acknowledged,
    /// and let it succeed twice.
    fn base(&self, decider: usize, reads: &Reads) -> Option<Envelope> {
        let own = |i: usize| {
            reads[i]
                .as_ref()
                .ok()
                .and_then(|s| s.as_ref())
                .map(|s| s.envelope.clone())
        };
        if !self.inner.members[decider].behind.load(Ordering::Acquire) {
            return own(decider);
        }
        (0..reads.len())
            .filter_map(own)
            .max_by(|a, b| a.rv.cmp(&b.rv))
    }

    fn plan(
        &self,
        collection: &str,
        id: &str,
        reads: Reads,
        base: Option<&Envelope>,
        change: Change,
    ) -> Planned {
        let Change { delete, value, ttl } = change;
        let newest = reads
            .iter()
            .filter_map(|r| r.as_ref().ok().and_then(|s| s.as_ref()))
            .map(|s| &s.envelope.rv)
            .max()
            .cloned();
        if let Some(v) = &newest {
            self.inner.clock.observe(v.timestamp);
        }
        let rv = self.inner.clock.next(newest.as_ref());
        let n = base.filter(|e| e.live()).map_or(1, |e| e.n + 1);
        let (ttl, value) = if delete {
            (
                Some(self.inner.config.tombstone_grace).filter(|_| self.inner.capabilities.ttl),
                Value::Null,
            )
        } else {
            (ttl, value)
        };
        Planned {
            collection: collection.to_string(),
            envelope: Envelope {
                wrapped: 1,
                k: id.to_string(),
                rv,
                p: None,
                n,
                del: delete,
                v: value,
            },
            ttl,
            reads,
        }
    }

    /// Applies planned changes to every member (the decider first if `decider_first`), records
    /// hints for members that did not take them, and says whether the write is acknowledged.
    async fn replicate(
        &self,
        planned: &[Planned],
        decider: usize,
        decider_first: bool,
    ) -> Result<()> {
        let members = &self.inner.members;
        let unreachable: Vec<usize> = (0..members.len())
            .filter(|&i| planned.iter().any(|p| p.reads[i].is_err()))
            .collect();
        // Known-down members get their hints in the same atomic batch as the write, where the
        // member can (a write and its hint are never separated by a crash there).
        let hints_for = |holder: usize| -> Vec<WriteOp> {
            unreachable
                .iter()
                .filter(|&&t| t != holder)
                .flat_map(|&t| planned.iter().map(move |p| (t, p)))
                .map(|(t, p)| {
                    hints::put_op(
                        &self.inner.config.hints_collection,
                        &Hint::new(
                            &members[t].name,
                            &p.collection,
                            &p.envelope.k,
                            &p.envelope.rv,
                        ),
                    )
                })
                .collect()
        };
        // `Ok(true)`: the member took every change, and the hints for the known-down members
        // went in the same atomic batch.
        let strict_decider = decider_first.then_some(decider);
        let apply_member = |i: usize| {
            let member = &members[i];
            let extra = hints_for(i);
            let single = planned.len() == 1;
            async move {
                let mut hints_in_batch = single && member.transactions() && !extra.is_empty();
                for p in planned {
                    let known = match &p.reads[i] {
                        Ok(state) => Some(state.clone()),
                        Err(_) => None,
                    };
                    let applied = apply_if_newer(
                        member,
                        &p.collection,
                        &p.envelope,
                        p.ttl,
                        known,
                        if single { &extra } else { &[] },
                        &self.inner.conflicts,
                        strict_decider == Some(i),
                    )
                    .await?;
                    if !matches!(applied, Applied::Written) {
                        hints_in_batch = false;
                    }
                }
                Ok::<bool, Error>(hints_in_batch)
            }
        };
        // Members already known to be down are not tried: they get hints.
        let mut results: Vec<Option<Result<bool>>> = (0..members.len()).map(|_| None).collect();
        if decider_first {
            // The deciding member refused or failed: nothing is acknowledged. What it may
            // still have applied is repaired later, never reported as done.
            let r = apply_member(decider).await?;
            results[decider] = Some(Ok(r));
        }
        let rest: Vec<usize> = (0..members.len())
            .filter(|&i| results[i].is_none() && !unreachable.contains(&i))
            .collect();
        let done = join_all(rest.iter().map(|&i| apply_member(i))).await;
        for (i, r) in rest.into_iter().zip(done) {
            results[i] = Some(r);
        }
        let holders: Vec<usize> = (0..members.len())
            .filter(|&i| matches!(&results[i], Some(Ok(_))))
            .collect();
        if holders.is_empty() {
            let first = results.into_iter().flatten().find_map(Result::err);
            return Err(
                first.unwrap_or_else(|| Error::unavailable(BACKEND, "no member took the write"))
            );
        }
        let missing: Vec<usize> = (0..members.len())
            .filter(|i| !holders.contains(i))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        // Every missing member needs a durable hint on at least one holder before the ack.
        for &t in &missing {
            members[t].behind.store(true, Ordering::Release);
            let mut recorded = false;
            for &h in &holders {
                let in_batch = unreachable.contains(&t) && matches!(&results[h], Some(Ok(true)));
                if in_batch {
                    recorded = true;
                    continue;
                }
                let ops: Vec<WriteOp> = planned
                    .iter()
                    .map(|p| {
                        hints::put_op(
                            &self.inner.config.hints_collection,
                            &Hint::new(
                                &members[t].name,
                                &p.collection,
                                &p.envelope.k,
                                &p.envelope.rv,
                            ),
                        )
                    })
                    .collect();
                if hints::record(&members[h], ops).await.is_ok() {
                    recorded = true;
                }
            }
            if !recorded {
                return Err(Error::unavailable(
                    BACKEND,
                    format!(
                        "member `{}` missed the write and no hint for it could be recorded; not acknowledged",
                        members[t].name
                    ),
                ));
            }
            self.inner.count_hints_written(t, planned.len() as u64);
        }
        self.inner.replay_wanted.notify_one();
        Ok(())
    }

    async fn write_one(
        &self,
        collection: &str,
        id: &str,
        condition: WriteCondition,
        delete: bool,
        value: Value,
        ttl: Option<Duration>,
    ) -> Result<(Revision, bool)> {
        let order = self.inner.decision_order(collection, id);
        let conditional = condition != WriteCondition::Any;
        for _ in 0..MAX_ATTEMPTS {
            let reads = self.read_all(collection, id).await;
            let decider = self.inner.decider(BACKEND, &order, &reads)?;
            let base = self.base(decider, &reads);
            check_condition(base.as_ref(), condition)?;
            let existed = base.as_ref().is_some_and(Envelope::live);
            let any_live = reads
                .iter()
                .any(|r| matches!(r, Ok(Some(s)) if s.envelope.live()));
            if delete && !any_live && reads.iter().all(Result::is_ok) {
                // Nothing to delete anywhere: no tombstone needed. (A member that did not
                // answer may hold a write that failed for its caller but landed there: it
                // gets the tombstone through a hint.)
                return Ok((Revision(0), false));
            }
            let change = Change {
                delete,
                value: value.clone(),
                ttl,
            };
            let mut planned = self.plan(collection, id, reads, base.as_ref(), change);
            planned.envelope.p = base.map(|e| e.rv);
            match self
                .replicate(std::slice::from_ref(&planned), decider, conditional)
                .await
            {
                // A concurrent writer changed the key on the deciding member between our read
                // and our write: decide the condition again on what is there now.
                Err(e)
                    if conditional
                        && e.kind() == ErrorKind::PreconditionFailed
                        && e.backend() != BACKEND => {}
                Err(e) => return Err(e),
                Ok(()) => return Ok((Revision(planned.envelope.n), existed)),
            }
        }
        Err(Error::unavailable(
            BACKEND,
            format!("document `{id}` kept changing under a conditional write; try again"),
        ))
    }
}

/// Unwraps a member document into the user's document (`None` for a tombstone).
fn unwrap_document(member: &str, doc: Document) -> Result<Option<Document>> {
    let state = MemberState::from_document(member, &doc)?;
    if state.envelope.del {
        return Ok(None);
    }
    Ok(Some(Document {
        id: state.envelope.k,
        value: state.envelope.v,
        revision: Revision(state.envelope.n),
        expires_at: doc.expires_at,
    }))
}

fn member_path(field: &str) -> String {
    format!("v.{field}")
}

const CURSOR_PREFIX: &str = "rm";

#[async_trait]
impl DocumentStore for ReplicatedDocumentStore {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            backend: BACKEND.to_string(),
            location: self.inner.location.clone(),
        }
    }

    fn capabilities(&self) -> DatabaseCapabilities {
        self.inner.capabilities.clone()
    }

    async fn get(&self, collection: &str, id: &str) -> Result<Option<Document>> {
        self.check_collection(collection)?;
        validate::document_id(BACKEND, id)?;
        self.inner
            .read_from_any(BACKEND, |_, m| async move {
                let doc = m
                    .call(|s| async move { s.get(collection, id).await })
                    .await?;
                match doc {
                    None => Ok(None),
                    Some(doc) => unwrap_document(&m.name, doc),
                }
            })
            .await
    }

    async fn get_many(&self, collection: &str, ids: &[String]) -> Result<Vec<Option<Document>>> {
        self.check_collection(collection)?;
        for id in ids {
            validate::document_id(BACKEND, id)?;
        }
        self.inner
            .read_from_any(BACKEND, |_, m| async move {
                let docs = m
                    .call(|s| async move { s.get_many(collection, ids).await })
                    .await?;
                docs.into_iter()
                    .map(|d| match d {
                        None => Ok(None),
                        Some(d) => unwrap_document(&m.name, d),
                    })
                    .collect()
            })
            .await
    }

    async fn put(
        &self,
        collection: &str,
        id: &str,
        value: Value,
        options: PutDocumentOptions,
    ) -> Result<Revision> {
        self.check_put(collection, id, &value, &options)?;
        let (revision, _) = self
            .write_one(collection, id, options.condition, false, value, options.ttl)
            .await?;
        Ok(revision)
    }

    async fn delete(&self, collection: &str, id: &str, condition: WriteCondition) -> Result<bool> {
        self.check_collection(collection)?;
        validate::document_id(BACKEND, id)?;
        let (_, existed) = self
            .write_one(collection, id, condition, true, Value::Null, None)
            .await?;
        Ok(existed)
    }

    async fn write_batch(&self, ops: Vec<WriteOp>) -> Result<Vec<WriteOutcome>> {
        if !self.inner.capabilities.transactions {
            return Err(Error::unsupported(BACKEND, "write_batch"));
        }
        for op in &ops {
            match op {
                WriteOp::Put {
                    collection,
                    id,
                    value,
                    options,
                } => self.check_put(collection, id, value, options)?,
                WriteOp::Delete { collection, id, .. } => {
                    self.check_collection(collection)?;
                    validate::document_id(BACKEND, id)?;
                }
            }
        }
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        // Read every key once, on every member.
        let mut keys: Vec<(String, String)> = Vec::new();
        for op in &ops {
            let (WriteOp::Put { collection, id, .. } | WriteOp::Delete { collection, id, .. }) = op;
            let key = (collection.clone(), id.clone());
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        let mut reads: HashMap<(String, String), Reads> = HashMap::new();
        for ((c, id), r) in keys
            .iter()
            .zip(join_all(keys.iter().map(|(c, id)| self.read_all(c, id))).await)
        {
            reads.insert((c.clone(), id.clone()), r);
        }
        // One decider for the whole batch: the first key's home, else the first member that
        // answered every read.
        let (c0, id0) = &keys[0];
        let order = self.inner.decision_order(c0, id0);
        let decider = order
            .iter()
            .copied()
            .find(|&i| reads.values().all(|r| r[i].is_ok()))
            .ok_or_else(|| self.inner.none_reachable(BACKEND, &reads[&keys[0]]))?;
        // Apply the ops in order to the decider's view, checking each condition.
        let mut view: BTreeMap<(String, String), Option<Envelope>> = keys
            .iter()
            .map(|k| (k.clone(), self.base(decider, &reads[k])))
            .collect();
        let mut ttls: HashMap<(String, String), Option<Duration>> = HashMap::new();
        let mut touched: Vec<(String, String)> = Vec::new();
        let mut outcomes = Vec::with_capacity(ops.len());
        for op in ops {
            let (key, condition, delete, value, ttl) = match op {
                WriteOp::Put {
                    collection,
                    id,
                    value,
                    options,
                } => (
                    (collection, id),
                    options.condition,
                    false,
                    value,
                    options.ttl,
                ),
                WriteOp::Delete {
                    collection,
                    id,
                    condition,
                } => ((collection, id), condition, true, Value::Null, None),
            };
            let current = view.get(&key).cloned().flatten();
            check_condition(current.as_ref(), condition)?;
            let existed = current.as_ref().is_some_and(Envelope::live);
            if delete && !existed {
                // As in `write_one`: nothing to delete where the batch is decided, but a
                // member that did not answer, or that holds a live copy (a write that failed
                // for its caller but landed there), still gets a tombstone, or that copy
                // would come back.
                let unsure = !touched.contains(&key)
                    && reads.get(&key).is_some_and(|per_member| {
                        per_member.iter().any(|r| {
                            r.as_ref()
                                .map_or(true, |s| s.as_ref().is_some_and(|s| s.envelope.live()))
                        })
                    });
                if !unsure {
                    outcomes.push(WriteOutcome::Deleted(false));
                    continue;
                }
            }
            let n = current.as_ref().filter(|e| e.live()).map_or(1, |e| e.n + 1);
            view.insert(
                key.clone(),
                Some(Envelope {
                    wrapped: 1,
                    k: key.1.clone(),
                    rv: Version {
                        timestamp: 0,
                        origin: String::new(),
                    },
                    p: None,
                    n,
                    del: delete,
                    v: value,
                }),
            );
            ttls.insert(key.clone(), if delete { None } else { ttl });
            if !touched.contains(&key) {
                touched.push(key.clone());
            }
            outcomes.push(if delete {
                WriteOutcome::Deleted(existed)
            } else {
                WriteOutcome::Put(Revision(n))
            });
        }
        if touched.is_empty() {
            return Ok(outcomes);
        }
        // The final state of each touched key, with fresh versions.
        let mut planned = Vec::new();
        for key in &touched {
            let Some(Some(final_env)) = view.get(key).cloned() else {
                continue;
            };
            let key_reads = reads.remove(key).unwrap_or_default();
            let base = key_reads
                .get(decider)
                .and_then(|r| r.as_ref().ok())
                .and_then(|s| s.as_ref())
                .map(|s| s.envelope.rv.clone());
            let change = Change {
                delete: final_env.del,
                value: final_env.v,
                ttl: ttls.get(key).copied().flatten(),
            };
            let mut p = self.plan(&key.0, &key.1, key_reads, None, change);
            p.envelope.n = final_env.n;
            p.envelope.p = base;
            planned.push(p);
        }
        // On the decider all or nothing, in one member batch; then everywhere else.
        let decider_member = &self.inner.members[decider];
        let batch: Vec<WriteOp> = planned
            .iter()
            .map(|p| {
                let condition = match &p.reads[decider] {
                    Ok(Some(state)) => WriteCondition::Revision(state.revision),
                    _ => WriteCondition::Absent,
                };
                WriteOp::Put {
                    collection: p.collection.clone(),
                    id: p.envelope.k.clone(),
                    value: p.envelope.to_value(),
                    options: PutDocumentOptions {
                        condition,
                        ttl: p.ttl,
                    },
                }
            })
            .collect();
        decider_member
            .call(|s| async move { s.write_batch(batch).await })
            .await
            .map_err(|e| match e.kind() {
                // A concurrent writer changed a key between our read and write.
                ErrorKind::PreconditionFailed | ErrorKind::AlreadyExists => Error::new(
                    ErrorKind::Unavailable,
                    BACKEND,
                    "a document of the batch changed concurrently; nothing was written, try again",
                ),
                _ => e.or_backend(&decider_member.name),
            })?;
        // The decider has everything: mark its reads as "already written" and replicate.
        for p in &mut planned {
            p.reads[decider] = Ok(Some(MemberState {
                revision: Revision(u64::MAX),
                envelope: p.envelope.clone(),
                expires_at: None,
            }));
        }
        self.replicate(&planned, decider, false).await?;
        Ok(outcomes)
    }

    async fn query(&self, collection: &str, query: Query) -> Result<QueryPage> {
        self.check_collection(collection)?;
        let caps = &self.inner.capabilities;
        if !caps.query {
            return Err(Error::unsupported(BACKEND, "query"));
        }
        let (pinned, member_cursor) =
            self.inner
                .unpin_cursor(BACKEND, CURSOR_PREFIX, query.cursor.as_deref())?;
        let mut filters: Vec<Filter> = Vec::with_capacity(query.filters.len() + 1);
        for f in &query.filters {
            cloud_abstraction::database::validate_field_path(BACKEND, &f.field)?;
            filters.push(Filter {
                field: member_path(&f.field),
                op: f.op.clone(),
            });
        }
        filters.push(Filter::eq("del", false));
        let mut order_by = Vec::with_capacity(query.order_by.len());
        for o in &query.order_by {
            cloud_abstraction::database::validate_field_path(BACKEND, &o.field)?;
            order_by.push(OrderBy {
                field: member_path(&o.field),
                direction: o.direction,
            });
        }
        let member_query = Query {
            filters,
            order_by,
            limit: query.limit,
            cursor: member_cursor,
        };
        let members = &self.inner.members;
        let run = |i: usize| {
            let m = &members[i];
            let q = member_query.clone();
            let name = m.name.clone();
            let call = m.call(move |s| async move { s.query(collection, q).await });
            async move {
                let page = call.await?;
                let mut documents = Vec::with_capacity(page.documents.len());
                for d in page.documents {
                    if let Some(d) = unwrap_document(&name, d)? {
                        documents.push(d);
                    }
                }
                Ok(QueryPage {
                    documents,
                    next_cursor: page.next_cursor.map(|c| format!("{CURSOR_PREFIX}{i}:{c}")),
                })
            }
        };
        match pinned {
            // A cursor belongs to the member that issued it: pages of one query stay on it.
            Some(i) => run(i).await,
            None => self.inner.read_from_any(BACKEND, |i, _| run(i)).await,
        }
    }
}

impl ReplicatedDocumentStore {
    pub(crate) fn build(
        members: Vec<(String, Arc<dyn DocumentStore>, CircuitBreaker)>,
        origin: String,
        config: ReplicationConfig,
    ) -> Result<Self> {
        if members.is_empty() {
            return Err(Error::invalid(
                BACKEND,
                "a replicated store needs at least one member",
            ));
        }
        let caps: Vec<DatabaseCapabilities> =
            members.iter().map(|(_, s, _)| s.capabilities()).collect();
        let mut capabilities = DatabaseCapabilities::common_of(caps.iter().cloned())
            .ok_or_else(|| Error::internal(BACKEND, "no members"))?;
        if !capabilities.query || !capabilities.query_order || !capabilities.query_range {
            return Err(Error::invalid(
                BACKEND,
                "every member must support queries with ordering and ranges (hint replay and repair page through them)",
            ));
        }
        capabilities.max_document_size = capabilities
            .max_document_size
            .map(|m| m.saturating_sub(ENVELOPE_OVERHEAD));
        let location = members[0].1.info().location;
        Ok(Self {
            inner: Arc::new(Inner {
                replicas: Replicas::new(members, origin, config, location),
                capabilities,
            }),
        })
    }
}
