//! Managed-identity tokens against the simulated IMDS, App Service and Entra ID endpoints,
//! in-process through the library and through the real binary.
//!
//! In-process tests use `support::identity::fast_retry()`: Microsoft's retry timings with
//! every second turned into a millisecond. Scripted faults are in the same units, so "410
//! for 30 ms" stands for the issue's "410 for 30 s" and `Retry-After: 50` means 50 ms.

use std::sync::Arc;
use std::time::{Duration, Instant};

use azure_core::credentials::TokenCredential;
use runbook_worker::clock::{Clock, SystemClock};
use runbook_worker::identity::claims::EXCHANGE_MANAGE_AS_APP;
use runbook_worker::identity::{
    AccessToken, IdentityEnvironment, IdentityError, IdentitySelector, IdentitySettings,
    ProviderCredential, ProviderOptions, RetryPolicy, SourceKind, TokenProvider, TokenProviders,
    TokenSource,
};
use runbook_worker::simulator::identity::{
    EXCHANGE_ADMINISTRATOR_WID, IdentitySimulator, IdentitySimulatorConfig, SIMULATED_TENANT_ID,
    SimulatedEndpoint, SimulatedIdentity, Step,
};
use runbook_worker::simulator::jwt;

use crate::support::identity::{
    capture_logs, clocked_imds, env, fast_retry, imds_provider, imds_settings, options,
    provider_with, run_against, simulator,
};
use crate::support::{closed_port, run_binary_off_runtime, stderr, stdout, wait_until};

// Resource identifiers (token audiences and scopes), never addresses: every request in these
// tests goes to the simulator on 127.0.0.1.
const EXCHANGE: &str = "https://outlook.office365.com";
const STORAGE: &str = "https://storage.azure.com";
const PATIENCE: Duration = Duration::from_secs(10);

fn system_identity(sim: &IdentitySimulator) -> SimulatedIdentity {
    sim.config()
        .system_assigned
        .clone()
        .expect("system identity")
}

fn claims(token: &AccessToken) -> runbook_worker::identity::TokenClaims {
    token.claims().expect("a JWT")
}

// ---- identities and selectors ----------------------------------------------------------

#[tokio::test]
async fn a_system_assigned_token_carries_the_claims_the_test_chose_and_the_request_is_what_imds_wants()
 {
    let sim = simulator(IdentitySimulatorConfig::default()).await;
    let provider = imds_provider(&sim, imds_settings(&sim));

    let token = provider.token(EXCHANGE).await.unwrap();

    let system = system_identity(&sim);
    let c = claims(&token);
    assert_eq!(c.tid.as_deref(), Some(SIMULATED_TENANT_ID));
    assert_eq!(c.aud.as_deref(), Some(EXCHANGE));
    assert_eq!(c.oid.as_deref(), Some(system.object_id.as_str()));
    assert_eq!(c.client_id(), Some(system.client_id.as_str()));
    assert!(c.has_role(EXCHANGE_MANAGE_AS_APP));
    assert!(c.wids.iter().any(|w| w == EXCHANGE_ADMINISTRATOR_WID));
    assert_eq!(token.expires_on.timestamp(), c.exp.unwrap());

    let requests = sim.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.endpoint, SimulatedEndpoint::Imds);
    assert_eq!(request.method, "GET");
    assert_eq!(request.header("metadata"), Some("true"));
    assert_eq!(request.header("x-forwarded-for"), None);
    assert_eq!(request.header("x-identity-header"), None);
    assert_eq!(request.query_value("api-version"), Some("2019-08-01"));
    assert_eq!(request.query_value("resource"), Some(EXCHANGE));
    for selector in ["client_id", "object_id", "msi_res_id", "mi_res_id"] {
        assert_eq!(request.query_value(selector), None, "{selector}");
    }
    assert_eq!(request.status, Some(200));
}

#[tokio::test]
async fn each_user_assigned_selector_reaches_imds_as_its_own_parameter() {
    let reports = SimulatedIdentity::new("reports").with_roles(&["Reports.Read"]);
    let sim =
        simulator(IdentitySimulatorConfig::default().with_user_assigned(reports.clone())).await;
    let cases = [
        (
            IdentitySettings {
                client_id: Some(reports.client_id.clone()),
                ..imds_settings(&sim)
            },
            "client_id",
            reports.client_id.clone(),
        ),
        (
            IdentitySettings {
                object_id: Some(reports.object_id.clone()),
                ..imds_settings(&sim)
            },
            "object_id",
            reports.object_id.clone(),
        ),
        (
            IdentitySettings {
                resource_id: Some(reports.resource_id.clone()),
                ..imds_settings(&sim)
            },
            "msi_res_id",
            reports.resource_id.clone(),
        ),
    ];
    for (settings, parameter, value) in cases {
        let provider = imds_provider(&sim, settings);
        let token = provider.token(EXCHANGE).await.unwrap();
        assert_eq!(
            claims(&token).oid.as_deref(),
            Some(reports.object_id.as_str())
        );
        assert!(claims(&token).has_role("Reports.Read"));
        let request = sim.requests().pop().unwrap();
        assert_eq!(
            request.query_value(parameter),
            Some(value.as_str()),
            "{parameter}"
        );
        assert!(provider.describe().identity.contains("from settings"));
    }
}

