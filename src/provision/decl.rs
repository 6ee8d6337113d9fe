//! The declaration's file format under nats/: streams, and per external system a durable pull
//! consumer, what it may watch live and, for a system that cannot pull, its HTTP endpoint; parsing one file, with every error located (file, line,
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
    /// The system cannot pull: `mes-events push` delivers its consumers' events to it over HTTP.
    pub push: Option<PushDecl>,
}

/// What to do with an event after its last attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AfterLast {
    /// It becomes a dead letter (listed and resent like any other) and its key goes on.
    DeadLetter,
    /// Its key waits: the event is tried again at the last interval until it succeeds.
    Hold,
}

/// How an event travels in the HTTP request (the CloudEvents HTTP binding's modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PushMode {
    /// Attributes as `ce-*` headers, `Content-Type` = datacontenttype, body = data.
    #[default]
    Binary,
    /// Body = the JSON event format, `Content-Type: application/cloudevents+json`.
    Structured,
    /// Several events per request, at most one per key: body = a JSON array of events in the
    /// JSON event format, `Content-Type: application/cloudevents-batch+json`.
    Batched,
}

/// A system's HTTP endpoint: where `mes-events push` POSTs its events, signed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushDecl {
    pub url: Spanned<String>,
    /// File holding the signing secret (`whsec_` + base64), e.g. a mounted secret.
    pub secret_file: Option<Spanned<PathBuf>>,
    /// Environment variable holding the signing secret.
    pub secret_env: Option<Spanned<String>>,
    /// Per request; default 10 s.
    #[serde(default, with = "humantime_serde::option")]
    pub timeout: Option<Duration>,
    /// Requests in flight at once, each for other keys (one event each, or in batched mode a
    /// batch); default 16.
    pub concurrency: Option<Spanned<usize>>,
    /// Delays between attempts; default `["5s", "30s", "2m", "10m", "1h"]`.
    pub retry: Option<Spanned<Vec<Dur>>>,
    /// After the last attempt: `dead_letter` (default) or `hold`.
    pub after_last: Option<AfterLast>,
    /// Requests per second at most; unset: no limit.
    pub rate_limit: Option<Spanned<f64>>,
    /// Failures in a row (across keys) after which the endpoint is paused; default 10.
    pub pause_after: Option<Spanned<u32>>,
    /// The first pause (it doubles while the endpoint keeps failing, up to 10 minutes);
    /// default 30 s.
    #[serde(default, with = "humantime_serde::option")]
    pub pause: Option<Duration>,
    /// Several `mes-events push` may run: one delivers, the others stand by. A standby takes
    /// over this long after the active one stops pulling (killed, frozen, cut off); default
    /// 3 s.
    #[serde(default, with = "humantime_serde::option")]
    pub takeover: Option<Duration>,
    /// HTTPS: a CA certificate file (PEM) trusted for this endpoint in addition to this
    /// host's store, e.g. the plant's own CA. There is no switch to skip verification.
    pub ca_file: Option<Spanned<PathBuf>>,
    /// HTTPS: this client's certificate (PEM) for an endpoint that asks for one (mutual TLS),
    /// with `client_key`.
    pub client_cert: Option<Spanned<PathBuf>>,
    /// Its private key (PEM, readable by its owner only).
    pub client_key: Option<Spanned<PathBuf>>,
    /// Extra headers on every request (not secrets: the declaration is not a secret store).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub mode: PushMode,
    /// Batched mode: events per request at most; default 100.
    pub max_batch: Option<Spanned<usize>>,
    /// Batched mode: bytes per request at most, roughly (the events' size on the stream);
    /// default 1 MB. A larger event still goes, alone.
    pub max_batch_bytes: Option<Spanned<usize>>,
}

