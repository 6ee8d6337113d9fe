//! Read side: what external systems and operators do with the streams. Binding to a durable
//! consumer and handling each key's events in order ([`consume`]), watching events live
//! ([`tail`]), moving a consumer back or forward ([`replay`]), and the events consumers gave up
//! on ([`deadletter`]).
//!
//! Talks to NATS only; imports the event layer (to decode events) and nothing above it.

pub mod consume;
pub mod deadletter;
pub mod replay;
pub mod tail;
