//! The Graph client: one [`GraphClient`] per (cloud, identity), shared by every job.
//!
//! [`GraphClient::request`] returns [`Pages`], a stream fetched only as the consumer pulls
//! it: one page, one request, at most `graph.max_response_bytes` in memory. Paging follows
//! `@odata.nextLink` exactly as the service wrote it (never rebuilt), to the origin of the
//! first request only, and re-sends the caller's headers (`ConsistencyLevel`) on every
//! page. Each request goes through the tenant's shared [`TenantLimiter`] and retries as the
//! Exchange client's [`RetryPolicy`] decides: 429 (and 503/504 on reads) wait
//! `Retry-After`, capped; reads back off after server errors; a write that may have been
//! applied fails with [`GraphError::OutcomeUnknown`] and is never replayed; a 401 gets one
//! fresh token.

use std::error::Error as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{BoxStream, Stream, StreamExt};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode, redirect};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use url::Url;

use super::error::{Call, GraphError};
use super::{GraphSettings, permissions};
use crate::exchange::retry::{Decision, Failure};
use crate::exchange::{Cloud, RetryPolicy, TenantLimiter};
use crate::identity::{AccessToken, TokenSource};

/// Characters escaped in query keys and values. `$`, `,`, `(`, `)`, `'`, `/` and `:` stay
/// readable (OData syntax); a space is `%20`, never `+`, which OData would read literally.
const QUERY: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'&')
    .add(b'+')
    .add(b'<')
    .add(b'=')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// Characters escaped in one path segment (a user's id or UPN).
const SEGMENT: &AsciiSet = &QUERY.add(b'/').add(b'\\');

/// One Graph call: method, path under the host (`/v1.0/users`), query pairs, extra
/// headers (sent with every page) and a JSON body.
#[derive(Clone, Debug)]
pub struct GraphRequest {
    pub method: Method,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub body: Option<Value>,
    /// Stops the call (between or during requests) when cancelled.
    pub cancel: CancellationToken,
    /// Replay this write after server errors as if it were a read: only for writes whose
    /// repetition is harmless (a PATCH of absolute values).
    pub idempotent: bool,
    /// The path as logs and errors show it, when it differs from `path` (a rendered path
    /// holding a secret's value: `/v1.0/users/***`); `path` itself goes only on the wire.
    pub log_path: Option<String>,
}

impl GraphRequest {
    pub fn new(method: Method, path: impl Into<String>) -> Self {
        Self {
            method,
            path: path.into(),
            query: Vec::new(),
            headers: Vec::new(),
            body: None,
            cancel: CancellationToken::new(),
            idempotent: false,
            log_path: None,
        }
    }

    pub fn get(path: impl Into<String>) -> Self {
        Self::new(Method::GET, path)
    }

    pub fn post(path: impl Into<String>, body: Value) -> Self {
        Self::new(Method::POST, path).body(body)
    }

    pub fn patch(path: impl Into<String>, body: Value) -> Self {
        Self::new(Method::PATCH, path).body(body)
    }

    pub fn query(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.query.push((key.into(), value.into()));
        self
    }

    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn body(mut self, body: Value) -> Self {
        self.body = Some(body);
        self
    }

    pub fn cancel(mut self, cancel: CancellationToken) -> Self {
        self.cancel = cancel;
        self
    }

    /// `ConsistencyLevel: eventual` and `$count=true`: what advanced queries need.
    pub fn advanced_query(self) -> Self {
        self.header("ConsistencyLevel", "eventual")
            .query("$count", "true")
    }

    fn is_read(&self) -> bool {
        self.method == Method::GET || self.method == Method::HEAD
    }
}

/// One page of an answer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GraphPage {
    /// The `value` array of a collection, or the one object of any other answer (none for
    /// an empty 202/204).
    pub records: Vec<Value>,
    /// `@odata.count`, on the first page of a `$count=true` query.
    pub count: Option<u64>,
    pub status: u16,
}

