//! Upstream queries: `GET /v1/queries/{integration}/{query}` through a response
//! cache, request coalescing and the integration's resilience policy.
//!
//! **Cache.** In-process (moka), or Redis with `cache.redis_url`. A `200`
//! response is stored for the freshness the upstream allows (RFC 9111, computed
//! by `http-cache-semantics`: `s-maxage`, else `max-age`, else `Expires`), else
//! the query's `cache_ttl_s`, and never longer than `cache_ttl_s`.
//! `no-store` and `no-cache` responses are not stored. A `private` response is
//! stored per client and never served to another client. The key is the
//! integration, query and the sorted query string. Responses carry
//! `X-Cache: hit | miss | stale` and `Age` (seconds in the cache).
//!
//! **Coalescing.** Concurrent requests for a key that is not fresh share one
//! upstream call: the first starts it, the others await the same result.
//!
//! **Resilience.** The call passes the integration's policy. When the breaker
//! is open (503), the call is throttled (429 with `Retry-After`) or the
//! upstream fails (502), a stale copy within `stale_if_error_s` (or the
//! response's `stale-if-error`) is served instead, with `X-Cache: stale`; with
//! the breaker open and no stale copy, the query's `fallback` (another
//! integration's query or a static response) answers, marked `X-Fallback: true`.

//!
//! Files: [`handler`] (`GET /v1/queries/…`: cache lookup, coalescing, stale and
//! fallback answers), [`batch`] (`POST /v1/queries/batch`), [`cache`] (entries,
//! the moka/Redis store, the in-flight registry and the key rules),
//! `fetch` (the upstream call through the guarded call, and the fallback's),
//! `freshness` (how long a response may be served).

pub mod batch;
pub mod cache;
mod fetch;
mod freshness;
pub mod handler;

use actix_web::web;

pub use batch::{
    __path_batch_queries, batch_queries, BatchQuery, BatchRequest, BatchResponse, BatchResult,
};
pub use cache::{Entry, QueryCache};
// The `__path_*` items are utoipa's descriptions of the handlers, named by the
// API document (`startup::openapi`) through these re-exports.
pub use handler::{__path_get_query, get_query};

/// Routes of the upstream query endpoints.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/queries/batch", web::post().to(batch_queries))
        .route(
            "/v1/queries/{integration}/{query}",
            web::get().to(get_query),
        );
}
