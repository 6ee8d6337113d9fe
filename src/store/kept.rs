//! What the broker may still forget: published rows kept, data included, for the durability
//! horizon after their PubAck (`mes_events.kept`, written by the mark statement in
//! [`outbox`](super::outbox)); putting the rows a stream lost back into the outbox; the record of
//! each loss (`mes_events.relay_loss`); and emptying kept slots once they are safe.
//!
//! Owns these statements; never decides when a stream lost something or when a slot is safe
//! (the relay does). Restoring is fenced by the lease epoch; emptying a slot is not (any relay
//! may do it, on the word of the active one's stability).

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::{Client, GenericClient};

/// One entry of the published log: a row this relay recorded at a stream sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub id: i64,
    pub seq: u64,
}

/// The entries of the published log for `stream` as it is now (since it was last created) at or
/// below `at_most`, highest sequence first, at most `limit` (to walk back from a stream's tail
/// to where it still holds what was recorded).
pub async fn recorded_below(
    client: &impl GenericClient,
    stream: &str,
    at_most: u64,
    limit: i64,
) -> Result<Vec<Recorded>, tokio_postgres::Error> {
    let rows = client
        .query(
            "select p.id, p.stream_seq from mes_events.published p
              where p.stream = $1 and p.stream_seq <= $2
                and p.published_at >= (select incarnation_since from mes_events.relay_stream
                                        where stream = $1)
              order by p.stream_seq desc limit $3",
            &[&stream, &(at_most as i64), &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Recorded {
            id: r.get(0),
            seq: r.get::<_, i64>(1) as u64,
        })
        .collect())
}

/// What a restore did, as recorded in `mes_events.relay_loss`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Loss {
    /// The loss record (none when the stream lost nothing of this relay's).
    pub id: Option<i64>,
    pub stream: String,
    pub detected_at: DateTime<Utc>,
    pub detected_by: String,
    /// The recorded sequences the stream no longer holds.
    pub lost_from: u64,
    pub lost_to: u64,
    /// Events of this relay's the stream lost.
    pub lost: i64,
    /// Of those, put back into the outbox to be published again.
    pub restored: i64,
    /// Of those, gone for good (older than the horizon): their ids, keys and record times.
    pub unrestorable_ids: Vec<i64>,
    pub unrestorable_keys: Vec<String>,
    pub first_recorded_at: Option<DateTime<Utc>>,
    pub last_recorded_at: Option<DateTime<Utc>>,
    pub durability_basis: String,
    pub accepted_at: Option<DateTime<Utc>>,
    pub accepted_by: Option<String>,
    pub accept_reason: Option<String>,
}

impl Loss {
    pub fn unrestorable(&self) -> usize {
        self.unrestorable_ids.len()
    }
}

/// What the caller found and wants restored.
#[derive(Debug, Clone)]
pub struct Regression<'a> {
    pub stream: &'a str,
    /// The highest sequence at which the stream still holds what was recorded: everything
    /// recorded above it is lost. The new watermark (reconciliation reads on after it).
    pub intact_to: u64,
    /// The `Nats-Msg-Id` of the message at `intact_to`, when known.
    pub last_msg_id: Option<&'a str>,
    /// `host:pid` of the relay that found it.
    pub by: &'a str,
    /// The horizon in force and why, for the record.
    pub basis: &'a str,
}

