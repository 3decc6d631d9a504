//! A simulated Microsoft Graph (v1.0) on 127.0.0.1 for the directory of the simulated
//! Exchange organisation.
//!
//! The users are the Exchange simulator's mailboxes: [`GraphSimulator::start`] seeds
//! [`Organisation::seeded`] with the same name, tenant, count and seed as
//! [`crate::simulator::exchange::SimulatorConfig`] (same ids, UPNs and mail), and
//! [`directory`] adds what only Entra knows (accountEnabled, licences, groups). Changes
//! made through one simulator are not seen by the other: each keeps its own copy.
//!
//! It checks what Graph checks: a bearer token whose `aud` is `https://graph.microsoft.com`
//! and that has not expired (else 401 `InvalidAuthenticationToken`), the app role each
//! endpoint needs in `roles` (else 403 `Authorization_RequestDenied`, or
//! `ErrorAccessDenied` for `sendMail`), `$top` ≤ 999, known `$select` properties, the
//! `$filter` subset it understands (others: 400 `Request_UnsupportedQuery`), and
//! `ConsistencyLevel: eventual` for `$count=true`, `ne` and the user cast of
//! `transitiveMembers`. Collections page with absolute `@odata.nextLink`s carrying a
//! `$skiptoken`. Errors have Graph's body (`error.code`, `message`, `innerError`).
//!
//! Tests script faults (429 with any `Retry-After`, 5xx before or after executing a
//! write), point next links at another origin, read the request log (the `Authorization`
//! value redacted) and the mail sent.

pub mod directory;

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::clock::{SharedClock, SystemClock};
use crate::identity::TokenClaims;
use crate::simulator::exchange::DEFAULT_TENANT_ID;
use crate::simulator::exchange::org::Organisation;
use crate::simulator::loopback::{Loopback, lock};
use directory::{Clause, Member};
pub use directory::{Directory, SKU_E3, SKU_E5, SentMail};

/// The resource Graph tokens are issued for.
pub const GRAPH_RESOURCE: &str = "https://graph.microsoft.com";
/// Graph's appId, also accepted as `aud`.
pub const GRAPH_APP_ID: &str = "00000003-0000-0000-c000-000000000000";
const MAX_TOP: usize = 999;
const DEFAULT_TOP: usize = 100;
/// Sent mail kept for tests; older messages are dropped first.
const MAX_SENT_MAIL: usize = 10_000;
/// Requests kept in the log.
const MAX_LOGGED_REQUESTS: usize = 100_000;

#[derive(Clone, Debug)]
pub struct GraphSimulatorConfig {
    /// As the Exchange simulator's: `contoso` → `contoso.com`.
    pub organization: String,
    pub tenant_id: String,
    /// Users seeded (the Exchange simulator's `mailboxes`).
    pub users: usize,
    pub seed: u64,
    pub record_requests: bool,
    /// Decides whether a token has expired.
    pub clock: SharedClock,
}

impl Default for GraphSimulatorConfig {
    fn default() -> Self {
        Self {
            organization: "contoso".to_string(),
            tenant_id: DEFAULT_TENANT_ID.to_string(),
            users: 25,
            seed: 1,
            record_requests: true,
            clock: Arc::new(SystemClock),
        }
    }
}

impl GraphSimulatorConfig {
    pub fn with_users(mut self, count: usize) -> Self {
        self.users = count;
        self
    }
}

/// One request as received.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    /// Path and query as sent.
    pub path: String,
    /// Lower-case names; `authorization` reads `Bearer [redacted]`.
    pub headers: Vec<(String, String)>,
    pub body: Option<Value>,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A scripted misbehaviour.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// 429 with this `Retry-After` text (none: no header).
    Throttle { retry_after: Option<String> },
    /// A 5xx, before the request is executed or after it was.
    ServerError { status: u16, after_executing: bool },
    /// 401 `InvalidAuthenticationToken`, as for a token revoked before its expiry.
    Unauthorized,
}

#[derive(Debug)]
struct Scripted {
    method: Option<Method>,
    path_contains: Option<String>,
    fault: Fault,
    remaining: usize,
}

