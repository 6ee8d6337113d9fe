//! Replay: move an external system's durable consumer back (or forward) to a point in time or a
//! stream sequence, after saying how many events it will receive again.
//!
//! A consumer's start point cannot change in place on any server version, so the consumer is
//! recreated with the same configuration and a new deliver policy, and marked with
//! `mes-events.replayed-from` so `provision plan` does not report its deliver policy as drift.
//!
//! A start time is turned into a stream sequence here, never handed to the server as a
//! `by_start_time` policy: nats-server (2.15.1, and `main` as of 2026-08) starts a consumer with
//! several filters late when one of its filters has its first message after the start time and
//! another has messages before that (`selectStartingSeqNo` skips to the earliest *first* message
//! of a filter at or after the time, ignoring filters whose first message is before it): the
//! ERP's consumer, whose `mes-redeliver.…` filter holds only the odd resend, skipped its events.
//! Each filter's first message at or after the time (`$JS.API.STREAM.MSG.GET` with `start_time`
//! and `next_by_subj`), the lowest of them, is where the consumer starts, and what the count
//! before starts from.
//!
//! Never moves a consumer without the caller having seen the plan first.

use async_nats::jetstream::{consumer, Context};
use chrono::{DateTime, Utc};

/// Metadata key recording a replay on the consumer.
pub const REPLAYED_FROM: &str = "mes-events.replayed-from";
/// Metadata key keeping the consumer's deliver policy from before its first replay (JSON, as
/// the server writes it), so that `provision plan` still compares the declared one with it.
pub const DELIVER_BEFORE_REPLAY: &str = "mes-events.deliver-before-replay";
/// Metadata key of a consumer declared `by_start_time` and created at the sequence that time
/// resolves to (see [`start_sequence`]): the declared policy (JSON), which `provision plan`
/// compares with the declaration instead of the sequence the server holds.
pub const DELIVER_DECLARED: &str = "mes-events.deliver-declared";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum From {
    Time(DateTime<Utc>),
    Sequence(u64),
}

impl std::str::FromStr for From {
    type Err = String;
    fn from_str(s: &str) -> Result<From, String> {
        if let Ok(n) = s.parse::<u64>() {
            return Ok(From::Sequence(n.max(1)));
        }
        parse_time(s).map(From::Time).map_err(|e| {
            format!("{s:?} is neither a stream sequence (a whole number) nor a time: {e}")
        })
    }
}

/// An RFC 3339 time, which must say its time zone; one without is refused by name rather than
/// guessed.
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let local = [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
    ];
    if local
        .iter()
        .any(|f| chrono::NaiveDateTime::parse_from_str(s, f).is_ok())
    {
        return Err(format!(
            "{s:?} has no time zone: add Z for UTC ({s}Z) or the offset of the plant's time (e.g. {s}+01:00)"
        ));
    }
    Err(format!(
        "{s:?} is not an RFC 3339 time with a time zone, e.g. 2026-11-23T08:00:00Z"
    ))
}

impl std::fmt::Display for From {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            From::Time(t) => write!(f, "{}", t.to_rfc3339()),
            From::Sequence(n) => write!(f, "stream sequence {n}"),
        }
    }
}

/// What a replay would do.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Plan {
    pub stream: String,
    pub consumer: String,
    pub from: String,
    /// Events matching the consumer's filters from that point on: all redelivered.
    pub redeliver: u64,
    /// Events it has not acknowledged yet that come before the start point: never delivered
    /// (or never again) once it starts there.
    pub skip: u64,
    /// Where the consumer is now.
    pub acked_up_to: u64,
    pub pending_now: u64,
    /// The stream's last sequence now.
    pub stream_last_seq: u64,
    /// Why this start point would silently skip events, if it would: a sequence beyond the
    /// stream's last, or a time in the future. Refused unless the caller allows it.
    pub beyond_the_tail: Option<String>,
    #[serde(skip)]
    config: consumer::Config,
    #[serde(skip)]
    policy: consumer::DeliverPolicy,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("consumer {consumer} does not exist on stream {stream} (see `mes-events provision status`; --stream names the stream)")]
    NotFound { stream: String, consumer: String },
    #[error("consumer {consumer} on stream {stream}: {message}")]
    Consumer {
        stream: String,
        consumer: String,
        message: String,
    },
}

