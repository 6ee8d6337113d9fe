//! The demo: the whole pipeline on one machine, with real components and nothing to set up.
//!
//! Creates a database of its own on the configured PostgreSQL, starts a nats-server from PATH on
//! a free port (unless a NATS URL is given), provisions the shipped declaration (nats/), runs the
//! relay, a plant simulator writing through `mes_events.emit` in real transactions, three
//! external systems with the consumer library (a slow ERP, a fast line dashboard, and a quality
//! system that disconnects for a while and catches up) and a workflow app that takes HTTP only,
//! pushed to by the push service, whose endpoint fails for a while ([`webhook`]). Shows it
//! live; at the end checks that
//! every consumer received everything published for it. Removes everything it created on exit
//! unless asked to keep it.
//!
//! Never touches what it did not create: on a server it did not start (`--nats`), it works in a
//! namespace of its own (streams `DEMO<pid>_<name>`, subjects under `demo<pid>.`, so no stream
//! or durable of the installation is read, acked or written), and deletes those streams at the
//! end. The declaration folder is read and checked before anything is started or created.
//!
//! Owns orchestration and its clean-up only; the pipeline itself is the library's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

pub mod local_nats;
mod plant;
mod systems;
mod webhook;

use crate::config::Config;
use crate::provision::{DeclError, ProvisionError};
use crate::relay;
use crate::store::migrate;
use crate::store::operator;
use crate::store::session as pg;
use local_nats::{LocalNats, LocalNatsError};
use plant::simulate;
use systems::{view, System};

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
    #[error(
        "PostgreSQL at {} is not reachable ({source}): start it, or set DATABASE_URL",
        pg::redacted(url)
    )]
    Postgres {
        url: String,
        source: pg::ConnectError,
    },
    #[error(transparent)]
    PgConnect(#[from] pg::ConnectError),
    #[error("database error")]
    Db(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Migrate(#[from] migrate::MigrateError),
    #[error(transparent)]
    Relay(#[from] relay::RelayError),
    #[error("cannot connect to the demo's NATS server")]
    Connect(#[from] crate::nats::ConnectError),
    #[error("the declaration under {dir} is invalid: {}", .errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Declaration {
        dir: std::path::PathBuf,
        errors: Vec<DeclError>,
    },
    #[error("cannot provision the demo's NATS server")]
    Provision(#[from] ProvisionError),
    #[error("cannot count what consumer {consumer} should have received")]
    Expected {
        consumer: String,
        #[source]
        source: async_nats::Error,
    },
    #[error("a demo task failed")]
    Task(#[from] tokio::task::JoinError),
    #[error("the demo's webhook system: {0}")]
    Webhook(String),
    #[error("the demo's push service")]
    Push(#[from] crate::push::PushError),
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

/// Where the demo's streams and subjects live on a server it did not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// First token of its subjects (instead of `mes`).
    pub prefix: String,
    /// Put before each stream name.
    pub stream_prefix: String,
}

impl Namespace {
    pub fn for_process(pid: u32) -> Namespace {
        Namespace {
            prefix: format!("demo{pid}"),
            stream_prefix: format!("DEMO{pid}_"),
        }
    }

    pub fn stream(&self, name: &str) -> String {
        format!("{}{name}", self.stream_prefix)
    }

    /// A subject (or filter) of the declaration moved into the namespace: its `mes` first token
    /// and every token naming a declared stream (advisory subjects name their stream).
    pub fn subject(&self, subject: &str, streams: &[String]) -> String {
        subject
            .split('.')
            .enumerate()
            .map(|(i, t)| {
                if i == 0 && t == "mes" {
                    self.prefix.clone()
                } else if streams.iter().any(|s| s == t) {
                    self.stream(t)
                } else {
                    t.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join(".")
    }

    /// The declaration moved into the namespace (pure).
    pub fn declaration(&self, d: &crate::provision::Declaration) -> crate::provision::Declaration {
        let names: Vec<String> = d.streams.iter().map(|s| s.name.get_ref().clone()).collect();
        let mut d = d.clone();
        for s in &mut d.streams {
            let n = self.stream(s.name.get_ref());
            *s.name.get_mut() = n;
            for subj in &mut s.subjects {
                let moved = self.subject(subj.get_ref(), &names);
                *subj.get_mut() = moved;
            }
        }
        for sys in &mut d.systems {
            for (_, c) in &mut sys.consumers {
                let n = self.stream(c.stream.get_ref());
                *c.stream.get_mut() = n;
                for f in &mut c.filter_subjects {
                    let moved = self.subject(f.get_ref(), &names);
                    *f.get_mut() = moved;
                }
            }
        }
        d
    }
}

pub async fn run(
    base: &Config,
    opts: &Options,
    shutdown: CancellationToken,
) -> Result<Summary, DemoError> {
    // The declaration first: nothing is started or created for one that cannot be used.
    let decl =
        crate::provision::load_dir(&opts.nats_dir).map_err(|errors| DemoError::Declaration {
            dir: opts.nats_dir.clone(),
            errors,
        })?;
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

    let admin_session = pg::connect(&base.database.url, "mes-events demo")
        .await
        .map_err(|source| DemoError::Postgres {
            url: base.database.url.clone(),
            source,
        })?;
    let admin = &admin_session.client;
    let dbname = format!("mes_events_demo_{}", std::process::id());
    admin
        .batch_execute(&format!("create database {dbname}"))
        .await?;
    let db_url = pg::with_database(&base.database.url, &dbname)?;
    println!("PostgreSQL  database {dbname} (created for the demo)");

    // A server the demo did not start may be an installation's: a namespace of its own there.
    let ns = local
        .is_none()
        .then(|| Namespace::for_process(std::process::id()));
    if let Some(ns) = &ns {
        println!(
            "NATS        not started by the demo: it works in streams {}* and subjects {}.> of its own, and deletes them at the end",
            ns.stream_prefix, ns.prefix
        );
    }
    let result = run_in(base, opts, &decl, ns.as_ref(), &db_url, &nats_url, shutdown).await;
    if let (Some(ns), false) = (&ns, opts.keep) {
        remove_namespace(base, &nats_url, ns, &decl).await;
    }

    if opts.keep {
        println!("kept: database {dbname}; NATS data stays while the server runs");
    } else {
        admin
            .batch_execute(&format!("drop database if exists {dbname} with (force)"))
            .await?;
    }
    drop(admin_session);
    drop(local);
    result
}

/// Deletes the demo's own streams (and with them their consumers) from a server it did not
/// start. Best effort: what cannot be deleted is named.
async fn remove_namespace(
    base: &Config,
    nats_url: &str,
    ns: &Namespace,
    decl: &crate::provision::Declaration,
) {
    let mut cfg = base.nats.clone();
    cfg.url = nats_url.to_owned();
    let Ok(client) = crate::nats::connect(&cfg, "mes-events demo", false).await else {
        eprintln!(
            "could not reconnect to remove the demo's streams {}*: delete them by hand",
            ns.stream_prefix
        );
        return;
    };
    let js = crate::nats::jetstream(client, &cfg, 16);
    for s in &decl.streams {
        let name = ns.stream(s.name.get_ref());
        if let Err(e) = js.delete_stream(&name).await {
            eprintln!("could not delete the demo's stream {name}: {e}");
        }
    }
    println!(
        "NATS        deleted the demo's streams {}*",
        ns.stream_prefix
    );
}

async fn run_in(
    base: &Config,
    opts: &Options,
    decl: &crate::provision::Declaration,
    ns: Option<&Namespace>,
    db_url: &str,
    nats_url: &str,
    shutdown: CancellationToken,
) -> Result<Summary, DemoError> {
    let stream = |name: &str| ns.map_or_else(|| name.to_owned(), |n| n.stream(name));
    let mut cfg = base.clone();
    cfg.database.url = db_url.to_owned();
    cfg.nats.url = nats_url.to_owned();
    cfg.events.site = "bsl".into();
    cfg.relay.streams = vec![stream("MES_EVENTS"), stream("MES_PV")];
    if let Some(ns) = ns {
        cfg.events.subject_prefix = ns.prefix.clone();
    }

    let mut s = pg::connect(db_url, "mes-events demo").await?;
    migrate::migrate(&mut s.client).await?;

    let client = crate::nats::connect(&cfg.nats, "mes-events demo", false).await?;
    let js = crate::nats::jetstream(client, &cfg.nats, cfg.relay.max_in_flight);
    // The workflow app takes HTTP only: a receiver of the demo's, pushed to.
    let receiver = Arc::new(webhook::Receiver::default());
    let secret_dir = tempfile::tempdir().map_err(|e| DemoError::Webhook(e.to_string()))?;
    let secret_file = secret_dir.path().join("workflow.whsec");
    let secret = webhook::secret();
    std::fs::write(&secret_file, &secret).map_err(|e| DemoError::Webhook(e.to_string()))?;
    let port = webhook::serve(&secret, receiver.clone()).await?;
    let decl = webhook::declaration(decl, port, &secret_file)?;
    // The shipped declaration: streams, and the ERP, line dashboard and quality consumers.
    let decl = match ns {
        Some(ns) => ns.declaration(&decl),
        None => decl,
    };
    crate::provision::apply(&js, &decl, Default::default()).await?;
    println!(
        "NATS        provisioned {}: streams, and the consumers of the ERP, line dashboard and quality system, and of a workflow app pushed to over HTTP (127.0.0.1:{port})",
        opts.nats_dir.display()
    );

    let relay_stop = CancellationToken::new();
    let relay = tokio::spawn({
        let (cfg, js, stop) = (cfg.clone(), js.clone(), relay_stop.clone());
        async move { relay::run(&cfg, js, stop).await }
    });
    let push_stop = CancellationToken::new();
    let liveness = crate::push::liveness_for(&decl);
    let targets = crate::push::targets(&decl, &liveness, &push_stop)?;
    let endpoint = targets[0].endpoint.clone();
    let push = tokio::spawn({
        let (cfg, stop) = (cfg.clone(), push_stop.clone());
        async move { crate::push::run(&cfg, targets, liveness, None, stop).await }
    });

    let systems = [
        System::new(
            "ERP (slow)",
            stream("MES_EVENTS"),
            "erp",
            Duration::from_millis(15),
        ),
        System::new(
            "line dashboard",
            stream("MES_EVENTS"),
            "scada-dashboard",
            Duration::ZERO,
        ),
        System::new(
            "line dashboard PV",
            stream("MES_PV"),
            "scada-dashboard-pv",
            Duration::ZERO,
        ),
        System::new(
            "quality (offline a while)",
            stream("MES_EVENTS"),
            "quality",
            Duration::from_millis(2),
        ),
        System::pushed(
            "workflow app (webhooks)",
            stream("MES_EVENTS"),
            webhook::NAME,
            receiver.received.clone(),
            Arc::new({
                let (endpoint, receiver) = (endpoint.clone(), receiver.clone());
                move || {
                    let mut note = String::new();
                    let retrying = endpoint.undelivered();
                    if retrying > 0 {
                        note.push_str(&format!("   retrying {retrying}"));
                    }
                    if receiver.failing.load(std::sync::atomic::Ordering::Relaxed) {
                        note.push_str("  [endpoint failing]");
                    }
                    note
                }
            }),
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
    let (fail_at, heal_at) = (opts.duration.mul_f64(0.4), opts.duration.mul_f64(0.55));
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        let t = started.elapsed();
        // The workflow app's endpoint fails for a while (503), then takes everything.
        receiver.failing.store(
            t >= fail_at && t < heal_at,
            std::sync::atomic::Ordering::Relaxed,
        );
        // The quality system disconnects for a while, then catches up.
        let quality = &systems[3];
        if t >= off_at && t < back_at && quality.is_running() {
            quality.stop().await;
        } else if t >= back_at && !quality.is_running() {
            quality.start(&js);
        }
        let c = operator::counts(&s.client).await?;
        view(tty, t, &c, &systems, &js).await;
        if t >= opts.duration {
            break;
        }
    }
    sim_stop.cancel();
    if shutdown.is_cancelled() {
        println!("stopping: the plant stops, the relay and the consumers catch up");
        systems::view_interrupted();
    }
    let emitted = simulator.await??;
    receiver
        .failing
        .store(false, std::sync::atomic::Ordering::Relaxed);
    if !systems[3].is_running() {
        systems[3].start(&js);
    }
    // Let the relay and every consumer catch up with the last events (bounded).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let c = operator::counts(&s.client).await?;
        let mut behind = 0;
        for sys in &systems {
            behind += sys.pending(&js).await;
        }
        // Also after Ctrl-C: the summary is about everything emitted (a few seconds at most).
        if (c.pending == 0 && behind == 0) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let c = operator::counts(&s.client).await?;
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
    push_stop.cancel();
    push.await??;
    relay_stop.cancel();
    relay.await??;
    let summary = Summary {
        emitted,
        published: c.published as u64,
        rejected: c.rejected as u64,
        consumers,
    };
    drop(s);
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::Namespace;

    #[test]
    fn a_namespace_moves_subjects_and_stream_names_only() {
        let ns = Namespace::for_process(42);
        let streams = vec!["MES_EVENTS".to_owned(), "MES_PV".to_owned()];
        assert_eq!(
            ns.subject("mes.*.*.*.*.processorder.>", &streams),
            "demo42.*.*.*.*.processorder.>"
        );
        assert_eq!(
            ns.subject(
                "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.MES_PV.>",
                &streams
            ),
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.DEMO42_MES_PV.>"
        );
        assert_eq!(ns.stream("MES_EVENTS"), "DEMO42_MES_EVENTS");
    }
}
