//! Test support for fault tests and game days (feature `testing`): a loopback TCP proxy in
//! front of a server that can cut every connection and restore them, so an outage of a real
//! server can be staged without touching the server.
//!
//! The crate's own server suites use it too (`tests/support` includes this file), so there
//! is one proxy for tests and examples.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

/// `url` with its host and port replaced by `addr` (to reach a server through a proxy);
/// `None` if `url` is not a URL with a host.
pub fn via(url: &str, addr: SocketAddr) -> Option<String> {
    let mut u = url::Url::parse(url).ok()?;
    u.set_host(Some(&addr.ip().to_string())).ok()?;
    u.set_port(Some(addr.port())).ok()?;
    Some(u.to_string())
}

/// The `host:port` a server URL points at (a proxy's target); `None` without a host or a
/// known port.
pub fn target_of(url: &str) -> Option<String> {
    let u = url::Url::parse(url).ok()?;
    Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?))
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

impl std::fmt::Debug for TcpProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpProxy")
            .field("addr", &self.addr)
            .field("up", &self.up.load(Ordering::SeqCst))
            .finish()
    }
}

impl TcpProxy {
    /// Starts a proxy on an ephemeral loopback port forwarding to `target`.
    pub async fn start(target: &str) -> std::io::Result<Self> {
        Self::start_on("127.0.0.1:0", target).await
    }

    /// Starts a proxy listening on `bind` (a loopback address, e.g. `127.0.0.2:0` to reach a
    /// server under another address than its certificate names) forwarding to `target`.
    pub async fn start_on(bind: &str, target: &str) -> std::io::Result<Self> {
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
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
        Ok(Self {
            addr,
            up,
            connections,
            accept_task,
        })
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
