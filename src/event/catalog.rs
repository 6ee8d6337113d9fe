//! Catalog: every event type this product publishes, its JSON Schema, its business-key field and
//! its stream, as declared in `schemas/catalog.json` and embedded at build time, extended at
//! run time by a site folder (`events.catalog`) that adds types, categories and new minor
//! versions without copying the shipped catalog.
//!
//! Owns loading the catalog, checking it whole (a broken one is refused before any row is read)
//! and validating event data against it; never publishes. Compiling the validators takes
//! milliseconds, so the relay does it once at start.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use jsonschema::{Draft, Registry, Resource, Validator};
use serde::{Deserialize, Serialize};
use serde_json::Value;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/schemas.rs"));
}

/// `schemas/catalog.json` as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
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

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StreamDecl {
    pub description: String,
    pub categories: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
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
    schema: Value,
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
    /// Every schema document (the types' and those they refer to), by path under the schema
    /// base: what `dataschema` and `$ref` name, and what goes on the bus.
    documents: BTreeMap<String, Value>,
}

/// `catalog.json` of a site folder: what it adds to the shipped catalog.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SiteFile {
    /// Categories added to a shipped stream, or new streams.
    #[serde(default)]
    pub streams: BTreeMap<String, SiteStream>,
    /// New types, or a shipped type with a new minor version of its schema.
    #[serde(default)]
    pub events: Vec<EventDecl>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SiteStream {
    #[serde(default)]
    pub description: Option<String>,
    pub categories: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("schemas/catalog.json is missing from the build")]
    MissingCatalog,
    /// A site catalog folder's problem: the file, where in it (a JSON pointer, or a line and
    /// column for JSON that does not parse), the rule broken, and what to do.
    #[error("{file}{}: {rule}: {message}", if .at.is_empty() { String::new() } else { format!(" at {}", .at) })]
    Site {
        file: String,
        at: String,
        rule: String,
        message: String,
    },
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

        let mut schemas: BTreeMap<&str, Value> = BTreeMap::new();
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
                        schema: schema.clone(),
                        validator,
                    },
                )
                .is_some()
            {
                return Err(entry_err("listed twice".into()));
            }
        }
        let documents = schemas
            .into_iter()
            .map(|(path, v)| (path.to_owned(), v))
            .collect();
        Ok(Catalog {
            file,
            entries,
            documents,
        })
    }

    /// The embedded catalog, or the embedded one extended by the site folder `site`.
    pub fn load(site: Option<&Path>) -> Result<Catalog, CatalogError> {
        match site {
            Some(dir) => Self::with_site(dir),
            None => Self::embedded(),
        }
    }

    /// The shipped catalog extended by the site folder `dir`: its `catalog.json` lists the
    /// streams' added categories and the types it adds (or a shipped type's new minor version),
    /// with their schema and examples files beside it, `$id` = schema base + path. Checked
    /// whole: every schema compiles under 2020-12, every `$id` is its path, every example
    /// validates as it says, no type or subject twice.
    pub fn with_site(dir: &Path) -> Result<Catalog, CatalogError> {
        let site_err = |file: &str, at: String, rule: &str, message: String| CatalogError::Site {
            file: dir.join(file).display().to_string(),
            at,
            rule: rule.to_owned(),
            message,
        };
        let mut files = Vec::new();
        read_tree(dir, dir, &mut files).map_err(|(file, e)| {
            site_err(
                &file,
                String::new(),
                "readable",
                format!("cannot read it: {e}"),
            )
        })?;
        let text_of = |name: &str| files.iter().find(|(p, _)| p == name).map(|(_, t)| t);
        let site_text = text_of("catalog.json").ok_or_else(|| {
            site_err(
                "catalog.json",
                String::new(),
                "present",
                "a site catalog folder needs a catalog.json listing the types it adds".into(),
            )
        })?;
        let site: SiteFile = serde_json::from_str(site_text).map_err(|e| {
            site_err(
                "catalog.json",
                format!("line {} column {}", e.line(), e.column()),
                "valid JSON of a site catalog",
                e.to_string(),
            )
        })?;
        // Every schema file is JSON (examples are checked against their type below).
        for (path, text) in &files {
            if let Err(e) = serde_json::from_str::<Value>(text) {
                return Err(site_err(
                    path,
                    format!("line {} column {}", e.line(), e.column()),
                    "valid JSON",
                    e.to_string(),
                ));
            }
        }
        let (_, shipped_text) = embedded::FILES
            .iter()
            .find(|(p, _)| *p == "catalog.json")
            .ok_or(CatalogError::MissingCatalog)?;
        let mut merged: CatalogFile =
            serde_json::from_str(shipped_text).map_err(|e| CatalogError::File {
                file: "catalog.json".into(),
                message: e.to_string(),
            })?;
        for (name, add) in &site.streams {
            let s = merged
                .streams
                .entry(name.clone())
                .or_insert_with(|| StreamDecl {
                    description: add.description.clone().unwrap_or_default(),
                    categories: Vec::new(),
                });
            for c in &add.categories {
                if !s.categories.contains(c) {
                    s.categories.push(c.clone());
                }
            }
        }
        for (i, decl) in site.events.iter().enumerate() {
            let at = format!("/events/{i}/type");
            match merged.events.iter().position(|e| e.ty == decl.ty) {
                Some(j) if minor(&decl.schema) > minor(&merged.events[j].schema) => {
                    merged.events[j] = decl.clone();
                }
                Some(_) => {
                    return Err(site_err(
                        "catalog.json",
                        at,
                        "unique type",
                        format!(
                            "{} is already in the catalog: a site may add a new minor version of its schema (a file named …v{}.N.json with N above the current one), or a new type",
                            decl.ty, decl.major
                        ),
                    ))
                }
                None if site.events[..i].iter().any(|e| e.ty == decl.ty) => {
                    return Err(site_err(
                        "catalog.json",
                        at,
                        "unique type",
                        format!("{} is listed twice", decl.ty),
                    ))
                }
                None => merged.events.push(decl.clone()),
            }
            // The subject follows the layout, so two types never share one.
            let expected = merged
                .subject_layout
                .replace("{category}", &decl.category)
                .replace("{event}", &decl.event)
                .replace("{major}", &decl.major.to_string());
            if decl.subject != expected {
                return Err(site_err(
                    "catalog.json",
                    format!("/events/{i}/subject"),
                    "unambiguous subject",
                    format!(
                        "subject {:?} must follow the layout: {expected:?} (else two types could share a subject)",
                        decl.subject
                    ),
                ));
            }
        }
        let mut all: Vec<(String, String)> = embedded::FILES
            .iter()
            .filter(|(p, _)| *p != "catalog.json")
            .map(|(p, t)| ((*p).to_owned(), (*t).to_owned()))
            .collect();
        for (path, text) in &files {
            if path == "catalog.json" || path.ends_with(".examples.json") {
                continue;
            }
            if all.iter().any(|(p, _)| p == path) {
                return Err(site_err(
                    path,
                    String::new(),
                    "new file",
                    "a shipped schema has this path: a site adds files (a new minor version is a new file), it never replaces one".into(),
                ));
            }
            all.push((path.clone(), text.clone()));
        }
        let merged_text = serde_json::to_string(&merged).map_err(|e| CatalogError::File {
            file: "catalog.json".into(),
            message: e.to_string(),
        })?;
        all.push(("catalog.json".into(), merged_text));
        let refs: Vec<(&str, &str)> = all.iter().map(|(p, t)| (p.as_str(), t.as_str())).collect();
        let catalog = Self::from_files(&refs).map_err(|e| match e {
            // Name the site's file where the problem is in one.
            CatalogError::File { file, message } if files.iter().any(|(p, _)| *p == file) => {
                site_err(&file, String::new(), "valid schema", message)
            }
            CatalogError::Entry { ty, message } => {
                let i = site.events.iter().position(|d| d.ty == ty);
                match i {
                    Some(i) => site_err(
                        "catalog.json",
                        format!("/events/{i}"),
                        "valid entry",
                        format!("{ty}: {message}"),
                    ),
                    None => CatalogError::Entry { ty, message },
                }
            }
            e => e,
        })?;
        // Examples of the site's types validate as they say.
        for decl in &site.events {
            let entry = catalog.get(&decl.ty).expect("just loaded");
            let Some(text) = text_of(&decl.examples) else {
                return Err(site_err(
                    &decl.examples,
                    String::new(),
                    "present",
                    format!("the examples file of {} is missing", decl.ty),
                ));
            };
            let examples: Examples = serde_json::from_str(text).map_err(|e| {
                site_err(
                    &decl.examples,
                    format!("line {} column {}", e.line(), e.column()),
                    "examples file ({\"valid\": [{description, data}], \"invalid\": [{description, data, error}]})",
                    e.to_string(),
                )
            })?;
            for (i, ex) in examples.valid.iter().enumerate() {
                if let Err(v) = entry.validate(&ex.data) {
                    return Err(site_err(
                        &decl.examples,
                        format!("/valid/{i}/data{}", v.path),
                        &v.rule,
                        format!("example {:?} is listed as valid but {v}", ex.description),
                    ));
                }
            }
            for (i, ex) in examples.invalid.iter().enumerate() {
                if entry.validate(&ex.data).is_ok() {
                    return Err(site_err(
                        &decl.examples,
                        format!("/invalid/{i}/data"),
                        "invalid example fails",
                        format!(
                            "example {:?} is listed as invalid but validates",
                            ex.description
                        ),
                    ));
                }
            }
        }
        Ok(catalog)
    }

    pub fn get(&self, ty: &str) -> Option<&Entry> {
        self.entries.get(ty)
    }

    /// Every schema document by its path under the schema base (`processorder/statuschanged.v1.0.json`,
    /// `common.v1.0.json`).
    pub fn documents(&self) -> &BTreeMap<String, Value> {
        &self.documents
    }

    /// The path under the schema base that a `dataschema` (or any schema `$id`) names, if it is
    /// one of this catalog's documents.
    pub fn path_of<'a>(&self, dataschema: &'a str) -> Option<&'a str> {
        dataschema
            .strip_prefix(self.file.schema_base.as_str())
            .filter(|p| self.documents.contains_key(*p))
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.file
            .events
            .iter()
            .filter_map(|d| self.entries.get(&d.ty))
    }
}

