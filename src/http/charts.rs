//! The dashboard's pictures of the job history, as inline SVG built on the server: no
//! script, no external resource, nothing the CSP must allow (colours come from the
//! stylesheet through classes, geometry from attributes). One bar per job for a runbook's
//! recent jobs, and a 24-hour timeline of every job for the front page. Every value written
//! into the markup is escaped here, since the templates insert it as is. (SVG inside HTML
//! needs no `xmlns`.)

use chrono::{DateTime, Duration, Utc};

use crate::history::JobSummary;

use super::dashboard::duration_text;

/// Bars of one runbook's chart: its last jobs.
pub(crate) const MAX_BARS: usize = 50;
/// Marks on the front page's timeline: the newest jobs of the last 24 hours.
pub(crate) const MAX_TIMELINE_MARKS: usize = 500;
/// How far back the timeline reaches.
pub(crate) const TIMELINE_SPAN: Duration = Duration::hours(24);

const WIDTH: f64 = 800.0;
/// Horizontal room per bar (so a bar is as wide with 3 jobs as with 50).
const SLOT: f64 = WIDTH / MAX_BARS as f64;
const BAR_WIDTH: f64 = SLOT - 4.0;
/// Height of the tallest bar; shorter ones scale to it.
const PLOT_HEIGHT: f64 = 100.0;
/// Bars of jobs with no (or a zero) duration stay visible.
const MIN_BAR: f64 = 2.0;
const TIMELINE_HEIGHT: f64 = 30.0;

/// Text for an SVG text node or attribute value, escaped as the templates escape.
fn escape(text: &str) -> String {
    minijinja::HtmlEscape(text).to_string()
}

/// The status as a class of a fixed set (`status-completed`, …, else `status-other`).
fn status_class(job: &JobSummary) -> String {
    format!("status-{}", job.status.as_str().to_ascii_lowercase())
}

fn duration_of(job: &JobSummary) -> Option<i64> {
    job.duration_ms.filter(|ms| *ms >= 0)
}

