//! Exit codes of the `mes-events` binary, and the one place that maps an error to its code.
//! Scripts and supervisors rely on these; never renumber.

use mes_events::config::ConfigError;
use mes_events::demo::DemoError;
use mes_events::event::catalog::CatalogError;
use mes_events::nats::ConnectError;
use mes_events::read::deadletter::DeadLetterError;
use mes_events::read::replay::ReplayError;
use mes_events::read::tail::TailError;
use mes_events::relay::RelayError;
use mes_events::store::kept::AcceptError;
use mes_events::store::migrate::MigrateError;
use mes_events::store::operator::ResolveError;

/// Success; for `relay`, a requested stop (SIGTERM, Ctrl-C) after recording what was in flight.
pub const OK: u8 = 0;
/// A runtime failure: a server unreachable for a one-shot command, a query or publish failed.
pub const FAILURE: u8 = 1;
/// A usage or configuration error: bad flag, unknown config key, bad value. Fix the invocation.
pub const USAGE: u8 = 2;
/// The environment is not set up: schema not migrated, stream missing. The message says what to
/// run (`mes-events migrate`, `mes-events provision apply`).
pub const NOT_READY: u8 = 3;
/// `provision plan`: the server differs from the declaration (apply would change something).
pub const CHANGES: u8 = 4;
/// `provision apply`: a change was refused (a field the server cannot change in place); the
/// message says why and what it would take. Everything else was applied.
pub const REFUSED: u8 = 5;

/// Something in how the command was called, or in what it was given, must be fixed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// Changes `provision apply` refused, each with why, and what it applied.
#[derive(Debug, thiserror::Error)]
#[error("{}\napplied: {}", .refused.iter().map(|w| format!("refused: {w}")).collect::<Vec<_>>().join("\n"),
    if .applied.is_empty() { "nothing".to_owned() } else { .applied.join("; ") })]
pub struct Refused {
    pub refused: Vec<String>,
    pub applied: Vec<String>,
}

/// The exit code for an error: setup errors (do X first) and usage errors get their own,
/// everything else is a runtime failure.
pub fn code_for(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.is::<Usage>() || cause.is::<ConfigError>() {
            return USAGE;
        }
        if cause.is::<Refused>() {
            return REFUSED;
        }
        if let Some(r) = cause.downcast_ref::<RelayError>() {
            if r.is_setup() {
                return NOT_READY;
            }
            // A broken (site) catalog is the operator's input: fix it.
            if let RelayError::Catalog(_) = r {
                return USAGE;
            }
        }
        if cause.is::<CatalogError>() {
            return USAGE;
        }
        if let Some(MigrateError::Behind { .. } | MigrateError::Newer { .. }) =
            cause.downcast_ref::<MigrateError>()
        {
            return NOT_READY;
        }
        if let Some(ResolveError::NotFound(_) | ResolveError::NotRejected(_)) =
            cause.downcast_ref::<ResolveError>()
        {
            return USAGE;
        }
        if let Some(AcceptError::NotFound(_) | AcceptError::Accepted { .. }) =
            cause.downcast_ref::<AcceptError>()
        {
            return USAGE;
        }
        // Something named on the command line or in the configuration that does not exist, or
        // data the caller gave that cannot be taken: fix the invocation.
        if let Some(DeadLetterError::NotFound(_)) = cause.downcast_ref::<DeadLetterError>() {
            return USAGE;
        }
        if let Some(ReplayError::NotFound { .. }) = cause.downcast_ref::<ReplayError>() {
            return USAGE;
        }
        if let Some(TailError::NotFound { .. }) = cause.downcast_ref::<TailError>() {
            return USAGE;
        }
        if let Some(ConnectError::Credentials { .. } | ConnectError::Url { .. }) =
            cause.downcast_ref::<ConnectError>()
        {
            return USAGE;
        }
        if let Some(DemoError::Declaration { .. }) = cause.downcast_ref::<DemoError>() {
            return USAGE;
        }
        // mes_events.emit refuses its arguments with SQLSTATE 22023 (invalid_parameter_value).
        if let Some(e) = cause.downcast_ref::<tokio_postgres::Error>() {
            if e.code() == Some(&tokio_postgres::error::SqlState::INVALID_PARAMETER_VALUE) {
                return USAGE;
            }
        }
    }
    FAILURE
}
