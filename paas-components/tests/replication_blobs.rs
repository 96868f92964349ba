//! The replicated blob store over embedded members: the whole kit and model test (two memory
//! members; a memory and a local-file member), and each guarantee on its own (reserved
//! metadata hidden and refused, hints before the ack, reads avoid a member that is behind,
//! no resurrection, portable ETags, conflicts reported, split-brain creates, repair with a
//! cursor, tombstone purge, members without conditional put, recovery by a new handle).
#![cfg(all(feature = "memory", feature = "local"))]

mod support;

use bytes::Bytes;
use cloud_abstraction::storage::{
    BlobStore, BlobStoreExt, GetOptions, PutMode, PutOptions, StorageCapabilities,
};
use cloud_abstraction::testkit::{assert_kind, storage};
use cloud_abstraction::{ErrorKind, Location};
use paas_components::layers::{self, CircuitBreakerConfig, FaultInjector};
use paas_components::multicloud::ReplicatedBlobStore;
use paas_components::multicloud::replicate::blobs::{RESERVED_PREFIX, ReplicationMeta};
use paas_components::multicloud::replicate::{RepairCursor, ReplicationBuilder};
use paas_components::storage::{LocalBlobStore, MemoryBlobStore};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn breaker() -> CircuitBreakerConfig {
    CircuitBreakerConfig {
        consecutive_failures: 2,
        open_for: Duration::from_millis(200),
        successes_to_close: 1,
        ..Default::default()
    }
}

struct Pair {
    store: ReplicatedBlobStore,
    a: Arc<dyn BlobStore>,
    b: Arc<dyn BlobStore>,
    fa: FaultInjector,
    fb: FaultInjector,
}

fn memory(provider: &str) -> Arc<dyn BlobStore> {
    Arc::new(MemoryBlobStore::new().with_location(Location::new(provider, "r1")))
}

async fn pair_as(
    origin: &str,
    a: Arc<dyn BlobStore>,
    b: Arc<dyn BlobStore>,
    background: bool,
) -> Pair {
    let fa = FaultInjector::new(1);
    let fb = FaultInjector::new(2);
    let mut builder = ReplicationBuilder::blobs()
        .member("a", layers::blob_store(a.clone(), fa.layer()))
        .member("b", layers::blob_store(b.clone(), fb.layer()))
        .breaker(breaker())
        .origin(origin);
    if !background {
        builder = builder.without_background_replay();
    }
    Pair {
        store: builder.build().await.unwrap(),
        a,
        b,
        fa,
        fb,
    }
}

async fn pair(background: bool) -> Pair {
    pair_as("test", memory("aws"), memory("azure"), background).await
}

fn local() -> (tempfile::TempDir, Arc<dyn BlobStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalBlobStore::open(dir.path()).unwrap();
    (dir, Arc::new(store))
}

/// The bookkeeping a member holds for `key` (`None`: nothing there).
async fn raw(member: &Arc<dyn BlobStore>, key: &str) -> Option<(ReplicationMeta, Bytes)> {
    match member.get(key, GetOptions::default()).await {
        Ok(got) => Some((
            ReplicationMeta::from_metadata(&got.meta.metadata).expect("replicated object"),
            got.data,
        )),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => panic!("raw read of {key}: {e}"),
    }
}

