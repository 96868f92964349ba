//! The replicated blob store: one [`BlobStore`] over members in several clouds.
//!
//! See the [module docs](super) for the storage layout and the guarantees; this file is the
//! write, read, replay and repair paths.

use super::version::Version;
use super::{
    Applied, ConflictSink, HintLog, Lineage, Member, RepairCursor, RepairReport, ReplayReport,
    Replicas, ReplicationConfig,
};
use crate::layers::CircuitBreaker;
use async_trait::async_trait;
use bytes::Bytes;
use cloud_abstraction::capabilities::CommonCapabilities;
use cloud_abstraction::storage::{
    BlobStore, CopyOptions, DEFAULT_CONTENT_TYPE, GetOptions, GetResult, ListOptions, ListPage,
    MultipartId, ObjectMeta, PartId, PutMode, PutOptions, PutResult, StorageCapabilities,
};
use cloud_abstraction::validate::{self, RESERVED_METADATA_PREFIX};
use cloud_abstraction::{BackendInfo, Error, ErrorKind, Result};
use futures::StreamExt;
use futures::future::join_all;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

pub(crate) const BACKEND: &str = "replicated";
/// The key prefix the replicated store keeps for itself in every member (hints, the probe
/// key). Callers can neither write nor see keys under it.
pub const RESERVED_PREFIX: &str = "_replication/";
/// Reserved metadata: the replication version, `TIMESTAMP.ORIGIN`.
pub const META_VERSION: &str = "_repl_v";
/// Reserved metadata: the version the write replaced where it was decided (its parent).
pub const META_PARENT: &str = "_repl_p";
/// Reserved metadata: the first 16 bytes of the content's SHA-256, hex.
pub const META_DIGEST: &str = "_repl_d";
/// Reserved metadata: present (`1`) on a tombstone.
pub const META_DELETED: &str = "_repl_del";
/// The longest origin id a blob store accepts (it travels in metadata, twice).
const MAX_ORIGIN_LEN: usize = 64;
use super::MAX_ATTEMPTS;
/// Hints per listing page during replay; objects headed at once during a listing.
const PAGE: usize = 200;
const HEADS_AT_ONCE: usize = 16;
const CURSOR_PREFIX: &str = "rb";

pub(crate) fn probe_key() -> String {
    format!("{RESERVED_PREFIX}probe")
}

fn hint_prefix(target: &str) -> String {
    format!("{RESERVED_PREFIX}hints/{target}/")
}

fn short_hash(parts: &[&[u8]], bytes: usize) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    hex::encode(&h.finalize()[..bytes])
}

/// A hint object's key: unique per (target, key, version), so a newer write never
/// overwrites a hint that a replay is about to delete (blob stores have no conditional
/// delete). The key's hash first, so that the hints of one key sort together.
fn hint_key(target: &str, key: &str, rv: &Version) -> String {
    format!(
        "{}{}-{:016x}-{}",
        hint_prefix(target),
        short_hash(&[key.as_bytes()], 16),
        rv.timestamp,
        short_hash(&[rv.origin.as_bytes()], 4)
    )
}

fn encode_version(v: &Version) -> String {
    format!("{}.{}", v.timestamp, v.origin)
}

fn decode_version(s: &str) -> Option<Version> {
    let (t, origin) = s.split_once('.')?;
    Some(Version {
        timestamp: t.parse().ok()?,
        origin: origin.to_string(),
    })
}

/// The portable ETag of a version, the same on every member whatever their own ETags: the
/// timestamp (16 hex digits) and a hash of the origin (8 hex digits).
pub(crate) fn portable_etag(rv: &Version) -> String {
    format!(
        "{:016x}{}",
        rv.timestamp,
        short_hash(&[rv.origin.as_bytes()], 4)
    )
}

/// The timestamp of the version a portable ETag was made from.
pub fn etag_timestamp(etag: &str) -> Option<u64> {
    let etag = etag.trim_matches('"');
    u64::from_str_radix(etag.get(..16)?, 16).ok()
}

fn same_etag(a: &str, b: &str) -> bool {
    a.trim_matches('"') == b.trim_matches('"')
}

/// The replication bookkeeping of one object, kept in its reserved metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationMeta {
    /// The replication version.
    pub rv: Version,
    /// The version the write replaced where it was decided.
    pub parent: Option<Version>,
    /// The content digest (hex of the first 16 bytes of its SHA-256).
    pub digest: String,
    /// A tombstone: the object was deleted at `rv`.
    pub deleted: bool,
}

impl ReplicationMeta {
    /// Reads the bookkeeping from an object's metadata as a member returns it; `None` if the
    /// object was not written by a replicated store.
    pub fn from_metadata(metadata: &BTreeMap<String, String>) -> Option<Self> {
        Some(Self {
            rv: decode_version(metadata.get(META_VERSION)?)?,
            parent: match metadata.get(META_PARENT) {
                Some(p) => Some(decode_version(p)?),
                None => None,
            },
            digest: metadata.get(META_DIGEST).cloned().unwrap_or_default(),
            deleted: metadata.contains_key(META_DELETED),
        })
    }

