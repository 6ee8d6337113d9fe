//! What the consumer answers the server for each event: the outcome recorded on its key, then
//! an ack, a nak with a delay, or a terminate with the reason; and the naks for the events of
//! a handler call that panicked.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use tracing::warn;

use super::{Delivery, Held, Key, Outcome, Running, Stats, PANIC_DELAY};

/// Hands back the events of a handler call that panicked: nak'ed, to come back soon.
pub(super) async fn nak_panicked(client: &async_nats::Client, rs: Vec<Running>) {
    let nak = format!("-NAK {{\"delay\":{}}}", PANIC_DELAY.as_nanos());
    for r in rs {
        if let Some(reply) = r.reply {
            let _ = client.publish(reply, nak.clone().into()).await;
        }
    }
}

/// What to answer the server for an event.
pub(super) enum Reply {
    Ack,
    Nak(Duration),
    Term(String),
}

/// Records one event's outcome on its key (done, blocked on it, or given up on its last
/// delivery) and says what to answer the server.
pub(super) fn settle_one(
    k: &mut Key,
    d: &Delivery,
    outcome: Outcome,
    (max_deliver, ack_wait): (i64, Duration),
    stats: &mut Stats,
) -> Reply {
    match outcome {
        Outcome::Done => {
            k.dealt_with(d);
            stats.handled += 1;
            Reply::Ack
        }
        Outcome::Retry(delay) if max_deliver > 0 && d.delivered >= max_deliver => {
            // Last delivery: nak so the server gives up and announces it; go on.
            warn!(seq = d.stream_seq, key = %d.key, "event failed on its last delivery: it goes to the dead letters");
            k.dealt_with(d);
            stats.dead += 1;
            Reply::Nak(delay)
        }
        Outcome::Retry(delay) => {
            stats.retried += 1;
            k.blocked_on = Some(super::Ident::of(d));
            k.blocked_until = Some(super::give_up_waiting(delay, ack_wait));
            Reply::Nak(delay)
        }
        Outcome::Poison(reason) => {
            warn!(seq = d.stream_seq, key = %d.key, %reason, "poison event terminated");
            k.dealt_with(d);
            stats.poisoned += 1;
            Reply::Term(reason)
        }
    }
}

/// Answers the server for each event, all at once (a batch's acks need not wait for each other).
pub(super) async fn reply_all(replies: Vec<(Held, Reply)>) {
    futures::future::join_all(replies.into_iter().map(|(held, r)| async move {
        match r {
            Reply::Ack => {
                if let Err(e) = held.msg.double_ack().await {
                    warn!(error = %e, seq = held.delivery.stream_seq, "ack failed; the event may be redelivered (and skipped as a duplicate)");
                }
            }
            Reply::Nak(delay) => {
                let _ = held.msg.ack_with(AckKind::Nak(Some(delay))).await;
            }
            Reply::Term(reason) => terminate(&held.msg, &reason).await,
        }
    }))
    .await;
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
