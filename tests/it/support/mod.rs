//! Shared test support: real servers, relays in-process or as processes, writers, and the checks
//! every guarantee test ends with.

pub mod certs;
pub mod db;
pub mod nats;
pub mod pg;
pub mod power;
pub mod proxy;
pub mod raw;

use std::collections::HashMap;
use std::future::Future;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use mes_events::config::Config;
use mes_events::event;
use rand::{Rng, SeedableRng};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use db::TestDb;
pub use nats::{connections, free_port, http_status, NatsCluster, NatsServer};

pub const ORDER_TYPE: &str = "io.mesevents.mes.processorder.statuschanged.v1";

/// Valid data of a process order status change for `key`.
pub fn order_data(key: &str) -> String {
    serde_json::json!({
        "orderId": key,
        "previousStatus": "released",
        "status": "running",
        "hierarchyScope": {"site": "bsl", "area": "gran", "workCenter": "line2"}
    })
    .to_string()
}

/// Emits one valid order status change for `key` (in the caller's transaction, if `client` is
/// one) and returns its outbox id.
pub async fn emit_order(client: &impl tokio_postgres::GenericClient, key: &str) -> i64 {
    mes_events::store::write::emit(
        client,
        ORDER_TYPE,
        key,
        &order_data(key),
        &Default::default(),
    )
    .await
    .unwrap()
}

pub const PV_TYPE: &str = "io.mesevents.mes.processvariable.changed.v1";

/// Emits one valid process variable change (routed to MES_PV) for `key`; returns its outbox id.
pub async fn emit_pv(client: &impl tokio_postgres::GenericClient, key: &str) -> i64 {
    let data = serde_json::json!({
        "variableId": key, "value": 61.5, "uom": "CEL", "quality": "good",
        "hierarchyScope": {"site": "bsl", "area": "gran", "workCenter": "line2", "workUnit": "dryer1"}
    });
    mes_events::store::write::emit(client, PV_TYPE, key, &data.to_string(), &Default::default())
        .await
        .unwrap()
}

/// A test's world: its own NATS server, its own database, and a config pointing at both.
pub struct Env {
    pub nats: NatsServer,
    pub db: TestDb,
    pub cfg: Config,
}

impl Env {
    /// Servers up, schema migrated, streams created with the given duplicate window.
    pub async fn new() -> Env {
        Self::with_duplicate_window(Duration::from_secs(120)).await
    }

    pub async fn with_duplicate_window(window: Duration) -> Env {
        let env = Self::without_streams().await;
        create_streams(&env.js().await, window).await;
        env
    }

    /// Servers up and schema migrated; the test creates the streams it needs.
    pub async fn without_streams() -> Env {
        init_tracing();
        Self::bare(NatsServer::start().await).await
    }

    /// On a NATS server the test configured itself (monitoring, a store limit): schema
    /// migrated, streams created as by [`Env::new`].
    pub async fn on(nats: NatsServer) -> Env {
        let env = Self::bare(nats).await;
        create_streams(&env.js().await, Duration::from_secs(120)).await;
        env
    }

    async fn bare(nats: NatsServer) -> Env {
        let db = TestDb::new().await;
        let cfg = config(&db, &nats);
        Env { nats, db, cfg }
    }

    pub async fn js(&self) -> jetstream::Context {
        let client = async_nats::connect(self.nats.url()).await.unwrap();
        jetstream::new(client)
    }

    /// A relay running in this process, as `mes-events relay` would run it.
    pub async fn spawn_relay(&self) -> RelayTask {
        spawn_relay(self.cfg.clone(), &self.nats.url()).await
    }

    pub fn relay_process(&self) -> RelayProcess {
        RelayProcess::spawn(&self.cfg, &[])
    }

    /// Waits (at most `limit`) until nothing is pending in the outbox; `what` names the moment.
    pub async fn drained(&self, limit: Duration, what: &str) {
        eventually(limit, what, || async { pending(&self.db).await == 0 }).await;
    }

    /// Both streams hold exactly the `committed` rows, once each, each key's in commit order,
    /// and the outbox agrees.
    pub async fn assert_published_exactly_once(&self, committed: &[i64]) {
        let published = read_all(&self.js().await).await;
        assert_exactly_once_in_order(&self.db, &published, committed).await;
    }
}

/// Relay logs in test output when RUST_LOG is set (e.g. RUST_LOG=mes_events=debug).
pub fn init_tracing() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
    });
}

pub fn config(db: &TestDb, nats: &NatsServer) -> Config {
    config_for(db, &nats.url())
}

