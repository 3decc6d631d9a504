//! Coordination between replicas: each scheduled occurrence runs exactly once.
//!
//! Owns the cluster-wide truth about occurrences: who runs `runbook X at instant T`, whether
//! another occurrence of X is still running (`overlap = "skip"` across replicas), which
//! occurrences were orphaned by a dead replica, and each runbook's schedule status. It knows
//! nothing of Exchange, of how a job runs, or of when a schedule fires: the scheduler asks,
//! the executor watches [`OccurrenceGuard::lost`].
//!
//! # Design
//!
//! Two implementations with the same semantics, chosen by `[coordination] kind`:
//! [`local`] (one process: a map of records and per-runbook locks behind a mutex) and
//! [`azure`] (Azure Blob Storage through `azure_storage_blob`, for several replicas). The
//! engine is the storage service; there is no home-made consensus:
//!
//! 1. **Claim.** A replica that wants to run X at T creates `occurrences/X/T.json` with
//!    `If-None-Match: *`, state Claimed. The creator wins; everyone else gets
//!    [`Claim::AlreadyClaimed`]. Schedule number N > 0 of X at T is `occurrences/X/T~sN.json`:
//!    two schedules due at one instant are two occurrences.
//! 2. **Lock.** The winner acquires the lease on `locks/X` with a fresh random lease id. If
//!    another replica holds it, the record becomes Skipped and the claim is [`Claim::Busy`].
//!    Otherwise the record becomes Running (`If-Match` on the version it created, so a
//!    sweeper that gave up on a stalled claimer wins that race) and the claim is
//!    [`Claim::Acquired`] with an [`OccurrenceGuard`].
//! 3. **Hold.** The guard renews the lease every `renew_interval` (a third of the lease by
//!    default) in a task it owns, each renewal bounded by `request_timeout`. It counts the
//!    lease as valid until *start of the last successful renewal + lease duration − 1 s*;
//!    the service can only expire it later. On any renewal error, timeout, or when that
//!    validity lapses (a paused process), it cancels [`OccurrenceGuard::lost`] for good: a
//!    lease that lapsed is never renewed back to life, even when the service would allow it.
//! 4. **Complete.** [`OccurrenceGuard::complete`] refuses to write when the lease was lost,
//!    writes the final record with `If-Match` on the version it wrote (fencing: a sweeper's
//!    write changes the version), then releases the lease.
//! 5. **Sweep.** [`Coordinator::sweep_interrupted`] marks Interrupted, with a conditional
//!    write so exactly one sweeper wins, every Running record of a runbook whose lock lease
//!    is not held (the owner died or lost it), and every Claimed record seen unchanged with
//!    the lock free for `orphan_grace` (the owner died between claiming and starting). The
//!    returned [`InterruptedOccurrence`]s let the scheduler re-run them through
//!    [`Coordinator::claim_rerun`] when the runbook says `on_interrupt = "rerun"` (or when
//!    the job never started).
//! 6. **Status.** `status/X.json` keeps the last fired and last completed instants, read and
//!    written with ETags ([`Coordinator::record_fired`] retries on conflicts), so a replica
//!    that starts after all others died sees what was missed.
//!
//! Lease ids are random per acquisition rather than derived from the replica and runbook:
//! with a derived id, a second occurrence claimed by the same replica would "acquire" the
//! lease it already holds (the service treats that as a renewal) and overlap would go
//! unnoticed, and two processes started with the same replica id (a reused pod name) would
//! share a lock. A restarted replica gains nothing from its old id: its job died with it.
//!
//! No decision uses a wall clock beyond the schedule instant itself: lease expiry is the
//! service's, validity and the orphan grace are measured on the local monotonic clock.
//! Storage calls are bounded (SDK retries capped, and a timeout around each call) well below
//! the lease duration. [`Coordinator::health`] reports whether the last call reached the
//! storage, so `/readyz` can say when the replica stops taking work, and the next successful
//! call (or [`Coordinator::probe`]) reports the recovery.
//!
//! Must not: log or return a SAS URL or token ([`redact`]), log `azure_core::Error` with
//! `Debug`, or write to a record or lock after its lease was lost.

