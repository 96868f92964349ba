//! Bad input, fuzzed: the `open_*` URL openers on arbitrary and near-valid URLs of every
//! scheme, and object keys / user metadata / content types on the embedded blob stores.
//! Nothing may panic or hang; errors must be typed and must not show a URL's password.
//!
//! Opening must not reach anything outside the test, so every generated URL is classified:
//! - embedded schemes (`mem`, `file`, `sqlite`, `process`, `sim`) and the `s3` / `azure`
//!   builders, which only build a client, are opened to completion (10 s limit), but only when
//!   the path they would create lies inside this run's temporary directory;
//! - server schemes (`postgres`, `mysql`, `mariadb`, `redis`) are opened only when they point at
//!   a closed loopback port (and carry no query parameter that could redirect the connection),
//!   and the open is polled twice and then dropped: URL parsing and option validation run
//!   before the first network wait, which is what is exercised here (a refused connection is
//!   retried by the pools for seconds, too slow for a million inputs);
//! - anything else is only parsed (counted as "parse only").
//!
//! Inputs per target: `FUZZ_CASES` (default 2,000), seed `FUZZ_SEED`. Long run:
//! `FUZZ_CASES=1000000 cargo test -p paas-components --all-features --test fuzz_open -- --nocapture`.

use bytes::Bytes;
use cloud_abstraction::storage::{BlobStore, PutOptions};
use cloud_abstraction::{Error, ErrorKind, ResourceUrl};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use std::collections::BTreeMap;
use std::path::{Component, Path};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

// ---- harness ----------------------------------------------------------------------------------

fn cases() -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(2_000)
}

fn runner() -> TestRunner {
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_0be7);
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config {
        cases: cases(),
        failure_persistence: None,
        max_shrink_iters: 500,
        ..Config::default()
    };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes))
}

/// A password that occurs nowhere else in a generated URL.
const MARK: &str = "Pw7Secr3t";

struct Sandbox {
    dir: tempfile::TempDir,
    /// A loopback port nothing listens on (bound, then released).
    closed_port: u16,
    rt: tokio::runtime::Runtime,
}

fn sandbox() -> &'static Sandbox {
    static S: OnceLock<Sandbox> = OnceLock::new();
    S.get_or_init(|| {
        let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        Sandbox {
            dir: tempfile::tempdir().expect("temp dir"),
            closed_port,
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime"),
        }
    })
}

fn root() -> String {
    sandbox().dir.path().display().to_string()
}

/// Text edits applied to a valid URL to make a near-valid one.
#[derive(Debug, Clone)]
enum Edit {
    Insert(usize, char),
    Delete(usize),
    Token(usize, usize),
    Truncate(usize),
}

const TOKENS: &[&str] = &[
    "%",
    "%2F",
    "%00",
    "%ff",
    "//",
    "://",
    "@",
    ":",
    "::",
    "[",
    "]",
    "?",
    "#",
    "&",
    "=",
    "65536",
    "-1",
    "\u{feff}",
    "é",
    "😀",
    ":memory:",
    "mode=ro",
    "mode=memory",
    "vfs=nope",
    "sslmode=",
    "region=",
    "endpoint=",
    "emulator=true",
    "account=",
    "conditional_put=",
    "allow_http=true",
    "statement-cache-capacity=x",
    "ssl-mode=VERIFY_IDENTITY",
    "protocol=resp3",
    "0",
    "/0",
    "/99999999999",
];

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let c = prop_oneof![
        4 => prop::sample::select("/:@?#&=%.\\\"' \t\n\0-_09azAZ".chars().collect::<Vec<_>>()),
        1 => any::<char>(),
    ];
    let edit = prop_oneof![
        (any::<usize>(), c).prop_map(|(i, c)| Edit::Insert(i, c)),
        any::<usize>().prop_map(Edit::Delete),
        (any::<usize>(), any::<usize>()).prop_map(|(i, t)| Edit::Token(i, t)),
        any::<usize>().prop_map(Edit::Truncate),
    ];
    prop::collection::vec(edit, 0..4)
}

fn apply(base: &str, edits: &[Edit]) -> String {
    let mut s: Vec<char> = base.chars().collect();
    for e in edits {
        let at = |i: usize, len: usize| i % (len + 1);
        match *e {
            Edit::Insert(i, c) => {
                let i = at(i, s.len());
                s.insert(i, c);
            }
            Edit::Delete(i) if !s.is_empty() => {
                let i = i % s.len();
                s.remove(i);
            }
            Edit::Token(i, t) => {
                let i = at(i, s.len());
                s.splice(i..i, TOKENS[t % TOKENS.len()].chars());
            }
            Edit::Truncate(i) => {
                let i = at(i, s.len());
                s.truncate(i);
            }
            _ => {}
        }
    }
    s.into_iter().collect()
}

