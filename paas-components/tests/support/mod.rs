//! Test support shared by the server-backed suites: finding the server, and a loopback TCP
//! proxy that a fault test can cut and restore.
#![allow(dead_code, unreachable_pub)]

pub mod blob_faults;
pub mod document_faults;
pub mod jepsen;
pub mod queue_faults;

// The proxy is the library's (`paas_components::testing`, feature `testing`); included by
// path so that the suites need not enable the feature.
#[path = "../../src/testing.rs"]
mod testing;

use std::net::SocketAddr;
use tokio::net::TcpStream;

/// The URL of a real server for a suite: the environment variable `var` if set, else
/// `default` (the address SERVICES.md gives). Returns `None` only on a developer machine
/// without the server, after saying so loudly; under CI (`CI` set) an unreachable server fails.
pub async fn server_url(var: &str, default: &str, probe_addr: &str) -> Option<String> {
    let url = std::env::var(var).unwrap_or_else(|_| default.to_string());
    let reachable = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        TcpStream::connect(probe_addr),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    if reachable {
        return Some(url);
    }
    missing_server(var, &format!("server at {probe_addr}"));
    None
}

/// A suite's server is missing: a failure under CI (`CI` or `REQUIRE_SERVERS` set), else a
/// loud skip on a developer machine.
pub fn missing_server(var: &str, what: &str) {
    if std::env::var_os("CI").is_some() || std::env::var_os("REQUIRE_SERVERS").is_some() {
        panic!("{var}: {what} is not reachable, and CI requires it");
    }
    eprintln!(
        "\n!!!!!!!! SKIPPED: no {what} for {var}; this suite did NOT run. \
         Start it (bash .ci/services.sh) or set CI=1 to make this a failure. !!!!!!!!\n"
    );
}

/// `url` with its host and port replaced by `addr` (to reach a server through a proxy).
pub fn via(url: &str, addr: SocketAddr) -> String {
    testing::via(url, addr).expect("server URL with a host")
}

/// The `host:port` a server URL points at (a proxy's target).
pub fn target_of(url: &str) -> String {
    testing::target_of(url).expect("server URL with a host and port")
}

/// The `host:port` of the `endpoint` query parameter of a blob store URL (S3, Azure), for the
/// reachability probe and a proxy's target.
pub fn endpoint_addr(url: &str) -> String {
    let endpoint = endpoint_of(url);
    format!(
        "{}:{}",
        endpoint.host_str().expect("the endpoint names a host"),
        endpoint
            .port_or_known_default()
            .expect("the endpoint has a port")
    )
}

fn endpoint_of(url: &str) -> url::Url {
    let url = url::Url::parse(url).expect("a store URL");
    let endpoint = url
        .query_pairs()
        .find(|(k, _)| k == "endpoint")
        .map(|(_, v)| v.into_owned())
        .expect("the test URL names an endpoint");
    url::Url::parse(&endpoint).expect("an endpoint URL")
}

/// The same blob store URL with its endpoint's host and port replaced by `addr` (the path,
/// e.g. Azurite's account, kept): to reach the server through a proxy.
pub fn via_endpoint(url: &str, addr: impl std::fmt::Display) -> String {
    let path = endpoint_of(url).path().trim_end_matches('/').to_string();
    let mut parsed = url::Url::parse(url).expect("a store URL");
    let pairs: Vec<(String, String)> = parsed
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "endpoint" {
                format!("http://{addr}{path}")
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    parsed.query_pairs_mut().clear().extend_pairs(pairs);
    parsed.to_string()
}

/// [`testing::TcpProxy`], started or the test fails.
pub struct TcpProxy(testing::TcpProxy);

impl TcpProxy {
    /// Starts a proxy on an ephemeral loopback port forwarding to `target`.
    pub async fn start(target: &str) -> Self {
        Self(testing::TcpProxy::start(target).await.expect("start proxy"))
    }

    /// Starts a proxy listening on `bind` forwarding to `target`.
    pub async fn start_on(bind: &str, target: &str) -> Self {
        Self(
            testing::TcpProxy::start_on(bind, target)
                .await
                .expect("start proxy"),
        )
    }
}

impl std::ops::Deref for TcpProxy {
    type Target = testing::TcpProxy;
    fn deref(&self) -> &testing::TcpProxy {
        &self.0
    }
}

/// Deletes every key of the Redis document store namespace `ns` (SCAN + DEL), with an
/// independent client.
#[cfg(feature = "redis")]
pub async fn redis_drop_namespace(url: &str, ns: &str) {
    let client = redis::Client::open(url).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{{{ns}}}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .expect("scan");
        if !keys.is_empty() {
            let _: u64 = redis::cmd("DEL")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .expect("del");
        }
        if next == 0 {
            return;
        }
        cursor = next;
    }
}

/// moto keeps buckets in memory: make sure the bucket of the S3 `url` exists (200 created,
/// 409 there).
pub async fn ensure_moto_bucket(url: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = endpoint_addr(url);
    let bucket = url::Url::parse(url)
        .unwrap()
        .host_str()
        .unwrap()
        .to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let request = format!(
        "PUT /{bucket} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let head = String::from_utf8_lossy(&response);
    assert!(
        head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.1 409"),
        "creating bucket {bucket} on moto: {}",
        head.lines().next().unwrap_or_default()
    );
}
