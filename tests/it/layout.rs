//! The library's layers import only downward: `src/lib.rs` lists them from the bottom up, and
//! this test holds every `crate::…` path in every library file to that order. (No servers.)

use std::collections::BTreeMap;
use std::path::Path;

/// Each top-level module of the library and its layer, lowest first. Modules of one layer may
/// not import each other.
const LAYERS: &[(&str, u8)] = &[
    ("event", 0),
    ("host", 0),
    ("metrics", 0),
    ("secret", 0),
    ("show", 0),
    ("tls", 0),
    ("http", 2),
    ("config", 1),
    ("store", 2),
    ("nats", 2),
    ("relay", 3),
    ("read", 3),
    ("provision", 4),
    ("push", 5),
    ("demo", 6),
];

fn layer(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

/// Every `crate::<module>` a file names, with the line.
fn imports(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // The first path segment of each item at the group's own depth.
                let (mut depth, mut item, mut items) = (0, String::new(), Vec::new());
                for c in group.chars() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => items.push(std::mem::take(&mut item)),
                        c => item.push(c),
                    }
                }
                items.push(item);
                for item in items {
                    let m = item.trim().split("::").next().unwrap_or("").trim();
                    if !m.is_empty() {
                        out.push((i + 1, m.to_owned()));
                    }
                }
            } else {
                let m: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                out.push((i + 1, m));
            }
        }
    }
    out
}

fn walk(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, files);
        } else if p.extension().is_some_and(|x| x == "rs") {
            files.push(p);
        }
    }
}

#[test]
fn library_layers_import_only_downward() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    files.sort();
    let mut seen = BTreeMap::new();
    let mut wrong = Vec::new();
    for path in files {
        let rel = path.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        // The binary (main.rs, cli/) sits on top of everything; lib.rs only declares.
        if top == "main" || top == "cli" || top == "lib" {
            continue;
        }
        let own = layer(&top).unwrap_or_else(|| {
            panic!(
                "src/{} is in no layer: add {top} to LAYERS and to lib.rs's Layout",
                rel.display()
            )
        });
        seen.insert(top.clone(), own);
        let text = std::fs::read_to_string(&path).unwrap();
        for (line, m) in imports(&text) {
            if m == top || m == "self" {
                continue;
            }
            match layer(&m) {
                Some(l) if l < own => {}
                Some(l) => wrong.push(format!(
                    "src/{}:{line}: {top} (layer {own}) imports crate::{m} (layer {l})",
                    rel.display()
                )),
                None => wrong.push(format!(
                    "src/{}:{line}: crate::{m} is no layer",
                    rel.display()
                )),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports up or across:\n{}",
        wrong.join("\n")
    );
    assert_eq!(
        seen.len(),
        LAYERS.len(),
        "every layer has its files: {seen:?}"
    );
}

#[test]
fn the_import_reader_sees_grouped_and_plain_paths() {
    let found = imports("use crate::{event::Row, store::{lease, outbox}};\nlet x = crate::config::Config::default(); // crate::demo\n");
    let names: Vec<&str> = found.iter().map(|(_, m)| m.as_str()).collect();
    assert_eq!(names, ["event", "store", "config"]);
}
