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

use cli::{Cli, Command, DeadLetterCommand, EmitArgs, OutboxCommand, ProvisionCommand, ReplayArgs};

/// The relay allocates a few short-lived buffers per event (row, headers, payload, ack); glibc's
/// malloc spent about 40% of the relay's CPU on them, mimalloc a quarter of that.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        if let Some(outbox::ResolveError::NotFound(_) | outbox::ResolveError::NotRejected(_)) =
            cause.downcast_ref::<outbox::ResolveError>()
        {
            return exit::USAGE;
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
        Command::Outbox(cmd) => outbox_command(&cfg, cmd).await,
        Command::Provision(cmd) => provision_command(&cfg, cmd).await,
        Command::DeadLetters(cmd) => dead_letters(&cfg, cmd).await,
        Command::Replay(args) => replay(&cfg, args).await,
        Command::Tail(args) => {
            use mes_events::tail::{self, Source};
            let shutdown = CancellationToken::new();
            tokio::spawn(cancel_on_signal(shutdown.clone()));
            let client = nats::connect(&cfg.nats, "mes-events tail", false).await?;
            let js = nats::jetstream(client.clone(), &cfg.nats, 64);
            let source = match (args.subject, args.consumer) {
                (_, Some(name)) => Source::Consumer {
                    stream: args.stream,
                    name,
                },
                (Some(subject), None) => Source::Subject(subject),
                (None, None) => unreachable!("clap requires one"),
            };
            tail::run(
                &client,
                &js,
                &source,
                args.json,
                args.count,
                std::io::stdout().lock(),
                shutdown,
            )
            .await?;
            Ok(exit::OK)
        }
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
                nats_dir: args.nats_dir,
            };
            let s = demo::run(&cfg, &opts, shutdown).await?;
            println!("{s}");
            Ok(if s.complete() {
                exit::OK
            } else {
                exit::FAILURE
            })
        }
    }
}

/// Reads `--data`: inline JSON, `@FILE`, or `@-` (standard input); `Err` names the origin.
fn read_data(arg: &str) -> anyhow::Result<Result<String, String>> {
    let (text, origin) = match arg.strip_prefix('@') {
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
        None => (arg.to_owned(), "--data".to_owned()),
    };
    Ok(match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(_) => Ok(text),
        Err(e) => Err(format!("{origin} is not valid JSON: {e}")),
    })
}

async fn connect(cfg: &Config, what: &str) -> anyhow::Result<pg::Session> {
    let session = pg::connect(&cfg.database.url, what)
        .await
        .context("cannot connect to PostgreSQL (database.url)")?;
    migrate::check(&session.client).await?;
    Ok(session)
}

async fn emit(cfg: &Config, args: EmitArgs) -> anyhow::Result<u8> {
    let text = match read_data(&args.data)? {
        Ok(t) => t,
        Err(msg) => {
            eprintln!("error: {msg}");
            return Ok(exit::USAGE);
        }
    };
    let session = connect(cfg, "mes-events emit").await?;
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

async fn outbox_command(cfg: &Config, cmd: OutboxCommand) -> anyhow::Result<u8> {
    let mut session = connect(cfg, "mes-events outbox").await?;
    match cmd {
        OutboxCommand::Rejected { json } => {
            let rows = outbox::rejected(&session.client).await?;
            if json {
                for r in &rows {
                    println!("{}", serde_json::to_string(r)?);
                }
            } else if rows.is_empty() {
                println!("no rejected rows");
            } else {
                println!(
                    "{:>10}  {:<24}  {:<12}  {:>7}  reason",
                    "id", "key", "kind", "waiting"
                );
                for r in &rows {
                    println!(
                        "{:>10}  {:<24}  {:<12}  {:>7}  {}",
                        r.id, r.key, r.kind, r.waiting, r.reason
                    );
                    println!("{:>10}  type {}, recorded {}", "", r.ty, r.recorded_at);
                }
            }
        }
        OutboxCommand::Retry { id, data } => {
            let data = match data.as_deref().map(read_data).transpose()? {
                Some(Err(msg)) => {
                    eprintln!("error: {msg}");
                    return Ok(exit::USAGE);
                }
                Some(Ok(text)) => Some(text),
                None => None,
            };
            outbox::retry(&mut session.client, id, data.as_deref()).await?;
            println!("outbox row {id} queued again; the relay picks it up now");
        }
        OutboxCommand::Discard { id, reason } => {
            let by = format!(
                "{}@{}",
                std::env::var("USER").unwrap_or_else(|_| "unknown".into()),
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_owned())
                    .unwrap_or_else(|_| "unknown".into())
            );
            outbox::discard(&mut session.client, id, &by, &reason).await?;
            println!("outbox row {id} discarded by {by}; its key's later events go out now");
        }
        OutboxCommand::Status => {
            let c = outbox::counts(&session.client).await?;
            println!(
                "pending {}  published {}  rejected {}  discarded {}",
                c.pending, c.published, c.rejected, c.discarded
            );
        }
    }
    Ok(exit::OK)
}

