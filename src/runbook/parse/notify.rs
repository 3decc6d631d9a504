//! The `notify` key: which `[[notify.targets]]` a runbook's jobs notify. Only the shape is
//! checked here; whether each name is defined in the settings is checked when the folder
//! is loaded with them ([`crate::runbook::Catalog::check_notify_targets`]).

use toml::de::DeValue;

use super::{Checker, ErrorKind, Node};

/// At most this many targets per runbook.
pub const MAX_NOTIFY_TARGETS: usize = 16;

impl Checker<'_> {
    pub(super) fn notify_targets(&mut self, node: &Node<'_>) -> Vec<String> {
        let DeValue::Array(items) = node.get_ref() else {
            self.type_error(
                node,
                "notify",
                "\"notify\"",
                "a list of target names such as [\"ops-mail\"]",
            );
            return Vec::new();
        };
        if items.len() > MAX_NOTIFY_TARGETS {
            self.report(
                node.span(),
                "notify",
                ErrorKind::Value,
                format!("\"notify\" names at most {MAX_NOTIFY_TARGETS} targets"),
            );
            return Vec::new();
        }
        let mut names: Vec<String> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let key = format!("notify[{i}]");
            let Some(name) = self.non_empty_string(item, &key, "a notification target name") else {
                continue;
            };
            if names.contains(&name) {
                self.report(
                    item.span(),
                    &key,
                    ErrorKind::Duplicate,
                    format!("notification target {name:?} is listed twice"),
                );
                continue;
            }
            names.push(name);
        }
        names
    }
}
