//! The HTTP surface: health probes, Prometheus metrics, the JSON API and the dashboard.
//!
//! The only module that knows axum for serving the product (the simulator has its own
//! servers). Everything behind the routes comes through the [`WorkerApi`] trait, which the
//! composition root implements over the catalog, scheduler and history: this module reads
//! snapshots and forwards requests (run, cancel) through it, and never drives the scheduler or
//! opens the history itself. [`ApiAuth`] decides who may read and who may change things; the
//! API token never leaves it (only a digest is kept).
//!
//! Layout: `api` holds the JSON and probe handlers, `auth` the access rules, `bounds` the
//! caps on what one response lists, `dashboard` the server-rendered pages with their embedded
//! templates, CSS and script, `live` the pages' live updates (polled by that script),
//! `server` the accept loop with its connection cap and timeouts.

mod api;
mod auth;
mod bounds;
mod charts;
mod dashboard;
mod live;
mod server;

#[cfg(test)]
pub(crate) mod fixtures {
    //! Job records built from the history's own types, for the unit tests of the pages.
    use crate::history::JobDetail;

    pub(crate) fn job_with_streams(count: usize) -> JobDetail {
        use crate::history::{JobStatus, JobSummary, StreamEntry, StreamKind, Trigger};
        let at = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        JobDetail {
            job: JobSummary {
                id: "01HZX3J5Q5T4B5Y1C8W9Y6G0ZK".parse().unwrap(),
                runbook: "a".into(),
                file_hash: "h".into(),
                trigger: Trigger::Manual,
                status: JobStatus::Completed,
                dry_run: false,
                past_due: false,
                scheduled_for: None,
                created_at: at,
                started_at: Some(at),
                ended_at: Some(at),
                duration_ms: Some(0),
                summary: None,
                error: None,
                replica: None,
            },
            params: Default::default(),
            steps: vec![],
            streams: (1..=count as u64)
                .map(|seq| StreamEntry {
                    seq,
                    kind: StreamKind::Output,
                    time: at,
                    text: "x".into(),
                    data: None,
                })
                .collect(),
            dropped: Default::default(),
            reports: Vec::new(),
        }
    }
}

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::duration::HumanDuration;
use crate::telemetry::metrics::Metrics;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{MethodRouter, get, post};
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::history::{JobDetail, JobSummary, ReportBody};

pub use auth::ApiAuth;
/// The router type `serve` hands to [`serve`]; re-exported so no other module names axum.
pub use axum::Router;
pub use server::{ServerLimits, serve};

/// `[http]` settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// `ADDRESS:PORT` the API listens on.
    #[serde(deserialize_with = "listen_address")]
    pub listen: SocketAddr,
    /// Bearer token required by every route that changes something.
    pub api_token: Option<SecretString>,
    /// File holding the API token (preferred over `api_token` in files that are shared).
    pub api_token_file: Option<PathBuf>,
    /// Reads without a token on a loopback listener, from a loopback peer naming a loopback
    /// host. Off behind a reverse proxy on the same host, which makes every client look local.
    pub anonymous_reads: bool,
    /// A client must send a whole request header within this (and start its next request on
    /// a kept-alive connection within it).
    pub header_read_timeout: HumanDuration,
    /// A connection with nothing in progress and no byte moved for this long is closed.
    pub idle_timeout: HumanDuration,
    /// A request without a response after this gets a JSON 503.
    pub request_timeout: HumanDuration,
    /// Connections served at once; more get a JSON 503. Lowered at start to half the
    /// process's open-file limit so jobs always find file descriptors.
    pub max_connections: usize,
    /// Where people reach the dashboard (`https://runbooks.contoso.com`); notifications
    /// link to `<public_url>/jobs/<id>`. https, or http on a loopback address.
    #[serde(deserialize_with = "public_url")]
    pub public_url: Option<url::Url>,
}

fn public_url<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<url::Url>, D::Error> {
    let text: Option<String> = Deserialize::deserialize(d)?;
    match text.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(text) => url::Url::parse(text).map(Some).map_err(|e| {
            serde::de::Error::custom(format!(
                "not a valid URL ({e}); expected https://host[/path]"
            ))
        }),
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            api_token: None,
            api_token_file: None,
            anonymous_reads: true,
            header_read_timeout: HumanDuration::from_secs(10),
            idle_timeout: HumanDuration::from_secs(60),
            request_timeout: HumanDuration::from_secs(30),
            max_connections: 256,
            public_url: None,
        }
    }
}