/// The tests' configuration for `db` and the NATS server (or comma-separated servers) `nats`.
pub fn config_for(db: &TestDb, nats: &str) -> Config {
    let mut cfg = Config::default();
    cfg.database.url = db.url.clone();
    cfg.nats.url = nats.to_owned();
    cfg.events.installation = "test".into();
    cfg.events.site = "bsl".into();
    cfg.relay.poll_interval = Duration::from_millis(200);
    cfg.relay.max_backoff = Duration::from_secs(1);
    cfg.relay.standby_retry = Duration::from_millis(200);
    cfg.nats.request_timeout = Duration::from_secs(2);
    cfg
}

/// The subjects the catalog routes to `stream`: `mes.*.*.*.*.<category>.>` per category.
pub fn catalog_subjects(stream: &str) -> Vec<String> {
    let catalog = mes_events::event::catalog::Catalog::embedded().unwrap();
    catalog.file.streams[stream]
        .categories
        .iter()
        .map(|c| format!("mes.*.*.*.*.{c}.>"))
        .collect()
}

/// Creates the streams `names` as the catalog routes them (two minutes' duplicate window).
pub async fn create_streams_named(js: &jetstream::Context, names: &[&str]) {
    for name in names {
        js.create_stream(stream::Config {
            name: (*name).into(),
            subjects: catalog_subjects(name),
            ..Default::default()
        })
        .await
        .unwrap();
    }
}

pub async fn create_streams(js: &jetstream::Context, duplicate_window: Duration) {
    for name in ["MES_EVENTS", "MES_PV"] {
        js.create_stream(stream::Config {
            name: name.into(),
            subjects: catalog_subjects(name),
            duplicate_window,
            ..Default::default()
        })
        .await
        .unwrap();
    }
}

pub struct RelayTask {
    pub shutdown: CancellationToken,
    pub join: JoinHandle<Result<(), mes_events::relay::RelayError>>,
}

impl RelayTask {
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.join)
            .await
            .expect("relay stops within 30 s")
            .unwrap()
            .unwrap();
    }
}

pub async fn spawn_relay(cfg: Config, url: &str) -> RelayTask {
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(url)
        .await
        .unwrap();
    relay_on(cfg, client)
}

fn relay_on(cfg: Config, client: async_nats::Client) -> RelayTask {
    let js = mes_events::nats::jetstream(client, &cfg.nats, cfg.relay.max_in_flight);
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let join = tokio::spawn(async move { mes_events::relay::run(&cfg, js, token).await });
    RelayTask { shutdown, join }
}

/// A relay running in this process with the identity `cfg` names (its NKey seed), as
/// `mes-events relay` connects.
pub async fn spawn_relay_as(cfg: Config) -> RelayTask {
    let client = mes_events::nats::connect(&cfg.nats, "test relay", true)
        .await
        .unwrap();
    relay_on(cfg, client)
}

/// What `mes-events provision apply` does with the shipped catalog: streams and consumers, then
/// the schema bucket.
pub async fn provision(js: &jetstream::Context, decl: &mes_events::provision::Declaration) {
    mes_events::provision::apply(js, decl, Default::default())
        .await
        .unwrap();
    let catalog = mes_events::event::catalog::Catalog::embedded().unwrap();
    mes_events::provision::schemas::apply(js, decl, &catalog)
        .await
        .unwrap();
}

/// `mes-events relay` as a child process, configured through the environment.
pub struct RelayProcess {
    pub child: Child,
    log: tempfile::NamedTempFile,
}

impl RelayProcess {
    pub fn spawn(cfg: &Config, extra_env: &[(&str, &str)]) -> RelayProcess {
        // A file, not a pipe: a pipe nobody reads would block the relay once full.
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mes-events"));
        cmd.arg("relay")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "warn")
            .env("MES_EVENTS_DATABASE__URL", &cfg.database.url)
            .env("MES_EVENTS_NATS__URL", &cfg.nats.url)
            .env("MES_EVENTS_EVENTS__INSTALLATION", &cfg.events.installation)
            .env("MES_EVENTS_EVENTS__SITE", &cfg.events.site)
            .env(
                "MES_EVENTS_RELAY__POLL_INTERVAL",
                humantime::format_duration(cfg.relay.poll_interval).to_string(),
            )
            .env(
                "MES_EVENTS_RELAY__STANDBY_RETRY",
                humantime::format_duration(cfg.relay.standby_retry).to_string(),
            )
            .env("MES_EVENTS_RELAY__MAX_BACKOFF", "1s")
            .env("MES_EVENTS_NATS__REQUEST_TIMEOUT", "2s")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .current_dir(std::env::temp_dir());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        RelayProcess {
            child: cmd.spawn().expect("spawning mes-events relay"),
            log,
        }
    }

    /// What the relay wrote to standard error so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        unsafe {
            libc::kill(self.pid(), libc::SIGTERM);
        }
        self.wait_exit("exit within 30 s of SIGTERM").await
    }

    /// Waits (30 s at most) for the relay to exit by itself; `what` names what was expected.
    pub async fn wait_exit(&mut self, what: &str) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "relay did not {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A declaration folder holding `files` (path under the folder, contents).
