//! What a receiver gets: signed, decodable events in every mode; the same events, in order,
//! after an outage; a poison event's dead letter; waits the endpoint asks for.

use super::*;

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
    let list = w.dead_letters(1, Duration::from_secs(10)).await;
    assert_eq!(list.len(), 1, "{list:?}");
    let dl = &list[0];
    assert_eq!(dl["consumer"], "erp-hook");
    assert_eq!(dl["reason"], "terminated");
    let why = dl["why"].as_str().unwrap_or_default();
    assert!(
        why.contains("HTTP 400") && why.contains("unknown order") && why.contains("attempt 3 of 3"),
        "{dl}"
    );
    let text = String::from_utf8_lossy(&w.cli(&["dead-letters", "list"]).stdout).into_owned();
    assert!(text.contains("why: HTTP 400"), "{text}");

    // `push status`: an instance delivers, nothing waits; the dead letter and why.
    let dir = w.decl.path().to_str().unwrap().to_owned();
    let o = w.cli(&["push", "status", "--dir", &dir, "--json"]);
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
    let o = w.cli(&["dead-letters", "resend", &id]);
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
            let o = w.cli(&["push", "status", "--dir", &dir]);
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
