//! Reconciliation, on activation and after any failure: read each stream from the recorded
//! watermark to its tail, map every message back to its outbox row through `Nats-Msg-Id`, and
//! mark those rows; then set the predicted tails to the streams' real ones. No duplicate, whatever
//! the outage length or the duplicate window.
//!
//! Owns reading the streams back; the marks and watermarks are the store's statements.
//!
//! A missing stream is skipped (and marked down: its rows wait), the others are reconciled.
//!
//! A stream that went back in time (a power cut took what its server had not synced) is
//! restored first: see [`restore`](super::restore).
//!
//! Never moves a watermark past a message it has not recorded.

use async_nats::jetstream::context::Context;
use async_nats::jetstream::stream::{RawMessageErrorKind, Stream};
use async_nats::jetstream::ErrorCode;
use futures::stream::StreamExt;
use tracing::{debug, info, warn};

use super::durability::Stability;
use super::error::{Interrupt, NatsError};
use super::leader::Leadership;
use super::publisher::{is_not_found, Publisher, Refusal, Route};
use super::recorder::lease_held;
use super::restore::AtWatermark;
use crate::event;
use crate::store::lease;
use crate::store::outbox::{self, Mark};

/// Marks every row whose message is in a stream beyond the recorded watermark, and sets the
/// publisher's predicted tails (and the server's `max_payload`) to the real ones. Nothing may be
/// in flight.
pub(crate) async fn reconcile(
    js: &Context,
    lead: &Leadership,
    publisher: &mut Publisher<'_>,
    stability: &Stability,
) -> Result<(), Interrupt> {
    let horizon = stability.horizon();
    let keep = horizon.keeps();
    debug_assert_eq!(publisher.in_flight(), 0);
    crate::metrics::get().reconciliations.inc();
    let client = &lead.session.client;
    publisher.max_payload = js.client().server_info().max_payload;
    let names: Vec<String> = publisher.routes.iter().map(|r| r.stream.clone()).collect();
    for (i, name) in names.iter().enumerate() {
        let mut stream = match js.get_stream(name).await {
            Ok(s) => s,
            // Its rows wait; the other streams go on.
            Err(e) if is_not_found(&e) => {
                publisher.went_down(i, Refusal::Missing);
                continue;
            }
            Err(source) => {
                let e = NatsError::GetStream {
                    stream: name.clone(),
                    source,
                };
                if unavailable(js, publisher, i, &e) {
                    continue;
                }
                return Err(e.into());
            }
        };
        let info = match stream.info().await {
            Ok(info) => info.clone(),
            Err(source) => {
                let e = NatsError::Info {
                    stream: name.clone(),
                    source,
                };
                if unavailable(js, publisher, i, &e) {
                    continue;
                }
                return Err(e.into());
            }
        };
        // Its subjects and limits as they are now (a stream created again, or changed).
        let route = Route::of(name, &info.config);
        if publisher.is_missing(i) {
            publisher.came_up(i, Some(route));
        } else {
            publisher.refresh(i, route);
        }
        let (created, first, last) = (
            info.created,
            info.state.first_sequence.max(1),
            info.state.last_sequence,
        );
        let from = match lease::watermark(client, name).await? {
            Some(mark) if mark.created.timestamp_micros() == created.timestamp_micros() => {
                let source = publisher.source().to_owned();
                let at =
                    match super::restore::check(lead, &source, &stream, name, &mark, (first, last))
                        .await
                    {
                        Ok(at) => at,
                        Err(Interrupt::Nats(e)) if unavailable(js, publisher, i, &e) => continue,
                        Err(e) => return Err(e),
                    };
                if at == AtWatermark::Same {
                    (mark.last_seq + 1).max(first)
                } else {
                    // Went back in time: nothing is sent to it until what it lost is back in
                    // the outbox (then published again, after the stream's tail).
                    match super::restore::restore(
                        lead,
                        &source,
                        &stream,
                        name,
                        &mark,
                        (first, last),
                        &horizon,
                    )
                    .await
                    {
                        Ok(intact_to) => (intact_to + 1).max(first),
                        Err(Interrupt::Nats(e)) if unavailable(js, publisher, i, &e) => continue,
                        Err(e) => return Err(e),
                    }
                }
            }
            seen => {
                if seen.is_some() {
                    warn!(stream = %name, "stream was created again since last seen; reading it from its start");
                }
                if !lease::begin_incarnation(client, lead.epoch, name, created).await? {
                    return Err(Interrupt::LeaseLost(lead.epoch));
                }
                first
            }
        };
        let mut last_msg_id = None;
        if from <= last {
            let n = match read_back(lead, publisher.source(), &stream, name, (from, last), keep)
                .await
            {
                Ok((n, at_last)) => {
                    last_msg_id = at_last;
                    n
                }
                // What was read is recorded; the rest is read again once it answers.
                Err(Interrupt::Nats(e)) if unavailable(js, publisher, i, &e) => continue,
                Err(e) => return Err(e),
            };
            info!(stream = %name, from, to = last, recorded = n, "reconciled with the stream");
            crate::metrics::get().reconciled_rows.inc_by(n);
        }
        if !lease::set_watermark(
            client,
            lead.epoch,
            name,
            created,
            last,
            last_msg_id.as_deref(),
        )
        .await?
        {
            return Err(Interrupt::LeaseLost(lead.epoch));
        }
        publisher.tails[i] = last;
    }
    publisher.suspect = false;
    publisher.reconciled();
    Ok(())
}

