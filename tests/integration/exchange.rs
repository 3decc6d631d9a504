//! The Exchange client against the simulated tenant, asserted on the wire: what was sent
//! (body, headers, how many requests, to where) and what changed in the organisation.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use runbook_worker::clock::ManualClock;
use runbook_worker::duration::HumanDuration;
use runbook_worker::exchange::params::parameters;
use runbook_worker::exchange::{
    ExchangeClient, ExchangeError, ExchangeSettings, InvokeOptions, PageSize, ParamValue,
    Parameters, TenantLimiter,
};
use runbook_worker::simulator::exchange::{
    Fault, Listener, RecipientTypeDetails, RedirectTo, SimulatorConfig,
};

use crate::support::exchange::{tenant, tenant_with};

fn small() -> SimulatorConfig {
    SimulatorConfig::default().with_mailboxes(25)
}

fn hashtable(pairs: &[(&str, ParamValue)]) -> ParamValue {
    ParamValue::HashTable(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
    )
}

fn identity(id: &str) -> Parameters {
    parameters([("Identity", id.into())])
}

fn with(mut params: Parameters, name: &str, value: ParamValue) -> Parameters {
    params.insert(name.to_string(), value);
    params
}

// ---------------------------------------------------------------------------------------
// Encoding and headers

#[tokio::test]
async fn every_parameter_kind_reaches_the_wire_as_the_module_encodes_it() {
    let t = tenant(small()).await;
    let hold_until = Utc.with_ymd_and_hms(2030, 1, 31, 22, 30, 0).unwrap();
    let params = parameters([
        ("Identity", "adele.vance@contoso.com".into()),
        (
            "EmailAddresses",
            hashtable(&[
                (
                    "Add",
                    vec!["smtp:av@contoso.com", "smtp:adele@contoso.com"].into(),
                ),
                ("Remove", "smtp:adele.vance@contoso.onmicrosoft.com".into()),
            ]),
        ),
        ("HiddenFromAddressListsEnabled", true.into()),
        ("ProhibitSendQuota", "49GB".into()),
        ("IssueWarningQuota", "48 GB".into()),
        ("EndDateForRetentionHold", hold_until.into()),
        ("CustomAttribute1", ParamValue::Null),
        ("Force", true.into()),
    ]);
    let output = t.client.invoke_all("Set-Mailbox", params).await.unwrap();
    assert!(output.records.is_empty());

    let calls = t.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(
        calls[0].body.clone().unwrap(),
        json!({"CmdletInput": {"CmdletName": "Set-Mailbox", "Parameters": {
            "Identity": "adele.vance@contoso.com",
            "EmailAddresses": {"@odata.type": "#Exchange.GenericHashTable",
                "Add": ["smtp:av@contoso.com", "smtp:adele@contoso.com"],
                "Remove": "smtp:adele.vance@contoso.onmicrosoft.com"},
            "HiddenFromAddressListsEnabled": true,
            "ProhibitSendQuota": "49GB",
            "IssueWarningQuota": "48 GB",
            "EndDateForRetentionHold": "2030-01-31T22:30:00",
            "CustomAttribute1": null,
            "Force": true,
            "Confirm": false,
        }}})
    );
    let m = t.sim.mailbox("adele.vance").unwrap();
    assert!(m.hidden_from_address_lists_enabled);
    assert_eq!(
        m.email_addresses,
        vec![
            "SMTP:adele.vance@contoso.com",
            "smtp:av@contoso.com",
            "smtp:adele@contoso.com"
        ]
    );
    assert_eq!(
        m.prohibit_send_quota,
        runbook_worker::simulator::exchange::Quota::gb(49)
    );
    assert_eq!(
        m.end_date_for_retention_hold.unwrap().to_string(),
        "2030-01-31 22:30:00"
    );
}

#[tokio::test]
async fn an_array_of_hashtables_travels_with_its_collection_annotation() {
    let t = tenant(small()).await;
    let rules = ParamValue::Array(vec![
        hashtable(&[("Name", "a".into())]),
        hashtable(&[("Name", "b".into())]),
    ]);
    let error = t
        .client
        .invoke_all("Get-OrganizationConfig", parameters([("Rules", rules)]))
        .await
        .unwrap_err();
    // The service deserialised the array (its annotation was right) and only then found
    // that this cmdlet has no such parameter.
    assert!(
        error.to_string().contains("matches parameter name 'Rules'"),
        "{error}"
    );
    assert_eq!(
        Value::Object(t.calls()[0].parameters().unwrap().clone()),
        json!({
            "Rules@odata.type": "#Collection(Exchange.GenericHashTable)",
            "Rules": [
                {"@odata.type": "#Exchange.GenericHashTable", "Name": "a"},
                {"@odata.type": "#Exchange.GenericHashTable", "Name": "b"},
            ],
        })
    );
}

