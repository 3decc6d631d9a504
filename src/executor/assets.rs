//! Azure Automation's shared assets for jobs: variables (`[vars]` in the settings, read as
//! `{{ vars.<name> }}`) and credentials (`[secrets]`: Key Vault secret URLs, read as
//! `{{ secrets.<name> }}`), and the masking that keeps secret values out of everything a
//! job records.
//!
//! A job fetches only the secrets its runbook's templates name, through one
//! [`KeyVaultClient`] (the worker's identity, audience `https://vault.azure.net`) and one
//! [`SecretCache`] per worker, so a secret is read again at most every
//! `keyvault.refresh_interval`. A value goes into the template context and, rendered, onto
//! the wire to Exchange; every event the job emits, its error and its log lines pass
//! through [`Masker`] first, which replaces each value it holds by `***`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::clock::SharedClock;
use crate::keyvault::{KeyVaultClient, Lookup, SecretCache, SecretRef};

use super::events::{JobEvent, JobEvents};

/// What replaces a secret's value wherever a job's data is recorded or printed.
pub const MASK: &str = "***";
/// The most `[vars]` and the most `[secrets]` the settings may name.
pub const MAX_ASSETS: usize = 256;
/// The most secrets the cache holds.
const MAX_CACHED_SECRETS: usize = MAX_ASSETS;

/// `[vars]` and `[secrets]`: names as params' (`letters, digits, _`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct VarsSettings(pub BTreeMap<String, Value>);

/// `[secrets] name = "https://<vault>.vault.azure.net/secrets/<name>[/<version>]"`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretsSettings(pub BTreeMap<String, String>);

fn name_problem(section: &str, name: &str) -> Option<(String, String)> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    (!ok).then(|| {
        (
            format!("{section}.{name}"),
            format!("the name must start with a letter or \"_\" and contain only letters, digits and \"_\" (templates use it as {section}.{name})"),
        )
    })
}

/// Problems of `[vars]` and `[secrets]`, as (`section.key`, message).
pub fn problems(vars: &VarsSettings, secrets: &SecretsSettings) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (section, count) in [("vars", vars.0.len()), ("secrets", secrets.0.len())] {
        if count > MAX_ASSETS {
            out.push((
                section.to_string(),
                format!("at most {MAX_ASSETS} names, got {count}"),
            ));
        }
    }
    out.extend(vars.0.keys().filter_map(|n| name_problem("vars", n)));
    for (name, url) in &secrets.0 {
        out.extend(name_problem("secrets", name));
        if let Err(e) = SecretRef::parse(url) {
            out.push((format!("secrets.{name}"), e.to_string()));
        }
    }
    out
}

/// Why a job cannot have its assets. Never contains a secret's value.
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    #[error(
        "the runbook uses {} that [vars] in the settings does not define; define {} there",
        list("vars", .0), if .0.len() == 1 { "it" } else { "them" }
    )]
    UnknownVars(Vec<String>),
    #[error(
        "the runbook uses {} that [secrets] in the settings does not name; add a Key Vault secret URL for {} there",
        list("secrets", .0), if .0.len() == 1 { "it" } else { "each" }
    )]
    UnknownSecrets(Vec<String>),
    #[error("cannot read secret \"{name}\" from Key Vault: {source}")]
    Fetch {
        name: String,
        #[source]
        source: Box<crate::keyvault::KeyVaultError>,
    },
    #[error("[secrets] names \"{0}\", but Key Vault is not set up: {1}")]
    NoVault(String, String),
    #[error(
        "{key} names Key Vault secret \"{name}\" ({KEYVAULT_PREFIX}{name}), which [secrets] does not name; add {name} = \"https://<vault>.vault.azure.net/secrets/<name>\" there"
    )]
    UnknownReference { key: String, name: String },
    #[error("{key}: {source}")]
    Reference {
        key: String,
        #[source]
        source: Box<AssetError>,
    },
}

