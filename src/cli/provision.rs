//! `provision plan | apply | status | credentials`.
//!
//! Never calls a server before the whole declaration and the active catalog are valid, and
//! never prints a seed. `plan` and `apply` cover the schema bucket too ([`schemas`]).

use mes_events::config::Config;
use mes_events::event::catalog::Catalog;
use mes_events::nats;
use mes_events::provision::auth::{self, AuthError, SeedFate};
use mes_events::provision::schemas;
use mes_events::provision::{self, DeclError, Declaration, Options, ProvisionError};

use super::args::ProvisionCommand;
use super::exit::{self, Refused, Usage};
use super::output;

/// Every problem of a declaration, one per line, and that nothing was sent.
#[derive(Debug, thiserror::Error)]
#[error("{}\n{} problem(s) in the declaration under {}; nothing was sent to NATS",
    .errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\nerror: "),
    .errors.len(), .dir.display())]
struct Invalid {
    dir: std::path::PathBuf,
    errors: Vec<DeclError>,
}

pub async fn run(cfg: &Config, cmd: ProvisionCommand) -> anyhow::Result<u8> {
    let dir = match &cmd {
        ProvisionCommand::Plan { decl, .. }
        | ProvisionCommand::Apply { decl, .. }
        | ProvisionCommand::Status { decl, .. }
        | ProvisionCommand::Credentials { decl, .. } => decl
            .dir
            .clone()
            .unwrap_or_else(|| cfg.provision.dir.clone()),
    };
    // Which folder was read, when it is not the one every command reads by default (on
    // standard error: standard output may be JSON). An error names its files anyway.
    if dir != std::path::Path::new("nats") {
        eprintln!("declaration: {}", dir.display());
    }
    // Validate everything before any call to a server.
    let decl =
        provision::load_dir(&dir).map_err(|errors| Usage(Invalid { dir, errors }.to_string()))?;
    if let ProvisionCommand::Credentials {
        out,
        rotate,
        retire,
        tls,
        tls_names,
        tls_server_dir,
        ..
    } = &cmd
    {
        let change = match (rotate, retire) {
            (Some(n), _) => Some(auth::Change::Rotate(n)),
            (None, Some(n)) => Some(auth::Change::Retire(n)),
            (None, None) => None,
        };
        let code = credentials(&decl, out, change)?;
        if *tls {
            certificates(&decl, out, tls_names, tls_server_dir.as_deref())?;
        }
        return Ok(code);
    }
    // The active catalog goes on the bus with the streams: checked before any call too.
    let catalog = Catalog::load(cfg.events.catalog.as_deref())?;
    for w in schemas::uncovered(&decl, &catalog, &cfg.events.subject_prefix) {
        eprintln!("warning: {w}");
    }
    let client = nats::connect(&cfg.nats, "mes-events provision", false).await?;
    let js = nats::jetstream(client, &cfg.nats, 256);
    match cmd {
        ProvisionCommand::Plan { prune, json, .. } => {
            let options = Options {
                prune,
                allow_recreate: false,
            };
            let plan = provision::plan(&js, &decl, options).await?;
            let schemas = schemas::plan(&js, &catalog).await?;
            if json {
                let mut v = serde_json::to_value(&plan)?;
                v["schemas"] = serde_json::to_value(&schemas)?;
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{plan}");
                println!("{schemas}");
            }
            for h in credential_hints(&decl, &plan, credentials_dir(cfg).as_deref()) {
                eprintln!("hint: {h}");
            }
            Ok(if plan.pending() || schemas.pending() {
                exit::CHANGES
            } else {
                exit::OK
            })
        }
        ProvisionCommand::Apply {
            allow_recreate,
            prune,
            ..
        } => {
            let options = Options {
                prune,
                allow_recreate,
            };
            // Streams and consumers first (the bucket's replicas follow the streams'), then
            // the schemas; a refusal of one does not keep the other from being applied.
            let (mut refused, mut applied) = (Vec::new(), Vec::new());
            let streams = provision::apply(&js, &decl, options).await;
            let hints = match &streams {
                Ok(plan) => credential_hints(&decl, plan, credentials_dir(cfg).as_deref()),
                Err(_) => Vec::new(),
            };
            print_or_keep(streams.map(|p| p.to_string()), &mut refused, &mut applied)?;
            for h in hints {
                eprintln!("hint: {h}");
            }
            let bucket = schemas::apply(&js, &decl, &catalog)
                .await
                .map(|p| p.to_string());
            print_or_keep(bucket, &mut refused, &mut applied)?;
            if refused.is_empty() {
                Ok(exit::OK)
            } else {
                Err(Refused { refused, applied }.into())
            }
        }
        ProvisionCommand::Status { json, .. } => {
            let rows = provision::status(&js, &decl).await?;
            output::consumer_status(&rows, json)?;
            Ok(exit::OK)
        }
        ProvisionCommand::Credentials { .. } => unreachable!("handled above"),
    }
}

