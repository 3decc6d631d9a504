//! `runbook-worker invoke CMDLET [--param NAME=VALUE]… [--output json|table]`: runs one
//! cmdlet with the worker's identity and `[exchange]` settings and prints the records —
//! the operator's replacement for an interactive Exchange Online session.
//!
//! Records go to stdout as they arrive (JSON lines) or, for a table, once all pages are in;
//! warnings and non-terminating errors go to stderr. Exit status: 0 success, 1 the call
//! failed (the parsed error on stderr), 3 the call ran but reported non-terminating errors
//! (64 is a mistake on the command line).

use std::collections::BTreeSet;
use std::io::{IsTerminal as _, Write};
use std::process::ExitCode;

use anyhow::{anyhow, bail};
use futures::StreamExt as _;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use runbook_worker::exchange::{ExchangeClient, InvokeOptions, ParamValue, Parameters, Record};
use runbook_worker::runbook::CmdletPolicy;

use super::{Context, EXIT_NON_TERMINATING_ERRORS, Output, TargetArgs};

/// Table cells longer than this are cut (with `…`); `--output json` has every value whole.
const MAX_CELL: usize = 48;
/// Columns a table shows by default.
const DEFAULT_COLUMNS: usize = 6;
/// Properties that identify an object, in the order a default table prefers them.
const PREFERRED_COLUMNS: &[&str] = &[
    "DisplayName",
    "Name",
    "Alias",
    "PrimarySmtpAddress",
    "UserPrincipalName",
    "RecipientTypeDetails",
    "User",
    "AccessRights",
    "DomainName",
    "DomainType",
    "ItemCount",
    "TotalItemSize",
    "Identity",
];

#[derive(Debug, clap::Args)]
pub struct InvokeArgs {
    /// The cmdlet to run, such as Get-Mailbox.
    #[arg(value_name = "CMDLET")]
    pub cmdlet: String,
    /// A parameter as NAME=VALUE; repeat for more. A VALUE that parses as JSON is sent as
    /// that value (true, 10, null, ["a","b"], {"Add":"smtp:a@contoso.com"} → hashtable),
    /// anything else as a string. A switch is NAME=true.
    #[arg(long = "param", short = 'p', value_name = "NAME=VALUE", value_parser = parse_param)]
    pub params: Vec<(String, ParamValue)>,
    /// `json`: one JSON object per line; `human`: a table of a few columns for reading.
    /// Default: a table on a terminal, JSON lines otherwise.
    #[arg(long = "output", alias = "format", value_enum)]
    pub output: Option<Output>,
    /// The table's columns (comma-separated or repeated); default: a few identifying
    /// properties of the records.
    #[arg(long = "property", value_name = "NAME", value_delimiter = ',')]
    pub properties: Vec<String>,
    #[command(flatten)]
    pub target: TargetArgs,
}

/// `NAME=VALUE` → the parameter (the value as [`ParamValue::from_cli`] reads it).
fn parse_param(text: &str) -> Result<(String, ParamValue), String> {
    let Some((name, value)) = text.split_once('=') else {
        return Err(format!(
            "expected NAME=VALUE, got {text:?} (a switch is NAME=true)"
        ));
    };
    let name = name.trim().trim_start_matches('-');
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "{name:?} is not a parameter name: expected letters and digits, such as Identity"
        ));
    }
    Ok((name.to_string(), ParamValue::from_cli(value)))
}

/// The parameters, refusing a name given twice (PowerShell names ignore case).
fn parameters(pairs: Vec<(String, ParamValue)>) -> anyhow::Result<Parameters> {
    let mut out = Parameters::new();
    for (name, value) in pairs {
        if let Some(existing) = out.keys().find(|k| k.eq_ignore_ascii_case(&name)) {
            bail!(
                "--param {name} is given twice (also as {existing}); give each parameter once, an array value as JSON: {name}='[\"a\",\"b\"]'"
            );
        }
        out.insert(name, value);
    }
    Ok(out)
}

pub async fn run(ctx: Context, args: InvokeArgs) -> anyhow::Result<ExitCode> {
    let parameters = parameters(args.params)?;
    if let Err(denial) = CmdletPolicy::new(&ctx.settings.policy).check(&args.cmdlet) {
        // The policy governs runbook files; an operator at the console is not held to it,
        // but should know that the same step in a runbook would not load.
        eprintln!("note: a runbook could not call {}: {denial}", args.cmdlet);
    }

    let components = ctx.components(args.target).await?;
    let client = components
        .exchange_client(|_| {})
        .map_err(|e| anyhow!("{e}"))?;
    let format = args.output.unwrap_or(if std::io::stdout().is_terminal() {
        Output::Human
    } else {
        Output::Json
    });

    let outcome = call(&client, &args.cmdlet, parameters, format, &args.properties).await;
    components.shutdown().await;
    outcome
}

