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
//! One folder per responsibility, listed from the bottom of the dependency
//! graph up:
//!
//! | module | what |
//! | --- | --- |
//! | [`domain`] | newtypes valid by construction (callback URL, idempotency key, statuses, JSON kept as text) and the pure parsers config and runtime share (key rings, callback policy, roles, path templates, cron) |
//! | [`config`] | typed, layered settings, one file per section, parsed once at load (imports only [`domain`]) |
//! | [`db`] | pools ([`db::WritePool`], [`db::ReadPool`]), create-if-missing, migrations, transient errors, group commit ([`db::batch`]) |
//! | [`http`] | the HTTP edge's toolkit: `application/problem+json` errors, body helpers, health probes, app-state access |
//! | [`telemetry`] | logging and Prometheus metrics ([`telemetry::metrics`], `GET /metrics`) |
//! | [`security`] | SSRF guard, sealing signing secrets at rest, sealed outbox jobs ([`security::seal`]), redaction ([`security::redact`]) |
//! | [`maintenance`] | cron-scheduled housekeeping as durable, run-once maintenance runs; retention |
//! | [`integration`] | upstream client, the one guarded call, the resilience policy ([`integration::resilience`]: throttle, circuit breaker, retry budget) |
//! | [`delivery`] | Standard Webhooks signer and sender, retry schedule, host limits, signing-secret store, dead letters |
//! | [`outbox`] | the `jobs` table: claim with leases, batched outcome writes, the runner (knows no job kind) |
//! | [`jobs`] | what the runner runs: [`jobs::Job`] (`Execute`, `Deliver`), one file per kind |
//! | [`auth`] | JWT verification → [`auth::Principal`], the route × role table ([`auth::authz`]), abuse limits ([`auth::limits`]) |
//! | [`query`] | read side: one file per resource, status cache, long-poll, SSE over the event log, cached upstream queries |
//! | [`command`] | write side: `POST /v1/commands`, admission control, group intake, signing secret, dead-letter replay |
//! | [`startup`] | the root: `Application::build` / `run_until_stopped`, `AppState`, routes, OpenAPI |
//! | [`testing`] | test support: what integration tests and benches use besides HTTP, the CLI and [`startup::Application`] |
//!
//! # Dependencies
//!
//! Modules import downwards only, with no cycles: [`domain`] is the leaf,
//! [`config`] imports only [`domain`], the services sit above them, the HTTP
//! handlers and [`jobs`] are the edges, and [`startup`] is the root that
//! nothing imports. CI checks it with `scripts/check_cycles.py` (see
//! `docs/architecture.md`, "Dependencies").

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
