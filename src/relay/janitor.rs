//! The janitor: keeps the published log within `relay.retain_published` at any sustained rate.
//!
//! Every `relay.purge_interval` (10 s) it deletes log entries older than the retention, oldest
//! first, in batches of [`BATCH`] until it has caught up, on a connection of its own (kept
//! across turns): a purge on the relay's sessions would wait behind (or hold back) their
//! pipelined reads and marks. At 2,000 events/s a turn
//! deletes 20,000 entries in two batches; autovacuum reuses the space, so the log's size stays
//! flat once the retention is reached (the sustained benchmark measures it).
//!
//! Space is reused only once VACUUM has run over the deleted rows, the outbox's (every
//! published row is deleted from it) and the log's. Autovacuum does that on a default server;
//! where it is off, the janitor vacuums both tables itself after each turn, and says so once.
//!
//! Purging is not fenced: the log is a record of what went out, not a fence (the outbox row's
//! deletion is), so any relay, active or standby, may delete entries past the retention.
//!
//! It also turns the kept slots (`mes_events.kept`, published rows kept for the durability
//! horizon): it empties a slot whole once every row in it was published at least the horizon
//! before the servers' last confirmation by the active relay ([`Stability`]), and moves the
//! current slot on every [`slot_period`]. Kept rows are never deleted one by one, so they need
//! no VACUUM.

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use std::sync::Arc;
use std::time::Duration;

use super::durability::Stability;
use crate::config::Config;
use crate::store::session::{self, ConnectError, Session};

/// What interrupted a turn of the janitor: retried at the next.
#[derive(Debug, thiserror::Error)]
enum TurnError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Db(#[from] tokio_postgres::Error),
}
use crate::store::{kept, outbox};

/// Entries deleted per statement: one short transaction each.
pub(crate) const BATCH: i64 = 10_000;

/// Runs until `shutdown`. A PostgreSQL outage is reported once and retried at the next turn.
pub(crate) async fn run(cfg: Config, stability: Arc<Stability>, shutdown: CancellationToken) {
    let mut failing = false;
    let mut janitor = Janitor::default();
    let mut purged_at = tokio::time::Instant::now();
    loop {
        // The kept slots turn at their own pace: a short horizon (a server syncing every
        // second) keeps seconds of events, not a purge interval's worth.
        let every = cfg
            .relay
            .purge_interval
            .min(slot_period(stability.horizon().duration));
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
        let purge = purged_at.elapsed() >= cfg.relay.purge_interval;
        if purge {
            purged_at = tokio::time::Instant::now();
        }
        match janitor.turn(&cfg, &stability, purge, &shutdown).await {
            Ok(n) => {
                failing = false;
                if n > 0 {
                    debug!(rows = n, "purged published log entries past the retention");
                }
            }
            Err(e) => {
                // Connect again at the next turn.
                janitor.connection = None;
                if !failing {
                    failing = true;
                    let every = crate::show::duration(cfg.relay.purge_interval);
                    warn!(error = %e, "cannot purge the published log now; retrying every {every}");
                } else {
                    debug!(error = %e, "cannot purge the published log yet");
                }
            }
        }
    }
}

/// The janitor's connection, kept across turns, and what it has said.
#[derive(Default)]
struct Janitor {
    /// The connection, and whether the server's autovacuum is off (read once per connection).
    connection: Option<(Session, bool)>,
    /// Autovacuum is off: the janitor vacuums (said once).
    said_off: bool,
    /// Vacuuming failed (said once; tried again every turn).
    said_failed: bool,
}

impl Janitor {
    /// One turn: batches until fewer than a batch is left to delete; then, where autovacuum is
    /// off, VACUUM of the outbox and the log.
    async fn turn(
        &mut self,
        cfg: &Config,
        stability: &Stability,
        purge_log: bool,
        shutdown: &CancellationToken,
    ) -> Result<u64, TurnError> {
        if self
            .connection
            .as_ref()
            .is_none_or(|(s, _)| s.closed.is_cancelled())
        {
            let s = session::connect(&cfg.database.url, "mes-events relay janitor").await?;
            let autovacuum: String = s
                .client
                .query_one("select current_setting('autovacuum')", &[])
                .await?
                .get(0);
            self.connection = Some((s, autovacuum == "off"));
        }
        let Some((s, autovacuum_off)) = &mut self.connection else {
            unreachable!("connected above")
        };
        let total = if purge_log {
            purge(cfg, stability.horizon().duration, shutdown, &s.client).await?
        } else {
            0
        };
        // Only what a confirmation of the servers (by the active relay) came a horizon after.
        if let Some(ago) = stability.confirmed_ago() {
            let horizon = stability.horizon().duration;
            let turned =
                kept::turn_slots(&mut s.client, horizon, slot_period(horizon), ago).await?;
            if turned != kept::Turned::default() {
                debug!(
                    emptied = turned.emptied,
                    rotated = turned.rotated,
                    "kept slots turned"
                );
            }
        }
        if purge_log && *autovacuum_off && !shutdown.is_cancelled() {
            if !self.said_off {
                self.said_off = true;
                info!("autovacuum is off on this server: the relay vacuums mes_events.outbox and mes_events.published itself after each purge");
            }
            // Not in a transaction (VACUUM cannot be), and only what the relay deletes from.
            match s
                .client
                .batch_execute("vacuum mes_events.outbox, mes_events.published")
                .await
            {
                Ok(()) => self.said_failed = false,
                Err(e) if !self.said_failed => {
                    self.said_failed = true;
                    warn!(error = %e, "cannot vacuum mes_events.outbox and mes_events.published while autovacuum is off: their deleted rows' space is never reused; turn autovacuum on, or vacuum them regularly as their owner");
                }
                Err(e) => debug!(error = %e, "vacuum failed again"),
            }
        }
        Ok(total)
    }
}

/// How long a kept slot stays current: a little over half the horizon, so that the slot to be
/// made current next (the one before the last) is older than the horizon by then (with three
/// slots, at most about 1.7 horizons of events are kept).
pub(crate) fn slot_period(horizon: Duration) -> Duration {
    (horizon.mul_f64(0.55)).max(Duration::from_secs(1))
}

/// Deletes log entries past the retention in batches until fewer than a batch is left.
async fn purge(
    cfg: &Config,
    horizon: Duration,
    shutdown: &CancellationToken,
    client: &tokio_postgres::Client,
) -> Result<u64, tokio_postgres::Error> {
    // A kept row's loss is found through its entry: never purge an entry its kept row may
    // still need (a horizon, and the same again for a server that was long unconfirmed).
    let needed = if horizon.is_zero() {
        Duration::ZERO
    } else {
        horizon * 2 + Duration::from_secs(60)
    };
    let retain = cfg
        .relay
        .retain_published
        .max(needed)
        .min(Duration::from_secs(100 * 365 * 86_400));
    let mut total = 0;
    loop {
        let n = outbox::purge_published(client, retain, BATCH).await?;
        total += n;
        if n < BATCH as u64 || shutdown.is_cancelled() {
            return Ok(total);
        }
    }
}
