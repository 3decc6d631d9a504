//! The one integration-test binary (one link step instead of one per file). Each area has
//! its module; shared helpers live in `support`.

mod support;

mod app;
mod architecture;
mod cli;
mod coordination;
mod deploy;
mod exchange;
mod executor;
mod graph;
mod history;
mod history_blob;
mod http;
mod identity;
mod job_reports;
mod notify;
mod opscli;
mod runbook;
mod worker;
