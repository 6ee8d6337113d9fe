//! The CloudEvents NATS protocol binding for async-nats, on cloudevents-sdk's message traits.
//!
//! Binary mode (the default): every attribute, extensions too, in its own exact lower-case
//! `ce-<name>` header (`datacontenttype` as `ce-datacontenttype`, not `Content-Type`), values
//! percent-encoded as the binding requires (space, `"`, `%` and every byte outside
//! U+0021–U+007E as `%XY` of its UTF-8 bytes, upper-case hex); body = data.
//!
//! Structured mode (on request): body = the JSON event format, with
//! `Content-Type: application/cloudevents+json` so that a spec-literal receiver recognises it.
//!
//! Decoding reads both modes: structured when `Content-Type` starts with
//! `application/cloudevents` (the spec's rule), binary when a `ce-specversion` header is present
//! (sdk-go's rule), and, under [`Rule::Lenient`], a message with neither is tried as structured
//! JSON (what sdk-go does). Header names are compared case-insensitively; invalid
//! percent-encoding and invalid UTF-8 are errors that name the header.
//!
//! The sdk's own `nats` feature is structured-only and pins another async-nats; it is not used.
//! Pure functions; no I/O.
//!
//! It stays one file of about 520 lines: the serializer and deserializer of one binding, and the
//! tests (a third of it) that hold the two to each other and to the specification.

use async_nats::HeaderMap;
use bytes::Bytes;
use cloudevents::event::{Data, SpecVersion};
use cloudevents::message::{
    BinaryDeserializer, BinarySerializer, Encoding, MessageAttributeValue, MessageDeserializer,
    StructuredDeserializer, StructuredSerializer,
};
use cloudevents::{AttributesReader, Event};

/// Header name prefix of binary-mode attributes.
pub const CE_PREFIX: &str = "ce-";
/// Content type of the JSON event format (structured mode).
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";

/// How an event is laid out on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Attributes in `ce-*` headers, body = data: readable by any NATS client without parsing.
    #[default]
    Binary,
    /// Body = JSON event format with `Content-Type: application/cloudevents+json`.
    Structured,
}

impl std::fmt::Display for Mode {
    /// As the configuration writes it (`binary`, `structured`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Binary => "binary",
            Mode::Structured => "structured",
        })
    }
}

/// Which rule decides the mode of a received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rule {
    /// The binding as written: structured only with a cloudevents `Content-Type`, else binary.
    Spec,
    /// The spec's rule, then sdk-go's: a message with neither a cloudevents `Content-Type` nor a
    /// `ce-specversion` header is read as structured JSON.
    #[default]
    Lenient,
}

#[derive(Debug, thiserror::Error)]
pub enum BindingError {
    #[error("header {header}: invalid percent-encoding at byte {at} of {value:?} ('%' must be followed by two hex digits)")]
    Percent {
        header: String,
        value: String,
        at: usize,
    },
    #[error("header {header}: percent-decoded value is not valid UTF-8")]
    Utf8 { header: String },
    #[error("structured event body is not valid UTF-8 JSON: {0}")]
    Body(String),
    #[error("not a CloudEvent under the NATS binding: no `Content-Type: application/cloudevents…` header and no `ce-specversion` header (a structured event must carry that Content-Type)")]
    NotCloudEvent,
    #[error("invalid CloudEvent: {0}")]
    Event(String),
}

/// Encodes an event for publishing: (headers, body).
pub fn encode(event: Event, mode: Mode) -> Result<(HeaderMap, Bytes), BindingError> {
    match mode {
        Mode::Binary => BinaryDeserializer::deserialize_binary(event, NatsSerializer::default()),
        Mode::Structured => StructuredDeserializer::deserialize_structured(
            json_data(event),
            NatsSerializer::default(),
        ),
    }
    .map_err(from_sdk)
}

/// Decodes a received message (headers, body) into an event, JSON data as [`Data::Json`].
pub fn decode(headers: Option<&HeaderMap>, body: &[u8], rule: Rule) -> Result<Event, BindingError> {
    let empty = HeaderMap::new();
    let msg = NatsMessage {
        headers: headers.unwrap_or(&empty),
        body,
        rule,
    };
    msg.check_headers()?;
    let event = MessageDeserializer::into_event(msg).map_err(from_sdk)?;
    Ok(json_data(event))
}

