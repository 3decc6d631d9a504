//! A simulated Exchange Online tenant behind `POST /adminapi/beta/{tenant}/InvokeCommand`
//! on 127.0.0.1, faithful to the wire protocol the ExchangeOnlineManagement module speaks
//! (summarised in the README's "Exchange Online calls").
//!
//! It checks what the service checks — POST only, the `CmdletInput` envelope, a bearer
//! token whose `aud` is the resource and whose `roles` hold `Exchange.ManageAsApp` (else a
//! bodyless 403 with `x-ms-diagnostics`), a tenant segment that is the token's `tid` or
//! the initial domain, a directory role in `wids` — and answers in the service's shapes:
//! annotated records, `@adminapi.warnings`, `@odata.nextLink` paging (POST the same body;
//! links expire), errors with `details[0].message` in the pipe or JSON form.
//!
//! Tests script it: latency per call, a per-tenant concurrency cap answered with 429 +
//! `Retry-After`, one-off faults per cmdlet (throttling, 5xx bursts, dropped connections,
//! redirects to a second "regional" listener, a 401 claims challenge), expired next links.
//! It records every request (the `Authorization` value redacted) and exposes the
//! organisation so tests assert what changed.
//!
//! Knows nothing of the client in [`crate::exchange`]: it is a stand-in for the service.

mod cmdlets;
pub mod filter;
pub mod org;
mod tokens;

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt as _;
use base64::Engine as _;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::clock::{SharedClock, SystemClock};
use crate::identity::TokenClaims;
use crate::identity::claims::{EXCHANGE_MANAGE_AS_APP, directory_role};
use cmdlets::{Failure, Limit, Outcome, Query};
pub use org::{Mailbox, Organisation, Quota, RecipientTypeDetails};
pub use tokens::{EXCHANGE_ADMINISTRATOR, SimulatedTokens};

/// The simulated tenant's id unless configured otherwise.
pub const DEFAULT_TENANT_ID: &str = "8f0c2b7e-5d1a-4c3b-9e6f-1a2b3c4d5e6f";
/// The 429 text for the per-tenant concurrency limit.
pub const CONCURRENCY_MESSAGE: &str = "You have reached the maximum number of concurrent requests per tenant. Please wait and try again.";
/// The warning on pages that have a next link, and on reads cut short by `-ResultSize`.
pub const PAGING_WARNING: &str = "There are more results available than are currently displayed. To view them, increase the value for the ResultSize parameter.";
/// The warning of a read without `-ResultSize` that had more than 1000 results.
pub const DEFAULT_LIMIT_WARNING: &str = "By default, only the first 1000 items are returned. Use the ResultSize parameter to specify the number of items returned. To return all items, specify \"-ResultSize Unlimited\". Be aware that, depending upon the actual number of items, returning all items can take a long time and consume a large amount of memory. Also, we don't recommend storing the results in a variable. Instead, pipe the results to another task or script to perform batch changes.";

/// How the simulated tenant starts.
#[derive(Clone, Debug)]
pub struct SimulatorConfig {
    /// `contoso` → `contoso.com` and `contoso.onmicrosoft.com`.
    pub organization: String,
    pub tenant_id: String,
    /// The `aud` tokens must carry.
    pub resource: String,
    /// Mailboxes seeded.
    pub mailboxes: usize,
    pub seed: u64,
    /// Added to every authorised call, inside the concurrency window.
    pub latency: Duration,
    /// Requests in flight above this get 429.
    pub max_concurrent: Option<usize>,
    /// `Retry-After` of a concurrency 429.
    pub throttle_retry_after: Duration,
    /// How long a next link stays valid.
    pub next_link_ttl: Duration,
    /// Keep a log of requests (turn off for long benchmarks).
    pub record_requests: bool,
    /// Decides whether a token has expired.
    pub clock: SharedClock,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        Self {
            organization: "contoso".to_string(),
            tenant_id: DEFAULT_TENANT_ID.to_string(),
            resource: "https://outlook.office365.com".to_string(),
            mailboxes: 25,
            seed: 1,
            latency: Duration::ZERO,
            max_concurrent: None,
            throttle_retry_after: Duration::from_secs(1),
            next_link_ttl: Duration::from_secs(10 * 60),
            record_requests: true,
            clock: Arc::new(SystemClock),
        }
    }
}

impl SimulatorConfig {
    pub fn with_mailboxes(mut self, count: usize) -> Self {
        self.mailboxes = count;
        self
    }

    pub fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    pub fn with_max_concurrent(mut self, cap: usize) -> Self {
        self.max_concurrent = Some(cap);
        self
    }
}

/// Which of the two listeners a request came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    Primary,
    /// The "regional front door" redirects can point at.
    Regional,
}

