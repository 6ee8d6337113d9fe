//! Plan: declared vs live, per object, as create / update / unchanged / replace / delete, with
//! field-level differences. Pure: compares only the fields a declaration sets, normalised, so the
//! defaults a server fills in (2.10 to current) never show as drift.
//!
//! It stays one file of about 630 lines: the comparison of every declared field
//! (`stream_changes`, `consumer_changes`) and the configuration the same fields are laid over
//! (`stream_config`, `consumer_config`) must change together, or a field would show as false
//! drift or drift silently; a pushed consumer's priority group is one more such pair. Split in
//! two, each half would be read only with the other open.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use async_nats::jetstream::{consumer, stream};

use super::decl::{
    Compression, ConsumerDecl, Deliver, Discard, PushDecl, Retention, Storage, StreamDecl,
};
use crate::event::subject::REDELIVER_PREFIX;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Update,
    Unchanged,
    /// A field the server cannot change in place differs: the object would have to be recreated.
    Replace,
    /// Undeclared durable consumer removed (only with --prune).
    Delete,
    /// Exists on the server, not declared, left alone.
    Unmanaged,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Stream,
    Consumer,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    pub field: &'static str,
    pub live: String,
    pub declared: String,
    /// False when the server refuses to change it in place.
    pub mutable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Item {
    pub kind: Kind,
    pub stream: String,
    /// Consumer name (consumers only).
    pub consumer: Option<String>,
    pub action: Action,
    pub changes: Vec<Change>,
}