async fn hints_on(member: &Arc<dyn BlobStore>) -> usize {
    member
        .list_all(&format!("{RESERVED_PREFIX}hints/"))
        .await
        .unwrap()
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kit_over_two_memory_members() {
    let p = pair(true).await;
    let report = storage::run_suite(Arc::new(p.store)).await;
    assert_eq!(report.passed.len(), storage::cases().len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kit_over_memory_and_local_file_members() {
    let (_dir, file) = local();
    let p = pair_as("test", memory("aws"), file, true).await;
    let report = storage::run_suite(Arc::new(p.store)).await;
    assert_eq!(report.passed.len(), storage::cases().len());
}

#[test]
fn model_test_over_two_memory_members() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let store = runtime.block_on(async { pair(false).await.store });
    storage::run_model_test(move || Arc::new(store.clone()) as Arc<dyn BlobStore>);
}

#[test]
fn model_test_over_memory_and_local_file_members() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (_dir, file) = local();
    let store = runtime.block_on(async { pair_as("test", memory("aws"), file, false).await.store });
    storage::run_model_test(move || Arc::new(store.clone()) as Arc<dyn BlobStore>);
}

#[tokio::test]
async fn reserved_metadata_and_prefix_are_hidden_and_refused() {
    let p = pair(false).await;
    let put = p
        .store
        .put(
            "cars/1",
            Bytes::from_static(b"x"),
            PutOptions::default().with_metadata("owner", "fleet"),
        )
        .await
        .unwrap();
    // The members hold the version in reserved metadata, the same on both.
    let (ma, _) = raw(&p.a, "cars/1").await.unwrap();
    let (mb, _) = raw(&p.b, "cars/1").await.unwrap();
    assert_eq!(ma, mb);
    assert_eq!(ma.rv.origin, "test");
    assert_eq!(put.etag, ma.etag(), "the portable ETag is the version's");
    // The caller sees only its own metadata.
    let head = p.store.head("cars/1").await.unwrap();
    assert_eq!(head.metadata.len(), 1, "{:?}", head.metadata);
    assert_eq!(head.etag, put.etag);
    let listed = p.store.list_all("").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].metadata, head.metadata);
    // Reserved names and keys are refused.
    assert_kind(
        p.store
            .put(
                "cars/2",
                Bytes::new(),
                PutOptions::default().with_metadata("_repl_v", "1.x"),
            )
            .await,
        ErrorKind::InvalidArgument,
        "reserved metadata name",
    );
    assert_kind(
        p.store
            .put(
                &format!("{RESERVED_PREFIX}x"),
                Bytes::new(),
                PutOptions::default(),
            )
            .await,
        ErrorKind::InvalidArgument,
        "reserved key",
    );
    // A member's own ETag differs from the portable one, and if_match takes the portable.
    let member_etag = p.a.head("cars/1").await.unwrap().etag;
    assert_ne!(member_etag, put.etag);
    assert_kind(
        p.store
            .put("cars/1", Bytes::new(), PutOptions::if_match(member_etag))
            .await,
        ErrorKind::PreconditionFailed,
        "a member's ETag is not the store's",
    );
}

#[tokio::test]
async fn hinted_write_is_acknowledged_and_reads_avoid_the_member_behind() {
    let p = pair(false).await;
    p.store
        .put_bytes("k", Bytes::from_static(b"v1"))
        .await
        .unwrap();
    p.fb.set_down(true);
    p.store
        .put_bytes("k", Bytes::from_static(b"v2"))
        .await
        .unwrap();
    // Acknowledged with a hint for b stored on a, before the ack.
    assert_eq!(hints_on(&p.a).await, 1);
    assert!(p.store.is_behind(1));
    assert_eq!(raw(&p.b, "k").await.unwrap().1, Bytes::from_static(b"v1"));
    p.fb.set_down(false);
    // b is back but behind: reads still come from a.
    assert_eq!(p.store.get_bytes("k").await.unwrap(), "v2");
    let report = p.store.replay_hints().await;
    assert_eq!(report.copied, 1, "{report:?}");
    assert_eq!(report.drained, vec!["b".to_string()]);
    assert!(!p.store.is_behind(1));
    assert_eq!(hints_on(&p.a).await, 0);
    assert_eq!(raw(&p.b, "k").await.unwrap().1, Bytes::from_static(b"v2"));
    assert_eq!(p.store.hint_counts(), (1, 1));
}

#[tokio::test]
async fn a_write_reaching_no_member_fails_retryably() {
    let p = pair(false).await;
    p.fa.set_down(true);
    p.fb.set_down(true);
    let e = p.store.put_bytes("k", Bytes::new()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.is_target_failure());
    assert!(raw(&p.a, "k").await.is_none() && raw(&p.b, "k").await.is_none());
}

#[tokio::test]
async fn late_replay_does_not_resurrect_a_deleted_key() {
    let p = pair(false).await;
    p.fb.set_down(true);
    p.store
        .put_bytes("k", Bytes::from_static(b"old"))
        .await
        .unwrap();
    p.fb.set_down(false);
    // b missed the put; now a delete reaches both (b gets the tombstone directly).
    p.store.delete("k").await.unwrap();
    let (tomb, data) = raw(&p.b, "k").await.unwrap();
    assert!(tomb.deleted && data.is_empty());
    // The late replay of the put finds the newer tombstone: nothing comes back.
    let report = p.store.replay_hints().await;
    assert_eq!(report.copied, 0, "{report:?}");
    assert!(raw(&p.b, "k").await.unwrap().0.deleted);
    assert_kind(p.store.head("k").await, ErrorKind::NotFound, "deleted");
    assert!(
        p.store.list_all("").await.unwrap().is_empty(),
        "tombstones are not listed"
    );
    // Nor does repair.
    p.store.repair_all("").await.unwrap();
    assert_kind(
        p.store.get("k", GetOptions::default()).await,
        ErrorKind::NotFound,
        "after repair",
    );
}

