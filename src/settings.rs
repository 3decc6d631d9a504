//! Layered settings: built-in defaults, then a TOML file, then `RUNBOOK_WORKER__SECTION__KEY`
//! environment variables.
//!
//! Each section's type lives with the module it configures; this module composes them,
//! loads them with the `config` crate and turns every bad value into an error that names
//! the key and where the value came from. The environment is passed in as a map so tests
//! never touch the process environment.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::coordination::CoordinationSettings;
use crate::duration::HumanDuration;
use crate::exchange::ExchangeSettings;
use crate::executor::assets::{SecretsSettings, VarsSettings};
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
    /// Shared variables for templates (`{{ vars.<name> }}`).
    pub vars: VarsSettings,
    /// Key Vault secret URLs for templates (`{{ secrets.<name> }}`).
    pub secrets: SecretsSettings,
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
    /// A key no section has: a misspelling, usually. `hint` is "; did you mean …?" or a list
    /// of what exists.
    #[error("unknown setting {key} from {origin}{hint}")]
    Unknown {
        key: String,
        origin: String,
        hint: String,
    },
    #[error("invalid settings (from {origin}): {message}")]
    Unreadable { origin: String, message: String },
    /// Every problem found, when there is more than one (each one of the variants above).
    #[error("{} settings problems:{}", .0.len(), list(.0))]
    Several(Vec<SettingsError>),
}

impl SettingsError {
    /// The problems this error stands for: itself, or each of [`SettingsError::Several`].
    pub fn problems(&self) -> Vec<&SettingsError> {
        match self {
            Self::Several(all) => all.iter().collect(),
            one => vec![one],
        }
    }
}

/// The most problems one error lists; a file of thousands of bad keys still fits a screen.
const MAX_LISTED: usize = 50;

fn list(problems: &[SettingsError]) -> String {
    let mut text: String = problems
        .iter()
        .take(MAX_LISTED)
        .map(|p| format!("\n  - {p}"))
        .collect();
    if problems.len() > MAX_LISTED {
        text.push_str(&format!("\n  - and {} more", problems.len() - MAX_LISTED));
    }
    text
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
    let mut table = None;
    if let Some((path, text)) = file {
        // Parsed here first: the `config` crate's TOML errors quote the offending line,
        // which may be `api_token = "…"`. This error gives the position only.
        let parsed: toml::Table = toml::from_str(text).map_err(|e| SettingsError::File {
            path: path.to_path_buf(),
            message: syntax_message(text, &e),
        })?;
        secrets.extend(secret_values(&parsed));
        table = Some(parsed);
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
    let origins = Origins {
        file: file_path,
        table: table.as_ref(),
        overrides: &overrides,
    };
    let origin_of = |key: &str| origins.of(key);
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
    let tree = config::Source::collect(&built).map_err(|e| SettingsError::Unreadable {
        origin: "settings file or RUNBOOK_WORKER__* environment".to_string(),
        message: secrets.mask(&e.to_string()),
    })?;

    let mut problems = origins.unknown_keys();
    let unknown: Vec<String> = problems
        .iter()
        .filter_map(|p| match p {
            SettingsError::Unknown { key, .. } => Some(key.clone()),
            _ => None,
        })
        .collect();
    let mut sections = Sections {
        tree,
        unknown: &unknown,
        problems: Vec::new(),
        origin_of: &origin_of,
    };
    let mut settings = Settings {
        identity: sections.take("identity"),
        exchange: sections.take("exchange"),
        graph: sections.take("graph"),
        keyvault: sections.take("keyvault"),
        runbooks: sections.take("runbooks"),
        policy: sections.take("policy"),
        state: sections.take("state"),
        history: sections.take("history"),
        http: sections.take("http"),
        worker: sections.take("worker"),
        coordination: sections.take("coordination"),
        log: sections.take("log"),
        notify: sections.take("notify"),
        vars: sections.take("vars"),
        secrets: sections.take("secrets"),
    };
    settings.notify.read_secret_env(env);
    problems.append(&mut sections.problems);
    // Checks across values run on what was read; a section that could not be read stands
    // at its defaults, which pass them.
    problems.extend(
        settings
            .problems()
            .into_iter()
            .map(|(key, message)| SettingsError::Invalid {
                origin: origin_of(&key),
                key,
                message,
            }),
    );
    let mut problems: Vec<SettingsError> = problems
        .into_iter()
        .map(|p| secrets.mask_error(p))
        .collect();
    match problems.len() {
        0 => Ok(settings),
        1 => Err(problems.remove(0)),
        _ => Err(SettingsError::Several(problems)),
    }
}

/// The sections of the merged file and environment, read one at a time so that a bad value
/// in one does not hide the problems of the others.
struct Sections<'a> {
    tree: config::Map<String, config::Value>,
    /// Keys already reported as unknown: left out so the rest of their section is checked.
    unknown: &'a [String],
    problems: Vec<SettingsError>,
    origin_of: &'a dyn Fn(&str) -> String,
}

