//! The three message shapes (pure): the webhook JSON body, the Teams Adaptive Card and the
//! email's subject and HTML body. Every free-text field is capped so that one huge error
//! cannot make a message the receiver refuses.

use serde::Serialize;
use serde_json::{Value, json};
use url::Url;

use super::event::{JobNotice, MAX_ITEM_ERRORS, NotifyEvent};
use super::mail::MailMessage;
use crate::history::StepCounts;

/// Caps on what one message carries.
const MAX_ERROR_CHARS: usize = 2000;
const MAX_ITEM_ERROR_CHARS: usize = 500;
const MAX_STEPS: usize = 20;

/// One notice about to be sent, with what the notifier adds to it.
#[derive(Clone, Debug)]
pub struct Message<'a> {
    pub notice: &'a JobNotice,
    pub event: NotifyEvent,
    /// Messages of this runbook held back by the throttle since the last one.
    pub suppressed: u64,
    /// `<http.public_url>/jobs/<id>`, when both are known.
    pub job_url: Option<Url>,
}

/// The webhook body: stable fields, documented in README.md ("Notifications").
#[derive(Debug, Serialize)]
pub struct WebhookBody<'a> {
    #[serde(rename = "type")]
    pub kind: String,
    pub runbook: &'a str,
    pub job_id: Option<&'a str>,
    pub status: &'static str,
    pub trigger: Option<&'static str>,
    pub scheduled_for: Option<chrono::DateTime<chrono::Utc>>,
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    pub ended_at: Option<chrono::DateTime<chrono::Utc>>,
    pub duration_ms: Option<i64>,
    pub error: Option<String>,
    pub hint: Option<String>,
    pub steps: &'a [StepCounts],
    pub item_errors: Vec<String>,
    pub url: Option<&'a str>,
    pub suppressed: u64,
    pub dry_run: bool,
}

impl<'a> Message<'a> {
    pub fn status(&self) -> &'static str {
        if self.notice.missed {
            "Missed"
        } else {
            self.notice.status.as_str()
        }
    }

    pub fn title(&self) -> String {
        format!("{}: {}", self.event.headline(), self.notice.runbook)
    }

    fn error(&self) -> Option<String> {
        self.notice
            .error
            .as_deref()
            .map(|e| cap(e, MAX_ERROR_CHARS))
    }

    fn hint(&self) -> Option<String> {
        self.notice.hint.as_deref().map(|h| cap(h, MAX_ERROR_CHARS))
    }

    fn item_errors(&self) -> Vec<String> {
        self.notice
            .item_errors
            .iter()
            .take(MAX_ITEM_ERRORS)
            .map(|e| cap(e, MAX_ITEM_ERROR_CHARS))
            .collect()
    }

    fn steps(&self) -> &'a [StepCounts] {
        let steps = &self.notice.steps;
        &steps[..steps.len().min(MAX_STEPS)]
    }

    pub fn webhook_body(&'a self) -> WebhookBody<'a> {
        WebhookBody {
            kind: self.event.type_name(),
            runbook: &self.notice.runbook,
            job_id: self.notice.job_id.as_deref(),
            status: self.status(),
            trigger: self.notice.trigger.map(|t| t.as_str()),
            scheduled_for: self.notice.scheduled_for,
            started_at: self.notice.started_at,
            ended_at: self.notice.ended_at,
            duration_ms: self.notice.duration_ms(),
            error: self.error(),
            hint: self.hint(),
            steps: self.steps(),
            item_errors: self.item_errors(),
            url: self.job_url.as_ref().map(|u| u.as_str()),
            suppressed: self.suppressed,
            dry_run: self.notice.dry_run,
        }
    }

    /// (title, value) pairs for the card and the email, in reading order.
    fn facts(&self) -> Vec<(&'static str, String)> {
        let n = self.notice;
        let mut facts = vec![("Status", self.status().to_string())];
        if let Some(id) = &n.job_id {
            facts.push(("Job", id.clone()));
        }
        if let Some(trigger) = n.trigger {
            facts.push(("Trigger", trigger.as_str().to_string()));
        }
        if let Some(at) = n.scheduled_for {
            facts.push(("Scheduled for", at.to_rfc3339()));
        }
        if let Some(at) = n.started_at {
            facts.push(("Started", at.to_rfc3339()));
        }
        if let Some(at) = n.ended_at {
            facts.push(("Ended", at.to_rfc3339()));
        }
        if let Some(ms) = n.duration_ms() {
            facts.push((
                "Duration",
                humantime::format_duration(std::time::Duration::from_secs(
                    u64::try_from(ms / 1000).unwrap_or(0),
                ))
                .to_string(),
            ));
        }
        if n.dry_run {
            facts.push(("Dry run", "yes".to_string()));
        }
        if let Some(error) = self.error() {
            facts.push(("Error", error));
        }
        if let Some(hint) = self.hint() {
            facts.push(("Hint", hint));
        }
        for step in self.steps() {
            facts.push((
                "Step",
                format!(
                    "{}: {} read, {} done, {} failed, {} skipped",
                    step.step, step.records_read, step.done, step.failed, step.skipped
                ),
            ));
        }
        for error in self.item_errors() {
            facts.push(("Item error", error));
        }
        if self.suppressed > 0 {
            facts.push((
                "Suppressed",
                format!(
                    "{} earlier message(s) held back by notify.min_interval",
                    self.suppressed
                ),
            ));
        }
        facts
    }

    /// The Workflows webhook body: an Adaptive Card in a message envelope (the template
    /// flow iterates `attachments`; a bare `{"text": …}` makes it fail silently).
    pub fn teams_card(&self) -> Value {
        let facts: Vec<Value> = self
            .facts()
            .into_iter()
            .map(|(title, value)| json!({ "title": title, "value": value }))
            .collect();
        let mut content = json!({
            "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
            "type": "AdaptiveCard",
            "version": "1.2",
            "body": [
                { "type": "TextBlock", "size": "Medium", "weight": "Bolder", "wrap": true, "text": self.title() },
                { "type": "FactSet", "facts": facts }
            ]
        });
        if let Some(url) = &self.job_url {
            content["actions"] =
                json!([{ "type": "Action.OpenUrl", "title": "Open the job", "url": url.as_str() }]);
        }
        json!({
            "type": "message",
            "attachments": [{
                "contentType": "application/vnd.microsoft.card.adaptive",
                "contentUrl": null,
                "content": content
            }]
        })
    }

    /// Subject and HTML body; every interpolated value is HTML-escaped.
    pub fn email(&self, to: &[String]) -> MailMessage {
        let mut html = String::new();
        html.push_str(&format!("<h2>{}</h2>\n<table>\n", escape(&self.title())));
        for (title, value) in self.facts() {
            html.push_str(&format!(
                "<tr><th align=\"left\">{}</th><td>{}</td></tr>\n",
                escape(title),
                escape(&value)
            ));
        }
        html.push_str("</table>\n");
        if let Some(url) = &self.job_url {
            html.push_str(&format!(
                "<p><a href=\"{}\">Open the job</a></p>\n",
                escape(url.as_str())
            ));
        }
        MailMessage {
            subject: cap(&self.title(), 200),
            html_body: html,
            to: to.to_vec(),
        }
    }
}

