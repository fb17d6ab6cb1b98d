//! Durability of the dispatch path against a misbehaving database connection
//! and a shutdown: outcome writes that fail, a worker stopped mid-call, and
//! intake commits whose answer is lost.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hookrelay::startup::{Application, ServeRole};
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer};

use crate::helpers::{pg_base, settled, spawn_with_settings, test_settings, Echo};

/// Upstream calls per `Idempotency-Key` (the command id).
async fn calls_per_key(upstream: &MockServer) -> HashMap<String, usize> {
    let mut calls = HashMap::new();
    for r in upstream.received_requests().await.unwrap_or_default() {
        let key = r
            .headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        *calls.entry(key).or_default() += 1;
    }
    calls
}

/// Outcome writes fail while the worker holds its leases: the Postgres
/// backends writing them are terminated (`pg_terminate_backend`) for three
/// seconds. The writes are retried, so every upstream operation is called
/// exactly once and every command still succeeds with a verified callback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_outcome_writes_are_retried_without_calling_the_vendor_again() {
    let upstream = MockServer::start().await;
    let mut settings = test_settings(&upstream.uri());
    // Short lease and poll: without the retry, a job whose outcome write
    // failed would be claimed and called again within the test.
    settings.dispatcher.lease_s = 3;
    settings.dispatcher.poll_interval_ms = 200;
    let app = spawn_with_settings(settings.clone(), upstream, ServeRole::All).await;
    Mock::given(method("POST"))
        .respond_with(Echo::new(200).delayed(Duration::from_millis(300)))
        .mount(&app.upstream)
        .await;
    let token = app.trusted_client("acme").await;

    use secrecy::ExposeSecret;
    let url = settings.database.url.expose_secret().to_owned();
    // While this transaction holds a SHARE lock on `deliveries`, an outcome
    // write (which creates the delivery) waits; the killer then terminates the
    // waiting backend, which is what a connection reset looks like to the
    // writer. Claims, renewals and intake do not touch `deliveries` rows.
    let mut locker = PgConnection::connect(&url).await.expect("connect");
    sqlx::query("BEGIN")
        .execute(&mut locker)
        .await
        .expect("begin");
    sqlx::query("LOCK TABLE deliveries IN SHARE MODE")
        .execute(&mut locker)
        .await
        .expect("lock");

    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            app.post_command_id(&token, &app.command(&i.to_string(), json!({"n": i})), None)
                .await,
        );
    }

    let mut killer = PgConnection::connect(&url).await.expect("connect");
    let mut killed = 0usize;
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
              WHERE datname = current_database() AND pid <> pg_backend_pid()
                AND wait_event_type = 'Lock' AND query LIKE '%INSERT INTO deliveries%'",
        )
        .fetch_one(&mut killer)
        .await
        .expect("terminate");
        killed += usize::try_from(n).unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sqlx::query("ROLLBACK")
        .execute(&mut locker)
        .await
        .expect("unlock");
    assert!(killed >= 1, "the test terminated no outcome write");

    for id in &ids {
        let doc = app
            .wait_status(&token, id, Duration::from_secs(20), settled)
            .await;
        assert_eq!(doc["status"], "succeeded", "{doc}");
        assert_eq!(doc["callback"]["status"], "delivered", "{doc}");
    }
    // Longer than a lease: a job whose outcome was dropped would be re-run now.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let calls = calls_per_key(&app.upstream).await;
    for id in &ids {
        assert_eq!(
            calls.get(id),
            Some(&1),
            "each operation is called exactly once: {calls:?}"
        );
    }
    assert_eq!(calls.len(), ids.len(), "{calls:?}");
    let received = app.receiver.received();
    assert_eq!(received.len(), ids.len(), "one callback per command");
    assert!(received.iter().all(|r| r.verified));
}