/// `http.listen`: a socket address, with a message that shows the expected form.
fn listen_address<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.trim().parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "expected ADDRESS:PORT such as 127.0.0.1:8080, got {text:?}"
        ))
    })
}

/// Bounds of the `[http]` timeouts: below the minimum a slow but honest client fails, above
/// the maximum a stalled one holds its connection for too long.
const HTTP_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(3600));
/// Most connections `http.max_connections` may allow.
const MAX_MAX_CONNECTIONS: usize = 65_536;

impl HttpSettings {
    /// Values that parse but make no sense, as (`http.key`, message), for
    /// [`crate::settings::Settings::problems`].
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let (min, max) = HTTP_TIMEOUT_RANGE;
        for (key, value) in [
            ("http.header_read_timeout", self.header_read_timeout),
            ("http.idle_timeout", self.idle_timeout),
            ("http.request_timeout", self.request_timeout),
        ] {
            if !(min..=max).contains(&value.get()) {
                out.push((
                    key.to_string(),
                    format!(
                        "must be between {} and {}, got {value}",
                        HumanDuration(min),
                        HumanDuration(max)
                    ),
                ));
            }
        }
        if let Some(url) = &self.public_url
            && let Err(message) = crate::notify::check_url(url.as_str())
        {
            out.push(("http.public_url".to_string(), message));
        }
        if !(1..=MAX_MAX_CONNECTIONS).contains(&self.max_connections) {
            out.push((
                "http.max_connections".to_string(),
                format!(
                    "must be between 1 and {MAX_MAX_CONNECTIONS}, got {}",
                    self.max_connections
                ),
            ));
        }
        out
    }
}

/// What the HTTP surface needs from the rest of the worker. The composition root implements
/// it; tests implement it with canned data.
///
/// Implementations must keep secrets (tokens, SAS URLs) out of everything they return,
/// including error messages: the API passes them on to clients.
#[async_trait::async_trait]
pub trait WorkerApi: Send + Sync + 'static {
    /// The loaded runbooks and the files that fail validation, as of now. Cheap: the
    /// dashboard calls it on every page view.
    fn runbooks(&self) -> RunbooksView;

    /// What `/readyz` reports. Cheap and never blocking: probes call it every few seconds.
    fn readiness(&self) -> Readiness;

    /// Jobs from the history, newest first: the history's own records, so that what the
    /// API and the dashboard show cannot drift from what is stored.
    async fn list_jobs(&self, filter: JobFilter) -> Result<Vec<JobSummary>, ApiError>;

    /// One job with its steps, streams and report files; `None` when no job has that id.
    async fn get_job(&self, id: &str) -> Result<Option<JobDetail>, ApiError>;

    /// A report file of a job, streamed; `None` when the job or the file does not exist.
    /// The route checks the name and always requires the API token (reports hold mailbox
    /// data).
    async fn open_report(&self, id: &str, file: &str) -> Result<Option<ReportBody>, ApiError> {
        let _ = (id, file);
        Ok(None)
    }

    /// Starts a job of runbook `name` now. [`ApiError::NotFound`] when no runbook has that
    /// name, [`ApiError::BadRequest`] for parameters the runbook rejects,
    /// [`ApiError::Conflict`] when it cannot run now (overlap policy, disabled),
    /// [`ApiError::Unavailable`] while shutting down.
    async fn run_runbook(&self, name: &str, request: RunRequest) -> Result<RunAccepted, ApiError>;

    /// Asks a running or queued job to stop (between calls, as the executor allows).
    async fn cancel_job(&self, id: &str) -> Result<CancelOutcome, ApiError>;

    /// The worker's clock: where the dashboard's 24-hour timeline ends.
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    /// The next `limit` occurrences of runbook `runbook`, soonest first, as the scheduler
    /// computes them (each with at least `utc` and `local` instants). The shape belongs to the
    /// scheduler; this module passes it through.
    async fn occurrences(
        &self,
        runbook: &str,
        limit: usize,
    ) -> Result<Vec<serde_json::Value>, ApiError>;
}

/// `GET /api/runbooks`: the catalog as the worker sees it now.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunbooksView {
    /// Every runbook that is loaded (its current version, or its last good one when the
    /// file has since become invalid), sorted by name.
    pub runbooks: Vec<RunbookView>,
    /// Files that fail validation and have never been loaded, so nothing of them runs.
    pub invalid_files: Vec<FileErrorView>,
}

