//! Helpers for the HTTP tests: a fake [`WorkerApi`] with canned runbooks and jobs that
//! records every call, the router served on 127.0.0.1:0, and headless Chromium.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use runbook_worker::history::{
    JobDetail, JobStatus, JobSummary, StepCounts, StreamEntry, StreamKind, Trigger,
};
use runbook_worker::http::{
    self, ApiAuth, ApiError, CancelOutcome, FileErrorView, JobFilter, ParamView, Readiness,
    RunAccepted, RunRequest, RunbookView, RunbooksView, ServerLimits, WorkerApi,
};
use runbook_worker::telemetry::metrics::Metrics;

/// The API token of the tests: long enough for `ApiAuth::from_settings`, and distinctive so
/// a leak is easy to find in a response or a log.
pub const TOKEN: &str = "tok-3f9a1c77e2b84d05a6c9e1f2d3b4a5c6-secret";
/// A wrong token, equally distinctive.
pub const WRONG_TOKEN: &str = "tok-00000000000000000000000000000000-wrong";

/// The description of a runbook that tries to inject a script into the dashboard.
pub const HOSTILE_DESCRIPTION: &str =
    "Removes forwarding <script>document.title='pwned'</script> & \"quotes\"";

/// One call the HTTP layer made into the worker.
#[derive(Clone, Debug, PartialEq)]
pub enum Call {
    ListJobs(JobFilter),
    GetJob(String),
    Run { name: String, request: RunRequest },
    Cancel(String),
    Occurrences { runbook: String, limit: usize },
}

impl Call {
    /// Whether the call changes something in the worker.
    pub fn is_change(&self) -> bool {
        matches!(self, Call::Run { .. } | Call::Cancel(_))
    }
}

/// Job ids of the canned jobs (real ULIDs, as the history makes them).
pub const JOB_1: &str = "01HWVD8Q0G0000000000000001";
pub const JOB_2: &str = "01HWVD8Q0G0000000000000002";
pub const JOB_3: &str = "01HWVD8Q0G0000000000000003";
/// A well-formed id no canned job has.
pub const JOB_404: &str = "01HWVD8Q0G0000000000000404";

fn instant(text: &str) -> chrono::DateTime<Utc> {
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("bad fixture instant {text}: {e}"))
        .with_timezone(&Utc)
}

pub fn step(
    name: &str,
    read: u64,
    done: u64,
    failed: u64,
    skipped: u64,
    planned: u64,
) -> StepCounts {
    StepCounts {
        step: name.into(),
        records_read: read,
        done,
        failed,
        skipped,
        writes_planned: planned,
    }
}

/// A job record built from the history's own types, as `get_job` returns it.
#[allow(clippy::too_many_arguments)]
pub fn job(
    id: &str,
    runbook: &str,
    trigger: Trigger,
    status: JobStatus,
    (scheduled, started, ended): (&str, Option<&str>, Option<&str>),
    steps: Vec<StepCounts>,
    error: Option<&str>,
    streams: Vec<(StreamKind, &str, &str)>,
) -> JobDetail {
    let started_at = started.map(instant);
    let ended_at = ended.map(instant);
    JobDetail {
        job: JobSummary {
            id: id.parse().expect("a ULID"),
            runbook: runbook.into(),
            file_hash: "0".repeat(64),
            trigger,
            status,
            dry_run: false,
            past_due: false,
            scheduled_for: Some(instant(scheduled)),
            created_at: instant(scheduled),
            started_at,
            ended_at,
            duration_ms: started_at
                .zip(ended_at)
                .map(|(s, e)| (e - s).num_milliseconds()),
            summary: None,
            error: error.map(str::to_string),
            replica: None,
        },
        params: Default::default(),
        steps,
        streams: streams
            .into_iter()
            .enumerate()
            .map(|(i, (kind, time, text))| StreamEntry {
                seq: i as u64 + 1,
                kind,
                time: instant(time),
                text: text.into(),
                data: None,
            })
            .collect(),
        dropped: Default::default(),
        reports: Vec::new(),
    }
}

