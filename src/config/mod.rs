//! Configuration: what the operator may set, its defaults, and where each value comes from.
//!
//! Precedence, lowest first: built-in defaults < the TOML file (`mes-events.toml` in the working
//! directory, or `--config FILE`) < `DATABASE_URL` / `NATS_URL` < `MES_EVENTS_*` variables
//! (`MES_EVENTS_RELAY__BATCH_SIZE=500` sets `relay.batch_size`).
//!
//! This module owns parsing and validation only; it never connects to anything. Every error names
//! the key, the source it came from and what is accepted, because figment attributes each value
//! to its source and every struct here denies unknown fields (no `#[serde(flatten)]`, which would
//! break that attribution).
//!
//! The keys, their defaults and their validation are here (those of the servers to reach, the
//! database and NATS, in [`connections`]); how an error names the key, its
//! source and what is accepted is in [`error`]; the tests of that contract with the reference's
//! Configuration section are in `tests.rs`.

use std::path::{Path, PathBuf};

use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

mod error;
pub use error::ConfigError;

mod connections;
pub use connections::{DatabaseConfig, NatsConfig};

/// File read from the working directory when `--config` is not given (it may be absent).
pub const DEFAULT_FILE: &str = "mes-events.toml";

/// Prefix of the environment variables that override the file; `__` separates nesting levels.
pub const ENV_PREFIX: &str = "MES_EVENTS_";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub database: DatabaseConfig,
    pub nats: NatsConfig,
    pub events: EventsConfig,
    pub relay: RelayConfig,
    pub log: LogConfig,
    pub http: HttpConfig,
    pub provision: ProvisionConfig,
    pub push: PushConfig,
}

/// `mes-events push`: where it finds each pushed system's identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushConfig {
    /// The folder `mes-events provision credentials` wrote: each pushed system's consumer is
    /// read with that system's own seed (`<system>.nk`), so the push service holds exactly the
    /// permissions the system would. Unset: every system's consumer is read with `nats.*`'s
    /// identity (a development server without authorization, or the admin's).
    #[serde(default, deserialize_with = "unset_if_empty")]
    pub credentials: Option<PathBuf>,
}

/// Where the declaration of streams, consumers and systems is read from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisionConfig {
    /// The declaration folder (`provision *` and `demo`; `--dir` overrides it). Relative to the
    /// working directory.
    pub dir: PathBuf,
}

/// The relay's HTTP endpoint: `/metrics` (Prometheus / OpenMetrics), `/healthz`, `/readyz`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Where to listen, e.g. `127.0.0.1:9464` (or `0.0.0.0:9464` for a Prometheus elsewhere).
    /// Unset (the default): no endpoint. Off by default because an open port is a choice the
    /// operator makes (two relays on one host would also collide on one default port).
    #[serde(default, deserialize_with = "unset_if_empty")]
    pub address: Option<String>,
    /// How long PostgreSQL or NATS may be unreachable before the relay is not ready.
    #[serde(with = "humantime_serde")]
    pub ready_grace: Duration,
    /// The active relay is not ready while its oldest pending row is older than this.
    #[serde(with = "humantime_serde")]
    pub ready_max_pending_age: Duration,
}

/// How log lines are written (to standard error). Which lines: `RUST_LOG`, e.g.
/// `RUST_LOG=info,mes_events=debug`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (for people; colours only on a terminal) or `json` (one object per line, for log
    /// shippers).
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// Name of this MES installation; part of every event's CloudEvents `source`.
    pub installation: String,
    /// Subject code of the site this installation serves (`[a-z0-9-]`); part of `source`, and the
    /// site token of subjects for events that carry no hierarchy scope of their own.
    pub site: String,
    /// First token of every subject.
    pub subject_prefix: String,
    /// CloudEvents mode on the wire: `binary` (attributes in `ce-*` headers, body = data) or
    /// `structured` (body = JSON event format, `Content-Type: application/cloudevents+json`).
    pub mode: crate::event::binding::Mode,
    /// A site catalog folder extending the shipped event catalog (types, categories, new minor
    /// versions); unset: the shipped catalog alone. Checked whole at start.
    #[serde(
        default,
        deserialize_with = "unset_if_empty",
        skip_serializing_if = "Option::is_none"
    )]
    pub catalog: Option<PathBuf>,
}

