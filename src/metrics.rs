//! What the relay and the push service tell Prometheus, and how healthy they say they are.
//!
//! Owns the process's metrics (one registry, as a process has one `/metrics`): names and units
//! follow Prometheus conventions (`mes_events_` prefix, `_total` counters, base units, labels of
//! low cardinality: stream, event type, rejection kind). The relay's parts update them; the HTTP
//! endpoint renders them in the OpenMetrics text format with `prometheus-client`. Also owns the
//! health the endpoint reports: when the relay's loop last turned (liveness) and whether it is
//! ready, with why not (set by the relay's watcher).
//!
//! Imports nothing of the crate: every layer may update it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Stream {
    pub stream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Published {
    pub stream: String,
    pub r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    pub kind: String,
}

/// A pushed system (its endpoint).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct System {
    pub system: String,
}

/// A failed attempt: the system, and the class of failure (`4xx`, `5xx`, `timeout`,
/// `connect`, `other`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PushFailure {
    pub system: String,
    pub class: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric of the process.
pub struct Metrics {
    /// 1 while this relay is the active one, 0 while it stands by or reconnects.
    pub active: Gauge,
    /// The lease epoch this relay last led with.
    pub epoch: Gauge,
    /// Events that landed in a stream (PubAck received), by stream and type.
    pub published: Family<Published, Counter>,
    /// Outbox rows rejected (kept with their reason), by kind.
    pub rejected: Family<Kind, Counter>,
    /// From publish to PubAck.
    pub ack_seconds: Histogram,
    /// Outbox reads that returned rows.
    pub batches_read: Counter,
    /// Rows recorded as published.
    pub rows_marked: Counter,
    /// Reconciliations with the streams (on activation and after any failure).
    pub reconciliations: Counter,
    /// Rows found in a stream and recorded by a reconciliation.
    pub reconciled_rows: Counter,
    /// Outbox rows waiting to be published (not rejected, not discarded).
    pub pending_rows: Gauge,
    /// Age of the oldest of them (0 when none).
    pub oldest_pending_seconds: Gauge<f64, AtomicU64>,
    /// Each stream's last sequence, as last seen.
    pub stream_last_sequence: Family<Stream, Gauge>,
    /// 1 while a stream takes the relay's messages; 0 while it is missing or refuses them (the
    /// events routed to it wait).
    pub stream_accepting: Family<Stream, Gauge>,
    /// Rejected rows not yet retried or discarded.
    pub rejected_rows: Gauge,
    /// Keys held: each has a rejected row, and its later rows wait behind it.
    pub held_keys: Gauge,
    /// 1 while the NATS connection is up.
    pub nats_connected: Gauge,
    /// Times a NATS connection of the process connected again after losing its server.
    pub nats_reconnects: Counter,
    /// 1 while PostgreSQL answers.
    pub postgres_up: Gauge,
    /// Times the relay lost its PostgreSQL session and connected again.
    pub postgres_reconnects: Counter,
    /// How long published events are kept to be published again if a stream loses them.
    pub durability_horizon_seconds: Gauge<f64, AtomicU64>,
    /// Times a stream was found holding less than the relay recorded (went back in time).
    pub stream_regressions: Family<Stream, Counter>,
    /// Events a stream lost that the relay published again from what it kept.
    pub events_restored: Family<Stream, Counter>,
    /// Events a stream lost that the relay no longer kept (older than the horizon).
    pub events_unrestorable: Family<Stream, Counter>,
    /// Events lost for good in losses no operator has accepted yet (`relay losses`).
    pub unaccepted_lost_events: Gauge,
    /// The space published events kept for the durability horizon take in PostgreSQL.
    pub kept_bytes: Gauge,
    /// Push: events delivered (2xx), by system.
    pub push_delivered: Family<System, Counter>,
    /// Push: failed attempts, by system and class of failure.
    pub push_failed: Family<PushFailure, Counter>,
    /// Push: events sent again later after a failed attempt.
    pub push_retries: Family<System, Counter>,
    /// Push: events given up on after their last attempt (dead letters).
    pub push_dead_letters: Family<System, Counter>,
    /// Push: times the endpoint asked to wait (429, 503 with Retry-After).
    pub push_throttled: Family<System, Counter>,
    /// Push: request to answer.
    pub push_request_seconds: HistogramFamily<System>,
    /// Push: 1 while the endpoint is paused (failures in a row, or it asked to wait).
    pub push_paused: Family<System, Gauge>,
    /// Push: age of the oldest event being delivered or retried (0 when none).
    pub push_oldest_undelivered_seconds: Family<System, Gauge<f64, AtomicU64>>,
}