    fn write_into(&self, metadata: &mut BTreeMap<String, String>) {
        metadata.insert(META_VERSION.into(), encode_version(&self.rv));
        if let Some(p) = &self.parent {
            metadata.insert(META_PARENT.into(), encode_version(p));
        }
        metadata.insert(META_DIGEST.into(), self.digest.clone());
        if self.deleted {
            metadata.insert(META_DELETED.into(), "1".into());
        }
    }

    /// The order in which versions replace each other: by version, then (two copies of one
    /// version that differ, which only a foreign writer can cause) by digest, so that repair
    /// still converges.
    fn order(&self) -> (&Version, &str) {
        (&self.rv, &self.digest)
    }

    fn lineage(&self) -> Lineage<'_> {
        Lineage {
            rv: &self.rv,
            parent: self.parent.as_ref(),
        }
    }

    /// The portable ETag of this version.
    pub fn etag(&self) -> String {
        portable_etag(&self.rv)
    }
}

fn content_digest(data: &[u8]) -> String {
    hex::encode(&Sha256::digest(data)[..16])
}

/// The caller's metadata: the member's, without the reserved names.
fn user_metadata(metadata: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    metadata
        .iter()
        .filter(|(k, _)| !k.starts_with(RESERVED_METADATA_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// What one member holds for one key: its own ETag and the bookkeeping.
#[derive(Debug, Clone)]
pub(crate) struct MemberState {
    pub(crate) etag: String,
    pub(crate) meta: ReplicationMeta,
}

fn foreign(member: &str, key: &str) -> Error {
    Error::internal(
        BACKEND,
        format!("member `{member}` holds object `{key}` that the replicated store did not write"),
    )
}

impl MemberState {
    fn from_meta(member: &str, meta: &ObjectMeta) -> Result<Self> {
        Ok(Self {
            etag: meta.etag.clone(),
            meta: ReplicationMeta::from_metadata(&meta.metadata)
                .ok_or_else(|| foreign(member, &meta.key))?,
        })
    }
}

/// A member blob store.
pub(crate) type BlobMember = Member<dyn BlobStore>;

impl BlobMember {
    /// The member's state of `key` (`None`: absent).
    pub(crate) async fn read(&self, key: &str) -> Result<Option<MemberState>> {
        match self.call(|s| async move { s.head(key).await }).await {
            Ok(meta) => MemberState::from_meta(&self.name, &meta).map(Some),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.or_backend(&self.name)),
        }
    }

    fn conditional_put(&self) -> bool {
        self.store.capabilities().conditional_put
    }
}

/// One version of one object, as written to members.
#[derive(Debug, Clone)]
pub(crate) struct Replica {
    meta: ReplicationMeta,
    data: Bytes,
    content_type: Option<String>,
    user: BTreeMap<String, String>,
}

impl Replica {
    fn from_get(member: &str, got: GetResult) -> Result<Self> {
        let meta = ReplicationMeta::from_metadata(&got.meta.metadata)
            .ok_or_else(|| foreign(member, &got.meta.key))?;
        Ok(Self {
            meta,
            data: got.data,
            content_type: got.meta.content_type,
            user: user_metadata(&got.meta.metadata),
        })
    }

    fn options(&self, mode: PutMode) -> PutOptions {
        let mut metadata = self.user.clone();
        self.meta.write_into(&mut metadata);
        PutOptions {
            mode,
            content_type: self.content_type.clone(),
            metadata,
            // What the caller wrote passed the replicated store's own check (the members'
            // common rule, `check_options`), and what replay and repair copy is what a member
            // holds: either way a member can hold it as it is.
            as_stored: true,
        }
    }
}

impl super::Held for MemberState {
    fn lineage(&self) -> Lineage<'_> {
        self.meta.lineage()
    }
}

/// Writes `replica` to `member` only if it is newer (see [`super::apply_if_newer`]), with
/// the member's own conditional put (create when it has nothing, if-match on its ETag) where
/// it has one.
async fn apply_if_newer(
    member: &BlobMember,
    key: &str,
    replica: &Replica,
    known: Option<Option<MemberState>>,
    conflicts: &ConflictSink,
    strict: bool,
) -> Result<Applied> {
    let incoming = super::Incoming {
        member: &member.name,
        collection: "",
        id: key,
        lineage: replica.meta.lineage(),
        what: "object",
    };
    let conditional = member.conditional_put();
    super::apply_if_newer(
        incoming,
        conflicts,
        strict,
        known,
        || member.read(key),
        |state: &MemberState| state.meta.order() >= replica.meta.order(),
        |current: Option<&MemberState>| {
            // Without a conditional put the member is written blindly: a concurrent write
            // there between the read and this put can be replaced by an older version (see
            // the module docs).
            let mode = match (current, conditional) {
                (_, false) => PutMode::Overwrite,
                (None, true) => PutMode::Create,
                (Some(state), true) => PutMode::UpdateIfMatch(state.etag.clone()),
            };
            let options = replica.options(mode);
            let data = replica.data.clone();
            async move {
                member
                    .call(|s| async move { s.put(key, data, options).await.map(|_| ()) })
                    .await
            }
        },
    )
    .await
}

/// A hint: `target` lacks version `rv` of `key` (or something newer).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct BlobHint {
    key: String,
    rv: Version,
}

