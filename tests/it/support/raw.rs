//! A NATS client that speaks the wire protocol itself (INFO, CONNECT with an NKey signature,
//! PUB, HPUB, SUB, UNSUB, PING), so that a permission test can send exactly what a hostile
//! client would, not what a client library happens to send. Every operation ends with a PING and
//! reads up to its PONG: the server answers in order, so whatever it said about the operation
//! (a permission violation, messages delivered) has arrived by then.

use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// A message the server delivered.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub subject: String,
    pub reply: Option<String>,
    pub payload: Vec<u8>,
}

/// What the server said in answer to one operation.
#[derive(Debug, Default)]
pub struct Answer {
    /// `-ERR` texts, without the quotes.
    pub errors: Vec<String>,
    pub delivered: Vec<Delivered>,
}

impl Answer {
    /// Whether the server refused publishing to `subject` for lack of permission.
    pub fn publish_refused(&self, subject: &str) -> bool {
        let expected = format!("Permissions Violation for Publish to {subject:?}");
        self.errors.contains(&expected)
    }

    /// Whether the server refused subscribing to `subject` for lack of permission.
    pub fn subscribe_refused(&self, subject: &str) -> bool {
        let expected = format!("Permissions Violation for Subscription to {subject:?}");
        self.errors.iter().any(|e| e.starts_with(&expected))
    }
}

pub struct Raw {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    next_sid: u64,
}

impl Raw {
    /// Connects to `host:port` as the NKey user of `seed`.
    pub async fn connect(url: &str, seed: &str) -> Raw {
        let addr = url.trim_start_matches("nats://");
        let stream = TcpStream::connect(addr).await.expect("tcp connect");
        // Every call is a small write then a PING waiting for its PONG: without this, Nagle and
        // delayed ACKs add 40 ms to each.
        stream.set_nodelay(true).expect("TCP_NODELAY");
        let (r, w) = stream.into_split();
        let mut raw = Raw {
            reader: BufReader::new(r),
            writer: w,
            next_sid: 1,
        };
        let info = raw.line().await;
        let info: serde_json::Value =
            serde_json::from_str(info.strip_prefix("INFO ").expect("INFO first")).unwrap();
        let nonce = info["nonce"]
            .as_str()
            .expect("the server asks for a signed nonce");
        let pair = nkeys::KeyPair::from_seed(seed).unwrap();
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(pair.sign(nonce.as_bytes()).unwrap());
        let connect = serde_json::json!({
            "verbose": false, "pedantic": false, "protocol": 1, "headers": true,
            "no_responders": true, "lang": "raw", "version": "0",
            "nkey": pair.public_key(), "sig": sig,
        });
        raw.send(format!("CONNECT {connect}\r\n").as_bytes()).await;
        let a = raw.ping().await;
        assert!(a.errors.is_empty(), "connect refused: {:?}", a.errors);
        raw
    }

    /// PUB (or HPUB when `headers` is given), then PING.
    pub async fn publish(
        &mut self,
        subject: &str,
        reply: Option<&str>,
        headers: Option<&str>,
        payload: &[u8],
    ) -> Answer {
        let reply = reply.map(|r| format!(" {r}")).unwrap_or_default();
        let mut frame = match headers {
            None => format!("PUB {subject}{reply} {}\r\n", payload.len()).into_bytes(),
            Some(h) => {
                let h = format!("NATS/1.0\r\n{h}\r\n\r\n");
                let mut f = format!(
                    "HPUB {subject}{reply} {} {}\r\n",
                    h.len(),
                    h.len() + payload.len()
                )
                .into_bytes();
                f.extend_from_slice(h.as_bytes());
                f
            }
        };
        frame.extend_from_slice(payload);
        frame.extend_from_slice(b"\r\n");
        self.send(&frame).await;
        self.ping().await
    }

    /// SUB (with a queue group if given), then PING. Returns the sid and the answer.
    pub async fn subscribe(&mut self, subject: &str, queue: Option<&str>) -> (u64, Answer) {
        let sid = self.next_sid;
        self.next_sid += 1;
        let queue = queue.map(|q| format!(" {q}")).unwrap_or_default();
        self.send(format!("SUB {subject}{queue} {sid}\r\n").as_bytes())
            .await;
        (sid, self.ping().await)
    }

    pub async fn unsubscribe(&mut self, sid: u64) {
        self.send(format!("UNSUB {sid}\r\n").as_bytes()).await;
        self.ping().await;
    }

    /// Everything delivered until at least one message came or `limit` passed (whole PING
    /// round trips only, so no read is ever cut in half).
    pub async fn wait_for_delivery(&mut self, limit: Duration) -> Answer {
        let deadline = std::time::Instant::now() + limit;
        let mut all = Answer::default();
        loop {
            let a = self.ping().await;
            all.errors.extend(a.errors);
            all.delivered.extend(a.delivered);
            if !all.delivered.is_empty() || std::time::Instant::now() >= deadline {
                return all;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// PING, then everything up to the PONG.
    pub async fn ping(&mut self) -> Answer {
        self.send(b"PING\r\n").await;
        let mut a = Answer::default();
        tokio::time::timeout(Duration::from_secs(10), async {
            while !self.read_one(&mut a).await {}
        })
        .await
        .expect("PONG within 10 s");
        a
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.expect("write");
    }

    async fn line(&mut self) -> String {
        let mut l = String::new();
        let n = self.reader.read_line(&mut l).await.expect("read");
        assert!(n > 0, "the server closed the connection");
        l.trim_end_matches(['\r', '\n']).to_owned()
    }

    async fn payload(&mut self, n: usize) -> Vec<u8> {
        let mut b = vec![0; n + 2];
        self.reader.read_exact(&mut b).await.expect("read payload");
        b.truncate(n);
        b
    }

    /// Reads one protocol line (and its payload); true when it was a PONG.
    async fn read_one(&mut self, a: &mut Answer) -> bool {
        let l = self.line().await;
        let mut parts = l.split_whitespace();
        match parts.next() {
            Some("PONG") => return true,
            Some("PING") => self.send(b"PONG\r\n").await,
            Some("+OK") | Some("INFO") => {}
            Some("-ERR") => a
                .errors
                .push(l["-ERR".len()..].trim().trim_matches('\'').to_owned()),
            Some("MSG") => {
                let p: Vec<&str> = parts.collect();
                let (subject, reply, n) = match p.as_slice() {
                    [s, _, n] => (s.to_string(), None, n.parse().unwrap()),
                    [s, _, r, n] => (s.to_string(), Some(r.to_string()), n.parse().unwrap()),
                    _ => panic!("bad MSG line {l}"),
                };
                let payload = self.payload(n).await;
                a.delivered.push(Delivered {
                    subject,
                    reply,
                    payload,
                });
            }
            Some("HMSG") => {
                let p: Vec<&str> = parts.collect();
                let (subject, reply, h, n): (String, Option<String>, usize, usize) = match p
                    .as_slice()
                {
                    [s, _, h, n] => (s.to_string(), None, h.parse().unwrap(), n.parse().unwrap()),
                    [s, _, r, h, n] => (
                        s.to_string(),
                        Some(r.to_string()),
                        h.parse().unwrap(),
                        n.parse().unwrap(),
                    ),
                    _ => panic!("bad HMSG line {l}"),
                };
                let all = self.payload(n).await;
                a.delivered.push(Delivered {
                    subject,
                    reply,
                    payload: all[h..].to_vec(),
                });
            }
            _ => panic!("unexpected protocol line {l:?}"),
        }
        false
    }
}