/// A message for [`GraphClient::send_mail`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MailMessage {
    pub subject: String,
    /// `HTML` when true, `Text` otherwise.
    pub html: bool,
    pub content: String,
    pub to: Vec<String>,
    pub cc: Vec<String>,
}

impl MailMessage {
    /// The `sendMail` body (not saved to Sent Items: notifications are not correspondence).
    pub fn to_json(&self) -> Value {
        let recipients = |list: &[String]| {
            list.iter()
                .map(|address| json!({"emailAddress": {"address": address}}))
                .collect::<Vec<_>>()
        };
        let mut message = json!({
            "subject": self.subject,
            "body": {
                "contentType": if self.html { "HTML" } else { "Text" },
                "content": self.content,
            },
            "toRecipients": recipients(&self.to),
        });
        if !self.cc.is_empty() {
            message["ccRecipients"] = json!(recipients(&self.cc));
        }
        json!({"message": message, "saveToSentItems": false})
    }
}

/// The client. Cheap to clone; clones share connections, tokens and the limiter.
#[derive(Clone)]
pub struct GraphClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    tokens: Arc<dyn TokenSource>,
    limiter: Arc<TenantLimiter>,
    resource: String,
    base: Url,
    timeout: Duration,
    retry: RetryPolicy,
    max_response_bytes: u64,
}

impl std::fmt::Debug for GraphClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphClient")
            .field("base", &self.inner.base.as_str())
            .field("resource", &self.inner.resource)
            .finish_non_exhaustive()
    }
}

