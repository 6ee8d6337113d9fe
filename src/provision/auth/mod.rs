//! NATS server authorization generated from the declaration: who may do what on the bus.
//!
//! **Accounts first, permissions second.** JetStream lives in one account,
//! [`JETSTREAM_ACCOUNT`], with the admin and the relay. Every external system has an account of
//! its own, without JetStream, into which the JetStream account exports exactly the subjects of
//! its consumers as services (and its `live` patterns as streams), plus a direct get of the
//! schema bucket ([`schema_grant`]). Inside its account each
//! identity is also an NKey user with publish and subscribe permissions on those same subjects
//! and its own inbox prefix (`_INBOX_<name>`).
//!
//! Why accounts: NATS checks the *subject* of a publish against permissions, never its *reply*
//! subject, and JetStream answers to the reply subject from inside its own account. In a single
//! account, a system allowed to pull from its own consumer could name `$JS.API.STREAM.PURGE.X`,
//! an event subject or another consumer's ack subject as the reply, and the server itself would
//! then purge the stream, store a forged event or ack a victim's message (verified on 2.15.1).
//! Across an account boundary the server rewrites the reply of an imported service request to a
//! private `_R_.…` subject of the exporting account and sends the answer back into the
//! importer's account, where there is no JetStream and nobody else: whatever the reply subject
//! names, the answer lands in the attacker's own account.
//!
//! Why the relay stays in the JetStream account: it needs `STREAM.INFO` (a stream's
//! configuration, creation time and tail) and `STREAM.MSG.GET`, and the JetStream API serves a
//! request that crossed an account boundary in the *requester's* account (`getRequestInfo` in
//! `server/jetstream_api.go`), where there are no streams. Only pulls, acks and publishes work
//! across accounts. The same is why a system cannot read its consumer's info: clients bind to
//! the consumer by name without looking it up (see docs/design.md). The relay's seed is therefore
//! as sensitive as the admin's: through reply subjects of its own requests it could have
//! JetStream act on its account (see "Who may do what" in docs/design.md).
//!
//! Every subject is derived from the subjects the server itself listens on (nats-server 2.10 to
//! 2.15, `server/consumer.go` and `server/jetstream_api.go`), never from the shape a client
//! library happens to use, and every token that names a stream or a consumer is pinned to a
//! literal with the exact token count of the server's subscription, so that no subject granted
//! can reach another consumer's subscription. `grants_reach_nothing_of_others` below checks that
//! against the server's grammar; `tests/it/permissions.rs` against a real server.
//!
//! The seed files and `auth.conf` on disk are [`super::seeds`]'s.
//!
//! Each grant, the argument for it beside it, the rendering and the unit test that holds every
//! grant against the server's subscription grammar are read and changed together, so they stay
//! in this one file; a third of it is that test.

use std::collections::BTreeMap;

use sha2::Digest as _;

use super::load::Declaration;

pub use super::decl::{ADMIN, RELAY, RESERVED};
pub use super::seeds::{previous_path, write, AuthError, Change, SeedFate, Written};

/// The account that has JetStream: the streams, their consumers and the admin.
pub const JETSTREAM_ACCOUNT: &str = "MES";

/// How long the server keeps routing a streamed answer (a pull request's messages) back to the
/// importing account: a pull request must expire within it. Every official client's default
/// pull expiry (30 s or less) does.
pub const RESPONSE_THRESHOLD: &str = "2m";

/// The account an identity connects to: the admin and the relay to the JetStream account, each
/// system to one of its own. (System names are safe subject tokens, unique ignoring case, and
/// never `admin` or `relay`, so these names never collide.)
pub fn account(identity: &str) -> String {
    match identity {
        ADMIN | RELAY => JETSTREAM_ACCOUNT.into(),
        system => format!("{JETSTREAM_ACCOUNT}_SYSTEM_{system}"),
    }
}

/// One subject the JetStream account shares with an identity's account.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum Import {
    /// The identity publishes here (pull requests, acks); the answers come back to it. Every
    /// one is exported with streamed answers (`response_type: stream`): a pull request, and an
    /// ack with `+NXT`, are answered with several messages.
    Service { subject: String },
    /// The identity subscribes here (live events).
    Stream { subject: String },
}

/// One identity: its account, what the JetStream account shares with it, and its permissions
/// inside its own account (the same subjects: a second wall).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct User {
    pub name: String,
    pub account: String,
    pub imports: Vec<Import>,
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
}

/// The inbox prefix an identity's client must use (async-nats `custom_inbox_prefix`, nats-py
/// `inbox_prefix`, nats.js `inboxPrefix`, NATS.Net `InboxPrefix`): replies to its requests come
/// there, and it may subscribe nowhere else but its declared live patterns.
pub fn inbox_prefix(identity: &str) -> String {
    format!("_INBOX_{identity}")
}

/// Where the server's consumers live, as the v2 ack subjects name it: the JetStream domain
/// (`_` for none) and the account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub domain: String,
    pub account: String,
}

