//! Pulling from a durable consumer with nothing but pull requests: never asking the JetStream
//! API for the consumer's info.
//!
//! A system's identity may pull and ack its own consumer and nothing else (see
//! `provision::auth`); the consumer's info is not among what it may ask, and is not answered
//! across the account boundary anyway. async-nats' own pull stream asks for it after every
//! reconnect (to see whether its pull is still waiting), and retries for about 45 s while it
//! goes unanswered, sending no pull meanwhile: a pushed system stopped receiving for that long
//! after every NATS restart, and lost its pin. This stream keeps its requests going by what the
//! server sends instead: a request's end (408, 409, 423 with the `Nats-Pending-Messages` it left
//! unfilled) is accounted for, and when neither a message nor an idle heartbeat arrived for two
//! heartbeats the requests are taken as lost (a restarted server, a dropped connection) and a
//! new one is sent.
//!
//! Owns the pull protocol only: what a message means, acks and ordering are [`consume`]'s.
//!
//! [`consume`]: super::consume

use std::time::Duration;

use async_nats::jetstream::{self, Context};
use async_nats::{HeaderMap, StatusCode, Subscriber};
use futures::{Stream, StreamExt};
use serde::Serialize;
use tokio::time::Instant;

/// What a pull request asks for.
#[derive(Debug, Clone)]
pub struct Request {
    /// Messages per request.
    pub batch: usize,
    /// How long the server keeps a request waiting.
    pub expires: Duration,
    /// How often the server says it is there while it has nothing to deliver.
    pub heartbeat: Duration,
    /// The priority group to pull in (a consumer whose policy is a pinned client).
    pub group: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("no idle heartbeat for {0:?}: pulling afresh")]
    MissedHeartbeat(Duration),
    #[error("JetStream did not answer the pull (no responders): is the server's JetStream up, and this identity's import active?")]
    NoResponders,
    #[error("the consumer was deleted")]
    ConsumerDeleted,
    #[error("the server refuses the pull: {0}")]
    Refused(String),
    #[error("cannot send a pull request: {0}")]
    Publish(String),
    #[error("cannot subscribe to the pull's inbox: {0}")]
    Subscribe(String),
}

impl PullError {
    /// Whether pulling cannot go on (the stream then ends).
    fn is_final(&self) -> bool {
        matches!(self, PullError::ConsumerDeleted | PullError::Refused(_))
    }
}

/// The body of a pull request (`$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`).
#[derive(Serialize)]
struct Body<'a> {
    batch: usize,
    #[serde(with = "nanos")]
    expires: Duration,
    #[serde(with = "nanos")]
    idle_heartbeat: Duration,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<&'a str>,
    /// The pin this client holds, in a pinned group.
    #[serde(rename = "id", skip_serializing_if = "Option::is_none")]
    pin: Option<&'a str>,
}

mod nanos {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }
}

/// What one message on the pull's inbox is, for the bookkeeping (pure).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Said {
    /// An event.
    Message,
    /// The server is there and has nothing.
    Heartbeat,
    /// A request ended with this many of its messages unfilled (`None`: not said); `pause`:
    /// not by expiring, so asking again at once may end the same way.
    Ended {
        unfilled: Option<usize>,
        pin_wrong: bool,
        pause: bool,
    },
    /// JetStream is not there.
    NoResponders,
    Deleted,
    /// A request the server will refuse again if sent again.
    Refused(String),
}