impl PushDecl {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
    pub const DEFAULT_CONCURRENCY: usize = 16;
    /// A pushed system's consumer's `ack_wait` unless declared: an event in the hands of a
    /// push service that died comes back this soon (a running attempt is kept in progress
    /// however long it takes).
    pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(4);
    /// The priority group every push instance pulls in.
    pub const GROUP: &'static str = "push";

    pub const DEFAULT_MAX_BATCH: usize = 100;
    pub const DEFAULT_MAX_BATCH_BYTES: usize = 1_000_000;

    pub fn takeover(&self) -> Duration {
        self.takeover.unwrap_or(Duration::from_secs(3))
    }

    pub fn pause_after(&self) -> u32 {
        self.pause_after.as_ref().map_or(10, |p| *p.get_ref())
    }

    pub fn pause(&self) -> Duration {
        self.pause.unwrap_or(Duration::from_secs(30))
    }

    pub fn timeout(&self) -> Duration {
        self.timeout.unwrap_or(Self::DEFAULT_TIMEOUT)
    }

    pub fn concurrency(&self) -> usize {
        self.concurrency
            .as_ref()
            .map_or(Self::DEFAULT_CONCURRENCY, |c| *c.get_ref())
    }

    /// The delays between attempts.
    pub fn retry(&self) -> Vec<Duration> {
        match &self.retry {
            Some(r) => r.get_ref().iter().map(|d| d.0).collect(),
            None => [5, 30, 120, 600, 3600]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
        }
    }

    pub fn after_last(&self) -> AfterLast {
        self.after_last.unwrap_or(AfterLast::DeadLetter)
    }