impl Sections<'_> {
    /// Section `name`, or its defaults when absent or unreadable (the problem is recorded).
    fn take<T: serde::de::DeserializeOwned + Default>(&mut self, name: &str) -> T {
        let Some(mut value) = self.tree.remove(name) else {
            return T::default();
        };
        if self.unknown.iter().any(|k| k == name) {
            return T::default();
        }
        if let config::ValueKind::Table(table) = &mut value.kind {
            table.retain(|key, _| !self.unknown.contains(&format!("{name}.{key}")));
        }
        match T::deserialize(value) {
            Ok(section) => section,
            Err(e) => {
                self.problems
                    .push(describe_config_error(e, name, self.origin_of));
                T::default()
            }
        }
    }
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
            SettingsError::Unknown { key, origin, hint } => SettingsError::Unknown {
                key: self.mask(&key),
                origin,
                hint,
            },
            SettingsError::Unreadable { origin, message } => SettingsError::Unreadable {
                origin,
                message: self.mask(&message),
            },
            SettingsError::Several(all) => {
                SettingsError::Several(all.into_iter().map(|e| self.mask_error(e)).collect())
            }
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

/// Where the values came from: the file (its path and parsed table) and the overrides.
struct Origins<'a> {
    file: Option<&'a Path>,
    table: Option<&'a toml::Table>,
    overrides: &'a HashMap<String, String>,
}

impl Origins<'_> {
    /// Where `key` (`section.name`, maybe with an index: `notify.targets[0].url`) came from.
    fn of(&self, key: &str) -> String {
        let var = env_var_for(key);
        let mut path = key.split(['.', '[']);
        let in_file = self.table.is_some_and(|table| {
            let section = path.next().and_then(|s| table.get(s));
            match path.next() {
                Some(name) => section
                    .and_then(toml::Value::as_table)
                    .is_some_and(|t| t.contains_key(name)),
                None => section.is_some(),
            }
        });
        if self.overrides.contains_key(&var) {
            format!("environment variable {var}")
        } else if let (true, Some(file)) = (in_file, self.file) {
            format!("file {}", file.display())
        } else {
            "built-in default".to_string()
        }
    }

    /// Keys that no section has, from the file and from `RUNBOOK_WORKER__*` variables, each
    /// blamed on where it was written.
    fn unknown_keys(&self) -> Vec<SettingsError> {
        let mut out = Vec::new();
        if let (Some(table), Some(file)) = (self.table, self.file) {
            for (section, value) in table {
                if FREE_FORM_SECTIONS.contains(&section.as_str()) {
                    continue;
                }
                let origin = format!("file {}", file.display());
                match (fields_of_section(section), value.as_table()) {
                    (None, _) => out.push(unknown(section, None, origin)),
                    (Some(fields), Some(keys)) => {
                        for name in keys.keys().filter(|k| !fields.contains(&k.as_str())) {
                            out.push(unknown(
                                section,
                                Some(name),
                                format!("{origin}, section [{section}]"),
                            ));
                        }
                    }
                    // A section written as a value: its type error says so.
                    (Some(_), None) => {}
                }
            }
        }
        let prefix = format!("{ENV_PREFIX}__");
        let mut vars: Vec<&String> = self.overrides.keys().collect();
        vars.sort();
        for var in vars {
            let Some(rest) = var.strip_prefix(&prefix) else {
                continue;
            };
            let mut parts = rest.split("__").map(str::to_ascii_lowercase);
            let section = parts.next().unwrap_or_default();
            if FREE_FORM_SECTIONS.contains(&section.as_str()) {
                continue;
            }
            let origin = format!("environment variable {var}");
            match (fields_of_section(&section), parts.next()) {
                (None, name) => out.push(unknown(&section, name.as_deref(), origin)),
                (Some(_), None) => out.push(SettingsError::Unknown {
                    key: section.clone(),
                    origin,
                    hint: format!(
                        ": it names a section, not a setting; add the key, as in {}",
                        env_var_for(&format!(
                            "{section}.{}",
                            fields_of_section(&section)
                                .and_then(|f| f.first())
                                .unwrap_or(&"")
                        ))
                    ),
                }),
                (Some(fields), Some(name)) if !fields.contains(&name.as_str()) => {
                    out.push(unknown(&section, Some(&name), origin));
                }
                _ => {}
            }
        }
        out
    }
}