#[tokio::test]
async fn azure_client_id_selects_the_user_assigned_identity_when_no_key_is_set() {
    let reports = SimulatedIdentity::new("reports");
    let sim =
        simulator(IdentitySimulatorConfig::default().with_user_assigned(reports.clone())).await;
    let provider = TokenProvider::with_options(
        &imds_settings(&sim),
        &env(&[("AZURE_CLIENT_ID", &reports.client_id)]),
        None,
        options(Arc::new(SystemClock)),
    )
    .unwrap();

    let token = provider.token(EXCHANGE).await.unwrap();

    assert_eq!(
        claims(&token).oid.as_deref(),
        Some(reports.object_id.as_str())
    );
    assert_eq!(
        sim.requests()[0].query_value("client_id"),
        Some(reports.client_id.as_str())
    );
    assert!(provider.describe().identity.contains("AZURE_CLIENT_ID"));
}

#[tokio::test]
async fn an_unknown_client_id_fails_at_once_saying_what_to_configure() {
    let sim = simulator(IdentitySimulatorConfig::default()).await;
    let provider = imds_provider(
        &sim,
        IdentitySettings {
            client_id: Some("0badc0de-0000-4000-8000-000000000000".into()),
            ..imds_settings(&sim)
        },
    );

    let error = provider.token(EXCHANGE).await.unwrap_err();

    assert!(
        matches!(error, IdentityError::NotAssigned { .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("HTTP 400"), "{message}");
    assert!(message.contains("Identity not found"), "{message}");
    assert!(message.contains("identity.client_id"), "{message}");
    assert_eq!(sim.token_requests(), 1, "a 400 is never retried");
}

#[tokio::test]
async fn several_user_assigned_identities_and_none_named_is_explained() {
    let sim = simulator(
        IdentitySimulatorConfig::default()
            .with_system_assigned(None)
            .with_user_assigned(SimulatedIdentity::new("a"))
            .with_user_assigned(SimulatedIdentity::new("b")),
    )
    .await;
    let provider = imds_provider(&sim, imds_settings(&sim));

    let error = provider.token(EXCHANGE).await.unwrap_err().to_string();

    assert!(
        error.contains("Multiple user assigned identities"),
        "{error}"
    );
    assert!(error.contains("set identity.client_id"), "{error}");
    assert_eq!(sim.token_requests(), 1);
}

// ---- single flight and caching ---------------------------------------------------------

#[tokio::test]
async fn five_hundred_concurrent_first_callers_cause_one_request() {
    let sim = simulator(IdentitySimulatorConfig::default()).await;
    // A slow answer keeps the first request in flight while the others arrive.
    sim.script([Step::slow(Duration::from_millis(200))]);
    let provider = imds_provider(&sim, imds_settings(&sim));

    let tokens = futures::future::join_all((0..500).map(|_| provider.token(EXCHANGE))).await;

    assert_eq!(sim.token_requests(), 1);
    let first = tokens[0].as_ref().unwrap().expose().to_string();
    assert!(tokens.iter().all(|t| t.as_ref().unwrap().expose() == first));
}

#[tokio::test]
async fn cached_gets_never_reach_the_endpoint_and_resources_are_cached_apart() {
    let sim = simulator(IdentitySimulatorConfig::default()).await;
    let provider = imds_provider(&sim, imds_settings(&sim));

    for _ in 0..1000 {
        provider.token(EXCHANGE).await.unwrap();
    }
    let storage = provider.token(STORAGE).await.unwrap();

    assert_eq!(sim.token_requests(), 2);
    assert_eq!(claims(&storage).aud.as_deref(), Some(STORAGE));
    assert_eq!(
        claims(&provider.token(EXCHANGE).await.unwrap())
            .aud
            .as_deref(),
        Some(EXCHANGE)
    );
}

#[tokio::test]
async fn concurrent_forced_refreshes_share_one_fetch_and_a_recent_token_is_not_refetched() {
    let (clock, sim, provider) = clocked_imds(IdentitySimulatorConfig::default()).await;
    let first = provider.token(EXCHANGE).await.unwrap();

    let (a, b) = tokio::join!(
        provider.refresh(EXCHANGE, Some("challenge")),
        provider.refresh(EXCHANGE, None)
    );

    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(sim.token_requests(), 2);
    assert_eq!(a.expose(), b.expose());
    assert_ne!(a.expose(), first.expose());

    // With a debounce, a refresh right after a fetch returns the fresh token.
    let debounced = provider_with(
        &imds_settings(&sim),
        runbook_worker::identity::ProviderOptions {
            min_refresh_interval: Duration::from_secs(10),
            ..options(Arc::new(clock.clone()))
        },
    );
    let fetched = debounced.token(EXCHANGE).await.unwrap();
    let refreshed = debounced.refresh(EXCHANGE, None).await.unwrap();
    assert_eq!(fetched.expose(), refreshed.expose());
    assert_eq!(sim.token_requests(), 3);
    clock.advance(Duration::from_secs(11));
    let refreshed = debounced.refresh(EXCHANGE, None).await.unwrap();
    assert_ne!(fetched.expose(), refreshed.expose());
    assert_eq!(sim.token_requests(), 4);
}

// ---- refresh ahead ---------------------------------------------------------------------

#[tokio::test]
async fn a_long_lived_token_is_refreshed_in_the_background_at_half_life() {
    let (clock, sim, provider) = clocked_imds(
        IdentitySimulatorConfig::default().with_token_lifetime(Duration::from_secs(3 * 3600)),
    )
    .await;
    let first = provider.token(EXCHANGE).await.unwrap();
    let status = provider.cache_status(EXCHANGE).unwrap();
    assert_eq!(
        status.refresh_at - status.fetched_at,
        chrono::Duration::minutes(90)
    );

    clock.advance(Duration::from_secs(3600));
    assert_eq!(
        provider.token(EXCHANGE).await.unwrap().expose(),
        first.expose()
    );
    assert_eq!(sim.token_requests(), 1, "not due yet");

    // The refresh answers slowly, so it is still in flight while callers ask.
    sim.script([Step::slow(Duration::from_secs(1))]);
    clock.advance(Duration::from_secs(31 * 60));
    let sim_ref = &sim;
    assert!(wait_until(PATIENCE, || async move { sim_ref.token_requests() == 2 }).await);
    let during = provider.token(EXCHANGE).await.unwrap();
    assert_eq!(
        sim.requests()[1].status,
        None,
        "the refresh was still in flight when the caller got its token"
    );
    assert_eq!(
        during.expose(),
        first.expose(),
        "callers do not wait for a refresh"
    );

    let (provider_ref, first_ref) = (&provider, &first);
    assert!(
        wait_until(PATIENCE, || async move {
            provider_ref.token(EXCHANGE).await.unwrap().expose() != first_ref.expose()
        })
        .await
    );
    assert_eq!(sim.token_requests(), 2);
    provider.shutdown().await;
}

#[tokio::test]
async fn a_short_lived_token_is_refreshed_before_it_expires_not_on_every_call() {
    let (clock, sim, provider) = clocked_imds(
        IdentitySimulatorConfig::default().with_token_lifetime(Duration::from_secs(60)),
    )
    .await;
    let first = provider.token(EXCHANGE).await.unwrap();
    for _ in 0..10 {
        provider.token(EXCHANGE).await.unwrap();
    }
    assert_eq!(
        sim.token_requests(),
        1,
        "a token under 5 minutes is still cached"
    );

    clock.advance(Duration::from_secs(31));

    let sim_ref = &sim;
    assert!(wait_until(PATIENCE, || async move { sim_ref.token_requests() == 2 }).await);
    let (provider_ref, first_ref) = (&provider, &first);
    assert!(
        wait_until(PATIENCE, || async move {
            provider_ref.token(EXCHANGE).await.unwrap().expose() != first_ref.expose()
        })
        .await
    );
    let status = provider.cache_status(EXCHANGE).unwrap();
    assert!(status.expires_on > first.expires_on);
    provider.shutdown().await;
}

#[tokio::test]
async fn a_failed_refresh_keeps_serving_the_valid_token_retries_and_logs_once() {
    let (_logs_guard, logs) = capture_logs();
    let (clock, sim, provider) = clocked_imds(
        IdentitySimulatorConfig::default().with_token_lifetime(Duration::from_secs(3 * 3600)),
    )
    .await;
    let first = provider.token(EXCHANGE).await.unwrap();

    sim.script([Step::status(500).forever()]);
    clock.advance(Duration::from_secs(91 * 60));
    // Each failed refresh round makes max_retries + 1 requests; wait for three rounds.
    let per_round = fast_retry().max_retries as usize + 1;
    let sim_ref = &sim;
    assert!(
        wait_until(PATIENCE, || async move {
            sim_ref.token_requests() > 1 + 3 * per_round
        })
        .await
    );
    assert_eq!(
        provider.token(EXCHANGE).await.unwrap().expose(),
        first.expose()
    );
    let text = logs.text();
    assert_eq!(
        text.matches("token refresh failed; serving the cached token")
            .count(),
        1,
        "{text}"
    );

    sim.clear_script();
    let (provider_ref, first_ref) = (&provider, &first);
    assert!(
        wait_until(PATIENCE, || async move {
            provider_ref.token(EXCHANGE).await.unwrap().expose() != first_ref.expose()
        })
        .await
    );
    let logs_ref = &logs;
    assert!(
        wait_until(PATIENCE, || async move {
            logs_ref.text().contains("token refresh recovered")
        })
        .await
    );
    provider.shutdown().await;
}

// ---- faults ----------------------------------------------------------------------------

#[tokio::test]
async fn gone_for_a_while_is_retried_until_the_endpoint_is_back() {
    let sim = simulator(IdentitySimulatorConfig::default()).await;
    sim.script([Step::status(410).lasting(Duration::from_millis(30))]);
    let provider = imds_provider(&sim, imds_settings(&sim));

    provider.token(EXCHANGE).await.unwrap();

    let statuses: Vec<_> = sim.requests().iter().map(|r| r.status).collect();
    assert!(statuses.len() >= 2, "{statuses:?}");
    let (last, before) = statuses.split_last().unwrap();
    assert_eq!(*last, Some(200));
    assert!(before.iter().all(|s| *s == Some(410)), "{statuses:?}");
}

#[tokio::test]
async fn gone_is_retried_for_the_whole_window_before_giving_up() {
    let sim = simulator(IdentitySimulatorConfig::default()).await;
    sim.script([Step::status(410).forever()]);
    // One retry allowed for other faults, and a window that leaves room for several 410
    // retries even when every request is slow on a loaded machine.
    let policy = RetryPolicy {
        max_retries: 1,
        gone_window: Duration::from_millis(300),
        ..fast_retry()
    };
    let provider = provider_with(
        &imds_settings(&sim),
        ProviderOptions {
            retry: policy.clone(),
            ..options(Arc::new(SystemClock))
        },
    );

    let started = Instant::now();
    let error = provider.token(EXCHANGE).await.unwrap_err();

    // A lower bound the policy guarantees (it keeps retrying until the window has passed
    // since the first 410), not a timing measurement.
    assert!(started.elapsed() >= policy.gone_window);
    let IdentityError::Exhausted { attempts, .. } = error else {
        panic!("expected Exhausted, got {error:?}");
    };
    assert_eq!(attempts as usize, sim.token_requests());
    assert!(
        attempts > policy.max_retries + 1,
        "410 outlasts the retry count: {attempts}"
    );
}

#[tokio::test]
async fn throttling_is_retried_no_sooner_than_retry_after_says() {
    let sim = simulator(IdentitySimulatorConfig::default()).await;
    sim.script([Step::throttle(50)]);
    let provider = imds_provider(&sim, imds_settings(&sim));

    provider.token(EXCHANGE).await.unwrap();

    let requests = sim.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].status, Some(429));
    assert_eq!(requests[1].status, Some(200));
    assert!(requests[1].at - requests[0].at >= Duration::from_millis(50));
}

