//! What can go wrong calling Microsoft Graph, as variants callers act on. Every message
//! names the method and path and says what to do; none ever contains a token.

use std::fmt;
use std::time::Duration;

use super::permissions::{GRANT_FLAG, GRANT_SCRIPT};
use crate::identity::IdentityError;

/// The call an error is about.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Call {
    pub method: String,
    /// The path without the query (`/v1.0/users`).
    pub path: String,
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Graph {} {}", self.method, self.path)
    }
}

fn show_request_id(id: &Option<String>) -> String {
    id.as_deref()
        .map(|id| format!(", request-id {id}"))
        .unwrap_or_default()
}

fn show_wait(d: &Option<Duration>) -> String {
    d.map(|d| format!(", the service asked to wait {:.1}s", d.as_secs_f64()))
        .unwrap_or_default()
}

fn grant_advice(role: &Option<String>) -> String {
    match role {
        Some(role) => format!(
            "the identity lacks the Graph application permission {role}: grant it with {GRANT_SCRIPT} {GRANT_FLAG} {role} (a token issued before the grant keeps its old roles until it expires)"
        ),
        None => format!(
            "the identity lacks a Graph application permission or the mailbox is outside its Exchange scope; grant the role with {GRANT_SCRIPT} {GRANT_FLAG} <role>"
        ),
    }
}

/// The call is boxed in every variant to keep `Result<_, GraphError>` small.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// The `[graph]` settings cannot work.
    #[error("invalid setting `graph.{key}`: {message}")]
    Configuration { key: &'static str, message: String },

    /// The request itself is malformed (path, header); nothing was sent.
    #[error("{call}: invalid request: {message}")]
    InvalidRequest { call: Box<Call>, message: String },

    /// No token could be had from the identity.
    #[error("{call}: cannot get a token for {resource}: {source}")]
    Token {
        call: Box<Call>,
        resource: String,
        #[source]
        source: Box<IdentityError>,
    },

    /// 401 even after a fresh token.
    #[error(
        "{call}: unauthorized (401{}): {message}: check that the identity's token is for the Graph resource of the configured cloud",
        show_request_id(request_id)
    )]
    Unauthorized {
        call: Box<Call>,
        message: String,
        request_id: Option<String>,
    },

    /// 403: a missing app role (`Authorization_RequestDenied`, `ErrorAccessDenied`).
    #[error(
        "{call}: forbidden (403 {code}{}): {message}: {}",
        show_request_id(request_id),
        grant_advice(missing_role)
    )]
    Forbidden {
        call: Box<Call>,
        code: String,
        message: String,
        /// The app role to grant, guessed from the call and the token's roles.
        missing_role: Option<String>,
        request_id: Option<String>,
    },

    /// 404: the user, group or resource does not exist.
    #[error(
        "{call}: not found ({code}{}): {message}: check the id or userPrincipalName; an object created minutes ago may not have replicated yet",
        show_request_id(request_id)
    )]
    NotFound {
        call: Box<Call>,
        code: String,
        message: String,
        request_id: Option<String>,
    },

    /// 400 and other definite refusals (409, 412, …): the request must change.
    #[error(
        "{call}: refused (HTTP {status} {code}{}): {message}",
        show_request_id(request_id)
    )]
    BadRequest {
        call: Box<Call>,
        status: u16,
        code: String,
        message: String,
        request_id: Option<String>,
    },

    /// Still throttled (429) after every retry the policy allows.
    #[error(
        "{call}: throttled by Microsoft Graph after {attempts} attempts{}{}: run the job at a quieter time or select fewer properties",
        show_wait(retry_after),
        show_request_id(request_id)
    )]
    Throttled {
        call: Box<Call>,
        retry_after: Option<Duration>,
        attempts: u32,
        request_id: Option<String>,
    },

    /// A read kept failing with server errors until retries or time ran out.
    #[error(
        "{call}: Microsoft Graph kept failing ({message}) after {attempts} attempts{}: try again later",
        show_request_id(request_id)
    )]
    Unavailable {
        call: Box<Call>,
        status: Option<u16>,
        message: String,
        attempts: u32,
        request_id: Option<String>,
    },

    /// A write may or may not have been applied and was deliberately not replayed.
    #[error(
        "{call}: may or may not have been applied ({cause}{}); it was not retried: check the object's current state before running it again",
        show_request_id(request_id)
    )]
    OutcomeUnknown {
        call: Box<Call>,
        cause: String,
        request_id: Option<String>,
    },

    /// The service could not be reached (nothing was sent).
    #[error("{call}: cannot reach Microsoft Graph: {source}: check DNS, proxy and outbound HTTPS")]
    Transport {
        call: Box<Call>,
        #[source]
        source: reqwest::Error,
    },

    /// An answer larger than `graph.max_response_bytes`.
    #[error(
        "{call}: the answer exceeds graph.max_response_bytes ({limit} bytes): request fewer properties with $select or a smaller $top"
    )]
    TooLarge { call: Box<Call>, limit: u64 },

    /// No answer within `graph.timeout`.
    #[error("{call}: no answer within {}: try a smaller $top", humantime::format_duration(*after))]
    Timeout { call: Box<Call>, after: Duration },

    /// A later page failed: the records already read are not the whole answer.
    #[error(
        "{call}: results incomplete after {pages} pages ({records} records): {source}: run the call again"
    )]
    IncompleteResults {
        call: Box<Call>,
        pages: usize,
        records: u64,
        #[source]
        source: Box<GraphError>,
    },

    /// The service answered something this client will not follow or cannot read.
    #[error("{call}: {message}")]
    Protocol { call: Box<Call>, message: String },

    /// The caller cancelled the call.
    #[error("{call}: cancelled before it finished; a write may or may not have been applied")]
    Cancelled { call: Box<Call> },
}

impl GraphError {
    /// The error behind an [`GraphError::IncompleteResults`], or this one.
    pub fn root(&self) -> &GraphError {
        match self {
            GraphError::IncompleteResults { source, .. } => source.root(),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call() -> Box<Call> {
        Box::new(Call {
            method: "GET".into(),
            path: "/v1.0/users".into(),
        })
    }

    #[test]
    fn a_forbidden_call_names_the_role_and_the_grant_command() {
        let error = GraphError::Forbidden {
            call: call(),
            code: "Authorization_RequestDenied".into(),
            message: "Insufficient privileges to complete the operation.".into(),
            missing_role: Some("User.Read.All".into()),
            request_id: Some("r-1".into()),
        };
        let text = error.to_string();
        assert!(text.contains("Graph GET /v1.0/users"), "{text}");
        assert!(text.contains("Authorization_RequestDenied"), "{text}");
        assert!(
            text.contains(
                "deploy/permissions/grant-exchange-permissions.sh --graph-role User.Read.All"
            ),
            "{text}"
        );
        assert!(text.contains("request-id r-1"), "{text}");
    }

    #[test]
    fn the_root_of_incomplete_results_is_the_page_error() {
        let error = GraphError::IncompleteResults {
            call: call(),
            pages: 2,
            records: 1998,
            source: Box::new(GraphError::TooLarge {
                call: call(),
                limit: 10,
            }),
        };
        assert!(matches!(error.root(), GraphError::TooLarge { .. }));
    }
}
