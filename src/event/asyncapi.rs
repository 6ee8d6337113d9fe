//! AsyncAPI 3 document of a catalog: one channel, receive operation and message per event type,
//! its headers (the CloudEvents NATS binding) and its payload schema, generated from the active
//! catalog (shipped or extended by a site folder) so it can never drift from what the relay
//! validates and publishes.
//!
//! The document stands alone: every schema document of the catalog is copied under
//! `components/schemas` (named by its path, `processorder/statuschanged.v1.0.json` →
//! `processorder.statuschanged.v1.0`) with its `$ref`s rewritten to point inside the document,
//! so a parser needs neither the files beside it nor the network. Pure.

use serde_json::{json, Map, Value};

use super::catalog::Catalog;

/// The AsyncAPI version written.
pub const VERSION: &str = "3.0.0";

/// The document for `catalog`.
pub fn document(catalog: &Catalog) -> Value {
    let file = &catalog.file;
    let mut channels = Map::new();
    let mut operations = Map::new();
    for entry in catalog.entries() {
        let d = &entry.decl;
        let id = format!("{}.{}.v{}", d.category, d.event, d.major);
        let description = format!(
            "{} Stream {}. Business key: data.{}.",
            d.description, d.stream, d.key
        );
        let message = json!({
            "name": d.ty,
            "title": d.title,
            "summary": d.description,
            "contentType": "application/json",
            "headers": headers(&d.ty, &d.key, &d.dataschema),
            "payload": { "$ref": format!("#/components/schemas/{}", component_name(&d.schema)) },
        });
        channels.insert(
            id.clone(),
            json!({
                "address": d.subject,
                "title": d.title,
                "description": description,
                "servers": [{ "$ref": "#/servers/local" }],
                "parameters": parameters(&file.subject_layout),
                "messages": { id.clone(): message },
            }),
        );
        operations.insert(
            format!("receive.{id}"),
            json!({
                "action": "receive",
                "title": format!("Receive {}", lower_first(&d.title)),
                "channel": { "$ref": format!("#/channels/{id}") },
                "messages": [{ "$ref": format!("#/channels/{id}/messages/{id}") }],
            }),
        );
    }
    let mut schemas = Map::new();
    for (path, schema) in catalog.documents() {
        schemas.insert(
            component_name(path),
            inline(schema, path, &file.schema_base),
        );
    }
    let streams: Vec<String> = file
        .streams
        .iter()
        .map(|(name, s)| format!("{name} ({})", s.categories.join(", ")))
        .collect();
    json!({
        "asyncapi": VERSION,
        "info": {
            "title": "mes-events",
            "version": "1.0.0",
            "description": format!("{INTRO}\n\nSubjects: `{}`, {SUBJECTS}\n\nStreams and the categories they hold: {}.\n\nSchemas: every `dataschema` is `{}` + a path; the same document is in the JetStream key-value bucket `MES_SCHEMAS` under that path (key = path, e.g. `processorder/statuschanged.v1.0.json`), readable by every system with a direct get on `$JS.API.DIRECT.GET.KV_MES_SCHEMAS.$KV.MES_SCHEMAS.<path>`.",
                file.subject_layout, streams.join("; "), file.schema_base),
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {
                "host": "localhost:4222",
                "protocol": "nats",
                "description": format!("nats-server with JetStream (streams {}).",
                    file.streams.keys().cloned().collect::<Vec<_>>().join(", ")),
            }
        },
        "channels": channels,
        "operations": operations,
        "components": { "schemas": schemas },
    })
}

/// The component name of a schema document: its path without `.json`, `/` as `.` (component
/// names allow `[A-Za-z0-9.\-_]` only).
pub fn component_name(path: &str) -> String {
    path.strip_suffix(".json").unwrap_or(path).replace('/', ".")
}

/// A schema document as a component: without `$id` and `$schema` (the component is not a
/// resource of its own), every `$ref` pointing into the document.
fn inline(schema: &Value, path: &str, base: &str) -> Value {
    match schema {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("$id" | "$schema", _) => {}
                    ("$ref", Value::String(r)) => {
                        out.insert(k.clone(), Value::String(rewrite_ref(r, path, base)));
                    }
                    _ => {
                        out.insert(k.clone(), inline(v, path, base));
                    }
                }
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(|v| inline(v, path, base)).collect()),
        v => v.clone(),
    }
}

