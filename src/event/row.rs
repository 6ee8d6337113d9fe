//! The outbox row as the MES wrote it, and why a row could not be published.
//!
//! Plain data shared by the event layer (which reads rows and names rejections) and the store
//! (which loads rows and records rejections). Never talks to PostgreSQL itself.

use chrono::{DateTime, Utc};

/// One unpublished event as the MES wrote it.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub id: i64,
    pub ty: String,
    pub key: String,
    pub key_version: i64,
    /// The event data as JSON text.
    pub data: String,
    pub occurred_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

/// What kind of problem kept a row from being published; stored as its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectionKind {
    /// The type is not of the form `<prefix>.<category>.<event>.v<major>`.
    InvalidType,
    /// The type is not in the catalog.
    UnknownType,
    /// The data is not JSON, or breaks the type's schema.
    Schema,
    /// The data's key field is not the key given to emit.
    KeyMismatch,
    /// The CloudEvent could not be encoded.
    Encode,
    /// Larger than the server's `max_payload` or the stream's `max_msg_size`.
    TooLarge,
    /// No stream of the relay captures its subject.
    Unroutable,
}

impl RejectionKind {
    /// The text stored in `mes_events.outbox.reject_kind` and shown to operators.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectionKind::InvalidType => "invalid_type",
            RejectionKind::UnknownType => "unknown_type",
            RejectionKind::Schema => "schema",
            RejectionKind::KeyMismatch => "key_mismatch",
            RejectionKind::Encode => "encode",
            RejectionKind::TooLarge => "too_large",
            RejectionKind::Unroutable => "unroutable",
        }
    }
}

impl std::fmt::Display for RejectionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a row was rejected, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub kind: RejectionKind,
    /// JSON Pointer into the data, when the reason is about a field.
    pub path: Option<String>,
    /// The schema keyword or limit that failed.
    pub rule: Option<String>,
    pub reason: String,
}

impl Rejection {
    /// A message over `limit` bytes (`size` with its headers).
    pub fn too_large(size: usize, limit: usize) -> Rejection {
        Rejection {
            kind: RejectionKind::TooLarge,
            path: None,
            rule: Some("max_payload".into()),
            reason: format!(
                "the message would be {size} bytes, over the limit of {limit} (the server's max_payload or the stream's max_msg_size): shrink the data (e.g. link to large content instead of embedding it)"
            ),
        }
    }

    /// A subject none of the relay's streams (`streams`) captures.
    pub fn unroutable(subject: &str, streams: &[&str]) -> Rejection {
        Rejection {
            kind: RejectionKind::Unroutable,
            path: None,
            rule: None,
            reason: format!(
                "subject {subject} is captured by none of the relay's streams ({}): add it to a stream's subjects, or fix the event's type or hierarchyScope",
                streams.join(", ")
            ),
        }
    }
}