/// What the relay does with a row that cannot become a valid event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnInvalid {
    /// Keep the row as rejected, with its reason, hold its key's later rows, go on with others.
    Reject,
    /// Reject it, then stop the relay (exit 1); it refuses to start again while rejected rows
    /// are unresolved (`mes-events outbox retry` / `discard`).
    Stop,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// The JetStream streams this relay writes. It must be their only writer: every publish is
    /// fenced with `Nats-Expected-Last-Sequence`. Each must exist before the relay starts.
    #[serde(deserialize_with = "list")]
    pub streams: Vec<String>,
    /// Rows read from the outbox per query.
    pub batch_size: usize,
    /// Publishes awaiting their PubAck at once: the pipeline depth.
    pub max_in_flight: usize,
    /// Fallback poll when no NOTIFY arrives (notifications are not durable).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// LISTEN for the payload-less NOTIFY that `mes_events.emit` sends. Off: poll only.
    pub notify: bool,
    /// Take the PostgreSQL advisory lock so only one relay is active and others wait as standby.
    /// Turning it off is for fencing tests only: correctness then rests on the epoch and the
    /// expected-last-sequence fences alone, and relays take turns instead of standing by.
    pub exclusive: bool,
    /// How often a standby relay tries to become active.
    #[serde(with = "humantime_serde")]
    pub standby_retry: Duration,
    /// How long the active relay may go silent before PostgreSQL ends its session and so
    /// releases the lead (`idle_session_timeout` and TCP timeouts on that session): a frozen or
    /// partitioned relay is replaced by a standby within about this plus `standby_retry`. The
    /// active relay confirms its lease every fifth of it, and publishes only while its last
    /// confirmation is younger than half of it. PostgreSQL 14 or newer (older servers release
    /// the lead only when the session dies).
    #[serde(with = "humantime_serde")]
    pub lease_timeout: Duration,
    /// Longest pause between retries while PostgreSQL or NATS is unreachable.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Entries of the published log older than this are deleted (the stream keeps the events).
    #[serde(with = "humantime_serde")]
    pub retain_published: Duration,
    /// How often the relay's janitor deletes published-log entries past `retain_published`, busy
    /// or idle, until it has caught up.
    #[serde(with = "humantime_serde")]
    pub purge_interval: Duration,
    /// `reject` (default) or `stop`: see [`OnInvalid`].
    pub on_invalid: OnInvalid,
    /// How long after its PubAck a published event is kept, data included, so that it can be
    /// published again if the server loses it (a power cut before the server synced it to
    /// disk). Unset: derived from the servers' sync setting (`nats.monitoring_url`), else
    /// nats-server's default (a sync every 2 minutes) plus a margin. `0s` trusts every PubAck
    /// (right only for servers with `sync_interval: always`).
    #[serde(
        default,
        serialize_with = "humantime_serde::serialize",
        deserialize_with = "duration_unset_if_empty",
        skip_serializing_if = "Option::is_none"
    )]
    pub durability_horizon: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            database: DatabaseConfig {
                url: "postgresql://postgres@127.0.0.1:5432/postgres".into(),
                sslmode: None,
                sslrootcert: None,
                sslcert: None,
                sslkey: None,
            },
            nats: NatsConfig {
                url: "nats://127.0.0.1:4222".into(),
                credentials: None,
                nkey: None,
                inbox_prefix: None,
                request_timeout: Duration::from_secs(5),
                monitoring_url: None,
                tls_ca: None,
                tls_cert: None,
                tls_key: None,
                tls_first: false,
            },
            events: EventsConfig {
                installation: "mes".into(),
                site: "site".into(),
                subject_prefix: "mes".into(),
                mode: crate::event::binding::Mode::Binary,
                catalog: None,
            },
            relay: RelayConfig {
                streams: vec!["MES_EVENTS".into(), "MES_PV".into()],
                batch_size: 1000,
                max_in_flight: 4096,
                poll_interval: Duration::from_secs(1),
                notify: true,
                exclusive: true,
                standby_retry: Duration::from_millis(500),
                lease_timeout: Duration::from_secs(5),
                max_backoff: Duration::from_secs(10),
                retain_published: Duration::from_secs(7 * 24 * 3600),
                purge_interval: Duration::from_secs(10),
                on_invalid: OnInvalid::Reject,
                durability_horizon: None,
            },
            log: LogConfig {
                format: LogFormat::Text,
            },
            http: HttpConfig {
                address: None,
                ready_grace: Duration::from_secs(30),
                ready_max_pending_age: Duration::from_secs(300),
            },
            provision: ProvisionConfig {
                dir: PathBuf::from("nats"),
            },
            push: PushConfig { credentials: None },
        }
    }
}

