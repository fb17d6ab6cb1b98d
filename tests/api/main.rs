//! Black-box API tests: real Postgres (a fresh database per test), real HTTP
//! on loopback (wiremock upstream, a receiver verifying with `standardwebhooks`).

mod auth;
mod cli;
mod crash;
mod dead_letters;
mod failures;
mod helpers;
mod maintenance;
mod metrics;
mod operations;
mod pipeline;
mod processes;
mod queries;
mod resilience;
mod rotation;
mod ssrf;
mod validation;
