//! Caps on what one response shows, so that neither a folder with thousands of files nor a
//! job with a huge stream makes a response (or a dashboard page) grow without limit. What is
//! left out is counted ("and N more"), never silently dropped.

use serde_json::Value;

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

/// Cuts a job's `streams` to their first [`MAX_SHOWN_STREAM_ENTRIES`] entries and sets
/// `streams_more` to how many were left out (0 when none).
pub(crate) fn bound_job(job: &mut Value) {
    let Some(object) = job.as_object_mut() else {
        return;
    };
    let more = match object.get_mut("streams").and_then(Value::as_array_mut) {
        Some(streams) => {
            let more = streams.len().saturating_sub(MAX_SHOWN_STREAM_ENTRIES);
            streams.truncate(MAX_SHOWN_STREAM_ENTRIES);
            more
        }
        None => 0,
    };
    object.insert("streams_more".to_string(), Value::from(more));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::RunbookView;
    use serde_json::json;

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
        let entries: Vec<Value> = (0..MAX_SHOWN_STREAM_ENTRIES + 11)
            .map(|i| json!({"seq": i, "kind": "output", "text": "x"}))
            .collect();
        let mut job = json!({"id": "j", "streams": entries});
        bound_job(&mut job);
        assert_eq!(
            job["streams"].as_array().unwrap().len(),
            MAX_SHOWN_STREAM_ENTRIES
        );
        assert_eq!(job["streams"][0]["seq"], 0);
        assert_eq!(job["streams_more"], 11);

        let mut short = json!({"id": "j", "streams": [{"seq": 1}]});
        bound_job(&mut short);
        assert_eq!(short["streams"].as_array().unwrap().len(), 1);
        assert_eq!(short["streams_more"], 0);
    }
}
