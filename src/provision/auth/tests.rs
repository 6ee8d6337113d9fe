//! The generated permissions, tried as a hostile identity would read them: nothing of
//! another's consumers, inboxes or the JetStream API beyond each identity's job.

use super::*;
use crate::provision::decl::parse;
use crate::provision::load::{overlap, validate};

fn declaration() -> Declaration {
    let files = [
        (
            "streams.toml",
            r#"
[[stream]]
name = "MES_EVENTS"
subjects = ["mes.*.*.*.*.processorder.>", "mes.*.*.*.*.document.>"]
[[stream]]
name = "MES_PV"
subjects = ["mes.*.*.*.*.processvariable.>"]
[[stream]]
name = "MES_DEAD_LETTERS"
subjects = ["$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.MES_EVENTS.>"]
"#,
        ),
        (
            "systems/erp.toml",
            "[system]\nname = \"erp\"\n[[consumer]]\nstream = \"MES_EVENTS\"\n",
        ),
        (
            "systems/quality.toml",
            "[system]\nname = \"quality\"\nlive = [\"mes.*.*.*.*.document.>\"]\n[[consumer]]\nstream = \"MES_EVENTS\"\n",
        ),
        (
            "systems/scada.toml",
            "[system]\nname = \"scada\"\n[[consumer]]\nstream = \"MES_EVENTS\"\n[[consumer]]\nstream = \"MES_PV\"\nname = \"scada-pv\"\n",
        ),
    ];
    let sources = files
        .iter()
        .map(|(p, t)| parse(std::path::Path::new(p), t).unwrap())
        .collect();
    validate(sources).unwrap()
}

/// Every subject the server subscribes to for one consumer, with wildcards where the server
/// has them (domain and account hash taken as wildcards too, to be safe), and the API verbs
/// that name it.
fn server_side(stream: &str, consumer: &str) -> Vec<String> {
    vec![
        format!("$JS.ACK.{stream}.{consumer}.*.*.*.*.*"),
        format!("$JS.ACK.*.*.{stream}.{consumer}.*.*.*.*.>"),
        format!("$JS.FC.{stream}.{consumer}.*"),
        format!("$JS.FC.*.*.{stream}.{consumer}.*"),
        format!("$JS.API.CONSUMER.*.{stream}.{consumer}"),
        format!("$JS.API.CONSUMER.*.{stream}.{consumer}.>"),
        format!("$JS.API.CONSUMER.*.*.{stream}.{consumer}"),
        format!("$JS.API.CONSUMER.*.{stream}"),
        format!("$JS.EVENT.>"),
    ]
}

#[test]
fn grants_reach_nothing_of_others() {
    let d = declaration();
    let users = users(&d, &Scope::default());
    let consumers: Vec<(String, String, String)> = d
        .systems
        .iter()
        .flat_map(|s| {
            s.consumers.iter().map(|(c, decl)| {
                (
                    s.decl.name.get_ref().clone(),
                    decl.stream.get_ref().clone(),
                    c.clone(),
                )
            })
        })
        .collect();
    let everything_else = [
        "$JS.API.STREAM.>",
        "$JS.API.DIRECT.>",
        "$JS.API.INFO",
        "$JS.API.ACCOUNT.>",
        "$JS.API.SERVER.>",
        "$JS.API.META.>",
        "$JS.SNAPSHOT.>",
        "$SYS.>",
        "_INBOX.>",
    ];
    for u in users.iter().filter(|u| u.name != ADMIN) {
        for g in &u.publish {
            for (owner, stream, consumer) in &consumers {
                if *owner == u.name {
                    continue;
                }
                for s in server_side(stream, consumer) {
                    assert!(
                        !overlap(g, &s),
                        "{} may publish {g}, which reaches {s} of {owner}'s consumer",
                        u.name
                    );
                }
            }
            if *g == schema_grant() {
                // The one read outside its consumers: the schema bucket, nothing else.
                for s in [
                    "$JS.API.DIRECT.GET.MES_EVENTS.>",
                    "$JS.API.DIRECT.GET.MES_EVENTS",
                    "$JS.API.DIRECT.GET.KV_MES_SCHEMAS",
                    "$JS.API.STREAM.>",
                    "$KV.>",
                ] {
                    assert!(
                        !overlap(g, s),
                        "{} may publish {g}, which reaches {s}",
                        u.name
                    );
                }
                continue;
            }
            if u.name != RELAY && g != WHO_AM_I {
                for s in everything_else {
                    assert!(!overlap(g, s), "{} may publish {g}, inside {s}", u.name);
                }
                assert!(!g.starts_with("mes."), "{} may publish events: {g}", u.name);
            }
        }
        for g in &u.subscribe {
            for other in users.iter().filter(|o| o.name != u.name) {
                let theirs = format!("{}.>", inbox_prefix(&other.name));
                assert!(!overlap(g, &theirs), "{} may read {theirs}", u.name);
            }
            for s in ["_INBOX.>", "$JS.>", "$SYS.>", "$KV.>", "$O.>"] {
                assert!(
                    !overlap(g, s),
                    "{} may subscribe to {g}, inside {s}",
                    u.name
                );
            }
        }
    }
    let relay = users.iter().find(|u| u.name == RELAY).unwrap();
    for g in relay.publish.iter().filter(|g| *g != WHO_AM_I) {
        for s in [
            "$JS.API.CONSUMER.>",
            "$JS.ACK.>",
            "$JS.FC.>",
            "$JS.EVENT.>",
            "$JS.API.STREAM.*.MES_DEAD_LETTERS",
            "$JS.API.STREAM.*.*.MES_DEAD_LETTERS",
            "$JS.API.DIRECT.>",
            "$JS.API.STREAM.PURGE.>",
            "$JS.API.STREAM.DELETE.>",
            "$JS.API.STREAM.UPDATE.>",
            "$JS.API.STREAM.CREATE.>",
            "$JS.API.STREAM.SNAPSHOT.>",
            "$JS.API.STREAM.MSG.DELETE.>",
            "$SYS.>",
        ] {
            assert!(!overlap(g, s), "the relay may publish {g}, inside {s}");
        }
    }
}