struct Shared {
    clock: SharedClock,
    directory: Mutex<Directory>,
    requests: Mutex<Vec<RecordedRequest>>,
    record: AtomicBool,
    faults: Mutex<Vec<Scripted>>,
    sent: Mutex<Vec<SentMail>>,
    next_link_base: Mutex<Option<String>>,
    base: String,
    total: AtomicU64,
}

/// The running simulator; dropping it stops the listener.
pub struct GraphSimulator {
    shared: Arc<Shared>,
    server: Loopback,
}

impl GraphSimulator {
    pub async fn start(config: GraphSimulatorConfig) -> io::Result<Self> {
        let (name, tenant, count, seed) = (
            config.organization.clone(),
            config.tenant_id.clone(),
            config.users,
            config.seed,
        );
        let directory = tokio::task::spawn_blocking(move || {
            let org = Organisation::seeded(&name, &tenant, count, seed);
            Directory::from_organisation(&org, seed)
        })
        .await
        .map_err(io::Error::other)?;
        Self::start_with(config, directory).await
    }

    /// Serves a directory built by the caller (for example from an Exchange simulator's
    /// current organisation).
    pub async fn start_with(
        config: GraphSimulatorConfig,
        directory: Directory,
    ) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            clock: config.clock,
            directory: Mutex::new(directory),
            requests: Mutex::new(Vec::new()),
            record: AtomicBool::new(config.record_requests),
            faults: Mutex::new(Vec::new()),
            sent: Mutex::new(Vec::new()),
            next_link_base: Mutex::new(None),
            base: format!("http://{addr}"),
            total: AtomicU64::new(0),
        });
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        Ok(Self {
            shared,
            server: Loopback::serve(listener, addr, app, "Graph"),
        })
    }

    /// `http://127.0.0.1:PORT`: the `graph.endpoint` to configure.
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    /// [`Self::base_url`] as the checked type of `graph.endpoint`.
    pub fn endpoint(&self) -> crate::base_url::BaseUrl {
        self.server.endpoint()
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    pub fn clear_requests(&self) {
        lock(&self.shared.requests).clear();
    }

    pub fn total_requests(&self) -> u64 {
        self.shared.total.load(Ordering::SeqCst)
    }

    pub fn sent_mail(&self) -> Vec<SentMail> {
        lock(&self.shared.sent).clone()
    }

    /// Reads or changes the directory.
    pub fn with_directory<R>(&self, f: impl FnOnce(&mut Directory) -> R) -> R {
        f(&mut lock(&self.shared.directory))
    }

    /// Makes the next `times` requests matching `method` and `path_contains` (any when
    /// `None`) misbehave.
    pub fn inject(
        &self,
        method: Option<Method>,
        path_contains: Option<&str>,
        fault: Fault,
        times: usize,
    ) {
        lock(&self.shared.faults).push(Scripted {
            method,
            path_contains: path_contains.map(str::to_string),
            fault,
            remaining: times,
        });
    }

    pub fn pending_faults(&self) -> usize {
        lock(&self.shared.faults).iter().map(|s| s.remaining).sum()
    }

    /// Makes next links point at `base` (another origin) instead of this listener.
    pub fn set_next_link_base(&self, base: Option<String>) {
        *lock(&self.shared.next_link_base) = base;
    }

    pub fn set_recording(&self, on: bool) {
        self.shared.record.store(on, Ordering::SeqCst);
    }

    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

/// An answer in Graph's shapes.
fn graph_error(status: StatusCode, code: &str, message: &str) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let body = json!({
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S").to_string(),
                "request-id": request_id,
                "client-request-id": request_id,
            }
        }
    });
    let mut response = (status, axum::Json(body)).into_response();
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("request-id", value);
    }
    response
}

/// A refusal on its way out; boxed because a `Response` is large and most results are Ok.
type Refusal = Box<Response>;

fn bad_request(code: &str, message: &str) -> Refusal {
    Box::new(graph_error(StatusCode::BAD_REQUEST, code, message))
}

