//! What `doctor` found out, before any judgement. [`super::gather`] fills these in (the only
//! I/O); [`super::evaluate`] turns them into findings. Keeping the two apart is what lets
//! every rule be table-tested with hand-made facts.
//!
//! Nothing here holds a token: the identity part keeps the decoded claims and the expiry.

use std::path::PathBuf;

use chrono::{DateTime, Utc};

use crate::exchange::ExchangeError;
use crate::identity::{IdentityError, ProviderDescription, TokenClaims};
use crate::runbook::{PolicySettings, ValidationError};

/// Everything the checks look at.
#[derive(Debug)]
pub struct Facts {
    pub identity: IdentityFacts,
    /// The resource Exchange tokens must be issued for (`[exchange] cloud`).
    pub exchange_resource: String,
    /// `exchange.organization`, when set.
    pub exchange_organization: Option<String>,
    pub exchange_call: CallFacts,
    pub runbooks: RunbookFacts,
    /// The `roles` of a token for the Graph resource, or why none was had; `None` when no
    /// runbook needs a Graph role (no token is asked for then).
    pub graph_token_roles: Option<Result<Vec<String>, String>>,
    pub policy: PolicySettings,
    pub state: StateFacts,
    pub coordination: CoordinationFacts,
}

/// The identity source and the token it gave for Exchange.
// One value per doctor run: boxing the larger variant would only make readers unbox it.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum IdentityFacts {
    /// The settings and the environment name no usable source.
    Unresolved { error: IdentityError },
    /// The source was chosen; `token` is what asking it for an Exchange token gave.
    Resolved {
        source: ProviderDescription,
        token: Result<TokenFacts, IdentityError>,
    },
}

impl IdentityFacts {
    /// The token's facts, when there is a token.
    pub fn token(&self) -> Option<&TokenFacts> {
        match self {
            Self::Resolved {
                token: Ok(token), ..
            } => Some(token),
            _ => None,
        }
    }

    /// The token's claims, when there is a token and it is a JWT.
    pub fn claims(&self) -> Option<&TokenClaims> {
        self.token().and_then(|t| t.claims.as_ref())
    }
}

/// What a token says about itself; never the token.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenFacts {
    /// `None` when the token is not a JWT.
    pub claims: Option<TokenClaims>,
    /// What the endpoint said about expiry (the claims' `exp` wins when present).
    pub expires_on: DateTime<Utc>,
}

/// The one harmless Exchange call.
#[derive(Debug)]
pub enum CallFacts {
    /// There was no token to call with.
    NotAttempted,
    Answered {
        cmdlet: String,
        /// The organisation's name from the answer, when it had one.
        organization: Option<String>,
        warnings: Vec<String>,
    },
    Failed {
        cmdlet: String,
        error: ExchangeError,
    },
}

/// The runbooks folder and what loading it gave.
#[derive(Clone, Debug, Default)]
pub struct RunbookFacts {
    pub dir: PathBuf,
    /// Why the folder cannot be listed; the other fields are empty then.
    pub unreadable: Option<String>,
    /// Runbook files in the folder (`*.toml`, temporary and hidden files left out).
    pub files: usize,
    /// The runbooks that loaded.
    pub runbooks: Vec<RunbookSummary>,
    /// Every validation error, policy refusals included (kind `policy`).
    pub errors: Vec<ValidationError>,
    /// The folder or runbook files that others, or a group other than the authors', may
    /// write.
    pub loose_permissions: Vec<LoosePermission>,
    /// `runbooks.authors_group`, when set.
    pub authors_group: Option<AuthorsGroup>,
    /// The Graph app roles the valid runbooks need (see
    /// [`crate::runbook::permissions`]).
    pub graph_roles: Vec<crate::runbook::permissions::GraphRoleNeed>,
}

/// The group `runbooks.authors_group` names, and whether this machine knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthorsGroup {
    pub name: String,
    pub exists: bool,
}

/// One valid runbook, as far as the checks care.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunbookSummary {
    pub name: String,
    /// The cmdlets its steps call that are not reads, without repeats.
    pub writes: Vec<String>,
}

/// A path in the runbooks folder whose mode lets group or others write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoosePermission {
    pub path: PathBuf,
    /// The path's group, by name when this machine knows it.
    pub group: Option<String>,
    /// The permission bits (`0o666`).
    pub mode: u32,
}

/// Whether the worker can write its state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateFacts {
    /// A file was created in the folder and removed again.
    Writable {
        dir: PathBuf,
    },
    /// The folder does not exist; `under`, the nearest existing folder above it, is
    /// writable, so the worker can create it.
    WillBeCreated {
        dir: PathBuf,
        under: PathBuf,
    },
    NotWritable {
        dir: PathBuf,
        reason: String,
    },
}

/// Whether the coordination storage answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CoordinationFacts {
    /// `kind = "local"`: nothing to reach.
    Local,
    /// `target` is the container, SAS redacted.
    Reachable { target: String },
    /// `error` is the coordination error's message (redacted by that module).
    Unreachable { target: String, error: String },
}
