//! Notifications: telling people when a job needs them (failed, timed out, interrupted,
//! completed with errors, skipped, missed, recovered), by email (Microsoft Graph
//! `sendMail`), Microsoft Teams (a Workflows webhook with an Adaptive Card) or a generic
//! webhook (JSON signed per Standard Webhooks v1).
//!
//! Owns the `[notify]` settings, the message shapes, the throttle and the sending. Knows
//! nothing of the scheduler, the executor or the history store: the wiring hands it plain
//! data ([`JobNotice`]) and gets outcomes back ([`NotifyEvents`]). A notification never
//! changes a job's outcome and never blocks the caller. Secrets (webhook URLs, which hold
//! their key, and signing secrets) never reach logs or errors: `Debug` is redacted and
//! errors name the target, never its URL.
//!
//! Layout: `settings` (parse, check, resolve the files), `event` (which event a job is,
//! pure), `throttle` (pure), `payload` (the three message shapes, pure), `sign` (Standard
//! Webhooks signatures), `mail` (the [`MailSender`] trait and a Graph `sendMail` sender),
//! `deliver` (one message to one target, with retries; the [`Dispatcher`]), `notifier`
//! (the queue and its task).
//!
//! # Wiring contract (for `app` and the scheduler's job end)
//!
//! 1. At start, after settings are loaded (their `problems()` include `[notify]`'s):
//!    ```text
//!    let (notifier, task) = Notifier::start(
//!        &settings.notify,
//!        NotifierDeps {
//!            mail: Some(Arc::new(GraphMailSender::new(tokens, graph_url, graph_client(&settings.notify)?, clock.clone()))),
//!            public_url: settings.http.public_url.clone(), // Option<Url>
//!            clock, metrics, events: Arc::new(RecordOnJob { .. }),
//!        },
//!        root_cancel.child_token(),
//!    )?;
//!    ```
//!    `start` reads `url_file`/`secret_file` and fails with [`NotifyError`] naming the key
//!    and path. It spawns one task; keep the `JoinHandle` in the app's shutdown path.
//! 2. On the replica that ran the job (that is what makes it exactly one message per job
//!    across replicas), when its final status is recorded, call
//!    `notifier.job_ended(JobNotice { .. })`. It is synchronous and never blocks: it picks
//!    the targets (`notice.targets`, the runbook's `notify` list, or `notify.default` when
//!    empty) that subscribe to the event and, for a dry run, set `dry_runs = true`, and
//!    queues the notice; a full queue drops it (reported as `Dropped`). Fill `previous`
//!    with the final status of the runbook's job before this one (for `recovered`); for an
//!    occurrence skipped by the overlap policy send `status = Skipped`; for a missed
//!    occurrence that is not caught up set `missed = true` (`job_id` may be `None`).
//!    Cancelled jobs and Completed jobs without an earlier failure send nothing.
//! 3. Each target's outcome comes back once through [`NotifyEvents::delivered`], from the
//!    notifier's task (do not block there): record [`DeliveryReport::line`] (and the report
//!    as JSON data) as a `notifications` stream entry on `report.job_id`. Every outcome is
//!    also counted in `runbook_worker_notifications_total{target,outcome}`.
//! 4. At shutdown cancel the token, then await the task: it sends what is queued for up to
//!    `notify.drain_timeout` and reports the rest as `Abandoned`.
//!
//! `runbook-worker notify test TARGET` uses the [`Dispatcher`] directly.

mod deliver;
mod event;
mod mail;
mod notifier;
mod payload;
mod settings;
mod sign;
mod throttle;

use std::path::PathBuf;

pub use deliver::{DeliveryOutcome, DeliveryReport, Dispatcher, graph_client};
pub use event::{JobNotice, MAX_ITEM_ERRORS, NotifyEvent};
pub use mail::{GRAPH_RESOURCE, GraphMailSender, MailError, MailMessage, MailSender};
pub use notifier::{Notifier, NotifierDeps, NotifyEvents, Submitted};
pub use payload::{Message, WebhookBody};
pub(crate) use settings::check_url;
pub use settings::{
    DEFAULT_GRAPH_ENDPOINT, NotifySettings, Target, TargetKind, TargetSettings, resolve_targets,
};
pub use sign::SigningKey;
pub use throttle::{Admit, Throttle};

/// Why the notifier cannot start or a test message cannot be sent. Never holds a URL or
/// secret.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("invalid setting `{key}` (target {target:?}): {message}")]
    InvalidTarget {
        key: String,
        target: String,
        message: String,
    },
    #[error("cannot read `{key}` of target {target:?} from {}: {message}", path.display())]
    TargetFile {
        key: String,
        target: String,
        path: PathBuf,
        message: String,
    },
    #[error("no notification target named {name:?} (defined in [[notify.targets]]: {})", if known.is_empty() { "none".to_string() } else { known.join(", ") })]
    UnknownTarget { name: String, known: Vec<String> },
    #[error("invalid setting `{key}`: {message}")]
    InvalidEndpoint { key: &'static str, message: String },
    #[error("cannot build the HTTP client for notifications: {0}")]
    Client(String),
}
