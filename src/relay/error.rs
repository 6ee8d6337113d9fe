//! Why the relay stops ([`RelayError`]), and what interrupts one active or standby session
//! ([`Interrupt`]): everything but a [`RelayError`] is retried with back-off.
//!
//! Never flattens a cause into a string: each keeps its `#[source]`.

use async_nats::jetstream::context::GetStreamError;
use async_nats::jetstream::stream::{InfoError, RawMessageError};

use crate::event::catalog::CatalogError;
use crate::store::migrate::MigrateError;

/// Why the relay stopped for good. Everything else (PostgreSQL or NATS unreachable, a session
/// killed, a lost lease) is retried with back-off and never surfaces here.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Schema(#[from] MigrateError),
    /// None of the relay's streams exists (one missing among others only holds its own rows).
    #[error("JetStream stream(s) {stream} do not exist on the NATS server: create them with `mes-events provision apply` (or correct relay.streams)")]
    StreamMissing { stream: String },
    #[error("the event catalog is broken, so no row was read: {0}")]
    Catalog(#[from] CatalogError),
    #[error("outbox row {id} rejected ({reason}) and relay.on_invalid = \"stop\": fix it with `mes-events outbox retry {id} --data @fixed.json`, or `mes-events outbox discard {id} --reason …`, then restart")]
    Rejected { id: i64, reason: String },
    #[error("{count} rejected outbox row(s) unresolved (first: {first}) and relay.on_invalid = \"stop\": see `mes-events outbox rejected`, then `retry` or `discard` each")]
    Unresolved { count: i64, first: i64 },
}

impl RelayError {
    /// Whether the operator has to act before a restart can help (as opposed to a bug/outage).
    pub fn is_setup(&self) -> bool {
        matches!(
            self,
            RelayError::Schema(MigrateError::Behind { .. } | MigrateError::Newer { .. })
                | RelayError::StreamMissing { .. }
                | RelayError::Unresolved { .. }
        )
    }
}

/// A JetStream call the relay could not complete (NATS away, a stream gone): retried.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("stream info {stream}")]
    GetStream {
        stream: String,
        #[source]
        source: GetStreamError,
    },
    #[error("stream info {stream}")]
    Info {
        stream: String,
        #[source]
        source: InfoError,
    },
    #[error("reading {stream} #{seq}")]
    Read {
        stream: String,
        seq: u64,
        #[source]
        source: RawMessageError,
    },
}

/// What interrupted an active (or standby) session.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Interrupt {
    #[error("postgres")]
    Db(#[from] tokio_postgres::Error),
    #[error("postgres")]
    Connect(#[from] crate::store::session::ConnectError),
    #[error("postgres session closed")]
    SessionClosed,
    #[error("lease taken over by another relay (epoch {0})")]
    LeaseLost(i64),
    #[error("nats")]
    Nats(#[from] NatsError),
    /// The schema changed under a relay that had checked it before (a restore?): retried.
    #[error("schema")]
    Schema(#[source] MigrateError),
    #[error(transparent)]
    Fatal(#[from] RelayError),
}

/// An error with its causes, `a: b: c`, for log lines.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    crate::show::chain(e)
}
