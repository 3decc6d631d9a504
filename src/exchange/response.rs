//! Reading what InvokeCommand answers: result pages (records without their OData
//! annotations, warnings, non-terminating errors, the next link) and error bodies (the
//! exception class and message hidden in `error.details[0].message`). Pure: bytes and
//! header text in, values out.

use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Map, Value};

/// One output object of a cmdlet, without annotations (`X@odata.type`, …).
pub type Record = Map<String, Value>;

/// The warning the service adds to every page that has a next link. The module
/// suppresses it, and so does the client: it is an artefact of paging, not of the cmdlet.
pub const PAGING_WARNING_PREFIX: &str =
    "There are more results available than are currently displayed";

/// Exception names after which the module retries: the directory or store was busy or
/// moving, not the request wrong.
pub const TRANSIENT_EXCEPTIONS: &[&str] = &[
    "DCOverloadedException",
    "SuitabilityDirectoryException",
    "ServerInMMException",
    "ADServerSettingsChangedException",
    "StorageTransientException",
];

/// An error a cmdlet reported: a terminating error's details, or one entry of
/// `@adminapi.errors` (a non-terminating error: the call went on).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CmdletIssue {
    /// The first field of the pipe form (`Ex6F9304`) or the JSON form's `stringId`.
    pub error_id: Option<String>,
    /// The .NET exception class, e.g.
    /// `Microsoft.Exchange.Configuration.Tasks.ManagementObjectNotFoundException`.
    pub class: Option<String>,
    pub message: String,
}

impl CmdletIssue {
    /// The class without its namespace (`ManagementObjectNotFoundException`).
    pub fn short_class(&self) -> Option<&str> {
        self.class
            .as_deref()
            .map(|c| c.rsplit('.').next().unwrap_or(c))
    }

    pub fn is_transient(&self) -> bool {
        TRANSIENT_EXCEPTIONS.iter().any(|name| {
            self.class.as_deref().is_some_and(|c| c.contains(name)) || self.message.contains(name)
        })
    }

    pub fn is_not_found(&self) -> bool {
        self.short_class()
            .is_some_and(|c| c == "ManagementObjectNotFoundException")
    }
}

impl std::fmt::Display for CmdletIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.short_class() {
            Some(class) => write!(f, "{class}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Parses a details message in either of its forms: `ErrorId|ExceptionClass|Text`, or a
/// JSON string `{"Message":…,"ClassName":…,"localizedString":{"stringId":…}}`. Anything
/// else is a plain message.
pub fn parse_issue(text: &str) -> CmdletIssue {
    let trimmed = text.trim();
    if trimmed.starts_with('{')
        && let Ok(Value::Object(object)) = serde_json::from_str::<Value>(trimmed)
    {
        let field = |names: &[&str]| {
            names.iter().find_map(|n| {
                object
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(n))
                    .and_then(|(_, v)| v.as_str())
                    .map(str::to_string)
            })
        };
        let error_id = object
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("localizedString"))
            .and_then(|(_, v)| v.get("stringId"))
            .and_then(Value::as_str)
            .map(str::to_string);
        if let Some(message) = field(&["Message"]) {
            return CmdletIssue {
                error_id,
                class: field(&["ClassName", "Type"]),
                message,
            };
        }
    }
    let mut parts = trimmed.splitn(3, '|');
    if let (Some(id), Some(class), Some(message)) = (parts.next(), parts.next(), parts.next())
        && looks_like_class(class)
    {
        return CmdletIssue {
            error_id: Some(id.to_string()).filter(|s| !s.is_empty()),
            class: Some(class.to_string()),
            message: message.to_string(),
        };
    }
    CmdletIssue {
        error_id: None,
        class: None,
        message: trimmed.to_string(),
    }
}

fn looks_like_class(text: &str) -> bool {
    !text.is_empty()
        && text.contains('.')
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '+' || c == '`')
}

/// What an error body says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ErrorBody {
    /// `error.code` (`InternalServerError`, `BadRequest`, …).
    pub code: Option<String>,
    /// `error.message`: usually the generic "Error executing cmdlet".
    pub message: Option<String>,
    /// The real error: `details[0].message`, else `innererror.internalexception`.
    pub detail: Option<CmdletIssue>,
}