pub mod azure;
pub mod local;
pub mod record;
pub mod redact;
pub mod sas;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use azure_core::credentials::TokenCredential;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::base_url::BaseUrl;
use crate::clock::SharedClock;
use crate::duration::HumanDuration;

pub use azure::{AzureBlobCoordinator, AzureBlobOptions, StorageTarget};
pub use local::LocalCoordinator;
pub use record::{
    FinalState, InterruptedOccurrence, OccurrenceRecord, OccurrenceState, ScheduleStatus, Version,
    Versioned,
};
pub use redact::redact_url;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CoordinationKind {
    #[default]
    Local,
    AzureBlob,
}

/// `[coordination]` settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoordinationSettings {
    pub kind: CoordinationKind,
    /// `https://<account>.blob.core.windows.net/<container>`, used with the managed identity.
    pub container_url: Option<BaseUrl>,
    /// A container URL carrying a SAS query string instead of the managed identity (a bearer
    /// secret).
    pub sas_url: Option<SecretString>,
    /// A file holding that SAS URL (a mounted secret).
    pub sas_url_file: Option<PathBuf>,
    /// 15 s to 60 s, as Blob Storage allows.
    pub lease_duration: HumanDuration,
    /// How often a running job's lease is renewed; default a third of `lease_duration`.
    pub renew_interval: Option<HumanDuration>,
    /// The most one storage call may take, SDK retries included; keep it well below the
    /// renew interval.
    pub request_timeout: HumanDuration,
    /// SDK retries of one storage call (connection errors, 408, 429, 5xx) within
    /// `request_timeout`.
    pub max_retries: u32,
    /// How long a Claimed record must stay untouched, with its runbook's lock free, before a
    /// sweeper decides its owner died before starting; default `lease_duration`.
    pub orphan_grace: Option<HumanDuration>,
    /// The name recorded as the owner of occurrences; `serve` defaults it to the host name.
    pub replica_id: Option<String>,
}

impl Default for CoordinationSettings {
    fn default() -> Self {
        Self {
            kind: CoordinationKind::Local,
            container_url: None,
            sas_url: None,
            sas_url_file: None,
            lease_duration: HumanDuration::from_secs(15),
            renew_interval: None,
            request_timeout: HumanDuration::from_secs(4),
            max_retries: 2,
            orphan_grace: None,
            replica_id: None,
        }
    }
}

