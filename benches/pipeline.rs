//! End-to-end benchmark of mes-events against servers it starts itself (a nats-server from
//! NATS_SERVER_BIN/PATH, a database on the local PostgreSQL). Run: `scripts/bench.sh`
//! (= set-up + `cargo bench --bench pipeline`). Figures on a shared 2-core machine are noisy
//! (the ceiling alone ranges 47,000-87,000 events/s back to back), so the relay is compared
//! with ceilings measured right before and after each of its runs, as ratios, over three rounds.
//!
//! 1. Ceiling: the messages the relay would send (same size, headers, subjects, stream config,
//!    `Nats-Expected-Last-Sequence` included), prebuilt, published pipelined by one async-nats
//!    client.
//! 2. Relay throughput: a 200,000-event outbox of 1 KiB events drained, first row to last mark.
//!    For both, the CPU each process spent per event (nats-server, every PostgreSQL process,
//!    the publisher), from /proc: where the time goes.
//! 3. Latency: commit of `mes_events.emit` → receipt by a durable pull consumer, 1,000 events/s
//!    for 30 s, with NOTIFY and poll-only.
//! 4. Memory: the relay's peak RSS (a separate process) draining a 1,000,000-event backlog.
//! 5. Fan-out: 10 durable consumers reading the same 200,000 events at once.
//!
//! Prints a table and writes target/bench/pipeline.json. For quick iteration, `BENCH_ONLY=relay`
//! stops after one round (ceiling, relay, ceiling), `BENCH_ONLY=latency` measures latency only,
//! and `BENCH_ONLY=memory` the relay process draining `BENCH_BACKLOG` events (200,000) only.
//! `BENCH_ONLY=sustained` is the storage run instead: `BENCH_RATE` events/s (2,000) written for
//! `BENCH_MINUTES` (10) with the published log kept `BENCH_RETAIN_S` seconds (120), sampling
//! the outbox's and the log's sizes every 30 s: they must be flat once the retention is reached.
//! `RUST_LOG` shows the relay's logs.
//!
//! It stays one file of about 800 lines: `cargo bench` runs one target, and every measurement shares
//! the servers, the fill and the CPU accounting it sets up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use chrono::Utc;
use futures::StreamExt;
use mes_events::config::Config;
use mes_events::store::write;
use tokio_util::sync::CancellationToken;

const BACKLOG: usize = 1_000_000;
/// Relay runs, each between two ceiling runs.
const ROUNDS: usize = 3;

/// Same allocator as the binary: the relay runs in this process for most measurements.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;
use common::throughput::{
    ceiling, data, median, relay_drain, spawn_relay, wait_drained, CpuPerEvent, EVENTS, FILL, ORDER,
};
use common::{machine, Res, Servers};

#[tokio::main]
async fn main() -> Res<()> {
    common::init_tracing();
    let servers = Servers::start("mes_bench").await?;
    let result = run(&servers).await;
    servers.stop().await?;
    result
}

