//! `runbook-worker serve [--simulate]`: the long-running worker. Builds the app from the
//! settings, turns SIGHUP into a reload and SIGTERM/SIGINT into a graceful shutdown, and
//! exits 0 once everything is recorded.

use std::process::ExitCode;

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use runbook_worker::app::{App, AppOptions};

use super::{Context, TargetArgs};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub target: TargetArgs,
}

pub async fn run(ctx: Context, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let host_name = super::host_name(&ctx.env);
    let options = AppOptions {
        host_name,
        ..AppOptions::default()
    };
    // Signal streams are registered before anything starts so that a signal during start-up
    // is not lost.
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let mut hangup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;

    let components = ctx
        .components(args.target)
        .await
        .context("the worker cannot start")?;
    let app = App::from_components(components, options)
        .await
        .context("the worker cannot start")?;
    if args.target.simulate {
        eprintln!("runbook-worker: dashboard at http://{}/", app.http_addr());
    }

    let scheduler = app.scheduler();
    let reloads = tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the runbooks folder");
            scheduler.reload();
        }
    });
    let shutdown = async move {
        let which = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        tracing::info!(signal = which, "shutting down gracefully");
    };
    let result = app.run_until_stopped(shutdown).await;
    reloads.abort();
    let _ = reloads.await;
    result.context("the worker stopped with an error")?;
    Ok(ExitCode::SUCCESS)
}
