//! The scheduler loop: one task, one `select!` over a closed set of events — a timer is
//! due, the catalog changed, a run or cancel was requested, a job reported, shutdown — and
//! the only owner of the per-runbook state (next fire instant, running jobs, the queued
//! occurrence). Everything slow (claims, history writes, the jobs themselves, loading the
//! folder) runs in tasks that report back as events, so the loop only ever does
//! bookkeeping and fires on time.
//!
//! Timers are one ordered set of `(fire instant, runbook)` with one entry per runbook, so the
//! loop sleeps once, until the earliest, whatever the number of runbooks; the wait goes
//! through [`Clock::sleep_until`](crate::clock::Clock::sleep_until) so tests move time with a
//! `ManualClock` instead of sleeping.
//!
//! Knows nothing of HTTP, signals or how a job runs: the composition root feeds it reloads
//! and requests through a [`SchedulerHandle`] and gives it a [`JobRunner`].

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::SharedClock;
use crate::coordination::{CoordinationKind, Coordinator, InterruptedOccurrence, StorageHealth};
use crate::history::{JobHistory, JobId, JobStatus, NewJob, Outcome, Trigger};
use crate::runbook::{
    Catalog, ErrorKind, OnInterrupt, ParamInput, PolicySettings, Runbook, ValidationError,
    load_folder,
};
use crate::telemetry::metrics::Metrics;

use super::catalog::{LiveCatalog, ReloadSummary};
use super::ended::{self, Ended, JobEnded};
use super::handle::{Event, JobEvent, JobKey, LastJob, RunError, SchedulerHandle, Shared};
use super::job::{
    ClaimKind, JobContext, JobOrder, JobRunner, StartWhen, record_overlap_skip, run_job,
};
use super::plan::{Due, missed_occurrences, plan_after, plan_next, schedule_at, window};
use super::sweep;
use crate::timing::policy::{
    MissedPolicy, OverlapDecision, OverlapPolicy, decide_overlap, missed_run,
};

/// An occurrence found more than this late by the loop (a suspended VM, a stalled host) is
/// not fired as a normal occurrence: it is treated as missed (see `missed`).
const LATE_LIMIT: Duration = Duration::from_secs(30);
/// How long before its fire time an occurrence of an idle runbook is prepared (with local
/// coordination): claimed and recorded Queued, so that at the instant itself the job only has
/// to start. A burst of a
/// thousand runbooks due at the same second costs a thousand claims and history writes;
/// doing them ahead keeps every start on time.
pub const PREPARE_AHEAD: Duration = Duration::from_millis(500);

/// How the scheduler behaves.
#[derive(Clone, Debug)]
pub struct SchedulerOptions {
    /// The name recorded as the owner of claimed occurrences.
    pub replica_id: String,
    /// How long running jobs may finish after shutdown starts before they are cancelled.
    pub shutdown_grace: Duration,
    /// How long cancelled jobs get to record their end before their tasks are dropped (the
    /// history records them Cancelled regardless).
    pub cancel_wait: Duration,
    /// How often orphaned occurrences are swept (Azure coordination only).
    pub sweep_interval: Duration,
    pub runbooks_dir: PathBuf,
    pub policy: PolicySettings,
    /// The names of `[[notify.targets]]`: a runbook naming another one does not load.
    pub notify_targets: Vec<String>,
}

/// The components the scheduler drives.
#[derive(Clone)]
pub struct SchedulerParts {
    pub clock: SharedClock,
    pub history: JobHistory,
    pub coordinator: Coordinator,
    pub runner: Arc<dyn JobRunner>,
    pub metrics: Arc<Metrics>,
    /// Hears about every job end (the notifier); `None`: nobody listens.
    pub ended: Option<Arc<dyn JobEnded>>,
}

/// Whether two versions of a runbook fire at the same instants, so that a reload can keep
/// the pending timer.
fn same_timing(a: &Runbook, b: &Runbook) -> bool {
    a.schedule_entries == b.schedule_entries
        && a.enabled == b.enabled
        && a.start_at == b.start_at
        && a.end_at == b.end_at
        && a.jitter == b.jitter
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Claimed and recorded ahead of its fire time, waiting for it.
    Prepared,
    /// Waiting behind a running job of the same runbook.
    Queued,
    /// Claiming its occurrence or being recorded.
    Starting,
    /// Holds its occurrence and runs.
    Running,
}

#[derive(Debug)]
struct JobSlot {
    runbook: String,
    /// The occurrence's instant for scheduled jobs.
    occurrence: Option<DateTime<Utc>>,
    phase: Phase,
    job_id: Option<JobId>,
    cancel: CancellationToken,
    go: Option<oneshot::Sender<()>>,
    abort: AbortHandle,
}

#[derive(Debug, Default)]
struct RunbookJobs {
    /// Jobs started (claiming or running), oldest first.
    active: Vec<JobKey>,
    /// The one occurrence waiting for them to end.
    queued: Option<JobKey>,
}