pub(crate) struct Inner {
    pub(crate) replicas: Replicas<dyn BlobStore>,
    pub(crate) capabilities: StorageCapabilities,
}

impl std::ops::Deref for Inner {
    type Target = Replicas<dyn BlobStore>;
    fn deref(&self) -> &Self::Target {
        &self.replicas
    }
}

impl HintLog for Inner {
    type Store = dyn BlobStore;
    fn replicas(&self) -> &Replicas<dyn BlobStore> {
        &self.replicas
    }
    async fn replay_from(
        &self,
        holder: &BlobMember,
        target: &BlobMember,
        report: &mut ReplayReport,
    ) -> Result<()> {
        replay_from(self, holder, target, report).await
    }
    async fn holds_hints(&self, holder: &BlobMember, target: &str) -> Option<bool> {
        let options = ListOptions {
            prefix: hint_prefix(target),
            max_results: Some(1),
            ..ListOptions::default()
        };
        holder
            .call(|s| async move { s.list_page(options).await })
            .await
            .ok()
            .map(|p| !p.objects.is_empty())
    }
}

/// Copies `key`'s current version from `holder` to `target` if newer there; returns the
/// version `target` now has (`None`: the holder has nothing).
async fn copy_current(
    inner: &Inner,
    holder: &BlobMember,
    target: &BlobMember,
    key: &str,
) -> Result<Option<(Applied, Version)>> {
    let Some(held) = holder.read(key).await? else {
        return Ok(None);
    };
    let there = target.read(key).await?;
    if let Some(t) = &there {
        if t.meta.order() >= held.meta.order() {
            return Ok(Some((Applied::AlreadyNewer, t.meta.rv.clone())));
        }
    }
    let got = match holder
        .call(|s| async move { s.get(key, GetOptions::default()).await })
        .await
    {
        Ok(got) => got,
        // Gone since the head (purged): nothing to copy.
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.or_backend(&holder.name)),
    };
    let replica = Replica::from_get(&holder.name, got)?;
    let applied =
        apply_if_newer(target, key, &replica, Some(there), &inner.conflicts, false).await?;
    Ok(Some((applied, replica.meta.rv)))
}

/// Replays the hints `holder` keeps for `target`, page by page from the first (replayed
/// hints are deleted, so the next ones move up). The hints of one page are replayed
/// [`HEADS_AT_ONCE`] keys at a time; the hints of one key (they sort together) in order.
async fn replay_from(
    inner: &Inner,
    holder: &BlobMember,
    target: &BlobMember,
    report: &mut ReplayReport,
) -> Result<()> {
    let prefix = hint_prefix(&target.name);
    loop {
        let options = ListOptions {
            prefix: prefix.clone(),
            max_results: Some(PAGE),
            ..ListOptions::default()
        };
        let page = holder
            .call(|s| async move { s.list_page(options).await })
            .await?;
        if page.objects.is_empty() {
            return Ok(());
        }
        // Group by key hash, keeping the listing's order within each group.
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        for object in page.objects {
            let hash = object.key[prefix.len()..]
                .split('-')
                .next()
                .unwrap_or_default()
                .to_string();
            match groups.last_mut() {
                Some((h, keys)) if *h == hash => keys.push(object.key),
                _ => groups.push((hash, vec![object.key])),
            }
        }
        let results: Vec<Result<ReplayReport>> = futures::stream::iter(
            groups
                .into_iter()
                .map(|(_, hints)| replay_key(inner, holder, target, hints)),
        )
        .buffer_unordered(HEADS_AT_ONCE)
        .collect()
        .await;
        for r in results {
            let r = r?;
            report.found += r.found;
            report.copied += r.copied;
            report.already_current += r.already_current;
        }
    }
}