/// A worker stopped while its upstream call is still running aborts the call
/// after `dispatcher.shutdown_grace_s`; another worker must not repeat it
/// before the call's timeout could have passed (the vendor may still be
/// processing it), and does repeat it afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_aborted_at_shutdown_is_repeated_only_after_its_timeout() {
    let upstream = MockServer::start().await;
    let mut settings = test_settings(&upstream.uri());
    settings.dispatcher.shutdown_grace_s = 1;
    settings.dispatcher.poll_interval_ms = 200;
    settings
        .integrations
        .get_mut("httpbin")
        .expect("httpbin")
        .timeout_ms = 4_000;
    // The first call outlasts the grace; the repeat answers at once.
    Mock::given(method("POST"))
        .respond_with(Echo::new(200).delayed(Duration::from_secs(3)))
        .up_to_n_times(1)
        .mount(&upstream)
        .await;
    Mock::given(method("POST"))
        .respond_with(Echo::new(200))
        .mount(&upstream)
        .await;
    let app = spawn_with_settings(settings.clone(), upstream, ServeRole::All).await;
    let token = app.trusted_client("acme").await;
    let id = app
        .post_command_id(&token, &app.command("slow", json!({})), None)
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while calls_per_key(&app.upstream).await.is_empty() {
        assert!(Instant::now() < deadline, "the upstream was never called");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Stop the first process; a second worker is ready to take over.
    let stopped = Instant::now();
    app.shutdown.cancel();
    let other = Application::build(settings.clone(), ServeRole::Worker)
        .await
        .expect("worker");
    let other_stop = other.shutdown_token();
    let other_task = tokio::spawn(other.run_until_stopped());

    // The release happens at ~1 s (the grace); the call may run until ~4 s
    // after its start. At 3.5 s nobody may have called the vendor again.
    tokio::time::sleep(Duration::from_millis(3_500).saturating_sub(stopped.elapsed())).await;
    let calls = calls_per_key(&app.upstream).await;
    assert_eq!(
        calls.get(&id),
        Some(&1),
        "repeated while the first call could still be running: {calls:?}"
    );

    // Afterwards the other worker runs it (at-least-once) and calls back.
    use secrecy::ExposeSecret;
    let mut db = PgConnection::connect(settings.database.url.expose_secret())
        .await
        .expect("connect");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, callback): (String, Option<String>) = sqlx::query_as(
            "SELECT c.status, d.status FROM commands c LEFT JOIN deliveries d ON d.command_id = c.id",
        )
        .fetch_one(&mut db)
        .await
        .expect("status");
        if status == "succeeded" && callback.as_deref() == Some("delivered") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not finished: {status} {callback:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(calls_per_key(&app.upstream).await.get(&id), Some(&2));
    other_stop.cancel();
    other_task.await.expect("join").expect("clean stop");
}

/// What the fault-injecting proxy does to the next `COMMIT` answer.
const PASS: u8 = 0;
/// Close the connection instead of passing the answer on (it is lost).
const DROP_ANSWER: u8 = 1;
/// Replace the answer with bytes that are no protocol message.
const GARBLE_ANSWER: u8 = 2;

/// A TCP proxy in front of the test Postgres that, when armed, lets one
/// `COMMIT` reach the server (so it commits) and loses or garbles its answer,
/// as a connection reset or a faulty middlebox would.
struct CommitProxy {
    port: u16,
    mode: Arc<AtomicU8>,
    hits: Arc<AtomicUsize>,
}

impl CommitProxy {
    async fn start() -> CommitProxy {
        let target = url::Url::parse(&pg_base()).expect("pg url");
        let target = format!(
            "{}:{}",
            target.host_str().unwrap_or("127.0.0.1"),
            target.port().unwrap_or(5432)
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mode = Arc::new(AtomicU8::new(PASS));
        let hits = Arc::new(AtomicUsize::new(0));
        let (m, h) = (mode.clone(), hits.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&target).await else {
                    continue;
                };
                tokio::spawn(pipe(client, server, m.clone(), h.clone()));
            }
        });
        CommitProxy { port, mode, hits }
    }

    fn arm(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }
}

/// `CommandComplete("COMMIT")` as Postgres sends it.
const COMMIT_COMPLETE: &[u8] = b"C\0\0\0\x0bCOMMIT\0";

