//! Connecting to NATS and building the JetStream context the relay and the CLI use.
//!
//! Owns connection options (name, credentials and the inbox prefix that goes with them,
//! reconnect behaviour, timeouts) and what a connection's trouble is called: refused, timed out,
//! TLS, authorization, permission, each with the server's URL (redacted), the identity and what
//! to check, logged once per change of state rather than at every retry. Never publishes.

use std::sync::{Arc, Mutex};

use async_nats::jetstream::{self, context::Context};
use async_nats::{ClientError, ConnectErrorKind, Event, ServerError};
use tracing::{error, info, warn};

use crate::config::NatsConfig;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot read NATS credentials file {path}")]
    Credentials {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("nats.url: {url:?} is not a NATS server URL (nats://host:port, several separated by commas)")]
    Url {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(crate::tls::TlsError),
    #[error("nats.tls_cert and nats.tls_key go together: give both, or neither")]
    TlsPair,
    /// The message names the cause, the URL and the identity; the client's own error is kept
    /// in `client` but not as the error's source: a printed chain would only repeat the cause
    /// in its words, twice (`IO error: Connection refused (os error 111): Connection refused
    /// (os error 111)`).
    #[error("{}", .trouble.describe(.url, .identity))]
    Connect {
        url: String,
        identity: String,
        trouble: Trouble,
        client: async_nats::ConnectError,
    },
}

/// What went wrong between this process and a NATS server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trouble {
    /// Nothing listens there, or the connection was closed at once.
    Refused,
    /// No answer in time.
    TimedOut,
    /// The TLS handshake failed: why, where it is known.
    Tls(Option<crate::tls::Refusal>),
    /// The server refused the identity.
    Authorization,
    /// The identity's key could not sign the server's challenge.
    Authentication,
    /// The host name does not resolve.
    Dns,
    /// The server refused one operation of an accepted identity (what it said: the operation and
    /// the subject).
    Permission(String),
    /// Anything else, as the client said it.
    Other(String),
}

impl Trouble {
    /// The trouble a failed connection attempt shows.
    pub fn of_connect(e: &async_nats::ConnectError) -> Trouble {
        match e.kind() {
            ConnectErrorKind::Io => {
                let io = std::error::Error::source(e)
                    .and_then(|s| s.downcast_ref::<std::io::Error>())
                    .map(std::io::Error::kind);
                match io {
                    Some(std::io::ErrorKind::TimedOut) => Trouble::TimedOut,
                    // A TLS handshake that fails (rustls's errors) comes as invalid data.
                    Some(std::io::ErrorKind::InvalidData) => {
                        Trouble::Tls(crate::tls::Refusal::of(e))
                    }
                    _ => Trouble::Refused,
                }
            }
            ConnectErrorKind::TimedOut => Trouble::TimedOut,
            ConnectErrorKind::Tls => Trouble::Tls(crate::tls::Refusal::of(e)),
            ConnectErrorKind::AuthorizationViolation => Trouble::Authorization,
            ConnectErrorKind::Authentication => Trouble::Authentication,
            ConnectErrorKind::Dns => Trouble::Dns,
            other => Trouble::Other(other.to_string()),
        }
    }

    /// The trouble a connection event shows, if it is one. (A client that reconnects reports
    /// each failed attempt only by its kind's text.)
    pub fn of_event(e: &Event) -> Option<Trouble> {
        Some(match e {
            Event::ServerError(ServerError::AuthorizationViolation) => Trouble::Authorization,
            Event::ServerError(ServerError::Other(said))
                if said.to_ascii_lowercase().contains("permissions violation") =>
            {
                Trouble::Permission(said.trim().to_owned())
            }
            Event::ServerError(ServerError::Other(said))
                if said.to_ascii_lowercase().contains("authorization") =>
            {
                Trouble::Authorization
            }
            Event::ClientError(ClientError::Other(said)) => match said.as_str() {
                "IO error" => Trouble::Refused,
                "timed out" => Trouble::TimedOut,
                "TLS error" => Trouble::Tls(None),
                "authorization violation" => Trouble::Authorization,
                "failed signing nonce" => Trouble::Authentication,
                "DNS error" => Trouble::Dns,
                other => Trouble::Other(other.to_owned()),
            },
            _ => return None,
        })
    }

