//! Which token endpoint and which identity to use, decided from the `[identity]` settings and
//! the environment. Pure: no I/O, so the detection order is table-tested here.
//!
//! Detection (for `source = "auto"`) is the one the Azure SDKs use: `IDENTITY_ENDPOINT` +
//! `IDENTITY_HEADER` → App Service; `AZURE_FEDERATED_TOKEN_FILE` + `AZURE_CLIENT_ID` +
//! `AZURE_TENANT_ID` → workload identity; otherwise IMDS. The identity is the one named by
//! `identity.client_id` / `object_id` / `resource_id`, else by `AZURE_CLIENT_ID` (as
//! `DefaultAzureCredential` does in the other SDKs), else the system-assigned one.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use url::Url;

use super::environment::{
    AZURE_CLIENT_ID, AZURE_FEDERATED_TOKEN_FILE, AZURE_TENANT_ID, IDENTITY_ENDPOINT,
    IDENTITY_HEADER,
};
use super::{IdentityEnvironment, IdentityError, IdentitySettings, SourceKind};

/// The IMDS token path, appended to `identity.imds_endpoint`.
pub const IMDS_TOKEN_PATH: &str = "/metadata/identity/oauth2/token";
/// Entra ID's public-cloud host, used when `AZURE_AUTHORITY_HOST` is not set.
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";

/// Which identity of the machine to use.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentitySelector {
    /// The system-assigned identity (or, on IMDS, the only user-assigned one).
    SystemAssigned,
    /// A user-assigned identity by client (application) id.
    ClientId(String),
    /// A user-assigned identity by object (principal) id.
    ObjectId(String),
    /// A user-assigned identity by ARM resource id.
    ResourceId(String),
}

impl IdentitySelector {
    /// The selector named by at most one of the three keys (as in `[identity]` or a
    /// runbook's `identity = { client_id = "…" }`); `None` when none is set. `section` is
    /// prefixed to the key in the error (`identity` → `identity.object_id`).
    pub fn from_keys(
        section: &str,
        client_id: Option<&str>,
        object_id: Option<&str>,
        resource_id: Option<&str>,
    ) -> Result<Option<Self>, IdentityError> {
        let named: Vec<(&str, &str)> = [
            ("client_id", client_id),
            ("object_id", object_id),
            ("resource_id", resource_id),
        ]
        .into_iter()
        .filter_map(|(key, value)| value.map(|v| (key, v.trim())))
        .collect();
        if let Some((key, value)) = named.iter().find(|(_, v)| v.is_empty()) {
            return Err(IdentityError::Configuration {
                key: format!("{section}.{key}"),
                message: format!(
                    "must not be empty (got {value:?}); leave it out for the system-assigned identity"
                ),
            });
        }
        match named.as_slice() {
            [] => Ok(None),
            [("client_id", v)] => Ok(Some(Self::ClientId(v.to_string()))),
            [("object_id", v)] => Ok(Some(Self::ObjectId(v.to_string()))),
            [(_, v)] => Ok(Some(Self::ResourceId(v.to_string()))),
            [(first, _), (second, _), ..] => Err(IdentityError::Configuration {
                key: format!("{section}.{second}"),
                message: format!(
                    "set at most one of client_id, object_id, resource_id (also set: {section}.{first})"
                ),
            }),
        }
    }

    pub fn is_system_assigned(&self) -> bool {
        matches!(self, Self::SystemAssigned)
    }
}

impl fmt::Display for IdentitySelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SystemAssigned => f.write_str("the system-assigned identity"),
            Self::ClientId(id) => write!(f, "the user-assigned identity with client_id {id}"),
            Self::ObjectId(id) => write!(f, "the user-assigned identity with object_id {id}"),
            Self::ResourceId(id) => write!(f, "the user-assigned identity {id}"),
        }
    }
}

/// The decision: which source, which identity, where, and why. `Debug` never shows the
/// App Service secret.
#[derive(Clone, Debug)]
pub struct ResolvedSource {
    pub kind: SourceKind,
    pub selector: IdentitySelector,
    pub(crate) plan: Plan,
    description: ProviderDescription,
}

