//! A simulated managed-identity endpoint on 127.0.0.1: the VM's IMDS token endpoint, the
//! App Service / Container Apps endpoint and an Entra ID token endpoint for AKS workload
//! identity, in one axum server.
//!
//! It checks what the real ones check (IMDS: `GET`, `Metadata: true`, no
//! `X-Forwarded-For`, `api-version`, `resource`, no duplicate parameters, at most one of
//! `client_id` / `object_id` / `msi_res_id` / `mi_res_id`; App Service: the
//! `X-IDENTITY-HEADER` secret; Entra ID: the federated assertion, client id, tenant and
//! scope), answers like them (IMDS and App Service send every field as a string; Entra ID
//! numbers) and issues unsigned JWT-shaped tokens whose claims (`tid`, `aud`, `roles`,
//! `wids`, `exp`, `oid`, `appid`) the test chooses per identity. Expiry follows the
//! [`Clock`](crate::clock::Clock) it is given, so a test with a `ManualClock` controls token
//! lifetimes exactly.
//!
//! Tests script faults in a queue ([`Step`]: 410 for a while, 429 with `Retry-After`,
//! 500s, slow answers) and read the request log ([`RecordedRequest`], secrets redacted).
//! Scripted durations are real time; a test that scales its retry policy down to
//! milliseconds scripts in the same milliseconds.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::clock::{SharedClock, SystemClock};
use crate::identity::claims::{APP_ONLY_MARKER_WID, EXCHANGE_MANAGE_AS_APP};
use crate::simulator::jwt;

/// The IMDS token path.
pub const IMDS_PATH: &str = "/metadata/identity/oauth2/token";
/// Where the simulated App Service endpoint listens (the platform's path varies).
pub const APP_SERVICE_PATH: &str = "/msi/token";
/// The tenant simulated identities belong to unless a test says otherwise.
pub const SIMULATED_TENANT_ID: &str = "5d1c2b3a-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
/// The "Exchange Administrator" directory role template id.
pub const EXCHANGE_ADMINISTRATOR_WID: &str = "29232cdf-9323-42fd-ade2-1d097af3e4de";

const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const REDACTED: &str = "[redacted]";

/// One identity the simulated machine has, with the claims its tokens carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimulatedIdentity {
    pub client_id: String,
    pub object_id: String,
    pub resource_id: String,
    pub tenant_id: String,
    pub roles: Vec<String>,
    pub wids: Vec<String>,
}

impl SimulatedIdentity {
    /// An identity with fresh ids, `Exchange.ManageAsApp` and the Exchange Administrator
    /// role; `name` becomes the last segment of its resource id.
    pub fn new(name: &str) -> Self {
        Self {
            client_id: uuid::Uuid::new_v4().to_string(),
            object_id: uuid::Uuid::new_v4().to_string(),
            resource_id: format!(
                "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/runbooks/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
            ),
            tenant_id: SIMULATED_TENANT_ID.to_string(),
            roles: vec![EXCHANGE_MANAGE_AS_APP.to_string()],
            wids: vec![
                APP_ONLY_MARKER_WID.to_string(),
                EXCHANGE_ADMINISTRATOR_WID.to_string(),
            ],
        }
    }

    pub fn with_roles(mut self, roles: &[&str]) -> Self {
        self.roles = roles.iter().map(|r| r.to_string()).collect();
        self
    }

    pub fn with_wids(mut self, wids: &[&str]) -> Self {
        self.wids = wids.iter().map(|w| w.to_string()).collect();
        self
    }

    pub fn with_tenant(mut self, tenant_id: &str) -> Self {
        self.tenant_id = tenant_id.to_string();
        self
    }
}

/// What the simulated machine looks like.
#[derive(Clone, Debug)]
pub struct IdentitySimulatorConfig {
    /// Sets `iat` / `exp` of issued tokens.
    pub clock: SharedClock,
    pub system_assigned: Option<SimulatedIdentity>,
    pub user_assigned: Vec<SimulatedIdentity>,
    /// The `IDENTITY_HEADER` value the App Service endpoint wants back.
    pub app_service_secret: String,
    /// The federated token (contents of `AZURE_FEDERATED_TOKEN_FILE`) the Entra ID endpoint
    /// accepts as `client_assertion`.
    pub federated_assertion: String,
    /// Lifetime of issued tokens (IMDS: about 24 h).
    pub token_lifetime: Duration,
}

