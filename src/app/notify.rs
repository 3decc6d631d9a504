//! Wiring the notifier (see the contract in `src/notify/mod.rs`): the scheduler's job ends
//! go to [`Notifier::job_ended`], and each delivery outcome comes back as a
//! `notifications` stream entry on its job, written by one recorder task so the notifier's
//! task never waits on the history.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::history::{JobHistory, JobId, NewStreamEntry, StreamKind};
use crate::notify::{DeliveryReport, JobNotice, Notifier, NotifyEvents};
use crate::scheduler::JobEnded;

/// Reports waiting for the recorder; beyond it a report is logged and not recorded (the
/// metric and the log line still count it).
const RECORD_QUEUE: usize = 256;

/// The scheduler's view of the notifier.
pub(crate) struct NotifyOnEnd(pub Notifier);

impl JobEnded for NotifyOnEnd {
    fn job_ended(&self, notice: JobNotice) {
        self.0.job_ended(notice);
    }
}

/// Hands delivery reports to the recorder without waiting.
pub(crate) struct RecordOnJob {
    queue: mpsc::Sender<(JobId, NewStreamEntry)>,
}

impl NotifyEvents for RecordOnJob {
    fn delivered(&self, report: &DeliveryReport) {
        let Some(id) = report
            .job_id
            .as_deref()
            .and_then(|id| id.parse::<JobId>().ok())
        else {
            return;
        };
        let mut entry = NewStreamEntry::new(StreamKind::Notifications, report.line());
        if let Ok(data) = serde_json::to_value(report) {
            entry = entry.with_data(data);
        }
        if self.queue.try_send((id, entry)).is_err() {
            tracing::warn!(runbook = %report.runbook, target_name = %report.target, "too many notification outcomes waiting to be recorded; this one is not on its job");
        }
    }
}

/// The recorder: writes each report on its job until `stop`, then writes what is left.
pub(crate) fn record_on_job(
    history: JobHistory,
    stop: CancellationToken,
) -> (Arc<RecordOnJob>, JoinHandle<()>) {
    let (queue, mut rx) = mpsc::channel::<(JobId, NewStreamEntry)>(RECORD_QUEUE);
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                biased;
                received = rx.recv() => match received {
                    Some((id, entry)) => write(&history, id, entry).await,
                    None => return,
                },
                () = stop.cancelled() => break,
            }
        }
        rx.close();
        while let Ok((id, entry)) = rx.try_recv() {
            write(&history, id, entry).await;
        }
    });
    (Arc::new(RecordOnJob { queue }), task)
}

async fn write(history: &JobHistory, id: JobId, entry: NewStreamEntry) {
    if let Err(e) = history.append_stream(&id, vec![entry]).await {
        tracing::warn!(job_id = %id, error = %e.chain(), "cannot record a notification outcome on its job");
    }
}