async fn pipe(client: TcpStream, server: TcpStream, mode: Arc<AtomicU8>, hits: Arc<AtomicUsize>) {
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    let upstream = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_rx, &mut server_tx).await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match server_rx.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        let at = chunk
            .windows(COMMIT_COMPLETE.len())
            .position(|w| w == COMMIT_COMPLETE);
        if let Some(at) = at {
            let armed = mode.swap(PASS, Ordering::SeqCst);
            if armed != PASS {
                hits.fetch_add(1, Ordering::SeqCst);
                let _ = client_tx.write_all(&chunk[..at]).await;
                if armed == GARBLE_ANSWER {
                    let _ = client_tx.write_all(b"!\0\0\0\x04").await;
                }
                let _ = client_tx.shutdown().await;
                break;
            }
        }
        if client_tx.write_all(chunk).await.is_err() {
            break;
        }
    }
    upstream.abort();
}

/// An API process whose database connections go through `proxy`; intake
/// batches gather for 300 ms on one writer, so concurrent posts share one.
async fn api_behind(proxy: &CommitProxy) -> crate::helpers::TestApp {
    let upstream = MockServer::start().await;
    let mut settings = test_settings(&upstream.uri());
    let db = format!("hookrelay_test_{}", uuid::Uuid::new_v4().simple());
    settings.database.url =
        secrecy::SecretString::from(format!("postgres://postgres@127.0.0.1:{}/{db}", proxy.port));
    settings.commands.intake_writers = 1;
    settings.commands.intake_batch_window_ms = 300;
    spawn_with_settings(settings, upstream, ServeRole::Api).await
}

/// Posts `n` commands at once (no idempotency key: a client that gets an
/// error can only send the command again, as a new one).
async fn post_together(app: &crate::helpers::TestApp, token: &str, n: usize) -> Vec<(u16, Value)> {
    let posts = (0..n).map(|i| async move {
        let resp = app
            .post_command(token, &app.command(&i.to_string(), json!({"n": i})), None)
            .await;
        let status = resp.status().as_u16();
        (status, resp.json::<Value>().await.unwrap_or(Value::Null))
    });
    futures_util::future::join_all(posts).await
}

/// An intake batch commits, but the answer to its `COMMIT` arrives garbled,
/// so the batch fails and is retried row by row; each row then meets its own
/// committed row. Every command is committed, so every request gets its 202
/// (an error would make the client send it again: a duplicate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_commands_of_a_batch_retried_row_by_row_get_their_202() {
    let proxy = CommitProxy::start().await;
    let app = api_behind(&proxy).await;
    let token = app.trusted_client("acme").await;
    proxy.arm(GARBLE_ANSWER);
    let answers = post_together(&app, &token, 3).await;
    assert_eq!(
        proxy.hits.load(Ordering::SeqCst),
        1,
        "one COMMIT answer garbled"
    );
    for (status, doc) in &answers {
        assert_eq!(*status, 202, "a committed command is accepted: {doc}");
        let id = doc["id"].as_str().expect("id");
        assert_eq!(app.status(&token, id).await["id"], id);
    }
    assert_eq!(app.count("commands").await, 3);
    assert_eq!(app.count("jobs WHERE kind = 'execute'").await, 3);
}

/// An intake commit succeeds but its answer is lost (the connection drops):
/// the command is durable, so its request gets 202, not a 503 that a client
/// without an idempotency key would answer by sending it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_whose_commit_answer_was_lost_gets_its_202() {
    let proxy = CommitProxy::start().await;
    let app = api_behind(&proxy).await;
    let token = app.trusted_client("acme").await;
    proxy.arm(DROP_ANSWER);
    let answers = post_together(&app, &token, 1).await;
    assert_eq!(
        proxy.hits.load(Ordering::SeqCst),
        1,
        "one COMMIT answer lost"
    );
    let (status, doc) = &answers[0];
    assert_eq!(*status, 202, "{doc}");
    let id = doc["id"].as_str().expect("id");
    assert_eq!(app.status(&token, id).await["status"], "accepted");
    assert_eq!(app.count("commands").await, 1);
}
