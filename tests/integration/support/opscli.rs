//! Helpers for the operator commands (`invoke`, `doctor`, `probe`): both simulators on
//! 127.0.0.1 sharing one tenant, a temp folder with `runbooks/` and `state/`, and the
//! environment that points the real binary at all of it.

use std::path::{Path, PathBuf};
use std::process::Output;

use runbook_worker::simulator::exchange::{ExchangeSimulator, SimulatorConfig};
use runbook_worker::simulator::identity::{
    IdentitySimulator, IdentitySimulatorConfig, SimulatedIdentity,
};
use serde_json::Value;

pub use runbook_worker::simulator::exchange::DEFAULT_TENANT_ID;

/// The Global Reader directory role (reads only).
pub const GLOBAL_READER: &str = "f2ef992c-3afb-46b9-b7cf-a126ee74c451";

/// A runbook that only reads.
pub const READING_RUNBOOK: &str = r#"description = "Lists mailboxes"
schedule = "0 0 7 * * 1"
timezone = "UTC"

[[steps]]
name = "mailboxes"
cmdlet = "Get-Mailbox"
parameters = { ResultSize = "10" }
"#;

/// A runbook that changes mailboxes.
pub const WRITING_RUNBOOK: &str = r#"description = "Hides shared mailboxes"
schedule = "0 0 2 * * *"
timezone = "UTC"

[[steps]]
name = "find"
cmdlet = "Get-Mailbox"
parameters = { RecipientTypeDetails = "SharedMailbox", ResultSize = "Unlimited" }

[[steps]]
name = "hide"
cmdlet = "Set-Mailbox"
for_each = "find"
parameters = { Identity = "{{ item.ExternalDirectoryObjectId }}", HiddenFromAddressListsEnabled = true }
"#;

/// A machine with one managed identity, an Exchange tenant and a worker folder.
pub struct Stack {
    pub identity: SimulatedIdentity,
    pub identity_sim: IdentitySimulator,
    pub exchange: ExchangeSimulator,
    pub dir: tempfile::TempDir,
    /// Extra `RUNBOOK_WORKER__*` (or other) variables for the binary.
    pub extra_env: Vec<(String, String)>,
}

/// The machine's system-assigned identity, in the simulated tenant, with
/// Exchange.ManageAsApp and Exchange Administrator unless `adjust` changes it.
pub async fn stack(adjust: impl FnOnce(SimulatedIdentity) -> SimulatedIdentity) -> Stack {
    let identity = adjust(SimulatedIdentity::new("system").with_tenant(DEFAULT_TENANT_ID));
    let identity_sim = IdentitySimulator::start(
        IdentitySimulatorConfig::default().with_system_assigned(Some(identity.clone())),
    )
    .await
    .expect("start the identity simulator");
    let exchange = ExchangeSimulator::start(SimulatorConfig::default())
        .await
        .expect("start the simulated tenant");
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("runbooks")).expect("runbooks dir");
    Stack {
        identity,
        identity_sim,
        exchange,
        dir,
        extra_env: Vec::new(),
    }
}

impl Stack {
    pub fn runbooks_dir(&self) -> PathBuf {
        self.dir.path().join("runbooks")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Writes `runbooks/<name>` and returns its path.
    pub fn runbook(&self, name: &str, text: &str) -> PathBuf {
        let path = self.runbooks_dir().join(name);
        std::fs::write(&path, text).expect("write runbook");
        path
    }

    pub fn with_env(mut self, key: &str, value: &str) -> Self {
        self.extra_env.push((key.to_string(), value.to_string()));
        self
    }

    /// The variables that point the binary at the simulators and the temp folder.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            (
                "RUNBOOK_WORKER__IDENTITY__IMDS_ENDPOINT".to_string(),
                self.identity_sim.base_url(),
            ),
            (
                "RUNBOOK_WORKER__EXCHANGE__ENDPOINT".to_string(),
                self.exchange.base_url(),
            ),
            (
                "RUNBOOK_WORKER__EXCHANGE__RETRY_BASE_DELAY".to_string(),
                "10ms".to_string(),
            ),
            (
                "RUNBOOK_WORKER__RUNBOOKS__DIR".to_string(),
                path_text(&self.runbooks_dir()),
            ),
            (
                "RUNBOOK_WORKER__STATE__DIR".to_string(),
                path_text(&self.state_dir()),
            ),
        ];
        // Later entries win: the test's own overrides.
        env.extend(self.extra_env.iter().cloned());
        env
    }

    /// Runs the binary in the temp folder with [`Stack::env`], off the test's runtime so
    /// the simulators keep serving.
    pub async fn run(&self, args: &[&str]) -> Output {
        let env = self.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        super::run_binary_off_runtime(self.dir.path(), args, &env).await
    }

    /// `doctor --format json`, parsed, with the output.
    pub async fn doctor(&self) -> (Output, Vec<Value>) {
        let out = self.run(&["doctor", "--format", "json"]).await;
        let report: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "doctor printed no JSON array ({e}):\n{}\n{}",
                super::stdout(&out),
                super::stderr(&out)
            )
        });
        (out, report)
    }

    /// Every token the identity simulator handed out.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.identity_sim.issued_tokens()
    }
}

fn path_text(path: &Path) -> String {
    path.to_str().expect("temp paths are UTF-8").to_string()
}

/// The finding of `check` in a `doctor --format json` report.
pub fn finding<'a>(report: &'a [Value], check: &str) -> &'a Value {
    report
        .iter()
        .find(|f| f["check"] == check)
        .unwrap_or_else(|| panic!("no {check} in {report:#?}"))
}

/// `status`, `message` and `fix` of a finding, as text.
pub fn status_of(report: &[Value], check: &str) -> String {
    finding(report, check)["status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

pub fn text_of(report: &[Value], check: &str) -> String {
    let f = finding(report, check);
    format!(
        "{} {}",
        f["message"].as_str().unwrap_or_default(),
        f["fix"].as_str().unwrap_or_default()
    )
}

/// The pieces of a JWT long enough to be recognised if printed (payload and signature).
pub fn secret_parts(token: &str) -> Vec<String> {
    token
        .split('.')
        .skip(1)
        .filter(|part| part.len() > 8)
        .map(str::to_string)
        .collect()
}
