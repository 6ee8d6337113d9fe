//! The long-running commands: `relay`, and `demo`.
//!
//! Never holds state of its own: the relay and the demo own their loops; this wires the
//! signals and prints the outcome.

use mes_events::config::Config;
use mes_events::{demo, nats, relay};

use super::args::DemoArgs;
use super::exit;
use super::signal::Shutdown;

pub async fn relay(cfg: &Config) -> anyhow::Result<u8> {
    let shutdown = Shutdown::on_signal();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        database = %mes_events::store::session::redacted(&cfg.database.url),
        nats = %nats::redact(&cfg.nats.url),
        credentials = ?cfg.nats.nkey.as_ref().or(cfg.nats.credentials.as_ref()),
        inbox_prefix = %cfg.nats.inbox_prefix(),
        streams = ?cfg.relay.streams,
        source = %cfg.profile().source,
        mode = ?cfg.events.mode,
        "mes-events relay starting"
    );
    // Named as the lease names its holder (`host:pid`), so the server's connection list tells
    // which relay process is which.
    let name = format!(
        "mes-events relay {}:{}",
        mes_events::host::name(),
        std::process::id()
    );
    let client = nats::connect(&cfg.nats, &name, true).await?;
    let js = nats::jetstream(client, &cfg.nats, cfg.relay.max_in_flight);
    relay::run(cfg, js, shutdown.token.clone()).await?;
    Ok(exit::OK)
}

pub async fn demo(cfg: &Config, args: DemoArgs) -> anyhow::Result<u8> {
    let shutdown = Shutdown::on_signal();
    let opts = demo::Options {
        duration: args.duration,
        rate: args.rate,
        keep: args.keep,
        nats_url: args.nats,
        nats_dir: args.nats_dir,
    };
    let s = demo::run(cfg, &opts, shutdown.token.clone()).await?;
    println!("{s}");
    Ok(if s.complete() {
        exit::OK
    } else {
        exit::FAILURE
    })
}
