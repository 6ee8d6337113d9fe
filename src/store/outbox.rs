//! The relay's statements against the outbox: read publishable rows (with the late-row check),
//! record where rows landed, keep a row as rejected, purge the published log.
//!
//! Owns the statements; never decides anything (the relay does). Every statement that writes is
//! fenced by the lease epoch ([`fenced!`](crate::store)).

use tokio_postgres::{Client, Statement};

use crate::event::{Rejection, Row};

/// What one fetch saw, all in one snapshot.
#[derive(Debug)]
pub struct Fetched {
    /// The lease epoch at that moment: if it is not the caller's, another relay took over.
    pub epoch: i64,
    /// The snapshot it read in (`pg_snapshot` text), to pass as `after` to the next fetch.
    pub snapshot: String,
    /// A pending row at or below the cursor became visible since the `after` snapshot: a row
    /// that committed late, or one a retry or discard released. The caller must read again from
    /// the start, or that row would be skipped (and its key's later rows overtake it).
    pub late: bool,
    /// Publishable rows above the cursor, in id order.
    pub rows: Vec<Row>,
}

/// A row's place in a stream, from a PubAck or read back from the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    pub id: i64,
    pub stream: String,
    pub seq: u64,
}

/// The relay's two hot statements, prepared once per session: PostgreSQL then parses and plans
/// them once instead of on every call (planning the fetch alone took over 1 ms), and each call
/// is one round trip instead of two.
pub struct Prepared {
    fetch: Statement,
    mark: Statement,
}

impl Prepared {
    pub async fn new(client: &Client) -> Result<Prepared, tokio_postgres::Error> {
        Ok(Prepared {
            fetch: client.prepare(FETCH).await?,
            mark: client.prepare(MARK).await?,
        })
    }
}

/// Pending: not published (published rows leave the table), not rejected, not discarded.
///
/// The late check runs in the same snapshot as the read. A transaction the previous snapshot
/// could not see was either running then (in its xip list: one exact probe of `outbox_late`
/// each) or started after it (txid at or above its xmax: a range over the transactions since,
/// kept on that index by `order by txid limit 1`). So it costs the same however many events went
/// before, and a long transaction elsewhere in the cluster does not widen it (a range from the
/// snapshot's xmin would have). A scan of `id <= cursor` instead would walk every row deleted
/// since the last VACUUM. Held rows (a rejected row earlier in their key) are skipped; the
/// per-row probe for them runs only when some row is rejected at all.
const FETCH: &str = "
    select l.epoch,
           pg_current_snapshot()::text,
           $3::text is not null and (
               exists (select 1 from (
                   select h.id from mes_events.outbox h
                    where h.stream_seq is null and h.rejected_at is null and h.discarded_at is null
                      and h.txid >= pg_snapshot_xmax($3::text::pg_snapshot) and h.id <= $1
                    order by h.txid
                    limit 1) started_after)
               or exists (select 1 from pg_snapshot_xip($3::text::pg_snapshot) x(xid)
                           cross join lateral (
                               select 1 from mes_events.outbox h
                                where h.stream_seq is null and h.rejected_at is null
                                  and h.discarded_at is null
                                  and h.txid = x.xid and h.id <= $1
                                limit 1) running)),
           o.id, o.type, o.key, o.key_version, o.data::text, o.occurred_at,
           o.recorded_at, o.traceparent, o.tracestate
      from mes_events.relay_lease l
      left join lateral (
           select * from mes_events.outbox p
            where p.stream_seq is null and p.rejected_at is null and p.discarded_at is null
              and p.id > $1
              and ((select not exists (select 1 from mes_events.outbox r
                                        where r.rejected_at is not null and r.discarded_at is null))
                   or not exists (select 1 from mes_events.outbox h
                                   where h.key = p.key and h.id < p.id
                                     and h.rejected_at is not null and h.discarded_at is null))
            order by p.id
            limit $2) o on true
     where l.id = 1
     order by o.id";

/// Reads pending rows above `cursor`, in id order, and tells whether a pending row at or below
/// it became visible since the snapshot `after` (the previous fetch's; `None` when `cursor` is
/// 0, i.e. reading from the start).
///
/// Why that suffices: a row below the cursor that no fetch saw took its id before the row the
/// cursor stands on, so its transaction was running at every snapshot since; the first fetch
/// after it commits sees it visible and invisible to `after`. Retry and discard stamp the rows
/// they release with their own transaction, so those look the same.
pub async fn fetch(
    client: &Client,
    prepared: &Prepared,
    cursor: i64,
    limit: i64,
    after: Option<&str>,
) -> Result<Fetched, tokio_postgres::Error> {
    let rows = client
        .query(&prepared.fetch, &[&cursor, &limit, &after])
        .await?;
    let mut fetched = Fetched {
        epoch: 0,
        snapshot: String::new(),
        late: false,
        rows: Vec::with_capacity(rows.len()),
    };
    for r in rows {
        fetched.epoch = r.get(0);
        fetched.snapshot = r.get(1);
        fetched.late = r.get(2);
        if let Some(id) = r.get::<_, Option<i64>>(3) {
            fetched.rows.push(Row {
                id,
                ty: r.get(4),
                key: r.get(5),
                key_version: r.get(6),
                data: r.get(7),
                occurred_at: r.get(8),
                recorded_at: r.get(9),
                traceparent: r.get(10),
                tracestate: r.get(11),
            });
        }
    }
    Ok(fetched)
}

