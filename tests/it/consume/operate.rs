//! The commands on a system's consumer: dead letters and resend, replay (and what it refuses),
//! tail.

use super::*;

/// A declaration folder: the shipped streams and one system.
fn decl_dir_with(system: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("nats/streams.toml");
    std::fs::copy(shipped, dir.path().join("streams.toml")).unwrap();
    std::fs::write(dir.path().join("system.toml"), system).unwrap();
    dir
}

/// Servers up, the shipped streams (with MES_DEAD_LETTERS) and one system provisioned.
async fn provisioned(system: &str) -> Env {
    let env = Env::without_streams().await;
    let dir = decl_dir_with(system);
    let decl = mes_events::provision::load_dir(dir.path()).unwrap();
    provision(&env.js().await, &decl).await;
    env
}

const ORDERS: &str = r#"
[system]
name = "orders"
[[consumer]]
stream = "MES_EVENTS"
filter_subjects = ["mes.*.*.*.*.processorder.>"]
deliver = "all"
max_deliver = 3
backoff = ["1s", "1s"]
"#;

async fn emit_one(db: &TestDb, key: &str) -> i64 {
    let c = db.client().await;
    emit_order(&c, key).await
}

#[tokio::test]
async fn a_poison_event_becomes_a_dead_letter_others_flow_and_a_resend_is_handled_once() {
    let env = provisioned(ORDERS).await;
    // A relay process: what it says about the resend is checked below.
    let mut relay = RelayProcess::spawn(&env.cfg, &[("RUST_LOG", "info")]);
    let poison = emit_one(&env.db, "P").await;
    let mut later = vec![emit_one(&env.db, "P").await];
    for i in 0..20 {
        later.push(emit_one(&env.db, &format!("Q{i}")).await);
    }
    let poison_seq = format!("{poison:020}");

    let fixed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let log: Log = Arc::default();
    let stop = CancellationToken::new();
    let handler = {
        let (log, fixed, poison_seq) = (log.clone(), fixed.clone(), poison_seq.clone());
        move |d: Delivery| {
            let (log, fixed, poison_seq) = (log.clone(), fixed.clone(), poison_seq.clone());
            async move {
                if sequence(&d) == poison_seq && !fixed.load(std::sync::atomic::Ordering::SeqCst) {
                    return Outcome::Retry(Duration::from_millis(50));
                }
                log.lock().unwrap().push((d.key.clone(), sequence(&d)));
                Outcome::Done
            }
        }
    };
    let js = env.js().await;
    let consumer = tokio::spawn({
        let js = js.clone();
        let stop = stop.clone();
        async move {
            consume::run(
                &js,
                "MES_EVENTS",
                "orders",
                Options::default(),
                handler,
                stop,
            )
            .await
        }
    });

    // Everything else flows (the poison's own key right after it is given up on).
    eventually(
        Duration::from_secs(60),
        "the other 21 events handled",
        || async { log.lock().unwrap().len() == 21 },
    )
    .await;
    // The server announces it when it would redeliver it after the final nak.
    eventually(
        Duration::from_secs(30),
        "the poison event in the dead letters",
        || async {
            !mes_events::read::deadletter::list(&js, "MES_DEAD_LETTERS")
                .await
                .unwrap()
                .is_empty()
        },
    )
    .await;
    let dead = mes_events::read::deadletter::list(&js, "MES_DEAD_LETTERS")
        .await
        .unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    let d = &dead[0];
    assert_eq!(
        (d.reason.as_str(), d.consumer.as_str(), d.deliveries),
        ("max_deliveries", "orders", 3)
    );
    assert_eq!(d.event_subject.as_deref(), Some("P"));
    // As the operator lists it: when, and the event's own time and data.
    let listed = std::process::Command::new(env!("CARGO_BIN_EXE_mes-events"))
        .args(["dead-letters", "list", "--json"])
        .env("MES_EVENTS_NATS__URL", env.nats.url())
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert!(listed[0]["at"].is_string(), "{listed:#}");
    assert!(listed[0]["event_time"].is_string(), "{listed:#}");
    assert_eq!(listed[0]["data"]["orderId"], "P", "{listed:#}");
    assert!(!log.lock().unwrap().iter().any(|(_, s)| *s == poison_seq));

    // Fixed, sent back: handled once, by this consumer only; the dead letter is gone.
    fixed.store(true, std::sync::atomic::Ordering::SeqCst);
    let subject = mes_events::read::deadletter::resend(&js, "MES_DEAD_LETTERS", d.id)
        .await
        .unwrap();
    assert!(
        subject.starts_with("mes-redeliver.MES_EVENTS.orders."),
        "{subject}"
    );
    eventually(
        Duration::from_secs(30),
        "the resent event handled",
        || async { log.lock().unwrap().iter().any(|(_, s)| *s == poison_seq) },
    )
    .await;
    assert!(mes_events::read::deadletter::list(&js, "MES_DEAD_LETTERS")
        .await
        .unwrap()
        .is_empty());
    // A second resend of the same (now removed) dead letter is refused.
    assert!(
        mes_events::read::deadletter::resend(&js, "MES_DEAD_LETTERS", d.id)
            .await
            .is_err()
    );
    // The resend went into the relay's stream: the relay's next publish finds the stream moved
    // on, and says so as the routine it is, not as a fault.
    let after = emit_one(&env.db, "Q-after").await;
    eventually(
        Duration::from_secs(30),
        "an event after the resend",
        || async {
            log.lock()
                .unwrap()
                .iter()
                .any(|(_, s)| *s == format!("{after:020}"))
        },
    )
    .await;
    let said = relay.stderr();
    // (Besides the development server's own: no authorization at all.)
    assert!(
        !said
            .lines()
            .any(|l| (l.contains(" WARN ") || l.contains(" ERROR "))
                && !l.contains("no credentials")),
        "a resend is no fault:\n{said}"
    );
    assert!(said.contains("did not publish"), "{said}");
    stop.cancel();
    consumer.await.unwrap().unwrap();
    assert!(relay.terminate().await.success());
    let handled = log.lock().unwrap();
    assert_eq!(
        handled.iter().filter(|(_, s)| *s == poison_seq).count(),
        1,
        "processed once"
    );
    assert_eq!(handled.len(), 23);
}