impl GraphClient {
    /// A client for `cloud`'s Graph host (or `settings.endpoint`), with tokens for the
    /// cloud's Graph resource from `tokens` and requests counted by the tenant's `limiter`.
    pub fn new(
        settings: &GraphSettings,
        cloud: Cloud,
        tokens: Arc<dyn TokenSource>,
        limiter: Arc<TenantLimiter>,
    ) -> Result<Self, GraphError> {
        let config = |key, message: String| GraphError::Configuration { key, message };
        let base = match &settings.endpoint {
            Some(endpoint) => endpoint.as_url().clone(),
            None => Url::parse(&super::resource(cloud))
                .map_err(|e| config("endpoint", e.to_string()))?,
        };
        if settings.max_response_bytes == 0 {
            return Err(config(
                "max_response_bytes",
                "must be at least 1".to_string(),
            ));
        }
        let http = reqwest::Client::builder()
            // Graph does not redirect API calls; following one could carry the token away.
            .redirect(redirect::Policy::none())
            .user_agent(concat!("runbook-worker/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| config("endpoint", format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                tokens,
                limiter,
                resource: super::resource(cloud),
                base,
                timeout: settings.timeout.get(),
                retry: RetryPolicy {
                    max_attempts: settings.max_retries.saturating_add(1),
                    base_delay: settings.retry_base_delay.get(),
                    max_delay: settings.retry_max_delay.get(),
                    jitter: 0.25,
                },
                max_response_bytes: settings.max_response_bytes,
            }),
        })
    }

    /// The token resource (`aud`) this client asks for.
    pub fn resource(&self) -> &str {
        &self.inner.resource
    }

    /// Starts `request`; pages arrive as the stream is polled. A request that cannot be
    /// built fails as the stream's first item, before anything is sent.
    pub fn request(&self, request: GraphRequest) -> Pages {
        let call = Box::new(Call {
            method: request.method.to_string(),
            path: request
                .log_path
                .clone()
                .unwrap_or_else(|| request.path.clone()),
        });
        let client_request_id = uuid::Uuid::new_v4().to_string();
        let span = tracing::info_span!(
            "graph_call",
            method = %call.method,
            path = %call.path,
            client_request_id = %client_request_id,
        );
        let prepared = self.prepare(&request, &call, &client_request_id);
        let (first, headers, body, failed) = match prepared {
            Ok((url, headers, body)) => (Some(url), headers, body, None),
            Err(error) => (None, HeaderMap::new(), None, Some(error)),
        };
        let paging = Paging {
            inner: Arc::clone(&self.inner),
            call: call.clone(),
            method: request.method.clone(),
            headers,
            body,
            replay_safe: request.is_read() || request.idempotent,
            cancel: request.cancel,
            next: first,
            failed,
            done: false,
            pages: 0,
            records: 0,
        };
        let stream = futures::stream::unfold(paging, move |mut paging| {
            let span = span.clone();
            async move {
                let item = paging.next_page().instrument(span).await?;
                Some((item, paging))
            }
        })
        .boxed();
        Pages {
            call: *call,
            stream,
        }
    }

    /// Sends `message` as the mailbox `from` (an id or UPN) with `POST
    /// /v1.0/users/{from}/sendMail`. Graph answers 202: accepted, not yet delivered.
    pub async fn send_mail(&self, from: &str, message: &MailMessage) -> Result<(), GraphError> {
        let path = format!(
            "/v1.0/users/{}/sendMail",
            utf8_percent_encode(from.trim(), SEGMENT)
        );
        if from.trim().is_empty() || message.to.is_empty() {
            return Err(GraphError::InvalidRequest {
                call: Box::new(Call {
                    method: "POST".into(),
                    path,
                }),
                message: "a mail needs a sender mailbox and at least one recipient".into(),
            });
        }
        self.request(GraphRequest::post(path, message.to_json()))
            .count_records()
            .await
            .map(|_| ())
    }

    /// The first URL, the headers of every page and the encoded body.
    fn prepare(
        &self,
        request: &GraphRequest,
        call: &Call,
        client_request_id: &str,
    ) -> Result<(Url, HeaderMap, Option<Bytes>), GraphError> {
        let invalid = |message: String| GraphError::InvalidRequest {
            call: Box::new(call.clone()),
            message,
        };
        let path = &request.path;
        if !path.starts_with('/') || path.starts_with("//") || path.contains(['?', '#']) {
            return Err(invalid(format!(
                "the path must start with one '/' and hold no query (pass query pairs separately), got {path:?}"
            )));
        }
        let base = self.inner.base.as_str().trim_end_matches('/');
        let mut url = Url::parse(&format!("{base}{path}"))
            .map_err(|e| invalid(format!("{e}: cannot join {path:?} to {base}")))?;
        if url.origin() != self.inner.base.origin() {
            return Err(invalid(format!("{path:?} leaves {base}")));
        }
        if !request.query.is_empty() {
            let query = request
                .query
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{}={}",
                        utf8_percent_encode(k, QUERY),
                        utf8_percent_encode(v, QUERY)
                    )
                })
                .collect::<Vec<_>>()
                .join("&");
            url.set_query(Some(&query));
        }
        let mut headers = HeaderMap::with_capacity(request.headers.len() + 4);
        for (name, value) in &request.headers {
            let name = HeaderName::try_from(name.as_str())
                .map_err(|_| invalid(format!("{name:?} is not a valid header name")))?;
            if [header::AUTHORIZATION, header::HOST, header::CONTENT_LENGTH].contains(&name) {
                return Err(invalid(format!("the header {name} is set by the client")));
            }
            let value = HeaderValue::from_str(value)
                .map_err(|_| invalid(format!("the value of {name} is not a valid header value")))?;
            headers.append(name, value);
        }
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(
            HeaderName::from_static("client-request-id"),
            HeaderValue::from_str(client_request_id)
                .map_err(|_| invalid("bad client-request-id".into()))?,
        );
        let body = match &request.body {
            Some(body) => {
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                Some(Bytes::from(body.to_string()))
            }
            None => None,
        };
        Ok((url, headers, body))
    }
}

/// A running call: a stream of pages. After an error the stream ends.
pub struct Pages {
    call: Call,
    stream: BoxStream<'static, Result<GraphPage, GraphError>>,
}

impl std::fmt::Debug for Pages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pages")
            .field("call", &self.call)
            .finish_non_exhaustive()
    }
}

