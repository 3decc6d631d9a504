//! `[notify]` and `[[notify.targets]]`: parsed by serde as plain strings, then checked by
//! [`NotifySettings::problems`] (every error names its key), then turned into [`Target`]s
//! by [`resolve_targets`], the only place that reads `url_file` and `secret_file`.

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use url::{Host, Url};

use super::NotifyError;
use super::event::NotifyEvent;
use super::sign::SigningKey;
use crate::base_url::BaseUrl;
use crate::duration::HumanDuration;

/// The Microsoft Graph base URL `email` targets send through.
pub const DEFAULT_GRAPH_ENDPOINT: &str = "https://graph.microsoft.com";
/// Caps on what the settings may hold: targets and recipients per email target (a
/// `url_file` or `secret_file` is capped by `bounded_file::read_secret`).
const MAX_TARGETS: usize = 64;
const MAX_RECIPIENTS: usize = 50;
const MAX_NAME_LEN: usize = 64;

/// `[notify]`: who hears about jobs that need a person.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifySettings {
    /// Targets for runbooks whose file sets no `notify` list.
    pub default: Vec<String>,
    /// At most one message per runbook per interval; the rest are counted.
    pub min_interval: HumanDuration,
    /// Notices waiting to be sent; beyond it a notice is dropped and counted.
    pub queue_capacity: usize,
    /// Attempts per message and target, the first included.
    pub max_attempts: u32,
    /// The wait before the second attempt; it doubles for each further one.
    pub retry_delay: HumanDuration,
    /// The longest wait between attempts, also the cap on a `Retry-After`.
    pub max_retry_delay: HumanDuration,
    /// How long one request may take.
    pub timeout: HumanDuration,
    /// How long shutdown waits for messages still queued or being sent.
    pub drain_timeout: HumanDuration,
    /// Base URL of Microsoft Graph for `email` targets.
    pub graph_endpoint: BaseUrl,
    pub targets: Vec<TargetSettings>,
}

impl Default for NotifySettings {
    fn default() -> Self {
        Self {
            default: Vec::new(),
            min_interval: HumanDuration::from_secs(15 * 60),
            queue_capacity: 256,
            max_attempts: 5,
            retry_delay: HumanDuration::from_secs(2),
            max_retry_delay: HumanDuration::from_secs(5 * 60),
            timeout: HumanDuration::from_secs(15),
            drain_timeout: HumanDuration::from_secs(10),
            graph_endpoint: DEFAULT_GRAPH_ENDPOINT
                .parse()
                .expect("the default Graph endpoint is a base URL"),
            targets: Vec::new(),
        }
    }
}

/// One `[[notify.targets]]` table as written. URLs and secrets are `SecretString`s: a
/// Teams Workflows URL carries its key in the query, so its `Debug` is redacted too.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TargetSettings {
    pub name: String,
    /// `webhook`, `teams` or `email`.
    pub kind: String,
    pub url: Option<SecretString>,
    pub url_file: Option<PathBuf>,
    /// A Standard Webhooks secret (`whsec_<base64>`), for `webhook` targets.
    pub secret: Option<SecretString>,
    pub secret_file: Option<PathBuf>,
    /// The name of an environment variable holding the secret (a container secret
    /// reference), read when the settings are loaded.
    pub secret_env: Option<String>,
    /// The value of `secret_env`, filled by [`NotifySettings::read_secret_env`].
    #[serde(skip)]
    pub secret_env_value: Option<SecretString>,
    /// The mailbox an `email` target sends as.
    pub from: Option<String>,
    pub to: Vec<String>,
    /// Events to send; absent means failed, timed_out, interrupted, recovered.
    pub events: Option<Vec<String>>,
    /// Also notify for dry runs.
    pub dry_runs: bool,
}

/// How a target is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    Webhook,
    Teams,
    Email,
}

impl TargetKind {
    pub fn parse(s: &str) -> Option<TargetKind> {
        match s {
            "webhook" => Some(TargetKind::Webhook),
            "teams" => Some(TargetKind::Teams),
            "email" => Some(TargetKind::Email),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Webhook => "webhook",
            TargetKind::Teams => "teams",
            TargetKind::Email => "email",
        }
    }
}

impl fmt::Display for TargetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A URL that may carry a credential (a Workflows `sig`, a token in a path): shown only
/// as scheme, host and port.
#[derive(Clone)]
pub struct SecretUrl(Url);

impl SecretUrl {
    /// The full URL, for the request only. Never log or format it.
    pub(crate) fn expose(&self) -> &Url {
        &self.0
    }

