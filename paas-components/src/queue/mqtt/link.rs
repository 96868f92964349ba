//! One MQTT connection with its own reconnect loop, and the waits for its acknowledgements.
//!
//! rumqttc's `AsyncClient::publish` returns when the request is queued, not when the broker
//! has it; the PUBACK only names a packet id that the event loop chose. So a link keeps its
//! waiters in the order their requests went into the client's channel and pairs each with
//! the packet id of the `Outgoing::Publish` / `Outgoing::Subscribe` event that the event loop
//! emits for it, in the same order. Each connection attempt gets a fresh client and event
//! loop (an *epoch*): when a connection fails, every waiter of that epoch fails with a
//! retryable error and requests still queued die with the old channel, so a request of an
//! old epoch can never be paired with a waiter of a new one. rumqttc's own replay of pending
//! requests is not used (our publisher sessions start clean; subscriber sessions get their
//! messages again from the broker).

use super::BACKEND;
use cloud_abstraction::{Error, ErrorKind, Result};
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::ConnectReturnCode;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, Filter, Packet, PubAckReason, Publish, PublishProperties, SubscribeReasonCode,
};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions, StateError};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;
use tokio::sync::{Notify, oneshot};

/// Requests one client channel holds before a publish is refused (`ResourceExhausted`).
const CHANNEL_CAPACITY: usize = 100_000;
/// How long a publish or subscribe waits for the broker's acknowledgement.
pub(super) const ACK_TIMEOUT: Duration = Duration::from_secs(30);

type Waiter = oneshot::Sender<Result<()>>;

/// What a link does with what the broker sends it.
pub(super) trait LinkHandler: Send + Sync + 'static {
    /// The connection of `epoch` is up (called from the link's task, under no lock).
    fn connected(&self, link: &Arc<Link>, epoch: u64, connack: &ConnAck);
    /// A PUBLISH from the broker on epoch `epoch`.
    fn publish(&self, link: &Arc<Link>, epoch: u64, publish: Publish);
    /// The connection of `epoch` is gone.
    fn disconnected(&self, epoch: u64);
}

/// A connection that nobody reads from (the publisher).
pub(super) struct NoHandler;

impl LinkHandler for NoHandler {
    fn connected(&self, _: &Arc<Link>, _: u64, _: &ConnAck) {}
    fn publish(&self, _: &Arc<Link>, _: u64, _: Publish) {}
    fn disconnected(&self, _: u64) {}
}

#[derive(Default)]
struct LinkState {
    /// The client of the live connection; `None` while disconnected.
    client: Option<AsyncClient>,
    epoch: u64,
    /// Publishes in the client's channel, in order, waiting for their packet id.
    queued_publishes: VecDeque<Waiter>,
    /// A publish the event loop holds back for a packet id collision (it is written later).
    collided: Option<Waiter>,
    in_flight_publishes: HashMap<u16, Waiter>,
    queued_subscribes: VecDeque<Waiter>,
    in_flight_subscribes: HashMap<u16, Waiter>,
    /// Why the last connection attempt failed (for error messages; never holds a secret),
    /// and the error kind it maps to (`Unavailable` unless the broker refused us).
    last_error: Option<(String, ErrorKind)>,
    closed: bool,
}

impl LinkState {
    fn fail_all(&mut self, why: &str) {
        let error = || Err(Error::unavailable(BACKEND, why.to_string()));
        for w in self.queued_publishes.drain(..) {
            let _ = w.send(error());
        }
        for (_, w) in self.in_flight_publishes.drain() {
            let _ = w.send(error());
        }
        if let Some(w) = self.collided.take() {
            let _ = w.send(error());
        }
        for w in self.queued_subscribes.drain(..) {
            let _ = w.send(error());
        }
        for (_, w) in self.in_flight_subscribes.drain() {
            let _ = w.send(error());
        }
    }
}

/// One MQTT connection (one client id, one session) that reconnects by itself.
pub(super) struct Link {
    name: String,
    state: Mutex<LinkState>,
    /// Signalled at every connect and disconnect.
    pub(super) changed: Notify,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").field("name", &self.name).finish()
    }
}

impl Link {
    /// Starts a link with `options` (client id, session settings); `handler` sees what arrives.
    pub(super) fn start(
        name: impl Into<String>,
        options: MqttOptions,
        handler: Arc<dyn LinkHandler>,
    ) -> Arc<Link> {
        let link = Arc::new(Link {
            name: name.into(),
            state: Mutex::new(LinkState::default()),
            changed: Notify::new(),
            task: Mutex::new(None),
        });
        let task = tokio::spawn(drive(Arc::downgrade(&link), options, handler));
        *lock(&link.task) = Some(task);
        link
    }

