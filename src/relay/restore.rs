//! A stream that went back in time: noticed, and restored from what the relay kept.
//!
//! A power cut or an OS crash takes from nats-server what it had acknowledged and not yet
//! synced; restarted, the stream ends earlier than the relay recorded (or, if others published
//! meanwhile, holds other messages where the relay recorded its own). Every reconciliation
//! checks each stream against the watermark the relay recorded: its last sequence below it, or
//! another message at it, while the stream was not deleted and created again (that is checked
//! first, by its creation time). Purging, limits and deleting one message on purpose leave the
//! last sequence where it was and no other message at the watermark, so they are not losses.
//!
//! On such a regression, before anything is sent to that stream again: walk back from its tail
//! to where it still holds what was recorded, then (one transaction) put every kept row it lost
//! back into the outbox under its own id, so it is published again in its key's order with its
//! original `Nats-Msg-Id`, and record what could not be restored. Told once, at ERROR.
//!
//! Owns the check and the walk; the statements are the store's ([`kept`]).

use async_nats::jetstream::stream::Stream;
use futures::stream::StreamExt;
use tracing::{error, warn};

use super::error::{Interrupt, NatsError};
use super::leader::Leadership;
use crate::event;
use crate::store::kept::{self, Loss, Regression};
use crate::store::lease::StreamMark;

/// What a stream holds where the relay recorded its watermark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AtWatermark {
    /// The recorded message (or none could be checked).
    Same,
    /// The stream ends before it.
    Behind,
    /// Another message is there.
    Other,
}

/// Judges what a stream holds at the watermark (pure): `found` is the `Nats-Msg-Id` of the
/// message at `mark.last_seq` (`Some(None)`: a message without one; `None`: no message there,
/// or not read).
pub(crate) fn judge(mark: &StreamMark, last: u64, found: Option<Option<&str>>) -> AtWatermark {
    if last < mark.last_seq {
        return AtWatermark::Behind;
    }
    match (mark.last_msg_id.as_deref(), found) {
        (Some(recorded), Some(there)) if there != Some(recorded) => AtWatermark::Other,
        _ => AtWatermark::Same,
    }
}

/// The `Nats-Msg-Id` of the message at `seq`: `Ok(None)` when there is no message there
/// (deleted on purpose, or by the stream's limits; or no such sequence: 0).
async fn msg_id_at(
    stream: &Stream,
    name: &str,
    seq: u64,
) -> Result<Option<Option<String>>, NatsError> {
    if seq == 0 {
        return Ok(None);
    }
    match stream.get_raw_message(seq).await {
        Ok(m) => Ok(Some(
            m.headers
                .get(async_nats::header::NATS_MESSAGE_ID)
                .map(|v| v.as_str().to_owned()),
        )),
        Err(e) if super::reconcile::is_no_message(e.kind()) => Ok(None),
        Err(source) => Err(NatsError::Read {
            stream: name.to_owned(),
            seq,
            source,
        }),
    }
}

/// Whether a `Nats-Msg-Id` is this outbox's (`source`) for outbox row `id`.
fn is_ours(found: Option<&str>, source: &str, id: i64) -> bool {
    found
        .and_then(event::parse_msg_id)
        .is_some_and(|(s, i)| s == source && i == id)
}

