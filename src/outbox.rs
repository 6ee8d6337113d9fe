//! Outbox: every SQL statement the relay and the CLI run against `mes_events`.
//!
//! Owns the row type and the statements; never decides anything (the relay does). Each statement
//! that marks rows is fenced by the relay lease epoch: it locks the lease row FOR SHARE with the
//! caller's epoch, so after a newer relay has bumped the epoch an older one marks nothing, and
//! while a relay's epoch is current it is the only one that marks.

use chrono::{DateTime, Utc};
use tokio_postgres::{Client, GenericClient, Statement};

/// Advisory lock key of the active relay ("mes_rlay" in ASCII).
pub const RELAY_LOCK: i64 = 0x6d65_735f_726c_6179;

/// NOTIFY channel `mes_events.emit` wakes the relay on.
pub const CHANNEL: &str = "mes_events";

/// One unpublished event as the MES wrote it.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub id: i64,
    pub ty: String,
    pub key: String,
    pub key_version: i64,
    /// The event data as JSON text.
    pub data: String,
    pub occurred_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

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

/// Records where rows landed (moving them from the outbox to `mes_events.published`) and, if
/// `epoch` is current, advances stream watermarks.
///
/// `watermarks` may only name a sequence below which every message of the stream is recorded:
/// reconciliation starts reading after it, so a watermark past an unrecorded message would hide
/// that message forever (and its row would be published twice).
pub async fn mark(
    client: &Client,
    prepared: &Prepared,
    epoch: i64,
    marks: &[Mark],
    watermarks: &[(String, u64)],
) -> Result<Marked, tokio_postgres::Error> {
    let ids: Vec<i64> = marks.iter().map(|m| m.id).collect();
    let streams: Vec<&str> = marks.iter().map(|m| m.stream.as_str()).collect();
    let seqs: Vec<i64> = marks.iter().map(|m| m.seq as i64).collect();
    let wm_streams: Vec<&str> = watermarks.iter().map(|(s, _)| s.as_str()).collect();
    let wm_seqs: Vec<i64> = watermarks.iter().map(|(_, q)| *q as i64).collect();
    let row = client
        .query_one(
            &prepared.mark,
            &[&epoch, &ids, &streams, &seqs, &wm_streams, &wm_seqs],
        )
        .await?;
    Ok(Marked {
        lease_held: row.get::<_, i64>(0) == 1,
        rows: row.get::<_, i64>(1) as u64,
    })
}

const MARK: &str = "
    with lease as (
        select epoch from mes_events.relay_lease where id = 1 and epoch = $1 for share
    ), moved as (
        delete from mes_events.outbox o
         using unnest($2::bigint[], $3::text[], $4::bigint[]) as i(id, stream, seq)
         where o.id = i.id and o.rejected_at is null and exists (select 1 from lease)
        returning o.id, o.type, o.key, o.key_version, o.recorded_at, i.stream, i.seq
    ), marked as (
        insert into mes_events.published (id, type, key, key_version, recorded_at, stream, stream_seq)
        select * from moved
        on conflict (id) do nothing
        returning 1
    ), watermark as (
        update mes_events.relay_stream s
           set last_seq = greatest(s.last_seq, w.seq)
          from unnest($5::text[], $6::bigint[]) as w(stream, seq)
         where s.stream = w.stream and exists (select 1 from lease)
        returning 1
    )
    select (select count(*) from lease), (select count(*) from marked),
           (select count(*) from watermark)";

/// Tries to take the active relay's advisory lock on this session.
pub async fn try_lock(client: &Client) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .query_one("select pg_try_advisory_lock($1)", &[&RELAY_LOCK])
        .await?
        .get(0))
}

/// Starts a new epoch for `holder`; from now on only this epoch may mark rows.
pub async fn bump_epoch(client: &Client, holder: &str) -> Result<i64, tokio_postgres::Error> {
    Ok(client
        .query_one(
            "update mes_events.relay_lease
                set epoch = epoch + 1, holder = $1, acquired_at = now()
              where id = 1
          returning epoch",
            &[&holder],
        )
        .await?
        .get(0))
}

/// The active relay as recorded in the lease: (epoch, holder).
pub async fn lease(
    client: &impl GenericClient,
) -> Result<(i64, Option<String>), tokio_postgres::Error> {
    let r = client
        .query_one(
            "select epoch, holder from mes_events.relay_lease where id = 1",
            &[],
        )
        .await?;
    Ok((r.get(0), r.get(1)))
}

