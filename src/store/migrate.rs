//! Migrations of the `mes_events` schema: versioned, checksummed, idempotent, and safe when
//! several run at once (each run holds a transaction-scoped advisory lock, so a second one waits
//! and then finds nothing left to do).
//!
//! Owns the list of migrations and the `mes_events.schema_migrations` table. Never edits a
//! migration that has shipped: a changed checksum is an error, not an upgrade.

use sha2::{Digest, Sha256};
use tokio_postgres::Client;

/// Advisory lock key held while migrating ("mes_evts" in ASCII).
const MIGRATE_LOCK: i64 = 0x6d65_735f_6576_7473;

pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in order. Append only.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "outbox",
        sql: include_str!("migrations/0001_outbox.sql"),
    },
    Migration {
        version: 2,
        name: "rejections",
        sql: include_str!("migrations/0002_rejections.sql"),
    },
    Migration {
        version: 3,
        name: "published_log",
        sql: include_str!("migrations/0003_published_log.sql"),
    },
    Migration {
        version: 4,
        name: "relay_reads",
        sql: include_str!("migrations/0004_relay_reads.sql"),
    },
    Migration {
        version: 5,
        name: "durability",
        sql: include_str!("migrations/0005_durability.sql"),
    },
];

/// The schema version this binary needs.
pub fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("database error while migrating")]
    Db(#[from] tokio_postgres::Error),
    #[error("migration {version} ({name}) failed")]
    Apply {
        version: i32,
        name: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("migration {version} ({name}) in the database differs from the one in this binary: a shipped migration was edited; restore it and add a new migration instead")]
    Changed { version: i32, name: String },
    #[error("the database schema mes_events is at version {found}, newer than this binary knows ({known}): run a newer mes-events")]
    Newer { found: i32, known: i32 },
    #[error("the database has no mes_events schema at version {needed} (found {found}): run `mes-events migrate` first")]
    Behind { found: i32, needed: i32 },
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub applied: Vec<i32>,
    pub version: i32,
}

fn checksum(sql: &str) -> String {
    Sha256::digest(sql.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Brings the schema to [`latest`].
pub async fn migrate(client: &mut Client) -> Result<Report, MigrateError> {
    let tx = client.transaction().await?;
    tx.execute("select pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])
        .await?;
    tx.batch_execute(
        "create schema if not exists mes_events;
         create table if not exists mes_events.schema_migrations (
             version    int primary key,
             name       text not null,
             checksum   text not null,
             applied_at timestamptz not null default now()
         );",
    )
    .await?;
    let applied = tx
        .query(
            "select version, name, checksum from mes_events.schema_migrations order by version",
            &[],
        )
        .await?;
    let mut done = Vec::new();
    for row in &applied {
        let version: i32 = row.get(0);
        let name: String = row.get(1);
        let sum: String = row.get(2);
        match MIGRATIONS.iter().find(|m| m.version == version) {
            None => {
                return Err(MigrateError::Newer {
                    found: version,
                    known: latest(),
                })
            }
            Some(m) if checksum(m.sql) != sum => {
                return Err(MigrateError::Changed { version, name })
            }
            Some(_) => done.push(version),
        }
    }
    let mut report = Report {
        applied: Vec::new(),
        version: done.last().copied().unwrap_or(0),
    };
    for m in MIGRATIONS.iter().filter(|m| !done.contains(&m.version)) {
        tx.batch_execute(m.sql)
            .await
            .map_err(|source| MigrateError::Apply {
                version: m.version,
                name: m.name,
                source,
            })?;
        tx.execute(
            "insert into mes_events.schema_migrations (version, name, checksum) values ($1, $2, $3)",
            &[&m.version, &m.name, &checksum(m.sql)],
        )
        .await?;
        report.applied.push(m.version);
        report.version = m.version;
    }
    tx.commit().await?;
    Ok(report)
}

/// The schema's current version, or 0 when it was never migrated.
pub async fn current(client: &Client) -> Result<i32, MigrateError> {
    let exists: bool = client
        .query_one(
            "select to_regclass('mes_events.schema_migrations') is not null",
            &[],
        )
        .await?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let v: Option<i32> = client
        .query_one("select max(version) from mes_events.schema_migrations", &[])
        .await?
        .get(0);
    Ok(v.unwrap_or(0))
}

/// Fails unless the schema is exactly at the version this binary needs.
pub async fn check(client: &Client) -> Result<(), MigrateError> {
    let found = current(client).await?;
    match found.cmp(&latest()) {
        std::cmp::Ordering::Equal => Ok(()),
        std::cmp::Ordering::Less => Err(MigrateError::Behind {
            found,
            needed: latest(),
        }),
        std::cmp::Ordering::Greater => Err(MigrateError::Newer {
            found,
            known: latest(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_ascend_without_gaps() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i32 + 1, "{}", m.name);
        }
    }
}