/// One loaded runbook.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunbookView {
    /// The runbook's name: unique in the catalog, used in URLs.
    pub name: String,
    /// Its one-line description, if the file has one.
    pub description: Option<String>,
    /// The file it was loaded from, as shown to operators.
    pub file: String,
    /// The cron expression as written; `None` for runbooks that only run on demand.
    pub schedule: Option<String>,
    /// The IANA time zone the schedule is read in (`UTC` when the file names none).
    pub time_zone: String,
    /// The next scheduled instant, in UTC; `None` without a schedule, when disabled or past
    /// `end_at`.
    pub next_run: Option<DateTime<Utc>>,
    /// Whether the schedule fires (a disabled runbook can still be run on demand if the
    /// worker allows it).
    pub enabled: bool,
    /// Status of the most recent job (`Completed`, `Failed`, …), if there is one.
    pub last_status: Option<String>,
    /// Id of that job, to link to it.
    pub last_job_id: Option<String>,
    /// Set when the file on disk currently fails validation: the version shown (and
    /// scheduled) is the last good one.
    pub validation_error: Option<FileErrorView>,
    /// The parameters a run may give (`[params]` of the file), sorted by name.
    #[serde(default)]
    pub params: Vec<ParamView>,
    /// Each schedule with its own time zone, params and next run (`schedule` and
    /// `next_run` above are all of them together); empty for on-demand runbooks.
    #[serde(default)]
    pub schedules: Vec<ScheduleView>,
}

/// One declared parameter of a runbook: what a run request's `params` may hold.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ParamView {
    pub name: String,
    /// `string`, `integer`, `float`, `boolean`, `datetime`, `array` or `table`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The value a run without this parameter gets; `None` for a required one.
    pub default: Option<serde_json::Value>,
    /// A run must give it (it has no default).
    pub required: bool,
    pub description: Option<String>,
}

/// One schedule of a runbook (`schedule`, or one `[[schedules]]` entry).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ScheduleView {
    /// Its position in the file; jobs it fires record it.
    pub index: usize,
    /// Its cron expressions, joined with ", ".
    pub cron: String,
    pub time_zone: String,
    /// The params its jobs get over the runbook's defaults.
    pub params: BTreeMap<String, serde_json::Value>,
    /// Its next instant, in UTC; `None` when disabled or past `end_at`.
    pub next_run: Option<DateTime<Utc>>,
}

/// Why a runbook file fails validation.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileErrorView {
    /// The file, as shown to operators.
    pub file: String,
    /// 1-based line of the problem, when known.
    pub line: Option<u32>,
    /// What is wrong and what to do about it.
    pub message: String,
}

/// What `/readyz` checks. Ready iff every check is fine (see [`Readiness::problems`]).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Readiness {
    /// The runbooks folder has been read once (an empty folder counts as loaded).
    pub runbooks_loaded: bool,
    /// The history database is open for writing.
    pub history_open: bool,
    /// Whether the history takes writes: a full disk or a locked database drops every job.
    pub history: HistoryReadiness,
    /// Whether the managed identity has produced a token.
    pub identity: IdentityReadiness,
    /// Whether the replicas' coordination store answers.
    pub coordination: CoordinationReadiness,
    /// SIGTERM received: load balancers must stop sending work here.
    pub shutting_down: bool,
}

/// The identity part of [`Readiness`].
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(tag = "state", content = "reason", rename_all = "snake_case")]
pub enum IdentityReadiness {
    /// A token was obtained at least once and the last refresh did not fail for good.
    Ok,
    /// Nothing needed a token yet (no job has run); the identity is tried on first use.
    NotYetNeeded,
    /// Getting a token fails; the text says why (never the token or a secret).
    Failing(String),
}

/// The job history part of [`Readiness`].
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(tag = "state", content = "reason", rename_all = "snake_case")]
pub enum HistoryReadiness {
    /// The last write succeeded.
    Ok,
    /// Writes fail; the text gives the root cause (disk full, database locked, I/O error).
    Failing(String),
}

