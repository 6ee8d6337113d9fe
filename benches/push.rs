//! Push benchmark against servers it starts itself (a nats-server from NATS_SERVER_BIN/PATH, a
//! database on the local PostgreSQL) and an in-process HTTP receiver (axum, keep-alive, answers
//! 204 without verifying: the sender is measured, not the receiver). Run: `scripts/bench.sh
//! --bench push`.
//!
//! 1. Throughput: 20,000 events over 256 keys already in the stream, delivered by the push
//!    service to one endpoint (16 keys at once), first receipt to last.
//! 2. The same requests, prebuilt and signed, posted by a bare HTTP client (reqwest, 16 at a
//!    time, keep-alive) to the same receiver: the ceiling, and push's share of it.
//! 3. Latency: commit of `mes_events.emit` → receipt by the endpoint, 200 events/s for 20 s,
//!    through the relay and the push service.
//! 4. Latency as in 3, while the same push service also delivers to a system whose endpoint
//!    takes every request and never answers (16 requests always waiting for their timeout).
//! 5. Batched mode: the whole stream (about 28,000 events) to another system, `mode =
//!    "batched"`, up to 100 events per request, 4 requests at once.
//!
//! Prints a table and writes target/bench/push.json.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use mes_events::config::Config;
use mes_events::store::write;
use tokio_util::sync::CancellationToken;

const ORDER: &str = "io.mesevents.mes.processorder.statuschanged.v1";
const EVENTS: usize = 20_000;
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;
use common::{machine, Res, Servers};

/// What the receiver saw: (ce-sequence, when).
type Seen = Arc<Mutex<Vec<(i64, Instant)>>>;

#[tokio::main]
async fn main() -> Res<()> {
    common::init_tracing();
    let servers = Servers::start("mes_bench_push").await?;
    let result = run(&servers).await;
    servers.stop().await?;
    result
}

