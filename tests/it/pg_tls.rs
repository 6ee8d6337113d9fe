//! PostgreSQL over TLS, against a private server with `ssl = on` and `hostssl` lines only:
//! every command works with `verify-full` (the CLI, the relay, emit), a client certificate is
//! required where pg_hba.conf says so, and each way of getting it wrong gets its own words.

use std::process::{Command, Output};
use std::time::Duration;

use crate::support::certs::Pki;
use crate::support::pg::PrivatePg;
use crate::support::*;

fn mes_events(url: &str, args: &[&str]) -> Output {
    mes_events_with(url, &[], args)
}

fn mes_events_with(url: &str, env: &[(&str, &std::path::Path)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mes-events"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", std::env::temp_dir())
        .env("MES_EVENTS_DATABASE__URL", url)
        .envs(env.iter().copied())
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap()
}

/// A key=value connection string to the private server, by name `host` (its address is
/// always 127.0.0.1), with `extra` keys.
fn url(pg: &PrivatePg, host: &str, dbname: &str, user: &str, extra: &str) -> String {
    format!(
        "host={host} hostaddr=127.0.0.1 port={} dbname={dbname} user={user} {extra}",
        pg.port()
    )
}

#[tokio::test]
async fn postgres_over_tls_verify_full_works_everywhere_and_each_mistake_is_named() {
    let pki = Pki::new("plant");
    let other = Pki::new("elsewhere");
    let server = pki.server("server", &["localhost"], false);
    let client = pki.client("client", "certuser");
    let stranger = other.client("stranger", "certuser");
    let pg = PrivatePg::start_with(
        "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nssl_ca_file = 'ca.crt'",
        "hostssl all certuser 127.0.0.1/32 trust clientcert=verify-full\n\
         hostssl all pwuser 127.0.0.1/32 scram-sha-256\n\
         hostssl all all 127.0.0.1/32 trust",
        &[
            ("server.crt", &server.cert),
            ("server.key", &server.key),
            ("ca.crt", &pki.ca()),
        ],
    );
    let ca = format!("sslrootcert={}", pki.ca().display());
    let full = |db: &str, user: &str| {
        url(
            &pg,
            "localhost",
            db,
            user,
            &format!("sslmode=verify-full {ca}"),
        )
    };

    // The library (and so every command) over verify-full: a database for the test.
    let admin = mes_events::store::session::connect(&full("postgres", "postgres"), "test")
        .await
        .unwrap_or_else(|e| panic!("verify-full: {e}\n{}", pg.log()));
    for sql in [
        "create database mes",
        "create role certuser login superuser",
        "create role pwuser login superuser password 'pw-s3cret'",
    ] {
        admin.client.batch_execute(sql).await.unwrap();
    }
    let db_url = full("mes", "postgres");

    // The CLI: migrate, emit, status.
    for args in [
        vec!["migrate"],
        vec![
            "emit",
            "--type",
            ORDER_TYPE,
            "--key",
            "PO-1",
            "--data",
            &order_data("PO-1"),
        ],
        vec!["outbox", "status"],
    ] {
        let o = mes_events(&db_url, &args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", output_text(&o));
    }

    // The relay: publishes, every one of its sessions encrypted.
    let nats = NatsServer::start().await;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    create_streams(&js, Duration::from_secs(120)).await;
    let mut cfg = mes_events::config::Config::default();
    cfg.database.url = db_url.clone();
    cfg.nats.url = nats.url();
    cfg.events.installation = "test".into();
    cfg.events.site = "bsl".into();
    cfg.relay.poll_interval = Duration::from_millis(200);
    cfg.relay.standby_retry = Duration::from_millis(200);
    let relay = RelayProcess::spawn(&cfg, &[("RUST_LOG", "info")]);
    let pending = || async {
        let o = mes_events(&db_url, &["outbox", "status", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        v["pending"].as_i64()
    };
    eventually(
        Duration::from_secs(30),
        "the relay published over TLS",
        || async { pending().await == Some(0) },
    )
    .await;
    let sessions = admin
        .client
        .query(
            "select a.application_name, s.ssl from pg_stat_activity a join pg_stat_ssl s using (pid)
             where a.application_name like 'mes-events relay%'",
            &[],
        )
        .await
        .unwrap();
    assert!(sessions.len() >= 2, "{sessions:?}");
    for s in &sessions {
        assert!(
            s.get::<_, bool>(1),
            "{} is not encrypted",
            s.get::<_, String>(0)
        );
    }
    let log = relay.stderr();
    assert!(
        log.contains("TLS, server verified with sslrootcert="),
        "{log}"
    );
    drop(relay);

    // A client certificate where pg_hba.conf demands one.
    let cert_user = |extra: &str| {
        url(
            &pg,
            "localhost",
            "mes",
            "certuser",
            &format!("sslmode=verify-full {ca} {extra}"),
        )
    };
    let with_cert = cert_user(&format!(
        "sslcert={} sslkey={}",
        client.cert.display(),
        client.key.display()
    ));
    let o = mes_events(&with_cert, &["outbox", "status"]);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));

    // A password from the password file (owner-only), never from the URL, never printed; a
    // password file others may read is ignored, as libpq ignores it.
    let pgpass = pki.dir.path().join("pgpass");
    crate::support::certs::write_private(&pgpass, b"localhost:*:mes:pwuser:pw-s3cret\n");
    let pw_url = url(
        &pg,
        "localhost",
        "mes",
        "pwuser",
        &format!("sslmode=verify-full {ca}"),
    );
    let o = mes_events_with(&pw_url, &[("PGPASSFILE", &pgpass)], &["outbox", "status"]);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = mes_events_with(&pw_url, &[("PGPASSFILE", &pgpass)], &["outbox", "status"]);
    let text = output_text(&o);
    assert_ne!(o.status.code(), Some(0), "{text}");
    assert!(
        text.contains("chmod 600") && !text.contains("pw-s3cret"),
        "{text}"
    );

    // Each mistake in its own words, naming what to change, never a key's content.
    let key_text = std::fs::read_to_string(&client.key).unwrap();
    let cases: Vec<(&str, String, &[&str])> = vec![
        (
            "plain TCP",
            url(&pg, "localhost", "mes", "postgres", "sslmode=disable"),
            &["accepts only encrypted connections", "sslmode=verify-full"],
        ),
        (
            "a CA that did not sign the server's certificate",
            url(
                &pg,
                "localhost",
                "mes",
                "postgres",
                &format!("sslmode=verify-full sslrootcert={}", other.ca().display()),
            ),
            &["not signed by a CA this client trusts", "elsewhere-ca.pem"],
        ),
        (
            "a host name the certificate is not for",
            url(
                &pg,
                "db.elsewhere.example",
                "mes",
                "postgres",
                &format!("sslmode=verify-full {ca}"),
            ),
            &["not issued for that host name"],
        ),
        (
            "no client certificate",
            cert_user(""),
            &["requires a client certificate", "sslcert"],
        ),
        (
            "a client certificate from another CA",
            cert_user(&format!(
                "sslcert={} sslkey={}",
                stranger.cert.display(),
                stranger.key.display()
            )),
            &["refused this client's certificate"],
        ),
        (
            "verify-full without a root certificate",
            url(&pg, "localhost", "mes", "postgres", "sslmode=verify-full"),
            &["no root certificate", "sslrootcert"],
        ),
    ];
    for (what, url, says) in &cases {
        let o = mes_events(url, &["outbox", "status"]);
        let text = output_text(&o);
        assert_ne!(o.status.code(), Some(0), "{what}: {text}");
        for s in *says {
            assert!(text.contains(s), "{what}: {s:?} not in: {text}");
        }
        assert!(!text.contains(key_text.trim()), "{what}: a key printed");
        println!("{what}: {}", text.trim());
    }

    // A key others may read is refused as libpq refuses it.
    std::fs::set_permissions(&client.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = mes_events(&with_cert, &["outbox", "status"]);
    assert!(output_text(&o).contains("chmod 600"), "{}", output_text(&o));

    // The server's certificate expires (a renewal forgotten): told as such.
    let expired = pki.server("expired", &["localhost"], true);
    pg.put("server.crt", &std::fs::read(&expired.cert).unwrap());
    pg.put("server.key", &std::fs::read(&expired.key).unwrap());
    pg.reload();
    eventually(
        Duration::from_secs(10),
        "the expired certificate is named",
        || async {
            let o = mes_events(&db_url, &["outbox", "status"]);
            output_text(&o).contains("has expired")
        },
    )
    .await;
    // And one not valid yet.
    let early = pki.server_not_yet_valid("early", &["localhost"]);
    pg.put("server.crt", &std::fs::read(&early.cert).unwrap());
    pg.put("server.key", &std::fs::read(&early.key).unwrap());
    pg.reload();
    eventually(
        Duration::from_secs(10),
        "the early certificate is named",
        || async {
            let o = mes_events(&db_url, &["outbox", "status"]);
            output_text(&o).contains("is not valid yet")
        },
    )
    .await;
}

#[tokio::test]
async fn a_server_without_tls_is_named_when_tls_is_required_and_prefer_falls_back() {
    let pg = PrivatePg::start();
    let o = mes_events(
        &url(&pg, "127.0.0.1", "postgres", "postgres", "sslmode=require"),
        &["outbox", "status"],
    );
    let text = output_text(&o);
    assert_ne!(o.status.code(), Some(0), "{text}");
    assert!(
        text.contains("does not speak TLS") && text.contains("ssl = on"),
        "{text}"
    );
    // libpq's default: TLS if offered, else plain (here: the schema is missing, not the link).
    let o = mes_events(
        &url(&pg, "127.0.0.1", "postgres", "postgres", ""),
        &["migrate"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
}
