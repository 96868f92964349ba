//! PostgreSQL, MariaDB and Redis over TLS, against the TLS-only second instances that
//! `.ci/services/tls.sh` starts beside the plain ones (a test CA, a server certificate for
//! `localhost` and 127.0.0.1, and a second, unrelated CA):
//!
//! - with `verify-full` (Redis: `rediss://` with `ca_file`) and the right CA, each store
//!   connects over TLS and passes the whole document conformance kit;
//! - with the unrelated CA, the connect fails with `Unauthenticated`, "certificate not trusted";
//! - reached as 127.0.0.2 (a proxy; the certificate names only `localhost` and 127.0.0.1),
//!   the connect fails with `Unauthenticated`, "name mismatch" (also with `verify-ca`, which
//!   sqlx 0.8 makes as strict as `verify-full`), while `require` and Redis `insecure=true`,
//!   which check no certificate, connect;
//! - no error's Display or Debug contains the password of the URL.
//!
//! URLs come from `POSTGRES_TLS_TEST_URL`, `MYSQL_TLS_TEST_URL`, `REDIS_TLS_TEST_URL` and the
//! CA files from `TLS_TEST_CA_FILE` / `TLS_TEST_OTHER_CA_FILE` (all written to `.ci/env`),
//! defaulting to what the script sets up. Like the other server suites, a missing server is a
//! loud skip on a developer machine and a failure under CI or REQUIRE_SERVERS.
#![cfg(any(feature = "postgres", feature = "mysql", feature = "redis"))]

mod support;

use cloud_abstraction::database::DocumentStore;
use cloud_abstraction::testkit::{database, unique_name};
use cloud_abstraction::{Error, ErrorKind};
use std::sync::Arc;
use support::TcpProxy;

const TLS_DIR: &str = "/var/lib/multicloud-ci/tls";

fn other_ca() -> String {
    std::env::var("TLS_TEST_OTHER_CA_FILE").unwrap_or_else(|_| format!("{TLS_DIR}/other-ca.pem"))
}

/// `url` with query parameter `key` set to `value` (replacing it if present).
fn with_param(url: &str, key: &str, value: &str) -> String {
    let mut u = url::Url::parse(url).unwrap();
    let pairs: Vec<(String, String)> = u
        .query_pairs()
        .filter(|(k, _)| k != key)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    u.query_pairs_mut()
        .clear()
        .extend_pairs(pairs)
        .append_pair(key, value);
    u.into()
}

/// `url` with another host and port.
fn with_addr(url: &str, addr: std::net::SocketAddr) -> String {
    let mut u = url::Url::parse(url).unwrap();
    u.set_host(Some(&addr.ip().to_string())).unwrap();
    u.set_port(Some(addr.port())).unwrap();
    u.into()
}

/// `url` with user `user` and password `password`.
#[cfg(feature = "postgres")]
fn with_password(url: &str, user: &str, password: &str) -> String {
    let mut u = url::Url::parse(url).unwrap();
    u.set_username(user).unwrap();
    u.set_password(Some(password)).unwrap();
    u.into()
}

fn password_of(url: &str) -> String {
    url::Url::parse(url)
        .unwrap()
        .password()
        .expect("the test URL has a password")
        .to_string()
}

/// The `host:port` of a URL, for the reachability probe and the proxy target.
fn addr_of(url: &str) -> String {
    let u = url::Url::parse(url).unwrap();
    format!("{}:{}", u.host_str().unwrap(), u.port().unwrap())
}

/// Asserts a clear TLS failure: `kind`, a message naming `cause`, no `secret` anywhere.
fn assert_tls_failure(what: &str, err: &Error, kind: ErrorKind, cause: &str, secret: &str) {
    println!("{what}: {err}");
    assert_eq!(err.kind(), kind, "{what}: {err}");
    assert!(err.message().contains(cause), "{what}: {err}");
    assert!(err.message().contains("TLS"), "{what}: {err}");
    let shown = format!("{err} {err:?}");
    assert!(
        !shown.contains(secret),
        "{what} shows the password: {shown}"
    );
}

