//! The demo: the whole pipeline on one machine, with real components and nothing to set up.
//!
//! Creates a database of its own on the configured PostgreSQL, starts a nats-server from PATH on
//! a free port (unless a NATS URL is given), creates the streams, runs the relay, a plant
//! simulator writing through `mes_events.emit` in real transactions, and a durable consumer
//! that checks every event arrives, each key in order. Removes everything it created on exit
//! unless asked to keep it.
//!
//! Owns orchestration and its clean-up only; the pipeline itself is the library's.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::local_nats::{LocalNats, LocalNatsError};
use crate::{migrate, outbox, pg, relay};

#[derive(Debug, Clone)]
pub struct Options {
    pub duration: Duration,
    /// Business events per second written by the simulator (process variables come on top).
    pub rate: u32,
    /// Leave the database and the NATS server's data behind.
    pub keep: bool,
    /// Use this NATS server instead of starting one.
    pub nats_url: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Nats(#[from] LocalNatsError),
    #[error("PostgreSQL at {url} is not reachable: start it, or set DATABASE_URL")]
    Postgres {
        url: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("database error")]
    Db(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Migrate(#[from] migrate::MigrateError),
    #[error(transparent)]
    Relay(#[from] relay::RelayError),
    #[error("NATS: {0}")]
    Jetstream(String),
}

/// What the run showed.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub emitted: u64,
    pub published: u64,
    pub received: u64,
    pub out_of_order: u64,
    pub duplicates: u64,
}

impl Summary {
    pub fn complete(&self) -> bool {
        self.emitted == self.published
            && self.published == self.received
            && self.out_of_order == 0
            && self.duplicates == 0
    }
}

pub async fn run(
    base: &Config,
    opts: &Options,
    shutdown: CancellationToken,
) -> Result<Summary, DemoError> {
    let (local, nats_url) = match &opts.nats_url {
        Some(u) => (None, u.clone()),
        None => {
            let s = LocalNats::start("")?;
            let u = s.url();
            (Some(s), u)
        }
    };
    println!(
        "NATS        {nats_url}{}",
        if local.is_some() {
            " (started for the demo)"
        } else {
            ""
        }
    );

    let (admin, conn) = pg::parse(&base.database.url, "mes-events demo")
        .map_err(|source| DemoError::Postgres {
            url: base.database.url.clone(),
            source,
        })?
        .connect(NoTls)
        .await
        .map_err(|source| DemoError::Postgres {
            url: base.database.url.clone(),
            source,
        })?;
    let admin_task = tokio::spawn(conn);
    let dbname = format!("mes_events_demo_{}", std::process::id());
    admin
        .batch_execute(&format!("create database {dbname}"))
        .await?;
    let mut db_cfg = pg::parse(&base.database.url, "mes-events demo")?;
    db_cfg.dbname(&dbname);
    let db_url = to_url(&db_cfg);
    println!("PostgreSQL  database {dbname} (created for the demo)");

    let result = run_in(base, opts, &db_url, &nats_url, shutdown).await;

    if opts.keep {
        println!("kept: database {dbname}; NATS data stays while the server runs");
    } else {
        admin
            .batch_execute(&format!("drop database if exists {dbname} with (force)"))
            .await?;
    }
    drop(admin);
    let _ = admin_task.await;
    drop(local);
    result
}

async fn run_in(
    base: &Config,
    opts: &Options,
    db_url: &str,
    nats_url: &str,
    shutdown: CancellationToken,
) -> Result<Summary, DemoError> {
    let mut cfg = base.clone();
    cfg.database.url = db_url.to_owned();
    cfg.nats.url = nats_url.to_owned();
    cfg.relay.streams = vec!["MES_EVENTS".into(), "MES_PV".into()];

    let mut s = pg::connect(db_url, "mes-events demo").await?;
    migrate::migrate(&mut s.client).await?;

    let client = crate::nats::connect(&cfg.nats, "mes-events demo", false)
        .await
        .map_err(|e| DemoError::Jetstream(format!("{e:#}")))?;
    let js = crate::nats::jetstream(client.clone(), &cfg.nats, cfg.relay.max_in_flight);
    create_streams(&js, &cfg.events.subject_prefix).await?;

    let relay_stop = CancellationToken::new();
    let relay = tokio::spawn({
        let cfg = cfg.clone();
        let js = js.clone();
        let stop = relay_stop.clone();
        async move { relay::run(&cfg, js, stop).await }
    });

    let reader = consumer_task(js.clone()).await?;
    let sim_stop = shutdown.child_token();
    let simulator = tokio::spawn(simulate(db_url.to_owned(), opts.rate, sim_stop.clone()));
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        let c = outbox::counts(&s.client).await?;
        println!(
            "{:>4}s  emitted {:>6}  published {:>6}  received {:>6}",
            started.elapsed().as_secs(),
            c.pending + c.published,
            c.published,
            reader.received()
        );
        if started.elapsed() >= opts.duration {
            break;
        }
    }
    sim_stop.cancel();
    let emitted = simulator
        .await
        .map_err(|e| DemoError::Jetstream(e.to_string()))??;
    // Let the relay and the consumer catch up with the last events (bounded).
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let c = outbox::counts(&s.client).await?;
        if c.pending == 0 && reader.received() >= emitted {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    relay_stop.cancel();
    relay
        .await
        .map_err(|e| DemoError::Jetstream(e.to_string()))??;
    let c = outbox::counts(&s.client).await?;
    let r = reader.stop().await;
    let summary = Summary {
        emitted,
        published: c.published as u64,
        received: r.received,
        out_of_order: r.out_of_order,
        duplicates: r.duplicates,
    };
    drop(s);
    Ok(summary)
}

async fn create_streams(js: &jetstream::Context, prefix: &str) -> Result<(), DemoError> {
    let business = [
        "processorder",
        "batch",
        "material",
        "stock",
        "inventory",
        "document",
    ];
    for (name, subjects, max_age) in [
        (
            "MES_EVENTS",
            business
                .iter()
                .map(|c| format!("{prefix}.*.*.*.*.{c}.>"))
                .collect::<Vec<_>>(),
            Duration::ZERO,
        ),
        (
            "MES_PV",
            vec![format!("{prefix}.*.*.*.*.processvariable.>")],
            Duration::from_secs(24 * 3600),
        ),
    ] {
        js.get_or_create_stream(stream::Config {
            name: name.into(),
            subjects,
            max_age,
            ..Default::default()
        })
        .await
        .map_err(|e| DemoError::Jetstream(format!("creating stream {name}: {e}")))?;
    }
    Ok(())
}

/// A durable consumer reading both streams, counting and checking per-key order.
struct Reader {
    stop: CancellationToken,
    state: std::sync::Arc<std::sync::Mutex<ReaderState>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

#[derive(Default, Clone)]
struct ReaderState {
    received: u64,
    out_of_order: u64,
    duplicates: u64,
    last_seq_per_key: HashMap<String, String>,
}

impl Reader {
    fn received(&self) -> u64 {
        self.state.lock().map(|s| s.received).unwrap_or(0)
    }

    async fn stop(self) -> ReaderState {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        self.state.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

async fn consumer_task(js: jetstream::Context) -> Result<Reader, DemoError> {
    let stop = CancellationToken::new();
    let state = std::sync::Arc::new(std::sync::Mutex::new(ReaderState::default()));
    let mut tasks = Vec::new();
    for stream_name in ["MES_EVENTS", "MES_PV"] {
        let stream = js
            .get_stream(stream_name)
            .await
            .map_err(|e| DemoError::Jetstream(e.to_string()))?;
        let consumer: consumer::PullConsumer = stream
            .get_or_create_consumer(
                "demo-dashboard",
                consumer::pull::Config {
                    durable_name: Some("demo-dashboard".into()),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| DemoError::Jetstream(e.to_string()))?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| DemoError::Jetstream(e.to_string()))?;
        let stop = stop.clone();
        let state = state.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    m = messages.next() => m,
                    _ = stop.cancelled() => return,
                };
                let Some(Ok(m)) = next else { continue };
                if let Some(h) = m.headers.as_ref() {
                    let key = h
                        .get("ce-partitionkey")
                        .map(|v| v.as_str().to_owned())
                        .unwrap_or_default();
                    let seq = h
                        .get("ce-sequence")
                        .map(|v| v.as_str().to_owned())
                        .unwrap_or_default();
                    if let Ok(mut s) = state.lock() {
                        s.received += 1;
                        match s.last_seq_per_key.get(&key) {
                            Some(prev) if *prev == seq => s.duplicates += 1,
                            Some(prev) if *prev > seq => s.out_of_order += 1,
                            _ => {
                                s.last_seq_per_key.insert(key, seq);
                            }
                        }
                    }
                }
                let _ = m.ack().await;
            }
        }));
    }
    Ok(Reader { stop, state, tasks })
}

/// A small plant: orders released → running → completed, material consumed and produced, a
/// lot created and released, and a dryer's temperature ticking, all through `mes_events.emit`.
async fn simulate(db_url: String, rate: u32, stop: CancellationToken) -> Result<u64, DemoError> {
    let mut s = pg::connect(&db_url, "mes-events demo plant").await?;
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut tick = tokio::time::interval(period);
    let mut emitted = 0u64;
    let mut n = 0u64;
    let scope =
        r#""hierarchyScope":{"site":"bsl","area":"gran","workCenter":"line2","workUnit":"dryer1"}"#;
    while !stop.is_cancelled() {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
        }
        n += 1;
        let order = format!("PO-{:05}", 1000 + n / 6);
        let lot = format!("LOT-{:05}", 1000 + n / 6);
        let step = n % 6;
        let (ty, key, data) = match step {
            0 => (
                "processorder.statuschanged",
                order.clone(),
                format!(
                    r#"{{"orderId":"{order}","previousStatus":null,"status":"released",{scope}}}"#
                ),
            ),
            1 => (
                "processorder.statuschanged",
                order.clone(),
                format!(
                    r#"{{"orderId":"{order}","previousStatus":"released","status":"running",{scope}}}"#
                ),
            ),
            2 => (
                "material.consumed",
                order.clone(),
                format!(
                    r#"{{"consumptionId":"C-{n}","processOrderId":"{order}","material":{{"materialDefinitionId":"M-100","lotId":"RAW-7"}},"quantity":{{"value":"12.5","uom":"KGM"}},{scope}}}"#
                ),
            ),
            3 => (
                "material.produced",
                order.clone(),
                format!(
                    r#"{{"productionId":"P-{n}","processOrderId":"{order}","material":{{"materialDefinitionId":"FG-200","lotId":"{lot}"}},"quantity":{{"value":"10","uom":"KGM"}},{scope}}}"#
                ),
            ),
            4 => (
                "stock.lotcreated",
                lot.clone(),
                format!(
                    r#"{{"lotId":"{lot}","materialDefinitionId":"FG-200","quantity":{{"value":"10","uom":"KGM"}},"status":"quarantine","origin":"produced",{scope}}}"#
                ),
            ),
            _ => (
                "processorder.statuschanged",
                order.clone(),
                format!(
                    r#"{{"orderId":"{order}","previousStatus":"running","status":"completed",{scope}}}"#
                ),
            ),
        };
        let tx = s.client.transaction().await?;
        outbox::emit(
            &tx,
            &format!("io.mesevents.mes.{ty}.v1"),
            &key,
            &data,
            &Default::default(),
        )
        .await?;
        // Process variables ride along, as a historian feed would.
        let temp = 60.0 + (n as f64 / 10.0).sin() * 5.0;
        outbox::emit(
            &tx,
            "io.mesevents.mes.processvariable.changed.v1",
            "dryer1.temperature",
            &format!(r#"{{"variableId":"dryer1.temperature","value":{temp:.2},"uom":"CEL","quality":"good",{scope}}}"#),
            &Default::default(),
        )
        .await?;
        tx.commit().await?;
        emitted += 2;
    }
    Ok(emitted)
}

fn to_url(cfg: &tokio_postgres::Config) -> String {
    let host = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "127.0.0.1".into(),
    };
    let mut s = format!(
        "host={host} port={} dbname={} user={}",
        cfg.get_ports().first().copied().unwrap_or(5432),
        cfg.get_dbname().unwrap_or("postgres"),
        cfg.get_user().unwrap_or("postgres")
    );
    if let Some(pw) = cfg.get_password() {
        s.push_str(&format!(
            " password='{}'",
            String::from_utf8_lossy(pw).replace('\'', "\\'")
        ));
    }
    s
}
