//! PostgreSQL sessions: connecting, and driving a connection so its notifications are seen.
//!
//! The relay needs LISTEN, so its connection is driven by `poll_message` in a task this module
//! owns (spawning the bare connection future would drop notifications). Owns no SQL.

use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client, NoTls};
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

impl Drop for Session {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Parses a libpq-style URL or key/value string and sets the application name (visible in
/// `pg_stat_activity`, which is how operators and tests find the relay's sessions).
pub fn parse(
    url: &str,
    application_name: &str,
) -> Result<tokio_postgres::Config, tokio_postgres::Error> {
    let mut cfg: tokio_postgres::Config = url.parse()?;
    cfg.application_name(application_name);
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(Duration::from_secs(10));
    }
    // Notice a dead server or a half-open connection in seconds, not hours.
    cfg.keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .keepalives_interval(Duration::from_secs(5))
        .keepalives_retries(3);
    Ok(cfg)
}

pub async fn connect(url: &str, application_name: &str) -> Result<Session, tokio_postgres::Error> {
    let (client, mut connection) = parse(url, application_name)?.connect(NoTls).await?;
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
