//! Opening backends by URL: built-in schemes, shared `mem://` names, user schemes, registry
//! values, location parameters on every compiled backend (server backends against their real
//! servers), and the errors for bad or unknown URLs.
#![cfg(all(
    feature = "memory",
    feature = "local",
    feature = "sqlite",
    feature = "sim"
))]

mod support;

use bytes::Bytes;
use cloud_abstraction::storage::BlobStoreExt;
use cloud_abstraction::testkit::unique_name;
use cloud_abstraction::{BlobStore, ErrorKind, Location};
use paas_components::registry::{BackendKind, Registry, builtin_schemes};
use paas_components::storage::MemoryBlobStore;
use std::collections::BTreeSet;
use std::sync::Arc;

#[tokio::test]
async fn embedded_schemes_open() {
    let dir = tempfile::tempdir().unwrap();
    let file = paas_components::open_blob_store(&format!("file://{}/blobs", dir.path().display()))
        .await
        .unwrap();
    assert_eq!(file.info().backend, "file");
    file.put_bytes("a/b", Bytes::from_static(b"x"))
        .await
        .unwrap();

    let docs =
        paas_components::open_document_store(&format!("sqlite://{}/d.db", dir.path().display()))
            .await
            .unwrap();
    assert_eq!(docs.info().backend, "sqlite");
    let docs = paas_components::open_document_store("sqlite::memory:")
        .await
        .unwrap();
    assert_eq!(docs.info().backend, "sqlite");
    let q = paas_components::open_queue(&format!("sqlite://{}/q.db", dir.path().display()))
        .await
        .unwrap();
    assert_eq!(q.info().backend, "sqlite");
    let q = paas_components::open_queue("mem://").await.unwrap();
    assert_eq!(q.info().backend, "memory");
    let c = paas_components::open_compute("sim://").await.unwrap();
    assert!(c.capabilities().simulated);
}

#[tokio::test]
async fn named_memory_instances_are_shared_and_unnamed_are_not() {
    let a = paas_components::open_blob_store("mem://registry-test-shared")
        .await
        .unwrap();
    let b = paas_components::open_blob_store("mem://registry-test-shared")
        .await
        .unwrap();
    a.put_bytes("k", Bytes::from_static(b"v")).await.unwrap();
    assert_eq!(b.get_bytes("k").await.unwrap(), "v");

    let c = paas_components::open_blob_store("mem://").await.unwrap();
    let d = paas_components::open_blob_store("mem://").await.unwrap();
    c.put_bytes("k", Bytes::from_static(b"v")).await.unwrap();
    assert!(!d.exists("k").await.unwrap());
}

#[tokio::test]
async fn bad_urls_are_invalid_argument_without_secrets() {
    for url in [
        "",
        "not a url",
        "gopher://x",
        "file://",
        "postgres://u:s3cret@[::1",
    ] {
        let err = paas_components::open_blob_store(url).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{url}: {err}");
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }
    let err = paas_components::open_queue("sqs://queue.example")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.to_string().contains("known schemes"), "{err}");
}

/// Strings that are no URL (a libpq `key=value` DSN, a bare `user:password`, a long token)
/// are refused without repeating the secret in them, through every `open_*`.
#[tokio::test]
async fn non_urls_are_refused_without_repeating_their_secret() {
    let long = format!("{}SuperSecret123", "a".repeat(5_000));
    let inputs = [
        "host=127.0.0.1 user=app password=SuperSecret123 dbname=cars",
        "user=app password=SuperSecret123",
        "app:SuperSecret123@db.local:5432/cars",
        "app:SuperSecret123",
        "SuperSecret123",
        long.as_str(),
    ];
    for input in inputs {
        let errors = [
            paas_components::open_document_store(input).await.err(),
            paas_components::open_blob_store(input).await.err(),
            paas_components::open_queue(input).await.err(),
        ];
        for err in errors {
            let err = err.unwrap_or_else(|| panic!("{input:.40}: opened"));
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{input:.40}: {err}");
            let shown = format!("{err} {err:?}");
            assert!(!shown.contains("SuperSecret123"), "{input:.40}: {shown}");
        }
    }
}

