//! What readers see of a restore: a durable pull consumer (the consumer library) and a push
//! endpoint, both running through the power cut and the restore, receive every event, each
//! key's in order; events they had already received may come again, with the same source and
//! id, and the push example receiver skips them.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloudevents::AttributesReader;
use mes_events::consume::{self, Delivery, Outcome};
use tokio_util::sync::CancellationToken;

use super::{last_seq, settled, write_until};
use crate::push::{assert_handled_once_in_order, system, Receiver, World};
use crate::support::*;

/// The ERP pulls every order event from its own durable consumer.
const ERP: &str = r#"
[system]
name = "erp"
[[consumer]]
stream = "MES_EVENTS"
filter_subjects = ["mes.*.*.*.*.processorder.>"]
ack_wait = "2s"
"#;

#[tokio::test]
async fn a_pull_consumer_and_a_push_endpoint_get_every_event_in_order_through_a_restore() {
    let port = free_port();
    let mut world = World::new(&[
        ("workflow", system("workflow", port, "")),
        ("erp", ERP.to_owned()),
    ])
    .await;
    let receiver = Receiver::faulty("workflow receiver", port).await;
    let _push = world.push();

    // The consumer library, as an ERP's integration would run it: every delivery recorded.
    let seen: Arc<Mutex<Vec<(i64, String, String)>>> = Arc::default();
    let stop_consumer = CancellationToken::new();
    let consumer = tokio::spawn({
        let js = world.env.js().await;
        let seen = seen.clone();
        let stop = stop_consumer.clone();
        async move {
            consume::run(
                &js,
                "MES_EVENTS",
                "erp",
                consume::Options::default(),
                move |d: Delivery| {
                    let seen = seen.clone();
                    async move {
                        let id = uuid::Uuid::parse_str(d.event.id())
                            .ok()
                            .and_then(mes_events::event::outbox_id_of)
                            .expect("an event id of this relay's");
                        seen.lock()
                            .unwrap()
                            .push((id, d.key.clone(), d.event.id().to_owned()));
                        Outcome::Done
                    }
                },
                stop,
            )
            .await
        }
    });

    let js = world.env.js().await;
    let stop = CancellationToken::new();
    let Env { nats, db, .. } = &mut world.env;
    let cut = async {
        eventually(Duration::from_secs(30), "publishing under way", || async {
            last_seq(&js, "MES_EVENTS").await.unwrap_or(0) > 300
        })
        .await;
        let image = power::image(&[nats.local()]);
        tokio::time::sleep(Duration::from_secs(5)).await;
        power::cut(&mut [nats.local()], image);
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.cancel();
    };
    let (committed, ()) = tokio::join!(write_until(db, 2, 50, &stop), cut);
    settled(&world.env, &committed).await;
    let losses = mes_events::store::kept::losses(&world.env.db.client().await, true)
        .await
        .unwrap();
    assert!(
        losses.len() == 1 && losses[0].restored > 0,
        "the server lost acknowledged events and the relay restored them: {losses:?}"
    );

    // Each event's key, as recorded.
    let c = world.env.db.client().await;
    let keys: BTreeMap<i64, String> = c
        .query("select id, key from mes_events.published", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let emitted: Vec<(String, String)> = committed
        .iter()
        .map(|id| (keys[id].clone(), mes_events::event::id::sequence(*id)))
        .collect();

    // Push: every event handled once (repeats recognised by the receiver), each key in order.
    receiver.wait_handled(committed.len()).await;
    assert_handled_once_in_order("workflow", &receiver.lines(), &emitted);
    let repeats = receiver.lines().len() - receiver.handled().len();
    eprintln!(
        "push: {} events, {repeats} repeats skipped",
        committed.len()
    );

    // The pull consumer: every event, each key's first deliveries in commit order; a repeat
    // carries the same id.
    eventually(
        Duration::from_secs(90),
        "the consumer has every event",
        || async {
            let ids: HashSet<i64> = seen.lock().unwrap().iter().map(|(id, _, _)| *id).collect();
            committed.iter().all(|id| ids.contains(id))
        },
    )
    .await;
    let seen = seen.lock().unwrap().clone();
    let mut first = HashSet::new();
    let mut last_of_key: BTreeMap<String, i64> = BTreeMap::new();
    for (id, key, ce_id) in &seen {
        assert_eq!(&keys[id], key, "event {id} came with key {key}");
        assert_eq!(
            mes_events::event::outbox_id_of(uuid::Uuid::parse_str(ce_id).unwrap()),
            Some(*id)
        );
        if !first.insert(*id) {
            continue; // a repeat, recognised by its id
        }
        if let Some(prev) = last_of_key.insert(key.clone(), *id) {
            assert!(prev < *id, "key {key}: event {id} handled after {prev}");
        }
    }
    assert_eq!(first.len(), committed.len(), "every event, none foreign");
    eprintln!(
        "pull consumer: {} events, {} repeats",
        committed.len(),
        seen.len() - first.len()
    );
    stop_consumer.cancel();
    consumer.await.unwrap().unwrap();
    world.stop().await;
}

/// After a restore, sequences handed out before hold other events: a consumer that told events
/// apart by sequence alone would take a new event for a repeat of the one it had there, and
/// drop it. A foreign message in the lost tail shifts the restored events by one: the ERP's
/// event `e1` comes back one sequence earlier, and the key's next event `e2` lands where `e1`
/// was.
#[tokio::test]
async fn after_a_restore_a_new_event_where_an_old_one_was_is_handled_not_dropped() {
    use async_nats::jetstream::consumer;
    let mut env = Env::new().await;
    let js = env.js().await;
    js.get_stream("MES_EVENTS")
        .await
        .unwrap()
        .create_consumer(consumer::pull::Config {
            durable_name: Some("erp".into()),
            filter_subject: "mes.*.*.*.*.processorder.>".into(),
            ack_wait: Duration::from_secs(2),
            ..Default::default()
        })
        .await
        .unwrap();
    let relay = env.spawn_relay().await;
    let seen: Arc<Mutex<Vec<(i64, u64)>>> = Arc::default();
    let stop = CancellationToken::new();
    let consumer = tokio::spawn({
        let (js, seen, stop) = (js.clone(), seen.clone(), stop.clone());
        async move {
            consume::run(
                &js,
                "MES_EVENTS",
                "erp",
                consume::Options::default(),
                move |d: Delivery| {
                    let seen = seen.clone();
                    async move {
                        let id = uuid::Uuid::parse_str(d.event.id())
                            .ok()
                            .and_then(mes_events::event::outbox_id_of)
                            .unwrap();
                        seen.lock().unwrap().push((id, d.stream_seq));
                        Outcome::Done
                    }
                },
                stop,
            )
            .await
        }
    });
    let handled = |id: i64| {
        let seen = seen.clone();
        async move { seen.lock().unwrap().iter().any(|(i, _)| *i == id) }
    };
    let c = env.db.client().await;
    let warm = emit_order(&c, "PO-W").await;
    eventually(
        Duration::from_secs(30),
        "the ERP has the first event",
        || handled(warm),
    )
    .await;

    let image = power::image(&[env.nats.local()]);
    // Someone else's message, outside the ERP's filter, then the ERP's event after it.
    js.publish("mes.bsl.x.x.x.batch.foreign.v1.F", "not an event".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let e1 = emit_order(&c, "PO-K").await;
    eventually(Duration::from_secs(30), "the ERP has e1", || handled(e1)).await;
    let e1_seq = seen
        .lock()
        .unwrap()
        .iter()
        .find(|(i, _)| *i == e1)
        .unwrap()
        .1;

    power::cut(&mut [env.nats.local()], image);
    // e1 is published again, one sequence earlier (the foreign message is gone).
    let js = env.js().await;
    eventually(Duration::from_secs(60), "e1 restored", || async {
        mes_events::store::kept::losses(&c, true)
            .await
            .unwrap()
            .len()
            == 1
            && pending(&env.db).await == 0
    })
    .await;
    let e2 = emit_order(&c, "PO-K").await;
    eventually(Duration::from_secs(30), "e2 published", || async {
        pending(&env.db).await == 0
    })
    .await;
    let at = read_stream(&js, "MES_EVENTS").await;
    let e2_seq = at.iter().find(|p| p.outbox_id == e2).unwrap().seq;
    assert_eq!(
        e2_seq, e1_seq,
        "e2 must land where e1 was, for this test to mean anything"
    );
    eventually(Duration::from_secs(60), "the ERP handles e2", || {
        handled(e2)
    })
    .await;
    stop.cancel();
    consumer.await.unwrap().unwrap();
    relay.stop().await;
}
