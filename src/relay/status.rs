//! `relay status`: the relays as PostgreSQL and NATS see them, and whether all is well.
//!
//! Owns gathering that picture (the lease and the relay sessions, the backlog, each stream's
//! watermark against its last sequence) and judging it, the judgement a pure function. Needs no
//! relay running and no HTTP endpoint: it asks the servers the relays use.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::Config;
use crate::store::migrate::{self, MigrateError};
use crate::store::operator::{self, Backlog, RelaySession};
use crate::store::session;

/// What `relay status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The active relay, if one holds the lock now.
    pub active: Option<ActiveRelay>,
    /// Relays connected and standing by.
    pub standbys: Vec<RelaySession>,
    /// The lease as last taken (also when no relay holds it now).
    pub lease: Lease,
    pub outbox: Backlog,
    /// When the last event was recorded as published (within the published log's retention).
    pub last_published_at: Option<DateTime<Utc>>,
    pub nats: Nats,
    pub streams: Vec<StreamStatus>,
    /// How long the active relay keeps published events, and why (none before a relay was
    /// ever active).
    pub durability: Option<Durability>,
    /// Losses with events that could not be restored, not accepted yet (newest first).
    pub losses: Vec<crate::store::kept::Loss>,
    /// No problem below.
    pub healthy: bool,
    /// Why not healthy, each with what to do.
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ActiveRelay {
    /// `host:pid`.
    pub holder: String,
    pub epoch: i64,
    pub since: Option<DateTime<Utc>>,
    pub client_addr: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Lease {
    pub epoch: i64,
    pub holder: Option<String>,
    pub acquired_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Nats {
    /// The server URL(s), credentials redacted.
    pub url: String,
    pub reachable: bool,
    /// Why not, when not.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StreamStatus {
    pub stream: String,
    /// The highest sequence the relay knows recorded in the outbox.
    pub watermark: Option<i64>,
    /// The stream's last sequence (none when missing or NATS unreachable).
    pub last_sequence: Option<u64>,
    /// `ok`, `missing`, `behind` (it ends before what the relay recorded: it lost events, to be
    /// restored by the active relay), or `unknown` (NATS unreachable).
    pub state: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct Durability {
    pub horizon_seconds: f64,
    pub basis: String,
}

/// Why `relay status` could not look.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Db(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Connect(#[from] crate::store::session::ConnectError),
    /// The schema is missing or older or newer than this binary: the message says what to run.
    #[error(transparent)]
    Schema(#[from] MigrateError),
}

/// Asks PostgreSQL (required) and NATS (reported when unreachable) and judges the answer.
pub async fn gather(cfg: &Config) -> Result<Status, StatusError> {
    let pg = session::connect(&cfg.database.url, "mes-events relay status").await?;
    migrate::check(&pg.client).await?;
    let relays = operator::relays(&pg.client).await?;
    let outbox = operator::backlog(&pg.client).await?;
    let durability = crate::store::lease::durability(&pg.client)
        .await?
        .map(|(d, basis)| Durability {
            horizon_seconds: d.as_secs_f64(),
            basis,
        });
    let losses = crate::store::kept::losses(&pg.client, false).await?;

    let url = crate::nats::redact(&cfg.nats.url);
    let asked = tokio::time::timeout(cfg.nats.request_timeout * 2, async {
        let client = crate::nats::connect(&cfg.nats, "mes-events relay status", false)
            .await
            .map_err(|e| e.to_string())?;
        let js = crate::nats::jetstream(client, &cfg.nats, 1);
        let mut lasts = Vec::new();
        for name in &cfg.relay.streams {
            lasts.push(match js.get_stream(name).await {
                Ok(s) => Some(s.cached_info().state.last_sequence),
                Err(e) if super::publisher::is_not_found(&e) => None,
                Err(e) => {
                    return Err(crate::nats::last_trouble().unwrap_or_else(|| {
                        format!("stream info {name}: {}", super::error::chain(&e))
                    }))
                }
            });
        }
        Ok(lasts)
    })
    .await
    .unwrap_or_else(|_| Err(format!("NATS at {url} did not answer in time")));
    let (nats, lasts) = match asked {
        Ok(lasts) => (
            Nats {
                url,
                reachable: true,
                error: None,
            },
            Some(lasts),
        ),
        Err(e) => (
            Nats {
                url,
                reachable: false,
                error: Some(e),
            },
            None,
        ),
    };
    let streams = cfg
        .relay
        .streams
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let last = lasts.as_ref().map(|l| l[i]);
            let watermark = relays
                .watermarks
                .iter()
                .find(|(s, _)| s == name)
                .map(|(_, w)| *w);
            StreamStatus {
                stream: name.clone(),
                watermark,
                last_sequence: last.flatten(),
                state: match last {
                    None => "unknown",
                    Some(None) => "missing",
                    Some(Some(l)) if watermark.is_some_and(|w| (l as i64) < w) => "behind",
                    Some(Some(_)) => "ok",
                },
            }
        })
        .collect();
    let (active, standbys): (Vec<_>, Vec<_>) = relays.sessions.into_iter().partition(|s| s.active);
    let active = active.into_iter().next().map(|s| ActiveRelay {
        // The lock's holder took the lease last: the lease names it with its epoch.
        epoch: relays.epoch,
        since: relays.acquired_at,
        holder: s.name,
        client_addr: s.client_addr,
    });
    let mut status = Status {
        active,
        standbys,
        lease: Lease {
            epoch: relays.epoch,
            holder: relays.holder,
            acquired_at: relays.acquired_at,
        },
        outbox,
        last_published_at: relays.last_published_at,
        nats,
        streams,
        durability,
        losses,
        healthy: false,
        problems: Vec::new(),
    };
    status.problems = problems(&status, cfg.http.ready_max_pending_age);
    status.healthy = status.problems.is_empty();
    Ok(status)
}

/// What is wrong, each with what to do (pure). Rejected rows are not a problem of the relay's:
/// they wait for an operator (`mes-events outbox rejected`), and the other keys flow.
pub fn problems(s: &Status, max_pending_age: Duration) -> Vec<String> {
    let mut p = Vec::new();
    if s.active.is_none() {
        let last = match (&s.lease.holder, s.lease.acquired_at) {
            (Some(h), Some(at)) => format!(
                " (last active: {h}, epoch {}, from {})",
                s.lease.epoch,
                at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            _ => String::new(),
        };
        let standing_by = if s.standbys.is_empty() {
            "start one with `mes-events relay`"
        } else {
            "a standby should take over within relay.lease_timeout"
        };
        p.push(format!("no relay is active{last}: {standing_by}"));
    }
    if let Some(e) = &s.nats.error {
        p.push(format!("NATS: {e}"));
    }
    for st in s.streams.iter().filter(|st| st.state == "missing") {
        p.push(format!(
            "stream {} missing (its events wait): create it with `mes-events provision apply`",
            st.stream
        ));
    }
    for st in s.streams.iter().filter(|st| st.state == "behind") {
        p.push(format!(
            "stream {} ends at {} but the relay recorded up to {}: the server lost acknowledged events (a power cut before it synced?); the active relay restores them from the outbox when it reconnects{}",
            st.stream,
            st.last_sequence.unwrap_or_default(),
            st.watermark.unwrap_or_default(),
            if s.active.is_none() { " (none is active: start one)" } else { "" }
        ));
    }
    for l in &s.losses {
        let id = l.id.unwrap_or_default();
        p.push(format!(
            "stream {} lost {} event(s) that could not be restored (loss {id}, found {}): see `mes-events relay losses`, tell the systems that read {}, then `mes-events relay accept-loss {id} --reason …`",
            l.stream,
            l.unrestorable(),
            l.detected_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            l.stream
        ));
    }
    let age = Duration::from_secs_f64(s.outbox.oldest_pending_seconds.max(0.0));
    if age >= max_pending_age {
        p.push(format!(
            "the oldest pending row is {} old (http.ready_max_pending_age = {}): see the relay's log",
            crate::show::duration(Duration::from_secs(age.as_secs())),
            crate::show::duration(max_pending_age)
        ));
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> Status {
        Status {
            active: Some(ActiveRelay {
                holder: "vm:1".into(),
                epoch: 3,
                since: None,
                client_addr: None,
            }),
            standbys: Vec::new(),
            lease: Lease {
                epoch: 3,
                holder: Some("vm:1".into()),
                acquired_at: None,
            },
            outbox: Backlog::default(),
            last_published_at: None,
            nats: Nats {
                url: "nats://n1:4222".into(),
                reachable: true,
                error: None,
            },
            streams: vec![StreamStatus {
                stream: "MES_EVENTS".into(),
                watermark: Some(5),
                last_sequence: Some(5),
                state: "ok",
            }],
            durability: None,
            losses: Vec::new(),
            healthy: true,
            problems: Vec::new(),
        }
    }

    #[test]
    fn healthy_when_active_reachable_complete_and_current() {
        assert!(problems(&healthy(), Duration::from_secs(300)).is_empty());
    }

    #[test]
    fn each_problem_says_what_to_do() {
        let mut s = healthy();
        s.active = None;
        s.nats.error = Some("NATS at nats://n1:4222 refused the connection".into());
        s.streams[0].state = "missing";
        s.outbox.oldest_pending_seconds = 400.0;
        s.outbox.rejected = 2;
        let p = problems(&s, Duration::from_secs(300));
        assert_eq!(p.len(), 4, "{p:?}");
        assert!(p[0].contains("no relay is active") && p[0].contains("mes-events relay"));
        assert!(p[1].contains("refused"));
        assert!(p[2].contains("MES_EVENTS") && p[2].contains("provision apply"));
        assert!(p[3].contains("6m 40s"), "{}", p[3]);
    }
}
