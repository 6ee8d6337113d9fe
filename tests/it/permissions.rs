//! The generated accounts and permissions, loaded into a real nats-server and tried as a hostile
//! integrator would: every identity speaks the wire protocol itself and tries the whole
//! JetStream surface against every other system's consumer and every stream, the schema bucket's
//! included. Each attempt must
//! be refused by the server, and the victims' consumers must not have moved. Then what
//! permissions cannot refuse: requests a system *may* make (pull, ack, `+NXT` on its own
//! consumer, a schema read) whose reply subject names a stream's purge or delete, another
//! consumer, an event subject, a schema's key, a dead-letter advisory or someone else's inbox;
//! the answers must stay in the
//! attacker's own account. Then the positive side: each system can do its whole job (pull, ack,
//! nak, in progress, terminate, next, live, read schemas), with v1 and v2 ack subjects; the
//! reserved names and
//! exposed seeds are refused; one seed rotates alone.
//!
//! It stays one file of about 1,100 lines: the probes, the world they run in and the positive side
//! are one argument, read together; most of it is the list of what a hostile client tries.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, AckKind};
use futures::StreamExt;
use mes_events::provision::auth;

use crate::support::raw::Raw;
use crate::support::*;

const STREAMS: &str = r#"
[[stream]]
name = "MES_EVENTS"
subjects = ["mes.*.*.*.*.processorder.>", "mes.*.*.*.*.document.>", "mes.*.*.*.*.stock.>"]

[[stream]]
name = "MES_PV"
subjects = ["mes.*.*.*.*.processvariable.>"]

[[stream]]
name = "MES_DEAD_LETTERS"
subjects = [
  "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.MES_EVENTS.>",
  "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.MES_PV.>",
  "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.MES_EVENTS.>",
  "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.MES_PV.>",
]
"#;

// Long ack waits: nothing is redelivered by itself while the test runs, so any change in a
// victim's counters is the attacker's doing. max_deliver = 2: one stolen redelivery would be
// enough to dead-letter a victim's event.
const ERP: &str = r#"
[system]
name = "erp"
[[consumer]]
stream = "MES_EVENTS"
filter_subjects = ["mes.*.*.*.*.processorder.>"]
ack_wait = "10m"
max_deliver = 2
"#;

const QUALITY: &str = r#"
[system]
name = "quality"
[[consumer]]
stream = "MES_EVENTS"
filter_subjects = ["mes.*.*.*.*.document.>"]
ack_wait = "10m"
max_deliver = 2
"#;

const SCADA: &str = r#"
[system]
name = "scada-dashboard"
live = ["mes.bsl.gran.line2.>"]
[[consumer]]
stream = "MES_EVENTS"
filter_subjects = ["mes.bsl.gran.line2.>"]
ack_wait = "10m"
max_deliver = 2
[[consumer]]
stream = "MES_PV"
name = "scada-dashboard-pv"
filter_subjects = ["mes.bsl.gran.line2.>"]
ack_wait = "10m"
max_deliver = 2
"#;

const SYSTEMS: [&str; 3] = ["erp", "quality", "scada-dashboard"];
const EVENT_STREAMS: [&str; 2] = ["MES_EVENTS", "MES_PV"];
/// Every stream on the server, the schema bucket's (written by `provision apply`) included.
const ALL_STREAMS: [&str; 4] = ["MES_EVENTS", "MES_PV", "MES_DEAD_LETTERS", "KV_MES_SCHEMAS"];
/// A schema every system may read from the bucket, and nobody but the admin may write.
const SCHEMA_KEY: &str = "processorder/statuschanged.v1.0.json";

/// The read of the schema bucket every system may make.
fn schema_read(key: &str) -> String {
    format!("$JS.API.DIRECT.GET.KV_MES_SCHEMAS.$KV.MES_SCHEMAS.{key}")
}

/// (owner, stream, durable) of every declared consumer.
const CONSUMERS: [(&str, &str, &str); 4] = [
    ("erp", "MES_EVENTS", "erp"),
    ("quality", "MES_EVENTS", "quality"),
    ("scada-dashboard", "MES_EVENTS", "scada-dashboard"),
    ("scada-dashboard", "MES_PV", "scada-dashboard-pv"),
];

fn mes_events(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mes-events"));
    c.args(args).current_dir(std::env::temp_dir());
    c
}

fn credentials(decl: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut c = mes_events(&["provision", "credentials", "--dir"]);
    c.arg(decl).arg("--out").arg(out).args(extra);
    c.output().unwrap()
}

/// A server loaded with the generated authorization, provisioned by the admin through the CLI.
struct World {
    _decl: tempfile::TempDir,
    creds: tempfile::TempDir,
    nats: NatsServer,
    url: String,
}

impl World {
    async fn new(extra_server_config: &str) -> World {
        let decl = decl_dir(&[
            ("streams.toml", STREAMS),
            ("systems/erp.toml", ERP),
            ("systems/quality.toml", QUALITY),
            ("systems/scada-dashboard.toml", SCADA),
        ]);
        let creds = tempfile::tempdir().unwrap();
        let o = credentials(decl.path(), creds.path(), &[]);
        assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
        let auth = std::fs::read_to_string(creds.path().join("auth.conf")).unwrap();
        let nats = NatsServer::start_with_config(&format!("{auth}\n{extra_server_config}")).await;
        let url = nats.url();
        // The admin provisions with its own seed, and so its own inbox prefix.
        let o = mes_events(&["provision", "apply", "--dir"])
            .arg(decl.path())
            .env("MES_EVENTS_NATS__URL", &url)
            .env("MES_EVENTS_NATS__NKEY", creds.path().join("admin.nk"))
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
        World {
            _decl: decl,
            creds,
            nats,
            url,
        }
    }

    fn seed_path(&self, who: &str) -> std::path::PathBuf {
        self.creds.path().join(format!("{who}.nk"))
    }

    fn seed(&self, who: &str) -> String {
        std::fs::read_to_string(self.seed_path(who))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// A client connected as `who` the way mes-events itself connects (inbox prefix from the
    /// seed file's identity).
    async fn client(&self, who: &str) -> async_nats::Client {
        let mut cfg = mes_events::config::Config::default().nats;
        cfg.url = self.url.clone();
        cfg.nkey = Some(self.seed_path(who));
        cfg.request_timeout = Duration::from_secs(3);
        mes_events::nats::connect(&cfg, "permissions test", false)
            .await
            .unwrap()
    }

    async fn js(&self, who: &str) -> jetstream::Context {
        jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(3))
            .build(self.client(who).await)
    }

