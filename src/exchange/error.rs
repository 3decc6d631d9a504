//! What can go wrong calling a cmdlet, as variants callers act on. Every message names
//! the cmdlet and its target and says what to do; none ever contains a token.

use std::fmt;
use std::time::Duration;

use crate::identity::IdentityError;

/// The call an error is about: the cmdlet and its `Identity`, when it has one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Call {
    pub cmdlet: String,
    pub target: Option<String>,
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            Some(target) => write!(f, "{} on '{target}'", self.cmdlet),
            None => f.write_str(&self.cmdlet),
        }
    }
}

/// Where an operator fixes permission problems.
pub const PERMISSIONS_HELP: &str =
    "see the Permissions section of README.md and the scripts in deploy/permissions";

fn show_request_id(id: &Option<String>) -> String {
    id.as_deref()
        .map(|id| format!(", request-id {id}"))
        .unwrap_or_default()
}

fn show_hint(hint: &Option<String>) -> String {
    hint.as_deref()
        .map(|h| format!(" ({h})"))
        .unwrap_or_default()
}

fn show_wait(d: &Option<Duration>) -> String {
    d.map(|d| format!(", the service asked to wait {:.1}s", d.as_secs_f64()))
        .unwrap_or_default()
}

/// The call is boxed in every variant to keep `Result<_, ExchangeError>` small.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The `[exchange]` settings cannot work.
    #[error("invalid setting `exchange.{key}`: {message}")]
    Configuration { key: &'static str, message: String },

    /// No token could be had from the identity.
    #[error("{call}: cannot get a token for {resource}: {source}")]
    Token {
        call: Box<Call>,
        resource: String,
        // Boxed: identity errors carry enough context to make every `Result` of this
        // module large otherwise.
        #[source]
        source: Box<IdentityError>,
    },

    /// Still throttled (429) after every retry the policy allows.
    #[error(
        "{call}: throttled by Exchange Online after {attempts} attempts{}{}: lower exchange.max_concurrency or run the job at a quieter time",
        show_wait(retry_after),
        show_request_id(request_id)
    )]
    Throttled {
        call: Box<Call>,
        retry_after: Option<Duration>,
        attempts: u32,
        message: Option<String>,
        request_id: Option<String>,
    },

    /// 401: the token was refused, or the identity may not run this cmdlet.
    #[error(
        "{call}: unauthorized (401{}): {reason}{}: give the identity an Entra role Exchange accepts (Exchange Administrator or Exchange Recipient Administrator) and the Exchange.ManageAsApp permission; {PERMISSIONS_HELP}",
        show_request_id(request_id),
        show_hint(hint)
    )]
    Unauthorized {
        call: Box<Call>,
        reason: String,
        /// What the token's own claims suggest is missing.
        hint: Option<String>,
        request_id: Option<String>,
    },

    /// 403: missing app role or wrong audience. The reason is in `x-ms-diagnostics`.
    #[error(
        "{call}: forbidden (403{}): x-ms-diagnostics {}{}: the identity lacks the Exchange.ManageAsApp app role or its token is for another resource; {PERMISSIONS_HELP}",
        show_request_id(request_id), diagnostics.as_deref().unwrap_or("absent"), show_hint(hint)
    )]
    Forbidden {
        call: Box<Call>,
        diagnostics: Option<String>,
        request_id: Option<String>,
        hint: Option<String>,
    },

    /// The cmdlet ran and threw (or refused its parameters).
    #[error(
        "{call}: {} (HTTP {status}{}): {}",
        match class.as_deref() { Some(c) => format!("{}: {message}", c.rsplit('.').next().unwrap_or(c)), None => message.clone() },
        show_request_id(request_id),
        cmdlet_advice(class.as_deref(), *status)
    )]
    CmdletFailed {
        call: Box<Call>,
        status: u16,
        /// The .NET exception class, when the service named it.
        class: Option<String>,
        message: String,
        error_id: Option<String>,
        request_id: Option<String>,
    },

    /// The object does not exist (404 or `ManagementObjectNotFoundException`).
    #[error(
        "{call}: not found: {message}{}: check the identity; an object created minutes ago may not have replicated yet",
        show_request_id(request_id)
    )]
    NotFound {
        call: Box<Call>,
        message: String,
        request_id: Option<String>,
    },

    /// The cmdlet answered with a confirmation prompt instead of acting.
    #[error(
        "{call}: the service asked for confirmation and did nothing: {message}: do not pass Confirm=true to a non-interactive call"
    )]
    ConfirmationRequired { call: Box<Call>, message: String },

    /// A read got no answer within `exchange.timeout`.
    #[error(
        "{call}: no answer within {}: the service stops cmdlets after 15 minutes; split the work into smaller calls",
        humantime::format_duration(*after)
    )]
    Timeout { call: Box<Call>, after: Duration },

    /// The service could not be reached (before anything was sent).
    #[error("{call}: cannot reach Exchange Online: {source}: check DNS, proxy and outbound HTTPS")]
    Transport {
        call: Box<Call>,
        #[source]
        source: reqwest::Error,
    },

    /// A read kept failing with server errors until retries or time ran out.
    #[error(
        "{call}: Exchange Online kept failing ({message}) after {attempts} attempts{}: try again later",
        show_request_id(request_id)
    )]
    Unavailable {
        call: Box<Call>,
        status: Option<u16>,
        message: String,
        attempts: u32,
        request_id: Option<String>,
    },

    /// A write may or may not have been applied (a 5xx, a dropped connection, no answer)
    /// and was deliberately not replayed.
    #[error(
        "{call}: may or may not have been applied ({cause}{}); it was not retried: check the object's current state before running it again",
        show_request_id(request_id)
    )]
    OutcomeUnknown {
        call: Box<Call>,
        cause: String,
        request_id: Option<String>,
    },

    /// A later page failed: the records already read are not the whole answer.
    #[error(
        "{call}: results incomplete after {pages} pages ({records} records): {source}: run the call again"
    )]
    IncompleteResults {
        call: Box<Call>,
        pages: usize,
        records: u64,
        #[source]
        source: Box<ExchangeError>,
    },

    /// The service answered something this client will not follow or cannot read.
    #[error("{call}: {message}")]
    Protocol { call: Box<Call>, message: String },

    /// The caller cancelled the call.
    #[error("{call}: cancelled before it finished; a write may or may not have been applied")]
    Cancelled { call: Box<Call> },
}