#[tokio::test]
async fn not_found_and_server_errors_are_retried_then_succeed() {
    let sim = simulator(IdentitySimulatorConfig::default()).await;
    let cases: [(&[Step], usize); 5] = [
        (&[Step::status(404)], 2),
        (&[Step::status(408)], 2),
        (&[Step::status(500).times(2)], 3),
        (&[Step::status(503), Step::status(502)], 3),
        (&[Step::status(504), Step::throttle(1)], 3),
    ];
    for (script, expected_requests) in cases {
        sim.script(script.iter().cloned());
        let before = sim.token_requests();
        let provider = imds_provider(&sim, imds_settings(&sim));

        let token = provider.token(EXCHANGE).await;

        assert!(token.is_ok(), "{script:?}: {token:?}");
        assert_eq!(
            sim.token_requests() - before,
            expected_requests,
            "{script:?}"
        );
    }
}

#[tokio::test]
async fn persistent_server_errors_give_up_after_the_retry_budget() {
    let sim = simulator(IdentitySimulatorConfig::default()).await;
    sim.script([Step::status(500).forever()]);
    let provider = imds_provider(&sim, imds_settings(&sim));

    let error = provider.token(EXCHANGE).await.unwrap_err();

    let attempts = fast_retry().max_retries + 1;
    assert!(
        matches!(&error, IdentityError::Exhausted { attempts: a, .. } if *a == attempts),
        "{error:?}"
    );
    assert_eq!(sim.token_requests(), attempts as usize);
    let message = error.to_string();
    assert!(message.contains("HTTP 500"), "{message}");
    assert!(error.is_transient());
}