    async fn raw(&self, who: &str) -> Raw {
        Raw::connect(&self.url, &self.seed(who)).await
    }

    /// Events for every consumer, published by the relay's identity.
    async fn publish_events(&self, n: usize) {
        self.publish_events_with(n, "{}").await
    }

    /// The same with another body: an empty one is also a valid `+ACK` should it ever be
    /// delivered to an ack subject, and an empty purge or delete request.
    async fn publish_events_with(&self, n: usize, body: &'static str) {
        let js = self.js(auth::RELAY).await;
        for i in 0..n {
            for subject in [
                format!("mes.bsl.gran.line1._.processorder.statuschanged.v1.o{i}"),
                format!("mes.bsl.qa._._.document.statuschanged.v1.d{i}"),
                format!("mes.bsl.gran.line2._.stock.moved.v1.l{i}"),
                format!("mes.bsl.gran.line2.dryer1.processvariable.changed.v1.pv{i}"),
            ] {
                // A header, so that an empty body is still a message to every client.
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("ce-specversion", "1.0");
                js.publish_with_headers(subject, headers, body.into())
                    .await
                    .unwrap()
                    .await
                    .expect("the relay publishes events");
            }
        }
    }
}

/// What a consumer's state is, as far as an attacker could change it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct State {
    delivered: (u64, u64),
    ack_floor: (u64, u64),
    ack_pending: usize,
    redelivered: usize,
    waiting: usize,
    pending: u64,
}

async fn states(js: &jetstream::Context) -> BTreeMap<String, State> {
    let mut out = BTreeMap::new();
    for (_, stream, name) in CONSUMERS {
        let info = js
            .get_stream(stream)
            .await
            .unwrap()
            .consumer_info(name)
            .await
            .unwrap();
        out.insert(
            format!("{stream}/{name}"),
            State {
                delivered: (
                    info.delivered.consumer_sequence,
                    info.delivered.stream_sequence,
                ),
                ack_floor: (
                    info.ack_floor.consumer_sequence,
                    info.ack_floor.stream_sequence,
                ),
                ack_pending: info.num_ack_pending,
                redelivered: info.num_redelivered,
                waiting: info.num_waiting,
                pending: info.num_pending,
            },
        );
    }
    out
}

/// Each stream's (first sequence, last sequence, messages), or why it cannot be read (deleted):
/// a forged event moves the last, a purge the first, a deletion the whole.
async fn stream_tails(
    js: &jetstream::Context,
) -> BTreeMap<&'static str, Result<(u64, u64, u64), String>> {
    let mut out = BTreeMap::new();
    for s in ALL_STREAMS {
        let state = match js.get_stream(s).await {
            Ok(mut stream) => match stream.info().await {
                Ok(i) => Ok((
                    i.state.first_sequence,
                    i.state.last_sequence,
                    i.state.messages,
                )),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.to_string()),
        };
        out.insert(s, state);
    }
    out
}

/// The owner takes `n` messages of its consumer without acking them; their reply subjects are
/// the real ack subjects an attacker would most like to use.
async fn take_unacked(w: &World, owner: &str, stream: &str, name: &str, n: usize) -> Vec<String> {
    let js = w.js(owner).await;
    let c = mes_events::consume::bind_by_name(&js, stream, name);
    let mut batch = c
        .fetch()
        .max_messages(n)
        .expires(Duration::from_secs(3))
        .messages()
        .await
        .unwrap();
    let mut replies = Vec::new();
    while let Some(m) = batch.next().await {
        let m = m.unwrap();
        replies.push(m.reply.as_ref().expect("an ack subject").to_string());
    }
    assert_eq!(replies.len(), n, "{owner} takes {n} messages of {name}");
    replies
}

#[derive(Debug, Clone)]
enum Probe {
    Publish {
        subject: String,
        payload: String,
        headers: Option<String>,
    },
    Subscribe {
        subject: String,
        queue: Option<String>,
    },
}

fn publish(subject: impl Into<String>, payload: &str) -> Probe {
    Probe::Publish {
        subject: subject.into(),
        payload: payload.into(),
        headers: None,
    }
}

fn subscribe(subject: impl Into<String>) -> Probe {
    Probe::Subscribe {
        subject: subject.into(),
        queue: None,
    }
}

/// Every ack payload the server knows (`+ACK` and empty, `-NAK` with and without delay, `+WPI`,
/// `+TERM` with a reason, `+NXT` with a count and with a pull request).
const ACK_KINDS: [&str; 9] = [
    "+ACK",
    "",
    "-NAK",
    "-NAK {\"delay\":1}",
    "+WPI",
    "+TERM",
    "+TERM stolen",
    "+NXT 3",
    "+NXT {\"batch\":3,\"expires\":1000000000}",
];

