//! The active relay's loop: read a batch, publish it, harvest acks, record them, and after any
//! failure drain, reconcile and go on. It drives the [`Reader`], the [`Publisher`] and the
//! [`Recorder`] and decides when each acts; the guarantees live in those types and in
//! [`reconcile`](super::reconcile).
//!
//! Owns the pacing (how much to read, when to record, when to idle and purge) and the handling
//! of rows that cannot be published.
//!
//! Never writes SQL or builds messages itself.

use async_nats::jetstream::context::Context;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::backoff::Backoff;
use super::durability::Stability;
use super::error::{chain, Interrupt, RelayError};
use super::leader::Leadership;
use super::publisher::{Due, Publish, Publisher, Refusal, Route};
use super::reader::Reader;
use super::reconcile::reconcile;
use super::recorder::Recorder;
use crate::config::{Config, OnInvalid};
use crate::event::catalog::Catalog;
use crate::event::{Rejection, Row};
use crate::store::outbox;

/// What became of one row.
enum Sent {
    /// Published, awaiting its PubAck.
    Queued,
    /// Kept as rejected; its key's later rows wait.
    Rejected,
    /// Could not be queued (the client refused it); the pipeline is now suspect.
    NotQueued,
    /// Not sent: the lease is not confirmed recently enough to publish.
    Paused,
    /// Not sent: its stream is down; it waits, pending, and the other streams' rows go on.
    Held,
}

pub(crate) struct Active<'a> {
    cfg: &'a Config,
    js: &'a Context,
    lead: &'a Leadership,
    shutdown: &'a CancellationToken,
    reader: Reader<'a>,
    publisher: Publisher<'a>,
    recorder: Recorder<'a>,
    /// Paces retries after a failed pipeline (a full stream with `discard: new`, a stream that
    /// refuses messages): reset by the next publish that lands.
    retry: Backoff,
    /// What this relay has seen of the servers' stability, shared with the janitor.
    stability: &'a Stability,
    /// The connection's connects and the watcher's disturbances as last seen: when either
    /// moves, a server may have restarted (and lost what it had not synced), so the streams are
    /// reconciled before anything else is sent.
    seen: (u64, u64),
    /// A disturbance was seen: once reconciled, ask the servers for their sync setting again
    /// (a server restarted with another one).
    rederive: bool,
}

