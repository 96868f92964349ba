//! Opening backends by URL, Go CDK style: `open_blob_store("s3://bucket?…")`.
//!
//! | scheme | trait | backend | cargo feature |
//! |---|---|---|---|
//! | `mem://[name]` | all but compute | in-memory (a name shares one instance per process) | `memory` (default) |
//! | `file:///path` | storage | local filesystem | `local` (default) |
//! | `sqlite:///path.db`, `sqlite::memory:` | database, queue | SQLite | `sqlite` (default) |
//! | `process://` | compute | local child processes | `process` (default) |
//! | `sim://` | compute | simulator (nothing runs) | `sim` (default) |
//! | `postgres://…`, `postgresql://…` | database | PostgreSQL | `postgres` |
//! | `mysql://…`, `mariadb://…` | database | MariaDB / MySQL | `mysql` |
//! | `redis://…` | database | Redis | `redis` |
//! | `s3://bucket?…` | storage | S3 and compatible servers | `s3` |
//! | `azure://container?…` | storage | Azure Blob | `azure` |
//!
//! A scheme whose feature is not compiled in is an [`Unsupported`](ErrorKind::Unsupported)
//! error naming the feature; an unknown scheme is [`InvalidArgument`](ErrorKind::InvalidArgument)
//! listing the known ones. Applications add their own schemes with [`register_blob_store`] and
//! friends. URLs are never printed with their secrets (see [`ResourceUrl`]).

use cloud_abstraction::{
    BlobStore, Compute, DocumentStore, Error, ErrorKind, MessageQueue, ResourceUrl, Result,
};
use futures::future::BoxFuture;
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock, RwLock};

/// A user-supplied opener for one URL scheme.
pub type Opener<T> = Arc<dyn Fn(ResourceUrl) -> BoxFuture<'static, Result<Arc<T>>> + Send + Sync>;

struct Openers {
    blob: BTreeMap<String, Opener<dyn BlobStore>>,
    document: BTreeMap<String, Opener<dyn DocumentStore>>,
    queue: BTreeMap<String, Opener<dyn MessageQueue>>,
    compute: BTreeMap<String, Opener<dyn Compute>>,
}

fn openers() -> &'static RwLock<Openers> {
    static OPENERS: OnceLock<RwLock<Openers>> = OnceLock::new();
    OPENERS.get_or_init(|| {
        RwLock::new(Openers {
            blob: BTreeMap::new(),
            document: BTreeMap::new(),
            queue: BTreeMap::new(),
            compute: BTreeMap::new(),
        })
    })
}

fn custom<T: ?Sized>(pick: impl FnOnce(&Openers) -> Option<Opener<T>>) -> Option<Opener<T>> {
    let guard = openers().read().unwrap_or_else(|e| e.into_inner());
    pick(&guard)
}

fn register<T: ?Sized>(
    pick: impl FnOnce(&mut Openers) -> &mut BTreeMap<String, Opener<T>>,
    scheme: &str,
    opener: Opener<T>,
) {
    let mut guard = openers().write().unwrap_or_else(|e| e.into_inner());
    pick(&mut guard).insert(scheme.to_ascii_lowercase(), opener);
}

/// Registers (or replaces) the opener of `scheme` for blob stores. Built-in schemes can be
/// overridden this way too.
pub fn register_blob_store(scheme: &str, opener: Opener<dyn BlobStore>) {
    register(|o| &mut o.blob, scheme, opener);
}

/// Registers (or replaces) the opener of `scheme` for document stores.
pub fn register_document_store(scheme: &str, opener: Opener<dyn DocumentStore>) {
    register(|o| &mut o.document, scheme, opener);
}

/// Registers (or replaces) the opener of `scheme` for queues.
pub fn register_queue(scheme: &str, opener: Opener<dyn MessageQueue>) {
    register(|o| &mut o.queue, scheme, opener);
}

/// Registers (or replaces) the opener of `scheme` for compute backends.
pub fn register_compute(scheme: &str, opener: Opener<dyn Compute>) {
    register(|o| &mut o.compute, scheme, opener);
}

