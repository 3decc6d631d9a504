//! The InvokeCommand client: one [`ExchangeClient`] per process, shared by every job.
//!
//! [`ExchangeClient::invoke`] returns an [`Invocation`], a stream of [`Page`]s fetched
//! only as the consumer pulls them: reading one page sends one request, and a 100,000-
//! mailbox read never sits in memory at once. Each request goes through the tenant's
//! [`TenantLimiter`], follows redirects by hand (re-POSTing body and headers, to hosts of
//! the configured cloud only), and retries as [`RetryPolicy`] decides. A write that may
//! have been applied is reported as [`ExchangeError::OutcomeUnknown`], never replayed.

use std::error::Error as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{BoxStream, Stream, StreamExt, TryStreamExt};
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::{StatusCode, redirect};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use url::Url;

use super::error::{Call, ExchangeError};
use super::limiter::TenantLimiter;
use super::params::Parameters;
use super::response::{self, CmdletIssue, ParsedPage, Record};
use super::retry::{Decision, Failure, RetryPolicy};
use super::{ExchangeSettings, cmdlet, encode};
use crate::identity::claims::{DIRECTORY_ROLES, EXCHANGE_MANAGE_AS_APP};
use crate::identity::{AccessToken, TokenClaims, TokenSource};

/// The arbitration mailbox every organisation has; app-only calls anchor on it.
pub const SYSTEM_MAILBOX: &str = "SystemMailbox{bb558c35-97f1-4cb9-8ff7-d53741dc928c}";
/// What the module sends as `X-ClientApplication`.
pub const CLIENT_APPLICATION: &str = "ExoManagementModule";

/// One page of a cmdlet's output.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Page {
    /// Output objects, annotations stripped.
    pub records: Vec<Record>,
    /// `@adminapi.warnings`, without the service's paging notice.
    pub warnings: Vec<String>,
    /// `@adminapi.errors`: non-terminating errors. The call went on, but did not do
    /// everything it was asked ("completed with errors").
    pub errors: Vec<CmdletIssue>,
}

/// A whole cmdlet output, collected.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Output {
    pub records: Vec<Record>,
    pub warnings: Vec<String>,
    pub errors: Vec<CmdletIssue>,
    pub pages: usize,
}

impl Output {
    /// HTTP success with non-terminating errors: record it as such, not as a clean run.
    pub fn completed_with_errors(&self) -> bool {
        !self.errors.is_empty()
    }
}

/// Per-call options.
#[derive(Clone, Debug, Default)]
pub struct InvokeOptions {
    /// Stops the call (between or during requests) when cancelled.
    pub cancel: CancellationToken,
    /// Replay this write after server errors as if it were a read. Only for calls whose
    /// repetition is harmless (setting absolute values), never for `New-`/`Add-`/`Remove-`.
    pub idempotent: bool,
    /// What the call's log span shows as its target instead of its `Identity` parameter:
    /// the executor passes it with secret values masked (the span is logged, the
    /// parameter is not).
    pub log_target: Option<String>,
}

/// Which hosts a redirect may lead to.
#[derive(Clone, Debug, PartialEq, Eq)]
enum HostRule {
    /// HTTPS to the cloud's host or one of its regional subdomains.
    Cloud(&'static str),
    /// The configured `endpoint`'s scheme and host, any port (tests, proxies).
    Endpoint { scheme: String, host: String },
}

impl HostRule {
    fn allows(&self, url: &Url) -> bool {
        let Some(host) = url.host_str() else {
            return false;
        };
        match self {
            HostRule::Cloud(allowed) => {
                let host = host.to_ascii_lowercase();
                url.scheme() == "https"
                    && (host == *allowed || host.ends_with(&format!(".{allowed}")))
            }
            HostRule::Endpoint {
                scheme,
                host: allowed,
            } => url.scheme() == scheme && host.eq_ignore_ascii_case(allowed),
        }
    }
}

/// The client. Cheap to clone; clones share connections, tokens and the limiter.
#[derive(Clone)]
pub struct ExchangeClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    tokens: Arc<dyn TokenSource>,
    limiter: Arc<TenantLimiter>,
    resource: String,
    base: Url,
    hosts: HostRule,
    organization: Option<String>,
    page_size: u32,
    timeout: Duration,
    retry: RetryPolicy,
    max_redirects: u32,
    max_response_bytes: u64,
    connection_id: String,
}

impl std::fmt::Debug for ExchangeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExchangeClient")
            .field("base", &self.inner.base.as_str())
            .field("resource", &self.inner.resource)
            .field("organization", &self.inner.organization)
            .finish_non_exhaustive()
    }
}

impl ExchangeClient {
    /// A client for the settings' cloud (or `endpoint`), with tokens from `tokens` and
    /// requests counted by the tenant's shared `limiter`.
    pub fn new(
        settings: &ExchangeSettings,
        tokens: Arc<dyn TokenSource>,
        limiter: Arc<TenantLimiter>,
    ) -> Result<Self, ExchangeError> {
        Self::with_retry_policy(
            settings,
            tokens,
            limiter,
            RetryPolicy::from_settings(settings),
        )
    }