impl ErrorBody {
    /// The most specific text there is.
    pub fn best_message(&self) -> Option<String> {
        self.detail
            .as_ref()
            .map(ToString::to_string)
            .or_else(|| self.message.clone())
            .or_else(|| self.code.clone())
    }
}

/// Parses an error body. Bodies may be empty or NUL-padded (403s are); those give `None`.
pub fn parse_error_body(body: &[u8]) -> Option<ErrorBody> {
    let text = String::from_utf8_lossy(body);
    let text = text.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    if text.is_empty() {
        return None;
    }
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        // Gateways answer 502/504 with HTML or plain text; keep a short excerpt.
        let excerpt: String = text.chars().take(200).collect();
        return Some(ErrorBody {
            message: Some(excerpt),
            ..ErrorBody::default()
        });
    };
    let error = value.get("error").unwrap_or(&value);
    let text_at = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
    let from_details = error
        .get("details")
        .and_then(Value::as_array)
        .and_then(|d| d.first())
        .and_then(|d| d.get("message"))
        .and_then(Value::as_str)
        .filter(|m| !m.trim().is_empty())
        .map(parse_issue);
    let from_inner = || {
        let inner = error.get("innererror")?.get("internalexception")?;
        let message = text_at(inner, "message")?;
        let mut issue = parse_issue(&message);
        if issue.class.is_none() {
            issue.class = text_at(inner, "type");
        }
        Some(issue)
    };
    Some(ErrorBody {
        code: text_at(error, "code"),
        message: text_at(error, "message"),
        detail: from_details.or_else(from_inner),
    })
}

/// One successful answer.
#[derive(Debug, Default)]
pub struct ParsedPage {
    pub records: Vec<Record>,
    /// Cmdlet warnings, without the paging warning on pages that have a next link.
    pub warnings: Vec<String>,
    pub errors: Vec<CmdletIssue>,
    pub next_link: Option<String>,
    /// `@adminapi.confirmationmessage`: the cmdlet asked instead of acting.
    pub confirmation: Option<String>,
}

#[derive(Deserialize)]
struct RawPage {
    #[serde(default)]
    value: Option<Vec<Value>>,
    #[serde(default, rename = "@odata.nextLink", alias = "odata.nextLink")]
    next_link: Option<String>,
    #[serde(default, rename = "@adminapi.warnings", alias = "adminapi.warnings")]
    warnings: Option<Vec<Value>>,
    #[serde(default, rename = "@adminapi.errors", alias = "adminapi.errors")]
    errors: Option<Vec<Value>>,
    #[serde(
        default,
        rename = "@adminapi.confirmationmessage",
        alias = "adminapi.confirmationmessage"
    )]
    confirmation: Option<Value>,
}

/// Parses a 2xx body. `Set-*` cmdlets may answer with an empty body: zero records.
pub fn parse_page(body: &[u8]) -> Result<ParsedPage, String> {
    if body.iter().all(|b| b.is_ascii_whitespace() || *b == 0) {
        return Ok(ParsedPage::default());
    }
    let raw: RawPage = serde_json::from_slice(body)
        .map_err(|e| format!("the answer is not the expected JSON ({e})"))?;
    let next_link = raw.next_link.filter(|l| !l.trim().is_empty());
    let records = raw
        .value
        .unwrap_or_default()
        .into_iter()
        .map(|value| match value {
            Value::Object(mut record) => {
                strip_annotations(&mut record);
                record
            }
            // A cmdlet that outputs scalars (strings, numbers) still yields records.
            other => Record::from_iter([("Value".to_string(), other)]),
        })
        .collect();
    let warnings = raw
        .warnings
        .unwrap_or_default()
        .into_iter()
        .map(|w| match w {
            Value::String(s) => s,
            other => other.to_string(),
        })
        .filter(|w| next_link.is_none() || !w.starts_with(PAGING_WARNING_PREFIX))
        .collect();
    let errors = raw
        .errors
        .unwrap_or_default()
        .into_iter()
        .map(issue_from_value)
        .collect();
    let confirmation = raw.confirmation.and_then(|c| match c {
        Value::String(s) if !s.trim().is_empty() => Some(s),
        Value::Null | Value::String(_) => None,
        other => Some(other.to_string()),
    });
    Ok(ParsedPage {
        records,
        warnings,
        errors,
        next_link,
        confirmation,
    })
}

