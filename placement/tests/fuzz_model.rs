//! Bad input, fuzzed: placement models from JSON, YAML and TOML text, random and mutated
//! (structurally and as text), must parse-or-fail and validate-or-fail with typed errors,
//! never panic; small models that validate are also solved (small budget) and checked.
//!
//! Inputs: `FUZZ_CASES` (default 2,000), seed `FUZZ_SEED`. Long run:
//! `FUZZ_CASES=1000000 cargo test -p cloud-placement --all-features --test fuzz_model -- --nocapture`.

use cloud_placement::validate::validate;
use cloud_placement::{Model, PlacementError, SolveOptions, checker, solve};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{Value, json};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

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
        .unwrap_or(0x5eed_9a9e);
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

/// The shipped example model, as a JSON value.
fn shipped() -> &'static Value {
    static V: OnceLock<Value> = OnceLock::new();
    V.get_or_init(|| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/models/connected-vehicle.yaml"
        );
        let text = std::fs::read_to_string(path).expect("the shipped model");
        serde_yaml::from_str(&text).expect("the shipped model is YAML")
    })
}

fn id() -> impl Strategy<Value = String> {
    prop_oneof![8 => "[a-d][0-3]?", 1 => "[ -~]{0,4}", 1 => Just(String::new())]
}

fn num() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => (0u32..20).prop_map(Value::from),
        2 => (0.0f64..100.0).prop_map(Value::from),
        1 => prop::sample::select(&[-1.0, -0.0, 1e308, 1e-308, 4294967296.0, 0.5][..]).prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
    ]
}

fn resources(dims: Vec<String>) -> impl Strategy<Value = Value> {
    prop::collection::vec(num(), dims.len())
        .prop_map(move |v| Value::Object(dims.iter().cloned().zip(v).collect()))
}

/// A random model in the model's schema (ids drawn from a small set so references resolve
/// often).
fn random_model() -> impl Strategy<Value = Value> {
    let dims = prop_oneof![
        4 => Just(vec!["cpu".to_string()]),
        2 => Just(vec!["cpu".to_string(), "mem".to_string()]),
        1 => prop::collection::vec(id(), 0..3),
    ];
    dims.prop_flat_map(|dims| {
        let region = (
            id(),
            resources(dims.clone()),
            resources(dims.clone()),
            any::<bool>(),
        )
            .prop_map(|(id, capacity, price, down)| {
                json!({"id": id, "capacity": capacity, "price": price, "down": down && id.len() > 2,
                       "labels": {"jurisdiction": "eu"}, "latency_ms": {"eu": 10}})
            });
        let provider = (id(), prop::collection::vec(region, 0..4), num())
            .prop_map(|(id, regions, egress)| {
                json!({"id": id, "regions": regions, "egress_inter_region": egress})
            });
        let unit = (
            id(),
            resources(dims.clone()),
            0u32..4,
            prop::option::of((0u32..3, 0u32..3)),
            prop::option::of(id()),
            prop::collection::vec(id(), 0..2),
            prop::collection::vec(id(), 0..2),
        )
            .prop_map(|(id, demand, replicas, spread, colocate, anti, allowed)| {
                let mut u = json!({"id": id, "demand": demand, "replicas": replicas});
                if let Some((p, r)) = spread {
                    u["spread"] = json!({"min_providers": p, "min_regions": r});
                }
                if let Some(c) = colocate {
                    u["colocate"] = json!(c);
                }
                if !anti.is_empty() {
                    u["anti_affinity"] = json!(anti);
                }
                if !allowed.is_empty() {
                    u["allowed_regions"] = json!(allowed);
                }
                u
            });
        let traffic =
            (id(), id(), num()).prop_map(|(a, b, gb)| json!({"from": a, "to": b, "gb": gb}));
        let overrides =
            (id(), id(), num()).prop_map(|(u, r, c)| json!({"unit": u, "region": r, "cost": c}));
        (
            Just(dims),
            prop::collection::vec(provider, 0..4),
            prop::collection::vec(unit, 0..6),
            prop::collection::vec(traffic, 0..3),
            prop::collection::vec(overrides, 0..3),
        )
            .prop_map(|(dims, providers, units, traffic, overrides)| {
                json!({"dimensions": dims, "providers": providers, "units": units,
                       "traffic": traffic, "overrides": overrides})
            })
    })
}

