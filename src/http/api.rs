//! The probes, `/metrics` and the JSON API. Handlers validate the request, call the
//! [`WorkerApi`](super::WorkerApi) and turn its answer or [`ApiError`] into a status and a JSON
//! body; every error body is `{"error": "…"}`.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde_json::json;

use super::bounds;
use super::{
    ApiError, AppState, CancelOutcome, DEFAULT_JOBS_LIMIT, JOB_STATUSES, JobFilter, MAX_JOBS_LIMIT,
    RequestedVia, RunRequest,
};
use crate::telemetry::metrics;

/// The header the dashboard's script sets so the history can tell its runs from webhooks.
pub(crate) const SOURCE_HEADER: &str = "x-runbook-worker-source";

const DEFAULT_OCCURRENCES_LIMIT: usize = 10;
const MAX_OCCURRENCES_LIMIT: usize = 100;

/// `{"error": message}` with `status`.
pub(crate) fn error_response(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

impl ApiError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// What the client is told. An internal error's detail stays in the log, under a
    /// reference the client can quote.
    pub(crate) fn public_message(&self) -> String {
        match self {
            ApiError::Internal(source) => {
                let reference = uuid::Uuid::new_v4().simple().to_string();
                let reference = &reference[..12];
                tracing::error!(reference, error = %source, "internal error answering an HTTP request");
                format!("internal error (reference {reference}): the worker's log has the details")
            }
            other => other.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error_response(self.status(), &self.public_message())
    }
}

/// Longest error text of axum's own rejections that is passed on.
const MAX_REJECTION_TEXT: usize = 1024;

/// Turns the errors axum produces itself (405, 413, malformed paths and queries, …), which
/// are plain text or empty, into `{"error": "…"}` so every API error is JSON. HTML error
/// pages of the dashboard and JSON errors of the handlers pass unchanged.
pub(crate) async fn json_errors(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type.starts_with("application/json") || content_type.starts_with("text/html") {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_REJECTION_TEXT)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = match status {
        // The Allow header is added after this layer has run, so it is named, not quoted.
        StatusCode::METHOD_NOT_ALLOWED => format!(
            "method {method} is not allowed on this route: the Allow header lists the methods it takes"
        ),
        StatusCode::PAYLOAD_TOO_LARGE => format!(
            "the request body is larger than {} KiB",
            super::MAX_BODY_BYTES / 1024
        ),
        _ if text.is_empty() => status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_lowercase(),
        _ => text,
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    let json = error_response(status, &message);
    let (json_parts, json_body) = json.into_parts();
    for (name, value) in &json_parts.headers {
        parts.headers.insert(name, value.clone());
    }
    Response::from_parts(parts, json_body)
}

pub(crate) async fn healthz() -> Response {
    Json(json!({ "status": "alive" })).into_response()
}

pub(crate) async fn readyz(State(state): State<AppState>) -> Response {
    let readiness = state.api.readiness();
    let problems = readiness.problems();
    let status = if problems.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": problems.is_empty(),
        "problems": problems,
        "checks": readiness,
    });
    (status, Json(body)).into_response()
}

pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(metrics::CONTENT_TYPE),
        )],
        state.metrics.render(),
    )
        .into_response()
}

pub(crate) async fn no_route() -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "no such route: see README.md, section \"HTTP API, metrics and dashboard\"",
    )
}

pub(crate) async fn list_runbooks(State(state): State<AppState>) -> Response {
    let bounded = bounds::bound_runbooks(state.api.runbooks());
    Json(json!({
        "runbooks": bounded.view.runbooks,
        "invalid_files": bounded.view.invalid_files,
        "more_runbooks": bounded.more_runbooks,
        "more_invalid_files": bounded.more_invalid_files,
    }))
    .into_response()
}

pub(crate) async fn get_runbook(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    state
        .api
        .runbooks()
        .runbooks
        .into_iter()
        .find(|r| r.name == name)
        .map(|mut r| {
            if let Some(error) = r.validation_error.as_mut() {
                bounds::bound_file_error(error);
            }
            Json(r).into_response()
        })
        .ok_or_else(|| no_runbook(&name))
}

fn no_runbook(name: &str) -> ApiError {
    ApiError::NotFound(format!(
        "no runbook named {name:?} is loaded (GET /api/runbooks lists them)"
    ))
}

