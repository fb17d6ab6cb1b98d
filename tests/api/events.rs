//! The event log and its SSE push stream: lifecycle order, resume with
//! `Last-Event-ID` without gaps or duplicates, two API instances on one
//! database, read rules, the xmin gate, retention, and the outbox-lag and
//! delivery-latency metrics.

use std::time::{Duration, Instant};

use hookrelay::startup::ServeRole;
use serde_json::{json, Value};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{settled, spawn_app, spawn_with_settings, test_settings, Echo, TestApp};

/// One server-sent event as a client sees it.
#[derive(Debug, Clone, PartialEq)]
struct SseEvent {
    id: String,
    event: String,
    data: Value,
}

impl SseEvent {
    /// The id as `(xid, id)`, the stream's order.
    fn cursor(&self) -> (i64, i64) {
        let (x, i) = self.id.split_once('-').expect("id is <xid>-<id>");
        (x.parse().expect("xid"), i.parse().expect("id"))
    }
}

/// A minimal SSE reader (WHATWG format) over a streaming response.
struct Sse {
    resp: reqwest::Response,
    buf: String,
    retry: Option<u64>,
}

impl Sse {
    async fn open(app: &TestApp, token: &str, path: &str, last_event_id: Option<&str>) -> Sse {
        let mut req = app
            .http
            .get(format!("{}{path}", app.address))
            .bearer_auth(token);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        let resp = req.send().await.expect("GET stream");
        assert_eq!(resp.status(), 200, "GET {path}");
        let header = |n: &str| {
            resp.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        assert_eq!(header("content-type"), "text/event-stream");
        assert_eq!(header("cache-control"), "no-cache");
        assert_eq!(header("x-accel-buffering"), "no");
        Sse {
            resp,
            buf: String::new(),
            retry: None,
        }
    }

    /// The next event, or `None` when none arrives within `wait`.
    async fn next(&mut self, wait: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, None, None);
                for line in block.lines().filter(|l| !l.is_empty()) {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        assert!(data.is_none(), "one data line per event: {block:?}");
                        data = Some(serde_json::from_str(v).expect("data is JSON"));
                    } else if let Some(v) = line.strip_prefix("retry: ") {
                        self.retry = Some(v.parse().expect("retry ms"));
                    } else {
                        assert!(line.starts_with(':'), "unexpected line {line:?}");
                    }
                }
                if let Some(data) = data {
                    return Some(SseEvent {
                        id: id.expect("every event has an id"),
                        event: event.expect("every event has a type"),
                        data,
                    });
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.resp.chunk()).await;
            match chunk {
                Ok(Ok(Some(bytes))) => self
                    .buf
                    .push_str(std::str::from_utf8(&bytes).expect("utf-8")),
                Ok(Ok(None)) => return None,
                Ok(Err(e)) => panic!("stream failed: {e}"),
                Err(_) => return None,
            }
        }
    }

    /// Exactly `n` events (panics if they do not arrive within `wait`).
    async fn take(&mut self, n: usize, wait: Duration) -> Vec<SseEvent> {
        let deadline = Instant::now() + wait;
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(e) => got.push(e),
                None => panic!("only {} of {n} events arrived: {got:#?}", got.len()),
            }
        }
        got
    }
}

const LIFECYCLE: [&str; 4] = [
    "command.accepted",
    "command.in_progress",
    "command.succeeded",
    "callback.delivered",
];

fn types_of(events: &[SseEvent], command_id: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.data["command_id"] == command_id)
        .map(|e| e.event.clone())
        .collect()
}

fn assert_strictly_increasing(events: &[SseEvent]) {
    for pair in events.windows(2) {
        assert!(
            pair[0].cursor() < pair[1].cursor(),
            "ids must strictly increase: {} then {}",
            pair[0].id,
            pair[1].id
        );
    }
}