impl Metrics {
    fn register(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            active: Gauge::default(),
            epoch: Gauge::default(),
            published: Family::default(),
            rejected: Family::default(),
            // 0.5 ms to about 16 s.
            ack_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            batches_read: Counter::default(),
            rows_marked: Counter::default(),
            reconciliations: Counter::default(),
            reconciled_rows: Counter::default(),
            pending_rows: Gauge::default(),
            oldest_pending_seconds: Gauge::default(),
            stream_last_sequence: Family::default(),
            stream_accepting: Family::default(),
            rejected_rows: Gauge::default(),
            held_keys: Gauge::default(),
            nats_connected: Gauge::default(),
            nats_reconnects: Counter::default(),
            postgres_up: Gauge::default(),
            postgres_reconnects: Counter::default(),
            durability_horizon_seconds: Gauge::default(),
            stream_regressions: Family::default(),
            events_restored: Family::default(),
            events_unrestorable: Family::default(),
            unaccepted_lost_events: Gauge::default(),
            kept_bytes: Gauge::default(),
            push_delivered: Family::default(),
            push_failed: Family::default(),
            push_retries: Family::default(),
            push_dead_letters: Family::default(),
            push_throttled: Family::default(),
            // 1 ms to about 65 s.
            push_request_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 17))
            }),
            push_paused: Family::default(),
            push_oldest_undelivered_seconds: Family::default(),
        };
        let r = registry;
        r.register(
            "relay_active",
            "1 while this relay is the active one",
            m.active.clone(),
        );
        r.register(
            "relay_epoch",
            "Lease epoch this relay last led with",
            m.epoch.clone(),
        );
        r.register(
            "events_published",
            "Events that landed in a stream",
            m.published.clone(),
        );
        r.register(
            "rows_rejected",
            "Outbox rows rejected, kept with their reason",
            m.rejected.clone(),
        );
        r.register_with_unit(
            "publish_ack",
            "From publish to PubAck",
            Unit::Seconds,
            m.ack_seconds.clone(),
        );
        r.register(
            "batches_read",
            "Outbox reads that returned rows",
            m.batches_read.clone(),
        );
        r.register(
            "rows_marked",
            "Rows recorded as published",
            m.rows_marked.clone(),
        );
        r.register(
            "reconciliations",
            "Reconciliations with the streams",
            m.reconciliations.clone(),
        );
        r.register(
            "reconciled_rows",
            "Rows found in a stream and recorded by a reconciliation",
            m.reconciled_rows.clone(),
        );
        r.register(
            "outbox_pending_rows",
            "Outbox rows waiting to be published",
            m.pending_rows.clone(),
        );
        r.register_with_unit(
            "outbox_oldest_pending_age",
            "Age of the oldest pending row",
            Unit::Seconds,
            m.oldest_pending_seconds.clone(),
        );
        r.register(
            "stream_last_sequence",
            "Each stream's last sequence, as last seen",
            m.stream_last_sequence.clone(),
        );
        r.register(
            "stream_accepting",
            "1 while a stream takes the relay's messages, 0 while it is missing or refuses them",
            m.stream_accepting.clone(),
        );
        r.register(
            "outbox_rejected_rows",
            "Rejected rows not yet retried or discarded",
            m.rejected_rows.clone(),
        );
        r.register(
            "outbox_held_keys",
            "Keys whose later rows wait behind a rejected row",
            m.held_keys.clone(),
        );
        r.register(
            "nats_reconnects",
            "Times a NATS connection connected again after losing its server",
            m.nats_reconnects.clone(),
        );
        r.register(
            "nats_connected",
            "1 while the NATS connection is up",
            m.nats_connected.clone(),
        );
        r.register(
            "postgres_up",
            "1 while PostgreSQL answers",
            m.postgres_up.clone(),
        );
        r.register(
            "postgres_reconnects",
            "Times the relay connected to PostgreSQL again",
            m.postgres_reconnects.clone(),
        );
        r.register_with_unit(
            "durability_horizon",
            "How long published events are kept to be published again if a stream loses them",
            Unit::Seconds,
            m.durability_horizon_seconds.clone(),
        );
        r.register(
            "stream_regressions",
            "Times a stream was found holding less than the relay recorded",
            m.stream_regressions.clone(),
        );
        r.register(
            "events_restored",
            "Events a stream lost that the relay published again",
            m.events_restored.clone(),
        );
        r.register(
            "events_unrestorable",
            "Events a stream lost that the relay no longer kept",
            m.events_unrestorable.clone(),
        );
        r.register_with_unit(
            "kept",
            "Space the published events kept for the durability horizon take in PostgreSQL",
            Unit::Bytes,
            m.kept_bytes.clone(),
        );
        r.register(
            "unaccepted_lost_events",
            "Events lost for good in losses not yet accepted by an operator",
            m.unaccepted_lost_events.clone(),
        );
        r.register(
            "push_delivered",
            "Push: events delivered (2xx)",
            m.push_delivered.clone(),
        );
        r.register(
            "push_failed",
            "Push: failed attempts, by class (4xx, 5xx, timeout, connect, other)",
            m.push_failed.clone(),
        );
        r.register(
            "push_retries",
            "Push: events sent again later after a failed attempt",
            m.push_retries.clone(),
        );
        r.register(
            "push_dead_letters",
            "Push: events given up on after their last attempt",
            m.push_dead_letters.clone(),
        );
        r.register(
            "push_throttled",
            "Push: times the endpoint asked to wait (429, 503 with Retry-After)",
            m.push_throttled.clone(),
        );
        r.register_with_unit(
            "push_request",
            "Push: from request to answer",
            Unit::Seconds,
            m.push_request_seconds.clone(),
        );
        r.register(
            "push_endpoint_paused",
            "Push: 1 while the endpoint is paused",
            m.push_paused.clone(),
        );
        r.register_with_unit(
            "push_oldest_undelivered_age",
            "Push: age of the oldest event being delivered or retried",
            Unit::Seconds,
            m.push_oldest_undelivered_seconds.clone(),
        );
        m
    }
}

