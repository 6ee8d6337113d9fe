//! Batched mode (`application/cloudevents-batch+json`): one event per key per request, each
//! settled on its own; a poison event in a batch, and one whose handler keeps failing, are
//! singled out.

use super::*;

#[tokio::test]
async fn batched_requests_keep_each_keys_order_single_out_failing_events_and_survive_failures_and_kills(
) {
    use rand::Rng;
    let port = free_port();
    let w = World::new(&[(
        "batch-hook",
        system(
            "batch-hook",
            port,
            r#"mode = "batched"
concurrency = 2
max_batch = 5
retry = ["200ms", "400ms", "800ms", "1600ms"]
pause_after = 3
pause = "1s""#,
        ),
    )])
    .await;
    let r = Receiver::faulty("batch-hook", port).await;
    let sequences_of = |lines: &[Value], pred: &dyn Fn(&Value) -> bool| -> Vec<String> {
        lines
            .iter()
            .filter(|l| pred(l))
            .map(|l| l["sequence"].as_str().unwrap_or("-").to_owned())
            .collect()
    };

    // Among 40 events of 8 keys, a poison one (PO-1's second): the receiver refuses any request
    // holding it (400), so the batch it is in is refused as a whole. And one whose handler keeps
    // raising (PO-4's second): the receiver answers 500 to any request holding it, as the example
    // receivers do, so its batch fails as a whole, again and again.
    let mut emitted = w.emit(40, 8, 0).await;
    let (poison, failing) = (emitted[9].1.clone(), emitted[12].1.clone());
    r.set(json!({"sleep": 0.05, "poison": [poison], "fail": [failing]}));
    let mut push = w.push();
    r.wait_handled(38).await;
    let lines = r.lines();
    assert!(
        sequences_of(&lines, &|l| l["handled"] == true)
            .iter()
            .all(|s| *s != poison && *s != failing),
        "the poison or the failing event was handled"
    );
    // Batches formed, within the declared size, each of other keys.
    let largest = lines.iter().filter_map(|l| l["batch"].as_u64()).max();
    assert!(
        largest.is_some_and(|n| (2..=5).contains(&n)),
        "batch sizes: {largest:?}"
    );
    // Events refused along with the poison one in a batch were singled out and delivered.
    let refused_with_it = sequences_of(&lines, &|l| {
        l["status"] == 400 && l["sequence"] != poison.as_str() && l["sequence"] != failing.as_str()
    });
    assert!(
        !refused_with_it.is_empty(),
        "the poison event never shared a batch: {lines:#?}"
    );
    // ... in the very next request that held them: not retried later, as the poison event is.
    for seq in &refused_with_it {
        let after: Vec<&Value> = lines
            .iter()
            .filter(|l| l["sequence"] == seq.as_str())
            .skip_while(|l| l["status"] != 400)
            .skip(1)
            .collect();
        assert!(
            after.first().is_some_and(|l| l["handled"] == true && l["batch"] == 1),
            "{seq}, refused with the poison event, was not singled out and delivered next: {after:#?}"
        );
    }
    // Their keys went on after them.
    let handled = sequences_of(&lines, &|l| l["handled"] == true);
    assert!(handled.contains(&emitted[17].1) && handled.contains(&emitted[20].1));
    // The two are the only dead letters: the events that shared a batch with the failing one
    // were sent one per request once the batch failed again, not dragged along.
    let list = w.dead_letters(2, Duration::from_secs(20)).await;
    assert_eq!(list.len(), 2, "{list:#?}");
    let why = |needle: &str| {
        list.iter()
            .find(|d| d["why"].as_str().unwrap_or_default().contains(needle))
            .unwrap_or_else(|| panic!("no dead letter with {needle}: {list:#?}"))
            .clone()
    };
    let refused = why("HTTP 400: unknown order PO-1");
    let raised = why("HTTP 500: handler raised");
    for d in [&refused, &raised] {
        assert!(d["why"].as_str().unwrap().contains("attempt 5 of 5"), "{d}");
    }

    // The endpoint fails (500) for a moment while events flow, then recovers.
    r.set(json!({"sleep": 0.05, "status": 500}));
    emitted.extend(w.emit(16, 8, 40).await);
    r.wait_lines(|l| l.iter().any(|v| v["status"] == 500), "500s answered")
        .await;
    r.set(json!({"sleep": 0.05}));

    // Killed with batches in flight, newer events arriving each time.
    let mut rng = rand::rng();
    for round in 0..3 {
        let before = r.handled().len();
        r.wait_handled(before + 1).await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
        push.kill9();
        emitted.extend(w.emit(16, 8, 56 + round * 16).await);
        push = w.push();
    }

    r.wait_handled(emitted.len() - 2).await;

    // The receiver fixed, the dead letters resent: each delivered once.
    r.set(json!({}));
    for d in [&refused, &raised] {
        let id = d["id"].as_u64().unwrap().to_string();
        let o = w.cli(&["dead-letters", "resend", &id]);
        assert!(o.status.success(), "{}", output_text(&o));
    }
    r.wait_handled(emitted.len()).await;
    tokio::time::sleep(Duration::from_secs(1)).await; // nothing more may come
    let lines = r.lines();
    let handled = sequences_of(&lines, &|l| l["handled"] == true);
    for s in [&poison, &failing] {
        assert_eq!(handled.iter().filter(|h| *h == s).count(), 1, "{s}");
    }
    // Every other event once, each key in order (a resent one comes after its key's newer
    // events, as a resend does).
    let others: Vec<Value> = lines
        .into_iter()
        .filter(|l| l["sequence"] != poison.as_str() && l["sequence"] != failing.as_str())
        .collect();
    let emitted_others: Vec<(String, String)> = emitted
        .iter()
        .filter(|(_, s)| *s != poison && *s != failing)
        .cloned()
        .collect();
    assert_handled_once_in_order("batch-hook", &others, &emitted_others);
    let again = others
        .iter()
        .filter(|l| l["handled"] == false && l["status"] == 204)
        .count();
    eprintln!(
        "{} events, largest batch {largest:?}, {again} delivered again after a failure or kill",
        emitted.len()
    );
    assert!(push.terminate().success(), "{}", push.log());
    w.stop().await;
}