#[tokio::test]
async fn filter_booleans_are_rewritten_so_the_service_can_evaluate_them() {
    let t = tenant(small()).await;
    let hidden: HashSet<String> = t
        .sim
        .mailboxes()
        .into_iter()
        .filter(|m| m.hidden_from_address_lists_enabled)
        .map(|m| m.name)
        .collect();
    assert!(!hidden.is_empty(), "the seed has hidden mailboxes");
    let output = t
        .client
        .invoke_all(
            "Get-Mailbox",
            parameters([
                ("Filter", "HiddenFromAddressListsEnabled -eq $true".into()),
                ("ResultSize", "Unlimited".into()),
            ]),
        )
        .await
        .unwrap();
    let names: HashSet<String> = output
        .records
        .iter()
        .map(|r| r["Name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, hidden);
    let sent = t.calls()[0].parameters().unwrap()["Filter"].clone();
    assert_eq!(sent, json!("HiddenFromAddressListsEnabled -eq 'True'"));
}

#[tokio::test]
async fn every_request_carries_the_documented_headers_and_ids() {
    let t = tenant_with(small(), |s| s.page_size = PageSize::new(10).unwrap()).await;
    let output = t
        .client
        .invoke_all(
            "Get-Mailbox",
            parameters([("ResultSize", "Unlimited".into())]),
        )
        .await
        .unwrap();
    assert_eq!(output.records.len(), 25);
    t.client
        .invoke_all("Get-OrganizationConfig", Parameters::new())
        .await
        .unwrap();

    let calls = t.calls();
    assert_eq!(calls.len(), 4, "three pages and one more call");
    let anchor = format!(
        "APP:SystemMailbox{{bb558c35-97f1-4cb9-8ff7-d53741dc928c}}@{}",
        t.sim.tenant_id()
    );
    for call in &calls {
        assert_eq!(call.method, "POST");
        assert_eq!(call.header("authorization"), Some("Bearer [redacted]"));
        assert_eq!(call.header("content-type"), Some("application/json"));
        assert_eq!(call.header("accept"), Some("application/json"));
        assert_eq!(call.header("x-responseformat"), Some("json"));
        assert_eq!(call.header("x-anchormailbox"), Some(anchor.as_str()));
        assert_eq!(
            call.header("x-clientapplication"),
            Some("ExoManagementModule")
        );
        assert_eq!(call.header("x-serializationlevel"), Some("Partial"));
        assert_eq!(call.header("prefer"), Some("odata.maxpagesize=10"));
        assert!(
            call.header("accept-encoding")
                .unwrap_or("")
                .contains("gzip")
        );
        assert_eq!(call.header("x-cmdletname"), call.cmdlet());
        let id = call.header("client-request-id").unwrap();
        assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    }
    let request_ids: Vec<&str> = calls
        .iter()
        .map(|c| c.header("client-request-id").unwrap())
        .collect();
    assert!(
        request_ids[..3].iter().all(|id| *id == request_ids[0]),
        "one id per logical call, reused by its pages"
    );
    assert_ne!(request_ids[3], request_ids[0], "a new call gets a new id");
    let connection_ids: HashSet<&str> = calls
        .iter()
        .map(|c| c.header("connection-id").unwrap())
        .collect();
    assert_eq!(connection_ids.len(), 1, "one connection id per client");
    assert!(
        calls[0].path.ends_with(&format!(
            "/adminapi/beta/{}/InvokeCommand",
            t.sim.tenant_id()
        )),
        "the tenant segment defaults to the token's tid: {}",
        calls[0].path
    );
}

#[tokio::test]
async fn the_initial_domain_can_be_configured_as_the_organization() {
    let t = tenant_with(small(), |s| {
        s.organization = Some("contoso.onmicrosoft.com".to_string());
    })
    .await;
    let output = t
        .client
        .invoke_all("Get-AcceptedDomain", Parameters::new())
        .await
        .unwrap();
    assert_eq!(output.records.len(), 2);
    assert!(
        t.calls()[0]
            .path
            .contains("/adminapi/beta/contoso.onmicrosoft.com/InvokeCommand")
    );
}

// ---------------------------------------------------------------------------------------
// Paging

#[tokio::test]
async fn unlimited_reads_post_the_same_body_to_each_next_link() {
    let t = tenant_with(small(), |s| s.page_size = PageSize::new(10).unwrap()).await;
    let mut invocation = t.client.invoke(
        "Get-Mailbox",
        parameters([("ResultSize", "Unlimited".into())]),
    );
    let mut sizes = Vec::new();
    let mut names = HashSet::new();
    while let Some(page) = invocation.next().await {
        let page = page.unwrap();
        assert!(
            page.warnings.is_empty(),
            "the paging notice is not a cmdlet warning: {:?}",
            page.warnings
        );
        for record in &page.records {
            assert!(
                record.keys().all(|k| !k.contains('@')),
                "annotations stripped: {record:?}"
            );
            names.insert(record["Name"].as_str().unwrap().to_string());
        }
        sizes.push(page.records.len());
    }
    assert_eq!(sizes, vec![10, 10, 5]);
    assert_eq!(names.len(), 25);

    let calls = t.calls();
    assert_eq!(calls.len(), 3);
    assert!(!calls[0].path.contains("skiptoken"));
    for later in &calls[1..] {
        assert_eq!(later.method, "POST");
        assert!(later.path.contains("$skiptoken="), "{}", later.path);
        assert_eq!(later.body, calls[0].body, "the same body on every page");
    }
}

#[tokio::test]
async fn a_numeric_result_size_stops_early_and_shrinks_the_page() {
    let t = tenant_with(small(), |s| s.page_size = PageSize::new(10).unwrap()).await;
    let output = t
        .client
        .invoke_all("Get-Mailbox", parameters([("ResultSize", 15.into())]))
        .await
        .unwrap();
    assert_eq!(output.records.len(), 15);
    let prefers: Vec<String> = t
        .calls()
        .iter()
        .map(|c| c.header("prefer").unwrap().to_string())
        .collect();
    assert_eq!(prefers, vec!["odata.maxpagesize=10", "odata.maxpagesize=5"]);
    assert!(
        output
            .warnings
            .iter()
            .any(|w| w.starts_with("There are more results available")),
        "the service's truncation warning on the last page is kept: {:?}",
        output.warnings
    );
}

#[tokio::test]
async fn a_result_size_within_one_page_sends_one_request() {
    let t = tenant(small()).await;
    let count = t
        .client
        .invoke("Get-Mailbox", parameters([("ResultSize", 7.into())]))
        .count_records()
        .await
        .unwrap();
    assert_eq!(count, 7);
    let calls = t.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].header("prefer"), Some("odata.maxpagesize=7"));
}

