//! The whole worker in-process through `spawn_app()`: what a user of the API and the
//! dashboard sees after real jobs, rendered from real history records.

use serde_json::json;

use crate::support::app::{TestAppOptions, spawn_app_with};
use crate::support::opscli::WRITING_RUNBOOK;

#[tokio::test]
async fn the_job_page_shows_each_steps_real_counts_after_a_dry_run() {
    let app =
        spawn_app_with(TestAppOptions::default().runbook("hide-shared.toml", WRITING_RUNBOOK))
            .await;
    let id = app
        .run_runbook("hide-shared", json!({ "dry_run": true }))
        .await;
    let job = app.wait_for_job_end(&id).await;
    assert_eq!(job["status"], "Completed", "{job}");

    // The counts as the history recorded them, to compare the page with.
    let steps = job["steps"].as_array().expect("steps");
    let find = steps.iter().find(|s| s["step"] == "find").expect("find");
    let hide = steps.iter().find(|s| s["step"] == "hide").expect("hide");
    let read = find["records_read"].as_u64().unwrap();
    let planned = hide["writes_planned"].as_u64().unwrap();
    assert!(read > 0 && planned == read, "{job}");

    let page = app.get(&format!("/jobs/{id}")).await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    let rows = html
        .split("<tr>")
        .filter(|row| row.contains("<td>find</td>") || row.contains("<td>hide</td>"))
        .collect::<Vec<_>>();
    assert_eq!(rows.len(), 2, "a row per step: {html}");
    assert!(
        rows[0].contains(&format!(r#"<td class="num">{read}</td>"#)),
        "the find row shows {read} records read: {}",
        rows[0]
    );
    assert!(
        rows[1].contains(&format!(r#"<td class="num">{planned}</td>"#)),
        "the hide row shows {planned} planned writes: {}",
        rows[1]
    );
    app.stop().await;
}

#[tokio::test]
async fn the_api_and_the_dashboard_show_each_schedule_with_its_params_and_next_run() {
    let app = spawn_app_with(TestAppOptions::default().runbook(
        "regions.toml",
        "[params]\nregion = { type = \"string\" }\n[[schedules]]\ncron = \"0 2 * * *\"\nparams = { region = \"EU\" }\n[[schedules]]\ncron = \"0 9 * * *\"\ntimezone = \"America/New_York\"\nparams = { region = \"US\" }\n[[steps]]\nname = \"find\"\ncmdlet = \"Get-Mailbox\"\n",
    ))
    .await;
    let view = app.get_json("/api/runbooks").await;
    let runbook = &view["runbooks"][0];
    assert_eq!(runbook["name"], "regions", "{view}");
    assert_eq!(
        runbook["schedule"], "0 2 * * *, 0 9 * * *",
        "the old field stays"
    );
    let schedules = runbook["schedules"].as_array().expect("schedules");
    assert_eq!(schedules.len(), 2, "{runbook}");
    assert_eq!(schedules[0]["params"], json!({"region": "EU"}));
    assert_eq!(schedules[1]["time_zone"], "America/New_York");
    assert_eq!(schedules[1]["params"], json!({"region": "US"}));
    assert!(
        schedules.iter().all(|s| s["next_run"].is_string()),
        "{runbook}"
    );
    let next: Vec<&str> = schedules
        .iter()
        .map(|s| s["next_run"].as_str().unwrap())
        .collect();
    assert_eq!(
        runbook["next_run"].as_str(),
        next.iter().min().copied(),
        "next_run is the earliest schedule's"
    );

    let html = app.get("/").await.text().await.unwrap();
    assert!(
        html.contains("region = &quot;US&quot;") || html.contains("region = \"US\""),
        "the dashboard lists each schedule's params: {html}"
    );
}