/// What `runbook-worker token` and `doctor` show about a provider.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProviderDescription {
    /// The source used (never `auto`).
    pub source: SourceKind,
    /// Why this source: `identity.source = "imds"`, or the variables that selected it.
    pub reason: String,
    /// The identity, in words, and where the choice came from.
    pub identity: String,
    /// Where tokens come from: a URL, or the command run.
    pub endpoint: String,
}

/// How to reach the source; what the fetcher builds SDK credentials from.
#[derive(Clone)]
pub(crate) enum Plan {
    Imds {
        /// `identity.imds_endpoint` (scheme, host, port, optional path prefix).
        base: Url,
    },
    AppService {
        endpoint: Url,
        header: SecretString,
    },
    Workload {
        client_id: String,
        tenant_id: String,
        token_file: PathBuf,
        /// Where requests really go. The SDK insists on https, so a loopback `http://`
        /// authority (a simulator) is given to it as https and downgraded by the transport.
        authority: Url,
    },
    AzureCli {
        tenant_id: Option<String>,
    },
}

impl fmt::Debug for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Imds { base } => f
                .debug_struct("Imds")
                .field("base", &base.as_str())
                .finish(),
            Self::AppService { endpoint, .. } => f
                .debug_struct("AppService")
                .field("endpoint", &endpoint.as_str())
                .field("header", &"[redacted]")
                .finish(),
            Self::Workload {
                client_id,
                tenant_id,
                token_file,
                authority,
            } => f
                .debug_struct("Workload")
                .field("client_id", client_id)
                .field("tenant_id", tenant_id)
                .field("token_file", token_file)
                .field("authority", &authority.as_str())
                .finish(),
            Self::AzureCli { tenant_id } => f
                .debug_struct("AzureCli")
                .field("tenant_id", tenant_id)
                .finish(),
        }
    }
}

impl ResolvedSource {
    pub fn description(&self) -> &ProviderDescription {
        &self.description
    }
}

