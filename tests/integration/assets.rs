//! `[vars]` and `[secrets]` through the real `serve` binary: a secret read from the Key
//! Vault simulator with the worker's managed identity goes on the wire to Exchange and
//! nowhere else — not in a dry run's plan, the history's streams and step records, the
//! API's job JSON, the worker's logs or an error that echoes it.

use std::time::Duration;

use serde_json::{Value, json};

use runbook_worker::simulator::exchange::{ExchangeSimulator, SimulatorConfig};
use runbook_worker::simulator::identity::{
    IdentitySimulator, IdentitySimulatorConfig, SIMULATED_TENANT_ID, SimulatedIdentity,
};
use runbook_worker::simulator::keyvault::KeyVaultSimulator;

use crate::support::http::{TOKEN, bearer};
use crate::support::wait_until;
use crate::support::worker::{WorkerProcess, simulator_settings};

/// Long and unusual enough that it appears nowhere by chance.
const SECRET: &str = "S3cr3t-Kv-Value-7c1f0e";

const RUNBOOK: &str = r#"
[[steps]]
name = "users"
cmdlet = "Get-Mailbox"
parameters = { ResultSize = 2 }

[[steps]]
name = "tag"
cmdlet = "Set-Mailbox"
for_each = "users"
continue_on_error = true
parameters = { Identity = "{{ item.ExternalDirectoryObjectId }}", CustomAttribute1 = "{{ vars.team }}:{{ secrets.password }}" }

[[steps]]
name = "echo"
cmdlet = "Set-Mailbox"
continue_on_error = true
parameters = { Identity = "missing-{{ secrets.password }}", CustomAttribute1 = "x" }
"#;

struct World {
    _identity: IdentitySimulator,
    exchange: ExchangeSimulator,
    vault: KeyVaultSimulator,
    dir: tempfile::TempDir,
}

async fn world() -> World {
    let me = SimulatedIdentity::new("worker");
    let object_id = me.object_id.clone();
    let identity =
        IdentitySimulator::start(IdentitySimulatorConfig::default().with_system_assigned(Some(me)))
            .await
            .expect("start the identity simulator");
    let exchange = ExchangeSimulator::start(SimulatorConfig {
        tenant_id: SIMULATED_TENANT_ID.to_string(),
        mailboxes: 5,
        ..SimulatorConfig::default()
    })
    .await
    .expect("start the Exchange simulator");
    let vault = KeyVaultSimulator::start("ops-vault", SIMULATED_TENANT_ID)
        .await
        .expect("start the Key Vault simulator");
    vault.grant_secrets_user(&object_id);
    vault.set_secret("exo-password", SECRET);
    // The API token too comes from the vault: the requests below are accepted only if the
    // worker resolved `keyvault:api_token` at start.
    vault.set_secret("worker-api-token", TOKEN);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("runbooks")).unwrap();
    std::fs::write(dir.path().join("runbooks/tagging.toml"), RUNBOOK).unwrap();
    let config = format!(
        "[runbooks]\ndir = \"runbooks\"\n[state]\ndir = \"state\"\n[http]\nlisten = \"127.0.0.1:0\"\napi_token = \"keyvault:api_token\"\n[log]\nlevel = \"debug\"\n{}\n[keyvault]\nendpoint = \"{}\"\n[vars]\nteam = \"ops\"\n[secrets]\npassword = \"https://ops-vault.vault.azure.net/secrets/exo-password\"\napi_token = \"https://ops-vault.vault.azure.net/secrets/worker-api-token\"\n",
        simulator_settings(&identity.base_url(), &exchange.base_url()),
        vault.base_url(),
    );
    std::fs::write(dir.path().join("worker.toml"), config).unwrap();
    World {
        _identity: identity,
        exchange,
        vault,
        dir,
    }
}

async fn run(worker: &WorkerProcess, dry_run: bool) -> Value {
    let client = reqwest::Client::new();
    let response = client
        .post(worker.url("/api/runbooks/tagging/run"))
        .header("authorization", bearer(TOKEN))
        .json(&json!({ "dry_run": dry_run }))
        .send()
        .await
        .expect("POST run");
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
    let id = response.json::<Value>().await.unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    let get = || async {
        client
            .get(worker.url(&format!("/api/jobs/{id}")))
            .header("authorization", bearer(TOKEN))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    let ended = wait_until(Duration::from_secs(30), || async {
        get().await["ended_at"].is_string()
    })
    .await;
    let job = get().await;
    assert!(ended, "the job ends: {job:#}");
    job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_goes_to_exchange_and_never_into_plans_history_api_logs_or_errors() {
    // (Also: `http.api_token = "keyvault:api_token"` is read from the vault at start.)
    let world = world().await;
    let mut worker = WorkerProcess::spawn(world.dir.path(), "worker.log");
    worker.wait_ready().await;

    let planned = run(&worker, true).await;
    let real = run(&worker, false).await;

    // The real value went on the wire, and only the worker's identity read it.
    let sent: Vec<String> = world
        .exchange
        .requests()
        .iter()
        .map(|r| r.body.as_ref().map(Value::to_string).unwrap_or_default())
        .collect();
    assert!(
        sent.iter().any(|b| b.contains(&format!("ops:{SECRET}"))),
        "Set-Mailbox got the secret: {sent:#?}"
    );
    assert!(world.vault.total_requests() >= 1);

    // A dry run plans the writes with the value masked.
    let plans: Vec<&Value> = planned["streams"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "plan")
        .collect();
    assert!(!plans.is_empty(), "{planned:#}");
    assert!(
        plans.iter().any(|p| p.to_string().contains("ops:***")),
        "{plans:#?}"
    );
    // The failing call that echoes the value, and the vars the job used.
    let text = real.to_string();
    assert!(text.contains("missing-***"), "{real:#}");
    let uses = real["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["data"]["vars"].is_object())
        .expect("an entry with the vars the job used");
    assert_eq!(uses["data"]["vars"], json!({"team": "ops"}), "{uses:#}");
    assert_eq!(uses["data"]["secrets"], json!(["password"]), "{uses:#}");

    for (place, body) in [
        (
            "the dry run's job JSON (plan stream, steps)",
            planned.to_string(),
        ),
        ("the real run's job JSON (streams, steps, error)", text),
        ("the worker's logs (stderr, debug)", worker.logs()),
    ] {
        assert!(
            !body.contains(SECRET),
            "the secret leaked into {place}:\n{body}"
        );
    }
    let database = runbook_worker::history::database_path(&world.dir.path().join("state"));
    for suffix in ["", "-wal"] {
        let file = format!("{}{suffix}", database.display());
        let bytes = std::fs::read(&file).unwrap_or_default();
        assert!(
            !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "the secret leaked into {file}"
        );
    }
}
