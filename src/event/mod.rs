//! Event: the bottom layer, pure. What an event is and how it is written on the wire, from an
//! outbox row to the CloudEvent and NATS message the relay publishes, and back.
//!
//! Owns rows and rejections ([`row`]), ids ([`id`]), subjects ([`subject`]), the catalog of
//! event types and their schemas ([`catalog`]), its AsyncAPI document ([`asyncapi`]) and
//! schema compatibility ([`compat`]), the CloudEvents NATS binding ([`binding`]) and
//! row → message ([`outbound`]). Never talks to PostgreSQL or NATS, never reads configuration:
//! everything above may import it, it imports nothing of this crate outside this folder.
//! Inside, the order is row, id → subject, catalog → binding → outbound.

pub mod asyncapi;
pub mod binding;
pub mod catalog;
pub mod compat;
pub mod id;
pub mod outbound;
pub mod row;
pub mod subject;

pub use id::{event_id, msg_id, outbox_id_of, parse_msg_id, rfc3339, SEQUENCE_WIDTH};
pub use outbound::{event, outbound, EventError, Outbound, Profile};
pub use row::{Rejection, RejectionKind, Row};

/// Checks a W3C Trace Context `traceparent` (version 00): `00-<32 hex trace id>-<16 hex parent
/// id>-<2 hex flags>`, lower case, ids not all zero.
pub fn check_traceparent(s: &str) -> Result<(), String> {
    let parts: Vec<&str> = s.split('-').collect();
    let hex = |p: &str, n: usize| {
        p.len() == n
            && p.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let ok = parts.len() == 4
        && parts[0] == "00"
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
        && parts[1].bytes().any(|b| b != b'0')
        && parts[2].bytes().any(|b| b != b'0');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a W3C traceparent: 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>, lower case, ids not all zero (e.g. 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01)"
        ))
    }
}

#[cfg(test)]
mod traceparent_tests {
    #[test]
    fn only_w3c_traceparents_pass() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(super::check_traceparent(ok).is_ok());
        for bad in [
            "garbage",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(super::check_traceparent(bad).is_err(), "{bad}");
        }
    }
}
