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

/// What the relay recorded of a stream: when it was created (as last seen), the highest
/// sequence below which everything is recorded, and the `Nats-Msg-Id` of the message there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamMark {
    pub created: DateTime<Utc>,
    pub last_seq: u64,
    pub last_msg_id: Option<String>,
}

/// Where reconciliation of a stream starts, and what to check it still holds.
pub async fn watermark(
    client: &Client,
    stream: &str,
) -> Result<Option<StreamMark>, tokio_postgres::Error> {
    Ok(client
        .query_opt(
            "select created, last_seq, last_msg_id from mes_events.relay_stream where stream = $1",
            &[&stream],
        )
        .await?
        .map(|r| StreamMark {
            created: r.get(0),
            last_seq: r.get::<_, i64>(1) as u64,
            last_msg_id: r.get(2),
        }))
}

/// Sets a stream's watermark outright (after reconciling it), if `epoch` is current.
/// `last_msg_id` is the message at `last_seq`, when it was read; `None` keeps the one recorded
/// if the sequence did not move (and forgets it if it did).
pub async fn set_watermark(
    client: &Client,
    epoch: i64,
    stream: &str,
    created: DateTime<Utc>,
    last_seq: u64,
    last_msg_id: Option<&str>,
) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one(
            fenced!(
                "upsert as (
                 insert into mes_events.relay_stream as s (stream, created, last_seq, last_msg_id)
                 select $2, $3, $4, $5 where exists (select 1 from lease)
                 on conflict (stream) do update
                    set created = excluded.created, last_seq = excluded.last_seq,
                        last_msg_id = case
                            when excluded.last_msg_id is not null then excluded.last_msg_id
                            when s.last_seq = excluded.last_seq and s.created = excluded.created
                                then s.last_msg_id
                        end
                 returning 1
             )
             select (select count(*) from upsert)"
            ),
            &[&epoch, &stream, &created, &(last_seq as i64), &last_msg_id],
        )
        .await?;
    Ok(row.get::<_, i64>(0) == 1)
}

/// Records the durability horizon the active relay keeps events for, and why, if `epoch` is
/// current.
pub async fn set_durability(
    client: &Client,
    epoch: i64,
    horizon: std::time::Duration,
    basis: &str,
) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one(
            fenced!(
                "set as (
                 update mes_events.relay_lease
                    set durability_horizon = $2::float8 * interval '1 second', durability_basis = $3
                  where id = 1 and exists (select 1 from lease)
                 returning 1
             )
             select (select count(*) from set)"
            ),
            &[&epoch, &horizon.as_secs_f64(), &basis],
        )
        .await?;
    Ok(row.get::<_, i64>(0) == 1)
}

/// The durability horizon the active relay last recorded, and why.
pub async fn durability(
    client: &impl GenericClient,
) -> Result<Option<(std::time::Duration, String)>, tokio_postgres::Error> {
    let r = client
        .query_one(
            "select extract(epoch from durability_horizon)::float8, durability_basis
               from mes_events.relay_lease where id = 1",
            &[],
        )
        .await?;
    Ok(
        match (r.get::<_, Option<f64>>(0), r.get::<_, Option<String>>(1)) {
            (Some(secs), Some(basis)) => {
                Some((std::time::Duration::from_secs_f64(secs.max(0.0)), basis))
            }
            _ => None,
        },
    )
}

/// Records that `stream` is new to the relay, or was created again since it was last seen
/// (`created` differs): its watermark starts at 0 and the published log's entries from before
/// are not this stream's. Done before anything of it is recorded, if `epoch` is current.
pub async fn begin_incarnation(
    client: &Client,
    epoch: i64,
    stream: &str,
    created: DateTime<Utc>,
) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one(
            fenced!(
                "upsert as (
                 insert into mes_events.relay_stream as s (stream, created, last_seq, last_msg_id,
                                                           incarnation_since)
                 select $2, $3, 0, null, now() where exists (select 1 from lease)
                 on conflict (stream) do update
                    set created = excluded.created, last_seq = 0, last_msg_id = null,
                        incarnation_since = now()
                 returning 1
             )
             select (select count(*) from upsert)"
            ),
            &[&epoch, &stream, &created],
        )
        .await?;
    Ok(row.get::<_, i64>(0) == 1)
}
