//! Durability: a PubAck is not a disk write. These tests take back from nats-server what it had
//! acknowledged and not synced, as a power cut does ([`support::power`](crate::support::power)),
//! and check that the relay notices, publishes again what it kept, each key in order, and names
//! what it could not keep; and that nothing else looks like a loss.
//!
//! - [`power_cut`]: a single server and a 3-node R3 cluster losing their unsynced tails, with
//!   writers busy and idle at the cut.
//! - [`readers`]: a durable pull consumer and a push endpoint running through the restore.
//! - [`horizon`]: a loss longer than the horizon is named exactly, fails `relay status` and
//!   `/readyz` until accepted, and stops nothing else; the horizon read from the server.
//! - [`not_a_loss`]: a stream purged, deleted and created again, or electing a leader is not
//!   taken for a loss.

mod horizon;
mod not_a_loss;
mod power_cut;
mod readers;

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::support::*;

/// `writers` writers, each committing 10 events every 100 ms (so 100 events/s each) over `keys`
/// keys, until `stop`; the committed outbox ids.
pub(crate) async fn write_until(
    db: &TestDb,
    writers: usize,
    keys: usize,
    stop: &CancellationToken,
) -> Vec<i64> {
    let all = futures::future::join_all(
        (0..writers).map(|_| write_events_until(db, keys, Duration::from_millis(100), stop)),
    )
    .await;
    all.into_iter().flatten().collect()
}

/// A stream's last sequence, or `None` while it cannot say.
pub(crate) async fn last_seq(js: &async_nats::jetstream::Context, stream: &str) -> Option<u64> {
    let mut s = js.get_stream(stream).await.ok()?;
    Some(s.info().await.ok()?.state.last_sequence)
}

/// The relay as a process, serving `/metrics` and `/readyz` on `port`, logging warnings and
/// errors, with `extra` settings.
pub(crate) fn relay(
    cfg: &mes_events::config::Config,
    port: u16,
    extra: &[(&str, &str)],
) -> RelayProcess {
    let address = format!("127.0.0.1:{port}");
    let mut env: Vec<(&str, &str)> = vec![
        ("RUST_LOG", "warn,mes_events::relay=info"),
        ("MES_EVENTS_HTTP__ADDRESS", &address),
        ("MES_EVENTS_HTTP__READY_GRACE", "1s"),
    ];
    env.extend_from_slice(extra);
    RelayProcess::spawn(cfg, &env)
}

/// The lines of a relay's log saying a stream lost events.
pub(crate) fn loss_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("ERROR") && l.contains("stream lost"))
        .collect()
}

/// A counter's value for one stream in a scrape.
pub(crate) fn for_stream(m: &crate::observe::Scrape, name: &str, stream: &str) -> f64 {
    m.get(name)
        .into_iter()
        .flatten()
        .filter(|(labels, _)| labels.get("stream").map(String::as_str) == Some(stream))
        .map(|(_, v)| v)
        .sum()
}

/// Waits until the relay has caught up with the restore: nothing pending, as many messages in
/// the streams and entries in the published log as events were committed.
pub(crate) async fn settled(env: &Env, committed: &[i64]) {
    settled_without(env, committed, 0).await
}

/// [`settled`], but for `gone` events that could not be restored.
pub(crate) async fn settled_without(env: &Env, committed: &[i64], gone: usize) {
    let expected = (committed.len() - gone) as i64;
    let js = env.js().await;
    let c = env.db.client().await;
    eventually(
        Duration::from_secs(120),
        "every committed event published and recorded after the restore",
        || async {
            let counts = mes_events::store::operator::counts(&c).await.unwrap();
            counts.pending == 0
                && counts.published == expected
                && messages_in_streams(&js).await == Some(expected as u64)
        },
    )
    .await;
}
