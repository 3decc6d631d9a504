//! The listener loop: accepts connections up to `http.max_connections`, serves each with
//! hyper's HTTP/1.1 under a header-read timeout, a per-request timeout and an idle watchdog,
//! and stops gracefully.
//!
//! Why not `axum::serve`: it has none of those limits, so clients that send half a request
//! hold a connection (and a file descriptor) for ever, and enough of them starve the
//! scheduled jobs of descriptors. Here every connection is bounded in number and in time,
//! connections beyond the cap get a JSON 503 at once instead of queueing, and accept errors
//! such as "too many open files" back off and are logged at a bounded rate.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use super::{HttpSettings, api};

/// How long connections get to finish their requests after shutdown before they are cut.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(3);
/// At most one warning line per this period for each kind of trouble (accept errors, refused
/// connections); the line says how many were left out.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// Back-off after an accept error that is not about one connection (EMFILE and the like):
/// doubles from the first to the last value while the errors go on.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(1));
/// Connections beyond the cap that are answered with a 503 at once; beyond these too, a new
/// connection is closed without a word. Each is given [`REFUSAL_HEADER_TIMEOUT`] to send its
/// request, so that its client reads a proper response rather than a reset.
const REFUSALS_AT_ONCE: usize = 32;
const REFUSAL_HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// The share of the process's descriptor limit (RLIMIT_NOFILE) HTTP connections may take;
/// the rest is for jobs (Exchange connections, the history database, report files).
const CONNECTION_SHARE_OF_FD_LIMIT: u64 = 2;

/// The limits the server enforces, from `[http]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerLimits {
    /// A client must send a request's whole header within this; a kept-alive connection
    /// must start its next request within it too.
    pub header_read_timeout: Duration,
    /// A connection with no request in progress and no byte read or written for this long
    /// is closed (covers clients that stop reading a response).
    pub idle_timeout: Duration,
    /// A request that has no response after this gets a JSON 503.
    pub request_timeout: Duration,
    /// Connections served at once; more get a JSON 503 and are closed.
    pub max_connections: usize,
}

impl ServerLimits {
    pub fn from_settings(settings: &HttpSettings) -> Self {
        Self {
            header_read_timeout: settings.header_read_timeout.get(),
            idle_timeout: settings.idle_timeout.get(),
            request_timeout: settings.request_timeout.get(),
            max_connections: settings.max_connections,
        }
    }
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self::from_settings(&HttpSettings::default())
    }
}

/// The connection cap to use given the process's soft descriptor limit: at most
/// 1/[`CONNECTION_SHARE_OF_FD_LIMIT`] of it, so jobs always find descriptors. Returns the cap
/// and, when it had to be lowered, the warning to log.
pub(crate) fn effective_max_connections(
    configured: usize,
    fd_limit: Option<u64>,
) -> (usize, Option<String>) {
    let Some(limit) = fd_limit else {
        return (configured, None);
    };
    let allowed = usize::try_from(limit / CONNECTION_SHARE_OF_FD_LIMIT)
        .unwrap_or(usize::MAX)
        .max(1);
    if configured <= allowed {
        return (configured, None);
    }
    (
        allowed,
        Some(format!(
            "http.max_connections lowered from {configured} to {allowed}: the process may open only {limit} files (RLIMIT_NOFILE) and jobs need the rest; raise the limit (LimitNOFILE= in the systemd unit, ulimit -n) or lower http.max_connections"
        )),
    )
}

/// The soft limit on open files, if the platform reports one (a seccomp filter may refuse
/// to: then there is nothing to adjust to).
fn fd_limit() -> Option<u64> {
    let (soft, _hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).ok()?;
    (soft != nix::sys::resource::RLIM_INFINITY).then_some(soft)
}

