//! TLS shared by the server backends (PostgreSQL, MariaDB/MySQL, Redis): the TLS options of
//! their URLs, the CA file check, the process-default rustls provider, and the mapping of TLS
//! failures to clear, typed errors.
//!
//! Every backend connects over rustls with the aws-lc-rs provider, the workspace's only one
//! (`ring` is never compiled in: two compiled-in providers make rustls refuse to pick one).
//! sqlx builds its TLS configuration with aws-lc-rs explicitly; the `redis` crate takes the
//! process-default provider, which [`ensure_default_provider`] installs on first use.
//!
//! Messages name the cause (certificate not trusted, name mismatch, …) and, where that helps,
//! the host name or CA file path; they never contain a URL, a user name or a password.

// Each backend uses a part of this module, and a build may include only one of them.
#![allow(dead_code)]

use cloud_abstraction::{Error, ErrorKind, Result};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{AlertDescription, CertificateError};
use std::error::Error as StdError;
use std::sync::Arc;

/// Installs aws-lc-rs as the process-default rustls provider unless the application has
/// installed one already (then that one is kept). Idempotent and cheap.
///
/// Needed by clients that build their rustls configuration with `ClientConfig::builder()`
/// (the `redis` crate): it panics when no default is installed and the build has more than
/// one provider compiled in, e.g. when an application adds a crate that enables `ring`.
pub(crate) fn ensure_default_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Err means another thread installed one first: fine, a default exists.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
}

/// Reads a CA file named by the URL parameter `param` and checks that it holds at least one
/// PEM certificate, so that a wrong path is a clear `InvalidArgument` at connect rather than
/// an I/O error at the first handshake.
pub(crate) fn read_ca_file(backend: &'static str, param: &str, path: &str) -> Result<Vec<u8>> {
    let pem = std::fs::read(path).map_err(|e| {
        Error::invalid(
            backend,
            format!("the CA file `{path}` (`{param}`) cannot be read: {e}"),
        )
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| {
            Error::invalid(
                backend,
                format!("the CA file `{path}` (`{param}`) is not valid PEM: {e}"),
            )
        })?;
    if certs.is_empty() {
        return Err(Error::invalid(
            backend,
            format!("the CA file `{path}` (`{param}`) holds no PEM certificate"),
        ));
    }
    Ok(pem)
}

// ---------------------------------------------------------------------------------------
// SQL URLs

/// Which sqlx driver a URL is for: the spelling its parameters are rewritten to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SqlDialect {
    /// `sslmode` = `disable|allow|prefer|require|verify-ca|verify-full`, `sslrootcert`.
    Postgres,
    /// `ssl-mode` = `DISABLED|PREFERRED|REQUIRED|VERIFY_CA|VERIFY_IDENTITY`, `ssl-ca`.
    Mysql,
}

/// Checks and normalises the TLS parameters of a PostgreSQL or MySQL URL for sqlx.
///
/// Both dialects accept both spellings: the mode as `sslmode` or `ssl-mode`, with the
/// PostgreSQL values (`disable`, `prefer`, `require`, `verify-ca`, `verify-full`) or the
/// MySQL ones (`DISABLED`, `PREFERRED`, `REQUIRED`, `VERIFY_CA`, `VERIFY_IDENTITY`), any
/// case; the CA file as `sslrootcert`, `ssl-root-cert`, `ssl-ca` or `sslca`. They are
/// rewritten to the driver's own spelling. An unknown mode, or a CA file that cannot be read
/// or holds no certificate, is `InvalidArgument`. A URL without TLS parameters, or one that
/// does not parse (the driver then rejects it), is returned unchanged.
pub(crate) fn sql_url(backend: &'static str, url: &str, dialect: SqlDialect) -> Result<String> {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return Ok(url.to_string());
    };
    let mut changed = false;
    let mut pairs = Vec::new();
    for (key, value) in parsed.query_pairs() {
        match key.as_ref() {
            "sslmode" | "ssl-mode" => {
                let mode = sql_mode(backend, &value, dialect)?;
                let key = match dialect {
                    SqlDialect::Postgres => "sslmode",
                    SqlDialect::Mysql => "ssl-mode",
                };
                pairs.push((key.to_string(), mode.to_string()));
                changed = true;
            }
            "sslrootcert" | "ssl-root-cert" | "ssl-ca" | "sslca" => {
                read_ca_file(backend, &key, &value)?;
                let key = match dialect {
                    SqlDialect::Postgres => "sslrootcert",
                    SqlDialect::Mysql => "ssl-ca",
                };
                pairs.push((key.to_string(), value.into_owned()));
                changed = true;
            }
            _ => pairs.push((key.into_owned(), value.into_owned())),
        }
    }
    if !changed {
        return Ok(url.to_string());
    }
    parsed.query_pairs_mut().clear().extend_pairs(pairs);
    Ok(parsed.into())
}

