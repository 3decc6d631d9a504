//! The operator commands through the real binary: `invoke` and `doctor` against the
//! simulated identity endpoint and Exchange tenant, `probe` against a small HTTP server,
//! all on 127.0.0.1.

use std::os::unix::fs::PermissionsExt as _;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use runbook_worker::identity::claims::APP_ONLY_MARKER_WID;
use serde_json::{Value, json};

use crate::support::closed_port;
use crate::support::deploy::{parse_dockerfile, read_repo_file, stages};
use crate::support::opscli::{
    GLOBAL_READER, READING_RUNBOOK, Stack, WRITING_RUNBOOK, finding, secret_parts, stack,
    status_of, text_of,
};
use crate::support::{stderr, stdout};

/// A user mailbox of the simulated tenant, by primary address.
fn a_user_mailbox(stack: &Stack) -> String {
    stack
        .exchange
        .mailboxes()
        .into_iter()
        .find(|m| m.recipient_type_details.as_str() == "UserMailbox")
        .expect("the seeded tenant has user mailboxes")
        .primary_smtp_address
}

fn set_mode(path: &std::path::Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

// ---- invoke ----------------------------------------------------------------------------

#[tokio::test]
async fn invoke_prints_one_json_line_per_record_when_stdout_is_not_a_terminal() {
    let stack = stack(|i| i).await;

    let out = stack
        .run(&[
            "invoke",
            "Get-Mailbox",
            "--param",
            "RecipientTypeDetails=UserMailbox",
            "--param",
            "ResultSize=3",
        ])
        .await;

    assert!(out.status.success(), "{}", stderr(&out));
    let printed = stdout(&out);
    let records: Vec<Value> = printed
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is one JSON object"))
        .collect();
    assert_eq!(records.len(), 3, "{printed}");
    for record in &records {
        assert_eq!(record["RecipientTypeDetails"], "UserMailbox", "{record}");
        let keys = record.as_object().unwrap().keys();
        assert!(
            keys.into_iter().all(|k| !k.contains("@odata")),
            "annotations stripped: {record}"
        );
    }
    // On the wire: the number stayed a number, the text a string.
    let request = stack
        .exchange
        .requests()
        .into_iter()
        .find(|r| r.cmdlet() == Some("Get-Mailbox"))
        .expect("the call reached the tenant");
    let parameters = request.parameters().unwrap();
    assert_eq!(parameters["ResultSize"], json!(3));
    assert_eq!(parameters["RecipientTypeDetails"], json!("UserMailbox"));
}

#[tokio::test]
async fn invoke_sends_a_json_object_as_a_hashtable_and_changes_the_simulated_mailbox() {
    let stack = stack(|i| i).await;
    let mailbox = a_user_mailbox(&stack);
    let identity = format!("Identity={mailbox}");

    let out = stack
        .run(&[
            "invoke",
            "Set-Mailbox",
            "--param",
            &identity,
            "--param",
            r#"EmailAddresses={"Add":"smtp:helpdesk-alias@contoso.com"}"#,
            "--param",
            "HiddenFromAddressListsEnabled=true",
        ])
        .await;

    assert!(out.status.success(), "{}", stderr(&out));
    let changed = stack.exchange.mailbox(&mailbox).expect("still there");
    assert!(
        changed
            .email_addresses
            .contains(&"smtp:helpdesk-alias@contoso.com".to_string()),
        "{:?}",
        changed.email_addresses
    );
    assert!(changed.hidden_from_address_lists_enabled);
    let request = stack
        .exchange
        .requests()
        .into_iter()
        .find(|r| r.cmdlet() == Some("Set-Mailbox"))
        .unwrap();
    let parameters = request.parameters().unwrap();
    assert_eq!(
        parameters["EmailAddresses"],
        json!({"@odata.type": "#Exchange.GenericHashTable", "Add": "smtp:helpdesk-alias@contoso.com"})
    );
    assert_eq!(parameters["HiddenFromAddressListsEnabled"], json!(true));
    assert_eq!(parameters["Confirm"], json!(false));

    // The same change again does nothing, and Exchange's warning goes to stderr.
    let again = stack
        .run(&[
            "invoke",
            "Set-Mailbox",
            "--param",
            &identity,
            "--param",
            "HiddenFromAddressListsEnabled=true",
        ])
        .await;
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(stdout(&again), "");
    let warned = stderr(&again);
    assert!(
        warned.contains("warning:") && warned.contains("no settings"),
        "{warned}"
    );
}

#[tokio::test]
async fn invoke_prints_a_table_with_identifying_or_chosen_columns() {
    let stack = stack(|i| i).await;
    let mailbox = a_user_mailbox(&stack);
    let identity = format!("Identity={mailbox}");

    let out = stack
        .run(&[
            "invoke",
            "Get-Mailbox",
            "-p",
            &identity,
            "--output",
            "table",
        ])
        .await;

    assert!(out.status.success(), "{}", stderr(&out));
    let printed = stdout(&out);
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines.len(), 3, "{printed}");
    for column in ["DisplayName", "Alias", "PrimarySmtpAddress"] {
        assert!(lines[0].contains(column), "{printed}");
    }
    assert!(lines[1].starts_with("-----------"), "{printed}");
    assert!(lines[2].contains(&mailbox), "{printed}");
    assert!(stderr(&out).contains("--property"), "{}", stderr(&out));

    let chosen = stack
        .run(&[
            "invoke",
            "Get-Mailbox",
            "-p",
            &identity,
            "--output",
            "table",
            "--property",
            "Alias,LitigationHoldEnabled",
        ])
        .await;
    let printed = stdout(&chosen);
    let header = printed.lines().next().unwrap_or_default();
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        ["Alias", "LitigationHoldEnabled"],
        "{printed}"
    );
}

