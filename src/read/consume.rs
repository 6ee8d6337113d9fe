//! Consume: bind to a durable pull consumer, decode CloudEvents, run a handler, and keep each
//! key's events in order even though handlers run concurrently across keys.
//!
//! Ordering rule: a key handles one event at a time, in stream order. A transient failure naks
//! the event with a delay and blocks its key on that stream sequence: the key's later events are
//! held here (kept alive with in-progress acks) until the naked one is redelivered and handled.
//! On the consumer's last allowed delivery a failing event is nak'ed once more, so the server
//! gives up on it and announces it as a dead letter (max-deliveries advisory), and the key goes
//! on. A poison event (the handler says it can never succeed) is terminated with its reason.
//!
//! Owns pulling, dispatch and acknowledgement; never decides what an event means.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer, AckKind, Context};
use cloudevents::{AttributesReader, Event};
use futures::StreamExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::event::binding::{self, Rule};

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
    /// Handlers running at once (across keys).
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
    /// Stream sequence of the event whose handler is running, if any.
    running: Option<u64>,
    /// Its ack subject: a handler may take longer than ack_wait (a slow or paused endpoint),
    /// so it is kept in progress like the held ones.
    running_ack: Option<async_nats::Subject>,
    /// Stream sequence of the naked event the key waits for.
    blocked_on: Option<u64>,
    /// Highest stream sequence handled (or given up on) in this run.
    done: u64,
    /// The last [`RECENT`] sequences dealt with in this run: a redelivery of one of them (its
    /// ack was lost) is a duplicate. An older sequence that is not among them is an event a
    /// previous run held and never acked, handed out again after ack_wait: it is handled, never
    /// dropped, though after newer ones of its key unless `settle` gathered it first.
    recent: VecDeque<u64>,
}

/// Sequences remembered per key to recognise a redelivery of one already dealt with.
const RECENT: usize = 64;

impl Key {
    fn dealt_with(&mut self, seq: u64) {
        self.done = self.done.max(seq);
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(seq);
    }
}

struct Held {
    msg: jetstream::Message,
    delivery: Delivery,
}

/// The durable pull consumer `consumer` of `stream`, bound by name without asking the server for
/// its info: what a system does from its own account, where the JetStream API is not available
/// (only pulls and acks cross the account boundary). A consumer that does not exist shows as
/// pull requests that never deliver. (nats.go `nats.Bind`, nats-py `pull_subscribe_bind`,
/// nats.js `consumers.getConsumerFromInfo`, NATS.Net `new NatsJSConsumer(js, info)`.)
pub fn bind_by_name(js: &Context, stream: &str, consumer: &str) -> PullConsumer {
    bind_in_group(js, stream, consumer, None)
}

