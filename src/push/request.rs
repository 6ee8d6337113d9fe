//! One event as one signed HTTP request, and what an answer means. Pure.
//!
//! The request follows the CloudEvents HTTP protocol binding: in binary mode every attribute
//! (extensions too) is a `ce-<name>` header, percent-encoded by the same rules as the NATS
//! binding, `datacontenttype` is `Content-Type` and the body is the data; in structured mode the
//! body is the JSON event format with `Content-Type: application/cloudevents+json`. Every
//! CloudEvents SDK reads either.
//!
//! It is signed as Standard Webhooks 1.0 says, with the specification's own Rust library
//! (`standardwebhooks`): `webhook-id` is stable per event (the JetStream deduplication id,
//! `<source>#<id>`), so a receiver de-duplicates a redelivery by it; `webhook-timestamp` is the
//! attempt's time; `webhook-signature` is `v1,` + base64 HMAC-SHA256 of `id.timestamp.body`.
//!
//! In batched mode the body is a JSON array of events in the JSON event format, with
//! `Content-Type: application/cloudevents-batch+json`; at most one event per key, so a receiver
//! may handle them in any order. Its `webhook-id` is derived from the events' ids (the same
//! events give the same id), but a batch is not sent again as it was: after a failure or a
//! restart its events may come back in other company. A receiver de-duplicates each event by
//! `source` and `id`.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use cloudevents::{AttributesReader, Event};

use crate::event::binding::{self, BindingError, Mode};
use crate::provision::decl::PushMode;

/// A system's signing key, from its `whsec_…` secret. Never printed.
pub struct Signer(standardwebhooks::Webhook);

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(…)")
    }
}

impl Signer {
    /// From a secret as Standard Webhooks writes them: `whsec_` and the base64 of 24 to 64
    /// random bytes. The error says what is wrong, never what the secret is.
    pub fn new(secret: &str) -> Result<Signer, String> {
        use base64::Engine as _;
        let secret = secret.trim();
        let Some(b64) = secret.strip_prefix("whsec_") else {
            return Err("it does not start with whsec_ (a Standard Webhooks secret is whsec_ + base64 of 24 to 64 random bytes; e.g. `echo whsec_$(openssl rand -base64 32)`)".into());
        };
        let key = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| "what follows whsec_ is not base64".to_owned())?;
        if !(24..=64).contains(&key.len()) {
            return Err(format!(
                "its key is {} bytes: use 24 to 64 random bytes",
                key.len()
            ));
        }
        standardwebhooks::Webhook::from_bytes(key)
            .map(Signer)
            .map_err(|e| e.to_string())
    }

    /// `v1,<base64 signature>` of `id.timestamp.body`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> Result<String, String> {
        self.0
            .sign(id, timestamp, body)
            .map_err(|e| format!("cannot sign: {e}"))
    }
}

/// An HTTP request ready to send: headers in order, and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The id a receiver de-duplicates on: the same for every attempt and every redelivery of an
/// event, unique across sources (the JetStream deduplication id).
pub fn webhook_id(event: &Event) -> String {
    format!("{}#{}", event.source(), event.id())
}

/// The request for `event`, signed at `timestamp` (Unix seconds), with the declared extra
/// headers.
pub fn build(
    event: Event,
    mode: PushMode,
    extra: &BTreeMap<String, String>,
    signer: &Signer,
    timestamp: i64,
) -> Result<Request, String> {
    let id = webhook_id(&event);
    let (nats, body) = binding::encode(
        event,
        match mode {
            PushMode::Binary => Mode::Binary,
            PushMode::Structured | PushMode::Batched => Mode::Structured,
        },
    )
    .map_err(|e: BindingError| e.to_string())?;
    let mut headers = Vec::new();
    for (name, values) in nats.iter() {
        let name: &str = name.as_ref();
        let lower = name.to_ascii_lowercase();
        let Some(value) = values.first() else {
            continue;
        };
        let value = value.as_str().to_owned();
        if lower == "ce-datacontenttype" {
            // HTTP binary mode: datacontenttype travels as Content-Type.
            headers.push(("content-type".to_owned(), value));
        } else if lower.starts_with("ce-") || lower == "content-type" {
            headers.push((lower, value));
        }
    }
    headers.sort();
    signed(headers, extra, signer, id, timestamp, body)
}

/// The request: `headers`, then the declared extra ones, then the Standard Webhooks ones for
/// `id`, `timestamp` and `body`.
fn signed(
    mut headers: Vec<(String, String)>,
    extra: &BTreeMap<String, String>,
    signer: &Signer,
    id: String,
    timestamp: i64,
    body: Bytes,
) -> Result<Request, String> {
    for (k, v) in extra {
        headers.push((k.clone(), v.clone()));
    }
    let signature = signer.sign(&id, timestamp, &body)?;
    headers.push(("webhook-id".into(), id));
    headers.push(("webhook-timestamp".into(), timestamp.to_string()));
    headers.push(("webhook-signature".into(), signature));
    Ok(Request { headers, body })
}

