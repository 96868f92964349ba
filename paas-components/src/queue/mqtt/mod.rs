//! The MQTT 5 queue (`mqtt://`), through rumqttc's v5 client.
//!
//! MQTT is a publish/subscribe protocol, not a queue: it has no topics to create, no backlog
//! for a subscriber that does not exist yet, no leases, no negative acknowledgement and no
//! delivery count. This backend maps the portable model onto what MQTT 5 does honestly and
//! declares the rest unsupported (the kit checks both).
//!
//! - **Layout.** Everything lives under a prefix (URL parameter `prefix`, default `paas`):
//!   - messages of topic `T` are published to `<prefix>/data/T/<generation>`, at QoS 1;
//!   - a consumer group `G` of `T` is a **shared subscription**
//!     `$share/G.<group generation>/<prefix>/data/T/<generation>`, held by one **persistent
//!     session** per queue handle (`clean_start = false`, a session expiry interval), so the
//!     broker queues the group's messages from `create_group` on, also while no `receive`
//!     runs; `receive` takes them from that session's client-side buffer. Consumers of one
//!     group on several handles share the group's messages (the broker hands each message to
//!     one session of the share); every group sees every message;
//!   - which topics and groups exist is a registry of retained messages on
//!     `<prefix>/meta/…` (see `registry.rs`): a topic's or group's *generation* is new at
//!     every creation, so a re-created topic or group never receives what was meant for the
//!     deleted one;
//!   - attributes are MQTT 5 **user properties**; the message id and the publish time are two
//!     more user properties (`:id`, `:published-at`), named so that no attribute name can
//!     collide with them.
//! - **Acknowledgements.** Manual PUBACKs, **sent in receive order** as MQTT requires
//!   (MQTT 5, 4.6): an ack of a later message waits until every earlier one of the same
//!   session is acknowledged (see `acks.rs`). One message held unacknowledged therefore stalls
//!   its session once the broker's in-flight window (Mosquitto: `max_inflight_messages`, 20)
//!   is full of messages behind it: acknowledge what you receive.
//! - **Semantics.** At-least-once. A delivery stays with its session until it is acknowledged
//!   or the session's connection drops: then the broker sends every unacknowledged message of
//!   the session again (same session, so to the same handle), and `receive` hands it out
//!   again with a new receipt. A message acknowledged before the drop is not handed out again,
//!   whether its PUBACK was held back for ordering, written but lost, or the ack came while
//!   the connection was down (it settles the message's next arrival). Receipts of an earlier
//!   connection whose message was handed out again are
//!   [`PreconditionFailed`](cloud_abstraction::ErrorKind::PreconditionFailed).
//! - **Unsupported** (each call fails with `Unsupported`, never a silent no-op):
//!   - `nack` (a delivery cannot be given back without ending the connection) and so
//!     `nack_delay`;
//!   - lease expiry and `extend_deadline`: no ack deadline runs out; the group's
//!     `ack_deadline` is recorded and validated, nothing more;
//!   - dead-lettering and attempt counts (MQTT keeps no count; every delivery says attempt 1,
//!     including redeliveries after a reconnect);
//!   - de-duplication by id (a message with an id is refused; ids are generated), ordering
//!     keys (a shared subscription does not keep order between consumers), delayed delivery;
//!   - portable receipts: a receipt is valid only on the handle that received it (PUBACKs are
//!     per session).
//! - **Limits.** A body may have up to 256 MiB − 256 KiB: Mosquitto's default
//!   (`message_size_limit` 0) accepts any valid MQTT packet, whose size MQTT caps at
//!   268,435,455 bytes; 256 KiB are kept for the topic and the user properties (at most
//!   100 attributes of 1 KiB). A broker configured with a lower limit refuses larger
//!   publishes (an error, not a silent drop).
//! - **Failures.** Each handle has one connection for publishing (clean session), one for the
//!   registry, and one per group it consumes; each reconnects by itself (backoff up to 1 s).
//!   While a connection is down, calls that need it fail at once with `Unavailable`
//!   (retryable), publishes in flight fail with `Unavailable` (they may or may not have
//!   reached the broker), and the same handle recovers when the broker is back. A publish
//!   returns `Ok` only after the broker's PUBACK.
//! - **Sessions and handles.** Session client ids are `<client_id>-pub`, `<client_id>-meta`
//!   and `<client_id>-g-<topic>-<group>-<generation>`. `client_id` (URL parameter) defaults
//!   to a random id per handle; give a stable one per process (and never the same to two
//!   live handles: the broker disconnects the older) so that a restarted process resumes its
//!   sessions and gets their unacknowledged and queued messages. A session of a handle that
//!   never comes back keeps the messages the broker gave it until the session expires
//!   (`session_expiry`, seconds, default 3600); then the broker drops them. Mosquitto hands a
//!   shared subscription's messages round-robin to its sessions, offline ones included, and
//!   keeps at most `max_queued_messages` (default 1,000) for a session whose client is
//!   offline, dropping the rest: consumers of a group should stay connected, or come back
//!   under the same `client_id`. Deleting a group or its topic ends this handle's session at
//!   once, and other handles end theirs when they see the deletion.
//! - **Registry limits.** Two handles creating the same new topic at the same moment both
//!   succeed, and the later generation wins: groups made on the earlier one receive nothing.
//!   Deleting a topic takes one broker hop to reach other handles.
//! - **Durability** is not claimed: whether queued messages survive a broker restart is the
//!   broker's configuration (Mosquitto: `persistence`, saved every `autosave_interval`).
//!
//! URL: `mqtt://[user[:password]@]host[:port][?client_id=…&prefix=…&session_expiry=…&keep_alive=…]`
//! (port 1883); `provider`, `region`, `zone` as everywhere. Unknown parameters are
//! `InvalidArgument`. `mqtts://` is [`Unsupported`](cloud_abstraction::ErrorKind::Unsupported):
//! rumqttc 0.25's TLS features pull `rustls-webpki` 0.102 with its default features, which
//! compile in `ring`, and the workspace's one rustls provider is aws-lc-rs.

