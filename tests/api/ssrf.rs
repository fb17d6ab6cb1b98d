//! SSRF guard at delivery time: a callback host that passes the intake check
//! (a name, not a literal address) but resolves to a loopback address is
//! refused when the connection would be made.

use std::time::Duration;

use serde_json::{json, Value};
use wiremock::matchers::method;
use wiremock::Mock;

use crate::helpers::{settled, spawn_app_with, Echo};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_resolving_to_loopback_is_refused_at_delivery() {
    // This machine's own hostname: a name that resolves locally (/etc/hosts).
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("hostname")
        .trim()
        .to_owned();
    let resolved: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
        .await
        .expect("the hostname resolves")
        .collect();
    assert!(
        !resolved.is_empty() && resolved.iter().all(|a| hookrelay::security::is_private_ip(a.ip())),
        "this test needs a hostname that resolves to non-public addresses only: {host} -> {resolved:?}"
    );

    let app = spawn_app_with(|s| s.security.allow_private_callbacks = false).await;
    Mock::given(method("POST"))
        .respond_with(Echo::new(200))
        .mount(&app.upstream)
        .await;
    let token = app.trusted_client("acme").await;
    let port = app.receiver.server.address().port();
    let mut body = app.command("1", json!({}));
    body["callback_url"] = json!(format!("http://{host}:{port}/hooks"));
    let resp = app.post_command(&token, &body, None).await;
    assert_eq!(resp.status(), 202, "a name passes the intake check");
    let id = resp.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();

    let doc = app
        .wait_status(&token, &id, Duration::from_secs(15), settled)
        .await;
    assert_eq!(doc["callback"]["status"], "dead_lettered");
    assert!(
        app.receiver.received().is_empty(),
        "nothing reached the loopback receiver"
    );
    let attempts: Value = app
        .get_json(&token, &format!("/v1/commands/{id}/attempts"))
        .await;
    let first = &attempts["data"][0];
    assert_eq!(first["response_status"], Value::Null);
    assert!(
        first["error"]
            .as_str()
            .is_some_and(|e| e.contains("non-public")),
        "the attempt says why: {first}"
    );
    assert_eq!(
        first["response_body"],
        Value::Null,
        "nothing of an internal service is shown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_cidrs_open_a_private_network_and_https_only_refuses_http() {
    // Private callbacks off, but the loopback network explicitly allowed.
    let app = spawn_app_with(|s| {
        s.security.allow_private_callbacks = false;
        s.security.allowed_callback_cidrs = vec!["127.0.0.0/8".into()];
    })
    .await;
    Mock::given(method("POST"))
        .respond_with(Echo::new(200))
        .mount(&app.upstream)
        .await;
    let token = app.trusted_client("acme").await;
    let id = app
        .post_command_id(&token, &app.command("1", json!({})), None)
        .await;
    let doc = app
        .wait_status(&token, &id, Duration::from_secs(10), settled)
        .await;
    assert_eq!(
        doc["callback"]["status"], "delivered",
        "127.0.0.1 is in an allowed CIDR"
    );

    let strict = spawn_app_with(|s| {
        s.security.allow_private_callbacks = false;
        s.security.https_only_callbacks = true;
    })
    .await;
    let token = strict.token("acme", &["client"]);
    let mut body = strict.command("1", json!({}));
    body["callback_url"] = json!("http://partner.example/hooks");
    let resp = strict.post_command(&token, &body, None).await;
    assert_eq!(resp.status(), 422);
    assert_eq!(
        resp.json::<Value>().await.expect("json")["field"],
        "callback_url"
    );
}
