//! Push, against a real nats-server, a real PostgreSQL and real HTTP receivers written with the
//! official libraries (Standard Webhooks' `standardwebhooks`, CloudEvents' SDKs). This module
//! holds the harness: a provisioned installation, `mes-events push` as a child process, the
//! receivers and the once-in-order checks.
//!
//! - [`delivery`]: every signature verifies and every event decodes in every mode, forgeries
//!   are refused; an endpoint that refuses connections, then fails, then times out gets
//!   everything in order while another one flows; a poison event becomes a dead letter with its
//!   status and is resent once; an endpoint asking to wait uses up no attempt.
//! - [`availability`]: the push service killed at random moments loses nothing and keeps each
//!   key's order; of several instances one delivers, and a killed or frozen one is replaced.
//! - [`batched`]: batched requests keep every guarantee; a poison event is singled out.
//! - [`https`]: HTTPS endpoints of the plant's own CA, with and without client certificates.

mod availability;
mod batched;
mod delivery;
mod https;

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::nats::free_port;
use crate::support::*;

pub(crate) const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_owned()
}

/// A pushed system taking every order event, with `push` lines added to its `[push]` table.
pub(crate) fn system(name: &str, port: u16, push: &str) -> String {
    format!(
        r#"
[system]
name = "{name}"
[[consumer]]
stream = "MES_EVENTS"
filter_subjects = ["mes.*.*.*.*.processorder.>"]
ack_wait = "2s"
[push]
url = "http://127.0.0.1:{port}/hooks/mes"
secret_env = "PUSH_SECRET"
{push}
"#
    )
}

/// A provisioned installation: the shipped streams and the given systems, a relay running.
pub(crate) struct World {
    pub(crate) env: Env,
    pub(crate) decl: tempfile::TempDir,
    pub(crate) relay: Option<RelayTask>,
}

impl World {
    pub(crate) async fn new(systems: &[(&str, String)]) -> World {
        let env = Env::without_streams().await;
        let decl = tempfile::tempdir().unwrap();
        std::fs::copy(
            root().join("nats/streams.toml"),
            decl.path().join("streams.toml"),
        )
        .unwrap();
        std::fs::create_dir(decl.path().join("systems")).unwrap();
        for (name, text) in systems {
            std::fs::write(decl.path().join(format!("systems/{name}.toml")), text).unwrap();
        }
        let d = mes_events::provision::load_dir(decl.path()).unwrap();
        mes_events::provision::apply(&env.js().await, &d, Default::default())
            .await
            .unwrap();
        let relay = Some(env.spawn_relay().await);
        World { env, decl, relay }
    }

    /// `mes-events push` as a child process, its log in a file.
    pub(crate) fn push(&self) -> PushProcess {
        self.push_with(&[])
    }

    fn push_with(&self, extra_env: &[(&str, &str)]) -> PushProcess {
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_mes-events"))
            .arg("push")
            .arg("--dir")
            .arg(self.decl.path())
            .env("MES_EVENTS_NATS__URL", self.env.nats.url())
            .env("PUSH_SECRET", SECRET)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .current_dir(std::env::temp_dir())
            .envs(extra_env.iter().copied())
            .spawn()
            .expect("spawning mes-events push");
        PushProcess { child, log }
    }

    /// `n` order events over `keys` keys (`PO-0`…), in turn; their outbox ids as sequences.
    async fn emit(&self, n: usize, keys: usize, from: usize) -> Vec<(String, String)> {
        let c = self.env.db.client().await;
        let mut out = Vec::new();
        for i in from..from + n {
            let key = format!("PO-{}", i % keys);
            let id = emit_order(&c, &key).await;
            out.push((key, format!("{id:020}")));
        }
        out
    }

    /// `mes-events ARGS` against this installation's NATS, from a folder that is not the
    /// repository.
    fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_mes-events"))
            .args(args)
            .env("MES_EVENTS_NATS__URL", self.env.nats.url())
            .current_dir(std::env::temp_dir())
            .output()
            .unwrap()
    }

    /// `dead-letters list --json`, once it lists `n` or more (within `limit`).
    async fn dead_letters(&self, n: usize, limit: Duration) -> Vec<Value> {
        eventually_value(limit, &format!("{n} dead letters"), || async {
            let o = self.cli(&["dead-letters", "list", "--json"]);
            let v: Value = serde_json::from_slice(&o.stdout).ok()?;
            let a = v.as_array()?.clone();
            (a.len() >= n).then_some(a)
        })
        .await
    }

    pub(crate) async fn stop(mut self) {
        if let Some(r) = self.relay.take() {
            r.stop().await;
        }
    }
}

pub(crate) struct PushProcess {
    child: Child,
    log: tempfile::NamedTempFile,
}