mod acks;
mod link;
mod registry;

use acks::{AckOutcome, Arrival, Deliveries};
use async_trait::async_trait;
use bytes::Bytes;
use cloud_abstraction::queue::{
    GroupOptions, Message, MessageQueue, QueueCapabilities, ReceiveOptions, ReceivedMessage,
};
use cloud_abstraction::validate::queue as rules;
use cloud_abstraction::{BackendInfo, Error, ErrorKind, Location, ResourceUrl, Result};
use link::{Link, LinkHandler, NoHandler};
use registry::{GroupEntry, GroupRemoved, Registry};
use rumqttc::v5::MqttOptions;
use rumqttc::v5::mqttbytes::v5::{ConnAck, ConnectProperties, Publish, PublishProperties};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;

use super::emulation::receipt::Receipts;

pub(crate) const BACKEND: &str = "mqtt";
/// Largest body: MQTT's packet limit less room for the topic and the user properties.
pub const MAX_BODY: u64 = 256 * 1024 * 1024 - 256 * 1024;
/// The largest packet this client accepts from the broker (MQTT's own limit).
const MAX_PACKET: u32 = 268_435_455 + 5;
/// User property with the message id.
const ID_PROPERTY: &str = ":id";
/// User property with the publish time (Unix milliseconds).
const PUBLISHED_PROPERTY: &str = ":published-at";
/// Deliveries a group session may hold unacknowledged (MQTT's largest Receive Maximum).
const RECEIVE_MAXIMUM: u16 = u16::MAX;
/// How long opening a handle, or a group session, waits for the broker.
const CONNECT_WAIT: Duration = Duration::from_secs(10);

/// A message as decoded from a PUBLISH.
#[derive(Debug, Clone, Default)]
pub(crate) struct Decoded {
    body: Bytes,
    attributes: BTreeMap<String, String>,
    published_at: Option<SystemTime>,
}

/// Settings read from the URL.
#[derive(Clone)]
struct Config {
    options: MqttOptions,
    client_id: String,
    prefix: String,
    session_expiry: u32,
}

