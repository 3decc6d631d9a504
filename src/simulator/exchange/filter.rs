//! A basic OPATH `-Filter`: `Prop -eq 'v'`, `-ne`, `-like`, `-notlike`, `-and`, `-or`,
//! `-not`, parentheses, `$null`, and booleans written `'True'`/`'False'`. Like the
//! service, it evaluates no PowerShell variables: `$true` is a syntax error (the module
//! rewrites it before sending, and so must a client).

use serde_json::{Map, Value};

#[derive(Clone, Debug, PartialEq)]
pub enum Filter {
    Compare {
        property: String,
        op: Op,
        value: Literal,
    },
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Like,
    NotLike,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Literal {
    Text(String),
    Null,
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Open,
    Close,
    Operator(String),
    Quoted(String),
    Word(String),
}

/// A syntax error at a character position, for the service's error text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterError {
    pub position: usize,
    pub message: String,
}

fn tokenize(text: &str) -> Result<Vec<(usize, Token)>, FilterError> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                tokens.push((i, Token::Open));
                i += 1;
            }
            ')' => {
                tokens.push((i, Token::Close));
                i += 1;
            }
            c if quote_class(c).is_some() => {
                let start = i;
                let class = quote_class(c);
                let mut value = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => {
                            return Err(FilterError {
                                position: start,
                                message: "unterminated string".into(),
                            });
                        }
                        // A doubled quote is a literal quote, as in PowerShell, which
                        // counts the typographic quotes (‘ ’ ‚ ‛, “ ” „) as quotes too.
                        Some(q)
                            if quote_class(*q) == class
                                && chars.get(i + 1).copied().and_then(quote_class) == class =>
                        {
                            value.push(chars[i + 1]);
                            i += 2;
                        }
                        Some(q) if quote_class(*q) == class => {
                            i += 1;
                            break;
                        }
                        Some(other) => {
                            value.push(*other);
                            i += 1;
                        }
                    }
                }
                tokens.push((start, Token::Quoted(value)));
            }
            _ => {
                let start = i;
                while i < chars.len() && !chars[i].is_whitespace() && !matches!(chars[i], '(' | ')')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                if let Some(op) = word.strip_prefix('-') {
                    tokens.push((start, Token::Operator(op.to_ascii_lowercase())));
                } else {
                    tokens.push((start, Token::Word(word)));
                }
            }
        }
    }
    Ok(tokens)
}

/// Parses OPATH text. Braces around the whole filter (script-block text) are accepted.
pub fn parse(text: &str) -> Result<Filter, FilterError> {
    let trimmed = text.trim();
    let inner = trimmed
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .unwrap_or(trimmed);
    let tokens = tokenize(inner)?;
    let mut parser = Parser {
        tokens,
        at: 0,
        end: inner.len(),
    };
    let filter = parser.or()?;
    if let Some((position, _)) = parser.tokens.get(parser.at) {
        return Err(FilterError {
            position: *position,
            message: "unexpected text after the end of the filter".into(),
        });
    }
    Ok(filter)
}

struct Parser {
    tokens: Vec<(usize, Token)>,
    at: usize,
    end: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at).map(|(_, t)| t)
    }

    fn position(&self) -> usize {
        self.tokens.get(self.at).map_or(self.end, |(p, _)| *p)
    }

    fn error(&self, message: &str) -> FilterError {
        FilterError {
            position: self.position(),
            message: message.to_string(),
        }
    }

    fn or(&mut self) -> Result<Filter, FilterError> {
        let mut left = self.and()?;
        while matches!(self.peek(), Some(Token::Operator(op)) if op == "or") {
            self.at += 1;
            let right = self.and()?;
            left = Filter::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Filter, FilterError> {
        let mut left = self.unary()?;
        while matches!(self.peek(), Some(Token::Operator(op)) if op == "and") {
            self.at += 1;
            let right = self.unary()?;
            left = Filter::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Filter, FilterError> {
        match self.peek().cloned() {
            Some(Token::Operator(op)) if op == "not" => {
                self.at += 1;
                Ok(Filter::Not(Box::new(self.unary()?)))
            }
            Some(Token::Open) => {
                self.at += 1;
                let inner = self.or()?;
                if self.peek() != Some(&Token::Close) {
                    return Err(self.error("missing ')'"));
                }
                self.at += 1;
                Ok(inner)
            }
            Some(Token::Word(property)) => {
                self.at += 1;
                let op = match self.peek() {
                    Some(Token::Operator(op)) => match op.as_str() {
                        "eq" => Op::Eq,
                        "ne" => Op::Ne,
                        "like" => Op::Like,
                        "notlike" => Op::NotLike,
                        _ => return Err(self.error("unsupported operator")),
                    },
                    _ => return Err(self.error("expected an operator such as -eq")),
                };
                self.at += 1;
                let value = match self.peek().cloned() {
                    Some(Token::Quoted(text)) => Literal::Text(text),
                    Some(Token::Word(word)) if word.eq_ignore_ascii_case("$null") => Literal::Null,
                    Some(Token::Word(word)) if word.starts_with('$') => {
                        return Err(self.error(
                            "variables are not evaluated; write booleans as 'True' or 'False'",
                        ));
                    }
                    Some(Token::Word(word)) => Literal::Text(word),
                    _ => return Err(self.error("expected a value")),
                };
                self.at += 1;
                Ok(Filter::Compare {
                    property,
                    op,
                    value,
                })
            }
            _ => Err(self.error("expected a property name")),
        }
    }
}

impl Filter {
    /// Property names the filter uses, for the "not a filterable property" check.
    pub fn properties(&self) -> Vec<&str> {
        match self {
            Filter::Compare { property, .. } => vec![property.as_str()],
            Filter::And(a, b) | Filter::Or(a, b) => {
                let mut names = a.properties();
                names.extend(b.properties());
                names
            }
            Filter::Not(inner) => inner.properties(),
        }
    }

    /// Evaluates against a record (annotations included or not).
    pub fn matches(&self, record: &Map<String, Value>) -> bool {
        match self {
            Filter::And(a, b) => a.matches(record) && b.matches(record),
            Filter::Or(a, b) => a.matches(record) || b.matches(record),
            Filter::Not(inner) => !inner.matches(record),
            Filter::Compare {
                property,
                op,
                value,
            } => {
                let actual = lookup(record, property).unwrap_or(&Value::Null);
                let hit = compare(actual, value, *op);
                match op {
                    Op::Eq | Op::Like => hit,
                    Op::Ne | Op::NotLike => !hit,
                }
            }
        }
    }
}

pub fn lookup<'a>(record: &'a Map<String, Value>, property: &str) -> Option<&'a Value> {
    record
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(property))
        .map(|(_, v)| v)
}