impl PushProcess {
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "push did not stop on SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PushProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A receiver process printing one JSON line per request (or per event handled).
pub(crate) struct Receiver {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
    control: tempfile::NamedTempFile,
    name: String,
}

impl Receiver {
    /// An example receiver as it is, printing one line per event handled.
    fn spawn_plain(name: &str, cmd: Command) -> Receiver {
        Self::start(name, cmd, false)
    }

    fn start(name: &str, mut cmd: Command, with_control: bool) -> Receiver {
        let control = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(control.path(), "{}").unwrap();
        if with_control {
            cmd.arg("--control").arg(control.path());
        }
        let mut child = cmd
            .env("PUSH_SECRET", SECRET)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{name}: {e} (run scripts/test.sh: it installs the receivers' packages)")
            });
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&l) {
                    sink.lock().unwrap().push(v);
                }
            }
        });
        Receiver {
            child,
            lines,
            control,
            name: name.to_owned(),
        }
    }

    /// The tests' receiver (examples/push/receiver.py with faults to turn on).
    pub(crate) async fn faulty(name: &str, port: u16) -> Receiver {
        let mut c = Command::new("python3");
        c.arg(root().join("tests/interop/push_receiver.py")).args([
            "--port",
            &port.to_string(),
            "--secret-env",
            "PUSH_SECRET",
        ]);
        let r = Receiver::start(name, c, true);
        r.wait_lines(
            |l| l.iter().any(|v| v["listening"].is_number()),
            "listening",
        )
        .await;
        r
    }

    fn set(&self, control: Value) {
        let tmp = self.control.path().with_extension("new");
        std::fs::write(&tmp, control.to_string()).unwrap();
        std::fs::rename(&tmp, self.control.path()).unwrap();
    }

    pub(crate) fn lines(&self) -> Vec<Value> {
        self.lines.lock().unwrap().clone()
    }

    /// Requests that were handled (first time for their webhook id).
    pub(crate) fn handled(&self) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|l| l["handled"] == true)
            .collect()
    }

    async fn wait_lines(&self, done: impl Fn(&[Value]) -> bool, what: &str) {
        self.wait_lines_or(done, what, String::new).await
    }

    /// The same, saying `context()` too when it does not happen.
    /// (Async: the relay runs on the test's own runtime and must go on meanwhile.)
    async fn wait_lines_or(
        &self,
        done: impl Fn(&[Value]) -> bool,
        what: &str,
        context: impl Fn() -> String,
    ) {
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        loop {
            if done(&self.lines()) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{}: {what} did not happen within 90 s; it saw:\n{:#?}\n{}",
                self.name,
                self.lines(),
                context()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) async fn wait_handled(&self, n: usize) {
        let lines = self.lines.clone();
        eventually(
            Duration::from_secs(90),
            &format!("{} handled {n} events", self.name),
            || {
                let lines = lines.clone();
                async move {
                    lines
                        .lock()
                        .unwrap()
                        .iter()
                        .filter(|l| l["handled"] == true)
                        .count()
                        >= n
                }
            },
        )
        .await;
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every event handled once, each key's in the order they were emitted; every request for one
/// event carried the same webhook id.
fn assert_once_in_order(who: &str, lines: &[Value], emitted: &[(String, String)]) {
    assert_handled_once_in_order(who, lines, emitted);
    let mut ids: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for l in lines.iter().filter(|l| l["id"].is_string()) {
        ids.entry(l["id"].as_str().unwrap())
            .or_default()
            .insert(l["webhook_id"].as_str().unwrap_or("-"));
    }
    for (id, w) in ids {
        assert_eq!(w.len(), 1, "{who}: event {id} came with webhook ids {w:?}");
    }
}

/// Every event handled once, each key's in the order they were emitted.
pub(crate) fn assert_handled_once_in_order(
    who: &str,
    lines: &[Value],
    emitted: &[(String, String)],
) {
    let handled: Vec<&Value> = lines.iter().filter(|l| l["handled"] == true).collect();
    let seqs: Vec<String> = handled
        .iter()
        .map(|l| l["sequence"].as_str().unwrap().to_owned())
        .collect();
    let distinct: BTreeSet<&String> = seqs.iter().collect();
    assert_eq!(
        distinct.len(),
        seqs.len(),
        "{who}: an event handled twice: {seqs:?}"
    );
    let want: BTreeSet<&String> = emitted.iter().map(|(_, s)| s).collect();
    assert_eq!(distinct, want, "{who}: not every event, or one too many");
    let key_of: BTreeMap<&String, &String> = emitted.iter().map(|(k, s)| (s, k)).collect();
    let mut last: BTreeMap<&String, &String> = BTreeMap::new();
    for s in &seqs {
        let k = key_of[s];
        if let Some(prev) = last.insert(k, s) {
            assert!(prev < s, "{who}: key {k}: {s} handled after {prev}");
        }
    }
}