/// The id the fake worker gives the `n`th job (counting the canned ones) a run starts.
pub fn new_job_id(n: usize) -> String {
    format!("01HWVD8Q0J{n:016}")
}

/// A worker with canned data that records what it is asked.
#[derive(Debug)]
pub struct FakeWorker {
    pub runbooks: Mutex<RunbooksView>,
    pub readiness: Mutex<Readiness>,
    pub jobs: Mutex<Vec<JobDetail>>,
    calls: Mutex<Vec<Call>>,
}

impl FakeWorker {
    /// Three runbooks (one with a hostile description and a file that has since become
    /// invalid), one file that never loaded, and three jobs.
    pub fn canned() -> Arc<Self> {
        let at = |h, m, s| Utc.with_ymd_and_hms(2024, 5, 1, h, m, s).single();
        let runbooks = RunbooksView {
            runbooks: vec![
                RunbookView {
                    name: "archive-old-mailboxes".into(),
                    description: Some("Archive mailboxes inactive for 90 days".into()),
                    file: "runbooks/archive-old-mailboxes.toml".into(),
                    schedule: Some("0 30 2 * * *".into()),
                    time_zone: "Europe/Paris".into(),
                    next_run: at(0, 30, 0),
                    enabled: true,
                    last_status: Some("Completed".into()),
                    last_job_id: Some(JOB_1.into()),
                    validation_error: None,
                    params: vec![ParamView {
                        name: "days".into(),
                        kind: "integer".into(),
                        default: Some(json!(90)),
                        required: false,
                        description: Some("Mailboxes inactive for this many days".into()),
                    }],
                    schedules: Vec::new(),
                },
                RunbookView {
                    name: "forwarding-cleanup".into(),
                    description: Some(HOSTILE_DESCRIPTION.into()),
                    file: "runbooks/forwarding-cleanup.toml".into(),
                    schedule: Some("0 */15 * * * *".into()),
                    time_zone: "UTC".into(),
                    next_run: at(3, 15, 0),
                    enabled: true,
                    last_status: Some("Failed".into()),
                    last_job_id: Some(JOB_2.into()),
                    validation_error: Some(FileErrorView {
                        file: "runbooks/forwarding-cleanup.toml".into(),
                        line: Some(7),
                        message: "unknown key `trottle` in [[steps]]: did you mean `throttle`?"
                            .into(),
                    }),
                    params: Vec::new(),
                    schedules: Vec::new(),
                },
                RunbookView {
                    name: "quota-report".into(),
                    description: None,
                    file: "runbooks/quota-report.toml".into(),
                    schedule: None,
                    time_zone: "UTC".into(),
                    next_run: None,
                    enabled: false,
                    last_status: None,
                    last_job_id: None,
                    validation_error: None,
                    params: Vec::new(),
                    schedules: Vec::new(),
                },
            ],
            invalid_files: vec![FileErrorView {
                file: "runbooks/mailbox-permissions.toml".into(),
                line: Some(3),
                message: "schedule: invalid cron expression \"61 * * * *\": minute must be 0-59"
                    .into(),
            }],
        };
        let jobs = vec![
            job(
                JOB_3,
                "archive-old-mailboxes",
                Trigger::Manual,
                JobStatus::Running,
                (
                    "2024-05-01T02:40:00Z",
                    Some("2024-05-01T02:40:00.020Z"),
                    None,
                ),
                vec![step("find", 120, 0, 0, 0, 0)],
                None,
                vec![],
            ),
            job(
                JOB_2,
                "forwarding-cleanup",
                Trigger::Schedule,
                JobStatus::Failed,
                (
                    "2024-05-01T02:15:00Z",
                    Some("2024-05-01T02:15:00.012Z"),
                    Some("2024-05-01T02:15:09.500Z"),
                ),
                vec![step("clear-forwarding", 40, 12, 1, 27, 0)],
                Some("Set-Mailbox failed for 1 mailbox: access denied"),
                vec![
                    (
                        StreamKind::Output,
                        "2024-05-01T02:15:03Z",
                        "40 mailboxes with forwarding",
                    ),
                    (
                        StreamKind::Error,
                        "2024-05-01T02:15:09Z",
                        "Set-Mailbox bob@contoso.example: access denied",
                    ),
                ],
            ),
            job(
                JOB_1,
                "archive-old-mailboxes",
                Trigger::Schedule,
                JobStatus::Completed,
                (
                    "2024-05-01T00:30:00Z",
                    Some("2024-05-01T00:30:00.008Z"),
                    Some("2024-05-01T00:32:05Z"),
                ),
                vec![
                    step("find-inactive", 412, 0, 0, 0, 0),
                    step("enable-archive", 0, 37, 0, 3, 0),
                ],
                None,
                vec![
                    (StreamKind::Progress, "2024-05-01T00:30:01Z", "page 1 of 1"),
                    (
                        StreamKind::Output,
                        "2024-05-01T00:31:00Z",
                        "412 mailboxes read, 40 inactive for 90 days",
                    ),
                    (
                        StreamKind::Warning,
                        "2024-05-01T00:31:30Z",
                        "3 mailboxes on litigation hold <skipped>",
                    ),
                    (
                        StreamKind::Output,
                        "2024-05-01T00:32:05Z",
                        "archive enabled for 37 mailboxes",
                    ),
                ],
            ),
        ];
        Arc::new(Self {
            runbooks: Mutex::new(runbooks),
            readiness: Mutex::new(Readiness::ready()),
            jobs: Mutex::new(jobs),
            calls: Mutex::new(Vec::new()),
        })
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// The calls that change something (runs and cancels).
    pub fn changes(&self) -> Vec<Call> {
        self.calls().into_iter().filter(Call::is_change).collect()
    }

    fn record(&self, call: Call) {
        self.calls.lock().unwrap().push(call);
    }

    fn has_runbook(&self, name: &str) -> bool {
        self.runbooks
            .lock()
            .unwrap()
            .runbooks
            .iter()
            .any(|r| r.name == name)
    }
}

#[async_trait::async_trait]
impl WorkerApi for FakeWorker {
    fn runbooks(&self) -> RunbooksView {
        self.runbooks.lock().unwrap().clone()
    }