impl Stream for Pages {
    type Item = Result<GraphPage, GraphError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.stream.poll_next_unpin(cx)
    }
}

impl Pages {
    pub fn call(&self) -> &Call {
        &self.call
    }

    /// Every record of every page, collected (for small answers).
    pub async fn records(mut self) -> Result<Vec<Value>, GraphError> {
        let mut records = Vec::new();
        while let Some(page) = self.stream.next().await {
            records.extend(page?.records);
        }
        Ok(records)
    }

    /// Counts records without keeping them.
    pub async fn count_records(mut self) -> Result<u64, GraphError> {
        let mut count = 0u64;
        while let Some(page) = self.stream.next().await {
            count += page?.records.len() as u64;
        }
        Ok(count)
    }
}

/// Where a call is in its paging.
struct Paging {
    inner: Arc<Inner>,
    call: Box<Call>,
    method: Method,
    /// The caller's headers plus `Accept`, `client-request-id`: the same on every page.
    headers: HeaderMap,
    body: Option<Bytes>,
    replay_safe: bool,
    cancel: CancellationToken,
    /// The URL of the next request; `None` once paging is over.
    next: Option<Url>,
    /// A request that could not be built: its error is the first item.
    failed: Option<GraphError>,
    done: bool,
    pages: usize,
    records: u64,
}

/// A complete HTTP answer.
struct Answer {
    status: StatusCode,
    body: Bytes,
}

/// Why an attempt failed, with what the final error needs.
enum Problem {
    Throttled {
        retry_after: Option<Duration>,
        request_id: Option<String>,
    },
    Unauthorized {
        message: String,
        challenge: Option<String>,
        request_id: Option<String>,
    },
    Forbidden {
        code: String,
        message: String,
        request_id: Option<String>,
    },
    NotFound {
        code: String,
        message: String,
        request_id: Option<String>,
    },
    Refused {
        status: u16,
        code: String,
        message: String,
        request_id: Option<String>,
    },
    Server {
        status: u16,
        message: String,
        retry_after: Option<Duration>,
        request_id: Option<String>,
    },
    NotSent(reqwest::Error),
    Lost(String),
    TimedOut,
    TooLarge,
}

impl Problem {
    fn failure(&self, replay_safe: bool) -> Failure {
        match self {
            Problem::Throttled { retry_after, .. } => Failure::Throttled {
                retry_after: *retry_after,
            },
            // A read may honour a 503/504's Retry-After like a 429's; a write may have been
            // applied, so it stays a server error (outcome unknown).
            Problem::Server {
                retry_after: Some(after),
                ..
            } if replay_safe => Failure::Throttled {
                retry_after: Some(*after),
            },
            Problem::Server { .. } => Failure::ServerError,
            Problem::Unauthorized { .. } => Failure::Unauthorized { rbac: false },
            Problem::NotSent(_) => Failure::NotSent,
            Problem::Lost(_) | Problem::TimedOut => Failure::Lost,
            Problem::Forbidden { .. }
            | Problem::NotFound { .. }
            | Problem::Refused { .. }
            | Problem::TooLarge => Failure::Final,
        }
    }

    /// For log lines and `OutcomeUnknown`.
    fn reason(&self) -> String {
        match self {
            Problem::Throttled { retry_after, .. } => match retry_after {
                Some(d) => format!("HTTP 429, Retry-After {:.3}s", d.as_secs_f64()),
                None => "HTTP 429".to_string(),
            },
            Problem::Unauthorized { .. } => "HTTP 401".to_string(),
            Problem::Forbidden { code, .. } => format!("HTTP 403 {code}"),
            Problem::NotFound { code, .. } => format!("HTTP 404 {code}"),
            Problem::Refused { status, code, .. } => format!("HTTP {status} {code}"),
            Problem::Server {
                status, message, ..
            } => format!("HTTP {status}: {message}"),
            Problem::NotSent(e) => format!("not sent: {}", error_chain(e)),
            Problem::Lost(cause) => cause.clone(),
            Problem::TimedOut => "no answer in time".to_string(),
            Problem::TooLarge => "answer too large".to_string(),
        }
    }

