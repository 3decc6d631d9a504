//! The Azure Blob Storage implementation (`kind = "azure-blob"`), on `azure_storage_blob`.
//!
//! Occurrence records and schedule statuses are JSON blobs written with `If-None-Match: *`
//! or `If-Match: <etag>`; per-runbook locks are blob leases (see the module above for the
//! protocol). Every storage call goes through [`AzureBlobCoordinator::call`]: SDK retries
//! capped at `max_retries` within `request_timeout`, a tokio timeout around the whole call,
//! errors classified and redacted, and the health signal updated.
//!
//! The container is reached either with a token credential (the managed identity, HTTPS
//! only) or with a SAS in the URL (HTTP allowed, which is how the tests reach Azurite).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use azure_core::credentials::TokenCredential;
use azure_core::error::ErrorKind;
use azure_core::http::headers::HeaderName;
use azure_core::http::{ClientOptions, ExponentialRetryOptions, RequestContent, RetryOptions, Url};
use azure_storage_blob::models::{
    BlobClientAcquireLeaseOptions, BlobClientGetPropertiesResultHeaders, BlobClientUploadOptions,
    BlobContainerClientListBlobsOptions, LeaseState, ListBlobsIncludeItem,
};
use azure_storage_blob::{BlobClient, BlobContainerClient, BlobContainerClientOptions};
use chrono::{DateTime, Utc};
use futures::{StreamExt as _, TryStreamExt as _};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{OnceCell, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::record::{
    self, FinalState, InterruptedOccurrence, OccurrenceRecord, OccurrenceState, OrphanDecision,
    ScheduleStatus, Version, Versioned,
};
use super::redact::{redact_text, redact_url};
use super::{Claim, CoordinationError, CoordinationSettings, Held, OccurrenceGuard, StorageHealth};
use crate::clock::SharedClock;
use crate::duration::HumanDuration;

/// The lease is counted as lost this long before the service would expire it, so that a
/// slightly fast service clock can never let another replica in while we still act.
const LEASE_SAFETY_MARGIN: Duration = Duration::from_secs(1);
/// Attempts of a read-modify-write of a schedule status before giving up.
const STATUS_ATTEMPTS: u32 = 8;
/// Occurrence records downloaded at once when listing.
const LIST_CONCURRENCY: usize = 8;
/// The metadata key that mirrors a record's state, so a sweep can filter without downloads.
const STATE_METADATA: &str = "state";
/// The blob whose lease elects the one replica that prunes old records on a pass (outside
/// `locks/`, so no runbook name can collide with it).
const CLEANUP_LEASE: &str = "cleanup/lease";
/// Records deleted per pruning pass at most, so one pass stays short; the next pass
/// continues where this one stopped.
pub const MAX_PRUNED_PER_PASS: usize = 1000;

/// Where the container is and how to authenticate. `Debug` never shows a SAS.
#[derive(Clone)]
pub enum StorageTarget {
    /// A container URL with a SAS query string (`http://127.0.0.1:10000/devstoreaccount1/c?sv=…`).
    SasUrl(SecretString),
    /// `https://<account>.blob.core.windows.net/<container>` and the managed identity.
    Token {
        container_url: Url,
        credential: Arc<dyn TokenCredential>,
    },
}

impl fmt::Debug for StorageTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SasUrl(url) => f
                .debug_tuple("SasUrl")
                .field(&super::sas_for_display(url))
                .finish(),
            Self::Token { container_url, .. } => f
                .debug_struct("Token")
                .field("container_url", &redact_url(container_url.as_str()))
                .finish_non_exhaustive(),
        }
    }
}

/// Timings of the Azure implementation; [`AzureBlobOptions::from_settings`] for production,
/// shorter values in tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AzureBlobOptions {
    /// 15–60 s (the service's limits).
    pub lease_duration: Duration,
    pub renew_interval: Duration,
    /// Bound on one storage call including SDK retries.
    pub request_timeout: Duration,
    pub max_retries: u32,
    pub orphan_grace: Duration,
}

impl AzureBlobOptions {
    pub fn from_settings(settings: &CoordinationSettings) -> Self {
        Self {
            lease_duration: settings.lease_duration.get(),
            renew_interval: settings.renew_interval(),
            request_timeout: settings.request_timeout.get(),
            max_retries: settings.max_retries,
            orphan_grace: settings.orphan_grace(),
        }
    }

    fn lease_seconds(&self) -> i32 {
        i32::try_from(self.lease_duration.as_secs()).unwrap_or(60)
    }

    /// How long after the start of a successful acquire or renewal the lease is trusted.
    fn trusted_for(&self) -> Duration {
        self.lease_duration.saturating_sub(LEASE_SAFETY_MARGIN)
    }
}

/// Coordination through a blob container; cheap to clone.
#[derive(Clone)]
pub struct AzureBlobCoordinator {
    inner: Arc<Inner>,
}