/// A structural change at the node reached by following `path` (indices modulo the children).
#[derive(Debug, Clone)]
enum Change {
    Replace(Vec<usize>, Value),
    Remove(Vec<usize>),
    Duplicate(Vec<usize>),
}

fn odd_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        num(),
        Just(json!(-5)),
        Just(json!(u64::MAX)),
        Just(json!("")),
        Just(json!("cpu")),
        Just(json!([])),
        Just(json!({})),
        Just(json!({"cpu": -1})),
        Just(json!([{"id": "a0"}])),
        any::<String>().prop_map(Value::String),
    ]
}

fn changes() -> impl Strategy<Value = Vec<Change>> {
    let path = prop::collection::vec(any::<usize>(), 0..6);
    let change = prop_oneof![
        (path.clone(), odd_value()).prop_map(|(p, v)| Change::Replace(p, v)),
        path.clone().prop_map(Change::Remove),
        path.prop_map(Change::Duplicate),
    ];
    prop::collection::vec(change, 0..4)
}

fn apply_change(v: &mut Value, change: &Change) {
    let (path, op) = match change {
        Change::Replace(p, _) | Change::Remove(p) | Change::Duplicate(p) => (p, change),
    };
    let mut node = v;
    // Walk down to a parent, then act on one of its children.
    for (depth, &i) in path.iter().enumerate() {
        let last = depth + 1 == path.len();
        let len = match node {
            Value::Array(a) => a.len(),
            Value::Object(o) => o.len(),
            _ => return,
        };
        if len == 0 {
            return;
        }
        let i = i % len;
        if last {
            match (node, op) {
                (Value::Array(a), Change::Replace(_, x)) => a[i] = x.clone(),
                (Value::Array(a), Change::Remove(_)) => {
                    a.remove(i);
                }
                (Value::Array(a), Change::Duplicate(_)) => {
                    let x = a[i].clone();
                    a.push(x);
                }
                (Value::Object(o), Change::Replace(_, x)) => {
                    let k = o.keys().nth(i).cloned().unwrap_or_default();
                    o.insert(k, x.clone());
                }
                (Value::Object(o), Change::Remove(_)) => {
                    let k = o.keys().nth(i).cloned().unwrap_or_default();
                    o.remove(&k);
                }
                (Value::Object(o), Change::Duplicate(_)) => {
                    let (k, x) = o
                        .iter()
                        .nth(i)
                        .map(|(k, x)| (k.clone(), x.clone()))
                        .unwrap();
                    o.insert(format!("{k}_"), x);
                }
                _ => {}
            }
            return;
        }
        node = match node {
            Value::Array(a) => &mut a[i],
            Value::Object(o) => o.values_mut().nth(i).unwrap(),
            _ => return,
        };
    }
}

#[derive(Debug, Clone)]
enum Edit {
    Insert(usize, usize),
    Delete(usize, usize),
    Truncate(usize),
}

const TOKENS: &[&str] = &[
    ".nan",
    "-.inf",
    "nan",
    "inf",
    "1e999",
    "-0",
    "18446744073709551616",
    "~",
    "null",
    "[]",
    "{}",
    ":",
    "\n- ",
    "&a ",
    "*a",
    "!!str ",
    "\"",
    "'",
    "\t",
    "\n",
    ",",
    "=",
    "[[providers]]",
    "\u{0}",
    "é",
    "#",
    "- id: x\n",
    "replicas = 4294967296\n",
    "\\u0000",
];

fn text_edits() -> impl Strategy<Value = Vec<Edit>> {
    let e = prop_oneof![
        (any::<usize>(), any::<usize>()).prop_map(|(i, t)| Edit::Insert(i, t)),
        (any::<usize>(), 1usize..6).prop_map(|(i, n)| Edit::Delete(i, n)),
        any::<usize>().prop_map(Edit::Truncate),
    ];
    prop::collection::vec(e, 0..3)
}

