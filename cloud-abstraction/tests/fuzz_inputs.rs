//! Bad input, fuzzed: URL parsing, key / name / id validation, field paths and filter
//! evaluation on generated input. Nothing here may panic; rejected input must be an
//! `InvalidArgument` error; secrets must not leak into errors or printed URLs.
//!
//! The number of generated inputs per target comes from `FUZZ_CASES` (default 2,000, a few
//! seconds); the seed from `FUZZ_SEED` (default fixed, so a failure reproduces). Long run:
//! `FUZZ_CASES=1000000 cargo test -p cloud-abstraction --all-features --test fuzz_inputs -- --nocapture`.

use cloud_abstraction::database::{
    Direction, Document, Filter, FilterOp, OrderBy, Revision, compare_json, matches_filters,
    sort_documents, validate_field_path,
};
use cloud_abstraction::{ErrorKind, ResourceUrl, validate};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{Value, json};
use std::cmp::Ordering;
use std::time::Instant;

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
        .unwrap_or(0x5eed_f022);
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config {
        cases: cases(),
        // Persisted failures would be written into the source tree; the seed reproduces instead.
        failure_persistence: None,
        max_shrink_iters: 2_000,
        ..Config::default()
    };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes))
}

/// Runs `check` on `cases()` inputs from `strategy` and prints the count and wall time.
fn fuzz<S: Strategy>(
    target: &str,
    strategy: S,
    check: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let started = Instant::now();
    let result = runner().run(&strategy, check);
    let elapsed = started.elapsed();
    eprintln!(
        "fuzz {target}: {} inputs in {:.1} s",
        cases(),
        elapsed.as_secs_f64()
    );
    if let Err(e) = result {
        panic!("fuzz {target} failed: {e}");
    }
}

/// Text edits applied to a valid input to make a near-valid one.
#[derive(Debug, Clone)]
enum Edit {
    Insert(usize, char),
    Delete(usize),
    Replace(usize, char),
    Token(usize, usize),
    Truncate(usize),
    Repeat(usize, usize),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let c = prop_oneof![
        4 => prop::sample::select(
            "/:@?#&=%.[]\\\"' \t\n\0~!$*+,;|^`{}<>-_09azAZ".chars().collect::<Vec<_>>()
        ),
        1 => any::<char>(),
    ];
    let edit = prop_oneof![
        (any::<usize>(), c.clone()).prop_map(|(i, c)| Edit::Insert(i, c)),
        any::<usize>().prop_map(Edit::Delete),
        (any::<usize>(), c).prop_map(|(i, c)| Edit::Replace(i, c)),
        (any::<usize>(), any::<usize>()).prop_map(|(i, t)| Edit::Token(i, t)),
        any::<usize>().prop_map(Edit::Truncate),
        (any::<usize>(), 1usize..8).prop_map(|(i, n)| Edit::Repeat(i, n)),
    ];
    prop::collection::vec(edit, 0..5)
}

const TOKENS: &[&str] = &[
    "%",
    "%2F",
    "%2e%2e",
    "%00",
    "%ff",
    "..",
    "/../",
    "//",
    "://",
    "@",
    ":",
    "::",
    "[::1]",
    "[",
    "]",
    "?",
    "#",
    "&",
    "=",
    "65536",
    "99999999999",
    "-1",
    "0",
    "xn--",
    "\u{feff}",
    "é",
    "\u{202e}",
    "😀",
    "sqlite::memory:",
    "mem://",
    "file:///",
    "password=",
    "token=",
    "%zz",
];

