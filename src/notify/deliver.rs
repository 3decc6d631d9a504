//! Sending one message to one target, with retries: the HTTP requests (webhook, Teams),
//! the call to the [`MailSender`], and the pure rules for what an answer means.
//!
//! Standard Webhooks sender semantics apply to webhook and Teams targets alike: any 2xx is
//! delivered; 410 Gone means the endpoint is disabled (no retry, and the notifier stops
//! sending to it); 408, 425, 429 and 5xx are retried, honouring `Retry-After` (clamped to
//! `notify.max_retry_delay`), else after an exponential backoff; redirects are not followed
//! and count as failures like any other 4xx. Errors name the target, never its URL.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use url::Url;

use super::NotifyError;
use super::event::{JobNotice, NotifyEvent};
use super::mail::{MailSender, parse_graph_error};
use super::payload::Message;
use super::settings::{Endpoint, NotifySettings, SecretUrl, Target, TargetKind, resolve_targets};
use crate::clock::SharedClock;
use crate::history::JobStatus;

/// How much of an error answer is read.
const MAX_ERROR_BODY: usize = 4 * 1024;

/// What became of one message for one target; the wiring records it on the job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum DeliveryOutcome {
    /// The receiver answered 2xx (Graph: 202 accepted for delivery).
    Delivered { status: u16 },
    /// The receiver answered 410 Gone: it is disabled, nothing more is sent to it until
    /// the worker restarts.
    Gone { status: u16 },
    /// Not delivered after the last attempt, or refused for good.
    Failed {
        status: Option<u16>,
        error: String,
        hint: Option<String>,
    },
    /// Held back by `notify.min_interval`; counted in the runbook's next message.
    Suppressed,
    /// The notifier's queue was full (or it had stopped): never sent.
    Dropped,
    /// Not sent: the target answered 410 Gone earlier.
    Disabled,
    /// Still queued or being sent when shutdown's `notify.drain_timeout` ran out.
    Abandoned,
}

impl DeliveryOutcome {
    /// The `outcome` label of `runbook_worker_notifications_total`.
    pub fn as_str(&self) -> &'static str {
        match self {
            DeliveryOutcome::Delivered { .. } => "delivered",
            DeliveryOutcome::Gone { .. } => "gone",
            DeliveryOutcome::Failed { .. } => "failed",
            DeliveryOutcome::Suppressed => "suppressed",
            DeliveryOutcome::Dropped => "dropped",
            DeliveryOutcome::Disabled => "disabled",
            DeliveryOutcome::Abandoned => "abandoned",
        }
    }
}

/// One target's outcome for one notice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeliveryReport {
    pub runbook: String,
    pub job_id: Option<String>,
    pub target: String,
    pub kind: TargetKind,
    pub event: NotifyEvent,
    /// The `webhook-id`: the same on every attempt, so receivers de-duplicate on it.
    pub message_id: String,
    pub attempts: u32,
    #[serde(flatten)]
    pub outcome: DeliveryOutcome,
}

impl DeliveryReport {
    /// One line for the job's `notifications` stream (no URL, no secret).
    pub fn line(&self) -> String {
        let what = match &self.outcome {
            DeliveryOutcome::Delivered { status } => format!("delivered ({status})"),
            DeliveryOutcome::Gone { status } => {
                format!("endpoint disabled ({status} Gone); not sending to it again")
            }
            DeliveryOutcome::Failed { error, hint, .. } => match hint {
                Some(hint) => format!("failed: {error} ({hint})"),
                None => format!("failed: {error}"),
            },
            DeliveryOutcome::Suppressed => {
                "suppressed by notify.min_interval (counted in the next message)".to_string()
            }
            DeliveryOutcome::Dropped => "dropped: the notification queue was full".to_string(),
            DeliveryOutcome::Disabled => {
                "not sent: the endpoint answered 410 Gone earlier".to_string()
            }
            DeliveryOutcome::Abandoned => "not sent: the worker stopped first".to_string(),
        };
        let attempts = if self.attempts > 1 {
            format!(" after {} attempts", self.attempts)
        } else {
            String::new()
        };
        format!(
            "{} {} ({}): {what}{attempts}",
            self.event, self.target, self.kind
        )
    }
}

/// What one attempt's answer means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Delivered {
        status: u16,
    },
    Gone {
        status: u16,
    },
    Retry {
        status: Option<u16>,
        after: Option<Duration>,
        error: String,
        hint: Option<String>,
    },
    Fail {
        status: Option<u16>,
        error: String,
        hint: Option<String>,
    },
}