    fn state(&self) -> MutexGuard<'_, LinkState> {
        lock(&self.state)
    }

    /// The current epoch if connected.
    pub(super) fn connected_epoch(&self) -> Option<u64> {
        let state = self.state();
        state.client.as_ref().map(|_| state.epoch)
    }

    /// Waits up to `wait` for a connection; returns its epoch, or the retryable error.
    pub(super) async fn wait_connected(&self, wait: Duration) -> Result<u64> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.changed.notified();
            if let Some(epoch) = self.connected_epoch() {
                return Ok(epoch);
            }
            let refused = self.unavailable();
            if !refused.is_retryable() {
                // The broker answered and said no (credentials, client id): final.
                return Err(refused);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(self.unavailable());
            }
        }
    }

    /// The error of a disconnected link: `Unavailable` (retryable), or what the broker's
    /// refusal means.
    pub(super) fn unavailable(&self) -> Error {
        let state = self.state();
        match &state.last_error {
            Some((why, ErrorKind::Unavailable)) | Some((why, ErrorKind::Internal)) => {
                Error::unavailable(BACKEND, format!("the MQTT broker is not reachable ({why})"))
            }
            Some((why, kind)) => Error::new(*kind, BACKEND, format!("the MQTT broker {why}")),
            None => Error::unavailable(
                BACKEND,
                "the MQTT broker is not reachable (not connected yet)",
            ),
        }
    }

    /// Queues a QoS 1 publish; the future resolves when the broker acknowledged it.
    pub(super) fn publish(
        &self,
        topic: String,
        retain: bool,
        payload: bytes::Bytes,
        properties: Option<PublishProperties>,
    ) -> Result<impl Future<Output = Result<()>> + use<>> {
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.state();
            let Some(client) = state.client.clone() else {
                drop(state);
                return Err(self.unavailable());
            };
            let sent = match properties {
                Some(p) => {
                    client.try_publish_with_properties(topic, QoS::AtLeastOnce, retain, payload, p)
                }
                None => client.try_publish(topic, QoS::AtLeastOnce, retain, payload),
            };
            sent.map_err(|_| {
                Error::new(
                    cloud_abstraction::ErrorKind::ResourceExhausted,
                    BACKEND,
                    "too many publishes queued on the MQTT connection",
                )
            })?;
            state.queued_publishes.push_back(tx);
        }
        Ok(wait_for(rx))
    }

    /// Subscribes to `filter` at QoS 1; resolves when the broker granted it.
    pub(super) fn subscribe(
        &self,
        filter: String,
    ) -> Result<impl Future<Output = Result<()>> + use<>> {
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.state();
            let Some(client) = state.client.clone() else {
                drop(state);
                return Err(self.unavailable());
            };
            let mut f = Filter::new(filter, QoS::AtLeastOnce);
            // Our own barrier messages must come back to us; nothing else needs `nolocal`.
            f.nolocal = false;
            client
                .try_subscribe_many(std::iter::once(f))
                .map_err(|_| Error::unavailable(BACKEND, "the MQTT connection is busy"))?;
            state.queued_subscribes.push_back(tx);
        }
        Ok(wait_for(rx))
    }

    /// Sends the PUBACK of `pkid` if the connection of `epoch` is still the live one (a
    /// PUBACK on a newer connection could acknowledge another message that reuses the id).
    pub(super) fn puback(&self, epoch: u64, pkid: u16) -> bool {
        let state = self.state();
        if state.epoch != epoch {
            return false;
        }
        let Some(client) = &state.client else {
            return false;
        };
        let mut ack = Publish::new("", QoS::AtLeastOnce, bytes::Bytes::new(), None);
        ack.pkid = pkid;
        client.try_ack(&ack).is_ok()
    }

    /// Stops the link: disconnects (the broker keeps a persistent session) and ends the task.
    pub(super) async fn close(&self) {
        let client = {
            let mut state = self.state();
            state.closed = true;
            state.fail_all("the queue handle was closed");
            state.client.take()
        };
        if let Some(client) = client {
            let _ = tokio::time::timeout(Duration::from_secs(2), client.disconnect()).await;
            // Give the event loop a moment to write the DISCONNECT.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn wait_for(rx: oneshot::Receiver<Result<()>>) -> Result<()> {
    match tokio::time::timeout(ACK_TIMEOUT, rx).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(Error::unavailable(
            BACKEND,
            "the MQTT connection was closed",
        )),
        Err(_) => Err(Error::new(
            cloud_abstraction::ErrorKind::DeadlineExceeded,
            BACKEND,
            "the MQTT broker did not acknowledge in time",
        )),
    }
}

