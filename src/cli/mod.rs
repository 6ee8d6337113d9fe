//! The `mes-events` command line, binary only: arguments ([`args`]), one file per group of
//! commands, the tables they print ([`output`]), shutdown on signals ([`signal`]) and exit codes
//! ([`exit`]). Commands call the library and say what happened; `anyhow` lives here only.

mod args;
mod catalog;
mod exit;
mod operate;
mod output;
mod provision;
mod read;
mod signal;
mod write;

use std::process::ExitCode;

use clap::Parser;
use mes_events::config::{Config, LogFormat};

use args::{Cli, Command, PushCommand, RelayCommand};

/// Parses arguments, sets up logging, loads configuration, runs the command, and turns what
/// happened into an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Commands that only show something stop quietly when their reader does (`| head`), as
    // Unix tools do: SIGPIPE back to its default for them. Not for those that run, write or
    // change things (relay, push, demo, migrate, emit, replay, apply, retry, …): Rust ignores
    // SIGPIPE so that a closed socket is an error they handle, not their end.
    let shows_only = match &cli.command {
        Command::Outbox(o) => matches!(
            o,
            args::OutboxCommand::Rejected { .. }
                | args::OutboxCommand::Discarded { .. }
                | args::OutboxCommand::Status { .. }
        ),
        Command::DeadLetters(d) => matches!(d, args::DeadLetterCommand::List { .. }),
        Command::Provision(p) => matches!(
            p,
            args::ProvisionCommand::Plan { .. } | args::ProvisionCommand::Status { .. }
        ),
        Command::Catalog(_) | Command::Tail(_) | Command::Ready => true,
        _ => false,
    };
    if shows_only {
        // SAFETY: at start, before any thread; only restores the default disposition.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    // About the command line itself: no configuration needed (nor a broken one in the way).
    match cli.command {
        Command::Completions { shell } => {
            let mut text = Vec::new();
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "mes-events", &mut text);
            return print_all(&text);
        }
        Command::Manpage => {
            let mut text = Vec::new();
            let cmd = <Cli as clap::CommandFactory>::command();
            if let Err(e) = clap_mangen::Man::new(cmd).render(&mut text) {
                eprintln!("error: rendering the manual page: {e}");
                return ExitCode::from(exit::FAILURE);
            }
            return print_all(&text);
        }
        _ => {}
    }
    let catalog = cli.catalog.clone();
    let result = Config::load(cli.config.as_deref())
        .map(|mut cfg| {
            if catalog.is_some() {
                cfg.events.catalog = catalog;
            }
            cfg
        })
        .map_err(anyhow::Error::from)
        .inspect(|cfg| init_logging(cfg.log.format))
        .and_then(|cfg| {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))
                .map(|runtime| (cfg, runtime))
        })
        .and_then(|(cfg, runtime)| runtime.block_on(run(cli.command, cfg)));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit::code_for(&e))
        }
    }
}

/// Writes `text` to standard output; a reader that stops early (`| head`) is no failure.
fn print_all(text: &[u8]) -> ExitCode {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: writing to standard output: {e}");
            ExitCode::from(exit::FAILURE)
        }
    }
}

/// Log lines on standard error, filtered by `RUST_LOG` (default `info`, async-nats `warn`):
/// text with colours only for a person at a terminal (never with NO_COLOR,
/// https://no-color.org), or one JSON object per line.
fn init_logging(format: LogFormat) {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,async_nats=warn".into());
    // The NATS client's debug lines print server addresses with their passwords, and its info
    // lines (`event: connected`, `event: server error: …`) repeat what `mes_events::nats`
    // tells once, with the URL and the identity (and would show the relay's expected denial of
    // its own rights probe as a fault): never below warn for it, whatever RUST_LOG asks. Its
    // connector's lines are left out altogether: they repeat at every reconnect attempt.
    let cap = tracing_subscriber::filter::filter_fn(|m| {
        !(m.target().starts_with("async_nats::connector")
            || (m.target().starts_with("async_nats") && *m.level() > tracing::Level::WARN))
    });
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter).with(cap);
    match format {
        LogFormat::Json => registry.with(fmt.json().flatten_event(true)).init(),
        LogFormat::Text => registry
            .with(fmt.with_ansi(
                std::io::IsTerminal::is_terminal(&std::io::stderr())
                    && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
            ))
            .init(),
    }
}

async fn run(command: Command, cfg: Config) -> anyhow::Result<u8> {
    match command {
        Command::Migrate => write::migrate(&cfg).await,
        Command::Emit(args) => write::emit(&cfg, args).await,
        Command::Outbox(cmd) => write::outbox(&cfg, cmd).await,
        Command::Provision(cmd) => provision::run(&cfg, cmd).await,
        Command::DeadLetters(cmd) => read::dead_letters(&cfg, cmd).await,
        Command::Replay(args) => read::replay(&cfg, args).await,
        Command::Tail(args) => read::tail(&cfg, args).await,
        Command::Relay(args) => match args.command {
            None => operate::relay(&cfg).await,
            Some(RelayCommand::Status { json }) => operate::status(&cfg, json).await,
            Some(RelayCommand::Losses { all, json }) => operate::losses(&cfg, all, json).await,
            Some(RelayCommand::AcceptLoss { ids, reason }) => {
                operate::accept_loss(&cfg, &ids, &reason).await
            }
        },
        Command::Ready => operate::ready(&cfg).await,
        Command::Push(args) => match args.command {
            None => operate::push(&cfg, args).await,
            Some(PushCommand::Status { decl, json }) => {
                operate::push_status(&cfg, decl, json).await
            }
        },
        Command::Demo(args) => operate::demo(&cfg, args).await,
        Command::Catalog(cmd) => catalog::run(&cfg, cmd),
        Command::Completions { .. } | Command::Manpage => unreachable!("answered before"),
    }
}
