//! A power cut takes back from nats-server what it acknowledged in its last seconds: afterwards
//! every committed event is in the stream exactly once, each key's in commit order; the relay
//! says so once at ERROR and counts it once.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{for_stream, last_seq, loss_lines, relay, settled, write_until};
use crate::observe::scrape;
use crate::support::*;

#[tokio::test]
async fn a_power_cut_with_writers_busy_loses_and_duplicates_nothing() {
    single_server(true).await;
}

#[tokio::test]
async fn a_power_cut_with_writers_idle_loses_and_duplicates_nothing() {
    single_server(false).await;
}

/// 4 writers at 400 events/s over 200 keys; the server's disk image taken once publishing is
/// under way, 5 s of acknowledged publishing after it, then the cut. `busy`: the writers go on
/// through the cut; otherwise they stop and everything is published (acknowledged) before it.
async fn single_server(busy: bool) {
    let mut env = Env::new().await;
    let port = free_port();
    let mut relay = relay(&env.cfg, port, &[]);
    let js = env.js().await;
    let stop = CancellationToken::new();
    let Env { nats, db, .. } = &mut env;
    let mut acknowledged = 0;
    let cut = async {
        eventually(Duration::from_secs(30), "publishing under way", || async {
            last_seq(&js, "MES_EVENTS").await.unwrap_or(0) > 500
        })
        .await;
        let image = power::image(&[nats.local()]);
        let imaged = last_seq(&js, "MES_EVENTS").await.unwrap();
        // The seconds the disk will not have: acknowledged all the same.
        tokio::time::sleep(Duration::from_secs(5)).await;
        if !busy {
            stop.cancel();
            // Everything committed is published and acknowledged before the cut.
            eventually(
                Duration::from_secs(60),
                "writers idle, outbox drained",
                || async {
                    pending(db).await == 0 && {
                        let seen = last_seq(&js, "MES_EVENTS").await;
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        pending(db).await == 0 && last_seq(&js, "MES_EVENTS").await == seen
                    }
                },
            )
            .await;
        }
        acknowledged = last_seq(&js, "MES_EVENTS").await.unwrap();
        assert!(
            acknowledged > imaged + 1000,
            "5 s of publishing: {imaged} → {acknowledged}"
        );
        power::cut(&mut [nats.local()], image);
        if busy {
            // Writing on through the cut and the restore.
            tokio::time::sleep(Duration::from_secs(3)).await;
            stop.cancel();
        }
    };
    let (committed, ()) = tokio::join!(write_until(db, 4, 200, &stop), cut);
    settled(&env, &committed).await;
    env.assert_published_exactly_once(&committed).await;

    let log = relay.stderr();
    let told = loss_lines(&log);
    assert_eq!(told.len(), 1, "one ERROR line for the loss:\n{log}");
    eprintln!("the relay said: {}", told[0]);
    for part in ["MES_EVENTS", "power cut", "restored", "sync"] {
        assert!(told[0].contains(part), "{part} in: {}", told[0]);
    }
    let m = scrape(port);
    assert_eq!(
        for_stream(&m, "mes_events_stream_regressions_total", "MES_EVENTS"),
        1.0
    );
    let restored = for_stream(&m, "mes_events_events_restored_total", "MES_EVENTS");
    assert!(
        restored >= 1000.0,
        "{restored} events restored (the server had {acknowledged})"
    );
    assert_eq!(
        for_stream(&m, "mes_events_events_unrestorable_total", "MES_EVENTS"),
        0.0
    );
    assert_eq!(
        for_stream(&m, "mes_events_stream_regressions_total", "MES_PV"),
        0.0
    );
    let losses = mes_events::store::kept::losses(&env.db.client().await, true)
        .await
        .unwrap();
    assert_eq!(losses.len(), 1, "{losses:?}");
    assert_eq!(losses[0].lost, losses[0].restored);
    assert_eq!(losses[0].restored as f64, restored);
    relay.terminate().await;
}

