//! Keeping SAS tokens out of logs and errors.
//!
//! A SAS URL is a bearer secret carried in the query string, and the HTTP stack happily
//! prints whole URLs in its error messages ("error sending request for url (…)"). Every URL
//! or error text that leaves this module goes through [`redact_url`] or [`redact_text`] first.
//! Pure string functions.

/// What replaces a query string.
const REDACTED: &str = "REDACTED";

/// `url` without its query string, fragment or user info: `https://a/b?sig=x` →
/// `https://a/b?REDACTED`. Text that does not parse as a URL is cut at the first `?`.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            let had_query = parsed.query().is_some();
            parsed.set_query(None);
            parsed.set_fragment(None);
            // User info can hold a password; neither part is needed to say which URL failed.
            let _ = parsed.set_password(None);
            let _ = parsed.set_username("");
            let mut out = parsed.to_string();
            if had_query {
                out.push('?');
                out.push_str(REDACTED);
            }
            out
        }
        Err(_) => match url.split_once(['?', '#']) {
            Some((before, _)) => format!("{before}?{REDACTED}"),
            None => url.to_string(),
        },
    }
}

/// `text` with every `http://` or `https://` URL in it passed through [`redact_url`], and any
/// stray `sig=` parameter (a query string printed without its URL) blanked.
pub fn redact_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = find_url_start(rest) {
        out.push_str(&rest[..start]);
        let candidate = &rest[start..];
        let end = candidate
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`' | ')'))
            .unwrap_or(candidate.len());
        out.push_str(&redact_url(&candidate[..end]));
        rest = &candidate[end..];
    }
    out.push_str(rest);
    blank_signatures(&out)
}

fn find_url_start(text: &str) -> Option<usize> {
    let lower = text.to_ascii_lowercase();
    [lower.find("http://"), lower.find("https://")]
        .into_iter()
        .flatten()
        .min()
}

fn blank_signatures(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let lower = rest.to_ascii_lowercase();
        let Some(at) = lower.find("sig=") else {
            out.push_str(rest);
            return out;
        };
        let value_start = at + "sig=".len();
        out.push_str(&rest[..value_start]);
        let value = &rest[value_start..];
        let end = value
            .find(|c: char| c.is_whitespace() || matches!(c, '&' | '"' | '\'' | ')' | ','))
            .unwrap_or(value.len());
        if end > 0 {
            out.push_str(REDACTED);
        }
        rest = &value[end..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_url_table() {
        let cases = [
            (
                "http://127.0.0.1:10000/devstoreaccount1/c?sv=2025-11-05&sig=abc%2Bdef",
                "http://127.0.0.1:10000/devstoreaccount1/c?REDACTED",
            ),
            (
                "https://acct.blob.core.windows.net/runbook-worker",
                "https://acct.blob.core.windows.net/runbook-worker",
            ),
            (
                "https://user:pw@acct.blob.core.windows.net/c?sig=x#frag",
                "https://acct.blob.core.windows.net/c?REDACTED",
            ),
            (
                "https://acct.blob.core.windows.net/c/occurrences%2Fa?comp=lease&sig=x",
                "https://acct.blob.core.windows.net/c/occurrences%2Fa?REDACTED",
            ),
            ("not a url?sig=secret", "not a url?REDACTED"),
            ("plain words", "plain words"),
        ];
        for (input, expected) in cases {
            assert_eq!(redact_url(input), expected, "{input}");
        }
    }

    #[test]
    fn redact_text_table() {
        let cases = [
            (
                "error sending request for url (http://127.0.0.1:1/devstoreaccount1/c/b?comp=lease&sig=s3cr3t%3D): connection refused",
                "error sending request for url (http://127.0.0.1:1/devstoreaccount1/c/b?REDACTED): connection refused",
            ),
            (
                "two: https://a/x?sig=1 and HTTP://b/y?sig=2",
                "two: https://a/x?REDACTED and http://b/y?REDACTED",
            ),
            (
                "a query alone sv=2025&sig=abc+def%3D&se=2030",
                "a query alone sv=2025&sig=REDACTED&se=2030",
            ),
            ("nothing to hide", "nothing to hide"),
        ];
        for (input, expected) in cases {
            assert_eq!(redact_text(input), expected, "{input}");
        }
    }

    #[test]
    fn no_redacted_text_contains_the_signature() {
        let secret = "AbCdEf0123456789%2B%2F%3D";
        let texts = [
            format!("http://127.0.0.1:9/a/b?sv=1&sig={secret}"),
            format!("(https://x/y?sig={secret})"),
            format!("sig={secret}"),
            format!("url: http://[::1/bad?sig={secret}"),
        ];
        for text in texts {
            let redacted = redact_text(&text);
            assert!(!redacted.contains(secret), "{redacted}");
        }
    }
}
