//! Reading the live JetStream state, planning against the declaration, applying the plan, and
//! reporting consumer status. Streams are never deleted or recreated here; a consumer is
//! recreated only with `allow_recreate`, and undeclared durables are deleted only with `prune`.

use async_nats::jetstream::{self, consumer, stream, Context, ErrorCode};
use futures::TryStreamExt;

use super::load::Declaration;
use super::plan::{self, Action, Item, Kind, Plan};

#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Recreate consumers whose immutable fields changed (their position is lost).
    pub allow_recreate: bool,
    /// Delete durable consumers on declared streams that no file declares.
    pub prune: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("NATS: {0}")]
    Nats(String),
    /// Changes refused (by apply's own rules or by the server), and what was applied.
    #[error("{} change(s) refused:\n{}", .refused.len(), .refused.join("\n"))]
    Refused {
        refused: Vec<String>,
        applied: Vec<String>,
    },
}

/// What `apply` did and what it could not do.
#[derive(Default)]
struct Outcome {
    applied: Vec<String>,
    refused: Vec<String>,
}

impl Outcome {
    /// Records one server call: done, or refused with the server's words. A lost connection
    /// stops the whole apply (nothing after it can be sent either).
    fn record<T, E: std::fmt::Display>(
        &mut self,
        what: String,
        done: Result<T, E>,
    ) -> Result<bool, ProvisionError> {
        match done {
            Ok(_) => {
                self.applied.push(what);
                Ok(true)
            }
            Err(e) => {
                let said = e.to_string();
                if said.contains("timed out") || said.contains("broken pipe") {
                    return Err(ProvisionError::Nats(format!(
                        "{what}: {said} (applied before it: {})",
                        if self.applied.is_empty() {
                            "nothing".into()
                        } else {
                            self.applied.join("; ")
                        }
                    )));
                }
                self.refused
                    .push(format!("{what}: the server refused it: {said}"));
                Ok(false)
            }
        }
    }
}

fn nats<E: std::fmt::Display>(what: &str) -> impl Fn(E) -> ProvisionError + '_ {
    move |e| ProvisionError::Nats(format!("{what}: {e}"))
}

/// The live state of the declared objects (and undeclared durables on declared streams).
struct Live {
    streams: Vec<Option<stream::Info>>,
    consumers: Vec<Vec<Option<consumer::Info>>>,
    undeclared: Vec<(String, String)>,
}

pub(super) async fn stream_info(
    js: &Context,
    name: &str,
) -> Result<Option<stream::Info>, ProvisionError> {
    match js.get_stream(name).await {
        Ok(s) => Ok(Some(s.cached_info().clone())),
        Err(e) => match e.kind() {
            jetstream::context::GetStreamErrorKind::JetStream(je)
                if je.error_code() == ErrorCode::STREAM_NOT_FOUND =>
            {
                Ok(None)
            }
            _ => Err(ProvisionError::Nats(format!("stream {name}: {e}"))),
        },
    }
}

async fn consumer_info(
    js: &Context,
    stream: &str,
    name: &str,
) -> Result<Option<consumer::Info>, ProvisionError> {
    let s = js
        .get_stream_no_info(stream)
        .await
        .map_err(nats("stream"))?;
    match s.consumer_info(name).await {
        Ok(i) => Ok(Some(i)),
        Err(e) => {
            use jetstream::context::ConsumerInfoErrorKind as K;
            let missing = match e.kind() {
                K::NotFound => true,
                K::JetStream(je) => je.error_code() == ErrorCode::CONSUMER_NOT_FOUND,
                _ => false,
            };
            if missing {
                Ok(None)
            } else {
                Err(ProvisionError::Nats(format!(
                    "consumer {stream}/{name}: {e}"
                )))
            }
        }
    }
}

async fn live(js: &Context, d: &Declaration) -> Result<Live, ProvisionError> {
    let mut streams = Vec::new();
    for s in &d.streams {
        streams.push(stream_info(js, s.name.get_ref()).await?);
    }
    let mut consumers = Vec::new();
    for sys in &d.systems {
        let mut v = Vec::new();
        for (name, c) in &sys.consumers {
            let exists = d
                .streams
                .iter()
                .zip(&streams)
                .any(|(s, i)| s.name.get_ref() == c.stream.get_ref() && i.is_some());
            v.push(if exists {
                consumer_info(js, c.stream.get_ref(), name).await?
            } else {
                None
            });
        }
        consumers.push(v);
    }
    let mut undeclared = Vec::new();
    for (s, info) in d.streams.iter().zip(&streams) {
        if info.is_none() {
            continue;
        }
        let stream = js
            .get_stream_no_info(s.name.get_ref())
            .await
            .map_err(nats("stream"))?;
        let infos: Vec<consumer::Info> = stream
            .consumers()
            .try_collect()
            .await
            .map_err(nats("listing consumers"))?;
        for i in infos {
            let durable = i.config.durable_name.is_some();
            let declared = d
                .systems
                .iter()
                .flat_map(|sys| &sys.consumers)
                .any(|(n, c)| *n == i.name && c.stream.get_ref() == s.name.get_ref());
            if durable && !declared {
                undeclared.push((s.name.get_ref().clone(), i.name));
            }
        }
    }
    Ok(Live {
        streams,
        consumers,
        undeclared,
    })
}