impl CoordinationSettings {
    /// Values that parse but make no sense, as (`coordination.key`, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let key = |k: &str| format!("coordination.{k}");
        let lease = self.lease_duration.get();
        if !(15..=60).contains(&lease.as_secs()) || lease.subsec_nanos() != 0 {
            out.push((
                key("lease_duration"),
                format!(
                    "must be whole seconds between 15s and 60s (Blob Storage's limits), got {}",
                    self.lease_duration
                ),
            ));
        }
        let renew = self.renew_interval();
        if renew.is_zero() || renew >= lease {
            out.push((
                key("renew_interval"),
                format!(
                    "must be above zero and below lease_duration ({}), got {}",
                    self.lease_duration,
                    HumanDuration(renew)
                ),
            ));
        }
        let timeout = self.request_timeout.get();
        if timeout.is_zero() || timeout >= lease {
            out.push((
                key("request_timeout"),
                format!(
                    "must be above zero and below lease_duration ({}), got {}",
                    self.lease_duration, self.request_timeout
                ),
            ));
        }
        if self.max_retries > 10 {
            out.push((
                key("max_retries"),
                format!("must be at most 10, got {}", self.max_retries),
            ));
        }
        if self.kind == CoordinationKind::AzureBlob {
            let sources = [
                self.container_url.is_some(),
                self.sas_url.is_some(),
                self.sas_url_file.is_some(),
            ];
            match sources.iter().filter(|set| **set).count() {
                0 => out.push((
                    key("container_url"),
                    "kind = \"azure-blob\" needs container_url (managed identity), sas_url or sas_url_file".to_string(),
                )),
                1 => {}
                _ => out.push((
                    key("sas_url"),
                    "set only one of container_url, sas_url and sas_url_file".to_string(),
                )),
            }
            if let Some(url) = &self.container_url {
                if url.query().is_some() {
                    out.push((
                        key("container_url"),
                        "carries a query string; put a SAS URL in sas_url or sas_url_file instead"
                            .to_string(),
                    ));
                } else if url.scheme() != "https" {
                    out.push((
                        key("container_url"),
                        format!(
                            "expected https://<account>.blob.core.windows.net/<container>, got {}",
                            redact_url(url.as_str())
                        ),
                    ));
                }
            }
        }
        out
    }

    pub fn renew_interval(&self) -> Duration {
        self.renew_interval
            .map(HumanDuration::get)
            .unwrap_or(self.lease_duration.get() / 3)
    }

    pub fn orphan_grace(&self) -> Duration {
        self.orphan_grace
            .map(HumanDuration::get)
            .unwrap_or(self.lease_duration.get())
    }

    /// Where the Azure implementation reaches the container: reads `sas_url_file` if that is
    /// the source. `credential` is used with `container_url` only.
    pub fn storage_target(
        &self,
        credential: Option<Arc<dyn TokenCredential>>,
    ) -> Result<StorageTarget, CoordinationError> {
        if let Some(url) = &self.sas_url {
            return Ok(StorageTarget::SasUrl(url.clone()));
        }
        if let Some(path) = &self.sas_url_file {
            let text = crate::bounded_file::read_secret(path).map_err(|e| {
                CoordinationError::Settings {
                    key: "coordination.sas_url_file".to_string(),
                    message: format!("cannot read {}: {e}", path.display()),
                }
            })?;
            return Ok(StorageTarget::SasUrl(SecretString::from(text)));
        }
        match (&self.container_url, credential) {
            (Some(url), Some(credential)) => Ok(StorageTarget::Token {
                container_url: url.as_url().clone(),
                credential,
            }),
            (Some(_), None) => Err(CoordinationError::Settings {
                key: "coordination.container_url".to_string(),
                message: "needs a token credential (the managed identity) and none was given"
                    .to_string(),
            }),
            (None, _) => Err(CoordinationError::Settings {
                key: "coordination.container_url".to_string(),
                message: "kind = \"azure-blob\" needs container_url, sas_url or sas_url_file"
                    .to_string(),
            }),
        }
    }
}

/// A coordination failure. Callers branch on the variant: `Unavailable` and `Refused` mean
/// "take no work now" (the health signal says the same), `LeaseLost` means "stop writing for
/// this occurrence", `Conflict` means "read again".
///
/// Storage errors are kept as redacted text rather than as `azure_core::Error` sources: the
/// SDK's messages and `Debug` output contain request URLs, and with a SAS those are secrets.
#[derive(Debug, thiserror::Error)]
pub enum CoordinationError {
    #[error(
        "coordination storage is unreachable ({operation} {blob}): {detail}; the replica takes no work until it answers (check coordination.container_url or sas_url and the network)"
    )]
    Unavailable {
        operation: &'static str,
        blob: String,
        detail: String,
    },
    #[error(
        "coordination storage refused {operation} {blob}: HTTP {status} {code} (request id {request_id}); check the identity's role on the container (Storage Blob Data Contributor) or the SAS permissions and expiry"
    )]
    Refused {
        operation: &'static str,
        blob: String,
        status: u16,
        code: String,
        request_id: String,
    },
    #[error(
        "the lease on the lock of runbook {runbook} was lost while running its occurrence at {scheduled_for}; the record was not written and a sweeper will mark it Interrupted"
    )]
    LeaseLost {
        runbook: String,
        scheduled_for: DateTime<Utc>,
    },
    #[error("{blob} was changed by another replica since it was read; read it again")]
    Conflict { blob: String },
    #[error("{blob} kept changing under {attempts} attempts to update it; try again later")]
    Contention { blob: String, attempts: u32 },
    #[error("{blob} does not hold a valid record ({message}); delete it if it was written by hand")]
    InvalidRecord { blob: String, message: String },
    #[error("invalid setting `{key}`: {message}")]
    Settings { key: String, message: String },
}