fn sql_mode(backend: &'static str, value: &str, dialect: SqlDialect) -> Result<&'static str> {
    let v = value.to_ascii_lowercase().replace('_', "-");
    let mode = match (v.as_str(), dialect) {
        ("disable" | "disabled", SqlDialect::Postgres) => "disable",
        ("disable" | "disabled", SqlDialect::Mysql) => "DISABLED",
        // sqlx treats `allow` as `disable` (no TLS); MySQL has no such mode.
        ("allow", SqlDialect::Postgres) => "allow",
        ("prefer" | "preferred", SqlDialect::Postgres) => "prefer",
        ("prefer" | "preferred", SqlDialect::Mysql) => "PREFERRED",
        ("require" | "required", SqlDialect::Postgres) => "require",
        ("require" | "required", SqlDialect::Mysql) => "REQUIRED",
        ("verify-ca", SqlDialect::Postgres) => "verify-ca",
        ("verify-ca", SqlDialect::Mysql) => "VERIFY_CA",
        ("verify-full" | "verify-identity", SqlDialect::Postgres) => "verify-full",
        ("verify-full" | "verify-identity", SqlDialect::Mysql) => "VERIFY_IDENTITY",
        _ => {
            return Err(Error::invalid(
                backend,
                format!(
                    "unknown TLS mode `{value}`; expected disable, prefer, require, verify-ca or \
                     verify-full (or DISABLED, PREFERRED, REQUIRED, VERIFY_CA, VERIFY_IDENTITY)"
                ),
            ));
        }
    };
    Ok(mode)
}

// ---------------------------------------------------------------------------------------
// Failures

/// The URL parameter that names the CA file, for messages.
fn ca_param(backend: &str) -> &'static str {
    match backend {
        "postgres" => "sslrootcert",
        "mysql" => "ssl-ca",
        "redis" => "ca_file",
        _ => "the CA file",
    }
}

/// If `err` (or an error it wraps) is a TLS failure, the portable error for it: kind
/// [`Unauthenticated`](ErrorKind::Unauthenticated) when the server's certificate is rejected
/// (not trusted, name mismatch, expired, revoked) or the server rejects ours, else
/// [`Unavailable`](ErrorKind::Unavailable) (e.g. the server does not offer TLS, or the
/// handshake breaks off). The caller attaches `err` as the source. `None` when it is not a
/// TLS failure.
pub(crate) fn failure(
    backend: &'static str,
    operation: &str,
    err: &(dyn StdError + 'static),
) -> Option<Error> {
    if let Some(tls) = find_rustls(err) {
        let (kind, cause) = describe(backend, tls);
        return Some(Error::new(
            kind,
            backend,
            format!("{operation}: TLS handshake failed: {cause}"),
        ));
    }
    #[cfg(any(feature = "postgres", feature = "mysql"))]
    if let Some(sqlx::Error::Tls(inner)) = find::<sqlx::Error>(err) {
        // sqlx's own TLS errors without a rustls error inside, e.g. "server does not support
        // TLS" when the mode requires it. Their text holds no connection settings.
        return Some(Error::new(
            ErrorKind::Unavailable,
            backend,
            format!("{operation}: TLS failed: {inner}"),
        ));
    }
    None
}

/// The first error of type `T` in the chain of `err`.
fn find<'a, T: StdError + 'static>(err: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(t) = e.downcast_ref::<T>() {
            return Some(t);
        }
        next = e.source();
    }
    None
}

/// The rustls error in the chain of `err`, looking inside the wrappers that hide it from
/// `source()`: `std::io::Error` (whose `source()` skips the error it wraps) and the
/// `Arc<dyn Error>` in which the `redis` crate keeps it.
fn find_rustls<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if let Some(tls) = find_rustls(inner) {
                return Some(tls);
            }
        }
        if let Some(arc) = e.downcast_ref::<Arc<dyn StdError + Send + Sync>>() {
            if let Some(tls) = find_rustls(arc.as_ref()) {
                return Some(tls);
            }
        }
        next = e.source();
    }
    None
}

