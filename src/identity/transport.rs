//! The HTTP client given to the SDK credentials (`ClientOptions::transport`).
//!
//! It does three things the SDK cannot be told to do:
//! - **Routes** every request to the endpoint `source` resolved. For IMDS that is how
//!   `identity.imds_endpoint` works at all (the SDK hard-codes 169.254.169.254); it also
//!   makes the SDK's own reading of the process environment harmless when our decision
//!   differs from its (for example `source = "imds"` while App Service variables are set).
//! - **Bypasses proxies** (IMDS must never go through one) and connects with a short
//!   timeout, so that off Azure "no endpoint" is known in seconds.
//! - **Turns every failure into an [`EndpointFault`]** returned as a non-transport
//!   `azure_core` error. The SDK's retry policy retries only transport errors and certain
//!   statuses, and the IMDS credential forces its own policy whatever `client_options`
//!   say; answering failures this way means the SDK never retries, and the one retry loop
//!   (`fetch`) sees the status, `Retry-After` and error body intact.
//!
//! Knows nothing of caching or retries; never logs a request or response body.

use std::error::Error as _;
use std::time::Duration;

use async_trait::async_trait;
use azure_core::error::{Error as CoreError, ErrorKind};
use azure_core::http::headers::{HeaderName, Headers};
use azure_core::http::{AsyncRawResponse, Body, HttpClient, Method, Request, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

use super::EndpointFault;
use super::source::IMDS_TOKEN_PATH;

const IDENTITY_HEADER_NAME: &str = "x-identity-header";
/// Error bodies beyond this are not parsed (they are never that large; this bounds memory).
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Where the transport sends requests.
#[derive(Clone)]
pub(crate) enum Route {
    /// To `base` + the IMDS token path, without any App Service header.
    Imds { base: Url },
    /// To the App Service endpoint; adds `X-IDENTITY-HEADER` from the environment we were
    /// given when the SDK did not add it (it reads the process environment per request so
    /// that a rotated value is used; the fallback covers a process environment that differs
    /// from the one passed in, as in tests).
    AppService { endpoint: Url, header: SecretString },
    /// To the authority's scheme, host and port (the path is the SDK's). Downgrades to
    /// http only for the loopback authority `source` allowed.
    Authority { base: Url },
}

/// An `azure_core` HTTP client over reqwest that routes, bypasses proxies and reports
/// failures as [`EndpointFault`]s.
#[derive(Clone)]
pub(crate) struct EndpointTransport {
    client: reqwest::Client,
    route: Route,
}

impl std::fmt::Debug for EndpointTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointTransport").finish_non_exhaustive()
    }
}

