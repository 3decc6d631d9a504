//! [`BlobHistoryStore`]: the storage calls. Every decision is in [`super::layout`] and
//! [`super::record`]; this file reads, writes, lists and deletes blobs.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use azure_core::http::{RequestContent, Url};
use azure_storage_blob::models::{
    BlobClientAcquireLeaseOptions, BlobClientUploadOptions, BlobContainerClientListBlobsOptions,
    BlobItem, ListBlobsIncludeItem,
};
use azure_storage_blob::{BlobClient, BlobContainerClient};
use chrono::{DateTime, Utc};
use futures::{StreamExt as _, TryStreamExt as _};
use secrecy::ExposeSecret as _;
use tokio::sync::OnceCell;

use super::head::{HEAD_SCHEMA, Head, HeadChange, HeadRow};
use super::layout::{
    self, Layout, ListRow, PruneStep, ROW_METADATA, RunbookMarker, decode_marker, decode_row,
    encode_marker, encode_row, id_from_inverted, inverted,
};
use super::record::{JobRecord, RECORD_SCHEMA, merge_progress};
use super::{BlobHistoryError, BlobHistoryOptions, ListedJob, PruneOutcome, ReportInfo};
use crate::clock::SharedClock;
use crate::coordination::StorageTarget;
use crate::coordination::azure::{Fault, classify};
use crate::coordination::redact::{redact_text, redact_url};
use crate::history::id::IdGenerator;
use crate::history::{
    HistoryError, JobDetail, JobFilter, JobId, JobStatus, JobSummary, NewJob, NewStreamEntry,
    Outcome, StepCounts, StreamEntry, Trigger,
};

/// Blobs read or written at once by one operation (a page's records, a job's chunks).
const CONCURRENCY: usize = 16;
/// Attempts of a read-change-write of a record before giving up with a conflict.
const WRITE_ATTEMPTS: u32 = 8;
/// A prune pass stops this long before its lease would expire.
const LEASE_MARGIN: Duration = Duration::from_secs(5);

/// The blob history's errors from the coordination store's classification of a storage
/// failure (one place decides what an SDK error is, and keeps its URL out).
impl Fault {
    fn error(self, operation: &'static str, blob: &str) -> BlobHistoryError {
        let blob = blob.to_string();
        let (status, code, request_id) = match self {
            Fault::Unreachable(detail) => {
                return BlobHistoryError::Unreachable {
                    operation,
                    blob,
                    detail,
                };
            }
            Fault::Http {
                status,
                code,
                request_id,
            } => (
                status,
                code.unwrap_or_else(|| "without error code".into()),
                request_id.unwrap_or_else(|| "none".into()),
            ),
        };
        match status {
            401 | 403 => BlobHistoryError::Forbidden {
                operation,
                blob,
                status,
                code,
                request_id,
            },
            409 | 412 => BlobHistoryError::Conflict { blob },
            // Throttling and timeouts are the service not answering in time, not a refusal.
            400..=499 if !matches!(status, 408 | 429) => BlobHistoryError::Refused {
                operation,
                blob,
                status,
                code,
                request_id,
            },
            _ => BlobHistoryError::Unreachable {
                operation,
                blob,
                detail: format!("HTTP {status} {code} (request id {request_id})"),
            },
        }
    }
}

/// The job history in a blob container; cheap to clone, one per replica.
#[derive(Clone)]
pub struct BlobHistoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    container: BlobContainerClient,
    display: String,
    layout: Layout,
    options: BlobHistoryOptions,
    clock: SharedClock,
    ids: IdGenerator,
    container_ready: OnceCell<()>,
    /// The latest occurrence this store knows each runbook marker holds, so that most jobs
    /// skip the marker's read-modify-write. The lock is never held across an await.
    noted: std::sync::Mutex<HashMap<String, Option<DateTime<Utc>>>>,
    heads: HeadWriters,
}

/// Index head writes of this replica, coalesced: every change waits in `pending` under its
/// head's name; whoever holds the head's stripe lock takes all of them into one
/// read-change-write and tells each waiter how it went. A burst of jobs (or an import) is
/// then a few head writes, not one per job, and replicas only race one another (`If-Match`).
struct HeadWriters {
    /// Changes not yet taken, by head blob name; an entry lives only while its writers wait.
    /// The lock is never held across an await.
    pending: std::sync::Mutex<HashMap<String, Vec<PendingHeadChange>>>,
    /// One lock per stripe of head names: a fixed number, whatever the runbooks.
    stripes: Vec<tokio::sync::Mutex<()>>,
}

struct PendingHeadChange {
    change: HeadChange,
    done: tokio::sync::oneshot::Sender<Result<(), String>>,
}

const HEAD_STRIPES: usize = 16;

impl HeadWriters {
    fn new() -> HeadWriters {
        HeadWriters {
            pending: std::sync::Mutex::new(HashMap::new()),
            stripes: (0..HEAD_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        }
    }

    fn stripe(&self, name: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{Hash as _, Hasher as _};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        name.hash(&mut hasher);
        &self.stripes[(hasher.finish() % HEAD_STRIPES as u64) as usize]
    }

    fn push(
        &self,
        name: &str,
        change: HeadChange,
    ) -> tokio::sync::oneshot::Receiver<Result<(), String>> {
        let (done, receiver) = tokio::sync::oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(name.to_string())
            .or_default()
            .push(PendingHeadChange { change, done });
        receiver
    }

    fn take(&self, name: &str) -> Vec<PendingHeadChange> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(name)
            .unwrap_or_default()
    }
}

impl std::fmt::Debug for BlobHistoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobHistoryStore")
            .field("container", &self.inner.display)
            .field("layout", &self.inner.layout)
            .field("replica", &self.inner.options.replica)
            .finish_non_exhaustive()
    }
}

/// A conditional write's condition.
enum Condition<'a> {
    Absent,
    Matches(&'a str),
    None,
}

