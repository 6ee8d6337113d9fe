//! Relay: moves committed outbox rows into JetStream, each once, in order per key.
//!
//! How it holds, whatever crashes:
//! - **Leadership**: one relay is active, holding an advisory lock on its PostgreSQL session;
//!   others stand by and retry. Becoming active bumps the lease epoch; every statement that marks
//!   rows is fenced by that epoch, so a relay that lost its session (and its lock) without
//!   noticing cannot mark anything once a successor has started. The server ends the active
//!   relay's session after `relay.lease_timeout` of silence, so a frozen or cut-off relay
//!   hands the lead on within that; it publishes only while its lease was confirmed within
//!   half of it (see [`leader`]).
//! - **Stream fence**: every publish carries `Nats-Expected-Last-Sequence`. The relay predicts
//!   each stream's tail, so the expectations of a pipeline are consecutive: if message k fails,
//!   every later one fails too and nothing lands out of order; a second relay publishing at the
//!   same time cannot land anything without having seen everything before it.
//! - **Marking**: a row is marked with its stream sequence only from a PubAck or from the stream
//!   itself; never before.
//! - **Reconciliation** (on activation, after any failure, after a reconnect): read each stream
//!   from the recorded watermark to its tail, map every message back to its outbox row through
//!   `Nats-Msg-Id`, and mark those rows. No duplicate, whatever the outage length or the
//!   duplicate window.
//! - **Durability**: a PubAck is not a disk write. A published row is kept, data included, for
//!   the durability horizon after it; a stream found holding less than was recorded gets what
//!   it lost back, in order, with the original ids, before anything newer.
//! - **No cursor skips**: rows are read by a pending marker, not an id cursor alone. The relay
//!   reads above the highest id it sent, and checks in the same snapshot whether a pending row at
//!   or below it became visible since its previous read (a row that committed late, or one a
//!   retry or discard released): then it finishes what is in flight and reads again from the
//!   start. (Same-key writers queue on the key's lock, so a later row of a late row's key cannot
//!   have been read before.)
//!
//! How it stays fast: while one batch is published, the next is already being read (sent ahead
//! on the main session, from the current batch's last row and snapshot), and acks are recorded
//! a batch at a time on a second session, without waiting for the answer. A batch read ahead
//! cannot see rejections recorded while the batch before it was published, so it holds their
//! keys itself.
//!
//! One type per guarantee, driven by the loop in [`active`]:
//! - [`leader`] for leadership (lock, epoch, standby, and a takeover bounded by
//!   `relay.lease_timeout` even when the active relay freezes or is cut off from PostgreSQL)
//!   and the two sessions of an active relay;
//! - [`reader`]: the cursor, the late-row check's snapshot, the read ahead, the carried keys;
//! - [`publisher`]: routes, predicted tails, publishes in flight, the suspect pipeline, and
//!   the streams that are down (missing or refusing: their rows wait, the others' go on);
//! - [`recorder`]: acks recorded a batch at a time on the second session;
//! - [`reconcile`]: the streams read back to the outbox;
//! - [`restore`]: a stream that went back in time (a power cut took what its server had not
//!   synced) noticed, and what it lost published again from the rows kept for
//!   [`durability`]'s horizon;
//! - [`janitor`]: the published log kept within its retention, on a connection of its own;
//! - [`watch`]: the backlog, the connections and the streams as metrics, and readiness;
//! - [`status`]: `relay status`, the relays as the servers see them;
//! - [`backoff`], [`error`].
//!
//! Never writes SQL itself (the store does) and never builds messages itself (the event layer
//! does). Nothing below the relay imports it.

use async_nats::jetstream::context::Context;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

mod active;
mod backoff;
pub mod durability;
mod error;
mod janitor;
mod leader;
mod publisher;
mod reader;
mod reconcile;
mod recorder;
mod restore;
pub mod status;
mod watch;

pub use error::{NatsError, RelayError};

use crate::config::Config;
use crate::event::catalog::Catalog;
use active::Active;
use backoff::Backoff;
use durability::Stability;
use error::{chain, Interrupt};
use leader::Leader;

