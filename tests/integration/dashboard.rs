//! The dashboard over the whole worker (`spawn_app()`): the parameters a runbook declares as
//! the API lists them and as the Run-now form asks for them, pages that follow a running
//! job, and the history charts, in headless Chromium.

use serde_json::{Value, json};

use crate::support::app::{API_TOKEN, TestAppOptions, spawn_app_with};
use crate::support::http::chromium;
use crate::support::worker::runbook;

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
    assert_eq!(job["trigger"], "manual", "the dashboard's runs are manual: {job}");
    app.stop().await;
}
