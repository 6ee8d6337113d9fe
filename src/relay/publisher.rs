//! Publishing: rows become messages on the stream that captures their subject, pipelined, each
//! expecting the stream's predicted tail (`Nats-Expected-Last-Sequence`), so that if message k
//! fails nothing after it lands and a second relay publishing at the same time cannot land
//! anything without having seen everything before it.
//!
//! Owns the routes, the predicted tails, the publishes in flight and whether the pipeline is
//! suspect. Never touches PostgreSQL: what landed goes to the recorder, a row that cannot be
//! published goes back to the caller as a rejection.

use std::collections::HashMap;

use async_nats::jetstream::context::{Context, GetStreamErrorKind, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, ErrorCode};
use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, StreamExt};
use futures::FutureExt;
use tracing::{error, info, warn};

use super::error::{Interrupt, NatsError, RelayError};
use crate::event::catalog::Catalog;
use crate::event::{self, subject, Profile, Rejection, Row};
use crate::store::outbox::Mark;

/// A stream this relay writes, and the subjects it captures.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    pub stream: String,
    pub subjects: Vec<String>,
    /// The stream's `max_msg_size`, when it has one: larger messages are refused by the server.
    pub max_msg_size: Option<usize>,
}

/// Reads the configuration of the streams named `names`.
pub(crate) async fn routes(js: &Context, names: &[String]) -> Result<Vec<Route>, Interrupt> {
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
                if let GetStreamErrorKind::JetStream(je) = e.kind() {
                    if je.error_code() == ErrorCode::STREAM_NOT_FOUND {
                        return Err(RelayError::StreamMissing {
                            stream: name.clone(),
                        }
                        .into());
                    }
                }
                return Err(NatsError::GetStream {
                    stream: name.clone(),
                    source: e,
                }
                .into());
            }
        }
    }
    Ok(routes)
}

/// What became of one row.
pub(crate) enum Publish {
    /// Published, awaiting its PubAck.
    Queued,
    /// It cannot become a message any stream takes: keep it as rejected.
    Refused(Rejection),
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
}

pub(crate) type Acked = (
    InFlight,
    Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
);

/// A message that landed: where, and whether the watermark may move there.
pub(crate) struct Landed {
    pub mark: Mark,
    /// The route and sequence of an ack that landed as predicted while the pipeline was not
    /// suspect: everything up to it is recorded once this is, so the watermark may move there.
    pub watermark: Option<(usize, u64)>,
}

pub(crate) struct Publisher<'a> {
    js: &'a Context,
    catalog: &'a Catalog,
    profile: Profile,
    pub routes: &'a [Route],
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
    /// Per route, why its stream refuses messages, as last told to the operator (told again
    /// only when it changes, and when the stream takes messages again).
    refusing: HashMap<usize, Refusal>,
}

/// Why a stream does not take messages, as far as the relay can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The server answered with a limit: what it said, and what to change.
    Limit { said: String, fix: &'static str },
    /// No answer in time: NATS unreachable, a leader being elected, or a server that cannot
    /// write (a full disk shows only as this; its log says so).
    NoAnswer,
}

impl Refusal {
    /// The refusal a failed publish shows, if it is one.
    pub fn of(e: &jetstream::context::PublishError) -> Option<Refusal> {
        if e.kind() == PublishErrorKind::TimedOut {
            return Some(Refusal::NoAnswer);
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
        routes: &'a [Route],
    ) -> Publisher<'a> {
        Publisher {
            js,
            catalog,
            profile,
            routes,
            route_cache: HashMap::new(),
            tails: vec![0; routes.len()],
            max_payload: usize::MAX,
            in_flight: FuturesOrdered::new(),
            suspect: false,
            refusing: HashMap::new(),
        }
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

    /// Publishes one row, or says why it cannot be published.
    pub async fn publish(&mut self, row: &Row) -> Publish {
        let out = match event::outbound(&self.profile, self.catalog, row) {
            Ok(out) => out,
            Err(e) => return Publish::Refused(e.rejection()),
        };
        let Some(route) = self.route(&out.subject) else {
            let streams: Vec<&str> = self.routes.iter().map(|r| r.stream.as_str()).collect();
            return Publish::Refused(Rejection::unroutable(&out.subject, &streams));
        };
        let size = out.wire_size();
        let limit = [Some(self.max_payload), self.routes[route].max_msg_size]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(usize::MAX);
        if size > limit {
            return Publish::Refused(Rejection::too_large(size, limit));
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
        };
        match self.js.send_publish(out.subject, msg).await {
            Ok(ack) => {
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
                if self.refusing.remove(&sent.route).is_some() {
                    info!(stream = %self.routes[sent.route].stream, "stream takes messages again");
                }
                let watermark = (!self.suspect).then_some((sent.route, ack.sequence));
                Some(Landed {
                    mark: Mark {
                        id: sent.id,
                        stream: ack.stream,
                        seq: ack.sequence,
                    },
                    watermark,
                })
            }
            Err(e) => {
                let stream = &self.routes[sent.route].stream;
                match Refusal::of(&e) {
                    Some(r) if self.refusing.get(&sent.route) != Some(&r) => {
                        match &r {
                            Refusal::Limit { said, fix } => error!(
                                %stream, server = %said,
                                "stream refuses messages; publishing waits until it takes them again: {fix}"
                            ),
                            Refusal::NoAnswer => error!(
                                %stream, id = sent.id,
                                "no PubAck in time; publishing waits: NATS unreachable, a stream leader being elected, or a server that cannot write (disk full: see the server's log)"
                            ),
                        }
                        self.refusing.insert(sent.route, r);
                    }
                    Some(_) => {}
                    None if !self.suspect => {
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