#[tokio::test]
async fn conditional_writes_use_the_portable_etag_on_any_member() {
    let p = pair(false).await;
    let v1 = p
        .store
        .put_bytes("k", Bytes::from_static(b"1"))
        .await
        .unwrap()
        .etag;
    // The home (a) is down: b decides, against the same portable ETag.
    p.fa.set_down(true);
    let v2 = p
        .store
        .put(
            "k",
            Bytes::from_static(b"2"),
            PutOptions::if_match(v1.clone()),
        )
        .await
        .unwrap()
        .etag;
    assert_kind(
        p.store
            .put("k", Bytes::from_static(b"3"), PutOptions::if_match(v1))
            .await,
        ErrorKind::PreconditionFailed,
        "stale ETag on the standby",
    );
    p.fa.set_down(false);
    // a is behind: the decision uses the newest state answered, not a's stale one.
    assert_kind(
        p.store.put("k", Bytes::new(), PutOptions::create()).await,
        ErrorKind::AlreadyExists,
        "create while the home is behind",
    );
    p.store.replay_hints().await;
    assert_eq!(p.store.head("k").await.unwrap().etag, v2);
}

/// Two handles (processes) each reaching only one cloud: both decide alone.
#[tokio::test]
async fn split_brain_creates_both_succeed_and_one_is_reported() {
    let (a, b) = (memory("aws"), memory("azure"));
    let left = pair_as("left", a.clone(), b.clone(), false).await;
    let right = pair_as("right", a.clone(), b.clone(), false).await;
    let conflicts = Arc::new(Mutex::new(Vec::new()));
    for store in [&left.store, &right.store] {
        let seen = Arc::clone(&conflicts);
        store.on_conflict(move |c| seen.lock().unwrap().push(c.clone()));
    }
    left.fb.set_down(true);
    right.fa.set_down(true);
    let l = left
        .store
        .put("cmd/1", Bytes::from_static(b"left"), PutOptions::create())
        .await
        .unwrap();
    let r = right
        .store
        .put("cmd/1", Bytes::from_static(b"right"), PutOptions::create())
        .await
        .unwrap();
    assert_ne!(l.etag, r.etag);
    left.fb.set_down(false);
    right.fa.set_down(false);
    left.store.replay_hints().await;
    right.store.replay_hints().await;
    left.store.repair_all("").await.unwrap();
    // One version everywhere, the other reported.
    let (ma, da) = raw(&a, "cmd/1").await.unwrap();
    let (mb, db) = raw(&b, "cmd/1").await.unwrap();
    assert_eq!((ma.clone(), da), (mb, db));
    let conflicts = conflicts.lock().unwrap().clone();
    assert!(!conflicts.is_empty(), "the split-brain create was reported");
    assert!(
        conflicts
            .iter()
            .all(|c| c.id == "cmd/1" && c.winner == ma.rv && c.loser != ma.rv),
        "{conflicts:?}"
    );
}

#[tokio::test]
async fn concurrent_puts_keep_one_and_report_the_other() {
    let p = pair(false).await;
    p.store
        .put_bytes("hot", Bytes::from_static(b"0"))
        .await
        .unwrap();
    // b misses the first write (a hint), then a concurrent-looking write reaches only b:
    // two versions with the same parent, decided without seeing each other.
    p.fb.set_down(true);
    p.store
        .put_bytes("hot", Bytes::from_static(b"a"))
        .await
        .unwrap();
    p.fb.set_down(false);
    p.fa.set_down(true);
    // b is behind, so the write sees the newest version answered... only b's; its parent is
    // b's stale state, older than a's write.
    p.store
        .put_bytes("hot", Bytes::from_static(b"b"))
        .await
        .unwrap();
    p.fa.set_down(false);
    p.store.replay_hints().await;
    p.store.repair_all("").await.unwrap();
    assert_eq!(
        raw(&p.a, "hot").await.unwrap().1,
        raw(&p.b, "hot").await.unwrap().1
    );
    assert_eq!(p.store.conflict_count(), 1, "one conflict, reported once");
}

