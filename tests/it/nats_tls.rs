//! NATS over TLS with client certificates: a nats-server with the accounts and the `tls {}` block
//! (`verify: true`) that `provision credentials --tls` generates, its CA and certificates; provisioning, the relay, push and the Python and JavaScript example
//! consumers all work over it, each with its own certificate and seed; a client without a
//! certificate, one trusting another CA, and one connecting by a name the server's certificate
//! lacks are refused, each in its own words.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::examples::{root, run_example, SYSTEMS};
use crate::support::certs::{Pair, Pki};
use crate::support::*;

/// The CA and the certificates `provision credentials --tls` wrote.
struct Generated(std::path::PathBuf);

impl Generated {
    fn ca(&self) -> std::path::PathBuf {
        self.0.join("tls/ca.crt")
    }
    fn client(&self, identity: &str) -> Pair {
        Pair {
            cert: self.0.join(format!("tls/{identity}.crt")),
            key: self.0.join(format!("tls/{identity}.key")),
        }
    }
}

/// Environment variables for a child process.
type Env = Vec<(String, String)>;

fn tls_env(pki: &Generated, client: &Pair) -> Vec<(String, String)> {
    vec![
        (
            "MES_EVENTS_NATS__TLS_CA".into(),
            pki.ca().display().to_string(),
        ),
        (
            "MES_EVENTS_NATS__TLS_CERT".into(),
            client.cert.display().to_string(),
        ),
        (
            "MES_EVENTS_NATS__TLS_KEY".into(),
            client.key.display().to_string(),
        ),
    ]
}

fn cli(url: &str, env: &[(String, String)], args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mes-events"))
        .args(args)
        .env("MES_EVENTS_NATS__URL", url)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap()
}

