//! Exchange Online admin cmdlets over the REST InvokeCommand API.
//!
//! The only module that knows the InvokeCommand JSON (envelope, parameter encoding, OData
//! annotations, error bodies) and its HTTP rules (headers, paging, redirects, retries). Gets
//! tokens through [`crate::identity::TokenSource`]; knows nothing of runbooks, schedules or
//! history.
//!
//! Layout: the pure parts take their inputs as arguments and have table-driven tests —
//! [`params`] (values), [`encode`] (the request body), [`cmdlet`] (read or write, what to
//! confirm), [`response`] (pages and error bodies), [`retry`] (what to do after a failed
//! attempt), [`limiter`]'s [`limiter::AimdPolicy`]. [`client`] is the adapter that does
//! the I/O; [`error`] is what callers branch on.

pub mod client;
pub mod cmdlet;
pub mod encode;
pub mod error;
pub mod limiter;
pub mod params;
pub mod response;
pub mod retry;

use serde::{Deserialize, Serialize};

use crate::base_url::BaseUrl;
use crate::duration::HumanDuration;
pub use client::{ExchangeClient, Invocation, InvokeOptions, Output, Page};
pub use error::ExchangeError;
pub use limiter::TenantLimiter;
pub use params::{ParamValue, Parameters};
pub use response::{CmdletIssue, Record};
pub use retry::RetryPolicy;

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

impl Cloud {
    /// The InvokeCommand front door of this cloud.
    pub fn host(self) -> &'static str {
        match self {
            Cloud::Global => "outlook.office365.com",
            Cloud::GccHigh => "outlook.office365.us",
            Cloud::Dod => "outlook-dod.office365.us",
            // The sources disagree (partner.outlook.cn for Remote PowerShell,
            // outlook.office365.cn on the v2.0 page); the module's connection URI wins.
            Cloud::China => "partner.outlook.cn",
        }
    }

    /// The resource a token must be issued for (its `aud`).
    pub fn resource(self) -> String {
        format!("https://{}", self.host())
    }
}

/// Records per page asked of Exchange (`ResultSize` of one page): 1 to 1000, checked when
/// the value is read (the settings file, a variable, or [`PageSize::new`]), so no client is
/// ever built with a page size Exchange would refuse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct PageSize(u32);

impl PageSize {
    /// The largest page Exchange serves, and the default.
    pub const MAX: PageSize = PageSize(1000);

    pub fn new(records: u32) -> Result<Self, String> {
        if (1..=Self::MAX.0).contains(&records) {
            Ok(Self(records))
        } else {
            Err(format!("must be between 1 and 1000, got {records}"))
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<u32> for PageSize {
    type Error = String;

    fn try_from(records: u32) -> Result<Self, String> {
        Self::new(records)
    }
}

impl From<PageSize> for u32 {
    fn from(size: PageSize) -> u32 {
        size.0
    }
}

/// `[exchange]` settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExchangeSettings {
    /// `*.onmicrosoft.com` domain or tenant GUID; default: the token's `tid`.
    pub organization: Option<String>,
    pub cloud: Cloud,
    /// Base URL override (tests: `http://127.0.0.1:PORT`).
    pub endpoint: Option<BaseUrl>,
    /// Records per page asked of Exchange.
    pub page_size: PageSize,
    /// How long one request (one page, with its retries) may take.
    pub timeout: HumanDuration,
    /// Requests in flight per tenant, shared by all jobs.
    pub max_concurrency: u32,
    /// Retries of one request after throttling or a transient failure.
    pub max_retries: u32,
    /// First backoff delay; doubles with each retry.
    pub retry_base_delay: HumanDuration,
    /// Upper bound of one wait, including a server's `Retry-After`.
    pub retry_max_delay: HumanDuration,
    /// Redirects followed for one request.
    pub max_redirects: u32,
    /// Bytes of one answer (one page, after decompression) read before the call fails.
    pub max_response_bytes: u64,
}

impl Default for ExchangeSettings {
    fn default() -> Self {
        Self {
            organization: None,
            cloud: Cloud::Global,
            endpoint: None,
            page_size: PageSize::MAX,
            timeout: HumanDuration::from_secs(16 * 60),
            max_concurrency: 8,
            max_retries: 5,
            retry_base_delay: HumanDuration::from_secs(2),
            retry_max_delay: HumanDuration::from_secs(120),
            max_redirects: 5,
            max_response_bytes: 64 * 1024 * 1024,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cloud_has_its_host_and_resource() {
        let table = [
            (Cloud::Global, "https://outlook.office365.com"),
            (Cloud::GccHigh, "https://outlook.office365.us"),
            (Cloud::Dod, "https://outlook-dod.office365.us"),
            (Cloud::China, "https://partner.outlook.cn"),
        ];
        for (cloud, resource) in table {
            assert_eq!(cloud.resource(), resource, "{cloud:?}");
        }
    }

    #[test]
    fn cloud_names_in_settings_are_kebab_case() {
        let settings: ExchangeSettings = toml::from_str("cloud = \"gcc-high\"").unwrap();
        assert_eq!(settings.cloud, Cloud::GccHigh);
        assert_eq!(settings.max_retries, 5);
    }
}
