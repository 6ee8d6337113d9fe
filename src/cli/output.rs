//! The tables and JSON lines the commands print.
//!
//! Prints only: never decides an exit code and never calls a server.

use mes_events::provision::apply::ConsumerStatus;
use mes_events::read::deadletter::DeadLetter;
use mes_events::relay::status::Status;
use mes_events::store::operator::{DiscardedRow, RejectedRow};

/// A value's JSON, cut to `max` characters for a table.
fn short(v: &serde_json::Value, max: usize) -> String {
    let s = v.to_string();
    if s.chars().count() > max {
        format!("{}…", s.chars().take(max).collect::<String>())
    } else {
        s
    }
}

/// Times as every table shows them: RFC 3339, UTC, seconds.
fn utc(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// `outbox rejected`: a table, or one JSON array.
pub fn rejected(rows: &[RejectedRow], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(rows)?);
    } else if rows.is_empty() {
        println!("no rejected rows");
    } else {
        println!(
            "{:>10}  {:<24}  {:<12}  {:>7}  reason",
            "id", "key", "kind", "waiting"
        );
        for r in rows {
            println!(
                "{:>10}  {:<24}  {:<12}  {:>7}  {}",
                r.id, r.key, r.kind, r.waiting, r.reason
            );
            println!(
                "{:>10}  type {}, recorded {}",
                "",
                r.ty,
                utc(&r.recorded_at)
            );
            println!("{:>10}  data {}", "", short(&r.data, 160));
        }
    }
    Ok(())
}

/// `provision status`: a table, or pretty JSON.
pub fn consumer_status(rows: &[ConsumerStatus], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(rows)?);
        return Ok(());
    }
    println!(
        "{:<16} {:<12} {:<22} {:>9} {:>8} {:>8} {:>6}  {:<25} stream first..last",
        "system", "stream", "consumer", "pending", "ack-pend", "redeliv", "paused", "last active"
    );
    for r in rows {
        println!(
            "{:<16} {:<12} {:<22} {:>9} {:>8} {:>8} {:>6}  {:<25} {}..{}{}",
            r.system,
            r.stream,
            r.consumer,
            r.pending,
            r.ack_pending,
            r.redelivered,
            if r.paused { "yes" } else { "no" },
            r.last_active.as_deref().unwrap_or("-"),
            r.stream_first_seq,
            r.stream_last_seq,
            if r.exists {
                ""
            } else {
                "  (missing: run provision apply)"
            }
        );
    }
    Ok(())
}

/// `dead-letters list`: a table, or one JSON object per line.
pub fn dead_letters(list: &[DeadLetter], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(list)?);
    } else if list.is_empty() {
        println!("no dead letters");
    } else {
        println!(
            "{:>6}  {:<20}  {:<15} {:<12} {:<20} {:>10} {:>10}  event",
            "id", "at", "reason", "stream", "consumer", "stream-seq", "deliveries"
        );
        for d in list {
            let event = match (&d.event_type, &d.event_subject, &d.problem) {
                (Some(t), s, _) => format!("{t} {}", s.as_deref().unwrap_or("")),
                (None, _, Some(p)) => format!("({p})"),
                _ => String::new(),
            };
            println!(
                "{:>6}  {:<20}  {:<15} {:<12} {:<20} {:>10} {:>10}  {event}",
                d.id,
                d.at.as_ref().map(utc).unwrap_or_else(|| "-".into()),
                d.reason,
                d.stream,
                d.consumer,
                d.stream_seq,
                d.deliveries
            );
            if let Some(why) = &d.why {
                println!("{:>6}  why: {why}", "");
            }
            if let Some(t) = &d.event_time {
                println!("{:>6}  happened: {}", "", utc(t));
            }
            if let Some(data) = &d.data {
                println!("{:>6}  data: {}", "", short(data, 160));
            }
        }
    }
    Ok(())
}

/// `push status`: one line per pushed consumer, then what is wrong.
pub fn push_status(rows: &[mes_events::push::status::Row], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(rows)?);
        return Ok(());
    }
    if rows.is_empty() {
        println!("no system in the declaration has a [push] table");
        return Ok(());
    }
    for r in rows {
        println!(
            "{} -> {}  ({}/{})",
            r.system, r.endpoint, r.stream, r.consumer
        );
        match &r.state {
            None => println!("  consumer missing"),
            Some(s) => {
                println!(
                    "  waiting {}, in flight or in retry {}, handed out again {}",
                    s.waiting, s.in_flight, s.redelivered
                );
                println!(
                    "  delivering: {}",
                    match s.pinned_since {
                        Some(t) => format!("an instance, since {}", when(Some(t))),
                        None => "no instance pulls".into(),
                    }
                );
                println!("  last delivered {}", when(s.last_delivered));
                println!("  last acked     {}", when(s.last_acked));
                println!(
                    "  dead letters   {}{}",
                    s.dead_letters,
                    s.last_dead_letter
                        .as_ref()
                        .map_or(String::new(), |w| format!(" (last: {w})"))
                );
            }
        }
    }
    let problems: Vec<String> = rows.iter().filter_map(|r| r.problem()).collect();
    if problems.is_empty() {
        println!("all well");
    } else {
        for p in problems {
            println!("problem: {p}");
        }
    }
    Ok(())
}

