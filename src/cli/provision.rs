//! `provision plan | apply | status | credentials`.
//!
//! Never calls a server before the whole declaration is valid, and never prints a seed.

use mes_events::config::Config;
use mes_events::nats;
use mes_events::provision::auth::{self, AuthError, SeedFate};
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
    if let ProvisionCommand::Credentials { out, rotate, .. } = &cmd {
        return credentials(&decl, out, rotate.as_deref());
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
            if json {
                println!("{}", serde_json::to_string_pretty(&plan)?);
            } else {
                println!("{plan}");
            }
            Ok(if plan.pending() {
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
            match provision::apply(&js, &decl, options).await {
                Ok(plan) => {
                    println!("{plan}");
                    Ok(exit::OK)
                }
                Err(ProvisionError::Refused { refused, applied }) => {
                    Err(Refused { refused, applied }.into())
                }
                Err(e) => Err(e.into()),
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

fn credentials(
    decl: &Declaration,
    out: &std::path::Path,
    rotate: Option<&str>,
) -> anyhow::Result<u8> {
    let written = match auth::write(decl, out, rotate) {
        Ok(w) => w,
        Err(
            e @ (AuthError::SeedExposed { .. }
            | AuthError::UnknownIdentity { .. }
            | AuthError::BadSeed { .. }),
        ) => return Err(Usage(format!("{e}\nnothing was written")).into()),
        Err(e) => return Err(e.into()),
    };
    println!("wrote {}", out.join("auth.conf").display());
    println!("  {:<20} {:<28} seed", "identity", "inbox prefix");
    for w in &written {
        let fate = match w.fate {
            SeedFate::Kept => "kept",
            SeedFate::Created => "new",
            SeedFate::Rotated => "ROTATED",
        };
        println!(
            "  {:<20} {:<28} {} ({fate})",
            w.name,
            w.inbox_prefix,
            w.path.display()
        );
    }
    println!("include auth.conf in the nats-server configuration; give each system its .nk seed, tell it its inbox prefix and to bind to its consumer by name (it may not look it up)");
    if written.iter().any(|w| w.fate == SeedFate::Rotated) {
        println!("reload nats-server now (nats-server --signal reload, or SIGHUP): until then the old seed is still accepted and the new one is not");
    }
    Ok(exit::OK)
}
