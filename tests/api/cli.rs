//! The real binary: exit codes and messages operators see, graceful SIGTERM.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::pg_base;

fn hookrelay() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hookrelay"));
    cmd.env_remove("DATABASE_URL")
        .env_remove("HOOKRELAY_CONFIG")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    cmd
}

#[test]
fn token_prints_only_a_jwt() {
    let out = hookrelay()
        .args([
            "token", "--sub", "acme", "--role", "client", "--role", "reader", "--ttl", "60",
        ])
        .output()
        .expect("run");
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).expect("utf8");
    let token = stdout.trim_end();
    assert_eq!(token.split('.').count(), 3, "{stdout}");
    assert_eq!(stdout.lines().count(), 1);
}

#[test]
fn bad_config_exits_2_naming_the_key() {
    let out = hookrelay()
        .args(["migrate"])
        .env("HOOKRELAY__AUTH__JWT_SECRET", "short")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("auth.jwt_secret"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one clear line: {stderr}");

    let out = hookrelay()
        .args(["--config", "/nonexistent/hookrelay.toml", "migrate"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));

    let out = hookrelay()
        .args(["migrate"])
        .env("HOOKRELAY__SERVER__TYPO", "1")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("typo"));
}

#[test]
fn encryption_keys_come_from_the_environment_and_are_checked() {
    let out = hookrelay()
        .args(["token", "--sub", "acme", "--role", "client"])
        .env(
            "HOOKRELAY__SECURITY__SIGNING_KEY_ENCRYPTION_KEYS",
            "k2:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=,k1:aG9va3JlbGF5LWRldi1rZXktY2hhbmdlLW1lLTAxMjM=",
        )
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = hookrelay()
        .args(["migrate"])
        .env(
            "HOOKRELAY__SECURITY__SIGNING_KEY_ENCRYPTION_KEYS",
            "k1:c2VjcmV0LWJ1dC1zaG9ydA==",
        )
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("security.signing_key_encryption_keys"),
        "{stderr}"
    );
    assert!(!stderr.contains("c2VjcmV0"), "key material shown: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one clear line: {stderr}");
}

#[test]
fn unreachable_database_names_the_masked_url() {
    let out = hookrelay()
        .args(["serve"])
        .env(
            "DATABASE_URL",
            "postgres://app:hunter2@127.0.0.1:1/hookrelay",
        )
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("postgres://app:***@127.0.0.1:1/hookrelay"),
        "{stderr}"
    );
    assert!(stderr.contains("Is Postgres running?"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "password leaked: {stderr}");
}

#[test]
fn serve_creates_the_database_and_stops_cleanly_on_sigterm() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let db = format!("hookrelay_test_{}", uuid::Uuid::new_v4().simple());
    let mut child = hookrelay()
        .args(["serve"])
        .env("DATABASE_URL", format!("{}/{db}", pg_base()))
        .env("HOOKRELAY__SERVER__BIND", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(30);
    let ready = loop {
        let ok = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok_and(|mut s| {
            use std::io::{Read, Write};
            let _ = s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n");
            let mut buf = String::new();
            let _ = s.read_to_string(&mut buf);
            buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200")
        });
        if ok || Instant::now() > deadline {
            break ok;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(ready, "serve became ready");
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "serve did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean exit");
}

/// A credential whose value a header cannot carry (a secret mounted with a
/// trailing newline) and a TOML syntax error each exit 2 with one line; the
/// first names the key.
#[test]
fn bad_credentials_and_toml_syntax_exit_2_on_one_line() {
    let dir = std::env::temp_dir().join(format!("hookrelay-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    let with_credential = dir.join("credential.toml");
    std::fs::write(
        &with_credential,
        r#"
[security]
allow_private_callbacks = true
[integrations.vendor]
base_url = "http://127.0.0.1:9"
[integrations.vendor.credential]
header = "Authorization"
value_env = "HOOKRELAY_TEST_VENDOR_TOKEN"
[integrations.vendor.operations.ping]
method = "POST"
path = "/ping"
"#,
    )
    .expect("write");
    let out = hookrelay()
        .args([
            "--config",
            with_credential.to_str().expect("utf8"),
            "migrate",
        ])
        .env("HOOKRELAY_TEST_VENDOR_TOKEN", "Bearer abc\n")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("integrations.vendor.credential.value_env"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one clear line: {stderr}");

    let broken = dir.join("broken.toml");
    std::fs::write(&broken, "[server]\nbind = \n").expect("write");
    let out = hookrelay()
        .args(["--config", broken.to_str().expect("utf8"), "migrate"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "one clear line: {stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A call timeout longer than the shutdown grace is logged at start as a
/// warning naming both keys (before the database is even reached).
#[test]
fn a_call_timeout_longer_than_the_shutdown_grace_is_a_warning_at_start() {
    let config = std::env::temp_dir().join(format!(
        "hookrelay-cli-{}.toml",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(
        &config,
        r#"
[security]
allow_private_callbacks = true
[dispatcher]
shutdown_grace_s = 5
[integrations.slowvendor]
base_url = "http://127.0.0.1:9"
timeout_ms = 30000
[integrations.slowvendor.operations.ping]
method = "POST"
path = "/ping"
"#,
    )
    .expect("write");
    let out = hookrelay()
        .args([
            "--config",
            config.to_str().expect("utf8"),
            "serve",
            "--role",
            "worker",
        ])
        .env("DATABASE_URL", "postgres://app@127.0.0.1:1/hookrelay")
        .output()
        .expect("run");
    let _ = std::fs::remove_file(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warning = stderr
        .lines()
        .find(|l| l.contains("WARN") && l.contains("integrations.slowvendor.timeout_ms"))
        .unwrap_or_else(|| panic!("no warning naming the timeout: {stderr}"));
    assert!(warning.contains("dispatcher.shutdown_grace_s"), "{warning}");
}