/// The query parameters, decoded; duplicates refused as Graph does.
fn query_pairs(uri: &Uri) -> Result<Vec<(String, String)>, Refusal> {
    let pairs: Vec<(String, String)> = uri
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    for (i, (k, _)) in pairs.iter().enumerate() {
        if pairs[..i]
            .iter()
            .any(|(other, _)| other.eq_ignore_ascii_case(k))
        {
            return Err(bad_request(
                "Request_BadRequest",
                &format!(
                    "Query option '{k}' was specified more than once, but it must be specified at most once."
                ),
            ));
        }
    }
    Ok(pairs)
}

fn get<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The roles that allow an endpoint.
const READ_USERS: &[&str] = &[
    "User.Read.All",
    "User.ReadWrite.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
];
const WRITE_USERS: &[&str] = &["User.ReadWrite.All", "Directory.ReadWrite.All"];
const ASSIGN_LICENSES: &[&str] = &[
    "LicenseAssignment.ReadWrite.All",
    "User.ReadWrite.All",
    "Directory.ReadWrite.All",
];
const READ_GROUPS: &[&str] = &[
    "Group.Read.All",
    "Group.ReadWrite.All",
    "Directory.Read.All",
];
const READ_MEMBERS: &[&str] = &[
    "GroupMember.Read.All",
    "Group.Read.All",
    "Directory.Read.All",
];
const READ_SKUS: &[&str] = &["Organization.Read.All", "Directory.Read.All"];
const SEND_MAIL: &[&str] = &["Mail.Send"];

/// Which endpoint a request is for.
#[derive(Debug)]
enum Route {
    Users,
    User(String),
    PatchUser(String),
    AssignLicense(String),
    SendMail(String),
    Groups,
    Group(String),
    Members {
        group: String,
        transitive: bool,
        users_only: bool,
    },
    SubscribedSkus,
}

impl Route {
    fn roles(&self) -> &'static [&'static str] {
        match self {
            Route::Users | Route::User(_) => READ_USERS,
            Route::PatchUser(_) => WRITE_USERS,
            Route::AssignLicense(_) => ASSIGN_LICENSES,
            Route::SendMail(_) => SEND_MAIL,
            Route::Groups | Route::Group(_) => READ_GROUPS,
            Route::Members { .. } => READ_MEMBERS,
            Route::SubscribedSkus => READ_SKUS,
        }
    }

    fn is_write(&self) -> bool {
        matches!(
            self,
            Route::PatchUser(_) | Route::AssignLicense(_) | Route::SendMail(_)
        )
    }
}