/// The same, for a consumer with a pinned-client priority group (the client library tracks the
/// pin only when it knows the policy).
pub fn bind_in_group(
    js: &Context,
    stream: &str,
    consumer: &str,
    group: Option<&str>,
) -> PullConsumer {
    let mut config = jetstream::consumer::pull::Config {
        durable_name: Some(consumer.to_owned()),
        ..Default::default()
    };
    if let Some(g) = group {
        config.priority_policy = jetstream::consumer::PriorityPolicy::PinnedClient;
        config.priority_groups = vec![g.to_owned()];
    }
    let info: jetstream::consumer::Info = serde_json::from_value(serde_json::json!({
        "stream_name": stream,
        "name": consumer,
        "created": "1970-01-01T00:00:00Z",
        "config": jetstream::consumer::IntoConsumerConfig::into_consumer_config(config.clone()),
        "delivered": { "consumer_seq": 0, "stream_seq": 0 },
        "ack_floor": { "consumer_seq": 0, "stream_seq": 0 },
        "num_ack_pending": 0,
        "num_redelivered": 0,
        "num_waiting": 0,
        "num_pending": 0
    }))
    .expect("a consumer info with only the names is valid");
    PullConsumer::new(config, info, js.clone())
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
    let bind = |message: String| ConsumeError::Bind {
        stream: stream.to_owned(),
        consumer: consumer.to_owned(),
        message,
    };
    let (c, max_deliver, ack_wait) = match opts.declared {
        Some(d) => (
            bind_in_group(js, stream, consumer, opts.group.as_deref()),
            d.max_deliver,
            d.ack_wait,
        ),
        None => {
            let mut c: PullConsumer = js
                .get_consumer_from_stream(consumer, stream)
                .await
                .map_err(|e| bind(e.to_string()))?;
            let info = c.info().await.map_err(|e| bind(e.to_string()))?;
            let (max_deliver, ack_wait) = (info.config.max_deliver, info.config.ack_wait);
            (c, max_deliver, ack_wait)
        }
    };
    let ack_wait = ack_wait.max(Duration::from_secs(1));
    let builder = c
        .stream()
        .max_messages_per_batch(opts.batch)
        .heartbeat(opts.heartbeat);
    let builder = match &opts.group {
        Some(g) => builder.expires(opts.heartbeat * 3).group(g.clone()),
        None => builder.expires(opts.heartbeat * 6),
    };
    let mut messages = builder.messages().await.map_err(|e| bind(e.to_string()))?;

    let mut keys: HashMap<String, Key> = HashMap::new();
    let mut tasks: JoinSet<(Held, Outcome)> = JoinSet::new();
    let mut stats = Stats::default();
    let mut progress = tokio::time::interval(ack_wait / 2);
    progress.tick().await;
    // Pinned in a group: settle from each new pin (this run takes over), not from the start.
    let mut settled_at = tokio::time::Instant::now() + opts.settle;
    let mut settled = opts.settle.is_zero() || opts.group.is_some();
    let mut pin: Option<String> = None;

    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            // Read on while every handler is busy only when pinned: a pinned client that stops
            // pulling for the pin's timeout loses the pin (and would settle again once re-pinned);
            // the server still bounds what it hands out by max_ack_pending.
            next = messages.next(), if tasks.len() < opts.concurrency || opts.group.is_some() => {
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
                let Some(held) = receive(msg).await else { continue };
                let k = keys.entry(held.delivery.key.clone()).or_default();
                let seq = held.delivery.stream_seq;
                if k.recent.contains(&seq) {
                    stats.duplicates += 1;
                    let _ = held.msg.ack().await;
                } else if seq < k.done {
                    warn!(seq, key = %held.delivery.key, after = k.done, "an event a previous run held came back after newer ones of its key were handled: handled now, out of order (settle keeps order across restarts)");
                    k.queue.push_front(held);
                } else if k.running == Some(seq) {
                    stats.duplicates += 1; // redelivered while its handler runs: that one acks
                } else if k.blocked_on == Some(seq) {
                    k.blocked_on = None;
                    k.queue.push_front(held);
                } else if k.queue.iter().any(|h| h.delivery.stream_seq == seq) {
                    stats.duplicates += 1; // redelivered while held: keep the one we hold
                } else {
                    // In stream order: an older event handed out again (after its ack_wait)
                    // goes before the newer ones of its key that wait here.
                    let at = k.queue.partition_point(|h| h.delivery.stream_seq < seq);
                    k.queue.insert(at, held);
                }
            }
            Some(done) = tasks.join_next() => {
                let (held, outcome) = match done {
                    Ok(r) => r,
                    Err(e) => {
                        warn!(error = %e, "handler panicked; its event will be redelivered after ack_wait");
                        continue;
                    }
                };
                let d = &held.delivery;
                let k = keys.entry(d.key.clone()).or_default();
                k.running = None;
                k.running_ack = None;
                match outcome {
                    Outcome::Done => {
                        k.dealt_with(d.stream_seq);
                        stats.handled += 1;
                        if let Err(e) = held.msg.double_ack().await {
                            warn!(error = %e, seq = d.stream_seq, "ack failed; the event may be redelivered (and skipped as a duplicate)");
                        }
                    }
                    Outcome::Retry(delay) if max_deliver > 0 && d.delivered >= max_deliver => {
                        // Last delivery: nak so the server gives up and announces it; go on.
                        warn!(seq = d.stream_seq, key = %d.key, "event failed on its last delivery: it goes to the dead letters");
                        k.dealt_with(d.stream_seq);
                        stats.dead += 1;
                        let _ = held.msg.ack_with(AckKind::Nak(Some(delay))).await;
                    }
                    Outcome::Retry(delay) => {
                        stats.retried += 1;
                        k.blocked_on = Some(d.stream_seq);
                        let _ = held.msg.ack_with(AckKind::Nak(Some(delay))).await;
                    }
                    Outcome::Poison(reason) => {
                        warn!(seq = d.stream_seq, key = %d.key, %reason, "poison event terminated");
                        k.dealt_with(d.stream_seq);
                        stats.poisoned += 1;
                        terminate(&held.msg, &reason).await;
                    }
                }
            }
            _ = tokio::time::sleep_until(settled_at), if !settled => {
                settled = true;
            }
            _ = progress.tick() => {
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
        // Start a handler for every key that is free, not blocked and has something queued.
        for k in keys.values_mut().filter(|_| settled) {
            if tasks.len() >= opts.concurrency {
                break;
            }
            if k.running.is_some() || k.blocked_on.is_some() {
                continue;
            }
            if let Some(held) = k.queue.pop_front() {
                k.running = Some(held.delivery.stream_seq);
                k.running_ack = held.msg.reply.clone();
                let handler = handler.clone();
                tasks.spawn(async move {
                    let outcome = handler(held.delivery.clone()).await;
                    (held, outcome)
                });
            }
        }
        keys.retain(|_, k| {
            k.running.is_some() || k.blocked_on.is_some() || !k.queue.is_empty() || k.done > 0
        });
    }
    // Let running handlers finish and record them; held events are redelivered to the next run.
    while let Some(Ok((held, outcome))) = tasks.join_next().await {
        match outcome {
            Outcome::Done => {
                stats.handled += 1;
                let _ = held.msg.double_ack().await;
            }
            Outcome::Retry(d) => {
                let _ = held.msg.ack_with(AckKind::Nak(Some(d))).await;
            }
            Outcome::Poison(reason) => {
                stats.poisoned += 1;
                terminate(&held.msg, &reason).await;
            }
        }
    }
    Ok(stats)
}

