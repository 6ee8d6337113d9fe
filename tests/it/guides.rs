//! The documentation, held to what the product does.
//!
//! - The guides run as written: every `bash` block of docs/operators.md (but its install step)
//!   and of docs/integrators.md, in order, in one `bash -euo pipefail` session, with each `sql`
//!   block through `psql`, against a database and a nats-server the runbook itself starts. The
//!   operators' last step (stopping) runs after the integrators' blocks, which need a running
//!   installation. The test only chooses the settings of step 0 (folders, free ports, the
//!   database) and puts the built binary first on `PATH`.
//! - The reference's commands table names every command the binary has, and only flags each
//!   command takes.
//! - The design's guarantees table names only tests that exist.

use std::collections::BTreeSet;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::db::TestDb;
use crate::support::nats::free_port;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn doc(name: &str) -> String {
    std::fs::read_to_string(root().join("docs").join(name)).unwrap()
}

/// A fenced block of a Markdown file: the `## ` section it is in, its language, its text.
#[derive(Debug)]
struct Block {
    section: String,
    lang: String,
    text: String,
    line: usize,
}

fn blocks(markdown: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut section = String::new();
    let mut open: Option<Block> = None;
    for (i, line) in markdown.lines().enumerate() {
        match open.as_mut() {
            Some(b) if line.trim_end() == "```" => {
                let _ = b;
                out.push(open.take().unwrap());
            }
            Some(b) => {
                b.text.push_str(line);
                b.text.push('\n');
            }
            None if line.starts_with("```") => {
                open = Some(Block {
                    section: section.clone(),
                    lang: line.trim_start_matches('`').trim().to_owned(),
                    text: String::new(),
                    line: i + 1,
                })
            }
            None if line.starts_with("## ") => section = line[3..].trim().to_owned(),
            None => {}
        }
    }
    assert!(open.is_none(), "an unclosed code block");
    out
}

/// The shell text of one block, announced on standard error so a failure says where it was.
fn script_of(file: &str, b: &Block) -> Option<String> {
    let announce = format!(
        "printf '\\n### docs/{file}:{} (## {})\\n' >&2\n",
        b.line,
        b.section.replace('\'', "")
    );
    match b.lang.as_str() {
        "bash" => Some(format!("{announce}{}", b.text)),
        "sql" => Some(format!(
            "{announce}psql \"$DATABASE_URL\" -X -q -v ON_ERROR_STOP=1 <<'MES_EVENTS_GUIDE_SQL'\n{}MES_EVENTS_GUIDE_SQL\n",
            b.text
        )),
        _ => None,
    }
}

/// What the runbook's step 0 leaves to the reader, and what a real MES database already has:
/// the role the grants name and the table the integrators' example updates.
const FIXTURES: &str = r#"
psql "$DATABASE_URL" -X -q -v ON_ERROR_STOP=1 <<'SQL'
do $$ begin
  if not exists (select from pg_roles where rolname = 'mes_app') then create role mes_app nologin; end if;
