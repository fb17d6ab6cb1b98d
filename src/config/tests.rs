//! Unit tests of loading and checking (one key broken at a time).

use super::load::one_line;
use super::*;
use crate::domain::Role;
use secrecy::{ExposeSecret, SecretString};
use url::Url;

#[test]
fn embedded_defaults_are_valid() {
    let s = Settings::defaults().expect("defaults");
    assert_eq!(s.server.bind, "127.0.0.1:8080");
    assert_eq!(
        s.database.url.expose_secret(),
        "postgres://postgres@localhost:5432/hookrelay"
    );
    assert!(!s.security.allow_private_callbacks);
    assert_eq!(s.delivery.retry_schedule_s.len(), 7);
    assert_eq!(s.delivery.secret_rotation_grace_s, 86_400);
}

#[test]
fn job_mac_keys_and_redact_fields_are_checked() {
    let s = Settings::defaults().expect("defaults");
    assert!(s.security.uses_dev_job_mac_key());
    assert_eq!(
        s.security.redact_fields,
        DEFAULT_REDACT_FIELDS
            .iter()
            .map(|f| (*f).to_owned())
            .collect::<Vec<_>>(),
        "config/default.toml and DEFAULT_REDACT_FIELDS agree"
    );
    for (keys, problem) in [
        (vec![], "at least one"),
        (vec!["m1:c2hvcnQ="], "32 bytes, got 5"),
        (vec!["bad id:c2hvcnQ="], "entry 1"),
    ] {
        let mut s = Settings::defaults().expect("defaults");
        s.security.job_mac_keys = keys.iter().map(|k| SecretString::from(*k)).collect();
        let err = s.validate().expect_err("must fail").to_string();
        assert!(
            err.contains("security.job_mac_keys") && err.contains(problem),
            "{err}"
        );
        assert!(!err.contains("c2hvcnQ"), "{err}");
    }
    let mut s = Settings::defaults().expect("defaults");
    s.security.redact_fields = vec!["password".into(), " ".into()];
    let err = s.validate().expect_err("must fail").to_string();
    assert!(err.contains("security.redact_fields"), "{err}");
}

#[test]
fn mask_url_hides_password_only() {
    assert_eq!(
        mask_url("postgres://u:pw@h:5432/db"),
        "postgres://u:***@h:5432/db"
    );
    assert_eq!(mask_url("postgres://u@h/db"), "postgres://u@h/db");
}

#[test]
fn short_jwt_secret_is_named() {
    let mut s = Settings::defaults().expect("defaults");
    s.auth.jwt_secret = SecretString::from("short");
    let err = s.validate().expect_err("must fail").to_string();
    assert!(err.contains("auth.jwt_secret"), "{err}");
}

#[test]
fn auth_limits_are_named() {
    let mut s = Settings::defaults().expect("defaults");
    s.auth.leeway_s = 61;
    let err = s.validate().expect_err("leeway").to_string();
    assert!(err.contains("auth.leeway_s"), "{err}");
    for lifetime in [0, MAX_TOKEN_LIFETIME_S + 1] {
        let mut s = Settings::defaults().expect("defaults");
        s.auth.max_token_lifetime_s = lifetime;
        let err = s.validate().expect_err("lifetime").to_string();
        assert!(err.contains("auth.max_token_lifetime_s"), "{err}");
    }
    let mut s = Settings::defaults().expect("defaults");
    s.auth.algorithm = "HS512".into();
    let err = s.validate().expect_err("algorithm").to_string();
    assert!(err.contains("auth.algorithm"), "{err}");
    let mut s = Settings::defaults().expect("defaults");
    s.auth.algorithm = "ES256".into();
    s.auth.public_key_file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/keys/test-only-rsa-public.pem"
    )
    .into();
    let err = s.validate().expect_err("RSA key for ES256").to_string();
    assert!(err.contains("auth.public_key_file"), "{err}");
}