pub(crate) fn classify(
    status: Option<StatusCode>,
    description: Option<&str>,
    headers: Option<&HeaderMap>,
) -> Said {
    let unfilled = || {
        headers
            .and_then(|h| h.get("Nats-Pending-Messages"))
            .and_then(|v| v.as_str().parse().ok())
    };
    let description = description.unwrap_or_default();
    match status {
        None | Some(StatusCode::OK) => Said::Message,
        Some(StatusCode::IDLE_HEARTBEAT) => Said::Heartbeat,
        Some(StatusCode::NO_RESPONDERS) => Said::NoResponders,
        Some(StatusCode::PIN_ID_MISMATCH) => Said::Ended {
            unfilled: unfilled(),
            pin_wrong: true,
            pause: false,
        },
        Some(StatusCode::TIMEOUT) => Said::Ended {
            unfilled: unfilled(),
            pin_wrong: false,
            pause: false,
        },
        Some(StatusCode::REQUEST_TERMINATED) if description == "Consumer Deleted" => Said::Deleted,
        Some(StatusCode::REQUEST_TERMINATED)
            if description.starts_with("Exceeded MaxRequest")
                || description == "Consumer is push based" =>
        {
            Said::Refused(description.to_owned())
        }
        // Other 409s (leadership change, max waiting, max bytes), a 404 (a request this
        // stream does not send: no_wait): the request is over.
        Some(_) => Said::Ended {
            unfilled: unfilled(),
            pin_wrong: false,
            pause: true,
        },
    }
}

struct Puller {
    js: Context,
    subject: String,
    inbox: String,
    sub: Subscriber,
    req: Request,
    /// Messages asked for and not yet delivered or given up by the server.
    pending: usize,
    pin: Option<String>,
    /// When the server last said anything on the inbox.
    heard: Instant,
    /// Not before this, the next request (after a refusal that may repeat).
    pause_until: Option<Instant>,
    done: bool,
}

impl Puller {
    async fn send(&mut self) -> Result<(), PullError> {
        let body = serde_json::to_vec(&Body {
            batch: self.req.batch,
            expires: self.req.expires,
            idle_heartbeat: self.req.heartbeat,
            group: self.req.group.as_deref(),
            pin: self.pin.as_deref(),
        })
        .expect("a pull request serializes");
        self.js
            .client()
            .publish_with_reply(self.subject.clone(), self.inbox.clone(), body.into())
            .await
            .map_err(|e| PullError::Publish(e.to_string()))?;
        self.pending += self.req.batch;
        self.heard = Instant::now();
        Ok(())
    }

    async fn next(&mut self) -> Option<Result<jetstream::Message, PullError>> {
        if self.done {
            return None;
        }
        loop {
            let paused = self.pause_until.filter(|t| *t > Instant::now());
            if paused.is_none() && self.pending <= self.req.batch / 2 {
                self.pause_until = None;
                if let Err(e) = self.send().await {
                    self.pause_until = Some(Instant::now() + self.req.heartbeat);
                    return Some(Err(e));
                }
            }
            let silent = 2 * self.req.heartbeat;
            let wake = paused.unwrap_or(self.heard + silent);
            let msg = tokio::select! {
                m = self.sub.next() => m,
                _ = tokio::time::sleep_until(wake) => {
                    if paused.is_none() {
                        // Nothing for two heartbeats: the requests are gone (a restarted
                        // server, a connection dropped and back). Ask again.
                        self.pending = 0;
                        self.heard = Instant::now();
                        return Some(Err(PullError::MissedHeartbeat(silent)));
                    }
                    continue;
                }
            };
            let Some(msg) = msg else {
                self.done = true;
                return None;
            };
            self.heard = Instant::now();
            match classify(msg.status, msg.description.as_deref(), msg.headers.as_ref()) {
                Said::Message => {
                    self.pending = self.pending.saturating_sub(1);
                    if let Some(pin) = msg
                        .headers
                        .as_ref()
                        .and_then(|h| h.get_last(async_nats::header::NATS_PIN_ID))
                    {
                        if self.pin.as_deref() != Some(pin.as_str()) {
                            self.pin = Some(pin.as_str().to_owned());
                        }
                    }
                    return Some(Ok(jetstream::Message {
                        message: msg,
                        context: self.js.clone(),
                    }));
                }
                Said::Heartbeat => {}
                Said::Ended {
                    unfilled,
                    pin_wrong,
                    pause,
                } => {
                    self.pending = self
                        .pending
                        .saturating_sub(unfilled.unwrap_or(self.req.batch));
                    if pin_wrong {
                        self.pin = None;
                    }
                    if pause {
                        self.pause_until =
                            Some(Instant::now() + self.req.heartbeat.min(Duration::from_secs(1)));
                    }
                }
                Said::NoResponders => {
                    self.pending = 0;
                    self.pause_until = Some(Instant::now() + self.req.heartbeat);
                    return Some(Err(PullError::NoResponders));
                }
                Said::Deleted => {
                    self.done = true;
                    return Some(Err(PullError::ConsumerDeleted));
                }
                Said::Refused(why) => {
                    let e = PullError::Refused(why);
                    self.done = e.is_final();
                    return Some(Err(e));
                }
            }
        }
    }
}