/// Replays the hints of one key, in order; deletes each once its version is on `target`.
async fn replay_key(
    inner: &Inner,
    holder: &BlobMember,
    target: &BlobMember,
    hints: Vec<String>,
) -> Result<ReplayReport> {
    let mut report = ReplayReport::default();
    // The version `target` has after a copy: a later hint up to it needs no second copy.
    let mut done: Option<Version> = None;
    for hint_key in hints {
        report.found += 1;
        let k = hint_key.clone();
        let body = match holder
            .call(|s| async move { s.get(&k, GetOptions::default()).await })
            .await
        {
            Ok(got) => got.data,
            // Another handle replayed it meanwhile.
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let hint: BlobHint = serde_json::from_slice(&body)
            .map_err(|e| Error::internal(BACKEND, format!("malformed hint `{hint_key}`: {e}")))?;
        if done.as_ref().is_some_and(|v| *v >= hint.rv) {
            report.already_current += 1;
        } else {
            // The hint was written after the holder had `hint.rv`; versions only grow, so
            // what the holder has now covers it.
            match copy_current(inner, holder, target, &hint.key).await? {
                Some((applied, now)) => {
                    match applied {
                        Applied::Written => report.copied += 1,
                        Applied::AlreadyNewer => report.already_current += 1,
                    }
                    done = Some(now);
                }
                None => report.already_current += 1,
            }
        }
        let k = hint_key.clone();
        holder.call(|s| async move { s.delete(&k).await }).await?;
        inner.count_hint_replayed(&target.name);
    }
    Ok(report)
}

/// A [`BlobStore`] replicated active-active over several members (see the
/// [module docs](super)). Clones share everything.
#[derive(Clone)]
pub struct ReplicatedBlobStore {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for ReplicatedBlobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicatedBlobStore")
            .field("members", &self.member_names())
            .field("origin", &self.inner.clock.origin())
            .finish_non_exhaustive()
    }
}

/// Per-member view of a key, as read at the start of a write.
type Reads = Vec<Result<Option<MemberState>>>;

/// What a write does: a new object, or a delete (`None`).
struct NewObject {
    data: Bytes,
    content_type: Option<String>,
    user: BTreeMap<String, String>,
}

impl ReplicatedBlobStore {
    super::replica_handle_methods!();

    pub(crate) fn build(
        members: Vec<(String, Arc<dyn BlobStore>, CircuitBreaker)>,
        origin: String,
        config: ReplicationConfig,
    ) -> Result<Self> {
        if members.is_empty() {
            return Err(Error::invalid(
                BACKEND,
                "a replicated store needs at least one member",
            ));
        }
        if origin.len() > MAX_ORIGIN_LEN || origin.contains(' ') || origin.is_empty() {
            return Err(Error::invalid(
                BACKEND,
                format!("a blob store's origin id is 1 to {MAX_ORIGIN_LEN} bytes without spaces"),
            ));
        }
        validate::metadata_value(BACKEND, "origin", &origin)?;
        for (name, _, _) in &members {
            validate::key_prefix(BACKEND, &hint_prefix(name)).map_err(|_| {
                Error::invalid(
                    BACKEND,
                    format!("member name `{name}` must be usable as an object key segment"),
                )
            })?;
            if name.contains('/') {
                return Err(Error::invalid(
                    BACKEND,
                    format!("member name `{name}` must not contain `/`"),
                ));
            }
        }
        let caps: Vec<StorageCapabilities> =
            members.iter().map(|(_, s, _)| s.capabilities()).collect();
        if let Some(i) = caps.iter().position(|c| !c.metadata) {
            return Err(Error::invalid(
                BACKEND,
                format!(
                    "member `{}` keeps no metadata, where the replication version lives",
                    members[i].0
                ),
            ));
        }
        let mut capabilities = StorageCapabilities::common_of(caps)
            .ok_or_else(|| Error::internal(BACKEND, "no members"))?;
        // Checked against the portable ETag by the store itself, on any member.
        capabilities.conditional_get = true;
        // Not offered: see the module docs.
        capabilities.multipart = false;
        capabilities.presign = false;
        let location = members[0].1.info().location;
        Ok(Self {
            inner: Arc::new(Inner {
                replicas: Replicas::new(members, origin, config, location),
                capabilities,
            }),
        })
    }

    /// One repair pass over the keys under `prefix` (see the [module docs](super)),
    /// comparing at most `max_items` keys from `from`; resume with the report's `next`.
    pub async fn repair(
        &self,
        prefix: &str,
        from: RepairCursor,
        max_items: u64,
    ) -> Result<RepairReport> {
        if !prefix.is_empty() {
            validate::key_prefix(BACKEND, prefix)?;
        }
        repair(&self.inner, prefix, from, max_items.max(1)).await
    }

    /// Repairs everything under `prefix`.
    pub async fn repair_all(&self, prefix: &str) -> Result<RepairReport> {
        RepairReport::run_to_end(|cursor| self.repair(prefix, cursor, 10_000)).await
    }

    fn check_key(&self, key: &str) -> Result<()> {
        validate::object_key(BACKEND, key)?;
        if key.starts_with(RESERVED_PREFIX) {
            return Err(Error::invalid(
                BACKEND,
                format!("keys under `{RESERVED_PREFIX}` are reserved for replication"),
            ));
        }
        Ok(())
    }

