//! The demo's external systems (consumer-library runs that can be stopped and restarted) and
//! its live view.
//!
//! Uses only the public consumer library, as an integrator's program would.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use cloudevents::AttributesReader;
use tokio_util::sync::CancellationToken;

use super::DemoError;
use crate::read::consume::{self, Delivery, Outcome};
use crate::store::operator;

/// One external system of the demo: a consumer-library run that can be stopped and restarted.
pub(super) struct System {
    pub label: &'static str,
    stream: String,
    consumer: &'static str,
    /// Handling time per event: the ERP is slow.
    work: Duration,
    received: Arc<AtomicU64>,
    last: Arc<Mutex<VecDeque<String>>>,
    running: Mutex<Option<(CancellationToken, tokio::task::JoinHandle<()>)>>,
    /// A system the push service delivers to (over HTTP): not a consumer run of the demo's; what
    /// its endpoint is doing, for the view.
    pushed: Option<Arc<dyn Fn() -> String + Send + Sync>>,
}

impl System {
    pub fn new(
        label: &'static str,
        stream: String,
        consumer: &'static str,
        work: Duration,
    ) -> System {
        System {
            label,
            stream,
            consumer,
            work,
            received: Arc::default(),
            last: Arc::default(),
            running: Mutex::new(None),
            pushed: None,
        }
    }

    /// A system the push service delivers to: `received` counts what its receiver handled,
    /// `note` says what its endpoint is doing.
    pub fn pushed(
        label: &'static str,
        stream: String,
        consumer: &'static str,
        received: Arc<AtomicU64>,
        note: Arc<dyn Fn() -> String + Send + Sync>,
    ) -> System {
        System {
            received,
            pushed: Some(note),
            ..System::new(label, stream, consumer, Duration::ZERO)
        }
    }

    pub fn is_running(&self) -> bool {
        self.pushed.is_some() || self.running.lock().map(|r| r.is_some()).unwrap_or(false)
    }

    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    pub fn start(&self, js: &jetstream::Context) {
        if self.pushed.is_some() {
            return; // the push service delivers it
        }
        let stop = CancellationToken::new();
        let (received, last, work) = (self.received.clone(), self.last.clone(), self.work);
        let handler = move |d: Delivery| {
            let (received, last) = (received.clone(), last.clone());
            async move {
                if !work.is_zero() {
                    tokio::time::sleep(work).await;
                }
                received.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut l) = last.lock() {
                    let ty = d.event.ty();
                    let ty = ty.split_once(".mes.").map_or(ty, |(_, t)| t);
                    l.push_back(format!("{ty} {}", d.key));
                    if l.len() > 3 {
                        l.pop_front();
                    }
                }
                Outcome::Done
            }
        };
        let task = tokio::spawn({
            let (js, stop, stream, consumer) =
                (js.clone(), stop.clone(), self.stream.clone(), self.consumer);
            async move {
                let opts = consume::Options::default();
                if let Err(e) = consume::run(&js, &stream, consumer, opts, handler, stop).await {
                    tracing::warn!(error = %e, "demo consumer stopped");
                }
            }
        });
        if let Ok(mut r) = self.running.lock() {
            *r = Some((stop, task));
        }
    }

    pub async fn stop(&self) {
        let running = self.running.lock().ok().and_then(|mut r| r.take());
        if let Some((stop, task)) = running {
            stop.cancel();
            let _ = task.await;
        }
    }

    /// Events not yet acked by this consumer (`u64::MAX` when unknown).
    pub async fn pending(&self, js: &jetstream::Context) -> u64 {
        let Ok(s) = js.get_stream_no_info(&self.stream).await else {
            return u64::MAX;
        };
        s.consumer_info(self.consumer)
            .await
            .map(|i| i.num_pending + i.num_ack_pending as u64)
            .unwrap_or(u64::MAX)
    }

    /// Events in the stream matching this consumer's filters (a throw-away ordered consumer).
    pub async fn expected(&self, js: &jetstream::Context) -> Result<u64, DemoError> {
        let err = |e: &dyn std::fmt::Display| DemoError::Expected {
            consumer: self.consumer.to_owned(),
            source: e.to_string().into(),
        };
        let s = js
            .get_stream_no_info(&self.stream)
            .await
            .map_err(|e| err(&e))?;
        let cfg = s
            .consumer_info(self.consumer)
            .await
            .map_err(|e| err(&e))?
            .config;
        let mut probe = s
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: cfg.filter_subject.clone(),
                filter_subjects: cfg.filter_subjects.clone(),
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| err(&e))?;
        let n = probe.info().await.map_err(|e| err(&e))?.num_pending;
        let name = probe.cached_info().name.clone();
        let _ = s.delete_consumer(&name).await;
        Ok(n)
    }
}

/// Lines of the live view drawn last on the terminal.
static DRAWN: AtomicUsize = AtomicUsize::new(0);

/// Something else was printed below the view: the next one is drawn under it.
pub(super) fn view_interrupted() {
    DRAWN.store(0, Ordering::Relaxed);
}

/// The live view: redrawn in place on a terminal, plain lines otherwise.
pub(super) async fn view(
    tty: bool,
    t: Duration,
    c: &operator::Counts,
    systems: &[System],
    js: &jetstream::Context,
) {
    let mut lines = vec![format!(
        "{:>4}s  emitted {:>6}   published {:>6}   rejected {}",
        t.as_secs(),
        c.pending + c.published + c.rejected,
        c.published,
        c.rejected
    )];
    for sys in systems {
        let pending = sys.pending(js).await;
        let state = match &sys.pushed {
            Some(note) => note(),
            None if sys.is_running() => String::new(),
            None => "  [offline]".into(),
        };
        let pending = if pending == u64::MAX {
            "-".to_owned()
        } else {
            pending.to_string()
        };
        lines.push(format!(
            "      {:<27} received {:>6}   pending {:>6}{state}",
            sys.label,
            sys.received(),
            pending
        ));
    }
    if tty {
        let last: Vec<String> = systems[1]
            .last
            .lock()
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default();
        lines.push(format!("      last events: {}", last.join("  |  ")));
        // Redraw the view in place: up over the previous one and clear below, so the header
        // above it stays.
        let up = DRAWN.swap(lines.len(), Ordering::Relaxed);
        let back = if up > 0 {
            format!("\x1b[{up}A\r\x1b[J")
        } else {
            String::new()
        };
        println!("{back}{}", lines.join("\n"));
    } else {
        println!("{}", lines.join("\n"));
    }
}