/// The shipped cluster declaration (`nats/cluster/streams.toml`, R3) on a 3-node cluster; the
/// three nodes lose their unsynced tails together, as a rack losing power does.
#[tokio::test]
async fn a_three_node_cluster_losing_its_tails_at_once_loses_and_duplicates_nothing() {
    let mut cluster = NatsCluster::start().await;
    let db = TestDb::new().await;
    let urls = cluster.urls();
    let decl = tempfile::tempdir().unwrap();
    let shipped =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("nats/cluster/streams.toml");
    std::fs::copy(shipped, decl.path().join("streams.toml")).unwrap();
    eventually(
        Duration::from_secs(60),
        "the cluster is provisioned",
        || async {
            std::process::Command::new(env!("CARGO_BIN_EXE_mes-events"))
                .args(["provision", "apply", "--dir"])
                .arg(decl.path())
                .env("MES_EVENTS_NATS__URL", &urls)
                .current_dir(std::env::temp_dir())
                .output()
                .unwrap()
                .status
                .success()
        },
    )
    .await;
    let client = async_nats::ConnectOptions::new()
        .connect(mes_events::nats::servers(&urls).unwrap())
        .await
        .unwrap();
    let js = async_nats::jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(2))
        .build(client);
    eventually(
        Duration::from_secs(60),
        "R3 streams with current replicas",
        || async { replicas_current(&js).await },
    )
    .await;
    let port = free_port();
    let cfg = config_for(&db, &urls);
    let mut relay = relay(&cfg, port, &[]);
    let stop = CancellationToken::new();
    let cut = async {
        eventually(Duration::from_secs(60), "publishing under way", || async {
            last_seq(&js, "MES_EVENTS").await.unwrap_or(0) > 500
        })
        .await;
        let image = power::image(&cluster.nodes.iter().collect::<Vec<_>>());
        tokio::time::sleep(Duration::from_secs(5)).await;
        let acknowledged = last_seq(&js, "MES_EVENTS").await.unwrap();
        power::cut(&mut cluster.nodes.iter_mut().collect::<Vec<_>>(), image);
        let after = eventually_value(
            Duration::from_secs(90),
            "the cluster answers again",
            || async { last_seq(&js, "MES_EVENTS").await },
        )
        .await;
        assert!(
            after < acknowledged,
            "the cluster must have lost acknowledged events for this test to mean anything: {after} ≥ {acknowledged}"
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.cancel();
    };
    let (committed, ()) = tokio::join!(write_until(&db, 4, 200, &stop), cut);
    eventually(
        Duration::from_secs(180),
        "everything published and recorded",
        || async {
            let counts = mes_events::store::operator::counts(&db.client().await)
                .await
                .unwrap();
            counts.pending == 0
                && counts.published == committed.len() as i64
                && messages_in_streams(&js).await == Some(committed.len() as u64)
        },
    )
    .await;
    let published = eventually_value(Duration::from_secs(60), "the streams read back", || async {
        let mut all = try_read_stream(&js, "MES_EVENTS").await.ok()?;
        all.extend(try_read_stream(&js, "MES_PV").await.ok()?);
        Some(all)
    })
    .await;
    assert_exactly_once_in_order(&db, &published, &committed).await;
    let log = relay.stderr();
    let told = loss_lines(&log);
    assert_eq!(told.len(), 1, "one ERROR line for the loss:\n{log}");
    eprintln!("the relay said: {}", told[0]);
    let m = scrape(port);
    assert_eq!(
        for_stream(&m, "mes_events_stream_regressions_total", "MES_EVENTS"),
        1.0
    );
    relay.terminate().await;
}

/// Both streams have a leader and two current replicas.
async fn replicas_current(js: &async_nats::jetstream::Context) -> bool {
    for name in ["MES_EVENTS", "MES_PV"] {
        let Ok(mut s) = js.get_stream(name).await else {
            return false;
        };
        let Ok(info) = s.info().await else {
            return false;
        };
        let ok = info.cluster.as_ref().is_some_and(|c| {
            c.leader.is_some() && c.replicas.len() == 2 && c.replicas.iter().all(|r| r.current)
        });
        if !ok {
            return false;
        }
    }
    true
}

