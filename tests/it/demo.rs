//! The front door: the demo runs to completion, every consumer (and the webhook system) gets
//! everything, nothing is left.

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
    for system in [
        "ERP",
        "line dashboard",
        "line dashboard PV",
        "quality",
        "workflow app (webhooks)",
    ] {
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
    assert!(
        stdout.contains("[endpoint failing]"),
        "the workflow app's endpoint failed for a while"
    );

    nothing_left(&admin_url, &stdout).await;
}

/// The database and the nats-server the demo named in `output` are gone.
async fn nothing_left(admin_url: &str, output: &str) {
    let db = output
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .find(|w| w.starts_with("mes_events_demo_"))
        .expect("the demo names its database")
        .to_owned();
    let (client, conn) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let left = client
        .query("select 1 from pg_database where datname = $1", &[&db])
        .await
        .unwrap();
    assert!(left.is_empty(), "database {db} left behind");
    let port: u16 = output
        .split("nats://127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .expect("the demo names its NATS URL");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the demo's nats-server still listens on {port}"
    );
}

/// Every stream's message count and every consumer's position, by name.
async fn snapshot(
    js: &async_nats::jetstream::Context,
) -> std::collections::BTreeMap<String, (u64, u64, u64, u64)> {
    use futures::StreamExt;
    let mut out = std::collections::BTreeMap::new();
    let mut names = js.stream_names();
    let mut streams = Vec::new();
    while let Some(n) = names.next().await {
        streams.push(n.unwrap());
    }
    for name in streams {
        let mut s = js.get_stream(&name).await.unwrap();
        let msgs = s.info().await.unwrap().state.messages;
        out.insert(name.clone(), (msgs, 0, 0, 0));
        let mut consumers = s.consumers();
        while let Some(c) = consumers.next().await {
            let c = c.unwrap();
            out.insert(
                format!("{name}/{}", c.name),
                (
                    c.num_pending,
                    c.num_ack_pending as u64,
                    c.ack_floor.stream_sequence,
                    c.delivered.stream_sequence,
                ),
            );
        }
    }
    out
}

#[tokio::test]
async fn the_demo_on_an_installations_server_leaves_its_streams_and_consumers_exactly_as_they_were()
{
    use async_nats::jetstream::consumer::PullConsumer;
    use futures::StreamExt;
    // An installation: the shipped declaration provisioned, events published, the ERP part way.
    let env = crate::support::Env::without_streams().await;
    let js = env.js().await;
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("nats");
    let decl = mes_events::provision::load_dir(&shipped).unwrap();
    crate::support::provision(&js, &decl).await;
    let relay = env.spawn_relay().await;
    let c = env.db.client().await;
    for i in 0..9 {
        crate::support::emit_order(&c, &format!("PO-{i}")).await;
    }
    env.drained(std::time::Duration::from_secs(30), "published")
        .await;
    relay.stop().await;
    let erp: PullConsumer = js
        .get_stream("MES_EVENTS")
        .await
        .unwrap()
        .get_consumer("erp")
        .await
        .unwrap();
    let mut got = erp.fetch().max_messages(3).messages().await.unwrap();
    let mut n = 0;
    while let Some(m) = got.next().await {
        let m = m.unwrap();
        n += 1;
        if n < 3 {
            m.ack().await.unwrap(); // the third stays delivered, unacknowledged
        }
    }
    let before = snapshot(&js).await;
    assert!(before["MES_EVENTS/erp"].0 > 0, "{before:?}");

    let admin_url = std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:5432/postgres".into());
    let out = Command::new(env!("CARGO_BIN_EXE_mes-events"))
        .args([
            "demo",
            "--duration",
            "4s",
            "--rate",
            "20",
            "--nats",
            &env.nats.url(),
        ])
        .args(["--nats-dir", shipped.to_str().unwrap()])
        .env("DATABASE_URL", &admin_url)
        .env("RUST_LOG", "warn")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("every consumer received everything published for it")
            && stdout.contains("of its own"),
        "{stdout}"
    );
    assert_eq!(
        snapshot(&js).await,
        before,
        "every stream and consumer exactly as before, and no stream of the demo's left"
    );
}

#[tokio::test]
async fn the_demo_checks_its_declaration_folder_before_starting_anything() {
    let out = Command::new(env!("CARGO_BIN_EXE_mes-events"))
        .args([
            "demo",
            "--duration",
            "2s",
            "--nats-dir",
            "/nonexistent/nats",
        ])
        .env("DATABASE_URL", "postgresql://postgres@127.0.0.1:1/none")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    // Refused on the folder: no NATS server started, no database asked for.
    assert!(text.contains("/nonexistent/nats"), "{text}");
    assert!(!text.contains("NATS        nats://"), "{text}");
    assert!(!text.contains("PostgreSQL"), "{text}");
}

#[tokio::test]
async fn ctrl_c_in_a_terminal_stops_the_demo_with_its_summary_and_nothing_left() {
    use std::io::{Read, Write};
    // A real terminal: `script` runs the demo on a pseudo-terminal, and a Ctrl-C typed there
    // reaches the terminal's whole foreground process group, as in a shell.
    let admin_url = std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:5432/postgres".into());
    let bin = env!("CARGO_BIN_EXE_mes-events");
    // `script` runs `$SHELL -c COMMAND`; dash (Debian's /bin/sh) stays as the parent and dies of
    // the Ctrl-C itself, so `exec` puts the demo in the shell's place whatever the shell.
    let mut child = Command::new("script")
        .args([
            "-qefc",
            &format!("exec {bin} demo --duration 120s"),
            "/dev/null",
        ])
        .env("SHELL", "/bin/sh")
        .env("DATABASE_URL", &admin_url)
        .env("RUST_LOG", "warn")
        .env("TERM", "xterm")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("script (util-linux) runs the demo on a pseudo-terminal");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            let _ = tx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    });
    let mut seen = String::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    // Running: the live view shows published events.
    while !seen.contains("published") || !seen.contains("received") {
        assert!(
            std::time::Instant::now() < deadline,
            "the demo did not start:\n{seen}"
        );
        if let Ok(s) = rx.recv_timeout(std::time::Duration::from_millis(200)) {
            seen.push_str(&s);
        }
    }
    stdin.write_all(b"\x03").unwrap();
    stdin.flush().unwrap();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline + std::time::Duration::from_secs(60),
            "the demo did not stop:\n{seen}"
        );
        if let Ok(s) = rx.recv_timeout(std::time::Duration::from_millis(200)) {
            seen.push_str(&s);
        }
    };
    while let Ok(s) = rx.recv_timeout(std::time::Duration::from_millis(500)) {
        seen.push_str(&s);
    }
    assert!(status.success(), "exit {status:?}:\n{seen}");
    assert!(
        seen.contains("summary:") && seen.contains("every consumer received everything"),
        "{seen}"
    );
    assert!(!seen.contains("error:"), "{seen}");
    // Nothing left: no database, no nats-server.
    nothing_left(&admin_url, &seen).await;
}
