//! Event: the bottom layer, pure. What an event is and how it is written on the wire, from an
//! outbox row to the CloudEvent and NATS message the relay publishes, and back.
//!
//! Owns rows and rejections ([`row`]), ids ([`id`]), subjects ([`subject`]), the catalog of
//! event types and their schemas ([`catalog`]), the CloudEvents NATS binding ([`binding`]) and
//! row → message ([`outbound`]). Never talks to PostgreSQL or NATS, never reads configuration:
//! everything above may import it, it imports nothing of this crate outside this folder.
//! Inside, the order is row, id → subject, catalog → binding → outbound.

pub mod binding;
pub mod catalog;
pub mod id;
pub mod outbound;
pub mod row;
pub mod subject;

pub use id::{event_id, msg_id, outbox_id_of, parse_msg_id, rfc3339, SEQUENCE_WIDTH};
pub use outbound::{event, outbound, EventError, Outbound, Profile};
pub use row::{Rejection, RejectionKind, Row};
