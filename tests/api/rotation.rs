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
        s.delivery.secret_rotation_grace_s = 60;
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

    // After a rotation both the expiring and the new secret are stored, sealed.
    let rotated = app.post(&token, "/v1/signing-secret/rotate").await;
    assert_eq!(rotated.status(), 200);
    let new = rotated.json::<Value>().await.expect("json")["secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    let rows = stored_rows(&app).await;
    assert_eq!(rows.len(), 2);
    for row in &rows {
        for s in [&secret, &new] {
            let key_material = s.strip_prefix("whsec_").expect("prefix");
            assert!(!row.contains(key_material), "stored in the clear: {row}");
        }
    }

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
        .respond_with(Echo::new(200))
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
        .get_json(&beta, &format!("/v1/commands/{id}/attempts"))
        .await;
    let first = &attempts["data"][0];
    assert!(first["response_status"].is_null());
    assert!(
        first["error"]
            .as_str()
            .is_some_and(|e| e.contains("signing secret")),
        "{attempts:#}"
    );

    // Rotating gives beta a working secret again.
    let rotated = rotate(&app, &beta).await;
    assert!(rotated["previous_expires_at"].is_string());
    let new = rotated["secret"].as_str().expect("secret").to_owned();
    assert_eq!(signing_secret(&app, &beta).await, new);
    let id = post_command(&app, &beta, "2").await;
    let doc = app
        .wait_status(&beta, &id, Duration::from_secs(10), settled)
        .await;
    assert_eq!(doc["callback"]["status"], "delivered");
    let hook = &app.receiver.wait_for(1, Duration::from_secs(5)).await[0];
    assert_eq!(
        hook.signature_count(),
        1,
        "the unopenable secret is skipped"
    );
    assert!(hook.verifies_with(&new));
}

async fn rotate(app: &TestApp, token: &str) -> Value {
    let resp = app.post(token, "/v1/signing-secret/rotate").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    resp.json().await.expect("json")
}

