//! The dashboard over the whole worker (`spawn_app()`): the parameters a runbook declares as
//! the API lists them and as the Run-now form asks for them, pages that follow a running
//! job, and the history charts, in headless Chromium.

use std::time::Duration;

use runbook_worker::history::{JobStatus, StreamKind, Trigger};
use runbook_worker::http::ApiAuth;
use serde_json::{Value, json};

use crate::support::app::{API_TOKEN, TestAppOptions, spawn_app_with};
use crate::support::http::{
    Call, JOB_1, JOB_2, JOB_3, JOB_404, TOKEN, TestServer, bearer, chromium, job, new_job_id,
    screenshot, spawn, step,
};
use crate::support::wait_until;
use crate::support::worker::{FakeRunner, runbook};

/// An on-demand runbook declaring one parameter of each type the form has an input for.
fn report_runbook() -> String {
    runbook(
        r#"description = "Quota report of one team"
[params]
team = { type = "string", description = "The team's CustomAttribute1 value, such as Sales" }
days = { type = "integer", default = 30, description = "Look back this many days" }
ratio = { type = "float", default = 0.9 }
notify = { type = "boolean", default = false, description = "Mail the owners" }
since = { type = "datetime", default = 2025-01-01T00:00:00Z }
groups = { type = "array", default = ["a", "b"] }
"#,
    )
}

#[tokio::test]
async fn the_api_lists_each_declared_parameter_with_type_default_and_requirement() {
    let app = spawn_app_with(
        TestAppOptions::default()
            .runbook("quota-report.toml", &report_runbook())
            .runbook("plain.toml", &runbook("description = \"no params\"")),
    )
    .await;
    let one = app.get_json("/api/runbooks/quota-report").await;
    let want = json!([
        {"name": "days", "type": "integer", "default": 30, "required": false,
         "description": "Look back this many days"},
        {"name": "groups", "type": "array", "default": ["a", "b"], "required": false,
         "description": null},
        {"name": "notify", "type": "boolean", "default": false, "required": false,
         "description": "Mail the owners"},
        {"name": "ratio", "type": "float", "default": 0.9, "required": false,
         "description": null},
        {"name": "since", "type": "datetime", "default": "2025-01-01T00:00:00Z",
         "required": false, "description": null},
        {"name": "team", "type": "string", "default": null, "required": true,
         "description": "The team's CustomAttribute1 value, such as Sales"},
    ]);
    assert_eq!(one["params"], want, "{one}");

    let all = app.get_json("/api/runbooks").await;
    let listed = |name: &str| -> Value {
        all["runbooks"]
            .as_array()
            .expect("runbooks")
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing: {all}"))["params"]
            .clone()
    };
    assert_eq!(listed("quota-report"), want);
    assert_eq!(listed("plain"), json!([]));
    app.stop().await;
}

/// A page that frames the dashboard, checks that a runbook without parameters gets no
/// fields, then fills the Run-now form of `quota-report` (every type), submits it with the
/// token and copies what the form showed and the dialog's answer out.
const RUN_FORM_PAGE: &str = r##"<!doctype html>
<html><body>
<iframe id="app" src="/" width="1200" height="800"></iframe>
<pre id="outcome">waiting</pre>
<script>
const frame = document.getElementById("app");
frame.addEventListener("load", () => {
  const doc = frame.contentDocument;
  const dialog = doc.getElementById("action-dialog");
  const field = (name) => dialog.querySelector('[data-param="' + name + '"]');
  const seen = [];
  doc.querySelector('button[data-action="run"][data-runbook="plain"]').click();
  seen.push("plain fields: " + dialog.querySelectorAll("[data-param]").length);
  dialog.querySelector("[data-close]").click();
  doc.querySelector('button[data-action="run"][data-runbook="quota-report"]').click();
  seen.push("report fields: " + dialog.querySelectorAll("[data-param]").length);
  for (const name of ["team", "days", "ratio", "notify", "since", "groups"]) {
    const input = field(name);
    seen.push(name + ": " + input.tagName.toLowerCase() + " " + (input.type || "") + " value=" +
      (input.type === "checkbox" ? input.checked : input.value) + " required=" + input.required);
  }
  seen.push("help: " + dialog.textContent.includes("Look back this many days"));
  // Submitting without the required team names it and sends nothing.
  doc.querySelector('input[name="token"]').value = "__TOKEN__";
  dialog.querySelector("form").requestSubmit();
  const result = dialog.querySelector("[data-result]");
  seen.push("empty team: " + result.textContent);
  field("team").value = "Sales";
  field("days").value = "7";
  field("ratio").value = "0.75";
  field("notify").checked = true;
  field("since").value = "2025-02-03T04:05";
  field("groups").value = '["x", "y"]';
  doc.querySelector('input[name="dry_run"]').checked = true;
  dialog.querySelector("form").requestSubmit();
  const poll = setInterval(() => {
    if (result.dataset.state === "done" || result.dataset.state === "error") {
      clearInterval(poll);
      seen.push(result.dataset.state + ": " + result.textContent);
      document.getElementById("outcome").textContent = seen.join("\n");
    }
  }, 20);
});
</script>
</body></html>"##;

