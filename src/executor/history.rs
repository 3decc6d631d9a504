//! [`HistoryEvents`]: a [`JobEvents`] sink that writes a job's events into the job history
//! (streams and live step counts) and, at the end, its outcome.
//!
//! Writes are batched: stream entries are buffered and sent in one command when enough
//! have gathered, when a step ends and at the end, and step counts are sent at most every
//! [`COUNTS_INTERVAL`], so a 100,000-item step costs a few hundred transactions, not
//! 100,000. The history itself keeps at most `history.max_entries_per_stream` entries per
//! stream (counting the rest as dropped), so what is recorded stays bounded.
//!
//! A history that cannot be written (disk full, shutting down) must not fail the job: the
//! problem is logged and the job goes on.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::json;

use crate::history::{HistoryError, JobHistory, JobId, NewStreamEntry, StepCounts};

use super::events::{ItemOutcome, JobEvent, JobEvents};
use super::outcome::{JobOutcome, describe_counts};

/// Stream entries buffered before they are written.
pub const FLUSH_ENTRIES: usize = 100;
/// Live step counts are written at most this often.
pub const COUNTS_INTERVAL: Duration = Duration::from_secs(1);

/// Writes one job's events into the history. Create it after the job was recorded
/// (`create_job`, `mark_running`); call [`HistoryEvents::finish`] with the outcome.
pub struct HistoryEvents {
    store: JobHistory,
    id: JobId,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    pending: Vec<NewStreamEntry>,
    steps: Vec<StepCounts>,
    counts_dirty: bool,
    counts_sent_at: Option<Instant>,
}

impl std::fmt::Debug for HistoryEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistoryEvents")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// What to write after one event, decided under the lock and written after it.
#[derive(Default)]
struct Writes {
    entries: Vec<NewStreamEntry>,
    steps: Option<Vec<StepCounts>>,
}

impl HistoryEvents {
    pub fn new(store: impl Into<JobHistory>, id: JobId) -> Self {
        Self {
            store: store.into(),
            id,
            state: Mutex::new(State::default()),
        }
    }

    pub fn job_id(&self) -> &JobId {
        &self.id
    }

    /// Writes what is still buffered and the final outcome (status, summary, error, step
    /// counts). The job must be Queued or Running in the history.
    pub async fn finish(&self, outcome: &JobOutcome) -> Result<(), HistoryError> {
        let entries = {
            let mut state = self.lock();
            std::mem::take(&mut state.pending)
        };
        self.store.append_stream(&self.id, entries).await?;
        self.store.finish(&self.id, outcome.to_history()).await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn apply(&self, event: JobEvent) -> Writes {
        let mut state = self.lock();
        let mut force = false;
        match event {
            JobEvent::AttemptStarted {
                attempt, attempts, ..
            } => {
                if attempt > 1 {
                    state.pending.push(NewStreamEntry::progress(format!(
                        "attempt {attempt} of {attempts}"
                    )));
                }
                state.steps.clear();
                state.counts_dirty = true;
                force = true;
            }
            JobEvent::AttemptFailed {
                attempt,
                error,
                retry_in,
            } => {
                state.pending.push(NewStreamEntry::warning(format!(
                    "attempt {attempt} failed: {error}; retrying in {}",
                    super::describe_delay(retry_in)
                )));
                force = true;
            }
            JobEvent::StepStarted {
                step,
                cmdlet,
                for_each,
                index,
                steps,
                total,
            } => {
                let total = match (&for_each, total) {
                    (Some(source), Some(t)) => format!(", {t} items from \"{source}\""),
                    (Some(source), None) => format!(", items from \"{source}\" as they arrive"),
                    (None, _) => String::new(),
                };
                state.pending.push(NewStreamEntry::progress(format!(
                    "step {index}/{steps} \"{step}\" ({cmdlet}) started{total}"
                )));
                set_counts(
                    &mut state,
                    StepCounts {
                        step,
                        ..StepCounts::default()
                    },
                );
            }
            JobEvent::Item {
                step,
                outcome,
                target,
                error,
                counts,
                ..
            } => {
                if outcome == ItemOutcome::Failed {
                    let text = error.clone().unwrap_or_else(|| "failed".to_string());
                    state.pending.push(
                        NewStreamEntry::error(format!("{step}: {text}"))
                            .with_data(json!({"step": step, "target": target, "error": error})),
                    );
                }
                set_counts(&mut state, counts);
            }
            JobEvent::Progress { counts, .. } => set_counts(&mut state, counts),
            JobEvent::Warning {
                step,
                target,
                message,
            } => {
                let on = target
                    .as_deref()
                    .map(|t| format!(" ({t})"))
                    .unwrap_or_default();
                state
                    .pending
                    .push(NewStreamEntry::warning(format!("{step}{on}: {message}")));
            }
            JobEvent::Planned {
                step,
                cmdlet,
                target,
                parameters,
            } => {
                let on = target
                    .as_deref()
                    .map(|t| format!(" on '{t}'"))
                    .unwrap_or_default();
                state.pending.push(NewStreamEntry::plan(
                    format!("{step}: {cmdlet}{on}"),
                    json!({"step": step, "cmdlet": cmdlet, "parameters": parameters}),
                ));
            }
            JobEvent::Report {
                step,
                path,
                format,
                records,
            } => {
                state.pending.push(
                    NewStreamEntry::output(format!(
                        "report of step \"{step}\": {} ({records} records)",
                        path.display()
                    ))
                    .with_data(json!({
                        "step": step,
                        "path": path,
                        "format": format,
                        "records": records,
                    })),
                );
            }
            JobEvent::AssetsUsed { vars, secrets } => {
                state.pending.push(
                    NewStreamEntry::output(super::describe_assets(&vars, &secrets))
                        .with_data(json!({ "vars": vars, "secrets": secrets })),
                );
            }
            JobEvent::StepFinished { counts, .. } => {
                state
                    .pending
                    .push(NewStreamEntry::progress(describe_counts(&counts)));
                set_counts(&mut state, counts);
                force = true;
            }
        }
        let mut writes = Writes::default();
        if force || state.pending.len() >= FLUSH_ENTRIES {
            writes.entries = std::mem::take(&mut state.pending);
        }
        let due = state
            .counts_sent_at
            .is_none_or(|at| at.elapsed() >= COUNTS_INTERVAL);
        if state.counts_dirty && (force || due) {
            writes.steps = Some(state.steps.clone());
            state.counts_dirty = false;
            state.counts_sent_at = Some(Instant::now());
        }
        writes
    }
}

fn set_counts(state: &mut State, counts: StepCounts) {
    match state.steps.iter_mut().find(|s| s.step == counts.step) {
        Some(existing) => *existing = counts,
        None => state.steps.push(counts),
    }
    state.counts_dirty = true;
}

#[async_trait]
impl JobEvents for HistoryEvents {
    async fn emit(&self, event: JobEvent) {
        let writes = self.apply(event);
        if !writes.entries.is_empty()
            && let Err(e) = self.store.append_stream(&self.id, writes.entries).await
        {
            tracing::warn!(job_id = %self.id, error = %e, "cannot record job events in the history");
        }
        if let Some(steps) = writes.steps
            && let Err(e) = self.store.update_steps(&self.id, steps).await
        {
            tracing::warn!(job_id = %self.id, error = %e, "cannot record step counts in the history");
        }
    }
}
