//! What a running job tells the outside: [`JobEvent`]s sent to a [`JobEvents`] sink.
//!
//! Events are plain data (they serialise as the `event`-tagged JSON the `run --output json`
//! command prints), carry no token or secret, and are sent in order from the job's own
//! task. A sink must not block for long: the job waits for each `emit`.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use serde_json::Value;

use crate::history::StepCounts;
use crate::runbook::OutputFormat;

/// What happened to one item (one call) of a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemOutcome {
    /// The call succeeded.
    Done,
    /// The call (or rendering its parameters, or its `when`) failed, or Exchange reported
    /// a non-terminating error for it.
    Failed,
    /// `when` was false: no call.
    Skipped,
    /// Dry run: a write that was not sent (see [`JobEvent::Planned`]).
    Planned,
}

/// One thing that happened while a job ran.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum JobEvent {
    /// An attempt begins; `attempt` counts from 1, `attempts` is 1 + the runbook's retries.
    AttemptStarted {
        attempt: u32,
        attempts: u32,
        dry_run: bool,
    },
    /// A Failed attempt will be retried after `retry_in`.
    AttemptFailed {
        attempt: u32,
        error: String,
        #[serde(with = "duration_ms")]
        retry_in: Duration,
    },
    /// A step begins. `total` is the number of items when it is known up front (a
    /// `for_each` over a finished step, or 1 for a step without `for_each`), `None` while
    /// its source still streams.
    StepStarted {
        step: String,
        cmdlet: String,
        /// The step whose records it runs once for.
        for_each: Option<String>,
        /// 1-based position among the runbook's steps.
        index: usize,
        steps: usize,
        total: Option<u64>,
    },
    /// One item of a step ended; `counts` are the step's counts after it.
    Item {
        step: String,
        outcome: ItemOutcome,
        /// The call's rendered `Identity`, when it has one.
        target: Option<String>,
        /// Why it failed or was skipped.
        error: Option<String>,
        counts: StepCounts,
        total: Option<u64>,
    },
    /// Records arrived (a page of a read); `counts.records_read` has grown.
    Progress {
        step: String,
        counts: StepCounts,
        total: Option<u64>,
    },
    /// A warning from Exchange (`@adminapi.warnings`) or from the executor itself.
    Warning {
        step: String,
        target: Option<String>,
        message: String,
    },
    /// Dry run: the write a real run would send, with its fully rendered parameters.
    Planned {
        step: String,
        cmdlet: String,
        target: Option<String>,
        parameters: Value,
    },
    /// A step's report was written.
    Report {
        step: String,
        path: PathBuf,
        format: OutputFormat,
        records: u64,
    },
    /// A step ended (also when it stopped early); `counts` are final.
    StepFinished { step: String, counts: StepCounts },
    /// The shared variables the job's templates read, with their values, and the names
    /// (never the values) of the secrets it read; once per job, before its first attempt.
    AssetsUsed {
        vars: std::collections::BTreeMap<String, Value>,
        secrets: Vec<String>,
    },
}