    /// The consumer's `max_deliver` this asks for: every attempt is a delivery (the first and
    /// one per retry); `-1` (no limit) when the key holds.
    pub fn max_deliver(&self) -> i64 {
        match self.after_last() {
            AfterLast::DeadLetter => self.retry().len() as i64 + 1,
            AfterLast::Hold => -1,
        }
    }
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
    /// Set by loading, for a pushed system's consumer: one puller at a time (a priority group
    /// with a pinned client), the pin moving after this long without a pull.
    #[serde(skip)]
    pub pinned: Option<Duration>,
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

/// Parses one file; syntax, unknown keys and bad values come back with their line (the first;
/// [`parse_all`] gives every one).
pub fn parse(path: &Path, text: &str) -> Result<Source, DeclError> {
    match parse_all(path, text) {
        (Some(source), errors) if errors.is_empty() => Ok(source),
        (_, mut errors) => Err(errors.remove(0)),
    }
}

/// Parses one file and tells every mistake in it at once, not one per run: each key the file
/// cannot take (unknown, or of the wrong kind) is set aside and the file read again, so the
/// next one shows. Gives what the file says without them too (so that what no single file can
/// check is checked in the same run), unless its syntax is broken.
pub fn parse_all(path: &Path, text: &str) -> (Option<Source>, Vec<DeclError>) {
    // Broken syntax: one error, and nothing can be read around it.
    if let Err(e) = text.parse::<toml::Table>() {
        let offset = e.span().map_or(0, |s| s.start);
        return (
            None,
            vec![DeclError {
                file: path.display().to_string(),
                line: e.span().map_or(0, |_| line_of(text, offset)),
                key: key_at(text, offset),
                message: e.message().trim().to_owned(),
            }],
        );
    }
    let mut current = text.to_owned();
    let mut errors = Vec::new();
    let mut set_aside = std::collections::BTreeSet::new();
    for _ in 0..64 {
        let e = match toml::from_str::<File>(&current) {
            Ok(file) => {
                let source = Source {
                    path: path.to_owned(),
                    text: text.to_owned(),
                    file,
                };
                return (Some(source), errors);
            }
            Err(e) => e,
        };
        let offset = e.span().map_or(0, |s| s.start);
        let line = e.span().map_or(0, |_| line_of(&current, offset));
        let message = in_words(e.message().trim());
        let key = key_at(&current, offset);
        // A key set aside already, now missing: a consequence, not another mistake.
        let repeated = set_aside.contains(&line);
        if !repeated {
            errors.push(DeclError {
                file: path.display().to_string(),
                line,
                key,
                message,
            });
        }
        if line == 0 || repeated || !set_aside_line(&mut current, line) {
            return (None, errors);
        }
        set_aside.insert(line);
    }
    (None, errors)
}

/// A TOML or serde complaint in the user's words, with a near miss for an unknown key.
fn in_words(said: &str) -> String {
    let said = crate::show::in_user_words(said);
    let Some(rest) = said.strip_prefix("unknown field `") else {
        return said;
    };
    let Some((field, rest)) = rest.split_once('`') else {
        return said;
    };
    let known: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    let near = crate::show::did_you_mean(field, &known)
        .map(|k| format!(" (did you mean `{k}`?)"))
        .unwrap_or_default();
    if known.is_empty() {
        return format!("unknown key `{field}`{near}");
    }
    format!(
        "unknown key `{field}`{near}; expected one of: {}",
        known.join(", ")
    )
}

/// Comments out line `line` (1-based) of `text`, and the lines its value or table spans (an
/// array over several lines; a `[table]`'s keys), so the rest can be read. False when that
/// cannot be done safely.
fn set_aside_line(text: &mut String, line: usize) -> bool {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let Some(first) = lines.get(line - 1) else {
        return false;
    };
    let trimmed = first.trim_start();
    if trimmed.starts_with('#') {
        return false;
    }
    let mut end = line - 1;
    if trimmed.starts_with('[') {
        // A table: its keys go with it, up to the next table.
        while end + 1 < lines.len() && !lines[end + 1].trim_start().starts_with('[') {
            end += 1;
        }
    } else {
        // A value over several lines: until its brackets close.
        let mut depth = open_brackets(first);
        while depth > 0 && end + 1 < lines.len() {
            end += 1;
            depth += open_brackets(&lines[end]);
        }
    }
    for l in &mut lines[line - 1..=end] {
        l.insert(0, '#');
    }
    *text = lines.join("\n");
    true
}

/// `[` and `{` opened minus closed on a line, outside strings and comments.
fn open_brackets(line: &str) -> i32 {
    let (mut depth, mut quote) = (0, None);
    for c in line.chars() {
        match (quote, c) {
            (None, '#') => break,
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '[' | '{') => depth += 1,
            (None, ']' | '}') => depth -= 1,
            _ => {}
        }
    }
    depth
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
    fn every_mistake_of_a_file_is_told_at_once_in_a_users_words() {
        let text = r#"
[system]
name = "erp"

[[consumer]]
stream = "MES_EVENTS"
filter_subject = "mes.>"
max_deliver = "ten"
ack_wait = "soon"
backof = [
  "1s",
  "2s",
]
"#;
        let (source, errors) = parse_all(Path::new("erp.toml"), text);
        let said: Vec<String> = errors
            .iter()
            .map(|e| format!("{}:{} {}", e.line, e.key, e.message))
            .collect();
        assert_eq!(errors.len(), 4, "{said:#?}");
        assert!(said[0].starts_with("7:filter_subject unknown key `filter_subject` (did you mean `filter_subjects`?); expected one of: "), "{said:#?}");
        assert!(
            said[1].starts_with("8:max_deliver") && said[1].contains("expected a whole number"),
            "{said:#?}"
        );
        assert!(
            said[2].starts_with("9:ack_wait") && said[2].contains("250ms, 30s, 5m, 7d"),
            "{said:#?}"
        );
        assert!(
            said[3].starts_with("10:backof") && said[3].contains("did you mean `backoff`?"),
            "{said:#?}"
        );
        assert!(source.is_some(), "what the file says without them is read");
        // A file whose syntax is broken: one error, nothing read.
        let (source, errors) = parse_all(Path::new("x.toml"), "[system\nname = 1\n");
        assert!(source.is_none() && errors.len() == 1, "{errors:?}");
    }

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
