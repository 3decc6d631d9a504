//! A simulated Graph directory and Key Vault with clients that get their tokens from the
//! identity simulator through the real `TokenProvider`, with millisecond retry delays.

use std::sync::Arc;
use std::time::Duration;

use runbook_worker::duration::HumanDuration;
use runbook_worker::exchange::{Cloud, TenantLimiter};
use runbook_worker::graph::{GraphClient, GraphSettings};
use runbook_worker::identity::TokenProvider;
use runbook_worker::keyvault::{KeyVaultClient, KeyVaultSettings};
use runbook_worker::simulator::graph::{GraphSimulator, GraphSimulatorConfig};
use runbook_worker::simulator::identity::{
    IdentitySimulator, IdentitySimulatorConfig, SIMULATED_TENANT_ID, SimulatedIdentity,
};
use runbook_worker::simulator::keyvault::KeyVaultSimulator;

use super::identity::{imds_provider, imds_settings, simulator};

pub struct World {
    pub identity: IdentitySimulator,
    pub graph: GraphSimulator,
    pub vault: KeyVaultSimulator,
    pub tokens: Arc<TokenProvider>,
    pub client: GraphClient,
    pub secrets: KeyVaultClient,
    /// The `oid` of the identity's tokens.
    pub object_id: String,
}

/// Settings pointing at `graph`, retries in milliseconds.
pub fn graph_settings(graph: &GraphSimulator) -> GraphSettings {
    GraphSettings {
        endpoint: Some(graph.endpoint()),
        retry_base_delay: HumanDuration::from(Duration::from_millis(1)),
        retry_max_delay: HumanDuration::from(Duration::from_millis(50)),
        ..GraphSettings::default()
    }
}

/// A machine whose system-assigned identity holds the Graph app `roles`, a directory of
/// `users` users and an empty vault `ops-vault`.
pub async fn world(roles: &[&str], users: usize) -> World {
    let me = SimulatedIdentity::new("worker").with_roles(roles);
    let object_id = me.object_id.clone();
    let identity =
        simulator(IdentitySimulatorConfig::default().with_system_assigned(Some(me))).await;
    let graph = GraphSimulator::start(GraphSimulatorConfig::default().with_users(users))
        .await
        .expect("start the Graph simulator");
    let vault = KeyVaultSimulator::start("ops-vault", SIMULATED_TENANT_ID)
        .await
        .expect("start the Key Vault simulator");
    let tokens = imds_provider(&identity, imds_settings(&identity));
    let client = GraphClient::new(
        &graph_settings(&graph),
        Cloud::Global,
        tokens.clone(),
        Arc::new(TenantLimiter::new(4)),
    )
    .expect("Graph client from valid settings");
    let secrets = KeyVaultClient::new(
        &KeyVaultSettings {
            endpoint: Some(vault.endpoint()),
            ..KeyVaultSettings::default()
        },
        tokens.clone(),
    )
    .expect("Key Vault client from valid settings");
    World {
        identity,
        graph,
        vault,
        tokens,
        client,
        secrets,
        object_id,
    }
}

/// Every Graph role the directory tests need.
pub const READER_AND_WRITER: &[&str] = &[
    "User.Read.All",
    "GroupMember.Read.All",
    "Group.Read.All",
    "Organization.Read.All",
    "LicenseAssignment.ReadWrite.All",
    "User.ReadWrite.All",
    "Mail.Send",
];
