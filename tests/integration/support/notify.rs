//! Receivers for the notification tests: a small axum server on 127.0.0.1:0 that records
//! every request and answers from a script, an independent Standard Webhooks verifier, a
//! token source for the Graph `sendMail` receiver, and a sink for delivery reports.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use runbook_worker::clock::SharedClock;
use runbook_worker::identity::{AccessToken, IdentityError, TokenSource};
use runbook_worker::notify::{
    DeliveryReport, GraphMailSender, MailSender, Notifier, NotifierDeps, NotifyEvents,
    NotifySettings, graph_client,
};
use runbook_worker::telemetry::metrics::Metrics;

/// What the receiver answers; the last reply of a script repeats.
#[derive(Clone, Debug)]
pub enum Reply {
    Status(u16),
    /// Status, headers, body.
    Full(u16, Vec<(&'static str, String)>, String),
    /// Never answers.
    Hang,
}

#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// Path and query as received.
    pub uri: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

#[derive(Clone)]
struct ReceiverState {
    replies: Arc<Vec<Reply>>,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

/// A running receiver; stops when dropped.
pub struct Receiver {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    pub async fn start(replies: Vec<Reply>) -> Receiver {
        assert!(!replies.is_empty());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let state = ReceiverState {
            replies: Arc::new(replies),
            requests: requests.clone(),
        };
        let router = axum::Router::new().fallback(handle).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Receiver {
            base,
            requests,
            task,
        }
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("{}{path_and_query}", self.base)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

async fn handle(
    State(state): State<ReceiverState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let index = {
        let mut requests = state.requests.lock().unwrap();
        requests.push(Recorded {
            method: method.to_string(),
            uri: uri.to_string(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
                .collect(),
            body: body.to_vec(),
        });
        requests.len() - 1
    };
    let reply = state.replies[index.min(state.replies.len() - 1)].clone();
    match reply {
        Reply::Status(status) => StatusCode::from_u16(status).unwrap().into_response(),
        Reply::Full(status, headers, body) => {
            let mut response = (StatusCode::from_u16(status).unwrap(), body).into_response();
            for (k, v) in headers {
                response.headers_mut().insert(k, v.parse().unwrap());
            }
            response
        }
        Reply::Hang => std::future::pending().await,
    }
}

/// A loopback URL where nothing listens.
pub async fn down_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/hook")
}

/// Verifies a Standard Webhooks request the way a receiver would, written apart from the
/// worker's signer: decode the `whsec_` key, HMAC the `id.timestamp.body` content, compare
/// with any `v1` entry of `webhook-signature`, and check the timestamp within 5 minutes.
pub fn verify_standard_webhook(secret: &str, request: &Recorded, now: DateTime<Utc>) -> bool {
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64
        .decode(secret.trim_start_matches("whsec_"))
        .expect("test secret is base64");
    let (Some(id), Some(ts), Some(signatures)) = (
        request.header("webhook-id"),
        request.header("webhook-timestamp"),
        request.header("webhook-signature"),
    ) else {
        return false;
    };
    let Ok(ts_num) = ts.parse::<i64>() else {
        return false;
    };
    if (now.timestamp() - ts_num).abs() > 300 {
        return false;
    }
    let mut content = format!("{id}.{ts}.").into_bytes();
    content.extend_from_slice(&request.body);
    signatures.split(' ').any(|entry| {
        let Some(sig) = entry.strip_prefix("v1,") else {
            return false;
        };
        let Ok(sig) = b64.decode(sig) else {
            return false;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(&content);
        mac.verify_slice(&sig).is_ok()
    })
}

/// Collects delivery reports.
#[derive(Default)]
pub struct Reports(Mutex<Vec<DeliveryReport>>);

impl NotifyEvents for Reports {
    fn delivered(&self, report: &DeliveryReport) {
        self.0.lock().unwrap().push(report.clone());
    }
}

impl Reports {
    pub fn all(&self) -> Vec<DeliveryReport> {
        self.0.lock().unwrap().clone()
    }

    /// Waits until at least `n` reports came in (10 s at most).
    pub async fn wait_for(&self, n: usize) -> Vec<DeliveryReport> {
        let ok = super::wait_until(Duration::from_secs(10), || async {
            self.0.lock().unwrap().len() >= n
        })
        .await;
        let all = self.all();
        assert!(ok, "expected {n} reports, got {all:#?}");
        all
    }
}

/// The Graph token the `sendMail` receiver expects.
pub const GRAPH_TOKEN: &str = "test-graph-token";

#[derive(Debug)]
pub struct FixedTokens;

#[async_trait]
impl TokenSource for FixedTokens {
    async fn token(&self, _resource: &str) -> Result<AccessToken, IdentityError> {
        Ok(AccessToken::new(
            GRAPH_TOKEN,
            Utc::now() + chrono::Duration::hours(1),
        ))
    }

    async fn refresh(
        &self,
        resource: &str,
        _claims: Option<&str>,
    ) -> Result<AccessToken, IdentityError> {
        self.token(resource).await
    }
}

/// `[notify]` settings from TOML, with retries fast enough for tests.
pub fn settings(toml_text: &str) -> NotifySettings {
    let fast = [
        ("retry_delay", "\"20ms\""),
        ("max_retry_delay", "\"100ms\""),
        ("timeout", "\"2s\""),
        ("drain_timeout", "\"2s\""),
    ];
    let mut text = String::new();
    for (key, value) in fast {
        if !toml_text
            .lines()
            .any(|l| l.starts_with(&format!("{key} =")))
        {
            text.push_str(&format!("{key} = {value}\n"));
        }
    }
    text.push_str(toml_text);
    let settings: NotifySettings = toml::from_str(&text).expect("test settings parse");
    let problems = settings.problems();
    assert!(problems.is_empty(), "{problems:?}");
    settings
}

/// A started notifier with its reports and metrics.
pub struct Started {
    pub notifier: Notifier,
    pub reports: Arc<Reports>,
    pub metrics: Arc<Metrics>,
    pub cancel: tokio_util::sync::CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
}

impl Started {
    pub async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the notifier stops within its drain timeout")
            .unwrap();
    }
}

pub fn start(settings: &NotifySettings, clock: SharedClock, public_url: Option<&str>) -> Started {
    let mail: Arc<dyn MailSender> = Arc::new(GraphMailSender::new(
        Arc::new(FixedTokens),
        settings.graph_endpoint.as_url().clone(),
        graph_client(settings).unwrap(),
        clock.clone(),
    ));
    let reports = Arc::new(Reports::default());
    let metrics = Arc::new(Metrics::new());
    let cancel = tokio_util::sync::CancellationToken::new();
    let (notifier, task) = Notifier::start(
        settings,
        NotifierDeps {
            mail: Some(mail),
            public_url: public_url.map(|u| url::Url::parse(u).unwrap()),
            clock,
            metrics: metrics.clone(),
            events: reports.clone(),
        },
        cancel.clone(),
    )
    .expect("the notifier starts");
    Started {
        notifier,
        reports,
        metrics,
        cancel,
        task,
    }
}

/// Captures everything `tracing` writes in this process. Installed as the global
/// subscriber, so only in a process of its own ([`in_own_process`]): a thread-local one
/// misses events whose callsites other tests' threads registered first.
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    pub fn install_globally(&self) {
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("the child process has no subscriber yet");
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Set in the child process [`in_own_process`] starts.
const CHILD_ENV: &str = "RUNBOOK_WORKER_TEST_OWN_PROCESS";

/// True in the child: run the test's body. In the parent, re-runs the test binary for just
/// `test` (its path below the crate, `notify::name`), asserts that it passed and returns
/// false.
pub fn in_own_process(test: &str) -> bool {
    if std::env::var_os(CHILD_ENV).is_some() {
        return true;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .output()
        .expect("re-run the test binary");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{test} failed in its own process:\n{text}"
    );
    assert!(
        text.contains("1 passed"),
        "{test} did not run in its own process:\n{text}"
    );
    false
}