    /// As [`ExchangeClient::new`], with an explicit retry policy.
    pub fn with_retry_policy(
        settings: &ExchangeSettings,
        tokens: Arc<dyn TokenSource>,
        limiter: Arc<TenantLimiter>,
        retry: RetryPolicy,
    ) -> Result<Self, ExchangeError> {
        let (base, hosts) = match &settings.endpoint {
            Some(endpoint) => {
                let url = endpoint.as_url().clone();
                let host = url.host_str().unwrap_or_default().to_string();
                let rule = HostRule::Endpoint {
                    scheme: url.scheme().to_string(),
                    host,
                };
                (url, rule)
            }
            None => {
                let host = settings.cloud.host();
                let url = Url::parse(&format!("https://{host}")).map_err(|e| {
                    ExchangeError::Configuration {
                        key: "cloud",
                        message: e.to_string(),
                    }
                })?;
                (url, HostRule::Cloud(host))
            }
        };
        let http = reqwest::Client::builder()
            // Redirects are followed by hand: reqwest would turn a 301/302 POST into a
            // GET and drop Authorization on a host change.
            .redirect(redirect::Policy::none())
            .user_agent(concat!("runbook-worker/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| ExchangeError::Configuration {
                key: "endpoint",
                message: format!("cannot build the HTTP client: {e}"),
            })?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                tokens,
                limiter,
                resource: settings.cloud.resource(),
                base,
                hosts,
                organization: settings
                    .organization
                    .clone()
                    .filter(|o| !o.trim().is_empty()),
                page_size: settings.page_size.get(),
                timeout: settings.timeout.get(),
                retry,
                max_redirects: settings.max_redirects,
                max_response_bytes: settings.max_response_bytes,
                connection_id: uuid::Uuid::new_v4().to_string(),
            }),
        })
    }

    /// The token resource (`aud`) this client asks for.
    pub fn resource(&self) -> &str {
        &self.inner.resource
    }

    /// The limiter this client's requests go through.
    pub fn limiter(&self) -> &Arc<TenantLimiter> {
        &self.inner.limiter
    }

    /// Runs `cmdlet` with `parameters`; pages arrive as the stream is polled.
    pub fn invoke(&self, cmdlet: &str, parameters: Parameters) -> Invocation {
        self.invoke_with(cmdlet, parameters, InvokeOptions::default())
    }

    /// [`ExchangeClient::invoke`] with options (cancellation, idempotent writes).
    pub fn invoke_with(
        &self,
        cmdlet: &str,
        parameters: Parameters,
        options: InvokeOptions,
    ) -> Invocation {
        let call = Call {
            cmdlet: cmdlet.to_string(),
            target: cmdlet::target(&parameters),
        };
        let body = Bytes::from(encode::envelope(cmdlet, &parameters).to_string());
        let client_request_id = uuid::Uuid::new_v4().to_string();
        let span = tracing::info_span!(
            "exchange_call",
            cmdlet = %cmdlet,
            target = options
                .log_target
                .as_deref()
                .or(call.target.as_deref())
                .unwrap_or(""),
            client_request_id = %client_request_id,
        );
        let paging = Paging {
            inner: Arc::clone(&self.inner),
            call: Box::new(call.clone()),
            body,
            replay_safe: cmdlet::is_read(cmdlet) || options.idempotent,
            client_request_id,
            cancel: options.cancel,
            remaining: cmdlet::result_size(&parameters),
            tenant: None,
            next: None,
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
        Invocation { call, stream }
    }

    /// Runs `cmdlet` to the end and collects every page.
    pub async fn invoke_all(
        &self,
        cmdlet: &str,
        parameters: Parameters,
    ) -> Result<Output, ExchangeError> {
        self.invoke(cmdlet, parameters).output().await
    }
}

/// A running cmdlet call: a stream of pages. After an error the stream ends.
pub struct Invocation {
    call: Call,
    stream: BoxStream<'static, Result<Page, ExchangeError>>,
}

impl std::fmt::Debug for Invocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invocation")
            .field("call", &self.call)
            .finish_non_exhaustive()
    }
}

impl Stream for Invocation {
    type Item = Result<Page, ExchangeError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.stream.poll_next_unpin(cx)
    }
}

impl Invocation {
    pub fn call(&self) -> &Call {
        &self.call
    }

    /// Every page, collected. Fails as a whole if any page fails.
    pub async fn output(mut self) -> Result<Output, ExchangeError> {
        let mut output = Output::default();
        while let Some(page) = self.stream.next().await {
            let page = page?;
            output.pages += 1;
            output.records.extend(page.records);
            output.warnings.extend(page.warnings);
            output.errors.extend(page.errors);
        }
        Ok(output)
    }

    /// Counts records without keeping them.
    pub async fn count_records(mut self) -> Result<u64, ExchangeError> {
        let mut count = 0u64;
        while let Some(page) = self.stream.next().await {
            count += page?.records.len() as u64;
        }
        Ok(count)
    }

