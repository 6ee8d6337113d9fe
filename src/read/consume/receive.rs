//! A pulled message decoded into a [`Delivery`] with its key and size; one that is not a valid
//! CloudEvent is terminated here (it can never succeed).

use async_nats::jetstream::{self, AckKind};
use cloudevents::AttributesReader;
use tracing::warn;

use super::{Delivery, Held};
use crate::event::binding::{self, Rule};

/// Decodes a message; one that is not a valid CloudEvent is terminated (it can never succeed).
pub(super) async fn receive(msg: jetstream::Message) -> Option<Held> {
    let info = msg.info().ok()?;
    let (stream_seq, delivered) = (info.stream_sequence, info.delivered);
    let size = msg.payload.len()
        + msg.headers.as_ref().map_or(0, |h| {
            h.iter()
                .map(|(n, vs)| {
                    let n: &str = n.as_ref();
                    vs.iter()
                        .map(|v| n.len() + v.as_str().len() + 4)
                        .sum::<usize>()
                })
                .sum()
        });
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
                size,
            })
        }
        Err(e) => {
            warn!(seq = stream_seq, error = %e, "not a valid CloudEvent: terminated");
            let _ = msg.ack_with(AckKind::Term).await;
            None
        }
    }
}