#[cfg(not(feature = "postgres"))]
#[tokio::test]
async fn scheme_without_its_feature_names_the_feature() {
    let err = paas_components::open_document_store("postgres://app:s3cret@db/cars")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    assert!(err.to_string().contains("`postgres`"), "{err}");
    assert!(!err.to_string().contains("s3cret"), "{err}");
}

#[tokio::test]
async fn user_schemes_can_be_registered() {
    let shared = Arc::new(MemoryBlobStore::new());
    let handle = shared.clone();
    paas_components::register_blob_store(
        "vehicle-cache",
        Arc::new(move |_url| {
            let store: Arc<dyn BlobStore> = handle.clone();
            Box::pin(async move { Ok(store) })
        }),
    );
    let store = paas_components::open_blob_store("vehicle-cache://anything")
        .await
        .unwrap();
    store
        .put_bytes("k", Bytes::from_static(b"v"))
        .await
        .unwrap();
    assert_eq!(shared.get_bytes("k").await.unwrap(), "v");
}

// ---------------------------------------------------------------------------------------------
// Registry values and the table.

fn blob_opener(store: Arc<MemoryBlobStore>) -> paas_components::Opener<dyn BlobStore> {
    Arc::new(move |_url| {
        let store: Arc<dyn BlobStore> = store.clone();
        Box::pin(async move { Ok(store) })
    })
}

#[tokio::test]
async fn a_registry_value_does_not_touch_the_global_one() {
    let scheme = unique_name("private-cache").to_ascii_lowercase();
    let mut registry = Registry::builtin();
    registry.register_blob_store(&scheme, blob_opener(Arc::new(MemoryBlobStore::new())));
    let url = format!("{scheme}://x");
    assert!(registry.open_blob_store(&url).await.is_ok());
    assert!(registry.schemes(BackendKind::BlobStore).contains(&scheme));
    let err = paas_components::open_blob_store(&url).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");

    // And the other way round: a global registration is not in a new value.
    let global_scheme = unique_name("global-cache").to_ascii_lowercase();
    paas_components::register_blob_store(
        &global_scheme,
        blob_opener(Arc::new(MemoryBlobStore::new())),
    );
    let url = format!("{global_scheme}://x");
    assert!(paas_components::open_blob_store(&url).await.is_ok());
    let err = Registry::builtin().open_blob_store(&url).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(registry.open_blob_store(&url).await.is_err());
}

#[tokio::test]
async fn an_empty_registry_opens_nothing_and_lists_nothing() {
    let registry = Registry::empty();
    for kind in BackendKind::ALL {
        assert!(registry.schemes(kind).is_empty(), "{kind}");
    }
    let err = registry.open_blob_store("mem://").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
}

#[tokio::test]
async fn named_memory_instances_are_per_registry() {
    let a = Registry::builtin();
    let a_clone = a.clone();
    let b = Registry::builtin();
    let one = a.open_blob_store("mem://per-registry").await.unwrap();
    one.put_bytes("k", Bytes::from_static(b"v")).await.unwrap();
    let same = a_clone.open_blob_store("mem://per-registry").await.unwrap();
    assert!(same.exists("k").await.unwrap(), "a clone shares instances");
    let other = b.open_blob_store("mem://per-registry").await.unwrap();
    assert!(
        !other.exists("k").await.unwrap(),
        "another registry does not"
    );
}

/// The scheme list of an unknown-scheme error.
fn listed_schemes(message: &str) -> BTreeSet<String> {
    let (_, list) = message
        .split_once("known schemes: ")
        .unwrap_or_else(|| panic!("no scheme list in `{message}`"));
    list.split(", ").map(str::to_string).collect()
}

#[tokio::test]
async fn unknown_scheme_errors_list_exactly_the_tables_schemes() {
    let registry = Registry::builtin();
    for kind in BackendKind::ALL {
        let expected: BTreeSet<String> = builtin_schemes()
            .into_iter()
            .filter(|s| s.kind == kind)
            .map(|s| s.scheme.to_string())
            .collect();
        assert!(!expected.is_empty(), "{kind}");
        let url = "nosuchscheme://x";
        let err = match kind {
            BackendKind::BlobStore => registry.open_blob_store(url).await.err(),
            BackendKind::DocumentStore => registry.open_document_store(url).await.err(),
            BackendKind::Queue => registry.open_queue(url).await.err(),
            BackendKind::Compute => registry.open_compute(url).await.err(),
        }
        .unwrap();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(err.to_string().contains(kind.name()), "{err}");
        assert_eq!(listed_schemes(err.message()), expected, "{kind}");
        assert_eq!(
            registry.schemes(kind).into_iter().collect::<BTreeSet<_>>(),
            expected
        );
    }
    // The process-wide registry starts from the same table (no test registers compute).
    let err = paas_components::open_compute("nosuchscheme://x")
        .await
        .unwrap_err();
    let compute: BTreeSet<String> = builtin_schemes()
        .into_iter()
        .filter(|s| s.kind == BackendKind::Compute)
        .map(|s| s.scheme.to_string())
        .collect();
    assert_eq!(listed_schemes(err.message()), compute);
}