#[tokio::test]
async fn invoke_prints_what_worked_and_exits_3_after_non_terminating_errors() {
    let stack = stack(|i| i).await;
    let mailbox = a_user_mailbox(&stack);

    let out = stack
        .run(&[
            "invoke",
            "Get-MailboxStatistics",
            "--param",
            &format!(r#"Identity=["{mailbox}","nobody@contoso.com"]"#),
        ])
        .await;

    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().count(), 1, "{}", stdout(&out));
    let error = stderr(&out);
    assert!(
        error.contains("error (non-terminating):") && error.contains("nobody@contoso.com"),
        "{error}"
    );
    assert!(
        error.contains("completed with 1 non-terminating error"),
        "{error}"
    );
}

#[tokio::test]
async fn an_unknown_cmdlet_fails_with_the_parsed_exchange_error() {
    let stack = stack(|i| i).await;

    let out = stack.run(&["invoke", "Get-Nothing"]).await;

    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(stdout(&out), "");
    let error = stderr(&out);
    for needle in [
        "error: Get-Nothing",
        "CommandNotFoundException",
        "check the cmdlet name",
    ] {
        assert!(error.contains(needle), "{needle:?} not in {error}");
    }
}

#[tokio::test]
async fn a_403_says_the_identity_lacks_exchange_manage_as_app() {
    let stack = stack(|i| i.with_roles(&[])).await;

    let out = stack
        .run(&["invoke", "Get-Mailbox", "--param", "ResultSize=1"])
        .await;

    assert_eq!(out.status.code(), Some(1));
    let error = stderr(&out);
    for needle in ["forbidden (403", "2000008", "Exchange.ManageAsApp"] {
        assert!(error.contains(needle), "{needle:?} not in {error}");
    }
}