    /// What happened, where, for whom, and what to check.
    pub fn describe(&self, url: &str, identity: &str) -> String {
        match self {
            Trouble::Refused => format!(
                "NATS at {url} refused the connection of {identity} (or closed it at once): check nats.url and that nats-server runs there and listens on that port (a server whose tls {{}} has handshake_first closes a client that does not start with TLS: set nats.tls_first = true)"
            ),
            Trouble::TimedOut => format!(
                "NATS at {url} did not answer {identity} in time: check nats.url (a wrong port, or a host that drops packets), the firewall, that the server is not frozen, and, for a server whose tls {{}} has handshake_first, nats.tls_first = true"
            ),
            Trouble::Tls(Some(r)) => format!(
                "{} (connecting as {identity}; nats.tls_ca, nats.tls_cert, nats.tls_key)",
                r.describe(
                    &format!("NATS at {url}"),
                    "nats.tls_ca, or this host's store where it is unset",
                )
            ),
            Trouble::Tls(None) => format!(
                "TLS with NATS at {url} failed for {identity}: check that the server speaks TLS (tls:// and nats.tls_* need a server with a tls {{}} block; a server with tls_first needs nats.tls_first), the server's certificate and the CAs this host trusts (nats.tls_ca)"
            ),
            Trouble::Authorization => format!(
                "NATS at {url} refused {identity} (authorization violation): check nats.credentials / nats.nkey, and that the server runs with the accounts `mes-events provision credentials` wrote"
            ),
            Trouble::Authentication => format!(
                "could not sign NATS's challenge at {url} with {identity}: the seed is not a valid user nkey; write it again with `mes-events provision credentials`"
            ),
            Trouble::Dns => {
                format!("the host of {url} does not resolve (connecting as {identity}): check nats.url")
            }
            Trouble::Permission(said) => format!(
                "NATS at {url} denied {identity} an operation ({said}): check that identity's grants (the files under nats/, then `mes-events provision apply` and a server reload)"
            ),
            Trouble::Other(said) => format!("NATS at {url}, as {identity}: {said}"),
        }
    }
}

/// Who a connection authenticates as, fit to print: the credentials file, the nkey seed file
/// with its public key, the URL's user, or nobody. Never a secret.
pub fn identity(cfg: &NatsConfig) -> String {
    if let Some(p) = &cfg.credentials {
        return format!("the identity in {}", p.display());
    }
    if let Some(p) = &cfg.nkey {
        let public = std::fs::read_to_string(p)
            .ok()
            .and_then(|s| nkeys::KeyPair::from_seed(s.trim()).ok())
            .map(|k| k.public_key());
        return match public {
            Some(k) => format!("nkey {k} (from {})", p.display()),
            None => format!("the nkey in {}", p.display()),
        };
    }
    let first = cfg.url.split(',').next().unwrap_or_default();
    match (first.find("://"), first.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => match first[scheme + 3..at].split_once(':') {
            Some((user, _)) => format!("user {user}"),
            None => "a token".to_owned(),
        },
        _ => "no credentials".to_owned(),
    }
}

/// The last trouble any connection of this process told, as told.
static LAST_TROUBLE: Mutex<Option<String>> = Mutex::new(None);

/// A subject this process expects to be denied (a probe of its own rights): its permission
/// violation is not told.
static EXPECTED_DENIAL: Mutex<Option<String>> = Mutex::new(None);

/// What an identity may do on the bus beyond its job, as a probe finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rights {
    /// It may call the JetStream API at large (`$JS.API.INFO` answered): the admin's identity,
    /// or a server without authorization.
    ManagesJetStream,
    /// It may not: a least-privilege identity.
    Limited,
}