/// How a secret setting names a Key Vault secret instead of holding the value:
/// `keyvault:<name>`, `<name>` being a key of `[secrets]`.
pub const KEYVAULT_PREFIX: &str = "keyvault:";

fn list(root: &str, names: &[String]) -> String {
    let names: Vec<String> = names.iter().map(|n| format!("{root}.{n}")).collect();
    names.join(", ")
}

/// The worker's shared variables and secret references, and the vault they come from.
pub struct Assets {
    vars: BTreeMap<String, Value>,
    secrets: BTreeMap<String, SecretRef>,
    vault: Result<Arc<KeyVaultClient>, String>,
    cache: tokio::sync::Mutex<SecretCache>,
    clock: SharedClock,
}

impl std::fmt::Debug for Assets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assets")
            .field("vars", &self.vars.keys().collect::<Vec<_>>())
            .field("secrets", &self.secrets)
            .finish_non_exhaustive()
    }
}

impl Assets {
    /// No vars, no secrets (tests, tools).
    pub fn none(clock: SharedClock) -> Self {
        Self::new(
            &VarsSettings::default(),
            &SecretsSettings::default(),
            Err("no [secrets]".to_string()),
            std::time::Duration::from_secs(300),
            clock,
        )
    }

    /// From checked settings (see [`problems`]; a reference that does not parse is left
    /// out, so a job that uses it fails naming it). `vault` is the client, or why there is
    /// none.
    pub fn new(
        vars: &VarsSettings,
        secrets: &SecretsSettings,
        vault: Result<Arc<KeyVaultClient>, String>,
        refresh_interval: std::time::Duration,
        clock: SharedClock,
    ) -> Self {
        Self {
            vars: vars.0.clone(),
            secrets: secrets
                .0
                .iter()
                .filter_map(|(n, url)| Some((n.clone(), SecretRef::parse(url).ok()?)))
                .collect(),
            vault,
            cache: tokio::sync::Mutex::new(SecretCache::new(refresh_interval, MAX_CACHED_SECRETS)),
            clock,
        }
    }

    /// The `[vars]` a runbook reads, checked: every one must be defined.
    pub fn vars_for(&self, used: &BTreeSet<String>) -> Result<BTreeMap<String, Value>, AssetError> {
        let missing = missing(used, |n| self.vars.contains_key(n));
        if !missing.is_empty() {
            return Err(AssetError::UnknownVars(missing));
        }
        Ok(used
            .iter()
            .filter_map(|n| Some((n.clone(), self.vars.get(n)?.clone())))
            .collect())
    }

    /// The values of the secrets a runbook reads: from the cache while fresh, else read
    /// from Key Vault (a stale value is used when the read fails).
    pub async fn secrets_for(
        &self,
        used: &BTreeSet<String>,
    ) -> Result<BTreeMap<String, SecretString>, AssetError> {
        let missing = missing(used, |n| self.secrets.contains_key(n));
        if !missing.is_empty() {
            return Err(AssetError::UnknownSecrets(missing));
        }
        let mut out = BTreeMap::new();
        for name in used {
            let Some(reference) = self.secrets.get(name) else {
                continue;
            };
            out.insert(name.clone(), self.secret(name, reference).await?);
        }
        Ok(out)
    }

    /// One secret by reference (also for settings that name a Key Vault secret).
    pub async fn secret(
        &self,
        name: &str,
        reference: &SecretRef,
    ) -> Result<SecretString, AssetError> {
        let now = self.clock.now();
        let stale = {
            let cache = self.cache.lock().await;
            match cache.lookup(reference, now) {
                Lookup::Fresh(secret) => return Ok(secret.value().clone()),
                Lookup::Stale(secret) => Some(secret.value().clone()),
                Lookup::Missing => None,
            }
        };
        let vault = self
            .vault
            .as_ref()
            .map_err(|why| AssetError::NoVault(name.to_string(), why.clone()))?;
        match vault.get_secret(reference).await {
            Ok(secret) => {
                let value = secret.value().clone();
                self.cache
                    .lock()
                    .await
                    .insert(reference.clone(), secret, self.clock.now());
                Ok(value)
            }
            Err(e) => match stale {
                Some(value) => {
                    tracing::warn!(secret = %name, error = %e, "cannot read the secret again; using the value read before");
                    Ok(value)
                }
                None => Err(AssetError::Fetch {
                    name: name.to_string(),
                    source: Box::new(e),
                }),
            },
        }
    }
}

