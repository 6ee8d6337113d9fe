//! Independent implementations read what the relay publishes: the official Python CloudEvents
//! SDK with nats-py (data checked by the `jsonschema` package against the schema its
//! `dataschema` names) and the JavaScript `cloudevents` package with the official nats.js
//! JetStream client. Both binding modes, every catalog type, keys that need escaping.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mes_events::event::binding::Mode;
use mes_events::store::write::EmitOptions;
use mes_events::store::{operator, write};

use crate::support::*;

const HINT: &str = "run scripts/test.sh, which installs tests/interop/requirements.txt (PyPI) and tests/interop/package.json (npm)";

/// Keys that stress subject escaping: dots, spaces, wildcards, slashes, non-ASCII, very long.
fn nasty_keys() -> Vec<String> {
    vec![
        "PO.2026/11".into(),
        "with space".into(),
        "star*".into(),
        "gt>".into(),
        "a/b\\c".into(),
        "Grüße-東京".into(),
        "under_score".into(),
        "x".repeat(500),
    ]
}

async fn publish_all(env: &Env, mode: Mode) -> usize {
    let mut cfg = env.cfg.clone();
    cfg.events.mode = mode;
    let relay = spawn_relay(cfg, &env.nats.url()).await;
    let c = env.db.client().await;
    let mut n = 0;
    for (ty, field, data) in crate::catalog::valid_examples() {
        let key = data[&field].as_str().unwrap().to_owned();
        write::emit(&c, &ty, &key, &data.to_string(), &EmitOptions::default())
            .await
            .unwrap();
        n += 1;
    }
    for key in nasty_keys() {
        let opts = EmitOptions {
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            ..Default::default()
        };
        write::emit(&c, ORDER_TYPE, &key, &order_data(&key), &opts)
            .await
            .unwrap();
        n += 1;
    }
    eventually(Duration::from_secs(60), "all published", || async {
        let counts = operator::counts(&c).await.unwrap();
        counts.pending == 0 && counts.rejected == 0
    })
    .await;
    relay.stop().await;
    n
}

fn run_reader(cmd: &mut Command, what: &str, expect: usize) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run the {what} reader ({e}): {HINT}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("ModuleNotFoundError") || stderr.contains("ERR_MODULE_NOT_FOUND") {
        panic!("{what} reader's packages are missing: {HINT}\n{stderr}");
    }
    assert!(
        out.status.success(),
        "{what} reader failed (expected {expect} events):\n{stdout}\n{stderr}"
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(summary["decoded"], expect, "{what}: {summary}");
    assert_eq!(
        summary["errors"].as_array().unwrap().len(),
        0,
        "{what}: {summary}"
    );
}

#[tokio::test]
async fn official_python_and_javascript_sdks_read_every_published_event() {
    let env = Env::new().await;
    let binary = publish_all(&env, Mode::Binary).await;
    let structured = publish_all(&env, Mode::Structured).await;
    let total = binary + structured;
    // Every message is also valid for our own decoder, and every key round-trips its subject.
    let published = read_all(&env.js().await).await;
    assert_eq!(published.len(), total);
    for p in &published {
        let token = p.subject.rsplit('.').next().unwrap();
        match mes_events::event::subject::unescape(token) {
            Some(k) => assert_eq!(k, p.key),
            None => assert_eq!(
                token,
                mes_events::event::subject::key_token(&p.key),
                "hashed long key"
            ),
        }
    }

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let interop = root.join("tests/interop");
    let url = env.nats.url();
    let reader = |program: &str, script: &str| {
        let mut c = Command::new(program);
        c.arg(interop.join(script))
            .args([
                "--url",
                &url,
                "--stream",
                "MES_EVENTS",
                "--stream",
                "MES_PV",
            ])
            .args(["--expect", &total.to_string()])
            .current_dir(&interop);
        c
    };
    let mut python = reader("python3", "read_events.py");
    python.arg("--schemas").arg(root.join("schemas"));
    run_reader(
        &mut python,
        "Python (cloudevents + nats-py + jsonschema)",
        total,
    );
    run_reader(
        &mut reader("node", "read_events.mjs"),
        "JavaScript (cloudevents + @nats-io/jetstream)",
        total,
    );
}
