//! The CloudEvents NATS protocol binding: attributes ↔ message headers.
//!
//! Binary mode: every attribute in its own exact lower-case `ce-<name>` header (the
//! `datacontenttype` too, as `ce-datacontenttype`), values percent-encoded as the binding
//! requires (space, `"`, `%` and every byte outside U+0021–U+007E as `%XY` of its UTF-8 bytes,
//! upper-case hex), body = data.
//!
//! Pure functions; no I/O.

use async_nats::HeaderMap;

use crate::event::Attributes;

/// Header name prefix of binary-mode attributes.
pub const CE_PREFIX: &str = "ce-";

/// Headers of a binary-mode message.
pub fn binary_headers(attrs: &Attributes) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in attrs.pairs() {
        h.insert(format!("{CE_PREFIX}{name}"), percent_encode(&value));
    }
    h
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

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("invalid percent-encoding at byte {at} of {value:?}: '%' must be followed by two hex digits")]
    Percent { value: String, at: usize },
    #[error("percent-decoded value of {value:?} is not valid UTF-8")]
    Utf8 { value: String },
}

/// Decodes a percent-encoded header value; accepts lower-case hex, rejects invalid UTF-8.
pub fn percent_decode(value: &str) -> Result<String, DecodeError> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = value
                .get(i + 1..i + 3)
                .and_then(|h| {
                    u8::from_str_radix(h, 16)
                        .ok()
                        .filter(|_| h.bytes().all(|b| b.is_ascii_hexdigit()))
                })
                .ok_or_else(|| DecodeError::Percent {
                    value: value.to_owned(),
                    at: i,
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| DecodeError::Utf8 {
        value: value.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(percent_decode("%e2%82%ac").unwrap(), "€");
        assert_eq!(percent_decode("%E2%82%AC%20x").unwrap(), "€ x");
        assert!(matches!(
            percent_decode("50%"),
            Err(DecodeError::Percent { at: 2, .. })
        ));
        assert!(matches!(
            percent_decode("%G0"),
            Err(DecodeError::Percent { .. })
        ));
        assert!(matches!(
            percent_decode("%+1"),
            Err(DecodeError::Percent { .. })
        ));
        assert!(matches!(
            percent_decode("%FF%FE"),
            Err(DecodeError::Utf8 { .. })
        ));
        for s in ["a b", "\"%\"", "東京 %41", ""] {
            assert_eq!(percent_decode(&percent_encode(s)).unwrap(), s);
        }
    }
}
