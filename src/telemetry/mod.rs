//! Logging setup: `tracing` to stderr, human-readable on a terminal and JSON otherwise
//! (or as `--log-format` / `[log] format` say). [`metrics`] holds the Prometheus metrics
//! the rest of the worker updates and `/metrics` renders.

pub mod metrics;

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable on a terminal, JSON otherwise.
    #[default]
    Auto,
    Human,
    Json,
}

/// `[log]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A `tracing` filter: `info`, `runbook_worker=debug,info`, …
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Auto,
            level: "info".to_string(),
        }
    }
}

/// Installs the global subscriber. `filter` is a `tracing` directive such as `info`;
/// `RUST_LOG`, when the caller passes it in, wins.
pub fn init(format: LogFormat, filter: &str) {
    init_with_writer(format, filter, std::io::stderr);
}

/// The Azure SDK logs every credential choice and failed response at `info`, and names the
/// SDK's own IMDS address even when our transport routed the request elsewhere: misleading
/// noise next to our own, clearer, messages. Unless the operator's filter mentions the SDK
/// crates, they are held to `warn`.
fn with_sdk_quieted(filter: &str) -> String {
    const SDK_TARGETS: &[&str] = &[
        "azure_identity",
        "azure_core",
        "typespec_client_core",
        "azure_storage_blob",
    ];
    let mut out = filter.to_string();
    for target in SDK_TARGETS {
        if !filter.contains(target) {
            out.push_str(&format!(",{target}=warn"));
        }
    }
    out
}

/// As [`init`], writing to `writer`; tests use it to capture log output.
pub fn init_with_writer<W>(format: LogFormat, filter: &str, writer: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter =
        EnvFilter::try_new(with_sdk_quieted(filter)).unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Human => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    // A second init (tests) keeps the first subscriber.
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdk_targets_are_quieted_unless_the_filter_names_them() {
        let filter = with_sdk_quieted("info");
        assert!(filter.starts_with("info,"), "{filter}");
        assert!(filter.contains("azure_identity=warn"), "{filter}");
        let filter = with_sdk_quieted("debug,azure_identity=trace");
        assert!(filter.contains("azure_identity=trace"), "{filter}");
        assert!(!filter.contains("azure_identity=warn"), "{filter}");
        assert!(EnvFilter::try_new(with_sdk_quieted("runbook_worker=debug")).is_ok());
    }
}
