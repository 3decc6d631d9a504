//! Runbook parameters for one run: the declared defaults with the run's overrides
//! (`run --param key=value`, the API's JSON body) checked against the declared types.

use std::collections::BTreeMap;

use serde_json::Value as Json;

use super::model::{ParamType, Runbook};
use super::parse::{datetime_to_utc, suggest, toml_to_json};

/// One override, as the caller received it.
#[derive(Clone, Debug, PartialEq)]
pub enum ParamInput {
    /// Text from the command line (`--param limit=5`): read according to the declared
    /// type; arrays, tables and datetimes are written as TOML values (`[1, 2]`,
    /// `{ Add = "x" }`, `2025-01-01T00:00:00Z`), strings are taken verbatim.
    Text(String),
    /// A JSON value from the API: must already have the declared type (an integer is a
    /// valid float; a datetime is an RFC 3339 or TOML datetime string).
    Json(Json),
}

/// Why the parameters of a run are not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error("runbook \"{runbook}\" has no param \"{name}\"{hint}")]
    Unknown {
        runbook: String,
        name: String,
        hint: String,
    },
    #[error("param \"{name}\" of runbook \"{runbook}\" must be {expected}: {problem}")]
    Invalid {
        runbook: String,
        name: String,
        expected: &'static str,
        problem: String,
    },
    #[error(
        "param \"{name}\" of runbook \"{runbook}\" has no default; give it a value (--param {name}=…)"
    )]
    Missing { runbook: String, name: String },
}

/// Every problem with the parameters of one run, so that a caller can fix them all at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamErrors(pub Vec<ParamError>);

impl ParamErrors {
    pub fn iter(&self) -> impl Iterator<Item = &ParamError> {
        self.0.iter()
    }
}

impl std::fmt::Display for ParamErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let texts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&texts.join("; "))
    }
}

impl std::error::Error for ParamErrors {}

fn expected(kind: ParamType) -> &'static str {
    match kind {
        ParamType::String => "a string",
        ParamType::Integer => "an integer",
        ParamType::Float => "a number",
        ParamType::Boolean => "true or false",
        ParamType::Datetime => "a datetime such as 2025-01-01T00:00:00Z",
        ParamType::Array => "an array such as [\"a\", \"b\"]",
        ParamType::Table => "a table such as { Add = \"x\" }",
    }
}

impl Runbook {
    /// The parameters of one run: every declared param, from `overrides` when given
    /// there, else its default. The result is what [`super::TemplateContext::new`] takes.
    pub fn resolve_params<I>(&self, overrides: I) -> Result<BTreeMap<String, Json>, ParamErrors>
    where
        I: IntoIterator<Item = (String, ParamInput)>,
    {
        let mut values: BTreeMap<String, Json> = BTreeMap::new();
        let mut problems = Vec::new();
        let mut named = std::collections::BTreeSet::new();
        for (name, input) in overrides {
            named.insert(name.clone());
            let Some(spec) = self.params.get(&name) else {
                let hint = suggest(&name, self.params.keys().map(String::as_str))
                    .map(|s| format!(" (did you mean \"{s}\"?)"))
                    .unwrap_or_else(|| {
                        if self.params.is_empty() {
                            " (it declares no [params])".to_string()
                        } else {
                            let names: Vec<&str> = self.params.keys().map(String::as_str).collect();
                            format!(" (it has {})", names.join(", "))
                        }
                    });
                problems.push(ParamError::Unknown {
                    runbook: self.name.clone(),
                    name,
                    hint,
                });
                continue;
            };
            match self.convert(spec.kind, input) {
                Ok(value) => {
                    values.insert(name, value);
                }
                Err(problem) => problems.push(ParamError::Invalid {
                    runbook: self.name.clone(),
                    name: name.clone(),
                    expected: expected(spec.kind),
                    problem,
                }),
            }
        }
        for (name, spec) in &self.params {
            if values.contains_key(name) || named.contains(name) {
                continue;
            }
            match &spec.default {
                Some(default) => {
                    values.insert(name.clone(), default.clone());
                }
                None => problems.push(ParamError::Missing {
                    runbook: self.name.clone(),
                    name: name.clone(),
                }),
            }
        }
        if problems.is_empty() {
            Ok(values)
        } else {
            Err(ParamErrors(problems))
        }
    }