async fn run_kit(store: Arc<dyn DocumentStore>) -> usize {
    let outcome = tokio::spawn(database::run_suite(store)).await;
    let report = outcome.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(report.passed.len(), database::cases().len());
    report.passed.len()
}

// ---------------------------------------------------------------------------------------
// PostgreSQL

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use paas_components::database::PostgresDocumentStore;

    const PG_PASSWORD: &str = "pg-secret-in-url";

    async fn url() -> Option<String> {
        let default = format!(
            "postgres://postgres@127.0.0.1:5433/test?sslmode=verify-full&sslrootcert={TLS_DIR}/ca.pem"
        );
        let url = std::env::var("POSTGRES_TLS_TEST_URL").unwrap_or(default);
        support::server_url("POSTGRES_TLS_TEST_URL", &url, &addr_of(&url)).await
    }

    async fn drop_table(url: &str, table: &str) {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        sqlx::query(&format!("DROP TABLE IF EXISTS \"{table}\""))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kit_passes_over_verified_tls() {
        let Some(url) = url().await else { return };
        let table = unique_name("tls_docs_");
        let store = PostgresDocumentStore::connect_table(&url, &table)
            .await
            .unwrap();
        // The connection really is TLS (the server also has no plain-TCP rule).
        let (ssl, version): (bool, String) =
            sqlx::query_as("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                .fetch_one(store.pool())
                .await
                .unwrap();
        assert!(ssl, "the connection is not TLS");
        let store: Arc<dyn DocumentStore> = Arc::new(store);
        let passed = run_kit(store).await;
        println!(
            "postgres over {version}: kit {passed}/{} passed",
            database::cases().len()
        );
        drop_table(&url, &table).await;
    }

    #[tokio::test]
    async fn an_untrusted_certificate_is_unauthenticated() {
        let Some(url) = url().await else { return };
        let bad = with_password(
            &with_param(&url, "sslrootcert", &other_ca()),
            "postgres",
            PG_PASSWORD,
        );
        let err = PostgresDocumentStore::connect(&bad).await.unwrap_err();
        assert_tls_failure(
            "postgres, wrong CA",
            &err,
            ErrorKind::Unauthenticated,
            "certificate not trusted",
            PG_PASSWORD,
        );
        assert!(err.message().contains("sslrootcert"), "{err}");
    }

    #[tokio::test]
    async fn a_name_mismatch_is_unauthenticated_unless_nothing_is_verified() {
        let Some(url) = url().await else { return };
        let proxy = TcpProxy::start_on("127.0.0.2:0", &addr_of(&url)).await;
        let other_host = with_password(&with_addr(&url, proxy.addr()), "postgres", PG_PASSWORD);
        let err = PostgresDocumentStore::connect(&other_host)
            .await
            .unwrap_err();
        assert_tls_failure(
            "postgres, wrong host",
            &err,
            ErrorKind::Unauthenticated,
            "name mismatch",
            PG_PASSWORD,
        );
        assert!(err.message().contains("127.0.0.2"), "{err}");

        // verify-ca should skip the name, but sqlx 0.8 checks it too (its name-skipping
        // verifier misses the error variant current rustls returns), as the module docs say:
        // it fails closed. When sqlx fixes this, this assertion fails: update the docs.
        for mode in ["verify-ca", "VERIFY_CA"] {
            let err = PostgresDocumentStore::connect(&with_param(&other_host, "sslmode", mode))
                .await
                .unwrap_err();
            assert_tls_failure(
                mode,
                &err,
                ErrorKind::Unauthenticated,
                "name mismatch",
                PG_PASSWORD,
            );
        }

        // require encrypts without checking the certificate at all.
        let table = unique_name("tls_modes_");
        let require = with_param(
            &with_param(&other_host, "sslmode", "require"),
            "sslrootcert",
            &other_ca(),
        );
        let store = PostgresDocumentStore::connect_table(&require, &table)
            .await
            .unwrap_or_else(|e| panic!("sslmode=require: {e}"));
        let ssl: bool =
            sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                .fetch_one(store.pool())
                .await
                .unwrap();
        assert!(ssl, "sslmode=require");
        drop_table(&url, &table).await;
    }

    #[tokio::test]
    async fn a_tls_only_server_refuses_sslmode_disable() {
        let Some(url) = url().await else { return };
        let plain = with_param(&url, "sslmode", "disable");
        let err = PostgresDocumentStore::connect(&plain).await.unwrap_err();
        println!("postgres, sslmode=disable: {err}");
        assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{err}");
    }
}

// ---------------------------------------------------------------------------------------
// MariaDB

#[cfg(feature = "mysql")]
mod mysql {
    use super::*;
    use paas_components::database::MysqlDocumentStore;

    async fn url() -> Option<String> {
        let default = format!(
            "mysql://tls:tls-ci-password@127.0.0.1:3307/test?ssl-mode=VERIFY_IDENTITY&ssl-ca={TLS_DIR}/ca.pem"
        );
        let url = std::env::var("MYSQL_TLS_TEST_URL").unwrap_or(default);
        support::server_url("MYSQL_TLS_TEST_URL", &url, &addr_of(&url)).await
    }

    async fn drop_table(url: &str, table: &str) {
        let pool = sqlx::MySqlPool::connect(url).await.unwrap();
        sqlx::query(&format!("DROP TABLE IF EXISTS `{table}`"))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }

    async fn ssl_version(store: &MysqlDocumentStore) -> String {
        let (_, version): (String, String) =
            sqlx::query_as("SHOW SESSION STATUS LIKE 'Ssl_version'")
                .fetch_one(store.pool())
                .await
                .unwrap();
        version
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kit_passes_over_verified_tls() {
        let Some(url) = url().await else { return };
        let table = unique_name("tls_docs_");
        // The PostgreSQL spelling of the options works too (rewritten for sqlx's MySQL).
        let pg_spelling = url
            .replace("ssl-mode=VERIFY_IDENTITY", "sslmode=verify-full")
            .replace("ssl-ca=", "sslrootcert=");
        assert_ne!(pg_spelling, url);
        let store = MysqlDocumentStore::connect_table(&pg_spelling, &table)
            .await
            .unwrap();
        let version = ssl_version(&store).await;
        assert!(version.starts_with("TLS"), "not TLS: `{version}`");
        let store: Arc<dyn DocumentStore> = Arc::new(store);
        let passed = run_kit(store).await;
        println!(
            "mariadb over {version}: kit {passed}/{} passed",
            database::cases().len()
        );
        drop_table(&url, &table).await;
    }

    #[tokio::test]
    async fn an_untrusted_certificate_is_unauthenticated() {
        let Some(url) = url().await else { return };
        let password = password_of(&url);
        let bad = with_param(&url, "ssl-ca", &other_ca());
        let err = MysqlDocumentStore::connect(&bad).await.unwrap_err();
        assert_tls_failure(
            "mariadb, wrong CA",
            &err,
            ErrorKind::Unauthenticated,
            "certificate not trusted",
            &password,
        );
        assert!(err.message().contains("ssl-ca"), "{err}");
    }

    #[tokio::test]
    async fn a_name_mismatch_is_unauthenticated_unless_nothing_is_verified() {
        let Some(url) = url().await else { return };
        let password = password_of(&url);
        let proxy = TcpProxy::start_on("127.0.0.2:0", &addr_of(&url)).await;
        let other_host = with_addr(&url, proxy.addr());
        let err = MysqlDocumentStore::connect(&other_host).await.unwrap_err();
        assert_tls_failure(
            "mariadb, wrong host",
            &err,
            ErrorKind::Unauthenticated,
            "name mismatch",
            &password,
        );
        assert!(err.message().contains("127.0.0.2"), "{err}");

        // As on PostgreSQL: sqlx 0.8's VERIFY_CA checks the name too (fails closed).
        let err = MysqlDocumentStore::connect(&with_param(&other_host, "ssl-mode", "VERIFY_CA"))
            .await
            .unwrap_err();
        assert_tls_failure(
            "VERIFY_CA",
            &err,
            ErrorKind::Unauthenticated,
            "name mismatch",
            &password,
        );

        // REQUIRED encrypts without checking the certificate at all.
        let table = unique_name("tls_modes_");
        let required = with_param(
            &with_param(&other_host, "ssl-mode", "required"),
            "ssl-ca",
            &other_ca(),
        );
        let store = MysqlDocumentStore::connect_table(&required, &table)
            .await
            .unwrap_or_else(|e| panic!("ssl-mode=required: {e}"));
        assert!(ssl_version(&store).await.starts_with("TLS"), "required");
        drop_table(&url, &table).await;
    }
}

// ---------------------------------------------------------------------------------------
// Redis

#[cfg(feature = "redis")]
mod redis {
    use super::*;
    use paas_components::database::RedisDocumentStore;

    async fn url() -> Option<String> {
        let default =
            format!("rediss://:tls-ci-password@127.0.0.1:6380/0?ca_file={TLS_DIR}/ca.pem");
        let url = std::env::var("REDIS_TLS_TEST_URL").unwrap_or(default);
        support::server_url("REDIS_TLS_TEST_URL", &url, &addr_of(&url)).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kit_passes_over_verified_tls() {
        let Some(url) = url().await else { return };
        let ns = unique_name("tls-");
        // The server has no plain port: any answer at all came over TLS.
        let store = RedisDocumentStore::connect(&with_param(&url, "prefix", &ns))
            .await
            .unwrap();
        let passed = run_kit(Arc::new(store.clone())).await;
        println!(
            "redis over TLS: kit {passed}/{} passed",
            database::cases().len()
        );
        store.purge().await.unwrap();
    }

    #[tokio::test]
    async fn an_untrusted_certificate_is_unauthenticated() {
        let Some(url) = url().await else { return };
        let password = password_of(&url);
        let bad = with_param(&url, "ca_file", &other_ca());
        let err = RedisDocumentStore::connect(&bad).await.unwrap_err();
        assert_tls_failure(
            "redis, wrong CA",
            &err,
            ErrorKind::Unauthenticated,
            "certificate not trusted",
            &password,
        );
        assert!(err.message().contains("ca_file"), "{err}");
    }

    #[tokio::test]
    async fn a_name_mismatch_is_unauthenticated_unless_insecure() {
        let Some(url) = url().await else { return };
        let password = password_of(&url);
        let proxy = TcpProxy::start_on("127.0.0.2:0", &addr_of(&url)).await;
        let other_host = with_addr(&url, proxy.addr());
        let err = RedisDocumentStore::connect(&other_host).await.unwrap_err();
        assert_tls_failure(
            "redis, wrong host",
            &err,
            ErrorKind::Unauthenticated,
            "name mismatch",
            &password,
        );
        assert!(err.message().contains("127.0.0.2"), "{err}");

        // `insecure=true` skips every certificate check (and cannot go with a CA file).
        let mut u = url::Url::parse(&other_host).unwrap();
        u.set_query(None);
        let insecure = with_param(u.as_str(), "insecure", "true");
        let store = RedisDocumentStore::connect(&insecure)
            .await
            .unwrap_or_else(|e| panic!("insecure: {e}"));
        assert!(store.get("c", "absent").await.unwrap().is_none());
        let err = RedisDocumentStore::connect(&with_param(&insecure, "ca_file", &other_ca()))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    }

    #[tokio::test]
    async fn tls_options_are_checked_before_connecting() {
        for (bad, cause) in [
            (
                "redis://:hunter2@127.0.0.1:1/0?ca_file=/tmp/x.pem",
                "use a `rediss://` URL",
            ),
            (
                "rediss://:hunter2@127.0.0.1:1/0?ca_file=/nonexistent/ca.pem",
                "cannot be read",
            ),
            (
                "rediss://:hunter2@127.0.0.1:1/0?insecure=maybe",
                "`insecure`",
            ),
        ] {
            let err = RedisDocumentStore::connect(bad).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{bad}: {err}");
            assert!(err.message().contains(cause), "{bad}: {err}");
            assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");
        }
    }
}
