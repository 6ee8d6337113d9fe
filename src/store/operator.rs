//! Operators' statements: outbox counts, rejected rows, and resolving one (retry or discard),
//! which releases its key and wakes the relay.
//!
//! Never touches a row that is not rejected: retry and discard say why instead.

use chrono::{DateTime, Utc};
use tokio_postgres::{Client, GenericClient};

/// Counts of the outbox by state, for status output and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
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

/// What waits in the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct Backlog {
    /// Rows waiting to be published (not rejected, not discarded; held ones included).
    pub pending: i64,
    /// The age of the oldest of them, in seconds (0 when none).
    pub oldest_pending_seconds: f64,
    /// Rejected rows neither retried nor discarded.
    pub rejected: i64,
    /// Keys those hold (their later rows wait).
    pub held_keys: i64,
}

/// The backlog: one pass over the unpublished rows (the published ones have left the outbox).
pub async fn backlog(client: &impl GenericClient) -> Result<Backlog, tokio_postgres::Error> {
    let r = client
        .query_one(
            "select count(*) filter (where rejected_at is null),
                    coalesce(extract(epoch from now() - min(recorded_at) filter (where rejected_at is null)), 0)::float8,
                    count(*) filter (where rejected_at is not null),
                    count(distinct key) filter (where rejected_at is not null)
               from mes_events.outbox
              where stream_seq is null and discarded_at is null",
            &[],
        )
        .await?;
    Ok(Backlog {
        pending: r.get(0),
        oldest_pending_seconds: r.get(1),
        rejected: r.get(2),
        held_keys: r.get(3),
    })
}

/// A relay process as PostgreSQL sees it: its main session.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RelaySession {
    /// `host:pid`, as the lease names its holder.
    pub name: String,
    /// The address it connects from (none over a Unix socket).
    pub client_addr: Option<String>,
    /// When its session started.
    pub connected_since: DateTime<Utc>,
    /// It holds the active relay's lock.
    pub active: bool,
}

/// The relays as PostgreSQL records and sees them.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Relays {
    /// The lease: the last epoch, who took it and when.
    pub epoch: i64,
    pub holder: Option<String>,
    pub acquired_at: Option<DateTime<Utc>>,
    /// Every relay connected now (active first).
    pub sessions: Vec<RelaySession>,
    /// Each stream's watermark: the highest sequence known recorded.
    pub watermarks: Vec<(String, i64)>,
    /// When the last event was recorded as published (within the published log's retention).
    pub last_published_at: Option<DateTime<Utc>>,
}

/// The relays: the lease, the relay sessions connected now (a relay's main session is named
/// `mes-events relay host:pid`; the active one holds the lock), the watermarks, the last publish.
pub async fn relays(client: &impl GenericClient) -> Result<Relays, tokio_postgres::Error> {
    let lease = client
        .query_one(
            "select epoch, holder, acquired_at,
                    (select max(published_at) from mes_events.published)
               from mes_events.relay_lease where id = 1",
            &[],
        )
        .await?;
    let sessions = client
        .query(
            "select substr(a.application_name, length('mes-events relay ') + 1),
                    host(a.client_addr), a.backend_start,
                    exists (select 1 from pg_locks l
                             where l.pid = a.pid and l.locktype = 'advisory' and l.granted
                               and l.database = a.datid
                               and ((l.classid::bigint << 32) | l.objid::bigint) = $1)
               from pg_stat_activity a
              where a.datname = current_database()
                and a.application_name ~ '^mes-events relay [^ ]+:[0-9]+$'
              order by 4 desc, a.backend_start",
            &[&crate::store::lease::RELAY_LOCK],
        )
        .await?;
    let watermarks = client
        .query(
            "select stream, last_seq from mes_events.relay_stream order by stream",
            &[],
        )
        .await?;
    Ok(Relays {
        epoch: lease.get(0),
        holder: lease.get(1),
        acquired_at: lease.get(2),
        last_published_at: lease.get(3),
        sessions: sessions
            .iter()
            .map(|r| RelaySession {
                name: r.get(0),
                client_addr: r.get(1),
                connected_since: r.get(2),
                active: r.get(3),
            })
            .collect(),
        watermarks: watermarks.iter().map(|r| (r.get(0), r.get(1))).collect(),
    })
}

/// An outbox row's type, key and data (as JSON text), if the row exists.
pub async fn type_key_data(
    client: &impl GenericClient,
    id: i64,
) -> Result<Option<(String, String, String)>, tokio_postgres::Error> {
    Ok(client
        .query_opt(
            "select type, key, data::text from mes_events.outbox where id = $1",
            &[&id],
        )
        .await?
        .map(|r| (r.get(0), r.get(1), r.get(2))))
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
    /// The row's data as written (to fix it: `outbox retry ID --data @fixed.json`).
    pub data: serde_json::Value,
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
                        and w.rejected_at is null and w.discarded_at is null),
                    r.data
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
            data: r.get(11),
        })
        .collect())
}

/// A row an operator discarded on purpose: who, when, why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DiscardedRow {
    pub id: i64,
    #[serde(rename = "type")]
    pub ty: String,
    pub key: String,
    pub recorded_at: DateTime<Utc>,
    pub reject_reason: Option<String>,
    pub discarded_at: DateTime<Utc>,
    pub discarded_by: Option<String>,
    pub discard_reason: Option<String>,
    pub data: serde_json::Value,
}

/// Discarded rows, oldest first (they stay in the outbox as the record of the decision).
pub async fn discarded(
    client: &impl GenericClient,
) -> Result<Vec<DiscardedRow>, tokio_postgres::Error> {
    let rows = client
        .query(
            "select id, type, key, recorded_at, reject_reason, discarded_at, discarded_by,
                    discard_reason, data
               from mes_events.outbox
              where discarded_at is not null
              order by id",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| DiscardedRow {
            id: r.get(0),
            ty: r.get(1),
            key: r.get(2),
            recorded_at: r.get(3),
            reject_reason: r.get(4),
            discarded_at: r.get(5),
            discarded_by: r.get(6),
            discard_reason: r.get(7),
            data: r.get(8),
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

/// Queues a rejected row again, optionally with a corrected type and data, and wakes the relay.
/// It keeps its id, so its place in its key's order.
pub async fn retry(
    client: &mut Client,
    id: i64,
    ty: Option<&str>,
    data: Option<&str>,
) -> Result<(), ResolveError> {
    resolve(
        client,
        id,
        "update mes_events.outbox
            set rejected_at = null, reject_kind = null, reject_path = null, reject_rule = null,
                reject_reason = null, retries = retries + 1,
                data = coalesce($2::text::jsonb::json, data),
                type = coalesce($3, type)
          where id = $1 and rejected_at is not null and discarded_at is null",
        &[&id, &data, &ty],
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