#[tokio::test]
async fn repair_copies_the_newer_side_propagates_tombstones_and_resumes() {
    let p = pair(false).await;
    for i in 0..6 {
        p.store
            .put_bytes(&format!("r/{i}"), Bytes::from(vec![i as u8]))
            .await
            .unwrap();
    }
    // b misses everything that follows, and its hints are dropped (as if lost with b's
    // holder): only repair can bring it back.
    p.fb.set_down(true);
    p.store
        .put_bytes("r/0", Bytes::from_static(b"new"))
        .await
        .unwrap();
    p.store.delete("r/1").await.unwrap();
    p.store
        .put_bytes("r/9", Bytes::from_static(b"fresh"))
        .await
        .unwrap();
    p.fb.set_down(false);
    // Past b's breaker cool-down: repair walks b too.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for h in p.a.list_all(RESERVED_PREFIX).await.unwrap() {
        p.a.delete(&h.key).await.unwrap();
    }
    let first = p
        .store
        .repair("r/", RepairCursor::default(), 4)
        .await
        .unwrap();
    assert_eq!(first.compared, 4);
    let next = first.next.clone().expect("stopped at the limit");
    let rest = p.store.repair_all("r/").await.unwrap();
    let resumed = p.store.repair("r/", next, 100).await.unwrap();
    assert!(resumed.next.is_none());
    assert_eq!(first.copied + rest.copied, 3, "{first:?} {rest:?}");
    assert_eq!(rest.tombstones_copied + first.tombstones_copied, 1);
    assert_eq!(rest.failed, 0);
    assert_eq!(
        raw(&p.b, "r/0").await.unwrap().1,
        Bytes::from_static(b"new")
    );
    assert!(raw(&p.b, "r/1").await.unwrap().0.deleted);
    assert_eq!(
        raw(&p.b, "r/9").await.unwrap().1,
        Bytes::from_static(b"fresh")
    );
    let again = p.store.repair_all("r/").await.unwrap();
    assert_eq!(again.copied, 0, "nothing left to repair");
}

#[tokio::test]
async fn tombstones_past_the_grace_are_purged_by_repair() {
    let a = memory("aws");
    let b = memory("azure");
    let store = ReplicationBuilder::blobs()
        .member("a", a.clone())
        .member("b", b.clone())
        .tombstone_grace(Duration::from_millis(50))
        .without_background_replay()
        .build()
        .await
        .unwrap();
    store
        .put_bytes("t", Bytes::from_static(b"x"))
        .await
        .unwrap();
    store.delete("t").await.unwrap();
    assert!(raw(&a, "t").await.unwrap().0.deleted);
    let early = store.repair_all("").await.unwrap();
    assert_eq!(early.tombstones_purged, 0, "still within the grace");
    tokio::time::sleep(Duration::from_millis(80)).await;
    let report = store.repair_all("").await.unwrap();
    assert_eq!(report.tombstones_purged, 1);
    assert!(raw(&a, "t").await.is_none() && raw(&b, "t").await.is_none());
}

/// A blob store that claims no conditional put (as s3s-fs with `conditional_put=disabled`).
#[derive(Debug)]
struct NoConditionalPut(Arc<dyn BlobStore>);