/// Where `provision credentials` wrote the seeds, if this configuration says: `push.credentials`,
/// else the folder of the admin's own seed when `auth.conf` is beside it.
fn credentials_dir(cfg: &Config) -> Option<std::path::PathBuf> {
    cfg.push.credentials.clone().or_else(|| {
        let dir = cfg.nats.nkey.as_deref()?.parent()?;
        dir.join("auth.conf").is_file().then(|| dir.to_owned())
    })
}

/// What the server's authorization still needs for the systems of this declaration: a system
/// whose consumers are all new here has, most likely, no identity on the server yet; and, when
/// the credentials folder is known (see [`credentials_dir`]), a system without a seed there or
/// without an account in its `auth.conf`.
fn credential_hints(
    decl: &Declaration,
    plan: &provision::plan::Plan,
    credentials: Option<&std::path::Path>,
) -> Vec<String> {
    use provision::plan::{Action, Kind};
    let twice = "then reload nats-server twice, a second apart (docs/operators.md: Add a system)";
    let mut hints = Vec::new();
    let auth = credentials.and_then(|d| std::fs::read_to_string(d.join("auth.conf")).ok());
    for sys in &decl.systems {
        let name = sys.decl.name.get_ref();
        let new = !sys.consumers.is_empty()
            && sys.consumers.iter().all(|(consumer, c)| {
                plan.items.iter().any(|i| {
                    i.kind == Kind::Consumer
                        && i.consumer.as_deref() == Some(consumer.as_str())
                        && i.stream == *c.stream.get_ref()
                        && i.action == Action::Create
                })
            });
        match credentials {
            Some(dir) => {
                let seed = dir.join(format!("{name}.nk"));
                let account = auth::account(name);
                let in_auth = auth
                    .as_deref()
                    .is_some_and(|a| a.contains(&format!("\"{account}\"")));
                if !seed.is_file() || !in_auth {
                    hints.push(format!(
                        "system {name} has {} in {}: run `mes-events provision credentials --out {}`, {twice}",
                        if seed.is_file() { "no account in auth.conf" } else { "no seed" },
                        dir.display(),
                        dir.display()
                    ));
                }
            }
            None if new => hints.push(format!(
                "system {name} is new on this server: if it has no identity yet, give it one with `mes-events provision credentials --out DIR` (its seed, its account in auth.conf), {twice}"
            )),
            None => {}
        }
    }
    hints
}

/// A part of `apply` done: its summary printed, or its refusals kept for the end.
fn print_or_keep(
    done: Result<String, ProvisionError>,
    refused: &mut Vec<String>,
    applied: &mut Vec<String>,
) -> Result<(), ProvisionError> {
    match done {
        Ok(summary) => println!("{summary}"),
        Err(ProvisionError::Refused {
            refused: r,
            applied: a,
        }) => {
            refused.extend(r);
            applied.extend(a);
        }
        Err(e) => return Err(e),
    }
    Ok(())
}

/// `credentials --tls`: the CA and certificates beside the seeds, and what to do with them.
fn certificates(
    decl: &Declaration,
    out: &std::path::Path,
    names: &[String],
    server_dir: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let names = if names.is_empty() {
        vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
    } else {
        names.to_vec()
    };
    let mut identities = vec![auth::ADMIN, auth::RELAY];
    identities.extend(decl.systems.iter().map(|s| s.decl.name.get_ref().as_str()));
    let absolute = std::path::absolute(out).unwrap_or_else(|_| out.to_owned());
    let written =
        provision::certs::write(&identities, &names, out, server_dir.unwrap_or(&absolute))
            .map_err(|e| {
                Usage(format!(
                    "{e}\nthe seeds and auth.conf were written; no certificate was changed"
                ))
            })?;
    println!(
        "TLS certificates in {} (server names: {}):",
        provision::certs::dir(out).display(),
        names.join(", ")
    );
    for w in &written {
        println!(
            "  {} ({})",
            w.path.display(),
            if w.created { "new" } else { "kept" }
        );
    }
    println!("include tls.conf in the nats-server configuration (clients then need a certificate of this CA); give each identity its tls/<name>.crt and .key (nats.tls_cert, nats.tls_key) and tls/ca.crt (nats.tls_ca); ca.key signs them: keep it off the servers");
    Ok(())
}