    /// `https://host:port`, without path or query: safe to show.
    pub fn origin(&self) -> String {
        self.0.origin().ascii_serialization()
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({}/[redacted])", self.origin())
    }
}

/// A target ready to send to: files read, URL and secret checked.
#[derive(Clone, Debug)]
pub struct Target {
    pub name: String,
    pub kind: TargetKind,
    pub events: Vec<NotifyEvent>,
    pub dry_runs: bool,
    pub(crate) endpoint: Endpoint,
}

#[derive(Clone, Debug)]
pub(crate) enum Endpoint {
    Webhook {
        url: SecretUrl,
        secret: Option<SigningKey>,
    },
    Teams {
        url: SecretUrl,
    },
    Email {
        from: String,
        to: Vec<String>,
    },
}

impl Target {
    /// Whether this target wants `event` for a job that was (or was not) a dry run.
    pub fn wants(&self, event: NotifyEvent, dry_run: bool) -> bool {
        (event == NotifyEvent::Test || self.events.contains(&event)) && (!dry_run || self.dry_runs)
    }
}

impl NotifySettings {
    /// Where email targets' `sendMail` goes: `notify.graph_endpoint` when it is set to
    /// something else than Microsoft Graph's public host, else `[graph] endpoint` (the
    /// same override Graph steps use, e.g. the simulator), else the public host.
    pub fn mail_endpoint(&self, graph_endpoint: Option<&Url>) -> Result<Url, NotifyError> {
        let default = self.graph_endpoint.as_url().as_str().trim_end_matches('/')
            == DEFAULT_GRAPH_ENDPOINT.trim_end_matches('/');
        Ok(match graph_endpoint {
            Some(graph) if default => graph.clone(),
            _ => self.graph_endpoint.as_url().clone(),
        })
    }

    /// Reads each target's `secret_env` from `env` (the process environment, passed in:
    /// only the binary reads it).
    pub fn read_secret_env(&mut self, env: &std::collections::HashMap<String, String>) {
        for target in &mut self.targets {
            target.secret_env_value = target
                .secret_env
                .as_ref()
                .and_then(|var| env.get(var))
                .map(|value| SecretString::from(value.clone()));
        }
    }

    /// The names of the targets, as runbooks' `notify` lists name them.
    pub fn target_names(&self) -> Vec<String> {
        self.targets.iter().map(|t| t.name.clone()).collect()
    }

    /// Values that parse but make no sense, as (`notify.key`, message). Messages name the
    /// target and never contain a URL or secret.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if self.targets.len() > MAX_TARGETS {
            out.push((
                "notify.targets".to_string(),
                format!("at most {MAX_TARGETS} targets, got {}", self.targets.len()),
            ));
        }
        let mut names = HashSet::new();
        for (i, target) in self.targets.iter().enumerate() {
            out.extend(target_problems(i, target, &mut names));
        }
        for name in &self.default {
            if !self.targets.iter().any(|t| &t.name == name) {
                out.push((
                    "notify.default".to_string(),
                    format!("names target {name:?}, which no [[notify.targets]] defines"),
                ));
            }
        }
        if !(1..=100_000).contains(&self.queue_capacity) {
            out.push((
                "notify.queue_capacity".to_string(),
                format!("must be between 1 and 100000, got {}", self.queue_capacity),
            ));
        }
        if !(1..=20).contains(&self.max_attempts) {
            out.push((
                "notify.max_attempts".to_string(),
                format!("must be between 1 and 20, got {}", self.max_attempts),
            ));
        }
        if self.timeout.get().is_zero() {
            out.push((
                "notify.timeout".to_string(),
                "must be more than 0s".to_string(),
            ));
        }
        if let Err(message) = check_url(self.graph_endpoint.as_str()) {
            out.push(("notify.graph_endpoint".to_string(), message));
        }
        out
    }
}