fn apply_text(text: &str, edits: &[Edit]) -> String {
    let mut s: Vec<char> = text.chars().collect();
    for e in edits {
        let at = |i: usize, len: usize| i % (len + 1);
        match *e {
            Edit::Insert(i, t) => {
                let i = at(i, s.len());
                s.splice(i..i, TOKENS[t % TOKENS.len()].chars());
            }
            Edit::Delete(i, n) => {
                let i = at(i, s.len());
                let end = (i + n).min(s.len());
                s.drain(i..end);
            }
            Edit::Truncate(i) => {
                let i = at(i, s.len());
                s.truncate(i);
            }
        }
    }
    s.into_iter().collect()
}

#[derive(Debug, Clone, Copy)]
enum Format {
    Json,
    Yaml,
    Toml,
}

static SOLVED: AtomicU64 = AtomicU64::new(0);
static VALID: AtomicU64 = AtomicU64::new(0);

fn check(
    (base, changes, format, edits): (Value, Vec<Change>, Format, Vec<Edit>),
) -> Result<(), TestCaseError> {
    let mut value = base;
    for c in &changes {
        apply_change(&mut value, c);
    }
    let text = match format {
        Format::Json => serde_json::to_string_pretty(&value).ok(),
        Format::Yaml => serde_yaml::to_string(&value).ok(),
        // TOML has no null and needs a table at the top: such values are only tried in the
        // other formats.
        Format::Toml => toml::to_string(&value).ok(),
    };
    let Some(text) = text else { return Ok(()) };
    let text = apply_text(&text, &edits);
    let parsed = match format {
        Format::Json => Model::from_json(&text),
        Format::Yaml => Model::from_yaml(&text),
        Format::Toml => Model::from_toml(&text),
    };
    let model = match parsed {
        Ok(m) => m,
        Err(e) => {
            prop_assert!(matches!(e, PlacementError::Parse(_)), "{e:?}");
            return Ok(());
        }
    };
    if validate(&model).is_err() {
        // Typed by construction (`ModelError`); solving must say the same.
        let e = solve(&model, &SolveOptions::default()).expect_err("an invalid model solved");
        prop_assert!(matches!(e, PlacementError::Invalid(_)), "{e:?}");
        return Ok(());
    }
    VALID.fetch_add(1, Ordering::Relaxed);
    // Solve only models whose size keeps the case fast (mutations can ask for 2^32 replicas).
    let replicas: u64 = model.units.iter().map(|u| u64::from(u.replicas)).sum();
    // Solving costs milliseconds; one valid model in 16 is solved so that a million inputs
    // stay within minutes.
    if replicas > 64 || model.regions().count() > 16 || VALID.load(Ordering::Relaxed) % 16 != 1 {
        return Ok(());
    }
    SOLVED.fetch_add(1, Ordering::Relaxed);
    let options = SolveOptions {
        max_scans: 200,
        bound_iterations: 20,
        ..SolveOptions::default()
    };
    match solve(&model, &options) {
        Ok(s) => {
            let report = checker::check(&model, &s.plan);
            prop_assert!(report.is_feasible(), "solver plan rejected by the checker");
            prop_assert!(s.lower_bound <= s.cost.total + 1e-6 * s.cost.total.abs().max(1.0));
        }
        Err(e) => prop_assert!(
            matches!(
                e,
                PlacementError::Infeasible(_) | PlacementError::NoFeasiblePlanFound { .. }
            ),
            "{e:?}"
        ),
    }
    Ok(())
}

#[test]
fn fuzz_models() {
    let base = prop_oneof![1 => Just(shipped().clone()), 7 => random_model()];
    let format = prop_oneof![Just(Format::Json), Just(Format::Yaml), Just(Format::Toml)];
    let strategy = (base, changes(), format, text_edits());
    let started = Instant::now();
    let result = runner().run(&strategy, check);
    eprintln!(
        "fuzz models: {} inputs in {:.1} s ({} valid, {} solved; counts include shrinking)",
        cases(),
        started.elapsed().as_secs_f64(),
        VALID.load(Ordering::Relaxed),
        SOLVED.load(Ordering::Relaxed)
    );
    if let Err(e) = result {
        panic!("fuzz models failed: {e}");
    }
}
