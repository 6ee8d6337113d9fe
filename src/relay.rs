//! Relay: moves committed outbox rows into JetStream, each once, in order per key.
//!
//! How it holds, whatever crashes:
//! - **Leadership**: one relay is active, holding an advisory lock on its PostgreSQL session;
//!   others stand by and retry. Becoming active bumps the lease epoch; every statement that marks
//!   rows is fenced by that epoch, so a relay that lost its session (and its lock) without
//!   noticing cannot mark anything once a successor has started.
//! - **Stream fence**: every publish carries `Nats-Expected-Last-Sequence`. The relay predicts
//!   each stream's tail, so the expectations of a pipeline are consecutive: if message k fails,
//!   every later one fails too and nothing lands out of order; a second relay publishing at the
//!   same time cannot land anything without having seen everything before it.
//! - **Marking**: a row is marked with its stream sequence only from a PubAck or from the stream
//!   itself; never before.
//! - **Reconciliation** (on activation and after any failure): read each stream from the
//!   recorded watermark to its tail, map every message back to its outbox row through
//!   `Nats-Msg-Id`, and mark those rows. No duplicate, whatever the outage length or the
//!   duplicate window.
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
//! Owns the loop, its state and its back-off. Never writes SQL itself (outbox) and never builds
//! messages itself (event).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_nats::jetstream::context::{Context, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::RawMessageErrorKind;
use async_nats::jetstream::{self, ErrorCode};
use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, StreamExt};
use futures::FutureExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::catalog::{Catalog, CatalogError};
use crate::config::{Config, OnInvalid};
use crate::event::{self, Profile};
use crate::migrate::{self, MigrateError};
use crate::outbox::{self, Mark, Rejection};
use crate::pg::{self, Session};
use crate::subject;

/// Why the relay stopped for good. Everything else (PostgreSQL or NATS unreachable, a session
/// killed, a lost lease) is retried with back-off and never surfaces here.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Schema(#[from] MigrateError),
    #[error("JetStream stream {stream} does not exist on the NATS server: create it with `mes-events provision apply` (or remove it from relay.streams)")]
    StreamMissing { stream: String },
    #[error("the built-in event catalog is broken: {0}")]
    Catalog(#[from] CatalogError),
    #[error("outbox row {id} rejected ({reason}) and relay.on_invalid = \"stop\": fix it with `mes-events outbox retry {id} --data @fixed.json`, or `mes-events outbox discard {id} --reason …`, then restart")]
    Rejected { id: i64, reason: String },
    #[error("{count} rejected outbox row(s) unresolved (first: {first}) and relay.on_invalid = \"stop\": see `mes-events outbox rejected`, then `retry` or `discard` each")]
    Unresolved { count: i64, first: i64 },
}

impl RelayError {
    /// Whether the operator has to act before a restart can help (as opposed to a bug/outage).
    pub fn is_setup(&self) -> bool {
        matches!(
            self,
            RelayError::Schema(MigrateError::Behind { .. } | MigrateError::Newer { .. })
                | RelayError::StreamMissing { .. }
                | RelayError::Unresolved { .. }
        )
    }
}

