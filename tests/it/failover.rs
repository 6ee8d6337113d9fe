//! Leadership and PostgreSQL under faults: an active relay frozen (SIGSTOP), a half-open network
//! path between it and PostgreSQL, and PostgreSQL itself restarted, crashed and back. The lead
//! moves within the lease timeout, a relay that wakes up stays quiet, and nothing is lost,
//! duplicated or reordered.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mes_events::config::Config;
use rand::{Rng, SeedableRng};

use crate::support::pg::{PrivatePg, Stop};
use crate::support::proxy::Proxy;
use crate::support::*;

/// The lead's holder as the lease records it (`host:pid`).
async fn holder(db: &TestDb) -> Option<String> {
    mes_events::store::lease::lease(&db.client().await)
        .await
        .unwrap()
        .1
}

fn held_by(h: &Option<String>, relay: &RelayProcess) -> bool {
    h.as_deref()
        .is_some_and(|h| h.ends_with(&format!(":{}", relay.pid())))
}

/// Messages in both streams.
async fn stream_total(env: &Env) -> u64 {
    messages_in_streams(&env.js().await)
        .await
        .expect("stream info")
}

/// Waits until the active relay has published a good part of the load.
async fn under_load(env: &Env) {
    eventually(
        Duration::from_secs(20),
        "the first relay publishing",
        || async { stream_total(env).await > 200 },
    )
    .await;
}

/// Starts `a` and waits until it leads, then `b` and waits until it stands by.
async fn active_and_standby(env: &Env, a_cfg: &Config) -> (RelayProcess, RelayProcess) {
    let a = RelayProcess::spawn(a_cfg, &[("RUST_LOG", "info")]);
    eventually(Duration::from_secs(20), "the first relay leads", || async {
        held_by(&holder(&env.db).await, &a)
    })
    .await;
    let b = RelayProcess::spawn(&env.cfg, &[("RUST_LOG", "info")]);
    eventually(
        Duration::from_secs(20),
        "the second relay stands by",
        || async { b.stderr().contains("standing by") },
    )
    .await;
    (a, b)
}

/// Waits for `b` to take the lead after a fault at `since`, and then to publish; returns how
/// long the plant was without a publishing relay. The limit is the takeover the defaults promise
/// (lease timeout + standby retry) with slack for a loaded machine.
async fn takeover(env: &Env, b: &RelayProcess, since: Instant) -> Duration {
    let d = Config::default().relay;
    let limit = d.lease_timeout + d.standby_retry + Duration::from_secs(3);
    eventually(limit, "the standby takes the lead", || async {
        held_by(&holder(&env.db).await, b)
    })
    .await;
    let led = since.elapsed();
    let before = stream_total(env).await;
    eventually(limit, "the new leader publishes", || async {
        stream_total(env).await > before
    })
    .await;
    let publishing = since.elapsed();
    eprintln!(
        "takeover: lead after {led:?}, publishing after {publishing:?} (lease timeout {:?}, standby retry {:?})",
        d.lease_timeout, d.standby_retry
    );
    publishing
}

/// Messages the server received on the relay process `relay`'s own connection (named after
/// it; its watcher asks on another), from the server's monitoring.
fn messages_sent_by(monitoring: u16, relay: &RelayProcess) -> u64 {
    let name = format!(
        "mes-events relay {}:{}",
        mes_events::host::name(),
        relay.pid()
    );
    connections(monitoring)
        .iter()
        .filter(|c| c["name"].as_str() == Some(name.as_str()))
        .map(|c| c["in_msgs"].as_u64().unwrap_or(0))
        .sum()
}

