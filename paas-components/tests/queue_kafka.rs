//! The Kafka queue against a real broker (tansu 0.6.0, started by `.ci/services/kafka.sh` on
//! 127.0.0.1:19092): the whole conformance kit, the peer cases with two handles, the model
//! test, a rebalance test (a second consumer joins a group mid-stream) and a fault test
//! through a TCP proxy that is cut and restored.
//!
//! Every test works on topics with a random suffix and deletes them at the end.
#![cfg(feature = "kafka")]

mod support;

use cloud_abstraction::MessageQueue;
use cloud_abstraction::queue::{GroupOptions, Message, ReceiveOptions};
use cloud_abstraction::testkit::{queue, unique_name};
use paas_components::queue::KafkaQueue;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DEFAULT_URL: &str = "kafka://127.0.0.1:19092";

/// The broker's URL with a short group session (a join takes about half of it on tansu).
async fn url() -> Option<String> {
    let url = support::server_url("KAFKA_TEST_URL", DEFAULT_URL, "127.0.0.1:19092").await?;
    Some(with_params(&url, "session_timeout_ms=6000"))
}

fn with_params(url: &str, params: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{params}")
}

async fn open(url: &str) -> Arc<dyn MessageQueue> {
    Arc::new(KafkaQueue::connect(url).await.expect("connect to kafka"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    let Some(url) = url().await else { return };
    let report = queue::run_suite(open(&url).await).await;
    assert_eq!(report.passed.len(), queue::cases().len(), "every kit case ran and passed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers() {
    let Some(url) = url().await else { return };
    let report = queue::run_peer_suite(open(&url).await, open(&url).await).await;
    assert_eq!(report.passed.len(), queue::peer_cases().len());
}

