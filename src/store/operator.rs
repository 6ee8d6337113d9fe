//! Operators' statements: outbox counts, rejected rows, and resolving one (retry or discard),
//! which releases its key and wakes the relay.
//!
//! Never touches a row that is not rejected: retry and discard say why instead.

use chrono::{DateTime, Utc};
use tokio_postgres::{Client, GenericClient};

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

/// Rows waiting to be published (not rejected, not discarded; held ones included) and the age of
/// the oldest, in seconds (0 when none). One pass over the pending rows.
pub async fn backlog(client: &impl GenericClient) -> Result<(i64, f64), tokio_postgres::Error> {
    let r = client
        .query_one(
            "select count(*),
                    coalesce(extract(epoch from now() - min(recorded_at)), 0)::float8
               from mes_events.outbox
              where stream_seq is null and rejected_at is null and discarded_at is null",
            &[],
        )
        .await?;
    Ok((r.get(0), r.get(1)))
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
