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
    let host = crate::helpers::loopback_hostname().await;

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

/// Every denied range: (CIDR, whether every address in it is denied, a sample).
/// The IPv6 transition forms are denied only when the embedded IPv4 address is
/// (Teredo always), so for those only the sample is checked.
const DENIED: &[(&str, bool, &str)] = &[
    ("0.0.0.0/8", true, "0.1.2.3"),
    ("10.0.0.0/8", true, "10.200.3.4"),
    ("100.64.0.0/10", true, "100.127.255.1"),
    ("127.0.0.0/8", true, "127.0.0.2"),
    ("169.254.0.0/16", true, "169.254.169.254"),
    ("172.16.0.0/12", true, "172.31.0.1"),
    ("192.0.0.0/24", true, "192.0.0.170"),
    ("192.0.2.0/24", true, "192.0.2.10"),
    ("192.168.0.0/16", true, "192.168.1.1"),
    ("198.18.0.0/15", true, "198.19.0.1"),
    ("198.51.100.0/24", true, "198.51.100.7"),
    ("203.0.113.0/24", true, "203.0.113.9"),
    ("224.0.0.0/4", true, "239.255.255.250"),
    ("240.0.0.0/4", true, "250.1.1.1"),
    ("255.255.255.255/32", true, "255.255.255.255"),
    ("::/128", true, "::"),
    ("::1/128", true, "::1"),
    ("fc00::/7", true, "fd12:3456::1"),
    ("fe80::/10", true, "fe80::1"),
    ("ff00::/8", true, "ff02::1"),
    ("2001:db8::/32", true, "2001:db8::1"),
    ("2001::/32", true, "2001:0:4136:e378::1"),
    ("2001::/23", true, "2001:2::1"),
    ("::/8", true, "::ffff:0:0:127.0.0.1"),
    ("::ffff:0:0:0/96", true, "::ffff:0:127.0.0.1"),
    ("::ffff:0:0:0/96", true, "::ffff:0:169.254.169.254"),
    ("::ffff:0:0:0/96", true, "::ffff:0:10.0.0.1"),
    ("100::/64", true, "100::1"),
    ("fec0::/10", true, "fec0::1"),
    ("64:ff9b:1::/48", true, "64:ff9b:1::a00:1"),
    ("3fff::/20", true, "3fff::1"),
    ("5f00::/16", true, "5f00::1"),
    ("::ffff:0:0/96", false, "::ffff:10.0.0.1"),
    ("::/96", false, "::192.168.0.1"),
    ("64:ff9b::/96", false, "64:ff9b::a9fe:a9fe"),
    ("2002::/16", false, "2002:7f00:1::"),
];

#[test]
fn every_denied_range_is_private_end_to_end() {
    use hookrelay::security::is_private_ip;
    for (cidr, whole, sample) in DENIED {
        let net: ipnet::IpNet = cidr.parse().expect("cidr");
        let sample: std::net::IpAddr = sample.parse().expect("ip");
        assert!(net.contains(&sample), "{sample} in {cidr}");
        assert!(is_private_ip(sample), "{sample} ({cidr})");
        if *whole {
            for ip in [net.network(), net.broadcast()] {
                assert!(is_private_ip(ip), "{ip}, an end of {cidr}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_denied_range_is_refused_as_a_literal_callback_host() {
    let app = spawn_app_with(|s| s.security.allow_private_callbacks = false).await;
    let token = app.token("acme", &["client"]);
    for (cidr, _, sample) in DENIED {
        let host = if sample.contains(':') {
            format!("[{sample}]")
        } else {
            (*sample).to_owned()
        };
        let mut body = app.command("1", json!({}));
        body["callback_url"] = json!(format!("https://{host}:8443/hooks"));
        let resp = app.post_command(&token, &body, None).await;
        assert_eq!(resp.status(), 422, "{sample} ({cidr})");
        assert_eq!(
            resp.json::<Value>().await.expect("json")["field"],
            "callback_url",
            "{sample}"
        );
    }
    assert_eq!(app.count("commands").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_zero_is_refused_at_intake() {
    for allow_private in [false, true] {
        let app = spawn_app_with(|s| s.security.allow_private_callbacks = allow_private).await;
        let token = app.token("acme", &["client"]);
        for url in [
            "https://partner.example:0/hooks",
            "http://8.8.8.8:0/hooks",
            "http://127.0.0.1:0/hooks",
        ] {
            let mut body = app.command("1", json!({}));
            body["callback_url"] = json!(url);
            let resp = app.post_command(&token, &body, None).await;
            assert_eq!(
                resp.status(),
                422,
                "{url} (allow_private = {allow_private})"
            );
            assert_eq!(
                resp.json::<Value>().await.expect("json")["field"],
                "callback_url",
                "{url}"
            );
        }
        assert_eq!(app.count("commands").await, 0);
    }
}
