//! The PostgreSQL side's commands: `migrate`, `emit`, and `outbox` (rejected, retry, discard,
//! status).
//!
//! Never writes the outbox but through `mes_events.emit` and the store's operator statements.

use std::io::Read;

use anyhow::Context as _;
use mes_events::config::Config;
use mes_events::event::catalog::Catalog;
use mes_events::event::outbound;
use mes_events::store::migrate;
use mes_events::store::operator;
use mes_events::store::session::{self, Session};
use mes_events::store::write;

use super::args::{EmitArgs, OutboxCommand};
use super::exit::{self, Usage};
use super::output;

pub async fn migrate(cfg: &Config) -> anyhow::Result<u8> {
    // Installing into the default database is rarely what was meant: say so.
    for p in cfg
        .placeholders()
        .into_iter()
        .filter(|p| p.starts_with("database.url"))
    {
        eprintln!("warning: {p}");
    }
    let mut session = session::connect(&cfg.database.url, "mes-events migrate")
        .await
        .context("cannot connect to PostgreSQL (database.url)")?;
    let report = migrate::migrate(&mut session.client).await?;
    if report.applied.is_empty() {
        println!(
            "mes_events schema is up to date (version {})",
            report.version
        );
    } else {
        println!(
            "applied migrations {:?}; mes_events schema is at version {}",
            report.applied, report.version
        );
    }
    Ok(exit::OK)
}

pub async fn emit(cfg: &Config, args: EmitArgs) -> anyhow::Result<u8> {
    let text = read_data(&args.data)?;
    if let Some(tp) = &args.traceparent {
        write::check_traceparent(tp).map_err(|e| Usage(format!("--traceparent: {e}")))?;
    }
    // As the relay will check it, before anything is written.
    let catalog = Catalog::load(cfg.events.catalog.as_deref())?;
    outbound::validate(&catalog, &args.ty, &args.key, &text)
        .map_err(|e| Usage(format!("{e}; nothing was written")))?;
    let session = connect(cfg, "mes-events emit").await?;
    let opts = write::EmitOptions {
        occurred_at: args.time,
        traceparent: args.traceparent,
        tracestate: None,
    };
    let id = write::emit(&session.client, &args.ty, &args.key, &text, &opts)
        .await
        .context("mes_events.emit failed")?;
    println!("{id}");
    Ok(exit::OK)
}

pub async fn outbox(cfg: &Config, cmd: OutboxCommand) -> anyhow::Result<u8> {
    let mut session = connect(cfg, "mes-events outbox").await?;
    match cmd {
        OutboxCommand::Rejected { json } => {
            let rows = operator::rejected(&session.client).await?;
            output::rejected(&rows, json)?;
        }
        OutboxCommand::Retry { id, ty, data } => {
            let data = data.as_deref().map(read_data).transpose()?;
            // A new type or data is checked as the relay will check it, before the row is
            // touched.
            if ty.is_some() || data.is_some() {
                if let Some((was, key, had)) = operator::type_key_data(&session.client, id).await? {
                    let catalog = Catalog::load(cfg.events.catalog.as_deref())?;
                    let (t, d) = (
                        ty.as_deref().unwrap_or(&was),
                        data.as_deref().unwrap_or(&had),
                    );
                    outbound::validate(&catalog, t, &key, d).map_err(|e| {
                        Usage(format!("outbox row {id}: {e}; the row was left as it is"))
                    })?;
                }
            }
            operator::retry(&mut session.client, id, ty.as_deref(), data.as_deref()).await?;
            match &ty {
                Some(t) => println!(
                    "outbox row {id} queued again as {t}, in its place in its key's order; the relay picks it up now"
                ),
                None => println!("outbox row {id} queued again; the relay picks it up now"),
            }
        }
        OutboxCommand::Discarded { json } => {
            let rows = operator::discarded(&session.client).await?;
            output::discarded(&rows, json)?;
        }
        OutboxCommand::Discard { ids, reason } => {
            let by = format!("{}@{}", who(), mes_events::host::name());
            // In order; the first that cannot be discarded stops the rest (and says which).
            for id in ids {
                operator::discard(&mut session.client, id, &by, &reason).await?;
                println!("outbox row {id} discarded by {by}; its key's later events go out now");
            }
        }
        OutboxCommand::Status { json } => {
            let c = operator::counts(&session.client).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&c)?);
            } else {
                println!(
                    "pending {}  published {}  rejected {}  discarded {}",
                    c.pending, c.published, c.rejected, c.discarded
                );
            }
        }
    }
    Ok(exit::OK)
}

/// Who runs this, for the record of a discard: the login name, else the user id.
pub(super) fn who() -> String {
    for var in ["USER", "LOGNAME"] {
        if let Ok(u) = std::env::var(var) {
            if !u.is_empty() {
                return u;
            }
        }
    }
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next().map(|u| format!("uid {u}")))
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Reads `--data`: inline JSON, `@FILE`, or `@-` (standard input). Not JSON is a usage error
/// naming where it came from.
fn read_data(arg: &str) -> anyhow::Result<String> {
    let (text, origin) = match arg.strip_prefix('@') {
        Some("-") => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading --data @- from standard input")?;
            (s, "standard input".to_owned())
        }
        Some(path) => (
            std::fs::read_to_string(path)
                .map_err(|e| Usage(format!("cannot read --data file {path}: {e}")))?,
            path.to_owned(),
        ),
        None => (arg.to_owned(), "--data".to_owned()),
    };
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(_) => Ok(text),
        Err(e) => Err(Usage(format!("{origin} is not valid JSON: {e}")).into()),
    }
}

/// A session on a database whose schema is current.
pub(super) async fn connect(cfg: &Config, what: &str) -> anyhow::Result<Session> {
    let session = session::connect(&cfg.database.url, what)
        .await
        .context("cannot connect to PostgreSQL (database.url)")?;
    migrate::check(&session.client).await?;
    Ok(session)
}
