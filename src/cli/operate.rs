//! The long-running commands: `relay`, `push` and `demo`.
//!
//! Never holds state of its own: the relay and the demo own their loops; this wires the
//! signals and prints the outcome.

use mes_events::config::Config;
use mes_events::{demo, nats, relay};

use super::args::{DeclArgs, DemoArgs, PushArgs};
use super::exit;
use super::signal::Shutdown;

pub async fn relay(cfg: &Config) -> anyhow::Result<u8> {
    let shutdown = Shutdown::on_signal();
    let (protection, exposed) = mes_events::store::session::protection(&cfg.database.url);
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        database = %mes_events::store::session::redacted(&cfg.database.url),
        database_tls = %protection,
        nats = %nats::redact(&cfg.nats.url),
        identity = %nats::identity(&cfg.nats),
        inbox_prefix = %cfg.nats.inbox_prefix(),
        streams = %cfg.relay.streams.join(","),
        source = %cfg.profile().source,
        mode = %cfg.events.mode,
        "mes-events relay starting"
    );
    if exposed {
        tracing::warn!("the connection to PostgreSQL is {protection}: anyone on the path can read or forge the plant's events; set database.sslmode = \"verify-full\" and database.sslrootcert");
    }
    for p in cfg.placeholders() {
        tracing::warn!("{p}");
    }
    // Named as the lease names its holder (`host:pid`), so the server's connection list tells
    // which relay process is which.
    let name = format!(
        "mes-events relay {}:{}",
        mes_events::host::name(),
        std::process::id()
    );
    let _http = serve_http(cfg, &shutdown).await?;
    let client = nats::connect(&cfg.nats, &name, true).await?;
    least_privilege(
        cfg,
        &client,
        "relay",
        "run it with its own seed: nats.nkey = <the folder of `mes-events provision credentials`>/relay.nk (MES_EVENTS_NATS__NKEY)",
    )
    .await?;
    let js = nats::jetstream(client, &cfg.nats, cfg.relay.max_in_flight);
    relay::run(cfg, js, shutdown.token.clone()).await?;
    Ok(exit::OK)
}

