//! Every status an operation answers is documented for that operation in
//! `/openapi.json`, with the media type it is sent with: the known error paths
//! of every route (bad `limit`, cursor, id, filter, body, role; the database
//! down) are exercised over real HTTP and each answer is looked up in the
//! document, as a client generated from it (or schemathesis's
//! `status_code_conformance` / `content_type_conformance` checks) would.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use wiremock::matchers::method;
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::{settled, spawn_app, Echo, TestApp};

/// The response object documented for `status` on `verb template`, with
/// `$ref`s into `components/responses` resolved.
fn documented_response<'a>(
    doc: &'a Value,
    verb: &str,
    template: &str,
    status: u16,
) -> Option<&'a Value> {
    let responses = &doc["paths"][template][verb.to_lowercase()]["responses"];
    let exact = status.to_string();
    let range = format!("{}XX", status / 100);
    let response = [exact.as_str(), range.as_str(), "default"]
        .iter()
        .find_map(|k| responses.get(*k))?;
    match response["$ref"].as_str() {
        Some(r) => {
            let name = r.strip_prefix("#/components/responses/")?;
            doc["components"]["responses"].get(name)
        }
        None => Some(response),
    }
}

/// Whether `media_type` (a response's `Content-Type` essence) matches the
/// documented `pattern` (`*/*`, `text/*` or exact).
fn media_type_matches(pattern: &str, media_type: &str) -> bool {
    let split = |s: &str| {
        let (a, b) = s.split_once('/').unwrap_or((s, ""));
        (a.trim().to_ascii_lowercase(), b.trim().to_ascii_lowercase())
    };
    let ((pm, ps), (m, s)) = (split(pattern), split(media_type));
    (pm == "*" || pm == m) && (ps == "*" || ps == s)
}

/// Checks that `status` (sent with `content_type`) is documented for
/// `verb template` in the OpenAPI document `doc`; the problem otherwise.
pub fn check_documented(
    doc: &Value,
    verb: &str,
    template: &str,
    status: u16,
    content_type: Option<&str>,
) -> Result<(), String> {
    let Some(response) = documented_response(doc, verb, template, status) else {
        let known: Vec<&String> = doc["paths"][template][verb.to_lowercase()]["responses"]
            .as_object()
            .map(|r| r.keys().collect())
            .unwrap_or_default();
        return Err(format!(
            "{verb} {template} answered {status}, which is not documented (documented: {known:?})"
        ));
    };
    let Some(content) = response["content"].as_object().filter(|c| !c.is_empty()) else {
        return Ok(());
    };
    let essence = content_type
        .and_then(|c| c.split(';').next())
        .map(str::trim)
        .unwrap_or("");
    if content.keys().any(|p| media_type_matches(p, essence)) {
        Ok(())
    } else {
        Err(format!(
            "{verb} {template} answered {status} as `{essence}`; documented: {:?}",
            content.keys().collect::<Vec<_>>()
        ))
    }
}