#[test]
fn every_identity_has_its_own_inbox_and_systems_only_their_consumers() {
    let d = declaration();
    let users = users(&d, &Scope::default());
    let names: Vec<&str> = users.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["admin", "relay", "erp", "quality", "scada"]);
    let relay = &users[1];
    assert_eq!(relay.subscribe, ["_INBOX_relay.>"]);
    assert!(relay
        .publish
        .contains(&"$JS.API.STREAM.MSG.GET.MES_PV".to_string()));
    assert!(!relay.publish.iter().any(|g| g.contains("MES_DEAD_LETTERS")));
    assert!(!relay.publish.iter().any(|g| g.contains("SCHEMAS")));
    let scada = &users[4];
    assert_eq!(scada.subscribe, ["_INBOX_scada.>"]);
    let hash = account_hash(JETSTREAM_ACCOUNT);
    assert_eq!(
        scada.publish,
        [
            "$JS.API.CONSUMER.MSG.NEXT.MES_EVENTS.scada".to_string(),
            "$JS.ACK.MES_EVENTS.scada.*.*.*.*.*".into(),
            format!("$JS.ACK._.{hash}.MES_EVENTS.scada.*.*.*.*.*"),
            "$JS.API.CONSUMER.MSG.NEXT.MES_PV.scada-pv".into(),
            "$JS.ACK.MES_PV.scada-pv.*.*.*.*.*".into(),
            format!("$JS.ACK._.{hash}.MES_PV.scada-pv.*.*.*.*.*"),
            "$JS.API.DIRECT.GET.KV_MES_SCHEMAS.$KV.MES_SCHEMAS.>".into(),
            WHO_AM_I.into(),
        ]
    );
    assert_eq!(
        users[3].subscribe,
        ["_INBOX_quality.>", "mes.*.*.*.*.document.>"]
    );
    // The admin and the relay in the JetStream account, each system in an account of its own.
    let accounts: std::collections::BTreeSet<&str> =
        users.iter().map(|u| u.account.as_str()).collect();
    assert_eq!(accounts.len(), users.len() - 1);
    assert_eq!(users[0].account, JETSTREAM_ACCOUNT);
    assert_eq!(users[1].account, JETSTREAM_ACCOUNT);
    assert_eq!(scada.account, "MES_SYSTEM_scada");
    // What a system may publish is exactly what it imports (and who it is), and what it
    // watches live is imported as a stream.
    for u in &users[2..] {
        let mut imported = service_subjects(&u.imports);
        imported.push(WHO_AM_I.into());
        assert_eq!(u.publish, imported, "{}", u.name);
    }
    assert!(users[3].imports.contains(&Import::Stream {
        subject: "mes.*.*.*.*.document.>".into()
    }));
}

#[test]
fn the_rendered_configuration_exports_each_subject_to_its_importers_only() {
    let d = declaration();
    let users: Vec<(User, Vec<String>)> = users(&d, &Scope::default())
        .into_iter()
        .map(|u| {
            let k = u.name.to_uppercase();
            (u, vec![k])
        })
        .collect();
    let conf = render(&users);
    assert!(
        conf.contains("  MES: {\n    jetstream: enabled\n"),
        "{conf}"
    );
    assert_eq!(conf.matches("jetstream").count(), 1, "{conf}");
    assert!(conf.contains(
        "{ service: \"$JS.API.CONSUMER.MSG.NEXT.MES_EVENTS.erp\", accounts: [\"MES_SYSTEM_erp\"], response_type: stream, response_threshold: \"2m\" }"
    ), "{conf}");
    assert!(
        conf.contains("      # relay\n      { nkey: \"RELAY\""),
        "{conf}"
    );
    assert!(!conf.contains("CONSUMER.INFO"), "{conf}");
    assert!(
        conf.contains("{ stream: \"mes.*.*.*.*.document.>\", accounts: [\"MES_SYSTEM_quality\"] }"),
        "{conf}"
    );
    assert!(
        conf.contains(
            "{ service: { account: MES, subject: \"$JS.ACK.MES_PV.scada-pv.*.*.*.*.*\" } }"
        ),
        "{conf}"
    );
}

#[test]
fn account_hash_is_eight_base62_digits() {
    let h = account_hash("$G");
    assert_eq!(h.len(), 8);
    assert!(h.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert_ne!(h, account_hash("OTHER"));
}