#[tokio::test]
async fn other_client_errors_are_not_retried() {
    let sim = simulator(IdentitySimulatorConfig::default()).await;
    sim.script([Step::status(403)]);
    let provider = imds_provider(&sim, imds_settings(&sim));

    let error = provider.token(EXCHANGE).await.unwrap_err();

    assert!(
        matches!(error, IdentityError::Rejected { status: 403, .. }),
        "{error:?}"
    );
    assert_eq!(sim.token_requests(), 1);
}

#[tokio::test]
async fn a_refused_connection_means_no_managed_identity_endpoint() {
    let settings = IdentitySettings {
        imds_endpoint: format!("http://127.0.0.1:{}", closed_port())
            .parse()
            .unwrap(),
        ..IdentitySettings::default()
    };
    let provider = provider_with(&settings, options(Arc::new(SystemClock)));

    let error = provider.token(EXCHANGE).await.unwrap_err();

    assert!(
        matches!(error, IdentityError::NoEndpoint { .. }),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .starts_with("no managed identity endpoint: not on Azure? set identity.source"),
        "{error}"
    );
}

#[tokio::test]
async fn a_slow_answer_times_out_and_is_retried() {
    let sim = simulator(IdentitySimulatorConfig::default()).await;
    sim.script([Step::slow(Duration::from_secs(3))]);
    let mut options = options(Arc::new(SystemClock));
    options.retry.attempt_timeout = Duration::from_millis(200);
    let provider = provider_with(&imds_settings(&sim), options);

    provider.token(EXCHANGE).await.unwrap();

    let requests = sim.requests();
    assert!(requests.len() >= 2, "{requests:?}");
    assert_eq!(requests.last().unwrap().status, Some(200));
}

