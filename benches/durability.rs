//! What durability costs (`scripts/bench.sh --bench durability`): the relay's throughput run
//! (ceiling, fill, relay drain, ceiling) on servers of its own for each of
//!
//! 1. nats-server's default sync (every 2m) with the relay keeping each event for its horizon
//!    (2m35s, what it assumes without `nats.monitoring_url`): every event also written to
//!    `mes_events.kept`;
//! 2. the same server with the relay trusting every PubAck (`relay.durability_horizon = 0s`):
//!    what the relay did before it kept anything;
//! 3. `sync_interval: 1s` (the shipped setting), the relay reading it from the server's `/varz`
//!    and keeping each event 6.25 s;
//! 4. `sync_interval: always`, the relay reading it and keeping nothing.
//!
//! `BENCH_ROUNDS` rounds each (3): the relay compared with the ceilings around it, CPU per event
//! by process. Prints a table and writes target/bench/durability.json.

use std::time::Instant;

mod common;
use common::throughput::{ceiling, median, relay_drain, CpuPerEvent, Run, EVENTS, FILL, ORDER};
use common::{machine, Res, Servers};

/// Same allocator as the binary: the relay runs in this process.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Variant {
    name: &'static str,
    /// Inside nats-server's `jetstream {}` block.
    jetstream: &'static str,
    /// `relay.durability_horizon`; `None`: derived.
    horizon: Option<std::time::Duration>,
    /// Give the relay the server's monitoring endpoint.
    monitoring: bool,
}

const VARIANTS: &[Variant] = &[
    Variant {
        name: "sync every 2m (default), events kept 2m35s",
        jetstream: "",
        horizon: None,
        monitoring: false,
    },
    Variant {
        name: "sync every 2m (default), nothing kept (before)",
        jetstream: "",
        horizon: Some(std::time::Duration::ZERO),
        monitoring: false,
    },
    Variant {
        name: "sync every 1s (shipped), events kept 6.25s (read from /varz)",
        jetstream: "sync_interval: \"1s\"",
        horizon: None,
        monitoring: true,
    },
    Variant {
        name: "sync_interval: always, nothing kept (read from /varz)",
        jetstream: "sync_interval: always",
        horizon: None,
        monitoring: true,
    },
];

struct Measured {
    ceilings: Vec<Run>,
    relays: Vec<Run>,
    ratios: Vec<f64>,
    horizon: String,
}

#[tokio::main]
async fn main() -> Res<()> {
    common::init_tracing();
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let machine = machine();
    println!("machine: {machine}");
    let mut out = serde_json::Map::new();
    let mut lines = Vec::new();
    for v in VARIANTS {
        println!("\n{}", v.name);
        let m = variant(v, rounds).await?;
        let ceiling = median(&m.ceilings.iter().map(|c| c.rate).collect::<Vec<_>>());
        let relay = median(&m.relays.iter().map(|r| r.rate).collect::<Vec<_>>());
        let ratio = median(&m.ratios);
        let c_cpu = CpuPerEvent::median(m.ceilings.iter().map(|c| &c.cpu));
        let r_cpu = CpuPerEvent::median(m.relays.iter().map(|r| &r.cpu));
        let added = (r_cpu.postgres + r_cpu.this) - c_cpu.this;
        lines.push(format!(
            "| {} | {ceiling:.0} | {relay:.0} | {ratio:.2} x | {:.1} | {:.1} (nats {:.1} + PostgreSQL {:.1} + relay {:.1}) | {added:.1} |",
            v.name,
            c_cpu.total(),
            r_cpu.total(),
            r_cpu.nats,
            r_cpu.postgres,
            r_cpu.this
        ));
        out.insert(
            v.name.into(),
            serde_json::json!({
                "horizon": m.horizon,
                "ceiling_events_per_s": ceiling,
                "relay_events_per_s": relay,
                "relay_ratio_to_ceiling": ratio,
                "ratio_runs": m.ratios,
                "ceiling_cpu_us_per_event": c_cpu.json(),
                "relay_cpu_us_per_event": r_cpu.json(),
                "relay_added_cpu_us_per_event": added,
            }),
        );
    }
    out.insert("machine".into(), machine.into());
    out.insert("rounds".into(), rounds.into());
    out.insert("date".into(), chrono::Utc::now().to_rfc3339().into());
    let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench"));
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("durability.json"),
        serde_json::to_string_pretty(&out)?,
    )?;
    println!(
        "\n| setting | ceiling, events/s | relay, events/s | relay / ceiling | CPU per event, ceiling (µs) | CPU per event, relay (µs) | relay's added CPU (µs) |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for l in lines {
        println!("{l}");
    }
    println!("written: target/bench/durability.json");
    Ok(())
}

/// Rounds of ceiling, fill, relay drain on servers of the variant's own, ending with a ceiling.
async fn variant(v: &Variant, rounds: usize) -> Res<Measured> {
    let monitoring = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let extra = if v.monitoring {
        format!("http: \"127.0.0.1:{monitoring}\"")
    } else {
        String::new()
    };
    let servers = Servers::start_with("mes_bench_durability", v.jetstream, &extra).await?;
    let result = async {
        let session = servers.migrated().await?;
        let db = &session.client;
        let mut cfg = mes_events::config::Config::default();
        cfg.database.url = servers.db_url.clone();
        cfg.nats.url = servers.nats.url();
        cfg.events.site = "bsl".into();
        cfg.relay.durability_horizon = v.horizon;
        if v.monitoring {
            cfg.nats.monitoring_url = Some(format!("http://127.0.0.1:{monitoring}"));
        }
        let client = mes_events::nats::connect(&cfg.nats, "bench", false).await?;
        let js = mes_events::nats::jetstream(client, &cfg.nats, cfg.relay.max_in_flight);
        let decl = mes_events::provision::load_dir(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/nats"
        )))
        .map_err(|e| format!("{e:?}"))?;
        mes_events::provision::apply(&js, &decl, Default::default()).await?;
        let horizon = mes_events::relay::durability::derive(&cfg, &js).await;
        println!("  horizon: {}", horizon.basis);
        let nats_pid = servers.nats.pid().ok_or("nats-server is not running")?;
        let mut m = Measured {
            ceilings: Vec::new(),
            relays: Vec::new(),
            ratios: Vec::new(),
            horizon: horizon.basis,
        };
        for round in 0..=rounds {
            let c = ceiling(&js, nats_pid).await?;
            println!("  ceiling: {:.0} events/s {}", c.rate, c.cpu.line());
            m.ceilings.push(c);
            if round == rounds {
                break;
            }
            let t = Instant::now();
            db.query_one(FILL, &[&ORDER, &(EVENTS as i32)]).await?;
            println!(
                "    (filled {EVENTS} rows in {:.1} s)",
                t.elapsed().as_secs_f64()
            );
            let r = relay_drain(&cfg, &js, db, nats_pid).await?;
            println!("  relay:   {:.0} events/s {}", r.rate, r.cpu.line());
            m.relays.push(r);
            // The kept rows of this round are not the next one's cost.
            db.batch_execute("truncate mes_events.kept, mes_events.published")
                .await?;
        }
        m.ratios = m
            .relays
            .iter()
            .enumerate()
            .map(|(i, r)| r.rate / ((m.ceilings[i].rate + m.ceilings[i + 1].rate) / 2.0))
            .collect();
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(m)
    }
    .await;
    servers.stop().await?;
    result
}