/// `$ref` `r` found in the document at `path`, as a pointer into the AsyncAPI document.
fn rewrite_ref(r: &str, path: &str, base: &str) -> String {
    let (target, fragment) = r.split_once('#').unwrap_or((r, ""));
    let target = if target.is_empty() {
        path.to_owned()
    } else if let Some(abs) = target.strip_prefix(base) {
        abs.to_owned()
    } else {
        resolve(path, target)
    };
    format!("#/components/schemas/{}{fragment}", component_name(&target))
}

/// A relative reference resolved against the folder of `path` (`..` and `.` segments).
fn resolve(path: &str, relative: &str) -> String {
    let mut parts: Vec<&str> = path.split('/').collect();
    parts.pop();
    for seg in relative.split('/') {
        match seg {
            "." | "" => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    parts.join("/")
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

const INTRO: &str = "MES events (ISA-95 / ISA-88: process orders, batches, material actuals, lots, inventory, controlled documents, process variables, and the types a site adds) published as CloudEvents 1.0 on NATS JetStream.\n\nBinding: CloudEvents NATS protocol binding, binary content mode. Every CloudEvents attribute, extensions included, travels in its own NATS header named `ce-<attribute>` in lower case (`datacontenttype` as `ce-datacontenttype`, not `Content-Type`). Header values are percent-encoded: space, `\"`, `%` and every byte outside U+0021-U+007E become `%XY` of the UTF-8 bytes (upper-case hex). The message body is the event `data` alone: a JSON document (application/json) valid against the schema named by `ce-dataschema`. Readers should also accept structured mode (`Content-Type: application/cloudevents+json`, body = the whole CloudEvent in the JSON format).\n\nEnvelope profile: `type` = `io.mesevents.mes.<category>.<event>.v<major>`; `source` = `/mes/<installation>/<site>`; `subject` = the raw business key; `time` = when it happened; `recordedtime` = when the MES recorded it; `sequence` = zero-padded per-source order; `partitionkey` = the business key; `dataschema` = the exact schema version's URI (published schemas never change). `Nats-Msg-Id` = `<source>#<id>` for JetStream deduplication.";

const SUBJECTS: &str = "a fixed token count so every wildcard position means the same for every type; location tokens come from the data's `hierarchyScope`. Wildcard recipes: a site `mes.bsl.>`; all order status changes `mes.*.*.*.*.processorder.statuschanged.>`; all material actuals of order 4711 `mes.*.*.*.*.material.*.v1.4711`; one unit's variables `mes.bsl.gran.line2.dryer1.processvariable.>`.";

/// The address parameters of the subject layout.
fn parameters(layout: &str) -> Value {
    let level = |name: &str, field: &str, example: &str| {
        json!({
            "description": format!("{name} subject code from data.hierarchyScope.{field}; `_` when the level does not apply (or the event's hierarchyScope does not name it)."),
            "examples": [example, "_"],
        })
    };
    let all = json!({
        "prefix": {
            "description": "Configured subject prefix (events.subject_prefix, default `mes`); one or more tokens.",
            "default": "mes",
            "examples": ["mes"],
        },
        "site": {
            "description": "Site subject code from data.hierarchyScope.site ([a-z0-9-]); the installation's configured site when the data names none.",
            "examples": ["bsl"],
        },
        "area": level("Area", "area", "gran"),
        "workcenter": level("Work center", "workCenter", "line2"),
        "workunit": level("Work unit", "workUnit", "dryer1"),
        "key": {
            "description": format!("The business key (raw value in ce-subject), escaped reversibly into one token: [A-Za-z0-9-] kept, every other UTF-8 byte as `_XX` (upper-case hex), e.g. `LOT.2024/01` -> `LOT_2E2024_2F01`; a key whose escaped form is longer than {} characters becomes `_h` + the lower-case hex SHA-256 of the raw key.", super::subject::MAX_KEY_TOKEN),
            "examples": ["4711", "LOT_2E2024_2F01"],
        },
    });
    // Only those the layout names (every one the address uses must be declared).
    let mut out = Map::new();
    for (k, v) in all.as_object().expect("an object") {
        if layout.contains(&format!("{{{k}}}")) {
            out.insert(k.clone(), v.clone());
        }
    }
    Value::Object(out)
}

/// The NATS headers of one type's binary-mode CloudEvent.
fn headers(ty: &str, key: &str, dataschema: &str) -> Value {
    let s = |description: &str| json!({ "type": "string", "description": description });
    json!({
        "type": "object",
        "description": "NATS headers of a binary-mode CloudEvent. Values are percent-encoded (space, '\"', '%' and bytes outside U+0021-U+007E as %XY of the UTF-8 bytes).",
        "required": [
            "ce-specversion", "ce-id", "ce-source", "ce-type", "ce-subject", "ce-time",
            "ce-datacontenttype", "ce-dataschema", "ce-sequence", "ce-partitionkey",
            "ce-recordedtime", "Nats-Msg-Id"
        ],
        "properties": {
            "ce-specversion": { "type": "string", "description": "CloudEvents spec version.", "const": "1.0" },
            "ce-id": s("Event id (UUIDv7); unique per source, kept on re-send."),
            "ce-source": { "type": "string", "description": "Event source: /mes/<installation>/<site>.", "examples": ["/mes/mes/bsl"] },
            "ce-type": { "type": "string", "description": "Event type.", "const": ty },
            "ce-subject": s(&format!("Raw business key ({key}), percent-encoded.")),
            "ce-time": { "type": "string", "description": "When it happened (RFC 3339).", "format": "date-time" },
            "ce-datacontenttype": { "type": "string", "description": "Media type of the body.", "const": "application/json" },
            "ce-dataschema": { "type": "string", "description": "URI of the exact data schema version (its $id); the same document is in the MES_SCHEMAS bucket under the URI's path.", "const": dataschema },
            "ce-sequence": { "type": "string", "description": "Per-source order: decimal zero-padded to 20 digits, so string order is event order.", "pattern": "^[0-9]{20}$" },
            "ce-partitionkey": s("Key whose events stay in order: the business key, percent-encoded."),
            "ce-recordedtime": { "type": "string", "description": "When the MES recorded the event (RFC 3339).", "format": "date-time" },
            "ce-traceparent": s("W3C trace context traceparent, when the producer had one."),
            "ce-tracestate": s("W3C trace context tracestate, when the producer had one."),
            "Nats-Msg-Id": s("JetStream deduplication id: <source>#<id>."),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_point_inside_the_document() {
        let base = "https://mesevents.io/schemas/";
        let at = "batch/eventrecorded.v1.0.json";
        assert_eq!(
            rewrite_ref("#/$defs/TypedValue", at, base),
            "#/components/schemas/batch.eventrecorded.v1.0/$defs/TypedValue"
        );
        assert_eq!(
            rewrite_ref("../common.v1.0.json#/$defs/Actor", at, base),
            "#/components/schemas/common.v1.0/$defs/Actor"
        );
        assert_eq!(
            rewrite_ref("statuschanged.v1.0.json", at, base),
            "#/components/schemas/batch.statuschanged.v1.0"
        );
        assert_eq!(
            rewrite_ref(
                "https://mesevents.io/schemas/common.v1.0.json#/$defs/X",
                at,
                base
            ),
            "#/components/schemas/common.v1.0/$defs/X"
        );
    }

    #[test]
    fn every_type_of_the_catalog_has_a_channel_an_operation_and_its_schema() {
        let catalog = Catalog::embedded().unwrap();
        let doc = document(&catalog);
        let text = doc.to_string();
        for e in catalog.entries() {
            let id = format!("{}.{}.v{}", e.decl.category, e.decl.event, e.decl.major);
            let m = &doc["channels"][&id]["messages"][&id];
            assert_eq!(m["name"], e.decl.ty.as_str());
            let payload = m["payload"]["$ref"].as_str().unwrap();
            let name = payload.strip_prefix("#/components/schemas/").unwrap();
            assert!(doc["components"]["schemas"][name].is_object(), "{payload}");
            assert!(doc["operations"][format!("receive.{id}")].is_object());
        }
        // Nothing left that a parser would fetch.
        assert!(!text.contains("\"$ref\":\"../"), "relative refs left");
        assert!(!text.contains("\"$ref\":\"https:"), "absolute refs left");
        assert!(!text.contains("\"$id\""));
    }
}