    /// The records one by one. Warnings and non-terminating errors are dropped: use the
    /// pages when they matter.
    pub fn records(self) -> impl Stream<Item = Result<Record, ExchangeError>> + Send + 'static {
        self.stream
            .map_ok(|page| futures::stream::iter(page.records.into_iter().map(Ok)))
            .try_flatten()
    }
}

/// Where a call is in its paging.
struct Paging {
    inner: Arc<Inner>,
    call: Box<Call>,
    /// The encoded envelope: the same bytes for every attempt and page.
    body: Bytes,
    replay_safe: bool,
    client_request_id: String,
    cancel: CancellationToken,
    /// Records still wanted for a numeric `ResultSize`.
    remaining: Option<u64>,
    tenant: Option<Tenant>,
    /// The next link; `None` before the first page.
    next: Option<Url>,
    done: bool,
    pages: usize,
    records: u64,
}

#[derive(Clone)]
struct Tenant {
    url: Url,
    anchor: HeaderValue,
}

/// A complete HTTP answer, after redirects.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    url: Url,
}

/// Why an attempt failed, with what the final error needs.
enum Problem {
    Throttled {
        retry_after: Option<Duration>,
        message: Option<String>,
        request_id: Option<String>,
    },
    Unauthorized {
        reason: String,
        challenge: Option<String>,
        rbac: bool,
        request_id: Option<String>,
    },
    Forbidden {
        diagnostics: Option<String>,
        request_id: Option<String>,
    },
    Cmdlet {
        status: u16,
        issue: CmdletIssue,
        request_id: Option<String>,
    },
    NotFound {
        message: String,
        request_id: Option<String>,
    },
    Server {
        status: u16,
        message: String,
        request_id: Option<String>,
    },
    NotSent(reqwest::Error),
    Lost(String),
    TimedOut,
    /// A redirect or link this client will not follow, or an unreadable success.
    Refused(String),
}

impl Problem {
    fn failure(&self) -> Failure {
        match self {
            Problem::Throttled { retry_after, .. } => Failure::Throttled {
                retry_after: *retry_after,
            },
            Problem::Unauthorized { rbac, .. } => Failure::Unauthorized { rbac: *rbac },
            Problem::Server { .. } => Failure::ServerError,
            Problem::NotSent(_) => Failure::NotSent,
            Problem::Lost(_) | Problem::TimedOut => Failure::Lost,
            Problem::Forbidden { .. }
            | Problem::Cmdlet { .. }
            | Problem::NotFound { .. }
            | Problem::Refused(_) => Failure::Final,
        }
    }

    /// For the retry log line.
    fn reason(&self) -> String {
        match self {
            Problem::Throttled { retry_after, .. } => match retry_after {
                Some(d) => format!("HTTP 429, Retry-After {:.3}s", d.as_secs_f64()),
                None => "HTTP 429".to_string(),
            },
            Problem::Unauthorized { challenge, .. } => match challenge {
                Some(_) => "HTTP 401 with a claims challenge".to_string(),
                None => "HTTP 401".to_string(),
            },
            Problem::Server {
                status, message, ..
            } => format!("HTTP {status}: {message}"),
            Problem::NotSent(e) => format!("not sent: {}", error_chain(e)),
            Problem::Lost(cause) => cause.clone(),
            Problem::TimedOut => "no answer in time".to_string(),
            Problem::Forbidden { .. } => "HTTP 403".to_string(),
            Problem::Cmdlet { status, issue, .. } => format!("HTTP {status}: {issue}"),
            Problem::NotFound { message, .. } => format!("not found: {message}"),
            Problem::Refused(message) => message.clone(),
        }
    }

    fn request_id(&self) -> Option<String> {
        match self {
            Problem::Throttled { request_id, .. }
            | Problem::Unauthorized { request_id, .. }
            | Problem::Forbidden { request_id, .. }
            | Problem::Cmdlet { request_id, .. }
            | Problem::NotFound { request_id, .. }
            | Problem::Server { request_id, .. } => request_id.clone(),
            _ => None,
        }
    }
}

impl Paging {
    async fn next_page(&mut self) -> Option<Result<Page, ExchangeError>> {
        if self.done {
            return None;
        }
        let cancel = self.cancel.clone();
        let result = tokio::select! {
            biased;
            () = cancel.cancelled() => Err(ExchangeError::Cancelled { call: self.call.clone() }),
            result = self.fetch_page() => result,
        };
        Some(result.map_err(|error| {
            self.done = true;
            match error {
                // A failed later page means the pages already handed out are not the
                // whole answer: say so rather than let a partial list pass as complete.
                error @ ExchangeError::Cancelled { .. } => error,
                error if self.pages > 0 => ExchangeError::IncompleteResults {
                    call: self.call.clone(),
                    pages: self.pages,
                    records: self.records,
                    source: Box::new(error),
                },
                error => error,
            }
        }))
    }

