//! The one integration-test binary (one link step instead of one per file). Each area has
//! its module; shared helpers live in `support`.

mod support;

mod app;
mod architecture;
mod assets;
mod cli;
mod coordination;
mod dashboard;
mod deploy;
mod docs;
mod exchange;
mod executor;
mod graph;
mod graphsteps;
mod history;
mod history_blob;
mod http;
mod identity;
mod job_reports;
mod notify;
mod opscli;
mod runbook;
mod worker;