#[test]
fn unknown_or_empty_roles_are_named() {
    let base = || {
        let mut s = Settings::defaults().expect("defaults");
        s.integrations.insert(
            "v".into(),
            IntegrationSettings {
                base_url: Url::parse("http://127.0.0.1:1").expect("url"),
                timeout_ms: 1000,
                max_attempts: 1,
                retry_backoff_ms: 1,
                max_response_bytes: 10,
                credential: None,
                trusted: true,
                operations: [(
                    "op".to_owned(),
                    OperationSettings {
                        method: WriteMethod::Post,
                        path: "/x".parse().expect("template"),
                        fallback: None,
                        roles: Some(vec![Role::Client, Role::Reader]),
                    },
                )]
                .into(),
                queries: [(
                    "q".to_owned(),
                    QuerySettings {
                        path: "/q".parse().expect("template"),
                        cache_ttl_s: 1,
                        stale_if_error_s: 1,
                        fallback: None,
                        roles: None,
                    },
                )]
                .into(),
                retry_horizon_s: 3600,
                throttle: Default::default(),
                breaker: Default::default(),
            },
        );
        s
    };
    assert!(base().validate().is_ok());
    // An unknown role name does not deserialise: the loader names the key.
    let err = Settings::from_toml(
        r#"
[integrations.v]
base_url = "https://vendor.example"
[integrations.v.operations.op]
method = "POST"
path = "/x"
roles = ["client", "superuser"]
"#,
    )
    .expect_err("unknown role")
    .to_string();
    assert!(err.contains("integrations.v.operations.op.roles"), "{err}");
    assert!(err.contains("superuser"), "{err}");
    let mut s = base();
    s.integrations
        .get_mut("v")
        .expect("v")
        .queries
        .get_mut("q")
        .expect("q")
        .roles = Some(vec![]);
    let err = s.validate().expect_err("empty roles").to_string();
    assert!(err.contains("integrations.v.queries.q.roles"), "{err}");
}

#[test]
fn bad_encryption_keys_are_named_without_their_material() {
    let s = Settings::defaults().expect("defaults");
    assert!(s.security.uses_dev_encryption_key());
    for (keys, problem) in [
        (vec![], "at least one"),
        (vec!["k1:c2hvcnQ="], "32 bytes, got 5"),
        (vec!["k1"], "entry 1"),
        (
            vec![
                "k1:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
                "k1:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
            ],
            "more than once",
        ),
    ] {
        let mut s = Settings::defaults().expect("defaults");
        s.security.signing_key_encryption_keys =
            keys.iter().map(|k| SecretString::from(*k)).collect();
        let err = s.validate().expect_err("must fail").to_string();
        assert!(
            err.contains("security.signing_key_encryption_keys"),
            "{err}"
        );
        assert!(err.contains(problem), "{err}");
        assert!(!err.contains("c2hvcnQ") && !err.contains("MDEy"), "{err}");
    }
    let mut s = Settings::defaults().expect("defaults");
    s.security.signing_key_encryption_keys = vec![SecretString::from(
        "prod-1:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
    )];
    let s = s.validate().expect("valid");
    assert!(!s.security.uses_dev_encryption_key());
}

#[test]
fn abuse_limit_keys_are_validated_by_name() {
    type Breaker = fn(&mut Settings);
    let cases: [(&str, Breaker); 6] = [
        ("server.admin_bind", |s| {
            s.server.admin_bind = "nowhere".into()
        }),
        ("server.admin_bind", |s| {
            s.server.bind = "127.0.0.1:8080".into();
            s.server.admin_bind = "127.0.0.1:8080".into();
        }),
        ("server.max_header_bytes", |s| {
            s.server.max_header_bytes = 10
        }),
        ("limits.per_ip_burst", |s| {
            s.limits.per_ip_per_s = 5;
            s.limits.per_ip_burst = 0;
        }),
        ("limits.per_client_burst", |s| {
            s.limits.per_client_per_s = 5;
            s.limits.per_client_burst = 0;
        }),
        ("limits.rotation_burst", |s| {
            s.limits.rotations_per_hour = 5;
            s.limits.rotation_burst = 0;
        }),
    ];
    for (key, break_it) in cases {
        let mut s = Settings::defaults().expect("defaults");
        break_it(&mut s);
        let err = s.validate().expect_err("must fail").to_string();
        assert!(err.contains(key), "{key}: {err}");
    }
    let mut s = Settings::defaults().expect("defaults");
    s.limits.per_ip_per_s = 0;
    s.limits.per_ip_burst = 0;
    s.server.admin_bind = "127.0.0.1:0".into();
    assert!(
        s.validate().is_ok(),
        "0 = off needs no burst; admin_bind may be port 0"
    );
}

