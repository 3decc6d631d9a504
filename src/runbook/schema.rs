//! The runbook file format as serde types, for the JSON Schema editors use
//! (`runbooks/runbook.schema.json`) and nothing else.
//!
//! Validation does not deserialise into these types (it walks the span-carrying TOML tree
//! to report every error with its position); they describe the same format for schemars.
//! Tests keep the two in step: the keys here equal the validator's key lists, every example
//! runbook deserialises into [`RunbookDocument`], and the checked-in schema equals
//! [`json_schema`]'s output byte for byte (regenerate with
//! `UPDATE_SCHEMA=1 cargo test --test integration runbook::the_schema_file_matches_the_rust_types`).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::model::{Missed, OnInterrupt, OutputFormat, Overlap, ParamType};

/// A runbook file: one Exchange Online admin job. The file name without `.toml` is the
/// runbook's name.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "runbook-worker runbook")]
pub struct RunbookDocument {
    /// What the runbook does and why; shown on the dashboard and by `validate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// When to run: a cron expression with 5 fields (minute hour day-of-month month
    /// day-of-week) or 6 (seconds first), or a list of them. `L` (last day) and `#` (nth
    /// weekday, `5#2` = second Friday) work. Without it the runbook only runs on demand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleDocument>,
    /// Several schedules, each with its own cron, optional time zone (default the
    /// runbook's) and parameter values (Azure Automation's schedule links). Not together
    /// with `schedule`. A param without a default must be given by every schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub schedules: Option<Vec<ScheduleTable>>,
    /// The IANA time zone the schedule is read in, such as "Europe/Berlin"; default UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// The whole job's time limit, such as "45m" or "1h 30m"; default 3h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Whether the schedule fires; default true. A disabled runbook can still be run on
    /// demand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// The user-assigned managed identity this runbook's jobs use instead of `[identity]`;
    /// exactly one key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentityDocument>,
    /// The tenant's initial domain (contoso.onmicrosoft.com), overriding `[exchange]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
    /// Blast-radius guard: the most writes one job may make. When a for_each would make
    /// more, the job fails before its first write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_changes: Option<u64>,
    /// Whole-job retries after a Failed job: a number of attempts, or a table
    /// with the delay before the first retry (doubling each time, at most 1h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetriesDocument>,
    /// Runbook parameters with their defaults, overridable per run (`--param key=value`).
    /// Templates read them as `params.<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<BTreeMap<String, ParamDocument>>,
    /// What to do when an occurrence is due while the previous job still runs; default
    /// "skip".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap: Option<Overlap>,
    /// What to do about occurrences missed while no worker ran; default "skip".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed: Option<Missed>,
    /// With missed = "run-once": missed occurrences older than this are not caught up,
    /// such as "6h".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lateness: Option<String>,
    /// Start each occurrence up to this much later, at random (at most 1h), such as "30s".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<String>,
    /// No occurrence before this TOML datetime (with an offset, or local time in
    /// `timezone`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub start_at: Option<toml::value::Datetime>,
    /// No occurrence after this TOML datetime (with an offset, or local time in
    /// `timezone`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub end_at: Option<toml::value::Datetime>,
    /// What to do with a job whose worker died mid-run; default "ignore" (a half-done
    /// mailbox job is not repeated blindly).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_interrupt: Option<OnInterrupt>,
    /// The notification targets (`name`s of `[[notify.targets]]` in the settings) told
    /// when a job of this runbook fails or recovers; default `notify.default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub notify: Option<Vec<String>>,
    /// The steps, run in order.
    #[schemars(length(min = 1))]
    pub steps: Vec<StepDocument>,
}

/// One cron expression or several.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ScheduleDocument {
    One(String),
    Many(#[schemars(length(min = 1))] Vec<String>),
}

/// One `[[schedules]]` entry.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleTable {
    /// A cron expression or a list of them, as for `schedule`.
    pub cron: ScheduleDocument,
    /// The IANA time zone this schedule is read in; default the runbook's `timezone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Values of declared `[params]` for this schedule's jobs, over their defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<BTreeMap<String, serde_json::Value>>,
}

/// Exactly one way to name a user-assigned managed identity.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
pub struct IdentityDocument {
    /// The identity's client (application) id, a GUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The identity's object (principal) id, a GUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_id: Option<String>,
    /// The identity's ARM resource id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_id: Option<String>,
}