impl BlobHistoryStore {
    /// Builds the client; makes no storage call. `target` is the coordination container's
    /// (or the `[history]` one's) URL and credential.
    pub fn new(
        target: StorageTarget,
        options: BlobHistoryOptions,
        clock: SharedClock,
    ) -> Result<BlobHistoryStore, BlobHistoryError> {
        let invalid = |key: &str, message: String| BlobHistoryError::Settings {
            key: key.to_string(),
            message,
        };
        let (url, credential, key) = match target {
            StorageTarget::SasUrl(secret) => (
                Url::parse(secret.expose_secret()).map_err(|_| {
                    invalid(
                        "coordination.sas_url",
                        format!(
                            "expected a container URL with a SAS query string, got {}",
                            redact_url(secret.expose_secret())
                        ),
                    )
                })?,
                None,
                "coordination.sas_url",
            ),
            StorageTarget::Token {
                container_url,
                credential,
            } => {
                if container_url.scheme() != "https" {
                    return Err(invalid(
                        "coordination.container_url",
                        format!(
                            "expected https://<account>.blob.core.windows.net/<container>, got {}",
                            redact_url(container_url.as_str())
                        ),
                    ));
                }
                let url = container_url;
                (url, Some(credential), "coordination.container_url")
            }
        };
        let (container, display) = crate::coordination::azure::container_client(
            url,
            credential,
            options.max_retries,
            options.request_timeout,
        )
        .map_err(|e| invalid(key, redact_text(&e.to_string())))?;
        Ok(BlobHistoryStore {
            inner: Arc::new(Inner {
                container,
                display,
                layout: Layout::new(&options.prefix),
                options,
                clock,
                ids: IdGenerator::default(),
                container_ready: OnceCell::new(),
                noted: std::sync::Mutex::new(HashMap::new()),
                heads: HeadWriters::new(),
            }),
        })
    }

    pub fn options(&self) -> &BlobHistoryOptions {
        &self.inner.options
    }

    fn layout(&self) -> &Layout {
        &self.inner.layout
    }

    fn blob(&self, name: &str) -> BlobClient {
        self.inner.container.blob_client(name)
    }

    /// One storage call, bounded by `request_timeout` (SDK retries included).
    async fn call<T>(
        &self,
        operation: impl Future<Output = azure_core::Result<T>>,
    ) -> Result<T, Fault> {
        let timeout = self.inner.options.request_timeout;
        match tokio::time::timeout(timeout, operation).await {
            Err(_) => Err(Fault::Unreachable(format!(
                "no answer within {} ms",
                timeout.as_millis()
            ))),
            Ok(result) => result.map_err(classify),
        }
    }

    /// Creates the container the first time it is missing (a test's fresh container, or an
    /// account where only the history uses it).
    async fn ensure_container(&self) -> Result<(), BlobHistoryError> {
        self.inner
            .container_ready
            .get_or_try_init(|| async {
                let container = &self.inner.container;
                match self.call(container.exists()).await {
                    Ok(true) => return Ok(()),
                    Ok(false) => {}
                    // Rights on blobs only: the blob calls say whether they are allowed.
                    Err(Fault::Http { status: 403, .. }) => return Ok(()),
                    Err(f) => return Err(f.error("check the container", &self.inner.display)),
                }
                match self.call(container.create(None)).await {
                    Ok(_) => Ok(()),
                    Err(f) if f.status() == Some(409) => Ok(()),
                    Err(f) => Err(f.error("create the container", &self.inner.display)),
                }
            })
            .await
            .map(|_| ())
    }

    async fn download(&self, name: &str) -> Result<Option<(Vec<u8>, String)>, BlobHistoryError> {
        let blob = self.blob(name);
        let result = self
            .call(async {
                let response = blob.download(None).await?;
                let etag = response.properties.etag.as_ref().map(ToString::to_string);
                let body = response.body.collect().await?;
                Ok((body.to_vec(), etag.unwrap_or_default()))
            })
            .await;
        match result {
            Ok(found) => Ok(Some(found)),
            Err(f) if f.status() == Some(404) => Ok(None),
            Err(f) => Err(f.error("read", name)),
        }
    }

    /// Uploads `body`; `Ok(None)` when the condition failed (409/412/404 on If-Match).
    async fn upload(
        &self,
        name: &str,
        body: Vec<u8>,
        content_type: &str,
        metadata: Option<HashMap<String, String>>,
        condition: Condition<'_>,
    ) -> Result<Option<String>, BlobHistoryError> {
        let mut options = BlobClientUploadOptions {
            blob_content_type: Some(content_type.to_string()),
            metadata,
            ..Default::default()
        };
        match condition {
            Condition::Absent => options = options.if_not_exists(),
            Condition::Matches(etag) => options.if_match = Some(etag.to_string().into()),
            Condition::None => {}
        }
        let conditional = !matches!(condition, Condition::None);
        match self
            .call(
                self.blob(name)
                    .upload(RequestContent::from(body), Some(options)),
            )
            .await
        {
            Ok(result) => Ok(Some(result.etag.map(|e| e.to_string()).unwrap_or_default())),
            Err(f) if conditional && matches!(f.status(), Some(409 | 412 | 404)) => Ok(None),
            Err(f) => Err(f.error("write", name)),
        }
    }

    /// Deletes a blob; one that is already gone counts as deleted.
    async fn delete(&self, name: &str) -> Result<(), BlobHistoryError> {
        match self.call(self.blob(name).delete(None)).await {
            Ok(_) => Ok(()),
            Err(f) if f.status() == Some(404) => Ok(()),
            Err(f) => Err(f.error("delete", name)),
        }
    }

    async fn delete_all(&self, names: Vec<String>) -> Result<(), BlobHistoryError> {
        futures::stream::iter(
            names
                .into_iter()
                .map(|name| async move { self.delete(&name).await }),
        )
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await
        .map(|_| ())
    }

    /// Blobs under `prefix` in name order, from `start_from` (inclusive) on, until `visit`
    /// returns false.
    async fn list(
        &self,
        prefix: &str,
        start_from: Option<String>,
        page_size: usize,
        with_metadata: bool,
        mut visit: impl FnMut(BlobItem) -> bool,
    ) -> Result<(), BlobHistoryError> {
        let options = BlobContainerClientListBlobsOptions {
            prefix: Some(prefix.to_string()),
            start_from,
            maxresults: Some(i32::try_from(page_size.clamp(1, 5000)).unwrap_or(5000)),
            include: with_metadata.then(|| vec![ListBlobsIncludeItem::Metadata]),
            ..Default::default()
        };
        let mut pager = self
            .inner
            .container
            .list_blobs(Some(options))
            .map_err(|e| BlobHistoryError::Unreachable {
                operation: "list",
                blob: prefix.to_string(),
                detail: redact_text(&e.to_string()),
            })?;
        while let Some(item) = self
            .call(pager.try_next())
            .await
            .map_err(|f| f.error("list", prefix))?
        {
            if !visit(item) {
                break;
            }
        }
        Ok(())
    }

    async fn list_names(&self, prefix: &str) -> Result<Vec<String>, BlobHistoryError> {
        let mut names = Vec::new();
        self.list(prefix, None, 5000, false, |item| {
            names.extend(item.name);
            true
        })
        .await?;
        Ok(names)
    }

