//! The simulated Entra directory behind the Graph simulator: one user per mailbox of the
//! Exchange simulator's [`Organisation`] (same id — the mailbox's
//! `ExternalDirectoryObjectId` — same UPN, same mail), plus what only the directory knows:
//! `accountEnabled`, licences, usage location, groups with nesting, subscribed SKUs.
//! Deterministic: the same organisation and seed give the same directory.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value, json};

use crate::simulator::exchange::org::{Organisation, RecipientTypeDetails, Seeded};

/// Microsoft 365 E3 (`SPE_E3`), from Microsoft's public licensing service plan reference.
pub const SKU_E3: &str = "05e9a617-0261-4cee-bb44-138d3ef5d965";
/// Microsoft 365 E5 (`SPE_E5`).
pub const SKU_E5: &str = "06ebc4ee-1bb5-47dd-8120-11324bc54e06";

/// What `GET /users` returns without `$select`.
pub const DEFAULT_USER_PROPERTIES: &[&str] = &[
    "businessPhones",
    "displayName",
    "givenName",
    "id",
    "jobTitle",
    "mail",
    "mobilePhone",
    "officeLocation",
    "preferredLanguage",
    "surname",
    "userPrincipalName",
];

/// Every user property the simulator can `$select`.
const USER_PROPERTIES: &[&str] = &[
    "businessPhones",
    "displayName",
    "givenName",
    "id",
    "jobTitle",
    "mail",
    "mobilePhone",
    "officeLocation",
    "preferredLanguage",
    "surname",
    "userPrincipalName",
    "accountEnabled",
    "assignedLicenses",
    "usageLocation",
    "userType",
    "onPremisesSyncEnabled",
];

const GROUP_PROPERTIES: &[&str] = &[
    "id",
    "displayName",
    "mailNickname",
    "mail",
    "mailEnabled",
    "securityEnabled",
    "groupTypes",
    "description",
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sku {
    pub sku_id: String,
    pub part_number: &'static str,
    pub prepaid: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectoryUser {
    pub id: String,
    pub user_principal_name: String,
    pub display_name: String,
    pub mail: Option<String>,
    pub account_enabled: bool,
    /// SKU ids.
    pub licenses: Vec<String>,
    pub usage_location: Option<String>,
}

impl DirectoryUser {
    fn property(&self, name: &str) -> Value {
        let (given, surname) = self
            .display_name
            .split_once(' ')
            .map_or((self.display_name.as_str(), ""), |(g, s)| (g, s));
        match name {
            "id" => json!(self.id),
            "userPrincipalName" => json!(self.user_principal_name),
            "displayName" => json!(self.display_name),
            "givenName" => json!(given),
            "surname" => json!(surname),
            "mail" => json!(self.mail),
            "accountEnabled" => json!(self.account_enabled),
            "assignedLicenses" => json!(
                self.licenses
                    .iter()
                    .map(|sku| json!({"skuId": sku, "disabledPlans": []}))
                    .collect::<Vec<_>>()
            ),
            "usageLocation" => json!(self.usage_location),
            "userType" => json!("Member"),
            "businessPhones" => json!([]),
            "onPremisesSyncEnabled" => Value::Null,
            _ => Value::Null,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Member {
    User(usize),
    Group(usize),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub id: String,
    pub display_name: String,
    pub mail_nickname: String,
    pub members: Vec<Member>,
}

impl Group {
    fn property(&self, name: &str, domain: &str) -> Value {
        match name {
            "id" => json!(self.id),
            "displayName" => json!(self.display_name),
            "mailNickname" => json!(self.mail_nickname),
            "mail" => json!(format!("{}@{domain}", self.mail_nickname)),
            "mailEnabled" => json!(true),
            "securityEnabled" => json!(true),
            "groupTypes" => json!([]),
            "description" => json!(format!("{} (simulated)", self.display_name)),
            _ => Value::Null,
        }
    }
}

/// A sent message, as the simulator understood it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentMail {
    /// The sender mailbox's UPN.
    pub from: String,
    pub subject: String,
    pub content_type: String,
    pub content: String,
    pub to: Vec<String>,
    pub cc: Vec<String>,
}

#[derive(Debug)]
pub struct Directory {
    pub domain: String,
    pub users: Vec<DirectoryUser>,
    pub groups: Vec<Group>,
    pub skus: Vec<Sku>,
    index: HashMap<String, usize>,
}

/// The property list of `$select`, or an error naming the unknown one.
pub fn selection<'a>(
    select: Option<&'a str>,
    defaults: &'a [&'a str],
    known: &[&str],
    kind: &str,
) -> Result<Vec<&'a str>, String> {
    let Some(select) = select else {
        return Ok(defaults.to_vec());
    };
    let mut chosen = Vec::new();
    for name in select.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if !known.contains(&name) {
            return Err(format!(
                "Could not find a property named '{name}' on type 'microsoft.graph.{kind}'."
            ));
        }
        if !chosen.contains(&name) {
            chosen.push(name);
        }
    }
    Ok(chosen)
}