    fn check_options(&self, options: &PutOptions) -> Result<()> {
        if let Some(name) = options
            .metadata
            .keys()
            .find(|k| k.starts_with(RESERVED_METADATA_PREFIX))
        {
            return Err(Error::invalid(
                BACKEND,
                format!(
                    "metadata name `{name}` is reserved for replication (prefix `{RESERVED_METADATA_PREFIX}`)"
                ),
            ));
        }
        validate::put_options(BACKEND, options, self.inner.capabilities.metadata_names)?;
        if options.mode != PutMode::Overwrite && !self.inner.capabilities.conditional_put {
            return Err(Error::unsupported(
                BACKEND,
                "conditional puts (a member has no atomic conditional put)",
            ));
        }
        Ok(())
    }

    /// The state a write is decided on: the deciding member's; but while that member is
    /// behind, the newest any member answered with (as for documents).
    fn base(&self, decider: usize, reads: &Reads) -> Option<ReplicationMeta> {
        let own = |i: usize| {
            reads[i]
                .as_ref()
                .ok()
                .and_then(|s| s.as_ref())
                .map(|s| s.meta.clone())
        };
        if !self.inner.members[decider].is_behind() {
            return own(decider);
        }
        (0..reads.len())
            .filter_map(own)
            .max_by(|a, b| a.order().cmp(&b.order()))
    }

    /// Writes (or, with `object: None`, deletes) `key` under `mode`; returns the portable
    /// ETag (`None` for a delete that found nothing to delete).
    async fn write_one(
        &self,
        key: &str,
        object: Option<NewObject>,
        mode: PutMode,
    ) -> Result<Option<String>> {
        let inner = &self.inner;
        let order = inner.decision_order("", key);
        let conditional = mode != PutMode::Overwrite;
        let digest = content_digest(object.as_ref().map_or(&[][..], |o| &o.data[..]));
        for _ in 0..MAX_ATTEMPTS {
            let reads: Reads = join_all(inner.members.iter().map(|m| m.read(key))).await;
            let decider = inner.decider(BACKEND, &order, &reads)?;
            let base = self.base(decider, &reads);
            let live = base.as_ref().filter(|m| !m.deleted);
            match &mode {
                PutMode::Overwrite => {}
                PutMode::Create => {
                    if live.is_some() {
                        return Err(Error::new(
                            ErrorKind::AlreadyExists,
                            BACKEND,
                            format!("object `{key}` exists"),
                        ));
                    }
                }
                PutMode::UpdateIfMatch(etag) => {
                    if !live.is_some_and(|m| same_etag(&m.etag(), etag)) {
                        return Err(Error::new(
                            ErrorKind::PreconditionFailed,
                            BACKEND,
                            format!("object `{key}` does not have ETag {etag}"),
                        ));
                    }
                }
            }
            let any_live = reads
                .iter()
                .any(|r| matches!(r, Ok(Some(s)) if !s.meta.deleted));
            if object.is_none() && !any_live && reads.iter().all(Result::is_ok) {
                // Nothing to delete anywhere: no tombstone needed. (A member that did not
                // answer may hold a write that failed for its caller but landed there: it
                // gets the tombstone through a hint.)
                return Ok(None);
            }
            let newest = reads
                .iter()
                .filter_map(|r| r.as_ref().ok().and_then(|s| s.as_ref()))
                .map(|s| &s.meta.rv)
                .max()
                .cloned();
            if let Some(v) = &newest {
                inner.clock.observe(v.timestamp);
            }
            let meta = ReplicationMeta {
                rv: inner.clock.next(newest.as_ref()),
                parent: base.map(|m| m.rv),
                digest: digest.clone(),
                deleted: object.is_none(),
            };
            let replica = match &object {
                Some(o) => Replica {
                    meta,
                    data: o.data.clone(),
                    content_type: o.content_type.clone(),
                    user: o.user.clone(),
                },
                None => Replica {
                    meta,
                    data: Bytes::new(),
                    content_type: Some(DEFAULT_CONTENT_TYPE.to_string()),
                    user: BTreeMap::new(),
                },
            };
            match self
                .replicate(key, &replica, reads, decider, conditional)
                .await
            {
                // The deciding member changed between our read and our write: decide again.
                Err(e)
                    if conditional
                        && e.kind() == ErrorKind::PreconditionFailed
                        && e.backend() != BACKEND => {}
                Err(e) => return Err(e),
                Ok(()) => return Ok(Some(replica.meta.etag())),
            }
        }
        Err(Error::unavailable(
            BACKEND,
            format!("object `{key}` kept changing under a conditional write; try again"),
        ))
    }

