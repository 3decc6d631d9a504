//! The validated runbook: the types the scheduler and the executor run on.
//!
//! Values of these types only come out of [`super::parse_runbook`], so every field holds
//! a checked value: cron expressions parsed, the time zone known, step references
//! resolved, templates compiled. Nothing here reads files or the clock.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::exchange::params::{ParamValue, Parameters};
use crate::timing::schedule::Schedule;

use super::template::{TemplateContext, TemplateError, TemplateSet, ValueTemplate};

/// The whole-job timeout when a runbook sets none: Azure Automation's fair-share limit.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3 * 3600);
/// The first retry's delay when `retries` gives no `backoff`.
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_secs(60);
/// Retry delays double up to this cap.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(3600);
/// The most whole-job retries a runbook may ask for.
pub const MAX_RETRY_ATTEMPTS: u32 = 10;
/// The largest `jitter`.
pub const MAX_JITTER: Duration = Duration::from_secs(3600);
/// Bounds of a step's `concurrency`.
pub const MAX_CONCURRENCY: u32 = 32;

/// One validated runbook file.
#[derive(Clone, Debug)]
pub struct Runbook {
    /// The file stem; unique in a folder.
    pub name: String,
    /// The file as the loader named it, for messages.
    pub file: String,
    /// SHA-256 of the file's bytes, lower-case hex; history records it with every job.
    pub hash: String,
    pub description: String,
    /// Every cron expression of every schedule, in file order; empty for a runbook that
    /// only runs on demand (`run`, the API).
    pub schedules: Vec<CronSchedule>,
    /// The first schedule's [`Schedule`] (the `schedule` key's, or the first
    /// `[[schedules]]` entry's), for callers that show one; the scheduler fires from
    /// [`Runbook::schedule_entries`].
    pub schedule: Option<Schedule>,
    /// Each schedule with its own time zone and parameters: the single `schedule` key is
    /// one entry without parameters; `[[schedules]]` gives one entry per table.
    pub schedule_entries: Vec<ScheduleEntry>,
    /// The shared variables (`vars.<name>`) its templates read; the settings' `[vars]`
    /// must define them.
    pub vars_used: BTreeSet<String>,
    /// The secrets (`secrets.<name>`) its templates read, fetched from Key Vault per job.
    pub secrets_used: BTreeSet<String>,
    pub timezone: chrono_tz::Tz,
    pub timeout: Duration,
    pub enabled: bool,
    /// Overrides `[identity]` for this runbook.
    pub identity: Option<IdentityOverride>,
    /// Overrides `[exchange] organization` for this runbook.
    pub organization: Option<String>,
    /// The most writes one job may make; see the README.
    pub max_changes: Option<u64>,
    pub retries: Retries,
    /// Declared parameters, by name.
    pub params: BTreeMap<String, ParamSpec>,
    pub overlap: Overlap,
    pub missed: Missed,
    /// With `missed = "run-once"`: the oldest missed occurrence still caught up.
    pub max_lateness: Option<Duration>,
    /// Each occurrence starts up to this much later, at random, to spread load.
    pub jitter: Duration,
    /// No occurrence before this instant.
    pub start_at: Option<DateTime<Utc>>,
    /// No occurrence after this instant.
    pub end_at: Option<DateTime<Utc>>,
    pub on_interrupt: OnInterrupt,
    /// The `[[notify.targets]]` this runbook's jobs notify, by name; empty: `notify.default`.
    pub notify: Vec<String>,
    pub steps: Vec<Step>,
}

impl Runbook {
    /// The step with this name.
    pub fn step(&self, name: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.name == name)
    }

    /// Steps whose records a later template reads through `steps.<name>.records`; the
    /// executor must keep those records (all others only need their count), see
    /// [`Step::step_references`].
    pub fn steps_needing_records(&self) -> BTreeSet<&str> {
        self.steps
            .iter()
            .flat_map(|s| s.step_references.iter())
            .filter(|(_, usage)| usage.records)
            .map(|(name, _)| name.as_str())
            .collect()
    }

    /// For each step a later `keys("step", "field")` reads: the fields whose values the
    /// executor collects while that step's records pass.
    pub fn key_sets_needed(&self) -> BTreeMap<&str, BTreeSet<&str>> {
        let mut out: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for step in &self.steps {
            for (source, fields) in &step.key_references {
                out.entry(source.as_str())
                    .or_default()
                    .extend(fields.iter().map(String::as_str));
            }
        }
        out
    }

    /// Whether any step calls a cmdlet that is not a read (see
    /// [`super::is_read_cmdlet`]).
    pub fn has_writes(&self) -> bool {
        self.steps.iter().any(|s| !s.is_read())
    }
}

