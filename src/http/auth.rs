//! Who may read and who may change things.
//!
//! Changes (every POST) need `Authorization: Bearer <http.api_token>`; with no token
//! configured they are off. Only a bearer header counts for changes: browsers attach Basic
//! credentials and cookies to cross-site form posts on their own, a bearer header only when a
//! script of this origin sets it, so requiring it also rules out cross-site request forgery.
//! Reads are open when the worker listens on loopback (for requests that name a loopback host,
//! so a rebound DNS name cannot reach them from a web page); elsewhere they need the token too,
//! as a bearer header or as the password of HTTP Basic (any user name), so that a browser can
//! open the dashboard. Tokens are compared as SHA-256 digests in constant time; the token itself
//! is not kept and never logged.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{AppState, HttpError, HttpSettings, api};

/// Shortest token [`ApiAuth::from_settings`] accepts: a guessable token on a network
/// listener would be worse than none.
pub const MIN_TOKEN_LEN: usize = 16;

/// The access rules of one listener.
#[derive(Clone)]
pub struct ApiAuth {
    /// SHA-256 of the API token; `None` turns every change route off.
    token_digest: Option<[u8; 32]>,
    /// Reads are open without a token (the listener is on loopback).
    open_reads: bool,
}

impl std::fmt::Debug for ApiAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiAuth")
            .field(
                "token",
                &if self.token_digest.is_some() {
                    "configured"
                } else {
                    "none"
                },
            )
            .field("open_reads", &self.open_reads)
            .finish()
    }
}

/// What a request wants to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    Read,
    Change,
}

/// The decision on one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Allow,
    /// 401: no credentials; `basic` also offers the browser's login prompt.
    Unauthorized {
        message: &'static str,
        basic: bool,
    },
    /// 403: credentials refused or the route is off.
    Forbidden(&'static str),
}

const CHANGES_OFF: &str = "routes that change something are off: set http.api_token_file (or http.api_token, or the RUNBOOK_WORKER__HTTP__API_TOKEN variable) to turn them on";
const NEED_BEARER: &str =
    "this route needs an `Authorization: Bearer <token>` header with the worker's http.api_token";
const BEARER_ONLY: &str =
    "this route takes the API token as a bearer token only (`Authorization: Bearer <token>`)";
const WRONG_TOKEN: &str = "the API token is wrong";
const READS_OFF: &str = "reads are open without a token only when the worker listens on loopback: set http.api_token_file (or http.api_token) and send it, or listen on 127.0.0.1";
const NEED_TOKEN: &str = "this worker does not listen on loopback, so reads need the API token (`Authorization: Bearer <token>`, or as the password of HTTP Basic)";
const FOREIGN_HOST: &str = "reads without a token are served only to requests for a loopback host (localhost, 127.0.0.1, [::1]); send the API token or use a loopback address";

impl ApiAuth {
    /// Rules for a listener: `token` is the API token (none turns the change routes off),
    /// `listen_is_loopback` opens reads without a token.
    pub fn new(token: Option<SecretString>, listen_is_loopback: bool) -> Self {
        Self {
            token_digest: token.map(|t| digest(t.expose_secret().as_bytes())),
            open_reads: listen_is_loopback,
        }
    }

