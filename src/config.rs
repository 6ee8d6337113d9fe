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
//! It stays one file of about 510 lines: the keys, their defaults, their validation and the way
//! errors name them are one contract with the README's Configuration section; a quarter of the
//! file is tests of that contract.

use std::path::{Path, PathBuf};

use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

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
pub struct DatabaseConfig {
    /// libpq-style URL or key=value string of the MES database holding the `mes_events` schema.
    /// The relay keeps one session per process (advisory lock, LISTEN and queries), so it must be
    /// a direct or session-pooled connection, not PgBouncer transaction pooling.
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// NATS server URL(s), comma-separated.
    pub url: String,
    /// Optional `.creds` file (JWT + NKey seed) for the relay's identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<PathBuf>,
    /// Optional NKey seed file (`mes-events provision credentials` writes `relay.nk`, `admin.nk`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nkey: Option<PathBuf>,
    /// Subject prefix of this client's reply inboxes. Unset: `_INBOX_<identity>` when `nkey` is
    /// a seed file named after its identity, as `mes-events provision credentials` writes them
    /// (`relay.nk` → `_INBOX_relay`, `admin.nk` → `_INBOX_admin`), else NATS's `_INBOX`. The
    /// generated permissions let each identity receive replies only under its own prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbox_prefix: Option<String>,
    /// How long to wait for a JetStream API answer or a PubAck before treating it as lost.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
}