pub fn user_selection(select: Option<&str>) -> Result<Vec<&str>, String> {
    selection(select, DEFAULT_USER_PROPERTIES, USER_PROPERTIES, "user")
}

pub fn group_selection(select: Option<&str>) -> Result<Vec<&str>, String> {
    selection(select, GROUP_PROPERTIES, GROUP_PROPERTIES, "group")
}

impl Directory {
    /// The directory of `org`'s mailboxes. User mailboxes are enabled and licensed (one in
    /// ten E5, the rest E3) except "leavers": about one in twelve, disabled, half of them
    /// still holding their licence (what a clean-up runbook looks for). Shared, room and
    /// equipment mailboxes have disabled, unlicensed accounts, as Exchange creates them.
    /// One group per team (`Sales Team`, …) and `All Staff` holding the team groups;
    /// `Sales Team` also nests `Sales Managers`.
    pub fn from_organisation(org: &Organisation, seed: u64) -> Self {
        let mut rng = Seeded::new(seed ^ 0x4752_4150_4844_4952);
        let mut users = Vec::with_capacity(org.mailboxes().len());
        for (i, m) in org.mailboxes().iter().enumerate() {
            let person = m.recipient_type_details == RecipientTypeDetails::UserMailbox;
            let leaver = person && i >= 4 && rng.chance(8);
            let keeps_licence = !leaver || rng.chance(50);
            let sku = if i % 10 == 0 { SKU_E5 } else { SKU_E3 };
            users.push(DirectoryUser {
                id: m.external_directory_object_id.to_string(),
                user_principal_name: m.user_principal_name.clone(),
                display_name: m.display_name.clone(),
                mail: Some(m.primary_smtp_address.clone()),
                account_enabled: person && !leaver,
                licenses: if person && keeps_licence {
                    vec![sku.to_string()]
                } else {
                    Vec::new()
                },
                usage_location: person.then(|| "US".to_string()),
            });
        }
        const TEAMS: &[&str] = &[
            "Sales",
            "Support",
            "Finance",
            "Legal",
            "Marketing",
            "Research",
        ];
        let mut groups: Vec<Group> = TEAMS
            .iter()
            .map(|team| Group {
                id: rng.uuid().to_string(),
                display_name: format!("{team} Team"),
                mail_nickname: format!("{}-team", team.to_ascii_lowercase()),
                members: Vec::new(),
            })
            .collect();
        let mut sales_managers = Vec::new();
        for (i, user) in users.iter().enumerate() {
            if user.usage_location.is_none() {
                continue;
            }
            let team = i % TEAMS.len();
            if team == 0 && sales_managers.len() < 3 {
                sales_managers.push(Member::User(i));
            } else {
                groups[team].members.push(Member::User(i));
            }
        }
        let managers = groups.len();
        groups.push(Group {
            id: rng.uuid().to_string(),
            display_name: "Sales Managers".to_string(),
            mail_nickname: "sales-managers".to_string(),
            members: sales_managers,
        });
        groups[0].members.push(Member::Group(managers));
        groups.push(Group {
            id: rng.uuid().to_string(),
            display_name: "All Staff".to_string(),
            mail_nickname: "all-staff".to_string(),
            members: (0..TEAMS.len()).map(Member::Group).collect(),
        });
        let mut index = HashMap::with_capacity(users.len() * 2);
        for (i, user) in users.iter().enumerate() {
            index.insert(user.id.to_ascii_lowercase(), i);
            index.insert(user.user_principal_name.to_ascii_lowercase(), i);
        }
        let mut directory = Self {
            domain: org.domain.clone(),
            users,
            groups,
            skus: Vec::new(),
            index,
        };
        let held = |sku: &str| {
            directory
                .users
                .iter()
                .filter(|u| u.licenses.iter().any(|l| l == sku))
                .count() as u64
        };
        let (e3, e5) = (held(SKU_E3), held(SKU_E5));
        directory.skus = vec![
            Sku {
                sku_id: SKU_E3.to_string(),
                part_number: "SPE_E3",
                prepaid: e3 + 25,
            },
            Sku {
                sku_id: SKU_E5.to_string(),
                part_number: "SPE_E5",
                prepaid: e5 + 5,
            },
        ];
        directory
    }