    fn request_id(&self) -> Option<String> {
        match self {
            Problem::Throttled { request_id, .. }
            | Problem::Unauthorized { request_id, .. }
            | Problem::Forbidden { request_id, .. }
            | Problem::NotFound { request_id, .. }
            | Problem::Refused { request_id, .. }
            | Problem::Server { request_id, .. } => request_id.clone(),
            _ => None,
        }
    }
}

impl Paging {
    async fn next_page(&mut self) -> Option<Result<GraphPage, GraphError>> {
        if let Some(error) = self.failed.take() {
            self.done = true;
            return Some(Err(error));
        }
        if self.done {
            return None;
        }
        let cancel = self.cancel.clone();
        let result = tokio::select! {
            biased;
            () = cancel.cancelled() => Err(GraphError::Cancelled { call: self.call.clone() }),
            result = self.fetch_page() => result,
        };
        Some(result.map_err(|error| {
            self.done = true;
            match error {
                error @ GraphError::Cancelled { .. } => error,
                // A failed later page means the pages already handed out are not the
                // whole answer: say so rather than let a partial list pass as complete.
                error if self.pages > 0 => GraphError::IncompleteResults {
                    call: self.call.clone(),
                    pages: self.pages,
                    records: self.records,
                    source: Box::new(error),
                },
                error => error,
            }
        }))
    }

    async fn fetch_page(&mut self) -> Result<GraphPage, GraphError> {
        let Some(url) = self.next.clone() else {
            self.done = true;
            return Ok(GraphPage::default());
        };
        let answer = self.exchange(&url).await?;
        let protocol = |message: String| GraphError::Protocol {
            call: self.call.clone(),
            message,
        };
        let mut page = GraphPage {
            status: answer.status.as_u16(),
            ..GraphPage::default()
        };
        let mut next_link = None;
        if !answer.body.iter().all(u8::is_ascii_whitespace) {
            let value: Value = serde_json::from_slice(&answer.body).map_err(|e| {
                protocol(format!(
                    "HTTP {}: the answer is not JSON ({e})",
                    answer.status.as_u16()
                ))
            })?;
            match value {
                Value::Object(mut object) => match object.remove("value") {
                    Some(Value::Array(records)) => {
                        page.records = records;
                        page.count = object.get("@odata.count").and_then(Value::as_u64);
                        next_link = match object.remove("@odata.nextLink") {
                            None | Some(Value::Null) => None,
                            Some(Value::String(link)) => Some(link),
                            Some(other) => {
                                return Err(protocol(format!(
                                    "@odata.nextLink is not a string: {other}"
                                )));
                            }
                        };
                    }
                    Some(value) => {
                        object.insert("value".to_string(), value);
                        page.records = vec![Value::Object(object)];
                    }
                    None => page.records = vec![Value::Object(object)],
                },
                other => page.records = vec![other],
            }
        }
        self.next = match next_link {
            None => None,
            Some(link) => Some(self.checked_next_link(&url, &link)?),
        };
        self.done = self.next.is_none();
        self.pages += 1;
        self.records += page.records.len() as u64;
        Ok(page)
    }

    /// The next link as given (absolute, per Graph's paging rules), held to the origin of
    /// the page it came from: a token must never follow a link to another host.
    fn checked_next_link(&self, from: &Url, link: &str) -> Result<Url, GraphError> {
        let next = Url::parse(link).map_err(|e| GraphError::Protocol {
            call: self.call.clone(),
            message: format!(
                "the service sent an unreadable @odata.nextLink ({e}); the results would be incomplete, run the call again"
            ),
        })?;
        if next.origin() != from.origin() {
            return Err(GraphError::Protocol {
                call: self.call.clone(),
                message: format!(
                    "refused an @odata.nextLink to {} (the page came from {}): the token is only sent to the Graph host; the results would be incomplete",
                    next.origin().ascii_serialization(),
                    from.origin().ascii_serialization()
                ),
            });
        }
        Ok(next)
    }

