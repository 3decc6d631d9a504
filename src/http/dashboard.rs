//! The dashboard: server-rendered pages (runbooks, invalid files, recent jobs, one job's steps
//! and streams) from minijinja templates compiled into the binary, plus one stylesheet and one
//! small script for the Run-now and Cancel buttons. No external resources, so the pages work
//! offline; every value is HTML-escaped by the templates (auto-escape for `.html`).
//!
//! Jobs arrive as the history's JSON and are rendered defensively: a missing or oddly typed
//! field shows as "—" instead of failing the page.

use std::collections::BTreeMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Timelike, Utc};
use minijinja::value::ValueKind;
use minijinja::{Environment, UndefinedBehavior, Value, context};
use serde::Serialize;

use super::api::path_segment;
use super::bounds::{self, ShownJob};
use super::{ApiError, AppState, FileErrorView, JobFilter, ParamView, RunbookView, RunbooksView};
use crate::history::JobSummary;

const STYLESHEET: &str = include_str!("assets/dashboard.css");
const SCRIPT: &str = include_str!("assets/dashboard.js");

/// How many jobs the front page lists.
const RECENT_JOBS: usize = 25;

/// The compiled templates.
pub(crate) struct Pages {
    env: Environment<'static>,
}

impl Pages {
    pub(crate) fn new() -> Self {
        let mut env = Environment::new();
        // The pages render the history's own records: a name the records do not have is a
        // bug, and must fail the page (and the tests that render real records) instead of
        // showing "—". `if` may still test for a value that is absent.
        env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
        for (name, source) in [
            ("base.html", include_str!("templates/base.html")),
            ("index.html", include_str!("templates/index.html")),
            ("job.html", include_str!("templates/job.html")),
            ("error.html", include_str!("templates/error.html")),
        ] {
            // The templates are part of the binary; a syntax error in one is a bug that the
            // unit tests catch, so it is kept and reported when the page is rendered.
            if let Err(e) = env.add_template(name, source) {
                tracing::error!(template = name, error = %e, "dashboard template does not compile");
            }
        }
        env.add_filter("dash", dash);
        env.add_filter("when", when);
        env.add_filter("status_class", status_class);
        env.add_filter("kind_class", kind_class);
        env.add_filter("urlencode", urlencode);
        env.add_filter("seq", seq);
        env.add_filter("short", short);
        env.add_function("elapsed", elapsed);
        Self { env }
    }

    fn render(&self, status: StatusCode, name: &str, ctx: Value) -> Response {
        let rendered = self
            .env
            .get_template(name)
            .and_then(|template| template.render(ctx));
        match rendered {
            Ok(html) => (status, Html(html)).into_response(),
            Err(e) => {
                tracing::error!(template = name, error = %e, "cannot render a dashboard page");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the dashboard page cannot be rendered: the worker's log has the details",
                )
                    .into_response()
            }
        }
    }

    /// The named blocks of page `name` rendered with `ctx`, for the live updates: the same
    /// markup as the whole page, so a page that follows a job cannot drift from one loaded
    /// anew.
    pub(crate) fn render_blocks(
        &self,
        name: &str,
        ctx: Value,
        blocks: &[&str],
    ) -> Result<BTreeMap<String, String>, ApiError> {
        let template = self.env.get_template(name).map_err(internal)?;
        // The whole page is evaluated (into a sink) for the blocks to see what it sets up.
        let mut captured = template
            .render_captured_to(ctx, std::io::sink())
            .map_err(internal)?;
        captured.with_state_mut(|state| {
            blocks
                .iter()
                .map(|block| {
                    state
                        .render_block(block)
                        .map(|html| (block.to_string(), html))
                        .map_err(internal)
                })
                .collect()
        })
    }

    fn error_page(&self, state: &AppState, error: ApiError) -> Response {
        let status = error.status();
        let message = error.public_message();
        let readiness = state.api.readiness();
        self.render(
            status,
            "error.html",
            context! {
                status => status.as_u16(),
                reason => status.canonical_reason().unwrap_or(""),
                message,
                problems => readiness.problems(),
            },
        )
    }
}