async fn echo_upstream(app: &TestApp, delay: Duration) {
    Mock::given(method("POST"))
        .respond_with(Echo::new(200).delayed(delay))
        .mount(&app.upstream)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_delivers_each_commands_events_in_lifecycle_order() {
    let app = spawn_app().await;
    echo_upstream(&app, Duration::ZERO).await;
    let token = app.trusted_client("acme").await;
    let mut stream = Sse::open(&app, &token, "/v1/events", None).await;

    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            app.post_command_id(&token, &app.command(&i.to_string(), json!({"i": i})), None)
                .await,
        );
    }
    let events = stream.take(12, Duration::from_secs(20)).await;
    assert_eq!(stream.retry, Some(app.settings.events.retry_ms));
    assert_strictly_increasing(&events);
    for id in &ids {
        assert_eq!(
            types_of(&events, id),
            LIFECYCLE,
            "events of {id}: {events:#?}"
        );
    }
    for e in &events {
        assert_eq!(e.data["type"], e.event.as_str());
        assert_eq!(e.data["integration"], "httpbin");
        assert_eq!(e.data["operation"], "create_thing");
        assert_eq!(e.data["client_id"], "acme");
        assert!(
            chrono::DateTime::parse_from_rfc3339(e.data["occurred_at"].as_str().expect("time"))
                .is_ok(),
            "{e:?}"
        );
        let status = match e.event.as_str() {
            "command.accepted" => "accepted",
            "command.in_progress" => "in_progress",
            _ => "succeeded",
        };
        assert_eq!(e.data["status"], status, "{e:?}");
        if e.event == "callback.delivered" {
            assert_eq!(e.data["callback"]["status"], "delivered");
            assert_eq!(e.data["callback"]["attempts"], 1);
        }
        if e.event == "command.succeeded" {
            assert_eq!(e.data["status_code"], 200);
        }
    }
    // Each change exactly once: nothing follows.
    assert_eq!(stream.next(Duration::from_millis(700)).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_with_last_event_id_continues_without_gaps_or_duplicates() {
    let app = spawn_app().await;
    // Slow upstream and receiver: events keep coming while disconnected.
    echo_upstream(&app, Duration::from_millis(150)).await;
    app.receiver.delay(Duration::from_millis(50));
    let token = app.trusted_client("acme").await;

    let mut first = Sse::open(&app, &token, "/v1/events", None).await;
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(
            app.post_command_id(&token, &app.command(&i.to_string(), json!({"i": i})), None)
                .await,
        );
    }
    let mut seen = first.take(5, Duration::from_secs(20)).await;
    drop(first);
    let last = seen.last().expect("five").id.clone();

    let mut resumed = Sse::open(&app, &token, "/v1/events", Some(&last)).await;
    seen.extend(resumed.take(11, Duration::from_secs(20)).await);
    assert_eq!(
        resumed.next(Duration::from_millis(500)).await,
        None,
        "no duplicates"
    );

    // The whole history, from a fresh stream that starts at the beginning.
    let mut full = Sse::open(&app, &token, "/v1/events", Some("0-0")).await;
    let history = full.take(16, Duration::from_secs(10)).await;
    assert_eq!(full.next(Duration::from_millis(300)).await, None);
    assert_eq!(
        seen, history,
        "the resumed union must equal the full sequence"
    );
    assert_strictly_increasing(&seen);
    for id in &ids {
        assert_eq!(types_of(&seen, id), LIFECYCLE, "events of {id}");
    }

    // One command's stream resumes the same way, here by query parameter.
    let own: Vec<&SseEvent> = history
        .iter()
        .filter(|e| e.data["command_id"] == ids[0].as_str())
        .collect();
    let mut tail = Sse::open(
        &app,
        &token,
        &format!("/v1/commands/{}/events?last_event_id={}", ids[0], own[1].id),
        None,
    )
    .await;
    let rest = tail.take(2, Duration::from_secs(5)).await;
    assert_eq!(rest, vec![own[2].clone(), own[3].clone()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_on_another_instance_sees_commands_run_by_the_first() {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(Echo::new(200))
        .mount(&upstream)
        .await;
    let settings = test_settings(&upstream.uri());
    let a = spawn_with_settings(settings.clone(), upstream, ServeRole::All).await;
    // Instance B: API only, same database, no dispatcher of its own.
    let b = spawn_with_settings(settings, MockServer::start().await, ServeRole::Api).await;
    assert_ne!(a.address, b.address);
    let token = a.token("acme", &["client"]);
    let secret = a.trust_client(&token).await;
    b.receiver.trust(&secret);

    let mut on_b = Sse::open(&b, &token, "/v1/events", None).await;
    let cmd = a.command("1", json!({}));
    let id = a.post_command_id(&token, &cmd, None).await;
    let events = on_b.take(4, Duration::from_secs(20)).await;
    assert_eq!(types_of(&events, &id), LIFECYCLE);
    // And B serves the command's own history, read from the shared log.
    let mut history = Sse::open(&b, &token, &format!("/v1/commands/{id}/events"), None).await;
    assert_eq!(history.take(4, Duration::from_secs(5)).await, events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_streams_follow_the_status_document_read_rules() {
    let app = spawn_app().await;
    echo_upstream(&app, Duration::ZERO).await;
    let acme = app.trusted_client("acme").await;
    let other = app.token("other", &["client"]);
    let reader = app.token("auditor", &["reader"]);
    let id = app
        .post_command_id(&acme, &app.command("1", json!({})), None)
        .await;
    app.wait_status(&acme, &id, Duration::from_secs(15), settled)
        .await;

    let path = format!("/v1/commands/{id}/events");
    let mut own = Sse::open(&app, &acme, &path, None).await;
    let history = own.take(4, Duration::from_secs(5)).await;
    assert_eq!(types_of(&history, &id), LIFECYCLE);
    let mut as_reader = Sse::open(&app, &reader, &path, None).await;
    assert_eq!(as_reader.take(4, Duration::from_secs(5)).await, history);

    // Another client's command does not exist for this caller.
    let resp = app.get(&other, &path).await;
    assert_eq!(resp.status(), 404);
    assert_eq!(
        resp.headers()["content-type"].to_str().expect("ascii"),
        "application/problem+json"
    );
    assert_eq!(
        app.get(&other, "/v1/commands/not-a-uuid/events")
            .await
            .status(),
        404
    );
    let anonymous = app
        .http
        .get(format!("{}/v1/events", app.address))
        .send()
        .await
        .expect("GET");
    assert_eq!(anonymous.status(), 401);
    // A client may not ask for another client's stream.
    assert_eq!(
        app.get(&other, "/v1/events?client_id=acme").await.status(),
        403
    );
    // A malformed resume point names the header or parameter.
    let bad = app
        .http
        .get(format!("{}/v1/events", app.address))
        .bearer_auth(&acme)
        .header("Last-Event-ID", "yesterday")
        .send()
        .await
        .expect("GET");
    assert_eq!(bad.status(), 422);
    assert_eq!(
        bad.json::<Value>().await.expect("json")["field"],
        "Last-Event-ID"
    );
    let bad: Value = app.get_json(&acme, "/v1/events?last_event_id=1-x").await;
    assert_eq!(bad["field"], "last_event_id", "{bad}");

    // From the beginning: the other client sees nothing of acme's, a reader
    // sees everything, or one client's with ?client_id=.
    let mut others = Sse::open(&app, &other, "/v1/events", Some("0-0")).await;
    assert_eq!(others.next(Duration::from_millis(500)).await, None);
    let mut all = Sse::open(&app, &reader, "/v1/events", Some("0-0")).await;
    assert_eq!(all.take(4, Duration::from_secs(5)).await, history);
    let mut filtered = Sse::open(&app, &reader, "/v1/events?client_id=other", Some("0-0")).await;
    assert_eq!(filtered.next(Duration::from_millis(500)).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_dead_letters_and_replays_each_emit_one_event() {
    let app = spawn_app().await;
    // One retryable failure, then a final one: the command fails once.
    Mock::given(method("POST"))
        .and(path("/anything/things/flaky"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&app.upstream)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_string("no"))
        .mount(&app.upstream)
        .await;
    app.receiver.always(500);
    let token = app.trusted_client("acme").await;
    let admin = app.token("ops", &["admin"]);
    let id = app
        .post_command_id(&token, &app.command("flaky", json!({})), None)
        .await;
    let doc = app
        .wait_status(&token, &id, Duration::from_secs(15), settled)
        .await;
    assert_eq!(doc["callback"]["status"], "dead_lettered", "{doc}");

    let path = format!("/v1/commands/{id}/events");
    let mut stream = Sse::open(&app, &token, &path, None).await;
    let events = stream.take(4, Duration::from_secs(5)).await;
    assert_eq!(
        types_of(&events, &id),
        [
            "command.accepted",
            "command.in_progress",
            "command.failed",
            "callback.dead_lettered"
        ]
    );
    assert_eq!(events[2].data["status_code"], 400);
    assert_eq!(events[3].data["status"], "failed");
    assert_eq!(events[3].data["callback"]["status"], "dead_lettered");
    assert_eq!(events[3].data["callback"]["reason"], "exhausted");
    assert_eq!(events[3].data["callback"]["attempts"], 3);

    // The replay is an event of its own, then the delivery.
    app.receiver.always(200);
    let webhook_id = doc["callback"]["webhook_id"].as_str().expect("webhook id");
    let resp = app
        .post(&admin, &format!("/v1/dead-letters/{webhook_id}/replay"))
        .await;
    assert_eq!(resp.status(), 202);
    let more = stream.take(2, Duration::from_secs(15)).await;
    assert_eq!(more[0].event, "callback.replayed");
    assert_eq!(more[0].data["callback"]["status"], "pending");
    assert_eq!(more[1].event, "callback.delivered");
    assert_eq!(more[1].data["callback"]["attempts"], 4);
    assert_eq!(stream.next(Duration::from_millis(500)).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_wait_for_older_open_transactions_and_keep_their_order() {
    let app = spawn_app().await;
    echo_upstream(&app, Duration::ZERO).await;
    let token = app.trusted_client("acme").await;
    let mut stream = Sse::open(&app, &token, "/v1/events", None).await;

    // An older transaction writes a command but commits late.
    let mut slow = app.pool.begin().await.expect("begin");
    let early = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO commands (id, client_id, integration, operation, method, path, params,
                               callback_url, request_hash)
         VALUES ($1, 'acme', 'httpbin', 'create_thing', 'POST', '/x', '{}', 'http://127.0.0.1:9/', '\\x00')",
    )
    .bind(early)
    .execute(&mut *slow)
    .await
    .expect("insert");

    // A later command commits (and runs) meanwhile: its events wait.
    let id = app
        .post_command_id(&token, &app.command("1", json!({})), None)
        .await;
    app.wait_status(&token, &id, Duration::from_secs(15), settled)
        .await;
    assert_eq!(
        stream.next(Duration::from_millis(800)).await,
        None,
        "nothing may pass an open older transaction"
    );
    slow.commit().await.expect("commit");

    // Then everything, the older transaction's event first.
    let events = stream.take(5, Duration::from_secs(10)).await;
    assert_eq!(events[0].event, "command.accepted");
    assert_eq!(events[0].data["command_id"], early.to_string());
    assert_eq!(types_of(&events, &id), LIFECYCLE);
    assert_strictly_increasing(&events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_events_deletes_events_past_retention_only() {
    let upstream = MockServer::start().await;
    let mut settings = test_settings(&upstream.uri());
    settings.maintenance.purge_events_cron = "* * * * * *".into();
    settings.maintenance.event_retention_s = 86_400;
    let app = spawn_with_settings(settings, upstream, ServeRole::All).await;
    echo_upstream(&app, Duration::ZERO).await;
    let token = app.trusted_client("acme").await;
    let id = app
        .post_command_id(&token, &app.command("1", json!({})), None)
        .await;
    app.wait_status(&token, &id, Duration::from_secs(15), settled)
        .await;
    assert_eq!(app.count("command_events").await, 4);
    sqlx::query(
        "UPDATE command_events SET created_at = now() - interval '2 days'
          WHERE type IN ('command.accepted', 'command.in_progress')",
    )
    .execute(&app.pool)
    .await
    .expect("age");
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.count("command_events").await > 2 {
        assert!(Instant::now() < deadline, "old events were not purged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left: Vec<String> = sqlx::query_scalar("SELECT type FROM command_events ORDER BY xid, id")
        .fetch_all(&app.pool)
        .await
        .expect("left");
    assert_eq!(left, ["command.succeeded", "callback.delivered"]);
}

/// The first sample of `name` with `labels` on a `/metrics` page.
fn sample(page: &str, name: &str, labels: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}{labels} ")))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_lag_and_delivery_latency_are_exported() {
    let app = spawn_app().await;
    echo_upstream(&app, Duration::ZERO).await;
    let token = app.trusted_client("acme").await;
    let scrape = || async {
        app.http
            .get(format!("{}/metrics", app.address))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("text")
    };
    let bucket = "hookrelay_command_delivery_latency_seconds_bucket";
    let labels = "{integration=\"httpbin\",le=\"3600\"}";
    let before = sample(&scrape().await, bucket, labels).unwrap_or(0.0);
    let id = app
        .post_command_id(&token, &app.command("1", json!({})), None)
        .await;
    app.wait_status(&token, &id, Duration::from_secs(15), settled)
        .await;
    let page = scrape().await;
    let after = sample(&page, bucket, labels).expect("latency histogram");
    assert!(after >= before + 1.0, "{page}");
    assert!(
        page.lines()
            .any(|l| l.starts_with("hookrelay_outbox_lag_seconds ")),
        "{page}"
    );
    assert!(
        page.contains("# HELP hookrelay_outbox_lag_seconds"),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_lag_is_the_age_of_the_oldest_ready_job() {
    // API only: no dispatcher claims the jobs under the test's feet.
    let upstream = MockServer::start().await;
    let settings = test_settings(&upstream.uri());
    let app = spawn_with_settings(settings, upstream, ServeRole::Api).await;
    let token = app.token("acme", &["client"]);
    let waiting = app
        .post_command_id(&token, &app.command("1", json!({})), None)
        .await;
    let leased = app
        .post_command_id(&token, &app.command("2", json!({})), None)
        .await;
    let set_run_at = |id: String, offset: &'static str| {
        let pool = app.pool.clone();
        async move {
            sqlx::query(&format!(
                "UPDATE jobs SET run_at = now() + interval '{offset}' WHERE command_id = $1::uuid"
            ))
            .bind(id)
            .execute(&pool)
            .await
            .expect("update");
        }
    };
    set_run_at(waiting.clone(), "-40 seconds").await;
    // A leased job's run_at is its lease end, in the future: not ready.
    set_run_at(leased.clone(), "60 seconds").await;
    let age = hookrelay::testing::outbox_lag(&app.pool)
        .await
        .expect("age");
    assert!((40.0..45.0).contains(&age.as_secs_f64()), "{age:?}");
    set_run_at(waiting, "30 seconds").await;
    let age = hookrelay::testing::outbox_lag(&app.pool)
        .await
        .expect("age");
    assert_eq!(age, Duration::ZERO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_falls_behind_catches_up_without_gaps_or_duplicates() {
    use hookrelay::query::event_log::{Cursor, EventFeed, EventFilter};
    let upstream = MockServer::start().await;
    let app = spawn_with_settings(test_settings(&upstream.uri()), upstream, ServeRole::Api).await;
    // A feed whose broadcast keeps only 4 events, and a consumer that reads
    // slowly through a 1-slot channel: the follower must lag and re-read.
    let (feed, _tailer) = EventFeed::start_with_capacity(
        app.pool.clone(),
        app.pool.clone(),
        &app.settings.events,
        app.shutdown.clone(),
        4,
    );
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let follower = feed.clone();
    tokio::spawn(async move {
        follower
            .follow(Cursor::START, &EventFilter::default(), &tx)
            .await
            .expect("follow");
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        sqlx::query(
            "INSERT INTO commands (id, client_id, integration, operation, method, path, params,
                                   callback_url, request_hash)
             SELECT gen_random_uuid(), 'acme', 'httpbin', 'create_thing', 'POST', '/x', '{}',
                    'http://127.0.0.1:9/', '\\x00'
               FROM generate_series(1, 40)",
        )
        .execute(&app.pool)
        .await
        .expect("insert");
    }
    let mut got = Vec::new();
    while got.len() < 120 {
        let event = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of 120 events arrived", got.len()))
            .expect("follower alive");
        got.push(event.cursor);
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "in order, no duplicates: {got:?}"
    );
    let stored: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT xid::text::bigint, id FROM command_events ORDER BY command_events.xid, command_events.id",
    )
    .fetch_all(&app.pool)
    .await
    .expect("stored");
    let got: Vec<(i64, i64)> = got.iter().map(|c| (c.xid, c.id)).collect();
    assert_eq!(got, stored, "exactly the log");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), rx.recv())
            .await
            .is_err(),
        "nothing more"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_beyond_max_streams_answer_503() {
    let app = crate::helpers::spawn_app_with(|s| s.events.max_streams = 1).await;
    let token = app.token("acme", &["client"]);
    let _open = Sse::open(&app, &token, "/v1/events", None).await;
    let resp = app.get(&token, "/v1/events").await;
    assert_eq!(resp.status(), 503);
    assert_eq!(
        resp.headers()["content-type"].to_str().expect("ascii"),
        "application/problem+json"
    );
}

/// A stream's slot is freed when its client disconnects, not at the next
/// keep-alive write (30 s here): after all `max_streams` clients close, a new
/// stream is accepted within about a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_streams_free_their_slots_at_once() {
    let app = crate::helpers::spawn_app_with(|s| {
        s.events.max_streams = 5;
        s.events.keep_alive_s = 30;
    })
    .await;
    let token = app.token("acme", &["client"]);
    let url = format!("{}/v1/events", app.address);
    let mut open = Vec::new();
    for _ in 0..5 {
        // A client of its own per stream: dropping it closes the connection.
        let client = reqwest::Client::new();
        let resp = client
            .get(&url)
            .bearer_auth(&token)
            .send()
            .await
            .expect("GET stream");
        assert_eq!(resp.status(), 200);
        open.push((client, resp));
    }
    assert_eq!(app.get(&token, "/v1/events").await.status(), 503, "full");
    drop(open);

    let closed = Instant::now();
    loop {
        let resp = reqwest::Client::new()
            .get(&url)
            .bearer_auth(&token)
            .send()
            .await
            .expect("GET stream");
        if resp.status() == 200 {
            break;
        }
        assert_eq!(resp.status(), 503);
        assert!(
            closed.elapsed() < Duration::from_millis(1_500),
            "slots still taken {:?} after every client closed",
            closed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
