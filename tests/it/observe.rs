//! What operators see of a running relay process: its `/metrics` read by an independent parser
//! (Python's `prometheus_client`, OpenMetrics), its counters against what it did, and
//! `/readyz` through NATS down and back, a stream deleted, and a standby.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::*;

const HINT: &str =
    "run scripts/test.sh: it installs prometheus_client from tests/interop/requirements.txt";

/// Every sample of a scrape, by sample name, parsed by prometheus_client's OpenMetrics parser
/// (which also holds the text to the format's rules: `_total` counters, units, `# EOF`).
/// Samples by name: each with its labels and value.
pub(crate) type Scrape = BTreeMap<String, Vec<(BTreeMap<String, String>, f64)>>;

pub(crate) fn scrape(port: u16) -> Scrape {
    let (status, text) = http_status(port, "/metrics").expect("the metrics endpoint answers");
    assert_eq!(status, 200, "{text}");
    let mut child = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, json\n\
             from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
             out = {}\n\
             for f in text_string_to_metric_families(sys.stdin.read()):\n\
             \x20   for s in f.samples:\n\
             \x20       out.setdefault(s.name, []).append([s.labels, s.value])\n\
             print(json.dumps(out))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("python3: {e}: {HINT}"));
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the parser refused the scrape ({HINT}): {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `promtool check metrics`: Prometheus's own linter for names, units and help texts.
pub(crate) fn promtool_lint(port: u16) {
    let (_, text) = http_status(port, "/metrics").expect("the metrics endpoint answers");
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("promtool: {e}: run scripts/test.sh: it installs Debian's prometheus package")
        });
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    // promtool reads the classic text format, where a counter's HELP names its `_total`
    // sample; OpenMetrics names the family (`# HELP x`, samples `x_total`). Only that
    // difference is let through: every other finding fails the test.
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let findings: Vec<&str> = said
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| {
            let family = l
                .strip_suffix(" no help text")
                .and_then(|n| n.strip_suffix("_total"));
            !family.is_some_and(|f| text.contains(&format!("# HELP {f} ")))
        })
        .collect();
    assert!(
        findings.is_empty(),
        "promtool check metrics: {findings:?}\n{text}"
    );
}

pub(crate) fn total(m: &Scrape, name: &str) -> f64 {
    m.get(name).map_or(0.0, |v| v.iter().map(|(_, x)| x).sum())
}

fn ready(port: u16) -> (u16, String) {
    http_status(port, "/readyz").unwrap_or((0, "nothing answers".into()))
}

fn spawn(env: &Env, port: u16) -> RelayProcess {
    RelayProcess::spawn(
        &env.cfg,
        &[
            ("RUST_LOG", "info"),
            ("MES_EVENTS_HTTP__ADDRESS", &format!("127.0.0.1:{port}")),
            ("MES_EVENTS_HTTP__READY_GRACE", "1s"),
            ("MES_EVENTS_HTTP__READY_MAX_PENDING_AGE", "4s"),
        ],
    )
}

