//! The flags and subcommands of `mes-events` (parsing only).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Transactional outbox in PostgreSQL → CloudEvents on NATS JetStream, for MES integration.
///
/// Exit codes: 0 success; 1 runtime failure; 2 usage or configuration error; 3 not set up
/// (schema not migrated, stream missing: the message says what to run).
/// `mes-events --version`: the release and the commit it was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("MES_BUILD_COMMIT"),
    ")"
);

#[derive(Debug, Parser)]
#[command(name = "mes-events", version = VERSION, about, long_about = None)]
pub struct Cli {
    /// Configuration file (default: ./mes-events.toml if present). Environment variables
    /// MES_EVENTS_* (e.g. MES_EVENTS_RELAY__BATCH_SIZE), DATABASE_URL and NATS_URL override it.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// A site catalog folder extending the shipped event catalog (overrides events.catalog,
    /// MES_EVENTS_EVENTS__CATALOG).
    #[arg(long, global = true, value_name = "DIR")]
    pub catalog: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or upgrade the mes_events schema (idempotent; safe to run concurrently).
    Migrate,
    /// Write one event into the outbox, as the MES would with mes_events.emit(...).
    Emit(EmitArgs),
    /// Publish committed outbox events to JetStream until SIGTERM or Ctrl-C; `relay status`
    /// shows the relays and whether all is well.
    Relay(RelayArgs),
    /// Ask the relay's /readyz (at http.address): exit 0 when it is ready, 1 when not (for
    /// health checks in images without curl).
    Ready,
    /// Inspect and resolve outbox rows the relay could not publish.
    #[command(subcommand)]
    Outbox(OutboxCommand),
    /// Declare streams, consumers and permissions from files under nats/ and make a server match.
    #[command(subcommand)]
    Provision(ProvisionCommand),
    /// Events consumers gave up on (max deliveries, terminated): list, or send one back.
    #[command(subcommand)]
    DeadLetters(DeadLetterCommand),
    /// Watch decoded events live: from a subject wildcard, or from a consumer's position (its
    /// acks and position are left alone).
    Tail(TailArgs),
    /// Move a system's consumer back (or forward) to a time or stream sequence.
    Replay(ReplayArgs),
    /// The event catalog: list, show a type, check a site catalog folder, compare schemas, its
    /// AsyncAPI document.
    #[command(subcommand)]
    Catalog(CatalogCommand),
    /// Deliver the events of every system with a `[push]` table to its HTTP endpoint, signed
    /// (Standard Webhooks), in order per key, until SIGTERM or Ctrl-C.
    Push(PushArgs),
    /// Run the whole pipeline on this machine: own database, own nats-server, relay, a plant
    /// simulator and a consumer. Removes what it created when it ends (Ctrl-C or --duration).
    Demo(DemoArgs),
    /// Print a completion script for a shell, e.g. `mes-events completions bash >
    /// /etc/bash_completion.d/mes-events`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `mes-events manpage > /usr/share/man/man1/mes-events.1`.
    Manpage,
}

