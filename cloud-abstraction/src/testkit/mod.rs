//! The conformance kit: what every backend must do, defined once.
//!
//! Each trait has a suite (a list of [`Case`]s) and a proptest model test that compares
//! random operation sequences with a plain in-memory reference model. A backend, ours or a
//! third party's, certifies itself with one call per suite:
//!
//! ```ignore
//! #[tokio::test]
//! async fn conformance() {
//!     let store: Arc<dyn BlobStore> = Arc::new(MyStore::new());
//!     cloud_abstraction::testkit::storage::run_suite(store).await;
//! }
//! ```
//!
//! Cases are chosen by declared capability: a case for an optional feature that the backend
//! does not claim asserts instead that the operation fails with
//! [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported). Every case uses its own random
//! names (keys under a unique prefix, unique collections / topics / workloads), so suites can
//! run against shared, long-lived servers and clean up after themselves.

pub mod compute;
pub mod database;
pub mod queue;
pub mod storage;

use futures::FutureExt;
use futures::future::BoxFuture;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

/// One conformance case: a name and an async check that panics on failure.
pub struct Case<T: ?Sized> {
    /// The case's name, e.g. `"put_create_race"`.
    pub name: &'static str,
    /// The check.
    pub run: fn(Arc<T>) -> BoxFuture<'static, ()>,
}

impl<T: ?Sized> Clone for Case<T> {
    fn clone(&self) -> Self {
        Self {
            name: self.name,
            run: self.run,
        }
    }
}

impl<T: ?Sized> std::fmt::Debug for Case<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Case").field("name", &self.name).finish()
    }
}

/// Builds a [`Case`] from an `async fn(Arc<dyn Trait>)`.
#[macro_export]
macro_rules! conformance_case {
    ($name:ident) => {
        $crate::testkit::Case {
            name: stringify!($name),
            run: |target| Box::pin($name(target)),
        }
    };
}

/// What a suite run found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The suite (`"storage"`, `"database"`, ...).
    pub suite: String,
    /// The backend's name.
    pub backend: String,
    /// Names of the cases that passed.
    pub passed: Vec<&'static str>,
    /// Names and panic messages of the cases that failed.
    pub failed: Vec<(&'static str, String)>,
}

impl Report {
    /// Panics with every failure listed, if there was any.
    pub fn assert_passed(&self) {
        if !self.failed.is_empty() {
            let mut message = format!(
                "{} of {} {} conformance cases failed on `{}`:\n",
                self.failed.len(),
                self.failed.len() + self.passed.len(),
                self.suite,
                self.backend
            );
            for (name, why) in &self.failed {
                message.push_str(&format!("  - {name}: {why}\n"));
            }
            panic!("{message}");
        }
    }
}

/// Runs `cases` one after the other against `target`, catching each case's panic so that one
/// failure does not hide the others, and prints one line per case.
pub async fn run_cases<T: ?Sized + Send + Sync + 'static>(
    suite: &str,
    backend: &str,
    target: Arc<T>,
    cases: &[Case<T>],
) -> Report {
    let mut report = Report {
        suite: suite.to_string(),
        backend: backend.to_string(),
        ..Report::default()
    };
    for case in cases {
        let outcome = AssertUnwindSafe((case.run)(Arc::clone(&target)))
            .catch_unwind()
            .await;
        match outcome {
            Ok(()) => {
                println!("conformance {suite}/{backend}: {} ... ok", case.name);
                report.passed.push(case.name);
            }
            Err(panic) => {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panicked".to_string());
                println!(
                    "conformance {suite}/{backend}: {} ... FAILED: {why}",
                    case.name
                );
                report.failed.push((case.name, why));
            }
        }
    }
    println!(
        "conformance {suite}/{backend}: {} cases passed, {} failed",
        report.passed.len(),
        report.failed.len()
    );
    report
}

/// A name unique to this run: `prefix` plus a random lower-case suffix (valid as a resource
/// name, object key segment and document id).
pub fn unique_name(prefix: &str) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    let suffix: String = (0..10)
        .map(|_| {
            let n = rng.random_range(0..36u8);
            (if n < 10 { b'0' + n } else { b'a' + n - 10 }) as char
        })
        .collect();
    format!("{prefix}{suffix}")
}

/// Asserts that `result` failed with `kind`, with a readable message otherwise.
#[track_caller]
pub fn assert_kind<T: std::fmt::Debug>(
    result: crate::Result<T>,
    kind: crate::ErrorKind,
    what: &str,
) {
    match result {
        Ok(v) => panic!("{what}: expected a {kind} error, got Ok({v:?})"),
        Err(e) => assert_eq!(e.kind(), kind, "{what}: expected {kind}, got {e}"),
    }
}

/// The number of proptest cases a model test runs: `PROPTEST_CASES` if set, else `default`.
pub fn proptest_cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
