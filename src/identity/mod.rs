//! Access tokens from the machine's managed identity.
//!
//! Owns every token endpoint protocol (IMDS, the App Service / Container Apps identity
//! endpoint, AKS workload identity, the Azure CLI for laptops), built on `azure_identity`'s
//! credentials and wrapped where the SDK falls short (single flight, refresh ahead, fault
//! classification, redaction). Knows nothing of Exchange or runbooks: callers ask for a
//! token for a resource URI.
//!
//! Must not: log, print or format a token (see [`AccessToken`]'s `Debug`).

pub mod claims;

use std::fmt;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

pub use claims::TokenClaims;

/// The IMDS base URL on Azure VMs. Appears only as a settings default.
pub const DEFAULT_IMDS_ENDPOINT: &str = "http://169.254.169.254";

/// How to get tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// Detect from the environment as the Azure SDKs do.
    #[default]
    Auto,
    Imds,
    AppService,
    Workload,
    AzureCli,
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
    pub imds_endpoint: String,
}

impl Default for IdentitySettings {
    fn default() -> Self {
        Self {
            source: SourceKind::Auto,
            client_id: None,
            object_id: None,
            resource_id: None,
            imds_endpoint: DEFAULT_IMDS_ENDPOINT.to_string(),
        }
    }
}

/// A bearer token. `Debug` and `Display` never show the secret.
#[derive(Clone)]
pub struct AccessToken {
    secret: SecretString,
    pub expires_on: DateTime<Utc>,
}

impl AccessToken {
    pub fn new(secret: impl Into<String>, expires_on: DateTime<Utc>) -> Self {
        Self {
            secret: SecretString::from(secret.into()),
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

/// Why a token could not be had.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("invalid identity setting `{key}`: {message}")]
    Configuration { key: String, message: String },
    #[error("{message}")]
    Unavailable { message: String },
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
