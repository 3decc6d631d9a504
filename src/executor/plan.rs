//! Where each step's records go, decided from the runbook alone (pure).
//!
//! A step's records are piped straight into the next step when that step is its only
//! `for_each` consumer and can start before the source has finished: it reads nothing of
//! the source's stage through `steps.<name>` (those values exist only once the stage has
//! finished), and it is not a write that `max_changes` must count before it starts. Piped
//! steps run together as one *stage*. Records that a later, non-piped `for_each` reads are
//! spooled to a file instead; records a template reads as `steps.<name>.records` are kept
//! in memory.

use std::collections::BTreeSet;
use std::ops::RangeInclusive;

use crate::runbook::Runbook;

/// Where one step's records go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct StepPlan {
    /// Stream the records into the next step, which runs at the same time.
    pub pipe_to_next: bool,
    /// Write the records to a spool file for later `for_each` steps.
    pub spool: bool,
    /// Keep the records in memory for `steps.<name>.records`.
    pub keep: bool,
    /// Collect the keys a later `keys("step", "field")` reads.
    pub keys: bool,
    /// A write `for_each` under `max_changes`: count the writes it would make before the
    /// first one.
    pub count_first: bool,
}

impl StepPlan {
    /// Whether the records go anywhere besides being counted (reports aside).
    pub(crate) fn has_sink(&self) -> bool {
        self.pipe_to_next || self.spool || self.keep || self.keys
    }
}

/// The plan of a whole runbook: one [`StepPlan`] per step, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RunPlan {
    pub steps: Vec<StepPlan>,
}

impl RunPlan {
    pub(crate) fn new(runbook: &Runbook) -> Self {
        let keep: BTreeSet<&str> = runbook.steps_needing_records();
        let keyed = runbook.key_sets_needed();
        let guarded = runbook.max_changes.is_some();
        let mut steps = vec![StepPlan::default(); runbook.steps.len()];
        // The first step of the stage the step being looked at belongs to.
        let mut stage_start = 0;
        for (i, step) in runbook.steps.iter().enumerate() {
            let consumers: Vec<usize> = runbook
                .steps
                .iter()
                .enumerate()
                .filter(|(_, s)| s.for_each.as_deref() == Some(step.name.as_str()))
                .map(|(j, _)| j)
                .collect();
            let pipe = match runbook.steps.get(i + 1) {
                Some(next) if consumers == [i + 1] => {
                    let reads_stage = runbook.steps[stage_start..=i]
                        .iter()
                        .any(|s| next.step_references.contains_key(&s.name));
                    let must_count = guarded && !next.is_read();
                    !reads_stage && !must_count
                }
                _ => false,
            };
            steps[i] = StepPlan {
                pipe_to_next: pipe,
                spool: !consumers.is_empty() && !pipe,
                keep: keep.contains(step.name.as_str()),
                keys: keyed.contains_key(step.name.as_str()),
                count_first: guarded && step.for_each.is_some() && !step.is_read(),
            };
            if !pipe {
                stage_start = i + 1;
            }
        }
        Self { steps }
    }

