//! Prometheus metrics for upstream calls, the resilience policy and webhook
//! deliveries, served at `GET /metrics`.
//!
//! Recording goes through the [`metrics`] facade; the process-global recorder
//! is `metrics-exporter-prometheus`, installed once by [`install`] (which
//! [`crate::startup::Application::build`] calls). Until it is installed every
//! recording function is a no-op, so library code and unit tests may call them
//! freely. The functions below are the only place metric names and labels are
//! spelled; callers pass label values, never build series themselves.
//!
//! # Series
//!
//! | series | type | labels | what |
//! | --- | --- | --- | --- |
//! | `hookrelay_upstream_requests_total` | counter | `integration`, `operation`, `outcome` | upstream calls by how they ended ([`upstream_call`]) |
//! | `hookrelay_upstream_request_duration_seconds` | histogram | `integration`, `operation` | wall time of upstream calls that were made |
//! | `hookrelay_upstream_retries_total` | counter | `integration`, `operation` | execute jobs rescheduled after a retryable failure |
//! | `hookrelay_upstream_throttled_total` | counter | `integration`, `reason` | calls held back by the throttle |
//! | `hookrelay_circuit_breaker_state` | gauge | `integration`, `state` | 1 for the breaker's current state, 0 for the other two |
//! | `hookrelay_circuit_breaker_transitions_total` | counter | `integration`, `from`, `to` | breaker state changes |
//! | `hookrelay_fallbacks_total` | counter | `integration`, `operation` | calls answered by a fallback |
//! | `hookrelay_delivery_attempts_total` | counter | `outcome` | webhook attempts by what follows them |
//! | `hookrelay_delivery_attempt_duration_seconds` | histogram | — | wall time of webhook attempts |
//! | `hookrelay_jobs_quarantined_total` | counter | `kind` | jobs that failed seal verification and were dead-lettered (`integrity`) without running |
//! | `hookrelay_outbox_lag_seconds` | gauge | — | age of the oldest ready job (sampled by worker processes, [`outbox_lag`]) |
//! | `hookrelay_intake_shed_total` | counter | `reason` | commands refused with 503 by admission control ([`intake_shed`]) |
//! | `hookrelay_ready_backlog` | gauge | — | ready outbox jobs, sampled by API processes for admission control, capped at `admission.max_ready_backlog` + 1 ([`ready_backlog`]) |
//! | `hookrelay_command_delivery_latency_seconds` | histogram | `integration` | command accepted → its callback delivered ([`command_delivery_latency`]) |
//! | `hookrelay_cache_requests_total` | counter | `endpoint`, `outcome` | read-side cache lookups ([`query_answered`]); hit ratio = `hit` / all |
//! | `hookrelay_query_duration_seconds` | histogram | `endpoint` | wall time of read-side requests ([`query_answered`]) |
//! | `hookrelay_cache_errors_total` | counter | `op` | Redis cache errors answered by falling back ([`cache_error`]) |
//! | `hookrelay_long_poll_waiters` | gauge | — | long-poll requests waiting for a status change ([`long_poll_waiters`]) |
//! | `hookrelay_long_poll_reads_total` | counter | — | batched re-reads of waited-on status documents ([`long_poll_read`]) |
//!
//! Histograms use the buckets of [`DURATION_BUCKETS`] (5 ms … 30 s), which
//! cover the default upstream timeout (10 s) and callback timeout (15 s);
//! the end-to-end latency uses [`LATENCY_BUCKETS`] (10 ms … 1 h), since a
//! callback may wait through retries.
//!
//! Label values come from configuration (integration and operation names) or
//! from the fixed vocabularies documented on each function, so the number of
//! series is bounded by the configuration; never pass ids, URLs or client names.

use std::sync::OnceLock;
use std::time::Duration;

use actix_web::HttpResponse;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::http::state::Shared;

