//! An external system's consumer in Rust, with the mes-events consumer library.
//!
//! ```text
//! MES_EVENTS_NATS__URL=nats://mes-nats:4222 MES_EVENTS_NATS__NKEY=erp.nk \
//!   cargo run --example consumer -- MES_EVENTS erp
//! ```
//!
//! Each key's events are handled in order, several keys at once; a transient failure is
//! retried after a delay while that key waits; Ctrl-C finishes what is running and acks it.
//! (A system connecting with its generated credentials must also use its inbox prefix,
//! `_INBOX_<system>`: `mes_events::nats::connect` takes it from the seed file's name.)

use std::time::Duration;

use cloudevents::AttributesReader;
use mes_events::config::Config;
use mes_events::consume::{self, Delivery, Options, Outcome};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let stream = args.next().unwrap_or_else(|| "MES_EVENTS".into());
    let consumer = args.next().unwrap_or_else(|| "erp".into());
    let cfg = Config::load(None)?;

    // Connects with the seed in `nats.nkey` and the inbox prefix of the identity it is named
    // after (`erp.nk` → `_INBOX_erp`), the only place its permissions let replies arrive.
    let client =
        mes_events::nats::connect(&cfg.nats, &format!("{consumer} consumer"), false).await?;
    let js = async_nats::jetstream::new(client);

    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            let _ = tokio::signal::ctrl_c().await;
            shutdown.cancel();
        }
    });
    let stats = consume::run(
        &js,
        &stream,
        &consumer,
        Options::default(),
        handle,
        shutdown,
    )
    .await?;
    eprintln!("stopped: {stats:?}");
    Ok(())
}

/// Your integration goes here.
async fn handle(d: Delivery) -> Outcome {
    println!(
        "{} {} key={} seq={} (delivery {})",
        d.event.time().map(|t| t.to_rfc3339()).unwrap_or_default(),
        d.event.ty(),
        d.key,
        d.stream_seq,
        d.delivered
    );
    match post_somewhere(&d).await {
        Ok(()) => Outcome::Done,
        Err(Failure::Transient) => Outcome::Retry(Duration::from_secs(5)),
        Err(Failure::Permanent(why)) => Outcome::Poison(why),
    }
}

enum Failure {
    #[allow(dead_code)]
    Transient,
    #[allow(dead_code)]
    Permanent(String),
}

async fn post_somewhere(_d: &Delivery) -> Result<(), Failure> {
    Ok(())
}