#[async_trait::async_trait]
impl BlobStore for NoConditionalPut {
    fn info(&self) -> cloud_abstraction::BackendInfo {
        self.0.info()
    }
    fn capabilities(&self) -> StorageCapabilities {
        let mut c = self.0.capabilities();
        c.conditional_put = false;
        c
    }
    async fn put(
        &self,
        key: &str,
        payload: Bytes,
        options: PutOptions,
    ) -> cloud_abstraction::Result<cloud_abstraction::storage::PutResult> {
        if options.mode != PutMode::Overwrite {
            return Err(cloud_abstraction::Error::unsupported(
                "nocond",
                "conditional put",
            ));
        }
        self.0.put(key, payload, options).await
    }
    async fn get(
        &self,
        key: &str,
        options: GetOptions,
    ) -> cloud_abstraction::Result<cloud_abstraction::storage::GetResult> {
        self.0.get(key, options).await
    }
    async fn head(
        &self,
        key: &str,
    ) -> cloud_abstraction::Result<cloud_abstraction::storage::ObjectMeta> {
        self.0.head(key).await
    }
    async fn delete(&self, key: &str) -> cloud_abstraction::Result<()> {
        self.0.delete(key).await
    }
    async fn list_page(
        &self,
        options: cloud_abstraction::storage::ListOptions,
    ) -> cloud_abstraction::Result<cloud_abstraction::storage::ListPage> {
        self.0.list_page(options).await
    }
    async fn copy(
        &self,
        from: &str,
        to: &str,
        options: cloud_abstraction::storage::CopyOptions,
    ) -> cloud_abstraction::Result<cloud_abstraction::storage::PutResult> {
        self.0.copy(from, to, options).await
    }
    async fn create_multipart(
        &self,
        key: &str,
        options: PutOptions,
    ) -> cloud_abstraction::Result<cloud_abstraction::storage::MultipartId> {
        self.0.create_multipart(key, options).await
    }
    async fn put_part(
        &self,
        key: &str,
        upload: &cloud_abstraction::storage::MultipartId,
        part_number: u32,
        data: Bytes,
    ) -> cloud_abstraction::Result<cloud_abstraction::storage::PartId> {
        self.0.put_part(key, upload, part_number, data).await
    }
    async fn complete_multipart(
        &self,
        key: &str,
        upload: &cloud_abstraction::storage::MultipartId,
        parts: Vec<cloud_abstraction::storage::PartId>,
    ) -> cloud_abstraction::Result<cloud_abstraction::storage::PutResult> {
        self.0.complete_multipart(key, upload, parts).await
    }
    async fn abort_multipart(
        &self,
        key: &str,
        upload: &cloud_abstraction::storage::MultipartId,
    ) -> cloud_abstraction::Result<()> {
        self.0.abort_multipart(key, upload).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_without_conditional_put_is_written_blindly() {
    let b = memory("azure");
    let p = pair_as(
        "test",
        memory("aws"),
        Arc::new(NoConditionalPut(b.clone())),
        false,
    )
    .await;
    let caps = p.store.capabilities();
    assert!(!caps.conditional_put, "only what every member has");
    assert!(!caps.multipart && !caps.presign && caps.conditional_get);
    assert_kind(
        p.store.put("k", Bytes::new(), PutOptions::create()).await,
        ErrorKind::Unsupported,
        "create without every member's conditional put",
    );
    // Plain writes still replicate, with overwrites on b.
    p.store
        .put_bytes("k", Bytes::from_static(b"1"))
        .await
        .unwrap();
    p.store
        .put_bytes("k", Bytes::from_static(b"2"))
        .await
        .unwrap();
    assert_eq!(raw(&b, "k").await.unwrap().1, Bytes::from_static(b"2"));
    // And the whole kit passes with conditional puts declared unsupported.
    let report = storage::run_suite(Arc::new(p.store)).await;
    assert_eq!(report.passed.len(), storage::cases().len());
}

#[tokio::test]
async fn a_new_handle_finds_and_replays_earlier_hints() {
    let (a, b) = (memory("aws"), memory("azure"));
    let first = pair_as("first", a.clone(), b.clone(), false).await;
    first.fb.set_down(true);
    first
        .store
        .put_bytes("k", Bytes::from_static(b"hinted"))
        .await
        .unwrap();
    drop(first); // as if the process died after the ack
    let second = pair_as("second", a.clone(), b.clone(), false).await;
    assert!(
        second.store.is_behind(1),
        "b starts behind: a holds a hint for it"
    );
    assert_eq!(second.store.get_bytes("k").await.unwrap(), "hinted");
    let report = second.store.replay_hints().await;
    assert_eq!(report.copied, 1);
    assert_eq!(raw(&b, "k").await.unwrap().1, Bytes::from_static(b"hinted"));
}

#[tokio::test]
async fn unsupported_calls_and_bad_origins_are_refused() {
    let p = pair(false).await;
    assert_kind(
        p.store.create_multipart("k", PutOptions::default()).await,
        ErrorKind::Unsupported,
        "multipart",
    );
    let bad = ReplicationBuilder::blobs()
        .member("a", memory("aws"))
        .origin("has space")
        .build()
        .await;
    assert_kind(bad, ErrorKind::InvalidArgument, "origin with a space");
    let bad = ReplicationBuilder::blobs()
        .member("a/b", memory("aws"))
        .build()
        .await;
    assert_kind(bad, ErrorKind::InvalidArgument, "member name with a slash");
}