// Unused only when every backend feature is compiled in.
#[allow(dead_code)]
fn not_compiled(url: &ResourceUrl, feature: &str) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        "registry",
        format!(
            "scheme `{}` needs the cargo feature `{feature}` of paas-components, which is not enabled",
            url.scheme()
        ),
    )
}

fn unknown(url: &ResourceUrl, what: &str, known: &[&str]) -> Error {
    Error::invalid(
        "registry",
        format!(
            "no {what} backend for scheme `{}`; known schemes: {}",
            url.scheme(),
            known.join(", ")
        ),
    )
}

/// The instance name of a `mem://name` URL (`None` for a fresh, unshared instance).
#[cfg(feature = "memory")]
fn memory_name(url: &ResourceUrl) -> Option<String> {
    let name = format!(
        "{}{}",
        url.host().unwrap_or(""),
        url.path().trim_start_matches('/')
    );
    (!name.is_empty()).then_some(name)
}

/// Shared named in-memory instances, one map per trait.
#[cfg(feature = "memory")]
fn shared<T: ?Sized + Send + Sync + 'static>(
    map: &'static OnceLock<std::sync::Mutex<BTreeMap<String, Arc<T>>>>,
    name: Option<String>,
    make: impl FnOnce() -> Arc<T>,
) -> Arc<T> {
    let Some(name) = name else { return make() };
    let map = map.get_or_init(Default::default);
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    Arc::clone(map.entry(name).or_insert_with(make))
}

/// Opens a blob store from a URL (see the [module docs](self) for the schemes).
pub async fn open_blob_store(url: &str) -> Result<Arc<dyn BlobStore>> {
    let url = ResourceUrl::parse(url)?;
    if let Some(opener) = custom(|o| o.blob.get(url.scheme()).cloned()) {
        return opener(url).await;
    }
    match url.scheme() {
        "mem" => {
            #[cfg(feature = "memory")]
            {
                static SHARED: OnceLock<std::sync::Mutex<BTreeMap<String, Arc<dyn BlobStore>>>> =
                    OnceLock::new();
                Ok(shared(&SHARED, memory_name(&url), || {
                    Arc::new(crate::storage::MemoryBlobStore::new())
                }))
            }
            #[cfg(not(feature = "memory"))]
            Err(not_compiled(&url, "memory"))
        }
        "file" => {
            #[cfg(feature = "local")]
            {
                let path = url.path();
                if path.is_empty() || path == "/" {
                    return Err(Error::invalid(
                        "registry",
                        "file:// URL needs a directory path, e.g. file:///var/lib/app/blobs",
                    ));
                }
                Ok(Arc::new(crate::storage::LocalBlobStore::open(path)?))
            }
            #[cfg(not(feature = "local"))]
            Err(not_compiled(&url, "local"))
        }
        "s3" => {
            #[cfg(feature = "s3")]
            {
                Ok(Arc::new(crate::storage::S3BlobStore::from_url(
                    url.expose(),
                )?))
            }
            #[cfg(not(feature = "s3"))]
            Err(not_compiled(&url, "s3"))
        }
        "azure" => {
            #[cfg(feature = "azure")]
            {
                Ok(Arc::new(crate::storage::AzureBlobStore::from_url(
                    url.expose(),
                )?))
            }
            #[cfg(not(feature = "azure"))]
            Err(not_compiled(&url, "azure"))
        }
        _ => Err(unknown(&url, "blob store", &["mem", "file", "s3", "azure"])),
    }
}