    async fn fetch_page(&mut self) -> Result<Page, ExchangeError> {
        let page_size = u64::from(self.inner.page_size);
        let prefer = self
            .remaining
            .map_or(page_size, |r| r.min(page_size))
            .max(1);
        let (parsed, url) = self.exchange(prefer).await?;
        let ParsedPage {
            mut records,
            warnings,
            errors,
            next_link,
            confirmation,
        } = parsed;
        if let Some(message) = confirmation
            && records.is_empty()
        {
            return Err(ExchangeError::ConfirmationRequired {
                call: self.call.clone(),
                message,
            });
        }
        let received = records.len() as u64;
        let wants_more = match &mut self.remaining {
            None => true,
            Some(remaining) => {
                if received > *remaining {
                    records.truncate(*remaining as usize);
                }
                *remaining = remaining.saturating_sub(received);
                // The module's rule: go on only while the last page was full.
                *remaining > 0 && received >= prefer
            }
        };
        self.next = match next_link.filter(|_| wants_more) {
            None => None,
            Some(link) => Some(self.checked_next_link(&url, &link)?),
        };
        self.done = self.next.is_none();
        self.pages += 1;
        self.records += records.len() as u64;
        Ok(Page {
            records,
            warnings,
            errors,
        })
    }

    /// The next link, resolved against the page it came from and held to its origin.
    fn checked_next_link(&self, from: &Url, link: &str) -> Result<Url, ExchangeError> {
        let next = from.join(link).map_err(|e| ExchangeError::Protocol {
            call: self.call.clone(),
            message: format!("the service sent an unreadable next-page link ({e}); the results would be incomplete, run the call again"),
        })?;
        if next.origin() != from.origin() {
            return Err(ExchangeError::Protocol {
                call: self.call.clone(),
                message: format!(
                    "refused a next-page link to {} (the page came from {}); the results would be incomplete: report this to the operator of the endpoint",
                    next.origin().ascii_serialization(),
                    from.origin().ascii_serialization()
                ),
            });
        }
        Ok(next)
    }

    /// The tenant part of the URL and the anchor header, from the settings or the token.
    fn tenant(&mut self, claims: Option<&TokenClaims>) -> Result<Tenant, ExchangeError> {
        if let Some(tenant) = &self.tenant {
            return Ok(tenant.clone());
        }
        let tid = claims.and_then(|c| c.tid.clone());
        let Some(segment) = self.inner.organization.clone().or_else(|| tid.clone()) else {
            return Err(ExchangeError::Configuration {
                key: "organization",
                message: "the token has no tid claim to default it from: set it to the tenant's *.onmicrosoft.com domain or GUID".to_string(),
            });
        };
        let mut url = self.inner.base.clone();
        url.path_segments_mut()
            .map_err(|()| ExchangeError::Configuration {
                key: "endpoint",
                message: format!("{} cannot be a base URL", self.inner.base),
            })?
            .pop_if_empty()
            .extend(["adminapi", "beta", &segment, "InvokeCommand"]);
        // The app-only anchor names the tenant by id; without a `tid` claim the older
        // UPN form with the initial domain is the one the service accepts.
        let anchor = match tid {
            Some(tid) => format!("APP:{SYSTEM_MAILBOX}@{tid}"),
            None if segment.contains('.') => format!("UPN:{SYSTEM_MAILBOX}@{segment}"),
            None => format!("APP:{SYSTEM_MAILBOX}@{segment}"),
        };
        let anchor = HeaderValue::from_str(&anchor).map_err(|_| ExchangeError::Configuration {
            key: "organization",
            message: "contains characters not allowed in an HTTP header".to_string(),
        })?;
        let tenant = Tenant { url, anchor };
        self.tenant = Some(tenant.clone());
        Ok(tenant)
    }

    fn headers(
        &self,
        token: &AccessToken,
        tenant: &Tenant,
        prefer: u64,
    ) -> Result<HeaderMap, ExchangeError> {
        let text = |value: &str, what: &str| {
            HeaderValue::from_str(value).map_err(|_| ExchangeError::Protocol {
                call: self.call.clone(),
                message: format!("the {what} contains characters not allowed in an HTTP header"),
            })
        };
        let mut authorization = text(&format!("Bearer {}", token.expose()), "token")?;
        authorization.set_sensitive(true);
        let mut headers = HeaderMap::with_capacity(12);
        headers.insert(header::AUTHORIZATION, authorization);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(
            HeaderName::from_static("x-responseformat"),
            HeaderValue::from_static("json"),
        );
        headers.insert(
            HeaderName::from_static("x-cmdletname"),
            text(&self.call.cmdlet, "cmdlet name")?,
        );
        headers.insert(
            HeaderName::from_static("x-clientapplication"),
            HeaderValue::from_static(CLIENT_APPLICATION),
        );
        headers.insert(
            HeaderName::from_static("x-serializationlevel"),
            HeaderValue::from_static("Partial"),
        );
        headers.insert(
            HeaderName::from_static("x-anchormailbox"),
            tenant.anchor.clone(),
        );
        headers.insert(
            HeaderName::from_static("prefer"),
            text(&format!("odata.maxpagesize={prefer}"), "page size")?,
        );
        headers.insert(
            HeaderName::from_static("client-request-id"),
            text(&self.client_request_id, "request id")?,
        );
        headers.insert(
            HeaderName::from_static("connection-id"),
            text(&self.inner.connection_id, "connection id")?,
        );
        Ok(headers)
    }

