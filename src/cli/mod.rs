//! The command line: one file per subcommand, each with its clap arguments and a `run`.
//! This is the only place (with `main.rs`) that uses `anyhow` and reads the environment.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use runbook_worker::app::{ComponentOptions, Components, SIMULATED_MAILBOXES, Target};
use runbook_worker::settings::{self, LogFormat, Settings};
use runbook_worker::telemetry;

#[derive(Debug, Parser)]
#[command(
    name = "runbook-worker",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("RUNBOOK_WORKER_GIT_COMMIT"), ")"),
    about = "Runs Exchange Online admin runbooks on a schedule with an Azure managed identity"
)]
pub struct Cli {
    /// Settings file (default: runbook-worker.toml in the working directory, when present).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Log format; default: human on a terminal, JSON otherwise.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,

    /// Log filter such as `info` or `runbook_worker=debug` (default from [log] level).
    #[arg(long, global = true)]
    pub log_level: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Get a token from the managed identity and show what an operator needs to debug
    /// permissions (never the token itself unless --raw).
    Token(token::TokenArgs),
    /// Check runbook files (syntax, keys, cron, time zones, templates, cmdlet policy)
    /// without contacting anything; exit 1 when any is invalid.
    Validate(validate::ValidateArgs),
    /// Print what the identity needs for the runbooks: the Exchange roles, each Microsoft
    /// Graph app role with its id, and the grant script's command line.
    Permissions(permissions::PermissionsArgs),
    /// List recorded jobs, newest first (reads <state.dir>/history.sqlite3).
    Jobs(jobs::JobsArgs),
    /// Show one job with its step counts and streams.
    Job(jobs::JobArgs),
    /// Run the worker: schedules, hot reload, job history, HTTP API and dashboard
    /// (`--simulate` runs it against a simulated tenant, no Azure needed).
    Serve(serve::ServeArgs),
    /// Print a runbook's next fire times in its time zone and in UTC.
    Next(next::NextArgs),
    /// Run a runbook once, now, in the foreground (or only plan its writes with
    /// --dry-run); records the job in the history; exit 0 only when it Completed.
    Run(run::RunArgs),
    /// Run one Exchange Online cmdlet with the worker's identity and settings and print the
    /// records (JSON lines, or a table on a terminal).
    Invoke(invoke::InvokeArgs),
    /// Check identity, Exchange permissions, runbooks, state, clock and coordination, and
    /// say what to fix; exit 1 when any check fails.
    Doctor(doctor::DoctorArgs),
    /// GET the worker's /healthz (or /readyz) on the local listen address; exit 0 when it
    /// answers 2xx (for HEALTHCHECK in images without curl).
    Probe(probe::ProbeArgs),
    /// Notification targets: `notify test TARGET` sends a test message and prints what
    /// happened; exit 0 when it was delivered.
    Notify(notify::NotifyArgs),
    /// Print a shell completion script: `runbook-worker completions bash >
    /// /etc/bash_completion.d/runbook-worker` (also zsh, fish, elvish, powershell).
    Completions(CompletionsArgs),
}

#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

mod doctor;
mod invoke;
mod jobs;
mod next;
mod notify;
mod permissions;
mod probe;
mod run;
mod serve;
mod token;
mod validate;

/// What every subcommand gets.
pub struct Context {
    pub settings: Settings,
    pub env: HashMap<String, String>,
}

// Exit statuses besides 0 (`ExitCode::SUCCESS`) and 1 (`ExitCode::FAILURE`, also every
// error a command returns). Each is in the table of docs/cli.md ("Exit codes"), which a
// test checks.

