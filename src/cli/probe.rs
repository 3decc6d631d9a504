//! `runbook-worker probe [--ready] [--url URL]`: GETs the worker's own health endpoint and
//! exits 0 on a 2xx answer, 1 otherwise, so an image without a shell or curl (distroless)
//! can still have `HEALTHCHECK CMD ["/usr/local/bin/runbook-worker","probe"]`.
//!
//! Only the local worker is probed: the default URL comes from `http.listen` (an unspecified
//! address such as `0.0.0.0` becomes loopback), and `--url` must name a loopback address,
//! `localhost` or the configured listen address. Proxies are bypassed and redirects not
//! followed; the whole request has 2 seconds.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use url::{Host, Url};

use super::Context;

/// How long the probe may take in all (Docker's default HEALTHCHECK timeout is 30 s; an
/// answer slower than this is a failure anyway).
const TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// Probe /readyz (ready to take work) instead of /healthz (alive).
    #[arg(long)]
    pub ready: bool,
    /// The URL to GET instead of http://<http.listen>/healthz; loopback, localhost or the
    /// listen address only.
    #[arg(long, value_name = "URL", conflicts_with = "ready")]
    pub url: Option<String>,
}

pub async fn run(ctx: Context, args: ProbeArgs) -> anyhow::Result<ExitCode> {
    let url = target(ctx.settings.http.listen, args.url.as_deref(), args.ready)
        .map_err(|message| anyhow!("{message}"))?;
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(TIMEOUT)
        .build()
        .context("cannot build the HTTP client")?;
    match client.get(url.clone()).send().await {
        Ok(response) if response.status().is_success() => {
            println!("{url}: {}", response.status());
            Ok(ExitCode::SUCCESS)
        }
        Ok(response) => {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            let body = body.trim();
            let detail = if body.is_empty() {
                String::new()
            } else {
                format!(": {}", body.chars().take(300).collect::<String>())
            };
            eprintln!("{url}: {status}{detail}");
            Ok(ExitCode::FAILURE)
        }
        Err(e) => {
            let why = if e.is_timeout() {
                format!("no answer within {}s", TIMEOUT.as_secs())
            } else if e.is_connect() {
                "nothing accepts connections there (is the worker running, and is http.listen right?)"
                    .to_string()
            } else {
                e.to_string()
            };
            eprintln!("{url}: {why}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The URL to probe: `url` when given (checked), else `/healthz` or `/readyz` on the
/// listen address.
fn target(listen: SocketAddr, url: Option<&str>, ready: bool) -> Result<Url, String> {
    let Some(url) = url else {
        let ip = match listen.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let path = if ready { "/readyz" } else { "/healthz" };
        let address = SocketAddr::new(ip, listen.port());
        return Url::parse(&format!("http://{address}{path}"))
            .map_err(|e| format!("cannot build the probe URL from http.listen {listen}: {e}"));
    };
    let parsed = Url::parse(url).map_err(|e| format!("--url {url:?} is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("--url {url:?}: only http and https can be probed"));
    }
    let local = match parsed.host() {
        Some(Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => ip.is_loopback() || IpAddr::V4(ip) == listen.ip(),
        Some(Host::Ipv6(ip)) => ip.is_loopback() || IpAddr::V6(ip) == listen.ip(),
        None => false,
    };
    if !local {
        return Err(format!(
            "--url {url:?}: probe only checks this worker, on a loopback address, localhost or http.listen ({listen})"
        ));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Listen address, `--url`, `--ready`, and the URL probed or a fragment of the error.
    type TargetCase<'a> = (&'a str, Option<&'a str>, bool, Result<&'a str, &'a str>);

    #[test]
    fn the_target_is_the_local_worker_only() {
        let table: Vec<TargetCase> = vec![
            (
                "127.0.0.1:8080",
                None,
                false,
                Ok("http://127.0.0.1:8080/healthz"),
            ),
            (
                "127.0.0.1:8080",
                None,
                true,
                Ok("http://127.0.0.1:8080/readyz"),
            ),
            (
                "0.0.0.0:8080",
                None,
                false,
                Ok("http://127.0.0.1:8080/healthz"),
            ),
            ("[::]:9000", None, true, Ok("http://[::1]:9000/readyz")),
            (
                "10.1.2.3:8080",
                None,
                false,
                Ok("http://10.1.2.3:8080/healthz"),
            ),
            (
                "0.0.0.0:8080",
                Some("http://localhost:8080/readyz"),
                false,
                Ok("http://localhost:8080/readyz"),
            ),
            (
                "0.0.0.0:8080",
                Some("http://127.0.0.2:1/x"),
                false,
                Ok("http://127.0.0.2:1/x"),
            ),
            (
                "10.1.2.3:8080",
                Some("http://10.1.2.3:8080/healthz"),
                false,
                Ok("http://10.1.2.3:8080/healthz"),
            ),
            (
                "0.0.0.0:8080",
                Some("http://[::1]:8080/healthz"),
                false,
                Ok("http://[::1]:8080/healthz"),
            ),
            (
                "0.0.0.0:8080",
                Some("http://10.0.0.1:8080/healthz"),
                false,
                Err("loopback"),
            ),
            (
                "127.0.0.1:8080",
                Some("http://example.com/healthz"),
                false,
                Err("loopback"),
            ),
            (
                "127.0.0.1:8080",
                Some("ftp://127.0.0.1/x"),
                false,
                Err("only http"),
            ),
            ("127.0.0.1:8080", Some("not a url"), false, Err("not a URL")),
        ];
        for (listen, url, ready, expected) in table {
            match (target(listen.parse().unwrap(), url, ready), expected) {
                (Ok(got), Ok(want)) => assert_eq!(got.as_str(), want, "{listen} {url:?}"),
                (Err(e), Err(needle)) => assert!(e.contains(needle), "{listen} {url:?}: {e}"),
                (got, want) => panic!("{listen} {url:?}: got {got:?}, expected {want:?}"),
            }
        }
    }
}