fn target_problems(
    i: usize,
    t: &TargetSettings,
    names: &mut HashSet<String>,
) -> Vec<(String, String)> {
    let key = |k: &str| format!("notify.targets[{i}].{k}");
    let mut out = Vec::new();
    let who = if t.name.is_empty() {
        format!("target #{}", i + 1)
    } else {
        format!("target {:?}", t.name)
    };
    if t.name.is_empty() {
        out.push((key("name"), "every target needs a name".to_string()));
    } else if t.name.len() > MAX_NAME_LEN
        || !t
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        out.push((
            key("name"),
            format!("{who}: use at most {MAX_NAME_LEN} letters, digits, '-', '_' or '.'"),
        ));
    } else if !names.insert(t.name.clone()) {
        out.push((
            key("name"),
            format!("{who} is defined twice: target names must be unique"),
        ));
    }
    let Some(kind) = TargetKind::parse(&t.kind) else {
        out.push((
            key("kind"),
            format!("{who}: expected webhook, teams or email, got {:?}", t.kind),
        ));
        return out;
    };
    match kind {
        TargetKind::Webhook | TargetKind::Teams => {
            match (&t.url, &t.url_file) {
                (None, None) => out.push((
                    key("url"),
                    format!("{who} ({kind}) needs `url` or `url_file`"),
                )),
                (Some(_), Some(_)) => out.push((
                    key("url_file"),
                    format!("{who}: set `url` or `url_file`, not both"),
                )),
                (Some(url), None) => {
                    if let Err(message) = check_url(url.expose_secret()) {
                        out.push((key("url"), format!("{who}: {message}")));
                    }
                }
                (None, Some(_)) => {}
            }
            if t.from.is_some() || !t.to.is_empty() {
                out.push((
                    key(if t.from.is_some() { "from" } else { "to" }),
                    format!("{who}: `from` and `to` are for email targets only"),
                ));
            }
        }
        TargetKind::Email => {
            if t.url.is_some() || t.url_file.is_some() {
                out.push((
                    key("url"),
                    format!("{who}: email targets take `from` and `to`, not a URL"),
                ));
            }
            match &t.from {
                None => out.push((
                    key("from"),
                    format!("{who}: email targets need `from`, the mailbox that sends"),
                )),
                Some(from) if !looks_like_address(from) => out.push((
                    key("from"),
                    format!("{who}: expected a mailbox address such as noreply@contoso.com, got {from:?}"),
                )),
                Some(_) => {}
            }
            if t.to.is_empty() {
                out.push((
                    key("to"),
                    format!("{who}: email targets need at least one address in `to`"),
                ));
            } else if t.to.len() > MAX_RECIPIENTS {
                out.push((
                    key("to"),
                    format!("{who}: at most {MAX_RECIPIENTS} recipients"),
                ));
            }
            for address in &t.to {
                if !looks_like_address(address) {
                    out.push((
                        key("to"),
                        format!("{who}: expected mail addresses, got {address:?}"),
                    ));
                }
            }
        }
    }
    let secret_keys: Vec<&str> = [
        ("secret", t.secret.is_some()),
        ("secret_file", t.secret_file.is_some()),
        ("secret_env", t.secret_env.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    if kind != TargetKind::Webhook && !secret_keys.is_empty() {
        out.push((
            key(secret_keys[0]),
            format!("{who}: a signing secret is for webhook targets only"),
        ));
    }
    if secret_keys.len() > 1 {
        out.push((
            key(secret_keys[1]),
            format!("{who}: set one of `secret`, `secret_file` or `secret_env`, not several"),
        ));
    } else if let Some(secret) = &t.secret {
        if let Err(message) = SigningKey::parse(secret.expose_secret()) {
            out.push((key("secret"), format!("{who}: {message}")));
        }
    } else if let Some(var) = &t.secret_env {
        match &t.secret_env_value {
            None => out.push((
                key("secret_env"),
                format!("{who}: the environment variable {var} is not set"),
            )),
            Some(value) => {
                if let Err(message) = SigningKey::parse(value.expose_secret()) {
                    out.push((key("secret_env"), format!("{who}: {var}: {message}")));
                }
            }
        }
    }
    if let Some(events) = &t.events {
        if events.is_empty() {
            out.push((
                key("events"),
                format!(
                    "{who}: an empty list never sends anything; list events or remove the target"
                ),
            ));
        }
        for event in events {
            if NotifyEvent::parse(event).is_none() {
                let known: Vec<_> = NotifyEvent::SUBSCRIBABLE
                    .iter()
                    .map(|e| e.as_str())
                    .collect();
                out.push((
                    key("events"),
                    format!(
                        "{who}: unknown event {event:?} (expected one of {})",
                        known.join(", ")
                    ),
                ));
            }
        }
    }
    out
}

fn looks_like_address(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && s.len() <= 254
        && !s.chars().any(|c| c.is_whitespace() || c == '<' || c == '>')
}

/// `https`, or `http` to a loopback address (how tests reach their receivers). The message
/// never repeats the URL: it may hold a key.
pub(crate) fn check_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text.trim())
        .map_err(|e| format!("not a valid URL ({e}); expected https://…"))?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        "http" => Err(
            "must use https (plain http is allowed only to a loopback address such as 127.0.0.1)"
                .to_string(),
        ),
        other => Err(format!("must use https, got a {other}: URL")),
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// Reads the files targets refer to and returns each target ready to send to. Call it
/// after [`NotifySettings::problems`] came back empty; it checks again what the files hold.
pub fn resolve_targets(settings: &NotifySettings) -> Result<Vec<Target>, NotifyError> {
    settings
        .targets
        .iter()
        .enumerate()
        .map(|(i, t)| resolve_target(i, t))
        .collect()
}