// ---- URL generation and classification --------------------------------------------------------

fn query() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        prop::sample::select(
            &[
                "mode",
                "cache",
                "immutable",
                "region",
                "endpoint",
                "access_key",
                "secret_key",
                "token",
                "conditional_put",
                "allow_http",
                "account",
                "emulator",
                "sslmode",
                "ssl-mode",
                "application_name",
                "statement-cache-capacity",
                "charset",
                "protocol",
                "db",
                "",
            ][..]
        )
        .prop_map(str::to_string),
        "[a-z_]{1,6}",
    ];
    let value = prop_oneof![
        prop::sample::select(
            &[
                "ro",
                "rw",
                "rwc",
                "memory",
                "shared",
                "private",
                "true",
                "false",
                "1",
                "0",
                "eu-west-1",
                "disable",
                "require",
                "verify-full",
                "etag",
                "devstoreaccount1",
            ][..]
        )
        .prop_map(str::to_string),
        "[ -~]{0,8}",
    ];
    let secret = (
        prop::sample::select(&["secret_key", "access_key", "sas", "token", "account_key"][..]),
        "[a-z0-9]{0,4}",
    )
        .prop_map(|(k, v)| (k.to_string(), format!("{MARK}{v}")));
    let pair = prop_oneof![3 => (key, value), 1 => secret];
    prop::collection::vec(pair, 0..3).prop_map(|v| {
        v.iter()
            .enumerate()
            .map(|(i, (k, v))| format!("{}{k}={v}", if i == 0 { '?' } else { '&' }))
            .collect()
    })
}

fn near_valid_url() -> impl Strategy<Value = String> {
    let name = "[a-z0-9_.-]{0,6}";
    let path = prop::collection::vec("[a-zA-Z0-9_.-]{1,4}", 0..3).prop_map(|v| v.join("/"));
    let server = prop::sample::select(
        &[
            "postgres",
            "postgresql",
            "mysql",
            "mariadb",
            "redis",
            "Postgres",
            "rediss",
        ][..],
    );
    // Weights: SQLite and file opens create files and schemas (milliseconds each), so they get
    // fewer inputs than the schemes that are checked in memory.
    let base = prop_oneof![
        3 => (name, path.clone()).prop_map(|(n, p)| format!("mem://{n}/{p}")),
        1 => path.clone().prop_map(|p| format!("file://{}/f/{p}", root())),
        1 => prop_oneof![
            (name, query()).prop_map(|(n, q)| format!("sqlite://{}/{n}.db{q}", root())),
            (name, query()).prop_map(|(n, q)| format!("sqlite:{}/{n}.db{q}", root())),
            query().prop_map(|q| format!("sqlite::memory:{q}")),
        ],
        4 => (server, "[a-z]{0,5}", "[a-z]{0,5}", query()).prop_map(|(s, u, db, q)| {
            let port = sandbox().closed_port;
            format!("{s}://{u}:{MARK}@127.0.0.1:{port}/{db}{q}")
        }),
        3 => (prop::sample::select(&["s3", "azure"][..]), name, query())
            .prop_map(|(s, b, q)| format!("{s}://{b}{q}")),
        2 => (prop::sample::select(&["process", "sim", "nats", "amqp", "docker"][..]), name)
            .prop_map(|(s, n)| format!("{s}://{n}")),
    ];
    (base, edits()).prop_map(|(b, e)| apply(&b, &e))
}

fn url_text() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => any::<String>(),
        1 => "[ -~]{0,30}",
        8 => near_valid_url(),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Opened to completion: nothing leaves the process or the temporary directory.
    Complete,
    /// Opened up to its first network wait.
    Poll,
    /// Only parsed.
    ParseOnly,
}

/// Whether a filesystem path is inside the sandbox and free of `..` (so creating it is safe).
fn inside_sandbox(path: &str) -> bool {
    let p = Path::new(path);
    p.starts_with(sandbox().dir.path())
        && !p
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        && !path.contains('\0')
}

