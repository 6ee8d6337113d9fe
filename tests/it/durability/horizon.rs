//! The horizon: a loss reaching past it is named exactly (ids, keys, times), fails `relay
//! status` and `/readyz` until an operator accepts it, and stops nothing else; and the horizon
//! in force is the server's own, read from its monitoring endpoint, and said.

use std::collections::BTreeSet;
use std::process::Output;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{last_seq, loss_lines, relay, settled_without, write_until};
use crate::support::*;

/// `mes-events ARGS` against `cfg`'s servers.
pub(crate) fn cli(cfg: &mes_events::config::Config, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_mes-events"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("MES_EVENTS_DATABASE__URL", &cfg.database.url)
        .env("MES_EVENTS_NATS__URL", &cfg.nats.url)
        .env("MES_EVENTS_NATS__REQUEST_TIMEOUT", "2s")
        .env("MES_EVENTS_EVENTS__SITE", &cfg.events.site)
        .env("MES_EVENTS_EVENTS__INSTALLATION", &cfg.events.installation)
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap()
}

fn ready(port: u16) -> (u16, String) {
    http_status(port, "/readyz").unwrap_or((0, "nothing answers".into()))
}

#[tokio::test]
async fn a_loss_longer_than_the_horizon_is_named_exactly_and_fails_status_until_accepted() {
    let mut env = Env::new().await;
    let port = free_port();
    // Kept a second only, and forgotten as soon as it may be: the loss will reach past it.
    let mut relay = relay(
        &env.cfg,
        port,
        &[
            ("MES_EVENTS_RELAY__DURABILITY_HORIZON", "1s"),
            ("MES_EVENTS_RELAY__PURGE_INTERVAL", "200ms"),
        ],
    );
    let js = env.js().await;
    let stop = CancellationToken::new();
    let Env { nats, db, .. } = &mut env;
    let cut = async {
        eventually(Duration::from_secs(30), "publishing under way", || async {
            last_seq(&js, "MES_EVENTS").await.unwrap_or(0) > 300
        })
        .await;
        let image = power::image(&[nats.local()]);
        tokio::time::sleep(Duration::from_secs(8)).await;
        stop.cancel();
        eventually(
            Duration::from_secs(60),
            "everything acknowledged",
            || async { pending(db).await == 0 },
        )
        .await;
        // The last seconds are still kept, the first ones no longer.
        power::cut(&mut [nats.local()], image);
    };
    let (committed, ()) = tokio::join!(write_until(db, 2, 100, &stop), cut);

    let c = env.db.client().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let loss = loop {
        if let Some(l) = mes_events::store::kept::losses(&c, false)
            .await
            .unwrap()
            .pop()
        {
            break l;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no loss recorded within 60 s; the relay said:\n{}",
            relay.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // What the stream really lacks, once the relay has published what it could restore.
    settled_without(&env, &committed, loss.unrestorable()).await;
    let in_stream: BTreeSet<i64> = read_all(&env.js().await)
        .await
        .iter()
        .map(|p| p.outbox_id)
        .collect();
    let gone: Vec<i64> = committed
        .iter()
        .copied()
        .filter(|id| !in_stream.contains(id))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert!(
        !gone.is_empty(),
        "the loss must reach past the horizon for this test to mean anything"
    );
    // What was kept is back once each, each key in order (with the gap of what is gone).
    let kept: Vec<i64> = committed
        .iter()
        .copied()
        .filter(|id| in_stream.contains(id))
        .collect();
    env.assert_published_exactly_once(&kept).await;
    assert_eq!(
        loss.unrestorable_ids, gone,
        "exactly the events that are gone"
    );
    let still: i64 = c
        .query_one(
            "select (select count(*) from mes_events.published where id = any($1))
                  + (select count(*) from mes_events.outbox where id = any($1))",
            &[&gone],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        still, 0,
        "what is gone is neither pending nor logged as published"
    );
    assert!(
        !loss.unrestorable_keys.is_empty()
            && loss.unrestorable_keys.len() <= gone.len()
            && loss
                .unrestorable_keys
                .iter()
                .all(|k| k.starts_with("order-"))
            && loss.first_recorded_at.is_some()
            && loss.first_recorded_at <= loss.last_recorded_at,
        "{loss:?}"
    );
    assert_eq!(loss.lost, loss.restored + gone.len() as i64, "{loss:?}");
    assert!(
        loss.restored > 0,
        "the last second before the cut was still kept: {loss:?}"
    );

    let log = relay.stderr();
    let told = loss_lines(&log);
    assert_eq!(told.len(), 1, "one ERROR line for the loss:\n{log}");
    let first = gone[0].to_string();
    for part in ["COULD NOT BE RESTORED", first.as_str(), "accept-loss"] {
        assert!(told[0].contains(part), "{part} in: {}", told[0]);
    }
    eprintln!("the relay said: {}", told[0]);

    // Not healthy, not ready, until accepted; listed with what is gone.
    let o = cli(&env.cfg, &["relay", "status"]);
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("could not be restored"),
        "{}",
        output_text(&o)
    );
    let id = loss.id.unwrap().to_string();
    let o = cli(&env.cfg, &["relay", "losses", "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    let listed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        listed[0]["unrestorable_ids"].as_array().unwrap().len(),
        gone.len()
    );
    eventually(
        Duration::from_secs(20),
        "/readyz names the loss",
        || async {
            let (status, why) = ready(port);
            status == 503 && why.contains("could not be restored")
        },
    )
    .await;

    // Nothing else stops: both streams take new events meanwhile.
    let before = messages_in_streams(&env.js().await).await.unwrap();
    for i in 0..5 {
        emit_order(&c, &format!("after-{i}")).await;
        emit_pv(&c, &format!("pv-{i}")).await;
    }
    eventually(Duration::from_secs(30), "new events published", || async {
        messages_in_streams(&env.js().await).await == Some(before + 10)
    })
    .await;

    let o = cli(
        &env.cfg,
        &[
            "relay",
            "accept-loss",
            &id,
            "--reason",
            "ERP told, orders re-keyed",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    let o = cli(
        &env.cfg,
        &["relay", "accept-loss", &id, "--reason", "again"],
    );
    assert_eq!(
        o.status.code(),
        Some(2),
        "accepting twice is refused: {}",
        output_text(&o)
    );
    let o = cli(&env.cfg, &["relay", "status"]);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    eventually(Duration::from_secs(20), "ready again", || async {
        ready(port).0 == 200
    })
    .await;
    let o = cli(&env.cfg, &["relay", "losses", "--all"]);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("ERP told, orders re-keyed"),
        "{}",
        output_text(&o)
    );
    relay.terminate().await;
}

#[tokio::test]
async fn the_horizon_is_read_from_the_servers_monitoring_endpoint_and_said() {
    let monitoring = free_port();
    let nats = NatsServer::start_with_config(&format!("http: \"127.0.0.1:{monitoring}\"\n")).await;
    let env = Env::on(nats).await;
    let url = format!("http://127.0.0.1:{monitoring}");
    let port = free_port();
    let mut relay = relay(&env.cfg, port, &[("MES_EVENTS_NATS__MONITORING_URL", &url)]);
    let s = eventually_value(
        Duration::from_secs(30),
        "relay status names the horizon",
        || async {
            let o = cli(&env.cfg, &["relay", "status", "--json"]);
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
            v["durability"].is_object().then_some(v)
        },
    )
    .await;
    // nats-server's default, read from the server: 2m, plus the margin.
    assert_eq!(s["durability"]["horizon_seconds"], 155.0, "{s:#}");
    let basis = s["durability"]["basis"].as_str().unwrap();
    assert!(
        basis.contains("syncs every 2m") && basis.contains(&url),
        "{basis}"
    );
    let o = cli(&env.cfg, &["relay", "status"]);
    assert!(
        output_text(&o).contains("durability 2m 35s kept"),
        "{}",
        output_text(&o)
    );
    eventually(Duration::from_secs(10), "said at start-up", || async {
        relay.stderr().contains("durability horizon")
    })
    .await;
    let m = crate::observe::scrape(port);
    assert_eq!(
        crate::observe::total(&m, "mes_events_durability_horizon_seconds"),
        155.0
    );
    relay.terminate().await;
}
