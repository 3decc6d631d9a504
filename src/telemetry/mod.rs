//! Logging setup: `tracing` to stderr, human-readable on a terminal and JSON otherwise
//! (or as `--log-format` / `[log] format` say). [`metrics`] holds the Prometheus metrics
//! the rest of the worker updates and `/metrics` renders.

pub mod metrics;

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::settings::LogFormat;

/// Installs the global subscriber. `filter` is a `tracing` directive such as `info`;
/// `RUST_LOG`, when the caller passes it in, wins.
pub fn init(format: LogFormat, filter: &str) {
    init_with_writer(format, filter, std::io::stderr);
}

/// As [`init`], writing to `writer`; tests use it to capture log output.
pub fn init_with_writer<W>(format: LogFormat, filter: &str, writer: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
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
