//! Push: for systems that cannot pull. Each system with a `[push]` table in its declaration
//! keeps its own durable consumer, exactly like a pulling system (so an endpoint that is down
//! never touches another system, and nothing is lost while it is down); `mes-events push`
//! pulls from it and POSTs each event to the endpoint as a signed CloudEvents HTTP request.
//!
//! - [`request`]: an event as a signed request, and what an answer means (pure).
//! - [`endpoint`]: sending, the endpoint's rate limit, asked waits and circuit breaker.
//! - [`transport`]: HTTPS as declared and transport failures in words.
//! - [`status`]: each pushed consumer's state, as the server says it (`push status`).
//!
//! Order and retries are [`crate::read::consume`]'s: one event per key at a time, a failed one
//! retried after the declared delay while its key waits and other keys flow, acked only after
//! a 2xx. After the last attempt the event is terminated with its last status and response
//! excerpt (a dead letter that `dead-letters list` shows and `resend` delivers again), or, with
//! `after_last = "hold"`, tried on at the last interval while its key waits.
//!
//! In batched mode a request carries the heads of several keys ([`consume::run_batched`]), each
//! event settled on its own; a batch the endpoint refuses as a request is sent again one event
//! per request ([`endpoint`]), so that a poison event does not hold back the rest of its batch.
//!
//! Each system's consumer is read with that system's own identity (`push.credentials`): the
//! push service holds no permission the system would not have.
//!
//! Several instances may run: each consumer is a priority group with a pinned client, so the
//! server delivers to one instance at a time and moves the pin to a standby one `takeover`
//! after the active one stops pulling. An instance that was pinned anew gathers for ack_wait
//! and a second more first (the events the old one held come back then), so each key goes out
//! in order.
//! An instance that was frozen (SIGSTOP, a stalled VM) longer than half of `takeover` may have
//! lost its pin while it held events: it sends nothing more of what it held ([`Liveness`] is
//! checked right before every request) and starts its runs afresh.

pub mod endpoint;
pub mod request;
pub mod status;
mod transport;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::config::Config;
use crate::provision::decl::PushDecl;
use crate::provision::Declaration;
use crate::read::consume::{self, Declared, Options};

pub use endpoint::Endpoint;
pub use request::Signer;

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// What must be fixed before anything is sent, every problem at once.
    #[error("{}", .0.join("\n"))]
    Setup(Vec<String>),
    #[error("{0}")]
    Nats(#[from] crate::nats::ConnectError),
}

/// Whether this process has been running all along: a ticker notes the time every 100 ms; a
/// gap longer than `limit` means the process was frozen (SIGSTOP, a stalled VM, a long GC of
/// the host) and may have lost its pins meanwhile.
#[derive(Debug)]
pub struct Liveness {
    last: Mutex<Instant>,
    limit: Duration,
    frozen: tokio::sync::watch::Sender<u64>,
}

impl Liveness {
    pub fn new(limit: Duration) -> Arc<Liveness> {
        Arc::new(Liveness {
            last: Mutex::new(Instant::now()),
            limit,
            frozen: tokio::sync::watch::channel(0).0,
        })
    }

    /// False when the ticker has not run for longer than the limit: right after a freeze,
    /// before the ticker itself has run again.
    pub fn fresh(&self) -> bool {
        self.last.lock().unwrap().elapsed() <= self.limit
    }

    /// Freezes so far: a run notes it when it starts.
    pub fn epoch(&self) -> u64 {
        *self.frozen.borrow()
    }

    /// Fresh, and not frozen since `epoch`: after a freeze the ticker runs again before the
    /// run it ends has stopped, and that run must send nothing meanwhile.
    pub fn fresh_in(&self, epoch: u64) -> bool {
        self.fresh() && self.epoch() == epoch
    }

    /// How many freezes so far (watch it to start afresh after one).
    pub fn freezes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.frozen.subscribe()
    }

    /// Ticks until `shutdown`.
    pub async fn tick(self: Arc<Self>, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(Duration::from_millis(100));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            crate::metrics::health().turned();
            let gap = self.last.lock().unwrap().elapsed();
            // The freeze is counted before the clock is fresh again (see `fresh_in`).
            if gap > self.limit {
                self.frozen.send_modify(|n| *n += 1);
            }
            *self.last.lock().unwrap() = Instant::now();
            if gap > self.limit {
                tracing::warn!(frozen = %crate::show::duration(Duration::from_millis(gap.as_millis() as u64)),
                    "this process did not run for a while: another instance may deliver now; it lets go of the events it held and pulls afresh");
            }
        }
    }
}