/// Everything one might try against another identity's consumer `name` on `stream`, given
/// `replies` (real ack subjects of its unacked messages) and the attacker's own consumers.
fn against_consumer(
    stream: &str,
    name: &str,
    replies: &[String],
    mine: &[(&str, &str)],
) -> Vec<Probe> {
    let hash = auth::account_hash(auth::JETSTREAM_ACCOUNT);
    let mut v = Vec::new();
    let config = format!(
        "{{\"stream_name\":\"{stream}\",\"config\":{{\"durable_name\":\"{name}\",\"ack_policy\":\"explicit\",\"deliver_policy\":\"all\"}},\"action\":\"update\"}}"
    );
    for verb in [
        "CREATE",
        "DURABLE.CREATE",
        "DELETE",
        "PAUSE",
        "RESET",
        "UNPIN",
        "INFO",
        "MSG.NEXT",
        "LEADER.STEPDOWN",
    ] {
        v.push(publish(
            format!("$JS.API.CONSUMER.{verb}.{stream}.{name}"),
            &config,
        ));
    }
    v.push(publish(
        format!("$JS.API.CONSUMER.CREATE.{stream}.{name}.mes.>"),
        &config,
    ));
    v.push(publish(
        format!("$JS.API.CONSUMER.CREATE.{stream}"),
        &config,
    ));
    v.push(publish(
        format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}"),
        "{\"batch\":3,\"expires\":1000000000}",
    ));
    let mut ack_subjects: Vec<String> = replies.to_vec();
    ack_subjects.extend([
        // v1, 9 tokens, as the server writes them.
        format!("$JS.ACK.{stream}.{name}.1.1.1.0.0"),
        // v2, 11 tokens as written, 12 with the random token of ADR-15, 13 as an extension.
        format!("$JS.ACK._.{hash}.{stream}.{name}.1.1.1.0.0"),
        format!("$JS.ACK._.{hash}.{stream}.{name}.1.1.1.0.0.r4nd0m"),
        format!("$JS.ACK._.{hash}.{stream}.{name}.1.1.1.0.0.x.y"),
        format!("$JS.ACK.dom.acc.{stream}.{name}.1.1.1.0.0"),
        // Malformed: short, long, wildcards as literals.
        format!("$JS.ACK.{stream}.{name}"),
        format!("$JS.ACK.{stream}.{name}.1"),
        format!("$JS.ACK.{stream}.{name}.1.1.1.0.0.0"),
        format!("$JS.ACK.{stream}.{name}.*.*.*.*.*"),
        format!("$JS.ACK.{stream}.{name}.>"),
        format!("$JS.ACK.{stream}.*.1.1.1.0.0"),
        format!("$JS.ACK.*.{name}.1.1.1.0.0"),
        "$JS.ACK.>".into(),
    ]);
    for (my_stream, my_name) in mine {
        // The victim in the v1 position, the attacker's own consumer where v2 names it: the
        // subject that stole events when grants left those tokens free.
        ack_subjects.push(format!(
            "$JS.ACK.{stream}.{name}.{my_stream}.{my_name}.1.1.1"
        ));
        ack_subjects.push(format!(
            "$JS.ACK.{stream}.{name}.{my_stream}.{my_name}.1.1.1.0.0"
        ));
        ack_subjects.push(format!(
            "$JS.ACK.{my_stream}.{my_name}.{stream}.{name}.1.1.1.0.0"
        ));
    }
    for s in &ack_subjects {
        for kind in ACK_KINDS {
            v.push(publish(s.clone(), kind));
        }
    }
    // Flow control and heartbeat answers (push consumers), and forged dead-letter advisories.
    for s in [
        format!("$JS.FC.{stream}.{name}.1"),
        format!("$JS.FC._.{hash}.{stream}.{name}.1"),
    ] {
        v.push(publish(s, ""));
    }
    let advisory = format!(
        "{{\"type\":\"io.nats.jetstream.advisory.v1.max_deliver\",\"stream\":\"{stream}\",\"consumer\":\"{name}\",\"stream_seq\":1,\"deliveries\":2}}"
    );
    v.push(publish(
        format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{name}"),
        &advisory,
    ));
    v.push(publish(
        format!("$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.{stream}.{name}"),
        &advisory,
    ));
    // Forged events on the subject only this consumer's filter takes (how `dead-letters resend`
    // sends an event back to one consumer).
    v.push(publish(
        format!("mes-redeliver.{stream}.{name}.mes.bsl.qa._._.document.statuschanged.v1.forged"),
        "{}",
    ));
    // Watching its acks and pull requests go by.
    v.push(subscribe(format!("$JS.ACK.{stream}.{name}.>")));
    v.push(subscribe(format!(
        "$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}"
    )));
    v
}

/// Everything of the stream API, except the `allowed` verbs.
fn against_stream(stream: &str, allowed: &[&str]) -> Vec<Probe> {
    let mut v = Vec::new();
    for (verb, payload) in [
        ("INFO", "{}"),
        ("MSG.GET", "{\"seq\":1}"),
        ("MSG.DELETE", "{\"seq\":1}"),
        ("PURGE", "{}"),
        ("DELETE", ""),
        ("UPDATE", "{\"name\":\"x\",\"subjects\":[\">\"]}"),
        ("CREATE", "{\"name\":\"x\",\"subjects\":[\">\"]}"),
        ("SNAPSHOT", "{\"deliver_subject\":\"x\"}"),
        ("RESTORE", "{}"),
        ("LEADER.STEPDOWN", ""),
        ("PEER.REMOVE", "{\"peer\":\"x\"}"),
    ] {
        if !allowed.contains(&verb) {
            v.push(publish(format!("$JS.API.STREAM.{verb}.{stream}"), payload));
        }
    }
    v.push(publish(
        format!("$JS.API.DIRECT.GET.{stream}"),
        "{\"seq\":1}",
    ));
    v.push(publish(
        format!("$JS.API.DIRECT.GET.{stream}.mes.bsl.qa._._.document.statuschanged.v1.d0"),
        "",
    ));
    v.push(publish(format!("$JS.API.CONSUMER.LIST.{stream}"), "{}"));
    v.push(publish(format!("$JS.API.CONSUMER.NAMES.{stream}"), "{}"));
    v
}

/// What nobody but the admin may touch: the account, the server, the system account, other
/// identities' inboxes, every advisory.
fn against_everything_else(me: &str) -> Vec<Probe> {
    let mut v = vec![
        publish("$JS.API.INFO", ""),
        publish("$JS.API.STREAM.LIST", "{}"),
        publish("$JS.API.STREAM.NAMES", "{}"),
        publish("$JS.API.ACCOUNT.PURGE.$G", ""),
        publish("$JS.API.SERVER.REMOVE", "{}"),
        publish("$JS.API.META.LEADER.STEPDOWN", ""),
        publish("$SYS.REQ.SERVER.PING", ""),
        publish("$SYS.REQ.ACCOUNT.$G.CONNZ", "{}"),
        publish("$KV.x.y", ""),
        // Writing the schema bucket: a key, with a rollup, or a key-value client's delete.
        publish(
            format!("$KV.MES_SCHEMAS.{SCHEMA_KEY}"),
            "{\"type\":\"object\"}",
        ),
        Probe::Publish {
            subject: format!("$KV.MES_SCHEMAS.{SCHEMA_KEY}"),
            payload: "{}".into(),
            headers: Some("Nats-Rollup: sub".into()),
        },
        Probe::Publish {
            subject: "$KV.MES_SCHEMAS.catalog.json".into(),
            payload: String::new(),
            headers: Some("KV-Operation: PURGE".into()),
        },
        subscribe("$KV.MES_SCHEMAS.>"),
        publish("_INBOX.x", ""),
        subscribe(">"),
        subscribe("*.>"),
        subscribe("$JS.>"),
        subscribe("$JS.API.>"),
        subscribe("$JS.ACK.>"),
        subscribe("$JS.FC.>"),
        subscribe("$JS.EVENT.>"),
        subscribe("$JS.EVENT.ADVISORY.>"),
        subscribe("$SYS.>"),
        subscribe("_INBOX.>"),
        subscribe("_INBOX.*"),
        subscribe("mes.>"),
        Probe::Subscribe {
            subject: "_INBOX.>".into(),
            queue: Some("q".into()),
        },
    ];
    for other in [auth::ADMIN, auth::RELAY]
        .into_iter()
        .chain(SYSTEMS)
        .filter(|o| *o != me)
    {
        let inbox = auth::inbox_prefix(other);
        v.push(publish(format!("{inbox}.x"), "{}"));
        v.push(subscribe(format!("{inbox}.>")));
        v.push(subscribe(format!("{inbox}.*")));
        v.push(Probe::Subscribe {
            subject: format!("{inbox}.>"),
            queue: Some("q".into()),
        });
    }
    v
}