impl Default for Scope {
    fn default() -> Scope {
        Scope {
            domain: "_".into(),
            account: JETSTREAM_ACCOUNT.into(),
        }
    }
}

/// The server's 8-character account hash in v2 ack subjects (`getHash` in `server/events.go`:
/// SHA-256 of the name, each of the first 8 bytes mapped onto 62 digits).
pub fn account_hash(account: &str) -> String {
    const DIGITS: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let sum = sha2::Sha256::digest(account.as_bytes());
    sum[..8]
        .iter()
        .map(|b| DIGITS[(b % 62) as usize] as char)
        .collect()
}

/// What a client needs to publish to use one durable pull consumer `consumer` of `stream`.
///
/// - `$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`: pull requests (`fetch`, `consume`,
///   `messages`), the consumer's `nextMsgSubj`. The messages are the (streamed) answer. The
///   consumer subscribes to it itself, so it works across accounts.
/// - `$JS.ACK.<stream>.<consumer>.*.*.*.*.*`: the v1 ack subject, exactly the 9 tokens of the
///   server's `ackSubjOld` subscription (delivered count, stream and consumer sequence,
///   timestamp, pending). Every ack kind is a payload on it: `+ACK` (or empty), `-NAK`, `+WPI`,
///   `+TERM`, `+NXT` (whose next messages are a streamed answer). Nine tokens with stream and
///   consumer pinned cannot match any other consumer's subscriptions: v1 ones differ in tokens
///   3–4, v2 ones need 11 tokens or more. (A `>` tail, or wildcards in tokens 3–4, is what let
///   one system pull another's events with `+NXT`: `$JS.ACK.*.*.S.erp.>` allowed
///   `$JS.ACK.S.quality.S.erp.1.1.1`, which is quality's v1 subscription.)
/// - `$JS.ACK.<domain>.<account hash>.<stream>.<consumer>.*.*.*.*.*`: the v2 ack subject the
///   server writes from 2.14 on when `js_ack_fc_v2` is enabled: exactly the 11 tokens of its
///   reply template, every naming token pinned. (The server also accepts longer v2 subjects,
///   which its replies never are, so they are not granted.)
///
/// Not granted: `$JS.API.CONSUMER.INFO.…` (the API would answer it in the system's own account,
/// "JetStream not enabled for account"; the lag is in every message's ack subject), `$JS.FC.…`
/// (flow control replies, push consumers only), and everything else of the API: creating,
/// updating, pausing, resetting or deleting consumers is `provision`'s job, replays the
/// operators'.
pub fn consumer_grants(scope: &Scope, stream: &str, consumer: &str) -> Vec<Import> {
    let service = |subject: String| Import::Service { subject };
    vec![
        service(format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}")),
        service(format!("$JS.ACK.{stream}.{consumer}.*.*.*.*.*")),
        service(format!(
            "$JS.ACK.{}.{}.{stream}.{consumer}.*.*.*.*.*",
            scope.domain,
            account_hash(&scope.account)
        )),
    ]
}

/// What every system may request to read the schema bucket: a direct get of a key, the key
/// in the subject (`$JS.API.DIRECT.GET.KV_MES_SCHEMAS.$KV.MES_SCHEMAS.<key>`), never the
/// request-body form on the bare `$JS.API.DIRECT.GET.KV_MES_SCHEMAS`. The stream name token is
/// pinned, so no other stream's direct get is reachable.
pub fn schema_grant() -> String {
    super::schemas::direct_get_subject(">")
}

/// The streams the relay writes: those whose subjects are events (not `$JS.…` advisories, such
/// as the dead letters' stream).
pub fn event_streams(d: &Declaration) -> impl Iterator<Item = &super::decl::StreamDecl> {
    d.streams
        .iter()
        .filter(|s| s.subjects.iter().all(|x| !x.get_ref().starts_with('$')))
}

fn service_subjects(imports: &[Import]) -> Vec<String> {
    imports
        .iter()
        .filter_map(|i| match i {
            Import::Service { subject } => Some(subject.clone()),
            Import::Stream { .. } => None,
        })
        .collect()
}

/// The server's answer to "who am I": an identity's own account and permissions.
pub const WHO_AM_I: &str = "$SYS.REQ.USER.INFO";

