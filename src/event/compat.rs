//! Schema evolution: what changed between two versions of an event's JSON Schema, and whether a
//! consumer written for the old one still reads what the new one allows.
//!
//! A new minor version may only add optional properties or widen (a type, an enumeration).
//! Removing, retyping, renaming (a removal and an addition), making a property required, making
//! a required one optional, narrowing, or pointing a `$ref` elsewhere is breaking: it needs a
//! new major (a new type and subject).
//!
//! Pure: two schema documents in, the changes out.

use std::collections::BTreeSet;

use serde_json::Value;

/// One difference, where it is and whether it breaks consumers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// JSON Pointer into the schema (`/properties/state`).
    pub pointer: String,
    pub what: String,
    pub breaking: bool,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verdict = if self.breaking {
            "BREAKING"
        } else {
            "compatible"
        };
        let at = if self.pointer.is_empty() {
            "/"
        } else {
            &self.pointer
        };
        write!(f, "{verdict:<10}  {at}: {}", self.what)
    }
}

/// Every difference between `old` and `new`, in document order.
pub fn diff(old: &Value, new: &Value) -> Vec<Change> {
    let mut out = Vec::new();
    node(old, new, "", &mut out);
    out
}

/// Whether any change breaks consumers.
pub fn breaking(changes: &[Change]) -> bool {
    changes.iter().any(|c| c.breaking)
}

fn push(out: &mut Vec<Change>, pointer: &str, breaking: bool, what: String) {
    out.push(Change {
        pointer: pointer.to_owned(),
        what,
        breaking,
    });
}

/// A schema keyword's values as a set (`"type": "string"` or `["string", "null"]`).
fn set(v: Option<&Value>) -> Option<BTreeSet<String>> {
    match v? {
        Value::Array(a) => Some(a.iter().map(|x| x.to_string()).collect()),
        other => Some(std::iter::once(other.to_string()).collect()),
    }
}