/// One cron expression of `schedule`, parsed by croner (seconds optional, `L`, `#`, `W`,
/// `@daily`-style nicknames), kept for validation messages and tools; the scheduler fires
/// from [`Runbook::schedule`].
#[derive(Clone, Debug)]
pub struct CronSchedule {
    /// The expression as written.
    pub expression: String,
    pub cron: croner::Cron,
}

/// One schedule of a runbook (Azure Automation's schedule link): its cron expressions in
/// its time zone, and the parameter values its jobs get over the declared defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduleEntry {
    /// Position in the file (0 for the `schedule` key); part of the occurrence's identity,
    /// so two schedules firing at the same instant are two occurrences.
    pub index: usize,
    /// How people see it: its cron expressions joined with ", ".
    pub label: String,
    /// The expressions fired from, built once at validation in `timezone`.
    pub schedule: Schedule,
    pub timezone: chrono_tz::Tz,
    /// The values this schedule gives, already checked against `[params]` (types, names).
    pub params: BTreeMap<String, serde_json::Value>,
}

/// How croner parses every runbook schedule: seconds optional (5 or 6 fields, seconds
/// first), no year field, day-of-month and day-of-week OR-ed as in Vixie cron, exactly as
/// [`Schedule::new`] does; public so tools can parse the same way.
pub fn cron_parser() -> croner::parser::CronParser {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .year(croner::parser::Year::Disallowed)
        .build()
}

/// `identity = { client_id = "…" }`: which user-assigned identity this runbook's jobs use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentityOverride {
    ClientId(String),
    ObjectId(String),
    ResourceId(String),
}

/// Whole-job retries after a Failed job (the executor documents which outcomes retry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retries {
    /// Retries after the first attempt; 0 means none.
    pub attempts: u32,
    /// The delay before the first retry; each further retry waits twice as long, capped
    /// at [`MAX_RETRY_DELAY`].
    pub backoff: Duration,
}

impl Default for Retries {
    fn default() -> Self {
        Self {
            attempts: 0,
            backoff: DEFAULT_RETRY_BACKOFF,
        }
    }
}

impl Retries {
    /// The delay before retry `n` (1 for the first retry), or `None` when `n` is beyond
    /// `attempts`.
    pub fn delay_before_retry(&self, n: u32) -> Option<Duration> {
        if n == 0 || n > self.attempts {
            return None;
        }
        let factor = 2u32.saturating_pow(n - 1);
        Some(self.backoff.saturating_mul(factor).min(MAX_RETRY_DELAY))
    }
}

// The scheduling policies are the scheduler's types: one definition for the file format, the
// schema and the decisions.
pub use crate::timing::policy::{MissedPolicy as Missed, OnInterrupt, OverlapPolicy as Overlap};

/// The type of a declared runbook parameter; overrides are checked against it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ParamType {
    String,
    Integer,
    Float,
    Boolean,
    Datetime,
    Array,
    Table,
}

impl ParamType {
    pub const VARIANTS: &'static [(&'static str, ParamType)] = &[
        ("string", ParamType::String),
        ("integer", ParamType::Integer),
        ("float", ParamType::Float),
        ("boolean", ParamType::Boolean),
        ("datetime", ParamType::Datetime),
        ("array", ParamType::Array),
        ("table", ParamType::Table),
    ];

    pub fn name(self) -> &'static str {
        Self::VARIANTS
            .iter()
            .find(|(_, v)| *v == self)
            .map(|(n, _)| *n)
            .unwrap_or("string")
    }
}

/// A declared runbook parameter.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub kind: ParamType,
    /// The value when a run gives none; `None` makes the parameter required (only allowed
    /// for runbooks without a schedule). Datetimes are RFC 3339 strings in UTC.
    pub default: Option<serde_json::Value>,
    pub description: Option<String>,
}

/// The format of a step's report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OutputFormat {
    /// Comma-separated values with a header row.
    Csv,
    /// One JSON object per line.
    Jsonl,
}

impl OutputFormat {
    pub const VARIANTS: &'static [(&'static str, OutputFormat)] =
        &[("csv", OutputFormat::Csv), ("jsonl", OutputFormat::Jsonl)];

    /// The file extension of reports in this format.
    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Csv => "csv",
            OutputFormat::Jsonl => "jsonl",
        }
    }
}

/// `output`: keep a step's records as a report file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputSpec {
    pub format: OutputFormat,
    /// Record properties to keep, in this order; empty means all (for CSV: the union of
    /// the records' properties, in first-seen order).
    pub columns: Vec<String>,
}

/// How a step's templates use an earlier step's results.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepUsage {
    /// `steps.<name>.count` appears.
    pub count: bool,
    /// `steps.<name>.records` appears: the executor must keep that step's records.
    pub records: bool,
}

