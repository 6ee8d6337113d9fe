//! Bad events never pass and are never lost: a row that cannot become a valid event is kept as
//! rejected with its reason, other keys go on, and its key's later rows wait until it is retried
//! (then all go out in order) or discarded.

use std::collections::HashMap;
use std::time::Duration;

use mes_events::store::write::EmitOptions;
use mes_events::store::{operator, write};

use crate::support::*;

async fn emit(db: &TestDb, ty: &str, key: &str, data: &str) -> i64 {
    let c = db.client().await;
    write::emit(&c, ty, key, data, &EmitOptions::default())
        .await
        .unwrap()
}

fn pv_example() -> (String, serde_json::Value) {
    let (ty, field, data) = crate::catalog::valid_examples()
        .into_iter()
        .find(|(ty, _, _)| ty.ends_with(".processvariable.changed.v1"))
        .unwrap();
    let key = data[&field].as_str().unwrap().to_owned();
    assert_eq!(ty, "io.mesevents.mes.processvariable.changed.v1");
    (key, data)
}

async fn published_ids(js: &async_nats::jetstream::Context) -> Vec<i64> {
    read_stream(js, "MES_EVENTS")
        .await
        .iter()
        .map(|p| p.outbox_id)
        .collect()
}

#[tokio::test]
async fn each_rejection_reason_keeps_the_row_holds_its_key_and_lets_others_through() {
    let env = Env::new().await;
    let mut cfg = env.cfg.clone();
    cfg.relay.streams = vec!["MES_EVENTS".into()]; // process variables have no stream here
    let relay = spawn_relay(cfg, &env.nats.url()).await;
    let js = env.js().await;

    let a1 = emit(&env.db, ORDER_TYPE, "A", &order_data("A")).await;
    let a2 = emit(
        &env.db,
        ORDER_TYPE,
        "A",
        &order_data("A").replace("running", "runing"),
    )
    .await;
    let a3 = emit(&env.db, ORDER_TYPE, "A", &order_data("A")).await;
    let a4 = emit(&env.db, ORDER_TYPE, "A", &order_data("A")).await;
    let c1 = emit(
        &env.db,
        "io.mesevents.mes.processorder.exploded.v1",
        "C",
        &order_data("C"),
    )
    .await;
    let c2 = emit(&env.db, ORDER_TYPE, "C", &order_data("C")).await;
    let mut big: serde_json::Value = serde_json::from_str(&order_data("D")).unwrap();
    big["note"] = "x".repeat(1_100_000).into(); // over the server's 1 MiB max_payload
    let d1 = emit(&env.db, ORDER_TYPE, "D", &big.to_string()).await;
    let d2 = emit(&env.db, ORDER_TYPE, "D", &order_data("D")).await;
    let (pv_key, pv) = pv_example();
    let e1 = emit(
        &env.db,
        "io.mesevents.mes.processvariable.changed.v1",
        &pv_key,
        &pv.to_string(),
    )
    .await;
    let f1 = emit(&env.db, ORDER_TYPE, "F", &order_data("not-F")).await;
    let b: Vec<i64> = [
        emit(&env.db, ORDER_TYPE, "B", &order_data("B")).await,
        emit(&env.db, ORDER_TYPE, "B", &order_data("B")).await,
        emit(&env.db, ORDER_TYPE, "B", &order_data("B")).await,
    ]
    .into();

    let db = env.db.client().await;
    eventually(
        Duration::from_secs(30),
        "five rejections recorded, other keys published",
        || async {
            operator::rejected(&db).await.unwrap().len() == 5 && published_ids(&js).await.len() == 4
        },
    )
    .await;
    // Other keys went through; the bad rows' keys stopped right before them.
    let ids = published_ids(&js).await;
    assert_eq!(
        ids,
        [vec![a1], b.clone()].concat(),
        "only A's first event and B's events went out"
    );

    let rejected: HashMap<i64, operator::RejectedRow> = operator::rejected(&db)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.id, r))
        .collect();
    let reason = |id: i64| {
        let r = &rejected[&id];
        (
            r.kind.as_str(),
            r.path.as_deref(),
            r.rule.as_deref(),
            r.waiting,
        )
    };
    assert_eq!(reason(a2), ("schema", Some("/status"), Some("enum"), 2));
    assert_eq!(reason(c1), ("unknown_type", None, None, 1));
    assert_eq!(reason(d1), ("too_large", None, Some("max_payload"), 1));
    assert_eq!(reason(e1), ("unroutable", None, None, 0));
    assert_eq!(
        reason(f1),
        ("key_mismatch", Some("/orderId"), Some("key"), 0)
    );

    // The operator's listing shows them too, with their data, as one JSON array.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mes-events"))
        .args(["outbox", "rejected", "--json"])
        .env("MES_EVENTS_DATABASE__URL", &env.db.url)
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert!(out.status.success());
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.len(), 5);
    assert!(listed.iter().all(|r| r["data"].is_object()), "{listed:?}");

    // Retry with data that is still invalid: refused before the row is touched.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mes-events"))
        .args([
            "outbox",
            "retry",
            &a2.to_string(),
            "--data",
            r#"{"orderId":"A"}"#,
        ])
        .env("MES_EVENTS_DATABASE__URL", &env.db.url)
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("breaks `required`") && err.contains("left as it is"),
        "{err}"
    );
    let still: Vec<serde_json::Value> = serde_json::from_slice(
        &std::process::Command::new(env!("CARGO_BIN_EXE_mes-events"))
            .args(["outbox", "rejected", "--json"])
            .env("MES_EVENTS_DATABASE__URL", &env.db.url)
            .current_dir(std::env::temp_dir())
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        still.iter().any(|r| r["id"] == a2 && r["retries"] == 0),
        "{still:?}"
    );

    // Retry with fixed data: A's held events follow, in order.
    let mut admin = env.db.client().await;
    operator::retry(&mut admin, a2, None, Some(&order_data("A")))
        .await
        .unwrap();
    // Discard: C's later event goes out without it.
    operator::discard(
        &mut admin,
        c1,
        "test@ci",
        "type was a typo; re-emitted as c2",
    )
    .await
    .unwrap();
    // Retry with smaller data.
    operator::retry(&mut admin, d1, None, Some(&order_data("D")))
        .await
        .unwrap();
    operator::discard(&mut admin, e1, "test@ci", "no process-variable stream here")
        .await
        .unwrap();
    operator::discard(&mut admin, f1, "test@ci", "wrong key")
        .await
        .unwrap();

    eventually(
        Duration::from_secs(30),
        "held rows published after retry/discard",
        || async { operator::counts(&db).await.unwrap().pending == 0 },
    )
    .await;
    relay.stop().await;
    let published = read_stream(&js, "MES_EVENTS").await;
    let committed = [vec![a1, a2, a3, a4, c2, d1, d2], b].concat();
    assert_exactly_once_in_order(&env.db, &published, &committed).await;
    let discarded = db
        .query_one(
            "select discarded_by, discard_reason from mes_events.outbox where id = $1",
            &[&c1],
        )
        .await
        .unwrap();
    assert_eq!(discarded.get::<_, String>(0), "test@ci");
    // Retry and discard only apply to rejected rows.
    assert!(matches!(
        operator::retry(&mut admin, a1, None, None).await,
        Err(operator::ResolveError::NotRejected(_))
    ));
    assert!(matches!(
        operator::discard(&mut admin, 999_999, "x", "y").await,
        Err(operator::ResolveError::NotFound(_))
    ));
}

