//! The job history in Azure Blob Storage, shared by every replica: the same operations, types
//! and semantics as the SQLite store ([`crate::history::HistoryStore`]), so that what the
//! jobs did survives the container and every replica's API shows every job.
//!
//! Knows nothing of Exchange, runbook files, HTTP or of which replica is alive: the
//! coordination sweep decides which jobs a dead replica left Running and calls
//! [`BlobHistoryStore::mark_interrupted`]. Must not log or return a SAS (errors carry
//! redacted text only, see [`crate::coordination::redact`]).
//!
//! # Blob layout
//!
//! Everything lives under one prefix (`history/` by default) in the container, next to the
//! coordination blobs. `{id}` is the job's ULID; `{inv}` is its digit-by-digit complement
//! ([`layout::inverted`]), so that names listed in lexicographic order (the only order Blob
//! Storage lists in) come newest first; `{runbook}` is the runbook name as a blob segment
//! ([`crate::coordination::record::name_segment`]).
//!
//! | Blob | Holds |
//! |---|---|
//! | `history/jobs/{id}.json` | the job record ([`record::JobRecord`]): runbook, file hash, trigger, status, times, parameters, per-step counts, summary, error, the replica that ran it, the statuses it went through, the stream counters (kept, dropped, last seq). Small (a few KiB). |
//! | `history/streams/{id}/{seq:010}.jsonl` | the output, warning, error and plan entries one append kept, one JSON [`crate::history::StreamEntry`] per line, named by the seq of its first entry |
//! | `history/streams/{id}/progress.jsonl` | the most recent progress entries (rewritten whole; at most `max_entries_per_stream`) |
//! | `history/reports/{id}/{name}` | a report file of the job, as uploaded |
//! | `history/index/all/{inv}` | empty; metadata `row` = base64url JSON of the list row ([`layout::ListRow`]: the [`crate::history::JobSummary`] plus the replica) |
//! | `history/index/runbook/{runbook}/{inv}` | the same, per runbook |
//! | `history/index/status/{status}/{inv}` | the same, per status the job has been in; entries of Queued and Running are deleted when it leaves them |
//! | `history/index/runbook-status/{runbook}/{status}/{inv}` | the same, per runbook and status |
//! | `history/heads/{index}.json` | the head of one index (`all`, `runbook/{runbook}`, `status/{status}`, `runbook-status/{runbook}/{status}`): its newest `head_rows` (120) list rows, newest first, and whether they are the whole index ([`head::Head`]) |
//! | `history/runbooks/{runbook}` | one per runbook ever recorded (never deleted): its latest scheduled occurrence among the jobs kept (body and metadata), for `last_occurrence_per_runbook` and the list of runbooks |
//! | `history/prune.lock` | empty; its lease makes one replica the pruner of a pass |
//!
//! Blob index tags were not used for the indexes: Azurite 3.37 does implement Find Blobs by
//! Tags (by filtering every blob of the container in memory), but a tag query has no
//! newest-first order and no cheap "page after this id", while name-ordered index blobs give
//! both with one list call.
//!
//! # Why listing is fast
//!
//! The first pages come from the index's head: one read of a named blob, whose cost does not
//! grow with the container (a List Blobs call does on Azurite, which filters every blob of
//! the account in memory per list: 254 ms p50 for the newest page at 20,000 jobs before
//! heads). Every index write updates the heads after the index entries, with `If-Match`;
//! the changes of concurrent jobs of one replica are coalesced into one write per head. A
//! head that is missing, unreadable or has lost most of its rows is seeded again from its
//! index by the next write; a page the head cannot answer (older than its rows) is listed as
//! below. The interrupt sweep lists the index itself, never a head.
//!
//! A page of [`crate::history::JobFilter`] is one List Blobs call on the narrowest index the
//! filter names (`maxresults` = limit + 1, `include=metadata`), newest first because of the
//! inverted keys; `before` (the last id of the previous page) becomes `startFrom` (service
//! version 2026-02-06, which `azure_storage_blob` 1.1 speaks and Azurite 3.37 implements), so
//! a later page costs the same as the first. Rows come from the metadata: no record is
//! downloaded for a finished job. Only rows of Queued or Running jobs (and rows too long for
//! metadata) are checked against their record, concurrently, for that page only. Nothing
//! reads every job record; `last_status_per_runbook` lists `runbooks/` once and then the top
//! of each runbook's index.
//!
//! # Consistency rules
//!
//! - One job is written by the replica that runs it, and by an interrupt sweep; every record
//!   write is conditional (`If-None-Match: *` to create, `If-Match` on the ETag just read to
//!   change), re-read and retried a bounded number of times on a conflict, and a transition
//!   that is no longer allowed (the sweep made the job Interrupted) fails with
//!   [`HistoryError::InvalidTransition`] (in [`BlobHistoryError::Job`]), as in SQLite. [`BlobHistoryStore::mark_interrupted`]
//!   writes once with `If-Match` and leaves a job that changed meanwhile alone.
//! - The record is written first, its index entries after. A list row of a finished job is
//!   final (it can no longer change); a row that says Queued or Running may be stale and is
//!   confirmed from the record. An index entry whose record is gone is skipped.
//! - An append writes the record first, which reserves the seqs of the kept entries, then the
//!   chunk: two writers never write one chunk name, and a crash in between loses at most that
//!   batch, never corrupts the counts.
//! - Pruning deletes a job's index entries first, its streams and reports next, its record
//!   last, so a pass that stops half way (the lease ran short, the replica died) finds the job
//!   again through `jobs/` and finishes; every delete tolerates a blob already gone. The lease
//!   avoids duplicate work, it is not needed for correctness.
//!
//! # Backups
//!
//! The history is plain blobs: copy the prefix with
//! `az storage copy -s https://<acct>.blob.core.windows.net/<container>/history -d <backup-container-url> --recursive`
//! (or azcopy), keep a replica in another account or region with object replication, and
//! turn on blob soft delete (and versioning) on the account so that a mistaken delete can be
//! undone within the soft-delete period. Restoring is copying the blobs back; the index is
//! part of the copy.

