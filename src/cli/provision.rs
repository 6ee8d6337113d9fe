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
    // Which folder was read, on standard error (standard output may be JSON).
    eprintln!("declaration: {}", dir.display());
    // Validate everything before any call to a server.
    let decl =
        provision::load_dir(&dir).map_err(|errors| Usage(Invalid { dir, errors }.to_string()))?;
    if let ProvisionCommand::Credentials {
        out,
        rotate,
        retire,
        ..
    } = &cmd
    {
        let change = match (rotate, retire) {
            (Some(n), _) => Some(auth::Change::Rotate(n)),
            (None, Some(n)) => Some(auth::Change::Retire(n)),
            (None, None) => None,
        };
        return credentials(&decl, out, change);
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
            let streams = provision::apply(&js, &decl, options)
                .await
                .map(|p| p.to_string());
            print_or_keep(streams, &mut refused, &mut applied)?;
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

fn credentials(
    decl: &Declaration,
    out: &std::path::Path,
    change: Option<auth::Change<'_>>,
) -> anyhow::Result<u8> {
    // Identities new to an auth.conf a server may already run with.
    let had_auth = out.join("auth.conf").is_file();
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
