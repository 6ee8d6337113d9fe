//! Binding to a durable pull consumer by name, without asking the server for its info: what a
//! system does from its own account, where the JetStream API is not available (only pulls and
//! acks cross the account boundary).

use async_nats::jetstream::{self, consumer::PullConsumer, Context};

/// The durable pull consumer `consumer` of `stream`, bound by name without asking the server for
/// its info: what a system does from its own account, where the JetStream API is not available
/// (only pulls and acks cross the account boundary). A consumer that does not exist shows as
/// pull requests that never deliver. (nats.go `nats.Bind`, nats-py `pull_subscribe_bind`,
/// nats.js `consumers.getConsumerFromInfo`, NATS.Net `new NatsJSConsumer(js, info)`.)
pub fn bind_by_name(js: &Context, stream: &str, consumer: &str) -> PullConsumer {
    bind_in_group(js, stream, consumer, None)
}

/// The same, for a consumer with a pinned-client priority group (the client library tracks the
/// pin only when it knows the policy).
pub fn bind_in_group(
    js: &Context,
    stream: &str,
    consumer: &str,
    group: Option<&str>,
) -> PullConsumer {
    let mut config = jetstream::consumer::pull::Config {
        durable_name: Some(consumer.to_owned()),
        ..Default::default()
    };
    if let Some(g) = group {
        config.priority_policy = jetstream::consumer::PriorityPolicy::PinnedClient;
        config.priority_groups = vec![g.to_owned()];
    }
    let info: jetstream::consumer::Info = serde_json::from_value(serde_json::json!({
        "stream_name": stream,
        "name": consumer,
        "created": "1970-01-01T00:00:00Z",
        "config": jetstream::consumer::IntoConsumerConfig::into_consumer_config(config.clone()),
        "delivered": { "consumer_seq": 0, "stream_seq": 0 },
        "ack_floor": { "consumer_seq": 0, "stream_seq": 0 },
        "num_ack_pending": 0,
        "num_redelivered": 0,
        "num_waiting": 0,
        "num_pending": 0
    }))
    .expect("a consumer info with only the names is valid");
    PullConsumer::new(config, info, js.clone())
}
