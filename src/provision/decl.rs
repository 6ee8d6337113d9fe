//! The declaration's file format under nats/: streams, and per external system a durable pull
//! consumer and what it may watch live; parsing one file, with every error located (file, line,
//! key path) and saying what to do. What no single file can check is [`super::load`]'s.
//!
//! Never calls a server.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

/// The operators' identity (`admin.nk`): may do everything.
pub const ADMIN: &str = "admin";
/// The relay's identity (`relay.nk`).
pub const RELAY: &str = "relay";
/// Names no system may take: they are identities of their own, with their own seed files.
pub const RESERVED: [&str; 2] = [ADMIN, RELAY];

/// One file under nats/.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    #[serde(default)]
    pub stream: Vec<StreamDecl>,
    pub system: Option<SystemDecl>,
    #[serde(default)]
    pub consumer: Vec<ConsumerDecl>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    File,
    Memory,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Retention {
    Limits,
    Interest,
    Workqueue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Discard {
    Old,
    New,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    S2,
}

/// A stream. Only declared fields are managed; the server's defaults fill the rest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamDecl {
    pub name: Spanned<String>,
    pub subjects: Vec<Spanned<String>>,
    pub description: Option<String>,
    /// `file` or `memory`; cannot change after creation.
    pub storage: Option<Storage>,
    pub replicas: Option<usize>,
    /// `limits`, `interest` or `workqueue`; cannot change after creation.
    pub retention: Option<Retention>,
    #[serde(default, with = "humantime_serde::option")]
    pub max_age: Option<Duration>,
    /// Bytes, or a size like `50GiB`, `500MB`.
    pub max_bytes: Option<Size>,
    pub max_msgs: Option<i64>,
    pub max_msgs_per_subject: Option<i64>,
    pub max_msg_size: Option<Size>,
    #[serde(default, with = "humantime_serde::option")]
    pub duplicate_window: Option<Duration>,
    pub discard: Option<Discard>,
    pub compression: Option<Compression>,
    pub allow_direct: Option<bool>,
    pub metadata: Option<BTreeMap<String, String>>,
}

/// An external system: who it is and what it may watch live besides its own consumer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemDecl {
    /// Also its NATS user name and inbox prefix (`_INBOX_<name>`).
    pub name: Spanned<String>,
    pub description: Option<String>,
    /// Subject patterns it may subscribe to live (core subscriptions and ordered consumers).
    #[serde(default)]
    pub live: Vec<Spanned<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Deliver {
    All,
    New,
    Last,
    LastPerSubject,
    ByStartTime,
    ByStartSequence,
}

/// A durable pull consumer of a system. Explicit acks always.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerDecl {
    pub stream: Spanned<String>,
    /// Durable name; defaults to the system's name.
    pub name: Option<Spanned<String>>,
    pub description: Option<String>,
    #[serde(default)]
    pub filter_subjects: Vec<Spanned<String>>,
    /// Where a new consumer starts; cannot change after creation.
    pub deliver: Option<Deliver>,
    pub start_time: Option<chrono::DateTime<chrono::Utc>>,
    pub start_sequence: Option<u64>,
    #[serde(default, with = "humantime_serde::option")]
    pub ack_wait: Option<Duration>,
    pub max_deliver: Option<i64>,
    /// Redelivery delays, e.g. `["5s", "30s", "2m"]`.
    pub backoff: Option<Vec<Dur>>,
    pub max_ack_pending: Option<i64>,
    pub metadata: Option<BTreeMap<String, String>>,
}

/// A duration written like `30s`, `2m`, `7d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Dur(#[serde(with = "humantime_serde")] pub Duration);

/// A byte size: an integer, or a string like `10GiB`, `500MB`, `64KiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub i64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Size(n)),
            Raw::Text(t) => parse_size(&t).map(Size).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "invalid size {t:?}: write bytes as an integer or a size like 512MB, 10GiB"
                ))
            }),
        }
    }
}

/// `512MB` (powers of 1000), `10GiB` (powers of 1024), `1024` or `1024B`.
pub fn parse_size(text: &str) -> Option<i64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: i64 = num.parse().ok()?;
    let mult: i64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// A file and what it declares.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    pub text: String,
    pub file: File,
}

/// A problem in the declaration, located.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {key}: {message}")]
pub struct DeclError {
    pub file: String,
    pub line: usize,
    /// Key path, e.g. `consumer[0].filter_subjects[1]`.
    pub key: String,
    pub message: String,
}

pub(super) fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

/// Parses one file; syntax, unknown keys and bad values come back with their line.
pub fn parse(path: &Path, text: &str) -> Result<Source, DeclError> {
    match toml::from_str::<File>(text) {
        Ok(file) => Ok(Source {
            path: path.to_owned(),
            text: text.to_owned(),
            file,
        }),
        Err(e) => {
            let line = e.span().map_or(0, |s| line_of(text, s.start));
            Err(DeclError {
                file: path.display().to_string(),
                line,
                key: key_at(text, e.span().map_or(0, |s| s.start)),
                message: e.message().trim().to_owned(),
            })
        }
    }
}

/// The `key = ` at the start of the line holding `offset`, for parse errors.
fn key_at(text: &str, offset: usize) -> String {
    let start = text[..offset.min(text.len())]
        .rfind('\n')
        .map_or(0, |i| i + 1);
    let line = &text[start..];
    line.split(['=', '\n'])
        .next()
        .map(|k| k.trim().trim_matches(['[', ']']).to_owned())
        .filter(|k| !k.is_empty())
        .unwrap_or_else(|| "-".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512MB"), Some(512_000_000));
        assert_eq!(parse_size("10GiB"), Some(10 << 30));
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("1 KiB"), Some(1024));
        assert_eq!(parse_size("ten"), None);
        assert_eq!(parse_size("5XB"), None);
    }
}
