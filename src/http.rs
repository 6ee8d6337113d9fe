//! The relay's HTTP endpoint: `/metrics` in the OpenMetrics text format, `/healthz` (the
//! process is alive and its loop turns) and `/readyz` (see [`crate::metrics::Health`]).
//!
//! Owns serving only (axum): what the answers say is the metrics module's and the watcher's.

use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::metrics;

/// Longest the relay's loop may go without turning before `/healthz` says it is stuck. Every
/// loop turns at least every `max_backoff` (10 s) or `poll_interval` (1 s).
pub const STUCK_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
#[error("http.address {address}: cannot listen there")]
pub struct BindError {
    pub address: String,
    #[source]
    pub source: std::io::Error,
}

/// Binds `address` now (so a taken port is an error at start-up), then serves until `shutdown`.
pub async fn serve(
    address: &str,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, BindError> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| BindError {
            address: address.to_owned(),
            source,
        })?;
    let app = axum::Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    Ok(tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    }))
}

async fn metrics_text() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics::render(),
    )
}

async fn healthz() -> impl IntoResponse {
    match metrics::health().since_turn() {
        Some(d) if d < STUCK_AFTER => (
            StatusCode::OK,
            format!("ok: loop turned {}ms ago\n", d.as_millis()),
        ),
        Some(d) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("stuck: loop last turned {}s ago\n", d.as_secs()),
        ),
        None => (StatusCode::SERVICE_UNAVAILABLE, "starting\n".into()),
    }
}

async fn readyz() -> impl IntoResponse {
    let (ready, why) = metrics::health().readiness();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        format!("{}: {why}\n", if ready { "ready" } else { "not ready" }),
    )
}