/// Whether the storage answered the last call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageHealth {
    /// No call made yet.
    Unknown,
    Ok,
    /// The last call failed to reach the storage or was refused; the text is redacted.
    Failing {
        reason: String,
    },
}

impl StorageHealth {
    pub fn is_ok(&self) -> bool {
        matches!(self, Self::Ok)
    }
}

/// The answer to [`Coordinator::claim`].
// One value per occurrence, moved once: boxing the guard would only make callers unbox it.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Claim {
    /// This replica runs the occurrence; run the job while holding the guard.
    Acquired(OccurrenceGuard),
    /// Another replica created the record first (it runs, ran or skipped the occurrence).
    AlreadyClaimed,
    /// This replica claimed the occurrence but another occurrence of the runbook is running;
    /// the record says Skipped.
    Busy,
}

/// Exactly-once coordination of occurrences; cheap to clone (shared state inside).
#[derive(Clone, Debug)]
pub enum Coordinator {
    Local(LocalCoordinator),
    AzureBlob(AzureBlobCoordinator),
}

impl Coordinator {
    /// Builds the implementation the settings choose. Makes no storage call: the first call
    /// creates the container if it is missing. `credential` is the managed identity, used
    /// with `container_url` only.
    pub fn from_settings(
        settings: &CoordinationSettings,
        credential: Option<Arc<dyn TokenCredential>>,
        clock: SharedClock,
    ) -> Result<Self, CoordinationError> {
        if let Some((key, message)) = settings.problems().into_iter().next() {
            return Err(CoordinationError::Settings { key, message });
        }
        match settings.kind {
            CoordinationKind::Local => Ok(Self::Local(LocalCoordinator::new(clock))),
            CoordinationKind::AzureBlob => {
                let target = settings.storage_target(credential)?;
                let options = AzureBlobOptions::from_settings(settings);
                Ok(Self::AzureBlob(AzureBlobCoordinator::new(
                    target, options, clock,
                )?))
            }
        }
    }

    pub fn kind(&self) -> CoordinationKind {
        match self {
            Self::Local(_) => CoordinationKind::Local,
            Self::AzureBlob(_) => CoordinationKind::AzureBlob,
        }
    }

    /// Claims `runbook` at `instant` for `replica_id` (steps 1 and 2 of the design): the
    /// occurrence of its first (or only) schedule.
    pub async fn claim(
        &self,
        runbook: &str,
        instant: DateTime<Utc>,
        replica_id: &str,
    ) -> Result<Claim, CoordinationError> {
        self.claim_schedule(runbook, instant, 0, replica_id).await
    }

    /// Claims the occurrence of `runbook`'s schedule number `schedule` at `instant`: two
    /// schedules due at one instant are two occurrences, each claimed once. The runbook's
    /// lock is still one, so their jobs never run at the same time.
    pub async fn claim_schedule(
        &self,
        runbook: &str,
        instant: DateTime<Utc>,
        schedule: usize,
        replica_id: &str,
    ) -> Result<Claim, CoordinationError> {
        match self {
            Self::Local(c) => Ok(c.claim(runbook, instant, schedule, replica_id)),
            Self::AzureBlob(c) => c.claim(runbook, instant, schedule, replica_id).await,
        }
    }

    /// Claims an occurrence a sweep returned, to run it again. Only one replica gets
    /// [`Claim::Acquired`]; a second attempt sees [`Claim::AlreadyClaimed`].
    pub async fn claim_rerun(
        &self,
        interrupted: &InterruptedOccurrence,
        replica_id: &str,
    ) -> Result<Claim, CoordinationError> {
        match self {
            Self::Local(c) => Ok(c.claim_rerun(interrupted, replica_id)),
            Self::AzureBlob(c) => c.claim_rerun(interrupted, replica_id).await,
        }
    }

    /// Marks the orphaned occurrences of `runbook` Interrupted and returns the ones this
    /// call marked (another sweeper's marks are not returned twice).
    pub async fn sweep_interrupted(
        &self,
        runbook: &str,
    ) -> Result<Vec<InterruptedOccurrence>, CoordinationError> {
        match self {
            Self::Local(c) => Ok(c.sweep_interrupted(runbook)),
            Self::AzureBlob(c) => c.sweep_interrupted(runbook).await,
        }
    }