/// Every built-in scheme whose feature this build lacks names the feature (none under
/// `--all-features`; the registry's unit tests cover that build by disabling rows).
#[tokio::test]
async fn feature_errors_name_the_feature() {
    for row in builtin_schemes().into_iter().filter(|s| !s.compiled) {
        let url = format!("{}://host/x?password=s3cret", row.scheme);
        let err = match row.kind {
            BackendKind::BlobStore => paas_components::open_blob_store(&url).await.err(),
            BackendKind::DocumentStore => paas_components::open_document_store(&url).await.err(),
            BackendKind::Queue => paas_components::open_queue(&url).await.err(),
            BackendKind::Compute => paas_components::open_compute(&url).await.err(),
        }
        .unwrap();
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
        assert!(
            err.to_string().contains(&format!("`{}`", row.feature)),
            "{err}"
        );
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }
}

// ---------------------------------------------------------------------------------------------
// Location parameters.

const PARAMS: &str = "provider=azure&region=westeurope&zone=westeurope-2";

fn configured() -> Location {
    Location::new("azure", "westeurope").with_zone("westeurope-2")
}

/// `url` with its location parameters replaced by `params` (none when empty).
fn with_location(url: &str, params: &str) -> String {
    let parsed = cloud_abstraction::ResourceUrl::parse(url).unwrap();
    let bare = parsed
        .without_query_params(&Location::URL_PARAMS)
        .expose()
        .to_string();
    match (params.is_empty(), bare.contains('?')) {
        (true, _) => bare,
        (false, true) => format!("{bare}&{params}"),
        (false, false) => format!("{bare}?{params}"),
    }
}

#[tokio::test]
async fn embedded_backends_report_the_configured_location_or_local() {
    let dir = tempfile::tempdir().unwrap();
    let file = format!("file://{}/blobs", dir.path().display());
    let sqlite_doc = format!("sqlite://{}/d.db", dir.path().display());
    let sqlite_queue = format!("sqlite://{}/q.db", dir.path().display());
    for (params, expected) in [(PARAMS, configured()), ("", Location::local())] {
        for url in ["mem://", &file] {
            let store = paas_components::open_blob_store(&with_location(url, params))
                .await
                .unwrap();
            assert_eq!(store.info().location, expected, "{url}?{params}");
            assert!(!store.exists("k").await.unwrap());
        }
        for url in ["mem://", "sqlite::memory:", &sqlite_doc] {
            let docs = paas_components::open_document_store(&with_location(url, params))
                .await
                .unwrap();
            assert_eq!(docs.info().location, expected, "{url}?{params}");
            assert!(docs.get("c", "missing").await.unwrap().is_none());
        }
        for url in ["mem://", &sqlite_queue, "sqlite::memory:"] {
            let queue = paas_components::open_queue(&with_location(url, params))
                .await
                .unwrap();
            assert_eq!(queue.info().location, expected, "{url}?{params}");
        }
        for url in ["process://", "sim://"] {
            let compute = paas_components::open_compute(&with_location(url, params))
                .await
                .unwrap();
            assert_eq!(compute.info().location, expected, "{url}?{params}");
        }
    }
    // Other parameters of the backend still reach it (sqlx's `mode`).
    let docs = paas_components::open_document_store(&format!(
        "sqlite://{}/d.db?mode=rw&region=eu-west-1",
        dir.path().display()
    ))
    .await
    .unwrap();
    assert_eq!(
        docs.info().location,
        Location::new(Location::UNKNOWN, "eu-west-1")
    );
    let err = paas_components::open_document_store(&format!(
        "sqlite://{}/absent.db?mode=rw&region=eu-west-1",
        dir.path().display()
    ))
    .await
    .unwrap_err();
    assert_ne!(err.kind(), ErrorKind::InvalidArgument, "{err}");
}