/// The messages of a durable pull consumer, pulled as `req` says, until the subscription ends,
/// the consumer is deleted or the server refuses the request itself. Errors on the way (a
/// missed heartbeat, no responders) are items; pulling goes on after them.
pub async fn messages(
    js: &Context,
    stream: &str,
    consumer: &str,
    req: Request,
) -> Result<impl Stream<Item = Result<jetstream::Message, PullError>> + Send + Unpin, PullError> {
    let client = js.client();
    let inbox = client.new_inbox();
    let sub = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| PullError::Subscribe(e.to_string()))?;
    let puller = Puller {
        js: js.clone(),
        subject: format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"),
        inbox,
        sub,
        req: Request {
            batch: req.batch.max(1),
            ..req
        },
        pending: 0,
        pin: None,
        heard: Instant::now(),
        pause_until: None,
        done: false,
    };
    Ok(Box::pin(futures::stream::unfold(
        puller,
        |mut p| async move { p.next().await.map(|item| (item, p)) },
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pending: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("Nats-Pending-Messages", pending);
        h
    }

    #[test]
    fn what_the_server_says_on_the_inbox() {
        assert_eq!(classify(None, None, None), Said::Message);
        assert_eq!(
            classify(
                Some(StatusCode::IDLE_HEARTBEAT),
                Some("Idle Heartbeat"),
                None
            ),
            Said::Heartbeat
        );
        assert_eq!(
            classify(
                Some(StatusCode::TIMEOUT),
                Some("Request Timeout"),
                Some(&headers("7"))
            ),
            Said::Ended {
                unfilled: Some(7),
                pin_wrong: false,
                pause: false
            }
        );
        assert_eq!(
            classify(
                Some(StatusCode::PIN_ID_MISMATCH),
                Some("Nats-Wrong-Pin-Id"),
                Some(&headers("5"))
            ),
            Said::Ended {
                unfilled: Some(5),
                pin_wrong: true,
                pause: false
            }
        );
        assert_eq!(
            classify(
                Some(StatusCode::REQUEST_TERMINATED),
                Some("Leadership Change"),
                None
            ),
            Said::Ended {
                unfilled: None,
                pin_wrong: false,
                pause: true
            }
        );
        assert_eq!(
            classify(
                Some(StatusCode::REQUEST_TERMINATED),
                Some("Consumer Deleted"),
                None
            ),
            Said::Deleted
        );
        assert!(matches!(
            classify(
                Some(StatusCode::REQUEST_TERMINATED),
                Some("Exceeded MaxRequestBatch of 100"),
                None
            ),
            Said::Refused(_)
        ));
        assert_eq!(
            classify(Some(StatusCode::NO_RESPONDERS), None, None),
            Said::NoResponders
        );
    }

    #[test]
    fn a_request_body_is_what_the_server_reads() {
        let body = serde_json::to_value(Body {
            batch: 10,
            expires: Duration::from_secs(3),
            idle_heartbeat: Duration::from_secs(1),
            group: Some("push"),
            pin: Some("abc"),
        })
        .unwrap();
        assert_eq!(
            body,
            serde_json::json!({"batch": 10, "expires": 3_000_000_000u64, "idle_heartbeat": 1_000_000_000u64, "group": "push", "id": "abc"})
        );
        let bare = serde_json::to_value(Body {
            batch: 1,
            expires: Duration::from_secs(6),
            idle_heartbeat: Duration::from_secs(1),
            group: None,
            pin: None,
        })
        .unwrap();
        assert!(
            bare.get("group").is_none() && bare.get("id").is_none(),
            "{bare}"
        );
    }
}
