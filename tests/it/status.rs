//! What an operator reads when something is wrong: `relay status` (table and JSON) on an active
//! relay, with a standby and with a stream missing; and a NATS failure of each class (refused,
//! timed out, TLS, authorization, permission) named as such, with the URL and the identity,
//! and never the password.

use std::process::Output;
use std::time::Duration;

use crate::support::*;

/// `mes-events relay status [--json]` against `cfg`'s servers, NATS at `nats_url`.
fn status(cfg: &mes_events::config::Config, nats_url: &str, json: bool) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mes-events"));
    cmd.args(["relay", "status"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("MES_EVENTS_DATABASE__URL", &cfg.database.url)
        .env("MES_EVENTS_NATS__URL", nats_url)
        .env("MES_EVENTS_NATS__REQUEST_TIMEOUT", "2s")
        .env("MES_EVENTS_EVENTS__SITE", &cfg.events.site)
        .current_dir(std::env::temp_dir());
    if json {
        cmd.arg("--json");
    }
    cmd.output().unwrap()
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", output_text(o)))
}

#[tokio::test]
async fn relay_status_names_the_active_relay_its_standby_and_a_missing_stream() {
    let env = Env::new().await;
    let url = env.nats.url();
    // Nothing running: not healthy, and it says what to start.
    let o = status(&env.cfg, &url, false);
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("no relay is active")
            && output_text(&o).contains("mes-events relay"),
        "{}",
        output_text(&o)
    );

    let mut active = RelayProcess::spawn(&env.cfg, &[]);
    let c = env.db.client().await;
    for i in 0..4 {
        emit_order(&c, &format!("PO-{i}")).await;
    }
    env.drained(Duration::from_secs(30), "published").await;
    let holder = format!("{}:{}", mes_events::host::name(), active.pid());
    let s = eventually_value(Duration::from_secs(20), "healthy and active", || async {
        let o = status(&env.cfg, &url, true);
        (o.status.code() == Some(0)).then(|| json(&o))
    })
    .await;
    assert_eq!(s["active"]["holder"], holder, "{s:#}");
    assert_eq!(s["healthy"], true);
    assert_eq!(s["outbox"]["pending"], 0);
    assert!(s["last_published_at"].is_string(), "{s:#}");
    let events = &s["streams"][0];
    assert_eq!(events["stream"], "MES_EVENTS");
    assert_eq!(events["last_sequence"], 4, "{s:#}");
    assert_eq!(events["state"], "ok");
    let table = status(&env.cfg, &url, false);
    let text = output_text(&table);
    assert!(
        text.contains(&format!("active     {holder}  epoch ")) && text.contains("healthy"),
        "{text}"
    );

    // A standby: named as such.
    let mut standby = RelayProcess::spawn(&env.cfg, &[]);
    let standby_name = format!("{}:{}", mes_events::host::name(), standby.pid());
    eventually(Duration::from_secs(20), "the standby listed", || async {
        let s = json(&status(&env.cfg, &url, true));
        s["standbys"]
            .as_array()
            .is_some_and(|a| a.len() == 1 && a[0]["name"] == standby_name)
            && s["active"]["holder"] == holder
    })
    .await;
    let text = output_text(&status(&env.cfg, &url, false));
    assert!(
        text.contains(&format!("standby    {standby_name}")),
        "{text}"
    );

    // A stream missing: not healthy, the stream named with what to run, in both forms.
    env.js().await.delete_stream("MES_PV").await.unwrap();
    let o = status(&env.cfg, &url, true);
    assert_eq!(o.status.code(), Some(1));
    let s = json(&o);
    assert_eq!(s["healthy"], false);
    assert_eq!(s["streams"][1]["state"], "missing", "{s:#}");
    assert!(
        s["problems"][0]
            .as_str()
            .is_some_and(|p| p.contains("MES_PV") && p.contains("provision apply")),
        "{s:#}"
    );
    let o = status(&env.cfg, &url, false);
    assert_eq!(o.status.code(), Some(1));
    let text = output_text(&o);
    assert!(
        text.contains("NOT HEALTHY") && text.contains("stream MES_PV missing"),
        "{text}"
    );

    assert!(standby.terminate().await.success());
    assert!(active.terminate().await.success());
}

/// A TCP port that accepts connections and never says a word (a frozen server, a half-open
/// path): the client's handshake waits for an INFO that never comes.
async fn silent_port() -> (u16, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    (port, task)
}

#[tokio::test]
async fn each_nats_failure_names_its_cause_the_url_and_the_identity_never_the_password() {
    let db = TestDb::new().await;
    let plain = NatsServer::start().await;
    let cfg = config(&db, &plain);
    // A server with users: `relay` may not use the JetStream API.
    let guarded = NatsServer::start_with_config(
        r#"authorization {
             users: [
               { user: relay, password: s3cret, permissions: { publish: { deny: ["$JS.API.>"] } } }
             ]
           }"#,
    )
    .await;
    let with = |u: &str, creds: &str| u.replacen("nats://", &format!("nats://{creds}@"), 1);
    let (silent, _silent) = silent_port().await;
    let refused = free_port();
    let cases = [
        (
            "refused",
            format!("nats://relay:s3cret@127.0.0.1:{refused}"),
            "refused the connection of user relay",
        ),
        (
            "timed out",
            format!("nats://relay:s3cret@127.0.0.1:{silent}"),
            "did not answer",
        ),
        (
            "TLS",
            with(&plain.url(), "relay:s3cret").replacen("nats://", "tls://", 1),
            "does not speak TLS",
        ),
        (
            "authorization",
            with(&guarded.url(), "relay:wrong-s3cret"),
            "refused user relay (authorization violation)",
        ),
        (
            "permission",
            with(&guarded.url(), "relay:s3cret"),
            "denied user relay an operation (Permissions Violation",
        ),
    ];
    for (class, url, says) in cases {
        let o = status(&cfg, &url, false);
        let text = output_text(&o);
        assert_eq!(o.status.code(), Some(1), "{class}: {text}");
        assert!(text.contains(says), "{class}: expected {says:?} in\n{text}");
        let shown = mes_events::nats::redact(&url);
        assert!(text.contains(&shown), "{class}: the URL {shown} in\n{text}");
        assert!(
            !text.contains("s3cret"),
            "{class}: a password printed:\n{text}"
        );
    }

    // The relay, which retries: the same words, once per change of state, no password.
    let mut relay = RelayProcess::spawn(
        &mes_events::config::Config {
            nats: mes_events::config::NatsConfig {
                url: with(&guarded.url(), "relay:wrong-s3cret"),
                ..cfg.nats.clone()
            },
            ..cfg.clone()
        },
        &[],
    );
    let log = eventually_value(
        Duration::from_secs(20),
        "the relay names the cause",
        || async {
            let log = relay.stderr();
            log.contains("refused user relay (authorization violation)")
                .then_some(log)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await; // several reconnect attempts
    let log2 = relay.stderr();
    assert_eq!(
        log2.matches("authorization violation").count(),
        log.matches("authorization violation").count().max(1),
        "told once, not at every attempt:\n{log2}"
    );
    assert!(!log2.contains("s3cret"), "{log2}");
    relay.kill9();
}