fn route(method: &Method, path: &str) -> Result<Route, Refusal> {
    let segments: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let lower: Vec<String> = segments.iter().map(|s| s.to_ascii_lowercase()).collect();
    let parts: Vec<&str> = lower.iter().map(String::as_str).collect();
    let key = |i: usize| segments[i].clone();
    let found = match (method.as_str(), parts.as_slice()) {
        ("GET", ["v1.0", "users"]) => Route::Users,
        ("GET", ["v1.0", "users", _]) => Route::User(key(2)),
        ("PATCH", ["v1.0", "users", _]) => Route::PatchUser(key(2)),
        ("POST", ["v1.0", "users", _, "assignlicense"]) => Route::AssignLicense(key(2)),
        ("POST", ["v1.0", "users", _, "sendmail"]) => Route::SendMail(key(2)),
        ("GET", ["v1.0", "groups"]) => Route::Groups,
        ("GET", ["v1.0", "groups", _]) => Route::Group(key(2)),
        (
            "GET",
            [
                "v1.0",
                "groups",
                _,
                kind @ ("members" | "transitivemembers"),
            ],
        ) => Route::Members {
            group: key(2),
            transitive: *kind == "transitivemembers",
            users_only: false,
        },
        (
            "GET",
            [
                "v1.0",
                "groups",
                _,
                kind @ ("members" | "transitivemembers"),
                "microsoft.graph.user",
            ],
        ) => Route::Members {
            group: key(2),
            transitive: *kind == "transitivemembers",
            users_only: true,
        },
        ("GET", ["v1.0", "subscribedskus"]) => Route::SubscribedSkus,
        (_, ["v1.0", ..]) => {
            let last = segments.last().cloned().unwrap_or_default();
            return Err(bad_request(
                "BadRequest",
                &format!("Resource not found for the segment '{last}'."),
            ));
        }
        _ => {
            return Err(Box::new(graph_error(
                StatusCode::NOT_FOUND,
                "BadRequest",
                "Invalid version.",
            )));
        }
    };
    Ok(found)
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    shared.total.fetch_add(1, Ordering::SeqCst);
    let json_body: Option<Value> = serde_json::from_slice(&body).ok();
    if shared.record.load(Ordering::SeqCst) {
        let logged = headers
            .iter()
            .map(|(k, v)| {
                let value = if *k == header::AUTHORIZATION {
                    "Bearer [redacted]".to_string()
                } else {
                    String::from_utf8_lossy(v.as_bytes()).into_owned()
                };
                (k.as_str().to_string(), value)
            })
            .collect();
        let mut log = lock(&shared.requests);
        if log.len() >= MAX_LOGGED_REQUESTS {
            log.remove(0);
        }
        log.push(RecordedRequest {
            method: method.to_string(),
            path: uri
                .path_and_query()
                .map_or_else(|| uri.path().to_string(), |p| p.as_str().to_string()),
            headers: logged,
            body: json_body.clone(),
        });
    }
    let claims = match authenticate(&shared, &headers) {
        Ok(claims) => claims,
        Err(response) => return *response,
    };
    let route = match route(&method, uri.path()) {
        Ok(route) => route,
        Err(response) => return *response,
    };
    let allowed = route.roles();
    if !claims
        .roles
        .iter()
        .any(|held| allowed.iter().any(|a| a.eq_ignore_ascii_case(held)))
    {
        return match route {
            Route::SendMail(_) => graph_error(
                StatusCode::FORBIDDEN,
                "ErrorAccessDenied",
                "Access is denied. Check credentials and try again.",
            ),
            _ => graph_error(
                StatusCode::FORBIDDEN,
                "Authorization_RequestDenied",
                "Insufficient privileges to complete the operation.",
            ),
        };
    }
    let fault = take_fault(&shared, &method, uri.path());
    match &fault {
        Some(Fault::Throttle { retry_after }) => {
            let mut response = graph_error(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                "Too many requests.",
            );
            if let Some(value) = retry_after
                .as_deref()
                .and_then(|v| HeaderValue::from_str(v).ok())
            {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            return response;
        }
        Some(Fault::ServerError {
            status,
            after_executing: false,
        }) => return server_error(*status),
        Some(Fault::Unauthorized) => {
            return *unauthorized("Lifetime validation failed, the token is expired.");
        }
        _ => {}
    }
    let pairs = match query_pairs(&uri) {
        Ok(pairs) => pairs,
        Err(response) => return *response,
    };
    let advanced = headers
        .get("consistencylevel")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("eventual"));
    let write = route.is_write();
    let answer = serve(
        &shared,
        route,
        &pairs,
        advanced,
        json_body.as_ref(),
        uri.path(),
    );
    match fault {
        Some(Fault::ServerError { status, .. }) if write || answer.status().is_success() => {
            server_error(status)
        }
        _ => answer,
    }
}

fn server_error(status: u16) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    graph_error(
        status,
        if status == StatusCode::SERVICE_UNAVAILABLE {
            "serviceNotAvailable"
        } else {
            "generalException"
        },
        "An internal server error occurred.",
    )
}

fn take_fault(shared: &Shared, method: &Method, path: &str) -> Option<Fault> {
    let mut faults = lock(&shared.faults);
    let lower = path.to_ascii_lowercase();
    let found = faults.iter_mut().find(|s| {
        s.remaining > 0
            && s.method.as_ref().is_none_or(|m| m == method)
            && s.path_contains
                .as_deref()
                .is_none_or(|p| lower.contains(&p.to_ascii_lowercase()))
    })?;
    found.remaining -= 1;
    let fault = found.fault.clone();
    faults.retain(|s| s.remaining > 0);
    Some(fault)
}

fn unauthorized(message: &str) -> Refusal {
    let mut response = graph_error(
        StatusCode::UNAUTHORIZED,
        "InvalidAuthenticationToken",
        message,
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(
            "Bearer realm=\"\", authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\", client_id=\"00000003-0000-0000-c000-000000000000\"",
        ),
    );
    Box::new(response)
}

