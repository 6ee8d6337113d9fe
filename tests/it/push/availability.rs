//! The push service killed at random moments, and several instances taking over from each other.

use super::*;

#[tokio::test]
async fn push_killed_at_random_moments_loses_nothing_and_keeps_each_keys_order() {
    use rand::Rng;
    let port = free_port();
    let w = World::new(&[("crashy", system("crashy", port, ""))]).await;
    let r = Receiver::faulty("crashy", port).await;
    // A receiver taking 100 ms per event, so that every kill lands with requests in flight.
    r.set(json!({"sleep": 0.1}));
    let mut emitted = w.emit(30, 6, 0).await;
    let mut push = w.push();
    let mut rng = rand::rng();
    for round in 1..=5 {
        let before = r.handled().len();
        r.wait_handled(before + 1).await; // delivering
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..400))).await;
        push.kill9();
        // Newer events of the same keys, there at once for the next process, while the ones
        // the killed process held come back only after ack_wait.
        emitted.extend(w.emit(30, 6, round * 30).await);
        push = w.push();
    }
    r.set(json!({}));
    r.wait_handled(emitted.len()).await;
    assert_once_in_order("crashy", &r.lines(), &emitted);
    let again = r.lines().iter().filter(|l| l["handled"] == false).count();
    eprintln!(
        "{} events, {again} delivered again after a kill",
        emitted.len()
    );
    assert!(push.terminate().success(), "{}", push.log());
    w.stop().await;
}

#[tokio::test]
async fn two_instances_deliver_one_at_a_time_and_a_killed_or_frozen_one_is_replaced_within_10s() {
    let port = free_port();
    let w = World::new(&[("ha", system("ha", port, "takeover = \"2s\""))]).await;
    let r = Receiver::faulty("ha", port).await;
    let wall = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    // The first instance delivers; a second one stands by meanwhile.
    let mut a = w.push();
    let mut emitted = w.emit(12, 4, 0).await;
    r.wait_handled(12).await;
    let mut b = w.push();
    emitted.extend(w.emit(12, 4, 12).await);
    r.wait_handled(24).await;

    // The active one killed: the standby delivers within 10 s.
    let killed = wall();
    a.kill9();
    emitted.extend(w.emit(12, 4, 24).await);
    r.wait_handled(36).await;
    let first_of = |pid: u32, after: f64| {
        r.lines()
            .iter()
            .filter(|l| {
                l["sender"]
                    .as_str()
                    .is_some_and(|s| s.ends_with(&format!(":{pid}")))
            })
            .filter_map(|l| l["at"].as_f64())
            .find(|t| *t >= after)
    };
    let b_pid = b.child.id();
    let took = first_of(b_pid, killed).expect("the standby delivered") - killed;
    assert!(took <= 10.0, "the standby took over after {took:.1} s");
    eprintln!("took over from a killed instance in {took:.1} s");

    // The active one frozen (SIGSTOP): a third instance delivers within 10 s; the frozen one,
    // resumed, sends nothing of what it held.
    let mut c = w.push();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Slow answers: the active one holds events of every key when it is frozen.
    r.set(json!({"sleep": 0.2}));
    emitted.extend(w.emit(24, 4, 60).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let frozen = wall();
    unsafe {
        libc::kill(b_pid as i32, libc::SIGSTOP);
    }
    emitted.extend(w.emit(12, 4, 36).await);
    r.wait_handled(72).await;
    let took = first_of(c.child.id(), frozen).expect("the third delivered") - frozen;
    assert!(
        took <= 10.0,
        "the standby took over from a frozen one after {took:.1} s"
    );
    eprintln!("took over from a frozen instance in {took:.1} s");
    r.set(json!({}));
    unsafe {
        libc::kill(b_pid as i32, libc::SIGCONT);
    }
    emitted.extend(w.emit(12, 4, 48).await);
    r.wait_handled(emitted.len()).await;
    tokio::time::sleep(Duration::from_secs(3)).await; // what a zombie would send, it sends now
    let lines = r.lines();
    assert_once_in_order("ha", &lines, &emitted);
    // One at a time: the senders, in the order the receiver saw them, are the first, then the
    // second, then the third, never back.
    let mut turns: Vec<String> = Vec::new();
    let mut by_time = lines.clone();
    by_time.retain(|l| l["at"].is_f64());
    by_time.sort_by(|x, y| x["at"].as_f64().partial_cmp(&y["at"].as_f64()).unwrap());
    for l in &by_time {
        let s = l["sender"]
            .as_str()
            .unwrap_or("-")
            .rsplit(':')
            .next()
            .unwrap()
            .to_owned();
        if turns.last() != Some(&s) {
            turns.push(s);
        }
    }
    let pids: Vec<String> = [a.child.id(), b_pid, c.child.id()]
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert_eq!(turns, pids, "senders took turns otherwise:\n{by_time:#?}");
    for p in [&mut b, &mut c] {
        assert!(p.terminate().success(), "{}", p.log());
    }
    w.stop().await;
}
