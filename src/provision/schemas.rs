//! The active catalog on the bus: the JetStream key-value bucket [`BUCKET`], one key per schema
//! document, named by the path its `dataschema` (its `$id`) has under the catalog's schema base
//! (`https://mesevents.io/schemas/processorder/statuschanged.v1.0.json` →
//! `processorder/statuschanged.v1.0.json`), and two index documents: [`CATALOG_KEY`] (the
//! merged catalog) and [`ASYNCAPI_KEY`] (its AsyncAPI document).
//!
//! A published schema is a contract that events already on the streams name: it is put once
//! and never replaced. A catalog whose document differs from the one on the bus under the same
//! path is refused (a new minor version is a new file); keys the catalog no longer has are left
//! alone (events may still name them). The index documents follow the active catalog.
//!
//! Only the admin writes the bucket. Systems read it with a direct get on
//! `$JS.API.DIRECT.GET.KV_MES_SCHEMAS.$KV.MES_SCHEMAS.<path>` ([`super::auth`] grants it across
//! accounts; a key-value client's `get` would first ask for the stream's info, which the
//! JetStream API answers only inside its own account).

use std::collections::BTreeMap;

use async_nats::jetstream::{self, kv, Context};
use futures::TryStreamExt;
use serde_json::Value;

use super::apply::ProvisionError;
use super::load::Declaration;
use crate::event::asyncapi;
use crate::event::catalog::Catalog;

/// The bucket (its stream is `KV_MES_SCHEMAS`).
pub const BUCKET: &str = "MES_SCHEMAS";
/// The merged catalog (`catalog.json` of the shipped catalog with the site's additions).
pub const CATALOG_KEY: &str = "catalog.json";
/// The AsyncAPI document of the active catalog.
pub const ASYNCAPI_KEY: &str = "asyncapi.json";

/// The subject a system requests to read `path` from the bucket (empty body; the answer is the
/// document, or a `404` status header).
pub fn direct_get_subject(path: &str) -> String {
    format!("$JS.API.DIRECT.GET.KV_{BUCKET}.$KV.{BUCKET}.{path}")
}

/// What the bucket should hold: every schema document (immutable once published) and the index
/// documents (replaced as the catalog changes), as (key, document, immutable).
pub fn documents(catalog: &Catalog) -> Vec<(String, Value, bool)> {
    let mut out: Vec<(String, Value, bool)> = catalog
        .documents()
        .iter()
        .map(|(path, v)| (path.clone(), v.clone(), true))
        .collect();
    out.push((
        CATALOG_KEY.into(),
        serde_json::to_value(&catalog.file).expect("the catalog file serializes"),
        false,
    ));
    out.push((ASYNCAPI_KEY.into(), asyncapi::document(catalog), false));
    out
}

/// The bucket's plan: what `apply` puts, what stays, what it refuses.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SchemaPlan {
    /// The bucket does not exist yet.
    pub create_bucket: bool,
    /// Keys to put (new schema documents, changed index documents).
    pub put: Vec<String>,
    pub unchanged: usize,
    /// Published schema documents the catalog has a different version of: refused.
    pub changed: Vec<String>,
    /// Keys on the bus the catalog does not have: kept (events may name them).
    pub kept: Vec<String>,
    /// It was carried out (`apply`).
    #[serde(skip)]
    pub applied: bool,
}

impl SchemaPlan {
    pub fn pending(&self) -> bool {
        self.create_bucket || !self.put.is_empty() || !self.changed.is_empty()
    }

    /// Why each changed document is refused, with what to do.
    pub fn refusals(&self) -> Vec<String> {
        self.changed
            .iter()
            .map(|k| {
                format!(
                    "schema {k} in bucket {BUCKET}: the catalog's document differs from the published one, and a published schema never changes (events name it): add a new minor version (a new file), or, if no event names it yet, remove it first with `nats kv del {BUCKET} {k}`"
                )
            })
            .collect()
    }
}

impl std::fmt::Display for SchemaPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (create, put) = if self.applied {
            ("created", "put")
        } else {
            ("create", "put")
        };
        if self.create_bucket {
            writeln!(f, "{create:>9}  schema bucket {BUCKET}")?;
        }
        for k in &self.put {
            writeln!(f, "{put:>9}  schema {k}")?;
        }
        for k in &self.changed {
            writeln!(
                f,
                "  refused  schema {k}   (published: a changed schema needs a new version)"
            )?;
        }
        for k in &self.kept {
            writeln!(
                f,
                "     kept  schema {k}   (not in the catalog; events may name it)"
            )?;
        }
        let verb = if self.applied { "put" } else { "to put" };
        write!(
            f,
            "schemas: {} {verb}, {} unchanged, {} refused, {} kept",
            self.put.len(),
            self.unchanged,
            self.changed.len(),
            self.kept.len()
        )
    }
}

