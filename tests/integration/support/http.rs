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

use runbook_worker::http::{
    self, ApiAuth, ApiError, CancelOutcome, FileErrorView, JobFilter, Readiness, RunAccepted,
    RunRequest, RunbookView, RunbooksView, ServerLimits, WorkerApi,
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

/// A worker with canned data that records what it is asked.
#[derive(Debug)]
pub struct FakeWorker {
    pub runbooks: Mutex<RunbooksView>,
    pub readiness: Mutex<Readiness>,
    pub jobs: Mutex<Vec<Value>>,
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
                    last_job_id: Some("job-1".into()),
                    validation_error: None,
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
                    last_job_id: Some("job-2".into()),
                    validation_error: Some(FileErrorView {
                        file: "runbooks/forwarding-cleanup.toml".into(),
                        line: Some(7),
                        message: "unknown key `trottle` in [[steps]]: did you mean `throttle`?"
                            .into(),
                    }),
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
            json!({
                "id": "job-3", "runbook": "archive-old-mailboxes", "trigger": "manual",
                "status": "Running", "scheduled_for": "2024-05-01T02:40:00Z",
                "started_at": "2024-05-01T02:40:00.020Z", "ended_at": null, "dry_run": false,
                "steps": [{"step": "find", "records_read": 120, "done": 0, "failed": 0, "skipped": 0, "writes_planned": 0}],
                "error": null, "streams": [],
            }),
            json!({
                "id": "job-2", "runbook": "forwarding-cleanup", "trigger": "schedule",
                "status": "Failed", "scheduled_for": "2024-05-01T02:15:00Z",
                "started_at": "2024-05-01T02:15:00.012Z", "ended_at": "2024-05-01T02:15:09.500Z",
                "dry_run": false,
                "steps": [{"step": "clear-forwarding", "records_read": 40, "done": 12, "failed": 1, "skipped": 27, "writes_planned": 0}],
                "error": "Set-Mailbox failed for 1 mailbox: access denied",
                "streams": [
                    {"seq": 1, "kind": "output", "time": "2024-05-01T02:15:03Z", "text": "40 mailboxes with forwarding"},
                    {"seq": 2, "kind": "error", "time": "2024-05-01T02:15:09Z", "text": "Set-Mailbox bob@contoso.example: access denied"},
                ],
            }),
            json!({
                "id": "job-1", "runbook": "archive-old-mailboxes", "trigger": "schedule",
                "status": "Completed", "scheduled_for": "2024-05-01T00:30:00Z",
                "started_at": "2024-05-01T00:30:00.008Z", "ended_at": "2024-05-01T00:32:05Z",
                "dry_run": false,
                "steps": [
                    {"step": "find-inactive", "records_read": 412, "done": 0, "failed": 0, "skipped": 0, "writes_planned": 0},
                    {"step": "enable-archive", "records_read": 0, "done": 37, "failed": 0, "skipped": 3, "writes_planned": 0},
                ],
                "error": null,
                "streams": [
                    {"seq": 1, "kind": "progress", "time": "2024-05-01T00:30:01Z", "text": "page 1 of 1"},
                    {"seq": 2, "kind": "output", "time": "2024-05-01T00:31:00Z", "text": "412 mailboxes read, 40 inactive for 90 days"},
                    {"seq": 3, "kind": "warning", "time": "2024-05-01T00:31:30Z", "text": "3 mailboxes on litigation hold <skipped>"},
                    {"seq": 4, "kind": "output", "time": "2024-05-01T00:32:05Z", "text": "archive enabled for 37 mailboxes"},
                ],
            }),
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

    async fn list_jobs(&self, filter: JobFilter) -> Result<Vec<Value>, ApiError> {
        self.record(Call::ListJobs(filter.clone()));
        let jobs = self.jobs.lock().unwrap();
        Ok(jobs
            .iter()
            .filter(|j| filter.runbook.as_ref().is_none_or(|r| j["runbook"] == **r))
            .filter(|j| filter.status.as_ref().is_none_or(|s| j["status"] == **s))
            .take(filter.limit)
            .cloned()
            .collect())
    }

    async fn get_job(&self, id: &str) -> Result<Option<Value>, ApiError> {
        self.record(Call::GetJob(id.to_string()));
        let jobs = self.jobs.lock().unwrap();
        Ok(jobs.iter().find(|j| j["id"] == id).cloned())
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
        let id = format!("job-new-{}", jobs.len() + 1);
        jobs.insert(
            0,
            json!({"id": id, "runbook": name, "trigger": "api", "status": "Queued", "dry_run": request.dry_run}),
        );
        Ok(RunAccepted { job_id: id })
    }

    async fn cancel_job(&self, id: &str) -> Result<CancelOutcome, ApiError> {
        self.record(Call::Cancel(id.to_string()));
        let jobs = self.jobs.lock().unwrap();
        Ok(match jobs.iter().find(|j| j["id"] == id) {
            None => CancelOutcome::NotFound,
            Some(job) if job["status"] == "Running" || job["status"] == "Queued" => {
                CancelOutcome::Requested
            }
            Some(job) => CancelOutcome::NotRunning {
                status: job["status"].as_str().unwrap_or("unknown").to_string(),
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
