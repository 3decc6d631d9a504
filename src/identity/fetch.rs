//! One token fetch: a fresh `azure_identity` credential for the resolved source, attempts
//! bounded by a timeout, and the retry loop that applies [`RetryPolicy`] to the faults the
//! transport reports. This is the only place that retries token requests.
//!
//! A fresh credential per fetch is deliberate: every SDK credential keeps its own token
//! cache that answers until five minutes before expiry, which would turn our refresh at
//! half-life into a cache hit. Constructing one does no network I/O (the workload credential
//! reads its token file, which we want re-read anyway, as the kubelet rotates it).

use std::ffi::OsStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use async_trait::async_trait;
use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::TokenCredential;
use azure_core::http::{ClientOptions, RetryOptions, Transport};
use azure_identity::{
    AzureCliCredential, AzureCliCredentialOptions, ClientAssertionCredentialOptions, Executor,
    ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId,
    WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};
use chrono::DateTime;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::policy::{FaultClass, RetryPolicy, classify};
use super::source::{IdentitySelector, Plan, ResolvedSource};
use super::transport::{EndpointTransport, Route, find_fault, http_client, origin};
use super::{AccessToken, EndpointFault, IdentityError};

/// Fetches tokens for one resolved source and identity.
pub(crate) struct Fetcher {
    resolved: ResolvedSource,
    http: reqwest::Client,
    retry: RetryPolicy,
    /// Whether the endpoint has ever answered; a refused connection afterwards is an
    /// endpoint restarting, not a missing one.
    reached: AtomicBool,
}

impl Fetcher {
    pub(crate) fn new(resolved: ResolvedSource, retry: RetryPolicy) -> Result<Self, IdentityError> {
        let http = http_client(retry.connect_timeout).map_err(|e| IdentityError::Unavailable {
            message: format!("cannot build the HTTP client for token requests: {e}"),
        })?;
        Ok(Self {
            resolved,
            http,
            retry,
            reached: AtomicBool::new(false),
        })
    }

    pub(crate) fn resolved(&self) -> &ResolvedSource {
        &self.resolved
    }

    /// Gets a token for `resource`, retrying transient faults per the policy. Returns
    /// [`IdentityError::ShutDown`] when `cancel` fires first.
    pub(crate) async fn fetch(
        &self,
        resource: &str,
        cancel: &CancellationToken,
    ) -> Result<AccessToken, IdentityError> {
        let scope = format!("{}/.default", resource.trim_end_matches('/'));
        let scopes = [scope.as_str()];
        let credential = self.credential().map_err(|e| self.sdk_error(resource, e))?;
        let kind = self.resolved.kind;
        let mut retries = 0u32;
        let mut first_gone: Option<Instant> = None;
        loop {
            let attempt = tokio::time::timeout(
                self.retry.attempt_timeout,
                credential.get_token(&scopes, None),
            );
            let outcome = tokio::select! {
                _ = cancel.cancelled() => return Err(IdentityError::ShutDown),
                outcome = attempt => outcome,
            };
            let fault = match outcome {
                Ok(Ok(token)) => {
                    self.reached.store(true, Ordering::Relaxed);
                    return self.convert(resource, token);
                }
                Ok(Err(error)) => match find_fault(&error) {
                    Some(fault) => fault.clone(),
                    None => return Err(self.sdk_error(resource, error)),
                },
                Err(_elapsed) => EndpointFault::Timeout {
                    endpoint: self.endpoint_origin(),
                    timeout: self.retry.attempt_timeout,
                },
            };
            if matches!(fault, EndpointFault::Status { .. }) {
                self.reached.store(true, Ordering::Relaxed);
            }
            match classify(&fault, self.reached.load(Ordering::Relaxed)) {
                FaultClass::Transient => {}
                FaultClass::NoEndpoint => {
                    return Err(IdentityError::NoEndpoint {
                        endpoint: self.resolved.description().endpoint.clone(),
                        cause: fault,
                    });
                }
                FaultClass::NotAssigned => return Err(self.not_assigned(&fault)),
                FaultClass::Rejected => {
                    let status = match &fault {
                        EndpointFault::Status { status, .. } => *status,
                        _ => 0,
                    };
                    return Err(IdentityError::Rejected {
                        source_kind: kind,
                        identity: self.identity_words(),
                        status,
                        detail: fault.body_detail(),
                    });
                }
            }
            if let EndpointFault::Status { status: 410, .. } = fault {
                first_gone.get_or_insert_with(Instant::now);
            }
            let gone_for = first_gone.map(|t| t.elapsed());
            let Some(delay) =
                self.retry
                    .next_delay(&fault, retries, gone_for, rand::random::<f64>())
            else {
                return Err(IdentityError::Exhausted {
                    source_kind: kind,
                    resource: resource.to_string(),
                    attempts: retries + 1,
                    last: fault,
                });
            };
            debug!(
                resource,
                source = %kind,
                attempt = retries + 1,
                fault = %fault,
                delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                "token request failed, retrying"
            );
            tokio::select! {
                _ = cancel.cancelled() => return Err(IdentityError::ShutDown),
                _ = tokio::time::sleep(delay) => {}
            }
            retries += 1;
        }
    }