async fn post_command(app: &TestApp, token: &str, thing: &str) -> String {
    let resp = app
        .post_command(token, &app.command(thing, json!({"thing": thing})), None)
        .await;
    assert_eq!(resp.status(), 202);
    resp.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_secret_signs_alongside_the_new_one_until_its_grace_ends() {
    let app = spawn_app_with(|s| s.delivery.secret_rotation_grace_s = 3).await;
    Mock::given(method("POST"))
        .respond_with(Echo::new(200))
        .mount(&app.upstream)
        .await;
    let token = app.token("acme", &["client"]);
    let old = signing_secret(&app, &token).await;

    let before = chrono::Utc::now();
    let rotated = rotate(&app, &token).await;
    let new = rotated["secret"].as_str().expect("secret").to_owned();
    assert!(new.starts_with("whsec_") && new != old);
    let expires_at = chrono::DateTime::parse_from_rfc3339(
        rotated["previous_expires_at"].as_str().expect("RFC 3339"),
    )
    .expect("RFC 3339")
    .with_timezone(&chrono::Utc);
    let grace = (expires_at - before).num_milliseconds();
    assert!(
        (2_000..=5_000).contains(&grace),
        "grace of ~3 s, got {grace} ms"
    );
    assert_eq!(
        signing_secret(&app, &token).await,
        new,
        "GET returns the new one"
    );

    // During the grace period: two signatures, and the reference verifier
    // accepts the callback with either secret alone.
    let id = post_command(&app, &token, "1").await;
    let during = app.receiver.wait_for(1, Duration::from_secs(10)).await;
    let hook = during.first().expect("callback");
    assert!(
        chrono::Utc::now() < expires_at,
        "the test machine was too slow to deliver within the grace period"
    );
    assert_eq!(hook.body["data"]["command_id"], id.as_str());
    assert_eq!(hook.signature_count(), 2);
    assert!(hook.verifies_with(&old), "old secret alone verifies");
    assert!(hook.verifies_with(&new), "new secret alone verifies");
    let stranger = hookrelay::testing::new_signing_secret();
    assert!(!hook.verifies_with(&stranger));

    // After the grace period: only the new secret signs.
    let wait = (expires_at - chrono::Utc::now())
        .to_std()
        .unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(200)).await;
    let id = post_command(&app, &token, "2").await;
    let after = app.receiver.wait_for(2, Duration::from_secs(10)).await;
    let hook = after.get(1).expect("second callback");
    assert_eq!(hook.body["data"]["command_id"], id.as_str());
    assert_eq!(hook.signature_count(), 1);
    assert!(hook.verifies_with(&new), "new secret verifies");
    assert!(!hook.verifies_with(&old), "old secret no longer verifies");
    assert_eq!(signing_secret(&app, &token).await, new);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_needs_the_client_role() {
    let app = spawn_app_with(|_| {}).await;
    let url = format!("{}/v1/signing-secret/rotate", app.address);
    let resp = app.http.post(&url).send().await.expect("send");
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    for roles in [&["reader"][..], &["admin"][..]] {
        let token = app.token("ops", roles);
        let resp = app.post(&token, "/v1/signing-secret/rotate").await;
        assert_eq!(resp.status(), 403, "{roles:?}");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
    }
    assert_eq!(app.count("signing_secrets").await, 0, "nothing created");

    // A client without a secret yet just gets its first one.
    let token = app.token("acme", &["client"]);
    let rotated = rotate(&app, &token).await;
    assert!(rotated["previous_expires_at"].is_null());
    assert_eq!(
        signing_secret(&app, &token).await,
        rotated["secret"].as_str().expect("secret")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_rotations_leave_one_current_secret() {
    let app = spawn_app_with(|s| s.limits.rotations_per_hour = 0).await;
    let token = app.token("acme", &["client"]);
    let other = app.token("beta", &["client"]);
    let beta_secret = signing_secret(&app, &other).await;

    let results = futures_util::future::join_all((0..8).map(|_| rotate(&app, &token))).await;
    let unexpired_before = results
        .iter()
        .filter(|r| r["previous_expires_at"].is_null())
        .count();
    assert_eq!(
        unexpired_before, 1,
        "only the first rotation found no secret"
    );
    // Rotations are serialised: the last one expired the latest previous
    // secret, and its own secret is the current one.
    let last = results
        .iter()
        .max_by_key(|r| {
            r["previous_expires_at"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        })
        .expect("results");
    assert_eq!(
        signing_secret(&app, &token).await,
        last["secret"].as_str().expect("secret")
    );
    let current: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM signing_secrets WHERE client_id = 'acme' AND expires_at IS NULL",
    )
    .fetch_one(&app.pool)
    .await
    .expect("count");
    assert_eq!(current, 1);
    assert_eq!(
        app.count("signing_secrets").await,
        3,
        "acme's current and previous secrets, and beta's"
    );
    assert_eq!(
        signing_secret(&app, &other).await,
        beta_secret,
        "beta untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_secrets_are_removed_by_the_next_rotation() {
    let app = spawn_app_with(|s| s.delivery.secret_rotation_grace_s = 0).await;
    let token = app.token("acme", &["client"]);
    let mut secrets = vec![signing_secret(&app, &token).await];
    for _ in 0..3 {
        let rotated = rotate(&app, &token).await;
        secrets.push(rotated["secret"].as_str().expect("secret").to_owned());
    }
    // Grace 0: each rotation expired the previous secret at once, and the
    // following rotation deleted it. Left: the current one and the last expired.
    assert_eq!(app.count("signing_secrets").await, 2);
    assert_eq!(signing_secret(&app, &token).await, secrets[3]);
    for row in stored_rows(&app).await {
        for secret in &secrets {
            let key_material = secret.strip_prefix("whsec_").expect("prefix");
            assert!(!row.contains(key_material), "stored in the clear: {row}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reseal_moves_every_secret_to_the_first_key() {
    let k1 = format!("k1:{}", b64(&[1u8; 32]));
    let k2 = format!("k2:{}", b64(&[2u8; 32]));
    let k3 = format!("k3:{}", b64(&[3u8; 32]));
    let app = spawn_app_with(|s| {
        s.security.signing_key_encryption_keys = vec![SecretString::from(k1.clone())];
    })
    .await;
    let acme = app.token("acme", &["client"]);
    let beta = app.token("beta", &["client"]);
    let acme_old = signing_secret(&app, &acme).await;
    let acme_new = rotate(&app, &acme).await["secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    let beta_secret = signing_secret(&app, &beta).await;

    // The operator prepended k2; the CLI re-seals everything with it.
    use secrecy::ExposeSecret;
    let db_url = app.settings.database.url.expose_secret().to_owned();
    let keys = format!("{k2},{k1}");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_hookrelay"))
            .arg("reseal-secrets")
            .env_remove("HOOKRELAY_CONFIG")
            .env("DATABASE_URL", db_url)
            .env("HOOKRELAY__SECURITY__SIGNING_KEY_ENCRYPTION_KEYS", keys)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("re-sealed 3 signing secrets with key `k2`"),
        "{stdout}"
    );

    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT client_id, secret FROM signing_secrets ORDER BY created_at")
            .fetch_all(&app.pool)
            .await
            .expect("rows");
    let only_k2 = [SecretString::from(k2.clone())];
    let opened: Vec<String> = rows
        .iter()
        .map(|(client, sealed)| {
            assert!(sealed.starts_with("k2:"), "{sealed}");
            hookrelay::testing::open_signing_secret(&only_k2, client, sealed)
                .expect("keys")
                .expect("k2 alone opens")
        })
        .collect();
    assert_eq!(opened, vec![acme_old, acme_new, beta_secret]);

    // Idempotent, and a value no key opens is reported, not destroyed.
    let both = [
        SecretString::from(k2.clone()),
        SecretString::from(k1.clone()),
    ];
    let report = hookrelay::testing::reseal_signing_secrets(&app.pool, &both)
        .await
        .expect("reseal");
    assert_eq!(report.resealed, 0);
    sqlx::query(
        "UPDATE signing_secrets SET secret =
            (SELECT secret FROM signing_secrets WHERE client_id = 'acme' AND expires_at IS NULL)
          WHERE client_id = 'beta'",
    )
    .execute(&app.pool)
    .await
    .expect("update");
    let k3_first = [SecretString::from(k3), SecretString::from(k2)];
    let report = hookrelay::testing::reseal_signing_secrets(&app.pool, &k3_first)
        .await
        .expect("reseal");
    assert_eq!(report.resealed, 2);
    assert_eq!(report.unopenable, 1);
}

/// Many rotations never pile up signatures: a callback carries the current
/// secret and the one it replaced, no more, and a secret rotated out two
/// rotations ago no longer verifies although its grace has not ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_rotations_sign_with_two_secrets_at_most() {
    let app = spawn_app_with(|s| {
        s.delivery.secret_rotation_grace_s = 86_400;
        s.limits.rotations_per_hour = 0;
    })
    .await;
    Mock::given(method("POST"))
        .respond_with(Echo::new(200))
        .mount(&app.upstream)
        .await;
    let token = app.token("acme", &["client"]);
    let mut secrets = vec![signing_secret(&app, &token).await];
    for _ in 0..5 {
        let rotated = rotate(&app, &token).await;
        secrets.push(rotated["secret"].as_str().expect("secret").to_owned());
    }
    let id = post_command(&app, &token, "1").await;
    let hook = &app.receiver.wait_for(1, Duration::from_secs(10)).await[0];
    assert_eq!(hook.body["data"]["command_id"], id.as_str());
    assert_eq!(hook.signature_count(), 2, "current + previous only");
    assert!(
        hook.verifies_with(&secrets[5]),
        "the current secret verifies"
    );
    assert!(
        hook.verifies_with(&secrets[4]),
        "the previous one, in its grace"
    );
    for (n, old) in secrets[..4].iter().enumerate() {
        assert!(!hook.verifies_with(old), "secret {n} was retired");
    }
    assert_eq!(app.count("signing_secrets").await, 2);
}

/// Rotating twice revokes a leaked secret at once, and rotation is rate
/// limited per client (defaults: burst 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_twice_revokes_a_secret_and_rotation_is_rate_limited() {
    let app = spawn_app_with(|s| s.delivery.secret_rotation_grace_s = 86_400).await;
    Mock::given(method("POST"))
        .respond_with(Echo::new(200))
        .mount(&app.upstream)
        .await;
    assert_eq!(app.settings.limits.rotation_burst, 3, "the default");
    let token = app.token("acme", &["client"]);
    let leaked = signing_secret(&app, &token).await;
    rotate(&app, &token).await;
    let current = rotate(&app, &token).await["secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    post_command(&app, &token, "1").await;
    let hook = &app.receiver.wait_for(1, Duration::from_secs(10)).await[0];
    assert!(hook.verifies_with(&current));
    assert!(!hook.verifies_with(&leaked), "revoked by two rotations");

    rotate(&app, &token).await;
    let resp = app.post(&token, "/v1/signing-secret/rotate").await;
    assert_eq!(resp.status(), 429, "the fourth rotation at once");
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let wait: u64 = resp.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!(wait >= 1, "{wait}");
    let problem: Value = resp.json().await.expect("json");
    assert_eq!(problem["type"], "urn:hookrelay:problem:rate-limited");
    // Another client has its own allowance.
    let beta = app.token("beta", &["client"]);
    rotate(&app, &beta).await;
}
