//! Runbook files: the TOML format, its validation, templates and the cmdlet policy.
//!
//! Pure except for [`load_folder`]/[`load_file`]: text goes in, a validated [`Runbook`] or
//! every [`ValidationError`] (file, line, column, key) comes out. Parsing is two-phase:
//! `parse` walks a span-carrying TOML tree and builds the `model` types the scheduler and
//! the executor use; nothing is deserialised straight into them. Knows nothing of HTTP,
//! Exchange calls, history or when schedules fire.
//!
//! - [`parse_runbook`]: one file's text → [`Runbook`] (or all its errors).
//! - [`load_folder`]: a drop folder → [`Catalog`] of valid runbooks + errors.
//! - [`Step::render_parameters`] / [`Step::matches_when`] with a [`TemplateContext`]: what
//!   the executor calls per record.
//! - [`CmdletPolicy`], [`is_read_cmdlet`]: the `[policy]` rules and the read verbs a dry run
//!   sends for real.
//! - `runbooks/runbook.schema.json` comes from [`schema::json_schema`].

mod catalog;
mod error;
mod job;
mod model;
mod params;
mod parse;
pub mod permissions;
mod policy;
pub mod schema;
mod template;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use catalog::{Catalog, is_runbook_file, load_file, load_folder, runbook_name};
pub use error::{ErrorKind, ValidationError};
pub use job::JobSpec;
pub use model::{
    CronSchedule, DEFAULT_RETRY_BACKOFF, DEFAULT_TIMEOUT, GRAPH_METHODS, GRAPH_VERSIONS, GraphCall,
    IdentityOverride, MAX_CONCURRENCY, MAX_JITTER, MAX_RETRY_ATTEMPTS, MAX_RETRY_DELAY, Missed,
    OnInterrupt, OutputFormat, OutputSpec, Overlap, ParamSpec, ParamType, RenderedGraphCall,
    Retries, Runbook, ScheduleEntry, Step, StepUsage, cron_parser, param_json,
};
pub use params::{ParamError, ParamErrors, ParamInput};
pub use parse::{
    IDENTITY_KEYS, OUTPUT_KEYS, PARAM_KEYS, RETRIES_KEYS, SCHEDULE_KEYS, STEP_KEYS, TOP_LEVEL_KEYS,
    parse_runbook,
};
pub use policy::{
    CmdletPolicy, DESTRUCTIVE_VERBS, NOT_READ_CMDLETS, PolicyDenial, READ_VERBS, glob_matches,
    is_read_cmdlet,
};
pub use template::{
    JOB_ATTRIBUTES, JobInfo, MAX_KEYS, MAX_RENDERED_BYTES, OPATH_PARAMETERS, STEP_ATTRIBUTES,
    TEMPLATE_FUEL, TEMPLATE_VARIABLES, TemplateContext, TemplateError,
};

/// `[runbooks]` settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunbooksSettings {
    /// The drop folder ops teams put runbook files in.
    pub dir: PathBuf,
    /// The Unix group whose members are meant to write runbook files (the VM's cloud-init
    /// makes the folder `2775 root:runbook-authors`). `doctor` accepts group-write for this
    /// group and still warns for any other group and for others.
    pub authors_group: Option<String>,
}

impl Default for RunbooksSettings {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("runbooks"),
            authors_group: None,
        }
    }
}

/// `[policy]` settings: which cmdlets runbooks may call. Deny wins over allow; `Remove-*`
/// and `New-*` cmdlets also need an allow entry that names their verb (see
/// [`CmdletPolicy`]).
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
