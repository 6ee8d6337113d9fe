//! The demo's fourth system: a workflow app that can only take HTTP. The demo adds it to the
//! declaration (a consumer of its own, a `[push]` endpoint), starts a small receiver that
//! verifies every request's Standard Webhooks signature and skips a `webhook-id` it already
//! has, and runs the push service to it. The receiver answers 503 for a while, so the view shows
//! the endpoint retrying, then catching up.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, StatusCode};

use super::DemoError;
use crate::provision::Declaration;

/// The system's name (and its consumer's).
pub const NAME: &str = "workflow";

/// The receiver's state, shared with the view.
#[derive(Debug, Default)]
pub struct Receiver {
    /// Events handled (each once).
    pub received: Arc<AtomicU64>,
    /// Answering 503 to everything.
    pub failing: AtomicBool,
    /// Requests refused for a bad signature (must stay 0).
    pub refused: AtomicU64,
    seen: Mutex<HashSet<String>>,
}

impl Receiver {
    fn receive(
        &self,
        verifier: &standardwebhooks::Webhook,
        headers: &HeaderMap,
        body: &[u8],
    ) -> StatusCode {
        if verifier.verify(body, headers).is_err() {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return StatusCode::UNAUTHORIZED;
        }
        if self.failing.load(Ordering::Relaxed) {
            return StatusCode::SERVICE_UNAVAILABLE;
        }
        let id = headers
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        if self.seen.lock().unwrap().insert(id) {
            self.received.fetch_add(1, Ordering::Relaxed);
        }
        StatusCode::NO_CONTENT
    }
}

/// A fresh `whsec_` secret (32 random bytes).
pub fn secret() -> String {
    use base64::Engine as _;
    let mut key = [0u8; 32];
    for chunk in key.chunks_mut(16) {
        chunk.copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    }
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

/// Starts the receiver on a free loopback port; its port.
pub async fn serve(secret: &str, r: Arc<Receiver>) -> Result<u16, DemoError> {
    let verifier = Arc::new(
        standardwebhooks::Webhook::new(secret).map_err(|e| DemoError::Webhook(e.to_string()))?,
    );
    let app = axum::Router::new().route(
        "/hooks/mes",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let (r, verifier) = (r.clone(), verifier.clone());
            async move { r.receive(&verifier, &headers, &body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| DemoError::Webhook(e.to_string()))?;
    let port = listener
        .local_addr()
        .map_err(|e| DemoError::Webhook(e.to_string()))?
        .port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(port)
}

/// The declaration with the workflow app added: its consumer takes order and batch events, and
/// it is pushed to `port` with the secret in `secret_file`. Quick retries, never given up on:
/// the demo is short.
pub fn declaration(
    d: &Declaration,
    port: u16,
    secret_file: &Path,
) -> Result<Declaration, DemoError> {
    let text = format!(
        r#"[system]
name = "{NAME}"
description = "A workflow app that takes HTTP only (the demo's)"
[[consumer]]
stream = "MES_EVENTS"
filter_subjects = ["mes.*.*.*.*.processorder.>", "mes.*.*.*.*.batch.>"]
[push]
url = "http://127.0.0.1:{port}/hooks/mes"
secret_file = {:?}
retry = ["1s", "2s", "4s"]
after_last = "hold"
pause_after = 5
pause = "2s"
"#,
        secret_file.display().to_string()
    );
    let streams = crate::provision::decl::Source {
        path: "streams".into(),
        text: String::new(),
        file: crate::provision::decl::File {
            stream: d.streams.clone(),
            system: None,
            consumer: Vec::new(),
            push: None,
        },
    };
    let path = Path::new("(the demo's workflow system)");
    let errors = |e: Vec<crate::provision::DeclError>| {
        DemoError::Webhook(
            e.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; "),
        )
    };
    let source = crate::provision::decl::parse(path, &text).map_err(|e| errors(vec![e]))?;
    let added = crate::provision::load::validate(vec![streams, source]).map_err(errors)?;
    let mut out = d.clone();
    out.systems.retain(|s| s.decl.name.get_ref() != NAME);
    out.systems.extend(added.systems);
    Ok(out)
}
