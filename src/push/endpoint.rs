//! One system's endpoint: sending an event there, and the endpoint's own state shared by every
//! key's attempt: its rate limit, a wait it asked for (429 / `Retry-After`) and its circuit
//! breaker. Waiting for the endpoint is never an attempt: the event stays in progress on its
//! consumer, so an endpoint that is down or slow uses up no event's retries while it is paused.
//!
//! The circuit opens after `pause_after` failures in a row (10 unless declared), across keys:
//! requests stop for a cool-down (`pause`, 30 s unless declared, doubling up to 10 minutes),
//! then flow again; the first success closes it.
//! Each change is logged once, at ERROR when it opens and INFO when it closes.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use cloudevents::AttributesReader;

use super::request::{self, Signer, Verdict};
use super::transport::{read_prefix, tls, transport_error};
use crate::provision::decl::{PushDecl, PushMode};
use crate::read::consume::{Batching, Delivery, Outcome};

const MAX_COOL_DOWN: Duration = Duration::from_secs(600);

#[derive(Debug, Default)]
struct State {
    failures_in_a_row: u32,
    /// Requests wait until then (circuit open, or the endpoint asked to wait).
    paused_until: Option<Instant>,
    circuit_open: bool,
    cool_down: Duration,
    /// The next request may start then (rate limit).
    next_slot: Option<Instant>,
}

/// What the operator and the metrics see of an endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub paused: bool,
    pub circuit_open: bool,
    pub failures_in_a_row: u32,
}

pub struct Endpoint {
    pub system: String,
    url: String,
    /// The URL fit for logs and dead letters: without its query, where endpoints such as
    /// Azure Functions (`?code=`) carry a key.
    shown: String,
    client: reqwest::Client,
    signer: Signer,
    decl: PushDecl,
    schedule: Vec<Duration>,
    max_deliver: i64,
    state: Mutex<State>,
    /// Events being delivered or waiting for their retry: stream sequence → when they happened.
    undelivered: Mutex<std::collections::HashMap<u64, chrono::DateTime<chrono::Utc>>>,
    liveness: std::sync::Arc<super::Liveness>,
    shutdown: CancellationToken,
}