/// What interrupted an active (or standby) session.
#[derive(Debug, thiserror::Error)]
enum Interrupt {
    #[error("postgres: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("postgres session closed")]
    SessionClosed,
    #[error("lease taken over by another relay (epoch {0})")]
    LeaseLost(i64),
    #[error("nats: {0}")]
    Nats(String),
    #[error(transparent)]
    Fatal(#[from] RelayError),
}

/// A stream this relay writes, and the subjects it captures.
#[derive(Debug, Clone)]
struct Route {
    stream: String,
    subjects: Vec<String>,
    /// The stream's `max_msg_size`, when it has one: larger messages are refused by the server.
    max_msg_size: Option<usize>,
}

/// Runs until `shutdown` is cancelled (then returns `Ok` after recording what is in flight) or a
/// setup error makes going on pointless.
pub async fn run(cfg: &Config, js: Context, shutdown: CancellationToken) -> Result<(), RelayError> {
    let holder = holder_name();
    let catalog = Catalog::embedded()?;
    let mut backoff = Backoff::new(cfg.relay.max_backoff);
    // Refuse to start without the streams; afterwards a vanished stream is an outage like others.
    let routes = loop {
        match routes(&js, &cfg.relay.streams).await {
            Ok(r) => break r,
            Err(Interrupt::Fatal(e)) => return Err(e),
            Err(e) => {
                warn!(error = %e, "cannot read stream configuration yet; retrying");
                if !backoff.wait(&shutdown).await {
                    return Ok(());
                }
            }
        }
    };
    let mut schema_checked = false;
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        match session(
            cfg,
            &js,
            &catalog,
            &routes,
            &holder,
            &shutdown,
            &mut schema_checked,
            &mut backoff,
        )
        .await
        {
            Ok(()) => return Ok(()),
            Err(Interrupt::Fatal(e)) => return Err(e),
            Err(e) => {
                warn!(error = %e, "relay interrupted; retrying");
                if !backoff.wait(&shutdown).await {
                    return Ok(());
                }
            }
        }
    }
}

async fn routes(js: &Context, names: &[String]) -> Result<Vec<Route>, Interrupt> {
    let mut routes = Vec::with_capacity(names.len());
    for name in names {
        match js.get_stream(name).await {
            Ok(s) => routes.push(Route {
                stream: name.clone(),
                subjects: s.cached_info().config.subjects.clone(),
                max_msg_size: usize::try_from(s.cached_info().config.max_message_size)
                    .ok()
                    .filter(|&n| n > 0),
            }),
            Err(e) => {
                if let jetstream::context::GetStreamErrorKind::JetStream(je) = e.kind() {
                    if je.error_code() == ErrorCode::STREAM_NOT_FOUND {
                        return Err(RelayError::StreamMissing {
                            stream: name.clone(),
                        }
                        .into());
                    }
                }
                return Err(Interrupt::Nats(format!("stream info {name}: {e}")));
            }
        }
    }
    Ok(routes)
}

#[allow(clippy::too_many_arguments)]
async fn session(
    cfg: &Config,
    js: &Context,
    catalog: &Catalog,
    routes: &[Route],
    holder: &str,
    shutdown: &CancellationToken,
    schema_checked: &mut bool,
    backoff: &mut Backoff,
) -> Result<(), Interrupt> {
    let session = pg::connect(&cfg.database.url, "mes-events relay").await?;
    if let Err(e) = migrate::check(&session.client).await {
        return Err(match e {
            MigrateError::Db(e) => Interrupt::Db(e),
            // Before the first activation this is a setup error; later (a restore?) keep trying.
            e if !*schema_checked => Interrupt::Fatal(e.into()),
            e => Interrupt::Nats(e.to_string()),
        });
    }
    *schema_checked = true;
    if cfg.relay.on_invalid == OnInvalid::Stop {
        let c = outbox::counts(&session.client).await?;
        if c.rejected > 0 {
            let first = outbox::rejected(&session.client)
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
        while !outbox::try_lock(&session.client).await? {
            if !said {
                info!("standing by: another relay is active");
                said = true;
            }
            tokio::select! {
                _ = tokio::time::sleep(cfg.relay.standby_retry) => {}
                _ = shutdown.cancelled() => return Ok(()),
                _ = session.closed.cancelled() => return Err(Interrupt::SessionClosed),
            }
        }
    }
    if cfg.relay.notify {
        session
            .client
            .batch_execute(&format!("listen {}", outbox::CHANNEL))
            .await?;
    }
    let epoch = outbox::bump_epoch(&session.client, holder).await?;
    // From here on the session only records progress. A mark lost in a PostgreSQL crash is
    // harmless (reconciliation finds the message in the stream and marks its row again), so
    // its commit need not wait for the WAL flush. The epoch bump above did wait.
    session
        .client
        .batch_execute("set synchronous_commit = off")
        .await?;
    let prepared = outbox::Prepared::new(&session.client).await?;
    // Acks are recorded on a second session, so that recording one batch overlaps with reading
    // and publishing the next (one session runs its statements one after another). Marks are
    // fenced by the epoch, not by this session's lock, so either session may carry them.
    let marker = pg::connect(&cfg.database.url, "mes-events relay marks").await?;
    marker
        .client
        .batch_execute("set synchronous_commit = off")
        .await?;
    let marker_prepared = outbox::Prepared::new(&marker.client).await?;
    info!(epoch, holder, "active");
    let mut active = Active {
        cfg,
        js,
        session: &session,
        prepared: &prepared,
        marker: &marker,
        marker_prepared: &marker_prepared,
        marking: None,
        shutdown,
        epoch,
        profile: Profile::from_config(cfg),
        catalog,
        routes,
        max_payload: usize::MAX,
        tails: vec![0; routes.len()],
        in_flight: FuturesOrdered::new(),
        cursor: 0,
        after: None,
        read_ahead: None,
        held: HashSet::new(),
        route_cache: HashMap::new(),
        last_purge: None,
        retry: Backoff::new(cfg.relay.max_backoff),
        suspect: false,
        harvest: Harvest::default(),
    };
    active.run(backoff).await
}

/// A batch read sent ahead of its turn.
struct ReadAhead<'a> {
    /// It reads after this id: taken only if the relay still stands there.
    cursor: i64,
    limit: usize,
    fetched: BoxFuture<'a, Result<outbox::Fetched, tokio_postgres::Error>>,
}