#[tokio::test]
async fn metrics_count_what_the_relay_did_and_readiness_follows_its_faults() {
    let mut env = Env::new().await;
    let port = free_port();
    let mut relay = spawn(&env, port);
    eventually(Duration::from_secs(20), "ready and active", || async {
        ready(port) == (200, "ready: active\n".into())
    })
    .await;
    let (status, body) = http_status(port, "/healthz").unwrap();
    assert_eq!(status, 200, "{body}");

    // 30 events, and 2 rows the catalog refuses (each on a key of its own).
    let c = env.db.client().await;
    for i in 0..30 {
        emit_order(&c, &format!("PO-{}", i % 5)).await;
    }
    for key in ["BAD-1", "BAD-2"] {
        mes_events::store::write::emit(&c, ORDER_TYPE, key, "{\"nope\":1}", &Default::default())
            .await
            .unwrap();
    }
    env.drained(Duration::from_secs(30), "published").await;
    let m = eventually_value(Duration::from_secs(10), "counters caught up", || async {
        let m = scrape(port);
        (total(&m, "mes_events_events_published_total") == 30.0
            && total(&m, "mes_events_rows_rejected_total") == 2.0)
            .then_some(m)
    })
    .await;
    assert_eq!(total(&m, "mes_events_relay_active"), 1.0);
    promtool_lint(port);
    assert!(total(&m, "mes_events_publish_ack_seconds_count") >= 30.0);
    assert_eq!(
        m["mes_events_rows_rejected_total"][0].0["kind"], "schema",
        "{m:?}"
    );

    // NATS down: an event waits, its age grows, and past the grace the relay is not ready.
    env.nats.kill().await;
    emit_order(&c, "PO-late").await;
    let first = eventually_value(Duration::from_secs(10), "a pending row's age", || async {
        let a = total(
            &scrape(port),
            "mes_events_outbox_oldest_pending_age_seconds",
        );
        (a > 0.0).then_some(a)
    })
    .await;
    eventually(
        Duration::from_secs(15),
        "not ready without NATS",
        || async {
            let (s, why) = ready(port);
            s == 503 && why.contains("NATS unreachable")
        },
    )
    .await;
    let later = total(
        &scrape(port),
        "mes_events_outbox_oldest_pending_age_seconds",
    );
    assert!(
        later > first,
        "the age grows while NATS is down: {first} then {later}"
    );

    // Back: published, the age falls to 0, ready again.
    env.nats.restart().await;
    eventually(
        Duration::from_secs(30),
        "ready again, nothing waiting",
        || async {
            let m = scrape(port);
            // The event sent while NATS was away landed once it was back, its PubAck lost:
            // the reconciliation found it. Either way it counts once.
            let landed = total(&m, "mes_events_events_published_total")
                + total(&m, "mes_events_reconciled_rows_total");
            ready(port).0 == 200
                && total(&m, "mes_events_outbox_oldest_pending_age_seconds") == 0.0
                && landed == 31.0
        },
    )
    .await;

    // A standby is ready as a standby.
    let standby_port = free_port();
    let mut standby = spawn(&env, standby_port);
    eventually(Duration::from_secs(20), "the standby is ready", || async {
        ready(standby_port) == (200, "ready: standby\n".into())
    })
    .await;

    // A stream deleted under the relay: not ready, and the message says what to run; its
    // events wait while the other stream's go on.
    let js = env.js().await;
    emit_pv(&c, "before").await;
    env.drained(Duration::from_secs(30), "a PV event published")
        .await;
    js.delete_stream("MES_PV").await.unwrap();
    let mut waiting = Vec::new();
    for i in 0..5 {
        waiting.push(emit_pv(&c, &format!("pv-{i}")).await);
    }
    eventually(
        Duration::from_secs(15),
        "not ready without MES_PV",
        || async {
            let (s, why) = ready(port);
            s == 503 && why.contains("stream MES_PV missing") && why.contains("provision apply")
        },
    )
    .await;
    // Its events waiting past http.ready_max_pending_age: that too is said.
    eventually(
        Duration::from_secs(15),
        "not ready: the oldest pending row too old",
        || async {
            let (s, why) = ready(port);
            s == 503
                && why.contains("the oldest pending row is")
                && why.contains("(http.ready_max_pending_age = 4s)")
        },
    )
    .await;
    let before = read_stream(&js, "MES_EVENTS").await.len();
    for i in 0..10 {
        emit_order(&c, &format!("PO-after-{i}")).await;
        emit_pv(&c, &format!("pv-after-{i}")).await;
    }
    eventually(
        Duration::from_secs(30),
        "MES_EVENTS's events delivered while MES_PV is missing",
        || async { read_stream(&js, "MES_EVENTS").await.len() == before + 10 },
    )
    .await;
    assert_eq!(pending(&env.db).await, 15, "MES_PV's events wait, pending");
    let m = scrape(port);
    let accepting = &m["mes_events_stream_accepting"];
    assert!(
        accepting
            .iter()
            .any(|(l, v)| l["stream"] == "MES_PV" && *v == 0.0),
        "{accepting:?}"
    );
    // The stream back: its events go out, once each, in order; ready again.
    create_streams_named(&js, &["MES_PV"]).await;
    env.drained(Duration::from_secs(60), "MES_PV's events published")
        .await;
    let pv = read_stream(&js, "MES_PV").await;
    assert_eq!(pv.len(), 15, "each waiting event once in the new stream");
    let ids: Vec<i64> = pv.iter().map(|p| p.outbox_id).collect();
    assert_eq!(&ids[..5], &waiting[..], "in the order written");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    eventually(
        Duration::from_secs(20),
        "ready once MES_PV is back",
        || async { ready(port).0 == 200 },
    )
    .await;
    assert!(standby.terminate().await.success());
    assert!(relay.terminate().await.success());
    // One ERROR when it went missing, not one per retry.
    let log = relay.stderr();
    assert_eq!(
        log.matches("stream missing: the events routed to it wait")
            .count(),
        1,
        "{log}"
    );
}

#[test]
fn the_grafana_dashboard_asks_only_for_metrics_the_relay_has() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/ops/grafana/mes-events.json");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("valid JSON");
    // Every series the relay exposes, with the suffixes Prometheus adds. A labelled family shows
    // only once it has a series: give each one (in this test process's registry only).
    let m = mes_events::metrics::get();
    let stream = || "MES_EVENTS".to_string();
    m.published
        .get_or_create(&mes_events::metrics::Published {
            stream: stream(),
            r#type: "t".into(),
        })
        .inc_by(0);
    m.rejected
        .get_or_create(&mes_events::metrics::Kind { kind: "k".into() })
        .inc_by(0);
    m.stream_last_sequence
        .get_or_create(&mes_events::metrics::Stream { stream: stream() })
        .set(0);
    m.stream_accepting
        .get_or_create(&mes_events::metrics::Stream { stream: stream() })
        .set(1);
    for family in [
        &m.stream_regressions,
        &m.events_restored,
        &m.events_unrestorable,
    ] {
        family
            .get_or_create(&mes_events::metrics::Stream { stream: stream() })
            .inc_by(0);
    }
    let text = mes_events::metrics::render();
    let mut known = std::collections::BTreeSet::new();
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let mut w = line.split_whitespace().skip(2);
        let (name, kind) = (w.next().unwrap(), w.next().unwrap());
        known.insert(name.to_owned());
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_count", "_sum"],
            _ => &[],
        };
        for s in suffixes {
            known.insert(format!("{name}{s}"));
        }
    }
    let mut asked = 0;
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("mes_events_") {
                    asked += 1;
                    assert!(
                        known.contains(word),
                        "panel {:?} asks for {word}, which the relay does not expose: {known:?}",
                        p["title"]
                    );
                }
            }
        }
    }
    assert!(asked >= 15, "the dashboard asks for the relay's metrics");
}
