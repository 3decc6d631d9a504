//! The InvokeCommand answer decoders on arbitrary bytes: a page, an error body, the
//! throttling hints and the authentication challenge.
#![no_main]

use libfuzzer_sys::fuzz_target;
use runbook_worker::exchange::response;

fuzz_target!(|data: &[u8]| {
    if let Ok(mut page) = response::parse_page(data) {
        for record in &mut page.records {
            response::strip_annotations(record);
        }
    }
    if let Some(body) = response::parse_error_body(data) {
        let _ = body.best_message();
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let issue = response::parse_issue(text);
        let _ = (
            issue.short_class(),
            issue.is_transient(),
            issue.is_not_found(),
        );
        let _ = response::parse_retry_after(text);
        let _ = response::retry_after_from_message(text);
        let _ = response::claims_challenge(text);
    }
});
