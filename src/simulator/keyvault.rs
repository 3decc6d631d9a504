//! A simulated Azure Key Vault (secrets, data plane) on 127.0.0.1.
//!
//! `GET /secrets/{name}[/{version}]?api-version=…` as the service answers it: the
//! api-version is required; a request without a bearer token gets 401 with the
//! `WWW-Authenticate` challenge; a token must be for `https://vault.azure.net` and not
//! expired. Access is Azure RBAC, decided on the principal as the real vault does (a Key
//! Vault token carries no roles): only object ids granted "Key Vault Secrets User" with
//! [`KeyVaultSimulator::grant_secrets_user`] may read, others get 403 `ForbiddenByRbac`.
//! Unknown secrets or versions get 404 `SecretNotFound`. The request log redacts the
//! `Authorization` value; answers carry secret values, so nothing here logs bodies.

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::net::TcpListener;

use crate::clock::{SharedClock, SystemClock};
use crate::identity::TokenClaims;
use crate::simulator::loopback::{Loopback, lock};

pub const VAULT_RESOURCE: &str = "https://vault.azure.net";
/// Data-plane versions the simulator accepts.
const API_VERSIONS: &[&str] = &["2025-07-01", "7.6", "7.5", "7.4", "7.3", "7.2"];

/// One stored version of a secret.
#[derive(Clone, Debug)]
struct Version {
    id: String,
    value: String,
    content_type: Option<String>,
    enabled: bool,
}

/// A logged request: method, path and query, headers (`authorization` redacted).
pub type LoggedRequest = (String, String, Vec<(String, String)>);

#[derive(Default)]
struct Vault {
    /// Name → versions, oldest first (the last enabled one is "latest").
    secrets: HashMap<String, Vec<Version>>,
    granted: HashSet<String>,
    throttles: Vec<Option<String>>,
    log: Vec<LoggedRequest>,
}

struct Shared {
    name: String,
    tenant_id: String,
    clock: SharedClock,
    vault: Mutex<Vault>,
    total: AtomicU64,
}

/// The running simulator; dropping it stops the listener.
pub struct KeyVaultSimulator {
    shared: Arc<Shared>,
    server: Loopback,
}

impl KeyVaultSimulator {
    /// A vault called `name` (`https://<name>.vault.azure.net` in secret ids) in `tenant_id`.
    pub async fn start(name: &str, tenant_id: &str) -> io::Result<Self> {
        Self::start_with_clock(name, tenant_id, Arc::new(SystemClock)).await
    }

    pub async fn start_with_clock(
        name: &str,
        tenant_id: &str,
        clock: SharedClock,
    ) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            name: name.to_string(),
            tenant_id: tenant_id.to_string(),
            clock,
            vault: Mutex::new(Vault::default()),
            total: AtomicU64::new(0),
        });
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        Ok(Self {
            shared,
            server: Loopback::serve(listener, addr, app, "Key Vault"),
        })
    }

    /// `http://127.0.0.1:PORT`: the `keyvault.endpoint` to configure.
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    /// [`Self::base_url`] as the checked type of `keyvault.endpoint`.
    pub fn endpoint(&self) -> crate::base_url::BaseUrl {
        self.server.endpoint()
    }

    /// The secret URL a runbook would name: `https://<name>.vault.azure.net/secrets/<secret>`.
    pub fn secret_url(&self, secret: &str) -> String {
        format!(
            "https://{}.vault.azure.net/secrets/{secret}",
            self.shared.name
        )
    }

    /// Adds a new version of `name` (it becomes the latest); returns the version id.
    pub fn set_secret(&self, name: &str, value: &str) -> String {
        let version = uuid::Uuid::new_v4().simple().to_string();
        let id = format!(
            "https://{}.vault.azure.net/secrets/{name}/{version}",
            self.shared.name
        );
        lock(&self.shared.vault)
            .secrets
            .entry(name.to_string())
            .or_default()
            .push(Version {
                id,
                value: value.to_string(),
                content_type: Some("text/plain".to_string()),
                enabled: true,
            });
        version
    }

    /// Gives the principal (a token's `oid`) the "Key Vault Secrets User" role.
    pub fn grant_secrets_user(&self, object_id: &str) {
        lock(&self.shared.vault)
            .granted
            .insert(object_id.to_ascii_lowercase());
    }

    /// The next request gets 429 with this `Retry-After` (none: no header).
    pub fn throttle_next(&self, retry_after: Option<&str>) {
        lock(&self.shared.vault)
            .throttles
            .push(retry_after.map(str::to_string));
    }

    /// (method, path and query, headers) of every request; `authorization` redacted.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        lock(&self.shared.vault).log.clone()
    }

    pub fn total_requests(&self) -> u64 {
        self.shared.total.load(Ordering::SeqCst)
    }

    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

