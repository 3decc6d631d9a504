//! One [`ExchangeClient`] per distinct (organization, identity) pair of the runbooks that
//! run, sharing one [`TenantLimiter`] per tenant (the service's concurrency limit is per
//! tenant, whoever calls) and one token source per identity.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::exchange::{ExchangeClient, ExchangeSettings, TenantLimiter};
use crate::graph::{GraphClient, GraphError, GraphSettings};
use crate::identity::{IdentityError, IdentitySelector, TokenProviders, TokenSource};
use crate::runbook::IdentityOverride;

use super::ExecutorError;

/// Token sources by identity: the worker's [`TokenProviders`] in production, one fixed
/// source in tests that talk to the simulated tenant directly.
#[async_trait]
pub trait TokenSources: Send + Sync {
    /// The source for a runbook's identity override; `None` is the worker's own identity.
    fn for_identity(
        &self,
        identity: Option<&IdentityOverride>,
    ) -> Result<Arc<dyn TokenSource>, IdentityError>;

    /// Stops background work (token refreshes) and waits for it.
    async fn shutdown(&self) {}
}

fn selector(identity: &IdentityOverride) -> IdentitySelector {
    match identity {
        IdentityOverride::ClientId(id) => IdentitySelector::ClientId(id.clone()),
        IdentityOverride::ObjectId(id) => IdentitySelector::ObjectId(id.clone()),
        IdentityOverride::ResourceId(id) => IdentitySelector::ResourceId(id.clone()),
    }
}

#[async_trait]
impl TokenSources for TokenProviders {
    fn for_identity(
        &self,
        identity: Option<&IdentityOverride>,
    ) -> Result<Arc<dyn TokenSource>, IdentityError> {
        let selector = identity.map(selector);
        let provider = self.get(selector.as_ref())?;
        Ok(provider)
    }

    async fn shutdown(&self) {
        TokenProviders::shutdown(self).await;
    }
}

/// The same token source for every identity (tests, and tools that talk to one tenant).
pub struct FixedTokens(pub Arc<dyn TokenSource>);

#[async_trait]
impl TokenSources for FixedTokens {
    fn for_identity(
        &self,
        _identity: Option<&IdentityOverride>,
    ) -> Result<Arc<dyn TokenSource>, IdentityError> {
        Ok(Arc::clone(&self.0))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ClientKey {
    tenant: String,
    identity: Option<IdentitySelector>,
}

/// Hands out Exchange clients for runbooks; created once per process.
pub struct ExchangeClients {
    settings: ExchangeSettings,
    tokens: Arc<dyn TokenSources>,
    limiters: Mutex<HashMap<String, Arc<TenantLimiter>>>,
    clients: Mutex<HashMap<ClientKey, ExchangeClient>>,
    /// `[graph]`, for runbooks with Graph steps; `None`: Graph steps fail with a message.
    graph: Option<GraphSettings>,
    graph_clients: Mutex<HashMap<ClientKey, GraphClient>>,
}

impl std::fmt::Debug for ExchangeClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExchangeClients")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl ExchangeClients {
    /// Clients built from `[exchange]` settings with tokens from `tokens`, each on first use.
    pub fn new(
        settings: ExchangeSettings,
        tokens: Arc<dyn TokenSources>,
    ) -> Result<Self, ExecutorError> {
        let clients = Self {
            settings,
            tokens,
            limiters: Mutex::new(HashMap::new()),
            clients: Mutex::new(HashMap::new()),
            graph: None,
            graph_clients: Mutex::new(HashMap::new()),
        };
        // No client is built until a job needs one (each holds an HTTP client and its TLS
        // configuration); the settings loader has already checked `[exchange]`.
        Ok(clients)
    }

    /// Lets Graph steps run, with clients built from `settings` (on first use, in the cloud
    /// of `exchange.cloud`).
    pub fn with_graph(mut self, settings: GraphSettings) -> Self {
        self.graph = Some(settings);
        self
    }

    /// The Graph client for a runbook's `organization` and `identity` overrides, sharing
    /// the tenant's limiter with its Exchange calls; created on first use.
    pub fn graph_client(
        &self,
        organization: Option<&str>,
        identity: Option<&IdentityOverride>,
    ) -> Result<GraphClient, ClientError> {
        let Some(settings) = &self.graph else {
            return Err(ClientError::GraphNotConfigured);
        };
        self.cached(
            &self.graph_clients,
            organization,
            identity,
            |tenant, _, tokens| {
                GraphClient::new(settings, self.settings.cloud, tokens, self.limiter(tenant))
                    .map_err(|e| ClientError::Graph(Box::new(e)))
            },
        )
    }

    /// The client of `cache` for (tenant, identity), built by `build(tenant, organization,
    /// tokens)` on first use and shared afterwards.
    fn cached<C: Clone>(
        &self,
        cache: &Mutex<HashMap<ClientKey, C>>,
        organization: Option<&str>,
        identity: Option<&IdentityOverride>,
        build: impl FnOnce(&str, Option<&str>, Arc<dyn TokenSource>) -> Result<C, ClientError>,
    ) -> Result<C, ClientError> {
        let organization = organization.map(str::trim).filter(|o| !o.is_empty());
        let key = ClientKey {
            tenant: self.tenant_key(organization),
            identity: identity.map(selector),
        };
        let mut clients = cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let tokens = self
            .tokens
            .for_identity(identity)
            .map_err(|e| ClientError::Identity(Box::new(e)))?;
        let client = build(&key.tenant, organization, tokens)?;
        clients.insert(key, client.clone());
        Ok(client)
    }

    fn limiter(&self, tenant: &str) -> Arc<TenantLimiter> {
        let mut limiters = self.limiters.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(
            limiters
                .entry(tenant.to_string())
                .or_insert_with(|| Arc::new(TenantLimiter::from_settings(&self.settings))),
        )
    }

    /// The `[exchange]` settings clients are built from.
    pub fn settings(&self) -> &ExchangeSettings {
        &self.settings
    }

    /// The tenant a runbook's calls go to, as the limiter key: its `organization`, else
    /// `[exchange] organization`, else the token's own tenant (one shared key: runbooks
    /// that name no organization are assumed to share the worker's tenant, which errs on
    /// the side of fewer concurrent requests).
    fn tenant_key(&self, organization: Option<&str>) -> String {
        organization
            .or(self.settings.organization.as_deref())
            .map(|o| o.trim().to_ascii_lowercase())
            .unwrap_or_default()
    }

    /// The client for a runbook's `organization` and `identity` overrides (`None`: the
    /// settings' own), created on first use and shared afterwards.
    pub fn client(
        &self,
        organization: Option<&str>,
        identity: Option<&IdentityOverride>,
    ) -> Result<ExchangeClient, ClientError> {
        self.cached(
            &self.clients,
            organization,
            identity,
            |tenant, organization, tokens| {
                let mut settings = self.settings.clone();
                if let Some(organization) = organization {
                    settings.organization = Some(organization.to_string());
                }
                ExchangeClient::new(&settings, tokens, self.limiter(tenant))
                    .map_err(|e| ClientError::Exchange(Box::new(e)))
            },
        )
    }

    /// How many distinct clients and tenant limiters exist (diagnostics and tests).
    pub fn counts(&self) -> (usize, usize) {
        let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner()).len();
        let limiters = self
            .limiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len();
        (clients, limiters)
    }

