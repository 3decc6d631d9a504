//! The one integration-test binary (one link step instead of one per file). Each area has
//! its module; shared helpers live in `support`.

mod support;

mod cli;
mod deploy;
mod history;
mod http;
mod runbook;
mod coordination;
mod identity;
mod exchange;
mod opscli;
