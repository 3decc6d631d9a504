//! The checks' rules: [`Facts`] in, [`Report`] out. Pure: the local time comes in as `now`.
//!
//! Each check is one function returning one [`Finding`]. A check whose input is missing
//! because an earlier check failed says so as [`Status::Skipped`] instead of repeating the
//! earlier failure. Fixes are commands or settings an operator can act on, with the ids
//! filled in from the token where the token has them.

use chrono::{DateTime, SecondsFormat, Utc};

use super::facts::{
    CallFacts, CoordinationFacts, Facts, IdentityFacts, RunbookFacts, RunbookSummary, StateFacts,
    TokenFacts,
};
use super::{Check, Finding, GRANT_SCRIPT, MAX_CLOCK_SKEW, Report, Status};
use crate::exchange::ExchangeError;
use crate::identity::claims::{
    DirectoryRole, EXCHANGE_MANAGE_AS_APP, EXCHANGE_MANAGE_AS_APP_ID, directory_role,
};
use crate::identity::{EndpointFault, IdentityError, TokenClaims};
use crate::runbook::ErrorKind;

/// What the token cache means for every permission fix.
const TOKEN_CACHE_NOTE: &str = "then wait: managed-identity tokens are cached for up to 24 hours, so a new grant can take that long to show up (runbook-worker token shows the current claims)";

/// Runs every check over `facts`; `now` is the local clock.
pub fn evaluate(facts: &Facts, now: DateTime<Utc>) -> Report {
    Report {
        findings: vec![
            identity_source(facts),
            exchange_token(facts, now),
            exchange_app_role(facts),
            directory_role_check(facts),
            exchange_call(facts),
            runbooks_folder(&facts.runbooks),
            runbook_files(&facts.runbooks),
            runbook_permissions(&facts.runbooks),
            runbook_policy(facts),
            graph_roles(facts),
            state_folder(&facts.state),
            clock(facts, now),
            coordination(&facts.coordination),
        ],
    }
}

fn ok(check: Check, message: impl Into<String>) -> Finding {
    Finding {
        check,
        status: Status::Ok,
        message: message.into(),
        fix: None,
    }
}

fn warn(check: Check, message: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding {
        check,
        status: Status::Warn,
        message: message.into(),
        fix: Some(fix.into()),
    }
}

fn fail(check: Check, message: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding {
        check,
        status: Status::Fail,
        message: message.into(),
        fix: Some(fix.into()),
    }
}

fn skipped(check: Check, reason: impl Into<String>) -> Finding {
    Finding {
        check,
        status: Status::Skipped,
        message: reason.into(),
        fix: None,
    }
}

/// Whether a token error means the endpoint itself is missing or not answering (as opposed
/// to answering with a refusal).
fn endpoint_failed(error: &IdentityError) -> bool {
    match error {
        IdentityError::NoEndpoint { .. }
        | IdentityError::Configuration { .. }
        | IdentityError::ShutDown => true,
        IdentityError::Exhausted { last, .. } => !matches!(last, EndpointFault::Status { .. }),
        _ => false,
    }
}

/// Why there is no token to look at, or `None` when there is one.
fn no_token_reason(identity: &IdentityFacts) -> Option<String> {
    match identity {
        IdentityFacts::Unresolved { .. } => {
            Some("no identity source (see identity-source)".to_string())
        }
        IdentityFacts::Resolved { token: Err(e), .. } if endpoint_failed(e) => {
            Some("the identity endpoint did not answer (see identity-source)".to_string())
        }
        IdentityFacts::Resolved { token: Err(_), .. } => {
            Some("no token (see exchange-token)".to_string())
        }
        IdentityFacts::Resolved { token: Ok(_), .. } => None,
    }
}

/// Why the claims cannot be read, or the claims.
fn claims_or_reason(identity: &IdentityFacts) -> Result<&TokenClaims, String> {
    if let Some(reason) = no_token_reason(identity) {
        return Err(reason);
    }
    identity
        .claims()
        .ok_or_else(|| "the token is not a JWT, so it has no claims to read".to_string())
}

// ---- 1. identity source ------------------------------------------------------------------

fn identity_source(facts: &Facts) -> Finding {
    let check = Check::IdentitySource;
    match &facts.identity {
        IdentityFacts::Unresolved { error } => fail(
            check,
            format!("no identity source can be used: {error}"),
            "fix the setting named above ([identity] in the settings file or RUNBOOK_WORKER__IDENTITY__*), or leave identity.source = \"auto\" where the platform provides an identity",
        ),
        IdentityFacts::Resolved { source, token } => {
            let used = format!(
                "{} ({}), {}, endpoint {}",
                source.source, source.reason, source.identity, source.endpoint
            );
            match token {
                Ok(_) => ok(check, format!("{used}: answered")),
                Err(e @ IdentityError::NoEndpoint { .. }) => fail(
                    check,
                    format!("{used}: {e}"),
                    "run doctor where the worker runs (an Azure VM, Container App or AKS pod with a managed identity assigned); on a VM, check that an identity is assigned and nothing blocks 169.254.169.254; on a laptop, az login and set identity.source = \"azure-cli\" (RUNBOOK_WORKER__IDENTITY__SOURCE=azure-cli)",
                ),
                Err(e) if endpoint_failed(e) => fail(
                    check,
                    format!("{used}: the endpoint did not answer: {e}"),
                    "check that the platform's identity endpoint is up (on a VM: az vm identity show; in Container Apps: the app's identity settings) and run doctor again",
                ),
                Err(_) => ok(
                    check,
                    format!("{used}: answered, but refused the token (see exchange-token)"),
                ),
            }
        }
    }
}

// ---- 2. token --------------------------------------------------------------------------

/// An instant as operators read it in logs: `2026-03-02T08:00:00Z`.
fn stamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `in 23h 59m` or `5m ago`, to the minute.
fn relative(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let minutes = |d: chrono::Duration| {
        let secs = u64::try_from(d.num_seconds()).unwrap_or(0);
        humantime::format_duration(std::time::Duration::from_secs(secs / 60 * 60)).to_string()
    };
    if at >= now {
        format!("in {}", minutes(at - now))
    } else {
        format!("{} ago", minutes(now - at))
    }
}

fn normalise_resource(resource: &str) -> String {
    resource.trim_end_matches('/').to_ascii_lowercase()
}

fn token_fix(error: &IdentityError) -> &'static str {
    match error {
        IdentityError::NotAssigned { .. } => {
            "assign the identity to this VM or app, or name the right one: identity.client_id takes a user-assigned identity's client id (not its principal id)"
        }
        IdentityError::Rejected { .. } => {
            "check identity.source and which identity is selected (identity.client_id, object_id or resource_id); the endpoint's message says what it refused"
        }
        IdentityError::Exhausted { .. } => {
            "the endpoint kept failing; run doctor again in a minute (IMDS answers 410 for up to 70 s while it updates)"
        }
        IdentityError::Credential { .. } => {
            "for identity.source = \"azure-cli\", run az login (with --tenant for the Exchange tenant); otherwise see the message"
        }
        _ => "see the message",
    }
}