impl Assets {
    /// When `value` (the setting `key`) is a Key Vault reference (`keyvault:<name>`),
    /// replaces it by the secret's value; any other value stays. For secret settings
    /// (`http.api_token`, `coordination.sas_url`, notify targets' `url` and `secret`),
    /// resolved once at start.
    pub async fn resolve_setting(
        &self,
        key: &str,
        value: &mut Option<SecretString>,
    ) -> Result<(), AssetError> {
        let Some(name) = value
            .as_ref()
            .and_then(|v| v.expose_secret().trim().strip_prefix(KEYVAULT_PREFIX))
            .map(str::to_string)
        else {
            return Ok(());
        };
        let Some(reference) = self.secrets.get(&name) else {
            return Err(AssetError::UnknownReference {
                key: key.to_string(),
                name,
            });
        };
        let secret = self
            .secret(&name, reference)
            .await
            .map_err(|e| AssetError::Reference {
                key: key.to_string(),
                source: Box::new(e),
            })?;
        *value = Some(secret);
        Ok(())
    }
}

/// The names in `used` that `known` does not know.
fn missing(used: &BTreeSet<String>, known: impl Fn(&str) -> bool) -> Vec<String> {
    used.iter().filter(|n| !known(n)).cloned().collect()
}

/// How a job's [`JobEvent::AssetsUsed`] reads: `vars.x = "v", secrets.y` (never a value
/// of a secret).
pub fn describe_assets(vars: &BTreeMap<String, Value>, secrets: &[String]) -> String {
    let mut parts: Vec<String> = vars
        .iter()
        .map(|(k, v)| format!("vars.{k} = {v}"))
        .collect();
    parts.extend(secrets.iter().map(|n| format!("secrets.{n}")));
    format!("uses {}", parts.join(", "))
}

/// Replaces secret values by [`MASK`] in text and JSON.
#[derive(Clone, Default)]
pub struct Masker {
    /// Longest first, so a value that contains another is masked whole.
    values: Vec<SecretString>,
}

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Masker({} values)", self.values.len())
    }
}

impl Masker {
    pub fn new<'a>(values: impl IntoIterator<Item = &'a SecretString>) -> Self {
        let mut values: Vec<SecretString> = values
            .into_iter()
            .filter(|v| !v.expose_secret().is_empty())
            .cloned()
            .collect();
        values.sort_by_key(|v| std::cmp::Reverse(v.expose_secret().len()));
        Self { values }
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    pub fn text(&self, text: &str) -> String {
        let mut out = text.to_string();
        for value in &self.values {
            let value = value.expose_secret();
            if out.contains(value) {
                out = out.replace(value, MASK);
            }
        }
        out
    }

    pub fn opt(&self, text: Option<String>) -> Option<String> {
        text.map(|t| self.text(&t))
    }

    pub fn json(&self, value: Value) -> Value {
        match value {
            Value::String(s) => Value::String(self.text(&s)),
            Value::Array(items) => Value::Array(items.into_iter().map(|v| self.json(v)).collect()),
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .map(|(k, v)| (self.text(&k), self.json(v)))
                    .collect(),
            ),
            other => other,
        }
    }

    /// The event with every text it carries masked.
    pub fn event(&self, event: JobEvent) -> JobEvent {
        if self.is_empty() {
            return event;
        }
        match event {
            JobEvent::AttemptFailed {
                attempt,
                error,
                retry_in,
            } => JobEvent::AttemptFailed {
                attempt,
                error: self.text(&error),
                retry_in,
            },
            JobEvent::Item {
                step,
                outcome,
                target,
                error,
                counts,
                total,
            } => JobEvent::Item {
                step,
                outcome,
                target: self.opt(target),
                error: self.opt(error),
                counts,
                total,
            },
            JobEvent::Warning {
                step,
                target,
                message,
            } => JobEvent::Warning {
                step,
                target: self.opt(target),
                message: self.text(&message),
            },
            JobEvent::Planned {
                step,
                cmdlet,
                target,
                parameters,
            } => JobEvent::Planned {
                step,
                cmdlet,
                target: self.opt(target),
                parameters: self.json(parameters),
            },
            other => other,
        }
    }
}