#[tokio::test]
async fn a_consumer_that_reads_one_page_causes_exactly_one_request() {
    let t = tenant_with(SimulatorConfig::default().with_mailboxes(100), |s| {
        s.page_size = PageSize::new(10).unwrap()
    })
    .await;
    let mut invocation = t.client.invoke(
        "Get-Mailbox",
        parameters([("ResultSize", "Unlimited".into())]),
    );
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        t.calls().len(),
        0,
        "nothing is sent before the stream is polled"
    );
    let first = invocation.next().await.unwrap().unwrap();
    assert_eq!(first.records.len(), 10);
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        t.calls().len(),
        1,
        "no page is fetched ahead of the consumer"
    );
    drop(invocation);
    assert_eq!(t.calls().len(), 1);
}

#[tokio::test]
async fn an_expired_next_link_fails_the_whole_read() {
    let t = tenant_with(small(), |s| s.page_size = PageSize::new(10).unwrap()).await;
    let mut invocation = t.client.invoke(
        "Get-Mailbox",
        parameters([("ResultSize", "Unlimited".into())]),
    );
    invocation.next().await.unwrap().unwrap();
    t.sim.expire_next_links();
    let error = invocation.next().await.unwrap().unwrap_err();
    match &error {
        ExchangeError::IncompleteResults {
            pages,
            records,
            source,
            ..
        } => {
            assert_eq!((*pages, *records), (1, 10));
            assert!(
                source.to_string().contains("continuation token"),
                "{source}"
            );
        }
        other => panic!("expected IncompleteResults, got {other:?}"),
    }
    assert!(
        invocation.next().await.is_none(),
        "the stream ends after an error"
    );
    assert!(error.to_string().contains("results incomplete"), "{error}");

    // Collecting never returns a partial list.
    let mut invocation = t.client.invoke(
        "Get-Mailbox",
        parameters([("ResultSize", "Unlimited".into())]),
    );
    invocation.next().await.unwrap().unwrap();
    t.sim.expire_next_links();
    let rest = invocation.output().await;
    assert!(
        matches!(rest, Err(ExchangeError::IncompleteResults { .. })),
        "{rest:?}"
    );
}

#[tokio::test]
async fn a_next_link_to_another_origin_is_refused_without_following_it() {
    let t = tenant_with(small(), |s| s.page_size = PageSize::new(10).unwrap()).await;
    let port = t.sim.base_url().rsplit(':').next().unwrap().to_string();
    t.sim
        .set_next_link_base(Some(format!("http://localhost:{port}")));
    let error = t
        .client
        .invoke_all(
            "Get-Mailbox",
            parameters([("ResultSize", "Unlimited".into())]),
        )
        .await
        .unwrap_err();
    assert!(matches!(error, ExchangeError::Protocol { .. }), "{error:?}");
    assert!(
        error.to_string().contains("refused a next-page link"),
        "{error}"
    );
    assert_eq!(t.calls().len(), 1);
}

// ---------------------------------------------------------------------------------------
// Redirects

#[tokio::test]
async fn a_redirect_is_followed_by_re_posting_body_and_headers_to_the_regional_host() {
    for status in [307, 302, 301] {
        let t = tenant(small()).await;
        t.sim.inject(
            Some("Set-Mailbox"),
            Fault::Redirect {
                status,
                to: RedirectTo::Regional,
            },
            1,
        );
        t.client
            .invoke_all(
                "Set-Mailbox",
                with(
                    identity("adele.vance"),
                    "HiddenFromAddressListsEnabled",
                    true.into(),
                ),
            )
            .await
            .unwrap();
        let calls = t.calls();
        assert_eq!(calls.len(), 2, "HTTP {status}");
        assert_eq!(calls[0].listener, Listener::Primary);
        assert_eq!(calls[1].listener, Listener::Regional);
        assert_eq!(
            calls[1].method, "POST",
            "HTTP {status} must not become a GET"
        );
        assert_eq!(calls[1].body, calls[0].body);
        assert_eq!(calls[1].header("authorization"), Some("Bearer [redacted]"));
        assert_eq!(
            calls[1].header("client-request-id"),
            calls[0].header("client-request-id")
        );
        assert_eq!(
            calls[1].header("cookie"),
            Some("exo-affinity=0"),
            "affinity cookie kept"
        );
        assert!(
            t.sim
                .mailbox("adele.vance")
                .unwrap()
                .hidden_from_address_lists_enabled
        );
    }
}

#[tokio::test]
async fn a_relative_redirect_to_another_path_is_followed() {
    let t = tenant(small()).await;
    let location = format!("/eur03/adminapi/beta/{}/InvokeCommand", t.sim.tenant_id());
    t.sim.inject(
        None,
        Fault::Redirect {
            status: 308,
            to: RedirectTo::Location(location.clone()),
        },
        1,
    );
    let output = t
        .client
        .invoke_all("Get-Mailbox", identity("sales"))
        .await
        .unwrap();
    assert_eq!(output.records.len(), 1);
    let calls = t.calls();
    assert_eq!(calls[1].path, location);
}

#[tokio::test]
async fn a_redirect_to_a_foreign_host_is_refused() {
    let t = tenant(small()).await;
    t.sim.inject(
        None,
        Fault::Redirect {
            status: 307,
            to: RedirectTo::Location("http://localhost:9/adminapi/beta/x/InvokeCommand".into()),
        },
        1,
    );
    let error = t
        .client
        .invoke_all(
            "Set-Mailbox",
            with(identity("adele.vance"), "AuditEnabled", false.into()),
        )
        .await
        .unwrap_err();
    assert!(matches!(error, ExchangeError::Protocol { .. }), "{error:?}");
    assert!(error.to_string().contains("refused a redirect"), "{error}");
    assert_eq!(t.calls().len(), 1);
}

#[tokio::test]
async fn redirect_hops_are_capped() {
    let t = tenant_with(small(), |s| s.max_redirects = 3).await;
    t.sim.inject(
        None,
        Fault::Redirect {
            status: 307,
            to: RedirectTo::Regional,
        },
        10,
    );
    let error = t
        .client
        .invoke_all("Get-OrganizationConfig", Parameters::new())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("after 3 redirects"), "{error}");
    assert_eq!(t.calls().len(), 4, "the first request and three hops");
}

