//! Throughput as the benchmarks measure it: the ceiling (the relay's own messages, prebuilt,
//! published pipelined), the relay draining a filled outbox, and the CPU each process spent per
//! event, from /proc. Shared by `pipeline` (rounds of both) and `durability` (the same with each
//! sync setting and horizon).

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::PublishMessage};
use chrono::Utc;
use futures::StreamExt;
use mes_events::config::Config;
use mes_events::event::catalog::Catalog;
use mes_events::event::Row;
use mes_events::event::{self, Profile};
use tokio_util::sync::CancellationToken;

use super::Res;

pub const ORDER: &str = "io.mesevents.mes.processorder.statuschanged.v1";
/// Events per throughput run.
pub const EVENTS: usize = 200_000;

/// About 1 KiB of valid order-status data for `key`.
pub fn data(key: &str) -> String {
    let base = serde_json::json!({
        "orderId": key, "previousStatus": "released", "status": "running",
        "hierarchyScope": {"site": "bsl", "area": "gran", "workCenter": "line2"}, "note": ""
    })
    .to_string();
    let pad = 1024usize.saturating_sub(base.len());
    base.replace(
        "\"note\":\"\"",
        &format!("\"note\":\"{}\"", "x".repeat(pad)),
    )
}

/// SQL that emits `n` events over 1,000 keys, in one statement.
pub const FILL: &str = "select count(mes_events.emit($1, k, jsonb_build_object(
        'orderId', k, 'previousStatus', 'released', 'status', 'running',
        'hierarchyScope', jsonb_build_object('site', 'bsl', 'area', 'gran', 'workCenter', 'line2'),
        'note', repeat('x', 880))))
      from generate_series(1, $2) g, lateral (select 'PO-' || (g % 1000) as k) key";

/// One throughput measurement: events/s, and where the CPU went.
pub struct Run {
    pub rate: f64,
    pub cpu: CpuPerEvent,
}

/// Publishes prebuilt relay messages as fast as one pipelined client can, then purges them.
/// They are the relay's messages, headers included: the same attributes, `Nats-Msg-Id` and a
/// `Nats-Expected-Last-Sequence` predicted the way the relay predicts it.
pub async fn ceiling(js: &jetstream::Context, nats_pid: u32) -> Res<Run> {
    let catalog = Catalog::embedded()?;
    // Another source: the same sizes, but Nats-Msg-Ids the relay will never use.
    let profile = Profile {
        source: "/mes/ceiling/bsl".into(),
        site: "bsl".into(),
        subject_prefix: "mes".into(),
        mode: mes_events::event::binding::Mode::Binary,
    };
    let mut stream = js.get_stream("MES_EVENTS").await?;
    let tail = stream.info().await?.state.last_sequence;
    let now = Utc::now();
    let messages: Vec<_> = (1..=EVENTS as i64)
        .map(|id| {
            let key = format!("PO-{}", id % 1000);
            let row = Row {
                id,
                ty: ORDER.into(),
                key: key.clone(),
                key_version: 1,
                data: data(&key),
                occurred_at: now,
                recorded_at: now,
                traceparent: None,
                tracestate: None,
            };
            event::outbound(&profile, &catalog, &row).expect("valid")
        })
        .collect();
    let cpu = Cpu::now(nats_pid);
    let started = Instant::now();
    let mut acks = futures::stream::FuturesOrdered::new();
    for (i, m) in messages.into_iter().enumerate() {
        let ack = js
            .send_publish(
                m.subject,
                PublishMessage::build()
                    .payload(m.payload)
                    .headers(m.headers)
                    .expected_last_sequence(tail + i as u64),
            )
            .await?;
        acks.push_back(std::future::IntoFuture::into_future(ack));
        while acks.len() >= 4096 {
            acks.next().await.expect("ack")?;
        }
    }
    while let Some(a) = acks.next().await {
        a?;
    }
    let elapsed = started.elapsed();
    let cpu = Cpu::now(nats_pid).since(&cpu, EVENTS);
    stream.purge().await?;
    Ok(Run {
        rate: EVENTS as f64 / elapsed.as_secs_f64(),
        cpu,
    })
}

/// The relay (in this process) draining the filled outbox, first row to last ack recorded.
pub async fn relay_drain(
    cfg: &Config,
    js: &jetstream::Context,
    db: &tokio_postgres::Client,
    nats_pid: u32,
) -> Res<Run> {
    let cpu = Cpu::now(nats_pid);
    let relay = spawn_relay(cfg, js);
    let started = Instant::now();
    wait_drained(db, Duration::from_secs(600)).await?;
    let drain = started.elapsed();
    let cpu = Cpu::now(nats_pid).since(&cpu, EVENTS);
    relay.0.cancel();
    relay.1.await??;
    Ok(Run {
        rate: EVENTS as f64 / drain.as_secs_f64(),
        cpu,
    })
}

