//! The durability horizon: how long after its PubAck the server may still forget an event, so
//! how long the relay keeps it (data included) to publish it again; and when the janitor may
//! forget kept events.
//!
//! A PubAck means the server has the event in memory (its page cache; on R3, a quorum's), not on
//! disk: nats-server forces a sync every `jetstream { sync_interval }` (2 minutes by default), or
//! on every write with `sync_interval: always`, except for streams with `persist_mode: async`.
//! The horizon is, in order: `relay.durability_horizon` when set; else the servers' own setting
//! read from their monitoring endpoints (`nats.monitoring_url`, `/varz`): 0 when every server
//! syncs every write, the interval plus a margin otherwise; else nats-server's default interval
//! plus the margin.
//!
//! A kept event is safe to forget only once the server has been up, without the relay seeing
//! it restart, for the horizon since the event's PubAck (a sync happened in between): a server
//! that loses power while the relay waits loses what it had not synced, however long ago the
//! PubAck was. [`Stability`] is what the active relay has seen: since when the server has been
//! verified and not disturbed (reconnected, a stream's leader changed, a stream stopped
//! answering or went back).
//!
//! Never forgets anything itself: the janitor does, on this module's word.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::Context;
use async_nats::jetstream::stream::PersistenceMode;

use crate::config::Config;

/// nats-server's `sync_interval` when none is configured.
pub const SERVER_DEFAULT_SYNC: Duration = Duration::from_secs(120);

/// The horizon in force, and why, in words an operator can check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Horizon {
    pub duration: Duration,
    pub basis: String,
}

impl Horizon {
    /// Whether published events must be kept at all.
    pub fn keeps(&self) -> bool {
        !self.duration.is_zero()
    }
}

/// How a server syncs its JetStream store, as its monitoring endpoint says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerSync {
    /// `sync_interval: always`: every write is synced before it is acknowledged (`interval` is
    /// still what streams with `persist_mode: async` get).
    Always { interval: Duration },
    /// A sync every `interval`.
    Every(Duration),
}

/// What was learnt of the servers' sync settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Servers {
    /// `nats.monitoring_url` is not set.
    NotAsked,
    /// Every endpoint answered: (its URL, its setting).
    Answered(Vec<(String, ServerSync)>),
    /// An endpoint did not answer or said something else: what went wrong.
    Failed(String),
}

/// The interval plus a margin: a sync runs every `interval` after the previous one finished,
/// and a write that lands while one runs waits for the next.
pub fn with_margin(interval: Duration) -> Duration {
    interval + interval / 4 + Duration::from_secs(5)
}

