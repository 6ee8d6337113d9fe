//! `mes-events push status`: per pushed system and consumer, from the server (with an identity
//! that may read consumer info, such as the admin's): events waiting, in flight or in retry,
//! whether a push instance holds the pin (and since when), the last delivery and ack, and the
//! consumer's dead letters with the last one's reason. What only a running push process knows
//! (a paused endpoint, its last error) is on its `/metrics`.

use async_nats::jetstream::{self, Context};
use serde::Serialize;

use super::endpoint::shown_url;
use crate::provision::decl::PushDecl;
use crate::provision::Declaration;
use crate::read::deadletter::{self, DeadLetter};

/// One pushed consumer's state.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub system: String,
    /// The endpoint, without its query.
    pub endpoint: String,
    pub stream: String,
    pub consumer: String,
    /// `None` when the consumer does not exist (run `provision apply`).
    pub state: Option<State>,
}

#[derive(Debug, Clone, Serialize)]
pub struct State {
    /// Not yet delivered to a push instance.
    pub waiting: u64,
    /// Being delivered or waiting for a retry.
    pub in_flight: usize,
    /// Handed out again (after a failed attempt or a lost instance).
    pub redelivered: usize,
    /// Since when a push instance holds the pin; `None`: no instance pulls.
    pub pinned_since: Option<chrono::DateTime<chrono::Utc>>,
    pub last_delivered: Option<chrono::DateTime<chrono::Utc>>,
    pub last_acked: Option<chrono::DateTime<chrono::Utc>>,
    pub dead_letters: usize,
    /// Why the latest dead letter was given up on.
    pub last_dead_letter: Option<String>,
}

impl Row {
    /// What is wrong, if anything: a missing consumer, or events waiting with no instance
    /// delivering.
    pub fn problem(&self) -> Option<String> {
        match &self.state {
            None => Some(format!(
                "consumer {}/{} does not exist: run `mes-events provision apply`",
                self.stream, self.consumer
            )),
            Some(s) if s.pinned_since.is_none() && (s.waiting > 0 || s.in_flight > 0) => {
                Some(format!(
                    "{}: {} event(s) wait and no `mes-events push` delivers them",
                    self.system,
                    s.waiting + s.in_flight as u64
                ))
            }
            _ => None,
        }
    }
}

/// Every pushed consumer of the declaration, as the server and the dead letters say.
pub async fn gather(js: &Context, d: &Declaration) -> Result<Vec<Row>, String> {
    let dead: Vec<DeadLetter> = deadletter::list(js, deadletter::DEFAULT_STREAM)
        .await
        .unwrap_or_default();
    let mut rows = Vec::new();
    for sys in &d.systems {
        let Some(p) = &sys.push else { continue };
        for (durable, c) in &sys.consumers {
            let stream = c.stream.get_ref().clone();
            let info = match js.get_stream_no_info(&stream).await {
                Ok(s) => match s.consumer_info(durable).await {
                    Ok(i) => Some(i),
                    Err(e) if crate::read::consumer_missing(&e) => None,
                    Err(e) => return Err(format!("consumer {stream}/{durable}: {e}")),
                },
                Err(e) => return Err(format!("stream {stream}: {e}")),
            };
            let state = info.map(|i: jetstream::consumer::Info| {
                let mine: Vec<&DeadLetter> = dead
                    .iter()
                    .filter(|l| l.stream == stream && l.consumer == *durable)
                    .collect();
                State {
                    waiting: i.num_pending,
                    in_flight: i.num_ack_pending,
                    redelivered: i.num_redelivered,
                    pinned_since: i
                        .priority_groups
                        .iter()
                        .find(|g| g.group == PushDecl::GROUP && g.pinned_client_id.is_some())
                        .and_then(|g| g.pinned_ts),
                    last_delivered: i.delivered.last_active,
                    last_acked: i.ack_floor.last_active,
                    dead_letters: mine.len(),
                    last_dead_letter: mine
                        .last()
                        .map(|l| l.why.clone().unwrap_or_else(|| l.reason.clone())),
                }
            });
            rows.push(Row {
                system: sys.decl.name.get_ref().clone(),
                endpoint: shown_url(p.url.get_ref()),
                stream,
                consumer: durable.clone(),
                state,
            });
        }
    }
    Ok(rows)
}
