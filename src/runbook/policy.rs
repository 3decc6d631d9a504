//! Which cmdlets runbooks may call (`[policy]`), and which cmdlets only read.
//!
//! Pure: glob matching over cmdlet names. The policy is checked when a runbook is
//! validated, so a file that names a forbidden cmdlet never loads; the executor may check
//! again before each call as defence in depth.

use std::fmt;

use super::PolicySettings;

/// Verbs whose cmdlets never need an explicit allow entry to be refused: creating and
/// deleting objects is where a dropped file does the most damage.
pub const DESTRUCTIVE_VERBS: &[&str] = &["Remove", "New"];
/// Graph methods that need an allow entry naming them, as [`DESTRUCTIVE_VERBS`] do.
pub const DESTRUCTIVE_METHODS: &[&str] = &["DELETE"];

pub use crate::exchange::cmdlet::{NOT_READ_CMDLETS, READ_VERBS};

/// Whether a cmdlet only reads, so a dry run may send it. The worker has one rule for
/// this, the Exchange client's ([`crate::exchange::cmdlet::is_read`]): its verb is one of
/// [`READ_VERBS`] and it is not one of [`NOT_READ_CMDLETS`]. A dry run sends what the
/// client would also replay, nothing more.
pub fn is_read_cmdlet(name: &str) -> bool {
    crate::exchange::cmdlet::is_read(name)
}

/// Why a cmdlet is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyDenial {
    /// A `deny` pattern matches (deny wins over allow).
    Denied { pattern: String },
    /// No `allow` pattern matches.
    NotAllowed,
    /// A `Remove-`/`New-` cmdlet matched only allow patterns that do not name its verb,
    /// such as `*`.
    NeedsExplicitAllow { verb: String },
    /// A Graph `DELETE` matched only allow patterns that do not start with its method.
    NeedsExplicitMethodAllow { method: String },
}

impl fmt::Display for PolicyDenial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyDenial::Denied { pattern } => {
                write!(f, "it matches \"{pattern}\" in [policy] deny")
            }
            PolicyDenial::NotAllowed => write!(f, "no pattern in [policy] allow matches it"),
            PolicyDenial::NeedsExplicitAllow { verb } => write!(
                f,
                "{verb}- cmdlets need an entry in [policy] allow that starts with \"{verb}-\", such as \"{verb}-*\" or the cmdlet's full name"
            ),
            PolicyDenial::NeedsExplicitMethodAllow { method } => write!(
                f,
                "Graph {method} calls need an entry in [policy] allow that starts with \"{method} \", such as \"{method} /v1.0/groups/*/members/*\""
            ),
        }
    }
}

/// The compiled `[policy]` settings.
///
/// Rules, in order: a cmdlet matching any `deny` pattern is refused; otherwise it needs a
/// matching `allow` pattern; a cmdlet whose verb is in [`DESTRUCTIVE_VERBS`] additionally
/// needs a matching allow pattern that itself starts with that verb and a dash
/// (`Remove-*`, `Remove-MailboxPermission`), so the default `allow = ["*"]` lets
/// everything through except `Remove-*` and `New-*`. Patterns are case-insensitive and
/// `*` matches any run of characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CmdletPolicy {
    allow: Vec<String>,
    deny: Vec<String>,
}

impl CmdletPolicy {
    pub fn new(settings: &PolicySettings) -> Self {
        Self {
            allow: settings.allow.clone(),
            deny: settings.deny.clone(),
        }
    }

