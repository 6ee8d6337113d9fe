//! Subjects: how an event's type, plant location and business key become a NATS subject.
//!
//! Layout, a fixed nine tokens after the configured prefix so every `*` position means the same
//! thing for every event type:
//!
//! ```text
//! <prefix>.<site>.<area>.<workcenter>.<workunit>.<category>.<event>.v<major>.<key>
//! ```
//!
//! Location tokens come from the event's `hierarchyScope` (`_` where a level does not apply, the
//! configured site where the event names none). The key is escaped reversibly: `[A-Za-z0-9-]`
//! stays, every other UTF-8 byte becomes `_XX` (upper-case hex), and a key whose escaped form
//! exceeds [`MAX_KEY_TOKEN`] becomes `_h` + its SHA-256 (the raw key is always in `ce-subject`).
//!
//! Pure functions only: no I/O, no configuration loading.

use std::fmt::Write;

use sha2::{Digest, Sha256};

/// Longest escaped key kept as is; longer ones are hashed so subjects stay small.
pub const MAX_KEY_TOKEN: usize = 160;

/// Token used for a hierarchy level that does not apply.
pub const NOT_APPLICABLE: &str = "_";

/// A parsed event type: `<reverse-dns>.mes.<category>.<event>.v<major>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventType {
    pub category: String,
    pub event: String,
    pub major: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TypeError {
    #[error("event type {0:?} does not have the form <reverse-dns>.mes.<category>.<event>.v<major>, e.g. io.mesevents.mes.processorder.statuschanged.v1")]
    Form(String),
    #[error("event type {ty:?}: {part} {value:?} must be lower-case letters and digits")]
    Token {
        ty: String,
        part: &'static str,
        value: String,
    },
}

impl EventType {
    pub fn parse(ty: &str) -> Result<EventType, TypeError> {
        let tokens: Vec<&str> = ty.split('.').collect();
        let n = tokens.len();
        if n < 5 || tokens[n - 4] != "mes" || tokens[..n - 4].iter().any(|t| t.is_empty()) {
            return Err(TypeError::Form(ty.to_owned()));
        }
        let plain = |part, value: &str| {
            if !value.is_empty()
                && value
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            {
                Ok(value.to_owned())
            } else {
                Err(TypeError::Token {
                    ty: ty.to_owned(),
                    part,
                    value: value.to_owned(),
                })
            }
        };
        let major = tokens[n - 1]
            .strip_prefix('v')
            .and_then(|m| m.parse::<u32>().ok())
            .filter(|_| !tokens[n - 1][1..].starts_with('0') || tokens[n - 1] == "v0")
            .ok_or_else(|| TypeError::Form(ty.to_owned()))?;
        Ok(EventType {
            category: plain("category", tokens[n - 3])?,
            event: plain("event", tokens[n - 2])?,
            major,
        })
    }
}

/// Where on the plant an event happened, as raw hierarchy codes (escaped when put in a subject).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Location {
    pub site: Option<String>,
    pub area: Option<String>,
    pub work_center: Option<String>,
    pub work_unit: Option<String>,
}

/// The subject of one event.
pub fn subject(
    prefix: &str,
    default_site: &str,
    ty: &EventType,
    loc: &Location,
    key: &str,
) -> String {
    let level = |v: &Option<String>| match v.as_deref() {
        None | Some("") => NOT_APPLICABLE.to_owned(),
        Some(v) => escape(v),
    };
    let site = match loc.site.as_deref() {
        None | Some("") => escape(default_site),
        Some(s) => escape(s),
    };
    format!(
        "{prefix}.{site}.{}.{}.{}.{}.{}.v{}.{}",
        level(&loc.area),
        level(&loc.work_center),
        level(&loc.work_unit),
        ty.category,
        ty.event,
        ty.major,
        key_token(key)
    )
}

/// The last subject token for a business key.
pub fn key_token(key: &str) -> String {
    let escaped = escape(key);
    if escaped.len() <= MAX_KEY_TOKEN {
        return escaped;
    }
    let digest = Sha256::digest(key.as_bytes());
    let mut out = String::with_capacity(2 + 64);
    out.push_str("_h");
    for b in digest {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Reversible escape into one subject token: `[A-Za-z0-9-]` kept, any other byte → `_XX`.
pub fn escape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for b in raw.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(b as char);
        } else {
            let _ = write!(out, "_{b:02X}");
        }
    }
    out
}

