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
