//! Loading a declaration: every `*.toml` file of the folder (and of `systems/`) parsed, then
//! validated as a whole before any call to a server: streams known, filters captured, subjects
//! not overlapping, names unique, safe and not reserved, live patterns inside the events.
//!
//! Never calls a server: a declaration with any problem is refused whole.

use std::path::{Path, PathBuf};

use super::decl::{
    line_of, parse_all, ConsumerDecl, DeclError, Deliver, PushDecl, Source, StreamDecl, SystemDecl,
    RESERVED,
};

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
    /// Its HTTP endpoint, when `mes-events push` delivers to it.
    pub push: Option<PushDecl>,
    pub file: PathBuf,
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
        // Every mistake of every file at once; what a file says without its broken keys is
        // still checked with the others.
        let (source, mut wrong) = parse_all(&path, &text);
        errors.append(&mut wrong);
        sources.extend(source);
    }
    match validate(sources) {
        Ok(d) if errors.is_empty() => Ok(d),
        Ok(_) => Err(errors),
        Err(mut more) => {
            errors.append(&mut more);
            Err(errors)
        }
    }
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
            if let Some(p) = &f.push {
                errors.push(err(
                    src,
                    p.url.span(),
                    "push".into(),
                    "a push endpoint belongs to a system: add a [system] table with its name to this file".into(),
                ));
            }
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
        // Names that differ only in case are one identity: one seed file on a case-insensitive
        // filesystem, one inbox prefix for a human reader.
        if systems.iter().any(|s: &System| {
            s.decl
                .name
                .get_ref()
                .eq_ignore_ascii_case(sys.name.get_ref())
        }) {
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
                        crate::show::duration(b[0].0), crate::show::duration(w)
                    )));
                }
            }
            if let (Some(b), Some(m)) = (&c.backoff, c.max_deliver) {
                if m > 0 && b.len() as i64 > m {
                    errors.push(err(src, c.stream.span(), key("backoff"), format!("{} backoff steps but max_deliver = {m}: the server refuses more steps than deliveries", b.len())));
                }
            }
            let mut c = c.clone();
            if let Some(p) = &f.push {
                errors.extend(super::pushed::consumer(src, i, p, &mut c));
            }
            consumers.push((name, c));
        }
        if let Some(p) = &f.push {
            errors.extend(super::pushed::check(src, p, !consumers.is_empty()));
        }
        systems.push(System {
            decl: sys.clone(),
            consumers,
            push: f.push.clone(),
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
