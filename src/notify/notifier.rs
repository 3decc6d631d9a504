//! The [`Notifier`]: a bounded queue in front of one task that throttles, sends and
//! reports. See the module documentation for the contract.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use url::Url;

use super::NotifyError;
use super::deliver::{DeliveryOutcome, DeliveryReport, Dispatcher, new_message_id};
use super::event::{JobNotice, NotifyEvent};
use super::mail::MailSender;
use super::payload::Message;
use super::settings::NotifySettings;
use super::throttle::{Admit, DEFAULT_CAPACITY, Throttle};
use crate::clock::SharedClock;
use crate::telemetry::metrics::Metrics;

/// Deliveries in progress at once; beyond it the task stops taking notices from the
/// queue (which then fills and drops), so a hanging receiver costs bounded memory.
const MAX_IN_FLIGHT: usize = 16;

/// Where delivery outcomes go: the wiring implements it to record each report on the
/// job (a `notifications` stream entry). Called from the notifier's task: it must not
/// block (hand the report to a channel or a non-blocking store call).
pub trait NotifyEvents: Send + Sync + 'static {
    fn delivered(&self, report: &DeliveryReport);
}

/// What [`Notifier::start`] needs besides the settings.
pub struct NotifierDeps {
    /// Sends `email` targets' messages; `None` makes them fail with a clear error.
    pub mail: Option<Arc<dyn MailSender>>,
    /// `http.public_url`: messages link to `<public_url>/jobs/<id>` when it is set.
    pub public_url: Option<Url>,
    pub clock: SharedClock,
    pub metrics: Arc<Metrics>,
    pub events: Arc<dyn NotifyEvents>,
}

/// What [`Notifier::job_ended`] did with a notice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Submitted {
    /// Queued for the targets that want it.
    Queued,
    /// No target wants it (no event for this status, not subscribed, a dry run, or no
    /// targets at all).
    NotNeeded,
    /// The queue was full or the notifier stopped: dropped, counted and reported.
    Dropped,
}

struct Queued {
    notice: JobNotice,
    event: NotifyEvent,
    targets: Vec<usize>,
}

struct Shared {
    dispatcher: Dispatcher,
    default: Vec<String>,
    metrics: Arc<Metrics>,
    events: Arc<dyn NotifyEvents>,
}

impl Shared {
    fn report(&self, report: DeliveryReport) {
        self.metrics
            .notification(&report.target, report.outcome.as_str());
        match &report.outcome {
            DeliveryOutcome::Delivered { .. } | DeliveryOutcome::Suppressed => {
                tracing::info!(runbook = %report.runbook, target_name = %report.target, event = %report.event, outcome = report.outcome.as_str(), attempts = report.attempts, "notification");
            }
            _ => {
                tracing::warn!(runbook = %report.runbook, target_name = %report.target, event = %report.event, outcome = report.outcome.as_str(), attempts = report.attempts, detail = %report.line(), "notification not delivered");
            }
        }
        self.events.delivered(&report);
    }

    fn report_without_sending(
        &self,
        notice: &JobNotice,
        event: NotifyEvent,
        target: usize,
        outcome: DeliveryOutcome,
    ) {
        let target = &self.dispatcher.targets()[target];
        self.report(DeliveryReport {
            runbook: notice.runbook.clone(),
            job_id: notice.job_id.clone(),
            target: target.name.clone(),
            kind: target.kind,
            event,
            message_id: String::new(),
            attempts: 0,
            outcome,
        });
    }
}

/// The handle the wiring keeps (cheap to clone). See the module documentation.
#[derive(Clone)]
pub struct Notifier {
    shared: Arc<Shared>,
    queue: mpsc::Sender<Queued>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("targets", &self.shared.dispatcher.targets().len())
            .finish_non_exhaustive()
    }
}

impl Notifier {
    /// Resolves the targets (reading `url_file`/`secret_file`) and starts the task, which
    /// runs until `cancel`, then sends what is queued for up to `notify.drain_timeout`.
    /// Await the returned handle at shutdown.
    pub fn start(
        settings: &NotifySettings,
        deps: NotifierDeps,
        cancel: CancellationToken,
    ) -> Result<(Notifier, JoinHandle<()>), NotifyError> {
        let dispatcher = Dispatcher::new(settings, deps.mail, deps.public_url, deps.clock)?;
        let shared = Arc::new(Shared {
            dispatcher,
            default: settings.default.clone(),
            metrics: deps.metrics,
            events: deps.events,
        });
        let (queue, rx) = mpsc::channel(settings.queue_capacity.max(1));
        let worker = Worker {
            shared: shared.clone(),
            throttle: Throttle::new(settings.min_interval.get(), DEFAULT_CAPACITY),
            gone: HashSet::new(),
            drain_timeout: settings.drain_timeout.get(),
        };
        let handle = tokio::spawn(worker.run(rx, cancel));
        Ok((Notifier { shared, queue }, handle))
    }

