//! hookrelay: a callback-first async command service.
//!
//! A client sends a **command** (a write against a third-party API) with a
//! callback URL; hookrelay answers 202 at once, keeps the work in a durable
//! Postgres **outbox**, performs the upstream call and delivers the result as a
//! signed webhook (Standard Webhooks). The public interface (CLI, configuration,
//! HTTP API, webhook) is described in `docs/reference.md`; the architecture
//! in `docs/architecture.md`.
//!
//! # Layout
//!
//! | module | what |
//! | --- | --- |
//! | [`config`] | typed, layered, validated settings (imports only [`domain`]) |
//! | [`batch`] | group commit: one write per batch of concurrent callers (intake, outcomes) |
//! | [`startup`] | `Application::build` / `run_until_stopped`: pools, HTTP server, dispatcher |
//! | [`auth`] | JWT verification (pinned algorithm, lifetime, `jti`) → [`auth::Principal`] |
//! | [`authz`] | the route × role table and the middleware that enforces it |
//! | [`command`] | write side: `POST /v1/commands`, group intake, signing secret |
//! | [`query`] | read side: status documents (cached: moka, or Redis), lists, delivery audit log (read pool, read-your-writes), upstream and batch queries |
//! | [`events`] | the event log (trigger-written `command_events`), gap-free `(xid, id)` order, the per-process tailer and live feed |
//! | [`outbox`] | the `jobs` table: claim with leases, conditional outcome writes |
//! | [`dispatcher`] | the worker loop: LISTEN/NOTIFY wake-ups, concurrency, shutdown drain |
//! | [`integration`] | upstream client: filling path templates, call, outcome classification, backoff |
//! | [`metrics`] | Prometheus metrics (upstream calls, circuit breaker, deliveries), `GET /metrics` |
//! | [`maintenance`] | cron-scheduled housekeeping as durable, run-once maintenance runs |
//! | [`resilience`] | per-integration throttle (GCRA, in-flight, vendor headers), circuit breaker, retry budget |
//! | [`admin`] | admin diagnostics: `GET /v1/admin/integrations` |
//! | [`limits`] | abuse limits middleware: per-IP / per-client rate limits, header size, admin listener split |
//! | [`metrics`] | Prometheus series |
//! | [`delivery`] | Standard Webhooks signer, retry schedule, webhook sender |
//! | [`seal`] | sealed outbox jobs: HMAC seals over what a job acts on, verified before it acts |
//! | [`redact`] | the redaction layer for stored upstream bodies, the attempt log, errors and logs |
//! | [`security`] | SSRF-guarded resolver; signing secrets: generation, sealing at rest, storage, rotation |
//! | [`domain`] | newtypes valid by construction (callback URL, idempotency key, statuses, roles, path templates) and the pure parsers config and runtime share (key lists, callback policy, cron) |
//! | [`error`] | `application/problem+json` error policy |
//! | [`db`] | pools ([`db::WritePool`], [`db::ReadPool`]), create-if-missing, migrations |
//! | [`health`], [`openapi`], [`telemetry`], [`http_util`] | probes, API document, logging, HTTP and request-body helpers |
//! | [`testing`] | test support: what integration tests and benches use besides HTTP, the CLI and [`startup::Application`] |
//!
//! # Dependencies
//!
//! Modules import downwards only, with no cycles: [`domain`], [`batch`] and
//! [`metrics`] are leaves, [`config`] imports only [`domain`], the services sit
//! above them, the HTTP handlers and the [`dispatcher`] are the edges, and
//! [`startup`] is the root that nothing imports. CI checks it with
//! `scripts/check_cycles.py` (see `docs/architecture.md`, "Dependencies").

pub mod auth;
pub mod command;
pub mod config;
pub mod db;
pub mod delivery;
pub mod domain;
pub mod http;
pub mod integration;
pub mod jobs;
pub mod maintenance;
pub mod outbox;
pub mod query;
pub mod security;
pub mod startup;
pub mod telemetry;
pub mod testing;