    /// The latest `limit` occurrence records of `runbook`, newest first.
    pub async fn list_occurrences(
        &self,
        runbook: &str,
        limit: usize,
    ) -> Result<Vec<OccurrenceRecord>, CoordinationError> {
        match self {
            Self::Local(c) => Ok(c.list_occurrences(runbook, limit)),
            Self::AzureBlob(c) => c.list_occurrences(runbook, limit).await,
        }
    }

    /// One occurrence record, if it exists.
    pub async fn occurrence(
        &self,
        runbook: &str,
        instant: DateTime<Utc>,
    ) -> Result<Option<Versioned<OccurrenceRecord>>, CoordinationError> {
        match self {
            Self::Local(c) => Ok(c.occurrence(runbook, instant)),
            Self::AzureBlob(c) => c.occurrence(runbook, instant).await,
        }
    }

    /// The schedule status of `runbook` and its version, if any replica wrote one.
    pub async fn schedule_status(
        &self,
        runbook: &str,
    ) -> Result<Option<Versioned<ScheduleStatus>>, CoordinationError> {
        match self {
            Self::Local(c) => Ok(c.schedule_status(runbook)),
            Self::AzureBlob(c) => c.schedule_status(runbook).await,
        }
    }

    /// Writes `status` if the stored one is still at `expected` (`None`: only if there is
    /// none yet); [`CoordinationError::Conflict`] otherwise.
    pub async fn write_schedule_status(
        &self,
        status: &ScheduleStatus,
        expected: Option<&Version>,
    ) -> Result<Version, CoordinationError> {
        match self {
            Self::Local(c) => c.write_schedule_status(status, expected),
            Self::AzureBlob(c) => c.write_schedule_status(status, expected).await,
        }
    }

    /// Moves `last_fired` of `runbook` forward to `instant` (never back), retrying on
    /// conflicts with other replicas.
    pub async fn record_fired(
        &self,
        runbook: &str,
        instant: DateTime<Utc>,
    ) -> Result<ScheduleStatus, CoordinationError> {
        self.update_status(runbook, |s| s.with_fired(instant)).await
    }

    /// Moves `last_completed` forward; [`OccurrenceGuard::complete`] calls it for completed
    /// jobs.
    pub async fn record_completed(
        &self,
        runbook: &str,
        instant: DateTime<Utc>,
    ) -> Result<ScheduleStatus, CoordinationError> {
        self.update_status(runbook, |s| s.with_completed(instant))
            .await
    }

    async fn update_status(
        &self,
        runbook: &str,
        change: impl Fn(&ScheduleStatus) -> ScheduleStatus,
    ) -> Result<ScheduleStatus, CoordinationError> {
        match self {
            Self::Local(c) => c.update_status(runbook, change),
            Self::AzureBlob(c) => c.update_status(runbook, change).await,
        }
    }

    /// Deletes final occurrence records scheduled before `cutoff` (in memory, or in the
    /// container by whichever replica gets the cleanup lease, a bounded number per call).
    /// Returns how many this call deleted.
    pub async fn prune(&self, cutoff: DateTime<Utc>) -> Result<usize, CoordinationError> {
        match self {
            Self::Local(c) => Ok(c.prune(cutoff)),
            Self::AzureBlob(c) => c.prune(cutoff).await,
        }
    }

    /// Whether the storage answered the last call; `/readyz` watches this.
    pub fn health(&self) -> watch::Receiver<StorageHealth> {
        match self {
            Self::Local(c) => c.health(),
            Self::AzureBlob(c) => c.health(),
        }
    }

    /// One cheap storage call (creating the container if missing) to refresh
    /// [`Coordinator::health`] while no work is being claimed.
    pub async fn probe(&self) -> Result<(), CoordinationError> {
        match self {
            Self::Local(_) => Ok(()),
            Self::AzureBlob(c) => c.probe().await,
        }
    }
}