    async fn read_record(
        &self,
        id: &JobId,
    ) -> Result<Option<(JobRecord, String)>, BlobHistoryError> {
        let name = self.layout().record(id);
        let Some((body, etag)) = self.download(&name).await? else {
            return Ok(None);
        };
        let record: JobRecord =
            serde_json::from_slice(&body).map_err(|e| BlobHistoryError::Corrupt {
                blob: name.clone(),
                detail: e.to_string(),
            })?;
        if record.schema > RECORD_SCHEMA {
            return Err(BlobHistoryError::NewerSchema {
                blob: name,
                found: record.schema,
                known: RECORD_SCHEMA,
            });
        }
        Ok(Some((record, etag)))
    }

    async fn write_record(
        &self,
        record: &JobRecord,
        condition: Condition<'_>,
    ) -> Result<Option<String>, BlobHistoryError> {
        let body = serde_json::to_vec(record).map_err(|e| BlobHistoryError::Corrupt {
            blob: self.layout().record(&record.id),
            detail: e.to_string(),
        })?;
        self.upload(
            &self.layout().record(&record.id),
            body,
            "application/json",
            None,
            condition,
        )
        .await
    }

    /// Read, change, write with `If-Match`, again on a conflict (the interrupt sweep wrote in
    /// between), a bounded number of times. `change` returns `Err` to stop without writing.
    async fn update_record<T>(
        &self,
        id: &JobId,
        mut change: impl FnMut(&mut JobRecord) -> Result<T, BlobHistoryError>,
    ) -> Result<(T, JobRecord), BlobHistoryError> {
        for _ in 0..WRITE_ATTEMPTS {
            let (mut record, etag) = self
                .read_record(id)
                .await?
                .ok_or_else(|| HistoryError::UnknownJob { id: id.clone() })?;
            let value = change(&mut record)?;
            if self
                .write_record(&record, Condition::Matches(&etag))
                .await?
                .is_some()
            {
                return Ok((value, record));
            }
        }
        Err(BlobHistoryError::Conflict {
            blob: self.layout().record(id),
        })
    }

    /// Writes the index entries of a record as it now is: the rows (overwritten), the entries
    /// of its status, and removes the entries of the non-final statuses it left.
    async fn write_index(&self, record: &JobRecord) -> Result<(), BlobHistoryError> {
        let layout = self.layout();
        let row = ListRow {
            job: record.summary(),
        };
        let metadata = encode_row(&row).map(|v| HashMap::from([(ROW_METADATA.to_string(), v)]));
        let mut writes: Vec<String> = layout.row_entries(&record.id, &record.runbook).into();
        writes.extend(layout.status_entries(&record.id, &record.runbook, record.status));
        // Owned names and `async move`: a closure returning a future that borrows its
        // argument makes the future not provably `Send` (a higher-ranked lifetime), and the
        // scheduler spawns these.
        futures::stream::iter(writes.into_iter().map(|name| {
            let metadata = metadata.clone();
            async move {
                self.upload(
                    &name,
                    Vec::new(),
                    "application/octet-stream",
                    metadata,
                    Condition::None,
                )
                .await
            }
        }))
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
        let left_statuses: Vec<JobStatus> = record
            .statuses
            .iter()
            .copied()
            .filter(|s| !s.is_final() && *s != record.status)
            .collect();
        let left: Vec<String> = left_statuses
            .iter()
            .flat_map(|s| layout.status_entries(&record.id, &record.runbook, *s))
            .collect();
        self.delete_all(left).await?;
        // The heads after the index entries: a head never shows a job its index lacks.
        let head_row = HeadRow {
            id: record.id.clone(),
            row: metadata.is_some().then_some(row),
        };
        let mut changes: Vec<(String, HeadChange)> = layout
            .row_indexes(&record.runbook)
            .into_iter()
            .chain(layout.status_indexes(&record.runbook, record.status))
            .map(|index| (index, HeadChange::Upsert(Box::new(head_row.clone()))))
            .collect();
        for status in left_statuses {
            changes.extend(
                layout
                    .status_indexes(&record.runbook, status)
                    .into_iter()
                    .map(|index| (index, HeadChange::Remove(record.id.clone()))),
            );
        }
        self.change_heads(changes).await
    }

    /// Makes each change to its index's head, the heads concurrently.
    async fn change_heads(
        &self,
        changes: Vec<(String, HeadChange)>,
    ) -> Result<(), BlobHistoryError> {
        futures::stream::iter(
            changes
                .into_iter()
                .map(|(index, change)| async move { self.change_head(&index, change).await }),
        )
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await
        .map(|_| ())
    }