#[tokio::test]
async fn bad_location_parameters_are_invalid_argument_without_secrets() {
    for url in [
        "mem://?zone=a",
        "mem://?provider=aws&zone=a",
        "mem://?region=a&region=b",
        "mem://?region=",
        "mem://?region=hunter2%20s3cret",
        "mem://?regoin=eu-west-1",
        "mem://?token=s3cret",
        "sim://?provider=a%2Fb",
        "process://?zone=z",
        "file:///tmp/x?zone=z",
        "sqlite::memory:?provider=hunter2%3Bs3cret",
    ] {
        for err in [
            paas_components::open_blob_store(url).await.err(),
            paas_components::open_document_store(url).await.err(),
            paas_components::open_queue(url).await.err(),
            paas_components::open_compute(url).await.err(),
        ]
        .into_iter()
        .flatten()
        .filter(|e| !e.message().contains("known schemes"))
        {
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{url}: {err}");
            assert!(!err.to_string().contains("s3cret"), "{url}: {err}");
            assert!(!err.to_string().contains("hunter2"), "{url}: {err}");
        }
    }
    // Checked before any connection is tried: no server is needed, the password stays out.
    for url in [
        "postgres://app:s3cret@127.0.0.1:1/db?zone=a",
        "mysql://app:s3cret@127.0.0.1:1/db?region=a&region=b",
        "redis://:s3cret@127.0.0.1:1/0?provider=",
    ] {
        let err = paas_components::open_document_store(url).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{url}: {err}");
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }
    let err =
        paas_components::open_blob_store("s3://b?secret_access_key=s3cret&access_key_id=k&zone=z")
            .await
            .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(!err.to_string().contains("s3cret"), "{err}");
}

