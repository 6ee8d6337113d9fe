//! Push, against a real nats-server, a real PostgreSQL and real HTTP receivers written with the
//! official libraries (Standard Webhooks' `standardwebhooks`, CloudEvents' SDKs): every
//! signature verifies and every event decodes, forgeries are refused; an endpoint that refuses
//! connections, then fails, then times out gets everything in order while another one flows;
//! a poison event becomes a dead letter with its status and is resent once; the push service
//! killed at random moments loses nothing and keeps each key's order.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::nats::free_port;
use crate::support::*;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_owned()
}

/// A pushed system taking every order event, with `push` lines added to its `[push]` table.
fn system(name: &str, port: u16, push: &str) -> String {
    format!(
        r#"
[system]
name = "{name}"
[[consumer]]
stream = "MES_EVENTS"
filter_subjects = ["mes.*.*.*.*.processorder.>"]
ack_wait = "2s"
[push]
url = "http://127.0.0.1:{port}/hooks/mes"
secret_env = "PUSH_SECRET"
{push}
"#
    )
}

/// A provisioned installation: the shipped streams and the given systems, a relay running.
struct World {
    env: Env,
    decl: tempfile::TempDir,
    relay: Option<RelayTask>,
}

impl World {
    async fn new(systems: &[(&str, String)]) -> World {
        let env = Env::without_streams().await;
        let decl = tempfile::tempdir().unwrap();
        std::fs::copy(
            root().join("nats/streams.toml"),
            decl.path().join("streams.toml"),
        )
        .unwrap();
        std::fs::create_dir(decl.path().join("systems")).unwrap();
        for (name, text) in systems {
            std::fs::write(decl.path().join(format!("systems/{name}.toml")), text).unwrap();
        }
        let d = mes_events::provision::load_dir(decl.path()).unwrap();
        mes_events::provision::apply(&env.js().await, &d, Default::default())
            .await
            .unwrap();
        let relay = Some(env.spawn_relay().await);
        World { env, decl, relay }
    }

    /// `mes-events push` as a child process, its log in a file.
    fn push(&self) -> PushProcess {
        self.push_with(&[])
    }

    fn push_with(&self, extra_env: &[(&str, &str)]) -> PushProcess {
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_mes-events"))
            .arg("push")
            .arg("--dir")
            .arg(self.decl.path())
            .env("MES_EVENTS_NATS__URL", self.env.nats.url())
            .env("PUSH_SECRET", SECRET)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .current_dir(std::env::temp_dir())
            .envs(extra_env.iter().copied())
            .spawn()
            .expect("spawning mes-events push");
        PushProcess { child, log }
    }

    /// `n` order events over `keys` keys (`PO-0`…), in turn; their outbox ids as sequences.
    async fn emit(&self, n: usize, keys: usize, from: usize) -> Vec<(String, String)> {
        let c = self.env.db.client().await;
        let mut out = Vec::new();
        for i in from..from + n {
            let key = format!("PO-{}", i % keys);
            let id = emit_order(&c, &key).await;
            out.push((key, format!("{id:020}")));
        }
        out
    }

    async fn stop(mut self) {
        if let Some(r) = self.relay.take() {
            r.stop().await;
        }
    }
}

struct PushProcess {
    child: Child,
    log: tempfile::NamedTempFile,
}

impl PushProcess {
    fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "push did not stop on SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PushProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A receiver process printing one JSON line per request (or per event handled).
struct Receiver {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
    control: tempfile::NamedTempFile,
    name: String,
}

impl Receiver {
    /// An example receiver as it is, printing one line per event handled.
    fn spawn_plain(name: &str, cmd: Command) -> Receiver {
        Self::start(name, cmd, false)
    }

