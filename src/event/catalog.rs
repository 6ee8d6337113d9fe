//! Catalog: every event type this product publishes, its JSON Schema, its business-key field and
//! its stream, as declared in `schemas/catalog.json` and embedded at build time.
//!
//! Owns loading the catalog and validating event data against it; never publishes. Compiling the
//! validators takes milliseconds, so the relay does it once at start.

use std::collections::{BTreeMap, HashMap};

use jsonschema::{Draft, Registry, Resource, Validator};
use serde::Deserialize;
use serde_json::Value;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/schemas.rs"));
}

/// `schemas/catalog.json` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CatalogFile {
    /// Reverse-DNS prefix of every type in the catalog.
    pub type_prefix: String,
    /// Base URI of every schema `$id` (and so of every `dataschema`).
    pub schema_base: String,
    /// The subject template shared by all events.
    pub subject_layout: String,
    pub streams: BTreeMap<String, StreamDecl>,
    pub events: Vec<EventDecl>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StreamDecl {
    pub description: String,
    pub categories: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventDecl {
    #[serde(rename = "type")]
    pub ty: String,
    pub category: String,
    pub event: String,
    pub major: u32,
    pub title: String,
    pub description: String,
    /// The data field that holds the business key (must equal the key given to `emit`).
    pub key: String,
    /// Schema file, relative to schemas/.
    pub schema: String,
    /// The schema's `$id`: the CloudEvents `dataschema`.
    pub dataschema: String,
    /// Examples file, relative to schemas/.
    pub examples: String,
    pub stream: String,
    pub subject: String,
}

/// A catalog entry ready for use.
pub struct Entry {
    pub decl: EventDecl,
    pub dataschema: url::Url,
    validator: Validator,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("type", &self.decl.ty)
            .finish()
    }
}

pub struct Catalog {
    pub file: CatalogFile,
    entries: HashMap<String, Entry>,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("schemas/catalog.json is missing from the build")]
    MissingCatalog,
    #[error("schemas/{file}: {message}")]
    File { file: String, message: String },
    #[error("schemas/catalog.json: event {ty}: {message}")]
    Entry { ty: String, message: String },
}

/// Why data does not match its schema: where, which rule, and the validator's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// JSON Pointer into the data (`""` is the document itself).
    pub path: String,
    /// The JSON Schema keyword that failed (`required`, `enum`, `pattern`, …).
    pub rule: String,
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = if self.path.is_empty() {
            "/"
        } else {
            &self.path
        };
        write!(f, "data at {path} breaks `{}`: {}", self.rule, self.message)
    }
}

impl Catalog {
    /// The catalog built into this binary.
    pub fn embedded() -> Result<Catalog, CatalogError> {
        Self::from_files(embedded::FILES)
    }

    /// A catalog from (path under schemas/, contents) pairs.
    pub fn from_files(files: &[(&str, &str)]) -> Result<Catalog, CatalogError> {
        let file_err = |file: &str, message: String| CatalogError::File {
            file: file.to_owned(),
            message,
        };
        let (_, catalog_text) = files
            .iter()
            .find(|(p, _)| *p == "catalog.json")
            .ok_or(CatalogError::MissingCatalog)?;
        let file: CatalogFile = serde_json::from_str(catalog_text)
            .map_err(|e| file_err("catalog.json", e.to_string()))?;

        let mut schemas: HashMap<&str, Value> = HashMap::new();
        let mut registry = Registry::new();
        for (path, text) in files.iter().filter(|(p, _)| *p != "catalog.json") {
            let v: Value = serde_json::from_str(text).map_err(|e| file_err(path, e.to_string()))?;
            let id = v
                .get("$id")
                .and_then(Value::as_str)
                .ok_or_else(|| file_err(path, "has no \"$id\"".into()))?
                .to_owned();
            let expected = format!("{}{path}", file.schema_base);
            if id != expected {
                return Err(file_err(path, format!("\"$id\" is {id:?}, expected {expected:?} (the file's place under schemas/)")));
            }
            registry = registry
                .add(&id, Resource::from_contents(v.clone()))
                .map_err(|e| file_err(path, e.to_string()))?;
            schemas.insert(path, v);
        }
        let registry = registry
            .prepare()
            .map_err(|e| file_err("(all schemas)", e.to_string()))?;

        let mut entries = HashMap::new();
        for decl in &file.events {
            let entry_err = |message: String| CatalogError::Entry {
                ty: decl.ty.clone(),
                message,
            };
            let expected_ty = format!(
                "{}.mes.{}.{}.v{}",
                file.type_prefix, decl.category, decl.event, decl.major
            );
            if decl.ty != expected_ty {
                return Err(entry_err(format!(
                    "type should be {expected_ty} (prefix, category, event, major)"
                )));
            }
            if !file
                .streams
                .get(&decl.stream)
                .is_some_and(|s| s.categories.contains(&decl.category))
            {
                return Err(entry_err(format!(
                    "stream {} does not list category {}",
                    decl.stream, decl.category
                )));
            }
            let schema = schemas.get(decl.schema.as_str()).ok_or_else(|| {
                entry_err(format!(
                    "schema file {} not found under schemas/",
                    decl.schema
                ))
            })?;
            if schema.get("$id").and_then(Value::as_str) != Some(decl.dataschema.as_str()) {
                return Err(entry_err(format!(
                    "dataschema {} is not the $id of {}",
                    decl.dataschema, decl.schema
                )));
            }
            let dataschema = url::Url::parse(&decl.dataschema)
                .map_err(|e| entry_err(format!("dataschema: {e}")))?;
            let validator = jsonschema::options()
                .with_draft(Draft::Draft202012)
                .with_registry(&registry)
                .should_validate_formats(true)
                .build(schema)
                .map_err(|e| entry_err(format!("schema {} does not compile: {e}", decl.schema)))?;
            if entries
                .insert(
                    decl.ty.clone(),
                    Entry {
                        decl: decl.clone(),
                        dataschema,
                        validator,
                    },
                )
                .is_some()
            {
                return Err(entry_err("listed twice".into()));
            }
        }
        Ok(Catalog { file, entries })
    }

    pub fn get(&self, ty: &str) -> Option<&Entry> {
        self.entries.get(ty)
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.file
            .events
            .iter()
            .filter_map(|d| self.entries.get(&d.ty))
    }
}

impl Entry {
    /// The first violation of the schema, if any (the relay reports one reason per row).
    pub fn validate(&self, data: &Value) -> Result<(), Violation> {
        match self.validator.iter_errors(data).next() {
            None => Ok(()),
            Some(e) => Err(Violation {
                path: e.instance_path().as_str().to_owned(),
                rule: e.kind().keyword().to_owned(),
                message: e.to_string(),
            }),
        }
    }

    /// Every violation, for tools that show them all.
    pub fn violations(&self, data: &Value) -> Vec<Violation> {
        self.validator
            .iter_errors(data)
            .map(|e| Violation {
                path: e.instance_path().as_str().to_owned(),
                rule: e.kind().keyword().to_owned(),
                message: e.to_string(),
            })
            .collect()
    }
}