/// Every identity, its account, imports and permissions (pure).
pub fn users(d: &Declaration, scope: &Scope) -> Vec<User> {
    // The relay: publish on the event streams' subjects (the PubAck is the answer);
    // `STREAM.INFO` for the start-up check and the tail a reconciliation reads up to;
    // `STREAM.MSG.GET` for reading back what landed. Only its own streams: nothing of the dead
    // letters, no consumer, no `DIRECT.GET` (it does not use it), no purge, update or delete.
    let mut relay = Vec::new();
    for s in event_streams(d) {
        relay.extend(s.subjects.iter().map(|x| x.get_ref().clone()));
    }
    for s in event_streams(d) {
        let name = s.name.get_ref();
        relay.push(format!("$JS.API.STREAM.INFO.{name}"));
        relay.push(format!("$JS.API.STREAM.MSG.GET.{name}"));
    }
    // Every identity but the admin may ask the server who it is (`$SYS.REQ.USER.INFO`: its own
    // account and permissions, nothing of anyone else's): the relay and push read from it that
    // they run with no more than their job's rights, without probing a subject they may not ask.
    relay.push(WHO_AM_I.into());
    let mut out = vec![
        User {
            name: ADMIN.into(),
            account: account(ADMIN),
            imports: Vec::new(),
            publish: vec![">".into()],
            subscribe: vec![">".into()],
        },
        User {
            name: RELAY.into(),
            account: account(RELAY),
            imports: Vec::new(),
            publish: relay,
            subscribe: vec![format!("{}.>", inbox_prefix(RELAY))],
        },
    ];
    for sys in &d.systems {
        let name = sys.decl.name.get_ref();
        let mut imports = Vec::new();
        for (consumer, c) in &sys.consumers {
            imports.extend(consumer_grants(scope, c.stream.get_ref(), consumer));
        }
        // Reading the catalog's schemas: a direct get of one key of the schema bucket, served
        // by the bucket's own stream (so across accounts, as pulls are). Read-only: a direct
        // get changes nothing, and its answer, whatever reply subject it names, lands in this
        // account.
        imports.push(Import::Service {
            subject: schema_grant(),
        });
        // Its inbox (pull responses, heartbeats, API answers), then what it may watch live:
        // validation keeps those patterns inside the event streams' subjects.
        let mut subscribe = vec![format!("{}.>", inbox_prefix(name))];
        for p in &sys.decl.live {
            subscribe.push(p.get_ref().clone());
            imports.push(Import::Stream {
                subject: p.get_ref().clone(),
            });
        }
        let mut publish = service_subjects(&imports);
        publish.push(WHO_AM_I.into());
        out.push(User {
            name: name.clone(),
            account: account(name),
            publish,
            subscribe,
            imports,
        });
    }
    out
}

/// The `accounts { … }` block for nats-server, users identified by NKey public keys (an
/// identity being rotated has two, each with the same permissions): the JetStream account
/// exporting to each identity's account exactly what that one imports.
pub fn render(users: &[(User, Vec<String>)]) -> String {
    let q = |v: &[String]| {
        v.iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let user = |u: &User, keys: &[String]| {
        keys.iter()
            .enumerate()
            .map(|(i, public)| {
                let which = if i == 0 { "" } else { " (previous seed, until retired)" };
                format!(
                    "      # {}{which}\n      {{ nkey: \"{public}\", permissions: {{ publish: {{ allow: [{}] }}, subscribe: {{ allow: [{}] }} }} }}\n",
                    u.name,
                    q(&u.publish),
                    q(&u.subscribe)
                )
            })
            .collect::<String>()
    };
    // One export per subject, naming every account that imports it.
    let mut exports: BTreeMap<&Import, Vec<String>> = BTreeMap::new();
    for (u, _) in users {
        for i in &u.imports {
            exports
                .entry(i)
                .or_default()
                .push(format!("\"{}\"", u.account));
        }
    }
    let mut out = String::from(
        "# Generated by `mes-events provision credentials` from the declaration under nats/.\n\
         # Do not edit: change the declaration and generate again. Seeds (*.nk) stay beside it.\n\
         # JetStream, the admin and the relay live in account MES; each system has an account of\n\
         # its own, into which MES exports exactly the subjects of its consumers. Each identity\n\
         # must use its own inbox prefix, _INBOX_<name>.\n\
         accounts {\n",
    );
    out.push_str(&format!(
        "  {JETSTREAM_ACCOUNT}: {{\n    jetstream: enabled\n    users: [\n"
    ));
    for (u, public) in users.iter().filter(|(u, _)| u.account == JETSTREAM_ACCOUNT) {
        out.push_str(&user(u, public));
    }
    out.push_str("    ]\n    exports: [\n");
    for (i, to) in &exports {
        let to = to.join(", ");
        match i {
            Import::Service { subject } => {
                out.push_str(&format!(
                    "      {{ service: \"{subject}\", accounts: [{to}], response_type: stream, response_threshold: \"{RESPONSE_THRESHOLD}\" }}\n"
                ));
            }
            Import::Stream { subject } => {
                out.push_str(&format!(
                    "      {{ stream: \"{subject}\", accounts: [{to}] }}\n"
                ));
            }
        }
    }
    out.push_str("    ]\n  }\n");
    for (u, public) in users.iter().filter(|(u, _)| u.account != JETSTREAM_ACCOUNT) {
        out.push_str(&format!("  \"{}\": {{\n    users: [\n", u.account));
        out.push_str(&user(u, public));
        out.push_str("    ]\n    imports: [\n");
        for i in &u.imports {
            let (kind, subject) = match i {
                Import::Service { subject } => ("service", subject),
                Import::Stream { subject } => ("stream", subject),
            };
            out.push_str(&format!(
                "      {{ {kind}: {{ account: {JETSTREAM_ACCOUNT}, subject: \"{subject}\" }} }}\n"
            ));
        }
        out.push_str("    ]\n  }\n");
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests;
