//! The worker's Prometheus metrics: one [`Metrics`] value, shared behind an `Arc`, with a
//! plain method per event the scheduler, executor, exchange client and identity report, and
//! [`Metrics::render`] for `/metrics`.
//!
//! It knows nothing of HTTP (the `http` module serves the text) nor of the types of the modules
//! that report to it: callers pass names and outcomes as strings. Every name starts with
//! `runbook_worker_`. Label values are runbook names, cmdlet names, job statuses and outcome
//! words, never parameters, tokens or anything else a caller could make unbounded or secret.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// The prefix of every metric name.
pub const PREFIX: &str = "runbook_worker";

/// The content type of [`Metrics::render`]'s output (the OpenMetrics text format, which
/// Prometheus scrapes natively).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds (seconds) of the job duration buckets: from quick reports to multi-hour
/// mailbox sweeps.
const JOB_DURATION_BUCKETS: [f64; 12] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0,
];

/// Upper bounds (seconds) of the schedule lateness buckets: the fine end checks the 50 ms
/// fire-precision target, the coarse end shows catch-up runs after downtime.
const LATENESS_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 3600.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    commit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunbookStatusLabels {
    runbook: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunbookReasonLabels {
    runbook: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunbookLabels {
    runbook: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CmdletOutcomeLabels {
    cmdlet: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetOutcomeLabels {
    target: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

fn job_duration_histogram() -> Histogram {
    Histogram::new(JOB_DURATION_BUCKETS)
}

/// Every metric of the worker. Cheap to update from any thread; share it as `Arc<Metrics>`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    jobs: Family<RunbookStatusLabels, Counter>,
    occurrences_dropped: Family<RunbookReasonLabels, Counter>,
    job_duration: Family<RunbookLabels, Histogram, fn() -> Histogram>,
    exchange_calls: Family<CmdletOutcomeLabels, Counter>,
    exchange_throttle_wait: Counter<f64, AtomicU64>,
    token_refreshes: Family<OutcomeLabels, Counter>,
    schedule_lateness: Histogram,
    runbooks_loaded: Gauge,
    runbooks_invalid: Gauge,
    jobs_running: Gauge,
    notifications: Family<TargetOutcomeLabels, Counter>,
    last_run: Family<RunbookLabels, Gauge>,
    last_success: Family<RunbookLabels, Gauge>,
    /// The runbooks that have last-run series, so that [`Metrics::retain_runbooks`] can
    /// remove those of deleted runbooks (a family does not list its label sets).
    timestamped: Mutex<BTreeSet<String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// All metrics at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let jobs = Family::<RunbookStatusLabels, Counter>::default();
        registry.register(
            "jobs",
            "Jobs recorded, by runbook and final status",
            jobs.clone(),
        );
        let occurrences_dropped = Family::<RunbookReasonLabels, Counter>::default();
        registry.register(
            "occurrences_dropped",
            "Occurrences that did not run because the job history could not record them, by runbook and reason (disk_full, locked, io_error, closed, other)",
            occurrences_dropped.clone(),
        );
        let job_duration =
            Family::<RunbookLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                job_duration_histogram,
            );
        registry.register_with_unit(
            "job_duration",
            "How long jobs ran, from start to end, by runbook",
            Unit::Seconds,
            job_duration.clone(),
        );
        let exchange_calls = Family::<CmdletOutcomeLabels, Counter>::default();
        registry.register(
            "exchange_calls",
            "Exchange Online cmdlet calls, by cmdlet and outcome",
            exchange_calls.clone(),
        );
        let exchange_throttle_wait = Counter::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "exchange_throttle_wait",
            "Time spent waiting because Exchange Online throttled the worker",
            Unit::Seconds,
            exchange_throttle_wait.clone(),
        );
        let token_refreshes = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "token_refreshes",
            "Access token requests to the managed identity, by outcome",
            token_refreshes.clone(),
        );
        let schedule_lateness = Histogram::new(LATENESS_BUCKETS);
        registry.register_with_unit(
            "schedule_lateness",
            "How long after its scheduled instant each job started",
            Unit::Seconds,
            schedule_lateness.clone(),
        );
        let runbooks_loaded = Gauge::default();
        registry.register(
            "runbooks_loaded",
            "Runbooks currently loaded (scheduled or on demand)",
            runbooks_loaded.clone(),
        );
        let runbooks_invalid = Gauge::default();
        registry.register(
            "runbooks_invalid",
            "Runbook files that currently fail validation",
            runbooks_invalid.clone(),
        );
        let jobs_running = Gauge::default();
        registry.register("jobs_running", "Jobs running now", jobs_running.clone());
        let notifications = Family::<TargetOutcomeLabels, Counter>::default();
        registry.register(
            "notifications",
            "Notifications, by target and outcome (delivered, failed, gone, suppressed, dropped, disabled, abandoned)",
            notifications.clone(),
        );
        let last_run = Family::<RunbookLabels, Gauge>::default();
        registry.register(
            "last_run_timestamp_seconds",
            "When the last job of each runbook that ran ended (Unix seconds), whatever its status",
            last_run.clone(),
        );
        let last_success = Family::<RunbookLabels, Gauge>::default();
        registry.register(
            "last_success_timestamp_seconds",
            "When the last Completed job of each runbook ended (Unix seconds); dry runs do not count",
            last_success.clone(),
        );
        let build_info = Family::<BuildLabels, Gauge>::default();
        registry.register(
            "build_info",
            "Always 1; the labels name the running build",
            build_info.clone(),
        );
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
                commit: label(env!("RUNBOOK_WORKER_GIT_COMMIT")),
            })
            .set(1);
        Self {
            registry,
            jobs,
            occurrences_dropped,
            job_duration,
            exchange_calls,
            exchange_throttle_wait,
            token_refreshes,
            schedule_lateness,
            runbooks_loaded,
            runbooks_invalid,
            jobs_running,
            notifications,
            last_run,
            last_success,
            timestamped: Mutex::new(BTreeSet::new()),
        }
    }

    /// A job of `runbook` that ran ended at `ended_at` (Unix seconds); `success`: it
    /// Completed (and was not a dry run).
    pub fn runbook_ran(&self, runbook: &str, ended_at: i64, success: bool) {
        let labels = RunbookLabels {
            runbook: label(runbook),
        };
        self.last_run.get_or_create(&labels).set(ended_at);
        if success {
            self.last_success.get_or_create(&labels).set(ended_at);
        }
        self.timestamped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(runbook.to_string());
    }

    /// Removes the last-run series of runbooks `keep` says no longer exist, so the series
    /// stay bounded by the catalog.
    pub fn retain_runbooks(&self, keep: impl Fn(&str) -> bool) {
        let mut names = self.timestamped.lock().unwrap_or_else(|p| p.into_inner());
        names.retain(|name| {
            if keep(name) {
                return true;
            }
            let labels = RunbookLabels {
                runbook: label(name),
            };
            self.last_run.remove(&labels);
            self.last_success.remove(&labels);
            false
        });
    }

    /// A job ran and ended with `status` (`Completed`, `Failed`, …) after `duration`.
    pub fn job_finished(&self, runbook: &str, status: &str, duration: Duration) {
        self.job_recorded(runbook, status);
        self.job_duration
            .get_or_create(&RunbookLabels {
                runbook: label(runbook),
            })
            .observe(duration.as_secs_f64());
    }

    /// A job was recorded without running (`Skipped` by the overlap policy, `Interrupted` at
    /// start-up): it counts in `jobs_total` but has no duration.
    pub fn job_recorded(&self, runbook: &str, status: &str) {
        self.jobs
            .get_or_create(&RunbookStatusLabels {
                runbook: label(runbook),
                status: label(status),
            })
            .inc();
    }

    /// An occurrence of `runbook` was dropped: the job history refused to record it for
    /// `reason` (a [`crate::history::FailureKind`] word).
    pub fn occurrence_dropped(&self, runbook: &str, reason: &str) {
        self.occurrences_dropped
            .get_or_create(&RunbookReasonLabels {
                runbook: label(runbook),
                reason: label(reason),
            })
            .inc();
    }

    /// A job starts running: `jobs_running` counts it until the returned guard is dropped,
    /// so a job task that panics or is cancelled still leaves the gauge right.
    #[must_use = "the job counts as running only while the guard is alive"]
    pub fn job_running(&self) -> RunningJob {
        self.jobs_running.inc();
        RunningJob {
            gauge: self.jobs_running.clone(),
        }
    }

    /// One Exchange cmdlet call ended with `outcome` (`ok`, `throttled`, `failed`, …).
    pub fn exchange_call(&self, cmdlet: &str, outcome: &str) {
        self.exchange_calls
            .get_or_create(&CmdletOutcomeLabels {
                cmdlet: label(cmdlet),
                outcome: label(outcome),
            })
            .inc();
    }

    /// The Exchange client waited `waited` because of throttling (Retry-After or back-off).
    pub fn exchange_throttle_wait(&self, waited: Duration) {
        self.exchange_throttle_wait.inc_by(waited.as_secs_f64());
    }

    /// A token request to the managed identity ended with `outcome` (`ok`, `failed`, …).
    pub fn token_refresh(&self, outcome: &str) {
        self.token_refreshes
            .get_or_create(&OutcomeLabels {
                outcome: label(outcome),
            })
            .inc();
    }

    /// A job started `lateness` after its scheduled instant (zero when it started early or on
    /// time: callers pass `Duration::ZERO` rather than a negative value).
    pub fn schedule_lateness(&self, lateness: Duration) {
        self.schedule_lateness.observe(lateness.as_secs_f64());
    }

    /// A notification to `target` (a `[[notify.targets]]` name) ended with `outcome`.
    pub fn notification(&self, target: &str, outcome: &str) {
        self.notifications
            .get_or_create(&TargetOutcomeLabels {
                target: label(target),
                outcome: label(outcome),
            })
            .inc();
    }

    /// The catalog now holds `loaded` runbooks and `invalid` files that fail validation.
    pub fn set_runbooks(&self, loaded: usize, invalid: usize) {
        self.runbooks_loaded.set(saturating_i64(loaded));
        self.runbooks_invalid.set(saturating_i64(invalid));
    }

    /// The OpenMetrics text of every metric, ending with `# EOF` (see [`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail; an error here would be a metric the encoder
        // refuses, which must not take `/metrics` down: serve what was written.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::warn!(error = %e, "cannot encode every metric");
        }
        text
    }
}