/// Runs the call, printing as it goes, and turns the outcome into the exit status.
async fn call(
    client: &ExchangeClient,
    cmdlet: &str,
    parameters: Parameters,
    format: Output,
    properties: &[String],
) -> anyhow::Result<ExitCode> {
    let cancel = CancellationToken::new();
    let mut invocation = client.invoke_with(
        cmdlet,
        parameters,
        InvokeOptions {
            cancel: cancel.clone(),
            idempotent: false,
            ..InvokeOptions::default()
        },
    );
    let interrupt = tokio::signal::ctrl_c();
    tokio::pin!(interrupt);
    let mut interrupted = false;
    let mut table: Vec<Record> = Vec::new();
    let mut non_terminating = 0usize;
    // Locked per write, never across an await.
    let stdout = std::io::stdout();

    loop {
        let page = tokio::select! {
            page = invocation.next() => page,
            // Ctrl-C cancels the call through the client, which stops between or during
            // requests and says whether a write may have been applied.
            _ = &mut interrupt, if !interrupted => {
                interrupted = true;
                cancel.cancel();
                continue;
            }
        };
        let page = match page {
            None => break,
            Some(Ok(page)) => page,
            Some(Err(error)) => {
                if format == Output::Human {
                    print_table(&mut stdout.lock(), &table, properties)?;
                }
                // The exchange error's own message names the call and what to do; its
                // source chain would only repeat it.
                eprintln!("error: {error}");
                return Ok(ExitCode::FAILURE);
            }
        };
        for warning in &page.warnings {
            eprintln!("warning: {warning}");
        }
        for issue in &page.errors {
            non_terminating += 1;
            eprintln!("error (non-terminating): {issue}");
        }
        match format {
            Output::Json => {
                if let Err(e) = write_json_lines(&mut stdout.lock(), &page.records) {
                    if e.kind() == std::io::ErrorKind::BrokenPipe {
                        // The reader stopped (`| head`): stop fetching pages too.
                        return Ok(ExitCode::SUCCESS);
                    }
                    return Err(anyhow!("cannot write to stdout: {e}"));
                }
            }
            Output::Human => table.extend(page.records),
        }
    }
    if format == Output::Human {
        print_table(&mut stdout.lock(), &table, properties)?;
    }
    if non_terminating > 0 {
        eprintln!(
            "{cmdlet} completed with {non_terminating} non-terminating error(s); the records above are what it did"
        );
        return Ok(ExitCode::from(EXIT_NON_TERMINATING_ERRORS));
    }
    Ok(ExitCode::SUCCESS)
}

fn write_json_lines(out: &mut impl Write, records: &[Record]) -> std::io::Result<()> {
    for record in records {
        serde_json::to_writer(&mut *out, record)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

fn print_table(
    out: &mut impl Write,
    records: &[Record],
    properties: &[String],
) -> anyhow::Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    let (columns, hidden) = if properties.is_empty() {
        default_columns(records)
    } else {
        (properties.to_vec(), 0)
    };
    let text = render_table(records, &columns);
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            return Err(anyhow!("cannot write to stdout: {e}"));
        }
        _ => {}
    }
    if hidden > 0 {
        eprintln!(
            "({hidden} more properties not shown: choose columns with --property, or use --output json for everything)"
        );
    }
    Ok(())
}

/// The columns of a default table and how many properties it leaves out: every property
/// when there are few, else the identifying ones present (PowerShell's default views do
/// the same per type), else the first few.
fn default_columns(records: &[Record]) -> (Vec<String>, usize) {
    let mut seen = BTreeSet::new();
    let mut all: Vec<String> = Vec::new();
    for key in records.iter().flat_map(|r| r.keys()) {
        if seen.insert(key.as_str()) {
            all.push(key.clone());
        }
    }
    if all.len() <= DEFAULT_COLUMNS {
        return (all, 0);
    }
    let preferred: Vec<String> = PREFERRED_COLUMNS
        .iter()
        .filter(|p| seen.contains(**p))
        .take(DEFAULT_COLUMNS)
        .map(|p| p.to_string())
        .collect();
    let columns = if preferred.len() >= 2 {
        preferred
    } else {
        all.iter().take(DEFAULT_COLUMNS).cloned().collect()
    };
    let hidden = all.len() - columns.len();
    (columns, hidden)
}

/// One table cell: text as is, arrays joined with `, `, objects as compact JSON, null empty;
/// cut to [`MAX_CELL`] characters and kept on one line.
fn cell(value: Option<&Value>) -> String {
    let text = match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(", "),
        Some(other) => other.to_string(),
    };
    let text = text.replace(['\r', '\n', '\t'], " ");
    if text.chars().count() > MAX_CELL {
        let cut: String = text.chars().take(MAX_CELL - 1).collect();
        format!("{cut}…")
    } else {
        text
    }
}