fn apply(base: &str, edits: &[Edit]) -> String {
    let mut s: Vec<char> = base.chars().collect();
    for e in edits {
        let at = |i: usize, len: usize| if len == 0 { 0 } else { i % (len + 1) };
        match *e {
            Edit::Insert(i, c) => {
                let i = at(i, s.len());
                s.insert(i, c);
            }
            Edit::Delete(i) if !s.is_empty() => {
                let i = i % s.len();
                s.remove(i);
            }
            Edit::Replace(i, c) if !s.is_empty() => {
                let i = i % s.len();
                s[i] = c;
            }
            Edit::Token(i, t) => {
                let i = at(i, s.len());
                let tok: Vec<char> = TOKENS[t % TOKENS.len()].chars().collect();
                s.splice(i..i, tok);
            }
            Edit::Truncate(i) => {
                let i = at(i, s.len());
                s.truncate(i);
            }
            Edit::Repeat(i, n) if !s.is_empty() => {
                let i = i % s.len();
                let end = (i + n).min(s.len());
                let part: Vec<char> = s[i..end].to_vec();
                s.splice(end..end, part);
            }
            _ => {}
        }
    }
    s.into_iter().collect()
}

fn invalid_argument(r: &cloud_abstraction::Result<()>) -> Result<(), TestCaseError> {
    if let Err(e) = r {
        prop_assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{}", e);
    }
    Ok(())
}

// ---- URLs -------------------------------------------------------------------------------------

/// A password that occurs nowhere else in a generated URL, so its presence can be checked.
const MARK: &str = "Pw7Secr3t";

const SCHEMES: &[&str] = &[
    "mem",
    "file",
    "sqlite",
    "postgres",
    "postgresql",
    "mysql",
    "mariadb",
    "redis",
    "s3",
    "azure",
    "process",
    "sim",
    "https",
    "nats",
    "amqp",
    "x-custom",
    "S3",
    "Postgres",
];

fn near_valid_url() -> impl Strategy<Value = String> {
    let scheme = prop::sample::select(SCHEMES);
    let user = prop_oneof![Just(String::new()), "[a-z_]{1,8}", "[ -~]{0,6}"];
    let password = prop_oneof![
        Just(None),
        "[a-z0-9]{0,4}".prop_map(|s| Some(format!("{MARK}{s}"))),
    ];
    let host = prop_oneof![
        Just(String::new()),
        "[a-z][a-z0-9.-]{0,15}",
        Just("127.0.0.1".to_string()),
        Just("[::1]".to_string()),
        "[ -~]{0,8}",
    ];
    let port = prop_oneof![Just(None), (0u32..70_000).prop_map(Some)];
    let path = prop::collection::vec("[a-zA-Z0-9._%-]{0,8}", 0..4).prop_map(|v| v.join("/"));
    let key = prop_oneof![
        prop::sample::select(
            &[
                "endpoint",
                "region",
                "secret",
                "access_key",
                "token",
                "sslmode",
                "mode",
                "account",
                "emulator",
                "conditional_put",
                "allow_http",
                "sas",
                "cache",
                "",
            ][..]
        )
        .prop_map(str::to_string),
        "[ -~]{0,6}",
    ];
    let query = prop::collection::vec((key, "[ -~]{0,10}", any::<bool>()), 0..4);
    (scheme, user, password, host, port, path, query, edits()).prop_map(
        |(scheme, user, password, host, port, path, query, edits)| {
            let mut s = format!("{scheme}://");
            if !user.is_empty() || password.is_some() {
                s.push_str(&user);
                if let Some(p) = &password {
                    s.push(':');
                    s.push_str(p);
                }
                s.push('@');
            }
            s.push_str(&host);
            if let Some(p) = port {
                s.push_str(&format!(":{p}"));
            }
            if !path.is_empty() {
                s.push('/');
                s.push_str(&path);
            }
            for (i, (k, v, secret_value)) in query.iter().enumerate() {
                s.push(if i == 0 { '?' } else { '&' });
                let v = if *secret_value {
                    format!("{MARK}q{v}")
                } else {
                    v.clone()
                };
                s.push_str(&format!("{k}={v}"));
            }
            apply(&s, &edits)
        },
    )
}

fn any_url_text() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => any::<String>(),
        2 => "[ -~]{0,40}",
        6 => near_valid_url(),
    ]
}