impl Item {
    pub fn label(&self) -> String {
        match &self.consumer {
            Some(c) => format!("consumer {}/{c}", self.stream),
            None => format!("stream {}", self.stream),
        }
    }
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Plan {
    pub items: Vec<Item>,
    /// It was carried out (`apply`): told in the past tense.
    #[serde(skip)]
    pub applied: bool,
}

impl Plan {
    /// Whether apply would change anything.
    pub fn pending(&self) -> bool {
        self.items
            .iter()
            .any(|i| !matches!(i.action, Action::Unchanged | Action::Unmanaged))
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for i in &self.items {
            let action = match i.action {
                Action::Create => "create",
                Action::Update => "update",
                Action::Unchanged => "unchanged",
                Action::Replace => "replace",
                Action::Delete => "delete",
                Action::Unmanaged => "unmanaged (left alone)",
            };
            writeln!(f, "{action:>9}  {}", i.label())?;
            // A new object: its declared settings (those that differ from the server's defaults).
            if i.action == Action::Create {
                for c in &i.changes {
                    writeln!(f, "             {} = {}", c.field, c.declared)?;
                }
                continue;
            }
            for c in &i.changes {
                let note = if c.mutable {
                    ""
                } else {
                    "   (cannot change in place)"
                };
                writeln!(
                    f,
                    "             {}: {} -> {}{note}",
                    c.field, c.live, c.declared
                )?;
            }
        }
        let count = |a: Action| self.items.iter().filter(|i| i.action == a).count();
        if self.applied {
            return write!(
                f,
                "{} created, {} updated, {} replaced, {} deleted, {} unchanged",
                count(Action::Create),
                count(Action::Update),
                count(Action::Replace),
                count(Action::Delete),
                count(Action::Unchanged)
            );
        }
        write!(
            f,
            "{} to create, {} to update, {} to replace, {} to delete, {} unchanged",
            count(Action::Create),
            count(Action::Update),
            count(Action::Replace),
            count(Action::Delete),
            count(Action::Unchanged)
        )
    }
}

fn dur(d: Duration) -> String {
    if d.is_zero() {
        "0s".into()
    } else {
        crate::show::duration(d).to_string()
    }
}

fn list(v: &[String]) -> String {
    let mut v = v.to_vec();
    v.sort();
    format!("{v:?}")
}

fn meta(m: &BTreeMap<String, String>) -> String {
    format!("{m:?}")
}

/// Declared metadata plus the keys the server keeps for itself (`_nats.*`), which must survive
/// an update.
fn declared_metadata(
    declared: &BTreeMap<String, String>,
    live: &std::collections::HashMap<String, String>,
) -> std::collections::HashMap<String, String> {
    // The server's own keys and those mes-events records (a replay) stay.
    live.iter()
        .filter(|(k, _)| k.starts_with("_nats.") || k.starts_with("mes-events."))
        .chain(declared)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Live metadata without the keys the server adds itself (`_nats.*`, since 2.11) and those
/// mes-events records on purpose (`mes-events.*`, e.g. a replay).
fn live_meta(m: &std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    m.iter()
        .filter(|(k, _)| !k.starts_with("_nats.") && !k.starts_with("mes-events."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Records a difference when a field is declared and its value differs from the live one.
fn compare(
    out: &mut Vec<Change>,
    field: &'static str,
    declared: Option<String>,
    live: String,
    mutable: bool,
) {
    if let Some(declared) = declared.filter(|d| *d != live) {
        out.push(Change {
            field,
            live,
            declared,
            mutable,
        });
    }
}

/// Differences between a declared stream and the live one, declared fields only.
pub fn stream_changes(d: &StreamDecl, live: &stream::Config) -> Vec<Change> {
    let mut out = Vec::new();
    let mut cmp =
        |field, declared, live, mutable| compare(&mut out, field, declared, live, mutable);
    let subjects = stream_subjects(d);
    cmp(
        "subjects",
        Some(list(&subjects)),
        list(&live.subjects),
        true,
    );
    cmp(
        "description",
        d.description.clone(),
        live.description.clone().unwrap_or_default(),
        true,
    );
    cmp(
        "storage",
        d.storage.map(|s| storage(s).to_owned()),
        storage_live(live.storage).into(),
        false,
    );
    cmp(
        "replicas",
        d.replicas.map(|r| r.to_string()),
        live.num_replicas.max(1).to_string(),
        true,
    );
    cmp(
        "retention",
        d.retention.map(|r| retention(r).into()),
        retention_live(live.retention).into(),
        false,
    );
    cmp("max_age", d.max_age.map(dur), dur(live.max_age), true);
    cmp(
        "max_bytes",
        d.max_bytes.map(|s| s.0.to_string()),
        live.max_bytes.to_string(),
        true,
    );
    cmp(
        "max_msgs",
        d.max_msgs.map(|n| n.to_string()),
        live.max_messages.to_string(),
        true,
    );
    cmp(
        "max_msgs_per_subject",
        d.max_msgs_per_subject.map(|n| n.to_string()),
        live.max_messages_per_subject.to_string(),
        true,
    );
    cmp(
        "max_msg_size",
        d.max_msg_size.map(|s| s.0.to_string()),
        live.max_message_size.to_string(),
        true,
    );
    cmp(
        "duplicate_window",
        d.duplicate_window.map(dur),
        dur(live.duplicate_window),
        true,
    );
    cmp(
        "discard",
        d.discard.map(|x| discard(x).into()),
        discard_live(live.discard).into(),
        true,
    );
    cmp(
        "compression",
        d.compression.map(|c| compression(c).into()),
        compression_live(live.compression.as_ref()).into(),
        true,
    );
    cmp(
        "allow_direct",
        d.allow_direct.map(|b| b.to_string()),
        live.allow_direct.to_string(),
        true,
    );
    cmp(
        "metadata",
        d.metadata.as_ref().map(meta),
        meta(&live_meta(&live.metadata)),
        true,
    );
    out
}

/// Lays the declared fields over a stream configuration (a default one for a new stream).
pub fn stream_config(d: &StreamDecl, mut c: stream::Config) -> stream::Config {
    c.name = d.name.get_ref().clone();
    c.subjects = stream_subjects(d);
    if let Some(v) = &d.description {
        c.description = Some(v.clone());
    }
    if let Some(v) = d.storage {
        c.storage = match v {
            Storage::File => stream::StorageType::File,
            Storage::Memory => stream::StorageType::Memory,
        };
    }
    if let Some(v) = d.replicas {
        c.num_replicas = v;
    }
    if let Some(v) = d.retention {
        c.retention = match v {
            Retention::Limits => stream::RetentionPolicy::Limits,
            Retention::Interest => stream::RetentionPolicy::Interest,
            Retention::Workqueue => stream::RetentionPolicy::WorkQueue,
        };
    }
    if let Some(v) = d.max_age {
        c.max_age = v;
    }
    if let Some(v) = d.max_bytes {
        c.max_bytes = v.0;
    }
    if let Some(v) = d.max_msgs {
        c.max_messages = v;
    }
    if let Some(v) = d.max_msgs_per_subject {
        c.max_messages_per_subject = v;
    }
    if let Some(v) = d.max_msg_size {
        c.max_message_size = i32::try_from(v.0).unwrap_or(i32::MAX);
    }
    if let Some(v) = d.duplicate_window {
        c.duplicate_window = v;
    }
    if let Some(v) = d.discard {
        c.discard = match v {
            Discard::Old => stream::DiscardPolicy::Old,
            Discard::New => stream::DiscardPolicy::New,
        };
    }
    if let Some(v) = d.compression {
        c.compression = Some(match v {
            Compression::None => stream::Compression::None,
            Compression::S2 => stream::Compression::S2,
        });
    }
    if let Some(v) = d.allow_direct {
        c.allow_direct = v;
    }
    if let Some(m) = &d.metadata {
        c.metadata = declared_metadata(m, &c.metadata);
    }
    c
}

/// A stream's subjects: the declared ones, plus the one dead letters are sent back on.
pub fn stream_subjects(d: &StreamDecl) -> Vec<String> {
    let mut v: Vec<String> = d.subjects.iter().map(|s| s.get_ref().clone()).collect();
    v.push(format!("{REDELIVER_PREFIX}.{}.>", d.name.get_ref()));
    v
}

/// A consumer's filters: the declared ones, plus the subject its own dead letters come back on.
pub fn consumer_filters(name: &str, d: &ConsumerDecl) -> Vec<String> {
    let mut v: Vec<String> = d
        .filter_subjects
        .iter()
        .map(|s| s.get_ref().clone())
        .collect();
    if !v.is_empty() {
        v.push(format!(
            "{REDELIVER_PREFIX}.{}.{name}.>",
            d.stream.get_ref()
        ));
    }
    v
}

/// Differences between a declared consumer and the live one, declared fields only.
pub fn consumer_changes(name: &str, d: &ConsumerDecl, live: &consumer::Config) -> Vec<Change> {
    let mut out = Vec::new();
    let mut cmp =
        |field, declared, live, mutable| compare(&mut out, field, declared, live, mutable);
    let filters = consumer_filters(name, d);
    let live_filters = if live.filter_subject.is_empty() {
        live.filter_subjects.clone()
    } else {
        vec![live.filter_subject.clone()]
    };
    cmp(
        "filter_subjects",
        Some(list(&filters)),
        list(&live_filters),
        true,
    );
    cmp(
        "description",
        d.description.clone(),
        live.description.clone().unwrap_or_default(),
        true,
    );
    // A replay moves the start point on purpose: not drift. The declared policy is compared
    // with the one the consumer had before its first replay.
    cmp(
        "deliver",
        d.deliver.map(|_| deliver_text(&deliver_policy(d))),
        deliver_text(&declared_deliver(live)),
        false,
    );
    cmp(
        "ack_policy",
        Some("explicit".into()),
        format!("{:?}", live.ack_policy).to_lowercase(),
        false,
    );
    cmp("ack_wait", d.ack_wait.map(dur), dur(live.ack_wait), true);
    cmp(
        "max_deliver",
        d.max_deliver.map(|n| n.to_string()),
        live.max_deliver.to_string(),
        true,
    );
    cmp(
        "backoff",
        d.backoff
            .as_ref()
            .map(|b| format!("{:?}", b.iter().map(|x| dur(x.0)).collect::<Vec<_>>())),
        format!(
            "{:?}",
            live.backoff.iter().map(|x| dur(*x)).collect::<Vec<_>>()
        ),
        true,
    );
    cmp(
        "max_ack_pending",
        d.max_ack_pending.map(|n| n.to_string()),
        live.max_ack_pending.to_string(),
        true,
    );
    cmp(
        "metadata",
        d.metadata.as_ref().map(meta),
        meta(&live_meta(&live.metadata)),
        true,
    );
    // A pushed system's: one pinned puller at a time.
    if let Some(t) = d.pinned {
        cmp(
            "priority_policy",
            Some("pinned_client".into()),
            serde_json::to_value(&live.priority_policy)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            true,
        );
        cmp(
            "priority_groups",
            Some(list(&[PushDecl::GROUP.to_owned()])),
            list(&live.priority_groups),
            true,
        );
        cmp(
            "priority_timeout",
            Some(dur(t)),
            dur(live.priority_timeout),
            true,
        );
    }
    out
}

pub fn deliver_policy(d: &ConsumerDecl) -> consumer::DeliverPolicy {
    use consumer::DeliverPolicy as P;
    match d.deliver.unwrap_or(Deliver::All) {
        Deliver::All => P::All,
        Deliver::New => P::New,
        Deliver::Last => P::Last,
        Deliver::LastPerSubject => P::LastPerSubject,
        Deliver::ByStartTime => P::ByStartTime {
            start_time: d.start_time.unwrap_or_default(),
        },
        Deliver::ByStartSequence => P::ByStartSequence {
            start_sequence: d.start_sequence.unwrap_or(1),
        },
    }
}

/// The deliver policy a consumer has by declaration: the declared start time it was created at
/// the sequence of; else its own, or, after a replay, the one it had before (a replay of a
/// consumer from an older version recorded none: its start point is then taken as declared).
pub fn declared_deliver(live: &consumer::Config) -> consumer::DeliverPolicy {
    use crate::read::replay::{DELIVER_BEFORE_REPLAY, DELIVER_DECLARED, REPLAYED_FROM};
    if let Some(p) = live
        .metadata
        .get(DELIVER_DECLARED)
        .and_then(|s| serde_json::from_str(s).ok())
    {
        return p;
    }
    if !live.metadata.contains_key(REPLAYED_FROM) {
        return live.deliver_policy;
    }
    live.metadata
        .get(DELIVER_BEFORE_REPLAY)
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or(live.deliver_policy)
}

fn deliver_text(p: &consumer::DeliverPolicy) -> String {
    use consumer::DeliverPolicy as P;
    match p {
        P::All => "all".into(),
        P::New => "new".into(),
        P::Last => "last".into(),
        P::LastPerSubject => "last_per_subject".into(),
        P::ByStartTime { start_time } => format!("by_start_time {}", start_time.to_rfc3339()),
        P::ByStartSequence { start_sequence } => format!("by_start_sequence {start_sequence}"),
    }
}

/// Lays the declared fields over a consumer configuration (a default one for a new consumer).
pub fn consumer_config(name: &str, d: &ConsumerDecl, mut c: consumer::Config) -> consumer::Config {
    c.durable_name = Some(name.to_owned());
    c.name = Some(name.to_owned());
    c.ack_policy = consumer::AckPolicy::Explicit;
    let filters = consumer_filters(name, d);
    // One filter goes in filter_subject (understood by every server), several in filter_subjects.
    if filters.len() == 1 {
        c.filter_subject = filters[0].clone();
        c.filter_subjects = Vec::new();
    } else {
        c.filter_subject = String::new();
        c.filter_subjects = filters;
    }
    if let Some(v) = &d.description {
        c.description = Some(v.clone());
    }
    // A replayed consumer keeps its start point while the declared policy is the one it had
    // before the replay (the server cannot change it in place anyway).
    if d.deliver.is_some() && deliver_policy(d) != declared_deliver(&c) {
        c.deliver_policy = deliver_policy(d);
    }
    if let Some(v) = d.ack_wait {
        c.ack_wait = v;
    }
    if let Some(v) = d.max_deliver {
        c.max_deliver = v;
    }
    if let Some(v) = &d.backoff {
        c.backoff = v.iter().map(|d| d.0).collect();
    }
    if let Some(v) = d.max_ack_pending {
        c.max_ack_pending = v;
    }
    if let Some(m) = &d.metadata {
        c.metadata = declared_metadata(m, &c.metadata);
    }
    if let Some(t) = d.pinned {
        c.priority_policy = consumer::PriorityPolicy::PinnedClient;
        c.priority_groups = vec![PushDecl::GROUP.to_owned()];
        c.priority_timeout = t;
    }
    c
}

fn storage(s: Storage) -> &'static str {
    match s {
        Storage::File => "file",
        Storage::Memory => "memory",
    }
}
fn storage_live(s: stream::StorageType) -> &'static str {
    match s {
        stream::StorageType::File => "file",
        stream::StorageType::Memory => "memory",
    }
}
fn retention(r: Retention) -> &'static str {
    match r {
        Retention::Limits => "limits",
        Retention::Interest => "interest",
        Retention::Workqueue => "workqueue",
    }
}
fn retention_live(r: stream::RetentionPolicy) -> &'static str {
    match r {
        stream::RetentionPolicy::Limits => "limits",
        stream::RetentionPolicy::Interest => "interest",
        stream::RetentionPolicy::WorkQueue => "workqueue",
    }
}
fn discard(d: Discard) -> &'static str {
    match d {
        Discard::Old => "old",
        Discard::New => "new",
    }
}
fn discard_live(d: stream::DiscardPolicy) -> &'static str {
    match d {
        stream::DiscardPolicy::Old => "old",
        stream::DiscardPolicy::New => "new",
    }
}
fn compression(c: Compression) -> &'static str {
    match c {
        Compression::None => "none",
        Compression::S2 => "s2",
    }
}
fn compression_live(c: Option<&stream::Compression>) -> &'static str {
    match c {
        Some(stream::Compression::S2) => "s2",
        _ => "none",
    }
}

/// The action for an object given its changes.
pub fn action(changes: &[Change]) -> Action {
    if changes.is_empty() {
        Action::Unchanged
    } else if changes.iter().any(|c| !c.mutable) {
        Action::Replace
    } else {
        Action::Update
    }
}