    fn start(name: &str, mut cmd: Command, with_control: bool) -> Receiver {
        let control = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(control.path(), "{}").unwrap();
        if with_control {
            cmd.arg("--control").arg(control.path());
        }
        let mut child = cmd
            .env("PUSH_SECRET", SECRET)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{name}: {e} (run scripts/test.sh: it installs the receivers' packages)")
            });
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&l) {
                    sink.lock().unwrap().push(v);
                }
            }
        });
        Receiver {
            child,
            lines,
            control,
            name: name.to_owned(),
        }
    }

    /// The tests' receiver (examples/push/receiver.py with faults to turn on).
    async fn faulty(name: &str, port: u16) -> Receiver {
        let mut c = Command::new("python3");
        c.arg(root().join("tests/interop/push_receiver.py")).args([
            "--port",
            &port.to_string(),
            "--secret-env",
            "PUSH_SECRET",
        ]);
        let r = Receiver::start(name, c, true);
        r.wait_lines(
            |l| l.iter().any(|v| v["listening"].is_number()),
            "listening",
        )
        .await;
        r
    }

    fn set(&self, control: Value) {
        let tmp = self.control.path().with_extension("new");
        std::fs::write(&tmp, control.to_string()).unwrap();
        std::fs::rename(&tmp, self.control.path()).unwrap();
    }

    fn lines(&self) -> Vec<Value> {
        self.lines.lock().unwrap().clone()
    }

    /// Requests that were handled (first time for their webhook id).
    fn handled(&self) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|l| l["handled"] == true)
            .collect()
    }

    async fn wait_lines(&self, done: impl Fn(&[Value]) -> bool, what: &str) {
        self.wait_lines_or(done, what, String::new).await
    }

    /// The same, saying `context()` too when it does not happen.
    /// (Async: the relay runs on the test's own runtime and must go on meanwhile.)
    async fn wait_lines_or(
        &self,
        done: impl Fn(&[Value]) -> bool,
        what: &str,
        context: impl Fn() -> String,
    ) {
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        loop {
            if done(&self.lines()) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{}: {what} did not happen within 90 s; it saw:\n{:#?}\n{}",
                self.name,
                self.lines(),
                context()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_handled(&self, n: usize) {
        let lines = self.lines.clone();
        eventually(
            Duration::from_secs(90),
            &format!("{} handled {n} events", self.name),
            || {
                let lines = lines.clone();
                async move {
                    lines
                        .lock()
                        .unwrap()
                        .iter()
                        .filter(|l| l["handled"] == true)
                        .count()
                        >= n
                }
            },
        )
        .await;
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every event handled once, each key's in the order they were emitted; every request for one
/// event carried the same webhook id.
fn assert_once_in_order(who: &str, lines: &[Value], emitted: &[(String, String)]) {
    assert_handled_once_in_order(who, lines, emitted);
    let mut ids: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for l in lines.iter().filter(|l| l["id"].is_string()) {
        ids.entry(l["id"].as_str().unwrap())
            .or_default()
            .insert(l["webhook_id"].as_str().unwrap_or("-"));
    }
    for (id, w) in ids {
        assert_eq!(w.len(), 1, "{who}: event {id} came with webhook ids {w:?}");
    }
}

/// Every event handled once, each key's in the order they were emitted.
fn assert_handled_once_in_order(who: &str, lines: &[Value], emitted: &[(String, String)]) {
    let handled: Vec<&Value> = lines.iter().filter(|l| l["handled"] == true).collect();
    let seqs: Vec<String> = handled
        .iter()
        .map(|l| l["sequence"].as_str().unwrap().to_owned())
        .collect();
    let distinct: BTreeSet<&String> = seqs.iter().collect();
    assert_eq!(
        distinct.len(),
        seqs.len(),
        "{who}: an event handled twice: {seqs:?}"
    );
    let want: BTreeSet<&String> = emitted.iter().map(|(_, s)| s).collect();
    assert_eq!(distinct, want, "{who}: not every event, or one too many");
    let key_of: BTreeMap<&String, &String> = emitted.iter().map(|(k, s)| (s, k)).collect();
    let mut last: BTreeMap<&String, &String> = BTreeMap::new();
    for s in &seqs {
        let k = key_of[s];
        if let Some(prev) = last.insert(k, s) {
            assert!(prev < s, "{who}: key {k}: {s} handled after {prev}");
        }
    }
}

#[tokio::test]
async fn official_receivers_verify_every_signature_decode_every_event_and_refuse_forgeries() {
    use mes_events::provision::decl::PushMode;
    // The receivers to copy, as they are (examples/push/receiver.{py,mjs}), in each mode. The
    // batched ones deliver one request at a time, so that the other keys' events gather.
    let receivers = [
        ("python", PushMode::Binary, ""),
        ("javascript", PushMode::Structured, "mode = \"structured\""),
        (
            "python",
            PushMode::Batched,
            "mode = \"batched\"\nconcurrency = 1",
        ),
        (
            "javascript",
            PushMode::Batched,
            "mode = \"batched\"\nconcurrency = 1",
        ),
    ]
    .map(|(lang, mode, push)| (lang, mode, push, free_port()));
    let systems: Vec<(String, String)> = receivers
        .iter()
        .enumerate()
        .map(|(i, (lang, _, push, port))| {
            let name = format!("workflow-{lang}-{i}");
            let text = system(&name, *port, push);
            (name, text)
        })
        .collect();
    let w = World::new(
        &systems
            .iter()
            .map(|(n, t)| (n.as_str(), t.clone()))
            .collect::<Vec<_>>(),
    )
    .await;
    let rs: Vec<Receiver> = receivers
        .iter()
        .map(|(lang, mode, _, port)| {
            let args =
                ["--port", &port.to_string(), "--secret-env", "PUSH_SECRET"].map(String::from);
            let cmd = if *lang == "python" {
                let mut c = Command::new("python3");
                c.arg(root().join("examples/push/receiver.py")).args(&args);
                c
            } else {
                let mut c = Command::new("node");
                c.arg(root().join("examples/push/receiver.mjs"))
                    .args(&args)
                    .current_dir(root().join("examples/push"));
                c
            };
            Receiver::spawn_plain(&format!("{lang} receiver, {mode:?} mode"), cmd)
        })
        .collect();
    let mut push = w.push();
    let emitted = w.emit(20, 4, 0).await;
    for r in &rs {
        r.wait_lines_or(|l| l.len() >= 20, "20 events", || push.log())
            .await;
        let lines: Vec<Value> = r
            .lines()
            .into_iter()
            .map(|mut l| {
                l["handled"] = true.into();
                l
            })
            .collect();
        assert_handled_once_in_order(&r.name, &lines, &emitted);
        for l in &lines {
            assert_eq!(l["type"], "io.mesevents.mes.processorder.statuschanged.v1");
        }
    }
    assert!(push.terminate().success(), "{}", push.log());

    // Forgeries, sent as an attacker would: each receiver refuses them all (401) and takes the
    // genuine request it is shown beside them.
    let event = {
        use cloudevents::{EventBuilder, EventBuilderV10};
        EventBuilderV10::new()
            .id("forgery-test-1")
            .source("/mes/test/bsl")
            .ty("io.mesevents.mes.processorder.statuschanged.v1")
            .subject("PO-X")
            .extension("sequence", "00000000000000009999")
            .data("application/json", json!({"orderId": "PO-X"}))
            .build()
            .unwrap()
    };
    let signer = mes_events::push::Signer::new(SECRET).unwrap();
    let other = mes_events::push::Signer::new("whsec_b3RoZXItc2VjcmV0LW9mLTMyLWJ5dGVzLWxvbmchIQ==")
        .unwrap();
    let now = chrono::Utc::now().timestamp();
    let build = |signer: &mes_events::push::Signer, ts: i64, mode| {
        use mes_events::push::request;
        if mode == PushMode::Batched {
            let element = request::batch_element(event.clone()).unwrap();
            request::build_batch(
                std::slice::from_ref(&event),
                vec![element],
                &Default::default(),
                signer,
                ts,
            )
            .unwrap()
        } else {
            request::build(event.clone(), mode, &Default::default(), signer, ts).unwrap()
        }
    };
    let http = reqwest::Client::new();
    for (_, mode, _, port) in &receivers {
        let send = |r: mes_events::push::request::Request| {
            let mut b = http.post(format!("http://127.0.0.1:{port}/hooks/mes"));
            for (k, v) in &r.headers {
                b = b.header(k, v);
            }
            b.body(r.body).send()
        };
        let genuine = build(&signer, now, *mode);
        let mut tampered = genuine.clone();
        tampered.body = bytes::Bytes::from(
            String::from_utf8(genuine.body.to_vec())
                .unwrap()
                .replace("PO-X", "PO-Y"),
        );
        let old = build(&signer, now - 600, *mode);
        let wrong_key = build(&other, now, *mode);
        let mut unsigned = genuine.clone();
        unsigned.headers.retain(|(k, _)| k != "webhook-signature");
        for (what, r) in [
            ("a tampered body", tampered),
            ("a timestamp 10 minutes old", old),
            ("another key", wrong_key),
            ("no signature", unsigned),
        ] {
            let status = send(r).await.unwrap().status().as_u16();
            assert_eq!(
                status, 401,
                "port {port} ({mode:?}): {what} was not refused"
            );
        }
        let status = send(genuine).await.unwrap().status().as_u16();
        assert!((200..300).contains(&status), "port {port}: genuine refused");
    }
    for r in &rs {
        r.wait_lines(|l| l.len() == 21, "the genuine request").await;
        assert_eq!(r.lines()[20]["subject"], "PO-X", "{}", r.name);
    }
    w.stop().await;
}

#[tokio::test]
async fn an_endpoint_refusing_failing_then_timing_out_gets_everything_in_order_while_another_flows()
{
    let (flaky_port, healthy_port) = (free_port(), free_port());
    let retry = r#"retry = ["200ms", "400ms", "800ms"]
after_last = "hold"
timeout = "1s"
pause_after = 3
pause = "1s""#;
    let w = World::new(&[
        ("flaky", system("flaky", flaky_port, retry)),
        ("healthy", system("healthy", healthy_port, retry)),
    ])
    .await;
    let healthy = Receiver::faulty("healthy", healthy_port).await;
    let metrics_port = free_port();
    let mut push = w.push_with(&[(
        "MES_EVENTS_HTTP__ADDRESS",
        &format!("127.0.0.1:{metrics_port}"),
    )]);
    // Down (connection refused): the healthy endpoint takes everything meanwhile.
    let mut emitted = w.emit(12, 4, 0).await;
    healthy.wait_handled(12).await;
    // Up, but failing.
    let flaky = Receiver::faulty("flaky", flaky_port).await;
    flaky.set(json!({"status": 500}));
    flaky
        .wait_lines(
            |l| l.iter().filter(|v| v["status"] == 500).count() >= 3,
            "500s answered",
        )
        .await;
    emitted.extend(w.emit(12, 4, 12).await);
    healthy.wait_handled(24).await;
    // Answering too late: the push service times out and sends the same events again.
    flaky.set(json!({"sleep": 2}));
    flaky
        .wait_lines(
            |l| l.iter().filter(|v| v["status"] == 204).count() >= 2,
            "late answers",
        )
        .await;
    // Well again.
    flaky.set(json!({}));
    flaky.wait_handled(24).await;
    assert_once_in_order("flaky", &flaky.lines(), &emitted);
    assert_once_in_order("healthy", &healthy.lines(), &emitted);

    // What Prometheus sees: every event delivered once per endpoint, the failures by class, the
    // retries; the names pass Prometheus's own linter.
    use crate::observe::{promtool_lint, scrape, Scrape};
    let of = |m: &Scrape, name: &str, system: &str, class: Option<&str>| -> f64 {
        m.get(name).map_or(0.0, |v| {
            v.iter()
                .filter(|(l, _)| l.get("system").map(String::as_str) == Some(system))
                .filter(|(l, _)| {
                    class.is_none_or(|c| l.get("class").map(String::as_str) == Some(c))
                })
                .map(|(_, x)| x)
                .sum()
        })
    };
    let m = scrape(metrics_port);
    assert_eq!(
        of(&m, "mes_events_push_delivered_total", "flaky", None),
        24.0
    );
    assert_eq!(
        of(&m, "mes_events_push_delivered_total", "healthy", None),
        24.0
    );
    for class in ["connect", "5xx", "timeout"] {
        assert!(
            of(&m, "mes_events_push_failed_total", "flaky", Some(class)) > 0.0,
            "no {class} failure counted: {m:?}"
        );
    }
    assert_eq!(of(&m, "mes_events_push_failed_total", "healthy", None), 0.0);
    assert!(of(&m, "mes_events_push_retries_total", "flaky", None) > 0.0);
    assert!(of(&m, "mes_events_push_request_seconds_count", "healthy", None) >= 24.0);
    let m = eventually_value(Duration::from_secs(5), "gauges back to rest", || async {
        let m = scrape(metrics_port);
        (of(&m, "mes_events_push_endpoint_paused", "flaky", None) == 0.0
            && of(
                &m,
                "mes_events_push_oldest_undelivered_age_seconds",
                "flaky",
                None,
            ) == 0.0)
            .then_some(m)
    })
    .await;
    let _ = m;
    promtool_lint(metrics_port);
    let log = push.log();
    assert!(
        log.contains("endpoint paused (410 Gone, or failures in a row)"),
        "{log}"
    );
    assert!(!log.contains(SECRET.trim_start_matches("whsec_")), "{log}");
    assert!(push.terminate().success(), "{}", push.log());
    w.stop().await;
}

#[tokio::test]
async fn a_poison_event_becomes_a_dead_letter_with_its_status_others_flow_and_resend_delivers_it_once(
) {
    let port = free_port();
    let w = World::new(&[(
        "erp-hook",
        system("erp-hook", port, r#"retry = ["100ms", "200ms"]"#),
    )])
    .await;
    let r = Receiver::faulty("erp-hook", port).await;
    let emitted = w.emit(8, 4, 0).await;
    // PO-1's first event is refused by the receiver, whatever happens.
    let (_, poison) = emitted[1].clone();
    r.set(json!({"poison": [poison]}));
    let mut push = w.push();
    r.wait_handled(7).await;
    let handled: Vec<String> = r
        .handled()
        .iter()
        .map(|l| l["sequence"].as_str().unwrap().to_owned())
        .collect();
    assert!(!handled.contains(&poison), "{handled:?}");
    // Its key went on after it: PO-1's second event was delivered.
    assert!(handled.contains(&emitted[5].1), "{handled:?}");
    let attempts = r
        .lines()
        .iter()
        .filter(|l| l["sequence"] == poison.as_str())
        .count();
    assert_eq!(attempts, 3, "1 + the 2 retries");

    // A dead letter, with the status and the receiver's words.
    let cli = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_mes-events"))
            .args(args)
            .env("MES_EVENTS_NATS__URL", w.env.nats.url())
            .current_dir(std::env::temp_dir())
            .output()
            .unwrap()
    };
    let list = eventually_value(Duration::from_secs(10), "the dead letter", || async {
        let o = cli(&["dead-letters", "list", "--json"]);
        let v: Value = serde_json::from_slice(&o.stdout).ok()?;
        let a = v.as_array()?.clone();
        (!a.is_empty()).then_some(a)
    })
    .await;
    assert_eq!(list.len(), 1, "{list:?}");
    let dl = &list[0];
    assert_eq!(dl["consumer"], "erp-hook");
    assert_eq!(dl["reason"], "terminated");
    let why = dl["why"].as_str().unwrap_or_default();
    assert!(
        why.contains("HTTP 400") && why.contains("unknown order") && why.contains("attempt 3 of 3"),
        "{dl}"
    );
    let text = String::from_utf8_lossy(&cli(&["dead-letters", "list"]).stdout).into_owned();
    assert!(text.contains("why: HTTP 400"), "{text}");

    // `push status`: an instance delivers, nothing waits; the dead letter and why.
    let dir = w.decl.path().to_str().unwrap().to_owned();
    let o = cli(&["push", "status", "--dir", &dir, "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    let rows: Value = serde_json::from_slice(&o.stdout).unwrap();
    let row = &rows[0];
    assert_eq!(row["system"], "erp-hook");
    assert_eq!(
        row["endpoint"],
        format!("http://127.0.0.1:{port}/hooks/mes")
    );
    assert!(row["state"]["pinned_since"].is_string(), "{row}");
    assert_eq!(row["state"]["dead_letters"], 1, "{row}");
    assert!(
        row["state"]["last_dead_letter"]
            .as_str()
            .is_some_and(|w| w.contains("HTTP 400")),
        "{row}"
    );
    // Fixed receiver: resent, delivered once.
    r.set(json!({}));
    let id = dl["id"].as_u64().unwrap().to_string();
    let o = cli(&["dead-letters", "resend", &id]);
    assert!(o.status.success(), "{}", output_text(&o));
    r.wait_handled(8).await;
    tokio::time::sleep(Duration::from_secs(1)).await; // nothing more may come
    let all: Vec<Value> = r.handled();
    assert_eq!(
        all.iter()
            .filter(|l| l["sequence"] == poison.as_str())
            .count(),
        1,
        "{all:?}"
    );

    // Without a push instance, events that wait are a problem (exit 1), named.
    assert!(push.terminate().success(), "{}", push.log());
    w.emit(2, 4, 8).await;
    let text = eventually_value(
        Duration::from_secs(20),
        "status says nobody delivers",
        || {
            let o = cli(&["push", "status", "--dir", &dir]);
            async move {
                (o.status.code() == Some(1))
                    .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
            }
        },
    )
    .await;
    assert!(
        text.contains("no `mes-events push` delivers them"),
        "{text}"
    );
    w.stop().await;
}

#[tokio::test]
async fn push_killed_at_random_moments_loses_nothing_and_keeps_each_keys_order() {
    use rand::Rng;
    let port = free_port();
    let w = World::new(&[("crashy", system("crashy", port, ""))]).await;
    let r = Receiver::faulty("crashy", port).await;
    // A receiver taking 100 ms per event, so that every kill lands with requests in flight.
    r.set(json!({"sleep": 0.1}));
    let mut emitted = w.emit(30, 6, 0).await;
    let mut push = w.push();
    let mut rng = rand::rng();
    for round in 1..=5 {
        let before = r.handled().len();
        r.wait_handled(before + 1).await; // delivering
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..400))).await;
        push.kill9();
        // Newer events of the same keys, there at once for the next process, while the ones
        // the killed process held come back only after ack_wait.
        emitted.extend(w.emit(30, 6, round * 30).await);
        push = w.push();
    }
    r.set(json!({}));
    r.wait_handled(emitted.len()).await;
    assert_once_in_order("crashy", &r.lines(), &emitted);
    let again = r.lines().iter().filter(|l| l["handled"] == false).count();
    eprintln!(
        "{} events, {again} delivered again after a kill",
        emitted.len()
    );
    assert!(push.terminate().success(), "{}", push.log());
    w.stop().await;
}

#[tokio::test]
async fn two_instances_deliver_one_at_a_time_and_a_killed_or_frozen_one_is_replaced_within_10s() {
    let port = free_port();
    let w = World::new(&[("ha", system("ha", port, "takeover = \"2s\""))]).await;
    let r = Receiver::faulty("ha", port).await;
    let wall = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    // The first instance delivers; a second one stands by meanwhile.
    let mut a = w.push();
    let mut emitted = w.emit(12, 4, 0).await;
    r.wait_handled(12).await;
    let mut b = w.push();
    emitted.extend(w.emit(12, 4, 12).await);
    r.wait_handled(24).await;

    // The active one killed: the standby delivers within 10 s.
    let killed = wall();
    a.kill9();
    emitted.extend(w.emit(12, 4, 24).await);
    r.wait_handled(36).await;
    let first_of = |pid: u32, after: f64| {
        r.lines()
            .iter()
            .filter(|l| {
                l["sender"]
                    .as_str()
                    .is_some_and(|s| s.ends_with(&format!(":{pid}")))
            })
            .filter_map(|l| l["at"].as_f64())
            .find(|t| *t >= after)
    };
    let b_pid = b.child.id();
    let took = first_of(b_pid, killed).expect("the standby delivered") - killed;
    assert!(took <= 10.0, "the standby took over after {took:.1} s");
    eprintln!("took over from a killed instance in {took:.1} s");

    // The active one frozen (SIGSTOP): a third instance delivers within 10 s; the frozen one,
    // resumed, sends nothing of what it held.
    let mut c = w.push();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Slow answers: the active one holds events of every key when it is frozen.
    r.set(json!({"sleep": 0.2}));
    emitted.extend(w.emit(24, 4, 60).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let frozen = wall();
    unsafe {
        libc::kill(b_pid as i32, libc::SIGSTOP);
    }
    emitted.extend(w.emit(12, 4, 36).await);
    r.wait_handled(72).await;
    let took = first_of(c.child.id(), frozen).expect("the third delivered") - frozen;
    assert!(
        took <= 10.0,
        "the standby took over from a frozen one after {took:.1} s"
    );
    eprintln!("took over from a frozen instance in {took:.1} s");
    r.set(json!({}));
    unsafe {
        libc::kill(b_pid as i32, libc::SIGCONT);
    }
    emitted.extend(w.emit(12, 4, 48).await);
    r.wait_handled(emitted.len()).await;
    tokio::time::sleep(Duration::from_secs(3)).await; // what a zombie would send, it sends now
    let lines = r.lines();
    assert_once_in_order("ha", &lines, &emitted);
    // One at a time: the senders, in the order the receiver saw them, are the first, then the
    // second, then the third, never back.
    let mut turns: Vec<String> = Vec::new();
    let mut by_time = lines.clone();
    by_time.retain(|l| l["at"].is_f64());
    by_time.sort_by(|x, y| x["at"].as_f64().partial_cmp(&y["at"].as_f64()).unwrap());
    for l in &by_time {
        let s = l["sender"]
            .as_str()
            .unwrap_or("-")
            .rsplit(':')
            .next()
            .unwrap()
            .to_owned();
        if turns.last() != Some(&s) {
            turns.push(s);
        }
    }
    let pids: Vec<String> = [a.child.id(), b_pid, c.child.id()]
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert_eq!(turns, pids, "senders took turns otherwise:\n{by_time:#?}");
    for p in [&mut b, &mut c] {
        assert!(p.terminate().success(), "{}", p.log());
    }
    w.stop().await;
}

#[tokio::test]
async fn an_endpoint_asking_to_wait_uses_up_no_attempt_and_loses_nothing() {
    // Two attempts at most (max_deliver 2): were a 429 an attempt, the events would be dead
    // letters long before the endpoint takes them again.
    let port = free_port();
    let w = World::new(&[("busy", system("busy", port, r#"retry = ["100ms"]"#))]).await;
    let r = Receiver::faulty("busy", port).await;
    r.set(json!({"status": 429}));
    let emitted = w.emit(8, 4, 0).await;
    let mut push = w.push();
    r.wait_lines(
        |l| l.iter().filter(|v| v["status"] == 429).count() >= 8,
        "two 429s for each key",
    )
    .await;
    r.set(json!({}));
    r.wait_handled(8).await;
    assert_once_in_order("busy", &r.lines(), &emitted);
    let o = Command::new(env!("CARGO_BIN_EXE_mes-events"))
        .args(["dead-letters", "list", "--json"])
        .env("MES_EVENTS_NATS__URL", w.env.nats.url())
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    let dead: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    assert_eq!(dead, json!([]), "{}", output_text(&o));
    assert!(
        push.log().contains("the endpoint asks to wait"),
        "{}",
        push.log()
    );
    assert!(push.terminate().success(), "{}", push.log());
    w.stop().await;
}

#[tokio::test]
async fn batched_requests_keep_each_keys_order_single_out_a_poison_event_and_survive_failures_and_kills(
) {
    use rand::Rng;
    let port = free_port();
    let w = World::new(&[(
        "batch-hook",
        system(
            "batch-hook",
            port,
            r#"mode = "batched"
concurrency = 2
max_batch = 5
retry = ["200ms", "400ms", "800ms", "1600ms"]
pause_after = 3
pause = "1s""#,
        ),
    )])
    .await;
    let r = Receiver::faulty("batch-hook", port).await;
    let sequences_of = |lines: &[Value], pred: &dyn Fn(&Value) -> bool| -> Vec<String> {
        lines
            .iter()
            .filter(|l| pred(l))
            .map(|l| l["sequence"].as_str().unwrap_or("-").to_owned())
            .collect()
    };

    // A poison event among 40 events of 8 keys: PO-1's second. The receiver refuses any request
    // holding it (400), so the batch it is in is refused as a whole.
    let mut emitted = w.emit(40, 8, 0).await;
    let poison = emitted[9].1.clone();
    r.set(json!({"sleep": 0.05, "poison": [poison]}));
    let mut push = w.push();
    r.wait_handled(39).await;
    let lines = r.lines();
    assert!(
        sequences_of(&lines, &|l| l["handled"] == true)
            .iter()
            .all(|s| *s != poison),
        "the poison event was handled"
    );
    // Batches formed, within the declared size, each of other keys.
    let largest = lines.iter().filter_map(|l| l["batch"].as_u64()).max();
    assert!(
        largest.is_some_and(|n| (2..=5).contains(&n)),
        "batch sizes: {largest:?}"
    );
    // Events refused along with the poison one in a batch were singled out and delivered.
    let refused_with_it = sequences_of(&lines, &|l| {
        l["status"] == 400 && l["sequence"] != poison.as_str()
    });
    assert!(
        !refused_with_it.is_empty(),
        "the poison event never shared a batch: {lines:#?}"
    );
    // ... in the very next request that held them: not retried later, as the poison event is.
    for seq in &refused_with_it {
        let after: Vec<&Value> = lines
            .iter()
            .filter(|l| l["sequence"] == seq.as_str())
            .skip_while(|l| l["status"] != 400)
            .skip(1)
            .collect();
        assert!(
            after.first().is_some_and(|l| l["handled"] == true && l["batch"] == 1),
            "{seq}, refused with the poison event, was not singled out and delivered next: {after:#?}"
        );
    }
    // Its key went on after it.
    assert!(sequences_of(&lines, &|l| l["handled"] == true).contains(&emitted[17].1));
    let cli = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_mes-events"))
            .args(args)
            .env("MES_EVENTS_NATS__URL", w.env.nats.url())
            .current_dir(std::env::temp_dir())
            .output()
            .unwrap()
    };
    let list = eventually_value(Duration::from_secs(20), "the dead letter", || async {
        let o = cli(&["dead-letters", "list", "--json"]);
        let v: Value = serde_json::from_slice(&o.stdout).ok()?;
        let a = v.as_array()?.clone();
        (!a.is_empty()).then_some(a)
    })
    .await;
    assert_eq!(list.len(), 1, "{list:?}");
    let why = list[0]["why"].as_str().unwrap_or_default();
    assert!(
        why.contains("HTTP 400")
            && why.contains("unknown order PO-1")
            && why.contains("attempt 5 of 5"),
        "{}",
        list[0]
    );

    // The endpoint fails (500) for a moment while events flow, then recovers.
    r.set(json!({"sleep": 0.05, "status": 500}));
    emitted.extend(w.emit(16, 8, 40).await);
    r.wait_lines(|l| l.iter().any(|v| v["status"] == 500), "500s answered")
        .await;
    r.set(json!({"sleep": 0.05}));

    // Killed with batches in flight, newer events arriving each time.
    let mut rng = rand::rng();
    for round in 0..3 {
        let before = r.handled().len();
        r.wait_handled(before + 1).await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
        push.kill9();
        emitted.extend(w.emit(16, 8, 56 + round * 16).await);
        push = w.push();
    }
    r.wait_handled(emitted.len() - 1).await;

    // The receiver fixed, the dead letter resent: delivered once.
    r.set(json!({}));
    let id = list[0]["id"].as_u64().unwrap().to_string();
    let o = cli(&["dead-letters", "resend", &id]);
    assert!(o.status.success(), "{}", output_text(&o));
    r.wait_handled(emitted.len()).await;
    tokio::time::sleep(Duration::from_secs(1)).await; // nothing more may come
    let lines = r.lines();
    let handled = sequences_of(&lines, &|l| l["handled"] == true);
    assert_eq!(handled.iter().filter(|s| **s == poison).count(), 1);
    // Every other event once, each key in order (the resent one comes after its key's newer
    // events, as a resend does).
    let others: Vec<Value> = lines
        .into_iter()
        .filter(|l| l["sequence"] != poison.as_str())
        .collect();
    let emitted_others: Vec<(String, String)> = emitted
        .iter()
        .filter(|(_, s)| *s != poison)
        .cloned()
        .collect();
    assert_handled_once_in_order("batch-hook", &others, &emitted_others);
    let again = others
        .iter()
        .filter(|l| l["handled"] == false && l["status"] == 204)
        .count();
    eprintln!(
        "{} events, largest batch {largest:?}, {again} delivered again after a failure or kill",
        emitted.len()
    );
    assert!(push.terminate().success(), "{}", push.log());
    w.stop().await;
}