#[tokio::test]
async fn invoke_and_doctor_never_print_or_log_the_token() {
    let stack = stack(|i| i).await;
    stack.runbook("read.toml", READING_RUNBOOK);

    let invoke = stack
        .run(&[
            "--log-level",
            "trace",
            "invoke",
            "Get-Mailbox",
            "--param",
            "ResultSize=1",
        ])
        .await;
    let doctor = stack.run(&["--log-level", "trace", "doctor"]).await;

    assert!(invoke.status.success(), "{}", stderr(&invoke));
    assert!(doctor.status.success(), "{}", stdout(&doctor));
    let tokens = stack.issued_tokens();
    assert_eq!(tokens.len(), 2, "one token per process");
    for out in [&invoke, &doctor] {
        let (printed, logged) = (stdout(out), stderr(out));
        assert!(
            logged.contains("token fetched"),
            "trace logging is on: {logged}"
        );
        for part in tokens.iter().flat_map(|t| secret_parts(t)) {
            assert!(!printed.contains(&part), "a token is on stdout");
            assert!(!logged.contains(&part), "a token is in the log");
        }
    }
}

// ---- doctor ----------------------------------------------------------------------------

#[tokio::test]
async fn doctor_passes_when_everything_is_in_place() {
    let stack = stack(|i| i).await;
    set_mode(&stack.runbooks_dir(), 0o755);
    set_mode(&stack.runbook("read.toml", READING_RUNBOOK), 0o644);
    set_mode(&stack.runbook("write.toml", WRITING_RUNBOOK), 0o644);

    let (out, report) = stack.doctor().await;

    assert!(out.status.success(), "{report:#?}");
    let checks: Vec<&str> = report.iter().filter_map(|f| f["check"].as_str()).collect();
    assert_eq!(
        checks,
        [
            "identity-source",
            "exchange-token",
            "exchange-app-role",
            "directory-role",
            "exchange-call",
            "runbooks-folder",
            "runbook-files",
            "runbook-permissions",
            "runbook-policy",
            "graph-roles",
            "state-folder",
            "clock",
            "coordination",
        ]
    );
    for f in &report {
        assert_eq!(f["status"], "ok", "{f:#}");
        assert_eq!(f["fix"], Value::Null, "{f:#}");
    }
    assert!(
        text_of(&report, "exchange-token")
            .contains(runbook_worker::simulator::exchange::DEFAULT_TENANT_ID)
    );
    assert!(text_of(&report, "exchange-call").contains("Get-OrganizationConfig succeeded"));
    assert!(text_of(&report, "runbook-files").contains("2 runbooks valid"));

    let text = stack.run(&["doctor"]).await;
    assert!(text.status.success());
    let printed = stdout(&text);
    assert!(printed.contains("OK    identity-source"), "{printed}");
    assert!(
        printed.contains("13 ok, 0 warnings, 0 failed, 0 skipped"),
        "{printed}"
    );
}

#[tokio::test]
async fn doctor_fails_without_the_app_role_and_prints_the_grant_command_with_the_principal_id() {
    let stack = stack(|i| i.with_roles(&[])).await;
    stack.runbook("write.toml", WRITING_RUNBOOK);

    let (out, report) = stack.doctor().await;

    assert_eq!(out.status.code(), Some(1));
    assert_eq!(status_of(&report, "exchange-app-role"), "fail");
    let fix = finding(&report, "exchange-app-role")["fix"]
        .as_str()
        .unwrap()
        .to_string();
    let command = format!(
        "deploy/permissions/grant-exchange-permissions.sh --principal-id {} --role \"Exchange Administrator\"",
        stack.identity.object_id
    );
    assert!(fix.contains(&command), "{fix}");
    // The harmless call shows what Exchange said, x-ms-diagnostics included.
    assert_eq!(status_of(&report, "exchange-call"), "fail");
    let call = text_of(&report, "exchange-call");
    for needle in ["forbidden (403", "x-ms-diagnostics 2000008", &command] {
        assert!(call.contains(needle), "{needle:?} not in {call}");
    }
    // What does not depend on the role still passes.
    assert_eq!(status_of(&report, "directory-role"), "ok");
    assert_eq!(status_of(&report, "runbook-files"), "ok");
}

