//! Publishing: rows become messages on the stream that captures their subject, pipelined, each
//! expecting the stream's predicted tail (`Nats-Expected-Last-Sequence`), so that if message k
//! fails nothing after it lands and a second relay publishing at the same time cannot land
//! anything without having seen everything before it.
//!
//! One stream's trouble never stops the others: a stream that is missing or refuses messages
//! is *down*, and the rows routed to it are held (not sent, not rejected; they stay pending)
//! until it is due to be tried again, with back-off. Every row of a down stream waits, so the
//! order within it is kept; the other streams' rows go on.
//!
//! Owns the routes, the predicted tails, the publishes in flight, which streams are down and
//! whether the pipeline is suspect. Never touches PostgreSQL: what landed goes to the recorder,
//! a row that cannot be published goes back to the caller as a rejection.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::{
    Context, GetStreamError, GetStreamErrorKind, PublishErrorKind,
};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, ErrorCode};
use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, StreamExt};
use futures::FutureExt;
use tracing::{debug, error, info, warn};

use super::error::{Interrupt, NatsError};
use crate::event::catalog::Catalog;
use crate::event::{self, subject, Profile, Rejection, Row};
use crate::store::outbox::Mark;

/// A stream this relay writes, and the subjects it captures.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    pub stream: String,
    /// Empty while the stream has not been seen (missing since the relay started).
    pub subjects: Vec<String>,
    /// The stream's `max_msg_size`, when it has one: larger messages are refused by the server.
    pub max_msg_size: Option<usize>,
}

impl Route {
    /// The route of a stream as the server describes it.
    pub fn of(name: &str, config: &jetstream::stream::Config) -> Route {
        Route {
            stream: name.to_owned(),
            subjects: config.subjects.clone(),
            max_msg_size: usize::try_from(config.max_message_size)
                .ok()
                .filter(|&n| n > 0),
        }
    }
}

/// Reads the configuration of the streams named `names`. A missing one gets a route without
/// subjects: the relay starts all the same, and holds what it cannot route until it appears.
pub(crate) async fn routes(js: &Context, names: &[String]) -> Result<Vec<Route>, Interrupt> {
    let mut routes = Vec::with_capacity(names.len());
    for name in names {
        match js.get_stream(name).await {
            Ok(s) => routes.push(Route::of(name, &s.cached_info().config)),
            // Missing, or there but not answering while NATS does: held like a missing one.
            Err(e) if is_not_found(&e) || connected(js) => {
                if !is_not_found(&e) {
                    warn!(stream = %name, error = %e, "stream does not answer; its events wait");
                }
                routes.push(Route {
                    stream: name.clone(),
                    subjects: Vec::new(),
                    max_msg_size: None,
                })
            }
            Err(e) => {
                return Err(NatsError::GetStream {
                    stream: name.clone(),
                    source: e,
                }
                .into())
            }
        }
    }
    Ok(routes)
}

/// Whether the NATS connection is up (a failure is then the stream's, not NATS's).
pub(crate) fn connected(js: &Context) -> bool {
    js.client().connection_state() == async_nats::connection::State::Connected
}

