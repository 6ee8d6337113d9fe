//! The demo: the whole pipeline on one machine, with real components and nothing to set up.
//!
//! Creates a database of its own on the configured PostgreSQL, starts a nats-server from PATH on
//! a free port (unless a NATS URL is given), provisions the shipped declaration (nats/), runs the
//! relay, a plant simulator writing through `mes_events.emit` in real transactions, and three
//! external systems with the consumer library: a slow ERP, a fast line dashboard, and a quality
//! system that disconnects for a while and catches up. Shows it live; at the end checks that
//! every consumer received everything published for it. Removes everything it created on exit
//! unless asked to keep it.
//!
//! Owns orchestration and its clean-up only; the pipeline itself is the library's.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use cloudevents::AttributesReader;
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::consume::{self, Delivery, Outcome};
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
    /// The declaration to provision (streams, consumers).
    pub nats_dir: std::path::PathBuf,
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
    pub rejected: u64,
    pub consumers: Vec<ConsumerSummary>,
}

#[derive(Debug, Clone)]
pub struct ConsumerSummary {
    pub name: String,
    /// Events its handler completed.
    pub received: u64,
    /// Events in its stream matching its filters.
    pub expected: u64,
}

impl Summary {
    /// Everything emitted was published, and every consumer received everything meant for it.
    pub fn complete(&self) -> bool {
        self.emitted == self.published
            && self.rejected == 0
            && self.consumers.iter().all(|c| c.received == c.expected)
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "summary: emitted {}, published {}, rejected {}",
            self.emitted, self.published, self.rejected
        )?;
        for c in &self.consumers {
            let ok = if c.received == c.expected {
                "all"
            } else {
                "MISSING"
            };
            writeln!(
                f,
                "  {:<27} received {:>6} of {:>6} published for it: {ok}",
                c.name, c.received, c.expected
            )?;
        }
        write!(
            f,
            "{}",
            if self.complete() {
                "every consumer received everything published for it"
            } else {
                "INCOMPLETE"
            }
        )
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
    cfg.events.site = "bsl".into();
    cfg.relay.streams = vec!["MES_EVENTS".into(), "MES_PV".into()];

    let mut s = pg::connect(db_url, "mes-events demo").await?;
    migrate::migrate(&mut s.client).await?;

    let client = crate::nats::connect(&cfg.nats, "mes-events demo", false)
        .await
        .map_err(|e| DemoError::Jetstream(format!("{e:#}")))?;
    let js = crate::nats::jetstream(client, &cfg.nats, cfg.relay.max_in_flight);
    // The shipped declaration: streams, and the ERP, line dashboard and quality consumers.
    let decl = crate::provision::load_dir(&opts.nats_dir).map_err(|errors| {
        DemoError::Jetstream(format!(
            "the declaration under {} is invalid: {}",
            opts.nats_dir.display(),
            errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        ))
    })?;
    crate::provision::apply(&js, &decl, Default::default())
        .await
        .map_err(|e| DemoError::Jetstream(e.to_string()))?;
    println!(
        "NATS        provisioned {}: streams, and the consumers of the ERP, line dashboard and quality system",
        opts.nats_dir.display()
    );

    let relay_stop = CancellationToken::new();
    let relay = tokio::spawn({
        let (cfg, js, stop) = (cfg.clone(), js.clone(), relay_stop.clone());
        async move { relay::run(&cfg, js, stop).await }
    });