/// The MQTT 5 queue: see the [module docs](self).
#[derive(Clone)]
pub struct MqttQueue {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MqttQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No URL, no credentials: the prefix and the location only.
        f.debug_struct("MqttQueue")
            .field("prefix", &self.inner.config.prefix)
            .field("location", &*lock(&self.inner.location))
            .finish()
    }
}

struct Inner {
    config: Config,
    location: Mutex<Location>,
    receipts: Receipts,
    publisher: Arc<Link>,
    registry_link: Arc<Link>,
    registry: Arc<Registry>,
    /// This handle's group sessions by (topic, group).
    sessions: Mutex<HashMap<(String, String), Arc<GroupSession>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl MqttQueue {
    /// Connects to the broker of `url` (see the [module docs](self) for its form).
    pub async fn connect(url: &str) -> Result<Self> {
        let url = ResourceUrl::parse(url)?;
        let (location, url) = Location::split_url(&url)?;
        let config = parse_config(&url)?;
        let handle = format!("{:016x}", rand::random::<u64>());
        let registry = Arc::new(Registry::new(&config.prefix, &handle));
        let publisher = Link::start(
            "publisher",
            session_options(&config, "pub", true),
            Arc::new(NoHandler),
        );
        let registry_link = Link::start(
            "registry",
            session_options(&config, "meta", true),
            Arc::clone(&registry) as Arc<dyn LinkHandler>,
        );
        registry.set_link(&registry_link);
        let inner = Arc::new(Inner {
            config,
            location: Mutex::new(location.unwrap_or_else(Location::unknown)),
            receipts: Receipts::per_handle(BACKEND),
            publisher,
            registry_link,
            registry: Arc::clone(&registry),
            sessions: Mutex::default(),
        });
        let weak: Weak<dyn GroupRemoved> = Arc::downgrade(&inner) as Weak<dyn GroupRemoved>;
        registry.set_removed(weak);
        let queue = Self { inner };
        // Fail the open, rather than the first call, when the broker cannot be reached.
        if let Err(e) = queue.inner.publisher.wait_connected(CONNECT_WAIT).await {
            queue.close().await;
            return Err(e);
        }
        Ok(queue)
    }

    /// The same queue, reporting `location` in its [`BackendInfo`].
    pub fn with_location(self, location: Location) -> Self {
        *lock(&self.inner.location) = location;
        self
    }

    /// Disconnects every connection of this handle. Persistent group sessions stay on the
    /// broker (and keep receiving) until they expire or this client id comes back.
    pub async fn close(&self) {
        let sessions: Vec<_> = lock(&self.inner.sessions).drain().map(|(_, s)| s).collect();
        for session in sessions {
            session.link.close().await;
        }
        self.inner.publisher.close().await;
        self.inner.registry_link.close().await;
    }
}

fn parse_config(url: &ResourceUrl) -> Result<Config> {
    match url.scheme() {
        "mqtt" => {}
        "mqtts" => {
            return Err(Error::unsupported(
                BACKEND,
                "mqtts:// (TLS): rumqttc's TLS support compiles in the `ring` crypto provider, \
                 and this workspace uses aws-lc-rs only; reach the broker over a TLS tunnel",
            ));
        }
        _ => return Err(Error::invalid(BACKEND, "the URL scheme must be mqtt")),
    }
    let host = url
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| Error::invalid(BACKEND, "an mqtt:// URL needs a host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let path = url.path();
    if !(path.is_empty() || path == "/") {
        return Err(Error::invalid(
            BACKEND,
            "an mqtt:// URL takes no path (use the `prefix` parameter)",
        ));
    }
    let mut client_id = format!("paas-{:016x}", rand::random::<u64>());
    let mut prefix = "paas".to_string();
    let mut session_expiry: u32 = 3600;
    let mut keep_alive: u64 = 10;
    for (name, value) in url.query_params() {
        match name.as_str() {
            "client_id" => {
                let ok = !value.is_empty()
                    && value.len() <= 64
                    && value
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
                if !ok {
                    return Err(Error::invalid(
                        BACKEND,
                        "`client_id` must be 1 to 64 ASCII letters, digits, `-` or `_`",
                    ));
                }
                client_id = value;
            }
            "prefix" => {
                let ok = !value.is_empty()
                    && value.len() <= 128
                    && !value.starts_with('$')
                    && !value.starts_with('/')
                    && !value.ends_with('/')
                    && !value.contains("//")
                    && !value.contains(['+', '#', '\0']);
                if !ok {
                    return Err(Error::invalid(
                        BACKEND,
                        "`prefix` must be 1 to 128 characters of MQTT topic levels, without \
                         wildcards, a leading `$` or empty levels",
                    ));
                }
                prefix = value;
            }
            "session_expiry" => {
                session_expiry = value.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                    Error::invalid(BACKEND, "`session_expiry` must be a number of seconds > 0")
                })?;
            }
            "keep_alive" => {
                keep_alive = value
                    .parse()
                    .ok()
                    .filter(|s| (5..=3600).contains(s))
                    .ok_or_else(|| {
                        Error::invalid(BACKEND, "`keep_alive` must be 5 to 3600 seconds")
                    })?;
            }
            other => {
                return Err(Error::invalid(
                    BACKEND,
                    format!("unknown URL parameter `{other}`"),
                ));
            }
        }
    }
    let port = url.port().unwrap_or(1883);
    let mut options = MqttOptions::new(client_id.clone(), host.clone(), port);
    options
        .set_keep_alive(Duration::from_secs(keep_alive))
        .set_connection_timeout(5)
        .set_max_packet_size(Some(MAX_PACKET))
        .set_outgoing_inflight_upper_limit(1024)
        .set_pending_throttle(Duration::ZERO);
    if let Some(user) = url.username() {
        let password = url.as_url().password().unwrap_or("");
        let user = percent_decode(user);
        let password = percent_decode(password);
        options.set_credentials(user, password);
    }
    Ok(Config {
        options,
        client_id,
        prefix,
        session_expiry,
    })
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// Options of one session: `suffix` names it; `clean` for sessions that keep nothing.
fn session_options(config: &Config, suffix: &str, clean: bool) -> MqttOptions {
    let mut options = config.options.clone();
    options.set_client_id(format!("{}-{suffix}", config.client_id));
    options.set_clean_start(clean);
    let mut properties = ConnectProperties::new();
    properties.max_packet_size = Some(MAX_PACKET);
    if !clean {
        properties.session_expiry_interval = Some(config.session_expiry);
        // The broker may have this many deliveries of the session unacknowledged. Without
        // it Mosquitto uses its `max_inflight_messages` (20), and 20 leased messages (or
        // acks held back for ordering) would stall the group.
        properties.receive_maximum = Some(RECEIVE_MAXIMUM);
    }
    options.set_connect_properties(properties);
    options.set_manual_acks(!clean);
    options
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn decode(publish: &Publish) -> (Option<String>, Decoded) {
    let mut decoded = Decoded {
        body: publish.payload.clone(),
        ..Decoded::default()
    };
    let mut id = None;
    if let Some(properties) = &publish.properties {
        for (name, value) in &properties.user_properties {
            match name.as_str() {
                ID_PROPERTY => id = Some(value.clone()),
                PUBLISHED_PROPERTY => {
                    decoded.published_at = value
                        .parse::<u64>()
                        .ok()
                        .map(|ms| UNIX_EPOCH + Duration::from_millis(ms));
                }
                _ => {
                    decoded.attributes.insert(name.clone(), value.clone());
                }
            }
        }
    }
    (id, decoded)
}

// ---------------------------------------------------------------------------------------------
// Group sessions

/// One handle's persistent session for one group: the shared subscription and its buffer.
struct GroupSession {
    generation: String,
    /// Options of the session (to end it: the same client id with a clean start).
    options: MqttOptions,
    link: Arc<Link>,
    state: Arc<SessionState>,
}

struct SessionState {
    me: Weak<SessionState>,
    filter: String,
    deliveries: Mutex<Deliveries>,
    arrived: Notify,
    /// The epoch whose subscription the broker granted.
    subscribed: Mutex<Option<u64>>,
    subscribed_changed: Notify,
}

impl LinkHandler for SessionState {
    fn connected(&self, link: &Arc<Link>, epoch: u64, connack: &ConnAck) {
        lock(&self.deliveries).new_epoch(epoch, connack.session_present);
        // Subscribing again on a resumed session is harmless and covers a session the
        // broker lost (`session_present == false`).
        let Ok(granted) = link.subscribe(self.filter.clone()) else {
            return;
        };
        let link = Arc::downgrade(link);
        let me = self.me.clone();
        tokio::spawn(async move {
            let ok = granted.await.is_ok();
            let (Some(me), Some(link)) = (me.upgrade(), link.upgrade()) else {
                return;
            };
            if ok && link.connected_epoch() == Some(epoch) {
                *lock(&me.subscribed) = Some(epoch);
            }
            me.subscribed_changed.notify_waiters();
        });
    }

    fn publish(&self, link: &Arc<Link>, epoch: u64, publish: Publish) {
        let (id, message) = decode(&publish);
        let arrival = Arrival {
            pkid: publish.pkid,
            dup: publish.dup,
            id,
            message,
        };
        let mut deliveries = lock(&self.deliveries);
        if deliveries.epoch() != epoch {
            return;
        }
        for pkid in deliveries.arrive(arrival) {
            link.puback(epoch, pkid);
        }
        drop(deliveries);
        self.arrived.notify_waiters();
    }

    fn disconnected(&self, _epoch: u64) {
        *lock(&self.subscribed) = None;
        lock(&self.deliveries).disconnected();
        self.subscribed_changed.notify_waiters();
        self.arrived.notify_waiters();
    }
}

impl SessionState {
    /// Waits until the session's subscription is granted on a live connection.
    async fn wait_subscribed(&self, link: &Link, wait: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.subscribed_changed.notified();
            let subscribed = *lock(&self.subscribed);
            if subscribed.is_some() && subscribed == link.connected_epoch() {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(link.unavailable());
            }
        }
    }
}

/// Ends the session of `options`' client id on the broker: a clean start with no expiry
/// discards it with everything queued for it.
async fn discard_session(mut options: MqttOptions) {
    options.set_clean_start(true);
    options.set_manual_acks(false);
    let mut properties = ConnectProperties::new();
    properties.session_expiry_interval = Some(0);
    properties.max_packet_size = Some(MAX_PACKET);
    options.set_connect_properties(properties);
    let (client, mut events) = rumqttc::v5::AsyncClient::new(options, 16);
    let ended = async {
        loop {
            match events.poll().await {
                Ok(rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::ConnAck(
                    _,
                ))) => {
                    let _ = client.disconnect().await;
                }
                Ok(rumqttc::v5::Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                    // Let the DISCONNECT reach the socket.
                    let _ = events.poll().await;
                    return;
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), ended).await;
}

impl GroupRemoved for Inner {
    fn group_removed(&self, topic: &str, group: &str, generation: &str) {
        let key = (topic.to_string(), group.to_string());
        let mut sessions = lock(&self.sessions);
        if sessions
            .get(&key)
            .is_some_and(|s| s.generation == generation)
        {
            if let Some(session) = sessions.remove(&key) {
                tokio::spawn(end_session(session));
            }
        }
    }
}

async fn end_session(session: Arc<GroupSession>) {
    session.link.close().await;
    discard_session(session.options.clone()).await;
}

impl Inner {
    fn data_topic(&self, topic: &str, generation: &str) -> String {
        format!("{}/data/{topic}/{generation}", self.config.prefix)
    }

    /// This handle's session for the group, opened if needed.
    fn session(&self, topic: &str, group: &str, entry: &GroupEntry) -> Arc<GroupSession> {
        let key = (topic.to_string(), group.to_string());
        let mut sessions = lock(&self.sessions);
        if let Some(existing) = sessions.get(&key) {
            if existing.generation == entry.generation {
                return Arc::clone(existing);
            }
            // A session of a deleted incarnation of the group.
            if let Some(old) = sessions.remove(&key) {
                tokio::spawn(end_session(old));
            }
        }
        let filter = format!(
            "$share/{group}.{}/{}",
            entry.generation,
            self.data_topic(topic, &entry.topic_generation)
        );
        let options = session_options(
            &self.config,
            &format!("g-{topic}-{group}-{}", entry.generation),
            false,
        );
        let state = Arc::new_cyclic(|me| SessionState {
            me: me.clone(),
            filter,
            deliveries: Mutex::default(),
            arrived: Notify::new(),
            subscribed: Mutex::new(None),
            subscribed_changed: Notify::new(),
        });
        let link = Link::start(
            format!("group {group}"),
            options.clone(),
            Arc::clone(&state) as Arc<dyn LinkHandler>,
        );
        let session = Arc::new(GroupSession {
            generation: entry.generation.clone(),
            options,
            link,
            state,
        });
        sessions.insert(key, Arc::clone(&session));
        session
    }

    /// Publishes a registry record (retained) and applies it to this handle's view.
    async fn record(&self, key: String, payload: String) -> Result<()> {
        let bytes = Bytes::from(payload);
        self.publisher
            .publish(key.clone(), true, bytes.clone(), None)?
            .await?;
        self.registry.apply_local(&key, &bytes);
        Ok(())
    }

    /// Deletes the group's record and ends this handle's session of it (before returning,
    /// so the broker queues nothing more for it).
    async fn remove_group(&self, topic: &str, group: &str, entry: &GroupEntry) -> Result<()> {
        let key = (topic.to_string(), group.to_string());
        let session = {
            let mut sessions = lock(&self.sessions);
            match sessions.get(&key) {
                Some(s) if s.generation == entry.generation => sessions.remove(&key),
                _ => None,
            }
        };
        let recorded = self
            .record(self.registry.group_key(topic, group), String::new())
            .await;
        if let Some(session) = session {
            end_session(session).await;
        }
        recorded
    }

    async fn publish_all(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<String>> {
        let generation =
            self.registry.topic(topic).await?.ok_or_else(|| {
                Error::not_found(BACKEND, format!("topic `{topic}` does not exist"))
            })?;
        let data_topic = self.data_topic(topic, &generation);
        let published_at = now_ms().to_string();
        let mut ids = Vec::with_capacity(messages.len());
        let mut acks = Vec::with_capacity(messages.len());
        for message in messages {
            let id = uuid::Uuid::new_v4().simple().to_string();
            let mut user_properties: Vec<(String, String)> =
                message.attributes.into_iter().collect();
            user_properties.push((ID_PROPERTY.to_string(), id.clone()));
            user_properties.push((PUBLISHED_PROPERTY.to_string(), published_at.clone()));
            let properties = PublishProperties {
                user_properties,
                ..PublishProperties::default()
            };
            acks.push(self.publisher.publish(
                data_topic.clone(),
                false,
                message.body,
                Some(properties),
            )?);
            ids.push(id);
        }
        for acked in futures::future::join_all(acks).await {
            acked?;
        }
        Ok(ids)
    }
}

/// The receipt's inner part: `<group generation>.<epoch>.<seq>.<message id>`.
fn parse_receipt(inner: &str) -> Result<(&str, u64, u64, &str)> {
    let mut parts = inner.splitn(4, '.');
    let parsed = (|| {
        let generation = parts.next()?;
        let epoch = parts.next()?.parse().ok()?;
        let seq = parts.next()?.parse().ok()?;
        let id = parts.next()?;
        (!generation.is_empty()).then_some((generation, epoch, seq, id))
    })();
    parsed.ok_or_else(|| Error::invalid(BACKEND, "malformed receipt"))
}

#[async_trait]
impl MessageQueue for MqttQueue {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            backend: BACKEND.to_string(),
            location: lock(&self.inner.location).clone(),
        }
    }

    fn capabilities(&self) -> QueueCapabilities {
        let mut caps = QueueCapabilities::minimal();
        caps.nack = false;
        caps.lease_expiry = false;
        caps.attempt_count = false;
        caps.portable_receipts = false;
        caps.durable = false;
        caps.max_message_size = Some(MAX_BODY);
        caps
    }

    async fn create_topic(&self, topic: &str) -> Result<()> {
        rules::topic(BACKEND, topic)?;
        let inner = &self.inner;
        if inner.registry.topic(topic).await?.is_some() {
            return Ok(());
        }
        let generation = format!("{:016x}", rand::random::<u64>());
        inner
            .record(inner.registry.topic_key(topic), generation)
            .await
    }

    async fn delete_topic(&self, topic: &str) -> Result<()> {
        rules::topic(BACKEND, topic)?;
        let inner = &self.inner;
        if inner.registry.topic(topic).await?.is_none() {
            return Ok(());
        }
        for (group, entry) in inner.registry.groups_of(topic) {
            inner.remove_group(topic, &group, &entry).await?;
        }
        inner
            .record(inner.registry.topic_key(topic), String::new())
            .await
    }

    async fn create_group(&self, topic: &str, group: &str, options: GroupOptions) -> Result<()> {
        rules::topic_group(BACKEND, topic, group)?;
        rules::group_options(BACKEND, &self.capabilities(), topic, &options)?;
        let inner = &self.inner;
        let (topic_generation, existing) = inner.registry.group(topic, group).await?;
        let Some(topic_generation) = topic_generation else {
            return Err(Error::not_found(
                BACKEND,
                format!("topic `{topic}` does not exist"),
            ));
        };
        let ack_deadline_ms = options.ack_deadline.as_millis() as u64;
        let entry = match existing {
            Some(e) => GroupEntry {
                ack_deadline_ms,
                ..e
            },
            None => GroupEntry {
                topic_generation,
                generation: format!("{:016x}", rand::random::<u64>()),
                ack_deadline_ms,
            },
        };
        // Subscribed before the group is recorded: from here on the broker queues for it.
        let session = inner.session(topic, group, &entry);
        session
            .state
            .wait_subscribed(&session.link, CONNECT_WAIT)
            .await?;
        inner
            .record(
                inner.registry.group_key(topic, group),
                Registry::encode_group(&entry),
            )
            .await
    }

    async fn delete_group(&self, topic: &str, group: &str) -> Result<()> {
        rules::topic_group(BACKEND, topic, group)?;
        let inner = &self.inner;
        match inner.registry.group(topic, group).await? {
            (_, Some(entry)) => inner.remove_group(topic, group, &entry).await,
            _ => Ok(()),
        }
    }

    async fn publish(&self, topic: &str, message: Message) -> Result<String> {
        rules::topic(BACKEND, topic)?;
        rules::message(BACKEND, &self.capabilities(), &message)?;
        let mut ids = self.inner.publish_all(topic, vec![message]).await?;
        ids.pop()
            .ok_or_else(|| Error::internal(BACKEND, "publish returned no id"))
    }

    async fn publish_batch(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<String>> {
        rules::topic(BACKEND, topic)?;
        rules::batch(BACKEND, &self.capabilities(), &messages)?;
        if messages.is_empty() {
            // Still a NotFound for an unknown topic.
            self.inner.registry.topic(topic).await?.ok_or_else(|| {
                Error::not_found(BACKEND, format!("topic `{topic}` does not exist"))
            })?;
            return Ok(Vec::new());
        }
        self.inner.publish_all(topic, messages).await
    }

    async fn receive(
        &self,
        topic: &str,
        group: &str,
        options: ReceiveOptions,
    ) -> Result<Vec<ReceivedMessage>> {
        rules::topic_group(BACKEND, topic, group)?;
        rules::receive(BACKEND, &options)?;
        let inner = &self.inner;
        let deadline = tokio::time::Instant::now()
            .checked_add(options.wait)
            .ok_or_else(|| Error::invalid(BACKEND, "the receive wait is too long"))?;
        let entry = match inner.registry.group(topic, group).await? {
            (None, _) => {
                return Err(Error::not_found(
                    BACKEND,
                    format!("topic `{topic}` does not exist"),
                ));
            }
            (_, None) => {
                return Err(Error::not_found(
                    BACKEND,
                    format!("group `{group}` of topic `{topic}` does not exist"),
                ));
            }
            (_, Some(entry)) => entry,
        };
        let session = inner.session(topic, group, &entry);
        let state = &session.state;
        loop {
            let arrived = state.arrived.notified();
            let (epoch, taken) = {
                let mut deliveries = lock(&state.deliveries);
                (deliveries.epoch(), deliveries.take(options.max_messages))
            };
            if !taken.is_empty() {
                let fallback_time = SystemTime::now();
                return Ok(taken
                    .into_iter()
                    .map(|(seq, arrival)| {
                        let id = arrival.id.clone().unwrap_or_default();
                        let receipt = inner
                            .receipts
                            .make(&format!("{}.{epoch}.{seq}.{id}", entry.generation));
                        ReceivedMessage {
                            id: if id.is_empty() {
                                format!("{epoch}-{seq}")
                            } else {
                                id
                            },
                            body: arrival.message.body,
                            attributes: arrival.message.attributes,
                            ordering_key: None,
                            attempt: 1,
                            published_at: arrival.message.published_at.unwrap_or(fallback_time),
                            receipt,
                        }
                    })
                    .collect());
            }
            let connected = state.wait_subscribed(&session.link, Duration::ZERO).await;
            if tokio::time::Instant::now() >= deadline {
                // Nothing buffered: an outage is an error, not an empty answer.
                return match connected {
                    Ok(()) => Ok(Vec::new()),
                    Err(_) => {
                        state
                            .wait_subscribed(&session.link, Duration::from_millis(500))
                            .await?;
                        Ok(Vec::new())
                    }
                };
            }
            let _ = tokio::time::timeout_at(deadline, arrived).await;
        }
    }

    async fn ack(&self, topic: &str, group: &str, receipt: &str) -> Result<()> {
        rules::topic_group(BACKEND, topic, group)?;
        let inner = &self.inner;
        let (generation, epoch, seq, id) = parse_receipt(inner.receipts.open(receipt)?)?;
        let session = lock(&inner.sessions)
            .get(&(topic.to_string(), group.to_string()))
            .cloned();
        let Some(session) = session.filter(|s| s.generation == generation) else {
            // No session of that group incarnation on this handle: fine if the group was
            // deleted (nothing is pending any more), else the session was closed.
            return match inner.registry.group(topic, group).await? {
                (_, Some(entry)) if entry.generation == generation => Err(Error::new(
                    ErrorKind::PreconditionFailed,
                    BACKEND,
                    "the receipt's group session is closed",
                )),
                _ => Ok(()),
            };
        };
        let outcome = {
            let mut deliveries = lock(&session.state.deliveries);
            let outcome = deliveries.ack(epoch, seq, id);
            if let AckOutcome::Acked(pkids) = &outcome {
                // Sent under the lock, so that two acks flushing at once keep the order. A
                // PUBACK that cannot be sent (connection gone) is not needed: the broker
                // sends the message again after the reconnect, and it is settled then.
                let current = deliveries.epoch();
                for pkid in pkids {
                    session.link.puback(current, *pkid);
                }
            }
            outcome
        };
        match outcome {
            AckOutcome::Acked(_) => Ok(()),
            AckOutcome::Stale => Err(Error::new(
                ErrorKind::PreconditionFailed,
                BACKEND,
                "the receipt is of an earlier delivery; the message was delivered again since",
            )),
            AckOutcome::Unknown => Err(Error::new(
                ErrorKind::PreconditionFailed,
                BACKEND,
                "the receipt names no delivery of this group",
            )),
        }
    }

    async fn nack(&self, topic: &str, group: &str, receipt: &str, delay: Duration) -> Result<()> {
        rules::topic_group(BACKEND, topic, group)?;
        let _ = receipt;
        rules::nack_delay(BACKEND, &self.capabilities(), delay)
    }
}