/// `+TERM` with the reason, which the server puts in its terminated advisory (the dead letter)
/// from 2.11 on; earlier servers terminate the same and drop the reason.
async fn terminate(msg: &jetstream::Message, reason: &str) {
    let reason: String = reason
        .chars()
        .filter(|c| !c.is_control())
        .take(512)
        .collect();
    match &msg.reply {
        Some(ack) => {
            let _ = msg
                .context
                .client()
                .publish(ack.clone(), format!("+TERM {reason}").into())
                .await;
        }
        None => {
            let _ = msg.ack_with(AckKind::Term).await;
        }
    }
}

/// Decodes a message; one that is not a valid CloudEvent is terminated (it can never succeed).
async fn receive(msg: jetstream::Message) -> Option<Held> {
    let info = msg.info().ok()?;
    let (stream_seq, delivered) = (info.stream_sequence, info.delivered);
    match binding::decode(msg.headers.as_ref(), &msg.payload, Rule::Lenient) {
        Ok(event) => {
            let key = event
                .extension("partitionkey")
                .map(|v| v.to_string())
                .or_else(|| event.subject().map(str::to_owned))
                .unwrap_or_default();
            Some(Held {
                msg,
                delivery: Delivery {
                    event,
                    key,
                    stream_seq,
                    delivered,
                },
            })
        }
        Err(e) => {
            warn!(seq = stream_seq, error = %e, "not a valid CloudEvent: terminated");
            let _ = msg.ack_with(AckKind::Term).await;
            None
        }
    }
}
