//! The event catalog under schemas/: every example validates as stated, every event round-trips
//! through both binding modes, and the AsyncAPI document is generated from the active catalog
//! and parses with the AsyncAPI parser.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use chrono::{TimeZone, Utc};
use mes_events::event::asyncapi;
use mes_events::event::binding::{self, Mode, Rule};
use mes_events::event::catalog::Catalog;
use mes_events::event::Row;
use mes_events::event::{self, Profile};
use serde_json::Value;

fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")
}

fn read_json(rel: &str) -> Value {
    let path = schemas_dir().join(rel);
    serde_json::from_str(
        &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// (type, key field, valid data) of every valid example in the catalog.
pub fn valid_examples() -> Vec<(String, String, Value)> {
    let catalog = Catalog::embedded().unwrap();
    let mut out = Vec::new();
    for entry in catalog.entries() {
        let ex = read_json(&entry.decl.examples);
        for v in ex["valid"].as_array().expect("valid examples") {
            out.push((
                entry.decl.ty.clone(),
                entry.decl.key.clone(),
                v["data"].clone(),
            ));
        }
    }
    out
}

#[test]
fn the_catalog_covers_eight_categories_and_loads() {
    let catalog = Catalog::embedded().unwrap();
    let categories: BTreeSet<_> = catalog.entries().map(|e| e.decl.category.clone()).collect();
    assert_eq!(
        categories,
        ["batch", "document", "inventory", "material", "processorder", "processvariable", "stock"]
            .into_iter()
            .map(String::from)
            .collect(),
        "process order, batch, stock, inventory, document, process variable, material consumed/produced"
    );
    let types: BTreeSet<_> = catalog.entries().map(|e| e.decl.event.clone()).collect();
    assert!(types.contains("consumed") && types.contains("produced"));
    assert!(catalog.entries().count() >= 18);
}

#[test]
fn every_example_validates_as_stated() {
    let catalog = Catalog::embedded().unwrap();
    let mut checked = 0;
    for entry in catalog.entries() {
        let ex = read_json(&entry.decl.examples);
        let valid = ex["valid"].as_array().unwrap();
        let invalid = ex["invalid"].as_array().unwrap();
        assert!(
            !valid.is_empty() && !invalid.is_empty(),
            "{}: needs valid and invalid examples",
            entry.decl.ty
        );
        for v in valid {
            let errors = entry.violations(&v["data"]);
            assert!(
                errors.is_empty(),
                "{}: valid example {:?} fails: {errors:?}",
                entry.decl.ty,
                v["description"]
            );
            checked += 1;
        }
        for v in invalid {
            let errors = entry.violations(&v["data"]);
            let want_path = v["error"]["instancePath"].as_str().unwrap();
            let want_rule = v["error"]["keyword"].as_str().unwrap();
            assert_eq!(
                errors.len(),
                1,
                "{}: invalid example {:?} should fail once, got {errors:?}",
                entry.decl.ty,
                v["description"]
            );
            assert_eq!(
                (errors[0].path.as_str(), errors[0].rule.as_str()),
                (want_path, want_rule),
                "{}: invalid example {:?} fails for another reason: {}",
                entry.decl.ty,
                v["description"],
                errors[0]
            );
            checked += 1;
        }
    }
    assert!(checked >= 18 * 2);
}

#[test]
fn every_valid_example_round_trips_through_both_modes() {
    let catalog = Catalog::embedded().unwrap();
    for (i, (ty, key_field, data)) in valid_examples().into_iter().enumerate() {
        let key = data[&key_field].as_str().unwrap().to_owned();
        let row = Row {
            id: i as i64 + 1,
            ty: ty.clone(),
            key,
            key_version: 1,
            data: data.to_string(),
            occurred_at: Utc.with_ymd_and_hms(2026, 11, 23, 6, 0, 0).unwrap(),
            recorded_at: Utc
                .timestamp_micros(1_795_000_000_000_001 + i as i64)
                .unwrap(),
            traceparent: None,
            tracestate: None,
        };
        let profile = |mode| Profile {
            source: "/mes/test/bsl".into(),
            site: "bsl".into(),
            subject_prefix: "mes".into(),
            mode,
        };
        let (original, _) = event::event(&profile(Mode::Binary), &catalog, &row).unwrap();
        let original = binding::json_data(original);
        for mode in [Mode::Binary, Mode::Structured] {
            let out = event::outbound(&profile(mode), &catalog, &row).unwrap();
            let back = binding::decode(Some(&out.headers), &out.payload, Rule::Spec).unwrap();
            assert_eq!(back, original, "{ty} in {mode:?} mode");
        }
    }
}

#[test]
fn the_checked_in_asyncapi_document_is_the_one_generated_from_the_catalog() {
    let generated = asyncapi::document(&Catalog::embedded().unwrap());
    assert!(
        read_json("asyncapi.json") == generated,
        "schemas/asyncapi.json is not what the catalog generates: run \
         `cargo run -- catalog asyncapi > schemas/asyncapi.json`"
    );
}

#[test]
fn the_asyncapi_document_of_a_site_catalog_parses_with_the_asyncapi_parser_and_lists_its_type() {
    let site = site_catalog();
    let o = cli(&["--catalog", site.to_str().unwrap(), "catalog", "asyncapi"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let dir = tempfile::tempdir().unwrap();
    let doc = dir.path().join("asyncapi.json");
    std::fs::write(&doc, &o.stdout).unwrap();
    // The AsyncAPI Initiative's parser (@asyncapi/parser), from tests/interop.
    let interop = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
    let parsed = std::process::Command::new("node")
        .arg(interop.join("parse_asyncapi.mjs"))
        .arg(&doc)
        .current_dir(&interop)
        .output()
        .expect("node runs the AsyncAPI parser (scripts/test.sh installs it)");
    let out: Value = serde_json::from_slice(&parsed.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&parsed.stdout),
            String::from_utf8_lossy(&parsed.stderr)
        )
    });
    assert!(parsed.status.success(), "{out:#}");
    assert_eq!(out["errors"], serde_json::json!([]), "{out:#}");
    assert_eq!(out["warnings"], serde_json::json!([]), "{out:#}");
    assert_eq!(out["version"], "3.0.0");
    let messages: BTreeSet<&str> = out["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let catalog = Catalog::with_site(&site).unwrap();
    let types: BTreeSet<&str> = catalog.entries().map(|e| e.decl.ty.as_str()).collect();
    assert_eq!(
        messages, types,
        "one message per type of the active catalog"
    );
    assert!(messages.contains(EQUIPMENT), "{out:#}");
    assert!(
        out["channels"].as_array().unwrap().iter().any(|c| c
            == "{prefix}.{site}.{area}.{workcenter}.{workunit}.equipment.statechanged.v1.{key}"),
        "{out:#}"
    );
}

/// The site catalog shipped as an example (`examples/site-catalog`): one added type,
/// `equipment.statechanged`, in a new category of MES_EVENTS.
fn site_catalog() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/site-catalog")
}

const EQUIPMENT: &str = "io.mesevents.mes.equipment.statechanged.v1";

/// A copy of the example site catalog to break.
fn site_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("equipment")).unwrap();
    for f in [
        "catalog.json",
        "equipment/statechanged.v1.0.json",
        "equipment/statechanged.v1.examples.json",
    ] {
        std::fs::copy(site_catalog().join(f), dir.path().join(f)).unwrap();
    }
    dir
}