/// The horizon (pure): see the module's documentation. `async_streams` are the relay's streams
/// with `persist_mode: async` (never synced on write).
pub fn horizon(
    configured: Option<Duration>,
    servers: &Servers,
    async_streams: &[String],
) -> Horizon {
    let show = |d: Duration| crate::show::duration(d).to_string();
    if let Some(d) = configured {
        return Horizon {
            duration: d,
            basis: format!("relay.durability_horizon = {} (configured)", show(d)),
        };
    }
    let assumed = |why: String| {
        let d = with_margin(SERVER_DEFAULT_SYNC);
        Horizon {
            duration: d,
            basis: format!(
                "{why}: assuming nats-server's default, a sync every {}, so events are kept {} after their PubAck",
                show(SERVER_DEFAULT_SYNC),
                show(d)
            ),
        }
    };
    let answered = match servers {
        Servers::NotAsked => {
            return assumed(
                "the servers' sync setting is unknown (set nats.monitoring_url to let the relay read it)"
                    .into(),
            )
        }
        Servers::Failed(why) => {
            return assumed(format!("the servers' sync setting could not be read ({why})"))
        }
        Servers::Answered(a) if a.is_empty() => {
            return assumed("no monitoring endpoint answered".into())
        }
        Servers::Answered(a) => a,
    };
    let urls = answered
        .iter()
        .map(|(u, _)| u.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    // The longest wait any server may take before its disk has an event.
    let longest = answered
        .iter()
        .filter_map(|(_, s)| match s {
            ServerSync::Every(d) => Some(*d),
            ServerSync::Always { interval } if !async_streams.is_empty() => Some(*interval),
            ServerSync::Always { .. } => None,
        })
        .max();
    match longest {
        None => Horizon {
            duration: Duration::ZERO,
            basis: format!(
                "nats-server syncs every write before its PubAck (sync_interval: always, read from {urls}): nothing needs keeping"
            ),
        },
        Some(d) => {
            let kept = with_margin(d);
            let why = if answered.iter().all(|(_, s)| matches!(s, ServerSync::Always { .. })) {
                format!(
                    "nats-server syncs every write (sync_interval: always, read from {urls}) except for stream(s) {} (persist_mode: async), synced every {}",
                    async_streams.join(", "),
                    show(d)
                )
            } else {
                format!(
                    "nats-server syncs every {} (sync_interval, read from {urls})",
                    show(d)
                )
            };
            Horizon {
                duration: kept,
                basis: format!("{why}: events are kept {} after their PubAck", show(kept)),
            }
        }
    }
}

/// What one server's `/varz` says of its sync setting (pure).
pub fn parse_varz(body: &str) -> Result<ServerSync, String> {
    let v: serde_json::Value = serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
    let js = v
        .get("jetstream")
        .and_then(|j| j.get("config"))
        .ok_or("no jetstream.config: is JetStream enabled on that server?")?;
    let interval = js
        .get("sync_interval")
        .and_then(serde_json::Value::as_u64)
        .map(Duration::from_nanos)
        .unwrap_or(SERVER_DEFAULT_SYNC);
    if js.get("sync_always").and_then(serde_json::Value::as_bool) == Some(true) {
        Ok(ServerSync::Always { interval })
    } else {
        Ok(ServerSync::Every(interval))
    }
}

/// Asks every monitoring endpoint of `nats.monitoring_url` for its sync setting.
pub async fn ask_servers(cfg: &Config) -> Servers {
    let Some(urls) = cfg.nats.monitoring_url.as_deref() else {
        return Servers::NotAsked;
    };
    let client = match reqwest::Client::builder()
        .timeout(cfg.nats.request_timeout)
        .build()
    {
        Ok(c) => c,
        Err(e) => return Servers::Failed(format!("no HTTP client: {e}")),
    };
    let mut answered = Vec::new();
    for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let shown = crate::secret::redact(url);
        let varz = format!("{}/varz", url.trim_end_matches('/'));
        let body = match client.get(&varz).send().await {
            Ok(r) if r.status().is_success() => r.text().await,
            Ok(r) => return Servers::Failed(format!("{shown}/varz answered {}", r.status())),
            Err(e) => return Servers::Failed(format!("{shown}/varz: {}", super::error::chain(&e))),
        };
        match body.map_err(|e| e.to_string()).and_then(|b| parse_varz(&b)) {
            Ok(s) => answered.push((shown, s)),
            Err(e) => return Servers::Failed(format!("{shown}/varz: {e}")),
        }
    }
    Servers::Answered(answered)
}

/// The horizon for `cfg`'s streams on the servers `js` reaches.
pub async fn derive(cfg: &Config, js: &Context) -> Horizon {
    if cfg.relay.durability_horizon.is_some() {
        return derive_from(cfg, js, Servers::NotAsked).await;
    }
    derive_from(cfg, js, ask_servers(cfg).await).await
}

/// The same, or `None` when the servers were asked and did not answer (one starting up):
/// then the horizon in force stays.
pub async fn derive_if_answered(cfg: &Config, js: &Context) -> Option<Horizon> {
    if cfg.relay.durability_horizon.is_some() {
        return Some(derive_from(cfg, js, Servers::NotAsked).await);
    }
    match ask_servers(cfg).await {
        Servers::Failed(why) => {
            tracing::debug!(%why, "the servers' sync setting cannot be read now; the horizon stays");
            None
        }
        servers => Some(derive_from(cfg, js, servers).await),
    }
}