fn check_url(input: String) -> Result<(), TestCaseError> {
    match ResourceUrl::parse(&input) {
        Err(e) => {
            prop_assert_eq!(e.kind(), ErrorKind::InvalidArgument);
            // The message names only the text before the first `:` (the scheme).
            let before_colon = input.split(':').next().unwrap_or("");
            if !before_colon.contains(MARK) {
                prop_assert!(!e.to_string().contains(MARK), "error leaks: {e}");
                prop_assert!(!format!("{e:?}").contains(MARK), "error leaks: {e:?}");
            }
        }
        Ok(url) => {
            let _ = (
                url.scheme(),
                url.host(),
                url.port(),
                url.path(),
                url.username(),
            );
            let _ = (
                url.query_param("endpoint"),
                url.query_params(),
                url.as_url(),
            );
            let shown = url.to_string();
            let debug = format!("{url:?}");
            let redacted = url.redacted();
            prop_assert!(ResourceUrl::parse(url.expose()).is_ok());
            // A mark that occurs once and sits in the password or in a secret-named query
            // value must not be printed.
            let in_password = url.as_url().password().is_some_and(|p| p.contains(MARK));
            let in_secret_param = url.query_params().iter().any(|(k, v)| {
                let k = k.to_ascii_lowercase();
                v.contains(MARK)
                    && [
                        "secret",
                        "key",
                        "token",
                        "sas",
                        "password",
                        "sig",
                        "credential",
                    ]
                    .iter()
                    .any(|h| k.contains(h))
            });
            // (Counted in the parsed form: the parser drops tabs and newlines, which can join
            // two halves into a second mark.)
            let marks = url.expose().matches(MARK).count();
            if marks == 1 && (in_password || in_secret_param) {
                for printed in [&shown, &debug, &redacted] {
                    prop_assert!(!printed.contains(MARK), "secret printed: {printed}");
                }
            }
        }
    }
    Ok(())
}

#[test]
fn fuzz_url_parse() {
    fuzz("url_parse", any_url_text(), check_url);
}

// ---- keys, prefixes, ids, names ---------------------------------------------------------------

fn valid_key() -> impl Strategy<Value = String> {
    prop::collection::vec("[a-zA-Z0-9_=+-][a-zA-Z0-9_.=+ -]{0,9}", 1..6).prop_map(|v| v.join("/"))
}

fn valid_name() -> impl Strategy<Value = String> {
    "[a-zA-Z][a-zA-Z0-9_-]{0,62}"
}

#[derive(Debug, Clone)]
enum KeyCase {
    /// Accepted by construction.
    ValidKey(String),
    ValidName(String),
    /// Anything, near-valid or arbitrary: must not panic, errors must be typed.
    Any(String),
    /// Rejected by construction (the reason is in the variant's text).
    BadKey(String),
    BadName(String),
}

fn key_cases() -> impl Strategy<Value = KeyCase> {
    let near_key = (valid_key(), edits()).prop_map(|(k, e)| apply(&k, &e));
    let near_name = (valid_name(), edits()).prop_map(|(k, e)| apply(&k, &e));
    let bad_key = prop_oneof![
        Just(String::new()),
        valid_key().prop_map(|k| format!("/{k}")),
        valid_key().prop_map(|k| format!("{k}//x")),
        valid_key().prop_map(|k| format!("{k}/../x")),
        valid_key().prop_map(|k| format!("./{k}")),
        (
            valid_key(),
            prop::sample::select(&['\0', '\n', '\\', '\u{7f}', '\u{85}'][..])
        )
            .prop_map(|(k, c)| format!("{k}{c}x")),
        valid_key().prop_map(|k| format!("{k}/{}", "x".repeat(1025))),
    ];
    let bad_name = prop_oneof![
        Just(String::new()),
        "[0-9_-][a-z]{0,5}",
        "[a-z]{1,5}[./ :@é][a-z]{0,5}",
        "[a-z]{64,80}",
    ];
    prop_oneof![
        2 => valid_key().prop_map(KeyCase::ValidKey),
        1 => valid_name().prop_map(KeyCase::ValidName),
        3 => prop_oneof![near_key, near_name, any::<String>(), "[ -~]{0,20}"].prop_map(KeyCase::Any),
        1 => bad_key.prop_map(KeyCase::BadKey),
        1 => bad_name.prop_map(KeyCase::BadName),
    ]
}