#[test]
fn the_example_site_catalog_extends_the_shipped_one() {
    let c = Catalog::with_site(&site_catalog()).unwrap();
    assert!(c.get(EQUIPMENT).is_some());
    assert!(c
        .get("io.mesevents.mes.processorder.statuschanged.v1")
        .is_some());
    assert!(c.file.streams["MES_EVENTS"]
        .categories
        .contains(&"equipment".to_owned()));
}

#[tokio::test]
async fn a_relay_with_a_site_catalog_publishes_its_type_and_rejects_an_invalid_one() {
    use crate::support::*;
    let env = Env::without_streams().await;
    let js = env.js().await;
    let mut subjects = catalog_subjects("MES_EVENTS");
    subjects.push("mes.*.*.*.*.equipment.>".into());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "MES_EVENTS".into(),
        subjects,
        ..Default::default()
    })
    .await
    .unwrap();
    create_streams_named(&js, &["MES_PV"]).await;
    let site = site_catalog();
    let mut relay = RelayProcess::spawn(
        &env.cfg,
        &[("MES_EVENTS_EVENTS__CATALOG", site.to_str().unwrap())],
    );
    let c = env.db.client().await;
    let good = serde_json::json!({
        "equipmentId": "dryer1", "state": "down", "previousState": "running",
        "hierarchyScope": {"site": "bsl", "area": "gran", "workCenter": "line2", "workUnit": "dryer1"}
    });
    let bad = serde_json::json!({"equipmentId": "dryer2", "state": "exploded", "hierarchyScope": {"site": "bsl"}});
    mes_events::store::write::emit(
        &c,
        EQUIPMENT,
        "dryer1",
        &good.to_string(),
        &Default::default(),
    )
    .await
    .unwrap();
    mes_events::store::write::emit(
        &c,
        EQUIPMENT,
        "dryer2",
        &bad.to_string(),
        &Default::default(),
    )
    .await
    .unwrap();
    env.drained(std::time::Duration::from_secs(30), "both rows dealt with")
        .await;
    let got = read_stream(&js, "MES_EVENTS").await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        got[0].subject,
        "mes.bsl.gran.line2.dryer1.equipment.statechanged.v1.dryer1"
    );
    let rejected = mes_events::store::operator::rejected(&c).await.unwrap();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].key, "dryer2");
    assert_eq!(rejected[0].path.as_deref(), Some("/state"));
    assert_eq!(rejected[0].rule.as_deref(), Some("enum"));
    assert!(relay.terminate().await.success());
}