async fn derive_from(cfg: &Config, js: &Context, servers: Servers) -> Horizon {
    if cfg.relay.durability_horizon.is_some() {
        return horizon(cfg.relay.durability_horizon, &Servers::NotAsked, &[]);
    }
    let mut async_streams = Vec::new();
    for name in &cfg.relay.streams {
        if let Ok(s) = js.get_stream(name).await {
            if s.cached_info().config.persist_mode == Some(PersistenceMode::Async) {
                async_streams.push(name.clone());
            }
        }
    }
    horizon(None, &servers, &async_streams)
}

/// What the active relay has seen of the servers, shared with its janitor and its watcher.
///
/// A kept event acknowledged at `A` may be forgotten once the servers were *seen*, at some
/// `C ≥ A + horizon`, still holding every stream as the relay recorded it: alive that long
/// after the PubAck, they synced it. Being seen is a *confirmation*: a reconciliation that
/// verified every stream, or the watcher finding every stream answering without having gone
/// back or changed leader. After a disturbance (a reconnect, a stream that stopped answering,
/// went back or changed leader) nothing is confirmed until a reconciliation has looked: the
/// servers may have restarted and lost what they had not synced, and what the janitor forgets
/// then could not be restored. Only the active relay confirms; a confirmation stays a fact
/// about its moment, so the janitor of a relay that lost the lead may still act on it.
#[derive(Debug)]
pub struct Stability {
    state: Mutex<State>,
    /// Disturbances the watcher saw: the active relay reconciles when this moves.
    disturbances: AtomicU64,
}

#[derive(Debug)]
struct State {
    horizon: Horizon,
    active: bool,
    /// A disturbance no reconciliation has looked at yet.
    unsettled: bool,
    confirmed: Option<Instant>,
}

impl Default for Stability {
    fn default() -> Self {
        Stability::new(horizon(None, &Servers::NotAsked, &[]))
    }
}