    /// A new SDK credential for the resolved source (see the module comment for why new).
    fn credential(&self) -> azure_core::Result<Arc<dyn TokenCredential>> {
        match &self.resolved.plan {
            Plan::Imds { base } => self.managed_identity(Route::Imds { base: base.clone() }),
            Plan::AppService { endpoint, header } => self.managed_identity(Route::AppService {
                endpoint: endpoint.clone(),
                header: header.clone(),
            }),
            Plan::Workload {
                client_id,
                tenant_id,
                token_file,
                authority,
            } => {
                // The SDK refuses anything but https; `source` only lets http through for a
                // loopback simulator, and the transport sends it there over http.
                let mut sdk_authority = authority.clone();
                if sdk_authority.scheme() == "http" {
                    let _ = sdk_authority.set_scheme("https");
                }
                let mut cloud = CustomConfiguration::default();
                cloud.authority_host = sdk_authority.as_str().trim_end_matches('/').to_string();
                let mut client_options = self.client_options(Route::Authority {
                    base: authority.clone(),
                });
                client_options.cloud = Some(Arc::new(CloudConfiguration::Custom(cloud)));
                let options = WorkloadIdentityCredentialOptions {
                    credential_options: ClientAssertionCredentialOptions { client_options },
                    client_id: Some(client_id.clone()),
                    tenant_id: Some(tenant_id.clone()),
                    token_file_path: Some(token_file.clone()),
                };
                Ok(WorkloadIdentityCredential::new(Some(options))?)
            }
            Plan::AzureCli { tenant_id } => {
                Ok(AzureCliCredential::new(Some(AzureCliCredentialOptions {
                    tenant_id: tenant_id.clone(),
                    executor: Some(Arc::new(TokioExecutor)),
                    ..AzureCliCredentialOptions::default()
                }))?)
            }
        }
    }

    fn managed_identity(&self, route: Route) -> azure_core::Result<Arc<dyn TokenCredential>> {
        let user_assigned_id = match &self.resolved.selector {
            IdentitySelector::SystemAssigned => None,
            IdentitySelector::ClientId(id) => Some(UserAssignedId::ClientId(id.clone())),
            IdentitySelector::ObjectId(id) => Some(UserAssignedId::ObjectId(id.clone())),
            IdentitySelector::ResourceId(id) => Some(UserAssignedId::ResourceId(id.clone())),
        };
        Ok(ManagedIdentityCredential::new(Some(
            ManagedIdentityCredentialOptions {
                user_assigned_id,
                client_options: self.client_options(route),
            },
        ))?)
    }

    fn client_options(&self, route: Route) -> ClientOptions {
        ClientOptions {
            transport: Some(Transport::new(Arc::new(EndpointTransport::new(
                self.http.clone(),
                route,
            )))),
            // Our loop retries. The IMDS credential replaces this with its own policy, which
            // the transport's non-transport errors keep from ever retrying.
            retry: RetryOptions::none(),
            ..ClientOptions::default()
        }
    }