/// Whether this connection's identity may manage JetStream. It asks the server who it is
/// (`$SYS.REQ.USER.INFO`, which every identity `provision credentials` writes may ask: the
/// answer is its own permissions and nothing else), and reads whether those let it call
/// `$JS.API.INFO` (the account's JetStream usage), which no generated identity but the admin's
/// may. Where the server does not answer that (an older auth.conf, events off) it asks
/// `$JS.API.INFO` itself; that denial is expected and not told as trouble (nats-server logs it).
pub async fn rights(client: &async_nats::Client) -> Rights {
    const WHO: &str = "$SYS.REQ.USER.INFO";
    const PROBE: &str = "$JS.API.INFO";
    let ask = |subject: &'static str| async move {
        *EXPECTED_DENIAL.lock().unwrap_or_else(|p| p.into_inner()) = Some(subject.to_owned());
        let asked = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            client.request(subject, "".into()),
        )
        .await;
        match asked {
            Ok(Ok(m))
                if m.status
                    .is_none_or(|s| s != async_nats::StatusCode::NO_RESPONDERS) =>
            {
                Some(m)
            }
            _ => None,
        }
    };
    if let Some(rights) = ask(WHO).await.and_then(|m| rights_in(&m.payload)) {
        return rights;
    }
    match ask(PROBE).await {
        // An answer that is an error of JetStream's (not enabled) is an answer all the same.
        Some(_) => Rights::ManagesJetStream,
        None => Rights::Limited,
    }
}

/// The rights a `$SYS.REQ.USER.INFO` answer gives (pure): `None` when it is not one.
pub fn rights_in(answer: &[u8]) -> Option<Rights> {
    #[derive(serde::Deserialize)]
    struct Answer {
        data: Option<Info>,
    }
    #[derive(serde::Deserialize)]
    struct Info {
        // Absent or null: no permissions, every right (the admin's, or no authorization).
        permissions: Option<Permissions>,
    }
    #[derive(serde::Deserialize)]
    struct Permissions {
        publish: Option<Lists>,
    }
    #[derive(serde::Deserialize, Default)]
    struct Lists {
        #[serde(default)]
        allow: Vec<String>,
        #[serde(default)]
        deny: Vec<String>,
    }
    const PROBE: &str = "$JS.API.INFO";
    let info = serde_json::from_slice::<Answer>(answer).ok()?.data?;
    let Some(publish) = info.permissions.and_then(|p| p.publish) else {
        return Some(Rights::ManagesJetStream);
    };
    let allowed = publish.allow.is_empty()
        || publish
            .allow
            .iter()
            .any(|f| crate::event::subject::matches(f, PROBE));
    let denied = publish
        .deny
        .iter()
        .any(|f| crate::event::subject::matches(f, PROBE));
    Some(if allowed && !denied {
        Rights::ManagesJetStream
    } else {
        Rights::Limited
    })
}