/// A system to push to: its endpoint and the consumers it is delivered from.
pub struct Target {
    pub endpoint: Arc<Endpoint>,
    /// (stream, durable name, what the declaration says of redelivery, the pin's timeout)
    pub consumers: Vec<(String, String, Declared, Duration)>,
}

/// The signing secret of a system, from its file or environment variable. The error names
/// where it was looked for and what is wrong, never the secret.
pub fn secret(system: &str, p: &PushDecl) -> Result<Signer, String> {
    let (text, from) = match (&p.secret_file, &p.secret_env) {
        (Some(f), _) => {
            let path = f.get_ref();
            match std::fs::read_to_string(path) {
                Ok(t) => (t, format!("file {}", path.display())),
                Err(e) => {
                    return Err(format!(
                        "system {system}: cannot read its signing secret from {}: {e}",
                        path.display()
                    ))
                }
            }
        }
        (None, Some(var)) => match std::env::var(var.get_ref()) {
            Ok(t) => (t, format!("environment variable {}", var.get_ref())),
            Err(_) => {
                return Err(format!(
                    "system {system}: its signing secret's environment variable {} is not set",
                    var.get_ref()
                ))
            }
        },
        (None, None) => return Err(format!("system {system}: no signing secret declared")),
    };
    Signer::new(&text)
        .map_err(|why| format!("system {system}: the signing secret in {from}: {why}"))
}

/// Every pushed system of the declaration, ready: secrets read and checked, HTTP clients
/// built. Every problem at once.
pub fn targets(
    d: &Declaration,
    liveness: &Arc<Liveness>,
    shutdown: &CancellationToken,
) -> Result<Vec<Target>, PushError> {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for sys in &d.systems {
        let Some(p) = &sys.push else { continue };
        let name = sys.decl.name.get_ref();
        let signer = match secret(name, p) {
            Ok(s) => s,
            Err(e) => {
                problems.push(e);
                continue;
            }
        };
        let endpoint =
            match Endpoint::new(name, p.clone(), signer, liveness.clone(), shutdown.clone()) {
                Ok(e) => e,
                Err(e) => {
                    problems.push(format!("system {name}: {e}"));
                    continue;
                }
            };
        let consumers = sys
            .consumers
            .iter()
            .map(|(durable, c)| {
                (
                    c.stream.get_ref().clone(),
                    durable.clone(),
                    Declared {
                        max_deliver: c.max_deliver.unwrap_or(-1),
                        ack_wait: c.ack_wait.unwrap_or(PushDecl::DEFAULT_ACK_WAIT),
                    },
                    c.pinned.unwrap_or(p.takeover()),
                )
            })
            .collect();
        out.push(Target {
            endpoint: Arc::new(endpoint),
            consumers,
        });
    }
    if !problems.is_empty() {
        return Err(PushError::Setup(problems));
    }
    if out.is_empty() {
        return Err(PushError::Setup(vec![
            "no system in the declaration has a [push] table: nothing to push".into(),
        ]));
    }
    Ok(out)
}

