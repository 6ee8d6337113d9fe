//! mes-events: a transactional outbox in PostgreSQL, relayed as CloudEvents into NATS JetStream.
//!
//! The MES calls `mes_events.emit(type, key, data)` inside its own transactions; the relay
//! publishes every committed event once, in order per key, to subjects derived from the event's
//! type, plant location and business key; every external system reads its own durable consumer.
//!
//! # Layout
//! From the bottom up; each layer imports only the ones listed before it.
//! - [`event`] (pure): rows and rejections, ids, subjects, the catalog of event types and their
//!   schemas, the CloudEvents NATS binding, row → outbound message.
//! - [`host`]: this machine's name.
//! - [`metrics`]: the process's metrics and health, updated by every layer above.
//! - [`secret`]: URLs fit to print (passwords and tokens as `***`).
//! - [`show`]: values as people write them (durations in days, hours, minutes, seconds).
//! - [`tls`]: TLS to every server (rustls): certificates, the three checks, failures in words;
//!   PostgreSQL's settings as libpq reads them.
//! - [`config`]: what the operator sets (defaults < file < environment), validated up front.
//! - [`store`]: every SQL statement, one file per concern (session, migrate, write, lease,
//!   outbox, operator), the lease fence written once.
//! - [`nats`]: connecting to NATS and JetStream with the right credentials and inbox.
//! - [`http`]: the relay's endpoint for metrics, liveness and readiness.
//! - [`relay`]: moves committed rows into JetStream, split by guarantee (leader, reader,
//!   publisher, recorder, reconcile).
//! - [`read`]: the read side: consume, tail, replay, dead letters.
//! - [`provision`]: streams, consumers and permissions declared under `nats/`.
//! - [`push`]: signed CloudEvents webhooks for the systems that cannot pull, from their own
//!   durable consumers.
//! - [`demo`]: the whole pipeline on one machine (plant simulator, systems and view, a local
//!   nats-server), set up and removed by itself.
//!
//! The binary's own modules (arguments, commands, output, exit codes) are under `src/cli/`.

pub mod config;
pub mod demo;
pub mod event;
pub mod host;
pub mod http;
pub mod metrics;
pub mod nats;
pub mod provision;
pub mod push;
pub mod read;
pub mod relay;
pub mod secret;
pub mod show;
pub mod store;
pub mod tls;

/// Kept at the paths the guides and the examples use.
pub use read::consume;
