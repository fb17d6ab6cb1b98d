//! hookrelay: a callback-first async command service.
//!
//! A client sends a **command** (a write against a third-party API) with a
//! callback URL; hookrelay answers 202 at once, keeps the work in a durable
//! Postgres **outbox**, performs the upstream call and delivers the result as a
//! signed webhook (Standard Webhooks). The public contract is `SPEC.md`; the
//! architecture is in `docs/architecture.md`.
//!
//! # Layout
//!
//! | module | what |
//! | --- | --- |
//! | [`config`] | typed, layered, validated settings |
//! | [`batch`] | group commit: one write per batch of concurrent callers (intake, outcomes) |
//! | [`startup`] | `Application::build` / `run_until_stopped`: pools, HTTP server, dispatcher |
//! | [`auth`] | JWT → [`auth::Principal`] extractor, roles |
//! | [`command`] | write side: `POST /v1/commands`, group intake, signing secret |
//! | [`query`] | read side: status documents, lists, delivery audit log (read pool) |
//! | [`outbox`] | the `jobs` table: claim with leases, conditional outcome writes |
//! | [`dispatcher`] | the worker loop: LISTEN/NOTIFY wake-ups, concurrency, shutdown drain |
//! | [`integration`] | upstream client: path templates, call, outcome classification, backoff |
//! | [`metrics`] | Prometheus metrics (upstream calls, circuit breaker, deliveries), `GET /metrics` |
//! | [`maintenance`] | cron-scheduled housekeeping as durable, run-once maintenance runs |
//! | [`resilience`] | per-integration throttle (GCRA, in-flight, vendor headers), circuit breaker, retry budget |
//! | [`admin`] | admin diagnostics: `GET /v1/admin/integrations` |
//! | [`metrics`] | Prometheus series |
//! | [`delivery`] | Standard Webhooks signer, retry schedule, webhook sender |
//! | [`security`] | callback host check; signing secrets: generation, sealing at rest, storage, rotation |
//! | [`domain`] | newtypes valid by construction (callback URL, idempotency key, statuses) |
//! | [`error`] | `application/problem+json` error policy |
//! | [`db`] | pools, create-if-missing, migrations |
//! | [`health`], [`openapi`], [`telemetry`], [`http_util`] | probes, API document, logging, HTTP helpers |

pub mod admin;
pub mod auth;
pub mod batch;
pub mod command;
pub mod config;
pub mod db;
pub mod delivery;
pub mod dispatcher;
pub mod domain;
pub mod error;
pub mod health;
pub mod http_util;
pub mod integration;
pub mod maintenance;
pub mod metrics;
pub mod openapi;
pub mod outbox;
pub mod query;
pub mod resilience;
pub mod security;
pub mod startup;
pub mod telemetry;