/// Whether the server says the stream does not exist.
pub(crate) fn is_not_found(e: &GetStreamError) -> bool {
    matches!(e.kind(), GetStreamErrorKind::JetStream(je) if je.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

/// What became of one row.
pub(crate) enum Publish {
    /// Published, awaiting its PubAck.
    Queued,
    /// It cannot become a message any stream takes: keep it as rejected.
    Refused(Rejection),
    /// Its stream is down (or, missing since start, unknown): it waits, pending.
    Held,
    /// Not sent: the caller's `may_send` said no.
    Paused,
    /// Could not be queued (the client refused it); the pipeline is now suspect.
    NotQueued,
}

/// One publish awaiting its PubAck.
pub(crate) struct InFlight {
    id: i64,
    route: usize,
    /// Its event type and when it was sent, for the metrics.
    ty: String,
    sent_at: std::time::Instant,
    /// The stream sequence it must land at.
    seq: u64,
    /// Its row's record time: with the id, what its `Nats-Msg-Id` is made of.
    recorded_at: chrono::DateTime<chrono::Utc>,
}

pub(crate) type Acked = (
    InFlight,
    Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
);

/// A message that landed: where, and whether the watermark may move there.
pub(crate) struct Landed {
    pub mark: Mark,
    /// Its row's record time (its `Nats-Msg-Id` is made of it and the id).
    pub recorded_at: chrono::DateTime<chrono::Utc>,
    /// The route and sequence of an ack that landed as predicted while the pipeline was not
    /// suspect: everything up to it is recorded once this is, so the watermark may move there.
    pub watermark: Option<(usize, u64)>,
}

pub(crate) struct Publisher<'a> {
    js: &'a Context,
    catalog: &'a Catalog,
    profile: Profile,
    pub routes: Vec<Route>,
    /// Subject's first two tokens after the location → route, to skip matching on every row.
    route_cache: HashMap<String, usize>,
    /// Predicted last sequence of each route's stream.
    pub tails: Vec<u64>,
    /// The connected server's `max_payload` (refreshed on every reconciliation).
    pub max_payload: usize,
    in_flight: FuturesOrdered<BoxFuture<'static, Acked>>,
    /// Something did not land where predicted since the last reconciliation: the pipeline must be
    /// drained and reconciled, and until then no watermark moves.
    pub suspect: bool,
    /// The routes whose streams are down: their rows are held.
    down: HashMap<usize, Down>,
    /// The longest wait between two tries of a down stream.
    max_backoff: Duration,
}

/// The first wait before a down stream is tried again (as the relay's other back-offs).
const FIRST_WAIT: Duration = Duration::from_millis(100);

/// A stream that does not take messages now, and when to try it again.
#[derive(Debug)]
struct Down {
    /// Why, as last told to the operator (told again only when it changes, and when the stream
    /// takes messages again).
    why: Refusal,
    retry_at: Instant,
    /// The wait before `retry_at`; doubled each time a try fails.
    wait: Duration,
    /// Its rows are being sent again, to see whether it takes them.
    trying: bool,
    /// A row was sent to it since it is being tried.
    tried: bool,
}

/// A down stream due to be tried again, for the caller to act on.
pub(crate) enum Due {
    /// Missing or unavailable: ask the server whether it is back (then reconcile it).
    Missing(usize),
    /// Refusing: read its held rows again and send them; the first ack tells.
    Retry,
}

/// Why a stream does not take messages, as far as the relay can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The stream does not exist.
    Missing,
    /// The stream exists but cannot be read back while NATS is reachable (its leader lost, the
    /// server holding it down): it is reconciled before anything is sent to it again.
    Unavailable,
    /// The server answered with a limit: what it said, and what to change.
    Limit { said: String, fix: &'static str },
    /// No answer in time: NATS unreachable, a leader being elected, or a server that cannot
    /// write (a full disk shows only as this; its log says so).
    NoAnswer,
}

impl Refusal {
    /// The refusal a failed publish shows, if it is one.
    pub fn of(e: &jetstream::context::PublishError) -> Option<Refusal> {
        match e.kind() {
            PublishErrorKind::TimedOut => return Some(Refusal::NoAnswer),
            PublishErrorKind::StreamNotFound => return Some(Refusal::Missing),
            _ => {}
        }
        let je = std::error::Error::source(e)?.downcast_ref::<jetstream::Error>()?;
        let said = je.to_string();
        let fix = match je.error_code() {
            ErrorCode::INSUFFICIENT_RESOURCES
            | ErrorCode::STORAGE_RESOURCES_EXCEEDED
            | ErrorCode::MEMORY_RESOURCES_EXCEEDED => {
                "the server's JetStream storage is full: free space where it stores, or raise its max_file_store / max_memory_store, or lower the stream's max_age / max_bytes"
            }
            ErrorCode::STREAM_STORE_FAILED if said.contains("maximum messages per subject") => {
                "the stream is at max_msgs_per_subject with discard = \"new\": raise it, or use discard = \"old\" (declared under nats/, then `mes-events provision apply`)"
            }
            ErrorCode::STREAM_STORE_FAILED if said.contains("maximum messages") => {
                "the stream is at max_msgs with discard = \"new\": raise max_msgs, let consumers free it (work queue), or use discard = \"old\" (declared under nats/, then `mes-events provision apply`)"
            }
            ErrorCode::STREAM_STORE_FAILED if said.contains("maximum bytes") => {
                "the stream is at max_bytes with discard = \"new\": raise max_bytes, or use discard = \"old\" (declared under nats/, then `mes-events provision apply`)"
            }
            ErrorCode::STREAM_STORE_FAILED => "the server could not store the message: see its log",
            _ => return None,
        };
        Some(Refusal::Limit { said, fix })
    }
}

impl<'a> Publisher<'a> {
    pub fn new(
        js: &'a Context,
        catalog: &'a Catalog,
        profile: Profile,
        routes: &[Route],
        max_backoff: Duration,
    ) -> Publisher<'a> {
        let mut p = Publisher {
            js,
            catalog,
            profile,
            routes: routes.to_vec(),
            route_cache: HashMap::new(),
            tails: vec![0; routes.len()],
            max_payload: usize::MAX,
            in_flight: FuturesOrdered::new(),
            suspect: false,
            down: HashMap::new(),
            max_backoff,
        };
        for (i, r) in routes.iter().enumerate() {
            if r.subjects.is_empty() {
                p.went_down(i, Refusal::Missing);
            } else {
                p.set_up(i, true);
            }
        }
        p
    }

    /// Whether route `i`'s stream is down (its rows held).
    pub fn is_down(&self, i: usize) -> bool {
        self.down.get(&i).is_some_and(|d| !d.trying)
    }

    /// When the next down stream is due to be tried again.
    pub fn next_due(&self) -> Option<Instant> {
        self.down
            .values()
            .filter(|d| !d.trying)
            .map(|d| d.retry_at)
            .min()
    }

    /// A down stream due to be tried now, if any. A refusing one is tried from here on: its
    /// rows are sent again (the caller reads from the oldest pending row).
    pub fn due(&mut self) -> Option<Due> {
        let now = Instant::now();
        let (&i, d) = self
            .down
            .iter_mut()
            .filter(|(_, d)| !d.trying && d.retry_at <= now)
            .min_by_key(|(_, d)| d.retry_at)?;
        if matches!(d.why, Refusal::Missing | Refusal::Unavailable) {
            return Some(Due::Missing(i));
        }
        d.trying = true;
        d.tried = false;
        Some(Due::Retry)
    }

    /// After a reconciliation (every row that landed recorded, reading starts again from the
    /// oldest pending row): what was sent to a stream being tried has been accounted for, so
    /// only what is sent from here on tells whether it takes messages.
    pub fn reconciled(&mut self) {
        for d in self.down.values_mut().filter(|d| d.trying) {
            d.tried = false;
        }
    }

    /// The reader reached the end of the outbox: a stream being tried that no row was sent to
    /// has nothing waiting for it, and counts as up until a publish says otherwise.
    pub fn caught_up(&mut self) {
        let idle: Vec<usize> = self
            .down
            .iter()
            .filter(|(_, d)| d.trying && !d.tried)
            .map(|(&i, _)| i)
            .collect();
        for i in idle {
            self.down.remove(&i);
            debug!(stream = %self.routes[i].stream, "nothing waits for this stream any more");
            self.set_up(i, true);
        }
    }

    /// Whether a stream exists but could not be read back (its server down or without leader).
    pub fn any_unavailable(&self) -> bool {
        self.down.values().any(|d| d.why == Refusal::Unavailable)
    }

    /// Route `i`'s stream is (still) down for `why`: its rows are held until the next try.
    pub fn went_down(&mut self, i: usize, why: Refusal) {
        let stream = &self.routes[i].stream;
        let max = self.max_backoff;
        let d = self.down.entry(i).or_insert_with(|| Down {
            why: Refusal::NoAnswer,
            retry_at: Instant::now(),
            wait: Duration::ZERO,
            trying: false,
            tried: false,
        });
        let told = d.wait > Duration::ZERO && d.why == why;
        d.wait = (d.wait * 2).clamp(FIRST_WAIT, max.max(FIRST_WAIT));
        d.retry_at = Instant::now() + d.wait;
        d.trying = false;
        d.why = why;
        if !told {
            match &d.why {
                Refusal::Unavailable => error!(
                    %stream,
                    "stream does not answer while NATS does (its leader lost, or the server holding it down): the events routed to it wait (the other streams' go on) until it can be read back"
                ),
                Refusal::Missing => error!(
                    %stream,
                    "stream missing: the events routed to it wait (the other streams' go on); create it with `mes-events provision apply`"
                ),
                Refusal::Limit { said, fix } => error!(
                    %stream, server = %said,
                    "stream refuses messages; the events routed to it wait until it takes them again (the other streams' go on): {fix}"
                ),
                Refusal::NoAnswer => error!(
                    %stream,
                    "no PubAck in time; the events routed to this stream wait: NATS unreachable, a stream leader being elected, or a server that cannot write (disk full: see the server's log)"
                ),
            }
        }
        self.set_up(i, false);
    }

    /// Whether route `i`'s stream was missing when last looked at.
    pub fn is_missing(&self, i: usize) -> bool {
        self.down
            .get(&i)
            .is_some_and(|d| matches!(d.why, Refusal::Missing | Refusal::Unavailable))
    }

    /// Route `i` as the server describes it now (its subjects or limits may have changed).
    pub fn refresh(&mut self, i: usize, route: Route) {
        if route.subjects != self.routes[i].subjects {
            self.route_cache.clear();
        }
        self.routes[i] = route;
    }

    /// Route `i`'s stream takes messages (again): its route as the server describes it now.
    pub fn came_up(&mut self, i: usize, route: Option<Route>) {
        if let Some(r) = route {
            self.refresh(i, r);
        }
        if let Some(d) = self.down.remove(&i) {
            let stream = &self.routes[i].stream;
            match d.why {
                Refusal::Missing => info!(%stream, "stream is there again; its events go on"),
                _ => info!(%stream, "stream takes messages again"),
            }
        }
        self.set_up(i, true);
    }

    fn set_up(&self, i: usize, up: bool) {
        crate::metrics::get()
            .stream_accepting
            .get_or_create(&crate::metrics::Stream {
                stream: self.routes[i].stream.clone(),
            })
            .set(i64::from(up));
    }

    pub fn source(&self) -> &str {
        &self.profile.source
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The next PubAck (`None` when nothing is in flight).
    pub async fn next(&mut self) -> Option<Acked> {
        self.in_flight.next().await
    }

    /// A PubAck that has already come, if any.
    pub fn ready(&mut self) -> Option<Acked> {
        self.in_flight.next().now_or_never().flatten()
    }

    /// Publishes one row, or says why it cannot be published. `may_send` is asked last, right
    /// before the message leaves (building it takes most of the time: a process frozen in
    /// between must not send it when it wakes on an old lease's word).
    pub async fn publish(&mut self, row: &Row, may_send: impl Fn() -> bool) -> Publish {
        if row.traceparent.is_some() && !event::outbound::traced(row) {
            warn!(id = row.id, traceparent = %row.traceparent.as_deref().unwrap_or_default(), "not a W3C traceparent: the event goes out without it (and its tracestate)");
        }
        let out = match event::outbound(&self.profile, self.catalog, row) {
            Ok(out) => out,
            Err(e) => return Publish::Refused(e.rejection()),
        };
        let Some(route) = self.route(&out.subject) else {
            // A stream missing since start may be the one that captures it: wait for it.
            if self.routes.iter().any(|r| r.subjects.is_empty()) {
                return Publish::Held;
            }
            let streams: Vec<&str> = self.routes.iter().map(|r| r.stream.as_str()).collect();
            return Publish::Refused(Rejection::unroutable(&out.subject, &streams));
        };
        if self.down.get(&route).is_some_and(|d| !d.trying) {
            return Publish::Held;
        }
        let size = out.wire_size();
        let limit = [Some(self.max_payload), self.routes[route].max_msg_size]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(usize::MAX);
        if size > limit {
            return Publish::Refused(Rejection::too_large(size, limit));
        }
        if !may_send() {
            return Publish::Paused;
        }
        let seq = self.tails[route] + 1;
        let msg = PublishMessage::build()
            .payload(out.payload)
            .headers(out.headers)
            .expected_last_sequence(self.tails[route]);
        let sent = InFlight {
            id: row.id,
            route,
            ty: row.ty.clone(),
            sent_at: std::time::Instant::now(),
            seq,
            recorded_at: row.recorded_at,
        };
        match self.js.send_publish(out.subject, msg).await {
            Ok(ack) => {
                // A stream being tried has had something sent: its answer tells.
                if let Some(d) = self.down.get_mut(&route) {
                    d.tried = true;
                }
                self.tails[route] = seq;
                self.in_flight
                    .push_back(async move { (sent, ack.await) }.boxed());
                Publish::Queued
            }
            Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                Publish::Refused(Rejection::too_large(size, self.max_payload))
            }
            Err(e) => {
                // Not queued: nothing after it may go out; a failed future makes the pipeline
                // suspect so the next harvest recovers.
                self.in_flight
                    .push_back(async move { (sent, Err(e)) }.boxed());
                Publish::NotQueued
            }
        }
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

    /// Classifies one ack. Every mark it gives is truthful: a duplicate ack names where the
    /// original landed, a surprising sequence is still where this message landed.
    pub fn check(&mut self, (sent, result): Acked) -> Option<Landed> {
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
                if !ack.duplicate {
                    let m = crate::metrics::get();
                    m.ack_seconds.observe(sent.sent_at.elapsed().as_secs_f64());
                    m.published
                        .get_or_create(&crate::metrics::Published {
                            stream: ack.stream.clone(),
                            r#type: sent.ty.clone(),
                        })
                        .inc();
                }
                if self.down.contains_key(&sent.route) {
                    self.came_up(sent.route, None);
                }
                let watermark = (!self.suspect).then_some((sent.route, ack.sequence));
                Some(Landed {
                    mark: Mark {
                        id: sent.id,
                        stream: ack.stream,
                        seq: ack.sequence,
                    },
                    recorded_at: sent.recorded_at,
                    watermark,
                })
            }
            Err(e) => {
                // No answer while the connection is down is NATS's outage, not the stream's:
                // the reconciliation waits for NATS, and the connection tells its trouble.
                let away =
                    self.js.client().connection_state() != async_nats::connection::State::Connected;
                match Refusal::of(&e).filter(|r| !(away && *r == Refusal::NoAnswer)) {
                    // Only the first failure of a run says so: the later ones of the same
                    // stream failed behind it.
                    Some(r) if !self.is_down(sent.route) => self.went_down(sent.route, r),
                    Some(_) => {}
                    // The stream moved on without this relay: someone else published into it
                    // (a dead-letter resend does, on purpose), or it went back in time.
                    // Reconciliation tells which, and says so where it matters.
                    None if !self.suspect && e.kind() == PublishErrorKind::WrongLastSequence => {
                        let stream = &self.routes[sent.route].stream;
                        debug!(id = sent.id, %stream, error = %e, "the stream is not where this relay left it; reconciling")
                    }
                    None if !self.suspect => {
                        let stream = &self.routes[sent.route].stream;
                        warn!(id = sent.id, %stream, error = %e, "publish failed; reconciling")
                    }
                    None => {}
                }
                self.suspect = true;
                None
            }
        }
    }
}