/// Prunes occurrence records older than `retention` now and then every `interval` until
/// `cancel` fires, on `clock` (so tests move time instead of waiting).
pub fn spawn_pruner(
    coordinator: Coordinator,
    clock: SharedClock,
    retention: Duration,
    interval: Duration,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    let step = chrono::Duration::from_std(interval).unwrap_or(chrono::Duration::hours(1));
    tokio::spawn(async move {
        loop {
            let now = clock.now();
            let cutoff = now
                .checked_sub_signed(retention)
                .unwrap_or(DateTime::<Utc>::MIN_UTC);
            match coordinator.prune(cutoff).await {
                Ok(0) => tracing::debug!("no occurrence record is older than the retention"),
                Ok(deleted) => {
                    tracing::info!(
                        deleted,
                        "pruned occurrence records older than the retention"
                    )
                }
                Err(e) => {
                    tracing::warn!(error = %e, "pruning occurrence records failed; will retry")
                }
            }
            tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                () = clock.sleep_until(now + step) => {}
            }
        }
    })
}

/// The right to run one occurrence, held while its job runs.
///
/// Watch [`OccurrenceGuard::lost`] (or call [`OccurrenceGuard::check`]) between calls and
/// stop when it fires; then end with [`OccurrenceGuard::complete`]. Dropping the guard
/// without completing stops the lease renewals without releasing the lease (as a crash
/// would): the record stays Running until a sweeper marks it Interrupted.
#[derive(Debug)]
pub struct OccurrenceGuard {
    record: OccurrenceRecord,
    lost: CancellationToken,
    held: Held,
}

#[derive(Debug)]
enum Held {
    Local(local::LocalHold),
    Azure(azure::AzureHold),
}

impl OccurrenceGuard {
    /// The record as this replica last wrote it (state Running).
    pub fn record(&self) -> &OccurrenceRecord {
        &self.record
    }

    pub fn runbook(&self) -> &str {
        &self.record.runbook
    }

    pub fn scheduled_for(&self) -> DateTime<Utc> {
        self.record.scheduled_for
    }

    /// Cancelled, once and for good, when the lease can no longer be trusted; the executor
    /// cancels the job between calls when it fires.
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// `Err(LeaseLost)` when the lease was lost or its validity lapsed (for example after the
    /// process was paused), even if the renewal task has not run yet.
    pub fn check(&self) -> Result<(), CoordinationError> {
        let lapsed = match &self.held {
            Held::Local(_) => false,
            Held::Azure(hold) => hold.lapsed(),
        };
        if lapsed {
            self.lost.cancel();
        }
        if self.lost.is_cancelled() {
            return Err(self.lease_lost());
        }
        Ok(())
    }

    fn lease_lost(&self) -> CoordinationError {
        CoordinationError::LeaseLost {
            runbook: self.record.runbook.clone(),
            scheduled_for: self.record.scheduled_for,
        }
    }

    /// Writes the final record (fenced: refused after a lost lease or when anybody else
    /// wrote the record since) and releases the lock. A completed job also moves the
    /// runbook's `last_completed` forward.
    pub async fn complete(
        self,
        state: FinalState,
        job_id: Option<String>,
    ) -> Result<OccurrenceRecord, CoordinationError> {
        let checked = self.check();
        let Self { record, lost, held } = self;
        match held {
            Held::Local(hold) => hold.complete(&record, state, job_id),
            Held::Azure(hold) => hold.complete(&record, &lost, checked, state, job_id).await,
        }
    }

    /// Stops renewing without firing [`OccurrenceGuard::lost`], as if the process were
    /// frozen (SIGSTOP); for fault-injection tests and the benchmark.
    #[doc(hidden)]
    pub fn pause_renewals(&self) {
        if let Held::Azure(hold) = &self.held {
            hold.set_paused(true);
        }
    }

    /// Lets a paused guard's renewal task run again, as if the process were resumed.
    #[doc(hidden)]
    pub fn resume_renewals(&self) {
        if let Held::Azure(hold) = &self.held {
            hold.set_paused(false);
        }
    }
}

