//! Exit codes, as docs/reference.md's table gives them: one case per row and per command family, all
//! through the one mapping in `cli::exit`.

use crate::support::*;

/// `mes-events ARGS` with only the given environment (and PATH), from a folder that is not the
/// repository.
fn run(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_mes-events"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("MES_EVENTS_NATS__REQUEST_TIMEOUT", "2s")
        .envs(env.iter().copied())
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap()
}

/// A command family, its arguments, its environment, and the exit code it must give.
type Case<'a> = (&'a str, Vec<&'a str>, Vec<(&'a str, &'a str)>, i32);

#[tokio::test]
async fn every_exit_code_of_the_readme_table_for_every_command_family() {
    // An installation: the shipped declaration provisioned, a migrated database.
    let env = Env::without_streams().await;
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("nats");
    let decl = mes_events::provision::load_dir(&shipped).unwrap();
    provision(&env.js().await, &decl).await;
    let unmigrated = TestDb::empty().await;
    let nats_dir = shipped.to_str().unwrap();
    let (db, nats) = (env.cfg.database.url.as_str(), env.nats.url());
    let both = [
        ("MES_EVENTS_DATABASE__URL", db),
        ("MES_EVENTS_NATS__URL", nats.as_str()),
    ];
    let no_db = format!("postgresql://postgres@127.0.0.1:{}/none", free_port());
    let no_nats = format!("nats://127.0.0.1:{}", free_port());
    let no_http = format!("127.0.0.1:{}", free_port());
    // A declaration the server cannot take in place: MES_PV's storage changed.
    let changed = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(shipped.join("streams.toml")).unwrap();
    let text = text.replacen(
        "subjects = [\"mes.*.*.*.*.processvariable.>\"]\nstorage = \"file\"",
        "subjects = [\"mes.*.*.*.*.processvariable.>\"]\nstorage = \"memory\"",
        1,
    );
    assert!(
        text.contains("storage = \"memory\""),
        "the shipped MES_PV moved"
    );
    std::fs::write(changed.path().join("streams.toml"), text).unwrap();
    let changed = changed.path().to_str().unwrap().to_owned();
    let valid = order_data("k");
    let valid = valid.as_str();
    let (no_db, no_nats, no_http, changed) = (
        no_db.as_str(),
        no_nats.as_str(),
        no_http.as_str(),
        changed.as_str(),
    );

    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        // 0: success
        ("migrate", vec!["migrate"], both.to_vec(), 0),
        ("outbox", vec!["outbox", "status"], both.to_vec(), 0),
        ("provision", vec!["provision", "plan", "--dir", nats_dir], both.to_vec(), 0),
        ("dead-letters", vec!["dead-letters", "list"], both.to_vec(), 0),
        // 1: runtime failure (a server unreachable, not healthy)
        ("outbox", vec!["outbox", "status"], vec![("MES_EVENTS_DATABASE__URL", no_db)], 1),
        ("emit", vec!["emit", "--type", ORDER_TYPE, "--key", "k", "--data", valid], vec![("MES_EVENTS_DATABASE__URL", no_db)], 1),
        ("provision", vec!["provision", "status", "--dir", nats_dir], vec![("MES_EVENTS_NATS__URL", no_nats)], 1),
        ("tail", vec!["tail", "--consumer", "erp"], vec![("MES_EVENTS_NATS__URL", no_nats)], 1),
        ("ready", vec!["ready"], vec![("MES_EVENTS_HTTP__ADDRESS", no_http)], 1),
        ("relay", vec!["relay", "status"], both.to_vec(), 1), // no relay running
        // 2: usage or configuration
        ("emit", vec!["emit", "--type", ORDER_TYPE, "--key", "k", "--data", "@/nonexistent/data.json"], both.to_vec(), 2),
        ("emit", vec!["emit", "--type", "bogus", "--key", "k", "--data", "{}"], both.to_vec(), 2),
        ("emit", vec!["emit", "--type", ORDER_TYPE, "--key", "k", "--data", "{}"], both.to_vec(), 2),
        ("config", vec!["relay"], vec![("MES_EVENTS_DATABASE__URL", db), ("MES_EVENTS_NATS__URL", nats.as_str()), ("MES_EVENTS_EVENTS__CATALOG", "/nonexistent/schemas")], 2),
        ("config", vec!["outbox", "status"], vec![("DATABASE_URL", "not-a-url")], 2),
        ("config", vec!["provision", "status", "--dir", nats_dir], vec![("MES_EVENTS_NATS__URL", nats.as_str()), ("MES_EVENTS_NATS__NKEY", "/nonexistent/relay.nk")], 2),
        ("provision", vec!["provision", "plan", "--dir", "/nonexistent/nats"], both.to_vec(), 2),
        ("outbox", vec!["outbox", "retry", "999"], both.to_vec(), 2),
        ("dead-letters", vec!["dead-letters", "resend", "77"], both.to_vec(), 2),
        ("replay", vec!["replay", "nope", "--from", "1", "--yes"], both.to_vec(), 2),
        ("tail", vec!["tail", "--consumer", "nope"], both.to_vec(), 2),
        ("demo", vec!["demo", "--nats-dir", "/nonexistent/nats"], both.to_vec(), 2),
        ("args", vec!["outbox", "--no-such-flag"], both.to_vec(), 2),
        // 3: not set up
        ("outbox", vec!["outbox", "status"], vec![("MES_EVENTS_DATABASE__URL", unmigrated.url.as_str())], 3),
        ("relay", vec!["relay", "status"], vec![("MES_EVENTS_DATABASE__URL", unmigrated.url.as_str()), ("MES_EVENTS_NATS__URL", nats.as_str())], 3),
        // 4: plan with changes pending
        ("provision", vec!["provision", "plan", "--dir", changed], both.to_vec(), 4),
        // 5: apply refused
        ("provision", vec!["provision", "apply", "--dir", changed], both.to_vec(), 5),
    ];
    let mut wrong = Vec::new();
    for (family, args, vars, code) in &cases {
        let o = run(args, vars);
        if o.status.code() != Some(*code) {
            wrong.push(format!(
                "{family}: `mes-events {}` exited {:?}, not {code}:\n{}",
                args.join(" "),
                o.status.code(),
                output_text(&o)
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
    // Every row of the reference's table has a case.
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/reference.md")).unwrap();
    for code in 0..=5 {
        assert!(
            readme.contains(&format!("| {code} |")),
            "docs/reference.md row {code}"
        );
        assert!(cases.iter().any(|c| c.3 == code), "a case for {code}");
    }
}

/// A command that only shows something ends quietly when its reader stops early (`| head`), as
/// Unix tools do: killed by SIGPIPE, no panic on standard error.
#[test]
fn a_reader_that_stops_early_ends_a_listing_quietly() {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mes-events"))
        .args(["catalog", "asyncapi"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .current_dir(std::env::temp_dir())
        .spawn()
        .unwrap();
    let mut first = [0u8; 100];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    // The reader is gone (its end dropped): the rest of the 200 kB document has nowhere to go.
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        status.success() || status.signal() == Some(libc::SIGPIPE),
        "{status:?}: {err}"
    );
}
