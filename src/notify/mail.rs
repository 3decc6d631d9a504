//! Email through Microsoft Graph `sendMail`, behind the [`MailSender`] trait so that the
//! Graph client being built in `src/graph` can take over later.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use url::Url;

use super::deliver::{read_capped, retry_after};
use crate::clock::SharedClock;
use crate::identity::TokenSource;

/// The resource the worker asks its identity for to call Microsoft Graph.
pub const GRAPH_RESOURCE: &str = "https://graph.microsoft.com";

/// One message to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailMessage {
    pub subject: String,
    pub html_body: String,
    pub to: Vec<String>,
}

/// Why a message was not accepted. Messages never contain a token.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("no token for Microsoft Graph: {0}")]
    Token(String),
    #[error("Microsoft Graph answered {status}{}: {message}", code.as_deref().map(|c| format!(" {c}")).unwrap_or_default())]
    Refused {
        status: u16,
        code: Option<String>,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("cannot reach Microsoft Graph: {0}")]
    Transport(String),
}

impl MailError {
    /// `Some(retry_after)` when another attempt may succeed (throttled, unavailable,
    /// unreachable); `None` when it would fail the same way.
    pub fn retry(&self) -> Option<Option<Duration>> {
        match self {
            MailError::Refused {
                status,
                retry_after,
                ..
            } if *status == 429 || *status >= 500 => Some(*retry_after),
            MailError::Refused { .. } => None,
            MailError::Transport(_) | MailError::Token(_) => Some(None),
        }
    }

    /// What to do about it, for the operator.
    pub fn hint(&self) -> Option<String> {
        match self {
            MailError::Refused { status: 403, .. } => Some(
                "the identity may not send as this mailbox: grant the Microsoft Graph application permission Mail.Send, \
                 or in Exchange Online assign \"Application Mail.Send\" through RBAC for Applications with a scope that includes the `from` mailbox"
                    .to_string(),
            ),
            MailError::Refused { status: 401, .. } => {
                Some("the token was refused: check the identity's tenant and that it is a token for https://graph.microsoft.com".to_string())
            }
            MailError::Refused { status: 404, .. } | MailError::Refused { status: 400, .. } => Some(
                "check `from`: it must be an Exchange Online mailbox (a user or shared mailbox address)".to_string(),
            ),
            MailError::Token(_) => Some("run `runbook-worker token --resource https://graph.microsoft.com` to see why".to_string()),
            _ => None,
        }
    }
}

/// Sends mail as a mailbox.
#[async_trait]
pub trait MailSender: Send + Sync + 'static {
    async fn send_mail(&self, from: &str, message: MailMessage) -> Result<(), MailError>;
}

/// `POST {graph}/v1.0/users/{from}/sendMail` with the worker's identity (app role
/// `Mail.Send`); 202 means accepted for delivery.
pub struct GraphMailSender {
    tokens: Arc<dyn TokenSource>,
    base: Url,
    http: reqwest::Client,
    clock: SharedClock,
}

impl std::fmt::Debug for GraphMailSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphMailSender")
            .field("base", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

impl GraphMailSender {
    /// `base` is `notify.graph_endpoint` (https://graph.microsoft.com in production).
    pub fn new(
        tokens: Arc<dyn TokenSource>,
        base: Url,
        http: reqwest::Client,
        clock: SharedClock,
    ) -> Self {
        Self {
            tokens,
            base,
            http,
            clock,
        }
    }

    fn url(&self, from: &str) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments
                .pop_if_empty()
                .extend(["v1.0", "users", from, "sendMail"]);
        }
        url
    }
}

#[async_trait]
impl MailSender for GraphMailSender {
    async fn send_mail(&self, from: &str, message: MailMessage) -> Result<(), MailError> {
        let token = self
            .tokens
            .token(GRAPH_RESOURCE)
            .await
            .map_err(|e| MailError::Token(e.to_string()))?;
        let recipients: Vec<_> = message
            .to
            .iter()
            .map(|a| json!({ "emailAddress": { "address": a } }))
            .collect();
        let body = json!({
            "message": {
                "subject": message.subject,
                "body": { "contentType": "HTML", "content": message.html_body },
                "toRecipients": recipients,
            },
            "saveToSentItems": false,
        });
        let response = self
            .http
            .post(self.url(from))
            .bearer_auth(token.expose())
            .json(&body)
            .send()
            .await
            .map_err(|e| MailError::Transport(super::deliver::describe(&e)))?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        let retry_after = retry_after(&response, self.clock.now());
        let text = read_capped(response).await;
        let (code, message) = parse_graph_error(&text);
        Err(MailError::Refused {
            status,
            code,
            message,
            retry_after,
        })
    }
}

/// `{"error":{"code","message"}}`, or the start of whatever came back.
pub(crate) fn parse_graph_error(text: &str) -> (Option<String>, String) {
    let parsed: Option<serde_json::Value> = serde_json::from_str(text).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let code = error
        .and_then(|e| e.get("code"))
        .and_then(|c| c.as_str())
        .map(str::to_string);
    let message = error
        .and_then(|e| e.get("message"))
        .and_then(|m| m.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| {
            let t = text.trim();
            if t.is_empty() {
                "no details".to_string()
            } else {
                t.chars().take(300).collect()
            }
        });
    (code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graph_errors_are_parsed_and_403_names_mail_send_and_rbac() {
        let (code, message) = parse_graph_error(
            r#"{"error":{"code":"ErrorAccessDenied","message":"Access is denied."}}"#,
        );
        assert_eq!(code.as_deref(), Some("ErrorAccessDenied"));
        assert_eq!(message, "Access is denied.");
        let e = MailError::Refused {
            status: 403,
            code,
            message,
            retry_after: None,
        };
        assert!(e.retry().is_none());
        let hint = e.hint().unwrap();
        assert!(
            hint.contains("Mail.Send") && hint.contains("RBAC for Applications"),
            "{hint}"
        );
        assert_eq!(parse_graph_error("oops").1, "oops");
        let throttled = MailError::Refused {
            status: 429,
            code: None,
            message: String::new(),
            retry_after: Some(Duration::from_secs(3)),
        };
        assert_eq!(throttled.retry(), Some(Some(Duration::from_secs(3))));
    }
}