/// Where reconciliation of a stream starts: the stream's creation time as last seen, and the
/// highest sequence known to be recorded.
pub async fn watermark(
    client: &Client,
    stream: &str,
) -> Result<Option<(DateTime<Utc>, u64)>, tokio_postgres::Error> {
    Ok(client
        .query_opt(
            "select created, last_seq from mes_events.relay_stream where stream = $1",
            &[&stream],
        )
        .await?
        .map(|r| (r.get(0), r.get::<_, i64>(1) as u64)))
}

/// Sets a stream's watermark outright (after reconciling it), if `epoch` is current.
pub async fn set_watermark(
    client: &Client,
    epoch: i64,
    stream: &str,
    created: DateTime<Utc>,
    last_seq: u64,
) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one(
            "with lease as (
                 select epoch from mes_events.relay_lease where id = 1 and epoch = $1 for share
             ), upsert as (
                 insert into mes_events.relay_stream (stream, created, last_seq)
                 select $2, $3, $4 where exists (select 1 from lease)
                 on conflict (stream) do update set created = excluded.created, last_seq = excluded.last_seq
                 returning 1
             )
             select (select count(*) from upsert)",
            &[&epoch, &stream, &created, &(last_seq as i64)],
        )
        .await?;
    Ok(row.get::<_, i64>(0) == 1)
}

/// Deletes entries of the published log older than `before`, looking at the `limit` oldest ids.
/// Returns how many went. (Ids follow publish time closely: a late row's entry, younger than its
/// id says, just waits for a later purge.)
pub async fn purge_published(
    client: &Client,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "delete from mes_events.published where id in (
                 select id from mes_events.published order by id limit $2)
               and published_at < $1",
            &[&before, &limit],
        )
        .await
}

/// Arguments of `mes_events.emit` beyond type, key and data.
#[derive(Debug, Clone, Default)]
pub struct EmitOptions {
    pub occurred_at: Option<DateTime<Utc>>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

/// Calls `mes_events.emit` (in the caller's transaction, if `client` is one). Returns the id.
pub async fn emit(
    client: &impl GenericClient,
    ty: &str,
    key: &str,
    data: &str,
    opts: &EmitOptions,
) -> Result<i64, tokio_postgres::Error> {
    Ok(client
        .query_one(
            "select mes_events.emit($1, $2, $3::text::jsonb, $4, $5, $6)",
            &[
                &ty,
                &key,
                &data,
                &opts.occurred_at,
                &opts.traceparent,
                &opts.tracestate,
            ],
        )
        .await?
        .get(0))
}

/// Counts of the outbox by state, for status output and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Not yet published, not rejected, not discarded (includes rows of held keys).
    pub pending: i64,
    pub published: i64,
    /// Rejected and neither retried nor discarded: each holds its key.
    pub rejected: i64,
    pub discarded: i64,
}

pub async fn counts(client: &impl GenericClient) -> Result<Counts, tokio_postgres::Error> {
    let r = client
        .query_one(
            "select count(*) filter (where rejected_at is null and discarded_at is null),
                    (select count(*) from mes_events.published),
                    count(*) filter (where rejected_at is not null and discarded_at is null),
                    count(*) filter (where discarded_at is not null)
               from mes_events.outbox",
            &[],
        )
        .await?;
    Ok(Counts {
        pending: r.get(0),
        published: r.get(1),
        rejected: r.get(2),
        discarded: r.get(3),
    })
}

/// Why a row was rejected, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// `unknown_type`, `invalid_type`, `schema`, `key_mismatch`, `too_large`, `unroutable`.
    pub kind: String,
    /// JSON Pointer into the data, when the reason is about a field.
    pub path: Option<String>,
    /// The schema keyword or limit that failed.
    pub rule: Option<String>,
    pub reason: String,
}

/// Marks a pending row rejected, if `epoch` is current. False when the lease is gone.
pub async fn reject(
    client: &Client,
    epoch: i64,
    id: i64,
    r: &Rejection,
) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one(
            "with lease as (
                 select epoch from mes_events.relay_lease where id = 1 and epoch = $1 for share
             ), rejected as (
                 update mes_events.outbox
                    set rejected_at = now(), reject_kind = $3, reject_path = $4, reject_rule = $5,
                        reject_reason = $6
                  where id = $2 and stream_seq is null and rejected_at is null
                    and exists (select 1 from lease)
                 returning 1
             )
             select (select count(*) from lease), (select count(*) from rejected)",
            &[&epoch, &id, &r.kind, &r.path, &r.rule, &r.reason],
        )
        .await?;
    Ok(row.get::<_, i64>(0) == 1)
}