pub(crate) async fn run_runbook(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut request = parse_run_request(&body)?;
    request.requested_via = match headers.get(SOURCE_HEADER).map(HeaderValue::as_bytes) {
        Some(b"dashboard") => RequestedVia::Dashboard,
        _ => RequestedVia::Api,
    };
    let accepted = state.api.run_runbook(&name, request).await?;
    tracing::info!(
        runbook = name,
        job_id = accepted.job_id,
        "run requested over HTTP"
    );
    let location = format!("/api/jobs/{}", path_segment(&accepted.job_id));
    let mut response = (
        StatusCode::ACCEPTED,
        Json(json!({ "job_id": accepted.job_id, "runbook": name, "job_url": location })),
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

/// An empty body means "no parameters"; anything else must be a [`RunRequest`] object.
pub(crate) fn parse_run_request(body: &[u8]) -> Result<RunRequest, ApiError> {
    let body = body.trim_ascii();
    if body.is_empty() {
        return Ok(RunRequest::default());
    }
    // serde would also read a struct from a JSON array; only an object is a request.
    if !body.starts_with(b"{") {
        return Err(ApiError::BadRequest(
            "the body must be a JSON object such as {\"params\": {\"days\": 30}, \"dry_run\": false}".to_string(),
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::BadRequest(format!(
            "the body must be a JSON object such as {{\"params\": {{\"days\": 30}}, \"dry_run\": false}}: {e}"
        ))
    })
}

pub(crate) async fn cancel_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    match state.api.cancel_job(&id).await? {
        CancelOutcome::Requested => {
            tracing::info!(job_id = id, "cancel requested over HTTP");
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({ "job_id": id, "cancel": "requested" })),
            )
                .into_response())
        }
        CancelOutcome::NotRunning { status } => Err(ApiError::Conflict(format!(
            "job {id} is not running (its status is {status})"
        ))),
        CancelOutcome::NotFound => Err(no_job(&id)),
    }
}

fn no_job(id: &str) -> ApiError {
    ApiError::NotFound(format!("no job with id {id:?} in the history"))
}

pub(crate) async fn list_jobs(
    State(state): State<AppState>,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let filter = job_filter(&query_map(query)?)?;
    let jobs = state.api.list_jobs(filter).await?;
    Ok(Json(json!({ "jobs": jobs })).into_response())
}

fn query_map(
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Result<BTreeMap<String, String>, ApiError> {
    query
        .map(|Query(q)| q)
        .map_err(|e| ApiError::BadRequest(format!("cannot read the query string: {e}")))
}

/// The `/api/jobs` query, checked: unknown keys, unknown statuses and out-of-range limits are
/// refused with a message that lists what is accepted.
pub(crate) fn job_filter(query: &BTreeMap<String, String>) -> Result<JobFilter, ApiError> {
    reject_unknown_keys(query, &["runbook", "status", "limit", "before"])?;
    let status = match query.get("status").map(String::as_str) {
        None | Some("") => None,
        Some(given) => Some(
            JOB_STATUSES
                .iter()
                .find(|s| s.eq_ignore_ascii_case(given))
                .map(|s| s.to_string())
                .ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "unknown status {given:?}: use one of {}",
                        JOB_STATUSES.join(", ")
                    ))
                })?,
        ),
    };
    let before = match query.get("before").map(String::as_str) {
        None | Some("") => None,
        Some(text) => Some(
            DateTime::parse_from_rfc3339(text)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| {
                    ApiError::BadRequest(format!(
                        "before={text:?} is not an RFC 3339 instant such as 2024-05-01T03:00:00Z: {e}"
                    ))
                })?,
        ),
    };
    Ok(JobFilter {
        runbook: query.get("runbook").filter(|r| !r.is_empty()).cloned(),
        status,
        limit: limit(query, DEFAULT_JOBS_LIMIT, MAX_JOBS_LIMIT)?,
        before,
    })
}

fn reject_unknown_keys(query: &BTreeMap<String, String>, known: &[&str]) -> Result<(), ApiError> {
    match query.keys().find(|k| !known.contains(&k.as_str())) {
        Some(key) => Err(ApiError::BadRequest(format!(
            "unknown query parameter {key:?}: use {}",
            known.join(", ")
        ))),
        None => Ok(()),
    }
}

fn limit(query: &BTreeMap<String, String>, default: usize, max: usize) -> Result<usize, ApiError> {
    match query.get("limit").map(String::as_str) {
        None | Some("") => Ok(default),
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::BadRequest(format!(
                "limit={text:?} must be a whole number from 1 to {max}"
            ))),
        },
    }
}

pub(crate) async fn get_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    match state.api.get_job(&id).await? {
        Some(job) => Ok(Json(bounds::bound_job(job)).into_response()),
        None => Err(no_job(&id)),
    }
}

