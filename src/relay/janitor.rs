//! The janitor: keeps the published log within `relay.retain_published` at any sustained rate.
//!
//! Every `relay.purge_interval` (10 s) it deletes log entries older than the retention, oldest
//! first, in batches of [`BATCH`] until it has caught up, on a connection of its own: a purge on the relay's sessions
//! would wait behind (or hold back) their pipelined reads and marks. At 2,000 events/s a turn
//! deletes 20,000 entries in two batches; autovacuum reuses the space, so the log's size stays
//! flat once the retention is reached (the sustained benchmark measures it).
//!
//! Purging is not fenced: the log is a record of what went out, not a fence (the outbox row's
//! deletion is), so any relay, active or standby, may delete entries past the retention.

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::config::Config;
use crate::store::{outbox, session};

/// Entries deleted per statement: one short transaction each.
pub(crate) const BATCH: i64 = 10_000;

/// Runs until `shutdown`. A PostgreSQL outage is reported once and retried at the next turn.
pub(crate) async fn run(cfg: Config, shutdown: CancellationToken) {
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(cfg.relay.purge_interval) => {}
            _ = shutdown.cancelled() => return,
        }
        match turn(&cfg, &shutdown).await {
            Ok(n) => {
                failing = false;
                if n > 0 {
                    debug!(rows = n, "purged published log entries past the retention");
                }
            }
            Err(e) if !failing => {
                failing = true;
                let every = cfg.relay.purge_interval;
                warn!(error = %e, "cannot purge the published log now; retrying every {every:?}");
            }
            Err(e) => debug!(error = %e, "cannot purge the published log yet"),
        }
    }
}

/// One turn: batches until fewer than a batch is left to delete.
async fn turn(cfg: &Config, shutdown: &CancellationToken) -> Result<u64, tokio_postgres::Error> {
    let s = session::connect(&cfg.database.url, "mes-events relay janitor").await?;
    let retain =
        chrono::Duration::from_std(cfg.relay.retain_published).unwrap_or(chrono::Duration::MAX);
    let before = Utc::now()
        .checked_sub_signed(retain)
        .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC);
    let mut total = 0;
    loop {
        let n = outbox::purge_published(&s.client, before, BATCH).await?;
        total += n;
        if n < BATCH as u64 || shutdown.is_cancelled() {
            return Ok(total);
        }
    }
}