#[tokio::test]
async fn doctor_fails_without_a_directory_role() {
    let stack = stack(|i| i.with_wids(&[APP_ONLY_MARKER_WID])).await;

    let (out, report) = stack.doctor().await;

    assert_eq!(out.status.code(), Some(1));
    assert_eq!(status_of(&report, "directory-role"), "fail");
    let text = text_of(&report, "directory-role");
    assert!(text.contains("no Entra role"), "{text}");
    assert!(text.contains(&stack.identity.object_id), "{text}");
    assert_eq!(status_of(&report, "exchange-app-role"), "ok");
    assert_eq!(status_of(&report, "exchange-call"), "fail");
    assert!(
        text_of(&report, "exchange-call").contains("isn't supported"),
        "{}",
        text_of(&report, "exchange-call")
    );
}

#[tokio::test]
async fn doctor_warns_when_only_read_roles_meet_a_runbook_that_writes() {
    let stack = stack(|i| i.with_wids(&[APP_ONLY_MARKER_WID, GLOBAL_READER])).await;
    set_mode(&stack.runbooks_dir(), 0o755);
    set_mode(&stack.runbook("hide-shared.toml", WRITING_RUNBOOK), 0o644);

    let (out, report) = stack.doctor().await;

    assert_eq!(status_of(&report, "directory-role"), "warn", "{report:#?}");
    let text = text_of(&report, "directory-role");
    for needle in [
        "Global Reader",
        "hide-shared (Set-Mailbox)",
        "Exchange Administrator",
    ] {
        assert!(text.contains(needle), "{needle:?} not in {text}");
    }
    // A read role may run the harmless call; warnings alone pass.
    assert_eq!(status_of(&report, "exchange-call"), "ok");
    assert!(out.status.success(), "{report:#?}");
}

#[tokio::test]
async fn doctor_fails_when_nothing_answers_at_the_identity_endpoint() {
    let port = closed_port();
    let stack = stack(|i| i).await.with_env(
        "RUNBOOK_WORKER__IDENTITY__IMDS_ENDPOINT",
        &format!("http://127.0.0.1:{port}"),
    );

    let (out, report) = stack.doctor().await;

    assert_eq!(out.status.code(), Some(1));
    assert_eq!(status_of(&report, "identity-source"), "fail");
    assert!(
        text_of(&report, "identity-source").contains("not on Azure?"),
        "{}",
        text_of(&report, "identity-source")
    );
    for check in [
        "exchange-token",
        "exchange-app-role",
        "directory-role",
        "exchange-call",
        "clock",
    ] {
        assert_eq!(status_of(&report, check), "skipped", "{check}");
    }
    assert_eq!(
        report.iter().filter(|f| f["status"] == "fail").count(),
        1,
        "one cause, one failure: {report:#?}"
    );
    assert_eq!(stack.exchange.requests().len(), 0);
}

#[tokio::test]
async fn doctor_warns_about_a_world_writable_runbook_file() {
    let stack = stack(|i| i).await;
    set_mode(&stack.runbooks_dir(), 0o755);
    let file = stack.runbook("read.toml", READING_RUNBOOK);
    set_mode(&file, 0o666);

    let (out, report) = stack.doctor().await;

    assert_eq!(status_of(&report, "runbook-permissions"), "warn");
    let text = text_of(&report, "runbook-permissions");
    for needle in [
        format!("{} (mode 0666)", file.display()),
        "can run Exchange admin cmdlets".to_string(),
        format!("chmod go-w {}", file.display()),
    ] {
        assert!(text.contains(&needle), "{needle:?} not in {text}");
    }
    assert!(out.status.success(), "a warning alone passes: {report:#?}");
}

