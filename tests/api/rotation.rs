//! Signing secrets: sealed at rest, rotation with a grace period (SPEC
//! "POST /v1/signing-secret/rotate"), checked with the reference verifier.

use std::time::Duration;

use base64::Engine;
use secrecy::SecretString;
use serde_json::{json, Value};
use wiremock::matchers::method;
use wiremock::Mock;

use crate::helpers::{settled, spawn_app_with, Echo, TestApp};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

async fn signing_secret(app: &TestApp, token: &str) -> String {
    let resp = app.get(token, "/v1/signing-secret").await;
    assert_eq!(resp.status(), 200);
    resp.json::<Value>().await.expect("json")["secret"]
        .as_str()
        .expect("secret")
        .to_owned()
}

/// Every row of `signing_secrets`, each as one text (all columns).
async fn stored_rows(app: &TestApp) -> Vec<String> {
    sqlx::query_scalar("SELECT s::text FROM signing_secrets s")
        .fetch_all(&app.pool)
        .await
        .expect("rows")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_alone_does_not_reveal_signing_secrets() {
    let k1 = [7u8; 32];
    let k2 = [9u8; 32];
    let app = spawn_app_with(|s| {
        s.security.signing_key_encryption_keys = vec![
            SecretString::from(format!("k2:{}", b64(&k2))),
            SecretString::from(format!("k1:{}", b64(&k1))),
        ];
    })
    .await;
    let token = app.token("acme", &["client"]);
    let secret = signing_secret(&app, &token).await;
    assert!(secret.starts_with("whsec_"));
    assert_eq!(signing_secret(&app, &token).await, secret, "stable");

    let rows = stored_rows(&app).await;
    assert_eq!(rows.len(), 1);
    let key_material = secret.strip_prefix("whsec_").expect("prefix");
    for row in &rows {
        assert!(!row.contains(&secret), "secret stored in the clear: {row}");
        assert!(!row.contains(key_material), "key material stored: {row}");
        assert!(!row.contains(&b64(&k1)) && !row.contains(&b64(&k2)));
    }
    let sealed: String = sqlx::query_scalar("SELECT secret FROM signing_secrets")
        .fetch_one(&app.pool)
        .await
        .expect("sealed");
    assert!(sealed.starts_with("k2:"), "the first key seals: {sealed}");

    // The schema refuses a plaintext secret outright.
    let plain = sqlx::query("UPDATE signing_secrets SET secret = $1")
        .bind(&secret)
        .execute(&app.pool)
        .await;
    assert!(plain.is_err(), "a whsec_ value must not be storable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_that_does_not_open_is_never_used_to_sign() {
    let app = spawn_app_with(|_| {}).await;
    Mock::given(method("POST"))
        .respond_with(Echo(200))
        .mount(&app.upstream)
        .await;
    let acme = app.token("acme", &["client"]);
    let beta = app.token("beta", &["client"]);
    signing_secret(&app, &acme).await;
    signing_secret(&app, &beta).await;

    // Someone with write access to the database copies acme's sealed secret
    // into beta's row: it is bound to acme and does not open for beta.
    sqlx::query(
        "UPDATE signing_secrets SET secret =
            (SELECT secret FROM signing_secrets WHERE client_id = 'acme')
          WHERE client_id = 'beta'",
    )
    .execute(&app.pool)
    .await
    .expect("update");
    let resp = app.get(&beta, "/v1/signing-secret").await;
    assert_eq!(resp.status(), 500);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");

    // Beta's callbacks are not sent unsigned (nor signed with acme's secret):
    // each attempt fails without contacting the receiver, then dead-letters.
    let resp = app
        .post_command(&beta, &app.command("1", json!({})), None)
        .await;
    assert_eq!(resp.status(), 202);
    let id = resp.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let doc = app
        .wait_status(&beta, &id, Duration::from_secs(10), settled)
        .await;
    assert_eq!(doc["callback"]["status"], "dead_lettered");
    assert!(app.receiver.received().is_empty(), "nothing was sent");
    let attempts: Value = app
        .get(&beta, &format!("/v1/commands/{id}/attempts"))
        .await
        .json()
        .await
        .expect("json");
    let first = &attempts["data"][0];
    assert!(first["response_status"].is_null());
    assert!(
        first["error"]
            .as_str()
            .is_some_and(|e| e.contains("signing secret")),
        "{attempts:#}"
    );
}
