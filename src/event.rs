//! Event: an outbox row turned into the CloudEvent and NATS message the relay publishes.
//!
//! Pure: the same row always gives the same message, byte for byte, so a re-send after a crash
//! carries the same `id` and `Nats-Msg-Id`. Nothing here talks to PostgreSQL or NATS.
//!
//! Profile: `id` is a UUIDv7 made from the row's `recorded_at` and outbox id (time-ordered,
//! unique per source, and reversible to the outbox id, which is how the relay reconciles the
//! stream with the outbox); `source` = `/mes/<installation>/<site>`; `subject` = business key;
//! `time` = when it happened; extensions `sequence` (outbox id, zero-padded to 20 digits so string
//! order is event order), `partitionkey` (the key), `recordedtime`, `traceparent`/`tracestate`.

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use uuid::Uuid;

use crate::binding;
use crate::outbox::Row;
use crate::subject::{self, EventType, Location, TypeError};

/// Width of the zero-padded `sequence` extension: enough for any positive `bigint`.
pub const SEQUENCE_WIDTH: usize = 20;

/// What the relay needs to know about this installation to build events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// CloudEvents `source`.
    pub source: String,
    /// Site token for events whose data names no site.
    pub site: String,
    pub subject_prefix: String,
}

impl Profile {
    pub fn from_config(c: &crate::config::Config) -> Profile {
        Profile {
            source: c.source(),
            site: c.events.site.clone(),
            subject_prefix: c.events.subject_prefix.clone(),
        }
    }
}

/// The CloudEvents attributes of one event (data kept apart, as raw JSON bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes {
    pub id: String,
    pub source: String,
    pub ty: String,
    pub subject: String,
    pub time: DateTime<Utc>,
    pub datacontenttype: String,
    pub sequence: String,
    pub partitionkey: String,
    pub recordedtime: DateTime<Utc>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

impl Attributes {
    /// `(name, value)` for every attribute present, in a stable order, values as the JSON format
    /// and the binding write them.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![
            ("specversion", "1.0".to_owned()),
            ("id", self.id.clone()),
            ("source", self.source.clone()),
            ("type", self.ty.clone()),
            ("subject", self.subject.clone()),
            ("time", rfc3339(self.time)),
            ("datacontenttype", self.datacontenttype.clone()),
            ("sequence", self.sequence.clone()),
            ("partitionkey", self.partitionkey.clone()),
            ("recordedtime", rfc3339(self.recordedtime)),
        ];
        if let Some(t) = &self.traceparent {
            v.push(("traceparent", t.clone()));
        }
        if let Some(t) = &self.tracestate {
            v.push(("tracestate", t.clone()));
        }
        v
    }
}

/// A message ready for `send_publish`.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub outbox_id: i64,
    pub subject: String,
    pub msg_id: String,
    pub headers: async_nats::HeaderMap,
    pub payload: Bytes,
}

impl Outbound {
    /// Bytes the server counts against `max_payload`: payload plus encoded headers (approximate
    /// from above: the header block's framing is added).
    pub fn wire_size(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, vs)| {
                vs.iter()
                    .map(|v| AsRef::<str>::as_ref(k).len() + v.as_str().len() + 4)
                    .sum::<usize>()
            })
            .sum();
        self.payload.len() + headers + 12
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EventError {
    #[error("outbox row {id}: {source}")]
    Type {
        id: i64,
        #[source]
        source: TypeError,
    },
    #[error("outbox row {id}: data.hierarchyScope is not an object of site/area/workCenter/workUnit strings: {reason}")]
    Scope { id: i64, reason: String },
}

impl EventError {
    pub fn outbox_id(&self) -> i64 {
        match self {
            EventError::Type { id, .. } | EventError::Scope { id, .. } => *id,
        }
    }
}

/// Builds the attributes and subject of a row.
pub fn attributes(profile: &Profile, row: &Row) -> Result<(Attributes, String), EventError> {
    let ty = EventType::parse(&row.ty).map_err(|source| EventError::Type { id: row.id, source })?;
    let location = location(row)?;
    let nats_subject = subject::subject(
        &profile.subject_prefix,
        &profile.site,
        &ty,
        &location,
        &row.key,
    );
    let attrs = Attributes {
        id: event_id(row.id, row.recorded_at).to_string(),
        source: profile.source.clone(),
        ty: row.ty.clone(),
        subject: row.key.clone(),
        time: row.occurred_at,
        datacontenttype: "application/json".into(),
        sequence: format!("{:0width$}", row.id, width = SEQUENCE_WIDTH),
        partitionkey: row.key.clone(),
        recordedtime: row.recorded_at,
        traceparent: row.traceparent.clone(),
        tracestate: row.tracestate.clone(),
    };
    Ok((attrs, nats_subject))
}

/// Builds the binary-mode message for a row.
pub fn outbound(profile: &Profile, row: &Row) -> Result<Outbound, EventError> {
    let (attrs, subject) = attributes(profile, row)?;
    let msg_id = msg_id(&attrs.source, &attrs.id);
    let mut headers = binding::binary_headers(&attrs);
    headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id.as_str());
    Ok(Outbound {
        outbox_id: row.id,
        subject,
        msg_id,
        headers,
        payload: Bytes::from(row.data.clone().into_bytes()),
    })
}