    fn readiness(&self) -> Readiness {
        self.readiness.lock().unwrap().clone()
    }

    async fn list_jobs(&self, filter: JobFilter) -> Result<Vec<JobSummary>, ApiError> {
        self.record(Call::ListJobs(filter.clone()));
        let jobs = self.jobs.lock().unwrap();
        Ok(jobs
            .iter()
            .map(|j| &j.job)
            .filter(|j| filter.runbook.as_ref().is_none_or(|r| j.runbook == *r))
            .filter(|j| {
                filter
                    .status
                    .as_ref()
                    .is_none_or(|s| j.status.as_str().eq_ignore_ascii_case(s))
            })
            .take(filter.limit)
            .cloned()
            .collect())
    }

    async fn get_job(&self, id: &str) -> Result<Option<JobDetail>, ApiError> {
        self.record(Call::GetJob(id.to_string()));
        let jobs = self.jobs.lock().unwrap();
        Ok(jobs.iter().find(|j| j.job.id.as_str() == id).cloned())
    }

    async fn run_runbook(&self, name: &str, request: RunRequest) -> Result<RunAccepted, ApiError> {
        self.record(Call::Run {
            name: name.to_string(),
            request: request.clone(),
        });
        if self.readiness.lock().unwrap().shutting_down {
            return Err(ApiError::Unavailable(
                "the worker is shutting down: try another replica".into(),
            ));
        }
        match name {
            "quota-report" => {
                return Err(ApiError::Conflict(
                    "runbook quota-report is disabled".into(),
                ));
            }
            "explodes" => {
                return Err(ApiError::Internal(
                    "database disk image is malformed at /var/lib/secret-place/history.db".into(),
                ));
            }
            _ => {}
        }
        if !self.has_runbook(name) {
            return Err(ApiError::NotFound(format!("no runbook named {name:?}")));
        }
        if request.params.contains_key("unknown") {
            return Err(ApiError::BadRequest(
                "parameter `unknown` is not declared by the runbook".into(),
            ));
        }
        let mut jobs = self.jobs.lock().unwrap();
        let id = new_job_id(jobs.len() + 1);
        let mut queued = job(
            &id,
            name,
            Trigger::Api,
            JobStatus::Queued,
            ("2024-05-01T03:00:00Z", None, None),
            vec![],
            None,
            vec![],
        );
        queued.job.dry_run = request.dry_run;
        jobs.insert(0, queued);
        Ok(RunAccepted { job_id: id })
    }

