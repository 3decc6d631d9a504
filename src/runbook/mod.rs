//! Runbook files: the TOML format, its validation, templates and the cmdlet policy.
//!
//! Pure: parses text into validated runbooks (and every error, with file, line and key).
//! Loading the folder is the only I/O here. Knows nothing of HTTP, schedules' timing or
//! history.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[runbooks]` settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunbooksSettings {
    /// The drop folder ops teams put runbook files in.
    pub dir: PathBuf,
}

impl Default for RunbooksSettings {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("runbooks"),
        }
    }
}

/// `[policy]` settings: which cmdlets runbooks may call. Deny wins over allow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicySettings {
    pub allow: Vec<String>,
    pub deny: Vec<String>,
}

impl Default for PolicySettings {
    fn default() -> Self {
        Self {
            allow: vec!["*".to_string()],
            deny: Vec::new(),
        }
    }
}