    fn convert(
        &self,
        resource: &str,
        token: azure_core::credentials::AccessToken,
    ) -> Result<AccessToken, IdentityError> {
        let expires_on = DateTime::from_timestamp(token.expires_on.unix_timestamp(), 0)
            .ok_or_else(|| IdentityError::Credential {
                source_kind: self.resolved.kind,
                resource: resource.to_string(),
                detail: "the token's expiry is out of range".into(),
                cause: None,
            })?;
        Ok(AccessToken::new(token.token.secret(), expires_on))
    }

    fn endpoint_origin(&self) -> String {
        match &self.resolved.plan {
            Plan::Imds { base } => origin(base),
            Plan::AppService { endpoint, .. } => origin(endpoint),
            Plan::Workload { authority, .. } => origin(authority),
            Plan::AzureCli { .. } => "az account get-access-token".into(),
        }
    }

    fn identity_words(&self) -> String {
        match (&self.resolved.plan, &self.resolved.selector) {
            (Plan::Workload { client_id, .. }, _) => {
                format!("the workload identity app {client_id}")
            }
            (Plan::AzureCli { .. }, _) => "the Azure CLI account".into(),
            (_, selector) => selector.to_string(),
        }
    }

    fn not_assigned(&self, fault: &EndpointFault) -> IdentityError {
        let hint = match (&self.resolved.plan, &self.resolved.selector) {
            (Plan::Workload { client_id, .. }, _) => format!(
                "Entra ID refused the federated token: check the federated credential of app {client_id} (issuer and subject must match the pod's service account)"
            ),
            (_, IdentitySelector::SystemAssigned) => "no system-assigned identity is enabled here, or several user-assigned identities are assigned and none was named: enable the system-assigned identity, or set identity.client_id (or identity.object_id, identity.resource_id, AZURE_CLIENT_ID)".into(),
            (_, _) => "this identity is not assigned to this VM or app: assign it in Azure, or fix identity.client_id / identity.object_id / identity.resource_id (or AZURE_CLIENT_ID)".into(),
        };
        IdentityError::NotAssigned {
            source_kind: self.resolved.kind,
            identity: self.identity_words(),
            detail: fault.body_detail(),
            hint,
        }
    }

    fn sdk_error(&self, resource: &str, error: azure_core::Error) -> IdentityError {
        IdentityError::Credential {
            source_kind: self.resolved.kind,
            resource: resource.to_string(),
            detail: innermost_sdk_message(&error),
            cause: Some(Arc::new(error)),
        }
    }
}

/// The deepest message of an SDK error chain, on one line, without the SDK's troubleshooting
/// link or a trailing period: "Please run 'az login' to set up an account".
fn innermost_sdk_message(error: &azure_core::Error) -> String {
    let mut message = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(e) = cause {
        message = e.to_string();
        cause = e.source();
    }
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("To troubleshoot"))
        .collect();
    let joined = lines.join("; ");
    let trimmed = joined.trim().trim_end_matches('.');
    if trimmed.is_empty() {
        "the credential failed without a message".into()
    } else {
        trimmed.to_string()
    }
}

/// Runs the Azure CLI on tokio, killing it if the attempt times out or is cancelled (the
/// SDK's default executor runs it on a thread nobody can stop).
#[derive(Debug)]
struct TokioExecutor;

#[async_trait]
impl Executor for TokioExecutor {
    async fn run(&self, program: &OsStr, args: &[&OsStr]) -> std::io::Result<std::process::Output> {
        tokio::process::Command::new(program)
            .args(args)
            .kill_on_drop(true)
            .output()
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use azure_core::error::ErrorKind;

    #[test]
    fn sdk_messages_are_reduced_to_their_innermost_line() {
        let inner = azure_core::Error::with_message(
            ErrorKind::Credential,
            "ERROR: Please run 'az login' to setup account.\n",
        );
        let outer = azure_core::Error::with_error(
            ErrorKind::Credential,
            inner,
            "AzureCliCredential authentication failed. ERROR: Please run 'az login' to setup account.\nTo troubleshoot, visit https://aka.ms/azsdk/rust/identity/troubleshoot#azure-cli",
        );
        assert_eq!(
            innermost_sdk_message(&outer),
            "ERROR: Please run 'az login' to setup account"
        );
    }
}
