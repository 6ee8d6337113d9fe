//! Replay: move an external system's durable consumer back (or forward) to a point in time or a
//! stream sequence, after saying how many events it will receive again.
//!
//! A consumer's start point cannot change in place on any server version, so the consumer is
//! recreated with the same configuration and a new deliver policy, and marked with
//! `mes-events.replayed-from` so `provision plan` does not report its deliver policy as drift.
//!
//! Never moves a consumer without the caller having seen the plan first.

use async_nats::jetstream::{consumer, Context};
use chrono::{DateTime, Utc};

/// Metadata key recording a replay on the consumer.
pub const REPLAYED_FROM: &str = "mes-events.replayed-from";

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
        DateTime::parse_from_rfc3339(s)
            .map(|t| From::Time(t.with_timezone(&Utc)))
            .map_err(|_| format!("{s:?} is neither a stream sequence (a whole number) nor an RFC 3339 time (2026-11-23T08:00:00Z)"))
    }
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
    /// Where the consumer is now.
    pub acked_up_to: u64,
    pub pending_now: u64,
    #[serde(skip)]
    config: consumer::Config,
    #[serde(skip)]
    policy: consumer::DeliverPolicy,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("consumer {consumer} on stream {stream}: {message}")]
    Consumer {
        stream: String,
        consumer: String,
        message: String,
    },
}

fn policy(from: From) -> consumer::DeliverPolicy {
    match from {
        From::Time(start_time) => consumer::DeliverPolicy::ByStartTime { start_time },
        From::Sequence(start_sequence) => {
            consumer::DeliverPolicy::ByStartSequence { start_sequence }
        }
    }
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
    let info = s
        .consumer_info(name)
        .await
        .map_err(|e| err(e.to_string()))?;
    let cfg = info.config.clone();
    let probe = s
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: cfg.filter_subject.clone(),
            filter_subjects: cfg.filter_subjects.clone(),
            deliver_policy: policy(from),
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
    Ok(Plan {
        stream: stream.to_owned(),
        consumer: name.to_owned(),
        from: from.to_string(),
        redeliver: count,
        acked_up_to: info.ack_floor.stream_sequence,
        pending_now: info.num_pending,
        config: cfg,
        policy: policy(from),
    })
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
    s.delete_consumer(&plan.consumer)
        .await
        .map_err(|e| err(e.to_string()))?;
    s.create_consumer(cfg)
        .await
        .map_err(|e| err(e.to_string()))?;
    Ok(())
}