    async fn cancel_job(&self, id: &str) -> Result<CancelOutcome, ApiError> {
        self.record(Call::Cancel(id.to_string()));
        let jobs = self.jobs.lock().unwrap();
        Ok(match jobs.iter().find(|j| j.job.id.as_str() == id) {
            None => CancelOutcome::NotFound,
            Some(job) if matches!(job.job.status, JobStatus::Running | JobStatus::Queued) => {
                CancelOutcome::Requested
            }
            Some(job) => CancelOutcome::NotRunning {
                status: job.job.status.to_string(),
            },
        })
    }

    async fn occurrences(&self, runbook: &str, limit: usize) -> Result<Vec<Value>, ApiError> {
        self.record(Call::Occurrences {
            runbook: runbook.to_string(),
            limit,
        });
        if !self.has_runbook(runbook) {
            return Err(ApiError::NotFound(format!("no runbook named {runbook:?}")));
        }
        Ok((0..limit)
            .map(|day| {
                json!({
                    "utc": format!("2024-05-{:02}T00:30:00Z", day + 2),
                    "local": format!("2024-05-{:02}T02:30:00+02:00", day + 2),
                })
            })
            .collect())
    }
}

/// The router served on 127.0.0.1:0 over a fake worker.
pub struct TestServer {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub worker: Arc<FakeWorker>,
    pub metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<std::io::Result<()>>>,
}

/// Serves the canned worker with `auth`.
pub async fn spawn(auth: ApiAuth) -> TestServer {
    spawn_with(FakeWorker::canned(), auth, None).await
}

/// Serves `worker` with `auth`; `extra` routes (test pages) are merged in next to the
/// product's routes.
pub async fn spawn_with(
    worker: Arc<FakeWorker>,
    auth: ApiAuth,
    extra: Option<axum::Router>,
) -> TestServer {
    spawn_limited(worker, auth, extra, ServerLimits::default()).await
}

/// Serves `worker` with `auth` under `limits` (timeouts, connection cap).
pub async fn spawn_limited(
    worker: Arc<FakeWorker>,
    auth: ApiAuth,
    extra: Option<axum::Router>,
    limits: ServerLimits,
) -> TestServer {
    let metrics = Arc::new(Metrics::new());
    let mut router = http::router(worker.clone(), metrics.clone(), auth);
    if let Some(extra) = extra {
        router = router.merge(extra);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address");
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(http::serve(listener, router, limits, shutdown.clone()));
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest client");
    TestServer {
        addr,
        client,
        worker,
        metrics,
        shutdown,
        handle: Some(handle),
    }
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.expect("GET")
    }

    /// GETs `path` with extra request headers.
    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut request = self.client.get(self.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("GET")
    }

    /// POSTs `body` (JSON text, or nothing) with an optional `Authorization` header value.
    pub async fn post(
        &self,
        path: &str,
        authorization: Option<&str>,
        body: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self.client.post(self.url(path));
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        request.send().await.expect("POST")
    }

    /// Stops the server gracefully and checks it ended without error.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            let ended = tokio::time::timeout(Duration::from_secs(10), handle)
                .await
                .expect("the server stops within 10 s of shutdown");
            ended.expect("server task").expect("server result");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// `Bearer <token>`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Where tests leave files for people to look at (screenshots).
pub fn artifacts_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&dir).expect("create target/test-artifacts");
    dir
}