fn authenticate(shared: &Shared, headers: &HeaderMap) -> Result<TokenClaims, Refusal> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| unauthorized("Access token is empty."))?;
    let claims = TokenClaims::decode(token)
        .ok_or_else(|| unauthorized("IDX14100: JWT is not well formed."))?;
    let audience_ok = claims.aud.as_deref().is_some_and(|aud| {
        aud.trim_end_matches('/')
            .eq_ignore_ascii_case(GRAPH_RESOURCE)
            || aud == GRAPH_APP_ID
    });
    if !audience_ok {
        return Err(unauthorized(
            "Access token validation failure. Invalid audience.",
        ));
    }
    if claims
        .exp
        .is_some_and(|exp| exp <= shared.clock.now().timestamp())
    {
        return Err(unauthorized(
            "Lifetime validation failed, the token is expired.",
        ));
    }
    Ok(claims)
}

/// `$top`, or Graph's error.
fn top(pairs: &[(String, String)]) -> Result<usize, Refusal> {
    match get(pairs, "$top") {
        None => Ok(DEFAULT_TOP),
        Some(text) => match text.trim().parse::<usize>() {
            Ok(n) if (1..=MAX_TOP).contains(&n) => Ok(n),
            _ => Err(bad_request(
                "Request_BadRequest",
                &format!(
                    "Invalid page size specified: '{text}'. Must be between 1 and {MAX_TOP} inclusive."
                ),
            )),
        },
    }
}

fn skiptoken(pairs: &[(String, String)]) -> Result<usize, Refusal> {
    let Some(token) = get(pairs, "$skiptoken") else {
        return Ok(0);
    };
    URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.strip_prefix("sim1:").and_then(|n| n.parse().ok()))
        .ok_or_else(|| bad_request("Request_BadRequest", "Invalid $skiptoken."))
}

/// `$count=true` needs `ConsistencyLevel: eventual`.
fn wants_count(pairs: &[(String, String)], advanced: bool) -> Result<bool, Refusal> {
    let count = get(pairs, "$count").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if count && !advanced {
        return Err(bad_request(
            "Request_BadRequest",
            "$count is not currently supported.",
        ));
    }
    Ok(count)
}

/// A page of a collection: records from `start`, the position to continue from.
struct Collected {
    records: Vec<Value>,
    next: Option<usize>,
    count: Option<usize>,
}

fn collection(
    shared: &Shared,
    path: &str,
    pairs: &[(String, String)],
    page: Collected,
) -> Response {
    let mut body = serde_json::Map::new();
    body.insert(
        "@odata.context".to_string(),
        json!(format!(
            "{}/v1.0/$metadata#{}",
            shared.base,
            path.trim_start_matches("/v1.0/")
        )),
    );
    if let Some(count) = page.count {
        body.insert("@odata.count".to_string(), json!(count));
    }
    if let Some(next) = page.next {
        let base = lock(&shared.next_link_base)
            .clone()
            .unwrap_or_else(|| shared.base.clone());
        let mut link = url::Url::parse(&format!("{base}{path}")).expect("simulator URL");
        {
            let mut query = link.query_pairs_mut();
            for (k, v) in pairs
                .iter()
                .filter(|(k, _)| !k.eq_ignore_ascii_case("$skiptoken"))
            {
                query.append_pair(k, v);
            }
            query.append_pair(
                "$skiptoken",
                &URL_SAFE_NO_PAD.encode(format!("sim1:{next}")),
            );
        }
        body.insert("@odata.nextLink".to_string(), json!(link.to_string()));
    }
    body.insert("value".to_string(), Value::Array(page.records));
    axum::Json(Value::Object(body)).into_response()
}

/// Takes up to `top` matches from `candidates` positions, starting at `start`.
fn page_of<T>(
    items: &[T],
    start: usize,
    top: usize,
    matches: impl Fn(&T) -> bool,
    render: impl Fn(&T) -> Value,
) -> (Vec<Value>, Option<usize>) {
    let mut records = Vec::with_capacity(top.min(items.len()));
    let mut position = start;
    while position < items.len() && records.len() < top {
        if matches(&items[position]) {
            records.push(render(&items[position]));
        }
        position += 1;
    }
    let more = items[position.min(items.len())..].iter().any(&matches);
    (records, more.then_some(position))
}