struct Inner {
    container: BlobContainerClient,
    /// The container URL without its query string, for messages.
    display: String,
    options: AzureBlobOptions,
    clock: SharedClock,
    health: watch::Sender<StorageHealth>,
    container_ready: OnceCell<()>,
    /// Claimed records this sweeper saw with their runbook's lock free: blob name → (ETag,
    /// when first seen). See [`record::orphan_decision`].
    watched: Mutex<HashMap<String, (String, Instant)>>,
}

impl fmt::Debug for AzureBlobCoordinator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureBlobCoordinator")
            .field("container", &self.inner.display)
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

/// Why a storage call failed, before it is given an operation and a blob name (the blob
/// history turns it into its own errors too).
#[derive(Clone, Debug)]
pub(crate) enum Fault {
    /// The service answered with an error status.
    Http {
        status: u16,
        code: Option<String>,
        request_id: Option<String>,
    },
    /// No answer: connection refused or reset, DNS, TLS, or the timeout.
    Unreachable(String),
}

impl Fault {
    pub(crate) fn status(&self) -> Option<u16> {
        match self {
            Self::Http { status, .. } => Some(*status),
            Self::Unreachable(_) => None,
        }
    }

    fn has_code(&self, wanted: &str) -> bool {
        matches!(self, Self::Http { code: Some(code), .. } if code == wanted)
    }

    /// Whether this failure means the replica cannot use the storage (as opposed to an
    /// expected answer such as 409 or 412).
    fn is_outage(&self) -> bool {
        match self {
            Self::Unreachable(_) => true,
            Self::Http { status, .. } => matches!(status, 401 | 403 | 408 | 429) || *status >= 500,
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Unreachable(detail) => detail.clone(),
            Self::Http {
                status,
                code,
                request_id,
            } => format!(
                "HTTP {status} {} (request id {})",
                code.as_deref().unwrap_or("without error code"),
                request_id.as_deref().unwrap_or("none")
            ),
        }
    }

    fn into_error(self, operation: &'static str, blob: &str) -> CoordinationError {
        match self {
            Self::Http {
                status,
                code,
                request_id,
            } if (400..500).contains(&status) && !matches!(status, 408 | 429) => {
                CoordinationError::Refused {
                    operation,
                    blob: blob.to_string(),
                    status,
                    code: code.unwrap_or_else(|| "without error code".to_string()),
                    request_id: request_id.unwrap_or_else(|| "none".to_string()),
                }
            }
            other => CoordinationError::Unavailable {
                operation,
                blob: blob.to_string(),
                detail: other.describe(),
            },
        }
    }
}

/// Turns an SDK error into a [`Fault`] without ever formatting it with `Debug` (a backtrace
/// and, for transport errors, the request URL with its SAS).
pub(crate) fn classify(error: azure_core::Error) -> Fault {
    if let ErrorKind::HttpResponse {
        status,
        error_code,
        raw_response,
    } = error.kind()
    {
        let request_id = raw_response.as_ref().and_then(|raw| {
            raw.headers()
                .get_optional_string(&HeaderName::from_static("x-ms-request-id"))
        });
        return Fault::Http {
            status: u16::from(*status),
            code: error_code.clone(),
            request_id,
        };
    }
    let mut text = format!("{}: {error}", error.kind());
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    Fault::Unreachable(redact_text(&text))
}

/// The condition of a conditional write.
enum Precondition<'a> {
    /// `If-None-Match: *`.
    Absent,
    /// `If-Match: <etag>`.
    Matches(&'a Version),
}

/// A conditional write that did not happen.
enum WriteFailure {
    /// The condition failed: the blob exists, or changed since it was read.
    Conflict,
    Storage(CoordinationError),
}

/// A client for the blob container at `url`, with the SDK's retries bounded by
/// `max_retries` and `request_timeout`, and the URL as it may be shown (no SAS). Shared by
/// every store that lives in the container (coordination, the job history).
pub fn container_client(
    mut url: Url,
    credential: Option<Arc<dyn TokenCredential>>,
    max_retries: u32,
    request_timeout: Duration,
) -> azure_core::Result<(BlobContainerClient, String)> {
    // A trailing slash would give blob URLs an empty segment (`…/container//locks/x`).
    if let Ok(mut segments) = url.path_segments_mut() {
        segments.pop_if_empty();
    }
    let display = redact_url(url.as_str());
    let client_options = ClientOptions {
        retry: RetryOptions::exponential(ExponentialRetryOptions {
            initial_delay: azure_core::time::Duration::milliseconds(100),
            max_retries,
            max_total_elapsed: azure_core::time::Duration::milliseconds(
                i64::try_from(request_timeout.as_millis()).unwrap_or(i64::MAX),
            ),
            max_delay: azure_core::time::Duration::seconds(1),
        }),
        ..Default::default()
    };
    let container = BlobContainerClient::new(
        url,
        credential,
        Some(BlobContainerClientOptions {
            client_options,
            ..Default::default()
        }),
    )?;
    Ok((container, display))
}

