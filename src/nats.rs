//! Connecting to NATS and building the JetStream context the relay and the CLI use.
//!
//! Owns connection options (name, credentials and the inbox prefix that goes with them,
//! reconnect behaviour, timeouts); never publishes.

use async_nats::jetstream::{self, context::Context};

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
    #[error("cannot connect to NATS at {url}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
}

/// Connects. With `wait_for_server` the client retries in the background until the server is
/// up (the relay must start, and stand by, while NATS is down); otherwise the first failure is
/// returned (one-shot commands).
pub async fn connect(
    cfg: &NatsConfig,
    name: &str,
    wait_for_server: bool,
) -> Result<async_nats::Client, ConnectError> {
    let mut opts = async_nats::ConnectOptions::new()
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
    if wait_for_server {
        opts = opts.retry_on_initial_connect();
    }
    let servers = servers(&cfg.url)?;
    opts.connect(servers)
        .await
        .map_err(|source| ConnectError::Connect {
            url: redact(&cfg.url),
            source,
        })
}

/// A server URL list fit to print: the password of `nats://user:password@host`, and the token of
/// `nats://token@host`, become `***`.
pub fn redact(urls: &str) -> String {
    urls.split(',')
        .map(|u| match (u.find("://"), u.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                let creds = &u[scheme + 3..at];
                match creds.find(':') {
                    Some(colon) => {
                        format!("{}{}:***{}", &u[..scheme + 3], &creds[..colon], &u[at..])
                    }
                    // A user alone is a token (`nats://TOKEN@host`): a secret too.
                    None => format!("{}***{}", &u[..scheme + 3], &u[at..]),
                }
            }
            _ => u.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
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
    fn a_comma_separated_list_is_several_servers() {
        let s = super::servers("nats://n1:4222, nats://n2:4222,nats://n3:4222").unwrap();
        assert_eq!(s.len(), 3);
        assert!(super::servers("nats://n1:notaport").is_err());
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
