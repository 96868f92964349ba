//! Runs the `two-cloud-vehicles` example end to end, in both modes, and checks its summary:
//! every acknowledged command executed exactly once, none lost, the cells moved and came
//! back, and both clouds identical at the end.

use std::process::Command;
use std::sync::Mutex;

/// The runs are timing-sensitive: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The number after `label` on its summary line.
fn figure(output: &str, label: &str) -> u64 {
    let line = output
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no `{label}` line in:\n{output}"));
    line[line.find(':').expect("colon") + 1..]
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number on `{line}`"))
}

fn run(envs: &[(&str, String)], svg: Option<&std::path::Path>) -> String {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut command = Command::new(env!("CARGO_BIN_EXE_two-cloud-vehicles"));
    command.args([
        "--commands",
        "2000",
        "--seconds",
        "20",
        "--outage-at",
        "6",
        "--outage-for",
        "6",
    ]);
    if let Some(svg) = svg {
        command.arg("--svg").arg(svg);
    }
    for var in [
        "CLOUD_A_DOCUMENTS",
        "CLOUD_A_QUEUE",
        "CLOUD_B_DOCUMENTS",
        "CLOUD_B_QUEUE",
    ] {
        command.env_remove(var);
    }
    command.envs(envs.iter().map(|(k, v)| (k, v)));
    let out = command.output().expect("run the example");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the example failed: {:?}", out.status);
    stdout
}

fn check_summary(output: &str) {
    let issued = figure(output, "commands issued");
    let acked = figure(output, "acknowledged");
    assert_eq!(issued, 2000);
    // The standby takes every command while the home is down: nothing is turned away.
    assert_eq!(acked, issued, "commands not acknowledged");
    assert_eq!(figure(output, "executed exactly once"), acked);
    assert_eq!(figure(output, "lost"), 0);
    assert_eq!(figure(output, "executed twice"), 0);
    assert!(
        output.contains("both clouds identical:              yes"),
        "{output}"
    );
    // Cells of cloud A moved to B during the outage, and came back after the drain.
    for cell in ["cell-1", "cell-2"] {
        assert!(
            output.contains(&format!(
                "{cell} moved cloud-a -> cloud-b (home breaker open"
            )),
            "{cell} did not fail over"
        );
        assert!(
            output.contains(&format!(
                "{cell} moved cloud-b -> cloud-a (home recovered and drained)"
            )),
            "{cell} did not come back"
        );
    }
    assert!(output.contains("outage detected: cloud-a breaker open"));
    assert!(output.contains("hints replayed"));
    assert!(output.contains("repair done"));
    assert!(
        figure(output, "peak hint backlog") > 0,
        "the outage left no hints?"
    );
}

#[test]
fn embedded_clouds_lose_nothing_and_execute_once() {
    let svg = std::env::temp_dir().join(format!("two-cloud-vehicles-{}.svg", std::process::id()));
    let output = run(&[], Some(&svg));
    assert!(output.contains("(embedded mode)"));
    check_summary(&output);
    let drawing = std::fs::read_to_string(&svg).expect("svg written");
    assert!(drawing.starts_with("<svg") && drawing.contains("cloud-a down"));
    assert_eq!(
        drawing.matches("<polyline").count(),
        2,
        "one line per cloud"
    );
    let _ = std::fs::remove_file(&svg);
}

/// The server URL in `var` (or `default`), if its server answers; under CI
/// (`CI` / `REQUIRE_SERVERS`) an unreachable server fails the test.
#[cfg(feature = "servers")]
fn server_url(var: &str, default: &str) -> Option<String> {
    let url = std::env::var(var).unwrap_or_else(|_| default.to_string());
    let parsed = url::Url::parse(&url).expect("server URL");
    let addr = format!(
        "{}:{}",
        parsed.host_str().expect("host"),
        parsed.port_or_known_default().expect("port")
    );
    let reachable = std::net::ToSocketAddrs::to_socket_addrs(&addr)
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| {
            std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(3)).is_ok()
        });
    if reachable {
        return Some(url);
    }
    if std::env::var_os("CI").is_some() || std::env::var_os("REQUIRE_SERVERS").is_some() {
        panic!("{var}: server at {addr} is not reachable, and CI requires it");
    }
    eprintln!(
        "\n!!!!!!!! SKIPPED: no server at {addr} for {var}; this test did NOT run. !!!!!!!!\n"
    );
    None
}

/// Cloud A = PostgreSQL + NATS JetStream (both reached through the example's cuttable
/// proxies), cloud B = MariaDB + Redis Streams. (The publisher carries each command's message
/// id to the queue, so both queues must claim de-duplication: RabbitMQ and Kafka do not.)
#[cfg(feature = "servers")]
#[test]
fn postgres_and_mariadb_clouds_lose_nothing_and_execute_once() {
    let Some(postgres) = server_url(
        "POSTGRES_TEST_URL",
        "postgres://postgres@127.0.0.1:5432/test",
    ) else {
        return;
    };
    let Some(mysql) = server_url("MYSQL_TEST_URL", "mysql://root@127.0.0.1:3306/test") else {
        return;
    };
    let Some(nats) = server_url("NATS_TEST_URL", "nats://127.0.0.1:4222") else {
        return;
    };
    let Some(redis) = server_url("REDIS_TEST_URL", "redis://127.0.0.1:6379/0") else {
        return;
    };
    let redis = format!(
        "{redis}{}prefix=vehicles{}",
        if redis.contains('?') { '&' } else { '?' },
        std::process::id()
    );
    let output = run(
        &[
            ("CLOUD_A_DOCUMENTS", postgres),
            ("CLOUD_A_QUEUE", nats),
            ("CLOUD_B_DOCUMENTS", mysql),
            ("CLOUD_B_QUEUE", redis),
        ],
        None,
    );
    assert!(output.contains("(servers mode)"));
    assert!(output.contains("CLOUD_A_DOCUMENTS  postgres://"));
    assert!(output.contains("CLOUD_A_QUEUE      nats://"));
    check_summary(&output);
}
