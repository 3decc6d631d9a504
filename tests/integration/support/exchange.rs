//! A simulated Exchange tenant with a client wired to it: fast retry delays, a counting
//! token source, and helpers to read what reached the wire.

use std::sync::Arc;
use std::time::Duration;

use runbook_worker::duration::HumanDuration;
use runbook_worker::exchange::{ExchangeClient, ExchangeSettings, TenantLimiter};
use runbook_worker::simulator::exchange::{
    ExchangeSimulator, RecordedRequest, SimulatedTokens, SimulatorConfig,
};

pub struct Tenant {
    pub sim: ExchangeSimulator,
    pub tokens: Arc<SimulatedTokens>,
    pub limiter: Arc<TenantLimiter>,
    pub settings: ExchangeSettings,
    pub client: ExchangeClient,
}

/// Settings pointing at `sim`, with millisecond retry delays so tests stay fast.
pub fn settings_for(sim: &ExchangeSimulator) -> ExchangeSettings {
    ExchangeSettings {
        endpoint: Some(sim.endpoint()),
        retry_base_delay: HumanDuration::from(Duration::from_millis(1)),
        retry_max_delay: HumanDuration::from(Duration::from_millis(50)),
        ..ExchangeSettings::default()
    }
}

/// A tenant seeded with `config` and a client with default settings (plus fast retries).
pub async fn tenant(config: SimulatorConfig) -> Tenant {
    tenant_with(config, |_| {}).await
}

/// As [`tenant`], with the settings adjusted first.
pub async fn tenant_with(
    config: SimulatorConfig,
    adjust: impl FnOnce(&mut ExchangeSettings),
) -> Tenant {
    let sim = ExchangeSimulator::start(config)
        .await
        .expect("start the simulated tenant");
    let mut settings = settings_for(&sim);
    adjust(&mut settings);
    let tokens = Arc::new(sim.token_source());
    let limiter = Arc::new(TenantLimiter::from_settings(&settings));
    let client = ExchangeClient::new(&settings, tokens.clone(), limiter.clone())
        .expect("client from valid settings");
    Tenant {
        sim,
        tokens,
        limiter,
        settings,
        client,
    }
}

impl Tenant {
    /// Requests that reached InvokeCommand.
    pub fn calls(&self) -> Vec<RecordedRequest> {
        self.sim.requests()
    }

    /// Another client on the same tenant with other settings (same tokens and limiter).
    pub fn client_with(&self, adjust: impl FnOnce(&mut ExchangeSettings)) -> ExchangeClient {
        let mut settings = self.settings.clone();
        adjust(&mut settings);
        ExchangeClient::new(&settings, self.tokens.clone(), self.limiter.clone())
            .expect("client from valid settings")
    }
}
