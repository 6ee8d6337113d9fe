//! The event catalog under schemas/: every example validates as stated, every event round-trips
//! through both binding modes, and the AsyncAPI document says the same as catalog.json.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use chrono::{TimeZone, Utc};
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
fn asyncapi_describes_exactly_the_catalog() {
    let catalog = read_json("catalog.json");
    let asyncapi = read_json("asyncapi.json");
    assert!(
        asyncapi["asyncapi"].as_str().unwrap().starts_with("3."),
        "AsyncAPI 3"
    );
    let from_catalog: BTreeSet<(String, String, String)> = catalog["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_owned(),
                e["subject"].as_str().unwrap().to_owned(),
                e["schema"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut from_asyncapi = BTreeSet::new();
    for (id, channel) in asyncapi["channels"].as_object().unwrap() {
        let address = channel["address"].as_str().unwrap().to_owned();
        let messages = channel["messages"].as_object().unwrap();
        assert_eq!(messages.len(), 1, "channel {id}: one message per channel");
        for message in messages.values() {
            let message = resolve(&asyncapi, message);
            from_asyncapi.insert((
                message["name"].as_str().unwrap().to_owned(),
                address.clone(),
                message["payload"]["$ref"].as_str().unwrap().to_owned(),
            ));
        }
    }
    let only_catalog: Vec<_> = from_catalog.difference(&from_asyncapi).collect();
    let only_asyncapi: Vec<_> = from_asyncapi.difference(&from_catalog).collect();
    assert!(
        only_catalog.is_empty() && only_asyncapi.is_empty(),
        "catalog.json and asyncapi.json drifted:\n only in catalog: {only_catalog:?}\n only in asyncapi: {only_asyncapi:?}"
    );
}

/// Follows a local `$ref` (`#/components/messages/...`).
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) if r.starts_with("#/") => doc
            .pointer(&r[1..])
            .unwrap_or_else(|| panic!("dangling $ref {r}")),
        _ => v,
    }
}
