//! Layered settings: built-in defaults, then a TOML file, then `RUNBOOK_WORKER__SECTION__KEY`
//! environment variables.
//!
//! Each section's type lives with the module it configures; this module composes them,
//! loads them with the `config` crate and turns every bad value into an error that names
//! the key and where the value came from. The environment is passed in as a map so tests
//! never touch the process environment.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::coordination::CoordinationSettings;
use crate::duration::HumanDuration;
use crate::exchange::ExchangeSettings;
use crate::graph::GraphSettings;
use crate::history::HistorySettings;
use crate::http::HttpSettings;
use crate::identity::IdentitySettings;
use crate::keyvault::KeyVaultSettings;
use crate::notify::NotifySettings;
use crate::runbook::{PolicySettings, RunbooksSettings};
pub use crate::telemetry::LogFormat;
use crate::telemetry::LogSettings;

/// Prefix of environment overrides: `RUNBOOK_WORKER__IDENTITY__CLIENT_ID`.
pub const ENV_PREFIX: &str = "RUNBOOK_WORKER";
/// The settings file read when `--config` is not given and it exists.
pub const DEFAULT_FILE: &str = "runbook-worker.toml";

/// Every setting of the worker.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub identity: IdentitySettings,
    pub exchange: ExchangeSettings,
    pub graph: GraphSettings,
    pub keyvault: KeyVaultSettings,
    pub runbooks: RunbooksSettings,
    pub policy: PolicySettings,
    pub state: StateSettings,
    pub history: HistorySettings,
    pub http: HttpSettings,
    pub worker: WorkerSettings,
    pub coordination: CoordinationSettings,
    pub log: LogSettings,
    pub notify: NotifySettings,
}

/// `[state]`: where the worker keeps its history database and reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateSettings {
    pub dir: PathBuf,
}

impl Default for StateSettings {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("state"),
        }
    }
}

/// `[worker]`: the long-running process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerSettings {
    /// How long running jobs may finish after SIGTERM before they are cancelled.
    pub shutdown_grace: HumanDuration,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            shutdown_grace: HumanDuration::from_secs(25),
        }
    }
}

/// A settings problem, with the key and where its value came from.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read settings file {}: {message}", path.display())]
    File { path: PathBuf, message: String },
    #[error("invalid setting `{key}` (from {origin}): {message}")]
    Invalid {
        key: String,
        origin: String,
        message: String,
    },
    #[error("invalid settings (from {origin}): {message}")]
    Unreadable { origin: String, message: String },
}

/// The largest settings file read, in bytes (1 MiB; a real one is under 4 KiB).
pub const MAX_SETTINGS_BYTES: u64 = 1024 * 1024;

/// Settings whose values are secrets: no error ever shows their value. `_file` variants
/// hold paths, and the files' contents are read (and kept out of errors) by their modules.
pub const SECRET_KEYS: &[&str] = &["http.api_token", "coordination.sas_url"];

/// Loads settings: `explicit` is `--config`; without it `runbook-worker.toml` in `cwd` is
/// read when present. `env` is the process environment (only `RUNBOOK_WORKER__*` is used).
pub fn load(
    explicit: Option<&Path>,
    cwd: &Path,
    env: &HashMap<String, String>,
) -> Result<Settings, SettingsError> {
    let file = match explicit {
        Some(path) => {
            if !path.exists() {
                return Err(SettingsError::File {
                    path: path.to_path_buf(),
                    message: "no such file (check --config)".to_string(),
                });
            }
            Some(path.to_path_buf())
        }
        None => Some(cwd.join(DEFAULT_FILE)).filter(|p| p.exists()),
    };
    let text = match &file {
        Some(path) => {
            let bytes = crate::bounded_file::read(path, MAX_SETTINGS_BYTES).map_err(|e| {
                SettingsError::File {
                    path: path.clone(),
                    message: e.to_string(),
                }
            })?;
            let text = String::from_utf8(bytes).map_err(|e| SettingsError::File {
                path: path.clone(),
                message: format!(
                    "not UTF-8 text (invalid byte at offset {}); save it as UTF-8",
                    e.utf8_error().valid_up_to()
                ),
            })?;
            Some((path.as_path(), text))
        }
        None => None,
    };
    from_text(text.as_ref().map(|(p, t)| (*p, t.as_str())), env)
}

