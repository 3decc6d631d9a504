//! The head of an index: one small blob per index that holds its newest rows, so that the
//! first page of a list (the newest jobs, one runbook's, the failed ones) is one blob read
//! instead of a List Blobs call. Pure: what a head holds after a change, and whether it can
//! answer a page. The store reads and writes it (with `If-Match`), see
//! [`super::BlobHistoryStore`].
//!
//! Why a head and not only the listing: a List Blobs call costs the service (and Azurite,
//! which filters every blob of the account in memory on each list) more as the container
//! grows, while a read of one named blob does not. The index blobs stay the truth: a head is
//! seeded from its index when it is missing or runs short, and a page it cannot answer is
//! listed as before.

use serde::{Deserialize, Serialize};

use super::layout::ListRow;
use crate::history::JobId;

/// The head format this build writes; a head of a newer schema is not used (the listing
/// answers) and is not overwritten.
pub const HEAD_SCHEMA: u32 = 1;

/// The newest entries of one index, newest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Head {
    pub schema: u32,
    /// True when `rows` are every entry of the index; false when older entries may exist
    /// beyond the last row (the head was cut to its size, or seeded from a long index).
    pub complete: bool,
    /// Newest first, one per job. The rows are a contiguous newest part of the index: no
    /// entry of the index is newer than the last row without being in the head.
    pub rows: Vec<HeadRow>,
}

/// One job of a head: its list row, or only its id when the row is too large to keep here
/// (the reader then reads the record, as it does for an index entry without metadata).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeadRow {
    pub id: JobId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row: Option<ListRow>,
}

/// A change to one head, made when the index it stands for changes.
#[derive(Clone, Debug, PartialEq)]
pub enum HeadChange {
    /// The job's entry was written (created, or its row changed).
    Upsert(Box<HeadRow>),
    /// The job's entry was deleted (it left a Queued or Running status, or was pruned).
    Remove(JobId),
}

impl Head {
    /// A head seeded from the first rows of its index, listed newest first; `complete` when
    /// the listing ended before `cap` rows.
    pub fn seeded(rows: Vec<HeadRow>, cap: usize) -> Head {
        let complete = rows.len() < cap;
        // Complete while it is filled (every row is taken), then as the listing says.
        let mut head = Head {
            schema: HEAD_SCHEMA,
            complete: true,
            rows: Vec::new(),
        };
        // Through `apply`: sorted, one per job, cut to the cap.
        let changes: Vec<HeadChange> = rows
            .into_iter()
            .map(|row| HeadChange::Upsert(Box::new(row)))
            .collect();
        head.apply(&changes, cap);
        head.complete &= complete;
        head
    }

    /// Whether the head has run so short that a seed from the index should refill it: an
    /// incomplete head that lost most of its rows (jobs left Running, or were pruned) answers
    /// few pages.
    pub fn needs_seed(&self, cap: usize) -> bool {
        !self.complete && self.rows.len() < cap / 2
    }

    /// Applies `changes` in order and keeps at most `cap` rows. An upsert older than the last
    /// row of an incomplete head is left out (the index holds it; the head holds only a
    /// contiguous newest part). A final row is never replaced by a row that is not final:
    /// index writes of one job may arrive out of order, and a final status does not change.
    pub fn apply(&mut self, changes: &[HeadChange], cap: usize) {
        for change in changes {
            match change {
                HeadChange::Remove(id) => self.rows.retain(|r| &r.id != id),
                HeadChange::Upsert(new) => {
                    match self.rows.binary_search_by(|r| new.id.cmp(&r.id)) {
                        Ok(at) => {
                            let kept_is_final = self.rows[at]
                                .row
                                .as_ref()
                                .is_some_and(|r| r.job.status.is_final());
                            let new_is_final =
                                new.row.as_ref().is_some_and(|r| r.job.status.is_final());
                            if !kept_is_final || new_is_final || new.row.is_none() {
                                self.rows[at] = (**new).clone();
                            }
                        }
                        Err(at) => {
                            if at == self.rows.len() && !self.complete {
                                continue;
                            }
                            self.rows.insert(at, (**new).clone());
                        }
                    }
                }
            }
        }
        if self.rows.len() > cap {
            self.rows.truncate(cap);
            self.complete = false;
        }
    }

