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
    /// Each schedule with its params and next run.
    schedules: Vec<ScheduleReport>,
}

#[derive(Debug, Serialize)]
struct FireTime {
    local: String,
    utc: String,
    /// The index of the schedule that fires then.
    schedule: usize,
}

#[derive(Debug, Serialize)]
struct ScheduleReport {
    index: usize,
    cron: String,
    time_zone: String,
    params: std::collections::BTreeMap<String, serde_json::Value>,
    next_run: Option<String>,
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
    if runbook.schedule_entries.is_empty() {
        println!(
            "runbook {} has no schedule: it runs on demand only (runbook-worker run, the API, the dashboard)",
            runbook.name
        );
        return Ok(ExitCode::SUCCESS);
    }

    let window = window(&runbook);
    // The schedule's own maths, started at the window's start when that is later.
    let after = match window.start_at {
        Some(start) if start > from => start - chrono::Duration::nanoseconds(1),
        _ => from,
    };
    let mut next: Vec<(DateTime<Utc>, usize, FireTime)> = Vec::new();
    let mut schedules = Vec::new();
    for entry in &runbook.schedule_entries {
        let upcoming: Vec<(DateTime<Utc>, usize, FireTime)> =
            describe_upcoming(&entry.schedule, after, args.count)
                .into_iter()
                .take_while(|(_, utc)| window.contains(*utc))
                .map(|(local, utc)| {
                    let time = FireTime {
                        local: local.format("%Y-%m-%d %H:%M:%S %Z (%:z)").to_string(),
                        utc: utc.to_rfc3339_opts(SecondsFormat::Secs, true),
                        schedule: entry.index,
                    };
                    (utc, entry.index, time)
                })
                .collect();
        schedules.push(ScheduleReport {
            index: entry.index,
            cron: entry.label.clone(),
            time_zone: entry.timezone.name().to_string(),
            params: entry.params.clone(),
            next_run: upcoming.first().map(|(_, _, t)| t.utc.clone()),
        });
        next.extend(upcoming);
    }
    next.sort_by_key(|(utc, index, _)| (*utc, *index));
    let report = Report {
        name: runbook.name.clone(),
        runbook: runbook.name.clone(),
        file: runbook.file.clone(),
        schedule: runbook
            .schedules
            .iter()
            .map(|s| s.expression.clone())
            .collect(),
        time_zone: runbook.timezone.name().to_string(),
        enabled: runbook.enabled,
        jitter_ms: u64::try_from(runbook.jitter.as_millis()).unwrap_or(u64::MAX),
        next: next
            .into_iter()
            .take(args.count)
            .map(|(_, _, t)| t)
            .collect(),
        schedules,
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
    let several = report.schedules.len() > 1;
    if several || report.schedules.iter().any(|s| !s.params.is_empty()) {
        for s in &report.schedules {
            let params: Vec<String> = s.params.iter().map(|(k, v)| format!("{k} = {v}")).collect();
            out.push_str(&format!(
                "schedule {}: {} in {}{}\n",
                s.index,
                s.cron,
                s.time_zone,
                if params.is_empty() {
                    String::new()
                } else {
                    format!(", params {}", params.join(", "))
                }
            ));
        }
    }
    out.push_str(&format!("{:<width$}  UTC\n", report.time_zone));
    for time in &report.next {
        let which = if several {
            format!("  (schedule {})", time.schedule)
        } else {
            String::new()
        };
        out.push_str(&format!("{:<width$}  {}{which}\n", time.local, time.utc));
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