/// Logs one line per [`LOG_EVERY`] at most and counts what it leaves out.
#[derive(Debug, Default)]
pub(crate) struct LogLimiter {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    /// Whether to log now; when it is, also how many events were left out since the last line.
    pub(crate) fn check(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.duration_since(last) < LOG_EVERY => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// Whether an accept error concerns only the connection being accepted (the peer gave up):
/// those are skipped at once, everything else backs off.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

/// What an accept error means, in words an operator can act on.
fn describe_accept_error(error: &io::Error) -> String {
    use nix::errno::Errno;
    match error.raw_os_error().map(Errno::from_raw) {
        Some(Errno::EMFILE) => format!(
            "too many open files: the process has reached its limit of {} open files (RLIMIT_NOFILE); raise LimitNOFILE= in the systemd unit or lower http.max_connections",
            fd_limit().map_or_else(|| "?".to_string(), |l| l.to_string())
        ),
        Some(Errno::ENFILE) => {
            "too many open files in the whole system (fs.file-max): the host is out of file descriptors".to_string()
        }
        Some(Errno::ENOBUFS | Errno::ENOMEM) => {
            "the kernel is out of memory for sockets".to_string()
        }
        _ => error.to_string(),
    }
}

/// The answer to every request on a connection beyond the cap.
fn refusal(max_connections: usize) -> Response {
    let mut response = api::error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!(
            "the worker already serves {max_connections} connections (http.max_connections): try again shortly"
        ),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// Serves `router` on `listener` with `limits` until `shutdown` is cancelled, then stops
/// accepting, lets requests in flight finish for a few seconds and closes what is left.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let (max_connections, warning) = effective_max_connections(limits.max_connections, fd_limit());
    if let Some(warning) = warning {
        tracing::warn!("{warning}");
    }
    let limits = ServerLimits {
        max_connections,
        ..limits
    };
    let permits = Arc::new(Semaphore::new(max_connections));
    let refusal_permits = Arc::new(Semaphore::new(REFUSALS_AT_ONCE));
    let connections = TaskTracker::new();
    let cut = CancellationToken::new();
    let mut accept_errors = LogLimiter::default();
    let mut refusals = LogLimiter::default();
    let mut backoff = ACCEPT_BACKOFF.0;

    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                backoff = ACCEPT_BACKOFF.0;
                accepted
            }
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                if let Some(left_out) = accept_errors.check(Instant::now()) {
                    tracing::warn!(
                        error = %describe_accept_error(&e),
                        similar_errors_not_logged = left_out,
                        retry_in_ms = backoff.as_millis() as u64,
                        "cannot accept HTTP connections"
                    );
                }
                // Waiting lets jobs and open connections release descriptors instead of
                // spinning on an error that will not go away by itself.
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            if let Some(left_out) = refusals.check(Instant::now()) {
                tracing::warn!(
                    max_connections,
                    %peer,
                    similar_refusals_not_logged = left_out,
                    "refused an HTTP connection: http.max_connections are open"
                );
            }
            if let Ok(permit) = refusal_permits.clone().try_acquire_owned() {
                let cut = cut.clone();
                connections.spawn(async move {
                    refuse_connection(stream, max_connections, cut).await;
                    drop(permit);
                });
            }
            continue;
        };
        let router = router.clone();
        let shutdown = shutdown.clone();
        let cut = cut.clone();
        connections.spawn(async move {
            serve_connection(stream, peer, router, limits, shutdown, cut).await;
            drop(permit);
        });
    }

    drop(listener);
    connections.close();
    if tokio::time::timeout(SHUTDOWN_WAIT, connections.wait())
        .await
        .is_err()
    {
        tracing::info!(
            open = connections.len(),
            "closing HTTP connections that did not finish in time"
        );
        cut.cancel();
        connections.wait().await;
    }
    Ok(())
}