/// An unknown `section` (with `name` absent) or `section.name`, with the closest known key.
fn unknown(section: &str, name: Option<&str>, origin: String) -> SettingsError {
    let (key, suggestion) = match (fields_of_section(section), name) {
        (Some(fields), Some(name)) => (
            format!("{section}.{name}"),
            closest(name, fields.iter().copied()).map(|f| format!("{section}.{f}")),
        ),
        (None, name) => {
            let key = match name {
                Some(name) => format!("{section}.{name}"),
                None => section.to_string(),
            };
            // A misspelt section, or a key written outside its section.
            let suggestion = closest(section, SECTIONS.iter().copied())
                .map(|s| match name {
                    Some(name) => format!("{s}.{name}"),
                    None => s.to_string(),
                })
                .or_else(|| {
                    let keys = SECTIONS.iter().flat_map(|s| {
                        fields_of_section(s)
                            .unwrap_or_default()
                            .iter()
                            .map(move |f| (*s, *f))
                    });
                    keys.filter(|(_, f)| *f == section)
                        .map(|(s, f)| format!("{s}.{f}"))
                        .next()
                });
            (key, suggestion)
        }
        (Some(_), None) => (section.to_string(), None),
    };
    let hint = match suggestion {
        Some(known) => format!("; did you mean {known}?"),
        None if name.is_some() && fields_of_section(section).is_some() => format!(
            "; [{section}] has {}",
            fields_of_section(section).unwrap_or_default().join(", ")
        ),
        None => format!("; the sections are {}", SECTIONS.join(", ")),
    };
    SettingsError::Unknown { key, origin, hint }
}

/// The known name most like `written`, if one is close enough to be a misspelling.
fn closest<'a>(written: &str, known: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    known
        .map(|k| (strsim::jaro_winkler(written, k), k))
        .filter(|(score, _)| *score >= 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}

/// The settings sections, as the file and the variables name them.
const SECTIONS: &[&str] = &[
    "identity",
    "exchange",
    "graph",
    "keyvault",
    "runbooks",
    "policy",
    "state",
    "history",
    "http",
    "worker",
    "coordination",
    "log",
    "notify",
    "vars",
    "secrets",
];

/// The keys of section `name`, as its type declares them; `None` for no such section.
/// Sections whose keys are names the user chooses (`[vars]`, `[secrets]`): no key of theirs
/// is unknown.
const FREE_FORM_SECTIONS: &[&str] = &["vars", "secrets"];

fn fields_of_section(name: &str) -> Option<&'static [&'static str]> {
    Some(match name {
        "identity" => fields_of::<IdentitySettings>(),
        "exchange" => fields_of::<ExchangeSettings>(),
        "graph" => fields_of::<GraphSettings>(),
        "keyvault" => fields_of::<KeyVaultSettings>(),
        "runbooks" => fields_of::<RunbooksSettings>(),
        "policy" => fields_of::<PolicySettings>(),
        "state" => fields_of::<StateSettings>(),
        "history" => fields_of::<HistorySettings>(),
        "http" => fields_of::<HttpSettings>(),
        "worker" => fields_of::<WorkerSettings>(),
        "coordination" => fields_of::<CoordinationSettings>(),
        "log" => fields_of::<LogSettings>(),
        "notify" => fields_of::<NotifySettings>(),
        // Names the user chooses: any key is known (see FREE_FORM_SECTIONS).
        "vars" | "secrets" => &[],
        _ => return None,
    })
}

/// The field names a struct's `Deserialize` asks for: a deserializer that only listens to
/// `deserialize_struct`, so the list cannot drift from the section types.
fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    use serde::de::{Deserializer, Visitor};

    #[derive(Debug)]
    struct Stop;
    impl fmt::Display for Stop {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("field names read")
        }
    }
    impl std::error::Error for Stop {}
    impl serde::de::Error for Stop {
        fn custom<M: fmt::Display>(_: M) -> Self {
            Stop
        }
    }

    struct Fields<'f>(&'f mut &'static [&'static str]);
    impl<'de> Deserializer<'de> for Fields<'_> {
        type Error = Stop;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            *self.0 = fields;
            Err(Stop)
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Fields(&mut fields));
    fields
}