impl Config {
    /// Loads from the file (explicit, or `mes-events.toml` if present) and the process environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::from_figment(&Self::figment(file)?)
    }

    /// Extracts and validates a configuration from any set of layered sources.
    pub fn from_figment(figment: &Figment) -> Result<Config, ConfigError> {
        let mut config: Config = figment.extract().map_err(Box::new)?;
        // From here on database.url is the whole connection string, database.ssl* in it.
        config.database.url =
            config
                .database
                .connection_string()
                .map_err(|e| ConfigError::Tls {
                    key: "database",
                    said: e.to_string(),
                })?;
        config.validate()?;
        Ok(config)
    }

    /// The layered sources, exposed so tests can add `Figment::join`/`merge` values of their own.
    pub fn figment(file: Option<&Path>) -> Result<Figment, ConfigError> {
        let file = match file {
            Some(path) if !path.exists() => {
                return Err(ConfigError::MissingFile {
                    path: path.to_owned(),
                })
            }
            Some(path) => Toml::file_exact(path),
            None => Toml::file(DEFAULT_FILE),
        };
        Ok(Figment::from(Serialized::defaults(Config::default()))
            .merge(file)
            .merge(
                Env::raw()
                    .only(&["DATABASE_URL"])
                    .map(|_| "database.url".into()),
            )
            .merge(Env::raw().only(&["NATS_URL"]).map(|_| "nats.url".into()))
            .merge(Env::prefixed(ENV_PREFIX).split("__")))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        // Every problem at once, not the first alone.
        let bad = std::cell::RefCell::new(Vec::new());
        let check = |ok: bool, key, value: String, expected| {
            if !ok {
                bad.borrow_mut().push(ConfigError::Value {
                    key,
                    value,
                    expected,
                });
            }
        };
        let code = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        match crate::tls::libpq::split(&self.database.url)
            .and_then(|(_, given)| crate::tls::libpq::Tls::of(&given))
        {
            // The URL's own form is checked below.
            Ok(_) | Err(crate::tls::libpq::SettingError::Quote) => {}
            Err(e) => bad.borrow_mut().push(ConfigError::Tls {
                key: "database",
                said: e.to_string(),
            }),
        }
        check(
            crate::tls::libpq::split(&self.database.url)
                .is_ok_and(|(rest, _)| rest.parse::<tokio_postgres::Config>().is_ok()),
            "database.url",
            crate::secret::redact(&self.database.url),
            "a PostgreSQL URL (postgresql://user@host:5432/dbname) or a key=value connection string (host=… dbname=…)",
        );
        check(
            code(&self.events.site),
            "events.site",
            self.events.site.clone(),
            "a subject code of lower-case letters, digits and '-'",
        );
        check(
            code(&self.events.installation),
            "events.installation",
            self.events.installation.clone(),
            "a code of lower-case letters, digits and '-'",
        );
        check(
            !self.events.subject_prefix.is_empty()
                && self.events.subject_prefix.split('.').all(|t| {
                    !t.is_empty()
                        && t.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                }),
            "events.subject_prefix",
            self.events.subject_prefix.clone(),
            "one or more dot-separated tokens of letters, digits, '-' and '_'",
        );
        if let Some(p) = &self.nats.inbox_prefix {
            check(
                !p.is_empty()
                    && p.split('.').all(|t| {
                        !t.is_empty() && !t.contains(['*', '>']) && !t.contains(char::is_whitespace)
                    }),
                "nats.inbox_prefix",
                p.clone(),
                "a subject without wildcards, e.g. _INBOX_relay",
            );
        }
        check(
            !self.relay.streams.is_empty(),
            "relay.streams",
            format!("{:?}", self.relay.streams),
            "at least one stream name",
        );
        check(
            self.relay.lease_timeout >= Duration::from_secs(1)
                && self.relay.standby_retry < self.relay.lease_timeout,
            "relay.lease_timeout",
            crate::show::duration(self.relay.lease_timeout).to_string(),
            "at least 1s, and longer than relay.standby_retry",
        );
        check(
            self.relay.batch_size > 0,
            "relay.batch_size",
            self.relay.batch_size.to_string(),
            "a whole number of at least 1",
        );
        check(
            self.relay.max_in_flight > 0,
            "relay.max_in_flight",
            self.relay.max_in_flight.to_string(),
            "a whole number of at least 1",
        );
        if let Some(urls) = &self.nats.monitoring_url {
            for u in urls.split(',').map(str::trim) {
                check(
                    url::Url::parse(u).is_ok_and(|p| matches!(p.scheme(), "http" | "https")),
                    "nats.monitoring_url",
                    crate::secret::redact(u),
                    "a nats-server monitoring URL (http://nats:8222), several separated by commas",
                );
            }
        }
        let mut bad = bad.into_inner();
        match bad.len() {
            0 => Ok(()),
            1 => Err(bad.remove(0)),
            _ => Err(ConfigError::Several(bad)),
        }
    }

    /// Values left at a placeholder default that would publish or install somewhere nobody
    /// meant (pure): each with what it means and what to set.
    pub fn placeholders(&self) -> Vec<String> {
        let d = Config::default();
        let mut out = Vec::new();
        if self.database.url == d.database.url {
            out.push(format!(
                "database.url is the default ({}): the schema and the outbox are there; set database.url (or DATABASE_URL) to the MES database",
                d.database.url
            ));
        }
        if self.events.site == d.events.site {
            out.push(format!(
                "events.site is the placeholder `{}`: events would be published with source {} on {}.{}.… subjects; set events.site (MES_EVENTS_EVENTS__SITE) to this site's code",
                d.events.site,
                self.source(),
                self.events.subject_prefix,
                self.events.site
            ));
        }
        out
    }

    /// CloudEvents `source` of every event this installation emits.
    pub fn source(&self) -> String {
        format!("/mes/{}/{}", self.events.installation, self.events.site)
    }

    /// What building events needs to know of this installation.
    pub fn profile(&self) -> crate::event::Profile {
        crate::event::Profile {
            source: self.source(),
            site: self.events.site.clone(),
            subject_prefix: self.events.subject_prefix.clone(),
            mode: self.events.mode,
        }
    }
}