/// One request as received.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub listener: Listener,
    /// Lower-case names; `authorization` reads `Bearer [redacted]`.
    pub headers: Vec<(String, String)>,
    /// The body as JSON, when it was JSON.
    pub body: Option<Value>,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn cmdlet(&self) -> Option<&str> {
        self.body
            .as_ref()?
            .pointer("/CmdletInput/CmdletName")?
            .as_str()
    }

    pub fn parameters(&self) -> Option<&Map<String, Value>> {
        self.body
            .as_ref()?
            .pointer("/CmdletInput/Parameters")?
            .as_object()
    }
}

/// Where a scripted redirect points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedirectTo {
    /// The same path and query on the regional listener (another port).
    Regional,
    /// A `Location` verbatim (absolute or relative).
    Location(String),
}

/// A scripted misbehaviour.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// 429 with the per-tenant concurrency text and this `Retry-After` (none: no header).
    Throttle { retry_after: Option<Duration> },
    /// 429 with this `Retry-After` text and error message verbatim, as a misbehaving front
    /// door might send them (`1e300`, "Try again in 99999999999999999999999 seconds").
    ThrottleVerbatim {
        retry_after: Option<String>,
        message: String,
    },
    /// A 5xx. `exception` puts a class (e.g. `DCOverloadedException`) in the details;
    /// `after_executing` runs the cmdlet first, as when a gateway times out on a call the
    /// backend completed.
    ServerError {
        status: u16,
        exception: Option<String>,
        after_executing: bool,
    },
    /// Headers, then the connection drops mid-body.
    ConnectionReset { after_executing: bool },
    /// A 3xx.
    Redirect { status: u16, to: RedirectTo },
    /// 401 with a claims challenge; the token presented stays refused.
    ClaimsChallenge,
}

#[derive(Debug)]
struct Scripted {
    cmdlet: Option<String>,
    fault: Fault,
    remaining: usize,
}

#[derive(Clone, Debug)]
struct Knobs {
    latency: Duration,
    max_concurrent: Option<usize>,
    throttle_retry_after: Duration,
    next_link_ttl: Duration,
    /// Where next links point instead of the listener's own origin.
    next_link_base: Option<String>,
}

struct PageState {
    input: Value,
    query: Query,
    position: usize,
    served: usize,
    created: Instant,
    expired: bool,
}

/// Counters for tests and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimulatorStats {
    pub requests: u64,
    /// 429s for the concurrency cap (scripted ones not included).
    pub throttled: u64,
    pub peak_in_flight: usize,
}

struct Shared {
    clock: SharedClock,
    tenant_id: String,
    initial_domain: String,
    resource: String,
    org: Mutex<Organisation>,
    requests: Mutex<Vec<RecordedRequest>>,
    record: AtomicBool,
    faults: Mutex<Vec<Scripted>>,
    knobs: Mutex<Knobs>,
    pages: Mutex<HashMap<String, PageState>>,
    /// Signatures of tokens refused by a claims challenge.
    revoked: Mutex<HashSet<String>>,
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
    throttled: AtomicU64,
    total: AtomicU64,
    cookie_counter: AtomicU64,
    bases: Mutex<(String, String)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // State behind these locks stays consistent between statements; a panic elsewhere
    // must not take the simulator down with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The running simulator. Dropping it stops the listeners; [`ExchangeSimulator::shutdown`]
/// also waits for them.
pub struct ExchangeSimulator {
    shared: Arc<Shared>,
    primary: SocketAddr,
    regional: SocketAddr,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

#[derive(Clone)]
struct Ctx {
    shared: Arc<Shared>,
    listener: Listener,
}

impl ExchangeSimulator {
    /// Seeds the organisation and listens on two loopback ports.
    pub async fn start(config: SimulatorConfig) -> io::Result<Self> {
        let primary_listener = TcpListener::bind("127.0.0.1:0").await?;
        let regional_listener = TcpListener::bind("127.0.0.1:0").await?;
        let primary = primary_listener.local_addr()?;
        let regional = regional_listener.local_addr()?;
        let (name, tenant, count, seed) = (
            config.organization.clone(),
            config.tenant_id.clone(),
            config.mailboxes,
            config.seed,
        );
        // Seeding 100,000 mailboxes takes a moment: keep it off the async workers.
        let org =
            tokio::task::spawn_blocking(move || Organisation::seeded(&name, &tenant, count, seed))
                .await
                .map_err(io::Error::other)?;
        let shared = Arc::new(Shared {
            clock: Arc::clone(&config.clock),
            tenant_id: config.tenant_id.clone(),
            initial_domain: org.initial_domain.clone(),
            resource: config.resource.clone(),
            org: Mutex::new(org),
            requests: Mutex::new(Vec::new()),
            record: AtomicBool::new(config.record_requests),
            faults: Mutex::new(Vec::new()),
            knobs: Mutex::new(Knobs {
                latency: config.latency,
                max_concurrent: config.max_concurrent,
                throttle_retry_after: config.throttle_retry_after,
                next_link_ttl: config.next_link_ttl,
                next_link_base: None,
            }),
            pages: Mutex::new(HashMap::new()),
            revoked: Mutex::new(HashSet::new()),
            in_flight: AtomicUsize::new(0),
            peak_in_flight: AtomicUsize::new(0),
            throttled: AtomicU64::new(0),
            total: AtomicU64::new(0),
            cookie_counter: AtomicU64::new(0),
            bases: Mutex::new((format!("http://{primary}"), format!("http://{regional}"))),
        });
        let cancel = CancellationToken::new();
        let mut tasks = Vec::new();
        for (listener, which) in [
            (primary_listener, Listener::Primary),
            (regional_listener, Listener::Regional),
        ] {
            let app = Router::new().fallback(handle).with_state(Ctx {
                shared: Arc::clone(&shared),
                listener: which,
            });
            let stop = cancel.clone();
            // Answers go out at once, as from a real front door (no Nagle delay).
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            tasks.push(tokio::spawn(async move {
                let served = axum::serve(listener, app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await;
                if let Err(e) = served {
                    tracing::warn!(error = %e, "simulated Exchange listener stopped");
                }
            }));
        }
        Ok(Self {
            shared,
            primary,
            regional,
            cancel,
            tasks,
        })
    }

    /// `http://127.0.0.1:PORT`: the `exchange.endpoint` to configure.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.primary)
    }

