//! Helpers shared by the integration tests: spawning the real binary, temp dirs, waiting
//! on conditions instead of sleeping.

#![allow(dead_code)]

pub mod app;
pub mod deploy;
pub mod exchange;
pub mod executor;
pub mod graph;
pub mod history;
pub mod http;
pub mod identity;
pub mod notify;
pub mod opscli;
pub mod runbook;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Path of the `runbook-worker` binary cargo built for these tests.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_runbook-worker")
}

/// Runs the binary to completion in `dir` with only the given environment (plus PATH), so
/// the developer's own `RUNBOOK_WORKER__*` or `IDENTITY_*` variables never leak in.
pub fn run_binary(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(binary());
    cmd.current_dir(dir).args(args).env_clear();
    if let Ok(path) = std::env::var("PATH") {
        cmd.env("PATH", path);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("spawn runbook-worker")
}

/// [`run_binary`] on the blocking pool, so simulators on the test's runtime keep serving
/// meanwhile.
pub async fn run_binary_off_runtime(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let dir = dir.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run_binary(&dir, &args, &env)
    })
    .await
    .expect("binary task")
}

/// A port on 127.0.0.1 nothing listens on: bound, then released.
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
pub mod coordination;
pub mod worker;
