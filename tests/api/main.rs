//! Black-box API tests: real Postgres (a fresh database per test), real HTTP
//! on loopback (wiremock upstream, a receiver verifying with `standardwebhooks`).

mod abuse;
mod auth;
mod authz;
mod bounds;
mod cli;
mod crash;
mod database;
mod dead_letters;
mod docs;
mod documented;
mod durability;
mod events;
mod failures;
mod helpers;
mod integrity;
mod maintenance;
mod metrics;
mod numbers;
mod operations;
mod pipeline;
mod processes;
mod queries;
mod read_side;
mod resilience;
mod rotation;
mod ssrf;
mod tokens;
mod validation;