/// The receiver: records each request's `ce-sequence` and answers 204.
async fn receiver(seen: Seen) -> Res<u16> {
    use axum::http::{HeaderMap, StatusCode};
    let app = axum::Router::new().route(
        "/hooks/mes",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let seen = seen.clone();
            async move {
                let now = Instant::now();
                let batched = headers
                    .get("content-type")
                    .is_some_and(|v| v.as_bytes().starts_with(b"application/cloudevents-batch"));
                let seqs: Vec<i64> = if batched {
                    let events: Vec<serde_json::Value> =
                        serde_json::from_slice(&body).unwrap_or_default();
                    events
                        .iter()
                        .map(|e| {
                            e["sequence"]
                                .as_str()
                                .and_then(|s| s.parse().ok())
                                .unwrap_or(0)
                        })
                        .collect()
                } else {
                    vec![headers
                        .get("ce-sequence")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0)]
                };
                seen.lock()
                    .unwrap()
                    .extend(seqs.into_iter().map(|s| (s, now)));
                StatusCode::NO_CONTENT
            }
        }),
    );
    // An endpoint that takes every request and never answers.
    let app = app.route(
        "/hooks/stuck",
        axum::routing::post(|| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::NO_CONTENT
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(port)
}

async fn wait_for(seen: &Seen, n: usize, limit: Duration) -> Res<()> {
    let deadline = Instant::now() + limit;
    while seen.lock().unwrap().len() < n {
        if Instant::now() > deadline {
            return Err(format!("only {} of {n} received", seen.lock().unwrap().len()).into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn run(servers: &Servers) -> Res<()> {
    let (nats, db_url) = (&servers.nats, servers.db_url.clone());
    let session = servers.migrated().await?;
    let db = &session.client;
    let mut cfg = Config::default();
    cfg.database.url = db_url.clone();
    cfg.nats.url = nats.url();
    cfg.events.site = "bsl".into();

    let seen: Seen = Arc::default();
    let port = receiver(seen.clone()).await?;
    let dir = tempfile::tempdir()?;
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/nats/streams.toml"),
        dir.path().join("streams.toml"),
    )?;
    let secret = dir.path().join("hook.whsec");
    std::fs::write(&secret, SECRET)?;
    std::fs::write(
        dir.path().join("hook.toml"),
        format!(
            "[system]\nname = \"hook\"\n[[consumer]]\nstream = \"MES_EVENTS\"\nmax_ack_pending = 20000\n[push]\nurl = \"http://127.0.0.1:{port}/hooks/mes\"\nsecret_file = {:?}\nconcurrency = 16\n",
            secret.display()
        ),
    )?;
    let decl = mes_events::provision::load_dir(dir.path()).map_err(|e| format!("{e:?}"))?;
    let client = mes_events::nats::connect(&cfg.nats, "bench", false).await?;
    let js = mes_events::nats::jetstream(client, &cfg.nats, cfg.relay.max_in_flight);
    mes_events::provision::apply(&js, &decl, Default::default()).await?;
    println!("machine: {}", machine());

    // The events, in the stream before the push service starts.
    db.query_one(
        "select count(mes_events.emit($1, k, jsonb_build_object('orderId', k, 'previousStatus', 'released',
            'status', 'running', 'hierarchyScope', jsonb_build_object('site', 'bsl', 'area', 'gran',
            'workCenter', 'line2'), 'note', repeat('x', 880))))
          from generate_series(1, $2) g, lateral (select 'PO-' || (g % 256) as k) key",
        &[&ORDER, &(EVENTS as i32)],
    )
    .await?;
    let relay_stop = CancellationToken::new();
    let relay = tokio::spawn({
        let (cfg, js, stop) = (cfg.clone(), js.clone(), relay_stop.clone());
        async move { mes_events::relay::run(&cfg, js, stop).await }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let c = mes_events::store::operator::counts(db).await?;
        if c.pending == 0 {
            break;
        }
        if Instant::now() > deadline {
            return Err("the relay did not drain the outbox".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 1. Push.
    let (push_stop, push) = start_push(&cfg, &decl)?;
    let push_rate = rate(&seen, EVENTS).await?;

    // 2. The same requests by a bare client, 16 at a time.
    let requests = prebuilt(&js).await?;
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/hooks/mes");
    let queue = Arc::new(Mutex::new(requests));
    seen.lock().unwrap().clear();
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..16 {
        let (queue, http, url) = (queue.clone(), http.clone(), url.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let Some(r) = queue.lock().unwrap().pop() else {
                    return Res::Ok(());
                };
                let mut b = http.post(&url);
                for (k, v) in &r.headers {
                    b = b.header(k, v);
                }
                b.body(r.body).send().await?.error_for_status()?;
            }
        }));
    }
    for w in workers {
        w.await??;
    }
    let bare_rate = EVENTS as f64 / started.elapsed().as_secs_f64();

    // 3. Latency, commit → endpoint, at 200 events/s.
    let ms = latency_ms(&db_url, &seen, 4_000).await?;
    let pct = |ms: &[f64], p: f64| ms[((ms.len() as f64 - 1.0) * p) as usize];
    push_stop.cancel();
    push.await??;

    // 4. The same, while the same push service also delivers to a system whose endpoint takes
    //    every request and never answers (16 requests always waiting for their timeout, retried
    //    without pause): its neighbour's latency should not move.
    std::fs::write(
        dir.path().join("stuck.toml"),
        format!(
            "[system]\nname = \"stuck\"\n[[consumer]]\nstream = \"MES_EVENTS\"\n[push]\nurl = \"http://127.0.0.1:{port}/hooks/stuck\"\nsecret_file = {:?}\ntimeout = \"2s\"\nretry = [\"1s\"]\nafter_last = \"hold\"\npause_after = 1000000\n",
            secret.display()
        ),
    )?;
    let decl = mes_events::provision::load_dir(dir.path()).map_err(|e| format!("{e:?}"))?;
    mes_events::provision::apply(&js, &decl, Default::default()).await?;
    let (push_stop, push) = start_push(&cfg, &decl)?;
    latency_ms(&db_url, &seen, 1).await?; // delivering again (a new pin gathers first)
    let beside = latency_ms(&db_url, &seen, 4_000).await?;
    push_stop.cancel();
    push.await??;
    relay_stop.cancel();
    relay.await??;

    // 5. Batched mode: the whole stream again, to another system.
    let all = js
        .get_stream("MES_EVENTS")
        .await?
        .info()
        .await?
        .state
        .messages as usize;
    let bdir = tempfile::tempdir()?;
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/nats/streams.toml"),
        bdir.path().join("streams.toml"),
    )?;
    std::fs::write(
        bdir.path().join("hook-batched.toml"),
        format!(
            "[system]\nname = \"hook-batched\"\n[[consumer]]\nstream = \"MES_EVENTS\"\nmax_ack_pending = 20000\n[push]\nurl = \"http://127.0.0.1:{port}/hooks/mes\"\nsecret_file = {:?}\nmode = \"batched\"\nmax_batch = 100\nconcurrency = 4\n",
            secret.display()
        ),
    )?;
    let bdecl = mes_events::provision::load_dir(bdir.path()).map_err(|e| format!("{e:?}"))?;
    mes_events::provision::apply(&js, &bdecl, Default::default()).await?;
    seen.lock().unwrap().clear();
    let (push_stop, push) = start_push(&cfg, &bdecl)?;
    let batched_rate = rate(&seen, all).await?;
    let requests = {
        // The events of one request were seen at one instant.
        let mut at: Vec<Instant> = seen.lock().unwrap().iter().map(|(_, t)| *t).collect();
        at.dedup();
        at.len()
    };
    push_stop.cancel();
    push.await??;

    println!(
        "push, one endpoint (keep-alive, 16 keys at once, {EVENTS} events of 1 KiB over 256 keys):"
    );
    println!("  push service        {push_rate:>9.0} events/s");
    println!(
        "  bare HTTP client    {bare_rate:>9.0} requests/s (same signed requests, 16 at a time)"
    );
    println!("  push / bare         {:>9.2}", push_rate / bare_rate);
    println!(
        "  latency commit → endpoint at 200/s: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} events)",
        pct(&ms, 0.5),
        pct(&ms, 0.99),
        pct(&ms, 1.0),
        ms.len()
    );
    println!(
        "  the same beside an endpoint that never answers: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        pct(&beside, 0.5),
        pct(&beside, 0.99),
        pct(&beside, 1.0),
    );
    println!(
        "  batched mode        {batched_rate:>9.0} events/s ({all} events in {requests} requests of up to 100, 4 at a time)"
    );
    let out = serde_json::json!({
        "machine": machine(),
        "events": EVENTS,
        "push_events_per_s": push_rate,
        "bare_requests_per_s": bare_rate,
        "push_over_bare": push_rate / bare_rate,
        "latency_ms": {"p50": pct(&ms, 0.5), "p99": pct(&ms, 0.99), "max": pct(&ms, 1.0)},
        "latency_beside_stuck_ms": {"p50": pct(&beside, 0.5), "p99": pct(&beside, 0.99), "max": pct(&beside, 1.0)},
        "batched_events_per_s": batched_rate,
        "batched_requests": requests,
    });
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench");
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        format!("{dir}/push.json"),
        serde_json::to_string_pretty(&out)?,
    )?;
    Ok(())
}