/// The content type of a batched request (CloudEvents JSON batch format).
pub const BATCH_CONTENT_TYPE: &str = "application/cloudevents-batch+json";

/// A batch's `webhook-id`: a digest of its events' ids, in the order sent.
pub fn batch_id(events: &[Event]) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    for e in events {
        h.update(webhook_id(e).as_bytes());
        h.update([0]);
    }
    let digest = h.finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("batch_{hex}")
}

/// The element of a batch for `event` (the JSON event format), or why it cannot be one.
pub fn batch_element(event: Event) -> Result<serde_json::Value, String> {
    serde_json::to_value(binding::json_data(event)).map_err(|e| e.to_string())
}

/// The batched request for `events` (given as their elements too, from [`batch_element`]),
/// signed at `timestamp`, with the declared extra headers.
pub fn build_batch(
    events: &[Event],
    elements: Vec<serde_json::Value>,
    extra: &BTreeMap<String, String>,
    signer: &Signer,
    timestamp: i64,
) -> Result<Request, String> {
    let id = batch_id(events);
    let body =
        serde_json::to_vec(&serde_json::Value::Array(elements)).map_err(|e| e.to_string())?;
    let headers = vec![("content-type".to_owned(), BATCH_CONTENT_TYPE.to_owned())];
    signed(headers, extra, signer, id, timestamp, body.into())
}

/// What an answer (or its absence) means for the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: delivered; ack it.
    Delivered,
    /// 429, or 503 with `Retry-After`: the endpoint asks to wait; not the event's fault, so not
    /// an attempt: wait this long and send it again.
    Throttled(Duration),
    /// Anything else: the attempt failed, for this reason (status and response excerpt, or the
    /// transport's error).
    Failed(String),
}

/// Longest wait a `Retry-After` is followed for (a longer one is capped to it).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Without `Retry-After`, a 429 waits this long.
pub const DEFAULT_THROTTLE: Duration = Duration::from_secs(5);

/// The verdict on an HTTP answer: its status, its `Retry-After` header and the start of its body.
pub fn verdict(status: u16, retry_after: Option<&str>, body: &[u8]) -> Verdict {
    if (200..300).contains(&status) {
        return Verdict::Delivered;
    }
    let after = retry_after.and_then(parse_retry_after);
    match (status, after) {
        (429, after) => Verdict::Throttled(after.unwrap_or(DEFAULT_THROTTLE)),
        (503, Some(after)) => Verdict::Throttled(after),
        _ => Verdict::Failed(format!("HTTP {status}: {}", excerpt(body))),
    }
}

/// `Retry-After` as seconds (an HTTP date is taken as its distance from now), capped.
fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    let d = match v.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
            (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
                .to_std()
                .unwrap_or_default()
        }
    };
    Some(d.min(MAX_RETRY_AFTER))
}

/// The first 200 characters of a response body, on one line.
pub fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    let trimmed = one_line.trim();
    if trimmed.is_empty() {
        "(empty response)".into()
    } else if text.chars().count() > 200 {
        format!("{trimmed}…")
    } else {
        trimmed.to_owned()
    }
}

