//! The Graph client and the Key Vault client against their simulators on 127.0.0.1, with
//! tokens from the identity simulator through the real token provider.

use std::collections::HashSet;

use futures::StreamExt;
use reqwest::Method;
use runbook_worker::graph::{GraphError, GraphPage, GraphRequest, MailMessage};
use runbook_worker::keyvault::{KeyVaultError, SecretRef};
use runbook_worker::simulator::graph::{Fault, SKU_E3};
use serde_json::{Value, json};

use crate::support::graph::{READER_AND_WRITER, world};
use crate::support::identity::capture_logs;

async fn pages(
    client: &runbook_worker::graph::GraphClient,
    request: GraphRequest,
) -> Vec<Result<GraphPage, GraphError>> {
    client.request(request).collect().await
}

/// The next `assignLicense` runs and is answered 500 (its outcome unknown to the caller);
/// the body of such a call.
fn answer_the_next_assign_license_with_500(w: &crate::support::graph::World) -> Value {
    w.graph.inject(
        Some(Method::POST),
        Some("assignLicense"),
        Fault::ServerError {
            status: 500,
            after_executing: true,
        },
        1,
    );
    json!({"addLicenses": [{"skuId": SKU_E3, "disabledPlans": []}], "removeLicenses": []})
}

#[tokio::test]
async fn paging_2500_users_at_top_999_reads_three_pages_with_every_user_once() {
    let w = world(&["User.Read.All"], 2_500).await;
    let request = GraphRequest::get("/v1.0/users")
        .query("$select", "id,userPrincipalName,accountEnabled")
        .query("$top", "999")
        .advanced_query();
    let pages: Vec<GraphPage> = pages(&w.client, request)
        .await
        .into_iter()
        .map(|p| p.expect("page"))
        .collect();
    let sizes: Vec<usize> = pages.iter().map(|p| p.records.len()).collect();
    assert_eq!(sizes, vec![999, 999, 502]);
    assert_eq!(
        pages[0].count,
        Some(2_500),
        "@odata.count on the first page"
    );
    assert_eq!(pages[1].count, None);
    let ids: Vec<String> = pages
        .iter()
        .flat_map(|p| &p.records)
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), 2_500, "every user once");
    let expected: HashSet<String> = w
        .graph
        .with_directory(|d| d.users.iter().map(|u| u.id.clone()).collect());
    assert_eq!(
        unique.into_iter().cloned().collect::<HashSet<_>>(),
        expected
    );
    assert!(
        pages[0].records[0].get("accountEnabled").is_some(),
        "$select honoured"
    );

    let requests = w.graph.requests();
    assert_eq!(requests.len(), 3);
    for (i, request) in requests.iter().enumerate() {
        assert_eq!(
            request.header("consistencylevel"),
            Some("eventual"),
            "page {i} resends the header"
        );
        assert_eq!(request.header("authorization"), Some("Bearer [redacted]"));
        assert_eq!(
            i > 0,
            request.path.contains("skiptoken"),
            "{}",
            request.path
        );
    }
}

#[tokio::test]
async fn a_next_link_to_another_host_is_refused_and_not_followed() {
    let w = world(&["User.Read.All"], 30).await;
    let elsewhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    w.graph
        .set_next_link_base(Some(format!("http://{}", elsewhere.local_addr().unwrap())));
    let results = pages(
        &w.client,
        GraphRequest::get("/v1.0/users").query("$top", "10"),
    )
    .await;
    assert_eq!(results.len(), 1, "the stream ends at the refused link");
    let error = results.into_iter().next().unwrap().unwrap_err();
    assert!(matches!(error, GraphError::Protocol { .. }), "{error:?}");
    assert!(
        error.to_string().contains("refused an @odata.nextLink"),
        "{error}"
    );
    assert_eq!(w.graph.requests().len(), 1);
}

#[tokio::test]
async fn throttled_reads_wait_and_succeed_even_with_an_absurd_retry_after() {
    let w = world(&["Organization.Read.All"], 10).await;
    for retry_after in ["1e300", "1"] {
        w.graph.inject(
            Some(Method::GET),
            Some("subscribedSkus"),
            Fault::Throttle {
                retry_after: Some(retry_after.to_string()),
            },
            1,
        );
    }
    let skus = w
        .client
        .request(GraphRequest::get("/v1.0/subscribedSkus"))
        .records()
        .await
        .expect("succeeds after the 429s");
    assert!(skus.iter().any(|s| s["skuId"] == SKU_E3), "{skus:?}");
    assert_eq!(w.graph.requests().len(), 3, "two 429s, then the answer");
    assert_eq!(w.graph.pending_faults(), 0);
}