/// Decides source and identity. `selector` overrides the identity of `settings` (a
/// runbook's own `identity = { … }`).
pub fn resolve(
    settings: &IdentitySettings,
    env: &IdentityEnvironment,
    selector: Option<&IdentitySelector>,
) -> Result<ResolvedSource, IdentityError> {
    let configured = IdentitySelector::from_keys(
        "identity",
        settings.client_id.as_deref(),
        settings.object_id.as_deref(),
        settings.resource_id.as_deref(),
    )?;

    let (kind, reason) = match settings.source {
        SourceKind::Auto if env.has_app_service() => (
            SourceKind::AppService,
            format!("detected: {IDENTITY_ENDPOINT} and {IDENTITY_HEADER} are set"),
        ),
        SourceKind::Auto if env.has_workload() => (
            SourceKind::Workload,
            format!(
                "detected: {AZURE_FEDERATED_TOKEN_FILE}, {AZURE_CLIENT_ID} and {AZURE_TENANT_ID} are set"
            ),
        ),
        SourceKind::Auto => (
            SourceKind::Imds,
            "detected: no App Service or workload identity variables, so the VM endpoint"
                .to_string(),
        ),
        other => (other, format!("identity.source = \"{other}\"")),
    };

    // Where the identity choice came from, for the description.
    let (selector, origin) = match (selector, configured) {
        (Some(s), _) => (s.clone(), "runbook"),
        (None, Some(s)) => (s, "settings"),
        (None, None) => match (&env.client_id, kind) {
            (Some(id), SourceKind::Imds | SourceKind::AppService | SourceKind::Workload) => {
                (IdentitySelector::ClientId(id.clone()), AZURE_CLIENT_ID)
            }
            _ => (IdentitySelector::SystemAssigned, "default"),
        },
    };

    let (plan, endpoint) = match kind {
        SourceKind::Imds | SourceKind::Auto => {
            let base = settings.imds_endpoint.as_url().clone();
            let endpoint = imds_token_url(&base);
            (Plan::Imds { base }, endpoint)
        }
        SourceKind::AppService => {
            let (Some(endpoint), Some(header)) = (&env.identity_endpoint, &env.identity_header)
            else {
                return Err(IdentityError::Configuration {
                    key: "identity.source".into(),
                    message: format!(
                        "\"app-service\" needs the {IDENTITY_ENDPOINT} and {IDENTITY_HEADER} variables the platform sets; they are missing (use \"auto\" or \"imds\" elsewhere)"
                    ),
                });
            };
            if let IdentitySelector::ResourceId(_) = selector {
                return Err(IdentityError::Configuration {
                    key: "identity.resource_id".into(),
                    message: "the App Service source cannot select by resource id (azure_identity 1.0 sends it as msi_res_id, which App Service ignores): use identity.client_id or identity.object_id".into(),
                });
            }
            let url = Url::parse(endpoint).map_err(|e| IdentityError::Configuration {
                key: "identity.source".into(),
                message: format!("{IDENTITY_ENDPOINT} is not a URL ({e}): {endpoint:?}"),
            })?;
            let shown = url.as_str().to_string();
            (
                Plan::AppService {
                    endpoint: url,
                    header: header.clone(),
                },
                shown,
            )
        }
        SourceKind::Workload => {
            let client_id = match &selector {
                IdentitySelector::ClientId(id) => id.clone(),
                IdentitySelector::SystemAssigned => {
                    return Err(workload_missing(AZURE_CLIENT_ID, "identity.client_id"));
                }
                IdentitySelector::ObjectId(_) | IdentitySelector::ResourceId(_) => {
                    return Err(IdentityError::Configuration {
                        key: "identity.source".into(),
                        message: "workload identity selects its app by client id only: use identity.client_id (or AZURE_CLIENT_ID)".into(),
                    });
                }
            };
            let tenant_id = env
                .tenant_id
                .clone()
                .ok_or_else(|| workload_missing(AZURE_TENANT_ID, "identity.source"))?;
            let token_file = env
                .federated_token_file
                .clone()
                .ok_or_else(|| workload_missing(AZURE_FEDERATED_TOKEN_FILE, "identity.source"))?;
            let host = env
                .authority_host
                .as_deref()
                .unwrap_or(DEFAULT_AUTHORITY_HOST);
            let authority = parse_authority(host)?;
            let endpoint = format!(
                "{}/{tenant_id}/oauth2/v2.0/token",
                authority.as_str().trim_end_matches('/')
            );
            (
                Plan::Workload {
                    client_id,
                    tenant_id,
                    token_file,
                    authority,
                },
                endpoint,
            )
        }
        SourceKind::AzureCli => (
            Plan::AzureCli {
                tenant_id: env.tenant_id.clone(),
            },
            "az account get-access-token".to_string(),
        ),
    };

    let identity = match (kind, origin) {
        (SourceKind::AzureCli, _) => {
            "the account signed in to the Azure CLI (identity keys are ignored)".to_string()
        }
        (SourceKind::Workload, _) => format!(
            "the workload identity app with client_id {} (from {})",
            match &selector {
                IdentitySelector::ClientId(id) => id.as_str(),
                _ => "?",
            },
            if origin == AZURE_CLIENT_ID || origin == "default" {
                AZURE_CLIENT_ID
            } else {
                origin
            }
        ),
        (_, "default") => selector.to_string(),
        (_, origin) => format!("{selector} (from {origin})"),
    };

    Ok(ResolvedSource {
        kind,
        description: ProviderDescription {
            source: kind,
            reason,
            identity,
            endpoint,
        },
        selector,
        plan,
    })
}

fn workload_missing(variable: &str, key: &str) -> IdentityError {
    IdentityError::Configuration {
        key: key.into(),
        message: format!(
            "workload identity needs {variable}; the AKS webhook sets it when the pod's service account is labelled azure.workload.identity/use=true"
        ),
    }
}

/// The full token URL for an IMDS base URL (keeping a path prefix, for a sidecar).
pub(crate) fn imds_token_url(base: &Url) -> String {
    let mut url = base.clone();
    url.set_path(&format!(
        "{}{IMDS_TOKEN_PATH}",
        base.path().trim_end_matches('/')
    ));
    url.set_query(None);
    url.to_string()
}