    /// A job ended (or an occurrence was skipped or missed). Never blocks: it decides which
    /// targets want the notice and queues it; a full queue drops it (counted, reported).
    pub fn job_ended(&self, notice: JobNotice) -> Submitted {
        let Some(event) = notice.event() else {
            return Submitted::NotNeeded;
        };
        let names = if notice.targets.is_empty() {
            &self.shared.default
        } else {
            &notice.targets
        };
        let targets = self.shared.dispatcher.targets();
        let mut chosen = Vec::new();
        for name in names {
            match targets.iter().position(|t| &t.name == name) {
                Some(i) if targets[i].wants(event, notice.dry_run) => {
                    if !chosen.contains(&i) {
                        chosen.push(i);
                    }
                }
                Some(_) => {}
                None => {
                    tracing::warn!(runbook = %notice.runbook, target_name = %name, "the runbook names a notification target that [[notify.targets]] does not define")
                }
            }
        }
        if chosen.is_empty() {
            return Submitted::NotNeeded;
        }
        match self.queue.try_send(Queued {
            notice,
            event,
            targets: chosen,
        }) {
            Ok(()) => Submitted::Queued,
            Err(mpsc::error::TrySendError::Full(q) | mpsc::error::TrySendError::Closed(q)) => {
                for &i in &q.targets {
                    self.shared.report_without_sending(
                        &q.notice,
                        q.event,
                        i,
                        DeliveryOutcome::Dropped,
                    );
                }
                Submitted::Dropped
            }
        }
    }
}

/// What the task owns: the throttle and the targets that answered 410.
struct Worker {
    shared: Arc<Shared>,
    throttle: Throttle,
    gone: HashSet<usize>,
    drain_timeout: Duration,
}

/// One delivery in progress, kept so that shutdown can report what it abandons.
struct Pending {
    notice: Arc<NoticeWithEvent>,
    target: usize,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::Receiver<Queued>, cancel: CancellationToken) {
        let mut in_flight = FuturesUnordered::new();
        let mut pending: HashMap<u64, Pending> = HashMap::new();
        let mut next_id = 0u64;
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                Some((id, report)) = in_flight.next(), if !in_flight.is_empty() => {
                    self.finish(&mut pending, id, report);
                }
                received = rx.recv(), if in_flight.len() < MAX_IN_FLIGHT => {
                    let Some(queued) = received else { break };
                    for (target, message_id, suppressed, notice) in self.admit(queued) {
                        next_id += 1;
                        pending.insert(next_id, Pending { notice: notice.clone(), target });
                        in_flight.push(send(self.shared.clone(), next_id, notice, target, message_id, suppressed));
                    }
                }
            }
        }
        // Shutdown: take no more notices, send what is queued and in flight until the
        // drain deadline, then report the rest as abandoned.
        rx.close();
        while let Ok(queued) = rx.try_recv() {
            for (target, message_id, suppressed, notice) in self.admit(queued) {
                next_id += 1;
                pending.insert(
                    next_id,
                    Pending {
                        notice: notice.clone(),
                        target,
                    },
                );
                in_flight.push(send(
                    self.shared.clone(),
                    next_id,
                    notice,
                    target,
                    message_id,
                    suppressed,
                ));
            }
        }
        let drained = tokio::time::timeout(self.drain_timeout, async {
            while let Some((id, report)) = in_flight.next().await {
                self.finish(&mut pending, id, report);
            }
        })
        .await;
        if drained.is_err() {
            drop(in_flight);
            for (_, p) in pending.drain() {
                self.shared.report_without_sending(
                    &p.notice.notice,
                    p.notice.event,
                    p.target,
                    DeliveryOutcome::Abandoned,
                );
            }
        }
    }

    fn finish(&mut self, pending: &mut HashMap<u64, Pending>, id: u64, report: DeliveryReport) {
        if let Some(p) = pending.remove(&id)
            && matches!(report.outcome, DeliveryOutcome::Gone { .. })
        {
            self.gone.insert(p.target);
        }
        self.shared.report(report);
    }

    /// Applies the throttle and the 410 list; returns the deliveries to start.
    fn admit(&mut self, queued: Queued) -> Vec<(usize, String, u64, Arc<NoticeWithEvent>)> {
        let now = self.shared.dispatcher.clock().now();
        let bypass = queued.event == NotifyEvent::Recovered;
        match self.throttle.admit(&queued.notice.runbook, now, bypass) {
            Admit::Suppress => {
                for &i in &queued.targets {
                    self.shared.report_without_sending(
                        &queued.notice,
                        queued.event,
                        i,
                        DeliveryOutcome::Suppressed,
                    );
                }
                Vec::new()
            }
            Admit::Send { suppressed } => {
                let notice = Arc::new(NoticeWithEvent {
                    notice: queued.notice,
                    event: queued.event,
                });
                let mut out = Vec::new();
                for i in queued.targets {
                    if self.gone.contains(&i) {
                        self.shared.report_without_sending(
                            &notice.notice,
                            notice.event,
                            i,
                            DeliveryOutcome::Disabled,
                        );
                    } else {
                        out.push((i, new_message_id(), suppressed, notice.clone()));
                    }
                }
                out
            }
        }
    }
}

struct NoticeWithEvent {
    notice: JobNotice,
    event: NotifyEvent,
}

async fn send(
    shared: Arc<Shared>,
    id: u64,
    notice: Arc<NoticeWithEvent>,
    target: usize,
    message_id: String,
    suppressed: u64,
) -> (u64, DeliveryReport) {
    let dispatcher = &shared.dispatcher;
    let message = Message {
        notice: &notice.notice,
        event: notice.event,
        suppressed,
        job_url: dispatcher.job_url(notice.notice.job_id.as_deref()),
    };
    let report = dispatcher
        .deliver(&dispatcher.targets()[target], &message, &message_id)
        .await;
    (id, report)
}