/// The verdict on an HTTP answer (pure). `detail` is the parsed error body.
pub(crate) fn classify(
    kind: TargetKind,
    status: u16,
    retry_after: Option<Duration>,
    detail: &str,
) -> Verdict {
    let error = format!("{kind} endpoint answered {status}: {detail}");
    match status {
        200..=299 => Verdict::Delivered { status },
        410 => Verdict::Gone { status },
        408 | 425 | 429 | 500..=599 => Verdict::Retry {
            status: Some(status),
            after: retry_after,
            error,
            hint: None,
        },
        300..=399 => Verdict::Fail {
            status: Some(status),
            error,
            hint: Some("notifications do not follow redirects: set the final URL".to_string()),
        },
        _ => Verdict::Fail {
            status: Some(status),
            error,
            hint: hint_for(kind, status),
        },
    }
}

fn hint_for(kind: TargetKind, status: u16) -> Option<String> {
    let hint = match (kind, status) {
        (TargetKind::Teams, 401 | 403) => {
            "the workflow refused the URL's signature: copy the URL again from the Workflows app"
        }
        (TargetKind::Teams, 404) => {
            "the workflow no longer exists (or its URL moved): create it again and update the URL"
        }
        (TargetKind::Teams, 400) => "the workflow refused the card: check the flow's run history",
        (_, 401 | 403) => "the receiver refused the request: check the target's secret",
        (_, 404) => "nothing answers at that path: check the target's URL",
        (_, 413) => "the message was too large for the receiver",
        _ => return None,
    };
    Some(hint.to_string())
}

/// `Retry-After` as seconds or an HTTP date, relative to `now`.
pub(crate) fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (at.with_timezone(&Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

/// The answer's `Retry-After`, if it has a readable one.
pub(crate) fn retry_after(response: &reqwest::Response, now: DateTime<Utc>) -> Option<Duration> {
    response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, now))
}

/// The wait before attempt `attempt + 1` (attempts count from 1).
pub(crate) fn backoff(
    attempt: u32,
    retry_after: Option<Duration>,
    first: Duration,
    max: Duration,
) -> Duration {
    match retry_after {
        Some(after) => after.min(max),
        None => first
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
            .min(max),
    }
}

/// A reqwest error in words, without the URL (reqwest's own message includes it).
pub(crate) fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "no answer within notify.timeout".to_string();
    }
    let what = if e.is_connect() {
        "cannot connect"
    } else if e.is_redirect() {
        "redirect refused"
    } else {
        "request failed"
    };
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        causes.push(cause.to_string());
        source = cause.source();
        if causes.len() == 3 {
            break;
        }
    }
    if causes.is_empty() {
        what.to_string()
    } else {
        format!("{what}: {}", causes.join(": "))
    }
}