/// `GET /api/jobs/{id}/reports/{file}`: the file as stored, streamed, as an attachment.
pub(crate) async fn get_report(
    State(state): State<AppState>,
    Path((id, file)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    if !crate::history::blob::valid_report_name(&file) {
        return Err(ApiError::BadRequest(format!(
            "{:?} is not a report file name: use the `file` of one of the job's `reports` (GET /api/jobs/{{id}})",
            file.chars().take(130).collect::<String>()
        )));
    }
    let Some(body) = state.api.open_report(&id, &file).await? else {
        return Err(ApiError::NotFound(format!(
            "job {id:?} has no report {file:?} (GET /api/jobs/{{id}} lists its reports)"
        )));
    };
    let content_type = if file.ends_with(".csv") {
        "text/csv; charset=utf-8"
    } else if file.ends_with(".jsonl") {
        "application/x-ndjson"
    } else {
        "application/octet-stream"
    };
    let mut response = axum::body::Body::from_stream(body.stream).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.bytes));
    // The name was checked: letters, digits, '-', '_' and '.', nothing to quote.
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{file}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

pub(crate) async fn occurrences(
    State(state): State<AppState>,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let query = query_map(query)?;
    reject_unknown_keys(&query, &["runbook", "limit"])?;
    let Some(runbook) = query.get("runbook").filter(|r| !r.is_empty()) else {
        return Err(ApiError::BadRequest(
            "say which runbook: /api/occurrences?runbook=NAME".to_string(),
        ));
    };
    let limit = limit(&query, DEFAULT_OCCURRENCES_LIMIT, MAX_OCCURRENCES_LIMIT)?;
    let occurrences = state.api.occurrences(runbook, limit).await?;
    Ok(Json(json!({ "runbook": runbook, "occurrences": occurrences })).into_response())
}

/// Percent-encodes `text` for one URL path segment or query value: everything but RFC 3986's
/// unreserved characters.
pub(crate) fn path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn job_queries_are_checked_and_normalised() {
        let ok = job_filter(&query(&[])).unwrap();
        assert_eq!(
            ok,
            JobFilter {
                runbook: None,
                status: None,
                limit: DEFAULT_JOBS_LIMIT,
                before: None
            }
        );
        let ok = job_filter(&query(&[
            ("runbook", "archive"),
            ("status", "completedwitherrors"),
            ("limit", "5"),
            ("before", "2024-05-01T05:00:00+02:00"),
        ]))
        .unwrap();
        assert_eq!(ok.runbook.as_deref(), Some("archive"));
        assert_eq!(ok.status.as_deref(), Some("CompletedWithErrors"));
        assert_eq!(ok.limit, 5);
        assert_eq!(
            ok.before.map(|t| t.to_rfc3339()),
            Some("2024-05-01T03:00:00+00:00".to_string())
        );

        for (pairs, needle) in [
            (vec![("status", "Done")], "unknown status"),
            (vec![("limit", "0")], "from 1 to 1000"),
            (vec![("limit", "1001")], "from 1 to 1000"),
            (vec![("limit", "ten")], "from 1 to 1000"),
            (vec![("before", "yesterday")], "RFC 3339"),
            (vec![("runbok", "x")], "unknown query parameter \"runbok\""),
        ] {
            let err = job_filter(&query(&pairs)).unwrap_err();
            assert!(matches!(err, ApiError::BadRequest(_)), "{pairs:?}");
            assert!(err.to_string().contains(needle), "{pairs:?}: {err}");
        }
    }

    #[test]
    fn run_bodies_may_be_empty_or_a_request_object() {
        for body in ["", "  \n", "{}"] {
            assert_eq!(
                parse_run_request(body.as_bytes()).unwrap(),
                RunRequest::default()
            );
        }
        let request = parse_run_request(br#"{"params": {"days": 30}, "dry_run": true}"#).unwrap();
        assert!(request.dry_run);
        for body in ["[]", "{\"params\": 3}", "not json", "{\"dryrun\": true}"] {
            let err = parse_run_request(body.as_bytes()).unwrap_err();
            assert!(matches!(err, ApiError::BadRequest(_)), "{body}");
        }
    }

    #[test]
    fn errors_map_to_their_status_and_internal_detail_stays_private() {
        let cases = [
            (ApiError::NotFound("x".into()), 404),
            (ApiError::BadRequest("x".into()), 400),
            (ApiError::Conflict("x".into()), 409),
            (ApiError::Unavailable("x".into()), 503),
            (
                ApiError::Internal("disk I/O error at /secret/place".into()),
                500,
            ),
        ];
        for (error, status) in cases {
            assert_eq!(error.status().as_u16(), status);
        }
        let message = ApiError::Internal("disk I/O error at /secret/place".into()).public_message();
        assert!(!message.contains("/secret/place"), "{message}");
        assert!(message.contains("reference"), "{message}");
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        for (raw, encoded) in [
            ("archive-old_v2.1~", "archive-old_v2.1~"),
            ("a b/c?d#e", "a%20b%2Fc%3Fd%23e"),
            ("é", "%C3%A9"),
            ("\"<x>\"", "%22%3Cx%3E%22"),
        ] {
            assert_eq!(path_segment(raw), encoded);
        }
    }
}
