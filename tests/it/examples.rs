//! The integrator examples under examples/, run against a real server with credentials from
//! `mes-events provision credentials`: each receives and acks part of a published batch, is
//! stopped, and on restart receives exactly the rest. The Rust consumer library does the same
//! job from a system's own account, bound to its consumer by name.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::*;

const HINT: &str = "run scripts/test.sh: it installs examples/python/requirements.txt and examples/javascript/package.json";

pub(crate) const SYSTEMS: &str = r#"
[system]
name = "python-app"
[[consumer]]
stream = "MES_EVENTS"
filter_subjects = ["mes.*.*.*.*.processorder.>"]
max_deliver = 5
"#;

pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_owned()
}

/// Runs an example to completion; returns the `sequence` of every event it printed.
pub(crate) async fn run_example(
    program: &str,
    script: &Path,
    cwd: &Path,
    args: &[String],
) -> Vec<String> {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(program)
            .arg(script)
            .args(args)
            .current_dir(cwd)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{} did not finish within 60 s", script.display()))
    .unwrap_or_else(|e| panic!("cannot run {program}: {e}: {HINT}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{} failed ({HINT}):\n{stderr}",
        script.display()
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"));
            v["sequence"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[tokio::test]
async fn python_and_javascript_examples_receive_ack_and_resume_with_generated_credentials() {
    // Declaration: the shipped streams, and one system per example.
    let decl_dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        root().join("nats/streams.toml"),
        decl_dir.path().join("streams.toml"),
    )
    .unwrap();
    std::fs::write(decl_dir.path().join("python-app.toml"), SYSTEMS).unwrap();
    for system in ["js-app", "rust-app"] {
        std::fs::write(
            decl_dir.path().join(format!("{system}.toml")),
            SYSTEMS.replace("python-app", system),
        )
        .unwrap();
    }
    let decl = mes_events::provision::load_dir(decl_dir.path()).unwrap();
    let creds = tempfile::tempdir().unwrap();
    mes_events::provision::auth::write(&decl, creds.path(), None).unwrap();
    let auth = std::fs::read_to_string(creds.path().join("auth.conf")).unwrap();

    let mut nats = NatsServer::start_with_config(&auth).await;
    let db = TestDb::new().await;
    let mut cfg = config(&db, &nats);
    // The admin provisions; the relay publishes with its own identity.
    let seed = |u: &str| {
        std::fs::read_to_string(creds.path().join(format!("{u}.nk")))
            .unwrap()
            .trim()
            .to_owned()
    };
    let admin = async_nats::ConnectOptions::with_nkey(seed("admin"))
        .connect(nats.url())
        .await
        .unwrap();
    mes_events::provision::apply(
        &async_nats::jetstream::new(admin),
        &decl,
        Default::default(),
    )
    .await
    .unwrap();
    cfg.nats.nkey = Some(creds.path().join("relay.nk"));
    let relay = spawn_relay_as(cfg.clone()).await;
    let c = db.client().await;
    let mut published = BTreeSet::new();
    for i in 0..20 {
        let key = format!("PO-{}", i % 4);
        let id = emit_order(&c, &key).await;
        published.insert(format!("{id:020}"));
    }
    eventually(Duration::from_secs(30), "published", || async {
        pending(&db).await == 0
    })
    .await;
    relay.stop().await;

    let common = |system: &str, max: usize| {
        vec![
            "--url".into(),
            nats.url(),
            "--system".into(),
            system.into(),
            "--seed".into(),
            creds
                .path()
                .join(format!("{system}.nk"))
                .display()
                .to_string(),
            "--max".into(),
            max.to_string(),
        ]
    };
    for (program, script, system) in [
        (
            "python3",
            root().join("examples/python/consumer.py"),
            "python-app",
        ),
        (
            "node",
            root().join("examples/javascript/consumer.mjs"),
            "js-app",
        ),
    ] {
        let cwd = script.parent().unwrap().to_owned();
        let first = run_example(program, &script, &cwd, &common(system, 12)).await;
        let second = run_example(program, &script, &cwd, &common(system, 8)).await;
        assert_eq!(first.len(), 12, "{system}");
        assert_eq!(second.len(), 8, "{system}");
        let all: BTreeSet<String> = first.iter().chain(&second).cloned().collect();
        assert_eq!(
            all, published,
            "{system}: every event once across the restart, none twice"
        );
    }

    // The Rust library, from rust-app's own account: it may not read its consumer's info, so it
    // binds by name with what the declaration says, and handles every event once, each key's in
    // order.
    let mut rust = cfg.nats.clone();
    rust.nkey = Some(creds.path().join("rust-app.nk"));
    let js = mes_events::nats::jetstream(
        mes_events::nats::connect(&rust, "rust-app", false)
            .await
            .unwrap(),
        &rust,
        256,
    );
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let handler = {
        let seen = seen.clone();
        move |d: mes_events::consume::Delivery| {
            let seen = seen.clone();
            async move {
                let seq = d.event.extension("sequence").unwrap().to_string();
                seen.lock().unwrap().push((d.key, seq));
                mes_events::consume::Outcome::Done
            }
        }
    };
    let opts = mes_events::consume::Options {
        declared: Some(mes_events::consume::Declared {
            max_deliver: 5,
            ack_wait: Duration::from_secs(30),
        }),
        ..Default::default()
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let run = tokio::spawn({
        let stop = stop.clone();
        async move { mes_events::consume::run(&js, "MES_EVENTS", "rust-app", opts, handler, stop).await }
    });
    eventually(
        Duration::from_secs(30),
        "rust-app handled every event",
        || async { seen.lock().unwrap().len() >= published.len() },
    )
    .await;

    // The server restarted under it: it pulls again by itself, asking nothing it may not ask
    // (async-nats' own pull stream asks for the consumer's info after a reconnect, is denied,
    // and sends no pull for about 45 s while it retries).
    nats.kill().await;
    nats.restart().await;
    let relay = spawn_relay_as(cfg.clone()).await;
    for i in 20..30 {
        let id = emit_order(&c, &format!("PO-{}", i % 4)).await;
        published.insert(format!("{id:020}"));
    }
    eventually(
        Duration::from_secs(20),
        "rust-app handled the events published after the restart",
        || async { seen.lock().unwrap().len() >= published.len() },
    )
    .await;
    relay.stop().await;
    let server_log = std::fs::read_to_string(nats.local().log_file()).unwrap();
    assert!(
        !server_log.contains("Publish Violation"),
        "a permission violation: {}",
        server_log
            .lines()
            .filter(|l| l.contains("Violation"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    stop.cancel();
    run.await
        .unwrap()
        .expect("consume binds by name from its own account");
    let seen = seen.lock().unwrap().clone();
    let all: BTreeSet<String> = seen.iter().map(|(_, s)| s.clone()).collect();
    assert_eq!(seen.len(), published.len(), "rust-app: none twice");
    assert_eq!(all, published, "rust-app: every event");
    let mut last: std::collections::HashMap<&str, &str> = Default::default();
    for (key, seq) in &seen {
        if let Some(prev) = last.insert(key, seq) {
            assert!(prev < seq.as_str(), "rust-app: {key} out of order");
        }
    }
}