    /// Checks one cmdlet name against the policy.
    pub fn check(&self, cmdlet: &str) -> Result<(), PolicyDenial> {
        if let Some(pattern) = self.deny.iter().find(|p| glob_matches(p, cmdlet)) {
            return Err(PolicyDenial::Denied {
                pattern: pattern.clone(),
            });
        }
        let matching: Vec<&String> = self
            .allow
            .iter()
            .filter(|p| glob_matches(p, cmdlet))
            .collect();
        if matching.is_empty() {
            return Err(PolicyDenial::NotAllowed);
        }
        let starts_with = |p: &str, prefix: &str| {
            p.len() >= prefix.len()
                && p.is_char_boundary(prefix.len())
                && p[..prefix.len()].eq_ignore_ascii_case(prefix)
        };
        // A Graph call is checked as "METHOD /path".
        if let Some((method, _)) = cmdlet.split_once(' ') {
            if let Some(destructive) = DESTRUCTIVE_METHODS
                .iter()
                .find(|m| m.eq_ignore_ascii_case(method))
            {
                let prefix = format!("{destructive} ");
                if !matching.iter().any(|p| starts_with(p, &prefix)) {
                    return Err(PolicyDenial::NeedsExplicitMethodAllow {
                        method: (*destructive).to_string(),
                    });
                }
            }
            return Ok(());
        }
        let verb = cmdlet.split_once('-').map(|(v, _)| v).unwrap_or(cmdlet);
        if let Some(destructive) = DESTRUCTIVE_VERBS
            .iter()
            .find(|v| v.eq_ignore_ascii_case(verb))
        {
            let prefix = format!("{destructive}-");
            let named = matching.iter().any(|p| starts_with(p, &prefix));
            if !named {
                return Err(PolicyDenial::NeedsExplicitAllow {
                    verb: (*destructive).to_string(),
                });
            }
        }
        Ok(())
    }
}

impl Default for CmdletPolicy {
    fn default() -> Self {
        Self::new(&PolicySettings::default())
    }
}