pub fn decl_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let p = dir.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    dir
}

/// A finished command's standard output and error, for assertions and their messages.
pub fn output_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Polls `cond` until it holds, failing the test with `what` after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if cond().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Polls `get` until it gives a value, failing the test with `what` after `limit`.
pub async fn eventually_value<T, F, Fut>(limit: Duration, what: &str, mut get: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = get().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One message as found in a stream.
#[derive(Debug, Clone)]
pub struct Published {
    pub seq: u64,
    pub subject: String,
    pub outbox_id: i64,
    pub key: String,
}

/// Every message of a stream, in stream order, read with an ordered consumer.
pub async fn read_stream(js: &jetstream::Context, name: &str) -> Vec<Published> {
    try_read_stream(js, name)
        .await
        .unwrap_or_else(|e| panic!("reading {name} back: {e}"))
}

/// [`read_stream`], with JetStream's errors returned (a cluster electing a leader may refuse).
pub async fn try_read_stream(
    js: &jetstream::Context,
    name: &str,
) -> Result<Vec<Published>, async_nats::Error> {
    let mut stream = js.get_stream(name).await?;
    let last = stream.info().await?.state.last_sequence;
    let mut out = Vec::new();
    if last == 0 {
        return Ok(out);
    }
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    while let Some(m) = tokio::time::timeout(Duration::from_secs(10), messages.next()).await? {
        let p = published(&m?);
        let seq = p.seq;
        out.push(p);
        if seq >= last {
            break;
        }
    }
    Ok(out)
}

/// What a consumer sees of one message (decoded with the CloudEvents binding, so every message
/// any test reads back is also checked to be a valid CloudEvent).
pub fn published(m: &jetstream::Message) -> Published {
    use cloudevents::AttributesReader;
    let info = m.info().unwrap();
    let headers = m.headers.as_ref().expect("headers");
    let msg_id = headers.get("Nats-Msg-Id").expect("Nats-Msg-Id").as_str();
    let (_, outbox_id) = event::parse_msg_id(msg_id).expect("a msg id this relay wrote");
    let ce = mes_events::event::binding::decode(
        Some(headers),
        &m.payload,
        mes_events::event::binding::Rule::Spec,
    )
    .expect("a valid CloudEvent");
    let key = ce.subject().expect("ce subject").to_owned();
    Published {
        seq: info.stream_sequence,
        subject: m.subject.to_string(),
        outbox_id,
        key,
    }
}

/// Messages in both streams, or `None` while JetStream cannot say (a cluster electing a leader).
pub async fn messages_in_streams(js: &jetstream::Context) -> Option<u64> {
    let mut n = 0;
    for s in ["MES_EVENTS", "MES_PV"] {
        let mut stream = js.get_stream(s).await.ok()?;
        n += stream.info().await.ok()?.state.messages;
    }
    Some(n)
}

/// Every message of both streams.
pub async fn read_all(js: &jetstream::Context) -> Vec<Published> {
    let mut v = read_stream(js, "MES_EVENTS").await;
    v.extend(read_stream(js, "MES_PV").await);
    v
}

/// Asserts the stream holds exactly the committed rows, once each, and each key's events in
/// commit order (per-key versions 1, 2, 3, … with no gap), and that the outbox agrees.
pub async fn assert_exactly_once_in_order(db: &TestDb, published: &[Published], committed: &[i64]) {
    let client = db.client().await;
    let rows = client
        .query(
            "select id, key, key_version, stream, stream_seq from mes_events.published",
            &[],
        )
        .await
        .unwrap();
    let by_id: HashMap<i64, (String, i64, Option<String>, Option<i64>)> = rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3), r.get(4))))
        .collect();

    let mut seen = HashMap::new();
    for p in published {
        if let Some(prev) = seen.insert(p.outbox_id, p.seq) {
            panic!(
                "outbox row {} published twice: stream seqs {prev} and {}",
                p.outbox_id, p.seq
            );
        }
    }
    let mut missing: Vec<i64> = committed
        .iter()
        .copied()
        .filter(|id| !seen.contains_key(id))
        .collect();
    missing.sort();
    assert!(
        missing.is_empty(),
        "{} committed events never published, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert_eq!(
        published.len(),
        committed.len(),
        "the stream holds events nobody committed"
    );

    let mut next_version: HashMap<&str, i64> = HashMap::new();
    // Within a stream, stream order; a key never spans streams in these tests.
    for p in published {
        let (key, version, stream, seq) = by_id
            .get(&p.outbox_id)
            .expect("published row exists in the outbox");
        assert_eq!(&p.key, key);
        assert!(
            p.subject
                .ends_with(&format!(".{}", mes_events::event::subject::key_token(key))),
            "{}",
            p.subject
        );
        // Versions are taken under the key's lock, so they are commit order; a discarded row
        // leaves a gap, nothing may ever go backwards.
        let prev = next_version.entry(key.as_str()).or_insert(0);
        assert!(
            *version > *prev,
            "key {key}: event version {version} arrived after version {prev} (out of commit order)"
        );
        *prev = *version;
        assert_eq!(
            seq.map(|s| s as u64),
            Some(p.seq),
            "outbox row {} records the wrong stream sequence",
            p.outbox_id
        );
        assert!(stream.is_some());
    }
}

