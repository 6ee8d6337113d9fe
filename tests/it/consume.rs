//! The Rust consumer library: per-key order with concurrent handlers, transient failures (nak and
//! redelivery), catching up after being offline.

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

#[tokio::test]
async fn per_key_order_holds_with_concurrent_handlers_delays_and_transient_failures() {
    let env = Env::new().await;
    let relay = env.spawn_relay().await;
    durable(&env, "orders", -1).await;
    emit_many(&env.db, 10, 1_000).await;

    let log: Log = Arc::default();
    let stop = CancellationToken::new();
    let handler = {
        let log = log.clone();
        let stop = stop.clone();
        move |d: Delivery| {
            let log = log.clone();
            let stop = stop.clone();
            async move {
                let (delay, fail) = {
                    let mut rng = rand::rngs::StdRng::from_os_rng();
                    (rng.random_range(0..2_000u64), rng.random_bool(0.1))
                };
                tokio::time::sleep(Duration::from_micros(delay)).await;
                if fail {
                    return Outcome::Retry(Duration::from_millis(20));
                }
                let mut l = log.lock().unwrap();
                l.push((d.key.clone(), sequence(&d)));
                if l.len() == 10_000 {
                    stop.cancel();
                }
                Outcome::Done
            }
        }
    };
    let js = env.js().await;
    let opts = Options {
        concurrency: 8,
        ..Default::default()
    };
    let run = consume::run(&js, "MES_EVENTS", "orders", opts, handler, stop.clone());
    let stats = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("all events handled within 180 s")
        .unwrap();
    relay.stop().await;
    assert!(
        stats.retried > 100,
        "transient failures were exercised: {stats:?}"
    );
    assert_each_key_in_order_once(&log.lock().unwrap(), 10, 1_000);
}

#[tokio::test]
async fn a_consumer_offline_while_5000_events_are_published_gets_them_all_in_order() {
    let env = Env::new().await;
    durable(&env, "offline", -1).await;
    let relay = env.spawn_relay().await;
    emit_many(&env.db, 50, 100).await;
    eventually(Duration::from_secs(60), "5,000 published", || async {
        pending(&env.db).await == 0
    })
    .await;
    relay.stop().await;

    let log: Log = Arc::default();
    let stop = CancellationToken::new();
    let handler = {
        let (log, stop) = (log.clone(), stop.clone());
        move |d: Delivery| {
            let (log, stop) = (log.clone(), stop.clone());
            async move {
                let mut l = log.lock().unwrap();
                l.push((d.key.clone(), sequence(&d)));
                if l.len() == 5_000 {
                    stop.cancel();
                }
                Outcome::Done
            }
        }
    };
    let js = env.js().await;
    let run = consume::run(
        &js,
        "MES_EVENTS",
        "offline",
        Options::default(),
        handler,
        stop,
    );
    tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("caught up")
        .unwrap();
    assert_each_key_in_order_once(&log.lock().unwrap(), 50, 100);
}
