//! Leadership: becoming the active relay, keeping the lead, or standing by until it can.
//!
//! One relay is active: it holds an advisory lock on its PostgreSQL session, and becoming active
//! bumps the lease epoch, which fences every write it makes from then on. Others stand by and
//! retry. Owns the checks made before taking the lead (schema, unresolved rejections in stop
//! mode), the two sessions an active relay works on, and the lease's timing; the SQL is the
//! store's.
//!
//! **Bounded takeover.** A session that merely stays open would keep the lock forever: a
//! frozen process (SIGSTOP, a paused VM) still has its kernel answer TCP keepalives, and a
//! half-open network path leaves the server's backend waiting. So the lock-holding session asks
//! the server to end it after `relay.lease_timeout` of silence (`idle_session_timeout`, and
//! `tcp_user_timeout` and keepalives for the network), and the active relay keeps it talking: a
//! heartbeat confirms the epoch every fifth of the timeout. The server then frees the lock at
//! most `lease_timeout` after the relay last spoke, and a standby (retrying every
//! `standby_retry`) takes over. The relay itself publishes only while its last confirmation was
//! sent less than half the timeout ago: once the server could have ended its session it has
//! stopped publishing (a relay that wakes from a freeze finds its confirmation stale and waits;
//! the heartbeat then finds the session gone). What was in flight at the freeze is still held
//! by the fences: an old publish lands only at the sequence it expected, and an old mark is
//! refused by the new epoch. `idle_session_timeout` is set on the lock-holding session only:
//! the session that records acks may be quiet for long.
//!
//! Never lets a relay read or publish before its epoch is bumped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

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
    /// The server was found without `idle_session_timeout` (and the operator told so).
    warned_no_timeout: bool,
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
    pub lease: Lease,
    /// `host:pid`, as the lease records it.
    pub holder: String,
}

/// When the lease was last confirmed, and so how long the relay may still publish.
pub(crate) struct Lease {
    timeout: Duration,
    start: Instant,
    /// Milliseconds after `start` at which the last confirming statement was sent.
    confirmed: AtomicU64,
    /// Woken on every confirmation.
    renewed: Notify,
}

impl Lease {
    fn new(timeout: Duration, confirmed_at: Instant) -> Lease {
        Lease {
            timeout,
            start: confirmed_at,
            confirmed: AtomicU64::new(0),
            renewed: Notify::new(),
        }
    }

    fn confirm(&self, sent_at: Instant) {
        let ms = sent_at.saturating_duration_since(self.start).as_millis() as u64;
        self.confirmed.fetch_max(ms, Ordering::Relaxed);
        self.renewed.notify_one();
    }

    /// How long ago the last confirmation was sent.
    pub fn age(&self) -> Duration {
        let at = self.start + Duration::from_millis(self.confirmed.load(Ordering::Relaxed));
        Instant::now().saturating_duration_since(at)
    }

    /// Whether the relay may publish: its last confirmation was sent less than half the
    /// timeout ago, so the server cannot have ended its session since.
    pub fn fresh(&self) -> bool {
        self.age() < self.timeout / 2
    }

    /// When the lease stops being fresh, unless confirmed again before.
    pub fn stale_at(&self) -> Instant {
        self.start
            + Duration::from_millis(self.confirmed.load(Ordering::Relaxed))
            + self.timeout / 2
    }

    /// Resolves at the next confirmation.
    pub async fn renewed(&self) {
        self.renewed.notified().await
    }
}

impl Leadership {
    /// Confirms the epoch on the lock-holding session every fifth of the lease timeout, so that
    /// it is never silent long enough for the server to end it. Returns only when that fails:
    /// the session is gone, or another relay has the lead.
    pub async fn heartbeat(&self) -> Interrupt {
        let period = self.lease.timeout / 5;
        loop {
            tokio::time::sleep(period).await;
            let sent = Instant::now();
            match lease::lease(&self.session.client).await {
                Ok((epoch, _)) if epoch == self.epoch => self.lease.confirm(sent),
                Ok((epoch, _)) => return Interrupt::LeaseLost(epoch),
                Err(e) => return Interrupt::Db(e),
            }
        }
    }
}

impl Leader {
    pub fn new() -> Leader {
        Leader {
            holder: format!("{}:{}", crate::host::name(), std::process::id()),
            schema_checked: false,
            warned_no_timeout: false,
        }
    }

    /// Connects, checks, waits as a standby while another relay leads, and takes the lead.
    /// `None` when shutdown came first.
    pub async fn activate(
        &mut self,
        cfg: &Config,
        shutdown: &CancellationToken,
    ) -> Result<Option<Leadership>, Interrupt> {
        // Named after the holder, so that `relay status` tells the relays apart.
        let name = format!("mes-events relay {}", self.holder);
        let session = session::connect(&cfg.database.url, &name).await?;
        if !session.expire_when_silent(cfg.relay.lease_timeout).await? && !self.warned_no_timeout {
            self.warned_no_timeout = true;
            warn!("PostgreSQL has no idle_session_timeout (before 14): a frozen or partitioned active relay keeps the lead until its session dies");
        }
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
                crate::metrics::health().turned();
                if !said {
                    let (epoch, active) = lease::lease(&session.client).await?;
                    let active = active.as_deref().unwrap_or("unknown");
                    info!(active, epoch, "standing by: another relay is active");
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
        let bumped_at = Instant::now();
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
            lease: Lease::new(cfg.relay.lease_timeout, bumped_at),
            holder: self.holder.clone(),
        }))
    }
}
