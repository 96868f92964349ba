//! Opening backends by URL, Go CDK style: `open_blob_store("s3://bucket?…")`.
//!
//! Built-in schemes (this table is checked against the registry's own table by a unit test):
//!
//! | scheme | traits | backend | cargo feature | location default |
//! |---|---|---|---|---|
//! | `mem://[name]` | blob store, document store, queue | in-memory (a name shares one instance per registry) | `memory` (default) | local |
//! | `file:///path` | blob store | local filesystem | `local` (default) | local |
//! | `sqlite:///path.db`, `sqlite::memory:` | document store, queue | SQLite | `sqlite` (default) | local |
//! | `process://` | compute | local child processes | `process` (default) | local |
//! | `sim://` | compute | simulator (nothing runs) | `sim` (default) | local |
//! | `docker://[/socket]`, `unix:///socket` | compute | Docker Engine over its unix socket | `docker` | local |
//! | `postgres://…`, `postgresql://…` | document store | PostgreSQL | `postgres` | unknown |
//! | `mysql://…`, `mariadb://…` | document store | MariaDB / MySQL | `mysql` | unknown |
//! | `redis://…` | document store | Redis | `redis` | unknown |
//! | `redis://…`, `rediss://…` | queue | Redis Streams | `redis` | unknown |
//! | `nats://…` | queue | NATS JetStream | `nats` | unknown |
//! | `s3://bucket?…` | blob store | S3 and compatible servers | `s3` | unknown |
//! | `azure://container?…` | blob store | Azure Blob | `azure` | unknown |
//! | `mqtt://…`, `mqtts://…` | queue | MQTT 5 broker (`mqtts` is `Unsupported`: no TLS without `ring` in rumqttc) | `mqtt` | unknown |
//! | `amqp://…`, `amqps://…` | queue | RabbitMQ | `rabbitmq` | unknown |
//! | `kafka://host:port?…` | queue | Kafka | `kafka` | unknown |
//!
//! # Location
//!
//! Every URL may carry `provider`, `region` and `zone` query parameters saying where the
//! backend runs ([`Location::from_url`] has the rules), e.g.
//! `postgres://db/app?provider=aws&region=eu-central-1&zone=eu-central-1a`; the opened
//! backend reports exactly that location in its `info()`. Without them a backend reports an
//! honest default: [`Location::local`] for embedded backends, [`Location::unknown`] for
//! server backends (a server's address does not say which cloud it is in). The registry takes
//! the parameters out of the URL before it reaches a client library that would reject or
//! misread them (sqlx). For `s3://`, `region` is both the location's region and the signing
//! region, unless `signing_region` is given (see the S3 backend in [`storage`](crate::storage)). Embedded
//! schemes take no other parameters, so a misspelt one is an error rather than ignored. A
//! second open of a named `mem://` instance may not ask for a different location than the
//! first.
//!
//! `file:` URLs take an absolute directory path: `file:///var/lib/app/blobs` (also
//! `file://localhost/…` and `file:/…`). A host other than `localhost`
//! (`file://data/tmp/x`) and a relative path (`file:rel/dir`) are
//! [`InvalidArgument`](ErrorKind::InvalidArgument): the process's working directory is no
//! stable place for data, and a dropped host would open another directory than the one named.
//!
//! # Errors
//!
//! A scheme whose feature is not compiled in is an [`Unsupported`](ErrorKind::Unsupported)
//! error naming the feature; an unknown scheme is [`InvalidArgument`](ErrorKind::InvalidArgument)
//! listing the registry's schemes for that trait; bad location parameters are
//! `InvalidArgument` naming the parameter, not its value. URLs are never printed with their
//! secrets (see [`ResourceUrl`]).
//!
//! # Registries
//!
//! The free functions ([`open_blob_store`], [`register_blob_store`], …) use one process-wide
//! registry that starts with the built-in schemes. A [`Registry`] value is the same thing as
//! an ordinary value an application builds and passes around; changes to it affect nobody
//! else. Applications add their own schemes with `register_*`. A user opener receives the whole
//! URL, location parameters included (validated first), and should report them, e.g. with
//! [`Location::from_url`]: when the URL asks for a location and the opened backend reports
//! another, the open fails rather than silently ignoring the configuration.

use cloud_abstraction::{
    BackendInfo, BlobStore, Compute, DocumentStore, Error, ErrorKind, Location, MessageQueue,
    ResourceUrl, Result,
};
use futures::future::BoxFuture;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

const SOURCE: &str = "registry";

