//! Black-box API tests: real Postgres (a fresh database per test), real HTTP
//! on loopback (wiremock upstream, a receiver verifying with `standardwebhooks`).

mod auth;
mod cli;
mod crash;
mod failures;
mod helpers;
mod operations;
mod pipeline;
mod rotation;
mod validation;