/// A stream that cannot be read back while NATS is reachable holds only its own rows: it is
/// marked unavailable (and reconciled before anything is sent to it again); the others are
/// reconciled now. With NATS away the whole reconciliation waits instead.
fn unavailable(js: &Context, publisher: &mut Publisher<'_>, i: usize, e: &NatsError) -> bool {
    if !super::publisher::connected(js) {
        return false;
    }
    debug!(error = %super::error::chain(e), "stream cannot be read back");
    publisher.went_down(i, Refusal::Unavailable);
    true
}

/// Reads sequences `from..=to` of a stream and marks the rows this outbox (`source`) sent there.
/// Returns how many, and the `Nats-Msg-Id` of the message at `to` (when there is one).
async fn read_back(
    lead: &Leadership,
    source: &str,
    stream: &Stream,
    name: &str,
    (from, to): (u64, u64),
    keep: bool,
) -> Result<(u64, Option<String>), Interrupt> {
    let mut reads = futures::stream::iter(from..=to)
        .map(|seq| async move { (seq, stream.get_raw_message(seq).await) })
        .buffered(64);
    let mut marks = Vec::new();
    let mut recorded = 0;
    let mut at_to = None;
    // Messages of others in the relay's stream (a dead-letter resend): said once per
    // reconciliation, at INFO: a routine operation, not a fault.
    let mut foreign: Vec<(u64, String)> = Vec::new();
    while let Some((seq, got)) = reads.next().await {
        match got {
            Ok(msg) => {
                let msg_id = msg.headers.get(async_nats::header::NATS_MESSAGE_ID);
                if seq == to {
                    at_to = msg_id.map(|v| v.as_str().to_owned());
                }
                let ours = msg_id
                    .and_then(|v| event::parse_msg_id(v.as_str()))
                    .filter(|(s, _)| *s == source);
                match ours {
                    Some((_, id)) => marks.push(Mark {
                        id,
                        stream: name.to_owned(),
                        seq,
                    }),
                    None => foreign.push((
                        seq,
                        msg_id.map_or_else(|| msg.subject.to_string(), |v| v.as_str().to_owned()),
                    )),
                }
            }
            Err(e) if is_no_message(e.kind()) => {}
            Err(source) => {
                return Err(NatsError::Read {
                    stream: name.to_owned(),
                    seq,
                    source,
                }
                .into())
            }
        }
        if marks.len() >= 1000 {
            recorded += mark_all(lead, std::mem::take(&mut marks), keep).await?;
        }
    }
    recorded += mark_all(lead, marks, keep).await?;
    if let (Some((first, example)), Some((last, _))) = (foreign.first(), foreign.last()) {
        info!(
            stream = %name, count = foreign.len(), first, last, example = %example,
            "the stream holds messages this relay did not publish (a dead-letter resend, or another publisher); skipped, and publishing goes on after them"
        );
    }
    Ok((recorded, at_to))
}

/// A sequence that was deleted (limits, purge): nothing to reconcile there.
pub(crate) fn is_no_message(kind: RawMessageErrorKind) -> bool {
    match kind {
        RawMessageErrorKind::NoMessageFound => true,
        RawMessageErrorKind::JetStream(e) => e.error_code() == ErrorCode::NO_MESSAGE_FOUND,
        _ => false,
    }
}

async fn mark_all(lead: &Leadership, marks: Vec<Mark>, keep: bool) -> Result<u64, Interrupt> {
    if marks.is_empty() {
        return Ok(0);
    }
    let marked = outbox::mark(
        &lead.session.client,
        &lead.prepared,
        lead.epoch,
        &marks,
        &[],
        keep,
    )
    .await;
    Ok(lease_held(marked, lead.epoch)?.rows)
}
