//! What is wrong with a runbook file, located precisely enough for an editor to jump to it.
//!
//! Validation never stops at the first problem: every check appends a [`ValidationError`]
//! and the caller gets all of them, sorted by position, like a compiler's diagnostics.

use std::fmt;
use std::ops::Range;

use serde::Serialize;

/// The family of a validation problem, for callers that branch on it (the dashboard
/// groups them, `validate --format json` prints it as `kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The file or folder could not be read.
    Io,
    /// Not valid TOML.
    Syntax,
    /// A key the format does not know, usually a typo.
    UnknownKey,
    /// A required key is absent.
    MissingKey,
    /// A value of the wrong TOML type (a string where a number belongs, …).
    Type,
    /// A value of the right type that is malformed or out of range.
    Value,
    /// A cron expression croner rejects or that never fires.
    Cron,
    /// An unknown IANA time zone.
    TimeZone,
    /// A template or `when` expression minijinja cannot compile.
    Template,
    /// A name that points nowhere: `for_each`, `steps.x`, `params.x`, `item` outside
    /// `for_each`.
    Reference,
    /// A name used twice (steps, parameters, runbooks in a folder).
    Duplicate,
    /// A cmdlet the `[policy]` settings do not allow.
    Policy,
}

/// One problem in one runbook file.
///
/// `Display` is the compiler format `file:line:column: message`; line and column are
/// 1-based and count characters. Both are 0 when the problem concerns the file as a whole
/// (it cannot be read, or two files claim the same runbook name), and `Display` then
/// prints `file: message`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
pub struct ValidationError {
    /// The file as the caller named it (`runbooks/x.toml`).
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// Where in the document: `steps[1].parameters.Identity`, `timezone`, or empty for the
    /// document itself.
    pub key: String,
    pub kind: ErrorKind,
    /// What is wrong and what was expected, without a trailing period.
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            )
        }
    }
}

impl ValidationError {
    /// A problem with the file as a whole, without a position.
    pub fn whole_file(
        file: impl Into<String>,
        kind: ErrorKind,
        message: impl Into<String>,
    ) -> Self {
        Self {
            file: file.into(),
            line: 0,
            column: 0,
            key: String::new(),
            kind,
            message: message.into(),
        }
    }
}

/// Turns byte offsets into 1-based line and character columns.
pub(crate) struct SourceMap<'a> {
    text: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> SourceMap<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self { text, line_starts }
    }

    /// Line and column of a byte offset; offsets past the end clamp to the end.
    pub(crate) fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        };
        let start = self.line_starts[line];
        let column = self
            .text
            .get(start..offset)
            .map(|s| s.chars().count())
            .unwrap_or(offset - start);
        (line + 1, column + 1)
    }

    /// The source text of a span, when the span is valid.
    pub(crate) fn slice(&self, span: Range<usize>) -> Option<&'a str> {
        self.text.get(span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let text = "a = 1\nbé = \"x\"\n\nlast";
        let map = SourceMap::new(text);
        let cases = [
            (0, (1, 1)),
            (4, (1, 5)),
            (6, (2, 1)),
            // "bé" is three bytes; the '=' after it is the fourth character.
            (text.find("= \"").unwrap(), (2, 4)),
            (text.find("last").unwrap(), (4, 1)),
            (text.len() + 10, (4, 5)),
        ];
        for (offset, expected) in cases {
            assert_eq!(map.position(offset), expected, "offset {offset}");
        }
    }

    #[test]
    fn display_is_the_compiler_format() {
        let e = ValidationError {
            file: "runbooks/x.toml".to_string(),
            line: 12,
            column: 3,
            key: "steps[1].paramters".to_string(),
            kind: ErrorKind::UnknownKey,
            message: "unknown key \"paramters\"".to_string(),
        };
        assert_eq!(
            e.to_string(),
            "runbooks/x.toml:12:3: unknown key \"paramters\""
        );
        let whole = ValidationError::whole_file("x.toml", ErrorKind::Io, "cannot read");
        assert_eq!(whole.to_string(), "x.toml: cannot read");
    }
}