/// Upstream calls by outcome (counter).
pub const UPSTREAM_REQUESTS: &str = "hookrelay_upstream_requests_total";
/// Upstream call wall time, seconds (histogram).
pub const UPSTREAM_DURATION: &str = "hookrelay_upstream_request_duration_seconds";
/// Execute jobs rescheduled after a retryable failure (counter).
pub const UPSTREAM_RETRIES: &str = "hookrelay_upstream_retries_total";
/// Calls held back by the throttle (counter).
pub const UPSTREAM_THROTTLED: &str = "hookrelay_upstream_throttled_total";
/// Circuit breaker state, one series per state (gauge).
pub const BREAKER_STATE: &str = "hookrelay_circuit_breaker_state";
/// Circuit breaker state changes (counter).
pub const BREAKER_TRANSITIONS: &str = "hookrelay_circuit_breaker_transitions_total";
/// Calls answered by a fallback (counter).
pub const FALLBACKS: &str = "hookrelay_fallbacks_total";
/// API requests refused by a rate limit, label `scope` (`ip`, `client`,
/// `rotation`) (counter).
pub const HTTP_RATE_LIMITED: &str = "hookrelay_http_rate_limited_total";
/// Webhook attempts by outcome (counter).
pub const DELIVERY_ATTEMPTS: &str = "hookrelay_delivery_attempts_total";
/// Webhook attempt wall time, seconds (histogram).
pub const DELIVERY_DURATION: &str = "hookrelay_delivery_attempt_duration_seconds";

/// Jobs quarantined after failing seal verification (counter).
pub const JOBS_QUARANTINED: &str = "hookrelay_jobs_quarantined_total";
/// Age of the oldest ready job, seconds (gauge).
pub const OUTBOX_LAG: &str = "hookrelay_outbox_lag_seconds";
/// Commands refused by admission control, label `reason` (counter).
pub const INTAKE_SHED: &str = "hookrelay_intake_shed_total";
/// Ready outbox jobs as sampled for admission control (gauge).
pub const READY_BACKLOG: &str = "hookrelay_ready_backlog";
/// Command accepted → callback delivered, seconds (histogram).
pub const DELIVERY_LATENCY: &str = "hookrelay_command_delivery_latency_seconds";

/// Bucket upper bounds of [`DELIVERY_LATENCY`], seconds: 10 ms to 1 h (a
/// callback that needed retries takes minutes; the default schedule's second
/// delay is 5 min).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0,
    3600.0,
];
/// Read-side cache lookups by endpoint and outcome (counter).
pub const CACHE_REQUESTS: &str = "hookrelay_cache_requests_total";
/// Read-side request wall time, seconds (histogram).
pub const QUERY_DURATION: &str = "hookrelay_query_duration_seconds";
/// Redis cache errors (counter).
pub const CACHE_ERRORS: &str = "hookrelay_cache_errors_total";
/// Long-poll requests waiting for a status change (gauge).
pub const LONG_POLL_WAITERS: &str = "hookrelay_long_poll_waiters";
/// Batched re-reads of waited-on status documents (counter).
pub const LONG_POLL_READS: &str = "hookrelay_long_poll_reads_total";

/// Histogram bucket upper bounds, seconds: 5 ms to 30 s, roughly ×2–2.5 apart.
pub const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The circuit breaker states, as the `state` label spells them.
const BREAKER_STATES: [&str; 3] = ["closed", "open", "half_open"];

/// How often buffered histogram samples are folded into their buckets when
/// nothing scrapes `/metrics` (a scrape does it too), so memory stays bounded.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-global Prometheus recorder (once) and returns its
/// handle. Later calls return the same handle: tests build many applications
/// in one process, and a second `install` must neither panic nor split the
/// series between two registries.
///
/// The first call also starts a small background thread that runs the
/// exporter's upkeep every 5 s (a thread, not a Tokio task, so it outlives
/// the runtime that happened to call `install` first).
///
/// If some other recorder was installed before (not by hookrelay), the
/// returned handle renders an empty page and a warning is logged.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(DURATION_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Full(DELIVERY_LATENCY.to_owned()),
                        LATENCY_BUCKETS,
                    )
                })
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let handle = match builder.install_recorder() {
                Ok(handle) => handle,
                Err(e) => {
                    tracing::warn!(error = %e, "another metrics recorder is installed; /metrics stays empty");
                    PrometheusBuilder::new().build_recorder().handle()
                }
            };
            describe();
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(UPKEEP_INTERVAL);
                    upkeep.run_upkeep();
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start the metrics upkeep thread; scrapes still fold histogram samples");
            }
            handle
        })
        .clone()
}