/// A section's deserialization error as a problem naming `section.key` and its origin.
fn describe_config_error(
    e: config::ConfigError,
    section: &str,
    origin_of: &dyn Fn(&str) -> String,
) -> SettingsError {
    let full = |key: &str| {
        if key.starts_with('[') {
            format!("{section}{key}")
        } else {
            format!("{section}.{key}")
        }
    };
    match e {
        config::ConfigError::Type {
            key: Some(key),
            unexpected,
            expected,
            ..
        } => {
            let key = full(&key);
            SettingsError::Invalid {
                origin: origin_of(&key),
                // serde's `unexpected` quotes the value, and a secret's value stays out.
                message: if SECRET_KEYS.contains(&key.as_str()) {
                    format!("expected {expected} (the value is not shown: it is a secret)")
                } else {
                    format!("expected {expected}, got {unexpected}")
                },
                key,
            }
        }
        config::ConfigError::At {
            key: Some(key),
            error,
            ..
        } => {
            let key = full(&key);
            SettingsError::Invalid {
                origin: origin_of(&key),
                message: error.to_string(),
                key,
            }
        }
        other => SettingsError::Invalid {
            origin: origin_of(section),
            message: other.to_string(),
            key: section.to_string(),
        },
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
        out.extend(crate::executor::assets::problems(&self.vars, &self.secrets));
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
        assert_eq!(s.exchange.page_size.get(), 1000);
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
        assert_eq!(s.exchange.page_size.get(), 50);
    }

    #[test]
    fn vars_and_secrets_come_from_the_file_and_the_environment_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            dir.path(),
            "[vars]
domain = \"contoso.com\"
quota_gb = 50
teams = [\"a\", \"b\"]
\n[secrets]
api_key = \"https://ops.vault.azure.net/secrets/api-key\"\n",
        );
        let s = load(
            Some(&file),
            dir.path(),
            &env(&[("RUNBOOK_WORKER__VARS__REGION", "EU")]),
        )
        .unwrap();
        assert_eq!(s.vars.0["domain"], serde_json::json!("contoso.com"));
        assert_eq!(s.vars.0["quota_gb"], serde_json::json!(50));
        assert_eq!(s.vars.0["teams"], serde_json::json!(["a", "b"]));
        assert_eq!(s.vars.0["region"], serde_json::json!("EU"));
        assert_eq!(
            s.secrets.0["api_key"],
            "https://ops.vault.azure.net/secrets/api-key"
        );
        let bad = write(
            dir.path(),
            "[secrets]\napi_key = \"https://example.com/secrets/api-key\"\n",
        );
        let err = load(Some(&bad), dir.path(), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("secrets.api_key"), "{err}");
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
        assert_eq!(s.exchange.page_size.get(), 10);
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
    fn every_problem_is_reported_at_once_with_its_key_and_origin() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            dir.path(),
            "[exchange]\npage_size = 5000\n[identity]\nimds_endpoint = \"169.254.169.254\"\n\
             [http]\nlisten = \"nowhere\"\n[log]\nformat = \"xml\"\n",
        );
        let err = load(
            Some(&file),
            dir.path(),
            &env(&[
                ("RUNBOOK_WORKER__HISTORY__RETENTION", "forever"),
                ("RUNBOOK_WORKER__HTTP__LISTN", "0.0.0.0:1"),
            ]),
        )
        .unwrap_err();
        let SettingsError::Several(all) = &err else {
            panic!("expected several problems, got {err}");
        };
        let text = err.to_string();
        for key in [
            "exchange.page_size",
            "identity.imds_endpoint",
            "http.listen",
            "log.format",
            "history.retention",
            "http.listn",
        ] {
            assert!(text.contains(key), "{key} missing from: {text}");
        }
        assert_eq!(all.len(), 6, "{text}");
        assert!(
            text.contains("RUNBOOK_WORKER__HISTORY__RETENTION"),
            "{text}"
        );
        assert!(text.contains("worker.toml"), "{text}");
    }

    #[test]
    fn a_misspelt_variable_is_blamed_on_the_variable_with_the_key_it_meant() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(
            None,
            dir.path(),
            &env(&[("RUNBOOK_WORKER__HTTP__LISTN", "127.0.0.1:9")]),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "unknown setting http.listn from environment variable RUNBOOK_WORKER__HTTP__LISTN; did you mean http.listen?"
        );
    }

    #[test]
    fn a_misspelt_key_in_the_file_names_the_file_and_the_section() {
        let cases = [
            (
                "[http]\nlisten = \"127.0.0.1:1\"\nanonymous_read = false\n",
                "unknown setting http.anonymous_read from file ",
                ", section [http]; did you mean http.anonymous_reads?",
            ),
            (
                "[exchang]\npage_size = 10\n",
                "unknown setting exchang from file ",
                "; did you mean exchange?",
            ),
            (
                "listen = \"127.0.0.1:1\"\n",
                "unknown setting listen from file ",
                "; did you mean http.listen?",
            ),
            (
                "[http]\nzzz = 1\n",
                "unknown setting http.zzz from file ",
                "; [http] has listen, ",
            ),
        ];
        for (text, start, end) in cases {
            let err = error_of(text, &[]);
            assert!(err.starts_with(start), "{text}: {err}");
            assert!(err.contains("worker.toml"), "{text}: {err}");
            assert!(err.contains(end), "{text}: {err}");
        }
    }

    #[test]
    fn a_variable_naming_only_a_section_or_an_unknown_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for (var, needle) in [
            ("RUNBOOK_WORKER__HTTP", "names a section"),
            ("RUNBOOK_WORKER__HTP__LISTEN", "did you mean http.listen?"),
        ] {
            let err = load(None, dir.path(), &env(&[(var, "x")]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(var), "{err}");
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn a_value_left_at_its_default_is_blamed_on_the_default_not_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "[identity]\nclient_id = \"a\"\n");
        let err = load(
            Some(&file),
            dir.path(),
            &env(&[("RUNBOOK_WORKER__IDENTITY__OBJECT_ID", "b")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("identity.object_id"), "{err}");
        assert!(
            err.contains("environment variable RUNBOOK_WORKER__IDENTITY__OBJECT_ID"),
            "{err}"
        );
        let blamed = Origins {
            file: Some(&file),
            table: Some(&toml::from_str("[identity]\nclient_id = \"a\"").unwrap()),
            overrides: &HashMap::new(),
        };
        assert_eq!(blamed.of("exchange.page_size"), "built-in default");
        assert!(blamed.of("identity.client_id").starts_with("file "));
    }

    #[test]
    fn a_page_size_out_of_range_is_refused_once_when_the_settings_are_read() {
        for (file, env) in [
            ("[exchange]\npage_size = 0\n", None),
            ("", Some(("RUNBOOK_WORKER__EXCHANGE__PAGE_SIZE", "1001"))),
        ] {
            let env: HashMap<String, String> = env
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let err = from_text(Some((Path::new("w.toml"), file)), &env)
                .unwrap_err()
                .to_string();
            assert!(err.contains("exchange.page_size"), "{err}");
            assert!(err.contains("between 1 and 1000"), "{err}");
        }
    }

    #[test]
    fn the_known_keys_are_read_from_the_section_types() {
        assert_eq!(fields_of::<Settings>(), SECTIONS);
        for section in SECTIONS {
            let fields = fields_of_section(section).unwrap();
            assert_eq!(
                fields.is_empty(),
                FREE_FORM_SECTIONS.contains(section),
                "{section}"
            );
        }
        assert!(fields_of_section("http").unwrap().contains(&"listen"));
        assert_eq!(fields_of_section("nope"), None);
    }

    #[test]
    fn secrets_stay_out_of_a_list_of_problems() {
        let err = error_of(
            &format!("[http]\napi_token = \"{SECRET}\"\nlisten = \"{SECRET}\"\n"),
            &[
                ("RUNBOOK_WORKER__COORDINATION__SAS_URL", SECRET),
                ("RUNBOOK_WORKER__EXCHANGE__PAGE_SIZE", "0"),
            ],
        );
        assert!(err.contains("settings problems"), "{err}");
        assert!(err.contains("http.listen"), "{err}");
        assert!(err.contains("exchange.page_size"), "{err}");
        assert!(!err.contains(SECRET), "{err}");
    }

    #[test]
    fn a_long_list_of_problems_is_cut_with_a_count() {
        let keys: String = (0..60).map(|i| format!("bad_{i} = 1\n")).collect();
        let err = error_of(&format!("[http]\n{keys}"), &[]);
        assert!(err.starts_with("60 settings problems:"), "{err}");
        assert_eq!(
            err.matches("unknown setting http.bad_").count(),
            50,
            "{err}"
        );
        assert!(err.ends_with("and 10 more"), "{err}");
    }

    #[test]
    fn env_var_names_follow_the_double_underscore_rule() {
        assert_eq!(
            env_var_for("identity.client_id"),
            "RUNBOOK_WORKER__IDENTITY__CLIENT_ID"
        );
    }
}
