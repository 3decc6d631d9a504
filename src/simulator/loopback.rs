//! What every simulator server owns: the listener task, which serves a router on a
//! 127.0.0.1 listener until cancelled (dropping it stops the server), and the lock its
//! state sits behind.

use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};

use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct Loopback {
    addr: SocketAddr,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Loopback {
    /// Serves `app` on `listener`; `what` names the server in the log line of a failure.
    pub fn serve(listener: TcpListener, addr: SocketAddr, app: Router, what: &'static str) -> Self {
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "simulated {what} listener stopped");
            }
        });
        Self {
            addr,
            cancel,
            task: Some(task),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// [`Self::base_url`] as a checked base URL.
    pub fn endpoint(&self) -> crate::base_url::BaseUrl {
        crate::base_url::BaseUrl::of_socket(self.addr)
    }

    /// Stops the server and waits for it.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Loopback {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Locks simulator state; a panic elsewhere must not take the simulator down with it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