/// What became of one row.
enum Sent {
    /// Published, awaiting its PubAck.
    Queued,
    /// Kept as rejected; its key's later rows wait.
    Rejected,
    /// Could not be queued (the client refused it); the pipeline is now suspect.
    NotQueued,
}

/// One publish awaiting its PubAck.
struct InFlight {
    id: i64,
    route: usize,
    /// The stream sequence it must land at.
    seq: u64,
}

type Acked = (
    InFlight,
    Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
);

struct Active<'a> {
    cfg: &'a Config,
    js: &'a Context,
    session: &'a Session,
    prepared: &'a outbox::Prepared,
    /// The second session, which records acks.
    marker: &'a Session,
    marker_prepared: &'a outbox::Prepared,
    /// The mark statement sent on `marker` and not answered yet. At most one: the next waits for
    /// it, so a failure (or a lost lease) surfaces before anything else is recorded.
    marking: Option<BoxFuture<'a, Result<outbox::Marked, tokio_postgres::Error>>>,
    shutdown: &'a CancellationToken,
    epoch: i64,
    profile: Profile,
    catalog: &'a Catalog,
    routes: &'a [Route],
    /// The connected server's `max_payload` (refreshed on every reconciliation).
    max_payload: usize,
    /// Predicted last sequence of each route's stream.
    tails: Vec<u64>,
    in_flight: FuturesOrdered<BoxFuture<'static, Acked>>,
    /// Highest outbox id dealt with (published, rejected or held) since reading last started
    /// from the oldest pending row; 0: read from the start next.
    cursor: i64,
    /// Snapshot of the previous read, while `cursor` is above 0: the next read checks that no
    /// pending row at or below the cursor became visible since.
    after: Option<String>,
    /// The next batch, read (from PostgreSQL's side, in parallel) while the current one is
    /// published.
    read_ahead: Option<ReadAhead<'a>>,
    /// Keys rejected in the batch before: a batch read ahead did not see those rejections.
    held: HashSet<String>,
    /// Subject's first two tokens after the location → route, to skip matching on every row.
    route_cache: HashMap<String, usize>,
    last_purge: Option<tokio::time::Instant>,
    /// Paces retries after a failed pipeline (a full stream with `discard: new`, a stream that
    /// refuses messages): reset by the next publish that lands.
    retry: Backoff,
    /// Something did not land where predicted since the last reconciliation: the pipeline must be
    /// drained and reconciled, and until then no watermark moves.
    suspect: bool,
    /// Acks not yet recorded.
    harvest: Harvest,
}

