//! Access tokens from the machine's managed identity.
//!
//! Owns every token endpoint protocol (IMDS, the App Service / Container Apps identity
//! endpoint, AKS workload identity, the Azure CLI for laptops), built on `azure_identity`'s
//! credentials and wrapped where the SDK falls short (single flight, refresh ahead, fault
//! classification, redaction). Knows nothing of Exchange or runbooks: callers ask for a
//! token for a resource URI.
//!
//! Must not: log, print or format a token (see [`AccessToken`]'s `Debug`), or read the
//! process environment (the variables it needs arrive as an [`IdentityEnvironment`]).
//!
//! Layout: [`policy`] is the pure refresh and retry rules; `source` decides which endpoint
//! and identity to use from settings and environment (pure); `transport` is the HTTP client
//! handed to the SDK credentials (routes every request to the chosen endpoint, bypasses
//! proxies, turns failures into [`EndpointFault`]s); `fetch` runs one fetch with retries
//! through a fresh SDK credential; `provider` caches per resource with single flight and
//! background refresh; `credential` adapts a provider to `azure_core`'s `TokenCredential`.

pub mod claims;
mod credential;
mod environment;
mod fetch;
pub mod policy;
mod provider;
mod source;
mod transport;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::base_url::BaseUrl;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

pub use claims::TokenClaims;
pub use credential::ProviderCredential;
pub use environment::IdentityEnvironment;
pub use policy::RetryPolicy;
pub use provider::{CacheStatus, ProviderOptions, TokenProvider, TokenProviders};
pub use source::{IdentitySelector, ProviderDescription, ResolvedSource, resolve};

/// The IMDS base URL on Azure VMs. Appears only as a settings default.
pub const DEFAULT_IMDS_ENDPOINT: &str = "http://169.254.169.254";

/// How to get tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// Detect from the environment as the Azure SDKs do.
    #[default]
    Auto,
    /// The VM / scale set / container instance endpoint (Instance Metadata Service).
    Imds,
    /// The App Service, Functions and Container Apps endpoint (`IDENTITY_ENDPOINT`).
    AppService,
    /// AKS workload identity: a federated token file exchanged with Entra ID.
    Workload,
    /// `az account get-access-token`, for a developer's laptop.
    AzureCli,
}