fn exchange_token(facts: &Facts, now: DateTime<Utc>) -> Finding {
    let check = Check::ExchangeToken;
    let resource = &facts.exchange_resource;
    let token = match &facts.identity {
        IdentityFacts::Resolved {
            token: Ok(token), ..
        } => token,
        IdentityFacts::Resolved { token: Err(e), .. } if !endpoint_failed(e) => {
            return fail(check, format!("no token for {resource}: {e}"), token_fix(e));
        }
        other => {
            return skipped(
                check,
                no_token_reason(other).unwrap_or_else(|| "no token".to_string()),
            );
        }
    };
    let TokenFacts { claims, expires_on } = token;
    let Some(claims) = claims else {
        return warn(
            check,
            format!(
                "got a token for {resource}, expiring {} ({}), but it is not a JWT: its audience, tenant and roles cannot be checked",
                stamp(*expires_on),
                relative(*expires_on, now)
            ),
            "check identity.source: managed-identity endpoints hand out JWTs",
        );
    };
    let expires = claims.expires_at().unwrap_or(*expires_on);
    let audience = claims.aud.as_deref().unwrap_or("(none)");
    if normalise_resource(audience) != normalise_resource(resource) {
        return fail(
            check,
            format!("the token is for {audience}, not for {resource}"),
            "set exchange.cloud to the cloud of the Exchange tenant (global, gcc-high, dod, china); the token is requested for that cloud's resource",
        );
    }
    let described = format!(
        "for {audience}, tenant {}, expires {} ({})",
        claims.tid.as_deref().unwrap_or("(none)"),
        stamp(expires),
        relative(expires, now)
    );
    if claims.tid.is_none() && facts.exchange_organization.is_none() {
        return warn(
            check,
            format!("{described}; without a tid claim the tenant is unknown"),
            "set exchange.organization to the tenant's *.onmicrosoft.com domain",
        );
    }
    ok(check, described)
}

// ---- 3. app role -----------------------------------------------------------------------

/// Whether some runbook needs a role that may change things: one of them calls a
/// non-read cmdlet, or none could be read (so nothing is known).
fn needs_write(runbooks: &RunbookFacts) -> bool {
    runbooks.runbooks.is_empty() || runbooks.runbooks.iter().any(|r| !r.writes.is_empty())
}

fn exchange_roles(claims: &TokenClaims) -> Vec<&'static DirectoryRole> {
    claims
        .wids
        .iter()
        .filter_map(|w| directory_role(w))
        .filter(|r| r.exchange_read)
        .collect()
}

/// The `--role` to pass to the permissions script: a role the identity already has that
/// is enough (so the script leaves the roles alone), else the narrowest that fits what the
/// runbooks call: Exchange Administrator when any of them changes something (or they are
/// unknown), Global Reader when they only read.
pub fn suggested_role(claims: &TokenClaims, write: bool) -> &'static str {
    let held = exchange_roles(claims);
    let enough = held.iter().find(|r| r.exchange_write || !write);
    match enough {
        Some(role) => role.name,
        None if write => "Exchange Administrator",
        None => "Global Reader",
    }
}

/// The permissions script's command line for this identity: `--principal-id` with the
/// token's `oid`, else `--client-id` with its `appid`, else a placeholder to fill in.
pub fn grant_command(claims: &TokenClaims, role: &str) -> String {
    let who = match (&claims.oid, claims.client_id()) {
        (Some(oid), _) => format!("--principal-id {oid}"),
        (None, Some(app)) => format!("--client-id {app}"),
        (None, None) => "--principal-id <principal id of the identity>".to_string(),
    };
    format!("{GRANT_SCRIPT} {who} --role \"{role}\"")
}

fn grant_fix(claims: &TokenClaims, role: &str) -> String {
    format!(
        "{} (signed in with az login as a Global Administrator or Privileged Role Administrator; add --dry-run to see the changes first), {TOKEN_CACHE_NOTE}",
        grant_command(claims, role)
    )
}

/// The Graph token's `roles` against what the runbooks' Graph steps need.
fn graph_roles(facts: &Facts) -> Finding {
    let check = Check::GraphRoles;
    let needed = &facts.runbooks.graph_roles;
    if needed.is_empty() {
        return ok(check, "no runbook calls Microsoft Graph");
    }
    let held = match &facts.graph_token_roles {
        None => return skipped(check, "no token could be had (see identity-source)"),
        Some(Err(error)) => {
            return fail(
                check,
                format!("cannot get a token for Microsoft Graph: {error}"),
                "fix the identity first (identity-source, exchange-token)",
            );
        }
        Some(Ok(held)) => held,
    };
    let missing: Vec<&crate::runbook::permissions::GraphRoleNeed> = needed
        .iter()
        .filter(|n| !held.iter().any(|h| h.eq_ignore_ascii_case(&n.role)))
        .collect();
    if missing.is_empty() {
        let names: Vec<&str> = needed.iter().map(|n| n.role.as_str()).collect();
        return ok(
            check,
            format!("the Graph token's roles hold {}", names.join(", ")),
        );
    }
    let described: Vec<String> = missing
        .iter()
        .map(|n| {
            format!(
                "{} ({}), for {}",
                n.role,
                n.id,
                n.needed_by.first().map(String::as_str).unwrap_or("")
            )
        })
        .collect();
    let who = facts
        .identity
        .claims()
        .map(|c| grant_command(c, "none"))
        .unwrap_or_else(|| format!("{GRANT_SCRIPT} --principal-id <principal id> --role none"));
    let flags: String = missing
        .iter()
        .map(|n| format!(" {} {}", crate::graph::permissions::GRANT_FLAG, n.role))
        .collect();
    fail(
        check,
        format!(
            "the Graph token lacks app roles the runbooks need: {}",
            described.join("; ")
        ),
        format!("{who}{flags} (add --dry-run to see the changes first), {TOKEN_CACHE_NOTE}"),
    )
}

fn exchange_app_role(facts: &Facts) -> Finding {
    let check = Check::ExchangeAppRole;
    let claims = match claims_or_reason(&facts.identity) {
        Ok(claims) => claims,
        Err(reason) => return skipped(check, reason),
    };
    if claims.has_role(EXCHANGE_MANAGE_AS_APP) {
        return ok(check, format!("roles has {EXCHANGE_MANAGE_AS_APP}"));
    }
    let roles = if claims.roles.is_empty() {
        "roles is empty".to_string()
    } else {
        format!("roles has only {}", claims.roles.join(", "))
    };
    let v2 = if claims
        .roles
        .iter()
        .any(|r| r.to_ascii_lowercase().contains("managev2") || r.ends_with("V2"))
    {
        " (the V2 permissions are for the v2.0 preview endpoint; this API wants Exchange.ManageAsApp)"
    } else {
        ""
    };
    let role = suggested_role(claims, needs_write(&facts.runbooks));
    fail(
        check,
        format!(
            "the token lacks the {EXCHANGE_MANAGE_AS_APP} app role ({EXCHANGE_MANAGE_AS_APP_ID}) of Office 365 Exchange Online: {roles}{v2}"
        ),
        grant_fix(claims, role),
    )
}

