//! Leadership: becoming the active relay, or standing by until it can.
//!
//! One relay is active: it holds an advisory lock on its PostgreSQL session, and becoming active
//! bumps the lease epoch, which fences every write it makes from then on. Others stand by and
//! retry. Owns the checks made before taking the lead (schema, unresolved rejections in stop
//! mode) and the two sessions an active relay works on; the SQL is the store's.
//!
//! Never lets a relay read or publish before its epoch is bumped.

use tokio_util::sync::CancellationToken;
use tracing::info;

use super::error::{Interrupt, RelayError};
use crate::config::{Config, OnInvalid};
use crate::store::migrate::{self, MigrateError};
use crate::store::outbox::Prepared;
use crate::store::session::{self, Session};
use crate::store::{lease, operator, write};

/// Takes the lead, again after every interruption.
pub(crate) struct Leader {
    /// `host:pid`, recorded in the lease so operators see which process is active.
    holder: String,
    /// The schema was found current once: later failures of the check are outages, not setup.
    schema_checked: bool,
}

/// What an active relay works with, for as long as its lead lasts.
pub(crate) struct Leadership {
    /// Holds the lock, LISTENs, reads, rejects and reconciles.
    pub session: Session,
    pub prepared: Prepared,
    /// Records acks, so that recording one batch overlaps with reading and publishing the next
    /// (one session runs its statements one after another). Marks are fenced by the epoch, not
    /// by the lock, so either session may carry them.
    pub marker: Session,
    pub marker_prepared: Prepared,
    pub epoch: i64,
}

impl Leader {
    pub fn new() -> Leader {
        Leader {
            holder: format!("{}:{}", crate::host::name(), std::process::id()),
            schema_checked: false,
        }
    }

    /// Connects, checks, waits as a standby while another relay leads, and takes the lead.
    /// `None` when shutdown came first.
    pub async fn activate(
        &mut self,
        cfg: &Config,
        shutdown: &CancellationToken,
    ) -> Result<Option<Leadership>, Interrupt> {
        let session = session::connect(&cfg.database.url, "mes-events relay").await?;
        if let Err(e) = migrate::check(&session.client).await {
            return Err(match e {
                MigrateError::Db(e) => Interrupt::Db(e),
                // Before the first activation this is a setup error; later (a restore?) keep
                // trying.
                e if !self.schema_checked => Interrupt::Fatal(e.into()),
                e => Interrupt::Schema(e),
            });
        }
        self.schema_checked = true;
        if cfg.relay.on_invalid == OnInvalid::Stop {
            let c = operator::counts(&session.client).await?;
            if c.rejected > 0 {
                let first = operator::rejected(&session.client)
                    .await?
                    .first()
                    .map_or(0, |r| r.id);
                return Err(RelayError::Unresolved {
                    count: c.rejected,
                    first,
                }
                .into());
            }
        }
        if cfg.relay.exclusive {
            let mut said = false;
            while !lease::try_lock(&session.client).await? {
                if !said {
                    info!("standing by: another relay is active");
                    said = true;
                }
                tokio::select! {
                    _ = tokio::time::sleep(cfg.relay.standby_retry) => {}
                    _ = shutdown.cancelled() => return Ok(None),
                    _ = session.closed.cancelled() => return Err(Interrupt::SessionClosed),
                }
            }
        }
        if cfg.relay.notify {
            session.listen(write::CHANNEL).await?;
        }
        let epoch = lease::bump_epoch(&session.client, &self.holder).await?;
        // From here on the session only records progress. A mark lost in a PostgreSQL crash is
        // harmless (reconciliation finds the message in the stream and marks its row again), so
        // its commit need not wait for the WAL flush. The epoch bump above did wait.
        session.commit_without_flush().await?;
        let prepared = Prepared::new(&session.client).await?;
        let marker = session::connect(&cfg.database.url, "mes-events relay marks").await?;
        marker.commit_without_flush().await?;
        let marker_prepared = Prepared::new(&marker.client).await?;
        info!(epoch, holder = %self.holder, "active");
        Ok(Some(Leadership {
            session,
            prepared,
            marker,
            marker_prepared,
            epoch,
        }))
    }
}
