//! The watcher: what the relay's metrics say about things outside its loop (the backlog, the
//! connections, the streams) and whether it is ready.
//!
//! Every [`EVERY`]: the pending rows and the age of the oldest, on a PostgreSQL connection of its
//! own; the relay's NATS connection's state; each stream's last sequence (a missing stream is
//! named), asked on a NATS connection of its own (`mes-events relay watch host:pid`), so that
//! what the relay's connection sends is the relay's work alone.
//! Ready means: PostgreSQL and NATS reachable (or away for less than `http.ready_grace`), every
//! stream of `relay.streams` there (and, for the active relay, taking its messages), and, for the active relay, the oldest pending row younger
//! than `http.ready_max_pending_age`, and no loss with events that could not be restored left
//! unaccepted (`relay losses`). A standby is ready as a standby.
//!
//! It also tells the active relay of disturbances it sees (a stream's leader moved, a stream
//! stopped answering or its last sequence went back): a server may have restarted and lost what
//! it had not synced, so the relay reconciles.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::{Context, GetStreamErrorKind};
use async_nats::jetstream::ErrorCode;
use tokio_util::sync::CancellationToken;

use super::durability::Stability;
use crate::config::Config;
use crate::metrics::{self, Stream};
use crate::store::session::{self, Session};
use crate::store::{kept, operator};

/// How often the watcher looks.
pub(crate) const EVERY: Duration = Duration::from_secs(2);

pub(crate) async fn run(
    cfg: Config,
    js: Context,
    stability: Arc<Stability>,
    shutdown: CancellationToken,
) {
    let m = metrics::get();
    // Each stream's leader and last sequence as last seen: a leader that moved, a stream that
    // stopped answering or went back may have lost what its server had not synced.
    let mut seen: HashMap<String, (Option<String>, u64)> = HashMap::new();
    let mut pg: Option<Session> = None;
    let mut asker: Option<Context> = None;
    let name = format!(
        "mes-events relay watch {}:{}",
        crate::host::name(),
        std::process::id()
    );
    let (mut pg_away, mut nats_away): (Option<Instant>, Option<Instant>) = (None, None);
    loop {
        // PostgreSQL: the backlog.
        if pg.as_ref().is_none_or(|s| s.closed.is_cancelled()) {
            pg = session::connect(&cfg.database.url, "mes-events relay watch")
                .await
                .ok();
        }
        let backlog = match &pg {
            Some(s) => operator::backlog(&s.client).await.ok(),
            None => None,
        };
        let lost = match (&pg, &backlog) {
            (Some(s), Some(_)) => kept::unaccepted(&s.client).await.ok(),
            _ => None,
        };
        if let Some((_, events)) = lost {
            m.unaccepted_lost_events.set(events);
        }
        if let (Some(s), Some(_)) = (&pg, &backlog) {
            if let Ok(b) = kept::bytes(&s.client).await {
                m.kept_bytes.set(b);
            }
        }
        match backlog {
            Some(b) => {
                m.postgres_up.set(1);
                m.pending_rows.set(b.pending);
                m.oldest_pending_seconds.set(b.oldest_pending_seconds);
                m.rejected_rows.set(b.rejected);
                m.held_keys.set(b.held_keys);
                pg_away = None;
            }
            None => {
                m.postgres_up.set(0);
                pg = None;
                pg_away.get_or_insert_with(Instant::now);
            }
        }
        // NATS: the connection, and each stream.
        let connected = js.client().connection_state() == async_nats::connection::State::Connected;
        m.nats_connected.set(i64::from(connected));
        if connected {
            nats_away = None;
        } else {
            nats_away.get_or_insert_with(Instant::now);
        }
        if connected && asker.is_none() {
            asker = crate::nats::connect(&cfg.nats, &name, false)
                .await
                .ok()
                .map(async_nats::jetstream::new);
        }
        let mut missing = Vec::new();
        // Every stream answered, none went back or changed leader: a confirmation of the
        // servers (see `Stability`). The relay's own connection away is not one: something may
        // be restarting.
        let mut all_well = connected && asker.is_some();
        if !connected {
            stability.disturbed();
        }
        if let (true, Some(ask)) = (connected, &asker) {
            for name in &cfg.relay.streams {
                match ask.get_stream(name).await {
                    Ok(s) => {
                        let info = s.cached_info();
                        let last = info.state.last_sequence;
                        let leader = info.cluster.as_ref().and_then(|c| c.leader.clone());
                        if let Some((was_leader, was_last)) =
                            seen.insert(name.clone(), (leader.clone(), last))
                        {
                            if was_leader != leader || last < was_last {
                                stability.note_disturbance();
                                all_well = false;
                            }
                        }
                        m.stream_last_sequence
                            .get_or_create(&Stream {
                                stream: name.clone(),
                            })
                            .set(i64::try_from(last).unwrap_or(i64::MAX));
                    }
                    Err(e) => {
                        if seen.remove(name).is_some() {
                            stability.note_disturbance();
                        }
                        let not_found = matches!(e.kind(), GetStreamErrorKind::JetStream(je)
                            if je.error_code() == ErrorCode::STREAM_NOT_FOUND);
                        if not_found {
                            // Nothing of it to lose: a stream never there, or deleted.
                            missing.push(name.as_str());
                        } else {
                            all_well = false;
                        }
                    }
                }
            }
        }
        if all_well {
            stability.confirm();
        }
        // Streams the active relay found refusing its messages (a missing one is named above).
        let active = m.active.get() == 1;
        let refusing: Vec<&str> = cfg
            .relay
            .streams
            .iter()
            .map(String::as_str)
            .filter(|s| {
                active
                    && !missing.contains(s)
                    && m.stream_accepting
                        .get_or_create(&Stream {
                            stream: (*s).to_owned(),
                        })
                        .get()
                        == 0
            })
            .collect();
        let (ready, why) = readiness(
            &cfg,
            Observed {
                active,
                pg_away: pg_away.map(|t| t.elapsed()),
                nats_away: nats_away.map(|t| t.elapsed()),
                missing: &missing,
                refusing: &refusing,
                oldest_pending: Duration::from_secs_f64(m.oldest_pending_seconds.get().max(0.0)),
                lost: lost.unwrap_or_default(),
            },
        );
        metrics::health().set(ready, why);
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// What the watcher saw in one turn.
pub(crate) struct Observed<'a> {
    pub active: bool,
    pub pg_away: Option<Duration>,
    pub nats_away: Option<Duration>,
    pub missing: &'a [&'a str],
    /// Streams that refuse the active relay's messages.
    pub refusing: &'a [&'a str],
    pub oldest_pending: Duration,
    /// Losses not accepted yet with events that could not be restored: (records, events).
    pub lost: (i64, i64),
}