    /// The parameters of a job of schedule `index`: the schedule's values over the
    /// defaults (checked at load, so this fails only for an index the runbook lacks or a
    /// required param the schedule does not give, which validation refuses).
    pub fn schedule_params(&self, index: usize) -> Result<BTreeMap<String, Json>, ParamErrors> {
        let given = self
            .schedule_entries
            .iter()
            .find(|e| e.index == index)
            .map(|e| e.params.clone())
            .unwrap_or_default();
        self.resolve_params(
            given
                .into_iter()
                .map(|(name, value)| (name, ParamInput::Json(value))),
        )
    }

    fn convert(&self, kind: ParamType, input: ParamInput) -> Result<Json, String> {
        match input {
            ParamInput::Text(text) => self.convert_text(kind, &text),
            ParamInput::Json(json) => self.convert_json(kind, json),
        }
    }

    fn convert_text(&self, kind: ParamType, text: &str) -> Result<Json, String> {
        let trimmed = text.trim();
        match kind {
            ParamType::String => Ok(Json::String(text.to_string())),
            ParamType::Integer => trimmed
                .parse::<i64>()
                .map(Json::from)
                .map_err(|_| format!("got \"{text}\"")),
            ParamType::Float => trimmed
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map(Json::Number)
                .ok_or_else(|| format!("got \"{text}\"")),
            ParamType::Boolean => match trimmed.to_ascii_lowercase().as_str() {
                "true" | "$true" => Ok(Json::Bool(true)),
                "false" | "$false" => Ok(Json::Bool(false)),
                _ => Err(format!("got \"{text}\"")),
            },
            ParamType::Datetime => self.datetime_text(trimmed),
            ParamType::Array | ParamType::Table => {
                let parsed = toml::de::DeValue::parse(trimmed).map_err(|e| {
                    format!(
                        "got \"{text}\", which is not a TOML value: {}",
                        e.message().trim()
                    )
                })?;
                let value = parsed.get_ref();
                let matches = match kind {
                    ParamType::Array => value.is_array(),
                    _ => value.is_table(),
                };
                if !matches {
                    return Err(format!("got \"{text}\""));
                }
                toml_to_json(value, self.timezone)
            }
        }
    }

    fn datetime_text(&self, text: &str) -> Result<Json, String> {
        let dt = text
            .parse::<toml::value::Datetime>()
            .map_err(|_| format!("got \"{text}\""))?;
        let t = datetime_to_utc(&dt, self.timezone)?;
        Ok(Json::String(
            t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        ))
    }

    fn convert_json(&self, kind: ParamType, json: Json) -> Result<Json, String> {
        let ok = match (kind, &json) {
            (ParamType::String, Json::String(_)) => true,
            (ParamType::Integer, Json::Number(n)) => n.is_i64(),
            (ParamType::Float, Json::Number(_)) => true,
            (ParamType::Boolean, Json::Bool(_)) => true,
            (ParamType::Array, Json::Array(_)) => true,
            (ParamType::Table, Json::Object(_)) => true,
            (ParamType::Datetime, Json::String(s)) => return self.datetime_text(s),
            _ => false,
        };
        if ok {
            Ok(json)
        } else {
            Err(format!("got {json}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runbook::{CmdletPolicy, parse_runbook};
    use serde_json::json;

    fn runbook() -> Runbook {
        let text = r#"
timezone = "Europe/Berlin"
[params]
department = "Sales"
limit = 5
ratio = 0.5
dry = false
since = 2025-01-01T00:00:00Z
names = ["a"]
extra = { default = { Add = "x" } }
group = { type = "string" }

[[steps]]
name = "find"
cmdlet = "Get-Mailbox"
"#;
        parse_runbook("r", "r.toml", text, &CmdletPolicy::default()).unwrap()
    }

    fn text(pairs: &[(&str, &str)]) -> Vec<(String, ParamInput)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), ParamInput::Text(v.to_string())))
            .collect()
    }