/// An examples file: data that must validate, and data that must not.
#[derive(Debug, Deserialize)]
struct Examples {
    #[serde(default)]
    valid: Vec<Example>,
    #[serde(default)]
    invalid: Vec<Example>,
}

#[derive(Debug, Deserialize)]
struct Example {
    #[serde(default)]
    description: String,
    data: Value,
}

/// The minor version in a schema file name (`…/statuschanged.v1.2.json` → 2).
fn minor(schema: &str) -> u32 {
    schema
        .strip_suffix(".json")
        .and_then(|s| s.rsplit('.').next())
        .and_then(|m| m.parse().ok())
        .unwrap_or(0)
}

/// Every `*.json` file under `dir`, as (path relative to `root` with `/`, contents).
fn read_tree(
    root: &Path,
    dir: &Path,
    out: &mut Vec<(String, String)>,
) -> Result<(), (String, std::io::Error)> {
    let rel = |p: &Path| {
        p.strip_prefix(root)
            .unwrap_or(p)
            .to_string_lossy()
            .replace('\\', "/")
    };
    let entries = std::fs::read_dir(dir).map_err(|e| (rel(dir), e))?;
    let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            read_tree(root, &path, out)?;
        } else if path.extension().is_some_and(|x| x == "json") {
            let text = std::fs::read_to_string(&path).map_err(|e| (rel(&path), e))?;
            out.push((rel(&path), text));
        }
    }
    Ok(())
}

impl Entry {
    /// The schema document.
    pub fn schema(&self) -> &Value {
        &self.schema
    }

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