fn describe(backend: &str, err: &rustls::Error) -> (ErrorKind, String) {
    use ErrorKind::{Unauthenticated, Unavailable};
    let ca = ca_param(backend);
    match err {
        rustls::Error::InvalidCertificate(cert) => {
            let cause = match cert {
                CertificateError::UnknownIssuer => format!(
                    "certificate not trusted: the server's certificate is not issued by a trusted \
                     certificate authority (give its CA with `{ca}`)"
                ),
                CertificateError::NotValidForName => {
                    "name mismatch: the server's certificate is not valid for the host name \
                     connected to"
                        .to_string()
                }
                CertificateError::NotValidForNameContext {
                    expected,
                    presented,
                } => format!(
                    "name mismatch: the server's certificate is not valid for `{}` (it names {})",
                    expected.to_str(),
                    if presented.is_empty() {
                        "no host".to_string()
                    } else {
                        presented.join(", ")
                    }
                ),
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    format!("the server's certificate has expired ({cert})")
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    format!("the server's certificate is not valid yet ({cert})")
                }
                CertificateError::Revoked => "the server's certificate is revoked".to_string(),
                other => format!("the server's certificate is rejected: {other}"),
            };
            (Unauthenticated, cause)
        }
        rustls::Error::AlertReceived(
            alert @ (AlertDescription::CertificateRequired
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::AccessDenied
            | AlertDescription::CertificateUnknown),
        ) => (
            Unauthenticated,
            format!(
                "the server rejected the connection ({alert:?}); it may require a client certificate"
            ),
        ),
        other => (Unavailable, other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;

    fn io_wrapped(e: rustls::Error) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }

    #[test]
    fn rustls_errors_are_found_through_io_and_arc_wrappers() {
        let io = io_wrapped(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        ));
        let err = failure("postgres", "connect", &io).expect("a TLS failure");
        assert_eq!(err.kind(), ErrorKind::Unauthenticated);
        assert!(err.message().contains("certificate not trusted"), "{err}");
        assert!(err.message().contains("sslrootcert"), "{err}");

        let arc: Arc<dyn StdError + Send + Sync> = Arc::new(io_wrapped(
            rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
                expected: ServerName::try_from("db.example").unwrap(),
                presented: vec!["DnsName(\"localhost\")".into()],
            }),
        ));
        let err = failure("redis", "connect", &arc).expect("a TLS failure");
        assert_eq!(err.kind(), ErrorKind::Unauthenticated);
        assert!(err.message().contains("name mismatch"), "{err}");
        assert!(err.message().contains("db.example"), "{err}");

        let plain = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(failure("redis", "connect", &plain).is_none());
    }

    #[test]
    fn other_handshake_errors_are_unavailable() {
        let io = io_wrapped(rustls::Error::HandshakeNotComplete);
        let err = failure("mysql", "connect", &io).unwrap();
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        let io = io_wrapped(rustls::Error::AlertReceived(
            AlertDescription::CertificateRequired,
        ));
        assert_eq!(
            failure("mysql", "connect", &io).unwrap().kind(),
            ErrorKind::Unauthenticated
        );
    }

    #[test]
    fn sql_urls_are_normalised_per_dialect() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        // Any certificate will do for the PEM check; a self-made one is not at hand here,
        // so use a syntactically valid PEM block.
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nMAo=\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let ca = ca.to_str().unwrap();
        let pg = sql_url(
            "postgres",
            &format!("postgres://u:pw@h/db?ssl-mode=VERIFY_IDENTITY&ssl-ca={ca}&x=1"),
            SqlDialect::Postgres,
        )
        .unwrap();
        let q: Vec<(String, String)> = url::Url::parse(&pg)
            .unwrap()
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        assert_eq!(
            q,
            vec![
                ("sslmode".into(), "verify-full".into()),
                ("sslrootcert".into(), ca.to_string()),
                ("x".into(), "1".into()),
            ]
        );
        assert!(pg.starts_with("postgres://u:pw@h/db?"));

        let my = sql_url(
            "mysql",
            &format!("mysql://u@h/db?sslmode=verify-full&sslrootcert={ca}"),
            SqlDialect::Mysql,
        )
        .unwrap();
        assert!(my.contains("ssl-mode=VERIFY_IDENTITY"), "{my}");
        assert!(my.contains("ssl-ca="), "{my}");

        let unchanged = "postgres://u:p%40ss@h/db?application_name=a+b";
        assert_eq!(
            sql_url("postgres", unchanged, SqlDialect::Postgres).unwrap(),
            unchanged
        );
    }

    #[test]
    fn bad_tls_parameters_are_invalid_arguments_without_secrets() {
        let err = sql_url(
            "postgres",
            "postgres://u:hunter2@h/db?sslmode=bogus",
            SqlDialect::Postgres,
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(err.message().contains("unknown TLS mode `bogus`"), "{err}");
        assert!(!format!("{err} {err:?}").contains("hunter2"));

        let err = sql_url(
            "mysql",
            "mysql://u:hunter2@h/db?sslmode=allow",
            SqlDialect::Mysql,
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);

        let err = sql_url(
            "mysql",
            "mysql://u:hunter2@h/db?ssl-ca=/nonexistent/ca.pem",
            SqlDialect::Mysql,
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(err.message().contains("/nonexistent/ca.pem"), "{err}");
        assert!(err.message().contains("cannot be read"), "{err}");
        assert!(!format!("{err} {err:?}").contains("hunter2"));

        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = read_ca_file("redis", "ca_file", empty.to_str().unwrap()).unwrap_err();
        assert!(err.message().contains("holds no PEM certificate"), "{err}");
    }

    #[test]
    fn the_default_provider_is_installed_once_and_kept() {
        ensure_default_provider();
        let first = rustls::crypto::CryptoProvider::get_default().expect("installed");
        ensure_default_provider();
        let second = rustls::crypto::CryptoProvider::get_default().unwrap();
        assert!(Arc::ptr_eq(first, second));
    }
}