#[tokio::test]
async fn a_batch_that_fails_again_is_sent_one_event_per_request_so_only_the_failing_event_is_dead()
{
    // Eight keys with one event each, one request at a time, a slow receiver: the events come
    // back together after each failure and would be batched together again. The receiver's
    // handler raises on the last one (500 for any request holding it), as the example
    // receivers answer.
    let port = free_port();
    let w = World::new(&[(
        "slow-hook",
        system(
            "slow-hook",
            port,
            r#"mode = "batched"
concurrency = 1
retry = ["200ms", "200ms", "200ms"]
pause_after = 1000"#,
        ),
    )])
    .await;
    let r = Receiver::faulty("slow-hook", port).await;
    let emitted = w.emit(8, 8, 0).await;
    let failing = emitted[7].1.clone();
    r.set(json!({"sleep": 0.3, "fail": [failing]}));
    let mut push = w.push();
    // Without the split, the others of its batch failed with it on every attempt and most of
    // them ended as dead letters too: never handled.
    r.wait_handled(7).await;
    w.dead_letters(1, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(1)).await; // no other may follow
    let list = w.dead_letters(1, Duration::from_secs(5)).await;
    assert_eq!(list.len(), 1, "{list:#?}");
    let why = list[0]["why"].as_str().unwrap_or_default();
    assert!(
        why.contains("HTTP 500: handler raised") && why.contains("attempt 4 of 4"),
        "{}",
        list[0]
    );
    let lines = r.lines();
    let others: Vec<Value> = lines
        .into_iter()
        .filter(|l| l["sequence"] != failing.as_str())
        .collect();
    assert_handled_once_in_order("slow-hook", &others, &emitted[..7]);
    assert!(push.terminate().success(), "{}", push.log());
    w.stop().await;
}