    /// A user by id or UPN (any case).
    pub fn user(&self, key: &str) -> Option<usize> {
        self.index.get(&key.to_ascii_lowercase()).copied()
    }

    pub fn group(&self, id: &str) -> Option<usize> {
        self.groups
            .iter()
            .position(|g| g.id.eq_ignore_ascii_case(id))
    }

    pub fn user_json(&self, position: usize, select: &[&str]) -> Value {
        let user = &self.users[position];
        let mut object = Map::with_capacity(select.len() + 1);
        for name in select {
            object.insert((*name).to_string(), user.property(name));
        }
        Value::Object(object)
    }

    pub fn group_json(&self, position: usize, select: &[&str]) -> Value {
        let group = &self.groups[position];
        let mut object = Map::with_capacity(select.len() + 1);
        for name in select {
            object.insert((*name).to_string(), group.property(name, &self.domain));
        }
        Value::Object(object)
    }

    /// A member as a `directoryObject` with its `@odata.type`.
    pub fn member_json(&self, member: &Member, user_select: &[&str]) -> Value {
        let (kind, mut value) = match member {
            Member::User(i) => ("#microsoft.graph.user", self.user_json(*i, user_select)),
            Member::Group(i) => (
                "#microsoft.graph.group",
                self.group_json(*i, &["id", "displayName", "mailNickname"]),
            ),
        };
        if let Value::Object(map) = &mut value {
            map.insert("@odata.type".to_string(), json!(kind));
            map.entry("id").or_insert_with(|| match member {
                Member::User(i) => json!(self.users[*i].id),
                Member::Group(i) => json!(self.groups[*i].id),
            });
        }
        value
    }

    /// Members at any depth, each once, in breadth-first order (groups included).
    pub fn transitive_members(&self, group: usize) -> Vec<Member> {
        let mut seen_groups: HashSet<usize> = HashSet::from([group]);
        let mut seen_users: HashSet<usize> = HashSet::new();
        let mut out = Vec::new();
        let mut queue = std::collections::VecDeque::from([group]);
        while let Some(g) = queue.pop_front() {
            for member in &self.groups[g].members {
                match member {
                    Member::User(u) => {
                        if seen_users.insert(*u) {
                            out.push(member.clone());
                        }
                    }
                    Member::Group(inner) => {
                        if seen_groups.insert(*inner) {
                            out.push(member.clone());
                            queue.push_back(*inner);
                        }
                    }
                }
            }
        }
        out
    }

    pub fn consumed(&self, sku: &str) -> u64 {
        self.users
            .iter()
            .filter(|u| u.licenses.iter().any(|l| l.eq_ignore_ascii_case(sku)))
            .count() as u64
    }

    pub fn sku_json(&self, sku: &Sku) -> Value {
        json!({
            "skuId": sku.sku_id,
            "skuPartNumber": sku.part_number,
            "capabilityStatus": "Enabled",
            "appliesTo": "User",
            "consumedUnits": self.consumed(&sku.sku_id),
            "prepaidUnits": {"enabled": sku.prepaid, "lockedOut": 0, "suspended": 0, "warning": 0},
            "servicePlans": [],
        })
    }
}

/// One clause of the `$filter` subset the simulator understands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Clause {
    AccountEnabled { value: bool, negate: bool },
    UpnStartsWith(String),
    HasLicense(String),
}

impl Clause {
    pub fn matches(&self, user: &DirectoryUser) -> bool {
        match self {
            Clause::AccountEnabled { value, negate } => (user.account_enabled == *value) != *negate,
            Clause::UpnStartsWith(prefix) => user
                .user_principal_name
                .to_ascii_lowercase()
                .starts_with(&prefix.to_ascii_lowercase()),
            Clause::HasLicense(sku) => user.licenses.iter().any(|l| l.eq_ignore_ascii_case(sku)),
        }
    }

    /// `ne` is an advanced query (needs `ConsistencyLevel: eventual` and `$count=true`).
    pub fn is_advanced(&self) -> bool {
        matches!(self, Clause::AccountEnabled { negate: true, .. })
    }
}

