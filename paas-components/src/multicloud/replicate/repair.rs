//! Repair (anti-entropy): walk every member of a collection, compare versions, copy the newer
//! side over.
//!
//! Each member in turn is the source: its documents are read page by page in id order (by
//! the envelope's `k` field, with a range filter, so a pass can resume from a cursor), the
//! same ids are read from every other member, and the newest version (tombstones included) is
//! copied to each member that has an older one or none, only if newer and conditionally on
//! the member's revision. Tombstones propagate like any version, so a
//! deleted document never comes back through repair. What it did is returned as a
//! [`RepairReport`] with a cursor to resume from.

use super::Applied;
use super::documents::{Inner, MemberState, apply_if_newer};
use cloud_abstraction::database::{Direction, Filter, Query};
use cloud_abstraction::{Error, Result};
use futures::future::join_all;

/// Where a repair stopped, to resume it: the source member's index and the last id done.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RepairCursor {
    /// Index of the member being walked.
    pub source: usize,
    /// The last id compared on that member.
    pub after: Option<String>,
}

/// What a repair did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepairReport {
    /// Documents compared (each id once per source member).
    pub compared: u64,
    /// Copies made (one per member that was behind on an id).
    pub copied: u64,
    /// Of the copies, tombstones.
    pub tombstones_copied: u64,
    /// Ids whose copy to some member failed (that member unreachable): run again.
    pub failed: u64,
    /// Tombstones older than the grace period removed from every member (blobs; document
    /// tombstones expire through the members' TTL).
    pub tombstones_purged: u64,
    /// `Some` when the pass stopped at `max_documents`: call again with it.
    pub next: Option<RepairCursor>,
}

impl RepairReport {
    /// Adds `other`'s counts to this report (its cursor is not kept).
    pub fn add(&mut self, other: &RepairReport) {
        self.compared += other.compared;
        self.copied += other.copied;
        self.tombstones_copied += other.tombstones_copied;
        self.failed += other.failed;
        self.tombstones_purged += other.tombstones_purged;
    }

    /// Runs `pass` from the start until it reports no cursor, adding up the reports.
    pub(crate) async fn run_to_end<F, Fut>(mut pass: F) -> cloud_abstraction::Result<Self>
    where
        F: FnMut(RepairCursor) -> Fut,
        Fut: std::future::Future<Output = cloud_abstraction::Result<RepairReport>>,
    {
        let mut total = RepairReport::default();
        let mut cursor = RepairCursor::default();
        loop {
            let r = pass(cursor).await?;
            total.add(&r);
            match r.next {
                Some(next) => cursor = next,
                None => return Ok(total),
            }
        }
    }
}

/// One repair pass over `collection`, from `from`, comparing at most `max_documents` ids.
pub(crate) async fn repair(
    inner: &Inner,
    collection: &str,
    from: RepairCursor,
    max_documents: u64,
    page: usize,
) -> Result<RepairReport> {
    let mut report = RepairReport::default();
    let members = &inner.members;
    let mut cursor = from;
    while cursor.source < members.len() {
        let source = &members[cursor.source];
        let mut query = Query::all().order_by("k", Direction::Asc).limit(page);
        if let Some(after) = &cursor.after {
            query = query.filter(Filter::gt("k", after.as_str()));
        }
        let docs = source
            .call(|s| async move { s.query(collection, query).await })
            .await?
            .documents;
        if docs.is_empty() {
            cursor = RepairCursor {
                source: cursor.source + 1,
                after: None,
            };
            continue;
        }
        let ids: Vec<String> = docs.iter().map(|d| d.id.clone()).collect();
        let others = join_all(members.iter().map(|m| {
            let ids = &ids;
            m.call(move |s| async move { s.get_many(collection, ids).await })
        }))
        .await;
        for (pos, doc) in docs.iter().enumerate() {
            report.compared += 1;
            let mut states: Vec<Option<Option<MemberState>>> = Vec::with_capacity(members.len());
            for (m, got) in members.iter().zip(&others) {
                states.push(match got {
                    Ok(list) => Some(
                        list.get(pos)
                            .cloned()
                            .flatten()
                            .map(|d| MemberState::from_document(&m.name, &d))
                            .transpose()?,
                    ),
                    Err(_) => None,
                });
            }
            let newest = states
                .iter()
                .flatten()
                .flatten()
                .max_by(|a, b| a.envelope.rv.cmp(&b.envelope.rv))
                .cloned()
                .ok_or_else(|| {
                    Error::internal(
                        super::documents::BACKEND,
                        "a listed document vanished from every member",
                    )
                })?;
            let Ok(ttl) = newest.remaining_ttl() else {
                continue; // expired: every member drops it by itself
            };
            for (m, state) in members.iter().zip(states) {
                let Some(state) = state else {
                    report.failed += 1;
                    continue;
                };
                if state
                    .as_ref()
                    .is_some_and(|s| s.envelope.rv >= newest.envelope.rv)
                {
                    continue;
                }
                match apply_if_newer(
                    m,
                    collection,
                    &newest.envelope,
                    ttl,
                    Some(state),
                    &[],
                    &inner.conflicts,
                    false,
                )
                .await
                {
                    Ok(Applied::Written) => {
                        report.copied += 1;
                        if newest.envelope.del {
                            report.tombstones_copied += 1;
                        }
                    }
                    Ok(Applied::AlreadyNewer) => {}
                    Err(_) => report.failed += 1,
                }
            }
            cursor.after = Some(doc.id.clone());
            if report.compared >= max_documents {
                report.next = Some(cursor);
                return Ok(report);
            }
        }
    }
    Ok(report)
}