/// A user-supplied opener for one URL scheme.
pub type Opener<T> = Arc<dyn Fn(ResourceUrl) -> BoxFuture<'static, Result<Arc<T>>> + Send + Sync>;

/// The trait a scheme opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BackendKind {
    /// [`BlobStore`].
    BlobStore,
    /// [`DocumentStore`].
    DocumentStore,
    /// [`MessageQueue`].
    Queue,
    /// [`Compute`].
    Compute,
}

impl BackendKind {
    /// Every kind, in table order.
    pub const ALL: [BackendKind; 4] = [
        Self::BlobStore,
        Self::DocumentStore,
        Self::Queue,
        Self::Compute,
    ];

    /// The kind's name as the docs and error messages spell it (`"blob store"`, …).
    pub fn name(self) -> &'static str {
        match self {
            Self::BlobStore => "blob store",
            Self::DocumentStore => "document store",
            Self::Queue => "queue",
            Self::Compute => "compute",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One row of the built-in scheme table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuiltinScheme {
    /// The URL scheme, lower case (`"postgres"`).
    pub scheme: &'static str,
    /// The trait it opens.
    pub kind: BackendKind,
    /// The cargo feature of paas-components that provides it.
    pub feature: &'static str,
    /// Whether that feature is compiled in.
    pub compiled: bool,
}

/// The built-in schemes, one row per (scheme, trait): the table the registry is built from.
pub fn builtin_schemes() -> Vec<BuiltinScheme> {
    table()
        .into_iter()
        .map(|row| BuiltinScheme {
            scheme: row.scheme,
            kind: row.open.kind(),
            feature: row.feature,
            compiled: row.open.compiled(),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The table.

type Opening<T> = BoxFuture<'static, Result<Arc<T>>>;
/// A built-in opener; `&Shared` holds the registry's named `mem://` instances.
type BuiltinFn<T> = fn(ResourceUrl, &Shared) -> Opening<T>;

enum Open {
    Blob(Option<BuiltinFn<dyn BlobStore>>),
    Document(Option<BuiltinFn<dyn DocumentStore>>),
    Queue(Option<BuiltinFn<dyn MessageQueue>>),
    Compute(Option<BuiltinFn<dyn Compute>>),
}

impl Open {
    fn kind(&self) -> BackendKind {
        match self {
            Self::Blob(_) => BackendKind::BlobStore,
            Self::Document(_) => BackendKind::DocumentStore,
            Self::Queue(_) => BackendKind::Queue,
            Self::Compute(_) => BackendKind::Compute,
        }
    }

    fn compiled(&self) -> bool {
        match self {
            Self::Blob(o) => o.is_some(),
            Self::Document(o) => o.is_some(),
            Self::Queue(o) => o.is_some(),
            Self::Compute(o) => o.is_some(),
        }
    }
}

struct Row {
    scheme: &'static str,
    feature: &'static str,
    open: Open,
}

/// `Some(opener)` when the cargo feature is compiled in, else `None` (and the opener, which
/// exists only with its feature, is not referred to).
macro_rules! compiled {
    ($feature:literal, $open:path) => {{
        #[cfg(feature = $feature)]
        let open = Some($open as _);
        #[cfg(not(feature = $feature))]
        let open = None;
        open
    }};
}

/// The one table of built-in schemes: every list of schemes and every feature error comes
/// from here.
fn table() -> Vec<Row> {
    let row = |scheme, feature, open| Row {
        scheme,
        feature,
        open,
    };
    vec![
        row(
            "mem",
            "memory",
            Open::Blob(compiled!("memory", open::mem_blob)),
        ),
        row(
            "mem",
            "memory",
            Open::Document(compiled!("memory", open::mem_document)),
        ),
        row(
            "mem",
            "memory",
            Open::Queue(compiled!("memory", open::mem_queue)),
        ),
        row("file", "local", Open::Blob(compiled!("local", open::file))),
        row(
            "sqlite",
            "sqlite",
            Open::Document(compiled!("sqlite", open::sqlite_document)),
        ),
        row(
            "sqlite",
            "sqlite",
            Open::Queue(compiled!("sqlite", open::sqlite_queue)),
        ),
        row(
            "process",
            "process",
            Open::Compute(compiled!("process", open::process)),
        ),
        row("sim", "sim", Open::Compute(compiled!("sim", open::sim))),
        row(
            "docker",
            "docker",
            Open::Compute(compiled!("docker", open::docker)),
        ),
        row(
            "unix",
            "docker",
            Open::Compute(compiled!("docker", open::docker)),
        ),
        row(
            "postgres",
            "postgres",
            Open::Document(compiled!("postgres", open::postgres)),
        ),
        row(
            "postgresql",
            "postgres",
            Open::Document(compiled!("postgres", open::postgres)),
        ),
        row(
            "mysql",
            "mysql",
            Open::Document(compiled!("mysql", open::mysql)),
        ),
        row(
            "mariadb",
            "mysql",
            Open::Document(compiled!("mysql", open::mysql)),
        ),
        row(
            "redis",
            "redis",
            Open::Document(compiled!("redis", open::redis)),
        ),
        row("mqtt", "mqtt", Open::Queue(compiled!("mqtt", open::mqtt))),
        row("mqtts", "mqtt", Open::Queue(compiled!("mqtt", open::mqtt))),
        row(
            "redis",
            "redis",
            Open::Queue(compiled!("redis", open::redis_queue)),
        ),
        row(
            "rediss",
            "redis",
            Open::Queue(compiled!("redis", open::redis_queue)),
        ),
        row("nats", "nats", Open::Queue(compiled!("nats", open::nats))),
        row("s3", "s3", Open::Blob(compiled!("s3", open::s3))),
        row(
            "azure",
            "azure",
            Open::Blob(compiled!("azure", open::azure)),
        ),
        row(
            "amqp",
            "rabbitmq",
            Open::Queue(compiled!("rabbitmq", open::rabbitmq)),
        ),
        row(
            "amqps",
            "rabbitmq",
            Open::Queue(compiled!("rabbitmq", open::rabbitmq)),
        ),
        row(
            "kafka",
            "kafka",
            Open::Queue(compiled!("kafka", open::kafka)),
        ),
    ]
}

/// The built-in openers, each behind its feature.
mod open {
    #[allow(unused_imports)]
    use super::{Opening, Shared, embedded_location, shared};
    #[allow(unused_imports)]
    use cloud_abstraction::{
        BlobStore, Compute, DocumentStore, Error, Location, MessageQueue, ResourceUrl,
    };
    #[allow(unused_imports)]
    use std::sync::Arc;

    #[cfg(feature = "memory")]
    pub(super) fn mem_blob(url: ResourceUrl, s: &Shared) -> Opening<dyn BlobStore> {
        let opened = shared(&s.blob, &url, |location| {
            Arc::new(crate::storage::MemoryBlobStore::new().with_location(location))
        });
        Box::pin(async move { opened })
    }

    #[cfg(feature = "memory")]
    pub(super) fn mem_document(url: ResourceUrl, s: &Shared) -> Opening<dyn DocumentStore> {
        let opened = shared(&s.document, &url, |location| {
            Arc::new(crate::database::MemoryDocumentStore::new().with_location(location))
        });
        Box::pin(async move { opened })
    }

    #[cfg(feature = "memory")]
    pub(super) fn mem_queue(url: ResourceUrl, s: &Shared) -> Opening<dyn MessageQueue> {
        let opened = shared(&s.queue, &url, |location| {
            Arc::new(crate::queue::MemoryQueue::new().with_location(location))
        });
        Box::pin(async move { opened })
    }

    #[cfg(feature = "local")]
    pub(super) fn file(url: ResourceUrl, _: &Shared) -> Opening<dyn BlobStore> {
        Box::pin(async move {
            let location = embedded_location(&url)?;
            // `url` drops `localhost` and reads `file:rel` as `file:///rel`; anything else
            // would open a directory the caller did not name.
            if url
                .host()
                .is_some_and(|h| !h.is_empty() && h != "localhost")
            {
                return Err(Error::invalid(
                    super::SOURCE,
                    "file:// URLs name no host (only empty or `localhost`): write file:///abs/path",
                ));
            }
            if url.path_form() == cloud_abstraction::PathForm::Rootless {
                return Err(Error::invalid(
                    super::SOURCE,
                    "file: URLs need an absolute path (relative paths are refused): write file:///abs/path",
                ));
            }
            let path = url.path();
            if path.is_empty() || path == "/" {
                return Err(Error::invalid(
                    super::SOURCE,
                    "file:// URL needs a directory path, e.g. file:///var/lib/app/blobs",
                ));
            }
            let store = crate::storage::LocalBlobStore::open(path)?;
            Ok(Arc::new(store.with_location(location)) as Arc<dyn BlobStore>)
        })
    }

    /// The location and the URL without its location parameters, for sqlx.
    #[allow(dead_code)]
    fn split(
        url: &ResourceUrl,
        default: fn() -> Location,
    ) -> cloud_abstraction::Result<(Location, ResourceUrl)> {
        let (location, rest) = Location::split_url(url)?;
        Ok((location.unwrap_or_else(default), rest))
    }

    #[cfg(feature = "sqlite")]
    pub(super) fn sqlite_document(url: ResourceUrl, _: &Shared) -> Opening<dyn DocumentStore> {
        Box::pin(async move {
            let (location, url) = split(&url, Location::local)?;
            let store = crate::database::SqliteDocumentStore::connect(url.expose()).await?;
            Ok(Arc::new(store.with_location(location)) as Arc<dyn DocumentStore>)
        })
    }

    #[cfg(feature = "sqlite")]
    pub(super) fn sqlite_queue(url: ResourceUrl, _: &Shared) -> Opening<dyn MessageQueue> {
        Box::pin(async move {
            let (location, url) = split(&url, Location::local)?;
            let queue = crate::queue::SqliteQueue::connect(url.expose()).await?;
            Ok(Arc::new(queue.with_location(location)) as Arc<dyn MessageQueue>)
        })
    }

    #[cfg(feature = "postgres")]
    pub(super) fn postgres(url: ResourceUrl, _: &Shared) -> Opening<dyn DocumentStore> {
        Box::pin(async move {
            let (location, url) = split(&url, Location::unknown)?;
            let store = crate::database::PostgresDocumentStore::connect(url.expose()).await?;
            Ok(Arc::new(store.with_location(location)) as Arc<dyn DocumentStore>)
        })
    }

    #[cfg(feature = "mysql")]
    pub(super) fn mysql(url: ResourceUrl, _: &Shared) -> Opening<dyn DocumentStore> {
        Box::pin(async move {
            let (location, url) = split(&url, Location::unknown)?;
            let store = crate::database::MysqlDocumentStore::connect(url.expose()).await?;
            Ok(Arc::new(store.with_location(location)) as Arc<dyn DocumentStore>)
        })
    }

    // Redis, NATS, S3 and Azure read the location parameters themselves (for S3, `region` is also
    // the signing region), so they get the whole URL.

    #[cfg(feature = "redis")]
    pub(super) fn redis(url: ResourceUrl, _: &Shared) -> Opening<dyn DocumentStore> {
        Box::pin(async move {
            let store = crate::database::RedisDocumentStore::connect(url.expose()).await?;
            Ok(Arc::new(store) as Arc<dyn DocumentStore>)
        })
    }

    #[cfg(feature = "mqtt")]
    pub(super) fn mqtt(url: ResourceUrl, _: &Shared) -> Opening<dyn MessageQueue> {
        Box::pin(async move {
            let queue = crate::queue::MqttQueue::connect(url.expose()).await?;
            Ok(Arc::new(queue) as Arc<dyn MessageQueue>)
        })
    }

    #[cfg(feature = "redis")]
    pub(super) fn redis_queue(url: ResourceUrl, _: &Shared) -> Opening<dyn MessageQueue> {
        Box::pin(async move {
            let queue = crate::queue::RedisStreamsQueue::connect(url.expose()).await?;
            Ok(Arc::new(queue) as Arc<dyn MessageQueue>)
        })
    }

    #[cfg(feature = "nats")]
    pub(super) fn nats(url: ResourceUrl, _: &Shared) -> Opening<dyn MessageQueue> {
        Box::pin(async move {
            let queue = crate::queue::NatsQueue::connect(url.expose()).await?;
            Ok(Arc::new(queue) as Arc<dyn MessageQueue>)
        })
    }

    #[cfg(feature = "s3")]
    pub(super) fn s3(url: ResourceUrl, _: &Shared) -> Opening<dyn BlobStore> {
        let opened = crate::storage::S3BlobStore::from_url(url.expose())
            .map(|store| Arc::new(store) as Arc<dyn BlobStore>);
        Box::pin(async move { opened })
    }

    #[cfg(feature = "azure")]
    pub(super) fn azure(url: ResourceUrl, _: &Shared) -> Opening<dyn BlobStore> {
        let opened = crate::storage::AzureBlobStore::from_url(url.expose())
            .map(|store| Arc::new(store) as Arc<dyn BlobStore>);
        Box::pin(async move { opened })
    }

    // RabbitMQ reads the location parameters itself (and strips them before lapin sees them).
    #[cfg(feature = "rabbitmq")]
    pub(super) fn rabbitmq(url: ResourceUrl, _: &Shared) -> Opening<dyn MessageQueue> {
        Box::pin(async move {
            let queue = crate::queue::RabbitMqQueue::connect(url.expose()).await?;
            Ok(Arc::new(queue) as Arc<dyn MessageQueue>)
        })
    }

    #[cfg(feature = "kafka")]
    pub(super) fn kafka(url: ResourceUrl, _: &Shared) -> Opening<dyn MessageQueue> {
        Box::pin(async move {
            let (location, url) = split(&url, Location::unknown)?;
            let queue = crate::queue::KafkaQueue::connect(url.expose()).await?;
            Ok(Arc::new(queue.with_location(location)) as Arc<dyn MessageQueue>)
        })
    }

    #[cfg(feature = "process")]
    pub(super) fn process(url: ResourceUrl, _: &Shared) -> Opening<dyn Compute> {
        let opened = embedded_location(&url).map(|location| {
            Arc::new(crate::compute::ProcessCompute::new().with_location(location))
                as Arc<dyn Compute>
        });
        Box::pin(async move { opened })
    }

    #[cfg(feature = "docker")]
    pub(super) fn docker(url: ResourceUrl, _: &Shared) -> Opening<dyn Compute> {
        Box::pin(async move {
            let compute = crate::compute::DockerCompute::from_url(&url).await?;
            Ok(Arc::new(compute) as Arc<dyn Compute>)
        })
    }

    #[cfg(feature = "sim")]
    pub(super) fn sim(url: ResourceUrl, _: &Shared) -> Opening<dyn Compute> {
        let opened = embedded_location(&url).map(|location| {
            Arc::new(crate::compute::SimCompute::new().with_location(location)) as Arc<dyn Compute>
        });
        Box::pin(async move { opened })
    }
}

/// The location of an embedded backend's URL (default [`Location::local`]); any parameter but
/// the location ones is an error, so that a misspelt `regoin=` is not silently ignored.
#[allow(dead_code)]
fn embedded_location(url: &ResourceUrl) -> Result<Location> {
    Ok(embedded_location_given(url)?.unwrap_or_else(Location::local))
}

fn embedded_location_given(url: &ResourceUrl) -> Result<Option<Location>> {
    if let Some((name, _)) = url
        .query_params()
        .into_iter()
        .find(|(name, _)| !Location::URL_PARAMS.contains(&name.as_str()))
    {
        // The name only: the value may be a secret.
        return Err(Error::invalid(
            SOURCE,
            format!(
                "`{}://` URLs take only the parameters provider, region and zone, not `{name}`",
                url.scheme()
            ),
        ));
    }
    Location::from_url(url)
}

// ---------------------------------------------------------------------------------------------
// Named in-memory instances.

type Instances<T> = Mutex<BTreeMap<String, Arc<T>>>;

/// A registry's named `mem://` instances, one map per trait.
#[derive(Default)]
struct Shared {
    #[cfg_attr(not(feature = "memory"), allow(dead_code))]
    blob: Instances<dyn BlobStore>,
    #[cfg_attr(not(feature = "memory"), allow(dead_code))]
    document: Instances<dyn DocumentStore>,
    #[cfg_attr(not(feature = "memory"), allow(dead_code))]
    queue: Instances<dyn MessageQueue>,
}

/// The instance named by a `mem://name` URL (a fresh one for a nameless URL), made by `make`
/// at the URL's location the first time.
#[allow(dead_code)]
fn shared<T: ?Sized + Backend>(
    map: &Instances<T>,
    url: &ResourceUrl,
    make: impl FnOnce(Location) -> Arc<T>,
) -> Result<Arc<T>> {
    let location = embedded_location_given(url)?;
    let name = format!(
        "{}{}",
        url.host().unwrap_or(""),
        url.path().trim_start_matches('/')
    );
    if name.is_empty() {
        return Ok(make(location.unwrap_or_else(Location::local)));
    }
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(existing) = map.get(&name) {
        let at = existing.info().location;
        if location.as_ref().is_some_and(|asked| *asked != at) {
            return Err(Error::invalid(
                SOURCE,
                format!("`mem://{name}` is already open at {at}; it cannot be opened elsewhere"),
            ));
        }
        return Ok(Arc::clone(existing));
    }
    let made = make(location.unwrap_or_else(Location::local));
    map.insert(name, Arc::clone(&made));
    Ok(made)
}

// ---------------------------------------------------------------------------------------------
// The registry.

/// What the registry needs of each trait object.
trait Backend: Send + Sync + 'static {
    const KIND: BackendKind;
    fn info(&self) -> BackendInfo;
}

macro_rules! backend {
    ($trait:ident, $kind:ident) => {
        impl Backend for dyn $trait {
            const KIND: BackendKind = BackendKind::$kind;
            fn info(&self) -> BackendInfo {
                $trait::info(self)
            }
        }
    };
}
backend!(BlobStore, BlobStore);
backend!(DocumentStore, DocumentStore);
backend!(MessageQueue, Queue);
backend!(Compute, Compute);

enum Entry<T: ?Sized> {
    Ready(Opener<T>),
    /// Built in, but its cargo feature is not compiled in.
    NotCompiled(&'static str),
}

impl<T: ?Sized> Clone for Entry<T> {
    fn clone(&self) -> Self {
        match self {
            Self::Ready(opener) => Self::Ready(Arc::clone(opener)),
            Self::NotCompiled(feature) => Self::NotCompiled(feature),
        }
    }
}

/// The schemes of one trait.
struct Schemes<T: ?Sized>(BTreeMap<String, Entry<T>>);

impl<T: ?Sized> Clone for Schemes<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T: ?Sized> Default for Schemes<T> {
    fn default() -> Self {
        Self(BTreeMap::new())
    }
}

/// An opener picked for a URL, ready to run without holding any lock.
struct Prepared<T: ?Sized> {
    opener: Opener<T>,
    url: ResourceUrl,
    location: Option<Location>,
}

impl<T: ?Sized + Backend> Schemes<T> {
    fn insert_builtin(
        &mut self,
        scheme: &'static str,
        feature: &'static str,
        open: Option<BuiltinFn<T>>,
        shared: &Arc<Shared>,
    ) {
        let entry = match open {
            Some(open) => {
                let shared = Arc::clone(shared);
                let opener: Opener<T> = Arc::new(move |url| open(url, &shared));
                Entry::Ready(opener)
            }
            None => Entry::NotCompiled(feature),
        };
        self.0.insert(scheme.to_string(), entry);
    }

    fn register(&mut self, scheme: &str, opener: Opener<T>) {
        self.0
            .insert(scheme.to_ascii_lowercase(), Entry::Ready(opener));
    }

    fn prepare(&self, url: &str) -> Result<Prepared<T>> {
        let url = ResourceUrl::parse(url)?;
        // Checked before any backend sees the URL, for user openers too.
        let location = Location::from_url(&url)?;
        match self.0.get(url.scheme()) {
            Some(Entry::Ready(opener)) => Ok(Prepared {
                opener: Arc::clone(opener),
                url,
                location,
            }),
            Some(Entry::NotCompiled(feature)) => Err(Error::new(
                ErrorKind::Unsupported,
                SOURCE,
                format!(
                    "scheme `{}` needs the cargo feature `{feature}` of paas-components, which is not enabled",
                    url.scheme()
                ),
            )),
            None => Err(Error::invalid(
                SOURCE,
                format!(
                    "no {} backend for scheme `{}`; known schemes: {}",
                    T::KIND,
                    url.scheme(),
                    self.names().join(", ")
                ),
            )),
        }
    }

    fn names(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }
}

impl<T: ?Sized + Backend> Prepared<T> {
    async fn open(self) -> Result<Arc<T>> {
        let scheme = self.url.scheme().to_string();
        let backend = (self.opener)(self.url).await?;
        if let Some(asked) = self.location {
            let reported = backend.info().location;
            if reported != asked {
                return Err(Error::invalid(
                    SOURCE,
                    format!(
                        "the `{scheme}` backend reports location {reported}, not the {asked} its \
                         URL asks for (its opener ignores the location parameters)"
                    ),
                ));
            }
        }
        Ok(backend)
    }
}

/// A table of URL schemes and their openers, one per trait. Cheap to clone; clones share the
/// named `mem://` instances (a named instance is shared per registry and its clones).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> cloud_abstraction::Result<()> {
/// use paas_components::registry::Registry;
///
/// let mut registry = Registry::builtin();
/// let cache = std::sync::Arc::new(paas_components::storage::MemoryBlobStore::new());
/// registry.register_blob_store("cache", std::sync::Arc::new(move |_url| {
///     let store: std::sync::Arc<dyn cloud_abstraction::BlobStore> = cache.clone();
///     Box::pin(async move { Ok(store) })
/// }));
/// let blobs = registry.open_blob_store("cache://").await?;
/// let docs = registry.open_document_store("mem://?provider=azure&region=westeurope").await?;
/// assert_eq!(docs.info().location.region, "westeurope");
/// // The process-wide registry does not know `cache://`.
/// assert!(paas_components::open_blob_store("cache://").await.is_err());
/// # let _ = blobs; Ok(()) }
/// ```
#[derive(Clone)]
pub struct Registry {
    blob: Schemes<dyn BlobStore>,
    document: Schemes<dyn DocumentStore>,
    queue: Schemes<dyn MessageQueue>,
    compute: Schemes<dyn Compute>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("blob_store", &self.blob.names())
            .field("document_store", &self.document.names())
            .field("queue", &self.queue.names())
            .field("compute", &self.compute.names())
            .finish()
    }
}

impl Registry {
    /// A registry with no schemes at all.
    pub fn empty() -> Self {
        Self {
            blob: Schemes::default(),
            document: Schemes::default(),
            queue: Schemes::default(),
            compute: Schemes::default(),
        }
    }

    /// A registry with the built-in schemes (see the [module docs](self)), with its own named
    /// `mem://` instances.
    pub fn builtin() -> Self {
        Self::from_table(&[])
    }

    /// The built-in table, with the features in `missing` treated as not compiled in (for
    /// testing the feature errors in a build that has every feature).
    fn from_table(missing: &[&str]) -> Self {
        let shared = Arc::new(Shared::default());
        let mut registry = Self::empty();
        for row in table() {
            let here = !missing.contains(&row.feature);
            let (scheme, feature) = (row.scheme, row.feature);
            match row.open {
                Open::Blob(o) => {
                    registry
                        .blob
                        .insert_builtin(scheme, feature, o.filter(|_| here), &shared)
                }
                Open::Document(o) => {
                    registry
                        .document
                        .insert_builtin(scheme, feature, o.filter(|_| here), &shared)
                }
                Open::Queue(o) => {
                    registry
                        .queue
                        .insert_builtin(scheme, feature, o.filter(|_| here), &shared)
                }
                Open::Compute(o) => {
                    registry
                        .compute
                        .insert_builtin(scheme, feature, o.filter(|_| here), &shared)
                }
            }
        }
        registry
    }

    /// The schemes this registry opens for `kind`, sorted (built-in ones whose feature is not
    /// compiled in included: opening them names the feature).
    pub fn schemes(&self, kind: BackendKind) -> Vec<String> {
        match kind {
            BackendKind::BlobStore => self.blob.names(),
            BackendKind::DocumentStore => self.document.names(),
            BackendKind::Queue => self.queue.names(),
            BackendKind::Compute => self.compute.names(),
        }
    }

    /// Registers (or replaces) the opener of `scheme` for blob stores. Built-in schemes can
    /// be overridden this way too.
    pub fn register_blob_store(&mut self, scheme: &str, opener: Opener<dyn BlobStore>) {
        self.blob.register(scheme, opener);
    }

    /// Registers (or replaces) the opener of `scheme` for document stores.
    pub fn register_document_store(&mut self, scheme: &str, opener: Opener<dyn DocumentStore>) {
        self.document.register(scheme, opener);
    }

    /// Registers (or replaces) the opener of `scheme` for queues.
    pub fn register_queue(&mut self, scheme: &str, opener: Opener<dyn MessageQueue>) {
        self.queue.register(scheme, opener);
    }

    /// Registers (or replaces) the opener of `scheme` for compute backends.
    pub fn register_compute(&mut self, scheme: &str, opener: Opener<dyn Compute>) {
        self.compute.register(scheme, opener);
    }

    /// Opens a blob store from a URL (see the [module docs](self) for the schemes).
    pub async fn open_blob_store(&self, url: &str) -> Result<Arc<dyn BlobStore>> {
        self.blob.prepare(url)?.open().await
    }

    /// Opens a document store from a URL.
    pub async fn open_document_store(&self, url: &str) -> Result<Arc<dyn DocumentStore>> {
        self.document.prepare(url)?.open().await
    }

    /// Opens a queue from a URL.
    pub async fn open_queue(&self, url: &str) -> Result<Arc<dyn MessageQueue>> {
        self.queue.prepare(url)?.open().await
    }

    /// Opens a compute backend from a URL.
    pub async fn open_compute(&self, url: &str) -> Result<Arc<dyn Compute>> {
        self.compute.prepare(url)?.open().await
    }
}

// ---------------------------------------------------------------------------------------------
// The process-wide registry and its free functions.

fn global() -> &'static RwLock<Registry> {
    static GLOBAL: OnceLock<RwLock<Registry>> = OnceLock::new();
    GLOBAL.get_or_init(|| RwLock::new(Registry::builtin()))
}

fn read_global<R>(f: impl FnOnce(&Registry) -> R) -> R {
    // Registration cannot leave the maps half-changed, so a poisoned lock is still consistent.
    f(&global().read().unwrap_or_else(|e| e.into_inner()))
}

fn write_global(f: impl FnOnce(&mut Registry)) {
    f(&mut global().write().unwrap_or_else(|e| e.into_inner()));
}

/// Registers (or replaces) the opener of `scheme` for blob stores in the process-wide
/// registry. Built-in schemes can be overridden this way too.
pub fn register_blob_store(scheme: &str, opener: Opener<dyn BlobStore>) {
    write_global(|r| r.register_blob_store(scheme, opener));
}

/// Registers (or replaces) the opener of `scheme` for document stores in the process-wide
/// registry.
pub fn register_document_store(scheme: &str, opener: Opener<dyn DocumentStore>) {
    write_global(|r| r.register_document_store(scheme, opener));
}

/// Registers (or replaces) the opener of `scheme` for queues in the process-wide registry.
pub fn register_queue(scheme: &str, opener: Opener<dyn MessageQueue>) {
    write_global(|r| r.register_queue(scheme, opener));
}

/// Registers (or replaces) the opener of `scheme` for compute backends in the process-wide
/// registry.
pub fn register_compute(scheme: &str, opener: Opener<dyn Compute>) {
    write_global(|r| r.register_compute(scheme, opener));
}

/// Opens a blob store from a URL with the process-wide registry (see the
/// [module docs](self) for the schemes).
pub async fn open_blob_store(url: &str) -> Result<Arc<dyn BlobStore>> {
    read_global(|r| r.blob.prepare(url))?.open().await
}

/// Opens a document store from a URL with the process-wide registry.
pub async fn open_document_store(url: &str) -> Result<Arc<dyn DocumentStore>> {
    read_global(|r| r.document.prepare(url))?.open().await
}

/// Opens a queue from a URL with the process-wide registry.
pub async fn open_queue(url: &str) -> Result<Arc<dyn MessageQueue>> {
    read_global(|r| r.queue.prepare(url))?.open().await
}

/// Opens a compute backend from a URL with the process-wide registry.
pub async fn open_compute(url: &str) -> Result<Arc<dyn Compute>> {
    read_global(|r| r.compute.prepare(url))?.open().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// Every (scheme, trait, feature) of the module-docs table, read from this file.
    fn docs_table() -> BTreeSet<(String, BackendKind, String)> {
        let mut rows = BTreeSet::new();
        for line in include_str!("registry.rs").lines() {
            let Some(line) = line.strip_prefix("//! | `") else {
                continue;
            };
            let line = format!("`{line}");
            let cells: Vec<&str> = line.split(" | ").collect();
            let feature = cells[3].split('`').nth(1).unwrap().to_string();
            let kinds: Vec<BackendKind> = cells[1]
                .split(", ")
                .map(|name| {
                    *BackendKind::ALL
                        .iter()
                        .find(|k| k.name() == name)
                        .unwrap_or_else(|| panic!("unknown trait `{name}` in the docs table"))
                })
                .collect();
            for scheme in cells[0].split('`').skip(1).step_by(2) {
                let scheme = scheme.split(':').next().unwrap().to_string();
                for kind in &kinds {
                    rows.insert((scheme.clone(), *kind, feature.clone()));
                }
            }
        }
        rows
    }

    #[test]
    fn module_docs_table_agrees_with_the_table() {
        let table: BTreeSet<_> = builtin_schemes()
            .into_iter()
            .map(|s| (s.scheme.to_string(), s.kind, s.feature.to_string()))
            .collect();
        assert_eq!(docs_table(), table);
    }

    #[test]
    fn the_table_has_no_duplicate_rows() {
        let rows = builtin_schemes();
        let distinct: BTreeSet<_> = rows.iter().map(|s| (s.scheme, s.kind)).collect();
        assert_eq!(distinct.len(), rows.len());
    }

    #[tokio::test]
    async fn a_missing_feature_is_unsupported_naming_it() {
        for row in builtin_schemes() {
            let registry = Registry::from_table(&[row.feature]);
            let url = format!("{}://host/x?password=s3cret", row.scheme);
            let err = match row.kind {
                BackendKind::BlobStore => registry.open_blob_store(&url).await.err(),
                BackendKind::DocumentStore => registry.open_document_store(&url).await.err(),
                BackendKind::Queue => registry.open_queue(&url).await.err(),
                BackendKind::Compute => registry.open_compute(&url).await.err(),
            }
            .unwrap();
            assert_eq!(err.kind(), ErrorKind::Unsupported, "{url}: {err}");
            let text = err.to_string();
            assert!(text.contains(&format!("`{}`", row.feature)), "{text}");
            assert!(!text.contains("s3cret"), "{text}");
        }
    }
}