/// The body of an error answer, at most [`MAX_ERROR_BODY`] bytes of it.
pub(crate) async fn read_capped(mut response: reqwest::Response) -> String {
    let mut bytes = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = MAX_ERROR_BODY - bytes.len();
        bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if bytes.len() >= MAX_ERROR_BODY {
            break;
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Removes the URL's path and query from text a receiver sent back: a receiver that echoes
/// the request would otherwise put the key into errors.
fn redact(text: &str, url: &Url) -> String {
    let mut out = text.to_string();
    if let Some(query) = url.query().filter(|q| q.len() > 3) {
        out = out.replace(query, "[redacted]");
    }
    let path = url.path();
    if path.len() > 3 {
        out = out.replace(path, "[redacted]");
    }
    out
}

/// Sends messages to targets, with retries; shared by the [`super::Notifier`] task and
/// `runbook-worker notify test`.
pub struct Dispatcher {
    targets: Vec<Target>,
    http: reqwest::Client,
    mail: Option<Arc<dyn MailSender>>,
    public_url: Option<Url>,
    clock: SharedClock,
    max_attempts: u32,
    retry_delay: Duration,
    max_retry_delay: Duration,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("targets", &self.targets)
            .field("public_url", &self.public_url)
            .finish_non_exhaustive()
    }
}

impl Dispatcher {
    /// Resolves the targets (reads `url_file`/`secret_file`) and builds the HTTP client.
    pub fn new(
        settings: &NotifySettings,
        mail: Option<Arc<dyn MailSender>>,
        public_url: Option<Url>,
        clock: SharedClock,
    ) -> Result<Self, NotifyError> {
        let targets = resolve_targets(settings)?;
        let http = http_client(settings.timeout.get())?;
        Ok(Self {
            targets,
            http,
            mail,
            public_url,
            clock,
            max_attempts: settings.max_attempts.max(1),
            retry_delay: settings.retry_delay.get(),
            max_retry_delay: settings.max_retry_delay.get(),
        })
    }

    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    pub fn target(&self, name: &str) -> Option<&Target> {
        self.targets.iter().find(|t| t.name == name)
    }

    pub(crate) fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// `<public_url>/jobs/<id>`.
    pub fn job_url(&self, job_id: Option<&str>) -> Option<Url> {
        let mut url = self.public_url.clone()?;
        let id = job_id?;
        url.path_segments_mut()
            .ok()?
            .pop_if_empty()
            .extend(["jobs", id]);
        Some(url)
    }

    /// Sends a test message to the target `name` (one message, with retries).
    pub async fn send_test(&self, name: &str) -> Result<DeliveryReport, NotifyError> {
        let target = self
            .target(name)
            .ok_or_else(|| NotifyError::UnknownTarget {
                name: name.to_string(),
                known: self.targets.iter().map(|t| t.name.clone()).collect(),
            })?;
        let now = self.clock.now();
        let mut notice = JobNotice::new("notify-test", None, JobStatus::Failed);
        notice.started_at = Some(now);
        notice.ended_at = Some(now);
        notice.error = Some(
            "This is a test message from `runbook-worker notify test`; no job failed.".to_string(),
        );
        let message = Message {
            notice: &notice,
            event: NotifyEvent::Test,
            suppressed: 0,
            job_url: self.public_url.clone(),
        };
        Ok(self.deliver(target, &message, &new_message_id()).await)
    }

    /// Sends `message` to `target`, retrying per the rules above, and says what happened.
    pub async fn deliver(
        &self,
        target: &Target,
        message: &Message<'_>,
        message_id: &str,
    ) -> DeliveryReport {
        let mut attempts = 0;
        let outcome = loop {
            attempts += 1;
            let verdict = self.attempt(target, message, message_id).await;
            match verdict {
                Verdict::Delivered { status } => break DeliveryOutcome::Delivered { status },
                Verdict::Gone { status } => break DeliveryOutcome::Gone { status },
                Verdict::Fail {
                    status,
                    error,
                    hint,
                } => {
                    break DeliveryOutcome::Failed {
                        status,
                        error,
                        hint,
                    };
                }
                Verdict::Retry {
                    status,
                    after,
                    error,
                    hint,
                } => {
                    if attempts >= self.max_attempts {
                        break DeliveryOutcome::Failed {
                            status,
                            error,
                            hint,
                        };
                    }
                    let wait = backoff(attempts, after, self.retry_delay, self.max_retry_delay);
                    tracing::debug!(
                        target_name = %target.name,
                        attempt = attempts,
                        wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                        %error,
                        "notification not delivered yet; retrying"
                    );
                    let until = self.clock.now()
                        + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX);
                    self.clock.sleep_until(until).await;
                }
            }
        };
        DeliveryReport {
            runbook: message.notice.runbook.clone(),
            job_id: message.notice.job_id.clone(),
            target: target.name.clone(),
            kind: target.kind,
            event: message.event,
            message_id: message_id.to_string(),
            attempts,
            outcome,
        }
    }

    async fn attempt(&self, target: &Target, message: &Message<'_>, id: &str) -> Verdict {
        match &target.endpoint {
            Endpoint::Webhook { url, secret } => {
                let body = match serde_json::to_vec(&message.webhook_body()) {
                    Ok(body) => body,
                    Err(e) => return fail(format!("cannot encode the message: {e}")),
                };
                let timestamp = self.clock.now().timestamp();
                let mut request = self
                    .http
                    .post(url.expose().clone())
                    .header("webhook-id", id)
                    .header("webhook-timestamp", timestamp.to_string());
                if let Some(key) = secret {
                    request = request.header("webhook-signature", key.sign(id, timestamp, &body));
                }
                self.post(target.kind, url, request, body).await
            }
            Endpoint::Teams { url } => {
                let body = match serde_json::to_vec(&message.teams_card()) {
                    Ok(body) => body,
                    Err(e) => return fail(format!("cannot encode the card: {e}")),
                };
                let request = self.http.post(url.expose().clone());
                self.post(target.kind, url, request, body).await
            }
            Endpoint::Email { from, to } => {
                let Some(mail) = &self.mail else {
                    return fail(
                        "email targets need the worker's identity, and none was given".to_string(),
                    );
                };
                match mail.send_mail(from, message.email(to)).await {
                    Ok(()) => Verdict::Delivered { status: 202 },
                    Err(e) => {
                        let status = match &e {
                            super::mail::MailError::Refused { status, .. } => Some(*status),
                            _ => None,
                        };
                        let hint = e.hint();
                        match e.retry() {
                            Some(after) => Verdict::Retry {
                                status,
                                after,
                                error: e.to_string(),
                                hint,
                            },
                            None => Verdict::Fail {
                                status,
                                error: e.to_string(),
                                hint,
                            },
                        }
                    }
                }
            }
        }
    }

    async fn post(
        &self,
        kind: TargetKind,
        url: &SecretUrl,
        request: reqwest::RequestBuilder,
        body: Vec<u8>,
    ) -> Verdict {
        let sent = request
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(e) => {
                return Verdict::Retry {
                    status: None,
                    after: None,
                    error: format!("{kind} endpoint at {}: {}", url.origin(), describe(&e)),
                    hint: None,
                };
            }
        };
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Verdict::Delivered { status };
        }
        let retry_after = retry_after(&response, self.clock.now());
        let text = read_capped(response).await;
        let (code, detail) = parse_graph_error(&text);
        let detail = match code {
            Some(code) => format!("{code}: {detail}"),
            None => detail,
        };
        classify(kind, status, retry_after, &redact(&detail, url.expose()))
    }
}