fn location(row: &Row) -> Result<Location, EventError> {
    #[derive(serde::Deserialize)]
    struct Scoped {
        #[serde(rename = "hierarchyScope", default)]
        hierarchy_scope: Option<Location>,
    }
    // Data that is not a JSON object (an array, a number) has no scope.
    if !row.data.trim_start().starts_with('{') {
        return Ok(Location::default());
    }
    // Only the scope is decoded; serde skips the rest of the document without building it.
    serde_json::from_str::<Scoped>(&row.data)
        .map(|s| s.hierarchy_scope.unwrap_or_default())
        .map_err(|e| EventError::Scope {
            id: row.id,
            reason: e.to_string(),
        })
}

/// `Nats-Msg-Id`: JetStream deduplicates on it alone, so it carries the source too.
pub fn msg_id(source: &str, id: &str) -> String {
    format!("{source}#{id}")
}

/// The outbox id and source carried by a `Nats-Msg-Id` this relay wrote.
pub fn parse_msg_id(msg_id: &str) -> Option<(&str, i64)> {
    let (source, id) = msg_id.rsplit_once('#')?;
    Some((source, outbox_id_of(Uuid::parse_str(id).ok()?)?))
}

/// UUIDv7: 48-bit Unix milliseconds, 12 bits of sub-millisecond microseconds, 62 bits of outbox id.
pub fn event_id(outbox_id: i64, recorded_at: DateTime<Utc>) -> Uuid {
    let ms = recorded_at.timestamp_millis().max(0) as u64;
    let sub_ms = (recorded_at.timestamp_subsec_micros() % 1000) as u16;
    let id = outbox_id.max(0) as u64;
    let mut b = [0u8; 16];
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    b[6] = 0x70 | ((sub_ms >> 8) as u8 & 0x0f);
    b[7] = sub_ms as u8;
    b[8] = 0x80 | ((id >> 56) as u8 & 0x3f);
    b[9..].copy_from_slice(&id.to_be_bytes()[1..]);
    Uuid::from_bytes(b)
}

/// Inverse of [`event_id`] for the outbox id.
pub fn outbox_id_of(id: Uuid) -> Option<i64> {
    let b = id.as_bytes();
    if b[6] >> 4 != 7 || b[8] >> 6 != 0b10 {
        return None;
    }
    let mut v = [0u8; 8];
    v[0] = b[8] & 0x3f;
    v[1..].copy_from_slice(&b[9..]);
    Some(u64::from_be_bytes(v) as i64)
}

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    pub(crate) fn row(id: i64, key: &str, data: &str) -> Row {
        Row {
            id,
            ty: "com.example.mes.processorder.statuschanged.v1".into(),
            key: key.into(),
            key_version: 1,
            data: data.into(),
            occurred_at: Utc.with_ymd_and_hms(2026, 11, 23, 8, 0, 0).unwrap(),
            recorded_at: Utc.timestamp_micros(1_795_000_000_123_456).unwrap(),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            tracestate: None,
        }
    }

    fn profile() -> Profile {
        Profile {
            source: "/mes/demo/bsl".into(),
            site: "bsl".into(),
            subject_prefix: "mes".into(),
        }
    }

    #[test]
    fn event_ids_are_time_ordered_and_reversible() {
        let r = row(42, "4711", "{}");
        let id = event_id(r.id, r.recorded_at);
        assert_eq!(id.get_version_num(), 7);
        assert_eq!(outbox_id_of(id), Some(42));
        let later = event_id(41, r.recorded_at + chrono::Duration::microseconds(1));
        assert!(
            later > id,
            "a later recorded time sorts later whatever the outbox id"
        );
        assert_eq!(
            outbox_id_of(event_id(i64::MAX >> 1, r.recorded_at)),
            Some(i64::MAX >> 1)
        );
        let m = msg_id("/mes/demo/bsl", &id.to_string());
        assert_eq!(parse_msg_id(&m), Some(("/mes/demo/bsl", 42)));
        assert_eq!(parse_msg_id("foreign-id"), None);
    }

    #[test]
    fn the_same_row_gives_the_same_message() {
        let r = row(
            7,
            "LOT 1",
            r#"{"hierarchyScope":{"area":"gran","workCenter":"line2"}}"#,
        );
        let a = outbound(&profile(), &r).unwrap();
        let b = outbound(&profile(), &r).unwrap();
        assert_eq!(a.msg_id, b.msg_id);
        assert_eq!(a.payload, b.payload);
        assert_eq!(
            a.subject,
            "mes.bsl.gran.line2._.processorder.statuschanged.v1.LOT_201"
        );
        assert_eq!(a.headers.get("ce-subject").unwrap().as_str(), "LOT%201");
        assert_eq!(
            a.headers.get("ce-sequence").unwrap().as_str(),
            "00000000000000000007"
        );
        assert_eq!(a.headers.get("Nats-Msg-Id").unwrap().as_str(), a.msg_id);
    }

    #[test]
    fn bad_scope_and_type_are_errors_naming_the_row() {
        let r = row(9, "k", r#"{"hierarchyScope":{"area":5}}"#);
        assert!(matches!(
            outbound(&profile(), &r),
            Err(EventError::Scope { id: 9, .. })
        ));
        let mut r = row(10, "k", "{}");
        r.ty = "orderchanged".into();
        let e = outbound(&profile(), &r).unwrap_err();
        assert_eq!(e.outbox_id(), 10);
    }
}