/// A PowerShell-style table: header, dashes, one row per record, columns padded to the
/// widest cell.
fn render_table(records: &[Record], columns: &[String]) -> String {
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| columns.iter().map(|c| cell(r.get(c))).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            rows.iter()
                .map(|row| row[i].chars().count())
                .chain([c.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(text, width)| {
                let pad = width.saturating_sub(text.chars().count());
                format!("{text}{}", " ".repeat(pad))
            })
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(columns.to_vec());
    out.push_str(&line(
        columns
            .iter()
            .map(|c| "-".repeat(c.chars().count()))
            .collect(),
    ));
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn record(value: Value) -> Record {
        match value {
            Value::Object(map) => map,
            _ => unreachable!("test records are objects"),
        }
    }

    /// Input, and the parsed parameter or a fragment of the error.
    type ParamCase<'a> = (&'a str, Result<(&'a str, ParamValue), &'a str>);

    #[test]
    fn params_are_name_equals_value_with_json_values() {
        let table: Vec<ParamCase> = vec![
            (
                "Identity=a@contoso.com",
                Ok(("Identity", "a@contoso.com".into())),
            ),
            ("Archive=true", Ok(("Archive", true.into()))),
            ("-ResultSize=10", Ok(("ResultSize", 10.into()))),
            (
                "Filter=Name -eq 'a=b'",
                Ok(("Filter", "Name -eq 'a=b'".into())),
            ),
            ("Empty=", Ok(("Empty", "".into()))),
            (
                r#"EmailAddresses={"Add":"smtp:a@contoso.com"}"#,
                Ok((
                    "EmailAddresses",
                    [("Add", "smtp:a@contoso.com")].into_iter().collect(),
                )),
            ),
            ("Archive", Err("expected NAME=VALUE")),
            ("=x", Err("not a parameter name")),
            ("Bad Name=x", Err("not a parameter name")),
        ];
        for (text, expected) in table {
            match (parse_param(text), expected) {
                (Ok((name, value)), Ok((n, v))) => {
                    assert_eq!((name.as_str(), value), (n, v), "{text}");
                }
                (Err(e), Err(needle)) => assert!(e.contains(needle), "{text}: {e}"),
                (got, expected) => panic!("{text}: got {got:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn a_parameter_given_twice_in_any_case_is_refused() {
        let pairs = vec![
            ("Identity".to_string(), ParamValue::from("a")),
            ("identity".to_string(), ParamValue::from("b")),
        ];
        let error = parameters(pairs).unwrap_err().to_string();
        assert!(error.contains("given twice"), "{error}");
    }

    #[test]
    fn a_default_table_shows_identifying_columns_of_wide_records_and_everything_of_narrow_ones() {
        let wide = record(json!({
            "Guid": "g", "Database": "db", "DisplayName": "Adele Vance", "Alias": "adele",
            "PrimarySmtpAddress": "adele@contoso.com", "IsShared": false, "Quota": "49.5 GB",
            "RecipientTypeDetails": "UserMailbox"
        }));
        let (columns, hidden) = default_columns(std::slice::from_ref(&wide));
        assert_eq!(
            columns,
            vec![
                "DisplayName",
                "Alias",
                "PrimarySmtpAddress",
                "RecipientTypeDetails"
            ]
        );
        assert_eq!(hidden, 4);

        let narrow = record(json!({"User": "u", "AccessRights": ["FullAccess"]}));
        // Records keep their properties in name order.
        assert_eq!(
            default_columns(&[narrow]),
            (vec!["AccessRights".into(), "User".into()], 0)
        );

        let unknown = record(json!({"a":1,"b":2,"c":3,"d":4,"e":5,"f":6,"g":7}));
        assert_eq!(
            default_columns(&[unknown]).0,
            vec!["a", "b", "c", "d", "e", "f"]
        );
    }

    #[test]
    fn a_table_pads_columns_and_flattens_values() {
        let records = vec![
            record(
                json!({"Name": "Adele", "EmailAddresses": ["SMTP:a@contoso.com", "smtp:b@contoso.com"], "Hidden": true}),
            ),
            record(json!({"Name": "Bo", "Hidden": null, "Extra": {"k": 1}})),
        ];
        let columns: Vec<String> = ["Name", "EmailAddresses", "Hidden", "Extra"]
            .map(String::from)
            .to_vec();
        let text = render_table(&records, &columns);
        let expected = "\
Name   EmailAddresses                          Hidden  Extra
----   --------------                          ------  -----
Adele  SMTP:a@contoso.com, smtp:b@contoso.com  true
Bo                                                     {\"k\":1}
";
        assert_eq!(text, expected);
    }

    #[test]
    fn long_cells_are_cut_and_kept_on_one_line() {
        let long = "x".repeat(100);
        let cut = cell(Some(&Value::String(long)));
        assert_eq!(cut.chars().count(), MAX_CELL);
        assert!(cut.ends_with('…'));
        assert_eq!(cell(Some(&json!("a\nb"))), "a b");
        assert_eq!(cell(Some(&json!(42))), "42");
        assert_eq!(cell(None), "");
    }
}
