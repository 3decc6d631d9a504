//! The dashboard over the whole worker (`spawn_app()`): the parameters a runbook declares as
//! the API lists them and as the Run-now form asks for them, pages that follow a running
//! job, and the history charts, in headless Chromium.

use serde_json::{Value, json};

use crate::support::app::{TestAppOptions, spawn_app_with};
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