    fn token_error(&self, source: crate::identity::IdentityError) -> GraphError {
        GraphError::Token {
            call: self.call.clone(),
            resource: self.inner.resource.clone(),
            source: Box::new(source),
        }
    }

    /// One request (one page) with its retries.
    async fn exchange(&mut self, url: &Url) -> Result<Answer, GraphError> {
        let inner = Arc::clone(&self.inner);
        let deadline = Instant::now() + inner.timeout;
        let mut attempt = 0u32;
        let mut fresh: Option<AccessToken> = None;
        let mut refreshed = false;
        loop {
            attempt += 1;
            let token = match fresh.take() {
                Some(token) => token,
                None => inner
                    .tokens
                    .token(&inner.resource)
                    .await
                    .map_err(|e| self.token_error(e))?,
            };
            let mut authorization = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                .map_err(|_| GraphError::Protocol {
                    call: self.call.clone(),
                    message: "the token contains characters not allowed in an HTTP header"
                        .to_string(),
                })?;
            authorization.set_sensitive(true);
            let mut headers = self.headers.clone();
            headers.insert(header::AUTHORIZATION, authorization);

            let permit = inner.limiter.acquire().await;
            let outcome = match inner
                .send(&self.method, url, headers, self.body.as_ref(), deadline)
                .await
            {
                Ok((answer, meta)) => classify(answer, &meta),
                Err(problem) => Err(problem),
            };
            let problem = match outcome {
                Ok(answer) => {
                    permit.succeeded();
                    return Ok(answer);
                }
                Err(problem @ Problem::Throttled { .. }) => {
                    permit.throttled();
                    problem
                }
                Err(problem) => {
                    drop(permit);
                    problem
                }
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            let decision = inner.retry.decide(
                attempt,
                &problem.failure(self.replay_safe),
                self.replay_safe,
                refreshed,
                remaining,
                rand::random::<f64>(),
            );
            match decision {
                Decision::Retry { after } => {
                    tracing::warn!(
                        method = %self.call.method,
                        path = %self.call.path,
                        attempt,
                        delay_ms = after.as_millis() as u64,
                        reason = %problem.reason(),
                        request_id = problem.request_id().as_deref().unwrap_or(""),
                        "retrying Microsoft Graph request"
                    );
                    tokio::time::sleep(after).await;
                }
                Decision::RefreshToken => {
                    let challenge = match &problem {
                        Problem::Unauthorized { challenge, .. } => challenge.clone(),
                        _ => None,
                    };
                    tracing::warn!(
                        method = %self.call.method,
                        path = %self.call.path,
                        attempt,
                        "refreshing the Graph token after a 401"
                    );
                    refreshed = true;
                    let token = inner
                        .tokens
                        .refresh(&inner.resource, challenge.as_deref())
                        .await
                        .map_err(|e| self.token_error(e))?;
                    fresh = Some(token);
                }
                Decision::OutcomeUnknown => {
                    let cause = match &problem {
                        Problem::TimedOut => format!(
                            "no answer within {}",
                            humantime::format_duration(inner.timeout)
                        ),
                        other => other.reason(),
                    };
                    tracing::warn!(
                        method = %self.call.method,
                        path = %self.call.path,
                        reason = %cause,
                        "not replaying a Graph write whose outcome is unknown"
                    );
                    return Err(GraphError::OutcomeUnknown {
                        call: self.call.clone(),
                        cause,
                        request_id: problem.request_id(),
                    });
                }
                Decision::Stop => return Err(self.final_error(problem, attempt, &token)),
            }
        }
    }

    fn final_error(&self, problem: Problem, attempts: u32, token: &AccessToken) -> GraphError {
        let call = self.call.clone();
        match problem {
            Problem::Throttled {
                retry_after,
                request_id,
            } => GraphError::Throttled {
                call,
                retry_after,
                attempts,
                request_id,
            },
            Problem::Unauthorized {
                message,
                request_id,
                ..
            } => GraphError::Unauthorized {
                call,
                message,
                request_id,
            },
            Problem::Forbidden {
                code,
                message,
                request_id,
            } => {
                let role_denied = [
                    "Authorization_RequestDenied",
                    "ErrorAccessDenied",
                    "accessDenied",
                ]
                .iter()
                .any(|c| c.eq_ignore_ascii_case(&code));
                let held = token.claims().map(|c| c.roles).unwrap_or_default();
                let missing_role = role_denied
                    .then(|| permissions::missing_role(&call.method, &call.path, &held))
                    .flatten()
                    .map(str::to_string);
                GraphError::Forbidden {
                    call,
                    code,
                    message,
                    missing_role,
                    request_id,
                }
            }
            Problem::NotFound {
                code,
                message,
                request_id,
            } => GraphError::NotFound {
                call,
                code,
                message,
                request_id,
            },
            Problem::Refused {
                status,
                code,
                message,
                request_id,
            } => GraphError::BadRequest {
                call,
                status,
                code,
                message,
                request_id,
            },
            Problem::Server {
                status,
                message,
                request_id,
                ..
            } => GraphError::Unavailable {
                call,
                status: Some(status),
                message,
                attempts,
                request_id,
            },
            Problem::NotSent(source) => GraphError::Transport { call, source },
            Problem::Lost(message) => GraphError::Unavailable {
                call,
                status: None,
                message,
                attempts,
                request_id: None,
            },
            Problem::TimedOut => GraphError::Timeout {
                call,
                after: self.inner.timeout,
            },
            Problem::TooLarge => GraphError::TooLarge {
                call,
                limit: self.inner.max_response_bytes,
            },
        }
    }
}

/// What `classify` reads from the response headers.
struct Meta {
    request_id: Option<String>,
    retry_after: Option<Duration>,
    www_authenticate: Option<String>,
}

impl Inner {
    /// Sends one request and reads the answer, at most `max_response_bytes` of it.
    async fn send(
        &self,
        method: &Method,
        url: &Url,
        headers: HeaderMap,
        body: Option<&Bytes>,
        deadline: Instant,
    ) -> Result<(Answer, Meta), Problem> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(Problem::TimedOut);
        }
        let mut request = self
            .http
            .request(method.clone(), url.clone())
            .headers(headers)
            .timeout(remaining);
        if let Some(body) = body {
            request = request.body(body.clone());
        }
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(e) if e.is_timeout() => return Err(Problem::TimedOut),
            Err(e) if e.is_connect() => return Err(Problem::NotSent(e)),
            Err(e) => {
                return Err(Problem::Lost(format!(
                    "connection lost: {}",
                    error_chain(&e)
                )));
            }
        };
        let status = response.status();
        let text = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .filter(|s| !s.is_empty())
        };
        let meta = Meta {
            request_id: text("request-id").or_else(|| text("x-ms-request-id")),
            retry_after: text("retry-after").as_deref().and_then(parse_retry_after),
            www_authenticate: text("www-authenticate"),
        };
        let limit = self.max_response_bytes;
        if response.content_length().is_some_and(|n| n > limit) {
            return Err(Problem::TooLarge);
        }
        let mut buffer = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if (buffer.len() + chunk.len()) as u64 > limit {
                        return Err(Problem::TooLarge);
                    }
                    buffer.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) if e.is_timeout() => return Err(Problem::TimedOut),
                Err(e) => {
                    return Err(Problem::Lost(format!(
                        "connection lost while reading the answer: {}",
                        error_chain(&e)
                    )));
                }
            }
        }
        Ok((
            Answer {
                status,
                body: Bytes::from(buffer),
            },
            meta,
        ))
    }
}