#[tokio::test]
async fn a_broken_site_catalog_stops_start_up_with_exit_2_naming_file_and_place() {
    use crate::support::*;
    let env = Env::new().await;
    // A row waiting: no broken catalog may reject it.
    let c = env.db.client().await;
    emit_order(&c, "PO-1").await;
    let edit = |dir: &std::path::Path, file: &str, f: &dyn Fn(String) -> String| {
        let p = dir.join(file);
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, f(text)).unwrap();
    };
    type Break = Box<dyn Fn(&std::path::Path)>;
    let cases: Vec<(&str, Break, &str, &str)> = vec![
        (
            "invalid JSON",
            Box::new(move |d| {
                edit(d, "equipment/statechanged.v1.0.json", &|t| {
                    t.replacen('{', "{,", 1)
                })
            }),
            "equipment/statechanged.v1.0.json at line 1 column",
            "valid JSON",
        ),
        (
            "invalid schema",
            Box::new(move |d| {
                edit(d, "equipment/statechanged.v1.0.json", &|t| {
                    t.replace("\"type\": \"object\"", "\"type\": 12")
                })
            }),
            "catalog.json at /events/0",
            "does not compile",
        ),
        (
            "$id mismatch",
            Box::new(move |d| {
                edit(d, "equipment/statechanged.v1.0.json", &|t| {
                    t.replace(
                        "schemas/equipment/statechanged.v1.0.json",
                        "schemas/equipment/other.json",
                    )
                })
            }),
            "equipment/statechanged.v1.0.json",
            "\"$id\" is",
        ),
        (
            "an example that fails",
            Box::new(move |d| {
                edit(d, "equipment/statechanged.v1.examples.json", &|t| {
                    t.replacen("\"state\": \"down\"", "\"state\": \"asleep\"", 1)
                })
            }),
            "statechanged.v1.examples.json at /valid/0/data/state",
            "enum",
        ),
        (
            "a duplicate type",
            Box::new(move |d| {
                edit(d, "catalog.json", &|t| {
                    t.replace(
                        "\"type\": \"io.mesevents.mes.equipment.statechanged.v1\"",
                        "\"type\": \"io.mesevents.mes.processorder.statuschanged.v1\"",
                    )
                    .replace(
                        "\"category\": \"equipment\"",
                        "\"category\": \"processorder\"",
                    )
                    .replace(
                        "\"event\": \"statechanged\"",
                        "\"event\": \"statuschanged\"",
                    )
                })
            }),
            "catalog.json at /events/0/type",
            "already in the catalog",
        ),
        (
            "an ambiguous subject",
            Box::new(move |d| {
                edit(d, "catalog.json", &|t| {
                    t.replace(
                        "equipment.statechanged.v1.{key}",
                        "processorder.statuschanged.v1.{key}",
                    )
                })
            }),
            "catalog.json at /events/0/subject",
            "unambiguous subject",
        ),
    ];
    for (class, break_it, where_, says) in cases {
        let dir = site_copy();
        break_it(dir.path());
        let mut relay = RelayProcess::spawn(
            &env.cfg,
            &[("MES_EVENTS_EVENTS__CATALOG", dir.path().to_str().unwrap())],
        );
        let status = relay.wait_exit(class).await;
        let err = relay.stderr();
        assert_eq!(status.code(), Some(2), "{class}: {err}");
        assert!(
            err.contains(where_) && err.contains(says),
            "{class}: expected {where_:?} and {says:?} in\n{err}"
        );
    }
    let counts = mes_events::store::operator::counts(&c).await.unwrap();
    assert_eq!(
        (counts.pending, counts.rejected),
        (1, 0),
        "no row rejected because of it"
    );
}