/// Outcome of a fenced write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marked {
    /// False when the caller's epoch is no longer current: nothing was written.
    pub lease_held: bool,
    /// Rows that went from pending to published.
    pub rows: u64,
}

/// A watermark to move: everything in `stream` up to `seq` is recorded, and the message at `seq`
/// carries `msg_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watermark {
    pub stream: String,
    pub seq: u64,
    pub msg_id: String,
}

/// Records where rows landed (moving them from the outbox to `mes_events.published`, and, with
/// `keep`, copying them whole into `mes_events.kept` for the durability horizon) and, if `epoch`
/// is current, advances stream watermarks.
///
/// `watermarks` may only name a sequence below which every message of the stream is recorded:
/// reconciliation starts reading after it, so a watermark past an unrecorded message would hide
/// that message forever (and its row would be published twice).
pub async fn mark(
    client: &Client,
    prepared: &Prepared,
    epoch: i64,
    marks: &[Mark],
    watermarks: &[Watermark],
    keep: bool,
) -> Result<Marked, tokio_postgres::Error> {
    let ids: Vec<i64> = marks.iter().map(|m| m.id).collect();
    let streams: Vec<&str> = marks.iter().map(|m| m.stream.as_str()).collect();
    let seqs: Vec<i64> = marks.iter().map(|m| m.seq as i64).collect();
    let wm_streams: Vec<&str> = watermarks.iter().map(|w| w.stream.as_str()).collect();
    let wm_seqs: Vec<i64> = watermarks.iter().map(|w| w.seq as i64).collect();
    let wm_ids: Vec<&str> = watermarks.iter().map(|w| w.msg_id.as_str()).collect();
    let row = client
        .query_one(
            &prepared.mark,
            &[
                &epoch,
                &ids,
                &streams,
                &seqs,
                &wm_streams,
                &wm_seqs,
                &keep,
                &wm_ids,
            ],
        )
        .await?;
    Ok(Marked {
        lease_held: row.get::<_, i64>(0) == 1,
        rows: row.get::<_, i64>(1) as u64,
    })
}

/// A row landed twice (restored after a loss, then found again) is recorded where it is now.
/// The kept copy goes to the current slot (an uncorrelated subquery: read once per statement).
const MARK: &str = fenced!("
    moved as (
        delete from mes_events.outbox o
         using unnest($2::bigint[], $3::text[], $4::bigint[]) as i(id, stream, seq)
         where o.id = i.id and o.rejected_at is null and exists (select 1 from lease)
        returning o.id, o.type, o.key, o.key_version, o.recorded_at, i.stream, i.seq, o.data,
                  o.occurred_at, o.traceparent, o.tracestate
    ), marked as (
        insert into mes_events.published (id, type, key, key_version, recorded_at, stream, stream_seq)
        select id, type, key, key_version, recorded_at, stream, seq from moved
        on conflict (id) do update
           set stream = excluded.stream, stream_seq = excluded.stream_seq, published_at = now()
        returning 1
    ), kept as (
        insert into mes_events.kept (slot, id, type, key, key_version, data, occurred_at,
                                     recorded_at, traceparent, tracestate, stream, stream_seq)
        select (select slot from mes_events.kept_slot where since is not null and until is null),
               id, type, key, key_version, data, occurred_at, recorded_at, traceparent,
               tracestate, stream, seq
          from moved
         where $7
    ), watermark as (
        update mes_events.relay_stream s
           set last_seq = greatest(s.last_seq, w.seq),
               last_msg_id = case when w.seq >= s.last_seq then w.msg_id else s.last_msg_id end
          from unnest($5::text[], $6::bigint[], $8::text[]) as w(stream, seq, msg_id)
         where s.stream = w.stream and exists (select 1 from lease)
        returning 1
    )
    select (select count(*) from lease), (select count(*) from marked),
           (select count(*) from watermark)");

/// Marks a pending row rejected, if `epoch` is current. False when the lease is gone.
pub async fn reject(
    client: &Client,
    epoch: i64,
    id: i64,
    r: &Rejection,
) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one(
            fenced!(
                "rejected as (
                 update mes_events.outbox
                    set rejected_at = now(), reject_kind = $3, reject_path = $4, reject_rule = $5,
                        reject_reason = $6
                  where id = $2 and stream_seq is null and rejected_at is null
                    and exists (select 1 from lease)
                 returning 1
             )
             select (select count(*) from lease), (select count(*) from rejected)"
            ),
            &[&epoch, &id, &r.kind.as_str(), &r.path, &r.rule, &r.reason],
        )
        .await?;
    Ok(row.get::<_, i64>(0) == 1)
}

/// Deletes entries of the published log older than `retain` (by PostgreSQL's clock, which
/// stamped them), looking at the `limit` oldest ids. Returns how many went. (Ids follow publish
/// time closely: a late row's entry, younger than its id says, just waits for a later purge.)
pub async fn purge_published(
    client: &Client,
    retain: std::time::Duration,
    limit: i64,
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "delete from mes_events.published where id in (
                 select id from mes_events.published order by id limit $2)
               and published_at < now() - $1::float8 * interval '1 second'",
            &[&retain.as_secs_f64(), &limit],
        )
        .await
}
