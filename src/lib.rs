//! runbook-worker: runs Exchange Online admin runbooks on a schedule with an Azure managed
//! identity, replacing Azure Automation for mailbox maintenance.
//!
//! # Layout
//!
//! Imports point from the pure core towards the edges, never back:
//!
//! - Pure core, no I/O, `now` passed in: [`duration`], [`base_url`], [`clock`] (the abstraction itself),
//!   the runbook model and parser in [`runbook`], cron maths and scheduling policies in [`timing`],
//!   token-cache policy in [`identity`], parameter encoding in [`exchange`].
//! - Adapters: [`identity`] (token endpoints), [`exchange`] (the InvokeCommand API),
//!   [`graph`] (Microsoft Graph), [`keyvault`] (Key Vault secrets),
//!   [`history`] (SQLite job history), [`coordination`] (blob leases between replicas).
//! - Orchestration: [`executor`] runs one job, [`scheduler`] decides when.
//! - Edges: [`http`] (axum API, metrics, dashboard), [`doctor`] (the operator's checks),
//!   [`notify`] (email, Teams and webhook notifications when a job needs a person),
//!   [`settings`], [`telemetry`], [`app`] (the composition root of `serve`), and the
//!   binary's `main.rs` + `cli/`.
//! - [`simulator`]: faithful loopback stand-ins for what cannot run here (the managed-identity
//!   endpoints and an Exchange Online tenant), used by tests and by `serve --simulate`.
//!
//! ARCHITECTURE.md has the code map and the invariants.

pub mod app;
pub mod base_url;
pub mod bounded_file;
pub mod clock;
pub mod coordination;
pub mod doctor;
pub mod duration;
pub mod exchange;
pub mod executor;
pub mod graph;
pub mod history;
pub mod http;
pub mod identity;
pub mod keyvault;
pub mod notify;
pub mod runbook;
pub mod scheduler;
pub mod settings;
pub mod simulator;
pub mod telemetry;
pub mod timing;