/// Whether the stream still holds what was recorded: at the highest entry of the published log
/// for this stream (marks recorded while the watermark could not move may lie above it), and at
/// the watermark.
pub(crate) async fn check(
    lead: &Leadership,
    source: &str,
    stream: &Stream,
    name: &str,
    mark: &StreamMark,
    (first, last): (u64, u64),
) -> Result<AtWatermark, Interrupt> {
    if let Some(top) = kept::recorded_below(&lead.session.client, name, u64::MAX, 1)
        .await?
        .pop()
    {
        if last < top.seq {
            return Ok(AtWatermark::Behind);
        }
        if top.seq >= first {
            match msg_id_at(stream, name, top.seq).await? {
                Some(found) if !is_ours(found.as_deref(), source, top.id) => {
                    return Ok(AtWatermark::Other)
                }
                // Ours as recorded, or deleted since (limits, on purpose): the watermark tells.
                _ => {}
            }
        }
    }
    if last < mark.last_seq {
        return Ok(AtWatermark::Behind);
    }
    // Below the first sequence (purged, or aged out): nothing there to compare.
    if mark.last_msg_id.is_none() || mark.last_seq < first.max(1) {
        return Ok(AtWatermark::Same);
    }
    let found = msg_id_at(stream, name, mark.last_seq).await?;
    Ok(judge(mark, last, found.as_ref().map(|o| o.as_deref())))
}

/// Restores what a stream that went back in time lost: returns the sequence up to which it
/// still holds what was recorded (reconciliation reads on after it, and moves the watermark
/// over what it finds there).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn restore(
    lead: &Leadership,
    source: &str,
    stream: &Stream,
    name: &str,
    mark: &StreamMark,
    (first, last): (u64, u64),
    horizon: &super::durability::Horizon,
) -> Result<u64, Interrupt> {
    let (intact_to, at_intact) = intact_to(lead, source, stream, name, first, last).await?;
    let r = Regression {
        stream: name,
        intact_to,
        last_msg_id: at_intact.as_deref(),
        by: &lead.holder,
        basis: &horizon.basis,
    };
    let Some(loss) = kept::restore(&lead.session.client, lead.epoch, &r).await? else {
        return Err(Interrupt::LeaseLost(lead.epoch));
    };
    tell(&loss, mark.last_seq, last);
    Ok(intact_to)
}

/// Walks back from the stream's tail over what the published log recorded for it until a
/// sequence holds the message recorded there, passing over those deleted since (limits, on
/// purpose) and those someone else's message took; stops below the stream's first sequence.
/// The sequence, and the `Nats-Msg-Id` there when the walk found it.
async fn intact_to(
    lead: &Leadership,
    source: &str,
    stream: &Stream,
    name: &str,
    first: u64,
    last: u64,
) -> Result<(u64, Option<String>), Interrupt> {
    let client = &lead.session.client;
    let mut at_most = last;
    loop {
        let page = kept::recorded_below(client, name, at_most, 64).await?;
        let Some(lowest) = page.last().map(|r| r.seq) else {
            // Nothing recorded at or below: what lies above is all that can be lost.
            return Ok((at_most, None));
        };
        let mut reads = futures::stream::iter(page.into_iter().map(|r| (r.id, r.seq)))
            .map(|(id, seq)| async move { (id, seq, msg_id_at(stream, name, seq).await) })
            .buffered(16);
        while let Some((id, seq, there)) = reads.next().await {
            if seq < first {
                // Gone by the stream's limits or a purge: what lies below is not lost.
                return Ok((seq, None));
            }
            if let Some(found) = there? {
                if is_ours(found.as_deref(), source, id) {
                    return Ok((seq, found));
                }
            }
        }
        if lowest <= 1 {
            return Ok((0, None));
        }
        at_most = lowest - 1;
    }
}

