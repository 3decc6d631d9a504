//! Live updates of the dashboard's pages, by polling: a page's script asks `/live/index` or
//! `/live/jobs/{id}` with the `version` of what it shows and gets the page's blocks rendered
//! by the same templates as the page itself, plus, for a job, only the stream lines the page
//! does not have yet. The front page asks every few seconds; a running job's page asks with
//! `wait=1` (long polling), so the answer comes as soon as the job changes, or after a wait
//! with nothing new. A job's page stops asking once the job has ended.
//!
//! Why polling rather than server-sent events: every answer is an ordinary bounded request
//! under the connection cap and the request timeout, nothing stays open between two polls,
//! and the strict CSP needs nothing new (`connect-src 'self'`). Waiting is bounded twice: at
//! most [`MAX_WAIT`] (and half the request timeout) per request, and at most a quarter of
//! `http.max_connections` requests wait at once; the others are answered at once and the
//! script asks again a moment later.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;
use tokio::sync::Semaphore;

use super::bounds::{self, ShownJob};
use super::dashboard::{IndexData, job_context};
use super::{ApiError, AppState, ServerLimits};

/// The longest a live request waits for a change.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(20);
/// How often a waiting request looks again.
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// The bounds of waiting requests.
pub(crate) struct Live {
    waiters: Arc<Semaphore>,
    wait: Duration,
}

impl Live {
    pub(crate) fn new(limits: &ServerLimits) -> Self {
        Self {
            waiters: Arc::new(Semaphore::new((limits.max_connections / 4).max(1))),
            wait: MAX_WAIT.min(limits.request_timeout / 2),
        }
    }
}

/// A short digest of `value`: equal data, equal version (within one process).
pub(crate) fn version_of<T: Serialize + ?Sized>(value: &T) -> String {
    let mut hasher = DefaultHasher::new();
    serde_json::to_vec(value)
        .unwrap_or_default()
        .hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// What a job page shows changes with the job's record, its steps and its stream count.
pub(crate) fn job_version(job: &ShownJob) -> String {
    version_of(&(
        &job.job.job,
        &job.job.steps,
        job.job.streams.len(),
        job.streams_more,
    ))
}

/// Reads with `read`; with `wait`, again until its version differs from `known`, for at
/// most the wait bound. Answers at once without `known`, without a free waiting slot, or
/// while shutting down.
async fn until_changed<T, F, Fut>(
    state: &AppState,
    known: Option<&str>,
    wait: bool,
    mut read: F,
) -> Result<(T, String), ApiError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(T, String), ApiError>>,
{
    let permit = (wait && known.is_some())
        .then(|| state.live.waiters.clone().try_acquire_owned().ok())
        .flatten();
    let deadline = tokio::time::Instant::now() + state.live.wait;
    loop {
        let (value, version) = read().await?;
        let done = known != Some(version.as_str())
            || permit.is_none()
            || tokio::time::Instant::now() + CHECK_EVERY >= deadline
            || state.api.readiness().shutting_down;
        if done {
            return Ok((value, version));
        }
        tokio::time::sleep(CHECK_EVERY).await;
    }
}

/// The query of a live request: `version` (what the page shows), `after` (the last stream
/// line it has), `wait=1` (answer when something changed), `runbook` (the front page's
/// filter).
struct LiveQuery {
    version: Option<String>,
    after: u64,
    wait: bool,
}

fn live_query(
    query: &Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Result<LiveQuery, ApiError> {
    let Ok(Query(query)) = query else {
        return Err(ApiError::BadRequest(
            "cannot read the query string of a live update".to_string(),
        ));
    };
    let after = match query.get("after").map(String::as_str) {
        None | Some("") => 0,
        Some(text) => text.parse().map_err(|_| {
            ApiError::BadRequest(format!("after={text:?} must be a stream sequence number"))
        })?,
    };
    Ok(LiveQuery {
        version: query.get("version").filter(|v| !v.is_empty()).cloned(),
        after,
        wait: query.get("wait").is_some_and(|w| w == "1"),
    })
}

/// `GET /live/index?runbook=&version=`: the front page's runbooks and jobs.
pub(crate) async fn index(
    State(state): State<AppState>,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let live = live_query(&query)?;
    let filter = super::dashboard::runbook_filter(query);
    let (data, version) = until_changed(&state, live.version.as_deref(), live.wait, || async {
        let data = IndexData::read(&state, filter.clone()).await;
        let version = version_of(&data);
        Ok((data, version))
    })
    .await?;
    // The page has this version already: nothing to send.
    let names: &[&str] = if live.version.as_deref() == Some(version.as_str()) {
        &[]
    } else {
        &["runbook_rows", "chart", "job_rows"]
    };
    let blocks = state
        .pages
        .render_blocks("index.html", data.context(&state), names)?;
    Ok(Json(json!({ "version": version, "ended": false, "blocks": blocks })).into_response())
}

/// `GET /live/jobs/{id}?after=&version=`: the job's facts, steps and new stream lines.
pub(crate) async fn job(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let live = live_query(&query)?;
    let (mut job, version) = until_changed(&state, live.version.as_deref(), live.wait, || async {
        match state.api.get_job(&id).await? {
            Some(job) => {
                let job = bounds::bound_job(job);
                let version = job_version(&job);
                Ok((job, version))
            }
            None => Err(ApiError::NotFound(format!(
                "no job with id {id:?} in the history"
            ))),
        }
    })
    .await?;
    let names: &[&str] = if live.version.as_deref() == Some(version.as_str()) {
        &[]
    } else {
        &["job_head", "step_rows", "streams_more"]
    };
    let blocks =
        state
            .pages
            .render_blocks("job.html", job_context(&state, &job, &version), names)?;
    let last = job.job.streams.last().map_or(live.after, |s| s.seq);
    job.job.streams.retain(|s| s.seq > live.after);
    let new_lines = if job.job.streams.is_empty() {
        String::new()
    } else {
        state
            .pages
            .render_blocks(
                "job.html",
                job_context(&state, &job, &version),
                &["stream_rows"],
            )?
            .remove("stream_rows")
            .unwrap_or_default()
    };
    Ok(Json(json!({
        "version": version,
        "ended": !job.is_active(),
        "status": job.job.job.status.as_str(),
        "blocks": blocks,
        "append": { "stream_rows": new_lines },
        "after": last,
    }))
    .into_response())
}