/// The coordination part of [`Readiness`].
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(tag = "state", content = "reason", rename_all = "snake_case")]
pub enum CoordinationReadiness {
    /// The lease store answers.
    Ok,
    /// A single replica without a shared store: nothing to check.
    NotConfigured,
    /// The lease store cannot be reached; the text says why (never a SAS URL).
    Unreachable(String),
}

impl Readiness {
    /// A ready worker: what tests and a healthy process report.
    pub fn ready() -> Self {
        Self {
            runbooks_loaded: true,
            history_open: true,
            history: HistoryReadiness::Ok,
            identity: IdentityReadiness::Ok,
            coordination: CoordinationReadiness::NotConfigured,
            shutting_down: false,
        }
    }

    /// Every reason the worker is not ready, as sentences; empty when it is ready.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.shutting_down {
            out.push("the worker is shutting down".to_string());
        }
        if !self.runbooks_loaded {
            out.push("the runbooks folder has not been loaded yet".to_string());
        }
        if !self.history_open {
            out.push("the job history database is not open".to_string());
        }
        if let HistoryReadiness::Failing(reason) = &self.history {
            out.push(format!("the job history refuses writes: {reason}"));
        }
        if let IdentityReadiness::Failing(reason) = &self.identity {
            out.push(format!("the managed identity gives no token: {reason}"));
        }
        if let CoordinationReadiness::Unreachable(reason) = &self.coordination {
            out.push(format!("the coordination store is unreachable: {reason}"));
        }
        out
    }

    pub fn is_ready(&self) -> bool {
        self.problems().is_empty()
    }
}

/// `GET /api/jobs` query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobFilter {
    /// Only jobs of this runbook.
    pub runbook: Option<String>,
    /// Only jobs with this status, spelt as in [`JOB_STATUSES`].
    pub status: Option<String>,
    /// At most this many jobs (1..=[`MAX_JOBS_LIMIT`]; default [`DEFAULT_JOBS_LIMIT`]).
    pub limit: usize,
    /// Only jobs scheduled strictly before this instant: pass the last row's `scheduled_for`
    /// to page back.
    pub before: Option<DateTime<Utc>>,
}

/// Job statuses as the history records them; `?status=` is matched case-insensitively and
/// passed on in this spelling.
pub const JOB_STATUSES: [&str; 9] = [
    "Queued",
    "Running",
    "Completed",
    "CompletedWithErrors",
    "Failed",
    "TimedOut",
    "Cancelled",
    "Skipped",
    "Interrupted",
];
pub const DEFAULT_JOBS_LIMIT: usize = 50;
pub const MAX_JOBS_LIMIT: usize = 1000;

/// The body of `POST /api/runbooks/{name}/run` (optional: no body means no parameters).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RunRequest {
    /// Parameter values by name; the runbook validates them.
    pub params: BTreeMap<String, serde_json::Value>,
    /// Plan only: read from Exchange, record what would change, change nothing.
    pub dry_run: bool,
    /// Who asked: set by the server, never read from the body.
    #[serde(skip)]
    pub requested_via: RequestedVia,
}

/// Where a run request came from, so the history can tell a webhook from a person.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestedVia {
    /// A client of the JSON API (the webhook that replaces Automation webhooks).
    #[default]
    Api,
    /// The dashboard's Run-now button.
    Dashboard,
}

/// A run request was accepted: the job exists in the history (at least as Queued).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunAccepted {
    pub job_id: String,
}

/// What became of a cancel request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The job was running or queued and has been told to stop; it ends as Cancelled.
    Requested,
    /// The job exists but has already ended; `status` is its final status.
    NotRunning { status: String },
    /// No job has that id.
    NotFound,
}

/// Why an API request failed. Each variant maps to one HTTP status; the message is sent to
/// the client as `{"error": "…"}`, except for [`ApiError::Internal`] whose detail goes to the
/// log only.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 404: no runbook or job by that name or id; the message names it.
    #[error("{0}")]
    NotFound(String),
    /// 400: the request is malformed or its parameters are refused; the message says how.
    #[error("{0}")]
    BadRequest(String),
    /// 409: the request is fine but the runbook or job cannot do it now.
    #[error("{0}")]
    Conflict(String),
    /// 503: the worker is shutting down or its storage is down; try again later.
    #[error("{0}")]
    Unavailable(String),
    /// 500: a bug or an unexpected storage error.
    #[error(transparent)]
    Internal(Box<dyn std::error::Error + Send + Sync + 'static>),
}