#[tokio::test]
async fn a_write_answered_500_is_not_replayed_and_fails_as_outcome_unknown() {
    let w = world(READER_AND_WRITER, 10).await;
    let body = answer_the_next_assign_license_with_500(&w);
    let error = w
        .client
        .request(GraphRequest::post(
            "/v1.0/users/alex.wilber@contoso.com/assignLicense",
            body,
        ))
        .records()
        .await
        .unwrap_err();
    assert!(
        matches!(error, GraphError::OutcomeUnknown { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("it was not retried"), "{error}");
    let posts = w
        .graph
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .count();
    assert_eq!(posts, 1, "the write went out once");
}

#[tokio::test]
async fn a_read_answered_503_is_retried() {
    let w = world(&["User.Read.All"], 10).await;
    w.graph.inject(
        Some(Method::GET),
        None,
        Fault::ServerError {
            status: 503,
            after_executing: false,
        },
        2,
    );
    let user = w
        .client
        .request(GraphRequest::get("/v1.0/users/adele.vance@contoso.com"))
        .records()
        .await
        .expect("succeeds after two 503s");
    assert_eq!(user[0]["userPrincipalName"], "adele.vance@contoso.com");
    assert_eq!(w.graph.requests().len(), 3);
}

#[tokio::test]
async fn a_401_gets_one_fresh_token_and_a_second_401_is_final() {
    let w = world(&["User.Read.All"], 10).await;
    w.graph
        .inject(Some(Method::GET), None, Fault::Unauthorized, 1);
    let user = w
        .client
        .request(GraphRequest::get("/v1.0/users/adele.vance@contoso.com"))
        .records()
        .await
        .expect("succeeds with a fresh token");
    assert_eq!(user[0]["userPrincipalName"], "adele.vance@contoso.com");
    assert_eq!(w.identity.token_requests(), 2, "one token, one refresh");

    w.graph.clear_requests();
    w.graph
        .inject(Some(Method::GET), None, Fault::Unauthorized, 2);
    let error = w
        .client
        .request(GraphRequest::get("/v1.0/users/adele.vance@contoso.com"))
        .records()
        .await
        .unwrap_err();
    assert!(
        matches!(error, GraphError::Unauthorized { .. }),
        "{error:?}"
    );
    assert_eq!(w.graph.requests().len(), 2, "refreshed once, not again");
}

#[tokio::test]
async fn a_403_names_the_missing_role_and_how_to_grant_it() {
    let w = world(&["User.Read.All"], 10).await;
    let error = w
        .client
        .request(GraphRequest::get("/v1.0/subscribedSkus"))
        .records()
        .await
        .unwrap_err();
    match &error {
        GraphError::Forbidden {
            code, missing_role, ..
        } => {
            assert_eq!(code, "Authorization_RequestDenied");
            assert_eq!(missing_role.as_deref(), Some("Organization.Read.All"));
        }
        other => panic!("expected Forbidden, got {other:?}"),
    }
    assert!(
        error
            .to_string()
            .contains("grant-exchange-permissions.sh --graph-role Organization.Read.All"),
        "{error}"
    );
    let message = MailMessage {
        subject: "s".into(),
        content: "c".into(),
        to: vec!["ops@contoso.com".into()],
        ..MailMessage::default()
    };
    let error = w
        .client
        .send_mail("adele.vance@contoso.com", &message)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, GraphError::Forbidden { code, missing_role: Some(role), .. } if code == "ErrorAccessDenied" && role == "Mail.Send"),
        "{error:?}"
    );
    assert_eq!(w.graph.requests().len(), 2, "a 403 is not retried");
}