#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// Every type of the active catalog: version, key field, stream, subject.
    List {
        /// One JSON array instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// One type: its schema, key, stream, subject and wildcard recipes.
    Show {
        /// The event type, e.g. io.mesevents.mes.processorder.statuschanged.v1
        #[arg(value_name = "TYPE")]
        ty: String,
    },
    /// Check a site catalog folder as the relay will (exit 0 valid, 2 invalid).
    Check {
        #[arg(value_name = "DIR")]
        dir: std::path::PathBuf,
    },
    /// The AsyncAPI 3 document of the active catalog (standalone: every schema inside), on
    /// standard output.
    Asyncapi,
    /// Compare two versions of a schema: exit 0 compatible (a new minor will do), 4 breaking
    /// (a new major is needed), 2 when a file is not JSON.
    Diff {
        #[arg(value_name = "OLD")]
        old: std::path::PathBuf,
        #[arg(value_name = "NEW")]
        new: std::path::PathBuf,
    },
}

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct PushArgs {
    #[command(subcommand)]
    pub command: Option<PushCommand>,
    #[command(flatten)]
    pub decl: DeclArgs,
    /// Folder of the identities' seeds (`provision credentials --out`): each system's consumer
    /// is read with its own seed; default: push.credentials (MES_EVENTS_PUSH__CREDENTIALS).
    #[arg(long, value_name = "DIR")]
    pub credentials: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum PushCommand {
    /// Per pushed system: events waiting, in flight or in retry, whether an instance delivers
    /// (and since when), the last delivery and ack, dead letters and why the last one failed.
    /// Exit 0 when all is well, 1 when not (a consumer missing, or events waiting with nobody
    /// delivering).
    Status {
        #[command(flatten)]
        decl: DeclArgs,
        /// One JSON array instead of the table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RelayArgs {
    #[command(subcommand)]
    pub command: Option<RelayCommand>,
}

#[derive(Debug, Subcommand)]
pub enum RelayCommand {
    /// Which relay is active (holder, epoch, since when) and which stand by, the backlog, the
    /// last publish, each stream's watermark against its last sequence. Exit 0 when healthy,
    /// 1 when not (the problems are listed), so scripts and health checks can use it.
    Status {
        /// One JSON object instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// What streams lost that the server had acknowledged (a power cut before it synced): how
    /// much was restored, and what could not be (ids, keys, times). By default the losses not
    /// accepted yet that left events unrestored; exit 1 when there is one.
    Losses {
        /// Every loss recorded, restored ones and accepted ones too.
        #[arg(long)]
        all: bool,
        /// One JSON array instead of the listing.
        #[arg(long)]
        json: bool,
    },
    /// Record that the systems reading a stream know of a loss's unrestorable events: it stops
    /// failing `relay status` and /readyz.
    AcceptLoss {
        /// The loss's id (from `relay losses`).
        #[arg(required = true, num_args = 1..)]
        ids: Vec<i64>,
        /// What was done about it (recorded with who accepted it and when).
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// How long the plant simulator runs, e.g. 30s, 5m.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub duration: std::time::Duration,
    /// Business events per second (a process variable rides along with each).
    #[arg(long, default_value_t = 50)]
    pub rate: u32,
    /// Keep the demo database afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Use this NATS server instead of starting one from PATH.
    #[arg(long, value_name = "URL")]
    pub nats: Option<String>,
    /// The declaration to provision; default: provision.dir (MES_EVENTS_PROVISION__DIR),
    /// itself `nats` by default.
    #[arg(long, value_name = "DIR")]
    pub nats_dir: Option<std::path::PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct EmitArgs {
    /// Event type, e.g. io.mesevents.mes.processorder.statuschanged.v1
    #[arg(long = "type", value_name = "TYPE")]
    pub ty: String,
    /// Business key (order id, lot id, …): events of one key stay in order.
    #[arg(long)]
    pub key: String,
    /// Event data: inline JSON, @FILE to read a file, or @- for standard input.
    #[arg(long)]
    pub data: String,
    /// When it happened (RFC 3339 with a time zone, e.g. 2026-11-30T10:00:00Z or
    /// 2026-11-30T11:00:00+01:00); default: the transaction's time.
    #[arg(long, value_parser = mes_events::read::replay::parse_time)]
    pub time: Option<chrono::DateTime<chrono::Utc>>,
    /// W3C traceparent to carry along.
    #[arg(long)]
    pub traceparent: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// List rejected rows (each holds its key's later events back), oldest first, with data.
    Rejected {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List discarded rows: who discarded each, when and why, with its data.
    Discarded {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Queue a rejected row again, after its type, its data or the catalog was fixed; it keeps
    /// its place in its key's order.
    Retry {
        /// Outbox row id (from `mes-events outbox rejected`).
        id: i64,
        /// Replace the row's event type (a mistyped one), e.g.
        /// io.mesevents.mes.processorder.statuschanged.v1
        #[arg(long = "type", value_name = "TYPE")]
        ty: Option<String>,
        /// Replace the row's data: inline JSON, @FILE, or @- for standard input.
        #[arg(long)]
        data: Option<String>,
    },
    /// Give up on a rejected row on purpose: its key's later events go out without it.
    Discard {
        /// Outbox row ids (from `mes-events outbox rejected`).
        #[arg(required = true, num_args = 1..)]
        ids: Vec<i64>,
        /// Why (recorded with who discarded it and when).
        #[arg(long)]
        reason: String,
    },
    /// Counts of pending, published, rejected and discarded rows.
    Status {
        /// One JSON object instead of the line.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct DeclArgs {
    /// Folder of the declaration (*.toml); default: provision.dir (MES_EVENTS_PROVISION__DIR),
    /// itself `nats` by default.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum ProvisionCommand {
    /// Show what apply would change. Exit 0: in sync; 4: changes pending; 2: invalid declaration.
    Plan {
        #[command(flatten)]
        decl: DeclArgs,
        /// Also plan deleting durable consumers that no file declares.
        #[arg(long)]
        prune: bool,
        /// One JSON object instead of the plan.
        #[arg(long)]
        json: bool,
    },
    /// Create and update what the declaration says; safe on every deploy. Exit 5: a change was
    /// refused (it needs recreation); everything else was applied.
    Apply {
        #[command(flatten)]
        decl: DeclArgs,
        /// Recreate consumers whose unchangeable fields differ (they lose their position).
        #[arg(long)]
        allow_recreate: bool,
        /// Delete durable consumers on declared streams that no file declares.
        #[arg(long)]
        prune: bool,
    },
    /// Per consumer: pending, ack pending, redelivered, last active, paused; stream sequences.
    Status {
        #[command(flatten)]
        decl: DeclArgs,
        /// One JSON object instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Write NATS server authorization (auth.conf) and NKey seeds for admin, relay and each system.
    Credentials {
        #[command(flatten)]
        decl: DeclArgs,
        /// Output folder (keep it out of git); existing seeds are kept.
        #[arg(long, value_name = "DIR")]
        out: std::path::PathBuf,
        /// Give this identity (admin, relay or a system) a new seed; its current one is kept
        /// as NAME.previous.nk and stays accepted alongside, until --retire NAME.
        #[arg(long, value_name = "NAME", conflicts_with = "retire")]
        rotate: Option<String>,
        /// End a rotation: delete NAME.previous.nk; after the next reload only the new seed is
        /// accepted.
        #[arg(long, value_name = "NAME")]
        retire: Option<String>,
        /// Also write TLS certificates for a plant without a PKI: a CA, nats-server's
        /// certificate and one per identity in DIR/tls/, and DIR/tls.conf for nats-server to
        /// include (clients verified against that CA). Existing files are kept.
        #[arg(long)]
        tls: bool,
        /// A name clients reach nats-server by (host name or IP address), for its
        /// certificate; several separated by commas or the flag repeated.
        #[arg(
            long = "tls-name",
            value_name = "NAME",
            value_delimiter = ',',
            requires = "tls"
        )]
        tls_names: Vec<String>,
        /// Where nats-server sees DIR (tls.conf names the files under it); default DIR.
        #[arg(long, value_name = "PATH", requires = "tls")]
        tls_server_dir: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeadLetterCommand {
    /// Every dead letter with its consumer, stream sequence, deliveries and event.
    List {
        /// The dead-letter stream.
        #[arg(long, default_value = "MES_DEAD_LETTERS")]
        stream: String,
        /// One JSON array instead of the listing.
        #[arg(long)]
        json: bool,
    },
    /// Send one back to its consumer alone (after the cause is fixed); it leaves the list.
    Resend {
        /// The dead letter's id (from `list`).
        id: u64,
        #[arg(long, default_value = "MES_DEAD_LETTERS")]
        stream: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The durable consumer (usually the system's name).
    pub consumer: String,
    /// Its stream.
    #[arg(long, default_value = "MES_EVENTS")]
    pub stream: String,
    /// An RFC 3339 time (2026-11-23T08:00:00Z) or a stream sequence.
    #[arg(long)]
    pub from: mes_events::read::replay::From,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
    /// Allow a start beyond the stream's last sequence or in the future (the consumer then
    /// skips every event until there).
    #[arg(long)]
    pub allow_skip: bool,
}

#[derive(Debug, clap::Args)]
pub struct TailArgs {
    /// A subject wildcard, e.g. 'mes.bsl.>' (live only).
    #[arg(conflicts_with = "consumer", required_unless_present = "consumer")]
    pub subject: Option<String>,
    /// Show what this durable consumer is about to receive (from its ack floor on).
    #[arg(long)]
    pub consumer: Option<String>,
    /// The consumer's stream.
    #[arg(long, default_value = "MES_EVENTS")]
    pub stream: String,
    /// One JSON event per line instead of a human-readable line.
    #[arg(long)]
    pub json: bool,
    /// Stop after this many events.
    #[arg(long)]
    pub count: Option<usize>,
    /// With --consumer: stop once every event waiting for it when the tail started was shown
    /// (at once when none waits), instead of following new ones.
    #[arg(long, requires = "consumer")]
    pub until_caught_up: bool,
}