fn names(v: Option<&Value>) -> BTreeSet<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn node(old: &Value, new: &Value, at: &str, out: &mut Vec<Change>) {
    // A set-valued keyword: widening is compatible, anything else breaks.
    for (key, noun) in [("type", "type"), ("enum", "enumeration")] {
        match (set(old.get(key)), set(new.get(key))) {
            (Some(o), Some(n)) if o == n => {}
            (Some(o), Some(n)) if n.is_superset(&o) => push(
                out,
                &format!("{at}/{key}"),
                false,
                format!(
                    "{noun} widened: adds {}",
                    n.difference(&o).cloned().collect::<Vec<_>>().join(", ")
                ),
            ),
            (Some(o), Some(n)) if o.is_superset(&n) => push(
                out,
                &format!("{at}/{key}"),
                true,
                format!(
                    "{noun} narrowed: drops {}",
                    o.difference(&n).cloned().collect::<Vec<_>>().join(", ")
                ),
            ),
            (Some(o), Some(n)) => push(
                out,
                &format!("{at}/{key}"),
                true,
                format!(
                    "{noun} changed from {} to {}",
                    o.into_iter().collect::<Vec<_>>().join(", "),
                    n.into_iter().collect::<Vec<_>>().join(", ")
                ),
            ),
            // A constraint lifted widens; one added narrows.
            (Some(_), None) => push(
                out,
                &format!("{at}/{key}"),
                false,
                format!("{noun} constraint removed"),
            ),
            (None, Some(_)) => push(
                out,
                &format!("{at}/{key}"),
                true,
                format!("{noun} constraint added"),
            ),
            (None, None) => {}
        }
    }
    if old.get("$ref") != new.get("$ref") {
        push(
            out,
            &format!("{at}/$ref"),
            true,
            format!(
                "$ref changed from {} to {}",
                old.get("$ref").unwrap_or(&Value::Null),
                new.get("$ref").unwrap_or(&Value::Null)
            ),
        );
    }
    let (old_req, new_req) = (names(old.get("required")), names(new.get("required")));
    let empty = serde_json::Map::new();
    let old_props = old
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let new_props = new
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    for (name, o) in old_props {
        let p = format!("{at}/properties/{name}");
        match new_props.get(name) {
            None => push(
                out,
                &p,
                true,
                format!("property {name} removed (or renamed)"),
            ),
            Some(n) => node(o, n, &p, out),
        }
    }
    for name in new_props.keys().filter(|k| !old_props.contains_key(*k)) {
        let p = format!("{at}/properties/{name}");
        if new_req.contains(name) {
            push(out, &p, true, format!("required property {name} added"));
        } else {
            push(out, &p, false, format!("optional property {name} added"));
        }
    }
    for name in new_req.difference(&old_req) {
        if old_props.contains_key(name) {
            push(
                out,
                &format!("{at}/required"),
                true,
                format!("property {name} made required"),
            );
        }
    }
    for name in old_req.difference(&new_req) {
        if new_props.contains_key(name) {
            push(
                out,
                &format!("{at}/required"),
                true,
                format!("property {name} no longer required: consumers may find it missing"),
            );
        }
    }
    if let (Some(o), Some(n)) = (old.get("items"), new.get("items")) {
        node(o, n, &format!("{at}/items"), out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({
            "type": "object",
            "required": ["orderId", "status"],
            "properties": {
                "orderId": {"type": "string"},
                "status": {"enum": ["released", "running", "completed"]},
                "note": {"type": "string"}
            }
        })
    }

    #[test]
    fn each_kind_of_change_gets_its_verdict() {
        let with = |f: &dyn Fn(&mut Value)| {
            let mut v = base();
            f(&mut v);
            v
        };
        let cases: Vec<(&str, Value, bool)> = vec![
            ("unchanged", base(), false),
            (
                "add an optional field",
                with(&|v| v["properties"]["shift"] = json!({"type": "string"})),
                false,
            ),
            (
                "add a required field",
                with(&|v| {
                    v["properties"]["shift"] = json!({"type": "string"});
                    v["required"].as_array_mut().unwrap().push(json!("shift"));
                }),
                true,
            ),
            (
                "remove a field",
                with(&|v| {
                    v["properties"].as_object_mut().unwrap().remove("note");
                }),
                true,
            ),
            (
                "change a type",
                with(&|v| v["properties"]["note"] = json!({"type": "integer"})),
                true,
            ),
            (
                "narrow an enumeration",
                with(&|v| v["properties"]["status"] = json!({"enum": ["released", "running"]})),
                true,
            ),
            (
                "widen an enumeration",
                with(&|v| {
                    v["properties"]["status"] =
                        json!({"enum": ["released", "running", "completed", "aborted"]})
                }),
                false,
            ),
            (
                "rename a field",
                with(&|v| {
                    let note = v["properties"]
                        .as_object_mut()
                        .unwrap()
                        .remove("note")
                        .unwrap();
                    v["properties"]["remark"] = note;
                }),
                true,
            ),
            (
                "make a field required",
                with(&|v| v["required"].as_array_mut().unwrap().push(json!("note"))),
                true,
            ),
            (
                "widen a type",
                with(&|v| v["properties"]["note"] = json!({"type": ["string", "null"]})),
                false,
            ),
        ];
        for (case, new, expected) in cases {
            let changes = diff(&base(), &new);
            assert_eq!(breaking(&changes), expected, "{case}: {changes:?}");
            assert_eq!(
                changes.is_empty(),
                case == "unchanged",
                "{case}: {changes:?}"
            );
        }
    }

    #[test]
    fn a_change_names_its_place() {
        let mut new = base();
        new["properties"]["status"] = json!({"enum": ["released"]});
        let c = diff(&base(), &new);
        assert_eq!(c[0].pointer, "/properties/status/enum");
        assert!(c[0].to_string().starts_with("BREAKING"), "{}", c[0]);
    }
}