    /// One request (one page) with its retries. Returns the page and the URL it came
    /// from after redirects.
    async fn exchange(&mut self, prefer: u64) -> Result<(ParsedPage, Url), ExchangeError> {
        let inner = Arc::clone(&self.inner);
        let deadline = Instant::now() + inner.timeout;
        let mut attempt = 0u32;
        let mut refreshed_token: Option<AccessToken> = None;
        let mut refreshed = false;
        loop {
            attempt += 1;
            let token = match refreshed_token.take() {
                Some(token) => token,
                None => inner
                    .tokens
                    .token(&inner.resource)
                    .await
                    .map_err(|source| ExchangeError::Token {
                        call: self.call.clone(),
                        resource: inner.resource.clone(),
                        source: Box::new(source),
                    })?,
            };
            let claims = token.claims();
            let tenant = self.tenant(claims.as_ref())?;
            let url = self.next.clone().unwrap_or_else(|| tenant.url.clone());
            let headers = self.headers(&token, &tenant, prefer)?;

            let permit = inner.limiter.acquire().await;
            let outcome = match inner.send(url, headers, &self.body, deadline).await {
                Ok(answer) => classify(answer),
                Err(problem) => Err(problem),
            };
            let problem = match outcome {
                Ok(done) => {
                    permit.succeeded();
                    return Ok(done);
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
                &problem.failure(),
                self.replay_safe,
                refreshed,
                remaining,
                rand::random::<f64>(),
            );
            match decision {
                Decision::Retry { after } => {
                    tracing::warn!(
                        cmdlet = %self.call.cmdlet,
                        attempt,
                        delay_ms = after.as_millis() as u64,
                        reason = %problem.reason(),
                        request_id = problem.request_id().as_deref().unwrap_or(""),
                        "retrying Exchange Online request"
                    );
                    tokio::time::sleep(after).await;
                }
                Decision::RefreshToken => {
                    let challenge = match &problem {
                        Problem::Unauthorized { challenge, .. } => challenge.clone(),
                        _ => None,
                    };
                    tracing::warn!(
                        cmdlet = %self.call.cmdlet,
                        attempt,
                        reason = %problem.reason(),
                        "refreshing the token and retrying Exchange Online request"
                    );
                    refreshed = true;
                    let token = inner
                        .tokens
                        .refresh(&inner.resource, challenge.as_deref())
                        .await
                        .map_err(|source| ExchangeError::Token {
                            call: self.call.clone(),
                            resource: inner.resource.clone(),
                            source: Box::new(source),
                        })?;
                    refreshed_token = Some(token);
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
                        cmdlet = %self.call.cmdlet,
                        attempt,
                        reason = %cause,
                        "not replaying a write whose outcome is unknown"
                    );
                    return Err(ExchangeError::OutcomeUnknown {
                        call: self.call.clone(),
                        cause,
                        request_id: problem.request_id(),
                    });
                }
                Decision::Stop => {
                    return Err(self.final_error(problem, attempt, claims.as_ref()));
                }
            }
        }
    }

    fn final_error(
        &self,
        problem: Problem,
        attempts: u32,
        claims: Option<&TokenClaims>,
    ) -> ExchangeError {
        let call = self.call.clone();
        let hint = || permission_hint(claims, &self.inner.resource);
        match problem {
            Problem::Throttled {
                retry_after,
                message,
                request_id,
            } => ExchangeError::Throttled {
                call,
                retry_after,
                attempts,
                message,
                request_id,
            },
            Problem::Unauthorized {
                reason, request_id, ..
            } => ExchangeError::Unauthorized {
                call,
                reason,
                hint: hint(),
                request_id,
            },
            Problem::Forbidden {
                diagnostics,
                request_id,
            } => ExchangeError::Forbidden {
                call,
                diagnostics,
                request_id,
                hint: hint(),
            },
            Problem::Cmdlet {
                status,
                issue,
                request_id,
            } => ExchangeError::CmdletFailed {
                call,
                status,
                class: issue.class,
                message: issue.message,
                error_id: issue.error_id,
                request_id,
            },
            Problem::NotFound {
                message,
                request_id,
            } => ExchangeError::NotFound {
                call,
                message,
                request_id,
            },
            Problem::Server {
                status,
                message,
                request_id,
            } => ExchangeError::Unavailable {
                call,
                status: Some(status),
                message,
                attempts,
                request_id,
            },
            Problem::NotSent(source) => ExchangeError::Transport { call, source },
            Problem::Lost(message) => ExchangeError::Unavailable {
                call,
                status: None,
                message,
                attempts,
                request_id: None,
            },
            Problem::TimedOut => ExchangeError::Timeout {
                call,
                after: self.inner.timeout,
            },
            Problem::Refused(message) => ExchangeError::Protocol { call, message },
        }
    }
}

