//! What the identity needs for a set of runbooks, least privilege first: the Exchange
//! app role and directory role their cmdlets need (narrower when they only read, or only
//! touch recipients), and each Microsoft Graph app role their Graph steps need, with its id.
//!
//! Pure: runbooks in, [`Permissions`] out. `runbook-worker permissions` prints it and
//! `doctor` compares it with the token's `roles`.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::graph::permissions::{GRANT_FLAG, GRANT_SCRIPT, app_role_id, required_roles};

use super::Runbook;

/// The Exchange application role every cmdlet needs.
pub const EXCHANGE_APP_ROLE: &str = "Exchange.ManageAsApp";

/// Cmdlet nouns an Exchange Recipient Administrator may change: mailboxes and their
/// permissions, recipients and groups.
const RECIPIENT_NOUNS: &[&str] = &[
    "Mailbox",
    "CASMailbox",
    "MailboxPermission",
    "MailboxFolderPermission",
    "MailboxAutoReplyConfiguration",
    "MailboxRegionalConfiguration",
    "MailboxCalendarConfiguration",
    "MailContact",
    "MailUser",
    "RecipientPermission",
    "DistributionGroup",
    "DistributionGroupMember",
    "UnifiedGroup",
    "UnifiedGroupLinks",
];

/// The Exchange side of [`Permissions`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExchangeNeed {
    /// Always [`EXCHANGE_APP_ROLE`].
    pub app_role: &'static str,
    /// The Entra directory role the grant script assigns (`--role`).
    pub directory_role: &'static str,
    /// Why this role: the cmdlets that need it.
    pub cmdlets: Vec<String>,
}

/// One Graph app role and the calls that need it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GraphRoleNeed {
    pub role: String,
    pub id: String,
    /// `runbook/step: METHOD /path` (or `notify: …`).
    pub needed_by: Vec<String>,
}

/// Everything the identity needs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Permissions {
    /// `None` when no runbook calls a cmdlet.
    pub exchange: Option<ExchangeNeed>,
    pub graph: Vec<GraphRoleNeed>,
    /// Graph calls the permission table does not know: check Microsoft's reference.
    pub unknown_graph_calls: Vec<String>,
    /// The grant script's command line for exactly these roles.
    pub grant_command: String,
}

impl Permissions {
    /// The app roles (Exchange and Graph) a token must hold.
    pub fn app_roles(&self) -> Vec<&str> {
        self.exchange
            .iter()
            .map(|e| e.app_role)
            .chain(self.graph.iter().map(|g| g.role.as_str()))
            .collect()
    }

    /// The needed app roles `held` (a token's `roles`) lacks.
    pub fn missing(&self, held: &[String]) -> Vec<&str> {
        self.app_roles()
            .into_iter()
            .filter(|r| !held.iter().any(|h| h.eq_ignore_ascii_case(r)))
            .collect()
    }
}

fn noun(cmdlet: &str) -> &str {
    cmdlet.split_once('-').map(|(_, n)| n).unwrap_or(cmdlet)
}

