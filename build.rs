//! Embeds the event catalog (schemas/catalog.json and every JSON Schema under schemas/) into the
//! binary, so the relay validates against exactly the schemas it was built with and nothing has
//! to be shipped beside it. Examples and the AsyncAPI document stay out (tests read them).
//!
//! Also names the commit the binary was built from (`mes-events --version`): `MES_BUILD_COMMIT`
//! when set (an image built without `.git`), else `git rev-parse`, else `unknown`.

use std::path::{Path, PathBuf};

fn main() {
    commit();
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

fn commit() {
    println!("cargo:rerun-if-env-changed=MES_BUILD_COMMIT");
    let git = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join(".git");
    if git.is_dir() {
        // A new commit or a checkout moves HEAD or the ref it names.
        println!("cargo:rerun-if-changed={}", git.join("HEAD").display());
        if let Ok(head) = std::fs::read_to_string(git.join("HEAD")) {
            if let Some(r) = head.trim().strip_prefix("ref: ") {
                println!("cargo:rerun-if-changed={}", git.join(r).display());
            }
        }
    }
    let commit = std::env::var("MES_BUILD_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            let out = std::process::Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=MES_BUILD_COMMIT={commit}");
}