// ---------------------------------------------------------------------------------------
// Retries

#[tokio::test]
async fn throttling_waits_and_retries_and_halves_the_tenant_limit() {
    let t = tenant(small()).await;
    t.sim.inject(
        Some("Set-Mailbox"),
        Fault::Throttle {
            retry_after: Some(Duration::from_millis(5)),
        },
        2,
    );
    t.client
        .invoke_all(
            "Set-Mailbox",
            with(identity("adele.vance"), "AuditEnabled", false.into()),
        )
        .await
        .unwrap();
    assert_eq!(
        t.calls().len(),
        3,
        "a throttled write is not executed, so it is retried"
    );
    assert_eq!(t.limiter.throttles(), 2);
    assert!(t.limiter.limit() < 8.0, "{}", t.limiter.limit());
    assert!(!t.sim.mailbox("adele.vance").unwrap().audit_enabled);
}

#[tokio::test]
async fn persistent_throttling_gives_up_after_the_allowed_attempts() {
    let t = tenant_with(small(), |s| s.max_retries = 2).await;
    t.sim
        .inject(None, Fault::Throttle { retry_after: None }, 10);
    let error = t
        .client
        .invoke_all("Get-Mailbox", identity("sales"))
        .await
        .unwrap_err();
    match &error {
        ExchangeError::Throttled {
            attempts, message, ..
        } => {
            assert_eq!(*attempts, 3);
            assert!(
                message
                    .as_deref()
                    .unwrap_or("")
                    .contains("maximum number of concurrent requests")
            );
        }
        other => panic!("expected Throttled, got {other:?}"),
    }
    assert_eq!(t.calls().len(), 3);
}

#[tokio::test]
async fn a_wait_longer_than_the_deadline_is_not_started() {
    let error = throttled_once_within_half_a_second(Fault::Throttle {
        retry_after: Some(Duration::from_secs(30)),
    })
    .await;
    assert!(
        matches!(error, ExchangeError::Throttled { attempts: 1, .. }),
        "{error:?}"
    );
}

/// Reads once from a tenant that answers `fault` first, with a 500 ms deadline and a
/// 60 s wait cap, so any honoured `Retry-After` ends the call after one attempt.
async fn throttled_once_within_half_a_second(fault: Fault) -> ExchangeError {
    let t = tenant_with(small(), |s| {
        s.timeout = HumanDuration::from(Duration::from_millis(500));
        s.retry_max_delay = HumanDuration::from_secs(60);
    })
    .await;
    t.sim.inject(None, fault, 1);
    let error = t
        .client
        .invoke_all("Get-Mailbox", identity("sales"))
        .await
        .unwrap_err();
    assert_eq!(t.calls().len(), 1);
    error
}

#[tokio::test]
async fn reads_are_retried_after_server_errors_and_transient_exceptions() {
    let faults = [
        Fault::ServerError {
            status: 503,
            exception: None,
            after_executing: false,
        },
        Fault::ServerError {
            status: 504,
            exception: None,
            after_executing: false,
        },
        Fault::ServerError {
            status: 502,
            exception: None,
            after_executing: false,
        },
        Fault::ServerError {
            status: 500,
            exception: Some("DCOverloadedException".into()),
            after_executing: false,
        },
        Fault::ConnectionReset {
            after_executing: true,
        },
    ];
    for fault in faults {
        let t = tenant(small()).await;
        t.sim.inject(Some("Get-Mailbox"), fault.clone(), 2);
        let output = t
            .client
            .invoke_all("Get-Mailbox", identity("adele.vance"))
            .await
            .unwrap_or_else(|e| panic!("{fault:?}: {e}"));
        assert_eq!(output.records.len(), 1, "{fault:?}");
        assert_eq!(t.calls().len(), 3, "{fault:?}");
    }
}

#[tokio::test]
async fn a_write_is_not_replayed_after_a_500_that_may_have_applied_it() {
    let t = tenant(small()).await;
    t.sim.inject(
        Some("Set-Mailbox"),
        Fault::ServerError {
            status: 500,
            exception: None,
            after_executing: true,
        },
        1,
    );
    let error = t
        .client
        .invoke_all(
            "Set-Mailbox",
            with(
                identity("adele.vance"),
                "ForwardingSmtpAddress",
                "boss@fabrikam.example".into(),
            ),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error, ExchangeError::OutcomeUnknown { .. }),
        "{error:?}"
    );
    assert!(error.may_have_applied());
    let text = error.to_string();
    assert!(text.contains("Set-Mailbox on 'adele.vance'"), "{text}");
    assert!(text.contains("not retried"), "{text}");
    assert_eq!(t.calls().len(), 1, "never replayed");
    assert_eq!(
        t.sim
            .mailbox("adele.vance")
            .unwrap()
            .forwarding_smtp_address
            .as_deref(),
        Some("smtp:boss@fabrikam.example"),
        "the service did apply it"
    );
}

#[tokio::test]
async fn a_write_is_not_replayed_after_a_dropped_connection_or_a_gateway_error() {
    let faults = [
        Fault::ConnectionReset {
            after_executing: true,
        },
        Fault::ServerError {
            status: 502,
            exception: None,
            after_executing: true,
        },
        Fault::ServerError {
            status: 503,
            exception: None,
            after_executing: false,
        },
        Fault::ServerError {
            status: 500,
            exception: Some("StorageTransientException".into()),
            after_executing: false,
        },
    ];
    for fault in faults {
        let t = tenant(small()).await;
        t.sim
            .inject(Some("Add-MailboxPermission"), fault.clone(), 1);
        let error = t
            .client
            .invoke_all(
                "Add-MailboxPermission",
                parameters([
                    ("Identity", "sales".into()),
                    ("User", "adele.vance".into()),
                    ("AccessRights", vec!["FullAccess"].into()),
                ]),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(error, ExchangeError::OutcomeUnknown { .. }),
            "{fault:?}: {error:?}"
        );
        assert_eq!(t.calls().len(), 1, "{fault:?}");
    }
}