fn make_plan(d: &Declaration, live: &Live, opts: Options) -> Plan {
    let mut items = Vec::new();
    for (s, info) in d.streams.iter().zip(&live.streams) {
        let (action, changes) = match info {
            None => (
                Action::Create,
                plan::stream_changes(s, &stream::Config::default()),
            ),
            Some(i) => {
                let c = plan::stream_changes(s, &i.config);
                (plan::action(&c), c)
            }
        };
        items.push(Item {
            kind: Kind::Stream,
            stream: s.name.get_ref().clone(),
            consumer: None,
            action,
            changes,
        });
    }
    for (sys, infos) in d.systems.iter().zip(&live.consumers) {
        for ((name, c), info) in sys.consumers.iter().zip(infos) {
            let (action, changes) = match info {
                None => (
                    Action::Create,
                    plan::consumer_changes(name, c, &consumer::Config::default()),
                ),
                Some(i) => {
                    let ch = plan::consumer_changes(name, c, &i.config);
                    (plan::action(&ch), ch)
                }
            };
            items.push(Item {
                kind: Kind::Consumer,
                stream: c.stream.get_ref().clone(),
                consumer: Some(name.clone()),
                action,
                changes,
            });
        }
    }
    for (stream, name) in &live.undeclared {
        items.push(Item {
            kind: Kind::Consumer,
            stream: stream.clone(),
            consumer: Some(name.clone()),
            action: if opts.prune {
                Action::Delete
            } else {
                Action::Unmanaged
            },
            changes: Vec::new(),
        });
    }
    let _ = opts.allow_recreate;
    Plan {
        items,
        applied: false,
    }
}

/// What apply would do.
pub async fn plan(js: &Context, d: &Declaration, opts: Options) -> Result<Plan, ProvisionError> {
    let live = live(js, d).await?;
    Ok(make_plan(d, &live, opts))
}

/// Makes the server match the declaration. Returns the plan it carried out; changes it must
/// refuse (immutable fields without `allow_recreate`, any stream replacement) come back as
/// [`ProvisionError::Refused`] after everything else was applied.
pub async fn apply(js: &Context, d: &Declaration, opts: Options) -> Result<Plan, ProvisionError> {
    let live = live(js, d).await?;
    let plan = make_plan(d, &live, opts);
    let mut out = Outcome::default();
    for (s, info) in d.streams.iter().zip(&live.streams) {
        let name = s.name.get_ref();
        match info {
            None => {
                let done = js
                    .create_stream(plan::stream_config(s, stream::Config::default()))
                    .await;
                out.record(format!("create stream {name}"), done)?;
            }
            Some(i) => {
                let changes = plan::stream_changes(s, &i.config);
                match plan::action(&changes) {
                    Action::Unchanged => {}
                    Action::Update => {
                        let done = js
                            .update_stream(plan::stream_config(s, i.config.clone()))
                            .await;
                        out.record(format!("update stream {name}"), done)?;
                    }
                    _ => out.refused.push(format!(
                        "stream {name}: {} cannot change on an existing stream; streams are never recreated by apply (that would delete its {} messages). Create a new stream with the new settings and move consumers to it, or revert the declaration",
                        changes.iter().filter(|c| !c.mutable).map(|c| format!("{} ({} -> {})", c.field, c.live, c.declared)).collect::<Vec<_>>().join(", "),
                        i.state.messages
                    )),
                }
            }
        }
    }
    for (sys, infos) in d.systems.iter().zip(&live.consumers) {
        for ((name, c), info) in sys.consumers.iter().zip(infos) {
            let on = c.stream.get_ref();
            let stream = match js.get_stream_no_info(on).await {
                Ok(s) => s,
                Err(e) => {
                    out.refused.push(format!(
                        "consumer {on}/{name}: its stream is not there ({e}): not created"
                    ));
                    continue;
                }
            };
            match info {
                None => {
                    let config = plan::consumer_config(name, c, consumer::Config::default());
                    let config = match start_time_resolved(js, on, config).await {
                        Ok(config) => config,
                        Err(e) => {
                            out.refused
                                .push(format!("consumer {on}/{name}: {e}: not created"));
                            continue;
                        }
                    };
                    let done = stream.create_consumer(config).await;
                    out.record(format!("create consumer {on}/{name}"), done)?;
                }
                Some(i) => {
                    let changes = plan::consumer_changes(name, c, &i.config);
                    match plan::action(&changes) {
                        Action::Unchanged => {}
                        Action::Update => {
                            let done = stream
                                .update_consumer(plan::consumer_config(name, c, i.config.clone()))
                                .await;
                            out.record(format!("update consumer {on}/{name}"), done)?;
                        }
                        _ if opts.allow_recreate => {
                            tracing::warn!(
                                consumer = %name,
                                stream = %on,
                                acked_up_to = i.ack_floor.stream_sequence,
                                pending = i.num_pending,
                                "recreating consumer: its position (acked up to stream sequence {}, {} pending) is lost; it starts again from its deliver policy",
                                i.ack_floor.stream_sequence,
                                i.num_pending
                            );
                            let deleted = stream.delete_consumer(name).await;
                            if out.record(format!("delete consumer {on}/{name} (to recreate it)"), deleted)? {
                                let config = plan::consumer_config(name, c, consumer::Config::default());
                                match start_time_resolved(js, on, config).await {
                                    Ok(config) => {
                                        let done = stream.create_consumer(config).await;
                                        out.record(format!("recreate consumer {on}/{name}"), done)?;
                                    }
                                    Err(e) => out.refused.push(format!(
                                        "consumer {on}/{name}: {e}: deleted and not created again; run apply once more"
                                    )),
                                }
                            }
                        }
                        _ => out.refused.push(format!(
                            "consumer {on}/{name}: {} cannot change on an existing consumer. Re-run with --allow-recreate to delete and recreate it: it would lose its position (acked up to stream sequence {}, {} pending) and start again from its deliver policy",
                            changes.iter().filter(|c| !c.mutable).map(|c| format!("{} ({} -> {})", c.field, c.live, c.declared)).collect::<Vec<_>>().join(", "),
                            i.ack_floor.stream_sequence,
                            i.num_pending
                        )),
                    }
                }
            }
        }
    }
    if opts.prune {
        for (stream, name) in &live.undeclared {
            let done = js.delete_consumer_from_stream(name, stream).await;
            out.record(format!("delete undeclared consumer {stream}/{name}"), done)?;
        }
    }
    if out.refused.is_empty() {
        Ok(Plan {
            applied: true,
            ..plan
        })
    } else {
        Err(ProvisionError::Refused {
            refused: out.refused,
            applied: out.applied,
        })
    }
}