/// The delay before attempt `attempt + 1` after attempt `attempt` (1-based) failed: the
/// schedule's step, its last one over and over once past its end.
pub fn delay(schedule: &[Duration], attempt: i64) -> Duration {
    let i = (attempt.max(1) - 1) as usize;
    schedule
        .get(i)
        .or(schedule.last())
        .copied()
        .unwrap_or(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn event() -> Event {
        use cloudevents::{EventBuilder, EventBuilderV10};
        EventBuilderV10::new()
            .id("0192b7e0-0000-7000-8000-000000000001")
            .source("/mes/mes/bsl")
            .ty("io.mesevents.mes.processorder.statuschanged.v1")
            .subject("PO 4711/ü")
            .data(
                "application/json",
                serde_json::json!({"orderId": "PO 4711/ü"}),
            )
            .extension("partitionkey", "PO 4711/ü")
            .build()
            .unwrap()
    }

    #[test]
    fn binary_mode_puts_attributes_in_ce_headers_and_data_in_the_body() {
        let signer = Signer::new(SECRET).unwrap();
        let mut extra = BTreeMap::new();
        extra.insert("X-Tenant".to_owned(), "bsl".to_owned());
        let r = build(event(), PushMode::Binary, &extra, &signer, 1_700_000_000).unwrap();
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("ce-specversion"), Some("1.0"));
        assert_eq!(r.header("ce-subject"), Some("PO%204711/%C3%BC"));
        assert_eq!(r.header("ce-datacontenttype"), None);
        assert_eq!(r.header("x-tenant"), Some("bsl"));
        assert_eq!(
            r.header("webhook-id"),
            Some("/mes/mes/bsl#0192b7e0-0000-7000-8000-000000000001")
        );
        assert_eq!(r.header("webhook-timestamp"), Some("1700000000"));
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["orderId"], "PO 4711/ü");
    }

    #[test]
    fn the_signature_verifies_with_the_specifications_library_and_only_for_this_body() {
        let signer = Signer::new(SECRET).unwrap();
        let now = chrono::Utc::now().timestamp();
        let r = build(
            event(),
            PushMode::Structured,
            &BTreeMap::new(),
            &signer,
            now,
        )
        .unwrap();
        assert_eq!(
            r.header("content-type"),
            Some("application/cloudevents+json")
        );
        let mut h = http::HeaderMap::new();
        for (k, v) in &r.headers {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let verifier = standardwebhooks::Webhook::new(SECRET).unwrap();
        verifier.verify(&r.body, &h).unwrap();
        let mut tampered = r.body.to_vec();
        tampered[0] = b' ';
        assert!(verifier.verify(&tampered, &h).is_err());
    }

    #[test]
    fn a_batch_is_an_array_of_structured_events_under_a_stable_id() {
        use cloudevents::AttributesWriter;
        let signer = Signer::new(SECRET).unwrap();
        let mut second = event();
        second.set_id("0192b7e0-0000-7000-8000-000000000002");
        second.set_subject(Some("PO 4712"));
        let events = vec![event(), second];
        let elements: Vec<_> = events
            .iter()
            .cloned()
            .map(|e| batch_element(e).unwrap())
            .collect();
        let now = chrono::Utc::now().timestamp();
        let r = build_batch(&events, elements.clone(), &BTreeMap::new(), &signer, now).unwrap();
        assert_eq!(r.header("content-type"), Some(BATCH_CONTENT_TYPE));
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body[0]["subject"], "PO 4711/ü");
        assert_eq!(body[0]["data"]["orderId"], "PO 4711/ü");
        assert_eq!(body[1]["id"], "0192b7e0-0000-7000-8000-000000000002");
        assert_eq!(body[1]["partitionkey"], "PO 4711/ü");
        // The same events: the same id, at any time; other events, another id.
        let again = build_batch(&events, elements, &BTreeMap::new(), &signer, now + 60).unwrap();
        assert_eq!(r.header("webhook-id"), again.header("webhook-id"));
        assert_ne!(
            r.header("webhook-id"),
            Some(batch_id(&events[..1]).as_str())
        );
        let mut h = http::HeaderMap::new();
        for (k, v) in &r.headers {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        standardwebhooks::Webhook::new(SECRET)
            .unwrap()
            .verify(&r.body, &h)
            .unwrap();
    }

    #[test]
    fn secrets_are_checked_without_being_repeated() {
        for bad in [
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_***",
            "whsec_YWJj",
        ] {
            let e = Signer::new(bad).unwrap_err();
            assert!(!e.contains(bad.trim_start_matches("whsec_")), "{e}");
        }
    }

    #[test]
    fn answers_mean_delivered_throttled_or_failed() {
        assert_eq!(verdict(204, None, b""), Verdict::Delivered);
        assert_eq!(
            verdict(429, Some("7"), b""),
            Verdict::Throttled(Duration::from_secs(7))
        );
        assert_eq!(
            verdict(429, None, b""),
            Verdict::Throttled(DEFAULT_THROTTLE)
        );
        assert_eq!(
            verdict(503, Some("99999"), b""),
            Verdict::Throttled(MAX_RETRY_AFTER)
        );
        assert_eq!(
            verdict(503, None, b"down"),
            Verdict::Failed("HTTP 503: down".into())
        );
        assert_eq!(
            verdict(400, None, b"{\"error\":\n\"bad\"}"),
            Verdict::Failed("HTTP 400: {\"error\": \"bad\"}".into())
        );
        let long = "x".repeat(500);
        match verdict(500, None, long.as_bytes()) {
            Verdict::Failed(r) => assert!(r.len() < 220 && r.ends_with('…'), "{r}"),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn delays_follow_the_schedule_then_repeat_its_last_step() {
        let s: Vec<Duration> = [5, 30, 120].into_iter().map(Duration::from_secs).collect();
        assert_eq!(delay(&s, 1), Duration::from_secs(5));
        assert_eq!(delay(&s, 3), Duration::from_secs(120));
        assert_eq!(delay(&s, 9), Duration::from_secs(120));
    }
}
