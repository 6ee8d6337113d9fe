//! What the benchmarks share: their own nats-server and their own database on the local
//! PostgreSQL (dropped at the end), and the machine they ran on; how throughput is measured
//! ([`throughput`]).
//!
//! Each benchmark target compiles this whole module and uses part of it.
#![allow(dead_code)]

pub mod throughput;

use mes_events::demo::local_nats::LocalNats;
use tokio_postgres::NoTls;

pub type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Logs on standard error when `RUST_LOG` is set (e.g. `mes_events::read::consume=debug`).
pub fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
}

/// A nats-server and a database of the benchmark's own.
pub struct Servers {
    pub nats: LocalNats,
    admin: tokio_postgres::Client,
    dbname: String,
    /// The benchmark's database.
    pub db_url: String,
}

impl Servers {
    /// Starts nats-server and creates the database `<prefix>_<pid>` (on `DATABASE_URL`, else
    /// the local PostgreSQL).
    pub async fn start(prefix: &str) -> Res<Servers> {
        Self::start_with(prefix, "", "").await
    }

    /// The same, with `jetstream` settings (`sync_interval: always`) and extra server
    /// configuration (a monitoring port) for its nats-server.
    pub async fn start_with(prefix: &str, jetstream: &str, extra: &str) -> Res<Servers> {
        let admin_url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:5432/postgres".into());
        let nats = LocalNats::start_with_jetstream(jetstream, extra)?;
        let (admin, conn) = tokio_postgres::connect(&admin_url, NoTls).await?;
        tokio::spawn(conn);
        let dbname = format!("{prefix}_{}", std::process::id());
        admin
            .batch_execute(&format!("create database {dbname}"))
            .await?;
        let mut pg: tokio_postgres::Config = admin_url.parse()?;
        pg.dbname(&dbname);
        let db_url = format!(
            "host=127.0.0.1 port={} user={} dbname={dbname}",
            pg.get_ports().first().copied().unwrap_or(5432),
            pg.get_user().unwrap_or("postgres")
        );
        Ok(Servers {
            nats,
            admin,
            dbname,
            db_url,
        })
    }

    /// A session on the database, migrated.
    pub async fn migrated(&self) -> Res<mes_events::store::session::Session> {
        let mut session = mes_events::store::session::connect(&self.db_url, "bench").await?;
        mes_events::store::migrate::migrate(&mut session.client).await?;
        Ok(session)
    }

    /// Drops the database (nats-server stops when dropped).
    pub async fn stop(self) -> Res<()> {
        self.admin
            .batch_execute(&format!(
                "drop database if exists {} with (force)",
                self.dbname
            ))
            .await?;
        Ok(())
    }
}

/// The machine, for the tables.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map_or("?".into(), |k| format!("{} GiB", k / 1024 / 1024));
    format!("{cores} cores ({cpu}), {mem}, nats-server and PostgreSQL on the same machine")
}

/// Commit → receipt latencies in ms, sorted: each received (outbox id, when) against the
/// moment its id was committed (ids never committed here are left out).
pub fn latencies_ms(
    committed: &std::collections::HashMap<i64, std::time::Instant>,
    received: &[(i64, std::time::Instant)],
) -> Vec<f64> {
    let mut ms: Vec<f64> = received
        .iter()
        .filter_map(|(id, at)| {
            committed
                .get(id)
                .map(|c| at.saturating_duration_since(*c).as_secs_f64() * 1000.0)
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    ms
}
