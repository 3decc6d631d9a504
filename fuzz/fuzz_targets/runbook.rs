//! The runbook parser and validator on arbitrary bytes: errors are fine, panics are not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use runbook_worker::runbook::{CmdletPolicy, PolicySettings, parse_runbook};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let policy = CmdletPolicy::new(&PolicySettings::default());
    if let Err(errors) = parse_runbook("fuzz", "fuzz.toml", text, &policy) {
        for e in errors {
            let _ = e.to_string();
        }
    }
});