// ---- 4. directory role -----------------------------------------------------------------

fn runbook_writes(runbooks: &[RunbookSummary]) -> String {
    runbooks
        .iter()
        .filter(|r| !r.writes.is_empty())
        .map(|r| format!("{} ({})", r.name, r.writes.join(", ")))
        .collect::<Vec<_>>()
        .join(", ")
}

fn names(roles: &[&DirectoryRole]) -> String {
    roles.iter().map(|r| r.name).collect::<Vec<_>>().join(", ")
}

fn directory_role_check(facts: &Facts) -> Finding {
    let check = Check::DirectoryRole;
    let claims = match claims_or_reason(&facts.identity) {
        Ok(claims) => claims,
        Err(reason) => return skipped(check, reason),
    };
    let held = exchange_roles(claims);
    let writers: Vec<&DirectoryRole> = held.iter().copied().filter(|r| r.exchange_write).collect();
    let other_wids: Vec<String> = claims
        .directory_roles()
        .into_iter()
        .filter(|(_, name)| name.is_none())
        .map(|(id, _)| id)
        .collect();
    let others = if other_wids.is_empty() {
        String::new()
    } else {
        format!(
            "; other role ids, not ones Exchange accepts: {}",
            other_wids.join(", ")
        )
    };
    let runbooks = &facts.runbooks;
    if !writers.is_empty() {
        return ok(
            check,
            format!(
                "wids has {}, which can run any of the runbooks' cmdlets{others}",
                names(&writers)
            ),
        );
    }
    if !held.is_empty() {
        let writes = runbook_writes(&runbooks.runbooks);
        if writes.is_empty() {
            let scope = if runbooks.runbooks.is_empty() {
                "no runbook is loaded yet, and a runbook that changes anything will be refused"
            } else {
                "enough: every loaded runbook only reads"
            };
            return ok(
                check,
                format!("wids has {} (read only); {scope}{others}", names(&held)),
            );
        }
        return warn(
            check,
            format!(
                "wids has only read roles ({}), but these runbooks call cmdlets that change things, which Exchange will refuse: {writes}",
                names(&held)
            ),
            format!(
                "{} (or \"Exchange Recipient Administrator\" for mailbox, contact, group and permission changes only), {TOKEN_CACHE_NOTE}",
                grant_command(claims, "Exchange Administrator")
            ),
        );
    }
    if let CallFacts::Answered { cmdlet, .. } = &facts.exchange_call {
        return warn(
            check,
            format!(
                "wids has no Entra role Exchange accepts{others}, yet {cmdlet} succeeded: the identity probably has an Exchange role group (RBAC for service principals), which tokens do not show"
            ),
            "make sure that role group covers every cmdlet the runbooks call, or assign an Entra role with the permissions script",
        );
    }
    let role = suggested_role(claims, needs_write(runbooks));
    fail(
        check,
        format!(
            "wids has no Entra role Exchange accepts (Exchange Administrator, Exchange Recipient Administrator, Global Reader, …){others}"
        ),
        format!(
            "{} or add the service principal to an Exchange role group, {TOKEN_CACHE_NOTE}",
            grant_command(claims, role)
        ),
    )
}

// ---- 5. harmless call ------------------------------------------------------------------

/// An organisation that is neither a GUID nor `*.onmicrosoft.com`: Exchange refuses vanity
/// domains in the URL.
fn is_custom_domain(organization: &str) -> bool {
    let org = organization.trim().to_ascii_lowercase();
    uuid::Uuid::parse_str(&org).is_err()
        && !org.ends_with(".onmicrosoft.com")
        && !org.ends_with(".onmicrosoft.us")
        && !org.ends_with(".partner.onmschina.cn")
}

fn call_fix(facts: &Facts, error: &ExchangeError) -> String {
    let claims = facts.identity.claims();
    let grant = |claims: &TokenClaims| {
        grant_fix(claims, suggested_role(claims, needs_write(&facts.runbooks)))
    };
    match error {
        ExchangeError::Forbidden { .. } => match claims {
            Some(c) if !c.has_role(EXCHANGE_MANAGE_AS_APP) => grant(c),
            _ => "x-ms-diagnostics says what Exchange refused: a token for another resource (exchange.cloud) or the wrong permission (Exchange.ManageV2 instead of Exchange.ManageAsApp)".to_string(),
        },
        ExchangeError::Unauthorized { reason, .. } => {
            if let Some(org) = facts.exchange_organization.as_deref().filter(|o| is_custom_domain(o)) {
                return format!(
                    "exchange.organization is {org:?}: Exchange does not accept a custom domain there; set the tenant's *.onmicrosoft.com domain or leave it empty (the token's tenant)"
                );
            }
            let lacks_role = claims.is_some_and(|c| exchange_roles(c).is_empty());
            if reason.contains("isn't supported") || lacks_role {
                return match claims {
                    Some(c) => format!(
                        "{} (see directory-role), {TOKEN_CACHE_NOTE}",
                        grant_command(c, suggested_role(c, needs_write(&facts.runbooks)))
                    ),
                    None => "assign the identity an Entra role Exchange accepts (see directory-role)".to_string(),
                };
            }
            if reason.contains("not allowed to call") {
                return "choose a wider role (--role \"Exchange Administrator\" with the permissions script) or role group".to_string();
            }
            match claims {
                Some(c) => format!(
                    "register the service principal in Exchange Online: Connect-ExchangeOnline as an admin, then New-ServicePrincipal -AppId {} -ObjectId {} -DisplayName runbook-worker",
                    c.client_id().unwrap_or("<client id>"),
                    c.oid.as_deref().unwrap_or("<principal id>")
                ),
                None => "check the identity's Exchange permissions (README: Grant the identity its Exchange permissions)".to_string(),
            }
        }
        ExchangeError::Transport { .. } => {
            "check DNS, the proxy and outbound HTTPS to Exchange Online (or exchange.endpoint, when set)".to_string()
        }
        ExchangeError::Throttled { .. }
        | ExchangeError::Unavailable { .. }
        | ExchangeError::Timeout { .. } => "Exchange Online is busy or failing; run doctor again later".to_string(),
        ExchangeError::Configuration { key, .. } => {
            format!("fix exchange.{key} in the settings")
        }
        ExchangeError::CmdletFailed { .. } | ExchangeError::NotFound { .. } => {
            "Exchange answered but the cmdlet failed: check exchange.organization and the identity's Exchange role".to_string()
        }
        _ => "see the message".to_string(),
    }
}

