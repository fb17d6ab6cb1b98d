//! `GET /metrics`: Prometheus text with the upstream and delivery series.
//!
//! The recorder is global to the test process and other tests run alongside,
//! so these tests compare a scrape before and after their own commands and
//! assert growth by at least what they caused, never exact values.

use std::time::Duration;

use serde_json::{json, Value};
use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::{settled, spawn_app, Echo, TestApp};

/// The value of the first sample of `name` whose labels include every
/// `(key, value)` of `labels`.
pub(crate) fn sample(page: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    page.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (label_set, value) = match rest.strip_prefix('{') {
            Some(r) => r.split_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        let have: Vec<&str> = label_set.split(',').collect();
        labels
            .iter()
            .all(|(k, v)| have.contains(&format!("{k}=\"{v}\"").as_str()))
            .then(|| value.trim().parse().ok())?
    })
}

/// `GET /metrics`, without a token.
pub(crate) async fn scrape(app: &TestApp) -> String {
    let resp = app
        .http
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    resp.text().await.expect("text")
}

async fn run(app: &TestApp, token: &str, thing: &str) -> Value {
    let resp = app
        .post_command(token, &app.command(thing, json!({"n": thing})), None)
        .await;
    assert_eq!(resp.status(), 202);
    let id = resp.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    app.wait_status(token, &id, Duration::from_secs(15), settled)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_upstream_calls_retries_and_deliveries() {
    let app = spawn_app().await;
    Mock::given(method("POST"))
        .and(path("/anything/things/bad"))
        .respond_with(ResponseTemplate::new(400).set_body_string("no"))
        .mount(&app.upstream)
        .await;
    Mock::given(method("POST"))
        .and(path("/anything/things/flaky"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&app.upstream)
        .await;
    Mock::given(method("POST"))
        .respond_with(Echo::new(200))
        .mount(&app.upstream)
        .await;
    let token = app.trusted_client("acme").await;

    let before = scrape(&app).await;
    let upstream = |outcome: &'static str| {
        [
            ("integration", "httpbin"),
            ("operation", "create_thing"),
            ("outcome", outcome),
        ]
    };
    let count =
        |page: &str, name: &str, labels: &[(&str, &str)]| sample(page, name, labels).unwrap_or(0.0);

    // The receiver fails the first callback once: one `retry` attempt.
    app.receiver.script(&[500]);
    let ok = run(&app, &token, "ok").await;
    assert_eq!(ok["status"], "succeeded", "{ok}");
    let bad = run(&app, &token, "bad").await;
    assert_eq!(bad["status"], "failed", "{bad}");
    let flaky = run(&app, &token, "flaky").await;
    assert_eq!(flaky["status"], "succeeded", "{flaky}");

    let after = scrape(&app).await;
    let requests = "hookrelay_upstream_requests_total";
    for (outcome, n) in [("success", 2.0), ("rejected", 1.0), ("retryable", 1.0)] {
        let labels = upstream(outcome);
        assert!(
            count(&after, requests, &labels) >= count(&before, requests, &labels) + n,
            "{requests} {outcome} did not grow by {n}:\n{after}"
        );
    }
    let line = after
        .lines()
        .find(|l| {
            l.starts_with("hookrelay_upstream_requests_total{")
                && l.contains("integration=\"httpbin\"")
                && l.contains("operation=\"create_thing\"")
                && l.contains("outcome=\"success\"")
        })
        .unwrap_or_else(|| panic!("no success series:\n{after}"));
    assert!(line.ends_with(|c: char| c.is_ascii_digit()), "{line}");

    let retries = "hookrelay_upstream_retries_total";
    let labels = [("integration", "httpbin"), ("operation", "create_thing")];
    assert!(
        count(&after, retries, &labels) >= count(&before, retries, &labels) + 1.0,
        "{after}"
    );

    // Four round trips (ok, bad, flaky twice), each observed in the histogram.
    let duration = "hookrelay_upstream_request_duration_seconds";
    let inf = [
        ("integration", "httpbin"),
        ("operation", "create_thing"),
        ("le", "+Inf"),
    ];
    let bucket = format!("{duration}_bucket");
    assert!(
        count(&after, &bucket, &inf) >= count(&before, &bucket, &inf) + 4.0,
        "{after}"
    );
    for le in ["0.005", "0.1", "30"] {
        let labels = [
            ("integration", "httpbin"),
            ("operation", "create_thing"),
            ("le", le),
        ];
        assert!(
            sample(&after, &bucket, &labels).is_some(),
            "no le={le} bucket:\n{after}"
        );
    }
    let sum = format!("{duration}_sum");
    assert!(count(&after, &sum, &labels) > 0.0, "{after}");

    let attempts = "hookrelay_delivery_attempts_total";
    let delivered = [("outcome", "delivered")];
    let retry = [("outcome", "retry")];
    assert!(
        count(&after, attempts, &delivered) >= count(&before, attempts, &delivered) + 3.0,
        "{after}"
    );
    assert!(
        count(&after, attempts, &retry) >= count(&before, attempts, &retry) + 1.0,
        "{after}"
    );
    let attempt_count = "hookrelay_delivery_attempt_duration_seconds_count";
    assert!(
        count(&after, attempt_count, &[]) >= count(&before, attempt_count, &[]) + 4.0,
        "{after}"
    );
    assert!(after.contains("# TYPE hookrelay_upstream_requests_total counter"));
    assert!(after.contains("# TYPE hookrelay_upstream_request_duration_seconds histogram"));
}