/// Ready or not, and why (pure).
pub(crate) fn readiness(cfg: &Config, o: Observed<'_>) -> (bool, String) {
    let grace = cfg.http.ready_grace;
    let mut wrong = Vec::new();
    if let Some(d) = o.pg_away.filter(|d| *d >= grace) {
        wrong.push(format!("PostgreSQL unreachable for {}s", d.as_secs()));
    }
    if let Some(d) = o.nats_away.filter(|d| *d >= grace) {
        wrong.push(format!("NATS unreachable for {}s", d.as_secs()));
    }
    for s in o.missing {
        wrong.push(format!(
            "stream {s} missing: create it with `mes-events provision apply`"
        ));
    }
    for s in o.refusing {
        wrong.push(format!(
            "stream {s} refuses messages: see the relay's log for what the server said"
        ));
    }
    if o.lost.0 > 0 {
        wrong.push(format!(
            "{} event(s) a stream lost could not be restored ({} loss record(s)): see `mes-events relay losses`, tell the systems that read it, then `mes-events relay accept-loss ID --reason …`",
            o.lost.1, o.lost.0
        ));
    }
    let max = cfg.http.ready_max_pending_age;
    if o.active && o.oldest_pending >= max {
        wrong.push(format!(
            "the oldest pending row is {}s old (http.ready_max_pending_age = {})",
            o.oldest_pending.as_secs(),
            crate::show::duration(max)
        ));
    }
    if wrong.is_empty() {
        let role = if o.active { "active" } else { "standby" };
        (true, role.to_owned())
    } else {
        (false, wrong.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen<'a>(missing: &'a [&'a str]) -> Observed<'a> {
        Observed {
            active: true,
            pg_away: None,
            nats_away: None,
            missing,
            refusing: &[],
            oldest_pending: Duration::ZERO,
            lost: (0, 0),
        }
    }

    #[test]
    fn ready_active_or_standby_and_not_ready_with_the_reason() {
        let cfg = Config::default();
        assert_eq!(readiness(&cfg, seen(&[])), (true, "active".into()));
        let standby = Observed {
            active: false,
            oldest_pending: Duration::from_secs(3600),
            ..seen(&[])
        };
        assert_eq!(readiness(&cfg, standby), (true, "standby".into()));
        let brief = Observed {
            nats_away: Some(Duration::from_secs(1)),
            ..seen(&[])
        };
        assert!(readiness(&cfg, brief).0, "within the grace period");
        let (ok, why) = readiness(
            &cfg,
            Observed {
                nats_away: Some(Duration::from_secs(60)),
                oldest_pending: Duration::from_secs(3600),
                ..seen(&["MES_PV"])
            },
        );
        assert!(!ok);
        let refusing = readiness(
            &cfg,
            Observed {
                refusing: &["MES_EVENTS"],
                ..seen(&[])
            },
        );
        assert!(!refusing.0 && refusing.1.contains("stream MES_EVENTS refuses messages"));
        let lost = readiness(
            &cfg,
            Observed {
                active: false,
                lost: (1, 42),
                ..seen(&[])
            },
        );
        assert!(
            !lost.0
                && lost
                    .1
                    .contains("42 event(s) a stream lost could not be restored")
        );
        for part in [
            "NATS unreachable for 60s",
            "stream MES_PV missing",
            "3600s old",
        ] {
            assert!(why.contains(part), "{why}");
        }
    }
}