#[test]
fn read_side_keys_are_validated_and_named() {
    let s = Settings::defaults().expect("defaults");
    assert_eq!(s.query.max_staleness_ms, 1_000);
    assert_eq!(s.query.batch_max_queries, 20);
    assert!(
        s.cache.redis_url.expose_secret().is_empty(),
        "moka by default"
    );
    type Tweak = fn(&mut Settings);
    let cases: [(Tweak, &str); 6] = [
        (
            |s| s.query.max_staleness_ms = MAX_STALENESS_MS + 1,
            "query.max_staleness_ms",
        ),
        (
            |s| s.query.read_your_writes_ms = MAX_READ_YOUR_WRITES_MS + 1,
            "query.read_your_writes_ms",
        ),
        (|s| s.query.batch_max_queries = 0, "query.batch_max_queries"),
        (
            |s| s.cache.redis_url = SecretString::from("http://127.0.0.1:6379"),
            "cache.redis_url",
        ),
        (
            |s| s.cache.key_prefix = "has space".into(),
            "cache.key_prefix",
        ),
        (|s| s.cache.redis_timeout_ms = 0, "cache.redis_timeout_ms"),
    ];
    for (tweak, key) in cases {
        let mut s = Settings::defaults().expect("defaults");
        tweak(&mut s);
        let err = s.validate().expect_err(key).to_string();
        assert!(err.contains(key), "{err}");
    }
    let mut s = Settings::defaults().expect("defaults");
    s.cache.redis_url = SecretString::from("redis://127.0.0.1:6379/0");
    s.query.max_staleness_ms = 0;
    assert!(s.validate().is_ok(), "Redis URL and caching off are valid");
}

#[test]
fn rotation_grace_is_bounded() {
    let mut s = Settings::defaults().expect("defaults");
    s.delivery.secret_rotation_grace_s = MAX_SECRET_ROTATION_GRACE_S + 1;
    let err = s.validate().expect_err("must fail").to_string();
    assert!(err.contains("delivery.secret_rotation_grace_s"), "{err}");
    let mut s = Settings::defaults().expect("defaults");
    s.delivery.secret_rotation_grace_s = 0;
    assert!(s.validate().is_ok(), "0 = the old secret stops at once");
}

#[test]
fn loader_messages_are_one_line() {
    let toml = "TOML parse error at line 3, column 5\n  |\n3 | foo =\n  |     ^\ninvalid string\nexpected `\"`\n";
    assert_eq!(
        one_line(toml),
        "TOML parse error at line 3, column 5; invalid string; expected `\"`"
    );
    assert_eq!(one_line("unknown field `x`"), "unknown field `x`");
}

#[test]
fn retry_delays_are_bounded() {
    let mut s = Settings::defaults().expect("defaults");
    s.delivery.retry_schedule_s = vec![5.0, 1e19];
    let err = s.validate().expect_err("must fail").to_string();
    assert!(err.contains("delivery.retry_schedule_s"), "{err}");
    let mut s = Settings::defaults().expect("defaults");
    s.delivery.max_retry_after_s = 10_000_000_000_000;
    let err = s.validate().expect_err("must fail").to_string();
    assert!(err.contains("delivery.max_retry_after_s"), "{err}");
    let mut s = Settings::defaults().expect("defaults");
    s.delivery.retry_schedule_s = vec![MAX_RETRY_DELAY_S as f64];
    s.delivery.max_retry_after_s = MAX_RETRY_DELAY_S;
    assert!(s.validate().is_ok(), "30 days is allowed");
}

#[test]
fn event_settings_are_checked_and_named() {
    type Break = fn(&mut Settings);
    let cases: [(&str, Break); 6] = [
        ("events.poll_interval_ms", |s| s.events.poll_interval_ms = 0),
        ("events.keep_alive_s", |s| s.events.keep_alive_s = 0),
        ("events.retry_ms", |s| s.events.retry_ms = 10),
        ("events.max_streams", |s| s.events.max_streams = 0),
        ("maintenance.event_retention_s", |s| {
            s.maintenance.event_retention_s = 60
        }),
        ("maintenance.purge_events_cron", |s| {
            s.maintenance.purge_events_cron = "hourly".into()
        }),
    ];
    for (key, break_it) in cases {
        let mut s = Settings::defaults().expect("defaults");
        break_it(&mut s);
        let err = s.validate().expect_err(key).to_string();
        assert!(err.contains(key), "{key}: {err}");
    }
}

#[test]
fn bad_operation_path_is_named() {
    let err = Settings::from_toml(
        r#"
[integrations.v]
base_url = "https://vendor.example"
[integrations.v.operations.op]
method = "POST"
path = "/x/{unclosed"
"#,
    )
    .expect_err("must fail")
    .to_string();
    assert!(err.contains("integrations.v.operations.op.path"), "{err}");
}

#[test]
fn parsed_values_follow_a_changed_field() {
    let s = Settings::defaults().expect("defaults");
    assert!(!s.security.callback_policy.allow_private);
    let same = s.clone().parsed().expect("parsed");
    assert_eq!(same.security.job_keys.entries().len(), 1);
    let mut changed = s;
    changed.security.allow_private_callbacks = true;
    changed.security.job_mac_keys.insert(
        0,
        SecretString::from("m2:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="),
    );
    let changed = changed.parsed().expect("parsed again");
    assert!(changed.security.callback_policy.allow_private);
    assert_eq!(changed.security.job_keys.entries()[0].0, "m2");
}
