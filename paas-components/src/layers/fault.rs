use super::LayerRequest;
use cloud_abstraction::{Error, ErrorKind};
use futures::future::BoxFuture;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tower::{Layer, Service};

#[derive(Debug)]
struct FaultState {
    down: bool,
    lose_replies: bool,
    error_rate: f64,
    latency: Duration,
    rng: StdRng,
    injected: u64,
}

/// A switchboard for injected faults, shared by every clone of a [`FaultLayer`]'s services:
/// take a backend "down", fail a fraction of calls, or add latency, at run time.
///
/// For resilience tests and game days; injected failures are
/// [`Unavailable`](ErrorKind::Unavailable) errors, as a real outage would be.
#[derive(Debug, Clone)]
pub struct FaultInjector {
    state: Arc<Mutex<FaultState>>,
}

impl FaultInjector {
    /// No faults; `seed` makes random failures reproducible.
    pub fn new(seed: u64) -> Self {
        Self {
            state: Arc::new(Mutex::new(FaultState {
                down: false,
                lose_replies: false,
                error_rate: 0.0,
                latency: Duration::ZERO,
                rng: StdRng::seed_from_u64(seed),
                injected: 0,
            })),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut FaultState) -> T) -> T {
        // A poisoned lock only means a panic elsewhere mid-update of plain fields.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut state)
    }

    /// Every call fails while down.
    pub fn set_down(&self, down: bool) {
        self.with(|s| s.down = down);
    }

    /// While set, every call reaches the backend but its reply is lost: the caller gets an
    /// `Unavailable` error although the call took effect, as when a connection dies after
    /// the server acted. (What makes retries and failovers deliver twice.)
    pub fn set_lose_replies(&self, lose: bool) {
        self.with(|s| s.lose_replies = lose);
    }

    /// Fails this fraction (0.0 to 1.0) of calls at random.
    pub fn set_error_rate(&self, rate: f64) {
        let rate = if rate.is_finite() {
            rate.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.with(|s| s.error_rate = rate);
    }

    /// Delays every call by this much.
    pub fn set_latency(&self, latency: Duration) {
        self.with(|s| s.latency = latency);
    }

    /// How many failures were injected so far.
    pub fn injected(&self) -> u64 {
        self.with(|s| s.injected)
    }

    /// A layer whose services obey this injector.
    pub fn layer(&self) -> FaultLayer {
        FaultLayer {
            injector: self.clone(),
        }
    }

    /// (fail before the call, lose the reply, latency)
    fn decide(&self) -> (bool, bool, Duration) {
        self.with(|s| {
            let fail = s.down || (s.error_rate > 0.0 && s.rng.random::<f64>() < s.error_rate);
            let lose = !fail && s.lose_replies;
            if fail || lose {
                s.injected += 1;
            }
            (fail, lose, s.latency)
        })
    }
}

/// The layer of a [`FaultInjector`].
#[derive(Debug, Clone)]
pub struct FaultLayer {
    injector: FaultInjector,
}

impl<S> Layer<S> for FaultLayer {
    type Service = FaultService<S>;
    fn layer(&self, inner: S) -> FaultService<S> {
        FaultService {
            inner,
            injector: self.injector.clone(),
        }
    }
}

/// The service of [`FaultLayer`].
#[derive(Debug, Clone)]
pub struct FaultService<S> {
    inner: S,
    injector: FaultInjector,
}

impl<S, Req> Service<Req> for FaultService<S>
where
    S: Service<Req, Error = Error>,
    S::Future: Send + 'static,
    Req: LayerRequest,
{
    type Response = S::Response;
    type Error = Error;
    type Future = BoxFuture<'static, Result<S::Response, Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let (fail, lose_reply, latency) = self.injector.decide();
        let operation = request.operation();
        // The inner call is only made when no fault is injected: an injected failure must not
        // have side effects, as a request that never reached the backend would not.
        let call = (!fail).then(|| self.inner.call(request));
        Box::pin(async move {
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            match call {
                Some(call) if lose_reply => {
                    let _ = call.await;
                    Err(Error::new(
                        ErrorKind::Unavailable,
                        Error::UNNAMED,
                        format!("injected loss of the reply to {} `{operation}`", Req::KIND),
                    ))
                }
                Some(call) => call.await,
                None => Err(Error::new(
                    ErrorKind::Unavailable,
                    Error::UNNAMED,
                    format!("injected failure of {} `{operation}`", Req::KIND),
                )),
            }
        })
    }
}

#[cfg(all(test, feature = "memory"))]
mod tests {
    use super::*;
    use crate::storage::MemoryBlobStore;
    use cloud_abstraction::BlobStore;
    use cloud_abstraction::storage::BlobStoreExt;

    #[tokio::test]
    async fn a_lost_reply_fails_the_call_after_it_took_effect() {
        let raw: Arc<dyn BlobStore> = Arc::new(MemoryBlobStore::new());
        let faults = FaultInjector::new(1);
        let store = crate::layers::blob_store(Arc::clone(&raw), faults.layer());
        faults.set_lose_replies(true);
        let err = store.put_bytes("k", "v".into()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert_eq!(
            raw.get_bytes("k").await.unwrap(),
            "v",
            "the write took effect"
        );
        faults.set_lose_replies(false);
        faults.set_down(true);
        assert!(store.put_bytes("k2", "v".into()).await.is_err());
        assert!(
            !raw.exists("k2").await.unwrap(),
            "a down backend is not called"
        );
        assert_eq!(faults.injected(), 2);
    }
}
