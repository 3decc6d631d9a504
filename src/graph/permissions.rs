//! Which Graph application permission (app role) a call needs, and the roles' ids.
//!
//! Pure. The ids are the same in every tenant (Microsoft's generated permissions table);
//! [`required_roles`] maps a method and path to the roles that allow it, least privileged
//! first, so a 403 can name what to grant.

/// Application permissions the worker may need, with their `appRoleId`s.
pub const APP_ROLES: &[(&str, &str)] = &[
    ("User.Read.All", "df021288-bdef-4463-88db-98f22de89214"),
    ("Group.Read.All", "5b567255-7703-4780-807c-7be8301ae99b"),
    (
        "GroupMember.Read.All",
        "98830695-27a2-44f7-8c18-0c3ebc9698f6",
    ),
    ("Directory.Read.All", "7ab1d382-f21e-4acd-a863-ba3e13f7da61"),
    ("Mail.Send", "b633e1c5-b582-4048-a93e-9f11b44c7e96"),
    ("User.ReadWrite.All", "741f803b-c850-494e-b5df-cde7c675a1ca"),
    (
        "Organization.Read.All",
        "498476ce-e0fe-48b0-b801-37ba7e2685c6",
    ),
    (
        "LicenseAssignment.ReadWrite.All",
        "5facf0c1-8979-4e95-abcf-ff3d079771c0",
    ),
    ("AuditLog.Read.All", "b0afded3-3588-46d8-8b3d-9842eff778da"),
    (
        "AppRoleAssignment.ReadWrite.All",
        "06b708a9-e830-4db3-a914-8e69da51d44f",
    ),
    (
        "Application.Read.All",
        "9a5d68dd-52b0-4cc2-bd40-abcf44ac3a30",
    ),
];

/// The flag the grant script takes for one Graph app role (added to the script when Graph
/// steps land in runbooks).
pub const GRANT_SCRIPT: &str = "deploy/permissions/grant-exchange-permissions.sh";
pub const GRANT_FLAG: &str = "--graph-role";

/// The `appRoleId` of a Graph application permission (case-insensitive name).
pub fn app_role_id(name: &str) -> Option<&'static str> {
    APP_ROLES
        .iter()
        .find(|(role, _)| role.eq_ignore_ascii_case(name))
        .map(|(_, id)| *id)
}

/// The roles that allow `method` on `path` (`/v1.0/users/{id}/sendMail`, with or without
/// query), least privileged first; `None` for calls this table does not know.
pub fn required_roles(method: &str, path: &str) -> Option<&'static [&'static str]> {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let mut segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if matches!(segments.first(), Some(&"v1.0" | &"beta")) {
        segments.remove(0);
    }
    // OData casts (`/microsoft.graph.user`) narrow the result, not the permission.
    segments.retain(|s| !s.starts_with("microsoft.graph."));
    let lower: Vec<String> = segments.iter().map(|s| s.to_ascii_lowercase()).collect();
    let parts: Vec<&str> = lower.iter().map(String::as_str).collect();
    let read = method.eq_ignore_ascii_case("GET");
    let roles: &'static [&'static str] = match (parts.as_slice(), read) {
        (["users"] | ["users", _], true) => {
            &["User.Read.All", "User.ReadWrite.All", "Directory.Read.All"]
        }
        (["users", _], false) => &["User.ReadWrite.All"],
        (["users", _, "assignlicense"], false) => {
            &["LicenseAssignment.ReadWrite.All", "User.ReadWrite.All"]
        }
        (["users", _, "sendmail"], false) => &["Mail.Send"],
        (["users", _, "memberof" | "transitivememberof"], true)
        | (["groups", _, "members" | "transitivemembers"], true) => &[
            "GroupMember.Read.All",
            "Group.Read.All",
            "Directory.Read.All",
        ],
        (["groups"] | ["groups", _], true) => &["Group.Read.All", "Directory.Read.All"],
        (["subscribedskus"] | ["subscribedskus", _], true) => {
            &["Organization.Read.All", "Directory.Read.All"]
        }
        (["serviceprincipals", ..], true) => &["Application.Read.All", "Directory.Read.All"],
        _ => return None,
    };
    Some(roles)
}

/// The role to grant when a call on `path` was refused and the token held `held`: the
/// least privileged required role, unless the token already has one of them.
pub fn missing_role(method: &str, path: &str, held: &[String]) -> Option<&'static str> {
    let roles = required_roles(method, path)?;
    let has = |role: &str| held.iter().any(|h| h.eq_ignore_ascii_case(role));
    if roles.iter().any(|r| has(r)) {
        return None;
    }
    roles.first().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_call_maps_to_its_least_privileged_role_first() {
        let table = [
            ("GET", "/v1.0/users", Some("User.Read.All")),
            (
                "GET",
                "/v1.0/users?$top=999&$select=id",
                Some("User.Read.All"),
            ),
            (
                "GET",
                "/v1.0/users/adele@contoso.com",
                Some("User.Read.All"),
            ),
            ("PATCH", "/v1.0/users/42", Some("User.ReadWrite.All")),
            (
                "POST",
                "/v1.0/users/42/assignLicense",
                Some("LicenseAssignment.ReadWrite.All"),
            ),
            (
                "POST",
                "/v1.0/users/noreply@contoso.com/sendMail",
                Some("Mail.Send"),
            ),
            ("GET", "/v1.0/groups", Some("Group.Read.All")),
            (
                "GET",
                "/v1.0/groups/7/transitiveMembers",
                Some("GroupMember.Read.All"),
            ),
            (
                "GET",
                "/v1.0/groups/7/transitiveMembers/microsoft.graph.user",
                Some("GroupMember.Read.All"),
            ),
            ("GET", "/beta/subscribedSkus", Some("Organization.Read.All")),
            (
                "GET",
                "/v1.0/servicePrincipals",
                Some("Application.Read.All"),
            ),
            ("DELETE", "/v1.0/groups/7", None),
            ("GET", "/v1.0/me", None),
        ];
        for (method, path, expected) in table {
            let first = required_roles(method, path).map(|r| r[0]);
            assert_eq!(first, expected, "{method} {path}");
        }
    }

    #[test]
    fn the_missing_role_is_none_when_the_token_already_holds_an_allowed_one() {
        let held = vec!["Directory.Read.All".to_string()];
        assert_eq!(missing_role("GET", "/v1.0/users", &held), None);
        assert_eq!(
            missing_role("POST", "/v1.0/users/x/sendMail", &held),
            Some("Mail.Send")
        );
        assert_eq!(
            missing_role("GET", "/v1.0/subscribedSkus", &[]),
            Some("Organization.Read.All")
        );
    }

    #[test]
    fn every_role_a_call_needs_has_a_known_id() {
        let calls = [
            ("GET", "/users"),
            ("PATCH", "/users/x"),
            ("POST", "/users/x/assignLicense"),
            ("POST", "/users/x/sendMail"),
            ("GET", "/groups"),
            ("GET", "/groups/x/members"),
            ("GET", "/subscribedSkus"),
            ("GET", "/servicePrincipals"),
        ];
        for (method, path) in calls {
            for role in required_roles(method, path).unwrap() {
                let id = app_role_id(role).unwrap_or_else(|| panic!("{role} has no id"));
                assert!(uuid::Uuid::parse_str(id).is_ok(), "{role}: {id}");
            }
        }
        assert_eq!(
            app_role_id("mail.send"),
            Some("b633e1c5-b582-4048-a93e-9f11b44c7e96")
        );
    }
}