/// The exit status of a mistake on the command line (an unknown flag, a missing argument):
/// sysexits' EX_USAGE, apart from every command's own statuses.
pub const EXIT_USAGE: u8 = 64;
/// `run`: the job ended CompletedWithErrors.
pub const EXIT_COMPLETED_WITH_ERRORS: u8 = 2;
/// `run`: the job TimedOut.
pub const EXIT_TIMED_OUT: u8 = 3;
/// `invoke`: the call ran but Exchange reported non-terminating errors.
pub const EXIT_NON_TERMINATING_ERRORS: u8 = 3;
/// `run`: the job was Cancelled (Ctrl-C), as a shell reports SIGINT.
pub const EXIT_CANCELLED: u8 = 130;

/// `--output` of every command: `human` for people, `json` for programs. `text` and
/// `table` (the older names) are accepted for `human`, and `--format` for `--output`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// For people: aligned columns, summaries, colours on a terminal.
    #[value(alias = "text", alias = "table")]
    Human,
    /// For programs: the same JSON as the HTTP API where there is an equivalent.
    Json,
}

/// `--simulate`, for every command that talks to Azure.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct TargetArgs {
    /// Talk to an in-process simulated managed identity and Exchange Online tenant (a few
    /// hundred mailboxes) on 127.0.0.1 instead of Azure: try anything without a subscription.
    #[arg(long)]
    pub simulate: bool,
}

impl TargetArgs {
    pub fn target(self) -> Target {
        if self.simulate {
            Target::Simulated
        } else {
            Target::Settings
        }
    }
}

/// This host's name (`HOSTNAME`, else `/etc/hostname`): the default replica id.
pub fn host_name(env: &HashMap<String, String>) -> Option<String> {
    env.get("HOSTNAME")
        .cloned()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

impl Context {
    /// The worker's parts for a command (see `runbook_worker::app::Components`), pointing at
    /// Azure or at the simulators.
    pub async fn components(self, target: TargetArgs) -> anyhow::Result<Components> {
        let simulated = target.simulate;
        let components = Components::build(
            self.settings,
            &self.env,
            ComponentOptions {
                target: target.target(),
                ..ComponentOptions::default()
            },
        )
        .await?;
        if simulated {
            eprintln!(
                "runbook-worker: simulating the managed identity and an Exchange Online tenant with {SIMULATED_MAILBOXES} mailboxes on 127.0.0.1"
            );
        }
        Ok(components)
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Completions(args) = &cli.command {
        // Needs no settings: it must work before any are written.
        return Ok(completions(args));
    }
    let env: HashMap<String, String> = std::env::vars().collect();
    let cwd = std::env::current_dir().context("cannot read the working directory")?;
    let settings = settings::load(cli.config.as_deref(), &cwd, &env)?;

    let format = cli.log_format.unwrap_or(settings.log.format);
    let level = cli
        .log_level
        .clone()
        .or_else(|| env.get("RUST_LOG").cloned())
        .unwrap_or_else(|| settings.log.level.clone());
    telemetry::init(format, &level);

    let ctx = Context { settings, env };
    match cli.command {
        Command::Token(args) => token::run(ctx, args).await,
        Command::Validate(args) => validate::run(ctx, args).await,
        Command::Permissions(args) => permissions::run(ctx, args).await,
        Command::Jobs(args) => jobs::run_list(ctx, args).await,
        Command::Job(args) => jobs::run_show(ctx, args).await,
        Command::Serve(args) => serve::run(ctx, args).await,
        Command::Next(args) => next::run(ctx, args).await,
        Command::Run(args) => run::run(ctx, args).await,
        Command::Invoke(args) => invoke::run(ctx, args).await,
        Command::Doctor(args) => doctor::run(ctx, args).await,
        Command::Probe(args) => probe::run(ctx, args).await,
        Command::Notify(args) => notify::run(ctx, args).await,
        Command::Completions(args) => Ok(completions(&args)),
    }
}

fn completions(args: &CompletionsArgs) -> ExitCode {
    let mut command = <Cli as clap::CommandFactory>::command();
    clap_complete::generate(
        args.shell,
        &mut command,
        "runbook-worker",
        &mut std::io::stdout(),
    );
    ExitCode::SUCCESS
}
