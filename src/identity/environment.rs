//! The environment variables the identity sources are detected and configured by, taken
//! from a map the caller passes in (the binary passes the process environment), so that the
//! library never reads the process environment itself and tests can give any combination.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use secrecy::SecretString;

/// `IDENTITY_ENDPOINT`: the App Service / Container Apps token endpoint.
pub const IDENTITY_ENDPOINT: &str = "IDENTITY_ENDPOINT";
/// `IDENTITY_HEADER`: the secret the App Service endpoint wants in `X-IDENTITY-HEADER`.
pub const IDENTITY_HEADER: &str = "IDENTITY_HEADER";
/// `AZURE_FEDERATED_TOKEN_FILE`: the projected service-account token (AKS workload identity).
pub const AZURE_FEDERATED_TOKEN_FILE: &str = "AZURE_FEDERATED_TOKEN_FILE";
/// `AZURE_CLIENT_ID`: the workload identity's app, or the user-assigned managed identity to use.
pub const AZURE_CLIENT_ID: &str = "AZURE_CLIENT_ID";
/// `AZURE_TENANT_ID`: the tenant of the workload identity's app.
pub const AZURE_TENANT_ID: &str = "AZURE_TENANT_ID";
/// `AZURE_AUTHORITY_HOST`: the Entra ID host (sovereign clouds), injected by the AKS webhook.
pub const AZURE_AUTHORITY_HOST: &str = "AZURE_AUTHORITY_HOST";

/// The identity-related environment variables. Empty values count as unset, as the SDKs
/// treat them. `Debug` hides `IDENTITY_HEADER`.
#[derive(Clone, Default)]
pub struct IdentityEnvironment {
    pub identity_endpoint: Option<String>,
    pub identity_header: Option<SecretString>,
    pub federated_token_file: Option<PathBuf>,
    pub client_id: Option<String>,
    pub tenant_id: Option<String>,
    pub authority_host: Option<String>,
}

impl IdentityEnvironment {
    /// Picks the identity variables out of `env` (for example the whole process environment).
    pub fn from_map(env: &HashMap<String, String>) -> Self {
        let get = |key: &str| {
            env.get(key)
                .map(|v| v.trim())
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        Self {
            identity_endpoint: get(IDENTITY_ENDPOINT),
            identity_header: get(IDENTITY_HEADER).map(SecretString::from),
            federated_token_file: get(AZURE_FEDERATED_TOKEN_FILE).map(PathBuf::from),
            client_id: get(AZURE_CLIENT_ID),
            tenant_id: get(AZURE_TENANT_ID),
            authority_host: get(AZURE_AUTHORITY_HOST),
        }
    }

    /// Both App Service variables are present.
    pub fn has_app_service(&self) -> bool {
        self.identity_endpoint.is_some() && self.identity_header.is_some()
    }

    /// All three workload identity variables are present.
    pub fn has_workload(&self) -> bool {
        self.federated_token_file.is_some() && self.client_id.is_some() && self.tenant_id.is_some()
    }
}

impl fmt::Debug for IdentityEnvironment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityEnvironment")
            .field("identity_endpoint", &self.identity_endpoint)
            .field(
                "identity_header",
                &self.identity_header.as_ref().map(|_| "[redacted]"),
            )
            .field("federated_token_file", &self.federated_token_file)
            .field("client_id", &self.client_id)
            .field("tenant_id", &self.tenant_id)
            .field("authority_host", &self.authority_host)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn picks_the_identity_variables_and_ignores_empty_ones() {
        let env = IdentityEnvironment::from_map(&map(&[
            (IDENTITY_ENDPOINT, "http://127.0.0.1:4000/msi/token"),
            (IDENTITY_HEADER, "s3cret-header"),
            (AZURE_CLIENT_ID, "  "),
            (AZURE_TENANT_ID, "tenant"),
            ("PATH", "/bin"),
        ]));
        assert!(env.has_app_service());
        assert!(!env.has_workload());
        assert_eq!(env.client_id, None);
        assert_eq!(env.tenant_id.as_deref(), Some("tenant"));
        assert_eq!(
            env.identity_header.as_ref().map(|h| h.expose_secret()),
            Some("s3cret-header")
        );
    }

    #[test]
    fn debug_output_hides_the_identity_header() {
        let env = IdentityEnvironment::from_map(&map(&[(IDENTITY_HEADER, "s3cret-header")]));
        let debug = format!("{env:?}");
        assert!(!debug.contains("s3cret-header"), "{debug}");
        assert!(debug.contains("[redacted]"), "{debug}");
    }
}