/// The first `max` characters, with an ellipsis when cut.
fn cap(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some((at, _)) => format!("{}…", &text[..at]),
    }
}

/// HTML-escapes text for element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{JobStatus, Trigger};

    fn notice() -> JobNotice {
        let start = chrono::DateTime::<chrono::Utc>::from_timestamp(1_800_000_000, 0).unwrap();
        let mut n = JobNotice::new("convert-shared", Some("j-42".into()), JobStatus::Failed);
        n.trigger = Some(Trigger::Schedule);
        n.started_at = Some(start);
        n.ended_at = Some(start + chrono::Duration::seconds(90));
        n.error = Some("<script>alert(1)</script> & more".into());
        n.hint = Some("grant the role".into());
        n.item_errors = (0..9).map(|i| format!("item {i} failed")).collect();
        n.steps = vec![StepCounts {
            step: "find".into(),
            records_read: 10,
            done: 7,
            failed: 3,
            ..StepCounts::default()
        }];
        n
    }

    #[test]
    fn the_webhook_body_has_the_documented_fields() {
        let n = notice();
        let m = Message {
            notice: &n,
            event: NotifyEvent::Failed,
            suppressed: 2,
            job_url: Some(Url::parse("https://worker.example/jobs/j-42").unwrap()),
        };
        let body = serde_json::to_value(m.webhook_body()).unwrap();
        assert_eq!(body["type"], "job.failed");
        assert_eq!(body["runbook"], "convert-shared");
        assert_eq!(body["job_id"], "j-42");
        assert_eq!(body["status"], "Failed");
        assert_eq!(body["trigger"], "schedule");
        assert_eq!(body["duration_ms"], 90_000);
        assert_eq!(body["hint"], "grant the role");
        assert_eq!(body["steps"][0]["failed"], 3);
        assert_eq!(
            body["item_errors"].as_array().unwrap().len(),
            MAX_ITEM_ERRORS
        );
        assert_eq!(body["url"], "https://worker.example/jobs/j-42");
        assert_eq!(body["suppressed"], 2);
    }

    #[test]
    fn the_teams_card_has_the_envelope_facts_and_a_link_only_when_known() {
        let n = notice();
        let mut m = Message {
            notice: &n,
            event: NotifyEvent::Failed,
            suppressed: 0,
            job_url: Some(Url::parse("https://worker.example/jobs/j-42").unwrap()),
        };
        let card = m.teams_card();
        assert_eq!(card["type"], "message");
        let content = &card["attachments"][0]["content"];
        assert_eq!(
            card["attachments"][0]["contentType"],
            "application/vnd.microsoft.card.adaptive"
        );
        assert_eq!(content["type"], "AdaptiveCard");
        assert_eq!(content["body"][1]["type"], "FactSet");
        assert_eq!(content["actions"][0]["type"], "Action.OpenUrl");
        m.job_url = None;
        assert!(
            m.teams_card()["attachments"][0]["content"]
                .get("actions")
                .is_none()
        );
    }

    #[test]
    fn the_email_escapes_every_value() {
        let mut n = notice();
        n.runbook = "a<b>".into();
        let m = Message {
            notice: &n,
            event: NotifyEvent::Failed,
            suppressed: 0,
            job_url: Some(Url::parse("https://worker.example/jobs/x?a=1&b=\"2\"").unwrap()),
        };
        let mail = m.email(&["ops@contoso.com".into()]);
        assert_eq!(mail.subject, "Job failed: a<b>");
        assert!(!mail.html_body.contains("<script>"), "{}", mail.html_body);
        assert!(
            mail.html_body.contains("&lt;script&gt;"),
            "{}",
            mail.html_body
        );
        assert!(mail.html_body.contains("a&lt;b&gt;"), "{}", mail.html_body);
        assert!(mail.html_body.contains("&amp; more"), "{}", mail.html_body);
    }

    #[test]
    fn long_text_is_capped() {
        assert_eq!(cap("abcdef", 3), "abc…");
        assert_eq!(cap("abc", 3), "abc");
        assert_eq!(cap("ééé", 2), "éé…");
    }
}
