//! The InvokeCommand request body: the `CmdletInput` envelope and the module's parameter
//! encoding (`Transform-Parameters` in ExchangeOnlineManagement). Pure.
//!
//! | Value | JSON |
//! |---|---|
//! | switch / bool, int, string, `$null` | as is |
//! | hashtable | object with `"@odata.type": "#Exchange.GenericHashTable"`, recursively |
//! | hashtable[] | array of those, plus a sibling `"<Name>@odata.type": "#Collection(Exchange.GenericHashTable)"` |
//! | DateTime | UTC, sortable pattern, no `Z`: `2024-05-22T16:52:10` |
//! | `Filter`, `RecipientFilter`, `RecipientPreviewFilter` | OPATH text with `$true`/`$false` written `'True'`/`'False'` |
//! | `UseCustomRouting` | never sent (a client-side switch) |
//!
//! Plus `"Confirm": false` for every cmdlet [`super::cmdlet::needs_confirm`] names.

use serde_json::{Map, Value, json};

use super::cmdlet;
use super::params::{ParamValue, Parameters};

/// `@odata.type` of a hashtable.
pub const GENERIC_HASHTABLE: &str = "#Exchange.GenericHashTable";
/// `@odata.type` sibling of an array of hashtables.
pub const HASHTABLE_COLLECTION: &str = "#Collection(Exchange.GenericHashTable)";

/// Parameters whose OPATH text the module rewrites.
const FILTER_PARAMETERS: &[&str] = &["Filter", "RecipientFilter", "RecipientPreviewFilter"];
/// Client-side switches of the module that the service does not know.
const CLIENT_ONLY_PARAMETERS: &[&str] = &["UseCustomRouting"];

/// The whole request body: `{"CmdletInput":{"CmdletName":…,"Parameters":{…}}}`.
pub fn envelope(cmdlet: &str, parameters: &Parameters) -> Value {
    json!({
        "CmdletInput": {
            "CmdletName": cmdlet,
            "Parameters": Value::Object(encode_parameters(cmdlet, parameters)),
        }
    })
}

/// The `Parameters` object of the envelope.
pub fn encode_parameters(cmdlet: &str, parameters: &Parameters) -> Map<String, Value> {
    let mut out = Map::new();
    for (name, value) in parameters {
        if CLIENT_ONLY_PARAMETERS
            .iter()
            .any(|p| p.eq_ignore_ascii_case(name))
        {
            continue;
        }
        if let ParamValue::String(text) = value
            && FILTER_PARAMETERS
                .iter()
                .any(|p| p.eq_ignore_ascii_case(name))
        {
            out.insert(name.clone(), Value::String(rewrite_filter_booleans(text)));
            continue;
        }
        insert_encoded(&mut out, name, value);
    }
    if cmdlet::needs_confirm(cmdlet) && cmdlet::parameter(parameters, "Confirm").is_none() {
        out.insert("Confirm".to_string(), Value::Bool(false));
    }
    out
}

/// Inserts `name: value`, with the collection annotation an array of hashtables needs.
fn insert_encoded(out: &mut Map<String, Value>, name: &str, value: &ParamValue) {
    if let ParamValue::Array(items) = value
        && !items.is_empty()
        && items.iter().all(|i| matches!(i, ParamValue::HashTable(_)))
    {
        out.insert(
            format!("{name}@odata.type"),
            Value::String(HASHTABLE_COLLECTION.to_string()),
        );
    }
    out.insert(name.to_string(), encode_value(value));
}