#[tokio::test]
async fn a_write_declared_idempotent_is_replayed_after_a_server_error() {
    let t = tenant(small()).await;
    t.sim.inject(
        Some("Set-CASMailbox"),
        Fault::ServerError {
            status: 503,
            exception: None,
            after_executing: false,
        },
        1,
    );
    let options = InvokeOptions {
        idempotent: true,
        ..InvokeOptions::default()
    };
    t.client
        .invoke_with(
            "Set-CASMailbox",
            with(identity("adele.vance"), "PopEnabled", false.into()),
            options,
        )
        .output()
        .await
        .unwrap();
    assert_eq!(t.calls().len(), 2);
    assert!(!t.sim.mailbox("adele.vance").unwrap().cas.pop_enabled);
}

#[tokio::test]
async fn no_answer_in_time_is_a_timeout_for_a_read_and_unknown_for_a_write() {
    let t = tenant_with(small(), |s| {
        s.timeout = HumanDuration::from(Duration::from_millis(150));
    })
    .await;
    t.sim.set_latency(Duration::from_secs(2));
    let read = t
        .client
        .invoke_all("Get-Mailbox", identity("sales"))
        .await
        .unwrap_err();
    assert!(matches!(read, ExchangeError::Timeout { .. }), "{read:?}");
    let write = t
        .client
        .invoke_all(
            "Set-Mailbox",
            with(identity("sales"), "AuditEnabled", false.into()),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(write, ExchangeError::OutcomeUnknown { .. }),
        "{write:?}"
    );
    assert!(write.to_string().contains("no answer within"), "{write}");
    // It was right not to call it a failure: the service did apply it.
    let applied = crate::support::wait_until(Duration::from_secs(5), || async {
        t.sim.mailbox("sales").is_some_and(|m| !m.audit_enabled)
    })
    .await;
    assert!(applied);
}

// ---------------------------------------------------------------------------------------
// Tokens and permissions

#[tokio::test]
async fn a_claims_challenge_refreshes_the_token_exactly_once() {
    let t = tenant(small()).await;
    t.sim.inject(None, Fault::ClaimsChallenge, 1);
    let output = t
        .client
        .invoke_all("Get-Mailbox", identity("sales"))
        .await
        .unwrap();
    assert_eq!(output.records.len(), 1);
    assert_eq!(t.calls().len(), 2);
    assert_eq!(t.tokens.refresh_calls(), 1);
    let challenges = t.tokens.challenges();
    assert_eq!(challenges.len(), 1);
    let claims: Value = serde_json::from_str(challenges[0].as_deref().unwrap()).unwrap();
    assert_eq!(claims["access_token"]["nbf"]["essential"], json!(true));
}

#[tokio::test]
async fn a_401_that_persists_after_one_refresh_is_unauthorized_with_the_reason() {
    let t = tenant_with(small(), |s| s.organization = Some("contoso.com".into())).await;
    let error = t
        .client
        .invoke_all("Get-Mailbox", identity("sales"))
        .await
        .unwrap_err();
    match &error {
        ExchangeError::Unauthorized { reason, .. } => {
            assert!(
                reason.contains("neither the token's tenant id nor its initial domain"),
                "{reason}"
            );
        }
        other => panic!("expected Unauthorized, got {other:?}"),
    }
    assert_eq!(t.tokens.refresh_calls(), 1);
    assert_eq!(t.calls().len(), 2);
}

#[tokio::test]
async fn an_expired_token_is_refused_with_the_reason_after_one_refresh() {
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let config = SimulatorConfig {
        clock: clock.clone(),
        ..small()
    };
    let t = tenant(config).await;
    clock.advance(Duration::from_secs(2 * 3600));
    let error = t
        .client
        .invoke_all("Get-Mailbox", identity("sales"))
        .await
        .unwrap_err();
    match &error {
        ExchangeError::Unauthorized { reason, .. } => {
            assert!(reason.contains("The token has expired"), "{reason}");
        }
        other => panic!("expected Unauthorized, got {other:?}"),
    }
    assert_eq!(t.tokens.refresh_calls(), 1);
}

#[tokio::test]
async fn an_unsupported_directory_role_is_not_retried_and_says_what_to_assign() {
    let t = tenant(small()).await;
    t.tokens
        .set_claim("wids", json!(["0997a1d0-0d1d-4acb-b408-d5ca73121e90"]));
    let error = t
        .client
        .invoke_all("Get-Mailbox", identity("sales"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, ExchangeError::Unauthorized { .. }),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(text.contains("isn't supported in this scenario"), "{text}");
    assert!(text.contains("Exchange Administrator"), "{text}");
    assert!(text.contains("no Entra directory role"), "{text}");
    assert_eq!(t.tokens.refresh_calls(), 0, "a new token would not help");
    assert_eq!(t.calls().len(), 1);
}

#[tokio::test]
async fn a_reader_role_may_read_but_not_write() {
    let t = tenant(small()).await;
    t.tokens
        .set_claim("wids", json!(["f2ef992c-3afb-46b9-b7cf-a126ee74c451"]));
    t.client
        .invoke_all("Get-Mailbox", identity("sales"))
        .await
        .unwrap();
    let error = t
        .client
        .invoke_all(
            "Set-Mailbox",
            with(identity("sales"), "AuditEnabled", false.into()),
        )
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("User is not allowed to call Set-Mailbox"),
        "{error}"
    );
}

