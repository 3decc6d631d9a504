//! Cmdlet parameter values, as the caller hands them to [`super`]. Turning them into the
//! InvokeCommand JSON is [`super::encode`]'s job alone; this module only builds values
//! (from Rust values, from JSON, from a command-line `NAME=VALUE`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;

/// One parameter value of a cmdlet call.
#[derive(Clone, Debug, PartialEq)]
pub enum ParamValue {
    Null,
    /// Booleans and switches (`-Archive` is `Archive = true`).
    Bool(bool),
    Int(i64),
    Float(f64),
    String(String),
    /// Sent as UTC without `Z`, as the module does.
    DateTime(DateTime<Utc>),
    Array(Vec<ParamValue>),
    /// A PowerShell hashtable (`@{Add='smtp:…'}`).
    HashTable(BTreeMap<String, ParamValue>),
}

/// Named parameters of one cmdlet call.
pub type Parameters = BTreeMap<String, ParamValue>;

/// Builds [`Parameters`] from pairs: `parameters([("Identity", "a@contoso.com".into())])`.
pub fn parameters<K, I>(pairs: I) -> Parameters
where
    K: Into<String>,
    I: IntoIterator<Item = (K, ParamValue)>,
{
    pairs.into_iter().map(|(k, v)| (k.into(), v)).collect()
}

impl ParamValue {
    /// A JSON value as a parameter: objects become hashtables, arrays arrays, numbers `Int`
    /// when they are integers.
    pub fn from_json(value: Value) -> Self {
        match value {
            Value::Null => ParamValue::Null,
            Value::Bool(b) => ParamValue::Bool(b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => ParamValue::Int(i),
                None => ParamValue::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            Value::String(s) => ParamValue::String(s),
            Value::Array(items) => {
                ParamValue::Array(items.into_iter().map(ParamValue::from_json).collect())
            }
            Value::Object(map) => ParamValue::HashTable(
                map.into_iter()
                    .map(|(k, v)| (k, ParamValue::from_json(v)))
                    .collect(),
            ),
        }
    }

    /// A command-line value (`--param NAME=VALUE`): text that parses as JSON is that JSON
    /// value (`true`, `10`, `{"Add":"smtp:a@contoso.com"}`), anything else a string.
    pub fn from_cli(text: &str) -> Self {
        match serde_json::from_str::<Value>(text) {
            Ok(value) => ParamValue::from_json(value),
            Err(_) => ParamValue::String(text.to_string()),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            ParamValue::String(s) => Some(s),
            _ => None,
        }
    }
}

impl From<bool> for ParamValue {
    fn from(b: bool) -> Self {
        ParamValue::Bool(b)
    }
}

impl From<i64> for ParamValue {
    fn from(i: i64) -> Self {
        ParamValue::Int(i)
    }
}

impl From<i32> for ParamValue {
    fn from(i: i32) -> Self {
        ParamValue::Int(i64::from(i))
    }
}

impl From<u32> for ParamValue {
    fn from(i: u32) -> Self {
        ParamValue::Int(i64::from(i))
    }
}

impl From<f64> for ParamValue {
    fn from(f: f64) -> Self {
        ParamValue::Float(f)
    }
}

impl From<&str> for ParamValue {
    fn from(s: &str) -> Self {
        ParamValue::String(s.to_string())
    }
}

impl From<String> for ParamValue {
    fn from(s: String) -> Self {
        ParamValue::String(s)
    }
}

impl From<DateTime<Utc>> for ParamValue {
    fn from(t: DateTime<Utc>) -> Self {
        ParamValue::DateTime(t)
    }
}

impl<T: Into<ParamValue>> From<Vec<T>> for ParamValue {
    fn from(items: Vec<T>) -> Self {
        ParamValue::Array(items.into_iter().map(Into::into).collect())
    }
}

impl<T: Into<ParamValue>> From<Option<T>> for ParamValue {
    fn from(value: Option<T>) -> Self {
        value.map_or(ParamValue::Null, Into::into)
    }
}

impl<K: Into<String>, V: Into<ParamValue>> FromIterator<(K, V)> for ParamValue {
    /// Collecting pairs gives a hashtable.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        ParamValue::HashTable(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_values_are_json_when_they_parse_and_strings_otherwise() {
        let table: Vec<(&str, ParamValue)> = vec![
            ("true", ParamValue::Bool(true)),
            ("10", ParamValue::Int(10)),
            ("1.5", ParamValue::Float(1.5)),
            ("null", ParamValue::Null),
            ("Unlimited", ParamValue::String("Unlimited".into())),
            ("a@contoso.com", ParamValue::String("a@contoso.com".into())),
            ("\"quoted\"", ParamValue::String("quoted".into())),
            (
                r#"["a","b"]"#,
                ParamValue::Array(vec!["a".into(), "b".into()]),
            ),
            (
                r#"{"Add":"smtp:a@contoso.com"}"#,
                [("Add", "smtp:a@contoso.com")].into_iter().collect(),
            ),
        ];
        for (text, expected) in table {
            assert_eq!(ParamValue::from_cli(text), expected, "{text}");
        }
    }
}