/// `# HELP` texts and units of every series.
fn describe() {
    describe_counter!(
        UPSTREAM_REQUESTS,
        "Upstream calls by outcome: success, rejected (final failure), retryable, throttled, open (circuit breaker), fallback."
    );
    describe_histogram!(
        UPSTREAM_DURATION,
        metrics::Unit::Seconds,
        "Wall time of upstream calls that reached the network, from send to the end of the body."
    );
    describe_counter!(
        UPSTREAM_RETRIES,
        "Execute jobs rescheduled after a retryable upstream failure."
    );
    describe_counter!(
        UPSTREAM_THROTTLED,
        "Upstream calls held back by the throttle, by reason: rate, in_flight, vendor (upstream rate-limit headers), budget (retry budget)."
    );
    describe_gauge!(
        BREAKER_STATE,
        "Circuit breaker state per integration: 1 for the current state (closed, open, half_open), 0 for the others."
    );
    describe_counter!(
        BREAKER_TRANSITIONS,
        "Circuit breaker state changes, by from and to state."
    );
    describe_counter!(FALLBACKS, "Upstream calls answered by a fallback.");
    describe_counter!(
        HTTP_RATE_LIMITED,
        "API requests refused with 429 by a rate limit of [limits], by scope: ip, client."
    );
    describe_counter!(
        CACHE_REQUESTS,
        "Read-side requests by endpoint (status, list, attempts, dead_letters, upstream, batch) and cache outcome: hit, miss, stale, bypass."
    );
    describe_histogram!(
        QUERY_DURATION,
        metrics::Unit::Seconds,
        "Wall time of read-side requests (status documents, lists, upstream queries), by endpoint."
    );
    describe_counter!(
        CACHE_ERRORS,
        "Redis cache errors (connect, get, set, del); the request fell back to the database or the upstream."
    );
    describe_counter!(
        DELIVERY_ATTEMPTS,
        "Webhook delivery attempts by what follows them: delivered, retry, dead_lettered."
    );
    describe_histogram!(
        DELIVERY_DURATION,
        metrics::Unit::Seconds,
        "Wall time of webhook delivery attempts."
    );
    describe_counter!(
        JOBS_QUARANTINED,
        "Outbox jobs that failed seal verification (their rows were altered) and were dead-lettered with reason integrity, without running, by kind: execute, deliver."
    );
    describe_gauge!(
        OUTBOX_LAG,
        metrics::Unit::Seconds,
        "Age of the oldest ready outbox job (run_at <= now, not leased): how long work waits for a worker. 0 when nothing is ready."
    );
    describe_counter!(
        INTAKE_SHED,
        "POST /v1/commands refused with 503 (overloaded) by admission control, by reason: ready_backlog, outbox_lag."
    );
    describe_gauge!(
        READY_BACKLOG,
        "Ready outbox jobs (run_at <= now, not leased) as last sampled by this API process for admission control; counted up to admission.max_ready_backlog + 1, 0 when that bound is off."
    );
    describe_histogram!(
        DELIVERY_LATENCY,
        metrics::Unit::Seconds,
        "Time from a command's acceptance to its callback being delivered (first delivery run; replays are not observed)."
    );
    describe_gauge!(
        LONG_POLL_WAITERS,
        "Long-poll requests (GET /v1/commands/{id}?wait=) waiting for a status change."
    );
    describe_counter!(
        LONG_POLL_READS,
        "Queries re-reading the status documents of waited-on commands: one per 50 ms tick and pool while anyone waits (per 1,000 commands), however many wait."
    );
}