fn serve(
    shared: &Shared,
    route: Route,
    pairs: &[(String, String)],
    advanced: bool,
    body: Option<&Value>,
    path: &str,
) -> Response {
    let result = (|| -> Result<Response, Refusal> {
        match route {
            Route::Users => {
                let select = directory::user_selection(get(pairs, "$select"))
                    .map_err(|m| bad_request("Request_BadRequest", &m))?;
                let clauses = match get(pairs, "$filter") {
                    None => Vec::new(),
                    Some(filter) => directory::parse_user_filter(filter).map_err(|part| {
                        bad_request(
                            "Request_UnsupportedQuery",
                            &format!(
                                "Unsupported or invalid query filter clause specified: '{part}'."
                            ),
                        )
                    })?,
                };
                let count = wants_count(pairs, advanced)?;
                if clauses.iter().any(Clause::is_advanced) && !(advanced && count) {
                    return Err(bad_request(
                        "Request_UnsupportedQuery",
                        "Operator 'ne' is not supported because the required parameters might be missing. Try adding $count with a value of true and the ConsistencyLevel header with a value of eventual.",
                    ));
                }
                let (top, start) = (top(pairs)?, skiptoken(pairs)?);
                let directory = lock(&shared.directory);
                let matches = |u: &directory::DirectoryUser| clauses.iter().all(|c| c.matches(u));
                let positions: Vec<usize> = (0..directory.users.len()).collect();
                let (records, next) = page_of(
                    &positions,
                    start,
                    top,
                    |&i| matches(&directory.users[i]),
                    |&i| directory.user_json(i, &select),
                );
                let total = (count && start == 0)
                    .then(|| directory.users.iter().filter(|u| matches(u)).count());
                Ok(collection(
                    shared,
                    path,
                    pairs,
                    Collected {
                        records,
                        next,
                        count: total,
                    },
                ))
            }
            Route::User(key) => {
                let select = directory::user_selection(get(pairs, "$select"))
                    .map_err(|m| bad_request("Request_BadRequest", &m))?;
                let directory = lock(&shared.directory);
                let user = find_user(&directory, &key)?;
                Ok(axum::Json(directory.user_json(user, &select)).into_response())
            }
            Route::PatchUser(key) => {
                let mut directory = lock(&shared.directory);
                let user = find_user(&directory, &key)?;
                let changes = body.and_then(Value::as_object).ok_or_else(|| {
                    bad_request(
                        "Request_BadRequest",
                        "The request body must be a JSON object.",
                    )
                })?;
                let mut updated = directory.users[user].clone();
                for (name, value) in changes {
                    match (name.as_str(), value) {
                        ("accountEnabled", Value::Bool(b)) => updated.account_enabled = *b,
                        ("usageLocation", Value::String(s)) if s.len() == 2 => {
                            updated.usage_location = Some(s.to_ascii_uppercase());
                        }
                        ("displayName", Value::String(s)) if !s.is_empty() => {
                            updated.display_name = s.clone();
                        }
                        _ => {
                            return Err(bad_request(
                                "Request_BadRequest",
                                &format!(
                                    "Invalid value specified for property '{name}' of resource 'User'."
                                ),
                            ));
                        }
                    }
                }
                directory.users[user] = updated;
                Ok(StatusCode::NO_CONTENT.into_response())
            }
            Route::AssignLicense(key) => {
                let mut directory = lock(&shared.directory);
                let user = find_user(&directory, &key)?;
                let (add, remove) = license_changes(body)?;
                let known = |sku: &str| {
                    directory
                        .skus
                        .iter()
                        .any(|s| s.sku_id.eq_ignore_ascii_case(sku))
                };
                if let Some(bad) = add.iter().chain(&remove).find(|s| !known(s)) {
                    return Err(bad_request(
                        "Request_BadRequest",
                        &format!("License {bad} does not correspond to a valid company License."),
                    ));
                }
                if !add.is_empty() && directory.users[user].usage_location.is_none() {
                    return Err(bad_request(
                        "Request_BadRequest",
                        "License assignment cannot be done for user with invalid usage location.",
                    ));
                }
                let licenses = &mut directory.users[user].licenses;
                licenses.retain(|l| !remove.iter().any(|r| r.eq_ignore_ascii_case(l)));
                for sku in add {
                    if !licenses.iter().any(|l| l.eq_ignore_ascii_case(&sku)) {
                        licenses.push(sku.to_ascii_lowercase());
                    }
                }
                let all = ["id", "displayName", "userPrincipalName", "assignedLicenses"];
                Ok(axum::Json(directory.user_json(user, &all)).into_response())
            }
            Route::SendMail(key) => {
                let directory = lock(&shared.directory);
                let user = find_user(&directory, &key)?;
                let from = directory.users[user].user_principal_name.clone();
                drop(directory);
                let mail = parse_mail(from, body)?;
                let mut sent = lock(&shared.sent);
                if sent.len() >= MAX_SENT_MAIL {
                    sent.remove(0);
                }
                sent.push(mail);
                Ok(StatusCode::ACCEPTED.into_response())
            }
            Route::Groups => {
                if get(pairs, "$filter").is_some() {
                    return Err(bad_request(
                        "Request_UnsupportedQuery",
                        "Unsupported Query.",
                    ));
                }
                let select = directory::group_selection(get(pairs, "$select"))
                    .map_err(|m| bad_request("Request_BadRequest", &m))?;
                let count = wants_count(pairs, advanced)?;
                let (top, start) = (top(pairs)?, skiptoken(pairs)?);
                let directory = lock(&shared.directory);
                let positions: Vec<usize> = (0..directory.groups.len()).collect();
                let (records, next) = page_of(
                    &positions,
                    start,
                    top,
                    |_| true,
                    |&i| directory.group_json(i, &select),
                );
                let total = (count && start == 0).then_some(directory.groups.len());
                Ok(collection(
                    shared,
                    path,
                    pairs,
                    Collected {
                        records,
                        next,
                        count: total,
                    },
                ))
            }
            Route::Group(id) => {
                let select = directory::group_selection(get(pairs, "$select"))
                    .map_err(|m| bad_request("Request_BadRequest", &m))?;
                let directory = lock(&shared.directory);
                let group = find_group(&directory, &id)?;
                Ok(axum::Json(directory.group_json(group, &select)).into_response())
            }
            Route::Members {
                group,
                transitive,
                users_only,
            } => {
                let count = wants_count(pairs, advanced)?;
                if users_only && !(advanced && count) {
                    return Err(bad_request(
                        "Request_BadRequest",
                        "The specified filter to the reference property query is currently not supported. Add the ConsistencyLevel header with a value of eventual and $count=true.",
                    ));
                }
                let select = directory::user_selection(get(pairs, "$select"))
                    .map_err(|m| bad_request("Request_BadRequest", &m))?;
                let (top, start) = (top(pairs)?, skiptoken(pairs)?);
                let directory = lock(&shared.directory);
                let group = find_group(&directory, &group)?;
                let members = if transitive {
                    directory.transitive_members(group)
                } else {
                    directory.groups[group].members.clone()
                };
                let wanted = |m: &Member| !users_only || matches!(m, Member::User(_));
                let (records, next) = page_of(&members, start, top, wanted, |m| {
                    directory.member_json(m, &select)
                });
                let total =
                    (count && start == 0).then(|| members.iter().filter(|m| wanted(m)).count());
                Ok(collection(
                    shared,
                    path,
                    pairs,
                    Collected {
                        records,
                        next,
                        count: total,
                    },
                ))
            }
            Route::SubscribedSkus => {
                let directory = lock(&shared.directory);
                let records = directory
                    .skus
                    .iter()
                    .map(|s| directory.sku_json(s))
                    .collect();
                Ok(collection(
                    shared,
                    path,
                    &[],
                    Collected {
                        records,
                        next: None,
                        count: None,
                    },
                ))
            }
        }
    })();
    result.unwrap_or_else(|response| *response)
}