/// A bar chart of `jobs` (newest first, as the history lists them): the newest
/// [`MAX_BARS`], oldest on the left, height by duration relative to the longest, colour by
/// status, a `<title>` per bar with id, status and duration.
pub(crate) fn history_bars(jobs: &[JobSummary]) -> String {
    let shown: Vec<&JobSummary> = jobs.iter().take(MAX_BARS).rev().collect();
    let longest = shown
        .iter()
        .filter_map(|j| duration_of(j))
        .max()
        .unwrap_or(0);
    let height = PLOT_HEIGHT + 20.0;
    let mut svg = format!(
        r#"<svg class="chart history-bars" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" role="img" aria-label="Duration and status of the last {count} jobs" data-bars="{count}">"#,
        count = shown.len()
    );
    svg.push_str(&format!(
        r#"<line class="axis" x1="0" y1="{PLOT_HEIGHT}" x2="{WIDTH}" y2="{PLOT_HEIGHT}"/>"#
    ));
    if shown.is_empty() {
        svg.push_str(r#"<text class="label" x="4" y="60">No jobs yet.</text></svg>"#);
        return svg;
    }
    for (i, job) in shown.iter().enumerate() {
        let duration = duration_of(job);
        let bar = match duration {
            Some(ms) if longest > 0 => (ms as f64 / longest as f64 * PLOT_HEIGHT).max(MIN_BAR),
            _ => MIN_BAR,
        };
        let took = duration.map_or_else(|| "no duration".to_string(), duration_text);
        svg.push_str(&format!(
            r#"<rect class="bar {class}" x="{x:.1}" y="{y:.1}" width="{BAR_WIDTH:.1}" height="{bar:.1}"><title>{title}</title></rect>"#,
            class = status_class(job),
            x = i as f64 * SLOT + 2.0,
            y = PLOT_HEIGHT - bar,
            title = escape(&format!("{} · {} · {took}", job.id.as_str(), job.status.as_str())),
        ));
    }
    svg.push_str(&format!(
        r#"<text class="label" x="0" y="{y}">oldest</text><text class="label" x="{WIDTH}" y="{y}" text-anchor="end">newest · tallest {longest}</text></svg>"#,
        y = PLOT_HEIGHT + 15.0,
        longest = escape(&duration_text(longest)),
    ));
    svg
}

/// When a job counts on the timeline: when it started, else when it was made.
fn instant_of(job: &JobSummary) -> DateTime<Utc> {
    job.started_at.unwrap_or(job.created_at)
}

/// A timeline of the [`TIMELINE_SPAN`] up to `now`: one mark per job of `jobs` (newest
/// first) that falls in it, at most [`MAX_TIMELINE_MARKS`], coloured by status, with hour
/// ticks every 6 hours.
pub(crate) fn timeline(jobs: &[JobSummary], now: DateTime<Utc>) -> String {
    let start = now - TIMELINE_SPAN;
    let span_ms = TIMELINE_SPAN.num_milliseconds() as f64;
    let inside: Vec<&JobSummary> = jobs
        .iter()
        .filter(|j| (start..=now).contains(&instant_of(j)))
        .take(MAX_TIMELINE_MARKS)
        .collect();
    let height = TIMELINE_HEIGHT + 24.0;
    let mut svg = format!(
        r#"<svg class="chart timeline" viewBox="-4 0 {w} {height}" width="{w}" height="{height}" role="img" aria-label="Jobs of the last 24 hours" data-marks="{count}">"#,
        w = WIDTH + 8.0,
        count = inside.len()
    );
    svg.push_str(&format!(
        r#"<line class="axis" x1="0" y1="{TIMELINE_HEIGHT}" x2="{WIDTH}" y2="{TIMELINE_HEIGHT}"/>"#
    ));
    for hours in (0..=24).step_by(6) {
        let x = f64::from(hours) / 24.0 * WIDTH;
        let at = start + Duration::hours(i64::from(hours));
        let anchor = match hours {
            0 => "start",
            24 => "end",
            _ => "middle",
        };
        svg.push_str(&format!(
            r#"<line class="tick" x1="{x:.1}" y1="{TIMELINE_HEIGHT}" x2="{x:.1}" y2="{y2}"/><text class="label" x="{x:.1}" y="{ty}" text-anchor="{anchor}">{label}</text>"#,
            y2 = TIMELINE_HEIGHT + 4.0,
            ty = TIMELINE_HEIGHT + 17.0,
            label = at.format("%H:%M UTC"),
        ));
    }
    for job in &inside {
        let at = instant_of(job);
        let x = (at - start).num_milliseconds() as f64 / span_ms * WIDTH;
        let took =
            duration_of(job).map_or_else(String::new, |ms| format!(" · {}", duration_text(ms)));
        svg.push_str(&format!(
            r#"<rect class="mark {class}" x="{x:.1}" y="4" width="3" height="{h}"><title>{title}</title></rect>"#,
            class = status_class(job),
            x = x - 1.5,
            h = TIMELINE_HEIGHT - 8.0,
            title = escape(&format!(
                "{} · {} · {} · {}{took}",
                job.runbook,
                job.id.as_str(),
                job.status.as_str(),
                at.format("%Y-%m-%d %H:%M:%S UTC")
            )),
        ));
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::JobStatus;

    fn job(n: usize, status: JobStatus, at: DateTime<Utc>, duration_ms: Option<i64>) -> JobSummary {
        let mut job = crate::http::fixtures::job_with_streams(0).job;
        job.id = format!("01HZX3J5Q5T4B5Y1C8W9Y6{n:04}").parse().unwrap();
        job.status = status;
        job.created_at = at;
        job.started_at = Some(at);
        job.duration_ms = duration_ms;
        job
    }

    fn heights(svg: &str) -> Vec<f64> {
        svg.split("<rect class=\"bar ")
            .skip(1)
            .map(|bar| {
                let h = bar.split("height=\"").nth(1).unwrap();
                h[..h.find('"').unwrap()].parse().unwrap()
            })
            .collect()
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap()
    }

    #[test]
    fn bars_scale_to_the_longest_job_oldest_first() {
        let jobs = [
            job(3, JobStatus::Running, now(), None),
            job(2, JobStatus::Failed, now(), Some(500)),
            job(1, JobStatus::Completed, now(), Some(2000)),
        ];
        let svg = history_bars(&jobs);
        assert_eq!(heights(&svg), vec![100.0, 25.0, MIN_BAR]);
        assert!(svg.contains(r#"data-bars="3""#), "{svg}");
        let classes: Vec<&str> = svg
            .split("<rect class=\"bar ")
            .skip(1)
            .map(|b| &b[..b.find('"').unwrap()])
            .collect();
        assert_eq!(
            classes,
            ["status-completed", "status-failed", "status-running"]
        );
        assert!(
            svg.contains("<title>01HZX3J5Q5T4B5Y1C8W9Y60001 · Completed · 2.0s</title>"),
            "{svg}"
        );
        assert!(svg.contains("· Running · no duration</title>"), "{svg}");
    }

    #[test]
    fn an_empty_history_and_a_single_job_draw_sensibly() {
        let empty = history_bars(&[]);
        assert!(empty.contains(r#"data-bars="0""#) && empty.contains("No jobs yet."));
        assert!(empty.ends_with("</svg>"));
        let one = history_bars(&[job(1, JobStatus::Completed, now(), Some(0))]);
        assert_eq!(
            heights(&one),
            vec![MIN_BAR],
            "a zero duration stays visible"
        );
        let one = history_bars(&[job(1, JobStatus::Completed, now(), Some(90_000))]);
        assert_eq!(heights(&one), vec![PLOT_HEIGHT]);
        let empty = timeline(&[], now());
        assert!(empty.contains(r#"data-marks="0""#) && empty.ends_with("</svg>"));
    }

    #[test]
    fn at_most_fifty_bars_the_newest() {
        let jobs: Vec<JobSummary> = (0..80)
            .rev()
            .map(|n| job(n, JobStatus::Completed, now(), Some(n as i64 + 1)))
            .collect();
        let svg = history_bars(&jobs);
        assert_eq!(heights(&svg).len(), MAX_BARS);
        assert!(svg.contains(r#"data-bars="50""#));
        assert!(
            svg.contains("Y60079 ·") && !svg.contains("Y60029 ·"),
            "{svg}"
        );
    }

    #[test]
    fn the_timeline_places_jobs_of_the_last_day_and_is_capped() {
        let jobs = [
            job(
                1,
                JobStatus::Completed,
                now() - Duration::hours(12),
                Some(1000),
            ),
            job(2, JobStatus::Failed, now(), None),
            job(3, JobStatus::Completed, now() - Duration::hours(25), None),
            job(4, JobStatus::Completed, now() + Duration::hours(1), None),
        ];
        let svg = timeline(&jobs, now());
        assert!(svg.contains(r#"data-marks="2""#), "{svg}");
        assert!(
            svg.contains(r#"<rect class="mark status-completed" x="398.5""#),
            "half way: {svg}"
        );
        assert!(
            svg.contains(r#"<rect class="mark status-failed" x="798.5""#),
            "{svg}"
        );
        assert!(!svg.contains("Y60003") && !svg.contains("Y60004"), "{svg}");
        assert_eq!(
            svg.matches("<text class=\"label\"").count(),
            5,
            "a tick every 6 h"
        );

        let many: Vec<JobSummary> = (0..MAX_TIMELINE_MARKS + 100)
            .map(|n| {
                job(
                    n,
                    JobStatus::Completed,
                    now() - Duration::seconds(n as i64),
                    None,
                )
            })
            .collect();
        let svg = timeline(&many, now());
        assert_eq!(
            svg.matches("<rect class=\"mark").count(),
            MAX_TIMELINE_MARKS
        );
    }

    #[test]
    fn text_in_the_pictures_is_escaped() {
        let mut hostile = job(1, JobStatus::Completed, now(), Some(5));
        hostile.runbook = "<script>x</script>\"".into();
        let svg = timeline(&[hostile], now());
        assert!(!svg.contains("<script>"), "{svg}");
        assert!(
            svg.contains("&lt;script&gt;x&lt;&#x2f;script&gt;&quot;"),
            "{svg}"
        );
    }
}
