//! Changing who may connect on a running server, as an operator does it: a system added, a seed
//! rotated and then retired, each taking effect on a reload of nats-server (SIGHUP) with the
//! generated `auth.conf` included, while the systems already connected stay connected.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;

use crate::support::*;

const STREAMS: &str = r#"
[[stream]]
name = "MES_EVENTS"
subjects = ["mes.*.*.*.*.processorder.>"]
"#;

fn system(name: &str) -> String {
    format!(
        "[system]\nname = \"{name}\"\n[[consumer]]\nstream = \"MES_EVENTS\"\nfilter_subjects = [\"mes.*.*.*.*.processorder.>\"]\n"
    )
}

fn mes_events(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_mes-events"));
    c.args(args).current_dir(std::env::temp_dir());
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// A client connected as the identity whose seed is at `seed`, as mes-events connects (inbox
/// prefix from the seed file's name), or why not.
async fn connect(url: &str, seed: &Path, inbox_of: &str) -> Result<async_nats::Client, String> {
    let mut cfg = mes_events::config::Config::default().nats;
    cfg.url = url.to_owned();
    cfg.nkey = Some(seed.to_owned());
    cfg.inbox_prefix = Some(format!("_INBOX_{inbox_of}"));
    cfg.request_timeout = Duration::from_secs(3);
    mes_events::nats::connect(&cfg, "reload test", false)
        .await
        .map_err(|e| e.to_string())
}

/// Pulls what waits on the system's consumer (bound by name, as a system must) and acks it.
async fn pull(client: &async_nats::Client, consumer: &str) -> Result<usize, String> {
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(3))
        .build(client.clone());
    let c = mes_events::consume::bind_by_name(&js, "MES_EVENTS", consumer);
    let mut batch = c
        .fetch()
        .max_messages(100)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .map_err(|e| e.to_string())?;
    let mut n = 0;
    while let Some(m) = batch.next().await {
        let m = m.map_err(|e| e.to_string())?;
        m.ack().await.map_err(|e| e.to_string())?;
        n += 1;
    }
    Ok(n)
}

/// SIGHUP to the server, then waits until it says it reloaded that many times in all.
async fn reload(node: &mes_events::demo::local_nats::LocalNats, times: usize) {
    let pid = node.pid().unwrap() as i32;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let log = node.log_file();
    eventually(Duration::from_secs(20), "the server reloaded", || async {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("Reloaded server configuration")
            .count()
            >= times
    })
    .await;
}

#[tokio::test]
async fn a_system_added_pulls_after_a_reload_and_a_rotated_seed_works_beside_the_old_until_retired()
{
    let decl = decl_dir(&[
        ("streams.toml", STREAMS),
        ("systems/erp.toml", &system("erp")),
    ]);
    let creds = tempfile::tempdir().unwrap();
    let creds_dir = creds.path().join("creds");
    let credentials = |extra: &[&str]| {
        let mut args = vec!["provision", "credentials", "--dir"];
        args.push(decl.path().to_str().unwrap());
        args.extend(["--out", creds_dir.to_str().unwrap()]);
        args.extend(extra);
        let o = mes_events(&args, &[]);
        assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
        output_text(&o)
    };
    credentials(&[]);
    // nats-server resolves an include against its configuration's folder, a sibling of this
    // one in the temporary directory.
    let include = format!(
        "include \"../{}/creds/auth.conf\"\n",
        creds.path().file_name().unwrap().to_str().unwrap()
    );
    let mut nats = NatsServer::start_with_config(&include).await;
    let url = nats.url();
    let seed = |who: &str| creds_dir.join(format!("{who}.nk"));
    let admin = seed("admin");
    let apply = || {
        let o = mes_events(
            &["provision", "apply", "--dir", decl.path().to_str().unwrap()],
            &[
                ("MES_EVENTS_NATS__URL", Path::new(&url)),
                ("MES_EVENTS_NATS__NKEY", &admin),
            ],
        );
        assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    };
    apply();
    let relay = connect(&url, &seed("relay"), "relay").await.unwrap();
    let relay_js = jetstream::new(relay);
    let publish = |n: usize| {
        let js = relay_js.clone();
        async move {
            for i in 0..n {
                js.publish(
                    format!("mes.bsl.a.b.c.processorder.statuschanged.v1.O{i}"),
                    "{}".into(),
                )
                .await
                .unwrap()
                .await
                .unwrap();
            }
        }
    };
    let erp = connect(&url, &seed("erp"), "erp").await.unwrap();
    publish(3).await;
    assert_eq!(pull(&erp, "erp").await, Ok(3));

    // A new system: declared, provisioned, its credentials written, the server reloaded.
    std::fs::write(
        decl.path().join("systems/analytics.toml"),
        system("analytics"),
    )
    .unwrap();
    apply();
    let said = credentials(&[]);
    assert!(
        said.contains("new identity analytics") && said.contains("TWICE"),
        "{said}"
    );
    reload(nats.local(), 1).await;
    // nats-server 2.15: after one reload the new account's service imports are not in effect.
    let analytics = connect(&url, &seed("analytics"), "analytics")
        .await
        .unwrap();
    publish(2).await;
    let once = pull(&analytics, "analytics").await;
    eprintln!("after one reload, the new system's pull: {once:?}");
    reload(nats.local(), 2).await;
    assert_eq!(
        pull(&analytics, "analytics").await,
        Ok(5),
        "after the second reload (after the first: {once:?})"
    );
    // The ERP never noticed.
    assert_eq!(pull(&erp, "erp").await, Ok(2));
    let connects = |c: &async_nats::Client| {
        c.statistics()
            .connects
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert_eq!(
        connects(&erp),
        1,
        "the ERP stayed connected through the reloads"
    );

    // Rotating the ERP's seed: after a reload both seeds are accepted.
    let old = creds_dir.join("erp.old-copy.nk");
    std::fs::copy(seed("erp"), &old).unwrap();
    let said = credentials(&["--rotate", "erp"]);
    assert!(said.contains("ROTATED"), "{said}");
    reload(nats.local(), 3).await;
    publish(1).await;
    let new = connect(&url, &seed("erp"), "erp").await.unwrap();
    assert_eq!(pull(&new, "erp").await, Ok(1), "the new seed works");
    let again = connect(&url, &old, "erp").await.unwrap();
    publish(1).await;
    assert_eq!(pull(&again, "erp").await, Ok(1), "so does the old one");
    assert_eq!(
        connects(&erp),
        1,
        "the ERP on its old seed stayed connected"
    );

    // Retired: after a reload the old seed is refused, the new one goes on.
    credentials(&["--retire", "erp"]);
    reload(nats.local(), 4).await;
    let refused = connect(&url, &old, "erp").await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("authorization violation")),
        "the retired seed: {:?}",
        refused.map(|_| ())
    );
    publish(1).await;
    assert_eq!(pull(&new, "erp").await, Ok(1), "the new seed goes on");
}