fn refuse(status: StatusCode, code: &str, message: &str) -> Refusal {
    Box::new(graph_error(status, code, message))
}

fn find_user(directory: &Directory, key: &str) -> Result<usize, Refusal> {
    directory.user(key).ok_or_else(|| {
        refuse(
            StatusCode::NOT_FOUND,
            "Request_ResourceNotFound",
            &format!("Resource '{key}' does not exist or one of its queried reference-property objects are not present."),
        )
    })
}

fn find_group(directory: &Directory, id: &str) -> Result<usize, Refusal> {
    directory.group(id).ok_or_else(|| {
        refuse(
            StatusCode::NOT_FOUND,
            "Request_ResourceNotFound",
            &format!("Resource '{id}' does not exist or one of its queried reference-property objects are not present."),
        )
    })
}

/// `addLicenses[].skuId` and `removeLicenses[]`, both required as Graph requires.
fn license_changes(body: Option<&Value>) -> Result<(Vec<String>, Vec<String>), Refusal> {
    let invalid = || {
        bad_request(
            "Request_BadRequest",
            "The request body needs addLicenses (an array of {skuId, disabledPlans}) and removeLicenses (an array of skuIds).",
        )
    };
    let body = body.and_then(Value::as_object).ok_or_else(invalid)?;
    let add = body
        .get("addLicenses")
        .and_then(Value::as_array)
        .ok_or_else(invalid)?
        .iter()
        .map(|l| l.get("skuId").and_then(Value::as_str).map(str::to_string))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(invalid)?;
    let remove = body
        .get("removeLicenses")
        .and_then(Value::as_array)
        .ok_or_else(invalid)?
        .iter()
        .map(|v| v.as_str().map(str::to_string))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(invalid)?;
    Ok((add, remove))
}

