//! PostgreSQL sessions: connecting, and driving a connection so its notifications are seen.
//!
//! The relay needs LISTEN, so its connection is driven by `poll_message` in a task this module
//! owns (spawning the bare connection future would drop notifications). Owns the session-level
//! settings (LISTEN, commit without flush) and nothing of the `mes_events` schema. Every
//! session is encrypted as its connection string's libpq TLS keys say ([`crate::tls::libpq`]).

use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client};
use tokio_util::sync::CancellationToken;

/// A connected session and the signals its driver task raises.
pub struct Session {
    pub client: Client,
    /// Woken (with a stored permit, so none is missed) by every NOTIFY on a channel this session
    /// listens on.
    pub wake: Arc<Notify>,
    /// Cancelled when the connection has ended, for whatever reason. Session-scoped state such as
    /// advisory locks and LISTEN is gone from then on.
    pub closed: CancellationToken,
    driver: JoinHandle<()>,
}

impl Session {
    /// LISTENs on `channel`: every NOTIFY there wakes [`Session::wake`].
    pub async fn listen(&self, channel: &str) -> Result<(), tokio_postgres::Error> {
        self.client
            .batch_execute(&format!("listen {channel}"))
            .await
    }

    /// Has the server end this session after `timeout` of silence from its client, whatever
    /// the client's host does: idle (`idle_session_timeout`, PostgreSQL 14+) or idle in a
    /// transaction, unacknowledged data (`tcp_user_timeout`), or a peer gone (server-side TCP
    /// keepalives). A frozen process, whose kernel still answers keepalives, and a half-open
    /// network path both end within `timeout`, and with them what the session holds (advisory
    /// locks). False when the server has no `idle_session_timeout` (then only a dead peer ends
    /// the session).
    pub async fn expire_when_silent(
        &self,
        timeout: Duration,
    ) -> Result<bool, tokio_postgres::Error> {
        let ms = timeout.as_millis().max(1);
        let secs = timeout.as_secs().div_ceil(2).max(1);
        self.client
            .batch_execute(&format!(
                "set idle_in_transaction_session_timeout = {ms};
                 set tcp_user_timeout = {ms};
                 set tcp_keepalives_idle = {secs};
                 set tcp_keepalives_interval = 1;
                 set tcp_keepalives_count = 3"
            ))
            .await?;
        match self
            .client
            .batch_execute(&format!("set idle_session_timeout = {ms}"))
            .await
        {
            Ok(()) => Ok(true),
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_OBJECT) => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Lets this session's commits return before their WAL is flushed: for statements whose
    /// loss in a PostgreSQL crash is repaired anyway (the relay's marks, which reconciliation
    /// makes again from the stream).
    pub async fn commit_without_flush(&self) -> Result<(), tokio_postgres::Error> {
        self.client
            .batch_execute("set synchronous_commit = off")
            .await
    }
}

/// Polls a statement's future once, so that tokio-postgres sends it now (it sends on the first
/// poll); the answer waits in the connection until the future is awaited. This is how one
/// session has a statement in flight while the caller does other work.
pub fn send_now<'a, T: Send + 'a>(
    mut fut: futures::future::BoxFuture<'a, T>,
) -> futures::future::BoxFuture<'a, T> {
    use futures::FutureExt;
    let mut cx = std::task::Context::from_waker(futures::task::noop_waker_ref());
    match fut.poll_unpin(&mut cx) {
        std::task::Poll::Ready(done) => futures::future::ready(done).boxed(),
        std::task::Poll::Pending => fut,
    }
}

/// A key/value connection string for `cfg` (host, port, database, user, password), e.g. to hand
/// a database that was just created to another component.
pub fn to_url(cfg: &tokio_postgres::Config) -> String {
    let mut s = without_password(cfg);
    if let Some(pw) = cfg.get_password() {
        s.push_str(&format!(
            " password='{}'",
            String::from_utf8_lossy(pw).replace('\'', "\\'")
        ));
    }
    s
}

/// The connection string `url` with another database, its TLS keys kept (e.g. to hand a
/// database that was just created to another component).
pub fn with_database(url: &str, dbname: &str) -> Result<String, ConnectError> {
    let (rest, given) = crate::tls::libpq::split(url)?;
    let mut cfg: tokio_postgres::Config = rest.parse().map_err(ConnectError::Url)?;
    cfg.dbname(dbname);
    let mut s = to_url(&cfg);
    for (key, value) in given.pairs() {
        if let Some(v) = value {
            s = crate::tls::libpq::append(&s, key, v);
        }
    }
    Ok(s)
}

/// The database `url` names, fit to print (host, port, database, user, its TLS mode where one
/// is given; never the password).
pub fn redacted(url: &str) -> String {
    let Ok((rest, given)) = crate::tls::libpq::split(url) else {
        return "(not a PostgreSQL URL)".into();
    };
    match rest.parse::<tokio_postgres::Config>() {
        Ok(cfg) => match given.sslmode {
            Some(m) => format!("{} sslmode={m}", without_password(&cfg)),
            None => without_password(&cfg),
        },
        Err(_) => "(not a PostgreSQL URL)".into(),
    }
}