    /// [`Self::base_url`] as the checked type of `exchange.endpoint`.
    pub fn endpoint(&self) -> crate::base_url::BaseUrl {
        crate::base_url::BaseUrl::of_socket(self.primary)
    }

    pub fn regional_url(&self) -> String {
        format!("http://{}", self.regional)
    }

    pub fn tenant_id(&self) -> &str {
        &self.shared.tenant_id
    }

    pub fn initial_domain(&self) -> &str {
        &self.shared.initial_domain
    }

    pub fn resource(&self) -> &str {
        &self.shared.resource
    }

    /// A token source whose tokens this tenant accepts (valid for an hour from the
    /// simulator's clock).
    pub fn token_source(&self) -> SimulatedTokens {
        SimulatedTokens::for_tenant(
            &self.shared.tenant_id,
            &self.shared.resource,
            self.shared.clock.now(),
        )
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    pub fn clear_requests(&self) {
        lock(&self.shared.requests).clear();
    }

    pub fn stats(&self) -> SimulatorStats {
        SimulatorStats {
            requests: self.shared.total.load(Ordering::SeqCst),
            throttled: self.shared.throttled.load(Ordering::SeqCst),
            peak_in_flight: self.shared.peak_in_flight.load(Ordering::SeqCst),
        }
    }

    /// A copy of every mailbox (small organisations; use [`Self::with_org`] for large).
    pub fn mailboxes(&self) -> Vec<Mailbox> {
        lock(&self.shared.org).mailboxes().to_vec()
    }

    pub fn mailbox(&self, identity: &str) -> Option<Mailbox> {
        let org = lock(&self.shared.org);
        org.resolve(identity)
            .ok()
            .and_then(|p| org.mailbox_at(p).cloned())
    }

    /// Reads or changes the organisation directly.
    pub fn with_org<R>(&self, f: impl FnOnce(&mut Organisation) -> R) -> R {
        f(&mut lock(&self.shared.org))
    }

    /// Makes the next `times` requests for `cmdlet` (any cmdlet when `None`) misbehave.
    pub fn inject(&self, cmdlet: Option<&str>, fault: Fault, times: usize) {
        lock(&self.shared.faults).push(Scripted {
            cmdlet: cmdlet.map(str::to_string),
            fault,
            remaining: times,
        });
    }

    /// Scripted faults not yet used.
    pub fn pending_faults(&self) -> usize {
        lock(&self.shared.faults).iter().map(|s| s.remaining).sum()
    }

    pub fn set_latency(&self, latency: Duration) {
        lock(&self.shared.knobs).latency = latency;
    }

    pub fn set_max_concurrent(&self, cap: Option<usize>) {
        lock(&self.shared.knobs).max_concurrent = cap;
    }

    pub fn set_throttle_retry_after(&self, after: Duration) {
        lock(&self.shared.knobs).throttle_retry_after = after;
    }

    /// Makes next links point at `base` (another origin) instead of the listener's own,
    /// as a misbehaving proxy might.
    pub fn set_next_link_base(&self, base: Option<String>) {
        lock(&self.shared.knobs).next_link_base = base;
    }

    /// Every next link handed out so far stops working.
    pub fn expire_next_links(&self) {
        for state in lock(&self.shared.pages).values_mut() {
            state.expired = true;
        }
    }

    pub fn set_recording(&self, on: bool) {
        self.shared.record.store(on, Ordering::SeqCst);
    }

    /// Stops both listeners and waits for them.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

impl Drop for ExchangeSimulator {
    fn drop(&mut self) {
        self.cancel.cancel();
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The tenant segment of `/adminapi/beta/{tenant}/InvokeCommand`, in any case.
fn tenant_segment(path: &str) -> Option<String> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        [.., a, b, tenant, c]
            if a.eq_ignore_ascii_case("adminapi")
                && b.eq_ignore_ascii_case("beta")
                && c.eq_ignore_ascii_case("InvokeCommand") =>
        {
            Some(percent_decode(tenant))
        }
        _ => None,
    }
}

fn percent_decode(text: &str) -> String {
    url::form_urlencoded::parse(format!("x={text}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| text.to_string())
}

fn skiptoken(uri: &Uri) -> Option<String> {
    uri.query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == "$skiptoken" || k.eq_ignore_ascii_case("%24skiptoken")).then(|| percent_decode(v))
    })
}

fn json_response(status: u16, body: &Value) -> Response {
    let mut response = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body.to_string(),
    )
        .into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    with_request_id(response)
}

fn with_request_id(mut response: Response) -> Response {
    if let Ok(id) = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()) {
        response.headers_mut().insert("request-id", id);
    }
    response
}

fn error_body(code: &str, message: &str) -> Value {
    json!({"error": {"code": code, "message": message}})
}

fn empty_with_diagnostics(status: u16, diagnostics: &str) -> Response {
    let mut response = StatusCode::from_u16(status)
        .unwrap_or(StatusCode::FORBIDDEN)
        .into_response();
    if let Ok(value) = HeaderValue::from_str(diagnostics) {
        response.headers_mut().insert("x-ms-diagnostics", value);
    }
    with_request_id(response)
}

const BEARER_CHALLENGE: &str = "Bearer client_id=\"00000002-0000-0ff1-ce00-000000000000\", trusted_issuers=\"00000001-0000-0000-c000-000000000000@*\", token_types=\"app_asserted_user_v1 service_asserted_app_v1\", authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\", error=\"invalid_token\"";

fn unauthorized_token(diagnostics: &str) -> Response {
    let mut response = empty_with_diagnostics(401, diagnostics);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(BEARER_CHALLENGE),
    );
    response
}

