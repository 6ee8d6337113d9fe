//! The write side: `mes_events.emit`, called in the MES's own transaction, and the NOTIFY
//! channel it wakes the relay on.
//!
//! Never decides anything itself: emit's checks are in its SQL.

use chrono::{DateTime, Utc};
use tokio_postgres::GenericClient;

/// NOTIFY channel `mes_events.emit` wakes the relay on.
pub const CHANNEL: &str = "mes_events";

/// Arguments of `mes_events.emit` beyond type, key and data.
#[derive(Debug, Clone, Default)]
pub struct EmitOptions {
    pub occurred_at: Option<DateTime<Utc>>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

/// Calls `mes_events.emit` (in the caller's transaction, if `client` is one). Returns the id.
pub async fn emit(
    client: &impl GenericClient,
    ty: &str,
    key: &str,
    data: &str,
    opts: &EmitOptions,
) -> Result<i64, tokio_postgres::Error> {
    Ok(client
        .query_one(
            "select mes_events.emit($1, $2, $3::text::jsonb, $4, $5, $6)",
            &[
                &ty,
                &key,
                &data,
                &opts.occurred_at,
                &opts.traceparent,
                &opts.tracestate,
            ],
        )
        .await?
        .get(0))
}

pub use crate::event::check_traceparent;
