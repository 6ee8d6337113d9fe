//! Outbound: an outbox row turned into the CloudEvent and NATS message the relay publishes, or
//! the reason it cannot be one.
//!
//! Pure: the same row always gives the same message, byte for byte, so a re-send after a crash
//! carries the same `id` and `Nats-Msg-Id`. Nothing here talks to PostgreSQL or NATS.
//!
//! Profile: `id` is a UUIDv7 made from the row's `recorded_at` and outbox id (time-ordered,
//! unique per source, and reversible to the outbox id, which is how the relay reconciles the
//! stream with the outbox); `source` = `/mes/<installation>/<site>`; `type` from the catalog;
//! `subject` = business key; `time` = when it happened; `datacontenttype` = `application/json`;
//! `dataschema` = the `$id` of the exact schema version; extensions `sequence` (outbox id,
//! zero-padded to 20 digits so string order is event order), `partitionkey` (the key),
//! `recordedtime`, and `traceparent`/`tracestate` when the writer passed them.

use async_nats::header::{HeaderMap, HeaderName};
use bytes::Bytes;
use cloudevents::event::Data;
use cloudevents::{AttributesReader, Event, EventBuilder, EventBuilderV10};
use serde_json::Value;

use super::binding::{self, BindingError, Mode};
use super::catalog::{Catalog, Entry, Violation};
use super::id::{event_id, msg_id, rfc3339, sequence};
use super::row::{Rejection, RejectionKind, Row};
use super::subject::{self, EventType, Location, TypeError};

/// What the relay needs to know about this installation to build events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// CloudEvents `source`.
    pub source: String,
    /// Site token for events whose data names no site.
    pub site: String,
    pub subject_prefix: String,
    pub mode: Mode,
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
    /// Bytes the server counts against `max_payload`: payload plus the encoded header block
    /// (`NATS/1.0\r\n`, `name: value\r\n` per header, final `\r\n`).
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

/// Why a row cannot become a valid event. Each is a rejection: the row is kept and reported.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EventError {
    #[error("type {ty:?} is malformed: {source}")]
    InvalidType {
        ty: String,
        #[source]
        source: TypeError,
    },
    #[error("type {0} is not in the event catalog: fix the type, or add the event to a site catalog (events.catalog, see `mes-events catalog list`)")]
    UnknownType(String),
    #[error("data is not JSON: {0}")]
    Json(String),
    /// Every violation of the schema (never empty): the first decides the rejection's path and
    /// rule, the message names them all.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Schema(Vec<Violation>),
    #[error("data field {field} is {found} but the event's key is {key:?}: the key given to emit must be the data's {field}")]
    KeyMismatch {
        field: String,
        found: String,
        key: String,
    },
    #[error("cannot encode the CloudEvent: {0}")]
    Encode(String),
}

impl EventError {
    /// The stored form: kind, data path and rule where they apply, and the message.
    pub fn rejection(&self) -> Rejection {
        use RejectionKind::*;
        let (kind, path, rule) = match self {
            EventError::InvalidType { .. } => (InvalidType, None, None),
            EventError::UnknownType(_) => (UnknownType, None, None),
            EventError::Json(_) => (Schema, Some(String::new()), Some("type".to_owned())),
            EventError::Schema(v) => (
                Schema,
                v.first().map(|v| v.path.clone()),
                v.first().map(|v| v.rule.clone()),
            ),
            EventError::KeyMismatch { field, .. } => (
                KeyMismatch,
                Some(format!("/{field}")),
                Some("key".to_owned()),
            ),
            EventError::Encode(_) => (Encode, None, None),
        };
        Rejection {
            kind,
            path,
            rule,
            reason: self.to_string(),
        }
    }
}

/// Checks an event against the catalog as the relay will (type known, data valid under its
/// schema, key equal to the data's key field), with the messages the relay would record: what
/// `emit` and `outbox retry --data` ask before writing anything.
pub fn validate(catalog: &Catalog, ty: &str, key: &str, data: &str) -> Result<(), EventError> {
    validated(catalog, ty, key, data).map(drop)
}