/// A rejected row as operators see it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RejectedRow {
    pub id: i64,
    #[serde(rename = "type")]
    pub ty: String,
    pub key: String,
    pub recorded_at: DateTime<Utc>,
    pub rejected_at: DateTime<Utc>,
    pub kind: String,
    pub path: Option<String>,
    pub rule: Option<String>,
    pub reason: String,
    pub retries: i32,
    /// Later rows of the same key waiting behind this one.
    pub waiting: i64,
}

/// Every rejected row that still holds its key, oldest first.
pub async fn rejected(
    client: &impl GenericClient,
) -> Result<Vec<RejectedRow>, tokio_postgres::Error> {
    let rows = client
        .query(
            "select r.id, r.type, r.key, r.recorded_at, r.rejected_at, r.reject_kind, r.reject_path,
                    r.reject_rule, r.reject_reason, r.retries,
                    (select count(*) from mes_events.outbox w
                      where w.key = r.key and w.id > r.id and w.stream_seq is null
                        and w.rejected_at is null and w.discarded_at is null)
               from mes_events.outbox r
              where r.rejected_at is not null and r.discarded_at is null
              order by r.id",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| RejectedRow {
            id: r.get(0),
            ty: r.get(1),
            key: r.get(2),
            recorded_at: r.get(3),
            rejected_at: r.get(4),
            kind: r.get(5),
            path: r.get(6),
            rule: r.get(7),
            reason: r.get(8),
            retries: r.get(9),
            waiting: r.get(10),
        })
        .collect())
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("outbox row {0} does not exist")]
    NotFound(i64),
    #[error("outbox row {0} is not rejected (only rejected rows can be retried or discarded; see `mes-events outbox rejected`)")]
    NotRejected(i64),
    #[error("database error")]
    Db(#[from] tokio_postgres::Error),
}

/// Queues a rejected row again, optionally with corrected data, and wakes the relay.
pub async fn retry(client: &mut Client, id: i64, data: Option<&str>) -> Result<(), ResolveError> {
    resolve(
        client,
        id,
        "update mes_events.outbox
            set rejected_at = null, reject_kind = null, reject_path = null, reject_rule = null,
                reject_reason = null, retries = retries + 1,
                data = coalesce($2::text::jsonb::json, data)
          where id = $1 and rejected_at is not null and discarded_at is null",
        &[&id, &data],
    )
    .await
}

/// Gives up on a rejected row on purpose, releasing its key, and records who and why.
pub async fn discard(
    client: &mut Client,
    id: i64,
    by: &str,
    reason: &str,
) -> Result<(), ResolveError> {
    resolve(
        client,
        id,
        "update mes_events.outbox
            set discarded_at = now(), discarded_by = $2, discard_reason = $3
          where id = $1 and rejected_at is not null and discarded_at is null",
        &[&id, &by, &reason],
    )
    .await
}

/// Runs an update that applies only to a rejected row, stamps the rows it releases, then wakes
/// the relay, in one transaction; says why when the row is not (or no longer) rejected.
async fn resolve(
    client: &mut Client,
    id: i64,
    update: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<(), ResolveError> {
    let tx = client.transaction().await?;
    if tx.execute(update, params).await? == 0 {
        return Err(not_rejected(&tx, id).await);
    }
    // The rows this releases (the retried row, the key's held rows) may lie below the relay's
    // read position: stamped with this transaction, they look to the relay like rows that
    // committed late, and it reads again from the start.
    tx.execute(
        "update mes_events.outbox set txid = pg_current_xact_id()
          where key = (select key from mes_events.outbox where id = $1) and id >= $1
            and stream_seq is null and rejected_at is null and discarded_at is null",
        &[&id],
    )
    .await?;
    tx.execute("select pg_notify('mes_events', '')", &[])
        .await?;
    tx.commit().await?;
    Ok(())
}

async fn not_rejected(tx: &tokio_postgres::Transaction<'_>, id: i64) -> ResolveError {
    match tx
        .query_opt(
            "select 1 from mes_events.outbox where id = $1
             union all select 1 from mes_events.published where id = $1",
            &[&id],
        )
        .await
    {
        Ok(Some(_)) => ResolveError::NotRejected(id),
        Ok(None) => ResolveError::NotFound(id),
        Err(e) => ResolveError::Db(e),
    }
}