/// Runs until `shutdown` is cancelled (then returns `Ok` after recording what is in flight) or a
/// setup error makes going on pointless.
pub async fn run(cfg: &Config, js: Context, shutdown: CancellationToken) -> Result<(), RelayError> {
    let catalog = Catalog::load(cfg.events.catalog.as_deref())?;
    let mut backoff = Backoff::new(cfg.relay.max_backoff);
    // A stream missing at start is held like one that vanishes later: the others go on.
    let mut told = false;
    let mut routes = loop {
        match publisher::routes(&js, &cfg.relay.streams).await {
            Ok(r) => break r,
            Err(Interrupt::Fatal(e)) => return Err(e),
            Err(e) => {
                // Once: the NATS connection names its own trouble (refused, TLS, authorization…)
                // as it changes.
                if !told {
                    told = true;
                    warn!(
                        error = %chain(&e), nats = %crate::nats::redact(&cfg.nats.url),
                        connected = js.client().connection_state() == async_nats::connection::State::Connected,
                        "cannot read the streams' configuration yet; retrying"
                    );
                }
                if !backoff.wait(&shutdown).await {
                    return Ok(());
                }
            }
        }
    };
    // Not one stream there: the server was not provisioned (or relay.streams names the wrong
    // ones). Say so and stop, rather than wait for streams that may never come.
    if routes.iter().all(|r| r.subjects.is_empty()) {
        return Err(RelayError::StreamMissing {
            stream: cfg.relay.streams.join(", "),
        });
    }
    // What the active relay has seen of the servers' stability, and the horizon in force: the
    // janitor forgets kept events only on its word; the watcher tells it of disturbances.
    let stability = std::sync::Arc::new(Stability::default());
    // Owned: aborted however this function returns (a purge cut short is one statement rolled
    // back), and stopped with the relay's shutdown.
    let _janitor = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(janitor::run(
        cfg.clone(),
        stability.clone(),
        shutdown.child_token(),
    )));
    let _watch = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(watch::run(
        cfg.clone(),
        js.clone(),
        stability.clone(),
        shutdown.child_token(),
    )));
    let mut horizon_told: Option<durability::Horizon> = None;
    let mut leader = Leader::new();
    // PostgreSQL away (down, restarting, a session ended): reconnecting costs little, and a
    // long back-off would keep the relay idle well after the server is back.
    let mut reconnect = Backoff::new(cfg.relay.max_backoff.min(POSTGRES_RETRY));
    let mut postgres_away: Option<std::time::Instant> = None;
    let metrics = crate::metrics::get();
    loop {
        crate::metrics::health().turned();
        if shutdown.is_cancelled() {
            return Ok(());
        }
        let outcome = match leader.activate(cfg, &shutdown).await {
            Ok(None) => return Ok(()),
            Ok(Some(lead)) => {
                if let Some(since) = postgres_away.take() {
                    info!(after = %crate::show::duration(since.elapsed()), "PostgreSQL reachable again");
                    metrics.postgres_reconnects.inc();
                }
                reconnect.reset();
                metrics.epoch.set(lead.epoch);
                // Not known to refuse until the publisher says so: an active relay whose
                // publisher is not built yet must not read as refused by every stream.
                for stream in &cfg.relay.streams {
                    metrics
                        .stream_accepting
                        .get_or_create(&crate::metrics::Stream {
                            stream: stream.clone(),
                        })
                        .set(1);
                }
                metrics.active.set(1);
                // The streams as they are now (one missing at start may have come since); as
                // last read while NATS is away.
                if publisher::connected(&js) {
                    if let Ok(now) = publisher::routes(&js, &cfg.relay.streams).await {
                        routes = now;
                    }
                }
                // Asked again at every activation (and after every disturbance): a server
                // restarted with another setting.
                let horizon = durability::derive(cfg, &js).await;
                stability.set_horizon(horizon.clone());
                metrics
                    .durability_horizon_seconds
                    .set(horizon.duration.as_secs_f64());
                if horizon_told.as_ref() != Some(&horizon) {
                    info!(
                        horizon = %crate::show::duration(horizon.duration),
                        "durability horizon: {}", horizon.basis
                    );
                    horizon_told = Some(horizon.clone());
                }
                let done = match crate::store::lease::set_durability(
                    &lead.session.client,
                    lead.epoch,
                    horizon.duration,
                    &horizon.basis,
                )
                .await
                {
                    Ok(true) => {
                        Active::new(cfg, &js, &catalog, &routes, &lead, &stability, &shutdown)
                            .run(&mut backoff)
                            .await
                    }
                    Ok(false) => Err(Interrupt::LeaseLost(lead.epoch)),
                    Err(e) => Err(Interrupt::Db(e)),
                };
                stability.set_active(false);
                metrics.active.set(0);
                done
            }
            Err(e) => Err(e),
        };
        let pause = match outcome {
            Ok(()) => return Ok(()),
            Err(Interrupt::Fatal(e)) => return Err(e),
            Err(e) if is_postgres_away(&e) => {
                if postgres_away.is_none() {
                    warn!(error = %chain(&e), "relay interrupted; reconnecting to PostgreSQL");
                    postgres_away = Some(std::time::Instant::now());
                } else {
                    debug!(error = %chain(&e), "PostgreSQL still away; reconnecting");
                }
                &mut reconnect
            }
            Err(e) => {
                warn!(error = %chain(&e), "relay interrupted; retrying");
                &mut backoff
            }
        };
        if !pause.wait(&shutdown).await {
            return Ok(());
        }
    }
}

/// Whether `e` means PostgreSQL is (briefly) out of reach: the session or the connection is
/// gone, or the server is starting or shutting down (SQLSTATE classes 08 and 57P). A refused
/// password or a missing privilege is not: retrying fast would only hide it.
fn is_postgres_away(e: &Interrupt) -> bool {
    match e {
        Interrupt::SessionClosed | Interrupt::LeaseLost(_) => true,
        Interrupt::Db(e) => e.code().is_none_or(|c| {
            let c = c.code();
            c.starts_with("08") || c.starts_with("57P")
        }),
        Interrupt::Connect(e) => e.is_away(),
        _ => false,
    }
}

/// The longest pause between attempts to reach PostgreSQL again.
const POSTGRES_RETRY: std::time::Duration = std::time::Duration::from_millis(250);