    /// The stages, in order: runs of steps joined by pipes.
    pub(crate) fn stages(&self) -> Vec<RangeInclusive<usize>> {
        let mut stages = Vec::new();
        let mut start = 0;
        for (i, step) in self.steps.iter().enumerate() {
            if !step.pipe_to_next {
                stages.push(start..=i);
                start = i + 1;
            }
        }
        stages
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runbook::{CmdletPolicy, parse_runbook};

    fn plan(text: &str) -> RunPlan {
        let runbook = parse_runbook("r", "r.toml", text, &CmdletPolicy::default())
            .unwrap_or_else(|e| panic!("{e:?}"));
        RunPlan::new(&runbook)
    }

    const FIND: &str = "[[steps]]\nname = \"find\"\ncmdlet = \"Get-Mailbox\"\n";

    fn step(name: &str, cmdlet: &str, extra: &str) -> String {
        format!("[[steps]]\nname = \"{name}\"\ncmdlet = \"{cmdlet}\"\n{extra}\n")
    }

    /// (pipe, spool, keep, count_first) per step, and the stages.
    type Expected = (Vec<(bool, bool, bool, bool)>, Vec<RangeInclusive<usize>>);

    #[test]
    fn records_are_piped_spooled_or_kept_as_the_runbook_needs() {
        let each = |source: &str| format!("for_each = \"{source}\"");
        let cases: Vec<(String, Expected)> = vec![
            // A lone read: nothing to send anywhere.
            (
                FIND.to_string(),
                (vec![(false, false, false, false)], vec![0..=0]),
            ),
            // Source and its only consumer right after it: one stage.
            (
                format!("{FIND}{}", step("enable", "Enable-Mailbox", &each("find"))),
                (
                    vec![(true, false, false, false), (false, false, false, false)],
                    vec![0..=1],
                ),
            ),
            // max_changes: the write must be counted first, so the source is spooled.
            (
                format!(
                    "max_changes = 5\n{FIND}{}",
                    step("enable", "Enable-Mailbox", &each("find"))
                ),
                (
                    vec![(false, true, false, false), (false, false, false, true)],
                    vec![0..=0, 1..=1],
                ),
            ),
            // max_changes does not hold back a read consumer.
            (
                format!(
                    "max_changes = 5\n{FIND}{}",
                    step("stats", "Get-MailboxStatistics", &each("find"))
                ),
                (
                    vec![(true, false, false, false), (false, false, false, false)],
                    vec![0..=1],
                ),
            ),
            // Two consumers: spooled, read twice.
            (
                format!(
                    "{FIND}{}{}",
                    step("a", "Set-Mailbox", &each("find")),
                    step("b", "Get-CASMailbox", &each("find"))
                ),
                (
                    vec![
                        (false, true, false, false),
                        (false, false, false, false),
                        (false, false, false, false),
                    ],
                    vec![0..=0, 1..=1, 2..=2],
                ),
            ),
            // A step in between: the consumer starts after it, so the source is spooled.
            (
                format!(
                    "{FIND}{}{}",
                    step("domains", "Get-AcceptedDomain", ""),
                    step("clear", "Set-Mailbox", &each("find"))
                ),
                (
                    vec![
                        (false, true, false, false),
                        (false, false, false, false),
                        (false, false, false, false),
                    ],
                    vec![0..=0, 1..=1, 2..=2],
                ),
            ),
            // The consumer reads the source's count: it waits for the source to finish.
            (
                format!(
                    "{FIND}{}",
                    step(
                        "tag",
                        "Set-Mailbox",
                        "for_each = \"find\"\nparameters = { Identity = \"{{ item.Alias }}\", CustomAttribute2 = \"{{ steps.find.count }}\" }"
                    )
                ),
                (
                    vec![(false, true, false, false), (false, false, false, false)],
                    vec![0..=0, 1..=1],
                ),
            ),
            // steps.x.records: kept in memory; a chain of three pipes.
            (
                format!(
                    "{}{}{}{}",
                    step("domains", "Get-AcceptedDomain", ""),
                    step("forwarding", "Get-Mailbox", ""),
                    step("stats", "Get-MailboxStatistics", &each("forwarding")),
                    step(
                        "clear",
                        "Set-Mailbox",
                        "for_each = \"stats\"\nwhen = \"item.X not in (steps.domains.records | map(attribute='DomainName') | list)\""
                    )
                ),
                (
                    vec![
                        (false, false, true, false),
                        (true, false, false, false),
                        (true, false, false, false),
                        (false, false, false, false),
                    ],
                    vec![0..=0, 1..=3],
                ),
            ),
            // A step that reads an earlier member of the stage it would join is not piped.
            (
                format!(
                    "{FIND}{}{}",
                    step("stats", "Get-MailboxStatistics", &each("find")),
                    step(
                        "tag",
                        "Set-Mailbox",
                        "for_each = \"stats\"\nparameters = { Identity = \"{{ item.Alias }}\", CustomAttribute2 = \"{{ steps.find.count }}\" }"
                    )
                ),
                (
                    vec![
                        (true, false, false, false),
                        (false, true, false, false),
                        (false, false, false, false),
                    ],
                    vec![0..=1, 2..=2],
                ),
            ),
        ];
        for (text, (expected, stages)) in cases {
            let plan = plan(&text);
            let got: Vec<_> = plan
                .steps
                .iter()
                .map(|s| (s.pipe_to_next, s.spool, s.keep, s.count_first))
                .collect();
            assert_eq!(got, expected, "{text}");
            assert_eq!(plan.stages(), stages, "{text}");
        }
    }
}