/// Serves one connection until the client closes it, a limit closes it, or shutdown.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: ServerLimits,
    shutdown: CancellationToken,
    cut: CancellationToken,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Tracked {
        inner: stream,
        activity: activity.clone(),
    });
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let router = router.clone();
            let busy = activity.begin_request();
            let mut request = request.map(axum::body::Body::new);
            request.extensions_mut().insert(ConnectInfo(peer));
            async move {
                let response =
                    match tokio::time::timeout(limits.request_timeout, router.oneshot(request))
                        .await
                    {
                        Ok(Ok(response)) => response,
                        Ok(Err(never)) => match never {},
                        Err(_) => request_timed_out(limits.request_timeout),
                    };
                drop(busy);
                Ok::<Response, Infallible>(response)
            }
        })
    };
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(io, service);
    tokio::pin!(connection);

    let mut draining = false;
    loop {
        let idle_check = activity.next_idle_check(limits.idle_timeout);
        tokio::select! {
            ended = connection.as_mut() => {
                if let Err(e) = ended {
                    // Timeouts and clients that go away mid-request land here: routine.
                    tracing::debug!(%peer, error = %e, "HTTP connection ended");
                }
                return;
            }
            () = shutdown.cancelled(), if !draining => {
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
            () = cut.cancelled() => return,
            () = tokio::time::sleep_until(idle_check) => {
                if activity.is_idle(limits.idle_timeout) {
                    tracing::debug!(%peer, "closing an idle HTTP connection");
                    return;
                }
            }
        }
    }
}

/// Answers the one request of a connection beyond the cap with a 503, then closes it.
async fn refuse_connection(stream: TcpStream, max_connections: usize, cut: CancellationToken) {
    let service =
        hyper::service::service_fn(move |_request: hyper::Request<Incoming>| async move {
            Ok::<Response, Infallible>(refusal(max_connections))
        });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(REFUSAL_HEADER_TIMEOUT)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = connection => {}
        () = cut.cancelled() => {}
    }
}

/// `{"error": …}` 503 for a request that outlived `http.request_timeout`.
fn request_timed_out(limit: Duration) -> Response {
    api::error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!(
            "the request took longer than http.request_timeout ({}) and was stopped",
            humantime::format_duration(limit)
        ),
    )
}

/// When a connection last moved a byte, and how many of its requests are being handled.
struct Activity {
    start: Instant,
    /// Milliseconds from `start` to the last read or write.
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    fn begin_request(self: &Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        RequestGuard(self.clone())
    }

    fn is_idle(&self, idle_timeout: Duration) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0 && self.last().elapsed() >= idle_timeout
    }

    /// When to look again: a request in progress is bounded by its own timeout, so the
    /// watchdog only looks once it is done.
    fn next_idle_check(&self, idle_timeout: Duration) -> Instant {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            Instant::now() + idle_timeout
        } else {
            self.last() + idle_timeout
        }
    }
}

struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A stream that records in [`Activity`] when it last read or wrote something.
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_leaves_half_the_descriptors_to_jobs() {
        for (configured, limit, want, warns) in [
            (512, None, 512, false),
            (512, Some(20_000), 512, false),
            (512, Some(1024), 512, false),
            (512, Some(1023), 511, true),
            (512, Some(256), 128, true),
            (10, Some(256), 10, false),
            (10, Some(1), 1, true),
        ] {
            let (got, warning) = effective_max_connections(configured, limit);
            assert_eq!(got, want, "{configured} with {limit:?}");
            assert_eq!(warning.is_some(), warns, "{configured} with {limit:?}");
            if let Some(warning) = warning {
                assert!(
                    warning.contains("RLIMIT_NOFILE") && warning.contains("LimitNOFILE"),
                    "{warning}"
                );
            }
        }
    }

    #[test]
    fn the_log_limiter_lets_one_line_through_per_period_and_counts_the_rest() {
        let start = Instant::now();
        let mut limiter = LogLimiter::default();
        assert_eq!(limiter.check(start), Some(0));
        for i in 1..=99 {
            assert_eq!(limiter.check(start + Duration::from_millis(i)), None);
        }
        assert_eq!(limiter.check(start + LOG_EVERY), Some(99));
        assert_eq!(limiter.check(start + LOG_EVERY), None);
        assert_eq!(limiter.check(start + LOG_EVERY * 3), Some(1));
    }

    #[test]
    fn accept_errors_name_their_cause() {
        let emfile = io::Error::from_raw_os_error(nix::errno::Errno::EMFILE as i32);
        let text = describe_accept_error(&emfile);
        assert!(text.contains("too many open files"), "{text}");
        assert!(text.contains("LimitNOFILE"), "{text}");
        assert!(!is_connection_error(&emfile));
        let aborted = io::Error::from(io::ErrorKind::ConnectionAborted);
        assert!(is_connection_error(&aborted));
    }
}