fn resolve_target(i: usize, t: &TargetSettings) -> Result<Target, NotifyError> {
    let invalid = |key: &str, message: String| NotifyError::InvalidTarget {
        key: format!("notify.targets[{i}].{key}"),
        target: t.name.clone(),
        message,
    };
    let kind = TargetKind::parse(&t.kind)
        .ok_or_else(|| invalid("kind", format!("unknown kind {:?}", t.kind)))?;
    let events = match &t.events {
        None => NotifyEvent::DEFAULT.to_vec(),
        Some(list) => list
            .iter()
            .map(|e| {
                NotifyEvent::parse(e)
                    .ok_or_else(|| invalid("events", format!("unknown event {e:?}")))
            })
            .collect::<Result<_, _>>()?,
    };
    let url = || -> Result<SecretUrl, NotifyError> {
        let text = match (&t.url, &t.url_file) {
            (Some(url), _) => url.expose_secret().to_string(),
            (None, Some(path)) => read_secret_file(i, t, "url_file", path)?,
            (None, None) => return Err(invalid("url", "needs `url` or `url_file`".to_string())),
        };
        let key = if t.url.is_some() { "url" } else { "url_file" };
        check_url(&text).map(SecretUrl).map_err(|m| invalid(key, m))
    };
    let endpoint = match kind {
        TargetKind::Webhook => {
            let secret = match (&t.secret, &t.secret_file) {
                (Some(s), _) => {
                    Some(SigningKey::parse(s.expose_secret()).map_err(|m| invalid("secret", m))?)
                }
                (None, Some(path)) => Some(
                    SigningKey::parse(&read_secret_file(i, t, "secret_file", path)?)
                        .map_err(|m| invalid("secret_file", m))?,
                ),
                (None, None) => match (&t.secret_env, &t.secret_env_value) {
                    (Some(_), Some(value)) => Some(
                        SigningKey::parse(value.expose_secret())
                            .map_err(|m| invalid("secret_env", m))?,
                    ),
                    (Some(var), None) => {
                        return Err(invalid(
                            "secret_env",
                            format!("the environment variable {var} is not set"),
                        ));
                    }
                    (None, _) => None,
                },
            };
            Endpoint::Webhook {
                url: url()?,
                secret,
            }
        }
        TargetKind::Teams => Endpoint::Teams { url: url()? },
        TargetKind::Email => Endpoint::Email {
            from: t
                .from
                .clone()
                .ok_or_else(|| invalid("from", "email targets need `from`".to_string()))?,
            to: t.to.clone(),
        },
    };
    Ok(Target {
        name: t.name.clone(),
        kind,
        events,
        dry_runs: t.dry_runs,
        endpoint,
    })
}