/// The methods a Graph step may use.
pub const GRAPH_METHODS: &[&str] = &["GET", "POST", "PATCH", "PUT", "DELETE"];
/// The API versions a Graph step's path may start with.
pub const GRAPH_VERSIONS: &[&str] = &["/v1.0/", "/beta/"];

/// `graph = "METHOD /v1.0/path"` with its `query`, `headers` and `body`, templates
/// compiled. The path is held segment by segment so that a rendered value fills one
/// segment and can never add another (it is percent-encoded).
#[derive(Clone, Debug)]
pub struct GraphCall {
    /// Upper case, one of [`GRAPH_METHODS`].
    pub method: String,
    /// The path as written (templates included), for messages and the policy.
    pub path: String,
    pub(crate) segments: Vec<ValueTemplate>,
    pub(crate) query: BTreeMap<String, ValueTemplate>,
    pub(crate) headers: BTreeMap<String, ValueTemplate>,
    pub(crate) body: Option<ValueTemplate>,
}

impl GraphCall {
    /// Whether the call only reads (a dry run sends it; it may be retried).
    pub fn is_read(&self) -> bool {
        self.method == "GET"
    }

    fn has_templates(&self) -> bool {
        self.segments
            .iter()
            .chain(self.query.values())
            .chain(self.headers.values())
            .chain(self.body.iter())
            .any(|v| !v.is_literal())
    }
}

/// One Graph call of a step, rendered for one item: what the executor sends.
#[derive(Clone, Debug, PartialEq)]
pub struct RenderedGraphCall {
    pub method: String,
    /// Starts with `/v1.0/` or `/beta/`; rendered segments percent-encoded.
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub body: Option<serde_json::Value>,
}

