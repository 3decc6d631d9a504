//! Who may read and who may change things.
//!
//! Changes (every POST) need `Authorization: Bearer <http.api_token>`; with no token
//! configured they are off. Only a bearer header counts for changes: browsers attach Basic
//! credentials and cookies to cross-site form posts on their own, a bearer header only when a
//! script of this origin sets it, so requiring it also rules out cross-site request forgery.
//! Reads are open without a token ("anonymous reads") only when all of these hold: the worker
//! listens on loopback, `http.anonymous_reads` is on, the TCP peer is on loopback, the request
//! names only loopback hosts (a strictly parsed `host[:port]`, so a rebound DNS name or a
//! `localhost:1@evil.com` cannot reach them from a web page) and it carries no proxy headers
//! (`Forwarded`, `X-Forwarded-For`, …). Otherwise reads need the token too, as a bearer header
//! or as the password of HTTP Basic (any user name), so that a browser can open the dashboard.
//! A reverse proxy on the same host makes every client look local, which is why the setting
//! exists. Tokens are compared as SHA-256 digests in constant time; the token itself
//! is not kept and never logged.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Request, State};
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
    /// Whether reads may be open without a token, and if not why.
    anonymous: Anonymous,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Anonymous {
    /// Open to local requests (the listener is on loopback).
    Open,
    /// The listener is not on loopback.
    NotLoopback,
    /// `http.anonymous_reads = false`.
    TurnedOff,
}

/// Where a request comes from, as far as the access rules care.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Origin<'a> {
    /// Every host the request names: its Host headers and the authority of an absolute-form
    /// target. An invalid header is passed as an empty string.
    pub hosts: &'a [&'a str],
    /// The TCP peer, when known.
    pub peer: Option<IpAddr>,
    /// Whether it carries headers a proxy adds (`Forwarded`, `X-Forwarded-For`, …).
    pub forwarded: bool,
}

/// Headers that say a proxy passed the request on.
const PROXY_HEADERS: [&str; 4] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-real-ip",
];

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
            .field("anonymous_reads", &self.anonymous)
            .finish()
    }
}

/// What a request wants to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    Read,
    Change,
    /// Reading a job's report file: reports hold mailbox data, so the token is required
    /// whatever `anonymous_reads` and the listener say.
    Report,
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
const REPORTS_OFF: &str = "report downloads hold mailbox data and always need the API token, and none is set: set http.api_token_file (or http.api_token) and send it";
const NEED_TOKEN_REPORT: &str = "report downloads hold mailbox data and always need the API token, even on loopback (`Authorization: Bearer <token>`, or as the password of HTTP Basic)";
const READS_OFF: &str = "reads are open without a token only when the worker listens on loopback: set http.api_token_file (or http.api_token) and send it, or listen on 127.0.0.1";
const NEED_TOKEN: &str = "this worker does not listen on loopback, so reads need the API token (`Authorization: Bearer <token>`, or as the password of HTTP Basic)";
const FOREIGN_HOST: &str = "reads without a token are served only to requests for a loopback host (localhost, 127.0.0.1, [::1]); send the API token or use a loopback address";
const FORWARDED: &str = "this request came through a proxy (it has a Forwarded or X-Forwarded-For header), so reads need the API token; set http.anonymous_reads = false on a worker behind a proxy";
const ANONYMOUS_OFF: &str = "reads without a token are turned off (http.anonymous_reads = false): send the API token (`Authorization: Bearer <token>`, or as the password of HTTP Basic)";

impl ApiAuth {
    /// Rules for a listener: `token` is the API token (none turns the change routes off),
    /// `listen_is_loopback` opens reads without a token.
    pub fn new(token: Option<SecretString>, listen_is_loopback: bool) -> Self {
        Self {
            token_digest: token.map(|t| digest(t.expose_secret().as_bytes())),
            anonymous: if listen_is_loopback {
                Anonymous::Open
            } else {
                Anonymous::NotLoopback
            },
        }
    }

    /// The same rules with reads always needing the token (`http.anonymous_reads = false`).
    pub fn without_anonymous_reads(self) -> Self {
        Self {
            anonymous: Anonymous::TurnedOff,
            ..self
        }
    }

    /// Rules from `[http]` for a listener bound to `listen`: the token comes from
    /// `api_token_file` (trailing whitespace trimmed) or `api_token`, never both.
    pub fn from_settings(settings: &HttpSettings, listen: SocketAddr) -> Result<Self, HttpError> {
        let token = match (&settings.api_token, &settings.api_token_file) {
            (Some(_), Some(_)) => return Err(HttpError::TwoTokens),
            (Some(token), None) => Some(check_token("http.api_token", token.expose_secret())?),
            (None, Some(path)) => {
                let text = crate::bounded_file::read_secret(path).map_err(|source| {
                    HttpError::TokenFile {
                        path: path.clone(),
                        source,
                    }
                })?;
                Some(check_token("http.api_token_file", &text)?)
            }
            (None, None) => None,
        };
        let auth = Self::new(token, listen.ip().is_loopback());
        Ok(if settings.anonymous_reads {
            auth
        } else {
            auth.without_anonymous_reads()
        })
    }