    /// The rows a page that starts after `before` can take, newest first, when the head can
    /// answer it: every row after `before` when the head is complete, or when it has at least
    /// `want` of them (the caller falls back to the listing if fewer than `want` are left once
    /// it has dropped rows). `None`: list the index instead.
    pub fn page(&self, before: Option<&JobId>, want: usize) -> Option<&[HeadRow]> {
        let start = match before {
            Some(before) => self.rows.partition_point(|r| &r.id >= before),
            None => 0,
        };
        // A `before` older than the whole head of an incomplete head: the head knows nothing
        // about that part of the index.
        let rows = &self.rows[start..];
        (self.complete || rows.len() >= want).then_some(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::id::IdGenerator;
    use crate::history::{JobStatus, JobSummary, Trigger};
    use chrono::{DateTime, TimeZone, Utc};

    fn at(minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, 6, minute, 0).unwrap()
    }

    fn ids(n: u32) -> Vec<JobId> {
        let generator = IdGenerator::default();
        (0..n).map(|m| generator.next(at(m))).collect()
    }

    fn row(id: &JobId, status: JobStatus) -> HeadRow {
        HeadRow {
            id: id.clone(),
            row: Some(ListRow {
                job: JobSummary {
                    id: id.clone(),
                    runbook: "r".into(),
                    file_hash: "sha256:x".into(),
                    trigger: Trigger::Schedule,
                    status,
                    dry_run: false,
                    past_due: false,
                    scheduled_for: None,
                    created_at: at(0),
                    started_at: None,
                    ended_at: None,
                    duration_ms: None,
                    summary: None,
                    error: None,
                    replica: Some("a".into()),
                },
            }),
        }
    }

    fn kept(head: &Head) -> Vec<JobId> {
        head.rows.iter().map(|r| r.id.clone()).collect()
    }

    #[test]
    fn rows_stay_newest_first_one_per_job_and_are_cut_to_the_cap() {
        let ids = ids(6);
        let mut head = Head::seeded(Vec::new(), 4);
        assert!(head.complete);
        // Out of order, one twice.
        for i in [2, 0, 5, 1, 2] {
            head.apply(
                &[HeadChange::Upsert(Box::new(row(
                    &ids[i],
                    JobStatus::Queued,
                )))],
                4,
            );
        }
        assert_eq!(
            kept(&head),
            vec![
                ids[5].clone(),
                ids[2].clone(),
                ids[1].clone(),
                ids[0].clone()
            ]
        );
        assert!(head.complete);
        head.apply(
            &[HeadChange::Upsert(Box::new(row(
                &ids[3],
                JobStatus::Queued,
            )))],
            4,
        );
        assert_eq!(
            kept(&head),
            vec![
                ids[5].clone(),
                ids[3].clone(),
                ids[2].clone(),
                ids[1].clone()
            ]
        );
        assert!(!head.complete, "a cut head no longer holds every entry");
    }

    #[test]
    fn an_incomplete_head_takes_no_row_older_than_its_last() {
        let ids = ids(6);
        let mut head = Head::seeded(
            vec![
                row(&ids[5], JobStatus::Completed),
                row(&ids[3], JobStatus::Completed),
            ],
            2,
        );
        assert!(
            !head.complete,
            "a seed that filled the cap may have more behind it"
        );
        head.apply(&[HeadChange::Remove(ids[5].clone())], 2);
        head.apply(
            &[HeadChange::Upsert(Box::new(row(
                &ids[1],
                JobStatus::Failed,
            )))],
            2,
        );
        assert_eq!(
            kept(&head),
            vec![ids[3].clone()],
            "ids[2] may sit between 3 and 1"
        );
        head.apply(
            &[HeadChange::Upsert(Box::new(row(
                &ids[4],
                JobStatus::Failed,
            )))],
            2,
        );
        assert_eq!(kept(&head), vec![ids[4].clone(), ids[3].clone()]);
    }

    #[test]
    fn a_final_row_is_not_replaced_by_an_earlier_state() {
        let ids = ids(1);
        let mut head = Head::seeded(Vec::new(), 4);
        head.apply(
            &[HeadChange::Upsert(Box::new(row(
                &ids[0],
                JobStatus::Completed,
            )))],
            4,
        );
        head.apply(
            &[HeadChange::Upsert(Box::new(row(
                &ids[0],
                JobStatus::Running,
            )))],
            4,
        );
        let status = head.rows[0].row.as_ref().map(|r| r.job.status);
        assert_eq!(status, Some(JobStatus::Completed));
        head.apply(
            &[HeadChange::Upsert(Box::new(row(
                &ids[0],
                JobStatus::Interrupted,
            )))],
            4,
        );
        let status = head.rows[0].row.as_ref().map(|r| r.job.status);
        assert_eq!(status, Some(JobStatus::Interrupted));
    }

    #[test]
    fn pages_are_answered_only_when_the_head_holds_them() {
        let ids = ids(10);
        let newest_first: Vec<HeadRow> = ids
            .iter()
            .rev()
            .take(6)
            .map(|id| row(id, JobStatus::Completed))
            .collect();
        let head = Head::seeded(newest_first, 6);
        assert!(!head.complete);
        let page = head.page(None, 4).expect("the newest 4 are in the head");
        assert_eq!(page.first().map(|r| &r.id), Some(&ids[9]));
        let after = head.page(Some(&ids[7]), 3).expect("3 rows after ids[7]");
        assert_eq!(
            after.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
            ids[4..7].iter().rev().cloned().collect::<Vec<_>>()
        );
        assert!(
            head.page(Some(&ids[6]), 3).is_none(),
            "only 2 known rows after ids[6]"
        );
        assert!(head.page(Some(&ids[0]), 1).is_none(), "older than the head");
        let complete = Head::seeded(vec![row(&ids[2], JobStatus::Failed)], 6);
        assert_eq!(complete.page(None, 50).map(<[HeadRow]>::len), Some(1));
        assert_eq!(
            complete.page(Some(&ids[2]), 50).map(<[HeadRow]>::len),
            Some(0)
        );
    }

    #[test]
    fn a_head_that_lost_most_rows_asks_for_a_seed() {
        let ids = ids(4);
        let mut head = Head::seeded(
            ids.iter()
                .rev()
                .map(|id| row(id, JobStatus::Running))
                .collect(),
            4,
        );
        assert!(!head.needs_seed(4));
        for id in &ids[1..] {
            head.apply(&[HeadChange::Remove(id.clone())], 4);
        }
        assert!(head.needs_seed(4));
        let complete = Head::seeded(Vec::new(), 4);
        assert!(
            !complete.needs_seed(4),
            "an empty complete head is the truth"
        );
    }
}
