//! Authentication and ownership rules (SPEC "Authentication and roles").

use serde_json::{json, Value};
use wiremock::matchers::method;
use wiremock::Mock;

use crate::helpers::{spawn_app, Echo};

fn expired_token(secret: &str) -> String {
    let claims =
        json!({"sub": "acme", "roles": ["client"], "exp": chrono::Utc::now().timestamp() - 600});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).expect("an HMAC key"),
    )
    .expect("encode")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_bad_and_expired_tokens_are_401() {
    let app = spawn_app().await;
    let body = app.command("1", json!({}));
    let url = format!("{}/v1/commands", app.address);

    let none = app.http.post(&url).json(&body).send().await.expect("send");
    assert_eq!(none.status(), 401);
    assert_eq!(none.headers()["content-type"], "application/problem+json");
    assert_eq!(none.headers()["www-authenticate"], "Bearer");

    let mut other_key = app.settings.auth.clone();
    other_key.jwt_secret = "some-other-secret-that-is-long-enough!!".to_owned().into();
    let forged = hookrelay::auth::JwtKeys::new(&other_key)
        .expect("keys")
        .mint("acme", &["client".to_owned()], 600)
        .expect("mint");
    let resp = app.post_command(&forged, &body, None).await;
    assert_eq!(resp.status(), 401, "bad signature");

    use secrecy::ExposeSecret;
    let expired = expired_token(app.settings.auth.jwt_secret.expose_secret());
    let resp = app.post_command(&expired, &body, None).await;
    assert_eq!(resp.status(), 401, "expired");
    let problem: Value = resp.json().await.expect("json");
    assert!(problem["detail"]
        .as_str()
        .is_some_and(|d| d.contains("expired")));

    let resp = app.post_command("not-a-jwt", &body, None).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(app.count("commands").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_cannot_send_commands() {
    let app = spawn_app().await;
    let reader = app.token("ops", &["reader"]);
    let resp = app
        .post_command(&reader, &app.command("1", json!({})), None)
        .await;
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    assert_eq!(app.count("commands").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_visible_to_owner_readers_and_admins_only() {
    let app = spawn_app().await;
    Mock::given(method("POST"))
        .respond_with(Echo::new(200))
        .mount(&app.upstream)
        .await;
    let a = app.token("client-a", &["client"]);
    let b = app.token("client-b", &["client"]);
    let reader = app.token("ops", &["reader"]);
    let admin = app.token("root", &["admin"]);
    let id = app
        .post_command_id(&a, &app.command("1", json!({})), None)
        .await;

    let resp = app.get(&b, &format!("/v1/commands/{id}")).await;
    assert_eq!(
        resp.status(),
        404,
        "another client's command does not exist for B"
    );
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    assert_eq!(
        app.get(&b, &format!("/v1/commands/{id}/attempts"))
            .await
            .status(),
        404
    );
    let list: Value = app.get_json(&b, "/v1/commands").await;
    assert_eq!(list["data"].as_array().expect("data").len(), 0);

    for token in [&a, &reader, &admin] {
        assert_eq!(
            app.get(token, &format!("/v1/commands/{id}")).await.status(),
            200
        );
        let list: Value = app.get_json(token, "/v1/commands").await;
        assert_eq!(list["data"].as_array().expect("data").len(), 1);
    }
    let nobody = app.token("x", &["auditor"]);
    assert_eq!(
        app.get(&nobody, &format!("/v1/commands/{id}"))
            .await
            .status(),
        403
    );
}