/// `mes-events ARGS` from a folder that is not the repository.
fn cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_mes-events"))
        .args(args)
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap()
}

#[test]
fn the_catalog_command_lists_shows_checks_and_compares() {
    let site = site_catalog();
    let site = site.to_str().unwrap();
    let o = cli(&["--catalog", site, "catalog", "list"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && text.contains(EQUIPMENT), "{text}");
    let o = cli(&["--catalog", site, "catalog", "show", EQUIPMENT]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && text.contains("mes.*.*.*.*.equipment.statechanged.v1.<key>"),
        "{text}"
    );
    assert_eq!(cli(&["catalog", "check", site]).status.code(), Some(0));
    let broken = site_copy();
    std::fs::write(broken.path().join("equipment/statechanged.v1.0.json"), "{").unwrap();
    let o = cli(&["catalog", "check", broken.path().to_str().unwrap()]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // diff: 0 compatible, 4 breaking, 2 not JSON.
    let dir = tempfile::tempdir().unwrap();
    let old = site_catalog().join("equipment/statechanged.v1.0.json");
    let mut schema: Value = serde_json::from_str(&std::fs::read_to_string(&old).unwrap()).unwrap();
    schema["properties"]["shift"] = serde_json::json!({"type": "string"});
    let widened = dir.path().join("v1.1.json");
    std::fs::write(&widened, schema.to_string()).unwrap();
    schema["required"]
        .as_array_mut()
        .unwrap()
        .push("shift".into());
    let required = dir.path().join("v1.2.json");
    std::fs::write(&required, schema.to_string()).unwrap();
    let old = old.to_str().unwrap();
    let o = cli(&["catalog", "diff", old, widened.to_str().unwrap()]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let o = cli(&["catalog", "diff", old, required.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(4), "{text}");
    assert!(
        text.contains("BREAKING") && text.contains("/properties/shift"),
        "{text}"
    );
    let o = cli(&[
        "catalog",
        "diff",
        old,
        broken
            .path()
            .join("equipment/statechanged.v1.0.json")
            .to_str()
            .unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
}