// ---- workload identity -----------------------------------------------------------------

async fn workload_provider(
    sim: &IdentitySimulator,
    assertion: &str,
) -> (Arc<TokenProvider>, tempfile::TempDir, SimulatedIdentity) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("azure-identity-token");
    std::fs::write(&file, assertion).unwrap();
    let identity = system_identity(sim);
    let base_url = sim.base_url();
    let file = file.to_string_lossy().into_owned();
    let provider = TokenProvider::with_options(
        &IdentitySettings::default(),
        &env(&[
            ("AZURE_FEDERATED_TOKEN_FILE", &file),
            ("AZURE_CLIENT_ID", &identity.client_id),
            ("AZURE_TENANT_ID", &identity.tenant_id),
            ("AZURE_AUTHORITY_HOST", &base_url),
        ]),
        None,
        options(Arc::new(SystemClock)),
    )
    .unwrap();
    (provider, dir, identity)
}

#[tokio::test]
async fn workload_identity_exchanges_the_federated_token_with_entra_id() {
    let sim = simulator(IdentitySimulatorConfig::default()).await;
    let (provider, _dir, identity) = workload_provider(&sim, sim.federated_assertion()).await;
    assert_eq!(provider.describe().source, SourceKind::Workload);

    let token = provider.token(EXCHANGE).await.unwrap();

    assert_eq!(
        claims(&token).client_id(),
        Some(identity.client_id.as_str())
    );
    assert_eq!(claims(&token).aud.as_deref(), Some(EXCHANGE));
    let request = &sim.requests()[0];
    assert_eq!(request.endpoint, SimulatedEndpoint::EntraId);
    assert_eq!(request.method, "POST");
    assert_eq!(
        request.path,
        format!("/{}/oauth2/v2.0/token", identity.tenant_id)
    );
    assert_eq!(request.form_value("grant_type"), Some("client_credentials"));
    assert_eq!(
        request.form_value("client_id"),
        Some(identity.client_id.as_str())
    );
    assert_eq!(
        request.form_value("scope"),
        Some(format!("{EXCHANGE}/.default").as_str())
    );
    assert_eq!(request.form_value("client_assertion"), Some("[redacted]"));
}

#[tokio::test]
async fn a_federated_token_entra_id_does_not_accept_is_explained_and_not_retried() {
    let sim = simulator(IdentitySimulatorConfig::default()).await;
    let (provider, _dir, _) = workload_provider(&sim, "a-stale-service-account-token").await;

    let error = provider.token(EXCHANGE).await.unwrap_err();

    let message = error.to_string();
    assert!(
        matches!(error, IdentityError::Rejected { status: 401, .. }),
        "{error:?}"
    );
    assert!(message.contains("AADSTS700213"), "{message}");
    assert_eq!(sim.token_requests(), 1);
}

// ---- providers per identity and the azure_core adapter ---------------------------------