impl Inner {
    /// POSTs `body` to `url`, following redirects by hand until an answer that is not a
    /// redirect, within `deadline`.
    async fn send(
        &self,
        mut url: Url,
        headers: HeaderMap,
        body: &Bytes,
        deadline: Instant,
    ) -> Result<Answer, Problem> {
        let mut cookies: Vec<String> = Vec::new();
        for hop in 0..=self.max_redirects {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(Problem::TimedOut);
            }
            let mut request = self
                .http
                .post(url.clone())
                .headers(headers.clone())
                .body(body.clone())
                .timeout(remaining);
            if !cookies.is_empty() {
                // Regional front doors pin a tenant with affinity cookies on the redirect.
                request = request.header(header::COOKIE, cookies.join("; "));
            }
            let response = match request.send().await {
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
            if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
                let next = redirect_target(&url, response.headers()).map_err(Problem::Refused)?;
                if !self.hosts.allows(&next) {
                    return Err(Problem::Refused(format!(
                        "refused a redirect (HTTP {}) to {}: not an Exchange Online host of the configured cloud",
                        status.as_u16(),
                        next.origin().ascii_serialization()
                    )));
                }
                cookies.extend(
                    response
                        .headers()
                        .get_all(header::SET_COOKIE)
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .filter_map(|v| v.split(';').next())
                        .map(|pair| pair.trim().to_string()),
                );
                tracing::debug!(
                    hop,
                    status = status.as_u16(),
                    to = %next.origin().ascii_serialization(),
                    "following redirect"
                );
                url = next;
                continue;
            }
            let headers = response.headers().clone();
            let body = match read_body(response, self.max_response_bytes).await {
                Ok(Some(body)) => body,
                Ok(None) => {
                    return Err(Problem::Refused(format!(
                        "the answer (HTTP {}) is larger than exchange.max_response_bytes ({} bytes); lower exchange.page_size or raise exchange.max_response_bytes",
                        status.as_u16(),
                        self.max_response_bytes
                    )));
                }
                Err(e) if e.is_timeout() => return Err(Problem::TimedOut),
                // Error bodies sometimes claim gzip and are plain: the status and headers
                // still say what happened.
                Err(e) if e.is_decode() && !status.is_success() => Bytes::new(),
                Err(e) => {
                    return Err(Problem::Lost(format!(
                        "connection lost while reading the answer: {}",
                        error_chain(&e)
                    )));
                }
            };
            return Ok(Answer {
                status,
                headers,
                body,
                url,
            });
        }
        Err(Problem::Refused(format!(
            "gave up after {} redirects",
            self.max_redirects
        )))
    }
}

/// The body of an answer, read chunk by chunk (after gzip) and abandoned as soon as it
/// passes `cap` bytes: `None` then. A page of records is buffered whole to be decoded, so
/// without this one huge answer could take all the memory of the worker.
async fn read_body(
    mut response: reqwest::Response,
    cap: u64,
) -> Result<Option<Bytes>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if (body.len() + chunk.len()) as u64 > cap {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(Bytes::from(body)))
}

/// Where a redirect points, resolved against the request URL, with the regional front
/// doors' `:446` rewritten to the HTTPS port.
fn redirect_target(from: &Url, headers: &HeaderMap) -> Result<Url, String> {
    let location = headers
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| "the service redirected without a Location".to_string())?;
    let mut next = from
        .join(location)
        .map_err(|e| format!("the service redirected to an unreadable Location ({e})"))?;
    if next.scheme() == "https" && next.port() == Some(446) {
        // Setting the default port of a special scheme cannot fail.
        let _ = next.set_port(None);
    }
    Ok(next)
}