fn check_key_case(case: KeyCase) -> Result<(), TestCaseError> {
    let all = |s: &str| {
        [
            validate::object_key("fuzz", s),
            validate::key_prefix("fuzz", s),
            validate::document_id("fuzz", s),
            validate::resource_name("fuzz", "collection", s),
            validate::payload_size("fuzz", "payload", s.len(), Some(16)),
        ]
    };
    match &case {
        KeyCase::ValidKey(k) => {
            prop_assert!(validate::object_key("fuzz", k).is_ok(), "{k:?} rejected");
            prop_assert!(validate::key_prefix("fuzz", k).is_ok());
            let with_slash = format!("{k}/");
            prop_assert!(validate::key_prefix("fuzz", &with_slash).is_ok());
            if k.len() <= validate::MAX_DOCUMENT_ID_LEN {
                prop_assert!(validate::document_id("fuzz", k).is_ok());
            }
        }
        KeyCase::ValidName(n) => {
            prop_assert!(validate::resource_name("fuzz", "topic", n).is_ok(), "{n:?}");
            prop_assert!(validate::object_key("fuzz", n).is_ok());
        }
        KeyCase::BadKey(k) => {
            let e = validate::object_key("fuzz", k).expect_err("bad key accepted");
            prop_assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        }
        KeyCase::BadName(n) => {
            let e = validate::resource_name("fuzz", "group", n).expect_err("bad name accepted");
            prop_assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        }
        KeyCase::Any(_) => {}
    }
    let (KeyCase::ValidKey(s)
    | KeyCase::ValidName(s)
    | KeyCase::Any(s)
    | KeyCase::BadKey(s)
    | KeyCase::BadName(s)) = &case;
    for r in all(s) {
        invalid_argument(&r)?;
    }
    // An accepted key is an accepted prefix, and names are stricter than keys.
    if validate::object_key("fuzz", s).is_ok() {
        prop_assert!(validate::key_prefix("fuzz", s).is_ok());
    }
    if validate::resource_name("fuzz", "n", s).is_ok() {
        prop_assert!(validate::object_key("fuzz", s).is_ok());
        prop_assert!(validate::document_id("fuzz", s).is_ok());
    }
    Ok(())
}

#[test]
fn fuzz_keys_and_names() {
    fuzz("keys_and_names", key_cases(), check_key_case);
}

// ---- field paths, filters, ordering -----------------------------------------------------------

const FIELDS: &[&str] = &["a", "b", "n", "s", "o", "x", "0", "é", "a b"];

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-3i64..3).prop_map(Value::from),
        // Around 2^53, where i64 and f64 comparisons disagree.
        (-3i64..3).prop_map(|d| Value::from((1i64 << 53) + d)),
        (-3i64..3).prop_map(|d| Value::from(((1i64 << 53) + d) as f64)),
        Just(Value::from(u64::MAX)),
        Just(Value::from(i64::MIN)),
        Just(json!(1e300)),
        Just(json!(-0.0)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
    ]
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        prop_oneof!["[a-c]{0,3}", any::<String>()].prop_map(Value::String),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(prop::sample::select(FIELDS), inner, 0..4).prop_map(|m| {
                Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}

fn field_path() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::collection::vec(prop::sample::select(FIELDS), 1..4).prop_map(|v| v.join(".")),
        2 => (prop::collection::vec(prop::sample::select(FIELDS), 1..3), edits())
            .prop_map(|(v, e)| apply(&v.join("."), &e)),
        1 => any::<String>(),
    ]
}