/// Runs every probe as `me`; returns what was not refused.
async fn attack(w: &World, me: &str, probes: &[Probe]) -> Vec<String> {
    let mut raw = w.raw(me).await;
    let inbox = auth::inbox_prefix(me);
    let (_, a) = raw.subscribe(&format!("{inbox}.>"), None).await;
    assert!(a.errors.is_empty(), "{me} may read its own inbox: {a:?}");
    let reply = format!("{inbox}.loot");
    let mut failures = Vec::new();
    for p in probes {
        match p {
            Probe::Publish {
                subject,
                payload,
                headers,
            } => {
                let a = raw
                    .publish(
                        subject,
                        Some(&reply),
                        headers.as_deref(),
                        payload.as_bytes(),
                    )
                    .await;
                if !a.publish_refused(subject) || !a.delivered.is_empty() {
                    failures.push(format!(
                        "{me}: publish {subject:?} {payload:?} was not refused: {a:?}"
                    ));
                }
            }
            Probe::Subscribe { subject, queue } => {
                let (sid, a) = raw.subscribe(subject, queue.as_deref()).await;
                if !a.subscribe_refused(subject) {
                    failures.push(format!(
                        "{me}: subscribe {subject:?} (queue {queue:?}) was not refused: {a:?}"
                    ));
                }
                raw.unsubscribe(sid).await;
            }
        }
    }
    // Whatever slipped through would be answered by now; nothing may have come.
    let late = raw.ping().await;
    if !late.delivered.is_empty() {
        failures.push(format!("{me}: late deliveries {:?}", late.delivered));
    }
    failures
}

#[tokio::test]
async fn hostile_identities_are_refused_the_whole_jetstream_surface_and_victims_do_not_move() {
    let w = World::new("").await;
    w.publish_events(4).await;
    let mut replies = BTreeMap::new();
    for (owner, stream, name) in CONSUMERS {
        replies.insert(name, take_unacked(&w, owner, stream, name, 2).await);
    }
    let admin = w.js(auth::ADMIN).await;
    let before = states(&admin).await;
    let tails = stream_tails(&admin).await;
    for s in before.values() {
        assert_eq!(s.ack_pending, 2, "{before:?}");
    }

    let mut failures = Vec::new();
    let mut tried = 0;
    for me in SYSTEMS {
        let mine: Vec<(&str, &str)> = CONSUMERS
            .iter()
            .filter(|(o, _, _)| *o == me)
            .map(|(_, s, n)| (*s, *n))
            .collect();
        let mut probes = Vec::new();
        for (owner, stream, name) in CONSUMERS {
            if owner != me {
                probes.extend(against_consumer(stream, name, &replies[name], &mine));
            }
        }
        for s in ALL_STREAMS {
            probes.extend(against_stream(s, &[]));
        }
        probes.extend(against_everything_else(me));
        // Publishing events is the relay's alone.
        for subject in [
            "mes.bsl.gran.line1._.processorder.statuschanged.v1.forged",
            "mes.bsl.gran.line2.dryer1.processvariable.changed.v1.forged",
        ] {
            probes.push(publish(subject, "{}"));
            probes.push(Probe::Publish {
                subject: subject.into(),
                payload: "{}".into(),
                headers: Some("Nats-Msg-Id: /mes/test/bsl#forged\r\nce-type: x".into()),
            });
        }
        tried += probes.len();
        failures.extend(attack(&w, me, &probes).await);
    }
    // The relay: everything but publishing events and reading its own streams.
    let mut probes = Vec::new();
    for (_, stream, name) in CONSUMERS {
        probes.extend(against_consumer(stream, name, &replies[name], &[]));
    }
    for s in ALL_STREAMS {
        let allowed: &[&str] = if EVENT_STREAMS.contains(&s) {
            &["INFO", "MSG.GET"]
        } else {
            &[]
        };
        probes.extend(against_stream(s, allowed));
    }
    probes.extend(against_everything_else(auth::RELAY));
    tried += probes.len();
    failures.extend(attack(&w, auth::RELAY, &probes).await);

    assert!(
        failures.is_empty(),
        "{} of {tried} attempts were not refused:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(
        states(&admin).await,
        before,
        "a victim's consumer moved under attack"
    );
    assert_eq!(
        stream_tails(&admin).await,
        tails,
        "an attacker wrote into a stream (events or forged dead letters)"
    );

    // The probes have teeth: the same theft subject, sent by an identity allowed to publish it
    // (the admin), does hand quality's events to the sender on this server.
    let mut raw = w.raw(auth::ADMIN).await;
    raw.subscribe("_INBOX_admin.>", None).await;
    let a = raw
        .publish(
            "$JS.ACK.MES_EVENTS.quality.MES_EVENTS.erp.1.1.1",
            Some("_INBOX_admin.loot"),
            None,
            b"+NXT {\"batch\":1}",
        )
        .await;
    assert!(a.errors.is_empty(), "{a:?}");
    let mut got = a;
    if got.delivered.is_empty() {
        got = raw.wait_for_delivery(Duration::from_secs(5)).await;
    }
    assert!(
        got.delivered
            .iter()
            .any(|d| d.subject.contains(".document.") && d.payload == b"{}"),
        "the theft subject no longer reaches quality's consumer on this server, so the probes \
         above prove less than they claim: {got:?}"
    );
}