/// A row of the runbooks table: the view plus its next run spelt out in UTC and locally.
#[derive(Debug, Serialize, PartialEq)]
struct RunbookRow {
    name: String,
    description: Option<String>,
    file: String,
    schedule: Option<String>,
    time_zone: String,
    next_run_utc: Option<String>,
    next_run_local: Option<String>,
    enabled: bool,
    last_status: Option<String>,
    last_job_id: Option<String>,
    validation_error: Option<FileErrorView>,
    /// The Run-now form's fields, one per declared parameter.
    params: Vec<ParamField>,
    /// Shown when there are several schedules or any gives params.
    schedules: Vec<ScheduleRow>,
}

/// One input of the Run-now form: the declared parameter with the HTML input that reads its
/// type and its default spelt as that input shows it. The script turns the input back into
/// a value of `kind` (`data-type`) when the form is sent.
#[derive(Debug, Serialize, PartialEq)]
struct ParamField {
    name: String,
    kind: String,
    /// `text`, `number`, `checkbox`, `datetime-local` or `json` (a textarea).
    input: &'static str,
    /// The number input's `step`: `1` for integers, `any` for floats.
    step: Option<&'static str>,
    /// The default, as the input's value (empty without one).
    value: String,
    /// A boolean's default.
    checked: bool,
    required: bool,
    description: Option<String>,
}

fn param_field(view: ParamView) -> ParamField {
    let default = view.default.as_ref();
    let text = |value: &serde_json::Value| match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let (input, step, value) = match view.kind.as_str() {
        "integer" => ("number", Some("1"), default.map(text)),
        "float" => ("number", Some("any"), default.map(text)),
        "boolean" => ("checkbox", None, None),
        // A datetime-local input has no zone: the form shows and reads UTC.
        "datetime" => (
            "datetime-local",
            Some("1"),
            default
                .and_then(|d| d.as_str())
                .and_then(|d| DateTime::parse_from_rfc3339(d).ok())
                .map(|t| {
                    t.with_timezone(&Utc)
                        .format("%Y-%m-%dT%H:%M:%S")
                        .to_string()
                }),
        ),
        "array" | "table" => ("json", None, default.map(|d| d.to_string())),
        _ => ("text", None, default.map(text)),
    };
    ParamField {
        checked: default.and_then(|d| d.as_bool()).unwrap_or(false),
        name: view.name,
        kind: view.kind,
        input,
        step,
        value: value.unwrap_or_default(),
        required: view.required,
        description: view.description,
    }
}

/// One schedule under a runbook's cron: which params it gives and when it fires next.
#[derive(Debug, Serialize, PartialEq)]
struct ScheduleRow {
    cron: String,
    time_zone: String,
    params: String,
    next_run_utc: Option<String>,
}

/// A row of the invalid files table.
#[derive(Debug, Serialize, PartialEq)]
struct InvalidRow {
    file: String,
    line: Option<u32>,
    message: String,
    /// The runbook whose last good version still runs, when there is one.
    still_running: Option<String>,
}

