//! mes-events: a transactional outbox in PostgreSQL, relayed as CloudEvents into NATS JetStream.
//!
//! The MES calls `mes_events.emit(type, key, data)` inside its own transactions; the relay
//! publishes every committed event once, in order per key, to subjects derived from the event's
//! type, plant location and business key; every external system reads its own durable consumer.
//!
//! # Layout
//! - [`config`]: what the operator sets (defaults < file < environment), validated up front.
//! - [`migrate`]: the versioned `mes_events` schema (`src/migrations/*.sql`).
//! - [`outbox`]: every SQL statement against the outbox, fenced by the relay lease.
//! - [`catalog`]: the event types, their JSON Schemas and streams (`schemas/`, built in).
//! - [`subject`]: event type, location and key → NATS subject (pure).
//! - [`event`]: outbox row → CloudEvent attributes and NATS message (pure).
//! - [`binding`]: the CloudEvents NATS binding: attributes ↔ headers (pure).
//! - [`pg`]: PostgreSQL sessions whose notifications are seen.
//! - [`nats`]: connecting to NATS and JetStream.
//! - [`consume`]: a durable pull consumer driving a handler, each key's events in order.
//! - [`deadletter`]: events consumers gave up on: list them, send one back to its consumer.
//! - [`replay`]: move a consumer back (or forward) to a time or sequence.
//! - [`tail`]: watch decoded events live, from a subject or a consumer's position.
//! - [`demo`]: the whole pipeline on one machine, set up and removed by itself.
//! - [`relay`]: the loop that moves rows into JetStream, with leadership and reconciliation.
//! - [`exit`]: the process exit codes, documented.
//! - [`local_nats`]: a throw-away nats-server process for the demo and the tests.

pub mod binding;
pub mod catalog;
pub mod config;
pub mod consume;
pub mod deadletter;
pub mod demo;
pub mod event;
pub mod exit;
pub mod local_nats;
pub mod migrate;
pub mod nats;
pub mod outbox;
pub mod pg;
pub mod provision;
pub mod relay;
pub mod replay;
pub mod subject;
pub mod tail;