/// Sorts a complete answer into a page or a problem.
fn classify(answer: Answer) -> Result<(ParsedPage, Url), Problem> {
    let Answer {
        status,
        headers,
        body,
        url,
    } = answer;
    let header_text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .filter(|s| !s.is_empty())
    };
    let request_id = header_text("request-id").or_else(|| header_text("x-ms-request-id"));
    if status.is_success() {
        return response::parse_page(&body)
            .map(|page| (page, url))
            .map_err(|e| Problem::Refused(format!("HTTP {}: {e}", status.as_u16())));
    }
    let error = response::parse_error_body(&body);
    let detail = error.as_ref().and_then(|e| e.detail.clone());
    let best = || error.as_ref().and_then(|e| e.best_message());
    let code = status.as_u16();
    Err(match code {
        401 => {
            let www = header_text("www-authenticate");
            let reason = best()
                .or_else(|| header_text("x-ms-diagnostics"))
                .or_else(|| {
                    www.as_deref().and_then(|w| {
                        response::auth_param(w, "error_description")
                            .or_else(|| response::auth_param(w, "error"))
                    })
                })
                .unwrap_or_else(|| "the token was refused".to_string());
            let lower = reason.to_ascii_lowercase();
            // RBAC refusals name the cmdlet or the role; a new token does not change them.
            let rbac = lower.contains("is not allowed to call")
                || lower.contains("isn't supported in this scenario");
            Problem::Unauthorized {
                reason,
                challenge: www.as_deref().and_then(response::claims_challenge),
                rbac,
                request_id,
            }
        }
        403 => Problem::Forbidden {
            diagnostics: header_text("x-ms-diagnostics"),
            request_id,
        },
        404 => Problem::NotFound {
            message: best().unwrap_or_else(|| "HTTP 404".to_string()),
            request_id,
        },
        429 => {
            let message = best();
            let retry_after = header_text("retry-after")
                .as_deref()
                .and_then(response::parse_retry_after)
                .or_else(|| {
                    message
                        .as_deref()
                        .and_then(response::retry_after_from_message)
                });
            Problem::Throttled {
                retry_after,
                message,
                request_id,
            }
        }
        500..=599 => match detail {
            Some(issue) if issue.is_transient() => Problem::Server {
                status: code,
                message: issue.to_string(),
                request_id,
            },
            Some(issue) if issue.is_not_found() => Problem::NotFound {
                message: issue.message,
                request_id,
            },
            // The cmdlet ran and threw: a definite answer, not a server fault.
            Some(issue) if issue.class.is_some() => Problem::Cmdlet {
                status: code,
                issue,
                request_id,
            },
            _ => Problem::Server {
                status: code,
                message: best().unwrap_or_else(|| {
                    status
                        .canonical_reason()
                        .unwrap_or("server error")
                        .to_string()
                }),
                request_id,
            },
        },
        _ => match detail {
            Some(issue) if issue.is_not_found() => Problem::NotFound {
                message: issue.message,
                request_id,
            },
            Some(issue) => Problem::Cmdlet {
                status: code,
                issue,
                request_id,
            },
            None => Problem::Cmdlet {
                status: code,
                issue: CmdletIssue {
                    message: best().unwrap_or_else(|| format!("HTTP {code}")),
                    ..CmdletIssue::default()
                },
                request_id,
            },
        },
    })
}

/// What the token's own claims say is missing for Exchange, if anything.
pub fn permission_hint(claims: Option<&TokenClaims>, resource: &str) -> Option<String> {
    let claims = claims?;
    let normalise = |s: &str| s.trim_end_matches('/').to_ascii_lowercase();
    if let Some(aud) = &claims.aud
        && normalise(aud) != normalise(resource)
    {
        return Some(format!(
            "the token's audience is {aud}, not {resource}: ask the identity for a token for {resource}"
        ));
    }
    if !claims.has_role(EXCHANGE_MANAGE_AS_APP) {
        let roles = if claims.roles.is_empty() {
            "none".to_string()
        } else {
            claims.roles.join(", ")
        };
        return Some(format!(
            "the token has no {EXCHANGE_MANAGE_AS_APP} app role (roles: {roles})"
        ));
    }
    let accepted = claims.wids.iter().any(|w| {
        DIRECTORY_ROLES
            .iter()
            .any(|r| r.exchange_read && r.id.eq_ignore_ascii_case(w))
    });
    if !accepted {
        return Some(
            "the token carries no Entra directory role Exchange accepts; role changes can take hours to reach a managed identity's token"
                .to_string(),
        );
    }
    None
}