    /// Queues `change` for the head of `index`, and either writes it (with whatever else
    /// waits for that head) or learns that another write of this replica took it.
    async fn change_head(&self, index: &str, change: HeadChange) -> Result<(), BlobHistoryError> {
        let name = self.layout().head(index);
        let heads = &self.inner.heads;
        let mut done = heads.push(&name, change);
        {
            let _writing = heads.stripe(&name).lock().await;
            let batch = heads.take(&name);
            if !batch.is_empty() {
                let changes: Vec<HeadChange> = batch.iter().map(|p| p.change.clone()).collect();
                let result = self.write_head(index, &name, &changes).await;
                let told = result.as_ref().map(|_| ()).map_err(ToString::to_string);
                for waiter in batch {
                    // A waiter that gave up (its job's write was cancelled) needs no answer.
                    let _ = waiter.done.send(told.clone());
                }
                // This call's own change was in the batch it wrote (it queued before taking).
                result?;
            }
        }
        match done.try_recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(detail)) => Err(BlobHistoryError::HeadNotWritten { blob: name, detail }),
            // Not answered: cannot happen, a change is answered before its taker lets go of
            // the stripe; treated as not written, so the caller writes the job again.
            Err(_) => Err(BlobHistoryError::HeadNotWritten {
                blob: name,
                detail: "the write that took this change did not answer".to_string(),
            }),
        }
    }

    /// Reads the head of `index` (seeding it from the index when it is missing, unreadable or
    /// ran short), applies `changes`, writes it with `If-Match` (`If-None-Match: *` when new),
    /// again on a conflict with another replica, a bounded number of times.
    async fn write_head(
        &self,
        index: &str,
        name: &str,
        changes: &[HeadChange],
    ) -> Result<(), BlobHistoryError> {
        let cap = self.inner.options.head_rows.max(1);
        for attempt in 0..WRITE_ATTEMPTS {
            back_off(attempt).await;
            let current = self.download(name).await?;
            let etag = current.as_ref().map(|(_, etag)| etag.clone());
            let parsed = current
                .as_ref()
                .and_then(|(body, _)| serde_json::from_slice::<Head>(body).ok());
            if parsed.as_ref().is_some_and(|h| h.schema > HEAD_SCHEMA) {
                // A newer build owns this head; it stays as that build wrote it.
                return Ok(());
            }
            let mut head = match parsed {
                Some(head) if !head.needs_seed(cap) => head,
                // Missing, unreadable, or run short: the index is the truth.
                _ => self.seed_head(index, cap).await?,
            };
            head.apply(changes, cap);
            let body = serde_json::to_vec(&head).map_err(|e| BlobHistoryError::Corrupt {
                blob: name.to_string(),
                detail: e.to_string(),
            })?;
            let condition = match &etag {
                Some(etag) => Condition::Matches(etag),
                None => Condition::Absent,
            };
            if self
                .upload(name, body, "application/json", None, condition)
                .await?
                .is_some()
            {
                return Ok(());
            }
        }
        Err(BlobHistoryError::Conflict {
            blob: name.to_string(),
        })
    }

    /// A head made from the newest `cap` entries of its index (one listing).
    async fn seed_head(&self, index: &str, cap: usize) -> Result<Head, BlobHistoryError> {
        let rows = self.scan(index, None, cap, |_| true).await?;
        Ok(Head::seeded(
            rows.into_iter()
                .map(|listed| HeadRow {
                    id: listed.job.id.clone(),
                    row: Some(ListRow { job: listed.job }),
                })
                .collect(),
            cap,
        ))
    }

    /// The head of `index`, when there is one this build can read.
    async fn read_head(&self, index: &str) -> Result<Option<Head>, BlobHistoryError> {
        let name = self.layout().head(index);
        Ok(self
            .download(&name)
            .await?
            .and_then(|(body, _)| serde_json::from_slice::<Head>(&body).ok())
            .filter(|head| head.schema <= HEAD_SCHEMA))
    }

    /// Keeps `runbooks/{name}` up to date: created the first time, its latest scheduled
    /// occurrence moved forward with `If-Match`.
    async fn note_runbook(
        &self,
        runbook: &str,
        occurrence: Option<DateTime<Utc>>,
    ) -> Result<(), BlobHistoryError> {
        let name = self.layout().runbook_marker(runbook);
        let known = self
            .inner
            .noted
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(runbook)
            .copied();
        if known.is_some_and(|noted| noted >= occurrence) {
            return Ok(());
        }
        for attempt in 0..WRITE_ATTEMPTS {
            back_off(attempt).await;
            let current = self.download(&name).await?;
            let mut marker = match &current {
                Some((body, _)) => serde_json::from_slice::<RunbookMarker>(body).map_err(|e| {
                    BlobHistoryError::Corrupt {
                        blob: name.clone(),
                        detail: e.to_string(),
                    }
                })?,
                None => RunbookMarker {
                    runbook: runbook.to_string(),
                    last_occurrence: None,
                },
            };
            let newer = occurrence.is_some_and(|at| marker.last_occurrence < Some(at));
            if current.is_some() && !newer {
                self.remember_marker(runbook, marker.last_occurrence);
                return Ok(());
            }
            if newer {
                marker.last_occurrence = occurrence;
            }
            let metadata = HashMap::from([(ROW_METADATA.to_string(), encode_marker(&marker))]);
            let body = serde_json::to_vec(&marker).unwrap_or_default();
            let condition = match &current {
                Some((_, etag)) => Condition::Matches(etag),
                None => Condition::Absent,
            };
            if self
                .upload(&name, body, "application/json", Some(metadata), condition)
                .await?
                .is_some()
            {
                self.remember_marker(runbook, marker.last_occurrence);
                return Ok(());
            }
        }
        Err(BlobHistoryError::Conflict { blob: name })
    }

    fn remember_marker(&self, runbook: &str, occurrence: Option<DateTime<Utc>>) {
        let mut noted = self
            .inner
            .noted
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = noted.entry(runbook.to_string()).or_insert(occurrence);
        *entry = (*entry).max(occurrence);
    }

    /// Records a job that became due, as Queued. Its `created_at` is now.
    pub async fn create_job(&self, job: NewJob) -> Result<JobId, BlobHistoryError> {
        self.insert(job, JobStatus::Queued, None).await
    }

    /// Records an occurrence that will not run (the overlap policy dropped it) as Skipped,
    /// with `reason` as its error summary.
    pub async fn record_skipped(
        &self,
        job: NewJob,
        reason: &str,
    ) -> Result<JobId, BlobHistoryError> {
        self.insert(job, JobStatus::Skipped, Some(reason.to_string()))
            .await
    }

    async fn insert(
        &self,
        job: NewJob,
        status: JobStatus,
        error: Option<String>,
    ) -> Result<JobId, BlobHistoryError> {
        self.ensure_container().await?;
        let now = self.inner.clock.now();
        let id = self.inner.ids.next(now);
        let record = JobRecord::new(
            id.clone(),
            job,
            now,
            status,
            error,
            &self.inner.options.replica,
        );
        self.insert_record(record).await?;
        Ok(id)
    }

    async fn insert_record(&self, record: JobRecord) -> Result<(), BlobHistoryError> {
        // The record first: an index entry must never point at nothing but a pruned record.
        if self
            .write_record(&record, Condition::Absent)
            .await?
            .is_none()
        {
            return Err(BlobHistoryError::Conflict {
                blob: self.layout().record(&record.id),
            });
        }
        self.write_index(&record).await?;
        self.note_record(&record).await
    }

    /// Stores a finished job as given (id, times, streams and all): for moving a replica's
    /// SQLite history into the shared one, and for the benchmark's seeding. Refuses a job
    /// that is not final or that exists already.
    pub async fn import_job(
        &self,
        detail: &JobDetail,
        replica: &str,
    ) -> Result<(), BlobHistoryError> {
        let job = &detail.job;
        if !job.status.is_final() {
            return Err(HistoryError::NotFinal { status: job.status }.into());
        }
        self.ensure_container().await?;
        let record = record_of(detail, replica);
        if self
            .write_record(&record, Condition::Absent)
            .await?
            .is_none()
        {
            return Err(BlobHistoryError::Conflict {
                blob: self.layout().record(&job.id),
            });
        }
        self.write_chunk(&job.id, &detail.streams).await?;
        self.write_index(&record).await?;
        self.note_record(&record).await
    }

    /// Writes a job as given, replacing whatever an earlier, interrupted write of it left
    /// (record, streams, index entries): the upload of a job a replica kept locally while the
    /// storage was unreachable. Running it again writes the same blobs, so a retry never
    /// duplicates an entry.
    pub async fn upsert_job(
        &self,
        detail: &JobDetail,
        replica: &str,
    ) -> Result<(), BlobHistoryError> {
        self.ensure_container().await?;
        let id = &detail.job.id;
        let mut record = record_of(detail, replica);
        // The index entries a partial earlier write may have made are removed with it.
        record.statuses = [JobStatus::Queued, JobStatus::Running, detail.job.status]
            .into_iter()
            .fold(Vec::new(), |mut all, s| {
                if !all.contains(&s) {
                    all.push(s);
                }
                all
            });
        self.write_record(&record, Condition::None).await?;
        let stale = self.list_names(&self.layout().streams_prefix(id)).await?;
        self.delete_all(stale).await?;
        self.write_chunk(id, &detail.streams).await?;
        self.write_index(&record).await?;
        self.note_record(&record).await
    }

    /// Records a job that became due as Queued (or Skipped) under an id and time given by
    /// the caller: the replica's local spool made them.
    pub async fn create_job_as(
        &self,
        id: JobId,
        created_at: DateTime<Utc>,
        job: NewJob,
        status: JobStatus,
        error: Option<String>,
    ) -> Result<(), BlobHistoryError> {
        self.ensure_container().await?;
        self.insert_record(JobRecord::new(
            id,
            job,
            created_at,
            status,
            error,
            &self.inner.options.replica,
        ))
        .await
    }

    /// The runbook marker's part of recording a job.
    async fn note_record(&self, record: &JobRecord) -> Result<(), BlobHistoryError> {
        let occurrence = record
            .scheduled_for
            .filter(|_| matches!(record.trigger, Trigger::Schedule | Trigger::CatchUp));
        self.note_runbook(&record.runbook, occurrence).await
    }

    /// Entries as one chunk blob, named by the seq of the first.
    async fn write_chunk(
        &self,
        id: &JobId,
        entries: &[StreamEntry],
    ) -> Result<(), BlobHistoryError> {
        let Some(first) = entries.iter().map(|e| e.seq).min() else {
            return Ok(());
        };
        let name = self.layout().stream_chunk(id, first);
        self.upload(
            &name,
            jsonl(entries),
            "application/x-ndjson",
            None,
            Condition::None,
        )
        .await
        .map(|_| ())
    }

    /// Queued → Running, with `started_at` now.
    pub async fn mark_running(&self, id: &JobId) -> Result<(), BlobHistoryError> {
        let at = self.inner.clock.now();
        let ((), record) = self
            .update_record(id, |record| {
                record.mark_running(at).map_err(|from| {
                    BlobHistoryError::from(HistoryError::InvalidTransition {
                        id: id.clone(),
                        from,
                        to: JobStatus::Running,
                    })
                })
            })
            .await?;
        self.write_index(&record).await
    }

    /// Appends entries to the job's streams, stamped now, with the caps of the SQLite store
    /// (see [`JobRecord::plan_append`]). The record is written first: it reserves the seqs,
    /// so two writers (the owner and an interrupt sweep) never write the same chunk.
    pub async fn append_stream(
        &self,
        id: &JobId,
        entries: Vec<NewStreamEntry>,
    ) -> Result<(), BlobHistoryError> {
        if entries.is_empty() {
            return Ok(());
        }
        let at = self.inner.clock.now();
        let cap = self.inner.options.max_entries_per_stream;
        let (plan, _) = self
            .update_record(id, |record| Ok(record.plan_append(at, &entries, cap)))
            .await?;
        self.write_streams(id, plan).await
    }

    async fn write_streams(
        &self,
        id: &JobId,
        plan: super::record::AppendPlan,
    ) -> Result<(), BlobHistoryError> {
        self.write_chunk(id, &plan.chunk).await?;
        if !plan.progress.is_empty() {
            let name = self.layout().progress(id);
            let current = match self.download(&name).await? {
                Some((body, _)) => parse_jsonl(&name, &body)?,
                None => Vec::new(),
            };
            let kept = merge_progress(
                current,
                plan.progress,
                self.inner.options.max_entries_per_stream,
            );
            self.upload(
                &name,
                jsonl(&kept),
                "application/x-ndjson",
                None,
                Condition::None,
            )
            .await?;
        }
        Ok(())
    }

    /// Replaces the job's per-step counts while it runs.
    pub async fn update_steps(
        &self,
        id: &JobId,
        steps: Vec<StepCounts>,
    ) -> Result<(), BlobHistoryError> {
        self.update_record(id, |record| {
            record.steps = steps.clone();
            Ok(())
        })
        .await
        .map(|_| ())
    }

    /// Queued or Running → the outcome's final status, with `ended_at` now.
    pub async fn finish(&self, id: &JobId, outcome: Outcome) -> Result<(), BlobHistoryError> {
        if !outcome.status.is_final() {
            return Err(HistoryError::NotFinal {
                status: outcome.status,
            }
            .into());
        }
        let at = self.inner.clock.now();
        let ((), record) = self
            .update_record(id, |record| {
                record.finish(at, &outcome).map_err(|from| {
                    BlobHistoryError::from(HistoryError::InvalidTransition {
                        id: id.clone(),
                        from,
                        to: outcome.status,
                    })
                })
            })
            .await?;
        self.write_index(&record).await
    }

    /// Marks the given jobs Interrupted, as decided by the coordination sweep (their replica
    /// died). Each is written with `If-Match` on the version just read, once: a job that ended
    /// or changed meanwhile (its replica is alive after all, or another sweeper won) is left
    /// alone. Returns the jobs this call marked.
    pub async fn mark_interrupted(
        &self,
        ids: &[JobId],
    ) -> Result<Vec<JobSummary>, BlobHistoryError> {
        let at = self.inner.clock.now();
        let cap = self.inner.options.max_entries_per_stream;
        let mut marked = Vec::new();
        for id in ids {
            let Some((mut record, etag)) = self.read_record(id).await? else {
                continue;
            };
            let Some(message) = record.interrupt(at) else {
                continue;
            };
            let plan = record.plan_append(at, &[NewStreamEntry::error(message)], cap);
            if self
                .write_record(&record, Condition::Matches(&etag))
                .await?
                .is_none()
            {
                continue;
            }
            self.write_streams(id, plan).await?;
            self.write_index(&record).await?;
            tracing::warn!(job_id = %id, replica = %record.replica, "marked a job of a stopped replica Interrupted");
            marked.push(record.summary());
        }
        Ok(marked)
    }

    /// The Queued and Running jobs of every replica (from the status index), for the sweep
    /// that decides which of them a dead replica left behind.
    pub async fn unfinished_jobs(&self) -> Result<Vec<ListedJob>, BlobHistoryError> {
        let mut out = Vec::new();
        for status in [JobStatus::Queued, JobStatus::Running] {
            // From the index itself, not its head: the sweep must see every unfinished job
            // even if a replica died between writing an index entry and its head.
            let index = self.layout().index_status(status);
            out.extend(
                self.scan(&index, None, JobFilter::MAX_LIMIT, |job| {
                    job.status == status
                })
                .await?,
            );
        }
        Ok(out)
    }

    /// Deletes finished jobs created more than the retention before `now`, with their
    /// streams, reports and index entries, in passes of at most `prune_batch` jobs; stops
    /// when another replica holds the prune lease. Returns how many jobs it deleted.
    pub async fn prune(&self, now: DateTime<Utc>) -> Result<u64, BlobHistoryError> {
        let mut total = 0;
        loop {
            match self.prune_pass(now).await? {
                PruneOutcome::Pruned { jobs, more } => {
                    total += jobs;
                    if !more {
                        return Ok(total);
                    }
                }
                PruneOutcome::HeldElsewhere => return Ok(total),
            }
        }
    }

    /// One bounded prune pass under the lease on `prune.lock`; see [`PruneOutcome`].
    pub async fn prune_pass(&self, now: DateTime<Utc>) -> Result<PruneOutcome, BlobHistoryError> {
        self.ensure_container().await?;
        let lock = self.layout().prune_lock();
        let lease_id = uuid::Uuid::new_v4().to_string();
        let lease = self.inner.options.prune_lease;
        let acquired_at = Instant::now();
        if !self.acquire_prune_lease(&lock, &lease_id).await? {
            return Ok(PruneOutcome::HeldElsewhere);
        }
        let deadline = acquired_at + lease.saturating_sub(LEASE_MARGIN);
        let result = self.prune_under_lease(now, deadline).await;
        if let Err(f) = self
            .call(self.blob(&lock).release_lease(lease_id, None))
            .await
        {
            let e = f.error("release the lease on", &lock);
            tracing::warn!(error = %e, "could not release the prune lease; it expires by itself");
        }
        result
    }

    async fn acquire_prune_lease(
        &self,
        lock: &str,
        lease_id: &str,
    ) -> Result<bool, BlobHistoryError> {
        let seconds = i32::try_from(self.inner.options.prune_lease.as_secs()).unwrap_or(60);
        let blob = self.blob(lock);
        let acquire = || {
            blob.acquire_lease(
                seconds,
                Some(BlobClientAcquireLeaseOptions {
                    proposed_lease_id: Some(lease_id.to_string()),
                    ..Default::default()
                }),
            )
        };
        for _ in 0..2 {
            match self.call(acquire()).await {
                Ok(_) => return Ok(true),
                Err(f) if f.status() == Some(409) => return Ok(false),
                Err(f) if f.status() == Some(404) => {
                    // First prune in this container: create the lock blob, then lease it.
                    self.upload(
                        lock,
                        Vec::new(),
                        "application/octet-stream",
                        None,
                        Condition::Absent,
                    )
                    .await?;
                }
                Err(f) => return Err(f.error("acquire the lease on", lock)),
            }
        }
        Ok(false)
    }

    async fn prune_under_lease(
        &self,
        now: DateTime<Utc>,
        deadline: Instant,
    ) -> Result<PruneOutcome, BlobHistoryError> {
        let layout = self.layout();
        let cutoff = layout::prune_cutoff(now, self.inner.options.retention);
        let batch = self.inner.options.prune_batch.max(1);
        // Record names sort by id, so the oldest jobs come first and the listing ends at the
        // first job inside the retention. Running jobs stay and are listed again next time.
        let mut candidates = Vec::new();
        let mut more = false;
        self.list(&layout.jobs_prefix(), None, 5000, false, |item| {
            let Some(name) = item.name else { return true };
            match layout::prune_step(layout, &name, cutoff) {
                PruneStep::Candidate(id) if candidates.len() < batch * 4 => {
                    candidates.push(id);
                    true
                }
                PruneStep::Candidate(_) => {
                    more = true;
                    false
                }
                PruneStep::Foreign => true,
                PruneStep::Stop => false,
            }
        })
        .await?;
        let mut deleted = 0u64;
        let mut pruned_runbooks = Vec::new();
        let mut ended_early = false;
        for chunk in candidates.chunks(CONCURRENCY) {
            if deleted as usize >= batch || Instant::now() >= deadline {
                ended_early = true;
                break;
            }
            let results = futures::future::join_all(
                chunk
                    .iter()
                    .cloned()
                    .map(|id| async move { self.prune_job(&id).await }),
            )
            .await;
            for result in results {
                if let Some(runbook) = result? {
                    deleted += 1;
                    pruned_runbooks.push(runbook);
                }
            }
        }
        pruned_runbooks.sort();
        pruned_runbooks.dedup();
        self.refresh_markers(&pruned_runbooks).await?;
        Ok(PruneOutcome::Pruned {
            jobs: deleted,
            more: more || ended_early,
        })
    }

    /// Deletes one job if it is final: its index entries first (so no list shows it once its
    /// record may be gone), then its streams and reports, the record last (so a pass that
    /// stops half way finds it again).
    async fn prune_job(&self, id: &JobId) -> Result<Option<String>, BlobHistoryError> {
        let layout = self.layout();
        let Some((record, _)) = self.read_record(id).await? else {
            return Ok(None);
        };
        if !record.status.is_final() {
            return Ok(None);
        }
        self.delete_all(layout.all_entries(id, &record.runbook, &record.statuses))
            .await?;
        let mut indexes: Vec<String> = layout.row_indexes(&record.runbook).into();
        for status in &record.statuses {
            indexes.extend(layout.status_indexes(&record.runbook, *status));
        }
        self.change_heads(
            indexes
                .into_iter()
                .map(|index| (index, HeadChange::Remove(id.clone())))
                .collect(),
        )
        .await?;
        let mut files = self.list_names(&layout.streams_prefix(id)).await?;
        files.extend(self.list_names(&layout.reports_prefix(id)).await?);
        self.delete_all(files).await?;
        self.delete(&layout.record(id)).await?;
        Ok(Some(record.runbook))
    }

    /// After a pass, brings the latest occurrence in the marker of each runbook that lost jobs
    /// back in line with the jobs left, as the SQLite store answers from the rows it still
    /// has (none when no scheduled job is left). Markers are never deleted, so that a replica's
    /// cache of them ([`Inner::noted`]) stays true. Conditional on the marker's ETag: a job
    /// recorded meanwhile wins.
    async fn refresh_markers(&self, runbooks: &[String]) -> Result<(), BlobHistoryError> {
        for runbook in runbooks {
            let name = self.layout().runbook_marker(runbook);
            let Some((_, etag)) = self.download(&name).await? else {
                continue;
            };
            let prefix = self.layout().index_runbook(runbook);
            let mut rows = Vec::new();
            let mut unread = Vec::new();
            self.list(&prefix, None, 5000, true, |item| {
                let Some(name) = item.name else { return true };
                match item
                    .metadata
                    .and_then(|m| m.values)
                    .and_then(|v| v.get(ROW_METADATA).and_then(|s| decode_row(s)))
                {
                    Some(row) => rows.push(row.job),
                    None => unread.extend(name.strip_prefix(&prefix).and_then(id_from_inverted)),
                }
                true
            })
            .await?;
            for id in unread {
                rows.extend(self.get_listed(&id).await?.map(|listed| listed.job));
            }
            let marker = RunbookMarker {
                runbook: runbook.clone(),
                last_occurrence: rows
                    .iter()
                    .filter(|job| matches!(job.trigger, Trigger::Schedule | Trigger::CatchUp))
                    .filter_map(|job| job.scheduled_for)
                    .max(),
            };
            let metadata = HashMap::from([(ROW_METADATA.to_string(), encode_marker(&marker))]);
            let body = serde_json::to_vec(&marker).unwrap_or_default();
            self.upload(
                &name,
                body,
                "application/json",
                Some(metadata),
                Condition::Matches(&etag),
            )
            .await?;
        }
        Ok(())
    }

    async fn markers(&self) -> Result<Vec<RunbookMarker>, BlobHistoryError> {
        self.ensure_container().await?;
        let mut markers = Vec::new();
        self.list(&self.layout().runbooks_prefix(), None, 5000, true, |item| {
            markers.extend(
                item.metadata
                    .and_then(|m| m.values)
                    .and_then(|v| v.get(ROW_METADATA).and_then(|s| decode_marker(s))),
            );
            true
        })
        .await?;
        Ok(markers)
    }

    /// One job with its parameters, step counts and streams.
    pub async fn get_job(&self, id: &JobId) -> Result<Option<JobDetail>, BlobHistoryError> {
        self.ensure_container().await?;
        let Some((record, _)) = self.read_record(id).await? else {
            return Ok(None);
        };
        let names = self.list_names(&self.layout().streams_prefix(id)).await?;
        let parts = futures::stream::iter(names.into_iter().map(|name| async move {
            match self.download(&name).await? {
                Some((body, _)) => parse_jsonl(&name, &body),
                // Pruned between the list and the read.
                None => Ok(Vec::new()),
            }
        }))
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
        let mut streams: Vec<StreamEntry> = parts.into_iter().flatten().collect();
        streams.sort_by_key(|e| e.seq);
        Ok(Some(JobDetail {
            job: record.summary(),
            params: record.params.clone(),
            steps: record.steps.clone(),
            streams,
            dropped: record.dropped(),
            reports: Vec::new(),
        }))
    }

    /// The replica that recorded a job, with its summary.
    pub async fn get_listed(&self, id: &JobId) -> Result<Option<ListedJob>, BlobHistoryError> {
        self.ensure_container().await?;
        Ok(self.read_record(id).await?.map(|(record, _)| ListedJob {
            job: record.summary(),
            replica: record.replica,
        }))
    }

    /// Jobs matching `filter`, newest first.
    pub async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<JobSummary>, BlobHistoryError> {
        Ok(self
            .list_rows(filter)
            .await?
            .into_iter()
            .map(|row| row.job)
            .collect())
    }

    /// [`Self::list_jobs`] with the replica of each job.
    pub async fn list_rows(&self, filter: &JobFilter) -> Result<Vec<ListedJob>, BlobHistoryError> {
        let limit = filter.limit.clamp(1, JobFilter::MAX_LIMIT);
        let wanted = filter.status;
        let prefix = self.layout().index_for(filter);
        self.first_rows(&prefix, filter.before.as_ref(), limit, |job| {
            wanted.is_none_or(|status| job.status == status)
        })
        .await
    }

    /// [`Self::scan`]'s answer, from the index's head when it holds the page (one blob read),
    /// else from the listing.
    async fn first_rows(
        &self,
        prefix: &str,
        before: Option<&JobId>,
        want: usize,
        accept: impl Fn(&JobSummary) -> bool,
    ) -> Result<Vec<ListedJob>, BlobHistoryError> {
        self.ensure_container().await?;
        if let Some(head) = self.read_head(prefix).await?
            && let Some(candidates) = head.page(before, want)
        {
            let page = candidates.iter().map(|r| (r.id.clone(), r.row.clone()));
            let mut rows: Vec<ListedJob> = self
                .resolve(page.collect())
                .await?
                .into_iter()
                .filter(|row| accept(&row.job))
                .collect();
            if rows.len() >= want || head.complete {
                rows.truncate(want);
                return Ok(rows);
            }
        }
        self.scan(prefix, before, want, accept).await
    }

    /// The jobs of listed rows, in order: a row of a finished job is final and used as given;
    /// a row of a Queued or Running job (or a missing row) is read from its record,
    /// concurrently, and left out when the record is gone (pruned).
    async fn resolve(
        &self,
        page: Vec<(JobId, Option<ListRow>)>,
    ) -> Result<Vec<ListedJob>, BlobHistoryError> {
        let resolved = futures::stream::iter(page.into_iter().map(|(id, row)| async move {
            match row {
                Some(row) if row.job.status.is_final() && row.job.id == id => Ok(Some(ListedJob {
                    replica: row.job.replica.clone().unwrap_or_default(),
                    job: row.job,
                })),
                _ => self.get_listed(&id).await,
            }
        }))
        .buffered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
        Ok(resolved.into_iter().flatten().collect())
    }

    /// Reads the index under `prefix` newest first from just before `before`, and returns the
    /// first `want` rows that `accept` takes. A row of a finished job is final and used as
    /// listed; a row of a Queued or Running job (or one too large for metadata) is checked
    /// against its record, read concurrently for the page only, and dropped when the record is
    /// gone (pruned).
    async fn scan(
        &self,
        prefix: &str,
        before: Option<&JobId>,
        want: usize,
        accept: impl Fn(&JobSummary) -> bool,
    ) -> Result<Vec<ListedJob>, BlobHistoryError> {
        self.ensure_container().await?;
        let start_from = before.map(|id| format!("{prefix}{}", inverted(id)));
        let mut out: Vec<ListedJob> = Vec::new();
        let mut resume = start_from;
        loop {
            // One listed page at a time: resolve it, then list on from its last name.
            let mut page: Vec<(JobId, Option<ListRow>)> = Vec::new();
            let mut last_name = None;
            let room = want - out.len();
            self.list(prefix, resume.clone(), room + 1, true, |item| {
                let Some(name) = item.name else { return true };
                let row = item
                    .metadata
                    .and_then(|m| m.values)
                    .and_then(|v| v.get(ROW_METADATA).and_then(|s| decode_row(s)));
                last_name = Some(name.clone());
                let Some(id) = name.strip_prefix(prefix).and_then(id_from_inverted) else {
                    return true;
                };
                // A service that ignores `startFrom` still gives the right answer, slower.
                if before.is_some_and(|b| id >= *b) {
                    return true;
                }
                page.push((id, row));
                page.len() < room
            })
            .await?;
            let exhausted = page.len() < room;
            out.extend(
                self.resolve(page)
                    .await?
                    .into_iter()
                    .filter(|row| accept(&row.job)),
            );
            match last_name {
                Some(name) if !exhausted && out.len() < want => {
                    // Inclusive start: the next page begins just after the last name seen.
                    resume = Some(format!("{name}0"));
                }
                _ => break,
            }
            if out.len() >= want {
                break;
            }
        }
        out.truncate(want);
        Ok(out)
    }

    /// The most recent job of each runbook, ignoring Skipped occurrences.
    pub async fn last_status_per_runbook(
        &self,
    ) -> Result<BTreeMap<String, JobSummary>, BlobHistoryError> {
        let markers = self.markers().await?;
        let found = futures::stream::iter(markers.into_iter().map(|marker| async move {
            let prefix = self.layout().index_runbook(&marker.runbook);
            let rows = self
                .first_rows(&prefix, None, 1, |job| job.status != JobStatus::Skipped)
                .await?;
            Ok::<_, BlobHistoryError>(rows.into_iter().next().map(|row| (marker.runbook, row.job)))
        }))
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
        Ok(found.into_iter().flatten().collect())
    }

    /// The latest scheduled occurrence recorded for each runbook (fired, queued or skipped).
    pub async fn last_occurrence_per_runbook(
        &self,
    ) -> Result<BTreeMap<String, DateTime<Utc>>, BlobHistoryError> {
        Ok(self
            .markers()
            .await?
            .into_iter()
            .filter_map(|m| m.last_occurrence.map(|at| (m.runbook, at)))
            .collect())
    }

    /// Stores a report file of a job as `reports/{id}/{name}` (replacing one of that name).
    pub async fn put_report(
        &self,
        id: &JobId,
        name: &str,
        content: Vec<u8>,
    ) -> Result<(), BlobHistoryError> {
        if !layout::valid_report_name(name) {
            return Err(BlobHistoryError::InvalidReportName {
                name: name.chars().take(layout::MAX_REPORT_NAME).collect(),
            });
        }
        let max = self.inner.options.max_report_bytes;
        if content.len() as u64 > max {
            return Err(BlobHistoryError::ReportTooLarge {
                name: name.to_string(),
                size: content.len() as u64,
                max,
            });
        }
        self.ensure_container().await?;
        if self.read_record(id).await?.is_none() {
            return Err(HistoryError::UnknownJob { id: id.clone() }.into());
        }
        self.upload(
            &self.layout().report(id, name),
            content,
            "application/octet-stream",
            None,
            Condition::None,
        )
        .await
        .map(|_| ())
    }

    /// A report file of a job; `None` when there is none of that name.
    pub async fn get_report(
        &self,
        id: &JobId,
        name: &str,
    ) -> Result<Option<Vec<u8>>, BlobHistoryError> {
        if !layout::valid_report_name(name) {
            return Ok(None);
        }
        self.ensure_container().await?;
        Ok(self
            .download(&self.layout().report(id, name))
            .await?
            .map(|(body, _)| body))
    }

    /// A report file of a job as a stream of its bytes, with its length; `None` when there is
    /// none of that name. The body is streamed from the service, never held whole.
    pub async fn open_report(
        &self,
        id: &JobId,
        name: &str,
    ) -> Result<Option<crate::history::ReportBody>, BlobHistoryError> {
        if !layout::valid_report_name(name) {
            return Ok(None);
        }
        self.ensure_container().await?;
        let blob_name = self.layout().report(id, name);
        let blob = self.blob(&blob_name);
        match self.call(blob.download(None)).await {
            Ok(response) => {
                let bytes = response.properties.content_length.unwrap_or(0);
                let stream = response.body.map(|chunk| {
                    chunk.map_err(|e| std::io::Error::other(redact_text(&e.to_string())))
                });
                Ok(Some(crate::history::ReportBody {
                    bytes,
                    stream: Box::pin(stream),
                }))
            }
            Err(f) if f.status() == Some(404) => Ok(None),
            Err(f) => Err(f.error("read", &blob_name)),
        }
    }

    /// The report files of a job, by name.
    pub async fn list_reports(&self, id: &JobId) -> Result<Vec<ReportInfo>, BlobHistoryError> {
        self.ensure_container().await?;
        let prefix = self.layout().reports_prefix(id);
        let mut out = Vec::new();
        self.list(&prefix, None, 5000, false, |item| {
            if let Some(name) = item.name.as_deref().and_then(|n| n.strip_prefix(&prefix)) {
                out.push(ReportInfo {
                    name: name.to_string(),
                    size: item.properties.and_then(|p| p.content_length).unwrap_or(0),
                });
            }
            true
        })
        .await?;
        Ok(out)
    }
}