async fn provision_command(cfg: &Config, cmd: ProvisionCommand) -> anyhow::Result<u8> {
    use mes_events::provision::{self, Options};
    let dir = match &cmd {
        ProvisionCommand::Plan { decl, .. }
        | ProvisionCommand::Apply { decl, .. }
        | ProvisionCommand::Status { decl, .. }
        | ProvisionCommand::Credentials { decl, .. } => decl.dir.clone(),
    };
    // Validate everything before any call to a server.
    let decl = match provision::load_dir(&dir) {
        Ok(d) => d,
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            eprintln!(
                "{} problem(s) in the declaration under {}; nothing was sent to NATS",
                errors.len(),
                dir.display()
            );
            return Ok(exit::USAGE);
        }
    };
    if let ProvisionCommand::Credentials { out, rotate, .. } = &cmd {
        use provision::auth::SeedFate;
        let written = match provision::auth::write(&decl, out, rotate.as_deref()) {
            Ok(w) => w,
            Err(
                e @ (provision::auth::AuthError::SeedExposed { .. }
                | provision::auth::AuthError::UnknownIdentity { .. }
                | provision::auth::AuthError::BadSeed { .. }),
            ) => {
                eprintln!("error: {e}");
                eprintln!("nothing was written");
                return Ok(exit::USAGE);
            }
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
        println!("include auth.conf in the nats-server configuration; give each system its .nk seed and tell it its inbox prefix");
        if written.iter().any(|w| w.fate == SeedFate::Rotated) {
            println!("reload nats-server now (nats-server --signal reload, or SIGHUP): until then the old seed is still accepted and the new one is not");
        }
        return Ok(exit::OK);
    }
    let client = nats::connect(&cfg.nats, "mes-events provision", false).await?;
    let js = nats::jetstream(client, &cfg.nats, 256);
    match cmd {
        ProvisionCommand::Plan { prune, json, .. } => {
            let plan = provision::plan(
                &js,
                &decl,
                Options {
                    prune,
                    allow_recreate: false,
                },
            )
            .await?;
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
            match provision::apply(
                &js,
                &decl,
                Options {
                    prune,
                    allow_recreate,
                },
            )
            .await
            {
                Ok(plan) => {
                    println!("{plan}");
                    Ok(exit::OK)
                }
                Err(provision::ProvisionError::Refused(why)) => {
                    for w in &why {
                        eprintln!("refused: {w}");
                    }
                    Ok(exit::REFUSED)
                }
                Err(e) => Err(e.into()),
            }
        }
        ProvisionCommand::Status { json, .. } => {
            let rows = provision::status(&js, &decl).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:<16} {:<12} {:<22} {:>9} {:>8} {:>8} {:>6}  {:<25} stream first..last",
                    "system",
                    "stream",
                    "consumer",
                    "pending",
                    "ack-pend",
                    "redeliv",
                    "paused",
                    "last active"
                );
                for r in rows {
                    println!(
                        "{:<16} {:<12} {:<22} {:>9} {:>8} {:>8} {:>6}  {:<25} {}..{}{}",
                        r.system,
                        r.stream,
                        r.consumer,
                        r.pending,
                        r.ack_pending,
                        r.redelivered,
                        if r.paused { "yes" } else { "no" },
                        r.last_active.as_deref().unwrap_or("-"),
                        r.stream_first_seq,
                        r.stream_last_seq,
                        if r.exists {
                            ""
                        } else {
                            "  (missing: run provision apply)"
                        }
                    );
                }
            }
            Ok(exit::OK)
        }
        ProvisionCommand::Credentials { .. } => unreachable!("handled above"),
    }
}

async fn dead_letters(cfg: &Config, cmd: DeadLetterCommand) -> anyhow::Result<u8> {
    use mes_events::deadletter;
    let client = nats::connect(&cfg.nats, "mes-events dead-letters", false).await?;
    let js = nats::jetstream(client, &cfg.nats, 64);
    match cmd {
        DeadLetterCommand::List { stream, json } => {
            let list = deadletter::list(&js, &stream).await?;
            if json {
                for d in &list {
                    println!("{}", serde_json::to_string(d)?);
                }
            } else if list.is_empty() {
                println!("no dead letters");
            } else {
                println!(
                    "{:>6}  {:<15} {:<12} {:<20} {:>10} {:>10}  event",
                    "id", "reason", "stream", "consumer", "stream-seq", "deliveries"
                );
                for d in &list {
                    let event = match (&d.event_type, &d.event_subject, &d.problem) {
                        (Some(t), s, _) => format!("{t} {}", s.as_deref().unwrap_or("")),
                        (None, _, Some(p)) => format!("({p})"),
                        _ => String::new(),
                    };
                    println!(
                        "{:>6}  {:<15} {:<12} {:<20} {:>10} {:>10}  {event}",
                        d.id, d.reason, d.stream, d.consumer, d.stream_seq, d.deliveries
                    );
                }
            }
        }
        DeadLetterCommand::Resend { id, stream } => {
            let subject = deadletter::resend(&js, &stream, id).await?;
            println!("dead letter {id} sent back on {subject}");
        }
    }
    Ok(exit::OK)
}

async fn replay(cfg: &Config, args: ReplayArgs) -> anyhow::Result<u8> {
    use mes_events::replay as r;
    let client = nats::connect(&cfg.nats, "mes-events replay", false).await?;
    let js = nats::jetstream(client, &cfg.nats, 64);
    let plan = r::plan(&js, &args.stream, &args.consumer, args.from).await?;
    println!(
        "consumer {}/{}: now acked up to stream sequence {} with {} pending.\nreplay from {}: {} event(s) will be delivered to it again.",
        plan.stream, plan.consumer, plan.acked_up_to, plan.pending_now, plan.from, plan.redeliver
    );
    if !args.yes {
        use std::io::IsTerminal;
        if !std::io::stdin().is_terminal() {
            eprintln!("error: not confirmed: pass --yes to replay without a prompt");
            return Ok(exit::USAGE);
        }
        eprint!("proceed? [y/N] ");
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            println!("nothing changed");
            return Ok(exit::OK);
        }
    }
    r::apply(&js, &plan).await?;
    println!(
        "consumer {}/{} now delivers from {}",
        plan.stream, plan.consumer, plan.from
    );
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