    /// Whether a token is configured (the change routes are on).
    pub fn has_token(&self) -> bool {
        self.token_digest.is_some()
    }

    /// Whether reads are open without a token.
    pub fn reads_are_open(&self) -> bool {
        self.anonymous == Anonymous::Open
    }

    /// Why a read without a token from `origin` is refused, or `None` when it is allowed.
    fn anonymous_refusal(&self, origin: &Origin<'_>) -> Option<&'static str> {
        match self.anonymous {
            Anonymous::NotLoopback => Some(READS_OFF),
            Anonymous::TurnedOff => Some(ANONYMOUS_OFF),
            Anonymous::Open if origin.forwarded => Some(FORWARDED),
            Anonymous::Open
                if !origin.peer.is_none_or(|p| p.is_loopback())
                    || !origin.hosts.iter().all(|h| is_loopback_host(h)) =>
            {
                Some(FOREIGN_HOST)
            }
            Anonymous::Open => None,
        }
    }

    /// The rules, without I/O: `authorization` is the request's header, `origin` where it
    /// comes from.
    pub(crate) fn decide(
        &self,
        access: Access,
        authorization: Option<&[u8]>,
        origin: &Origin<'_>,
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
            Access::Report => match &self.token_digest {
                None => Verdict::Forbidden(REPORTS_OFF),
                Some(expected) => token_verdict(expected, authorization, NEED_TOKEN_REPORT),
            },
            Access::Read => {
                let Some(refusal) = self.anonymous_refusal(origin) else {
                    return Verdict::Allow;
                };
                let Some(expected) = &self.token_digest else {
                    return Verdict::Forbidden(refusal);
                };
                // A local client refused for its host gets the reason, not a login prompt.
                if authorization.is_none() && self.anonymous == Anonymous::Open {
                    return Verdict::Forbidden(refusal);
                }
                token_verdict(expected, authorization, NEED_TOKEN)
            }
        }
    }
}