/// `page` served at `path` next to the worker's routes.
fn test_page(path: &str, page: String) -> axum::Router {
    axum::Router::new().route(
        path,
        axum::routing::get(move || {
            let page = page.clone();
            async move { axum::response::Html(page) }
        }),
    )
}

#[tokio::test]
async fn the_run_now_form_is_built_from_the_parameters_and_sends_typed_values() {
    let page = RUN_FORM_PAGE.replace("__TOKEN__", API_TOKEN);
    let app = spawn_app_with(TestAppOptions {
        extra_routes: Some(test_page("/test/run-form", page)),
        ..TestAppOptions::default()
            .runbook("quota-report.toml", &report_runbook())
            .runbook("plain.toml", &runbook("description = \"no params\""))
    })
    .await;

    // Virtual time stands still while the POST is in flight.
    let dom = chromium(
        &app.url("/test/run-form"),
        &[
            "--dump-dom".to_string(),
            "--virtual-time-budget=10000".to_string(),
        ],
    )
    .await;
    let outcome = dom
        .split(r#"<pre id="outcome">"#)
        .nth(1)
        .and_then(|rest| rest.split("</pre>").next())
        .unwrap_or_else(|| panic!("no outcome in the DOM:\n{dom}"));
    let lines: Vec<&str> = outcome.lines().collect();
    assert_eq!(
        lines[..10],
        [
            "plain fields: 0",
            "report fields: 6",
            "team: input text value= required=true",
            "days: input number value=30 required=false",
            "ratio: input number value=0.9 required=false",
            "notify: input checkbox value=false required=false",
            "since: input datetime-local value=2025-01-01T00:00 required=false",
            "groups: textarea textarea value=[\"a\",\"b\"] required=false",
            "help: true",
            "empty team: Check the parameters: team is required.",
        ],
        "{outcome}"
    );
    let id = lines[10]
        .strip_prefix("done: Started job ")
        .unwrap_or_else(|| panic!("the dialog did not report a job: {outcome}"));

    let job = app.get_json(&format!("/api/jobs/{id}")).await;
    assert_eq!(
        job["params"],
        json!({
            "team": "Sales", "days": 7, "ratio": 0.75, "notify": true,
            "since": "2025-02-03T04:05:00Z", "groups": ["x", "y"],
        }),
        "{job}"
    );
    assert_eq!(job["runbook"], "quota-report");
    assert_eq!(job["dry_run"], true);
    assert_eq!(
        job["trigger"], "manual",
        "the dashboard's runs are manual: {job}"
    );
    app.stop().await;
}

/// `path` of the test server as JSON.
async fn get_json(server: &TestServer, path: &str) -> Value {
    server.get(path).await.json().await.expect("a JSON answer")
}

/// The value of attribute `name` on the page's `<main>`.
fn main_attribute(html: &str, name: &str) -> String {
    let main = html
        .split("<main")
        .nth(1)
        .and_then(|rest| rest.split('>').next())
        .unwrap_or_else(|| panic!("no <main> in\n{html}"));
    main.split(&format!(" {name}=\""))
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no {name} on <main{main}>"))
        .to_string()
}

#[tokio::test]
async fn a_live_job_update_waits_for_a_change_and_brings_status_steps_and_new_lines() {
    let server = spawn(ApiAuth::new(Some(TOKEN.into()), true)).await;
    let page = server
        .get(&format!("/jobs/{JOB_3}"))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(
        main_attribute(&page, "data-live"),
        format!("/live/jobs/{JOB_3}")
    );
    assert_eq!(main_attribute(&page, "data-live-after"), "0");
    let version = main_attribute(&page, "data-live-version");

    // Nothing changed: the request waits. The job ends while it waits.
    let gets = || {
        server
            .worker
            .calls()
            .iter()
            .filter(|c| matches!(c, Call::GetJob(id) if id == JOB_3))
            .count()
    };
    let before = gets();
    let url = format!("/live/jobs/{JOB_3}?version={version}&after=0&wait=1");
    let pending = server.get(&url);
    let change = async {
        assert!(
            wait_until(Duration::from_secs(10), || async { gets() > before }).await,
            "the live request never read the job"
        );
        let mut jobs = server.worker.jobs.lock().unwrap();
        let running = jobs
            .iter_mut()
            .find(|j| j.job.id.as_str() == JOB_3)
            .unwrap();
        let ended = job(
            JOB_3,
            "archive-old-mailboxes",
            Trigger::Manual,
            JobStatus::Completed,
            (
                "2024-05-01T02:40:00Z",
                Some("2024-05-01T02:40:00.020Z"),
                Some("2024-05-01T02:41:00Z"),
            ),
            vec![step("find", 120, 117, 2, 1, 0)],
            None,
            vec![
                (StreamKind::Output, "2024-05-01T02:40:30Z", "first <line>"),
                (StreamKind::Warning, "2024-05-01T02:40:59Z", "second line"),
            ],
        );
        *running = ended;
    };
    let (response, ()) = tokio::join!(pending, change);
    assert_eq!(response.status(), 200);
    let update: Value = response.json().await.unwrap();
    assert_eq!(update["ended"], true, "{update}");
    assert_eq!(update["status"], "Completed");
    assert_eq!(update["after"], 2);
    assert_ne!(update["version"], version.as_str());
    let head = update["blocks"]["job_head"].as_str().unwrap();
    assert!(head.contains(r#"id="job-status">Completed"#), "{head}");
    assert!(!head.contains("Cancel this job"), "{head}");
    let steps = update["blocks"]["step_rows"].as_str().unwrap();
    assert!(steps.contains(r#"<td class="num">117</td>"#), "{steps}");
    let lines = update["append"]["stream_rows"].as_str().unwrap();
    assert_eq!(lines.matches("<tr ").count(), 2, "{lines}");
    assert!(lines.contains("first &lt;line&gt;"), "escaped: {lines}");

    // Asked again with what it now has: no line twice.
    let again: Value = get_json(&server, &format!("/live/jobs/{JOB_3}?after=2")).await;
    assert_eq!(again["append"]["stream_rows"], "", "{again}");
    assert_eq!(again["after"], 2);

    for (path, status) in [
        (format!("/live/jobs/{JOB_404}"), 404),
        (format!("/live/jobs/{JOB_3}?after=x"), 400),
    ] {
        let response = server.get(&path).await;
        assert_eq!(response.status(), status, "{path}");
        let body: Value = response.json().await.unwrap();
        assert!(body["error"].is_string(), "{path}: {body}");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_live_front_page_update_brings_a_new_job_and_keeps_the_runbook_filter() {
    let server = spawn(ApiAuth::new(Some(TOKEN.into()), true)).await;
    let page = server
        .get("/?runbook=archive-old-mailboxes")
        .await
        .text()
        .await
        .unwrap();
    let live = main_attribute(&page, "data-live");
    assert_eq!(live, "/live/index?runbook=archive-old-mailboxes");
    let version = main_attribute(&page, "data-live-version");

    let unchanged: Value = get_json(&server, &format!("{live}&version=other")).await;
    assert_eq!(
        unchanged["version"],
        version.as_str(),
        "same data, same version"
    );
    let rows = unchanged["blocks"]["job_rows"].as_str().unwrap();
    assert!(
        rows.contains(JOB_1) && !rows.contains(JOB_2),
        "filtered: {rows}"
    );

    // Asked with the version it has, the page gets no blocks to replace.
    let same: Value = get_json(&server, &format!("{live}&version={version}")).await;
    assert_eq!(same["version"], version.as_str());
    assert_eq!(same["blocks"], json!({}), "{same}");

    let id = server
        .post(
            "/api/runbooks/archive-old-mailboxes/run",
            Some(&bearer(TOKEN)),
            None,
        )
        .await;
    assert_eq!(id.status(), 202);
    let update: Value = get_json(&server, &format!("{live}&version={version}")).await;
    assert_ne!(update["version"], version.as_str());
    let rows = update["blocks"]["job_rows"].as_str().unwrap();
    assert!(rows.contains(&new_job_id(4)), "{rows}");
    assert!(!update.to_string().contains(TOKEN), "{update}");
    assert!(
        update["blocks"]["runbook_rows"]
            .as_str()
            .unwrap()
            .contains(r#"data-runbook="quota-report""#),
        "{update}"
    );
    server.stop().await;
}

/// A page that frames a running job's page, notes what it shows, lets the job end (through
/// `/test/release`) and waits, without navigating, until the framed page says Completed.
const LIVE_JOB_PAGE: &str = r##"<!doctype html>
<html><body>
<iframe id="app" width="1200" height="700"></iframe>
<pre id="outcome">waiting</pre>
<script>
const frame = document.getElementById("app");
const outcome = document.getElementById("outcome");
let loads = 0;
frame.addEventListener("load", async () => {
  loads += 1;
  if (loads > 1) {
    outcome.textContent = "the job page was loaded again";
    return;
  }
  const doc = frame.contentDocument;
  const status = () => doc.getElementById("job-status").textContent;
  const cancel = () => doc.querySelector('button[data-action="cancel"]') !== null;
  const first = "first: " + status() + ", cancel button: " + cancel();
  await fetch("/test/release");
  const poll = setInterval(() => {
    if (status() === "Completed") {
      clearInterval(poll);
      const ended = doc.querySelector("main").dataset.liveEnded !== undefined;
      outcome.textContent = first + "\nthen: " + status() + ", cancel button: " + cancel() +
        ", polling ended: " + ended;
    }
  }, 50);
});
frame.src = "/jobs/__ID__";
</script>
</body></html>"##;

#[tokio::test]
async fn a_running_jobs_page_shows_it_complete_without_a_reload_in_chromium() {
    let runner = FakeRunner::new();
    runner.hold("slow");
    let release = {
        let runner = runner.clone();
        axum::routing::get(move || {
            let runner = runner.clone();
            async move {
                runner.release("slow");
                "released"
            }
        })
    };
    let pages = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let page = {
        let pages = pages.clone();
        axum::routing::get(move || {
            let page = pages.lock().unwrap().clone();
            async move { axum::response::Html(page) }
        })
    };
    let app = spawn_app_with(TestAppOptions {
        runner: Some(runner.clone()),
        extra_routes: Some(
            axum::Router::new()
                .route("/test/release", release)
                .route("/test/live", page),
        ),
        ..TestAppOptions::default().runbook("slow.toml", &runbook("description = \"held\""))
    })
    .await;
    let id = app.run_runbook("slow", json!({})).await;
    let running = wait_until(Duration::from_secs(10), || async {
        app.get_json(&format!("/api/jobs/{id}")).await["status"] == "Running"
    })
    .await;
    assert!(running, "the held job never ran");
    *pages.lock().unwrap() = LIVE_JOB_PAGE.replace("__ID__", &id);

    // Virtual time stands still while the page's live request waits for the change.
    let dom = chromium(
        &app.url("/test/live"),
        &[
            "--dump-dom".to_string(),
            "--virtual-time-budget=30000".to_string(),
        ],
    )
    .await;
    assert!(
        dom.contains(
            "<pre id=\"outcome\">first: Running, cancel button: true\n\
             then: Completed, cancel button: false, polling ended: true</pre>"
        ),
        "the page did not follow the job:\n{dom}"
    );
    assert_eq!(app.wait_for_job_end(&id).await["status"], "Completed");
    app.stop().await;
}

#[tokio::test]
async fn the_history_charts_render_in_chromium_with_a_bar_per_job() {
    let app = spawn_app_with(
        TestAppOptions::default()
            .runbook("charted.toml", &runbook("description = \"three jobs\""))
            .runbook("other.toml", &runbook("description = \"one job\"")),
    )
    .await;
    for (name, dry_run) in [
        ("charted", true),
        ("charted", false),
        ("charted", true),
        ("other", true),
    ] {
        // The history may record the end a moment before the scheduler frees the
        // runbook's slot: a run refused as overlapping (409) is asked again.
        let path = format!("/api/runbooks/{name}/run");
        let answer = std::sync::Mutex::new(Value::Null);
        let started = wait_until(Duration::from_secs(10), || async {
            let response = app.post_json(&path, &json!({ "dry_run": dry_run })).await;
            let status = response.status();
            let body: Value = response.json().await.expect("JSON answer");
            assert!(matches!(status.as_u16(), 202 | 409), "{status}: {body}");
            *answer.lock().unwrap() = body;
            status == 202
        })
        .await;
        let answer = answer.into_inner().unwrap();
        assert!(started, "{name} never started: {answer}");
        app.wait_for_job_end(answer["job_id"].as_str().expect("job_id"))
            .await;
    }

    for (path, element, count, file) in [
        (
            "/?runbook=charted",
            "<rect class=\"bar ",
            3,
            "dashboard-history-bars.png",
        ),
        ("/", "<rect class=\"mark ", 4, "dashboard-timeline.png"),
    ] {
        let dom = chromium(&app.url(path), &["--dump-dom".to_string()]).await;
        assert_eq!(dom.matches(element).count(), count, "{path}:\n{dom}");
        assert!(dom.contains("<svg class=\"chart "), "{path}: inline SVG");
        assert!(
            dom.contains("status-completed"),
            "{path}: coloured by status"
        );

        screenshot(&app.url(path), file, &[]).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn live_updates_are_reads_that_need_the_token_off_loopback() {
    let server = spawn(ApiAuth::new(Some(TOKEN.into()), false)).await;
    for path in ["/live/index".to_string(), format!("/live/jobs/{JOB_1}")] {
        let anonymous = server.get(&path).await;
        assert_eq!(anonymous.status(), 401, "{path}");
        let with_token = server
            .get_with(&path, &[("authorization", &bearer(TOKEN))])
            .await;
        assert_eq!(with_token.status(), 200, "{path}");
    }
    server.stop().await;
}