    let systems = [
        System::new("ERP (slow)", "MES_EVENTS", "erp", Duration::from_millis(15)),
        System::new(
            "line dashboard",
            "MES_EVENTS",
            "scada-dashboard",
            Duration::ZERO,
        ),
        System::new(
            "line dashboard PV",
            "MES_PV",
            "scada-dashboard-pv",
            Duration::ZERO,
        ),
        System::new(
            "quality (offline a while)",
            "MES_EVENTS",
            "quality",
            Duration::from_millis(2),
        ),
    ];
    for sys in &systems {
        sys.start(&js);
    }
    let sim_stop = shutdown.child_token();
    let simulator = tokio::spawn(simulate(db_url.to_owned(), opts.rate, sim_stop.clone()));
    let started = Instant::now();
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let (off_at, back_at) = (opts.duration.mul_f64(0.3), opts.duration.mul_f64(0.6));
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        let t = started.elapsed();
        // The quality system disconnects for a while, then catches up.
        let quality = &systems[3];
        if t >= off_at && t < back_at && quality.is_running() {
            quality.stop().await;
        } else if t >= back_at && !quality.is_running() {
            quality.start(&js);
        }
        let c = outbox::counts(&s.client).await?;
        view(tty, t, &c, &systems, &js).await;
        if t >= opts.duration {
            break;
        }
    }
    sim_stop.cancel();
    let emitted = simulator
        .await
        .map_err(|e| DemoError::Jetstream(e.to_string()))??;
    if !systems[3].is_running() {
        systems[3].start(&js);
    }
    // Let the relay and every consumer catch up with the last events (bounded).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let c = outbox::counts(&s.client).await?;
        let mut behind = 0;
        for sys in &systems {
            behind += sys.pending(&js).await;
        }
        if (c.pending == 0 && behind == 0) || Instant::now() > deadline || shutdown.is_cancelled() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let c = outbox::counts(&s.client).await?;
    view(tty, started.elapsed(), &c, &systems, &js).await;
    let mut consumers = Vec::new();
    for sys in &systems {
        sys.stop().await;
        consumers.push(ConsumerSummary {
            name: sys.label.to_owned(),
            received: sys.received(),
            expected: sys.expected(&js).await?,
        });
    }
    relay_stop.cancel();
    relay
        .await
        .map_err(|e| DemoError::Jetstream(e.to_string()))??;
    let summary = Summary {
        emitted,
        published: c.published as u64,
        rejected: c.rejected as u64,
        consumers,
    };
    drop(s);
    Ok(summary)
}

/// One external system of the demo: a consumer-library run that can be stopped and restarted.
struct System {
    label: &'static str,
    stream: &'static str,
    consumer: &'static str,
    /// Handling time per event: the ERP is slow.
    work: Duration,
    received: Arc<AtomicU64>,
    last: Arc<Mutex<VecDeque<String>>>,
    running: Mutex<Option<(CancellationToken, tokio::task::JoinHandle<()>)>>,
}

impl System {
    fn new(
        label: &'static str,
        stream: &'static str,
        consumer: &'static str,
        work: Duration,
    ) -> System {
        System {
            label,
            stream,
            consumer,
            work,
            received: Arc::default(),
            last: Arc::default(),
            running: Mutex::new(None),
        }
    }

    fn is_running(&self) -> bool {
        self.running.lock().map(|r| r.is_some()).unwrap_or(false)
    }

    fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    fn start(&self, js: &jetstream::Context) {
        let stop = CancellationToken::new();
        let (received, last, work) = (self.received.clone(), self.last.clone(), self.work);
        let handler = move |d: Delivery| {
            let (received, last) = (received.clone(), last.clone());
            async move {
                if !work.is_zero() {
                    tokio::time::sleep(work).await;
                }
                received.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut l) = last.lock() {
                    let ty = d.event.ty();
                    let ty = ty.split_once(".mes.").map_or(ty, |(_, t)| t);
                    l.push_back(format!("{ty} {}", d.key));
                    if l.len() > 3 {
                        l.pop_front();
                    }
                }
                Outcome::Done
            }
        };
        let task = tokio::spawn({
            let (js, stop, stream, consumer) =
                (js.clone(), stop.clone(), self.stream, self.consumer);
            async move {
                let opts = consume::Options::default();
                if let Err(e) = consume::run(&js, stream, consumer, opts, handler, stop).await {
                    tracing::warn!(error = %e, "demo consumer stopped");
                }
            }
        });
        if let Ok(mut r) = self.running.lock() {
            *r = Some((stop, task));
        }
    }

    async fn stop(&self) {
        let running = self.running.lock().ok().and_then(|mut r| r.take());
        if let Some((stop, task)) = running {
            stop.cancel();
            let _ = task.await;
        }
    }

    /// Events not yet acked by this consumer (`u64::MAX` when unknown).
    async fn pending(&self, js: &jetstream::Context) -> u64 {
        let Ok(s) = js.get_stream_no_info(self.stream).await else {
            return u64::MAX;
        };
        s.consumer_info(self.consumer)
            .await
            .map(|i| i.num_pending + i.num_ack_pending as u64)
            .unwrap_or(u64::MAX)
    }

    /// Events in the stream matching this consumer's filters (a throw-away ordered consumer).
    async fn expected(&self, js: &jetstream::Context) -> Result<u64, DemoError> {
        let err = |e: String| DemoError::Jetstream(e);
        let s = js
            .get_stream_no_info(self.stream)
            .await
            .map_err(|e| err(e.to_string()))?;
        let cfg = s
            .consumer_info(self.consumer)
            .await
            .map_err(|e| err(e.to_string()))?
            .config;
        let mut probe = s
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: cfg.filter_subject.clone(),
                filter_subjects: cfg.filter_subjects.clone(),
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| err(e.to_string()))?;
        let n = probe
            .info()
            .await
            .map_err(|e| err(e.to_string()))?
            .num_pending;
        let name = probe.cached_info().name.clone();
        let _ = s.delete_consumer(&name).await;
        Ok(n)
    }
}

