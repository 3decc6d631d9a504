//! Step reports under `<state.dir>/reports/<job id>/`.

use std::path::{Path, PathBuf};

use crate::history::JobId;
use crate::runbook::OutputFormat;

/// Where the report of `step` in job `id` is written.
pub fn report_path(state_dir: &Path, id: &JobId, step: &str, format: OutputFormat) -> PathBuf {
    state_dir
        .join("reports")
        .join(id.as_str())
        .join(format!("{step}.{}", format.extension()))
}
