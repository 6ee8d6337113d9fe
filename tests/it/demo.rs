//! The front door: the demo runs to completion, every consumer gets everything, nothing is left.

use std::process::Command;

#[tokio::test]
async fn the_demo_runs_30s_every_consumer_gets_everything_and_nothing_is_left_behind() {
    // As scripts/demo.sh runs it, from the repository (for nats/), on a fresh database server.
    let admin_url = std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:5432/postgres".into());
    let out = Command::new(env!("CARGO_BIN_EXE_mes-events"))
        .args(["demo", "--duration", "30s"])
        .env("DATABASE_URL", &admin_url)
        .env("RUST_LOG", "warn")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("every consumer received everything published for it"),
        "{stdout}"
    );
    let summary = &stdout[stdout.find("summary:").unwrap()..];
    for system in ["ERP", "line dashboard", "line dashboard PV", "quality"] {
        assert!(
            summary
                .lines()
                .any(|l| l.trim_start().starts_with(system) && l.ends_with(": all")),
            "{system} in:\n{summary}"
        );
    }
    assert!(
        stdout.contains("[offline]"),
        "the quality system went offline during the run"
    );

    // Nothing left: the demo's database and its nats-server are gone.
    let db = stdout
        .split_whitespace()
        .find(|w| w.starts_with("mes_events_demo_"))
        .expect("the demo names its database")
        .to_owned();
    let (client, conn) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let left = client
        .query("select 1 from pg_database where datname = $1", &[&db])
        .await
        .unwrap();
    assert!(left.is_empty(), "database {db} left behind");
    let port: u16 = stdout
        .split_whitespace()
        .find_map(|w| w.strip_prefix("nats://127.0.0.1:"))
        .expect("the demo names its NATS URL")
        .parse()
        .unwrap();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the demo's nats-server still listens on {port}"
    );
}
