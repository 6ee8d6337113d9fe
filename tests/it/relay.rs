//! The relay's guarantees: every committed event once, in order per key, whatever fails.

use std::time::{Duration, Instant};

use futures::StreamExt;
use rand::{Rng, SeedableRng};

use crate::support::*;

#[tokio::test]
async fn concurrent_writers_with_rollbacks_exactly_once_in_commit_order() {
    let env = Env::new().await;
    let relay = env.spawn_relay().await;
    let committed = write_events(&env.db, 8, 10_000, 500, 0.2).await;
    env.drained(Duration::from_secs(120), "outbox drained")
        .await;
    relay.stop().await;
    env.assert_published_exactly_once(&committed).await;
}

#[tokio::test]
async fn a_row_that_commits_late_is_published_before_its_keys_later_rows() {
    let env = Env::new().await;
    let relay = env.spawn_relay().await;
    let opts = mes_events::store::write::EmitOptions::default();
    // Keep the pipeline busy with other keys, so the late rows commit while publishes are in
    // flight and the relay is reading above them.
    let stop = tokio_util::sync::CancellationToken::new();
    let background = {
        let client = env.db.client().await;
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut ids = vec![];
            let mut i = 0;
            while !stop.is_cancelled() {
                let tx_ids = client
                    .query(
                        "select mes_events.emit($1, 'busy-' || g, jsonb_build_object(
                                 'orderId', 'busy-' || g, 'previousStatus', null, 'status', 'released',
                                 'hierarchyScope', jsonb_build_object('site', 'bsl')))
                           from generate_series($2::int, $2 + 49) g",
                        &[&ORDER_TYPE, &i],
                    )
                    .await
                    .unwrap();
                ids.extend(tx_ids.iter().map(|r| r.get::<_, i64>(0)));
                i += 50;
            }
            ids
        })
    };
    let mut committed = vec![];
    let mut late = env.db.client().await;
    let next = env.db.client().await;
    for k in 0..30 {
        let key = format!("late-{k}");
        let tx = late.transaction().await.unwrap();
        let first = mes_events::store::write::emit(&tx, ORDER_TYPE, &key, &order_data(&key), &opts)
            .await
            .unwrap();
        // Let ids above `first` be taken and published meanwhile; the first one stays open
        // across many of the relay's reads.
        let open = if k == 0 { 1_000 } else { 20 };
        tokio::time::sleep(Duration::from_millis(open)).await;
        tx.commit().await.unwrap();
        // The key's next event commits right after, with a higher id than the pipeline's cursor.
        let second =
            mes_events::store::write::emit(&next, ORDER_TYPE, &key, &order_data(&key), &opts)
                .await
                .unwrap();
        committed.extend([first, second]);
    }
    stop.cancel();
    committed.extend(background.await.unwrap());
    env.drained(Duration::from_secs(60), "outbox drained").await;
    relay.stop().await;
    env.assert_published_exactly_once(&committed).await;
}

#[tokio::test]
async fn relay_killed_with_sigkill_at_random_moments() {
    let env = Env::new().await;
    let writer = {
        let db = &env.db;
        write_events(db, 4, 20_000, 500, 0.1)
    };
    let killer = async {
        let mut rng = rand::rngs::StdRng::from_os_rng();
        let mut kills = 0;
        // At least 20 kills, and keep killing while the writers are still busy.
        while kills < 20 || pending(&env.db).await > 2_000 {
            let mut relay = env.relay_process();
            let ms = rng.random_range(20..600);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            relay.kill9();
            kills += 1;
            if kills > 200 {
                break;
            }
        }
        kills
    };
    let (committed, kills) = tokio::join!(writer, killer);
    assert!(kills >= 20);
    let mut relay = env.relay_process();
    env.drained(
        Duration::from_secs(180),
        "outbox drained after the last restart",
    )
    .await;
    // Once it is active (a SIGTERM before it handles signals would kill it: the kills above
    // may have drained everything already).
    eventually(Duration::from_secs(30), "the last relay active", || async {
        active_pid(&env.db).await == Some(relay.pid())
    })
    .await;
    let stopped = relay.terminate().await;
    assert!(stopped.success(), "{stopped:?}:\n{}", relay.stderr());
    env.assert_published_exactly_once(&committed).await;
}