/// A non-terminating error entry: a string in either details form, or an object with a
/// message.
fn issue_from_value(value: Value) -> CmdletIssue {
    match value {
        Value::String(s) => parse_issue(&s),
        Value::Object(ref object) => {
            let text = ["Message", "message", "Exception", "ErrorRecord"]
                .iter()
                .find_map(|k| object.get(*k).and_then(Value::as_str));
            match text {
                Some(text) => {
                    let mut issue = parse_issue(text);
                    if issue.class.is_none() {
                        issue.class = ["ClassName", "Type", "FullyQualifiedErrorId"]
                            .iter()
                            .find_map(|k| object.get(*k).and_then(Value::as_str))
                            .map(str::to_string);
                    }
                    issue
                }
                None => parse_issue(&value.to_string()),
            }
        }
        other => parse_issue(&other.to_string()),
    }
}

/// Removes every key containing `@` (`X@odata.type`, `X@data.type`, `@odata.id`), at any
/// depth: callers want the properties, not the serialisation hints.
pub fn strip_annotations(record: &mut Record) {
    record.retain(|key, _| !key.contains('@'));
    for value in record.values_mut() {
        strip_value(value);
    }
}

fn strip_value(value: &mut Value) {
    match value {
        Value::Object(object) => strip_annotations(object),
        Value::Array(items) => items.iter_mut().for_each(strip_value),
        _ => {}
    }
}

/// `Retry-After` as the module reads it: decimal seconds (`"1.5"`). A wait too long for a
/// `Duration` (`1e300`) saturates to [`Duration::MAX`] instead of panicking; the retry
/// policy caps every wait at `exchange.retry_max_delay` anyway.
pub fn parse_retry_after(header: &str) -> Option<Duration> {
    let seconds: f64 = header.trim().parse().ok()?;
    if !(seconds.is_finite() && seconds >= 0.0) {
        return None;
    }
    Some(Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX))
}

/// The wait a 429 message asks for ("… Try again in 12 seconds.").
pub fn retry_after_from_message(message: &str) -> Option<Duration> {
    let lower = message.to_ascii_lowercase();
    let at = lower.rfind("second")?;
    let before = lower[..at].trim_end();
    // The number is the ASCII run before "second"; the character before it may be wider
    // than one byte (found by fuzzing: "é5 seconds" sliced inside the "é").
    let start = before
        .char_indices()
        .rfind(|(_, c)| !(c.is_ascii_digit() || *c == '.'))
        .map_or(0, |(i, c)| i + c.len_utf8());
    parse_retry_after(&before[start..])
}

/// The `claims` of a `WWW-Authenticate` challenge, decoded from base64 when it is (it
/// carries JSON such as `{"access_token":{"nbf":{…}}}`), as the token source expects.
pub fn claims_challenge(www_authenticate: &str) -> Option<String> {
    let raw = auth_param(www_authenticate, "claims")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(raw.trim())
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(raw.trim()))
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .filter(|text| serde_json::from_str::<Value>(text).is_ok());
    Some(decoded.unwrap_or(raw))
}