#[tokio::test]
async fn a_frozen_active_relay_is_replaced_within_the_lease_timeout_and_stays_quiet_after() {
    // A server with monitoring, to count what the frozen relay sends once it wakes.
    let monitoring = free_port();
    let nats = NatsServer::start_with_config(&format!("http: \"127.0.0.1:{monitoring}\"")).await;
    let env = Env::on(nats).await;
    let (mut a, mut b) = active_and_standby(&env, &env.cfg).await;
    let writer = write_events_paced(&env.db, 5_000, 40, Duration::from_millis(20));
    let fault = async {
        // Freeze it while it publishes under load.
        under_load(&env).await;
        unsafe { libc::kill(a.pid(), libc::SIGSTOP) };
        let frozen = Instant::now();
        takeover(&env, &b, frozen).await;
        let epoch = mes_events::store::lease::lease(&env.db.client().await)
            .await
            .unwrap()
            .0;
        // What it sent before it froze (frozen, it cannot send more).
        let sent = messages_sent_by(monitoring, &a);
        unsafe { libc::kill(a.pid(), libc::SIGCONT) };
        (epoch, sent)
    };
    let (committed, (epoch, sent)) = tokio::join!(writer, fault);
    env.drained(Duration::from_secs(60), "outbox drained by the new leader")
        .await;
    // The old relay woke with a stale lease, found its session gone, and now stands by: it
    // took nothing back (same epoch, same holder)...
    eventually(
        Duration::from_secs(30),
        "the woken relay stands by",
        || async { a.stderr().contains("standing by") },
    )
    .await;
    let (now, h) = mes_events::store::lease::lease(&env.db.client().await)
        .await
        .unwrap();
    assert_eq!(now, epoch, "the woken relay must not take the lead back");
    assert!(held_by(&h, &b));
    // ...and published nothing after it woke: the server received no message from it since.
    // (Nor did it mark anything: a mark needs the lease's current epoch, which is b's.)
    // Publishes the relay made before the freeze but its client had not yet written to the
    // socket (queued in the client, or a lease check passed an instant before the freeze) leave
    // when the process resumes: a few, fenced by their expected sequence so none can land
    // (exactly once is checked below). A relay that went on publishing, or read the streams
    // back, would send hundreds.
    assert!(sent > 0, "the relay's connection was found on the server");
    let after = messages_sent_by(monitoring, &a);
    assert!(
        after - sent <= 16,
        "the woken relay sent {} messages to NATS",
        after - sent
    );
    // And nothing once it stands by.
    tokio::time::sleep(Duration::from_secs(2)).await; // a span to observe, not a wait for a state
    assert_eq!(
        messages_sent_by(monitoring, &a),
        after,
        "the standby sent messages"
    );
    assert!(b.terminate().await.success());
    assert!(a.terminate().await.success());
    env.assert_published_exactly_once(&committed).await;
}

#[tokio::test]
async fn a_half_open_path_to_postgres_moves_the_lead_and_duplicates_nothing() {
    let env = Env::new().await;
    let pg: tokio_postgres::Config = env.db.url.parse().unwrap();
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    let proxy = Proxy::start(([127, 0, 0, 1], port).into()).await;
    let mut behind_proxy = env.cfg.clone();
    behind_proxy.database.url = format!(
        "host=127.0.0.1 port={} dbname={} user=postgres",
        proxy.port(),
        env.db.name
    );
    let (mut a, mut b) = active_and_standby(&env, &behind_proxy).await;
    let writer = write_events_paced(&env.db, 5_000, 40, Duration::from_millis(20));
    let fault = async {
        under_load(&env).await;
        proxy.freeze();
        takeover(&env, &b, Instant::now()).await;
    };
    let (committed, ()) = tokio::join!(writer, fault);
    env.drained(Duration::from_secs(60), "outbox drained by the new leader")
        .await;
    proxy.heal();
    eventually(
        Duration::from_secs(60),
        "the cut-off relay stands by once the path heals",
        || async { a.stderr().contains("standing by") },
    )
    .await;
    assert!(held_by(&holder(&env.db).await, &b));
    assert!(b.terminate().await.success());
    assert!(a.terminate().await.success());
    env.assert_published_exactly_once(&committed).await;
}