/// The replica id to record when `replica_id` is not configured: the host name, or `pid-N`
/// without one.
pub fn default_replica_id(host_name: Option<&str>, pid: u32) -> String {
    match host_name.map(str::trim).filter(|h| !h.is_empty()) {
        Some(host) => host.to_string(),
        None => format!("pid-{pid}"),
    }
}

/// The secret part of a SAS URL setting never leaves through `Debug`.
pub(crate) fn sas_for_display(url: &SecretString) -> String {
    redact_url(url.expose_secret())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn azure(f: impl FnOnce(&mut CoordinationSettings)) -> CoordinationSettings {
        let mut s = CoordinationSettings {
            kind: CoordinationKind::AzureBlob,
            container_url: Some("https://acct.blob.core.windows.net/rw".parse().unwrap()),
            ..CoordinationSettings::default()
        };
        f(&mut s);
        s
    }

    #[test]
    fn settings_problems_table() {
        let cases: Vec<(CoordinationSettings, Option<&str>)> = vec![
            (CoordinationSettings::default(), None),
            (azure(|_| {}), None),
            (
                azure(|s| s.container_url = None),
                Some("coordination.container_url"),
            ),
            (
                azure(|s| s.sas_url = Some(SecretString::from("http://x/c?sig=1"))),
                Some("coordination.sas_url"),
            ),
            (
                azure(|s| s.container_url = Some("http://acct/rw".parse().unwrap())),
                Some("coordination.container_url"),
            ),
            (
                azure(|s| s.container_url = Some("https://acct/rw?sig=secret".parse().unwrap())),
                Some("coordination.container_url"),
            ),
            (
                azure(|s| s.lease_duration = HumanDuration::from_secs(10)),
                Some("coordination.lease_duration"),
            ),
            (
                azure(|s| s.renew_interval = Some(HumanDuration::from_secs(15))),
                Some("coordination.renew_interval"),
            ),
            (
                azure(|s| s.request_timeout = HumanDuration::from_secs(20)),
                Some("coordination.request_timeout"),
            ),
            (
                azure(|s| s.max_retries = 11),
                Some("coordination.max_retries"),
            ),
        ];
        for (settings, expected) in cases {
            let problems = settings.problems();
            assert_eq!(
                problems.first().map(|(k, _)| k.as_str()),
                expected,
                "{problems:?}"
            );
            assert!(
                problems.iter().all(|(_, m)| !m.contains("secret")),
                "{problems:?}"
            );
        }
    }

    #[test]
    fn renew_interval_and_orphan_grace_default_from_the_lease() {
        let s = CoordinationSettings {
            lease_duration: HumanDuration::from_secs(30),
            ..CoordinationSettings::default()
        };
        assert_eq!(s.renew_interval(), Duration::from_secs(10));
        assert_eq!(s.orphan_grace(), Duration::from_secs(30));
    }

    #[test]
    fn a_sas_url_is_read_from_its_file_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sas");
        std::fs::write(&path, "http://127.0.0.1:1/devstoreaccount1/c?sig=x\n").unwrap();
        let s = CoordinationSettings {
            kind: CoordinationKind::AzureBlob,
            sas_url_file: Some(path),
            ..CoordinationSettings::default()
        };
        match s.storage_target(None).unwrap() {
            StorageTarget::SasUrl(url) => {
                assert_eq!(
                    url.expose_secret(),
                    "http://127.0.0.1:1/devstoreaccount1/c?sig=x"
                )
            }
            other => panic!("unexpected target {other:?}"),
        }
    }

    #[test]
    fn a_missing_sas_url_file_names_the_key() {
        let s = CoordinationSettings {
            kind: CoordinationKind::AzureBlob,
            sas_url_file: Some(PathBuf::from("/nonexistent/sas")),
            ..CoordinationSettings::default()
        };
        let err = s.storage_target(None).unwrap_err().to_string();
        assert!(err.contains("coordination.sas_url_file"), "{err}");
    }

    #[test]
    fn default_replica_id_table() {
        assert_eq!(default_replica_id(Some("worker-0"), 7), "worker-0");
        assert_eq!(default_replica_id(Some("  "), 7), "pid-7");
        assert_eq!(default_replica_id(None, 7), "pid-7");
    }
}
