//! What the client needs to know about a cmdlet from its name alone: whether it only reads
//! (and so may be replayed after a server error) and whether it would ask for confirmation.
//! Pure.
//!
//! The rule is by verb, because the service gives no per-cmdlet metadata over REST and a
//! list of ~1,000 cmdlets would go stale. Reads are `Get-`, `Test-`, `Search-` and
//! `Export-`, except the few cmdlets in [`NOT_READ_CMDLETS`]; every other cmdlet may change
//! the organisation. This is the worker's one read/write rule: the client replays only
//! reads, and a runbook dry run sends only reads (`runbook::is_read_cmdlet` delegates here).

use super::params::{ParamValue, Parameters};

/// Verbs whose cmdlets only read: safe to replay after a 5xx or a dropped connection.
pub const READ_VERBS: &[&str] = &["Get", "Test", "Search", "Export"];

/// Cmdlets with a read verb that can still change something, so they never count as
/// reads. `Search-Mailbox -DeleteContent` deletes messages.
pub const NOT_READ_CMDLETS: &[&str] = &["Search-Mailbox"];

/// The verb of `Verb-Noun` (the whole name when there is no dash).
pub fn verb(cmdlet: &str) -> &str {
    cmdlet.split_once('-').map_or(cmdlet, |(verb, _)| verb)
}

/// True for cmdlets that only read: a `Verb-Noun` name whose verb is one of
/// [`READ_VERBS`] (case-insensitive) and that is not one of [`NOT_READ_CMDLETS`].
pub fn is_read(cmdlet: &str) -> bool {
    let Some((verb, _)) = cmdlet.split_once('-') else {
        return false;
    };
    READ_VERBS.iter().any(|v| v.eq_ignore_ascii_case(verb))
        && !NOT_READ_CMDLETS
            .iter()
            .any(|c| c.eq_ignore_ascii_case(cmdlet))
}

/// True when the request must carry `"Confirm": false`.
///
/// Every Exchange cmdlet that changes something supports `-Confirm`; about 129 of them
/// (`ConfirmImpact = High`, e.g. `Remove-MailboxPermission`) would otherwise answer with
/// only a confirmation message and do nothing. A non-interactive caller cannot answer, so
/// every non-read cmdlet gets `Confirm: false` unless the caller set `Confirm` itself.
/// Read cmdlets do not accept `-Confirm` at all.
pub fn needs_confirm(cmdlet: &str) -> bool {
    !is_read(cmdlet)
}

/// Case-insensitive lookup of a parameter (PowerShell parameter names ignore case).
pub fn parameter<'a>(parameters: &'a Parameters, name: &str) -> Option<&'a ParamValue> {
    parameters
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// What an operator calls the object a call is about: its `Identity` parameter, when
/// there is one and it is text.
pub fn target(parameters: &Parameters) -> Option<String> {
    match parameter(parameters, "Identity")? {
        ParamValue::String(s) => Some(s.clone()),
        ParamValue::Int(i) => Some(i.to_string()),
        ParamValue::Array(items) => {
            let names: Vec<&str> = items.iter().filter_map(ParamValue::as_str).collect();
            (!names.is_empty()).then(|| names.join(", "))
        }
        _ => None,
    }
}

/// The client-side `ResultSize` limit: `None` for `Unlimited` or when absent.
pub fn result_size(parameters: &Parameters) -> Option<u64> {
    match parameter(parameters, "ResultSize")? {
        ParamValue::Int(n) => u64::try_from(*n).ok(),
        ParamValue::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::params::parameters;

    #[test]
    fn reads_are_recognised_by_verb() {
        let table = [
            ("Get-Mailbox", true),
            ("get-mailbox", true),
            ("Get-EXOMailbox", true),
            ("Test-OAuthConnectivity", true),
            ("Search-UnifiedAuditLog", true),
            ("Export-QuarantineMessage", true),
            ("Search-Mailbox", false),
            ("search-mailbox", false),
            ("Search-MailboxAuditLog", true),
            ("Find-Something", false),
            ("Measure-Something", false),
            ("Get", false),
            ("Set-Mailbox", false),
            ("Enable-Mailbox", false),
            ("Add-MailboxPermission", false),
            ("Remove-MailboxFolderPermission", false),
            ("New-Mailbox", false),
            ("Getaway", false),
        ];
        for (cmdlet, read) in table {
            assert_eq!(is_read(cmdlet), read, "{cmdlet}");
            assert_eq!(needs_confirm(cmdlet), !read, "{cmdlet}");
        }
    }

    #[test]
    fn the_target_is_the_identity_parameter_in_any_case() {
        let table: Vec<(Parameters, Option<&str>)> = vec![
            (
                parameters([("Identity", "a@contoso.com".into())]),
                Some("a@contoso.com"),
            ),
            (parameters([("identity", "b".into())]), Some("b")),
            (
                parameters([("Identity", vec!["a", "b"].into())]),
                Some("a, b"),
            ),
            (parameters([("ResultSize", "Unlimited".into())]), None),
            (parameters([("Identity", ParamValue::Null)]), None),
        ];
        for (params, expected) in table {
            assert_eq!(target(&params).as_deref(), expected, "{params:?}");
        }
    }

    #[test]
    fn a_numeric_result_size_limits_and_unlimited_does_not() {
        let table: Vec<(Parameters, Option<u64>)> = vec![
            (parameters([("ResultSize", 10.into())]), Some(10)),
            (parameters([("ResultSize", "25".into())]), Some(25)),
            (parameters([("resultsize", "Unlimited".into())]), None),
            (parameters([("ResultSize", (-1).into())]), None),
            (Parameters::new(), None),
        ];
        for (params, expected) in table {
            assert_eq!(result_size(&params), expected, "{params:?}");
        }
    }
}