fn validated<'c>(
    catalog: &'c Catalog,
    ty: &str,
    key: &str,
    data: &str,
) -> Result<(EventType, &'c Entry, Value), EventError> {
    let parsed = EventType::parse(ty).map_err(|source| EventError::InvalidType {
        ty: ty.to_owned(),
        source,
    })?;
    let entry = catalog
        .get(ty)
        .ok_or_else(|| EventError::UnknownType(ty.to_owned()))?;
    let data: Value = serde_json::from_str(data).map_err(|e| EventError::Json(e.to_string()))?;
    let violations = entry.violations(&data);
    if !violations.is_empty() {
        return Err(EventError::Schema(violations));
    }
    let field = &entry.decl.key;
    match data.get(field) {
        Some(Value::String(k)) if *k == key => {}
        other => {
            return Err(EventError::KeyMismatch {
                field: field.clone(),
                found: other.map_or("missing".to_owned(), |v| v.to_string()),
                key: key.to_owned(),
            })
        }
    }
    Ok((parsed, entry, data))
}

/// Checks a row against the catalog (type known, data valid, key matching the data's key field)
/// and works out the subject it goes to.
fn check<'c>(
    profile: &Profile,
    catalog: &'c Catalog,
    row: &Row,
) -> Result<(&'c Entry, String), EventError> {
    let (ty, entry, data) = validated(catalog, &row.ty, &row.key, &row.data)?;
    let location = location(&data);
    let nats_subject = subject::subject(
        &profile.subject_prefix,
        &profile.site,
        &ty,
        &location,
        &row.key,
    );
    Ok((entry, nats_subject))
}

/// Builds the CloudEvent for a row and the subject it goes to, after checking it against the
/// catalog (type known, data valid, key matching the data's key field).
pub fn event(
    profile: &Profile,
    catalog: &Catalog,
    row: &Row,
) -> Result<(Event, String), EventError> {
    let (entry, nats_subject) = check(profile, catalog, row)?;
    let mut builder = EventBuilderV10::new()
        .id(event_id(row.id, row.recorded_at).to_string())
        .source(profile.source.as_str())
        .ty(row.ty.as_str())
        .subject(row.key.as_str())
        .time(row.occurred_at)
        // Raw JSON bytes: binary mode sends the stored text as is (no re-serialisation).
        .data_with_schema(
            "application/json",
            entry.dataschema.clone(),
            Data::Binary(row.data.clone().into_bytes()),
        )
        .extension("sequence", sequence(row.id))
        .extension("partitionkey", row.key.as_str())
        .extension("recordedtime", rfc3339(row.recorded_at));
    // A traceparent not in the W3C format (written from SQL) is left out, with its tracestate:
    // a tracer would refuse it, and the event goes out all the same.
    if let Some(t) = row.traceparent.as_ref().filter(|_| traced(row)) {
        builder = builder.extension("traceparent", t.as_str());
    }
    if let Some(t) = row.tracestate.as_ref().filter(|_| traced(row)) {
        builder = builder.extension("tracestate", t.as_str());
    }
    let event = builder
        .build()
        .map_err(|e| EventError::Encode(e.to_string()))?;
    Ok((event, nats_subject))
}

/// Builds the message the relay publishes for a row.
pub fn outbound(profile: &Profile, catalog: &Catalog, row: &Row) -> Result<Outbound, EventError> {
    let (subject, msg_id, mut headers, payload) = match profile.mode {
        Mode::Binary => {
            let (entry, subject) = check(profile, catalog, row)?;
            let id = event_id(row.id, row.recorded_at).to_string();
            let headers = binary_headers(profile, entry, row, &id);
            (
                subject,
                msg_id(&profile.source, &id),
                headers,
                Bytes::from(row.data.clone()),
            )
        }
        Mode::Structured => {
            let (event, subject) = event(profile, catalog, row)?;
            let msg_id = msg_id(&profile.source, event.id());
            let (headers, payload) = binding::encode(event, profile.mode)
                .map_err(|e: BindingError| EventError::Encode(e.to_string()))?;
            (subject, msg_id, headers, payload)
        }
    };
    headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id.as_str());
    Ok(Outbound {
        outbox_id: row.id,
        subject,
        msg_id,
        headers,
        payload,
    })
}