/// The start sequence of a consumer with these filters from a point (a time: the first message
/// of any filter stored at or after it; past the tail when there is none). See the module's
/// documentation for why the server is not left to find it.
pub async fn start_sequence(
    js: &Context,
    stream: &str,
    filters: &[String],
    from: From,
    last: u64,
) -> Result<u64, String> {
    let start_time = match from {
        From::Sequence(n) => return Ok(n),
        From::Time(t) => t,
    };
    let all = [">".to_owned()];
    let filters = if filters.is_empty() {
        &all[..]
    } else {
        filters
    };
    let mut first = last + 1;
    for f in filters {
        let body = serde_json::json!({
            "start_time": start_time.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            "next_by_subj": f,
            "no_hdr": true,
        });
        let answer: serde_json::Value = js
            .request(format!("STREAM.MSG.GET.{stream}"), &body)
            .await
            .map_err(|e| format!("finding the first event at or after {start_time}: {e}"))?;
        match answer["message"]["seq"].as_u64() {
            Some(seq) => first = first.min(seq),
            // 10037: no message of that filter at or after the time.
            None if answer["error"]["err_code"].as_u64() == Some(10037) => {}
            None => {
                return Err(format!(
                    "finding the first event at or after {start_time}: the server answered {answer}"
                ))
            }
        }
    }
    Ok(first)
}

fn policy(start_sequence: u64) -> consumer::DeliverPolicy {
    consumer::DeliverPolicy::ByStartSequence { start_sequence }
}

/// Counts what the consumer would receive again, with a throw-away ordered consumer of the same
/// filters starting at that point.
pub async fn plan(js: &Context, stream: &str, name: &str, from: From) -> Result<Plan, ReplayError> {
    let err = |message: String| ReplayError::Consumer {
        stream: stream.to_owned(),
        consumer: name.to_owned(),
        message,
    };
    let s = js
        .get_stream_no_info(stream)
        .await
        .map_err(|e| err(e.to_string()))?;
    let info = s.consumer_info(name).await.map_err(|e| {
        if super::consumer_missing(&e) {
            ReplayError::NotFound {
                stream: stream.to_owned(),
                consumer: name.to_owned(),
            }
        } else {
            err(e.to_string())
        }
    })?;
    let last = js
        .get_stream(stream)
        .await
        .map_err(|e| err(e.to_string()))?
        .cached_info()
        .state
        .last_sequence;
    let cfg = info.config.clone();
    let mut filters = cfg.filter_subjects.clone();
    if !cfg.filter_subject.is_empty() {
        filters.push(cfg.filter_subject.clone());
    }
    let start = start_sequence(js, stream, &filters, from, last)
        .await
        .map_err(err)?;
    let probe = s
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: cfg.filter_subject.clone(),
            filter_subjects: cfg.filter_subjects.clone(),
            deliver_policy: policy(start),
            ..Default::default()
        })
        .await
        .map_err(|e| err(format!("counting: {e}")))?;
    let mut probe = probe;
    let count = probe
        .info()
        .await
        .map_err(|e| err(e.to_string()))?
        .num_pending;
    let probe_name = probe.cached_info().name.clone();
    let _ = s.delete_consumer(&probe_name).await;
    let acked_up_to = info.ack_floor.stream_sequence;
    let unacked = info.num_pending + info.num_ack_pending as u64;
    Ok(Plan {
        stream: stream.to_owned(),
        consumer: name.to_owned(),
        from: from.to_string(),
        redeliver: count,
        skip: skipped(from, acked_up_to, unacked, count),
        acked_up_to,
        pending_now: info.num_pending,
        stream_last_seq: last,
        beyond_the_tail: beyond_the_tail(from, last, Utc::now()),
        config: cfg,
        policy: policy(start),
    })
}