fn classify(text: &str) -> Class {
    let Ok(url) = ResourceUrl::parse(text) else {
        // Unparseable input is rejected by every opener before anything else happens.
        return Class::Complete;
    };
    match url.scheme() {
        "mem" | "process" | "sim" | "s3" | "azure" => Class::Complete,
        "file" if inside_sandbox(&url.path()) => Class::Complete,
        "sqlite" => {
            // sqlx reads the text after `sqlite:` (and `//`) as a file name up to `?`.
            let rest = text.strip_prefix("sqlite:").unwrap_or("");
            let rest = rest.strip_prefix("//").unwrap_or(rest);
            let file = rest.split('?').next().unwrap_or("");
            // sqlx does not cut a `#fragment` off: `sqlite::memory:#x` is a file named
            // `:memory:#x` in the working directory, so a `#` is never opened here.
            if (file == ":memory:" || inside_sandbox(file))
                && !file.contains('%')
                && !text.contains('#')
            {
                Class::Complete
            } else {
                Class::ParseOnly
            }
        }
        "postgres" | "postgresql" | "mysql" | "mariadb" | "redis" => {
            let redirect = url.query_params().iter().any(|(k, _)| {
                let k = k.to_ascii_lowercase();
                ["host", "port", "socket", "addr", "service", "unix"]
                    .iter()
                    .any(|h| k.contains(h))
            });
            let loopback = url.host() == Some("127.0.0.1")
                && url.port() == Some(sandbox().closed_port)
                // The text must say the same as the parse (no host smuggled past it).
                && text.matches('@').count() <= 1
                && !text.contains('\\');
            if loopback && !redirect {
                Class::Poll
            } else {
                Class::ParseOnly
            }
        }
        // Unknown schemes are rejected by name.
        _ => Class::Complete,
    }
}

static COUNTS: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

/// Whether every occurrence of the mark is a secret: in the password or in the value of a
/// secret-named query parameter (the names `ResourceUrl` redacts). Edits can move the mark into
/// a host, a parameter name or a non-secret value, which may legitimately be shown.
fn mark_only_in_secrets(text: &str) -> bool {
    let Ok(url) = ResourceUrl::parse(text) else {
        // The parse error shows only the text before the first `:`.
        return !text.split(':').next().unwrap_or("").contains(MARK);
    };
    let hints = [
        "secret",
        "password",
        "passwd",
        "token",
        "key",
        "signature",
        "sig",
        "sas",
        "credential",
    ];
    let in_password = url
        .as_url()
        .password()
        .map_or(0, |p| p.matches(MARK).count());
    let in_secret_values: usize = url
        .query_params()
        .iter()
        .filter(|(k, _)| hints.iter().any(|h| k.to_ascii_lowercase().contains(h)))
        .map(|(_, v)| v.matches(MARK).count())
        .sum();
    // Percent-decoding can create a mark the raw text does not show, and vice versa.
    let total = url.expose().matches(MARK).count();
    let decoded = url
        .query_params()
        .iter()
        .map(|(k, v)| k.matches(MARK).count() + v.matches(MARK).count())
        .sum::<usize>()
        + url
            .as_url()
            .password()
            .map_or(0, |p| p.matches(MARK).count());
    total > 0 && total == decoded && total == in_password + in_secret_values
}

fn check_error(text: &str, e: &Error) -> Result<(), TestCaseError> {
    if mark_only_in_secrets(text) {
        let mut shown = format!("{e} {e:?}");
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            shown.push_str(&s.to_string());
            source = s.source();
        }
        prop_assert!(!shown.contains(MARK), "password in error: {shown}");
    }
    if ResourceUrl::parse(text).is_err() {
        prop_assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    }
    Ok(())
}

fn check_opened(text: &str, debug: String) -> Result<(), TestCaseError> {
    if mark_only_in_secrets(text) {
        prop_assert!(!debug.contains(MARK), "password in Debug: {debug}");
    }
    Ok(())
}

/// Runs one open according to its class and checks the outcome.
async fn run_open<T: std::fmt::Debug>(
    text: &str,
    class: Class,
    open: impl std::future::Future<Output = cloud_abstraction::Result<T>>,
) -> Result<(), TestCaseError> {
    let outcome = match class {
        Class::ParseOnly => return Ok(()),
        Class::Complete => match tokio::time::timeout(Duration::from_secs(10), open).await {
            Ok(r) => Some(r),
            Err(_) => return Err(TestCaseError::fail(format!("open hung: {text:?}"))),
        },
        Class::Poll => {
            tokio::pin!(open);
            let mut polls = 0;
            std::future::poll_fn(|cx| {
                polls += 1;
                match open.as_mut().poll(cx) {
                    std::task::Poll::Ready(r) => std::task::Poll::Ready(Some(r)),
                    std::task::Poll::Pending if polls >= 2 => std::task::Poll::Ready(None),
                    std::task::Poll::Pending => {
                        cx.waker().wake_by_ref();
                        std::task::Poll::Pending
                    }
                }
            })
            .await
        }
    };
    match outcome {
        None => Ok(()),
        Some(Ok(opened)) => check_opened(text, format!("{opened:?}")),
        Some(Err(e)) => check_error(text, &e),
    }
}

fn check_url(text: String) -> Result<(), TestCaseError> {
    let class = classify(&text);
    COUNTS[class as usize].fetch_add(1, Ordering::Relaxed);
    if let Err(e) = ResourceUrl::parse(&text) {
        prop_assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    }
    sandbox().rt.block_on(async {
        run_open(&text, class, paas_components::open_blob_store(&text)).await?;
        run_open(&text, class, paas_components::open_document_store(&text)).await?;
        run_open(&text, class, paas_components::open_queue(&text)).await?;
        run_open(&text, class, paas_components::open_compute(&text)).await
    })
}

