//! `runbook-worker next NAME_OR_FILE [-n 10]`: the next fire times of a runbook, in its
//! time zone and in UTC, computed exactly as the worker fires them (time zone and
//! daylight-saving rules, `start_at`/`end_at`).

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, anyhow, bail};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use runbook_worker::clock::{Clock, SystemClock};
use runbook_worker::runbook::{self, Runbook};
use runbook_worker::scheduler::window;
use runbook_worker::timing::schedule::describe_upcoming;

use super::{Context, Output};

#[derive(Debug, clap::Args)]
pub struct NextArgs {
    /// A runbook name (the file stem in the runbooks folder) or the path of a runbook file.
    #[arg(value_name = "NAME_OR_FILE")]
    pub runbook: String,
    /// How many fire times to list.
    #[arg(short = 'n', long = "count", default_value_t = 10)]
    pub count: usize,
    /// List the fire times after this instant instead of now (RFC 3339, e.g.
    /// 2026-03-28T00:00:00Z), to check a daylight-saving change ahead of time.
    #[arg(long, value_name = "INSTANT")]
    pub from: Option<String>,
    #[arg(long = "output", alias = "format", value_enum, default_value_t = Output::Human)]
    pub output: Output,
}

/// `--output json`: the same key names as `validate` and `GET /api/runbooks` for the same
/// facts (`name`, `schedule`, `time_zone`).
#[derive(Debug, Serialize)]
struct Report {
    name: String,
    /// Deprecated: the same as `name`, kept for consumers of its first name.
    runbook: String,
    file: String,
    schedule: Vec<String>,
    time_zone: String,
    enabled: bool,
    jitter_ms: u64,
    next: Vec<FireTime>,
}

#[derive(Debug, Serialize)]
struct FireTime {
    local: String,
    utc: String,
}

pub async fn run(ctx: Context, args: NextArgs) -> anyhow::Result<ExitCode> {
    let from = match &args.from {
        Some(text) => DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc))
            .with_context(|| {
                format!("--from {text:?} is not an RFC 3339 instant such as 2026-03-28T00:00:00Z")
            })?,
        None => SystemClock.now(),
    };
    let runbook = find(&ctx, &args.runbook)?;
    let Some(schedule) = runbook.schedule.as_ref() else {
        println!(
            "runbook {} has no schedule: it runs on demand only (runbook-worker run, the API, the dashboard)",
            runbook.name
        );
        return Ok(ExitCode::SUCCESS);
    };

    let window = window(&runbook);
    // The schedule's own maths, started at the window's start when that is later.
    let after = match window.start_at {
        Some(start) if start > from => start - chrono::Duration::nanoseconds(1),
        _ => from,
    };
    let next: Vec<FireTime> = describe_upcoming(schedule, after, args.count)
        .into_iter()
        .take_while(|(_, utc)| window.contains(*utc))
        .map(|(local, utc)| FireTime {
            local: local.format("%Y-%m-%d %H:%M:%S %Z (%:z)").to_string(),
            utc: utc.to_rfc3339_opts(SecondsFormat::Secs, true),
        })
        .collect();
    let report = Report {
        name: runbook.name.clone(),
        runbook: runbook.name.clone(),
        file: runbook.file.clone(),
        schedule: schedule
            .expressions()
            .iter()
            .map(|s| s.to_string())
            .collect(),
        time_zone: runbook.timezone.name().to_string(),
        enabled: runbook.enabled,
        jitter_ms: u64::try_from(runbook.jitter.as_millis()).unwrap_or(u64::MAX),
        next,
    };

    let text = match args.output {
        Output::Json => serde_json::to_string_pretty(&report)? + "\n",
        Output::Human => human(&report),
    };
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

fn human(report: &Report) -> String {
    let mut out = format!(
        "{} ({}): {} in {}\n",
        report.name,
        report.file,
        report.schedule.join(", "),
        report.time_zone
    );
    if !report.enabled {
        out.push_str("enabled = false: the schedule does not fire; these are the times it would\n");
    }
    if report.jitter_ms > 0 {
        out.push_str(&format!(
            "jitter: each run starts up to {} after its time\n",
            humantime::format_duration(std::time::Duration::from_millis(report.jitter_ms))
        ));
    }
    if report.next.is_empty() {
        out.push_str("no further fire times (end_at has passed, or the window is empty)\n");
        return out;
    }
    let width = report
        .next
        .iter()
        .map(|t| t.local.chars().count())
        .max()
        .unwrap_or(0)
        .max(report.time_zone.len());
    out.push_str(&format!("{:<width$}  UTC\n", report.time_zone));
    for time in &report.next {
        out.push_str(&format!("{:<width$}  {}\n", time.local, time.utc));
    }
    out
}

/// The runbook named `name_or_file`: a file path, or a runbook name in the runbooks folder.
/// An invalid file is an error that lists its problems.
fn find(ctx: &Context, name_or_file: &str) -> anyhow::Result<Runbook> {
    let path = Path::new(name_or_file);
    let looks_like_path = path.is_file() || name_or_file.ends_with(".toml");
    if looks_like_path {
        return runbook::load_file(path, &ctx.settings.policy).map_err(|errors| invalid(&errors));
    }
    let dir = &ctx.settings.runbooks.dir;
    let file = dir.join(format!("{name_or_file}.toml"));
    if file.is_file() {
        return runbook::load_file(&file, &ctx.settings.policy).map_err(|errors| invalid(&errors));
    }
    let (catalog, _) = runbook::load_folder(dir, &ctx.settings.policy);
    if let Some(found) = catalog
        .iter()
        .find(|r| r.name.eq_ignore_ascii_case(name_or_file))
    {
        return Ok((**found).clone());
    }
    let names: Vec<&str> = catalog.names().collect();
    if names.is_empty() {
        bail!(
            "no runbook named {name_or_file:?} in {} (the folder has no valid runbooks; check [runbooks] dir)",
            dir.display()
        );
    }
    bail!(
        "no runbook named {name_or_file:?} in {}; it has: {}",
        dir.display(),
        names.join(", ")
    )
}

fn invalid(errors: &[runbook::ValidationError]) -> anyhow::Error {
    let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    anyhow!("the runbook file fails validation:\n{}", lines.join("\n"))
}