impl Default for IdentitySimulatorConfig {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            system_assigned: Some(SimulatedIdentity::new("system")),
            user_assigned: Vec::new(),
            app_service_secret: format!("identity-header-{}", uuid::Uuid::new_v4()),
            federated_assertion: jwt::mint(
                &json!({"sub": "system:serviceaccount:runbooks:worker"}),
            ),
            token_lifetime: Duration::from_secs(24 * 3600),
        }
    }
}

impl IdentitySimulatorConfig {
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    pub fn with_system_assigned(mut self, identity: Option<SimulatedIdentity>) -> Self {
        self.system_assigned = identity;
        self
    }

    pub fn with_user_assigned(mut self, identity: SimulatedIdentity) -> Self {
        self.user_assigned.push(identity);
        self
    }

    pub fn with_token_lifetime(mut self, lifetime: Duration) -> Self {
        self.token_lifetime = lifetime;
        self
    }
}

/// A scripted misbehaviour of the token endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status and a typical error body.
    Status(u16),
    /// 429 with `Retry-After: seconds`.
    Throttle { retry_after: u64 },
    /// Answer normally, after this delay.
    Slow(Duration),
}

/// How long a scripted fault lasts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Repeat {
    /// For this many token requests.
    Times(u32),
    /// For every token request until this long after the first one it answered.
    For(Duration),
    /// Until the script is cleared.
    Forever,
}

/// One entry of the fault script; steps apply in order, each until it is used up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub fault: Fault,
    pub repeat: Repeat,
}

impl Step {
    /// Answer `status` (once, unless told otherwise).
    pub fn status(status: u16) -> Self {
        Self {
            fault: Fault::Status(status),
            repeat: Repeat::Times(1),
        }
    }

    /// 429 with `Retry-After: retry_after` (once, unless told otherwise).
    pub fn throttle(retry_after: u64) -> Self {
        Self {
            fault: Fault::Throttle { retry_after },
            repeat: Repeat::Times(1),
        }
    }

    /// Answer normally after `delay` (once, unless told otherwise).
    pub fn slow(delay: Duration) -> Self {
        Self {
            fault: Fault::Slow(delay),
            repeat: Repeat::Times(1),
        }
    }

    pub fn times(mut self, n: u32) -> Self {
        self.repeat = Repeat::Times(n);
        self
    }

    pub fn lasting(mut self, duration: Duration) -> Self {
        self.repeat = Repeat::For(duration);
        self
    }

    pub fn forever(mut self) -> Self {
        self.repeat = Repeat::Forever;
        self
    }
}

/// Which simulated endpoint a request was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimulatedEndpoint {
    Imds,
    AppService,
    EntraId,
    Unknown,
}

/// A request as the simulator saw it. Secret values (`X-IDENTITY-HEADER`,
/// `Authorization`, the federated `client_assertion`) read `[redacted]`.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub at: Instant,
    pub endpoint: SimulatedEndpoint,
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
    /// Form fields of a POST.
    pub form: Vec<(String, String)>,
    /// The status answered; `None` while the answer is pending (a slow answer).
    pub status: Option<u16>,
}

impl RecordedRequest {
    pub fn query_value(&self, name: &str) -> Option<&str> {
        lookup(&self.query, name)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        lookup(&self.headers, &name.to_ascii_lowercase())
    }

    pub fn form_value(&self, name: &str) -> Option<&str> {
        lookup(&self.form, name)
    }
}

/// The `resource` parameter both managed-identity endpoints require.
fn required_resource(query: &[(String, String)]) -> Result<&str, Refusal> {
    lookup(query, "resource")
        .filter(|r| !r.is_empty())
        .ok_or_else(|| {
            error(
                400,
                "invalid_request",
                "Required audience parameter not specified",
            )
        })
}

fn lookup<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

struct ScriptEntry {
    step: Step,
    used: u32,
    started: Option<Instant>,
}

struct SimState {
    config: IdentitySimulatorConfig,
    token_lifetime: Mutex<Duration>,
    script: Mutex<VecDeque<ScriptEntry>>,
    requests: Mutex<Vec<RecordedRequest>>,
    issued: Mutex<Vec<String>>,
}

