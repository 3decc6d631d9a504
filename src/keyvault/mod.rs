//! Azure Key Vault secrets read with the machine's managed identity.
//!
//! Owns the secret reference format (`https://<vault>.vault.azure.net/secrets/<name>[/<version>]`),
//! the one REST call (`GET …?api-version=2025-07-01` with a token for
//! `https://vault.azure.net`), its error body, and a small refresh cache ([`cache`], pure:
//! `now` comes in). A secret's value is a [`secrecy::SecretString`]: no `Debug`, `Display`,
//! error or log line of this module ever contains it.
//!
//! Why the REST call and not the `azure_security_keyvault_secrets` crate: its 1.0.0 (the GA
//! release; `cargo info` shows 1.1.0-beta.1 as latest) would resolve against our
//! `azure_core` 1.1, but it refuses plain-HTTP endpoints ("authorized requests are not
//! permitted for non-TLS protected endpoints") and asks an `azure_core` credential for the
//! token after an unauthenticated challenge round trip. Tests here run the vault simulator
//! on `http://127.0.0.1`, and every other adapter gets its tokens from
//! [`crate::identity::TokenSource`] with its cache, refresh and diagnostics; one GET with
//! typed errors is less code than a test transport for the SDK, and adds no dependency.
//! Knows nothing of runbooks.

pub mod cache;
pub mod client;
pub mod error;

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::base_url::BaseUrl;
use crate::duration::HumanDuration;
pub use cache::{Lookup, SecretCache};
pub use client::KeyVaultClient;
pub use error::KeyVaultError;

/// The data-plane api-version sent (current GA).
pub const API_VERSION: &str = "2025-07-01";
/// The built-in role that may read secret values.
pub const SECRETS_USER_ROLE: &str = "Key Vault Secrets User";
pub const SECRETS_USER_ROLE_ID: &str = "4633458b-17de-408a-b874-0445c86b69e6";

/// Vault DNS suffixes per cloud and the token resource each needs.
const VAULT_SUFFIXES: &[(&str, &str)] = &[
    ("vault.azure.net", "https://vault.azure.net"),
    ("vault.usgovcloudapi.net", "https://vault.usgovcloudapi.net"),
    ("vault.azure.cn", "https://vault.azure.cn"),
];

/// `[keyvault]` settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeyVaultSettings {
    /// Base URL that replaces every vault's `https://<vault>.vault.azure.net` (tests:
    /// `http://127.0.0.1:PORT`); the token resource stays the vault cloud's.
    pub endpoint: Option<BaseUrl>,
    pub api_version: String,
    /// How long one secret read (with its retries) may take.
    pub timeout: HumanDuration,
    /// Retries after throttling or a server error.
    pub max_retries: u32,
    /// How long a fetched secret is used before it is read again.
    pub refresh_interval: HumanDuration,
}

impl Default for KeyVaultSettings {
    fn default() -> Self {
        Self {
            endpoint: None,
            api_version: API_VERSION.to_string(),
            timeout: HumanDuration::from_secs(30),
            max_retries: 3,
            refresh_interval: HumanDuration::from_secs(5 * 60),
        }
    }
}

/// Which secret: a vault host, a name and optionally a version.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SecretRef {
    /// `myvault.vault.azure.net`.
    pub host: String,
    pub name: String,
    pub version: Option<String>,
}