/// Compares the catalog's documents with the bucket's (`live`: key → bytes; `None`: no
/// bucket). Pure.
pub fn compare(catalog: &Catalog, live: Option<&BTreeMap<String, Vec<u8>>>) -> SchemaPlan {
    let mut plan = SchemaPlan {
        create_bucket: live.is_none(),
        ..SchemaPlan::default()
    };
    let empty = BTreeMap::new();
    let live = live.unwrap_or(&empty);
    let docs = documents(catalog);
    for (key, doc, immutable) in &docs {
        match live.get(key) {
            None => plan.put.push(key.clone()),
            Some(bytes) => {
                let same = serde_json::from_slice::<Value>(bytes).is_ok_and(|v| v == *doc);
                if same {
                    plan.unchanged += 1;
                } else if *immutable {
                    plan.changed.push(key.clone());
                } else {
                    plan.put.push(key.clone());
                }
            }
        }
    }
    plan.kept = live
        .keys()
        .filter(|k| !docs.iter().any(|(d, _, _)| d == *k))
        .cloned()
        .collect();
    plan
}

async fn live(js: &Context) -> Result<Option<BTreeMap<String, Vec<u8>>>, ProvisionError> {
    let nats = |e: &dyn std::fmt::Display| ProvisionError::Nats(format!("bucket {BUCKET}: {e}"));
    if super::apply::stream_info(js, &format!("KV_{BUCKET}"))
        .await?
        .is_none()
    {
        return Ok(None);
    }
    let store = js.get_key_value(BUCKET).await.map_err(|e| nats(&e))?;
    let keys: Vec<String> = match store.keys().await {
        Ok(k) => k.try_collect().await.map_err(|e| nats(&e))?,
        Err(e) => return Err(nats(&e)),
    };
    let mut out = BTreeMap::new();
    for k in keys {
        if let Some(v) = store.get(&k).await.map_err(|e| nats(&e))? {
            out.insert(k, v.to_vec());
        }
    }
    Ok(Some(out))
}

/// Types of the catalog whose events no declared stream would take: the catalog routes them to
/// a stream that is not declared, or whose subjects do not cover theirs. The relay would hold
/// them (a missing or refusing stream holds only its rows). Pure.
pub fn uncovered(d: &Declaration, catalog: &Catalog, subject_prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in catalog.entries() {
        let decl = &e.decl;
        let pattern = decl
            .subject
            .replace("{prefix}", subject_prefix)
            .split('.')
            .map(|t| if t.starts_with('{') { "*" } else { t })
            .collect::<Vec<_>>()
            .join(".");
        let stream = d.streams.iter().find(|s| *s.name.get_ref() == decl.stream);
        match stream {
            None => out.push(format!(
                "the catalog routes {} to stream {}, which the declaration does not have: declare it, or its events will be held",
                decl.ty, decl.stream
            )),
            Some(s) if !s.subjects.iter().any(|x| super::load::covers(x.get_ref(), &pattern)) => {
                out.push(format!(
                    "the catalog routes {} to stream {}, whose declared subjects do not take {pattern}: add `{}` to its subjects, or its events will be held",
                    decl.ty,
                    decl.stream,
                    pattern.rsplitn(4, '.').last().map(|p| format!("{p}.>")).unwrap_or(pattern.clone())
                ));
            }
            Some(_) => {}
        }
    }
    out
}

/// The bucket's replicas: those of the most replicated declared stream (1 when none says).
fn replicas(d: &Declaration) -> usize {
    d.streams
        .iter()
        .filter_map(|s| s.replicas)
        .max()
        .unwrap_or(1)
}

/// What `apply` would do to the bucket.
pub async fn plan(js: &Context, catalog: &Catalog) -> Result<SchemaPlan, ProvisionError> {
    Ok(compare(catalog, live(js).await?.as_ref()))
}