impl Default for Config {
    fn default() -> Self {
        Config {
            database: DatabaseConfig {
                url: "postgresql://postgres@127.0.0.1:5432/postgres".into(),
            },
            nats: NatsConfig {
                url: "nats://127.0.0.1:4222".into(),
                credentials: None,
                nkey: None,
                inbox_prefix: None,
                request_timeout: Duration::from_secs(5),
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
        }
    }
}

/// Why the configuration could not be used. Each variant's message names the key and source.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path} does not exist (given with --config); create it or drop the flag")]
    MissingFile { path: PathBuf },
    #[error("invalid configuration:{}", describe(.0))]
    Invalid(#[from] Box<figment::Error>),
    #[error("invalid configuration: key `{key}` = {value:?}: {expected}")]
    Value {
        key: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Several(Vec<ConfigError>),
}

impl NatsConfig {
    /// The inbox prefix this client uses: see [`NatsConfig::inbox_prefix`].
    pub fn inbox_prefix(&self) -> String {
        if let Some(p) = &self.inbox_prefix {
            return p.clone();
        }
        let identity = self
            .nkey
            .as_deref()
            .filter(|p| p.extension().is_some_and(|x| x == "nk"))
            .and_then(|p| p.file_stem())
            .and_then(|s| s.to_str())
            .filter(|s| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        match identity {
            Some(name) => format!("_INBOX_{name}"),
            None => "_INBOX".into(),
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
        let config: Config = figment.extract().map_err(Box::new)?;
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
        check(
            self.database
                .url
                .parse::<tokio_postgres::Config>()
                .is_ok(),
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
            humantime::format_duration(self.relay.lease_timeout).to_string(),
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

/// The known key nearest to an unknown one, if it is near enough to be a typo.
fn did_you_mean<'a>(unknown: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(unknown, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// A deserializer's words for what it expected, in a user's words (no Rust type names).
fn in_user_words(said: &str) -> String {
    let mut s = said.to_owned();
    for (rust, user) in [
        ("expected usize", "expected a whole number (0 or more)"),
        ("expected u64", "expected a whole number (0 or more)"),
        ("expected u32", "expected a whole number (0 or more)"),
        ("expected u16", "expected a whole number (0 or more)"),
        ("expected i64", "expected a whole number"),
        ("expected i32", "expected a whole number"),
        ("expected f64", "expected a number"),
        (
            "expected a sequence",
            "expected a list (TOML: [\"A\", \"B\"]; environment: A,B)",
        ),
        ("expected a boolean", "expected true or false"),
    ] {
        s = s.replace(rust, user);
    }
    s.replace("expected one of `", "expected one of: `")
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

/// One line per problem: the key path, where the value came from, what is wrong, what is accepted.
fn describe(errors: &figment::Error) -> String {
    let mut out = String::new();
    for e in errors.clone() {
        let key = e.path.join(".").to_lowercase();
        let origin = match (&e.metadata, e.path.is_empty()) {
            (Some(m), false) if m.name.contains(ENV_PREFIX) => format!(
                "environment variable {ENV_PREFIX}{}",
                e.path.join("__").to_uppercase()
            ),
            (Some(m), false) if m.name.contains("environment") => match key.as_str() {
                "database.url" => "environment variable DATABASE_URL".to_owned(),
                "nats.url" => "environment variable NATS_URL".to_owned(),
                _ => m.name.to_string(),
            },
            (Some(m), _) => match &m.source {
                Some(figment::Source::File(f)) => format!("file {}", f.display()),
                Some(other) => other.to_string(),
                None => m.name.to_string(),
            },
            (None, _) => "defaults".to_owned(),
        };
        let mut what = in_user_words(&e.kind.to_string());
        if what.contains("expected a duration") {
            what.push_str(" (write it like 250ms, 30s, 5m, 7d)");
        }
        if let figment::error::Kind::UnknownField(field, expected) = &e.kind {
            what = format!(
                "unknown key{}; expected one of: {}",
                did_you_mean(field, expected)
                    .map(|k| format!(" (did you mean `{k}`?)"))
                    .unwrap_or_default(),
                expected.join(", ")
            );
            if origin.starts_with("environment variable") && field.contains('_') {
                what.push_str(&format!(
                    ". In the environment, levels join with a double underscore: {ENV_PREFIX}RELAY__BATCH_SIZE is relay.batch_size"
                ));
            }
        }
        if key.is_empty() {
            out.push_str(&format!("\n  in {origin}: {what}"));
        } else if let figment::error::Kind::UnknownField(field, _) = &e.kind {
            // The path may already end with the unknown field: name it once.
            let full = if e.path.last().is_some_and(|l| l.eq_ignore_ascii_case(field)) {
                key.clone()
            } else {
                format!("{key}.{field}")
            };
            out.push_str(&format!("\n  key `{full}` in {origin}: {what}"));
        } else {
            out.push_str(&format!("\n  key `{key}` in {origin}: {what}"));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    fn inbox_prefix_follows_the_identity_of_the_seed() {
        let mut n = Config::default().nats;
        assert_eq!(n.inbox_prefix(), "_INBOX");
        n.nkey = Some("/creds/relay.nk".into());
        assert_eq!(n.inbox_prefix(), "_INBOX_relay");
        n.nkey = Some("/creds/scada-dashboard.nk".into());
        assert_eq!(n.inbox_prefix(), "_INBOX_scada-dashboard");
        n.nkey = Some("/creds/seed.txt".into());
        assert_eq!(n.inbox_prefix(), "_INBOX");
        n.inbox_prefix = Some("_INBOX_ops".into());
        assert_eq!(n.inbox_prefix(), "_INBOX_ops");
        let mut c = Config::default();
        c.nats.inbox_prefix = Some("_INBOX.>".into());
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("nats.inbox_prefix"));
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn precedence_file_then_url_vars_then_prefixed_env() {
        Jail::expect_with(|jail| {
            jail.create_file(
                DEFAULT_FILE,
                r#"
                [database]
                url = "postgresql://file/db"
                [relay]
                batch_size = 10
                poll_interval = "250ms"
                "#,
            )?;
            let c = Config::load(None).unwrap();
            assert_eq!(c.database.url, "postgresql://file/db");
            assert_eq!(c.relay.batch_size, 10);
            assert_eq!(c.relay.poll_interval, Duration::from_millis(250));

            jail.set_env("DATABASE_URL", "postgresql://env/db");
            jail.set_env("NATS_URL", "nats://env:4222");
            let c = Config::load(None).unwrap();
            assert_eq!(c.database.url, "postgresql://env/db");
            assert_eq!(c.nats.url, "nats://env:4222");

            jail.set_env("MES_EVENTS_DATABASE__URL", "postgresql://prefixed/db");
            jail.set_env("MES_EVENTS_RELAY__BATCH_SIZE", "7");
            let c = Config::load(None).unwrap();
            assert_eq!(c.database.url, "postgresql://prefixed/db");
            assert_eq!(c.relay.batch_size, 7);
            Ok(())
        });
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        Jail::expect_with(|jail| {
            jail.create_file("x.toml", "[relay]\nbatch_sise = 3\n")?;
            let err = Config::load(Some(Path::new("x.toml"))).unwrap_err();
            let ConfigError::Invalid(e) = &err else {
                panic!("{err:?}")
            };
            assert!(
                matches!(e.kind, figment::error::Kind::UnknownField(ref f, _) if f == "batch_sise")
            );
            let text = err.to_string();
            assert!(
                text.contains("batch_sise") && text.contains("x.toml"),
                "{text}"
            );
            Ok(())
        });
    }

    #[test]
    fn bad_duration_names_key_and_env_var() {
        Jail::expect_with(|jail| {
            jail.set_env("MES_EVENTS_RELAY__POLL_INTERVAL", "soon");
            let err = Config::load(None).unwrap_err();
            let text = err.to_string();
            assert!(text.contains("poll_interval"), "{text}");
            assert!(text.contains("MES_EVENTS_RELAY__POLL_INTERVAL"), "{text}");
            Ok(())
        });
    }

    #[test]
    fn bad_value_names_key_and_accepted_values() {
        Jail::expect_with(|jail| {
            jail.set_env("MES_EVENTS_EVENTS__SITE", "Basel Site");
            let err = Config::load(None).unwrap_err();
            assert!(
                matches!(
                    err,
                    ConfigError::Value {
                        key: "events.site",
                        ..
                    }
                ),
                "{err:?}"
            );
            Ok(())
        });
    }

    #[test]
    fn bad_enum_value_lists_the_accepted_ones() {
        Jail::expect_with(|jail| {
            jail.set_env("MES_EVENTS_RELAY__ON_INVALID", "ignore");
            let text = Config::load(None).unwrap_err().to_string();
            assert!(
                text.contains("relay.on_invalid")
                    && text.contains("reject")
                    && text.contains("stop"),
                "{text}"
            );
            Ok(())
        });
    }

    #[test]
    fn a_key_is_named_once_with_a_suggestion_and_the_double_underscore_rule() {
        Jail::expect_with(|jail| {
            jail.create_file("x.toml", "[relay]\nbatch_sise = 3\n")?;
            let text = Config::load(Some(Path::new("x.toml")))
                .unwrap_err()
                .to_string();
            assert!(text.contains("key `relay.batch_sise`"), "{text}");
            assert!(!text.contains("batch_sise.batch_sise"), "{text}");
            assert!(text.contains("did you mean `batch_size`?"), "{text}");
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.set_env("MES_EVENTS_DATABASE_URL", "postgresql://x@h/db");
            let text = Config::load(None).unwrap_err().to_string();
            assert!(text.contains("key `database_url`"), "{text}");
            assert!(!text.contains("database_url.database_url"), "{text}");
            assert!(text.contains("double underscore"), "{text}");
            Ok(())
        });
    }

    #[test]
    fn accepted_values_are_in_user_words() {
        Jail::expect_with(|jail| {
            jail.set_env("MES_EVENTS_RELAY__BATCH_SIZE", "many");
            let text = Config::load(None).unwrap_err().to_string();
            assert!(
                text.contains("relay.batch_size") && text.contains("a whole number"),
                "{text}"
            );
            assert!(!text.contains("usize"), "{text}");
            Ok(())
        });
    }

    #[test]
    fn a_list_from_the_environment_is_comma_separated() {
        Jail::expect_with(|jail| {
            jail.set_env("MES_EVENTS_RELAY__STREAMS", "MES_EVENTS, MES_PV");
            assert_eq!(
                Config::load(None).unwrap().relay.streams,
                ["MES_EVENTS", "MES_PV"]
            );
            jail.set_env("MES_EVENTS_RELAY__STREAMS", "[MES_EVENTS,MES_PV]");
            assert_eq!(
                Config::load(None).unwrap().relay.streams,
                ["MES_EVENTS", "MES_PV"]
            );
            Ok(())
        });
    }

    #[test]
    fn every_bad_value_is_told_at_once() {
        Jail::expect_with(|jail| {
            jail.set_env("MES_EVENTS_EVENTS__SITE", "Basel Site");
            jail.set_env("MES_EVENTS_RELAY__BATCH_SIZE", "0");
            jail.set_env("DATABASE_URL", "not a url");
            let text = Config::load(None).unwrap_err().to_string();
            for key in ["events.site", "relay.batch_size", "database.url"] {
                assert_eq!(
                    text.matches(&format!("`{key}`")).count(),
                    1,
                    "{key} once in {text}"
                );
            }
            Ok(())
        });
    }

    #[test]
    fn explicit_missing_file_is_an_error() {
        let err = Config::load(Some(Path::new("/nonexistent/mes.toml"))).unwrap_err();
        assert!(matches!(err, ConfigError::MissingFile { .. }));
    }
}
