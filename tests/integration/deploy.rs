//! The deployment files: the Dockerfile, the Container Apps Bicep, the VM's systemd unit and
//! cloud-init, and the scripts (build-image, grant-exchange-permissions) run for real against
//! fake `az` and `docker` commands. No container engine, Azure or network is involved.

use std::collections::HashMap;
use std::path::Path;

use runbook_worker::identity::claims::{
    DIRECTORY_ROLES, EXCHANGE_MANAGE_AS_APP_ID, EXCHANGE_ONLINE_APP_ID,
};
use runbook_worker::settings::{self, Settings, WorkerSettings};

use crate::support::deploy::{
    FakeTool, Instruction, env_map, key_values, parse_dockerfile, parse_unit, read_repo_file,
    repo_root, run_bash, stages, which,
};
use crate::support::{stderr, stdout};

// ---- shared ------------------------------------------------------------------------------

fn load_settings(file: Option<&Path>, env: &HashMap<String, String>) -> Settings {
    let cwd = tempfile::tempdir().unwrap();
    settings::load(file, cwd.path(), env).unwrap_or_else(|e| panic!("settings rejected: {e}"))
}

/// `bash -n` always; shellcheck too when it is installed (CI installs it).
fn assert_shell_is_clean(script: &Path) {
    let out = std::process::Command::new(crate::support::deploy::bash())
        .arg("-n")
        .arg(script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bash -n {}: {}",
        script.display(),
        stderr(&out)
    );
    if let Some(shellcheck) = which("shellcheck") {
        let out = std::process::Command::new(shellcheck)
            .args(["--shell=bash", "--severity=style"])
            .arg(script)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "shellcheck {}:\n{}",
            script.display(),
            stdout(&out)
        );
    } else {
        eprintln!(
            "shellcheck not installed: only bash -n checked {}",
            script.display()
        );
    }
}

// ---- Dockerfile --------------------------------------------------------------------------

fn dockerfile_stages() -> Vec<Vec<Instruction>> {
    stages(&parse_dockerfile(&read_repo_file("Dockerfile")))
}

fn last<'a>(stage: &'a [Instruction], keyword: &str) -> &'a Instruction {
    stage
        .iter()
        .rev()
        .find(|i| i.keyword == keyword)
        .unwrap_or_else(|| panic!("no {keyword} in the final stage"))
}

fn image_of(from: &Instruction) -> String {
    from.args
        .split_whitespace()
        .find(|word| !word.starts_with("--"))
        .unwrap()
        .to_string()
}

#[test]
fn the_dockerfile_parser_joins_continuations_and_skips_comments() {
    let text = "# syntax=docker/dockerfile:1\nFROM a:1 AS b\n\nRUN one \\\n    # inside\n    two \\\n three\nENV A=1 \\\n    B=\"x y\"\nfrom c:2\n";
    let parsed = parse_dockerfile(text);
    let summary: Vec<(&str, &str, usize)> = parsed
        .iter()
        .map(|i| (i.keyword.as_str(), i.args.as_str(), i.line))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("FROM", "a:1 AS b", 2),
            ("RUN", "one two three", 4),
            ("ENV", "A=1 B=\"x y\"", 8),
            ("FROM", "c:2", 10),
        ]
    );
    assert_eq!(
        key_values("A=1 B=\"x y\""),
        vec![
            ("A".to_string(), "1".to_string()),
            ("B".to_string(), "x y".to_string())
        ]
    );
    assert_eq!(
        key_values("LEGACY some value"),
        vec![("LEGACY".to_string(), "some value".to_string())]
    );
    assert_eq!(stages(&parsed).len(), 2);
}

#[test]
fn the_image_is_built_in_stages_on_bases_pinned_by_tag() {
    let stages = dockerfile_stages();
    assert!(stages.len() >= 2, "expected a multi-stage build");
    for stage in &stages {
        let image = image_of(&stage[0]);
        let (name, tag) = image
            .rsplit_once(':')
            .unwrap_or_else(|| panic!("FROM {image} has no tag"));
        assert!(!name.is_empty() && !tag.is_empty(), "FROM {image}");
        assert_ne!(tag, "latest", "FROM {image} floats with :latest");
    }
    let runtime = image_of(&stages.last().unwrap()[0]);
    assert!(
        runtime.starts_with("gcr.io/distroless/static") || runtime == "scratch",
        "the runtime stage should be distroless/static or scratch, got {runtime}"
    );
    let builder = stages[0]
        .iter()
        .map(|i| i.args.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        builder.contains("x86_64-unknown-linux-musl") && builder.contains("musl-tools"),
        "the builder should produce a static musl binary"
    );
    assert!(builder.contains("--locked"), "builds should use Cargo.lock");
}

#[test]
fn the_image_runs_as_a_numeric_non_root_user() {
    let stages = dockerfile_stages();
    let user = &last(stages.last().unwrap(), "USER").args;
    let uid = user.split(':').next().unwrap();
    let uid: u32 = uid.parse().unwrap_or_else(|_| {
        panic!("USER {user} should be numeric (Kubernetes' runAsNonRoot needs it)")
    });
    assert_ne!(uid, 0, "USER {user} is root");
    if let Some(gid) = user.split(':').nth(1) {
        assert!(
            gid.parse::<u32>().is_ok(),
            "group of USER {user} should be numeric"
        );
    }
}

#[test]
fn the_entrypoint_is_exec_form_and_starts_serve() {
    let stages = dockerfile_stages();
    let entrypoint = &last(stages.last().unwrap(), "ENTRYPOINT").args;
    let argv: Vec<String> = serde_json::from_str(entrypoint)
        .unwrap_or_else(|e| panic!("ENTRYPOINT {entrypoint} is not exec form (a JSON array): {e}"));
    assert!(argv[0].ends_with("runbook-worker"), "{argv:?}");
    assert_eq!(argv.get(1).map(String::as_str), Some("serve"), "{argv:?}");
    // The binary the entrypoint names is the one copied into the runtime stage.
    let copies = stages
        .last()
        .unwrap()
        .iter()
        .filter(|i| i.keyword == "COPY")
        .any(|i| i.args.ends_with(&argv[0]));
    assert!(copies, "no COPY puts the binary at {}", argv[0]);
}

#[test]
fn the_image_exposes_the_http_port_and_declares_the_volumes() {
    let stages = dockerfile_stages();
    let runtime = stages.last().unwrap();
    let expose = &last(runtime, "EXPOSE").args;
    let volumes: Vec<String> = serde_json::from_str(&last(runtime, "VOLUME").args).unwrap();
    let env: HashMap<String, String> = runtime
        .iter()
        .filter(|i| i.keyword == "ENV")
        .flat_map(|i| key_values(&i.args))
        .collect();
    let listen = &env["RUNBOOK_WORKER__HTTP__LISTEN"];
    assert!(listen.starts_with("0.0.0.0:"), "{listen}");
    assert_eq!(listen.rsplit(':').next(), Some(expose.as_str()));
    assert!(
        volumes.contains(&env["RUNBOOK_WORKER__RUNBOOKS__DIR"]),
        "{volumes:?}"
    );
    assert!(
        volumes.contains(&env["RUNBOOK_WORKER__STATE__DIR"]),
        "{volumes:?}"
    );
    assert_eq!(env["RUNBOOK_WORKER__LOG__FORMAT"], "json");
}