#[tokio::test]
async fn each_runbook_identity_gets_one_shared_provider() {
    let reports = SimulatedIdentity::new("reports");
    let sim =
        simulator(IdentitySimulatorConfig::default().with_user_assigned(reports.clone())).await;
    let providers = TokenProviders::new(
        &imds_settings(&sim),
        &IdentityEnvironment::default(),
        options(Arc::new(SystemClock)),
    )
    .unwrap();
    let selector = IdentitySelector::ClientId(reports.client_id.clone());

    let a = providers.get(Some(&selector)).unwrap();
    let b = providers.get(Some(&selector)).unwrap();

    assert!(Arc::ptr_eq(&a, &b));
    assert!(Arc::ptr_eq(
        &providers.get(None).unwrap(),
        &providers.default_provider()
    ));
    let runbook_token = a.token(EXCHANGE).await.unwrap();
    let default_token = providers.default_provider().token(EXCHANGE).await.unwrap();
    assert_eq!(
        claims(&runbook_token).oid.as_deref(),
        Some(reports.object_id.as_str())
    );
    assert_eq!(
        claims(&default_token).oid.as_deref(),
        Some(system_identity(&sim).object_id.as_str())
    );
    providers.shutdown().await;
    assert!(matches!(
        a.token(STORAGE).await,
        Err(IdentityError::ShutDown)
    ));
}

#[tokio::test]
async fn the_azure_core_credential_serves_storage_tokens_from_the_same_cache() {
    let sim = simulator(IdentitySimulatorConfig::default()).await;
    let provider = imds_provider(&sim, imds_settings(&sim));
    let credential = ProviderCredential::new(provider.clone());

    let first = credential
        .get_token(&["https://storage.azure.com/.default"], None)
        .await
        .unwrap();
    let second = credential
        .get_token(&["https://storage.azure.com/.default"], None)
        .await
        .unwrap();
    let direct = provider.token(STORAGE).await.unwrap();

    assert_eq!(sim.token_requests(), 1);
    assert_eq!(sim.requests()[0].query_value("resource"), Some(STORAGE));
    assert_eq!(first.token.secret(), second.token.secret());
    assert_eq!(first.token.secret(), direct.expose());
    assert_eq!(
        first.expires_on.unix_timestamp(),
        direct.expires_on.timestamp()
    );
    assert!(
        credential
            .get_token(&["a/.default", "b/.default"], None)
            .await
            .is_err()
    );
}

// ---- redaction -------------------------------------------------------------------------

/// The parts of a JWT that make it a credential (payload and signature); the header is the
/// same for every simulated token.
fn secret_parts(token: &str) -> Vec<String> {
    token.split('.').skip(1).map(str::to_string).collect()
}

#[tokio::test]
async fn no_token_text_reaches_the_logs_of_a_full_token_flow() {
    let (_logs_guard, logs) = capture_logs();
    let (clock, sim, provider) = clocked_imds(
        IdentitySimulatorConfig::default().with_token_lifetime(Duration::from_secs(3 * 3600)),
    )
    .await;

    // Fetch, cached get, forced refresh, the azure_core adapter, a background refresh that
    // fails once and then succeeds, and a failing identity.
    let token = provider.token(EXCHANGE).await.unwrap();
    provider.token(EXCHANGE).await.unwrap();
    provider.refresh(EXCHANGE, Some("claims")).await.unwrap();
    ProviderCredential::new(provider.clone())
        .get_token(&["https://storage.azure.com/.default"], None)
        .await
        .unwrap();
    sim.script([Step::status(503).forever()]);
    clock.advance(Duration::from_secs(91 * 60));
    let logs_ref = &logs;
    assert!(
        wait_until(PATIENCE, || async move {
            logs_ref.text().contains("token refresh failed")
        })
        .await
    );
    sim.clear_script();
    let before = sim.token_requests();
    let sim_ref = &sim;
    assert!(
        wait_until(PATIENCE, || async move {
            sim_ref
                .requests()
                .iter()
                .skip(before)
                .filter(|r| r.status == Some(200))
                .count()
                >= 2
        })
        .await
    );
    let failing = imds_provider(
        &sim,
        IdentitySettings {
            client_id: Some("not-assigned".into()),
            ..imds_settings(&sim)
        },
    );
    let error = failing.token(EXCHANGE).await.unwrap_err();
    provider.shutdown().await;

    let text = logs.text();
    assert!(text.contains("token fetched"), "{text}");
    assert!(text.contains("token refresh failed"), "{text}");
    let debug_outputs = [
        format!("{token:?}"),
        format!("{error:?}"),
        error.to_string(),
        format!("{provider:?}"),
    ];
    assert!(debug_outputs[0].contains("[redacted]"));
    let issued = sim.issued_tokens();
    assert!(issued.len() >= 4, "{}", issued.len());
    for token in issued {
        for part in secret_parts(&token) {
            assert!(!text.contains(&part), "a token appears in the logs");
            for output in &debug_outputs {
                assert!(!output.contains(&part), "a token appears in {output}");
            }
        }
    }
}