fn runbook_row(view: RunbookView) -> RunbookRow {
    let (next_run_utc, next_run_local) = next_run_texts(view.next_run, &view.time_zone);
    let detailed = view.schedules.len() > 1 || view.schedules.iter().any(|s| !s.params.is_empty());
    let schedules = if detailed {
        view.schedules
            .into_iter()
            .map(|s| ScheduleRow {
                next_run_utc: next_run_texts(s.next_run, &s.time_zone).0,
                params: s
                    .params
                    .iter()
                    .map(|(k, v)| format!("{k} = {v}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                cron: s.cron,
                time_zone: s.time_zone,
            })
            .collect()
    } else {
        Vec::new()
    };
    RunbookRow {
        name: view.name,
        description: view.description,
        file: view.file,
        schedule: view.schedule,
        time_zone: view.time_zone,
        next_run_utc,
        next_run_local,
        enabled: view.enabled,
        last_status: view.last_status,
        last_job_id: view.last_job_id,
        validation_error: view.validation_error,
        params: view.params.into_iter().map(param_field).collect(),
        schedules,
    }
}

/// Every file that fails validation: first those whose runbook still runs its last good
/// version, then those never loaded.
fn invalid_rows(view: &RunbooksView) -> Vec<InvalidRow> {
    let stale = view.runbooks.iter().filter_map(|r| {
        r.validation_error.as_ref().map(|e| InvalidRow {
            file: e.file.clone(),
            line: e.line,
            message: e.message.clone(),
            still_running: Some(r.name.clone()),
        })
    });
    let never_loaded = view.invalid_files.iter().map(|e| InvalidRow {
        file: e.file.clone(),
        line: e.line,
        message: e.message.clone(),
        still_running: None,
    });
    stale.chain(never_loaded).collect()
}

/// The next run as `2024-03-31 01:00:00 UTC` and, unless the zone is UTC, in the runbook's
/// zone (`2024-03-31 03:00:00 CEST`).
fn next_run_texts(next: Option<DateTime<Utc>>, zone: &str) -> (Option<String>, Option<String>) {
    let Some(next) = next else {
        return (None, None);
    };
    let utc = next.format("%Y-%m-%d %H:%M:%S UTC").to_string();
    let local = match zone.parse::<chrono_tz::Tz>() {
        Ok(chrono_tz::UTC) | Ok(chrono_tz::Etc::UTC) => None,
        Ok(tz) => Some(
            next.with_timezone(&tz)
                .format("%Y-%m-%d %H:%M:%S %Z")
                .to_string(),
        ),
        Err(_) => Some(format!("unknown time zone {zone}")),
    };
    (Some(utc), local)
}

fn internal(e: minijinja::Error) -> ApiError {
    ApiError::Internal(Box::new(e))
}

/// `?runbook=` of the front page and its live updates.
pub(crate) fn runbook_filter(
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Option<String> {
    query
        .ok()
        .and_then(|Query(q)| q.get("runbook").cloned())
        .filter(|r| !r.is_empty())
}

/// What the front page shows, read once: the page and its live updates render it alike.
#[derive(Debug, Serialize)]
pub(crate) struct IndexData {
    runbooks: Vec<RunbookRow>,
    invalid: Vec<InvalidRow>,
    more_runbooks: usize,
    more_invalid_files: usize,
    jobs: Vec<JobSummary>,
    jobs_error: Option<String>,
    runbook_filter: Option<String>,
    /// One runbook's last jobs as bars (`/?runbook=`), or every job of the last 24 hours
    /// on a timeline (the front page): inline SVG from [`super::charts`].
    chart: Option<String>,
}

/// The chart of the front page (`runbook` `None`) or of one runbook's view.
async fn chart(state: &AppState, runbook: Option<&str>) -> Option<String> {
    // The history may be down: the page shows the rest without a picture.
    match runbook {
        Some(name) => {
            let filter = JobFilter {
                runbook: Some(name.to_string()),
                status: None,
                limit: super::charts::MAX_BARS,
                before: None,
            };
            let jobs = state.api.list_jobs(filter).await.ok()?;
            Some(super::charts::history_bars(&jobs))
        }
        None => {
            // The end of the current minute: the picture (and the page's version) changes
            // at most once a minute when no job does, and a job of this minute is on it.
            let now = state.api.now();
            let now = now
                - chrono::Duration::seconds(i64::from(now.second()))
                - chrono::Duration::nanoseconds(i64::from(now.nanosecond()))
                + chrono::Duration::minutes(1);
            let filter = JobFilter {
                runbook: None,
                status: None,
                limit: super::charts::MAX_TIMELINE_MARKS,
                before: None,
            };
            let jobs = state.api.list_jobs(filter).await.ok()?;
            Some(super::charts::timeline(&jobs, now))
        }
    }
}

impl IndexData {
    pub(crate) async fn read(state: &AppState, runbook_filter: Option<String>) -> Self {
        let bounded = bounds::bound_runbooks(state.api.runbooks());
        let view = bounded.view;
        let invalid = invalid_rows(&view);
        let runbooks: Vec<RunbookRow> = view.runbooks.into_iter().map(runbook_row).collect();
        let filter = JobFilter {
            runbook: runbook_filter.clone(),
            status: None,
            limit: RECENT_JOBS,
            before: None,
        };
        // The catalog is in memory; the history may be down. Show what there is.
        let (jobs, jobs_error) = match state.api.list_jobs(filter).await {
            Ok(jobs) => (jobs, None),
            Err(e) => (Vec::new(), Some(e.public_message())),
        };
        let chart = chart(state, runbook_filter.as_deref()).await;
        Self {
            chart,
            runbooks,
            invalid,
            more_runbooks: bounded.more_runbooks,
            more_invalid_files: bounded.more_invalid_files,
            jobs,
            jobs_error,
            runbook_filter,
        }
    }

    /// The template context, with `live_version` for the page's script.
    pub(crate) fn context(&self, state: &AppState) -> Value {
        let readiness = state.api.readiness();
        context! {
            live_version => super::live::version_of(self),
            problems => readiness.problems(),
            ..Value::from_serialize(self)
        }
    }
}

pub(crate) async fn index(
    State(state): State<AppState>,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Response {
    let data = IndexData::read(&state, runbook_filter(query)).await;
    state
        .pages
        .render(StatusCode::OK, "index.html", data.context(&state))
}

/// The job page's context; `live_version` tells its script what it shows.
pub(crate) fn job_context(state: &AppState, job: &ShownJob, live_version: &str) -> Value {
    let readiness = state.api.readiness();
    context! {
        job => Value::from_serialize(job),
        live_version,
        live_ended => !job.is_active(),
        live_after => job.job.streams.last().map_or(0, |s| s.seq),
        problems => readiness.problems(),
    }
}

pub(crate) async fn job(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let job = match state.api.get_job(&id).await {
        Ok(Some(job)) => bounds::bound_job(job),
        Ok(None) => {
            return state.pages.error_page(
                &state,
                ApiError::NotFound(format!("no job with id {id:?} in the history")),
            );
        }
        Err(e) => return state.pages.error_page(&state, e),
    };
    let version = super::live::job_version(&job);
    state.pages.render(
        StatusCode::OK,
        "job.html",
        job_context(&state, &job, &version),
    )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("max-age=300"),
            ),
        ],
        body,
    )
        .into_response()
}

pub(crate) async fn stylesheet() -> Response {
    asset("text/css; charset=utf-8", STYLESHEET)
}

pub(crate) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

fn is_blank(value: &Value) -> bool {
    value.is_undefined() || value.is_none() || value.as_str().is_some_and(|s| s.trim().is_empty())
}

/// `{{ x|dash }}`: the value, or "—" when it is missing, null or empty; booleans as yes/no.
fn dash(value: Value) -> String {
    if is_blank(&value) {
        return "—".to_string();
    }
    match value.kind() {
        ValueKind::Bool => if value.is_true() { "yes" } else { "no" }.to_string(),
        _ => value.to_string(),
    }
}

fn parse_instant(value: &Value) -> Option<DateTime<Utc>> {
    value
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// `{{ t|when }}`: an RFC 3339 instant as `2024-05-01 03:00:00 UTC`; anything else as is.
fn when(value: Value) -> String {
    match parse_instant(&value) {
        Some(t) => t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        None => dash(value),
    }
}

/// `elapsed(start, end)`: the time between two RFC 3339 instants, such as `2m 05s`.
fn elapsed(start: Value, end: Value) -> String {
    match (parse_instant(&start), parse_instant(&end)) {
        (Some(start), Some(end)) if end >= start => duration_text((end - start).num_milliseconds()),
        _ => "—".to_string(),
    }
}

/// A duration of `ms` milliseconds as `250 ms`, `12.5s`, `2m 05s` or `2h 07m`.
pub(crate) fn duration_text(ms: i64) -> String {
    let secs = ms / 1000;
    match secs {
        0 => format!("{ms} ms"),
        1..60 => format!("{}.{:01}s", secs, (ms % 1000) / 100),
        60..3600 => format!("{}m {:02}s", secs / 60, secs % 60),
        _ => format!("{}h {:02}m", secs / 3600, (secs % 3600) / 60),
    }
}

/// `{{ status|status_class }}`: a CSS class from a fixed set, whatever the status text is.
fn status_class(value: Value) -> String {
    let text = value.as_str().unwrap_or("").to_ascii_lowercase();
    let known = super::JOB_STATUSES
        .iter()
        .any(|s| s.eq_ignore_ascii_case(&text));
    if known {
        format!("status status-{text}")
    } else {
        "status status-other".to_string()
    }
}

/// `{{ stream.kind|kind_class }}`: a CSS class from a fixed set.
fn kind_class(value: Value) -> String {
    match value.as_str().unwrap_or("") {
        kind @ ("output" | "warning" | "error" | "plan" | "progress" | "notifications") => {
            format!("stream-{kind}")
        }
        _ => "stream-other".to_string(),
    }
}

/// `{{ name|urlencode }}`: percent-encoded for a path segment or query value.
fn urlencode(value: Value) -> String {
    match value.as_str() {
        Some(s) => path_segment(s),
        None => path_segment(&value.to_string()),
    }
}

/// `{{ x|seq }}`: the value if it is a list, else an empty list, so `for` never fails.
fn seq(value: Value) -> Value {
    if value.kind() == ValueKind::Seq {
        value
    } else {
        Value::from(Vec::<Value>::new())
    }
}

/// `{{ id|short }}`: the first 8 characters of an id, for tables.
fn short(value: Value) -> String {
    if is_blank(&value) {
        return "—".to_string();
    }
    let text = value.to_string();
    text.chars().take(8).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn next_runs_are_spelt_in_utc_and_in_the_runbook_zone() {
        let spring = Utc.with_ymd_and_hms(2024, 3, 31, 1, 0, 0).single();
        let cases = [
            (
                spring,
                "Europe/Paris",
                Some("2024-03-31 01:00:00 UTC"),
                Some("2024-03-31 03:00:00 CEST"),
            ),
            (
                spring,
                "America/New_York",
                Some("2024-03-31 01:00:00 UTC"),
                Some("2024-03-30 21:00:00 EDT"),
            ),
            (spring, "UTC", Some("2024-03-31 01:00:00 UTC"), None),
            (
                spring,
                "Mars/Olympus",
                Some("2024-03-31 01:00:00 UTC"),
                Some("unknown time zone Mars/Olympus"),
            ),
            (None, "Europe/Paris", None, None),
        ];
        for (next, zone, utc, local) in cases {
            let (got_utc, got_local) = next_run_texts(next, zone);
            assert_eq!(got_utc.as_deref(), utc, "{zone}");
            assert_eq!(got_local.as_deref(), local, "{zone}");
        }
    }

    #[test]
    fn filters_render_missing_and_odd_values_safely() {
        assert_eq!(dash(Value::UNDEFINED), "—");
        assert_eq!(dash(Value::from(())), "—");
        assert_eq!(dash(Value::from("  ")), "—");
        assert_eq!(dash(Value::from(true)), "yes");
        assert_eq!(dash(Value::from(0)), "0");
        assert_eq!(
            when(Value::from("2024-05-01T05:00:00+02:00")),
            "2024-05-01 03:00:00 UTC"
        );
        assert_eq!(when(Value::from("soon")), "soon");
        assert_eq!(when(Value::UNDEFINED), "—");
        let t = |s: &str| Value::from(s);
        for (start, end, want) in [
            ("2024-05-01T03:00:00Z", "2024-05-01T03:00:00.250Z", "250 ms"),
            ("2024-05-01T03:00:00Z", "2024-05-01T03:00:12.500Z", "12.5s"),
            ("2024-05-01T03:00:00Z", "2024-05-01T03:02:05Z", "2m 05s"),
            ("2024-05-01T03:00:00Z", "2024-05-01T05:07:00Z", "2h 07m"),
            ("2024-05-01T03:00:00Z", "2024-05-01T02:00:00Z", "—"),
            ("2024-05-01T03:00:00Z", "", "—"),
        ] {
            assert_eq!(elapsed(t(start), t(end)), want, "{start} {end}");
        }
        assert_eq!(
            status_class(Value::from("CompletedWithErrors")),
            "status status-completedwitherrors"
        );
        assert_eq!(
            status_class(Value::from("x\" onmouseover=\"")),
            "status status-other"
        );
        assert_eq!(status_class(Value::UNDEFINED), "status status-other");
        assert_eq!(kind_class(Value::from("warning")), "stream-warning");
        assert_eq!(kind_class(Value::from("<b>")), "stream-other");
        assert_eq!(seq(Value::from(3)).len(), Some(0));
        assert_eq!(seq(Value::from(vec![1, 2])).len(), Some(2));
        assert_eq!(short(Value::from("0123456789abcdef")), "01234567");
        assert_eq!(urlencode(Value::from("a b")), "a%20b");
    }

    #[test]
    fn every_page_renders_the_empty_state_its_handler_gives() {
        let pages = Pages::new();
        let no_problems: Vec<String> = Vec::new();
        let empty: Vec<String> = Vec::new();
        let shown = bounds::bound_job(crate::http::fixtures::job_with_streams(0));
        for (name, ctx) in [
            (
                "index.html",
                context! {
                    runbooks => empty.clone(), invalid => empty.clone(), more_runbooks => 0,
                    more_invalid_files => 0, jobs => empty.clone(), jobs_error => (),
                    runbook_filter => (), problems => no_problems.clone(), live_version => "v",
                    chart => (),
                },
            ),
            (
                "job.html",
                context! {
                    job => Value::from_serialize(&shown), problems => no_problems.clone(),
                    live_version => "v", live_after => 0, live_ended => true,
                },
            ),
            (
                "error.html",
                context! {
                    status => 404, reason => "Not Found", message => "no such page",
                    problems => no_problems.clone(),
                },
            ),
        ] {
            let html = pages.env.get_template(name).unwrap().render(ctx);
            let html = html.unwrap_or_else(|e| panic!("{name}: {e:#}"));
            assert!(html.contains("runbook-worker"), "{name}: {html}");
        }
    }

    #[test]
    fn a_name_the_records_do_not_have_fails_the_page_instead_of_showing_a_dash() {
        let pages = Pages::new();
        let job = Value::from_serialize(crate::http::fixtures::job_with_streams(1));
        let mut env = pages.env.clone();
        env.add_template("drift.html", "{{ job.steps_read }}")
            .unwrap();
        let drift = env.get_template("drift.html").unwrap();
        assert!(drift.render(context! { job => job.clone() }).is_err());
        // What the job page does read is there.
        env.add_template("fine.html", "{{ job.runbook }} {{ job.streams[0].text }}")
            .unwrap();
        let fine = env.get_template("fine.html").unwrap();
        assert_eq!(fine.render(context! { job }).unwrap(), "a x");
    }

    #[test]
    fn live_blocks_are_the_same_markup_as_the_whole_page() {
        let pages = Pages::new();
        let shown = bounds::bound_job(crate::http::fixtures::job_with_streams(3));
        let ctx = || {
            context! {
                job => Value::from_serialize(&shown), problems => Vec::<String>::new(),
                live_version => "v", live_after => 3, live_ended => true,
            }
        };
        let page = pages
            .env
            .get_template("job.html")
            .unwrap()
            .render(ctx())
            .unwrap();
        let blocks = pages
            .render_blocks("job.html", ctx(), &["job_head", "step_rows", "stream_rows"])
            .unwrap();
        assert_eq!(blocks.len(), 3);
        for (name, html) in &blocks {
            assert!(!html.trim().is_empty(), "{name} is empty");
            assert!(
                page.contains(html.as_str()),
                "{name} differs:\n{html}\n{page}"
            );
        }
        assert_eq!(blocks["stream_rows"].matches("<tr ").count(), 3);
        assert!(
            pages
                .render_blocks("job.html", ctx(), &["no_such_block"])
                .is_err()
        );
    }

    #[test]
    fn stream_text_is_escaped_on_the_job_page() {
        let pages = Pages::new();
        let mut record = crate::http::fixtures::job_with_streams(1);
        record.streams[0].text = "<b>bold</b>".into();
        let html = pages
            .env
            .get_template("job.html")
            .unwrap()
            .render(context! {
                job => Value::from_serialize(bounds::bound_job(record)),
                problems => Vec::<String>::new(),
                live_version => "v", live_after => 1, live_ended => true,
            })
            .unwrap();
        assert!(html.contains("&lt;b&gt;bold&lt;&#x2f;b&gt;"), "{html}");
        assert!(!html.contains("<b>bold"), "{html}");
    }

    #[test]
    fn each_parameter_type_gets_its_input_with_the_default_filled() {
        let view = |kind: &str, default: Option<serde_json::Value>| ParamView {
            name: "p".into(),
            kind: kind.into(),
            required: default.is_none(),
            default,
            description: Some("help".into()),
        };
        let cases = [
            (view("string", None), "text", None, "", false),
            (
                view("string", Some("Sales".into())),
                "text",
                None,
                "Sales",
                false,
            ),
            (
                view("integer", Some(30.into())),
                "number",
                Some("1"),
                "30",
                false,
            ),
            (
                view("float", Some(0.5.into())),
                "number",
                Some("any"),
                "0.5",
                false,
            ),
            (
                view("boolean", Some(true.into())),
                "checkbox",
                None,
                "",
                true,
            ),
            (
                view("boolean", Some(false.into())),
                "checkbox",
                None,
                "",
                false,
            ),
            (
                view("datetime", Some("2025-01-01T02:00:00+02:00".into())),
                "datetime-local",
                Some("1"),
                "2025-01-01T00:00:00",
                false,
            ),
            (
                view("array", Some(serde_json::json!(["a", 1]))),
                "json",
                None,
                r#"["a",1]"#,
                false,
            ),
            (view("table", None), "json", None, "", false),
        ];
        for (param, input, step, value, checked) in cases {
            let kind = param.kind.clone();
            let required = param.required;
            let field = param_field(param);
            assert_eq!(
                (field.input, field.step, field.value.as_str(), field.checked),
                (input, step, value, checked),
                "{kind}"
            );
            assert_eq!(field.required, required, "{kind}");
            assert_eq!(field.kind, kind);
            assert_eq!(field.description.as_deref(), Some("help"));
        }
    }

    #[test]
    fn invalid_rows_list_stale_runbooks_then_files_never_loaded() {
        let view = RunbooksView {
            runbooks: vec![
                RunbookView {
                    name: "fine".into(),
                    ..RunbookView::default()
                },
                RunbookView {
                    name: "stale".into(),
                    validation_error: Some(FileErrorView {
                        file: "stale.toml".into(),
                        line: Some(3),
                        message: "bad cron".into(),
                    }),
                    ..RunbookView::default()
                },
            ],
            invalid_files: vec![FileErrorView {
                file: "new.toml".into(),
                line: None,
                message: "missing name".into(),
            }],
        };
        let rows = invalid_rows(&view);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].still_running.as_deref(), Some("stale"));
        assert_eq!(rows[0].line, Some(3));
        assert_eq!(rows[1].file, "new.toml");
        assert_eq!(rows[1].still_running, None);
    }
}
