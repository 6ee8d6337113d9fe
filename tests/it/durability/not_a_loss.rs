//! What must not be taken for a loss: a stream purged (whole, by subject, keeping some), a
//! message deleted on purpose (the one at the watermark included), a stream deleted and created
//! again, a nats-server killed and restarted on an intact store. After each, the server is
//! restarted so that the relay reconnects and checks the stream against what it recorded.
//! (A cluster electing a new leader is tried in `cluster.rs`, which checks the same.)

use std::time::Duration;

use async_nats::jetstream::stream;

use super::{for_stream, last_seq, loss_lines, relay};
use crate::observe::scrape;
use crate::support::*;

#[tokio::test]
async fn purges_deletes_restarts_and_a_stream_created_again_are_not_losses() {
    let mut env = Env::new().await;
    let port = free_port();
    let mut relay = relay(&env.cfg, port, &[]);
    let c = env.db.client().await;
    let mut n = 0;
    let mut round = async |env: &mut Env, what: &str| {
        for i in 0..20 {
            emit_order(&c, &format!("PO-{}", i % 4)).await;
        }
        n += 20;
        let restarts = (n / 20) as f64;
        env.drained(Duration::from_secs(30), what).await;
        // A crash of nats-server loses nothing its disk has (the kernel keeps what it wrote):
        // the relay reconnects and checks the stream.
        env.nats.kill().await;
        env.nats.restart().await;
        let js = env.js().await;
        eventually(
            Duration::from_secs(30),
            "reconnected and reconciled",
            || async {
                let m = scrape(port);
                // One reconciliation at start, one after each restart.
                crate::observe::total(&m, "mes_events_reconciliations_total") > restarts
                    && last_seq(&js, "MES_EVENTS").await.is_some()
            },
        )
        .await;
    };
    round(&mut env, "first events").await;

    let js = env.js().await;
    let events = js.get_stream("MES_EVENTS").await.unwrap();
    events.purge().await.unwrap();
    round(&mut env, "after a purge").await;

    let key = mes_events::event::subject::key_token("PO-1");
    events
        .purge()
        .filter(format!("mes.*.*.*.*.processorder.*.*.{key}"))
        .await
        .unwrap();
    round(&mut env, "after a purge by subject").await;

    events.purge().keep(5).await.unwrap();
    round(&mut env, "after a purge keeping five").await;

    // The message at the relay's watermark: deleted, not lost.
    let last = last_seq(&js, "MES_EVENTS").await.unwrap();
    events.delete_message(last).await.unwrap();
    round(&mut env, "after the last message was deleted").await;

    js.delete_stream("MES_EVENTS").await.unwrap();
    js.create_stream(stream::Config {
        name: "MES_EVENTS".into(),
        subjects: catalog_subjects("MES_EVENTS"),
        ..Default::default()
    })
    .await
    .unwrap();
    round(&mut env, "after the stream was created again").await;

    let log = relay.stderr();
    assert!(loss_lines(&log).is_empty(), "taken for a loss:\n{log}");
    let m = scrape(port);
    assert_eq!(
        for_stream(&m, "mes_events_stream_regressions_total", "MES_EVENTS"),
        0.0
    );
    let losses = mes_events::store::kept::losses(&c, true).await.unwrap();
    assert!(losses.is_empty(), "{losses:?}");
    // And nothing was published twice: the stream created again holds the last round alone.
    let js = env.js().await;
    assert_eq!(
        read_stream(&js, "MES_EVENTS").await.len(),
        20,
        "after {n} events"
    );
    relay.terminate().await;
}
