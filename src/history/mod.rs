//! Job history in embedded SQLite: every job from the moment it is due, with its streams.
//!
//! One writer task owns the connection (WAL mode); readers use their own connections.
//! Knows nothing of Exchange or HTTP.

use serde::{Deserialize, Serialize};

use crate::duration::HumanDuration;

/// `[history]` settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistorySettings {
    /// Jobs older than this are pruned in the background.
    pub retention: HumanDuration,
}

impl Default for HistorySettings {
    fn default() -> Self {
        Self {
            retention: HumanDuration::from_secs(30 * 24 * 3600),
        }
    }
}
