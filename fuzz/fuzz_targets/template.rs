//! The template renderer: an arbitrary template as a parameter value and as a `when`,
//! compiled by the parser and rendered against a record with odd values.
#![no_main]

use std::collections::BTreeMap;

use chrono::{TimeZone, Utc};
use libfuzzer_sys::fuzz_target;
use runbook_worker::runbook::{
    CmdletPolicy, JobInfo, PolicySettings, TemplateContext, parse_runbook,
};
use serde_json::json;

fuzz_target!(|data: &[u8]| {
    let Ok(template) = std::str::from_utf8(data) else {
        return;
    };
    // A TOML basic string holding the template verbatim.
    let quoted = serde_json::to_string(template).unwrap();
    let text = format!(
        "[params.days]\ntype = \"int\"\ndefault = 30\n\n\
         [[steps]]\nname = \"find\"\ncmdlet = \"Get-Mailbox\"\n\n\
         [[steps]]\nname = \"act\"\ncmdlet = \"Set-Mailbox\"\nfor_each = \"find\"\n\
         when = {quoted}\nparameters = {{ Identity = {quoted}, Note = \"x-{{{{ item.Name }}}}\" }}\n"
    );
    let policy = CmdletPolicy::new(&PolicySettings::default());
    let Ok(runbook) = parse_runbook("fuzz", "fuzz.toml", &text, &policy) else {
        return;
    };
    let job = JobInfo {
        id: "job-1".to_string(),
        runbook: "fuzz".to_string(),
        scheduled_for: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
    };
    let params = BTreeMap::from([("days".to_string(), json!(30))]);
    let records = [
        json!({"Name": "a", "Size": 1.5e308, "List": [1, "x", null], "Nested": {"k": true}}),
        json!({"Name": "", "Size": -1, "List": [], "Nested": null}),
    ];
    let ctx = TemplateContext::new(&job, &params, job.scheduled_for).with_step(
        "find",
        records.len() as u64,
        Some(&records),
    );
    for step in &runbook.steps {
        for record in &records {
            let item = ctx.with_item(record);
            let _ = step.matches_when(&item);
            let _ = step.render_parameters(&item);
        }
    }
});