fn parse_authority(text: &str) -> Result<Url, IdentityError> {
    let bad = |message: String| IdentityError::Configuration {
        key: "identity.source".into(),
        message,
    };
    let url = Url::parse(text)
        .map_err(|e| bad(format!("AZURE_AUTHORITY_HOST is not a URL ({e}): {text:?}")))?;
    let loopback = url
        .host_str()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
        .and_then(|h| h.parse::<IpAddr>().ok())
        .is_some_and(|ip| ip.is_loopback());
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        _ => Err(bad(format!(
            "AZURE_AUTHORITY_HOST must be an https URL (http only for a loopback simulator), got {text:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> IdentityEnvironment {
        IdentityEnvironment::from_map(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    const APP_SERVICE: &[(&str, &str)] = &[
        (IDENTITY_ENDPOINT, "http://127.0.0.1:41000/msi/token"),
        (IDENTITY_HEADER, "header-secret"),
    ];
    const WORKLOAD: &[(&str, &str)] = &[
        (
            AZURE_FEDERATED_TOKEN_FILE,
            "/var/run/secrets/azure/tokens/t",
        ),
        (AZURE_CLIENT_ID, "wl-client"),
        (AZURE_TENANT_ID, "tenant-1"),
    ];

    type Vars<'a> = &'a [(&'a str, &'a str)];

    fn settings(source: SourceKind) -> IdentitySettings {
        IdentitySettings {
            source,
            ..IdentitySettings::default()
        }
    }

    #[test]
    fn detection_follows_the_sdk_order() {
        let both: Vec<_> = APP_SERVICE.iter().chain(WORKLOAD).copied().collect();
        let cases: &[(Vars, SourceKind, SourceKind)] = &[
            (&[], SourceKind::Auto, SourceKind::Imds),
            (APP_SERVICE, SourceKind::Auto, SourceKind::AppService),
            (WORKLOAD, SourceKind::Auto, SourceKind::Workload),
            (&both, SourceKind::Auto, SourceKind::AppService),
            (
                &[(IDENTITY_ENDPOINT, "http://x")],
                SourceKind::Auto,
                SourceKind::Imds,
            ),
            (
                &[(AZURE_CLIENT_ID, "c"), (AZURE_TENANT_ID, "t")],
                SourceKind::Auto,
                SourceKind::Imds,
            ),
            (APP_SERVICE, SourceKind::Imds, SourceKind::Imds),
            (&both, SourceKind::Workload, SourceKind::Workload),
            (&[], SourceKind::AzureCli, SourceKind::AzureCli),
        ];
        for (vars, configured, expected) in cases {
            let resolved = resolve(&settings(*configured), &env(vars), None).unwrap();
            assert_eq!(resolved.kind, *expected, "{vars:?} with {configured}");
            assert_eq!(resolved.description().source, *expected);
        }
    }

    #[test]
    fn the_identity_comes_from_runbook_then_settings_then_azure_client_id() {
        let with_client = |client: Option<&str>| IdentitySettings {
            client_id: client.map(String::from),
            ..IdentitySettings::default()
        };
        let runbook = IdentitySelector::ObjectId("runbook-oid".into());
        let cases: &[(
            IdentitySettings,
            Vars,
            Option<&IdentitySelector>,
            IdentitySelector,
        )] = &[
            (
                with_client(None),
                &[],
                None,
                IdentitySelector::SystemAssigned,
            ),
            (
                with_client(None),
                &[(AZURE_CLIENT_ID, "env-client")],
                None,
                IdentitySelector::ClientId("env-client".into()),
            ),
            (
                with_client(Some("settings-client")),
                &[(AZURE_CLIENT_ID, "env-client")],
                None,
                IdentitySelector::ClientId("settings-client".into()),
            ),
            (
                with_client(Some("settings-client")),
                &[],
                Some(&runbook),
                runbook.clone(),
            ),
            (
                IdentitySettings {
                    resource_id: Some("/subscriptions/s/rg/x".into()),
                    ..IdentitySettings::default()
                },
                &[],
                None,
                IdentitySelector::ResourceId("/subscriptions/s/rg/x".into()),
            ),
        ];
        for (settings, vars, selector, expected) in cases {
            let resolved = resolve(settings, &env(vars), *selector).unwrap();
            assert_eq!(&resolved.selector, expected, "{settings:?} {vars:?}");
        }
        let described = resolve(&with_client(None), &env(&[(AZURE_CLIENT_ID, "c9")]), None)
            .unwrap()
            .description()
            .identity
            .clone();
        assert!(described.contains("client_id c9"), "{described}");
        assert!(described.contains("AZURE_CLIENT_ID"), "{described}");
    }

    #[test]
    fn the_imds_endpoint_setting_moves_the_token_url() {
        let cases = [
            (
                "http://169.254.169.254",
                "http://169.254.169.254/metadata/identity/oauth2/token",
            ),
            (
                "http://127.0.0.1:8080/",
                "http://127.0.0.1:8080/metadata/identity/oauth2/token",
            ),
            (
                "http://sidecar:9000/prefix/",
                "http://sidecar:9000/prefix/metadata/identity/oauth2/token",
            ),
        ];
        for (base, expected) in cases {
            let resolved = resolve(
                &IdentitySettings {
                    imds_endpoint: base.parse().unwrap(),
                    ..IdentitySettings::default()
                },
                &IdentityEnvironment::default(),
                None,
            )
            .unwrap();
            assert_eq!(resolved.description().endpoint, expected);
        }
    }

    #[test]
    fn impossible_combinations_name_the_key_to_fix() {
        let cases: Vec<(IdentitySettings, Vars, &str)> = vec![
            (settings(SourceKind::AppService), &[], "identity.source"),
            (
                IdentitySettings {
                    resource_id: Some("/subscriptions/x".into()),
                    ..settings(SourceKind::Auto)
                },
                APP_SERVICE,
                "identity.resource_id",
            ),
            (
                IdentitySettings {
                    object_id: Some("oid".into()),
                    ..settings(SourceKind::Workload)
                },
                WORKLOAD,
                "identity.source",
            ),
            (
                settings(SourceKind::Workload),
                &[(AZURE_TENANT_ID, "t"), (AZURE_FEDERATED_TOKEN_FILE, "/f")],
                "identity.client_id",
            ),
            (
                settings(SourceKind::Workload),
                &[(AZURE_CLIENT_ID, "c"), (AZURE_FEDERATED_TOKEN_FILE, "/f")],
                "identity.source",
            ),
            (
                IdentitySettings {
                    client_id: Some("a".into()),
                    object_id: Some("b".into()),
                    ..IdentitySettings::default()
                },
                &[],
                "identity.object_id",
            ),
            (
                IdentitySettings {
                    client_id: Some(" ".into()),
                    ..IdentitySettings::default()
                },
                &[],
                "identity.client_id",
            ),
        ];
        for (settings, vars, key) in cases {
            match resolve(&settings, &env(vars), None) {
                Err(IdentityError::Configuration { key: k, message }) => {
                    assert_eq!(k, key, "{message}");
                    assert!(!message.ends_with('.'), "{message}");
                }
                other => {
                    panic!("{settings:?} {vars:?}: expected a configuration error, got {other:?}")
                }
            }
        }
    }

    #[test]
    fn an_http_authority_is_accepted_only_on_loopback() {
        let cases = [
            ("https://login.microsoftonline.us", true),
            ("http://127.0.0.1:4000", true),
            ("http://[::1]:4000", true),
            ("http://login.microsoftonline.com", false),
            ("http://10.0.0.1", false),
            ("ftp://127.0.0.1", false),
        ];
        for (host, ok) in cases {
            let vars: Vec<_> = WORKLOAD
                .iter()
                .copied()
                .chain([(crate::identity::environment::AZURE_AUTHORITY_HOST, host)])
                .collect();
            let result = resolve(&IdentitySettings::default(), &env(&vars), None);
            assert_eq!(result.is_ok(), ok, "{host}: {result:?}");
        }
        let resolved = resolve(&IdentitySettings::default(), &env(WORKLOAD), None).unwrap();
        assert_eq!(
            resolved.description().endpoint,
            "https://login.microsoftonline.com/tenant-1/oauth2/v2.0/token"
        );
    }

    #[test]
    fn selectors_from_keys_accept_at_most_one() {
        assert_eq!(
            IdentitySelector::from_keys("runbook.identity", None, None, None).unwrap(),
            None
        );
        assert_eq!(
            IdentitySelector::from_keys("runbook.identity", None, Some("o"), None).unwrap(),
            Some(IdentitySelector::ObjectId("o".into()))
        );
        let err = IdentitySelector::from_keys("runbook.identity", Some("c"), None, Some("r"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("runbook.identity.resource_id"), "{err}");
    }

    #[test]
    fn debug_output_hides_the_app_service_secret() {
        let resolved = resolve(&IdentitySettings::default(), &env(APP_SERVICE), None).unwrap();
        let debug = format!("{resolved:?}");
        assert!(!debug.contains("header-secret"), "{debug}");
    }
}