/// Binary JSON data as parsed JSON, so both modes decode to the same event and structured mode
/// writes `data` rather than `data_base64`.
pub fn json_data(mut event: Event) -> Event {
    let is_json = event.datacontenttype().is_some_and(|ct| {
        let ct = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        ct == "application/json" || ct == "text/json" || ct.ends_with("+json")
    });
    if !is_json {
        return event;
    }
    let parsed = match event.data() {
        Some(Data::Binary(b)) => serde_json::from_slice(b).ok(),
        Some(Data::String(s)) => serde_json::from_str(s).ok(),
        _ => None,
    };
    if let Some(v) = parsed {
        event.set_data_unchecked(Data::Json(v));
    }
    event
}

/// Percent-encodes a header value as the NATS binding requires.
pub fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for &b in value.as_bytes() {
        if (0x21..=0x7e).contains(&b) && b != b'"' && b != b'%' {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[(b >> 4) as usize]));
            out.push(char::from(b"0123456789ABCDEF"[(b & 0xf) as usize]));
        }
    }
    out
}

/// Decodes a percent-encoded header value; accepts lower-case hex, rejects invalid UTF-8.
pub fn percent_decode(header: &str, value: &str) -> Result<String, BindingError> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let byte = value
                .get(i + 1..i + 3)
                .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| BindingError::Percent {
                    header: header.to_owned(),
                    value: value.to_owned(),
                    at: i,
                })?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| BindingError::Utf8 {
        header: header.to_owned(),
    })
}

/// Builds the NATS message from the sdk's serializer callbacks.
#[derive(Default)]
struct NatsSerializer {
    headers: HeaderMap,
}

impl NatsSerializer {
    fn put(mut self, name: &str, value: &MessageAttributeValue) -> Self {
        let text = match value {
            MessageAttributeValue::DateTime(t) => super::id::rfc3339(*t),
            v => v.to_string(),
        };
        self.headers.insert(
            format!("{CE_PREFIX}{}", name.to_ascii_lowercase()),
            percent_encode(&text),
        );
        self
    }
}

impl BinarySerializer<(HeaderMap, Bytes)> for NatsSerializer {
    fn set_spec_version(self, v: SpecVersion) -> cloudevents::message::Result<Self> {
        Ok(self.put("specversion", &MessageAttributeValue::String(v.to_string())))
    }

    fn set_attribute(
        self,
        name: &str,
        value: MessageAttributeValue,
    ) -> cloudevents::message::Result<Self> {
        Ok(self.put(name, &value))
    }

    fn set_extension(
        self,
        name: &str,
        value: MessageAttributeValue,
    ) -> cloudevents::message::Result<Self> {
        Ok(self.put(name, &value))
    }

    fn end_with_data(self, bytes: Vec<u8>) -> cloudevents::message::Result<(HeaderMap, Bytes)> {
        Ok((self.headers, Bytes::from(bytes)))
    }

    fn end(self) -> cloudevents::message::Result<(HeaderMap, Bytes)> {
        Ok((self.headers, Bytes::new()))
    }
}

impl StructuredSerializer<(HeaderMap, Bytes)> for NatsSerializer {
    fn set_structured_event(
        mut self,
        bytes: Vec<u8>,
    ) -> cloudevents::message::Result<(HeaderMap, Bytes)> {
        self.headers.insert("Content-Type", STRUCTURED_CONTENT_TYPE);
        Ok((self.headers, Bytes::from(bytes)))
    }
}

/// A received NATS message seen through the sdk's deserializer traits.
struct NatsMessage<'a> {
    headers: &'a HeaderMap,
    body: &'a [u8],
    rule: Rule,
}

impl NatsMessage<'_> {
    /// (lower-case name, value) of every header.
    fn headers(&self) -> impl Iterator<Item = (String, &str)> {
        self.headers.iter().flat_map(|(name, values)| {
            let lower = AsRef::<str>::as_ref(name).to_ascii_lowercase();
            values.iter().map(move |v| (lower.clone(), v.as_str()))
        })
    }

    fn header(&self, lower: &str) -> Option<&str> {
        self.headers().find(|(n, _)| n == lower).map(|(_, v)| v)
    }

    /// Validates percent-encoding of every `ce-*` header up front, so errors name the header
    /// instead of surfacing through the sdk's error type.
    fn check_headers(&self) -> Result<(), BindingError> {
        if self.encoding() == Encoding::BINARY {
            for (name, value) in self.headers() {
                if name.starts_with(CE_PREFIX) {
                    percent_decode(&name, value)?;
                }
            }
        } else if std::str::from_utf8(self.body).is_err() {
            return Err(BindingError::Body("invalid UTF-8".into()));
        }
        Ok(())
    }
}