/// Opens a document store from a URL (see the [module docs](self) for the schemes).
pub async fn open_document_store(url: &str) -> Result<Arc<dyn DocumentStore>> {
    let url = ResourceUrl::parse(url)?;
    if let Some(opener) = custom(|o| o.document.get(url.scheme()).cloned()) {
        return opener(url).await;
    }
    match url.scheme() {
        "mem" => {
            #[cfg(feature = "memory")]
            {
                static SHARED: OnceLock<
                    std::sync::Mutex<BTreeMap<String, Arc<dyn DocumentStore>>>,
                > = OnceLock::new();
                Ok(shared(&SHARED, memory_name(&url), || {
                    Arc::new(crate::database::MemoryDocumentStore::new())
                }))
            }
            #[cfg(not(feature = "memory"))]
            Err(not_compiled(&url, "memory"))
        }
        "sqlite" => {
            #[cfg(feature = "sqlite")]
            {
                Ok(Arc::new(
                    crate::database::SqliteDocumentStore::connect(url.expose()).await?,
                ))
            }
            #[cfg(not(feature = "sqlite"))]
            Err(not_compiled(&url, "sqlite"))
        }
        "postgres" | "postgresql" => {
            #[cfg(feature = "postgres")]
            {
                Ok(Arc::new(
                    crate::database::PostgresDocumentStore::connect(url.expose()).await?,
                ))
            }
            #[cfg(not(feature = "postgres"))]
            Err(not_compiled(&url, "postgres"))
        }
        "mysql" | "mariadb" => {
            #[cfg(feature = "mysql")]
            {
                Ok(Arc::new(
                    crate::database::MysqlDocumentStore::connect(url.expose()).await?,
                ))
            }
            #[cfg(not(feature = "mysql"))]
            Err(not_compiled(&url, "mysql"))
        }
        "redis" => {
            #[cfg(feature = "redis")]
            {
                Ok(Arc::new(
                    crate::database::RedisDocumentStore::connect(url.expose()).await?,
                ))
            }
            #[cfg(not(feature = "redis"))]
            Err(not_compiled(&url, "redis"))
        }
        _ => Err(unknown(
            &url,
            "document store",
            &["mem", "sqlite", "postgres", "mysql", "mariadb", "redis"],
        )),
    }
}

/// Opens a queue from a URL (see the [module docs](self) for the schemes).
pub async fn open_queue(url: &str) -> Result<Arc<dyn MessageQueue>> {
    let url = ResourceUrl::parse(url)?;
    if let Some(opener) = custom(|o| o.queue.get(url.scheme()).cloned()) {
        return opener(url).await;
    }
    match url.scheme() {
        "mem" => {
            #[cfg(feature = "memory")]
            {
                static SHARED: OnceLock<std::sync::Mutex<BTreeMap<String, Arc<dyn MessageQueue>>>> =
                    OnceLock::new();
                Ok(shared(&SHARED, memory_name(&url), || {
                    Arc::new(crate::queue::MemoryQueue::new())
                }))
            }
            #[cfg(not(feature = "memory"))]
            Err(not_compiled(&url, "memory"))
        }
        "sqlite" => {
            #[cfg(feature = "sqlite")]
            {
                Ok(Arc::new(
                    crate::queue::SqliteQueue::connect(url.expose()).await?,
                ))
            }
            #[cfg(not(feature = "sqlite"))]
            Err(not_compiled(&url, "sqlite"))
        }
        _ => Err(unknown(&url, "queue", &["mem", "sqlite"])),
    }
}

/// Opens a compute backend from a URL (see the [module docs](self) for the schemes).
pub async fn open_compute(url: &str) -> Result<Arc<dyn Compute>> {
    let url = ResourceUrl::parse(url)?;
    if let Some(opener) = custom(|o| o.compute.get(url.scheme()).cloned()) {
        return opener(url).await;
    }
    match url.scheme() {
        "process" => {
            #[cfg(feature = "process")]
            {
                Ok(Arc::new(crate::compute::ProcessCompute::new()))
            }
            #[cfg(not(feature = "process"))]
            Err(not_compiled(&url, "process"))
        }
        "sim" => {
            #[cfg(feature = "sim")]
            {
                Ok(Arc::new(crate::compute::SimCompute::new()))
            }
            #[cfg(not(feature = "sim"))]
            Err(not_compiled(&url, "sim"))
        }
        _ => Err(unknown(&url, "compute", &["process", "sim"])),
    }
}
