//! Dead letters: events a consumer gave up on. The server announces an event that reached its
//! consumer's max deliveries (or was terminated) with an advisory; the `MES_DEAD_LETTERS` stream
//! keeps those advisories. This module lists them with the event itself (read back from its
//! stream by sequence) and sends one back to its consumer alone, on
//! `mes-redeliver.<stream>.<consumer>.<original subject>`, which provisioning adds to every
//! consumer's filters. The original event never moves; other consumers never see the resend.

use async_nats::jetstream::{self, Context};
use cloudevents::AttributesReader;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::event::binding::{self, Rule};
use crate::event::subject::redeliver_subject;

/// The stream the shipped declaration keeps advisories in.
pub const DEFAULT_STREAM: &str = "MES_DEAD_LETTERS";

#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// Sequence of the advisory in the dead-letter stream (what `resend` takes).
    pub id: u64,
    /// When the consumer gave up on it (the advisory's time in the dead-letter stream).
    pub at: Option<chrono::DateTime<chrono::Utc>>,
    /// `max_deliveries` or `terminated`.
    pub reason: String,
    pub stream: String,
    pub consumer: String,
    pub stream_seq: u64,
    pub deliveries: u64,
    /// What the consumer said when it terminated the event (e.g. the push service's last HTTP
    /// status and response excerpt).
    pub why: Option<String>,
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    pub event_subject: Option<String>,
    /// The event's own time (CloudEvents `time`: when it happened).
    pub event_time: Option<chrono::DateTime<chrono::Utc>>,
    /// The event's data (JSON, or its text when it is not JSON).
    pub data: Option<serde_json::Value>,
    /// Why the event itself could not be shown (e.g. aged out of its stream).
    pub problem: Option<String>,
}

#[derive(Deserialize)]
struct Advisory {
    #[serde(rename = "type")]
    ty: String,
    stream: String,
    consumer: String,
    stream_seq: u64,
    deliveries: u64,
    /// A terminated event's reason (`+TERM <reason>`, nats-server 2.11 and later).
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("NATS: {0}")]
    Nats(String),
    #[error("dead letter {0} does not exist (see `mes-events dead-letters list`)")]
    NotFound(u64),
    #[error(
        "dead letter {id}: its event (stream {stream} #{seq}) is no longer in the stream: {why}"
    )]
    EventGone {
        id: u64,
        stream: String,
        seq: u64,
        why: String,
    },
}

fn nats(e: impl std::fmt::Display) -> DeadLetterError {
    DeadLetterError::Nats(e.to_string())
}

/// The advisory at `seq` and when it was stored.
async fn advisory_at<I>(
    dlq: &jetstream::stream::Stream<I>,
    seq: u64,
) -> Option<(Advisory, chrono::DateTime<chrono::Utc>)> {
    let m = dlq.get_raw_message(seq).await.ok()?;
    Some((serde_json::from_slice(&m.payload).ok()?, m.time))
}

