//! Consume: bind to a durable pull consumer, decode CloudEvents, run a handler, and keep each
//! key's events in order even though handlers run concurrently across keys.
//!
//! Ordering rule: a key handles one event at a time, in stream order. A transient failure naks
//! the event with a delay and blocks its key on that event: the key's later events are held
//! here (kept alive with in-progress acks) until the naked one is redelivered and handled.
//! Events are told apart by stream sequence and CloudEvents source and id together: after a
//! stream lost its tail and had it published again, a sequence handed out before may hold
//! another event, and an event handled before may come again at another sequence.
//! On the consumer's last allowed delivery a failing event is nak'ed once more, so the server
//! gives up on it and announces it as a dead letter (max-deliveries advisory), and the key goes
//! on. A poison event (the handler says it can never succeed) is terminated with its reason.
//! A handler that panics is taken as asking to retry its events after a second.
//!
//! [`run_batched`] hands the handler several events at once, at most one per key (the heads of
//! as many free keys as fit), and takes one outcome per event: each is acked, retried or
//! terminated on its own, so the ordering rule is the same. [`run`] is a batch of one.
//!
//! Owns pulling, dispatch and acknowledgement ([`answer`]: what is said to the server for each
//! event; [`receive`]: a pulled message decoded into a delivery); never decides what an event
//! means.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer, AckKind, Context};
use cloudevents::{AttributesReader, Event};
use futures::StreamExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

pub use super::bind::{bind_by_name, bind_in_group};

mod answer;
mod receive;
use answer::{nak_panicked, reply_all, settle_one, Reply};

/// What became of one event in the handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Handled: ack it.
    Done,
    /// Failed for now: redeliver after this delay (the key waits).
    Retry(Duration),
    /// Can never succeed: terminate it with this reason (it goes to the dead letters, whose
    /// advisory carries the reason) and go on with the key.
    Poison(String),
}

/// One event as the handler sees it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub event: Event,
    /// The ordering key (`partitionkey`, else `subject`).
    pub key: String,
    pub stream_seq: u64,
    /// 1 on first delivery.
    pub delivered: i64,
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Messages asked for per pull request.
    pub batch: usize,
    /// Handler calls running at once, each for other keys.
    pub concurrency: usize,
    /// Idle heartbeat of pull requests: a dead connection is noticed within twice this.
    pub heartbeat: Duration,
    /// How long to only gather, at start, before the first handler runs. A run that replaces
    /// one that died leaves events delivered to it and never acked; the server hands them out
    /// again only after `ack_wait`, while newer events of the same keys come at once. Gathering
    /// for a little more than `ack_wait` puts each key's events back in stream order before any
    /// is handled. Zero: handle at once (a first run, or order across a crash does not matter).
    pub settle: Duration,
    /// The priority group to pull in, for a consumer whose policy is a pinned client: the
    /// server delivers to one puller of the group at a time and moves the pin to another after
    /// `priority_timeout` without pulls. Every time this run is pinned anew it settles again
    /// (it takes over from a puller that died or froze). Pull requests then expire well within
    /// the pin's timeout: `heartbeat` × 3.
    pub group: Option<String>,
    /// Asked before keeping events in progress: false when this process may have lost its pin
    /// (it was frozen), so that what it held goes back to the server after ack_wait and not
    /// later. Unset: always.
    pub alive: Option<Alive>,
    /// The consumer's `max_deliver` and `ack_wait` as declared, for an identity that may not read
    /// the consumer's info (a system in its own account, as `provision credentials` sets them
    /// up): then the consumer is bound by name without a lookup. `None`: read them from the
    /// server.
    pub declared: Option<Declared>,
}

/// Whether the process is still fit to hold events (see [`Options::alive`]).
#[derive(Clone)]
pub struct Alive(pub std::sync::Arc<dyn Fn() -> bool + Send + Sync>);

impl std::fmt::Debug for Alive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Alive(…)")
    }
}

