//! compose.yaml, the Dockerfile and the NATS configs, checked statically (no Docker engine on
//! these machines): the file parses, every service's image/build, mounted path, named volume,
//! dependency and mes-events command exists, every MES_EVENTS_* variable is a configuration key,
//! the declarations it provisions validate, and every nats-server config passes `nats-server -t`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml_ng::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_owned()
}

fn compose() -> Value {
    let text = std::fs::read_to_string(root().join("compose.yaml")).unwrap();
    let mut v: Value = serde_yaml_ng::from_str(&text).expect("compose.yaml parses");
    v.apply_merge().expect("merge keys resolve");
    v
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_service_refers_to_things_that_exist() {
    let c = compose();
    let services = c["services"].as_mapping().expect("services");
    let volumes: Vec<String> = c["volumes"]
        .as_mapping()
        .map(|m| {
            m.keys()
                .filter_map(|k| k.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let names: Vec<String> = services
        .keys()
        .filter_map(|k| k.as_str().map(str::to_owned))
        .collect();
    for (name, s) in services {
        let name = name.as_str().unwrap();
        assert!(
            s.get("image").is_some() || s.get("build").is_some(),
            "{name}: needs image or build"
        );
        if let Some(b) = s.get("build") {
            let ctx = root().join(b.as_str().unwrap_or("."));
            assert!(
                ctx.join("Dockerfile").is_file(),
                "{name}: build context {} has no Dockerfile",
                ctx.display()
            );
        }
        for m in strings(&s["volumes"]) {
            let source = m.split(':').next().unwrap();
            if source.starts_with("./") || source.starts_with('/') {
                assert!(
                    root().join(source).exists(),
                    "{name}: mounted path {source} does not exist"
                );
            } else {
                assert!(
                    volumes.contains(&source.to_owned()),
                    "{name}: volume {source} is not declared"
                );
            }
        }
        let deps: Vec<String> = match &s["depends_on"] {
            Value::Sequence(_) => strings(&s["depends_on"]),
            Value::Mapping(m) => m
                .keys()
                .filter_map(|k| k.as_str().map(str::to_owned))
                .collect(),
            _ => vec![],
        };
        for d in deps {
            assert!(names.contains(&d), "{name}: depends on unknown service {d}");
        }
        // mes-events services: the command parses, every MES_EVENTS_* is a configuration key.
        if s.get("build").is_some() {
            let mut args = strings(&s["command"]);
            args.push("--help".into());
            let out = Command::new(env!("CARGO_BIN_EXE_mes-events"))
                .args(&args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{name}: `mes-events {}` does not parse: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
            let mut figment = figment::Figment::from(figment::providers::Serialized::defaults(
                mes_events::config::Config::default(),
            ));
            if let Some(env) = s["environment"].as_mapping() {
                for (k, v) in env {
                    let (k, v) = (k.as_str().unwrap(), v.as_str().unwrap_or_default());
                    let key = match k {
                        "DATABASE_URL" => "database.url".to_owned(),
                        "NATS_URL" => "nats.url".to_owned(),
                        _ => match k.strip_prefix(mes_events::config::ENV_PREFIX) {
                            Some(rest) => rest.to_lowercase().replace("__", "."),
                            None => continue,
                        },
                    };
                    figment = figment.merge((key, v));
                }
            }
            let cfg = mes_events::config::Config::from_figment(&figment)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            // The URL (or list) as the client will take it: every server of the cluster.
            mes_events::nats::servers(&cfg.nats.url)
                .unwrap_or_else(|e| panic!("{name}: NATS_URL {}: {e}", cfg.nats.url));
        }
    }
    for cluster in [
        "nats-1",
        "nats-2",
        "nats-3",
        "provision-cluster",
        "relay-cluster",
    ] {
        assert!(
            names.contains(&cluster.to_owned()),
            "profile cluster needs {cluster}"
        );
    }
}

#[test]
fn the_dockerfile_is_multi_stage_small_and_non_root() {
    let d = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    assert!(
        d.lines().filter(|l| l.starts_with("FROM ")).count() >= 2,
        "multi-stage"
    );
    assert!(d.contains("USER nonroot"), "runs as non-root");
    assert!(d.contains("--locked"), "reproducible build");
    for line in d
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let src = line.split_whitespace().nth(1).unwrap();
        assert!(
            src == "." || root().join(src).exists(),
            "COPY source {src} does not exist"
        );
    }
}

#[test]
fn the_declarations_compose_provisions_are_valid() {
    mes_events::provision::load_dir(&root().join("nats")).expect("nats/ validates");
    // The cluster profile mounts nats/cluster/streams.toml beside nats/systems.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        root().join("nats/cluster/streams.toml"),
        dir.path().join("streams.toml"),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("systems")).unwrap();
    for e in std::fs::read_dir(root().join("nats/systems")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join("systems").join(e.file_name())).unwrap();
    }
    let d = mes_events::provision::load_dir(dir.path()).expect("cluster declaration validates");
    assert!(d
        .streams
        .iter()
        .filter(|s| s.name.get_ref() != "MES_DEAD_LETTERS")
        .all(|s| s.replicas == Some(3)));
}

#[test]
fn every_nats_config_passes_nats_server_t_with_generated_credentials() {
    let bin = mes_events::demo::local_nats::find_binary()
        .unwrap()
        .unwrap_or_else(|| panic!("{}", mes_events::demo::local_nats::INSTALL_HINT));
    // Laid out as the containers see it: /etc/nats/{server.conf,cluster/*.conf,creds/auth.conf}.
    let etc = tempfile::tempdir().unwrap();
    let decl = mes_events::provision::load_dir(&root().join("nats")).unwrap();
    mes_events::provision::auth::write(&decl, &etc.path().join("creds"), None).unwrap();
    // As the credentials job writes them (`--tls`): certificates and the tls.conf the servers
    // include, naming the files where the servers see them.
    let mut identities = vec!["admin", "relay"];
    identities.extend(decl.systems.iter().map(|s| s.decl.name.get_ref().as_str()));
    let creds = etc.path().join("creds");
    mes_events::provision::certs::write(
        &identities,
        &["nats".into(), "nats-1".into(), "localhost".into()],
        &creds,
        &creds,
    )
    .unwrap();
    std::fs::create_dir(etc.path().join("cluster")).unwrap();
    let mut configs = vec![etc.path().join("server.conf")];
    std::fs::copy(root().join("nats/server.conf"), &configs[0]).unwrap();
    for i in 1..=3 {
        let p = etc.path().join(format!("cluster/nats-{i}.conf"));
        std::fs::copy(root().join(format!("nats/cluster/nats-{i}.conf")), &p).unwrap();
        configs.push(p);
    }
    for conf in configs {
        let out = Command::new(&bin)
            .arg("-t")
            .arg("-c")
            .arg(&conf)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}{}",
            conf.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The TLS variant is the only one: the credentials job writes a CA and certificates, every
/// NATS server includes the tls.conf it writes, and every mes-events service that talks to NATS
/// has the CA and a certificate of its own identity (the one its seed names), all of them files
/// the credentials job writes.
#[test]
fn compose_runs_nats_with_tls_and_every_client_has_its_own_certificate() {
    let c = compose();
    let services = c["services"].as_mapping().unwrap();
    let credentials = strings(&c["services"]["credentials"]["command"]);
    assert!(credentials.contains(&"--tls".to_owned()), "{credentials:?}");
    let names = credentials
        .iter()
        .skip_while(|a| *a != "--tls-name")
        .nth(1)
        .cloned()
        .unwrap_or_default();
    for (conf, host) in [
        ("nats/server.conf", "nats"),
        ("nats/cluster/nats-1.conf", "nats-1"),
        ("nats/cluster/nats-2.conf", "nats-2"),
        ("nats/cluster/nats-3.conf", "nats-3"),
    ] {
        let text = std::fs::read_to_string(root().join(conf)).unwrap();
        assert!(
            text.lines()
                .any(|l| l.trim().starts_with("include") && l.contains("creds/tls.conf")),
            "{conf} does not include tls.conf"
        );
        assert!(
            names.split(',').any(|n| n == host),
            "{host} not in --tls-name {names}"
        );
    }
    for (name, s) in services {
        let name = name.as_str().unwrap();
        let Some(env) = s["environment"].as_mapping() else {
            continue;
        };
        let get = |k: &str| env.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        let Some(seed) = get("MES_EVENTS_NATS__NKEY") else {
            continue;
        };
        let identity = Path::new(&seed)
            .file_stem()
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(
            get("MES_EVENTS_NATS__TLS_CA").as_deref(),
            Some("/creds/tls/ca.crt"),
            "{name}"
        );
        for (k, ext) in [
            ("MES_EVENTS_NATS__TLS_CERT", "crt"),
            ("MES_EVENTS_NATS__TLS_KEY", "key"),
        ] {
            assert_eq!(
                get(k),
                Some(format!("/creds/tls/{identity}.{ext}")),
                "{name}: {k} is not {identity}'s own"
            );
        }
    }
}