/// Retries as a count, or with a backoff.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum RetriesDocument {
    /// Retries after the first attempt (0 to 10), waiting 1m, then 2m, 4m, …
    Attempts(#[schemars(range(min = 0, max = 10))] u32),
    Table(RetriesTable),
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetriesTable {
    /// Retries after the first attempt (0 to 10).
    #[schemars(range(min = 0, max = 10))]
    pub attempts: u32,
    /// The delay before the first retry, doubling each time (at most 1h); default "1m".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<String>,
}

/// A parameter: its default value, or a table with `default`, `description` and `type`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ParamDocument {
    Declared(ParamTable),
    /// The default value (a string, number, boolean, datetime or array).
    #[schemars(schema_with = "param_default_schema")]
    Default(serde_json::Value),
}

fn param_default_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": ["string", "integer", "number", "boolean", "array"]
    })
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParamTable {
    /// The value when a run gives none. Without one the parameter is required, which
    /// only a runbook without a schedule may have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<serde_json::Value>,
    /// What the parameter means, for operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The type overrides must have; default: the default's type, else "string".
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<ParamType>,
}

/// One step: a cmdlet or a Microsoft Graph call, made once, or once per record of an
/// earlier step.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("oneOf" = [{"required": ["cmdlet"]}, {"required": ["graph"]}]))]
pub struct StepDocument {
    /// Unique in the runbook; letters, digits and "_" (templates use `steps.<name>`).
    #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$"))]
    pub name: String,
    /// The Exchange Online cmdlet, Verb-Noun, such as "Get-Mailbox". The `[policy]`
    /// settings decide which are allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z]+-[A-Za-z][A-Za-z0-9]*$"))]
    pub cmdlet: Option<String>,
    /// A Microsoft Graph call instead of a cmdlet: "METHOD /v1.0/path" (GET, POST, PATCH,
    /// PUT or DELETE; the path starts with /v1.0/ or /beta/ and may hold templates, each
    /// filling one path segment), such as "GET /v1.0/users" or
    /// "POST /v1.0/users/{{ item.id }}/assignLicense". GET collections stream page by page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z]+\s+/(v1\.0|beta)/\S"))]
    pub graph: Option<String>,
    /// Graph steps: query options, such as { "$filter" = "accountEnabled eq false",
    /// "$select" = "id,userPrincipalName" }. Values may hold templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<BTreeMap<String, serde_json::Value>>,
    /// Graph steps: request headers, such as { ConsistencyLevel = "eventual" }.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, serde_json::Value>>,
    /// Graph steps with POST, PATCH or PUT: the JSON body, as a table. Strings may hold
    /// templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<BTreeMap<String, serde_json::Value>>,
    /// The cmdlet's parameters: strings, integers, floats, booleans (switches), arrays,
    /// inline tables (hashtables) and datetimes. Strings may hold `{{ … }}` templates over
    /// item, steps, params, job and now; a string that is exactly one `{{ expression }}`
    /// keeps the expression's type. Write "{{ none }}" for $null.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<BTreeMap<String, serde_json::Value>>,
    /// Run once per record of this earlier step (the record is `item`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_each: Option<String>,
    /// A minijinja expression; the call is made only when it is true, such as
    /// "item.LitigationHoldEnabled == false".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// With for_each: how many calls run at once (1 to 32); default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 32))]
    pub concurrency: Option<u32>,
    /// Record a failed call and go on (the job ends CompletedWithErrors) instead of
    /// failing the job; default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continue_on_error: Option<bool>,
    /// Keep the step's records as a report under the state folder: "csv", "jsonl", or a
    /// table with `format` and `columns`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputDocument>,
}

/// A report format, or a format with the columns to keep.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum OutputDocument {
    Format(OutputFormat),
    Table(OutputTable),
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutputTable {
    pub format: OutputFormat,
    /// Record properties to keep, in this order; default: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
}

/// The JSON Schema of runbook files (draft-07, which Taplo and Even Better TOML read),
/// pretty-printed with a final newline: the exact contents of
/// `runbooks/runbook.schema.json`.
pub fn json_schema() -> String {
    let generator = schemars::generate::SchemaSettings::draft07().into_generator();
    let schema = generator.into_root_schema_for::<RunbookDocument>();
    let mut value = schema.to_value();
    tidy(&mut value);
    let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
    text.push('\n');
    text
}

