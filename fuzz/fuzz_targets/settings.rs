//! The settings loader on an arbitrary settings file: errors are fine, panics are not.
#![no_main]

use std::collections::HashMap;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use runbook_worker::settings;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = settings::from_text(Some((Path::new("fuzz.toml"), text)), &HashMap::new()) {
        let _ = e.to_string();
    }
});