fn filter() -> impl Strategy<Value = Filter> {
    let op = prop_oneof![
        scalar().prop_map(FilterOp::Eq),
        scalar().prop_map(FilterOp::Ne),
        scalar().prop_map(FilterOp::Lt),
        scalar().prop_map(FilterOp::Le),
        scalar().prop_map(FilterOp::Gt),
        scalar().prop_map(FilterOp::Ge),
        json_value().prop_map(FilterOp::Eq),
        prop::collection::vec(json_value(), 0..4).prop_map(FilterOp::In),
        prop_oneof!["[a-c]{0,2}", any::<String>()].prop_map(FilterOp::Prefix),
    ];
    (field_path(), op).prop_map(|(field, op)| Filter { field, op })
}

fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, s| v.get(s))
}

fn check_filters((docs, filters): (Vec<Value>, Vec<Filter>)) -> Result<(), TestCaseError> {
    for f in &filters {
        invalid_argument(&validate_field_path("fuzz", &f.field))?;
        // The wire form parses back to the same field and operator. (Not always the same
        // operand: serde_json without `float_roundtrip` may move an f64 by one ulp.)
        let text = serde_json::to_string(f).expect("a filter serialises");
        let back: Filter = serde_json::from_str(&text).expect("a serialised filter parses");
        prop_assert_eq!(&back.field, &f.field);
        prop_assert_eq!(
            std::mem::discriminant(&back.op),
            std::mem::discriminant(&f.op)
        );
    }
    for doc in &docs {
        let all = matches_filters(doc, &filters);
        prop_assert_eq!(
            all,
            filters
                .iter()
                .all(|f| matches_filters(doc, std::slice::from_ref(f)))
        );
        for f in &filters {
            let field = lookup(doc, &f.field);
            // Complementary operators: exactly one of a pair matches a present, comparable field.
            let one = |op: FilterOp| {
                matches_filters(
                    doc,
                    &[Filter {
                        field: f.field.clone(),
                        op,
                    }],
                )
            };
            let operand = match &f.op {
                FilterOp::Eq(v)
                | FilterOp::Ne(v)
                | FilterOp::Lt(v)
                | FilterOp::Le(v)
                | FilterOp::Gt(v)
                | FilterOp::Ge(v) => v.clone(),
                _ => continue,
            };
            let eq = one(FilterOp::Eq(operand.clone()));
            let ne = one(FilterOp::Ne(operand.clone()));
            prop_assert_eq!(eq || ne, field.is_some(), "eq/ne on {:?}", field);
            prop_assert!(!(eq && ne));
            if let Some(x) = field {
                let ord = compare_json(x, &operand);
                prop_assert_eq!(ord, compare_json(&operand, x).map(Ordering::reverse));
                if ord.is_some() {
                    prop_assert!(
                        one(FilterOp::Lt(operand.clone())) != one(FilterOp::Ge(operand.clone()))
                    );
                    prop_assert!(
                        one(FilterOp::Gt(operand.clone())) != one(FilterOp::Le(operand.clone()))
                    );
                }
            }
        }
    }
    // Ordering random documents by random fields must not panic and must be a permutation.
    let mut documents: Vec<Document> = docs
        .iter()
        .enumerate()
        .map(|(i, v)| Document {
            id: format!("d{i:03}"),
            value: v.clone(),
            revision: Revision(1),
            expires_at: None,
        })
        .collect();
    let order_by: Vec<OrderBy> = filters
        .iter()
        .enumerate()
        .map(|(i, f)| OrderBy {
            field: f.field.clone(),
            direction: if i % 2 == 0 {
                Direction::Asc
            } else {
                Direction::Desc
            },
        })
        .collect();
    sort_documents(&mut documents, &order_by);
    let mut ids: Vec<&str> = documents.iter().map(|d| d.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    prop_assert_eq!(ids.len(), docs.len());
    Ok(())
}

#[test]
fn fuzz_filters_and_field_paths() {
    let docs = prop::collection::vec(json_value(), 0..8);
    let filters = prop::collection::vec(filter(), 0..4);
    fuzz("filters", (docs, filters), check_filters);
}
