//! Reads one secret: `GET <vault>/secrets/<name>[/<version>]?api-version=…` with a bearer
//! token for the vault cloud's resource. Retries 429 and 5xx (a read is safe to repeat)
//! per [`RetryPolicy`], refreshes the token once after a 401.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{self, HeaderValue};
use secrecy::SecretString;
use serde::Deserialize;
use tokio::time::Instant;
use url::Url;

use super::{KeyVaultError, KeyVaultSettings, Secret, SecretRef};
use crate::exchange::RetryPolicy;
use crate::exchange::retry::{Decision, Failure};
use crate::graph::client::{error_chain, parse_retry_after};
use crate::identity::{AccessToken, TokenSource};

/// Secret values are at most 25 KiB; the JSON around them adds little.
const MAX_BODY_BYTES: usize = 256 * 1024;

#[derive(Clone)]
pub struct KeyVaultClient {
    http: reqwest::Client,
    tokens: Arc<dyn TokenSource>,
    endpoint: Option<Url>,
    api_version: String,
    timeout: Duration,
    retry: RetryPolicy,
}

impl std::fmt::Debug for KeyVaultClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyVaultClient")
            .field("endpoint", &self.endpoint.as_ref().map(Url::as_str))
            .field("api_version", &self.api_version)
            .finish_non_exhaustive()
    }
}

/// The fields of a secret bundle this client reads.
#[derive(Deserialize)]
struct Bundle {
    value: Option<String>,
    id: Option<String>,
    #[serde(rename = "contentType")]
    content_type: Option<String>,
}