/// What harvesting acks found.
#[derive(Default)]
struct Harvest {
    marks: Vec<Mark>,
    /// Per route, the highest sequence of an ack that landed as predicted while the pipeline was
    /// not suspect: everything up to it is recorded, so the watermark may move there.
    watermarks: HashMap<usize, u64>,
}

impl Active<'_> {
    async fn run(&mut self, backoff: &mut Backoff) -> Result<(), Interrupt> {
        self.reconcile_retrying().await?;
        backoff.reset();
        loop {
            while let Some(Some(acked)) = self.in_flight.next().now_or_never() {
                self.check(acked);
            }
            self.record_when_due().await?;
            if self.suspect {
                self.recover().await?;
                continue;
            }
            if self.shutdown.is_cancelled() {
                let n = self.in_flight.len();
                self.drain().await?;
                info!(in_flight = n, "stopped; acks in flight recorded");
                return Ok(());
            }
            if self.session.closed.is_cancelled() || self.marker.closed.is_cancelled() {
                return Err(Interrupt::SessionClosed);
            }

            let batch = self.cfg.relay.batch_size;
            let room = self
                .cfg
                .relay
                .max_in_flight
                .saturating_sub(self.in_flight.len());
            let mut sent = 0;
            let mut read = 0;
            // Read only when a whole batch fits (or nothing is in flight): reading into the room
            // a few acks freed would cost a PostgreSQL round trip per few events.
            let limit = room.min(batch);
            if limit > 0 && (room >= batch || self.in_flight.is_empty()) {
                let (fetched, limit, read_ahead) = match self.read_ahead.take() {
                    Some(next) if next.cursor == self.cursor && next.limit <= room => {
                        (next.fetched.await?, next.limit, true)
                    }
                    _ => (
                        outbox::fetch(
                            &self.session.client,
                            self.prepared,
                            self.cursor,
                            limit as i64,
                            self.after.as_deref(),
                        )
                        .await?,
                        limit,
                        false,
                    ),
                };
                if fetched.epoch != self.epoch {
                    self.drain().await.ok();
                    return Err(Interrupt::LeaseLost(fetched.epoch));
                }
                if fetched.late {
                    debug!(
                        cursor = self.cursor,
                        "a row became publishable behind the read position; reading again from the oldest pending row"
                    );
                    self.drain().await?;
                    continue;
                }
                // A full batch: read the next one while this one is published, from this one's
                // last row, in the snapshot this one was read in.
                if let (true, Some(last)) = (fetched.rows.len() == limit, fetched.rows.last()) {
                    self.read_ahead(last.id, limit, fetched.snapshot.clone());
                }
                self.after = Some(fetched.snapshot);
                // Keys whose row was just rejected: their later rows wait behind it. A batch read
                // ahead was read before the previous batch's rejections were recorded, so it
                // holds their keys too.
                let mut held = std::mem::take(&mut self.held);
                if !read_ahead {
                    held.clear();
                }
                let mut complete = true;
                for row in &fetched.rows {
                    read += 1;
                    if held.contains(row.key.as_str()) {
                        continue;
                    }
                    match self.send(row).await? {
                        Sent::Queued => sent += 1,
                        Sent::Rejected => {
                            held.insert(row.key.clone());
                            self.held.insert(row.key.clone());
                        }
                        Sent::NotQueued => {
                            complete = false;
                            break;
                        }
                    }
                }
                match fetched.rows.last() {
                    // Every row was published, rejected or held: read on after the last one.
                    Some(last) if complete => self.cursor = self.cursor.max(last.id),
                    // Rows after the one the client refused were not sent: the read ahead
                    // passed them (and the pipeline is suspect, so reading starts over).
                    _ => self.read_ahead = None,
                }
                if read == limit && room - sent >= batch {
                    continue; // a full batch was there and another fits: read again now
                }
            }
            if self.in_flight.is_empty() {
                if read == 0 {
                    self.idle().await?;
                }
                continue;
            }
            // Wait for acks; then take every ack that is ready.
            // A NOTIFY only matters when a whole batch fits.
            let can_read = room - sent >= batch;
            tokio::select! {
                acked = self.in_flight.next() => {
                    if let Some(acked) = acked {
                        self.check(acked);
                    }
                    while let Some(Some(acked)) = self.in_flight.next().now_or_never() {
                        self.check(acked);
                    }
                    self.record_when_due().await?;
                }
                marked = answer(&mut self.marking) => {
                    self.marking = None;
                    lease_held(marked, self.epoch)?;
                }
                _ = self.session.wake.notified(), if can_read => {}
                _ = self.shutdown.cancelled() => {}
                _ = self.session.closed.cancelled() => {}
            }
        }
    }

    /// Nothing pending, nothing in flight: purge old rows now and then, then wait for a NOTIFY,
    /// the fallback poll, shutdown, or the session's end.
    async fn idle(&mut self) -> Result<(), Interrupt> {
        let due = self
            .last_purge
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(60));
        if due {
            self.last_purge = Some(tokio::time::Instant::now());
            let before = chrono::Utc::now()
                - chrono::Duration::from_std(self.cfg.relay.retain_published)
                    .unwrap_or(chrono::Duration::MAX);
            let n = outbox::purge_published(&self.session.client, before, 10_000).await?;
            if n > 0 {
                debug!(rows = n, "purged published outbox rows");
            }
        }
        tokio::select! {
            _ = self.session.wake.notified() => {}
            _ = tokio::time::sleep(self.cfg.relay.poll_interval) => {}
            _ = self.shutdown.cancelled() => {}
            _ = self.session.closed.cancelled() => {}
        }
        Ok(())
    }

    /// Publishes one row, or rejects it when it cannot become a valid event.
    async fn send(&mut self, row: &outbox::Row) -> Result<Sent, Interrupt> {
        let out = match event::outbound(&self.profile, self.catalog, row) {
            Ok(out) => out,
            Err(e) => return self.reject(row, e.rejection()).await,
        };
        let Some(route) = self.route(&out.subject) else {
            let streams: Vec<&str> = self.routes.iter().map(|r| r.stream.as_str()).collect();
            return self
                .reject(
                    row,
                    Rejection {
                        kind: "unroutable".into(),
                        path: None,
                        rule: None,
                        reason: format!(
                            "subject {} is captured by none of the relay's streams ({}): add it to a stream's subjects, or fix the event's type or hierarchyScope",
                            out.subject,
                            streams.join(", ")
                        ),
                    },
                )
                .await;
        };
        let size = out.wire_size();
        let limit = [Some(self.max_payload), self.routes[route].max_msg_size]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(usize::MAX);
        if size > limit {
            return self.reject(row, too_large(size, limit)).await;
        }
        let seq = self.tails[route] + 1;
        let msg = PublishMessage::build()
            .payload(out.payload)
            .headers(out.headers)
            .expected_last_sequence(self.tails[route]);
        let sent = InFlight {
            id: row.id,
            route,
            seq,
        };
        match self.js.send_publish(out.subject, msg).await {
            Ok(ack) => {
                self.tails[route] = seq;
                self.cursor = row.id;
                self.in_flight
                    .push_back(async move { (sent, ack.await) }.boxed());
                Ok(Sent::Queued)
            }
            Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                self.reject(row, too_large(size, self.max_payload)).await
            }
            Err(e) => {
                // Not queued: nothing after it may go out; a failed future makes the pipeline
                // suspect so the next harvest recovers.
                self.in_flight
                    .push_back(async move { (sent, Err(e)) }.boxed());
                Ok(Sent::NotQueued)
            }
        }
    }

    /// Keeps a row that cannot be published as rejected, with its reason. Its key's later rows
    /// wait behind it. Under `on_invalid = "stop"` the relay then stops.
    async fn reject(&mut self, row: &outbox::Row, r: Rejection) -> Result<Sent, Interrupt> {
        error!(id = row.id, key = %row.key, kind = %r.kind, reason = %r.reason, "outbox row rejected; its key waits");
        if !outbox::reject(&self.session.client, self.epoch, row.id, &r).await? {
            return Err(Interrupt::LeaseLost(self.epoch));
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

    fn route(&mut self, nats_subject: &str) -> Option<usize> {
        // Streams are split by category: cache on the subject with its key token removed.
        let class = nats_subject
            .rsplit_once('.')
            .map_or(nats_subject, |(c, _)| c);
        if let Some(&r) = self.route_cache.get(class) {
            return Some(r);
        }
        let found = self
            .routes
            .iter()
            .position(|r| r.subjects.iter().any(|f| subject::matches(f, nats_subject)))?;
        self.route_cache.insert(class.to_owned(), found);
        Some(found)
    }

    /// Classifies one ack into the harvest. Every mark it makes is truthful: a duplicate ack
    /// names where the original landed, a surprising sequence is still where this message landed.
    fn check(&mut self, (sent, result): Acked) {
        let h = &mut self.harvest;
        match result {
            Ok(ack) => {
                let expected_stream = &self.routes[sent.route].stream;
                if ack.duplicate || ack.sequence != sent.seq || &ack.stream != expected_stream {
                    warn!(
                        id = sent.id,
                        stream = %ack.stream,
                        seq = ack.sequence,
                        expected = sent.seq,
                        duplicate = ack.duplicate,
                        "publish did not land where predicted; reconciling"
                    );
                    self.suspect = true;
                }
                if !self.suspect {
                    h.watermarks.insert(sent.route, ack.sequence);
                }
                h.marks.push(Mark {
                    id: sent.id,
                    stream: ack.stream,
                    seq: ack.sequence,
                });
            }
            Err(e) => {
                if !self.suspect {
                    warn!(id = sent.id, error = %e, "publish failed; reconciling");
                }
                self.suspect = true;
            }
        }
    }

    /// Records the harvest once it fills a batch, or when nothing else is coming to join it
    /// (nothing in flight, or the pipeline must be recovered). Each mark statement costs
    /// PostgreSQL a fixed part besides its rows, and nothing waits for marks: events are in the
    /// stream already, and a crash before the mark is what reconciliation repairs.
    async fn record_when_due(&mut self) -> Result<(), Interrupt> {
        if self.harvest.marks.len() >= self.cfg.relay.batch_size
            || self.in_flight.is_empty()
            || self.suspect
            || self.shutdown.is_cancelled()
        {
            self.record().await?;
        }
        Ok(())
    }

    /// Records every harvested ack in one statement, sent on the marker session without waiting
    /// for its answer (after the previous one's).
    async fn record(&mut self) -> Result<(), Interrupt> {
        self.finish_marking().await?;
        let h = std::mem::take(&mut self.harvest);
        if h.marks.is_empty() {
            return Ok(());
        }
        self.retry.reset();
        let watermarks: Vec<(String, u64)> = h
            .watermarks
            .iter()
            .map(|(&r, &seq)| (self.routes[r].stream.clone(), seq))
            .collect();
        let (client, prepared, epoch) = (&self.marker.client, self.marker_prepared, self.epoch);
        self.marking = Some(send_now(
            async move { outbox::mark(client, prepared, epoch, &h.marks, &watermarks).await }
                .boxed(),
        ));
        Ok(())
    }

    /// Waits for the mark statement in flight, if any.
    async fn finish_marking(&mut self) -> Result<(), Interrupt> {
        match self.marking.take() {
            Some(marking) => lease_held(marking.await, self.epoch).map(drop),
            None => Ok(()),
        }
    }

    /// Awaits every publish in flight and records those that landed (a failure among them
    /// leaves the pipeline suspect, for the main loop to reconcile).
    async fn drain(&mut self) -> Result<(), Interrupt> {
        while let Some(acked) = self.in_flight.next().await {
            self.check(acked);
        }
        self.read_from_start();
        self.record().await?;
        self.finish_marking().await
    }

    fn read_from_start(&mut self) {
        self.cursor = 0;
        self.after = None;
        self.read_ahead = None;
        self.held.clear();
    }

    /// Sends the read of the batch after `cursor` now, to be taken when room allows.
    fn read_ahead(&mut self, cursor: i64, limit: usize, after: String) {
        let (client, prepared) = (&self.session.client, self.prepared);
        let fetched = send_now(
            async move { outbox::fetch(client, prepared, cursor, limit as i64, Some(&after)).await }
                .boxed(),
        );
        self.read_ahead = Some(ReadAhead {
            cursor,
            limit,
            fetched,
        });
    }

    /// After a failure: drain, reconcile every stream (retrying while NATS is away), then pause
    /// before publishing again, longer each time nothing lands in between.
    async fn recover(&mut self) -> Result<(), Interrupt> {
        self.drain().await?;
        self.reconcile_retrying().await?;
        tokio::select! {
            _ = self.retry.wait(self.shutdown) => {}
            _ = self.session.closed.cancelled() => {}
        }
        Ok(())
    }

    async fn reconcile_retrying(&mut self) -> Result<(), Interrupt> {
        let mut backoff = Backoff::new(self.cfg.relay.max_backoff);
        loop {
            match self.reconcile().await {
                Ok(()) => return Ok(()),
                Err(Interrupt::Nats(e)) => {
                    warn!(error = %e, "cannot reconcile with JetStream yet; retrying");
                    tokio::select! {
                        more = backoff.wait(self.shutdown) => if !more { return Ok(()) },
                        _ = self.session.closed.cancelled() => return Err(Interrupt::SessionClosed),
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Marks every row whose message is in a stream beyond the recorded watermark, and sets the
    /// predicted tails to the streams' real ones.
    async fn reconcile(&mut self) -> Result<(), Interrupt> {
        debug_assert!(self.in_flight.is_empty());
        self.read_from_start();
        self.max_payload = self.js.client().server_info().max_payload;
        for (i, route) in self.routes.iter().enumerate() {
            let mut stream = self
                .js
                .get_stream(&route.stream)
                .await
                .map_err(|e| Interrupt::Nats(format!("stream info {}: {e}", route.stream)))?;
            let info = stream
                .info()
                .await
                .map_err(|e| Interrupt::Nats(format!("stream info {}: {e}", route.stream)))?;
            let (created, first, last) = (
                info.created,
                info.state.first_sequence.max(1),
                info.state.last_sequence,
            );
            let from = match outbox::watermark(&self.session.client, &route.stream).await? {
                Some((c, seen)) if c.timestamp_micros() == created.timestamp_micros() => {
                    (seen + 1).max(first)
                }
                Some(_) => {
                    warn!(stream = %route.stream, "stream was created again since last seen; reading it from its start");
                    first
                }
                None => first,
            };
            if from <= last {
                let n = read_back(
                    &self.session.client,
                    self.prepared,
                    self.epoch,
                    &self.profile.source,
                    &stream,
                    &route.stream,
                    (from, last),
                )
                .await?;
                info!(stream = %route.stream, from, to = last, recorded = n, "reconciled with the stream");
            }
            if !outbox::set_watermark(
                &self.session.client,
                self.epoch,
                &route.stream,
                created,
                last,
            )
            .await?
            {
                return Err(Interrupt::LeaseLost(self.epoch));
            }
            self.tails[i] = last;
        }
        self.suspect = false;
        Ok(())
    }
}

/// The answer to the mark statement in flight; never, when there is none.
async fn answer(
    marking: &mut Option<BoxFuture<'_, Result<outbox::Marked, tokio_postgres::Error>>>,
) -> Result<outbox::Marked, tokio_postgres::Error> {
    match marking {
        Some(m) => m.await,
        None => std::future::pending().await,
    }
}

/// A mark statement's outcome: an error, or the lease gone, interrupts the session.
fn lease_held(
    marked: Result<outbox::Marked, tokio_postgres::Error>,
    epoch: i64,
) -> Result<outbox::Marked, Interrupt> {
    let m = marked?;
    if !m.lease_held {
        return Err(Interrupt::LeaseLost(epoch));
    }
    Ok(m)
}

/// Polls a statement's future once, so that tokio-postgres sends it now (it sends on the first
/// poll); the answer waits in the connection until the future is awaited.
fn send_now<'a, T: Send + 'a>(mut fut: BoxFuture<'a, T>) -> BoxFuture<'a, T> {
    let mut cx = std::task::Context::from_waker(futures::task::noop_waker_ref());
    match fut.poll_unpin(&mut cx) {
        std::task::Poll::Ready(done) => futures::future::ready(done).boxed(),
        std::task::Poll::Pending => fut,
    }
}

/// Reads sequences `from..=to` of a stream and marks the rows this outbox sent there.
async fn read_back(
    client: &tokio_postgres::Client,
    prepared: &outbox::Prepared,
    epoch: i64,
    source: &str,
    stream: &jetstream::stream::Stream,
    name: &str,
    (from, to): (u64, u64),
) -> Result<u64, Interrupt> {
    let mut reads = futures::stream::iter(from..=to)
        .map(|seq| async move { (seq, stream.get_raw_message(seq).await) })
        .buffered(64);
    let mut marks = Vec::new();
    let mut recorded = 0;
    while let Some((seq, got)) = reads.next().await {
        match got {
            Ok(msg) => {
                let ours = msg
                    .headers
                    .get(async_nats::header::NATS_MESSAGE_ID)
                    .and_then(|v| event::parse_msg_id(v.as_str()))
                    .filter(|(s, _)| *s == source);
                match ours {
                    Some((_, id)) => marks.push(Mark {
                        id,
                        stream: name.to_owned(),
                        seq,
                    }),
                    None => debug!(seq, "message not from this outbox; skipped"),
                }
            }
            Err(e) if is_no_message(e.kind()) => {}
            Err(e) => return Err(Interrupt::Nats(format!("reading {name} #{seq}: {e}"))),
        }
        if marks.len() >= 1000 {
            recorded += mark_all(client, prepared, epoch, std::mem::take(&mut marks)).await?;
        }
    }
    recorded += mark_all(client, prepared, epoch, marks).await?;
    Ok(recorded)
}

/// A sequence that was deleted (limits, purge): nothing to reconcile there.
fn is_no_message(kind: RawMessageErrorKind) -> bool {
    match kind {
        RawMessageErrorKind::NoMessageFound => true,
        RawMessageErrorKind::JetStream(e) => e.error_code() == ErrorCode::NO_MESSAGE_FOUND,
        _ => false,
    }
}

async fn mark_all(
    client: &tokio_postgres::Client,
    prepared: &outbox::Prepared,
    epoch: i64,
    marks: Vec<Mark>,
) -> Result<u64, Interrupt> {
    if marks.is_empty() {
        return Ok(0);
    }
    let marked = outbox::mark(client, prepared, epoch, &marks, &[]).await;
    Ok(lease_held(marked, epoch)?.rows)
}

fn too_large(size: usize, limit: usize) -> Rejection {
    Rejection {
        kind: "too_large".into(),
        path: None,
        rule: Some("max_payload".into()),
        reason: format!(
            "the message would be {size} bytes, over the limit of {limit} (the server's max_payload or the stream's max_msg_size): shrink the data (e.g. link to large content instead of embedding it)"
        ),
    }
}

/// Exponential back-off, 100 ms doubling up to a ceiling.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(max: Duration) -> Backoff {
        Backoff {
            next: Duration::from_millis(100),
            max,
        }
    }

    fn reset(&mut self) {
        self.next = Duration::from_millis(100);
    }

    /// Sleeps; false if shutdown came first.
    async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let d = self.next.min(self.max);
        self.next = (self.next * 2).min(self.max);
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = shutdown.cancelled() => false,
        }
    }
}

/// Recorded in the lease so operators see which process is active.
fn holder_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("{host}:{}", std::process::id())
}