/// Commits `total` events from `writers` concurrent writers over `keys` keys; each transaction
/// emits 1–5 events and rolls back with probability `rollback`. Returns the committed ids.
pub async fn write_events(
    db: &TestDb,
    writers: usize,
    total: usize,
    keys: usize,
    rollback: f64,
) -> Vec<i64> {
    let per_writer = total / writers;
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let mut client = db.client().await;
        tasks.push(tokio::spawn(async move {
            let mut committed = Vec::with_capacity(per_writer);
            let mut rng = rand::rngs::StdRng::from_os_rng();
            while committed.len() < per_writer {
                let n = rng.random_range(1..=5).min(per_writer - committed.len());
                let tx = client.transaction().await.unwrap();
                let mut ids = Vec::new();
                let mut aborted = false;
                for _ in 0..n {
                    let key = format!("order-{}", rng.random_range(0..keys));
                    let data = order_data(&key);
                    match mes_events::store::write::emit(
                        &tx,
                        ORDER_TYPE,
                        &key,
                        &data,
                        &Default::default(),
                    )
                    .await
                    {
                        Ok(id) => ids.push(id),
                        // Two transactions taking the same keys in opposite orders: PostgreSQL
                        // aborts one, as a real MES would see it, and it emits nothing.
                        Err(e)
                            if e.code()
                                == Some(
                                    &tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED,
                                ) =>
                        {
                            aborted = true;
                            break;
                        }
                        Err(e) => panic!("emit: {e}"),
                    }
                }
                if aborted || rng.random_bool(rollback) {
                    tx.rollback().await.unwrap();
                } else {
                    tx.commit().await.unwrap();
                    committed.extend(ids);
                }
            }
            committed
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// Commits `total` events from one writer over `keys` keys, ten every `pause`, so that writing
/// spans a while (outages and kills then hit a live stream).
pub async fn write_events_paced(
    db: &TestDb,
    total: usize,
    keys: usize,
    pause: Duration,
) -> Vec<i64> {
    write_paced(db, keys, pause, |written| (total - written).min(10)).await
}

/// Like [`write_events_paced`], until `stop` is cancelled.
pub async fn write_events_until(
    db: &TestDb,
    keys: usize,
    pause: Duration,
    stop: &CancellationToken,
) -> Vec<i64> {
    write_paced(
        db,
        keys,
        pause,
        |_| if stop.is_cancelled() { 0 } else { 10 },
    )
    .await
}

async fn write_paced(
    db: &TestDb,
    keys: usize,
    pause: Duration,
    next: impl Fn(usize) -> usize,
) -> Vec<i64> {
    let client = db.client().await;
    let mut committed = Vec::new();
    let mut i = 0;
    loop {
        let n = next(committed.len()) as i32;
        if n == 0 {
            break;
        }
        // Ten at a time, in one statement, keeps the pace without a round trip per event.
        let rows = client
            .query(
                "select mes_events.emit($1, k, jsonb_build_object(
                            'orderId', k, 'previousStatus', 'released', 'status', 'running',
                            'hierarchyScope', jsonb_build_object('site', 'bsl')))
                   from generate_series($2::int, $2 + $4 - 1) g,
                        lateral (select 'order-' || ((g * 7919) % $3) as k) key",
                &[&ORDER_TYPE, &i, &(keys as i32), &n],
            )
            .await
            .unwrap();
        committed.extend(rows.iter().map(|r| r.get::<_, i64>(0)));
        i += n;
        tokio::time::sleep(pause).await;
    }
    committed
}

/// Pending rows in the outbox.
pub async fn pending(db: &TestDb) -> i64 {
    let c = db.client().await;
    mes_events::store::operator::counts(&c)
        .await
        .unwrap()
        .pending
}
