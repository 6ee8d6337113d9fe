//! Tail: watch decoded events live, for people (one line each) or scripts (`--json`).
//!
//! From a subject wildcard: a plain subscription, live only (what a system's `live` permission
//! allows). From a named consumer: a throw-away ordered consumer with the same filters, starting
//! right after the consumer's ack floor, so it shows what that system is about to receive and
//! never touches its acks or position.

use std::io::Write;

use async_nats::jetstream::{consumer, Context};
use cloudevents::event::Data;
use cloudevents::{AttributesReader, Event};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::event::binding::{self, Rule};

#[derive(Debug, Clone)]
pub enum Source {
    Subject(String),
    Consumer {
        stream: String,
        name: String,
        /// Stop once every event waiting for the consumer when the tail started was shown.
        until_caught_up: bool,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error("consumer {consumer} does not exist on stream {stream} (see `mes-events provision status`; --stream names the stream)")]
    NotFound { stream: String, consumer: String },
    #[error("NATS: {0}")]
    Nats(String),
    #[error("writing output: {0}")]
    Io(#[from] std::io::Error),
}

fn nats(e: impl std::fmt::Display) -> TailError {
    TailError::Nats(e.to_string())
}

/// One line for a person: time, type, key, data (shortened).
pub fn human(event: &Event) -> String {
    let data = match event.data() {
        Some(Data::Json(v)) => v.to_string(),
        Some(Data::String(s)) => s.clone(),
        Some(Data::Binary(b)) => String::from_utf8_lossy(b).into_owned(),
        None => String::new(),
    };
    let data = if data.chars().count() > 160 {
        format!("{}…", data.chars().take(160).collect::<String>())
    } else {
        data
    };
    let ty = event.ty();
    let short = ty.split_once(".mes.").map_or(ty, |(_, rest)| rest);
    format!(
        "{}  {short}  {}  {data}",
        event
            .time()
            .map(|t| crate::event::id::rfc3339(*t))
            .unwrap_or_default(),
        event.subject().unwrap_or("-")
    )
}

/// The event in the JSON event format, on one line.
pub fn json(event: &Event) -> String {
    serde_json::to_string(event).unwrap_or_default()
}

/// Prints events until `count` were shown or `shutdown`. Returns how many were shown.
pub async fn run(
    client: &async_nats::Client,
    js: &Context,
    source: &Source,
    as_json: bool,
    count: Option<usize>,
    mut out: impl Write,
    shutdown: CancellationToken,
) -> Result<usize, TailError> {
    let mut shown = 0;
    let show = |headers: Option<&async_nats::HeaderMap>,
                payload: &[u8],
                out: &mut dyn Write|
     -> Result<(), TailError> {
        match binding::decode(headers, payload, Rule::Lenient) {
            Ok(e) => writeln!(out, "{}", if as_json { json(&e) } else { human(&e) })?,
            Err(e) => writeln!(out, "(not a CloudEvent: {e})")?,
        }
        out.flush()?;
        Ok(())
    };
    let done = |n: usize| count.is_some_and(|c| n >= c);
    match source {
        Source::Subject(subject) => {
            let mut sub = client.subscribe(subject.clone()).await.map_err(nats)?;
            while !done(shown) {
                let m = tokio::select! {
                    m = sub.next() => m,
                    _ = shutdown.cancelled() => break,
                };
                let Some(m) = m else { break };
                show(m.headers.as_ref(), &m.payload, &mut out)?;
                shown += 1;
            }
        }
        Source::Consumer {
            stream,
            name,
            until_caught_up,
        } => {
            let s = js.get_stream_no_info(stream).await.map_err(nats)?;
            let info = s.consumer_info(name).await.map_err(|e| {
                if super::consumer_missing(&e) {
                    TailError::NotFound {
                        stream: stream.to_string(),
                        consumer: name.to_string(),
                    }
                } else {
                    nats(e)
                }
            })?;
            let ordered = s
                .create_consumer(consumer::pull::OrderedConfig {
                    filter_subject: info.config.filter_subject.clone(),
                    filter_subjects: info.config.filter_subjects.clone(),
                    deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                        start_sequence: info.ack_floor.stream_sequence + 1,
                    },
                    ..Default::default()
                })
                .await
                .map_err(nats)?;
            // What waits now: the ordered consumer's count at its start.
            let mut ordered = ordered;
            let waiting = ordered.info().await.map_err(nats)?.num_pending;
            let caught_up = |n: usize| *until_caught_up && n as u64 >= waiting;
            let mut messages = ordered.messages().await.map_err(nats)?;
            while !done(shown) && !caught_up(shown) {
                let m = tokio::select! {
                    m = messages.next() => m,
                    _ = shutdown.cancelled() => break,
                };
                let Some(m) = m else { break };
                let m = m.map_err(nats)?;
                show(m.headers.as_ref(), &m.payload, &mut out)?;
                shown += 1;
            }
        }
    }
    Ok(shown)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudevents::{EventBuilder, EventBuilderV10};

    #[test]
    fn human_lines_are_short_and_readable() {
        let e = EventBuilderV10::new()
            .id("1")
            .source("/mes/demo/bsl")
            .ty("io.mesevents.mes.processorder.statuschanged.v1")
            .subject("4711")
            .time("2026-11-23T08:00:00Z")
            .data(
                "application/json",
                serde_json::json!({"status": "running", "pad": "x".repeat(500)}),
            )
            .build()
            .unwrap();
        let line = human(&e);
        assert!(
            line.starts_with("2026-11-23T08:00:00Z  processorder.statuschanged.v1  4711  {"),
            "{line}"
        );
        assert!(line.ends_with('…') && line.chars().count() < 250, "{line}");
        let j: serde_json::Value = serde_json::from_str(&json(&e)).unwrap();
        assert_eq!(j["subject"], "4711");
    }
}