/// True when `actual` equals (or is like) `expected`; the caller negates for -ne/-notlike.
fn compare(actual: &Value, expected: &Literal, op: Op) -> bool {
    let like = matches!(op, Op::Like | Op::NotLike);
    match (actual, expected) {
        (Value::Null, Literal::Null) => true,
        (Value::Array(items), Literal::Null) => items.is_empty(),
        (Value::String(s), Literal::Null) => s.is_empty(),
        (_, Literal::Null) => false,
        (Value::Array(items), Literal::Text(text)) => {
            items.iter().any(|item| scalar_matches(item, text, like))
        }
        (other, Literal::Text(text)) => scalar_matches(other, text, like),
    }
}

fn scalar_matches(actual: &Value, text: &str, like: bool) -> bool {
    let actual = match actual {
        Value::String(s) => s.clone(),
        Value::Bool(true) => "True".to_string(),
        Value::Bool(false) => "False".to_string(),
        Value::Null => return false,
        other => other.to_string(),
    };
    if like {
        wildcard(&actual.to_lowercase(), &text.to_lowercase())
    } else {
        actual.eq_ignore_ascii_case(text) || actual.to_lowercase() == text.to_lowercase()
    }
}

/// `*` and `?` wildcards.
fn wildcard(text: &str, pattern: &str) -> bool {
    let t: Vec<char> = text.chars().collect();
    let p: Vec<char> = pattern.chars().collect();
    let (mut ti, mut pi) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            ti += 1;
            pi += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// Which quotes a character is to PowerShell: 1 for single quotes (`'` and the
/// typographic ‘ ’ ‚ ‛), 2 for double quotes (`"` and “ ” „). Any quote of a class ends a
/// string opened by another of the same class.
fn quote_class(c: char) -> Option<u8> {
    match c {
        '\'' | '\u{2018}'..='\u{201B}' => Some(1),
        '"' | '\u{201C}'..='\u{201E}' => Some(2),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn record() -> Map<String, Value> {
        match json!({
            "Alias": "adele.vance",
            "HiddenFromAddressListsEnabled": true,
            "ForwardingSmtpAddress": null,
            "RecipientTypeDetails": "UserMailbox",
            "EmailAddresses": ["SMTP:adele.vance@contoso.com", "smtp:av@contoso.onmicrosoft.com"],
        }) {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn filters_evaluate_like_opath() {
        let table = [
            ("Alias -eq 'adele.vance'", true),
            ("alias -eq 'ADELE.VANCE'", true),
            ("Alias -ne 'adele.vance'", false),
            ("Alias -like 'adele*'", true),
            ("Alias -notlike '*x*'", true),
            ("HiddenFromAddressListsEnabled -eq 'True'", true),
            ("HiddenFromAddressListsEnabled -eq 'False'", false),
            ("ForwardingSmtpAddress -eq $null", true),
            ("ForwardingSmtpAddress -ne $null", false),
            ("EmailAddresses -like 'smtp:av@*'", true),
            (
                "RecipientTypeDetails -eq 'SharedMailbox' -or Alias -eq 'adele.vance'",
                true,
            ),
            (
                "RecipientTypeDetails -eq 'UserMailbox' -and (Alias -eq 'x' -or Alias -like 'a?ele*')",
                true,
            ),
            ("-not (Alias -eq 'adele.vance')", false),
            ("{ Alias -eq \"adele.vance\" }", true),
            ("Alias -eq 'it''s'", false),
            // PowerShell's typographic single quotes open, close and double like `'`.
            ("Alias -eq \u{2018}adele.vance\u{2019}", true),
            ("Alias -eq 'x\u{2019} -or Alias -like \u{2018}*'", true),
            (
                "Alias -eq 'x\u{2019}\u{2019} -or Alias -like \u{2018}\u{2018}*'",
                false,
            ),
            ("Alias -eq \u{201C}adele.vance\u{201D}", true),
        ];
        for (text, expected) in table {
            let filter = parse(text).unwrap_or_else(|e| panic!("{text}: {e:?}"));
            assert_eq!(filter.matches(&record()), expected, "{text}");
        }
    }

    #[test]
    fn bad_filters_report_a_position() {
        let table = [
            ("Alias -eq", 9),
            ("Alias 'x'", 6),
            ("HiddenFromAddressListsEnabled -eq $true", 34),
            ("(Alias -eq 'x'", 14),
            ("Alias -eq 'x", 10),
            ("Alias -gt 'x'", 6),
        ];
        for (text, position) in table {
            let error = parse(text).unwrap_err();
            assert_eq!(error.position, position, "{text}: {error:?}");
        }
    }
}
