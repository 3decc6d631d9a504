//! Parse, then validate: TOML text → a span-carrying tree (`toml::de::DeTable`) → the
//! checked [`Runbook`].
//!
//! Nothing is deserialised straight into the runtime types. Every key is looked at by
//! hand so that each problem gets its own error with line, column and key path, and the
//! checks carry on after a problem so that one run reports everything wrong with a file.
//! Only TOML syntax errors stop early: the tree the parser recovers after one is not worth
//! checking further.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::{Range, RangeInclusive};
use std::time::Duration;

use chrono::{
    DateTime, Datelike, FixedOffset, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeZone,
    Utc,
};
use chrono_tz::Tz;
use sha2::{Digest, Sha256};
use toml::Spanned;
use toml::de::{DeTable, DeValue};
use toml::value::{Datetime, Offset};

use crate::duration::HumanDuration;
use crate::exchange::params::ParamValue;
use crate::timing::schedule::Schedule;

use super::error::{ErrorKind, SourceMap, ValidationError};
use super::model::{
    CronSchedule, DEFAULT_TIMEOUT, GRAPH_METHODS, GRAPH_VERSIONS, GraphCall, IdentityOverride,
    MAX_CONCURRENCY, MAX_JITTER, MAX_RETRY_ATTEMPTS, Missed, OnInterrupt, OutputFormat, OutputSpec,
    Overlap, ParamSpec, ParamType, Retries, Runbook, ScheduleEntry, Step, StepUsage, cron_parser,
};
use super::policy::CmdletPolicy;
use super::template::{
    BUILTIN_GLOBALS, CompileError, JOB_ATTRIBUTES, STEP_ATTRIBUTES, TEMPLATE_VARIABLES,
    TemplateCompiler, ValueTemplate, has_template_syntax, is_opath_parameter, unquoted_in_opath,
};

type Node<'i> = Spanned<DeValue<'i>>;

/// Keys of a runbook file's top level.
pub const TOP_LEVEL_KEYS: &[&str] = &[
    "description",
    "schedule",
    "schedules",
    "timezone",
    "timeout",
    "enabled",
    "identity",
    "organization",
    "max_changes",
    "retries",
    "params",
    "overlap",
    "missed",
    "max_lateness",
    "jitter",
    "start_at",
    "end_at",
    "on_interrupt",
    "notify",
    "steps",
];
/// Keys of one `[[steps]]` table.
pub const STEP_KEYS: &[&str] = &[
    "name",
    "cmdlet",
    "graph",
    "parameters",
    "query",
    "headers",
    "body",
    "for_each",
    "when",
    "concurrency",
    "continue_on_error",
    "output",
];
/// Keys of one `[[schedules]]` table.
pub const SCHEDULE_KEYS: &[&str] = &["cron", "timezone", "params"];
/// Keys of `identity`.
pub const IDENTITY_KEYS: &[&str] = &["client_id", "object_id", "resource_id"];
/// Keys of a parameter declared as a table under `[params]`.
pub const PARAM_KEYS: &[&str] = &["default", "description", "type"];
/// Keys of `retries` as a table.
pub const RETRIES_KEYS: &[&str] = &["attempts", "backoff"];
/// Keys of a step's `output` as a table.
pub const OUTPUT_KEYS: &[&str] = &["format", "columns"];

/// Parses and validates one runbook file.
///
/// `name` is the runbook's name (the file stem), `file` how messages name the file and
/// `text` its contents. Returns the runbook, or every problem found, sorted by position.
pub fn parse_runbook(
    name: &str,
    file: &str,
    text: &str,
    policy: &CmdletPolicy,
) -> Result<Runbook, Vec<ValidationError>> {
    let mut checker = Checker {
        file,
        map: SourceMap::new(text),
        errors: Vec::new(),
        vars_used: BTreeSet::new(),
        secrets_used: BTreeSet::new(),
    };
    if let Some(problem) = runbook_name_problem(name) {
        checker
            .errors
            .push(ValidationError::whole_file(file, ErrorKind::Value, problem));
    }
    let (root, syntax_errors) = DeTable::parse_recoverable(text);
    if !syntax_errors.is_empty() {
        for e in syntax_errors {
            let span = e.span().unwrap_or(0..0);
            let message = e
                .message()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
            // toml says "duplicate key" without naming it; the span does.
            let message = match checker.map.slice(span.clone()) {
                Some(key) if message == "duplicate key" && !key.is_empty() => {
                    format!("duplicate key \"{}\"", key.trim_matches(['"', '\'']))
                }
                _ => message,
            };
            checker.report(
                span,
                "",
                ErrorKind::Syntax,
                format!("TOML syntax: {message}"),
            );
        }
        return Err(checker.into_errors());
    }
    let root = root.into_inner();
    let runbook = checker.runbook(name, &root, text, policy);
    if checker.errors.is_empty()
        && let Some(runbook) = runbook
    {
        return Ok(runbook);
    }
    Err(checker.into_errors())
}

/// Why a file stem cannot be a runbook name, if it cannot.
pub(crate) fn runbook_name_problem(name: &str) -> Option<String> {
    let ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    (!ok).then(|| {
        format!(
            "runbook name {name:?} (the file name without .toml) must start with a letter or digit and contain only letters, digits, \"-\", \"_\" and \".\""
        )
    })
}

/// The closest candidate to a misspelt word, if one is close enough to suggest.
pub(crate) fn suggest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let lower = word.to_lowercase();
    let mut best: Option<(f64, &'a str)> = None;
    for candidate in candidates {
        let score = strsim::jaro_winkler(&lower, &candidate.to_lowercase());
        if best.is_none_or(|(b, _)| score > b) {
            best = Some((score, candidate));
        }
    }
    best.filter(|(score, _)| *score >= 0.8).map(|(_, c)| c)
}

fn did_you_mean(suggestion: Option<&str>) -> String {
    suggestion
        .map(|s| format!(" (did you mean \"{s}\"?)"))
        .unwrap_or_default()
}

/// What to suggest for an unknown time zone: the IANA name for a city alone ("Berlin",
/// "New York"), a note for Windows names (which Azure Automation used), else the closest
/// name.
fn timezone_hint(text: &str) -> String {
    let names = || chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name());
    if text.to_ascii_lowercase().ends_with("standard time") {
        return " (that is a Windows time zone name)".to_string();
    }
    let city = format!("/{}", text.trim().replace(' ', "_")).to_ascii_lowercase();
    if let Some(name) = names().find(|n| n.to_ascii_lowercase().ends_with(&city)) {
        return did_you_mean(Some(name));
    }
    did_you_mean(suggest(text, names()))
}

/// A value's TOML type with its article, for "expected X, got Y" messages.
fn describe(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

fn integer_value(value: &DeValue<'_>) -> Option<i64> {
    match value {
        DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix()).ok(),
        _ => None,
    }
}

fn float_value(value: &DeValue<'_>) -> Option<f64> {
    match value {
        DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
        _ => None,
    }
}

/// Whether a name can follow `steps.` in a template and be a `[params]` key.
fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 64
}

/// `Verb-Noun`, letters and digits only: what Exchange cmdlets look like.
pub(crate) fn is_cmdlet_name(name: &str) -> bool {
    let Some((verb, noun)) = name.split_once('-') else {
        return false;
    };
    !verb.is_empty()
        && verb.chars().all(|c| c.is_ascii_alphabetic())
        && noun.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && noun.chars().all(|c| c.is_ascii_alphanumeric())
}

/// A TOML datetime as an instant: with an offset as written, without one in `tz`
/// (a local date means midnight). Fails for a time without a date and for local times in
/// a daylight-saving gap; an ambiguous local time (the repeated hour) takes the earlier
/// instant.
pub(crate) fn datetime_to_utc(dt: &Datetime, tz: Tz) -> Result<DateTime<Utc>, String> {
    let Some(date) = dt.date else {
        return Err("a time of day without a date is not an instant".to_string());
    };
    let day = NaiveDate::from_ymd_opt(date.year.into(), date.month.into(), date.day.into())
        .ok_or_else(|| format!("{dt} is not a calendar date"))?;
    let time = match dt.time {
        Some(t) => NaiveTime::from_hms_nano_opt(
            t.hour.into(),
            t.minute.into(),
            t.second.unwrap_or(0).into(),
            t.nanosecond.unwrap_or(0),
        )
        .ok_or_else(|| format!("{dt} is not a time of day"))?,
        None => NaiveTime::MIN,
    };
    let naive = NaiveDateTime::new(day, time);
    match dt.offset {
        Some(Offset::Z) => Ok(Utc.from_utc_datetime(&naive)),
        Some(Offset::Custom { minutes }) => FixedOffset::east_opt(i32::from(minutes) * 60)
            .and_then(|offset| offset.from_local_datetime(&naive).single())
            .map(|t| t.with_timezone(&Utc))
            .ok_or_else(|| format!("{dt} has an invalid offset")),
        None => match tz.from_local_datetime(&naive) {
            LocalResult::Single(t) => Ok(t.with_timezone(&Utc)),
            LocalResult::Ambiguous(earlier, _) => Ok(earlier.with_timezone(&Utc)),
            LocalResult::None => Err(format!(
                "{naive} does not exist in {} (it falls in a daylight-saving gap)",
                tz.name()
            )),
        },
    }
}

