//! A 3-node NATS cluster with the shipped R3 streams (`nats/cluster/streams.toml`), provisioned
//! and relayed through a comma-separated server list: the stream leader killed twice and the
//! relay's own node once during a run. Nothing lost, nothing duplicated, each key in order; the
//! time without publishing after each kill is printed.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use async_nats::jetstream;

use crate::support::*;

/// Whether the relay has published and recorded outbox row `id`.
async fn recorded(db: &TestDb, id: i64) -> bool {
    db.client()
        .await
        .query_opt("select 1 from mes_events.published where id = $1", &[&id])
        .await
        .unwrap()
        .is_some()
}

/// The node leading MES_EVENTS, once its replicas are all current.
async fn settled_leader(js: &jetstream::Context, cluster: &NatsCluster) -> Option<usize> {
    let mut stream = js.get_stream("MES_EVENTS").await.ok()?;
    let info = stream.info().await.ok()?;
    let c = info.cluster.as_ref()?;
    let leader = c.leader.as_deref()?;
    (c.replicas.len() == 2 && c.replicas.iter().all(|r| r.current && !r.offline))
        .then(|| cluster.index_of(leader))
}

#[tokio::test]
async fn a_three_node_cluster_losing_its_stream_leader_twice_and_the_relays_node_once() {
    init_tracing();
    let mut cluster = NatsCluster::start().await;
    let db = TestDb::new().await;
    let urls = cluster.urls();

    // The shipped cluster declaration, provisioned through the server list.
    let decl = tempfile::tempdir().unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("nats/cluster/streams.toml");
    std::fs::copy(shipped, decl.path().join("streams.toml")).unwrap();
    eventually(
        Duration::from_secs(60),
        "the cluster is provisioned",
        || async {
            Command::new(env!("CARGO_BIN_EXE_mes-events"))
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
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(2))
        .build(client);
    eventually(
        Duration::from_secs(60),
        "R3 streams with current replicas",
        || async { settled_leader(&js, &cluster).await.is_some() },
    )
    .await;

    let cfg = config_for(&db, &urls);
    let mut relay = RelayProcess::spawn(&cfg, &[("RUST_LOG", "info")]);
    // Writing goes on through every fault, so "publishing again" means new events flowing.
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = write_events_until(&db, 60, Duration::from_millis(20), &stop);
    let faults = async {
        let mut markers = Vec::new();
        for k in 0..3 {
            eventually(Duration::from_secs(60), "events flowing", || async {
                messages_in_streams(&js).await.unwrap_or(0) > 1_000 * (k + 1)
            })
            .await;
            let (victim, what) = if k < 2 {
                let deadline = Instant::now() + Duration::from_secs(60);
                let leader = loop {
                    if let Some(l) = settled_leader(&js, &cluster).await {
                        break l;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "no settled stream leader in 60 s"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                };
                (leader, "the stream leader")
            } else {
                // The relay's own connection (its watcher has another).
                let name = format!(
                    "mes-events relay {}:{}",
                    mes_events::host::name(),
                    relay.pid()
                );
                let node = cluster
                    .node_of_client(&name)
                    .expect("the relay is connected to a node");
                (node, "the relay's own node")
            };
            cluster.nodes[victim].kill();
            let killed = Instant::now();
            // An event committed after the kill, published and recorded: the relay is working
            // again (not merely acks of what was in flight landing).
            let marker = emit_order(&db.client().await, &format!("after-kill-{k}")).await;
            markers.push(marker);
            let deadline = Instant::now() + Duration::from_secs(60);
            while !recorded(&db, marker).await {
                assert!(
                    Instant::now() < deadline,
                    "not publishing 60 s after killing {what}; the relay said:\n{}",
                    relay.stderr()
                );
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            eprintln!(
                "killed {what} (n{victim}): an event committed after it published after {:?}",
                killed.elapsed()
            );
            cluster.nodes[victim]
                .restart()
                .expect("restarting the node");
            eventually(
                Duration::from_secs(60),
                "the node back in the cluster",
                || async { settled_leader(&js, &cluster).await.is_some() },
            )
            .await;
        }
        markers
    };
    let faults = async {
        let markers = tokio::time::timeout(Duration::from_secs(300), faults)
            .await
            .expect("the three faults and recoveries within 5 minutes");
        stop.cancel();
        markers
    };
    let (mut committed, markers) = tokio::join!(writer, faults);
    committed.extend(markers);
    let deadline = Instant::now() + Duration::from_secs(120);
    while pending(&db).await > 0 {
        assert!(
            Instant::now() < deadline,
            "outbox not drained within 120 s; the relay said:\n{}",
            relay.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(relay.terminate().await.success());
    // Leaders elected anew are not losses: nothing was taken back from the stream.
    let log = relay.stderr();
    assert!(
        !log.contains("stream lost") && !log.contains("went back in time"),
        "a leader election taken for a loss:\n{log}"
    );
    let losses = mes_events::store::kept::losses(&db.client().await, true)
        .await
        .unwrap();
    assert!(losses.is_empty(), "{losses:?}");
    // Read back once the cluster has settled (creating a consumer may be refused meanwhile).
    let deadline = Instant::now() + Duration::from_secs(60);
    let published = loop {
        let mut all = Vec::new();
        let mut failed = None;
        for s in ["MES_EVENTS", "MES_PV"] {
            match try_read_stream(&js, s).await {
                Ok(v) => all.extend(v),
                Err(e) => failed = Some(e),
            }
        }
        match failed {
            None => break all,
            Some(e) => assert!(
                Instant::now() < deadline,
                "cannot read the streams back: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_exactly_once_in_order(&db, &published, &committed).await;
}

#[tokio::test]
async fn a_stream_whose_only_server_is_down_holds_only_its_own_events() {
    // MES_EVENTS replicated on three nodes, MES_PV on one: the node holding MES_PV dies. The
    // relay keeps publishing MES_EVENTS; MES_PV's events wait, and go out once it is back, once.
    init_tracing();
    let mut cluster = NatsCluster::start().await;
    let db = TestDb::new().await;
    let urls = cluster.urls();
    let client = async_nats::ConnectOptions::new()
        .connect(mes_events::nats::servers(&urls).unwrap())
        .await
        .unwrap();
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(2))
        .build(client);
    for (name, replicas) in [("MES_EVENTS", 3), ("MES_PV", 1)] {
        eventually(Duration::from_secs(60), "the stream created", || async {
            js.create_stream(jetstream::stream::Config {
                name: name.into(),
                subjects: catalog_subjects(name),
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .is_ok()
        })
        .await;
    }
    let pv_node = eventually_value(Duration::from_secs(30), "MES_PV's node", || async {
        let mut s = js.get_stream("MES_PV").await.ok()?;
        let leader = s.info().await.ok()?.cluster.as_ref()?.leader.clone()?;
        Some(cluster.index_of(&leader))
    })
    .await;
    let cfg = config_for(&db, &urls);
    let mut relay = RelayProcess::spawn(&cfg, &[("RUST_LOG", "info")]);
    let c = db.client().await;
    emit_pv(&c, "before").await;
    emit_order(&c, "PO-before").await;
    eventually(Duration::from_secs(30), "both published", || async {
        pending(&db).await == 0
    })
    .await;

    cluster.nodes[pv_node].kill();
    let mut waiting = Vec::new();
    for i in 0..5 {
        waiting.push(emit_pv(&c, &format!("pv-{i}")).await);
    }
    let mut orders = Vec::new();
    for i in 0..20 {
        orders.push(emit_order(&c, &format!("PO-{i}")).await);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for id in &orders {
        while !recorded(&db, *id).await {
            assert!(
                Instant::now() < deadline,
                "MES_EVENTS stopped while MES_PV's node is down; the relay said:\n{}",
                relay.stderr()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    for id in &waiting {
        assert!(
            !recorded(&db, *id).await,
            "MES_PV's event {id} cannot have landed"
        );
    }

    cluster.nodes[pv_node]
        .restart()
        .expect("restarting the node");
    eventually(
        Duration::from_secs(90),
        "MES_PV's events published",
        || async { pending(&db).await == 0 },
    )
    .await;
    // The node just came back: its stream may need a moment before it answers a read.
    let pv = eventually_value(Duration::from_secs(30), "MES_PV readable", || async {
        try_read_stream(&js, "MES_PV").await.ok()
    })
    .await;
    let ids: Vec<i64> = pv.iter().map(|p| p.outbox_id).collect();
    assert_eq!(ids.len(), 6, "each once: {ids:?}");
    assert_eq!(&ids[1..], &waiting[..], "in the order written");
    assert!(relay.terminate().await.success());
}