#[tokio::test]
async fn doctor_accepts_a_folder_writable_by_the_authors_group_and_names_the_setting_otherwise() {
    use std::os::unix::fs::MetadataExt as _;
    let stack = stack(|i| i).await;
    stack.runbook("read.toml", READING_RUNBOOK);
    // The folder as cloud-init makes it (2775), owned by a group this machine has: the
    // test process's own.
    set_mode(&stack.runbooks_dir(), 0o2775);
    let gid = std::fs::metadata(stack.runbooks_dir()).unwrap().gid();
    let group = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
        .unwrap()
        .expect("the folder's group has a name")
        .name;

    let (_, report) = stack.doctor().await;
    assert_eq!(status_of(&report, "runbook-permissions"), "warn");
    let text = text_of(&report, "runbook-permissions");
    assert!(
        text.contains(&format!("runbooks.authors_group = \"{group}\"")),
        "{text}"
    );

    let stack = stack.with_env("RUNBOOK_WORKER__RUNBOOKS__AUTHORS_GROUP", &group);
    let (_, report) = stack.doctor().await;
    assert_eq!(
        status_of(&report, "runbook-permissions"),
        "ok",
        "{}",
        text_of(&report, "runbook-permissions")
    );

    // Others may still not write, whatever the group.
    set_mode(&stack.runbooks_dir(), 0o2777);
    let (_, report) = stack.doctor().await;
    assert_eq!(status_of(&report, "runbook-permissions"), "warn");
}

#[tokio::test]
async fn doctor_fails_on_an_invalid_runbook_file_and_on_a_cmdlet_the_policy_refuses() {
    let stack = stack(|i| i).await;
    stack.runbook("good.toml", READING_RUNBOOK);
    let bad = stack.runbook("bad.toml", "description = \"x\"\nschedule = \n");
    let removing = stack.runbook(
        "remove.toml",
        &READING_RUNBOOK.replace("Get-Mailbox", "Remove-MailboxPermission"),
    );

    let (out, report) = stack.doctor().await;

    assert_eq!(out.status.code(), Some(1));
    assert_eq!(status_of(&report, "runbook-files"), "fail");
    let files = text_of(&report, "runbook-files");
    assert!(
        files.contains("1 of 3 runbook files are invalid"),
        "{files}"
    );
    assert!(files.contains(&format!("{}:2:", bad.display())), "{files}");
    assert!(!files.contains("remove.toml"), "{files}");
    assert_eq!(status_of(&report, "runbook-policy"), "fail");
    let policy = text_of(&report, "runbook-policy");
    assert!(policy.contains(&removing.display().to_string()), "{policy}");
    assert!(policy.contains("Remove-"), "{policy}");
}

#[tokio::test]
async fn doctor_fails_on_an_unwritable_state_folder_and_unreachable_coordination_storage() {
    let port = closed_port();
    let stack = stack(|i| i).await;
    let not_a_folder = stack.dir.path().join("state-file");
    std::fs::write(&not_a_folder, "x").unwrap();
    let stack = stack
        .with_env(
            "RUNBOOK_WORKER__STATE__DIR",
            not_a_folder.to_str().unwrap(),
        )
        .with_env("RUNBOOK_WORKER__COORDINATION__KIND", "azure-blob")
        .with_env(
            "RUNBOOK_WORKER__COORDINATION__SAS_URL",
            &format!(
                "http://127.0.0.1:{port}/devstoreaccount1/runbooks?sv=2021-08-06&sig=do-not-print-me"
            ),
        )
        .with_env("RUNBOOK_WORKER__COORDINATION__MAX_RETRIES", "0");

    let (out, report) = stack.doctor().await;

    assert_eq!(out.status.code(), Some(1));
    assert_eq!(status_of(&report, "state-folder"), "fail");
    assert!(
        text_of(&report, "state-folder").contains("not a folder"),
        "{}",
        text_of(&report, "state-folder")
    );
    assert_eq!(status_of(&report, "coordination"), "fail");
    let coordination = text_of(&report, "coordination");
    assert!(
        coordination.contains(&format!("127.0.0.1:{port}")),
        "{coordination}"
    );
    assert!(!stdout(&out).contains("do-not-print-me"));
    assert!(!stderr(&out).contains("do-not-print-me"));
}

// ---- probe -----------------------------------------------------------------------------