impl<'a> Active<'a> {
    pub fn new(
        cfg: &'a Config,
        js: &'a Context,
        catalog: &'a Catalog,
        routes: &'a [Route],
        lead: &'a Leadership,
        stability: &'a Stability,
        shutdown: &'a CancellationToken,
    ) -> Active<'a> {
        Active {
            cfg,
            js,
            lead,
            shutdown,
            reader: Reader::new(&lead.session.client, &lead.prepared),
            publisher: Publisher::new(js, catalog, cfg.profile(), routes, cfg.relay.max_backoff),
            recorder: Recorder::new(
                &lead.marker,
                &lead.marker_prepared,
                lead.epoch,
                cfg.source(),
                stability,
            ),
            retry: Backoff::new(cfg.relay.max_backoff),
            stability,
            seen: (0, 0),
            rederive: false,
        }
    }

    /// The connection's connects and the watcher's disturbances now.
    fn disturbances(&self) -> (u64, u64) {
        let connects = self
            .js
            .client()
            .statistics()
            .connects
            .load(std::sync::atomic::Ordering::Relaxed);
        (connects, self.stability.disturbances())
    }

    /// Works as the active relay until shutdown (`Ok`) or an interruption, keeping the lease
    /// confirmed meanwhile.
    pub async fn run(&mut self, backoff: &mut Backoff) -> Result<(), Interrupt> {
        let lead = self.lead;
        tokio::select! {
            done = self.work(backoff) => done,
            failed = lead.heartbeat() => Err(failed),
        }
    }

    async fn work(&mut self, backoff: &mut Backoff) -> Result<(), Interrupt> {
        // Nothing is known of the servers until this first reconciliation has verified them.
        self.stability.set_active(true);
        self.seen = self.disturbances();
        self.reconcile_retrying().await?;
        backoff.reset();
        let lead = self.lead;
        let session = &lead.session;
        loop {
            crate::metrics::health().turned();
            while let Some(acked) = self.publisher.ready() {
                self.harvest(acked);
            }
            self.record_when_due().await?;
            // Before recovering: a stop needs no reconciliation (the next start makes one), and
            // recovering while NATS is away would retry until it is back.
            if self.shutdown.is_cancelled() {
                let n = self.publisher.in_flight();
                self.drain().await?;
                info!(in_flight = n, "stopped; acks in flight recorded");
                return Ok(());
            }
            if session.closed.is_cancelled() || self.recorder.closed() {
                return Err(Interrupt::SessionClosed);
            }
            // Reconnected, or a stream's leader moved or stopped answering: the server may have
            // restarted and lost what it had not synced. Reconcile (which notices and restores
            // that) before sending more, and forget nothing kept until it is verified again.
            let now = self.disturbances();
            if now != self.seen {
                debug!(
                    connects = now.0,
                    disturbances = now.1,
                    "NATS reconnected or a stream was disturbed: reconciling before going on"
                );
                self.seen = now;
                self.stability.disturbed();
                self.publisher.suspect = true;
                self.rederive = true;
            }
            // Before recovering: a relay that froze past its lease must not even read the
            // streams back (its marks would be refused anyway); it waits for the heartbeat,
            // which finds its session gone.
            if !lead.lease.fresh() {
                self.await_lease().await?;
                continue;
            }
            if self.publisher.suspect {
                self.recover().await?;
                if std::mem::take(&mut self.rederive) {
                    self.rederive_horizon().await?;
                }
                continue;
            }
            if let Some(due) = self.publisher.due() {
                self.try_again(due).await?;
                continue;
            }

            let batch = self.cfg.relay.batch_size;
            let room = self
                .cfg
                .relay
                .max_in_flight
                .saturating_sub(self.publisher.in_flight());
            let mut sent = 0;
            let mut read = 0;
            // Read only when a whole batch fits (or nothing is in flight): reading into the room
            // a few acks freed would cost a PostgreSQL round trip per few events.
            let limit = room.min(batch);
            if limit > 0 && (room >= batch || self.publisher.in_flight() == 0) {
                let mut b = self.reader.read(limit, room).await?;
                if !b.fetched.rows.is_empty() {
                    crate::metrics::get().batches_read.inc();
                }
                if b.fetched.epoch != self.lead.epoch {
                    self.drain().await.ok();
                    return Err(Interrupt::LeaseLost(b.fetched.epoch));
                }
                if b.fetched.late {
                    debug!(
                        cursor = self.reader.cursor,
                        "a row became publishable behind the read position; reading again from the oldest pending row"
                    );
                    self.drain().await?;
                    continue;
                }
                // Keys whose row was just rejected: their later rows wait behind it.
                let mut held = self.reader.accept(&mut b);
                let mut complete = true;
                for row in &b.fetched.rows {
                    read += 1;
                    if held.contains(row.key.as_str()) {
                        continue;
                    }
                    match self.send(row).await? {
                        Sent::Queued => sent += 1,
                        Sent::Rejected => {
                            held.insert(row.key.clone());
                            self.reader.hold(&row.key);
                        }
                        Sent::Held => {}
                        Sent::NotQueued | Sent::Paused => {
                            complete = false;
                            break;
                        }
                    }
                }
                let last = b.fetched.rows.last().filter(|_| complete).map(|r| r.id);
                self.reader.done(last);
                if complete && read < b.limit {
                    self.publisher.caught_up();
                }
                if read == b.limit && room - sent >= batch {
                    continue; // a full batch was there and another fits: read again now
                }
            }
            if self.publisher.in_flight() == 0 {
                if read == 0 {
                    self.idle().await?;
                }
                continue;
            }
            // Wait for acks; then take every ack that is ready.
            // A NOTIFY only matters when a whole batch fits.
            let can_read = room - sent >= batch;
            let due = self.publisher.next_due();
            tokio::select! {
                acked = self.publisher.next() => {
                    if let Some(acked) = acked {
                        self.harvest(acked);
                    }
                    while let Some(acked) = self.publisher.ready() {
                        self.harvest(acked);
                    }
                    self.record_when_due().await?;
                }
                marked = self.recorder.answer() => self.recorder.answered(marked)?,
                // Acks slow to come: the loop top waits for the lease, dropping a read sent
                // ahead, whose unread answer would otherwise hold the heartbeat's back.
                _ = tokio::time::sleep_until(lead.lease.stale_at()) => {}
                _ = session.wake.notified(), if can_read => {}
                _ = until(due) => {}
                _ = self.shutdown.cancelled() => {}
                _ = session.closed.cancelled() => {}
            }
        }
    }

    /// A down stream is due to be tried again. A missing one: asked for (once there, the
    /// pipeline is reconciled with it); a refusing one: its held rows are read again and sent.
    async fn try_again(&mut self, due: Due) -> Result<(), Interrupt> {
        match due {
            Due::Missing(i) => {
                let name = self.publisher.routes[i].stream.clone();
                match self.js.get_stream(&name).await {
                    Ok(_) => self.publisher.suspect = true,
                    Err(e) => {
                        debug!(stream = %name, error = %chain(&e), "stream still missing");
                        self.publisher.went_down(i, Refusal::Missing);
                    }
                }
            }
            Due::Retry => self.drain().await?,
        }
        Ok(())
    }

    /// After a disturbance: the servers' sync setting again. A longer horizon takes effect at
    /// once; a shorter one waits for the next activation (what is kept now was kept for the
    /// longer one).
    async fn rederive_horizon(&mut self) -> Result<(), Interrupt> {
        let Some(now) = super::durability::derive_if_answered(self.cfg, self.js).await else {
            return Ok(());
        };
        let was = self.stability.horizon();
        if now.duration <= was.duration {
            if now != was {
                debug!(horizon = %crate::show::duration(now.duration), "the servers now need a shorter horizon: the longer one stays until the next activation");
            }
            return Ok(());
        }
        info!(
            horizon = %crate::show::duration(now.duration),
            was = %crate::show::duration(was.duration),
            "durability horizon now: {}", now.basis
        );
        crate::metrics::get()
            .durability_horizon_seconds
            .set(now.duration.as_secs_f64());
        let (epoch, client) = (self.lead.epoch, &self.lead.session.client);
        self.stability.set_horizon(now.clone());
        if !crate::store::lease::set_durability(client, epoch, now.duration, &now.basis).await? {
            return Err(Interrupt::LeaseLost(epoch));
        }
        Ok(())
    }

    /// Nothing pending, nothing in flight: wait for a NOTIFY, the fallback poll, shutdown, or
    /// the session's end. (The janitor purges the published log, busy or idle.)
    async fn idle(&mut self) -> Result<(), Interrupt> {
        let session = &self.lead.session;
        let due = self.publisher.next_due();
        tokio::select! {
            _ = session.wake.notified() => {}
            _ = tokio::time::sleep(self.cfg.relay.poll_interval) => {}
            _ = until(due) => {}
            _ = self.shutdown.cancelled() => {}
            _ = session.closed.cancelled() => {}
        }
        Ok(())
    }

    /// Waits, publishing nothing, until the heartbeat confirms the lease again (PostgreSQL slow
    /// to answer, or this process was frozen: then the heartbeat finds the session gone).
    async fn await_lease(&mut self) -> Result<(), Interrupt> {
        let lead = self.lead;
        // A read sent ahead holds back every later answer on the session until it is taken,
        // the heartbeat's included: drop it (the cursor stays: publishes may be in flight).
        self.reader.drop_ahead();
        warn!(
            unconfirmed_for = %crate::show::duration(lead.lease.age()),
            "lease not confirmed recently: publishing nothing until PostgreSQL confirms it"
        );
        tokio::select! {
            _ = lead.lease.renewed() => {}
            _ = self.shutdown.cancelled() => {}
            _ = lead.session.closed.cancelled() => return Err(Interrupt::SessionClosed),
        }
        Ok(())
    }

    /// Publishes one row, or rejects it when it cannot become a valid event.
    async fn send(&mut self, row: &Row) -> Result<Sent, Interrupt> {
        if !self.lead.lease.fresh() {
            return Ok(Sent::Paused);
        }
        let lease = &self.lead.lease;
        match self.publisher.publish(row, || lease.fresh()).await {
            Publish::Queued => {
                self.reader.cursor = row.id;
                Ok(Sent::Queued)
            }
            Publish::Refused(r) => self.reject(row, r).await,
            Publish::Held => Ok(Sent::Held),
            Publish::Paused => Ok(Sent::Paused),
            Publish::NotQueued => Ok(Sent::NotQueued),
        }
    }

    /// Keeps a row that cannot be published as rejected, with its reason. Its key's later rows
    /// wait behind it. Under `on_invalid = "stop"` the relay then stops.
    async fn reject(&mut self, row: &Row, r: Rejection) -> Result<Sent, Interrupt> {
        error!(id = row.id, key = %row.key, kind = %r.kind, reason = %r.reason, "outbox row rejected; its key waits");
        crate::metrics::get()
            .rejected
            .get_or_create(&crate::metrics::Kind {
                kind: r.kind.to_string(),
            })
            .inc();
        // On the session that records acks: the main one may have a read sent ahead, whose
        // answer (a whole batch) would hold this one back until the loop takes it. The write is
        // fenced by the epoch, so either session may carry it.
        let epoch = self.lead.epoch;
        if !outbox::reject(&self.lead.marker.client, epoch, row.id, &r).await? {
            return Err(Interrupt::LeaseLost(epoch));
        }
        if self.cfg.relay.on_invalid == OnInvalid::Stop {
            self.drain().await?;
            return Err(RelayError::Rejected {
                id: row.id,
                reason: r.reason,
            }
            .into());
        }
        Ok(Sent::Rejected)
    }

    fn harvest(&mut self, acked: super::publisher::Acked) {
        if let Some(landed) = self.publisher.check(acked) {
            self.recorder.add(landed);
        }
    }

    /// Records the harvest once it fills a batch, or when nothing else is coming to join it
    /// (nothing in flight, or the pipeline must be recovered). Each mark statement costs
    /// PostgreSQL a fixed part besides its rows, and nothing waits for marks: events are in the
    /// stream already, and a crash before the mark is what reconciliation repairs.
    async fn record_when_due(&mut self) -> Result<(), Interrupt> {
        if self.recorder.unrecorded() >= self.cfg.relay.batch_size
            || self.publisher.in_flight() == 0
            || self.publisher.suspect
            || self.shutdown.is_cancelled()
        {
            self.record().await?;
        }
        Ok(())
    }

    async fn record(&mut self) -> Result<(), Interrupt> {
        if self.recorder.record(&self.publisher.routes).await? {
            self.retry.reset();
        }
        Ok(())
    }

    /// Awaits every publish in flight and records those that landed (a failure among them
    /// leaves the pipeline suspect, for the main loop to reconcile).
    async fn drain(&mut self) -> Result<(), Interrupt> {
        // Drop a read sent ahead now, not after the acks: until it is taken it holds back every
        // later answer on the session, the heartbeat's included.
        self.reader.read_from_start();
        while let Some(acked) = self.publisher.next().await {
            self.harvest(acked);
        }
        self.reader.read_from_start();
        self.record().await?;
        self.recorder.finish().await
    }

    /// After a failure: drain, reconcile every stream (retrying while NATS is away), then pause
    /// before publishing again, longer each time nothing lands in between.
    async fn recover(&mut self) -> Result<(), Interrupt> {
        self.drain().await?;
        self.reconcile_retrying().await?;
        tokio::select! {
            _ = self.retry.wait(self.shutdown) => {}
            _ = self.lead.session.closed.cancelled() => {}
        }
        Ok(())
    }

    async fn reconcile_retrying(&mut self) -> Result<(), Interrupt> {
        let mut backoff = Backoff::new(self.cfg.relay.max_backoff);
        let mut told = false;
        loop {
            crate::metrics::health().turned();
            self.reader.read_from_start();
            match reconcile(self.js, self.lead, &mut self.publisher, self.stability).await {
                Ok(()) => {
                    // A stream that could not be read back is not verified: nothing kept is
                    // forgotten until it is.
                    if self.publisher.any_unavailable() {
                        self.stability.disturbed();
                    } else {
                        self.stability.verified();
                    }
                    return Ok(());
                }
                Err(Interrupt::Nats(e)) => {
                    // Once per outage: the NATS connection names its own trouble as it changes.
                    if !std::mem::replace(&mut told, true) {
                        warn!(
                            error = %chain(&e), nats = %crate::nats::redact(&self.cfg.nats.url),
                            "cannot reconcile with JetStream yet; retrying"
                        );
                    } else {
                        debug!(error = %chain(&e), "cannot reconcile with JetStream yet; retrying");
                    }
                    tokio::select! {
                        more = backoff.wait(self.shutdown) => if !more { return Ok(()) },
                        _ = self.lead.session.closed.cancelled() => return Err(Interrupt::SessionClosed),
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Waits until `t`; forever when there is none.
async fn until(t: Option<std::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}