/// Commit → endpoint latencies of `total` events emitted at 200/s over 256 keys, sorted, in ms.
async fn latency_ms(db_url: &str, seen: &Seen, total: usize) -> Res<Vec<f64>> {
    seen.lock().unwrap().clear();
    let committed: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
    let writer = mes_events::store::session::connect(db_url, "bench writer").await?;
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    for i in 0..total {
        tick.tick().await;
        let key = format!("PO-{}", i % 256);
        let body =
            serde_json::json!({"orderId": key, "previousStatus": "released", "status": "running",
            "hierarchyScope": {"site": "bsl", "area": "gran", "workCenter": "line2"}})
            .to_string();
        let id = write::emit(&writer.client, ORDER, &key, &body, &Default::default()).await?;
        committed.lock().unwrap().insert(id, Instant::now());
    }
    wait_for(seen, total, Duration::from_secs(60)).await?;
    let committed = committed.lock().unwrap().clone();
    Ok(common::latencies_ms(&committed, &seen.lock().unwrap()))
}

type PushTask = tokio::task::JoinHandle<Result<(), mes_events::push::PushError>>;

/// The push service for every pushed system of `decl`, in this process.
fn start_push(
    cfg: &Config,
    decl: &mes_events::provision::Declaration,
) -> Res<(CancellationToken, PushTask)> {
    let stop = CancellationToken::new();
    let liveness = mes_events::push::liveness_for(decl);
    let targets = mes_events::push::targets(decl, &liveness, &stop)?;
    let push = tokio::spawn({
        let (cfg, stop) = (cfg.clone(), stop.clone());
        async move { mes_events::push::run(&cfg, targets, liveness, None, stop).await }
    });
    Ok((stop, push))
}

/// Events per second from the first receipt to the `n`th.
async fn rate(seen: &Seen, n: usize) -> Res<f64> {
    wait_for(seen, n, Duration::from_secs(300)).await?;
    let times: Vec<Instant> = seen.lock().unwrap().iter().map(|(_, t)| *t).collect();
    let span = (*times.iter().max().unwrap() - *times.iter().min().unwrap()).as_secs_f64();
    Ok(n as f64 / span)
}

/// Every event of MES_EVENTS as the push service would send it, signed.
async fn prebuilt(
    js: &async_nats::jetstream::Context,
) -> Res<Vec<mes_events::push::request::Request>> {
    use async_nats::jetstream::consumer;
    let signer = mes_events::push::Signer::new(SECRET)?;
    let stream = js.get_stream("MES_EVENTS").await?;
    let c: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await?;
    let mut msgs = c.stream().max_messages_per_batch(1000).messages().await?;
    let mut out = Vec::with_capacity(EVENTS);
    let now = chrono::Utc::now().timestamp();
    while out.len() < EVENTS {
        let m = msgs.next().await.ok_or("stream ended")??;
        let e = mes_events::event::binding::decode(
            m.headers.as_ref(),
            &m.payload,
            mes_events::event::binding::Rule::Lenient,
        )?;
        out.push(mes_events::push::request::build(
            e,
            Default::default(),
            &Default::default(),
            &signer,
            now,
        )?);
    }
    Ok(out)
}