#[tokio::test]
async fn replay_from_a_timestamp_redelivers_exactly_the_events_from_then_on() {
    let env = provisioned(ORDERS).await;
    let relay = env.spawn_relay().await;
    let js = env.js().await;
    let consume_all = |n: usize| consume_n(&js, "orders", n, Duration::from_secs(60));
    let mut before = Vec::new();
    for i in 0..50 {
        before.push(emit_one(&env.db, &format!("A{}", i % 5)).await);
    }
    assert_eq!(consume_all(50).await.len(), 50);
    // The boundary: a gap on both sides, so server timestamps fall clearly before or after.
    tokio::time::sleep(Duration::from_millis(100)).await; // the scenario's time gap, not a wait
    let from = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut after = Vec::new();
    for i in 0..30 {
        after.push(emit_one(&env.db, &format!("B{}", i % 3)).await);
    }
    assert_eq!(consume_all(30).await.len(), 30);

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mes-events"))
        .args([
            "replay",
            "orders",
            "--stream",
            "MES_EVENTS",
            "--from",
            &from.to_rfc3339(),
            "--yes",
        ])
        .env("MES_EVENTS_NATS__URL", env.nats.url())
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("30 event(s) will be delivered to it again"),
        "{text}"
    );

    let replayed: Vec<String> = consume_all(30).await.into_iter().map(|(_, s)| s).collect();
    let mut expected: Vec<String> = after.iter().map(|id| format!("{id:020}")).collect();
    let mut got = replayed.clone();
    got.sort();
    expected.sort();
    assert_eq!(
        got, expected,
        "exactly the events from that time on, none before"
    );
    relay.stop().await;
    // Provisioning does not call the replayed consumer's start point drift.
    let dir = decl_dir_with(ORDERS);
    let decl = mes_events::provision::load_dir(dir.path()).unwrap();
    let plan = mes_events::provision::plan(&js, &decl, Default::default())
        .await
        .unwrap();
    assert!(!plan.pending(), "{plan}");
}