mod head;
mod layout;
mod record;
mod store;

use std::time::Duration;

use serde::Serialize;

use crate::coordination::StorageTarget;
use crate::history::{HistoryError, HistorySettings, JobSummary};

pub use layout::{id_from_inverted, inverted, valid_report_name};
pub use store::BlobHistoryStore;

/// How the store behaves; [`BlobHistoryOptions::new`] for production.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobHistoryOptions {
    /// The prefix of every blob name (`history/`).
    pub prefix: String,
    /// Recorded as the replica of the jobs this store creates.
    pub replica: String,
    /// `history.retention`.
    pub retention: Duration,
    /// `history.max_entries_per_stream`.
    pub max_entries_per_stream: usize,
    /// Bound on one storage call, SDK retries included (`coordination.request_timeout`).
    pub request_timeout: Duration,
    /// `coordination.max_retries`.
    pub max_retries: u32,
    /// The lease of a prune pass (15–60 s, the service's limits); a pass stops 5 s before.
    pub prune_lease: Duration,
    /// Jobs deleted by one prune pass at most.
    pub prune_batch: usize,
    /// The largest report file accepted.
    pub max_report_bytes: u64,
    /// Rows an index head keeps ([`head::Head`]): pages within them are one blob read.
    pub head_rows: usize,
}

impl BlobHistoryOptions {
    pub const DEFAULT_PREFIX: &'static str = "history/";

    pub fn new(
        settings: &HistorySettings,
        request_timeout: Duration,
        max_retries: u32,
        replica: &str,
    ) -> BlobHistoryOptions {
        BlobHistoryOptions {
            prefix: Self::DEFAULT_PREFIX.to_string(),
            replica: replica.to_string(),
            retention: settings.retention.get(),
            max_entries_per_stream: settings.max_entries_per_stream,
            request_timeout,
            max_retries,
            prune_lease: Duration::from_secs(60),
            prune_batch: 500,
            max_report_bytes: 64 * 1024 * 1024,
            // Two default pages (50) and some: a head is at most ~150 KiB of JSON.
            head_rows: 120,
        }
    }
}