/// Parses `accountEnabled eq|ne true|false`, `startswith(userPrincipalName,'x')` and
/// `assignedLicenses/any(x:x/skuId eq <guid>)`, joined by `and`.
pub fn parse_user_filter(filter: &str) -> Result<Vec<Clause>, String> {
    let mut clauses = Vec::new();
    for part in split_and(filter) {
        let part = part.trim();
        let lower = part.to_ascii_lowercase();
        let compact: String = lower.split_whitespace().collect::<Vec<_>>().join(" ");
        let clause = if let Some(rest) = compact.strip_prefix("accountenabled ") {
            match rest {
                "eq true" => Clause::AccountEnabled {
                    value: true,
                    negate: false,
                },
                "eq false" => Clause::AccountEnabled {
                    value: false,
                    negate: false,
                },
                "ne true" => Clause::AccountEnabled {
                    value: true,
                    negate: true,
                },
                "ne false" => Clause::AccountEnabled {
                    value: false,
                    negate: true,
                },
                _ => return Err(part.to_string()),
            }
        } else if lower.starts_with("startswith(userprincipalname,") && lower.ends_with(')') {
            let inner = part["startswith(userprincipalname,".len()..part.len() - 1].trim();
            let value = inner
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .ok_or_else(|| part.to_string())?;
            Clause::UpnStartsWith(value.replace("''", "'"))
        } else if let Some(rest) = compact.strip_prefix("assignedlicenses/any(") {
            let rest = rest.strip_suffix(')').ok_or_else(|| part.to_string())?;
            let (var, predicate) = rest.split_once(':').ok_or_else(|| part.to_string())?;
            let guid = predicate
                .trim()
                .strip_prefix(&format!("{}/skuid eq ", var.trim()))
                .ok_or_else(|| part.to_string())?;
            uuid::Uuid::parse_str(guid.trim()).map_err(|_| part.to_string())?;
            Clause::HasLicense(guid.trim().to_string())
        } else {
            return Err(part.to_string());
        };
        clauses.push(clause);
    }
    Ok(clauses)
}

/// Splits on ` and ` outside quotes.
fn split_and(filter: &str) -> Vec<&str> {
    let bytes = filter.as_bytes();
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut i) = (0, false, 0);
    while i < bytes.len() {
        if bytes[i] == b'\'' {
            quoted = !quoted;
        } else if !quoted
            && filter[i..].len() >= 5
            && filter[i..i + 5].eq_ignore_ascii_case(" and ")
        {
            parts.push(&filter[start..i]);
            start = i + 5;
            i += 5;
            continue;
        }
        i += 1;
    }
    parts.push(&filter[start..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_directory_mirrors_the_exchange_organisation_deterministically() {
        let org = Organisation::seeded("contoso", "t", 300, 7);
        let a = Directory::from_organisation(&org, 7);
        let b = Directory::from_organisation(&Organisation::seeded("contoso", "t", 300, 7), 7);
        assert_eq!(a.users, b.users);
        assert_eq!(a.groups, b.groups);
        let adele = a.user("Adele.Vance@contoso.com").expect("adele by UPN");
        assert_eq!(a.user(&a.users[adele].id), Some(adele));
        assert!(a.users[adele].account_enabled);
        assert_eq!(
            a.users[adele].id,
            org.mailboxes()[adele]
                .external_directory_object_id
                .to_string()
        );
        let sales = a.user("sales@contoso.com").unwrap();
        assert!(!a.users[sales].account_enabled && a.users[sales].licenses.is_empty());
        assert!(
            a.users
                .iter()
                .any(|u| !u.account_enabled && !u.licenses.is_empty()),
            "some leavers still hold a licence"
        );
    }

    #[test]
    fn transitive_members_reach_nested_groups_once() {
        let org = Organisation::seeded("contoso", "t", 120, 1);
        let d = Directory::from_organisation(&org, 1);
        let all = d
            .groups
            .iter()
            .position(|g| g.display_name == "All Staff")
            .unwrap();
        let members = d.transitive_members(all);
        let people = members
            .iter()
            .filter(|m| matches!(m, Member::User(_)))
            .count();
        let expected = d
            .users
            .iter()
            .filter(|u| u.usage_location.is_some())
            .count();
        assert_eq!(people, expected);
        assert!(members.iter().any(
            |m| matches!(m, Member::Group(g) if d.groups[*g].display_name == "Sales Managers")
        ));
    }

    #[test]
    fn the_filter_subset_parses_and_refuses_the_rest() {
        let clauses = parse_user_filter(&format!(
            "accountEnabled eq false and assignedLicenses/any(x:x/skuId eq {SKU_E3}) and startswith(userPrincipalName,'o''b')"
        ))
        .unwrap();
        assert_eq!(
            clauses,
            vec![
                Clause::AccountEnabled {
                    value: false,
                    negate: false
                },
                Clause::HasLicense(SKU_E3.to_string()),
                Clause::UpnStartsWith("o'b".to_string()),
            ]
        );
        for bad in [
            "displayName eq 'x'",
            "accountEnabled eq maybe",
            "assignedLicenses/any(x:x/skuId eq nope)",
        ] {
            assert!(parse_user_filter(bad).is_err(), "{bad}");
        }
    }
}
