//! The declaration under nats/: streams, and per external system a durable pull consumer and
//! what it may watch live. Parsing and validation only, before any call to a server: every error
//! names the file, the line and the key path, and says what to do.

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

/// Everything declared, validated.
#[derive(Debug, Clone)]
pub struct Declaration {
    pub streams: Vec<StreamDecl>,
    pub systems: Vec<System>,
}

/// A system with its consumers, each with its resolved durable name.
#[derive(Debug, Clone)]
pub struct System {
    pub decl: SystemDecl,
    pub consumers: Vec<(String, ConsumerDecl)>,
    pub file: PathBuf,
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

/// Reads the `*.toml` files of `dir` and of its `systems/` folder (sorted) and validates the whole
/// declaration. Other subfolders (e.g. `cluster/`) are not part of it.
pub fn load_dir(dir: &Path) -> Result<Declaration, Vec<DeclError>> {
    let mut paths = Vec::new();
    collect(dir, false, &mut paths);
    collect(&dir.join("systems"), true, &mut paths);
    paths.sort();
    if paths.is_empty() {
        return Err(vec![DeclError {
            file: dir.display().to_string(),
            line: 0,
            key: "-".into(),
            message: "no *.toml declaration files here: point --dir at the folder holding streams.toml and systems/".into(),
        }]);
    }
    let mut sources = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                errors.push(DeclError {
                    file: path.display().to_string(),
                    line: 0,
                    key: "-".into(),
                    message: format!("cannot read: {e}"),
                });
                continue;
            }
        };
        match parse(&path, &text) {
            Ok(s) => sources.push(s),
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    validate(sources)
}

fn collect(dir: &Path, recurse: bool, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            if recurse {
                collect(&p, true, out);
            }
        } else if p.extension().is_some_and(|x| x == "toml") {
            out.push(p);
        }
    }
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