/// What `runbooks` need; `mail_sender` names notify's email sender when email targets
/// exist (they need Mail.Send).
pub fn required_permissions<'r>(
    runbooks: impl IntoIterator<Item = &'r Runbook>,
    mail_sender: bool,
) -> Permissions {
    let mut cmdlets: BTreeMap<String, bool> = BTreeMap::new();
    let mut roles: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    let mut unknown = Vec::new();
    for runbook in runbooks {
        for step in &runbook.steps {
            let place = format!("{}/{}: {}", runbook.name, step.name, step.cmdlet);
            match &step.graph {
                None => {
                    cmdlets.insert(step.cmdlet.clone(), step.is_read());
                }
                Some(graph) => match required_roles(&graph.method, &graph.path) {
                    Some(candidates) => roles.entry(candidates[0]).or_default().push(place),
                    None => unknown.push(place),
                },
            }
        }
    }
    if mail_sender {
        roles
            .entry("Mail.Send")
            .or_default()
            .push("notify: email targets (POST /v1.0/users/{sender}/sendMail)".to_string());
    }
    let exchange = (!cmdlets.is_empty()).then(|| {
        let directory_role = if cmdlets.values().all(|read| *read) {
            "Global Reader"
        } else if cmdlets.iter().filter(|(_, read)| !**read).all(|(c, _)| {
            RECIPIENT_NOUNS
                .iter()
                .any(|n| n.eq_ignore_ascii_case(noun(c)))
        }) {
            "Exchange Recipient Administrator"
        } else {
            "Exchange Administrator"
        };
        ExchangeNeed {
            app_role: EXCHANGE_APP_ROLE,
            directory_role,
            cmdlets: cmdlets.into_keys().collect(),
        }
    });
    let graph: Vec<GraphRoleNeed> = roles
        .into_iter()
        .map(|(role, needed_by)| GraphRoleNeed {
            role: role.to_string(),
            id: app_role_id(role).unwrap_or_default().to_string(),
            needed_by,
        })
        .collect();
    let mut grant_command = format!(
        "{GRANT_SCRIPT} --principal-id <principal id> --role \"{}\"",
        exchange.as_ref().map_or("none", |e| e.directory_role)
    );
    for need in &graph {
        grant_command.push_str(&format!(" {GRANT_FLAG} {}", need.role));
    }
    Permissions {
        exchange,
        graph,
        unknown_graph_calls: unknown,
        grant_command,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runbook::{CmdletPolicy, parse_runbook};

    fn runbook(steps: &str) -> Runbook {
        parse_runbook("r", "r.toml", steps, &CmdletPolicy::default())
            .unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn step(name: &str, call: &str) -> String {
        let key = if call.contains(' ') {
            "graph"
        } else {
            "cmdlet"
        };
        format!("[[steps]]\nname = \"{name}\"\n{key} = \"{call}\"\n")
    }

    #[test]
    fn each_call_asks_for_its_least_privileged_role_and_the_narrowest_exchange_role() {
        let reads = runbook(&format!(
            "{}{}{}",
            step("a", "Get-Mailbox"),
            step("b", "GET /v1.0/users"),
            step(
                "c",
                "GET /v1.0/groups/g/transitiveMembers/microsoft.graph.user"
            ),
        ));
        let p = required_permissions([&reads], false);
        assert_eq!(p.exchange.as_ref().unwrap().directory_role, "Global Reader");
        let roles: Vec<(&str, &str)> = p
            .graph
            .iter()
            .map(|g| (g.role.as_str(), g.id.as_str()))
            .collect();
        assert_eq!(
            roles,
            [
                (
                    "GroupMember.Read.All",
                    "98830695-27a2-44f7-8c18-0c3ebc9698f6"
                ),
                ("User.Read.All", "df021288-bdef-4463-88db-98f22de89214"),
            ]
        );
        assert_eq!(
            p.grant_command,
            "deploy/permissions/grant-exchange-permissions.sh --principal-id <principal id> --role \"Global Reader\" --graph-role GroupMember.Read.All --graph-role User.Read.All"
        );
        assert_eq!(p.graph[1].needed_by, ["r/b: GET /v1.0/users"]);

        let writes = runbook(&format!(
            "{}{}{}",
            step("a", "Set-Mailbox"),
            step("b", "GET /v1.0/subscribedSkus"),
            step("c", "POST /v1.0/users/x/assignLicense"),
        ));
        let p = required_permissions([&writes], true);
        assert_eq!(
            p.exchange.as_ref().unwrap().directory_role,
            "Exchange Recipient Administrator"
        );
        let names: Vec<&str> = p.graph.iter().map(|g| g.role.as_str()).collect();
        assert_eq!(
            names,
            [
                "LicenseAssignment.ReadWrite.All",
                "Mail.Send",
                "Organization.Read.All"
            ]
        );
        assert_eq!(
            p.missing(&["exchange.manageasapp".into(), "Mail.Send".into()]),
            ["LicenseAssignment.ReadWrite.All", "Organization.Read.All"]
        );

        let admin = runbook(&step("a", "Set-OrganizationConfig"));
        let p = required_permissions([&admin], false);
        assert_eq!(p.exchange.unwrap().directory_role, "Exchange Administrator");

        let graph_only = runbook(&step("a", "GET /v1.0/me"));
        let p = required_permissions([&graph_only], false);
        assert!(p.exchange.is_none() && p.graph.is_empty());
        assert_eq!(p.unknown_graph_calls, ["r/a: GET /v1.0/me"]);
        assert!(p.grant_command.contains("--role \"none\""));
    }
}