impl Stability {
    /// Not active yet, nothing confirmed, the given horizon.
    pub fn new(horizon: Horizon) -> Stability {
        Stability {
            state: Mutex::new(State {
                horizon,
                active: false,
                unsettled: true,
                confirmed: None,
            }),
            disturbances: AtomicU64::new(0),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This relay became active (nothing is settled until its first reconciliation), or it
    /// stopped being active.
    pub fn set_active(&self, active: bool) {
        let mut s = self.state();
        s.active = active;
        s.unsettled = true;
    }

    /// Something may have restarted under the relay: nothing is confirmed until a
    /// reconciliation has looked.
    pub fn disturbed(&self) {
        self.state().unsettled = true;
    }

    /// A reconciliation verified every stream (or restored it): confirmed now.
    pub fn verified(&self) {
        let mut s = self.state();
        s.unsettled = false;
        if s.active {
            s.confirmed = Some(Instant::now());
        }
    }

    /// The watcher found every stream answering, none gone back: confirmed now, unless a
    /// disturbance waits for a reconciliation or this relay is not active.
    pub fn confirm(&self) {
        let mut s = self.state();
        if s.active && !s.unsettled {
            s.confirmed = Some(Instant::now());
        }
    }

    /// How long ago the servers were last confirmed, if ever.
    pub fn confirmed_ago(&self) -> Option<Duration> {
        self.state().confirmed.map(|t| t.elapsed())
    }

    pub fn set_horizon(&self, h: Horizon) {
        self.state().horizon = h;
    }

    pub fn horizon(&self) -> Horizon {
        self.state().horizon.clone()
    }

    /// The watcher saw a disturbance.
    pub fn note_disturbance(&self) {
        self.disturbances.fetch_add(1, Ordering::Relaxed);
        self.disturbed();
    }

    pub fn disturbances(&self) -> u64 {
        self.disturbances.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn a_configured_horizon_wins_and_says_so() {
        let h = horizon(Some(S(30)), &Servers::Answered(vec![]), &[]);
        assert_eq!(h.duration, S(30));
        assert!(
            h.basis
                .contains("relay.durability_horizon = 30s (configured)"),
            "{}",
            h.basis
        );
    }

    #[test]
    fn unknown_servers_get_the_default_interval_and_a_margin() {
        let h = horizon(None, &Servers::NotAsked, &[]);
        assert_eq!(h.duration, S(155));
        assert!(h.basis.contains("set nats.monitoring_url"), "{}", h.basis);
        let h = horizon(
            None,
            &Servers::Failed("http://n1:8222/varz: refused".into()),
            &[],
        );
        assert_eq!(h.duration, S(155));
        assert!(h.basis.contains("refused"), "{}", h.basis);
    }

    #[test]
    fn servers_that_sync_every_write_need_nothing_kept_unless_a_stream_persists_async() {
        let always = |u: &str| (u.to_owned(), ServerSync::Always { interval: S(120) });
        let all = Servers::Answered(vec![always("http://n1:8222"), always("http://n2:8222")]);
        let h = horizon(None, &all, &[]);
        assert_eq!(h.duration, Duration::ZERO);
        assert!(!h.keeps());
        assert!(h.basis.contains("sync_interval: always"), "{}", h.basis);
        let h = horizon(None, &all, &["MES_PV".into()]);
        assert_eq!(h.duration, S(155));
        assert!(
            h.basis.contains("MES_PV (persist_mode: async)"),
            "{}",
            h.basis
        );
    }

    #[test]
    fn the_slowest_server_decides() {
        let h = horizon(
            None,
            &Servers::Answered(vec![
                (
                    "http://n1:8222".into(),
                    ServerSync::Always { interval: S(120) },
                ),
                ("http://n2:8222".into(), ServerSync::Every(S(1))),
                ("http://n3:8222".into(), ServerSync::Every(S(10))),
            ]),
            &[],
        );
        assert_eq!(h.duration, with_margin(S(10)));
        assert_eq!(with_margin(S(10)), Duration::from_millis(17_500));
        assert!(h.basis.contains("syncs every 10s"), "{}", h.basis);
    }

    #[test]
    fn varz_is_read_as_nats_server_writes_it() {
        let v = r#"{"jetstream":{"config":{"max_memory":1,"sync_interval":120000000000,"strict":true}}}"#;
        assert_eq!(parse_varz(v), Ok(ServerSync::Every(S(120))));
        let v = r#"{"jetstream":{"config":{"sync_interval":120000000000,"sync_always":true}}}"#;
        assert_eq!(parse_varz(v), Ok(ServerSync::Always { interval: S(120) }));
        assert!(parse_varz(r#"{"server_id":"x"}"#)
            .unwrap_err()
            .contains("JetStream"));
        assert!(parse_varz("<html>").is_err());
    }

    #[test]
    fn only_an_active_relay_confirms_and_not_before_a_reconciliation_has_looked() {
        let s = Stability::new(horizon(Some(S(6)), &Servers::NotAsked, &[]));
        s.confirm();
        s.verified();
        assert_eq!(s.confirmed_ago(), None, "not active: nothing confirmed");
        s.set_active(true);
        s.confirm();
        assert_eq!(s.confirmed_ago(), None, "active, but not reconciled yet");
        s.verified();
        let first = s.confirmed_ago().unwrap();
        assert!(first < S(1));
        s.note_disturbance();
        assert_eq!(s.disturbances(), 1);
        std::thread::sleep(Duration::from_millis(20));
        s.confirm();
        assert!(
            s.confirmed_ago().unwrap() >= Duration::from_millis(20),
            "a disturbance no reconciliation has looked at: the watcher confirms nothing"
        );
        s.verified();
        s.confirm();
        assert!(s.confirmed_ago().unwrap() < Duration::from_millis(20));
        s.set_active(false);
        assert!(
            s.confirmed_ago().is_some(),
            "a confirmation stays a fact about its moment"
        );
        assert_eq!(s.horizon().duration, S(6));
    }
}