/// Settings from the text of a settings file (`file`: its path, for messages, and its
/// text) and the environment. [`load`] without the file system; the fuzz target calls it.
pub fn from_text(
    file: Option<(&Path, &str)>,
    env: &HashMap<String, String>,
) -> Result<Settings, SettingsError> {
    let overrides: HashMap<String, String> = env
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut secrets: Vec<String> = SECRET_KEYS
        .iter()
        .filter_map(|key| overrides.get(&env_var_for(key)))
        .cloned()
        .collect();

    let mut builder = config::Config::builder();
    if let Some((path, text)) = file {
        // Parsed here first: the `config` crate's TOML errors quote the offending line,
        // which may be `api_token = "…"`. This error gives the position only.
        let table: toml::Table = toml::from_str(text).map_err(|e| SettingsError::File {
            path: path.to_path_buf(),
            message: syntax_message(text, &e),
        })?;
        secrets.extend(secret_values(&table));
        builder = builder.add_source(config::File::from_str(text, config::FileFormat::Toml));
    }
    let secrets = Secrets(secrets);
    builder = builder.add_source(
        config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .list_separator(",")
            .with_list_parse_key("policy.allow")
            .with_list_parse_key("policy.deny")
            .with_list_parse_key("notify.default")
            .try_parsing(true)
            .source(Some(overrides.clone())),
    );

    let file_path = file.map(|(path, _)| path);
    let origin_of = |key: &str| origin(key, file_path, &overrides);
    let built = builder.build().map_err(|e| match file_path {
        Some(path) => SettingsError::File {
            path: path.to_path_buf(),
            message: secrets.mask(&e.to_string()),
        },
        None => SettingsError::Unreadable {
            origin: "the environment".to_string(),
            message: secrets.mask(&e.to_string()),
        },
    })?;
    let settings: Settings = built
        .try_deserialize()
        .map_err(|e| secrets.mask_error(describe_config_error(e, &origin_of)))?;

    if let Some((key, message)) = settings.problems().into_iter().next() {
        return Err(secrets.mask_error(SettingsError::Invalid {
            origin: origin_of(&key),
            key,
            message,
        }));
    }
    Ok(settings)
}

/// "line L, column C: message" of a TOML syntax error, without the source snippet.
fn syntax_message(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim_end();
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("TOML syntax error at line {line}, column {column}: {message}")
        }
        None => format!("TOML syntax error: {message}"),
    }
}