fn fail(error: String) -> Verdict {
    Verdict::Fail {
        status: None,
        error,
        hint: None,
    }
}

/// A new `webhook-id`: `msg_` and a random UUID.
pub(crate) fn new_message_id() -> String {
    format!("msg_{}", uuid::Uuid::new_v4().simple())
}

/// The client for webhook and Teams targets: bounded time per request, no redirects
/// (a redirect could carry the signed body elsewhere).
fn http_client(timeout: Duration) -> Result<reqwest::Client, NotifyError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("runbook-worker/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| NotifyError::Client(e.to_string()))
}

/// The client for Microsoft Graph: same bounds as the targets'.
pub fn graph_client(settings: &NotifySettings) -> Result<reqwest::Client, NotifyError> {
    http_client(settings.timeout.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified_per_standard_webhooks() {
        let k = TargetKind::Webhook;
        assert_eq!(
            classify(k, 202, None, ""),
            Verdict::Delivered { status: 202 }
        );
        assert_eq!(
            classify(k, 204, None, ""),
            Verdict::Delivered { status: 204 }
        );
        assert_eq!(classify(k, 410, None, ""), Verdict::Gone { status: 410 });
        for status in [408, 429, 500, 502, 503, 504] {
            assert!(
                matches!(classify(k, status, None, ""), Verdict::Retry { .. }),
                "{status}"
            );
        }
        for status in [301, 400, 401, 404] {
            assert!(
                matches!(classify(k, status, None, ""), Verdict::Fail { .. }),
                "{status}"
            );
        }
        let Verdict::Retry { after, .. } = classify(k, 429, Some(Duration::from_secs(7)), "")
        else {
            panic!("429 is retried");
        };
        assert_eq!(after, Some(Duration::from_secs(7)));
        let Verdict::Fail { hint, .. } = classify(TargetKind::Teams, 403, None, "") else {
            panic!("403 fails");
        };
        assert!(hint.unwrap().contains("Workflows"));
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_a_date_and_clamped() {
        let now = DateTime::parse_from_rfc2822("Sun, 06 Dec 2026 02:00:00 GMT")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(parse_retry_after("30", now), Some(Duration::from_secs(30)));
        assert_eq!(
            parse_retry_after("Sun, 06 Dec 2026 02:01:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(parse_retry_after("soon", now), None);
        let max = Duration::from_secs(300);
        let first = Duration::from_secs(2);
        assert_eq!(backoff(1, Some(Duration::from_secs(3600)), first, max), max);
        assert_eq!(backoff(1, None, first, max), Duration::from_secs(2));
        assert_eq!(backoff(3, None, first, max), Duration::from_secs(8));
        assert_eq!(backoff(30, None, first, max), max);
    }

    #[test]
    fn echoed_url_parts_are_redacted() {
        let url = Url::parse("https://h.example/workflows/abc123/invoke?sig=SECRETSIG").unwrap();
        let text = "bad request to /workflows/abc123/invoke?sig=SECRETSIG";
        let out = redact(text, &url);
        assert!(
            !out.contains("SECRETSIG") && !out.contains("abc123"),
            "{out}"
        );
    }
}