impl AzureBlobCoordinator {
    /// Builds the clients; makes no storage call.
    pub fn new(
        target: StorageTarget,
        options: AzureBlobOptions,
        clock: SharedClock,
    ) -> Result<Self, CoordinationError> {
        let (url, credential, key) = match target {
            StorageTarget::SasUrl(secret) => {
                let url = Url::parse(secret.expose_secret()).map_err(|_| {
                    CoordinationError::Settings {
                        key: "coordination.sas_url".to_string(),
                        message: format!(
                            "expected a container URL with a SAS query string, got {}",
                            super::sas_for_display(&secret)
                        ),
                    }
                })?;
                (url, None, "coordination.sas_url")
            }
            StorageTarget::Token {
                container_url,
                credential,
            } => {
                let url = container_url;
                if url.scheme() != "https" {
                    return Err(CoordinationError::Settings {
                        key: "coordination.container_url".to_string(),
                        message: "a token credential is only sent over https".to_string(),
                    });
                }
                (url, Some(credential), "coordination.container_url")
            }
        };
        let has_container = url
            .path_segments()
            .is_some_and(|mut segments| segments.any(|s| !s.is_empty()));
        if !has_container || url.cannot_be_a_base() {
            return Err(CoordinationError::Settings {
                key: key.to_string(),
                message: format!(
                    "the URL must name the container (…/<container>), got {}",
                    redact_url(url.as_str())
                ),
            });
        }
        let (container, display) = container_client(
            url,
            credential,
            options.max_retries,
            options.request_timeout,
        )
        .map_err(|e| CoordinationError::Settings {
            key: key.to_string(),
            message: redact_text(&e.to_string()),
        })?;
        let (health, _) = watch::channel(StorageHealth::Unknown);
        Ok(Self {
            inner: Arc::new(Inner {
                container,
                display,
                options,
                clock,
                health,
                container_ready: OnceCell::new(),
                watched: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn options(&self) -> &AzureBlobOptions {
        &self.inner.options
    }

    pub fn health(&self) -> watch::Receiver<StorageHealth> {
        self.inner.health.subscribe()
    }

    fn set_health(&self, health: StorageHealth) {
        self.inner.health.send_if_modified(|current| {
            if *current == health {
                false
            } else {
                *current = health;
                true
            }
        });
    }

    /// One storage call: bounded by `request_timeout`, classified, reflected in the health.
    async fn call<T>(
        &self,
        operation: impl Future<Output = azure_core::Result<T>>,
    ) -> Result<T, Fault> {
        let timeout = self.inner.options.request_timeout;
        let outcome = match tokio::time::timeout(timeout, operation).await {
            Err(_) => Err(Fault::Unreachable(format!(
                "no answer within {}",
                HumanDuration(timeout)
            ))),
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(classify(error)),
        };
        match &outcome {
            Err(fault) if fault.is_outage() => self.set_health(StorageHealth::Failing {
                reason: fault.describe(),
            }),
            _ => self.set_health(StorageHealth::Ok),
        }
        outcome
    }

    fn blob(&self, name: &str) -> BlobClient {
        self.inner.container.blob_client(name)
    }

    /// Creates the container on first use if it is missing. A refusal to look at the
    /// container (an identity with rights on blobs only) is not fatal: the blob calls say
    /// whether they are allowed.
    async fn ensure_container(&self) -> Result<(), CoordinationError> {
        self.inner
            .container_ready
            .get_or_try_init(|| async {
                let container = &self.inner.container;
                match self.call(container.exists()).await {
                    Ok(true) => return Ok(()),
                    Ok(false) => {}
                    Err(Fault::Http { status: 403, .. }) => {
                        tracing::warn!(
                            container = %self.inner.display,
                            "not allowed to read the coordination container's properties; assuming it exists"
                        );
                        return Ok(());
                    }
                    Err(fault) => return Err(fault.into_error("check the container", &self.inner.display)),
                }
                match self.call(container.create(None)).await {
                    Ok(_) => {
                        tracing::info!(container = %self.inner.display, "created the coordination container");
                        Ok(())
                    }
                    Err(fault) if fault.has_code("ContainerAlreadyExists") => Ok(()),
                    Err(fault) => Err(fault.into_error("create the container", &self.inner.display)),
                }
            })
            .await
            .map(|_| ())
    }

    /// Checks that the storage answers (and creates the container if needed).
    pub async fn probe(&self) -> Result<(), CoordinationError> {
        self.ensure_container().await?;
        self.call(self.inner.container.get_properties(None))
            .await
            .map(|_| ())
            .map_err(|fault| {
                fault.into_error("read the properties of the container", &self.inner.display)
            })
    }

    async fn read_json<T: DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<Versioned<T>>, CoordinationError> {
        let blob = self.blob(name);
        let downloaded = self
            .call(async {
                let response = blob.download(None).await?;
                let etag = response.properties.etag.as_ref().map(ToString::to_string);
                let body = response.body.collect().await?;
                Ok((etag, body))
            })
            .await;
        let (etag, body) = match downloaded {
            Ok(found) => found,
            Err(fault) if fault.status() == Some(404) => return Ok(None),
            Err(fault) => return Err(fault.into_error("read", name)),
        };
        let value =
            serde_json::from_slice(&body).map_err(|e| CoordinationError::InvalidRecord {
                blob: name.to_string(),
                message: e.to_string(),
            })?;
        let etag = etag.ok_or_else(|| CoordinationError::InvalidRecord {
            blob: name.to_string(),
            message: "the service returned no ETag".to_string(),
        })?;
        Ok(Some(Versioned {
            value,
            version: Version(etag),
        }))
    }

    async fn write_json<T: Serialize>(
        &self,
        name: &str,
        value: &T,
        state: Option<OccurrenceState>,
        precondition: Precondition<'_>,
    ) -> Result<Version, WriteFailure> {
        let body = serde_json::to_vec_pretty(value).map_err(|e| {
            WriteFailure::Storage(CoordinationError::InvalidRecord {
                blob: name.to_string(),
                message: e.to_string(),
            })
        })?;
        let mut options = BlobClientUploadOptions {
            blob_content_type: Some("application/json".to_string()),
            metadata: state
                .map(|s| HashMap::from([(STATE_METADATA.to_string(), s.as_str().to_string())])),
            ..Default::default()
        };
        match precondition {
            Precondition::Absent => options = options.if_not_exists(),
            Precondition::Matches(version) => options.if_match = Some(version.0.clone().into()),
        }
        let blob = self.blob(name);
        match self
            .call(blob.upload(RequestContent::from(body), Some(options)))
            .await
        {
            Ok(result) => Ok(Version(
                result.etag.map(|e| e.to_string()).unwrap_or_default(),
            )),
            // 409 BlobAlreadyExists for If-None-Match, 412 ConditionNotMet for If-Match, 404
            // when the blob to match is gone: all mean "someone else wrote".
            Err(fault) if matches!(fault.status(), Some(409 | 412 | 404)) => {
                Err(WriteFailure::Conflict)
            }
            Err(fault) => Err(WriteFailure::Storage(fault.into_error("write", name))),
        }
    }

    async fn write_record(
        &self,
        name: &str,
        record: &OccurrenceRecord,
        precondition: Precondition<'_>,
    ) -> Result<Version, WriteFailure> {
        self.write_json(name, record, Some(record.state), precondition)
            .await
    }

    /// Acquires the lease on `locks/<runbook>`, creating the lock blob the first time.
    async fn acquire(&self, lock_name: &str, lease_id: &str) -> Result<(), Fault> {
        let lock = self.blob(lock_name);
        let acquire = || {
            lock.acquire_lease(
                self.inner.options.lease_seconds(),
                Some(BlobClientAcquireLeaseOptions {
                    proposed_lease_id: Some(lease_id.to_string()),
                    ..Default::default()
                }),
            )
        };
        match self.call(acquire()).await {
            Ok(_) => return Ok(()),
            Err(fault) if fault.status() == Some(404) => {}
            Err(fault) => return Err(fault),
        }
        let create = lock.upload(
            RequestContent::from(Vec::new()),
            Some(BlobClientUploadOptions::default().if_not_exists()),
        );
        match self.call(create).await {
            // Someone else created it, or created and leased it, in the meantime.
            Ok(_) => {}
            Err(fault) if matches!(fault.status(), Some(409 | 412)) => {}
            Err(fault) => return Err(fault),
        }
        self.call(acquire()).await.map(|_| ())
    }

    async fn release(&self, lock_name: &str, lease_id: &str) -> Result<(), Fault> {
        self.call(
            self.blob(lock_name)
                .release_lease(lease_id.to_string(), None),
        )
        .await
        .map(|_| ())
    }

    /// Whether somebody holds the lease on `locks/<runbook>` now.
    async fn lock_held(&self, lock_name: &str) -> Result<bool, CoordinationError> {
        match self.call(self.blob(lock_name).get_properties(None)).await {
            Ok(response) => {
                let state =
                    response
                        .lease_state()
                        .map_err(|e| CoordinationError::InvalidRecord {
                            blob: lock_name.to_string(),
                            message: redact_text(&e.to_string()),
                        })?;
                Ok(matches!(
                    state,
                    Some(LeaseState::Leased | LeaseState::Breaking)
                ))
            }
            Err(fault) if fault.status() == Some(404) => Ok(false),
            Err(fault) => Err(fault.into_error("read the lease state of", lock_name)),
        }
    }

    pub async fn claim(
        &self,
        runbook: &str,
        instant: DateTime<Utc>,
        schedule: usize,
        replica_id: &str,
    ) -> Result<Claim, CoordinationError> {
        self.ensure_container().await?;
        let claimed = OccurrenceRecord {
            schedule,
            ..OccurrenceRecord::claimed(runbook, instant, replica_id, self.inner.clock.now())
        };
        let name = claimed.blob_name();
        match self
            .write_record(&name, &claimed, Precondition::Absent)
            .await
        {
            Ok(version) => self.lock_and_start(name, claimed, version).await,
            Err(WriteFailure::Conflict) => Ok(Claim::AlreadyClaimed),
            Err(WriteFailure::Storage(e)) => Err(e),
        }
    }

    pub async fn claim_rerun(
        &self,
        interrupted: &InterruptedOccurrence,
        replica_id: &str,
    ) -> Result<Claim, CoordinationError> {
        self.ensure_container().await?;
        let previous = &interrupted.record;
        let name = previous.blob_name();
        let claimed = previous.reclaimed(replica_id, self.inner.clock.now());
        match self
            .write_record(&name, &claimed, Precondition::Matches(&interrupted.version))
            .await
        {
            Ok(version) => self.lock_and_start(name, claimed, version).await,
            Err(WriteFailure::Conflict) => Ok(Claim::AlreadyClaimed),
            Err(WriteFailure::Storage(e)) => Err(e),
        }
    }

    /// Steps 2 and 3 of a claim: take the runbook's lock, then move the record from Claimed
    /// to Running (or Skipped).
    async fn lock_and_start(
        &self,
        name: String,
        claimed: OccurrenceRecord,
        version: Version,
    ) -> Result<Claim, CoordinationError> {
        let runbook = claimed.runbook.clone();
        let lock_name = record::lock_blob(&runbook);
        // Fresh per acquisition: see the module documentation for why not per replica.
        let lease_id = uuid::Uuid::new_v4().to_string();
        let acquire_started = Instant::now();
        match self.acquire(&lock_name, &lease_id).await {
            Ok(()) => {}
            Err(fault) if fault.status() == Some(409) => {
                let skipped = claimed.skipped(self.inner.clock.now());
                return match self
                    .write_record(&name, &skipped, Precondition::Matches(&version))
                    .await
                {
                    // A conflict means a sweeper already gave up on this claim: either way
                    // this replica does not run it.
                    Ok(_) | Err(WriteFailure::Conflict) => Ok(Claim::Busy),
                    Err(WriteFailure::Storage(e)) => Err(e),
                };
            }
            Err(fault) => return Err(fault.into_error("acquire the lease on", &lock_name)),
        }

        let running = claimed.started(self.inner.clock.now());
        let written = self
            .write_record(&name, &running, Precondition::Matches(&version))
            .await;
        let running_version = match written {
            Ok(v) => v,
            Err(failure) => {
                if let Err(fault) = self.release(&lock_name, &lease_id).await {
                    tracing::warn!(runbook, error = %fault.describe(), "could not release the lock after a failed start; it expires by itself");
                }
                return match failure {
                    // A sweeper marked the stalled claim Interrupted first; it owns the
                    // decision now.
                    WriteFailure::Conflict => Ok(Claim::AlreadyClaimed),
                    WriteFailure::Storage(e) => Err(e),
                };
            }
        };

        let validity = Arc::new(Validity::new(
            acquire_started + self.inner.options.trusted_for(),
        ));
        let lost = CancellationToken::new();
        let stop = CancellationToken::new();
        let paused = Arc::new(AtomicBool::new(false));
        let renewer = tokio::spawn(
            Renewer {
                coordinator: self.clone(),
                lock_name: lock_name.clone(),
                lease_id: lease_id.clone(),
                validity: validity.clone(),
                lost: lost.clone(),
                stop: stop.clone(),
                paused: paused.clone(),
                runbook: runbook.clone(),
                scheduled_for: running.scheduled_for,
            }
            .run(),
        );
        Ok(Claim::Acquired(OccurrenceGuard {
            record: running,
            lost,
            held: Held::Azure(AzureHold {
                coordinator: self.clone(),
                record_name: name,
                lock_name,
                lease_id,
                version: running_version,
                validity,
                paused,
                stop,
                renewer: Some(renewer),
            }),
        }))
    }

    pub async fn sweep_interrupted(
        &self,
        runbook: &str,
    ) -> Result<Vec<InterruptedOccurrence>, CoordinationError> {
        self.ensure_container().await?;
        let prefix = record::occurrences_prefix(runbook);
        let candidates: Vec<String> = self
            .list(&prefix, true)
            .await?
            .into_iter()
            .filter(|(_, state)| !state.is_some_and(OccurrenceState::is_final))
            .map(|(name, _)| name)
            .collect();
        if candidates.is_empty() {
            self.forget_watched(&prefix, &[]);
            return Ok(Vec::new());
        }
        let held = self.lock_held(&record::lock_blob(runbook)).await?;
        let grace = self.inner.options.orphan_grace;
        let mut marked = Vec::new();
        for name in &candidates {
            let Some(current) = self.read_json::<OccurrenceRecord>(name).await? else {
                continue;
            };
            let now = Instant::now();
            let seen_since = self.watched_since(name, &current.version);
            match record::orphan_decision(current.value.state, held, seen_since, now, grace) {
                OrphanDecision::Leave => self.unwatch(name),
                OrphanDecision::Watch => {
                    if seen_since.is_none() {
                        self.watch(name, &current.version, now);
                    }
                }
                OrphanDecision::Interrupt { started } => {
                    self.unwatch(name);
                    let orphaned = current.value.orphaned(self.inner.clock.now());
                    match self
                        .write_record(name, &orphaned, Precondition::Matches(&current.version))
                        .await
                    {
                        Ok(version) => {
                            tracing::warn!(
                                runbook,
                                scheduled_for = %orphaned.scheduled_for,
                                owner = %orphaned.owner,
                                started,
                                "marked an orphaned occurrence Interrupted (its owner no longer holds the lock)"
                            );
                            marked.push(InterruptedOccurrence {
                                record: orphaned,
                                started,
                                version,
                            });
                        }
                        // Another sweeper, or the owner finishing after all, wrote first.
                        Err(WriteFailure::Conflict) => {}
                        Err(WriteFailure::Storage(e)) => return Err(e),
                    }
                }
            }
        }
        self.forget_watched(&prefix, &candidates);
        Ok(marked)
    }

    /// Deletes final occurrence records scheduled before `cutoff`, at most
    /// [`MAX_PRUNED_PER_PASS`], if this replica gets the cleanup lease; another replica
    /// holding it means that replica prunes this pass, and 0 is returned.
    pub async fn prune(&self, cutoff: DateTime<Utc>) -> Result<usize, CoordinationError> {
        self.ensure_container().await?;
        let lease_id = uuid::Uuid::new_v4().to_string();
        match self.acquire(CLEANUP_LEASE, &lease_id).await {
            Ok(()) => {}
            Err(fault) if fault.status() == Some(409) => return Ok(0),
            Err(fault) => return Err(fault.into_error("lease", CLEANUP_LEASE)),
        }
        let pruned = self.prune_pass(cutoff).await;
        if let Err(fault) = self.release(CLEANUP_LEASE, &lease_id).await {
            // The lease expires on its own; the next pass only waits for it.
            tracing::debug!(error = %fault.describe(), "cannot release the cleanup lease");
        }
        pruned
    }

    async fn prune_pass(&self, cutoff: DateTime<Utc>) -> Result<usize, CoordinationError> {
        let old: Vec<String> = self
            .list(record::OCCURRENCES_ROOT, true)
            .await?
            .into_iter()
            .filter(|(name, state)| {
                state.is_some_and(OccurrenceState::is_final)
                    && record::occurrence_instant(name).is_some_and(|instant| instant < cutoff)
            })
            .map(|(name, _)| name)
            .take(MAX_PRUNED_PER_PASS)
            .collect();
        let mut deleted = 0;
        for name in &old {
            match self.call(self.blob(name).delete(None)).await {
                Ok(_) => deleted += 1,
                // Deleted meanwhile (a previous holder of the lease whose pass overran it).
                Err(fault) if fault.status() == Some(404) => {}
                Err(fault) => return Err(fault.into_error("delete", name)),
            }
        }
        Ok(deleted)
    }

    fn watched(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Instant)>> {
        // Entries are inserted and removed whole, so a poisoned map is still consistent.
        self.inner
            .watched
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn watched_since(&self, name: &str, version: &Version) -> Option<Instant> {
        self.watched()
            .get(name)
            .filter(|(etag, _)| *etag == version.0)
            .map(|(_, since)| *since)
    }

    fn watch(&self, name: &str, version: &Version, now: Instant) {
        self.watched()
            .insert(name.to_string(), (version.0.clone(), now));
    }

    fn unwatch(&self, name: &str) {
        self.watched().remove(name);
    }

    fn forget_watched(&self, prefix: &str, keep: &[String]) {
        self.watched()
            .retain(|name, _| !name.starts_with(prefix) || keep.contains(name));
    }

    /// Blob names under `prefix` in name order, with the state mirrored in their metadata
    /// when `with_state` (absent for blobs written by hand).
    async fn list(
        &self,
        prefix: &str,
        with_state: bool,
    ) -> Result<Vec<(String, Option<OccurrenceState>)>, CoordinationError> {
        let options = BlobContainerClientListBlobsOptions {
            prefix: Some(prefix.to_string()),
            include: with_state.then(|| vec![ListBlobsIncludeItem::Metadata]),
            ..Default::default()
        };
        let mut pager = self
            .inner
            .container
            .list_blobs(Some(options))
            .map_err(|e| CoordinationError::Unavailable {
                operation: "list",
                blob: prefix.to_string(),
                detail: redact_text(&e.to_string()),
            })?;
        let mut out = Vec::new();
        loop {
            let item = self
                .call(pager.try_next())
                .await
                .map_err(|fault| fault.into_error("list", prefix))?;
            let Some(item) = item else { break };
            let Some(name) = item.name else { continue };
            let state = item
                .metadata
                .and_then(|m| m.values)
                .and_then(|values| values.get(STATE_METADATA).cloned())
                .and_then(|s| OccurrenceState::parse(&s));
            out.push((name, state));
        }
        Ok(out)
    }

    pub async fn list_occurrences(
        &self,
        runbook: &str,
        limit: usize,
    ) -> Result<Vec<OccurrenceRecord>, CoordinationError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.ensure_container().await?;
        let names = self
            .list(&record::occurrences_prefix(runbook), false)
            .await?;
        let newest = names.len().saturating_sub(limit);
        let reads = futures::stream::iter(
            names[newest..]
                .iter()
                .map(|(name, _)| async move { self.read_json::<OccurrenceRecord>(name).await }),
        )
        .buffer_unordered(LIST_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
        let mut records: Vec<OccurrenceRecord> =
            reads.into_iter().flatten().map(|v| v.value).collect();
        records.sort_by_key(|r| std::cmp::Reverse(r.scheduled_for));
        Ok(records)
    }

    pub async fn occurrence(
        &self,
        runbook: &str,
        instant: DateTime<Utc>,
    ) -> Result<Option<Versioned<OccurrenceRecord>>, CoordinationError> {
        self.ensure_container().await?;
        self.read_json(&record::occurrence_blob(runbook, instant))
            .await
    }

    pub async fn schedule_status(
        &self,
        runbook: &str,
    ) -> Result<Option<Versioned<ScheduleStatus>>, CoordinationError> {
        self.ensure_container().await?;
        self.read_json(&record::status_blob(runbook)).await
    }

    pub async fn write_schedule_status(
        &self,
        status: &ScheduleStatus,
        expected: Option<&Version>,
    ) -> Result<Version, CoordinationError> {
        self.ensure_container().await?;
        let name = record::status_blob(&status.runbook);
        let precondition = match expected {
            Some(version) => Precondition::Matches(version),
            None => Precondition::Absent,
        };
        match self.write_json(&name, status, None, precondition).await {
            Ok(version) => Ok(version),
            Err(WriteFailure::Conflict) => Err(CoordinationError::Conflict { blob: name }),
            Err(WriteFailure::Storage(e)) => Err(e),
        }
    }

    /// Read, change, write with `If-Match`; again on a conflict, a bounded number of times.
    pub async fn update_status(
        &self,
        runbook: &str,
        change: impl Fn(&ScheduleStatus) -> ScheduleStatus,
    ) -> Result<ScheduleStatus, CoordinationError> {
        for attempt in 0..STATUS_ATTEMPTS {
            let current = self.schedule_status(runbook).await?;
            let base = current
                .as_ref()
                .map(|c| c.value.clone())
                .unwrap_or_else(|| ScheduleStatus::new(runbook));
            let updated = change(&base);
            if current.is_some() && updated == base {
                return Ok(updated);
            }
            match self
                .write_schedule_status(&updated, current.as_ref().map(|c| &c.version))
                .await
            {
                Ok(_) => return Ok(updated),
                Err(CoordinationError::Conflict { .. }) => {
                    // Spread the racers out so that one of them wins the next round.
                    let jitter = rand::random_range(5..25u64) * u64::from(attempt + 1);
                    tokio::time::sleep(Duration::from_millis(jitter)).await;
                }
                Err(e) => return Err(e),
            }
        }
        Err(CoordinationError::Contention {
            blob: record::status_blob(runbook),
            attempts: STATUS_ATTEMPTS,
        })
    }
}

/// Until when the lease is trusted (monotonic clock), shared by the guard and its renewer.
#[derive(Debug)]
struct Validity {
    until: Mutex<Instant>,
}

impl Validity {
    fn new(until: Instant) -> Self {
        Self {
            until: Mutex::new(until),
        }
    }

    fn until(&self) -> Instant {
        *self.until.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lapsed_at(&self, now: Instant) -> bool {
        now >= self.until()
    }

    fn extend_to(&self, until: Instant) {
        let mut current = self.until.lock().unwrap_or_else(|p| p.into_inner());
        *current = (*current).max(until);
    }
}

/// The task that renews a held lease; owned (and stopped) by its [`AzureHold`].
struct Renewer {
    coordinator: AzureBlobCoordinator,
    lock_name: String,
    lease_id: String,
    validity: Arc<Validity>,
    lost: CancellationToken,
    stop: CancellationToken,
    paused: Arc<AtomicBool>,
    runbook: String,
    scheduled_for: DateTime<Utc>,
}

impl Renewer {
    async fn run(self) {
        let options = self.coordinator.inner.options.clone();
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = self.lost.cancelled() => return,
                _ = tokio::time::sleep(options.renew_interval) => {}
            }
            if self.paused.load(Ordering::SeqCst) {
                continue;
            }
            let started = Instant::now();
            let trusted_until = self.validity.until();
            if started >= trusted_until {
                // The process did not run for a while (paused, starved): the service may
                // have handed the lock to someone else, so do not renew it back to life.
                self.give_up(
                    "the lease lapsed before it could be renewed (was the process paused?)",
                );
                return;
            }
            let renewed = self
                .coordinator
                .call(
                    self.coordinator
                        .blob(&self.lock_name)
                        .renew_lease(self.lease_id.clone(), None),
                )
                .await;
            match renewed {
                Ok(_) if Instant::now() < trusted_until => {
                    self.validity.extend_to(started + options.trusted_for());
                }
                Ok(_) => {
                    self.give_up("the renewal answered only after the lease had lapsed");
                    return;
                }
                Err(fault) => {
                    self.give_up(&format!("renewal failed: {}", fault.describe()));
                    return;
                }
            }
        }
    }

    fn give_up(&self, why: &str) {
        tracing::warn!(
            runbook = %self.runbook,
            scheduled_for = %self.scheduled_for,
            reason = why,
            "lost the lease on the runbook's lock; the job is cancelled between calls and not recorded by this replica"
        );
        self.lost.cancel();
    }
}

/// The Azure side of an [`OccurrenceGuard`].
pub(crate) struct AzureHold {
    coordinator: AzureBlobCoordinator,
    record_name: String,
    lock_name: String,
    lease_id: String,
    /// The record's ETag after this replica wrote it Running.
    version: Version,
    validity: Arc<Validity>,
    paused: Arc<AtomicBool>,
    stop: CancellationToken,
    renewer: Option<JoinHandle<()>>,
}

impl fmt::Debug for AzureHold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureHold")
            .field("record", &self.record_name)
            .field("lock", &self.lock_name)
            .finish_non_exhaustive()
    }
}

impl AzureHold {
    pub(crate) fn lapsed(&self) -> bool {
        self.validity.lapsed_at(Instant::now())
    }

    pub(crate) fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
    }

    async fn stop_renewing(&mut self) {
        self.stop.cancel();
        if let Some(renewer) = self.renewer.take() {
            // Bounded: a renewal in flight ends within request_timeout.
            let _ = renewer.await;
        }
    }

    async fn release_quietly(&self) {
        if let Err(fault) = self
            .coordinator
            .release(&self.lock_name, &self.lease_id)
            .await
        {
            tracing::debug!(lock = %self.lock_name, error = %fault.describe(), "lease not released (it was lost or expires by itself)");
        }
    }

    pub(crate) async fn complete(
        mut self,
        record: &OccurrenceRecord,
        lost: &CancellationToken,
        checked: Result<(), CoordinationError>,
        state: FinalState,
        job_id: Option<String>,
    ) -> Result<OccurrenceRecord, CoordinationError> {
        if let Err(lease_lost) = checked {
            self.stop_renewing().await;
            self.release_quietly().await;
            return Err(lease_lost);
        }
        let ended = record.ended(state, job_id, self.coordinator.inner.clock.now());
        // The renewer keeps the lease alive while the final record is written.
        let written = self
            .coordinator
            .write_record(
                &self.record_name,
                &ended,
                Precondition::Matches(&self.version),
            )
            .await;
        self.stop_renewing().await;
        match written {
            Ok(_) => {
                if let Err(fault) = self
                    .coordinator
                    .release(&self.lock_name, &self.lease_id)
                    .await
                {
                    tracing::warn!(lock = %self.lock_name, error = %fault.describe(), "could not release the lease after completing; it expires by itself");
                }
                if state == FinalState::Completed
                    && let Err(e) = self
                        .coordinator
                        .update_status(&record.runbook, |s| s.with_completed(record.scheduled_for))
                        .await
                {
                    tracing::warn!(runbook = %record.runbook, error = %e, "could not move the runbook's last completed instant forward");
                }
                Ok(ended)
            }
            Err(WriteFailure::Conflict) => {
                lost.cancel();
                self.release_quietly().await;
                Err(CoordinationError::LeaseLost {
                    runbook: record.runbook.clone(),
                    scheduled_for: record.scheduled_for,
                })
            }
            Err(WriteFailure::Storage(e)) => {
                self.release_quietly().await;
                Err(e)
            }
        }
    }
}

impl Drop for AzureHold {
    fn drop(&mut self) {
        // Dropped without `complete`: stop renewing, do not release (a crash does not
        // either). The task is aborted, not detached.
        self.stop.cancel();
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
        }
    }
}
