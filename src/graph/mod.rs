//! Microsoft Graph for app-only (managed identity) callers: reading the directory (users,
//! groups, licences), writing user properties and licences, and sending mail.
//!
//! The only module that knows Graph's HTTP rules: `@odata.nextLink` paging (followed as
//! given, same origin only), the `{"error":{"code",…}}` body, throttling with
//! `Retry-After`, and which app role each call needs. Gets tokens for the Graph resource
//! through [`crate::identity::TokenSource`] and shares the tenant's
//! [`crate::exchange::TenantLimiter`] and retry rules ([`crate::exchange::RetryPolicy`]);
//! knows nothing of runbooks, schedules or history.
//!
//! Layout: [`permissions`] is pure (app role names and ids, the role a call needs) with
//! table tests; [`client`] does the I/O ([`GraphClient::request`] returns a lazy stream of
//! [`GraphPage`]s, one request per page pulled); [`error`] is what callers branch on.

pub mod client;
pub mod error;
pub mod permissions;

use serde::{Deserialize, Serialize};

use crate::base_url::BaseUrl;
use crate::duration::HumanDuration;
use crate::exchange::Cloud;
pub use client::{GraphClient, GraphPage, GraphRequest, MailMessage, Pages};
pub use error::GraphError;

/// The Graph host of each cloud. The sovereign hosts are Microsoft's national-cloud
/// deployment list (not in the project's reference notes: check against the tenant).
pub fn host(cloud: Cloud) -> &'static str {
    match cloud {
        Cloud::Global => "graph.microsoft.com",
        Cloud::GccHigh => "graph.microsoft.us",
        Cloud::Dod => "dod-graph.microsoft.us",
        Cloud::China => "microsoftgraph.chinacloudapi.cn",
    }
}

/// The resource (`aud`) of Graph tokens in `cloud`.
pub fn resource(cloud: Cloud) -> String {
    format!("https://{}", host(cloud))
}

/// `[graph]` settings. The cloud is `exchange.cloud`: one worker talks to one cloud.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GraphSettings {
    /// Base URL override (tests: `http://127.0.0.1:PORT`); replaces the cloud's host.
    pub endpoint: Option<BaseUrl>,
    /// How long one request (one page, with its retries) may take.
    pub timeout: HumanDuration,
    /// Retries of one request after throttling or a transient failure.
    pub max_retries: u32,
    /// First backoff delay; doubles with each retry.
    pub retry_base_delay: HumanDuration,
    /// Upper bound of one wait, including a server's `Retry-After`.
    pub retry_max_delay: HumanDuration,
    /// Largest response body read (one page); a bigger one fails the call.
    pub max_response_bytes: u64,
}

impl Default for GraphSettings {
    fn default() -> Self {
        Self {
            endpoint: None,
            timeout: HumanDuration::from_secs(5 * 60),
            max_retries: 5,
            retry_base_delay: HumanDuration::from_secs(2),
            retry_max_delay: HumanDuration::from_secs(120),
            // 999 users with a dozen properties is about 1 MB; 32 MB leaves room for
            // wide `$select`s without letting one answer take the worker's memory.
            max_response_bytes: 32 * 1024 * 1024,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cloud_has_its_graph_host_and_resource() {
        let table = [
            (Cloud::Global, "https://graph.microsoft.com"),
            (Cloud::GccHigh, "https://graph.microsoft.us"),
            (Cloud::Dod, "https://dod-graph.microsoft.us"),
            (Cloud::China, "https://microsoftgraph.chinacloudapi.cn"),
        ];
        for (cloud, expected) in table {
            assert_eq!(resource(cloud), expected, "{cloud:?}");
        }
    }

    #[test]
    fn graph_settings_read_from_toml_with_defaults_for_the_rest() {
        let settings: GraphSettings =
            toml::from_str("endpoint = \"http://127.0.0.1:1\"\nmax_retries = 2").unwrap();
        assert_eq!(
            settings.endpoint.as_ref().map(|url| url.as_str()),
            Some("http://127.0.0.1:1/")
        );
        assert_eq!(settings.max_retries, 2);
        assert_eq!(settings.max_response_bytes, 32 * 1024 * 1024);
        assert!(toml::from_str::<GraphSettings>("page_size = 5").is_err());
    }
}
