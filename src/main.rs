//! The `mes-events` binary: parses arguments, sets up tracing, loads configuration and calls the
//! library. Nothing else lives here.

mod cli;

use std::io::Read;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use mes_events::config::Config;
use mes_events::{demo, exit, migrate, nats, outbox, pg, relay};
use tokio_util::sync::CancellationToken;

use cli::{Cli, Command, EmitArgs};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,async_nats=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cfg = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return exit::code(exit::USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return exit::code(exit::FAILURE);
        }
    };
    match runtime.block_on(run(cli.command, cfg)) {
        Ok(code) => exit::code(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            exit::code(classify(&e))
        }
    }
}

/// Setup errors (do X first) get their own exit code; everything else is a runtime failure.
fn classify(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if let Some(r) = cause.downcast_ref::<relay::RelayError>() {
            if r.is_setup() {
                return exit::NOT_READY;
            }
        }
        if let Some(migrate::MigrateError::Behind { .. } | migrate::MigrateError::Newer { .. }) =
            cause.downcast_ref::<migrate::MigrateError>()
        {
            return exit::NOT_READY;
        }
    }
    exit::FAILURE
}

async fn run(command: Command, cfg: Config) -> anyhow::Result<u8> {
    match command {
        Command::Migrate => {
            let mut session = pg::connect(&cfg.database.url, "mes-events migrate")
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
        Command::Emit(args) => emit(&cfg, args).await,
        Command::Relay => {
            let shutdown = CancellationToken::new();
            tokio::spawn(cancel_on_signal(shutdown.clone()));
            let client = nats::connect(&cfg.nats, "mes-events relay", true).await?;
            let js = nats::jetstream(client, &cfg.nats, cfg.relay.max_in_flight);
            relay::run(&cfg, js, shutdown).await?;
            Ok(exit::OK)
        }
        Command::Demo(args) => {
            let shutdown = CancellationToken::new();
            tokio::spawn(cancel_on_signal(shutdown.clone()));
            let opts = demo::Options {
                duration: args.duration,
                rate: args.rate,
                keep: args.keep,
                nats_url: args.nats,
            };
            let s = demo::run(&cfg, &opts, shutdown).await?;
            println!(
                "summary: emitted {}, published {}, received {}, out of order {}, duplicates {}: {}",
                s.emitted,
                s.published,
                s.received,
                s.out_of_order,
                s.duplicates,
                if s.complete() { "every event arrived once, in order" } else { "INCOMPLETE" }
            );
            Ok(if s.complete() {
                exit::OK
            } else {
                exit::FAILURE
            })
        }
    }
}

async fn emit(cfg: &Config, args: EmitArgs) -> anyhow::Result<u8> {
    let (text, origin) = match args.data.strip_prefix('@') {
        Some("-") => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading --data @- from standard input")?;
            (s, "standard input".to_owned())
        }
        Some(path) => (
            std::fs::read_to_string(path).with_context(|| format!("reading --data file {path}"))?,
            path.to_owned(),
        ),
        None => (args.data.clone(), "--data".to_owned()),
    };
    if let Err(e) = serde_json::from_str::<serde_json::Value>(&text) {
        eprintln!("error: {origin} is not valid JSON: {e}");
        return Ok(exit::USAGE);
    }
    let session = pg::connect(&cfg.database.url, "mes-events emit")
        .await
        .context("cannot connect to PostgreSQL (database.url)")?;
    migrate::check(&session.client).await?;
    let opts = outbox::EmitOptions {
        occurred_at: args.time,
        traceparent: args.traceparent,
        tracestate: None,
    };
    let id = outbox::emit(&session.client, &args.ty, &args.key, &text, &opts)
        .await
        .context("mes_events.emit failed")?;
    println!("{id}");
    Ok(exit::OK)
}

/// Cancels `token` on the first SIGTERM or Ctrl-C.
async fn cancel_on_signal(token: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("signal received; stopping");
    token.cancel();
}
