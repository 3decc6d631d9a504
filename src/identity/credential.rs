//! [`ProviderCredential`]: a [`TokenProvider`] as an `azure_core` `TokenCredential`, so SDK
//! clients (the blob-lease coordination) get their tokens from the same identity, cache,
//! single flight and refresh ahead as everything else.

use std::sync::Arc;

use async_trait::async_trait;
use azure_core::credentials::{Secret, TokenCredential, TokenRequestOptions};
use azure_core::error::{Error as CoreError, ErrorKind};
use azure_core::time::OffsetDateTime;

use super::{TokenProvider, TokenSource};

/// Hands out a provider's tokens to `azure_core` clients.
#[derive(Debug)]
pub struct ProviderCredential {
    provider: Arc<TokenProvider>,
}

impl ProviderCredential {
    pub fn new(provider: Arc<TokenProvider>) -> Arc<Self> {
        Arc::new(Self { provider })
    }
}

/// The resource of a `.default` scope (`https://storage.azure.com/.default` →
/// `https://storage.azure.com`), as the SDK's own managed-identity credential derives it.
fn scope_to_resource(scope: &str) -> &str {
    scope.strip_suffix("/.default").unwrap_or(scope)
}

#[async_trait]
impl TokenCredential for ProviderCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<azure_core::credentials::AccessToken> {
        let [scope] = scopes else {
            return Err(CoreError::with_message(
                ErrorKind::Credential,
                format!(
                    "managed identity tokens are for exactly one scope, got {}",
                    scopes.len()
                ),
            ));
        };
        let token = self
            .provider
            .token(scope_to_resource(scope))
            .await
            .map_err(|e| CoreError::new(ErrorKind::Credential, e))?;
        let expires_on = OffsetDateTime::from_unix_timestamp(token.expires_on.timestamp())
            .map_err(|e| CoreError::new(ErrorKind::DataConversion, e))?;
        Ok(azure_core::credentials::AccessToken::new(
            Secret::new(token.expose().to_string()),
            expires_on,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_scopes_become_resources() {
        let cases = [
            (
                "https://storage.azure.com/.default",
                "https://storage.azure.com",
            ),
            (
                "https://outlook.office365.com",
                "https://outlook.office365.com",
            ),
        ];
        for (scope, resource) in cases {
            assert_eq!(scope_to_resource(scope), resource);
        }
    }
}
