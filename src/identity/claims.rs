//! Reading the claims of an access token (a JWT) without verifying it.
//!
//! The worker never trusts these claims for security decisions (Exchange checks the token);
//! it reads them to default the tenant (`tid`), to explain permission problems (`roles`,
//! `wids`) and to report expiry. Pure: no I/O.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The claims an operator needs to debug permissions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenClaims {
    /// Tenant id (GUID); Exchange wants it in the URL.
    #[serde(default)]
    pub tid: Option<String>,
    /// Audience: the resource the token is for.
    #[serde(default, deserialize_with = "string_or_first")]
    pub aud: Option<String>,
    /// Object id of the identity's service principal.
    #[serde(default)]
    pub oid: Option<String>,
    /// Client (application) id; v1 tokens say `appid`, v2 tokens `azp`.
    #[serde(default)]
    pub appid: Option<String>,
    #[serde(default)]
    pub azp: Option<String>,
    /// Issuer.
    #[serde(default)]
    pub iss: Option<String>,
    /// App roles granted to the identity on the resource, e.g. `Exchange.ManageAsApp`.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Entra directory role template ids.
    #[serde(default)]
    pub wids: Vec<String>,
    /// Expiry, Unix seconds.
    #[serde(default)]
    pub exp: Option<i64>,
    /// Not before, Unix seconds.
    #[serde(default)]
    pub nbf: Option<i64>,
}

impl TokenClaims {
    /// Decodes the payload (second segment) of a JWT. Returns `None` when the text is not
    /// JWT-shaped; never includes the token in any error.
    pub fn decode(jwt: &str) -> Option<Self> {
        let payload = jwt.split('.').nth(1)?;
        let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.exp.and_then(|s| DateTime::from_timestamp(s, 0))
    }

    /// The client id, whichever claim carries it.
    pub fn client_id(&self) -> Option<&str> {
        self.appid.as_deref().or(self.azp.as_deref())
    }

    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r.eq_ignore_ascii_case(role))
    }

    /// Directory roles with their names, leaving out the marker every app-only token carries.
    pub fn directory_roles(&self) -> Vec<(String, Option<&'static str>)> {
        self.wids
            .iter()
            .filter(|w| !w.eq_ignore_ascii_case(APP_ONLY_MARKER_WID))
            .map(|w| (w.clone(), directory_role_name(w)))
            .collect()
    }
}

fn string_or_first<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Aud {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<Aud>::deserialize(d)? {
        None => None,
        Some(Aud::One(s)) => Some(s),
        Some(Aud::Many(v)) => v.into_iter().next(),
    })
}

/// The app role that lets a service principal use Exchange Online as an app.
pub const EXCHANGE_MANAGE_AS_APP: &str = "Exchange.ManageAsApp";
/// Its id, the same in every organisation.
pub const EXCHANGE_MANAGE_AS_APP_ID: &str = "dc50a0fb-09a3-484d-be87-e023b12c6440";
/// The appId of the "Office 365 Exchange Online" service principal.
pub const EXCHANGE_ONLINE_APP_ID: &str = "00000002-0000-0ff1-ce00-000000000000";
/// In `wids` of every app-only token; not a directory role.
pub const APP_ONLY_MARKER_WID: &str = "0997a1d0-0d1d-4acb-b408-d5ca73121e90";

/// Directory roles that matter for Exchange Online, by template id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirectoryRole {
    pub id: &'static str,
    pub name: &'static str,
    /// Can run any Exchange Online task (Set-, Enable-, Add-, …).
    pub exchange_write: bool,
    /// Can read Exchange Online configuration.
    pub exchange_read: bool,
}

pub const DIRECTORY_ROLES: &[DirectoryRole] = &[
    DirectoryRole {
        id: "29232cdf-9323-42fd-ade2-1d097af3e4de",
        name: "Exchange Administrator",
        exchange_write: true,
        exchange_read: true,
    },
    DirectoryRole {
        id: "62e90394-69f5-4237-9190-012177145e10",
        name: "Global Administrator",
        exchange_write: true,
        exchange_read: true,
    },
    DirectoryRole {
        id: "31392ffb-586c-42d1-9346-e59415a2cc4e",
        name: "Exchange Recipient Administrator",
        exchange_write: true,
        exchange_read: true,
    },
    DirectoryRole {
        id: "17315797-102d-40b4-93e0-432062caca18",
        name: "Compliance Administrator",
        exchange_write: true,
        exchange_read: true,
    },
    DirectoryRole {
        id: "729827e3-9c14-49f7-bb1b-9608f156bbb8",
        name: "Helpdesk Administrator",
        exchange_write: true,
        exchange_read: true,
    },
    DirectoryRole {
        id: "194ae4cb-b126-40b2-bd5b-6091b380977d",
        name: "Security Administrator",
        exchange_write: false,
        exchange_read: true,
    },
    DirectoryRole {
        id: "f2ef992c-3afb-46b9-b7cf-a126ee74c451",
        name: "Global Reader",
        exchange_write: false,
        exchange_read: true,
    },
    DirectoryRole {
        id: "5d6b6bb7-de71-4623-b4af-96380a352509",
        name: "Security Reader",
        exchange_write: false,
        exchange_read: true,
    },
];

pub fn directory_role(template_id: &str) -> Option<&'static DirectoryRole> {
    DIRECTORY_ROLES
        .iter()
        .find(|r| r.id.eq_ignore_ascii_case(template_id))
}

pub fn directory_role_name(template_id: &str) -> Option<&'static str> {
    directory_role(template_id).map(|r| r.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: serde_json::Value) -> String {
        let enc = |v: &serde_json::Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
        format!(
            "{}.{}.sig",
            enc(&serde_json::json!({"alg":"none","typ":"JWT"})),
            enc(&payload)
        )
    }

    #[test]
    fn decodes_the_claims_an_operator_needs() {
        let token = jwt(serde_json::json!({
            "tid": "72f988bf-0000-0000-0000-000000000000",
            "aud": "https://outlook.office365.com",
            "roles": ["Exchange.ManageAsApp"],
            "wids": [APP_ONLY_MARKER_WID, "29232cdf-9323-42fd-ade2-1d097af3e4de"],
            "exp": 1_800_000_000,
            "ver": "1.0"
        }));
        let claims = TokenClaims::decode(&token).unwrap();
        assert_eq!(
            claims.tid.as_deref(),
            Some("72f988bf-0000-0000-0000-000000000000")
        );
        assert!(claims.has_role("exchange.manageasapp"));
        assert_eq!(
            claims.directory_roles(),
            vec![(
                "29232cdf-9323-42fd-ade2-1d097af3e4de".to_string(),
                Some("Exchange Administrator")
            )]
        );
        assert_eq!(claims.expires_at().unwrap().timestamp(), 1_800_000_000);
    }

    #[test]
    fn accepts_an_audience_array_and_rejects_non_jwts() {
        let claims = TokenClaims::decode(&jwt(serde_json::json!({"aud": ["a", "b"]}))).unwrap();
        assert_eq!(claims.aud.as_deref(), Some("a"));
        assert!(TokenClaims::decode("not a token").is_none());
        assert!(TokenClaims::decode("a.!!!.c").is_none());
    }
}