#[tokio::test]
async fn a_token_without_the_app_role_is_forbidden_with_diagnostics_and_never_shown() {
    let t = tenant(small()).await;
    t.tokens
        .set_claim("roles", json!(["Exchange.ManageAsAppV2"]));
    let token = runbook_worker::identity::TokenSource::token(&*t.tokens, "x")
        .await
        .unwrap();
    let error = t
        .client
        .invoke_all("Get-Mailbox", identity("sales"))
        .await
        .unwrap_err();
    match &error {
        ExchangeError::Forbidden {
            diagnostics,
            request_id,
            hint,
            ..
        } => {
            assert!(
                diagnostics.as_deref().unwrap_or("").starts_with("2000008"),
                "{diagnostics:?}"
            );
            assert!(request_id.is_some());
            assert!(
                hint.as_deref()
                    .unwrap_or("")
                    .contains("no Exchange.ManageAsApp app role"),
                "{hint:?}"
            );
        }
        other => panic!("expected Forbidden, got {other:?}"),
    }
    let text = error.to_string();
    assert!(text.contains("Get-Mailbox on 'sales'"), "{text}");
    assert!(text.contains("deploy/permissions"), "{text}");
    assert!(!text.contains(token.expose()), "the token never appears");
    assert!(!format!("{error:?}").contains(token.expose()));
    assert_eq!(t.calls().len(), 1, "403 is not retried");
}

#[tokio::test]
async fn a_token_for_another_resource_is_forbidden_and_the_hint_names_the_audience() {
    let t = tenant(small()).await;
    t.tokens
        .set_claim("aud", json!("https://graph.microsoft.com"));
    let error = t
        .client
        .invoke_all("Get-OrganizationConfig", Parameters::new())
        .await
        .unwrap_err();
    assert!(
        matches!(error, ExchangeError::Forbidden { .. }),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains("audience is https://graph.microsoft.com"),
        "{error}"
    );
}

// ---------------------------------------------------------------------------------------
// Errors and cmdlet output