/// Setting up the HTTP surface failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot read http.api_token_file {}: {source}", path.display())]
    TokenFile {
        path: PathBuf,
        #[source]
        source: crate::bounded_file::BoundedReadError,
    },
    #[error("{key} is empty: put a random token of at least {min} characters in it (`openssl rand -hex 32`) or remove it", min = auth::MIN_TOKEN_LEN)]
    EmptyToken { key: &'static str },
    #[error("{key} is too short ({len} characters): use at least {min} random characters (`openssl rand -hex 32`)", min = auth::MIN_TOKEN_LEN)]
    ShortToken { key: &'static str, len: usize },
    #[error(
        "both http.api_token and http.api_token_file are set: keep only one (the file is the safer place)"
    )]
    TwoTokens,
}

/// Everything a handler needs, shared by all requests.
#[derive(Clone)]
struct AppState {
    api: Arc<dyn WorkerApi>,
    metrics: Arc<Metrics>,
    auth: Arc<ApiAuth>,
    pages: Arc<dashboard::Pages>,
    live: Arc<live::Live>,
}

/// Largest request body accepted (a run request's parameters).
const MAX_BODY_BYTES: usize = 256 * 1024;

/// Every route of the worker:
///
/// - open: `GET /healthz`, `GET /readyz`, `GET /metrics`, `GET /static/*`;
/// - reads (open on loopback, otherwise the token): `GET /api/runbooks`,
///   `GET /api/runbooks/{name}`, `GET /api/jobs`, `GET /api/jobs/{id}`,
///   `GET /api/occurrences`, `GET /`, `GET /jobs/{id}`;
/// - changes (always the bearer token): `POST /api/runbooks/{name}/run`,
///   `POST /api/jobs/{id}/cancel`.
///
/// The dashboard's live updates (`GET /live/index`, `GET /live/jobs/{id}`, reads) wait
/// within the default [`ServerLimits`]; [`router_with_limits`] sizes them for the server's.
pub fn router(api: Arc<dyn WorkerApi>, metrics: Arc<Metrics>, auth: ApiAuth) -> Router {
    router_with_limits(api, metrics, auth, &ServerLimits::default())
}

/// [`router`] for a server with `limits`: live updates wait at most half its request
/// timeout, and at most a quarter of its connections wait at once.
pub fn router_with_limits(
    api: Arc<dyn WorkerApi>,
    metrics: Arc<Metrics>,
    auth: ApiAuth,
    limits: &ServerLimits,
) -> Router {
    let state = AppState {
        api,
        metrics,
        auth: Arc::new(auth),
        pages: Arc::new(dashboard::Pages::new()),
        live: Arc::new(live::Live::new(limits)),
    };

    let open = Router::new()
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(api::metrics))
        .route("/static/dashboard.css", get(dashboard::stylesheet))
        .route("/static/dashboard.js", get(dashboard::script));

    // The access rules wrap each method's handler rather than the whole route, so a request
    // with a method the route lacks still gets 405, not 401.
    let read = |handler: MethodRouter<AppState>| {
        handler.route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_read,
        ))
    };
    let change = |handler: MethodRouter<AppState>| {
        handler.route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_write,
        ))
    };
    let token = |handler: MethodRouter<AppState>| {
        handler.route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
    };
    let api = Router::new()
        .route("/api/jobs/{id}/reports/{file}", token(get(api::get_report)))
        .route("/api/runbooks", read(get(api::list_runbooks)))
        .route("/api/runbooks/{name}", read(get(api::get_runbook)))
        .route("/api/runbooks/{name}/run", change(post(api::run_runbook)))
        .route("/api/jobs", read(get(api::list_jobs)))
        .route("/api/jobs/{id}", read(get(api::get_job)))
        .route("/api/jobs/{id}/cancel", change(post(api::cancel_job)))
        .route("/api/occurrences", read(get(api::occurrences)))
        .route("/", read(get(dashboard::index)))
        .route("/jobs/{id}", read(get(dashboard::job)))
        .route("/live/index", read(get(live::index)))
        .route("/live/jobs/{id}", read(get(live::job)));

    Router::new()
        .merge(open)
        .merge(api)
        .fallback(api::no_route)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(api::json_errors))
        .layer(middleware::from_fn(security_headers))
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

