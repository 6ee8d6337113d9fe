//! `mes-events provision`: plan / apply / status against a real nats-server, drift repair,
//! refusals, pruning, validation before any call, and the generated permissions.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;

use crate::support::*;

const STREAMS: &str = r#"
[[stream]]
name = "MES_EVENTS"
subjects = ["mes.*.*.*.*.processorder.>", "mes.*.*.*.*.material.>", "mes.*.*.*.*.stock.>", "mes.*.*.*.*.document.>"]
storage = "file"
max_age = "30d"
duplicate_window = "2m"

[[stream]]
name = "MES_PV"
subjects = ["mes.*.*.*.*.processvariable.>"]
max_msgs_per_subject = 100
"#;

const ERP: &str = r#"
[system]
name = "erp"

[[consumer]]
stream = "MES_EVENTS"
filter_subjects = ["mes.*.*.*.*.processorder.>", "mes.*.*.*.*.material.>"]
deliver = "all"
max_deliver = 10
backoff = ["1s", "5s"]
max_ack_pending = 1000
"#;

const QUALITY: &str = r#"
[system]
name = "quality"
live = ["mes.*.*.*.*.document.>"]

[[consumer]]
stream = "MES_EVENTS"
filter_subjects = ["mes.*.*.*.*.document.>", "mes.*.*.*.*.stock.>"]
ack_wait = "45s"
max_ack_pending = 200
"#;

fn provision(url: &str, dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mes-events"))
        .arg("provision")
        .args(args)
        .arg("--dir")
        .arg(dir)
        .env("MES_EVENTS_NATS__URL", url)
        .env("MES_EVENTS_NATS__REQUEST_TIMEOUT", "2s")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap()
}

fn assert_code(o: &Output, code: i32) {
    assert_eq!(o.status.code(), Some(code), "{}", output_text(o));
}

async fn js(url: &str) -> jetstream::Context {
    jetstream::new(async_nats::connect(url).await.unwrap())
}

#[tokio::test]
async fn empty_server_plan_apply_then_in_sync_against_server_defaults() {
    let nats = NatsServer::start().await;
    let url = nats.url();
    let d = decl_dir(&[
        ("streams.toml", STREAMS),
        ("systems/erp.toml", ERP),
        ("systems/quality.toml", QUALITY),
    ]);
    let plan = provision(&url, d.path(), &["plan"]);
    assert_code(&plan, 4);
    let out = output_text(&plan);
    for what in [
        "create  stream MES_EVENTS",
        "create  stream MES_PV",
        "create  consumer MES_EVENTS/erp",
        "create  consumer MES_EVENTS/quality",
    ] {
        assert!(out.contains(what), "{what} in:\n{out}");
    }
    assert_code(&provision(&url, d.path(), &["apply"]), 0);
    let again = provision(&url, d.path(), &["plan"]);
    assert_code(&again, 0);
    assert!(
        output_text(&again)
            .contains("0 to create, 0 to update, 0 to replace, 0 to delete, 4 unchanged"),
        "{}",
        output_text(&again)
    );
    // Applying again changes nothing and still succeeds (safe on every deploy).
    assert_code(&provision(&url, d.path(), &["apply"]), 0);

    let status = provision(&url, d.path(), &["status", "--json"]);
    assert_code(&status, 0);
    let rows: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 2);
    assert!(rows
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["exists"] == true && r["pending"] == 0));
    let table = provision(&url, d.path(), &["status"]);
    assert!(output_text(&table).contains("erp") && output_text(&table).contains("quality"));
}