#[tokio::test]
async fn an_unknown_object_is_not_found_with_the_service_message() {
    let t = tenant(small()).await;
    let error = t
        .client
        .invoke_all("Get-Mailbox", identity("nobody@contoso.com"))
        .await
        .unwrap_err();
    match &error {
        ExchangeError::NotFound {
            message,
            request_id,
            ..
        } => {
            assert!(
                message.contains("'nobody@contoso.com' couldn't be found"),
                "{message}"
            );
            assert!(request_id.is_some());
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert!(
        error
            .to_string()
            .starts_with("Get-Mailbox on 'nobody@contoso.com': not found"),
        "{error}"
    );
    assert_eq!(t.calls().len(), 1);
}

#[tokio::test]
async fn cmdlet_errors_are_parsed_from_both_detail_forms() {
    let t = tenant(small()).await;
    // The pipe form: an unknown parameter.
    let error = t
        .client
        .invoke_all(
            "Set-Mailbox",
            with(identity("sales"), "Colour", "blue".into()),
        )
        .await
        .unwrap_err();
    match &error {
        ExchangeError::CmdletFailed {
            status,
            class,
            message,
            ..
        } => {
            assert_eq!(*status, 400);
            assert_eq!(
                class.as_deref(),
                Some("System.Management.Automation.ParameterBindingException")
            );
            assert_eq!(
                message,
                "A parameter cannot be found that matches parameter name 'Colour'."
            );
        }
        other => panic!("expected CmdletFailed, got {other:?}"),
    }
    // The JSON form: a proxy address another mailbox owns.
    let error = t
        .client
        .invoke_all(
            "Set-Mailbox",
            with(
                identity("sales"),
                "EmailAddresses",
                hashtable(&[("Add", "smtp:adele.vance@contoso.com".into())]),
            ),
        )
        .await
        .unwrap_err();
    match &error {
        ExchangeError::CmdletFailed {
            class,
            message,
            error_id,
            ..
        } => {
            assert_eq!(
                class.as_deref(),
                Some("Microsoft.Exchange.Data.Directory.ADObjectAlreadyExistsException")
            );
            assert!(message.contains("is already being used"), "{message}");
            assert_eq!(error_id.as_deref(), Some("ErrorProxyAddressAlreadyExists"));
        }
        other => panic!("expected CmdletFailed, got {other:?}"),
    }
    // An unknown cmdlet.
    let error = t
        .client
        .invoke_all("Get-Mailboxes", Parameters::new())
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("CommandNotFoundException"),
        "{error}"
    );
    assert!(
        error.to_string().contains("check the cmdlet name"),
        "{error}"
    );
    assert_eq!(t.calls().len(), 3, "definite answers are not retried");
}

#[tokio::test]
async fn warnings_and_non_terminating_errors_reach_the_caller() {
    let t = tenant(small()).await;
    let output = t
        .client
        .invoke_all(
            "Set-Mailbox",
            with(
                identity("sales"),
                "HiddenFromAddressListsEnabled",
                true.into(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        output.warnings,
        vec!["The command completed successfully but no settings of 'sales' have been modified."]
    );
    let output = t
        .client
        .invoke_all(
            "Get-MailboxStatistics",
            parameters([("Identity", vec!["adele.vance", "ghost@contoso.com"].into())]),
        )
        .await
        .unwrap();
    assert_eq!(output.records.len(), 1);
    assert!(output.completed_with_errors());
    assert_eq!(output.errors.len(), 1);
    assert!(output.errors[0].is_not_found(), "{:?}", output.errors[0]);
    assert!(output.errors[0].message.contains("ghost@contoso.com"));
}

#[tokio::test]
async fn high_impact_cmdlets_act_because_confirm_false_is_sent() {
    let t = tenant(small()).await;
    let grant = parameters([
        ("Identity", "sales".into()),
        ("User", "adele.vance".into()),
        ("AccessRights", vec!["FullAccess"].into()),
    ]);
    let added = t
        .client
        .invoke_all("Add-MailboxPermission", grant.clone())
        .await
        .unwrap();
    assert_eq!(added.records[0]["User"], json!("adele.vance@contoso.com"));
    let before = t
        .client
        .invoke_all("Get-MailboxPermission", identity("sales"))
        .await
        .unwrap();
    assert_eq!(before.records.len(), 2, "SELF and Adele");

    t.client
        .invoke_all("Remove-MailboxPermission", grant.clone())
        .await
        .unwrap();
    let after = t
        .client
        .invoke_all("Get-MailboxPermission", identity("sales"))
        .await
        .unwrap();
    assert_eq!(after.records.len(), 1);
    let remove = t
        .calls()
        .into_iter()
        .find(|c| c.cmdlet() == Some("Remove-MailboxPermission"))
        .unwrap();
    assert_eq!(remove.parameters().unwrap()["Confirm"], json!(false));

    // A caller who insists on confirmation gets told nothing happened.
    t.client
        .invoke_all("Add-MailboxPermission", grant.clone())
        .await
        .unwrap();
    let error = t
        .client
        .invoke_all(
            "Remove-MailboxPermission",
            with(grant, "Confirm", true.into()),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error, ExchangeError::ConfirmationRequired { .. }),
        "{error:?}"
    );
    assert_eq!(t.sim.with_org(|o| o.mailbox_permissions[&2].len()), 1);
}

#[tokio::test]
async fn the_runbook_cmdlets_work_end_to_end() {
    let t = tenant(small()).await;
    let c = &t.client;
    // Archives.
    let enabled = c
        .invoke_all(
            "Enable-Mailbox",
            with(identity("adele.vance"), "Archive", true.into()),
        )
        .await
        .unwrap();
    assert_eq!(enabled.records[0]["ArchiveStatus"], json!("Active"));
    let again = c
        .invoke_all(
            "Enable-Mailbox",
            with(identity("adele.vance"), "Archive", true.into()),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(again, ExchangeError::CmdletFailed { status: 500, .. }),
        "{again:?}"
    );
    let stats = c
        .invoke_all(
            "Get-MailboxStatistics",
            with(identity("alex.wilber"), "Archive", true.into()),
        )
        .await
        .unwrap();
    assert_eq!(
        stats.records[0]["TotalItemSize"],
        json!("3 GB (3,221,225,472 bytes)")
    );
    // Client access.
    c.invoke_all(
        "Set-CASMailbox",
        with(identity("alex.wilber"), "ImapEnabled", false.into()),
    )
    .await
    .unwrap();
    let cas = c
        .invoke_all("Get-CASMailbox", identity("alex.wilber"))
        .await
        .unwrap();
    assert_eq!(cas.records[0]["ImapEnabled"], json!(false));
    // Shared mailboxes by type, and the EXO variant's small default property set.
    let shared = c
        .invoke_all(
            "Get-EXOMailbox",
            parameters([
                ("RecipientTypeDetails", "SharedMailbox".into()),
                ("ResultSize", "Unlimited".into()),
            ]),
        )
        .await
        .unwrap();
    let expected = t
        .sim
        .mailboxes()
        .iter()
        .filter(|m| m.recipient_type_details == RecipientTypeDetails::SharedMailbox)
        .count();
    assert_eq!(shared.records.len(), expected);
    assert!(shared.records[0].contains_key("PrimarySmtpAddress"));
    assert!(!shared.records[0].contains_key("ProhibitSendQuota"));
    // Calendar permissions.
    let folder = "room101:\\Calendar";
    c.invoke_all(
        "Add-MailboxFolderPermission",
        parameters([
            ("Identity", folder.into()),
            ("User", "adele.vance".into()),
            ("AccessRights", "Editor".into()),
            ("SharingPermissionFlags", "Delegate".into()),
        ]),
    )
    .await
    .unwrap();
    c.invoke_all(
        "Set-MailboxFolderPermission",
        parameters([
            ("Identity", folder.into()),
            ("User", "Default".into()),
            ("AccessRights", "LimitedDetails".into()),
        ]),
    )
    .await
    .unwrap();
    let perms = c
        .invoke_all(
            "Get-MailboxFolderPermission",
            parameters([("Identity", folder.into())]),
        )
        .await
        .unwrap();
    let rows: Vec<(String, Value)> = perms
        .records
        .iter()
        .map(|r| {
            (
                r["User"].as_str().unwrap().to_string(),
                r["AccessRights"].clone(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            ("Default".to_string(), json!(["LimitedDetails"])),
            ("Anonymous".to_string(), json!(["None"])),
            ("Adele Vance".to_string(), json!(["Editor"])),
        ]
    );
    // Organisation-wide reads.
    let config = c
        .invoke_all("Get-OrganizationConfig", Parameters::new())
        .await
        .unwrap();
    assert_eq!(config.records[0]["Name"], json!("contoso.onmicrosoft.com"));
}

// ---------------------------------------------------------------------------------------
// Limiter, cancellation, settings

#[tokio::test]
async fn one_limiter_caps_the_requests_in_flight_across_clients() {
    let t = tenant(small().with_latency(Duration::from_millis(20))).await;
    let limiter = Arc::new(TenantLimiter::new(2));
    let clients: Vec<ExchangeClient> = (0..2)
        .map(|_| ExchangeClient::new(&t.settings, t.tokens.clone(), limiter.clone()).unwrap())
        .collect();
    let calls = (0..12).map(|i| {
        let client = clients[i % 2].clone();
        async move { client.invoke_all("Get-Mailbox", identity("sales")).await }
    });
    let results = futures::future::join_all(calls).await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(t.sim.stats().requests, 12);
    assert!(t.sim.stats().peak_in_flight <= 2, "{:?}", t.sim.stats());
    assert_eq!(limiter.in_flight(), 0);
}

#[tokio::test]
async fn the_tenant_concurrency_cap_is_met_by_backing_off_and_lowering_the_limit() {
    let config = small()
        .with_latency(Duration::from_millis(10))
        .with_max_concurrent(2);
    let t = tenant(config).await;
    t.sim.set_throttle_retry_after(Duration::from_millis(5));
    let client = t.client_with(|s| s.max_retries = 20);
    let calls = (0..16).map(|_| {
        let client = client.clone();
        async move {
            client
                .invoke_all(
                    "Set-Mailbox",
                    with(identity("sales"), "AuditEnabled", false.into()),
                )
                .await
        }
    });
    let results = futures::future::join_all(calls).await;
    for result in &results {
        assert!(result.is_ok(), "{result:?}");
    }
    let stats = t.sim.stats();
    assert!(
        stats.throttled > 0,
        "eight callers against a cap of two meet 429s"
    );
    assert_eq!(
        t.limiter.throttles(),
        stats.throttled,
        "every 429 reached the limiter"
    );
    assert!(stats.peak_in_flight <= 2);
}

#[tokio::test]
async fn a_cancelled_call_sends_nothing_and_says_so() {
    let t = tenant(small()).await;
    let cancel = CancellationToken::new();
    cancel.cancel();
    let error = t
        .client
        .invoke_with(
            "Get-Mailbox",
            identity("sales"),
            InvokeOptions {
                cancel,
                ..InvokeOptions::default()
            },
        )
        .output()
        .await
        .unwrap_err();
    assert!(
        matches!(error, ExchangeError::Cancelled { .. }),
        "{error:?}"
    );
    assert_eq!(t.calls().len(), 0);
}

#[tokio::test]
async fn the_simulator_refuses_a_get_on_invoke_command() {
    let t = tenant(small()).await;
    let url = format!(
        "{}/adminapi/beta/{}/InvokeCommand",
        t.sim.base_url(),
        t.sim.tenant_id()
    );
    let response = reqwest::Client::new().get(url).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 405);
    assert_eq!(response.headers()["allow"], "POST");
}

#[tokio::test]
async fn records_can_be_consumed_one_by_one_across_pages() {
    let t = tenant_with(small(), |s| s.page_size = PageSize::new(4).unwrap()).await;
    let aliases: Vec<String> = t
        .client
        .invoke(
            "Get-Mailbox",
            parameters([("ResultSize", "Unlimited".into())]),
        )
        .records()
        .map(|r| r.unwrap()["Alias"].as_str().unwrap().to_string())
        .collect()
        .await;
    let expected: Vec<String> = t.sim.mailboxes().into_iter().map(|m| m.alias).collect();
    assert_eq!(aliases, expected);
    assert_eq!(t.calls().len(), 7);
}

#[test]
fn exchange_settings_come_from_the_file_and_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("runbook-worker.toml"),
        "[exchange]\ncloud = \"gcc-high\"\nmax_retries = 3\nretry_base_delay = \"250ms\"\n",
    )
    .unwrap();
    let env: HashMap<String, String> = [(
        "RUNBOOK_WORKER__EXCHANGE__ENDPOINT".to_string(),
        "http://127.0.0.1:1".to_string(),
    )]
    .into_iter()
    .collect();
    let settings = runbook_worker::settings::load(None, dir.path(), &env).unwrap();
    let exchange: &ExchangeSettings = &settings.exchange;
    assert_eq!(
        exchange.endpoint.as_ref().map(|url| url.as_str()),
        Some("http://127.0.0.1:1/")
    );
    assert_eq!(exchange.max_retries, 3);
    assert_eq!(exchange.retry_base_delay.get(), Duration::from_millis(250));
    assert_eq!(exchange.cloud.resource(), "https://outlook.office365.us");
}

#[test]
fn a_page_size_out_of_range_cannot_be_given_to_a_client() {
    // The one check: a client's settings hold a `PageSize`, which only exists in range.
    assert!(PageSize::new(0).is_err());
    assert!(PageSize::new(1001).is_err());
    assert_eq!(PageSize::new(1000).unwrap(), PageSize::MAX);
    let error = toml::from_str::<ExchangeSettings>("page_size = 0").unwrap_err();
    assert!(error.to_string().contains("between 1 and 1000"), "{error}");
}

// ---------------------------------------------------------------------------------------
// Hostile answers

#[tokio::test]
async fn an_absurd_retry_after_is_clamped_instead_of_panicking() {
    let answers = [
        (Some("1e300"), "Too many requests."),
        (Some("99999999999999999999999"), "Too many requests."),
        (None, "Try again in 99999999999999999999999 seconds."),
        (None, "Try again in 1e300 seconds."),
    ];
    for (header, message) in answers {
        let error = throttled_once_within_half_a_second(Fault::ThrottleVerbatim {
            retry_after: header.map(str::to_string),
            message: message.to_string(),
        })
        .await;
        assert!(
            matches!(error, ExchangeError::Throttled { attempts: 1, .. }),
            "{header:?} {message}: {error:?}"
        );
        assert!(error.to_string().contains("Get-Mailbox"), "{error}");
    }
}

#[tokio::test]
async fn an_answer_over_the_byte_cap_fails_the_call_naming_the_setting() {
    let t = tenant_with(small().with_mailboxes(200), |s| {
        s.max_response_bytes = 16 * 1024;
    })
    .await;
    let error = t
        .client
        .invoke_all("Get-Mailbox", Parameters::new())
        .await
        .unwrap_err();
    assert!(matches!(error, ExchangeError::Protocol { .. }), "{error:?}");
    let shown = error.to_string();
    assert!(shown.contains("Get-Mailbox"), "{shown}");
    assert!(shown.contains("exchange.max_response_bytes"), "{shown}");
    assert_eq!(t.calls().len(), 1, "a refused answer is not retried");

    // The same read within the cap succeeds.
    let t = tenant_with(small().with_mailboxes(200), |_| {}).await;
    let output = t
        .client
        .invoke_all("Get-Mailbox", Parameters::new())
        .await
        .unwrap();
    assert!(output.records.len() >= 200, "{}", output.records.len());
}