/// What a consumer's declaration says about redelivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Declared {
    /// Deliveries before the server gives up on an event (-1: never).
    pub max_deliver: i64,
    pub ack_wait: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            batch: 200,
            concurrency: 16,
            heartbeat: Duration::from_secs(5),
            settle: Duration::ZERO,
            group: None,
            alive: None,
            declared: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    #[error("consumer {consumer} on stream {stream}: {message}")]
    Bind {
        stream: String,
        consumer: String,
        message: String,
    },
}

/// Counts of what happened, returned when the run stops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub handled: u64,
    pub retried: u64,
    pub dead: u64,
    pub poisoned: u64,
    pub duplicates: u64,
}

#[derive(Default)]
struct Key {
    queue: VecDeque<Held>,
    /// The event whose handler is running, if any.
    running: Option<Ident>,
    /// Its ack subject: a handler may take longer than ack_wait (a slow or paused endpoint),
    /// so it is kept in progress like the held ones.
    running_ack: Option<async_nats::Subject>,
    /// The naked event the key waits for (it may come back at another sequence, after a stream
    /// was restored), and the latest it should have come back by.
    blocked_on: Option<Ident>,
    blocked_until: Option<tokio::time::Instant>,
    /// Highest stream sequence handled (or given up on) in this run.
    done: u64,
    /// The last [`RECENT`] events dealt with in this run: a redelivery of one of them (its ack
    /// was lost) is a duplicate. An older one that is not among them is an event a previous run
    /// held and never acked, handed out again after ack_wait, or one published again after its
    /// stream lost it: it is handled, never dropped, though after newer ones of its key unless
    /// `settle` gathered it first.
    recent: VecDeque<Ident>,
}

/// An event as delivered: its stream sequence and its CloudEvents source and id. The sequence
/// alone does not tell events apart: a stream that lost its tail (a power cut before its server
/// synced) and had it published again holds other events at sequences it had handed out before.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ident {
    seq: u64,
    event: String,
}

impl Ident {
    fn of(d: &Delivery) -> Ident {
        Ident {
            seq: d.stream_seq,
            event: format!("{} {}", d.event.source(), d.event.id()),
        }
    }
}

/// Sequences remembered per key to recognise a redelivery of one already dealt with.
const RECENT: usize = 64;

impl Key {
    fn dealt_with(&mut self, d: &Delivery) {
        self.dealt_with_ident(Ident::of(d));
    }

    fn dealt_with_ident(&mut self, ident: Ident) {
        self.done = self.done.max(ident.seq);
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(ident);
    }
}

struct Held {
    msg: jetstream::Message,
    delivery: Delivery,
    /// Bytes on the stream (payload and headers), for [`Batching::max_bytes`].
    size: usize,
}

/// An event a handler call has: enough to retry it should the call panic.
struct Running {
    key: String,
    ident: Ident,
    delivered: i64,
    reply: Option<async_nats::Subject>,
}

/// The latest a naked event is expected back (it comes after `delay`, or `ack_wait` when the
/// nak was lost): generously, so that only one the server will never hand out again is given
/// up on.
fn give_up_waiting(delay: Duration, ack_wait: Duration) -> tokio::time::Instant {
    tokio::time::Instant::now() + (delay + ack_wait) * 10 + Duration::from_secs(60)
}

/// How soon an event whose handler panicked is delivered again.
const PANIC_DELAY: Duration = Duration::from_secs(1);

/// How many events one handler call of [`run_batched`] takes at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// Events per call (one per key), 1 or more.
    pub max_events: usize,
    /// Their bytes on the stream (payload and headers) together; a single larger event still
    /// goes, alone.
    pub max_bytes: usize,
}

impl Batching {
    /// One event per call: [`run`].
    pub const ONE: Batching = Batching {
        max_events: 1,
        max_bytes: usize::MAX,
    };
}