#[tokio::test]
async fn the_binary_never_prints_or_logs_the_token_even_at_trace_level() {
    let sim = simulator(IdentitySimulatorConfig::default()).await;
    let out = run_against(&sim, &["--log-level", "trace", "token"]).await;

    assert!(out.status.success(), "{}", stderr(&out));
    let (printed, logged) = (stdout(&out), stderr(&out));
    assert!(logged.contains("token fetched"), "{logged}");
    let issued = sim.issued_tokens();
    assert_eq!(issued.len(), 1);
    for part in secret_parts(&issued[0]) {
        assert!(!printed.contains(&part), "the token is on stdout");
        assert!(!logged.contains(&part), "the token is in the log");
    }
}

// ---- the token command -----------------------------------------------------------------

#[tokio::test]
async fn token_prints_what_an_operator_needs_to_debug_permissions() {
    let sim = simulator(IdentitySimulatorConfig::default()).await;
    let out = run_against(&sim, &["token"]).await;

    assert!(out.status.success(), "{}", stderr(&out));
    let printed = stdout(&out);
    let system = system_identity(&sim);
    for expected in [
        "source     imds",
        &format!(
            "endpoint   {}/metadata/identity/oauth2/token",
            sim.base_url()
        ),
        "identity   the system-assigned identity",
        &format!("tenant     {SIMULATED_TENANT_ID}"),
        &format!("audience   {EXCHANGE}"),
        &format!("app id     {}", system.client_id),
        &format!("object id  {}", system.object_id),
        "roles      Exchange.ManageAsApp",
        &format!("wids       {EXCHANGE_ADMINISTRATOR_WID} Exchange Administrator"),
        "expires",
    ] {
        assert!(
            printed.contains(expected),
            "missing {expected:?} in\n{printed}"
        );
    }
    assert!(!printed.contains("hint"), "{printed}");
    assert!(!printed.contains("token "), "{printed}");
}

#[tokio::test]
async fn token_hints_at_missing_exchange_permissions() {
    let sim = simulator(
        IdentitySimulatorConfig::default().with_system_assigned(Some(
            SimulatedIdentity::new("bare")
                .with_roles(&[])
                .with_wids(&[]),
        )),
    )
    .await;
    let out = run_against(&sim, &["token"]).await;

    let printed = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(printed.contains("roles      (none)"), "{printed}");
    assert!(
        printed.contains("no Exchange.ManageAsApp app role"),
        "{printed}"
    );
    assert!(
        printed.contains("no Exchange-relevant Entra role"),
        "{printed}"
    );
}

#[tokio::test]
async fn token_raw_with_json_output_adds_the_token() {
    let sim = simulator(IdentitySimulatorConfig::default()).await;
    let out = run_against(
        &sim,
        &["token", "--raw", "--output", "json", "--resource", STORAGE],
    )
    .await;

    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["source"], "imds");
    assert_eq!(report["audience"], STORAGE);
    assert_eq!(report["tenant"], SIMULATED_TENANT_ID);
    assert_eq!(report["token"], sim.issued_tokens()[0].as_str());
    assert_eq!(
        report["directory_roles"][0]["name"],
        "Exchange Administrator"
    );
}