#[tokio::test]
async fn everything_works_over_mutual_tls_and_each_refusal_is_named() {
    let other = Pki::new("elsewhere");
    let decl_dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        root().join("nats/streams.toml"),
        decl_dir.path().join("streams.toml"),
    )
    .unwrap();
    for system in ["python-app", "js-app"] {
        std::fs::write(
            decl_dir.path().join(format!("{system}.toml")),
            SYSTEMS.replace("python-app", system),
        )
        .unwrap();
    }
    let hook_port = free_port();
    std::fs::write(
        decl_dir.path().join("workflow.toml"),
        format!(
            "[system]\nname = \"workflow\"\n[[consumer]]\nstream = \"MES_EVENTS\"\nfilter_subjects = [\"mes.*.*.*.*.processorder.>\"]\n[push]\nurl = \"http://127.0.0.1:{hook_port}/hooks/mes\"\nsecret_env = \"PUSH_SECRET\"\n"
        ),
    )
    .unwrap();
    let creds = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_mes-events"))
        .args(["provision", "credentials", "--dir"])
        .arg(decl_dir.path())
        .arg("--out")
        .arg(creds.path())
        // For the name "localhost" only: connecting by its address is connecting by a name the
        // server's certificate lacks.
        .args(["--tls", "--tls-name", "localhost"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    let auth = std::fs::read_to_string(creds.path().join("auth.conf")).unwrap();
    let pki = Generated(creds.path().to_owned());
    let tls = std::fs::read_to_string(creds.path().join("tls.conf")).unwrap();
    let nats = NatsServer::start_with_config(&format!("{auth}\n{tls}")).await;
    let port = nats.url().rsplit(':').next().unwrap().to_owned();
    let url = format!("nats://localhost:{port}");
    let seed = |who: &str| creds.path().join(format!("{who}.nk")).display().to_string();

    // Provisioning, as the admin with its certificate.
    let admin_cert = pki.client("admin");
    let mut admin_env = tls_env(&pki, &admin_cert);
    admin_env.push(("MES_EVENTS_NATS__NKEY".into(), seed("admin")));
    let o = cli(
        &url,
        &admin_env,
        &[
            "provision",
            "apply",
            "--dir",
            decl_dir.path().to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));

    // The relay, with its own.
    let db = TestDb::new().await;
    let cfg = config_for(&db, &url);
    let relay_cert = pki.client("relay");
    let mut relay_env = tls_env(&pki, &relay_cert);
    relay_env.push(("MES_EVENTS_NATS__NKEY".into(), seed("relay")));
    let env_refs: Vec<(&str, &str)> = relay_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let relay = RelayProcess::spawn(&cfg, &env_refs);
    let c = db.client().await;
    let mut published = BTreeSet::new();
    for i in 0..10 {
        let id = emit_order(&c, &format!("PO-{}", i % 3)).await;
        published.insert(format!("{id:020}"));
    }
    eventually(
        Duration::from_secs(30),
        "the relay published over TLS",
        || async { pending(&db).await == 0 },
    )
    .await;
    assert!(!relay.stderr().contains("ERROR"), "{}", relay.stderr());

    // Push, each system with its seed, over the same TLS.
    let push_cert = pki.client("workflow");
    let mut receiver = Command::new("python3")
        .arg(root().join("examples/push/receiver.py"))
        .args([
            "--port",
            &hook_port.to_string(),
            "--secret-env",
            "PUSH_SECRET",
        ])
        .env("PUSH_SECRET", crate::push::SECRET)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let push_log = tempfile::NamedTempFile::new().unwrap();
    let mut push = Command::new(env!("CARGO_BIN_EXE_mes-events"))
        .args(["push", "--dir"])
        .arg(decl_dir.path())
        .arg("--credentials")
        .arg(creds.path())
        .env("MES_EVENTS_NATS__URL", &url)
        .envs(tls_env(&pki, &push_cert))
        .env("PUSH_SECRET", crate::push::SECRET)
        .env("RUST_LOG", "info")
        .stderr(push_log.reopen().unwrap())
        .current_dir(std::env::temp_dir())
        .spawn()
        .unwrap();
    // What push delivered: its consumer's ack floor, read by the admin.
    let admin = async_nats::ConnectOptions::with_nkey(
        std::fs::read_to_string(seed("admin"))
            .unwrap()
            .trim()
            .to_owned(),
    )
    .add_root_certificates(pki.ca())
    .add_client_certificate(admin_cert.cert.clone(), admin_cert.key.clone())
    .require_tls(true)
    .custom_inbox_prefix("_INBOX_admin")
    .connect(&url)
    .await
    .unwrap();
    let js = async_nats::jetstream::new(admin);
    eventually(
        Duration::from_secs(30),
        "push delivered every event over TLS",
        || async {
            let mut c: async_nats::jetstream::consumer::PullConsumer = js
                .get_consumer_from_stream("workflow", "MES_EVENTS")
                .await
                .unwrap();
            c.info().await.unwrap().ack_floor.stream_sequence >= 10
        },
    )
    .await;
    unsafe {
        libc::kill(push.id() as i32, libc::SIGTERM);
    }
    let _ = push.wait();
    let _ = receiver.kill();
    let _ = receiver.wait();

    // The Python and JavaScript examples, each with its certificate.
    for (program, script, system) in [
        (
            "python3",
            root().join("examples/python/consumer.py"),
            "python-app",
        ),
        (
            "node",
            root().join("examples/javascript/consumer.mjs"),
            "js-app",
        ),
    ] {
        let cert = pki.client(system);
        let args: Vec<String> = vec![
            "--url".into(),
            url.clone(),
            "--system".into(),
            system.into(),
            "--seed".into(),
            seed(system),
            "--max".into(),
            "10".into(),
            "--tls-ca".into(),
            pki.ca().display().to_string(),
            "--tls-cert".into(),
            cert.cert.display().to_string(),
            "--tls-key".into(),
            cert.key.display().to_string(),
        ];
        let got = run_example(program, &script, script.parent().unwrap(), &args).await;
        let got: BTreeSet<String> = got.into_iter().collect();
        assert_eq!(got, published, "{system}");
    }

    // Refusals, each in its words, no key printed.
    let stranger = other.client("stranger", "admin");
    let with = |ca: &std::path::Path, cert: Option<&Pair>| {
        let mut v = vec![
            ("MES_EVENTS_NATS__NKEY".to_string(), seed("admin")),
            (
                "MES_EVENTS_NATS__TLS_CA".to_string(),
                ca.display().to_string(),
            ),
        ];
        if let Some(c) = cert {
            v.push((
                "MES_EVENTS_NATS__TLS_CERT".into(),
                c.cert.display().to_string(),
            ));
            v.push((
                "MES_EVENTS_NATS__TLS_KEY".into(),
                c.key.display().to_string(),
            ));
        }
        v
    };
    let cases: Vec<(&str, String, Env, &str)> = vec![
        (
            "no client certificate",
            url.clone(),
            with(&pki.ca(), None),
            "refused this client's certificate",
        ),
        (
            "a client certificate of another CA",
            url.clone(),
            with(&pki.ca(), Some(&stranger)),
            "refused this client's certificate",
        ),
        (
            "trusting another CA",
            url.clone(),
            with(&other.ca(), Some(&admin_cert)),
            "not signed by a CA this client trusts",
        ),
        (
            "a name the server's certificate lacks",
            nats.url(),
            with(&pki.ca(), Some(&admin_cert)),
            "not issued for that host name",
        ),
    ];
    let plain = NatsServer::start().await;
    let mut cases = cases;
    cases.push((
        "a server without TLS",
        plain.url(),
        with(&pki.ca(), Some(&admin_cert)),
        "does not speak TLS",
    ));
    let key = std::fs::read_to_string(&admin_cert.key).unwrap();
    for (what, url, env, says) in cases {
        let o = cli(
            &url,
            &env,
            &[
                "provision",
                "status",
                "--dir",
                decl_dir.path().to_str().unwrap(),
            ],
        );
        let text = output_text(&o);
        assert_ne!(o.status.code(), Some(0), "{what}: {text}");
        assert!(text.contains(says), "{what}: {says:?} not in {text}");
        assert!(!text.contains(key.trim()), "{what}: a key printed");
        println!("{what}: {}", text.trim());
    }

    // A server that wants TLS before it says anything (handshake_first): nats.tls_first.
    let first = NatsServer::start_with_config(&format!(
        "{auth}\n{}",
        tls.replace("verify: true", "verify: true\n  handshake_first: true")
    ))
    .await;
    let first_url = format!(
        "nats://localhost:{}",
        first.url().rsplit(':').next().unwrap()
    );
    let status = |env: &Env| {
        cli(
            &first_url,
            env,
            &[
                "provision",
                "status",
                "--dir",
                decl_dir.path().to_str().unwrap(),
            ],
        )
    };
    let o = status(&admin_env);
    assert_ne!(o.status.code(), Some(0), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("nats.tls_first"),
        "{}",
        output_text(&o)
    );
    let mut env = admin_env.clone();
    env.push(("MES_EVENTS_NATS__TLS_FIRST".into(), "true".into()));
    let o = status(&env);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    drop(relay);
}
