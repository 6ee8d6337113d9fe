//! Recording: where each row landed, written a batch at a time on the second session, without
//! waiting for the answer. A row is marked with its stream sequence only from a PubAck or from
//! the stream itself, never before; each mark statement is fenced by the epoch.
//!
//! Owns the acks not yet recorded and the one mark statement in flight.

use std::collections::HashMap;

use futures::future::BoxFuture;
use futures::FutureExt;

use super::error::Interrupt;
use super::publisher::{Landed, Route};
use crate::event;
use crate::store::outbox::{self, Mark, Marked, Prepared, Watermark};
use crate::store::session::{send_now, Session};

/// Acks not yet recorded.
#[derive(Default)]
struct Harvest {
    marks: Vec<Mark>,
    /// Per route, the highest sequence of an ack that landed as predicted while the pipeline was
    /// not suspect (everything up to it is recorded, so the watermark may move there), with the
    /// id and record time of its row.
    watermarks: HashMap<usize, (u64, i64, chrono::DateTime<chrono::Utc>)>,
}

type Marking<'a> = BoxFuture<'a, Result<Marked, tokio_postgres::Error>>;

pub(crate) struct Recorder<'a> {
    session: &'a Session,
    prepared: &'a Prepared,
    epoch: i64,
    /// This outbox's CloudEvents source (watermarks record the `Nats-Msg-Id` there).
    source: String,
    /// Whether what is recorded is also kept (the durability horizon, which may change, is not
    /// zero).
    stability: &'a super::durability::Stability,
    /// The mark statement sent and not answered yet. At most one: the next waits for it, so a
    /// failure (or a lost lease) surfaces before anything else is recorded.
    marking: Option<Marking<'a>>,
    harvest: Harvest,
}

impl<'a> Recorder<'a> {
    pub fn new(
        session: &'a Session,
        prepared: &'a Prepared,
        epoch: i64,
        source: String,
        stability: &'a super::durability::Stability,
    ) -> Recorder<'a> {
        Recorder {
            session,
            prepared,
            epoch,
            source,
            stability,
            marking: None,
            harvest: Harvest::default(),
        }
    }

    /// Whether its session has ended.
    pub fn closed(&self) -> bool {
        self.session.closed.is_cancelled()
    }

    pub fn add(&mut self, landed: Landed) {
        if let Some((route, seq)) = landed.watermark {
            self.harvest
                .watermarks
                .insert(route, (seq, landed.mark.id, landed.recorded_at));
        }
        self.harvest.marks.push(landed.mark);
    }

    /// Acks harvested and not yet sent to be recorded.
    pub fn unrecorded(&self) -> usize {
        self.harvest.marks.len()
    }

    /// Records every harvested ack in one statement, sent now without waiting for its answer
    /// (after the previous one's). False when there was nothing to record.
    pub async fn record(&mut self, routes: &[Route]) -> Result<bool, Interrupt> {
        self.finish().await?;
        let h = std::mem::take(&mut self.harvest);
        if h.marks.is_empty() {
            return Ok(false);
        }
        let watermarks: Vec<Watermark> = h
            .watermarks
            .iter()
            .map(|(&r, &(seq, id, recorded_at))| Watermark {
                stream: routes[r].stream.clone(),
                seq,
                msg_id: event::msg_id(&self.source, &event::event_id(id, recorded_at).to_string()),
            })
            .collect();
        let keep = self.stability.horizon().keeps();
        let (session, prepared, epoch) = (self.session, self.prepared, self.epoch);
        self.marking = Some(send_now(
            async move {
                outbox::mark(
                    &session.client,
                    prepared,
                    epoch,
                    &h.marks,
                    &watermarks,
                    keep,
                )
                .await
            }
            .boxed(),
        ));
        Ok(true)
    }

    /// Waits for the mark statement in flight, if any.
    pub async fn finish(&mut self) -> Result<(), Interrupt> {
        match self.marking.take() {
            Some(marking) => lease_held(marking.await, self.epoch).map(drop),
            None => Ok(()),
        }
    }

    /// The answer to the mark statement in flight; never, when there is none. Hand it to
    /// [`Recorder::answered`].
    pub async fn answer(&mut self) -> Result<Marked, tokio_postgres::Error> {
        match &mut self.marking {
            Some(m) => m.await,
            None => std::future::pending().await,
        }
    }

    /// Takes the answer [`Recorder::answer`] gave.
    pub fn answered(
        &mut self,
        marked: Result<Marked, tokio_postgres::Error>,
    ) -> Result<(), Interrupt> {
        self.marking = None;
        lease_held(marked, self.epoch).map(drop)
    }
}

/// A mark statement's outcome: an error, or the lease gone, interrupts the session.
pub(crate) fn lease_held(
    marked: Result<Marked, tokio_postgres::Error>,
    epoch: i64,
) -> Result<Marked, Interrupt> {
    let m = marked?;
    if !m.lease_held {
        return Err(Interrupt::LeaseLost(epoch));
    }
    crate::metrics::get().rows_marked.inc_by(m.rows);
    Ok(m)
}
