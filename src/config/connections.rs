//! Where the servers are and how this process reaches them: the MES database (its connection
//! string, with libpq's TLS keys joined into it) and NATS (servers, identity, inbox, TLS).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::unset_if_empty;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// libpq-style URL or key=value string of the MES database holding the `mes_events` schema.
    /// The relay keeps one session per process (advisory lock, LISTEN and queries), so it must be
    /// a direct or session-pooled connection, not PgBouncer transaction pooling.
    pub url: String,
    /// libpq's `sslmode` (`disable`, `prefer`, `require`, `verify-ca`, `verify-full`), as the
    /// URL's own `sslmode=` would set it (set it in one place). Unset: the URL's, else
    /// `PGSSLMODE`, else `prefer`.
    #[serde(
        default,
        deserialize_with = "unset_if_empty",
        skip_serializing_if = "Option::is_none"
    )]
    pub sslmode: Option<String>,
    /// The CA certificate(s) (PEM) the server's certificate must chain to, or `system` for this
    /// host's store. Unset: the URL's, else `PGSSLROOTCERT`, else `~/.postgresql/root.crt`.
    #[serde(
        default,
        deserialize_with = "unset_if_empty",
        skip_serializing_if = "Option::is_none"
    )]
    pub sslrootcert: Option<String>,
    /// This client's certificate (PEM), for servers that ask for one (`clientcert=verify-full`,
    /// `cert` authentication). Unset: the URL's, else `PGSSLCERT`, else
    /// `~/.postgresql/postgresql.crt` where it exists.
    #[serde(
        default,
        deserialize_with = "unset_if_empty",
        skip_serializing_if = "Option::is_none"
    )]
    pub sslcert: Option<String>,
    /// Its private key (PEM, readable by its owner only). Unset: the URL's, else `PGSSLKEY`,
    /// else `~/.postgresql/postgresql.key`.
    #[serde(
        default,
        deserialize_with = "unset_if_empty",
        skip_serializing_if = "Option::is_none"
    )]
    pub sslkey: Option<String>,
}

impl DatabaseConfig {
    /// The connection string with the `ssl*` keys of this table in it, as libpq would read
    /// them from the string itself. A key set both here and in the URL, differently, is refused.
    pub fn connection_string(&self) -> Result<String, crate::tls::libpq::SettingError> {
        use crate::tls::libpq::{split, Given};
        let (_, in_url) = split(&self.url)?;
        let here = Given {
            sslmode: self.sslmode.clone(),
            sslrootcert: self.sslrootcert.clone(),
            sslcert: self.sslcert.clone(),
            sslkey: self.sslkey.clone(),
        };
        in_url.clone().with(&here)?;
        let mut url = self.url.clone();
        for ((key, value), (_, already)) in here.pairs().into_iter().zip(in_url.pairs()) {
            if let (Some(v), None) = (value, already) {
                url = crate::tls::libpq::append(&url, key, v);
            }
        }
        Ok(url)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// NATS server URL(s), comma-separated.
    pub url: String,
    /// Optional `.creds` file (JWT + NKey seed) for the relay's identity.
    #[serde(
        default,
        deserialize_with = "unset_if_empty",
        skip_serializing_if = "Option::is_none"
    )]
    pub credentials: Option<PathBuf>,
    /// Optional NKey seed file (`mes-events provision credentials` writes `relay.nk`, `admin.nk`).
    #[serde(
        default,
        deserialize_with = "unset_if_empty",
        skip_serializing_if = "Option::is_none"
    )]
    pub nkey: Option<PathBuf>,
    /// Subject prefix of this client's reply inboxes. Unset: `_INBOX_<identity>` when `nkey` is
    /// a seed file named after its identity, as `mes-events provision credentials` writes them
    /// (`relay.nk` → `_INBOX_relay`, `admin.nk` → `_INBOX_admin`), else NATS's `_INBOX`. The
    /// generated permissions let each identity receive replies only under its own prefix.
    #[serde(
        default,
        deserialize_with = "unset_if_empty",
        skip_serializing_if = "Option::is_none"
    )]
    pub inbox_prefix: Option<String>,
    /// How long to wait for a JetStream API answer or a PubAck before treating it as lost.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// The servers' monitoring endpoints (`http://nats:8222`, several separated by commas),
    /// from whose `/varz` the relay reads how often they sync JetStream to disk, and so how long
    /// it must keep published events (see `relay.durability_horizon`). Unset: nats-server's
    /// default interval is assumed.
    #[serde(
        default,
        deserialize_with = "unset_if_empty",
        skip_serializing_if = "Option::is_none"
    )]
    pub monitoring_url: Option<String>,
    /// TLS: the CA certificate(s) (PEM) the servers' certificates must chain to (the plant's
    /// own CA), instead of this host's store. Set, TLS is required.
    #[serde(
        default,
        deserialize_with = "unset_if_empty",
        skip_serializing_if = "Option::is_none"
    )]
    pub tls_ca: Option<PathBuf>,
    /// TLS: this client's certificate (PEM), for servers that verify clients (`tls { verify:
    /// true }`), with `tls_key`.
    #[serde(
        default,
        deserialize_with = "unset_if_empty",
        skip_serializing_if = "Option::is_none"
    )]
    pub tls_cert: Option<PathBuf>,
    /// Its private key (PEM, readable by its owner only).
    #[serde(
        default,
        deserialize_with = "unset_if_empty",
        skip_serializing_if = "Option::is_none"
    )]
    pub tls_key: Option<PathBuf>,
    /// TLS before the server's INFO, for servers with `tls { handshake_first: true }`.
    #[serde(default)]
    pub tls_first: bool,
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