/// An optional setting: an empty value (`MES_EVENTS_HTTP__ADDRESS=`) unsets it, as it does for
/// every other program that reads its settings from the environment.
fn unset_if_empty<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: From<String>,
{
    Ok(Option::<String>::deserialize(d)?
        .filter(|s| !s.trim().is_empty())
        .map(T::from))
}

/// An optional duration written `30s`, `7d`; empty unsets it.
fn duration_unset_if_empty<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    match Option::<String>::deserialize(d)?.filter(|s| !s.trim().is_empty()) {
        None => Ok(None),
        Some(s) => humantime::parse_duration(s.trim())
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("{s:?} is not a duration: {e}"))),
    }
}

/// A list, or one string of comma-separated items (as a list is written in an environment
/// variable: `MES_EVENTS_RELAY__STREAMS=MES_EVENTS,MES_PV`).
fn list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrList {
        One(String),
        List(Vec<String>),
    }
    Ok(match OneOrList::deserialize(d)? {
        OneOrList::One(s) => s
            .trim_matches(|c| c == '[' || c == ']')
            .split(',')
            .map(|x| x.trim().trim_matches('"').to_owned())
            .filter(|x| !x.is_empty())
            .collect(),
        OneOrList::List(l) => l,
    })
}

#[cfg(test)]
mod tests;