#[test]
fn fuzz_open_urls() {
    let started = Instant::now();
    let result = runner().run(&url_text(), check_url);
    let [complete, poll, parse] = COUNTS.each_ref().map(|c| c.load(Ordering::Relaxed));
    eprintln!(
        "fuzz open_urls: {} inputs in {:.1} s (opened to completion {complete}, polled to the \
         first network wait {poll}, parse only {parse}; counts include shrinking)",
        cases(),
        started.elapsed().as_secs_f64()
    );
    if let Err(e) = result {
        panic!("fuzz open_urls failed: {e}");
    }
    let _ = std::fs::remove_dir_all(sandbox().dir.path().join("f"));
}

// ---- keys, metadata and content types on the embedded blob stores --------------------------------

fn key() -> impl Strategy<Value = String> {
    let valid = prop::collection::vec("[a-z0-9_.-]{1,6}", 1..4).prop_map(|v| v.join("/"));
    prop_oneof![
        4 => valid.clone(),
        3 => (valid, edits()).prop_map(|(k, e)| apply(&k, &e)),
        1 => any::<String>(),
    ]
}

fn metadata() -> impl Strategy<Value = BTreeMap<String, String>> {
    let name = prop_oneof![
        // Mostly names of the portable rule (`[a-z_][a-z0-9_]*`), so that many puts are
        // accepted and read back; the rest near or far from it.
        6 => "[a-z_][a-z0-9_]{0,7}",
        2 => "[a-zA-Z0-9_-]{1,8}",
        1 => "[ -~]{0,8}",
        1 => any::<String>(),
        1 => Just("x".repeat(300)),
    ];
    let value = prop_oneof![
        4 => "[!-~]([ -~]{0,10}[!-~])?",
        1 => "[ -~]{0,12}",
        1 => any::<String>(),
        1 => Just("v".repeat(3000)),
    ];
    prop::collection::btree_map(name, value, 0..4)
}

fn content_type() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("application/json".to_string())),
        "[ -~]{0,16}".prop_map(Some),
        any::<String>().prop_map(Some),
    ]
}

fn stores() -> &'static (Arc<dyn BlobStore>, Arc<dyn BlobStore>) {
    static S: OnceLock<(Arc<dyn BlobStore>, Arc<dyn BlobStore>)> = OnceLock::new();
    S.get_or_init(|| {
        let dir = format!("file://{}/blobs", root());
        sandbox().rt.block_on(async {
            (
                paas_components::open_blob_store("mem://")
                    .await
                    .expect("mem"),
                paas_components::open_blob_store(&dir).await.expect("file"),
            )
        })
    })
}

static PUTS: AtomicU64 = AtomicU64::new(0);

fn check_put(
    (key, metadata, content_type, on_disk): (
        String,
        BTreeMap<String, String>,
        Option<String>,
        bool,
    ),
) -> Result<(), TestCaseError> {
    let (mem, file) = stores();
    // The file store writes (and syncs) real files; it gets one input in 64.
    let store = if on_disk { file } else { mem };
    sandbox().rt.block_on(async {
        let options = PutOptions {
            metadata: metadata.clone(),
            content_type: content_type.clone(),
            ..PutOptions::default()
        };
        match store.put(&key, Bytes::from_static(b"x"), options).await {
            Err(e) => {
                prop_assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{}", e);
            }
            Ok(_) => {
                PUTS.fetch_add(1, Ordering::Relaxed);
                // What was accepted is what is stored.
                let meta = store
                    .head(&key)
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(&meta.metadata, &metadata);
                // A put without a content type reads back with the portable default.
                let expected = content_type
                    .clone()
                    .or_else(|| Some(cloud_abstraction::storage::DEFAULT_CONTENT_TYPE.to_string()));
                prop_assert_eq!(&meta.content_type, &expected);
                store
                    .delete(&key)
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
        }
        Ok(())
    })
}

#[test]
fn fuzz_keys_and_metadata() {
    let started = Instant::now();
    let strategy = (
        key(),
        metadata(),
        content_type(),
        prop::bool::weighted(1.0 / 64.0),
    );
    let result = runner().run(&strategy, check_put);
    eprintln!(
        "fuzz keys_and_metadata: {} inputs in {:.1} s ({} accepted)",
        cases(),
        started.elapsed().as_secs_f64(),
        PUTS.load(Ordering::Relaxed)
    );
    if let Err(e) = result {
        panic!("fuzz keys_and_metadata failed: {e}");
    }
}