impl Endpoint {
    pub fn new(
        system: &str,
        decl: PushDecl,
        signer: Signer,
        liveness: std::sync::Arc<super::Liveness>,
        shutdown: CancellationToken,
    ) -> Result<Endpoint, String> {
        let client = tls(reqwest::Client::builder(), &decl)?
            .timeout(decl.timeout())
            .connect_timeout(decl.timeout().min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(60))
            // Which instance sent it, for the receiver's logs.
            .user_agent(format!(
                "mes-events/{} push {}:{}",
                env!("CARGO_PKG_VERSION"),
                crate::host::name(),
                std::process::id()
            ))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Endpoint {
            system: system.to_owned(),
            url: decl.url.get_ref().clone(),
            shown: shown_url(decl.url.get_ref()),
            schedule: decl.retry(),
            max_deliver: decl.max_deliver(),
            client,
            signer,
            decl,
            state: Mutex::new(State::default()),
            undelivered: Mutex::default(),
            liveness,
            shutdown,
        })
    }

    /// Keys delivered at once.
    pub fn concurrency(&self) -> usize {
        self.decl.concurrency()
    }

    pub fn snapshot(&self) -> Snapshot {
        let s = self.state.lock().unwrap();
        Snapshot {
            paused: s.paused_until.is_some_and(|t| t > Instant::now()),
            circuit_open: s.circuit_open,
            failures_in_a_row: s.failures_in_a_row,
        }
    }

    /// Events per request: several in batched mode, else one.
    pub fn batching(&self) -> Batching {
        match self.decl.mode {
            PushMode::Batched => Batching {
                max_events: self
                    .decl
                    .max_batch
                    .as_ref()
                    .map_or(PushDecl::DEFAULT_MAX_BATCH, |n| *n.get_ref()),
                max_bytes: self
                    .decl
                    .max_batch_bytes
                    .as_ref()
                    .map_or(PushDecl::DEFAULT_MAX_BATCH_BYTES, |n| *n.get_ref()),
            },
            _ => Batching::ONE,
        }
    }

    /// Events of different keys (one unless batched mode): waits while the endpoint is paused,
    /// sends them (each alone, or together in one batched request) and says what to do with
    /// each, in order.
    /// `epoch` is the freeze count when the run that hands them started ([`super::Liveness`]):
    /// nothing is sent once the process was frozen since.
    pub async fn deliver(&self, ds: Vec<Delivery>, epoch: u64) -> Vec<Outcome> {
        self.track(&ds);
        let outcomes = if self.decl.mode == PushMode::Batched {
            self.attempt_batch(&ds, epoch).await
        } else {
            let mut outcomes = Vec::with_capacity(ds.len());
            for d in &ds {
                outcomes.push(self.attempt(d, epoch).await);
            }
            outcomes
        };
        self.record(&ds, &outcomes);
        outcomes
    }

    /// Notes events as undelivered from when they happened.
    fn track(&self, ds: &[Delivery]) {
        let mut undelivered = self.undelivered.lock().unwrap();
        for d in ds {
            let occurred = d
                .event
                .time()
                .map_or_else(chrono::Utc::now, |t| t.with_timezone(&chrono::Utc));
            undelivered.entry(d.stream_seq).or_insert(occurred);
        }
    }

    /// Counts what became of events and forgets the ones that are no longer undelivered.
    fn record(&self, ds: &[Delivery], outcomes: &[Outcome]) {
        let m = crate::metrics::get();
        let label = self.label();
        let mut undelivered = self.undelivered.lock().unwrap();
        for (d, outcome) in ds.iter().zip(outcomes) {
            match outcome {
                Outcome::Done => m.push_delivered.get_or_create(&label).inc(),
                Outcome::Retry(_) => m.push_retries.get_or_create(&label).inc(),
                Outcome::Poison(_) => m.push_dead_letters.get_or_create(&label).inc(),
            };
            if !matches!(outcome, Outcome::Retry(_)) {
                undelivered.remove(&d.stream_seq);
            }
        }
        drop(undelivered);
        self.refresh_metrics();
    }

    /// Events being delivered or waiting for their retry.
    pub fn undelivered(&self) -> usize {
        self.undelivered.lock().unwrap().len()
    }

    /// Forgets the events it was delivering: a run that ended hands them back to the server.
    pub fn forget(&self) {
        self.undelivered.lock().unwrap().clear();
        self.refresh_metrics();
    }

    fn label(&self) -> crate::metrics::System {
        crate::metrics::System {
            system: self.system.clone(),
        }
    }

    /// Sets the endpoint's gauges: paused, and the age of the oldest event it is delivering or
    /// will retry (the push service calls it every second too).
    pub fn refresh_metrics(&self) {
        let m = crate::metrics::get();
        let label = self.label();
        let oldest = self.undelivered.lock().unwrap().values().min().copied();
        let age = oldest.map_or(0.0, |t| {
            (chrono::Utc::now() - t)
                .to_std()
                .unwrap_or_default()
                .as_secs_f64()
        });
        m.push_oldest_undelivered_seconds
            .get_or_create(&label)
            .set(age);
        m.push_paused
            .get_or_create(&label)
            .set(i64::from(self.snapshot().paused));
    }

    async fn attempt(&self, d: &Delivery, epoch: u64) -> Outcome {
        let sent = self
            .send_until_answered(epoch, |now| {
                request::build(
                    d.event.clone(),
                    self.decl.mode,
                    &self.decl.headers,
                    &self.signer,
                    now,
                )
            })
            .await;
        self.outcome_of(d, sent)
    }

    /// A batch: one request for all. When the endpoint refuses its content (400, 413, 422), or it
    /// fails again after a batch of these events failed before (a receiver answering 500 while
    /// one event's handler keeps raising), its events are sent again one per request, so the
    /// one at fault is found and the others are delivered instead of following it to the dead
    /// letters. A first failure of another kind is every event's: each is retried on its own
    /// schedule. Splitting does not multiply requests to an endpoint that is down: once it is
    /// paused, each request waits for its turn.
    async fn attempt_batch(&self, ds: &[Delivery], epoch: u64) -> Vec<Outcome> {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; ds.len()];
        // An event that cannot be an element of a batch is poison on its own.
        let mut members = Vec::new();
        for (i, d) in ds.iter().enumerate() {
            match request::batch_element(d.event.clone()) {
                Ok(v) => members.push((i, v)),
                Err(e) => {
                    outcomes[i] = Some(Outcome::Poison(format!("cannot be sent as HTTP: {e}")))
                }
            }
        }
        let sent = self.send_batch(ds, &members, epoch).await;
        let split = members.len() > 1
            && match &sent {
                Sent::Failed { refused: true, .. } => true,
                Sent::Failed { .. } => members.iter().any(|(i, _)| ds[*i].delivered >= 2),
                _ => false,
            };
        match sent {
            Sent::Failed { reason, .. } if split => {
                warn!(system = %self.system, url = %self.shown, events = members.len(), %reason,
                    "a batch was refused, or failed again: its events are sent one per request, to find the one at fault");
                let mut stopping = false;
                for m in &members {
                    let one = std::slice::from_ref(m);
                    let sent = if stopping {
                        Sent::Stopping
                    } else {
                        self.send_batch(ds, one, epoch).await
                    };
                    stopping |= matches!(sent, Sent::Stopping);
                    outcomes[m.0] = Some(self.outcome_of(&ds[m.0], sent));
                }
            }
            sent => {
                for (i, _) in &members {
                    outcomes[*i] = Some(self.outcome_of(&ds[*i], sent.clone()));
                }
            }
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or(Outcome::Retry(Duration::ZERO)))
            .collect()
    }

    /// One batched request of `members` (index into `ds`, element).
    async fn send_batch(
        &self,
        ds: &[Delivery],
        members: &[(usize, serde_json::Value)],
        epoch: u64,
    ) -> Sent {
        if members.is_empty() {
            return Sent::Delivered;
        }
        let events: Vec<cloudevents::Event> =
            members.iter().map(|(i, _)| ds[*i].event.clone()).collect();
        self.send_until_answered(epoch, |now| {
            request::build_batch(
                &events,
                members.iter().map(|(_, v)| v.clone()).collect(),
                &self.decl.headers,
                &self.signer,
                now,
            )
        })
        .await
    }

    /// What a request's fate means for one of its events.
    fn outcome_of(&self, d: &Delivery, sent: Sent) -> Outcome {
        match sent {
            Sent::Delivered => Outcome::Done,
            // Stopping (or just frozen) while waiting for the endpoint: hand it back untried.
            Sent::Stopping => Outcome::Retry(Duration::ZERO),
            Sent::Unsendable(e) => Outcome::Poison(format!("cannot be sent as HTTP: {e}")),
            Sent::Failed { reason, .. } => self.after_failure(d, &reason),
        }
    }

    /// A failed attempt of `d`: retried after the schedule's delay, or after its last attempt a
    /// dead letter with the reason.
    fn after_failure(&self, d: &Delivery, reason: &str) -> Outcome {
        let attempt = d.delivered;
        debug!(system = %self.system, url = %self.shown, seq = d.stream_seq, key = %d.key, attempt, %reason, "attempt failed");
        if self.max_deliver > 0 && attempt >= self.max_deliver {
            return Outcome::Poison(format!(
                "{reason} (POST {}, attempt {attempt} of {})",
                self.shown, self.max_deliver
            ));
        }
        Outcome::Retry(request::delay(&self.schedule, attempt))
    }

    /// Sends the request `build` makes (signed at the moment it goes) once the endpoint takes
    /// one, again after every wait the endpoint asks for, until it is answered or fails.
    async fn send_until_answered(
        &self,
        epoch: u64,
        build: impl Fn(i64) -> Result<request::Request, String>,
    ) -> Sent {
        loop {
            if !self.wait_turn().await || !self.liveness.fresh_in(epoch) {
                return Sent::Stopping;
            }
            let req = match build(chrono::Utc::now().timestamp()) {
                Ok(r) => r,
                Err(e) => return Sent::Unsendable(e),
            };
            // Right before sending: a process that was just frozen may have lost its pin and
            // another instance may deliver this key now; it sends nothing more of what it held.
            if !self.liveness.fresh_in(epoch) {
                return Sent::Stopping;
            }
            let started = Instant::now();
            let (verdict, class, status) = self.send(req).await;
            let m = crate::metrics::get();
            m.push_request_seconds
                .get_or_create(&self.label())
                .observe(started.elapsed().as_secs_f64());
            if let Some(class) = class {
                m.push_failed
                    .get_or_create(&crate::metrics::PushFailure {
                        system: self.system.clone(),
                        class: class.into(),
                    })
                    .inc();
            }
            match verdict {
                Verdict::Delivered => {
                    self.succeeded();
                    return Sent::Delivered;
                }
                Verdict::Throttled(wait) => {
                    m.push_throttled.get_or_create(&self.label()).inc();
                    warn!(system = %self.system, url = %self.shown, wait = %crate::show::duration(wait), "the endpoint asks to wait; its events wait");
                    self.pause_for(wait);
                }
                Verdict::Failed(reason) => {
                    self.failed(&reason, status == Some(410));
                    let refused = matches!(status, Some(400 | 413 | 422));
                    return Sent::Failed { reason, refused };
                }
            }
        }
    }

    /// The verdict, the class of failure when it failed, and the HTTP status if answered.
    async fn send(&self, req: request::Request) -> (Verdict, Option<&'static str>, Option<u16>) {
        let mut b = self.client.post(&self.url);
        for (k, v) in &req.headers {
            b = b.header(k, v);
        }
        match b.body(req.body).send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let retry_after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                // Enough of the body for the dead letter's excerpt; not the whole of it.
                let body = read_prefix(resp, 1024).await;
                let v = request::verdict(status, retry_after.as_deref(), &body);
                let class = match (&v, status) {
                    (Verdict::Failed(_), 400..=499) => Some("4xx"),
                    (Verdict::Failed(_), 500..=599) => Some("5xx"),
                    (Verdict::Failed(_), _) => Some("other"),
                    _ => None,
                };
                (v, class, Some(status))
            }
            Err(e) => {
                let class = if e.is_timeout() {
                    "timeout"
                } else if e.is_connect() {
                    "connect"
                } else {
                    "other"
                };
                (Verdict::Failed(transport_error(&e)), Some(class), None)
            }
        }
    }

    /// Waits for the endpoint to take a request (circuit, asked wait, rate limit); false when
    /// stopping.
    async fn wait_turn(&self) -> bool {
        loop {
            let (wait, then_go) = match self.turn() {
                Turn::Go => return !self.shutdown.is_cancelled(),
                Turn::Paused(w) => (w, false),
                Turn::SlotIn(w) => (w, true),
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.shutdown.cancelled() => return false,
            }
            if then_go {
                return true;
            }
        }
    }

    fn turn(&self) -> Turn {
        let mut s = self.state.lock().unwrap();
        let now = Instant::now();
        if let Some(t) = s.paused_until.filter(|t| *t > now) {
            return Turn::Paused(t - now);
        }
        let Some(rate) = self.decl.rate_limit.as_ref().map(|r| *r.get_ref()) else {
            return Turn::Go;
        };
        // One slot per 1/rate seconds, taken in turn.
        let slot = s.next_slot.filter(|t| *t > now).unwrap_or(now);
        s.next_slot = Some(slot + Duration::from_secs_f64(1.0 / rate));
        if slot > now {
            Turn::SlotIn(slot - now)
        } else {
            Turn::Go
        }
    }

    fn pause_for(&self, wait: Duration) {
        let mut s = self.state.lock().unwrap();
        let until = Instant::now() + wait;
        s.paused_until = Some(s.paused_until.map_or(until, |t| t.max(until)));
    }

    fn succeeded(&self) {
        let mut s = self.state.lock().unwrap();
        if s.circuit_open {
            info!(system = %self.system, url = %self.shown, "endpoint answers again: deliveries resume");
        }
        s.failures_in_a_row = 0;
        s.circuit_open = false;
        s.cool_down = Duration::ZERO;
    }

    /// A failed attempt; `gone` (410) pauses the endpoint at once: it says to stop sending.
    fn failed(&self, reason: &str, gone: bool) {
        let mut s = self.state.lock().unwrap();
        s.failures_in_a_row += 1;
        if (gone || s.failures_in_a_row >= self.decl.pause_after())
            && s.paused_until.is_none_or(|t| t <= Instant::now())
        {
            s.cool_down = if s.cool_down.is_zero() {
                self.decl.pause()
            } else {
                (s.cool_down * 2).min(MAX_COOL_DOWN.max(self.decl.pause()))
            };
            s.paused_until = Some(Instant::now() + s.cool_down);
            if !s.circuit_open {
                error!(system = %self.system, url = %self.shown, failures = s.failures_in_a_row, last_error = %reason,
                    pause = %crate::show::duration(s.cool_down),
                    "endpoint paused (410 Gone, or failures in a row): its events wait (none is lost); it is tried again after the pause, or at once when `mes-events push` restarts");
            }
            s.circuit_open = true;
        }
    }
}

/// What became of a request.
#[derive(Debug, Clone)]
enum Sent {
    /// 2xx.
    Delivered,
    /// Not delivered: the status and excerpt, or the transport's error; `refused` when the
    /// endpoint answered that the request's content is unacceptable (400, 413, 422).
    Failed { reason: String, refused: bool },
    /// Stopping, or just frozen: not sent.
    Stopping,
    /// Cannot be made into a request.
    Unsendable(String),
}

/// When a request may go.
enum Turn {
    Go,
    /// The endpoint is paused: ask again after this.
    Paused(Duration),
    /// A rate-limit slot is reserved this far ahead: go then.
    SlotIn(Duration),
}

/// `url` without its query and fragment (`?…` when it had one).
pub fn shown_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let had_query = u.query().is_some();
            u.set_query(None);
            u.set_fragment(None);
            let _ = u.set_password(None);
            if had_query {
                format!("{u}?…")
            } else {
                u.to_string()
            }
        }
        Err(_) => "(an invalid URL)".into(),
    }
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("system", &self.system)
            .field("url", &self.shown)
            .finish()
    }
}