/// Inverse of [`escape`]; `None` for a token that no key escapes to (including hashed keys).
pub fn unescape(token: &str) -> Option<String> {
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'_' => {
                let hex = token.get(i + 1..i + 3)?;
                if !hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
                {
                    return None;
                }
                let b = u8::from_str_radix(hex, 16).ok()?;
                if b.is_ascii_alphanumeric() || b == b'-' {
                    return None; // not canonical: escape() never writes it
                }
                out.push(b);
                i += 3;
            }
            b if b.is_ascii_alphanumeric() || b == b'-' => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// Whether a NATS subject filter (`*` one token, `>` one or more trailing tokens) matches a
/// literal subject.
pub fn matches(filter: &str, subject: &str) -> bool {
    let mut f = filter.split('.');
    let mut s = subject.split('.');
    loop {
        match (f.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Subject prefix of dead letters sent back to one consumer:
/// `mes-redeliver.<stream>.<consumer>.<original subject>`.
pub const REDELIVER_PREFIX: &str = "mes-redeliver";

/// The subject a dead letter is sent back to its consumer on.
pub fn redeliver_subject(stream: &str, consumer: &str, original: &str) -> String {
    format!("{REDELIVER_PREFIX}.{stream}.{consumer}.{original}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ty(s: &str) -> EventType {
        EventType::parse(s).unwrap()
    }

    #[test]
    fn parses_types() {
        assert_eq!(
            ty("com.example.mes.processorder.statuschanged.v1"),
            EventType {
                category: "processorder".into(),
                event: "statuschanged".into(),
                major: 1
            }
        );
        for bad in [
            "mes.processorder.statuschanged.v1",
            "com.example.mes.processorder.statuschanged",
            "com.example.mes.processorder.statuschanged.1",
            "com.example.mes.processorder.statuschanged.v01",
            "com.example.erp.processorder.statuschanged.v1",
            "com..mes.a.b.v1",
        ] {
            assert!(
                matches!(EventType::parse(bad), Err(TypeError::Form(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            EventType::parse("com.example.mes.Process.changed.v1"),
            Err(TypeError::Token {
                part: "category",
                ..
            })
        ));
    }

    #[test]
    fn subject_has_fixed_token_count() {
        let t = ty("com.example.mes.stock.moved.v2");
        let s = subject("mes", "bsl", &t, &Location::default(), "LOT.2024/01");
        assert_eq!(s, "mes.bsl._._._.stock.moved.v2.LOT_2E2024_2F01");
        let loc = Location {
            site: Some("bsl".into()),
            area: Some("gran".into()),
            work_center: Some("line2".into()),
            work_unit: Some("dryer1".into()),
        };
        let s = subject("acme.mes", "x", &t, &loc, "k");
        assert_eq!(s, "acme.mes.bsl.gran.line2.dryer1.stock.moved.v2.k");
        assert!(matches("acme.mes.*.*.*.*.stock.>", &s));
    }

    #[test]
    fn escaping_round_trips() {
        let long = "x".repeat(1000);
        for key in [
            "4711",
            "LOT.2024/01",
            "with space",
            "star*",
            "gt>",
            "a/b\\c",
            "Grüße-東京",
            "under_score",
            "_41",
            "",
            "tab\tnew\nline",
            &long[..MAX_KEY_TOKEN],
        ] {
            let token = escape(key);
            assert!(
                token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{token}"
            );
            assert_eq!(unescape(&token).as_deref(), Some(key), "{key:?} → {token}");
        }
    }

    #[test]
    fn long_keys_are_hashed_and_distinct() {
        let a = key_token(&"é".repeat(100));
        let b = key_token(&"é".repeat(101));
        assert!(a.starts_with("_h") && a.len() == 66, "{a}");
        assert_ne!(a, b);
        assert_eq!(unescape(&a), None);
        assert_eq!(key_token(&"é".repeat(100)), a);
    }

    #[test]
    fn unescape_rejects_non_canonical() {
        for bad in ["_41", "_2e", "a.b", "_", "_4", "a*"] {
            assert_eq!(unescape(bad), None, "{bad}");
        }
    }

    /// The integrators' guide's wildcard recipes (docs/integrators.md), checked against real subjects.
    #[test]
    fn guide_wildcard_recipes() {
        let line2 = Location {
            site: Some("bsl".into()),
            area: Some("gran".into()),
            work_center: Some("line2".into()),
            work_unit: Some("dryer1".into()),
        };
        let other_site = Location {
            site: Some("zrh".into()),
            ..Default::default()
        };
        let s = |t: &str, loc: &Location, key: &str| {
            subject(
                "mes",
                "bsl",
                &ty(&format!("io.mesevents.mes.{t}.v1")),
                loc,
                key,
            )
        };
        let status = s("processorder.statuschanged", &line2, "4711");
        let op = s("processorder.operationstatuschanged", &line2, "4711");
        let consumed = s("material.consumed", &line2, "4711");
        let other_order = s("material.consumed", &line2, "4712");
        let lot = s("stock.lotstatuschanged", &other_site, "LOT-00042");
        let pv = s("processvariable.changed", &line2, "dryer1.temperature");
        let doc = s("document.statuschanged", &other_site, "SOP-7");

        assert!(matches("mes.*.*.*.*.processorder.statuschanged.>", &status));
        assert!(!matches("mes.*.*.*.*.processorder.statuschanged.>", &op));
        assert!(matches("mes.bsl.>", &status) && !matches("mes.bsl.>", &lot));
        let one_order = [
            "mes.*.*.*.*.processorder.*.*.4711",
            "mes.*.*.*.*.material.*.*.4711",
        ];
        for x in [&status, &op, &consumed] {
            assert!(one_order.iter().any(|f| matches(f, x)), "{x}");
        }
        assert!(!one_order.iter().any(|f| matches(f, &other_order)));
        assert!(matches("mes.*.*.*.*.material.>", &consumed));
        assert!(matches("mes.*.*.*.*.stock.*.*.LOT-00042", &lot));
        assert!(matches("mes.bsl.gran.line2.dryer1.processvariable.>", &pv));
        assert!(matches("mes.bsl.gran.line2.>", &pv) && matches("mes.bsl.gran.line2.>", &status));
        assert!(matches("mes.*.*.*.*.document.>", &doc));
        assert!(matches("mes.*.*.*.*.stock.lotstatuschanged.>", &lot));
    }

    #[test]
    fn wildcard_matching() {
        assert!(matches("mes.>", "mes.a.b"));
        assert!(!matches("mes.>", "mes"));
        assert!(matches("mes.*.b", "mes.a.b"));
        assert!(!matches("mes.*.b", "mes.a.c"));
        assert!(!matches("mes.*", "mes.a.b"));
        assert!(matches("mes.a", "mes.a"));
    }
}