/// The last trouble a connection of this process told (an answer that timed out may have been
/// refused for lack of a permission: the server says so only on the connection).
pub fn last_trouble() -> Option<String> {
    LAST_TROUBLE
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

/// Tells a connection's trouble once per change of state (not at every reconnect attempt), and
/// counts reconnections.
struct Watcher {
    name: String,
    url: String,
    identity: String,
    /// The trouble last told, or `None` while all is well.
    told: Mutex<Option<Trouble>>,
    /// Connected at least once (a later connection is a reconnection).
    connected_once: std::sync::atomic::AtomicBool,
}

impl Watcher {
    fn on(&self, event: Event) {
        use std::sync::atomic::Ordering;
        let mut told = self.told.lock().unwrap_or_else(|p| p.into_inner());
        let (name, url, identity) = (&self.name, &self.url, &self.identity);
        match event {
            Event::Connected => {
                if self.connected_once.swap(true, Ordering::Relaxed) {
                    crate::metrics::get().nats_reconnects.inc();
                }
                if told.take().is_some() {
                    info!(connection = %name, %url, %identity, "connected to NATS again");
                }
            }
            Event::Disconnected => {
                if told.is_none() {
                    warn!(connection = %name, %url, "lost the NATS connection; reconnecting");
                    *told = Some(Trouble::Other("disconnected".into()));
                }
            }
            Event::LameDuckMode => {
                warn!(connection = %name, %url, "the NATS server is shutting down (lame duck mode); the client moves to another")
            }
            Event::SlowConsumer(sid) => {
                warn!(connection = %name, %url, sid, "slow consumer: the server dropped messages for this client")
            }
            other => {
                if let Some(Trouble::Permission(said)) = Trouble::of_event(&other) {
                    let expected = EXPECTED_DENIAL.lock().unwrap_or_else(|p| p.into_inner());
                    if expected.as_ref().is_some_and(|s| said.contains(s.as_str())) {
                        tracing::debug!(connection = %name, %said, "denied, as expected of a least-privilege identity");
                        return;
                    }
                }
                if let Some(t) = Trouble::of_event(&other) {
                    // A permission violation is told each time it names something new.
                    if told.as_ref() != Some(&t) {
                        let said = t.describe(url, identity);
                        error!(connection = %name, %identity, "{said}");
                        *LAST_TROUBLE.lock().unwrap_or_else(|p| p.into_inner()) = Some(said);
                        *told = Some(t);
                    }
                }
            }
        }
    }
}

/// Connects. With `wait_for_server` the client retries in the background until the server is
/// up (the relay must start, and stand by, while NATS is down); otherwise the first failure is
/// returned (one-shot commands).
pub async fn connect(
    cfg: &NatsConfig,
    name: &str,
    wait_for_server: bool,
) -> Result<async_nats::Client, ConnectError> {
    let url = redact(&cfg.url);
    let identity = identity(cfg);
    let watcher = Arc::new(Watcher {
        name: name.to_owned(),
        url: url.clone(),
        identity: identity.clone(),
        told: Mutex::new(None),
        connected_once: Default::default(),
    });
    let mut opts = async_nats::ConnectOptions::new()
        .event_callback(move |event| {
            let w = watcher.clone();
            async move { w.on(event) }
        })
        .name(name)
        .custom_inbox_prefix(cfg.inbox_prefix())
        .request_timeout(Some(cfg.request_timeout));
    if let Some(path) = &cfg.credentials {
        opts = opts
            .credentials_file(path)
            .await
            .map_err(|source| ConnectError::Credentials {
                path: path.clone(),
                source,
            })?;
    }
    if let Some(path) = &cfg.nkey {
        let seed = std::fs::read_to_string(path).map_err(|source| ConnectError::Credentials {
            path: path.clone(),
            source,
        })?;
        opts = opts.nkey(seed.trim().to_owned());
    }
    // TLS: the plant's CA, this client's certificate (mutual TLS), TLS before the server's
    // INFO where the server asks for it. The key is checked as every key is, before use.
    if let Some(ca) = &cfg.tls_ca {
        crate::tls::read_certs("nats.tls_ca", ca).map_err(ConnectError::Tls)?;
        opts = opts.add_root_certificates(ca.clone());
    }
    match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(cert), Some(key)) => {
            crate::tls::read_certs("nats.tls_cert", cert).map_err(ConnectError::Tls)?;
            crate::tls::read_key("nats.tls_key", key).map_err(ConnectError::Tls)?;
            opts = opts.add_client_certificate(cert.clone(), key.clone());
        }
        (None, None) => {}
        _ => return Err(ConnectError::TlsPair),
    }
    if cfg.tls_ca.is_some() || cfg.tls_cert.is_some() || cfg.tls_first {
        opts = opts.require_tls(true);
    }
    if cfg.tls_first {
        opts = opts.tls_first();
    }
    if wait_for_server {
        opts = opts.retry_on_initial_connect();
    }
    let servers = servers(&cfg.url)?;
    // Credentials in the URL (`nats://user:password@host`, `nats://token@host`), as the other
    // NATS clients take them: the Rust client does not read them from a server address.
    if cfg.nkey.is_none() && cfg.credentials.is_none() {
        let decoded = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        if let Some(first) = servers.first() {
            match (first.username(), first.password()) {
                (Some(user), Some(pass)) => {
                    opts = opts.user_and_password(decoded(user), decoded(pass));
                }
                (Some(token), None) => opts = opts.token(decoded(token)),
                _ => {}
            }
        }
    }
    opts.connect(servers)
        .await
        .map_err(|client| ConnectError::Connect {
            url,
            identity,
            trouble: Trouble::of_connect(&client),
            client,
        })
}

/// A server URL list fit to print: see [`crate::secret::redact`].
pub fn redact(urls: &str) -> String {
    crate::secret::redact(urls)
}

/// A JetStream context whose in-flight PubAcks are capped at `max_in_flight` (with back-pressure)
/// and time out after the configured request timeout.
pub fn jetstream(client: async_nats::Client, cfg: &NatsConfig, max_in_flight: usize) -> Context {
    jetstream::context::ContextBuilder::new()
        .timeout(cfg.request_timeout)
        .max_ack_inflight(max_in_flight)
        .backpressure_on_inflight(true)
        .build(client)
}