    /// Rules from `[http]` for a listener bound to `listen`: the token comes from
    /// `api_token_file` (trailing whitespace trimmed) or `api_token`, never both.
    pub fn from_settings(settings: &HttpSettings, listen: SocketAddr) -> Result<Self, HttpError> {
        let token = match (&settings.api_token, &settings.api_token_file) {
            (Some(_), Some(_)) => return Err(HttpError::TwoTokens),
            (Some(token), None) => Some(check_token("http.api_token", token.expose_secret())?),
            (None, Some(path)) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| HttpError::TokenFile {
                        path: path.clone(),
                        source,
                    })?;
                Some(check_token("http.api_token_file", text.trim())?)
            }
            (None, None) => None,
        };
        Ok(Self::new(token, listen.ip().is_loopback()))
    }

    /// Whether a token is configured (the change routes are on).
    pub fn has_token(&self) -> bool {
        self.token_digest.is_some()
    }

    /// Whether reads are open without a token.
    pub fn reads_are_open(&self) -> bool {
        self.open_reads
    }

    /// The rules, without I/O: `authorization` is the request's header, `host` the host it
    /// names (Host header or URI authority).
    pub(crate) fn decide(
        &self,
        access: Access,
        authorization: Option<&[u8]>,
        host: Option<&str>,
    ) -> Verdict {
        match access {
            Access::Change => {
                let Some(expected) = &self.token_digest else {
                    return Verdict::Forbidden(CHANGES_OFF);
                };
                match authorization.map(parse_credentials) {
                    None => Verdict::Unauthorized {
                        message: NEED_BEARER,
                        basic: false,
                    },
                    Some(Credentials::Bearer(given)) if matches(expected, given) => Verdict::Allow,
                    Some(Credentials::Bearer(_)) => Verdict::Forbidden(WRONG_TOKEN),
                    Some(_) => Verdict::Forbidden(BEARER_ONLY),
                }
            }
            Access::Read => {
                if self.open_reads && host.is_none_or(is_loopback_host) {
                    return Verdict::Allow;
                }
                let Some(expected) = &self.token_digest else {
                    return Verdict::Forbidden(if self.open_reads {
                        FOREIGN_HOST
                    } else {
                        READS_OFF
                    });
                };
                match authorization.map(parse_credentials) {
                    None if self.open_reads => Verdict::Forbidden(FOREIGN_HOST),
                    None => Verdict::Unauthorized {
                        message: NEED_TOKEN,
                        basic: true,
                    },
                    Some(Credentials::Bearer(given)) if matches(expected, given) => Verdict::Allow,
                    Some(Credentials::Basic(given)) if matches(expected, &given) => Verdict::Allow,
                    Some(_) => Verdict::Forbidden(WRONG_TOKEN),
                }
            }
        }
    }
}

fn check_token(key: &'static str, token: &str) -> Result<SecretString, HttpError> {
    let len = token.chars().count();
    if len == 0 {
        return Err(HttpError::EmptyToken { key });
    }
    if len < MIN_TOKEN_LEN {
        return Err(HttpError::ShortToken { key, len });
    }
    Ok(SecretString::from(token.to_string()))
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Compares digests so that neither the time taken nor an early exit tells how much of a
/// guess was right (and hashing first hides the token's length too).
fn matches(expected: &[u8; 32], given: &[u8]) -> bool {
    bool::from(expected.ct_eq(&digest(given)))
}

enum Credentials<'a> {
    Bearer(&'a [u8]),
    /// The password of HTTP Basic (the user name is ignored).
    Basic(Vec<u8>),
    Other,
}

fn parse_credentials(header: &[u8]) -> Credentials<'_> {
    let text = header.trim_ascii();
    let (scheme, rest) = match text.iter().position(|b| *b == b' ') {
        Some(i) => (&text[..i], text[i + 1..].trim_ascii()),
        None => (text, &[][..]),
    };
    if scheme.eq_ignore_ascii_case(b"bearer") && !rest.is_empty() {
        return Credentials::Bearer(rest);
    }
    if scheme.eq_ignore_ascii_case(b"basic")
        && let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(rest)
        && let Some(colon) = decoded.iter().position(|b| *b == b':')
    {
        return Credentials::Basic(decoded[colon + 1..].to_vec());
    }
    Credentials::Other
}

/// `localhost`, a `*.localhost` name or a loopback IP, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        // `[::1]:8080`
        rest.split(']').next().unwrap_or(rest)
    } else if host.matches(':').count() == 1 {
        host.split(':').next().unwrap_or(host)
    } else {
        host
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if name == "localhost" || name.ends_with(".localhost") {
        return true;
    }
    name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn request_host(headers: &HeaderMap, request: &Request) -> Option<String> {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| request.uri().authority().map(|a| a.as_str().to_string()))
}