#[tokio::test]
async fn changes_updates_refusals_and_recreate() {
    let nats = NatsServer::start().await;
    let url = nats.url();
    let d = decl_dir(&[
        ("streams.toml", STREAMS),
        ("systems/erp.toml", ERP),
        ("systems/quality.toml", QUALITY),
    ]);
    assert_code(&provision(&url, d.path(), &["apply"]), 0);

    // A mutable change: shown as an update with its fields, then applied.
    let changed = decl_dir(&[
        (
            "streams.toml",
            &STREAMS.replace("max_age = \"30d\"", "max_age = \"60d\""),
        ),
        (
            "systems/erp.toml",
            &ERP.replace("max_ack_pending = 1000", "max_ack_pending = 500"),
        ),
        ("systems/quality.toml", QUALITY),
    ]);
    let plan = provision(&url, changed.path(), &["plan"]);
    assert_code(&plan, 4);
    // In the units it was declared in, not as months and days.
    assert!(
        output_text(&plan).contains("max_age: 30d -> 60d"),
        "{}",
        output_text(&plan)
    );
    assert!(
        output_text(&plan).contains("max_ack_pending: 1000 -> 500"),
        "{}",
        output_text(&plan)
    );
    assert_code(&provision(&url, changed.path(), &["apply"]), 0);
    assert_code(&provision(&url, changed.path(), &["plan"]), 0);
    let js = js(&url).await;
    let mut s = js.get_stream("MES_EVENTS").await.unwrap();
    assert_eq!(
        s.info().await.unwrap().config.max_age,
        Duration::from_secs(60 * 86400)
    );

    // Immutable changes: the stream's storage, the consumer's deliver policy. Refused with why.
    let immutable = decl_dir(&[
        (
            "streams.toml",
            &STREAMS
                .replace("max_age = \"60d\"", "")
                .replace("storage = \"file\"", "storage = \"memory\""),
        ),
        (
            "systems/erp.toml",
            &ERP.replace("deliver = \"all\"", "deliver = \"new\"")
                .replace("max_ack_pending = 1000", "max_ack_pending = 500"),
        ),
        ("systems/quality.toml", QUALITY),
    ]);
    let plan = provision(&url, immutable.path(), &["plan"]);
    assert!(
        output_text(&plan).contains("replace  stream MES_EVENTS")
            && output_text(&plan).contains("cannot change in place"),
        "{}",
        output_text(&plan)
    );
    let refused = provision(&url, immutable.path(), &["apply"]);
    assert_code(&refused, 5);
    let why = output_text(&refused);
    assert!(
        why.contains("stream MES_EVENTS: storage") && why.contains("never recreated"),
        "{why}"
    );
    assert!(
        why.contains("consumer MES_EVENTS/erp: deliver") && why.contains("--allow-recreate"),
        "{why}"
    );
    // --allow-recreate recreates the consumer (never the stream, which stays refused).
    let erp_created = s.consumer_info("erp").await.unwrap().created;
    let recreated = provision(&url, immutable.path(), &["apply", "--allow-recreate"]);
    assert_code(&recreated, 5);
    assert!(
        !output_text(&recreated).contains("consumer MES_EVENTS/erp:"),
        "{}",
        output_text(&recreated)
    );
    let info = s.consumer_info("erp").await.unwrap();
    assert_eq!(info.config.deliver_policy, consumer::DeliverPolicy::New);
    assert!(info.created > erp_created, "erp was recreated");
    assert_eq!(
        s.info().await.unwrap().config.storage,
        stream::StorageType::File,
        "the stream was not touched"
    );
}

#[tokio::test]
async fn drift_made_behind_its_back_is_reported_and_repaired() {
    let nats = NatsServer::start().await;
    let url = nats.url();
    let d = decl_dir(&[
        ("streams.toml", STREAMS),
        ("systems/erp.toml", ERP),
        ("systems/quality.toml", QUALITY),
    ]);
    assert_code(&provision(&url, d.path(), &["apply"]), 0);
    let js = js(&url).await;
    // Another client deletes a consumer and changes a limit.
    js.delete_consumer_from_stream("quality", "MES_EVENTS")
        .await
        .unwrap();
    let mut cfg = js
        .get_stream("MES_PV")
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    cfg.max_messages_per_subject = 5;
    js.update_stream(cfg).await.unwrap();

    let plan = provision(&url, d.path(), &["plan"]);
    assert_code(&plan, 4);
    let out = output_text(&plan);
    assert!(out.contains("create  consumer MES_EVENTS/quality"), "{out}");
    assert!(
        out.contains("update  stream MES_PV") && out.contains("max_msgs_per_subject: 5 -> 100"),
        "{out}"
    );
    assert_code(&provision(&url, d.path(), &["apply"]), 0);
    assert_code(&provision(&url, d.path(), &["plan"]), 0);
    let mut pv = js.get_stream("MES_PV").await.unwrap();
    assert_eq!(
        pv.info().await.unwrap().config.max_messages_per_subject,
        100
    );
}

