//! Connecting to Redis, shared by the Redis document store and the Redis Streams queue: the
//! URL reading (key namespace, TLS, location), the self-reconnecting connection, the error
//! mapping and the bound on every call. See [`RedisDocumentStore`] for the URL parameters and
//! the failure behaviour both follow.
//!
//! [`RedisDocumentStore`]: crate::database::RedisDocumentStore

use cloud_abstraction::{Error, ErrorKind, Location, ResourceUrl, Result, validate};
use redis::RedisError;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::future::Future;
use std::time::Duration;

/// The bound of every call, unless configured otherwise.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connect may take before it is given up.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// An opened Redis URL.
pub(crate) struct Connected {
    /// The client, for connections of their own (blocking reads).
    pub(crate) client: redis::Client,
    /// The shared, multiplexed connection that reconnects by itself.
    pub(crate) conn: ConnectionManager,
    /// The `prefix` parameter, or the caller's default.
    pub(crate) namespace: String,
    /// The URL's location parameters, or [`Location::unknown`].
    pub(crate) location: Location,
}

/// `true`/`false` (also `1`/`0`, `yes`/`no`) for a boolean URL parameter.
fn parse_flag(backend: &'static str, name: &str, value: &str) -> Result<bool> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(Error::invalid(
            backend,
            format!("`{name}` is `true` or `false`, not `{value}`"),
        )),
    }
}

/// Opens `url` (`redis://` or `rediss://`): reads `prefix` (default `default_namespace`),
/// `ca_file`, `insecure` and the location parameters, passes the rest to the `redis` crate,
/// and connects within the connect timeout. Errors never quote the URL.
pub(crate) async fn connect(
    backend: &'static str,
    url: &str,
    default_namespace: &str,
) -> Result<Connected> {
    let mut parsed = url::Url::parse(url)
        .map_err(|e| Error::invalid(backend, format!("malformed Redis URL: {e}")))?;
    if !matches!(parsed.scheme(), "redis" | "rediss") {
        return Err(Error::invalid(
            backend,
            format!(
                "a Redis URL starts with `redis://`, not `{}://`",
                parsed.scheme()
            ),
        ));
    }
    let location = ResourceUrl::parse(url)
        .and_then(|u| Location::from_url(&u))
        .map_err(|e| Error::invalid(backend, e.message()))?
        .unwrap_or_else(Location::unknown);
    let mut namespace = default_namespace.to_string();
    let mut ca_file = None;
    let mut insecure = false;
    let mut rest = Vec::new();
    for (k, v) in parsed.query_pairs() {
        if Location::URL_PARAMS.contains(&k.as_ref()) {
            continue;
        }
        match k.as_ref() {
            "prefix" => namespace = v.into_owned(),
            "ca_file" => ca_file = Some(v.into_owned()),
            "insecure" => insecure = parse_flag(backend, "insecure", &v)?,
            _ => rest.push((k.into_owned(), v.into_owned())),
        }
    }
    validate::resource_name(backend, "key namespace", &namespace)?;
    let tls = parsed.scheme() == "rediss";
    if !tls && (ca_file.is_some() || insecure) {
        return Err(Error::invalid(
            backend,
            "`ca_file` and `insecure` need TLS: use a `rediss://` URL",
        ));
    }
    if insecure && ca_file.is_some() {
        return Err(Error::invalid(
            backend,
            "`insecure` turns certificate checks off; it cannot be combined with `ca_file`",
        ));
    }
    if rest.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(rest);
    }
    if insecure {
        // The crate's spelling of the same switch.
        parsed.set_fragment(Some("insecure"));
    }
    if tls {
        // The crate builds its rustls configuration from the process default.
        crate::tls::ensure_default_provider();
    }
    // The crate's own messages may quote the URL: keep them out of ours.
    let invalid = |_| Error::invalid(backend, "the Redis URL is not a valid connection string");
    let client = match ca_file {
        Some(path) => {
            let pem = crate::tls::read_ca_file(backend, "ca_file", &path)?;
            let certs = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem),
            };
            redis::Client::build_with_tls(parsed.as_str(), certs).map_err(invalid)?
        }
        None => redis::Client::open(parsed.as_str()).map_err(invalid)?,
    };
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(Duration::from_secs(3)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500));
    let conn = bounded(
        backend,
        DEFAULT_TIMEOUT,
        "connect",
        ConnectionManager::new_with_config(client.clone(), config),
    )
    .await
    .map_err(|err| unreachable_if_internal(backend, err))?;
    Ok(Connected {
        client,
        conn,
        namespace,
        location,
    })
}

/// A refused or failed connect is the server being away, not a bug.
pub(crate) fn unreachable_if_internal(backend: &'static str, err: Error) -> Error {
    if err.kind() == ErrorKind::Internal {
        Error::unavailable(backend, "connect: the Redis server is not reachable")
    } else {
        err
    }
}

/// Maps a Redis error to the portable kinds; the message names the operation only.
pub(crate) fn map_err(backend: &'static str, operation: &str, e: RedisError) -> Error {
    if let Some(tls) = crate::tls::failure(backend, operation, &e) {
        return tls.with_source(e);
    }
    let kind = if e.is_timeout() {
        ErrorKind::DeadlineExceeded
    } else if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() {
        ErrorKind::Unavailable
    } else if e.kind() == redis::ErrorKind::AuthenticationFailed {
        ErrorKind::Unauthenticated
    } else {
        match e.code() {
            Some("NOAUTH" | "WRONGPASS") => ErrorKind::Unauthenticated,
            Some("NOPERM") => ErrorKind::PermissionDenied,
            Some("OOM") => ErrorKind::ResourceExhausted,
            Some(
                "BUSY" | "LOADING" | "READONLY" | "MASTERDOWN" | "TRYAGAIN" | "CLUSTERDOWN"
                | "MOVED" | "ASK",
            ) => ErrorKind::Unavailable,
            _ => ErrorKind::Internal,
        }
    };
    let message = match kind {
        ErrorKind::Unavailable => format!("{operation}: the Redis server is not reachable"),
        ErrorKind::DeadlineExceeded => {
            format!("{operation}: the Redis server did not answer in time")
        }
        _ => format!("{operation} failed"),
    };
    Error::new(kind, backend, message).with_source(e)
}

/// Runs `fut` within `timeout`, mapping its error; over the bound it is
/// [`DeadlineExceeded`](ErrorKind::DeadlineExceeded).
pub(crate) async fn bounded<T>(
    backend: &'static str,
    timeout: Duration,
    operation: &str,
    fut: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(map_err(backend, operation, e)),
        Err(_) => Err(Error::new(
            ErrorKind::DeadlineExceeded,
            backend,
            format!("{operation}: the Redis server did not answer within {timeout:?}"),
        )),
    }
}