fn vault_error(status: StatusCode, code: &str, inner: Option<&str>, message: &str) -> Response {
    let mut error = json!({"code": code, "message": message});
    if let Some(inner) = inner {
        error["innererror"] = json!({"code": inner});
    }
    let mut response = (status, axum::Json(json!({"error": error}))).into_response();
    if let Ok(id) = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()) {
        response.headers_mut().insert("x-ms-request-id", id);
    }
    response
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    shared.total.fetch_add(1, Ordering::SeqCst);
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
    let path_and_query = uri
        .path_and_query()
        .map_or_else(|| uri.path().to_string(), |p| p.as_str().to_string());
    {
        let mut vault = lock(&shared.vault);
        if vault.log.len() >= 10_000 {
            vault.log.remove(0);
        }
        vault.log.push((method.to_string(), path_and_query, logged));
    }
    let pairs: Vec<(String, String)> = uri
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let api_version = pairs
        .iter()
        .find(|(k, _)| k == "api-version")
        .map(|(_, v)| v.as_str());
    match api_version {
        None => {
            return vault_error(
                StatusCode::BAD_REQUEST,
                "BadParameter",
                None,
                "The 'api-version' query parameter is missing.",
            );
        }
        Some(v) if !API_VERSIONS.contains(&v) => {
            return vault_error(
                StatusCode::BAD_REQUEST,
                "BadParameter",
                None,
                &format!(
                    "The specified version ({v}) is not recognized. Consider using the latest supported version (2025-07-01)."
                ),
            );
        }
        Some(_) => {}
    }
    let challenge = format!(
        "Bearer authorization=\"https://login.windows.net/{}\", resource=\"{VAULT_RESOURCE}\"",
        shared.tenant_id
    );
    let unauthorized = |message: &str| {
        let mut response = vault_error(StatusCode::UNAUTHORIZED, "Unauthorized", None, message);
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        response
    };
    let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return unauthorized("Request is missing a Bearer or PoP token.");
    };
    let Some(claims) = TokenClaims::decode(token.trim()) else {
        return unauthorized("AKV10000: Request is missing a Bearer or PoP token.");
    };
    if claims.aud.as_deref().map(|a| a.trim_end_matches('/')) != Some(VAULT_RESOURCE) {
        return unauthorized("AKV10022: Invalid audience.");
    }
    if claims
        .exp
        .is_some_and(|exp| exp <= shared.clock.now().timestamp())
    {
        return unauthorized("AKV10032: Token expired.");
    }
    let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    let (name, version) = match (method.as_str(), segments.as_slice()) {
        ("GET", ["secrets", name]) => (*name, None),
        ("GET", ["secrets", name, version]) => (*name, Some(*version)),
        _ => {
            return vault_error(
                StatusCode::BAD_REQUEST,
                "BadParameter",
                None,
                "The request URI is not supported by the simulator.",
            );
        }
    };
    let mut vault = lock(&shared.vault);
    if !vault.throttles.is_empty() {
        let retry_after = vault.throttles.remove(0);
        let mut response = vault_error(
            StatusCode::TOO_MANY_REQUESTS,
            "Throttled",
            None,
            "Request was not processed because too many requests were received.",
        );
        if let Some(value) = retry_after.and_then(|v| HeaderValue::from_str(&v).ok()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return response;
    }
    let oid = claims.oid.clone().unwrap_or_default().to_ascii_lowercase();
    if !vault.granted.contains(&oid) {
        return vault_error(
            StatusCode::FORBIDDEN,
            "Forbidden",
            Some("ForbiddenByRbac"),
            &format!(
                "Caller is not authorized to perform action on resource.\r\nIf role assignments, deny assignments or role definitions were changed recently, please observe propagation time.\r\nCaller: oid={oid}\r\nAction: 'Microsoft.KeyVault/vaults/secrets/getSecret/action'\r\nResource: '/vaults/{}/secrets/{name}'\r\nDecisionReason: 'DeniedWithNoValidRBAC'",
                shared.name
            ),
        );
    }
    let found = vault.secrets.get(name).and_then(|versions| match version {
        None => versions.iter().rev().find(|v| v.enabled),
        Some(wanted) => versions
            .iter()
            .find(|v| v.id.ends_with(&format!("/{wanted}"))),
    });
    let Some(found) = found else {
        return vault_error(
            StatusCode::NOT_FOUND,
            "SecretNotFound",
            None,
            &format!(
                "A secret with (name/id) {name} was not found in this key vault. If you recently deleted this secret you may be able to recover it using the correct recovery command."
            ),
        );
    };
    let now = shared.clock.now().timestamp();
    axum::Json(json!({
        "value": found.value,
        "id": found.id,
        "contentType": found.content_type,
        "attributes": {
            "enabled": found.enabled,
            "created": now,
            "updated": now,
            "recoveryLevel": "Recoverable+Purgeable",
        },
        "tags": {},
    }))
    .into_response()
}