#[tokio::test]
async fn nats_killed_mid_publish_and_down_longer_than_the_duplicate_window() {
    let mut env = Env::with_duplicate_window(Duration::from_secs(1)).await;
    let mut cfg = env.cfg.clone();
    cfg.relay.batch_size = 200; // many small pipelines: more publishes in flight at each kill
    let relay = spawn_relay(cfg, &env.nats.url()).await;
    let writer = write_events_paced(&env.db, 20_000, 10, Duration::from_millis(5));
    let outages = async {
        let js_url = env.nats.url();
        // Two short outages, then one well past the 1 s duplicate window; each starts while
        // publishes are in flight (the stream is growing).
        for outage in [
            Duration::from_millis(300),
            Duration::from_millis(300),
            Duration::from_secs(3),
        ] {
            let client = async_nats::connect(&js_url).await.unwrap();
            let js = async_nats::jetstream::new(client);
            let start = js
                .get_stream("MES_EVENTS")
                .await
                .unwrap()
                .info()
                .await
                .unwrap()
                .state
                .last_sequence;
            eventually(Duration::from_secs(30), "publishing under way", || async {
                js.get_stream("MES_EVENTS")
                    .await
                    .unwrap()
                    .info()
                    .await
                    .unwrap()
                    .state
                    .last_sequence
                    > start + 200
            })
            .await;
            env.nats.kill().await;
            tokio::time::sleep(outage).await; // the outage itself, not a wait for a condition
            env.nats.restart().await;
        }
    };
    let (committed, ()) = tokio::join!(writer, outages);
    env.drained(Duration::from_secs(120), "outbox drained after the outages")
        .await;
    relay.stop().await;
    env.assert_published_exactly_once(&committed).await;
}