/// A time as RFC 3339 (UTC, seconds) with how long ago.
fn when(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    match t {
        None => "-".into(),
        Some(t) => {
            let ago = (chrono::Utc::now() - t).to_std().unwrap_or_default();
            format!(
                "{} ({} ago)",
                t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                mes_events::show::duration(std::time::Duration::from_secs(ago.as_secs()))
            )
        }
    }
}

/// `relay status`: a table, or pretty JSON.
pub fn relay_status(s: &Status, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(s)?);
        return Ok(());
    }
    match &s.active {
        Some(a) => println!(
            "active     {}  epoch {}  since {}{}",
            a.holder,
            a.epoch,
            when(a.since),
            a.client_addr
                .as_deref()
                .map(|c| format!("  from {c}"))
                .unwrap_or_default()
        ),
        None => println!("active     none"),
    }
    for sb in &s.standbys {
        println!(
            "standby    {}  connected since {}{}",
            sb.name,
            when(Some(sb.connected_since)),
            sb.client_addr
                .as_deref()
                .map(|c| format!("  from {c}"))
                .unwrap_or_default()
        );
    }
    let o = &s.outbox;
    println!(
        "outbox     {} pending, oldest {}; {} rejected ({} key(s) held)",
        o.pending,
        mes_events::show::duration(std::time::Duration::from_secs(
            o.oldest_pending_seconds.max(0.0) as u64
        )),
        o.rejected,
        o.held_keys
    );
    println!("published  last {}", when(s.last_published_at));
    println!(
        "nats       {} {}",
        s.nats.url,
        if s.nats.reachable {
            "reachable"
        } else {
            "UNREACHABLE"
        }
    );
    if let Some(d) = &s.durability {
        println!(
            "durability {} kept after each PubAck: {}",
            mes_events::show::duration(std::time::Duration::from_secs(d.horizon_seconds as u64)),
            d.basis
        );
    }
    println!();
    println!(
        "{:<20} {:>12} {:>12}  state",
        "stream", "watermark", "last seq"
    );
    for st in &s.streams {
        let num = |n: Option<String>| n.unwrap_or_else(|| "-".into());
        println!(
            "{:<20} {:>12} {:>12}  {}",
            st.stream,
            num(st.watermark.map(|w| w.to_string())),
            num(st.last_sequence.map(|w| w.to_string())),
            st.state
        );
    }
    println!();
    if s.healthy {
        println!("healthy");
    } else {
        println!("NOT HEALTHY");
        for p in &s.problems {
            println!("- {p}");
        }
    }
    Ok(())
}

/// `relay losses`: what streams lost, a block per loss, or one JSON array.
pub fn losses(losses: &[mes_events::store::kept::Loss], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(losses)?);
        return Ok(());
    }
    if losses.is_empty() {
        println!("no losses to accept (`--all` lists every one recorded)");
        return Ok(());
    }
    for l in losses {
        println!(
            "loss {}  stream {}  found {} by {}",
            l.id.unwrap_or_default(),
            l.stream,
            utc(&l.detected_at),
            l.detected_by
        );
        println!(
            "  lost {} event(s) at sequences {}–{}; {} restored, {} could not be",
            l.lost,
            l.lost_from,
            l.lost_to,
            l.restored,
            l.unrestorable()
        );
        if l.unrestorable() > 0 {
            let ids = match (l.unrestorable_ids.first(), l.unrestorable_ids.last()) {
                (Some(a), Some(b)) if a != b => format!("{a}–{b}"),
                (Some(a), _) => a.to_string(),
                _ => "-".into(),
            };
            println!(
                "  gone: outbox ids {ids}, recorded {} to {}",
                l.first_recorded_at.as_ref().map(utc).unwrap_or_default(),
                l.last_recorded_at.as_ref().map(utc).unwrap_or_default()
            );
            println!("  keys: {}", l.unrestorable_keys.join(", "));
        }
        println!("  why: {}", l.durability_basis);
        match (&l.accepted_at, &l.accepted_by, &l.accept_reason) {
            (Some(at), by, Some(why)) => println!(
                "  accepted {} by {}: {why}",
                utc(at),
                by.as_deref().unwrap_or("-")
            ),
            _ if l.unrestorable() > 0 => println!(
                "  not accepted: `mes-events relay accept-loss {} --reason …` once the systems that read {} know",
                l.id.unwrap_or_default(),
                l.stream
            ),
            _ => {}
        }
    }
    Ok(())
}

/// `outbox discarded`: a table, or one JSON array.
pub fn discarded(rows: &[DiscardedRow], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(rows)?);
    } else if rows.is_empty() {
        println!("no discarded rows");
    } else {
        println!(
            "{:>10}  {:<24}  {:<20}  {:<20}  why",
            "id", "key", "discarded", "by"
        );
        for r in rows {
            println!(
                "{:>10}  {:<24}  {:<20}  {:<20}  {}",
                r.id,
                r.key,
                utc(&r.discarded_at),
                r.discarded_by.as_deref().unwrap_or("-"),
                r.discard_reason.as_deref().unwrap_or("-")
            );
            println!(
                "{:>10}  type {}, rejected: {}",
                "",
                r.ty,
                r.reject_reason.as_deref().unwrap_or("-")
            );
            println!("{:>10}  data {}", "", short(&r.data, 160));
        }
    }
    Ok(())
}