/// CPU seconds used so far by nats-server, by every PostgreSQL process, and by this process
/// (the publisher: the ceiling's client or the in-process relay).
pub struct Cpu {
    nats: f64,
    postgres: f64,
    this: f64,
}

/// Microseconds of CPU per event, by process.
#[derive(Clone)]
pub struct CpuPerEvent {
    pub nats: f64,
    pub postgres: f64,
    pub this: f64,
}

impl Cpu {
    pub fn now(nats_pid: u32) -> Cpu {
        let mut postgres = 0.0;
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for e in dir.flatten() {
                let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
                if comm.trim() == "postgres" {
                    postgres += cpu_seconds(&e.path());
                }
            }
        }
        Cpu {
            nats: cpu_seconds(std::path::Path::new(&format!("/proc/{nats_pid}"))),
            postgres,
            this: cpu_seconds(std::path::Path::new("/proc/self")),
        }
    }

    pub fn since(&self, before: &Cpu, events: usize) -> CpuPerEvent {
        let us = |a: f64, b: f64| (a - b).max(0.0) * 1e6 / events as f64;
        CpuPerEvent {
            nats: us(self.nats, before.nats),
            postgres: us(self.postgres, before.postgres),
            this: us(self.this, before.this),
        }
    }
}

impl CpuPerEvent {
    pub fn total(&self) -> f64 {
        self.nats + self.postgres + self.this
    }

    pub fn line(&self) -> String {
        format!(
            "[CPU per event: nats-server {:.1} us, PostgreSQL {:.1} us, publisher {:.1} us; total {:.1} us]",
            self.nats,
            self.postgres,
            self.this,
            self.total()
        )
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({"nats_server": self.nats, "postgres": self.postgres,
                           "publisher": self.this, "total": self.total()})
    }

    /// Field by field median.
    pub fn median<'a>(runs: impl Iterator<Item = &'a CpuPerEvent>) -> CpuPerEvent {
        let runs: Vec<&CpuPerEvent> = runs.collect();
        let m = |f: fn(&CpuPerEvent) -> f64| median(&runs.iter().map(|c| f(c)).collect::<Vec<_>>());
        CpuPerEvent {
            nats: m(|c| c.nats),
            postgres: m(|c| c.postgres),
            this: m(|c| c.this),
        }
    }
}

/// User + system CPU seconds of a process (its /proc directory); 0 if it is gone.
pub fn cpu_seconds(proc_dir: &std::path::Path) -> f64 {
    let Ok(stat) = std::fs::read_to_string(proc_dir.join("stat")) else {
        return 0.0;
    };
    // Fields after the command name, which may contain spaces, in parentheses.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / clock_ticks()
}

pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

pub fn spawn_relay(
    cfg: &Config,
    js: &jetstream::Context,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<Result<(), mes_events::relay::RelayError>>,
) {
    let stop = CancellationToken::new();
    let (cfg, js, s) = (cfg.clone(), js.clone(), stop.clone());
    (
        stop,
        tokio::spawn(async move { mes_events::relay::run(&cfg, js, s).await }),
    )
}

/// Waits until no outbox row is pending. Polled every 10 ms, so it must not steal the CPU it
/// measures: a `count(*)` over the outbox is a scan of the whole table (~100 ms for 200,000
/// rows of 1 KiB). It probes instead for the lowest pending id at or above the last one seen
/// (one index descent over the few entries deleted since), and confirms "none" with one full
/// check before returning.
pub async fn wait_drained(db: &tokio_postgres::Client, limit: Duration) -> Res<()> {
    const PENDING: &str = "stream_seq is null and rejected_at is null and discarded_at is null";
    let probe = format!(
        "select id from mes_events.outbox where {PENDING} and id >= $1 order by id limit 1"
    );
    let confirm = format!("select exists (select 1 from mes_events.outbox where {PENDING})");
    let deadline = Instant::now() + limit;
    let mut from = 0i64;
    loop {
        match db
            .query_opt(&probe, &[&from])
            .await?
            .map(|r| r.get::<_, i64>(0))
        {
            Some(id) => from = id,
            None if !db.query_one(&confirm, &[]).await?.get::<_, bool>(0) => return Ok(()),
            None => from = 0,
        }
        if Instant::now() > deadline {
            return Err("outbox not drained in time".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