/// A TOML value as JSON (parameter defaults and overrides). Datetimes become RFC 3339
/// strings in UTC.
pub(crate) fn toml_to_json(value: &DeValue<'_>, tz: Tz) -> Result<serde_json::Value, String> {
    Ok(match value {
        DeValue::String(s) => serde_json::Value::String(s.to_string()),
        DeValue::Integer(_) => integer_value(value)
            .map(serde_json::Value::from)
            .ok_or("an integer that does not fit 64 bits")?,
        DeValue::Float(_) => float_value(value)
            .and_then(serde_json::Number::from_f64)
            .map(serde_json::Value::Number)
            .ok_or("a float that is not a finite number")?,
        DeValue::Boolean(b) => serde_json::Value::Bool(*b),
        DeValue::Datetime(dt) => serde_json::Value::String(
            datetime_to_utc(dt, tz)?.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        ),
        DeValue::Array(items) => serde_json::Value::Array(
            items
                .iter()
                .map(|v| toml_to_json(v.get_ref(), tz))
                .collect::<Result<_, _>>()?,
        ),
        DeValue::Table(table) => serde_json::Value::Object(
            table
                .iter()
                .map(|(k, v)| Ok((k.get_ref().to_string(), toml_to_json(v.get_ref(), tz)?)))
                .collect::<Result<_, String>>()?,
        ),
    })
}

/// Whether a parsed pattern matches any calendar day. "0 0 30 2 *" parses but never fires;
/// asking croner for the next occurrence would search up to the year 5000 (about a second),
/// so the days of 2000–2027 are checked with croner's own day matching instead: 28 years
/// hold every combination of weekday, month length and leap day. Every time-of-day field
/// that parses matches some time, so the day decides.
fn fires_on_some_day(cron: &croner::Cron) -> bool {
    let Some(mut day) = NaiveDate::from_ymd_opt(2000, 1, 1) else {
        return true;
    };
    let Some(end) = NaiveDate::from_ymd_opt(2028, 1, 1) else {
        return true;
    };
    while day < end {
        let (year, month, dom) = (day.year(), day.month(), day.day());
        if cron.pattern.month_match(month).unwrap_or(false)
            && cron.pattern.day_match(year, month, dom).unwrap_or(false)
        {
            return true;
        }
        day = match day.succ_opt() {
            Some(next) => next,
            None => return true,
        };
    }
    false
}

fn param_type_of(value: &DeValue<'_>) -> ParamType {
    match value {
        DeValue::String(_) => ParamType::String,
        DeValue::Integer(_) => ParamType::Integer,
        DeValue::Float(_) => ParamType::Float,
        DeValue::Boolean(_) => ParamType::Boolean,
        DeValue::Datetime(_) => ParamType::Datetime,
        DeValue::Array(_) => ParamType::Array,
        DeValue::Table(_) => ParamType::Table,
    }
}

/// What templates of one step may refer to.
struct Scope<'a> {
    /// `step "x"` or `steps[2]`.
    label: &'a str,
    has_item: bool,
    index: usize,
    /// Every step's name by position (`None` where a step has no valid name).
    names: &'a [Option<String>],
    params: &'a BTreeSet<String>,
}

/// A step whose templates are compiled but whose template set is not yet shared.
struct PendingStep {
    name: String,
    cmdlet: String,
    graph: Option<GraphCall>,
    for_each: Option<String>,
    when: Option<String>,
    when_template: Option<ValueTemplate>,
    concurrency: u32,
    continue_on_error: bool,
    output: Option<OutputSpec>,
    parameters: BTreeMap<String, ValueTemplate>,
    step_references: BTreeMap<String, StepUsage>,
    key_references: BTreeMap<String, BTreeSet<String>>,
}

struct Checker<'t> {
    file: &'t str,
    map: SourceMap<'t>,
    errors: Vec<ValidationError>,
    /// `vars.<name>` and `secrets.<name>` the templates read.
    vars_used: BTreeSet<String>,
    secrets_used: BTreeSet<String>,
}

impl<'t> Checker<'t> {
    fn report(&mut self, span: Range<usize>, key: &str, kind: ErrorKind, message: String) {
        let (line, column) = self.map.position(span.start);
        self.errors.push(ValidationError {
            file: self.file.to_string(),
            line,
            column,
            key: key.to_string(),
            kind,
            message,
        });
    }

    fn into_errors(mut self) -> Vec<ValidationError> {
        self.errors.sort_by_key(|e| (e.line, e.column));
        self.errors
    }

    /// Reports every key of `table` not in `allowed`.
    fn check_keys(
        &mut self,
        table: &DeTable<'_>,
        allowed: &[&str],
        prefix: &str,
        place: &str,
        hint: &str,
    ) {
        for (key, _) in table.iter() {
            let name = key.get_ref().as_ref();
            if allowed.contains(&name) {
                continue;
            }
            let suggestion = match suggest(name, allowed.iter().copied()) {
                Some(s) => format!(" (did you mean \"{s}\"?)"),
                None => format!(" (expected one of: {})", allowed.join(", ")),
            };
            self.report(
                key.span(),
                &join_key(prefix, name),
                ErrorKind::UnknownKey,
                format!("unknown key \"{name}\"{place}{suggestion}{hint}"),
            );
        }
    }

    fn type_error(&mut self, node: &Node<'_>, key: &str, what: &str, expected: &str) {
        self.report(
            node.span(),
            key,
            ErrorKind::Type,
            format!(
                "{what} must be {expected}, got {}",
                describe(node.get_ref())
            ),
        );
    }

    fn string(&mut self, node: &Node<'_>, key: &str, what: &str) -> Option<String> {
        match node.get_ref() {
            DeValue::String(s) => Some(s.to_string()),
            _ => {
                self.type_error(node, key, what, "a string");
                None
            }
        }
    }

    fn non_empty_string(&mut self, node: &Node<'_>, key: &str, what: &str) -> Option<String> {
        let s = self.string(node, key, what)?;
        if s.trim().is_empty() {
            self.report(
                node.span(),
                key,
                ErrorKind::Value,
                format!("{what} must not be empty"),
            );
            return None;
        }
        Some(s)
    }

