//! `mes-events catalog`: the active event catalog (shipped, extended by `events.catalog`),
//! listed and shown, a site catalog folder checked, two versions of a schema compared, and its
//! AsyncAPI document written.

use std::path::Path;

use mes_events::config::Config;
use mes_events::event::catalog::Catalog;
use mes_events::event::{asyncapi, compat};

use super::args::CatalogCommand;
use super::exit::{self, Usage};

pub fn run(cfg: &Config, cmd: CatalogCommand) -> anyhow::Result<u8> {
    match cmd {
        CatalogCommand::List { json } => {
            let c = Catalog::load(cfg.events.catalog.as_deref())?;
            list(&c, json)?;
            Ok(exit::OK)
        }
        CatalogCommand::Show { ty } => {
            let c = Catalog::load(cfg.events.catalog.as_deref())?;
            let Some(e) = c.get(&ty) else {
                return Err(Usage(format!(
                    "type {ty} is not in the catalog: `mes-events catalog list` shows the types"
                ))
                .into());
            };
            let d = &e.decl;
            let prefix = &cfg.events.subject_prefix;
            let base = format!("{prefix}.*.*.*.*.{}.{}.v{}", d.category, d.event, d.major);
            println!("type        {}", d.ty);
            println!("title       {}", d.title);
            println!("key         data field {}", d.key);
            println!("stream      {}", d.stream);
            println!("dataschema  {}", d.dataschema);
            println!("subject     {}", d.subject.replace("{prefix}", prefix));
            println!("wildcards   every event of the type:   {base}.*");
            println!("            one key:                   {base}.<key>");
            println!(
                "            one site:                  {prefix}.<site>.*.*.*.{}.{}.v{}.*",
                d.category, d.event, d.major
            );
            println!(
                "            the whole category:        {prefix}.*.*.*.*.{}.>",
                d.category
            );
            println!("description {}", d.description);
            println!("schema");
            println!("{}", serde_json::to_string_pretty(e.schema())?);
            Ok(exit::OK)
        }
        CatalogCommand::Check { dir } => {
            let c = Catalog::with_site(&dir)?;
            let shipped = Catalog::embedded()?;
            let added = c
                .entries()
                .filter(|e| {
                    shipped
                        .get(&e.decl.ty)
                        .is_none_or(|s| s.decl.schema != e.decl.schema)
                })
                .count();
            println!(
                "site catalog {} is valid: {} type(s), {added} added or newer than shipped",
                dir.display(),
                c.entries().count()
            );
            Ok(exit::OK)
        }
        CatalogCommand::Asyncapi => {
            let c = Catalog::load(cfg.events.catalog.as_deref())?;
            println!("{}", serde_json::to_string_pretty(&asyncapi::document(&c))?);
            Ok(exit::OK)
        }
        CatalogCommand::Diff { old, new } => {
            let (o, n) = (read(&old)?, read(&new)?);
            let changes = compat::diff(&o, &n);
            for c in &changes {
                println!("{c}");
            }
            if compat::breaking(&changes) {
                println!("breaking: a new major (a new type and subject) is needed");
                Ok(exit::CHANGES)
            } else {
                println!("compatible: a new minor version will do");
                Ok(exit::OK)
            }
        }
    }
}

fn read(path: &Path) -> anyhow::Result<serde_json::Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Usage(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| {
        Usage(format!(
            "{} at line {} column {}: not JSON: {e}",
            path.display(),
            e.line(),
            e.column()
        ))
        .into()
    })
}

fn list(c: &Catalog, json: bool) -> anyhow::Result<()> {
    if json {
        let rows: Vec<_> = c.entries().map(|e| &e.decl).collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    // Columns as wide as their longest value (a site catalog's types may be longer).
    let width = |f: fn(&mes_events::event::catalog::EventDecl) -> usize, title: &str| {
        c.entries()
            .map(|e| f(&e.decl))
            .max()
            .unwrap_or(0)
            .max(title.len())
    };
    let (tw, kw, sw) = (
        width(|d| d.ty.len(), "type"),
        width(|d| d.key.len(), "key"),
        width(|d| d.stream.len(), "stream"),
    );
    println!(
        "{:<tw$} {:>7}  {:<kw$} {:<sw$} subject",
        "type", "version", "key", "stream"
    );
    for e in c.entries() {
        let d = &e.decl;
        let version = d
            .schema
            .strip_suffix(".json")
            .and_then(|s| s.rsplit_once(".v"))
            .map_or("?".to_owned(), |(_, v)| v.to_owned());
        println!(
            "{:<tw$} {:>7}  {:<kw$} {:<sw$} {}",
            d.ty, version, d.key, d.stream, d.subject
        );
    }
    Ok(())
}