#[tokio::test]
async fn token_fails_fast_and_clearly_off_azure() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("http://127.0.0.1:{}", closed_port());

    let out = run_binary_off_runtime(
        dir.path(),
        &["token"],
        &[("RUNBOOK_WORKER__IDENTITY__IMDS_ENDPOINT", &endpoint)],
    )
    .await;

    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("no managed identity endpoint: not on Azure? set identity.source"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

// ---- App Service and Azure CLI through the binary (the SDK reads their variables) ------

#[tokio::test]
async fn the_app_service_source_is_used_when_its_variables_are_set() {
    let reports = SimulatedIdentity::new("reports");
    let sim =
        simulator(IdentitySimulatorConfig::default().with_user_assigned(reports.clone())).await;
    let dir = tempfile::tempdir().unwrap();
    let endpoint = sim.app_service_endpoint();
    let app_service = [
        ("IDENTITY_ENDPOINT", endpoint.as_str()),
        ("IDENTITY_HEADER", sim.app_service_secret()),
    ];

    let system =
        run_binary_off_runtime(dir.path(), &["token", "--output", "json"], &app_service).await;
    let with_client: Vec<_> = app_service
        .iter()
        .copied()
        .chain([(
            "RUNBOOK_WORKER__IDENTITY__CLIENT_ID",
            reports.client_id.as_str(),
        )])
        .collect();
    let user =
        run_binary_off_runtime(dir.path(), &["token", "--output", "json"], &with_client).await;

    for out in [&system, &user] {
        assert!(out.status.success(), "{}", stderr(out));
        let report: serde_json::Value = serde_json::from_str(&stdout(out)).unwrap();
        assert_eq!(report["source"], "app-service");
        assert_eq!(report["endpoint"], endpoint.as_str());
    }
    let user_report: serde_json::Value = serde_json::from_str(&stdout(&user)).unwrap();
    assert_eq!(user_report["object_id"], reports.object_id.as_str());
    let requests = sim.requests();
    assert_eq!(requests.len(), 2);
    for request in &requests {
        assert_eq!(request.endpoint, SimulatedEndpoint::AppService);
        assert_eq!(request.header("x-identity-header"), Some("[redacted]"));
        assert_eq!(request.query_value("api-version"), Some("2019-08-01"));
        assert_eq!(request.status, Some(200));
    }
    assert_eq!(
        requests[1].query_value("client_id"),
        Some(reports.client_id.as_str())
    );
}

#[tokio::test]
async fn the_app_service_source_refuses_a_resource_id_and_a_wrong_secret() {
    let sim = simulator(IdentitySimulatorConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let endpoint = sim.app_service_endpoint();

    let resource_id = run_binary_off_runtime(
        dir.path(),
        &["token"],
        &[
            ("IDENTITY_ENDPOINT", &endpoint),
            ("IDENTITY_HEADER", sim.app_service_secret()),
            (
                "RUNBOOK_WORKER__IDENTITY__RESOURCE_ID",
                "/subscriptions/x/id",
            ),
        ],
    )
    .await;
    let wrong_secret = run_binary_off_runtime(
        dir.path(),
        &["token"],
        &[
            ("IDENTITY_ENDPOINT", &endpoint),
            ("IDENTITY_HEADER", "not-the-secret"),
        ],
    )
    .await;

    assert!(!resource_id.status.success());
    assert!(
        stderr(&resource_id).contains("identity.resource_id"),
        "{}",
        stderr(&resource_id)
    );
    assert!(!wrong_secret.status.success());
    let err = stderr(&wrong_secret);
    assert!(err.contains("HTTP 401"), "{err}");
    assert!(!err.contains("not-the-secret"), "{err}");
    assert_eq!(
        sim.token_requests(),
        1,
        "the resource id never left the process"
    );
}

#[tokio::test]
async fn the_azure_cli_source_runs_az_account_get_access_token() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let args_file = dir.path().join("az-args");
    let expires = SystemClock.now().timestamp() + 3600;
    let token = jwt::mint(&serde_json::json!({
        "tid": "c1c1c1c1-0000-4000-8000-000000000001",
        "aud": EXCHANGE,
        "exp": expires,
        "roles": [EXCHANGE_MANAGE_AS_APP],
    }));
    // What `az account get-access-token -o json` prints (CLI 2.54+ adds `expires_on`).
    let script = format!(
        "#!/bin/sh\necho \"$@\" > '{}'\ncat <<'EOF'\n{{\"accessToken\": \"{token}\", \"expiresOn\": \"2030-01-01 00:00:00.000000\", \"expires_on\": {expires}, \"subscription\": \"sub\", \"tenant\": \"c1c1c1c1-0000-4000-8000-000000000001\", \"tokenType\": \"Bearer\"}}\nEOF\n",
        args_file.display()
    );
    let az = bin.join("az");
    std::fs::write(&az, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&az, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );

    let out = run_binary_off_runtime(
        dir.path(),
        &["token", "--output", "json"],
        &[
            ("PATH", &path),
            ("RUNBOOK_WORKER__IDENTITY__SOURCE", "azure-cli"),
        ],
    )
    .await;

    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["source"], "azure-cli");
    assert_eq!(report["tenant"], "c1c1c1c1-0000-4000-8000-000000000001");
    assert!(report.get("token").is_none());
    let args = std::fs::read_to_string(&args_file).unwrap();
    assert_eq!(
        args.trim(),
        format!("account get-access-token -o json --scope {EXCHANGE}/.default")
    );
}

#[tokio::test]
async fn an_absurd_expires_in_from_entra_id_is_clamped_not_a_panic() {
    let sim =
        simulator(IdentitySimulatorConfig::default().with_token_lifetime(Duration::MAX)).await;
    let (provider, _dir, _) = workload_provider(&sim, sim.federated_assertion()).await;

    let token = provider.token(EXCHANGE).await;

    assert!(token.is_ok(), "{token:?}");
}