/// A stream deleted and created again numbers from 1 again, while the published log still
/// holds the old one's entries (at higher sequences): a cut after that loses only the new
/// stream's events, and only those are restored and counted.
#[tokio::test]
async fn a_stream_created_again_then_cut_loses_only_its_own_events() {
    let mut env = Env::new().await;
    let relay = env.spawn_relay().await;
    let c = env.db.client().await;
    let mut committed = Vec::new();
    for i in 0..200 {
        emit_order(&c, &format!("old-{}", i % 7)).await;
    }
    env.drained(Duration::from_secs(30), "the first stream's events")
        .await;
    let js = env.js().await;
    js.delete_stream("MES_EVENTS").await.unwrap();
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "MES_EVENTS".into(),
        subjects: catalog_subjects("MES_EVENTS"),
        ..Default::default()
    })
    .await
    .unwrap();
    for i in 0..20 {
        committed.push(emit_order(&c, &format!("new-{}", i % 3)).await);
    }
    env.drained(Duration::from_secs(30), "the new stream's first events")
        .await;
    eventually(Duration::from_secs(30), "in the new stream", || async {
        last_seq(&js, "MES_EVENTS").await == Some(20)
    })
    .await;
    let image = power::image(&[env.nats.local()]);
    for i in 0..30 {
        committed.push(emit_order(&c, &format!("new-{}", i % 3)).await);
    }
    env.drained(Duration::from_secs(30), "acknowledged before the cut")
        .await;
    power::cut(&mut [env.nats.local()], image);
    let loss = eventually_value(Duration::from_secs(60), "the loss recorded", || async {
        mes_events::store::kept::losses(&c, true)
            .await
            .unwrap()
            .pop()
    })
    .await;
    assert_eq!((loss.lost, loss.restored), (30, 30), "{loss:?}");
    eventually(Duration::from_secs(60), "restored", || async {
        pending(&env.db).await == 0 && last_seq(&env.js().await, "MES_EVENTS").await == Some(50)
    })
    .await;
    let events = read_stream(&env.js().await, "MES_EVENTS").await;
    let ids: Vec<i64> = events.iter().map(|p| p.outbox_id).collect();
    assert_eq!(
        ids, committed,
        "the new stream's events, once each, in order"
    );
    relay.stop().await;
}

/// The shipped setting: the server syncs every second and the relay, reading that from its
/// monitoring port, keeps each event 6.25 s. A cut the relay cannot see at once: the server
/// freezes (no connection closes, PubAcks just stop) for longer than that horizon, then its
/// power goes. What the relay kept must not have been forgotten while it waited: nothing
/// confirmed the server after the freeze.
#[tokio::test]
async fn a_silent_cut_longer_than_the_shipped_horizon_loses_nothing() {
    let monitoring = free_port();
    let nats = NatsServer::start_with_jetstream(
        "sync_interval: \"1s\"",
        &format!("http: \"127.0.0.1:{monitoring}\"\n"),
    )
    .await;
    let mut env = Env::on(nats).await;
    let port = free_port();
    let url = format!("http://127.0.0.1:{monitoring}");
    let mut relay = relay(&env.cfg, port, &[("MES_EVENTS_NATS__MONITORING_URL", &url)]);
    let js = env.js().await;
    let stop = CancellationToken::new();
    let Env { nats, db, .. } = &mut env;
    let cut = async {
        eventually(Duration::from_secs(30), "publishing under way", || async {
            last_seq(&js, "MES_EVENTS").await.unwrap_or(0) > 500
        })
        .await;
        let image = power::image(&[nats.local()]);
        // Close to the horizon: the first of these are older than it by the time the relay
        // could notice the freeze.
        tokio::time::sleep(Duration::from_secs(6)).await;
        let pid = nats.local().pid().unwrap() as i32;
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
        // Frozen for twice the horizon: a janitor trusting the quiet would forget it all.
        tokio::time::sleep(Duration::from_secs(13)).await;
        power::cut(&mut [nats.local()], image);
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.cancel();
    };
    let (committed, ()) = tokio::join!(write_until(db, 2, 100, &stop), cut);
    settled(&env, &committed).await;
    env.assert_published_exactly_once(&committed).await;
    let log = relay.stderr();
    let told = loss_lines(&log);
    assert_eq!(told.len(), 1, "{log}");
    assert!(
        told[0].contains("syncs every 1s") && told[0].contains("All "),
        "{}",
        told[0]
    );
    relay.terminate().await;
}