/// Every dead letter still in the dead-letter stream, oldest first.
pub async fn list(js: &Context, dlq_stream: &str) -> Result<Vec<DeadLetter>, DeadLetterError> {
    let mut dlq = js.get_stream(dlq_stream).await.map_err(nats)?;
    let state = dlq.info().await.map_err(nats)?.state.clone();
    let mut out = Vec::new();
    if state.messages == 0 {
        return Ok(out);
    }
    let seqs = futures::stream::iter(state.first_sequence..=state.last_sequence)
        .map(|seq| {
            let dlq = &dlq;
            async move { (seq, advisory_at(dlq, seq).await) }
        })
        .buffered(32)
        .collect::<Vec<_>>()
        .await;
    for (id, adv) in seqs {
        let Some((a, at)) = adv else { continue };
        let mut dl = DeadLetter {
            id,
            at: Some(at),
            reason: if a.ty.ends_with("terminated") {
                "terminated"
            } else {
                "max_deliveries"
            }
            .into(),
            stream: a.stream.clone(),
            consumer: a.consumer.clone(),
            stream_seq: a.stream_seq,
            deliveries: a.deliveries,
            why: a.reason.clone().filter(|r| !r.is_empty()),
            event_id: None,
            event_type: None,
            event_subject: None,
            event_time: None,
            data: None,
            problem: None,
        };
        match original(js, &a, at).await {
            Ok(m) => match binding::decode(Some(&m.headers), &m.payload, Rule::Lenient) {
                Ok(e) => {
                    dl.event_id = Some(e.id().to_owned());
                    dl.event_type = Some(e.ty().to_owned());
                    dl.event_subject = e.subject().map(str::to_owned);
                    dl.event_time = e.time().copied();
                    dl.data = match e.data() {
                        Some(cloudevents::Data::Json(v)) => Some(v.clone()),
                        Some(cloudevents::Data::String(t)) => Some(
                            serde_json::from_str(t)
                                .unwrap_or_else(|_| serde_json::Value::String(t.clone())),
                        ),
                        Some(cloudevents::Data::Binary(b)) => {
                            Some(serde_json::from_slice(b).unwrap_or_else(|_| {
                                serde_json::Value::String(String::from_utf8_lossy(b).into_owned())
                            }))
                        }
                        None => None,
                    };
                }
                Err(e) => dl.problem = Some(format!("not a CloudEvent: {e}")),
            },
            Err(e) => dl.problem = Some(e),
        }
        out.push(dl);
    }
    Ok(out)
}

/// The event a dead letter names, by its stream sequence, if that sequence still holds it: a
/// stream that lost its tail in a power cut and had it published again holds another event
/// there, stored after the dead letter was (the one given up on then has another sequence now).
async fn original(
    js: &Context,
    a: &Advisory,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<jetstream::message::StreamMessage, String> {
    let s = js
        .get_stream_no_info(&a.stream)
        .await
        .map_err(|e| e.to_string())?;
    let m = s
        .get_raw_message(a.stream_seq)
        .await
        .map_err(|e| e.to_string())?;
    if m.time > at {
        return Err(format!(
            "the message at that sequence was stored after the dead letter ({} > {}): the stream lost the original and another event took its place (see `mes-events relay losses --all`); the event given up on is in the stream under a later sequence",
            crate::event::id::rfc3339(m.time),
            crate::event::id::rfc3339(at)
        ));
    }
    Ok(m)
}

/// Sends a dead letter back to its consumer alone, then removes it from the dead letters.
/// Returns the subject it was sent on.
pub async fn resend(js: &Context, dlq_stream: &str, id: u64) -> Result<String, DeadLetterError> {
    let dlq = js.get_stream_no_info(dlq_stream).await.map_err(nats)?;
    let (a, at) = advisory_at(&dlq, id)
        .await
        .ok_or(DeadLetterError::NotFound(id))?;
    let m = original(js, &a, at)
        .await
        .map_err(|why| DeadLetterError::EventGone {
            id,
            stream: a.stream.clone(),
            seq: a.stream_seq,
            why,
        })?;
    let subject = redeliver_subject(&a.stream, &a.consumer, &m.subject);
    // The event's own headers; not the stored JetStream control headers (Nats-Expected-*, …).
    let mut headers = async_nats::HeaderMap::new();
    for (name, values) in m.headers.iter() {
        if !AsRef::<str>::as_ref(name)
            .to_ascii_lowercase()
            .starts_with("nats-")
        {
            for v in values {
                headers.append(name.clone(), v.clone());
            }
        }
    }
    // Unique per dead letter: sending the same one twice within the window is deduplicated.
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        format!("redeliver/{dlq_stream}/{id}").as_str(),
    );
    js.send_publish(
        subject.clone(),
        jetstream::message::PublishMessage::build()
            .payload(m.payload)
            .headers(headers),
    )
    .await
    .map_err(nats)?
    .await
    .map_err(nats)?;
    dlq.delete_message(id).await.map_err(nats)?;
    Ok(subject)
}