mod duration_ms {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// Where a job's events go.
#[async_trait]
pub trait JobEvents: Send + Sync {
    async fn emit(&self, event: JobEvent);
}

/// Discards every event.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoEvents;

#[async_trait]
impl JobEvents for NoEvents {
    async fn emit(&self, _event: JobEvent) {}
}

/// Sends every event to both sinks, first `.0` then `.1` (e.g. the terminal and the
/// history).
#[derive(Clone, Copy, Debug)]
pub struct Both<A, B>(pub A, pub B);

#[async_trait]
impl<A: JobEvents, B: JobEvents> JobEvents for Both<A, B> {
    async fn emit(&self, event: JobEvent) {
        self.0.emit(event.clone()).await;
        self.1.emit(event).await;
    }
}

#[async_trait]
impl<T: JobEvents + ?Sized> JobEvents for &T {
    async fn emit(&self, event: JobEvent) {
        (**self).emit(event).await;
    }
}

#[async_trait]
impl<T: JobEvents + ?Sized> JobEvents for std::sync::Arc<T> {
    async fn emit(&self, event: JobEvent) {
        (**self).emit(event).await;
    }
}

/// A channel: the receiver sees every event; once it is dropped, events are discarded.
#[async_trait]
impl JobEvents for tokio::sync::mpsc::Sender<JobEvent> {
    async fn emit(&self, event: JobEvent) {
        let _ = self.send(event).await;
    }
}

/// A planned call as an operator would type it in PowerShell, for display only (it is
/// never run): `Set-Mailbox -Identity 'a@contoso.com' -DeliverToMailboxAndForward:$false`.
pub fn command_line(cmdlet: &str, parameters: &Value) -> String {
    let mut line = cmdlet.to_string();
    if let Value::Object(map) = parameters {
        for (name, value) in map {
            match value {
                Value::Bool(b) => line.push_str(&format!(" -{name}:${b}")),
                other => line.push_str(&format!(" -{name} {}", powershell_value(other))),
            }
        }
    }
    line
}

fn powershell_value(value: &Value) -> String {
    match value {
        Value::Null => "$null".to_string(),
        Value::Bool(b) => format!("${b}"),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("'{}'", s.replace('\'', "''")),
        Value::Array(items) => items
            .iter()
            .map(powershell_value)
            .collect::<Vec<_>>()
            .join(","),
        Value::Object(map) => {
            let entries: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{k}={}", powershell_value(v)))
                .collect();
            format!("@{{{}}}", entries.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn planned_calls_read_like_powershell() {
        let cases = [
            (json!({}), "Get-Mailbox"),
            (
                json!({"Identity": "O'Brien", "Archive": true}),
                "Get-Mailbox -Archive:$true -Identity 'O''Brien'",
            ),
            (
                json!({"ForwardingSmtpAddress": null, "Count": 5}),
                "Get-Mailbox -Count 5 -ForwardingSmtpAddress $null",
            ),
            (
                json!({"AccessRights": ["Reviewer", "Editor"], "EmailAddresses": {"Add": "smtp:a@x", "Remove": "smtp:b@x"}}),
                "Get-Mailbox -AccessRights 'Reviewer','Editor' -EmailAddresses @{Add='smtp:a@x'; Remove='smtp:b@x'}",
            ),
        ];
        for (parameters, expected) in cases {
            assert_eq!(command_line("Get-Mailbox", &parameters), expected);
        }
    }

    #[test]
    fn events_serialise_with_an_event_tag_and_millisecond_delays() {
        let cases = [
            (
                JobEvent::AttemptFailed {
                    attempt: 1,
                    error: "x".into(),
                    retry_in: Duration::from_secs(2),
                },
                r#"{"event":"attempt_failed","attempt":1,"error":"x","retry_in":2000}"#,
            ),
            (
                JobEvent::Warning {
                    step: "find".into(),
                    target: None,
                    message: "m".into(),
                },
                r#"{"event":"warning","step":"find","target":null,"message":"m"}"#,
            ),
        ];
        for (event, expected) in cases {
            assert_eq!(serde_json::to_string(&event).unwrap(), expected);
        }
    }

    #[tokio::test]
    async fn both_sinks_see_every_event_in_order() {
        let (a_tx, mut a_rx) = tokio::sync::mpsc::channel(4);
        let (b_tx, mut b_rx) = tokio::sync::mpsc::channel(4);
        let both = Both(a_tx, b_tx);
        for step in ["one", "two"] {
            both.emit(JobEvent::StepFinished {
                step: step.into(),
                counts: StepCounts::default(),
            })
            .await;
        }
        for rx in [&mut a_rx, &mut b_rx] {
            for expected in ["one", "two"] {
                match rx.recv().await {
                    Some(JobEvent::StepFinished { step, .. }) => assert_eq!(step, expected),
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
    }
}