/// The binary-mode headers of [`event`]'s event, written directly: the same names and values
/// the sdk's serializer gives (`binary_mode_is_the_sdks_encoding` holds them equal), without
/// building an `Event` and walking it back out through the sdk's traits, which took 40% of
/// the relay's own CPU. Names are static, so only the values allocate.
fn binary_headers(profile: &Profile, entry: &Entry, row: &Row, id: &str) -> HeaderMap {
    use binding::percent_encode as enc;
    const fn ce(name: &'static str) -> HeaderName {
        HeaderName::from_static(name)
    }
    let mut h = HeaderMap::new();
    h.insert(ce("ce-specversion"), "1.0");
    h.insert(ce("ce-id"), enc(id));
    h.insert(ce("ce-source"), enc(&profile.source));
    h.insert(ce("ce-type"), enc(&row.ty));
    h.insert(ce("ce-datacontenttype"), "application/json");
    h.insert(ce("ce-dataschema"), enc(entry.dataschema.as_str()));
    h.insert(ce("ce-subject"), enc(&row.key));
    h.insert(ce("ce-time"), enc(&rfc3339(row.occurred_at)));
    h.insert(ce("ce-sequence"), sequence(row.id));
    h.insert(ce("ce-partitionkey"), enc(&row.key));
    h.insert(ce("ce-recordedtime"), enc(&rfc3339(row.recorded_at)));
    if let Some(t) = row.traceparent.as_ref().filter(|_| traced(row)) {
        h.insert(ce("ce-traceparent"), enc(t));
    }
    if let Some(t) = row.tracestate.as_ref().filter(|_| traced(row)) {
        h.insert(ce("ce-tracestate"), enc(t));
    }
    h
}