/// One request and the status a user expects from it.
struct Case {
    verb: Method,
    /// The route as in the OpenAPI document.
    template: &'static str,
    /// The request path with query string.
    path: String,
    token: Option<String>,
    /// Body and its content type.
    body: Option<(&'static str, Vec<u8>)>,
    headers: Vec<(&'static str, String)>,
    expected: u16,
    /// A response header the answer must carry.
    expected_header: Option<&'static str>,
}

fn case(
    verb: Method,
    template: &'static str,
    path: impl Into<String>,
    token: &str,
    expected: u16,
) -> Case {
    Case {
        verb,
        template,
        path: path.into(),
        token: Some(token.to_owned()),
        body: None,
        headers: Vec::new(),
        expected,
        expected_header: None,
    }
}

impl Case {
    fn json(mut self, body: &Value) -> Self {
        self.body = Some(("application/json", body.to_string().into_bytes()));
        self
    }

    fn raw(mut self, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some((content_type, body.into()));
        self
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn with_response_header(mut self, name: &'static str) -> Self {
        self.expected_header = Some(name);
        self
    }

    fn anonymous(mut self) -> Self {
        self.token = None;
        self
    }
}

/// Sends every case; returns one line per case whose status differs from the
/// expected one or is not documented (with its media type) for its operation.
async fn run(app: &TestApp, doc: &Value, cases: Vec<Case>) -> Vec<String> {
    let mut problems = Vec::new();
    for c in cases {
        let mut req = app
            .http
            .request(c.verb.clone(), format!("{}{}", app.address, c.path));
        if let Some(t) = &c.token {
            req = req.bearer_auth(t);
        }
        if let Some((ct, body)) = c.body {
            req = req.header("content-type", ct).body(body);
        }
        for (n, v) in &c.headers {
            req = req.header(*n, v.as_str());
        }
        let resp = tokio::time::timeout(Duration::from_secs(20), req.send())
            .await
            .unwrap_or_else(|_| panic!("{} {} timed out", c.verb, c.path))
            .unwrap_or_else(|e| panic!("{} {}: {e}", c.verb, c.path));
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if status != c.expected {
            let body = resp.text().await.unwrap_or_default();
            problems.push(format!(
                "{} {}: expected {}, got {status} {body}",
                c.verb, c.path, c.expected
            ));
            continue;
        }
        if let Some(h) = c
            .expected_header
            .filter(|h| !resp.headers().contains_key(*h))
        {
            problems.push(format!("{} {}: {status} without `{h}`", c.verb, c.path));
        }
        if let Err(e) = check_documented(
            doc,
            c.verb.as_str(),
            c.template,
            status,
            content_type.as_deref(),
        ) {
            problems.push(format!("{} {}: {e}", c.verb, c.path));
        }
    }
    problems
}

/// The error paths of every route answer a status (and media type) that
/// `/openapi.json` documents for that route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_answer_is_documented_for_its_route() {
    let app = spawn_app().await;
    Mock::given(method("POST"))
        .respond_with(Echo::new(200))
        .mount(&app.upstream)
        .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true})))
        .mount(&app.upstream)
        .await;
    let doc = app.openapi().await;
    let owner = app.token("owner", &["client"]);
    let admin = app.token("root", &["admin"]);
    let reader = app.token("ops", &["reader"]);
    let stranger = app.token("x", &["auditor"]);
    let id = app
        .post_command_id(&owner, &app.command("1", json!({})), Some("k1"))
        .await;
    // Settled, so its document (and ETag) no longer changes.
    app.wait_status(&owner, &id, Duration::from_secs(15), settled)
        .await;
    let etag = app
        .get(&owner, &format!("/v1/commands/{id}"))
        .await
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .expect("etag")
        .to_owned();
    let missing = uuid::Uuid::now_v7();
    // Over `server.body_limit_bytes` (1 MiB by default).
    let huge = format!(r#"{{"integration": "{}"}}"#, "a".repeat(1_100_000));

    use Method as M;
    let commands = "/v1/commands";
    let command = "/v1/commands/{id}";
    let attempts = "/v1/commands/{id}/attempts";
    let command_events = "/v1/commands/{id}/events";
    let dead_letters = "/v1/dead-letters";
    let replay_one = "/v1/dead-letters/{id}/replay";
    let replay_bulk = "/v1/dead-letters/replay";
    let query = "/v1/queries/{integration}/{query}";
    let batch = "/v1/queries/batch";
    let cases = vec![
        // GET /v1/commands/{id}/attempts
        case(M::GET, attempts, format!("/v1/commands/{id}/attempts?limit=0"), &owner, 422),
        case(M::GET, attempts, format!("/v1/commands/{id}/attempts?limit=abc"), &owner, 422),
        case(M::GET, attempts, format!("/v1/commands/{id}/attempts?cursor=abc"), &owner, 422),
        case(M::GET, attempts, format!("/v1/commands/{id}/attempts?limit=1&limit=2"), &owner, 422),
        case(M::GET, attempts, "/v1/commands/not-a-uuid/attempts", &owner, 404),
        case(M::GET, attempts, format!("/v1/commands/{missing}/attempts"), &owner, 404),
        case(M::GET, attempts, format!("/v1/commands/{id}/attempts"), &stranger, 403),
        case(M::GET, attempts, format!("/v1/commands/{id}/attempts"), &owner, 401).anonymous(),
        // GET /v1/commands
        case(M::GET, commands, "/v1/commands?limit=0", &owner, 422),
        case(M::GET, commands, "/v1/commands?limit=201", &owner, 422),
        case(M::GET, commands, "/v1/commands?cursor=abc", &owner, 422),
        case(M::GET, commands, "/v1/commands?status=bogus", &owner, 422),
        case(M::GET, commands, "/v1/commands", &stranger, 403),
        case(M::GET, commands, "/v1/commands", &owner, 401).anonymous(),
        // GET /v1/commands/{id}
        case(M::GET, command, format!("/v1/commands/{id}?wait=abc"), &owner, 422),
        case(M::GET, command, format!("/v1/commands/{id}?wait=61"), &owner, 422),
        case(M::GET, command, "/v1/commands/not-a-uuid", &owner, 404),
        case(M::GET, command, format!("/v1/commands/{missing}"), &reader, 404),
        case(M::GET, command, format!("/v1/commands/{id}"), &stranger, 403),
        case(M::GET, command, format!("/v1/commands/{id}"), &owner, 304)
            .header("if-none-match", etag),
        // GET /v1/commands/{id}/events (errors come before the stream opens)
        case(M::GET, command_events, format!("/v1/commands/{id}/events?last_event_id=abc"), &owner, 422),
        case(M::GET, command_events, "/v1/commands/not-a-uuid/events", &owner, 404),
        case(M::GET, command_events, format!("/v1/commands/{id}/events"), &stranger, 403),
        // GET /v1/events
        case(M::GET, "/v1/events", "/v1/events?last_event_id=abc", &owner, 422),
        case(M::GET, "/v1/events", "/v1/events?client_id=someone-else", &owner, 403),
        case(M::GET, "/v1/events", "/v1/events", &stranger, 403),
        // GET /v1/dead-letters
        case(M::GET, dead_letters, "/v1/dead-letters?limit=0", &admin, 422),
        case(M::GET, dead_letters, "/v1/dead-letters?cursor=abc", &admin, 422),
        case(M::GET, dead_letters, "/v1/dead-letters?since=yesterday", &admin, 422),
        case(M::GET, dead_letters, "/v1/dead-letters", &owner, 403),
        // POST /v1/dead-letters/{id}/replay
        case(M::POST, replay_one, "/v1/dead-letters/not-a-uuid/replay", &admin, 404),
        case(M::POST, replay_one, format!("/v1/dead-letters/{missing}/replay"), &admin, 404),
        case(M::POST, replay_one, format!("/v1/dead-letters/{missing}/replay"), &reader, 403),
        // POST /v1/dead-letters/replay
        case(M::POST, replay_bulk, replay_bulk, &admin, 400).raw("application/json", "{"),
        case(M::POST, replay_bulk, replay_bulk, &admin, 422).json(&json!({"bogus": 1})),
        case(M::POST, replay_bulk, replay_bulk, &admin, 422)
            .json(&json!({"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"})),
        case(M::POST, replay_bulk, replay_bulk, &admin, 413).raw("application/json", huge.clone()),
        case(M::POST, replay_bulk, replay_bulk, &owner, 403).json(&json!({})),
        // POST /v1/commands
        case(M::POST, commands, commands, &owner, 400).raw("application/json", "{"),
        case(M::POST, commands, commands, &owner, 415).raw("text/plain", "hello"),
        case(M::POST, commands, commands, &owner, 422)
            .json(&json!({"integration": "nope", "operation": "x", "callback_url": "http://127.0.0.1:9/"})),
        case(M::POST, commands, commands, &owner, 409)
            .json(&app.command("2", json!({})))
            .header("idempotency-key", "k1"),
        case(M::POST, commands, commands, &owner, 413).raw("application/json", huge.clone()),
        case(M::POST, commands, commands, &reader, 403).json(&app.command("3", json!({}))),
        // Upstream queries
        case(M::GET, query, "/v1/queries/nope/nope", &owner, 404),
        case(M::GET, query, "/v1/queries/httpbin/get_json", &stranger, 403),
        case(M::POST, batch, batch, &owner, 422).json(&json!({"queries": []})),
        case(M::POST, batch, batch, &owner, 400).raw("application/json", "{"),
        case(M::POST, batch, batch, &owner, 415).raw("text/plain", "hello"),
        case(M::POST, batch, batch, &stranger, 403).json(&json!({"queries": []})),
        // Signing secrets and admin diagnostics
        case(M::GET, "/v1/signing-secret", "/v1/signing-secret", &reader, 403),
        case(M::POST, "/v1/signing-secret/rotate", "/v1/signing-secret/rotate", &admin, 403),
        case(M::GET, "/v1/admin/integrations", "/v1/admin/integrations", &owner, 403),
    ];
    let problems = run(&app, &doc, cases).await;
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// With the database unreachable, every route that reads or writes it
/// answers a documented 503 problem document with `Retry-After`, never an
/// undocumented status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_answers_are_documented() {
    let app = spawn_app().await;
    let doc = app.openapi().await;
    let owner = app.token("owner", &["client"]);
    let admin = app.token("root", &["admin"]);
    // Every connection of the application's pool is refused from now on.
    let pool = app.pool.clone();
    tokio::spawn(async move { pool.close().await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let missing = uuid::Uuid::now_v7();

    use Method as M;
    let cases = vec![
        case(M::GET, "/readyz", "/readyz", &owner, 503),
        case(M::POST, "/v1/commands", "/v1/commands", &owner, 503)
            .json(&app.command("1", json!({}))),
        case(M::GET, "/v1/commands", "/v1/commands", &owner, 503),
        case(
            M::GET,
            "/v1/commands/{id}",
            format!("/v1/commands/{missing}"),
            &owner,
            503,
        ),
        case(
            M::GET,
            "/v1/commands/{id}/attempts",
            format!("/v1/commands/{missing}/attempts"),
            &owner,
            503,
        ),
        case(
            M::GET,
            "/v1/commands/{id}/events",
            format!("/v1/commands/{missing}/events"),
            &owner,
            503,
        ),
        case(M::GET, "/v1/events", "/v1/events", &owner, 503),
        case(M::GET, "/v1/dead-letters", "/v1/dead-letters", &admin, 503),
        case(
            M::POST,
            "/v1/dead-letters/{id}/replay",
            format!("/v1/dead-letters/{missing}/replay"),
            &admin,
            503,
        ),
        case(
            M::POST,
            "/v1/dead-letters/replay",
            "/v1/dead-letters/replay",
            &admin,
            503,
        )
        .json(&json!({})),
        case(
            M::GET,
            "/v1/signing-secret",
            "/v1/signing-secret",
            &owner,
            503,
        ),
        case(
            M::POST,
            "/v1/signing-secret/rotate",
            "/v1/signing-secret/rotate",
            &owner,
            503,
        ),
    ];
    let cases = cases
        .into_iter()
        .map(|c| c.with_response_header("retry-after"))
        .collect();
    let problems = run(&app, &doc, cases).await;
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}
