//! The route × role table (src/auth/authz.rs `RULES`), walked over real HTTP.
//!
//! The expected statuses below are written out by hand from the route table
//! of `docs/reference.md`, "Authentication and roles"; the test checks that
//! they match what the server answers (and that `/openapi.json` documents each
//! answer), that they cover every rule of the table, and that the table
//! covers every operation of the OpenAPI document (so a new route cannot be
//! added without a rule).

use std::collections::BTreeSet;
use std::time::Duration;

use hookrelay::auth::authz::RULES;
use serde_json::{json, Value};
use wiremock::matchers::method;
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::{spawn_app, Echo};

/// Callers, in the column order of [`EXPECTED`].
const CALLERS: [&str; 7] = [
    "no token",
    "invalid token",
    "owner (client)",
    "other client",
    "reader",
    "admin",
    "unknown role",
];

/// route → status per caller (see [`CALLERS`]). Resources named by `{id}` are
/// owned by "owner (client)".
const EXPECTED: &[(&str, &str, [u16; 7])] = &[
    ("POST", "/v1/commands", [401, 401, 202, 202, 403, 403, 403]),
    ("GET", "/v1/commands", [401, 401, 200, 200, 200, 200, 403]),
    (
        "GET",
        "/v1/commands/{id}",
        [401, 401, 200, 404, 200, 200, 403],
    ),
    (
        "GET",
        "/v1/commands/{id}/attempts",
        [401, 401, 200, 404, 200, 200, 403],
    ),
    (
        "GET",
        "/v1/commands/{id}/events",
        [401, 401, 200, 404, 200, 200, 403],
    ),
    ("GET", "/v1/events", [401, 401, 200, 200, 200, 200, 403]),
    (
        "GET",
        "/v1/dead-letters",
        [401, 401, 403, 403, 403, 200, 403],
    ),
    (
        "POST",
        "/v1/dead-letters/{id}/replay",
        [401, 401, 403, 403, 403, 202, 403],
    ),
    (
        "POST",
        "/v1/dead-letters/replay",
        [401, 401, 403, 403, 403, 202, 403],
    ),
    (
        "GET",
        "/v1/signing-secret",
        [401, 401, 200, 200, 403, 403, 403],
    ),
    (
        "POST",
        "/v1/signing-secret/rotate",
        [401, 401, 200, 200, 403, 403, 403],
    ),
    (
        "GET",
        "/v1/queries/{integration}/{query}",
        [401, 401, 200, 200, 200, 200, 403],
    ),
    (
        "POST",
        "/v1/queries/batch",
        [401, 401, 200, 200, 200, 200, 403],
    ),
    (
        "GET",
        "/v1/admin/integrations",
        [401, 401, 403, 403, 403, 200, 403],
    ),
    ("GET", "/healthz", [200; 7]),
    ("GET", "/readyz", [200; 7]),
    ("GET", "/metrics", [200; 7]),
    ("GET", "/openapi.json", [200; 7]),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_every_caller_as_the_table_says() {
    let app = spawn_app().await;
    Mock::given(method("POST"))
        .respond_with(Echo::new(200))
        .mount(&app.upstream)
        .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true})))
        .mount(&app.upstream)
        .await;
    app.receiver.always(500);
    let owner = app.token("owner", &["client"]);
    let admin = app.token("root", &["admin"]);

    // The owner's command, dead-lettered (the receiver always fails).
    let command_id = app
        .post_command_id(&owner, &app.command("1", json!({})), None)
        .await;
    app.wait_status(&owner, &command_id, Duration::from_secs(15), |d| {
        d["callback"]["status"] == "dead_lettered"
    })
    .await;
    let dead: Value = app.get_json(&admin, "/v1/dead-letters").await;
    let delivery_id = dead["data"][0]["id"]
        .as_str()
        .expect("dead letter")
        .to_owned();

    // Both directions: the hand-written table and the server's table agree.
    let expected: BTreeSet<(&str, &str)> = EXPECTED.iter().map(|(m, p, _)| (*m, *p)).collect();
    let rules: BTreeSet<(&str, &str)> = RULES.iter().map(|r| (r.method, r.path)).collect();
    assert_eq!(
        expected, rules,
        "src/auth/authz.rs RULES vs this test's table"
    );
    // The table covers every operation the API documents.
    let doc = app.openapi().await;
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for m in item.as_object().expect("path item").keys() {
            documented.insert((m.to_uppercase(), path.clone()));
        }
    }
    let ruled: BTreeSet<(String, String)> = RULES
        .iter()
        .map(|r| (r.method.to_owned(), r.path.to_owned()))
        .collect();
    assert_eq!(documented, ruled, "OpenAPI operations vs RULES");

    let tokens: [Option<String>; 7] = [
        None,
        Some("not.a.jwt".to_owned()),
        Some(owner.clone()),
        Some(app.token("other", &["client"])),
        Some(app.token("ops", &["reader"])),
        Some(admin.clone()),
        Some(app.token("x", &["auditor"])),
    ];
    let mut mismatches = Vec::new();
    for (method_name, pattern, statuses) in EXPECTED {
        let path = pattern
            .replace("/v1/commands/{id}", &format!("/v1/commands/{command_id}"))
            .replace(
                "/v1/dead-letters/{id}",
                &format!("/v1/dead-letters/{delivery_id}"),
            )
            .replace("{integration}/{query}", "httpbin/get_json");
        for ((caller, token), expected) in CALLERS.iter().zip(&tokens).zip(statuses) {
            let url = format!("{}{path}", app.address);
            let mut req = match *method_name {
                "GET" => app.http.get(&url),
                "POST" => app.http.post(&url),
                other => panic!("no request builder for {other}"),
            };
            if *pattern == "/v1/commands" && *method_name == "POST" {
                req = req.json(&app.command("2", json!({})));
            }
            if *pattern == "/v1/queries/batch" {
                req = req
                    .json(&json!({"queries": [{"integration": "httpbin", "query": "get_json"}]}));
            }
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await.expect("send");
            let status = resp.status().as_u16();
            if status >= 400 {
                assert_eq!(
                    resp.headers()["content-type"],
                    "application/problem+json",
                    "{method_name} {pattern} as {caller}"
                );
            }
            // Whatever it answered, the API description documents it.
            let content_type = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok());
            if let Err(e) = crate::documented::check_documented(
                &doc,
                method_name,
                pattern,
                status,
                content_type,
            ) {
                mismatches.push(format!("as {caller}: {e}"));
            }
            if status != *expected {
                mismatches.push(format!(
                    "{method_name} {pattern} as {caller}: expected {expected}, got {status}"
                ));
            }
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));

    // A percent-encoded spelling of a route gets that route's rule (the
    // router decodes it): 401 / 403, never an unguarded handler.
    let encoded = format!("{}/v1/%64ead-letters", app.address);
    assert_eq!(
        app.http.get(&encoded).send().await.expect("send").status(),
        401
    );
    let client = app.token("acme", &["client"]);
    assert_eq!(
        app.http
            .get(&encoded)
            .bearer_auth(&client)
            .send()
            .await
            .expect("send")
            .status(),
        403
    );
    assert_eq!(
        app.http
            .get(&encoded)
            .bearer_auth(&admin)
            .send()
            .await
            .expect("send")
            .status(),
        200
    );
}