#[tokio::test]
async fn prune_removes_only_undeclared_durable_consumers() {
    let nats = NatsServer::start().await;
    let url = nats.url();
    let d = decl_dir(&[
        ("streams.toml", STREAMS),
        ("systems/erp.toml", ERP),
        ("systems/quality.toml", QUALITY),
    ]);
    assert_code(&provision(&url, d.path(), &["apply"]), 0);
    let js = js(&url).await;
    let s = js.get_stream("MES_EVENTS").await.unwrap();
    s.create_consumer(consumer::pull::Config {
        durable_name: Some("legacy".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let names = |s: stream::Stream| async move {
        let mut v: Vec<String> = s.consumer_names().map(|n| n.unwrap()).collect().await;
        v.sort();
        v
    };
    let plan = provision(&url, d.path(), &["plan"]);
    assert!(
        output_text(&plan).contains("unmanaged (left alone)  consumer MES_EVENTS/legacy"),
        "{}",
        output_text(&plan)
    );
    assert_code(&provision(&url, d.path(), &["apply"]), 0);
    assert_eq!(names(s.clone()).await, ["erp", "legacy", "quality"]);
    let plan = provision(&url, d.path(), &["plan", "--prune"]);
    assert!(
        output_text(&plan).contains("delete  consumer MES_EVENTS/legacy"),
        "{}",
        output_text(&plan)
    );
    assert_code(&provision(&url, d.path(), &["apply", "--prune"]), 0);
    assert_eq!(names(s).await, ["erp", "quality"]);
}

#[tokio::test]
async fn every_validation_error_names_file_and_key_and_no_call_is_made() {
    // Nothing listens on this port: a validation error must come before any connection attempt.
    let unreachable = "nats://127.0.0.1:1";
    /// (what, files, file:line expected in the message, key expected in the message)
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (
            "unknown key",
            vec![
                ("streams.toml", STREAMS.replace("max_age", "max_agee")),
                ("systems/erp.toml", ERP.into()),
            ],
            "streams.toml:",
            "max_agee",
        ),
        (
            "bad duration",
            vec![
                ("streams.toml", STREAMS.into()),
                ("systems/erp.toml", ERP.replace("\"1s\"", "\"soon\"")),
            ],
            "erp.toml:",
            "backoff",
        ),
        (
            "consumer on an unknown stream",
            vec![
                ("streams.toml", STREAMS.into()),
                (
                    "systems/erp.toml",
                    ERP.replace("stream = \"MES_EVENTS\"", "stream = \"MES_EVENT\""),
                ),
            ],
            "erp.toml:6",
            "consumer[0].stream",
        ),
        (
            "filter subject no stream captures",
            vec![
                ("streams.toml", STREAMS.into()),
                (
                    "systems/erp.toml",
                    ERP.replace("mes.*.*.*.*.material.>", "erp.orders.>"),
                ),
            ],
            "erp.toml:7",
            "consumer[0].filter_subjects[1]",
        ),
        (
            "overlapping stream subjects",
            vec![
                (
                    "streams.toml",
                    STREAMS.replace("[\"mes.*.*.*.*.processvariable.>\"]", "[\"mes.bsl.>\"]"),
                ),
                ("systems/erp.toml", ERP.into()),
            ],
            "streams.toml:",
            "overlaps",
        ),
    ];
    for (what, files, file_hint, key_hint) in cases {
        let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
        let d = decl_dir(&files);
        for cmd in ["plan", "apply", "status"] {
            let o = provision(unreachable, d.path(), &[cmd]);
            assert_code(&o, 2);
            let err = output_text(&o);
            assert!(
                err.contains(file_hint) && err.contains(key_hint),
                "{what} ({cmd}): {err}"
            );
            assert!(
                err.contains("nothing was sent to NATS") && !err.contains("cannot connect"),
                "{what}: {err}"
            );
        }
    }
}

#[tokio::test]
async fn generated_credentials_give_each_system_its_own_consumer_and_nothing_else() {
    let d = decl_dir(&[
        ("streams.toml", STREAMS),
        ("systems/erp.toml", ERP),
        ("systems/quality.toml", QUALITY),
    ]);
    let creds = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_mes-events"))
        .args(["provision", "credentials", "--dir"])
        .arg(d.path())
        .arg("--out")
        .arg(creds.path())
        .output()
        .unwrap();
    assert_code(&o, 0);
    let auth = std::fs::read_to_string(creds.path().join("auth.conf")).unwrap();
    let nats = NatsServer::start_with_config(&auth).await;
    let url = nats.url();
    let seed = |u: &str| {
        std::fs::read_to_string(creds.path().join(format!("{u}.nk")))
            .unwrap()
            .trim()
            .to_owned()
    };

    // The admin provisions.
    let admin_env = [("MES_EVENTS_NATS__NKEY", creds.path().join("admin.nk"))];
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mes-events"));
    cmd.args(["provision", "apply", "--dir"])
        .arg(d.path())
        .env("MES_EVENTS_NATS__URL", &url);
    for (k, v) in &admin_env {
        cmd.env(k, v);
    }
    assert_code(&cmd.output().unwrap(), 0);

    let connect = |user: &'static str, inbox: Option<&'static str>| {
        let url = url.clone();
        let seed = seed(user);
        async move {
            let mut opts = async_nats::ConnectOptions::with_nkey(seed);
            if let Some(p) = inbox {
                opts = opts.custom_inbox_prefix(p);
            }
            opts.connect(url).await.unwrap()
        }
    };
    // Only the relay may publish events.
    let relay = jetstream::new(connect("relay", Some("_INBOX_relay")).await);
    relay
        .publish(
            "mes.bsl._._._.processorder.statuschanged.v1.4711",
            "{}".into(),
        )
        .await
        .unwrap()
        .await
        .expect("the relay publishes");
    let erp_client = connect("erp", Some("_INBOX_erp")).await;
    let erp = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(2))
        .build(erp_client.clone());
    let denied = erp
        .publish(
            "mes.bsl._._._.processorder.statuschanged.v1.4711",
            "{}".into(),
        )
        .await;
    assert!(
        denied.is_err() || denied.unwrap().await.is_err(),
        "a system must not publish on event subjects"
    );

    // ERP pulls and acks its own consumer, bound by name from its own account.
    let mine = mes_events::consume::bind_by_name(&erp, "MES_EVENTS", "erp");
    let mut batch = mine
        .fetch()
        .max_messages(10)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), batch.next())
        .await
        .expect("a message within 5 s")
        .expect("a message")
        .unwrap();
    m.double_ack().await.expect("erp acks its own message");

    // …and nothing of quality's: a pull on it is refused.
    let theirs = mes_events::consume::bind_by_name(&erp, "MES_EVENTS", "quality");
    let stolen = theirs
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(1))
        .messages()
        .await;
    let got = match stolen {
        Ok(mut b) => tokio::time::timeout(Duration::from_secs(3), b.next()).await,
        Err(_) => Ok(None),
    };
    assert!(
        !matches!(got, Ok(Some(Ok(_)))),
        "erp must not pull quality's events: {got:?}"
    );
}

