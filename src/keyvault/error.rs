//! What can go wrong reading a secret. Messages name the secret (never its value) and say
//! what to do.

use std::time::Duration;

use super::SECRETS_USER_ROLE;
use crate::identity::IdentityError;

fn show_request_id(id: &Option<String>) -> String {
    id.as_deref()
        .map(|id| format!(", request-id {id}"))
        .unwrap_or_default()
}

fn assignee(principal: &Option<String>) -> String {
    principal
        .clone()
        .unwrap_or_else(|| "<principal id of the identity>".to_string())
}

#[derive(Debug, thiserror::Error)]
pub enum KeyVaultError {
    /// The `[keyvault]` settings cannot work.
    #[error("invalid setting `keyvault.{key}`: {message}")]
    Configuration { key: &'static str, message: String },

    /// A secret reference that is not a Key Vault secret URL.
    #[error("invalid Key Vault secret reference {reference:?}: {message}")]
    InvalidReference { reference: String, message: String },

    #[error("Key Vault secret {secret}: cannot get a token for {resource}: {source}")]
    Token {
        secret: String,
        resource: String,
        #[source]
        source: Box<IdentityError>,
    },

    /// 401 even with a fresh token: a token for another audience or tenant.
    #[error(
        "Key Vault secret {secret}: unauthorized (401 {code}{}): {message}: the vault must be in the identity's tenant and the token for {resource}",
        show_request_id(request_id)
    )]
    Unauthorized {
        secret: String,
        resource: String,
        code: String,
        message: String,
        request_id: Option<String>,
    },

    /// 403: no RBAC role (or access policy, or a network rule) lets the identity read it.
    #[error(
        "Key Vault secret {secret}: forbidden (403 {code}{}): {message}: give the identity the \"{SECRETS_USER_ROLE}\" role on the vault: az role assignment create --role \"{SECRETS_USER_ROLE}\" --assignee-object-id {} --assignee-principal-type ServicePrincipal --scope <the vault's resource id> (vaults on the access-policy model need a 'get' secret policy instead; a new assignment can take a few minutes)",
        show_request_id(request_id),
        assignee(principal)
    )]
    Forbidden {
        secret: String,
        code: String,
        message: String,
        /// The token's `oid`: who to assign the role to.
        principal: Option<String>,
        request_id: Option<String>,
    },

    #[error(
        "Key Vault secret {secret}: not found ({code}{}): check the vault, the secret name and the version",
        show_request_id(request_id)
    )]
    NotFound {
        secret: String,
        code: String,
        request_id: Option<String>,
    },

    /// Another definite refusal (400: api-version, disabled secret, …).
    #[error(
        "Key Vault secret {secret}: refused (HTTP {status} {code}{}): {message}",
        show_request_id(request_id)
    )]
    Rejected {
        secret: String,
        status: u16,
        code: String,
        message: String,
        request_id: Option<String>,
    },

    /// Throttled or failing until the retries ran out.
    #[error(
        "Key Vault secret {secret}: unavailable ({cause}) after {attempts} attempts{}: try again later; cache secrets instead of reading them per call",
        retry_after.map(|d| format!(", the service asked to wait {:.1}s", d.as_secs_f64())).unwrap_or_default()
    )]
    Unavailable {
        secret: String,
        cause: String,
        attempts: u32,
        retry_after: Option<Duration>,
    },

    #[error("Key Vault secret {secret}: {message}")]
    Protocol { secret: String, message: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_names_the_role_and_the_command_with_the_principal() {
        let error = KeyVaultError::Forbidden {
            secret: "https://v.vault.azure.net/secrets/a".into(),
            code: "ForbiddenByRbac".into(),
            message: "Caller is not authorized to perform action on resource.".into(),
            principal: Some("oid-1".into()),
            request_id: None,
        };
        let text = error.to_string();
        assert!(text.contains("\"Key Vault Secrets User\""), "{text}");
        assert!(
            text.contains("az role assignment create --role \"Key Vault Secrets User\" --assignee-object-id oid-1"),
            "{text}"
        );
    }
}