    /// Applies `replica` to every member (the decider first if `decider_first`), records a
    /// hint for each member that did not take it, and says whether the write is
    /// acknowledged (the rule of the module docs).
    async fn replicate(
        &self,
        key: &str,
        replica: &Replica,
        reads: Reads,
        decider: usize,
        decider_first: bool,
    ) -> Result<()> {
        let inner = &self.inner;
        let members = &inner.members;
        let unreachable: Vec<usize> = (0..members.len()).filter(|&i| reads[i].is_err()).collect();
        let mut known: Vec<Option<Option<MemberState>>> =
            reads.into_iter().map(Result::ok).collect();
        let mut results: Vec<Option<Result<Applied>>> = (0..members.len()).map(|_| None).collect();
        if decider_first {
            let r = apply_if_newer(
                &members[decider],
                key,
                replica,
                known[decider].take(),
                &inner.conflicts,
                true,
            )
            .await?;
            results[decider] = Some(Ok(r));
        }
        let rest: Vec<usize> = (0..members.len())
            .filter(|&i| results[i].is_none() && !unreachable.contains(&i))
            .collect();
        let done = join_all(rest.iter().map(|&i| {
            let k = known[i].take();
            apply_if_newer(&members[i], key, replica, k, &inner.conflicts, false)
        }))
        .await;
        for (i, r) in rest.into_iter().zip(done) {
            results[i] = Some(r);
        }
        let holders: Vec<usize> = (0..members.len())
            .filter(|&i| matches!(&results[i], Some(Ok(_))))
            .collect();
        if holders.is_empty() {
            let first = results.into_iter().flatten().find_map(Result::err);
            return Err(first.filter(|e| !e.is_target_failure()).unwrap_or_else(|| {
                Error::unavailable(BACKEND, format!("no member took the write of `{key}`"))
            }));
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
            let hint = BlobHint {
                key: key.to_string(),
                rv: replica.meta.rv.clone(),
            };
            // Serializing plain data cannot fail.
            let body = Bytes::from(serde_json::to_vec(&hint).unwrap_or_default());
            let hint_key = hint_key(&members[t].name, key, &replica.meta.rv);
            let mut recorded = false;
            for &h in &holders {
                let (k, b) = (hint_key.clone(), body.clone());
                let put = members[h]
                    .call(|s| async move {
                        s.put(
                            &k,
                            b,
                            PutOptions::default().with_content_type("application/json"),
                        )
                        .await
                    })
                    .await;
                recorded |= put.is_ok();
            }
            if !recorded {
                return Err(Error::unavailable(
                    BACKEND,
                    format!(
                        "member `{}` missed the write of `{key}` and no hint for it could be recorded; not acknowledged",
                        members[t].name
                    ),
                ));
            }
            inner.count_hints_written(t, 1);
        }
        inner.replay_wanted.notify_one();
        Ok(())
    }

    /// The caller's view of an object a member returned (`None` for a tombstone).
    fn visible(member: &str, meta: ObjectMeta) -> Result<Option<ObjectMeta>> {
        let state = MemberState::from_meta(member, &meta)?;
        if state.meta.deleted {
            return Ok(None);
        }
        Ok(Some(ObjectMeta {
            etag: state.meta.etag(),
            metadata: user_metadata(&meta.metadata),
            ..meta
        }))
    }