/// One consumer's state, for people and scripts.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConsumerStatus {
    pub system: String,
    pub stream: String,
    pub consumer: String,
    pub exists: bool,
    pub pending: u64,
    pub ack_pending: usize,
    pub redelivered: usize,
    pub waiting: usize,
    pub last_active: Option<String>,
    pub paused: bool,
    pub acked_up_to: u64,
    pub stream_first_seq: u64,
    pub stream_last_seq: u64,
}

pub async fn status(js: &Context, d: &Declaration) -> Result<Vec<ConsumerStatus>, ProvisionError> {
    let mut out = Vec::new();
    for sys in &d.systems {
        for (name, c) in &sys.consumers {
            let stream = stream_info(js, c.stream.get_ref()).await?;
            let info = match &stream {
                Some(_) => consumer_info(js, c.stream.get_ref(), name).await?,
                None => None,
            };
            let (first, last) = stream
                .as_ref()
                .map_or((0, 0), |s| (s.state.first_sequence, s.state.last_sequence));
            out.push(ConsumerStatus {
                system: sys.decl.name.get_ref().clone(),
                stream: c.stream.get_ref().clone(),
                consumer: name.clone(),
                exists: info.is_some(),
                pending: info.as_ref().map_or(0, |i| i.num_pending),
                ack_pending: info.as_ref().map_or(0, |i| i.num_ack_pending),
                redelivered: info.as_ref().map_or(0, |i| i.num_redelivered),
                waiting: info.as_ref().map_or(0, |i| i.num_waiting),
                last_active: info
                    .as_ref()
                    .and_then(|i| i.delivered.last_active)
                    .map(|t| t.to_rfc3339()),
                paused: info.as_ref().is_some_and(|i| i.paused),
                acked_up_to: info.as_ref().map_or(0, |i| i.ack_floor.stream_sequence),
                stream_first_seq: first,
                stream_last_seq: last,
            });
        }
    }
    Ok(out)
}

/// A consumer to be created `by_start_time`, created instead at the stream sequence that time
/// resolves to for its filters (nats-server starts one with several filters late: see
/// [`crate::read::replay`]), the declared policy kept in its metadata for `plan`.
async fn start_time_resolved(
    js: &Context,
    stream: &str,
    mut config: consumer::Config,
) -> Result<consumer::Config, String> {
    let consumer::DeliverPolicy::ByStartTime { start_time } = config.deliver_policy else {
        return Ok(config);
    };
    let last = js
        .get_stream(stream)
        .await
        .map_err(|e| e.to_string())?
        .cached_info()
        .state
        .last_sequence;
    let mut filters = config.filter_subjects.clone();
    if !config.filter_subject.is_empty() {
        filters.push(config.filter_subject.clone());
    }
    let from = crate::read::replay::From::Time(start_time);
    let seq = crate::read::replay::start_sequence(js, stream, &filters, from, last).await?;
    let declared = serde_json::to_string(&config.deliver_policy).map_err(|e| e.to_string())?;
    config
        .metadata
        .insert(crate::read::replay::DELIVER_DECLARED.into(), declared);
    config.deliver_policy = consumer::DeliverPolicy::ByStartSequence {
        start_sequence: seq,
    };
    Ok(config)
}