/// The record of a job given whole (import, upload of a spooled job).
/// Before another round of a conditional read-change-write that lost a race: spreads racing
/// replicas out so that one of them wins the next round. No wait before the first.
async fn back_off(attempt: u32) {
    if attempt > 0 {
        let jitter = rand::random_range(5..25u64) * u64::from(attempt);
        tokio::time::sleep(Duration::from_millis(jitter)).await;
    }
}

fn record_of(detail: &JobDetail, replica: &str) -> JobRecord {
    let job = &detail.job;
    let new = NewJob {
        runbook: job.runbook.clone(),
        file_hash: job.file_hash.clone(),
        trigger: job.trigger,
        scheduled_for: job.scheduled_for,
        dry_run: job.dry_run,
        params: detail.params.clone(),
    };
    let mut record = JobRecord::new(
        job.id.clone(),
        new,
        job.created_at,
        job.status,
        job.error.clone(),
        replica,
    );
    record.started_at = job.started_at;
    record.ended_at = job.ended_at;
    record.summary = job.summary.clone();
    record.steps = detail.steps.clone();
    record.streams.last_seq = detail.streams.iter().map(|e| e.seq).max().unwrap_or(0);
    for entry in &detail.streams {
        *record.streams.kept.entry(entry.kind).or_insert(0) += 1;
    }
    record.streams.dropped = detail.dropped.clone();
    record
}

fn jsonl(entries: &[StreamEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in entries {
        // Entries are plain structs and JSON values: serialising cannot fail.
        if let Ok(line) = serde_json::to_vec(entry) {
            out.extend(line);
            out.push(b'\n');
        }
    }
    out
}

fn parse_jsonl(name: &str, body: &[u8]) -> Result<Vec<StreamEntry>, BlobHistoryError> {
    body.split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| {
            serde_json::from_slice(line).map_err(|e| BlobHistoryError::Corrupt {
                blob: name.to_string(),
                detail: e.to_string(),
            })
        })
        .collect()
}