    /// Whether any live object lies under `prefix` on `member` (a "directory" that holds only
    /// tombstones is not listed).
    async fn has_live(member: &BlobMember, prefix: &str) -> Result<bool> {
        let mut options = ListOptions {
            prefix: prefix.to_string(),
            max_results: Some(50),
            ..ListOptions::default()
        };
        loop {
            let o = options.clone();
            let page = member.call(|s| async move { s.list_page(o).await }).await?;
            for object in &page.objects {
                let key = object.key.clone();
                match member.call(|s| async move { s.head(&key).await }).await {
                    Ok(meta) => {
                        if Self::visible(&member.name, meta)?.is_some() {
                            return Ok(true);
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            match page.next_page_token {
                Some(t) => options.page_token = Some(t),
                None => return Ok(false),
            }
        }
    }

    async fn list_on(&self, i: usize, options: ListOptions) -> Result<ListPage> {
        let member = &self.inner.members[i];
        let page = member
            .call(|s| async move { s.list_page(options).await })
            .await?;
        let reserved = |k: &str| k.starts_with(RESERVED_PREFIX);
        let objects: Vec<ObjectMeta> =
            futures::stream::iter(page.objects.into_iter().filter(|o| !reserved(&o.key)).map(
                |o| async move {
                    let key = o.key;
                    match member.call(|s| async move { s.head(&key).await }).await {
                        Ok(meta) => Self::visible(&member.name, meta),
                        // Deleted since the listing.
                        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
                        Err(e) => Err(e),
                    }
                },
            ))
            .buffered(HEADS_AT_ONCE)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .filter_map(Result::transpose)
            .collect::<Result<_>>()?;
        let mut common_prefixes = Vec::new();
        for p in page.common_prefixes.into_iter().filter(|p| !reserved(p)) {
            if Self::has_live(member, &p).await? {
                common_prefixes.push(p);
            }
        }
        Ok(ListPage {
            objects,
            common_prefixes,
            next_page_token: page
                .next_page_token
                .map(|t| format!("{CURSOR_PREFIX}{i}:{t}")),
        })
    }
}

#[async_trait]
impl BlobStore for ReplicatedBlobStore {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            backend: BACKEND.to_string(),
            location: self.inner.location.clone(),
        }
    }

    fn capabilities(&self) -> StorageCapabilities {
        self.inner.capabilities.clone()
    }

    async fn put(&self, key: &str, payload: Bytes, options: PutOptions) -> Result<PutResult> {
        self.check_key(key)?;
        self.check_options(&options)?;
        validate::payload_size(
            BACKEND,
            "the object",
            payload.len(),
            self.inner.capabilities.max_put_size,
        )?;
        let PutOptions {
            mode,
            content_type,
            metadata,
            ..
        } = options;
        let object = NewObject {
            data: payload,
            content_type: Some(content_type.unwrap_or_else(|| DEFAULT_CONTENT_TYPE.to_string())),
            user: metadata,
        };
        let etag = self.write_one(key, Some(object), mode).await?;
        Ok(PutResult {
            etag: etag.unwrap_or_default(),
        })
    }

    async fn get(&self, key: &str, options: GetOptions) -> Result<GetResult> {
        self.check_key(key)?;
        if options.range.is_some() && !self.inner.capabilities.ranges {
            return Err(Error::unsupported(BACKEND, "byte-range reads"));
        }
        let range = options.range.clone();
        let got = self
            .inner
            .read_from_any(BACKEND, |_, m| {
                let range = range.clone();
                async move {
                    let member_options = GetOptions {
                        range: range.clone(),
                        ..GetOptions::default()
                    };
                    let got = m
                        .call(|s| async move { s.get(key, member_options).await })
                        .await;
                    match got {
                        Ok(got) => match Self::visible(&m.name, got.meta.clone())? {
                            Some(meta) => Ok(GetResult { meta, ..got }),
                            None => Err(Error::not_found(BACKEND, format!("no object `{key}`"))),
                        },
                        // A range past the end of a tombstone (0 bytes): the key is absent.
                        Err(e) if e.kind() == ErrorKind::InvalidArgument && range.is_some() => {
                            match m.read(key).await? {
                                Some(s) if !s.meta.deleted => Err(e),
                                _ => Err(Error::not_found(BACKEND, format!("no object `{key}`"))),
                            }
                        }
                        Err(e) => Err(e),
                    }
                }
            })
            .await?;
        // Conditions are checked against the portable ETag, which every member agrees on.
        if let Some(want) = &options.if_match {
            if !same_etag(&got.meta.etag, want) {
                return Err(Error::new(
                    ErrorKind::PreconditionFailed,
                    BACKEND,
                    format!("object `{key}` does not have ETag {want}"),
                ));
            }
        }
        if let Some(unwanted) = &options.if_none_match {
            if same_etag(&got.meta.etag, unwanted) {
                return Err(Error::new(
                    ErrorKind::PreconditionFailed,
                    BACKEND,
                    format!("object `{key}` has ETag {unwanted} (not modified)"),
                ));
            }
        }
        Ok(got)
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        self.check_key(key)?;
        self.inner
            .read_from_any(BACKEND, |_, m| async move {
                let meta = m.call(|s| async move { s.head(key).await }).await?;
                Self::visible(&m.name, meta)?
                    .ok_or_else(|| Error::not_found(BACKEND, format!("no object `{key}`")))
            })
            .await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.check_key(key)?;
        self.write_one(key, None, PutMode::Overwrite).await?;
        Ok(())
    }

    async fn list_page(&self, options: ListOptions) -> Result<ListPage> {
        if !options.prefix.is_empty() {
            validate::key_prefix(BACKEND, &options.prefix)?;
        }
        let (pinned, token) =
            self.inner
                .unpin_cursor(BACKEND, CURSOR_PREFIX, options.page_token.as_deref())?;
        let member_options = ListOptions {
            page_token: token,
            ..options
        };
        match pinned {
            // A page token belongs to the member that issued it.
            Some(i) => self.list_on(i, member_options).await,
            None => {
                self.inner
                    .read_from_any(BACKEND, |i, _| self.list_on(i, member_options.clone()))
                    .await
            }
        }
    }

    async fn copy(&self, from: &str, to: &str, options: CopyOptions) -> Result<PutResult> {
        self.check_key(from)?;
        self.check_key(to)?;
        if options.if_not_exists && !self.inner.capabilities.conditional_put {
            return Err(Error::unsupported(BACKEND, "create-only copies"));
        }
        let source = self.get(from, GetOptions::default()).await?;
        let object = NewObject {
            data: source.data,
            content_type: source.meta.content_type,
            user: source.meta.metadata,
        };
        let mode = if options.if_not_exists {
            PutMode::Create
        } else {
            PutMode::Overwrite
        };
        let etag = self.write_one(to, Some(object), mode).await?;
        Ok(PutResult {
            etag: etag.unwrap_or_default(),
        })
    }

    async fn create_multipart(&self, _key: &str, _options: PutOptions) -> Result<MultipartId> {
        Err(Error::unsupported(BACKEND, "multipart uploads"))
    }

    async fn put_part(
        &self,
        _key: &str,
        _upload: &MultipartId,
        _part_number: u32,
        _data: Bytes,
    ) -> Result<PartId> {
        Err(Error::unsupported(BACKEND, "multipart uploads"))
    }

    async fn complete_multipart(
        &self,
        _key: &str,
        _upload: &MultipartId,
        _parts: Vec<PartId>,
    ) -> Result<PutResult> {
        Err(Error::unsupported(BACKEND, "multipart uploads"))
    }

    async fn abort_multipart(&self, _key: &str, _upload: &MultipartId) -> Result<()> {
        Err(Error::unsupported(BACKEND, "multipart uploads"))
    }
}

/// One repair pass under `prefix` from `from`, comparing at most `max_items` keys.
///
/// Each member in turn is the source: its keys are listed in order (from the cursor's key,
/// so a pass resumes where it stopped); each key is headed on every member, and the newest
/// version (tombstones included, by version then digest) is copied from a member that has
/// it to every member with an older one or none, only if newer and with the member's
/// conditional put. A tombstone older than the grace period that every member answered
/// for is removed from every member.
async fn repair(
    inner: &Inner,
    prefix: &str,
    from: RepairCursor,
    max_items: u64,
) -> Result<RepairReport> {
    let mut report = RepairReport::default();
    let members = &inner.members;
    let mut cursor = from;
    while cursor.source < members.len() {
        let source = &members[cursor.source];
        let options = ListOptions {
            prefix: prefix.to_string(),
            start_after: cursor.after.clone(),
            max_results: Some(PAGE),
            ..ListOptions::default()
        };
        let page = source
            .call(|s| async move { s.list_page(options).await })
            .await?;
        if page.objects.is_empty() {
            cursor = RepairCursor {
                source: cursor.source + 1,
                after: None,
            };
            continue;
        }
        for object in page.objects {
            let key = object.key;
            if key.starts_with(RESERVED_PREFIX) {
                cursor.after = Some(key);
                continue;
            }
            report.compared += 1;
            repair_key(inner, &key, &mut report).await?;
            cursor.after = Some(key);
            if report.compared >= max_items {
                report.next = Some(cursor);
                return Ok(report);
            }
        }
    }
    Ok(report)
}

async fn repair_key(inner: &Inner, key: &str, report: &mut RepairReport) -> Result<()> {
    let members = &inner.members;
    let states: Vec<Result<Option<MemberState>>> =
        join_all(members.iter().map(|m| m.read(key))).await;
    let newest = states
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.as_ref().ok().and_then(|s| s.as_ref()).map(|s| (i, s)))
        .max_by(|a, b| a.1.meta.order().cmp(&b.1.meta.order()))
        .map(|(i, s)| (i, s.meta.clone()));
    let Some((holder, newest)) = newest else {
        return Ok(()); // gone everywhere since the listing
    };
    if newest.deleted
        && states.iter().all(Result::is_ok)
        && newest.rv.wall_time() + inner.config.tombstone_grace < SystemTime::now()
    {
        // Past the grace period on every member: remove the tombstone everywhere.
        let mut purged = true;
        for (m, s) in members.iter().zip(&states) {
            if matches!(s, Ok(Some(_)))
                && m.call(|st| async move { st.delete(key).await })
                    .await
                    .is_err()
            {
                purged = false;
                report.failed += 1;
            }
        }
        if purged {
            report.tombstones_purged += 1;
        }
        return Ok(());
    }
    let mut replica: Option<Replica> = None;
    for (i, (m, state)) in members.iter().zip(states).enumerate() {
        let state = match state {
            Ok(s) => s,
            Err(_) => {
                report.failed += 1;
                continue;
            }
        };
        if i == holder
            || state
                .as_ref()
                .is_some_and(|s| s.meta.order() >= newest.order())
        {
            continue;
        }
        if replica.is_none() {
            let got = members[holder]
                .call(|s| async move { s.get(key, GetOptions::default()).await })
                .await;
            match got {
                Ok(got) => replica = Some(Replica::from_get(&members[holder].name, got)?),
                Err(_) => {
                    report.failed += 1;
                    return Ok(());
                }
            }
        }
        let Some(r) = &replica else { continue };
        match apply_if_newer(m, key, r, Some(state), &inner.conflicts, false).await {
            Ok(Applied::Written) => {
                report.copied += 1;
                if r.meta.deleted {
                    report.tombstones_copied += 1;
                }
            }
            Ok(Applied::AlreadyNewer) => {}
            Err(_) => report.failed += 1,
        }
    }
    Ok(())
}