#[tokio::test]
async fn stop_mode_stops_at_the_first_bad_row_and_will_not_restart_until_resolved() {
    let env = Env::new().await;
    emit(&env.db, ORDER_TYPE, "X", &order_data("X")).await;
    let bad = emit(
        &env.db,
        ORDER_TYPE,
        "X",
        &order_data("X").replace("running", "runing"),
    )
    .await;
    emit(&env.db, ORDER_TYPE, "Y", &order_data("Y")).await;
    let stop_mode = [("MES_EVENTS_RELAY__ON_INVALID", "stop")];

    let wait_exit = |mut p: RelayProcess| async move {
        let status = p.wait_exit("stop").await;
        (status.code(), p.stderr())
    };
    let (code, err) = wait_exit(RelayProcess::spawn(&env.cfg, &stop_mode)).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&format!("outbox retry {bad}")), "{err}");
    let (code, err) = wait_exit(RelayProcess::spawn(&env.cfg, &stop_mode)).await;
    assert_eq!(
        code,
        Some(3),
        "refuses to start while the row is unresolved: {err}"
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mes-events"))
        .args([
            "outbox",
            "discard",
            &bad.to_string(),
            "--reason",
            "operator typo",
        ])
        .env("MES_EVENTS_DATABASE__URL", &env.db.url)
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut relay = RelayProcess::spawn(&env.cfg, &stop_mode);
    env.drained(Duration::from_secs(30), "the rest published")
        .await;
    assert!(relay.terminate().await.success());
}