#[derive(Debug)]
struct Slot {
    runbook: Arc<Runbook>,
    next: Option<Due>,
    /// The key of this runbook's entry in the timer set, while it has one.
    timer: Option<DateTime<Utc>>,
    /// The pending occurrence could not be prepared ahead (a job of the runbook was active):
    /// it is decided at its fire time instead.
    deciding: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stopping {
    Running,
    /// Shutdown started; running jobs may finish until then.
    Grace(DateTime<Utc>),
    /// Jobs were cancelled; they may record their end until then.
    Cancelling(DateTime<Utc>),
}

/// When a spawned job starts.
#[derive(Clone, Copy, Debug)]
enum Start {
    Now,
    /// Prepared ahead: claimed and recorded now, started at this instant.
    At(DateTime<Utc>),
    /// Behind the active jobs of its runbook.
    Queued,
}

/// What the loop decided about one job.
struct JobPlan {
    runbook: Arc<Runbook>,
    trigger: Trigger,
    claim: ClaimKind,
    /// The schedule whose occurrence this is (index into the runbook's schedules).
    schedule: Option<usize>,
    scheduled_for: Option<DateTime<Utc>>,
    due_at: DateTime<Utc>,
    params: std::collections::BTreeMap<String, Value>,
    dry_run: bool,
    reply: Option<oneshot::Sender<Result<JobId, RunError>>>,
    start: Start,
}

/// The scheduler loop and its state; see the module documentation.
pub struct Scheduler {
    ctx: Arc<JobContext>,
    options: SchedulerOptions,
    shared: Arc<Shared>,
    events: Option<mpsc::UnboundedReceiver<Event>>,
    catalog: Arc<LiveCatalog>,
    slots: HashMap<String, Slot>,
    timers: BTreeSet<(DateTime<Utc>, String)>,
    jobs: HashMap<JobKey, JobSlot>,
    by_runbook: HashMap<String, RunbookJobs>,
    next_key: u64,
    tracker: TaskTracker,
    health: watch::Receiver<StorageHealth>,
    stopping: Stopping,
    load_in_flight: bool,
    load_again: bool,
    /// Occurrences are prepared ahead only with local coordination: with several replicas a
    /// claim made early would be lost with a replica that dies before the instant, and
    /// recording before claiming would fill every replica's history with occurrences
    /// another one ran.
    prepare_ahead: bool,
}

impl Scheduler {
    /// A scheduler over `catalog` (the first load of the folder). Nothing fires until
    /// [`Scheduler::run`].
    pub fn new(
        parts: SchedulerParts,
        options: SchedulerOptions,
        catalog: LiveCatalog,
    ) -> (Scheduler, SchedulerHandle) {
        let (tx, rx) = mpsc::unbounded_channel();
        let catalog = Arc::new(catalog);
        let shared = Arc::new(Shared {
            catalog: RwLock::new(catalog.clone()),
            last_jobs: Mutex::new(HashMap::new()),
            stopping: AtomicBool::new(false),
        });
        let health = parts.coordinator.health();
        let ctx = Arc::new(JobContext {
            clock: parts.clock,
            history: parts.history,
            record_fired: parts.coordinator.kind() == CoordinationKind::AzureBlob,
            coordinator: parts.coordinator,
            runner: parts.runner,
            metrics: parts.metrics,
            replica_id: options.replica_id.clone(),
            events: tx.clone(),
            ended: parts.ended,
        });
        let handle = SchedulerHandle {
            events: tx,
            shared: shared.clone(),
        };
        let scheduler = Scheduler {
            ctx,
            options,
            shared,
            events: Some(rx),
            catalog: Arc::new(LiveCatalog::default()),
            slots: HashMap::new(),
            timers: BTreeSet::new(),
            jobs: HashMap::new(),
            by_runbook: HashMap::new(),
            next_key: 0,
            tracker: TaskTracker::new(),
            health,
            stopping: Stopping::Running,
            load_in_flight: false,
            load_again: false,
            prepare_ahead: false,
        };
        let mut scheduler = scheduler;
        scheduler.prepare_ahead = scheduler.ctx.coordinator.kind() == CoordinationKind::Local;
        scheduler.install(catalog, &ReloadSummary::default());
        (scheduler, handle)
    }

    /// Fires schedules until `stop` is cancelled, then shuts down: stops firing, lets
    /// running jobs finish for the grace period, cancels the rest between calls, and returns
    /// once every job is recorded.
    pub async fn run(mut self, stop: CancellationToken) {
        let Some(mut events) = self.events.take() else {
            return;
        };
        self.start_up().await;
        let background = CancellationToken::new();
        if self.ctx.coordinator.kind() == CoordinationKind::AzureBlob {
            self.tracker.spawn(sweep::run_sweeper(
                self.ctx.coordinator.clone(),
                self.shared.clone(),
                self.ctx.events.clone(),
                self.options.sweep_interval,
                background.clone(),
            ));
        }

        loop {
            if self.stopping != Stopping::Running && self.jobs.is_empty() {
                break;
            }
            let clock = self.ctx.clock.clone();
            let next_timer = match self.stopping {
                Stopping::Running => self.timers.first().map(|(at, _)| *at),
                _ => None,
            };
            let deadline = match self.stopping {
                Stopping::Grace(at) | Stopping::Cancelling(at) => Some(at),
                Stopping::Running => None,
            };
            let timer = sleep_until(&clock, next_timer);
            let deadline_passed = sleep_until(&clock, deadline);
            tokio::select! {
                biased;
                () = stop.cancelled(), if self.stopping == Stopping::Running => {
                    background.cancel();
                    self.begin_shutdown();
                }
                () = timer => self.fire_due(),
                Some(event) = events.recv() => self.handle(event),
                () = deadline_passed => self.deadline_passed().await,
            }
        }
        background.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        tracing::info!("scheduler stopped: every job is recorded");
    }

    fn key(&mut self) -> JobKey {
        self.next_key += 1;
        JobKey(self.next_key)
    }