fn error_chain(error: &reqwest::Error) -> String {
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
    fn redirects_are_accepted_only_to_hosts_of_the_cloud_or_endpoint() {
        let cloud = HostRule::Cloud("outlook.office365.com");
        let endpoint = HostRule::Endpoint {
            scheme: "http".into(),
            host: "127.0.0.1".into(),
        };
        let table = [
            (&cloud, "https://outlook.office365.com/adminapi", true),
            (&cloud, "https://eur03.outlook.office365.com/adminapi", true),
            (&cloud, "https://OUTLOOK.office365.com/x", true),
            (&cloud, "http://outlook.office365.com/x", false),
            (
                &cloud,
                "https://evil-outlook.office365.com.example/x",
                false,
            ),
            (&cloud, "https://notoutlook.office365.com/x", false),
            (&cloud, "https://outlook.office365.us/x", false),
            (&endpoint, "http://127.0.0.1:4000/x", true),
            (&endpoint, "http://127.0.0.1:5000/y", true),
            (&endpoint, "https://127.0.0.1:5000/y", false),
            (&endpoint, "http://localhost:5000/y", false),
        ];
        for (rule, url, allowed) in table {
            assert_eq!(rule.allows(&Url::parse(url).unwrap()), allowed, "{url}");
        }
    }

    #[test]
    fn redirect_targets_resolve_relative_locations_and_rewrite_port_446() {
        let from =
            Url::parse("https://outlook.office365.com/adminapi/beta/t/InvokeCommand").unwrap();
        let table = [
            (
                "https://eur.outlook.office365.com:446/a",
                "https://eur.outlook.office365.com/a",
            ),
            (
                "/other/path?x=1",
                "https://outlook.office365.com/other/path?x=1",
            ),
            ("http://127.0.0.1:446/a", "http://127.0.0.1:446/a"),
        ];
        for (location, expected) in table {
            let mut headers = HeaderMap::new();
            headers.insert(header::LOCATION, HeaderValue::from_str(location).unwrap());
            assert_eq!(redirect_target(&from, &headers).unwrap().as_str(), expected);
        }
        assert!(redirect_target(&from, &HeaderMap::new()).is_err());
    }

    #[test]
    fn the_permission_hint_names_what_the_token_lacks() {
        let good = TokenClaims {
            aud: Some("https://outlook.office365.com".into()),
            roles: vec!["Exchange.ManageAsApp".into()],
            wids: vec!["29232cdf-9323-42fd-ade2-1d097af3e4de".into()],
            ..TokenClaims::default()
        };
        let table: Vec<(TokenClaims, Option<&str>)> = vec![
            (good.clone(), None),
            (
                TokenClaims {
                    aud: Some("https://outlook.office365.com/".into()),
                    ..good.clone()
                },
                None,
            ),
            (
                TokenClaims {
                    aud: Some("https://graph.microsoft.com".into()),
                    ..good.clone()
                },
                Some("audience is https://graph.microsoft.com"),
            ),
            (
                TokenClaims {
                    roles: vec!["Exchange.ManageAsAppV2".into()],
                    ..good.clone()
                },
                Some("no Exchange.ManageAsApp app role (roles: Exchange.ManageAsAppV2)"),
            ),
            (
                TokenClaims {
                    wids: vec!["0997a1d0-0d1d-4acb-b408-d5ca73121e90".into()],
                    ..good.clone()
                },
                Some("no Entra directory role"),
            ),
        ];
        for (claims, expected) in table {
            let hint = permission_hint(Some(&claims), "https://outlook.office365.com");
            match expected {
                None => assert_eq!(hint, None, "{claims:?}"),
                Some(needle) => assert!(
                    hint.as_deref().is_some_and(|h| h.contains(needle)),
                    "{hint:?} lacks {needle:?}"
                ),
            }
        }
        assert_eq!(permission_hint(None, "x"), None);
    }

    fn answer(status: u16, headers: &[(&str, &str)], body: &str) -> Answer {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        Answer {
            status: StatusCode::from_u16(status).unwrap(),
            headers: map,
            body: Bytes::from(body.to_string()),
            url: Url::parse("http://127.0.0.1/x").unwrap(),
        }
    }

    #[test]
    fn answers_are_sorted_into_the_failure_the_retry_policy_needs() {
        let pipe = |class: &str| {
            format!(
                r#"{{"error":{{"code":"InternalServerError","message":"Error executing cmdlet","details":[{{"code":"Client","message":"Ex1|{class}|text"}}]}}}}"#
            )
        };
        let table: Vec<(Answer, Failure)> = vec![
            (answer(200, &[], r#"{"value":[]}"#), Failure::Final),
            (
                answer(429, &[("retry-after", "0.5")], ""),
                Failure::Throttled {
                    retry_after: Some(Duration::from_millis(500)),
                },
            ),
            (
                answer(
                    429,
                    &[],
                    r#"{"error":{"message":"Try again in 3 seconds."}}"#,
                ),
                Failure::Throttled {
                    retry_after: Some(Duration::from_secs(3)),
                },
            ),
            (answer(503, &[], ""), Failure::ServerError),
            (
                answer(502, &[], "<html>Bad Gateway</html>"),
                Failure::ServerError,
            ),
            (
                answer(
                    500,
                    &[],
                    &pipe("Microsoft.Exchange.Data.Directory.DCOverloadedException"),
                ),
                Failure::ServerError,
            ),
            (
                answer(
                    500,
                    &[],
                    &pipe(
                        "Microsoft.Exchange.Configuration.Tasks.ManagementObjectNotFoundException",
                    ),
                ),
                Failure::Final,
            ),
            (
                answer(
                    500,
                    &[],
                    &pipe("Microsoft.Exchange.Management.Tasks.RecipientTaskException"),
                ),
                Failure::Final,
            ),
            (answer(401, &[], ""), Failure::Unauthorized { rbac: false }),
            (
                answer(
                    401,
                    &[],
                    r#"{"error":{"message":"User is not allowed to call Get-Mailbox"}}"#,
                ),
                Failure::Unauthorized { rbac: true },
            ),
            (
                answer(403, &[("x-ms-diagnostics", "2000008")], ""),
                Failure::Final,
            ),
            (
                answer(
                    400,
                    &[],
                    &pipe("System.Management.Automation.ParameterBindingException"),
                ),
                Failure::Final,
            ),
        ];
        for (answer, expected) in table {
            let status = answer.status;
            let failure = match classify(answer) {
                Ok(_) => Failure::Final,
                Err(problem) => problem.failure(),
            };
            assert_eq!(failure, expected, "HTTP {status}");
        }
    }
}