/// Where an attacker would like JetStream to send the answer to a request it may make: every
/// stream's purge, delete and update, the other systems' consumers (API verbs and real ack
/// subjects of their unacked messages, on which an empty answer is an `+ACK`), forged events,
/// redeliveries and dead-letter advisories, and everyone else's inbox.
fn reply_targets(me: &str, replies: &BTreeMap<&str, Vec<String>>) -> Vec<String> {
    let mut v = Vec::new();
    for s in ALL_STREAMS {
        for verb in ["PURGE", "DELETE", "MSG.DELETE", "UPDATE", "LEADER.STEPDOWN"] {
            v.push(format!("$JS.API.STREAM.{verb}.{s}"));
        }
    }
    for (_, stream, name) in CONSUMERS.iter().filter(|(o, _, _)| *o != me) {
        for verb in ["DELETE", "PAUSE", "RESET", "LEADER.STEPDOWN"] {
            v.push(format!("$JS.API.CONSUMER.{verb}.{stream}.{name}"));
        }
        v.extend(replies[name].iter().cloned());
        v.push(format!("$JS.ACK.{stream}.{name}.1.1.1.0.0"));
        v.push(format!(
            "mes-redeliver.{stream}.{name}.mes.bsl.qa._._.document.statuschanged.v1.forged"
        ));
        for advisory in ["MAX_DELIVERIES", "MSG_TERMINATED"] {
            v.push(format!(
                "$JS.EVENT.ADVISORY.CONSUMER.{advisory}.{stream}.{name}"
            ));
        }
    }
    v.push("mes.bsl.gran.line1._.processorder.statuschanged.v1.forged".into());
    v.push("mes.bsl.gran.line2.dryer1.processvariable.changed.v1.forged".into());
    // A schema overwritten by an answer (a pulled event, a schema read) stored at its key.
    v.push(format!("$KV.MES_SCHEMAS.{SCHEMA_KEY}"));
    for other in [auth::ADMIN, auth::RELAY]
        .into_iter()
        .chain(SYSTEMS)
        .filter(|o| *o != me)
    {
        v.push(format!("{}.loot", auth::inbox_prefix(other)));
    }
    v.push("_INBOX.loot".into());
    v
}

/// Consumers' states, leaving out those of `me`.
async fn others_states(js: &jetstream::Context, me: &str) -> BTreeMap<String, State> {
    let mine: Vec<String> = CONSUMERS
        .iter()
        .filter(|(o, _, _)| *o == me)
        .map(|(_, s, n)| format!("{s}/{n}"))
        .collect();
    let mut all = states(js).await;
    all.retain(|k, _| !mine.contains(k));
    all
}