/// Unacknowledged events a start point leaves behind (pure): none when it starts at or before
/// the first unacknowledged one (everything after the ack floor is delivered again), else the
/// unacknowledged events minus those from the start point on.
pub fn skipped(from: From, acked_up_to: u64, unacked: u64, from_start_point: u64) -> u64 {
    match from {
        From::Sequence(n) if n <= acked_up_to + 1 => 0,
        _ => unacked.saturating_sub(from_start_point),
    }
}

/// Why a start point lies beyond what exists (pure): a sequence past the stream's last, or a
/// time in the future. The consumer would wait there, skipping every event until then.
pub fn beyond_the_tail(from: From, last: u64, now: DateTime<Utc>) -> Option<String> {
    match from {
        From::Sequence(n) if n > last => Some(format!(
            "stream sequence {n} is beyond the stream's last ({last}): the consumer would skip the next {} event(s) of the stream",
            n - last - 1
        )),
        From::Time(t) if t > now => Some(format!(
            "{} is in the future: the consumer would skip every event until then",
            t.to_rfc3339()
        )),
        _ => None,
    }
}

/// Recreates the consumer at the planned point, same configuration otherwise.
pub async fn apply(js: &Context, plan: &Plan) -> Result<(), ReplayError> {
    let err = |message: String| ReplayError::Consumer {
        stream: plan.stream.clone(),
        consumer: plan.consumer.clone(),
        message,
    };
    let s = js
        .get_stream_no_info(&plan.stream)
        .await
        .map_err(|e| err(e.to_string()))?;
    let mut cfg = plan.config.clone();
    cfg.deliver_policy = plan.policy;
    cfg.metadata.retain(|k, _| !k.starts_with("_nats."));
    cfg.metadata.insert(REPLAYED_FROM.into(), plan.from.clone());
    // The policy the declaration set, kept across replays (the first one's is the declared one).
    if !cfg.metadata.contains_key(DELIVER_BEFORE_REPLAY) {
        if let Ok(before) = serde_json::to_string(&plan.config.deliver_policy) {
            cfg.metadata.insert(DELIVER_BEFORE_REPLAY.into(), before);
        }
    }
    s.delete_consumer(&plan.consumer)
        .await
        .map_err(|e| err(e.to_string()))?;
    s.create_consumer(cfg)
        .await
        .map_err(|e| err(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_beyond_the_tail_or_in_the_future_is_named() {
        let now = Utc::now();
        assert!(beyond_the_tail(From::Sequence(6), 6, now).is_none());
        let far = beyond_the_tail(From::Sequence(999), 6, now).unwrap();
        assert!(
            far.contains("beyond the stream's last (6)") && far.contains("skip the next 992"),
            "{far}"
        );
        assert!(beyond_the_tail(From::Time(now - chrono::Duration::hours(1)), 6, now).is_none());
        let future = beyond_the_tail(From::Time(now + chrono::Duration::hours(1)), 6, now).unwrap();
        assert!(future.contains("in the future"), "{future}");
    }

    #[test]
    fn a_time_without_a_zone_is_refused_by_name() {
        let e = parse_time("2026-11-30T10:00:00").unwrap_err();
        assert!(
            e.contains("no time zone") && e.contains("2026-11-30T10:00:00Z"),
            "{e}"
        );
        assert!(parse_time("2026-11-30T10:00:00+01:00").is_ok());
        assert!(parse_time("tomorrow").unwrap_err().contains("RFC 3339"));
    }

    #[test]
    fn skipped_counts_only_unacknowledged_events_before_the_start() {
        // Acked up to 10, 5 unacknowledged (11..=15).
        assert_eq!(
            skipped(From::Sequence(3), 10, 5, 13),
            0,
            "back: nothing skipped"
        );
        assert_eq!(skipped(From::Sequence(11), 10, 5, 5), 0);
        assert_eq!(
            skipped(From::Sequence(14), 10, 5, 2),
            3,
            "forward past 11..=13"
        );
        assert_eq!(skipped(From::Sequence(999), 10, 5, 0), 5);
    }
}
