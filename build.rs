//! Embeds the event catalog (schemas/catalog.json and every JSON Schema under schemas/) into the
//! binary, so the relay validates against exactly the schemas it was built with and nothing has
//! to be shipped beside it. Examples and the AsyncAPI document stay out (tests read them).

use std::path::{Path, PathBuf};

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("schemas");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    collect(&root, &root, &mut files);
    files.sort();
    let mut out = String::from("/// (path under schemas/, contents) of every embedded catalog file.\npub static FILES: &[(&str, &str)] = &[\n");
    for rel in &files {
        println!("cargo:rerun-if-changed={}", root.join(rel).display());
        out.push_str(&format!(
            "    ({rel:?}, include_str!({:?})),\n",
            root.join(rel).display().to_string()
        ));
    }
    out.push_str("];\n");
    let dest = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("schemas.rs");
    std::fs::write(dest, out).unwrap();
}

fn collect(root: &Path, dir: &Path, files: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            println!("cargo:rerun-if-changed={}", path.display());
            collect(root, &path, files);
            continue;
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with(".json") && !name.ends_with(".examples.json") && name != "asyncapi.json" {
            files.push(
                path.strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/"),
            );
        }
    }
}