/// Runs `handler` over the consumer until `shutdown`; in-flight handlers finish and are acked.
pub async fn run<H, F>(
    js: &Context,
    stream: &str,
    consumer: &str,
    opts: Options,
    handler: H,
    shutdown: CancellationToken,
) -> Result<Stats, ConsumeError>
where
    H: Fn(Delivery) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Outcome> + Send + 'static,
{
    let one = move |mut ds: Vec<Delivery>| {
        let handler = handler.clone();
        async move {
            match ds.pop() {
                Some(d) => vec![handler(d).await],
                None => Vec::new(),
            }
        }
    };
    run_batched(js, stream, consumer, opts, Batching::ONE, one, shutdown).await
}

/// Runs `handler` over the consumer until `shutdown`, giving it up to `batching` events at a
/// time, at most one per key, in no particular order. It answers one outcome per event, in the
/// order given; an event it gives no outcome for is retried, its key waiting for it.
/// A batch forms from the keys free when a handler can start: while fewer than `concurrency`
/// calls run, an event goes at once, alone if it is alone; under load batches fill up.
pub async fn run_batched<H, F>(
    js: &Context,
    stream: &str,
    consumer: &str,
    opts: Options,
    batching: Batching,
    handler: H,
    shutdown: CancellationToken,
) -> Result<Stats, ConsumeError>
where
    H: Fn(Vec<Delivery>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Vec<Outcome>> + Send + 'static,
{
    let bind = |message: String| ConsumeError::Bind {
        stream: stream.to_owned(),
        consumer: consumer.to_owned(),
        message,
    };
    let (max_deliver, ack_wait) = match opts.declared {
        Some(d) => (d.max_deliver, d.ack_wait),
        None => {
            let mut c: PullConsumer = js
                .get_consumer_from_stream(consumer, stream)
                .await
                .map_err(|e| bind(e.to_string()))?;
            let info = c.info().await.map_err(|e| bind(e.to_string()))?;
            (info.config.max_deliver, info.config.ack_wait)
        }
    };
    let ack_wait = ack_wait.max(Duration::from_secs(1));
    let request = super::pull::Request {
        batch: opts.batch,
        heartbeat: opts.heartbeat,
        // Pinned: a pull must come well within the pin's timeout.
        expires: opts.heartbeat * if opts.group.is_some() { 3 } else { 6 },
        group: opts.group.clone(),
    };
    let mut messages = super::pull::messages(js, stream, consumer, request)
        .await
        .map_err(|e| bind(e.to_string()))?;

    let mut keys: HashMap<String, Key> = HashMap::new();
    let mut tasks: JoinSet<(Vec<Held>, Vec<Outcome>)> = JoinSet::new();
    // Answers to the server under way (awaited before the run returns).
    let acking = tokio_util::task::TaskTracker::new();
    // The events each running handler call has, to retry them should it panic.
    let mut running: HashMap<tokio::task::Id, Vec<Running>> = HashMap::new();
    let mut stats = Stats::default();
    let mut progress = tokio::time::interval(ack_wait / 2);
    progress.tick().await;
    // Pinned in a group: settle from each new pin (this run takes over), not from the start.
    let mut settled_at = tokio::time::Instant::now() + opts.settle;
    let mut settled = opts.settle.is_zero() || opts.group.is_some();
    let mut pin: Option<String> = None;
    let batching = Batching {
        max_events: batching.max_events.max(1),
        ..batching
    };
    let read_on = opts.group.is_some() || batching.max_events > 1;

    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            // Read on while every handler is busy only when pinned (a pinned client that stops
            // pulling for the pin's timeout loses the pin, and would settle again once
            // re-pinned) or batching (so that the next batch has events to take); the server
            // still bounds what it hands out by max_ack_pending.
            next = messages.next(), if tasks.len() < opts.concurrency || read_on => {
                let msg = match next {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        // Missing heartbeats and reconnects surface here; the stream goes on.
                        debug!(error = %e, "pull stream");
                        continue;
                    }
                    None => break,
                };
                if opts.group.is_some() && !opts.settle.is_zero() {
                    let now_pinned = msg
                        .headers
                        .as_ref()
                        .and_then(|h| h.get_last(async_nats::header::NATS_PIN_ID))
                        .map(|v| v.as_str().to_owned());
                    if now_pinned.is_some() && now_pinned != pin {
                        debug!(pin = ?now_pinned, "pinned: this run delivers now; gathering first");
                        pin = now_pinned;
                        settled = false;
                        settled_at = tokio::time::Instant::now() + opts.settle;
                    }
                }
                let Some(held) = receive::receive(msg).await else { continue };
                let k = keys.entry(held.delivery.key.clone()).or_default();
                let seq = held.delivery.stream_seq;
                let ident = Ident::of(&held.delivery);
                let waited_for = k.blocked_on.as_ref().is_some_and(|b| b.event == ident.event);
                if k.recent.contains(&ident) {
                    stats.duplicates += 1;
                    let _ = held.msg.ack().await;
                } else if k.running.as_ref() == Some(&ident) {
                    stats.duplicates += 1; // redelivered while its handler runs: that one acks
                } else if waited_for {
                    k.blocked_on = None;
                    k.blocked_until = None;
                    k.queue.push_front(held);
                } else if k.queue.iter().any(|h| Ident::of(&h.delivery) == ident) {
                    stats.duplicates += 1; // redelivered while held: keep the one we hold
                } else if seq < k.done {
                    // Handed out by a previous run and never acked, or published again after
                    // its stream lost it (then maybe handled already: the handler tells by the
                    // event's source and id). In stream order among what waits.
                    debug!(seq, key = %held.delivery.key, after = k.done, "an event older than ones its key has handled came: handled now (settle keeps order across restarts)");
                    let at = k.queue.partition_point(|h| h.delivery.stream_seq < seq);
                    k.queue.insert(at, held);
                } else {
                    // In stream order: an older event handed out again (after its ack_wait)
                    // goes before the newer ones of its key that wait here.
                    let at = k.queue.partition_point(|h| h.delivery.stream_seq < seq);
                    k.queue.insert(at, held);
                }
            }
            Some(done) = tasks.join_next_with_id() => {
                let (held, outcomes) = match done {
                    Ok((id, r)) => {
                        running.remove(&id);
                        r
                    }
                    Err(e) => {
                        // As if it had asked to retry each of its events: nak'ed, their keys
                        // wait for them (or go on, after an event's last delivery).
                        warn!(error = %e, "handler panicked; its events will be redelivered");
                        let rs = running.remove(&e.id()).unwrap_or_default();
                        for r in &rs {
                            let k = keys.entry(r.key.clone()).or_default();
                            k.running = None;
                            k.running_ack = None;
                            if max_deliver > 0 && r.delivered >= max_deliver {
                                k.dealt_with_ident(r.ident.clone());
                                stats.dead += 1;
                            } else {
                                k.blocked_on = Some(r.ident.clone());
                                k.blocked_until = Some(give_up_waiting(PANIC_DELAY, ack_wait));
                                stats.retried += 1;
                            }
                        }
                        nak_panicked(&js.client(), rs).await;
                        continue;
                    }
                };
                if held.len() != outcomes.len() {
                    warn!(events = held.len(), outcomes = outcomes.len(), "the handler answered for a different number of events than it was given: those without an answer are retried");
                }
                let mut outcomes = outcomes.into_iter();
                let mut replies = Vec::with_capacity(held.len());
                for held in held {
                    // No answer: retried like a failure, its key waiting for it (never passed).
                    let outcome = outcomes.next().unwrap_or(Outcome::Retry(PANIC_DELAY));
                    let k = keys.entry(held.delivery.key.clone()).or_default();
                    k.running = None;
                    k.running_ack = None;
                    let r = settle_one(
                        k,
                        &held.delivery,
                        outcome,
                        (max_deliver, ack_wait),
                        &mut stats,
                    );
                    replies.push((held, r));
                }
                // Off the loop: the next events of these keys need not wait for the acks.
                acking.spawn(reply_all(replies));
            }
            _ = tokio::time::sleep_until(settled_at), if !settled => {
                settled = true;
            }
            _ = progress.tick() => {
                // A key waits for its naked event, which the server hands out again after the
                // delay asked for. One that never comes back (its stream lost it in a power
                // cut and could not restore it, or it was deleted) would hold the key for
                // good, silently: it goes on, and says so.
                let now = tokio::time::Instant::now();
                for (key, k) in keys.iter_mut() {
                    if k.blocked_until.is_some_and(|t| t <= now) {
                        if let Some(b) = k.blocked_on.take() {
                            warn!(seq = b.seq, %key, event = %b.event, "the event this key waits for never came back (its stream lost it, or it was deleted): the key goes on without it");
                        }
                        k.blocked_until = None;
                    }
                }
                // Held events wait on their key, running ones on their handler: keep them from
                // being redelivered meanwhile (not after a freeze: they may be someone else's).
                if opts.alive.as_ref().is_some_and(|a| !(a.0)()) {
                    continue;
                }
                let client = js.client();
                for k in keys.values() {
                    for h in &k.queue {
                        let _ = h.msg.ack_with(AckKind::Progress).await;
                    }
                    if let Some(ack) = &k.running_ack {
                        let _ = client.publish(ack.clone(), "+WPI".into()).await;
                    }
                }
            }
        }
        // Start handlers for the keys that are free, not blocked and have something queued:
        // each takes the heads of as many keys as its batch holds.
        if settled {
            let mut free = keys
                .values_mut()
                .filter(|k| k.running.is_none() && k.blocked_on.is_none() && !k.queue.is_empty())
                .peekable();
            while tasks.len() < opts.concurrency {
                let mut batch: Vec<Held> = Vec::new();
                let mut bytes = 0usize;
                while batch.len() < batching.max_events {
                    let Some(size) = free.peek().and_then(|k| k.queue.front()).map(|h| h.size)
                    else {
                        break;
                    };
                    if !batch.is_empty() && bytes.saturating_add(size) > batching.max_bytes {
                        break; // it starts the next batch
                    }
                    let k = free.next().expect("peeked");
                    let held = k.queue.pop_front().expect("filtered on a queued event");
                    k.running = Some(Ident::of(&held.delivery));
                    k.running_ack = held.msg.reply.clone();
                    bytes = bytes.saturating_add(size);
                    batch.push(held);
                }
                if batch.is_empty() {
                    break;
                }
                let handler = handler.clone();
                let batch_keys = batch
                    .iter()
                    .map(|h| Running {
                        key: h.delivery.key.clone(),
                        ident: Ident::of(&h.delivery),
                        delivered: h.delivery.delivered,
                        reply: h.msg.reply.clone(),
                    })
                    .collect();
                let task = tasks.spawn(async move {
                    let outcomes =
                        handler(batch.iter().map(|h| h.delivery.clone()).collect()).await;
                    (batch, outcomes)
                });
                running.insert(task.id(), batch_keys);
            }
        }
        keys.retain(|_, k| {
            k.running.is_some() || k.blocked_on.is_some() || !k.queue.is_empty() || k.done > 0
        });
    }
    // Let running handlers finish and record them; held events are redelivered to the next run.
    while let Some(done) = tasks.join_next_with_id().await {
        let (held, outcomes) = match done {
            Ok((_, r)) => r,
            Err(e) => {
                nak_panicked(&js.client(), running.remove(&e.id()).unwrap_or_default()).await;
                continue;
            }
        };
        let replies = held
            .into_iter()
            .zip(outcomes)
            .map(|(held, outcome)| {
                let r = match outcome {
                    Outcome::Done => {
                        stats.handled += 1;
                        Reply::Ack
                    }
                    Outcome::Retry(d) => Reply::Nak(d),
                    Outcome::Poison(reason) => {
                        stats.poisoned += 1;
                        Reply::Term(reason)
                    }
                };
                (held, r)
            })
            .collect();
        reply_all(replies).await;
    }
    acking.close();
    acking.wait().await;
    Ok(stats)
}