#[tokio::test]
async fn a_message_over_the_streams_max_msg_size_is_rejected_not_retried_forever() {
    // The server would refuse it on every try; the relay checks the stream's limit before.
    use async_nats::jetstream::stream;
    let env = Env::without_streams().await;
    let js = env.js().await;
    for (name, subjects, max) in [
        (
            "MES_EVENTS",
            vec!["mes.*.*.*.*.processorder.>".to_owned()],
            4_096,
        ),
        (
            "MES_PV",
            vec!["mes.*.*.*.*.processvariable.>".to_owned()],
            -1,
        ),
    ] {
        js.create_stream(stream::Config {
            name: name.into(),
            subjects,
            max_message_size: max,
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let relay = env.spawn_relay().await;
    let mut big: serde_json::Value = serde_json::from_str(&order_data("M")).unwrap();
    big["note"] = "x".repeat(10_000).into(); // far under max_payload, over the stream's 4 KiB
    let too_big = emit(&env.db, ORDER_TYPE, "M", &big.to_string()).await;
    let held = emit(&env.db, ORDER_TYPE, "M", &order_data("M")).await;
    let other = emit(&env.db, ORDER_TYPE, "N", &order_data("N")).await;
    let db = env.db.client().await;
    eventually(
        Duration::from_secs(30),
        "rejected, and the other key published",
        || async {
            operator::rejected(&db).await.unwrap().len() == 1 && published_ids(&js).await == [other]
        },
    )
    .await;
    let r = &operator::rejected(&db).await.unwrap()[0];
    assert_eq!(
        (r.id, r.kind.as_str(), r.waiting),
        (too_big, "too_large", 1)
    );
    let mut admin = env.db.client().await;
    operator::retry(&mut admin, too_big, None, Some(&order_data("M")))
        .await
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "the key's events follow in order",
        || async { published_ids(&js).await == [other, too_big, held] },
    )
    .await;
    relay.stop().await;
}

#[tokio::test]
async fn a_rejection_holds_its_key_in_the_batch_already_read_ahead() {
    // The relay reads the next batch while it publishes the current one, so that read cannot
    // see a rejection recorded while publishing. Small batches over five keys put the rejected
    // row last of its key in batch 1 and the key's next row in batch 2, read ahead.
    let env = Env::new().await;
    let db = env.db.client().await;
    let keys = ["A", "B", "C", "D", "E"];
    let ids: Vec<i64> = db
        .query(
            "select mes_events.emit($1, k, case when g = 6
                    then jsonb_build_object('orderId', k, 'previousStatus', 'released',
                         'status', 'runing', 'hierarchyScope', jsonb_build_object('site', 'bsl'))
                    else jsonb_build_object('orderId', k, 'previousStatus', 'released',
                         'status', 'running', 'hierarchyScope', jsonb_build_object('site', 'bsl'))
                    end)
               from generate_series(1, 100) g, lateral (select ($2::text[])[1 + (g - 1) % 5] as k) key
              order by g",
            &[&ORDER_TYPE, &keys.map(String::from).to_vec()],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let bad = ids[5];
    let mut cfg = env.cfg.clone();
    cfg.relay.batch_size = 10;
    cfg.relay.max_in_flight = 100;
    let relay = spawn_relay(cfg, &env.nats.url()).await;
    let js = env.js().await;
    // A's rows are 1, 6, 11, …, 96: the first goes out, the sixth is rejected, 18 wait.
    eventually(
        Duration::from_secs(30),
        "the bad row rejected, every other key published",
        || async {
            operator::rejected(&db).await.unwrap().len() == 1
                && published_ids(&js).await.len() >= 81
        },
    )
    .await;
    let published = published_ids(&js).await;
    let a_rows: Vec<i64> = ids.iter().copied().step_by(5).collect();
    assert!(
        published.iter().all(|id| !a_rows[1..].contains(id)),
        "a row of the rejected key overtook it: {published:?}"
    );
    assert_eq!(published.len(), 81);

    let mut admin = env.db.client().await;
    operator::retry(&mut admin, bad, None, Some(&order_data("A")))
        .await
        .unwrap();
    env.drained(
        Duration::from_secs(30),
        "A's rows published after the retry",
    )
    .await;
    relay.stop().await;
    let published = read_stream(&js, "MES_EVENTS").await;
    assert_exactly_once_in_order(&env.db, &published, &ids).await;
}

/// A mistyped event type (the form is right, the catalog has no such type): the row is
/// rejected and its key's later events wait; `outbox retry --type` with the right type
/// publishes it in its place, before them. A type the catalog does not have is refused before
/// the row is touched.
#[tokio::test]
async fn a_mistyped_type_retried_with_the_right_one_goes_out_in_its_keys_order() {
    let env = Env::new().await;
    let relay = env.spawn_relay().await;
    let wrong = "io.mesevents.mes.processorder.statuschange.v1";
    let bad = emit(&env.db, wrong, "PO-12", &order_data("PO-12")).await;
    let later = [
        emit(&env.db, ORDER_TYPE, "PO-12", &order_data("PO-12")).await,
        emit(&env.db, ORDER_TYPE, "PO-12", &order_data("PO-12")).await,
    ];
    let other = emit(&env.db, ORDER_TYPE, "PO-13", &order_data("PO-13")).await;
    let js = env.js().await;
    eventually(
        Duration::from_secs(30),
        "the other key published",
        || async { published_ids(&js).await == vec![other] },
    )
    .await;
    let retry = |ty: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_mes-events"))
            .args(["outbox", "retry", &bad.to_string(), "--type", ty])
            .env("MES_EVENTS_DATABASE__URL", &env.db.url)
            .current_dir(std::env::temp_dir())
            .output()
            .unwrap()
    };
    let refused = retry("io.mesevents.mes.processorder.statuschangd.v1");
    assert_eq!(refused.status.code(), Some(2), "{}", output_text(&refused));
    assert!(
        output_text(&refused).contains("left as it is"),
        "{}",
        output_text(&refused)
    );
    let c = env.db.client().await;
    assert_eq!(operator::counts(&c).await.unwrap().rejected, 1);
    let o = retry(ORDER_TYPE);
    assert!(o.status.success(), "{}", output_text(&o));
    env.drained(Duration::from_secs(30), "the key's events published")
        .await;
    assert_eq!(
        published_ids(&js).await,
        vec![other, bad, later[0], later[1]],
        "the retried row before its key's later ones"
    );
    let ty: String = c
        .query_one(
            "select type from mes_events.published where id = $1",
            &[&bad],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ty, ORDER_TYPE);
    relay.stop().await;
}

/// Data missing two required fields: `emit` names both in one run, and writes nothing.
#[tokio::test]
async fn emit_names_every_schema_violation_at_once() {
    let db = TestDb::new().await;
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_mes-events"))
        .args([
            "emit",
            "--type",
            ORDER_TYPE,
            "--key",
            "PO-1",
            "--data",
            r#"{"orderId": "PO-1", "previousStatus": "released"}"#,
        ])
        .env("MES_EVENTS_DATABASE__URL", &db.url)
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    let text = output_text(&o);
    assert_eq!(o.status.code(), Some(2), "{text}");
    for field in ["\"status\"", "\"hierarchyScope\""] {
        assert!(text.contains(field), "{field} in: {text}");
    }
    let c = db.client().await;
    assert_eq!(operator::counts(&c).await.unwrap().pending, 0);
}
