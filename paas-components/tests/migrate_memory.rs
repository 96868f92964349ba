//! `migrate` in bounded memory: copies 20,000 documents (SQLite to SQLite) and a 256 MiB
//! object (file store to file store) and measures the peak of live heap bytes during the copy
//! with a counting global allocator. The stores keep their data on disk, so the peak is
//! migrate's own buffering (plus the stores' per-request buffers).
//!
//! One test in this binary on purpose: the allocator counts the whole process.
#![cfg(all(feature = "sqlite", feature = "local"))]
// A global allocator is an `unsafe impl`; it only forwards to the system allocator.
#![allow(unsafe_code)]

use bytes::Bytes;
use cloud_abstraction::database::{DocumentStore, PutDocumentOptions, WriteOp};
use cloud_abstraction::storage::{BlobStore, BlobStoreExt, PutOptions};
use paas_components::database::SqliteDocumentStore;
use paas_components::migrate::{CopyOptions, copy_blobs, copy_collection};
use paas_components::storage::LocalBlobStore;
use serde_json::json;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged to the system allocator.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged to the system allocator.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                let grow = new_size - layout.size();
                let now = LIVE.fetch_add(grow, Ordering::Relaxed) + grow;
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Starts a measurement: the peak so far is forgotten; returns the live bytes now.
fn start_measuring() -> usize {
    let now = LIVE.load(Ordering::Relaxed);
    PEAK.store(now, Ordering::Relaxed);
    now
}

/// Heap bytes above `baseline` at the highest point since [`start_measuring`].
fn peak_above(baseline: usize) -> usize {
    PEAK.load(Ordering::Relaxed).saturating_sub(baseline)
}

const MIB: usize = 1024 * 1024;
const DOCUMENTS: usize = 20_000;
const OBJECT_SIZE: usize = 256 * MIB;
const LIMIT: usize = 64 * MIB;

/// Part `i` of the big object: deterministic, and different per part.
fn part(i: usize, len: usize) -> Bytes {
    let mut x = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

#[test]
fn copies_20000_documents_and_a_256_mib_object_in_bounded_memory() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();

        // Documents: SQLite file to SQLite file.
        let url = |name: &str| format!("sqlite://{}", dir.path().join(name).display());
        let from = SqliteDocumentStore::connect(&url("from.db")).await.unwrap();
        let to = SqliteDocumentStore::connect(&url("to.db")).await.unwrap();
        for start in (0..DOCUMENTS).step_by(500) {
            let ops = (start..start + 500)
                .map(|i| WriteOp::Put {
                    collection: "cars".into(),
                    id: format!("car-{i:05}"),
                    value: json!({"vin": format!("WVW{i:05}"), "km": i, "tags": ["a", "b"]}),
                    options: PutDocumentOptions::default(),
                })
                .collect();
            from.write_batch(ops).await.unwrap();
        }
        let baseline = start_measuring();
        let report = copy_collection(&from, &to, "cars", CopyOptions::default(), |_| {})
            .await
            .unwrap();
        let documents_peak = peak_above(baseline);
        assert_eq!(report.copied, DOCUMENTS as u64);
        assert_eq!(report.verified, DOCUMENTS as u64);
        assert!(report.mismatches.is_empty());
        assert_eq!(
            to.get("cars", "car-12345").await.unwrap().unwrap().value["km"],
            12345
        );

        // One 256 MiB object (written in parts, so seeding stays small too): file to file.
        let src = LocalBlobStore::open(dir.path().join("src")).unwrap();
        let dst = LocalBlobStore::open(dir.path().join("dst")).unwrap();
        let key = "firmware/image.bin";
        let upload = src
            .create_multipart(
                key,
                PutOptions::default().with_content_type("application/octet-stream"),
            )
            .await
            .unwrap();
        let mut parts = Vec::new();
        for i in 0..OBJECT_SIZE / (16 * MIB) {
            parts.push(
                src.put_part(key, &upload, i as u32, part(i, 16 * MIB))
                    .await
                    .unwrap(),
            );
        }
        src.complete_multipart(key, &upload, parts).await.unwrap();
        src.put_bytes("firmware/notes.txt", "small".into())
            .await
            .unwrap();
        let baseline = start_measuring();
        let report = copy_blobs(&src, &dst, "firmware/", CopyOptions::default(), |_| {})
            .await
            .unwrap();
        let object_peak = peak_above(baseline);
        assert_eq!((report.copied, report.verified), (2, 2));
        assert!(report.mismatches.is_empty(), "{:?}", report.mismatches);
        assert_eq!(report.bytes, OBJECT_SIZE as u64 + 5);
        let head = dst.head(key).await.unwrap();
        assert_eq!(head.size, OBJECT_SIZE as u64);
        assert_eq!(
            head.content_type.as_deref(),
            Some("application/octet-stream")
        );
        // Spot checks of the content: the first and the last part.
        let first = dst
            .get(
                key,
                cloud_abstraction::storage::GetOptions::range(0..16 * MIB as u64),
            )
            .await
            .unwrap();
        assert!(first.data == part(0, 16 * MIB));
        let last_start = (OBJECT_SIZE - 16 * MIB) as u64;
        let last = dst
            .get(
                key,
                cloud_abstraction::storage::GetOptions::range(last_start..OBJECT_SIZE as u64),
            )
            .await
            .unwrap();
        assert!(last.data == part(OBJECT_SIZE / (16 * MIB) - 1, 16 * MIB));

        println!(
            "migrate peak heap above baseline: {:.1} MiB copying {DOCUMENTS} documents, \
             {:.1} MiB copying a {} MiB object (limit {} MiB)",
            documents_peak as f64 / MIB as f64,
            object_peak as f64 / MIB as f64,
            OBJECT_SIZE / MIB,
            LIMIT / MIB
        );
        assert!(
            documents_peak < LIMIT,
            "copying {DOCUMENTS} documents peaked at {documents_peak} bytes"
        );
        assert!(
            object_peak < LIMIT,
            "copying a 256 MiB object peaked at {object_peak} bytes"
        );
    });
}