/// Passes a job's events on with secret values masked.
pub struct MaskedEvents<'a> {
    pub inner: &'a dyn JobEvents,
    pub masker: Masker,
}

#[async_trait]
impl JobEvents for MaskedEvents<'_> {
    async fn emit(&self, event: JobEvent) {
        self.inner.emit(self.masker.event(event)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_text_of_an_event_is_masked_longest_value_first() {
        let short = SecretString::from("pa55");
        let long = SecretString::from("pa55word!");
        let masker = Masker::new([&short, &long]);
        let planned = masker.event(JobEvent::Planned {
            step: "s".into(),
            cmdlet: "Set-Mailbox".into(),
            target: Some("user pa55".into()),
            parameters: json!({"Password": "pa55word!", "List": ["x pa55 y"], "pa55": 1}),
        });
        let JobEvent::Planned {
            target, parameters, ..
        } = planned
        else {
            panic!("{planned:?}")
        };
        assert_eq!(target.as_deref(), Some("user ***"));
        assert_eq!(
            parameters,
            json!({"Password": "***", "List": ["x *** y"], "***": 1})
        );
        assert_eq!(masker.text("echo pa55word! and pa55"), "echo *** and ***");
    }

    #[test]
    fn names_and_urls_are_checked() {
        let vars = VarsSettings(
            [
                ("region".to_string(), json!("EU")),
                ("bad-name".to_string(), json!(1)),
            ]
            .into(),
        );
        let secrets = SecretsSettings(
            [
                (
                    "ok".to_string(),
                    "https://v.vault.azure.net/secrets/pw".to_string(),
                ),
                ("url".to_string(), "http://example.com/x".to_string()),
            ]
            .into(),
        );
        let found: Vec<String> = problems(&vars, &secrets)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(found, ["vars.bad-name", "secrets.url"]);
    }

    #[test]
    fn unknown_names_are_errors_that_name_them() {
        let assets = Assets::none(Arc::new(crate::clock::SystemClock));
        let used: BTreeSet<String> = ["region".to_string()].into();
        let e = assets.vars_for(&used).unwrap_err().to_string();
        assert!(e.contains("vars.region") && e.contains("[vars]"), "{e}");
    }

    #[tokio::test]
    async fn a_setting_naming_an_unknown_secret_is_an_error_naming_both_and_others_stay() {
        let assets = Assets::none(Arc::new(crate::clock::SystemClock));
        let mut value = Some(SecretString::from("keyvault:api"));
        let e = assets
            .resolve_setting("http.api_token", &mut value)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("http.api_token names Key Vault secret \"api\"")
                && e.contains("[secrets]"),
            "{e}"
        );
        let mut plain = Some(SecretString::from("a-plain-token-of-32-characters!!"));
        assets
            .resolve_setting("http.api_token", &mut plain)
            .await
            .unwrap();
        assert_eq!(
            plain.as_ref().map(|v| v.expose_secret()),
            Some("a-plain-token-of-32-characters!!")
        );
    }
}