/// The location of an event: its data's `hierarchyScope` (the schema has checked its shape).
fn location(data: &Value) -> Location {
    let scope = data.get("hierarchyScope");
    let level = |name: &str| {
        scope
            .and_then(|s| s.get(name))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    Location {
        site: level("site"),
        area: level("area"),
        work_center: level("workCenter"),
        work_unit: level("workUnit"),
    }
}

/// Whether the row carries a valid W3C traceparent (then it and its tracestate go out).
pub fn traced(row: &Row) -> bool {
    row.traceparent
        .as_deref()
        .is_some_and(|t| super::check_traceparent(t).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use cloudevents::AttributesReader;

    fn row(id: i64, key: &str, data: &str) -> Row {
        Row {
            id,
            ty: "io.mesevents.mes.processorder.statuschanged.v1".into(),
            key: key.into(),
            key_version: 1,
            data: data.into(),
            occurred_at: Utc.with_ymd_and_hms(2026, 11, 23, 8, 0, 0).unwrap(),
            recorded_at: Utc.timestamp_micros(1_795_000_000_123_456).unwrap(),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            tracestate: None,
        }
    }

    fn profile(mode: Mode) -> Profile {
        Profile {
            source: "/mes/demo/bsl".into(),
            site: "bsl".into(),
            subject_prefix: "mes".into(),
            mode,
        }
    }

    fn order(key: &str) -> String {
        serde_json::json!({
            "orderId": key, "previousStatus": "released", "status": "running",
            "hierarchyScope": {"site": "bsl", "area": "gran", "workCenter": "line2"}
        })
        .to_string()
    }

    #[test]
    fn the_same_row_gives_the_same_message_with_the_profile() {
        let catalog = Catalog::embedded().unwrap();
        let r = row(7, "LOT 1", &order("LOT 1"));
        let a = outbound(&profile(Mode::Binary), &catalog, &r).unwrap();
        let b = outbound(&profile(Mode::Binary), &catalog, &r).unwrap();
        assert_eq!(a.msg_id, b.msg_id);
        assert_eq!(a.payload, b.payload);
        assert_eq!(
            a.payload,
            r.data.as_bytes(),
            "binary mode sends the stored JSON as is"
        );
        assert_eq!(
            a.subject,
            "mes.bsl.gran.line2._.processorder.statuschanged.v1.LOT_201"
        );
        let h = |n: &str| a.headers.get(n).unwrap().as_str().to_owned();
        assert_eq!(h("ce-subject"), "LOT%201");
        assert_eq!(h("ce-partitionkey"), "LOT%201");
        assert_eq!(h("ce-sequence"), "00000000000000000007");
        assert_eq!(
            h("ce-dataschema"),
            "https://mesevents.io/schemas/processorder/statuschanged.v1.0.json"
        );
        assert_eq!(h("ce-time"), "2026-11-23T08:00:00Z");
        assert_eq!(h("ce-recordedtime"), "2026-11-18T11:06:40.123456Z");
        assert_eq!(
            h("ce-traceparent"),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
        assert_eq!(h("Nats-Msg-Id"), a.msg_id);
        // And the same event comes back out of both modes.
        let (ev, _) = event(&profile(Mode::Binary), &catalog, &r).unwrap();
        let s = outbound(&profile(Mode::Structured), &catalog, &r).unwrap();
        let from_binary =
            binding::decode(Some(&a.headers), &a.payload, binding::Rule::Spec).unwrap();
        let from_structured =
            binding::decode(Some(&s.headers), &s.payload, binding::Rule::Spec).unwrap();
        assert_eq!(from_binary, from_structured);
        assert_eq!(from_binary.id(), ev.id());
    }

    #[test]
    fn a_traceparent_not_in_the_w3c_format_is_left_out_with_its_tracestate() {
        let catalog = Catalog::embedded().unwrap();
        let mut r = row(7, "4711", &order("4711"));
        r.traceparent = Some("garbage".into());
        r.tracestate = Some("vendor=a".into());
        for mode in [Mode::Binary, Mode::Structured] {
            let out = outbound(&profile(mode), &catalog, &r).unwrap();
            let ev =
                binding::decode(Some(&out.headers), &out.payload, binding::Rule::Spec).unwrap();
            assert!(ev.extension("traceparent").is_none(), "{mode:?}");
            assert!(ev.extension("tracestate").is_none(), "{mode:?}");
        }
    }

    #[test]
    fn binary_mode_is_the_sdks_encoding() {
        let catalog = Catalog::embedded().unwrap();
        let p = profile(Mode::Binary);
        let mut rows = vec![row(1, "4711", &order("4711"))];
        for key in ["LOT 1", "PO-%20", "Straße \"7\"", "k\u{7f}"] {
            let mut r = row(1 << 40, key, &order(key));
            r.traceparent = None;
            rows.push(r);
        }
        let mut traced = row(99, "t", &order("t"));
        traced.tracestate = Some("vendor=a b,other=%".into());
        rows.push(traced);
        for r in &rows {
            let fast = outbound(&p, &catalog, r).unwrap();
            let (ev, subject) = event(&p, &catalog, r).unwrap();
            let id = msg_id(&p.source, ev.id());
            let (mut headers, payload) = binding::encode(ev, Mode::Binary).unwrap();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
            assert_eq!(fast.headers, headers, "row with key {:?}", r.key);
            assert_eq!(fast.payload, payload);
            assert_eq!(fast.subject, subject);
            assert_eq!(fast.msg_id, id);
        }
    }

    #[test]
    fn each_reason_is_a_typed_rejection_naming_path_and_rule() {
        let catalog = Catalog::embedded().unwrap();
        let p = profile(Mode::Binary);
        let kind = |r: &Row| outbound(&p, &catalog, r).unwrap_err().rejection().kind;
        let mut r = row(10, "k", &order("k"));
        r.ty = "orderchanged".into();
        assert_eq!(kind(&r).as_str(), "invalid_type");
        r.ty = "io.mesevents.mes.processorder.exploded.v1".into();
        assert_eq!(kind(&r).as_str(), "unknown_type");
        let bad = row(11, "k", &order("k").replace("running", "runing"));
        let rej = outbound(&p, &catalog, &bad).unwrap_err().rejection();
        assert_eq!(
            (rej.kind.as_str(), rej.path.as_deref(), rej.rule.as_deref()),
            ("schema", Some("/status"), Some("enum"))
        );
        let other = row(12, "k", &order("not-k"));
        let rej = outbound(&p, &catalog, &other).unwrap_err().rejection();
        assert_eq!(
            (rej.kind.as_str(), rej.path.as_deref()),
            ("key_mismatch", Some("/orderId"))
        );
    }
}