/// One value, recursively.
pub fn encode_value(value: &ParamValue) -> Value {
    match value {
        ParamValue::Null => Value::Null,
        ParamValue::Bool(b) => Value::Bool(*b),
        ParamValue::Int(i) => Value::from(*i),
        // JSON has no NaN or infinity; PowerShell would send their text.
        ParamValue::Float(f) => serde_json::Number::from_f64(*f)
            .map_or_else(|| Value::String(f.to_string()), Value::Number),
        ParamValue::String(s) => Value::String(s.clone()),
        ParamValue::DateTime(t) => Value::String(t.format("%Y-%m-%dT%H:%M:%S").to_string()),
        ParamValue::Array(items) => Value::Array(items.iter().map(encode_value).collect()),
        ParamValue::HashTable(entries) => {
            let mut object = Map::new();
            object.insert(
                "@odata.type".to_string(),
                Value::String(GENERIC_HASHTABLE.to_string()),
            );
            for (key, item) in entries {
                insert_encoded(&mut object, key, item);
            }
            Value::Object(object)
        }
    }
}

/// Writes PowerShell's `$true`/`$false` as the OPATH literals `'True'`/`'False'`, outside
/// quoted strings only: the service evaluates OPATH without PowerShell variables.
pub fn rewrite_filter_booleans(filter: &str) -> String {
    let mut out = String::with_capacity(filter.len() + 8);
    let mut quote: Option<char> = None;
    let mut rest = filter;
    while let Some(c) = rest.chars().next() {
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
        } else if c == '\'' || c == '"' {
            quote = Some(c);
        } else if c == '$' {
            let replaced = [("$true", "'True'"), ("$false", "'False'")]
                .into_iter()
                .find(|(word, _)| {
                    rest.len() >= word.len()
                        && rest.is_char_boundary(word.len())
                        && rest[..word.len()].eq_ignore_ascii_case(word)
                        && !rest[word.len()..]
                            .chars()
                            .next()
                            .is_some_and(|n| n.is_alphanumeric() || n == '_')
                });
            if let Some((word, literal)) = replaced {
                out.push_str(literal);
                rest = &rest[word.len()..];
                continue;
            }
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::{FixedOffset, TimeZone, Utc};

    use super::*;
    use crate::exchange::params::parameters;

    fn hashtable(pairs: &[(&str, ParamValue)]) -> ParamValue {
        ParamValue::HashTable(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect::<BTreeMap<_, _>>(),
        )
    }

    #[test]
    fn each_kind_of_value_is_encoded_as_the_module_does() {
        let when = FixedOffset::east_opt(2 * 3600)
            .unwrap()
            .with_ymd_and_hms(2024, 5, 22, 18, 52, 10)
            .unwrap()
            .with_timezone(&Utc);
        let table: Vec<(&str, ParamValue, Value)> = vec![
            ("switch", ParamValue::Bool(true), json!(true)),
            ("false", ParamValue::Bool(false), json!(false)),
            ("int", ParamValue::Int(42), json!(42)),
            ("float", ParamValue::Float(1.5), json!(1.5)),
            ("nan", ParamValue::Float(f64::NAN), json!("NaN")),
            ("string", "a@contoso.com".into(), json!("a@contoso.com")),
            ("null", ParamValue::Null, Value::Null),
            (
                "datetime is UTC without Z",
                ParamValue::DateTime(when),
                json!("2024-05-22T16:52:10"),
            ),
            ("string array", vec!["a", "b"].into(), json!(["a", "b"])),
            (
                "hashtable",
                hashtable(&[
                    ("Add", vec!["smtp:a@x.com", "smtp:b@x.com"].into()),
                    ("Remove", "smtp:c@x.com".into()),
                ]),
                json!({"@odata.type": "#Exchange.GenericHashTable",
                       "Add": ["smtp:a@x.com", "smtp:b@x.com"], "Remove": "smtp:c@x.com"}),
            ),
            (
                "nested hashtable",
                hashtable(&[("Inner", hashtable(&[("K", 1.into())]))]),
                json!({"@odata.type": "#Exchange.GenericHashTable",
                       "Inner": {"@odata.type": "#Exchange.GenericHashTable", "K": 1}}),
            ),
            (
                "array of hashtables inside a hashtable",
                hashtable(&[(
                    "Rows",
                    ParamValue::Array(vec![hashtable(&[("K", 1.into())])]),
                )]),
                json!({"@odata.type": "#Exchange.GenericHashTable",
                       "Rows@odata.type": "#Collection(Exchange.GenericHashTable)",
                       "Rows": [{"@odata.type": "#Exchange.GenericHashTable", "K": 1}]}),
            ),
        ];
        for (what, value, expected) in table {
            assert_eq!(encode_value(&value), expected, "{what}");
        }
    }

    #[test]
    fn an_array_of_hashtables_gets_the_sibling_collection_annotation() {
        let params = parameters([(
            "Rules",
            ParamValue::Array(vec![
                hashtable(&[("Name", "a".into())]),
                hashtable(&[("Name", "b".into())]),
            ]),
        )]);
        let encoded = encode_parameters("Get-Thing", &params);
        assert_eq!(
            Value::Object(encoded),
            json!({
                "Rules@odata.type": "#Collection(Exchange.GenericHashTable)",
                "Rules": [
                    {"@odata.type": "#Exchange.GenericHashTable", "Name": "a"},
                    {"@odata.type": "#Exchange.GenericHashTable", "Name": "b"},
                ],
            })
        );
    }

    #[test]
    fn confirm_false_is_added_to_writes_only_and_never_overrides_the_caller() {
        let table: Vec<(&str, Parameters, Option<Value>)> = vec![
            ("Get-Mailbox", Parameters::new(), None),
            ("Test-OAuthConnectivity", Parameters::new(), None),
            ("Set-Mailbox", Parameters::new(), Some(json!(false))),
            (
                "Remove-MailboxPermission",
                Parameters::new(),
                Some(json!(false)),
            ),
            (
                "Remove-MailboxPermission",
                parameters([("confirm", true.into())]),
                None,
            ),
        ];
        for (cmdlet, params, expected) in table {
            let encoded = encode_parameters(cmdlet, &params);
            assert_eq!(encoded.get("Confirm").cloned(), expected, "{cmdlet}");
        }
    }

    #[test]
    fn filters_get_opath_booleans_and_client_switches_are_dropped() {
        let params = parameters([
            (
                "Filter",
                "HiddenFromAddressListsEnabled -eq $true -and Alias -ne '$false'".into(),
            ),
            ("UseCustomRouting", true.into()),
            ("Identity", "$true".into()),
        ]);
        let encoded = encode_parameters("Get-Mailbox", &params);
        assert_eq!(
            Value::Object(encoded),
            json!({
                "Filter": "HiddenFromAddressListsEnabled -eq 'True' -and Alias -ne '$false'",
                "Identity": "$true",
            })
        );
    }

    #[test]
    fn filter_boolean_rewriting_respects_quotes_and_word_boundaries() {
        let table = [
            ("A -eq $true", "A -eq 'True'"),
            ("A -eq $FALSE", "A -eq 'False'"),
            ("A -eq $trueish", "A -eq $trueish"),
            ("A -eq \"$true\"", "A -eq \"$true\""),
            (
                "(A -eq $true)-or(B -eq $false)",
                "(A -eq 'True')-or(B -eq 'False')",
            ),
            (
                "Name -like 'é*' -and X -eq $true",
                "Name -like 'é*' -and X -eq 'True'",
            ),
            ("$", "$"),
        ];
        for (input, expected) in table {
            assert_eq!(rewrite_filter_booleans(input), expected, "{input}");
        }
    }

    #[test]
    fn the_envelope_wraps_cmdlet_and_parameters() {
        let body = envelope(
            "Set-Mailbox",
            &parameters([("Identity", "u@contoso.com".into())]),
        );
        assert_eq!(
            body,
            json!({"CmdletInput": {"CmdletName": "Set-Mailbox",
                   "Parameters": {"Identity": "u@contoso.com", "Confirm": false}}})
        );
    }
}