/// A stand-in for the worker's HTTP server: /healthz 200, /readyz 503, and the paths
/// it was asked for.
async fn health_server() -> (u16, Arc<Mutex<Vec<String>>>, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let app = Router::new()
        .fallback(
            |State(seen): State<Arc<Mutex<Vec<String>>>>, request: Request| async move {
                let path = request.uri().path().to_string();
                seen.lock().unwrap().push(path.clone());
                match path.as_str() {
                    "/healthz" => (StatusCode::OK, "{\"status\":\"alive\"}"),
                    _ => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "{\"ready\":false,\"problems\":[\"shutting down\"]}",
                    ),
                }
            },
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (port, seen, server)
}

#[tokio::test]
async fn probe_exits_0_when_healthy_and_1_when_not_ready() {
    let (port, seen, server) = health_server().await;
    // The image listens on 0.0.0.0; the probe turns that into loopback.
    let stack = stack(|i| i)
        .await
        .with_env("RUNBOOK_WORKER__HTTP__LISTEN", &format!("0.0.0.0:{port}"));

    let healthy = stack.run(&["probe"]).await;
    let ready = stack.run(&["probe", "--ready"]).await;
    let explicit = stack
        .run(&[
            "probe",
            "--url",
            &format!("http://localhost:{port}/healthz"),
        ])
        .await;

    assert!(healthy.status.success(), "{}", stderr(&healthy));
    assert!(stdout(&healthy).contains("200"), "{}", stdout(&healthy));
    assert_eq!(ready.status.code(), Some(1));
    assert!(stderr(&ready).contains("503"), "{}", stderr(&ready));
    assert!(
        stderr(&ready).contains("shutting down"),
        "{}",
        stderr(&ready)
    );
    assert!(explicit.status.success(), "{}", stderr(&explicit));
    assert_eq!(*seen.lock().unwrap(), ["/healthz", "/readyz", "/healthz"]);
    server.abort();
}

#[tokio::test]
async fn probe_fails_when_nothing_listens_and_refuses_other_hosts() {
    let port = closed_port();
    let stack = stack(|i| i)
        .await
        .with_env("RUNBOOK_WORKER__HTTP__LISTEN", &format!("127.0.0.1:{port}"));

    let closed = stack.run(&["probe"]).await;
    let elsewhere = stack
        .run(&[
            "probe",
            "--url",
            "http://worker.example.invalid:8080/healthz",
        ])
        .await;

    assert_eq!(closed.status.code(), Some(1));
    assert!(
        stderr(&closed).contains("nothing accepts connections"),
        "{}",
        stderr(&closed)
    );
    assert_eq!(elsewhere.status.code(), Some(1));
    assert!(
        stderr(&elsewhere).contains("loopback"),
        "{}",
        stderr(&elsewhere)
    );
}

#[test]
fn the_image_healthcheck_runs_probe_in_exec_form() {
    let dockerfile = parse_dockerfile(&read_repo_file("Dockerfile"));
    let runtime = stages(&dockerfile).pop().expect("a runtime stage");
    let healthcheck = runtime
        .iter()
        .find(|i| i.keyword == "HEALTHCHECK")
        .expect("the runtime stage has a HEALTHCHECK");
    let (options, command) = healthcheck
        .args
        .split_once("CMD ")
        .expect("HEALTHCHECK [OPTIONS] CMD …");
    let argv: Vec<String> = serde_json::from_str(command.trim())
        .unwrap_or_else(|e| panic!("CMD {command} is not exec form (a JSON array): {e}"));
    assert_eq!(argv, ["/usr/local/bin/runbook-worker", "probe"]);
    assert!(options.contains("--timeout="), "{options}");
    // The binary it runs is the one the entrypoint runs.
    let entrypoint = runtime
        .iter()
        .find(|i| i.keyword == "ENTRYPOINT")
        .expect("an entrypoint");
    assert!(entrypoint.args.contains(&argv[0]), "{}", entrypoint.args);
}
