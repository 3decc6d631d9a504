//! Exchange Online admin cmdlets over the REST InvokeCommand API.
//!
//! The only module that knows the InvokeCommand JSON (envelope, parameter encoding, OData
//! annotations, error bodies). Gets tokens through [`crate::identity::TokenSource`]; knows
//! nothing of runbooks, schedules or history.

pub mod params;

use serde::{Deserialize, Serialize};

use crate::duration::HumanDuration;
pub use params::{ParamValue, Parameters};

/// Which Exchange Online cloud: chooses the host and the token resource.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cloud {
    #[default]
    Global,
    GccHigh,
    Dod,
    China,
}

/// `[exchange]` settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExchangeSettings {
    /// `*.onmicrosoft.com` domain or tenant GUID; default: the token's `tid`.
    pub organization: Option<String>,
    pub cloud: Cloud,
    /// Base URL override (tests: `http://127.0.0.1:PORT`).
    pub endpoint: Option<String>,
    /// 1..=1000.
    pub page_size: u32,
    pub timeout: HumanDuration,
    /// Requests in flight per tenant, shared by all jobs.
    pub max_concurrency: u32,
}

impl Default for ExchangeSettings {
    fn default() -> Self {
        Self {
            organization: None,
            cloud: Cloud::Global,
            endpoint: None,
            page_size: 1000,
            timeout: HumanDuration::from_secs(16 * 60),
            max_concurrency: 8,
        }
    }
}
