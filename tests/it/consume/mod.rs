//! The Rust consumer library, and the commands that work on a system's consumer. This module holds
//! what the tests share: emitters, a durable consumer, collecting handlers and the per-key order
//! check.
//!
//! - [`order`]: per-key order with concurrent handlers, transient failures (nak and redelivery),
//!   batches, a panicking handler, catching up after being offline, a slow consumer beside a
//!   fast one, a server restart.
//! - [`operate`]: dead letters and resend, replay, tail.

mod operate;
mod order;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer;
use mes_events::consume::{self, Delivery, Options, Outcome};
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use crate::support::*;

/// Emits `per_key` events for each of `keys` keys, interleaved, in one statement.
pub async fn emit_many(db: &TestDb, keys: usize, per_key: usize) {
    let c = db.client().await;
    c.execute(
        "select mes_events.emit($1, k, jsonb_build_object('orderId', k, 'previousStatus', null,
                 'status', 'running', 'hierarchyScope', jsonb_build_object('site', 'bsl')))
           from generate_series(0, $2 - 1) g, lateral (select 'order-' || (g % $3) as k) key
          order by g",
        &[&ORDER_TYPE, &((keys * per_key) as i32), &(keys as i32)],
    )
    .await
    .unwrap();
}

pub async fn durable(env: &Env, name: &str, max_deliver: i64) -> consumer::PullConsumer {
    env.js()
        .await
        .get_stream("MES_EVENTS")
        .await
        .unwrap()
        .create_consumer(consumer::pull::Config {
            durable_name: Some(name.into()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_deliver,
            ack_wait: Duration::from_secs(5),
            max_ack_pending: 20_000,
            ..Default::default()
        })
        .await
        .unwrap()
}

/// (key, outbox sequence) of every successfully handled event, in handling order.
type Log = Arc<Mutex<Vec<(String, String)>>>;

fn sequence(d: &Delivery) -> String {
    d.event.extension("sequence").unwrap().to_string()
}

/// A handler that records (key, sequence) of each event after `work`, and stops the run once
/// `n` are recorded.
fn collecting(
    log: &Log,
    stop: &CancellationToken,
    n: usize,
    work: Duration,
) -> impl Fn(Delivery) -> futures::future::BoxFuture<'static, Outcome> + Clone + Send + Sync + 'static
{
    let (log, stop) = (log.clone(), stop.clone());
    move |d: Delivery| {
        let (log, stop) = (log.clone(), stop.clone());
        Box::pin(async move {
            if !work.is_zero() {
                tokio::time::sleep(work).await;
            }
            let mut l = log.lock().unwrap();
            l.push((d.key.clone(), sequence(&d)));
            if l.len() == n {
                stop.cancel();
            }
            Outcome::Done
        })
    }
}

/// Runs the consumer library on the durable `name` of MES_EVENTS until its handler has logged
/// `n` events (within `limit`), and returns the log.
async fn consume_n(
    js: &async_nats::jetstream::Context,
    name: &str,
    n: usize,
    limit: Duration,
) -> Vec<(String, String)> {
    let log: Log = Arc::default();
    let stop = CancellationToken::new();
    let handler = collecting(&log, &stop, n, Duration::ZERO);
    let run = consume::run(js, "MES_EVENTS", name, Options::default(), handler, stop);
    tokio::time::timeout(limit, run)
        .await
        .unwrap_or_else(|_| panic!("{name}: {n} events within {limit:?}"))
        .unwrap();
    let v = log.lock().unwrap().clone();
    v
}

pub fn assert_each_key_in_order_once(log: &[(String, String)], keys: usize, per_key: usize) {
    let mut by_key: HashMap<&str, Vec<&str>> = HashMap::new();
    for (k, s) in log {
        by_key.entry(k).or_default().push(s);
    }
    assert_eq!(by_key.len(), keys);
    for (k, seqs) in by_key {
        assert_eq!(
            seqs.len(),
            per_key,
            "key {k}: handled {} events, expected {per_key} (lost or duplicated)",
            seqs.len()
        );
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "key {k}: handled out of order"
        );
    }
}