    /// Catch-up runs, reruns of interrupted jobs and the last status of each runbook.
    async fn start_up(&mut self) {
        let history = self.ctx.history.clone();
        match history.last_status_per_runbook().await {
            Ok(last) => {
                let mut board = self
                    .shared
                    .last_jobs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                for (name, job) in last {
                    board.insert(
                        name,
                        LastJob {
                            job_id: job.id,
                            status: job.status,
                        },
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the last status of each runbook"),
        }
        for job in history.interrupted_at_open() {
            self.ctx
                .metrics
                .job_recorded(&job.runbook, JobStatus::Interrupted.as_str());
            // This process's own leftovers (one state folder, one owner): it tells people.
            let outcome = Outcome::new(JobStatus::Interrupted).with_error(
                job.error
                    .clone()
                    .unwrap_or_else(|| "interrupted: the worker stopped while it ran".into()),
            );
            self.announce(
                &job.runbook,
                Some(&job.id),
                job.trigger,
                job.scheduled_for,
                job.started_at,
                job.dry_run,
                &outcome,
                false,
            );
        }
        self.seed_last_runs(&history).await;

        match self.ctx.coordinator.kind() {
            CoordinationKind::Local => {
                // One process: the history is the truth about what fired and what died.
                let now = self.ctx.clock.now();
                match history.last_occurrence_per_runbook().await {
                    Ok(last) => {
                        for (name, instant, schedule) in catch_ups(&self.catalog, &last, now) {
                            self.occurrence(
                                &name,
                                instant,
                                schedule,
                                Trigger::CatchUp,
                                now,
                                ClaimKind::Occurrence(instant, schedule),
                            );
                        }
                        for (name, instant) in missed_at_start(&self.catalog, &last, now) {
                            let outcome = Outcome::new(JobStatus::Skipped).with_error(
                                "missed: no worker ran at its time and the runbook's `missed` policy does not catch it up",
                            );
                            self.announce(
                                &name,
                                None,
                                Trigger::Schedule,
                                Some(instant),
                                None,
                                false,
                                &outcome,
                                true,
                            );
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the last occurrences; no catch-up runs")
                    }
                }
                let reruns: Vec<(String, DateTime<Utc>)> = history
                    .interrupted_at_open()
                    .iter()
                    .filter(|j| matches!(j.trigger, Trigger::Schedule | Trigger::CatchUp))
                    .filter_map(|j| Some((j.runbook.clone(), j.scheduled_for?)))
                    .collect();
                for (name, instant) in reruns {
                    let wanted = self
                        .slots
                        .get(&name)
                        .filter(|s| s.runbook.on_interrupt == OnInterrupt::Rerun)
                        .map(|s| schedule_at(&s.runbook, instant));
                    if let Some(schedule) = wanted {
                        tracing::info!(runbook = %name, %instant, "rerunning a job the previous process left Interrupted (on_interrupt = \"rerun\")");
                        self.occurrence(
                            &name,
                            instant,
                            schedule,
                            Trigger::Retry,
                            now,
                            ClaimKind::Occurrence(instant, schedule),
                        );
                    }
                }
            }
            CoordinationKind::AzureBlob => {
                // The cluster's schedule status is the truth; reading it is I/O, so a task
                // does it and reports catch-ups as events.
                let wanted: Vec<Arc<Runbook>> = self
                    .catalog
                    .iter()
                    .map(|l| l.runbook.clone())
                    .filter(|r| {
                        r.missed == MissedPolicy::RunOnce
                            && r.enabled
                            && !r.schedule_entries.is_empty()
                    })
                    .collect();
                if !wanted.is_empty() {
                    self.tracker.spawn(sweep::catch_up_from_store(
                        self.ctx.coordinator.clone(),
                        self.ctx.clock.clone(),
                        wanted,
                        self.ctx.events.clone(),
                    ));
                }
            }
        }
    }

    /// Fires every timer that is due.
    /// When the timer of a pending occurrence wakes the loop: `PREPARE_AHEAD` before its
    /// fire time, or at the fire time when it is decided then.
    fn wake_at(due: &Due, deciding: bool) -> DateTime<Utc> {
        if deciding {
            due.fire_at
        } else {
            due.fire_at - chrono::Duration::from_std(PREPARE_AHEAD).unwrap_or_default()
        }
    }

    /// Sets the pending occurrence of `name` (replacing its timer), or clears it.
    fn arm(&mut self, name: &str, due: Option<Due>) {
        let Some(slot) = self.slots.get_mut(name) else {
            return;
        };
        if let Some(key) = slot.timer.take() {
            self.timers.remove(&(key, name.to_string()));
        }
        slot.next = due;
        slot.deciding = !self.prepare_ahead;
        if let Some(due) = due {
            let key = Self::wake_at(&due, slot.deciding);
            slot.timer = Some(key);
            self.timers.insert((key, name.to_string()));
        }
    }

    fn fire_due(&mut self) {
        let now = self.ctx.clock.now();
        let mut woken = Vec::new();
        while let Some((at, name)) = self.timers.first().cloned() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            if let Some(slot) = self.slots.get_mut(&name) {
                slot.timer = None;
                if let Some(due) = slot.next {
                    woken.push((name, due, slot.deciding));
                }
            }
        }
        // Start (or prepare) every job of this wake-up first and plan the next instants
        // afterwards: with many runbooks due together, planning is the slower part and no
        // job should wait for it.
        let mut done = Vec::new();
        for (name, due, deciding) in woken {
            let late = (now - due.fire_at).to_std().unwrap_or_default();
            if !deciding && late <= LATE_LIMIT {
                if self.prepare(&name, due) {
                    done.push((name, due));
                    continue;
                }
                if due.fire_at > now {
                    // Something of this runbook is active: decide at the fire time itself.
                    if let Some(slot) = self.slots.get_mut(&name) {
                        slot.deciding = true;
                        slot.timer = Some(due.fire_at);
                    }
                    self.timers.insert((due.fire_at, name));
                    continue;
                }
            }
            self.fire(&name, due, now);
            done.push((name, due));
        }
        for (name, due) in done {
            let Some(slot) = self.slots.get(&name) else {
                continue;
            };
            let late = (now - due.fire_at).to_std().unwrap_or_default();
            // After a long stall, continue from the present rather than firing every
            // occurrence that passed meanwhile.
            let next = if late > LATE_LIMIT {
                let after = now - chrono::Duration::from_std(LATE_LIMIT).unwrap_or_default();
                plan_next(&slot.runbook, after.max(due.instant))
            } else {
                plan_after(&slot.runbook, &due)
            };
            self.arm(&name, next);
        }
    }

    /// Prepares the occurrence `due` of an idle runbook ahead of its fire time (see
    /// [`PREPARE_AHEAD`]); false when the runbook has an active or queued job, so that the
    /// overlap policy is applied at the fire time with the state of that moment.
    fn prepare(&mut self, name: &str, due: Due) -> bool {
        if self.stopping != Stopping::Running {
            return true;
        }
        let idle = self
            .by_runbook
            .get(name)
            .is_none_or(|j| j.active.is_empty() && j.queued.is_none());
        if !idle {
            return false;
        }
        let Some(runbook) = self.slots.get(name).map(|s| s.runbook.clone()) else {
            return true;
        };
        if let Some(reason) = self.coordination_unreachable() {
            tracing::warn!(runbook = %name, instant = %due.instant, reason, "not claiming an occurrence while the coordination storage is unreachable");
            return true;
        }
        let params = match runbook.schedule_params(due.schedule) {
            Ok(params) => params,
            Err(e) => {
                tracing::error!(runbook = %name, error = %e, "cannot resolve the parameters of a scheduled run");
                return true;
            }
        };
        self.spawn(JobPlan {
            runbook,
            trigger: Trigger::Schedule,
            claim: ClaimKind::Occurrence(due.instant, due.schedule),
            schedule: Some(due.schedule),
            scheduled_for: Some(due.instant),
            due_at: due.fire_at,
            params,
            dry_run: false,
            reply: None,
            start: Start::At(due.fire_at),
        });
        true
    }

    /// One due occurrence: a normal run, or, when the loop found it far too late, the
    /// missed-run policy's answer.
    fn fire(&mut self, name: &str, due: Due, now: DateTime<Utc>) {
        let late = (now - due.fire_at).to_std().unwrap_or_default();
        if late <= LATE_LIMIT {
            self.occurrence(
                name,
                due.instant,
                due.schedule,
                Trigger::Schedule,
                due.fire_at,
                ClaimKind::Occurrence(due.instant, due.schedule),
            );
            return;
        }
        let Some(runbook) = self.slots.get(name).map(|s| s.runbook.clone()) else {
            return;
        };
        let entry = runbook
            .schedule_entries
            .iter()
            .find(|e| e.index == due.schedule);
        let catch_up = entry.and_then(|entry| {
            missed_run(
                &entry.schedule,
                &window(&runbook),
                Some(due.instant - chrono::Duration::nanoseconds(1)),
                now,
                runbook.missed,
                runbook.max_lateness,
            )
        });
        tracing::warn!(runbook = %name, instant = %due.instant, late_ms = late.as_millis() as u64, catch_up = catch_up.is_some(), "the scheduler fired too late (a stalled host?); treating the occurrence as missed");
        if catch_up.is_none() {
            let outcome = Outcome::new(JobStatus::Skipped).with_error(
                "missed: the scheduler could not fire it in time and the runbook's `missed` policy does not catch it up",
            );
            self.announce(
                name,
                None,
                Trigger::Schedule,
                Some(due.instant),
                None,
                false,
                &outcome,
                true,
            );
        }
        if let Some(catch_up) = catch_up {
            self.occurrence(
                name,
                catch_up.scheduled_for,
                due.schedule,
                Trigger::CatchUp,
                now,
                ClaimKind::Occurrence(catch_up.scheduled_for, due.schedule),
            );
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Reload => self.start_load(),
            Event::Loaded { catalog, errors } => {
                self.load_in_flight = false;
                let (next, summary) =
                    self.catalog
                        .reload(&self.options.runbooks_dir, catalog, errors);
                self.install(Arc::new(next), &summary);
                if self.load_again {
                    self.load_again = false;
                    self.start_load();
                }
            }
            Event::Run {
                name,
                params,
                dry_run,
                trigger,
                reply,
            } => self.run_requested(name, params, dry_run, trigger, reply),
            Event::Cancel { id, reply } => {
                let found = self.jobs.values().find(|j| j.job_id.as_ref() == Some(&id));
                if let Some(job) = found {
                    tracing::info!(job_id = %id, runbook = %job.runbook, "cancel requested");
                    job.cancel.cancel();
                }
                let _ = reply.send(found.is_some());
            }
            Event::CatchUp {
                name,
                instant,
                schedule,
            } => {
                let now = self.ctx.clock.now();
                self.occurrence(
                    &name,
                    instant,
                    schedule,
                    Trigger::CatchUp,
                    now,
                    ClaimKind::Occurrence(instant, schedule),
                );
            }
            Event::Interrupted(interrupted) => {
                self.sweep_marked(&interrupted);
                self.interrupted(*interrupted)
            }
            Event::Job(job) => self.job_event(job),
        }
    }

    fn start_load(&mut self) {
        if self.stopping != Stopping::Running {
            return;
        }
        if self.load_in_flight {
            // Changes keep coming: load once more when this load is done.
            self.load_again = true;
            return;
        }
        self.load_in_flight = true;
        let dir = self.options.runbooks_dir.clone();
        let policy = self.options.policy.clone();
        let known = self.options.notify_targets.clone();
        let events = self.ctx.events.clone();
        self.tracker.spawn(async move {
            let folder = dir.clone();
            let loaded = tokio::task::spawn_blocking(move || {
                let (mut catalog, mut errors) = load_folder(&dir, &policy);
                catalog.check_notify_targets(&known, &mut errors);
                (catalog, errors)
            })
            .await;
            let (catalog, errors) = load_result(&folder, loaded);
            let _ = events.send(Event::Loaded { catalog, errors });
        });
    }

    /// Puts `catalog` in force: new runbooks get a timer, changed ones keep theirs when
    /// their timing is unchanged, removed ones lose it (their queued job is cancelled,
    /// running jobs are left alone).
    fn install(&mut self, catalog: Arc<LiveCatalog>, summary: &ReloadSummary) {
        let now = self.ctx.clock.now();
        for live in catalog.iter() {
            let name = live.runbook.name.clone();
            match self.slots.get_mut(&name) {
                Some(slot) if Arc::ptr_eq(&slot.runbook, &live.runbook) => {}
                Some(slot) => {
                    let keep = same_timing(&slot.runbook, &live.runbook);
                    slot.runbook = live.runbook.clone();
                    if !keep {
                        let next = plan_next(&slot.runbook, now);
                        self.arm(&name, next);
                    }
                }
                None => {
                    self.slots.insert(
                        name.clone(),
                        Slot {
                            runbook: live.runbook.clone(),
                            next: None,
                            timer: None,
                            deciding: false,
                        },
                    );
                    let next = plan_next(&live.runbook, now);
                    self.arm(&name, next);
                }
            }
        }
        let removed: Vec<String> = self
            .slots
            .keys()
            .filter(|name| catalog.get(name).is_none())
            .cloned()
            .collect();
        for name in removed {
            self.arm(&name, None);
            self.slots.remove(&name);
            // The board only serves runbooks in force; without this, every runbook ever
            // deleted would stay in it.
            self.shared
                .last_jobs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&name);
            // Its queued or prepared occurrence belongs to the schedule that stopped.
            if let Some(jobs) = self.by_runbook.get(&name) {
                for key in jobs.active.iter().chain(jobs.queued.iter()) {
                    if let Some(job) = self.jobs.get(key)
                        && matches!(job.phase, Phase::Queued | Phase::Prepared)
                    {
                        job.cancel.cancel();
                    }
                }
            }
        }

        log_reload(&catalog, summary);
        self.ctx
            .metrics
            .set_runbooks(catalog.len(), catalog.invalid_count());
        self.ctx
            .metrics
            .retain_runbooks(|name| catalog.get(name).is_some());
        *self
            .shared
            .catalog
            .write()
            .unwrap_or_else(|p| p.into_inner()) = catalog.clone();
        self.catalog = catalog;
    }

    fn coordination_unreachable(&self) -> Option<String> {
        match &*self.health.borrow() {
            StorageHealth::Failing { reason } => Some(reason.clone()),
            _ => None,
        }
    }

    /// An occurrence of `name` at `instant` is due: start it, queue it, skip it or replace
    /// the running job, per the runbook's `overlap`.
    fn occurrence(
        &mut self,
        name: &str,
        instant: DateTime<Utc>,
        schedule: usize,
        trigger: Trigger,
        due_at: DateTime<Utc>,
        claim: ClaimKind,
    ) {
        if self.stopping != Stopping::Running {
            return;
        }
        let Some(slot) = self.slots.get(name) else {
            return;
        };
        let runbook = slot.runbook.clone();
        if let Some(reason) = self.coordination_unreachable() {
            tracing::warn!(runbook = %name, %instant, reason, "not claiming an occurrence while the coordination storage is unreachable");
            return;
        }
        let params = match runbook.schedule_params(schedule) {
            Ok(params) => params,
            Err(e) => {
                tracing::error!(runbook = %name, error = %e, "cannot resolve the parameters of a scheduled run");
                return;
            }
        };
        let (running, queued) = self.overlap_state(name);
        // Another schedule's occurrence at this same instant is not an overlap to skip or
        // replace: both schedules are due, so this one waits for its sibling.
        let policy = if self.has_sibling(name, instant) {
            OverlapPolicy::Queue
        } else {
            runbook.overlap
        };
        let start = match decide_overlap(policy, running, queued) {
            OverlapDecision::Start => Start::Now,
            OverlapDecision::Queue => Start::Queued,
            OverlapDecision::CancelRunningThenStart => {
                self.cancel_runbook_jobs(name);
                Start::Queued
            }
            OverlapDecision::Skip { reason } => {
                let job = NewJob {
                    runbook: name.to_string(),
                    file_hash: runbook.hash.clone(),
                    trigger,
                    scheduled_for: Some(instant),
                    dry_run: false,
                    params: params.into_iter().collect(),
                };
                self.tracker.spawn(record_overlap_skip(
                    self.ctx.clone(),
                    runbook,
                    job,
                    reason.describe(),
                ));
                return;
            }
        };
        self.spawn(JobPlan {
            runbook,
            trigger,
            claim,
            schedule: Some(schedule),
            scheduled_for: Some(instant),
            due_at,
            params,
            dry_run: false,
            reply: None,
            start,
        });
    }

    /// Whether a job of `name` for another schedule's occurrence at `instant` is active or
    /// queued.
    fn has_sibling(&self, name: &str, instant: DateTime<Utc>) -> bool {
        self.by_runbook.get(name).is_some_and(|jobs| {
            jobs.active
                .iter()
                .chain(jobs.queued.iter())
                .filter_map(|k| self.jobs.get(k))
                .any(|j| j.occurrence == Some(instant))
        })
    }

    /// (a job of `name` holds its occurrence and runs, a job of `name` is queued).
    fn overlap_state(&self, name: &str) -> (bool, bool) {
        let Some(jobs) = self.by_runbook.get(name) else {
            return (false, false);
        };
        let running = jobs
            .active
            .iter()
            .filter_map(|k| self.jobs.get(k))
            .any(|j| matches!(j.phase, Phase::Running | Phase::Prepared));
        (running, jobs.queued.is_some())
    }

    /// `overlap = "replace"`: cancels the running jobs and the queued one of `name`.
    fn cancel_runbook_jobs(&mut self, name: &str) {
        let Some(jobs) = self.by_runbook.get(name) else {
            return;
        };
        for key in jobs.active.iter().chain(jobs.queued.iter()) {
            if let Some(job) = self.jobs.get(key) {
                tracing::info!(runbook = %name, job_id = ?job.job_id, "cancelling the running job: a new occurrence replaces it (overlap = \"replace\")");
                job.cancel.cancel();
            }
        }
    }

    fn spawn(&mut self, plan: JobPlan) {
        let key = self.key();
        let name = plan.runbook.name.clone();
        let cancel = CancellationToken::new();
        let (start, go, phase) = match plan.start {
            Start::Now => (StartWhen::Now, None, Phase::Starting),
            Start::At(at) => (StartWhen::At(at), None, Phase::Prepared),
            Start::Queued => {
                let (go, signal) = oneshot::channel();
                (StartWhen::Signalled(signal), Some(go), Phase::Queued)
            }
        };
        let order_occurrence = match &plan.claim {
            ClaimKind::Nothing => None,
            _ => plan.scheduled_for,
        };
        let order = JobOrder {
            key,
            runbook: plan.runbook,
            trigger: plan.trigger,
            claim: plan.claim,
            schedule: plan.schedule,
            scheduled_for: plan.scheduled_for,
            due_at: plan.due_at,
            params: plan.params,
            dry_run: plan.dry_run,
            start,
            reply: plan.reply,
            cancel: cancel.clone(),
        };
        let handle = self.tracker.spawn(run_job(self.ctx.clone(), order));
        self.jobs.insert(
            key,
            JobSlot {
                runbook: name.clone(),
                occurrence: order_occurrence,
                phase,
                job_id: None,
                cancel,
                go,
                abort: handle.abort_handle(),
            },
        );
        let jobs = self.by_runbook.entry(name.clone()).or_default();
        if phase == Phase::Queued {
            if let Some(previous) = jobs.queued.replace(key)
                && let Some(job) = self.jobs.get(&previous)
            {
                // Only "replace" queues over a queued job; the newer occurrence wins.
                job.cancel.cancel();
            }
            self.start_queued_if_free(&name);
        } else {
            jobs.active.push(key);
        }
    }

    /// Starts the queued job of `name` once no other job of it is active.
    fn start_queued_if_free(&mut self, name: &str) {
        let Some(jobs) = self.by_runbook.get_mut(name) else {
            return;
        };
        if !jobs.active.is_empty() {
            return;
        }
        let Some(key) = jobs.queued.take() else {
            return;
        };
        jobs.active.push(key);
        if let Some(job) = self.jobs.get_mut(&key) {
            job.phase = Phase::Starting;
            if let Some(go) = job.go.take() {
                let _ = go.send(());
            }
        }
    }

    fn run_requested(
        &mut self,
        name: String,
        params: Vec<(String, ParamInput)>,
        dry_run: bool,
        trigger: Trigger,
        reply: oneshot::Sender<Result<JobId, RunError>>,
    ) {
        if self.stopping != Stopping::Running {
            let _ = reply.send(Err(RunError::ShuttingDown));
            return;
        }
        let Some(slot) = self.slots.get(&name) else {
            let _ = reply.send(Err(RunError::NotFound(name)));
            return;
        };
        let runbook = slot.runbook.clone();
        let params = match runbook.resolve_params(params) {
            Ok(params) => params,
            Err(e) => {
                let _ = reply.send(Err(RunError::Params(e)));
                return;
            }
        };
        let now = self.ctx.clock.now();
        let (running, queued) = self.overlap_state(&name);
        let start = match decide_overlap(runbook.overlap, running, queued) {
            OverlapDecision::Start => Start::Now,
            OverlapDecision::Queue => Start::Queued,
            OverlapDecision::CancelRunningThenStart => {
                self.cancel_runbook_jobs(&name);
                Start::Queued
            }
            OverlapDecision::Skip { reason } => {
                let message = match runbook.overlap {
                    OverlapPolicy::Queue => format!(
                        "runbook {name:?} is running and another job is already queued (overlap = \"queue\" keeps one waiting); try again when it ends"
                    ),
                    _ => format!(
                        "runbook {name:?} is running (overlap = \"skip\"); try again when its job ends ({})",
                        reason.describe()
                    ),
                };
                let _ = reply.send(Err(RunError::Busy(message)));
                return;
            }
        };
        self.spawn(JobPlan {
            runbook,
            trigger,
            claim: ClaimKind::Nothing,
            schedule: None,
            scheduled_for: None,
            due_at: now,
            params,
            dry_run,
            reply: Some(reply),
            start,
        });
    }

    /// A sweep of this replica marked an orphaned occurrence Interrupted: the fenced write
    /// succeeded here only, so this replica tells people (the owner is gone).
    fn sweep_marked(&self, interrupted: &InterruptedOccurrence) {
        let record = &interrupted.record;
        let job_id = record
            .job_id
            .as_deref()
            .and_then(|id| id.parse::<JobId>().ok());
        let outcome = Outcome::new(JobStatus::Interrupted).with_error(format!(
            "interrupted: replica {} stopped answering while it held this occurrence",
            record.owner
        ));
        self.announce(
            &record.runbook,
            job_id.as_ref(),
            Trigger::Schedule,
            Some(record.scheduled_for),
            record.started_at,
            false,
            &outcome,
            false,
        );
    }

    /// A job or occurrence the loop itself found ended: the `job_finished` event (unless
    /// `missed`: no job ran) and the notice. No history read: the loop never waits.
    #[allow(clippy::too_many_arguments)]
    fn announce(
        &self,
        name: &str,
        job_id: Option<&JobId>,
        trigger: Trigger,
        scheduled_for: Option<DateTime<Utc>>,
        started_at: Option<DateTime<Utc>>,
        dry_run: bool,
        outcome: &Outcome,
        missed: bool,
    ) {
        let Some(runbook) = self.slots.get(name).map(|s| s.runbook.clone()) else {
            return;
        };
        let ended = Ended {
            job_id,
            started_at,
            ..Ended::new(
                &runbook,
                trigger,
                scheduled_for,
                dry_run,
                self.ctx.clock.now(),
            )
        };
        if !missed {
            ended::log_finished(&self.ctx, &ended, outcome);
        }
        if let Some(listener) = &self.ctx.ended {
            let mut notice = ended::notice(&ended, outcome);
            notice.missed = missed;
            listener.job_ended(notice);
        }
    }

    /// The last-run and last-success gauges of each runbook, from the history at start.
    async fn seed_last_runs(&self, history: &crate::history::JobHistory) {
        for live in self.catalog.iter() {
            let name = &live.runbook.name;
            let filter = crate::history::JobFilter {
                runbook: Some(name.clone()),
                status: None,
                limit: 50,
                before: None,
            };
            let Ok(jobs) = history.list_jobs(&filter).await else {
                continue;
            };
            // Newest first; a success also sets the last run, so it goes first.
            let ran = jobs.iter().filter(|j| j.started_at.is_some());
            if let Some(success) = ran
                .clone()
                .filter(|j| j.status == JobStatus::Completed && !j.dry_run)
                .find_map(|j| j.ended_at)
            {
                self.ctx
                    .metrics
                    .runbook_ran(name, success.timestamp(), true);
            }
            if let Some(last) = ran.clone().find_map(|j| j.ended_at) {
                self.ctx.metrics.runbook_ran(name, last.timestamp(), false);
            }
        }
    }

    /// A sweep marked an orphaned occurrence Interrupted: run it again when the runbook
    /// says `on_interrupt = "rerun"`, or when the job had not started (nothing to repeat);
    /// never more than once.
    fn interrupted(&mut self, interrupted: InterruptedOccurrence) {
        let record = &interrupted.record;
        // The shared history holds the dead replica's job of this occurrence: show it
        // Interrupted there too, for every replica.
        if self.ctx.history.is_shared() {
            let history = self.ctx.history.clone();
            let (runbook, at, owner) = (
                record.runbook.clone(),
                record.scheduled_for,
                record.owner.clone(),
            );
            self.tracker.spawn(async move {
                if let Err(e) = history.mark_occurrence_interrupted(&runbook, at, &owner).await {
                    tracing::warn!(%runbook, scheduled_for = %at, error = %e.chain(), "cannot mark an orphaned job Interrupted in the shared history");
                }
            });
        }
        let Some(slot) = self.slots.get(&record.runbook) else {
            return;
        };
        let rerun = slot.runbook.on_interrupt == OnInterrupt::Rerun || !interrupted.started;
        if !rerun || record.attempt >= 2 {
            return;
        }
        let name = record.runbook.clone();
        let instant = record.scheduled_for;
        let schedule = record.schedule;
        tracing::info!(runbook = %name, %instant, schedule, started = interrupted.started, "rerunning an interrupted occurrence");
        let now = self.ctx.clock.now();
        self.occurrence(
            &name,
            instant,
            schedule,
            Trigger::Retry,
            now,
            ClaimKind::Rerun(Box::new(interrupted)),
        );
    }

    fn job_event(&mut self, event: JobEvent) {
        match event {
            JobEvent::Recorded { key, job_id } => {
                if let Some(job) = self.jobs.get_mut(&key) {
                    job.job_id = Some(job_id.clone());
                    let runbook = job.runbook.clone();
                    self.set_last(&runbook, job_id, JobStatus::Queued);
                }
            }
            JobEvent::Started { key } => {
                if let Some(job) = self.jobs.get_mut(&key) {
                    job.phase = Phase::Running;
                    let runbook = job.runbook.clone();
                    if let Some(id) = job.job_id.clone() {
                        self.set_last(&runbook, id, JobStatus::Running);
                    }
                }
            }
            JobEvent::Finished {
                key,
                status,
                job_id,
                lost_job,
            } => {
                let Some(job) = self.jobs.remove(&key) else {
                    return;
                };
                if let Some(jobs) = self.by_runbook.get_mut(&job.runbook) {
                    jobs.active.retain(|k| *k != key);
                    if jobs.queued == Some(key) {
                        jobs.queued = None;
                    }
                }
                if let (Some(status), Some(id)) = (status, job_id)
                    && status != JobStatus::Skipped
                {
                    self.set_last(&job.runbook, id, status);
                }
                if let Some(id) = lost_job {
                    // The task died without recording the end: record it for it.
                    let history = self.ctx.history.clone();
                    let metrics = self.ctx.metrics.clone();
                    let runbook = job.runbook.clone();
                    self.set_last(&runbook, id.clone(), JobStatus::Failed);
                    self.tracker.spawn(async move {
                        let outcome = Outcome::new(JobStatus::Failed).with_error(
                            "the job's task ended unexpectedly (an internal error); please report it",
                        );
                        if history.finish(&id, outcome).await.is_ok() {
                            metrics.job_recorded(&runbook, JobStatus::Failed.as_str());
                        }
                    });
                }
                if self.stopping == Stopping::Running {
                    self.start_queued_if_free(&job.runbook);
                }
                let remove = self
                    .by_runbook
                    .get(&job.runbook)
                    .is_some_and(|j| j.active.is_empty() && j.queued.is_none());
                if remove {
                    self.by_runbook.remove(&job.runbook);
                }
            }
        }
    }

    fn set_last(&self, runbook: &str, job_id: JobId, status: JobStatus) {
        if !self.slots.contains_key(runbook) {
            // A job of a runbook removed meanwhile: nobody asks for it any more.
            return;
        }
        let mut board = self
            .shared
            .last_jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // A late event of an older job must not hide a newer one: ids sort by creation.
        let newer = board.get(runbook).is_none_or(|last| last.job_id <= job_id);
        if newer {
            board.insert(runbook.to_string(), LastJob { job_id, status });
        }
    }

    fn begin_shutdown(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.timers.clear();
        let now = self.ctx.clock.now();
        let grace = chrono::Duration::from_std(self.options.shutdown_grace).unwrap_or_default();
        self.stopping = Stopping::Grace(now + grace);
        // Queued jobs would never start: end them now. Prepared ones are already this
        // replica's occurrences (no other replica will run them): they start at their
        // instant and count as running for the grace period.
        for job in self.jobs.values().filter(|j| j.phase == Phase::Queued) {
            job.cancel.cancel();
        }
        let running = self.jobs.len();
        tracing::info!(
            running,
            grace_ms = self.options.shutdown_grace.as_millis() as u64,
            "shutting down: no more schedules fire; running jobs may finish within the grace period"
        );
    }

    async fn deadline_passed(&mut self) {
        match self.stopping {
            Stopping::Running => {}
            Stopping::Grace(_) => {
                tracing::warn!(
                    jobs = self.jobs.len(),
                    "the shutdown grace period is over: cancelling the running jobs between calls"
                );
                for job in self.jobs.values() {
                    job.cancel.cancel();
                }
                let wait = chrono::Duration::from_std(self.options.cancel_wait).unwrap_or_default();
                self.stopping = Stopping::Cancelling(self.ctx.clock.now() + wait);
            }
            Stopping::Cancelling(_) => {
                // Jobs stuck in a call that does not return: stop waiting for them and
                // record them Cancelled here.
                let stuck: Vec<JobSlot> = self.jobs.drain().map(|(_, job)| job).collect();
                for job in stuck {
                    job.abort.abort();
                    if let Some(id) = job.job_id {
                        let outcome = Outcome::new(JobStatus::Cancelled).with_error(
                            "cancelled at shutdown: the job did not stop between calls in time",
                        );
                        match self.ctx.history.finish(&id, outcome).await {
                            Ok(()) => self
                                .ctx
                                .metrics
                                .job_recorded(&job.runbook, JobStatus::Cancelled.as_str()),
                            Err(e) => {
                                tracing::error!(job_id = %id, error = %e, "cannot record a job cancelled at shutdown")
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Completes at `at` on `clock`, or never.
async fn sleep_until(clock: &SharedClock, at: Option<DateTime<Utc>>) {
    match at {
        Some(at) => clock.sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The catch-up occurrence of each runbook (`missed = "run-once"`), given the last
/// occurrence each one fired. Pure.
pub fn catch_ups(
    catalog: &LiveCatalog,
    last_fired: &std::collections::BTreeMap<String, DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Vec<(String, DateTime<Utc>, usize)> {
    catalog
        .iter()
        .map(|l| &l.runbook)
        .flat_map(|r| {
            missed_occurrences(r, last_fired.get(&r.name).copied(), now)
                .into_iter()
                .map(|(instant, schedule)| (r.name.clone(), instant, schedule))
        })
        .collect()
}

/// The occurrences missed while no worker ran that are not caught up (`missed = "skip"`,
/// or older than `max_lateness`): the latest of each runbook, for a `missed` notice. Pure.
pub fn missed_at_start(
    catalog: &LiveCatalog,
    last_fired: &std::collections::BTreeMap<String, DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Vec<(String, DateTime<Utc>)> {
    let caught_up: BTreeSet<String> = catch_ups(catalog, last_fired, now)
        .into_iter()
        .map(|(name, _, _)| name)
        .collect();
    let mut missed = Vec::new();
    for runbook in catalog.iter().map(|l| &l.runbook) {
        if !runbook.enabled || caught_up.contains(&runbook.name) {
            continue;
        }
        let (Some(schedule), Some(last)) = (&runbook.schedule, last_fired.get(&runbook.name))
        else {
            continue;
        };
        if let Some(latest) = schedule.latest_at_or_before(now)
            && latest > *last
            && latest < now
            && window(runbook).contains(latest)
        {
            missed.push((runbook.name.clone(), latest));
        }
    }
    missed
}

/// What a reload's loading task gave, as a load result: a task that failed (a panic in the
/// loader) counts as an unreadable folder, which keeps every runbook in force, rather than
/// as an empty folder, which would unschedule them all.
fn load_result(
    dir: &std::path::Path,
    loaded: Result<(Catalog, Vec<ValidationError>), tokio::task::JoinError>,
) -> (Catalog, Vec<ValidationError>) {
    match loaded {
        Ok(result) => result,
        Err(e) => {
            tracing::error!(error = %e, "loading the runbooks folder failed; keeping the catalog");
            let error = ValidationError::whole_file(
                dir.display().to_string(),
                ErrorKind::Io,
                format!(
                    "loading the runbooks folder failed ({e}); the runbooks loaded before stay in force"
                ),
            );
            (Catalog::default(), vec![error])
        }
    }
}

fn log_reload(catalog: &LiveCatalog, summary: &ReloadSummary) {
    if let Some(error) = catalog.folder_error() {
        tracing::error!(error = %error, "cannot read the runbooks folder; the runbooks loaded before stay in force");
    }
    for name in &summary.added {
        tracing::info!(runbook = %name, "runbook loaded");
    }
    for name in &summary.changed {
        tracing::info!(runbook = %name, "runbook changed; the new version is in force (running jobs keep theirs)");
    }
    for name in &summary.removed {
        tracing::info!(runbook = %name, "runbook file removed; its schedule stopped");
    }
    for name in &summary.kept_last_good {
        if let Some(live) = catalog.get(name) {
            for error in &live.errors {
                tracing::warn!(runbook = %name, file = %error.file, line = error.line, column = error.column, message = %error.message, "runbook file fails validation; its last good version stays in force");
            }
        }
    }
    for (file, errors) in catalog.invalid_files() {
        if summary.invalid.iter().any(|f| f == file) {
            for error in errors {
                tracing::warn!(file = %file, line = error.line, column = error.column, message = %error.message, "runbook file fails validation; it does not run until fixed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runbook::{Catalog, CmdletPolicy, parse_runbook};

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap_or_else(|e| panic!("bad test instant {text}: {e}"))
            .with_timezone(&Utc)
    }

    fn runbook(name: &str, top: &str) -> Runbook {
        let text = format!("{top}\n[[steps]]\nname = \"find\"\ncmdlet = \"Get-Mailbox\"\n");
        parse_runbook(
            name,
            &format!("{name}.toml"),
            &text,
            &CmdletPolicy::new(&PolicySettings::default()),
        )
        .unwrap_or_else(|e| panic!("{e:?}"))
    }

    #[test]
    fn the_next_occurrence_follows_the_schedule_window_enabled_flag_and_jitter() {
        /// (top-level keys, after, expected instant, expected fire time, why)
        type Case = (
            &'static str,
            &'static str,
            Option<&'static str>,
            Option<&'static str>,
            &'static str,
        );
        let cases: &[Case] = &[
            (
                "schedule = \"0 6 * * *\"",
                "2026-03-05T05:00:00Z",
                Some("2026-03-05T06:00:00Z"),
                Some("2026-03-05T06:00:00Z"),
                "the next instant, fired on time",
            ),
            (
                "schedule = \"0 6 * * *\"",
                "2026-03-05T06:00:00Z",
                Some("2026-03-06T06:00:00Z"),
                Some("2026-03-06T06:00:00Z"),
                "strictly after the given instant",
            ),
            (
                "schedule = \"0 6 * * *\"\nenabled = false",
                "2026-03-05T05:00:00Z",
                None,
                None,
                "a disabled runbook has no next occurrence",
            ),
            (
                "",
                "2026-03-05T05:00:00Z",
                None,
                None,
                "an on-demand runbook has no next occurrence",
            ),
            (
                "schedule = \"0 6 * * *\"\nstart_at = 2026-03-08T00:00:00Z",
                "2026-03-05T05:00:00Z",
                Some("2026-03-08T06:00:00Z"),
                Some("2026-03-08T06:00:00Z"),
                "nothing before start_at",
            ),
            (
                "schedule = \"0 6 * * *\"\nend_at = 2026-03-05T07:00:00Z",
                "2026-03-05T06:00:00Z",
                None,
                None,
                "nothing at or after end_at",
            ),
        ];
        for (top, after, instant, fire_at, why) in cases {
            let due = plan_next(&runbook("r", top), utc(after));
            assert_eq!(due.map(|d| d.instant), instant.map(utc), "{why}");
            assert_eq!(due.map(|d| d.fire_at), fire_at.map(utc), "{why}");
        }
    }

    #[test]
    fn jitter_delays_the_fire_time_within_its_span_but_not_the_instant() {
        let r = runbook("spread", "schedule = \"0 6 * * *\"\njitter = \"10m\"");
        let due = plan_next(&r, utc("2026-03-05T05:00:00Z")).unwrap();
        assert_eq!(due.instant, utc("2026-03-05T06:00:00Z"));
        let delay = due.fire_at - due.instant;
        assert!(
            delay >= chrono::Duration::zero() && delay < chrono::Duration::minutes(10),
            "{delay}"
        );
        assert_eq!(
            plan_next(&r, utc("2026-03-05T05:00:00Z")),
            Some(due),
            "deterministic"
        );
    }

    #[test]
    fn timing_changes_are_told_apart_from_other_edits() {
        let base = runbook("r", "schedule = \"0 6 * * *\"\ndescription = \"a\"");
        let cases = [
            ("schedule = \"0 6 * * *\"\ndescription = \"b\"", true),
            ("schedule = \"0 7 * * *\"", false),
            (
                "schedule = \"0 6 * * *\"\ntimezone = \"Europe/Berlin\"",
                false,
            ),
            ("schedule = \"0 6 * * *\"\nenabled = false", false),
            ("schedule = \"0 6 * * *\"\njitter = \"1m\"", false),
            (
                "schedule = \"0 6 * * *\"\nend_at = 2030-01-01T00:00:00Z",
                false,
            ),
        ];
        for (top, same) in cases {
            assert_eq!(same_timing(&base, &runbook("r", top)), same, "{top}");
        }
    }

    #[test]
    fn catch_ups_come_from_the_last_fired_occurrence_and_the_policy() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, top: &str| {
            std::fs::write(
                dir.path().join(format!("{name}.toml")),
                format!("{top}\n[[steps]]\nname = \"find\"\ncmdlet = \"Get-Mailbox\"\n"),
            )
            .unwrap();
        };
        write("once", "schedule = \"0 6 * * *\"\nmissed = \"run-once\"");
        write("skip", "schedule = \"0 6 * * *\"");
        write(
            "never-fired",
            "schedule = \"0 6 * * *\"\nmissed = \"run-once\"",
        );
        write(
            "off",
            "schedule = \"0 6 * * *\"\nmissed = \"run-once\"\nenabled = false",
        );
        let (loaded, errors): (Catalog, _) =
            crate::runbook::load_folder(dir.path(), &PolicySettings::default());
        assert!(errors.is_empty(), "{errors:?}");
        let catalog = LiveCatalog::first(dir.path(), loaded, errors);
        let last: std::collections::BTreeMap<String, DateTime<Utc>> = ["once", "skip", "off"]
            .iter()
            .map(|n| (n.to_string(), utc("2026-03-01T06:00:00Z")))
            .collect();
        let found = catch_ups(&catalog, &last, utc("2026-03-05T08:00:00Z"));
        assert_eq!(
            found,
            [("once".to_string(), utc("2026-03-05T06:00:00Z"), 0)]
        );
        // What is not caught up is missed: "skip" always, "run-once" beyond max_lateness.
        let missed = missed_at_start(&catalog, &last, utc("2026-03-05T08:00:00Z"));
        assert_eq!(missed, [("skip".to_string(), utc("2026-03-05T06:00:00Z"))]);
        let nothing_since = missed_at_start(&catalog, &last, utc("2026-03-01T07:00:00Z"));
        assert_eq!(nothing_since, []);
    }

    #[tokio::test]
    async fn a_reload_whose_loading_task_failed_keeps_every_runbook_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("nightly.toml"),
            "schedule = \"0 2 * * *\"\n[[steps]]\nname = \"find\"\ncmdlet = \"Get-Mailbox\"\n",
        )
        .unwrap();
        let (loaded, errors) = load_folder(dir.path(), &PolicySettings::default());
        let live = LiveCatalog::first(dir.path(), loaded, errors);
        assert_eq!(live.len(), 1);

        // A loader that panics (the only way `spawn_blocking` fails here).
        let failed = tokio::task::spawn_blocking(|| -> (Catalog, Vec<ValidationError>) {
            panic!("the loader broke")
        })
        .await;
        let (catalog, errors) = load_result(dir.path(), failed);
        let (next, summary) = live.reload(dir.path(), catalog, errors);
        assert!(next.get("nightly").is_some(), "the runbook stays scheduled");
        assert!(summary.removed.is_empty(), "{summary:?}");
        let why = next.folder_error().expect("the failure is reported");
        assert!(
            why.message.contains("loading the runbooks folder failed"),
            "{why:?}"
        );
    }
}