/// Photographs `url` with Chromium (1280×900) into `file` in [`artifacts_dir`], checks
/// that a PNG of a page with content came out, and says where it is.
pub async fn screenshot(url: &str, file: &str, extra: &[String]) {
    let png = artifacts_dir().join(file);
    let _ = std::fs::remove_file(&png);
    let mut flags = vec![
        format!("--screenshot={}", png.display()),
        "--window-size=1280,900".to_string(),
    ];
    flags.extend_from_slice(extra);
    chromium(url, &flags).await;
    let bytes = std::fs::read(&png).expect("chromium wrote the screenshot");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(bytes.len() > 10_000, "a blank page? {} bytes", bytes.len());
    println!("screenshot: {}", png.display());
}

/// Debian's chromium, which `.ci/run` installs when it is missing.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Runs headless Chromium once on `url` (which must be on 127.0.0.1) with `extra` flags
/// (`--dump-dom`, `--screenshot=…`) and returns its stdout. Chromium gets a fresh profile and
/// home, no proxy, and a resolver that knows no host names, so it can reach nothing but the
/// test server.
pub async fn chromium(url: &str, extra: &[String]) -> String {
    assert!(
        url.starts_with("http://127.0.0.1:"),
        "Chromium may only load 127.0.0.1 URLs, not {url}"
    );
    assert!(
        Path::new(CHROMIUM).is_file(),
        "{CHROMIUM} is missing: install Debian's chromium package \
         (apt-get install -y --no-install-recommends chromium), as .ci/run does"
    );
    let profile = tempfile::tempdir().expect("chromium profile dir");
    let mut command = tokio::process::Command::new(CHROMIUM);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--no-proxy-server",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .env("HOME", profile.path())
        .env("XDG_CONFIG_HOME", profile.path())
        .env("XDG_CACHE_HOME", profile.path())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    // Chromium starts slowly on a busy machine; this bounds a hang, it is not a timing check.
    let output = tokio::time::timeout(Duration::from_secs(180), command.output())
        .await
        .expect("chromium finishes within 180 s")
        .expect("spawn chromium");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "chromium failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// A `BTreeMap` of JSON values, for building expected run parameters.
pub fn params(pairs: &[(&str, Value)]) -> BTreeMap<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// Opens `count` connections to `addr` that each send the start of a request header and
/// never finish it: the slow-header ("slowloris") attack.
pub async fn open_half_requests(addr: SocketAddr, count: usize) -> Vec<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt as _;
    let mut streams = Vec::with_capacity(count);
    for i in 0..count {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connection {i} to {addr}: {e}"));
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            .await
            .unwrap_or_else(|e| panic!("half a request on connection {i}: {e}"));
        streams.push(stream);
    }
    streams
}

/// How a connection the test keeps open ended.
#[derive(Debug)]
pub struct Ended {
    /// Whether the server closed it (EOF or reset) before the deadline.
    pub closed: bool,
    /// The start of what the server sent before closing.
    pub received: Vec<u8>,
    /// How many bytes it sent in all.
    pub total: usize,
    /// When it was closed, from the start of the wait.
    pub after: Duration,
}

/// Reads `stream` until the server closes it or `limit` passes, keeping at most `keep` bytes
/// of what arrives.
pub async fn read_until_closed(
    mut stream: tokio::net::TcpStream,
    limit: Duration,
    keep: usize,
) -> Ended {
    use tokio::io::AsyncReadExt as _;
    let start = tokio::time::Instant::now();
    let deadline = start + limit;
    let mut received = Vec::new();
    let mut total = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => {
                return Ended {
                    closed: false,
                    received,
                    total,
                    after: start.elapsed(),
                };
            }
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Ended {
                    closed: true,
                    received,
                    total,
                    after: start.elapsed(),
                };
            }
            Ok(Ok(n)) => {
                total += n;
                let room = keep.saturating_sub(received.len()).min(n);
                received.extend_from_slice(&buf[..room]);
            }
        }
    }
}

/// Whether `stream` is still open: nothing to read yet and no EOF.
pub fn still_open(stream: &tokio::net::TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}
