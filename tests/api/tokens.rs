//! Token hardening (docs/security.md "Tokens"): one pinned algorithm, `none`
//! and algorithm confusion refused, `exp`/`nbf`/`iat`, maximum lifetime,
//! `iss`/`aud`, single-use `jti` on POSTs, and a mandatory `Idempotency-Key`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hookrelay::domain::Role;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use wiremock::matchers::method;
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::{spawn_app, spawn_app_with, Echo, TestApp};

fn key_file(name: &str) -> String {
    format!("{}/tests/fixtures/keys/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn key_bytes(name: &str) -> Vec<u8> {
    std::fs::read(key_file(name)).expect("fixture key")
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Claims a client token would carry, valid for ten minutes.
fn claims(sub: &str) -> Value {
    json!({"sub": sub, "roles": ["client"], "iat": now(), "exp": now() + 600})
}

/// POST a command with `token`; the status.
async fn post_status(app: &TestApp, token: &str) -> u16 {
    app.post_command(token, &app.command("1", json!({})), None)
        .await
        .status()
        .as_u16()
}

/// A 401 problem whose detail contains `why`.
async fn assert_401(resp: reqwest::Response, why: &str) {
    assert_eq!(resp.status(), 401, "expected 401 ({why})");
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    let problem: Value = resp.json().await.expect("json");
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(why), "detail {detail:?} should say {why:?}");
}

async fn mount_echo(app: &TestApp) {
    Mock::given(method("POST"))
        .respond_with(Echo::new(200))
        .mount(&app.upstream)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alg_none_is_401() {
    let app = spawn_app().await;
    mount_echo(&app).await;
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims("acme").to_string());
    for unsigned in [
        format!("{header}.{payload}."),
        format!("{header}.{payload}"),
    ] {
        let resp = app
            .post_command(&unsigned, &app.command("1", json!({})), None)
            .await;
        assert_eq!(resp.status(), 401, "{unsigned}");
    }
    // The same claims, properly signed, are accepted: only the algorithm differs.
    assert_eq!(
        post_status(&app, &app.token_with_claims(&claims("acme"))).await,
        202
    );
    assert_eq!(app.count("commands").await, 1);
}

async fn spawn_asymmetric(alg: &str, public: &str, private: &str) -> TestApp {
    let (alg, public, private) = (alg.to_owned(), key_file(public), key_file(private));
    spawn_app_with(move |s| {
        s.auth.algorithm = alg;
        s.auth.public_key_file = public;
        s.auth.private_key_file = private;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_token_keyed_with_the_rsa_public_key_is_401() {
    let app = spawn_asymmetric(
        "RS256",
        "test-only-rsa-public.pem",
        "test-only-rsa-private.pem",
    )
    .await;
    mount_echo(&app).await;
    // The classic confusion attack: the public key (known to anyone) used as
    // an HMAC secret, hoping the verifier follows the token's `alg`.
    let public_pem = key_bytes("test-only-rsa-public.pem");
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims("acme"),
        &EncodingKey::from_secret(&public_pem).expect("an HMAC key"),
    )
    .expect("encode");
    assert_401(
        app.post_command(&forged, &app.command("1", json!({})), None)
            .await,
        "algorithm",
    )
    .await;
    // A genuine RS256 token is accepted.
    let genuine = jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &claims("acme"),
        &EncodingKey::from_rsa_pem(&key_bytes("test-only-rsa-private.pem")).expect("rsa"),
    )
    .expect("encode");
    assert_eq!(post_status(&app, &genuine).await, 202);
    assert_eq!(app.count("commands").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_token_on_an_hs256_server_is_401() {
    let app = spawn_app().await;
    let rs = jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &claims("acme"),
        &EncodingKey::from_rsa_pem(&key_bytes("test-only-rsa-private.pem")).expect("rsa"),
    )
    .expect("encode");
    assert_401(app.get(&rs, "/v1/commands").await, "algorithm").await;
    let resp = app
        .get(&app.token_with_claims(&claims("acme")), "/v1/commands")
        .await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es256_and_eddsa_tokens_verify_with_their_public_keys_only() {
    for (alg, public, private, other_private, other_alg) in [
        (
            "ES256",
            "test-only-ec-p256-public.pem",
            "test-only-ec-p256-private.pem",
            "test-only-ed25519-private.pem",
            Algorithm::EdDSA,
        ),
        (
            "EdDSA",
            "test-only-ed25519-public.pem",
            "test-only-ed25519-private.pem",
            "test-only-ec-p256-private.pem",
            Algorithm::ES256,
        ),
    ] {
        let app = spawn_asymmetric(alg, public, private).await;
        // Minted through the configured private key (as `hookrelay token` does).
        let token = app.token("acme", &["client"]);
        let resp = app.get(&token, "/v1/commands").await;
        assert_eq!(resp.status(), 200, "{alg}");
        // Signed by the other algorithm's key: refused.
        let pem = key_bytes(other_private);
        let key = match other_alg {
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
            _ => EncodingKey::from_ed_pem(&pem),
        }
        .expect("key");
        let other =
            jsonwebtoken::encode(&Header::new(other_alg), &claims("acme"), &key).expect("encode");
        assert_401(app.get(&other, "/v1/commands").await, "algorithm").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_not_yet_valid_tokens_are_401() {
    let app = spawn_app_with(|s| s.auth.leeway_s = 30).await;
    let t = now();
    let expired = app.token_with_claims(
        &json!({"sub": "acme", "roles": ["client"], "iat": t - 700, "exp": t - 100}),
    );
    assert_401(app.get(&expired, "/v1/commands").await, "expired").await;
    let early = app.token_with_claims(
        &json!({"sub": "acme", "roles": ["client"], "iat": t, "nbf": t + 300, "exp": t + 600}),
    );
    assert_401(app.get(&early, "/v1/commands").await, "not valid yet").await;
    let future_iat = app.token_with_claims(
        &json!({"sub": "acme", "roles": ["client"], "iat": t + 300, "exp": t + 600}),
    );
    assert_401(
        app.get(&future_iat, "/v1/commands").await,
        "issued in the future",
    )
    .await;
    let no_exp = app.token_with_claims(&json!({"sub": "acme", "roles": ["client"], "iat": t}));
    assert_401(app.get(&no_exp, "/v1/commands").await, "required claim").await;
    // Within the leeway both ways: accepted.
    let skewed = app.token_with_claims(
        &json!({"sub": "acme", "roles": ["client"], "iat": t + 10, "nbf": t + 10, "exp": t + 600}),
    );
    assert_eq!(app.get(&skewed, "/v1/commands").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_issuer_or_audience_is_401_when_configured() {
    let app = spawn_app_with(|s| {
        s.auth.issuer = "https://idp.example".into();
        s.auth.audience = "hookrelay".into();
    })
    .await;
    let t = now();
    let with = |iss: Value, aud: Value| {
        let mut c = json!({"sub": "acme", "roles": ["client"], "iat": t, "exp": t + 600});
        if !iss.is_null() {
            c["iss"] = iss;
        }
        if !aud.is_null() {
            c["aud"] = aud;
        }
        app.token_with_claims(&c)
    };
    let good = with(json!("https://idp.example"), json!("hookrelay"));
    assert_eq!(app.get(&good, "/v1/commands").await.status(), 200);
    let listed = with(json!("https://idp.example"), json!(["other", "hookrelay"]));
    assert_eq!(app.get(&listed, "/v1/commands").await.status(), 200);
    let wrong_iss = with(json!("https://evil.example"), json!("hookrelay"));
    assert_401(app.get(&wrong_iss, "/v1/commands").await, "issuer").await;
    let wrong_aud = with(json!("https://idp.example"), json!("another-service"));
    assert_401(app.get(&wrong_aud, "/v1/commands").await, "audience").await;
    let no_aud = with(json!("https://idp.example"), Value::Null);
    assert_401(app.get(&no_aud, "/v1/commands").await, "required claim").await;
    let no_iss = with(Value::Null, json!("hookrelay"));
    assert_401(app.get(&no_iss, "/v1/commands").await, "required claim").await;
    // Minted tokens carry the configured iss and aud.
    assert_eq!(
        app.get(&app.token("acme", &["client"]), "/v1/commands")
            .await
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_living_longer_than_the_maximum_are_401() {
    let app = spawn_app_with(|s| s.auth.max_token_lifetime_s = 3600).await;
    let t = now();
    let at_max =
        app.token_with_claims(&json!({"sub": "a", "roles": ["client"], "iat": t, "exp": t + 3600}));
    assert_eq!(app.get(&at_max, "/v1/commands").await.status(), 200);
    let too_long =
        app.token_with_claims(&json!({"sub": "a", "roles": ["client"], "iat": t, "exp": t + 3601}));
    assert_401(app.get(&too_long, "/v1/commands").await, "lifetime").await;
    // Without `iat`, what is left of it counts.
    let no_iat = app.token_with_claims(&json!({"sub": "a", "roles": ["client"], "exp": t + 7200}));
    assert_401(app.get(&no_iat, "/v1/commands").await, "lifetime").await;
    // An old `iat` cannot hide a long lifetime either.
    let backdated = app.token_with_claims(
        &json!({"sub": "a", "roles": ["client"], "iat": t - 86_400, "exp": t + 600}),
    );
    assert_401(app.get(&backdated, "/v1/commands").await, "lifetime").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_jti_is_401_and_gets_do_not_consume_it() {
    let app = spawn_app_with(|s| s.auth.require_jti = true).await;
    mount_echo(&app).await;
    let t = now();
    let token = app.token_with_claims(
        &json!({"sub": "acme", "roles": ["client"], "iat": t, "exp": t + 600, "jti": "req-1"}),
    );
    // Reads with the token neither need nor spend the jti — including the
    // read-only batch query, although it is a POST.
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true})))
        .mount(&app.upstream)
        .await;
    for _ in 0..2 {
        assert_eq!(app.get(&token, "/v1/commands").await.status(), 200);
        let batch = app
            .http
            .post(format!("{}/v1/queries/batch", app.address))
            .bearer_auth(&token)
            .json(&json!({"queries": [{"integration": "httpbin", "query": "get_json"}]}))
            .send()
            .await
            .expect("batch");
        assert_eq!(batch.status(), 200);
    }
    assert_eq!(post_status(&app, &token).await, 202);
    // The captured request, replayed byte for byte.
    assert_401(
        app.post_command(&token, &app.command("1", json!({})), None)
            .await,
        "already used",
    )
    .await;
    assert_eq!(app.count("commands").await, 1, "the replay created nothing");
    // Other POST routes spend it too.
    assert_401(
        app.post(&token, "/v1/signing-secret/rotate").await,
        "already used",
    )
    .await;
    // The jti is remembered until the token expires (plus the leeway).
    let kept: i64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM expires_at)::bigint FROM token_jtis WHERE client_id = 'acme' AND jti = 'req-1'",
    )
    .fetch_one(&app.pool)
    .await
    .expect("recorded jti");
    assert_eq!(
        kept,
        t + 600 + i64::try_from(app.settings.auth.leeway_s).expect("leeway")
    );
    // jtis are per client: another client's token with the same jti is fresh.
    let other = app.token_with_claims(
        &json!({"sub": "other", "roles": ["client"], "iat": t, "exp": t + 600, "jti": "req-1"}),
    );
    assert_eq!(post_status(&app, &other).await, 202);
    // A token without jti is refused outright, reads included.
    let bare = app.token_with_claims(&claims("acme"));
    assert_401(app.get(&bare, "/v1/commands").await, "required claim").await;
    // Minted tokens (hookrelay token, TestApp::token) carry a fresh jti each.
    let minted = app.token("acme", &["client"]);
    assert_eq!(post_status(&app, &minted).await, 202);
    assert_eq!(
        post_status(&app, &app.token("acme", &["client"])).await,
        202
    );
    assert_eq!(app.count("commands").await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_jtis_are_purged_by_maintenance() {
    let app = spawn_app_with(|s| s.maintenance.purge_token_jtis_cron = "* * * * * *".into()).await;
    sqlx::query(
        "INSERT INTO token_jtis (client_id, jti, expires_at) VALUES
         ('acme', 'old', now() - interval '1 hour'), ('acme', 'live', now() + interval '1 hour')",
    )
    .execute(&app.pool)
    .await
    .expect("insert");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<String> = sqlx::query_scalar("SELECT jti FROM token_jtis ORDER BY jti")
            .fetch_all(&app.pool)
            .await
            .expect("select");
        if left == ["live"] {
            break;
        }
        assert!(Instant::now() < deadline, "jtis left: {left:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_can_be_made_mandatory() {
    let app = spawn_app_with(|s| s.commands.require_idempotency_key = true).await;
    mount_echo(&app).await;
    let token = app.token("acme", &["client"]);
    let resp = app
        .post_command(&token, &app.command("1", json!({})), None)
        .await;
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let problem: Value = resp.json().await.expect("json");
    assert_eq!(problem["field"], "Idempotency-Key");
    assert_eq!(app.count("commands").await, 0);
    let resp = app
        .post_command(&token, &app.command("1", json!({})), Some("k-1"))
        .await;
    assert_eq!(resp.status(), 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operation_and_query_roles_are_enforced() {
    let app = spawn_app_with(|s| {
        let httpbin = s.integrations.get_mut("httpbin").expect("httpbin");
        httpbin.operations.get_mut("ping").expect("ping").roles = Some(vec![Role::Admin]);
        httpbin
            .operations
            .get_mut("delete_thing")
            .expect("delete_thing")
            .roles = Some(vec![Role::Client, Role::Reader]);
        httpbin.queries.get_mut("get_json").expect("get_json").roles = Some(vec![Role::Admin]);
    })
    .await;
    mount_echo(&app).await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true})))
        .mount(&app.upstream)
        .await;
    let (client, reader, admin) = (
        app.token("acme", &["client"]),
        app.token("ops", &["reader"]),
        app.token("root", &["admin"]),
    );
    let send = |op: &str| {
        let params = if op == "ping" {
            json!({})
        } else {
            json!({"thing_id": "1"})
        };
        json!({"integration": "httpbin", "operation": op, "params": params,
               "callback_url": app.receiver.url()})
    };
    for (token, op, expected) in [
        (&client, "create_thing", 202), // default ["client"]
        (&reader, "create_thing", 403),
        (&admin, "create_thing", 403),
        (&client, "ping", 403), // ["admin"]
        (&admin, "ping", 202),
        (&reader, "delete_thing", 202), // ["client", "reader"]
        (&client, "delete_thing", 202),
    ] {
        let resp = app.post_command(token, &send(op), None).await;
        assert_eq!(resp.status(), expected, "{op}");
    }
    assert_eq!(app.count("commands").await, 4);
    // A caller no operation allows is refused before its body is read.
    let nobody = app.token("x", &["auditor"]);
    let resp = app
        .http
        .post(format!("{}/v1/commands", app.address))
        .bearer_auth(&nobody)
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 403);
    for (token, expected) in [(&client, 403), (&reader, 403), (&admin, 200)] {
        let resp = app.get(token, "/v1/queries/httpbin/get_json").await;
        assert_eq!(resp.status(), expected);
    }
}

fn hookrelay() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hookrelay"));
    cmd.env_remove("DATABASE_URL")
        .env_remove("HOOKRELAY_CONFIG")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    cmd
}

#[test]
fn token_cli_mints_asymmetric_tokens_only_with_a_private_key() {
    let out = hookrelay()
        .args(["token", "--sub", "acme", "--role", "client"])
        .env("HOOKRELAY__AUTH__ALGORITHM", "RS256")
        .env(
            "HOOKRELAY__AUTH__PUBLIC_KEY_FILE",
            key_file("test-only-rsa-public.pem"),
        )
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("auth.private_key_file"), "{stderr}");
    assert!(out.stdout.is_empty());

    let out = hookrelay()
        .args(["token", "--sub", "acme", "--role", "client"])
        .env("HOOKRELAY__AUTH__ALGORITHM", "RS256")
        .env(
            "HOOKRELAY__AUTH__PUBLIC_KEY_FILE",
            key_file("test-only-rsa-public.pem"),
        )
        .env(
            "HOOKRELAY__AUTH__PRIVATE_KEY_FILE",
            key_file("test-only-rsa-private.pem"),
        )
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).expect("utf8");
    let mut auth = hookrelay::config::Settings::defaults()
        .expect("defaults")
        .auth;
    auth.algorithm = "RS256".into();
    auth.public_key_file = key_file("test-only-rsa-public.pem");
    let principal = hookrelay::auth::JwtKeys::new(&auth)
        .expect("keys")
        .verify(token.trim_end())
        .expect("the public key verifies the CLI's token");
    assert_eq!(principal.client_id, "acme");
}

#[test]
fn token_cli_refuses_a_ttl_above_the_maximum() {
    let out = hookrelay()
        .args(["token", "--sub", "acme", "--role", "client", "--ttl", "601"])
        .env("HOOKRELAY__AUTH__MAX_TOKEN_LIFETIME_S", "600")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("auth.max_token_lifetime_s"), "{stderr}");
    let out = hookrelay()
        .args(["token", "--sub", "acme", "--role", "client", "--ttl", "600"])
        .env("HOOKRELAY__AUTH__MAX_TOKEN_LIFETIME_S", "600")
        .output()
        .expect("run");
    assert!(out.status.success());
}