/// Four mistakes in two files (an unknown key with a near miss, a number that is not one, a
/// duration that is not one, a reserved system name): all four in one run, each with its file,
/// line and what to write, before any call to a server.
#[test]
fn a_declaration_with_four_mistakes_reports_all_four_in_one_run() {
    let d = decl_dir(&[
        ("streams.toml", STREAMS),
        (
            "systems/erp.toml",
            "[system]\nname = \"erp\"\n[[consumer]]\nstream = \"MES_EVENTS\"\nfilter_subject = \"mes.>\"\nmax_deliver = \"ten\"\nack_wait = \"soon\"\n",
        ),
        (
            "systems/admin.toml",
            "[system]\nname = \"admin\"\n[[consumer]]\nstream = \"MES_EVENTS\"\n",
        ),
    ]);
    let no_server = format!("nats://127.0.0.1:{}", free_port());
    let o = provision(&no_server, d.path(), &["plan"]);
    assert_code(&o, 2);
    let text = output_text(&o);
    for part in [
        "erp.toml:5",
        "did you mean `filter_subjects`?",
        "erp.toml:6",
        "expected a whole number",
        "erp.toml:7",
        "250ms, 30s, 5m, 7d",
        "admin.toml",
        "4 problem(s)",
    ] {
        assert!(text.contains(part), "{part} in:\n{text}");
    }
    assert!(
        !text.contains("expected i64") && !text.contains("refused the connection"),
        "{text}"
    );
}