/// Creates the bucket if missing and puts what the plan says; refuses changed schema documents
/// (the rest is still put). Returns the plan carried out, or the refusal with what was done.
pub async fn apply(
    js: &Context,
    d: &Declaration,
    catalog: &Catalog,
) -> Result<SchemaPlan, ProvisionError> {
    let mut plan = plan(js, catalog).await?;
    let nats = |e: &dyn std::fmt::Display| ProvisionError::Nats(format!("bucket {BUCKET}: {e}"));
    let store = if plan.create_bucket {
        js.create_key_value(kv::Config {
            bucket: BUCKET.into(),
            description: "mes-events: every schema document of the active catalog, keyed by the path its dataschema names; written by `mes-events provision apply`".into(),
            history: 1,
            storage: jetstream::stream::StorageType::File,
            num_replicas: replicas(d),
            ..Default::default()
        })
        .await
        .map_err(|e| nats(&e))?
    } else {
        js.get_key_value(BUCKET).await.map_err(|e| nats(&e))?
    };
    let docs = documents(catalog);
    let mut applied = Vec::new();
    if plan.create_bucket {
        applied.push(format!("created schema bucket {BUCKET}"));
    }
    for key in &plan.put {
        let (_, doc, _) = docs.iter().find(|(k, _, _)| k == key).expect("planned");
        let bytes = serde_json::to_vec_pretty(doc).expect("JSON serializes");
        store.put(key, bytes.into()).await.map_err(|e| {
            ProvisionError::Nats(format!(
                "schema {key}: {e} (applied before it: {})",
                if applied.is_empty() {
                    "nothing".to_owned()
                } else {
                    applied.join("; ")
                }
            ))
        })?;
        applied.push(format!("put schema {key}"));
    }
    plan.applied = true;
    if plan.changed.is_empty() {
        Ok(plan)
    } else {
        Err(ProvisionError::Refused {
            refused: plan.refusals(),
            applied,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_documents_are_put_changed_schemas_refused_and_stale_keys_kept() {
        let catalog = Catalog::embedded().unwrap();
        let all = compare(&catalog, None);
        assert!(all.create_bucket);
        assert_eq!(all.put.len(), catalog.documents().len() + 2);
        assert!(all.put.contains(&"common.v1.0.json".to_owned()));

        let mut live: BTreeMap<String, Vec<u8>> = documents(&catalog)
            .into_iter()
            .map(|(k, v, _)| (k, serde_json::to_vec_pretty(&v).unwrap()))
            .collect();
        let same = compare(&catalog, Some(&live));
        assert!(!same.pending(), "{same:?}");
        assert_eq!(same.unchanged, catalog.documents().len() + 2);

        // Compared as JSON, not as bytes: compact text is the same document.
        let key = "processorder/statuschanged.v1.0.json".to_owned();
        let compact = serde_json::to_vec(&catalog.documents()[&key]).unwrap();
        live.insert(key.clone(), compact);
        assert!(!compare(&catalog, Some(&live)).pending());

        live.insert(key.clone(), b"{\"type\":\"object\"}".to_vec());
        live.insert(ASYNCAPI_KEY.into(), b"{}".to_vec());
        live.insert("gone/removed.v1.0.json".into(), b"{}".to_vec());
        let p = compare(&catalog, Some(&live));
        assert_eq!(p.changed, vec![key]);
        assert_eq!(p.put, vec![ASYNCAPI_KEY.to_owned()]);
        assert_eq!(p.kept, vec!["gone/removed.v1.0.json".to_owned()]);
        assert!(p.refusals()[0].contains("new minor version"));
    }

    #[test]
    fn types_no_declared_stream_takes_are_named() {
        use crate::provision::decl::parse;
        use crate::provision::load::validate;
        let streams = r#"
[[stream]]
name = "MES_EVENTS"
subjects = ["mes.*.*.*.*.processorder.>", "mes.*.*.*.*.batch.>", "mes.*.*.*.*.material.>", "mes.*.*.*.*.stock.>", "mes.*.*.*.*.inventory.>", "mes.*.*.*.*.document.>"]
"#;
        let d = validate(vec![
            parse(std::path::Path::new("streams.toml"), streams).unwrap()
        ])
        .unwrap();
        let catalog = Catalog::embedded().unwrap();
        let said = uncovered(&d, &catalog, "mes");
        // MES_PV is not declared: both process variable types are named, nothing else.
        assert_eq!(said.len(), 2, "{said:?}");
        assert!(said
            .iter()
            .all(|s| s.contains("stream MES_PV, which the declaration does not have")));
        let narrow = streams.replace("\"mes.*.*.*.*.batch.>\", ", "");
        let d = validate(vec![
            parse(std::path::Path::new("streams.toml"), &narrow).unwrap()
        ])
        .unwrap();
        let said = uncovered(&d, &catalog, "mes");
        assert!(
            said.iter()
                .any(|s| s.contains("batch.statuschanged.v1")
                    && s.contains("add `mes.*.*.*.*.batch.>`")),
            "{said:?}"
        );
    }

    #[test]
    fn every_dataschema_is_a_key_of_the_bucket() {
        let catalog = Catalog::embedded().unwrap();
        for e in catalog.entries() {
            let path = catalog.path_of(e.dataschema.as_str()).unwrap();
            assert_eq!(path, e.decl.schema);
            assert!(direct_get_subject(path).ends_with(&format!(".$KV.MES_SCHEMAS.{path}")));
        }
    }
}