    #[test]
    fn defaults_fill_what_the_run_does_not_give() {
        let values = runbook().resolve_params(text(&[("group", "Ops")])).unwrap();
        assert_eq!(values["department"], json!("Sales"));
        assert_eq!(values["limit"], json!(5));
        assert_eq!(values["since"], json!("2025-01-01T00:00:00Z"));
        assert_eq!(values["extra"], json!({"Add": "x"}));
        assert_eq!(values["group"], json!("Ops"));
    }

    #[test]
    fn text_overrides_are_read_by_the_declared_type() {
        let cases: Vec<(&str, &str, serde_json::Value)> = vec![
            ("department", " Sales, EMEA ", json!(" Sales, EMEA ")),
            ("limit", "12", json!(12)),
            ("ratio", "2", json!(2.0)),
            ("dry", "TRUE", json!(true)),
            ("dry", "$false", json!(false)),
            (
                "since",
                "2025-06-01T12:00:00",
                json!("2025-06-01T10:00:00Z"),
            ),
            (
                "since",
                "2025-06-01T12:00:00+01:00",
                json!("2025-06-01T11:00:00Z"),
            ),
            ("names", "[\"x\", \"y\"]", json!(["x", "y"])),
            ("extra", "{ Remove = \"y\" }", json!({"Remove": "y"})),
        ];
        for (name, input, expected) in cases {
            let mut overrides = text(&[(name, input)]);
            overrides.push(("group".to_string(), ParamInput::Text("g".to_string())));
            let values = runbook().resolve_params(overrides).unwrap();
            assert_eq!(values[name], expected, "{name}={input}");
        }
    }

    #[test]
    fn every_problem_is_named_at_once() {
        let errors = runbook()
            .resolve_params(text(&[("limt", "1"), ("dry", "yes")]))
            .unwrap_err();
        let texts: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(texts.len(), 3, "{texts:#?}");
        assert!(texts[0].contains("no param \"limt\""), "{texts:#?}");
        assert!(texts[1].contains("\"dry\" of runbook \"r\" must be true or false"));
        assert!(texts[2].contains("\"group\" of runbook \"r\" has no default"));
        assert_eq!(errors.to_string(), texts.join("; "));
    }

    #[test]
    fn bad_overrides_name_the_param_and_the_type() {
        let cases: Vec<(Vec<(String, ParamInput)>, &str)> = vec![
            (
                text(&[("limt", "1")]),
                "runbook \"r\" has no param \"limt\" (did you mean \"limit\"?)",
            ),
            (
                text(&[("limit", "many"), ("group", "g")]),
                "param \"limit\" of runbook \"r\" must be an integer: got \"many\"",
            ),
            (
                text(&[("dry", "yes"), ("group", "g")]),
                "param \"dry\" of runbook \"r\" must be true or false: got \"yes\"",
            ),
            (
                text(&[("names", "a,b"), ("group", "g")]),
                "param \"names\" of runbook \"r\" must be an array such as [\"a\", \"b\"]: got \"a,b\", which is not a TOML value",
            ),
            (
                vec![("limit".to_string(), ParamInput::Json(json!(1.5)))],
                "param \"limit\" of runbook \"r\" must be an integer: got 1.5",
            ),
            (
                vec![("department".to_string(), ParamInput::Json(json!(["x"])))],
                "param \"department\" of runbook \"r\" must be a string: got [\"x\"]",
            ),
            (
                text(&[]),
                "param \"group\" of runbook \"r\" has no default; give it a value (--param group=…)",
            ),
        ];
        for (overrides, expected) in cases {
            let err = runbook().resolve_params(overrides).unwrap_err().to_string();
            assert!(err.starts_with(expected), "{err}\n  expected {expected}");
        }
    }

    #[test]
    fn json_overrides_keep_their_types() {
        let values = runbook()
            .resolve_params(vec![
                ("ratio".to_string(), ParamInput::Json(json!(3))),
                ("group".to_string(), ParamInput::Json(json!("g"))),
                (
                    "since".to_string(),
                    ParamInput::Json(json!("2025-02-01T00:00:00Z")),
                ),
            ])
            .unwrap();
        assert_eq!(values["ratio"], json!(3));
        assert_eq!(values["since"], json!("2025-02-01T00:00:00Z"));
    }
}