#[tokio::test]
async fn answers_to_allowed_requests_cannot_be_aimed_at_others_streams_consumers_or_inboxes() {
    let w = World::new("").await;
    w.publish_events(4).await;
    let mut replies = BTreeMap::new();
    for (owner, stream, name) in CONSUMERS {
        replies.insert(name, take_unacked(&w, owner, stream, name, 2).await);
    }
    // Plenty for the attackers' own pulls, with empty bodies: should one of them be delivered
    // to a victim's ack subject it would ack there, and to a purge it would purge everything.
    w.publish_events_with(40, "").await;
    let admin = w.js(auth::ADMIN).await;

    // Everyone else listens where the attackers aim in their inbox (and the admin on the
    // default inbox): nothing of the attackers' answers may arrive there.
    let mut watchers = Vec::new();
    for who in [auth::ADMIN, auth::RELAY].into_iter().chain(SYSTEMS) {
        let mut raw = w.raw(who).await;
        let (_, a) = raw
            .subscribe(&format!("{}.loot", auth::inbox_prefix(who)), None)
            .await;
        assert!(a.errors.is_empty(), "{who}: {a:?}");
        if who == auth::ADMIN {
            raw.subscribe("_INBOX.>", None).await;
        }
        watchers.push((who, raw));
    }

    let mut failures = Vec::new();
    let mut tried = 0;
    for me in SYSTEMS {
        let before = others_states(&admin, me).await;
        let tails = stream_tails(&admin).await;
        let mut raw = w.raw(me).await;
        let inbox = auth::inbox_prefix(me);
        raw.subscribe(&format!("{inbox}.>"), None).await;
        for (owner, stream, name) in CONSUMERS {
            if owner != me {
                continue;
            }
            let targets = reply_targets(me, &replies);
            // Its own unacked messages, whose ack subjects it may publish on.
            let own = take_unacked(&w, me, stream, name, 2 * targets.len().min(10)).await;
            let mut own = own.into_iter().cycle();
            let read = schema_read("common.v1.0.json");
            for target in &targets {
                let next = format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}");
                let ack = own.next().unwrap();
                for (subject, body) in [
                    (read.as_str(), ""),
                    (auth::WHO_AM_I, ""),
                    (next.as_str(), "{\"batch\":1,\"no_wait\":true}"),
                    (next.as_str(), "{\"batch\":1,\"expires\":100000000}"),
                    (ack.as_str(), "+NXT {\"batch\":1,\"no_wait\":true}"),
                    (ack.as_str(), "+WPI"),
                    (ack.as_str(), "+ACK"),
                ] {
                    tried += 1;
                    let a = raw
                        .publish(subject, Some(target), None, body.as_bytes())
                        .await;
                    // The server itself refuses ack subjects as replies (2.10.? on, `isReservedReply`):
                    // that is a refusal too. Anything else must have been let through.
                    let reserved = |e: &String| e.contains("Publish with Reply of \"$JS.ACK.");
                    if !a.errors.iter().all(reserved) {
                        failures.push(format!("{me}: its own {subject} {body} was refused: {a:?}"));
                    }
                }
            }
        }
        // Let every answer (the 100 ms pull expiries included) arrive wherever it goes.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for (who, watcher) in &mut watchers {
            let got = watcher.ping().await;
            for d in &got.delivered {
                failures.push(format!(
                    "{me}'s answer reached {who} on {}: {}",
                    d.subject,
                    String::from_utf8_lossy(&d.payload)
                ));
            }
        }
        let after = others_states(&admin, me).await;
        if after != before {
            failures.push(format!(
                "{me} moved others' consumers:\nbefore {before:?}\nafter  {after:?}"
            ));
        }
        let tails_after = stream_tails(&admin).await;
        if tails_after != tails {
            failures.push(format!(
                "{me} changed a stream:\nbefore {tails:?}\nafter  {tails_after:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failure(s) in {tried} requests:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // The relay shares the JetStream account: its answers stay there. What it may ask for (a
    // publish, a stream's info, a message) is answered by the server's own clients, which the
    // JetStream API does not take requests from, so they can neither purge, delete nor touch
    // a consumer; `$JS.ACK` replies are refused by the server itself. What remains is written in
    // docs/design.md: its answers can reach subjects of its account (inboxes, advisories).
    let before = states(&admin).await;
    let tails = stream_tails(&admin).await;
    let mut raw = w.raw(auth::RELAY).await;
    let mut relay_failures = Vec::new();
    for target in reply_targets(auth::RELAY, &replies) {
        if target.starts_with("mes.")
            || target.starts_with("mes-redeliver.")
            || target.starts_with("$KV.")
            || target.starts_with("$JS.EVENT.")
            || target.starts_with("_INBOX")
        {
            continue; // writable by design (events) or the stated limit (advisories, inboxes, the
                      // schema bucket: the relay's seed is as sensitive as the admin's)
        }
        for (subject, body) in [
            ("mes.bsl.gran.line1._.stock.moved.v1.relay", "{}"),
            ("$JS.API.STREAM.INFO.MES_EVENTS", ""),
            ("$JS.API.STREAM.MSG.GET.MES_PV", "{\"seq\":1}"),
        ] {
            let a = raw
                .publish(subject, Some(&target), None, body.as_bytes())
                .await;
            if !a
                .errors
                .iter()
                .all(|e| e.contains("Publish with Reply of \"$JS.ACK."))
            {
                relay_failures.push(format!("relay: {subject} refused: {a:?}"));
            }
        }
    }
    raw.ping().await;
    assert!(relay_failures.is_empty(), "{relay_failures:?}");
    assert_eq!(
        states(&admin).await,
        before,
        "the relay's answers moved a consumer"
    );
    let after = stream_tails(&admin).await;
    for s in ["MES_PV", "MES_DEAD_LETTERS", "KV_MES_SCHEMAS"] {
        assert_eq!(after[s], tails[s], "the relay's answers changed {s}");
    }
    let (Ok(b), Ok(a)) = (&tails["MES_EVENTS"], &after["MES_EVENTS"]) else {
        panic!("MES_EVENTS unreadable: {after:?}");
    };
    assert_eq!(a.0, b.0, "MES_EVENTS purged");

    // The trick has teeth inside one account: the admin's pull on erp's consumer, answered to a
    // scratch stream's delete subject, deletes that stream on this server (a consumer's
    // deliveries carry the puller's identity, so the API takes them as requests).
    admin
        .create_stream(jetstream::stream::Config {
            name: "TEETH".into(),
            subjects: vec!["teeth.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let mut raw = w.raw(auth::ADMIN).await;
    let a = raw
        .publish(
            "$JS.API.CONSUMER.MSG.NEXT.MES_EVENTS.erp",
            Some("$JS.API.STREAM.DELETE.TEETH"),
            None,
            b"{\"batch\":1,\"no_wait\":true}",
        )
        .await;
    assert!(a.errors.is_empty(), "{a:?}");
    eventually(
        Duration::from_secs(5),
        "the scratch stream deleted by a reply",
        || {
            let admin = admin.clone();
            async move { admin.get_stream("TEETH").await.is_err() }
        },
    )
    .await;
}

/// One system's whole job on its own consumer: info, pull, ack, in progress, nak (redelivered),
/// terminate, and `+NXT` on its own ack subject. Returns the ack subjects it saw.
async fn do_the_job(w: &World, owner: &str, stream: &str, name: &str) -> Vec<String> {
    let js = w.js(owner).await;
    // From its own account a system binds by name: the JetStream API (consumer info included)
    // is not there, only its consumer's pulls and acks are.
    let c = mes_events::consume::bind_by_name(&js, stream, name);
    let refused = js
        .get_consumer_from_stream::<consumer::pull::Config, _, _>(name, stream)
        .await;
    assert!(
        refused.is_err(),
        "{owner} read its consumer's info: {refused:?}"
    );
    let fetch = |n: usize| {
        let c = c.clone();
        async move {
            let mut b = c
                .fetch()
                .max_messages(n)
                .expires(Duration::from_secs(3))
                .messages()
                .await
                .unwrap();
            let mut out = Vec::new();
            while let Some(m) = b.next().await {
                out.push(m.unwrap());
            }
            out
        }
    };
    let first = fetch(3).await;
    assert_eq!(first.len(), 3, "{owner} pulls from {name}");
    let subjects: Vec<String> = first
        .iter()
        .map(|m| m.reply.as_ref().unwrap().to_string())
        .collect();
    first[0].double_ack().await.expect("ack");
    first[1]
        .double_ack_with(AckKind::Progress)
        .await
        .expect("in progress");
    first[1].double_ack().await.expect("ack after in progress");
    first[2]
        .double_ack_with(AckKind::Nak(None))
        .await
        .expect("nak");
    // The nak'ed message comes again, then is terminated.
    let again = fetch(1).await;
    assert_eq!(again.len(), 1);
    assert_eq!(
        again[0].info().unwrap().delivered,
        2,
        "{owner}: redelivered"
    );
    again[0]
        .double_ack_with(AckKind::Term)
        .await
        .expect("terminate");
    // `+NXT` on its own ack subject: acks and asks for the next one in one go.
    let next = fetch(1).await;
    let mut raw = w.raw(owner).await;
    let inbox = auth::inbox_prefix(owner);
    raw.subscribe(&format!("{inbox}.>"), None).await;
    let a = raw
        .publish(
            next[0].reply.as_ref().unwrap(),
            Some(&format!("{inbox}.next")),
            None,
            b"+NXT {\"batch\":1}",
        )
        .await;
    assert!(
        a.errors.is_empty(),
        "{owner}: +NXT on its own ack subject: {a:?}"
    );
    let mut got = a;
    if got.delivered.is_empty() {
        got = raw.wait_for_delivery(Duration::from_secs(5)).await;
    }
    assert_eq!(got.delivered.len(), 1, "{owner}: +NXT delivers: {got:?}");
    let r = got.delivered[0].reply.clone().unwrap();
    raw.publish(&r, None, None, b"+ACK").await;
    let admin = w.js(auth::ADMIN).await;
    eventually(Duration::from_secs(5), "every ack recorded", || {
        let admin = admin.clone();
        async move {
            let mut c: consumer::PullConsumer =
                admin.get_consumer_from_stream(name, stream).await.unwrap();
            c.info().await.unwrap().num_ack_pending == 0
        }
    })
    .await;
    subjects
}

#[tokio::test]
async fn every_system_does_its_whole_job_with_v1_and_v2_ack_subjects_and_watches_live() {
    for (flags, tokens) in [("", 9), ("feature_flags { js_ack_fc_v2: true }", 11)] {
        let w = World::new(flags).await;
        w.publish_events(6).await;
        for (owner, stream, name) in CONSUMERS {
            let subjects = do_the_job(&w, owner, stream, name).await;
            for s in subjects {
                assert_eq!(s.split('.').count(), tokens, "{s}");
                if tokens == 11 {
                    assert!(
                        s.starts_with(&format!(
                            "$JS.ACK._.{}.",
                            auth::account_hash(auth::JETSTREAM_ACCOUNT)
                        )),
                        "v2 ack subject names the account by the hash the grants pin: {s}"
                    );
                }
            }
        }
        // Live: the dashboard watches its line as events are published.
        let dash = w.client("scada-dashboard").await;
        let mut live = dash.subscribe("mes.bsl.gran.line2.>").await.unwrap();
        dash.flush().await.unwrap();
        w.publish_events(1).await;
        let m = tokio::time::timeout(Duration::from_secs(5), live.next())
            .await
            .expect("a live event within 5 s")
            .unwrap();
        assert!(m.subject.starts_with("mes.bsl.gran.line2."));
        // Every system reads the catalog's schemas from the bucket, by the path `dataschema`
        // names, from its own account.
        for who in SYSTEMS {
            let m = w
                .client(who)
                .await
                .request(schema_read(SCHEMA_KEY), "".into())
                .await
                .unwrap_or_else(|e| panic!("{who} reads a schema: {e}"));
            let schema: serde_json::Value = serde_json::from_slice(&m.payload)
                .unwrap_or_else(|e| panic!("{who}: {e}: {:?}", m));
            assert_eq!(
                schema["$id"],
                format!("https://mesevents.io/schemas/{SCHEMA_KEY}"),
                "{who}"
            );
        }
        // The relay reads what it needs of its own streams.
        let relay = w.js(auth::RELAY).await;
        for s in EVENT_STREAMS {
            let stream = relay.get_stream(s).await.expect("relay: stream info");
            stream.get_raw_message(1).await.expect("relay: message get");
        }
    }
}

#[test]
fn reserved_and_unsafe_names_and_live_patterns_outside_the_events_are_refused() {
    for (file, body, expect, line) in [
        (
            "systems/admin.toml",
            "[system]\nname = \"admin\"\n",
            "reserved for mes-events' own admin identity",
            2,
        ),
        (
            "systems/relay.toml",
            "[system]\nname = \"Relay\"\n",
            "reserved for mes-events' own relay identity",
            2,
        ),
        (
            "systems/dots.toml",
            "[system]\nname = \"erp.prod\"\n",
            "\"erp.prod\" is not a safe name",
            2,
        ),
        (
            "systems/up.toml",
            "[system]\nname = \"../erp\"\n",
            "is not a safe name",
            2,
        ),
        (
            "systems/all.toml",
            "[system]\nname = \"greedy\"\nlive = [\">\"]\n",
            "would let this system subscribe outside the event subjects",
            3,
        ),
        (
            "systems/inbox.toml",
            "[system]\nname = \"snoop\"\nlive = [\"_INBOX_erp.>\"]\n",
            "would let this system subscribe outside the event subjects",
            3,
        ),
        (
            "systems/adv.toml",
            "[system]\nname = \"adv\"\nlive = [\"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.MES_EVENTS.>\"]\n",
            "would let this system subscribe outside the event subjects",
            3,
        ),
    ] {
        let d = decl_dir(&[("streams.toml", STREAMS), (file, body)]);
        let out = tempfile::tempdir().unwrap();
        let o = credentials(d.path(), out.path(), &[]);
        let t = output_text(&o);
        assert_eq!(o.status.code(), Some(2), "{t}");
        assert!(t.contains(expect), "{file}: {t}");
        assert!(t.contains(&format!("{file}:{line}:")), "names file and line: {t}");
        assert!(
            !out.path().join("auth.conf").exists(),
            "nothing written for {file}"
        );
    }
}

#[test]
fn system_names_differing_only_in_case_are_one_identity_and_refused() {
    let d = decl_dir(&[
        ("streams.toml", STREAMS),
        ("systems/erp.toml", ERP),
        (
            "systems/erp-upper.toml",
            &ERP.replace("name = \"erp\"", "name = \"ERP\""),
        ),
    ]);
    let out = tempfile::tempdir().unwrap();
    let o = credentials(d.path(), out.path(), &[]);
    let t = output_text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(t.contains("is declared in two files"), "{t}");
}

#[cfg(unix)]
#[test]
fn exposed_seeds_are_refused_and_one_identity_rotates_alone() {
    use std::os::unix::fs::PermissionsExt;
    let d = decl_dir(&[
        ("streams.toml", STREAMS),
        ("systems/erp.toml", ERP),
        ("systems/quality.toml", QUALITY),
    ]);
    let out = tempfile::tempdir().unwrap();
    let creds = out.path().join("creds");
    let o = credentials(d.path(), &creds, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&creds), 0o700, "the folder is private");
    let seeds = |names: &[&str]| -> Vec<String> {
        names
            .iter()
            .map(|n| std::fs::read_to_string(creds.join(format!("{n}.nk"))).unwrap())
            .collect()
    };
    let all = ["admin", "relay", "erp", "quality"];
    for n in all {
        assert_eq!(mode(&creds.join(format!("{n}.nk"))), 0o600, "{n}.nk");
    }
    let before = seeds(&all);
    let auth_before = std::fs::read_to_string(creds.join("auth.conf")).unwrap();

    // A seed someone else could have read is not reused.
    let erp = creds.join("erp.nk");
    std::fs::set_permissions(&erp, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = credentials(d.path(), &creds, &[]);
    let t = output_text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    for part in [
        erp.display().to_string(),
        "mode 0644".into(),
        "--rotate erp".into(),
        "chmod 600".into(),
        "nothing was written".into(),
    ] {
        assert!(t.contains(&part), "missing {part:?} in: {t}");
    }
    assert!(!t.contains(before[2].trim()), "a seed was printed: {t}");
    assert_eq!(seeds(&all), before);
    assert_eq!(
        std::fs::read_to_string(creds.join("auth.conf")).unwrap(),
        auth_before
    );

    // Rotating the exposed one replaces it alone, privately, keeping nothing of it: the
    // exposed seed is refused from the next reload.
    let o = credentials(d.path(), &creds, &["--rotate", "erp"]);
    let t = output_text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(
        t.contains("REPLACED") && t.contains("reload nats-server"),
        "{t}"
    );
    let after = seeds(&all);
    assert_ne!(after[2], before[2], "erp's seed is new");
    assert_eq!(
        [&after[0], &after[1], &after[3]],
        [&before[0], &before[1], &before[3]],
        "the others are untouched"
    );
    assert_eq!(mode(&erp), 0o600);
    let public = |seed: &str| nkeys::KeyPair::from_seed(seed.trim()).unwrap().public_key();
    let auth_after = std::fs::read_to_string(creds.join("auth.conf")).unwrap();
    assert!(auth_after.contains(&public(&after[2])));
    assert!(
        !auth_after.contains(&public(&before[2])),
        "the exposed seed is not kept"
    );
    assert!(auth_after.contains(&public(&before[3])));
    let previous = creds.join("erp.previous.nk");
    assert!(!previous.exists());
    for s in &after {
        assert!(!t.contains(s.trim()), "a seed was printed: {t}");
    }

    // Rotating a sound seed keeps the old one beside the new (both accepted) until retired.
    let o = credentials(d.path(), &creds, &["--rotate", "erp"]);
    let t = output_text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(t.contains("ROTATED") && t.contains("--retire erp"), "{t}");
    let rotated = seeds(&all);
    let auth_rotated = std::fs::read_to_string(creds.join("auth.conf")).unwrap();
    assert!(auth_rotated.contains(&public(&rotated[2])));
    assert!(
        auth_rotated.contains(&public(&after[2])),
        "the old seed stays accepted"
    );
    assert_eq!(std::fs::read_to_string(&previous).unwrap(), after[2]);
    assert_eq!(mode(&previous), 0o600);
    // A second rotation before the first is retired is refused; retiring ends it.
    let o = credentials(d.path(), &creds, &["--rotate", "erp"]);
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("--retire erp"),
        "{}",
        output_text(&o)
    );
    let o = credentials(d.path(), &creds, &["--retire", "erp"]);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    let auth_retired = std::fs::read_to_string(creds.join("auth.conf")).unwrap();
    assert!(auth_retired.contains(&public(&rotated[2])));
    assert!(
        !auth_retired.contains(&public(&after[2])),
        "the old seed is gone"
    );
    assert!(!previous.exists());
    let o = credentials(d.path(), &creds, &["--retire", "erp"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "nothing to retire: {}",
        output_text(&o)
    );

    // An identity that does not exist is named, with the ones that do.
    let o = credentials(d.path(), &creds, &["--rotate", "erpp"]);
    let t = output_text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(t.contains("admin, relay, erp, quality"), "{t}");
}

/// The relay started with the admin's seed by mistake would publish with every right on the
/// bus: it refuses to start (exit 2) and says which seed to give it. With its own seed it runs,
/// and its probe of its rights leaves no permission violation in its log.
#[tokio::test]
async fn the_relay_refuses_the_admins_seed_and_runs_quietly_with_its_own() {
    let w = World::new("").await;
    let db = TestDb::new().await;
    let cfg = config_for(&db, &w.url);
    let admin = w.seed_path(auth::ADMIN);
    let mut wrong =
        RelayProcess::spawn(&cfg, &[("MES_EVENTS_NATS__NKEY", admin.to_str().unwrap())]);
    let status = wrong.wait_exit("refuse the admin's seed").await;
    let said = wrong.stderr();
    assert_eq!(status.code(), Some(2), "{said}");
    for part in ["may manage JetStream", "relay.nk", "Nothing was sent"] {
        assert!(said.contains(part), "{part} in: {said}");
    }
    let own = w.seed_path(auth::RELAY);
    let relay = RelayProcess::spawn(
        &cfg,
        &[
            ("MES_EVENTS_NATS__NKEY", own.to_str().unwrap()),
            ("RUST_LOG", "info"),
        ],
    );
    emit_order(&db.client().await, "PO-1").await;
    eventually(
        Duration::from_secs(30),
        "published with its own seed",
        || async { pending(&db).await == 0 },
    )
    .await;
    let log = relay.stderr();
    assert!(
        !log.contains("denied") && !log.contains("Permissions Violation") && !log.contains("ERROR"),
        "{log}"
    );
    // It learnt its rights by asking who it is, not by trying what it may not do: nothing in the
    // server's log for the relay's own start.
    let mut w = w;
    let server_log = std::fs::read_to_string(w.nats.local().log_file()).unwrap();
    let relay_key = nkeys::KeyPair::from_seed(w.seed(auth::RELAY).trim())
        .unwrap()
        .public_key();
    let violations: Vec<&str> = server_log
        .lines()
        .filter(|l| l.contains("Violation") && l.contains(&relay_key))
        .collect();
    assert!(violations.is_empty(), "{violations:#?}");
}

/// Asking the server who one is answers with one's own account and permissions, nothing of
/// anyone else's, and no other identity's "who is" can be asked.
#[tokio::test]
async fn who_am_i_tells_a_system_its_own_rights_and_nobody_elses() {
    let w = World::new("").await;
    for me in SYSTEMS {
        let c = w.client(me).await;
        let answer =
            tokio::time::timeout(Duration::from_secs(5), c.request(auth::WHO_AM_I, "".into()))
                .await
                .unwrap_or_else(|_| panic!("{me}: no answer to {}", auth::WHO_AM_I))
                .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&answer.payload).unwrap();
        assert_eq!(v["data"]["account"], auth::account(me), "{me}: {v}");
        let text = v.to_string();
        for other in SYSTEMS.iter().filter(|o| **o != me) {
            assert!(
                !text.contains(&auth::inbox_prefix(other)),
                "{me} learns of {other}: {text}"
            );
        }
        assert_eq!(
            mes_events::nats::rights_in(&answer.payload),
            Some(mes_events::nats::Rights::Limited),
            "{me}: {text}"
        );
    }
    // The server's per-account form of the request is not theirs to ask.
    let failures = attack(
        &w,
        "erp",
        &[
            publish("$SYS.REQ.USER.MES.INFO", ""),
            publish(
                format!("$SYS.REQ.USER.{}.INFO", auth::account("quality")),
                "",
            ),
            publish("$SYS.REQ.USER.INFO.x", ""),
        ],
    )
    .await;
    assert!(failures.is_empty(), "{failures:#?}");
}