/// A label value in the text format's escaped form: prometheus-client writes label values
/// verbatim, so a quote or backslash in a runbook name would otherwise break the exposition.
fn label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn saturating_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Keeps a job counted in `runbook_worker_jobs_running` until dropped.
#[derive(Debug)]
pub struct RunningJob {
    gauge: Gauge,
}

impl Drop for RunningJob {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample line that starts with `series ` (name plus labels).
    fn sample(text: &str, series: &str) -> Option<String> {
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{series} ")))
            .map(str::to_string)
    }

    #[test]
    fn a_fresh_registry_renders_the_unlabelled_metrics_at_zero() {
        let text = Metrics::new().render();
        for (series, want) in [
            ("runbook_worker_exchange_throttle_wait_seconds_total", "0.0"),
            ("runbook_worker_schedule_lateness_seconds_count", "0"),
            ("runbook_worker_runbooks_loaded", "0"),
            ("runbook_worker_runbooks_invalid", "0"),
            ("runbook_worker_jobs_running", "0"),
        ] {
            assert_eq!(
                sample(&text, series).as_deref(),
                Some(want),
                "{series}:\n{text}"
            );
        }
        // prometheus-client leaves out a labelled family until it has a series.
        assert!(!text.contains("runbook_worker_jobs_total"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn last_run_gauges_follow_the_runs_and_leave_with_their_runbook() {
        let m = Metrics::new();
        m.runbook_ran("archive", 1_700_000_000, true);
        m.runbook_ran("archive", 1_700_000_600, false);
        m.runbook_ran("gone", 1_700_000_100, true);
        let text = m.render();
        for (series, want) in [
            (
                r#"runbook_worker_last_run_timestamp_seconds{runbook="archive"}"#,
                "1700000600",
            ),
            (
                r#"runbook_worker_last_success_timestamp_seconds{runbook="archive"}"#,
                "1700000000",
            ),
            (
                r#"runbook_worker_last_success_timestamp_seconds{runbook="gone"}"#,
                "1700000100",
            ),
        ] {
            assert_eq!(
                sample(&text, series).as_deref(),
                Some(want),
                "{series}:\n{text}"
            );
        }
        assert!(
            text.contains("# TYPE runbook_worker_last_success_timestamp_seconds gauge\n"),
            "{text}"
        );
        let build = format!(
            r#"runbook_worker_build_info{{version="{}",commit="{}"}}"#,
            env!("CARGO_PKG_VERSION"),
            env!("RUNBOOK_WORKER_GIT_COMMIT")
        );
        assert_eq!(sample(&text, &build).as_deref(), Some("1"), "{text}");

        m.retain_runbooks(|name| name == "archive");
        let text = m.render();
        assert!(!text.contains(r#"runbook="gone""#), "{text}");
        assert!(text.contains(r#"runbook="archive""#), "{text}");
    }

    #[test]
    fn each_method_moves_its_own_series() {
        let m = Metrics::new();
        m.job_finished("archive", "Completed", Duration::from_secs(3));
        m.job_finished("archive", "Completed", Duration::from_secs(40));
        m.job_finished("archive", "Failed", Duration::from_millis(500));
        m.job_recorded("archive", "Skipped");
        m.exchange_call("Get-Mailbox", "ok");
        m.exchange_call("Get-Mailbox", "ok");
        m.exchange_call("Set-Mailbox", "throttled");
        m.exchange_throttle_wait(Duration::from_millis(1500));
        m.exchange_throttle_wait(Duration::from_secs(2));
        m.token_refresh("ok");
        m.token_refresh("failed");
        m.schedule_lateness(Duration::from_millis(7));
        m.set_runbooks(12, 2);
        let text = m.render();

        for (name, kind) in [
            ("runbook_worker_jobs", "counter"),
            ("runbook_worker_job_duration_seconds", "histogram"),
            ("runbook_worker_exchange_calls", "counter"),
            ("runbook_worker_exchange_throttle_wait_seconds", "counter"),
            ("runbook_worker_token_refreshes", "counter"),
            ("runbook_worker_schedule_lateness_seconds", "histogram"),
            ("runbook_worker_runbooks_loaded", "gauge"),
            ("runbook_worker_runbooks_invalid", "gauge"),
            ("runbook_worker_jobs_running", "gauge"),
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "{name} {kind} missing in:\n{text}"
            );
            assert!(text.contains(&format!("# HELP {name} ")), "{name}:\n{text}");
        }
        let table: &[(&str, &str)] = &[
            (
                r#"runbook_worker_jobs_total{runbook="archive",status="Completed"}"#,
                "2",
            ),
            (
                r#"runbook_worker_jobs_total{runbook="archive",status="Failed"}"#,
                "1",
            ),
            (
                r#"runbook_worker_jobs_total{runbook="archive",status="Skipped"}"#,
                "1",
            ),
            (
                r#"runbook_worker_job_duration_seconds_count{runbook="archive"}"#,
                "3",
            ),
            (
                r#"runbook_worker_job_duration_seconds_sum{runbook="archive"}"#,
                "43.5",
            ),
            (
                r#"runbook_worker_job_duration_seconds_bucket{le="1.0",runbook="archive"}"#,
                "1",
            ),
            (
                r#"runbook_worker_job_duration_seconds_bucket{le="5.0",runbook="archive"}"#,
                "2",
            ),
            (
                r#"runbook_worker_exchange_calls_total{cmdlet="Get-Mailbox",outcome="ok"}"#,
                "2",
            ),
            (
                r#"runbook_worker_exchange_calls_total{cmdlet="Set-Mailbox",outcome="throttled"}"#,
                "1",
            ),
            ("runbook_worker_exchange_throttle_wait_seconds_total", "3.5"),
            (r#"runbook_worker_token_refreshes_total{outcome="ok"}"#, "1"),
            (
                r#"runbook_worker_token_refreshes_total{outcome="failed"}"#,
                "1",
            ),
            ("runbook_worker_schedule_lateness_seconds_count", "1"),
            (
                r#"runbook_worker_schedule_lateness_seconds_bucket{le="0.005"}"#,
                "0",
            ),
            (
                r#"runbook_worker_schedule_lateness_seconds_bucket{le="0.01"}"#,
                "1",
            ),
            ("runbook_worker_runbooks_loaded", "12"),
            ("runbook_worker_runbooks_invalid", "2"),
            ("runbook_worker_jobs_running", "0"),
        ];
        for (series, want) in table {
            assert_eq!(
                sample(&text, series).as_deref(),
                Some(*want),
                "{series} in:\n{text}"
            );
        }
    }

    #[test]
    fn the_running_gauge_follows_the_guards() {
        let m = Metrics::new();
        let first = m.job_running();
        let second = m.job_running();
        assert_eq!(
            sample(&m.render(), "runbook_worker_jobs_running").as_deref(),
            Some("2")
        );
        drop(first);
        assert_eq!(
            sample(&m.render(), "runbook_worker_jobs_running").as_deref(),
            Some("1")
        );
        drop(second);
        assert_eq!(
            sample(&m.render(), "runbook_worker_jobs_running").as_deref(),
            Some("0")
        );
    }

    #[test]
    fn label_values_are_escaped_in_the_text_format() {
        let m = Metrics::new();
        m.job_recorded("quote\"and\\slash\nnewline", "Failed");
        let text = m.render();
        assert!(
            text.contains(r#"runbook="quote\"and\\slash\nnewline""#),
            "label not escaped:\n{text}"
        );
    }
}