/// Commits `total` events from `writers` writers over `keys` keys, each transaction 1–5 events,
/// reconnecting whenever PostgreSQL goes away. Returns the ids whose commit was confirmed (a
/// commit cut off by a crash may or may not have happened: the database says which).
async fn write_through_outages(
    db_url: &str,
    writers: usize,
    total: usize,
    keys: usize,
) -> Vec<i64> {
    let per_writer = total / writers;
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let url = db_url.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::from_os_rng();
            let mut confirmed = Vec::new();
            let mut attempted = 0;
            while attempted < per_writer {
                let Ok((mut client, conn)) =
                    tokio_postgres::connect(&url, tokio_postgres::NoTls).await
                else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                tokio::spawn(conn);
                while attempted < per_writer {
                    let n = rng.random_range(1..=5).min(per_writer - attempted);
                    let keys: Vec<String> = (0..n)
                        .map(|_| format!("order-{}", rng.random_range(0..keys)))
                        .collect();
                    let done: Result<Vec<i64>, tokio_postgres::Error> = async {
                        let tx = client.transaction().await?;
                        let mut ids = Vec::new();
                        for key in &keys {
                            ids.push(
                                mes_events::store::write::emit(
                                    &tx,
                                    ORDER_TYPE,
                                    key,
                                    &order_data(key),
                                    &Default::default(),
                                )
                                .await?,
                            );
                        }
                        tx.commit().await?;
                        Ok(ids)
                    }
                    .await;
                    match done {
                        Ok(ids) => {
                            attempted += ids.len();
                            confirmed.extend(ids);
                        }
                        Err(e)
                            if e.code()
                                == Some(
                                    &tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED,
                                ) => {}
                        Err(_) => break, // PostgreSQL went away: reconnect
                    }
                }
            }
            confirmed
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// Every event the database holds: published or still pending (what was committed, whatever the
/// writers were told).
async fn stored_ids(db: &TestDb) -> Vec<i64> {
    db.client()
        .await
        .query(
            "select id from mes_events.outbox where rejected_at is null and discarded_at is null
             union all select id from mes_events.published",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Servers of their own: a private PostgreSQL the test may stop, and a nats-server.
async fn private_env() -> (Arc<PrivatePg>, Env) {
    init_tracing();
    let pg = Arc::new(tokio::task::spawn_blocking(PrivatePg::start).await.unwrap());
    let db = TestDb::new_on(&pg.url()).await;
    let nats = NatsServer::start().await;
    let cfg = config(&db, &nats);
    let env = Env { nats, db, cfg };
    create_streams(&env.js().await, Duration::from_secs(120)).await;
    (pg, env)
}

async fn pg_ctl(pg: &Arc<PrivatePg>, stop: Option<Stop>) {
    let pg = pg.clone();
    tokio::task::spawn_blocking(move || match stop {
        Some(how) => pg.stop(how),
        None => pg.start_server(),
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn postgres_restarted_three_times_and_crashed_once_loses_and_duplicates_nothing() {
    let (pg, env) = private_env().await;
    let mut relay = RelayProcess::spawn(&env.cfg, &[]);
    let writers = write_through_outages(&env.db.url, 4, 20_000, 500);
    let outages = async {
        for (i, how) in [Stop::Fast, Stop::Fast, Stop::Immediate, Stop::Fast]
            .into_iter()
            .enumerate()
        {
            eventually(Duration::from_secs(60), "events flowing again", || async {
                stream_total(&env).await as usize > 2_000 * (i + 1)
            })
            .await;
            pg_ctl(&pg, Some(how)).await;
            tokio::time::sleep(Duration::from_millis(700)).await; // the outage itself
            pg_ctl(&pg, None).await;
        }
    };
    let (confirmed, ()) = tokio::join!(writers, outages);
    env.drained(Duration::from_secs(120), "outbox drained after the outages")
        .await;
    assert!(relay.terminate().await.success());
    let stored = stored_ids(&env.db).await;
    let lost: Vec<&i64> = confirmed.iter().filter(|id| !stored.contains(id)).collect();
    assert!(
        lost.is_empty(),
        "commits confirmed but not stored: {lost:?}"
    );
    env.assert_published_exactly_once(&stored).await;
}

#[tokio::test]
async fn the_relay_publishes_again_within_a_second_of_postgres_coming_back() {
    let (pg, mut env) = private_env().await;
    // The shipped back-off, not the tests' short one: an outage must not leave it idle long.
    env.cfg.relay.max_backoff = Config::default().relay.max_backoff;
    let relay = env.spawn_relay().await;
    emit_order(&env.db.client().await, "before").await;
    env.drained(Duration::from_secs(20), "first event published")
        .await;
    pg_ctl(&pg, Some(Stop::Fast)).await;
    tokio::time::sleep(Duration::from_secs(14)).await; // an outage long enough to grow any back-off
    pg_ctl(&pg, None).await;
    let back = Instant::now();
    let before = stream_total(&env).await;
    emit_order(&env.db.client().await, "after").await;
    eventually(
        Duration::from_secs(3),
        "published within about a second",
        || async { stream_total(&env).await > before },
    )
    .await;
    eprintln!(
        "published {:?} after PostgreSQL accepted connections again",
        back.elapsed()
    );
    relay.stop().await;
}