/// `Retry-After` in seconds (Graph sends integers). An absurd value waits the policy's
/// cap rather than overflowing; a negative or unreadable one is ignored (backoff instead).
pub fn parse_retry_after(header: &str) -> Option<Duration> {
    let seconds: f64 = header.trim().parse().ok()?;
    if !(seconds.is_finite() && seconds >= 0.0) {
        return None;
    }
    Some(Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX))
}

/// Graph's error body: `{"error":{"code","message","innerError":{"request-id"}}}`.
fn error_body(body: &[u8]) -> (Option<String>, Option<String>, Option<String>) {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return (None, None, None);
    };
    let text = |pointer: &str| {
        value
            .pointer(pointer)
            .and_then(Value::as_str)
            .map(str::to_string)
            .filter(|s| !s.is_empty())
    };
    (
        text("/error/code"),
        text("/error/message"),
        text("/error/innerError/request-id").or_else(|| text("/error/innererror/request-id")),
    )
}

/// Sorts an answer into a page or a problem.
fn classify(answer: Answer, meta: &Meta) -> Result<Answer, Problem> {
    let status = answer.status;
    if status.is_success() {
        return Ok(answer);
    }
    let (code, message, body_request_id) = error_body(&answer.body);
    let request_id = meta.request_id.clone().or(body_request_id);
    let code_or = |fallback: &str| code.clone().unwrap_or_else(|| fallback.to_string());
    let message = message.unwrap_or_else(|| {
        status
            .canonical_reason()
            .unwrap_or("no error message")
            .to_string()
    });
    Err(match status.as_u16() {
        401 => Problem::Unauthorized {
            message,
            challenge: meta
                .www_authenticate
                .as_deref()
                .and_then(crate::exchange::response::claims_challenge),
            request_id,
        },
        403 => Problem::Forbidden {
            code: code_or("Forbidden"),
            message,
            request_id,
        },
        404 => Problem::NotFound {
            code: code_or("NotFound"),
            message,
            request_id,
        },
        429 => Problem::Throttled {
            retry_after: meta.retry_after,
            request_id,
        },
        code @ 500..=599 => Problem::Server {
            status: code,
            message,
            retry_after: meta.retry_after,
            request_id,
        },
        other => Problem::Refused {
            status: other,
            code: code_or("BadRequest"),
            message,
            request_id,
        },
    })
}