static REGISTRY: LazyLock<(Registry, Metrics)> = LazyLock::new(|| {
    let mut registry = Registry::with_prefix("mes_events");
    let metrics = Metrics::register(&mut registry);
    (registry, metrics)
});

/// The process's metrics.
pub fn get() -> &'static Metrics {
    &REGISTRY.1
}

/// Every metric in the OpenMetrics text format (`application/openmetrics-text`).
pub fn render() -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &REGISTRY.0)
        .expect("writing to a String cannot fail");
    out
}

/// Liveness and readiness as the relay's loop and its watcher last saw them.
pub struct Health {
    last_turn: AtomicU64,
    ready: AtomicBool,
    why: Mutex<String>,
}

static HEALTH: Health = Health {
    last_turn: AtomicU64::new(0),
    ready: AtomicBool::new(false),
    why: Mutex::new(String::new()),
};

/// The process's health.
pub fn health() -> &'static Health {
    &HEALTH
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Health {
    /// The relay's loop turned (called from every loop that waits: active, standby, reconnect).
    pub fn turned(&self) {
        self.last_turn.store(now_ms(), Ordering::Relaxed);
    }

    /// How long since the loop last turned (`None` before it ever did).
    pub fn since_turn(&self) -> Option<Duration> {
        match self.last_turn.load(Ordering::Relaxed) {
            0 => None,
            t => Some(Duration::from_millis(now_ms().saturating_sub(t))),
        }
    }

    /// Sets readiness, with what it is (ready) or what is wrong (not ready).
    pub fn set(&self, ready: bool, why: String) {
        *self.why.lock().unwrap_or_else(|e| e.into_inner()) = why;
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Whether ready, and why (or why not).
    pub fn readiness(&self) -> (bool, String) {
        let why = self.why.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if why.is_empty() {
            return (false, "starting".into());
        }
        (self.ready.load(Ordering::Relaxed), why)
    }
}