fn exchange_call(facts: &Facts) -> Finding {
    let check = Check::ExchangeCall;
    match &facts.exchange_call {
        CallFacts::NotAttempted => skipped(
            check,
            no_token_reason(&facts.identity)
                .unwrap_or_else(|| "no token to call Exchange with".to_string()),
        ),
        CallFacts::Answered {
            cmdlet,
            organization,
            warnings,
        } => {
            let org = organization
                .as_deref()
                .map(|o| format!(" for {o}"))
                .unwrap_or_default();
            let mut message = format!("{cmdlet} succeeded{org}");
            if !warnings.is_empty() {
                message.push_str(&format!(" (warnings: {})", warnings.join("; ")));
            }
            ok(check, message)
        }
        CallFacts::Failed { error, .. } => fail(check, error.to_string(), call_fix(facts, error)),
    }
}

// ---- 6. runbooks -----------------------------------------------------------------------

fn unreadable_reason(runbooks: &RunbookFacts) -> Option<String> {
    runbooks.unreadable.as_ref().map(|_| {
        format!(
            "the runbooks folder {} cannot be read (see runbooks-folder)",
            runbooks.dir.display()
        )
    })
}

fn runbooks_folder(runbooks: &RunbookFacts) -> Finding {
    let check = Check::RunbooksFolder;
    let dir = runbooks.dir.display();
    match &runbooks.unreadable {
        Some(reason) => fail(
            check,
            format!("cannot read the runbooks folder {dir}: {reason}"),
            "set runbooks.dir (RUNBOOK_WORKER__RUNBOOKS__DIR) to the folder holding the runbook files, readable by the user the worker runs as",
        ),
        None => ok(
            check,
            format!(
                "{dir} is readable and holds {} runbook files",
                runbooks.files
            ),
        ),
    }
}