/// The values of [`SECRET_KEYS`] in a parsed settings file, whatever their type.
fn secret_values(table: &toml::Table) -> Vec<String> {
    SECRET_KEYS
        .iter()
        .filter_map(|key| {
            let (section, name) = key.split_once('.')?;
            let value = table.get(section)?.as_table()?.get(name)?;
            Some(match value {
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
        })
        .filter(|v| !v.trim().is_empty())
        .collect()
}

/// Secret values to mask in error messages.
struct Secrets(Vec<String>);

impl Secrets {
    fn mask(&self, message: &str) -> String {
        self.0.iter().fold(message.to_string(), |text, secret| {
            text.replace(secret.as_str(), "[REDACTED]")
        })
    }

    fn mask_error(&self, error: SettingsError) -> SettingsError {
        match error {
            SettingsError::File { path, message } => SettingsError::File {
                path,
                message: self.mask(&message),
            },
            SettingsError::Invalid {
                key,
                origin,
                message,
            } => SettingsError::Invalid {
                message: self.mask(&message),
                key,
                origin,
            },
            SettingsError::Unreadable { origin, message } => SettingsError::Unreadable {
                origin,
                message: self.mask(&message),
            },
        }
    }
}

/// The environment variable that overrides `key` (`exchange.page_size` →
/// `RUNBOOK_WORKER__EXCHANGE__PAGE_SIZE`).
pub fn env_var_for(key: &str) -> String {
    format!(
        "{ENV_PREFIX}__{}",
        key.replace('.', "__").to_ascii_uppercase()
    )
}

fn origin(key: &str, file: Option<&Path>, overrides: &HashMap<String, String>) -> String {
    let var = env_var_for(key);
    if overrides.contains_key(&var) {
        format!("environment variable {var}")
    } else if let Some(path) = file {
        format!("file {}", path.display())
    } else {
        "built-in default".to_string()
    }
}

fn describe_config_error(
    e: config::ConfigError,
    origin_of: &dyn Fn(&str) -> String,
) -> SettingsError {
    match e {
        config::ConfigError::Type {
            key: Some(key),
            unexpected,
            expected,
            ..
        } => SettingsError::Invalid {
            origin: origin_of(&key),
            // serde's `unexpected` quotes the value, and a secret's value stays out.
            message: if SECRET_KEYS.contains(&key.as_str()) {
                format!("expected {expected} (the value is not shown: it is a secret)")
            } else {
                format!("expected {expected}, got {unexpected}")
            },
            key,
        },
        config::ConfigError::At {
            key: Some(key),
            error,
            ..
        } => SettingsError::Invalid {
            origin: origin_of(&key),
            message: error.to_string(),
            key,
        },
        other => {
            let message = other.to_string();
            // serde's "unknown field `x`" errors carry no key path from `config`: say which
            // sections exist so a typo is easy to spot.
            SettingsError::Unreadable {
                origin: "settings file or RUNBOOK_WORKER__* environment".to_string(),
                message: format!(
                    "{message} (sections: identity, exchange, graph, keyvault, runbooks, policy, state, history, http, worker, coordination, log, notify)"
                ),
            }
        }
    }
}

impl Settings {
    /// Values that parse but make no sense, as (`section.key`, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let selectors = [
            ("identity.client_id", self.identity.client_id.is_some()),
            ("identity.object_id", self.identity.object_id.is_some()),
            ("identity.resource_id", self.identity.resource_id.is_some()),
        ];
        let chosen: Vec<_> = selectors.iter().filter(|(_, set)| *set).collect();
        if chosen.len() > 1 {
            out.push((
                chosen[1].0.to_string(),
                format!(
                    "set at most one of identity.client_id, identity.object_id, identity.resource_id (also set: {})",
                    chosen[0].0
                ),
            ));
        }
        if !(1..=1000).contains(&self.exchange.page_size) {
            out.push((
                "exchange.page_size".to_string(),
                format!(
                    "must be between 1 and 1000, got {}",
                    self.exchange.page_size
                ),
            ));
        }
        if self.exchange.max_response_bytes < 1024 {
            out.push((
                "exchange.max_response_bytes".to_string(),
                format!(
                    "must be at least 1024, got {}",
                    self.exchange.max_response_bytes
                ),
            ));
        }
        if self.exchange.max_concurrency == 0 {
            out.push((
                "exchange.max_concurrency".to_string(),
                "must be at least 1".to_string(),
            ));
        }
        out.extend(self.http.problems());
        out.extend(self.coordination.problems());
        out.extend(self.history.problems());
        out.extend(self.notify.problems());
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            out.push((
                "log.level".to_string(),
                format!(
                    "expected a level such as info or debug, got {:?}",
                    self.log.level
                ),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("worker.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn defaults_apply_without_file_or_environment() {
        let dir = tempfile::tempdir().unwrap();
        let s = load(None, dir.path(), &env(&[])).unwrap();
        assert_eq!(s.identity.imds_endpoint.as_str(), "http://169.254.169.254/");
        assert_eq!(s.exchange.page_size, 1000);
        assert_eq!(s.http.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.worker.shutdown_grace.get().as_secs(), 25);
    }

    #[test]
    fn an_exchange_endpoint_must_be_an_http_url_with_a_host() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["not a url", "ftp://outlook.example", "file:///etc/passwd"] {
            let err = load(
                None,
                dir.path(),
                &env(&[("RUNBOOK_WORKER__EXCHANGE__ENDPOINT", bad)]),
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains("exchange.endpoint"), "{bad}: {err}");
        }
        let ok = load(
            None,
            dir.path(),
            &env(&[("RUNBOOK_WORKER__EXCHANGE__ENDPOINT", "http://127.0.0.1:1")]),
        );
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn the_default_file_is_read_from_the_working_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(DEFAULT_FILE),
            "[exchange]\npage_size = 50\n",
        )
        .unwrap();
        let s = load(None, dir.path(), &env(&[])).unwrap();
        assert_eq!(s.exchange.page_size, 50);
    }

    #[test]
    fn environment_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "[identity]\nclient_id = \"from-file\"\n");
        let s = load(
            Some(&file),
            dir.path(),
            &env(&[
                ("RUNBOOK_WORKER__IDENTITY__CLIENT_ID", "from-env"),
                ("RUNBOOK_WORKER__EXCHANGE__PAGE_SIZE", "10"),
                ("RUNBOOK_WORKER__POLICY__DENY", "Remove-*,New-*"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(s.identity.client_id.as_deref(), Some("from-env"));
        assert_eq!(s.exchange.page_size, 10);
        assert_eq!(s.policy.deny, vec!["Remove-*", "New-*"]);
    }

    #[test]
    fn a_bad_value_names_the_key_and_the_environment_variable() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(
            None,
            dir.path(),
            &env(&[("RUNBOOK_WORKER__EXCHANGE__PAGE_SIZE", "lots")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("exchange.page_size"), "{err}");
        assert!(err.contains("RUNBOOK_WORKER__EXCHANGE__PAGE_SIZE"), "{err}");
    }

    #[test]
    fn an_out_of_range_value_names_the_key_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "[exchange]\npage_size = 5000\n");
        let err = load(Some(&file), dir.path(), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("exchange.page_size"), "{err}");
        assert!(err.contains("worker.toml"), "{err}");
        assert!(err.contains("between 1 and 1000"), "{err}");
    }

    #[test]
    fn a_misspelt_key_is_an_error_not_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "[identity]\nclientid = \"x\"\n");
        let err = load(Some(&file), dir.path(), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("clientid"), "{err}");
    }

    #[test]
    fn two_identity_selectors_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            dir.path(),
            "[identity]\nclient_id = \"a\"\nobject_id = \"b\"\n",
        );
        let err = load(Some(&file), dir.path(), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("at most one"), "{err}");
    }

    #[test]
    fn a_missing_explicit_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(Some(&dir.path().join("nope.toml")), dir.path(), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope.toml"), "{err}");
    }

    const SECRET: &str = "s3cr3t-T0KEN-value-0123456789abcdef";

    fn error_of(text: &str, env_pairs: &[(&str, &str)]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), text);
        load(Some(&file), dir.path(), &env(env_pairs))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_syntax_error_on_a_secret_line_gives_the_position_not_the_line() {
        let cases = [
            format!("[http]\napi_token = \"{SECRET}\" oops\n"),
            format!("[http]\napi_token = \"{SECRET}\n"),
            format!("[http]\napi_token = {SECRET}\n"),
            format!(
                "[coordination]\nkind = \"azure-blob\"\nsas_url = \"https://a.blob.core.windows.net/c?sig={SECRET}\" x\n"
            ),
            format!("[coordination]\nsas_url = 'https://a/c?sig={SECRET}\n"),
            format!(
                "[coordination]\nsas_url = \"https://a/c?sig={SECRET}\"\nsas_url = \"{SECRET}\"\n"
            ),
        ];
        for text in cases {
            let err = error_of(&text, &[]);
            assert!(!err.contains(SECRET), "{err}");
            assert!(!err.contains("sig="), "{err}");
            assert!(err.contains("worker.toml"), "{err}");
            assert!(err.contains("line "), "{err}");
        }
    }

    #[test]
    fn a_wrongly_typed_secret_is_refused_without_its_value() {
        let cases = [
            (
                format!("[http]\napi_token = [\"{SECRET}\"]\n"),
                "http.api_token",
            ),
            (
                format!("[http]\napi_token = {{ x = \"{SECRET}\" }}\n"),
                "http",
            ),
            (
                format!("[coordination]\nsas_url = [\"{SECRET}\"]\n"),
                "coordination.sas_url",
            ),
            (
                format!("[http]\napi_token = \"{SECRET}\"\nlisten = \"{SECRET}\"\n"),
                "http.listen",
            ),
        ];
        for (text, key) in cases {
            let err = error_of(&text, &[]);
            assert!(!err.contains(SECRET), "{err}");
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn a_secret_from_the_environment_stays_out_of_errors() {
        let dir = tempfile::tempdir().unwrap();
        for var in [
            "RUNBOOK_WORKER__HTTP__API_TOKEN",
            "RUNBOOK_WORKER__COORDINATION__SAS_URL",
        ] {
            let err = load(
                None,
                dir.path(),
                &env(&[(var, SECRET), ("RUNBOOK_WORKER__HTTP__LISTEN", SECRET)]),
            )
            .unwrap_err()
            .to_string();
            assert!(!err.contains(SECRET), "{err}");
            assert!(err.contains("http.listen"), "{err}");
        }
    }

    #[test]
    fn a_settings_path_that_is_not_a_file_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(Some(dir.path()), dir.path(), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("a directory"), "{err}");
    }

    #[test]
    fn env_var_names_follow_the_double_underscore_rule() {
        assert_eq!(
            env_var_for("identity.client_id"),
            "RUNBOOK_WORKER__IDENTITY__CLIENT_ID"
        );
    }
}