/// The live view: redrawn in place on a terminal, plain lines otherwise.
async fn view(
    tty: bool,
    t: Duration,
    c: &outbox::Counts,
    systems: &[System],
    js: &jetstream::Context,
) {
    let mut lines = vec![format!(
        "{:>4}s  emitted {:>6}   published {:>6}   rejected {}",
        t.as_secs(),
        c.pending + c.published + c.rejected,
        c.published,
        c.rejected
    )];
    for sys in systems {
        let pending = sys.pending(js).await;
        let state = if sys.is_running() { "" } else { "  [offline]" };
        let pending = if pending == u64::MAX {
            "-".to_owned()
        } else {
            pending.to_string()
        };
        lines.push(format!(
            "      {:<27} received {:>6}   pending {:>6}{state}",
            sys.label,
            sys.received(),
            pending
        ));
    }
    if tty {
        let last: Vec<String> = systems[1]
            .last
            .lock()
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default();
        lines.push(format!("      last events: {}", last.join("  |  ")));
        println!("\x1b[H\x1b[2J{}", lines.join("\n"));
    } else {
        println!("{}", lines.join("\n"));
    }
}

/// A small plant: orders released → running → completed, material consumed and produced against
/// them, lots created and released, a master recipe approved, and a dryer's temperature ticking,
/// all through `mes_events.emit` in real transactions.
async fn simulate(db_url: String, rate: u32, stop: CancellationToken) -> Result<u64, DemoError> {
    let mut s = pg::connect(&db_url, "mes-events demo plant").await?;
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut tick = tokio::time::interval(period);
    let mut emitted = 0u64;
    let mut n = 0u64;
    let scope =
        r#""hierarchyScope":{"site":"bsl","area":"gran","workCenter":"line2","workUnit":"dryer1"}"#;
    let signer = r#"{"id":"jkeller","name":"Dr. Jonas Keller","type":"user"}"#;
    let hash = r#"{"algorithm":"sha-256","value":"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}"#;
    while !stop.is_cancelled() {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
        }
        n += 1;
        let order = format!("PO-{:05}", 1000 + n / 8);
        let lot = format!("LOT-{:05}", 1000 + n / 8);
        let doc = format!("MR-{:03}", n / 8 % 50);
        let (ty, key, data) = match n % 8 {
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
            5 => (
                "processorder.statuschanged",
                order.clone(),
                format!(
                    r#"{{"orderId":"{order}","previousStatus":"running","status":"completed",{scope}}}"#
                ),
            ),
            6 => (
                "stock.lotstatuschanged",
                lot.clone(),
                format!(
                    r#"{{"lotId":"{lot}","materialDefinitionId":"FG-200","previousStatus":"quarantine","status":"released","reasonText":"QC release","hierarchyScope":{{"site":"bsl","area":"qa"}},"actor":{signer},"signatures":[{{"signer":{signer},"signedAt":"2026-11-23T08:00:00Z","meaning":"released"}}]}}"#
                ),
            ),
            _ => (
                "document.statuschanged",
                doc.clone(),
                format!(
                    r#"{{"documentId":"{doc}","documentType":"masterrecipe","version":"{}.0","previousStatus":"inreview","status":"approved","reasonText":"Review complete","contentHash":{hash},"actor":{signer},"signatures":[{{"signer":{signer},"signedAt":"2026-11-23T08:00:00Z","meaning":"approved"}}],"hierarchyScope":{{"site":"bsl"}}}}"#,
                    n / 8
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