#[tokio::test]
async fn a_named_memory_instance_keeps_its_location() {
    let name = unique_name("located");
    let url = format!("mem://{name}?{PARAMS}");
    let a = paas_components::open_blob_store(&url).await.unwrap();
    a.put_bytes("k", Bytes::from_static(b"v")).await.unwrap();
    let b = paas_components::open_blob_store(&url).await.unwrap();
    assert!(b.exists("k").await.unwrap());
    let c = paas_components::open_blob_store(&format!("mem://{name}"))
        .await
        .unwrap();
    assert_eq!(c.info().location, configured());
    let err = paas_components::open_blob_store(&format!("mem://{name}?provider=aws&region=x"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
}

#[tokio::test]
async fn user_openers_get_the_location_parameters_and_must_honour_them() {
    let mut registry = Registry::empty();
    registry.register_blob_store(
        "honest",
        Arc::new(|url| {
            Box::pin(async move {
                let location = Location::from_url(&url)?.unwrap_or_else(Location::local);
                let store: Arc<dyn BlobStore> =
                    Arc::new(MemoryBlobStore::new().with_location(location));
                Ok(store)
            })
        }),
    );
    registry.register_blob_store("careless", blob_opener(Arc::new(MemoryBlobStore::new())));
    let store = registry
        .open_blob_store(&format!("honest://x?{PARAMS}"))
        .await
        .unwrap();
    assert_eq!(store.info().location, configured());
    // Without location parameters any location is fine; with them, an opener that drops them
    // fails the open instead of reporting a location nobody configured.
    assert!(registry.open_blob_store("careless://x").await.is_ok());
    let err = registry
        .open_blob_store(&format!("careless://x?{PARAMS}"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    let err = registry
        .open_blob_store("honest://x?zone=a")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
}

// Server backends, against their real servers (see `support::server_url`).

#[cfg(any(feature = "postgres", feature = "mysql", feature = "redis"))]
async fn document_store_locations(var: &str, default: &str, probe: &str, schemes: &[&str]) {
    let Some(url) = support::server_url(var, default, probe).await else {
        return;
    };
    let collection = unique_name("loc");
    for scheme in schemes {
        let url = format!("{scheme}{}", &url[url.find("://").unwrap()..]);
        for (params, expected) in [(PARAMS, configured()), ("", Location::unknown())] {
            let located = with_location(&url, params);
            let docs = paas_components::open_document_store(&located)
                .await
                .unwrap_or_else(|e| panic!("{scheme} with `{params}`: {e}"));
            assert_eq!(docs.info().location, expected, "{scheme} with `{params}`");
            // The stripped URL reached the client library intact: the store works.
            assert!(docs.get(&collection, "missing").await.unwrap().is_none());
        }
    }
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_reports_the_configured_location_or_unknown() {
    document_store_locations(
        "POSTGRES_TEST_URL",
        "postgres://postgres@127.0.0.1:5432/test",
        "127.0.0.1:5432",
        &["postgres", "postgresql"],
    )
    .await;
}

#[cfg(feature = "mysql")]
#[tokio::test]
async fn mysql_reports_the_configured_location_or_unknown() {
    document_store_locations(
        "MYSQL_TEST_URL",
        "mysql://root@127.0.0.1:3306/test",
        "127.0.0.1:3306",
        &["mysql", "mariadb"],
    )
    .await;
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_reports_the_configured_location_or_unknown() {
    document_store_locations(
        "REDIS_TEST_URL",
        "redis://127.0.0.1:6379/0",
        "127.0.0.1:6379",
        &["redis"],
    )
    .await;
}

/// The `host:port` of a blob URL's `endpoint` parameter.
#[cfg(any(feature = "s3", feature = "azure"))]
fn endpoint_addr(url: &str) -> String {
    let endpoint = cloud_abstraction::ResourceUrl::parse(url)
        .unwrap()
        .query_param("endpoint")
        .expect("the test URL names an endpoint");
    let endpoint = url::Url::parse(&endpoint).unwrap();
    format!(
        "{}:{}",
        endpoint.host_str().unwrap(),
        endpoint.port_or_known_default().unwrap()
    )
}

#[cfg(any(feature = "s3", feature = "azure"))]
async fn blob_server_url(var: &str, default: &str) -> Option<String> {
    let configured = std::env::var(var).unwrap_or_else(|_| default.to_string());
    support::server_url(var, default, &endpoint_addr(&configured)).await
}

#[cfg(feature = "s3")]
#[tokio::test]
async fn s3_reports_the_configured_location_or_unknown() {
    let Some(url) = blob_server_url(
        "S3_TEST_URL",
        "s3://test-bucket?endpoint=http://127.0.0.1:9000&region=us-east-1\
         &access_key_id=ciaccesskey&secret_access_key=cisecretkey&conditional_put=disabled",
    )
    .await
    else {
        return;
    };
    let key = unique_name("loc");
    // The test server signs with the URL's `region`; a separate location region needs
    // `signing_region` to keep requests valid.
    let signing = cloud_abstraction::ResourceUrl::parse(&url)
        .unwrap()
        .query_param("region")
        .unwrap_or_else(|| "us-east-1".to_string());
    for (params, expected) in [
        (format!("{PARAMS}&signing_region={signing}"), configured()),
        (
            format!("region={signing}"),
            Location::new(Location::UNKNOWN, signing.clone()),
        ),
        (String::new(), Location::unknown()),
    ] {
        let store = paas_components::open_blob_store(&with_location(&url, &params))
            .await
            .unwrap_or_else(|e| panic!("s3 with `{params}`: {e}"));
        assert_eq!(store.info().location, expected, "s3 with `{params}`");
        assert!(!store.exists(&key).await.unwrap(), "s3 with `{params}`");
    }
}

#[cfg(feature = "azure")]
#[tokio::test]
async fn azure_reports_the_configured_location_or_unknown() {
    let Some(url) = blob_server_url(
        "AZURE_TEST_URL",
        "azure://test-container?emulator=true&endpoint=http://127.0.0.1:10000/devstoreaccount1",
    )
    .await
    else {
        return;
    };
    let key = unique_name("loc");
    for (params, expected) in [(PARAMS, configured()), ("", Location::unknown())] {
        let store = paas_components::open_blob_store(&with_location(&url, params))
            .await
            .unwrap_or_else(|e| panic!("azure with `{params}`: {e}"));
        assert_eq!(store.info().location, expected, "azure with `{params}`");
        assert!(!store.exists(&key).await.unwrap(), "azure with `{params}`");
    }
}
