//! The read side's commands: `tail`, `dead-letters list | resend`, `replay`.
//!
//! Never changes a consumer without first saying what it will do (replay asks, or takes `--yes`).

use mes_events::config::Config;
use mes_events::nats;
use mes_events::read::{deadletter, replay as r, tail};

use super::args::{DeadLetterCommand, ReplayArgs, TailArgs};
use super::exit::{self, Usage};
use super::output;
use super::signal::Shutdown;

pub async fn tail(cfg: &Config, args: TailArgs) -> anyhow::Result<u8> {
    let shutdown = Shutdown::on_signal();
    let client = nats::connect(&cfg.nats, "mes-events tail", false).await?;
    let js = nats::jetstream(client.clone(), &cfg.nats, 64);
    let source = match (args.subject, args.consumer) {
        (_, Some(name)) => tail::Source::Consumer {
            stream: args.stream,
            name,
            until_caught_up: args.until_caught_up,
        },
        (Some(subject), None) => tail::Source::Subject(subject),
        (None, None) => unreachable!("clap requires one"),
    };
    tail::run(
        &client,
        &js,
        &source,
        args.json,
        args.count,
        std::io::stdout().lock(),
        shutdown.token.clone(),
    )
    .await?;
    Ok(exit::OK)
}

pub async fn dead_letters(cfg: &Config, cmd: DeadLetterCommand) -> anyhow::Result<u8> {
    let client = nats::connect(&cfg.nats, "mes-events dead-letters", false).await?;
    let js = nats::jetstream(client, &cfg.nats, 64);
    match cmd {
        DeadLetterCommand::List { stream, json } => {
            let list = deadletter::list(&js, &stream).await?;
            output::dead_letters(&list, json)?;
        }
        DeadLetterCommand::Resend { id, stream } => {
            let subject = deadletter::resend(&js, &stream, id).await?;
            println!("dead letter {id} sent back on {subject}");
        }
    }
    Ok(exit::OK)
}

pub async fn replay(cfg: &Config, args: ReplayArgs) -> anyhow::Result<u8> {
    let client = nats::connect(&cfg.nats, "mes-events replay", false).await?;
    let js = nats::jetstream(client, &cfg.nats, 64);
    let plan = r::plan(&js, &args.stream, &args.consumer, args.from).await?;
    println!(
        "consumer {}/{}: now acked up to stream sequence {} with {} pending; the stream's last sequence is {}.\nreplay from {}: {} event(s) will be delivered to it again; {} event(s) it has not acknowledged will be skipped.",
        plan.stream,
        plan.consumer,
        plan.acked_up_to,
        plan.pending_now,
        plan.stream_last_seq,
        plan.from,
        plan.redeliver,
        plan.skip
    );
    if let Some(why) = &plan.beyond_the_tail {
        if !args.allow_skip {
            return Err(Usage(format!(
                "refused: {why}. Pass --allow-skip to move it there anyway; nothing changed"
            ))
            .into());
        }
        println!("allowed (--allow-skip): {why}");
    }
    if !args.yes {
        use std::io::IsTerminal;
        if !std::io::stdin().is_terminal() {
            return Err(
                Usage("not confirmed: pass --yes to replay without a prompt".into()).into(),
            );
        }
        eprint!("proceed? [y/N] ");
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            println!("nothing changed");
            return Ok(exit::OK);
        }
    }
    r::apply(&js, &plan).await?;
    println!(
        "consumer {}/{} now delivers from {}",
        plan.stream, plan.consumer, plan.from
    );
    Ok(exit::OK)
}