fn credentials(
    decl: &Declaration,
    out: &std::path::Path,
    change: Option<auth::Change<'_>>,
) -> anyhow::Result<u8> {
    // Identities new to an auth.conf a server may already run with.
    let before = std::fs::read_to_string(out.join("auth.conf")).ok();
    let had_auth = before.is_some();
    let written = match auth::write(decl, out, change) {
        Ok(w) => w,
        Err(
            e @ (AuthError::SeedExposed { .. }
            | AuthError::UnknownIdentity { .. }
            | AuthError::BadSeed { .. }
            | AuthError::RotationPending { .. }
            | AuthError::NothingToRetire { .. }),
        ) => return Err(Usage(format!("{e}\nnothing was written")).into()),
        Err(e) => return Err(e.into()),
    };
    println!("wrote {}", out.join("auth.conf").display());
    println!("  {:<20} {:<28} seed", "identity", "inbox prefix");
    for w in &written {
        let fate = match (w.fate, &w.previous) {
            (SeedFate::Kept, None) => "kept".to_owned(),
            (SeedFate::Kept, Some(p)) => format!(
                "kept; being rotated: {} still accepted until --retire {}",
                p.display(),
                w.name
            ),
            (SeedFate::Created, _) => "new".to_owned(),
            (SeedFate::Rotated, _) => format!(
                "ROTATED: the old seed, now {}, stays accepted until --retire {}",
                auth::previous_path(out, &w.name).display(),
                w.name
            ),
            (SeedFate::Retired, _) => "old seed RETIRED".to_owned(),
            (SeedFate::Replaced, _) => {
                "REPLACED: the old seed could be read by others, so it is not kept".to_owned()
            }
        };
        println!(
            "  {:<20} {:<28} {} ({fate})",
            w.name,
            w.inbox_prefix,
            w.path.display()
        );
    }
    println!("include auth.conf in the nats-server configuration; give each system its .nk seed, tell it its inbox prefix and to bind to its consumer by name (it may not look it up)");
    let added: Vec<&str> = written
        .iter()
        .filter(|w| had_auth && w.fate == SeedFate::Created)
        .map(|w| w.name.as_str())
        .collect();
    if !added.is_empty() {
        println!(
            "new identit{} {}: reload nats-server TWICE, a second apart (nats-server --signal reload=PID, or kill -HUP): nats-server (2.15) takes a new account's service imports only on the reload after the one that created it; until then the new system connects but every pull answers \"no responders\". The other systems stay connected.",
            if added.len() == 1 { "y" } else { "ies" },
            added.join(", ")
        );
    }
    let told = !added.is_empty()
        || written.iter().any(|w| {
            matches!(
                w.fate,
                SeedFate::Rotated | SeedFate::Replaced | SeedFate::Retired
            )
        });
    let after = std::fs::read_to_string(out.join("auth.conf")).ok();
    if had_auth && before != after && !told {
        println!("auth.conf changed: reload nats-server (nats-server --signal reload=PID, or SIGHUP) for it to take effect");
    } else if had_auth && before == after {
        println!("auth.conf is as it was: nothing to reload");
    }
    for w in &written {
        match w.fate {
            SeedFate::Rotated => println!(
                "{}: reload nats-server; from then on both seeds are accepted. Give {} its new seed {}; once it connects with it, `mes-events provision credentials --out {} --retire {}` and reload again: then the old one is refused",
                w.name,
                w.name,
                w.path.display(),
                out.display(),
                w.name
            ),
            SeedFate::Replaced => println!(
                "{}: reload nats-server now: from then on only {} is accepted, the exposed one is refused",
                w.name,
                w.path.display()
            ),
            SeedFate::Retired => println!(
                "{}: reload nats-server now: from then on only {} is accepted (a client still on the old seed is disconnected)",
                w.name,
                w.path.display()
            ),
            _ => {}
        }
    }
    Ok(exit::OK)
}
