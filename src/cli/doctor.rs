//! `runbook-worker doctor [--format text|json]`: runs the checks of
//! [`runbook_worker::doctor`] and prints each as OK / WARN / FAIL / SKIP with the fix.
//! Exit status 0 when nothing failed (warnings allowed), 1 otherwise. Never prints a token:
//! the report holds none.

use std::io::Write as _;
use std::process::ExitCode;

use runbook_worker::doctor::{self, DoctorOptions, Report, Status};

use super::{Context, Output, TargetArgs};

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// `text` for people; `json`: an array of {check, status, message, fix} with status
    /// one of ok, warn, fail, skipped.
    #[arg(long = "output", alias = "format", value_enum, default_value_t = Output::Human)]
    pub output: Output,
    #[command(flatten)]
    pub target: TargetArgs,
}

pub async fn run(ctx: Context, args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let components = ctx.components(args.target).await?;
    let report = doctor::run(&components, &DoctorOptions::default()).await;
    components.shutdown().await;
    let text = match args.output {
        Output::Json => serde_json::to_string_pretty(&report)? + "\n",
        Output::Human => text(&report),
    };
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// One block per check: `LABEL  check  message`, continuation lines and `fix:` indented
/// under the message, then a summary line.
fn text(report: &Report) -> String {
    let width = report
        .findings
        .iter()
        .map(|f| f.check.as_str().len())
        .max()
        .unwrap_or(0);
    let indent = " ".repeat(4 + 2 + width + 2);
    let mut out = String::new();
    for finding in &report.findings {
        let mut lines = finding.message.lines();
        out.push_str(&format!(
            "{:<4}  {:<width$}  {}\n",
            finding.status.label(),
            finding.check.as_str(),
            lines.next().unwrap_or("")
        ));
        for line in lines {
            out.push_str(&format!("{indent}{line}\n"));
        }
        if let Some(fix) = &finding.fix {
            out.push_str(&format!("{indent}fix: {fix}\n"));
        }
    }
    out.push_str(&format!(
        "\n{} ok, {} warnings, {} failed, {} skipped\n",
        report.count(Status::Ok),
        report.count(Status::Warn),
        report.count(Status::Fail),
        report.count(Status::Skipped)
    ));
    out
}

#[cfg(test)]
mod tests {
    use runbook_worker::doctor::{Check, Finding};

    use super::*;

    #[test]
    fn text_output_aligns_messages_and_indents_fixes_and_continuations() {
        let report = Report {
            findings: vec![
                Finding {
                    check: Check::Clock,
                    status: Status::Ok,
                    message: "fine".into(),
                    fix: None,
                },
                Finding {
                    check: Check::RunbookFiles,
                    status: Status::Fail,
                    message: "1 invalid:\n  a.toml:1:1: bad".into(),
                    fix: Some("fix it".into()),
                },
            ],
        };
        let expected = "\
OK    clock          fine
FAIL  runbook-files  1 invalid:
                       a.toml:1:1: bad
                     fix: fix it

1 ok, 0 warnings, 1 failed, 0 skipped
";
        assert_eq!(text(&report), expected);
    }
}