/// Checks what no single file can: streams known, filters captured, no overlaps, names unique.
pub fn validate(sources: Vec<Source>) -> Result<Declaration, Vec<DeclError>> {
    let mut errors = Vec::new();
    let err =
        |src: &Source, span: std::ops::Range<usize>, key: String, message: String| DeclError {
            file: src.path.display().to_string(),
            line: line_of(&src.text, span.start),
            key,
            message,
        };
    let mut streams: Vec<(&Source, &StreamDecl)> = Vec::new();
    for src in &sources {
        for (i, s) in src.file.stream.iter().enumerate() {
            if !valid_name(s.name.get_ref()) {
                errors.push(err(
                    src,
                    s.name.span(),
                    format!("stream[{i}].name"),
                    "a stream name is letters, digits, '-' and '_' only".into(),
                ));
            }
            if let Some((_, other)) = streams
                .iter()
                .find(|(_, o)| o.name.get_ref() == s.name.get_ref())
            {
                let _ = other;
                errors.push(err(
                    src,
                    s.name.span(),
                    format!("stream[{i}].name"),
                    format!("stream {} is declared twice", s.name.get_ref()),
                ));
            }
            if s.subjects.is_empty() {
                errors.push(err(
                    src,
                    s.name.span(),
                    format!("stream[{i}].subjects"),
                    "a stream needs at least one subject".into(),
                ));
            }
            for (j, subj) in s.subjects.iter().enumerate() {
                if !valid_subject(subj.get_ref()) {
                    errors.push(err(
                        src,
                        subj.span(),
                        format!("stream[{i}].subjects[{j}]"),
                        format!("{:?} is not a valid subject filter", subj.get_ref()),
                    ));
                }
            }
            streams.push((src, s));
        }
    }
    // Overlapping subjects: one message would belong to two streams, which the server refuses.
    for (a, (src_a, sa)) in streams.iter().enumerate() {
        for (src_b, sb) in streams.iter().skip(a + 1) {
            for x in &sa.subjects {
                for y in &sb.subjects {
                    if overlap(x.get_ref(), y.get_ref()) {
                        errors.push(err(
                            src_b,
                            y.span(),
                            format!("stream {} subjects", sb.name.get_ref()),
                            format!(
                                "{:?} overlaps {:?} of stream {} ({}): a subject may belong to one stream only; narrow one of them",
                                y.get_ref(),
                                x.get_ref(),
                                sa.name.get_ref(),
                                src_a.path.display()
                            ),
                        ));
                    }
                }
            }
        }
    }

    let mut systems = Vec::new();
    let mut durables: Vec<(String, String)> = Vec::new();
    for src in &sources {
        let f = &src.file;
        let Some(sys) = &f.system else {
            if let Some(c) = f.consumer.first() {
                errors.push(err(
                    src,
                    c.stream.span(),
                    "consumer[0]".into(),
                    "consumers belong to a system: add a [system] table with its name to this file"
                        .into(),
                ));
            }
            continue;
        };
        let name = sys.name.get_ref();
        if !valid_name(name) {
            errors.push(err(src, sys.name.span(), "system.name".into(), format!(
                "{name:?} is not a safe name: a system name is letters, digits, '-' and '_' only (it becomes a user name, a seed file and an inbox prefix); rename it, e.g. {:?}",
                safe_name(name)
            )));
        } else if let Some(r) = RESERVED.iter().find(|r| r.eq_ignore_ascii_case(name)) {
            errors.push(err(src, sys.name.span(), "system.name".into(), format!(
                "{name:?} is reserved for mes-events' own {r} identity (its seed would be handed out as this system's): name the system after what it is, e.g. \"{name}-system\""
            )));
        }
        if systems
            .iter()
            .any(|s: &System| s.decl.name.get_ref() == sys.name.get_ref())
        {
            errors.push(err(
                src,
                sys.name.span(),
                "system.name".into(),
                format!("system {} is declared in two files", sys.name.get_ref()),
            ));
        }
        // A live pattern is a subscribe permission: it must stay inside the event subjects,
        // never reach inboxes (`_INBOX…`), the server's own subjects (`$JS.…`, `$SYS.…`) or
        // anything else, so its first token is a literal first token of an event stream.
        let event_roots: Vec<&str> = streams
            .iter()
            .flat_map(|(_, s)| s.subjects.iter().map(|x| x.get_ref().as_str()))
            .filter(|x| !x.starts_with('$'))
            .filter_map(|x| x.split('.').next())
            .filter(|t| *t != "*" && *t != ">")
            .collect();
        for (j, p) in sys.live.iter().enumerate() {
            let root = p.get_ref().split('.').next().unwrap_or_default();
            if valid_subject(p.get_ref()) && !event_roots.contains(&root) {
                errors.push(err(
                    src,
                    p.span(),
                    format!("system.live[{j}]"),
                    format!(
                        "{:?} would let this system subscribe outside the event subjects (to inboxes or the server's own subjects): start it with the events' prefix, e.g. \"{}.bsl.>\"",
                        p.get_ref(),
                        event_roots.first().copied().unwrap_or("mes")
                    ),
                ));
            } else if !valid_subject(p.get_ref())
                || !streams
                    .iter()
                    .any(|(_, s)| s.subjects.iter().any(|x| overlap(x.get_ref(), p.get_ref())))
            {
                errors.push(err(
                    src,
                    p.span(),
                    format!("system.live[{j}]"),
                    format!(
                        "{:?} matches no subject of any declared stream: fix the pattern",
                        p.get_ref()
                    ),
                ));
            }
        }
        let mut consumers = Vec::new();
        for (i, c) in f.consumer.iter().enumerate() {
            let name = c
                .name
                .as_ref()
                .map_or_else(|| sys.name.get_ref().clone(), |n| n.get_ref().clone());
            let key = |k: &str| format!("consumer[{i}].{k}");
            let stream = streams
                .iter()
                .find(|(_, s)| s.name.get_ref() == c.stream.get_ref());
            match stream {
                None => errors.push(err(
                    src,
                    c.stream.span(),
                    key("stream"),
                    format!(
                        "no stream {} is declared (declared: {}); declare it or fix the name",
                        c.stream.get_ref(),
                        streams
                            .iter()
                            .map(|(_, s)| s.name.get_ref().as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )),
                Some((_, s)) => {
                    for (j, fs) in c.filter_subjects.iter().enumerate() {
                        // The server accepts a filter that overlaps the stream's subjects.
                        if !valid_subject(fs.get_ref())
                            || !s
                                .subjects
                                .iter()
                                .any(|x| overlap(x.get_ref(), fs.get_ref()))
                        {
                            errors.push(err(
                                src,
                                fs.span(),
                                key(&format!("filter_subjects[{j}]")),
                                format!(
                                    "{:?} is captured by no subject of stream {} ({}): fix the filter or add the subject to the stream",
                                    fs.get_ref(),
                                    s.name.get_ref(),
                                    s.subjects.iter().map(|x| x.get_ref().as_str()).collect::<Vec<_>>().join(", ")
                                ),
                            ));
                        }
                    }
                }
            }
            if !valid_name(&name) {
                errors.push(err(
                    src,
                    c.stream.span(),
                    key("name"),
                    "a consumer name is letters, digits, '-' and '_' only".into(),
                ));
            }
            if durables
                .iter()
                .any(|(s, n)| s == c.stream.get_ref() && *n == name)
            {
                errors.push(err(
                    src,
                    c.stream.span(),
                    key("name"),
                    format!(
                        "consumer {name} on {} is declared twice",
                        c.stream.get_ref()
                    ),
                ));
            }
            durables.push((c.stream.get_ref().clone(), name.clone()));
            match (c.deliver, c.start_time, c.start_sequence) {
                (Some(Deliver::ByStartTime), None, _) => errors.push(err(src, c.stream.span(), key("start_time"), "deliver = \"by_start_time\" needs start_time (RFC 3339)".into())),
                (Some(Deliver::ByStartSequence), _, None) => errors.push(err(src, c.stream.span(), key("start_sequence"), "deliver = \"by_start_sequence\" needs start_sequence".into())),
                (d, t, q) if (t.is_some() && d != Some(Deliver::ByStartTime)) || (q.is_some() && d != Some(Deliver::ByStartSequence)) => {
                    errors.push(err(src, c.stream.span(), key("deliver"), "start_time needs deliver = \"by_start_time\", start_sequence needs deliver = \"by_start_sequence\"".into()))
                }
                _ => {}
            }
            if let (Some(b), Some(w)) = (&c.backoff, c.ack_wait) {
                if b.first().is_some_and(|f| f.0 != w) {
                    errors.push(err(src, c.stream.span(), key("ack_wait"), format!(
                        "with backoff set the server waits backoff[0] ({}) for the first ack, not ack_wait ({}): drop ack_wait or make it equal backoff[0]",
                        humantime::format_duration(b[0].0), humantime::format_duration(w)
                    )));
                }
            }
            if let (Some(b), Some(m)) = (&c.backoff, c.max_deliver) {
                if m > 0 && b.len() as i64 > m {
                    errors.push(err(src, c.stream.span(), key("backoff"), format!("{} backoff steps but max_deliver = {m}: the server refuses more steps than deliveries", b.len())));
                }
            }
            consumers.push((name, c.clone()));
        }
        systems.push(System {
            decl: sys.clone(),
            consumers,
            file: src.path.clone(),
        });
    }
    if errors.is_empty() {
        Ok(Declaration {
            streams: streams.into_iter().map(|(_, s)| s.clone()).collect(),
            systems,
        })
    } else {
        Err(errors)
    }
}

/// `n` with every character that is not safe in a name replaced by `-`.
fn safe_name(n: &str) -> String {
    n.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn valid_subject(s: &str) -> bool {
    let tokens: Vec<&str> = s.split('.').collect();
    !s.is_empty()
        && tokens.iter().enumerate().all(|(i, t)| {
            !t.is_empty()
                && !t.contains(char::is_whitespace)
                && (*t != ">" || i == tokens.len() - 1)
                && (t.len() == 1 || !t.contains(['*', '>']))
        })
}

/// Whether every subject matching `inner` also matches `outer`.
pub fn covers(outer: &str, inner: &str) -> bool {
    let (o, i): (Vec<&str>, Vec<&str>) = (outer.split('.').collect(), inner.split('.').collect());
    for (k, ot) in o.iter().enumerate() {
        match (*ot, i.get(k)) {
            (">", Some(_)) => return true,
            (_, None) => return false,
            ("*", Some(&it)) if it != ">" => {}
            (a, Some(&b)) if a == b && a != "*" && a != ">" => {}
            _ => return false,
        }
    }
    o.len() == i.len()
}

/// Whether some subject matches both filters.
pub fn overlap(a: &str, b: &str) -> bool {
    let (x, y): (Vec<&str>, Vec<&str>) = (a.split('.').collect(), b.split('.').collect());
    let mut k = 0;
    loop {
        match (x.get(k), y.get(k)) {
            (Some(&">"), Some(_)) | (Some(_), Some(&">")) => return true,
            (Some(&p), Some(&q)) if p == "*" || q == "*" || p == q => k += 1,
            (None, None) => return true,
            _ => return false,
        }
    }
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

    #[test]
    fn cover_and_overlap() {
        assert!(covers(
            "mes.*.*.*.*.processorder.>",
            "mes.*.*.*.*.processorder.statuschanged.>"
        ));
        assert!(covers("mes.>", "mes.bsl.>"));
        assert!(!covers("mes.bsl.>", "mes.>"));
        assert!(!covers("mes.*.x", "mes.*.>"));
        assert!(covers("mes.*", "mes.a"));
        assert!(!covers("mes.a", "mes.*"));
        assert!(overlap("mes.*.*.*.*.processorder.>", "mes.bsl.>"));
        assert!(!overlap(
            "mes.*.*.*.*.processorder.>",
            "mes.*.*.*.*.processvariable.>"
        ));
        assert!(!overlap("a.b", "a.b.c"));
        assert!(overlap("a.*", "*.b"));
    }

    #[test]
    fn subjects() {
        assert!(valid_subject("mes.*.>"));
        assert!(!valid_subject("mes.>.x"));
        assert!(!valid_subject("mes..x"));
        assert!(!valid_subject("mes.a*"));
        assert!(!valid_subject("mes.a b"));
    }
}