async fn run(servers: &Servers) -> Res<()> {
    let (nats, db_url) = (&servers.nats, servers.db_url.clone());
    let session = servers.migrated().await?;
    let db = &session.client;

    let mut cfg = Config::default();
    cfg.database.url = db_url.clone();
    cfg.nats.url = nats.url();
    cfg.events.site = "bsl".into();
    let client = mes_events::nats::connect(&cfg.nats, "bench", false).await?;
    let js = mes_events::nats::jetstream(client.clone(), &cfg.nats, cfg.relay.max_in_flight);
    let decl = mes_events::provision::load_dir(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/nats"
    )))
    .map_err(|e| format!("{e:?}"))?;
    mes_events::provision::apply(&js, &decl, Default::default()).await?;
    let machine = machine();
    println!("machine: {machine}");
    let mut results = serde_json::Map::new();

    // 1 and 2. Ceiling and relay, in bracketed rounds: C F R C F R C F R C (C ceiling, F fill,
    // R relay drain). Each relay run is compared with the two ceilings around it.
    let nats_pid = nats.pid().ok_or("nats-server is not running")?;
    if std::env::var("BENCH_ONLY").as_deref() == Ok("memory") {
        // Quick look at the relay process's memory on a smaller backlog (BENCH_BACKLOG events).
        let n: i32 = std::env::var("BENCH_BACKLOG")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(200_000);
        db.query_one(FILL, &[&ORDER, &n]).await?;
        let (rss_kib, drain) = relay_process_drain(&cfg, db).await?;
        println!(
            "backlog: {n} drained in {:.1} s, relay peak RSS {:.1} MiB",
            drain.as_secs_f64(),
            rss_kib as f64 / 1024.0
        );
        return Ok(());
    }
    if std::env::var("BENCH_ONLY").as_deref() == Ok("sustained") {
        return sustained(&cfg, &js, db, &db_url).await;
    }
    if std::env::var("BENCH_ONLY").as_deref() == Ok("latency") {
        println!(
            "latency (NOTIFY):    {}",
            latency(&cfg, &js, &db_url, true).await?.line()
        );
        println!(
            "latency (poll only): {}",
            latency(&cfg, &js, &db_url, false).await?.line()
        );
        return Ok(());
    }
    let rounds = match std::env::var("BENCH_ONLY").as_deref() {
        Ok("relay") => 1,
        _ => ROUNDS,
    };
    let mut ceilings = vec![];
    let mut relays = vec![];
    for round in 0..=rounds {
        let c = ceiling(&js, nats_pid).await?;
        println!(
            "ceiling: {:.0} events/s (pipelined publish of {EVENTS} prebuilt relay messages) {}",
            c.rate,
            c.cpu.line()
        );
        ceilings.push(c);
        if round == rounds {
            break;
        }
        let t = Instant::now();
        db.query_one(FILL, &[&ORDER, &(EVENTS as i32)]).await?;
        println!(
            "  (filled {EVENTS} rows in {:.1} s)",
            t.elapsed().as_secs_f64()
        );
        let r = relay_drain(&cfg, &js, db, nats_pid).await?;
        println!(
            "relay:   {:.0} events/s ({EVENTS} in {:.2} s) {}",
            r.rate,
            EVENTS as f64 / r.rate,
            r.cpu.line()
        );
        relays.push(r);
        if round + 1 == rounds {
            // 5. Fan-out over the last relay run's 200,000 events, before a ceiling purges them.
            if rounds > 1 {
                let (aggregate, per) = fan_out(&js, 10).await?;
                println!(
                    "fan-out: 10 consumers x {EVENTS}: {aggregate:.0} events/s together, {:.0}-{:.0} each",
                    per.iter().cloned().fold(f64::MAX, f64::min),
                    per.iter().cloned().fold(0.0, f64::max)
                );
                results.insert("fanout_consumers".into(), 10.into());
                results.insert("fanout_aggregate_events_per_s".into(), aggregate.into());
                results.insert("fanout_per_consumer_events_per_s".into(), per.into());
            }
        }
    }
    let ratios: Vec<f64> = relays
        .iter()
        .enumerate()
        .map(|(i, r)| r.rate / ((ceilings[i].rate + ceilings[i + 1].rate) / 2.0))
        .collect();
    let ratio = median(&ratios);
    let ceiling_rate = median(&ceilings.iter().map(|c| c.rate).collect::<Vec<_>>());
    let relay_rate = median(&relays.iter().map(|r| r.rate).collect::<Vec<_>>());
    println!(
        "relay / ceiling around it: {} -> median {ratio:.2}",
        ratios
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    results.insert("ceiling_events_per_s".into(), ceiling_rate.into());
    results.insert(
        "ceiling_runs_events_per_s".into(),
        ceilings.iter().map(|c| c.rate).collect::<Vec<_>>().into(),
    );
    results.insert("relay_events_per_s".into(), relay_rate.into());
    results.insert(
        "relay_runs_events_per_s".into(),
        relays.iter().map(|r| r.rate).collect::<Vec<_>>().into(),
    );
    results.insert("relay_ratio_to_ceiling".into(), ratio.into());
    results.insert("relay_ratio_runs".into(), ratios.into());
    results.insert(
        "ceiling_cpu_us_per_event".into(),
        CpuPerEvent::median(ceilings.iter().map(|c| &c.cpu)).json(),
    );
    results.insert(
        "relay_cpu_us_per_event".into(),
        CpuPerEvent::median(relays.iter().map(|r| &r.cpu)).json(),
    );

    if std::env::var("BENCH_ONLY").as_deref() == Ok("relay") {
        return Ok(()); // quick iteration on relay throughput: one round
    }

    // 3. Latency, with NOTIFY and poll-only.
    let lat_notify = latency(&cfg, &js, &db_url, true).await?;
    println!("latency (NOTIFY):    {}", lat_notify.line());
    let lat_poll = latency(&cfg, &js, &db_url, false).await?;
    println!("latency (poll only): {}", lat_poll.line());

    // 4. Memory and time draining a 1,000,000-event backlog, relay as its own process.
    let t = Instant::now();
    for _ in 0..(BACKLOG / 200_000) {
        db.query_one(FILL, &[&ORDER, &200_000i32]).await?;
    }
    println!(
        "  (filled {BACKLOG} rows in {:.1} s)",
        t.elapsed().as_secs_f64()
    );
    let (rss_kib, backlog_drain) = relay_process_drain(&cfg, db).await?;
    println!(
        "backlog: {BACKLOG} drained in {:.1} s ({:.0} events/s), relay peak RSS {:.1} MiB",
        backlog_drain.as_secs_f64(),
        BACKLOG as f64 / backlog_drain.as_secs_f64(),
        rss_kib as f64 / 1024.0
    );

    results.insert("date".into(), Utc::now().to_rfc3339().into());
    results.insert("machine".into(), machine.into());
    results.insert("rounds".into(), rounds.into());
    results.insert("latency_notify_ms".into(), lat_notify.json());
    results.insert("latency_poll_only_ms".into(), lat_poll.json());
    results.insert("backlog_events".into(), BACKLOG.into());
    results.insert("backlog_drain_s".into(), backlog_drain.as_secs_f64().into());
    results.insert(
        "relay_peak_rss_mib".into(),
        (rss_kib as f64 / 1024.0).into(),
    );
    let out = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench"));
    std::fs::create_dir_all(out)?;
    std::fs::write(
        out.join("pipeline.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    println!("\n{}", table(&results));
    println!("written: target/bench/pipeline.json");
    Ok(())
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Storage at a sustained rate: a writer emits `BENCH_RATE` events/s (a statement every 100 ms)
/// while the relay publishes them and its janitor purges the published log past the retention.
/// Every 30 s: the outbox's and the log's total size (table, indexes, TOAST), their live and dead
/// tuples, and what is pending.
async fn sustained(
    cfg: &Config,
    js: &jetstream::Context,
    db: &tokio_postgres::Client,
    db_url: &str,
) -> Res<()> {
    let rate: i32 = env_or("BENCH_RATE", 2_000);
    let minutes: u64 = env_or("BENCH_MINUTES", 10);
    let retain = Duration::from_secs(env_or("BENCH_RETAIN_S", 120));
    let mut cfg = cfg.clone();
    cfg.relay.retain_published = retain;
    let relay = spawn_relay(&cfg, js);
    let stop = CancellationToken::new();
    let writer = tokio::spawn({
        let (stop, db_url) = (stop.clone(), db_url.to_owned());
        async move {
            let s = mes_events::store::session::connect(&db_url, "bench writer").await?;
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut written = 0u64;
            while !stop.is_cancelled() {
                tick.tick().await;
                s.client.query_one(FILL, &[&ORDER, &(rate / 10)]).await?;
                written += (rate / 10) as u64;
            }
            Res::Ok(written)
        }
    });
    println!(
        "sustained: {rate} events/s for {minutes} min, published log kept {} s, janitor every {} s",
        retain.as_secs(),
        10
    );
    println!("   t   outbox MiB (live/dead rows)   log MiB (live/dead rows)   pending");
    let started = Instant::now();
    let mut samples = vec![];
    while started.elapsed() < Duration::from_secs(minutes * 60) {
        tokio::time::sleep(Duration::from_secs(30)).await;
        let r = db
            .query_one(
                "select pg_total_relation_size('mes_events.outbox')::float8 / 1048576,
                        pg_total_relation_size('mes_events.published')::float8 / 1048576,
                        (select n_live_tup from pg_stat_user_tables where relid = 'mes_events.outbox'::regclass),
                        (select n_dead_tup from pg_stat_user_tables where relid = 'mes_events.outbox'::regclass),
                        (select n_live_tup from pg_stat_user_tables where relid = 'mes_events.published'::regclass),
                        (select n_dead_tup from pg_stat_user_tables where relid = 'mes_events.published'::regclass),
                        (select count(*) from mes_events.outbox where stream_seq is null
                            and rejected_at is null and discarded_at is null)",
                &[],
            )
            .await?;
        let (o, l): (f64, f64) = (r.get(0), r.get(1));
        let t = started.elapsed().as_secs();
        println!(
            "{t:>4}s  {o:>8.1} ({:>7}/{:>7})        {l:>8.1} ({:>8}/{:>7})   {:>7}",
            r.get::<_, i64>(2),
            r.get::<_, i64>(3),
            r.get::<_, i64>(4),
            r.get::<_, i64>(5),
            r.get::<_, i64>(6)
        );
        samples.push((t, o, l));
    }
    stop.cancel();
    let written = writer.await??;
    relay.0.cancel();
    relay.1.await??;
    // Flat: the largest size once the retention is reached (plus one janitor turn and one
    // sample) against the size at that point.
    let settled = retain.as_secs() + 40;
    let after: Vec<_> = samples.iter().filter(|s| s.0 >= settled).collect();
    if let (Some(first), Some(max_o), Some(max_l)) = (
        after.first(),
        after.iter().map(|s| s.1).reduce(f64::max),
        after.iter().map(|s| s.2).reduce(f64::max),
    ) {
        println!(
            "written {written} events; once the retention was reached (t = {} s): outbox {:.1} → max {:.1} MiB, published log {:.1} → max {:.1} MiB",
            first.0, first.1, max_o, first.2, max_l
        );
    }
    Ok(())
}

async fn fan_out(js: &jetstream::Context, n: usize) -> Res<(f64, Vec<f64>)> {
    let stream = js.get_stream("MES_EVENTS").await?;
    let mut consumers = Vec::new();
    for i in 0..n {
        let c: consumer::PullConsumer = stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(format!("fan{i}")),
                ack_policy: consumer::AckPolicy::Explicit,
                max_ack_pending: 10_000,
                ..Default::default()
            })
            .await?;
        consumers.push(c);
    }
    let started = Instant::now();
    let tasks: Vec<_> = consumers
        .into_iter()
        .map(|c| {
            tokio::spawn(async move {
                let t = Instant::now();
                let mut msgs = c.stream().max_messages_per_batch(1000).messages().await?;
                let mut n = 0;
                while n < EVENTS {
                    let m = msgs.next().await.ok_or("stream ended")??;
                    m.ack().await?;
                    n += 1;
                }
                Res::Ok(EVENTS as f64 / t.elapsed().as_secs_f64())
            })
        })
        .collect();
    let mut per = Vec::new();
    for t in tasks {
        per.push(t.await??);
    }
    Ok(((n * EVENTS) as f64 / started.elapsed().as_secs_f64(), per))
}

struct Latency {
    samples: Vec<f64>,
}

impl Latency {
    fn pct(&self, p: f64) -> f64 {
        let i = ((self.samples.len() as f64 - 1.0) * p).round() as usize;
        self.samples[i]
    }
    fn line(&self) -> String {
        format!(
            "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} events)",
            self.pct(0.5),
            self.pct(0.9),
            self.pct(0.99),
            self.samples.last().copied().unwrap_or(0.0),
            self.samples.len()
        )
    }
    fn json(&self) -> serde_json::Value {
        serde_json::json!({"p50": self.pct(0.5), "p90": self.pct(0.9), "p99": self.pct(0.99),
                           "max": self.samples.last(), "events": self.samples.len()})
    }
}

/// Commit → receipt at 1,000 events/s for 30 s.
async fn latency(
    cfg: &Config,
    js: &jetstream::Context,
    db_url: &str,
    notify: bool,
) -> Res<Latency> {
    let mut cfg = cfg.clone();
    cfg.relay.notify = notify;
    let name = if notify { "lat-notify" } else { "lat-poll" };
    let stream = js.get_stream("MES_EVENTS").await?;
    let c: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(name.into()),
            deliver_policy: consumer::DeliverPolicy::New,
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await?;
    let relay = spawn_relay(&cfg, js);
    let committed: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
    let received: Arc<Mutex<Vec<(i64, Instant)>>> = Arc::default();
    let total = 30_000;
    let reader = tokio::spawn({
        let received = received.clone();
        async move {
            let mut msgs = c.stream().max_messages_per_batch(100).messages().await?;
            while received.lock().unwrap().len() < total {
                let m = msgs.next().await.ok_or("stream ended")??;
                let now = Instant::now();
                let id = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("ce-sequence"))
                    .and_then(|v| v.as_str().parse::<i64>().ok())
                    .unwrap_or(0);
                received.lock().unwrap().push((id, now));
                m.ack().await?;
            }
            Res::Ok(())
        }
    });
    let writer = mes_events::store::session::connect(db_url, "bench writer").await?;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let payload = data("PO-1");
    for i in 0..total {
        tick.tick().await;
        let key = format!("PO-{}", i % 1000);
        let body = payload.replace("PO-1\"", &format!("{key}\""));
        let id = write::emit(&writer.client, ORDER, &key, &body, &Default::default()).await?;
        committed.lock().unwrap().insert(id, Instant::now());
    }
    tokio::time::timeout(Duration::from_secs(60), reader).await???;
    relay.0.cancel();
    relay.1.await??;
    let samples = common::latencies_ms(&committed.lock().unwrap(), &received.lock().unwrap());
    Ok(Latency { samples })
}