/// A file's text, trimmed; the error names the key and the path, never the contents.
fn read_secret_file(
    i: usize,
    t: &TargetSettings,
    key: &str,
    path: &Path,
) -> Result<String, NotifyError> {
    let fail = |message: String| NotifyError::TargetFile {
        key: format!("notify.targets[{i}].{key}"),
        target: t.name.clone(),
        path: path.to_path_buf(),
        message,
    };
    let text = crate::bounded_file::read_secret(path).map_err(|e| fail(e.to_string()))?;
    if text.is_empty() {
        return Err(fail("the file is empty".to_string()));
    }
    Ok(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn webhook(name: &str, url: &str) -> TargetSettings {
        TargetSettings {
            name: name.to_string(),
            kind: "webhook".to_string(),
            url: Some(SecretString::from(url.to_string())),
            ..TargetSettings::default()
        }
    }

    fn problems_of(targets: Vec<TargetSettings>) -> Vec<(String, String)> {
        NotifySettings {
            targets,
            ..NotifySettings::default()
        }
        .problems()
    }

    #[test]
    fn secret_env_reads_the_secret_from_the_environment_and_names_a_missing_variable() {
        let secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
        let mut target = webhook("hook", "https://hooks.example.net/x");
        target.secret_env = Some("HOOK_SECRET".to_string());
        let mut settings = NotifySettings {
            targets: vec![target],
            ..NotifySettings::default()
        };

        settings.read_secret_env(&HashMap::new());
        let problems = settings.problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "notify.targets[0].secret_env");
        assert!(
            problems[0].1.contains("HOOK_SECRET is not set"),
            "{problems:?}"
        );

        let env = HashMap::from([("HOOK_SECRET".to_string(), secret.to_string())]);
        settings.read_secret_env(&env);
        assert_eq!(settings.problems(), Vec::new());
        let targets = resolve_targets(&settings).expect("resolves");
        assert!(matches!(
            &targets[0].endpoint,
            Endpoint::Webhook {
                secret: Some(_),
                ..
            }
        ));
        assert!(
            !format!("{settings:?}").contains("C2FVsBQ"),
            "Debug is redacted"
        );

        settings.targets[0].secret = Some(SecretString::from(secret.to_string()));
        let problems = settings.problems();
        assert!(
            problems
                .iter()
                .any(|(k, m)| k == "notify.targets[0].secret_file" || m.contains("not several")),
            "{problems:?}"
        );
    }

    #[test]
    fn https_and_loopback_http_urls_are_accepted_and_others_are_refused() {
        for ok in [
            "https://hooks.example.net/x",
            "http://127.0.0.1:9000/x",
            "http://[::1]:9000/x",
            "http://localhost/x",
        ] {
            assert!(check_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://hooks.example.net/x?sig=abc",
            "ftp://x/y",
            "not a url",
        ] {
            let message = check_url(bad).unwrap_err();
            assert!(!message.contains("sig=abc"), "{message}");
        }
    }

    #[test]
    fn a_target_with_a_good_shape_has_no_problems() {
        let mut email = TargetSettings {
            name: "ops-mail".into(),
            kind: "email".into(),
            from: Some("noreply@contoso.com".into()),
            to: vec!["ops@contoso.com".into()],
            events: Some(vec!["failed".into(), "missed".into()]),
            ..TargetSettings::default()
        };
        assert!(problems_of(vec![webhook("a", "https://x.example/h"), email.clone()]).is_empty());
        email.to.clear();
        let p = problems_of(vec![email]);
        assert_eq!(p[0].0, "notify.targets[0].to", "{p:?}");
    }

    #[test]
    fn problems_name_the_key_and_the_target_but_never_the_url() {
        let secret_url = "http://hooks.example.net/x?sig=topsecret";
        let mut dup = webhook("a", "https://x.example/h");
        dup.events = Some(vec!["failed".into(), "exploded".into()]);
        let missing = TargetSettings {
            name: "b".into(),
            kind: "teams".into(),
            ..TargetSettings::default()
        };
        let settings = NotifySettings {
            default: vec!["nobody".into()],
            targets: vec![webhook("a", secret_url), dup, missing],
            ..NotifySettings::default()
        };
        let p = settings.problems();
        let find = |key: &str, needle: &str| {
            assert!(
                p.iter().any(|(k, m)| k == key && m.contains(needle)),
                "{key} / {needle} in {p:?}"
            )
        };
        find("notify.targets[0].url", "must use https");
        find("notify.targets[1].name", "defined twice");
        find("notify.targets[1].events", "\"exploded\"");
        find("notify.targets[2].url", "needs `url` or `url_file`");
        find("notify.default", "\"nobody\"");
        assert!(p.iter().all(|(_, m)| !m.contains("topsecret")), "{p:?}");
    }

    #[test]
    fn files_are_read_and_their_errors_name_the_path_not_the_contents() {
        let dir = tempfile::tempdir().unwrap();
        let url_file = dir.path().join("url");
        std::fs::write(&url_file, "http://hooks.example.net/?sig=fromfile\n").unwrap();
        let t = TargetSettings {
            name: "t".into(),
            kind: "teams".into(),
            url_file: Some(url_file.clone()),
            ..TargetSettings::default()
        };
        let settings = NotifySettings {
            targets: vec![t],
            ..NotifySettings::default()
        };
        let err = resolve_targets(&settings).unwrap_err().to_string();
        assert!(err.contains("notify.targets[0].url_file"), "{err}");
        assert!(!err.contains("fromfile"), "{err}");

        let mut settings = settings;
        settings.targets[0].url_file = Some(dir.path().join("missing"));
        let err = resolve_targets(&settings).unwrap_err().to_string();
        assert!(err.contains("missing"), "{err}");

        std::fs::write(&url_file, "https://hooks.example.net/?sig=fromfile\n").unwrap();
        settings.targets[0].url_file = Some(url_file);
        let targets = resolve_targets(&settings).unwrap();
        assert_eq!(targets[0].events, NotifyEvent::DEFAULT.to_vec());
        let shown = format!("{targets:?}");
        assert!(!shown.contains("fromfile"), "{shown}");
    }
}
