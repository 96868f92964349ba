//! Test support shared by the server-backed suites: finding the server, and a loopback TCP
//! proxy that a fault test can cut and restore.
#![allow(dead_code, unreachable_pub)]

pub mod blob_faults;
pub mod document_faults;
pub mod jepsen;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

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
    if std::env::var_os("CI").is_some() || std::env::var_os("REQUIRE_SERVERS").is_some() {
        panic!("{var}: server at {probe_addr} is not reachable, and CI requires it");
    }
    eprintln!(
        "\n!!!!!!!! SKIPPED: no server at {probe_addr} for {var}; this suite did NOT run. \
         Start it (bash .ci/services.sh) or set CI=1 to make this a failure. !!!!!!!!\n"
    );
    None
}

/// `url` with its host and port replaced by `addr` (to reach a server through a proxy).
pub fn via(url: &str, addr: SocketAddr) -> String {
    let mut u = url::Url::parse(url).expect("server URL");
    u.set_host(Some(&addr.ip().to_string())).expect("host");
    u.set_port(Some(addr.port())).expect("port");
    u.to_string()
}

/// The `host:port` a server URL points at (a proxy's target).
pub fn target_of(url: &str) -> String {
    let u = url::Url::parse(url).expect("server URL");
    format!(
        "{}:{}",
        u.host_str().expect("host"),
        u.port_or_known_default().expect("port")
    )
}

/// A loopback TCP proxy in front of a server. `cut()` drops every open connection and
/// refuses new ones (they are accepted and closed at once); `restore()` lets traffic through
/// again. Dropping the proxy stops it.
pub struct TcpProxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept_task: JoinHandle<()>,
}

impl TcpProxy {
    /// Starts a proxy on an ephemeral loopback port forwarding to `target`.
    pub async fn start(target: &str) -> Self {
        Self::start_on("127.0.0.1:0", target).await
    }

    /// Starts a proxy listening on `bind` (a loopback address, e.g. `127.0.0.2:0` to reach a
    /// server under another address than its certificate names) forwarding to `target`.
    pub async fn start_on(bind: &str, target: &str) -> Self {
        let listener = TcpListener::bind(bind).await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let target = target.to_string();
        let up = Arc::new(AtomicBool::new(true));
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept_task = {
            let up = Arc::clone(&up);
            let connections = Arc::clone(&connections);
            tokio::spawn(async move {
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        continue;
                    };
                    if !up.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let target = target.clone();
                    let task = tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(&target).await {
                            let _ = copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    let mut open = connections.lock().await;
                    open.retain(|t| !t.is_finished());
                    open.push(task);
                }
            })
        };
        Self {
            addr,
            up,
            connections,
            accept_task,
        }
    }

    /// The proxy's address, e.g. `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Takes the server away: open connections are dropped, new ones closed at once.
    pub async fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for task in self.connections.lock().await.drain(..) {
            task.abort();
        }
    }

    /// Brings the server back.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
        if let Ok(mut open) = self.connections.try_lock() {
            for task in open.drain(..) {
                task.abort();
            }
        }
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