/// A job failed seal verification and was quarantined
/// (`hookrelay_jobs_quarantined_total`). `kind`: `"execute"` or `"deliver"`.
pub fn job_quarantined(kind: &str) {
    counter!(JOBS_QUARANTINED, "kind" => kind.to_owned()).increment(1);
}

/// Sets `hookrelay_outbox_lag_seconds`: the age of the oldest ready job,
/// seconds (0 when none is ready). Sampled by every worker process.
pub fn outbox_lag(seconds: f64) {
    gauge!(OUTBOX_LAG).set(seconds);
}

/// A command was refused by admission control
/// (`hookrelay_intake_shed_total`); `reason` is `"ready_backlog"` or
/// `"outbox_lag"`.
pub fn intake_shed(reason: &'static str) {
    counter!(INTAKE_SHED, "reason" => reason).increment(1);
}

/// Sets `hookrelay_ready_backlog`: the ready outbox jobs last sampled by
/// this API process (capped at `admission.max_ready_backlog` + 1).
pub fn ready_backlog(jobs: f64) {
    gauge!(READY_BACKLOG).set(jobs);
}

/// A command's callback was delivered `seconds` after the command was
/// accepted (`hookrelay_command_delivery_latency_seconds`).
pub fn command_delivery_latency(integration: &str, seconds: f64) {
    histogram!(DELIVERY_LATENCY, "integration" => integration.to_owned()).record(seconds);
}

/// One upstream call ended. Counts `hookrelay_upstream_requests_total` and,
/// for calls that reached the network, observes
/// `hookrelay_upstream_request_duration_seconds`.
///
/// `outcome`: `"success"` (2xx), `"rejected"` (final failure), `"retryable"`
/// (5xx, 408, 429, timeout, connection error), `"throttled"` (held back, not
/// sent), `"open"` (refused by the open circuit breaker, not sent),
/// `"fallback"` (answered by a fallback). Pass `seconds = 0.0` for calls that
/// were not sent; no duration is observed for `throttled` and `open`, so the
/// histogram only describes real round trips.
pub fn upstream_call(integration: &str, operation: &str, outcome: &str, seconds: f64) {
    counter!(
        UPSTREAM_REQUESTS,
        "integration" => integration.to_owned(),
        "operation" => operation.to_owned(),
        "outcome" => outcome.to_owned(),
    )
    .increment(1);
    if !matches!(outcome, "throttled" | "open") {
        histogram!(
            UPSTREAM_DURATION,
            "integration" => integration.to_owned(),
            "operation" => operation.to_owned(),
        )
        .record(seconds);
    }
}

/// An execute job was rescheduled after a retryable failure
/// (`hookrelay_upstream_retries_total`).
pub fn upstream_retry(integration: &str, operation: &str) {
    counter!(
        UPSTREAM_RETRIES,
        "integration" => integration.to_owned(),
        "operation" => operation.to_owned(),
    )
    .increment(1);
}

/// An API request was refused by a `[limits]` rate limit
/// (`hookrelay_http_rate_limited_total`); `scope` is `"ip"`, `"client"` or
/// `"rotation"`.
pub fn rate_limited(scope: &'static str) {
    counter!(HTTP_RATE_LIMITED, "scope" => scope).increment(1);
}

/// A call was held back by the throttle (`hookrelay_upstream_throttled_total`).
///
/// `reason`: `"rate"` (our rate limit), `"in_flight"` (concurrency limit),
/// `"vendor"` (the upstream's rate-limit headers), `"budget"` (retry budget).
pub fn throttled(integration: &str, reason: &str) {
    counter!(
        UPSTREAM_THROTTLED,
        "integration" => integration.to_owned(),
        "reason" => reason.to_owned(),
    )
    .increment(1);
}