impl MessageDeserializer for NatsMessage<'_> {
    fn encoding(&self) -> Encoding {
        let structured_ct = self.header("content-type").is_some_and(|ct| {
            ct.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/cloudevents")
        });
        if structured_ct {
            Encoding::STRUCTURED
        } else if self.header("ce-specversion").is_some() || self.rule == Rule::Spec {
            Encoding::BINARY
        } else {
            Encoding::STRUCTURED
        }
    }
}

impl BinaryDeserializer for NatsMessage<'_> {
    fn deserialize_binary<R: Sized, V: BinarySerializer<R>>(
        self,
        mut visitor: V,
    ) -> cloudevents::message::Result<R> {
        let version = self
            .header("ce-specversion")
            .ok_or_else(|| sdk_error(BindingError::NotCloudEvent))?;
        let version = percent_decode("ce-specversion", version).map_err(sdk_error)?;
        visitor = visitor.set_spec_version(SpecVersion::try_from(version.as_str())?)?;
        let attributes = SpecVersion::V10.attribute_names();
        let mut has_content_type = false;
        for (name, value) in self.headers() {
            let Some(attr) = name.strip_prefix(CE_PREFIX) else {
                continue;
            };
            if attr == "specversion" {
                continue;
            }
            let value =
                MessageAttributeValue::String(percent_decode(&name, value).map_err(sdk_error)?);
            has_content_type |= attr == "datacontenttype";
            visitor = if attributes.contains(&attr) {
                visitor.set_attribute(attr, value)?
            } else {
                visitor.set_extension(attr, value)?
            };
        }
        // Lenient: a plain Content-Type stands for datacontenttype when ce-datacontenttype is absent.
        if !has_content_type {
            if let Some(ct) = self.header("content-type") {
                visitor = visitor.set_attribute(
                    "datacontenttype",
                    MessageAttributeValue::String(ct.to_owned()),
                )?;
            }
        }
        if self.body.is_empty() {
            visitor.end()
        } else {
            visitor.end_with_data(self.body.to_vec())
        }
    }
}

impl StructuredDeserializer for NatsMessage<'_> {
    fn deserialize_structured<R: Sized, V: StructuredSerializer<R>>(
        self,
        visitor: V,
    ) -> cloudevents::message::Result<R> {
        visitor.set_structured_event(self.body.to_vec())
    }
}

fn sdk_error(e: BindingError) -> cloudevents::message::Error {
    cloudevents::message::Error::Other {
        source: Box::new(e),
    }
}

