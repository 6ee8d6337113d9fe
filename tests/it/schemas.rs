//! The active catalog on the bus, end to end with a site type: `provision apply --catalog`
//! puts every schema into the `MES_SCHEMAS` bucket; the relay publishes the site's
//! `equipment.statechanged` events; a system, from its own account, fetches each event's
//! schema from the bucket by its `dataschema` and validates the data with Python's
//! `jsonschema` (the integrator example, `--validate`), catching a forged invalid event; it
//! cannot write the bucket by any subject, nor by aiming an allowed answer at it; and a
//! published schema is never replaced.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::support::raw::Raw;
use crate::support::*;

const MAINTENANCE: &str = r#"
[system]
name = "maintenance"
description = "CMMS: equipment states"
[[consumer]]
stream = "MES_EVENTS"
filter_subjects = ["mes.*.*.*.*.equipment.>"]
max_deliver = 5
"#;

const EQUIPMENT: &str = "io.mesevents.mes.equipment.statechanged.v1";
const SCHEMA_KEY: &str = "equipment/statechanged.v1.0.json";
const DATASCHEMA: &str = "https://mesevents.io/schemas/equipment/statechanged.v1.0.json";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_owned()
}

fn mes_events(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mes-events"));
    c.args(args).current_dir(std::env::temp_dir());
    c
}

/// The example site catalog, copied so that a test can change it.
fn site_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let from = root().join("examples/site-catalog");
    std::fs::create_dir_all(dir.path().join("equipment")).unwrap();
    for f in [
        "catalog.json",
        "equipment/statechanged.v1.0.json",
        "equipment/statechanged.v1.examples.json",
    ] {
        std::fs::copy(from.join(f), dir.path().join(f)).unwrap();
    }
    dir
}

/// The schema bucket's (last sequence, messages), as the admin sees it.
async fn bucket_state(admin: &async_nats::jetstream::Context) -> (u64, u64) {
    let mut s = admin.get_stream("KV_MES_SCHEMAS").await.unwrap();
    let i = s.info().await.unwrap();
    (i.state.last_sequence, i.state.messages)
}