/// Sets `hookrelay_circuit_breaker_state`: 1 for `state`, 0 for the other
/// states, so `…{state="open"} == 1` selects open breakers.
///
/// `state`: `"closed"`, `"open"` or `"half_open"`. (Another value gets its own
/// series set to 1, so a mistake shows up instead of vanishing.)
pub fn breaker_state(integration: &str, state: &str) {
    for s in BREAKER_STATES {
        gauge!(
            BREAKER_STATE,
            "integration" => integration.to_owned(),
            "state" => s,
        )
        .set(if s == state { 1.0 } else { 0.0 });
    }
    if !BREAKER_STATES.contains(&state) {
        gauge!(
            BREAKER_STATE,
            "integration" => integration.to_owned(),
            "state" => state.to_owned(),
        )
        .set(1.0);
    }
}

/// The breaker of `integration` went from `from` to `to`
/// (`hookrelay_circuit_breaker_transitions_total`); states as in
/// [`breaker_state`]. Callers also call [`breaker_state`] with `to`.
pub fn breaker_transition(integration: &str, from: &str, to: &str) {
    counter!(
        BREAKER_TRANSITIONS,
        "integration" => integration.to_owned(),
        "from" => from.to_owned(),
        "to" => to.to_owned(),
    )
    .increment(1);
}

/// A call was answered by a fallback (`hookrelay_fallbacks_total`).
pub fn fallback_used(integration: &str, operation: &str) {
    counter!(
        FALLBACKS,
        "integration" => integration.to_owned(),
        "operation" => operation.to_owned(),
    )
    .increment(1);
}

/// One webhook attempt ended: counts `hookrelay_delivery_attempts_total` and
/// observes `hookrelay_delivery_attempt_duration_seconds`.
///
/// `outcome` is what follows the attempt: `"delivered"` (2xx), `"retry"`
/// (scheduled again), `"dead_lettered"` (410 Gone, or the schedule is
/// exhausted).
pub fn delivery_attempt(outcome: &str, seconds: f64) {
    counter!(DELIVERY_ATTEMPTS, "outcome" => outcome.to_owned()).increment(1);
    histogram!(DELIVERY_DURATION).record(seconds);
}

/// A read-side request ended: counts `hookrelay_cache_requests_total` and
/// observes `hookrelay_query_duration_seconds`.
///
/// `endpoint`: `"status"`, `"list"`, `"attempts"`, `"dead_letters"`,
/// `"upstream"` (one per query, also inside a batch) or `"batch"` (the batch
/// request as a whole). `outcome`: `"hit"` (served from the cache), `"miss"`
/// (read from the database or the upstream, possibly stored), `"stale"` (a
/// stale copy served because the upstream failed), `"bypass"` (the cache was
/// not consulted: long-poll, lists, caching off, errors).
pub fn query_answered(endpoint: &'static str, outcome: &'static str, seconds: f64) {
    counter!(CACHE_REQUESTS, "endpoint" => endpoint, "outcome" => outcome).increment(1);
    histogram!(QUERY_DURATION, "endpoint" => endpoint).record(seconds);
}

/// `delta` (+1 or -1) long-poll requests started or stopped waiting
/// (`hookrelay_long_poll_waiters`).
pub fn long_poll_waiters(delta: f64) {
    gauge!(LONG_POLL_WAITERS).increment(delta);
}

/// One batched long-poll re-read ran (`hookrelay_long_poll_reads_total`).
pub fn long_poll_read() {
    counter!(LONG_POLL_READS).increment(1);
}

/// A Redis cache operation failed (`hookrelay_cache_errors_total`).
///
/// `op`: `"connect"`, `"get"`, `"set"`, `"del"`, `"decode"`.
pub fn cache_error(op: &'static str) {
    counter!(CACHE_ERRORS, "op" => op).increment(1);
}

/// The metrics page, served without authentication.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition format (version 0.0.4)",
        body = String, content_type = "text/plain")))]