impl SourceKind {
    /// The settings spelling (`app-service`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Imds => "imds",
            Self::AppService => "app-service",
            Self::Workload => "workload",
            Self::AzureCli => "azure-cli",
        }
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[identity]` settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentitySettings {
    pub source: SourceKind,
    /// Client id of a user-assigned identity.
    pub client_id: Option<String>,
    /// Object (principal) id of a user-assigned identity.
    pub object_id: Option<String>,
    /// ARM resource id of a user-assigned identity.
    pub resource_id: Option<String>,
    /// Base URL that replaces the IMDS host.
    pub imds_endpoint: BaseUrl,
}

impl Default for IdentitySettings {
    fn default() -> Self {
        Self {
            source: SourceKind::Auto,
            client_id: None,
            object_id: None,
            resource_id: None,
            imds_endpoint: DEFAULT_IMDS_ENDPOINT
                .parse()
                .expect("the default IMDS endpoint is a base URL"),
        }
    }
}

/// A bearer token. `Debug` never shows the secret, and there is no `Display`. Cloning is
/// cheap (the text is shared), which keeps cached gets fast.
#[derive(Clone)]
pub struct AccessToken {
    secret: Arc<SecretString>,
    pub expires_on: DateTime<Utc>,
}

impl AccessToken {
    pub fn new(secret: impl Into<String>, expires_on: DateTime<Utc>) -> Self {
        Self {
            secret: Arc::new(SecretString::from(secret.into())),
            expires_on,
        }
    }

    /// The token text, for an `Authorization` header. Never log it.
    pub fn expose(&self) -> &str {
        self.secret.expose_secret()
    }

    /// The JWT claims, decoded without verification.
    pub fn claims(&self) -> Option<TokenClaims> {
        TokenClaims::decode(self.expose())
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("secret", &"[redacted]")
            .field("expires_on", &self.expires_on)
            .finish()
    }
}

/// Why a token could not be had. Cloneable because one failed fetch answers every caller
/// that was waiting for it (single flight). No variant carries a token.
#[derive(Clone, Debug, thiserror::Error)]
pub enum IdentityError {
    /// A setting or variable is missing, malformed or contradicts another one.
    #[error("invalid identity setting `{key}`: {message}")]
    Configuration { key: String, message: String },
    #[error("{message}")]
    Unavailable { message: String },
    /// Nothing answered at the endpoint, and nothing ever has: not on Azure, or the wrong
    /// source was chosen. Not retried.
    #[error(
        "no managed identity endpoint: not on Azure? set identity.source (nothing answered at {endpoint})"
    )]
    NoEndpoint {
        endpoint: String,
        #[source]
        cause: EndpointFault,
    },
    /// HTTP 400: the identity is not assigned to this resource, or several user-assigned
    /// identities are and none was named. Not retried: only configuration fixes it.
    #[error("{source_kind} refused a token for {identity} with HTTP 400{detail}: {hint}")]
    NotAssigned {
        source_kind: SourceKind,
        identity: String,
        detail: String,
        hint: String,
    },
    /// Another 4xx (401, 403, 405 …). Not retried.
    #[error("{source_kind} rejected the token request for {identity} with HTTP {status}{detail}")]
    Rejected {
        source_kind: SourceKind,
        identity: String,
        status: u16,
        detail: String,
    },
    /// Transient faults (404, 410, 429, 5xx, timeouts) outlasted the retry policy; the next
    /// call tries again.
    #[error(
        "{source_kind} did not hand out a token for {resource} after {attempts} attempts, the last one failed with {last}"
    )]
    Exhausted {
        source_kind: SourceKind,
        resource: String,
        attempts: u32,
        #[source]
        last: EndpointFault,
    },
    /// The SDK credential failed in a way we do not classify (an unreadable answer, the
    /// Azure CLI not signed in, a federated token file that cannot be read …).
    #[error("{source_kind} could not get a token for {resource}: {detail}")]
    Credential {
        source_kind: SourceKind,
        resource: String,
        detail: String,
        #[source]
        cause: Option<Arc<azure_core::Error>>,
    },
    /// The provider was shut down while the caller waited.
    #[error("the token provider is shut down")]
    ShutDown,
}

impl IdentityError {
    /// Whether asking again later may succeed without changing any configuration: the
    /// endpoint was failing transiently (404, 410, 429, 5xx, timeouts) beyond the retries.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Exhausted { .. })
    }
}

/// What went wrong with one request to a token endpoint, as seen on the wire. Carries the
/// status and the endpoint's `error` / `error_description`, never a request or a token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EndpointFault {
    #[error("HTTP {status}{}", describe_body(error.as_deref(), description.as_deref()))]
    Status {
        status: u16,
        /// The `Retry-After` header, in seconds.
        retry_after: Option<u64>,
        error: Option<String>,
        description: Option<String>,
    },
    /// Nothing accepted the connection (refused, no route, connect timeout).
    #[error("cannot connect to {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },
    /// The connection was made but broke before a whole answer arrived.
    #[error("the connection to {endpoint} broke: {reason}")]
    Broken { endpoint: String, reason: String },
    #[error("no answer from {endpoint} within {timeout:?}")]
    Timeout { endpoint: String, timeout: Duration },
}

impl EndpointFault {
    /// ` (error: description)` for messages, or nothing when the endpoint said nothing.
    pub fn body_detail(&self) -> String {
        match self {
            Self::Status {
                error, description, ..
            } => describe_body(error.as_deref(), description.as_deref()),
            _ => String::new(),
        }
    }
}

fn describe_body(error: Option<&str>, description: Option<&str>) -> String {
    let description = description.map(|d| d.trim().trim_end_matches('.'));
    match (error, description) {
        (Some(e), Some(d)) if !d.is_empty() => format!(" ({e}: {d})"),
        (Some(e), _) => format!(" ({e})"),
        (None, Some(d)) if !d.is_empty() => format!(" ({d})"),
        _ => String::new(),
    }
}

/// Something that hands out tokens for a resource; shared by every job.
#[async_trait]
pub trait TokenSource: Send + Sync + 'static {
    /// A token for `resource` (for example `https://outlook.office365.com`), from the cache
    /// while it is valid.
    async fn token(&self, resource: &str) -> Result<AccessToken, IdentityError>;

    /// Drops the cached token for `resource` and fetches a new one; `claims` is the
    /// challenge of a 401 `WWW-Authenticate` header, when there was one.
    async fn refresh(
        &self,
        resource: &str,
        claims: Option<&str>,
    ) -> Result<AccessToken, IdentityError>;
}
