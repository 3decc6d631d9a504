//! `runbook-worker notify test TARGET`: sends a test message to one `[[notify.targets]]`
//! target and prints what happened (status, the receiver's error, a hint); exit 0 when it
//! was delivered, 1 otherwise. The message says it is a test (`type` `notify.test`).

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::anyhow;

use runbook_worker::clock::{SharedClock, SystemClock};
use runbook_worker::identity::{IdentityEnvironment, TokenProvider, TokenSource};
use runbook_worker::notify::{
    DeliveryOutcome, DeliveryReport, Dispatcher, GraphMailSender, MailSender, TargetKind,
    graph_client,
};

use super::{Context, Output};

#[derive(Debug, clap::Args)]
pub struct NotifyArgs {
    #[command(subcommand)]
    pub command: NotifyCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum NotifyCommand {
    /// Send a test message to TARGET and print what happened; exit 0 when delivered.
    Test(TestArgs),
}

#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// The target's `name` in [[notify.targets]].
    pub target: String,
    /// Output format.
    #[arg(long = "output", alias = "format", value_enum, default_value_t = Output::Human)]
    pub output: Output,
}

pub async fn run(ctx: Context, args: NotifyArgs) -> anyhow::Result<ExitCode> {
    let NotifyCommand::Test(args) = args.command;
    let settings = &ctx.settings.notify;
    let clock: SharedClock = Arc::new(SystemClock);
    let wants_mail = settings
        .targets
        .iter()
        .any(|t| t.name == args.target && TargetKind::parse(&t.kind) == Some(TargetKind::Email));
    // Only an email target needs the identity; a webhook test must work without one.
    let provider = if wants_mail {
        let env = IdentityEnvironment::from_map(&ctx.env);
        Some(
            TokenProvider::from_settings(&ctx.settings.identity, &env)
                .map_err(|e| anyhow!("{e}"))?,
        )
    } else {
        None
    };
    let mail = match &provider {
        Some(provider) => {
            let base = settings.graph_endpoint.as_url().clone();
            let tokens: Arc<dyn TokenSource> = provider.clone();
            let sender: Arc<dyn MailSender> = Arc::new(GraphMailSender::new(
                tokens,
                base,
                graph_client(settings)?,
                clock.clone(),
            ));
            Some(sender)
        }
        None => None,
    };
    // `http.public_url` does not exist yet: the test message links nowhere.
    let dispatcher = Dispatcher::new(settings, mail, None, clock)?;
    let sent = dispatcher.send_test(&args.target).await;
    if let Some(provider) = provider {
        provider.shutdown().await;
    }
    let report = sent?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Human => print!("{}", human(&report)),
    }
    Ok(match report.outcome {
        DeliveryOutcome::Delivered { .. } => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    })
}

fn human(report: &DeliveryReport) -> String {
    let mut out = format!(
        "target:   {} ({})\nmessage:  {}\nattempts: {}\n",
        report.target, report.kind, report.message_id, report.attempts
    );
    match &report.outcome {
        DeliveryOutcome::Delivered { status } => {
            out.push_str(&format!("result:   delivered ({status})\n"));
        }
        DeliveryOutcome::Gone { status } => out.push_str(&format!(
            "result:   endpoint disabled ({status} Gone)\nhint:     the receiver says it no longer takes messages: fix or replace the URL\n"
        )),
        DeliveryOutcome::Failed {
            status,
            error,
            hint,
        } => {
            out.push_str("result:   failed\n");
            if let Some(status) = status {
                out.push_str(&format!("status:   {status}\n"));
            }
            out.push_str(&format!("error:    {error}\n"));
            if let Some(hint) = hint {
                out.push_str(&format!("hint:     {hint}\n"));
            }
        }
        other => out.push_str(&format!("result:   {}\n", other.as_str())),
    }
    out
}