/// A running simulator; stops when [`IdentitySimulator::stop`] is awaited, its
/// cancellation token fires, or it is dropped.
pub struct IdentitySimulator {
    addr: SocketAddr,
    state: Arc<SimState>,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl IdentitySimulator {
    /// Binds 127.0.0.1 on a free port and serves until stopped.
    pub async fn start(config: IdentitySimulatorConfig) -> std::io::Result<Self> {
        Self::start_with_cancel(config, CancellationToken::new()).await
    }

    /// As [`IdentitySimulator::start`], stopping when `cancel` fires.
    pub async fn start_with_cancel(
        config: IdentitySimulatorConfig,
        cancel: CancellationToken,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(SimState {
            token_lifetime: Mutex::new(config.token_lifetime),
            config,
            script: Mutex::new(VecDeque::new()),
            requests: Mutex::new(Vec::new()),
            issued: Mutex::new(Vec::new()),
        });
        let app = Router::new().fallback(handle).with_state(state.clone());
        let shutdown = cancel.clone();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "identity simulator stopped with an error");
            }
        });
        Ok(Self {
            addr,
            state,
            cancel,
            task: Some(task),
        })
    }

    /// `http://127.0.0.1:PORT`: the value for `identity.imds_endpoint` and
    /// `AZURE_AUTHORITY_HOST`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// [`Self::base_url`] as the checked type of `identity.imds_endpoint`.
    pub fn endpoint(&self) -> crate::base_url::BaseUrl {
        crate::base_url::BaseUrl::of_socket(self.addr)
    }

    /// The value for `IDENTITY_ENDPOINT`.
    pub fn app_service_endpoint(&self) -> String {
        format!("{}{APP_SERVICE_PATH}", self.base_url())
    }

    /// The value for `IDENTITY_HEADER`.
    pub fn app_service_secret(&self) -> &str {
        &self.state.config.app_service_secret
    }

    /// The contents for `AZURE_FEDERATED_TOKEN_FILE`.
    pub fn federated_assertion(&self) -> &str {
        &self.state.config.federated_assertion
    }

    pub fn config(&self) -> &IdentitySimulatorConfig {
        &self.state.config
    }

    /// Appends steps to the fault script.
    pub fn script(&self, steps: impl IntoIterator<Item = Step>) {
        let mut script = lock(&self.state.script);
        script.extend(steps.into_iter().map(|step| ScriptEntry {
            step,
            used: 0,
            started: None,
        }));
    }

    /// Drops every remaining scripted fault.
    pub fn clear_script(&self) {
        lock(&self.state.script).clear();
    }

    /// Lifetime of tokens issued from now on.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        *lock(&self.state.token_lifetime) = lifetime;
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state.requests).clone()
    }

    /// How many requests reached the token endpoints (IMDS, App Service, Entra ID).
    pub fn token_requests(&self) -> usize {
        lock(&self.state.requests)
            .iter()
            .filter(|r| r.endpoint != SimulatedEndpoint::Unknown)
            .count()
    }

    /// The tokens issued so far, for tests that check a token never leaks.
    pub fn issued_tokens(&self) -> Vec<String> {
        lock(&self.state.issued).clone()
    }

    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Stops serving and waits for the server task.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for IdentitySimulator {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl SimState {
    fn next_fault(&self) -> Option<Fault> {
        let mut script = lock(&self.script);
        loop {
            let entry = script.front_mut()?;
            match entry.step.repeat {
                Repeat::Times(n) => {
                    if entry.used < n {
                        entry.used += 1;
                        let fault = entry.step.fault.clone();
                        if entry.used >= n {
                            script.pop_front();
                        }
                        return Some(fault);
                    }
                    script.pop_front();
                }
                Repeat::For(duration) => {
                    let started = *entry.started.get_or_insert_with(Instant::now);
                    if started.elapsed() < duration {
                        return Some(entry.step.fault.clone());
                    }
                    script.pop_front();
                }
                Repeat::Forever => return Some(entry.step.fault.clone()),
            }
        }
    }

    fn identities(&self) -> impl Iterator<Item = &SimulatedIdentity> {
        self.config
            .system_assigned
            .iter()
            .chain(self.config.user_assigned.iter())
    }

    /// Mints a token for `identity` and `audience`; returns it with (iat, exp, lifetime).
    fn mint(&self, identity: &SimulatedIdentity, audience: &str, v2: bool) -> (String, i64, i64) {
        let now = self.config.clock.now().timestamp();
        let lifetime = i64::try_from(lock(&self.token_lifetime).as_secs()).unwrap_or(i64::MAX);
        let exp = now.saturating_add(lifetime);
        let mut claims = json!({
            "aud": audience,
            "iss": format!("https://sts.windows.net/{}/", identity.tenant_id),
            "iat": now,
            "nbf": now,
            "exp": exp,
            "tid": identity.tenant_id,
            "oid": identity.object_id,
            "sub": identity.object_id,
            "idtyp": "app",
            "roles": identity.roles,
            "wids": identity.wids,
            "xms_mirid": identity.resource_id,
        });
        if v2 {
            claims["ver"] = json!("2.0");
            claims["azp"] = json!(identity.client_id);
        } else {
            claims["ver"] = json!("1.0");
            claims["appid"] = json!(identity.client_id);
        }
        let token = jwt::mint(&claims);
        lock(&self.issued).push(token.clone());
        (token, exp, lifetime)
    }
}

async fn handle(
    State(state): State<Arc<SimState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let query: Vec<(String, String)> =
        url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
    let endpoint = if path == IMDS_PATH {
        SimulatedEndpoint::Imds
    } else if path == APP_SERVICE_PATH {
        SimulatedEndpoint::AppService
    } else if path.ends_with("/oauth2/v2.0/token") {
        SimulatedEndpoint::EntraId
    } else {
        SimulatedEndpoint::Unknown
    };
    let form: Vec<(String, String)> = if method == Method::POST {
        url::form_urlencoded::parse(&body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    } else {
        Vec::new()
    };

    let index = {
        let mut requests = lock(&state.requests);
        requests.push(RecordedRequest {
            at: Instant::now(),
            endpoint,
            method: method.to_string(),
            path: path.clone(),
            query: query.clone(),
            headers: headers
                .iter()
                .map(|(name, value)| {
                    let name = name.as_str().to_ascii_lowercase();
                    let value = if matches!(name.as_str(), "x-identity-header" | "authorization") {
                        REDACTED.to_string()
                    } else {
                        value.to_str().unwrap_or("(not text)").to_string()
                    };
                    (name, value)
                })
                .collect(),
            form: form
                .iter()
                .map(|(k, v)| {
                    let v = if k == "client_assertion" {
                        REDACTED.to_string()
                    } else {
                        v.clone()
                    };
                    (k.clone(), v)
                })
                .collect(),
            status: None,
        });
        requests.len() - 1
    };

    let fault = match endpoint {
        SimulatedEndpoint::Unknown => None,
        _ => state.next_fault(),
    };
    let response = match fault {
        Some(Fault::Status(status)) => scripted_error(status, None),
        Some(Fault::Throttle { retry_after }) => scripted_error(429, Some(retry_after)),
        Some(Fault::Slow(delay)) => {
            tokio::time::sleep(delay).await;
            answer(&state, endpoint, &method, &query, &headers, &path, &form)
        }
        None => answer(&state, endpoint, &method, &query, &headers, &path, &form),
    };
    if let Some(request) = lock(&state.requests).get_mut(index) {
        request.status = Some(response.status().as_u16());
    }
    response
}

fn answer(
    state: &SimState,
    endpoint: SimulatedEndpoint,
    method: &Method,
    query: &[(String, String)],
    headers: &HeaderMap,
    path: &str,
    form: &[(String, String)],
) -> Response {
    let result = match endpoint {
        SimulatedEndpoint::Imds => imds(state, method, query, headers),
        SimulatedEndpoint::AppService => app_service(state, method, query, headers),
        SimulatedEndpoint::EntraId => entra_id(state, method, headers, path, form),
        SimulatedEndpoint::Unknown => Err(error(404, "not_found", "no such endpoint")),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

/// An error answer: a status and a JSON body.
struct Refusal {
    status: StatusCode,
    body: serde_json::Value,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body)).into_response()
    }
}

fn error(status: u16, code: &str, description: &str) -> Refusal {
    Refusal {
        status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body: json!({"error": code, "error_description": description}),
    }
}

fn scripted_error(status: u16, retry_after: Option<u64>) -> Response {
    let (code, description) = match status {
        400 => ("invalid_request", "Identity not found"),
        404 => ("not_found", "IMDS endpoint is updating"),
        410 => (
            "gone",
            "IMDS is going through updates; available within 70 seconds",
        ),
        429 => ("too_many_requests", "Throttle limit reached"),
        500..=599 => ("internal_error", "The server had an internal error"),
        _ => ("error", "Scripted failure"),
    };
    let mut response = error(status, code, description).into_response();
    if let Some(seconds) = retry_after
        && let Ok(value) = header::HeaderValue::from_str(&seconds.to_string())
    {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

fn duplicate_parameter(query: &[(String, String)]) -> Option<&str> {
    let mut seen = HashSet::new();
    query
        .iter()
        .find(|(k, _)| !seen.insert(k.as_str()))
        .map(|(k, _)| k.as_str())
}

fn selectors<'a>(query: &'a [(String, String)], names: &[&str]) -> Vec<(&'a str, &'a str)> {
    query
        .iter()
        .filter(|(k, _)| names.contains(&k.as_str()))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

fn imds(
    state: &SimState,
    method: &Method,
    query: &[(String, String)],
    headers: &HeaderMap,
) -> Result<Response, Refusal> {
    if method != Method::GET {
        return Err(error(405, "method_not_allowed", "Use GET"));
    }
    if headers.contains_key("x-forwarded-for") {
        return Err(error(
            400,
            "invalid_request",
            "Requests with an X-Forwarded-For header are refused",
        ));
    }
    if headers.get("metadata").and_then(|v| v.to_str().ok()) != Some("true") {
        return Err(error(
            400,
            "invalid_request",
            "Required metadata header not specified",
        ));
    }
    if let Some(name) = duplicate_parameter(query) {
        return Err(error(
            400,
            "invalid_request",
            &format!("Duplicate query parameter {name}"),
        ));
    }
    match lookup(query, "api-version") {
        Some(v) if v >= "2018-02-01" && v.len() == 10 => {}
        _ => {
            return Err(error(
                400,
                "invalid_request",
                "Bad request. api-version is invalid or was not specified",
            ));
        }
    }
    let resource = required_resource(query)?;
    let identity = choose_identity(
        state,
        &selectors(
            query,
            &["client_id", "object_id", "msi_res_id", "mi_res_id"],
        ),
    )?;
    let (token, exp, lifetime) = state.mint(identity, resource, false);
    let now = exp - lifetime;
    // IMDS sends every field as a string.
    Ok(axum::Json(json!({
        "access_token": token,
        "refresh_token": "",
        "expires_in": lifetime.to_string(),
        "expires_on": exp.to_string(),
        "ext_expires_in": lifetime.to_string(),
        "not_before": now.to_string(),
        "resource": resource,
        "token_type": "Bearer",
        "client_id": identity.client_id,
    }))
    .into_response())
}

fn app_service(
    state: &SimState,
    method: &Method,
    query: &[(String, String)],
    headers: &HeaderMap,
) -> Result<Response, Refusal> {
    if method != Method::GET {
        return Err(error(405, "method_not_allowed", "Use GET"));
    }
    let secret = headers
        .get("x-identity-header")
        .and_then(|v| v.to_str().ok());
    if secret != Some(state.config.app_service_secret.as_str()) {
        return Err(error(
            401,
            "unauthorized",
            "X-IDENTITY-HEADER is missing or wrong",
        ));
    }
    if let Some(name) = duplicate_parameter(query) {
        return Err(error(
            400,
            "invalid_request",
            &format!("Duplicate query parameter {name}"),
        ));
    }
    if lookup(query, "api-version") != Some("2019-08-01") {
        return Err(error(
            400,
            "invalid_request",
            "api-version must be 2019-08-01",
        ));
    }
    let resource = required_resource(query)?;
    // App Service takes mi_res_id and ignores msi_res_id (then answering for the
    // system-assigned identity), as the real one does.
    let chosen = selectors(
        query,
        &["client_id", "principal_id", "object_id", "mi_res_id"],
    );
    let identity = choose_identity(state, &chosen)?;
    let (token, exp, _) = state.mint(identity, resource, false);
    Ok(axum::Json(json!({
        "access_token": token,
        "expires_on": exp.to_string(),
        "resource": resource,
        "token_type": "Bearer",
        "client_id": identity.client_id,
    }))
    .into_response())
}

/// The identity a selector names, or the default one, with IMDS's errors.
fn choose_identity<'a>(
    state: &'a SimState,
    chosen: &[(&str, &str)],
) -> Result<&'a SimulatedIdentity, Refusal> {
    match chosen {
        [] => {
            if let Some(system) = &state.config.system_assigned {
                return Ok(system);
            }
            match state.config.user_assigned.as_slice() {
                [only] => Ok(only),
                [] => Err(error(400, "invalid_request", "Identity not found")),
                _ => Err(error(
                    400,
                    "invalid_request",
                    "Multiple user assigned identities exist, please specify the clientId / resourceId of the identity in the token request",
                )),
            }
        }
        [(name, value)] => state
            .config
            .user_assigned
            .iter()
            .find(|i| match *name {
                "client_id" => i.client_id.eq_ignore_ascii_case(value),
                "object_id" | "principal_id" => i.object_id.eq_ignore_ascii_case(value),
                _ => i.resource_id.eq_ignore_ascii_case(value),
            })
            .ok_or_else(|| error(400, "invalid_request", "Identity not found")),
        _ => Err(error(
            400,
            "invalid_request",
            "Only one of client_id, object_id, msi_res_id, mi_res_id may be specified",
        )),
    }
}

fn entra_id(
    state: &SimState,
    method: &Method,
    headers: &HeaderMap,
    path: &str,
    form: &[(String, String)],
) -> Result<Response, Refusal> {
    let entra_error = |status: u16, code: &str, aadsts: u32, description: &str| Refusal {
        status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        body: json!({
            "error": code,
            "error_description": format!("AADSTS{aadsts}: {description}"),
            "error_codes": [aadsts],
        }),
    };
    if method != Method::POST {
        return Err(error(405, "method_not_allowed", "Use POST"));
    }
    let form_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !form_type.starts_with("application/x-www-form-urlencoded") {
        return Err(entra_error(
            400,
            "invalid_request",
            900144,
            "The request body must be a form",
        ));
    }
    if lookup(form, "grant_type") != Some("client_credentials") {
        return Err(entra_error(
            400,
            "unsupported_grant_type",
            70003,
            "Only client_credentials is simulated",
        ));
    }
    if lookup(form, "client_assertion_type") != Some(CLIENT_ASSERTION_TYPE) {
        return Err(entra_error(
            400,
            "invalid_request",
            50027,
            "Missing client_assertion_type",
        ));
    }
    let tenant = path
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default();
    let Some(identity) = lookup(form, "client_id").and_then(|id| {
        state
            .identities()
            .find(|i| i.client_id.eq_ignore_ascii_case(id))
    }) else {
        return Err(entra_error(
            400,
            "unauthorized_client",
            700016,
            "Application not found in the directory",
        ));
    };
    if !identity.tenant_id.eq_ignore_ascii_case(tenant) {
        return Err(entra_error(
            400,
            "invalid_request",
            90002,
            "Tenant not found",
        ));
    }
    if lookup(form, "client_assertion") != Some(state.config.federated_assertion.as_str()) {
        return Err(entra_error(
            401,
            "invalid_client",
            700213,
            "No matching federated identity record found for presented assertion",
        ));
    }
    let Some(audience) = lookup(form, "scope").and_then(|s| s.strip_suffix("/.default")) else {
        return Err(entra_error(
            400,
            "invalid_scope",
            1002012,
            "The scope must end with /.default",
        ));
    };
    let (token, _, lifetime) = state.mint(identity, audience, true);
    // Entra ID sends numbers.
    Ok(axum::Json(json!({
        "token_type": "Bearer",
        "expires_in": lifetime,
        "ext_expires_in": lifetime,
        "access_token": token,
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> SimState {
        let config = IdentitySimulatorConfig::default();
        SimState {
            token_lifetime: Mutex::new(config.token_lifetime),
            config,
            script: Mutex::new(VecDeque::new()),
            requests: Mutex::new(Vec::new()),
            issued: Mutex::new(Vec::new()),
        }
    }

    #[test]
    fn scripted_steps_apply_in_order_until_used_up() {
        let state = state();
        lock(&state.script).extend(
            [
                Step::status(500).times(2),
                Step::throttle(3),
                Step::status(404),
            ]
            .into_iter()
            .map(|step| ScriptEntry {
                step,
                used: 0,
                started: None,
            }),
        );
        let faults: Vec<_> = (0..6).map(|_| state.next_fault()).collect();
        assert_eq!(
            faults,
            vec![
                Some(Fault::Status(500)),
                Some(Fault::Status(500)),
                Some(Fault::Throttle { retry_after: 3 }),
                Some(Fault::Status(404)),
                None,
                None
            ]
        );
    }

    #[test]
    fn a_lasting_step_ends_after_its_duration() {
        let state = state();
        lock(&state.script).push_back(ScriptEntry {
            step: Step::status(410).lasting(Duration::ZERO),
            used: 0,
            started: None,
        });
        assert_eq!(state.next_fault(), None);
        assert!(lock(&state.script).is_empty());
    }
}