fn cmdlet_advice(class: Option<&str>, status: u16) -> &'static str {
    let short = class.map(|c| c.rsplit('.').next().unwrap_or(c));
    match short {
        Some("CommandNotFoundException") => {
            "check the cmdlet name; app-only sessions cannot run every cmdlet, and the identity's role limits which ones exist"
        }
        Some("ParameterBindingException") => "check the parameter names and value types",
        Some("ManagementObjectAmbiguousException") => {
            "use an unambiguous identity such as the UPN or the ExternalDirectoryObjectId"
        }
        _ if status == 400 => "fix the parameters",
        _ => "fix the request or the object it targets",
    }
}

impl ExchangeError {
    /// The call the error is about, when it is about one.
    pub fn call(&self) -> Option<&Call> {
        match self {
            ExchangeError::Configuration { .. } => None,
            ExchangeError::Token { call, .. }
            | ExchangeError::Throttled { call, .. }
            | ExchangeError::Unauthorized { call, .. }
            | ExchangeError::Forbidden { call, .. }
            | ExchangeError::CmdletFailed { call, .. }
            | ExchangeError::NotFound { call, .. }
            | ExchangeError::ConfirmationRequired { call, .. }
            | ExchangeError::Timeout { call, .. }
            | ExchangeError::Transport { call, .. }
            | ExchangeError::Unavailable { call, .. }
            | ExchangeError::OutcomeUnknown { call, .. }
            | ExchangeError::IncompleteResults { call, .. }
            | ExchangeError::Protocol { call, .. }
            | ExchangeError::Cancelled { call } => Some(call.as_ref()),
        }
    }

    /// The service's `request-id`, for a support case.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            ExchangeError::Throttled { request_id, .. }
            | ExchangeError::Unauthorized { request_id, .. }
            | ExchangeError::Forbidden { request_id, .. }
            | ExchangeError::CmdletFailed { request_id, .. }
            | ExchangeError::NotFound { request_id, .. }
            | ExchangeError::Unavailable { request_id, .. }
            | ExchangeError::OutcomeUnknown { request_id, .. } => request_id.as_deref(),
            ExchangeError::IncompleteResults { source, .. } => source.request_id(),
            _ => None,
        }
    }

    /// True when a write behind this error may have been applied.
    pub fn may_have_applied(&self) -> bool {
        matches!(
            self,
            ExchangeError::OutcomeUnknown { .. } | ExchangeError::Cancelled { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call() -> Call {
        Call {
            cmdlet: "Set-Mailbox".into(),
            target: Some("a@contoso.com".into()),
        }
    }

    #[test]
    fn messages_name_the_cmdlet_the_target_and_what_to_do() {
        let table: Vec<(ExchangeError, &[&str])> = vec![
            (
                ExchangeError::Forbidden {
                    call: Box::new(call()),
                    diagnostics: Some("2000008;reason=\"no roles\"".into()),
                    request_id: Some("r-1".into()),
                    hint: Some("the token has no Exchange.ManageAsApp role".into()),
                },
                &[
                    "Set-Mailbox on 'a@contoso.com'",
                    "2000008",
                    "r-1",
                    "Exchange.ManageAsApp",
                    "deploy/permissions",
                ],
            ),
            (
                ExchangeError::CmdletFailed {
                    call: Box::new(call()),
                    status: 400,
                    class: Some("System.Management.Automation.ParameterBindingException".into()),
                    message: "A parameter cannot be found that matches parameter name 'Foo'."
                        .into(),
                    error_id: None,
                    request_id: None,
                },
                &[
                    "ParameterBindingException: A parameter cannot be found",
                    "check the parameter names",
                ],
            ),
            (
                ExchangeError::OutcomeUnknown {
                    call: Box::new(call()),
                    cause: "HTTP 502".into(),
                    request_id: None,
                },
                &[
                    "may or may not have been applied",
                    "not retried",
                    "check the object's current state",
                ],
            ),
            (
                ExchangeError::Throttled {
                    call: Box::new(call()),
                    retry_after: Some(Duration::from_millis(1500)),
                    attempts: 6,
                    message: None,
                    request_id: None,
                },
                &["after 6 attempts", "wait 1.5s", "exchange.max_concurrency"],
            ),
            (
                ExchangeError::Timeout {
                    call: Box::new(call()),
                    after: Duration::from_secs(960),
                },
                &["16m", "split the work"],
            ),
        ];
        for (error, needles) in table {
            let text = error.to_string();
            for needle in needles {
                assert!(text.contains(needle), "{text:?} lacks {needle:?}");
            }
            assert!(!text.ends_with('.'), "{text:?} ends with a period");
        }
    }
}