/// A reqwest error with its causes, for messages.
pub(crate) fn error_chain(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_accepts_seconds_and_never_overflows() {
        let table = [
            ("3", Some(Duration::from_secs(3))),
            (" 0 ", Some(Duration::ZERO)),
            ("1.5", Some(Duration::from_millis(1500))),
            ("1e300", Some(Duration::MAX)),
            ("99999999999999999999999", Some(Duration::MAX)),
            ("-1", None),
            ("NaN", None),
            ("inf", None),
            ("Wed, 21 Oct 2015 07:28:00 GMT", None),
        ];
        for (header, expected) in table {
            assert_eq!(parse_retry_after(header), expected, "{header}");
        }
    }

    #[test]
    fn the_sendmail_body_has_graphs_shape() {
        let message = MailMessage {
            subject: "Job failed".into(),
            html: true,
            content: "<p>42</p>".into(),
            to: vec!["ops@contoso.com".into()],
            cc: vec![],
        };
        let body = message.to_json();
        assert_eq!(body["message"]["body"]["contentType"], "HTML");
        assert_eq!(
            body["message"]["toRecipients"][0]["emailAddress"]["address"],
            "ops@contoso.com"
        );
        assert!(body["message"].get("ccRecipients").is_none());
        assert_eq!(body["saveToSentItems"], false);
    }

    #[test]
    fn error_bodies_give_code_message_and_request_id() {
        let body = br#"{"error":{"code":"Authorization_RequestDenied","message":"Insufficient privileges to complete the operation.","innerError":{"request-id":"abc"}}}"#;
        let (code, message, id) = error_body(body);
        assert_eq!(code.as_deref(), Some("Authorization_RequestDenied"));
        assert_eq!(
            message.as_deref(),
            Some("Insufficient privileges to complete the operation.")
        );
        assert_eq!(id.as_deref(), Some("abc"));
        assert_eq!(error_body(b"<html>"), (None, None, None));
    }
}