/// The `RUNBOOK_WORKER__*` variables the final image sets.
fn image_settings() -> Vec<(String, String)> {
    dockerfile_stages()
        .last()
        .unwrap()
        .iter()
        .filter(|i| i.keyword == "ENV")
        .flat_map(|i| key_values(&i.args))
        .filter(|(k, _)| k.starts_with("RUNBOOK_WORKER__"))
        .collect()
}

#[test]
fn the_image_environment_is_valid_settings() {
    let pairs = image_settings();
    let env = env_map(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let s = load_settings(None, &env);
    assert_eq!(s.runbooks.dir, Path::new("/runbooks"));
    assert_eq!(s.state.dir, Path::new("/state"));
    assert_eq!(s.http.listen.to_string(), "0.0.0.0:8080");
}

#[test]
fn the_dockerfiles_own_example_gives_the_dashboard_a_token_it_can_be_opened_with() {
    // The example's `docker run` line, its `-e` settings on top of the image's ENV, through
    // the real loader: with no token every read off loopback would be refused (403).
    let dockerfile = read_repo_file("Dockerfile");
    let example = dockerfile
        .lines()
        .find(|l| l.contains("docker run") && l.contains("--simulate"))
        .expect("an example docker run line with --simulate");
    let token = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let mut pairs = image_settings();
    let words: Vec<&str> = example.split_whitespace().collect();
    for pair in words.windows(2).filter(|w| w[0] == "-e") {
        let (key, value) = pair[1].split_once('=').expect("-e NAME=VALUE");
        let value = value.trim_matches('"').replace("$token", token);
        pairs.push((key.to_string(), value));
    }
    assert!(
        pairs
            .iter()
            .any(|(k, _)| k == "RUNBOOK_WORKER__HTTP__API_TOKEN"),
        "the example passes a token: {example}"
    );
    let env = env_map(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let s = load_settings(None, &env);
    let listen: std::net::SocketAddr = s.http.listen;
    let auth = runbook_worker::http::ApiAuth::from_settings(&s.http, listen)
        .expect("the example's token is accepted");
    assert!(auth.has_token());
    assert!(!auth.reads_are_open(), "0.0.0.0: reads need the token");
    assert!(
        dockerfile.contains("the token as password"),
        "the example says how to sign in"
    );
}

#[test]
fn the_image_bakes_in_no_secrets() {
    let secret_words = [
        "TOKEN",
        "SECRET",
        "PASSWORD",
        "PASSWD",
        "SAS",
        "KEY",
        "CREDENTIAL",
    ];
    let secret_values = ["sig=", "AccountKey=", "SharedAccessSignature", "Bearer "];
    for stage in dockerfile_stages() {
        for instruction in stage
            .iter()
            .filter(|i| i.keyword == "ENV" || i.keyword == "ARG")
        {
            for (key, value) in key_values(&instruction.args) {
                let upper = key.to_ascii_uppercase();
                for word in secret_words {
                    assert!(
                        !upper
                            .split(['_', '-'])
                            .any(|part| part == word || part.ends_with(word)),
                        "line {}: {} {key} looks like a secret; pass secrets at run time",
                        instruction.line,
                        instruction.keyword
                    );
                }
                for marker in secret_values {
                    assert!(
                        !value.contains(marker),
                        "line {}: the value of {key} looks like a secret",
                        instruction.line
                    );
                }
            }
        }
    }
    let ignore = read_repo_file(".dockerignore");
    let patterns: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    for needed in [
        "target",
        "state",
        "**/node_modules",
        "runbook-worker.toml",
        "**/*.env",
    ] {
        assert!(patterns.contains(&needed), ".dockerignore lacks {needed}");
    }
}

// ---- build-image.sh ----------------------------------------------------------------------

fn build_image_script() -> std::path::PathBuf {
    repo_root().join("deploy/build-image.sh")
}

#[test]
fn build_image_fails_clearly_without_a_container_engine() {
    let empty = tempfile::tempdir().unwrap();
    let path = empty.path().display().to_string();
    let out = run_bash(&build_image_script(), &[], &[("PATH", &path)], &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no container engine found"),
        "{}",
        stderr(&out)
    );

    let out = run_bash(
        &build_image_script(),
        &["--engine", "podman"],
        &[("PATH", &path)],
        &[],
    );
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("'podman' not found"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn build_image_stops_before_building_when_the_daemon_is_down() {
    let mut docker = FakeTool::new("docker");
    docker.answer(
        "info",
        1,
        "Cannot connect to the Docker daemon at unix:///var/run/docker.sock.\n",
    );
    let out = docker.run(&build_image_script(), &[], &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("'docker info' failed"),
        "{}",
        stderr(&out)
    );
    let subcommands: Vec<String> = docker.calls().iter().map(|c| c[0].clone()).collect();
    assert_eq!(subcommands, vec!["info"]);
}

#[test]
fn build_image_tags_with_the_package_version_and_prints_the_size() {
    let mut docker = FakeTool::new("docker");
    docker
        .answer("info", 0, "ok\n")
        .answer("build", 0, "")
        .answer("image inspect", 0, "16043212\n");
    let out = docker.run(&build_image_script(), &[], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let version = env!("CARGO_PKG_VERSION");
    let root = repo_root().display().to_string();
    let calls = docker.calls();
    let build = calls
        .iter()
        .find(|c| c[0] == "build")
        .expect("a build call");
    let tag = format!("runbook-worker:{version}");
    let version_arg = format!("VERSION={version}");
    let dockerfile = format!("{root}/Dockerfile");
    // The commit the binary's --version names (the build context has no .git).
    let commit = std::process::Command::new("git")
        .args(["-C", root.as_str(), "rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".to_string());
    let commit_arg = format!("GIT_COMMIT={commit}");
    assert_eq!(
        build,
        &vec![
            "build",
            "--file",
            dockerfile.as_str(),
            "--build-arg",
            version_arg.as_str(),
            "--build-arg",
            commit_arg.as_str(),
            "--tag",
            tag.as_str(),
            root.as_str()
        ]
    );
    assert!(
        stdout(&out).contains(&format!("Image {tag}: 15.3 MiB")),
        "{}",
        stdout(&out)
    );
    assert!(
        !calls.iter().any(|c| c[0] == "push"),
        "pushed without --push"
    );
}

#[test]
fn build_image_exports_the_binary_and_pushes_when_asked() {
    let mut docker = FakeTool::new("docker");
    docker
        .answer("info", 0, "ok\n")
        .answer("build", 0, "")
        .answer("image inspect", 0, "40000000\n")
        .answer("create", 0, "c0ffee\n")
        .answer("cp", 0, "")
        .answer("rm", 0, "")
        .answer("push", 0, "");
    let out = docker.run(
        &build_image_script(),
        &[
            "--tag",
            "example.azurecr.io/rw:1.2.3",
            "--export-binary",
            "/tmp/rw",
            "--push",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("larger than the 30 MiB target"),
        "{}",
        stderr(&out)
    );
    let calls = docker.calls();
    let find = |name: &str| calls.iter().find(|c| c[0] == name).cloned().unwrap();
    assert_eq!(
        find("cp"),
        vec!["cp", "c0ffee:/usr/local/bin/runbook-worker", "/tmp/rw"]
    );
    assert_eq!(find("rm"), vec!["rm", "c0ffee"]);
    assert_eq!(find("push"), vec!["push", "example.azurecr.io/rw:1.2.3"]);
}

#[test]
fn build_image_help_and_bad_arguments() {
    let empty = tempfile::tempdir().unwrap();
    let path = empty.path().display().to_string();
    let out = run_bash(
        &build_image_script(),
        &["--help"],
        &[("PATH", "/usr/bin:/bin")],
        &[],
    );
    assert!(out.status.success());
    assert!(stdout(&out).contains("--export-binary"), "{}", stdout(&out));
    let out = run_bash(
        &build_image_script(),
        &["--colour"],
        &[("PATH", &path)],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unknown argument '--colour'"),
        "{}",
        stderr(&out)
    );
}

// ---- grant-exchange-permissions.sh ---------------------------------------------------------

const GRAPH: &str = "https://graph.microsoft.com/v1.0";
const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const PRINCIPAL: &str = "6c3f1e2a-8b4d-4a7e-9f10-2b3c4d5e6f70";
const CLIENT: &str = "0d9e8f7a-6b5c-4d3e-8f2a-1b0c9d8e7f6a";
const EXCHANGE_SP: &str = "e1d2c3b4-a5f6-4789-8abc-def012345678";

const EXCHANGE_ADMINISTRATOR: &str = "29232cdf-9323-42fd-ade2-1d097af3e4de";
const EXCHANGE_RECIPIENT_ADMINISTRATOR: &str = "31392ffb-586c-42d1-9346-e59415a2cc4e";
const GLOBAL_READER: &str = "f2ef992c-3afb-46b9-b7cf-a126ee74c451";

fn permissions_script() -> std::path::PathBuf {
    repo_root().join("deploy/permissions/grant-exchange-permissions.sh")
}

fn sp_by(field: &str, value: &str) -> String {
    format!(
        "{GRAPH}/servicePrincipals?$filter={field}%20eq%20'{value}'&$select=id,appId,displayName,servicePrincipalType"
    )
}

fn exchange_lookup() -> String {
    format!(
        "{GRAPH}/servicePrincipals?$filter=appId%20eq%20'00000002-0000-0ff1-ce00-000000000000'&$select=id,displayName"
    )
}

fn app_role_assignments(principal: &str) -> String {
    format!("{GRAPH}/servicePrincipals/{principal}/appRoleAssignments")
}

fn role_assignments_of(principal: &str) -> String {
    format!(
        "{GRAPH}/roleManagement/directory/roleAssignments?$filter=principalId%20eq%20'{principal}'"
    )
}

fn role_assignments() -> String {
    format!("{GRAPH}/roleManagement/directory/roleAssignments")
}

/// What the tenant looks like to the fake `az`.
struct Tenant {
    exchange_present: bool,
    app_role_granted: bool,
    directory_role_granted: bool,
}

impl Tenant {
    const FRESH: Tenant = Tenant {
        exchange_present: true,
        app_role_granted: false,
        directory_role_granted: false,
    };
    const GRANTED: Tenant = Tenant {
        exchange_present: true,
        app_role_granted: true,
        directory_role_granted: true,
    };

    fn az(&self) -> FakeTool {
        let mut az = FakeTool::new("az");
        let identity_row =
            format!("{PRINCIPAL}\t{CLIENT}\tManagedIdentity\trunbook-worker-identity\n");
        let count = |granted: bool| if granted { "1\n" } else { "0\n" };
        az.answer("account show", 0, &format!("{TENANT}\n"))
            .answer(
                &format!("rest get {}", sp_by("id", PRINCIPAL)),
                0,
                &identity_row,
            )
            .answer(
                &format!("rest get {}", sp_by("appId", CLIENT)),
                0,
                &identity_row,
            )
            .answer(&format!("rest get {}", sp_by("id", CLIENT)), 0, "\n")
            .answer(&format!("rest get {}", sp_by("appId", PRINCIPAL)), 0, "\n")
            .answer(
                &format!("rest get {}", exchange_lookup()),
                0,
                if self.exchange_present {
                    "e1d2c3b4-a5f6-4789-8abc-def012345678\n"
                } else {
                    "\n"
                },
            )
            .answer(
                &format!("rest get {}", app_role_assignments(PRINCIPAL)),
                0,
                count(self.app_role_granted),
            )
            .answer(
                &format!("rest get {}", role_assignments_of(PRINCIPAL)),
                0,
                count(self.directory_role_granted),
            )
            .answer("rest post ", 0, "");
        az
    }
}

/// Each Graph request as "METHOD URL", in order.
fn requests(az: &FakeTool) -> Vec<String> {
    az.calls()
        .iter()
        .filter(|c| c[0] == "rest")
        .map(|c| {
            let value = |flag: &str| {
                let at = c.iter().position(|a| a == flag).unwrap();
                c[at + 1].clone()
            };
            format!("{} {}", value("--method").to_uppercase(), value("--url"))
        })
        .collect()
}

/// The JSON bodies of the POSTs, in order.
fn post_bodies(az: &FakeTool) -> Vec<serde_json::Value> {
    az.calls()
        .iter()
        .filter(|c| c[0] == "rest" && c.contains(&"post".to_string()))
        .map(|c| {
            let at = c.iter().position(|a| a == "--body").unwrap();
            serde_json::from_str(&c[at + 1]).unwrap()
        })
        .collect()
}

fn app_role_body(principal: &str) -> serde_json::Value {
    serde_json::json!({
        "principalId": principal,
        "resourceId": EXCHANGE_SP,
        "appRoleId": "dc50a0fb-09a3-484d-be87-e023b12c6440",
    })
}

fn role_body(principal: &str, role: &str) -> serde_json::Value {
    serde_json::json!({
        "principalId": principal,
        "roleDefinitionId": role,
        "directoryScopeId": "/",
    })
}

#[test]
fn a_first_run_grants_the_app_role_and_exchange_administrator() {
    let az = Tenant::FRESH.az();
    let out = az.run(&permissions_script(), &["--principal-id", PRINCIPAL], &[]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(
        requests(&az),
        vec![
            format!("GET {}", sp_by("id", PRINCIPAL)),
            format!("GET {}", exchange_lookup()),
            format!("GET {}", app_role_assignments(PRINCIPAL)),
            format!("POST {}", app_role_assignments(PRINCIPAL)),
            format!("GET {}", role_assignments_of(PRINCIPAL)),
            format!("POST {}", role_assignments()),
        ]
    );
    assert_eq!(
        post_bodies(&az),
        vec![
            app_role_body(PRINCIPAL),
            role_body(PRINCIPAL, EXCHANGE_ADMINISTRATOR)
        ]
    );
    // The reads select with JMESPath in az itself: no jq needed.
    let calls = az.calls();
    assert_eq!(
        calls[0],
        vec!["account", "show", "--query", "tenantId", "--output", "tsv"]
    );
    let app_role_check = calls
        .iter()
        .find(|c| c.contains(&app_role_assignments(PRINCIPAL)) && c.contains(&"get".to_string()))
        .unwrap();
    assert!(
        app_role_check.contains(
            &"length(value[?appRoleId=='dc50a0fb-09a3-484d-be87-e023b12c6440' && resourceId=='e1d2c3b4-a5f6-4789-8abc-def012345678'])"
                .to_string()
        ),
        "{app_role_check:?}"
    );
    let text = stdout(&out);
    assert!(text.contains(TENANT), "{text}");
    assert!(
        text.contains(&format!("RUNBOOK_WORKER__IDENTITY__CLIENT_ID={CLIENT}")),
        "{text}"
    );
    assert!(text.contains("24 hours"), "{text}");
}

#[test]
fn a_second_run_after_granting_sends_no_post() {
    let az = Tenant::GRANTED.az();
    let out = az.run(&permissions_script(), &["--principal-id", PRINCIPAL], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let sent = requests(&az);
    assert!(!sent.iter().any(|r| r.starts_with("POST")), "{sent:?}");
    assert_eq!(sent.len(), 4, "{sent:?}");
    assert!(stdout(&out).contains("Exchange.ManageAsApp: already granted"));
    assert!(stdout(&out).contains("Exchange Administrator: already assigned"));
}

#[test]
fn a_dry_run_reads_but_only_prints_the_changes() {
    let az = Tenant::FRESH.az();
    let out = az.run(
        &permissions_script(),
        &["--principal-id", PRINCIPAL, "--dry-run"],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let sent = requests(&az);
    assert!(sent.iter().all(|r| r.starts_with("GET ")), "{sent:?}");
    assert_eq!(sent.len(), 4, "{sent:?}");
    let text = stdout(&out);
    assert!(
        text.contains(&format!("POST {}", app_role_assignments(PRINCIPAL))),
        "{text}"
    );
    assert!(
        text.contains(&format!("POST {}", role_assignments())),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{{\"principalId\":\"{PRINCIPAL}\",\"roleDefinitionId\":\"{EXCHANGE_ADMINISTRATOR}\",\"directoryScopeId\":\"/\"}}"
        )),
        "{text}"
    );
}

#[test]
fn a_missing_exchange_service_principal_stops_with_what_to_do() {
    let az = Tenant {
        exchange_present: false,
        ..Tenant::FRESH
    }
    .az();
    let out = az.run(&permissions_script(), &["--principal-id", PRINCIPAL], &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("az ad sp create --id 00000002-0000-0ff1-ce00-000000000000"),
        "{err}"
    );
    assert!(err.contains("APIs my organization uses"), "{err}");
    assert!(!requests(&az).iter().any(|r| r.starts_with("POST")));
}

#[test]
fn each_role_name_assigns_its_template_id() {
    let cases = [
        ("Exchange Administrator", EXCHANGE_ADMINISTRATOR),
        ("exchange-administrator", EXCHANGE_ADMINISTRATOR),
        (
            "Exchange Recipient Administrator",
            EXCHANGE_RECIPIENT_ADMINISTRATOR,
        ),
        (
            "exchange recipient administrator",
            EXCHANGE_RECIPIENT_ADMINISTRATOR,
        ),
        ("Global Reader", GLOBAL_READER),
        ("global-reader", GLOBAL_READER),
    ];
    for (name, id) in cases {
        let az = Tenant::FRESH.az();
        let out = az.run(
            &permissions_script(),
            &["--principal-id", PRINCIPAL, "--role", name],
            &[],
        );
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        assert_eq!(post_bodies(&az)[1], role_body(PRINCIPAL, id), "{name}");
    }
}

#[test]
fn role_none_grants_only_the_app_role() {
    let az = Tenant::FRESH.az();
    let out = az.run(
        &permissions_script(),
        &["--principal-id", PRINCIPAL, "--role", "none"],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(post_bodies(&az), vec![app_role_body(PRINCIPAL)]);
    assert!(!requests(&az).iter().any(|r| r.contains("roleManagement")));
}

#[test]
fn bad_arguments_are_rejected_before_anything_is_sent() {
    let cases: [(&[&str], &str); 6] = [
        (
            &[
                "--principal-id",
                PRINCIPAL,
                "--role",
                "Global Administrator",
            ],
            "unknown role 'Global Administrator'",
        ),
        (
            &["--principal-id", "x' or 1 eq 1 or id eq '"],
            "is not a GUID",
        ),
        (
            &["--principal-id", PRINCIPAL, "--client-id", CLIENT],
            "not both",
        ),
        (&[], "--principal-id ID or --client-id ID"),
        (&["--principal-id"], "needs a value"),
        (&["--tenant", TENANT], "unknown argument '--tenant'"),
    ];
    for (args, message) in cases {
        let az = Tenant::FRESH.az();
        let out = az.run(&permissions_script(), args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(message), "{args:?}: {}", stderr(&out));
        assert!(az.calls().is_empty(), "{args:?} called az");
    }
}

#[test]
fn a_client_id_is_resolved_to_its_service_principal() {
    let az = Tenant::FRESH.az();
    let out = az.run(&permissions_script(), &["--client-id", CLIENT], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let sent = requests(&az);
    assert_eq!(sent[0], format!("GET {}", sp_by("appId", CLIENT)));
    // Everything afterwards uses the principal (object) id.
    assert_eq!(
        post_bodies(&az),
        vec![
            app_role_body(PRINCIPAL),
            role_body(PRINCIPAL, EXCHANGE_ADMINISTRATOR)
        ]
    );
}

#[test]
fn a_client_id_given_as_principal_id_is_detected_and_corrected() {
    // The principal-id lookup finds nothing under the client id; the appId lookup does.
    let az = Tenant::FRESH.az();
    let out = az.run(&permissions_script(), &["--principal-id", CLIENT], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("is a client (application) id, not a principal id"),
        "{err}"
    );
    assert!(err.contains(PRINCIPAL), "{err}");
    assert_eq!(post_bodies(&az)[0], app_role_body(PRINCIPAL));
}

#[test]
fn an_unknown_identity_exits_with_status_4() {
    let mut az = FakeTool::new("az");
    az.answer("account show", 0, &format!("{TENANT}\n"))
        .answer("rest get ", 0, "\n");
    let out = az.run(&permissions_script(), &["--principal-id", PRINCIPAL], &[]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no service principal"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("az vm identity assign"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn without_the_azure_cli_or_a_sign_in_the_script_says_what_to_do() {
    let empty = tempfile::tempdir().unwrap();
    let path = empty.path().display().to_string();
    let out = run_bash(
        &permissions_script(),
        &["--principal-id", PRINCIPAL],
        &[("PATH", &path)],
        &[],
    );
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is not installed"),
        "{}",
        stderr(&out)
    );

    let mut az = FakeTool::new("az");
    az.answer("account show", 1, "");
    let out = az.run(&permissions_script(), &["--principal-id", PRINCIPAL], &[]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("az login --tenant"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_failed_grant_names_the_request_and_exits_1() {
    let mut az = FakeTool::new("az");
    // Answers are matched in order: this refusal comes before the generic POST answer.
    az.answer(
        &format!("rest post {}", app_role_assignments(PRINCIPAL)),
        1,
        "",
    );
    for (key, status, output) in [
        ("account show".to_string(), 0, format!("{TENANT}\n")),
        (
            format!("rest get {}", sp_by("id", PRINCIPAL)),
            0,
            format!("{PRINCIPAL}\t{CLIENT}\tManagedIdentity\tmi\n"),
        ),
        (
            format!("rest get {}", exchange_lookup()),
            0,
            format!("{EXCHANGE_SP}\n"),
        ),
        (
            format!("rest get {}", app_role_assignments(PRINCIPAL)),
            0,
            "0\n".to_string(),
        ),
    ] {
        az.answer(&key, status, &output);
    }
    let out = az.run(&permissions_script(), &["--principal-id", PRINCIPAL], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("POST {} failed", app_role_assignments(PRINCIPAL))),
        "{}",
        stderr(&out)
    );
    assert!(!requests(&az).iter().any(|r| r.contains("roleManagement")));
}

#[test]
fn the_script_ids_match_the_documented_ones_and_the_library() {
    let script = read_repo_file("deploy/permissions/grant-exchange-permissions.sh");
    let constant = |name: &str| {
        let prefix = format!("readonly {name}=\"");
        let line = script
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no {name} in the script"));
        line[prefix.len()..line.len() - 1].to_string()
    };
    assert_eq!(
        constant("EXCHANGE_APP_ID"),
        "00000002-0000-0ff1-ce00-000000000000"
    );
    assert_eq!(constant("EXCHANGE_APP_ID"), EXCHANGE_ONLINE_APP_ID);
    assert_eq!(
        constant("MANAGE_AS_APP_ROLE_ID"),
        "dc50a0fb-09a3-484d-be87-e023b12c6440"
    );
    assert_eq!(constant("MANAGE_AS_APP_ROLE_ID"), EXCHANGE_MANAGE_AS_APP_ID);
    for (name, expected) in [
        ("EXCHANGE_ADMINISTRATOR", EXCHANGE_ADMINISTRATOR),
        (
            "EXCHANGE_RECIPIENT_ADMINISTRATOR",
            EXCHANGE_RECIPIENT_ADMINISTRATOR,
        ),
        ("GLOBAL_READER", GLOBAL_READER),
    ] {
        assert_eq!(constant(name), expected, "{name}");
        // The library's role table (which doctor reads `wids` with) agrees.
        let display = name
            .split('_')
            .map(|w| {
                let lower = w.to_ascii_lowercase();
                let mut chars = lower.chars();
                let first = chars.next().unwrap().to_ascii_uppercase();
                std::iter::once(first).chain(chars).collect::<String>()
            })
            .collect::<Vec<_>>()
            .join(" ");
        let role = DIRECTORY_ROLES
            .iter()
            .find(|r| r.name == display)
            .unwrap_or_else(|| panic!("{display} not in DIRECTORY_ROLES"));
        assert_eq!(role.id, expected, "{display}");
    }
    assert_shell_is_clean(&permissions_script());
    assert_shell_is_clean(&build_image_script());
}

// ---- Container Apps ----------------------------------------------------------------------

fn bicep() -> String {
    read_repo_file("deploy/container-apps/main.bicep")
}

/// The Bicep text without `//` comments (outside strings), so assertions see only code.
fn bicep_code() -> String {
    bicep()
        .lines()
        .map(|line| {
            let mut in_string = false;
            let mut previous = ' ';
            for (at, c) in line.char_indices() {
                if c == '\'' && previous != '\\' {
                    in_string = !in_string;
                }
                if c == '/' && previous == '/' && !in_string {
                    return &line[..at - 1];
                }
                previous = c;
            }
            line
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The value in `key: '…'` after the anchors, each found after the one before.
fn quoted_after(code: &str, anchors: &[&str], key: &str) -> String {
    let mut start = 0;
    for anchor in anchors {
        start += code[start..]
            .find(anchor)
            .unwrap_or_else(|| panic!("no {anchor} after {anchors:?}"));
    }
    let needle = format!("{key}: '");
    let at = start + code[start..].find(&needle).unwrap() + needle.len();
    code[at..at + code[at..].find('\'').unwrap()].to_string()
}

#[test]
fn the_container_app_probes_healthz_and_readyz() {
    let code = bicep_code();
    assert_eq!(
        quoted_after(&code, &["type: 'Liveness'"], "path"),
        "/healthz"
    );
    assert_eq!(
        quoted_after(&code, &["type: 'Readiness'"], "path"),
        "/readyz"
    );
    assert!(code.contains("port: httpPort") && code.contains("var httpPort = 8080"));
}

#[test]
fn the_container_app_grants_blob_access_for_coordination_only_with_replicas() {
    let code = bicep_code();
    assert!(
        code.contains(
            "var storageBlobDataContributorRoleId = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'"
        )
    );
    assert!(code.contains("var coordinated = replicas > 1"));
    assert!(code.contains(
        "resource coordinationRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (coordinated)"
    ));
    assert_eq!(
        quoted_after(&code, &["RUNBOOK_WORKER__COORDINATION__KIND"], "value"),
        "azure-blob"
    );
    assert!(code.contains("principalId: identity.properties.principalId"));
    assert!(code.contains("type: 'UserAssigned'"));
    assert!(code.contains("param replicas int = 1"));
}

#[test]
fn the_container_app_environment_is_valid_settings() {
    let code = bicep_code();
    let mut names = Vec::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("name: 'RUNBOOK_WORKER__") {
        let start = at + "name: '".len();
        let end = start + rest[start..].find('\'').unwrap();
        names.push(rest[start..end].to_string());
        rest = &rest[end..];
    }
    for needed in [
        "RUNBOOK_WORKER__IDENTITY__CLIENT_ID",
        "RUNBOOK_WORKER__HTTP__API_TOKEN",
        "RUNBOOK_WORKER__COORDINATION__KIND",
        "RUNBOOK_WORKER__COORDINATION__CONTAINER_URL",
        "RUNBOOK_WORKER__RUNBOOKS__DIR",
        "RUNBOOK_WORKER__STATE__DIR",
    ] {
        assert!(
            names.iter().any(|n| n == needed),
            "{needed} missing from {names:?}"
        );
    }
    // The user-assigned identity's client id, and the API token from a secret, not a literal.
    let after = |name: &str| {
        let at = code.find(&format!("name: '{name}'")).unwrap();
        code[at..].lines().nth(1).unwrap().trim().to_string()
    };
    assert_eq!(
        after("RUNBOOK_WORKER__IDENTITY__CLIENT_ID"),
        "value: identity.properties.clientId"
    );
    assert_eq!(
        after("RUNBOOK_WORKER__HTTP__API_TOKEN"),
        "secretRef: 'api-token'"
    );
    assert!(code.contains("@secure()\n@minLength(32)\nparam apiToken string"));

    // Every variable the template sets is a real setting (a typo fails deny_unknown_fields).
    let samples: HashMap<&str, &str> = [
        (
            "RUNBOOK_WORKER__IDENTITY__CLIENT_ID",
            "0d9e8f7a-6b5c-4d3e-8f2a-1b0c9d8e7f6a",
        ),
        ("RUNBOOK_WORKER__HTTP__LISTEN", "0.0.0.0:8080"),
        (
            "RUNBOOK_WORKER__HTTP__API_TOKEN",
            "0123456789abcdef0123456789abcdef",
        ),
        ("RUNBOOK_WORKER__LOG__FORMAT", "json"),
        ("RUNBOOK_WORKER__WORKER__SHUTDOWN_GRACE", "25s"),
        (
            "RUNBOOK_WORKER__EXCHANGE__ORGANIZATION",
            "contoso.onmicrosoft.com",
        ),
        ("RUNBOOK_WORKER__COORDINATION__KIND", "azure-blob"),
        // Only parsed by the settings loader; nothing connects to it.
        (
            "RUNBOOK_WORKER__COORDINATION__CONTAINER_URL",
            "https://rwstore.blob.core.windows.net/runbook-worker-coordination",
        ),
        ("RUNBOOK_WORKER__RUNBOOKS__DIR", "/runbooks"),
        ("RUNBOOK_WORKER__STATE__DIR", "/state"),
    ]
    .into_iter()
    .collect();
    let env = env_map(names.iter().map(|n| {
        let value = samples
            .get(n.as_str())
            .unwrap_or_else(|| panic!("add a sample value for {n}"));
        (n.as_str(), *value)
    }));
    let s = load_settings(None, &env);
    assert_eq!(
        s.identity.client_id.as_deref(),
        Some("0d9e8f7a-6b5c-4d3e-8f2a-1b0c9d8e7f6a")
    );
}

#[test]
fn the_runbooks_share_is_mounted_read_only_and_state_on_a_volume() {
    let code = bicep_code();
    assert!(code.contains("accessMode: 'ReadOnly'"));
    assert_eq!(
        quoted_after(&code, &["volumes: [", "name: 'runbooks'"], "storageType"),
        "AzureFile"
    );
    assert_eq!(
        quoted_after(&code, &["volumes: [", "name: 'state'"], "storageType"),
        "EmptyDir"
    );
    assert_eq!(
        quoted_after(&code, &["volumeName: 'runbooks'"], "mountPath"),
        "/runbooks"
    );
    assert_eq!(
        quoted_after(&code, &["volumeName: 'state'"], "mountPath"),
        "/state"
    );
    // No file of the share may look writable by others to the worker (doctor warns).
    let options = quoted_after(
        &code,
        &["storageName: runbooksStorage.name"],
        "mountOptions",
    );
    assert!(
        options.contains("file_mode=0444") && options.contains("dir_mode=0555"),
        "{options}"
    );
    // The worker's grace stays inside the platform's termination grace.
    assert!(code.contains("param terminationGracePeriodSeconds int = 30"));
    assert!(code.contains("value: '${terminationGracePeriodSeconds - 5}s'"));
    assert!(code.contains("terminationGracePeriodSeconds: terminationGracePeriodSeconds"));
    assert!(code.contains("'Microsoft.OperationalInsights/workspaces@"));
}

#[test]
fn the_failed_job_alert_queries_what_the_worker_logs_and_exists_only_with_an_alert_email() {
    let code = bicep_code();
    assert!(code.contains("param alertEmail string = ''"));
    assert!(code.contains("var alerting = !empty(alertEmail)"));
    for resource in [
        "resource alertActionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = if (alerting)",
        "resource jobFailedAlert 'Microsoft.Insights/scheduledQueryRules@2023-03-15-preview' = if (alerting)",
    ] {
        assert!(code.contains(resource), "{resource} is not conditional");
    }
    assert!(code.contains("emailAddress: alertEmail"));
    assert!(code.contains("alertActionGroup.id"));
    assert!(code.contains("query: jobFailedQuery"));

    // The query reads the table Container Apps fills from the environment's log-analytics
    // destination, and names the event and the statuses exactly as the worker logs them.
    let start = code.find("var jobFailedQuery = '").unwrap() + "var jobFailedQuery = '".len();
    let query = &code[start..start + code[start..].find('\'').unwrap()];
    assert!(code.contains("destination: 'log-analytics'"));
    assert!(query.starts_with("ContainerAppConsoleLogs_CL "), "{query}");
    assert!(
        query.contains(&format!(
            "tostring(e.event) == \"{}\"",
            runbook_worker::scheduler::JOB_FINISHED
        )),
        "{query}"
    );
    let statuses = [
        runbook_worker::history::JobStatus::Failed,
        runbook_worker::history::JobStatus::TimedOut,
        runbook_worker::history::JobStatus::Interrupted,
    ]
    .map(|s| format!("\"{}\"", s.as_str()))
    .join(", ");
    assert!(
        query.contains(&format!("tostring(e.status) in ({statuses})")),
        "{query}"
    );
    // The rule splits by the runbook field the query projects.
    assert!(query.contains("runbook = tostring(e.runbook)"), "{query}");
    assert_eq!(quoted_after(&code, &["dimensions: ["], "name"), "runbook");
}

#[test]
fn the_bicep_brackets_balance() {
    let code = bicep_code();
    let mut stack = Vec::new();
    let mut in_string = false;
    let mut previous = ' ';
    for (line_no, line) in code.lines().enumerate() {
        for c in line.chars() {
            if c == '\'' && previous != '\\' {
                in_string = !in_string;
            } else if !in_string {
                match c {
                    '{' | '[' | '(' => stack.push((c, line_no + 1)),
                    '}' | ']' | ')' => {
                        let (open, at) = stack
                            .pop()
                            .unwrap_or_else(|| panic!("line {}: unmatched {c}", line_no + 1));
                        let expected = match open {
                            '{' => '}',
                            '[' => ']',
                            _ => ')',
                        };
                        assert_eq!(
                            c,
                            expected,
                            "line {}: {c} closes {open} from line {at}",
                            line_no + 1
                        );
                    }
                    _ => {}
                }
            }
            previous = c;
        }
        assert!(!in_string, "line {}: unterminated string", line_no + 1);
    }
    assert!(stack.is_empty(), "unclosed: {stack:?}");
}

#[test]
fn the_parameters_example_parses_and_names_only_declared_parameters() {
    let example: serde_json::Value = serde_json::from_str(&read_repo_file(
        "deploy/container-apps/main.parameters.example.json",
    ))
    .unwrap();
    assert!(
        example["$schema"]
            .as_str()
            .unwrap()
            .contains("deploymentParameters.json")
    );
    let given = example["parameters"].as_object().unwrap();
    let code = bicep_code();
    let declared: Vec<(String, bool)> = code
        .lines()
        .filter_map(|l| l.strip_prefix("param "))
        .map(|l| {
            let name = l.split_whitespace().next().unwrap().to_string();
            (name, l.contains('='))
        })
        .collect();
    for name in given.keys() {
        assert!(
            declared.iter().any(|(d, _)| d == name),
            "{name} is not a parameter of main.bicep"
        );
    }
    for (name, has_default) in &declared {
        if name == "apiToken" {
            assert!(
                !given.contains_key(name),
                "never commit the API token in a parameters file"
            );
        } else if !has_default {
            assert!(
                given.contains_key(name),
                "the example lacks the required parameter {name}"
            );
        }
    }
    if let Some(bicep) = which("bicep") {
        let out = std::process::Command::new(bicep)
            .arg("build")
            .arg("--stdout")
            .arg(repo_root().join("deploy/container-apps/main.bicep"))
            .output()
            .unwrap();
        assert!(out.status.success(), "bicep build: {}", stderr(&out));
    }
}

// ---- VM ----------------------------------------------------------------------------------

fn unit() -> Vec<(String, String, String)> {
    parse_unit(&read_repo_file("deploy/vm/runbook-worker.service"))
}

fn values<'a>(unit: &'a [(String, String, String)], key: &str) -> Vec<&'a str> {
    unit.iter()
        .filter(|(section, k, _)| section == "Service" && k == key)
        .map(|(_, _, v)| v.as_str())
        .collect()
}

#[test]
fn the_systemd_unit_is_hardened() {
    let unit = unit();
    let one = |key: &str| {
        let found = values(&unit, key);
        assert_eq!(found.len(), 1, "{key}: {found:?}");
        found[0].to_string()
    };
    let user = values(&unit, "User");
    assert!(
        user == ["runbook-worker"] || values(&unit, "DynamicUser") == ["yes"],
        "runs as a dedicated or dynamic user"
    );
    for (key, expected) in [
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("Restart", "on-failure"),
        ("KillSignal", "SIGTERM"),
        ("StateDirectory", "runbook-worker"),
        ("ReadWritePaths", "/var/lib/runbook-worker"),
        ("EnvironmentFile", "-/etc/runbook-worker/env"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
    ] {
        assert_eq!(one(key), expected, "{key}");
    }
    assert!(values(&unit, "SystemCallFilter").contains(&"@system-service"));
    let exec = one("ExecStart");
    assert!(exec.starts_with("/usr/local/bin/runbook-worker "), "{exec}");
    assert!(exec.ends_with(" serve"), "{exec}");

    // systemd's SIGKILL must come after the worker's own grace period.
    let timeout: u64 = one("TimeoutStopSec").parse().unwrap();
    let grace = WorkerSettings::default().shutdown_grace.get().as_secs();
    assert!(
        timeout >= grace + 5,
        "TimeoutStopSec={timeout} vs shutdown_grace {grace}s"
    );

    // Enough open files for the default connection cap to stay whole: the worker lowers it to
    // half the limit so jobs keep the other half.
    let nofile: usize = one("LimitNOFILE").parse().unwrap();
    let cap = runbook_worker::http::HttpSettings::default().max_connections;
    assert!(
        nofile >= 4 * cap,
        "LimitNOFILE={nofile} vs http.max_connections {cap}"
    );

    // Its Environment= lines are real settings.
    let env: Vec<(String, String)> = values(&unit, "Environment")
        .iter()
        .map(|v| {
            let (k, v) = v.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect();
    let s = load_settings(
        None,
        &env_map(env.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
    );
    assert_eq!(s.state.dir, Path::new("/var/lib/runbook-worker"));

    // Where systemd-analyze is installed, its own exposure score must stay "OK" (<= 2.0).
    if let Some(analyze) = which("systemd-analyze") {
        let out = std::process::Command::new(analyze)
            .args(["security", "--offline=true", "--threshold=20", "--no-pager"])
            .arg(repo_root().join("deploy/vm/runbook-worker.service"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "systemd-analyze security:\n{}{}",
            stdout(&out),
            stderr(&out)
        );
    }
}

fn cloud_init() -> serde_norway::Value {
    let text = read_repo_file("deploy/vm/cloud-init.yaml");
    assert!(
        text.starts_with("#cloud-config\n"),
        "cloud-init needs the #cloud-config header"
    );
    serde_norway::from_str(&text).unwrap()
}

fn written_file(doc: &serde_norway::Value, path: &str) -> String {
    doc["write_files"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|f| f["path"].as_str() == Some(path))
        .unwrap_or_else(|| panic!("cloud-init writes no {path}"))["content"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn cloud_init_installs_the_same_unit_and_valid_settings() {
    let doc = cloud_init();
    assert_eq!(
        written_file(&doc, "/etc/systemd/system/runbook-worker.service"),
        read_repo_file("deploy/vm/runbook-worker.service"),
        "cloud-init.yaml embeds a different unit than deploy/vm/runbook-worker.service"
    );
    let config_path = "/etc/runbook-worker/runbook-worker.toml";
    let exec = values(&unit(), "ExecStart")[0].to_string();
    assert!(exec.contains(&format!("--config {config_path}")), "{exec}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("runbook-worker.toml");
    std::fs::write(&file, written_file(&doc, config_path)).unwrap();
    let s = load_settings(Some(&file), &HashMap::new());
    assert_eq!(s.runbooks.dir, Path::new("/srv/runbooks"));
    assert_eq!(s.http.listen.to_string(), "127.0.0.1:8080");

    let runcmd = doc["runcmd"].as_sequence().unwrap();
    assert_eq!(runcmd.len(), 1);
    assert_eq!(
        runcmd[0][0].as_str(),
        Some("/usr/local/sbin/install-runbook-worker")
    );
}

#[test]
fn the_cloud_init_installer_refuses_to_run_with_placeholders() {
    let doc = cloud_init();
    let script = written_file(&doc, "/usr/local/sbin/install-runbook-worker");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("install-runbook-worker");
    std::fs::write(&path, &script).unwrap();
    assert_shell_is_clean(&path);
    // The placeholder check comes before anything that changes the machine.
    let empty = tempfile::tempdir().unwrap();
    let out = run_bash(
        &path,
        &[],
        &[("PATH", &empty.path().display().to_string())],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("replace __RUNBOOK_WORKER_BINARY_URL__"),
        "{}",
        stderr(&out)
    );
    for step in [
        "sha256sum --check",
        "useradd --system",
        "install -d -m 2775",
        "systemctl enable",
    ] {
        assert!(script.contains(step), "the installer lacks {step}");
    }
}

// ---- README ------------------------------------------------------------------------------

/// The README text of the `## heading` section, up to the next `## `.
fn readme_section(heading: &str) -> String {
    let readme = read_repo_file("README.md");
    let start = readme
        .find(&format!("\n## {heading}\n"))
        .unwrap_or_else(|| panic!("README has no section {heading}"));
    let body = &readme[start + 1..];
    let end = body[3..].find("\n## ").map_or(body.len(), |at| at + 3);
    body[..end].to_string()
}

/// The fenced code blocks of `text` whose info string is `language`.
fn code_blocks(text: &str, language: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        match &mut current {
            None if trimmed == format!("```{language}") => current = Some(String::new()),
            Some(block) if trimmed == "```" => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {}
        }
    }
    blocks
}

#[test]
fn the_readme_migration_example_is_toml_in_the_runbook_shape() {
    let blocks = code_blocks(
        &readme_section("Migrate an Azure Automation runbook"),
        "toml",
    );
    assert_eq!(
        blocks.len(),
        3,
        "the Exchange example, the settings and the Graph example"
    );
    // The real validator, as `runbook-worker validate` runs it, with the default policy.
    let policy = runbook_worker::runbook::CmdletPolicy::new(&Default::default());
    let runbook =
        runbook_worker::runbook::parse_runbook("migrated", "README.md", &blocks[0], &policy)
            .unwrap_or_else(|errors| panic!("README migration example is invalid: {errors:?}"));
    let steps: Vec<(&str, &str)> = runbook
        .steps
        .iter()
        .map(|s| (s.name.as_str(), s.cmdlet.as_str()))
        .collect();
    assert_eq!(
        steps,
        [("find", "Get-Mailbox"), ("enable_copies", "Set-Mailbox")]
    );
    assert_eq!(runbook.steps[1].for_each.as_deref(), Some("find"));
    assert!(runbook.max_changes.is_some());
}

#[test]
fn the_readme_graph_and_exchange_example_uses_vars_secrets_and_schedules_the_worker_knows() {
    let blocks = code_blocks(
        &readme_section("Migrate an Azure Automation runbook"),
        "toml",
    );
    // The settings block: `[vars]` and `[secrets]` as the settings loader checks them.
    let settings: runbook_worker::settings::Settings =
        toml::from_str(&blocks[1]).unwrap_or_else(|e| panic!("README settings block: {e}"));
    assert_eq!(settings.problems(), Vec::<(String, String)>::new());
    // The runbook, as the worker parses it: Graph steps, templates reading params, item,
    // vars and secrets, and `[[schedules]]`.
    let policy = runbook_worker::runbook::CmdletPolicy::new(&Default::default());
    let runbook =
        runbook_worker::runbook::parse_runbook("leavers", "README.md", &blocks[2], &policy)
            .unwrap_or_else(|errors| panic!("README Graph example is invalid: {errors:?}"));
    let graph_steps: Vec<&str> = runbook
        .steps
        .iter()
        .filter(|step| step.graph.is_some())
        .map(|step| step.name.as_str())
        .collect();
    assert_eq!(graph_steps, ["leavers", "scramble"]);
    let schedules: Vec<(&str, serde_json::Value)> = runbook
        .schedule_entries
        .iter()
        .map(|e| (e.label.as_str(), e.params["department"].clone()))
        .collect();
    assert_eq!(
        schedules,
        [
            ("0 0 2 * * *", serde_json::json!("Sales")),
            ("0 0 3 * * 6", serde_json::json!("Finance"))
        ]
    );
    let names = |set: &std::collections::BTreeSet<String>| set.iter().cloned().collect::<Vec<_>>();
    assert_eq!(names(&runbook.vars_used), ["helpdesk_address"]);
    assert_eq!(names(&runbook.secrets_used), ["leaver_password"]);
    // Every var and secret the runbook uses is defined by the settings block.
    assert!(
        runbook
            .vars_used
            .iter()
            .all(|n| settings.vars.0.contains_key(n))
    );
    assert!(
        runbook
            .secrets_used
            .iter()
            .all(|n| settings.secrets.0.contains_key(n))
    );
    let cmdlets: Vec<&str> = runbook.steps[2..]
        .iter()
        .map(|s| s.cmdlet.as_str())
        .collect();
    assert_eq!(
        cmdlets,
        ["Set-Mailbox", "Set-MailboxAutoReplyConfiguration"]
    );
}

#[test]
fn every_permissions_command_in_the_readme_uses_options_the_script_has() {
    let script = read_repo_file("deploy/permissions/grant-exchange-permissions.sh");
    let readme = read_repo_file("README.md");
    let mut checked = 0;
    for (at, _) in readme.match_indices("grant-exchange-permissions.sh") {
        let rest = &readme[at..];
        let command: String = rest
            .lines()
            .scan(true, |more, line| {
                let keep = *more;
                *more = line.trim_end().ends_with('\\');
                keep.then_some(line)
            })
            .collect::<Vec<_>>()
            .join(" ");
        // Options of commands nested in $( … ) belong to those commands.
        let mut command = command;
        while let Some(open) = command.find("$(") {
            let close = open + command[open..].find(')').unwrap();
            command.replace_range(open..=close, "ID");
        }
        for option in command.split_whitespace().filter(|w| w.starts_with("--")) {
            let option = option.trim_end_matches(['`', ')', ',', '.']);
            assert!(
                script.contains(&format!("        {option})"))
                    || script.contains(&format!("        {option} |"))
                    || script.contains(&format!("| {option})")),
                "README uses {option}, which the script does not accept: {command}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 5, "only {checked} options checked");
}

#[test]
fn graph_roles_are_granted_on_the_graph_service_principal_by_their_ids() {
    const GRAPH_SP: &str = "a0b1c2d3-e4f5-4a6b-8c7d-9e0f1a2b3c4d";
    let graph_lookup = format!(
        "{GRAPH}/servicePrincipals?$filter=appId%20eq%20'00000003-0000-0000-c000-000000000000'&$select=id,displayName"
    );
    let mut az = Tenant::FRESH.az();
    az.answer(
        &format!("rest get {graph_lookup}"),
        0,
        &format!("{GRAPH_SP}\n"),
    );
    let out = az.run(
        &permissions_script(),
        &[
            "--principal-id",
            PRINCIPAL,
            "--role",
            "none",
            "--graph-role",
            "User.Read.All",
            "--graph-role",
            "groupmember.read.all",
        ],
        &[],
    );
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert!(requests(&az).contains(&format!("GET {graph_lookup}")));
    // The ids are the ones runbook-worker's permission table names.
    let graph_body = |role: &str| {
        serde_json::json!({
            "principalId": PRINCIPAL,
            "resourceId": GRAPH_SP,
            "appRoleId": runbook_worker::graph::permissions::app_role_id(role).unwrap(),
        })
    };
    assert_eq!(
        post_bodies(&az),
        vec![
            app_role_body(PRINCIPAL),
            graph_body("User.Read.All"),
            graph_body("GroupMember.Read.All"),
        ]
    );
    assert!(
        stdout(&out).contains("Graph User.Read.All: granting"),
        "{}",
        stdout(&out)
    );

    let unknown = Tenant::FRESH.az();
    let out = unknown.run(
        &permissions_script(),
        &[
            "--principal-id",
            PRINCIPAL,
            "--graph-role",
            "Everything.All",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("Everything.All"), "{}", stderr(&out));
    assert!(
        requests(&unknown).is_empty(),
        "nothing is asked before the arguments are checked"
    );
}