/// `1 error`, `2 errors`.
fn plural(count: usize, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

/// Error lines, one per error, indented under the message.
fn listing(errors: &[&crate::runbook::ValidationError]) -> String {
    errors
        .iter()
        .map(|e| format!("\n  {e}"))
        .collect::<String>()
}

fn runbook_files(runbooks: &RunbookFacts) -> Finding {
    let check = Check::RunbookFiles;
    if let Some(reason) = unreadable_reason(runbooks) {
        return skipped(check, reason);
    }
    let dir = runbooks.dir.display();
    let invalid: Vec<_> = runbooks
        .errors
        .iter()
        .filter(|e| e.kind != ErrorKind::Policy)
        .collect();
    if !invalid.is_empty() {
        let mut files: Vec<&str> = invalid.iter().map(|e| e.file.as_str()).collect();
        files.sort_unstable();
        files.dedup();
        return fail(
            check,
            format!(
                "{} of {} runbook files are invalid and will not run ({}):{}",
                files.len(),
                runbooks.files,
                plural(invalid.len(), "error"),
                listing(&invalid)
            ),
            format!(
                "fix the files (runbook-worker validate {dir} lists the same errors); the valid ones run meanwhile"
            ),
        );
    }
    if runbooks.files == 0 {
        return warn(
            check,
            format!("{dir} holds no runbook files (*.toml)"),
            format!(
                "put runbook files into {dir}, or point runbooks.dir at the folder that has them"
            ),
        );
    }
    ok(check, format!("{} runbooks valid", runbooks.runbooks.len()))
}

fn runbook_permissions(runbooks: &RunbookFacts) -> Finding {
    let check = Check::RunbookPermissions;
    if let Some(reason) = unreadable_reason(runbooks) {
        return skipped(check, reason);
    }
    let dir = runbooks.dir.display();
    if let Some(group) = runbooks.authors_group.as_ref().filter(|g| !g.exists) {
        return warn(
            check,
            format!(
                "runbooks.authors_group names the group {:?}, which this machine does not have",
                group.name
            ),
            format!(
                "create it (groupadd --system {}) or correct runbooks.authors_group",
                shell_quote(&group.name)
            ),
        );
    }
    let authors = runbooks
        .authors_group
        .as_ref()
        .map(|g| {
            format!(
                " (group-writable for {} only, runbooks.authors_group)",
                g.name
            )
        })
        .unwrap_or_default();
    if runbooks.loose_permissions.is_empty() {
        return ok(
            check,
            format!(
                "neither {dir} nor its runbook files are writable by others{}",
                if authors.is_empty() {
                    " or a group".to_string()
                } else {
                    authors
                }
            ),
        );
    }
    let listed: Vec<String> = runbooks
        .loose_permissions
        .iter()
        .map(|p| match &p.group {
            // The group matters only where others cannot write anyway.
            Some(group) if p.mode & 0o002 == 0 => {
                format!("{} (mode {:04o}, group {group})", p.path.display(), p.mode)
            }
            _ => format!("{} (mode {:04o})", p.path.display(), p.mode),
        })
        .collect();
    let paths: Vec<String> = runbooks
        .loose_permissions
        .iter()
        .map(|p| shell_quote(&p.path.display().to_string()))
        .collect();
    // Group-write alone may be meant: the fix then names the setting that says so.
    let group_only = runbooks
        .loose_permissions
        .iter()
        .filter(|p| p.mode & 0o002 == 0)
        .find_map(|p| p.group.as_deref());
    let authors_hint = match (group_only, &runbooks.authors_group) {
        (Some(group), None) => format!(
            "; or, if members of {group} are meant to write runbooks, set runbooks.authors_group = \"{group}\""
        ),
        _ => String::new(),
    };
    warn(
        check,
        format!(
            "writable by {}: {}; anyone who can write there can run Exchange admin cmdlets with the worker's identity",
            if runbooks.authors_group.is_some() {
                "others or a group other than the authors'"
            } else {
                "group or others"
            },
            listed.join(", ")
        ),
        format!(
            "chmod go-w {}{authors_hint} (on an Azure Files share the mode bits do not say who can write: limit write access to the share instead)",
            paths.join(" ")
        ),
    )
}

/// Quotes a path for a shell command line when it needs it.
fn shell_quote(text: &str) -> String {
    let plain = text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+:,@".contains(c));
    if plain && !text.is_empty() {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

fn runbook_policy(facts: &Facts) -> Finding {
    let check = Check::RunbookPolicy;
    let runbooks = &facts.runbooks;
    if let Some(reason) = unreadable_reason(runbooks) {
        return skipped(check, reason);
    }
    let refused: Vec<_> = runbooks
        .errors
        .iter()
        .filter(|e| e.kind == ErrorKind::Policy)
        .collect();
    let rules = format!(
        "allow = {:?}, deny = {:?}",
        facts.policy.allow, facts.policy.deny
    );
    if refused.is_empty() {
        return ok(
            check,
            format!(
                "every cmdlet of the {} valid runbooks is allowed by [policy] ({rules})",
                runbooks.runbooks.len()
            ),
        );
    }
    fail(
        check,
        format!(
            "[policy] ({rules}) refuses the cmdlet of {}; their runbooks will not run:{}",
            plural(refused.len(), "step"),
            listing(&refused)
        ),
        "change the runbook, or allow the cmdlet in [policy] allow (RUNBOOK_WORKER__POLICY__ALLOW); Remove- and New- cmdlets need an allow entry that names their verb, such as \"Remove-MailboxPermission\"",
    )
}

// ---- 7. state, clock, coordination -------------------------------------------------------

fn state_folder(state: &StateFacts) -> Finding {
    let check = Check::StateFolder;
    match state {
        StateFacts::Writable { dir } => ok(check, format!("{} is writable", dir.display())),
        StateFacts::WillBeCreated { dir, under } => ok(
            check,
            format!(
                "{} does not exist yet; the worker creates it in {}, which is writable",
                dir.display(),
                under.display()
            ),
        ),
        StateFacts::NotWritable { dir, reason } => fail(
            check,
            format!(
                "the state folder {} is not writable: {reason}",
                dir.display()
            ),
            format!(
                "make {} a folder the worker's user can write (in a container: a volume owned by the image's user 65532), or set state.dir (RUNBOOK_WORKER__STATE__DIR)",
                dir.display()
            ),
        ),
    }
}

fn clock(facts: &Facts, now: DateTime<Utc>) -> Finding {
    let check = Check::Clock;
    let claims = match claims_or_reason(&facts.identity) {
        Ok(claims) => claims,
        Err(reason) => return skipped(check, format!("nothing to compare with: {reason}")),
    };
    let limit = chrono::Duration::from_std(MAX_CLOCK_SKEW).unwrap_or(chrono::Duration::MAX);
    let fix = "synchronise the clock (chrony or systemd-timesyncd; on Azure VMs the host's time source); schedules fire by it and tokens are checked against it";
    let nbf = claims.nbf.and_then(|s| DateTime::from_timestamp(s, 0));
    if let Some(nbf) = nbf
        && nbf - now > limit
    {
        return warn(
            check,
            format!(
                "the local clock ({}) is behind: the token just issued is valid only from {} ({} ahead)",
                stamp(now),
                stamp(nbf),
                relative(nbf, now).trim_start_matches("in ")
            ),
            fix,
        );
    }
    if let Some(exp) = claims.expires_at()
        && exp <= now
    {
        return warn(
            check,
            format!(
                "the local clock ({}) is ahead: the token just issued already expired at {}",
                stamp(now),
                stamp(exp)
            ),
            fix,
        );
    }
    ok(
        check,
        format!(
            "the local clock ({}) agrees with the token's validity (within {})",
            stamp(now),
            humantime::format_duration(MAX_CLOCK_SKEW)
        ),
    )
}

fn coordination(facts: &CoordinationFacts) -> Finding {
    let check = Check::Coordination;
    match facts {
        CoordinationFacts::Local => ok(check, "kind = \"local\": one replica, no storage to reach"),
        CoordinationFacts::Reachable { target } => ok(check, format!("{target} answered")),
        CoordinationFacts::Unreachable { target, error } => fail(
            check,
            format!("{target}: {error}"),
            "check coordination.container_url (or sas_url / sas_url_file), the network path to the storage account, and that the identity has Storage Blob Data Contributor on the container (or that the SAS allows read, write, create, delete, list and has not expired)",
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use chrono::TimeZone;

    use super::*;
    use crate::doctor::HARMLESS_CMDLET;
    use crate::doctor::facts::{AuthorsGroup, LoosePermission};
    use crate::exchange::error::Call;
    use crate::identity::claims::APP_ONLY_MARKER_WID;
    use crate::identity::{ProviderDescription, SourceKind};
    use crate::runbook::{PolicySettings, ValidationError};

    const OID: &str = "6f1e7c1a-0000-4000-8000-000000000001";
    const APPID: &str = "0b7d9f2c-0000-4000-8000-000000000002";
    const TID: &str = "5d1c2b3a-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
    const EXCHANGE_ADMIN: &str = "29232cdf-9323-42fd-ade2-1d097af3e4de";
    const RECIPIENT_ADMIN: &str = "31392ffb-586c-42d1-9346-e59415a2cc4e";
    const GLOBAL_READER: &str = "f2ef992c-3afb-46b9-b7cf-a126ee74c451";
    const RESOURCE: &str = "https://outlook.office365.com";

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 2, 8, 0, 0).unwrap()
    }

    fn claims(roles: &[&str], wids: &[&str]) -> TokenClaims {
        TokenClaims {
            tid: Some(TID.into()),
            aud: Some(RESOURCE.into()),
            oid: Some(OID.into()),
            appid: Some(APPID.into()),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            wids: wids.iter().map(|w| w.to_string()).collect(),
            exp: Some(now().timestamp() + 3600),
            nbf: Some(now().timestamp() - 60),
            ..TokenClaims::default()
        }
    }

    fn source() -> ProviderDescription {
        ProviderDescription {
            source: SourceKind::Imds,
            reason: "detected".into(),
            identity: "the system-assigned identity".into(),
            endpoint: "http://127.0.0.1:1/metadata/identity/oauth2/token".into(),
        }
    }

    fn with_token(claims: TokenClaims) -> IdentityFacts {
        IdentityFacts::Resolved {
            source: source(),
            token: Ok(TokenFacts {
                claims: Some(claims),
                expires_on: now() + chrono::Duration::hours(1),
            }),
        }
    }

    fn runbook(name: &str, writes: &[&str]) -> RunbookSummary {
        RunbookSummary {
            name: name.into(),
            writes: writes.iter().map(|w| w.to_string()).collect(),
        }
    }

    /// Everything fine: the token has the app role and Exchange Administrator, one runbook
    /// changes mailboxes, the call answered.
    fn good() -> Facts {
        Facts {
            identity: with_token(claims(
                &[EXCHANGE_MANAGE_AS_APP],
                &[APP_ONLY_MARKER_WID, EXCHANGE_ADMIN],
            )),
            exchange_resource: RESOURCE.into(),
            exchange_organization: None,
            exchange_call: CallFacts::Answered {
                cmdlet: HARMLESS_CMDLET.into(),
                organization: Some("contoso.onmicrosoft.com".into()),
                warnings: vec![],
            },
            runbooks: RunbookFacts {
                dir: PathBuf::from("/runbooks"),
                unreadable: None,
                files: 2,
                runbooks: vec![
                    runbook("report", &[]),
                    runbook("archive", &["Enable-Mailbox"]),
                ],
                errors: vec![],
                loose_permissions: vec![],
                authors_group: None,
                graph_roles: vec![],
            },
            graph_token_roles: None,
            policy: PolicySettings::default(),
            state: StateFacts::Writable {
                dir: PathBuf::from("/state"),
            },
            coordination: CoordinationFacts::Local,
        }
    }

    fn call() -> Box<Call> {
        Box::new(Call {
            cmdlet: HARMLESS_CMDLET.into(),
            target: None,
        })
    }

    fn forbidden() -> CallFacts {
        CallFacts::Failed {
            cmdlet: HARMLESS_CMDLET.into(),
            error: ExchangeError::Forbidden {
                call: call(),
                diagnostics: Some("2000008;reason=\"no permissions\"".into()),
                request_id: None,
                hint: None,
            },
        }
    }

    fn unauthorized(reason: &str) -> CallFacts {
        CallFacts::Failed {
            cmdlet: HARMLESS_CMDLET.into(),
            error: ExchangeError::Unauthorized {
                call: call(),
                reason: reason.into(),
                hint: None,
                request_id: None,
            },
        }
    }

    fn validation(file: &str, kind: ErrorKind, message: &str) -> ValidationError {
        ValidationError {
            file: file.into(),
            line: 3,
            column: 1,
            key: "steps[0].cmdlet".into(),
            kind,
            message: message.into(),
        }
    }

    fn no_endpoint() -> IdentityError {
        IdentityError::NoEndpoint {
            endpoint: "http://127.0.0.1:1/metadata/identity/oauth2/token".into(),
            cause: EndpointFault::Unreachable {
                endpoint: "http://127.0.0.1:1".into(),
                reason: "connection refused".into(),
            },
        }
    }

    /// (case, how to spoil the good facts, check, expected status, texts the message or
    /// the fix must contain)
    type Case = (
        &'static str,
        fn(&mut Facts),
        Check,
        Status,
        &'static [&'static str],
    );

    #[test]
    fn each_check_reports_what_is_wrong_and_the_fix() {
        let cases: Vec<Case> = vec![
            (
                "all good",
                |_| {},
                Check::ExchangeAppRole,
                Status::Ok,
                &["Exchange.ManageAsApp"],
            ),
            (
                "all good",
                |_| {},
                Check::DirectoryRole,
                Status::Ok,
                &["Exchange Administrator"],
            ),
            ("all good", |_| {}, Check::Clock, Status::Ok, &["agrees"]),
            (
                "all good",
                |_| {},
                Check::ExchangeToken,
                Status::Ok,
                &[TID, RESOURCE, "in 1h"],
            ),
            (
                "nothing answers",
                |f| {
                    f.identity = IdentityFacts::Resolved {
                        source: source(),
                        token: Err(no_endpoint()),
                    }
                },
                Check::IdentitySource,
                Status::Fail,
                &["not on Azure?", "identity.source", "azure-cli"],
            ),
            (
                "the endpoint keeps timing out",
                |f| {
                    f.identity = IdentityFacts::Resolved {
                        source: source(),
                        token: Err(IdentityError::Exhausted {
                            source_kind: SourceKind::Imds,
                            resource: RESOURCE.into(),
                            attempts: 6,
                            last: EndpointFault::Timeout {
                                endpoint: "x".into(),
                                timeout: Duration::from_secs(5),
                            },
                        }),
                    }
                },
                Check::IdentitySource,
                Status::Fail,
                &["did not answer"],
            ),
            (
                "identity not assigned",
                |f| {
                    f.identity = IdentityFacts::Resolved {
                        source: source(),
                        token: Err(IdentityError::NotAssigned {
                            source_kind: SourceKind::Imds,
                            identity: "the system-assigned identity".into(),
                            detail: String::new(),
                            hint: "assign one".into(),
                        }),
                    }
                },
                Check::ExchangeToken,
                Status::Fail,
                &["HTTP 400", "client id (not its principal id)"],
            ),
            (
                "identity not assigned",
                |f| {
                    f.identity = IdentityFacts::Resolved {
                        source: source(),
                        token: Err(IdentityError::NotAssigned {
                            source_kind: SourceKind::Imds,
                            identity: "x".into(),
                            detail: String::new(),
                            hint: "h".into(),
                        }),
                    }
                },
                Check::IdentitySource,
                Status::Ok,
                &["refused the token"],
            ),
            (
                "wrong audience",
                |f| {
                    let mut c = claims(&[EXCHANGE_MANAGE_AS_APP], &[EXCHANGE_ADMIN]);
                    c.aud = Some("https://outlook.office365.us".into());
                    f.identity = with_token(c);
                },
                Check::ExchangeToken,
                Status::Fail,
                &["not for https://outlook.office365.com", "exchange.cloud"],
            ),
            (
                "no app role",
                |f| f.identity = with_token(claims(&[], &[EXCHANGE_ADMIN])),
                Check::ExchangeAppRole,
                Status::Fail,
                &[
                    "roles is empty",
                    "grant-exchange-permissions.sh --principal-id 6f1e7c1a-0000-4000-8000-000000000001 --role \"Exchange Administrator\"",
                    "24 hours",
                ],
            ),
            (
                "the V2 permission instead of the app role",
                |f| f.identity = with_token(claims(&["Exchange.ManageAsAppV2"], &[EXCHANGE_ADMIN])),
                Check::ExchangeAppRole,
                Status::Fail,
                &["Exchange.ManageAsAppV2", "v2.0 preview"],
            ),
            (
                "no directory role",
                |f| {
                    f.identity =
                        with_token(claims(&[EXCHANGE_MANAGE_AS_APP], &[APP_ONLY_MARKER_WID]));
                    f.exchange_call = unauthorized(
                        "The role assigned to application x isn't supported in this scenario.",
                    );
                },
                Check::DirectoryRole,
                Status::Fail,
                &[
                    "no Entra role",
                    "--principal-id 6f1e7c1a-0000-4000-8000-000000000001",
                    "role group",
                ],
            ),
            (
                "an unknown role only",
                |f| {
                    f.identity = with_token(claims(
                        &[EXCHANGE_MANAGE_AS_APP],
                        &["11111111-0000-0000-0000-000000000000"],
                    ));
                    f.exchange_call = unauthorized(
                        "The role assigned to application x isn't supported in this scenario.",
                    );
                },
                Check::DirectoryRole,
                Status::Fail,
                &["other role ids", "11111111-0000-0000-0000-000000000000"],
            ),
            (
                "no directory role, yet the call worked (role group)",
                |f| {
                    f.identity =
                        with_token(claims(&[EXCHANGE_MANAGE_AS_APP], &[APP_ONLY_MARKER_WID]))
                },
                Check::DirectoryRole,
                Status::Warn,
                &["role group"],
            ),
            (
                "read roles and a runbook that writes",
                |f| f.identity = with_token(claims(&[EXCHANGE_MANAGE_AS_APP], &[GLOBAL_READER])),
                Check::DirectoryRole,
                Status::Warn,
                &[
                    "Global Reader",
                    "archive (Enable-Mailbox)",
                    "--role \"Exchange Administrator\"",
                ],
            ),
            (
                "read roles and only reading runbooks",
                |f| {
                    f.identity = with_token(claims(&[EXCHANGE_MANAGE_AS_APP], &[GLOBAL_READER]));
                    f.runbooks.runbooks = vec![runbook("report", &[])];
                },
                Check::DirectoryRole,
                Status::Ok,
                &["read only", "every loaded runbook only reads"],
            ),
            (
                "a narrower write role",
                |f| f.identity = with_token(claims(&[EXCHANGE_MANAGE_AS_APP], &[RECIPIENT_ADMIN])),
                Check::DirectoryRole,
                Status::Ok,
                &["Exchange Recipient Administrator"],
            ),
            (
                "403 on the call",
                |f| {
                    f.identity = with_token(claims(&[], &[EXCHANGE_ADMIN]));
                    f.exchange_call = forbidden();
                },
                Check::ExchangeCall,
                Status::Fail,
                &[
                    "forbidden (403",
                    "2000008",
                    "--principal-id 6f1e7c1a-0000-4000-8000-000000000001",
                ],
            ),
            (
                "401 although both permissions are there",
                |f| f.exchange_call = unauthorized("UnAuthorized"),
                Check::ExchangeCall,
                Status::Fail,
                &[
                    "New-ServicePrincipal -AppId 0b7d9f2c-0000-4000-8000-000000000002 -ObjectId 6f1e7c1a-0000-4000-8000-000000000001",
                ],
            ),
            (
                "401 with a custom domain",
                |f| {
                    f.exchange_organization = Some("contoso.com".into());
                    f.exchange_call = unauthorized("The tenant is not accepted");
                },
                Check::ExchangeCall,
                Status::Fail,
                &["custom domain", "*.onmicrosoft.com"],
            ),
            (
                "no token, so no call",
                |f| {
                    f.identity = IdentityFacts::Resolved {
                        source: source(),
                        token: Err(no_endpoint()),
                    };
                    f.exchange_call = CallFacts::NotAttempted;
                },
                Check::ExchangeCall,
                Status::Skipped,
                &["identity endpoint did not answer"],
            ),
            (
                "unreadable folder",
                |f| f.runbooks.unreadable = Some("No such file or directory".into()),
                Check::RunbooksFolder,
                Status::Fail,
                &["/runbooks", "No such file", "runbooks.dir"],
            ),
            (
                "unreadable folder",
                |f| f.runbooks.unreadable = Some("No such file or directory".into()),
                Check::RunbookFiles,
                Status::Skipped,
                &["see runbooks-folder"],
            ),
            (
                "an invalid file",
                |f| {
                    f.runbooks.errors = vec![validation(
                        "/runbooks/bad.toml",
                        ErrorKind::Syntax,
                        "expected `=`",
                    )]
                },
                Check::RunbookFiles,
                Status::Fail,
                &[
                    "1 of 2 runbook files are invalid",
                    "/runbooks/bad.toml:3:1: expected `=`",
                    "runbook-worker validate /runbooks",
                ],
            ),
            (
                "a policy refusal is not an invalid file",
                |f| {
                    f.runbooks.errors = vec![validation(
                        "/runbooks/rm.toml",
                        ErrorKind::Policy,
                        "Remove-Mailbox is not allowed",
                    )]
                },
                Check::RunbookFiles,
                Status::Ok,
                &["2 runbooks valid"],
            ),
            (
                "a policy refusal",
                |f| {
                    f.runbooks.errors = vec![validation(
                        "/runbooks/rm.toml",
                        ErrorKind::Policy,
                        "Remove-Mailbox is not allowed",
                    )]
                },
                Check::RunbookPolicy,
                Status::Fail,
                &["/runbooks/rm.toml:3:1: Remove-Mailbox", "[policy] allow"],
            ),
            (
                "no runbook files",
                |f| {
                    f.runbooks.files = 0;
                    f.runbooks.runbooks.clear();
                },
                Check::RunbookFiles,
                Status::Warn,
                &["no runbook files"],
            ),
            (
                "a group-writable folder of another group, no authors group set",
                |f| {
                    f.runbooks.loose_permissions = vec![LoosePermission {
                        path: PathBuf::from("/runbooks"),
                        group: Some("staff".into()),
                        mode: 0o2775,
                    }]
                },
                Check::RunbookPermissions,
                Status::Warn,
                &[
                    "/runbooks (mode 2775, group staff)",
                    "runbooks.authors_group = \"staff\"",
                ],
            ),
            (
                "an authors group that does not exist",
                |f| {
                    f.runbooks.authors_group = Some(AuthorsGroup {
                        name: "runbook-authors".into(),
                        exists: false,
                    })
                },
                Check::RunbookPermissions,
                Status::Warn,
                &["runbook-authors", "groupadd --system runbook-authors"],
            ),
            (
                "the authors group writes and nobody else",
                |f| {
                    f.runbooks.authors_group = Some(AuthorsGroup {
                        name: "runbook-authors".into(),
                        exists: true,
                    })
                },
                Check::RunbookPermissions,
                Status::Ok,
                &["group-writable for runbook-authors only"],
            ),
            (
                "a world-writable file",
                |f| {
                    f.runbooks.loose_permissions = vec![LoosePermission {
                        path: PathBuf::from("/runbooks/a b.toml"),
                        group: None,
                        mode: 0o666,
                    }]
                },
                Check::RunbookPermissions,
                Status::Warn,
                &[
                    "/runbooks/a b.toml (mode 0666)",
                    "Exchange admin cmdlets",
                    "chmod go-w '/runbooks/a b.toml'",
                ],
            ),
            (
                "state not writable",
                |f| {
                    f.state = StateFacts::NotWritable {
                        dir: PathBuf::from("/state"),
                        reason: "Permission denied".into(),
                    }
                },
                Check::StateFolder,
                Status::Fail,
                &["/state", "Permission denied", "state.dir"],
            ),
            (
                "state created later",
                |f| {
                    f.state = StateFacts::WillBeCreated {
                        dir: PathBuf::from("/srv/state"),
                        under: PathBuf::from("/srv"),
                    }
                },
                Check::StateFolder,
                Status::Ok,
                &["creates it in /srv"],
            ),
            (
                "local clock behind",
                |f| {
                    let mut c = claims(&[EXCHANGE_MANAGE_AS_APP], &[EXCHANGE_ADMIN]);
                    c.nbf = Some(now().timestamp() + 600);
                    c.exp = Some(now().timestamp() + 4200);
                    f.identity = with_token(c);
                },
                Check::Clock,
                Status::Warn,
                &["behind", "10m ahead", "synchronise"],
            ),
            (
                "local clock ahead",
                |f| {
                    let mut c = claims(&[EXCHANGE_MANAGE_AS_APP], &[EXCHANGE_ADMIN]);
                    c.nbf = Some(now().timestamp() - 7200);
                    c.exp = Some(now().timestamp() - 60);
                    f.identity = with_token(c);
                },
                Check::Clock,
                Status::Warn,
                &["ahead", "already expired"],
            ),
            (
                "a small skew is fine",
                |f| {
                    let mut c = claims(&[EXCHANGE_MANAGE_AS_APP], &[EXCHANGE_ADMIN]);
                    c.nbf = Some(now().timestamp() + 120);
                    f.identity = with_token(c);
                },
                Check::Clock,
                Status::Ok,
                &["agrees"],
            ),
            (
                "storage unreachable",
                |f| {
                    f.coordination = CoordinationFacts::Unreachable {
                        target: "https://acct.blob.core.windows.net/c".into(),
                        error: "coordination storage is unreachable".into(),
                    }
                },
                Check::Coordination,
                Status::Fail,
                &["acct.blob", "Storage Blob Data Contributor"],
            ),
        ];
        for (case, spoil, check, status, needles) in cases {
            let mut facts = good();
            spoil(&mut facts);
            let report = evaluate(&facts, now());
            let finding = report.finding(check).expect("every check reports");
            assert_eq!(finding.status, status, "{case}: {finding:?}");
            let text = format!(
                "{} {}",
                finding.message,
                finding.fix.as_deref().unwrap_or("")
            );
            for needle in needles {
                assert!(text.contains(needle), "{case}: {needle:?} not in {text:?}");
            }
            assert_eq!(
                finding.fix.is_some(),
                matches!(status, Status::Warn | Status::Fail),
                "{case}: a warning or failure says what to do, nothing else does"
            );
            assert!(
                !finding.message.ends_with('.'),
                "{case}: {:?}",
                finding.message
            );
        }
    }

    #[test]
    fn graph_roles_the_runbooks_need_are_checked_against_the_graph_token() {
        use crate::runbook::permissions::GraphRoleNeed;
        let need = |role: &str| GraphRoleNeed {
            role: role.into(),
            id: crate::graph::permissions::app_role_id(role).unwrap().into(),
            needed_by: vec![format!("leavers/disabled: GET /v1.0/users ({role})")],
        };
        let graph_check = |facts: &Facts| {
            evaluate(facts, now())
                .findings
                .into_iter()
                .find(|f| f.check == Check::GraphRoles)
                .unwrap()
        };
        let mut facts = good();
        facts.runbooks.graph_roles = vec![need("GroupMember.Read.All"), need("User.Read.All")];
        facts.graph_token_roles = Some(Ok(vec!["user.read.all".into()]));
        let finding = graph_check(&facts);
        assert_eq!(finding.status, Status::Fail, "{finding:?}");
        assert!(
            finding
                .message
                .contains("GroupMember.Read.All (98830695-27a2-44f7-8c18-0c3ebc9698f6)"),
            "{finding:?}"
        );
        assert!(!finding.message.contains("User.Read.All ("), "{finding:?}");
        let fix = finding.fix.unwrap();
        assert!(
            fix.contains("--role \"none\" --graph-role GroupMember.Read.All"),
            "{fix}"
        );

        facts.graph_token_roles = Some(Ok(vec![
            "User.Read.All".into(),
            "GroupMember.Read.All".into(),
        ]));
        assert_eq!(graph_check(&facts).status, Status::Ok);
        facts.graph_token_roles = Some(Err("IMDS refused".into()));
        assert_eq!(graph_check(&facts).status, Status::Fail);
        facts.graph_token_roles = None;
        assert_eq!(graph_check(&facts).status, Status::Skipped);
    }

    #[test]
    fn the_checks_come_in_order_and_all_pass_on_good_facts() {
        let report = evaluate(&good(), now());
        let order: Vec<Check> = report.findings.iter().map(|f| f.check).collect();
        assert_eq!(order, Check::ALL.to_vec());
        assert!(report.passed());
        assert_eq!(report.count(Status::Ok), Check::ALL.len(), "{report:#?}");
    }

    #[test]
    fn a_missing_endpoint_fails_once_and_skips_what_depends_on_a_token() {
        let mut facts = good();
        facts.identity = IdentityFacts::Resolved {
            source: source(),
            token: Err(no_endpoint()),
        };
        facts.exchange_call = CallFacts::NotAttempted;
        let report = evaluate(&facts, now());
        assert!(!report.passed());
        assert_eq!(report.count(Status::Fail), 1, "{report:#?}");
        for check in [
            Check::ExchangeToken,
            Check::ExchangeAppRole,
            Check::DirectoryRole,
            Check::ExchangeCall,
            Check::Clock,
        ] {
            assert_eq!(
                report.finding(check).map(|f| f.status),
                Some(Status::Skipped),
                "{check}"
            );
        }
        // The local checks do not depend on the identity.
        assert_eq!(
            report.finding(Check::StateFolder).unwrap().status,
            Status::Ok
        );
    }

    #[test]
    fn warnings_alone_pass() {
        let mut facts = good();
        facts.identity = with_token(claims(&[EXCHANGE_MANAGE_AS_APP], &[GLOBAL_READER]));
        facts.runbooks.loose_permissions = vec![LoosePermission {
            path: PathBuf::from("/runbooks"),
            group: None,
            mode: 0o777,
        }];
        let report = evaluate(&facts, now());
        assert_eq!(report.count(Status::Warn), 2, "{report:#?}");
        assert!(report.passed());
    }

    #[test]
    fn the_suggested_role_keeps_a_sufficient_one_and_is_otherwise_the_narrowest_that_fits() {
        let table: Vec<(&[&str], bool, &str)> = vec![
            (&[], true, "Exchange Administrator"),
            (&[], false, "Global Reader"),
            (&[APP_ONLY_MARKER_WID], false, "Global Reader"),
            (&[GLOBAL_READER], false, "Global Reader"),
            (&[GLOBAL_READER], true, "Exchange Administrator"),
            (&[RECIPIENT_ADMIN], true, "Exchange Recipient Administrator"),
            (
                &[RECIPIENT_ADMIN],
                false,
                "Exchange Recipient Administrator",
            ),
        ];
        for (wids, write, expected) in table {
            assert_eq!(
                suggested_role(&claims(&[], wids), write),
                expected,
                "{wids:?} {write}"
            );
        }
    }

    #[test]
    fn the_grant_command_names_the_principal_by_the_best_id_the_token_has() {
        let mut c = claims(&[], &[]);
        assert_eq!(
            grant_command(&c, "Global Reader"),
            format!("{GRANT_SCRIPT} --principal-id {OID} --role \"Global Reader\"")
        );
        c.oid = None;
        assert!(grant_command(&c, "x").contains(&format!("--client-id {APPID}")));
        c.appid = None;
        assert!(grant_command(&c, "x").contains("--principal-id <principal id of the identity>"));
    }

    #[test]
    fn custom_domains_are_told_apart_from_tenant_names() {
        let table = [
            ("contoso.com", true),
            ("contoso.onmicrosoft.com", false),
            ("CONTOSO.OnMicrosoft.com", false),
            ("8f0c2b7e-5d1a-4c3b-9e6f-1a2b3c4d5e6f", false),
            ("contoso.onmicrosoft.us", false),
        ];
        for (org, custom) in table {
            assert_eq!(is_custom_domain(org), custom, "{org}");
        }
    }
}