fn unauthorized_message(message: &str) -> Response {
    json_response(401, &error_body("Unauthorized", message))
}

fn claims_challenge() -> Response {
    let claims = r#"{"access_token":{"nbf":{"essential":true,"value":"1700000000"}}}"#;
    let encoded = base64::engine::general_purpose::STANDARD.encode(claims);
    let value = format!(
        "Bearer realm=\"\", authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\", error=\"insufficient_claims\", claims=\"{encoded}\""
    );
    let mut response = empty_with_diagnostics(
        401,
        "2000001;reason=\"The token was revoked by continuous access evaluation.\";error_category=\"insufficient_claims\"",
    );
    if let Ok(v) = HeaderValue::from_str(&value) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    response
}

fn is_read(cmdlet: &str) -> bool {
    let verb = cmdlet.split('-').next().unwrap_or("");
    ["Get", "Test", "Search", "Export"]
        .iter()
        .any(|v| v.eq_ignore_ascii_case(verb))
}

fn token_signature(token: &str) -> String {
    token.rsplit('.').next().unwrap_or(token).to_string()
}

struct Envelope {
    input: Value,
    cmdlet: String,
    parameters: Map<String, Value>,
}

fn parse_envelope(body: Option<&Value>) -> Result<Envelope, String> {
    let shape = "expected {\"CmdletInput\":{\"CmdletName\":\"…\",\"Parameters\":{…}}}";
    let input = body
        .and_then(|b| b.get("CmdletInput"))
        .filter(|i| i.is_object())
        .ok_or_else(|| format!("The request body is not a valid CmdletInput: {shape}"))?;
    let cmdlet = input
        .get("CmdletName")
        .and_then(Value::as_str)
        .filter(|c| !c.trim().is_empty())
        .ok_or_else(|| format!("CmdletInput.CmdletName is missing: {shape}"))?;
    let parameters = match input.get("Parameters") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(p)) => p.clone(),
        Some(_) => return Err(format!("CmdletInput.Parameters must be an object: {shape}")),
    };
    Ok(Envelope {
        input: input.clone(),
        cmdlet: cmdlet.to_string(),
        parameters,
    })
}