/// In one transaction fenced by `epoch`: takes every entry of the published log that `r.stream`
/// lost (recorded above `r.intact_to`) out of the log, puts those still kept back into the outbox
/// under their own ids (so they are published again in their keys' order, with their original
/// `Nats-Msg-Id`), records the loss, and sets the stream's watermark to `r.intact_to`. `None`
/// when the lease is gone (nothing written).
pub async fn restore(
    client: &Client,
    epoch: i64,
    r: &Regression<'_>,
) -> Result<Option<Loss>, tokio_postgres::Error> {
    // The relay's sessions commit without waiting for the WAL flush (a lost mark is made again
    // from the stream). A lost restore would not be: its rows, published again meanwhile, would
    // be restored a second time. So this transaction waits for its flush.
    client
        .batch_execute("begin; set local synchronous_commit = on")
        .await?;
    let row = match client
        .query_one(
            fenced!(
                "lost as (
                 delete from mes_events.published p
                  where p.stream = $2 and p.stream_seq > $3 and exists (select 1 from lease)
                    and p.published_at >= (select incarnation_since from mes_events.relay_stream
                                            where stream = $2)
                 returning p.id, p.key, p.recorded_at, p.stream_seq
             ), latest as (
                 select distinct on (k.id) k.*
                   from mes_events.kept k
                  where k.id in (select id from lost)
                  order by k.id, k.published_at desc, k.stream_seq desc
             ), back as (
                 insert into mes_events.outbox as o (id, type, key, key_version, data, occurred_at,
                                                     recorded_at, traceparent, tracestate)
                 overriding system value
                 select id, type, key, key_version, data, occurred_at, recorded_at, traceparent,
                        tracestate
                   from latest
                  order by id
                 on conflict (id) do nothing
                 returning o.id
             ), gone as (
                 select l.* from lost l where l.id not in (select id from back)
             ), summary as (
                 select (select count(*) from lost) as lost,
                        (select count(*) from back) as restored,
                        coalesce((select array_agg(id order by id) from gone), '{}') as ids,
                        coalesce((select array_agg(distinct key order by key) from gone), '{}') as keys,
                        (select min(recorded_at) from gone) as first_at,
                        (select max(recorded_at) from gone) as last_at,
                        (select min(stream_seq) from lost) as lost_from,
                        (select max(stream_seq) from lost) as lost_to
             ), recorded as (
                 insert into mes_events.relay_loss (stream, detected_by, lost_from, lost_to, lost,
                        restored, unrestorable_ids, unrestorable_keys, first_recorded_at,
                        last_recorded_at, durability_basis)
                 select $2, $5, s.lost_from, s.lost_to, s.lost, s.restored, s.ids, s.keys,
                        s.first_at, s.last_at, $6
                   from summary s
                  where s.lost > 0 and exists (select 1 from lease)
                 returning id, detected_at
             ), watermark as (
                 update mes_events.relay_stream
                    set last_seq = $3, last_msg_id = $4
                  where stream = $2 and exists (select 1 from lease)
                 returning 1
             )
             select (select count(*) from lease), (select id from recorded),
                    coalesce((select detected_at from recorded), now()), s.lost_from, s.lost_to,
                    s.lost, s.restored, s.ids, s.keys, s.first_at, s.last_at,
                    (select count(*) from watermark)
               from summary s"
            ),
            &[
                &epoch,
                &r.stream,
                &(r.intact_to as i64),
                &r.last_msg_id,
                &r.by,
                &r.basis,
            ],
        )
        .await
    {
        Ok(row) => row,
        Err(e) => {
            // The session may be gone; if not, end the transaction before reporting.
            let _ = client.batch_execute("rollback").await;
            return Err(e);
        }
    };
    client.batch_execute("commit").await?;
    if row.get::<_, i64>(0) != 1 {
        return Ok(None);
    }
    Ok(Some(Loss {
        id: row.get(1),
        stream: r.stream.to_owned(),
        detected_at: row.get(2),
        detected_by: r.by.to_owned(),
        lost_from: row.get::<_, Option<i64>>(3).unwrap_or_default() as u64,
        lost_to: row.get::<_, Option<i64>>(4).unwrap_or_default() as u64,
        lost: row.get(5),
        restored: row.get(6),
        unrestorable_ids: row.get(7),
        unrestorable_keys: row.get(8),
        first_recorded_at: row.get(9),
        last_recorded_at: row.get(10),
        durability_basis: r.basis.to_owned(),
        accepted_at: None,
        accepted_by: None,
        accept_reason: None,
    }))
}

/// The losses recorded, newest first: those not accepted yet that could not be restored whole
/// (`all = false`), or every one.
pub async fn losses(
    client: &impl GenericClient,
    all: bool,
) -> Result<Vec<Loss>, tokio_postgres::Error> {
    let rows = client
        .query(
            "select id, stream, detected_at, detected_by, lost_from, lost_to, lost, restored,
                    unrestorable_ids, unrestorable_keys, first_recorded_at, last_recorded_at,
                    durability_basis, accepted_at, accepted_by, accept_reason
               from mes_events.relay_loss
              where $1 or (accepted_at is null and cardinality(unrestorable_ids) > 0)
              order by id desc",
            &[&all],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Loss {
            id: Some(r.get(0)),
            stream: r.get(1),
            detected_at: r.get(2),
            detected_by: r.get(3),
            lost_from: r.get::<_, i64>(4) as u64,
            lost_to: r.get::<_, i64>(5) as u64,
            lost: r.get(6),
            restored: r.get(7),
            unrestorable_ids: r.get(8),
            unrestorable_keys: r.get(9),
            first_recorded_at: r.get(10),
            last_recorded_at: r.get(11),
            durability_basis: r.get(12),
            accepted_at: r.get(13),
            accepted_by: r.get(14),
            accept_reason: r.get(15),
        })
        .collect())
}

/// Unaccepted losses with events that could not be restored: how many records, how many events.
pub async fn unaccepted(client: &impl GenericClient) -> Result<(i64, i64), tokio_postgres::Error> {
    let r = client
        .query_one(
            "select count(*), coalesce(sum(cardinality(unrestorable_ids)), 0)::bigint
               from mes_events.relay_loss
              where accepted_at is null and cardinality(unrestorable_ids) > 0",
            &[],
        )
        .await?;
    Ok((r.get(0), r.get(1)))
}