/// The reqwest client every token request uses: no proxy (IMDS is link-local and must not
/// be proxied; the others are reached directly as the SDK would), no redirects, a short
/// connect timeout. Building it does no I/O.
pub(crate) fn http_client(connect_timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(connect_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

impl EndpointTransport {
    pub(crate) fn new(client: reqwest::Client, route: Route) -> Self {
        Self { client, route }
    }

    /// The request's URL after routing.
    fn route_url(&self, original: &Url) -> Url {
        match &self.route {
            Route::Imds { base } => {
                let mut url = base.clone();
                url.set_path(&format!(
                    "{}{IMDS_TOKEN_PATH}",
                    base.path().trim_end_matches('/')
                ));
                url.set_query(original.query());
                url
            }
            Route::AppService { endpoint, .. } => {
                let mut url = endpoint.clone();
                url.set_query(original.query());
                url
            }
            Route::Authority { base } => {
                let mut url = base.clone();
                url.set_path(original.path());
                url.set_query(original.query());
                url
            }
        }
    }

    fn route_headers(&self, headers: &mut Headers) {
        match &self.route {
            Route::Imds { .. } => {
                headers.remove(HeaderName::from_static(IDENTITY_HEADER_NAME));
            }
            Route::AppService { header, .. } => {
                let name = HeaderName::from_static(IDENTITY_HEADER_NAME);
                if headers.get_optional_str(&name).is_none() {
                    headers.insert(name, header.expose_secret().to_string());
                }
            }
            Route::Authority { .. } => {}
        }
    }

    async fn send(&self, request: &Request) -> Result<AsyncRawResponse, Failure> {
        let url = self.route_url(request.url());
        let endpoint = origin(&url);
        let mut headers = request.headers().clone();
        self.route_headers(&mut headers);

        let mut builder = self.client.request(reqwest_method(request.method()), url);
        for (name, value) in headers.iter() {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let builder = match request.body() {
            Body::Bytes(bytes) => builder.body(bytes.clone()),
            // Token requests have small in-memory bodies; a stream would be a change in the
            // SDK we want to hear about rather than half-support.
            Body::SeekableStream(_) => return Err(Failure::Unsupported),
        };

        let response = builder.send().await.map_err(|e| {
            let reason = innermost_message(&e);
            let endpoint = endpoint.clone();
            if e.is_connect() {
                EndpointFault::Unreachable { endpoint, reason }
            } else {
                EndpointFault::Broken { endpoint, reason }
            }
        })?;
        let status = response.status().as_u16();
        let mut response_headers = Headers::new();
        for (name, value) in response.headers() {
            if let Ok(value) = value.to_str() {
                response_headers.insert(name.as_str().to_string(), value.to_string());
            }
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let body = response.bytes().await.map_err(|e| EndpointFault::Broken {
            endpoint: endpoint.clone(),
            reason: innermost_message(&e),
        })?;

        if (200..300).contains(&status) {
            return Ok(AsyncRawResponse::from_bytes(
                StatusCode::from(status),
                response_headers,
                clamp_expires_in(body),
            ));
        }
        let parsed: ErrorBody = if body.len() <= MAX_ERROR_BODY {
            serde_json::from_slice(&body).unwrap_or_default()
        } else {
            ErrorBody::default()
        };
        Err(Failure::Fault(EndpointFault::Status {
            status,
            retry_after,
            error: parsed.error.filter(|e| !e.is_empty()),
            description: parsed.error_description.filter(|d| !d.is_empty()),
        }))
    }
}

/// The longest `expires_in` handed to the SDK (ten years): it adds the value to the current
/// time, which panics past year 9999, so a hostile or broken endpoint's `expires_in` of
/// 2^63 seconds must not reach it.
const MAX_EXPIRES_IN_SECS: i64 = 10 * 365 * 24 * 3600;

/// A token answer with an out-of-range `expires_in` (number or numeric string) brought
/// within ±[`MAX_EXPIRES_IN_SECS`]; any other body is passed on unchanged.
fn clamp_expires_in(body: bytes::Bytes) -> bytes::Bytes {
    let Ok(mut answer) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return body;
    };
    let Some(expires_in) = answer.get_mut("expires_in") else {
        return body;
    };
    let seconds = match &*expires_in {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    };
    match seconds {
        Some(s) if s.unsigned_abs() > MAX_EXPIRES_IN_SECS.unsigned_abs() => {
            *expires_in = serde_json::Value::from(s.clamp(0, MAX_EXPIRES_IN_SECS));
            serde_json::to_vec(&answer).map_or(body, bytes::Bytes::from)
        }
        _ => body,
    }
}

/// Why `send` did not return a response.
enum Failure {
    Fault(EndpointFault),
    /// A request this transport does not support (a bug, not an endpoint problem).
    Unsupported,
}

impl From<EndpointFault> for Failure {
    fn from(fault: EndpointFault) -> Self {
        Self::Fault(fault)
    }
}

#[async_trait]
impl HttpClient for EndpointTransport {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<AsyncRawResponse> {
        // `ErrorKind::Other` is deliberate: the SDK's retry policy retries only `Io` and
        // `Connection` errors, so this hands every failure straight back to our retry loop.
        self.send(request).await.map_err(|failure| match failure {
            Failure::Fault(fault) => CoreError::new(ErrorKind::Other, fault),
            Failure::Unsupported => CoreError::with_message(
                ErrorKind::Other,
                "the SDK sent a streamed request body, which token requests never use",
            ),
        })
    }
}

/// The endpoint's `error` / `error_description` (IMDS, App Service and Entra ID all use
/// these names).
#[derive(Default, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

/// `scheme://host:port`, for messages: the query may name an identity and is not needed.
pub(crate) fn origin(url: &Url) -> String {
    url.origin().ascii_serialization()
}

fn reqwest_method(method: Method) -> reqwest::Method {
    // Every `Method` name is a valid HTTP token, so the fallback is never taken.
    reqwest::Method::from_bytes(method.as_str().as_bytes()).unwrap_or(reqwest::Method::GET)
}

/// The deepest cause's message ("Connection refused (os error 111)"), which is what an
/// operator needs; reqwest's own top-level text is generic.
fn innermost_message(error: &reqwest::Error) -> String {
    let mut message = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        message = e.to_string();
        cause = e.source();
    }
    if error.is_timeout() {
        format!("timed out ({message})")
    } else {
        message
    }
}

/// Finds the [`EndpointFault`] the transport put into an SDK error, however deeply the SDK
/// wrapped it.
pub(crate) fn find_fault(error: &CoreError) -> Option<&EndpointFault> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(fault) = e.downcast_ref::<EndpointFault>() {
            return Some(fault);
        }
        current = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transport(route: Route) -> EndpointTransport {
        EndpointTransport::new(http_client(Duration::from_secs(1)).unwrap(), route)
    }

    #[test]
    fn imds_requests_go_to_the_configured_endpoint_with_their_query() {
        let t = transport(Route::Imds {
            base: Url::parse("http://127.0.0.1:8080/sidecar/").unwrap(),
        });
        let original = Url::parse(
            "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2019-08-01&resource=https%3A%2F%2Foutlook.office365.com",
        )
        .unwrap();
        assert_eq!(
            t.route_url(&original).as_str(),
            "http://127.0.0.1:8080/sidecar/metadata/identity/oauth2/token?api-version=2019-08-01&resource=https%3A%2F%2Foutlook.office365.com"
        );
    }

    #[test]
    fn authority_requests_keep_their_path_and_may_go_to_a_loopback_http_host() {
        let t = transport(Route::Authority {
            base: Url::parse("http://127.0.0.1:9000").unwrap(),
        });
        let original = Url::parse("https://127.0.0.1:9000/tenant/oauth2/v2.0/token").unwrap();
        assert_eq!(
            t.route_url(&original).as_str(),
            "http://127.0.0.1:9000/tenant/oauth2/v2.0/token"
        );
    }

    #[test]
    fn the_app_service_header_is_added_only_when_missing_and_stripped_for_imds() {
        let app = transport(Route::AppService {
            endpoint: Url::parse("http://127.0.0.1:1/msi/token").unwrap(),
            header: SecretString::from("from-env"),
        });
        let name = HeaderName::from_static(IDENTITY_HEADER_NAME);
        let mut headers = Headers::new();
        app.route_headers(&mut headers);
        assert_eq!(headers.get_optional_str(&name), Some("from-env"));
        let mut headers = Headers::new();
        headers.insert(name.clone(), "rotated");
        app.route_headers(&mut headers);
        assert_eq!(headers.get_optional_str(&name), Some("rotated"));

        let imds = transport(Route::Imds {
            base: Url::parse("http://127.0.0.1:1").unwrap(),
        });
        imds.route_headers(&mut headers);
        assert_eq!(headers.get_optional_str(&name), None);
    }

    #[test]
    fn a_fault_is_found_however_deeply_the_sdk_wraps_it() {
        let fault = EndpointFault::Status {
            status: 410,
            retry_after: None,
            error: None,
            description: None,
        };
        let wrapped = CoreError::with_error(
            ErrorKind::Credential,
            CoreError::new(ErrorKind::Other, fault.clone())
                .with_context("non-transport error occurred which will not be retried"),
            "ManagedIdentityCredential authentication failed",
        );
        assert_eq!(find_fault(&wrapped), Some(&fault));
        assert_eq!(
            find_fault(&CoreError::with_message(ErrorKind::Other, "x")),
            None
        );
    }
}