/// How a session to `url` is protected, in a line for start-up logs, and whether that deserves
/// a warning (a server on another host whose certificate is not checked, or no TLS to it).
pub fn protection(url: &str) -> (String, bool) {
    match parse(url, "") {
        Ok((cfg, tls)) => {
            let local = cfg.get_hosts().iter().all(|h| match h {
                tokio_postgres::config::Host::Tcp(h) => {
                    h == "localhost" || h.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_loopback())
                }
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(_) => true,
            });
            (tls.summary(), !local && !tls.verified())
        }
        Err(e) => (e.to_string(), true),
    }
}

/// The server a configuration names, as `host:port` (the first, where there are several).
fn peer(cfg: &tokio_postgres::Config) -> String {
    let host = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    format!(
        "{host}:{}",
        cfg.get_ports().first().copied().unwrap_or(5432)
    )
}

fn without_password(cfg: &tokio_postgres::Config) -> String {
    let host = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "127.0.0.1".into(),
    };
    format!(
        "host={host} port={} dbname={} user={}",
        cfg.get_ports().first().copied().unwrap_or(5432),
        cfg.get_dbname().unwrap_or("postgres"),
        cfg.get_user().unwrap_or("postgres")
    )
}

impl Drop for Session {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// A connection that could not be made, in words an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("database.url is not a PostgreSQL URL or key=value string: {0}")]
    Url(#[source] tokio_postgres::Error),
    #[error("database TLS settings: {0}")]
    Settings(#[from] crate::tls::libpq::SettingError),
    /// The server could not be reached, or refused: `said` tells what and what to change.
    #[error("{said}")]
    Failed {
        said: String,
        /// A matter of TLS or of the server's rules for it: retrying soon will not help.
        tls: bool,
        source: tokio_postgres::Error,
    },
}

impl ConnectError {
    /// The driver's error, where a connection was tried.
    pub fn db(&self) -> Option<&tokio_postgres::Error> {
        match self {
            ConnectError::Failed { source, .. } => Some(source),
            _ => None,
        }
    }

    /// Whether PostgreSQL is (briefly) out of reach, not refusing this client for its TLS or
    /// its settings: worth trying again soon.
    pub fn is_away(&self) -> bool {
        match self {
            ConnectError::Failed {
                tls: false, source, ..
            } => source.code().is_none_or(|c| {
                let c = c.code();
                c.starts_with("08") || c.starts_with("57P")
            }),
            _ => false,
        }
    }
}

/// Parses a libpq-style URL or key/value string, its TLS keys as libpq reads them, and sets the
/// application name (visible in `pg_stat_activity`, which is how operators and tests find the
/// relay's sessions).
pub fn parse(
    url: &str,
    application_name: &str,
) -> Result<(tokio_postgres::Config, crate::tls::libpq::Tls), ConnectError> {
    let (rest, given) = crate::tls::libpq::split(url)?;
    let mut cfg: tokio_postgres::Config = rest.parse().map_err(ConnectError::Url)?;
    let mut tls = crate::tls::libpq::Tls::of(&given)?;
    // As libpq: no TLS over a Unix socket.
    #[cfg(unix)]
    if !cfg.get_hosts().is_empty()
        && cfg
            .get_hosts()
            .iter()
            .all(|h| matches!(h, tokio_postgres::config::Host::Unix(_)))
    {
        tls.mode = crate::tls::libpq::SslMode::Disable;
    }
    // No host name to check a certificate against (hostaddr alone): libpq's default, prefer,
    // connects as it did before TLS was offered, in the clear; require and above say so.
    if cfg.get_hosts().is_empty() && tls.mode == crate::tls::libpq::SslMode::Prefer {
        tls.mode = crate::tls::libpq::SslMode::Disable;
    }
    cfg.ssl_mode(tls.driver_mode());
    if let Some(p) = super::pgpass::password_for(&cfg) {
        cfg.password(p);
    }
    cfg.application_name(application_name);
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(Duration::from_secs(10));
    }
    // Notice a dead server or a half-open connection in seconds, not hours.
    cfg.keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .keepalives_interval(Duration::from_secs(5))
        .keepalives_retries(3);
    Ok((cfg, tls))
}

pub async fn connect(url: &str, application_name: &str) -> Result<Session, ConnectError> {
    let (cfg, tls) = parse(url, application_name)?;
    let connector = tls.connector()?;
    let (client, mut connection) = cfg.connect(connector).await.map_err(|source| {
        let told = crate::tls::libpq::describe(&source, &peer(&cfg), &tls);
        ConnectError::Failed {
            tls: told.is_some(),
            said: told.unwrap_or_else(|| crate::show::chain(&source)),
            source,
        }
    })?;
    let wake = Arc::new(Notify::new());
    let closed = CancellationToken::new();
    let driver = tokio::spawn({
        let wake = wake.clone();
        let closed = closed.clone();
        async move {
            loop {
                match poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(_))) => wake.notify_one(),
                    Some(Ok(AsyncMessage::Notice(n))) => {
                        tracing::debug!(notice = %n, "postgres notice")
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "postgres connection ended");
                        break;
                    }
                    None => break,
                }
            }
            closed.cancel();
        }
    });
    Ok(Session {
        client,
        wake,
        closed,
        driver,
    })
}