impl KeyVaultClient {
    pub fn new(
        settings: &KeyVaultSettings,
        tokens: Arc<dyn TokenSource>,
    ) -> Result<Self, KeyVaultError> {
        let endpoint = settings.endpoint.as_ref().map(|url| url.as_url().clone());
        if settings.api_version.trim().is_empty() {
            return Err(KeyVaultError::Configuration {
                key: "api_version",
                message: format!(
                    "must not be empty (the current one is {})",
                    super::API_VERSION
                ),
            });
        }
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("runbook-worker/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| KeyVaultError::Configuration {
                key: "endpoint",
                message: format!("cannot build the HTTP client: {e}"),
            })?;
        Ok(Self {
            http,
            tokens,
            endpoint,
            api_version: settings.api_version.clone(),
            timeout: settings.timeout.get(),
            retry: RetryPolicy {
                max_attempts: settings.max_retries.saturating_add(1),
                base_delay: Duration::from_millis(500),
                max_delay: Duration::from_secs(10).min(settings.timeout.get()),
                jitter: 0.25,
            },
        })
    }

    fn url(&self, secret: &SecretRef) -> Result<Url, KeyVaultError> {
        let base = match &self.endpoint {
            Some(endpoint) => endpoint.as_str().trim_end_matches('/').to_string(),
            None => format!("https://{}", secret.host),
        };
        let mut path = format!("{base}/secrets/{}", secret.name);
        if let Some(version) = &secret.version {
            path.push('/');
            path.push_str(version);
        }
        let mut url = Url::parse(&path).map_err(|e| KeyVaultError::Protocol {
            secret: secret.to_string(),
            message: format!("cannot build the request URL: {e}"),
        })?;
        url.query_pairs_mut()
            .append_pair("api-version", &self.api_version);
        Ok(url)
    }

    /// Reads `secret` (the latest version unless it names one).
    pub async fn get_secret(&self, secret: &SecretRef) -> Result<Secret, KeyVaultError> {
        let name = secret.to_string();
        let resource = secret.resource();
        let url = self.url(secret)?;
        let deadline = Instant::now() + self.timeout;
        let token_error = |source| KeyVaultError::Token {
            secret: name.clone(),
            resource: resource.to_string(),
            source: Box::new(source),
        };
        let mut token = self.tokens.token(resource).await.map_err(token_error)?;
        let mut refreshed = false;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let attempt_result = self.attempt(&url, &token, deadline).await;
            let (failure, cause, retry_after) = match attempt_result {
                Ok(Reply::Ok(body)) => return parse_bundle(&name, &body),
                Ok(Reply::Error {
                    status,
                    code,
                    message,
                    request_id,
                    retry_after,
                }) => match status {
                    401 => (
                        Failure::Unauthorized { rbac: false },
                        (status, code, message, request_id),
                        retry_after,
                    ),
                    429 => (
                        Failure::Throttled { retry_after },
                        (status, code, message, request_id),
                        retry_after,
                    ),
                    500..=599 => (
                        Failure::ServerError,
                        (status, code, message, request_id),
                        retry_after,
                    ),
                    _ => (
                        Failure::Final,
                        (status, code, message, request_id),
                        retry_after,
                    ),
                },
                Err(Broken::NotSent(e)) => (Failure::NotSent, (0, String::new(), e, None), None),
                Err(Broken::Lost(e)) => (Failure::Lost, (0, String::new(), e, None), None),
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            match self.retry.decide(
                attempt,
                &failure,
                true,
                refreshed,
                remaining,
                rand::random::<f64>(),
            ) {
                Decision::Retry { after } => {
                    tracing::warn!(secret = %name, attempt, status = cause.0, delay_ms = after.as_millis() as u64, "retrying Key Vault read");
                    tokio::time::sleep(after).await;
                }
                Decision::RefreshToken => {
                    refreshed = true;
                    token = self
                        .tokens
                        .refresh(resource, None)
                        .await
                        .map_err(token_error)?;
                }
                Decision::OutcomeUnknown | Decision::Stop => {
                    return Err(self.final_error(
                        &name,
                        resource,
                        &token,
                        cause,
                        attempt,
                        retry_after,
                    ));
                }
            }
        }
    }

    fn final_error(
        &self,
        secret: &str,
        resource: &str,
        token: &AccessToken,
        (status, code, message, request_id): (u16, String, String, Option<String>),
        attempts: u32,
        retry_after: Option<Duration>,
    ) -> KeyVaultError {
        let secret = secret.to_string();
        match status {
            401 => KeyVaultError::Unauthorized {
                secret,
                resource: resource.to_string(),
                code,
                message,
                request_id,
            },
            403 => KeyVaultError::Forbidden {
                secret,
                code,
                message,
                principal: token.claims().and_then(|c| c.oid),
                request_id,
            },
            404 => KeyVaultError::NotFound {
                secret,
                code,
                request_id,
            },
            0 | 429 | 500..=599 => KeyVaultError::Unavailable {
                secret,
                cause: if status == 0 {
                    message
                } else {
                    format!("HTTP {status} {code}")
                },
                attempts,
                retry_after,
            },
            _ => KeyVaultError::Rejected {
                secret,
                status,
                code,
                message,
                request_id,
            },
        }
    }

    async fn attempt(
        &self,
        url: &Url,
        token: &AccessToken,
        deadline: Instant,
    ) -> Result<Reply, Broken> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(Broken::Lost("no answer in time".to_string()));
        }
        let mut authorization = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
            .map_err(|_| Broken::NotSent("the token is not a valid header value".to_string()))?;
        authorization.set_sensitive(true);
        let mut response = self
            .http
            .get(url.clone())
            .header(header::AUTHORIZATION, authorization)
            .header(header::ACCEPT, "application/json")
            .timeout(remaining)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    Broken::NotSent(error_chain(&e))
                } else {
                    Broken::Lost(error_chain(&e))
                }
            })?;
        let status = response.status();
        let header_text = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let request_id = header_text("x-ms-request-id");
        let retry_after = header_text("retry-after")
            .as_deref()
            .and_then(parse_retry_after);
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| Broken::Lost(error_chain(&e)))?
        {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(Broken::Lost(format!(
                    "the answer exceeds {MAX_BODY_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        if status == StatusCode::OK {
            return Ok(Reply::Ok(body));
        }
        let error: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let text = |pointer: &str| {
            error
                .pointer(pointer)
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        let code = text("/error/innererror/code")
            .or_else(|| text("/error/code"))
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_string());
        let message = text("/error/message").unwrap_or_else(|| format!("HTTP {}", status.as_u16()));
        Ok(Reply::Error {
            status: status.as_u16(),
            code,
            message,
            request_id,
            retry_after,
        })
    }
}

enum Reply {
    Ok(Vec<u8>),
    Error {
        status: u16,
        code: String,
        message: String,
        request_id: Option<String>,
        retry_after: Option<Duration>,
    },
}

enum Broken {
    NotSent(String),
    Lost(String),
}

fn parse_bundle(secret: &str, body: &[u8]) -> Result<Secret, KeyVaultError> {
    // The serde error could quote the body, and the body holds the value: say only where.
    let bundle: Bundle = serde_json::from_slice(body).map_err(|e| KeyVaultError::Protocol {
        secret: secret.to_string(),
        message: format!(
            "the answer is not a secret bundle (line {}, column {})",
            e.line(),
            e.column()
        ),
    })?;
    let value = bundle.value.ok_or_else(|| KeyVaultError::Protocol {
        secret: secret.to_string(),
        message: "the answer has no value".to_string(),
    })?;
    Ok(Secret::new(
        SecretString::from(value),
        bundle.id.unwrap_or_else(|| secret.to_string()),
        bundle.content_type,
    ))
}