#[tokio::test]
async fn a_full_stream_refusing_messages_never_reorders_a_key() {
    // A work-queue stream of 20 messages with `discard: new`: publishes are refused while it is
    // full, and a consumer acking concurrently frees slots between two publishes of one
    // pipeline. Without the expected-last-sequence fence, message k is refused and k+1 lands.
    use async_nats::jetstream::{consumer, stream};
    let env = Env::without_streams().await;
    let js = env.js().await;
    js.create_stream(stream::Config {
        name: "MES_EVENTS".into(),
        subjects: catalog_subjects("MES_EVENTS"),
        retention: stream::RetentionPolicy::WorkQueue,
        max_messages: 20,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .unwrap();
    js.create_stream(stream::Config {
        name: "MES_PV".into(),
        subjects: vec!["mes.*.*.*.*.processvariable.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let consumer: consumer::PullConsumer = js
        .get_stream("MES_EVENTS")
        .await
        .unwrap()
        .create_consumer(consumer::pull::Config {
            durable_name: Some("reader".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let relay = env.spawn_relay().await;
    let total = 3_000;
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        let mut rng = rand::rngs::StdRng::from_os_rng();
        while got.len() < total {
            let mut batch = consumer.fetch().max_messages(7).messages().await.unwrap();
            while let Some(m) = batch.next().await {
                let m = m.unwrap();
                got.push(published(&m));
                if rng.random_bool(0.3) {
                    tokio::time::sleep(Duration::from_micros(rng.random_range(0..300))).await;
                }
                m.ack().await.unwrap();
            }
        }
        got
    });
    let committed = write_events_paced(&env.db, total, 5, Duration::from_millis(1)).await;
    let got = tokio::time::timeout(Duration::from_secs(180), reader)
        .await
        .expect("every event read within 180 s")
        .unwrap();
    relay.stop().await;
    assert_exactly_once_in_order(&env.db, &got, &committed).await;
}

#[tokio::test]
async fn relay_postgres_sessions_terminated_mid_run() {
    let env = Env::new().await;
    let relay = env.spawn_relay().await;
    let admin = env.db.client().await;
    let writer = write_events(&env.db, 4, 8_000, 300, 0.1);
    let terminator = async {
        let mut terminated = 0;
        // The main session (lock, reads), the one that records acks, or both.
        let sessions = [
            vec!["mes-events relay %:%"],
            vec!["mes-events relay marks"],
            vec!["mes-events relay %:%", "mes-events relay marks"],
        ];
        for i in 0..12 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let n = admin
                .query(
                    "select pg_terminate_backend(pid) from pg_stat_activity
                      where application_name like any($1) and datname = current_database()",
                    &[&sessions[i % 3]],
                )
                .await
                .unwrap()
                .len();
            terminated += n;
        }
        terminated
    };
    let (committed, terminated) = tokio::join!(writer, terminator);
    assert!(
        terminated >= 3,
        "the relay's sessions were terminated {terminated} times"
    );
    env.drained(
        Duration::from_secs(120),
        "outbox drained after reconnecting",
    )
    .await;
    relay.stop().await;
    env.assert_published_exactly_once(&committed).await;
}

/// The lease holder is `host:pid`.
async fn active_pid(db: &TestDb) -> Option<i32> {
    let c = db.client().await;
    let (_, holder) = mes_events::store::lease::lease(&c).await.unwrap();
    holder?.rsplit(':').next()?.parse().ok()
}

#[tokio::test]
async fn two_relays_one_active_one_standby_taking_over_within_5s() {
    let env = Env::new().await;
    let mut a = env.relay_process();
    let mut b = env.relay_process();
    let writer = write_events(&env.db, 4, 6_000, 300, 0.1);
    let js = env.js().await;
    let failover = async {
        eventually(Duration::from_secs(20), "one relay active", || async {
            active_pid(&env.db).await.is_some()
        })
        .await;
        eventually(Duration::from_secs(20), "events flowing", || async {
            !read_stream(&js, "MES_EVENTS").await.is_empty()
        })
        .await;
        let active = active_pid(&env.db).await.unwrap();
        let (dead, standby) = if active == a.pid() {
            (&mut a, b.pid())
        } else {
            (&mut b, a.pid())
        };
        dead.kill9();
        let killed_at = Instant::now();
        let seq_at_kill = js
            .get_stream("MES_EVENTS")
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .state
            .last_sequence;
        eventually(
            Duration::from_secs(5),
            "the standby is active and publishing",
            || async {
                active_pid(&env.db).await == Some(standby)
                    && js
                        .get_stream("MES_EVENTS")
                        .await
                        .unwrap()
                        .info()
                        .await
                        .unwrap()
                        .state
                        .last_sequence
                        > seq_at_kill
            },
        )
        .await;
        killed_at.elapsed()
    };
    let (committed, took) = tokio::join!(writer, failover);
    println!("standby publishing {took:?} after the active relay was killed");
    env.drained(Duration::from_secs(120), "outbox drained")
        .await;
    env.assert_published_exactly_once(&committed).await;
}

#[tokio::test]
async fn two_relays_publishing_at_once_are_fenced() {
    // Without the advisory lock both relays are active and keep taking the lease from each
    // other: only the epoch and expected-last-sequence fences stand between them and a duplicate.
    let env = Env::new().await;
    let mut cfg = env.cfg.clone();
    cfg.relay.exclusive = false;
    cfg.relay.batch_size = 50;
    let a = spawn_relay(cfg.clone(), &env.nats.url()).await;
    let b = spawn_relay(cfg.clone(), &env.nats.url()).await;
    let committed = write_events(&env.db, 4, 6_000, 300, 0.1).await;
    env.drained(Duration::from_secs(120), "outbox drained")
        .await;
    let epoch = mes_events::store::lease::lease(&env.db.client().await)
        .await
        .unwrap()
        .0;
    assert!(epoch >= 2, "both relays became active (epoch {epoch})");
    a.stop().await;
    b.stop().await;
    env.assert_published_exactly_once(&committed).await;
}

#[tokio::test]
async fn sigterm_records_the_acks_in_flight_and_exits_0() {
    let env = Env::new().await;
    let committed = write_events(&env.db, 4, 20_000, 300, 0.0).await;
    let mut relay = env.relay_process();
    let js = env.js().await;
    eventually(Duration::from_secs(30), "publishing under way", || async {
        let s = js
            .get_stream("MES_EVENTS")
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .state
            .last_sequence;
        s > 500
    })
    .await;
    let status = relay.terminate().await;
    assert_eq!(status.code(), Some(0));
    // Every message in the stream is recorded in the outbox: nothing landed unmarked.
    let in_stream = read_all(&js).await.len() as i64;
    let c = env.db.client().await;
    let counts = mes_events::store::operator::counts(&c).await.unwrap();
    assert_eq!(
        counts.published, in_stream,
        "published rows == messages in the stream"
    );
    assert!(
        counts.pending > 0,
        "stopped before the end (else the test proves nothing)"
    );
    // And a restarted relay finishes the job without duplicates.
    let mut relay = env.relay_process();
    env.drained(Duration::from_secs(120), "outbox drained")
        .await;
    assert!(relay.terminate().await.success());
    env.assert_published_exactly_once(&committed).await;
}

#[tokio::test]
async fn refuses_to_start_without_its_stream_and_says_what_to_run() {
    let nats = NatsServer::start().await;
    let db = TestDb::new().await;
    let cfg = config(&db, &nats);
    let mut relay = RelayProcess::spawn(&cfg, &[]);
    let status = relay.wait_exit("stop without its streams").await;
    assert_eq!(status.code(), Some(3));
    let err = relay.stderr();
    assert!(
        err.contains("MES_EVENTS") && err.contains("mes-events provision apply"),
        "{err}"
    );
}

#[tokio::test]
async fn a_notify_wakes_the_relay_long_before_the_fallback_poll() {
    let env = Env::new().await;
    let mut cfg = env.cfg.clone();
    cfg.relay.poll_interval = Duration::from_secs(3600);
    let relay = spawn_relay(cfg, &env.nats.url()).await;
    let js = env.js().await;
    // Let the relay reach its idle wait first.
    eventually(Duration::from_secs(20), "relay active", || async {
        mes_events::store::lease::lease(&env.db.client().await)
            .await
            .unwrap()
            .0
            > 0
    })
    .await;
    for i in 0..3 {
        let c = env.db.client().await;
        mes_events::store::write::emit(&c, ORDER_TYPE, "K", &order_data("K"), &Default::default())
            .await
            .unwrap();
        eventually(
            Duration::from_secs(30),
            "event published without waiting for the poll",
            || async { read_all(&js).await.len() == i + 1 },
        )
        .await;
    }
    relay.stop().await;
}

#[tokio::test]
async fn emit_command_reads_data_from_a_file_and_rejects_bad_json() {
    let env = Env::new().await;
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("event.json");
    std::fs::write(&good, order_data("4711")).unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{not json").unwrap();
    // JSON, but not what the schema asks (no status): refused as the relay would refuse it.
    let invalid = dir.path().join("invalid.json");
    std::fs::write(&invalid, r#"{"orderId":"4711","previousStatus":null}"#).unwrap();
    let run = |data: String| {
        std::process::Command::new(env!("CARGO_BIN_EXE_mes-events"))
            .args([
                "emit", "--type", ORDER_TYPE, "--key", "4711", "--data", &data,
            ])
            .env("MES_EVENTS_DATABASE__URL", &env.db.url)
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let out = run(format!("@{}", good.display()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(format!("@{}", bad.display()));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.json"));
    let out = run(format!("@{}", invalid.display()));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("breaks `required`") && err.contains("nothing was written"),
        "{err}"
    );
    assert_eq!(pending(&env.db).await, 1);
}

#[tokio::test]
async fn a_stream_at_its_limit_is_named_once_other_streams_flow_and_it_resumes_when_raised() {
    use async_nats::jetstream::stream;
    let env = Env::without_streams().await;
    let js = env.js().await;
    let limited = stream::Config {
        name: "MES_EVENTS".into(),
        subjects: catalog_subjects("MES_EVENTS"),
        max_messages: 20,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    };
    js.create_stream(limited.clone()).await.unwrap();
    js.create_stream(stream::Config {
        name: "MES_PV".into(),
        subjects: catalog_subjects("MES_PV"),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut relay = RelayProcess::spawn(&env.cfg, &[("RUST_LOG", "info")]);
    let client = env.db.client().await;
    let mut committed = Vec::new();
    for i in 0..50 {
        committed.push(emit_order(&client, &format!("order-{}", i % 5)).await);
    }
    eventually(Duration::from_secs(30), "the limit reported", || async {
        relay.stderr().contains("stream refuses messages")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await; // the relay's retries themselves
    let said = relay.stderr();
    let told = said
        .lines()
        .filter(|l| l.contains("stream refuses messages"))
        .collect::<Vec<_>>();
    assert_eq!(
        told.len(),
        1,
        "told once per state change, not per retry:\n{said}"
    );
    assert!(
        told[0].contains("MES_EVENTS") && told[0].contains("max_msgs"),
        "names the stream and the limit: {}",
        told[0]
    );
    // The other stream's events still go out while this one refuses.
    let mut pv = Vec::new();
    for i in 0..20 {
        pv.push(
            mes_events::store::write::emit(
                &client,
                "io.mesevents.mes.processvariable.changed.v1",
                "dryer1.temperature",
                &format!(
                    r#"{{"variableId":"dryer1.temperature","value":{i},"uom":"CEL","quality":"good","hierarchyScope":{{"site":"bsl"}}}}"#
                ),
                &Default::default(),
            )
            .await
            .unwrap(),
        );
    }
    eventually(
        Duration::from_secs(30),
        "MES_PV published meanwhile",
        || async {
            let n: i64 = client
                .query_one(
                    "select count(*) from mes_events.published where id = any($1)",
                    &[&pv],
                )
                .await
                .unwrap()
                .get(0);
            n == 20
        },
    )
    .await;
    let full = js
        .get_stream("MES_EVENTS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(full, 20, "MES_EVENTS still at its limit meanwhile");
    committed.extend(pv);
    js.update_stream(stream::Config {
        max_messages: 1_000,
        ..limited
    })
    .await
    .unwrap();
    env.drained(
        Duration::from_secs(30),
        "outbox drained once the limit is raised",
    )
    .await;
    assert!(relay.stderr().contains("stream takes messages again"));
    assert!(relay.terminate().await.success());
    env.assert_published_exactly_once(&committed).await;
}

#[tokio::test]
async fn the_published_log_is_kept_within_its_retention_while_events_keep_coming() {
    let env = Env::new().await;
    let mut cfg = env.cfg.clone();
    cfg.relay.retain_published = Duration::from_secs(1);
    cfg.relay.purge_interval = Duration::from_millis(300);
    // Nothing kept for a power cut: the log is then kept for its retention alone (a kept row's
    // entry stays as long as the row may be needed).
    cfg.relay.durability_horizon = Some(Duration::ZERO);
    let relay = spawn_relay(cfg, &env.nats.url()).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = write_events_until(&env.db, 20, Duration::from_millis(5), &stop);
    let c = env.db.client().await;
    let count = |sql: &'static str| {
        let c = &c;
        async move { c.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    let checks = async {
        // Events flow for longer than the retention and a few janitor turns...
        eventually(Duration::from_secs(30), "events published", || async {
            count("select count(*) from mes_events.published").await > 0
        })
        .await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        // ...and, while they still come, nothing older than the retention plus two turns (and a
        // margin for a loaded machine) stays in the log, though entries keep being added.
        let before = count("select coalesce(max(id), 0) from mes_events.published").await;
        for _ in 0..3 {
            eventually(
                Duration::from_secs(10),
                "old entries purged while events keep coming",
                || async {
                    count(
                        "select count(*) from mes_events.published \
                         where published_at < now() - interval '2500 ms'",
                    )
                    .await
                        == 0
                },
            )
            .await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert!(
            count("select coalesce(max(id), 0) from mes_events.published").await > before,
            "events were still being published"
        );
        stop.cancel();
    };
    let (written, ()) = tokio::join!(writer, checks);
    env.drained(Duration::from_secs(30), "drained").await;
    relay.stop().await;
    // Every event reached the stream once, whatever was purged from the log.
    assert_eq!(read_all(&env.js().await).await.len(), written.len());
}

/// A tmpfs mounted for one test, unmounted when dropped (after what used it).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// `None` where this process may not mount (not root, no CAP_SYS_ADMIN).
    fn mount(dir: &std::path::Path, size: &str) -> Option<Tmpfs> {
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_owned()))
    }

    fn resize(&self, size: &str) {
        let ok = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "remount {} with size {size}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test]
async fn a_disk_that_fills_up_under_the_stream_is_named_and_nothing_is_lost() {
    // The JetStream store on a 16 MiB filesystem, and a server told it may use 1 GiB: the
    // server's own limits never refuse anything, its writes fail with "no space left on device"
    // (a critical write error in its log) and the relay sees only PubAcks that never come.
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(dir.path(), "16m") else {
        eprintln!("skipped: mounting a tmpfs needs root (CI runs as root)");
        return;
    };
    let nats = NatsServer::start_with_config(&format!(
        "jetstream {{ store_dir: \"{}\", max_file_store: 1G }}",
        dir.path().display()
    ))
    .await;
    let env = Env::on(nats).await;
    let mut relay = RelayProcess::spawn(&env.cfg, &[("RUST_LOG", "info")]);

    // About 20 MiB of events (3 KiB each, 50 keys): more than the disk holds.
    let c = env.db.client().await;
    let mut committed = Vec::new();
    for _ in 0..6 {
        let rows = c
            .query(
                "select mes_events.emit($1, k, jsonb_build_object(
                    'orderId', k, 'previousStatus', 'released', 'status', 'running',
                    'hierarchyScope', jsonb_build_object('site', 'bsl', 'area', 'gran',
                                                         'workCenter', 'line2'),
                    'note', repeat('x', 3000)))
                   from generate_series(1, 1000) g,
                        lateral (select 'PO-' || (g % 50) as k) key",
                &[&ORDER_TYPE],
            )
            .await
            .unwrap();
        committed.extend(rows.iter().map(|r| r.get::<_, i64>(0)));
    }
    eventually(
        Duration::from_secs(60),
        "the relay names the stream and the likely cause",
        || async {
            let log = relay.stderr();
            log.contains("no PubAck in time")
                && log.contains("MES_EVENTS")
                && log.contains("disk full")
        },
    )
    .await;
    assert!(pending(&env.db).await > 0, "the disk filled before the end");
    let log = std::fs::read_to_string(match &env.nats {
        NatsServer::Process(p) => p.log_file(),
        NatsServer::Container { .. } => unreachable!("started with a local nats-server"),
    })
    .unwrap();
    assert!(
        log.contains("no space left on device"),
        "the server hit a real full disk: {log}"
    );

    // The operator makes room. A stream that had a write error stays refusing until its
    // server restarts (nats-server 2.15.1), so they restart it; the relay does the rest.
    disk.resize("256m");
    let mut env = env;
    env.nats.restart().await;
    env.drained(Duration::from_secs(120), "drained after the disk has room")
        .await;
    let status = relay.terminate().await;
    assert!(status.success(), "{}", relay.stderr());
    env.assert_published_exactly_once(&committed).await;
    drop(env);
    drop(disk);
}

#[tokio::test]
async fn logs_to_a_file_are_plain_json_when_asked_and_never_show_a_password() {
    let env = Env::new().await;
    // A password in the NATS URL (this server asks for none, so the relay still connects).
    let mut cfg = env.cfg.clone();
    let port = env.nats.url().rsplit(':').next().unwrap().to_owned();
    cfg.nats.url = format!("nats://relay:s3cret@127.0.0.1:{port}");
    for json in [false, true] {
        let format = if json { "json" } else { "text" };
        let mut relay = RelayProcess::spawn(
            &cfg,
            &[("RUST_LOG", "info"), ("MES_EVENTS_LOG__FORMAT", format)],
        );
        eventually(Duration::from_secs(20), "the relay is active", || async {
            relay.stderr().contains("active")
        })
        .await;
        assert!(relay.terminate().await.success());
        let log = relay.stderr();
        assert!(
            !log.contains('\u{1b}'),
            "{format}: an escape character in a file: {log}"
        );
        assert!(
            !log.contains("s3cret"),
            "{format}: the password was printed: {log}"
        );
        let start = log
            .lines()
            .find(|l| l.contains("mes-events relay starting"))
            .unwrap_or_else(|| panic!("{format}: no start-up line: {log}"));
        for part in [
            env!("CARGO_PKG_VERSION"),
            "relay:***@127.0.0.1",
            "MES_EVENTS",
        ] {
            assert!(
                start.contains(part),
                "{format}: start-up line without {part}: {start}"
            );
        }
        if json {
            for line in log.lines() {
                let v: serde_json::Value =
                    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                for key in ["timestamp", "level", "message", "target"] {
                    assert!(v.get(key).is_some(), "no {key}: {line}");
                }
            }
            let v: serde_json::Value = serde_json::from_str(start).unwrap();
            assert_eq!(v["version"], env!("CARGO_PKG_VERSION"), "fields: {start}");
        }
    }
}