/// Refuses an identity that may manage JetStream for a service that must not (the relay, the
/// push service): with credentials set, that is the admin's seed by mistake, and the service
/// would run with every right on the bus. Without credentials it is a development server
/// without authorization: said once. Not checked while NATS is still away at start.
async fn least_privilege(
    cfg: &Config,
    client: &async_nats::Client,
    what: &str,
    fix: &str,
) -> Result<(), exit::Usage> {
    let up = tokio::time::timeout(cfg.nats.request_timeout, async {
        while client.connection_state() != async_nats::connection::State::Connected {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    if up.is_err() || nats::rights(client).await == nats::Rights::Limited {
        return Ok(());
    }
    let identity = nats::identity(&cfg.nats);
    if cfg.nats.nkey.is_some() || cfg.nats.credentials.is_some() {
        return Err(exit::Usage(format!(
            "{identity} may manage JetStream (the server answered it on $JS.API.INFO, which the {what}'s own identity may not ask): the {what} would run with every right on the bus; {fix}. Nothing was sent"
        )));
    }
    tracing::warn!(
        "the {what} connects with no credentials to a server that lets it manage JetStream: right for a development server; in production include the generated auth.conf in nats-server, and {fix}"
    );
    Ok(())
}

/// `push`: every pushed system of the declaration until a signal. A declaration, secret or
/// credential problem stops it before anything is sent (exit 2), every problem at once.
pub async fn push(cfg: &Config, args: PushArgs) -> anyhow::Result<u8> {
    let shutdown = Shutdown::on_signal();
    let dir = args.decl.dir.unwrap_or_else(|| cfg.provision.dir.clone());
    let decl = declaration(&dir)?;
    let credentials = args.credentials.or_else(|| cfg.push.credentials.clone());
    let liveness = mes_events::push::liveness_for(&decl);
    let targets = mes_events::push::targets(&decl, &liveness, &shutdown.token).map_err(|e| {
        exit::Usage(format!(
            "{e}
nothing was sent (declaration {})",
            dir.display()
        ))
    })?;
    if let Some(dir) = &credentials {
        let missing: Vec<String> = targets
            .iter()
            .map(|t| dir.join(format!("{}.nk", t.endpoint.system)))
            .filter(|p| !p.is_file())
            .map(|p| p.display().to_string())
            .collect();
        if !missing.is_empty() {
            return Err(exit::Usage(format!(
                "no seed for {}: run `mes-events provision credentials --out {}` (nothing was sent)",
                missing.join(", "),
                dir.display()
            ))
            .into());
        }
    }
    // Each system's consumer is read with that system's seed; without them, with nats.*'s
    // identity, which must not be the admin's.
    if credentials.is_none() {
        let probe = nats::connect(&cfg.nats, "mes-events push (rights)", false).await?;
        least_privilege(
            cfg,
            &probe,
            "push service",
            "give it the folder of `mes-events provision credentials` (--credentials, push.credentials): it then reads each system's consumer with that system's own seed",
        )
        .await?;
    }
    // The same endpoint as the relay's (`http.address`): /metrics, /healthz, /readyz.
    let _http = serve_http(cfg, &shutdown).await?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        nats = %nats::redact(&cfg.nats.url),
        credentials = %credentials.as_deref().map_or("-".into(), |p| p.display().to_string()),
        systems = %targets.iter().map(|t| t.endpoint.system.as_str()).collect::<Vec<_>>().join(","),
        "mes-events push starting"
    );
    mes_events::push::run(
        cfg,
        targets,
        liveness,
        credentials.as_deref(),
        shutdown.token.clone(),
    )
    .await?;
    Ok(exit::OK)
}

/// `push status`: 0 when all is well, 1 when not.
pub async fn push_status(cfg: &Config, decl: DeclArgs, json: bool) -> anyhow::Result<u8> {
    let dir = decl.dir.unwrap_or_else(|| cfg.provision.dir.clone());
    let d = declaration(&dir)?;
    let client = nats::connect(&cfg.nats, "mes-events push status", false).await?;
    let js = nats::jetstream(client, &cfg.nats, 256);
    let rows = mes_events::push::status::gather(&js, &d)
        .await
        .map_err(anyhow::Error::msg)?;
    super::output::push_status(&rows, json)?;
    Ok(if rows.iter().any(|r| r.problem().is_some()) {
        exit::FAILURE
    } else {
        exit::OK
    })
}

/// The process's `/metrics`, `/healthz` and `/readyz` when `http.address` is set (a taken
/// address is a usage error, at start).
async fn serve_http(
    cfg: &Config,
    shutdown: &Shutdown,
) -> Result<Option<tokio_util::task::AbortOnDropHandle<()>>, exit::Usage> {
    match &cfg.http.address {
        Some(address) => Ok(Some(tokio_util::task::AbortOnDropHandle::new(
            mes_events::http::serve(address, shutdown.token.clone())
                .await
                .map_err(|e| exit::Usage(format!("{e}: {}", e.source)))?,
        ))),
        None => Ok(None),
    }
}

/// The declaration under `dir`, or every problem in it (exit 2), nothing sent.
fn declaration(dir: &std::path::Path) -> Result<mes_events::provision::Declaration, exit::Usage> {
    mes_events::provision::load_dir(dir).map_err(|errors| {
        exit::Usage(format!(
            "{}\n{} problem(s) in the declaration under {}; nothing was sent",
            errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\nerror: "),
            errors.len(),
            dir.display()
        ))
    })
}

/// `relay status`: 0 when healthy, 1 when not.
pub async fn status(cfg: &Config, json: bool) -> anyhow::Result<u8> {
    let s = relay::status::gather(cfg).await.map_err(|e| match e {
        // Not set up: exit 3, with what to run.
        relay::status::StatusError::Schema(m) => anyhow::Error::new(m),
        e => anyhow::Error::new(e).context(format!(
            "cannot read the relays' state from PostgreSQL at {}",
            mes_events::store::session::redacted(&cfg.database.url)
        )),
    })?;
    super::output::relay_status(&s, json)?;
    Ok(if s.healthy { exit::OK } else { exit::FAILURE })
}

/// `relay losses`: 1 when a loss left events unrestored and is not accepted yet.
pub async fn losses(cfg: &Config, all: bool, json: bool) -> anyhow::Result<u8> {
    let session = super::write::connect(cfg, "mes-events relay losses").await?;
    let losses = mes_events::store::kept::losses(&session.client, all).await?;
    super::output::losses(&losses, json)?;
    let open = losses
        .iter()
        .any(|l| l.accepted_at.is_none() && l.unrestorable() > 0);
    Ok(if open { exit::FAILURE } else { exit::OK })
}

/// `relay accept-loss`: each in order; the first that cannot be accepted stops the rest.
pub async fn accept_loss(cfg: &Config, ids: &[i64], reason: &str) -> anyhow::Result<u8> {
    let session = super::write::connect(cfg, "mes-events relay accept-loss").await?;
    let by = format!("{}@{}", super::write::who(), mes_events::host::name());
    for &id in ids {
        mes_events::store::kept::accept(&session.client, id, &by, reason).await?;
        println!("loss {id} accepted by {by}; it no longer fails `relay status` and /readyz");
    }
    Ok(exit::OK)
}

/// GET /readyz on the relay's endpoint: 0 when ready, 1 when not (or nothing answers).
pub async fn ready(cfg: &Config) -> anyhow::Result<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(address) = &cfg.http.address else {
        return Err(exit::Usage(
            "http.address is not set: the relay serves no /readyz (set MES_EVENTS_HTTP__ADDRESS)"
                .into(),
        )
        .into());
    };
    // A listening address of 0.0.0.0 is reached on loopback.
    let target = address.replace("0.0.0.0", "127.0.0.1");
    let answer = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let mut s = tokio::net::TcpStream::connect(&target).await?;
        s.write_all(format!("GET /readyz HTTP/1.0\r\nHost: {target}\r\n\r\n").as_bytes())
            .await?;
        let mut text = String::new();
        s.read_to_string(&mut text).await?;
        Ok::<_, std::io::Error>(text)
    })
    .await;
    match answer {
        Ok(Ok(text)) => {
            let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
            print!("{body}");
            Ok(
                if text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.0 200") {
                    exit::OK
                } else {
                    1
                },
            )
        }
        Ok(Err(e)) => {
            println!("not ready: nothing answers at {target}: {e}");
            Ok(1)
        }
        Err(_) => {
            println!("not ready: no answer from {target} within 5 s");
            Ok(1)
        }
    }
}

pub async fn demo(cfg: &Config, args: DemoArgs) -> anyhow::Result<u8> {
    let shutdown = Shutdown::on_signal();
    let opts = demo::Options {
        duration: args.duration,
        rate: args.rate,
        keep: args.keep,
        nats_url: args.nats,
        nats_dir: args.nats_dir.unwrap_or_else(|| cfg.provision.dir.clone()),
    };
    let s = demo::run(cfg, &opts, shutdown.token.clone()).await?;
    println!("{s}");
    Ok(if s.complete() {
        exit::OK
    } else {
        exit::FAILURE
    })
}