#[tokio::test]
async fn a_system_validates_a_site_event_against_its_schema_from_the_bus_and_cannot_write_it() {
    // The shipped declaration, MES_EVENTS taking the site's new category, and the system.
    let decl = tempfile::tempdir().unwrap();
    let streams = std::fs::read_to_string(root().join("nats/streams.toml")).unwrap();
    let streams = streams.replace(
        "  \"mes.*.*.*.*.document.>\",\n",
        "  \"mes.*.*.*.*.document.>\",\n  \"mes.*.*.*.*.equipment.>\",\n",
    );
    assert!(
        streams.contains("equipment"),
        "nats/streams.toml changed shape"
    );
    std::fs::write(decl.path().join("streams.toml"), streams).unwrap();
    std::fs::create_dir(decl.path().join("systems")).unwrap();
    std::fs::write(decl.path().join("systems/maintenance.toml"), MAINTENANCE).unwrap();
    let site = site_copy();
    let site_dir = site.path().to_str().unwrap().to_owned();

    let creds = tempfile::tempdir().unwrap();
    let o = mes_events(&["provision", "credentials", "--dir"])
        .arg(decl.path())
        .arg("--out")
        .arg(creds.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    let auth = std::fs::read_to_string(creds.path().join("auth.conf")).unwrap();
    let nats = NatsServer::start_with_config(&auth).await;
    let url = nats.url();
    let seed_path = |who: &str| creds.path().join(format!("{who}.nk"));
    let seed = |who: &str| {
        std::fs::read_to_string(seed_path(who))
            .unwrap()
            .trim()
            .to_owned()
    };
    let as_admin = |args: &[&str]| {
        mes_events(&["--catalog", &site_dir])
            .args(args)
            .arg("--dir")
            .arg(decl.path())
            .env("MES_EVENTS_NATS__URL", &url)
            .env("MES_EVENTS_NATS__NKEY", seed_path("admin"))
            .output()
            .unwrap()
    };

    // The plan names the bucket and every schema; apply puts them; then all is in sync.
    let o = as_admin(&["provision", "plan"]);
    let text = output_text(&o);
    assert_eq!(o.status.code(), Some(4), "{text}");
    assert!(text.contains("create  schema bucket MES_SCHEMAS"), "{text}");
    assert!(
        text.contains(&format!("put  schema {SCHEMA_KEY}")),
        "{text}"
    );
    let o = as_admin(&["provision", "apply"]);
    let text = output_text(&o);
    assert_eq!(o.status.code(), Some(0), "{text}");
    assert!(
        text.contains(&format!("put  schema {SCHEMA_KEY}")),
        "{text}"
    );
    let o = as_admin(&["provision", "plan"]);
    let text = output_text(&o);
    assert_eq!(o.status.code(), Some(0), "{text}");
    assert!(text.contains("schemas: 0 to put"), "{text}");

    // The relay, with its own identity and the site catalog, publishes the site's events.
    let db = TestDb::new().await;
    let mut cfg = config(&db, &nats);
    cfg.nats.nkey = Some(seed_path("relay"));
    cfg.events.catalog = Some(site.path().to_owned());
    let relay = spawn_relay_as(cfg).await;
    let c = db.client().await;
    for (unit, state) in [("dryer1", "down"), ("dryer2", "running")] {
        let data = serde_json::json!({
            "equipmentId": unit, "state": state,
            "hierarchyScope": {"site": "bsl", "area": "gran", "workCenter": "line2", "workUnit": unit}
        });
        mes_events::store::write::emit(&c, EQUIPMENT, unit, &data.to_string(), &Default::default())
            .await
            .unwrap();
    }
    eventually(Duration::from_secs(30), "published", || async {
        pending(&db).await == 0
    })
    .await;
    relay.stop().await;

    // A forged event the relay would never publish (only the admin can write the stream): the
    // validator must catch it, or it proves nothing.
    let admin = async_nats::jetstream::new(
        async_nats::ConnectOptions::with_nkey(seed("admin"))
            .connect(&url)
            .await
            .unwrap(),
    );
    let mut h = async_nats::HeaderMap::new();
    for (k, v) in [
        ("ce-specversion", "1.0"),
        ("ce-id", "forged-1"),
        ("ce-source", "/mes/test/bsl"),
        ("ce-type", EQUIPMENT),
        ("ce-subject", "dryer3"),
        ("ce-datacontenttype", "application/json"),
        ("ce-dataschema", DATASCHEMA),
        ("ce-sequence", "00000000000000000099"),
    ] {
        h.insert(k, v);
    }
    admin
        .publish_with_headers(
            "mes.bsl.gran.line2.dryer3.equipment.statechanged.v1.dryer3",
            h,
            r#"{"equipmentId":"dryer3","state":"exploded","hierarchyScope":{"site":"bsl"}}"#.into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();

    // The system validates each event against the schema fetched from the bus (its $refs
    // too), with Python's jsonschema, from its own account.
    let script = root().join("examples/python/consumer.py");
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("python3")
            .arg(&script)
            .args(["--url", &url, "--system", "maintenance", "--seed"])
            .arg(seed_path("maintenance"))
            .args(["--max", "3", "--validate"])
            .current_dir(script.parent().unwrap())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the example finishes within 60 s")
    .expect("python3 runs the example (scripts/test.sh installs its requirements)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    for l in &lines {
        assert_eq!(l["type"], EQUIPMENT, "{stdout}");
        assert_eq!(l["dataschema"], DATASCHEMA, "{stdout}");
    }
    let verdicts: Vec<(&str, bool)> = lines
        .iter()
        .map(|l| {
            (
                l["subject"].as_str().unwrap(),
                l["valid"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        verdicts,
        [("dryer1", true), ("dryer2", true), ("dryer3", false)],
        "{stdout}"
    );
    assert!(
        lines[2]["error"].as_str().unwrap().starts_with("/state"),
        "{stdout}"
    );

    // It cannot write the bucket: not by its subjects, not by the JetStream API, and not by
    // aiming the answer to a read it may make at a key (the answer would be stored there, in
    // one account).
    let before = bucket_state(&admin).await;
    let mut raw = Raw::connect(&url, &seed("maintenance")).await;
    raw.subscribe("_INBOX_maintenance.>", None).await;
    let forged = br#"{"$id":"forged","type":"object"}"#;
    for (subject, payload) in [
        (format!("$KV.MES_SCHEMAS.{SCHEMA_KEY}"), &forged[..]),
        ("$KV.MES_SCHEMAS.catalog.json".into(), &forged[..]),
        ("$JS.API.STREAM.PURGE.KV_MES_SCHEMAS".into(), b"{}"),
        ("$JS.API.STREAM.DELETE.KV_MES_SCHEMAS".into(), b""),
        (
            "$JS.API.STREAM.MSG.DELETE.KV_MES_SCHEMAS".into(),
            b"{\"seq\":1}",
        ),
        (
            "$JS.API.STREAM.UPDATE.KV_MES_SCHEMAS".into(),
            b"{\"name\":\"KV_MES_SCHEMAS\",\"subjects\":[\">\"]}",
        ),
        ("$JS.API.DIRECT.GET.KV_MES_SCHEMAS".into(), b"{\"seq\":1}"),
    ] {
        let a = raw
            .publish(&subject, Some("_INBOX_maintenance.x"), None, payload)
            .await;
        assert!(a.publish_refused(&subject), "{subject}: {a:?}");
    }
    let read = format!("$JS.API.DIRECT.GET.KV_MES_SCHEMAS.$KV.MES_SCHEMAS.{SCHEMA_KEY}");
    for target in [
        format!("$KV.MES_SCHEMAS.{SCHEMA_KEY}"),
        "$KV.MES_SCHEMAS.catalog.json".into(),
        "$JS.API.STREAM.PURGE.KV_MES_SCHEMAS".into(),
    ] {
        let a = raw.publish(&read, Some(&target), None, b"").await;
        assert!(a.errors.is_empty(), "the read itself is allowed: {a:?}");
    }
    // Its own reads are answered (so the probes above were live requests).
    let a = raw
        .publish(&read, Some("_INBOX_maintenance.mine"), None, b"")
        .await;
    let got = if a.delivered.is_empty() {
        raw.wait_for_delivery(Duration::from_secs(5)).await
    } else {
        a
    };
    assert!(
        got.delivered
            .iter()
            .any(|d| d.subject == "_INBOX_maintenance.mine"),
        "{got:?}"
    );
    raw.ping().await;
    assert_eq!(bucket_state(&admin).await, before, "the bucket was written");
    let kv = admin.get_key_value("MES_SCHEMAS").await.unwrap();
    let on_bus: serde_json::Value =
        serde_json::from_slice(&kv.get(SCHEMA_KEY).await.unwrap().unwrap()).unwrap();
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(site.path().join(SCHEMA_KEY)).unwrap())
            .unwrap();
    assert_eq!(on_bus, file);

    // A published schema is never replaced: a site that edits it in place is refused (exit 5),
    // told to add a new minor version, and the bucket keeps the published one.
    let mut edited = file.clone();
    edited["description"] = "edited in place".into();
    std::fs::write(
        site.path().join(SCHEMA_KEY),
        serde_json::to_string_pretty(&edited).unwrap(),
    )
    .unwrap();
    let o: Output = as_admin(&["provision", "apply"]);
    let text = output_text(&o);
    assert_eq!(o.status.code(), Some(5), "{text}");
    assert!(
        text.contains(SCHEMA_KEY) && text.contains("new minor version"),
        "{text}"
    );
    let on_bus: serde_json::Value =
        serde_json::from_slice(&kv.get(SCHEMA_KEY).await.unwrap().unwrap()).unwrap();
    assert_eq!(on_bus, file, "a published schema was replaced");
}