/// Checks a `sendMail` body as Graph does.
fn parse_mail(from: String, body: Option<&Value>) -> Result<SentMail, Refusal> {
    let invalid = |what: &str| {
        bad_request(
            "ErrorInvalidRequest",
            &format!("The sendMail body is invalid: {what}."),
        )
    };
    let message = body
        .and_then(|b| b.get("message"))
        .and_then(Value::as_object)
        .ok_or_else(|| invalid("'message' must be an object"))?;
    let subject = message
        .get("subject")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("'message.subject' must be a string"))?;
    let content_type = message
        .pointer_str("body", "contentType")
        .filter(|t| t.eq_ignore_ascii_case("text") || t.eq_ignore_ascii_case("html"))
        .ok_or_else(|| invalid("'message.body.contentType' must be Text or HTML"))?;
    let content = message
        .pointer_str("body", "content")
        .ok_or_else(|| invalid("'message.body.content' must be a string"))?;
    let recipients = |field: &str, required: bool| -> Result<Vec<String>, Refusal> {
        let Some(list) = message.get(field) else {
            return if required {
                Err(invalid(&format!("'message.{field}' is required")))
            } else {
                Ok(Vec::new())
            };
        };
        let list = list
            .as_array()
            .ok_or_else(|| invalid(&format!("'message.{field}' must be an array")))?;
        list.iter()
            .map(|r| {
                r.pointer("/emailAddress/address")
                    .and_then(Value::as_str)
                    .filter(|a| a.contains('@'))
                    .map(str::to_string)
                    .ok_or_else(|| {
                        invalid(&format!(
                            "each of 'message.{field}' needs emailAddress.address"
                        ))
                    })
            })
            .collect()
    };
    let to = recipients("toRecipients", true)?;
    if to.is_empty() {
        return Err(bad_request(
            "ErrorInvalidRecipients",
            "At least one recipient is not valid., Recipient is missing.",
        ));
    }
    let cc = recipients("ccRecipients", false)?;
    Ok(SentMail {
        from,
        subject: subject.to_string(),
        content_type: content_type.to_string(),
        content: content.to_string(),
        to,
        cc,
    })
}

trait PointerStr {
    fn pointer_str(&self, object: &str, field: &str) -> Option<&str>;
}

impl PointerStr for serde_json::Map<String, Value> {
    fn pointer_str(&self, object: &str, field: &str) -> Option<&str> {
        self.get(object)?.get(field)?.as_str()
    }
}