pub async fn metrics_page(handle: Shared<PrometheusHandle>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(handle.render())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_rules_use_only_exported_series() {
        let known = [
            UPSTREAM_REQUESTS,
            UPSTREAM_DURATION,
            UPSTREAM_RETRIES,
            UPSTREAM_THROTTLED,
            BREAKER_STATE,
            BREAKER_TRANSITIONS,
            FALLBACKS,
            DELIVERY_ATTEMPTS,
            DELIVERY_DURATION,
            JOBS_QUARANTINED,
            OUTBOX_LAG,
            DELIVERY_LATENCY,
            CACHE_REQUESTS,
            QUERY_DURATION,
            CACHE_ERRORS,
            LONG_POLL_WAITERS,
            LONG_POLL_READS,
            INTAKE_SHED,
            READY_BACKLOG,
        ];
        let rules = include_str!("../../docs/alerts.yml");
        let used: Vec<&str> = rules
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("hookrelay_"))
            .collect();
        assert!(used.len() >= 5, "{used:?}");
        for series in used {
            let base = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|suffix| series.strip_suffix(suffix))
                .filter(|base| {
                    [UPSTREAM_DURATION, DELIVERY_DURATION, DELIVERY_LATENCY].contains(base)
                })
                .unwrap_or(series);
            assert!(
                known.contains(&base),
                "docs/alerts.yml uses unknown series {series}"
            );
        }
    }

    #[test]
    fn install_twice_gives_one_registry() {
        let first = install();
        let second = install();
        upstream_call("unit_test_int", "op", "success", 0.012);
        upstream_call("unit_test_int", "op", "open", 0.0);
        breaker_state("unit_test_int", "half_open");
        delivery_attempt("delivered", 0.2);
        command_delivery_latency("unit_test_int", 1200.0);
        outbox_lag(0.0);
        let page = second.render();
        // Same registry: the same samples (the order of series is not fixed).
        let sorted = |page: String| {
            let mut lines: Vec<String> = page.lines().map(str::to_owned).collect();
            lines.sort();
            lines
        };
        assert_eq!(sorted(page.clone()), sorted(first.render()));
        assert!(page.contains("hookrelay_upstream_requests_total{integration=\"unit_test_int\",operation=\"op\",outcome=\"success\"} 1"), "{page}");
        assert!(page.contains("hookrelay_upstream_requests_total{integration=\"unit_test_int\",operation=\"op\",outcome=\"open\"} 1"), "{page}");
        assert!(page.contains("hookrelay_upstream_request_duration_seconds_bucket{integration=\"unit_test_int\",operation=\"op\",le=\"0.025\"} 1"), "{page}");
        // The refused call is not a round trip: one observation, not two.
        assert!(page.contains("hookrelay_upstream_request_duration_seconds_count{integration=\"unit_test_int\",operation=\"op\"} 1"), "{page}");
        assert!(page.contains("hookrelay_circuit_breaker_state{integration=\"unit_test_int\",state=\"half_open\"} 1"), "{page}");
        assert!(
            page.contains(
                "hookrelay_circuit_breaker_state{integration=\"unit_test_int\",state=\"open\"} 0"
            ),
            "{page}"
        );
        assert!(
            page.contains("hookrelay_delivery_attempt_duration_seconds_bucket{le=\"30\"}"),
            "{page}"
        );
        assert!(
            page.contains("# HELP hookrelay_delivery_attempts_total"),
            "{page}"
        );
        // The end-to-end latency has its own buckets, up to an hour.
        assert!(page.contains("hookrelay_command_delivery_latency_seconds_bucket{integration=\"unit_test_int\",le=\"900\"} 0"), "{page}");
        assert!(page.contains("hookrelay_command_delivery_latency_seconds_bucket{integration=\"unit_test_int\",le=\"1800\"} 1"), "{page}");
        assert!(page.contains("hookrelay_outbox_lag_seconds"), "{page}");
    }
}