exception when duplicate_object or unique_violation then null;
end $$;
create table process_order (id text primary key, status text not null);
insert into process_order values ('4711', 'released');
SQL
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guides_run_as_written() {
    let db = TestDb::empty().await;
    let operators = doc("operators.md");
    let integrators = doc("integrators.md");
    let (ops, stop): (Vec<Block>, Vec<Block>) = blocks(&operators)
        .into_iter()
        .filter(|b| !b.section.starts_with("1. Install"))
        .partition(|b| !b.section.starts_with("14. Stop"));
    assert!(!stop.is_empty(), "docs/operators.md has a stop step");
    let mut script = String::from("set -euo pipefail\n");
    script.push_str(FIXTURES);
    let mut ran = 0;
    for (file, b) in ops
        .iter()
        .map(|b| ("operators.md", b))
        .chain(
            blocks(&integrators)
                .iter()
                .map(|b| ("integrators.md", b))
                .collect::<Vec<_>>(),
        )
        .chain(stop.iter().map(|b| ("operators.md", b)))
    {
        if let Some(s) = script_of(file, b) {
            script.push_str(&s);
            ran += 1;
        }
    }
    assert!(
        ran >= 20,
        "only {ran} blocks to run: did the guides lose their commands?"
    );
    script.push_str("printf '\\n### the guides ran to the end\\n' >&2\n");

    // The sandbox: a copy of the declaration (the runbook adds systems to it), the examples and
    // schemas as the repository has them.
    let sandbox = tempfile::tempdir().unwrap();
    let dir = sandbox.path();
    copy_dir(&root().join("nats"), &dir.join("nats"));
    for linked in ["examples", "schemas"] {
        std::os::unix::fs::symlink(root().join(linked), dir.join(linked)).unwrap();
    }
    std::fs::write(dir.join("guides.sh"), &script).unwrap();

    let nats = mes_events::demo::local_nats::find_binary()
        .unwrap()
        .expect("a nats-server 2.10 or newer (scripts/setup.sh)");
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_mes-events"));
    let path = std::env::join_paths(
        [bin.parent().unwrap(), nats.parent().unwrap()]
            .into_iter()
            .map(Path::to_path_buf)
            .chain(std::env::split_paths(
                &std::env::var_os("PATH").unwrap_or_default(),
            )),
    )
    .unwrap();
    let etc = dir.join("etc");
    let log = dir.join("guides.log");
    let said_to = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new("bash");
    cmd.arg(dir.join("guides.sh"))
        .current_dir(dir)
        .env("PATH", path)
        .env("MES_ETC", &etc)
        .env("NATS_STORE", dir.join("store"))
        .env("NATS_PORT", free_port().to_string())
        .env("NATS_MONITOR_PORT", free_port().to_string())
        .env("RELAY_HTTP", format!("127.0.0.1:{}", free_port()))
        .env("WORKFLOW_PORT", free_port().to_string())
        .env("DATABASE_URL", &db.url)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(said_to.try_clone().unwrap())
        .stderr(said_to)
        .process_group(0);
    for (k, _) in std::env::vars() {
        if k.starts_with("MES_EVENTS_") || k == "NATS_URL" || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd.spawn().unwrap();
    let group = Group(child.id() as i32);
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    drop(group);
    let _ = child.wait();
    let mut said = String::new();
    std::fs::File::open(&log)
        .unwrap()
        .read_to_string(&mut said)
        .unwrap();
    let logs = || {
        ["relay.log", "push.log", "receiver.log", "nats-server.log"]
            .iter()
            .filter_map(|f| {
                let text = std::fs::read_to_string(etc.join(f)).ok()?;
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                Some(format!(
                    "--- {f} (last lines)\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                ))
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    match status {
        Some(s) if s.success() => {}
        Some(s) => panic!("the guides stopped ({s}) at the last block announced:\n{said}\n{}", logs()),
        None => panic!("the guides did not finish within 300 s; the last block announced is where it waits:\n{said}\n{}", logs()),
    }
    println!("{said}");
    assert!(said.contains("### the guides ran to the end"), "{said}");
    // What the runbook claims along the way, seen in what it printed.
    for expected in [
        "healthy",
        "PO-2",
        // push holds its pin: it pulls as a system may, never asking CONSUMER.INFO
        "delivering: an instance, since",
        // adding a system without an identity says what to run
        "hint: system workflow",
    ] {
        assert!(
            said.contains(expected),
            "the guides' output lacks {expected:?}:\n{said}"
        );
    }
    for unexpected in ["refuses messages", "hint: system erp"] {
        assert!(
            !said.contains(unexpected),
            "the guides' output says {unexpected:?}:\n{said}"
        );
    }
}

/// Kills a process group on drop: the runbook's background servers with their shell.
struct Group(i32);

impl Drop for Group {
    fn drop(&mut self) {
        unsafe {
            libc::killpg(self.0, libc::SIGTERM);
        }
        std::thread::sleep(Duration::from_millis(500));
        unsafe {
            libc::killpg(self.0, libc::SIGKILL);
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// Every command of the binary, as paths of subcommand names, from its own help.
fn commands(bin: &Path, path: &[String]) -> Vec<Vec<String>> {
    let out = Command::new(bin).args(path).arg("--help").output().unwrap();
    assert!(out.status.success(), "mes-events {} --help", path.join(" "));
    let help = String::from_utf8(out.stdout).unwrap();
    // A group that only holds subcommands (`outbox`) is not a command of its own; one that
    // also runs (`relay`) has a second usage line.
    let usage: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Usage:"))
        .take_while(|l| !l.trim().is_empty())
        .collect();
    let runs = !(usage.len() == 1 && usage[0].trim_end().ends_with("<COMMAND>"));
    let mut found = if runs {
        vec![path.to_vec()]
    } else {
        Vec::new()
    };
    let Some(list) = help.split("\nCommands:\n").nth(1) else {
        return found;
    };
    // A command's line is indented by two; its description may wrap onto deeper lines.
    for line in list
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| !l.starts_with("   "))
    {
        let name = line.split_whitespace().next().unwrap().to_owned();
        if name != "help" {
            let mut sub = path.to_vec();
            sub.push(name);
            found.extend(commands(bin, &sub));
        }
    }
    found
}

#[test]
fn the_references_commands_are_the_binarys() {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_mes-events"));
    let reference = doc("reference.md");
    let mut listed = BTreeSet::new();
    for row in reference.lines().filter(|l| l.starts_with("| `mes-events")) {
        let synopsis = row.split('`').nth(1).unwrap();
        let words: Vec<&str> = synopsis.split_whitespace().skip(1).collect();
        let path: Vec<String> = words
            .iter()
            .take_while(|w| {
                w.chars().all(|c| c.is_ascii_lowercase() || c == '-') && !w.starts_with('-')
            })
            .map(|w| w.to_string())
            .collect();
        let out = Command::new(&bin)
            .args(&path)
            .arg("--help")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "reference: `{synopsis}` is not a command"
        );
        let help = String::from_utf8(out.stdout).unwrap();
        for flag in words.iter().filter_map(|w| {
            let w = w.trim_matches(|c| c == '[' || c == ']');
            w.starts_with("--").then_some(w)
        }) {
            assert!(
                help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
                "reference: `mes-events {}` takes no {flag}",
                path.join(" ")
            );
        }
        assert!(listed.insert(path.clone()), "reference: `{synopsis}` twice");
    }
    for path in commands(&bin, &[]).into_iter().filter(|p| !p.is_empty()) {
        assert!(
            listed.contains(&path),
            "reference: `mes-events {}` is missing from the commands table",
            path.join(" ")
        );
    }
}

/// The backticked names of a table cell outside parentheses (asides name SQL functions,
/// settings, options).
fn named_tests(cell: &str) -> Vec<String> {
    let mut depth = 0;
    let mut outside = String::new();
    for c in cell.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ if depth == 0 => outside.push(c),
            _ => {}
        }
    }
    outside
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

fn test_sources(dir: &Path, out: &mut String) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            test_sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push_str(&std::fs::read_to_string(p).unwrap());
        }
    }
}

#[test]
fn the_designs_guarantees_name_tests_that_exist() {
    let design = doc("design.md");
    let table = design
        .split("## Guarantees, and the tests that try to break them")
        .nth(1)
        .unwrap()
        .split("\n## ")
        .next()
        .unwrap();
    let mut sources = String::new();
    test_sources(&root().join("tests/it"), &mut sources);
    let mut checked = 0;
    for row in table
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| ---") && !l.starts_with("| guarantee"))
    {
        let cell = row.trim_end_matches('|').rsplit(" | ").next().unwrap();
        for name in named_tests(cell) {
            if !name.contains('/') && !name.contains('_') {
                continue; // a library or a file format, named in passing
            }
            if name.contains('/') {
                if !name.starts_with("tests/") {
                    continue; // a package
                }
                assert!(
                    root().join(&name).exists(),
                    "design.md names {name}, which does not exist"
                );
            } else {
                let prefix = name.trim_end_matches('…');
                assert!(
                    sources.contains(&format!("fn {prefix}")),
                    "design.md names the test {name}, which does not exist"
                );
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 40,
        "only {checked} tests named in design.md's guarantees table"
    );
}

/// GitHub's anchor of a heading: lower case, punctuation dropped, spaces as dashes.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn the_docs_links_lead_somewhere() {
    let mut files = vec![root().join("README.md")];
    for e in std::fs::read_dir(root().join("docs")).unwrap() {
        files.push(e.unwrap().path());
    }
    let anchors = |p: &Path| -> BTreeSet<String> {
        let text = std::fs::read_to_string(p).unwrap();
        let mut fenced = false;
        text.lines()
            .filter(|l| {
                if l.starts_with("```") {
                    fenced = !fenced;
                }
                !fenced && l.starts_with('#')
            })
            .map(|l| anchor(l.trim_start_matches('#')))
            .collect()
    };
    let mut checked = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for link in text.split("](").skip(1) {
            let target = link.split(')').next().unwrap();
            if target.starts_with("http") || target.contains(' ') {
                continue;
            }
            let (path, frag) = target.split_once('#').unwrap_or((target, ""));
            let to = if path.is_empty() {
                file.clone()
            } else {
                file.parent().unwrap().join(path)
            };
            assert!(
                to.exists(),
                "{}: link to {target}: no such file",
                file.display()
            );
            if !frag.is_empty() {
                assert!(
                    anchors(&to).contains(frag),
                    "{}: link to {target}: no such heading in {}",
                    file.display(),
                    to.display()
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 30, "only {checked} links");
}