/// Case-insensitive glob match where `*` matches any run of characters (also none).
pub fn glob_matches(pattern: &str, name: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().flat_map(char::to_lowercase).collect();
    let name: Vec<char> = name.chars().flat_map(char::to_lowercase).collect();
    // Iterative matching with backtracking to the last star: linear in practice and
    // without recursion, so a hostile pattern cannot blow the stack.
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && pattern[p] == '*' {
            star = Some((p, n));
            p += 1;
        } else if p < pattern.len() && pattern[p] == name[n] {
            p += 1;
            n += 1;
        } else if let Some((star_p, star_n)) = star {
            p = star_p + 1;
            n = star_n + 1;
            star = Some((star_p, star_n + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str], deny: &[&str]) -> CmdletPolicy {
        CmdletPolicy::new(&PolicySettings {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
        })
    }

    #[test]
    fn globs_match_case_insensitively_with_stars_anywhere() {
        let cases = [
            ("Get-*", "Get-Mailbox", true),
            ("get-*", "GET-MAILBOX", true),
            ("*", "Anything-Goes", true),
            ("*-Mailbox", "Set-Mailbox", true),
            ("*-Mailbox", "Set-MailboxFolderPermission", false),
            ("*Mailbox*", "Add-MailboxFolderPermission", true),
            ("Set-Mailbox", "Set-Mailbox", true),
            ("Set-Mailbox", "Set-MailboxX", false),
            ("Set-*Permission", "Set-MailboxFolderPermission", true),
            ("S*-*x", "Set-Mailbox", true),
            ("", "Get-Mailbox", false),
            ("**", "", true),
        ];
        for (pattern, name, expected) in cases {
            assert_eq!(glob_matches(pattern, name), expected, "{pattern} vs {name}");
        }
    }

    #[test]
    fn the_policy_table_holds() {
        use PolicyDenial::*;
        let needs = |verb: &str| {
            Err(NeedsExplicitAllow {
                verb: verb.to_string(),
            })
        };
        type Case<'a> = (
            &'a [&'a str],
            &'a [&'a str],
            &'a str,
            Result<(), PolicyDenial>,
        );
        let cases: Vec<Case> = vec![
            // The default allows everything but Remove- and New-.
            (&["*"], &[], "Get-Mailbox", Ok(())),
            (&["*"], &[], "Set-Mailbox", Ok(())),
            (&["*"], &[], "Remove-MailboxPermission", needs("Remove")),
            (&["*"], &[], "New-Mailbox", needs("New")),
            (&["*"], &[], "remove-mailbox", needs("Remove")),
            // An allow entry that names the verb lets them through.
            (
                &["*", "Remove-MailboxPermission"],
                &[],
                "Remove-MailboxPermission",
                Ok(()),
            ),
            (&["*", "Remove-*"], &[], "Remove-Mailbox", Ok(())),
            (&["*", "remove-*"], &[], "Remove-Mailbox", Ok(())),
            // A pattern that matches without naming the verb does not.
            (
                &["*-MailboxPermission"],
                &[],
                "Remove-MailboxPermission",
                needs("Remove"),
            ),
            (&["R*"], &[], "Remove-Mailbox", needs("Remove")),
            (
                &["*", "Remove-MailboxPermission"],
                &[],
                "Remove-Mailbox",
                needs("Remove"),
            ),
            // Allow lists restrict.
            (&["Get-*", "Set-Mailbox"], &[], "Set-Mailbox", Ok(())),
            (
                &["Get-*", "Set-Mailbox"],
                &[],
                "Set-CASMailbox",
                Err(NotAllowed),
            ),
            (&[], &[], "Get-Mailbox", Err(NotAllowed)),
            // Deny wins over allow, also over an explicit one.
            (
                &["*"],
                &["Set-*"],
                "Set-Mailbox",
                Err(Denied {
                    pattern: "Set-*".to_string(),
                }),
            ),
            (
                &["Remove-*"],
                &["Remove-*"],
                "Remove-Mailbox",
                Err(Denied {
                    pattern: "Remove-*".to_string(),
                }),
            ),
            (
                &["*"],
                &["set-casmailbox"],
                "Set-CASMailbox",
                Err(Denied {
                    pattern: "set-casmailbox".to_string(),
                }),
            ),
            // Graph calls match as "METHOD /path"; DELETE needs an allow naming it.
            (&["*"], &[], "GET /v1.0/users", Ok(())),
            (&["Get-*", "GET *"], &[], "GET /v1.0/users", Ok(())),
            (&["Get-*"], &[], "GET /v1.0/users", Err(NotAllowed)),
            (
                &["POST /v1.0/users/*/assignLicense"],
                &[],
                "POST /v1.0/users/{{ item.id }}/assignLicense",
                Ok(()),
            ),
            (
                &["POST /v1.0/users/*/assignLicense"],
                &[],
                "POST /v1.0/users/x/sendMail",
                Err(NotAllowed),
            ),
            (
                &["*"],
                &["PATCH *"],
                "PATCH /v1.0/users/x",
                Err(Denied {
                    pattern: "PATCH *".to_string(),
                }),
            ),
            (
                &["*"],
                &[],
                "DELETE /v1.0/groups/g/members/u/$ref",
                Err(NeedsExplicitMethodAllow {
                    method: "DELETE".to_string(),
                }),
            ),
            (
                &["*", "delete /v1.0/groups/*"],
                &[],
                "DELETE /v1.0/groups/g/members/u/$ref",
                Ok(()),
            ),
        ];
        for (allow, deny, cmdlet, expected) in cases {
            assert_eq!(
                policy(allow, deny).check(cmdlet),
                expected,
                "allow {allow:?} deny {deny:?} cmdlet {cmdlet}"
            );
        }
    }

    #[test]
    fn read_cmdlets_are_recognised_by_verb() {
        let cases = [
            ("Get-Mailbox", true),
            ("get-mailboxstatistics", true),
            ("Test-OAuthConnectivity", true),
            ("Search-UnifiedAuditLog", true),
            ("Export-QuarantineMessage", true),
            ("Search-Mailbox", false),
            ("Find-Anything", false),
            ("Measure-Anything", false),
            ("Resolve-Anything", false),
            ("Set-Mailbox", false),
            ("Enable-Mailbox", false),
            ("Add-MailboxFolderPermission", false),
            ("Getter", false),
            ("Get", false),
        ];
        for (name, expected) in cases {
            assert_eq!(is_read_cmdlet(name), expected, "{name}");
        }
    }

    #[test]
    fn denials_say_what_to_do() {
        let text = policy(&["*"], &[])
            .check("Remove-Mailbox")
            .unwrap_err()
            .to_string();
        assert!(text.contains("\"Remove-*\""), "{text}");
    }
}