/// Delivers every pushed system's events until `shutdown`. Each consumer is read with its
/// system's identity when `credentials` names the folder of seeds.
pub async fn run(
    cfg: &Config,
    targets: Vec<Target>,
    liveness: Arc<Liveness>,
    credentials: Option<&Path>,
    shutdown: CancellationToken,
) -> Result<(), PushError> {
    let ticker = tokio::spawn(liveness.clone().tick(shutdown.clone()));
    crate::metrics::health().set(
        true,
        format!(
            "pushing to {}",
            targets
                .iter()
                .map(|t| t.endpoint.system.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    let mut tasks = JoinSet::new();
    for t in targets {
        let system = t.endpoint.system.clone();
        let mut nats = cfg.nats.clone();
        if let Some(dir) = credentials {
            nats.nkey = Some(dir.join(format!("{system}.nk")));
            nats.credentials = None;
            nats.inbox_prefix = None;
        }
        let client =
            crate::nats::connect(&nats, &format!("mes-events push {system}"), true).await?;
        let js = crate::nats::jetstream(client, &nats, 256);
        for (stream, durable, declared, takeover) in t.consumers {
            let opts = Options {
                concurrency: t.endpoint.concurrency(),
                batch: (t.endpoint.concurrency() * t.endpoint.batching().max_events)
                    .clamp(64, 1000),
                // Events a push instance that died or froze had in hand come back after
                // ack_wait: gather until then, each time this one is pinned.
                settle: declared.ack_wait + Duration::from_secs(1),
                group: Some(PushDecl::GROUP.to_owned()),
                // Pull requests expire at half the pin's timeout (heartbeat × 3).
                heartbeat: (takeover / 6).max(Duration::from_millis(100)),
                alive: Some(consume::Alive({
                    let l = liveness.clone();
                    Arc::new(move || l.fresh())
                })),
                declared: Some(declared),
            };
            let endpoint = t.endpoint.clone();
            let (js, shutdown) = (js.clone(), shutdown.clone());
            let mut freezes = liveness.freezes();
            let liveness = liveness.clone();
            // The endpoint's gauges, every second.
            tokio::spawn({
                let (endpoint, shutdown) = (endpoint.clone(), shutdown.clone());
                async move {
                    let mut every = tokio::time::interval(Duration::from_secs(1));
                    loop {
                        tokio::select! {
                            _ = every.tick() => endpoint.refresh_metrics(),
                            _ = shutdown.cancelled() => return,
                        }
                    }
                }
            });
            info!(%system, %stream, consumer = %durable, "pushing");
            let system = system.clone();
            tasks.spawn(async move {
                let mut stats = consume::Stats::default();
                loop {
                    // One run, until stopping or a freeze: then what it held is let go.
                    let run = shutdown.child_token();
                    let watch = {
                        let run = run.clone();
                        async move {
                            tokio::select! {
                                _ = freezes.changed() => run.cancel(),
                                _ = run.cancelled() => {}
                            }
                            freezes
                        }
                    };
                    // A freeze after this ends the run; what it still holds is not sent.
                    let epoch = liveness.epoch();
                    let handler_endpoint = endpoint.clone();
                    let handler = move |ds: Vec<consume::Delivery>| {
                        let endpoint = handler_endpoint.clone();
                        async move { endpoint.deliver(ds, epoch).await }
                    };
                    let (done, back) = tokio::join!(
                        async {
                            let done = consume::run_batched(
                                &js,
                                &stream,
                                &durable,
                                opts.clone(),
                                endpoint.batching(),
                                handler,
                                run.clone(),
                            )
                            .await;
                            run.cancel();
                            done
                        },
                        watch
                    );
                    freezes = back;
                    endpoint.forget();
                    match done {
                        Ok(s) => {
                            stats.handled += s.handled;
                            stats.retried += s.retried;
                            stats.poisoned += s.poisoned;
                            stats.dead += s.dead;
                        }
                        Err(e) => return (system, stream, durable, Err(e)),
                    }
                    if shutdown.is_cancelled() {
                        return (system, stream, durable, Ok(stats));
                    }
                }
            });
        }
    }
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok((system, stream, durable, Ok(stats))) => {
                info!(%system, %stream, consumer = %durable, delivered = stats.handled, retried = stats.retried, dead = stats.poisoned + stats.dead, "stopped pushing");
            }
            Ok((system, stream, durable, Err(e))) => {
                error!(%system, %stream, consumer = %durable, error = %e, "cannot push");
            }
            Err(e) => error!(error = %e, "a push task failed"),
        }
    }
    let _ = ticker.await;
    Ok(())
}

/// The liveness check for the declaration's pushed systems: frozen means longer than half the
/// shortest `takeover` (a pin is lost after a whole one without pulls).
pub fn liveness_for(d: &Declaration) -> Arc<Liveness> {
    let takeover = d
        .systems
        .iter()
        .filter_map(|s| s.push.as_ref())
        .map(PushDecl::takeover)
        .min()
        .unwrap_or(Duration::from_secs(3));
    Liveness::new(takeover / 2)
}