/// Why a loss could not be accepted.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("no loss {0} is recorded (see `mes-events relay losses --all`)")]
    NotFound(i64),
    #[error("loss {id} was accepted already, by {by} at {at}")]
    Accepted {
        id: i64,
        by: String,
        at: DateTime<Utc>,
    },
    #[error(transparent)]
    Db(#[from] tokio_postgres::Error),
}

/// Records that an operator knows of loss `id` (the systems that read the stream were told):
/// it stops failing `relay status` and /readyz.
pub async fn accept(
    client: &impl GenericClient,
    id: i64,
    by: &str,
    reason: &str,
) -> Result<(), AcceptError> {
    let updated = client
        .execute(
            "update mes_events.relay_loss
                set accepted_at = now(), accepted_by = $2, accept_reason = $3
              where id = $1 and accepted_at is null",
            &[&id, &by, &reason],
        )
        .await?;
    if updated == 1 {
        return Ok(());
    }
    match client
        .query_opt(
            "select accepted_by, accepted_at from mes_events.relay_loss where id = $1",
            &[&id],
        )
        .await?
    {
        None => Err(AcceptError::NotFound(id)),
        Some(r) => Err(AcceptError::Accepted {
            id,
            by: r.get::<_, Option<String>>(0).unwrap_or_default(),
            at: r.get::<_, Option<DateTime<Utc>>>(1).unwrap_or_default(),
        }),
    }
}

/// What one turn over the kept slots did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Turned {
    /// Slots emptied.
    pub emptied: u32,
    /// The current slot moved on.
    pub rotated: bool,
}

/// One turn over the kept slots, in one short transaction (which gives up rather than wait
/// long for a lock): empties every past slot whose rows were all published at least `horizon`
/// before the servers were last confirmed holding them, `confirmed_ago` ago (and a second more:
/// a mark that read the slot as current just before it moved on may commit a moment after
/// `until`, which is stamped at the update, a moment before the commit); then,
/// if the current slot has been current for `period` and the next one is empty, makes the next
/// one current. Rows are never deleted one by one.
pub async fn turn_slots(
    client: &mut Client,
    horizon: Duration,
    period: Duration,
    confirmed_ago: Duration,
) -> Result<Turned, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.batch_execute("set local lock_timeout = '2s'").await?;
    let slots = tx
        .query(
            "select slot, since is not null and until is null,
                    since is null,
                    until is not null
                      and until < now() - ($1::float8 + 1 + $3::float8) * interval '1 second',
                    since is not null and since <= now() - $2::float8 * interval '1 second'
               from mes_events.kept_slot order by slot for update",
            &[
                &horizon.as_secs_f64(),
                &period.as_secs_f64(),
                &confirmed_ago.as_secs_f64(),
            ],
        )
        .await?;
    let mut turned = Turned::default();
    let mut empty = [false; 3];
    let mut current = None;
    for s in &slots {
        let slot: i16 = s.get(0);
        let i = slot as usize % 3;
        if s.get::<_, bool>(1) {
            current = Some((i, s.get::<_, bool>(4)));
        }
        empty[i] = s.get(2);
        if s.get::<_, bool>(3) {
            // The slot's rows were all published before `until`, over the horizon ago.
            tx.batch_execute(&format!("truncate mes_events.kept_{i}"))
                .await?;
            tx.execute(
                "update mes_events.kept_slot set since = null, until = null where slot = $1",
                &[&slot],
            )
            .await?;
            empty[i] = true;
            turned.emptied += 1;
        }
    }
    if let Some((cur, due)) = current {
        let next = (cur + 1) % 3;
        if due && empty[next] {
            // The moment itself, not the transaction's start: every mark that read this slot
            // as current began before it.
            tx.execute(
                "update mes_events.kept_slot set until = clock_timestamp() where slot = $1",
                &[&(cur as i16)],
            )
            .await?;
            tx.execute(
                "update mes_events.kept_slot set since = clock_timestamp(), until = null where slot = $1",
                &[&(next as i16)],
            )
            .await?;
            turned.rotated = true;
        }
    }
    tx.commit().await?;
    Ok(turned)
}

/// The space the kept rows take (their three slots, TOAST included), in bytes.
pub async fn bytes(client: &impl GenericClient) -> Result<i64, tokio_postgres::Error> {
    Ok(client
        .query_one(
            "select coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint
               from pg_class c
              where c.relnamespace = 'mes_events'::regnamespace
                and c.relname in ('kept_0', 'kept_1', 'kept_2')",
            &[],
        )
        .await?
        .get(0))
}

/// Rows kept now, for tests and `relay status` (a count of a table that stays small).
pub async fn count(client: &impl GenericClient) -> Result<i64, tokio_postgres::Error> {
    Ok(client
        .query_one("select count(*) from mes_events.kept", &[])
        .await?
        .get(0))
}