async fn enforce(state: &AppState, access: Access, request: Request, next: Next) -> Response {
    let host = request_host(request.headers(), &request);
    let verdict = state.auth.decide(
        access,
        request
            .headers()
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes),
        host.as_deref(),
    );
    match verdict {
        Verdict::Allow => next.run(request).await,
        Verdict::Unauthorized { message, basic } => {
            tracing::info!(method = %request.method(), path = request.uri().path(), "refused a request without credentials");
            let mut response = api::error_response(StatusCode::UNAUTHORIZED, message);
            let headers = response.headers_mut();
            headers.append(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"runbook-worker\""),
            );
            if basic {
                headers.append(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"runbook-worker\", charset=\"UTF-8\""),
                );
            }
            response
        }
        Verdict::Forbidden(message) => {
            tracing::info!(method = %request.method(), path = request.uri().path(), reason = message, "refused a request");
            api::error_response(StatusCode::FORBIDDEN, message).into_response()
        }
    }
}

/// Middleware of the read routes.
pub(crate) async fn require_read(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    enforce(&state, Access::Read, request, next).await
}

/// Middleware of the change routes.
pub(crate) async fn require_write(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    enforce(&state, Access::Change, request, next).await
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef-right";

    fn basic(user: &str, password: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
    }

    #[test]
    fn the_access_matrix_holds() {
        let with_token_loopback = ApiAuth::new(Some(TOKEN.into()), true);
        let with_token_network = ApiAuth::new(Some(TOKEN.into()), false);
        let without_token_loopback = ApiAuth::new(None, true);
        let without_token_network = ApiAuth::new(None, false);
        let right = format!("Bearer {TOKEN}");
        let right_lower = format!("bearer   {TOKEN} ");
        let wrong = "Bearer 0123456789abcdef-wrong".to_string();
        let right_basic = basic("anyone", TOKEN);
        let wrong_basic = basic("anyone", "nope");
        let local = Some("127.0.0.1:8080");
        let foreign = Some("evil.example:8080");

        use Access::{Change, Read};
        let unauthorized = |basic| Verdict::Unauthorized {
            message: if basic { NEED_TOKEN } else { NEED_BEARER },
            basic,
        };
        // (rules, access, Authorization header, host, decision)
        type Case<'a> = (
            &'a ApiAuth,
            Access,
            Option<&'a String>,
            Option<&'a str>,
            Verdict,
        );
        let cases: Vec<Case> = vec![
            // Changes.
            (
                &without_token_loopback,
                Change,
                Some(&right),
                local,
                Verdict::Forbidden(CHANGES_OFF),
            ),
            (
                &without_token_network,
                Change,
                None,
                local,
                Verdict::Forbidden(CHANGES_OFF),
            ),
            (
                &with_token_loopback,
                Change,
                None,
                local,
                unauthorized(false),
            ),
            (
                &with_token_loopback,
                Change,
                Some(&wrong),
                local,
                Verdict::Forbidden(WRONG_TOKEN),
            ),
            (
                &with_token_loopback,
                Change,
                Some(&right),
                local,
                Verdict::Allow,
            ),
            (
                &with_token_loopback,
                Change,
                Some(&right_lower),
                local,
                Verdict::Allow,
            ),
            (
                &with_token_network,
                Change,
                Some(&right),
                foreign,
                Verdict::Allow,
            ),
            (
                &with_token_network,
                Change,
                Some(&right_basic),
                local,
                Verdict::Forbidden(BEARER_ONLY),
            ),
            // Reads on loopback.
            (&without_token_loopback, Read, None, local, Verdict::Allow),
            (
                &without_token_loopback,
                Read,
                None,
                Some("localhost:1"),
                Verdict::Allow,
            ),
            (
                &without_token_loopback,
                Read,
                None,
                Some("[::1]:1"),
                Verdict::Allow,
            ),
            (&without_token_loopback, Read, None, None, Verdict::Allow),
            (
                &without_token_loopback,
                Read,
                None,
                foreign,
                Verdict::Forbidden(FOREIGN_HOST),
            ),
            (
                &with_token_loopback,
                Read,
                None,
                foreign,
                Verdict::Forbidden(FOREIGN_HOST),
            ),
            (
                &with_token_loopback,
                Read,
                Some(&right),
                foreign,
                Verdict::Allow,
            ),
            (
                &with_token_loopback,
                Read,
                Some(&wrong),
                foreign,
                Verdict::Forbidden(WRONG_TOKEN),
            ),
            // Reads elsewhere.
            (
                &without_token_network,
                Read,
                None,
                local,
                Verdict::Forbidden(READS_OFF),
            ),
            (
                &without_token_network,
                Read,
                Some(&right),
                local,
                Verdict::Forbidden(READS_OFF),
            ),
            (&with_token_network, Read, None, local, unauthorized(true)),
            (
                &with_token_network,
                Read,
                Some(&wrong),
                local,
                Verdict::Forbidden(WRONG_TOKEN),
            ),
            (
                &with_token_network,
                Read,
                Some(&right),
                local,
                Verdict::Allow,
            ),
            (
                &with_token_network,
                Read,
                Some(&right_basic),
                foreign,
                Verdict::Allow,
            ),
            (
                &with_token_network,
                Read,
                Some(&wrong_basic),
                foreign,
                Verdict::Forbidden(WRONG_TOKEN),
            ),
        ];
        for (i, (auth, access, header, host, want)) in cases.into_iter().enumerate() {
            let got = auth.decide(access, header.map(|h| h.as_bytes()), host);
            assert_eq!(
                got, want,
                "case {i}: {auth:?} {access:?} {header:?} {host:?}"
            );
        }
    }

    #[test]
    fn loopback_hosts_are_recognised() {
        for (host, want) in [
            ("127.0.0.1", true),
            ("127.0.0.1:8080", true),
            ("127.8.9.10:1", true),
            ("localhost", true),
            ("LOCALHOST:8080", true),
            ("app.localhost:80", true),
            ("[::1]:8080", true),
            ("::1", true),
            ("10.0.0.1:8080", false),
            ("example.com", false),
            ("localhost.example.com", false),
            ("[::2]:80", false),
        ] {
            assert_eq!(is_loopback_host(host), want, "{host}");
        }
    }

    #[test]
    fn the_debug_output_never_shows_the_token() {
        let shown = format!("{:?}", ApiAuth::new(Some(TOKEN.into()), false));
        assert!(!shown.contains(TOKEN), "{shown}");
        assert!(shown.contains("configured"), "{shown}");
    }

    #[test]
    fn settings_give_the_token_from_a_file_or_the_value_but_not_both() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
        let network: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let loopback: SocketAddr = "127.0.0.1:8080".parse().unwrap();

        let from_file = HttpSettings {
            api_token_file: Some(file.clone()),
            ..HttpSettings::default()
        };
        let auth = ApiAuth::from_settings(&from_file, network).unwrap();
        assert!(auth.has_token() && !auth.reads_are_open());
        let bearer = format!("Bearer {TOKEN}");
        assert_eq!(
            auth.decide(Access::Change, Some(bearer.as_bytes()), None),
            Verdict::Allow
        );

        let from_value = HttpSettings {
            api_token: Some(TOKEN.into()),
            ..HttpSettings::default()
        };
        let auth = ApiAuth::from_settings(&from_value, loopback).unwrap();
        assert!(auth.has_token() && auth.reads_are_open());

        let both = HttpSettings {
            api_token: Some(TOKEN.into()),
            api_token_file: Some(file),
            ..HttpSettings::default()
        };
        assert!(matches!(
            ApiAuth::from_settings(&both, loopback),
            Err(HttpError::TwoTokens)
        ));

        let short = HttpSettings {
            api_token: Some("abc12".into()),
            ..HttpSettings::default()
        };
        let err = ApiAuth::from_settings(&short, loopback).unwrap_err();
        assert!(matches!(err, HttpError::ShortToken { len: 5, .. }), "{err}");
        assert!(!err.to_string().contains("abc12"), "{err}");

        let missing = HttpSettings {
            api_token_file: Some(dir.path().join("nope")),
            ..HttpSettings::default()
        };
        let err = ApiAuth::from_settings(&missing, loopback).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");

        let none = ApiAuth::from_settings(&HttpSettings::default(), loopback).unwrap();
        assert!(!none.has_token());
    }
}
