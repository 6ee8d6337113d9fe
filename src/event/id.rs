//! The identities an event carries: its CloudEvents `id` (a UUIDv7 made from the row's record
//! time and outbox id, reversible to the outbox id), its `Nats-Msg-Id`, its `sequence`
//! extension, and how times are written. Pure.

use chrono::{DateTime, SecondsFormat, Utc};
use uuid::Uuid;

/// Width of the zero-padded `sequence` extension: enough for any positive `bigint`.
pub const SEQUENCE_WIDTH: usize = 20;

/// The `sequence` extension: the outbox id, zero-padded so that string order is event order.
pub fn sequence(id: i64) -> String {
    format!("{id:0SEQUENCE_WIDTH$}")
}

/// `Nats-Msg-Id`: JetStream deduplicates on it alone, so it carries the source too.
pub fn msg_id(source: &str, id: &str) -> String {
    format!("{source}#{id}")
}

/// The outbox id and source carried by a `Nats-Msg-Id` this relay wrote.
pub fn parse_msg_id(msg_id: &str) -> Option<(&str, i64)> {
    let (source, id) = msg_id.rsplit_once('#')?;
    Some((source, outbox_id_of(Uuid::parse_str(id).ok()?)?))
}

/// UUIDv7: 48-bit Unix milliseconds, 12 bits of sub-millisecond microseconds, 62 bits of outbox id.
pub fn event_id(outbox_id: i64, recorded_at: DateTime<Utc>) -> Uuid {
    let ms = recorded_at.timestamp_millis().max(0) as u64;
    let sub_ms = (recorded_at.timestamp_subsec_micros() % 1000) as u16;
    let id = outbox_id.max(0) as u64;
    let mut b = [0u8; 16];
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    b[6] = 0x70 | ((sub_ms >> 8) as u8 & 0x0f);
    b[7] = sub_ms as u8;
    b[8] = 0x80 | ((id >> 56) as u8 & 0x3f);
    b[9..].copy_from_slice(&id.to_be_bytes()[1..]);
    Uuid::from_bytes(b)
}

/// Inverse of [`event_id`] for the outbox id.
pub fn outbox_id_of(id: Uuid) -> Option<i64> {
    let b = id.as_bytes();
    if b[6] >> 4 != 7 || b[8] >> 6 != 0b10 {
        return None;
    }
    let mut v = [0u8; 8];
    v[0] = b[8] & 0x3f;
    v[1..].copy_from_slice(&b[9..]);
    Some(u64::from_be_bytes(v) as i64)
}

/// A CloudEvents timestamp: RFC 3339 in UTC, with as many fraction digits as it needs.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn event_ids_are_time_ordered_and_reversible() {
        let recorded_at = Utc.timestamp_micros(1_795_000_000_123_456).unwrap();
        let id = event_id(42, recorded_at);
        assert_eq!(id.get_version_num(), 7);
        assert_eq!(outbox_id_of(id), Some(42));
        let later = event_id(41, recorded_at + chrono::Duration::microseconds(1));
        assert!(
            later > id,
            "a later recorded time sorts later whatever the outbox id"
        );
        assert_eq!(
            outbox_id_of(event_id(i64::MAX >> 1, recorded_at)),
            Some(i64::MAX >> 1)
        );
        let m = msg_id("/mes/demo/bsl", &id.to_string());
        assert_eq!(parse_msg_id(&m), Some(("/mes/demo/bsl", 42)));
        assert_eq!(parse_msg_id("foreign-id"), None);
    }
}