impl SecretRef {
    /// Parses `https://<vault>.vault.azure.net/secrets/<name>[/<version>]` (any Azure
    /// cloud's vault suffix).
    pub fn parse(text: &str) -> Result<Self, KeyVaultError> {
        let invalid = |why: &str| KeyVaultError::InvalidReference {
            reference: text.to_string(),
            message: why.to_string(),
        };
        let url = url::Url::parse(text.trim()).map_err(|_| {
            invalid("not a URL; expected https://<vault>.vault.azure.net/secrets/<name>")
        })?;
        if url.scheme() != "https" || url.query().is_some() || url.fragment().is_some() {
            return Err(invalid("expected an https URL without query or fragment"));
        }
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        if resource_for(&host).is_none() {
            return Err(invalid(
                "the host is not a Key Vault (*.vault.azure.net, *.vault.usgovcloudapi.net, *.vault.azure.cn)",
            ));
        }
        let segments: Vec<&str> = url
            .path_segments()
            .map(Iterator::collect)
            .unwrap_or_default();
        let valid = |s: &str| {
            !s.is_empty()
                && s.len() <= 127
                && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        };
        let (name, version) = match segments.as_slice() {
            ["secrets", name] | ["secrets", name, ""] => (*name, None),
            ["secrets", name, version] => (*name, Some(version.to_string())),
            _ => {
                return Err(invalid(
                    "expected the path /secrets/<name> or /secrets/<name>/<version>",
                ));
            }
        };
        if !valid(name) || version.as_deref().is_some_and(|v| !valid(v)) {
            return Err(invalid(
                "secret names and versions are 1-127 letters, digits and dashes",
            ));
        }
        Ok(Self {
            host,
            name: name.to_string(),
            version,
        })
    }

    /// The token resource (`aud`) for this vault's cloud.
    pub fn resource(&self) -> &'static str {
        resource_for(&self.host).unwrap_or("https://vault.azure.net")
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "https://{}/secrets/{}", self.host, self.name)?;
        if let Some(version) = &self.version {
            write!(f, "/{version}")?;
        }
        Ok(())
    }
}

fn resource_for(host: &str) -> Option<&'static str> {
    VAULT_SUFFIXES
        .iter()
        .find(|(suffix, _)| {
            host.strip_suffix(suffix)
                .and_then(|vault| vault.strip_suffix('.'))
                .is_some_and(|vault| !vault.is_empty() && !vault.contains('.'))
        })
        .map(|(_, resource)| *resource)
}

/// A secret as read. `Debug` shows everything but the value.
#[derive(Clone)]
pub struct Secret {
    value: SecretString,
    /// `https://<vault>/secrets/<name>/<version>`.
    pub id: String,
    pub version: String,
    pub content_type: Option<String>,
}

impl Secret {
    pub fn new(value: SecretString, id: String, content_type: Option<String>) -> Self {
        let version = id.rsplit('/').next().unwrap_or_default().to_string();
        Self {
            value,
            id,
            version,
            content_type,
        }
    }

    /// The value, for the one place that needs it. Never log it.
    pub fn expose(&self) -> &str {
        self.value.expose_secret()
    }

    pub fn value(&self) -> &SecretString {
        &self.value
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("id", &self.id)
            .field("version", &self.version)
            .field("content_type", &self.content_type)
            .field("value", &"[redacted]")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_references_parse_or_say_what_is_wrong() {
        let r = SecretRef::parse("https://MyVault.vault.azure.net/secrets/exo-password").unwrap();
        assert_eq!(r.host, "myvault.vault.azure.net");
        assert_eq!(r.name, "exo-password");
        assert_eq!(r.version, None);
        assert_eq!(r.resource(), "https://vault.azure.net");
        let v = SecretRef::parse("https://v.vault.azure.cn/secrets/a/4387e9f3d6e14c45").unwrap();
        assert_eq!(v.version.as_deref(), Some("4387e9f3d6e14c45"));
        assert_eq!(v.resource(), "https://vault.azure.cn");
        assert_eq!(
            v.to_string(),
            "https://v.vault.azure.cn/secrets/a/4387e9f3d6e14c45"
        );
        for bad in [
            "http://v.vault.azure.net/secrets/a",
            "https://evil.example.com/secrets/a",
            "https://vault.azure.net/secrets/a",
            "https://a.b.vault.azure.net/secrets/a",
            "https://v.vault.azure.net/keys/a",
            "https://v.vault.azure.net/secrets/a_b",
            "https://v.vault.azure.net/secrets/a?x=1",
            "v/a",
        ] {
            let err = SecretRef::parse(bad).unwrap_err().to_string();
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn a_secret_never_shows_its_value() {
        let secret = Secret::new(
            SecretString::from("hunter2-s3cr3t"),
            "https://v.vault.azure.net/secrets/a/0123".into(),
            None,
        );
        assert_eq!(secret.version, "0123");
        assert!(!format!("{secret:?}").contains("hunter2"));
        assert_eq!(secret.expose(), "hunter2-s3cr3t");
    }
}