/// Headers every response gets: the pages load only their own script and stylesheet, cannot
/// be framed by other sites, and nothing is cached (job data can be sensitive) unless the
/// handler chose otherwise.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'self'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// One debug line per request: method, path and status only. Headers (which carry the
/// token) and query strings are never logged.
async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    tracing::debug!(
        %method,
        path,
        status = response.status().as_u16(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "http request"
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_url_must_be_https_or_loopback_http() {
        let problems = |url: &str| {
            let settings: HttpSettings =
                toml::from_str(&format!("public_url = \"{url}\"")).expect("parses");
            settings.problems()
        };
        assert_eq!(problems("https://runbooks.contoso.com/"), Vec::new());
        assert_eq!(problems("http://127.0.0.1:8080"), Vec::new());
        let refused = problems("http://runbooks.contoso.com");
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert_eq!(refused[0].0, "http.public_url");
        assert!(refused[0].1.contains("https"), "{refused:?}");
        let error = toml::from_str::<HttpSettings>("public_url = \"not a url\"").unwrap_err();
        assert!(error.to_string().contains("not a valid URL"), "{error}");
    }

    #[test]
    fn readiness_lists_every_problem_and_is_ready_only_without_one() {
        let cases: Vec<(Readiness, Vec<&str>)> = vec![
            (Readiness::ready(), vec![]),
            (
                Readiness {
                    identity: IdentityReadiness::NotYetNeeded,
                    ..Readiness::ready()
                },
                vec![],
            ),
            (
                Readiness {
                    coordination: CoordinationReadiness::Ok,
                    ..Readiness::ready()
                },
                vec![],
            ),
            (
                Readiness {
                    runbooks_loaded: false,
                    history_open: false,
                    ..Readiness::ready()
                },
                vec!["runbooks folder", "history database"],
            ),
            (
                Readiness {
                    history: HistoryReadiness::Failing("database or disk is full".into()),
                    ..Readiness::ready()
                },
                vec!["disk is full"],
            ),
            (
                Readiness {
                    identity: IdentityReadiness::Failing("IMDS answered 400".into()),
                    coordination: CoordinationReadiness::Unreachable("lease store 403".into()),
                    shutting_down: true,
                    ..Readiness::ready()
                },
                vec!["shutting down", "IMDS answered 400", "lease store 403"],
            ),
        ];
        for (readiness, wanted) in cases {
            let problems = readiness.problems();
            assert_eq!(problems.len(), wanted.len(), "{problems:?}");
            for (problem, want) in problems.iter().zip(&wanted) {
                assert!(problem.contains(want), "{problem:?} lacks {want:?}");
            }
            assert_eq!(readiness.is_ready(), wanted.is_empty());
        }
    }

    #[test]
    fn http_limits_out_of_range_are_reported_under_their_key() {
        assert_eq!(HttpSettings::default().problems(), vec![]);
        let bad = HttpSettings {
            header_read_timeout: HumanDuration::from_secs(0),
            idle_timeout: HumanDuration::from_secs(7200),
            request_timeout: HumanDuration(Duration::from_millis(500)),
            max_connections: 0,
            ..HttpSettings::default()
        };
        let problems = bad.problems();
        let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "http.header_read_timeout",
                "http.idle_timeout",
                "http.request_timeout",
                "http.max_connections"
            ]
        );
        assert!(problems[1].1.contains("between 1s and 1h"), "{problems:?}");
        assert!(problems[1].1.contains("2h"), "{problems:?}");

        // The settings check at load includes them.
        let settings = crate::settings::Settings {
            http: bad,
            ..crate::settings::Settings::default()
        };
        let all = settings.problems();
        assert!(
            all.iter().any(|(k, _)| k == "http.max_connections"),
            "{all:?}"
        );
    }

    #[test]
    fn a_run_request_body_refuses_unknown_fields_and_never_sets_its_origin() {
        let parsed: RunRequest =
            serde_json::from_str(r#"{"params": {"days": 30}, "dry_run": true}"#).unwrap();
        assert_eq!(parsed.params["days"], serde_json::json!(30));
        assert!(parsed.dry_run);
        assert_eq!(parsed.requested_via, RequestedVia::Api);

        let err = serde_json::from_str::<RunRequest>(r#"{"parameters": {}}"#).unwrap_err();
        assert!(err.to_string().contains("parameters"), "{err}");
        assert!(serde_json::from_str::<RunRequest>(r#"{"requested_via": "dashboard"}"#).is_err());
    }
}