/// The servers of a URL list, `nats://a:4222,nats://b:4222` as the official clients take it.
/// The client also learns the cluster's other nodes from the one it reaches.
pub fn servers(urls: &str) -> Result<Vec<async_nats::ServerAddr>, ConnectError> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.parse().map_err(|source| ConnectError::Url {
                url: redact(u),
                source,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn who_may_manage_jetstream_is_read_from_the_servers_answer() {
        use super::{rights_in, Rights};
        let answer = |perms: &str| {
            format!(
                r#"{{"server":{{"name":"n"}},"data":{{"user":"U","account":"MES","permissions":{perms}}}}}"#
            )
        };
        for (perms, rights) in [
            ("null", Rights::ManagesJetStream),
            (
                r#"{"publish":{"allow":[">"]},"subscribe":{"allow":[">"]}}"#,
                Rights::ManagesJetStream,
            ),
            (
                r#"{"publish":{"allow":["$JS.API.>"]}}"#,
                Rights::ManagesJetStream,
            ),
            (
                r#"{"subscribe":{"allow":["_INBOX_relay.>"]}}"#,
                Rights::ManagesJetStream,
            ),
            (
                r#"{"publish":{"allow":[">"],"deny":["$JS.API.*"]}}"#,
                Rights::Limited,
            ),
            (
                r#"{"publish":{"allow":["mes.>","$JS.API.STREAM.INFO.MES_EVENTS","$SYS.REQ.USER.INFO"]}}"#,
                Rights::Limited,
            ),
        ] {
            assert_eq!(rights_in(answer(perms).as_bytes()), Some(rights), "{perms}");
        }
        assert_eq!(rights_in(br#"{"error":{"code":400}}"#), None);
        assert_eq!(rights_in(b"not json"), None);
    }

    #[test]
    fn a_comma_separated_list_is_several_servers() {
        let s = super::servers("nats://n1:4222, nats://n2:4222,nats://n3:4222").unwrap();
        assert_eq!(s.len(), 3);
        assert!(super::servers("nats://n1:notaport").is_err());
    }

    #[test]
    fn each_trouble_names_the_url_and_what_to_check() {
        use super::Trouble;
        let url = "nats://relay:***@n1:4222";
        for (t, says) in [
            (Trouble::Refused, "refused the connection of user relay"),
            (Trouble::TimedOut, "did not answer user relay in time"),
            (Trouble::Tls(None), "failed for user relay"),
            (Trouble::Authorization, "refused user relay"),
            (
                Trouble::Permission("Permissions Violation for Publish to \"x\"".into()),
                "denied user relay",
            ),
        ] {
            let m = t.describe(url, "user relay");
            assert!(m.contains(says) && m.contains(url), "{m}");
        }
        let text = |s: &str| {
            Trouble::of_event(&async_nats::Event::ClientError(
                async_nats::ClientError::Other(s.into()),
            ))
        };
        assert_eq!(text("IO error"), Some(Trouble::Refused));
        assert_eq!(text("TLS error"), Some(Trouble::Tls(None)));
        assert_eq!(
            text("authorization violation"),
            Some(Trouble::Authorization)
        );
    }

    #[test]
    fn the_identity_is_named_without_its_secret() {
        let mut cfg = crate::config::Config::default().nats;
        cfg.url = "nats://relay:s3cret@n1:4222".into();
        assert_eq!(super::identity(&cfg), "user relay");
        cfg.url = "nats://t0ken@n1:4222".into();
        assert_eq!(super::identity(&cfg), "a token");
        cfg.url = "nats://n1:4222".into();
        assert_eq!(super::identity(&cfg), "no credentials");
    }

    #[test]
    fn passwords_never_reach_a_message() {
        assert_eq!(
            super::redact("nats://relay:s3cret@n1:4222, nats://n2:4222,tls://a:b:c@n3"),
            "nats://relay:***@n1:4222, nats://n2:4222,tls://a:***@n3"
        );
        assert_eq!(super::redact("nats://t0ken@n1"), "nats://***@n1");
        assert_eq!(super::redact("nats://n1:4222"), "nats://n1:4222");
        let e = super::servers("nats://relay:s3cret@n1:notaport").unwrap_err();
        assert!(!format!("{e} {e:?}").contains("s3cret"), "{e:?}");
    }
}