    /// Stops the token sources' background work.
    pub async fn shutdown(&self) {
        self.tokens.shutdown().await;
    }
}

/// Why no client could be had for a runbook; the job fails with this message.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot use the runbook's identity: {0}")]
    Identity(#[source] Box<IdentityError>),
    #[error("{0}")]
    Exchange(#[source] Box<crate::exchange::ExchangeError>),
    #[error("{0}")]
    Graph(#[source] Box<GraphError>),
    #[error(
        "this worker was built without a Microsoft Graph client, so Graph steps cannot run (a bug: the composition root sets [graph])"
    )]
    GraphNotConfigured,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::AccessToken;

    struct NoTokens;

    #[async_trait]
    impl TokenSource for NoTokens {
        async fn token(&self, _resource: &str) -> Result<AccessToken, IdentityError> {
            Err(IdentityError::ShutDown)
        }
        async fn refresh(
            &self,
            _resource: &str,
            _claims: Option<&str>,
        ) -> Result<AccessToken, IdentityError> {
            Err(IdentityError::ShutDown)
        }
    }

    fn clients(organization: Option<&str>) -> ExchangeClients {
        let settings = ExchangeSettings {
            organization: organization.map(str::to_string),
            endpoint: Some("http://127.0.0.1:9".parse().unwrap()),
            ..ExchangeSettings::default()
        };
        ExchangeClients::new(settings, Arc::new(FixedTokens(Arc::new(NoTokens)))).unwrap()
    }

    #[test]
    fn one_client_per_pair_and_one_limiter_per_tenant() {
        let clients = clients(Some("contoso.onmicrosoft.com"));
        let other = IdentityOverride::ClientId("c1".into());
        let default = clients.client(None, None).unwrap();
        let same_tenant = clients
            .client(Some("Contoso.onmicrosoft.com"), None)
            .unwrap();
        let other_identity = clients.client(None, Some(&other)).unwrap();
        let again = clients.client(None, Some(&other)).unwrap();
        let fabrikam = clients
            .client(Some("fabrikam.onmicrosoft.com"), None)
            .unwrap();

        assert!(Arc::ptr_eq(default.limiter(), same_tenant.limiter()));
        assert!(Arc::ptr_eq(default.limiter(), other_identity.limiter()));
        assert!(Arc::ptr_eq(other_identity.limiter(), again.limiter()));
        assert!(!Arc::ptr_eq(default.limiter(), fabrikam.limiter()));
        // (tenant, identity): default, other identity, fabrikam; the explicit organization
        // equal to the default's is the same pair.
        assert_eq!(clients.counts(), (3, 2));
    }
}
