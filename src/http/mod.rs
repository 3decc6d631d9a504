//! The HTTP surface: health probes, Prometheus metrics, the JSON API and the dashboard.
//!
//! The only module that knows axum for serving the product (the simulator has its own
//! servers). Reads snapshots of the worker's state; never drives the scheduler directly.

use std::path::PathBuf;

use secrecy::SecretString;
use serde::Deserialize;

/// `[http]` settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    pub listen: String,
    /// Bearer token required by every route that changes something.
    pub api_token: Option<SecretString>,
    /// File holding the API token (preferred over `api_token` in files that are shared).
    pub api_token_file: Option<PathBuf>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".to_string(),
            api_token: None,
            api_token_file: None,
        }
    }
}
