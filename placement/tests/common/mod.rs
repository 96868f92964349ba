//! Shared helpers for the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;

use cloud_placement::model::*;

/// Resource map.
pub fn res(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// A region with cpu capacity, price and jurisdiction.
pub fn region(id: &str, cpu: f64, price: f64, jur: &str) -> Region {
    Region {
        id: id.into(),
        capacity: res(&[("cpu", cpu), ("memory", cpu * 4.0)]),
        price: res(&[("cpu", price), ("memory", price / 10.0)]),
        labels: BTreeMap::from([("jurisdiction".to_string(), jur.to_string())]),
        certifications: vec!["iso27001".into()],
        latency_ms: BTreeMap::from([(
            "eu-users".to_string(),
            if jur == "eu" { 15.0 } else { 90.0 },
        )]),
        ..Region::default()
    }
}

/// A unit with cpu demand.
pub fn unit(id: &str, cpu: f64, replicas: u32) -> Unit {
    Unit {
        id: id.into(),
        demand: res(&[("cpu", cpu), ("memory", cpu * 2.0)]),
        replicas,
        ..Unit::default()
    }
}

/// Three providers with an EU and a US region each.
pub fn base_model() -> Model {
    let mk = |p: &str, f: f64| Provider {
        id: p.into(),
        egress_inter_region: 0.02,
        egress_internet: 0.09,
        regions: vec![
            region(&format!("{p}-eu"), 16.0, 1.0 * f, "eu"),
            region(&format!("{p}-us"), 16.0, 0.9 * f, "us"),
        ],
        ..Provider::default()
    };
    Model {
        dimensions: vec!["cpu".into(), "memory".into()],
        providers: vec![mk("aws", 1.0), mk("azure", 1.1), mk("gcp", 1.2)],
        units: vec![],
        ..Model::default()
    }
}
