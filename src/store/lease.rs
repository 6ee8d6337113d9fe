//! Leadership in PostgreSQL: the active relay's advisory lock, the lease epoch every fenced
//! write checks, and each stream's reconciliation watermark.
//!
//! Owns `mes_events.relay_lease` and `mes_events.relay_stream`; never decides who leads (the
//! relay does).

use chrono::{DateTime, Utc};
use tokio_postgres::{Client, GenericClient};

/// Advisory lock key of the active relay ("mes_rlay" in ASCII).
pub const RELAY_LOCK: i64 = 0x6d65_735f_726c_6179;

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
            fenced!(
                "upsert as (
                 insert into mes_events.relay_stream (stream, created, last_seq)
                 select $2, $3, $4 where exists (select 1 from lease)
                 on conflict (stream) do update set created = excluded.created, last_seq = excluded.last_seq
                 returning 1
             )
             select (select count(*) from upsert)"
            ),
            &[&epoch, &stream, &created, &(last_seq as i64)],
        )
        .await?;
    Ok(row.get::<_, i64>(0) == 1)
}