impl RenderedGraphCall {
    /// `METHOD /path`, what `[policy]` patterns match.
    pub fn label(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// One validated step.
#[derive(Clone, Debug)]
pub struct Step {
    pub name: String,
    /// A `Verb-Noun` name the cmdlet policy allows; for a Graph step the call as written,
    /// `METHOD /path` (what events, history and the policy show).
    pub cmdlet: String,
    /// Set for a step that calls Microsoft Graph instead of a cmdlet.
    pub graph: Option<GraphCall>,
    /// The earlier step whose records this step runs once for.
    pub for_each: Option<String>,
    /// The `when` expression as written.
    pub when: Option<String>,
    /// Items of `for_each` in flight at once (1 without `for_each`).
    pub concurrency: u32,
    pub continue_on_error: bool,
    pub output: Option<OutputSpec>,
    /// Earlier steps this step's templates read (`steps.<name>.count` / `.records`), and
    /// how. Their values exist once those steps have finished: a step that reads
    /// `steps.x` while iterating over `x` must wait for `x` to finish first.
    pub step_references: BTreeMap<String, StepUsage>,
    /// `keys("step", "field")` calls in this step's templates: step → fields.
    pub key_references: BTreeMap<String, BTreeSet<String>>,
    pub(crate) parameters: BTreeMap<String, ValueTemplate>,
    pub(crate) when_template: Option<ValueTemplate>,
    pub(crate) templates: Arc<TemplateSet>,
}

impl Step {
    /// Whether the cmdlet (or Graph call) only reads (a dry run sends it for real).
    pub fn is_read(&self) -> bool {
        match &self.graph {
            Some(graph) => graph.is_read(),
            None => super::policy::is_read_cmdlet(&self.cmdlet),
        }
    }

    /// The parameter names, in order.
    pub fn parameter_names(&self) -> impl Iterator<Item = &str> {
        self.parameters.keys().map(String::as_str)
    }

    /// Whether any parameter or `when` uses a template; a step without templates renders
    /// the same parameters every time.
    pub fn has_templates(&self) -> bool {
        self.when_template.is_some()
            || self.parameters.values().any(|v| !v.is_literal())
            || self.graph.as_ref().is_some_and(GraphCall::has_templates)
    }

    /// Renders the Graph call for one item (`None` for a cmdlet step). Each templated path
    /// segment is percent-encoded and may not be empty, `.` or `..`, so a record's value
    /// stays inside its segment.
    pub fn render_graph(
        &self,
        ctx: &TemplateContext,
    ) -> Option<Result<RenderedGraphCall, TemplateError>> {
        let graph = self.graph.as_ref()?;
        Some(self.render_graph_call(graph, ctx))
    }

    fn render_graph_call(
        &self,
        graph: &GraphCall,
        ctx: &TemplateContext,
    ) -> Result<RenderedGraphCall, TemplateError> {
        let location = |part: &str| format!("{part} of step \"{}\"", self.name);
        let mut path = String::new();
        for segment in &graph.segments {
            path.push('/');
            match segment {
                ValueTemplate::Literal(value) => path.push_str(&scalar_text(value)),
                template => {
                    let where_ = location("the graph path");
                    let text = scalar_text(&template.render(&self.templates, ctx, &where_)?);
                    if matches!(text.trim(), "" | "." | "..") {
                        return Err(TemplateError::NotAValue {
                            location: where_,
                            template: graph.path.clone(),
                            what: format!("the path segment {text:?}"),
                        });
                    }
                    path.push_str(&encode_segment(&text));
                }
            }
        }
        let pairs = |table: &BTreeMap<String, ValueTemplate>, part: &str| {
            table
                .iter()
                .map(|(k, v)| {
                    let where_ = location(&format!("{part} \"{k}\""));
                    Ok((
                        k.clone(),
                        scalar_text(&v.render(&self.templates, ctx, &where_)?),
                    ))
                })
                .collect::<Result<Vec<_>, TemplateError>>()
        };
        let body = match &graph.body {
            None => None,
            Some(body) => Some(param_json(&body.render(
                &self.templates,
                ctx,
                &location("the body"),
            )?)),
        };
        Ok(RenderedGraphCall {
            method: graph.method.clone(),
            path,
            query: pairs(&graph.query, "query")?,
            headers: pairs(&graph.headers, "header")?,
            body,
        })
    }

    /// Renders the parameters for one call. Templates fill values only: whatever a record
    /// contains ends up inside a string (or the native value of a whole-value expression),
    /// never as a parameter name, a cmdlet name or JSON text.
    pub fn render_parameters(&self, ctx: &TemplateContext) -> Result<Parameters, TemplateError> {
        let mut out = Parameters::new();
        for (name, value) in &self.parameters {
            let location = format!("parameter \"{name}\" of step \"{}\"", self.name);
            out.insert(name.clone(), value.render(&self.templates, ctx, &location)?);
        }
        Ok(out)
    }

    /// Evaluates `when` for one call: `true` without a `when`. A `when` that reads a
    /// property the record does not have is an error, not `false`; write
    /// `item.X is defined and …` to filter on optional properties.
    pub fn matches_when(&self, ctx: &TemplateContext) -> Result<bool, TemplateError> {
        match &self.when_template {
            None => Ok(true),
            Some(template) => {
                let location = format!("when of step \"{}\"", self.name);
                template.truthy(&self.templates, ctx, &location)
            }
        }
    }
}

/// A rendered scalar as the text of a path segment, query value or header.
fn scalar_text(value: &ParamValue) -> String {
    match value {
        ParamValue::String(s) => s.clone(),
        other => match param_json(other) {
            serde_json::Value::String(s) => s,
            json => json.to_string(),
        },
    }
}

/// Characters escaped in a rendered path segment: everything that could end the segment,
/// start a query or fragment, or be read as an escape.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'\\')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

fn encode_segment(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, SEGMENT).to_string()
}

/// A rendered value as plain JSON: datetimes as RFC 3339, hashtables as objects (what a
/// Graph body and a plan show).
pub fn param_json(value: &ParamValue) -> serde_json::Value {
    use serde_json::Value;
    match value {
        ParamValue::Null => Value::Null,
        ParamValue::Bool(b) => Value::Bool(*b),
        ParamValue::Int(i) => Value::from(*i),
        ParamValue::Float(f) => serde_json::Number::from_f64(*f)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        ParamValue::String(s) => Value::String(s.clone()),
        ParamValue::DateTime(t) => {
            Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        }
        ParamValue::Array(items) => Value::Array(items.iter().map(param_json).collect()),
        ParamValue::HashTable(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), param_json(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_double_up_to_the_cap() {
        let retries = Retries {
            attempts: 10,
            backoff: Duration::from_secs(60),
        };
        let cases = [
            (0, None),
            (1, Some(60)),
            (2, Some(120)),
            (3, Some(240)),
            (7, Some(3600)),
            (10, Some(3600)),
            (11, None),
        ];
        for (n, expected) in cases {
            assert_eq!(
                retries.delay_before_retry(n).map(|d| d.as_secs()),
                expected,
                "retry {n}"
            );
        }
    }

    #[test]
    fn no_retries_by_default() {
        assert_eq!(Retries::default().delay_before_retry(1), None);
    }

    #[test]
    fn the_cron_parser_takes_five_or_six_fields_with_l_and_hash() {
        let parser = cron_parser();
        for ok in [
            "0 30 2 * * *",
            "30 2 * * *",
            "0 0 L * *",
            "0 9 * * 1#2",
            "@daily",
        ] {
            assert!(parser.parse(ok).is_ok(), "{ok}");
        }
        assert!(parser.parse("0 0 0 1 1 * 2030").is_err());
    }
}