#[tokio::test]
async fn send_mail_is_accepted_with_graphs_body_and_a_bad_body_is_refused() {
    let w = world(&["Mail.Send"], 10).await;
    let message = MailMessage {
        subject: "Mailbox job failed: convert-shared".into(),
        html: true,
        content: "<p>Job <b>42</b> failed.</p>".into(),
        to: vec!["ops@contoso.com".into()],
        cc: vec!["owner@contoso.com".into()],
    };
    w.client
        .send_mail("adele.vance@contoso.com", &message)
        .await
        .expect("202");
    let sent = w.graph.sent_mail();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].from, "adele.vance@contoso.com");
    assert_eq!(sent[0].subject, "Mailbox job failed: convert-shared");
    assert_eq!(sent[0].content_type, "HTML");
    assert_eq!(sent[0].to, vec!["ops@contoso.com"]);
    assert_eq!(sent[0].cc, vec!["owner@contoso.com"]);

    let bad = json!({"message": {"subject": "x", "body": {"contentType": "Markdown", "content": "x"}, "toRecipients": []}});
    let error = w
        .client
        .request(GraphRequest::post(
            "/v1.0/users/adele.vance@contoso.com/sendMail",
            bad,
        ))
        .records()
        .await
        .unwrap_err();
    assert!(
        matches!(&error, GraphError::BadRequest { status: 400, .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("contentType"), "{error}");
    assert_eq!(w.graph.sent_mail().len(), 1);
}

#[tokio::test]
async fn filters_count_and_nested_groups_behave_as_graph_does() {
    let w = world(READER_AND_WRITER, 400).await;
    let filter = format!("accountEnabled eq false and assignedLicenses/any(x:x/skuId eq {SKU_E3})");
    let found = w
        .client
        .request(
            GraphRequest::get("/v1.0/users")
                .query("$filter", filter)
                .query("$select", "id,accountEnabled,assignedLicenses"),
        )
        .records()
        .await
        .expect("filtered users");
    let expected = w.graph.with_directory(|d| {
        d.users
            .iter()
            .filter(|u| !u.account_enabled && u.licenses.iter().any(|l| l == SKU_E3))
            .count()
    });
    assert!(expected > 0, "the seeded directory has licensed leavers");
    assert_eq!(found.len(), expected);
    assert!(found.iter().all(|u| u["accountEnabled"] == false));

    let error = w
        .client
        .request(GraphRequest::get("/v1.0/users").query("$count", "true"))
        .records()
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("$count is not currently supported"),
        "{error}"
    );

    let groups = w
        .client
        .request(GraphRequest::get("/v1.0/groups").query("$select", "id,displayName"))
        .records()
        .await
        .expect("groups");
    let id_of = |name: &str| -> String {
        groups
            .iter()
            .find(|g| g["displayName"] == name)
            .and_then(|g| g["id"].as_str())
            .unwrap()
            .to_string()
    };
    let members = w
        .client
        .request(
            GraphRequest::get(format!(
                "/v1.0/groups/{}/transitiveMembers",
                id_of("All Staff")
            ))
            .query("$top", "999"),
        )
        .records()
        .await
        .expect("transitive members");
    let managers = w
        .client
        .request(GraphRequest::get(format!(
            "/v1.0/groups/{}/members",
            id_of("Sales Managers")
        )))
        .records()
        .await
        .expect("members");
    assert!(!managers.is_empty());
    let transitive: HashSet<&Value> = members.iter().map(|m| &m["id"]).collect();
    assert!(
        managers.iter().all(|m| transitive.contains(&m["id"])),
        "members of a group nested two levels down are transitive members"
    );
    assert_eq!(transitive.len(), members.len(), "each member once");
}

#[tokio::test]
async fn a_key_vault_secret_is_read_with_the_role_and_never_shown() {
    let (_guard, logs) = capture_logs();
    let w = world(&[], 4).await;
    let value = "p4ss-W0rd-only-in-the-vault";
    w.vault.set_secret("exo-app-password", value);
    let reference = SecretRef::parse(&w.vault.secret_url("exo-app-password")).unwrap();

    let error = w.secrets.get_secret(&reference).await.unwrap_err();
    assert!(
        matches!(error, KeyVaultError::Forbidden { .. }),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(text.contains("\"Key Vault Secrets User\""), "{text}");
    assert!(
        text.contains(&format!("--assignee-object-id {}", w.object_id)),
        "{text}"
    );

    w.vault.grant_secrets_user(&w.object_id);
    w.vault.throttle_next(Some("1"));
    let secret = w.secrets.get_secret(&reference).await.expect("the secret");
    assert_eq!(secret.expose(), value);
    assert!(secret.id.contains("/secrets/exo-app-password/"));

    let missing = SecretRef::parse(&w.vault.secret_url("nope")).unwrap();
    let not_found = w.secrets.get_secret(&missing).await.unwrap_err();
    assert!(
        matches!(not_found, KeyVaultError::NotFound { ref code, .. } if code == "SecretNotFound"),
        "{not_found:?}"
    );

    let requests = w.vault.requests();
    assert!(
        requests
            .iter()
            .all(|(_, path, _)| path.contains("api-version=2025-07-01"))
    );
    for shown in [
        format!("{secret:?}"),
        format!("{reference:?} {reference}"),
        format!("{error:?} {error}"),
        format!("{not_found:?} {not_found}"),
        format!("{:?}", w.secrets),
        format!("{requests:?}"),
        logs.text(),
    ] {
        assert!(!shown.contains(value), "the secret leaked: {shown}");
    }
    assert!(
        logs.text().contains("retrying Key Vault read"),
        "the 429 was logged"
    );
}

#[tokio::test]
async fn a_masked_log_path_names_the_call_in_errors_while_the_real_path_goes_on_the_wire() {
    let w = world(READER_AND_WRITER, 10).await;
    let body = answer_the_next_assign_license_with_500(&w);
    // The executor masks a secret's value this way before the call is made.
    let mut request = GraphRequest::post("/v1.0/users/alex.wilber@contoso.com/assignLicense", body);
    request.log_path = Some("/v1.0/users/***/assignLicense".to_string());
    let error = w.client.request(request).records().await.unwrap_err();
    let text = format!("{error} {error:?}");
    assert!(!text.contains("alex.wilber"), "{text}");
    assert!(text.contains("/v1.0/users/***/assignLicense"), "{text}");
    let sent: Vec<String> = w
        .graph
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.path)
        .collect();
    assert_eq!(sent.len(), 1);
    assert!(sent[0].contains("alex.wilber@contoso.com"), "{sent:?}");
}