#[tokio::test]
async fn tail_shows_live_events_and_a_consumers_next_events_without_touching_it() {
    let env = Env::new().await;
    let relay = env.spawn_relay().await;
    durable(&env, "watched", -1).await;
    for i in 0..5 {
        emit_one(&env.db, &format!("T{i}")).await;
    }
    env.drained(Duration::from_secs(30), "published").await;
    let tail = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_mes-events"))
            .arg("tail")
            .args(args)
            .env("MES_EVENTS_NATS__URL", env.nats.url())
            .current_dir(std::env::temp_dir())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // From a consumer's position: its next five events, as JSON.
    let out = tail(&["--consumer", "watched", "--count", "5", "--json"])
        .wait_with_output()
        .unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let keys: Vec<&str> = lines
        .iter()
        .map(|e| e["subject"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["T0", "T1", "T2", "T3", "T4"]);
    let info = env
        .js()
        .await
        .get_stream("MES_EVENTS")
        .await
        .unwrap()
        .consumer_info("watched")
        .await
        .unwrap();
    assert_eq!(
        (
            info.num_ack_pending,
            info.num_pending,
            info.delivered.stream_sequence
        ),
        (0, 5, 0),
        "the consumer was not touched"
    );

    // Live from a wildcard: keep emitting until it has shown three.
    let mut live = tail(&["mes.bsl.>", "--count", "3"]);
    let mut n = 0;
    while live.try_wait().unwrap().is_none() {
        assert!(n < 200, "tail did not show 3 live events");
        emit_one(&env.db, &format!("L{n}")).await;
        n += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = live.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(
        text.lines()
            .all(|l| l.contains("processorder.statuschanged.v1  L")),
        "{text}"
    );
    relay.stop().await;
}

/// `mes-events ARGS` against `env`'s NATS server, from a folder that is not the repository.
fn cli(env: &Env, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_mes-events"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("MES_EVENTS_NATS__URL", env.nats.url())
        .env("MES_EVENTS_DATABASE__URL", &env.cfg.database.url)
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap()
}

#[tokio::test]
async fn replay_refuses_a_start_beyond_the_tail_or_in_the_future_and_names_what_it_skips() {
    let env = provisioned(ORDERS).await;
    let relay = env.spawn_relay().await;
    let js = env.js().await;
    for i in 0..6 {
        emit_one(&env.db, &format!("R{i}")).await;
    }
    env.drained(Duration::from_secs(30), "published").await;
    relay.stop().await;
    let position = || async {
        let i = js
            .get_stream("MES_EVENTS")
            .await
            .unwrap()
            .consumer_info("orders")
            .await
            .unwrap();
        (
            i.num_pending,
            i.ack_floor.stream_sequence,
            i.delivered.stream_sequence,
            i.config.deliver_policy,
        )
    };
    let before = position().await;
    assert_eq!(before.0, 6);

    // Beyond the tail, and in the future: refused (exit 2), nothing changed.
    let future = (chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc3339();
    for (from, says) in [
        ("999", "stream sequence 999 is beyond the stream's last (6)"),
        (future.as_str(), "is in the future"),
    ] {
        let o = cli(&env, &["replay", "orders", "--from", from, "--yes"]);
        let text = output_text(&o);
        assert_eq!(o.status.code(), Some(2), "{text}");
        assert!(
            text.contains(says) && text.contains("--allow-skip"),
            "{text}"
        );
        assert_eq!(position().await, before, "nothing changed: {text}");
    }
    // Forward within the stream: what is skipped is said before it happens.
    let o = cli(&env, &["replay", "orders", "--from", "5", "--yes"]);
    let text = output_text(&o);
    assert!(o.status.success(), "{text}");
    assert!(
        text.contains("2 event(s) will be delivered to it again; 4 event(s) it has not acknowledged will be skipped"),
        "{text}"
    );
    // Beyond the tail with the flag: allowed, and the skip named.
    let o = cli(
        &env,
        &["replay", "orders", "--from", "999", "--yes", "--allow-skip"],
    );
    let text = output_text(&o);
    assert!(o.status.success(), "{text}");
    assert!(
        text.contains("0 event(s) will be delivered to it again; 2 event(s) it has not acknowledged will be skipped")
            && text.contains("allowed (--allow-skip)"),
        "{text}"
    );

    // After the replay, a change of the declared deliver policy shows in plan, and apply
    // refuses it with exit 5, naming what it applied (a new system's consumer) and what not.
    let dir = decl_dir_with(ORDERS);
    let d = dir.path().to_str().unwrap();
    let o = cli(&env, &["provision", "plan", "--dir", d]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "the replay alone is no drift: {}",
        output_text(&o)
    );
    let changed = ORDERS
        .replace("deliver = \"all\"", "deliver = \"new\"")
        .replace(
            "[[consumer]]",
            "[[consumer]]\ndescription = \"orders, new only\"",
        );
    std::fs::write(dir.path().join("system.toml"), changed).unwrap();
    std::fs::write(
        dir.path().join("audit.toml"),
        ORDERS.replace("name = \"orders\"", "name = \"audit\""),
    )
    .unwrap();
    let o = cli(&env, &["provision", "plan", "--dir", d]);
    let text = output_text(&o);
    assert_eq!(o.status.code(), Some(4), "{text}");
    assert!(text.contains("deliver") && text.contains("new"), "{text}");
    let o = cli(&env, &["provision", "apply", "--dir", d]);
    let text = output_text(&o);
    assert_eq!(o.status.code(), Some(5), "{text}");
    assert!(
        text.contains("refused: consumer MES_EVENTS/orders: deliver (all -> new)"),
        "{text}"
    );
    assert!(
        text.contains("applied: create consumer MES_EVENTS/audit"),
        "{text}"
    );
}

/// nats-server starts a `by_start_time` consumer with several filters late when one filter's
/// first message lies after the start time and another has messages before it: here the batch
/// filter's first message comes after two order events of the replayed period. `replay` finds
/// the start sequence itself: the count it announces is what the consumer then has, from the
/// first event at or after the time, with several filters and with one.
#[tokio::test]
async fn replay_by_time_with_several_filters_skips_nothing_and_counts_right() {
    use futures::StreamExt;
    const TWO: &str = r#"
[system]
name = "two"
[[consumer]]
stream = "MES_EVENTS"
filter_subjects = ["mes.*.*.*.*.processorder.>", "mes.*.*.*.*.batch.>"]
[[consumer]]
name = "one"
stream = "MES_EVENTS"
filter_subjects = ["mes.*.*.*.*.processorder.>"]
"#;
    let env = provisioned(TWO).await;
    let js = env.js().await;
    let publish = |subject: &'static str| {
        let js = js.clone();
        async move {
            js.publish(subject, "{}".into())
                .await
                .unwrap()
                .await
                .unwrap()
                .sequence
        }
    };
    publish("mes.bsl.a.b.c.processorder.statuschanged.v1.O1").await;
    // The boundary: a gap on both sides, so server timestamps fall clearly before or after.
    tokio::time::sleep(Duration::from_millis(100)).await; // the scenario's time gap, not a wait
    let from = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let o2 = publish("mes.bsl.a.b.c.processorder.statuschanged.v1.O2").await;
    publish("mes.bsl.a.b.c.processorder.statuschanged.v1.O3").await;
    publish("mes.bsl.a.b.c.batch.phasechanged.v1.B1").await;
    publish("mes.bsl.a.b.c.processorder.statuschanged.v1.O4").await;

    for (consumer, expected) in [("two", 4), ("one", 3)] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mes-events"))
            .args(["replay", consumer, "--from", &from.to_rfc3339(), "--yes"])
            .env("MES_EVENTS_NATS__URL", env.nats.url())
            .current_dir(std::env::temp_dir())
            .output()
            .unwrap();
        let text = output_text(&out);
        assert!(out.status.success(), "{text}");
        assert!(
            text.contains(&format!(
                "{expected} event(s) will be delivered to it again"
            )),
            "{consumer}: {text}"
        );
        let mut c = js
            .get_consumer_from_stream::<async_nats::jetstream::consumer::pull::Config, _, _>(
                consumer,
                "MES_EVENTS",
            )
            .await
            .unwrap();
        let info = c.info().await.unwrap();
        assert_eq!(info.num_pending, expected, "{consumer}: {info:?}");
        let first = c
            .fetch()
            .max_messages(1)
            .messages()
            .await
            .unwrap()
            .next()
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            first.info().unwrap().stream_sequence,
            o2,
            "{consumer} starts at the first event stored after the time"
        );
    }

    // A consumer declared from that time starts there too, and is in sync with its declaration.
    let since = format!(
        r#"
[system]
name = "since"
[[consumer]]
stream = "MES_EVENTS"
filter_subjects = ["mes.*.*.*.*.processorder.>", "mes.*.*.*.*.batch.>"]
deliver = "by_start_time"
start_time = "{}"
"#,
        from.to_rfc3339()
    );
    let dir = decl_dir_with(&since);
    let decl = mes_events::provision::load_dir(dir.path()).unwrap();
    provision(&js, &decl).await;
    let mut c = js
        .get_consumer_from_stream::<async_nats::jetstream::consumer::pull::Config, _, _>(
            "since",
            "MES_EVENTS",
        )
        .await
        .unwrap();
    assert_eq!(
        c.info().await.unwrap().num_pending,
        4,
        "declared from the time"
    );
    let plan = mes_events::provision::plan(&js, &decl, Default::default())
        .await
        .unwrap();
    assert!(!plan.pending(), "{plan}");
}
