//! `runbook-worker permissions [PATH…] [--output human|json]`: reads runbooks and prints
//! exactly what the identity needs (the Exchange roles, each Graph app role with its id)
//! and the grant script's command line for those. Contacts nothing.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

use runbook_worker::notify::TargetKind;
use runbook_worker::runbook::permissions::required_permissions;

use super::{Context, Output};

#[derive(Debug, clap::Args)]
pub struct PermissionsArgs {
    /// Runbook files or folders (default: the [runbooks] dir setting).
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// `human`: what to grant and why; `json`: one JSON document.
    #[arg(long = "output", alias = "format", value_enum, default_value_t = Output::Human)]
    pub output: Output,
}

pub async fn run(ctx: Context, args: PermissionsArgs) -> anyhow::Result<ExitCode> {
    let paths = if args.paths.is_empty() {
        vec![ctx.settings.runbooks.dir.clone()]
    } else {
        args.paths
    };
    let (runbooks, errors) = super::validate::load_paths(&paths, &ctx.settings.policy);
    if !errors.is_empty() {
        for error in &errors {
            eprintln!("{error}");
        }
        eprintln!(
            "fix the runbooks first (runbook-worker validate): an invalid runbook's needs are unknown"
        );
        return Ok(ExitCode::FAILURE);
    }
    let email = ctx
        .settings
        .notify
        .targets
        .iter()
        .any(|t| TargetKind::parse(&t.kind) == Some(TargetKind::Email));
    let needs = required_permissions(runbooks.iter().map(|rb| rb.as_ref()), email);
    let mut out = std::io::stdout().lock();
    match args.output {
        Output::Json => {
            serde_json::to_writer_pretty(&mut out, &needs).context("cannot write the report")?;
            writeln!(out)?;
        }
        Output::Human => {
            match &needs.exchange {
                Some(exchange) => {
                    writeln!(
                        out,
                        "Exchange Online: app role {} and the directory role \"{}\"",
                        exchange.app_role, exchange.directory_role
                    )?;
                    writeln!(out, "  for {}", exchange.cmdlets.join(", "))?;
                }
                None => writeln!(out, "Exchange Online: nothing (no runbook calls a cmdlet)")?,
            }
            if needs.graph.is_empty() {
                writeln!(out, "Microsoft Graph: nothing")?;
            }
            for role in &needs.graph {
                writeln!(out, "Microsoft Graph: {} ({})", role.role, role.id)?;
                for call in &role.needed_by {
                    writeln!(out, "  for {call}")?;
                }
            }
            for call in &needs.unknown_graph_calls {
                writeln!(
                    out,
                    "Microsoft Graph: unknown for {call}: look its permission up in Microsoft's Graph reference"
                )?;
            }
            writeln!(out, "\nGrant with:\n  {}", needs.grant_command)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