    fn boolean(&mut self, node: &Node<'_>, key: &str, what: &str) -> Option<bool> {
        match node.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.type_error(node, key, what, "true or false");
                None
            }
        }
    }

    fn integer(
        &mut self,
        node: &Node<'_>,
        key: &str,
        what: &str,
        range: RangeInclusive<i64>,
    ) -> Option<i64> {
        let expected = if *range.end() == i64::MAX {
            format!("an integer of at least {}", range.start())
        } else {
            format!("an integer between {} and {}", range.start(), range.end())
        };
        match node.get_ref() {
            DeValue::Integer(_) => match integer_value(node.get_ref()) {
                Some(i) if range.contains(&i) => Some(i),
                Some(i) => {
                    self.report(
                        node.span(),
                        key,
                        ErrorKind::Value,
                        format!("{what} must be {expected}, got {i}"),
                    );
                    None
                }
                None => {
                    self.report(
                        node.span(),
                        key,
                        ErrorKind::Value,
                        format!("{what} must be {expected}"),
                    );
                    None
                }
            },
            _ => {
                self.type_error(node, key, what, &expected);
                None
            }
        }
    }

    fn duration(&mut self, node: &Node<'_>, key: &str, what: &str) -> Option<Duration> {
        let DeValue::String(text) = node.get_ref() else {
            self.type_error(node, key, what, "a duration string such as \"45m\"");
            return None;
        };
        match text.parse::<HumanDuration>() {
            Ok(d) => Some(d.get()),
            Err(_) => {
                self.report(
                    node.span(),
                    key,
                    ErrorKind::Value,
                    format!(
                        "{what} must be a duration such as \"30s\", \"45m\" or \"1h 30m\", got \"{text}\""
                    ),
                );
                None
            }
        }
    }

    fn choice<T: Copy>(
        &mut self,
        node: &Node<'_>,
        key: &str,
        what: &str,
        variants: &[(&'static str, T)],
    ) -> Option<T> {
        let names: Vec<&str> = variants.iter().map(|(n, _)| *n).collect();
        let expected = names
            .iter()
            .map(|n| format!("\"{n}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let text = self.string(node, key, what)?;
        if let Some((_, v)) = variants.iter().find(|(n, _)| *n == text) {
            return Some(*v);
        }
        let hint = did_you_mean(suggest(&text, names.iter().copied()));
        self.report(
            node.span(),
            key,
            ErrorKind::Value,
            format!("{what} must be one of {expected}, got \"{text}\"{hint}"),
        );
        None
    }

    fn datetime(
        &mut self,
        node: &Node<'_>,
        key: &str,
        what: &str,
        tz: Tz,
    ) -> Option<DateTime<Utc>> {
        match node.get_ref() {
            DeValue::Datetime(dt) => match datetime_to_utc(dt, tz) {
                Ok(t) => Some(t),
                Err(e) => {
                    self.report(node.span(), key, ErrorKind::Value, format!("{what}: {e}"));
                    None
                }
            },
            DeValue::String(s) if s.parse::<Datetime>().is_ok() => {
                self.report(
                    node.span(),
                    key,
                    ErrorKind::Type,
                    format!("{what} must be a TOML datetime, got a string; remove the quotes: {key} = {s}"),
                );
                None
            }
            _ => {
                self.type_error(
                    node,
                    key,
                    what,
                    "a TOML datetime such as 2025-01-01T00:00:00",
                );
                None
            }
        }
    }

    fn runbook(
        &mut self,
        name: &str,
        root: &DeTable<'_>,
        text: &str,
        policy: &CmdletPolicy,
    ) -> Option<Runbook> {
        self.check_keys(root, TOP_LEVEL_KEYS, "", "", "");

        let description = root
            .get("description")
            .and_then(|n| self.string(n, "description", "\"description\""))
            .unwrap_or_default();
        let timezone = root
            .get("timezone")
            .and_then(|n| self.timezone(n))
            .unwrap_or(Tz::UTC);
        if let (Some(_), Some(node)) = (root.get("schedule"), root.get("schedules")) {
            self.report(
                node.span(),
                "schedules",
                ErrorKind::Value,
                format!("{} has both \"schedule\" and \"[[schedules]]\"; keep one (\"schedule\" is one schedule without params)", self.file),
            );
        }
        let schedules = root
            .get("schedule")
            .map(|n| self.schedules(n, "schedule"))
            .unwrap_or_default();
        let schedule = root
            .get("schedule")
            .and_then(|n| self.schedule(n, "schedule", &schedules, timezone));
        let timeout = match root.get("timeout") {
            None => DEFAULT_TIMEOUT,
            Some(node) => match self.duration(node, "timeout", "\"timeout\"") {
                Some(d) if d.is_zero() => {
                    self.report(
                        node.span(),
                        "timeout",
                        ErrorKind::Value,
                        "\"timeout\" must be longer than 0s".to_string(),
                    );
                    DEFAULT_TIMEOUT
                }
                Some(d) => d,
                None => DEFAULT_TIMEOUT,
            },
        };
        let enabled = root
            .get("enabled")
            .and_then(|n| self.boolean(n, "enabled", "\"enabled\""))
            .unwrap_or(true);
        let identity = root.get("identity").and_then(|n| self.identity(n));
        let organization = root.get("organization").and_then(|n| self.organization(n));
        let max_changes = root
            .get("max_changes")
            .and_then(|n| self.integer(n, "max_changes", "\"max_changes\"", 0..=i64::MAX))
            .and_then(|i| u64::try_from(i).ok());
        let retries = root
            .get("retries")
            .and_then(|n| self.retries(n))
            .unwrap_or_default();
        let params = root
            .get("params")
            .map(|n| self.params(n, timezone))
            .unwrap_or_default();
        let overlap = root
            .get("overlap")
            .and_then(|n| self.choice(n, "overlap", "\"overlap\"", Overlap::VARIANTS))
            .unwrap_or_default();
        let missed = root
            .get("missed")
            .and_then(|n| self.choice(n, "missed", "\"missed\"", Missed::VARIANTS))
            .unwrap_or_default();
        let on_interrupt = root
            .get("on_interrupt")
            .and_then(|n| self.choice(n, "on_interrupt", "\"on_interrupt\"", OnInterrupt::VARIANTS))
            .unwrap_or_default();
        let max_lateness = root.get("max_lateness").and_then(|node| {
            let d = self.duration(node, "max_lateness", "\"max_lateness\"")?;
            if missed != Missed::RunOnce {
                self.report(
                    node.span(),
                    "max_lateness",
                    ErrorKind::Value,
                    "\"max_lateness\" only applies with missed = \"run-once\"; set that or remove max_lateness".to_string(),
                );
            }
            Some(d)
        });
        let jitter = root
            .get("jitter")
            .and_then(|node| {
                let d = self.duration(node, "jitter", "\"jitter\"")?;
                if d > MAX_JITTER {
                    self.report(
                        node.span(),
                        "jitter",
                        ErrorKind::Value,
                        "\"jitter\" must be at most 1h".to_string(),
                    );
                }
                Some(d)
            })
            .unwrap_or_default();
        let start_at = root
            .get("start_at")
            .and_then(|n| self.datetime(n, "start_at", "\"start_at\"", timezone));
        let end_at = root
            .get("end_at")
            .and_then(|n| self.datetime(n, "end_at", "\"end_at\"", timezone));
        if let (Some(start), Some(end), Some(node)) = (start_at, end_at, root.get("end_at"))
            && end <= start
        {
            self.report(
                node.span(),
                "end_at",
                ErrorKind::Value,
                "\"end_at\" must be later than \"start_at\"".to_string(),
            );
        }
        let (mut schedules, mut schedule, mut schedule_entries) = (schedules, schedule, Vec::new());
        if let Some(entry) = schedule.clone() {
            schedule_entries.push(ScheduleEntry {
                index: 0,
                label: entry.expressions().join(", "),
                schedule: entry,
                timezone,
                params: BTreeMap::new(),
            });
        }
        if let Some(node) = root.get("schedules") {
            let (crons, entries) = self.schedule_tables(node, timezone, &params);
            schedules = crons;
            schedule = entries.first().map(|e| e.schedule.clone());
            schedule_entries = entries;
        }
        if root.get("schedule").is_some() {
            for (param, spec) in &params {
                if spec.default.is_none() {
                    let span = root
                        .get("params")
                        .and_then(|p| p.get_ref().as_table())
                        .and_then(|t| t.get_key_value(param.as_str()))
                        .map(|(k, _)| k.span())
                        .unwrap_or(0..0);
                    self.report(
                        span,
                        &format!("params.{param}"),
                        ErrorKind::MissingKey,
                        format!("param \"{param}\" has no default, so a scheduled run cannot fill it; give it a default or remove \"schedule\""),
                    );
                }
            }
        }

        // Templates may name every param the file declares, also one whose declaration has
        // an error of its own: that error is enough.
        let param_names: BTreeSet<String> = root
            .get("params")
            .and_then(|p| p.get_ref().as_table())
            .map(|t| t.iter().map(|(k, _)| k.get_ref().to_string()).collect())
            .unwrap_or_default();
        let steps = self.steps(root, &param_names, timezone, policy);
        let notify = root
            .get("notify")
            .map(|n| self.notify_targets(n))
            .unwrap_or_default();

        Some(Runbook {
            name: name.to_string(),
            file: self.file.to_string(),
            hash: format!("{:x}", Sha256::digest(text.as_bytes())),
            description,
            schedules,
            schedule,
            schedule_entries,
            vars_used: std::mem::take(&mut self.vars_used),
            secrets_used: std::mem::take(&mut self.secrets_used),
            timezone,
            timeout,
            enabled,
            identity,
            organization,
            max_changes,
            retries,
            params,
            overlap,
            missed,
            max_lateness,
            jitter,
            start_at,
            end_at,
            on_interrupt,
            notify,
            steps: steps?,
        })
    }

    fn timezone(&mut self, node: &Node<'_>) -> Option<Tz> {
        self.timezone_at(node, "timezone")
    }

    fn timezone_at(&mut self, node: &Node<'_>, key: &str) -> Option<Tz> {
        let text = self.string(node, key, &format!("\"{key}\""))?;
        if let Ok(tz) = text.parse::<Tz>() {
            return Some(tz);
        }
        let hint = timezone_hint(&text);
        self.report(
            node.span(),
            key,
            ErrorKind::TimeZone,
            format!("unknown time zone \"{text}\"{hint}; use an IANA name such as \"Europe/Berlin\" or \"UTC\""),
        );
        None
    }

    /// The cron expressions of `key` (`schedule`, or `schedules[i].cron`): one string or a
    /// list of them.
    fn schedules(&mut self, node: &Node<'_>, key: &str) -> Vec<CronSchedule> {
        match node.get_ref() {
            DeValue::String(s) => self.cron(node, s, key).into_iter().collect(),
            DeValue::Array(items) => {
                if items.is_empty() {
                    self.report(
                        node.span(),
                        key,
                        ErrorKind::Value,
                        format!("\"{key}\" is an empty list; remove it for a runbook that only runs on demand"),
                    );
                }
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let item_key = format!("{key}[{i}]");
                    match item.get_ref() {
                        DeValue::String(s) => out.extend(self.cron(item, s, &item_key)),
                        _ => self.type_error(
                            item,
                            &item_key,
                            &format!("each entry of \"{key}\""),
                            "a cron expression string",
                        ),
                    }
                }
                out
            }
            _ => {
                self.type_error(
                    node,
                    key,
                    &format!("\"{key}\""),
                    "a cron expression string or a list of them",
                );
                Vec::new()
            }
        }
    }

    /// `[[schedules]]`: each table's cron, time zone and params, checked against the
    /// declared `[params]` (names, types, and every required param given). Returns every
    /// cron expression and the entries that are valid.
    fn schedule_tables(
        &mut self,
        node: &Node<'_>,
        runbook_tz: Tz,
        params: &BTreeMap<String, ParamSpec>,
    ) -> (Vec<CronSchedule>, Vec<ScheduleEntry>) {
        let (mut crons, mut entries) = (Vec::new(), Vec::new());
        let tables: Vec<&Node<'_>> = match node.get_ref() {
            DeValue::Array(items) if !items.is_empty() => items.iter().collect(),
            _ => {
                self.type_error(
                    node,
                    "schedules",
                    "\"schedules\"",
                    "one or more [[schedules]] tables with a cron",
                );
                return (crons, entries);
            }
        };
        for (index, item) in tables.into_iter().enumerate() {
            let key = format!("schedules[{index}]");
            let Some(table) = item.get_ref().as_table() else {
                self.type_error(
                    item,
                    &key,
                    &format!("\"{key}\""),
                    "a table such as { cron = \"0 2 * * *\" }",
                );
                continue;
            };
            self.check_keys(table, SCHEDULE_KEYS, &key, &format!(" in {key}"), "");
            let timezone = match table.get("timezone") {
                Some(n) => match self.timezone_at(n, &format!("{key}.timezone")) {
                    Some(tz) => tz,
                    None => continue,
                },
                None => runbook_tz,
            };
            let cron_key = format!("{key}.cron");
            let Some(cron_node) = table.get("cron") else {
                self.report(
                    item.span(),
                    &cron_key,
                    ErrorKind::MissingKey,
                    format!("{key} has no \"cron\"; give it one, such as cron = \"0 2 * * *\""),
                );
                continue;
            };
            let expressions = self.schedules(cron_node, &cron_key);
            crons.extend(expressions.iter().cloned());
            let schedule = self.schedule(cron_node, &cron_key, &expressions, timezone);
            let given = table
                .get("params")
                .map(|n| self.schedule_params(n, &key, params, timezone))
                .unwrap_or_default();
            let given_names: BTreeSet<&str> = table
                .get("params")
                .and_then(|n| n.get_ref().as_table())
                .map(|t| t.iter().map(|(k, _)| k.get_ref().as_ref()).collect())
                .unwrap_or_default();
            for (name, spec) in params {
                if spec.default.is_none() && !given_names.contains(name.as_str()) {
                    self.report(
                        item.span(),
                        &format!("{key}.params.{name}"),
                        ErrorKind::MissingKey,
                        format!("param \"{name}\" has no default and {key} does not give it; add it to that schedule's params = {{ … }} or give the param a default"),
                    );
                }
            }
            if let Some(schedule) = schedule {
                entries.push(ScheduleEntry {
                    index,
                    label: schedule.expressions().join(", "),
                    schedule,
                    timezone,
                    params: given,
                });
            }
        }
        (crons, entries)
    }

    /// One schedule's `params = { … }`: every name declared, every value of its type.
    fn schedule_params(
        &mut self,
        node: &Node<'_>,
        key: &str,
        params: &BTreeMap<String, ParamSpec>,
        tz: Tz,
    ) -> BTreeMap<String, serde_json::Value> {
        let mut out = BTreeMap::new();
        let Some(table) = node.get_ref().as_table() else {
            self.type_error(
                node,
                &format!("{key}.params"),
                &format!("\"params\" of {key}"),
                "a table such as { region = \"EU\" }",
            );
            return out;
        };
        for (name, value) in table.iter() {
            let name = name.get_ref().to_string();
            let path = format!("{key}.params.{name}");
            let Some(spec) = params.get(&name) else {
                let hint = did_you_mean(suggest(&name, params.keys().map(String::as_str)));
                self.report(
                    value.span(),
                    &path,
                    ErrorKind::UnknownKey,
                    format!("{key} gives param \"{name}\", which [params] does not declare{hint}"),
                );
                continue;
            };
            let got = param_type_of(value.get_ref());
            if got != spec.kind && !(spec.kind == ParamType::Float && got == ParamType::Integer) {
                self.report(
                    value.span(),
                    &path,
                    ErrorKind::Type,
                    format!(
                        "param \"{name}\" of {key} must be of type {}, got {}",
                        spec.kind.name(),
                        describe(value.get_ref())
                    ),
                );
                continue;
            }
            match toml_to_json(value.get_ref(), tz) {
                Ok(json) => {
                    out.insert(name, json);
                }
                Err(e) => self.report(
                    value.span(),
                    &path,
                    ErrorKind::Value,
                    format!("param \"{name}\" of {key}: {e}"),
                ),
            }
        }
        out
    }

    /// The scheduler's [`Schedule`] of the expressions that passed their own checks, built
    /// here so that the runbook carries the one cron path the scheduler fires from.
    fn schedule(
        &mut self,
        node: &Node<'_>,
        key: &str,
        schedules: &[CronSchedule],
        timezone: Tz,
    ) -> Option<Schedule> {
        if schedules.is_empty() {
            return None;
        }
        let expressions: Vec<String> = schedules.iter().map(|s| s.expression.clone()).collect();
        match Schedule::new(&expressions, timezone) {
            Ok(schedule) => Some(schedule),
            Err(e) => {
                self.report(node.span(), key, ErrorKind::Cron, e.to_string());
                None
            }
        }
    }

    fn cron(&mut self, node: &Node<'_>, expression: &str, key: &str) -> Option<CronSchedule> {
        let trimmed = expression.trim();
        if !trimmed.starts_with('@') {
            let fields = trimmed.split_whitespace().count();
            if fields != 5 && fields != 6 {
                self.report(
                    node.span(),
                    key,
                    ErrorKind::Cron,
                    format!(
                        "invalid cron schedule \"{expression}\": {fields} fields; expected 5 (minute hour day-of-month month day-of-week) or 6 (with seconds first)"
                    ),
                );
                return None;
            }
        }
        match cron_parser().parse(trimmed) {
            Ok(cron) => {
                if !fires_on_some_day(&cron) {
                    self.report(
                        node.span(),
                        key,
                        ErrorKind::Cron,
                        format!("cron schedule \"{expression}\" never fires (no date matches it)"),
                    );
                    return None;
                }
                Some(CronSchedule {
                    expression: expression.to_string(),
                    cron,
                })
            }
            Err(e) => {
                let reason = e.to_string();
                let reason = reason.trim_end_matches('.');
                self.report(
                    node.span(),
                    key,
                    ErrorKind::Cron,
                    format!("invalid cron schedule \"{expression}\": {reason}"),
                );
                None
            }
        }
    }

    fn identity(&mut self, node: &Node<'_>) -> Option<IdentityOverride> {
        let Some(table) = node.get_ref().as_table() else {
            self.type_error(
                node,
                "identity",
                "\"identity\"",
                "a table such as { client_id = \"…\" }",
            );
            return None;
        };
        self.check_keys(table, IDENTITY_KEYS, "identity", " in identity", "");
        let chosen: Vec<(&Spanned<std::borrow::Cow<'_, str>>, &Node<'_>)> = table
            .iter()
            .filter(|(k, _)| IDENTITY_KEYS.contains(&k.get_ref().as_ref()))
            .collect();
        match chosen.as_slice() {
            [] => {
                self.report(
                    node.span(),
                    "identity",
                    ErrorKind::MissingKey,
                    "\"identity\" needs one of client_id, object_id or resource_id".to_string(),
                );
                None
            }
            [(key, value)] => {
                let name = key.get_ref().as_ref();
                let path = format!("identity.{name}");
                let text =
                    self.non_empty_string(value, &path, &format!("\"{name}\" in identity"))?;
                // Client and object ids are GUIDs, but the identity endpoint says so
                // clearly enough; only the resource id's shape is checked, since a
                // truncated ARM path is an easy mistake to make.
                if name == "resource_id" {
                    let lower = text.to_ascii_lowercase();
                    let valid = lower.starts_with("/subscriptions/")
                        && lower.contains(
                            "/providers/microsoft.managedidentity/userassignedidentities/",
                        );
                    if !valid {
                        self.report(
                            value.span(),
                            &path,
                            ErrorKind::Value,
                            format!(
                                "\"resource_id\" in identity must be an ARM id such as /subscriptions/…/resourceGroups/…/providers/Microsoft.ManagedIdentity/userAssignedIdentities/…, got \"{text}\""
                            ),
                        );
                        return None;
                    }
                }
                Some(match name {
                    "client_id" => IdentityOverride::ClientId(text),
                    "object_id" => IdentityOverride::ObjectId(text),
                    _ => IdentityOverride::ResourceId(text),
                })
            }
            [(first, _), rest @ ..] => {
                for (key, _) in rest {
                    self.report(
                        key.span(),
                        &format!("identity.{}", key.get_ref()),
                        ErrorKind::Value,
                        format!(
                            "set at most one of client_id, object_id, resource_id in identity (also set: {})",
                            first.get_ref()
                        ),
                    );
                }
                None
            }
        }
    }

    fn organization(&mut self, node: &Node<'_>) -> Option<String> {
        let text = self.non_empty_string(node, "organization", "\"organization\"")?;
        let looks_like_domain = text.contains('.')
            && !text.starts_with('.')
            && !text.ends_with('.')
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
        if !looks_like_domain {
            self.report(
                node.span(),
                "organization",
                ErrorKind::Value,
                format!("\"organization\" must be a domain such as contoso.onmicrosoft.com, got \"{text}\""),
            );
            return None;
        }
        Some(text)
    }

    fn retries(&mut self, node: &Node<'_>) -> Option<Retries> {
        let max = i64::from(MAX_RETRY_ATTEMPTS);
        match node.get_ref() {
            DeValue::Integer(_) => {
                let attempts = self.integer(node, "retries", "\"retries\"", 0..=max)?;
                Some(Retries {
                    attempts: u32::try_from(attempts).ok()?,
                    ..Retries::default()
                })
            }
            DeValue::Table(table) => {
                self.check_keys(table, RETRIES_KEYS, "retries", " in retries", "");
                let mut retries = Retries::default();
                match table.get("attempts") {
                    Some(n) => {
                        let attempts = self.integer(
                            n,
                            "retries.attempts",
                            "\"attempts\" in retries",
                            0..=max,
                        )?;
                        retries.attempts = u32::try_from(attempts).ok()?;
                    }
                    None => {
                        self.report(
                            node.span(),
                            "retries",
                            ErrorKind::MissingKey,
                            "missing key \"attempts\" in retries".to_string(),
                        );
                        return None;
                    }
                }
                if let Some(n) = table.get("backoff") {
                    retries.backoff =
                        self.duration(n, "retries.backoff", "\"backoff\" in retries")?;
                }
                Some(retries)
            }
            _ => {
                self.type_error(
                    node,
                    "retries",
                    "\"retries\"",
                    "an integer or a table { attempts = 3, backoff = \"1m\" }",
                );
                None
            }
        }
    }

    fn params(&mut self, node: &Node<'_>, tz: Tz) -> BTreeMap<String, ParamSpec> {
        let mut out = BTreeMap::new();
        let Some(table) = node.get_ref().as_table() else {
            self.type_error(
                node,
                "params",
                "\"params\"",
                "a table of parameter names and defaults",
            );
            return out;
        };
        for (key, value) in table.iter() {
            let name = key.get_ref().to_string();
            let path = format!("params.{name}");
            if !is_identifier(&name) {
                self.report(
                    key.span(),
                    &path,
                    ErrorKind::Value,
                    format!("param name \"{name}\" must start with a letter or \"_\" and contain only letters, digits and \"_\" (templates use it as params.{name})"),
                );
                continue;
            }
            let what = format!("param \"{name}\"");
            let spec = match value.get_ref() {
                DeValue::Table(decl) => self.param_declaration(&name, &path, decl, tz),
                other => match toml_to_json(other, tz) {
                    Ok(json) => Some(ParamSpec {
                        name: name.clone(),
                        kind: param_type_of(other),
                        default: Some(json),
                        description: None,
                    }),
                    Err(e) => {
                        self.report(
                            value.span(),
                            &path,
                            ErrorKind::Value,
                            format!("{what}: {e}"),
                        );
                        None
                    }
                },
            };
            if let Some(spec) = spec {
                out.insert(name, spec);
            }
        }
        out
    }

    fn param_declaration(
        &mut self,
        name: &str,
        path: &str,
        decl: &DeTable<'_>,
        tz: Tz,
    ) -> Option<ParamSpec> {
        let place = format!(" in param \"{name}\"");
        let hint =
            format!(" (to give a table as the default, write {name} = {{ default = {{ … }} }})");
        self.check_keys(decl, PARAM_KEYS, path, &place, &hint);
        let description = decl.get("description").and_then(|n| {
            self.string(
                n,
                &format!("{path}.description"),
                &format!("\"description\"{place}"),
            )
        });
        let declared = decl.get("type").and_then(|n| {
            self.choice(
                n,
                &format!("{path}.type"),
                &format!("\"type\"{place}"),
                ParamType::VARIANTS,
            )
        });
        if decl.contains_key("type") && declared.is_none() {
            return None;
        }
        let mut kind = declared.unwrap_or(ParamType::String);
        let mut default = None;
        if let Some(d) = decl.get("default") {
            let inferred = param_type_of(d.get_ref());
            match declared {
                Some(ParamType::Float) if inferred == ParamType::Integer => {}
                Some(t) if t != inferred => {
                    self.report(
                        d.span(),
                        &format!("{path}.default"),
                        ErrorKind::Type,
                        format!(
                            "the default of param \"{name}\" must be of type {}, got {}",
                            t.name(),
                            describe(d.get_ref())
                        ),
                    );
                    return None;
                }
                Some(_) => {}
                None => kind = inferred,
            }
            match toml_to_json(d.get_ref(), tz) {
                Ok(json) => default = Some(json),
                Err(e) => {
                    self.report(
                        d.span(),
                        &format!("{path}.default"),
                        ErrorKind::Value,
                        format!("param \"{name}\": {e}"),
                    );
                    return None;
                }
            }
        }
        if decl
            .iter()
            .any(|(k, _)| !PARAM_KEYS.contains(&k.get_ref().as_ref()))
        {
            return None;
        }
        Some(ParamSpec {
            name: name.to_string(),
            kind,
            default,
            description,
        })
    }

    fn steps(
        &mut self,
        root: &DeTable<'_>,
        params: &BTreeSet<String>,
        tz: Tz,
        policy: &CmdletPolicy,
    ) -> Option<Vec<Step>> {
        let Some(node) = root.get("steps") else {
            self.report(
                0..0,
                "steps",
                ErrorKind::MissingKey,
                "missing key \"steps\": a runbook needs at least one [[steps]] table".to_string(),
            );
            return None;
        };
        let Some(items) = node.get_ref().as_array() else {
            self.type_error(node, "steps", "\"steps\"", "an array of tables ([[steps]])");
            return None;
        };
        if items.is_empty() {
            self.report(
                node.span(),
                "steps",
                ErrorKind::MissingKey,
                "\"steps\" is empty: a runbook needs at least one [[steps]] table".to_string(),
            );
            return None;
        }

        // First pass: the names, so that references to later steps can be told apart
        // from references to steps that do not exist.
        let mut names: Vec<Option<String>> = Vec::with_capacity(items.len());
        let mut first_use: HashMap<String, usize> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            let name = item
                .get_ref()
                .as_table()
                .and_then(|t| t.get("name"))
                .and_then(|n| match n.get_ref() {
                    DeValue::String(s) if is_identifier(s) => Some((s.to_string(), n.span())),
                    _ => None,
                });
            match name {
                Some((name, span)) => {
                    if let Some(first) = first_use.get(&name) {
                        let (line, _) = items
                            .get(*first)
                            .and_then(|f| f.get_ref().as_table())
                            .and_then(|t| t.get("name"))
                            .map(|n| self.map.position(n.span().start))
                            .unwrap_or((0, 0));
                        self.report(
                            span,
                            &format!("steps[{i}].name"),
                            ErrorKind::Duplicate,
                            format!("duplicate step name \"{name}\" (first used on line {line}); step names must be unique"),
                        );
                        names.push(None);
                    } else {
                        first_use.insert(name.clone(), i);
                        names.push(Some(name));
                    }
                }
                None => names.push(None),
            }
        }

        let mut compiler = TemplateCompiler::new();
        let mut pending = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let Some(table) = item.get_ref().as_table() else {
                self.type_error(
                    item,
                    &format!("steps[{i}]"),
                    &format!("steps[{i}]"),
                    "a table",
                );
                continue;
            };
            if let Some(step) = self.step(i, item, table, &names, params, tz, policy, &mut compiler)
            {
                pending.push(step);
            }
        }
        if pending.len() != items.len() {
            return None;
        }
        let set = compiler.finish();
        Some(
            pending
                .into_iter()
                .map(|p| Step {
                    name: p.name,
                    cmdlet: p.cmdlet,
                    graph: p.graph,
                    for_each: p.for_each,
                    when: p.when,
                    concurrency: p.concurrency,
                    continue_on_error: p.continue_on_error,
                    output: p.output,
                    step_references: p.step_references,
                    key_references: p.key_references,
                    parameters: p.parameters,
                    when_template: p.when_template,
                    templates: set.clone(),
                })
                .collect(),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn step(
        &mut self,
        i: usize,
        node: &Node<'_>,
        table: &DeTable<'_>,
        names: &[Option<String>],
        params: &BTreeSet<String>,
        tz: Tz,
        policy: &CmdletPolicy,
        compiler: &mut TemplateCompiler,
    ) -> Option<PendingStep> {
        let prefix = format!("steps[{i}]");
        let name = names.get(i).cloned().flatten();
        let label = match &name {
            Some(n) => format!("step \"{n}\""),
            None => prefix.clone(),
        };
        let place = format!(" in {label}");
        self.check_keys(table, STEP_KEYS, &prefix, &place, "");

        // The name itself: present, a string, an identifier (duplicates were reported
        // in the first pass).
        match table.get("name") {
            None => self.report(
                node.span(),
                &prefix,
                ErrorKind::MissingKey,
                format!("missing key \"name\" in {label}"),
            ),
            Some(n) => {
                if let Some(s) = self.string(
                    n,
                    &format!("{prefix}.name"),
                    &format!("\"name\" of {label}"),
                ) && !is_identifier(&s)
                {
                    self.report(
                        n.span(),
                        &format!("{prefix}.name"),
                        ErrorKind::Value,
                        format!("step name \"{s}\" must start with a letter or \"_\" and contain only letters, digits and \"_\" (templates use it as steps.{s})"),
                    );
                }
            }
        }

        let graph_node = table.get("graph");
        let cmdlet = match (table.get("cmdlet"), graph_node) {
            (None, None) => {
                self.report(
                    node.span(),
                    &prefix,
                    ErrorKind::MissingKey,
                    format!("missing key \"cmdlet\" in {label} (or \"graph\" for a Microsoft Graph call)"),
                );
                None
            }
            (Some(n), Some(_)) => {
                self.report(
                    n.span(),
                    &format!("{prefix}.cmdlet"),
                    ErrorKind::Value,
                    format!("{label} has both \"cmdlet\" and \"graph\"; a step calls either a cmdlet or Microsoft Graph: split it into two steps"),
                );
                None
            }
            (Some(n), None) => {
                for key in ["query", "headers", "body"] {
                    if let Some(span) = key_span(table, key) {
                        self.report(
                            span,
                            &format!("{prefix}.{key}"),
                            ErrorKind::Value,
                            format!("\"{key}\" of {label} only applies to a Graph step (graph = \"GET /v1.0/…\"); a cmdlet takes parameters"),
                        );
                    }
                }
                self.cmdlet(n, &format!("{prefix}.cmdlet"), &label, policy)
            }
            (None, Some(n)) => self.graph_label(n, &format!("{prefix}.graph"), &label, policy),
        };

        let for_each = table
            .get("for_each")
            .and_then(|n| self.for_each(n, &format!("{prefix}.for_each"), &label, i, names));
        let has_for_each = table.contains_key("for_each");

        let mut step_references = BTreeMap::new();
        let scope = Scope {
            label: &label,
            has_item: has_for_each,
            index: i,
            names,
            params,
        };

        let (when, when_template) = match table.get("when") {
            None => (None, None),
            Some(n) => {
                let key = format!("{prefix}.when");
                match self.string(n, &key, &format!("\"when\"{place}")) {
                    None => (None, None),
                    Some(src) => {
                        let compiled = compiler.expression(&key, &src);
                        let template = self.compiled(
                            n,
                            &key,
                            &src,
                            compiled,
                            &format!("\"when\" of {label}"),
                            &scope,
                            &mut step_references,
                        );
                        (Some(src), template)
                    }
                }
            }
        };

        let concurrency = match table.get("concurrency") {
            None => 1,
            Some(n) => {
                let key = format!("{prefix}.concurrency");
                let value = self
                    .integer(
                        n,
                        &key,
                        &format!("\"concurrency\"{place}"),
                        1..=i64::from(MAX_CONCURRENCY),
                    )
                    .and_then(|c| u32::try_from(c).ok())
                    .unwrap_or(1);
                if value > 1 && !has_for_each {
                    self.report(
                        n.span(),
                        &key,
                        ErrorKind::Value,
                        format!("\"concurrency\"{place} only applies with for_each"),
                    );
                }
                value
            }
        };
        let continue_on_error = table
            .get("continue_on_error")
            .and_then(|n| {
                self.boolean(
                    n,
                    &format!("{prefix}.continue_on_error"),
                    &format!("\"continue_on_error\"{place}"),
                )
            })
            .unwrap_or(false);
        let output = table
            .get("output")
            .and_then(|n| self.output(n, &format!("{prefix}.output"), &label));

        let mut parameters = BTreeMap::new();
        if let (Some(span), Some(_)) = (key_span(table, "parameters"), graph_node) {
            self.report(
                span,
                &format!("{prefix}.parameters"),
                ErrorKind::Value,
                format!("\"parameters\" of {label} only applies to a cmdlet; a Graph step takes query, headers and body"),
            );
        } else if let Some(n) = table.get("parameters") {
            let key = format!("{prefix}.parameters");
            match n.get_ref().as_table() {
                None => self.type_error(
                    n,
                    &key,
                    &format!("\"parameters\"{place}"),
                    "a table such as { Identity = \"…\" }",
                ),
                Some(entries) => {
                    let mut seen: HashMap<String, String> = HashMap::new();
                    for (k, v) in entries.iter() {
                        let pname = k.get_ref().to_string();
                        let pkey = format!("{key}.{pname}");
                        if let Some(stripped) = pname.strip_prefix('-') {
                            self.report(
                                k.span(),
                                &pkey,
                                ErrorKind::Value,
                                format!("parameter \"{pname}\"{place}: write parameter names without the leading \"-\" (\"{stripped}\")"),
                            );
                            continue;
                        }
                        if !is_identifier(&pname) {
                            self.report(
                                k.span(),
                                &pkey,
                                ErrorKind::Value,
                                format!("parameter name \"{pname}\"{place} must contain only letters, digits and \"_\""),
                            );
                            continue;
                        }
                        if let Some(previous) = seen.insert(pname.to_lowercase(), pname.clone()) {
                            self.report(
                                k.span(),
                                &pkey,
                                ErrorKind::Duplicate,
                                format!("parameter \"{pname}\"{place} repeats \"{previous}\" (PowerShell parameter names ignore case)"),
                            );
                            continue;
                        }
                        let location = format!("parameter \"{pname}\" of {label}");
                        if is_opath_parameter(&pname)
                            && let DeValue::String(text) = v.get_ref()
                            && has_template_syntax(text)
                            && let Some(offset) = unquoted_in_opath(text)
                        {
                            let at = self.offset_in_string(v.span(), text, Some(offset));
                            self.report(
                                at..at,
                                &pkey,
                                ErrorKind::Template,
                                format!("{location} is an OPATH filter and a template in it is not quoted, so a value could add filter clauses: pipe it through `| opath` (\"Name -eq {{{{ params.name | opath }}}}\"), which quotes it"),
                            );
                            continue;
                        }
                        if let Some(value) = self.param_value(
                            v,
                            &pkey,
                            &location,
                            tz,
                            &scope,
                            compiler,
                            &mut step_references,
                        ) {
                            parameters.insert(pname, value);
                        }
                    }
                }
            }
        }

        let graph = match graph_node {
            Some(n) if cmdlet.is_some() => self.graph_call(
                n,
                table,
                &prefix,
                &label,
                tz,
                &scope,
                compiler,
                &mut step_references,
            ),
            _ => None,
        };
        let key_references =
            self.key_references(table, &prefix, &label, i, names, &mut step_references);

        Some(PendingStep {
            name: name?,
            graph: if graph_node.is_some() {
                Some(graph?)
            } else {
                None
            },
            key_references,
            cmdlet: cmdlet?,
            for_each: if has_for_each { Some(for_each?) } else { None },
            when,
            when_template,
            concurrency,
            continue_on_error,
            output,
            parameters,
            step_references,
        })
    }

    fn cmdlet(
        &mut self,
        node: &Node<'_>,
        key: &str,
        label: &str,
        policy: &CmdletPolicy,
    ) -> Option<String> {
        let name = self.string(node, key, &format!("\"cmdlet\" of {label}"))?;
        if has_template_syntax(&name) {
            self.report(node.span(), key, ErrorKind::Value, format!("\"cmdlet\" of {label} cannot be a template; name the cmdlet, such as \"Get-Mailbox\""));
            return None;
        }
        if !is_cmdlet_name(&name) {
            self.report(
                node.span(),
                key,
                ErrorKind::Value,
                format!("\"cmdlet\" of {label} must be a Verb-Noun cmdlet name such as \"Get-Mailbox\", got \"{name}\""),
            );
            return None;
        }
        if let Err(denial) = policy.check(&name) {
            self.report(
                node.span(),
                key,
                ErrorKind::Policy,
                format!(
                    "cmdlet \"{name}\" of {label} is not allowed by the cmdlet policy: {denial}"
                ),
            );
            return None;
        }
        Some(name)
    }

    /// `graph = "METHOD /v1.0/path"`: the method, the path's version and the policy.
    /// Returns the call as `METHOD /path`, what the step shows as its `cmdlet`.
    fn graph_label(
        &mut self,
        node: &Node<'_>,
        key: &str,
        label: &str,
        policy: &CmdletPolicy,
    ) -> Option<String> {
        let text = self.string(node, key, &format!("\"graph\" of {label}"))?;
        let example =
            "such as \"GET /v1.0/users\" or \"POST /v1.0/users/{{ item.id }}/assignLicense\"";
        let Some((method, path)) = text.trim().split_once(char::is_whitespace) else {
            self.report(
                node.span(),
                key,
                ErrorKind::Value,
                format!(
                    "\"graph\" of {label} must be a method and a path, {example}; got \"{text}\""
                ),
            );
            return None;
        };
        let (method, path) = (method.to_ascii_uppercase(), path.trim());
        if !GRAPH_METHODS.contains(&method.as_str()) {
            self.report(
                node.span(),
                key,
                ErrorKind::Value,
                format!(
                    "\"graph\" of {label} has the method \"{method}\"; use one of {}",
                    GRAPH_METHODS.join(", ")
                ),
            );
            return None;
        }
        if !GRAPH_VERSIONS.iter().any(|v| path.starts_with(v)) {
            self.report(
                node.span(),
                key,
                ErrorKind::Value,
                format!("the path of \"graph\" of {label} must start with /v1.0/ or /beta/ (the Graph API version), got \"{path}\""),
            );
            return None;
        }
        if path.contains(['?', '#'])
            || path.contains(char::is_whitespace) && !has_template_syntax(path)
        {
            self.report(
                node.span(),
                key,
                ErrorKind::Value,
                format!("the path of \"graph\" of {label} holds a query or spaces; put query options under query = {{ \"$filter\" = \"…\" }}"),
            );
            return None;
        }
        let call = format!("{method} {path}");
        if let Err(denial) = policy.check(&call) {
            self.report(
                node.span(),
                key,
                ErrorKind::Policy,
                format!("Graph call \"{call}\" of {label} is not allowed by the policy: {denial}"),
            );
            return None;
        }
        Some(call)
    }

    /// The path's segments, `query`, `headers` and `body` of a Graph step whose `graph`
    /// key was valid.
    #[allow(clippy::too_many_arguments)]
    fn graph_call(
        &mut self,
        node: &Node<'_>,
        table: &DeTable<'_>,
        prefix: &str,
        label: &str,
        tz: Tz,
        scope: &Scope<'_>,
        compiler: &mut TemplateCompiler,
        usage: &mut BTreeMap<String, StepUsage>,
    ) -> Option<GraphCall> {
        let DeValue::String(text) = node.get_ref() else {
            return None;
        };
        let (method, path) = text.trim().split_once(char::is_whitespace)?;
        let (method, path) = (method.to_ascii_uppercase(), path.trim().to_string());
        let key = format!("{prefix}.graph");
        let mut ok = true;
        let mut segments = Vec::new();
        for (j, segment) in path_segments(&path).into_iter().enumerate() {
            if segment.is_empty() {
                self.report(node.span(), &key, ErrorKind::Value, format!("the path of \"graph\" of {label} has an empty segment (\"//\" or a trailing \"/\")"));
                ok = false;
                continue;
            }
            let compiled = compiler.string_value(&format!("{key}[{j}]"), segment);
            match self.compiled(
                node,
                &key,
                segment,
                compiled,
                &format!("the graph path of {label}"),
                scope,
                usage,
            ) {
                Some(v) => segments.push(v),
                None => ok = false,
            }
        }
        let mut tables: [BTreeMap<String, ValueTemplate>; 2] = Default::default();
        for (slot, part) in tables.iter_mut().zip(["query", "headers"]) {
            let Some(n) = table.get(part) else { continue };
            let pkey = format!("{prefix}.{part}");
            let Some(entries) = n.get_ref().as_table() else {
                self.type_error(
                    n,
                    &pkey,
                    &format!("\"{part}\" of {label}"),
                    "a table such as { \"$select\" = \"id,userPrincipalName\" }",
                );
                ok = false;
                continue;
            };
            for (k, v) in entries.iter() {
                let name = k.get_ref().to_string();
                let vkey = join_key(&pkey, &name);
                if part == "headers"
                    && (reqwest::header::HeaderName::try_from(name.as_str()).is_err()
                        || ["authorization", "host", "content-length"]
                            .contains(&name.to_ascii_lowercase().as_str()))
                {
                    self.report(k.span(), &vkey, ErrorKind::Value, format!("header \"{name}\" of {label} is not a header a runbook may set (the worker sets Authorization, Host and Content-Length)"));
                    ok = false;
                    continue;
                }
                if matches!(v.get_ref(), DeValue::Array(_) | DeValue::Table(_)) {
                    self.type_error(
                        v,
                        &vkey,
                        &format!("{part} \"{name}\" of {label}"),
                        "a string, number or boolean",
                    );
                    ok = false;
                    continue;
                }
                let location = format!("{part} \"{name}\" of {label}");
                match self.param_value(v, &vkey, &location, tz, scope, compiler, usage) {
                    Some(value) => {
                        slot.insert(name, value);
                    }
                    None => ok = false,
                }
            }
        }
        let [query, headers] = tables;
        let body = match table.get("body") {
            None => None,
            Some(n) if matches!(method.as_str(), "GET" | "DELETE") => {
                self.report(n.span(), &format!("{prefix}.body"), ErrorKind::Value, format!("{label} sends {method}, which takes no body; body is for POST, PATCH and PUT"));
                ok = false;
                None
            }
            Some(n) => {
                let bkey = format!("{prefix}.body");
                if n.get_ref().as_table().is_none() {
                    self.type_error(
                        n,
                        &bkey,
                        &format!("\"body\" of {label}"),
                        "a table (the JSON object sent)",
                    );
                    ok = false;
                    None
                } else {
                    let value = self.param_value(
                        n,
                        &bkey,
                        &format!("the body of {label}"),
                        tz,
                        scope,
                        compiler,
                        usage,
                    );
                    ok &= value.is_some();
                    value
                }
            }
        };
        ok.then_some(GraphCall {
            method,
            path,
            segments,
            query,
            headers,
            body,
        })
    }

    /// Every `keys("step", "field")` in the step's strings: the step must come earlier and
    /// both arguments must be quoted strings, so the executor knows before the job starts
    /// which keys to collect. The step is also recorded as read by this one, so the two
    /// never run in one stage.
    fn key_references(
        &mut self,
        table: &DeTable<'_>,
        prefix: &str,
        label: &str,
        index: usize,
        names: &[Option<String>],
        usage: &mut BTreeMap<String, StepUsage>,
    ) -> BTreeMap<String, BTreeSet<String>> {
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut strings = Vec::new();
        for (k, v) in table.iter() {
            if !matches!(
                k.get_ref().as_ref(),
                "name" | "cmdlet" | "for_each" | "output"
            ) {
                collect_strings(v, &join_key(prefix, k.get_ref()), &mut strings);
            }
        }
        for (key, node, text) in strings {
            for call in key_calls(&text) {
                let Some((step, field)) = call else {
                    self.report(node.span(), &key, ErrorKind::Template, format!("keys() in {label} takes two quoted strings, the step and the field: keys(\"disabled\", \"userPrincipalName\")"));
                    continue;
                };
                let position = names
                    .iter()
                    .position(|n| n.as_deref() == Some(step.as_str()));
                match position {
                    Some(p) if p < index => {
                        usage.entry(step.clone()).or_default();
                        out.entry(step).or_default().insert(field);
                    }
                    _ => {
                        let earlier = names[..index.min(names.len())]
                            .iter()
                            .flatten()
                            .map(String::as_str);
                        self.report(
                            node.span(),
                            &key,
                            ErrorKind::Reference,
                            format!(
                                "keys(\"{step}\", …) in {label} must name an earlier step{}",
                                did_you_mean(suggest(&step, earlier))
                            ),
                        );
                    }
                }
            }
        }
        out
    }

    fn for_each(
        &mut self,
        node: &Node<'_>,
        key: &str,
        label: &str,
        index: usize,
        names: &[Option<String>],
    ) -> Option<String> {
        let target = self.string(node, key, &format!("\"for_each\" of {label}"))?;
        let position = names
            .iter()
            .position(|n| n.as_deref() == Some(target.as_str()));
        match position {
            Some(p) if p < index => Some(target),
            Some(p) if p == index => {
                self.report(
                    node.span(),
                    key,
                    ErrorKind::Reference,
                    format!(
                        "{label} cannot iterate over itself; for_each must name an earlier step"
                    ),
                );
                None
            }
            Some(_) => {
                self.report(
                    node.span(),
                    key,
                    ErrorKind::Reference,
                    format!("for_each of {label} names step \"{target}\", which comes later; for_each must name an earlier step"),
                );
                None
            }
            None => {
                let earlier = names[..index.min(names.len())]
                    .iter()
                    .flatten()
                    .map(String::as_str);
                let hint = did_you_mean(suggest(&target, earlier));
                self.report(
                    node.span(),
                    key,
                    ErrorKind::Reference,
                    format!("for_each of {label} names an unknown step \"{target}\"{hint}"),
                );
                None
            }
        }
    }

    fn output(&mut self, node: &Node<'_>, key: &str, label: &str) -> Option<OutputSpec> {
        match node.get_ref() {
            DeValue::String(_) => {
                let format = self.choice(
                    node,
                    key,
                    &format!("\"output\" of {label}"),
                    OutputFormat::VARIANTS,
                )?;
                Some(OutputSpec {
                    format,
                    columns: Vec::new(),
                })
            }
            DeValue::Table(table) => {
                let place = format!(" in output of {label}");
                self.check_keys(table, OUTPUT_KEYS, key, &place, "");
                let Some(format_node) = table.get("format") else {
                    self.report(
                        node.span(),
                        key,
                        ErrorKind::MissingKey,
                        format!("missing key \"format\"{place}"),
                    );
                    return None;
                };
                let format = self.choice(
                    format_node,
                    &format!("{key}.format"),
                    &format!("\"format\"{place}"),
                    OutputFormat::VARIANTS,
                )?;
                let mut columns = Vec::new();
                if let Some(cols) = table.get("columns") {
                    let ckey = format!("{key}.columns");
                    let Some(items) = cols.get_ref().as_array() else {
                        self.type_error(
                            cols,
                            &ckey,
                            &format!("\"columns\"{place}"),
                            "an array of property names",
                        );
                        return None;
                    };
                    for (i, item) in items.iter().enumerate() {
                        let ikey = format!("{ckey}[{i}]");
                        let Some(col) = self.non_empty_string(
                            item,
                            &ikey,
                            &format!("each entry of \"columns\"{place}"),
                        ) else {
                            continue;
                        };
                        if columns.contains(&col) {
                            self.report(
                                item.span(),
                                &ikey,
                                ErrorKind::Duplicate,
                                format!("column \"{col}\" appears twice{place}"),
                            );
                            continue;
                        }
                        columns.push(col);
                    }
                }
                if table
                    .iter()
                    .any(|(k, _)| !OUTPUT_KEYS.contains(&k.get_ref().as_ref()))
                {
                    return None;
                }
                Some(OutputSpec { format, columns })
            }
            _ => {
                self.type_error(
                    node,
                    key,
                    &format!("\"output\" of {label}"),
                    "\"csv\", \"jsonl\" or a table { format = \"csv\", columns = [...] }",
                );
                None
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn param_value(
        &mut self,
        node: &Node<'_>,
        key: &str,
        location: &str,
        tz: Tz,
        scope: &Scope<'_>,
        compiler: &mut TemplateCompiler,
        usage: &mut BTreeMap<String, StepUsage>,
    ) -> Option<ValueTemplate> {
        match node.get_ref() {
            DeValue::String(s) => {
                let compiled = compiler.string_value(key, s);
                self.compiled(node, key, s, compiled, location, scope, usage)
            }
            DeValue::Integer(_) => match integer_value(node.get_ref()) {
                Some(i) => Some(ValueTemplate::Literal(ParamValue::Int(i))),
                None => {
                    self.report(
                        node.span(),
                        key,
                        ErrorKind::Value,
                        format!("{location}: the integer does not fit 64 bits"),
                    );
                    None
                }
            },
            DeValue::Float(_) => match float_value(node.get_ref()) {
                Some(f) if f.is_finite() => Some(ValueTemplate::Literal(ParamValue::Float(f))),
                _ => {
                    self.report(
                        node.span(),
                        key,
                        ErrorKind::Value,
                        format!("{location}: nan and inf are not parameter values"),
                    );
                    None
                }
            },
            DeValue::Boolean(b) => Some(ValueTemplate::Literal(ParamValue::Bool(*b))),
            DeValue::Datetime(dt) => match datetime_to_utc(dt, tz) {
                Ok(t) => Some(ValueTemplate::Literal(ParamValue::DateTime(t))),
                Err(e) => {
                    self.report(
                        node.span(),
                        key,
                        ErrorKind::Value,
                        format!("{location}: {e}"),
                    );
                    None
                }
            },
            DeValue::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                let mut ok = true;
                for (i, item) in items.iter().enumerate() {
                    match self.param_value(
                        item,
                        &format!("{key}[{i}]"),
                        location,
                        tz,
                        scope,
                        compiler,
                        usage,
                    ) {
                        Some(v) => out.push(v),
                        None => ok = false,
                    }
                }
                ok.then(|| ValueTemplate::array(out))
            }
            DeValue::Table(table) => {
                let mut out = BTreeMap::new();
                let mut ok = true;
                for (k, v) in table.iter() {
                    match self.param_value(
                        v,
                        &join_key(key, k.get_ref()),
                        location,
                        tz,
                        scope,
                        compiler,
                        usage,
                    ) {
                        Some(v) => {
                            out.insert(k.get_ref().to_string(), v);
                        }
                        None => ok = false,
                    }
                }
                ok.then(|| ValueTemplate::table(out))
            }
        }
    }

    /// Reports a compile error or checks the references of a compiled template.
    #[allow(clippy::too_many_arguments)]
    fn compiled(
        &mut self,
        node: &Node<'_>,
        key: &str,
        source: &str,
        compiled: Result<(ValueTemplate, HashSet<String>), CompileError>,
        location: &str,
        scope: &Scope<'_>,
        usage: &mut BTreeMap<String, StepUsage>,
    ) -> Option<ValueTemplate> {
        match compiled {
            Err(e) => {
                let at = self.offset_in_string(node.span(), source, e.offset);
                self.report(
                    at..at,
                    key,
                    ErrorKind::Template,
                    format!("template error in {location}: {}", e.detail),
                );
                None
            }
            Ok((template, variables)) => {
                let before = self.errors.len();
                let mut variables: Vec<String> = variables.into_iter().collect();
                variables.sort();
                for variable in variables {
                    self.reference(node, key, location, &variable, scope, usage);
                }
                (self.errors.len() == before).then_some(template)
            }
        }
    }

    /// Where a problem at `offset` inside a string value lies in the file: exact when the
    /// string is written without escapes, else the start of the value.
    fn offset_in_string(&self, span: Range<usize>, source: &str, offset: Option<usize>) -> usize {
        let raw = self.map.slice(span.clone()).unwrap_or_default();
        let plain = [("\"", "\""), ("'", "'")].iter().any(|(open, close)| {
            raw.strip_prefix(open).and_then(|r| r.strip_suffix(close)) == Some(source)
        });
        match offset {
            Some(o) if plain && o <= source.len() => span.start + 1 + o,
            _ => span.start,
        }
    }

    fn reference(
        &mut self,
        node: &Node<'_>,
        key: &str,
        location: &str,
        variable: &str,
        scope: &Scope<'_>,
        usage: &mut BTreeMap<String, StepUsage>,
    ) {
        let parts: Vec<&str> = variable.split('.').collect();
        let problem = |message: String| (ErrorKind::Reference, message);
        let error = match parts.as_slice() {
            ["item", ..] if !scope.has_item => Some(problem(format!(
                "{location} uses \"item\", which only exists in steps with for_each; {} has no for_each",
                scope.label
            ))),
            ["item", ..] | ["now"] | ["job"] | ["params"] => None,
            ["job", attribute, ..] if !JOB_ATTRIBUTES.contains(attribute) => {
                Some(problem(format!(
                    "{location} uses unknown \"job.{attribute}\"{} (job has {})",
                    did_you_mean(suggest(attribute, JOB_ATTRIBUTES.iter().copied())),
                    JOB_ATTRIBUTES.join(", ")
                )))
            }
            ["job", ..] => None,
            ["params", param, ..] if !scope.params.contains(*param) => Some(problem(format!(
                "{location} uses undeclared param \"{param}\"{}; declare it under [params]",
                did_you_mean(suggest(param, scope.params.iter().map(String::as_str)))
            ))),
            ["params", ..] => None,
            [root @ ("vars" | "secrets")] => Some(problem(format!(
                "{location}: refer to one of them as {root}.<name> (the names are in the settings' [{root}])"
            ))),
            ["vars", name, ..] => {
                self.vars_used.insert((*name).to_string());
                None
            }
            ["secrets", name, ..] => {
                self.secrets_used.insert((*name).to_string());
                None
            }
            ["steps"] => Some(problem(format!(
                "{location}: refer to a step's results as steps.<name>.count or steps.<name>.records"
            ))),
            ["steps", step, rest @ ..] => {
                let position = scope.names.iter().position(|n| n.as_deref() == Some(*step));
                match (position, rest.first()) {
                    (None, _) => {
                        let all = scope.names.iter().flatten().map(String::as_str);
                        Some(problem(format!(
                            "{location} uses unknown step \"{step}\"{}",
                            did_you_mean(suggest(step, all))
                        )))
                    }
                    (Some(p), _) if p == scope.index => Some(problem(format!(
                        "{location} uses steps.{step}, its own results; templates can only use earlier steps"
                    ))),
                    (Some(p), _) if p > scope.index => Some(problem(format!(
                        "{location} uses steps.{step}, which runs later; templates can only use earlier steps"
                    ))),
                    (Some(_), None) => Some(problem(format!(
                        "{location}: use steps.{step}.count or steps.{step}.records, not steps.{step} alone"
                    ))),
                    (Some(_), Some(attribute)) if !STEP_ATTRIBUTES.contains(attribute) => {
                        Some(problem(format!(
                            "{location} uses unknown \"steps.{step}.{attribute}\" (a step has count and records)"
                        )))
                    }
                    (Some(_), Some(attribute)) => {
                        let entry = usage.entry((*step).to_string()).or_default();
                        if *attribute == "records" {
                            entry.records = true;
                        } else {
                            entry.count = true;
                        }
                        None
                    }
                }
            }
            ["now", ..] => Some(problem(format!(
                "{location}: \"now\" is a string and has no attributes"
            ))),
            [root, ..] if BUILTIN_GLOBALS.contains(root) => None,
            [root, ..] => {
                let known = TEMPLATE_VARIABLES.iter().copied();
                Some(problem(format!(
                    "{location} uses unknown variable \"{root}\"{} (templates can use {})",
                    did_you_mean(suggest(root, known)),
                    TEMPLATE_VARIABLES.join(", ")
                )))
            }
            [] => None,
        };
        if let Some((kind, message)) = error {
            self.report(node.span(), key, kind, message);
        }
    }
}

/// The span of `name` as a key of `table`.
fn key_span(table: &DeTable<'_>, name: &str) -> Option<Range<usize>> {
    table
        .iter()
        .find(|(k, _)| k.get_ref().as_ref() == name)
        .map(|(k, _)| k.span())
}

/// A Graph path split at the `/`s outside `{{ … }}`, without the leading empty part.
fn path_segments(path: &str) -> Vec<&str> {
    let mut segments = Vec::new();
    let (mut start, mut depth, mut i) = (1, 0usize, 1);
    let bytes = path.as_bytes();
    while i < bytes.len() {
        if path[i..].starts_with("{{") {
            depth += 1;
            i += 2;
            continue;
        }
        if path[i..].starts_with("}}") {
            depth = depth.saturating_sub(1);
            i += 2;
            continue;
        }
        if bytes[i] == b'/' && depth == 0 {
            segments.push(&path[start..i]);
            start = i + 1;
        }
        i += 1;
    }
    segments.push(path.get(start..).unwrap_or_default());
    segments
}

/// Every string inside `node`, with its key.
fn collect_strings<'n, 'i>(
    node: &'n Node<'i>,
    key: &str,
    out: &mut Vec<(String, &'n Node<'i>, String)>,
) {
    match node.get_ref() {
        DeValue::String(s) => out.push((key.to_string(), node, s.to_string())),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                collect_strings(item, &format!("{key}[{i}]"), out);
            }
        }
        DeValue::Table(table) => {
            for (k, v) in table.iter() {
                collect_strings(v, &join_key(key, k.get_ref()), out);
            }
        }
        _ => {}
    }
}

/// The arguments of each `keys(…)` call in a template's text: `Some((step, field))` when
/// both are quoted strings, `None` otherwise.
pub(crate) fn key_calls(text: &str) -> Vec<Option<(String, String)>> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = text[from..].find("keys(").map(|a| a + from) {
        from = at + 5;
        let before = text[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.') {
            continue;
        }
        let rest = &text[from..];
        let args = rest.split_once(')').map(|(a, _)| a).unwrap_or(rest);
        let parsed: Vec<Option<String>> = args
            .split(',')
            .map(|a| {
                let a = a.trim();
                ['"', '\'']
                    .iter()
                    .find_map(|q| a.strip_prefix(*q).and_then(|r| r.strip_suffix(*q)))
                    .filter(|v| !v.is_empty() && !v.contains(['"', '\'']))
                    .map(str::to_string)
            })
            .collect();
        out.push(match parsed.as_slice() {
            [Some(step), Some(field)] => Some((step.clone(), field.clone())),
            _ => None,
        });
    }
    out
}

fn join_key(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

mod notify;
#[cfg(test)]
mod tests;
