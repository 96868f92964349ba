//! Durable hints: what a member that missed a write still needs, recorded in a member that
//! has the write, before the write is acknowledged.
//!
//! A hint is a plain document in the reserved collection
//! ([`ReplicationConfig::hints_collection`](super::ReplicationConfig::hints_collection)) of
//! the holding member: `{"target", "c", "k", "rv", "at"}` (target member, collection, id, the
//! version written, when). Its id is a SHA-256 of (target, collection, id), so repeated writes
//! of one key during an outage leave one hint, not one per write: a replay copies the key's
//! *current* state from the holder, which covers every write before it.
//!
//! Replay runs per target member, in the order hints were written, and is
//! idempotent: it copies the holder's state to the target only if newer (by version), then
//! deletes the hint conditionally on the hint's own revision, so a hint rewritten meanwhile by
//! a new write is kept for the next pass. A member stays "behind" (serves no reads) until a
//! pass finds no hint for it on any reachable holder.

use super::documents::{DocMember, Inner, apply_if_newer};
use super::version::Version;
use cloud_abstraction::database::{
    Direction, Filter, PutDocumentOptions, Query, WriteCondition, WriteOp,
};
use cloud_abstraction::{Error, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::{SystemTime, UNIX_EPOCH};

const PAGE: usize = 200;

/// One hint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Hint {
    pub(crate) target: String,
    pub(crate) c: String,
    pub(crate) k: String,
    pub(crate) rv: Version,
    pub(crate) at: u64,
}

impl Hint {
    pub(crate) fn new(target: &str, collection: &str, id: &str, version: &Version) -> Self {
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Self {
            target: target.to_string(),
            c: collection.to_string(),
            k: id.to_string(),
            rv: version.clone(),
            at,
        }
    }

    fn id(&self) -> String {
        let mut h = Sha256::new();
        for part in [&self.target, &self.c, &self.k] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        hex::encode(h.finalize())
    }
}

/// The write of `hint` into `collection` (an upsert).
pub(crate) fn put_op(collection: &str, hint: &Hint) -> WriteOp {
    WriteOp::Put {
        collection: collection.to_string(),
        id: hint.id(),
        // Serializing plain data cannot fail.
        value: serde_json::to_value(hint).unwrap_or_default(),
        options: PutDocumentOptions::default(),
    }
}

/// Records hint writes on `holder`: one batch where the member has transactions (so a crash
/// never leaves half of them), else one by one.
pub(crate) async fn record(holder: &DocMember, ops: Vec<WriteOp>) -> Result<()> {
    if holder.transactions() && ops.len() > 1 {
        return holder
            .call(|s| async move { s.write_batch(ops).await.map(|_| ()) })
            .await;
    }
    for op in ops {
        if let WriteOp::Put {
            collection,
            id,
            value,
            options,
        } = op
        {
            holder
                .call(|s| async move { s.put(&collection, &id, value, options).await.map(|_| ()) })
                .await?;
        }
    }
    Ok(())
}

/// What a replay pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Hints found.
    pub found: u64,
    /// Items copied to their target (the holder's version was newer).
    pub copied: u64,
    /// Hints whose target already had the version or a newer one.
    pub already_current: u64,
    /// Members whose backlog is now empty (they serve reads again).
    pub drained: Vec<String>,
    /// Members that still have hints (unreachable target or holder, or a failed copy).
    pub pending: Vec<String>,
}

/// How many hints for `target` `holder` has (at most `limit`, `None` if unreachable).
pub(crate) async fn count_for(
    inner: &Inner,
    holder: &DocMember,
    target: &str,
    limit: usize,
) -> Option<usize> {
    let query = Query::all()
        .filter(Filter::eq("target", target))
        .limit(limit);
    let collection = inner.config.hints_collection.clone();
    holder
        .call(|s| async move { s.query(&collection, query).await })
        .await
        .ok()
        .map(|p| p.documents.len())
}

pub(crate) async fn replay_from(
    inner: &Inner,
    holder: &DocMember,
    target: &DocMember,
    report: &mut ReplayReport,
) -> Result<()> {
    let collection = inner.config.hints_collection.as_str();
    loop {
        // Always the first page: replayed hints are deleted, so the next ones move up.
        let query = Query::all()
            .filter(Filter::eq("target", target.name.as_str()))
            .order_by("at", Direction::Asc)
            .limit(PAGE);
        let page = holder
            .call(|s| async move { s.query(collection, query).await })
            .await?;
        if page.documents.is_empty() {
            return Ok(());
        }
        let mut progressed = false;
        for doc in page.documents {
            report.found += 1;
            let hint: Hint = serde_json::from_value(doc.value.clone()).map_err(|e| {
                Error::internal(
                    super::documents::BACKEND,
                    format!("malformed hint `{}`: {e}", doc.id),
                )
            })?;
            let state = holder.read(&hint.c, &hint.k).await?;
            if let Some(state) = state {
                if let Ok(ttl) = state.remaining_ttl() {
                    match apply_if_newer(
                        target,
                        &hint.c,
                        &state.envelope,
                        ttl,
                        None,
                        &[],
                        &inner.conflicts,
                        false,
                    )
                    .await?
                    {
                        super::Applied::Written => report.copied += 1,
                        super::Applied::AlreadyNewer => report.already_current += 1,
                    }
                }
            }
            // Conditional: a hint rewritten by a newer write since we read it stays.
            let id = doc.id.clone();
            let revision = doc.revision;
            let deleted = holder
                .call(|s| async move {
                    s.delete(collection, &id, WriteCondition::Revision(revision))
                        .await
                })
                .await;
            match deleted {
                Ok(_) => {
                    progressed = true;
                    inner.count_hint_replayed(&target.name);
                }
                Err(e) if e.kind() == cloud_abstraction::ErrorKind::PreconditionFailed => {}
                Err(e) => return Err(e),
            }
        }
        if !progressed {
            // Every hint of the page was rewritten meanwhile: let the next pass take them.
            return Err(Error::unavailable(
                super::documents::BACKEND,
                "hints are being rewritten",
            ));
        }
    }
}