/// Whether `name` is a valid blob container name (3–63 of `a-z`, `0-9`, `-`; no leading,
/// trailing or doubled hyphen).
pub fn valid_container_name(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

/// `target` pointed at another container of the same account: the last segment of the
/// container URL's path replaced (`https://acct.blob.core.windows.net/<container>`, or
/// Azurite's `http://127.0.0.1:10000/devstoreaccount1/<container>`), the SAS query kept (it
/// must then be an account SAS, or one for that container).
pub fn in_container(target: StorageTarget, container: &str) -> StorageTarget {
    fn replace_last(url: &str, container: &str) -> String {
        let (base, query) = match url.split_once('?') {
            Some((base, query)) => (base, Some(query)),
            None => (url, None),
        };
        let base = base.trim_end_matches('/');
        let parent = match base.rsplit_once('/') {
            // Not "https:" of a URL without a path.
            Some((parent, _)) if !parent.ends_with('/') => parent,
            _ => base,
        };
        match query {
            Some(query) => format!("{parent}/{container}?{query}"),
            None => format!("{parent}/{container}"),
        }
    }
    match target {
        StorageTarget::SasUrl(url) => StorageTarget::SasUrl(secrecy::SecretString::from(
            replace_last(secrecy::ExposeSecret::expose_secret(&url), container),
        )),
        StorageTarget::Token {
            container_url,
            credential,
        } => StorageTarget::Token {
            container_url: {
                let mut url = container_url;
                if let Ok(mut segments) = url.path_segments_mut() {
                    segments.pop_if_empty().pop().push(container);
                }
                url
            },
            credential,
        },
    }
}

/// A job in a list, with the replica that recorded it (also in `job.replica`).
#[derive(Clone, Debug, PartialEq)]
pub struct ListedJob {
    pub job: JobSummary,
    pub replica: String,
}

/// A report file of a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReportInfo {
    pub name: String,
    pub size: u64,
}

/// What one prune pass did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PruneOutcome {
    /// This replica held the lease and deleted `jobs` jobs; `more` when it stopped at its
    /// bound with jobs still due.
    Pruned { jobs: u64, more: bool },
    /// Another replica holds the prune lease; this one skips the pass.
    HeldElsewhere,
}

/// A failure of the shared job history. Storage errors are redacted text, never the SDK
/// error itself (its messages contain request URLs, and with a SAS those are secrets).
#[derive(Debug, thiserror::Error)]
pub enum BlobHistoryError {
    #[error(
        "the job history storage is unreachable ({operation} {blob}): {detail}; check coordination.container_url or sas_url and the network"
    )]
    Unreachable {
        operation: &'static str,
        blob: String,
        detail: String,
    },
    #[error(
        "the job history storage refused to {operation} {blob}: HTTP {status} {code} (request id {request_id}); give the worker's identity the role Storage Blob Data Contributor on the container, or use a SAS with read, write, delete, list and create permissions that has not expired"
    )]
    Forbidden {
        operation: &'static str,
        blob: String,
        status: u16,
        code: String,
        request_id: String,
    },
    #[error(
        "the job history storage refused to {operation} {blob}: HTTP {status} {code} (request id {request_id})"
    )]
    Refused {
        operation: &'static str,
        blob: String,
        status: u16,
        code: String,
        request_id: String,
    },
    #[error("{blob} kept changing under concurrent writers; try again")]
    Conflict { blob: String },
    /// Another write of this replica took this change into its write of an index head and
    /// failed; `detail` is its error.
    #[error("the index head {blob} was not written: {detail}")]
    HeadNotWritten { blob: String, detail: String },
    #[error(
        "{blob} does not hold a valid job history blob ({detail}); restore it from a backup or delete it"
    )]
    Corrupt { blob: String, detail: String },
    #[error(
        "{blob} was written by a newer runbook-worker (record schema {found}, this build knows {known}); upgrade every replica"
    )]
    NewerSchema {
        blob: String,
        found: u32,
        known: u32,
    },
    /// The refusals the SQLite store gives too (unknown job, a transition that is no longer
    /// allowed, a status that is not final), so callers branch on one type for both stores.
    #[error(transparent)]
    Job(#[from] HistoryError),
    #[error(
        "{name:?} is not a report name: use 1 to 128 letters, digits, '-', '_' and '.', not starting with '.'"
    )]
    InvalidReportName { name: String },
    #[error("report {name} has {size} bytes, more than the {max} a report may have")]
    ReportTooLarge { name: String, size: u64, max: u64 },
    #[error("invalid setting `{key}`: {message}")]
    Settings { key: String, message: String },
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret as _;

    #[test]
    fn another_container_of_the_same_account_keeps_the_sas() {
        let sas = StorageTarget::SasUrl(secrecy::SecretString::from(
            "http://127.0.0.1:10000/devstoreaccount1/coord?sv=1&sig=x".to_string(),
        ));
        match in_container(sas, "history") {
            StorageTarget::SasUrl(url) => assert_eq!(
                url.expose_secret(),
                "http://127.0.0.1:10000/devstoreaccount1/history?sv=1&sig=x"
            ),
            other => panic!("{other:?}"),
        }
        for good in ["abc", "job-history", "a1b"] {
            assert!(valid_container_name(good), "{good}");
        }
        for bad in ["ab", "Jobs", "-ab", "ab-", "a--b", "a_b"] {
            assert!(!valid_container_name(bad), "{bad}");
        }
    }
}
