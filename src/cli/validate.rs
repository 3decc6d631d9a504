//! `runbook-worker validate [PATH…] [--output human|json]`: checks runbook files the way
//! the worker loads them, without contacting anything.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use serde::Serialize;

use runbook_worker::runbook::{self, Runbook, ValidationError};

use super::{Context, Output};

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// Runbook files or folders (default: the [runbooks] dir setting). Folders are read
    /// like the worker reads them: *.toml files, temporary and hidden files skipped.
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// `human`: one `file:line:column: message` line per error; `json`: one JSON document
    /// with the valid runbooks and every error.
    #[arg(long = "output", alias = "format", value_enum, default_value_t = Output::Human)]
    pub output: Output,
}

/// One valid runbook, as `--output json` lists it: the same key names as `next` and
/// `GET /api/runbooks` for the same facts (`schedule`, `time_zone`).
#[derive(Debug, Serialize)]
struct ValidRunbook {
    name: String,
    file: String,
    hash: String,
    enabled: bool,
    /// The cron expressions, as `next` lists them.
    schedule: Vec<String>,
    time_zone: String,
    /// Deprecated: the same as `schedule`, kept for consumers of its first name.
    schedules: Vec<String>,
    /// Deprecated: the same as `time_zone`, kept for consumers of its first name.
    timezone: String,
    steps: usize,
}

impl From<&Runbook> for ValidRunbook {
    fn from(rb: &Runbook) -> Self {
        let schedule: Vec<String> = rb.schedules.iter().map(|s| s.expression.clone()).collect();
        let time_zone = rb.timezone.name().to_string();
        Self {
            name: rb.name.clone(),
            file: rb.file.clone(),
            hash: rb.hash.clone(),
            enabled: rb.enabled,
            schedules: schedule.clone(),
            schedule,
            timezone: time_zone.clone(),
            time_zone,
            steps: rb.steps.len(),
        }
    }
}

#[derive(Debug, Serialize)]
struct Report {
    valid: bool,
    runbooks: Vec<ValidRunbook>,
    errors: Vec<ValidationError>,
}

/// Reads runbook files and folders the way the worker does: the valid runbooks and every
/// error. A path that does not exist is reported as a folder unless it names a .toml file,
/// so that a missing runbooks folder says so; a directory named like a runbook file
/// (`x.toml`) is read as a file, which refuses it: the caller meant a runbook, and "no
/// runbook files" would pass.
pub(super) fn load_paths(
    paths: &[PathBuf],
    policy: &runbook::PolicySettings,
) -> (Vec<Arc<Runbook>>, Vec<ValidationError>) {
    let mut runbooks = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        let missing_folder = !path.exists() && !runbook::is_runbook_file(path);
        let folder = path.is_dir() && !runbook::is_runbook_file(path);
        if folder || missing_folder {
            let (catalog, mut folder_errors) = runbook::load_folder(path, policy);
            runbooks.extend(catalog.iter().cloned());
            errors.append(&mut folder_errors);
        } else {
            match runbook::load_file(path, policy) {
                Ok(rb) => runbooks.push(Arc::new(rb)),
                Err(mut file_errors) => errors.append(&mut file_errors),
            }
        }
    }
    (runbooks, errors)
}

pub async fn run(ctx: Context, args: ValidateArgs) -> anyhow::Result<ExitCode> {
    let paths = if args.paths.is_empty() {
        vec![ctx.settings.runbooks.dir.clone()]
    } else {
        args.paths
    };
    let policy = &ctx.settings.policy;
    let mut runbooks = Vec::new();
    let mut errors = Vec::new();
    for path in &paths {
        // A path that does not exist is reported as a folder unless it names a .toml
        // file, so that a missing runbooks folder says so.
        // A directory named like a runbook file (`x.toml`) is read as a file, which
        // refuses it: the caller meant a runbook, and "no runbook files" would pass.
        let missing_folder = !path.exists() && !runbook::is_runbook_file(path);
        let folder = path.is_dir() && !runbook::is_runbook_file(path);
        if folder || missing_folder {
            let (mut catalog, mut folder_errors) = runbook::load_folder(path, policy);
            catalog.check_notify_targets(&ctx.settings.notify.target_names(), &mut folder_errors);
            runbooks.extend(catalog.iter().map(|rb| ValidRunbook::from(rb.as_ref())));
            errors.append(&mut folder_errors);
        } else {
            match runbook::load_file(path, policy) {
                Ok(rb) => {
                    let before = errors.len();
                    let mut one = runbook::Catalog::of([rb]);
                    one.check_notify_targets(&ctx.settings.notify.target_names(), &mut errors);
                    if errors.len() == before {
                        runbooks.extend(one.iter().map(|rb| ValidRunbook::from(rb.as_ref())));
                    }
                }
                Err(mut file_errors) => errors.append(&mut file_errors),
            }
        }
    }

    let all_valid = errors.is_empty();
    let mut stdout = std::io::stdout().lock();
    match args.output {
        Output::Human => {
            for error in &errors {
                writeln!(stdout, "{error}").context("cannot write to stdout")?;
            }
            let invalid: BTreeSet<&str> = errors.iter().map(|e| e.file.as_str()).collect();
            let summary = if runbooks.is_empty() && invalid.is_empty() {
                let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
                format!("no runbook files in {}", shown.join(", "))
            } else {
                format!(
                    "{} valid, {} invalid ({} error{})",
                    runbooks.len(),
                    invalid.len(),
                    errors.len(),
                    if errors.len() == 1 { "" } else { "s" }
                )
            };
            eprintln!("{summary}");
        }
        Output::Json => {
            let report = Report {
                valid: errors.is_empty(),
                runbooks,
                errors: std::mem::take(&mut errors),
            };
            serde_json::to_writer_pretty(&mut stdout, &report)
                .context("cannot write the report")?;
            writeln!(stdout).context("cannot write to stdout")?;
        }
    }
    Ok(if all_valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
