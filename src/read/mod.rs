//! Read side: what external systems and operators do with the streams. Binding to a durable
//! consumer by name ([`bind`]), pulling from it with pull requests alone ([`pull`]), and
//! handling each key's events in order ([`consume`]), watching events live
//! ([`tail`]), moving a consumer back or forward ([`replay`]), and the events consumers gave up
//! on ([`deadletter`]).
//!
//! Talks to NATS only; imports the event layer (to decode events) and nothing above it.

pub mod bind;
pub mod consume;
pub mod deadletter;
pub mod pull;
pub mod replay;
pub mod tail;

/// Whether the server says the consumer (or its stream) does not exist.
pub(crate) fn consumer_missing(e: &async_nats::jetstream::context::ConsumerInfoError) -> bool {
    use async_nats::jetstream::context::ConsumerInfoErrorKind as K;
    use async_nats::jetstream::ErrorCode;
    match e.kind() {
        K::NotFound | K::StreamNotFound | K::InvalidName => true,
        K::JetStream(je) => {
            je.error_code() == ErrorCode::CONSUMER_NOT_FOUND
                || je.error_code() == ErrorCode::STREAM_NOT_FOUND
        }
        _ => false,
    }
}