/// Our own errors come back out of the sdk's wrapper; the sdk's own become `Event`.
fn from_sdk(e: cloudevents::message::Error) -> BindingError {
    match e {
        cloudevents::message::Error::Other { source } => match source.downcast::<BindingError>() {
            Ok(b) => *b,
            Err(other) => BindingError::Event(other.to_string()),
        },
        cloudevents::message::Error::SerdeJsonError { source } => {
            BindingError::Body(source.to_string())
        }
        other => BindingError::Event(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudevents::{EventBuilder, EventBuilderV10};

    fn event() -> Event {
        EventBuilderV10::new()
            .id("0190f1d2-0000-7000-8000-000000000007")
            .source("/mes/demo/bsl")
            .ty("io.mesevents.mes.processorder.statuschanged.v1")
            .subject("LOT 1 \"€\" 100%")
            .time("2026-11-23T08:00:00.123456Z")
            .data_with_schema(
                "application/json",
                "https://mesevents.io/schemas/processorder/statuschanged.v1.0.json",
                serde_json::json!({"orderId": "LOT 1", "status": "running"}),
            )
            .extension("sequence", "00000000000000000007")
            .extension("partitionkey", "LOT 1 \"€\" 100%")
            .build()
            .unwrap()
    }

    #[test]
    fn spec_vectors() {
        assert_eq!(percent_encode("a b"), "a%20b");
        assert_eq!(percent_encode("say \"hi\""), "say%20%22hi%22");
        assert_eq!(percent_encode("100%"), "100%25");
        assert_eq!(percent_encode("€"), "%E2%82%AC");
        assert_eq!(percent_encode("Grüße"), "Gr%C3%BC%C3%9Fe");
        assert_eq!(percent_encode("plain-ASCII_~!"), "plain-ASCII_~!");
    }

    #[test]
    fn decodes_both_cases_and_rejects_bad_input() {
        assert_eq!(percent_decode("h", "%e2%82%ac").unwrap(), "€");
        assert_eq!(percent_decode("h", "%E2%82%AC%20x").unwrap(), "€ x");
        assert!(matches!(
            percent_decode("h", "50%"),
            Err(BindingError::Percent { at: 2, .. })
        ));
        assert!(matches!(
            percent_decode("h", "%G0"),
            Err(BindingError::Percent { .. })
        ));
        assert!(matches!(
            percent_decode("h", "%+1"),
            Err(BindingError::Percent { .. })
        ));
        assert!(matches!(
            percent_decode("h", "%FF%FE"),
            Err(BindingError::Utf8 { .. })
        ));
        for s in ["a b", "\"%\"", "東京 %41", ""] {
            assert_eq!(percent_decode("h", &percent_encode(s)).unwrap(), s);
        }
    }

    #[test]
    fn binary_mode_writes_lower_case_percent_encoded_headers() {
        let (h, body) = encode(event(), Mode::Binary).unwrap();
        assert_eq!(h.get("ce-specversion").unwrap().as_str(), "1.0");
        assert_eq!(
            h.get("ce-subject").unwrap().as_str(),
            "LOT%201%20%22%E2%82%AC%22%20100%25"
        );
        assert_eq!(
            h.get("ce-datacontenttype").unwrap().as_str(),
            "application/json"
        );
        assert_eq!(
            h.get("ce-time").unwrap().as_str(),
            "2026-11-23T08:00:00.123456Z"
        );
        assert!(h.get("Content-Type").is_none());
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["status"], "running");
    }

    #[test]
    fn both_modes_round_trip_to_the_same_event() {
        for mode in [Mode::Binary, Mode::Structured] {
            let (h, body) = encode(event(), mode).unwrap();
            if mode == Mode::Structured {
                assert_eq!(
                    h.get("Content-Type").unwrap().as_str(),
                    STRUCTURED_CONTENT_TYPE
                );
            }
            let back = decode(Some(&h), &body, Rule::Spec).unwrap();
            assert_eq!(back, event(), "{mode:?}");
        }
    }

    #[test]
    fn header_names_are_read_case_insensitively() {
        let (h, body) = encode(event(), Mode::Binary).unwrap();
        let mut mixed = HeaderMap::new();
        for (name, values) in h.iter() {
            let n: &str = name.as_ref();
            let upper = format!("Ce-{}", n.trim_start_matches("ce-").to_ascii_uppercase());
            for v in values {
                mixed.insert(upper.as_str(), v.as_str());
            }
        }
        assert_eq!(decode(Some(&mixed), &body, Rule::Spec).unwrap(), event());
    }

    #[test]
    fn structured_without_content_type_follows_the_rule() {
        let (_, body) = encode(event(), Mode::Structured).unwrap();
        // The spec: no cloudevents Content-Type means binary, and there is no ce-specversion.
        assert!(matches!(
            decode(None, &body, Rule::Spec),
            Err(BindingError::NotCloudEvent)
        ));
        // sdk-go reads it as structured.
        assert_eq!(decode(None, &body, Rule::Lenient).unwrap(), event());
        // Content-Type matching is case-insensitive and may carry parameters.
        let mut h = HeaderMap::new();
        h.insert(
            "content-type",
            "Application/CloudEvents+JSON; charset=utf-8",
        );
        assert_eq!(decode(Some(&h), &body, Rule::Spec).unwrap(), event());
    }

    #[test]
    fn invalid_percent_encoding_and_utf8_name_the_header() {
        let (mut h, body) = encode(event(), Mode::Binary).unwrap();
        h.insert("ce-subject", "bad%2");
        match decode(Some(&h), &body, Rule::Spec) {
            Err(BindingError::Percent { header, .. }) => assert_eq!(header, "ce-subject"),
            other => panic!("{other:?}"),
        }
        h.insert("ce-subject", "%C3%28");
        match decode(Some(&h), &body, Rule::Spec) {
            Err(BindingError::Utf8 { header }) => assert_eq!(header, "ce-subject"),
            other => panic!("{other:?}"),
        }
        let mut s = HeaderMap::new();
        s.insert("Content-Type", STRUCTURED_CONTENT_TYPE);
        assert!(matches!(
            decode(Some(&s), &[0xff, 0xfe], Rule::Spec),
            Err(BindingError::Body(_))
        ));
    }

    #[test]
    fn missing_required_attribute_is_an_event_error() {
        let (full, body) = encode(event(), Mode::Binary).unwrap();
        let mut h = HeaderMap::new();
        for (name, values) in full.iter() {
            if AsRef::<str>::as_ref(name) != "ce-id" {
                for v in values {
                    h.insert(name.clone(), v.clone());
                }
            }
        }
        assert!(matches!(
            decode(Some(&h), &body, Rule::Spec),
            Err(BindingError::Event(_))
        ));
    }
}
