//! `doctor`: checks, in order, everything a worker needs and says what to fix.
//!
//! Owns the checks behind `runbook-worker doctor`: the identity source and its endpoint, a
//! token for Exchange and its claims (`roles`, `wids`), one harmless Exchange call, the
//! runbooks folder (readable, valid, not writable by others, allowed by the policy), the
//! state folder, the clock and the coordination storage. Two halves: [`gather`] does the
//! I/O through the other modules' public APIs and records what it saw as [`Facts`] (errors
//! included, never a token); [`evaluate`] is pure and turns facts into [`Finding`]s, each OK,
//! WARN, FAIL or SKIPPED (a later check that depends on a failed earlier one) with the fix.
//!
//! Knows no wire protocol and no token endpoint: it asks `identity` for a token, `exchange`
//! for one call, `runbook` to load the folder and `coordination` to probe. Does not print:
//! the command line renders the [`Report`]. Does not read the process environment: the
//! identity variables arrive as an [`IdentityEnvironment`].

mod evaluate;
mod facts;
mod gather;

use std::time::Duration;

use serde::Serialize;

use crate::app::Components;

pub use evaluate::{evaluate, grant_command, suggested_role};
pub use facts::{
    CallFacts, CoordinationFacts, Facts, IdentityFacts, LoosePermission, RunbookFacts,
    RunbookSummary, StateFacts, TokenFacts,
};
pub use gather::gather;

/// The path of the permissions script, as the fixes print it (relative to the repository
/// or release archive).
pub const GRANT_SCRIPT: &str = "deploy/permissions/grant-exchange-permissions.sh";

/// The cmdlet of the harmless call: every role Exchange accepts may run it.
pub const HARMLESS_CMDLET: &str = "Get-OrganizationConfig";

/// A clock difference beyond this is reported.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// The checks, in the order they run and are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Check {
    /// Which identity source is in use and whether its endpoint answers.
    IdentitySource,
    /// A token for the Exchange resource: audience, tenant, expiry.
    ExchangeToken,
    /// `roles` holds Exchange.ManageAsApp.
    ExchangeAppRole,
    /// `wids` holds an Entra role that can run the runbooks' cmdlets.
    DirectoryRole,
    /// One harmless call succeeds.
    ExchangeCall,
    /// The runbooks folder can be read.
    RunbooksFolder,
    /// Every runbook file is valid.
    RunbookFiles,
    /// Neither the folder nor a runbook file is writable by group or others.
    RunbookPermissions,
    /// Every cmdlet the runbooks call is allowed by `[policy]`.
    RunbookPolicy,
    /// The Graph token's `roles` hold every Graph app role the runbooks need.
    GraphRoles,
    /// The state folder is writable.
    StateFolder,
    /// The local clock agrees with the token's times.
    Clock,
    /// The coordination storage answers (when `kind = "azure-blob"`).
    Coordination,
}

impl Check {
    pub const ALL: [Check; 13] = [
        Check::IdentitySource,
        Check::ExchangeToken,
        Check::ExchangeAppRole,
        Check::DirectoryRole,
        Check::ExchangeCall,
        Check::RunbooksFolder,
        Check::RunbookFiles,
        Check::RunbookPermissions,
        Check::RunbookPolicy,
        Check::GraphRoles,
        Check::StateFolder,
        Check::Clock,
        Check::Coordination,
    ];

    /// The name printed and used in `--format json` (`exchange-app-role`).
    pub fn as_str(self) -> &'static str {
        match self {
            Check::IdentitySource => "identity-source",
            Check::ExchangeToken => "exchange-token",
            Check::ExchangeAppRole => "exchange-app-role",
            Check::DirectoryRole => "directory-role",
            Check::ExchangeCall => "exchange-call",
            Check::RunbooksFolder => "runbooks-folder",
            Check::RunbookFiles => "runbook-files",
            Check::RunbookPermissions => "runbook-permissions",
            Check::RunbookPolicy => "runbook-policy",
            Check::GraphRoles => "graph-roles",
            Check::StateFolder => "state-folder",
            Check::Clock => "clock",
            Check::Coordination => "coordination",
        }
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Ok,
    /// Works, but something deserves attention; does not fail `doctor`.
    Warn,
    Fail,
    /// Not checked because a check it depends on failed; the message says which.
    Skipped,
}

impl Status {
    /// The label printed in text output.
    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
            Status::Skipped => "SKIP",
        }
    }
}

/// The outcome of one check: what was found and, unless it is OK, what to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub check: Check,
    pub status: Status,
    pub message: String,
    pub fix: Option<String>,
}

/// Every finding, in check order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Report {
    pub findings: Vec<Finding>,
}

impl Report {
    /// True when no check failed (warnings and skips allowed): `doctor`'s exit status 0.
    pub fn passed(&self) -> bool {
        !self.findings.iter().any(|f| f.status == Status::Fail)
    }

    pub fn count(&self, status: Status) -> usize {
        self.findings.iter().filter(|f| f.status == status).count()
    }

    pub fn finding(&self, check: Check) -> Option<&Finding> {
        self.findings.iter().find(|f| f.check == check)
    }
}

/// How `doctor` does its I/O; [`DoctorOptions::default`] is what the command uses.
#[derive(Clone, Debug)]
pub struct DoctorOptions {
    /// Bounds the harmless Exchange call (`exchange.timeout` is meant for long jobs).
    pub call_timeout: Duration,
    /// Retries of the harmless call (at most `exchange.max_retries`): enough to ride out
    /// one 429 without keeping the operator waiting through a full backoff.
    pub call_retries: u32,
}

impl Default for DoctorOptions {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_secs(60),
            call_retries: 1,
        }
    }
}

/// Gathers the facts and evaluates them at the components' clock's current time.
pub async fn run(components: &Components, options: &DoctorOptions) -> Report {
    let facts = gather(components, options).await;
    evaluate(&facts, components.clock().now())
}