/// A read that needs the token: as a bearer token or the password of HTTP Basic; `missing`
/// says why when none was sent.
fn token_verdict(
    expected: &[u8; 32],
    authorization: Option<&[u8]>,
    missing: &'static str,
) -> Verdict {
    match authorization.map(parse_credentials) {
        None => Verdict::Unauthorized {
            message: missing,
            basic: true,
        },
        Some(Credentials::Bearer(given)) if matches(expected, given) => Verdict::Allow,
        Some(Credentials::Basic(given)) if matches(expected, &given) => Verdict::Allow,
        Some(_) => Verdict::Forbidden(WRONG_TOKEN),
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

/// The host of an HTTP authority `host[:port]` (RFC 9110 §7.2), lower-cased and without a
/// trailing dot; `None` for anything else: user info (`localhost:1@evil.com`), a path, an
/// unbracketed IPv6 address, an empty or out-of-range port, stray characters.
fn authority_host(authority: &str) -> Option<String> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        inside.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':')?),
        };
        (inside, port)
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if let Some(port) = port
        && !(port.len() <= 5
            && !port.is_empty()
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u32>().is_ok_and(|p| p <= 65_535))
    {
        return None;
    }
    if !authority.starts_with('[')
        && (host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')))
    {
        return None;
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    Some(host.to_ascii_lowercase())
}

/// Whether `authority` is a valid `host[:port]` naming `localhost`, a `*.localhost` name or a
/// loopback IP.
fn is_loopback_host(authority: &str) -> bool {
    let Some(name) = authority_host(authority) else {
        return false;
    };
    if name == "localhost" || name.ends_with(".localhost") {
        return true;
    }
    name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Every host `request` names: its Host headers (an unreadable one as "") and the authority
/// of an absolute-form target, which RFC 9112 §3.2.2 puts before the header.
fn request_hosts(request: &Request) -> Vec<&str> {
    let mut hosts: Vec<&str> = request
        .headers()
        .get_all(header::HOST)
        .iter()
        .map(|h| h.to_str().unwrap_or(""))
        .collect();
    if let Some(authority) = request.uri().authority() {
        hosts.push(authority.as_str());
    }
    hosts
}

fn is_forwarded(headers: &HeaderMap) -> bool {
    PROXY_HEADERS.iter().any(|name| headers.contains_key(*name))
}

async fn enforce(state: &AppState, access: Access, request: Request, next: Next) -> Response {
    let hosts = request_hosts(&request);
    let origin = Origin {
        hosts: &hosts,
        peer: request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(peer)| peer.ip()),
        forwarded: is_forwarded(request.headers()),
    };
    let verdict = state.auth.decide(
        access,
        request
            .headers()
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes),
        &origin,
    );
    drop(hosts);
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

/// Middleware of the report downloads: the token, always.
pub(crate) async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    enforce(&state, Access::Report, request, next).await
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
        let local = at(&["127.0.0.1:8080"]);
        let foreign = at(&["evil.example:8080"]);
        let without_anonymous_reads =
            ApiAuth::new(Some(TOKEN.into()), true).without_anonymous_reads();
        let anonymous_off_without_token = ApiAuth::new(None, true).without_anonymous_reads();

        use Access::{Change, Read};
        let unauthorized = |basic| Verdict::Unauthorized {
            message: if basic { NEED_TOKEN } else { NEED_BEARER },
            basic,
        };
        // (rules, access, Authorization header, origin, decision)
        type Case<'a> = (&'a ApiAuth, Access, Option<&'a String>, Origin<'a>, Verdict);
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
                at(&["localhost:1"]),
                Verdict::Allow,
            ),
            (
                &without_token_loopback,
                Read,
                None,
                at(&["[::1]:1"]),
                Verdict::Allow,
            ),
            (&without_token_loopback, Read, None, at(&[]), Verdict::Allow),
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
            // Anonymous reads rest on the peer and strictly parsed hosts, not on a header
            // that merely mentions localhost.
            (
                &without_token_loopback,
                Read,
                None,
                at(&["localhost:1@evil.com"]),
                Verdict::Forbidden(FOREIGN_HOST),
            ),
            (
                &without_token_loopback,
                Read,
                None,
                at(&["127.0.0.1:8080", "evil.example"]),
                Verdict::Forbidden(FOREIGN_HOST),
            ),
            (
                &without_token_loopback,
                Read,
                None,
                at(&[""]),
                Verdict::Forbidden(FOREIGN_HOST),
            ),
            (
                &without_token_loopback,
                Read,
                None,
                Origin {
                    peer: Some(IpAddr::from([10, 0, 0, 7])),
                    ..local
                },
                Verdict::Forbidden(FOREIGN_HOST),
            ),
            (
                &with_token_loopback,
                Read,
                None,
                Origin {
                    forwarded: true,
                    ..local
                },
                Verdict::Forbidden(FORWARDED),
            ),
            (
                &with_token_loopback,
                Read,
                Some(&right),
                Origin {
                    forwarded: true,
                    ..local
                },
                Verdict::Allow,
            ),
            // http.anonymous_reads = false: a local request needs the token like any other.
            (
                &without_anonymous_reads,
                Read,
                None,
                local,
                unauthorized(true),
            ),
            (
                &without_anonymous_reads,
                Read,
                Some(&right),
                local,
                Verdict::Allow,
            ),
            (
                &anonymous_off_without_token,
                Read,
                None,
                local,
                Verdict::Forbidden(ANONYMOUS_OFF),
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
            let got = auth.decide(access, header.map(|h| h.as_bytes()), &host);
            assert_eq!(
                got, want,
                "case {i}: {auth:?} {access:?} {header:?} {host:?}"
            );
        }
    }

    /// A request from a loopback peer naming `hosts`.
    fn at<'a>(hosts: &'a [&'a str]) -> Origin<'a> {
        Origin {
            hosts,
            peer: Some(IpAddr::from([127, 0, 0, 1])),
            forwarded: false,
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
            ("localhost.:80", true),
            // Not an authority: a bare IPv6 address must be bracketed.
            ("::1", false),
            ("10.0.0.1:8080", false),
            ("localhost:1@evil.com", false),
            ("user@localhost", false),
            ("evil.com#@localhost", false),
            ("localhost/evil", false),
            ("localhost:", false),
            ("localhost:99999", false),
            ("localhost:123456", false),
            ("localhost:80:80", false),
            ("localhost:+80", false),
            ("[::1]x", false),
            ("[::1]:", false),
            ("[localhost]:80", false),
            (" localhost", false),
            ("", false),
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
            auth.decide(Access::Change, Some(bearer.as_bytes()), &at(&[])),
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
        assert!(!none.has_token() && none.reads_are_open());

        let closed = HttpSettings {
            anonymous_reads: false,
            ..HttpSettings::default()
        };
        let auth = ApiAuth::from_settings(&closed, loopback).unwrap();
        assert!(!auth.reads_are_open());
        assert_eq!(
            auth.decide(Access::Read, None, &at(&["127.0.0.1:8080"])),
            Verdict::Forbidden(ANONYMOUS_OFF)
        );
    }
}