/// Holds one of the tenant's concurrent-request slots.
struct Slot<'a>(&'a Shared);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What running a request gave: a page to serialise, or a finished answer (an error, a
/// confirmation prompt).
enum Executed {
    Page(PageOut),
    Answer(Response),
}

/// A page of output and what comes after it.
struct PageOut {
    records: Vec<Value>,
    warnings: Vec<String>,
    errors: Vec<String>,
    next: Option<String>,
}

impl Shared {
    fn knobs(&self) -> Knobs {
        lock(&self.knobs).clone()
    }

    fn base(&self, listener: Listener) -> String {
        let bases = lock(&self.bases);
        match listener {
            Listener::Primary => bases.0.clone(),
            Listener::Regional => bases.1.clone(),
        }
    }

    fn record(
        &self,
        method: &Method,
        uri: &Uri,
        listener: Listener,
        headers: &HeaderMap,
        body: Option<&Value>,
    ) {
        if !self.record.load(Ordering::SeqCst) {
            return;
        }
        let headers = headers
            .iter()
            .map(|(k, v)| {
                let value = if k == header::AUTHORIZATION {
                    "Bearer [redacted]".to_string()
                } else {
                    String::from_utf8_lossy(v.as_bytes()).into_owned()
                };
                (k.as_str().to_string(), value)
            })
            .collect();
        lock(&self.requests).push(RecordedRequest {
            method: method.to_string(),
            path: uri
                .path_and_query()
                .map_or_else(|| uri.path().to_string(), |p| p.as_str().to_string()),
            listener,
            headers,
            body: body.cloned(),
        });
    }

    fn take_fault(&self, cmdlet: &str) -> Option<Fault> {
        let mut faults = lock(&self.faults);
        let index = faults.iter().position(|s| {
            s.remaining > 0
                && s.cmdlet
                    .as_ref()
                    .is_none_or(|c| c.eq_ignore_ascii_case(cmdlet))
        })?;
        let scripted = &mut faults[index];
        scripted.remaining -= 1;
        let fault = scripted.fault.clone();
        if scripted.remaining == 0 {
            faults.remove(index);
        }
        Some(fault)
    }

    fn enter(&self, cap: Option<usize>) -> Option<Slot<'_>> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        if cap.is_some_and(|cap| now > cap) {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            self.throttled.fetch_add(1, Ordering::SeqCst);
            return None;
        }
        self.peak_in_flight.fetch_max(now, Ordering::SeqCst);
        Some(Slot(self))
    }

    fn throttle_response(&self, retry_after: Option<Duration>) -> Response {
        let mut response = json_response(429, &error_body("TooManyRequests", CONCURRENCY_MESSAGE));
        if let Some(after) = retry_after
            && let Ok(v) = HeaderValue::from_str(&format!("{:.3}", after.as_secs_f64()))
        {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        response
    }

    fn fault_response(&self, fault: Fault, uri: &Uri, headers: &HeaderMap) -> Response {
        match fault {
            Fault::Throttle { retry_after } => self.throttle_response(retry_after),
            Fault::ThrottleVerbatim {
                retry_after,
                message,
            } => {
                let mut response = json_response(429, &error_body("TooManyRequests", &message));
                if let Some(v) = retry_after.and_then(|v| HeaderValue::from_str(&v).ok()) {
                    response.headers_mut().insert(header::RETRY_AFTER, v);
                }
                response
            }
            Fault::ServerError {
                status, exception, ..
            } => match (status, exception) {
                (_, Some(exception)) => {
                    let class = if exception.contains('.') {
                        exception
                    } else {
                        format!("Microsoft.Exchange.Data.Directory.{exception}")
                    };
                    let failure = cmdlets::pipe(status, &class, format!("{class} was thrown by the directory service. Please retry the operation."));
                    json_response(failure.status, &failure.body)
                }
                (502, None) | (504, None) => with_request_id(
                    (
                        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                        [(header::CONTENT_TYPE, "text/html")],
                        format!("<html><head><title>{status}</title></head><body>The gateway did not get a response from the backend.</body></html>"),
                    )
                        .into_response(),
                ),
                (503, None) => json_response(503, &error_body("ServiceUnavailable", "The service is temporarily unavailable. Please try again later.")),
                (status, None) => json_response(
                    status,
                    &json!({"error": {"code": "InternalServerError", "message": "Error executing cmdlet", "details": []}}),
                ),
            },
            Fault::ConnectionReset { .. } => {
                let chunks: Vec<Result<Bytes, io::Error>> = vec![
                    Ok(Bytes::from_static(b"{\"value\":[")),
                    Err(io::Error::new(io::ErrorKind::ConnectionReset, "simulated connection reset")),
                ];
                let mut response = Response::new(Body::from_stream(futures::stream::iter(chunks)));
                response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                response
            }
            Fault::Redirect { status, to } => {
                let location = match to {
                    RedirectTo::Regional => format!(
                        "{}{}",
                        self.base(Listener::Regional),
                        uri.path_and_query().map_or("/", |p| p.as_str())
                    ),
                    RedirectTo::Location(location) => location,
                };
                let n = self.cookie_counter.fetch_add(1, Ordering::SeqCst);
                let mut response = StatusCode::from_u16(status)
                    .unwrap_or(StatusCode::TEMPORARY_REDIRECT)
                    .into_response();
                if let Ok(v) = HeaderValue::from_str(&location) {
                    response.headers_mut().insert(header::LOCATION, v);
                }
                if let Ok(v) = HeaderValue::from_str(&format!("exo-affinity={n}; path=/; HttpOnly")) {
                    response.headers_mut().insert(header::SET_COOKIE, v);
                }
                response
            }
            Fault::ClaimsChallenge => {
                if let Some(token) = bearer(headers) {
                    lock(&self.revoked).insert(token_signature(token));
                }
                claims_challenge()
            }
        }
    }

    /// What the service checks before running anything: the answer refusing the request,
    /// or `None` to go on.
    fn refusal(&self, headers: &HeaderMap, tenant: &str, cmdlet: &str) -> Option<Response> {
        let Some(token) = bearer(headers) else {
            return Some(unauthorized_token(
                "2000000;reason=\"The access token is missing.\";error_category=\"invalid_token\"",
            ));
        };
        if lock(&self.revoked).contains(&token_signature(token)) {
            return Some(claims_challenge());
        }
        let Some(claims) = TokenClaims::decode(token) else {
            return Some(unauthorized_token(
                "2000001;reason=\"The token is not a valid JWT.\";error_category=\"invalid_token\"",
            ));
        };
        if claims
            .exp
            .is_none_or(|exp| exp <= self.clock.now().timestamp())
        {
            return Some(unauthorized_token(
                "2000002;reason=\"The token has expired.\";error_category=\"invalid_token\"",
            ));
        }
        let normalise = |s: &str| s.trim_end_matches('/').to_ascii_lowercase();
        let aud = claims.aud.clone().unwrap_or_default();
        if normalise(&aud) != normalise(&self.resource) {
            return Some(empty_with_diagnostics(
                403,
                &format!(
                    "2000003;reason=\"The audience claim value is invalid '{aud}'.\";error_category=\"invalid_resource\""
                ),
            ));
        }
        if !claims.has_role(EXCHANGE_MANAGE_AS_APP) {
            return Some(empty_with_diagnostics(
                403,
                "2000008;reason=\"The token contains no permissions, or permissions can not be understood.\";error_category=\"invalid_grant\"",
            ));
        }
        let tid = claims.tid.clone().unwrap_or_default();
        if !tid.eq_ignore_ascii_case(&self.tenant_id) {
            return Some(unauthorized_message(
                "The token was issued for another tenant.",
            ));
        }
        if !tenant.eq_ignore_ascii_case(&self.tenant_id)
            && !tenant.eq_ignore_ascii_case(&self.initial_domain)
        {
            return Some(unauthorized_message(&format!(
                "The tenant '{tenant}' in the request URL is neither the token's tenant id nor its initial domain."
            )));
        }
        let roles: Vec<_> = claims
            .wids
            .iter()
            .filter_map(|w| directory_role(w))
            .collect();
        if !roles.iter().any(|r| r.exchange_read) {
            let app = claims.client_id().unwrap_or("unknown");
            return Some(unauthorized_message(&format!(
                "The role assigned to application {app} isn't supported in this scenario. Please check online documentation for assigning correct Directory Roles to Azure AD Application for EXO App-Only Authentication."
            )));
        }
        if !is_read(cmdlet) && !roles.iter().any(|r| r.exchange_write) {
            return Some(unauthorized_message(&format!(
                "User is not allowed to call {cmdlet}."
            )));
        }
        None
    }

    /// One page of a query, registering a next link when there is more.
    fn page(
        &self,
        org: &Organisation,
        query: &Query,
        start: usize,
        served: usize,
        page_size: usize,
        next: impl FnOnce(usize, usize) -> String,
    ) -> PageOut {
        let limit = query.limit.get();
        let allowed = limit.map_or(usize::MAX, |l| l.saturating_sub(served));
        let want = page_size.min(allowed);
        let total = org.mailboxes().len();
        let mut records = Vec::with_capacity(want.min(1000));
        let mut position = start;
        while position < total && records.len() < want {
            if let Some(record) = query.record_at(org, position) {
                records.push(record);
            }
            position += 1;
        }
        let following = (position..total).find(|p| query.record_at(org, *p).is_some());
        let served_now = served + records.len();
        let mut warnings = Vec::new();
        let next_link = match following {
            None => None,
            Some(p) if limit.is_none_or(|l| served_now < l) => {
                warnings.push(PAGING_WARNING.to_string());
                Some(next(p, served_now))
            }
            Some(_) => {
                warnings.push(if query.limit == Limit::Default {
                    DEFAULT_LIMIT_WARNING.to_string()
                } else {
                    PAGING_WARNING.to_string()
                });
                None
            }
        };
        PageOut {
            records,
            warnings,
            errors: Vec::new(),
            next: next_link,
        }
    }

    fn register_page(
        &self,
        input: &Value,
        query: &Query,
        position: usize,
        served: usize,
        base: &str,
        tenant: &str,
    ) -> String {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let knobs = self.knobs();
        let ttl = knobs.next_link_ttl;
        let base = knobs.next_link_base.as_deref().unwrap_or(base);
        let mut pages = lock(&self.pages);
        // Forget links long dead so a long run does not accumulate them.
        pages.retain(|_, s| {
            s.created.elapsed() < ttl.saturating_mul(2).max(Duration::from_secs(60))
        });
        pages.insert(
            token.clone(),
            PageState {
                input: input.clone(),
                query: query.clone(),
                position,
                served,
                created: Instant::now(),
                expired: false,
            },
        );
        format!("{base}/adminapi/beta/{tenant}/InvokeCommand?$skiptoken={token}")
    }

    fn execute(
        &self,
        listener: Listener,
        uri: &Uri,
        tenant: &str,
        envelope: &Envelope,
        page_size: usize,
    ) -> Executed {
        let base = self.base(listener);
        if let Some(token) = skiptoken(uri) {
            let ttl = self.knobs().next_link_ttl;
            let (query, position, served) = {
                let pages = lock(&self.pages);
                let Some(state) = pages
                    .get(&token)
                    .filter(|s| !s.expired && s.created.elapsed() < ttl)
                else {
                    let failure = cmdlets::pipe(
                        400,
                        "Microsoft.Exchange.Admin.OData.Core.ODataServiceException",
                        "The continuation token is invalid or has expired. Run the command again without it.",
                    );
                    return Executed::Answer(json_response(failure.status, &failure.body));
                };
                if state.input != envelope.input {
                    return Executed::Answer(json_response(
                        400,
                        &error_body(
                            "BadRequest",
                            "The request body does not match the command the continuation token belongs to.",
                        ),
                    ));
                }
                (state.query.clone(), state.position, state.served)
            };
            let org = lock(&self.org);
            return Executed::Page(
                self.page(&org, &query, position, served, page_size, |p, s| {
                    self.register_page(&envelope.input, &query, p, s, &base, tenant)
                }),
            );
        }
        let mut org = lock(&self.org);
        match cmdlets::run(&mut org, &envelope.cmdlet, &envelope.parameters) {
            Err(Failure { status, body }) => Executed::Answer(json_response(status, &body)),
            Ok(Outcome::Records {
                records,
                warnings,
                errors,
            }) => Executed::Page(PageOut {
                records,
                warnings,
                errors,
                next: None,
            }),
            Ok(Outcome::Confirmation(message)) => Executed::Answer(json_response(
                200,
                &json!({
                    "@odata.context": format!("{base}/adminapi/beta/{tenant}/$metadata#Collection(Exchange.GenericHashTable)"),
                    "@adminapi.confirmationmessage": message,
                    "value": [],
                }),
            )),
            Ok(Outcome::Query { query, warnings }) => {
                let mut out = self.page(&org, &query, 0, 0, page_size, |p, s| {
                    self.register_page(&envelope.input, &query, p, s, &base, tenant)
                });
                out.warnings.splice(0..0, warnings);
                Executed::Page(out)
            }
        }
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// `Prefer: odata.maxpagesize=N`; the service pages by 100 without it.
fn page_size(headers: &HeaderMap) -> usize {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| {
            let (k, v) = p.trim().split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case("odata.maxpagesize")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .map_or(100, |n| n.clamp(1, 1000))
}

fn page_response(base: &str, tenant: &str, page: PageOut, json_format: bool) -> Response {
    let records: Vec<Value> = if json_format {
        page.records
    } else {
        // The module's default CLIXML format: each object serialised into `_cliXml`.
        page.records
            .into_iter()
            .map(|r| json!({"_cliXml": format!("<Objs Version=\"1.1.0.1\" xmlns=\"http://schemas.microsoft.com/powershell/2004/04\"><Obj RefId=\"0\"><S>{r}</S></Obj></Objs>")}))
            .collect()
    };
    let mut body = Map::new();
    body.insert(
        "@odata.context".into(),
        json!(format!(
            "{base}/adminapi/beta/{tenant}/$metadata#Collection(Exchange.GenericHashTable)"
        )),
    );
    body.insert(
        "adminapi.warnings@odata.type".into(),
        json!("#Collection(String)"),
    );
    body.insert("@adminapi.warnings".into(), json!(page.warnings));
    if !page.errors.is_empty() {
        body.insert("@adminapi.errors".into(), json!(page.errors));
    }
    body.insert("value".into(), Value::Array(records));
    if let Some(next) = page.next {
        body.insert("@odata.nextLink".into(), json!(next));
    }
    let mut response = json_response(200, &Value::Object(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8"),
    );
    response.headers_mut().insert(
        "x-calculatedbetarget",
        HeaderValue::from_static("DB8PR01MB1234.eurprd01.prod.outlook.com"),
    );
    response
}

async fn handle(
    State(ctx): State<Ctx>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // Latency is the service's whole answer time, counted from arrival: its own work
    // happens inside it, as on the real service.
    let arrived = tokio::time::Instant::now();
    let shared = &*ctx.shared;
    shared.total.fetch_add(1, Ordering::SeqCst);
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    shared.record(&method, &uri, ctx.listener, &headers, parsed.as_ref());

    let Some(tenant) = tenant_segment(uri.path()) else {
        return json_response(
            404,
            &error_body("NotFound", "The requested resource was not found."),
        );
    };
    if method != Method::POST {
        let mut response = json_response(
            405,
            &error_body(
                "MethodNotAllowed",
                &format!("The requested resource does not support http method '{method}'."),
            ),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    let envelope = match parse_envelope(parsed.as_ref()) {
        Ok(envelope) => envelope,
        Err(message) => return json_response(400, &error_body("BadRequest", &message)),
    };

    let mut after_executing = None;
    if let Some(fault) = shared.take_fault(&envelope.cmdlet) {
        match fault {
            Fault::ServerError {
                after_executing: true,
                ..
            }
            | Fault::ConnectionReset {
                after_executing: true,
            } => {
                after_executing = Some(fault);
            }
            other => return shared.fault_response(other, &uri, &headers),
        }
    }
    if let Some(response) = shared.refusal(&headers, &tenant, &envelope.cmdlet) {
        return response;
    }
    let knobs = shared.knobs();
    let Some(_slot) = shared.enter(knobs.max_concurrent) else {
        return shared.throttle_response(Some(knobs.throttle_retry_after));
    };
    let json_format = headers
        .get("x-responseformat")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("json"));
    let result = shared.execute(ctx.listener, &uri, &tenant, &envelope, page_size(&headers));
    // The cmdlet has run; the answer leaves when the latency is up (a client that gives
    // up earlier does not undo what the service did).
    if !knobs.latency.is_zero() {
        tokio::time::sleep_until(arrived + knobs.latency).await;
    }
    if let Some(fault) = after_executing {
        return shared.fault_response(fault, &uri, &headers);
    }
    match result {
        Executed::Page(page) => {
            page_response(&shared.base(ctx.listener), &tenant, page, json_format)
        }
        Executed::Answer(response) => response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tenant_segment_is_found_in_any_case() {
        let table = [
            ("/adminapi/beta/t1/InvokeCommand", Some("t1")),
            (
                "/AdminApi/Beta/contoso.onmicrosoft.com/invokecommand",
                Some("contoso.onmicrosoft.com"),
            ),
            ("/regional/adminapi/beta/t1/InvokeCommand", Some("t1")),
            ("/adminapi/beta/t1/Mailbox", None),
            ("/", None),
        ];
        for (path, expected) in table {
            assert_eq!(tenant_segment(path).as_deref(), expected, "{path}");
        }
    }

    #[test]
    fn the_page_size_comes_from_prefer_and_defaults_to_100() {
        let mut headers = HeaderMap::new();
        assert_eq!(page_size(&headers), 100);
        headers.insert(
            "prefer",
            HeaderValue::from_static("odata.include-annotations=*, odata.maxpagesize=250"),
        );
        assert_eq!(page_size(&headers), 250);
        headers.insert("prefer", HeaderValue::from_static("odata.maxpagesize=5000"));
        assert_eq!(page_size(&headers), 1000);
    }
}