/// Once, at ERROR: what the stream lost, why most likely, what was restored and what is gone.
fn tell(loss: &Loss, recorded_to: u64, last: u64) {
    let m = crate::metrics::get();
    let stream = crate::metrics::Stream {
        stream: loss.stream.clone(),
    };
    m.stream_regressions.get_or_create(&stream).inc();
    if loss.lost == 0 {
        warn!(
            stream = %loss.stream, recorded_to, last,
            "stream went back in time, but lost nothing this relay published (what it lost was others')"
        );
        return;
    }
    m.events_restored
        .get_or_create(&stream)
        .inc_by(loss.restored as u64);
    m.events_unrestorable
        .get_or_create(&stream)
        .inc_by(loss.unrestorable() as u64);
    let lost_range = format!("{}–{}", loss.lost_from, loss.lost_to);
    if loss.unrestorable() == 0 {
        error!(
            stream = %loss.stream, lost = loss.lost, sequences = %lost_range, last, restored = loss.restored,
            loss = loss.id,
            "stream lost {} events the server had acknowledged (sequences {lost_range}; it now ends at {last}): most likely a power cut or an OS crash before the server wrote them to disk ({}). All {} were restored from the outbox: they are published again, each key in order, with their original ids (systems that had them see them again, with the same source and id)",
            loss.lost, loss.durability_basis, loss.restored
        );
        return;
    }
    let ids = match (loss.unrestorable_ids.first(), loss.unrestorable_ids.last()) {
        (Some(a), Some(b)) if a != b => format!("{a}–{b}"),
        (Some(a), _) => a.to_string(),
        _ => String::new(),
    };
    let keys = summary(&loss.unrestorable_keys, 10);
    let when = match (loss.first_recorded_at, loss.last_recorded_at) {
        (Some(a), Some(b)) => format!(
            "recorded {} to {}",
            event::id::rfc3339(a),
            event::id::rfc3339(b)
        ),
        _ => String::new(),
    };
    let id = loss.id.unwrap_or_default();
    error!(
        stream = %loss.stream, lost = loss.lost, sequences = %lost_range, last, restored = loss.restored,
        unrestorable = loss.unrestorable(), outbox_ids = %ids, keys = %keys, loss = loss.id,
        "stream lost {} events the server had acknowledged (sequences {lost_range}; it now ends at {last}): most likely a power cut or an OS crash before the server wrote them to disk ({}). {} were restored from the outbox and are published again in order; {} COULD NOT BE RESTORED, published longer ago than the relay keeps events: outbox ids {ids}, keys {keys}, {when}. Tell the systems that read {}, then `mes-events relay accept-loss {id} --reason …` (details: `mes-events relay losses`)",
        loss.lost, loss.durability_basis, loss.restored, loss.unrestorable(), loss.stream
    );
}

/// Up to `n` items, then how many more.
fn summary(items: &[String], n: usize) -> String {
    let mut s = items.iter().take(n).cloned().collect::<Vec<_>>().join(", ");
    if items.len() > n {
        s.push_str(&format!(" and {} more", items.len() - n));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn mark(seq: u64, id: Option<&str>) -> StreamMark {
        StreamMark {
            created: Utc::now(),
            last_seq: seq,
            last_msg_id: id.map(str::to_owned),
        }
    }

    #[test]
    fn a_stream_that_ends_before_the_watermark_went_back() {
        assert_eq!(judge(&mark(100, Some("a")), 99, None), AtWatermark::Behind);
        assert_eq!(judge(&mark(100, None), 3, None), AtWatermark::Behind);
    }

    #[test]
    fn another_message_at_the_watermark_is_a_regression_a_missing_one_is_not() {
        let m = mark(100, Some("/mes/t/bsl#x"));
        assert_eq!(
            judge(&m, 150, Some(Some("/mes/t/bsl#x"))),
            AtWatermark::Same
        );
        assert_eq!(
            judge(&m, 150, Some(Some("redeliver/DLQ/3"))),
            AtWatermark::Other
        );
        assert_eq!(judge(&m, 150, Some(None)), AtWatermark::Other);
        // Deleted on purpose (or by limits): nothing says the stream went back.
        assert_eq!(judge(&m, 150, None), AtWatermark::Same);
        // Nothing recorded to compare with.
        assert_eq!(
            judge(&mark(100, None), 150, Some(Some("y"))),
            AtWatermark::Same
        );
    }

    #[test]
    fn a_long_list_is_cut_with_a_count() {
        let keys: Vec<String> = (0..12).map(|i| format!("k{i}")).collect();
        assert_eq!(summary(&keys[..2], 10), "k0, k1");
        assert!(summary(&keys, 10).ends_with("k9 and 2 more"));
    }
}