/// Adapts schemars' output to TOML: TOML has no null, so the `null` schemars adds for every
/// `Option` is dropped, and doc comments' line wraps become spaces so that editors reflow
/// the descriptions.
fn tidy(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            if let Some(Value::Array(types)) = map.get("type") {
                let kept: Vec<Value> = types
                    .iter()
                    .filter(|t| t.as_str() != Some("null"))
                    .cloned()
                    .collect();
                let replacement = match kept.as_slice() {
                    [one] => one.clone(),
                    _ => Value::Array(kept),
                };
                map.insert("type".to_string(), replacement);
            }
            if let Some(Value::Array(options)) = map.get("anyOf") {
                let kept: Vec<Value> = options
                    .iter()
                    .filter(|o| o.get("type").and_then(Value::as_str) != Some("null"))
                    .cloned()
                    .collect();
                // A lone `$ref` stays wrapped in anyOf: draft-07 ignores the siblings of a
                // `$ref`, and the description beside it is what editors show.
                map.insert("anyOf".to_string(), Value::Array(kept));
            }
            if let Some(Value::String(description)) = map.get_mut("description") {
                *description = description
                    .split("\n\n")
                    .map(|paragraph| paragraph.replace('\n', " "))
                    .collect::<Vec<_>>()
                    .join("\n\n");
            }
            for child in map.values_mut() {
                tidy(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(tidy),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runbook::model::{Missed, OnInterrupt, OutputFormat, Overlap, ParamType};
    use crate::runbook::parse::{
        IDENTITY_KEYS, OUTPUT_KEYS, PARAM_KEYS, RETRIES_KEYS, SCHEDULE_KEYS, STEP_KEYS,
        TOP_LEVEL_KEYS,
    };

    fn properties(schema: &serde_json::Value, definition: Option<&str>) -> Vec<String> {
        let node = match definition {
            None => schema,
            Some(name) => &schema["definitions"][name],
        };
        let mut keys: Vec<String> = node["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("no properties in {definition:?}"))
            .keys()
            .cloned()
            .collect();
        keys.sort();
        keys
    }

    fn sorted(keys: &[&str]) -> Vec<String> {
        let mut keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        keys.sort();
        keys
    }

    #[test]
    fn the_schema_and_the_validator_know_the_same_keys() {
        let schema: serde_json::Value = serde_json::from_str(&json_schema()).unwrap();
        let cases: [(Option<&str>, &[&str]); 7] = [
            (None, TOP_LEVEL_KEYS),
            (Some("StepDocument"), STEP_KEYS),
            (Some("ScheduleTable"), SCHEDULE_KEYS),
            (Some("IdentityDocument"), IDENTITY_KEYS),
            (Some("ParamTable"), PARAM_KEYS),
            (Some("RetriesTable"), RETRIES_KEYS),
            (Some("OutputTable"), OUTPUT_KEYS),
        ];
        for (definition, keys) in cases {
            assert_eq!(
                properties(&schema, definition),
                sorted(keys),
                "{definition:?}"
            );
        }
    }

    fn enum_values(schema: &serde_json::Value, name: &str) -> Vec<String> {
        let mut values: Vec<String> = schema["definitions"][name]["enum"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .or_else(|| {
                schema["definitions"][name]["oneOf"].as_array().map(|a| {
                    a.iter()
                        .filter_map(|v| v["const"].as_str().or_else(|| v["enum"][0].as_str()))
                        .map(str::to_string)
                        .collect()
                })
            })
            .unwrap_or_default();
        values.sort();
        values
    }

    fn names<T>(variants: &[(&str, T)]) -> Vec<String> {
        let mut names: Vec<String> = variants.iter().map(|(n, _)| n.to_string()).collect();
        names.sort();
        names
    }

    #[test]
    fn the_schema_and_the_validator_know_the_same_choices() {
        let schema: serde_json::Value = serde_json::from_str(&json_schema()).unwrap();
        assert_eq!(
            enum_values(&schema, "OverlapPolicy"),
            names(Overlap::VARIANTS)
        );
        assert_eq!(
            enum_values(&schema, "MissedPolicy"),
            names(Missed::VARIANTS)
        );
        assert_eq!(
            enum_values(&schema, "OnInterrupt"),
            names(OnInterrupt::VARIANTS)
        );
        assert_eq!(
            enum_values(&schema, "ParamType"),
            names(ParamType::VARIANTS)
        );
        assert_eq!(
            enum_values(&schema, "OutputFormat"),
            names(OutputFormat::VARIANTS)
        );
    }
}