/// Runs `mes-events relay` as a process until the outbox is drained; (peak RSS KiB, drain time).
async fn relay_process_drain(cfg: &Config, db: &tokio_postgres::Client) -> Res<(u64, Duration)> {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mes-events"))
        .arg("relay")
        .env("MES_EVENTS_DATABASE__URL", &cfg.database.url)
        .env("MES_EVENTS_NATS__URL", &cfg.nats.url)
        .env("MES_EVENTS_EVENTS__SITE", &cfg.events.site)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().ok_or("relay has no pid")?;
    let started = Instant::now();
    wait_drained(db, Duration::from_secs(1200)).await?;
    let drain = started.elapsed();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or("no VmHWM")?;
    unsafe_sigterm(pid);
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    Ok((hwm, drain))
}

fn unsafe_sigterm(pid: u32) {
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
}

fn table(r: &serde_json::Map<String, serde_json::Value>) -> String {
    let f = |k: &str| r.get(k).and_then(|v| v.as_f64()).unwrap_or(0.0);
    let l = |k: &str, p: &str| {
        r.get(k)
            .and_then(|v| v.get(p))
            .and_then(|v| v.as_f64())
            .unwrap_or(0.0)
    };
    let runs = |k: &str, digits: usize| {
        r.get(k)
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_f64())
                    .map(|v| format!("{v:.digits$}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    let cpu = |k: &str| {
        format!(
            "nats-server {:.1} + PostgreSQL {:.1} + publisher {:.1} = {:.1} us",
            l(k, "nats_server"),
            l(k, "postgres"),
            l(k, "publisher"),
            l(k, "total")
        )
    };
    format!(
        "| measure | result | target |\n| --- | --- | --- |\n\
         | ceiling: pipelined JetStream publish, relay's messages (1 KiB), median of {} runs | {:.0} events/s ({}) | |\n\
         | relay: 200,000-event outbox drained, median of {} runs | {:.0} events/s ({}) | |\n\
         | relay / the two ceilings around each run, median | {:.2} x ({}) | >= 0.75 x |\n\
         | CPU per event, ceiling | {} | |\n\
         | CPU per event, relay | {} | |\n\
         | latency commit -> consumer, 1,000/s, NOTIFY | p50 {:.2} / p90 {:.2} / p99 {:.2} / max {:.2} ms | p50 <= 3, p99 <= 10 |\n\
         | latency, poll only (1 s poll) | p50 {:.0} / p90 {:.0} / p99 {:.0} / max {:.0} ms | |\n\
         | 1,000,000-event backlog: drain time, relay peak RSS | {:.1} s ({:.0} events/s), {:.1} MiB | <= 32 MiB |\n\
         | fan-out: 10 durable consumers x 200,000 | {:.0} events/s together | |",
        f("rounds") as usize + 1,
        f("ceiling_events_per_s"),
        runs("ceiling_runs_events_per_s", 0),
        f("rounds"),
        f("relay_events_per_s"),
        runs("relay_runs_events_per_s", 0),
        f("relay_ratio_to_ceiling"),
        runs("relay_ratio_runs", 2),
        cpu("ceiling_cpu_us_per_event"),
        cpu("relay_cpu_us_per_event"),
        l("latency_notify_ms", "p50"),
        l("latency_notify_ms", "p90"),
        l("latency_notify_ms", "p99"),
        l("latency_notify_ms", "max"),
        l("latency_poll_only_ms", "p50"),
        l("latency_poll_only_ms", "p90"),
        l("latency_poll_only_ms", "p99"),
        l("latency_poll_only_ms", "max"),
        f("backlog_drain_s"),
        f("backlog_events") / f("backlog_drain_s").max(1e-9),
        f("relay_peak_rss_mib"),
        f("fanout_aggregate_events_per_s"),
    )
}