/// One `name="value"` (or `name=value`) parameter of an authentication challenge.
pub fn auth_param(header: &str, name: &str) -> Option<String> {
    let lower = header.to_ascii_lowercase();
    let needle = format!("{}=", name.to_ascii_lowercase());
    let mut search_from = 0;
    while let Some(found) = lower[search_from..].find(&needle) {
        let at = search_from + found;
        let boundary = at == 0 || matches!(lower.as_bytes()[at - 1], b' ' | b',');
        let value_start = at + needle.len();
        if boundary {
            let rest = &header[value_start..];
            return Some(match rest.strip_prefix('"') {
                Some(quoted) => quoted.split('"').next().unwrap_or("").to_string(),
                None => rest.split([',', ' ']).next().unwrap_or("").to_string(),
            });
        }
        search_from = value_start;
    }
    None
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn both_detail_forms_and_plain_text_are_parsed() {
        let table = [
            (
                "Ex6F9304|Microsoft.Exchange.Configuration.Tasks.ManagementObjectNotFoundException|The operation couldn't be performed because object 'x@contoso.com' couldn't be found on 'DB3PR01A001'.",
                Some("Ex6F9304"),
                Some("Microsoft.Exchange.Configuration.Tasks.ManagementObjectNotFoundException"),
                "The operation couldn't be performed because object 'x@contoso.com' couldn't be found on 'DB3PR01A001'.",
            ),
            (
                r#"{"Message":"The proxy address \"SMTP:a@contoso.com\" is already being used.","ClassName":"Microsoft.Exchange.Data.DataValidationException","localizedString":{"stringId":"ErrorProxyAddressAlreadyExists"}}"#,
                Some("ErrorProxyAddressAlreadyExists"),
                Some("Microsoft.Exchange.Data.DataValidationException"),
                "The proxy address \"SMTP:a@contoso.com\" is already being used.",
            ),
            (
                "Ex1|Some.Class|text with | a pipe",
                Some("Ex1"),
                Some("Some.Class"),
                "text with | a pipe",
            ),
            ("a | b | c", None, None, "a | b | c"),
            (
                "Error executing cmdlet",
                None,
                None,
                "Error executing cmdlet",
            ),
        ];
        for (text, id, class, message) in table {
            let issue = parse_issue(text);
            assert_eq!(issue.error_id.as_deref(), id, "{text}");
            assert_eq!(issue.class.as_deref(), class, "{text}");
            assert_eq!(issue.message, message, "{text}");
        }
    }

    #[test]
    fn error_bodies_yield_the_real_message_from_details_or_the_inner_exception() {
        let details = json!({"error":{"code":"InternalServerError","message":"Error executing cmdlet",
            "details":[{"code":"Client","target":"","message":"Ex1|Microsoft.Exchange.Data.Directory.DCOverloadedException|busy"}],
            "innererror":{"message":"Error executing cmdlet","type":"Microsoft.Exchange.Admin.OData.Core.ODataServiceException"}}});
        let inner = json!({"error":{"code":"InternalServerError","message":"Error executing cmdlet",
            "innererror":{"message":"Error executing cmdlet","type":"X",
            "internalexception":{"message":"The mailbox is on hold.","type":"Microsoft.Exchange.Management.RecipientTasks.RecipientTaskException"}}}});
        let table: Vec<(Vec<u8>, Option<&str>, Option<&str>)> = vec![
            (
                details.to_string().into_bytes(),
                Some("Microsoft.Exchange.Data.Directory.DCOverloadedException"),
                Some("busy"),
            ),
            (
                inner.to_string().into_bytes(),
                Some("Microsoft.Exchange.Management.RecipientTasks.RecipientTaskException"),
                Some("The mailbox is on hold."),
            ),
            (b"\0\0\0".to_vec(), None, None),
            (Vec::new(), None, None),
        ];
        for (body, class, message) in table {
            let parsed = parse_error_body(&body);
            let detail = parsed.as_ref().and_then(|b| b.detail.clone());
            assert_eq!(
                detail.as_ref().and_then(|d| d.class.as_deref()),
                class,
                "{body:?}"
            );
            assert_eq!(
                detail.as_ref().map(|d| d.message.as_str()),
                message,
                "{body:?}"
            );
        }
        let transient = parse_error_body(details.to_string().as_bytes()).unwrap();
        assert!(transient.detail.unwrap().is_transient());
    }

    #[test]
    fn a_gateway_page_is_kept_as_a_short_message() {
        let body = parse_error_body(b"<html>502 Bad Gateway</html>").unwrap();
        assert_eq!(
            body.best_message().as_deref(),
            Some("<html>502 Bad Gateway</html>")
        );
    }

    #[test]
    fn pages_lose_annotations_and_keep_warnings_and_errors() {
        let body = json!({
            "@odata.context": "https://outlook.office365.com/adminapi/beta/t/$metadata#Collection(Exchange.GenericHashTable)",
            "adminapi.warnings@odata.type": "#Collection(String)",
            "@adminapi.warnings": ["There are more results available than are currently displayed. To view them, increase the value for the ResultSize parameter.", "real warning"],
            "@adminapi.errors": ["Ex1|Microsoft.Exchange.Configuration.Tasks.ManagementObjectNotFoundException|gone", {"Message": "plain"}],
            "value": [{"Identity": "Shared1", "ExchangeGuid@odata.type": "#Guid",
                       "ExchangeGuid@data.type": "System.Guid", "ExchangeGuid": "2be9",
                       "Nested": {"A@odata.type": "#String", "A": "x"}}],
            "@odata.nextLink": "https://outlook.office365.com/adminapi/beta/t/InvokeCommand?$skiptoken=1"
        });
        let page = parse_page(body.to_string().as_bytes()).unwrap();
        assert_eq!(
            Value::Object(page.records[0].clone()),
            json!({"Identity": "Shared1", "ExchangeGuid": "2be9", "Nested": {"A": "x"}})
        );
        assert_eq!(page.warnings, vec!["real warning"]);
        assert_eq!(page.errors.len(), 2);
        assert!(page.errors[0].is_not_found());
        assert_eq!(page.errors[1].message, "plain");
        assert!(page.next_link.is_some());
    }

    #[test]
    fn the_paging_warning_is_kept_on_the_last_page() {
        let body = json!({"@adminapi.warnings": ["There are more results available than are currently displayed."], "value": []});
        let page = parse_page(body.to_string().as_bytes()).unwrap();
        assert_eq!(page.warnings.len(), 1);
    }

    #[test]
    fn empty_bodies_and_bodies_without_value_are_zero_records() {
        for body in [&b""[..], b"  ", br#"{"@adminapi.warnings":["w"]}"#] {
            let page = parse_page(body).unwrap();
            assert!(page.records.is_empty());
        }
        let page = parse_page(br#"{"odata.nextLink":"x","value":["a"]}"#).unwrap();
        assert_eq!(page.next_link.as_deref(), Some("x"));
        assert_eq!(page.records[0]["Value"], json!("a"));
        assert!(parse_page(b"not json").is_err());
    }

    #[test]
    fn retry_after_is_decimal_seconds_or_read_from_the_message() {
        let table = [
            ("1.5", Some(Duration::from_millis(1500))),
            (" 2 ", Some(Duration::from_secs(2))),
            ("-1", None),
            ("soon", None),
            ("1e300", Some(Duration::MAX)),
            ("NaN", None),
            ("inf", None),
        ];
        for (text, expected) in table {
            assert_eq!(parse_retry_after(text), expected, "{text}");
        }
        let messages = [
            (
                "Too many requests. Try again in 12 seconds.",
                Some(Duration::from_secs(12)),
            ),
            ("wait 0.25 second", Some(Duration::from_millis(250))),
            ("Please wait and try again", None),
            ("Réessayez dans é5 secondes", Some(Duration::from_secs(5))),
            (
                "Try again in 99999999999999999999999 seconds.",
                Some(Duration::MAX),
            ),
        ];
        for (text, expected) in messages {
            assert_eq!(retry_after_from_message(text), expected, "{text}");
        }
    }

    #[test]
    fn a_claims_challenge_is_read_and_decoded() {
        let claims = r#"{"access_token":{"nbf":{"essential":true,"value":"1700000000"}}}"#;
        let encoded = base64::engine::general_purpose::STANDARD.encode(claims);
        let header = format!(
            r#"Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", error="insufficient_claims", claims="{encoded}""#
        );
        assert_eq!(claims_challenge(&header).as_deref(), Some(claims));
        assert_eq!(
            auth_param(&header, "error").as_deref(),
            Some("insufficient_claims")
        );
        assert_eq!(claims_challenge("Bearer error=\"invalid_token\""), None);
        assert_eq!(
            claims_challenge("Bearer claims=notbase64!").as_deref(),
            Some("notbase64!")
        );
    }
}
