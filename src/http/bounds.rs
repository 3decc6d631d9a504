//! Caps on what one response shows, so that neither a folder with thousands of files nor a
//! job with a huge stream makes a response (or a dashboard page) grow without limit. What is
//! left out is counted ("and N more"), never silently dropped.

use serde::Serialize;

use crate::history::JobDetail;

use super::{FileErrorView, RunbooksView};

/// Runbooks listed by `/api/runbooks` and the dashboard.
pub(crate) const MAX_LISTED_RUNBOOKS: usize = 500;
/// Invalid files listed next to them.
pub(crate) const MAX_LISTED_INVALID_FILES: usize = 200;
/// Characters of one file's error message (every problem of the file, joined).
pub(crate) const MAX_ERROR_MESSAGE_CHARS: usize = 4000;
/// Stream entries shown for one job (the history keeps at most
/// `history.max_entries_per_stream` of each kind).
pub(crate) const MAX_SHOWN_STREAM_ENTRIES: usize = 5000;

/// A catalog view cut to the caps, with how much of each list was left out.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BoundedRunbooks {
    pub view: RunbooksView,
    pub more_runbooks: usize,
    pub more_invalid_files: usize,
}

/// Cuts `view` to [`MAX_LISTED_RUNBOOKS`] runbooks and [`MAX_LISTED_INVALID_FILES`] invalid
/// files, and every error message to [`MAX_ERROR_MESSAGE_CHARS`].
pub(crate) fn bound_runbooks(mut view: RunbooksView) -> BoundedRunbooks {
    let more_runbooks = view.runbooks.len().saturating_sub(MAX_LISTED_RUNBOOKS);
    view.runbooks.truncate(MAX_LISTED_RUNBOOKS);
    let more_invalid_files = view
        .invalid_files
        .len()
        .saturating_sub(MAX_LISTED_INVALID_FILES);
    view.invalid_files.truncate(MAX_LISTED_INVALID_FILES);
    for error in view
        .runbooks
        .iter_mut()
        .filter_map(|r| r.validation_error.as_mut())
        .chain(view.invalid_files.iter_mut())
    {
        bound_file_error(error);
    }
    BoundedRunbooks {
        view,
        more_runbooks,
        more_invalid_files,
    }
}

/// Cuts the message of `error` to [`MAX_ERROR_MESSAGE_CHARS`], saying how much is left out.
pub(crate) fn bound_file_error(error: &mut FileErrorView) {
    let total = error.message.chars().count();
    if total <= MAX_ERROR_MESSAGE_CHARS {
        return;
    }
    let cut = error
        .message
        .char_indices()
        .nth(MAX_ERROR_MESSAGE_CHARS)
        .map_or(error.message.len(), |(i, _)| i);
    error.message.truncate(cut);
    error.message.push_str(&format!(
        " … and {} more characters (run `runbook-worker validate` for every problem)",
        total - MAX_ERROR_MESSAGE_CHARS
    ));
}

/// A job as the API and the dashboard show it: the history's record with its streams cut
/// to their first [`MAX_SHOWN_STREAM_ENTRIES`] entries, and how many were left out.
#[derive(Debug, Serialize)]
pub(crate) struct ShownJob {
    #[serde(flatten)]
    pub job: JobDetail,
    /// Stream entries left out (0 when none).
    pub streams_more: usize,
}

impl ShownJob {
    /// Queued or Running: the job may still change.
    pub(crate) fn is_active(&self) -> bool {
        matches!(
            self.job.job.status,
            crate::history::JobStatus::Queued | crate::history::JobStatus::Running
        )
    }
}

pub(crate) fn bound_job(mut job: JobDetail) -> ShownJob {
    let streams_more = job.streams.len().saturating_sub(MAX_SHOWN_STREAM_ENTRIES);
    job.streams.truncate(MAX_SHOWN_STREAM_ENTRIES);
    ShownJob { job, streams_more }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::RunbookView;

    fn file_error(message: String) -> FileErrorView {
        FileErrorView {
            file: "a.toml".into(),
            line: Some(1),
            message,
        }
    }

    #[test]
    fn long_lists_are_cut_and_counted() {
        let view = RunbooksView {
            runbooks: (0..MAX_LISTED_RUNBOOKS + 7)
                .map(|i| RunbookView {
                    name: format!("rb-{i}"),
                    validation_error: (i == 0).then(|| file_error("é".repeat(10_000))),
                    ..RunbookView::default()
                })
                .collect(),
            invalid_files: (0..MAX_LISTED_INVALID_FILES + 3)
                .map(|i| file_error(format!("problem {i}")))
                .collect(),
        };
        let bounded = bound_runbooks(view);
        assert_eq!(bounded.view.runbooks.len(), MAX_LISTED_RUNBOOKS);
        assert_eq!(bounded.more_runbooks, 7);
        assert_eq!(bounded.view.invalid_files.len(), MAX_LISTED_INVALID_FILES);
        assert_eq!(bounded.more_invalid_files, 3);
        let message = &bounded.view.runbooks[0]
            .validation_error
            .as_ref()
            .unwrap()
            .message;
        assert!(message.starts_with(&"é".repeat(MAX_ERROR_MESSAGE_CHARS)));
        assert!(
            message.ends_with(&format!(
                "and {} more characters (run `runbook-worker validate` for every problem)",
                10_000 - MAX_ERROR_MESSAGE_CHARS
            )),
            "{}",
            &message[message.len() - 100..]
        );

        let small = RunbooksView {
            runbooks: vec![RunbookView::default()],
            invalid_files: vec![file_error("short".into())],
        };
        let bounded = bound_runbooks(small.clone());
        assert_eq!(
            bounded,
            BoundedRunbooks {
                view: small,
                more_runbooks: 0,
                more_invalid_files: 0
            }
        );
    }

    #[test]
    fn long_streams_are_cut_and_counted() {
        let shown = bound_job(crate::http::fixtures::job_with_streams(
            MAX_SHOWN_STREAM_ENTRIES + 11,
        ));
        assert_eq!(shown.job.streams.len(), MAX_SHOWN_STREAM_ENTRIES);
        assert_eq!(shown.job.streams[0].seq, 1);
        assert_eq!(shown.streams_more, 11);
        let json = serde_json::to_value(&shown).unwrap();
        assert_eq!(json["streams_more"], 11);
        assert_eq!(
            json["runbook"], "a",
            "the record's own fields stay at the top"
        );

        let short = bound_job(crate::http::fixtures::job_with_streams(1));
        assert_eq!(short.job.streams.len(), 1);
        assert_eq!(short.streams_more, 0);
    }
}