/// The reconnect loop: one epoch per connection attempt.
async fn drive(link: Weak<Link>, options: MqttOptions, handler: Arc<dyn LinkHandler>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let (client, mut events) = AsyncClient::new(options.clone(), CHANNEL_CAPACITY);
        let mut epoch = None;
        let error = loop {
            let event = events.poll().await;
            let Some(link) = link.upgrade() else { return };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                    let e = {
                        let mut state = link.state();
                        if state.closed {
                            return;
                        }
                        state.epoch += 1;
                        state.client = Some(client.clone());
                        state.last_error = None;
                        state.epoch
                    };
                    epoch = Some(e);
                    backoff = Duration::from_millis(50);
                    handler.connected(&link, e, &connack);
                    link.changed.notify_waiters();
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    if let Some(e) = epoch {
                        handler.publish(&link, e, publish);
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    let waiter = link.state().in_flight_publishes.remove(&ack.pkid);
                    if let Some(w) = waiter {
                        let _ = w.send(puback_result(ack.reason));
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    let waiter = link.state().in_flight_subscribes.remove(&ack.pkid);
                    if let Some(w) = waiter {
                        let granted = ack
                            .return_codes
                            .iter()
                            .all(|c| matches!(c, SubscribeReasonCode::Success(_)));
                        let _ = w.send(if granted {
                            Ok(())
                        } else {
                            Err(Error::internal(
                                BACKEND,
                                format!(
                                    "the broker refused a subscription: {:?}",
                                    ack.return_codes
                                ),
                            ))
                        });
                    }
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    let mut state = link.state();
                    let waiter = match state.collided.take() {
                        Some(w) => Some(w),
                        None => state.queued_publishes.pop_front(),
                    };
                    if let Some(w) = waiter {
                        state.in_flight_publishes.insert(pkid, w);
                    }
                }
                Ok(Event::Outgoing(Outgoing::AwaitAck(_))) => {
                    let mut state = link.state();
                    state.collided = state.queued_publishes.pop_front();
                }
                Ok(Event::Outgoing(Outgoing::Subscribe(pkid))) => {
                    let mut state = link.state();
                    if let Some(w) = state.queued_subscribes.pop_front() {
                        state.in_flight_subscribes.insert(pkid, w);
                    }
                }
                Ok(_) => {}
                Err(e) => break describe(&e),
            }
        };
        let Some(link) = link.upgrade() else { return };
        {
            let mut state = link.state();
            state.client = None;
            state.last_error = Some(error);
            state.fail_all("the connection to the MQTT broker was lost");
            if state.closed {
                return;
            }
        }
        if let Some(e) = epoch {
            handler.disconnected(e);
        }
        link.changed.notify_waiters();
        drop(link);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

fn puback_result(reason: PubAckReason) -> Result<()> {
    match reason {
        PubAckReason::Success | PubAckReason::NoMatchingSubscribers => Ok(()),
        PubAckReason::QuotaExceeded => Err(Error::new(
            cloud_abstraction::ErrorKind::ResourceExhausted,
            BACKEND,
            "the broker refused the publish: quota exceeded",
        )),
        PubAckReason::NotAuthorized => Err(Error::new(
            cloud_abstraction::ErrorKind::PermissionDenied,
            BACKEND,
            "the broker refused the publish: not authorized",
        )),
        other => Err(Error::internal(
            BACKEND,
            format!("the broker refused the publish: {other:?}"),
        )),
    }
}

/// A short description of a connection failure, without the broker's address or credentials,
/// and its error kind.
fn describe(e: &ConnectionError) -> (String, ErrorKind) {
    let unavailable = |why: String| (why, ErrorKind::Unavailable);
    match e {
        ConnectionError::Io(io) => unavailable(format!("I/O: {}", io.kind())),
        ConnectionError::ConnectionRefused(code) => {
            let kind = match code {
                ConnectReturnCode::BadUserNamePassword => ErrorKind::Unauthenticated,
                ConnectReturnCode::NotAuthorized | ConnectReturnCode::Banned => {
                    ErrorKind::PermissionDenied
                }
                ConnectReturnCode::ClientIdentifierNotValid
                | ConnectReturnCode::UnsupportedProtocolVersion => ErrorKind::InvalidArgument,
                _ => ErrorKind::Unavailable,
            };
            (format!("refused the connection: {code:?}"), kind)
        }
        ConnectionError::Timeout(_) => unavailable("connect timed out".into()),
        ConnectionError::MqttState(StateError::Io(io)) => {
            unavailable(format!("I/O: {}", io.kind()))
        }
        ConnectionError::MqttState(s) => unavailable(format!("protocol: {s}")),
        other => unavailable(other.to_string()),
    }
}
